"""A small PointNet for the point-cloud student.

Why PointNet rather than DGCNN or multi-view depth projection onto the image trunk:

* no pretrained 3D (or depth-image) weights ship in any installable wheel, so whatever encoder
  we pick is trained from scratch on scarce simulated clusters; a shared per-point MLP + max pool
  (~0.2 M parameters) is the smallest model that learns shape from a few thousand samples;
* the core preprocessing already canonicalises the cluster (ROI crop, ground removal, FPS to a
  fixed N, centring, unit sphere), which removes most of what PointNet's T-Net would learn;
* max pooling is exactly permutation invariant, costs O(N) (DGCNN's k-NN graph is O(N^2) in
  memory and needs TopK in ONNX) and exports to plain MatMul/ReduceMax ONNX for Jetson;
* multi-view projection would reuse the frozen ImageNet trunk but costs one trunk pass per view
  (6x the image cost) and renders sparse LiDAR clusters into depth images far from ImageNet's
  statistics; it remains an option to register as another trunk later.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PointNetLite(nn.Module):
    """Shared per-point MLP (Linear -> LayerNorm -> GELU) then max pooling over points.

    Parameters
    ----------
    widths : per-point feature widths; the last one is the output size.
    in_dim : coordinates per point (3: x, y, z after centring and unit-sphere scaling).
    """

    def __init__(self, *, widths: Sequence[int] = (64, 128, 256, 512), in_dim: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Linear(in_dim, width), nn.LayerNorm(width), nn.GELU()]
            in_dim = width
        self.mlp = nn.Sequential(*layers)
        self.output_dim = int(widths[-1])

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """``points`` ``[B, N, 3]`` -> global feature ``[B, widths[-1]]``."""
        return self.mlp(points).amax(dim=1)
