"""Pre-training the analogue's frozen "CLIP ViT-B/16": a small ViT and a text projection on top
of the frozen MiniLM trunk, trained CLIP-style (symmetric InfoNCE, learned temperature) on the
image-caption pairs of its own split (``teacher/train``, appearance captions), then frozen for
good. With a real checkpoint (:func:`.backbone.load_clip_visual`) this step is skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.vit import VisionTransformer
from ..trainers.common import ConfigBase, OptimConfig, make_optimizer, param_groups
from .losses import clip_loss

__all__ = ["PretrainConfig", "pretrain_clip"]


@dataclass
class PretrainConfig(ConfigBase):
    """The backbone's CLIP pre-training."""

    epochs: int = 8
    batch_size: int = 256
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), warmup_frac=0.05, grad_clip=1.0))
    caption_style: str = "appearance"


def pretrain_clip(visual: VisionTransformer, text_head: nn.Module, images: torch.Tensor,
                  text_features: torch.Tensor, cfg: PretrainConfig, *, seed: int = 0,
                  progress: bool = False) -> dict[str, list[float]]:
    """Train ``visual`` and ``text_head`` on paired ``images [N, 3, S, S]`` and text-trunk
    features ``[N, F]``; returns the loss curve. Both are frozen afterwards by the caller."""
    from tqdm import tqdm

    logit_scale = nn.Parameter(torch.tensor(1 / 0.07).log())
    visual.train()
    text_head.train()
    groups = {"visual": list(visual.parameters()), "text": list(text_head.parameters()),
              "scale": [logit_scale]}
    n = images.shape[0]
    per_epoch = max(1, n // cfg.batch_size)
    total = per_epoch * cfg.epochs
    opt, sched = make_optimizer(param_groups(groups, cfg.optim), cfg.optim, total)
    gen = torch.Generator().manual_seed(seed + 202)
    curve: list[float] = []
    bar = tqdm(total=total, desc="clip pre-training", disable=not progress, unit="step",
               dynamic_ncols=True, mininterval=1.0)
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(per_epoch):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            img = torch.nn.functional.normalize(visual(images[idx].float()), dim=-1)
            txt = torch.nn.functional.normalize(text_head(text_features[idx].float()), dim=-1)
            loss = clip_loss(img, txt, logit_scale.exp().clamp(max=100.0))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for ps in groups.values() for p in ps],
                                           cfg.optim.grad_clip or 1e9)
            opt.step()
            sched.step()
            curve.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{curve[-1]:.3f}", refresh=False)
    bar.close()
    visual.eval().requires_grad_(False)
    text_head.eval().requires_grad_(False)
    return {"loss": curve, "logit_scale": [logit_scale.exp().item()]}
