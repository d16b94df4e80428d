"""Confidence calibration: temperature scaling, reliability bins and the expected calibration
error (ECE), shared by training (fits the temperature) and the runtime (applies it, reports it).

A fused answer's score is ``softmax(logit_scale * cos)`` over the label set. ``logit_scale`` is
``1 / tau`` of the contrastive loss the fusion head was trained with: it ranks labels well but is
not a probability of being right (contrastive training over a batch of candidates makes it
under- or over-confident depending on the label set and on how many sensors were fused).
Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks") divides the
logits by one scalar ``T`` fitted by minimising the negative log-likelihood on held-out data; the
ranking, hence the answer, is unchanged, and the best label's calibrated probability is the
answer's *confidence*. One scalar cannot overfit a validation split and transfers to new label
sets better than per-class methods, which is why it is the choice here; the price is that a
user's own label set (other names, other count) is calibrated only approximately.

ECE (Naeini et al., 2015) bins the answers by confidence into equal-width bins and averages
``|accuracy - mean confidence|`` weighted by the bin's share of answers; 15 bins, as in Guo et
al. Nothing here imports matplotlib: :func:`draw_reliability` draws into an Axes the caller owns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DEFAULT_BINS", "Reliability", "draw_reliability", "fit_temperature",
           "reliability", "softmax"]

#: Equal-width confidence bins of the reliability diagram and the ECE.
DEFAULT_BINS = 15
#: Temperatures searched by :func:`fit_temperature` (log-uniform bounds).
TEMPERATURE_BOUNDS = (0.02, 50.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` in float64 (stable)."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T`` minimising the mean NLL of ``softmax(logits / T)`` on ``labels``.

    Parameters
    ----------
    logits : ``[N, C]`` scaled logits (``logit_scale * cos``), N >= 1, C >= 2.
    labels : ``[N]`` int class indices of the right answers.

    The NLL is convex in ``1 / T``; a bounded scalar search over ``log T`` finds it to 1e-6.
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
        raise ValueError(f"logits must be [N, C] with N >= 1, C >= 2, got {list(logits.shape)}")
    if labels.shape != (logits.shape[0],) or labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must be [N] class indices in [0, {logits.shape[1]}), got "
                         f"shape {list(labels.shape)}")
    if not np.isfinite(logits).all():
        raise ValueError("logits must be finite")
    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    best = minimize_scalar(lambda log_t: _nll(logits, labels, math.exp(log_t)),
                           bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(best.x))


@dataclass(frozen=True)
class Reliability:
    """Answers binned by confidence (equal-width bins over [0, 1]).

    Attributes
    ----------
    edges : ``[B + 1]`` bin edges.
    counts : ``[B]`` answers per bin.
    confidence : ``[B]`` mean confidence per bin (NaN where empty).
    accuracy : ``[B]`` fraction right per bin (NaN where empty).
    ece : expected calibration error, ``sum_b counts_b / N * |accuracy_b - confidence_b|``.
    mce : maximum calibration error over the non-empty bins.
    mean_confidence, accuracy_overall : over all answers.
    """

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float
    mce: float
    mean_confidence: float
    accuracy_overall: float

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reliability:
        """Inverse of :meth:`to_dict` (None bins become NaN), e.g. for a saved report's plot."""
        def arr(key: str) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in d[key]], dtype=float)
        return cls(arr("edges"), np.array(d["counts"]), arr("bin_confidence"),
                   arr("bin_accuracy"), d["ece"], d["mce"], d["mean_confidence"], d["accuracy"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (NaN bins become None)."""
        def plain(a: np.ndarray) -> list[float | None]:
            return [None if not np.isfinite(v) else round(float(v), 6) for v in a]
        return {"bins": len(self.counts), "n": self.n, "ece": round(self.ece, 6),
                "mce": round(self.mce, 6), "mean_confidence": round(self.mean_confidence, 6),
                "accuracy": round(self.accuracy_overall, 6),
                "edges": plain(self.edges), "counts": [int(c) for c in self.counts],
                "bin_confidence": plain(self.confidence), "bin_accuracy": plain(self.accuracy)}


def reliability(confidence: np.ndarray, correct: np.ndarray,
                n_bins: int = DEFAULT_BINS) -> Reliability:
    """Bin answers by confidence; a confidence of exactly 1 falls in the last bin.

    Parameters
    ----------
    confidence : ``[N]`` in [0, 1], N >= 1.
    correct : ``[N]`` bool (or 0/1): was the answer right.
    """
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    hit = np.asarray(correct).astype(bool).ravel()
    if conf.size == 0 or conf.shape != hit.shape:
        raise ValueError(f"confidence and correct must be non-empty and the same length, got "
                         f"{conf.size} and {hit.size}")
    if not (np.isfinite(conf).all() and conf.min() >= 0.0 and conf.max() <= 1.0):
        raise ValueError("confidence must be finite and in [0, 1]")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, conf, n_bins) / counts
        accuracy = np.bincount(index, hit.astype(np.float64), n_bins) / counts
    gaps = np.abs(accuracy - mean_conf)
    filled = counts > 0
    return Reliability(edges, counts, mean_conf, accuracy,
                       ece=float((counts[filled] / conf.size * gaps[filled]).sum()),
                       mce=float(gaps[filled].max()), mean_confidence=float(conf.mean()),
                       accuracy_overall=float(hit.mean()))


def draw_reliability(ax: Any, rel: Reliability, label: str = "", color: str | None = None
                     ) -> None:
    """Draw a reliability diagram into a matplotlib Axes: accuracy per confidence bin (bars,
    empty bins left out) against the diagonal of perfect calibration, ECE in the legend."""
    filled = rel.counts > 0
    width = np.diff(rel.edges)[filled]
    ax.bar(rel.edges[:-1][filled], rel.accuracy[filled], width=width, align="edge", alpha=0.45,
           edgecolor="black", linewidth=0.5, color=color,
           label=f"{label + ': ' if label else ''}ECE {100 * rel.ece:.1f} % (n={rel.n})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize="small")
