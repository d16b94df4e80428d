"""Per-modality encoders: a (usually frozen) trunk, a trainable head, L2 normalisation.

``encoder.trunk`` and ``encoder.head`` are separate on purpose: with a frozen trunk a trainer can
run the trunk once per sample, cache its features (``encode_trunk``) and train the head on the
cache (``encode_features``); ``forward`` is simply the two chained.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .efficientnet_lite import EfficientNetLite0


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts of one module (elements, not tensors)."""

    trainable: int
    total: int

    @classmethod
    def of(cls, module: nn.Module) -> ParameterCounts:
        params = list(module.parameters())
        return cls(trainable=sum(p.numel() for p in params if p.requires_grad),
                   total=sum(p.numel() for p in params))


class ImageTrunk(nn.Module):
    """EfficientNet-Lite0 features for any image-like input.

    Single-channel inputs (audio log-mel ``[B, 1, n_mels, T]``) are repeated to 3 channels and all
    inputs are optionally resized, so one ImageNet trunk serves every image-like modality.

    Parameters
    ----------
    net : the EfficientNet (classifier unused).
    resize : ``(H, W)`` to bilinearly resize to, or ``None`` to keep the input size.
    """

    def __init__(self, net: EfficientNetLite0, *, resize: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.net = net
        self.resize = tuple(resize) if resize is not None else None
        self.output_dim = net.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` with C in {1, 3} -> ``[B, 1280]``."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.resize is not None and tuple(x.shape[-2:]) != self.resize:
            x = F.interpolate(x, size=self.resize, mode="bilinear", align_corners=False)
        return self.net.features(x)


class ModalityEncoder(nn.Module):
    """``trunk -> head -> L2 normalise``: raw preprocessed input to a unit ``[B, D]`` embedding.

    Parameters
    ----------
    config : the :class:`~omnibind_train.models.registry.EncoderConfig` it was built from (kept
        so checkpoints can store it and rebuild the encoder).
    trunk : feature extractor; frozen (``requires_grad=False`` and kept in eval mode, so BatchNorm
        statistics never drift) when ``config.trunk.frozen``.
    head : trainable projection into the shared space.
    """

    def __init__(self, *, config: Any, trunk: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.modality: str = config.modality
        self.trunk = trunk
        self.head = head
        self.trunk_frozen: bool = bool(config.trunk.frozen)
        if self.trunk_frozen:
            self.trunk.requires_grad_(False)
            self.trunk.eval()
        self.tokenizer: Any = None  # set by the registry for text encoders

    @property
    def embed_dim(self) -> int:
        return int(self.config.embed_dim)

    def train(self, mode: bool = True) -> ModalityEncoder:
        super().train(mode)
        if self.trunk_frozen:
            self.trunk.eval()
        return self

    def encode_trunk(self, *inputs: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        """Trunk features ``[B, F]`` (cacheable when the trunk is frozen)."""
        return self.trunk(*inputs, **kwargs)

    def encode_features(self, features: torch.Tensor) -> torch.Tensor:
        """Head + L2 normalisation: ``[B, F]`` trunk features -> ``[B, D]`` unit embeddings."""
        return F.normalize(self.head(features), dim=-1)

    def forward(self, *inputs: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        """Preprocessed input (``[B, 3, H, W]``, ``[B, 1, n_mels, T]``, ``[B, N, 3]`` or token
        ids + attention mask) -> ``[B, D]`` unit embeddings."""
        return self.encode_features(self.encode_trunk(*inputs, **kwargs))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser should see (the head, plus the trunk if not frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_counts(self) -> dict[str, ParameterCounts]:
        """Counts for ``"trunk"``, ``"head"`` and ``"total"``."""
        return {"trunk": ParameterCounts.of(self.trunk), "head": ParameterCounts.of(self.head),
                "total": ParameterCounts.of(self)}
