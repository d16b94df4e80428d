"""UniAlign at paper scale: a real CLIP ViT-B/16, prepared per-modality data sets, torchrun.

Run (one node, 4x A100; ``training/configs/paper_unialign.yaml``, paths filled in)::

    torchrun --standalone --nproc_per_node 4 -m omnibind_train.unialign.paper \\
        --config training/configs/paper_unialign.yaml [--set key=value ...]

One process also works (``python -m omnibind_train.unialign.paper --config ...``). A killed job
resumes from ``out_dir/model.state`` when rerun with the same command.

**Data.** The paper caches teacher features offline; this runner reads every modality's data
set in that spirit, as a *prepared* directory (memory-mapped ``.npy``, written by the user's
own preprocessing of ImageNet / ShapeNet / SUN RGB-D / AudioSet):

==================  ==========================================================================
file                content
==================  ==========================================================================
``inputs.npy``      ``[N, ...]`` model inputs (e.g. depth ``[N, 1, 224, 224]``, audio fbank
                    ``[N, 1, 128, 1024]``, points ``[N, 8192, 3]``), float16/float32
``labels.npy``      ``[N]`` int label index into ``labels.json``
``labels.json``     the data set's label names (its own vocabulary)
``label_text.npy``  ``[n_labels, E]`` frozen CLIP text embeddings of the label prompts
``anchors.npy``     ``[N, E]`` frozen CLIP image embeddings of each sample's paired image
``teacher.npy``     optional ``[N, d_t]`` cached partial-modal teacher features (ULIP, ...)
``teacher_text.npy``  with ``teacher.npy``: ``[n_labels, d_t]`` the teacher's label texts
==================  ==========================================================================

Everything is checked on load (matching lengths, label range, embedding sizes) and a bad file
is named. Training is :func:`.train.train_unialign` (per-modality accumulation, gradient
all-reduce across ranks, bf16 autocast on CUDA, checkpoints every ``checkpoint_every`` steps);
the trained modules land in ``out_dir/model.pt``.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..pipeline.config import YamlConfig
from ..trainers.common import ConfigBase, OptimConfig
from .backbone import MoEConfig, load_clip_visual
from .model import UniAlignModel, UniAlignModelConfig
from .tokenizers import TokenizerConfig
from .train import LossConfig, ModalitySet, TrainConfig, train_unialign, trainable_state

__all__ = ["PaperUniAlignConfig", "load_prepared", "main", "run_paper"]

FAMILY = "unialign_paper"


def _code_tokenizers() -> dict[str, TokenizerConfig]:
    """The code's tokenizers for 224 px / 16 px patches (audio 16x16 stride 10)."""
    return {"depth": TokenizerConfig(channels=[0]),
            "thermal": TokenizerConfig(channels=[0]),
            "audio": TokenizerConfig(channels=[0], patch=16, stride=10),
            "point_cloud": TokenizerConfig(kind="point", groups=64, group_size=32,
                                           point_widths=[128, 256, 512])}


@dataclass
class DatasetEntry(ConfigBase):
    """One modality's prepared directory and its repeat factor."""

    dir: str = ""
    repeat: float = 1.0


@dataclass
class PaperUniAlignConfig(YamlConfig):
    """``training/configs/paper_unialign.yaml`` (``family: unialign_paper``)."""

    family: str = FAMILY
    name: str = "unialign_paper"
    out_dir: str = "runs/unialign_paper"
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    clip_checkpoint: str = ""
    clip_act: str = "quick_gelu"
    datasets: dict[str, DatasetEntry] = field(default_factory=dict)
    moe: MoEConfig = field(default_factory=MoEConfig)
    tokenizers: dict[str, TokenizerConfig] = field(default_factory=_code_tokenizers)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=100, batch_per_modality=256, accum_steps=2, batch_share="data",
        checkpoint_every=500, optim=OptimConfig(lr=2e-4, weight_decay=0.05,
                                                betas=(0.9, 0.98), warmup_frac=0.05,
                                                grad_clip=1.0)))

    def __post_init__(self) -> None:
        if self.family != FAMILY:
            raise ValueError(f"family must be {FAMILY!r}, got {self.family!r}")
        missing = sorted(set(self.datasets) - set(self.tokenizers) - {"image"})
        if missing:
            raise ValueError(f"no tokenizer configured for {missing}")


def _npy(root: Path, name: str, *, required: bool = True) -> np.ndarray | None:
    path = root / name
    if not path.exists():
        if required:
            raise FileNotFoundError(f"prepared data set {root}: {name} is missing")
        return None
    return np.load(path, mmap_mode="r")


def load_prepared(root: str | Path, embed_dim: int) -> tuple[ModalitySet, list[str]]:
    """A prepared data set (see the module docstring) as a :class:`ModalitySet` (inputs stay
    memory-mapped) and its label names; raises ``ValueError`` naming what does not fit."""
    root = Path(root)
    names = json.loads((root / "labels.json").read_text())
    x, labels = _npy(root, "inputs.npy"), _npy(root, "labels.npy")
    text, anchors = _npy(root, "label_text.npy"), _npy(root, "anchors.npy")
    teacher, teacher_text = _npy(root, "teacher.npy", required=False), \
        _npy(root, "teacher_text.npy", required=False)
    n = len(labels)
    problems = []
    if len(x) != n or len(anchors) != n:
        problems.append(f"inputs {len(x)} / anchors {len(anchors)} rows vs {n} labels")
    if labels.min() < 0 or labels.max() >= len(names):
        problems.append(f"labels outside 0..{len(names) - 1}")
    if text.shape != (len(names), embed_dim) or anchors.shape[1:] != (embed_dim,):
        problems.append(f"label_text {text.shape} / anchors {anchors.shape} vs CLIP dim "
                        f"{embed_dim}")
    if (teacher is None) != (teacher_text is None) or (
            teacher is not None and (len(teacher) != n or teacher_text.shape !=
                                     (len(names), teacher.shape[1]))):
        problems.append("teacher.npy and teacher_text.npy must come together and match")
    if problems:
        raise ValueError(f"prepared data set {root}: " + "; ".join(problems))

    def t(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(np.asarray(a))

    unit = torch.nn.functional.normalize
    with warnings.catch_warnings():   # read-only memmap: the inputs are only ever read
        warnings.simplefilter("ignore", UserWarning)
        inputs = torch.from_numpy(x)
    return ModalitySet(inputs, torch.from_numpy(np.asarray(labels)).long(),
                       unit(t(text).float(), dim=-1), unit(t(anchors).float(), dim=-1),
                       None if teacher is None else unit(t(teacher).float(), dim=-1),
                       None if teacher_text is None else unit(t(teacher_text).float(),
                                                              dim=-1)), list(names)


def build_model(cfg: PaperUniAlignConfig, sets: Mapping[str, ModalitySet],
                visual: torch.nn.Module) -> UniAlignModel:
    """The model around the loaded CLIP tower (its shape read from the tower)."""
    mods = [m for m in cfg.datasets if m != "image"]
    shapes = {m: list(s.x.shape[1:]) for m, s in sets.items()}
    size = visual.image_size
    shapes.setdefault("image", [3, size, size])
    mcfg = UniAlignModelConfig.from_dict({
        "backbone": {"image_size": size, "patch_size": int(visual.conv1.kernel_size[0]),
                     "width": int(visual.conv1.out_channels),
                     "layers": len(visual.transformer.resblocks),
                     "heads": int(visual.transformer.resblocks[0].attn.num_heads),
                     "embed_dim": int(visual.output_dim), "act": cfg.clip_act},
        "modalities": mods, "moe": cfg.moe.to_dict(),
        "tokenizers": {m: cfg.tokenizers[m].to_dict() for m in mods}, "input_shapes": shapes,
        "teacher_dims": {m: int(s.teacher.shape[1]) for m, s in sets.items()
                         if s.teacher is not None and m in mods}})
    return UniAlignModel(mcfg, visual)


def run_paper(cfg: PaperUniAlignConfig, dist: Any = None) -> Path:
    """Train and store ``out_dir/model.pt``; returns its path."""
    from ..trainers.distributed import single_process

    dist = dist or single_process()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    visual, _ = load_clip_visual(cfg.clip_checkpoint, act=cfg.clip_act)
    sets, vocab = {}, {}
    for m, entry in cfg.datasets.items():
        sets[m], vocab[m] = load_prepared(entry.dir, int(visual.output_dim))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, sets, visual)
    tcfg = cfg.training.replace(repeat={m: e.repeat for m, e in cfg.datasets.items()})
    t0 = time.perf_counter()
    curves = train_unialign(model, sets, tcfg, cfg.loss, seed=cfg.seed, dist=dist,
                            state_path=out / "model.state", progress=cfg.progress,
                            desc="unialign (paper)")
    path = out / "model.pt"
    if dist.is_main:
        torch.save({"model": trainable_state(model), "model_config": model.cfg.to_dict(),
                    "vocabularies": vocab, "curves": curves,
                    "config": copy.deepcopy(cfg.to_dict()),
                    "seconds": time.perf_counter() - t0}, path)
        (out / "model.state").unlink(missing_ok=True)
        print(f"[unialign paper] {len(curves.get('loss', []))} steps, model: {path}",
              flush=True)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnibind_train.unialign.paper",
                                     description="UniAlign at paper scale (torchrun-ready).")
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    cfg = PaperUniAlignConfig.from_yaml(args.config, args.overrides)
    from ..trainers.distributed import cleanup, init_distributed

    dist = init_distributed(cfg.device)
    try:
        run_paper(cfg, dist)
    finally:
        cleanup(dist)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
