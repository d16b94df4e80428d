"""One modality tower of a user's checkpoint, shaped as a bundle encoder.

An imported encoder is one tower of a published multimodal model (an open_clip CLIP, ImageBind)
rebuilt by :mod:`omnibind_train.binding.experts` with the checkpoint's own parameter names, so
it loads strictly. It looks to the bundle writer like any trained encoder (``config.to_dict()``,
``embed_dim``, a unit-norm output; the text one carries ``tokenizer``), so
:func:`omnibind_train.export.export_bundle` writes, checks and publishes it unchanged and the
runtime runs it by ``bundle_path`` with no code of its own.

Each tower is kept alone: the expert space is rebuilt with only that tower's modality and gets
the tower's slice of the loaded weights, so an exported graph (and the optional torch weights)
hold one tower, not the whole multi-gigabyte model. The config records the expert's
architecture but not its checkpoint path, so the torch fallback rebuilds the tower with fresh
weights (:func:`build_imported_encoder`) and loads the bundle's own safetensors.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..binding.experts import ExpertConfig, ExpertSpace, build_expert

__all__ = ["FAMILY", "ClipTokenizer", "ImportedEncoder", "ImportedEncoderConfig",
           "ImportedTextEncoder", "build_imported_encoder", "single_tower"]

FAMILY = "imported"


@dataclass
class ImportedEncoderConfig:
    """What rebuilds one imported tower (stored in ``bundle.yaml``).

    Attributes
    ----------
    modality : the runtime modality it embeds (``image``, ``audio``, ...).
    expert_modality : the expert's name for that tower (ImageBind's ``vision``, ...).
    expert : the expert's :class:`ExpertConfig` dict, ``checkpoint`` left out and
        ``modalities`` = [``expert_modality``].
    embed_dim : D of the model's joint space.
    source : the checkpoint the weights came from (provenance only; never read again).
    """

    modality: str
    expert_modality: str
    expert: dict[str, Any]
    embed_dim: int
    source: str = ""
    family: str = FAMILY

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImportedEncoderConfig:
        return cls(**copy.deepcopy(dict(data)))


def single_tower(space: ExpertSpace, expert_modality: str) -> ExpertSpace:
    """A copy of ``space`` built with ``expert_modality`` only, holding that tower's weights.

    The full space's state dict is filtered to the keys the one-tower space has (the names are
    the same: each family builds its towers under per-modality names), then loaded strictly.
    """
    cfg = copy.deepcopy(space.config)
    cfg.checkpoint = None
    cfg.modalities = [expert_modality]
    tower = build_expert(cfg, load_weights=False)
    state = space.state_dict()
    own = tower.state_dict()
    tower.load_state_dict({k: state[k] for k in own}, strict=True)
    return tower.eval()


class ImportedEncoder(nn.Module):
    """``preprocessed input -> the expert's tower -> L2 normalise`` (``[B, D]``)."""

    def __init__(self, config: ImportedEncoderConfig, tower: ExpertSpace | None = None,
                 tokenizer: Any = None) -> None:
        super().__init__()
        self.config = config
        self.modality = config.modality
        self.embed_dim = int(config.embed_dim)
        if tower is None:
            expert = ExpertConfig.from_dict(config.expert)
            tower = build_expert(expert, load_weights=False)
        self.tower = tower
        self.tokenizer = tokenizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        encoder = self.tower.encoders[self.config.expert_modality]
        return F.normalize(encoder(x).float(), dim=-1)


class ImportedTextEncoder(ImportedEncoder):
    """The text tower: ``(input_ids, attention_mask) -> [B, D]``. The CLIP-family text towers
    ignore the mask (causal attention, pooled at the end-of-text token, the largest id), so
    padding never changes an embedding."""

    def forward(self, input_ids: torch.Tensor,  # type: ignore[override]
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(input_ids)


def build_imported_encoder(component: str, config: Mapping[str, Any]) -> ImportedEncoder:
    """The torch fallback's builder for ``family: imported`` (fresh weights)."""
    cls = ImportedTextEncoder if component == "text" else ImportedEncoder
    return cls(ImportedEncoderConfig.from_dict(config))


class ClipTokenizer:
    """The bundle's ``tokenizer.json`` as the exporter and label embedding call it: texts ->
    ``{"input_ids", "attention_mask"}`` int64 tensors, padded with id 0 to the longest."""

    def __init__(self, directory: str | Path, *, max_length: int) -> None:
        from tokenizers import Tokenizer

        self.path = Path(directory)
        self.max_length = int(max_length)
        self._tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=self.max_length)
        self._tokenizer.enable_padding(pad_id=0, pad_token="!")

    def __call__(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self._tokenizer.encode_batch([texts] if isinstance(texts, str) else list(texts))
        return {"input_ids": torch.tensor([e.ids for e in batch], dtype=torch.long),
                "attention_mask": torch.tensor([e.attention_mask for e in batch],
                                               dtype=torch.long)}
