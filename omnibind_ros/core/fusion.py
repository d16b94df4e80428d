"""Fusion-tick logic, independent of the inference runtime.

One tick: take the newest embedding of every sensor the availability monitor calls fusable,
drop any older than ``max_age_s``, stack them as tokens ``[1, N, D]`` with a padding mask, run
the Adaptive Fusion head (injected as a callable: the backend's ``fuse``), classify the fused
embedding and each token alone against the label embeddings, and return a
:class:`FusionResult` with everything ``msg/Recognition.msg`` carries.

Nothing here waits for a sensor: a tick fuses whatever subset is live at that moment. Times
are integer nanoseconds (stamps, tick times); durations given by people (``max_age_s``) are
seconds, converted once.

Choices made here:

* Token order is deterministic: modality registry order (image, text, thermal, event, tactile,
  audio, point_cloud; unknown keys after, alphabetically), then sensor name. The AF head
  (self-attention without positions, then a mean; seed 000 Eq. 8) does not depend on it, but
  logs, tests and fixed-N engines do.
* ``max_tokens`` (a head exported for at most N tokens) keeps modality diversity first: every
  modality's freshest sensor before any modality's second sensor, fresher before older.
* ``min_modalities`` counts distinct modalities among the tokens (two cameras are one modality).
  Below it nothing is fused and the result says why; its sensor lists stay empty, because
  ``Recognition.sensors`` means "fused in this tick".
* Slots with ``quality < min_quality`` are skipped (quality is a per-sample score in [0, 1]
  that preprocessing may attach; 1.0 when it has none).
"""
from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from omnibind_ros.core.modalities import ALL_MODALITIES, parse_modality

__all__ = [
    "EmbeddingSlot",
    "FusionResult",
    "FusionTick",
    "LatestEmbeddings",
    "ModalityPredictionResult",
    "classify",
    "select_tokens",
]

#: Default tolerance in ns for stamps ahead of the node clock (as AvailabilityMonitor's).
DEFAULT_FUTURE_TOLERANCE_NS = 200_000_000
NS = 1_000_000_000

_MODALITY_RANK = {m.value: i for i, m in enumerate(ALL_MODALITIES)}

FuseFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
Slots = Mapping[str, "EmbeddingSlot"] | Iterable["EmbeddingSlot"]


@dataclass(frozen=True)
class EmbeddingSlot:
    """The newest embedding of one sensor.

    Attributes
    ----------
    sensor : configured sensor name.
    modality : modality registry key (normalised to its value).
    stamp_ns : header stamp (int ns) of the message it was computed from, node clock.
    embedding : float32 ``[D]``; copied and made read-only, so a backend reusing its output
        buffer cannot change a stored slot.
    quality : per-sample quality score in [0, 1] (1.0 when preprocessing attaches none).

    Raises
    ------
    ValueError
        Non-1-D, empty or non-finite embedding, a stamp that is not an int, quality outside
        [0, 1].
    """

    sensor: str
    modality: str
    stamp_ns: int
    embedding: np.ndarray
    quality: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "modality", parse_modality(self.modality).value)
        if not isinstance(self.stamp_ns, numbers.Integral) or isinstance(self.stamp_ns, bool):
            raise TypeError(f"slot {self.sensor}: stamp_ns must be an int of nanoseconds, got "
                            f"{self.stamp_ns!r}")
        if not 0.0 <= self.quality <= 1.0:
            raise ValueError(f"slot {self.sensor}: quality must be in [0, 1], got {self.quality}")
        embedding = np.array(self.embedding, dtype=np.float32, copy=True)
        if embedding.ndim != 1 or embedding.size == 0:
            raise ValueError(f"slot {self.sensor}: embedding must be 1-D [D], got shape "
                             f"{list(embedding.shape)}")
        if not np.isfinite(embedding).all():
            raise ValueError(f"slot {self.sensor}: embedding has non-finite values")
        embedding.setflags(write=False)
        object.__setattr__(self, "embedding", embedding)
        object.__setattr__(self, "stamp_ns", int(self.stamp_ns))
        object.__setattr__(self, "quality", float(self.quality))

    @property
    def dim(self) -> int:
        return int(self.embedding.shape[0])


class LatestEmbeddings:
    """Thread-safe store of the newest :class:`EmbeddingSlot` per sensor.

    Encoders finish out of order (two messages of one sensor encoded concurrently), so ``put``
    keeps a slot only if it is newer than the stored one. A stored slot stamped more than
    ``future_tolerance_ns`` after ``now_ns`` belongs to a timeline that was rewound (looping bag,
    sim reset) and is replaced by any slot.
    """

    def __init__(self, future_tolerance_ns: int = DEFAULT_FUTURE_TOLERANCE_NS) -> None:
        self.future_tolerance_ns = int(future_tolerance_ns)
        self._lock = threading.Lock()
        self._slots: dict[str, EmbeddingSlot] = {}

    def put(self, slot: EmbeddingSlot, now_ns: int | None = None) -> bool:
        """Store ``slot`` if it is the newest of its sensor; return whether it was stored."""
        if not isinstance(slot, EmbeddingSlot):
            raise TypeError(f"expected an EmbeddingSlot, got {type(slot).__name__}")
        with self._lock:
            old = self._slots.get(slot.sensor)
            rewound = (old is not None and now_ns is not None
                       and old.stamp_ns > now_ns + self.future_tolerance_ns)
            if old is None or slot.stamp_ns > old.stamp_ns or rewound:
                self._slots[slot.sensor] = slot
                return True
            return False

    def get(self, sensor: str) -> EmbeddingSlot | None:
        with self._lock:
            return self._slots.get(sensor)

    def remove(self, sensor: str) -> EmbeddingSlot | None:
        """Drop ``sensor``'s slot (sensor removed at runtime); returns it, or None."""
        with self._lock:
            return self._slots.pop(sensor, None)

    def drop_after(self, t_ns: int) -> list[str]:
        """Drop the slots stamped after ``t_ns`` (a timeline the clock jumped back from);
        returns their sensors."""
        with self._lock:
            gone = [name for name, slot in self._slots.items() if slot.stamp_ns > t_ns]
            for name in gone:
                del self._slots[name]
            return gone

    def clear(self) -> None:
        with self._lock:
            self._slots.clear()

    def snapshot(self) -> dict[str, EmbeddingSlot]:
        """A consistent copy of the store (slots are immutable, so a shallow copy suffices)."""
        with self._lock:
            return dict(self._slots)

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots)

    def __contains__(self, sensor: object) -> bool:
        with self._lock:
            return sensor in self._slots


def _token_key(slot: EmbeddingSlot) -> tuple[int, str, str]:
    return (_MODALITY_RANK.get(slot.modality, len(_MODALITY_RANK)), slot.modality, slot.sensor)


def _as_slots(slots: Slots) -> list[EmbeddingSlot]:
    if isinstance(slots, LatestEmbeddings):
        return list(slots.snapshot().values())
    if isinstance(slots, Mapping):
        return list(slots.values())
    return list(slots)


def _newest_per_sensor(slots: list[EmbeddingSlot]) -> list[EmbeddingSlot]:
    newest: dict[str, EmbeddingSlot] = {}
    for slot in slots:
        old = newest.get(slot.sensor)
        # equal stamps: the smaller token key wins, so input order never changes the result
        if old is None or slot.stamp_ns > old.stamp_ns or (
                slot.stamp_ns == old.stamp_ns and _token_key(slot) < _token_key(old)):
            newest[slot.sensor] = slot
    return list(newest.values())


def _limit_tokens(slots: list[EmbeddingSlot], max_tokens: int) -> list[EmbeddingSlot]:
    """Keep ``max_tokens`` slots: each modality's freshest first, then second sensors..."""
    by_freshness = sorted(slots, key=lambda s: (-s.stamp_ns, _token_key(s)))
    rank_in_modality: dict[str, int] = {}
    ranked = []
    for slot in by_freshness:
        rank = rank_in_modality.get(slot.modality, 0)
        rank_in_modality[slot.modality] = rank + 1
        ranked.append((rank, -slot.stamp_ns, _token_key(slot), slot))
    ranked.sort(key=lambda item: item[:3])
    return [item[3] for item in ranked[:max_tokens]]


def select_tokens(slots: Slots, fusable_names: Iterable[str], now_ns: int, max_age_ns: int,
                  max_tokens: int | None = None, *, pad_to: int | None = None,
                  dim: int | None = None, min_quality: float = 0.0,
                  future_tolerance_ns: int = DEFAULT_FUTURE_TOLERANCE_NS,
                  ) -> tuple[np.ndarray, np.ndarray, list[EmbeddingSlot]]:
    """Pick the slots that may enter a fusion tick and stack them as padded tokens.

    Parameters
    ----------
    slots : a :class:`LatestEmbeddings`, a ``{sensor: slot}`` mapping or an iterable of slots
        (several slots of one sensor: the newest counts).
    fusable_names : sensors the availability monitor allows (``AvailabilityMonitor.fusable``).
    now_ns : tick time (int ns) on the node clock.
    max_age_ns : slots older than this (``now_ns - stamp_ns``) are skipped; so are slots
        stamped more than ``future_tolerance_ns`` after ``now_ns``.
    max_tokens : at most this many tokens (see the module docstring for which are kept).
    pad_to : pad the token axis to this length (a head with a static ``N_max``); defaults to
        the number of selected tokens. ``max_tokens`` defaults to it.
    dim : embedding size D, used for the shape when nothing is selected (else ``[1, 0, 0]``).
    min_quality : slots with a lower quality score are skipped.

    Returns
    -------
    tokens : float32 ``[1, N, D]``, padded rows zero.
    mask : bool ``[1, N]``, True for real tokens (the backends' convention).
    used : the selected slots in token order (registry modality order, then sensor name).

    Raises
    ------
    ValueError
        Selected embeddings of different sizes, or ``pad_to`` smaller than ``max_tokens``.
    """
    if not max_age_ns >= 0:
        raise ValueError(f"max_age_ns must be >= 0, got {max_age_ns!r}")
    if max_tokens is None:
        max_tokens = pad_to
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if pad_to is not None and max_tokens is not None and max_tokens > pad_to:
        raise ValueError(f"max_tokens={max_tokens} exceeds pad_to={pad_to}")
    allowed = set(fusable_names)
    candidates = [s for s in _newest_per_sensor(_as_slots(slots))
                  if s.sensor in allowed and s.quality >= min_quality
                  and -future_tolerance_ns <= now_ns - s.stamp_ns <= max_age_ns]
    if max_tokens is not None and len(candidates) > max_tokens:
        candidates = _limit_tokens(candidates, max_tokens)
    used = sorted(candidates, key=_token_key)
    dims = {s.dim for s in used}
    if len(dims) > 1:
        raise ValueError(f"embeddings of different sizes {sorted(dims)} from "
                         f"{[(s.sensor, s.dim) for s in used]}")
    d = dims.pop() if dims else (dim or 0)
    n = len(used) if pad_to is None else pad_to
    tokens = np.zeros((1, n, d), dtype=np.float32)
    mask = np.zeros((1, n), dtype=bool)
    if used:
        tokens[0, :len(used)] = np.stack([s.embedding for s in used])
        mask[0, :len(used)] = True
    return tokens, mask, used


def _normalize(x: np.ndarray, what: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if not np.all(norms > 0) or not np.all(np.isfinite(norms)):
        raise ValueError(f"{what} has zero-length or non-finite rows")
    return x / norms


def _softmax_top_k(logits: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    shifted = logits - logits.max(axis=-1, keepdims=True)  # stable exp
    probs = np.exp(shifted)
    probs /= probs.sum(axis=-1, keepdims=True)
    k = min(top_k, probs.shape[-1])
    # stable sort of -p: equal probabilities keep label order, so ties resolve deterministically
    order = np.argsort(-probs, axis=-1, kind="stable")[..., :k]
    return order.astype(np.int64), np.take_along_axis(probs, order, axis=-1).astype(np.float32)


def classify(embedding: np.ndarray, label_embeddings: np.ndarray, logit_scale: float,
             top_k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Zero-shot classification: cosine similarity -> scaled softmax over all labels -> top-k.

    Parameters
    ----------
    embedding : ``[D]`` or ``[B, D]``; normalised here (any non-zero length).
    label_embeddings : ``[C, D]``; normalised here.
    logit_scale : multiplier of the cosines (the exponentiated CLIP-style scale from the bundle,
        e.g. 100), > 0.
    top_k : how many labels to return per embedding (fewer if C is smaller).

    Returns
    -------
    indices : int64 ``[k]`` or ``[B, k]``, label indices best first.
    probabilities : float32, same shape: softmax probabilities in [0, 1] (over all C labels,
        the convention of msg/Recognition.msg).
    """
    if not (math.isfinite(logit_scale) and logit_scale > 0):
        raise ValueError(f"logit_scale must be finite and > 0, got {logit_scale!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    labels = _normalize(_as_matrix(label_embeddings, "label_embeddings"), "label_embeddings")
    return _classify_normalized(embedding, labels, float(logit_scale), top_k)


def _as_matrix(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"{what} must be [C, D] with C, D >= 1, got {list(x.shape)}")
    return x


def _classify_normalized(embedding: np.ndarray, labels: np.ndarray, logit_scale: float,
                         top_k: int) -> tuple[np.ndarray, np.ndarray]:
    emb = np.asarray(embedding, dtype=np.float64)
    if emb.ndim not in (1, 2) or emb.shape[-1] != labels.shape[1]:
        raise ValueError(f"embedding must be [D] or [B, D] with D={labels.shape[1]}, got "
                         f"{list(emb.shape)}")
    logits = logit_scale * (_normalize(emb, "embedding") @ labels.T)  # float64: exact softmax
    return _softmax_top_k(logits, top_k)


@dataclass(frozen=True)
class ModalityPredictionResult:
    """What one sensor's embedding says alone (``msg/ModalityPrediction.msg``).

    Attributes
    ----------
    sensor, modality : the sensor.
    label : best label for its embedding alone.
    score : softmax probability of ``label`` in [0, 1].
    stamp_ns : stamp (int ns) of the sample its embedding came from.
    age_s : tick time minus ``stamp_ns``, in s, >= 0.
    """

    sensor: str
    modality: str
    label: str
    score: float
    stamp_ns: int
    age_s: float


@dataclass(frozen=True)
class FusionResult:
    """The result of one fusion tick (what ``msg/Recognition.msg`` carries).

    Attributes
    ----------
    tick_ns : node-clock time (int ns) of the tick.
    stamp_ns : stamp (int ns) of the newest sample fused (Recognition ``header.stamp``); None
        if none.
    best_label, best_score : top label and its probability; ``""`` and 0 without an answer.
    top_labels, top_scores : the k best, best first.
    sensors, modalities : the fused sensors and their modalities (parallel, token order).
    per_modality : each fused sensor classified alone, in the order of ``sensors``.
    embedding : the fused unit embedding float32 ``[D]``; None without an answer.
    no_answer_reason : why nothing was recognised; empty when there is an answer.
    confidence : calibrated probability that ``best_label`` is right: the best label's
        probability after the bundle's temperature (:mod:`omnibind_ros.core.calibration`);
        equals ``best_score`` for a bundle without one; 0 without an answer.
    unsure : the answer's confidence is below the tick's ``unsure_below`` threshold (the label
        is still given: a consumer decides whether a guess is better than nothing).
    """

    tick_ns: int
    stamp_ns: int | None = None
    best_label: str = ""
    best_score: float = 0.0
    top_labels: tuple[str, ...] = ()
    top_scores: tuple[float, ...] = ()
    sensors: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    per_modality: tuple[ModalityPredictionResult, ...] = ()
    embedding: np.ndarray | None = field(default=None, repr=False)
    no_answer_reason: str = ""
    confidence: float = 0.0
    unsure: bool = False

    @property
    def answered(self) -> bool:
        return not self.no_answer_reason


class FusionTick:
    """Runs fusion ticks with an injected fusion head.

    Parameters
    ----------
    fuse : ``fuse(tokens [1, N, D] float32, mask [1, N] bool) -> [1, D]`` (the backend's AF
        head, e.g. ``backend.fuse``).
    label_names : C label names, in the order of ``label_embeddings``.
    label_embeddings : ``[C, D]`` (normalised once here).
    logit_scale : the bundle's logit scale (multiplier, > 0).
    max_age_s : oldest sample, in s, that may be fused (:attr:`max_age_ns` in ns).
    top_k : labels in ``top_labels`` (fewer if C is smaller).
    min_modalities : distinct modalities needed for an answer.
    max_tokens, pad_to, min_quality, future_tolerance_ns : passed to :func:`select_tokens`.
    temperature : the bundle's calibration temperature (> 0; 1 = uncalibrated): ``confidence``
        is the best label's probability under ``softmax(logit_scale * cos / temperature)``.
        The scores themselves stay the model's (``top_scores``), so existing consumers and
        reports do not change meaning with a calibrated bundle.
    unsure_below : answers with ``confidence`` below it are marked ``unsure`` (0 = never).
    """

    def __init__(self, fuse: FuseFn, label_names: Sequence[str], label_embeddings: np.ndarray,
                 logit_scale: float, *, max_age_s: float, top_k: int = 5,
                 min_modalities: int = 1, max_tokens: int | None = None,
                 pad_to: int | None = None, min_quality: float = 0.0,
                 future_tolerance_ns: int = DEFAULT_FUTURE_TOLERANCE_NS,
                 temperature: float = 1.0, unsure_below: float = 0.0) -> None:
        labels = _as_matrix(label_embeddings, "label_embeddings")
        if len(label_names) != labels.shape[0]:
            raise ValueError(f"{len(label_names)} label names for {labels.shape[0]} embeddings")
        if not (math.isfinite(logit_scale) and logit_scale > 0):
            raise ValueError(f"logit_scale must be finite and > 0, got {logit_scale!r}")
        if top_k < 1 or min_modalities < 1:
            raise ValueError(f"top_k and min_modalities must be >= 1, got {top_k}, "
                             f"{min_modalities}")
        if not max_age_s >= 0:
            raise ValueError(f"max_age_s must be >= 0, got {max_age_s!r}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
        if not 0.0 <= unsure_below <= 1.0:
            raise ValueError(f"unsure_below must be in [0, 1], got {unsure_below!r}")
        self.fuse = fuse
        self.label_names = tuple(label_names)
        self._labels = _normalize(labels, "label_embeddings")
        self.logit_scale = float(logit_scale)
        self.max_age_s = float(max_age_s)
        self.max_age_ns = round(self.max_age_s * NS)
        self.top_k = int(top_k)
        self.min_modalities = int(min_modalities)
        self.max_tokens = max_tokens
        self.pad_to = pad_to
        self.min_quality = float(min_quality)
        self.future_tolerance_ns = int(future_tolerance_ns)
        self.temperature = float(temperature)
        self.unsure_below = float(unsure_below)

    @property
    def dim(self) -> int:
        return int(self._labels.shape[1])

    def __call__(self, slots: Slots, fusable_names: Iterable[str], now_ns: int) -> FusionResult:
        return self.tick(slots, fusable_names, now_ns)

    def tick(self, slots: Slots, fusable_names: Iterable[str], now_ns: int) -> FusionResult:
        """Fuse the fresh slots of ``fusable_names`` at ``now_ns``; never waits for a sensor."""
        fusable = list(fusable_names)
        tokens, mask, used = select_tokens(
            slots, fusable, now_ns, self.max_age_ns, self.max_tokens, pad_to=self.pad_to,
            dim=self.dim, min_quality=self.min_quality,
            future_tolerance_ns=self.future_tolerance_ns)
        reason = self._no_answer_reason(fusable, used)
        if reason:
            return FusionResult(tick_ns=int(now_ns), no_answer_reason=reason)
        fused = self._run_fuse(tokens, mask)
        idx, probs = _classify_normalized(fused, self._labels, self.logit_scale, self.top_k)
        top_labels = tuple(self.label_names[i] for i in idx)
        # uncalibrated bundles: the confidence is best_score, bit for bit, at no extra cost
        confidence = float(probs[0]) if self.temperature == 1.0 else self.confidence_of(fused)
        return FusionResult(
            tick_ns=int(now_ns), stamp_ns=max(s.stamp_ns for s in used),
            best_label=top_labels[0], best_score=float(probs[0]), top_labels=top_labels,
            top_scores=tuple(float(p) for p in probs),
            sensors=tuple(s.sensor for s in used), modalities=tuple(s.modality for s in used),
            per_modality=self._per_modality(used, now_ns), embedding=fused,
            confidence=confidence, unsure=confidence < self.unsure_below)

    def confidence_of(self, fused: np.ndarray) -> float:
        """Calibrated probability of the best label for a unit fused embedding ``[D]``."""
        scale = self.logit_scale / self.temperature
        return float(_classify_normalized(fused, self._labels, scale, 1)[1][0])

    def _no_answer_reason(self, fusable: list[str], used: list[EmbeddingSlot]) -> str:
        if not fusable:
            return "no sensor is live"
        if not used:
            return (f"no embedding within max_age_s={self.max_age_s:.2f} s from the live "
                    f"sensors {sorted(fusable)}")
        modalities = sorted({s.modality for s in used})
        if len(modalities) < self.min_modalities:
            return (f"{len(modalities)} live modalit{'y' if len(modalities) == 1 else 'ies'} "
                    f"{modalities} (sensors {[s.sensor for s in used]}), "
                    f"min_modalities is {self.min_modalities}")
        return ""

    def _run_fuse(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = np.asarray(self.fuse(tokens, mask), dtype=np.float32)
        if out.shape not in ((1, self.dim), (self.dim,)):
            raise ValueError(f"fusion head returned shape {list(out.shape)}, expected "
                             f"[1, {self.dim}]")
        out = out.reshape(self.dim)
        if not np.isfinite(out).all() or not np.linalg.norm(out) > 0:
            raise ValueError("fusion head returned a zero or non-finite embedding")
        return (out / np.linalg.norm(out)).astype(np.float32)

    def _per_modality(self, used: list[EmbeddingSlot],
                      now_ns: int) -> tuple[ModalityPredictionResult, ...]:
        stacked = np.stack([s.embedding for s in used])  # [N, D]: one batched classification
        idx, probs = _classify_normalized(stacked, self._labels, self.logit_scale, 1)
        return tuple(
            ModalityPredictionResult(
                sensor=s.sensor, modality=s.modality, label=self.label_names[int(i[0])],
                score=float(p[0]), stamp_ns=s.stamp_ns,
                age_s=max(0, int(now_ns) - s.stamp_ns) / NS)
            for s, i, p in zip(used, idx, probs, strict=True))
