"""The workspace the stages share: resolved configs, the data set, encoders, the content-keyed
feature cache, frozen embeddings and the stages' checkpoints under ``<cache>/runs/<name>``."""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from omnibind_ros.core.paths import default_cache_dir
from omnibind_ros.sim.dataset import SimDataset

from ..data import (
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
    trunk_encode_fn,
)
from ..models.encoders import ModalityEncoder
from ..models.fusion import MODALITY_SLOTS
from ..models.registry import DEFAULT_ENCODERS, EncoderConfig, build_encoder, get_encoder_config
from ..trainers.af import AFConfig, FusionData, checkpoint_logit_scale
from ..trainers.cad import embed_values
from ..trainers.checkpoint import load_checkpoint, load_trainable_state
from ..trainers.common import derive_seed
from ..trainers.distributed import DistInfo, barrier, single_process
from .config import PipelineConfig

#: ``trunk_runtime: auto`` uses ONNX Runtime for splits at least this large.
ORT_MIN_SAMPLES = 500


class Workspace:
    """Resolved config, data set, encoders, cached features and embeddings for the stages.

    Parameters
    ----------
    cfg : the pipeline config.
    dist : ranks (rank 0 generates data and caches features; the others wait and read).
    twin : this workspace serves the degraded twin of another's data set (:attr:`degraded`):
        the same run (stage checkpoints), another data set; its training split is embedded by
        the final students (the out-of-fold embeddings belong to the clean samples).
    """

    def __init__(self, cfg: PipelineConfig, dist: DistInfo | None = None, *,
                 twin: bool = False) -> None:
        self.cfg = cfg
        self.twin = twin
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
    def degraded(self) -> Workspace | None:
        """The workspace of the degraded twin data set (``data.degraded``); None without one."""
        data = self.cfg.data.degraded_twin()
        if data is None:
            return None
        return Workspace(dataclasses.replace(self.cfg, data=data), self.dist, twin=True)

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
        from ..data import resolve_preprocess_configs

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
        """ONNX Runtime for image-like trunks on the CPU; ``auto`` only where the one-off ONNX
        export of the trunk pays for itself (>= ``ORT_MIN_SAMPLES`` samples, or already
        exported)."""
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
        oof = self._oof_embeddings() if split == "train" and not self.twin else None
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


def _timed(ws: Workspace, stage: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, its wall time recorded in ``ws.timings[stage]`` and reported."""
    t0 = time.perf_counter()
    out = fn()
    ws.timings[stage] = round(time.perf_counter() - t0, 2)
    _say(ws, f"[{stage}] done in {ws.timings[stage]:.1f} s")
    return out


def _say(ws: Workspace, message: str) -> None:
    """Print a progress line on rank 0 only."""
    if ws.dist.is_main:
        print(message, flush=True)
