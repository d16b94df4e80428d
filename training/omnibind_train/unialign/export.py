"""The graphs a UniAlign bundle carries: per modality one path ``tokenizer -> frozen ViT with
that modality's experts -> head -> unit embedding`` (the image path: CLIP's own patch
embedding and projection), and the text path ``MiniLM trunk -> frozen text projection``.

A :class:`UniAlignEncoder` looks to the bundle writer like any encoder (``config.to_dict()``,
``embed_dim``, ``tokenizer`` for text), so :func:`omnibind_train.export.export_bundle` writes,
checks (ONNX Runtime vs torch) and publishes it, and the runtime runs it by ``bundle_path``
with no code of its own. The torch fallback rebuilds it from the recorded config through
:func:`build_unialign_encoder` (``family: unialign`` in
:func:`omnibind_train.models.build.build_torch_module`).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.registry import TRUNK_KINDS
from .model import UniAlignModel, UniAlignModelConfig

__all__ = ["FAMILY", "UniAlignEncoder", "UniAlignEncoderConfig", "build_unialign_encoder"]

FAMILY = "unialign"


@dataclass
class UniAlignEncoderConfig:
    """Everything needed to rebuild one modality's path (stored in ``bundle.yaml``).

    ``model``: the :class:`UniAlignModelConfig` dict; ``trunk``: the text trunk (text only).
    """

    modality: str
    embed_dim: int
    model: dict[str, Any]
    trunk: dict[str, Any] | None = None
    family: str = FAMILY

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UniAlignEncoderConfig:
        return cls(**copy.deepcopy(dict(data)))


class UniAlignEncoder(nn.Module):
    """``preprocessed input -> unit [B, D]`` for one modality (text: token ids -> unit)."""

    def __init__(self, config: UniAlignEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.modality = config.modality
        self.embed_dim = int(config.embed_dim)
        self.model = UniAlignModel(UniAlignModelConfig.from_dict(config.model))
        self.trunk: nn.Module | None = None
        self.tokenizer: Any = None
        if config.modality == "text":
            trunk_cfg = dict(config.trunk or {})
            kind = trunk_cfg.pop("kind")
            tc = TRUNK_KINDS[kind](**trunk_cfg)
            self.trunk = tc.build(load_weights=False).requires_grad_(False).eval()
            self.tokenizer = tc.build_tokenizer() if hasattr(tc, "build_tokenizer") else None

    def train(self, mode: bool = True) -> UniAlignEncoder:
        super().train(False)        # an exported path is inference-only
        return self

    def forward(self, *inputs: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        if self.trunk is not None:
            return self.model.text(self.trunk(*inputs, **kwargs))
        return F.normalize(self.model.embed(self.modality, inputs[0]), dim=-1)


def unialign_encoder(modality: str, model: UniAlignModel, *, trunk: Mapping[str, Any] | None
                     = None, trunk_module: nn.Module | None = None, tokenizer: Any = None
                     ) -> UniAlignEncoder:
    """One modality's exportable path, sharing nothing with ``model`` (weights copied)."""
    cfg = UniAlignEncoderConfig(modality=modality, embed_dim=model.embed_dim,
                                model=model.cfg.to_dict(), trunk=dict(trunk) if trunk else None)
    enc = UniAlignEncoder.__new__(UniAlignEncoder)
    nn.Module.__init__(enc)
    enc.config, enc.modality, enc.embed_dim = cfg, modality, model.embed_dim
    enc.model = copy.deepcopy(model).eval()
    enc.trunk = trunk_module.eval() if trunk_module is not None else None
    enc.tokenizer = tokenizer
    return enc


def build_unialign_encoder(config: Mapping[str, Any]) -> UniAlignEncoder:
    """The torch fallback's builder: fresh weights, ``state_dict`` keys of the exported one."""
    return UniAlignEncoder(UniAlignEncoderConfig.from_dict(config))
