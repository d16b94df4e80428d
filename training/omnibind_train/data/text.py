"""Text embeddings of captions and label prompts (core text normalisation, then the model)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from omnibind_ros.core.preprocess import build_config
from omnibind_ros.core.preprocess.text import normalize_text


@torch.inference_mode()
def embed_texts(text_encoder: torch.nn.Module, texts: Sequence[str],
                text_config: Mapping[str, Any], *, batch_size: int = 256,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Unit text embeddings ``[N, D]`` of ``texts`` (core text normalisation, then the model)."""
    cfg = build_config("text", dict(text_config))
    tokenizer = text_encoder.tokenizer
    out = []
    for start in range(0, len(texts), batch_size):
        batch = [normalize_text(t, cfg) for t in texts[start:start + batch_size]]
        tokens = {k: v.to(device) for k, v in tokenizer(batch).items()}
        out.append(text_encoder(**tokens).float().cpu())
    return torch.cat(out)


def label_embeddings(text_encoder: torch.nn.Module, class_names: Sequence[str],
                     text_config: Mapping[str, Any], *,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Label embeddings ``[C, D]``: mean over the prompt templates, L2-normalised.

    Prompts come from :func:`omnibind_ros.sim.text.label_prompts` with the text config's
    ``prompt_templates``.
    """
    from omnibind_ros.sim.text import label_prompts

    prompts = label_prompts(class_names, text_config["prompt_templates"])
    flat = [p for name in class_names for p in prompts[name]]
    emb = embed_texts(text_encoder, flat, text_config, device=device)
    emb = emb.view(len(class_names), -1, emb.shape[-1]).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1)
