"""The OmniBind pipeline on the simulated world: data -> stage 0 -> CAD -> AF -> eval -> export.

One YAML (:class:`PipelineConfig`) drives everything. Outputs go to the cache directory::

    <cache>/datasets/<data set>/          the simulated data set (omnibind_ros.sim)
    <cache>/features/<data set>/...       cached trunk features / preprocessed point sets
    <cache>/runs/<name>/stage0/final/     image head + temperature (checkpoint directories,
    <cache>/runs/<name>/cad/final/        see trainers.checkpoint), with checkpoints/ and tb/
    <cache>/runs/<name>/af/<head>/final/  one per fusion head (af, linear, concat)
    <cache>/runs/<name>/embeddings/       frozen per-modality embeddings of the student splits
    <cache>/runs/<name>/eval/             report.md, results.json, plots
    <cache>/bundles/<bundle>/             the exported model bundle the runtime reads

Each stage reads the previous stages' ``final`` checkpoints, so stages can run as separate
commands (or under ``torchrun``); expensive inputs (data, features) are cached by content.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from omnibind_ros.core.modalities import STUDENTS
from omnibind_ros.core.paths import default_cache_dir
from omnibind_ros.sim.dataset import SimDataset

from .data import (
    DataConfig,
    FeatureJob,
    FeatureSet,
    SamplePreprocessor,
    cached_features,
    dataset_fingerprint,
    ensure_dataset,
    feature_key,
    feature_path,
    hash_json,
    label_embeddings,
    onnx_trunk_encode_fn,
    resolve_path,
    trunk_encode_fn,
)
from .models.encoders import ModalityEncoder
from .models.fusion import MODALITY_SLOTS
from .models.registry import DEFAULT_ENCODERS, EncoderConfig, build_encoder, get_encoder_config
from .trainers.af import (
    AFConfig,
    FusionData,
    checkpoint_logit_scale,
    fused_accuracy,
    train_fusion,
)
from .trainers.cad import (
    ABLATION_VARIANTS,
    CADConfig,
    StudentData,
    crossfit_embeddings,
    embed_values,
    train_cad,
)
from .trainers.checkpoint import load_checkpoint, load_trainable_state
from .trainers.common import ConfigBase, derive_seed
from .trainers.distributed import DistInfo, barrier, single_process
from .trainers.stage0 import Stage0Config, train_stage0

STAGES = ("data", "stage0", "cad", "af", "eval", "export")
#: ``trunk_runtime: auto`` uses ONNX Runtime for splits at least this large.
ORT_MIN_SAMPLES = 500


# --- config -----------------------------------------------------------------------------------


@dataclass
class AblationConfig(ConfigBase):
    """CAD loss ablation (Table 7): every variant trains every student from scratch.

    Attributes
    ----------
    enabled : run it in ``eval``.
    train_fraction : class-balanced fraction of the student training samples (scarce data).
    epochs : epochs per variant (None: the CAD config's).
    variants : Table 7 rows to run (keys of ``ABLATION_VARIANTS``).
    """

    enabled: bool = True
    train_fraction: float = 0.25
    epochs: int | None = None
    variants: list[str] = field(default_factory=lambda: list(ABLATION_VARIANTS))


@dataclass
class RobustnessConfig(ConfigBase):
    """AF with vs without negative labels under a noisy modality (Tables 12-13).

    Attributes
    ----------
    enabled : run it in ``eval``.
    noise_stds : relative noise norms of the sweep (0 = clean).
    noisy_modalities : modalities made noisy one at a time (None: every fused modality).
    samples_per_class : evaluate on this many samples per class of the split (0: all); the
        sweep runs the head on every subset containing the noisy modality, so it is the
        costliest evaluation.
    af : overrides of the AF config for both variants (e.g. ``{"noise_prob": 0.3}``).
    min_size : smallest subset size evaluated.
    """

    enabled: bool = True
    noise_stds: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0])
    noisy_modalities: list[str] | None = None
    samples_per_class: int = 0
    af: dict[str, Any] = field(default_factory=dict)
    min_size: int = 2


@dataclass
class EvalConfig(ConfigBase):
    """What ``eval`` computes.

    Attributes
    ----------
    split : student split evaluated (``"test"``).
    ablation, robustness : the orchestrated ablations.
    """

    split: str = "test"
    ablation: AblationConfig = field(default_factory=AblationConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)


@dataclass
class ExportConfig(ConfigBase):
    """Where and how the bundle is exported.

    Attributes
    ----------
    bundle : bundle name: ``<cache>/bundles/<bundle>``.
    out : explicit output directory (overrides ``bundle``).
    sample_batch : real preprocessed test samples per modality handed over for parity checks.
    exporter : ONNX exporter passed to ``export_bundle`` (``"auto"``, ``"dynamo"``,
        ``"torchscript"``).
    """

    bundle: str = "default"
    out: str | None = None
    sample_batch: int = 2
    exporter: str = "auto"


@dataclass
class PipelineConfig(ConfigBase):
    """Everything ``omnibind-train`` needs (``training/configs/*.yaml``).

    Attributes
    ----------
    name : run name: ``<cache>/runs/<name>``.
    seed : root seed of every random choice (initialisation, batches, subsets, noise).
    cache_dir : cache directory (None: ``OMNIBIND_CACHE_DIR`` / XDG default).
    device : ``"auto"``, ``"cpu"`` or ``"cuda"``.
    threads : torch CPU threads (None: torch's default).
    progress : tqdm progress bars.
    data : data set, preprocessing and feature cache.
    encoders : modality -> registry name or ``EncoderConfig`` dict (default:
        ``DEFAULT_ENCODERS``).
    stage0, cad, af : the three training stages.
    baselines : fusion baselines trained/evaluated next to AF (``mean``, ``linear``, ``concat``).
    evaluation : evaluation and ablations.
    export : bundle export.
    """

    name: str = "sim_default"
    seed: int = 0
    cache_dir: str | None = None
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    encoders: dict[str, Any] = field(default_factory=dict)
    stage0: Stage0Config = field(default_factory=Stage0Config)
    cad: CADConfig = field(default_factory=CADConfig)
    af: AFConfig = field(default_factory=AFConfig)
    baselines: list[str] = field(default_factory=lambda: ["mean", "linear", "concat"])
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str],
                  overrides: Sequence[str] = ()) -> PipelineConfig:
        """Load a YAML file and apply ``key.sub=value`` overrides (values parsed as YAML)."""
        import yaml

        raw = yaml.safe_load(resolve_path(path).read_text()) or {}
        return cls.from_dict(apply_overrides(raw, overrides))


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` + ``["a.b=2", "c=[1, 2]"]`` -> a new dict (values parsed as YAML)."""
    import yaml

    out = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return out


# --- workspace: shared, cached inputs of the stages -------------------------------------------


class Workspace:
    """Resolved config, data set, encoders, cached features and embeddings for the stages.

    Parameters
    ----------
    cfg : the pipeline config.
    dist : ranks (rank 0 generates data and caches features; the others wait and read).
    """

    def __init__(self, cfg: PipelineConfig, dist: DistInfo | None = None) -> None:
        self.cfg = cfg
        self.dist = dist or single_process()
        self.cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir \
            else default_cache_dir()
        self.run_dir = self.cache_dir / "runs" / cfg.name
        self.progress = cfg.progress and self.dist.is_main
        self.timings: dict[str, float] = {}
        self._features: dict[tuple[str, str, str], FeatureSet] = {}
        self._fusion: dict[str, tuple[FusionData, dict[str, torch.Tensor]]] = {}
        self._trunk_encoders: dict[str, ModalityEncoder] = {}
        self._data_ready = False

    # -- data ----------------------------------------------------------------------------------

    def ensure_data(self, *, overwrite: bool = False) -> Path:
        """Generate the data set if absent (rank 0), then return its root on every rank;
        ``overwrite`` regenerates a data set of another config (or simulator version)."""
        if not self._data_ready:
            if self.dist.is_main:
                ensure_dataset(self.cfg.data, self.cache_dir, progress=self.progress,
                               overwrite=overwrite)
            barrier(self.dist)
            self._data_ready = True
        return self.dataset_root

    @cached_property
    def dataset_root(self) -> Path:
        root = self.cfg.data.dataset_root(self.cache_dir)
        if not (root / "manifest.json").exists():
            raise FileNotFoundError(f"no data set at {root}; run `omnibind-train data` first")
        return root

    @cached_property
    def dataset_fp(self) -> str:
        return dataset_fingerprint(self.dataset_root)

    def dataset(self, kind: str, split: str) -> SimDataset:
        return SimDataset(self.dataset_root, split, kind)

    def labels(self, kind: str, split: str) -> torch.Tensor:
        return torch.from_numpy(self.dataset(kind, split).labels).long()

    @cached_property
    def class_names(self) -> list[str]:
        return list(self.dataset("student", "test").class_names)

    # -- configs -------------------------------------------------------------------------------

    @cached_property
    def encoder_configs(self) -> dict[str, EncoderConfig]:
        """Every modality's encoder config (registry defaults, then the YAML's choices)."""
        out = {m: get_encoder_config(name) for m, name in DEFAULT_ENCODERS.items()}
        for m, spec in self.cfg.encoders.items():
            out[m] = get_encoder_config(spec) if isinstance(spec, str) \
                else EncoderConfig.from_dict({"modality": m, **spec})
        return out

    @cached_property
    def preprocess_configs(self) -> dict[str, dict[str, Any]]:
        from .data import resolve_preprocess_configs

        norms = {m: (c.trunk.mean, c.trunk.std) for m, c in self.encoder_configs.items()
                 if hasattr(c.trunk, "mean")}
        return resolve_preprocess_configs(norms, self.cfg.data.preprocess)

    @property
    def embed_dim(self) -> int:
        return int(self.encoder_configs["text"].embed_dim)

    def record(self, modalities: Sequence[str]) -> dict[str, Any]:
        """Configs stored in checkpoints (model, preprocess, data, pipeline)."""
        return {"model": {m: self.encoder_configs[m].to_dict() for m in modalities},
                "preprocess": {m: self.preprocess_configs[m] for m in modalities},
                "data": {"root": str(self.dataset_root), "fingerprint": self.dataset_fp},
                "pipeline": {"name": self.cfg.name, "seed": self.cfg.seed}}

    # -- encoders ------------------------------------------------------------------------------

    def new_encoder(self, modality: str, *, pretrained: bool = True) -> ModalityEncoder:
        """A fresh encoder, head initialised from (seed, modality).

        ``pretrained=False`` skips loading the frozen trunk's weights: enough wherever only the
        head runs on cached trunk features (training, embedding cached features), never for
        raw inputs or export. Trainable trunks are built the same either way.
        """
        torch.manual_seed(derive_seed(self.cfg.seed, "init", modality))
        cfg = self.encoder_configs[modality]
        enc = build_encoder(cfg, load_weights=pretrained or not cfg.trunk.frozen)
        return enc.to(self.dist.device)

    def training_encoder(self, modality: str) -> ModalityEncoder:
        """:meth:`new_encoder` for training on cached features (no pretrained trunk load)."""
        return self.new_encoder(modality, pretrained=False)

    @cached_property
    def text_encoder(self) -> ModalityEncoder:
        enc = self.new_encoder("text").eval()
        if enc.tokenizer is not None and hasattr(enc.tokenizer, "max_length"):
            enc.tokenizer.max_length = int(self.preprocess_configs["text"]["max_length"])
        return enc

    def _trunk_encoder(self, modality: str) -> ModalityEncoder:
        if modality == "text":
            return self.text_encoder
        if modality not in self._trunk_encoders:
            self._trunk_encoders[modality] = self.new_encoder(modality).eval()
        return self._trunk_encoders[modality]

    # -- features ------------------------------------------------------------------------------

    def _job(self, kind: str, split: str, modality: str) -> FeatureJob:
        enc_cfg = self.encoder_configs[modality]
        frozen = bool(enc_cfg.trunk.frozen)
        views = max(1, int(self.cfg.data.augment_views.get(modality, 1))) \
            if frozen and split == "train" else 1
        dtype = self.cfg.data.feature_dtype if frozen else "float32"
        trunk = {"kind": enc_cfg.trunk.kind, **dataclasses.asdict(enc_cfg.trunk)} \
            if frozen else None
        key = feature_key(self.dataset_fp, modality, trunk, self.preprocess_configs[modality],
                          views, dtype)
        return FeatureJob(
            modality=modality,
            preprocess=SamplePreprocessor(modality, self.preprocess_configs[modality]),
            encode=self._lazy_encode(modality, trunk, len(self.dataset(kind, split)))
            if frozen else None,
            views=views, dtype=getattr(torch, dtype), key=key, seed=self.cfg.seed,
            path=feature_path(self.cache_dir, self.dataset_root.name, kind, split, modality,
                              key), dedupe=modality == "text" and views == 1)

    def _onnx_path(self, trunk: Mapping[str, Any]) -> Path:
        return self.cache_dir / "features" / "_trunks" / f"{hash_json(trunk)}.onnx"

    def _use_onnxruntime(self, modality: str, trunk: Mapping[str, Any],
                         num_samples: int) -> bool:
        """ONNX Runtime for image-like trunks on the CPU; ``auto`` only where the one-off export
        (~10 s) pays for itself (>= ``ORT_MIN_SAMPLES`` samples, or already exported)."""
        runtime = self.cfg.data.trunk_runtime
        if modality == "text" or runtime == "torch" or self.dist.device.type != "cpu":
            return False
        if runtime == "onnxruntime":
            return True
        import importlib.util

        worth = num_samples >= ORT_MIN_SAMPLES or self._onnx_path(trunk).exists()
        return worth and importlib.util.find_spec("onnxruntime") is not None

    def _lazy_encode(self, modality: str, trunk: Mapping[str, Any], num_samples: int
                     ) -> Callable[[list[Any]], torch.Tensor]:
        """Trunk features, building the encoder (and ONNX session) only on a cache miss."""
        state: dict[str, Callable[[list[Any]], torch.Tensor]] = {}

        def encode(inputs: list[Any]) -> torch.Tensor:
            if "fn" not in state:
                enc = self._trunk_encoder(modality)
                fn = None
                if self._use_onnxruntime(modality, trunk, num_samples):
                    import numpy as np

                    fn = onnx_trunk_encode_fn(enc, self._onnx_path(trunk), np.stack(inputs[:2]))
                state["fn"] = fn or trunk_encode_fn(enc, self.dist.device)
            return state["fn"](inputs)

        return encode

    def features(self, kind: str, split: str, modalities: Sequence[str]
                 ) -> dict[str, FeatureSet]:
        """Cached features of ``modalities`` on a split (computed once, by rank 0)."""
        want = [m for m in modalities if (kind, split, m) not in self._features]
        if want:
            ds = self.dataset(kind, split)

            def load() -> dict[str, FeatureSet]:
                jobs = [self._job(kind, split, m) for m in want]
                return cached_features(ds, jobs, batch_size=self.cfg.data.trunk_batch_size,
                                       progress=self.progress, desc=f"{kind}/{split}",
                                       meta={"dataset": self.dataset_fp})

            if self.dist.is_main:
                got = load()
            barrier(self.dist)
            if not self.dist.is_main:
                got = load()
            self._features.update({(kind, split, m): fs for m, fs in got.items()})
        return {m: self._features[(kind, split, m)] for m in modalities}

    def text_embeddings(self, kind: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen caption embeddings ``[N, D]`` and their valid mask ``[N]``."""
        fs = self.features(kind, split, ["text"])["text"]
        with torch.no_grad():
            emb = self.text_encoder.encode_features(fs.values[0].float().to(self.dist.device))
        return emb.cpu(), fs.valid

    @cached_property
    def label_embeddings(self) -> torch.Tensor:
        """``[C, D]`` unit label embeddings (prompt-template mean)."""
        return label_embeddings(self.text_encoder, self.class_names,
                                self.preprocess_configs["text"], device=self.dist.device).cpu()

    # -- stage outputs -------------------------------------------------------------------------

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    def load_encoder(self, modality: str, *, pretrained: bool = True) -> ModalityEncoder:
        """An encoder with its trained weights (stage 0 for image, CAD for students);
        ``pretrained=False`` as in :meth:`new_encoder` (head-only use)."""
        enc = self.new_encoder(modality, pretrained=pretrained)
        if modality == "text":
            return enc.eval()
        stage = "stage0" if modality == "image" else "cad"
        ckpt = load_checkpoint(self.stage_dir(stage) / "final")
        load_trainable_state(enc, ckpt.weights[modality], what=f"{stage}:{modality}")
        return enc.eval()

    def load_fusion_heads(self) -> dict[str, nn.Module]:
        """The trained AF head and baselines (``mean`` is rebuilt: no weights)."""
        heads: dict[str, nn.Module] = {}
        for kind in ["af", *self.cfg.baselines]:
            cfg = self.fusion_config(kind)
            head = cfg.fusion.build()
            path = self.stage_dir("af") / kind / "final"
            if any(p.requires_grad for p in head.parameters()):
                ckpt = load_checkpoint(path)
                load_trainable_state(head, ckpt.weights["fusion"], what=f"af:{kind}")
            heads[kind] = head.eval()
        return heads

    def fusion_logit_scale(self, kind: str = "af") -> float:
        """``1 / tau`` the trained fusion head ``kind`` was trained with (its checkpoint's
        ``AFLoss.logit_scale()``): what the runtime must scale the label cosines by."""
        return checkpoint_logit_scale(load_checkpoint(self.stage_dir("af") / kind / "final"))

    def fusion_config(self, kind: str, overrides: Mapping[str, Any] | None = None) -> AFConfig:
        """The AF config with the head ``kind`` and the shared embedding size."""
        raw = self.cfg.af.to_dict()
        raw.update(overrides or {})
        raw["fusion"] = {**raw["fusion"], "kind": kind, "dim": self.embed_dim}
        return AFConfig.from_dict(raw)

    def embed(self, encoder: ModalityEncoder, fs: FeatureSet) -> torch.Tensor:
        """Unit embeddings ``[N, D]`` of cached features (frozen trunk) or inputs (trainable)."""
        return embed_values(encoder, fs.values[0], device=self.dist.device)

    def oof_path(self) -> Path:
        """Out-of-fold student embeddings of the training split (CAD cross-fitting)."""
        return self.stage_dir("cad") / "oof-train.safetensors"

    def _oof_embeddings(self) -> dict[str, torch.Tensor] | None:
        """The CAD stage's out-of-fold embeddings if they belong to its final checkpoint."""
        from safetensors import safe_open

        path = self.oof_path()
        if not path.exists():
            return None
        with safe_open(str(path), framework="pt") as f:
            if f.metadata().get("cad") != _file_digest(self.stage_dir("cad") / "final"):
                return None
            return {k: f.get_tensor(k) for k in f.keys()}

    def fusion_data(self, split: str) -> tuple[FusionData, dict[str, torch.Tensor]]:
        """Frozen embeddings of every modality on a student split (cached on disk)."""
        if split in self._fusion:
            return self._fusion[split]
        modalities = list(MODALITY_SLOTS)
        feats = self.features("student", split, modalities)
        oof = self._oof_embeddings() if split == "train" else None
        key = hash_json({"features": {m: feats[m].key for m in modalities},
                         "stage0": _file_digest(self.stage_dir("stage0") / "final"),
                         "cad": _file_digest(self.stage_dir("cad") / "final"),
                         "oof": _digest(self.oof_path()) if oof else None})
        path = self.run_dir / "embeddings" / f"student-{split}-{key}.safetensors"
        if path.exists():
            from safetensors.torch import load_file

            emb = load_file(str(path))
        else:
            emb = {m: oof[m] if oof and m in oof
                   else self.embed(self.load_encoder(m, pretrained=False), feats[m])
                   if m != "text" else self.text_embeddings("student", split)[0]
                   for m in modalities}
            if self.dist.is_main:
                _save_tensors(path, emb)
        ds = self.dataset("student", split)
        present = {m: feats[m].valid for m in modalities}
        records = [(i, [m.value for m in mods]) for i, mods in ds.modality_free]
        data = FusionData.build(emb, present, self.labels("student", split), records)
        self._fusion[split] = (data, emb)
        return self._fusion[split]


def _save_tensors(path: Path, tensors: Mapping[str, torch.Tensor],
                  metadata: Mapping[str, str] | None = None) -> None:
    """safetensors file written atomically (other ranks may be reading the path)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    save_file({k: t.contiguous() for k, t in tensors.items()}, str(tmp),
              metadata=dict(metadata or {}))
    os.replace(tmp, path)


def _digest(path: Path) -> str:
    """16 hex chars of a file's SHA-256 ("missing" if absent)."""
    if not path.exists():
        return "missing"
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _file_digest(directory: Path) -> str:
    """Digest of a checkpoint directory's weights."""
    return _digest(directory / "weights.safetensors")


def zero_shot(emb: torch.Tensor, labels: torch.Tensor, label_emb: torch.Tensor,
              valid: torch.Tensor | None = None) -> float:
    """Top-1 of ``emb`` ``[N, D]`` against ``label_emb`` ``[C, D]`` over the valid rows."""
    pred = (F.normalize(emb.float(), dim=-1) @ label_emb.float().T).argmax(dim=1)
    ok = pred == labels
    if valid is not None:
        ok = ok[valid]
    return float(ok.float().mean()) if ok.numel() else float("nan")


# --- stages -----------------------------------------------------------------------------------


def _timed(ws: Workspace, stage: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    ws.timings[stage] = round(time.perf_counter() - t0, 2)
    _say(ws, f"[{stage}] done in {ws.timings[stage]:.1f} s")
    return out


def _say(ws: Workspace, message: str) -> None:
    if ws.dist.is_main:
        print(message, flush=True)


def run_data(ws: Workspace, *, overwrite: bool = False) -> Path:
    """Generate the simulated data set if it is absent (``overwrite``: regenerate it)."""
    return ws.ensure_data(overwrite=overwrite)


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
    train, _ = ws.fusion_data("train")
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
    from .evaluation import robustness_sweep

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
    from . import evaluation

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
    from .export import export_bundle

    modalities = [m for m in MODALITY_SLOTS if m != "text"]
    encoders = {m: ws.load_encoder(m).cpu() for m in modalities}
    fusion = ws.load_fusion_heads()["af"].cpu()
    stage_metrics = {s: json.loads((ws.stage_dir(s) / p / "config.json").read_text()).get(
        "metrics", {}) for s, p in (("stage0", "final"), ("cad", "final"), ("af", "af/final"))
        if (ws.stage_dir(s) / p / "config.json").exists()}
    provenance = {"pipeline": ws.cfg.name, "seed": ws.cfg.seed, "dataset": ws.dataset_root.name,
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
        exporter=ws.cfg.export.exporter, threads=torch.get_num_threads())
    _say(ws, f"[export] bundle: {path}")
    return Path(path)


def run_all(ws: Workspace, *, stages: Sequence[str] = STAGES,
            overwrite_data: bool = False) -> dict[str, float]:
    """Run ``stages`` in order with timings; returns the per-stage wall times (s)."""
    t0 = time.perf_counter()
    runners: dict[str, Callable[[], Any]] = {
        "data": lambda: run_data(ws, overwrite=overwrite_data), "stage0": lambda: run_stage0(ws),
        "cad": lambda: run_cad(ws), "af": lambda: run_af(ws), "eval": lambda: run_eval(ws),
        "export": lambda: run_export(ws)}
    for stage in stages:
        _say(ws, f"[{stage}] starting")
        _timed(ws, stage, runners[stage])
    ws.timings["total"] = round(time.perf_counter() - t0, 2)
    _say(ws, "timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in ws.timings.items()))
    if ws.dist.is_main:
        ws.run_dir.mkdir(parents=True, exist_ok=True)
        (ws.run_dir / "timings.json").write_text(json.dumps(ws.timings, indent=1))
    return ws.timings


STUDENT_NAMES = tuple(m.value for m in STUDENTS)
