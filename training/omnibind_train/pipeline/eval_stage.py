"""The ``eval`` stage: every modality combination fused by every head, zero-shot accuracy, the
CAD loss ablation and the noisy-modality robustness sweep, written as ``<run>/eval`` report."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from ..models.fusion import MODALITY_SLOTS
from ..trainers.af import FusionData, train_fusion
from ..trainers.cad import ABLATION_VARIANTS
from ..trainers.common import derive_seed
from .train_stages import train_cad_variant
from .workspace import Workspace, _say, _timed


def run_cad_ablation(ws: Workspace) -> dict[str, dict[str, float]]:
    """Table 7: each CAD variant in the scarce-data setting -> ``{student: {variant: acc}}``."""
    abl = ws.cfg.evaluation.ablation
    out: dict[str, dict[str, float]] = {m: {} for m in ws.cfg.cad.students}
    for variant in abl.variants:
        loop = ws.cfg.cad.loop.replace(epochs=abl.epochs or ws.cfg.cad.loop.epochs,
                                       ckpt_every=0, eval_every=0)
        cfg = ws.cfg.cad.replace(terms=list(ABLATION_VARIANTS[variant]),
                                 train_fraction=abl.train_fraction, loop=loop)
        acc = train_cad_variant(ws, cfg, out_dir=None, eval_split=ws.cfg.evaluation.split,
                                progress=False)
        for m, v in acc.items():
            out[m][variant] = v
        _say(ws, f"[eval] CAD ablation {variant}: " + ", ".join(
            f"{m} {v:.3f}" for m, v in acc.items()))
    return out


def run_robustness(ws: Workspace) -> dict[str, dict[str, dict[float, float]]]:
    """AF trained with vs without negative labels, swept over one noisy modality."""
    from ..evaluation import robustness_sweep

    rob = ws.cfg.evaluation.robustness
    train, _ = ws.fusion_data("train")
    _, test_emb = ws.fusion_data(ws.cfg.evaluation.split)
    labels = ws.labels("student", ws.cfg.evaluation.split)
    if rob.samples_per_class > 0:
        keep = torch.cat([torch.nonzero(labels == c).flatten()[:rob.samples_per_class]
                          for c in torch.unique(labels).tolist()]).sort().values
        test_emb, labels = {m: e[keep] for m, e in test_emb.items()}, labels[keep]
    modalities = [m for m in MODALITY_SLOTS if m in ws.cfg.af.modalities]
    out = {}
    for variant, negatives in (("with_negatives", True), ("without_negatives", False)):
        cfg = ws.fusion_config("af", {**rob.af, "negatives": negatives})
        torch.manual_seed(derive_seed(ws.cfg.seed, "init-fusion", "af"))
        head = cfg.fusion.build().to(ws.dist.device)
        train_fusion(head, train, ws.label_embeddings, cfg,
                     seed=derive_seed(ws.cfg.seed, "robustness") % 2 ** 31, dist=ws.dist,
                     progress=False, name=f"robust-{variant}")
        out[variant] = robustness_sweep(test_emb, labels, ws.label_embeddings, head.eval(),
                                        rob.noise_stds, modalities=modalities,
                                        noisy_modalities=rob.noisy_modalities,
                                        min_size=rob.min_size, seed=ws.cfg.seed)
    return out


def run_eval(ws: Workspace) -> dict[str, Path]:
    """Combinations, zero-shot, CAD ablation and robustness -> ``<run>/eval`` report."""
    from .. import evaluation

    split = ws.cfg.evaluation.split
    data, emb = ws.fusion_data(split)
    labels = ws.labels("student", split)
    modalities = [m for m in MODALITY_SLOTS if m in ws.cfg.af.modalities]
    results: dict[str, Any] = {
        "combinations": evaluation.evaluate_combinations(
            emb, labels, ws.label_embeddings, ws.load_fusion_heads(), modalities),
        "zero_shot": evaluation.zero_shot_accuracy(emb, labels, ws.label_embeddings)}
    _say(ws, "[eval] zero-shot top-1: " + ", ".join(
        f"{m} {v:.3f}" for m, v in results["zero_shot"].items()))
    if ws.cfg.evaluation.ablation.enabled:
        results["cad_ablation"] = _timed(ws, "eval.cad_ablation", lambda: run_cad_ablation(ws))
    if ws.cfg.evaluation.robustness.enabled:
        results["robustness"] = _timed(ws, "eval.robustness", lambda: run_robustness(ws))
    results["meta"] = _meta(ws, data)
    if not ws.dist.is_main:
        return {}
    paths = evaluation.write_report(results, ws.stage_dir("eval"))
    _say(ws, f"[eval] report: {paths['report']}")
    return paths


def _meta(ws: Workspace, data: FusionData) -> dict[str, Any]:
    return {"run": ws.cfg.name, "seed": ws.cfg.seed, "dataset": str(ws.dataset_root),
            "dataset_fingerprint": ws.dataset_fp, "split": ws.cfg.evaluation.split,
            "num_classes": len(ws.class_names),
            "invalid_inputs": {m: int((~data.present[:, i]).sum())
                               for i, m in enumerate(MODALITY_SLOTS)},
            "timings_s": dict(ws.timings), "torch": torch.__version__,
            "python": platform.python_version(), "config": ws.cfg.to_dict()}
