"""Shared set-up of the trainer tests: the tiny simulated data set and pipeline, synthetic data.

Every test file uses one cache directory per pytest session (``<basetemp>/omnibind_tiny``): the
data set and the feature cache are keyed by content, so whichever file runs first fills it and
the others reuse it.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "training" / "configs" / "tiny.yaml"


def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's shared cache directory for the tiny pipeline."""
    path = tmp_path_factory.getbasetemp() / "omnibind_tiny"
    path.mkdir(exist_ok=True)
    return path


def tiny_config(cache: Path, *overrides: str):  # -> PipelineConfig
    """``training/configs/tiny.yaml`` writing into ``cache`` (no progress bars)."""
    from omnibind_train.pipeline import PipelineConfig

    return PipelineConfig.from_yaml(TINY_CONFIG, [f"cache_dir={cache}", "progress=false",
                                                  *overrides])


def clustered(n: int, classes: int, dim: int, *, noise: float = 0.3, seed: int = 0,
              centres: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor,
                                                            torch.Tensor]:
    """Synthetic class-clustered unit vectors: ``(x [n, dim], labels [n], centres [C, dim])``."""
    gen = torch.Generator().manual_seed(seed)
    if centres is None:
        centres = F.normalize(torch.randn(classes, dim, generator=gen), dim=-1)
    labels = torch.arange(n) % classes
    x = centres[labels] + noise / math.sqrt(dim) * torch.randn(n, dim, generator=gen)
    return F.normalize(x, dim=-1), labels, centres


def synthetic_points(labels: torch.Tensor, points: int = 32, seed: int = 0) -> torch.Tensor:
    """``[n, points, 3]`` toy point sets whose shape depends on the label."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.randn(labels.numel(), points, 3, generator=gen)
    scale = 0.5 + (labels.float() % 3).view(-1, 1, 1) * 0.5
    return F.normalize(p, dim=-1) * scale
