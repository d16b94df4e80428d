"""The training stages: data, stage 0 (LiT image head), stage I (CAD students, with their
out-of-fold embeddings) and stage II (AF and the trainable fusion baselines)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..models.encoders import ModalityEncoder
from ..models.fusion import MODALITY_SLOTS
from ..trainers.af import FusionData, fused_accuracy, train_fusion
from ..trainers.cad import CADConfig, StudentData, crossfit_embeddings, train_cad
from ..trainers.common import derive_seed
from ..trainers.distributed import barrier
from ..trainers.stage0 import train_stage0
from .workspace import Workspace, _file_digest, _save_tensors, _say


def zero_shot(emb: torch.Tensor, labels: torch.Tensor, label_emb: torch.Tensor,
              valid: torch.Tensor | None = None) -> float:
    """Top-1 of ``emb`` ``[N, D]`` against ``label_emb`` ``[C, D]`` over the valid rows."""
    pred = (F.normalize(emb.float(), dim=-1) @ label_emb.float().T).argmax(dim=1)
    ok = pred == labels
    if valid is not None:
        ok = ok[valid]
    return float(ok.float().mean()) if ok.numel() else float("nan")


def run_data(ws: Workspace, *, overwrite: bool = False) -> Path:
    """Generate the simulated data set (and its degraded twin, if configured) if absent
    (``overwrite``: regenerate them)."""
    if ws.degraded is not None:
        ws.degraded.ensure_data(overwrite=overwrite)
    return ws.ensure_data(overwrite=overwrite)


def fusion_train_data(ws: Workspace, kind: str,
                      overrides: Mapping[str, Any] | None = None) -> FusionData:
    """The training split's fusion data, with its degraded twin when the head's config mixes
    degraded inputs in (``af.degrade_prob`` > 0, ``data.degraded`` set)."""
    train, _ = ws.fusion_data("train")
    if ws.fusion_config(kind, overrides).degrade_prob <= 0:
        return train
    if ws.degraded is None:
        raise ValueError("af.degrade_prob > 0 needs data.degraded (the degraded twin data set)")
    twin, emb = ws.degraded.fusion_data("train")
    return train.with_degraded(emb, {m: twin.present[:, i]
                                     for i, m in enumerate(MODALITY_SLOTS)})


def run_stage0(ws: Workspace, *, resume: str | None = None) -> dict[str, float]:
    """Stage 0 (LiT) on the teacher image-caption pairs; returns validation metrics."""
    ws.ensure_data()
    feats = ws.features("teacher", "train", ["image", "text"])
    text, text_valid = ws.text_embeddings("teacher", "train")
    val = ws.features("teacher", "val", ["image"])["image"]
    val_labels, label_emb = ws.labels("teacher", "val"), ws.label_embeddings
    encoder = ws.training_encoder("image")

    def evaluate(step: int) -> dict[str, float]:
        return {"zero_shot_image": zero_shot(ws.embed(encoder, val), val_labels, label_emb,
                                             val.valid)}

    result = train_stage0(
        encoder, feats["image"].values, text, feats["image"].valid & text_valid, ws.cfg.stage0,
        seed=derive_seed(ws.cfg.seed, "stage0") % 2 ** 31, dist=ws.dist,
        run_dir=ws.stage_dir("stage0"), record=ws.record(["image", "text"]), resume=resume,
        eval_fn=evaluate, progress=ws.progress)
    _say(ws, f"[stage0] val zero-shot image top-1: {result.metrics['zero_shot_image']:.3f}")
    return result.metrics


def _cad_inputs(ws: Workspace, students: Sequence[str]
                ) -> tuple[dict[str, StudentData], torch.Tensor, torch.Tensor, torch.Tensor]:
    feats = ws.features("student", "train", [*students, "image", "text"])
    text, text_valid = ws.text_embeddings("student", "train")
    image = ws.embed(ws.load_encoder("image", pretrained=False), feats["image"])
    data = {m: StudentData(feats[m].values, feats[m].valid) for m in students}
    return data, text, image, text_valid & feats["image"].valid


def student_accuracy(ws: Workspace, encoders: Mapping[str, ModalityEncoder], split: str
                     ) -> dict[str, float]:
    """Zero-shot top-1 of each student on a student split."""
    feats = ws.features("student", split, list(encoders))
    labels = ws.labels("student", split)
    return {m: zero_shot(ws.embed(enc, feats[m]), labels, ws.label_embeddings, feats[m].valid)
            for m, enc in encoders.items()}


def run_cad(ws: Workspace, *, resume: str | None = None) -> dict[str, float]:
    """Stage I (CAD): align every student to the frozen teachers; returns val zero-shot top-1."""
    metrics = train_cad_variant(ws, ws.cfg.cad, out_dir=ws.stage_dir("cad"), resume=resume)
    _say(ws, "[cad] val zero-shot top-1: " + ", ".join(
        f"{m} {v:.3f}" for m, v in metrics.items()))
    if ws.cfg.cad.crossfit_folds >= 2:
        run_crossfit(ws)
    return metrics


def run_crossfit(ws: Workspace) -> Path:
    """Out-of-fold student embeddings of the training split for stage II (see
    ``CADConfig.crossfit_folds``), saved next to the CAD checkpoint."""
    cfg = ws.cfg.cad
    data, text, image, teacher_valid = _cad_inputs(ws, cfg.students)
    oof = crossfit_embeddings(lambda: {m: ws.training_encoder(m) for m in cfg.students}, data,
                              text, image, teacher_valid, ws.labels("student", "train"),
                              cfg.replace(loop=cfg.loop.replace(ckpt_every=0, eval_every=0)),
                              seed=derive_seed(ws.cfg.seed, "crossfit") % 2 ** 31,
                              dist=ws.dist, progress=ws.progress)
    if ws.dist.is_main:
        _save_tensors(ws.oof_path(), oof, {"cad": _file_digest(ws.stage_dir("cad") / "final"),
                                           "folds": str(cfg.crossfit_folds)})
    barrier(ws.dist)
    _say(ws, f"[cad] out-of-fold embeddings ({cfg.crossfit_folds} folds): {ws.oof_path()}")
    return ws.oof_path()


def train_cad_variant(ws: Workspace, cfg: CADConfig, *, out_dir: Path | None,
                      resume: str | None = None, eval_split: str = "val",
                      progress: bool | None = None) -> dict[str, float]:
    """Train fresh students with ``cfg`` (writing to ``out_dir`` unless None); evaluate them."""
    ws.ensure_data()
    data, text, image, teacher_valid = _cad_inputs(ws, cfg.students)
    encoders = {m: ws.training_encoder(m) for m in cfg.students}

    def evaluate(step: int) -> dict[str, float]:
        return student_accuracy(ws, encoders, eval_split)

    result = train_cad(encoders, data, text, image, teacher_valid,
                       ws.labels("student", "train"), cfg,
                       seed=derive_seed(ws.cfg.seed, "cad") % 2 ** 31, dist=ws.dist,
                       run_dir=out_dir, record=ws.record([*cfg.students, "image", "text"]),
                       resume=resume, eval_fn=evaluate,
                       progress=ws.progress if progress is None else progress)
    return result.metrics


def run_af(ws: Workspace, *, resume: str | None = None,
           kinds: Sequence[str] | None = None) -> dict[str, float]:
    """Stage II: train AF and the trainable baselines on frozen embeddings."""
    ws.ensure_data()
    val, _ = ws.fusion_data("val")
    label_emb = ws.label_embeddings
    metrics: dict[str, float] = {}
    kinds = list(kinds or ["af", *ws.cfg.baselines])
    if resume not in (None, "auto") and len([k for k in kinds if k != "mean"]) > 1:
        raise ValueError("resuming from a checkpoint path needs one head (--heads af); "
                         "use --resume auto to resume every head from its own run directory")
    for kind in kinds:
        cfg = ws.fusion_config(kind)
        torch.manual_seed(derive_seed(ws.cfg.seed, "init-fusion", kind))
        head = cfg.fusion.build().to(ws.dist.device)
        train = fusion_train_data(ws, kind)
        result = train_fusion(
            head, train, label_emb, cfg, seed=derive_seed(ws.cfg.seed, "af", kind) % 2 ** 31,
            dist=ws.dist, run_dir=ws.stage_dir("af") / kind, record=ws.record(MODALITY_SLOTS),
            resume=resume, eval_fn=lambda step, h=head: {"val_fused_top1": fused_accuracy(
                h, val, label_emb)}, progress=ws.progress, name=f"af-{kind}")
        acc = result.metrics["val_fused_top1"] if result else fused_accuracy(head, val,
                                                                             label_emb)
        metrics[kind] = acc
    _say(ws, "[af] val fused top-1 (modality-free records): " + ", ".join(
        f"{k} {v:.3f}" for k, v in metrics.items()))
    return metrics
