"""Keep every log line off the terminal while a full-screen view owns it.

While ``omnibind-bringup``'s live view runs, output reaches the terminal by several paths:

* rcutils' console handler, which every ROS logger of every node (rclpy's ``get_logger()`` and
  the C layers below it) goes through: ``fprintf`` to C ``stderr`` (fd 2), or to ``stdout``
  (fd 1) with ``RCUTILS_LOGGING_USE_STDOUT=1``;
* Python's ``logging`` (handlers and ``logging.lastResort``), ``warnings`` and tqdm, which
  write to ``sys.stderr``, and ``print`` to ``sys.stdout``;
* C and C++ libraries writing to fd 1 or 2 themselves (ONNX Runtime, pybullet...).

``--ros-args --disable-stdout-logs`` turns rcutils' console handler off, but only when it is
given to the first ``rclpy.init`` of the process (rclpy configures logging once per process;
later contexts inherit it), and it does nothing for the other writers. So :class:`LogCapture`
works below all of them: it points fds 1 and 2 at a log file (``os.dup2``) and hands the view
a stream on a duplicate of the original fd 1 (:attr:`LogCapture.terminal`). Everything any
thread, library or child process writes to fd 1 or 2 then lands in the file, in order, and only
the view writes to the terminal. rcl's own log file under ``ROS_LOG_DIR``
(``<executable>_<pid>_<time>.log``) keeps getting the ROS lines as always.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path
from typing import TextIO

__all__ = ["LogCapture"]

_FDS = (1, 2)


def _flush_c_stdio() -> None:
    """fflush(NULL): C stdio buffers written while redirected must not reach the terminal."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


class LogCapture:
    """Context manager: fds 1 and 2 go to ``path`` (appended) until exit.

    Attributes
    ----------
    path : the log file.
    terminal : a text stream on the terminal (the original fd 1), for the view; closed at exit.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.terminal: TextIO | None = None
        self._saved: dict[int, int] = {}

    def __enter__(self) -> LogCapture:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        _flush_c_stdio()
        log = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._saved = {fd: os.dup(fd) for fd in _FDS}
            for fd in _FDS:
                os.dup2(log, fd)
        finally:
            os.close(log)
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        self.terminal = open(os.dup(self._saved[1]), "w", encoding=encoding,  # noqa: SIM115
                             errors="replace")
        return self

    def terminal_size(self) -> os.terminal_size | None:
        """Size of the terminal the view writes to (None: not a terminal)."""
        try:
            return os.get_terminal_size(self._saved[1])
        except (KeyError, OSError):
            return None

    def __exit__(self, *exc: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        _flush_c_stdio()
        if self.terminal is not None:
            with contextlib.suppress(Exception):
                self.terminal.close()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        self._saved = {}
