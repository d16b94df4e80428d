"""``omnibind-train teach``: a new sensor distilled into a bundle's space from one recording.

Steps (each reuses the pipeline's own code: no second CAD or AF):

1. pair the new sensor's messages with the nearest camera frames (:mod:`.pairing`) and encode
   them (:mod:`.bagdata`): camera frames with the bundle's image encoder, sensor samples with
   the student's frozen trunk;
2. targets: the user's labels where given (``labels: topic`` or a CSV of intervals), else the
   image teacher's zero-shot prediction (its cosine argmax over the bundle's label
   embeddings): the pseudo-labels of stage II;
3. stage I, CAD (:func:`~omnibind_train.trainers.cad.train_cad` with
   :class:`~omnibind_train.losses.CADLoss`) with **image as the align centre** (seed 000
   Table 7's image-centred rows): the loss's "centre" argument gets ``E_v``, the bundle's image
   embedding of the paired frame, and the "other teacher" argument the label embedding:

   * without labels there is no second teacher: L_in (Eq. 2, InfoNCE from each sensor sample
     to its own frame among the batch) and L_se (Eq. 5-6 with the image term only: the
     sensor's batch self-similarity learns the frames' ``E_v E_v^T``). L_cr (Eq. 3-4) needs the
     teachers' cross-correspondence and is switched off (weight 0). Pseudo-labels are *not*
     used as text here: CAD distils the teacher's embedding, not its argmax;
   * with labels: all three terms, the second teacher of a labelled sample being its label's
     embedding (the bundle's prompt-template mean); an unlabelled sample in a partly
     labelled bag uses its own ``E_v`` there (its rows reduce to the image-only terms);

4. out-of-fold student embeddings (time-blocked cross-fitting, ``crossfit_folds``): the
   run's reason (students fit their training samples better than new ones, and a fusion head
   trained on in-sample embeddings over-trusts them) is stronger still for ~20 objects;
5. stage II, AF (:func:`~omnibind_train.trainers.af.train_fusion`, Eq. 8-9, negative labels
   from the wrong per-modality predictions), starting from the bundle's head, on the run's rows
   and the label-matched bag rows (:mod:`.fusion_rows`);
6. export a new bundle (:func:`~omnibind_train.export.export_bundle`: parity-checked, atomic)
   with the bundle's other components, the student, the head, and ``provenance.teach``: the
   bag, topics, span, pairing counts, labels, losses and accuracies.

The input bundle is never written; the output must be a new directory (or, with
``overwrite``, a bundle that is not the input).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnibind_ros.core.bundle import ModelBundle, load_bundle
from omnibind_ros.core.paths import default_cache_dir

from ..models.fusion import MODALITY_SLOTS
from ..pipeline.train_stages import zero_shot
from ..trainers.af import AFConfig, FusionData, checkpoint_logit_scale, train_fusion
from ..trainers.cad import StudentData, embed_values, train_cad
from ..trainers.checkpoint import load_checkpoint
from ..trainers.common import derive_seed
from .bagdata import BagData, bag_topics, read_bag
from .bundle_io import (
    TeachError,
    new_preprocess_config,
    run_workspace,
    student_encoder,
    torch_modules,
)
from .config import TeachConfig
from .fusion_rows import fusion_rows

__all__ = ["TeachResult", "teach", "time_folds"]

NS = 1_000_000_000


@dataclass
class TeachResult:
    """What :func:`teach` made: the bundle, the report (also ``provenance.teach[-1]``)."""

    bundle: Path
    report: dict[str, Any]
    work_dir: Path


def time_folds(stamps_ns: np.ndarray, folds: int, block_s: float) -> list[torch.Tensor]:
    """``folds`` disjoint ``[M]`` masks of contiguous ``block_s`` spans assigned in turn (equal
    contiguous spans when the recording is too short for a block per fold)."""
    t = np.asarray(stamps_ns, dtype=np.int64)
    block = (t - t.min()) // max(1, round(block_s * NS))
    if np.unique(block).size < folds:
        block = np.argsort(np.argsort(t, kind="stable"), kind="stable") * folds // t.size
    fold = torch.from_numpy((block % folds).astype(np.int64))
    return [fold == k for k in range(folds)]


def _truth(cfg: TeachConfig, bag: Path, info: Any) -> tuple[Any, str | None]:
    """(GroundTruth or None, its source) for labels, or for the pseudo-label check."""
    from omnibind_ros.bag.truth import GroundTruth

    if cfg.labels not in ("none", "topic"):
        return GroundTruth.from_csv(cfg.labels, info.start_ns), f"csv:{cfg.labels}"
    if cfg.truth_topic in info.topics:
        return GroundTruth.from_bag(bag, cfg.truth_topic, info.end_ns), cfg.truth_topic
    if cfg.labels == "topic":
        raise TeachError(f"labels: topic, but bag {bag} has no {cfg.truth_topic} topic")
    return None, None


def _targets(cfg: TeachConfig, data: BagData, bundle: ModelBundle, label_emb: torch.Tensor,
             bag: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(targets, given label or -1, truth or -1 (checks only), labels report), all ``[M]``."""
    names = {n: i for i, n in enumerate(bundle.label_names)}
    truth, source = _truth(cfg, bag, data.info)
    truth_idx = torch.full((len(data),), -1, dtype=torch.long)
    unknown: dict[str, int] = {}
    if truth is not None:
        for k, t in enumerate(data.stamps_ns.tolist()):
            label = truth.label_at(int(t))
            if label is None:
                continue
            if label in names:
                truth_idx[k] = names[label]
            else:
                unknown[label] = unknown.get(label, 0) + 1
    pseudo = (data.image @ label_emb.T).argmax(dim=1)
    given = truth_idx if cfg.labels != "none" else torch.full_like(truth_idx, -1)
    targets = torch.where(given >= 0, given, pseudo)
    checked = truth_idx >= 0
    report = {"source": cfg.labels if cfg.labels in ("none", "topic") else f"csv:{cfg.labels}",
              "labelled_samples": int((given >= 0).sum()),
              "pseudo_labelled_samples": int((given < 0).sum()),
              "labels_not_in_bundle": unknown,
              "distinct_targets": int(torch.unique(targets).numel()),
              "truth_for_checks": source,
              "pseudo_label_accuracy": (float((pseudo[checked] == truth_idx[checked])
                                              .float().mean()) if checked.any() else None)}
    return targets, given, truth_idx, report


def _accuracies(emb: torch.Tensor, label_emb: torch.Tensor, targets: torch.Tensor,
                truth: torch.Tensor) -> dict[str, float | None]:
    checked = truth >= 0
    return {"vs_targets": zero_shot(emb, targets, label_emb),
            "vs_truth": zero_shot(emb, truth, label_emb, checked) if checked.any() else None}


def _cad(cfg: TeachConfig, bundle: ModelBundle, data: BagData, targets: torch.Tensor,
         given: torch.Tensor, label_emb: torch.Tensor, work: Path
         ) -> tuple[Any, torch.Tensor, dict[str, Any]]:
    """Stage I: (final student, out-of-fold embeddings ``[M, D]``, report)."""
    m, n = cfg.modality, len(data)
    labelled = bool((given >= 0).any())
    terms = [t for t in cfg.cad.terms if t != "cr" or labelled] or ["in"]
    cad_cfg = cfg.cad.replace(students=[m], terms=terms, crossfit_folds=0)
    centre = data.image
    second = torch.where((given >= 0).unsqueeze(1), label_emb[given.clamp_min(0)], centre)
    inputs = {m: StudentData(data.values, torch.ones(n, dtype=torch.bool))}
    ones = torch.ones(n, dtype=torch.bool)

    def run(student: Any, mask: torch.Tensor | None, run_dir: Path | None, seed: int) -> Any:
        return train_cad({m: student}, inputs, centre, second, ones, targets, cad_cfg,
                         seed=seed, run_dir=run_dir, progress=cfg.progress, train_mask=mask,
                         record={"model": {m: student.config.to_dict()}, "teach": cfg.to_dict()})

    oof = None
    if cfg.crossfit_folds >= 2:
        oof = torch.zeros(n, int(bundle.dim))
        for k, fold in enumerate(time_folds(data.stamps_ns, cfg.crossfit_folds,
                                            cfg.crossfit_block_s)):
            if fold.all() or not fold.any():
                continue
            fresh = student_encoder(cfg, bundle, load_weights=False)
            run(fresh, ~fold, None, derive_seed(cfg.seed, "teach-fold", k) % 2 ** 31)
            oof[fold] = embed_values(fresh, data.values[0][fold])
    student = student_encoder(cfg, bundle)
    result = run(student, None, work / "cad", cfg.seed)
    final = embed_values(student, data.values[0])
    report = {"centre": "image", "terms": terms, "weights": list(cad_cfg.loss_weights()),
              "divisor": cad_cfg.divisor, "epochs": cad_cfg.loop.epochs,
              "batch_size": cad_cfg.loop.batch_size, "steps": result.steps,
              "seconds": round(result.seconds, 1),
              "final_losses": {k: round(v, 4) for k, v in result.losses.items()
                               if k in ("loss", *(f"{t}_loss" for t in terms))},
              "crossfit": {"folds": cfg.crossfit_folds, "block_s": cfg.crossfit_block_s}}
    return student, (oof if oof is not None else final), report


def _remap_run(ws: Any, bundle: ModelBundle) -> FusionData:
    """The run's training-split rows with labels as the bundle's label indices (rows whose
    class the bundle does not name are dropped)."""
    data, _ = ws.fusion_data("train")
    names = {n: i for i, n in enumerate(bundle.label_names)}
    lut = torch.tensor([names.get(c, -1) for c in ws.class_names])
    labels = lut[data.labels]
    keep = labels >= 0
    if keep.all():
        return FusionData(data.tokens, data.present, labels, data.records, data.record_masks)
    new_index = torch.cumsum(keep.long(), 0) - 1
    rec = keep[data.records]
    return FusionData(data.tokens[keep], data.present[keep], labels[keep],
                      new_index[data.records[rec]], data.record_masks[rec])


def _af(cfg: TeachConfig, bundle: ModelBundle, fusion: torch.nn.Module, rows: FusionData,
        label_emb: torch.Tensor, run_af: dict[str, Any], work: Path) -> tuple[float, Any]:
    """Stage II from the bundle's head: (logit scale to export, loop result or None)."""
    keep = set(bundle.modalities) | {"text", cfg.modality}
    raw = {**_merged(run_af, cfg.af), "fusion": dict(bundle.fusion.config),  # type: ignore
           "modalities": [s for s in MODALITY_SLOTS if s in keep]}
    af_cfg = AFConfig.from_dict(raw)
    result = train_fusion(fusion, rows, label_emb, af_cfg, seed=cfg.seed, run_dir=work / "af",
                          progress=cfg.progress, name="af")
    if result is None:  # a parameter-free head (mean): nothing to train
        return float(bundle.logit_scale or 1.0 / af_cfg.temperature), None
    return checkpoint_logit_scale(load_checkpoint(work / "af" / "final")), result


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied key by key, nested dicts merged (``{loop: {epochs:
    5}}`` keeps the run's batch size)."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = (_merged(out[key], value) if isinstance(value, dict)
                    and isinstance(out.get(key), dict) else value)
    return out


def _sample_inputs(bundle: ModelBundle, data: BagData, ws: Any, modalities: list[str],
                   n: int, seed: int) -> dict[str, torch.Tensor]:
    """Parity-check inputs: the bag's (image, new sensor), the run's data set for the others,
    else random inputs of the encoder's shape (point sets centred in the unit sphere)."""
    out = {k: v[:n] for k, v in data.samples.items() if v.shape[0] >= 2}
    rest = [m for m in modalities if m not in out]
    if rest and ws is not None:
        from ..pipeline import sample_inputs

        out.update(sample_inputs(ws, rest, n))
    gen = torch.Generator().manual_seed(seed)
    for m in [m for m in rest if m not in out]:
        x = torch.randn(n, *bundle.modalities[m].sample_shape, generator=gen)
        if m == "point_cloud":
            x = x - x.mean(dim=1, keepdim=True)
            x = x / x.norm(dim=-1).amax(dim=1).view(-1, 1, 1)
        out[m] = x
    return out


def _check_out(bundle_root: Path, out: Path, overwrite: bool) -> Path:
    out = out.expanduser().absolute()
    root = bundle_root.resolve()
    if out.resolve() == root or root.is_relative_to(out.resolve()):
        raise TeachError(f"--out {out} is (or contains) the input bundle {root}: teaching "
                         "writes a new bundle and never overwrites its input")
    if out.exists() and not overwrite:
        raise TeachError(f"{out} exists; choose a new directory (or pass --overwrite to replace "
                         "a bundle there)")
    return out


def teach(bag: str | Path, bundle_path: str | Path, out: str | Path, cfg: TeachConfig, *,
          overwrite: bool = False) -> TeachResult:
    """Teach ``cfg.modality`` from ``bag`` into a copy of the bundle at ``out`` (module
    docstring). Raises :class:`TeachError` (and FileNotFoundError for a missing bag/bundle)
    with a message naming what is missing."""
    from ..export import export_bundle

    t0 = time.perf_counter()
    bag = Path(bag).expanduser()
    if not bag.exists():
        raise FileNotFoundError(f"bag {bag} does not exist")
    bundle = load_bundle(bundle_path)
    out = _check_out(bundle.root, Path(out), overwrite)
    bag_topics(bag, cfg)  # a bag without the topics fails here, before any model is built
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    work = Path(cfg.work_dir).expanduser() if cfg.work_dir else cache / "runs" / "teach" / out.name
    label_emb = torch.from_numpy(np.array(bundle.label_embeddings, np.float32))
    encoders, text, fusion = torch_modules(bundle, skip=(cfg.modality,))
    preprocess = new_preprocess_config(cfg, bundle)
    untrained = student_encoder(cfg, bundle)
    data = read_bag(bag, cfg, bundle, untrained, preprocess, cache)
    t_read = time.perf_counter() - t0
    targets, given, truth, labels_report = _targets(cfg, data, bundle, label_emb, bag)
    before = _accuracies(embed_values(untrained, data.values[0]), label_emb, targets, truth)
    student, oof, cad_report = _cad(cfg, bundle, data, targets, given, label_emb, work)
    after = _accuracies(embed_values(student, data.values[0]), label_emb, targets, truth)
    ws, why = run_workspace(cfg, bundle, encoders)
    run_rows = _remap_run(ws, bundle) if ws is not None else None
    rows, rows_report = fusion_rows(cfg.modality, data.image, oof, targets, run_rows,
                                    matches_per_sample=cfg.matches_per_sample, seed=cfg.seed)
    run_af = dict((bundle.provenance.get("training_config") or {}).get("af") or {})
    run_af.pop("modalities", None)
    logit_scale, af_result = _af(cfg, bundle, fusion, rows, label_emb, run_af, work)
    report = _report(cfg, bag, bundle, data, labels_report, cad_report, before, after,
                     rows_report, why, af_result, _accuracies(oof, label_emb, targets, truth),
                     student.config.to_dict())
    modalities = [s for s in MODALITY_SLOTS if s in set(encoders) | {cfg.modality}]
    all_encoders = {s: (student if s == cfg.modality else encoders[s]).cpu().eval()
                    for s in modalities}
    pre = {m: bundle.preprocess_configs[m] for m in modalities if m != cfg.modality}
    pre.update({cfg.modality: preprocess, "text": bundle.text.preprocess})  # type: ignore
    report["seconds"] = {"read_and_encode": round(t_read, 1),
                         "total_before_export": round(time.perf_counter() - t0, 1)}
    provenance = {**bundle.provenance,
                  "teach": [*bundle.provenance.get("teach", []), _plain(report)]}
    export_bundle(out, encoders=all_encoders, fusion=fusion.cpu().eval(),
                  fusion_config=dict(bundle.fusion.config),  # type: ignore[union-attr]
                  text_encoder=text.cpu().eval(), label_names=list(bundle.label_names),
                  prompt_templates=list(bundle.prompt_templates), label_embeddings=label_emb,
                  logit_scale=logit_scale, preprocess_configs=pre, provenance=provenance,
                  sample_inputs=_sample_inputs(bundle, data, ws, modalities,
                                               max(2, cfg.export.sample_batch), cfg.seed),
                  exporter=cfg.export.exporter,
                  include_torch_weights=cfg.export.include_torch_weights,
                  threads=torch.get_num_threads())
    report["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    work.mkdir(parents=True, exist_ok=True)
    (work / "teach_report.json").write_text(json.dumps(_plain(report), indent=1))
    return TeachResult(out, report, work)


def _report(cfg: TeachConfig, bag: Path, bundle: ModelBundle, data: BagData,
            labels: dict[str, Any], cad: dict[str, Any], before: dict[str, Any],
            after: dict[str, Any], rows: dict[str, Any], run_why: str, af_result: Any,
            oof_acc: dict[str, Any], student_config: dict[str, Any]) -> dict[str, Any]:
    info = data.info
    span = (int(data.stamps_ns.min()), int(data.stamps_ns.max()))
    sensor_counts = data.counts.get(cfg.modality)
    camera_counts = data.counts.get("camera")
    return {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "modality": cfg.modality,
        "base_bundle": {"path": str(bundle.root), "name": bundle.name,
                        "created_utc": bundle.manifest.get("created_utc"),
                        "had_modality": cfg.modality in bundle.modalities},
        "init": (f"bundle:{cfg.modality}" if cfg.init == "bundle" else
                 f"registry:{cfg.encoder if isinstance(cfg.encoder, str) else 'config'}"
                 if cfg.encoder is not None else "registry:default"),
        "student_config": student_config,
        "bag": {"path": str(bag.absolute()), "storage": info.storage,
                "start_ns": int(info.start_ns), "end_ns": int(info.end_ns),
                "duration_s": round(info.duration_s, 3), "damage": data.damage or None},
        "topics": {"camera": {"topic": data.topics["camera"][0],
                              "type": data.topics["camera"][1]},
                   "sensor": {"topic": data.topics["sensor"][0],
                              "type": data.topics["sensor"][1]}},
        "span": {"first_stamp_ns": span[0], "last_stamp_ns": span[1],
                 "seconds": round((span[1] - span[0]) / NS, 3)},
        "pairing": {**data.pairing.stats(),
                    "sensor_messages": sensor_counts.to_dict() if sensor_counts else None,
                    "camera_messages": camera_counts.to_dict() if camera_counts else None,
                    "pairs_used": len(data)},
        "labels": labels,
        "cad": cad,
        "student_accuracy_on_bag": {"before": before, "taught_in_sample": after,
                                    "taught_out_of_fold": oof_acc},
        "af": {**rows, "run_data": run_why,
               "steps": af_result.steps if af_result is not None else 0,
               "final_losses": ({k: round(v, 4) for k, v in af_result.losses.items()}
                                if af_result is not None else {})},
        "config": cfg.to_dict(),
    }


def _plain(value: Any) -> Any:
    """JSON/YAML-plain copy (numpy scalars, tuples and paths made plain)."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item")
                                 else str(v)))
