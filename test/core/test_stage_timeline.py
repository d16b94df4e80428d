"""A sensor's stage and reporter across a clock that jumps back (a looping bag, a sim reset).

Without ROS: a fake conversion and backend, times in integer nanoseconds. The node-level test
with a real /clock is ``test/ros/test_clock_jumps.py``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from omnibind_ros.core.pipeline import CLOCK_JUMP_TOLERANCE_NS, Pipeline, SensorStage
from omnibind_ros.core.sensor_worker import SampleReporter, SensorWorker

S = 1_000_000_000
T0 = 1_000 * S


class Backend:
    def encode(self, modality: str, batch: np.ndarray) -> np.ndarray:
        return np.ones((len(batch), 4), np.float32) / 2


class Sink:
    def __init__(self) -> None:
        self.samples: list[int] = []

    def on_sample(self, name: str, stamp_ns: int) -> bool:
        self.samples.append(stamp_ns)
        return True

    def on_bad_sample(self, name: str, reason: str) -> None:
        pass

    def on_embedding(self, name: str, stamp_ns: int, embedding: Any, quality: float = 1.0
                     ) -> None:
        pass


def stage(encode_rate_hz: float = 0.0) -> SensorStage:
    return SensorStage(lambda msg: np.zeros(4, np.float32),
                       Pipeline("thermal", lambda x: x, Backend()), encode_rate_hz)


def test_a_clock_that_jumps_back_starts_a_new_timeline() -> None:
    st = stage(encode_rate_hz=5.0)
    for i in range(10):  # 10 Hz on the old timeline
        assert st.admit(None, T0 + i * S // 10, T0 + i * S // 10).kind in ("due", "valid")
    loop = T0 - 5 * S  # the bag starts over, 5 s back: stamps and clock alike
    first = st.admit(None, loop, loop)
    assert first.kind == "due" and st.clock_resets == 1  # not "out of order", encoded at once
    assert st.admit(None, loop + S // 10, loop + S // 10).kind == "valid"  # throttle: 5 Hz
    assert st.admit(None, loop + S // 5, loop + S // 5).kind == "due"


def test_an_old_stamp_on_a_steady_clock_is_still_out_of_order() -> None:
    st = stage()
    assert st.admit(None, T0, T0).kind == "due"
    late = st.admit(None, T0 - 5 * S, T0 + S // 10)  # the clock did not jump: bad data
    assert late.kind == "bad" and "not newer" in late.reason and st.clock_resets == 0
    small = st.admit(None, T0 + S // 10, T0 + S // 10 - CLOCK_JUMP_TOLERANCE_NS // 2)
    assert small.kind == "due" and st.clock_resets == 0  # jitter below the tolerance


def test_the_reporter_absorbs_reordering_until_a_new_timeline() -> None:
    sink = Sink()
    reporter = SampleReporter("cam", sink)
    assert reporter.valid(T0) and reporter.valid(T0 + S // 10)
    assert reporter.valid(T0 - 5 * S)  # older than the newest: taken as reordering, not passed
    assert sink.samples == [T0, T0 + S // 10]
    reporter.new_timeline()
    assert reporter.valid(T0 - 5 * S) and sink.samples[-1] == T0 - 5 * S


def test_the_worker_carries_a_looping_stream_into_the_engine() -> None:
    """Samples of the new timeline reach the engine; an old one still pending is dropped."""
    sink = Sink()
    worker = SensorWorker(stage(), SampleReporter("cam", sink))
    try:
        for i in range(5):
            worker.submit(None, T0 + i * S // 10, T0 + i * S // 10)
            assert worker.wait_idle()
        loop = T0 - 5 * S
        for i in range(5):
            worker.submit(None, loop + i * S // 10, loop + i * S // 10)
            assert worker.wait_idle()
    finally:
        worker.stop()
    assert sink.samples[5:] == [loop + i * S // 10 for i in range(5)]
    assert worker.bad == 0
