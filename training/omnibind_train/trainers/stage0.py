"""Stage 0: the teacher space (LiT). Frozen text encoder; image = frozen trunk + trained head.

Symmetric InfoNCE with a learnable temperature (:class:`~omnibind_train.losses.ContrastiveLoss`)
between image embeddings (head over cached trunk features) and the frozen text embeddings of the
paired captions, on the abundant simulated image-caption pairs. Under ``torchrun`` the negatives
are the whole global batch's (:func:`~.distributed.gather_batch`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from omnibind_train.losses import ContrastiveLoss, upcast
from omnibind_train.models.encoders import ModalityEncoder

from .common import (
    ConfigBase,
    EpochBatches,
    EvalFn,
    LoopConfig,
    LoopResult,
    OptimConfig,
    TrainLoop,
    generator,
    make_optimizer,
    param_groups,
)
from .distributed import DistInfo, gather_batch, single_process, wrap_ddp


@dataclass
class Stage0Config(ConfigBase):
    """Stage 0 (LiT) settings.

    Attributes
    ----------
    loop, optim : see :class:`LoopConfig`, :class:`OptimConfig`.
    temperature : initial tau of the InfoNCE (CLIP: 0.07).
    learn_temperature : learn tau (LiT/CLIP do).
    """

    loop: LoopConfig = field(default_factory=lambda: LoopConfig(epochs=20, batch_size=256))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.05))
    temperature: float = 0.07
    learn_temperature: bool = True


class HeadLoss(nn.Module):
    """``normalise(head(features))`` fed to a loss: the unit DDP wraps (no frozen trunk in it).

    With ``dist`` distributed, the embeddings and targets of every rank are gathered first
    (:func:`~.distributed.gather_batch`): the loss sees the global batch, and gradients reach
    this rank's rows scaled so DDP's average is the single-process gradient.
    """

    def __init__(self, head: nn.Module, loss: nn.Module, dist: DistInfo | None = None) -> None:
        super().__init__()
        self.head, self.loss, self.dist = head, loss, dist

    def forward(self, features: torch.Tensor, *targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """``features`` ``[b, F]``, targets ``[b, D]`` each (this rank's rows) -> the loss dict
        over the global batch."""
        emb = F.normalize(upcast(self.head(features)), dim=-1)
        return self.loss(*(gather_batch(t, self.dist) for t in (emb, *targets)))


def pick_views(values: torch.Tensor, index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Rows ``index`` of ``values`` ``[V, N, ...]``, each from a random view -> ``[B, ...]``."""
    if values.shape[0] == 1:
        return values[0, index]
    views = torch.randint(0, values.shape[0], (index.numel(),), generator=gen)
    return values[views, index]


def train_stage0(encoder: ModalityEncoder, features: torch.Tensor, text: torch.Tensor,
                 valid: torch.Tensor, cfg: Stage0Config, *, seed: int = 0,
                 dist: DistInfo | None = None, run_dir: Path | None = None,
                 record: Mapping[str, Any] | None = None, resume: str | Path | None = None,
                 eval_fn: EvalFn | None = None, progress: bool = True) -> LoopResult:
    """Train ``encoder.head`` (in place) against frozen caption embeddings.

    Parameters
    ----------
    encoder : the image encoder (frozen trunk; its head is trained).
    features : ``[V, N, F]`` cached trunk features of the N teacher images (V views).
        ``cfg.loop.batch_size`` is the global batch (see :class:`LoopConfig`).
    text : ``[N, D]`` unit caption embeddings from the frozen text encoder.
    valid : ``[N]`` bool, samples with a usable image and caption.
    cfg : the stage config.
    seed, dist, run_dir, record, resume, eval_fn, progress : see :class:`TrainLoop`.
    """
    dist = dist or single_process()
    loss = ContrastiveLoss(temperature=cfg.temperature, learn_temperature=cfg.learn_temperature)
    model = wrap_ddp(HeadLoss(encoder.head, loss, dist), dist)
    batches = EpochBatches(torch.nonzero(valid).flatten(), cfg.loop.batch_size,
                           seed=seed, dist=dist)
    total = cfg.loop.epochs * batches.steps_per_epoch
    groups = param_groups({"image": list(encoder.head.parameters()),
                           "logit_scale": list(loss.parameters())}, cfg.optim)
    optimizer, scheduler = make_optimizer(groups, cfg.optim, total)
    loop = TrainLoop(name="stage0", modules={"image": encoder, "loss": loss}, optimizer=optimizer,
                     scheduler=scheduler, total_steps=total, seed=seed, loop=cfg.loop,
                     grad_clip=cfg.optim.grad_clip, dist=dist, run_dir=run_dir,
                     record={**(record or {}), "train": cfg.to_dict()}, progress=progress)
    device = dist.device

    def step(s: int) -> dict[str, torch.Tensor]:
        _, index = batches.at(s)
        gen = generator(seed, "stage0", s, dist.rank)
        feats = pick_views(features, index, gen).to(device, torch.float32)
        out = dict(model(feats, text[index].to(device, torch.float32)))
        out["logit_scale"] = loss.logit_scale().detach()
        return out

    model.train()
    return loop.run(step, eval_fn=eval_fn, resume=resume)
