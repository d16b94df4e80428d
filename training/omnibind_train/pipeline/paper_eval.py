"""``omnibind-train eval --config training/configs/paper_omnibind.yaml``: the paper run scored on
the real data sets' test splits, written as ``<cache>/runs/<name>/eval/report.md`` and
``results.json`` (the simulated pipeline's eval stage's layout, :mod:`.eval_stage`).

What is measured, and on what:

* **Per student, zero-shot top-1 (and top-5)** on its data set's TEST split
  (:meth:`~.paper.PaperOmniBindConfig.eval_source`: ``data.eval.<student>``, else the
  modality-free test source reading the same data set, e.g. ESC-50 fold 5, LLVIP test,
  N-Caltech101 test, ShapeNet-part test, Touch-and-Go test), against the label-prompt
  embeddings of *that data set's* labels (``data.label_prompt``, embedded by the text teacher
  exactly as in CAD). The final CAD student heads run on the test samples' cached trunk
  features (:meth:`PaperRun.source_features`); samples that fail preprocessing are left out as
  in training (``present``; counted in the report).
* **Fused top-1 on the modality-free test index** of AF and every baseline: each item fused from
  its own modalities (:meth:`PaperRun.fused_scores`, the number ``omnibind-train af`` prints
  after training), plus every modality subset fused by every head with the absent members
  masked (:func:`~.eval_stage.evaluate_split`, the simulated report's Tables 2/3 section).
  Without a built test index this part is "not run" (never the training index).
* **Choices.** This stage chooses nothing: the checkpoints are the stages' final ones (no
  checkpoint or head is picked by a score) and the heads are the configured ones. A choice
  among options goes through :func:`omnibind_train.evaluation.select_on_val`, which reads only a
  validation split; :func:`choose_on_val` is that path for the paper run's scores, and refuses
  scores without a ``val`` entry.
"""
from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..evaluation import select_on_val, to_jsonable, topk_correct, zero_shot_accuracy
from ..evaluation.formatting import _md_table, _pct
from ..evaluation.report import _section_combinations, _section_meta
from ..models.fusion import MODALITY_SLOTS
from ..trainers.cad import embed_values
from .eval_stage import evaluate_split
from .paper import DataRootError, PaperOmniBindConfig

__all__ = ["choose_on_val", "eval_problems", "render_paper_report", "run_paper_eval",
           "student_zero_shot"]

_NOT_RUN = "_not run_"


def eval_problems(cfg: PaperOmniBindConfig) -> list[str]:
    """What would stop ``eval`` for lack of data: each student's test source (unset
    placeholders, missing roots, no derivable test split); the modality-free test index is
    optional (its sources are checked when it is built)."""
    problems: list[str] = []
    keys: list[str] = []
    for m in cfg.cad.students:
        try:
            keys.append(cfg.eval_source(m))
        except ValueError as exc:
            problems.append(str(exc))
    mf = cfg.data.modality_free
    if mf is not None:
        try:
            if Path(cfg.expand(mf.test.index, "data.modality_free.test.index")).is_file():
                keys += list(mf.test.sources)
        except DataRootError:
            pass
    for key in dict.fromkeys(keys):
        try:
            root = cfg.source_root(key)
        except DataRootError as exc:
            problems.append(str(exc))
            continue
        if not root.is_dir():
            problems.append(f"data.sources.{key}.root: {root} does not exist "
                            f"({cfg.data.sources[key].reader} data set root)")
    return list(dict.fromkeys(problems))


def student_zero_shot(run: Any, student: str) -> dict[str, Any]:
    """``student``'s zero-shot scores on its test source (module docstring)."""
    key = run.cfg.eval_source(student)
    reader = run.reader(key)
    fs = run.source_features(key)
    emb = embed_values(run._student_encoder(student), fs.values[0], device=run.dist.device)
    label_emb = run.label_embeddings(reader.label_names)
    labels = torch.from_numpy(reader.labels).long()
    valid = fs.valid.bool()
    top1 = zero_shot_accuracy({student: emb}, labels, label_emb, present={student: valid})
    k = min(5, label_emb.shape[0])
    hits = topk_correct(emb, label_emb, labels, (k,))[0][valid]
    spec = run.cfg.data.sources[key]
    return {"source": key, "reader": spec.reader, "options": dict(spec.options),
            "num_samples": int(valid.numel()), "num_valid": int(valid.sum()),
            "num_classes": int(label_emb.shape[0]), "top1": top1[student],
            "top5": float(hits.float().mean()) if hits.numel() else float("nan"), "top_k": k,
            "train_source": run.cfg.data.cad[student].source
            if student in run.cfg.data.cad else None}


def choose_on_val(scores: Mapping[Any, Mapping[str, float]], **kwargs: Any) -> dict[str, Any]:
    """A choice among options from their scores: :func:`select_on_val` (the ``val`` entry
    decides; ``test`` rides along). Scores without ``val`` are refused (the paper config has no
    validation split of its own; a choice must bring one)."""
    return select_on_val(scores, **kwargs)


def run_paper_eval(run: Any) -> dict[str, Path]:
    """Score the paper run (module docstring) -> ``{"report": ..., "json": ...}``."""
    cfg = run.cfg
    results: dict[str, Any] = {"zero_shot_test": {}}
    for m in cfg.cad.students:
        res = student_zero_shot(run, m)
        results["zero_shot_test"][m] = res
        run._say(f"[eval] {m}: {res['source']} {res['num_valid']}/{res['num_samples']} samples, "
                 f"{res['num_classes']} classes: zero-shot top-1 {res['top1']:.3f}, "
                 f"top-{res['top_k']} {res['top5']:.3f}")
    if run._index_path("test") is not None:
        data = run.fusion_data("test")
        fd, label_emb, index = data
        heads = run.fusion_heads()
        fused = run.fused_scores(heads, "test", data)
        mods = [m for i, m in enumerate(MODALITY_SLOTS) if bool(fd.present[:, i].any())]
        emb = {m: fd.tokens[:, MODALITY_SLOTS.index(m)] for m in mods}
        results["modality_free_test"] = {
            "num_items": len(index), "num_classes": int(label_emb.shape[0]),
            "combination_counts": {"+".join(k): int(v)
                                   for k, v in index.combination_counts().items()},
            "fused_top1": fused}
        results["combinations"] = evaluate_split(fd, emb, label_emb, heads, mods)
        run._say(f"[eval] modality-free test ({len(index)} items) fused top-1: " + ", ".join(
            f"{k} {v:.3f}" for k, v in fused.items()))
    else:
        run._say("[eval] modality-free test index not built: fused scores not run (build it "
                 "with `omnibind-train modality-free --config ... --split test`)")
    results["meta"] = _meta(run)
    if not run.dist.is_main:
        return {}
    out = run.ws.stage_dir("eval")
    out.mkdir(parents=True, exist_ok=True)
    report, json_path = out / "report.md", out / "results.json"
    report.write_text(render_paper_report(results), encoding="utf-8")
    json_path.write_text(json.dumps(to_jsonable({
        **results, "units": "accuracies are fractions in [0, 1]"}), indent=2,
        allow_nan=False, ensure_ascii=False) + "\n", encoding="utf-8")
    run._say(f"[eval] report: {report}")
    return {"report": report, "json": json_path}


def _meta(run: Any) -> dict[str, Any]:
    cfg = run.cfg
    from .workspace import _file_digest

    cad = run.ws.stage_dir("cad") / "final"
    af = {k: str(run.ws.stage_dir("af") / k / "final") for k in ["af", *cfg.baselines]
          if (run.ws.stage_dir("af") / k / "final").is_dir()}
    keys = [cfg.eval_source(m) for m in cfg.cad.students]
    return {"run": cfg.name, "seed": cfg.seed, "family": cfg.family,
            "data_roots": {k: str(cfg.source_root(k)) for k in dict.fromkeys(keys)},
            "cad_checkpoint": str(cad), "cad_digest": _file_digest(cad) if cad.is_dir() else None,
            "af_checkpoints": af,
            "selection": "none: final checkpoints, configured heads; choices go through "
                         "select_on_val (val split only)",
            "label_prompt": cfg.data.label_prompt, "torch": torch.__version__,
            "python": platform.python_version(), "config": cfg.to_dict()}


def _section_zero_shot(zs: Mapping[str, Mapping[str, Any]]) -> str:
    head = ("## Zero-shot per student on its data set's test split (Tables 4–6)\n\n"
            "Each student's final CAD head on its own data set's test split, classified by "
            "cosine against the label prompts of that data set's labels. Samples whose input "
            "failed preprocessing are left out (valid / all).\n\n")
    if not zs:
        return head + _NOT_RUN
    rows = [[m, f"`{r['source']}`", f"`{json.dumps(to_jsonable(r['options']))}`",
             f"`{r['train_source']}`", f"{r['num_valid']} / {r['num_samples']}",
             str(r["num_classes"]), _pct(r["top1"]), _pct(r["top5"])]
            for m, r in zs.items()]
    return head + _md_table(["student", "test source", "options", "trained on", "samples",
                             "classes", "top-1 (%)", "top-5 (%)"], rows)


def _section_fused(mf: Mapping[str, Any] | None) -> str:
    head = "## Modality-free test index: fused top-1 (Tables 2, 3)\n\n"
    if not mf:
        return head + _NOT_RUN + " (no test index built)"
    counts = ", ".join(f"{k} {v}" for k, v in list(mf["combination_counts"].items())[:8])
    rows = [[k, _pct(v)] for k, v in mf["fused_top1"].items()]
    more = ", ..." if len(mf["combination_counts"]) > 8 else ""
    return (head + f"{mf['num_items']} items, {mf['num_classes']} target labels; each item "
            f"fused from its own modalities ({counts}{more}).\n\n"
            + _md_table(["head", "top-1 (%)"], rows))


def render_paper_report(results: Mapping[str, Any]) -> str:
    """The markdown of the paper run's ``report.md``."""
    parts = ["# OmniBind evaluation report (paper config, real data sets)",
             "Seed 000 on the published data sets' test splits. Accuracies in %; "
             "`results.json` holds every number as a fraction. No choice is made on a test "
             "split here (final checkpoints, configured heads).",
             _section_meta(results.get("meta")),
             _section_zero_shot(results.get("zero_shot_test") or {}),
             _section_fused(results.get("modality_free_test"))]
    if results.get("combinations"):
        parts.append(_section_combinations(results["combinations"]).replace(
            "## Any-modality combinations (Tables 2, 3, 8, 9)",
            "## Modality-free test index: every subset of the items' modalities (Tables 2, 3, "
            "8, 9)", 1))
    return "\n\n".join(parts) + "\n"

