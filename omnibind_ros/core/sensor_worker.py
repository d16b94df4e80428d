"""Per-sensor worker: admit a message on arrival, encode the newest one in a thread of its own.

The subscription callback only admits the message (conversion to zero-copy views, well under a
millisecond; :meth:`~omnibind_ros.core.pipeline.SensorStage.admit`) and hands the payload to
:class:`SensorWorker`, which keeps ONE pending payload: a newer message replaces an older one
that is still waiting (bounded latency and memory, never a queue). A dedicated thread per
sensor encodes it, so a slow encoder holds up neither the executor, nor other sensors, nor the
fusion tick (ONNX Runtime releases the GIL while it runs).

Audio is a stream, not a sequence of samples: every 20 ms chunk is pushed into the sensor's
streaming preprocessor in the callback (no chunk may be skipped, or the window would have gaps),
and the window is encoded at most ``encode_rate_hz`` times per second.

What the engine hears goes through :class:`SampleReporter`, shared with the callers that run
the stage without threads (offline bag evaluation): every message that converts counts as a
valid sample, including those replaced while pending or skipped by the encode-rate throttle; a
message that fails conversion, preprocessing or encoding, or whose stamp is not newer than the
previous one, is a bad sample. Stamps reach the engine in increasing order only (the worker may
finish an older message after a newer one was reported), so reordering here never counts as
bad input. When the clock jumps back (a looping bag; the stage then starts a new timeline),
ordering starts over and a message of the old timeline still waiting or being encoded is
dropped without a report.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from omnibind_ros.core.pipeline import SampleOutcome, SensorStage, StageHook, error_reason

__all__ = ["SampleReporter", "SampleSink", "SensorWorker"]

#: Minimum interval between two warnings of one sensor (a broken driver at 50 Hz would
#: otherwise flood the log).
WARN_INTERVAL_S = 2.0


class SampleSink(Protocol):
    """What hears a sensor's samples (the :class:`~omnibind_ros.core.recognizer.Recognizer`)."""

    def on_sample(self, name: str, stamp_ns: int) -> bool: ...

    def on_bad_sample(self, name: str, reason: str) -> None: ...

    def on_embedding(self, name: str, stamp_ns: int, embedding: np.ndarray,
                     quality: float = 1.0) -> Any: ...


class SampleReporter:
    """Tells the sink what a sensor's outcomes mean, stamps in increasing order.

    Parameters
    ----------
    name : sensor name.
    sink : usually the engine.
    warn : logger function for bad samples (at most one line per ``WARN_INTERVAL_S``).
    """

    def __init__(self, name: str, sink: SampleSink,
                 warn: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.sink = sink
        self._warn = warn
        self._lock = threading.Lock()
        self._reported_max: int | None = None
        self._last_warn = -float("inf")
        self.encoded = self.bad = 0

    def report(self, outcome: SampleOutcome) -> None:
        """Deliver one outcome (never raises for a bad embedding: that is a bad sample)."""
        if outcome.kind == "bad":
            self.bad_sample(outcome.reason)
        elif outcome.kind == "valid":
            self.valid(outcome.stamp_ns)
        elif self.valid(outcome.stamp_ns):
            self.encoded += 1
            try:
                self.sink.on_embedding(self.name, outcome.stamp_ns, outcome.embedding,
                                       outcome.quality)
            except Exception as exc:  # noqa: BLE001  (e.g. an embedding of the wrong size)
                self.bad_sample(error_reason(exc))

    def valid(self, stamp_ns: int) -> bool:
        """Report a valid sample; whether the sink accepted it as the sensor's newest."""
        with self._lock:
            if self._reported_max is not None and stamp_ns <= self._reported_max:
                return True  # reordered here (an older message finished late): already counted
            self._reported_max = stamp_ns
            return bool(self.sink.on_sample(self.name, stamp_ns))

    def new_timeline(self) -> None:
        """The clock jumped back (a looping bag): stamps start over, so ordering does too."""
        with self._lock:
            self._reported_max = None

    def bad_sample(self, reason: str) -> None:
        self.bad += 1
        self.sink.on_bad_sample(self.name, reason)
        now = time.monotonic()  # log throttling only; sample times come from the engine's clock
        if self._warn is not None and now - self._last_warn >= WARN_INTERVAL_S:
            self._last_warn = now
            self._warn(f"sensor {self.name}: bad message ({self.bad} so far): {reason}")


class SensorWorker:
    """Encodes one sensor's newest message in a thread of its own.

    Parameters
    ----------
    stage : the sensor's :class:`~omnibind_ros.core.pipeline.SensorStage`.
    reporter : where outcomes go (:class:`SampleReporter`).
    hook : optional stage timings in s: ``"<sensor>/stamp_to_callback"`` (arrival - stamp)
        and ``"<sensor>/queue_wait"`` (arrival -> the encoder thread picks the message up).
    """

    def __init__(self, stage: SensorStage, reporter: SampleReporter,
                 hook: StageHook | None = None) -> None:
        self.name = reporter.name
        self.stage = stage
        self.reporter = reporter
        self.hook = hook
        self._cond = threading.Condition()
        # payload, stamp, wall arrival, timeline (the stage's clock_resets when admitted)
        self._pending: tuple[Any, int, float, int] | None = None
        self._timeline = stage.clock_resets
        self._busy = False
        self._stop = False
        self.received = self.superseded = 0
        self._thread = threading.Thread(target=self._run, name=f"omnibind_{self.name}",
                                        daemon=True)
        self._thread.start()

    @property
    def encoded(self) -> int:
        return self.reporter.encoded

    @property
    def bad(self) -> int:
        return self.reporter.bad

    # -- callback side ---------------------------------------------------------------------------

    def submit(self, msg: Any, stamp_ns: int, arrival_ns: int) -> None:
        """Take one message (subscription callback; cheap). Never raises."""
        self.received += 1
        if self.hook is not None:
            self.hook(f"{self.name}/stamp_to_callback", (arrival_ns - stamp_ns) * 1e-9)
        admission = self.stage.admit(msg, stamp_ns, arrival_ns)
        timeline = self.stage.clock_resets
        if timeline != self._timeline:  # the clock jumped back: a message of the old timeline
            with self._cond:            # still pending or being encoded is dropped, unreported
                self._timeline, self._pending = timeline, None
            self.reporter.new_timeline()
        if admission.kind != "due":
            self.reporter.report(SampleOutcome(admission.kind, stamp_ns, admission.reason))
            return
        with self._cond:
            superseded = self._pending
            self._pending = (admission.payload, stamp_ns, time.perf_counter(), timeline)
            self._cond.notify_all()
        if superseded is not None:
            self.superseded += 1
            self.reporter.valid(superseded[1])

    def wait_idle(self, timeout_s: float = 5.0) -> bool:
        """Until no message is pending or being encoded; whether that happened in time."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending is not None or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop:
                    return False
                self._cond.wait(left)
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._pending = None
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    # -- worker thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                payload, stamp_ns, arrival, timeline = self._pending
                self._pending, self._busy = None, True
            try:
                if self.hook is not None:
                    self.hook(f"{self.name}/queue_wait", time.perf_counter() - arrival)
                outcome = self.stage.encode(payload, stamp_ns)
                with self._cond:
                    current = timeline == self._timeline
                if current:
                    self.reporter.report(outcome)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
