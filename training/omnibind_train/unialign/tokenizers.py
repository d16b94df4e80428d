"""UniAlign's trainable modality tokenizers: each maps a runtime-preprocessed input to
``[B, 1 + L, width]`` tokens (class token first, positional embedding added) for the frozen ViT.

=============  ============================================  =====================================
modality       input (core preprocessing)                    tokenizer
=============  ============================================  =====================================
thermal        ``[3, S, S]`` (one value, replicated)         1-channel patch conv (channel 0)
event          ``[3, S, S]`` (ON, OFF, ON - OFF)             3-channel 8 px patch conv
tactile        ``[3, S, S]`` (signed difference)             3-channel patch conv
audio          ``[1, mels, frames]`` log-mel                 overlapping 2-D patches
point_cloud    ``[P, 3]`` on the unit sphere                 FPS centres + kNN groups,
                                                             mini-PointNet + positional MLP
=============  ============================================  =====================================

The image path uses the frozen CLIP patch embedding (:meth:`.backbone.UniViT.image_tokens`).

Choice (the code initialises these randomly): an image-like tokenizer whose grid equals CLIP's
starts from CLIP's patch embedding summed over the RGB channels it replaces, and from CLIP's
positional embedding; with a few hundred labelled samples per modality that start matters.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..models.vit import VisionTransformer
from ..trainers.common import ConfigBase

__all__ = ["PatchTokenizer", "PointTokenizer", "TokenizerConfig", "build_tokenizer",
           "farthest_points"]


@dataclass
class TokenizerConfig(ConfigBase):
    """Per-modality tokenizer settings (``kind``: ``patch`` or ``point``)."""

    kind: str = "patch"
    channels: list[int] = field(default_factory=lambda: [0, 1, 2])
    patch: int = 16
    stride: int = 16
    groups: int = 16
    group_size: int = 32
    point_widths: list[int] = field(default_factory=lambda: [128, 256, 512])


def default_tokenizers() -> dict[str, TokenizerConfig]:
    """The analogue's tokenizers (the point one is smaller than the code's 64 groups of 32
    and (128, 256, 512) widths: 512 points on two CPU cores).

    Event frames use 8 px patches (an 8 x 8 grid, 64 tokens; randomly initialised since the
    grid is not CLIP's): with CLIP's 16 px patches a 64 px frame is 16 tokens, too coarse for
    the outlines that are all an event camera sees of a moving object (the paper's 224 px
    frames give 196 tokens of 16 px). They read all three channels: ON and OFF sit at -1
    almost everywhere, ON - OFF is zero-mean; the same function class, but without the third
    channel the conv did not learn (measured on the simulated world, 636 steps: event
    zero-shot top-1 at chance, 5.6 %, with (ON, OFF) at 8 px; 9.8 % with all three at 16 px;
    13.9 % with all three at 8 px, for 1.36x the training time)."""
    return {"thermal": TokenizerConfig(channels=[0]),
            "event": TokenizerConfig(channels=[0, 1, 2], patch=8, stride=8),
            "tactile": TokenizerConfig(channels=[0, 1, 2]),
            "audio": TokenizerConfig(channels=[0], patch=16, stride=12),
            "point_cloud": TokenizerConfig(kind="point", groups=16, group_size=16,
                                           point_widths=[64, 128, 256])}


class PatchTokenizer(nn.Module):
    """Patch conv over the selected channels of a ``[B, C, H, W]`` input, class token and a
    learned positional embedding (overlapping when ``stride < patch``)."""

    def __init__(self, channels: Sequence[int], patch: int, stride: int,
                 input_hw: tuple[int, int], width: int) -> None:
        super().__init__()
        self.register_buffer("channels", torch.tensor(list(channels), dtype=torch.long),
                             persistent=False)
        self.conv = nn.Conv2d(len(channels), width, patch, stride=stride, bias=False)
        gh = (input_hw[0] - patch) // stride + 1
        gw = (input_hw[1] - patch) // stride + 1
        if gh < 1 or gw < 1:
            raise ValueError(f"input {input_hw} is smaller than one {patch}px patch")
        self.grid = (gh, gw)
        scale = width ** -0.5
        self.cls = nn.Parameter(scale * torch.randn(width))
        self.pos = nn.Parameter(scale * torch.randn(gh * gw + 1, width))

    def init_from_clip(self, visual: VisionTransformer) -> bool:
        """Start from CLIP's patch embedding and positional embedding when the grid matches."""
        conv = visual.conv1
        if conv.kernel_size != self.conv.kernel_size or conv.stride != self.conv.stride or \
                visual.positional_embedding.shape != self.pos.shape:
            return False
        with torch.no_grad():
            w = conv.weight.sum(1, keepdim=True) / len(self.channels)
            self.conv.weight.copy_(w.expand_as(self.conv.weight))
            self.pos.copy_(visual.positional_embedding)
            self.cls.copy_(visual.class_embedding)
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.float().index_select(1, self.channels)).flatten(2).transpose(1, 2)
        cls = self.cls.view(1, 1, -1).repeat(x.shape[0], 1, 1)   # (expand(-1) breaks ONNX)
        return torch.cat([cls, x], dim=1) + self.pos


class PointTokenizer(nn.Module):
    """``[B, P, 3]`` -> FPS ``groups`` centres, the ``group_size`` nearest points of each
    (relative to the centre), a mini-PointNet per group (``widths`` (a, b, c): 3 -> a -> b,
    max-pool, concat -> c -> width; the code's is (128, 256, 512)) plus a positional MLP of the
    centre (3 -> 128 -> width); class token."""

    def __init__(self, groups: int, group_size: int, width: int,
                 widths: Sequence[int] = (128, 256, 512)) -> None:
        super().__init__()
        self.groups, self.group_size = int(groups), int(group_size)
        a, b, c = (int(w) for w in widths)
        self.first = nn.Sequential(nn.Conv1d(3, a, 1), nn.BatchNorm1d(a), nn.ReLU(),
                                   nn.Conv1d(a, b, 1))
        self.second = nn.Sequential(nn.Conv1d(2 * b, c, 1), nn.BatchNorm1d(c), nn.ReLU(),
                                    nn.Conv1d(c, width, 1))
        self.pos_mlp = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, width))
        scale = width ** -0.5
        self.cls = nn.Parameter(scale * torch.randn(width))
        self.cls_pos = nn.Parameter(scale * torch.randn(width))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        xyz = points.float()[..., :3]
        g, m = self.groups, self.group_size
        centres = _gather_points(xyz, farthest_points(xyz, g))               # [B, G, 3]
        d = (centres.pow(2).sum(-1, keepdim=True) - 2 * centres @ xyz.transpose(1, 2)
             + xyz.pow(2).sum(-1).unsqueeze(1))                              # [B, G, P]
        nbr = d.topk(m, dim=-1, largest=False).indices                       # [B, G, M]
        groups = _gather_points(xyz, nbr.flatten(1)).unflatten(1, (g, m)) \
            - centres.unsqueeze(2)                                           # [B, G, M, 3]
        f = self.first(groups.flatten(0, 1).transpose(1, 2))                # [BG, b, M]
        f = torch.cat([f.amax(dim=2, keepdim=True).expand(f.shape[0], f.shape[1], m), f], dim=1)
        tokens = self.second(f).amax(dim=2).unflatten(0, (-1, g)) + self.pos_mlp(centres)
        cls = (self.cls + self.cls_pos).view(1, 1, -1).repeat(tokens.shape[0], 1, 1)
        return torch.cat([cls, tokens], dim=1)


def _gather_points(xyz: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``xyz [B, P, 3]`` at ``idx [B, K]`` -> ``[B, K, 3]`` (a gather: exports with a dynamic
    batch, unlike indexing with ``arange(B)``)."""
    return xyz.gather(1, idx.unsqueeze(-1).expand(idx.shape[0], idx.shape[1], xyz.shape[-1]))


def farthest_points(xyz: torch.Tensor, num: int) -> torch.Tensor:
    """``[B, P, 3]`` -> ``[B, num]`` farthest-point-sampling indices starting at point 0 (the
    same picks as :func:`..binding.experts.uni3d.farthest_point_sample` with every point
    eligible), written with gathers so the ONNX graph keeps a dynamic batch."""
    far = torch.zeros_like(xyz[:, :1, 0], dtype=torch.long)                 # [B, 1]
    dist = torch.full_like(xyz[..., 0], float("inf"))                        # [B, P]
    picks = []
    for _ in range(num):
        picks.append(far)
        d = (xyz - _gather_points(xyz, far)).pow(2).sum(-1)
        dist = torch.minimum(dist, d)
        far = dist.argmax(-1, keepdim=True)
    return torch.cat(picks, dim=1)


def build_tokenizer(modality: str, cfg: TokenizerConfig | Mapping[str, Any],
                    input_shape: Sequence[int], width: int) -> nn.Module:
    """A modality's tokenizer for inputs of ``input_shape`` (one sample, no batch axis)."""
    cfg = cfg if isinstance(cfg, TokenizerConfig) else TokenizerConfig.from_dict(dict(cfg))
    if cfg.kind == "point":
        return PointTokenizer(cfg.groups, cfg.group_size, width, cfg.point_widths)
    if cfg.kind == "patch":
        return PatchTokenizer(cfg.channels, cfg.patch, cfg.stride,
                              (int(input_shape[-2]), int(input_shape[-1])), width)
    raise ValueError(f"unknown tokenizer kind {cfg.kind!r} for {modality!r}")
