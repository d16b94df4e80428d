"""Per-sensor worker: convert on arrival, preprocess and encode the newest message off-thread.

The subscription callback only converts the message (zero-copy views, well under a millisecond)
and hands the payload to :class:`SensorWorker`, which keeps ONE pending payload: a newer message
replaces an older one that is still waiting (bounded latency and memory, never a queue). A
dedicated thread per sensor encodes it, so a slow encoder holds up neither the executor, nor
other sensors, nor the fusion tick (ONNX Runtime releases the GIL while it runs).

Audio is a stream, not a sequence of samples: every 20 ms chunk is pushed into the sensor's
streaming preprocessor in the callback (no chunk may be skipped, or the window would have gaps),
and the window is encoded at most ``encode_rate_hz`` times per second (the ``encode_rate_hz``
throttle applies to every modality; 0 = every message).

What the availability monitor hears: every message that converts (and, for audio, is pushed)
counts as a valid sample, including those replaced while pending or skipped by the encode-rate
throttle, because the monitor judges the *sensor's* rate, not the encoder's. A message that
fails conversion, preprocessing or encoding, or whose stamp is not newer than the previous
one, is a bad sample. Stamps reach the monitor in increasing order only (the worker may finish
an older message after a newer one was reported), so reordering here never counts as bad input.

The synchronous decisions (stamp order, conversion, streaming push, encode-rate throttle;
then model input and embedding checks) live in :class:`SampleGate` and :func:`checked_embedding`,
which the offline bag evaluator (``omnibind_ros.bag.offline``) calls directly: a bag is judged
by exactly the rules the node applies, without the threads.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from omnibind_ros.core.errors import PreprocessError
from omnibind_ros.core.preprocess import build_preprocessor

__all__ = ["Admission", "Pipeline", "SampleGate", "SensorWorker", "checked_embedding",
           "make_pipeline"]

#: Minimum interval between two warnings of one sensor (a broken driver at 50 Hz would
#: otherwise flood the log).
WARN_INTERVAL_S = 2.0


class Pipeline:
    """How one sensor's payload becomes an embedding (built from the bundle, nothing hard-coded).

    Attributes
    ----------
    preprocess : payload -> model input (unused for streaming sensors).
    encode : model input -> unit embedding float32 ``[D]``.
    streaming : the preprocessor accumulates payloads (audio); see ``push``/``features``.
    preprocessor : the per-sensor preprocessor object (stateful for audio and tactile).
    """

    def __init__(self, modality: str, preprocessor: Any, backend: Any) -> None:
        self.modality = modality
        self.preprocessor = preprocessor
        self.streaming = modality == "audio"
        self._backend = backend
        if modality == "text":
            self.encode: Callable[[Any], np.ndarray] = lambda t: backend.embed_text([t])[0]
        else:
            self.encode = lambda x: backend.encode(modality, np.asarray(x)[None])[0]

    def encode_batch(self, inputs: list[Any]) -> np.ndarray:
        """Model inputs -> embeddings ``[B, D]`` in one encoder run (offline evaluation)."""
        if self.modality == "text":
            return self._backend.embed_text(list(inputs))
        return self._backend.encode(self.modality, np.stack([np.asarray(x) for x in inputs]))

    def preprocess(self, payload: Any) -> Any:
        if self.modality == "image":  # converters return DecodedImage for image topics
            return self.preprocessor(payload.image, channel_order=payload.channel_order)
        return self.preprocessor(payload)

    def push(self, payload: Any) -> None:
        self.preprocessor.push(payload)

    def features(self) -> Any:
        return self.preprocessor.features()


def make_pipeline(modality: str, bundle: Any, backend: Any) -> Pipeline:
    """A fresh pipeline (one per sensor: audio and tactile preprocessors keep state)."""
    configs = bundle.preprocess_configs
    if modality not in configs:
        raise ValueError(f"the model bundle {bundle.root} has no {modality} encoder; it has "
                         f"{sorted(configs)}")
    return Pipeline(modality, build_preprocessor(modality, configs[modality]), backend)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PreprocessError):
        return f"{type(exc).__name__}: {exc}"
    return f"unexpected {type(exc).__name__}: {exc}"


def bad_reason(exc: BaseException) -> str:
    """How a failed conversion, preprocessing or encoding is reported (a bad sample)."""
    return _reason(exc) + "; message dropped"


def checked_embedding(embedding: Any) -> np.ndarray:
    """An encoder output as float32 ``[D]``; ValueError if non-finite or mis-shaped."""
    embedding = np.asarray(embedding, dtype=np.float32)
    if embedding.ndim != 1 or not np.isfinite(embedding).all():
        raise ValueError(f"encoder returned a non-finite or mis-shaped embedding "
                         f"{list(embedding.shape)}")
    return embedding


@dataclass(frozen=True)
class Admission:
    """What :meth:`SampleGate.admit` decided about one message.

    kind : "bad" (report ``reason`` as a bad sample), "valid" (a valid sample that is not
        encoded: the encode-rate throttle skipped it) or "due" (preprocess and encode
        ``payload``; its validity depends on that).
    """

    kind: str
    reason: str = ""
    payload: Any = None


class SampleGate:
    """The callback-side rules of one sensor, without threads (see the module docstring).

    Parameters
    ----------
    convert : ``msg -> payload``.
    pipeline : the sensor's :class:`Pipeline`.
    encode_rate_hz : encode at most this often (arrival time); 0 = every message.
    """

    def __init__(self, convert: Callable[[Any], Any], pipeline: Pipeline,
                 encode_rate_hz: float = 0.0) -> None:
        self.convert = convert
        self.pipeline = pipeline
        self.encode_period_s = 1.0 / encode_rate_hz if encode_rate_hz > 0 else 0.0
        self.last_stamp: float | None = None
        self.last_submit: float | None = None
        self.lock = threading.Lock()  # streaming preprocessor: callback pushes, worker reads

    def admit(self, msg: Any, stamp_s: float, arrival_s: float) -> Admission:
        """Stamp order, conversion (and the streaming push), encode-rate throttle."""
        if self.last_stamp is not None and stamp_s <= self.last_stamp:
            return Admission("bad", f"stamp {stamp_s:.3f} not newer than the previous "
                             f"{self.last_stamp:.3f} (out of order or duplicate); message dropped")
        try:
            payload = self.convert(msg)
            if self.pipeline.streaming:
                with self.lock:
                    self.pipeline.push(payload)
        except Exception as exc:  # noqa: BLE001  (a bad message must never kill the node)
            return Admission("bad", bad_reason(exc))
        self.last_stamp = stamp_s
        due = (self.last_submit is None or self.encode_period_s == 0.0
               or arrival_s - self.last_submit >= self.encode_period_s)
        if not due:
            return Admission("valid")
        self.last_submit = arrival_s
        return Admission("due", payload=payload)

    def model_input(self, payload: Any) -> Any:
        """The encoder input of a due payload (streaming sensors: the current window)."""
        if self.pipeline.streaming:
            with self.lock:
                return self.pipeline.features()
        return self.pipeline.preprocess(payload)


class SensorWorker:
    """Encodes one sensor's newest message in a thread of its own.

    Parameters
    ----------
    name : sensor name.
    convert : ``msg -> payload`` (from ``ros.conversions.conversion_for``).
    pipeline : preprocess/encode (see :class:`Pipeline`).
    on_valid : ``(stamp_s) -> bool``: report a valid sample; returns whether it was accepted.
    on_bad : ``(reason) -> None``: report a bad sample.
    on_embedding : ``(stamp_s, embedding) -> None``: store an embedding.
    warn : logger function for throttled warnings.
    encode_rate_hz : encode at most this often (arrival time); 0 = every message.
    """

    def __init__(self, name: str, convert: Callable[[Any], Any], pipeline: Pipeline, *,
                 on_valid: Callable[[float], bool], on_bad: Callable[[str], None],
                 on_embedding: Callable[[float, np.ndarray], None],
                 warn: Callable[[str], None], encode_rate_hz: float = 0.0) -> None:
        self.name = name
        self.convert = convert
        self.pipeline = pipeline
        self._on_valid, self._on_bad, self._on_embedding = on_valid, on_bad, on_embedding
        self._warn = warn
        self.gate = SampleGate(convert, pipeline, encode_rate_hz)
        self.encode_period_s = self.gate.encode_period_s
        self._cond = threading.Condition()
        self._pending: tuple[Any, float] | None = None
        self._stop = False
        self._report_lock = threading.Lock()
        self._reported_max = -float("inf")
        self._last_warn = -float("inf")
        self.received = self.encoded = self.superseded = self.bad = 0
        self._thread = threading.Thread(target=self._run, name=f"omnibind_{name}", daemon=True)
        self._thread.start()

    # -- callback side ---------------------------------------------------------------------------

    def submit(self, msg: Any, stamp_s: float, arrival_s: float) -> None:
        """Take one message (subscription callback; cheap). Never raises."""
        self.received += 1
        admission = self.gate.admit(msg, stamp_s, arrival_s)
        if admission.kind == "bad":
            self._bad(admission.reason)
            return
        if admission.kind == "valid":
            self._report_valid(stamp_s)
            return
        with self._cond:
            superseded, self._pending = self._pending, (admission.payload, stamp_s)
            self._cond.notify()
        if superseded is not None:
            self.superseded += 1
            self._report_valid(superseded[1])

    def stop(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._pending = None
            self._cond.notify()
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
                payload, stamp_s = self._pending
                self._pending = None
            self._process(payload, stamp_s)

    def _process(self, payload: Any, stamp_s: float) -> None:
        try:
            embedding = checked_embedding(self.pipeline.encode(self.gate.model_input(payload)))
        except Exception as exc:  # noqa: BLE001
            self._bad(bad_reason(exc))
            return
        if self._report_valid(stamp_s):
            self.encoded += 1
            try:
                self._on_embedding(stamp_s, embedding)
            except Exception as exc:  # noqa: BLE001
                self._bad(_reason(exc))

    # -- reporting -------------------------------------------------------------------------------

    def _report_valid(self, stamp_s: float) -> bool:
        with self._report_lock:
            if stamp_s <= self._reported_max:
                return True  # reordered here (an older message finished late): already counted
            self._reported_max = stamp_s
            return bool(self._on_valid(stamp_s))

    def _bad(self, reason: str) -> None:
        self.bad += 1
        self._on_bad(reason)
        now = time.monotonic()  # log throttling only; sample times come from the node clock
        if now - self._last_warn >= WARN_INTERVAL_S:
            self._last_warn = now
            self._warn(f"sensor {self.name}: bad message ({self.bad} so far): {reason}")
