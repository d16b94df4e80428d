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
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from omnibind_ros.core.errors import PreprocessError
from omnibind_ros.core.preprocess import build_preprocessor

__all__ = ["Pipeline", "SensorWorker", "make_pipeline"]

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
        if modality == "text":
            self.encode: Callable[[Any], np.ndarray] = lambda t: backend.embed_text([t])[0]
        else:
            self.encode = lambda x: backend.encode(modality, np.asarray(x)[None])[0]

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
        self.encode_period_s = 1.0 / encode_rate_hz if encode_rate_hz > 0 else 0.0
        self._cond = threading.Condition()
        self._pending: tuple[Any, float] | None = None
        self._stop = False
        self._last_stamp: float | None = None  # arrival-order check (callback side)
        self._last_submit: float | None = None
        self._report_lock = threading.Lock()
        self._reported_max = -float("inf")
        self._pre_lock = threading.Lock()  # streaming preprocessor: callback pushes, thread reads
        self._last_warn = -float("inf")
        self.received = self.encoded = self.superseded = self.bad = 0
        self._thread = threading.Thread(target=self._run, name=f"omnibind_{name}", daemon=True)
        self._thread.start()

    # -- callback side ---------------------------------------------------------------------------

    def submit(self, msg: Any, stamp_s: float, arrival_s: float) -> None:
        """Take one message (subscription callback; cheap). Never raises."""
        self.received += 1
        if self._last_stamp is not None and stamp_s <= self._last_stamp:
            self._bad(f"stamp {stamp_s:.3f} not newer than the previous {self._last_stamp:.3f} "
                      "(out of order or duplicate); message dropped")
            return
        try:
            payload = self.convert(msg)
            if self.pipeline.streaming:
                with self._pre_lock:
                    self.pipeline.push(payload)
        except Exception as exc:  # noqa: BLE001  (a bad message must never kill the node)
            self._bad(_reason(exc) + "; message dropped")
            return
        self._last_stamp = stamp_s
        due = (self._last_submit is None or self.encode_period_s == 0.0
               or arrival_s - self._last_submit >= self.encode_period_s)
        if not due:
            self._report_valid(stamp_s)
            return
        with self._cond:
            superseded, self._pending = self._pending, (payload, stamp_s)
            self._last_submit = arrival_s
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
            if self.pipeline.streaming:
                with self._pre_lock:
                    model_input = self.pipeline.features()
            else:
                model_input = self.pipeline.preprocess(payload)
            embedding = np.asarray(self.pipeline.encode(model_input), dtype=np.float32)
            if embedding.ndim != 1 or not np.isfinite(embedding).all():
                raise ValueError(f"encoder returned a non-finite or mis-shaped embedding "
                                 f"{list(embedding.shape)}")
        except Exception as exc:  # noqa: BLE001
            self._bad(_reason(exc) + "; message dropped")
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
