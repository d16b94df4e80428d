"""The binding evaluation report: ``report.md`` (tables), ``results.json`` (every number) and
plots (mean R@1 per row, router weights), written to ``<run>/eval``."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import mean_metric

__all__ = ["pct", "retrieval_table", "write_report", "zero_shot_table"]

SHORT = {"image": "img", "text": "txt", "audio": "aud", "point_cloud": "pcd",
         "thermal": "thm", "event": "evt", "tactile": "tac"}


def pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}"


def _pair_label(pair: str) -> str:
    a, b = pair.split("-")
    return f"{SHORT.get(a, a)}–{SHORT.get(b, b)}"


def retrieval_table(results: Mapping[str, Any], pairs: Sequence[str], metric: str = "R@1"
                    ) -> list[str]:
    ib_pairs = list(results["rows"]["Individual-Best"]["retrieval"])
    head = ["row", *[_pair_label(p) for p in pairs], "mean (IB pairs)", "mean (all 21)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in results["rows"].items():
        cells = [pct(res["retrieval"].get(p, {}).get(metric)) for p in pairs]
        all_pairs = results["pairs"]
        full = mean_metric(res, metric, all_pairs) \
            if all(p in res["retrieval"] for p in all_pairs) else None
        lines.append("| " + " | ".join([name, *cells, pct(mean_metric(res, metric, ib_pairs)),
                                        pct(full)]) + " |")
    return lines


def zero_shot_table(results: Mapping[str, Any], modalities: Sequence[str]) -> list[str]:
    head = ["row", *[f"{SHORT.get(m, m)} T1/T5" for m in modalities], "mean T1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in results["rows"].items():
        z = res["zero_shot"]
        cells = [f"{pct(z[m]['top1'])}/{pct(z[m]['top5'])}" if m in z else "—"
                 for m in modalities]
        mean = np.mean([z[m]["top1"] for m in modalities if m in z]) if z else None
        lines.append("| " + " | ".join([name, *cells, pct(mean)]) + " |")
    return lines


def _summary_rows(results: Mapping[str, Any]) -> list[str]:
    """Mean R@1 (all pairs, text pairs, non-text pairs) and mean zero-shot per binding row."""
    pairs = results["pairs"]
    text_pairs = [p for p in pairs if "text" in p.split("-")]
    other = [p for p in pairs if p not in text_pairs]
    ib_pairs = list(results["rows"]["Individual-Best"]["retrieval"])
    lines = ["| row | mean R@1 (IB pairs) | mean R@1 (all) | text pairs R@1 | non-text pairs R@1 "
             "| class-R@1 (IB pairs) | class-R@1 (all) | mean zero-shot T1 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, res in results["rows"].items():
        if res.get("kind") == "individual":
            continue
        z = res["zero_shot"]
        zs = np.mean([v["top1"] for v in z.values()]) if z else None
        complete = all(p in res["retrieval"] for p in pairs)
        lines.append("| " + " | ".join([
            name, pct(mean_metric(res, "R@1", ib_pairs)),
            pct(mean_metric(res, "R@1", pairs) if complete else None),
            pct(mean_metric(res, "R@1", text_pairs) if complete else None),
            pct(mean_metric(res, "R@1", other) if complete else None),
            pct(mean_metric(res, "cR@1", ib_pairs)),
            pct(mean_metric(res, "cR@1", pairs) if complete else None), pct(zs)]) + " |")
    return lines


def _weights_table(weights: Mapping[str, Mapping[str, float]], what: str) -> list[str]:
    spaces = sorted({s for w in weights.values() for s in w}, key=lambda n: (len(n), n))
    lines = [f"| {what} | " + " | ".join(spaces) + " |", "|---|" + "---|" * len(spaces)]
    for k, w in weights.items():
        lines.append(f"| {k} | " + " | ".join(f"{w[s]:.2f}" if s in w else "" for s in spaces)
                     + " |")
    return lines


def _plots(out: Path, results: Mapping[str, Any], extra: Mapping[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    names = list(results["rows"])
    ib_pairs = list(results["rows"]["Individual-Best"]["retrieval"])
    vals = [100 * mean_metric(results["rows"][n], "R@1", ib_pairs) for n in names]
    colours = ["#999999" if results["rows"][n].get("kind") == "individual" else
               "#d62728" if n == "Individual-Best" else "#1f77b4" for n in names]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.bar(range(len(names)), vals, color=colours)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("mean R@1 (%) over the pairs Individual-Best covers")
    ax.set_title("Cross-modal retrieval on the paired test split")
    fig.tight_layout()
    fig.savefig(out / "retrieval_mean_r1.png", dpi=120)
    plt.close(fig)
    files.append("retrieval_mean_r1.png")
    weights = extra.get("text_router_by_style") or {}
    if weights:
        styles = list(weights)
        spaces = sorted({s for w in weights.values() for s in w}, key=lambda n: (len(n), n))
        mat = np.array([[weights[st].get(sp, np.nan) for sp in spaces] for st in styles])
        fig, ax = plt.subplots(figsize=(8, 3.6))
        im = ax.imshow(mat, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(spaces)), spaces)
        ax.set_yticks(range(len(styles)), [f"{s} captions" for s in styles])
        ax.set_title("Text router: mean weight per space by caption style (Full)")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(out / "text_router_weights.png", dpi=120)
        plt.close(fig)
        files.append("text_router_weights.png")
    return files


def write_report(out: Path, results: Mapping[str, Any], extra: Mapping[str, Any]) -> Path:
    """Write ``report.md``, ``results.json`` and the plots; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"results": results, **extra}, indent=1,
                                                 default=float))
    plots = _plots(out, results, extra)
    pairs = results["pairs"]
    text_pairs = [p for p in pairs if "text" in p.split("-")]
    other = [p for p in pairs if p not in text_pairs]
    mods = [m for m in ("image", "audio", "point_cloud", "thermal", "event", "tactile")]
    lines = ["# Space binding (seeds 001/003) on the simulated world", "",
             "Paired test split: every instance in all seven modalities. Retrieval is "
             "instance-level, R@k averaged over both directions (chance: R@1 = 1/N, N = "
             f"{results.get('test_size', '?')} instances); a caption side uses the caption "
             "style of the other modality. class-R@1: the top-1 item is of the query's class. "
             "Individual rows cover only what a space embeds itself; Individual-Best takes the "
             "best individual space per column (by R@1 / top-1). IB pairs: the pairs some "
             "individual space covers.", "",
             "## Summary", "", *_summary_rows(results), "",
             "## Retrieval R@1 (%), pairs with text", "",
             *retrieval_table(results, text_pairs), "",
             "## Retrieval R@1 (%), pairs without text", "",
             *retrieval_table(results, other), "",
             "## Retrieval R@5 (%), pairs with text", "",
             *retrieval_table(results, text_pairs, "R@5"), "",
             "## Zero-shot classification top-1/top-5 (%)", "",
             *zero_shot_table(results, mods), ""]
    src = results["rows"]["Individual-Best"].get("source", {})
    if src:
        lines += ["Individual-Best sources: " + ", ".join(f"{_pair_label(k) if '-' in k else k}"
                                                          f" {v}" for k, v in src.items()), ""]
    if extra.get("text_router_by_style"):
        lines += ["## Text router weights by caption style (Full)", "",
                  *_weights_table(extra["text_router_by_style"], "captions"), ""]
    if extra.get("router_weights"):
        lines += ["## Mean router weights per modality (Full, test split)", "",
                  *_weights_table(extra["router_weights"], "modality"), ""]
    pairs_info = extra.get("pairs") or {}
    if pairs_info:
        lines += ["## Pseudo item pairs", "",
                  f"{pairs_info.get('tuples')} tuples from the unpaired pools. Hidden-label "
                  "purity (diagnostic only, never used): " + ", ".join(
                      f"{k} {v:.2f}" for k, v in pairs_info.get("purity", {}).items()), ""]
    params = extra.get("parameters") or {}
    if params:
        lines += ["## Parameters (trainable)", "", "| part | name | parameters |", "|---|---|---|"]
        for part, per in params.items():
            for k, v in per.items():
                lines.append(f"| {part} | {k} | {v:,} |")
        lines.append("")
    if extra.get("af"):
        lines += ["## AF head on the bound embeddings (test, modality-free records)", "",
                  ", ".join(f"{k}: {pct(v)}" for k, v in extra["af"].items()), ""]
    lines += [f"![{p}]({p})" for p in plots]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
