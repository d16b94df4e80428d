"""Number formatting and table layout shared by the report and the plots."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..models.fusion import MODALITY_SLOTS
from .metrics import in_slot_order


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _pct(x: float | None) -> str:
    return f"{100 * x:.2f}" if _finite(x) else "—"


def _pts(x: float | None) -> str:
    return f"{100 * x:+.2f}" if _finite(x) else "—"


def _fmt_num(x: float) -> str:
    return f"{float(x):g}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _diff(a: float | None, b: float | None) -> float | None:
    return a - b if _finite(a) and _finite(b) else None


def _sorted_subsets(comb: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Subsets by size, then by slot positions (independent of the dict's order)."""
    slot = {m: i for i, m in enumerate(MODALITY_SLOTS)}

    def key(item: tuple[str, Mapping[str, Any]]) -> tuple:
        mods = item[1].get("modalities") or item[0].split("+")
        return (len(mods), [slot.get(m, len(slot)) for m in mods], item[0])

    return sorted(comb["subsets"].items(), key=key)


def _robust_grid(rob: Mapping[str, Any]) -> tuple[list[str], list[float]]:
    curves = [c for v in ("with_negatives", "without_negatives")
              for c in (rob.get(v) or {}).items()]
    mods = in_slot_order(dict.fromkeys(m for m, _ in curves))
    return mods, sorted({float(s) for _, c in curves for s in c})


def _at(curves: Mapping[str, Mapping[Any, float]], m: str, std: float) -> float | None:
    return {float(k): v for k, v in (curves.get(m) or {}).items()}.get(std)
