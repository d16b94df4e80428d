"""Pairing a new sensor's samples with time-aligned camera frames (nearest stamp within a
tolerance).

Why nearest-within-tolerance, and not interpolation or a synchroniser: the camera frame is the
*teacher's* view of the same moment, so it must be a real frame; a sensor sample whose nearest
frame is further than the tolerance (camera unplugged, frames dropped, the recorder started the
camera late) has no teacher and is dropped, never paired with a stale view of possibly another
object. A camera frame may serve several sensor samples (a 30 Hz tactile pad with a 10 Hz
camera): each sensor sample is its own training example with the view nearest to it; the
report counts the reuse. Ties (a sample exactly between two frames) go to the earlier frame, and
among frames with one stamp to the first recorded, so the result does not depend on input
order.

Stamps are the sensors' header stamps (the node's stamp rule), integer nanoseconds on one
clock. Window sensors (event packets, audio chunks) are stamped at their window's start; their
windows are far shorter than an object stays in view, so the offset is not corrected.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Pairing", "pair_nearest"]


@dataclass(frozen=True)
class Pairing:
    """Which camera frame each kept sensor sample is paired with.

    Attributes
    ----------
    sensor : ``[P]`` indices into the sensor stamps, increasing.
    camera : ``[P]`` indices into the camera stamps (the nearest frame of each).
    offset_ns : ``[P]`` camera stamp minus sensor stamp.
    num_sensor, num_camera : stamps given.
    tolerance_ns : the largest ``|offset|`` kept.
    """

    sensor: np.ndarray
    camera: np.ndarray
    offset_ns: np.ndarray
    num_sensor: int
    num_camera: int
    tolerance_ns: int

    def __len__(self) -> int:
        return int(self.sensor.size)

    @property
    def dropped_no_camera(self) -> int:
        """Sensor samples without a camera frame within the tolerance (dropped)."""
        return self.num_sensor - len(self)

    @property
    def camera_reuses(self) -> int:
        """Pairs whose camera frame already serves an earlier pair."""
        return len(self) - int(np.unique(self.camera).size)

    @property
    def camera_unused(self) -> int:
        """Camera frames no sensor sample is paired with."""
        return self.num_camera - int(np.unique(self.camera).size)

    def stats(self) -> dict[str, Any]:
        """Plain numbers for reports and provenance."""
        off = np.abs(self.offset_ns) / 1e6
        return {"tolerance_ms": self.tolerance_ns / 1e6, "sensor_samples": self.num_sensor,
                "camera_frames": self.num_camera, "paired": len(self),
                "dropped_no_camera_within_tolerance": self.dropped_no_camera,
                "camera_frames_reused": self.camera_reuses,
                "camera_frames_unused": self.camera_unused,
                "abs_offset_ms": ({"median": round(float(np.median(off)), 3),
                                   "max": round(float(off.max()), 3)} if off.size else None)}


def pair_nearest(sensor_ns: Any, camera_ns: Any, tolerance_ns: int) -> Pairing:
    """Pair every sensor stamp with the nearest camera stamp, if within ``tolerance_ns``.

    Parameters
    ----------
    sensor_ns : ``[S]`` sensor stamps (int64 ns), any order.
    camera_ns : ``[C]`` camera stamps (int64 ns), any order.
    tolerance_ns : largest allowed ``|camera - sensor|``, >= 0.

    Returns
    -------
    Pairing
        Pairs in sensor-index order; ties go to the earlier camera stamp.
    """
    if tolerance_ns < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance_ns} ns")
    s = np.asarray(sensor_ns, dtype=np.int64).reshape(-1)
    c = np.asarray(camera_ns, dtype=np.int64).reshape(-1)
    empty = np.zeros(0, dtype=np.int64)
    if s.size == 0 or c.size == 0:
        return Pairing(empty, empty, empty, int(s.size), int(c.size), int(tolerance_ns))
    order = np.argsort(c, kind="stable")
    cs = c[order]
    right = np.clip(np.searchsorted(cs, s, side="left"), 0, cs.size - 1)
    left = np.clip(right - 1, 0, cs.size - 1)
    left = np.searchsorted(cs, cs[left], side="left")  # duplicate stamps: the first frame
    d_left, d_right = np.abs(cs[left] - s), np.abs(cs[right] - s)
    take_left = d_left <= d_right  # a tie goes to the earlier frame
    nearest = np.where(take_left, left, right)
    dist = np.where(take_left, d_left, d_right)
    keep = np.nonzero(dist <= tolerance_ns)[0]
    cam = order[nearest[keep]]
    return Pairing(keep.astype(np.int64), cam.astype(np.int64), c[cam] - s[keep], int(s.size),
                   int(c.size), int(tolerance_ns))
