"""The UniAlign pipeline's last stages: the AF head on UniAlign embeddings, evaluation rows and
the report, and the bundle export (see :mod:`.pipeline` for the first ones)."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..binding.evaluate import Row, evaluate_rows
from ..binding.stages import POOL_ORDER, individual_row
from ..models.fusion import MODALITY_SLOTS
from ..pipeline.family import run_stages
from ..trainers.af import FusionData, checkpoint_logit_scale, fused_accuracy, train_fusion
from ..trainers.checkpoint import load_checkpoint, load_trainable_state
from .model import IMAGE, UniAlignModel
from .pipeline import STAGES, UniAlignRun, Variant

__all__ = ["model_row", "run_af", "run_all", "run_eval", "run_export", "run_stage"]

AF_TEXT_STYLE = "appearance"


# -- AF on UniAlign embeddings --------------------------------------------------------------------


def fusion_data(run: UniAlignRun, model: UniAlignModel, split: str) -> FusionData:
    """UniAlign embeddings of every modality of a student split in the AF head's slots; text is
    each instance's appearance caption (an operator describing what they see)."""
    emb, present = {}, {}
    for m in MODALITY_SLOTS:
        if m == "text":
            caps = run.teacher_run.data.captions("student", split, AF_TEXT_STYLE)
            emb[m] = run.text_embed(caps)
            present[m] = torch.ones(len(caps), dtype=torch.bool)
            continue
        emb[m] = run.embed_split(model, m, "student", split)
        present[m] = run.data.inputs("student", split, m)[1].bool()
    ds = run.ws.dataset("student", split)
    records = [(i, [m.value for m in mods]) for i, mods in ds.modality_free]
    return FusionData.build(emb, present, run.ws.labels("student", split), records)


def _af_dir(run: UniAlignRun) -> Path:
    return run.ws.run_dir / "af" / "af"


def _af_key(run: UniAlignRun) -> str:
    return json.dumps({"model": run.model_path(Variant()).name, "af": run.cfg.af.to_dict()},
                      sort_keys=True)


def run_af(run: UniAlignRun) -> dict[str, float]:
    """Train the AF head on the main model's embeddings of the pool split."""
    cfg = run.cfg
    model = run.model()
    labels = run.label_text(run.ws.class_names)
    train = fusion_data(run, model, run.data.pool_split)
    val = fusion_data(run, model, "train")
    af_cfg = cfg.af.replace(fusion=dataclasses.replace(cfg.af.fusion, kind="af",
                                                       dim=model.embed_dim))
    torch.manual_seed(cfg.seed + 77)
    head = af_cfg.fusion.build()
    train_fusion(head, train, labels, af_cfg, seed=cfg.seed, dist=run.ws.dist,
                 run_dir=_af_dir(run), record={"family": "unialign"},
                 eval_fn=lambda step: {"val_fused_top1": fused_accuracy(head, val, labels)},
                 progress=run.ws.progress, name="af-unialign")
    if run.ws.dist.is_main:
        (_af_dir(run) / "unialign_key.json").write_text(_af_key(run))
    out = af_test_metrics(run, head, labels)
    run.say(f"[af] UniAlign embeddings, test fused top-1 (modality-free records): "
            f"AF {out['af_test_top1']:.3f}, mean {out['mean_test_top1']:.3f}")
    return out


def load_af(run: UniAlignRun) -> tuple[torch.nn.Module, float]:
    """The AF head and its logit scale, retrained first when it belongs to another model."""
    key = _af_dir(run) / "unialign_key.json"
    if not (key.exists() and key.read_text() == _af_key(run)):
        run.say("[af] no AF head for the current model: training it")
        run_af(run)
    ckpt = load_checkpoint(_af_dir(run) / "final")
    fusion = dataclasses.replace(run.cfg.af.fusion, kind="af", dim=run.model().embed_dim)
    head = run.cfg.af.replace(fusion=fusion).fusion.build()
    load_trainable_state(head, ckpt.weights["fusion"], what="af (unialign)")
    return head.eval(), checkpoint_logit_scale(ckpt)


def af_test_metrics(run: UniAlignRun, head: torch.nn.Module | None = None,
                    labels: torch.Tensor | None = None) -> dict[str, float]:
    model = run.model()
    if head is None:
        head, _ = load_af(run)
    labels = labels if labels is not None else run.label_text(run.ws.class_names)
    test = fusion_data(run, model, "test")
    mean = dataclasses.replace(run.cfg.af.fusion, kind="mean", dim=model.embed_dim).build()
    return {"af_test_top1": fused_accuracy(head, test, labels),
            "mean_test_top1": fused_accuracy(mean, test, labels)}


# -- evaluation -----------------------------------------------------------------------------------


def model_row(run: UniAlignRun, name: str, model: UniAlignModel) -> Row:
    """A UniAlign model as an evaluation row (frozen text side for captions and prompts)."""
    routed = {IMAGE, *model.cfg.modalities}

    def embed(m: str, rows: np.ndarray) -> torch.Tensor | None:
        if m == "text":
            return run.text_embed([run.test_captions[i] for i in rows])
        return run.embed_split(model, m, "student", "test", rows) if m in routed else None

    return Row(name, embed, lambda caps: run.text_embed(list(caps)), kind="unialign",
               info={"modalities": sorted(routed), "moe": model.cfg.moe.to_dict()})


def bundle_row(run: UniAlignRun, name: str, bundle_path: str | Path) -> Row | None:
    """Another exported bundle (e.g. the default CAD + AF one) on the same test split, through
    ONNX Runtime and its own preprocessing (None when it is not there)."""
    from omnibind_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend
    from omnibind_ros.core.bundle import load_bundle

    path = Path(bundle_path).expanduser()
    if not (path / "bundle.yaml").exists():
        return None
    bundle = load_bundle(path)
    backend = OnnxRuntimeBackend(bundle, threads=torch.get_num_threads(),
                                 providers=["CPUExecutionProvider"])
    pre = {m: c.to_dict() for m, c in bundle.preprocess_configs.items()}

    def embed(m: str, rows: np.ndarray) -> torch.Tensor | None:
        if m == "text":
            return text([run.test_captions[i] for i in rows])
        if m not in bundle.modality_names or m not in pre:
            return None
        x, _ = run.data.inputs("student", "test", m, preprocess=pre[m])
        x = x[torch.as_tensor(rows, dtype=torch.long)].float().numpy()
        out = [backend.encode(m, x[i:i + 64]) for i in range(0, len(x), 64)]
        return torch.nn.functional.normalize(torch.from_numpy(np.concatenate(out)), dim=-1)

    def text(caps: Sequence[str]) -> torch.Tensor:
        out = [backend.embed_text(list(caps[i:i + 256])) for i in range(0, len(caps), 256)]
        return torch.nn.functional.normalize(torch.from_numpy(np.concatenate(out)), dim=-1)

    return Row(name, embed, text, kind="bundle", info={"bundle": str(path),
                                                          "family": bundle.family})


def build_rows(run: UniAlignRun, *, ablations: bool = True) -> list[Row]:
    teachers = run.teacher_run
    rows = [individual_row(teachers, n) for n in dict.fromkeys(run.cfg.teachers.spaces.values())]
    rows.append(model_row(run, "UniAlign", run.model()))
    if ablations:
        for v in run.cfg.ablations:
            if run.model_path(v).exists():
                rows.append(model_row(run, v.name, run.model(v)))
    return rows


@torch.no_grad()
def own_vocabulary_accuracy(run: UniAlignRun, model: UniAlignModel) -> dict[str, float]:
    """Top-1 of each extended modality against its own data set's labels on the test
    instances whose class that data set has: what the training labels can teach, next to the
    18-way zero-shot (a sound names a material, so audio's 18-way ceiling is far lower)."""
    classes = run.data.test_classes()
    out = {}
    for m in model.cfg.modalities:
        vocab = run.data.sets[m].vocab
        labels = vocab.labels_of(classes)
        keep = labels >= 0
        emb = run.embed_split(model, m, "student", "test", np.flatnonzero(keep))
        pred = (emb @ run.label_text(vocab.names).T).argmax(1).numpy()
        out[m] = float((pred == labels[keep]).mean())
    return out


def run_eval(run: UniAlignRun, af: dict[str, float] | None = None, *,
             default_bundle: str | Path | None = "auto") -> Path:
    """Evaluate every row, write ``eval/report.md`` + ``results.json`` + plots."""
    from .params import parameter_report
    from .report import write_report

    if not af:
        af = af_test_metrics(run)
    rows = build_rows(run)
    if default_bundle is not None:
        path = run.ws.cache_dir / "bundles" / "default" if default_bundle == "auto" \
            else default_bundle
        extra_row = bundle_row(run, "default bundle (CAD + AF)", path)
        if extra_row is not None:
            rows.append(extra_row)
    results = evaluate_rows(rows, run.teacher_run.test, list(POOL_ORDER), run.ws.class_names)
    extra = {"af": dict(af), "timings_s": dict(run.timings),
             "parameters": parameter_report(run.model()),
             "ablations": [v.to_dict() for v in run.cfg.ablations],
             "curves": {v.name: run.curves(v) for v in [Variant(), *run.cfg.ablations]
                        if run.model_path(v).exists()},
             "own_vocabulary": {v.name: own_vocabulary_accuracy(run, run.model(v))
                                for v in [Variant(), *run.cfg.ablations]
                                if run.model_path(v).exists()},
             "vocabularies": {m: list(s.vocab.names) for m, s in run.data.sets.items()},
             "set_sizes": {m: len(s) for m, s in run.data.sets.items()}}
    out = run.ws.run_dir / "eval"
    path = write_report(out, results, extra)
    run.say(f"[eval] report: {path}")
    return path


# -- export ---------------------------------------------------------------------------------------


def run_export(run: UniAlignRun) -> Path | None:
    """Export the UniAlign bundle: one path per modality, the text path, the AF head."""
    if not run.ws.dist.is_main:
        return None
    from ..export import export_bundle
    from ..pipeline.export_stage import bundle_dir, sample_inputs
    from .export import unialign_encoder

    ws, cfg = run.ws, run.cfg
    model = run.model()
    encoders = {m: unialign_encoder(m, model) for m in MODALITY_SLOTS
                if m != "text" and (m == IMAGE or m in model.cfg.modalities)}
    tcfg = ws.encoder_configs["text"].trunk
    text = unialign_encoder("text", model, trunk={"kind": tcfg.kind, **dataclasses.asdict(tcfg)},
                            trunk_module=ws.text_encoder.trunk,
                            tokenizer=ws.text_encoder.tokenizer)
    head, scale = load_af(run)
    provenance = {"family": "unialign", "pipeline": cfg.name, "seed": cfg.seed,
                  "teachers": dict(cfg.teachers.spaces), "dataset": ws.dataset_root.name,
                  "dataset_fingerprint": ws.dataset_fp, "timings_s": dict(run.timings),
                  "torch": torch.__version__, "training_config": cfg.to_dict()}
    af_cfg = dataclasses.replace(cfg.af.fusion, kind="af", dim=model.embed_dim)
    from omnibind_ros.sim.text import PROMPT_TEMPLATES

    path = export_bundle(
        bundle_dir(ws), encoders=encoders, fusion=head, fusion_config=af_cfg.to_dict(),
        text_encoder=text, label_names=list(ws.class_names),
        prompt_templates=list(PROMPT_TEMPLATES),
        label_embeddings=run.label_text(ws.class_names), logit_scale=scale,
        preprocess_configs=dict(ws.preprocess_configs), provenance=provenance,
        sample_inputs=sample_inputs(ws, list(encoders), max(2, cfg.export.sample_batch)),
        exporter=cfg.export.exporter, threads=torch.get_num_threads())
    run.say(f"[export] UniAlign bundle: {path}")
    return Path(path)


# -- the whole pipeline ---------------------------------------------------------------------------


def run_stage(run: UniAlignRun, stage: str, *, overwrite_data: bool = False) -> Any:
    """Run one stage (:data:`.pipeline.STAGES` or ``ablate``); earlier outputs on demand."""
    if stage == "data":
        return run.timed("data", lambda: run.run_data(overwrite=overwrite_data))
    if stage == "backbone":
        return run.timed("backbone", lambda: run.clip)
    if stage == "teachers":
        return run.timed("teachers", run.run_teachers)
    if stage == "train":
        return run.timed("train", run.run_train)
    if stage == "ablate":
        return run.timed("ablate", run.run_ablate)
    if stage == "af":
        run.af_metrics = run.timed("af", lambda: run_af(run))
        return run.af_metrics
    if stage == "eval":
        return run.timed("eval", lambda: run_eval(run, run.af_metrics))
    if stage == "export":
        return run.timed("export", lambda: run_export(run))
    raise ValueError(f"unknown UniAlign stage {stage!r}; stages: {(*STAGES, 'ablate')}")


def run_all(run: UniAlignRun, stages: Sequence[str] = STAGES, *,
            overwrite_data: bool = False) -> dict[str, float]:
    """Every stage in order; writes ``<run>/timings.json`` and returns the timings."""
    return run_stages(run, stages, run_stage, overwrite_data=overwrite_data)
