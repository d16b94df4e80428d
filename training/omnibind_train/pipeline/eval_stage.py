"""The ``eval`` stage: every modality combination fused by every head, zero-shot accuracy, the
CAD loss ablation (Table 7, both align centres) and the noisy-modality robustness sweep, written
as ``<run>/eval`` report."""
from __future__ import annotations

import dataclasses
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.fusion import MODALITY_SLOTS
from ..trainers.af import FusionData, train_fusion
from ..trainers.cad import (
    ABLATION_VARIANTS,
    CADConfig,
    StudentData,
    crossfit_embeddings,
    train_cad,
)
from ..trainers.common import derive_seed
from .train_stages import _cad_inputs, fusion_train_data, student_accuracy
from .workspace import Workspace, _file_digest, _save_tensors, _say, _timed

#: Tables 8/9 heads trained by :func:`run_fusion_ablation` next to the stage-II heads.
FUSION_ABLATION_KINDS: tuple[str, ...] = ("cls_token", "outer")

#: Table 7's two halves: the teacher the students are aligned to. The centre takes the place
#: of text in Eq. 2-6 (L_in's positives, the rows of L_cr's correspondences, the self teacher
#: of a text-only L_se) and the other teacher takes the place of image; Eq. 5's averaged self
#: teacher is the same for both centres.
ALIGN_CENTRES: tuple[str, ...] = ("text", "image")


def centred_teachers(text: torch.Tensor, image: torch.Tensor, centre: str
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centre, other)`` teacher embeddings, in the ``(text, image)`` argument order of
    :func:`~omnibind_train.trainers.cad.train_cad` / :class:`~omnibind_train.losses.CADLoss`.

    ``centre="text"`` is the paper's default CAD (Eq. 2: the student's InfoNCE positives are
    the captions); ``centre="image"`` aligns the students to the image teacher instead (the
    lower half of Table 7), with the captions as the second teacher. Students are still scored
    zero-shot against the label-prompt (text) embeddings, as in the paper.
    """
    if centre == "text":
        return text, image
    if centre == "image":
        return image, text
    raise ValueError(f"unknown align centre {centre!r}; expected one of {list(ALIGN_CENTRES)}")


def centred_student_data(data: Mapping[str, StudentData], centre: str
                         ) -> dict[str, StudentData]:
    """Students that carry their own teachers (the real data sets) with those swapped like
    :func:`centred_teachers`; shared-teacher students (the simulated world) unchanged.

    Raises ``ValueError`` for an image-centred student without an image teacher.
    """
    out = {}
    for m, d in data.items():
        if centre not in ALIGN_CENTRES:
            raise ValueError(f"unknown align centre {centre!r}; expected {list(ALIGN_CENTRES)}")
        if centre == "image" and d.own_teachers:
            if d.image is None:
                raise ValueError(f"{m}: no image teacher, so no image-centred CAD")
            d = dataclasses.replace(d, text=d.image, image=d.text)
        out[m] = d
    return out


def train_cad_centred(ws: Workspace, cfg: CADConfig, centre: str, *,
                      splits: Sequence[str] = ("test",),
                      inputs: tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                      progress: bool = False) -> dict[str, dict[str, float]]:
    """Fresh students trained with ``cfg`` aligned to ``centre`` (nothing written) ->
    ``{split: {student: zero-shot top-1}}``.

    ``inputs`` is ``_cad_inputs(ws, cfg.students)`` when the caller already has it. The seed is
    the CAD stage's, so the two centres (and every Table 7 row) start from the same students
    and see the same batches.
    """
    data, text, image, teacher_valid = inputs or _cad_inputs(ws, cfg.students)
    first, second = centred_teachers(text, image, centre)
    data = centred_student_data(data, centre)
    encoders = {m: ws.training_encoder(m) for m in cfg.students}
    train_cad(encoders, data, first, second, teacher_valid, ws.labels("student", "train"), cfg,
              seed=derive_seed(ws.cfg.seed, "cad") % 2 ** 31, dist=ws.dist, progress=progress)
    return {split: student_accuracy(ws, encoders, split) for split in splits}


def ablation_config(ws: Workspace, variant: str) -> CADConfig:
    """The CAD config of one Table 7 row: the variant's terms in the scarce-data setting of
    ``evaluation.ablation`` (train fraction, epochs), no checkpoints."""
    abl = ws.cfg.evaluation.ablation
    loop = ws.cfg.cad.loop.replace(epochs=abl.epochs or ws.cfg.cad.loop.epochs, ckpt_every=0,
                                   eval_every=0)
    return ws.cfg.cad.replace(terms=list(ABLATION_VARIANTS[variant]),
                              train_fraction=abl.train_fraction, loop=loop)


def run_cad_ablation(ws: Workspace, *, centres: Sequence[str] | None = None,
                     splits: Sequence[str] | None = None
                     ) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Table 7, both halves: each CAD variant, students aligned to each centre.

    Returns ``{centre: {split: {student: {variant: acc}}}}``. ``centres`` defaults to
    ``evaluation.ablation.centres`` when the config has that field, else both
    (:data:`ALIGN_CENTRES`); ``splits`` to the validation split and ``evaluation.split``
    (nothing is selected here: both are reported).
    """
    abl = ws.cfg.evaluation.ablation
    centres = list(centres or getattr(abl, "centres", None) or ALIGN_CENTRES)
    splits = list(dict.fromkeys(splits or ["val", ws.cfg.evaluation.split]))
    inputs = _cad_inputs(ws, ws.cfg.cad.students)
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {
        c: {s: {m: {} for m in ws.cfg.cad.students} for s in splits} for c in centres}
    for centre in centres:
        for variant in abl.variants:
            acc = train_cad_centred(ws, ablation_config(ws, variant), centre, splits=splits,
                                    inputs=inputs)
            for split, per in acc.items():
                for m, v in per.items():
                    out[centre][split][m][variant] = v
            _say(ws, f"[eval] CAD ablation {centre}-centred {variant}: " + "; ".join(
                f"{s} " + ", ".join(f"{m} {v:.3f}" for m, v in per.items())
                for s, per in acc.items()))
    return out


def present_by_modality(data: FusionData, slots: Sequence[str] = MODALITY_SLOTS
                        ) -> dict[str, torch.Tensor]:
    """modality -> ``[N]`` bool usable inputs of a split (False where preprocessing failed):
    the mask training applies (:func:`~omnibind_train.trainers.af.make_batch`)."""
    return {m: data.present[:, i] for i, m in enumerate(slots)}


def evaluate_split(data: FusionData, embeddings: Mapping[str, torch.Tensor],
                   label_embeddings: torch.Tensor, heads: Mapping[str, nn.Module],
                   modalities: Sequence[str]) -> dict[str, Any]:
    """Every subset of ``modalities`` fused by every head on one split, invalid inputs masked
    as in training (:func:`omnibind_train.evaluation.evaluate_combinations` with
    ``present``)."""
    from ..evaluation import evaluate_combinations

    return evaluate_combinations(dict(embeddings), data.labels, label_embeddings, dict(heads),
                                 list(modalities), present=present_by_modality(data))


def _train_head(ws: Workspace, kind: str, train: FusionData, *, seed_tag: Any = None
                ) -> tuple[nn.Module, float]:
    """A fresh fusion head of ``kind`` trained on ``train`` as the AF stage trains it (same
    config and seeds; ``seed_tag`` derives other seeds), nothing written -> (head, seconds)."""
    import time

    cfg = ws.fusion_config(kind)
    extra = () if seed_tag is None else (seed_tag,)
    torch.manual_seed(derive_seed(ws.cfg.seed, "init-fusion", kind, *extra))
    head = cfg.fusion.build().to(ws.dist.device)
    t0 = time.perf_counter()
    train_fusion(head, train, ws.label_embeddings, cfg,
                 seed=derive_seed(ws.cfg.seed, "af", kind, *extra) % 2 ** 31, dist=ws.dist,
                 progress=False, name=f"af-{kind}")
    return head.eval(), time.perf_counter() - t0


def run_fusion_ablation(ws: Workspace, *, kinds: Sequence[str] = FUSION_ABLATION_KINDS,
                        splits: Sequence[str] | None = None,
                        with_stage_heads: bool = True) -> dict[str, Any]:
    """Tables 8/9: extra fusion heads (``cls_token``, ``outer``) trained like AF on the stage-II
    training embeddings, evaluated with the stage's heads (AF, mean, linear, concat) on every
    subset of the fused modalities.

    Returns ``{"splits": {split: evaluate_combinations result}, "train_seconds": {kind: s}}``;
    ``splits`` defaults to the validation split and ``evaluation.split`` (both reported,
    nothing selected).
    """
    splits = list(dict.fromkeys(splits or ["val", ws.cfg.evaluation.split]))
    heads: dict[str, nn.Module] = dict(ws.load_fusion_heads()) if with_stage_heads else {}
    seconds = {}
    for kind in kinds:
        heads[kind], seconds[kind] = _train_head(ws, kind, fusion_train_data(ws, kind))
        _say(ws, f"[eval] fusion ablation: {kind} trained in {seconds[kind]:.1f} s")
    modalities = [m for m in MODALITY_SLOTS if m in ws.cfg.af.modalities]
    out = {}
    for split in splits:
        data, emb = ws.fusion_data(split)
        out[split] = evaluate_split(data, emb, ws.label_embeddings, heads, modalities)
    return {"splits": out, "train_seconds": seconds}


def _in_sample_train_embeddings(ws: Workspace) -> dict[str, torch.Tensor]:
    """Training-split embeddings with the students of the final CAD checkpoint applied to the
    samples they were trained on (``crossfit_folds: 0``)."""
    _, emb = ws.fusion_data("train")
    feats = ws.features("student", "train", ws.cfg.cad.students)
    out = dict(emb)
    for m in ws.cfg.cad.students:
        out[m] = ws.embed(ws.load_encoder(m, pretrained=False), feats[m])
    return out


def crossfit_train_embeddings(ws: Workspace, folds: int) -> dict[str, torch.Tensor]:
    """The stage-II training embeddings that ``cad.crossfit_folds: folds`` gives.

    0: in-sample (final CAD students on their own training samples); K >= 2: the final students'
    embeddings for the teachers and the out-of-fold student embeddings of K fold models trained
    with the CAD config and the CAD stage's cross-fitting seed, taken from the CAD stage's file
    when it holds K folds of this checkpoint, else computed once and kept under
    ``<run>/eval/crossfit`` (keyed by the checkpoint digest).
    """
    if folds == 0:
        return _in_sample_train_embeddings(ws)
    if folds < 2:
        raise ValueError(f"crossfit folds must be 0 or >= 2, got {folds}")
    from safetensors import safe_open
    from safetensors.torch import load_file

    _, emb = ws.fusion_data("train")
    out = dict(emb)
    digest = _file_digest(ws.stage_dir("cad") / "final")
    stage_file = ws.oof_path()
    if stage_file.exists():
        with safe_open(str(stage_file), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("cad") == digest and meta.get("folds") == str(folds):
            out.update(load_file(str(stage_file)))
            return out
    path = ws.stage_dir("eval") / "crossfit" / f"oof-train-{folds}-{digest}.safetensors"
    if path.exists():
        out.update(load_file(str(path)))
        return out
    cfg = ws.cfg.cad.replace(crossfit_folds=folds,
                             loop=ws.cfg.cad.loop.replace(ckpt_every=0, eval_every=0))
    data, text, image, teacher_valid = _cad_inputs(ws, cfg.students)
    oof = crossfit_embeddings(lambda: {m: ws.training_encoder(m) for m in cfg.students}, data,
                              text, image, teacher_valid, ws.labels("student", "train"), cfg,
                              seed=derive_seed(ws.cfg.seed, "crossfit") % 2 ** 31,
                              dist=ws.dist, progress=False)
    if ws.dist.is_main:
        _save_tensors(path, oof, {"cad": digest, "folds": str(folds)})
    out.update(oof)
    return out


def run_crossfit_decision(ws: Workspace, *, folds: Sequence[int] = (0, 2), seeds: int = 1,
                          kind: str = "af", tolerance: float = 0.0) -> dict[str, Any]:
    """Re-decide ``cad.crossfit_folds`` on the validation split (test reported alongside).

    For each option the stage-II training embeddings are rebuilt
    (:func:`crossfit_train_embeddings`; the final CAD students, hence the val/test embeddings,
    are the same for every option), ``seeds`` fresh ``kind`` heads are trained as the AF stage
    trains them, and each is scored on val and on ``evaluation.split``: top-1 averaged over the
    subsets of >= 2 modalities (the paper's Total), invalid inputs masked. The choice is
    :func:`omnibind_train.evaluation.select_on_val` of the seed-mean val scores (ties within
    ``tolerance`` go to fewer folds: the cheaper option).

    Returns ``{"metric", "options": {folds: {"val", "test", "per_seed": [...], "seconds"}},
    "decision": select_on_val result}``.
    """
    import time

    from ..evaluation import select_on_val

    test_split = ws.cfg.evaluation.split
    modalities = [m for m in MODALITY_SLOTS if m in ws.cfg.af.modalities]
    train, _ = ws.fusion_data("train")
    evals = {s: ws.fusion_data(s) for s in dict.fromkeys(["val", test_split])}
    options: dict[int, dict[str, Any]] = {}
    for k in folds:
        t0 = time.perf_counter()
        emb = crossfit_train_embeddings(ws, int(k))
        ds = ws.dataset("student", "train")
        records = [(i, [m.value for m in mods]) for i, mods in ds.modality_free]
        data = FusionData.build(emb, present_by_modality(train), train.labels, records)
        embed_s = time.perf_counter() - t0
        per_seed = []
        for s in range(seeds):
            head, secs = _train_head(ws, kind, data, seed_tag=None if s == 0 else s)
            row = {"seed": s, "train_seconds": secs}
            for split, (d, e) in evals.items():
                res = evaluate_split(d, e, ws.label_embeddings, {kind: head}, modalities)
                row[split] = res["avg_ge2"]["top1"][kind]
            per_seed.append(row)
            _say(ws, f"[eval] crossfit {k} seed {s}: " + ", ".join(
                f"{split} {row[split]:.4f}" for split in evals))
        options[int(k)] = {
            **{split: sum(r[split] for r in per_seed) / len(per_seed) for split in evals},
            "per_seed": per_seed, "embedding_seconds": embed_s}
    decision = select_on_val({k: {split: v[split] for split in evals}
                              for k, v in options.items()},
                             tolerance=tolerance, prefer=sorted(options))
    _say(ws, f"[eval] crossfit_folds chosen on val: {decision['chosen']} "
             f"(val {decision['best_val']:.4f})")
    return {"metric": f"{kind} top-1, mean over subsets of >= 2 modalities", "kind": kind,
            "options": options, "decision": decision}


def _degraded_test(ws: Workspace, keep: torch.Tensor | None = None) -> dict[str, Any] | None:
    """``degraded_sweep``'s inputs for the evaluated split and its degraded twin (``keep``:
    the sample subset); None without a twin."""
    if ws.degraded is None:
        return None
    split = ws.cfg.evaluation.split
    data, emb = ws.fusion_data(split)
    twin, twin_emb = ws.degraded.fusion_data(split)
    present, twin_present = present_by_modality(data), present_by_modality(twin)
    labels = data.labels
    if keep is not None:
        emb, twin_emb = ({m: e[keep] for m, e in d.items()} for d in (emb, twin_emb))
        present, twin_present = ({m: p[keep] for m, p in d.items()}
                                 for d in (present, twin_present))
        labels = labels[keep]
    return {"embeddings": emb, "degraded": twin_emb, "labels": labels,
            "label_embeddings": ws.label_embeddings, "present": present,
            "degraded_present": twin_present,
            "modalities": [m for m in MODALITY_SLOTS if m in ws.cfg.af.modalities]}


def run_degraded(ws: Workspace) -> dict[str, Any] | None:
    """Every stage-II head with one degraded sensor among >= 2 (and the same subsets clean),
    and each degraded sensor fused alone; None without a degraded twin."""
    from ..evaluation import degraded_sweep

    inputs = _degraded_test(ws)
    if inputs is None:
        return None
    heads = ws.load_fusion_heads()
    return {"min_size_2": {k: degraded_sweep(head=h, **inputs) for k, h in heads.items()},
            "alone": {k: degraded_sweep(head=h, min_size=1, max_size=1, **inputs)
                      for k, h in heads.items()},
            "degrade_prob": ws.cfg.af.degrade_prob}


def run_robustness(ws: Workspace) -> dict[str, dict[str, dict[float, float]]]:
    """AF trained with vs without negative labels, swept over one noisy modality, and (with a
    degraded twin) evaluated with one degraded sensor (``"degraded"``)."""
    from ..evaluation import degraded_sweep, robustness_sweep

    rob = ws.cfg.evaluation.robustness
    train = fusion_train_data(ws, "af", rob.af)
    test_data, test_emb = ws.fusion_data(ws.cfg.evaluation.split)
    labels = ws.labels("student", ws.cfg.evaluation.split)
    present = present_by_modality(test_data)
    if rob.samples_per_class > 0:
        keep = torch.cat([torch.nonzero(labels == c).flatten()[:rob.samples_per_class]
                          for c in torch.unique(labels).tolist()]).sort().values
        test_emb, labels = {m: e[keep] for m, e in test_emb.items()}, labels[keep]
        present = {m: p[keep] for m, p in present.items()}
    else:
        keep = None
    modalities = [m for m in MODALITY_SLOTS if m in ws.cfg.af.modalities]
    degraded_inputs = _degraded_test(ws, keep)
    out: dict[str, Any] = {}
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
                                        min_size=rob.min_size, seed=ws.cfg.seed,
                                        present=present)
        if degraded_inputs is not None:
            out.setdefault("degraded", {})[variant] = degraded_sweep(
                head=head, min_size=rob.min_size, **degraded_inputs)["degraded"]
    return out


#: The student split the bundle's confidence temperature is fitted on (never the tested one).
CALIBRATION_SPLIT = "val"


def af_calibration(ws: Workspace) -> dict[str, Any]:
    """The AF head's confidence temperature, fitted on :data:`CALIBRATION_SPLIT` and judged on
    the evaluated split (:func:`omnibind_train.evaluation.calibration.calibration_report`).
    Deterministic: the eval report and the exported bundle get the same temperature."""
    from ..evaluation.calibration import calibration_report, fused_logits

    head = ws.load_fusion_heads()["af"]
    scale = ws.fusion_logit_scale("af")
    modalities = [m for m in MODALITY_SLOTS if m in ws.cfg.af.modalities]

    def logits(split: str) -> Any:
        data, emb = ws.fusion_data(split)
        return fused_logits(head, emb, data.labels, ws.label_embeddings, scale, modalities,
                            present=present_by_modality(data))
    return calibration_report(logits(CALIBRATION_SPLIT), logits(ws.cfg.evaluation.split))


def run_eval(ws: Workspace) -> dict[str, Path]:
    """Combinations, zero-shot, CAD ablation and robustness -> ``<run>/eval`` report."""
    from .. import evaluation

    split = ws.cfg.evaluation.split
    data, emb = ws.fusion_data(split)
    modalities = [m for m in MODALITY_SLOTS if m in ws.cfg.af.modalities]
    results: dict[str, Any] = {
        "combinations": evaluate_split(data, emb, ws.label_embeddings, ws.load_fusion_heads(),
                                       modalities),
        "zero_shot": evaluation.zero_shot_accuracy(emb, data.labels, ws.label_embeddings,
                                                   present=present_by_modality(data))}
    _say(ws, "[eval] zero-shot top-1: " + ", ".join(
        f"{m} {v:.3f}" for m, v in results["zero_shot"].items()))
    if ws.cfg.evaluation.ablation.enabled:
        by_centre = _timed(ws, "eval.cad_ablation", lambda: run_cad_ablation(ws))
        results["cad_ablation_centres"] = by_centre
        if "text" in by_centre:  # the paper's CAD (text centre) on the evaluated split
            results["cad_ablation"] = by_centre["text"][split]
    if ws.cfg.evaluation.robustness.enabled:
        results["robustness"] = _timed(ws, "eval.robustness", lambda: run_robustness(ws))
    degraded = _timed(ws, "eval.degraded", lambda: run_degraded(ws))
    if degraded is not None:
        results["degraded"] = degraded
    results["calibration"] = cal = _timed(ws, "eval.calibration", lambda: af_calibration(ws))
    _say(ws, f"[eval] confidence temperature {cal['temperature']:.4g}: test ECE "
         f"{100 * cal['before']['ece']:.1f} % -> {100 * cal['after']['ece']:.1f} %")
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
