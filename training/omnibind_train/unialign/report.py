"""The UniAlign evaluation report: ``report.md`` (tables in the paper's shape), ``results.json``
(every number) and plots (zero-shot per modality and row, training curves), in ``<run>/eval``.

Ablation tables (Tables 8-11) report zero-shot top-1 on thermal (the SUN-D analogue), LiDAR
(the ModelNet40 analogue) and the mean over the extended modalities, plus the mean R@1 of the
extended modalities against images; each table's reference row is the main model.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..binding.report import SHORT, pct, zero_shot_table
from .params import paper_accounting

__all__ = ["TABLES", "write_report"]

EXTENDED = ("thermal", "event", "audio", "tactile", "point_cloud")
TABLES = {"routing": ("Table 8 analogue: MoE strategy", "expert grouping (main)"),
          "experts": ("Table 9 analogue: top-k and experts per modality",
                      "top-2, 2 experts (main)"),
          "losses": ("Table 10 analogue: the loss ladder", "+ model distil (main, all losses)"),
          "modalities": ("Table 11 analogue: modality scaling (NCE only, then all losses)",
                         "all losses (main)"),
          "image": ("Image experts off (the code) vs on (the paper's wording)",
                    "image experts off (main)")}


def _mean(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(vals)) if vals else None


def ablation_metrics(res: Mapping[str, Any]) -> dict[str, float | None]:
    z = res["zero_shot"]
    r = res["retrieval"]
    return {"thermal": z.get("thermal", {}).get("top1"),
            "point_cloud": z.get("point_cloud", {}).get("top1"),
            "mean_zs": _mean([z[m]["top1"] for m in EXTENDED if m in z]),
            "mean_r1_image": _mean([r[p]["R@1"] for p in r
                                    if "image" in p.split("-") and
                                    any(m in p.split("-") for m in EXTENDED)]),
            "mean_cr1_image": _mean([r[p]["cR@1"] for p in r
                                     if "image" in p.split("-") and
                                     any(m in p.split("-") for m in EXTENDED)])}


def ablation_tables(results: Mapping[str, Any], ablations: Sequence[Mapping[str, Any]]
                    ) -> list[str]:
    rows = results["rows"]
    lines: list[str] = []
    head = "| row | thermal ZS T1 | LiDAR ZS T1 | mean ZS T1 (5 ext.) | ext.–image R@1 " \
           "| ext.–image class-R@1 |"
    for table, (title, main_label) in TABLES.items():
        members = [a for a in ablations if a.get("table") == table and a["name"] in rows]
        if not members:
            continue
        lines += [f"## {title}", "", head, "|---|---|---|---|---|---|"]
        entries = [(a["name"], rows[a["name"]]) for a in members]
        entries.append((main_label, rows["UniAlign"]))
        for name, res in entries:
            m = ablation_metrics(res)
            lines.append(f"| {name} | {pct(m['thermal'])} | {pct(m['point_cloud'])} | "
                         f"{pct(m['mean_zs'])} | {pct(m['mean_r1_image'])} | "
                         f"{pct(m['mean_cr1_image'])} |")
        lines.append("")
    return lines


def retrieval_against(results: Mapping[str, Any], anchor: str, rows: Sequence[str]
                      ) -> list[str]:
    """R@1/R@5 (and class-R@1) of every extended modality against ``anchor``."""
    head = ["row", *[f"{SHORT[m]} R@1/R@5 (cR@1)" for m in EXTENDED]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in rows:
        res = results["rows"][name]["retrieval"]
        cells = []
        for m in EXTENDED:
            pair = f"{anchor}-{m}" if f"{anchor}-{m}" in res else f"{m}-{anchor}"
            r = res.get(pair)
            cells.append(f"{pct(r['R@1'])}/{pct(r['R@5'])} ({pct(r['cR@1'])})" if r else "—")
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return lines


def _plots(out: Path, results: Mapping[str, Any], extra: Mapping[str, Any],
           main_rows: Sequence[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(1, len(main_rows))
    for i, name in enumerate(main_rows):
        z = results["rows"][name]["zero_shot"]
        vals = [100 * z[m]["top1"] if m in z else 0.0 for m in ("image", *EXTENDED)]
        ax.bar(np.arange(6) + i * width, vals, width, label=name)
    ax.set_xticks(np.arange(6) + 0.4 - width / 2, ["image", *EXTENDED])
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_title("Zero-shot classification on the paired test split (18 classes)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "zero_shot.png", dpi=120)
    plt.close(fig)
    files.append("zero_shot.png")
    curves = extra.get("curves") or {}
    if curves:
        fig, ax = plt.subplots(figsize=(9, 4))
        for name, c in curves.items():
            if c.get("loss"):
                ax.plot(c["loss"], label=name, lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel("total loss (Eq. 16)")
        ax.set_yscale("log")
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(out / "training_curves.png", dpi=120)
        plt.close(fig)
        files.append("training_curves.png")
    return files


def _parameter_lines(extra: Mapping[str, Any]) -> list[str]:
    p = extra.get("parameters") or {}
    paper = paper_accounting()
    lines = ["## Trainable parameters", "",
             f"Analogue (D {p['config']['width']}, {p['config']['layers']} blocks, FFN "
             f"{p['config']['ffn']}, r {p['config']['r']}, {p['config']['experts']} experts, "
             f"placement {p['config']['placement']}, {p['config']['routing']} routing; "
             f"experts for {', '.join(p['routed_modalities'])}):", "",
             "| group | parameters |", "|---|---|"]
    lines += [f"| {k} | {v:,} |" for k, v in p["groups"].items()]
    lines += [f"| **total trainable** | **{p['total_trainable']:,}** |",
              f"| frozen ViT (not trained) | {p['frozen_backbone']:,} |", "",
              f"LoRA-MoE by formula: {p['lora_moe_formula_per_modality']:,} per modality x "
              f"{len(p['routed_modalities'])} = {p['lora_moe_formula_total']:,} (built module: "
              f"{p['groups'].get('lora_moe', 0):,}).", "",
              "ViT-B/16 (D 768, 12 blocks, FFN 3072, r 4, 2 experts):", "",
              f"- LoRA-MoE per modality, fc placement (the code): {paper['arithmetic']['fc']}",
              f"- LoRA-MoE per modality, parallel placement (Eq. 7): "
              f"{paper['arithmetic']['parallel']}",
              f"- the code's tokenizers, norms, text projectors and logit scale: "
              f"{paper['tokenizers_heads_norms_scale']:,}", "",
              "| counting | trainable |", "|---|---|"]
    lines += [f"| {k} | {v:,} |" for k, v in paper["totals"].items()]
    lines += ["", f"Closest to the paper's 7.8M: {paper['closest']} "
              f"({paper['closest_gap']:+,}); no counting reproduces it exactly.", ""]
    return lines


def write_report(out: Path, results: Mapping[str, Any], extra: Mapping[str, Any]) -> Path:
    """Write ``report.md``, ``results.json`` and the plots; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"results": results, **extra}, indent=1,
                                                 default=float))
    ablation_names = {a["name"] for a in extra.get("ablations", [])}
    main_rows = [n for n, r in results["rows"].items() if n not in ablation_names]
    plots = _plots(out, results, extra, [n for n in main_rows if n != "Individual-Best"])
    lines = ["# UniAlign (seed 002) on the simulated world", "",
             "One frozen small CLIP ViT; per extended modality a tokenizer, LoRA experts and a "
             "head, trained on one labelled data set per modality (own vocabulary, 12 of 18 "
             "classes) with Eq. 16. Teacher rows are the partial-modal teachers (binding "
             "specialist spaces). Paired test split: every instance in all seven modalities "
             f"(N = {results.get('test_size', '?')}); retrieval is instance-level, R@k the mean "
             "of both directions; cR@1: the top-1 item is of the query's class. Zero-shot: the "
             "18 class names in the prompts of the modality's caption style.", "",
             "## Zero-shot classification top-1/top-5 (%)", "",
             *_filter(zero_shot_table(results, ["image", *EXTENDED]), main_rows), "",
             "## Retrieval against text (captions of the modality's style)", "",
             *retrieval_against(results, "text", main_rows), "",
             "## Retrieval against images (the same instance's RGB view)", "",
             *retrieval_against(results, "image", main_rows), "",
             *ablation_tables(results, extra.get("ablations", [])),
             *_parameter_lines(extra)]
    own = extra.get("own_vocabulary") or {}
    if own:
        mods = [m for m in EXTENDED if any(m in v for v in own.values())]
        lines += ["## Top-1 against each data set's own labels (test instances of its classes)",
                  "", "What the training labels teach (chance: 1 / labels), beside the 18-way "
                  "zero-shot above.", "", "| model | " + " | ".join(
                      f"{SHORT[m]} ({len(extra['vocabularies'][m])})" for m in mods) + " |",
                  "|---|" + "---|" * len(mods)]
        lines += [f"| {name} | " + " | ".join(pct(acc.get(m)) for m in mods) + " |"
                  for name, acc in own.items()]
        lines.append("")
    if extra.get("af"):
        lines += ["## AF head on UniAlign embeddings (test, modality-free records)", "",
                  ", ".join(f"{k}: {pct(v)}" for k, v in extra["af"].items()), ""]
    if extra.get("vocabularies"):
        lines += ["## Label vocabularies of the training sets", ""]
        lines += [f"- {m} ({extra['set_sizes'][m]} samples): {', '.join(v)}"
                  for m, v in extra["vocabularies"].items()]
        lines.append("")
    lines += [f"![{p}]({p})" for p in plots]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _filter(table: list[str], rows: Sequence[str]) -> list[str]:
    """Keep the header and the lines of ``rows`` from a markdown table."""
    keep = set(rows)
    return table[:2] + [ln for ln in table[2:] if ln.split("|")[1].strip() in keep]
