"""PNG plots of the evaluation (matplotlib, imported only when a plot is drawn)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checks import CAD_VARIANTS
from .formatting import _at, _diff, _finite, _pct, _robust_grid, _sorted_subsets
from .metrics import HEAD_LABELS, in_slot_order

#: The paper's abbreviations (Table 3 caption), for plot labels.
ABBREV: dict[str, str] = {"image": "I", "text": "Te", "thermal": "Th", "event": "E",
                          "tactile": "T", "audio": "A", "point_cloud": "P"}


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _short(name: str) -> str:
    return "+".join(ABBREV.get(m, m) for m in name.split("+"))


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110, metadata={"Software": None})
    return path


def plot_accuracy_vs_size(comb: Mapping[str, Any], path: Path) -> Path:
    """Per head: mean top-1 per subset size (line) and every subset (dots)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    heads = comb["heads"]
    for i, (h, color) in enumerate(zip(heads, _colors(len(heads)), strict=True)):
        offset = (i - (len(heads) - 1) / 2) * 0.08
        recs = list(comb["subsets"].values())
        ax.scatter([r["size"] + offset for r in recs], [100 * r["top1"][h] for r in recs],
                   s=10, alpha=0.35, color=color)
        by = comb["by_size"]["top1"][h]
        label = f"{HEAD_LABELS.get(h, h)} (≥2M avg {_pct(comb['avg_ge2']['top1'][h])})"
        ax.plot([int(k) + offset for k in by], [100 * v for v in by.values()], marker="o",
                color=color, label=label)
    ax.set(xlabel="modalities in the subset", ylabel="top-1 accuracy (%)", ylim=(0, 102),
           title="Accuracy vs subset size (lines: mean per size; dots: each subset)")
    ax.set_xticks(sorted({r["size"] for r in comb["subsets"].values()}))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_per_subset(comb: Mapping[str, Any], path: Path) -> Path:
    """Heat map of subsets (rows, by size) x heads (columns).

    Cells print the top-1 (%); the colour is the cell minus the row's mean over heads (points,
    diverging), so which head wins on which subset stays visible when every head is near 100.
    """
    from matplotlib.figure import Figure

    subsets = _sorted_subsets(comb)
    heads = comb["heads"]
    values = [[100 * rec["top1"][h] for h in heads] for _, rec in subsets]
    rel = [[v - sum(row) / len(row) for v in row] for row in values]
    span = max(1.0, max(abs(v) for row in rel for v in row))
    fig = Figure(figsize=(2.4 + 1.1 * len(heads), 1.4 + 0.16 * len(subsets)),
                 layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rel, aspect="auto", cmap="RdBu", vmin=-span, vmax=span,
                      interpolation="nearest")
    ax.set_xticks(range(len(heads)), [HEAD_LABELS.get(h, h) for h in heads], fontsize=8)
    ax.set_yticks(range(len(subsets)), [_short(n) for n, _ in subsets], fontsize=6)
    ax.xaxis.tick_top()
    for r, row in enumerate(values):
        for c, v in enumerate(row):
            dark = abs(rel[r][c]) > 0.6 * span
            ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=5.5,
                    color="white" if dark else "black")
    sizes = [rec["size"] for _, rec in subsets]
    for r in range(1, len(sizes)):
        if sizes[r] != sizes[r - 1]:
            ax.axhline(r - 0.5, color="black", lw=0.8)
    fig.colorbar(image, ax=ax, label="top-1 − row mean over heads (pts)",
                 shrink=min(1.0, 12 / len(subsets) + 0.2))
    ax.set_title("Top-1 (%) per subset; colour: vs the other heads", fontsize=9)
    return _save(fig, path)


def plot_cad_ablation(cad: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    """Grouped bars: students x CAD variants (Table 7)."""
    from matplotlib.figure import Figure

    students = in_slot_order(cad)
    fig = Figure(figsize=(1.8 + 1.6 * len(students), 4.0), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(CAD_VARIANTS)
    for i, (v, color) in enumerate(zip(CAD_VARIANTS, _colors(len(CAD_VARIANTS)), strict=True)):
        xs = [j + (i - (len(CAD_VARIANTS) - 1) / 2) * width for j in range(len(students))]
        ys = [100 * cad[s][v] if _finite(cad[s].get(v)) else 0.0 for s in students]
        bars = ax.bar(xs, ys, width=width, color=color, label=v)
        ax.bar_label(bars, fmt="%.1f", fontsize=6)
    ax.set_xticks(range(len(students)), students)
    ax.set(ylabel="zero-shot top-1 (%)", ylim=(0, 105), title="CAD ablation (Table 7)")
    ax.legend(fontsize=8, ncols=len(CAD_VARIANTS), loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_robustness(rob: Mapping[str, Any], path: Path) -> Path:
    """Left: AF top-1 vs noise std per noisy modality (solid: with negatives, dashed: without).
    Right: with - without (points)."""
    from matplotlib.figure import Figure

    mods, stds = _robust_grid(rob)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax, ax_d = fig.subplots(1, 2)
    for m, color in zip(mods, _colors(len(mods)), strict=True):
        for variant, style in (("with_negatives", "-"), ("without_negatives", "--")):
            pts = [(s, _at(rob.get(variant) or {}, m, s)) for s in stds]
            pts = [(s, 100 * v) for s, v in pts if _finite(v)]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, marker="o", ms=3, color=color,
                        label=m if variant == "with_negatives" else None)
        diffs = [(s, _diff(_at(rob.get("with_negatives") or {}, m, s),
                           _at(rob.get("without_negatives") or {}, m, s))) for s in stds]
        diffs = [(s, 100 * d) for s, d in diffs if d is not None]
        if diffs:
            ax_d.plot(*zip(*diffs, strict=True), marker="o", ms=3, color=color, label=m)
    ax.set(xlabel="noise std (relative norm)", ylabel="AF top-1 (%)",
           title="Noisy modality (solid: with neg. labels, dashed: without)")
    ax_d.axhline(0, color="black", lw=0.8)
    ax_d.set(xlabel="noise std (relative norm)", ylabel="Δ with − without (pts)",
             title="Gain from negative labels")
    for a in (ax, ax_d):
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    return _save(fig, path)


def plot_calibration(cal: Mapping[str, Any], path: Path) -> Path:
    """Reliability diagrams of the fused AF answers on the test split: the model's softmax
    (left) and after the fitted temperature (right)."""
    from matplotlib.figure import Figure

    from omnibind_ros.core.calibration import Reliability, draw_reliability

    fig = Figure(figsize=(9, 4.4), layout="constrained")
    for ax, key, title in zip(fig.subplots(1, 2), ("before", "after"),
                              ("softmax(logit_scale · cos)",
                               f"after temperature T = {cal['temperature']:.3g}"), strict=True):
        draw_reliability(ax, Reliability.from_dict(cal[key]), "AF, all subsets")
        ax.set_title(title)
    return _save(fig, path)
