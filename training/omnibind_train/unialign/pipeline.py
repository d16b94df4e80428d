"""The UniAlign family's pipeline
(``omnibind-train all --config training/configs/sim_unialign.yaml``):

``data -> backbone -> teachers -> train -> af -> eval -> export`` (``ablate`` on its own)

* **data**: the shared simulated data set, preprocessed at the family's sizes (:mod:`.data`);
* **backbone**: the small CLIP ViT + text projection pre-trained on its own split, then frozen
  (:mod:`.pretrain`), or a local CLIP checkpoint (``backbone.checkpoint``);
* **teachers**: the partial-modal teachers are the binding family's pre-trained specialist
  spaces (ULIP-, ViT-Lens-, ONE-PEACE-like: each trained on its own modality's pairs, on a
  split UniAlign never trains on); their features of UniAlign's data are cached;
* **train**: the MoE-LoRA, tokenizers, heads and KD connectors (:mod:`.train`);
* **ablate**: the models of Tables 8-11 (routing, top-k/experts, loss ladder, modality scaling,
  image experts), each trained like the main one;
* **af**: the AF head (seed 000) on UniAlign's embeddings;
* **eval**: tables and plots in the paper's shape (:mod:`.report`);
* **export**: the UniAlign bundle (:mod:`.export`).

Every output is stored under ``<cache>/runs/<name>/unialign`` named by what it depends on, so
a rerun skips what is done and a killed run resumes.
"""
from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import DataConfig, hash_json
from ..pipeline.config import YamlConfig
from ..pipeline.family import FamilyRun
from ..trainers.af import AFConfig
from ..trainers.common import ConfigBase
from ..trainers.distributed import DistInfo
from .backbone import BackboneConfig, MoEConfig, build_clip_visual, load_clip_visual
from .data import UniAlignData, label_prompts
from .model import IMAGE, UniAlignModel, UniAlignModelConfig, input_shapes
from .pretrain import PretrainConfig, pretrain_clip
from .tokenizers import TokenizerConfig, default_tokenizers
from .train import (
    LossConfig,
    ModalitySet,
    TrainConfig,
    load_trainable_state,
    train_unialign,
    trainable_state,
)

__all__ = ["FAMILY", "STAGES", "UniAlignConfig", "UniAlignRun", "Variant"]

FAMILY = "unialign"
STAGES = ("data", "backbone", "teachers", "train", "af", "eval", "export")
EXTENDED = ("thermal", "event", "audio", "tactile", "point_cloud")

DEFAULT_PREPROCESS: dict[str, dict[str, Any]] = {
    "image": {"size": 64}, "thermal": {"size": 64}, "event": {"size": 64},
    "tactile": {"size": 64},
    # log-mel of the simulated impacts: mean about -11, std about 3 (standardised here so the
    # patch tokenizer sees unit-scale inputs, as AudioMAE-style tokenizers expect)
    "audio": {"n_mels": 64, "hop_length": 320, "norm_mean": -11.0, "norm_std": 3.0},
    "point_cloud": {"num_points": 512}}


@dataclass
class TeacherConfig(ConfigBase):
    """Where the partial-modal teachers come from: a binding-family config and, per distilled
    modality, the specialist space that teaches it."""

    config: str = "training/configs/sim_binding.yaml"
    spaces: dict[str, str] = field(default_factory=lambda: {
        "thermal": "s9", "event": "s10", "audio": "s4", "tactile": "s11", "point_cloud": "s6"})


@dataclass
class Variant(ConfigBase):
    """A trained model: ``moe``/``loss``/``training`` override the main config's fields;
    ``modalities`` (empty: all) picks the data sets it trains on; ``table`` groups ablations."""

    name: str = "main"
    table: str = ""
    moe: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    modalities: list[str] = field(default_factory=list)


@dataclass
class UniAlignExport(ConfigBase):
    bundle: str = "unialign"
    out: str | None = None
    sample_batch: int = 2
    exporter: str = "auto"


@dataclass
class UniAlignConfig(YamlConfig):
    """``training/configs/sim_unialign.yaml`` (``family: unialign``); fields as in the module
    docstring's stages. ``keep_classes``: classes per extended data set (partial overlap);
    ``disjoint_sets``: cut the pool into one block of instances per modality (see :mod:`.data`)."""

    family: str = FAMILY
    name: str = "sim_unialign"
    seed: int = 0
    cache_dir: str | None = None
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    data: DataConfig = field(default_factory=lambda: DataConfig(
        dataset="config/sim_binding_dataset.yaml", preprocess=copy.deepcopy(DEFAULT_PREPROCESS)))
    modalities: list[str] = field(default_factory=lambda: list(EXTENDED))
    keep_classes: int | None = 12
    disjoint_sets: bool = False
    teachers: TeacherConfig = field(default_factory=TeacherConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    tokenizers: dict[str, TokenizerConfig] = field(default_factory=default_tokenizers)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    ablations: list[Variant] = field(default_factory=list)
    af: AFConfig = field(default_factory=AFConfig)
    export: UniAlignExport = field(default_factory=UniAlignExport)

    def __post_init__(self) -> None:
        if self.family != FAMILY:
            raise ValueError(f"family must be {FAMILY!r} for a UniAlign config, got "
                             f"{self.family!r}")
        unknown = sorted(set(self.modalities) - set(EXTENDED))
        if unknown:
            raise ValueError(f"unknown extended modalities {unknown}; known: {EXTENDED}")
        missing = sorted(set(self.modalities) - set(self.tokenizers))
        if missing:
            raise ValueError(f"no tokenizer configured for {missing}")


class UniAlignRun(FamilyRun):
    """The UniAlign pipeline's shared state: workspace, data, teachers, trained models."""

    def __init__(self, cfg: UniAlignConfig, dist: DistInfo | None = None) -> None:
        super().__init__(cfg, dist)
        self.data = UniAlignData(self.ws, self.train_modalities(), seed=cfg.seed,
                                 keep_classes=cfg.keep_classes, disjoint=cfg.disjoint_sets)
        self._models: dict[str, UniAlignModel] = {}

    def train_modalities(self) -> list[str]:
        """The modalities with a labelled data set. Image always has its block (used when
        image experts train), so the other blocks do not depend on which models are trained."""
        return [IMAGE, *self.cfg.modalities]

    @property
    def out_dir(self) -> Path:
        return self.ws.run_dir / "unialign"

    # -- data -----------------------------------------------------------------------------------

    def run_data(self, *, overwrite: bool = False) -> Path:
        root = self.ws.ensure_data(overwrite=overwrite)
        for kind, split, mods in (("teacher", "train", [IMAGE]),
                                  ("student", "val", [IMAGE, *self.cfg.modalities]),
                                  ("student", "test", [IMAGE, *self.cfg.modalities])):
            for m in mods:
                self.data.inputs(kind, split, m)
        sizes = {m: len(s) for m, s in self.data.sets.items()}
        self.say(f"[data] labelled sets: {sizes}")
        return root

    @cached_property
    def teacher_run(self) -> Any:
        """The binding run whose specialist spaces teach (only the spaces needed)."""
        from ..binding.pipeline import BindingConfig, BindingRun
        from ..binding.specialists import get_specialist

        names = list(dict.fromkeys(self.cfg.teachers.spaces[m] for m in self.cfg.modalities
                                   if m in self.cfg.teachers.spaces))
        closure: list[str] = []
        todo = list(names)
        while todo:
            n = todo.pop()
            if n in closure:
                continue
            closure.append(n)
            todo += list(get_specialist(n).anchors.values())
        order = sorted(closure, key=lambda s: int(s[1:]) if s[1:].isdigit() else 99)
        bcfg = BindingConfig.from_yaml(self.cfg.teachers.config, [
            f"specialists={json.dumps(order)}", f"variants={json.dumps({'teachers': order})}",
            "ablations=[]", "export.variant=teachers", f"device={self.cfg.device}",
            f"progress={str(self.cfg.progress).lower()}"]
            + ([f"cache_dir={self.cfg.cache_dir}"] if self.cfg.cache_dir else []))
        return BindingRun(bcfg, self.ws.dist)

    @cached_property
    def test_captions(self) -> list[str]:
        """The test bank's text rows: every caption style of every test instance, style-major
        (built once: each caption style reads the data set's nuisances)."""
        from ..binding.captions import STYLES

        data = self.teacher_run.data
        return [c for style in STYLES for c in data.captions("student", "test", style)]

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Frozen MiniLM features of texts (cached by content)."""
        return self.teacher_run.data.caption_features(list(texts))

    # -- backbone -------------------------------------------------------------------------------

    def _backbone_path(self) -> Path:
        key = hash_json({"backbone": self.cfg.backbone.to_dict(),
                         "pretrain": self.cfg.pretrain.to_dict(), "data": self.ws.dataset_fp,
                         "image": self.ws.preprocess_configs[IMAGE], "seed": self.cfg.seed})
        return self.out_dir / f"backbone-{key}.pt"

    @cached_property
    def clip(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The frozen ``(visual, text_head)``: pre-trained once here, or a local checkpoint."""
        bcfg = self.cfg.backbone
        if bcfg.checkpoint:
            visual, _ = load_clip_visual(bcfg.checkpoint, act=bcfg.act)
            text_head = torch.nn.Linear(bcfg.text_dim, visual.output_dim)
            return visual.eval().requires_grad_(False), text_head
        visual = build_clip_visual(bcfg)
        text_head = torch.nn.Linear(bcfg.text_dim, bcfg.embed_dim)
        path = self._backbone_path()
        if path.exists():
            state = torch.load(path, map_location="cpu", weights_only=True)
            visual.load_state_dict(state["visual"])
            text_head.load_state_dict(state["text_head"])
        else:
            torch.manual_seed(self.cfg.seed + 11)
            visual = build_clip_visual(bcfg)
            text_head = torch.nn.Linear(bcfg.text_dim, bcfg.embed_dim)
            images, _ = self.data.inputs("teacher", "train", IMAGE)
            caps = self.teacher_run.data.captions("teacher", "train",
                                                  self.cfg.pretrain.caption_style)
            t0 = time.perf_counter()
            curves = pretrain_clip(visual, text_head, images, self.text_features(caps),
                                   self.cfg.pretrain, seed=self.cfg.seed,
                                   progress=self.ws.progress)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"visual": visual.state_dict(), "text_head": text_head.state_dict(),
                        "curves": curves}, path)
            self.say(f"[backbone] CLIP pre-training: {len(curves['loss'])} steps in "
                     f"{time.perf_counter() - t0:.1f} s, loss {curves['loss'][0]:.3f} -> "
                     f"{curves['loss'][-1]:.3f}")
        return visual.eval().requires_grad_(False), text_head.eval().requires_grad_(False)

    @torch.no_grad()
    def text_embed(self, texts: Sequence[str]) -> torch.Tensor:
        _, head = self.clip
        return torch.nn.functional.normalize(head(self.text_features(texts)), dim=-1)

    def label_text(self, names: Sequence[str]) -> torch.Tensor:
        """``[n, E]`` unit label embeddings (prompt-template mean, as the runtime embeds)."""
        from omnibind_ros.sim.text import PROMPT_TEMPLATES

        t = len(PROMPT_TEMPLATES)
        emb = self.text_embed(label_prompts(names)).view(len(names), t, -1).mean(1)
        return torch.nn.functional.normalize(emb, dim=-1)

    @torch.no_grad()
    def image_embed(self, kind: str, split: str) -> torch.Tensor:
        """Frozen CLIP unit embeddings of every image of a split (the anchors)."""
        visual, _ = self.clip
        x, _ = self.data.inputs(kind, split, IMAGE)
        out = [torch.nn.functional.normalize(visual(x[i:i + 256].float()), dim=-1)
               for i in range(0, x.shape[0], 256)]
        return torch.cat(out)

    # -- teachers -------------------------------------------------------------------------------

    def _teacher_path(self) -> Path:
        run = self.teacher_run
        key = hash_json({"spaces": run.bank_key("unialign-teachers"),
                         "teachers": self.cfg.teachers.spaces, "sets": {
                             m: hash_json({"rows": s.rows.tolist(), "labels": s.vocab.names})
                             for m, s in self.data.sets.items()}})
        return self.out_dir / f"teachers-{key}.pt"

    @cached_property
    def teacher_features(self) -> dict[str, dict[str, torch.Tensor]]:
        """modality -> ``{"feat": [N, d_t], "text": [n_labels, d_t]}`` of its data set."""
        path = self._teacher_path()
        if path.exists():
            return torch.load(path, map_location="cpu", weights_only=True)
        from omnibind_ros.sim.text import PROMPT_TEMPLATES

        from ..binding.train_spaces import embed_inputs

        run = self.teacher_run
        out: dict[str, dict[str, torch.Tensor]] = {}
        for m, name in self.cfg.teachers.spaces.items():
            if m not in self.data.sets:
                continue
            space = run.spaces[name]
            s = self.data.sets[m]
            x, _ = run.data.inputs("student", self.data.pool_split, m, space.spec.input_kind(m))
            feat = embed_inputs(space, m, x[torch.from_numpy(s.rows)].float())
            prompts = label_prompts(s.vocab.names)
            with torch.no_grad():
                txt = space.encode("text", self.text_features(prompts))
            txt = torch.nn.functional.normalize(
                txt.view(len(s.vocab.names), len(PROMPT_TEMPLATES), -1).mean(1), dim=-1)
            out[m] = {"feat": feat.detach(), "text": txt.detach()}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
        return out

    def run_teachers(self) -> dict[str, int]:
        return {m: int(t["feat"].shape[1]) for m, t in self.teacher_features.items()}

    # -- models ---------------------------------------------------------------------------------

    def modality_sets(self, modalities: Sequence[str]) -> dict[str, ModalitySet]:
        anchors = self.image_embed("student", self.data.pool_split)
        out = {}
        for m in modalities:
            s = self.data.sets[m]
            x, _ = self.data.inputs("student", self.data.pool_split, m)
            rows = torch.from_numpy(s.rows)
            t = self.teacher_features.get(m)
            out[m] = ModalitySet(x[rows], torch.from_numpy(s.labels),
                                 self.label_text(s.vocab.names), anchors[rows],
                                 None if t is None else t["feat"],
                                 None if t is None else t["text"])
        return out

    def model_config(self, variant: Variant | None = None) -> UniAlignModelConfig:
        v = variant or Variant()
        moe = self.cfg.moe.replace(**v.moe)
        mods = [m for m in (v.modalities or self.cfg.modalities) if m != IMAGE]
        dims = {m: int(t["feat"].shape[1]) for m, t in self.teacher_features.items()}
        shapes = input_shapes(self.ws.preprocess_configs, [IMAGE, *mods])
        return UniAlignModelConfig(backbone=self.cfg.backbone, modalities=mods, moe=moe,
                                   tokenizers={m: self.cfg.tokenizers[m] for m in mods},
                                   input_shapes=shapes,
                                   teacher_dims={m: d for m, d in dims.items() if m in mods})

    def variant_key(self, variant: Variant) -> str:
        return hash_json({"model": self.model_config(variant).to_dict(),
                          "loss": self.cfg.loss.replace(**variant.loss).to_dict(),
                          "training": self.cfg.training.replace(**variant.training).to_dict(),
                          "backbone": self._backbone_path().name,
                          "teachers": self._teacher_path().name, "seed": self.cfg.seed})

    def model_path(self, variant: Variant) -> Path:
        slug = "".join(c if c.isalnum() else "_" for c in variant.name.lower())[:40]
        return self.out_dir / f"model-{slug}-{self.variant_key(variant)}.pt"

    def new_model(self, variant: Variant | None = None) -> UniAlignModel:
        visual, text_head = self.clip
        torch.manual_seed(self.cfg.seed + 3)
        return UniAlignModel(self.model_config(variant), copy.deepcopy(visual),
                             copy.deepcopy(text_head))

    def model(self, variant: Variant | None = None) -> UniAlignModel:
        """A variant's trained model (trained once, then loaded from its file)."""
        v = variant or Variant()
        if v.name in self._models:
            return self._models[v.name]
        path = self.model_path(v)
        model = self.new_model(v)
        if path.exists():
            load_trainable_state(model, torch.load(path, map_location="cpu",
                                                   weights_only=True)["model"])
        else:
            mods = ([IMAGE] if model.cfg.moe.image_experts else []) + model.cfg.modalities
            sets = self.modality_sets(mods)
            tcfg = self.cfg.training.replace(**v.training)
            t0 = time.perf_counter()
            curves = train_unialign(model, sets, tcfg, self.cfg.loss.replace(**v.loss),
                                    seed=self.cfg.seed, dist=self.ws.dist,
                                    state_path=path.with_suffix(".state"),
                                    progress=self.ws.progress, desc=f"unialign {v.name}")
            if self.ws.dist.is_main:
                torch.save({"model": trainable_state(model), "curves": curves,
                            "seconds": time.perf_counter() - t0}, path)
                path.with_suffix(".state").unlink(missing_ok=True)
            self.say(f"[train] {v.name}: {len(curves['loss'])} steps in "
                     f"{time.perf_counter() - t0:.1f} s, loss {curves['loss'][0]:.3f} -> "
                     f"{curves['loss'][-1]:.3f}")
        model.eval()
        self._models[v.name] = model
        return model

    def curves(self, variant: Variant | None = None) -> dict[str, list[float]]:
        path = self.model_path(variant or Variant())
        return torch.load(path, map_location="cpu", weights_only=True)["curves"] \
            if path.exists() else {}

    def run_train(self) -> UniAlignModel:
        return self.model()

    def run_ablate(self) -> dict[str, UniAlignModel]:
        return {v.name: self.model(v) for v in self.cfg.ablations}

    # -- embeddings of a split ------------------------------------------------------------------

    @torch.no_grad()
    def embed_split(self, model: UniAlignModel, modality: str, kind: str, split: str,
                    rows: np.ndarray | None = None, batch: int = 256) -> torch.Tensor:
        """Unit embeddings of a split's inputs of one modality (all rows by default)."""
        x, _ = self.data.inputs(kind, split, modality)
        if rows is not None:
            x = x[torch.as_tensor(rows, dtype=torch.long)]
        return torch.cat([model.embed(modality, x[i:i + batch].float())
                          for i in range(0, x.shape[0], batch)])
