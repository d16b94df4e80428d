"""The ``export`` stage: the trained encoders, the AF head, its logit scale and real test samples
handed to :func:`omnibind_train.export.export_bundle`."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..data import SamplePreprocessor
from ..models.fusion import MODALITY_SLOTS
from .eval_stage import af_calibration
from .workspace import Workspace, _say


def sample_inputs(ws: Workspace, modalities: Sequence[str], n: int) -> dict[str, torch.Tensor]:
    """Real preprocessed test samples ``[n, ...]`` per modality (export parity checks)."""
    ds = ws.dataset("student", ws.cfg.evaluation.split)
    out: dict[str, list[Any]] = {m: [] for m in modalities}
    pre = {m: SamplePreprocessor(m, ws.preprocess_configs[m]) for m in modalities}
    for i in range(len(ds)):
        sample = ds[i]
        xs = {m: pre[m](sample) for m in modalities}
        if all(x is not None for x in xs.values()):
            for m, x in xs.items():
                out[m].append(torch.from_numpy(x))
        if all(len(v) >= n for v in out.values()):
            break
    return {m: torch.stack(v[:n]) for m, v in out.items()}


def bundle_dir(ws: Workspace) -> Path:
    out = ws.cfg.export.out
    return Path(out).expanduser() if out else ws.cache_dir / "bundles" / ws.cfg.export.bundle


def run_export(ws: Workspace) -> Path | None:
    """Export the bundle through ``omnibind_train.export.export_bundle`` (rank 0)."""
    if not ws.dist.is_main:
        return None
    from ..export import export_bundle

    modalities = [m for m in MODALITY_SLOTS if m != "text"]
    encoders = {m: ws.load_encoder(m).cpu() for m in modalities}
    fusion = ws.load_fusion_heads()["af"].cpu()
    stage_metrics = {s: json.loads((ws.stage_dir(s) / p / "config.json").read_text()).get(
        "metrics", {}) for s, p in (("stage0", "final"), ("cad", "final"), ("af", "af/final"))
        if (ws.stage_dir(s) / p / "config.json").exists()}
    provenance = {"family": "cad_af", "pipeline": ws.cfg.name, "seed": ws.cfg.seed,
                  "dataset": ws.dataset_root.name,
                  "dataset_fingerprint": ws.dataset_fp, "metrics": stage_metrics,
                  "timings_s": dict(ws.timings), "torch": torch.__version__,
                  "training_config": ws.cfg.to_dict()}
    path = export_bundle(
        bundle_dir(ws), encoders=encoders, fusion=fusion,
        fusion_config=ws.fusion_config("af").fusion.to_dict(),
        text_encoder=ws.text_encoder.cpu(), label_names=list(ws.class_names),
        prompt_templates=list(ws.preprocess_configs["text"]["prompt_templates"]),
        label_embeddings=ws.label_embeddings, logit_scale=ws.fusion_logit_scale("af"),
        preprocess_configs=dict(ws.preprocess_configs), provenance=provenance,
        sample_inputs=sample_inputs(ws, modalities, max(2, ws.cfg.export.sample_batch)),
        exporter=ws.cfg.export.exporter, threads=torch.get_num_threads(),
        temperature=af_calibration(ws)["temperature"])
    _say(ws, f"[export] bundle: {path}")
    return Path(path)
