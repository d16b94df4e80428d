"""``omnibind-train export --config training/configs/paper_omnibind.yaml``: the paper run as a
model bundle the runtime loads (:func:`omnibind_train.export.export_bundle`, as
:mod:`.export_stage` does for the simulated run).

What goes in:

* **encoders**: the image teacher (the open_clip vision tower with its identity head, or this
  run's stage-0 head if one exists) and every CAD student (frozen trunk + trained head, or the
  trained PointNet), each with its trunk weights loaded;
* **text**: the text teacher with the CLIP BPE ``tokenizer.json`` (:mod:`..byo.clip_bpe`):
  ``encoders.text.tokenizer``'s directory when it holds one, else written from the
  ``bpe_simple_vocab_16e6.txt.gz`` next to the checkpoint; wrapped in
  :class:`~omnibind_train.byo.encoders.ClipTokenizer` (what ``omnibind-train import`` ships for
  open_clip checkpoints), so the runtime's ``tokenizers`` run gives the ids training used. The
  label embeddings the bundle caches are re-embedded through it and checked against the ones
  training used (:class:`ValueError` when they differ);
* **fusion**: the AF head (``<run>/af/af/final``) and its logit scale;
* **labels**: ``export.labels``, else the modality-free index's target labels (train index,
  else test), readable (``car_horn`` -> "car horn"), with ``data.label_prompt`` as the one
  prompt template;
* **preprocessing**: each student's config as its CAD reader applied it
  (``reader.preprocess_config`` of the workspace's config), the image teacher's, and the text
  config (``tokenizer: clip_bpe``, the tower's context length); every reader's own config is
  kept in the provenance;
* **provenance**: the config, the data roots, the checkpoints (teacher checkpoint path and
  SHA-256, CAD / AF checkpoint digests), the stages' metrics and the eval results when present;
* **sample inputs**: real test samples of each student's test split and real paired images (the
  export traces them and checks ONNX Runtime against torch on them).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ..data import SamplePreprocessor
from ..models.fusion import MODALITY_SLOTS
from .paper import PaperOmniBindConfig

__all__ = ["bundle_dir", "clip_tokenizer", "export_labels", "export_problems",
           "run_paper_export", "sample_inputs", "text_config"]

#: Largest difference allowed between the label embeddings training used and the bundle's.
LABEL_ATOL = 1e-4


def export_problems(cfg: PaperOmniBindConfig) -> list[str]:
    """What would stop ``export`` for lack of data: the students' test sources (the real
    samples the export traces); checkpoints are checked when they are read."""
    from .paper_eval import eval_problems

    return eval_problems(cfg)


def bundle_dir(run: Any, out: str | Path | None = None) -> Path:
    """``out``, else ``export.out`` (placeholders expanded), else
    ``<cache>/bundles/<export.bundle>``."""
    if out is not None:
        return Path(out).expanduser()
    spec = run.cfg.export
    if spec.out:
        return Path(run.cfg.expand(spec.out, "export.out")).expanduser()
    return run.cache_dir / "bundles" / spec.bundle


def clip_tokenizer(run: Any) -> Any:
    """The text teacher's CLIP BPE tokenizer as :class:`~..byo.encoders.ClipTokenizer`."""
    from ..byo.clip_bpe import find_bpe_vocab, write_clip_tokenizer
    from ..byo.encoders import ClipTokenizer

    trunk = run.ws.encoder_configs["text"].trunk
    if trunk.kind != "open_clip_text":
        raise ValueError(f"encoders.text is a {trunk.kind} tower: the paper export ships an "
                         "open_clip text teacher with its CLIP BPE tokenizer")
    context = int(trunk.context_length)
    directory = Path(trunk.tokenizer).expanduser() if trunk.tokenizer else None
    if directory is not None and (directory / "tokenizer.json").is_file():
        return ClipTokenizer(directory, max_length=context)
    near = [Path(trunk.checkpoint)] if trunk.checkpoint else []
    vocab = find_bpe_vocab(None, near=near)
    files = write_clip_tokenizer(vocab, run.ws.stage_dir("export") / "tokenizer",
                                 vocab_size=int(trunk.vocab_size), context_length=context)
    return ClipTokenizer(files.directory, max_length=files.context_length)


def text_config(run: Any) -> dict[str, Any]:
    """The bundle's text preprocessing: the run's normalisation, CLIP's tokenizer and context
    length, ``data.label_prompt`` as the one template."""
    trunk = run.ws.encoder_configs["text"].trunk
    return {**run.ws.preprocess_configs["text"], "tokenizer": "clip_bpe",
            "max_length": int(trunk.context_length),
            "prompt_templates": [run.cfg.data.label_prompt]}


def export_labels(run: Any) -> tuple[list[str], str]:
    """The bundle's label names (readable) and where they came from."""
    from ..datasets.modality_free import readable_label

    if run.cfg.export.labels:
        return [str(n) for n in run.cfg.export.labels], "export.labels"
    for split in ("train", "test"):
        if run._index_path(split) is not None:
            names = [readable_label(n) for n in run.index(split).label_names]
            return list(dict.fromkeys(names)), f"modality-free {split} index target labels"
    raise FileNotFoundError("export: no label set: set export.labels or build the modality-free "
                            "index (`omnibind-train modality-free --config ... --split train`)")


def _first_valid(load: Any, n: int, k: int) -> list[np.ndarray]:
    out = []
    for i in range(n):
        x = load(i)
        if x is not None:
            out.append(np.asarray(x))
        if len(out) >= k:
            break
    return out


def sample_inputs(run: Any, configs: Mapping[str, Mapping[str, Any]], k: int
                  ) -> dict[str, torch.Tensor]:
    """``k`` real preprocessed samples per exported modality: each student's test split, the
    paired images of the students that have them (:class:`ValueError` when fewer exist)."""
    from .paper_run import paired_image

    cfg = run.cfg
    out: dict[str, list[np.ndarray]] = {}
    for m in cfg.cad.students:
        reader = run.reader(cfg.eval_source(m))
        out[m] = _first_valid(lambda i, r=reader, c=configs[m]: r.preprocessed(i, c),
                              len(reader), k)
    images: list[np.ndarray] = []
    pre = SamplePreprocessor("image", configs["image"])
    for m in cfg.cad.students:
        cs = cfg.data.cad[m]
        if cs.image is None or len(images) >= k:
            continue
        if cs.image == "paired":
            reader = run.reader(cfg.eval_source(m))
            images += _first_valid(
                lambda i, r=reader: pre(SimpleNamespace(image=paired_image(r, i))),
                len(reader), k - len(images))
        else:
            reader = run.reader(cs.image)
            images += _first_valid(lambda i, r=reader: r.preprocessed(i, configs["image"]),
                                   len(reader), k - len(images))
    out["image"] = images
    short = {m: len(v) for m, v in out.items() if len(v) < k}
    if short:
        raise ValueError(f"export: fewer than {k} preprocessable samples for {short} (the "
                         "export traces and checks real samples)")
    return {m: torch.from_numpy(np.stack(v[:k])) for m, v in out.items()}


def _stage_metrics(run: Any) -> dict[str, Any]:
    out = {}
    for name, path in [("cad", run.ws.stage_dir("cad") / "final"),
                       *((f"af/{k}", run.ws.stage_dir("af") / k / "final")
                         for k in ["af", *run.cfg.baselines])]:
        if (path / "config.json").exists():
            out[name] = json.loads((path / "config.json").read_text()).get("metrics", {})
    return out


def run_paper_export(run: Any, out: str | Path | None = None) -> Path | None:
    """Export the paper run's bundle (rank 0; module docstring) -> its directory."""
    if not run.dist.is_main:
        return None
    from ..byo.importer import sha256_file
    from ..data.text import embed_texts
    from ..export import export_bundle
    from .workspace import _file_digest

    cfg, ws = run.cfg, run.ws
    students = list(cfg.cad.students)
    cad_final = ws.stage_dir("cad") / "final"
    af_final = ws.stage_dir("af") / "af" / "final"
    for what, path, cmd in (("CAD", cad_final, "cad"), ("AF", af_final, "af")):
        if not (path / "weights.safetensors").exists():
            raise FileNotFoundError(f"export: no {what} checkpoint at {path}: run "
                                    f"`omnibind-train {cmd} --config ...` first")
    names, labels_from = export_labels(run)
    trained = run.label_embeddings(names)  # the training tokenizer's embeddings
    text = ws.text_encoder.cpu().eval()
    train_tokenizer = text.tokenizer
    text.tokenizer = clip_tokenizer(run)
    text_cfg = text_config(run)
    try:  # as the runtime re-embeds labels (embed_labels: label_prompt, mean, L2)
        from omnibind_ros.core.preprocess.text import label_prompt

        templates = list(text_cfg["prompt_templates"])
        emb = embed_texts(text, [label_prompt(t, n) for n in names for t in templates],
                          text_cfg)
        label_emb = torch.nn.functional.normalize(
            emb.view(len(names), len(templates), -1).mean(1), dim=-1)
    except Exception:
        text.tokenizer = train_tokenizer
        raise
    diff = float((label_emb - trained.cpu()).abs().max()) if len(names) else 0.0
    if diff > LABEL_ATOL:
        text.tokenizer = train_tokenizer
        raise ValueError(f"export: the bundle's CLIP BPE tokenizer embeds the labels {diff:.2e} "
                         f"away from training's tokenizer (encoders.text.tokenizer): they "
                         "tokenise differently")
    pre = {m: run.preprocess_config(m, run.reader(cfg.data.cad[m].source)) for m in students}
    pre["image"] = run.preprocess_config("image")
    encoders = {"image": run.image_teacher_encoder(pretrained=True).cpu().eval(),
                **{m: ws.load_encoder(m).cpu().eval() for m in students}}
    heads = run.fusion_heads(["af"])
    fusion = heads["af"].cpu().eval()
    samples = sample_inputs(run, pre, max(2, int(cfg.export.sample_batch)))
    teacher = {}
    for m in ("image", "text"):
        ckpt = getattr(ws.encoder_configs[m].trunk, "checkpoint", None)
        if ckpt and Path(ckpt).is_file():
            teacher[m] = {"path": str(ckpt), "sha256": sha256_file(ckpt)}
    used = list(dict.fromkeys([*(cfg.data.cad[m].source for m in students),
                               *(cfg.eval_source(m) for m in students),
                               *(cfg.data.cad[m].image for m in students
                                 if cfg.data.cad[m].image not in (None, "paired"))]))
    eval_json = ws.stage_dir("eval") / "results.json"
    provenance = {
        "family": "cad_af", "source": "paper", "pipeline": cfg.name, "seed": cfg.seed,
        "config_family": cfg.family,
        "data_roots": {k: str(cfg.source_root(k)) for k in used},
        "reader_preprocess": {k: run.preprocess_config(run.reader(k).modality, run.reader(k))
                              for k in used},
        "checkpoints": {"teachers": teacher,
                        "cad": {"path": str(cad_final), "digest": _file_digest(cad_final)},
                        "af": {"path": str(af_final), "digest": _file_digest(af_final)}},
        "labels": {"count": len(names), "source": labels_from,
                   "prompt": cfg.data.label_prompt,
                   "max_abs_diff_vs_training": diff},
        "metrics": _stage_metrics(run),
        "eval": json.loads(eval_json.read_text()).get("zero_shot_test")
        if eval_json.exists() else None,
        "torch": torch.__version__, "training_config": cfg.to_dict()}
    path = export_bundle(
        bundle_dir(run, out), encoders=encoders, fusion=fusion,
        fusion_config=ws.fusion_config("af").fusion.to_dict(), text_encoder=text,
        label_names=names, prompt_templates=list(text_cfg["prompt_templates"]),
        label_embeddings=label_emb, logit_scale=ws.fusion_logit_scale("af"),
        preprocess_configs={**pre, "text": text_cfg}, provenance=provenance,
        sample_inputs=samples, exporter=cfg.export.exporter,
        include_torch_weights=cfg.export.include_torch_weights,
        threads=torch.get_num_threads())
    run._say(f"[export] bundle: {path} ({', '.join(m for m in MODALITY_SLOTS if m in encoders)}"
             f" + text, AF head, {len(names)} labels from the {labels_from})")
    return Path(path)
