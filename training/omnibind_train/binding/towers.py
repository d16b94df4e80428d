"""The towers of the simulated specialist spaces: small trainable networks on top of the frozen
trunks the default pipeline already caches (EfficientNet-Lite0 features, MiniLM caption
features, point clouds), plus a tiny CNN trained from scratch so one image-text space has a
genuinely different image trunk.

Every tower maps its *input kind* to ``[B, dim]`` (un-normalised; the space normalises):

=================  ==========================================================================
input kind         what the tower reads (cached once, shared by every space)
=================  ==========================================================================
``trunk``          EfficientNet-Lite0 features ``[B, 1280]`` of an image-like modality
``text``           MiniLM-L6 sentence features ``[B, 384]`` (unit norm)
``pixels``         the preprocessed image average-pooled to ``32 x 32`` (``[B, 3, 32, 32]``)
``points``         preprocessed points ``[B, P, 3]``
=================  ==========================================================================

At export the bound encoder runs the real trunk once per modality and feeds every tower, so a
tower never depends on how its input was cached.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.point import PointNetLite

__all__ = ["INPUT_KINDS", "PIXELS_SIZE", "MLPTower", "PixelsPool", "PointTower", "TinyCNNTower",
           "build_tower", "tower_input_kind"]

INPUT_KINDS = ("trunk", "text", "pixels", "points")
#: side of the pooled image the tiny CNN reads (160 / 32 = 5: an exact average pool).
PIXELS_SIZE = 32


class MLPTower(nn.Module):
    """``Linear -> LayerNorm -> GELU`` blocks and a final ``Linear`` (``layers`` linears)."""

    def __init__(self, in_dim: int, dim: int, *, hidden_dim: int = 512, layers: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_dim
        for _ in range(max(0, layers - 1)):
            blocks += [nn.Linear(width, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(),
                       nn.Dropout(dropout)]
            width = hidden_dim
        blocks.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())


class IdentityTower(nn.Module):
    """The input itself (the target space's text tower is the frozen MiniLM)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


class PixelsPool(nn.Module):
    """Average-pool a preprocessed image to ``PIXELS_SIZE`` (what the tiny CNN reads); the
    feature cache applies this same module, so training and export agree."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == (PIXELS_SIZE, PIXELS_SIZE):
            return x
        return F.adaptive_avg_pool2d(x, PIXELS_SIZE)


class TinyCNNTower(nn.Module):
    """A four-stage CNN trained from scratch on 32 x 32 images (the weak, different trunk)."""

    def __init__(self, dim: int, *, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        self.pool = PixelsPool()
        layers: list[nn.Module] = []
        c = 3
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                       nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(self.pool(x.float()))
        return self.head(h.mean(dim=(2, 3)))


class PointTower(nn.Module):
    """PointNet (trained from scratch) + MLP head over ``[B, P, 3]`` points."""

    def __init__(self, dim: int, *, widths: tuple[int, ...] = (64, 128, 256),
                 hidden_dim: int = 256) -> None:
        super().__init__()
        self.trunk = PointNetLite(widths=tuple(widths))
        self.head = MLPTower(int(widths[-1]), dim, hidden_dim=hidden_dim, layers=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x.float()))


def tower_input_kind(modality: str, spec: Mapping[str, Any]) -> str:
    """The input kind a tower spec reads (see the module docstring)."""
    kind = spec.get("kind", "mlp")
    if modality == "text":
        return "text"
    if modality == "point_cloud":
        return "points"
    return "pixels" if kind == "tiny_cnn" else "trunk"


def build_tower(modality: str, spec: Mapping[str, Any], dim: int, *, trunk_dim: int = 1280,
                text_dim: int = 384) -> nn.Module:
    """A tower from its spec dict (``kind``: mlp | identity | tiny_cnn | pointnet, + sizes)."""
    kind = spec.get("kind", "mlp")
    hidden = int(spec.get("hidden_dim", 512))
    if kind == "identity":
        if modality != "text" or dim != text_dim:
            raise ValueError(f"an identity tower needs text and dim {text_dim}, got "
                             f"{modality} dim {dim}")
        return IdentityTower()
    if kind == "tiny_cnn":
        return TinyCNNTower(dim, widths=tuple(spec.get("widths", (32, 64, 128, 256))))
    if kind == "pointnet":
        return PointTower(dim, widths=tuple(spec.get("widths", (64, 128, 256))),
                          hidden_dim=hidden)
    if kind == "mlp":
        in_dim = text_dim if modality == "text" else trunk_dim
        return MLPTower(in_dim, dim, hidden_dim=hidden, layers=int(spec.get("layers", 2)),
                        dropout=float(spec.get("dropout", 0.0)))
    raise ValueError(f"unknown tower kind {kind!r} for {modality}; expected mlp, identity, "
                     f"tiny_cnn or pointnet")
