"""One sensor's path from a converted message to an embedding, and the rules that judge it.

:class:`Pipeline` is how a payload becomes an embedding (preprocessing and encoder, both from the
bundle). :class:`SensorStage` adds the rules applied to every message of one sensor, without any
thread: stamp order, conversion (and the streaming push for audio), the ``encode_rate_hz``
throttle, then the model input and the embedding checks. It turns each message into a
:class:`SampleOutcome` that says what the availability monitor should hear:

* ``"bad"``: the message failed conversion, preprocessing or encoding, or its stamp is not newer
  than the previous one (a bad sample, with the reason);
* ``"valid"``: a valid sample that is not encoded (the encode-rate throttle skipped it, or a newer
  message replaced it while it waited for a busy encoder): the monitor judges the *sensor's*
  rate, not the encoder's;
* ``"embedding"``: a valid sample and its unit embedding.

The same stage runs inside the node's threaded :class:`~omnibind_ros.core.sensor_worker.
SensorWorker`, inline in the offline bag evaluation, and in its worker processes, so a bag is
judged by exactly the rules the node applies.
"""
from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from omnibind_ros.core.errors import BundleCorruptError, PreprocessError
from omnibind_ros.core.preprocess import build_preprocessor
from omnibind_ros.core.quality import QualityTracker

__all__ = ["CLOCK_JUMP_TOLERANCE_NS", "Admission", "Pipeline", "SampleOutcome", "SensorStage",
           "StageHook", "UnusableEmbeddingError", "bad_reason", "check_encoder",
           "checked_embedding", "error_reason", "make_pipeline"]

#: ``hook(key, seconds)``: receives stage timings (``"<modality>/preprocess"``,
#: ``"<modality>/encode"``, ...) when a caller (a benchmark) installs one; None costs nothing.
StageHook = Callable[[str, float], None]
NS = 1_000_000_000
#: A clock reading (or stamp) this far behind the newest one is a new timeline (a looping
#: bag, a simulator reset), not reordering between threads; the engine's monitor uses the same
#: tolerance (``core.recognizer.CLOCK_JUMP_TOLERANCE_NS``).
CLOCK_JUMP_TOLERANCE_NS = NS


class Pipeline:
    """How one sensor's payload becomes an embedding (built from the bundle, nothing hard-coded).

    Attributes
    ----------
    modality : the modality registry key.
    preprocessor : the per-sensor preprocessor object (stateful for audio and tactile).
    streaming : the preprocessor accumulates payloads (audio); see :meth:`push` /
        :meth:`features`.
    hook : optional :data:`StageHook` timing ``preprocess`` and ``encode``.
    """

    def __init__(self, modality: str, preprocessor: Any, backend: Any,
                 hook: StageHook | None = None) -> None:
        self.modality = modality
        self.preprocessor = preprocessor
        self.streaming = modality == "audio"
        self.hook = hook
        self._backend = backend

    def encode(self, model_input: Any) -> np.ndarray:
        """Model input -> unit embedding float32 ``[D]``."""
        start = time.perf_counter()
        if self.modality == "text":
            out = self._backend.embed_text([model_input])[0]
        else:
            out = self._backend.encode(self.modality, np.asarray(model_input)[None])[0]
        self._timed("encode", start)
        return out

    def preprocess(self, payload: Any) -> Any:
        """Payload -> model input (not for streaming sensors)."""
        start = time.perf_counter()
        if self.modality == "image":  # converters return DecodedImage for image topics
            out = self.preprocessor(payload.image, channel_order=payload.channel_order)
        else:
            out = self.preprocessor(payload)
        self._timed("preprocess", start)
        return out

    def push(self, payload: Any) -> None:
        """Feed one chunk into a streaming preprocessor."""
        self.preprocessor.push(payload)

    def features(self) -> Any:
        """The current window of a streaming preprocessor as a model input."""
        start = time.perf_counter()
        out = self.preprocessor.features()
        self._timed("preprocess", start)
        return out

    def _timed(self, stage: str, start: float) -> None:
        if self.hook is not None:
            self.hook(f"{self.modality}/{stage}", time.perf_counter() - start)


def make_pipeline(modality: str, bundle: Any, backend: Any,
                  hook: StageHook | None = None) -> Pipeline:
    """A fresh pipeline (one per sensor: audio and tactile preprocessors keep state).

    The first pipeline of a modality on a backend also runs its encoder once on a zero input
    of the shape ``bundle.yaml`` declares (:func:`check_encoder`), so an encoder graph that
    disagrees with the manifest fails here, at configure, instead of turning every message of
    the sensor into a bad sample.
    """
    configs = bundle.preprocess_configs
    if modality not in configs:
        raise ValueError(f"the model bundle {bundle.root} has no {modality} encoder; it has "
                         f"{sorted(configs)}")
    check_encoder(modality, bundle, backend)
    return Pipeline(modality, build_preprocessor(modality, configs[modality]), backend, hook)


#: backend -> modalities whose encoder :func:`check_encoder` has run (once per backend).
_CHECKED: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def check_encoder(modality: str, bundle: Any, backend: Any) -> None:
    """Run ``modality``'s encoder once on the declared input; BundleCorruptError if it fails.

    Checksums prove the files are the ones exported, not that the manifest describes them: an
    encoder re-exported for another input size or embedding size (and re-hashed) loads, then
    fails on every message. One zero batch ``[1, *sample_shape]`` must run and give ``[1, D]``.
    Modalities without a spec in ``bundle.modalities`` (text) are not probed.
    """
    spec = getattr(bundle, "modalities", {}).get(modality)
    served = getattr(backend, "modalities", None)  # a backend built for a subset: not its own
    done = _checked(backend)
    if spec is None or modality in done or (served is not None and modality not in served):
        return
    declared = (1, *spec.sample_shape)
    try:
        out = np.asarray(backend.encode(modality, np.zeros(declared, np.dtype(spec.input.dtype))))
    except Exception as exc:  # noqa: BLE001  (the runtime's own error types, any of them)
        raise BundleCorruptError(
            f"{spec.file}: the {modality} encoder does not run on the input bundle.yaml "
            f"declares {list(declared)}: {_one_line(exc)}", path=spec.file) from exc
    if out.shape != (1, bundle.dim):
        raise BundleCorruptError(
            f"{spec.file}: the {modality} encoder outputs {list(out.shape)}, bundle.yaml's "
            f"embedding_dim is {bundle.dim} (expected [1, {bundle.dim}])", path=spec.file)
    done.add(modality)


def _checked(backend: Any) -> set[str]:
    try:
        return _CHECKED.setdefault(backend, set())
    except TypeError:  # a backend that cannot be weakly referenced: checked every time
        return set()


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:400]


class UnusableEmbeddingError(ValueError):
    """An encoder output that cannot be fused: non-finite, mis-shaped or all zero.

    Not a :class:`~omnibind_ros.core.errors.PreprocessError` (the input was well formed), but
    an expected verdict on a sample all the same (a tactile frame identical to its reference
    encodes to zero through a linear encoder), so it is reported like one, not as a bug.
    """


def error_reason(exc: BaseException) -> str:
    """How an exception is named in a bad-sample reason ("unexpected" marks a bug)."""
    if isinstance(exc, PreprocessError | UnusableEmbeddingError):
        return f"{type(exc).__name__}: {exc}"
    return f"unexpected {type(exc).__name__}: {exc}"


def bad_reason(exc: BaseException) -> str:
    """How a failed conversion, preprocessing or encoding is reported (a bad sample)."""
    return error_reason(exc) + "; message dropped"


def checked_embedding(embedding: Any) -> np.ndarray:
    """An encoder output as float32 ``[D]``; UnusableEmbeddingError (a ValueError) if
    non-finite, mis-shaped or zero.

    A zero vector (e.g. a linear encoder given an all-zero input) has no direction: it cannot
    be classified or fused, so it is a bad sample of its sensor, not a failure of every tick.
    """
    embedding = np.asarray(embedding, dtype=np.float32)
    if embedding.ndim != 1 or not np.isfinite(embedding).all():
        raise UnusableEmbeddingError(f"encoder returned a non-finite or mis-shaped embedding "
                         f"{list(embedding.shape)}")
    if not np.any(embedding):
        raise UnusableEmbeddingError("encoder returned an all-zero embedding")
    return embedding


@dataclass(frozen=True)
class Admission:
    """What :meth:`SensorStage.admit` decided about one message.

    kind : "bad" (report ``reason`` as a bad sample), "valid" (a valid sample that is not
        encoded: the encode-rate throttle skipped it) or "due" (preprocess and encode
        ``payload``; its validity depends on that).
    """

    kind: str
    reason: str = ""
    payload: Any = None


@dataclass(frozen=True)
class SampleOutcome:
    """What one message of a sensor amounts to (see the module docstring).

    kind : "bad", "valid" or "embedding".
    stamp_ns : the message's stamp (header stamp, or the arrival time without a header), ns.
    reason : why it is bad ("" otherwise).
    embedding : float32 ``[D]`` for "embedding", else None.
    quality : the sensor's input quality when it was encoded (:mod:`omnibind_ros.core.quality`,
        smoothed over its recent messages), carried into the embedding's slot.
    """

    kind: str
    stamp_ns: int
    reason: str = ""
    embedding: np.ndarray | None = None
    quality: float = 1.0


class SensorStage:
    """The per-message rules of one sensor, without threads (see the module docstring).

    :meth:`admit` is the cheap part a subscription callback runs; :meth:`encode` the expensive
    part an encoder thread runs; :meth:`process` both, for callers without threads.

    Parameters
    ----------
    convert : ``msg -> payload``.
    pipeline : the sensor's :class:`Pipeline`.
    encode_rate_hz : encode at most this often (arrival time); 0 = every message.

    Times (stamps, arrival) are integer nanoseconds.
    """

    def __init__(self, convert: Callable[[Any], Any], pipeline: Pipeline,
                 encode_rate_hz: float = 0.0) -> None:
        self.convert = convert
        self.pipeline = pipeline
        self.encode_period_ns = round(NS / encode_rate_hz) if encode_rate_hz > 0 else 0
        self.last_stamp: int | None = None
        self.last_submit: int | None = None
        self.last_arrival: int | None = None
        #: How many times the clock jumped back (a new timeline began) since this stage began.
        self.clock_resets = 0
        #: The sensor's input quality, from every valid message (not only the encoded ones).
        self.input_quality = QualityTracker(pipeline.modality)
        self._lock = threading.Lock()  # streaming preprocessor: callback pushes, encoder reads

    def admit(self, msg: Any, stamp_ns: int, arrival_ns: int) -> Admission:
        """Stamp order, conversion (and the streaming push), encode-rate throttle.

        When the arrival clock jumps back by more than :data:`CLOCK_JUMP_TOLERANCE_NS` (a bag
        played with ``--loop``, a simulator reset) a new timeline begins: stamp order and the
        throttle start over, or every message of the new timeline would be "out of order"
        (the sensor DEGRADED for a whole loop) and none would be due for encoding.
        """
        if self.last_arrival is not None \
                and arrival_ns < self.last_arrival - CLOCK_JUMP_TOLERANCE_NS:
            self.last_stamp = self.last_submit = None
            self.clock_resets += 1
        self.last_arrival = arrival_ns
        if self.last_stamp is not None and stamp_ns <= self.last_stamp:
            return Admission("bad", f"stamp {stamp_ns / NS:.3f} not newer than the previous "
                             f"{self.last_stamp / NS:.3f} (out of order or duplicate); message "
                             "dropped")
        try:
            payload = self.convert(msg)
            with self._lock:
                if self.pipeline.streaming:
                    self.pipeline.push(payload)
                self.input_quality.update(payload, stamp_ns)
        except Exception as exc:  # noqa: BLE001  (a bad message must never kill the node)
            return Admission("bad", bad_reason(exc))
        self.last_stamp = stamp_ns
        due = (self.last_submit is None or self.encode_period_ns == 0
               or arrival_ns - self.last_submit >= self.encode_period_ns)
        if not due:
            return Admission("valid")
        self.last_submit = arrival_ns
        return Admission("due", payload=payload)

    def encode(self, payload: Any, stamp_ns: int) -> SampleOutcome:
        """A due payload's embedding (streaming sensors: the current window), or a bad sample."""
        try:
            if self.pipeline.streaming:
                with self._lock:
                    model_input = self.pipeline.features()
            else:
                model_input = self.pipeline.preprocess(payload)
            embedding = checked_embedding(self.pipeline.encode(model_input))
        except Exception as exc:  # noqa: BLE001
            return SampleOutcome("bad", stamp_ns, bad_reason(exc))
        return SampleOutcome("embedding", stamp_ns, embedding=embedding,
                             quality=self.input_quality.current.score)

    def process(self, msg: Any, stamp_ns: int, arrival_ns: int) -> SampleOutcome:
        """:meth:`admit` then, for a due message, :meth:`encode`."""
        admission = self.admit(msg, stamp_ns, arrival_ns)
        if admission.kind == "due":
            return self.encode(admission.payload, stamp_ns)
        return SampleOutcome(admission.kind, stamp_ns, admission.reason)
