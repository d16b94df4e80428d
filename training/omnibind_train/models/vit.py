"""CLIP / open_clip towers that load a LOCAL checkpoint with open_clip's key names.

No CLIP weights can be downloaded here, but users who have them (OpenAI or LAION ``.safetensors``
/ ``.bin`` / ``.pt`` files from open_clip) plug them in: the modules below reproduce open_clip's
``VisionTransformer`` and CLIP text tower parameter for parameter (``visual.conv1.weight``,
``visual.transformer.resblocks.N.attn.in_proj_weight``, ``token_embedding.weight``, ...), so the
checkpoint loads with ``strict=True`` and anything unexpected fails loudly.

Not covered (strict loading rejects them): attentional pooling, ``ln_pre``-less variants, custom
HF text towers and SigLIP. Checkpoints are read with safetensors or
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn


class QuickGELU(nn.Module):
    """The sigmoid GELU approximation OpenAI's CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}; expected 'gelu' or 'quick_gelu'")


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block with open_clip's parameter names (ln_1, attn, ln_2, mlp)."""

    def __init__(self, width: int, heads: int, *, mlp_ratio: float = 4.0,
                 act: str = "gelu") -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, hidden), gelu=_activation(act), c_proj=nn.Linear(hidden, width)))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, *, mlp_ratio: float = 4.0,
                 act: str = "gelu") -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio=mlp_ratio, act=act)
            for _ in range(layers))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class VisionTransformer(nn.Module):
    """open_clip ``visual`` tower: ``[B, 3, S, S]`` -> ``[B, embed_dim]`` (class token, proj)."""

    def __init__(self, *, image_size: int = 224, patch_size: int = 32, width: int = 768,
                 layers: int = 12, heads: int = 12, mlp_ratio: float = 4.0,
                 embed_dim: int = 512, act: str = "quick_gelu") -> None:
        super().__init__()
        assert image_size % patch_size == 0, "image_size must be a multiple of patch_size"
        grid = image_size // patch_size
        scale = width ** -0.5
        self.image_size = image_size
        self.output_dim = embed_dim
        self.conv1 = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_ratio=mlp_ratio, act=act)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2:] == (self.image_size, self.image_size), (
            f"expected {self.image_size}x{self.image_size} input, got {tuple(x.shape[-2:])}")
        x = self.conv1(x).permute(0, 2, 3, 1).flatten(1, 2)  # [B, C, H, W] -> [B, H*W, C]
        cls = self.class_embedding.expand(x.shape[0], 1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class TextTransformer(nn.Module):
    """CLIP text tower: token ids ``[B, L]`` (L <= context_length) -> ``[B, embed_dim]``.

    Pools at the end-of-text token, found as the argmax of the ids (OpenAI's BPE gives EOT the
    largest id), as CLIP does.
    """

    def __init__(self, *, context_length: int = 77, vocab_size: int = 49408, width: int = 512,
                 layers: int = 12, heads: int = 8, mlp_ratio: float = 4.0, embed_dim: int = 512,
                 act: str = "quick_gelu") -> None:
        super().__init__()
        self.output_dim = embed_dim
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context_length, width))
        self.transformer = Transformer(width, layers, heads, mlp_ratio=mlp_ratio, act=act)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(width ** -0.5 * torch.randn(width, embed_dim))
        causal = torch.full((context_length, context_length), float("-inf")).triu(1)
        self.register_buffer("attn_mask", causal, persistent=False)

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attention_mask`` is accepted for interface parity and unused (causal + EOT pool)."""
        length = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:length]
        x = self.ln_final(self.transformer(x, self.attn_mask[:length, :length]))
        eot = x[torch.arange(x.shape[0], device=x.device), input_ids.argmax(dim=-1)]
        return eot @ self.text_projection


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``.safetensors`` or a weights-only torch file (no pickle code).

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` and strips a DDP ``module.`` prefix.
    """
    from ..trainers.checkpoint import reading

    path = Path(path)
    with reading(path):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def vision_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``visual.*`` entries of a CLIP state_dict, prefix removed."""
    return {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}


def text_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text-tower entries: ``text.*`` (CustomTextCLIP) or the root keys of a plain CLIP."""
    if any(k.startswith("text.") for k in state):
        return {k.removeprefix("text."): v for k, v in state.items() if k.startswith("text.")}
    skip = ("visual.", "logit_scale", "logit_bias", "attn_mask")
    return {k: v for k, v in state.items() if not k.startswith(skip)}


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], *, what: str) -> None:
    """``load_state_dict(strict=True)`` with a ``ValueError`` naming every problem."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{what}: checkpoint does not match the configured architecture: "
                         f"{err}") from None


def _layers(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def infer_vision_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture of the ``visual`` tower from tensor shapes (heads = width // 64, open_clip's
    convention; the activation cannot be inferred and is left out)."""
    vis = vision_state(state)
    width, _, patch, _ = vis["conv1.weight"].shape
    grid = math.isqrt(vis["positional_embedding"].shape[0] - 1)
    return {
        "image_size": grid * patch, "patch_size": patch, "width": width,
        "layers": _layers(vis, "transformer.resblocks."), "heads": max(width // 64, 1),
        "mlp_ratio": vis["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
        "embed_dim": vis["proj"].shape[1],
    }


def infer_text_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture of the text tower from tensor shapes (heads = width // 64)."""
    txt = text_state(state)
    vocab, width = txt["token_embedding.weight"].shape
    return {
        "context_length": txt["positional_embedding"].shape[0], "vocab_size": vocab,
        "width": width, "layers": _layers(txt, "transformer.resblocks."),
        "heads": max(width // 64, 1),
        "mlp_ratio": txt["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
        "embed_dim": txt["text_projection"].shape[1],
    }
