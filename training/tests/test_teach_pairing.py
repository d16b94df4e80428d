"""Pairing a new sensor's samples with camera frames: nearest stamp, tolerance, drops, reuse;
and the time-blocked folds of the teach run's cross-fitting."""
from __future__ import annotations

import numpy as np
import pytest

from omnibind_train.teach import pair_nearest, time_folds

MS = 1_000_000


def _brute(sensor: np.ndarray, camera: np.ndarray, tol: int) -> list[tuple[int, int]]:
    out = []
    for i, s in enumerate(sensor.tolist()):
        d = np.abs(camera - s)
        best = [j for j in np.nonzero(d == d.min())[0].tolist()]
        j = min(best, key=lambda j: camera[j])  # tie: the earlier frame
        if d[j] <= tol:
            out.append((i, j))
    return out


def test_nearest_within_tolerance_drops_the_rest() -> None:
    camera = np.array([0, 100, 200, 300, 700]) * MS  # a gap: the camera dropped 400-600 ms
    sensor = np.array([10, 140, 160, 420, 520, 690, 990]) * MS
    p = pair_nearest(sensor, camera, 50 * MS)
    assert p.sensor.tolist() == [0, 1, 2, 5]
    assert p.camera.tolist() == [0, 1, 2, 4]
    assert (p.offset_ns // MS).tolist() == [-10, -40, 40, 10]
    assert p.dropped_no_camera == 3  # 420 and 520 fall in the gap, 990 is after the last frame
    assert p.camera_unused == 1 and p.camera_reuses == 0
    stats = p.stats()
    assert stats["paired"] == 4 and stats["dropped_no_camera_within_tolerance"] == 3
    assert stats["abs_offset_ms"] == {"median": 25.0, "max": 40.0}


def test_tolerance_is_inclusive_and_ties_go_to_the_earlier_frame() -> None:
    camera = np.array([0, 100]) * MS
    p = pair_nearest(np.array([50, 150]) * MS, camera, 50 * MS)
    assert p.camera.tolist() == [0, 1] and p.sensor.tolist() == [0, 1]
    assert len(pair_nearest(np.array([151]) * MS, camera, 50 * MS)) == 0
    assert len(pair_nearest(np.array([50]) * MS, camera, 49 * MS)) == 0


def test_a_slow_camera_serves_several_samples() -> None:
    camera = np.array([0, 100, 200]) * MS  # 10 Hz camera, 30 Hz sensor
    sensor = np.arange(0, 210, 33) * MS
    p = pair_nearest(sensor, camera, 50 * MS)
    assert len(p) == sensor.size and p.camera_reuses == sensor.size - 3
    assert p.camera_unused == 0


def test_unsorted_inputs_and_edge_cases() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        camera = rng.integers(0, 10_000, rng.integers(1, 30))
        sensor = rng.integers(-500, 10_500, rng.integers(0, 40))
        p = pair_nearest(sensor, camera, 120)
        assert list(zip(p.sensor.tolist(), p.camera.tolist(), strict=True)) == \
            _brute(sensor, camera, 120)
        assert p.num_sensor == sensor.size and p.num_camera == camera.size
    empty = pair_nearest([], [1, 2], 5)
    assert len(empty) == 0 and empty.dropped_no_camera == 0 and empty.stats()["abs_offset_ms"] \
        is None
    assert pair_nearest([1, 2], [], 5).dropped_no_camera == 2
    with pytest.raises(ValueError, match="tolerance"):
        pair_nearest([1], [1], -1)


def test_time_folds_are_contiguous_blocks_in_turn() -> None:
    t = (np.arange(400) * 100 * MS).astype(np.int64)  # 40 s at 10 Hz
    folds = time_folds(t, 2, 10.0)
    assert [int(f.sum()) for f in folds] == [200, 200]
    assert bool(folds[0][:100].all()) and not bool(folds[0][100:200].any())
    assert bool(folds[1][100:200].all())
    short = time_folds(t[:50], 2, 10.0)  # 5 s: one block -> two equal halves in time
    assert [int(f.sum()) for f in short] == [25, 25] and bool(short[0][:25].all())
    assert not (folds[0] & folds[1]).any()
