"""The paper config's CAD and AF stages on the real data sets: ``omnibind-train features | cad |
af --config training/configs/paper_omnibind.yaml`` (command line: :mod:`.paper_cli`; ``eval``:
:mod:`.paper_eval`, ``export``: :mod:`.paper_export`; ``all`` runs cad, af, eval, export).

:mod:`.paper` reads the config; this module computes what the existing trainers need from the
readers and runs them (:func:`~omnibind_train.trainers.cad.train_cad`,
:func:`~omnibind_train.trainers.af.train_fusion`). Design, and why:

* **One data set per student** (``data.cad``; Table 10: Touch-and-Go, LLVIP, N-Caltech101; our
  choice ESC-50 and ShapeNet-part for audio and point cloud). The simulated world has one sample
  set in which every sample holds every modality; the real data sets do not, so each student
  gets its own :class:`~omnibind_train.trainers.cad.StudentData` carrying its own samples'
  teacher embeddings and labels (the CAD trainer's per-student form).
* **The teachers' inputs.** E_l (text teacher) of a sample is its label prompt
  (``data.label_prompt``, Sec. 3.3's "a photo of a {label}", label names made readable:
  ``car_horn`` -> "car horn"), embedded once per class by the text teacher. E_v (image
  teacher) is the sample's paired image: ``image: paired`` reads the reader's own paired image
  (LLVIP's visible crop of the same box, Touch-and-Go's video frame of the same instant);
  ``image: <source key>`` reads that data set's sample with the same pair key (N-Caltech101
  ``airplanes/image_0001.bin`` -> Caltech-101 ``airplanes/image_0001.jpg``; a recording whose
  image is missing is dropped from CAD and counted); ``image: null`` = no image teacher
  (ESC-50, ShapeNet-part), where the image-centred L_cr drops out and L_in plus the text-only
  L_se remain (:class:`~omnibind_train.trainers.cad.StudentData`).
* **Shared preprocessing.** Student inputs go through ``reader.preprocessed`` with the
  workspace's preprocessing config of the modality plus the reader's overrides (exactly what
  the runtime does to a message); paired images through
  :class:`~omnibind_train.data.SamplePreprocessor` of ``image`` (or ``preprocessed`` of the
  image reader).
* **Computed once, cached.** Frozen trunks (the open_clip ViT under thermal / event / tactile /
  image, EfficientNet-Lite0 under audio) run once per sample; their features, or the
  preprocessed inputs of a trainable trunk (PointNet), are stored as safetensors under
  ``<cache>/features/paper/<source key>/`` (:func:`~omnibind_train.data.save_features`),
  keyed by the reader, its root and options, the selected sample list (paths, labels, LLVIP
  boxes), the trunk config and the preprocessing config: a changed config (another root, split,
  seed, checkpoint, image size...) gives another key and is recomputed; file *contents* are not
  hashed (1.28 M ImageNet files), so delete the folder after editing a data set in place. The
  AF stage's member samples reuse a source's full cache when it exists, else cache just the
  members. Progress bars are tqdm's. Under torchrun rank 0 computes, the others wait and read.
* **AF on the modality-free index** (Sec. 3.4): :meth:`ModalityFreeIndex.member_arrays` gives,
  per modality, each item's member (data set, sample) and the presence mask. Member samples
  are embedded by the CAD-trained students (heads on the cached trunk features), the image
  teacher, and the text teacher (the member's text); items' labels are the index's target
  labels, embedded as label prompts. :class:`~omnibind_train.trainers.af.FusionData` then holds
  ``[items, slots, D]`` tokens with the presence (and preprocessing-valid) mask; every item is
  one record with its own modality combination (``af.random_subset_prob`` may add random
  subsets). The test index, when built, is the evaluation split (its own label table).
* The image teacher is frozen and pre-trained (Sec. 3.2; ``encoders.image.head: identity``
  keeps CLIP's space): no stage 0 runs. A stage-0 checkpoint of this run is loaded if present;
  an image head with trainable parameters and no checkpoint is an error.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ..data import FeatureSet, SamplePreprocessor, feature_key, hash_json, trunk_encode_fn
from ..data.features import load_features, save_features
from ..data.text import embed_texts
from ..models.encoders import ModalityEncoder
from ..models.fusion import MODALITY_SLOTS
from ..trainers.af import FusionData, fused_accuracy, train_fusion
from ..trainers.cad import StudentData, embed_values, train_cad
from ..trainers.checkpoint import load_checkpoint, load_trainable_state
from ..trainers.common import derive_seed
from ..trainers.distributed import DistInfo, barrier, single_process
from .paper import DataRootError, PaperOmniBindConfig
from .workspace import Workspace

__all__ = ["PaperRun", "StudentSet", "paired_image", "pair_key"]


#: Format of the paper feature caches (part of every key).
PAPER_FEATURE_FORMAT = 1


def pair_key(reader: Any, i: int) -> str:
    """The key pairing a sample with a sample of another data set: the reader's own
    ``pair_key`` (N-Caltech101), else ``<folder>/<file stem>`` (Caltech-101's image)."""
    if hasattr(reader, "pair_key"):
        return str(reader.pair_key(i))
    p = Path(reader.path(i))
    return f"{p.parent.name}/{p.stem}"


def paired_image(reader: Any, i: int) -> np.ndarray:
    """A reader's own paired RGB image of sample ``i`` (LLVIP ``visible``, Touch-and-Go
    ``image``)."""
    for name in ("visible", "image"):
        fn = getattr(reader, name, None)
        if callable(fn):
            return fn(i)
    raise ValueError(f"{type(reader).__name__} has no paired image (no visible() / image()); "
                     "set data.cad.<student>.image to a data.sources key or null")


def reader_fingerprint(reader: Any, spec: Any, root: Path) -> dict[str, Any]:
    """What identifies a reader's selection: reader, root, options, and the selected samples
    (paths, labels, LLVIP's boxes) hashed."""
    n = len(reader)
    paths = [str(reader.path(i)) for i in range(n)]
    boxes = [reader.box(i) for i in range(n)] if hasattr(reader, "box") else None
    return {"reader": spec.reader, "root": str(root), "options": dict(spec.options), "n": n,
            "samples": hash_json({"paths": paths, "labels": reader.labels.tolist(),
                                  "boxes": boxes})}


class _Prepared:
    """The feature loop's preprocessor for inputs that are already preprocessed (None = a
    rejected payload, replaced by the modality's blank input and marked invalid)."""

    def __init__(self, modality: str, config: Mapping[str, Any]) -> None:
        self.pre = SamplePreprocessor(modality, config)

    def blank(self) -> Any:
        return self.pre.blank()


class StudentSet:
    """One CAD student's samples and teachers (what :meth:`PaperRun.student_data` returns).

    Attributes
    ----------
    student : the modality.
    source : ``data.sources`` key of its data set.
    data : the :class:`StudentData` (own text / image teachers, labels).
    label_names : the data set's label names; ``label_embeddings`` ``[C, D]`` their prompts.
    image : where the image teacher's input came from (``paired``, a source key, or None).
    missing_pairs : samples dropped for lack of a paired image.
    """

    def __init__(self, student: str, source: str, data: StudentData,
                 label_names: Sequence[str], label_embeddings: torch.Tensor,
                 image: str | None, missing_pairs: int) -> None:
        self.student, self.source, self.data = student, source, data
        self.label_names, self.label_embeddings = list(label_names), label_embeddings
        self.image, self.missing_pairs = image, missing_pairs


class PaperRun:
    """The paper run's state: config, encoders (through a :class:`Workspace` built from
    :meth:`PaperOmniBindConfig.pipeline_config`), readers and the feature caches.

    Parameters
    ----------
    cfg : the paper config.
    dist : ranks (rank 0 computes the caches; the others wait and read them).
    """

    def __init__(self, cfg: PaperOmniBindConfig, dist: DistInfo | None = None) -> None:
        self.cfg = cfg
        self.dist = dist or single_process()
        self.ws = Workspace(cfg.pipeline_config(), self.dist)
        self.cache_dir = self.ws.cache_dir
        self.progress = self.ws.progress
        self._readers: dict[str, Any] = {}
        self._fingerprints: dict[str, dict[str, Any]] = {}

    # -- readers ---------------------------------------------------------------------------------

    def reader(self, key: str) -> Any:
        """The reader of ``data.sources[key]`` (opened once)."""
        if key not in self._readers:
            self._readers[key] = self.cfg.open_source(key)
        return self._readers[key]

    def fingerprint(self, key: str) -> dict[str, Any]:
        if key not in self._fingerprints:
            self._fingerprints[key] = reader_fingerprint(
                self.reader(key), self.cfg.data.sources[key], self.cfg.source_root(key))
        return self._fingerprints[key]

    def preprocess_config(self, modality: str, reader: Any | None = None) -> dict[str, Any]:
        """The workspace's preprocessing of ``modality`` (+ the reader's overrides)."""
        base = self.ws.preprocess_configs[modality]
        return reader.preprocess_config(base) if reader is not None else dict(base)

    # -- the feature cache -----------------------------------------------------------------------

    def _features(self, name: str, modality: str, fingerprint: Mapping[str, Any],
                  load: Callable[[int], np.ndarray | None], n: int,
                  pre_cfg: Mapping[str, Any], desc: str) -> FeatureSet:
        """Trunk features (frozen trunk) or preprocessed inputs (trainable trunk) of ``n``
        inputs ``load(i)``, cached under ``<cache>/features/paper/<name>/``."""
        import dataclasses

        enc_cfg = self.ws.encoder_configs[modality]
        frozen = bool(enc_cfg.trunk.frozen)
        dtype = self.ws.cfg.data.feature_dtype if frozen else "float32"
        trunk = {"kind": enc_cfg.trunk.kind, **dataclasses.asdict(enc_cfg.trunk)} \
            if frozen else None
        key = feature_key(hash_json({"format": PAPER_FEATURE_FORMAT, **fingerprint}), modality,
                          trunk, pre_cfg, 1, dtype)
        path = self.cache_dir / "features" / "paper" / name / f"{modality}-{key}.safetensors"

        def compute() -> FeatureSet:
            from tqdm import tqdm

            encode = trunk_encode_fn(self.ws._trunk_encoder(modality), self.dist.device) \
                if frozen else None
            blank = _Prepared(modality, pre_cfg)
            chunks, valid = [], np.zeros(n, dtype=bool)
            batch = max(1, int(self.ws.cfg.data.trunk_batch_size))
            with tqdm(total=n, desc=desc, unit="sample", disable=not self.progress,
                      dynamic_ncols=True, mininterval=1.0) as bar:
                for start in range(0, n, batch):
                    raw = [load(i) for i in range(start, min(start + batch, n))]
                    ok = np.array([r is not None for r in raw], dtype=bool)
                    valid[start:start + len(raw)] = ok
                    filler = None if ok.all() else blank.blank()
                    inputs = [r if r is not None else filler for r in raw]
                    out = encode(inputs) if encode is not None \
                        else torch.from_numpy(np.stack(inputs))
                    chunks.append(out.to(getattr(torch, dtype)))
                    bar.update(len(raw))
            values = torch.cat(chunks)[None] if chunks else torch.zeros(1, 0, 0)
            fs = FeatureSet(values, torch.from_numpy(valid), key)
            save_features(path, fs, {"name": name, "modality": modality, "n": n})
            return fs

        if path.exists():
            return load_features(path)
        if self.dist.is_main:
            fs = compute()
        barrier(self.dist)
        return fs if self.dist.is_main else load_features(path)

    def source_features(self, key: str, indices: np.ndarray | None = None) -> FeatureSet:
        """Features of ``data.sources[key]``'s samples in its own modality (all, or
        ``indices``: from the full cache when it exists, else a cache of just those)."""
        reader = self.reader(key)
        m = reader.modality
        pre_cfg = self.preprocess_config(m, reader)
        fp = {"source": self.fingerprint(key), "role": "input"}
        full_key = self._key_if_cached(key, m, fp, pre_cfg)
        if indices is not None and full_key is None:
            idx = np.asarray(indices, dtype=np.int64)
            return self._features(key, m, {**fp, "subset": hash_json(idx.tolist())},
                                  lambda i: reader.preprocessed(int(idx[i]), pre_cfg),
                                  len(idx), pre_cfg, f"{key} ({len(idx)} members)")
        fs = self._features(key, m, fp, lambda i: reader.preprocessed(i, pre_cfg), len(reader),
                            pre_cfg, key)
        if indices is None:
            return fs
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return FeatureSet(fs.values[:, idx], fs.valid[idx], fs.key)

    def _key_if_cached(self, name: str, modality: str, fp: Mapping[str, Any],
                       pre_cfg: Mapping[str, Any]) -> str | None:
        import dataclasses

        enc_cfg = self.ws.encoder_configs[modality]
        frozen = bool(enc_cfg.trunk.frozen)
        dtype = self.ws.cfg.data.feature_dtype if frozen else "float32"
        trunk = {"kind": enc_cfg.trunk.kind, **dataclasses.asdict(enc_cfg.trunk)} \
            if frozen else None
        key = feature_key(hash_json({"format": PAPER_FEATURE_FORMAT, **fp}), modality, trunk,
                          pre_cfg, 1, dtype)
        path = self.cache_dir / "features" / "paper" / name / f"{modality}-{key}.safetensors"
        return key if path.exists() else None

    def image_features(self, student: str) -> tuple[FeatureSet, str | None, int]:
        """Image-teacher trunk features of the paired images of ``student``'s samples, where
        they come from, and how many samples have none (marked invalid)."""
        cs = self.cfg.data.cad[student]
        reader = self.reader(cs.source)
        pre_cfg = self.preprocess_config("image")
        if cs.image == "paired":
            paired_image(reader, 0) if len(reader) else None  # fail early: no paired image
            pre = SamplePreprocessor("image", pre_cfg)
            fp = {"source": self.fingerprint(cs.source), "role": "paired-image"}
            fs = self._features(cs.source, "image", fp,
                                lambda i: pre(SimpleNamespace(image=paired_image(reader, i))),
                                len(reader), pre_cfg, f"{cs.source} paired images")
            return fs, "paired", 0
        other = self.reader(cs.image)
        if other.modality != "image":
            raise ValueError(f"data.cad.{student}.image: {cs.image!r} is {other.modality} data, "
                             "not images")
        where = {pair_key(other, j): j for j in range(len(other))}
        match = np.array([where.get(pair_key(reader, i), -1) for i in range(len(reader))],
                         dtype=np.int64)
        other_cfg = other.preprocess_config(pre_cfg)
        fp = {"source": self.fingerprint(cs.source), "role": "image-of",
              "image_source": self.fingerprint(cs.image)}
        fs = self._features(cs.source, "image", fp,
                            lambda i: None if match[i] < 0
                            else other.preprocessed(int(match[i]), other_cfg),
                            len(reader), other_cfg, f"{cs.source} images of {cs.image}")
        return fs, cs.image, int((match < 0).sum())

    # -- teachers --------------------------------------------------------------------------------

    @cached_property
    def image_teacher(self) -> ModalityEncoder:
        """The frozen image teacher (head on cached trunk features; module docstring)."""
        return self.image_teacher_encoder(pretrained=False)

    def image_teacher_encoder(self, *, pretrained: bool) -> ModalityEncoder:
        """The image teacher: its head (identity, or a stage-0 checkpoint of this run) on the
        trunk, whose weights are loaded with ``pretrained`` (needed for raw images: export)."""
        enc = self.ws.new_encoder("image", pretrained=pretrained)
        if not enc.trunk_frozen:
            raise ValueError("encoders.image: the image teacher's trunk must be frozen "
                             "(its features are cached once)")
        stage0 = self.ws.stage_dir("stage0") / "final"
        if (stage0 / "weights.safetensors").exists():
            load_trainable_state(enc, load_checkpoint(stage0).weights["image"],
                                 what="stage0:image")
        elif any(p.requires_grad for p in enc.head.parameters()):
            raise ValueError("encoders.image has a trainable head but this run has no stage-0 "
                             "checkpoint: the paper's image teacher is frozen and pre-trained "
                             "(set encoders.image.head: identity)")
        return enc.eval()

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit text-teacher embeddings ``[N, D]`` (each distinct text run once)."""
        unique = list(dict.fromkeys(texts))
        if not unique:
            return torch.zeros(0, self.ws.embed_dim)
        enc = self.ws.text_encoder
        if enc.tokenizer is None:
            raise ValueError("encoders.text has no tokenizer: set encoders.text.tokenizer (the "
                             "label prompts are embedded by the text teacher)")
        context = getattr(self.ws.encoder_configs["text"].trunk, "context_length", None)
        if context and getattr(enc.tokenizer, "max_length", 0) > int(context):
            enc.tokenizer.max_length = int(context)  # a CLIP tower's positional table
        with torch.no_grad():
            emb = embed_texts(enc, unique, self.ws.preprocess_configs["text"],
                              device=self.dist.device)
        where = {t: i for i, t in enumerate(unique)}
        return emb[torch.tensor([where[t] for t in texts], dtype=torch.long)]

    def prompts(self, label_names: Sequence[str]) -> list[str]:
        """``data.label_prompt`` of each label name (made readable: ``car_horn`` -> car horn)."""
        from omnibind_ros.core.preprocess.text import label_prompt

        from ..datasets.modality_free import readable_label

        # label_prompt: the runtime's template filling (articles agree: "an airplane")
        return [label_prompt(self.cfg.data.label_prompt, readable_label(n))
                for n in label_names]

    def label_embeddings(self, label_names: Sequence[str]) -> torch.Tensor:
        return self.embed_text(self.prompts(label_names))

    # -- CAD -------------------------------------------------------------------------------------

    def student_data(self, student: str) -> StudentSet:
        """``student``'s own samples (``data.cad``) with their teacher embeddings."""
        if student not in self.cfg.data.cad:
            raise ValueError(f"cad.students: {student} has no data.cad entry")
        cs = self.cfg.data.cad[student]
        reader = self.reader(cs.source)
        fs = self.source_features(cs.source)
        labels = torch.from_numpy(reader.labels).long()
        label_emb = self.label_embeddings(reader.label_names)
        text = label_emb[labels]
        image, valid, missing = None, torch.ones(len(reader), dtype=torch.bool), 0
        if cs.image is not None:
            ifs, _, missing = self.image_features(student)
            image = embed_values(self.image_teacher, ifs.values[0], device=self.dist.device)
            valid = ifs.valid.clone()
        data = StudentData(fs.values, fs.valid, text=text, image=image, teacher_valid=valid,
                           labels=labels)
        return StudentSet(student, cs.source, data, reader.label_names, label_emb, cs.image,
                          missing)

    def record(self, modalities: Sequence[str], extra: Mapping[str, Any] | None = None
               ) -> dict[str, Any]:
        """Configs stored in the checkpoints (model, preprocess, data sources, run)."""
        return {"model": {m: self.ws.encoder_configs[m].to_dict() for m in modalities},
                "preprocess": {m: self.ws.preprocess_configs[m] for m in modalities},
                "data": {"family": self.cfg.family, **(extra or {})},
                "pipeline": {"name": self.cfg.name, "seed": self.cfg.seed,
                             "family": self.cfg.family}}

    def features(self) -> dict[str, int]:
        """Compute (or find) every cache CAD and AF read; returns samples per cache."""
        out: dict[str, int] = {}
        for m in self.cfg.cad.students:
            s = self.student_data(m)
            out[f"cad/{m}:{s.source}"] = int(s.data.valid.numel())
            self._say(f"[features] {m}: {s.source} {s.data.valid.numel()} samples "
                      f"({int((~s.data.valid).sum())} unpreprocessable), image teacher "
                      f"{s.image or 'none'}" + (f", {s.missing_pairs} without a paired image"
                                                if s.missing_pairs else ""))
        for split in ("train", "test"):
            if self._index_path(split) is None:
                self._say(f"[features] modality-free {split} index not built: skipped")
                continue
            index = self.index(split)
            arrays = index.member_arrays()
            for m in MODALITY_SLOTS:
                if m == "text" or m not in arrays:
                    continue
                for key, idx in self._members(arrays[m]).items():
                    self.source_features(key, np.unique(idx))
                    out[f"af-{split}/{m}:{key}"] = int(np.unique(idx).size)
            self._say(f"[features] modality-free {split}: {len(index)} items")
        return out

    def run_cad(self, *, resume: str | None = None) -> dict[str, float]:
        """Stage I on each student's own data set; returns the in-sample zero-shot top-1 of
        each student against its data set's label prompts (a smoke check, not a test score)."""
        cfg = self.cfg.cad
        sets = {m: self.student_data(m) for m in cfg.students}
        for m, s in sets.items():
            terms = [t for t in cfg.terms if s.image is not None or t != "cr"]
            usable = s.data.valid & s.data.teacher_valid if s.data.teacher_valid is not None \
                else s.data.valid
            self._say(f"[cad] {m}: {s.source}, {int(usable.sum())} samples, image "
                      f"teacher {s.image or 'none'} -> terms {'+'.join(terms)}")
        encoders = {m: self.ws.training_encoder(m) for m in cfg.students}
        result = train_cad(encoders, {m: s.data for m, s in sets.items()}, None, None, None,
                           None, cfg, seed=derive_seed(self.cfg.seed, "cad") % 2 ** 31,
                           dist=self.dist, run_dir=self.ws.stage_dir("cad"),
                           record=self.record([*cfg.students, "image", "text"], {
                               "cad": {m: {"source": s.source,
                                           "fingerprint": self.fingerprint(s.source),
                                           "image": s.image} for m, s in sets.items()}}),
                           resume=resume, progress=self.progress)
        metrics = {}
        for m, s in sets.items():
            emb = embed_values(encoders[m], s.data.values[0], device=self.dist.device)
            pred = (emb @ s.label_embeddings.T).argmax(1)
            ok = (pred == s.data.labels)[s.data.valid]
            metrics[m] = float(ok.float().mean()) if ok.numel() else float("nan")
        self._say("[cad] train (in-sample) zero-shot top-1: " + ", ".join(
            f"{m} {v:.3f}" for m, v in metrics.items()) + f" ({result.steps} steps)")
        return metrics

    # -- AF --------------------------------------------------------------------------------------

    def _index_path(self, split: str) -> Path | None:
        mf = self.cfg.data.modality_free
        if mf is None:
            return None
        path = Path(self.cfg.expand(mf.split(split).index,
                                    f"data.modality_free.{split}.index")).expanduser()
        return path if path.is_file() else None

    def index(self, split: str) -> Any:
        """The modality-free index of ``split``, checked against its readers."""
        from ..datasets.modality_free import read_modality_free_index

        mf = self.cfg.data.modality_free
        if mf is None:
            raise ValueError("data.modality_free is not configured")
        path = self._index_path(split)
        if path is None:
            raise DataRootError(f"data.modality_free.{split}.index: not built (run "
                                f"`omnibind-train modality-free --config ... --split {split}`)")
        sources = {k: self.reader(k) for k in mf.split(split).sources}
        return read_modality_free_index(path, sources)

    @staticmethod
    def _members(slot: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{data set key: member sample indices}`` of one modality's present members."""
        present = slot["present"]
        out: dict[str, np.ndarray] = {}
        for key in sorted({str(k) for k in slot["dataset"][present]}):
            out[key] = slot["index"][present & (slot["dataset"] == key)]
        return out

    def _student_encoder(self, m: str) -> ModalityEncoder:
        if m == "image":
            return self.image_teacher
        if m not in self.cfg.cad.students:
            raise ValueError(f"the modality-free index has {m} members but {m} is not a CAD "
                             "student (cad.students)")
        final = self.ws.stage_dir("cad") / "final"
        if not (final / "weights.safetensors").exists():
            raise FileNotFoundError(f"no CAD checkpoint at {final}: run `omnibind-train cad "
                                    "--config ...` first")
        return self.ws.load_encoder(m, pretrained=False)

    def fusion_data(self, split: str) -> tuple[FusionData, torch.Tensor, Any]:
        """The AF inputs of the modality-free ``split``: frozen member embeddings in slot
        order with the presence mask, the items' labels, the label table."""
        index = self.index(split)
        arrays = index.member_arrays()
        n, d = len(index), self.ws.embed_dim
        emb: dict[str, torch.Tensor] = {}
        present: dict[str, torch.Tensor] = {}
        for m in MODALITY_SLOTS:
            slot = arrays.get(m)
            if slot is None or not slot["present"].any():
                continue
            tokens = torch.zeros(n, d)
            ok = torch.from_numpy(slot["present"].copy())
            if m == "text":
                rows = np.flatnonzero(slot["present"])
                tokens[torch.from_numpy(rows)] = self.embed_text(
                    [str(t) for t in slot["text"][rows]])
            else:
                enc = self._student_encoder(m)
                for key, idx in self._members(slot).items():
                    rows = np.flatnonzero(slot["present"] & (slot["dataset"] == key))
                    uniq, inverse = np.unique(idx, return_inverse=True)
                    fs = self.source_features(key, uniq)
                    e = embed_values(enc, fs.values[0], device=self.dist.device)
                    r = torch.from_numpy(rows)
                    tokens[r] = e[torch.from_numpy(inverse)]
                    ok[r] &= fs.valid[torch.from_numpy(inverse)]
            emb[m], present[m] = tokens, ok
        labels = torch.from_numpy(arrays["label"]["index"]).long()
        data = FusionData.build(emb, present, labels, [])
        return data, self.label_embeddings(index.label_names), index

    def fusion_heads(self, kinds: Sequence[str] | None = None) -> dict[str, torch.nn.Module]:
        """The trained fusion heads (``af`` and the baselines; ``mean`` has no weights), each
        from ``<run>/af/<kind>/final``; a trained kind without a checkpoint is skipped."""
        heads: dict[str, torch.nn.Module] = {}
        for kind in list(kinds or ["af", *self.cfg.baselines]):
            head = self.ws.fusion_config(kind).fusion.build()
            if any(p.requires_grad for p in head.parameters()):
                final = self.ws.stage_dir("af") / kind / "final"
                if not (final / "weights.safetensors").exists():
                    continue
                load_trainable_state(head, load_checkpoint(final).weights["fusion"],
                                     what=f"af:{kind}")
            heads[kind] = head.to(self.dist.device).eval()
        return heads

    def fused_scores(self, heads: Mapping[str, torch.nn.Module], split: str = "test",
                     data: tuple[FusionData, torch.Tensor, Any] | None = None
                     ) -> dict[str, float]:
        """Top-1 of each head over the modality-free ``split``'s items, each item fused from
        its own modalities (what :meth:`run_af` reports after training)."""
        fd, labels, _ = data or self.fusion_data(split)
        return {kind: fused_accuracy(head, fd, labels) for kind, head in heads.items()}

    def run_af(self, *, resume: str | None = None, kinds: Sequence[str] | None = None
               ) -> dict[str, float]:
        """Stage II on the modality-free train index; fused top-1 on the test index (the
        train index when no test index is built)."""
        train, train_labels, index = self.fusion_data("train")
        has_test = self._index_path("test") is not None
        if has_test:
            test, test_labels, _ = self.fusion_data("test")
        else:
            test, test_labels = train, train_labels
        where = "test" if has_test else "train (no test index)"
        counts = ", ".join(f"{'+'.join(k)} {v}" for k, v in
                           list(index.combination_counts().items())[:4])
        self._say(f"[af] modality-free train: {len(index)} items ({counts}, ...)")
        kinds = list(kinds or ["af", *self.cfg.baselines])
        metrics: dict[str, float] = {}
        for kind in kinds:
            cfg = self.ws.fusion_config(kind)
            torch.manual_seed(derive_seed(self.cfg.seed, "init-fusion", kind))
            head = cfg.fusion.build().to(self.dist.device)
            result = train_fusion(
                head, train, train_labels, cfg,
                seed=derive_seed(self.cfg.seed, "af", kind) % 2 ** 31, dist=self.dist,
                run_dir=self.ws.stage_dir("af") / kind,
                record=self.record(list(MODALITY_SLOTS)), resume=resume,
                eval_fn=lambda step, h=head: {"fused_top1": fused_accuracy(h, test,
                                                                           test_labels)},
                progress=self.progress, name=f"af-{kind}")
            metrics[kind] = result.metrics["fused_top1"] if result \
                else fused_accuracy(head, test, test_labels)
        self._say(f"[af] {where} fused top-1 (modality-free items): " + ", ".join(
            f"{k} {v:.3f}" for k, v in metrics.items()))
        return metrics

    def _say(self, message: str) -> None:
        if self.dist.is_main:
            print(message, flush=True)

