"""UniAlign's frozen backbone: a CLIP vision transformer whose every FFN gains a modality-aware
mixture of LoRA experts (:mod:`.moe_lora`), plus where the frozen CLIP comes from.

* :class:`BackboneConfig` / :func:`build_clip_visual`: the small CLIP ViT of the CPU analogue
  (64 px, patch 16, width 128, 4 blocks) or any open_clip ``VisionTransformer`` shape.
* :func:`load_clip_visual`: a real CLIP ViT-B/16 from a LOCAL checkpoint, in open_clip's layout
  (``visual.conv1.weight``, ``visual.transformer.resblocks.N...``) or timm's
  ``vit_base_patch16_clip_224`` layout (``patch_embed.proj.weight``, ``blocks.N.attn.qkv...``,
  renamed to open_clip's), loaded strictly.
* :class:`UniViT`: the frozen tower with the MoE-LoRA FFNs installed; a modality's tokens run
  through its experts, a modality without experts (the image path by default, as in the code)
  runs exactly the frozen CLIP.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..models.vit import (
    VisionTransformer,
    infer_vision_config,
    load_strict,
    read_checkpoint,
    vision_state,
)
from ..trainers.common import ConfigBase
from .moe_lora import MoELoRAFFN

__all__ = ["BackboneConfig", "MoEConfig", "UniViT", "build_clip_visual", "load_clip_visual",
           "timm_to_open_clip"]


@dataclass
class BackboneConfig(ConfigBase):
    """The CLIP vision tower's shape (open_clip ``VisionTransformer`` fields) and the text
    side's input width (MiniLM sentence features in the analogue).

    ``checkpoint``: a local open_clip/timm CLIP checkpoint to load instead of pre-training
    (its shape then comes from the file).
    """

    image_size: int = 64
    patch_size: int = 16
    width: int = 128
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    embed_dim: int = 128
    act: str = "gelu"
    text_dim: int = 384
    checkpoint: str | None = None


@dataclass
class MoEConfig(ConfigBase):
    """The MoE-LoRA of every block (Eq. 3-9; :mod:`.moe_lora` documents the choices).

    ``image_experts``: False (the code: the image path is exactly the frozen CLIP) or True
    (the paper's wording: image tokens get experts too).
    """

    experts: int = 2
    top_k: int = 2
    r: int = 4
    alpha: float = 32.0
    dropout: float = 0.0
    routing: str = "grouped"
    placement: str = "parallel"
    image_experts: bool = False


def build_clip_visual(cfg: BackboneConfig) -> VisionTransformer:
    return VisionTransformer(image_size=cfg.image_size, patch_size=cfg.patch_size,
                             width=cfg.width, layers=cfg.layers, heads=cfg.heads,
                             mlp_ratio=cfg.mlp_ratio, embed_dim=cfg.embed_dim, act=cfg.act)


def timm_to_open_clip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a timm ``vit_*_clip_*`` state_dict to open_clip's ``visual.*`` names."""
    out: dict[str, torch.Tensor] = {}
    simple = {"patch_embed.proj.weight": "conv1.weight", "norm_pre.weight": "ln_pre.weight",
              "norm_pre.bias": "ln_pre.bias", "norm.weight": "ln_post.weight",
              "norm.bias": "ln_post.bias"}
    block = {"norm1": "ln_1", "norm2": "ln_2", "attn.qkv.weight": "attn.in_proj_weight",
             "attn.qkv.bias": "attn.in_proj_bias", "attn.proj": "attn.out_proj",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for key, value in state.items():
        if key in simple:
            out[simple[key]] = value
        elif key == "cls_token":
            out["class_embedding"] = value.reshape(-1)
        elif key == "pos_embed":
            out["positional_embedding"] = value.reshape(value.shape[-2], value.shape[-1])
        elif key == "head.weight":
            out["proj"] = value.T.contiguous()
        elif key.startswith("blocks."):
            _, idx, rest = key.split(".", 2)
            for old, new in block.items():
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            out[f"transformer.resblocks.{idx}.{rest}"] = value
        else:
            raise ValueError(f"unexpected key {key!r} in a timm CLIP vision checkpoint")
    return {f"visual.{k}": v for k, v in out.items()}


def load_clip_visual(path: str | Path, *, act: str = "quick_gelu"
                     ) -> tuple[VisionTransformer, dict[str, torch.Tensor]]:
    """A CLIP vision tower from a local checkpoint (open_clip or timm layout), strictly loaded;
    also returns the full (open_clip-named) state for the text side. OpenAI's weights use
    QuickGELU (``act="quick_gelu"``); LAION's use GELU."""
    state = read_checkpoint(path)
    if "patch_embed.proj.weight" in state:
        state = timm_to_open_clip(state)
    shape = infer_vision_config(state)
    visual = VisionTransformer(**shape, act=act)
    load_strict(visual, vision_state(state), what=f"CLIP vision tower {path}")
    return visual, state


class UniViT(nn.Module):
    """A frozen CLIP ``VisionTransformer`` with MoE-LoRA FFNs for ``modalities``.

    ``forward(tokens, modality)`` takes a tokenizer's ``[B, L, width]`` tokens (class token
    first, positional embedding added) and returns the pooled ``[B, width]`` class token after
    ``ln_post`` (CLIP's pooling).
    """

    def __init__(self, visual: VisionTransformer, modalities: Sequence[str], moe: MoEConfig
                 ) -> None:
        super().__init__()
        visual.requires_grad_(False)
        self.visual = visual
        self.routed = list(modalities)
        opts = {"experts": moe.experts, "top_k": moe.top_k, "r": moe.r, "alpha": moe.alpha,
                "dropout": moe.dropout, "routing": moe.routing, "placement": moe.placement}
        if self.routed:
            for block in visual.transformer.resblocks:
                mlp = block.mlp
                block.mlp = MoELoRAFFN(mlp.c_fc, mlp.c_proj, mlp.gelu, self.routed, **opts)

    @property
    def width(self) -> int:
        return int(self.visual.conv1.out_channels)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's own (frozen) tokenizer: patches, class token, positional embedding."""
        v = self.visual
        x = v.conv1(images).flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).repeat(x.shape[0], 1, 1)
        return torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)

    def forward(self, tokens: torch.Tensor, modality: str) -> torch.Tensor:
        v = self.visual
        x = v.ln_pre(tokens)
        for block in v.transformer.resblocks:
            h = block.ln_1(x)
            x = x + block.attn(h, h, h, need_weights=False)[0]
            h = block.ln_2(x)
            x = x + (block.mlp(h, modality) if isinstance(block.mlp, MoELoRAFFN)
                     else block.mlp(h))
        return v.ln_post(x[:, 0])
