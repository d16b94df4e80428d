"""A sensor's stage, reporter and worker (core.pipeline, core.sensor_worker) without ROS or a
bundle: a fake backend and fake conversions, every time written out in integer nanoseconds."""
from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from omnibind_ros.core.pipeline import Pipeline, SampleOutcome, SensorStage, checked_embedding
from omnibind_ros.core.sensor_worker import SampleReporter, SensorWorker

MS = 1_000_000
S = 1_000_000_000
T0 = 1_700_000_000 * S  # epoch-sized stamps, as real ones are


class Backend:
    """``encode`` returns the input's first values as the embedding (so a test chooses it)."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate: threading.Event | None = None

    def encode(self, modality: str, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.gate is not None:
            assert self.gate.wait(5.0)
        return np.asarray(batch, dtype=np.float32).reshape(len(batch), -1)[:, :4]


class Window:
    """A streaming preprocessor: pushes accumulate, features() is their sum."""

    def __init__(self) -> None:
        self.total = np.zeros(4, np.float32)

    def push(self, chunk: np.ndarray) -> None:
        self.total = self.total + chunk

    def features(self) -> np.ndarray:
        return self.total.copy()


def convert(msg: Any) -> np.ndarray:
    if isinstance(msg, Exception):
        raise msg
    return np.asarray(msg, dtype=np.float32)


def stage(modality: str = "thermal", encode_rate_hz: float = 0.0,
          backend: Backend | None = None) -> SensorStage:
    pre = Window() if modality == "audio" else (lambda x: x)
    return SensorStage(convert, Pipeline(modality, pre, backend or Backend()), encode_rate_hz)


ONE = [1.0, 0.0, 0.0, 0.0]


def test_a_message_becomes_an_embedding() -> None:
    out = stage().process(ONE, T0, T0 + 5 * MS)
    assert out.kind == "embedding" and out.stamp_ns == T0 and out.reason == ""
    np.testing.assert_array_equal(out.embedding, ONE)


@pytest.mark.parametrize(("value", "reason"), [
    ([np.nan, 0, 0, 0], "non-finite"), ([0.0, 0.0, 0.0, 0.0], "all-zero")])
def test_unusable_embeddings_are_bad_samples(value: list[float], reason: str) -> None:
    out = stage().process(value, T0, T0)
    assert out.kind == "bad" and reason in out.reason and out.embedding is None
    with pytest.raises(ValueError, match=reason):
        checked_embedding(value)


def test_stamp_order_and_conversion_errors_are_bad_samples() -> None:
    st = stage()
    assert st.process(ONE, T0, T0).kind == "embedding"
    same = st.process(ONE, T0, T0 + MS)
    assert same.kind == "bad" and "not newer than the previous" in same.reason
    older = st.process(ONE, T0 - 1, T0 + 2 * MS)
    assert older.kind == "bad" and "out of order or duplicate" in older.reason
    broken = st.process(ValueError("bad bytes"), T0 + 1, T0 + 3 * MS)
    assert broken.kind == "bad" and "bad bytes" in broken.reason
    assert st.process(ONE, T0 + 1, T0 + 4 * MS).kind == "embedding"  # 1 ns newer is newer


def test_the_encode_rate_throttle_is_exact_at_epoch_scale() -> None:
    """20 ms audio chunks, encode at 10 Hz: every 5th chunk exactly (float seconds at 1.7e9 s
    would see 100 ms as 99.99998 ms half the time and encode every 6th)."""
    backend = Backend()
    st = stage("audio", encode_rate_hz=10.0, backend=backend)
    kinds = [st.process(ONE, T0 + k * 20 * MS, T0 + k * 20 * MS).kind for k in range(26)]
    assert [k for k, kind in enumerate(kinds) if kind == "embedding"] == [0, 5, 10, 15, 20, 25]
    assert set(kinds) == {"embedding", "valid"} and backend.calls == 6


def test_a_stream_is_encoded_as_its_window() -> None:
    st = stage("audio")
    st.process([1.0, 0, 0, 0], T0, T0)
    out = st.process([0, 2.0, 0, 0], T0 + 20 * MS, T0 + 20 * MS)
    np.testing.assert_array_equal(out.embedding, [1.0, 2.0, 0, 0])  # both chunks pushed


class Sink:
    """Records what a reporter says; accepts samples unless told otherwise."""

    def __init__(self, accept: bool = True) -> None:
        self.events: list[tuple[str, Any]] = []
        self.accept = accept

    def on_sample(self, name: str, stamp_ns: int) -> bool:
        self.events.append(("sample", stamp_ns))
        return self.accept

    def on_bad_sample(self, name: str, reason: str) -> None:
        self.events.append(("bad", reason))

    def on_embedding(self, name: str, stamp_ns: int, embedding: np.ndarray,
                     quality: float = 1.0) -> None:
        if embedding.shape != (4,):
            raise ValueError("wrong size")
        self.events.append(("embedding", stamp_ns))


def test_the_reporter_reports_stamps_once_and_in_order() -> None:
    sink, warnings = Sink(), []
    rep = SampleReporter("cam", sink, warnings.append)
    emb = np.ones(4, np.float32)
    rep.report(SampleOutcome("embedding", T0 + 2, embedding=emb))
    rep.report(SampleOutcome("embedding", T0 + 1, embedding=emb))  # finished late: counted
    rep.report(SampleOutcome("valid", T0 + 3))
    rep.report(SampleOutcome("bad", T0 + 4, "broken"))
    rep.report(SampleOutcome("embedding", T0 + 5, embedding=np.ones(3, np.float32)))
    assert sink.events == [("sample", T0 + 2), ("embedding", T0 + 2),
                           ("embedding", T0 + 1),  # stored (the store keeps the newest) ...
                           ("sample", T0 + 3),  # ... but not counted as a sample again
                           ("bad", "broken"), ("sample", T0 + 5),
                           ("bad", "unexpected ValueError: wrong size")]
    assert (rep.encoded, rep.bad) == (3, 2)
    assert len(warnings) == 1 and "broken" in warnings[0]  # throttled: one line per interval


def test_a_rejected_sample_is_not_stored() -> None:
    sink = Sink(accept=False)
    SampleReporter("cam", sink).report(
        SampleOutcome("embedding", T0, embedding=np.ones(4, np.float32)))
    assert sink.events == [("sample", T0)]


def test_the_worker_keeps_only_the_newest_pending_message() -> None:
    backend = Backend()
    backend.gate = threading.Event()
    sink = Sink()
    worker = SensorWorker(stage(backend=backend), SampleReporter("cam", sink))
    try:
        worker.submit(ONE, T0, T0)  # taken by the thread, blocked in the encoder
        for _ in range(500):  # until the thread is inside the encoder
            if backend.calls:
                break
            threading.Event().wait(0.01)
        worker.submit(ONE, T0 + 10 * MS, T0 + 10 * MS)  # pending
        worker.submit(ONE, T0 + 20 * MS, T0 + 20 * MS)  # replaces it: a valid sample
        assert worker.superseded == 1 and sink.events == [("sample", T0 + 10 * MS)]
        assert not worker.wait_idle(0.05)
        backend.gate.set()
        assert worker.wait_idle(5.0)
    finally:
        worker.stop()
    # the replaced message counted as valid first; the one the encoder finished late is
    # stored without being counted again (its stamp is older than a reported one)
    assert sink.events == [("sample", T0 + 10 * MS), ("embedding", T0),
                           ("sample", T0 + 20 * MS), ("embedding", T0 + 20 * MS)]
    assert (worker.received, worker.encoded) == (3, 2)
