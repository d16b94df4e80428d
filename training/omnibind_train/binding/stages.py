"""The binding pipeline's last stages: the AF head on bound embeddings, evaluation rows and the
report, and the bound bundle's export (see :mod:`.pipeline` for the first ones)."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from omnibind_ros.sim.text import PROMPT_TEMPLATES

from ..models.fusion import MODALITY_SLOTS
from ..pipeline.family import run_stages
from ..trainers.af import FusionData, checkpoint_logit_scale, fused_accuracy, train_fusion
from ..trainers.checkpoint import load_checkpoint, load_trainable_state
from .bank import EmbeddingBank, test_bank
from .captions import STYLES
from .evaluate import Row, evaluate_rows
from .model import BindingModel
from .pipeline import STAGES, BindingRun, bound_embeddings

__all__ = ["bound_text", "build_rows", "run_af", "run_eval", "run_export"]

AF_TEXT_STYLE = "appearance"


@torch.no_grad()
def space_text(run: BindingRun, name: str, captions: Sequence[str]) -> torch.Tensor:
    """Unit text embeddings of captions in one space."""
    feats = run.data.caption_features(list(captions))
    return run.spaces[name].encode("text", feats)


@torch.no_grad()
def bound_text(run: BindingRun, model: BindingModel, captions: Sequence[str], *,
               fixed: bool = False) -> torch.Tensor:
    """Bound unit text embeddings of captions (every text space of ``model``, routed)."""
    feats = run.data.caption_features(list(captions))
    raw = {n: run.spaces[n].encode("text", feats) for n in model.slots["text"]}
    return model.fixed_average("text", raw) if fixed else model.route("text", raw)[0]


def label_embeddings(run: BindingRun, model: BindingModel, class_names: Sequence[str],
                     templates: Sequence[str] = PROMPT_TEMPLATES) -> torch.Tensor:
    """``[C, D]`` bound label embeddings: the prompt-template mean, normalised (as the
    runtime embeds labels through the bundle's bound text graph)."""
    prompts = [t.format(c) for c in class_names for t in templates]
    emb = bound_text(run, model, prompts).view(len(class_names), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1)


# -- AF on bound embeddings -----------------------------------------------------------------------


def split_bank(run: BindingRun, split: str) -> EmbeddingBank:
    """Every space's embeddings of every instance of a student split (cached); text only in
    :data:`AF_TEXT_STYLE` outside the test split (all the AF head reads)."""
    if split == "test":
        return run.test
    return run.cached_bank(split, run.bank_key(split + AF_TEXT_STYLE), lambda: test_bank(
        run.spaces, run.data, split, styles=(AF_TEXT_STYLE,)))


def fusion_data(run: BindingRun, model: BindingModel, split: str) -> FusionData:
    """Bound embeddings of every modality of a split in the AF head's slots; text is each
    instance's caption of :data:`AF_TEXT_STYLE` (an operator describing what they see)."""
    bank = split_bank(run, split)
    emb, present = {}, {}
    for m in MODALITY_SLOTS:
        rows = np.flatnonzero(bank.styles == STYLES.index(AF_TEXT_STYLE)) if m == "text" \
            else None
        emb[m] = bound_embeddings(model, bank, m, rows)
        valid = bank.valid.get(m)
        present[m] = torch.from_numpy(np.asarray(valid)[rows] if rows is not None
                                      else np.asarray(valid)) if valid is not None else \
            torch.ones(emb[m].shape[0], dtype=torch.bool)
    ds = run.ws.dataset("student", split)
    records = [(i, [m.value for m in mods]) for i, mods in ds.modality_free]
    return FusionData.build(emb, present, run.ws.labels("student", split), records)


def _af_dir(run: BindingRun) -> Path:
    return run.ws.run_dir / "af" / "af"


def _af_key(run: BindingRun) -> str:
    """What the AF head was trained on: the export variant's routers (their file's name holds
    the hash of the spaces, pools, projectors and router config) and the AF config."""
    return json.dumps({"routers": run.routers_path(run.cfg.export.variant).name,
                       "af": run.cfg.af.to_dict()}, sort_keys=True)


def af_is_current(run: BindingRun) -> bool:
    key_file = _af_dir(run) / "binding_key.json"
    return (_af_dir(run) / "final").exists() and key_file.exists() \
        and key_file.read_text() == _af_key(run)


def run_af(run: BindingRun) -> dict[str, float]:
    """Train the AF head on the export variant's bound embeddings of the pool split."""
    cfg = run.cfg
    model = run.bound_model(cfg.export.variant)
    labels = label_embeddings(run, model, run.ws.class_names)
    train = fusion_data(run, model, run.data.pool_split)
    val = fusion_data(run, model, "train")
    af_cfg = cfg.af.replace(fusion=dataclasses.replace(cfg.af.fusion, kind="af", dim=model.dim))
    torch.manual_seed(cfg.seed + 77)
    head = af_cfg.fusion.build()
    train_fusion(head, train, labels, af_cfg, seed=cfg.seed, dist=run.ws.dist,
                 run_dir=_af_dir(run), record={"family": "binding", "variant":
                                                cfg.export.variant},
                 eval_fn=lambda step: {"val_fused_top1": fused_accuracy(head, val, labels)},
                 progress=run.ws.progress, name="af-binding")
    if run.ws.dist.is_main:
        (_af_dir(run) / "binding_key.json").write_text(_af_key(run))
    out = af_test_metrics(run, head, labels)
    run.say(f"[af] bound embeddings, test fused top-1 (modality-free records): "
            f"AF {out['af_test_top1']:.3f}, mean {out['mean_test_top1']:.3f}")
    return out


def af_test_metrics(run: BindingRun, head: torch.nn.Module | None = None,
                    labels: torch.Tensor | None = None) -> dict[str, float]:
    """Fused top-1 of the AF head and of the plain mean on the test split's modality-free
    records (the stored head when ``head`` is None)."""
    model = run.bound_model(run.cfg.export.variant)
    if head is None:
        head, _ = load_af(run)
    if labels is None:
        labels = label_embeddings(run, model, run.ws.class_names)
    test = fusion_data(run, model, "test")
    fusion = dataclasses.replace(run.cfg.af.fusion, kind="mean", dim=model.dim)
    return {"af_test_top1": fused_accuracy(head, test, labels),
            "mean_test_top1": fused_accuracy(fusion.build(), test, labels)}


def load_af(run: BindingRun) -> tuple[torch.nn.Module, float]:
    """The AF head and its logit scale, retrained first when it belongs to other routers."""
    if not af_is_current(run):
        run.say("[af] the stored AF head was trained on other bound embeddings: retraining")
        run_af(run)
    ckpt = load_checkpoint(_af_dir(run) / "final")
    model = run.bound_model(run.cfg.export.variant)
    fusion = dataclasses.replace(run.cfg.af.fusion, kind="af", dim=model.dim)
    cfg = run.cfg.af.replace(fusion=fusion)
    head = cfg.fusion.build()
    load_trainable_state(head, ckpt.weights["fusion"], what="af (binding)")
    return head.eval(), checkpoint_logit_scale(ckpt)


# -- evaluation rows ------------------------------------------------------------------------------


def individual_row(run: BindingRun, name: str) -> Row:
    bank = run.test
    space = run.spaces[name]

    def embed(m: str, rows: np.ndarray) -> torch.Tensor | None:
        return bank.emb[name][m][torch.from_numpy(rows)] if m in space.modalities else None

    def text(captions: Sequence[str]) -> torch.Tensor | None:
        return space_text(run, name, captions) if "text" in space.modalities else None

    return Row(name, embed, text, kind="individual",
               info={"analogue": space.spec.analogue, "modalities": list(space.modalities)})


def binding_row(run: BindingRun, label: str, model: BindingModel, *, fixed: bool = False
                ) -> Row:
    bank = run.test

    def embed(m: str, rows: np.ndarray) -> torch.Tensor | None:
        if m not in model.slots:
            return None
        return bound_embeddings(model, bank, m, rows, fixed=fixed)

    def text(captions: Sequence[str]) -> torch.Tensor | None:
        return bound_text(run, model, captions, fixed=fixed) if "text" in model.slots else None

    return Row(label, embed, text, kind="binding",
               info={"spaces": list(model.spaces), "fixed": fixed})


def build_rows(run: BindingRun) -> list[Row]:
    cfg = run.cfg
    rows = [individual_row(run, n) for n in cfg.specialists]
    rows.append(binding_row(run, "Fixed average (Full)", run.bound_model("full")
                            if "full" in cfg.variants else run.projected_model, fixed=True))
    for v in cfg.variants:
        rows.append(binding_row(run, f"Routed {v.capitalize()}", run.bound_model(v)))
    for ab in cfg.ablations:
        rows.append(binding_row(run, f"{ab.variant.capitalize()}: {ab.name}",
                                run.bound_model(ab.variant, router=ab.router,
                                                training=ab.training, tag=ab.name)))
    return rows


@torch.no_grad()
def text_router_weights(run: BindingRun, model: BindingModel) -> dict[str, dict[str, float]]:
    """Mean text-router weight of every space per caption style of the test split."""
    bank = run.test
    raw = bank.raw("text", None, spaces=model.slots["text"])
    _, w, _ = model.route("text", raw)
    out = {}
    for s, style in enumerate(STYLES):
        sel = torch.from_numpy(bank.styles == s)
        out[style] = {n: float(w[sel, j].mean()) for j, n in enumerate(model.slots["text"])}
    return out


@torch.no_grad()
def router_weights(run: BindingRun, model: BindingModel) -> dict[str, dict[str, float]]:
    """Mean router weight of every space per modality on the test split."""
    out = {}
    for m, names in model.slots.items():
        _, w, _ = model.route(m, run.test.raw(m, None, spaces=names))
        out[m] = {n: float(w[:, j].mean()) for j, n in enumerate(names)}
    return out


def parameter_counts(run: BindingRun) -> dict[str, Any]:
    spaces = {n: sum(p.numel() for p in s.parameters()) for n, s in run.spaces.items()}
    model = run.bound_model("full") if "full" in run.cfg.variants else run.projected_model
    counts = model.parameter_counts()
    return {"spaces_trainable": spaces,
            "projectors": {k.split("/", 1)[1]: v for k, v in counts.items()
                           if k.startswith("projector/")},
            "routers": {k.split("/", 1)[1]: v for k, v in counts.items()
                        if k.startswith("router/")}}


def run_eval(run: BindingRun, af: Mapping[str, float] | None = None) -> Path:
    """Evaluate every row, write ``eval/report.md`` + ``results.json`` + plots."""
    from .report import write_report

    if not af:
        af = af_test_metrics(run)
    rows = build_rows(run)
    results = evaluate_rows(rows, run.test, list(POOL_ORDER), run.ws.class_names)
    full = run.bound_model("full") if "full" in run.cfg.variants else None
    pairs = json.loads((run.out_dir / "pairs.json").read_text()) \
        if (run.out_dir / "pairs.json").exists() else {}
    extra = {"pairs": pairs, "parameters": parameter_counts(run),
             "router_weights": router_weights(run, full) if full else {},
             "text_router_by_style": text_router_weights(run, full) if full else {},
             "af": dict(af or {}), "timings_s": dict(run.timings),
             "ablations": [a.to_dict() for a in run.cfg.ablations]}
    out = run.ws.run_dir / "eval"
    path = write_report(out, results, extra)
    run.say(f"[eval] report: {path}")
    return path


POOL_ORDER = ("image", "text", "audio", "point_cloud", "thermal", "event", "tactile")


# -- export ---------------------------------------------------------------------------------------


def run_export(run: BindingRun) -> Path | None:
    """Export the bound bundle: one bound encoder per modality, the AF head, bound labels."""
    if not run.ws.dist.is_main:
        return None
    from ..export import export_bundle
    from ..pipeline.export_stage import bundle_dir, sample_inputs
    from .export import bound_encoder_from_trained

    ws, cfg = run.ws, run.cfg
    variant = cfg.export.variant
    model = run.bound_model(variant)
    spaces = [run.spaces[n] for n in cfg.variants[variant]]
    encoders = {}
    for m in MODALITY_SLOTS:
        if m not in model.slots:
            continue
        enc_cfg = ws.encoder_configs[m]
        trunk = None if m == "point_cloud" else {"kind": enc_cfg.trunk.kind,
                                                 **_asdict(enc_cfg.trunk)}
        trunk_module = ws.text_encoder.trunk if m == "text" else \
            (None if trunk is None else ws.new_encoder(m).trunk)
        encoders[m] = bound_encoder_from_trained(
            m, spaces, model, trunk=trunk, trunk_module=trunk_module, variant=variant,
            tokenizer=ws.text_encoder.tokenizer if m == "text" else None)
    head, scale = load_af(run)
    text = encoders.pop("text")
    labels = label_embeddings(run, model, ws.class_names)
    modalities = list(encoders)
    provenance = {"family": "binding", "variant": variant,
                  "spaces": {s.name: s.spec.analogue for s in spaces},
                  "target_space": cfg.target, "pipeline": cfg.name, "seed": cfg.seed,
                  "dataset": ws.dataset_root.name, "dataset_fingerprint": ws.dataset_fp,
                  "timings_s": dict(run.timings), "torch": torch.__version__,
                  "training_config": cfg.to_dict()}
    af_cfg = dataclasses.replace(cfg.af.fusion, kind="af", dim=model.dim)
    path = export_bundle(
        bundle_dir(ws), encoders=encoders, fusion=head, fusion_config=af_cfg.to_dict(),
        text_encoder=text, label_names=list(ws.class_names),
        prompt_templates=list(PROMPT_TEMPLATES), label_embeddings=labels, logit_scale=scale,
        preprocess_configs=dict(ws.preprocess_configs), provenance=provenance,
        sample_inputs=sample_inputs(ws, modalities, max(2, cfg.export.sample_batch)),
        exporter=cfg.export.exporter, threads=torch.get_num_threads())
    run.say(f"[export] bound bundle ({variant}): {path}")
    return Path(path)


def _asdict(obj: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(obj)


# -- the whole pipeline ---------------------------------------------------------------------------


def run_stage(run: BindingRun, stage: str, *, overwrite_data: bool = False) -> Any:
    """Run one stage of :data:`.pipeline.STAGES` (earlier outputs are built on demand)."""
    if stage == "data":
        return run.timed("data", lambda: run.run_data(overwrite=overwrite_data))
    if stage == "spaces":
        return run.timed("spaces", lambda: run.spaces)
    if stage == "pairs":
        return run.timed("pairs", run.run_pairs)
    if stage == "bind":
        return run.timed("bind", run.run_bind)
    if stage == "af":
        run.af_metrics = run.timed("af", lambda: run_af(run))
        return run.af_metrics
    if stage == "eval":
        return run.timed("eval", lambda: run_eval(run, run.af_metrics))
    if stage == "export":
        return run.timed("export", lambda: run_export(run))
    raise ValueError(f"unknown binding stage {stage!r}; stages: {STAGES}")


def run_all(run: BindingRun, stages: Sequence[str] = STAGES, *,
            overwrite_data: bool = False) -> dict[str, float]:
    """Every stage in order; writes ``<run>/timings.json`` and returns the timings."""
    return run_stages(run, stages, run_stage, overwrite_data=overwrite_data)
