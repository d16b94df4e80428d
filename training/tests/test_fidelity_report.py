"""The evaluation report: Table 7's two halves, the Table 8/9 rows and the stage-II
cross-fitting decision on val (test alongside)."""
from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from omnibind_train.evaluation import evaluate_combinations, render_report, write_report
from omnibind_train.models.fusion import FusionConfig, MeanFusion

VARIANTS = ("L_in", "L_in+L_cr", "L_in+L_se", "all")


def _half(base: float) -> dict[str, dict[str, float]]:
    return {"thermal": {v: base + 0.01 * i for i, v in enumerate(VARIANTS)},
            "event": {v: base / 2 for v in VARIANTS}}


def _fusion() -> dict:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(12) % 3
    label_emb = torch.eye(3, 8)
    emb = {m: F.normalize(label_emb[labels] + 0.5 * torch.randn(12, 8, generator=gen), dim=-1)
           for m in ("image", "text", "thermal")}
    heads = {"mean": MeanFusion(), "outer": FusionConfig(kind="outer", dim=8, rank=2).build(),
             "cls_token": FusionConfig(kind="cls_token", dim=8, num_heads=2).build()}
    comb = evaluate_combinations(emb, labels, label_emb, heads, ["image", "text", "thermal"])
    return {"splits": {"val": comb, "test": comb}}


def test_report_has_both_table7_halves_tables_8_9_and_the_fold_decision(tmp_path):
    results = {
        "cad_ablation": _half(0.6),
        "cad_ablation_centres": {"text": {"val": _half(0.5), "test": _half(0.6)},
                                 "image": {"val": _half(0.3), "test": _half(0.4)}},
        "fusion_ablation": _fusion(),
        "crossfit_decision": {
            "metric": "af top-1", "options": {0: {"val": 0.91, "test": 0.97, "per_seed": [{}]},
                                              2: {"val": 0.93, "test": 0.95, "per_seed": [{}]}},
            "decision": {"chosen": 2, "split": "val", "tolerance": 0.0}}}
    text = render_report(results)
    assert "### val split" in text and "### test split" in text
    assert "| Text | L_in | 60.00 | 30.00 | 45.00 |" in text       # text half, test split
    assert "| Image | L_in | 40.00 | 20.00 | 30.00 |" in text      # image half, test split
    assert "| Image | L_in | 30.00 | 15.00 | 22.50 |" in text      # image half, val split
    assert "## Fusion ablation (Tables 8, 9)" in text
    assert "| Outer product |" in text and "| CLS token |" in text
    assert "| 2 | 93.00 | 95.00 | 1 | **chosen** |" in text
    assert "| 0 | 91.00 | 97.00 | 1 |  |" in text
    paths = write_report(results, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["cad_ablation_centres"]["image"]["test"]["thermal"]["all"] == 0.43
    assert data["crossfit_decision"]["decision"]["chosen"] == 2


def test_without_centres_the_single_table_is_kept():
    text = render_report({"cad_ablation": _half(0.6)})
    assert "## CAD ablation (Table 7)" in text and "Align centre" not in text
    assert "## Fusion ablation" not in text
