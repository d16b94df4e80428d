"""The paper's expected shape, checked on the results: AF beats the linear and mean baselines, the
full CAD loss beats L_in alone, negative labels help under noise (no tuning to fit)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .formatting import _finite, _pct, _pts
from .metrics import HEAD_LABELS

#: CAD ablation variants (Table 7 rows).
CAD_VARIANTS: tuple[str, ...] = ("L_in", "L_in+L_cr", "L_in+L_se", "all")
#: Thresholds of the expected-shape checks, as fractions (0.02 = 2 points).
THRESHOLDS: dict[str, float] = {"af_vs_linear": 0.02, "af_vs_mean": 0.05,
                                "cad_full_vs_in": 0.02, "negatives_under_noise": 0.0}
_EPS = 1e-9


def _status(value: float | None, threshold: float, *, strict: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "not run"
    ok = value > threshold + _EPS if strict else value >= threshold - _EPS
    return "holds" if ok else "does not hold"


def _check(claim: str, value: float | None, threshold: float, detail: str, *,
           strict: bool = False) -> dict[str, Any]:
    return {"claim": claim, "value": value, "threshold": threshold,
            "status": _status(value, threshold, strict=strict), "detail": detail}


def _check_af(results: Mapping[str, Any], base: str) -> dict[str, Any]:
    key = f"af_vs_{base}"
    thr = THRESHOLDS[key]
    claim = f"AF >= {HEAD_LABELS[base]} + {100 * thr:.0f} pts (top-1, mean over >=2-modality sets)"
    ge2 = (results.get("combinations") or {}).get("avg_ge2", {}).get("top1", {})
    if ge2.get("af") is None or ge2.get(base) is None:
        return _check(claim, None, thr, "not run")
    delta = ge2["af"] - ge2[base]
    return _check(claim, delta, thr, f"AF {_pct(ge2['af'])} vs {HEAD_LABELS[base]} "
                  f"{_pct(ge2[base])}: {_pts(delta)} pts")


def _cad_deltas(cad: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {s: v["all"] - v["L_in"] for s, v in cad.items()
            if v.get("all") is not None and v.get("L_in") is not None}


def _check_cad(results: Mapping[str, Any]) -> dict[str, Any]:
    thr = THRESHOLDS["cad_full_vs_in"]
    claim = f"CAD all >= L_in only + {100 * thr:.0f} pts (zero-shot top-1, mean over students)"
    deltas = _cad_deltas(results.get("cad_ablation") or {})
    if not deltas:
        return _check(claim, None, thr, "not run")
    value = sum(deltas.values()) / len(deltas)
    per = ", ".join(f"{s} {_pts(d)}" for s, d in deltas.items())
    return _check(claim, value, thr, f"{_pts(value)} pts over {len(deltas)} student(s) ({per})")


def _noise_pairs(rob: Mapping[str, Any]) -> list[tuple[str, float, float]]:
    """(modality, std, with - without) for every cell present in both variants; std > 0 cells
    only, unless there are none (then all)."""
    with_neg, without = rob.get("with_negatives") or {}, rob.get("without_negatives") or {}
    pairs = []
    for m, curve in with_neg.items():
        other = {float(k): v for k, v in (without.get(m) or {}).items()}
        for std, acc in curve.items():
            if float(std) in other and _finite(acc) and _finite(other[float(std)]):
                pairs.append((m, float(std), acc - other[float(std)]))
    noisy = [p for p in pairs if p[1] > 0]
    return noisy or pairs


def _check_negatives(results: Mapping[str, Any]) -> dict[str, Any]:
    claim = "negative labels help under noise (AF with - without, mean over noisy cells > 0)"
    pairs = _noise_pairs(results.get("robustness") or {})
    if not pairs:
        return _check(claim, None, 0.0, "not run", strict=True)
    value = sum(p[2] for p in pairs) / len(pairs)
    return _check(claim, value, THRESHOLDS["negatives_under_noise"],
                  f"{_pts(value)} pts over {len(pairs)} (modality, std) cells", strict=True)


def expected_shape(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The paper's qualitative claims, checked on ``results`` (each ``{"claim", "value",
    "threshold", "status": "holds" | "does not hold" | "not run", "detail"}``; value and
    threshold are fractions)."""
    return {"af_vs_linear": _check_af(results, "linear"),
            "af_vs_mean": _check_af(results, "mean"),
            "cad_full_vs_in": _check_cad(results),
            "negatives_under_noise": _check_negatives(results)}
