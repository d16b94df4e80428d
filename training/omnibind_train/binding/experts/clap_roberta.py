"""LAION-CLAP's RoBERTa text branch (``text_branch``): HF ``RobertaModel`` parameter for
parameter, published names. :mod:`.clap` (the family module) builds the space.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RobertaModel"]


# --- RoBERTa text branch -----------------------------------------------------------------------

class _RobertaEmbeddings(nn.Module):
    def __init__(self, vocab: int, positions: int, types: int, width: int, eps: float,
                 pad_id: int) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.word_embeddings = nn.Embedding(vocab, width, padding_idx=pad_id)
        self.position_embeddings = nn.Embedding(positions, width, padding_idx=pad_id)
        self.token_type_embeddings = nn.Embedding(types, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        keep = input_ids.ne(self.pad_id).long()
        pos = torch.cumsum(keep, dim=1) * keep + self.pad_id  # RoBERTa: positions start at pad+1
        x = (self.word_embeddings(input_ids) + self.position_embeddings(pos)
             + self.token_type_embeddings(torch.zeros_like(input_ids)))
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        split = lambda t: t.view(b, n, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5 + bias
        return (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)


class _DenseLN(nn.Module):
    """``dense`` + residual + ``LayerNorm`` (BERT's ``*Output`` modules)."""

    def __init__(self, d_in: int, width: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, eps: float) -> None:
        super().__init__()
        self.self = _SelfAttention(width, heads)
        self.output = _DenseLN(width, width, eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, bias), x)


class _Intermediate(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.attention = _Attention(width, heads, eps)
        self.intermediate = _Intermediate(width, hidden)
        self.output = _DenseLN(hidden, width, eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, bias)
        return self.output(self.intermediate(x), x)


class _Encoder(nn.Module):
    def __init__(self, layers: int, width: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(width, heads, hidden, eps) for _ in range(layers))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, bias)
        return x


class _Pooler(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class RobertaModel(nn.Module):
    """HF ``RobertaModel`` (post-LN BERT) parameter for parameter; forward -> ``pooler_output``."""

    def __init__(self, a: Mapping[str, Any]) -> None:
        super().__init__()
        width = int(a["text_width"])
        self.pad_id = int(a["text_pad_id"])
        self.embeddings = _RobertaEmbeddings(
            int(a["text_vocab_size"]), int(a["text_max_positions"]),
            int(a["text_type_vocab_size"]), width, float(a["text_ln_eps"]), self.pad_id)
        self.encoder = _Encoder(int(a["text_layers"]), width, int(a["text_heads"]),
                                int(a["text_mlp_dim"]), float(a["text_ln_eps"]))
        self.pooler = _Pooler(width)

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = input_ids.ne(self.pad_id)
        x = self.embeddings(input_ids)
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        return self.pooler(self.encoder(x, bias))
