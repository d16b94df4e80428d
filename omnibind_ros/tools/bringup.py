"""``omnibind-bringup``: perception and simulated sensors in one process, with a live view.

The launch system is not installable from PyPI, so this is the pip user's (and ``make demo``'s)
equivalent of ``ros2 launch omnibind_ros perception.launch.py``: the same nodes, from the same
configuration, spun by one multi-threaded executor (omnibind_ros.ros.executor)::

    omnibind-bringup                                  # perception + simulated sensors; Ctrl-C
    omnibind-bringup --scenario hotplug_demo          # scripted hot-plug; stops after 40 s
    omnibind-bringup --no-sim --params-file my.yaml   # perception on your own sensors
    omnibind-bringup --no-ui --summary-json run.json --ros-args --log-level warn
    omnibind-bringup --snapshot ~/.cache/omnibind_ros/screenshots/annotated_image.png

Configuration: each node gets ``--ros-args --params-file <file>`` as its own command line, so
rcl reads the YAML exactly as ``ros2 run`` and launch do (``/**/`` wildcards included); the
options (``--bundle``, ``--backend``, ``--scenario``...) are parameter overrides on top, as
launch's inline parameters are. Arguments after ``--ros-args`` are global ROS arguments. The
nodes and their lifecycle: :mod:`omnibind_ros.tools.bringup_nodes`.

The view (rich; ``--no-ui`` prints plain status lines instead) shows every sensor's state, the
current recognition against the simulator's ground truth (``/omnibind/ground_truth``), the
scenario phase and the sensors' recent state changes. It owns the terminal: from before the
first node starts until the last one is destroyed, everything written to stdout and stderr
(node logs, Python logging and warnings, libraries) goes to a log file under ``ROS_LOG_DIR``
(:mod:`omnibind_ros.tools.log_capture`), whose path the view and the summary print. With
``--no-ui`` the logs stay on stderr.

Scoring, printed at the end (and written by ``--summary-json``), follows
:mod:`omnibind_ros.scoring` (the bag evaluation's rules) as applied to a live stream by
:mod:`omnibind_ros.tools.scoreboard`:

* a *recognition* is one ``~/recognition`` message (one fusion tick); it is *answered* when
  ``best_label`` is not empty;
* it is matched with the ground-truth episode in force at its ``header.stamp`` (the newest sensor
  sample it used), on the stream timeline both share;
* answers less than ``--transition`` seconds (0.5) after the object changed are counted as
  *transition*, not scored: the fused embeddings of the other sensors still show the previous
  object for up to ``fusion.max_age_s``;
* accuracy = correct / scored answers; top-k = the truth is among ``top_labels``;
* a *phase* is an interval between scenario events with a constant set of live sensors, labelled
  by it ("all sensors", "camera unplugged", "camera+lidar unplugged", "..., tactile noisy"); the
  phase of a recognition is the one its stamp falls in (scenario time, not the moment the
  perception node noticed the change, so the reaction delay shows in the phase's numbers).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from omnibind_ros.core.paths import config_file
from omnibind_ros.ros.env import ensure_safe_ros_env
from omnibind_ros.tools.bringup_nodes import (
    EXECUTOR_THREAD,
    MONITOR_NODE,
    Bringup,
    BringupError,
    BringupOptions,
)
from omnibind_ros.tools.bringup_snapshot import default_snapshot_path
from omnibind_ros.tools.live_view import render_live, render_summary, status_line
from omnibind_ros.tools.log_capture import LogCapture

__all__ = ["EXECUTOR_THREAD", "MONITOR_NODE", "Bringup", "BringupError", "BringupOptions",
           "build_parser", "log_path", "main", "run_bringup"]

_REFRESH_S = 0.25


# ---------------------------------------------------------------------------------------------
# Running: live view or plain lines

def log_path() -> Path:
    """Where a run's output goes while the view owns the terminal."""
    root = Path(os.environ.get("ROS_LOG_DIR") or tempfile.gettempdir())
    return root / f"omnibind-bringup-{os.getpid()}.log"


def _run_live(app: Bringup, stop: threading.Event, console: Any, capture: LogCapture) -> None:
    """The view on ``console``; a console on the process's stdout is moved to the terminal
    (stdout itself now goes to the log file)."""
    from rich.live import Live

    moved = console.file in (sys.stdout, sys.__stdout__) and capture.terminal is not None
    previous = console.file
    if moved:
        console.file = capture.terminal

    def frame() -> Any:
        size = capture.terminal_size() if moved else None
        if size is not None:
            console.size = (size.columns, size.lines)  # rich would ask the redirected fds
        return render_live(app.snapshot(), console.width)

    try:
        with Live(frame(), console=console, refresh_per_second=4, redirect_stdout=False,
                  redirect_stderr=False) as live:
            app.spin()
            while not stop.wait(_REFRESH_S) and not app.done():
                live.update(frame())
            app.halt()
            live.update(frame())
    finally:
        if moved:
            console.file = previous


def _run_plain(app: Bringup, stop: threading.Event, out: TextIO) -> None:
    app.spin()
    phase, next_line = None, 0.0
    while not stop.wait(_REFRESH_S / 2) and not app.done():
        state = app.snapshot()
        if state.phase != phase:
            phase = state.phase
            print(f"[{state.t_s:6.1f} s] phase: {phase}", file=out, flush=True)
        if state.t_s >= next_line:
            print(status_line(state), file=out, flush=True)
            next_line = state.t_s + app.opts.status_every_s


def run_bringup(opts: BringupOptions, *, stop: threading.Event | None = None,
                out: TextIO | None = None, console: Any = None,
                log_file: Path | None = None) -> dict[str, Any]:
    """Run until ``stop`` is set or the duration has passed; return the summary dict.

    With ``opts.ui`` the view runs on ``console`` and everything else written to stdout and
    stderr goes to ``log_file`` (default :func:`log_path`) until the nodes are destroyed;
    without, status lines go to ``out`` and logs stay where they are.

    The caller's process must already have a safe ROS environment (``ensure_safe_ros_env``).
    Raises :class:`BringupError` (after cleaning up) when perception cannot start.
    """
    stop = stop or threading.Event()
    if not opts.ui:
        app = Bringup(opts)
        try:
            app.start()
            _run_plain(app, stop, out or sys.stdout)
        finally:
            app.close()
        return app.close()
    if console is None:
        from rich.console import Console

        console = Console()
    app = Bringup(opts, log_file or log_path())
    try:
        with LogCapture(app.log_file) as capture:
            try:
                app.start()
                _run_live(app, stop, console, capture)
            finally:
                app.close()  # the nodes log until they are destroyed: still into the file
    except BringupError as exc:  # its log lines went to the file: repeat the errors
        raise BringupError(f"{exc}{_logged_errors(app.log_file)}") from None
    return app.close()


def _logged_errors(path: Path | None, keep: int = 3) -> str:
    """The last ``keep`` ERROR/FATAL lines of a log file, one per line ("" if none)."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines() if path else []
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith(("[ERROR]", "[FATAL]"))][-keep:]
    return "".join(f"\n  {ln}" for ln in errors)


# ---------------------------------------------------------------------------------------------
# CLI

def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnibind-bringup", description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog="Arguments after --ros-args are passed to ROS (e.g. --ros-args --log-level warn).")
    parser.add_argument("--params-file", type=Path, default=config_file("perception.yaml"),
                        help="perception parameters (default: the package's "
                             "config/perception.yaml, as the launch file)")
    parser.add_argument("--sim", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the simulated sensors (default: on)")
    parser.add_argument("--sim-params-file", type=Path, default=config_file("sim_sensors.yaml"),
                        help="simulated sensors' parameters (default: config/sim_sensors.yaml)")
    parser.add_argument("--scenario", default=None,
                        help="hot-plug scenario: a path or a name under config/scenarios "
                             "(e.g. hotplug_demo, quick_unplug); default: the sim params "
                             "file's scenario_file (none)")
    parser.add_argument("--duration", type=_positive, default=None, metavar="S",
                        help="stop after S seconds (stream seconds with the simulator); "
                             "default: the scenario's length, else run until Ctrl-C")
    parser.add_argument("--bundle", default=None, metavar="PATH",
                        help="model bundle (overrides bundle_path; default: the params "
                             "file's, else <cache>/bundles/default)")
    parser.add_argument("--backend", default=None,
                        help="inference backend (onnxruntime, torch, tensorrt, auto)")
    parser.add_argument("--namespace", default="", help="namespace of the nodes")
    parser.add_argument("--realtime-factor", type=_positive, default=None,
                        help="stream seconds per wall second of the simulator")
    parser.add_argument("--transition", type=float, default=0.5, metavar="S",
                        help="answers within S s after an object change are not scored "
                             "(default 0.5)")
    parser.add_argument("--large-messages", action="store_true",
                        help="load the Fast DDS shared-memory profile (sensors in other "
                             "processes sending messages over ~512 KB)")
    parser.add_argument("--no-ui", action="store_true",
                        help="plain status lines instead of the live view (default when "
                             "stdout is not a terminal)")
    parser.add_argument("--summary-json", type=Path, default=None, metavar="PATH",
                        help="also write the summary as JSON")
    parser.add_argument("--snapshot", type=Path, nargs="?", const=default_snapshot_path(),
                        default=None, metavar="PNG",
                        help="save one frame of the perception node's ~/annotated_image as a "
                             "PNG, then stop (default path: <cache>/screenshots/"
                             "annotated_image.png)")
    parser.add_argument("--snapshot-after", type=_positive, default=3.0, metavar="S",
                        help="with --snapshot: take the first frame with an answer after S "
                             "stream seconds (default 3)")
    return parser


def _split_ros_args(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--ros-args" not in argv:
        return argv, []
    i = argv.index("--ros-args")
    return argv[:i], argv[i:]


def options_from_args(args: argparse.Namespace, ros_args: Sequence[str],
                      is_terminal: bool) -> BringupOptions:
    return BringupOptions(
        params_file=args.params_file, sim=args.sim, sim_params_file=args.sim_params_file,
        scenario=args.scenario, duration_s=args.duration, bundle=args.bundle,
        backend=args.backend, namespace=args.namespace, realtime_factor=args.realtime_factor,
        transition_s=args.transition, ui=not args.no_ui and is_terminal,
        ros_args=list(ros_args), snapshot=args.snapshot, snapshot_after_s=args.snapshot_after)


def _install_stop_handlers(stop: threading.Event) -> Callable[[], None]:
    """First Ctrl-C/SIGTERM: orderly stop; a second one: exit at once. Returns the undo."""
    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            os._exit(130)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(sig, prev) for sig, prev in previous.items()]  # type: ignore


def _check_files(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for opt, path in (("--params-file", args.params_file),
                      ("--sim-params-file", args.sim_params_file if args.sim else None)):
        if path is not None and not Path(path).is_file():
            parser.error(f"{opt}: no such file: {path}")
    if args.scenario and not args.sim:
        parser.error("--scenario drives the simulated sensors: it needs --sim")


def main(argv: list[str] | None = None) -> int:
    ensure_safe_ros_env()
    own, ros_args = _split_ros_args(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(own)
    _check_files(parser, args)
    if args.large_messages:  # before rclpy is imported (run_bringup imports it)
        ensure_safe_ros_env(large_messages=True)
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped: rich would squeeze tables into 80 columns
        console = Console(width=120)
    opts = options_from_args(args, ros_args, console.is_terminal)
    stop = threading.Event()
    restore = _install_stop_handlers(stop)
    try:
        summary = run_bringup(opts, stop=stop, console=console)
    except BringupError as exc:
        print(f"omnibind-bringup: error: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:  # a scenario name that resolves to nothing
        print(f"omnibind-bringup: error: {exc}", file=sys.stderr)
        return 2
    finally:
        restore()
    for part in render_summary(summary):
        console.print(part)
    if args.snapshot is not None:
        if summary.get("snapshot"):
            console.print(f"annotated image saved: {summary['snapshot']}")
        else:
            print(f"omnibind-bringup: error: no snapshot: {summary.get('snapshot_error')}",
                  file=sys.stderr)
            return 1
    if args.summary_json:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
