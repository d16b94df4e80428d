"""``omnibind-bringup --snapshot PATH``: save one frame of ``~/annotated_image`` as a PNG.

The bringup's monitor node subscribes to the perception node's annotated image (so the node
starts rendering it: it draws only while someone subscribes), waits until ``after_s`` seconds
of stream time have passed and the newest recognition has an answer (or ``give_up_s`` more
seconds, then takes what comes), writes the next frame as a PNG and marks the run done.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omnibind_ros.core.paths import default_cache_dir

__all__ = ["Snapshot", "default_snapshot_path"]


def default_snapshot_path() -> Path:
    """``<cache>/screenshots/annotated_image.png`` (outside the repository)."""
    return default_cache_dir() / "screenshots" / "annotated_image.png"


class Snapshot:
    """One annotated frame to a PNG (see the module docstring).

    ``clock()`` gives the run's seconds; ``answered()`` whether the newest recognition has an
    answer. ``saved`` is set once the file is written; ``error`` holds why it was not.
    """

    def __init__(self, node: Any, perception: str, path: Path, after_s: float,
                 clock: Callable[[], float], answered: Callable[[], bool],
                 give_up_s: float = 10.0) -> None:
        from sensor_msgs.msg import Image

        from omnibind_ros.ros.annotated_image import ANNOTATED_IMAGE_QOS, ANNOTATED_IMAGE_TOPIC

        self.path = Path(path).expanduser()
        self.saved = threading.Event()
        self.error = ""
        self.shape: tuple[int, ...] = ()
        self._after_s, self._give_up_s = after_s, give_up_s
        self._clock, self._answered = clock, answered
        topic = f"{perception}/{ANNOTATED_IMAGE_TOPIC.removeprefix('~/')}"
        self._subscription = node.create_subscription(Image, topic, self._on_frame,
                                                      ANNOTATED_IMAGE_QOS)

    def _on_frame(self, msg: Any) -> None:
        if self.saved.is_set():
            return
        t = self._clock()
        if t < self._after_s or (not self._answered() and t < self._after_s + self._give_up_s):
            return
        try:
            self._write(msg)
        except Exception as exc:  # noqa: BLE001  (reported in the summary, the run ends)
            self.error = f"{type(exc).__name__}: {exc}"
        self.saved.set()

    def _write(self, msg: Any) -> None:
        import cv2

        from omnibind_ros.ros.conversions import image_to_numpy

        rgb = image_to_numpy(msg).image
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(self.path), rgb[:, :, ::-1]):
            raise OSError(f"OpenCV could not write {self.path}")
        self.shape = tuple(rgb.shape)
