"""The UniAlign model: modality tokenizers -> one frozen CLIP ViT with MoE-LoRA -> per-modality
head into the frozen CLIP embedding space, a KD connector per distilled modality, and the frozen
text side.

What trains (the paper: "LoRA-enhanced MoE modules and the projection head for KD"; the code
also trains tokenizers, non-image heads and the logit scale): LoRA experts, routers, tokenizers,
the extended modalities' heads, KD connectors and the logit scale. The CLIP tower, its image
projection and the text side stay frozen; :meth:`UniAlignModel.trainable_parameters` is the
one list the optimiser gets.

Heads start from CLIP's image projection (the code); the class token is pooled for every
modality (the code pools depth by the mean; all inputs here use the class token).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.vit import VisionTransformer
from ..trainers.common import ConfigBase
from .backbone import BackboneConfig, MoEConfig, UniViT, build_clip_visual
from .tokenizers import TokenizerConfig, build_tokenizer, default_tokenizers

__all__ = ["IMAGE", "UniAlignModel", "UniAlignModelConfig"]

IMAGE = "image"


@dataclass
class UniAlignModelConfig(ConfigBase):
    """Everything that shapes the model (stored with checkpoints and in ``bundle.yaml``).

    Attributes
    ----------
    backbone : the CLIP tower's shape.
    modalities : the extended modalities (each gets a tokenizer, experts, head).
    moe : the MoE-LoRA settings.
    tokenizers : per extended modality.
    input_shapes : per modality (image too), one preprocessed input's shape.
    teacher_dims : per distilled modality, its teacher's embedding size (a KD connector each).
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    modalities: list[str] = field(default_factory=lambda: [
        "thermal", "event", "audio", "tactile", "point_cloud"])
    moe: MoEConfig = field(default_factory=MoEConfig)
    tokenizers: dict[str, TokenizerConfig] = field(default_factory=default_tokenizers)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    teacher_dims: dict[str, int] = field(default_factory=dict)

    @property
    def routed(self) -> list[str]:
        """Modalities that own experts (image only when ``moe.image_experts``)."""
        return ([IMAGE] if self.moe.image_experts else []) + list(self.modalities)


class UniAlignModel(nn.Module):
    """See the module docstring. ``visual``: a pre-trained CLIP tower to freeze (default: a
    fresh one of ``cfg.backbone``'s shape, weights loaded later); ``text_head``: the frozen
    text side's projection (MiniLM features -> CLIP space in the analogue)."""

    def __init__(self, cfg: UniAlignModelConfig, visual: VisionTransformer | None = None,
                 text_head: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        visual = visual if visual is not None else build_clip_visual(cfg.backbone)
        width, embed = int(visual.conv1.out_channels), int(visual.output_dim)
        self.embed_dim = embed
        self.backbone = UniViT(visual, cfg.routed, cfg.moe)
        self.tokenizers = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        for m in cfg.modalities:
            tok = build_tokenizer(m, cfg.tokenizers[m], cfg.input_shapes[m], width)
            if hasattr(tok, "init_from_clip"):
                tok.init_from_clip(visual)
            self.tokenizers[m] = tok
            head = nn.Linear(width, embed, bias=False)
            with torch.no_grad():
                head.weight.copy_(visual.proj.T)
            self.heads[m] = head
        self.connectors = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, d))
            for m, d in cfg.teacher_dims.items() if m in cfg.modalities})
        self.text_head = text_head if text_head is not None else nn.Linear(
            cfg.backbone.text_dim, embed)
        self.text_head.requires_grad_(False)
        self.logit_scale = nn.Parameter(torch.tensor(1 / 0.07).log())

    # -- what trains ----------------------------------------------------------------------------

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Named groups of the parameters that train (everything else is frozen)."""
        lora = [p for n, p in self.backbone.named_parameters() if ".moe." in n]
        groups = {"lora_moe": lora, "tokenizers": list(self.tokenizers.parameters()),
                  "heads": list(self.heads.parameters()),
                  "connectors": list(self.connectors.parameters()),
                  "logit_scale": [self.logit_scale]}
        return {k: v for k, v in groups.items() if v}

    def freeze(self) -> UniAlignModel:
        """Set ``requires_grad`` to exactly the trainable set."""
        self.requires_grad_(False)
        for params in self.trainable_parameters().values():
            for p in params:
                p.requires_grad_(True)
        return self

    def train(self, mode: bool = True) -> UniAlignModel:
        super().train(mode)
        self.backbone.visual.eval()      # frozen: no dropout/BN updates in the tower
        self.text_head.eval()
        return self

    # -- forward --------------------------------------------------------------------------------

    def features(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Pooled ``[B, width]`` backbone features of one modality's preprocessed input."""
        if modality == IMAGE:
            tokens = self.backbone.image_tokens(x.float())
        else:
            tokens = self.tokenizers[modality](x)
        return self.backbone(tokens, modality)

    def project(self, modality: str, feats: torch.Tensor) -> torch.Tensor:
        """Unit embeddings in the CLIP space from pooled features."""
        if modality == IMAGE:
            return F.normalize(feats @ self.backbone.visual.proj, dim=-1)
        return F.normalize(self.heads[modality](feats), dim=-1)

    def embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        return self.project(modality, self.features(modality, x))

    def outputs(self, modality: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the losses read: ``emb`` (unit) and, for distilled modalities, ``kd`` (the
        connector's unit output in the teacher's space)."""
        feats = self.features(modality, x)
        out = {"emb": self.project(modality, feats)}
        if modality in self.connectors:
            out["kd"] = F.normalize(self.connectors[modality](feats), dim=-1)
        return out

    def text(self, text_features: torch.Tensor) -> torch.Tensor:
        """Unit text embeddings from the frozen text trunk's features."""
        return F.normalize(self.text_head(text_features.float()), dim=-1)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def input_shapes(preprocess_configs: Mapping[str, Mapping[str, Any]],
                 modalities: Sequence[str]) -> dict[str, list[int]]:
    """One preprocessed input's shape per modality, from the core preprocessors."""
    from omnibind_ros.core.preprocess import build_preprocessor

    return {m: list(build_preprocessor(m, dict(preprocess_configs[m])).output_shape)
            for m in modalities}
