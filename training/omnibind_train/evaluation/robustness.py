"""Robustness to one noisy modality (Tables 12, 13): embedding noise and the sweep of a head's
accuracy over the combinations that contain the noisy modality."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models.fusion import MODALITY_SLOTS, stack_modalities
from .metrics import (
    _check_inputs,
    _slot_order,
    _subset_masks,
    enumerate_subsets,
    present_matrix,
    subset_accuracy,
)


def add_embedding_noise(emb: torch.Tensor, std: float,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise on unit embeddings, then re-normalised.

    ``emb`` ``[N, D]`` -> ``[N, D]`` unit rows. Each component gets ``N(0, (std / sqrt(D))^2)``,
    so ``std`` is the expected norm of the noise relative to the unit signal, independent of D
    (``std = 1``: noise as large as the embedding; SNR 1). ``std = 0`` returns an exact copy.
    """
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std}")
    if std == 0:
        return emb.clone()
    noise = torch.randn(emb.shape, generator=generator, dtype=emb.dtype, device="cpu")
    return F.normalize(emb + noise.to(emb.device) * (std / math.sqrt(emb.shape[-1])), dim=-1)


def replace_with_random(emb: torch.Tensor, fraction: float,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace ``round(fraction * N)`` randomly chosen rows of ``emb`` ``[N, D]`` with random unit
    vectors (uniform on the sphere); the other rows are unchanged. Returns a new tensor."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    out = emb.clone()
    count = round(fraction * emb.shape[0])
    rows = torch.randperm(emb.shape[0], generator=generator)[:count]
    noise = torch.randn(count, emb.shape[-1], generator=generator, dtype=emb.dtype)
    out[rows.to(emb.device)] = F.normalize(noise, dim=-1).to(emb.device)
    return out


def robustness_sweep(embeddings: dict[str, torch.Tensor], labels: torch.Tensor,
                     label_embeddings: torch.Tensor, head: nn.Module,
                     noise_stds: Sequence[float], *, modalities: Sequence[str] | None = None,
                     noisy_modalities: Sequence[str] | None = None, min_size: int = 2,
                     seed: int = 0, slots: Sequence[str] = MODALITY_SLOTS,
                     present: Mapping[str, torch.Tensor] | torch.Tensor | None = None,
                     ) -> dict[str, dict[float, float]]:
    """Tables 12-13 protocol: one modality made noisy, the head's top-1 over the combinations.

    For each noisy modality m and each std: m's embeddings go through
    :func:`add_embedding_noise`, and the value is the mean top-1 of ``head`` over the subsets of
    ``modalities`` with >= ``min_size`` modalities that contain m (the others are unaffected).
    The noise draw depends only on (``seed``, m), not on the head or the std, so two heads
    (trained with / without negative labels) are compared on identical noise. ``present``
    masks invalid inputs as :func:`~.metrics.evaluate_combinations` does (a pair whose noisy
    modality is invalid is fused from the rest; one with nothing valid is left out).

    Returns ``{modality: {std: acc}}`` (fractions).
    """
    modalities = list(modalities or [m for m in slots if m in embeddings])
    _check_inputs(embeddings, labels, label_embeddings, modalities)
    subsets = [s for s in enumerate_subsets(modalities, slots=slots) if len(s) >= min_size]
    usable = present_matrix(present, int(labels.shape[0]), slots)
    out: dict[str, dict[float, float]] = {}
    for m in noisy_modalities or _slot_order(modalities, slots):
        masks = _subset_masks([s for s in subsets if m in s], slots)
        out[m] = {}
        for std in noise_stds:
            gen = torch.Generator().manual_seed(seed * 1009 + list(slots).index(m))
            noisy = {**embeddings, m: add_embedding_noise(embeddings[m], float(std), gen)}
            tokens, _ = stack_modalities({k: noisy[k] for k in modalities}, slots=slots)
            acc = subset_accuracy(head, tokens, masks, labels, label_embeddings, (1,), usable)
            out[m][float(std)] = float(acc.nanmean()) if masks.shape[0] else float("nan")
    return out


def degraded_sweep(embeddings: dict[str, torch.Tensor], degraded: dict[str, torch.Tensor],
                   labels: torch.Tensor, label_embeddings: torch.Tensor, head: nn.Module, *,
                   modalities: Sequence[str] | None = None, min_size: int = 2,
                   max_size: int | None = None, slots: Sequence[str] = MODALITY_SLOTS,
                   present: Mapping[str, torch.Tensor] | None = None,
                   degraded_present: Mapping[str, torch.Tensor] | None = None,
                   ) -> dict[str, dict[str, float]]:
    """One sensor degraded: the head's top-1 over the subsets that contain it.

    For each modality m: m's embeddings are those of the same samples seen by a degraded
    sensor (``degraded``: the degraded twin data set), the others stay clean, and the value is
    the mean top-1 of ``head`` over the subsets of ``modalities`` with ``min_size`` to
    ``max_size`` (None: all) modalities that contain m, next to the same subsets all clean.
    A degraded input whose preprocessing failed is masked like an invalid clean one (the rest
    is fused).

    Returns ``{"degraded": {m: acc}, "clean": {m: acc}}`` (fractions).
    """
    modalities = list(modalities or [m for m in slots if m in embeddings])
    _check_inputs(embeddings, labels, label_embeddings, modalities)
    n = int(labels.shape[0])
    subsets = [s for s in enumerate_subsets(modalities, slots=slots)
               if min_size <= len(s) <= (max_size or len(s))]
    clean_usable = present_matrix(present, n, slots)
    tokens, _ = stack_modalities({k: embeddings[k] for k in modalities}, slots=slots)
    out: dict[str, dict[str, float]] = {"degraded": {}, "clean": {}}
    for m in _slot_order(modalities, slots):
        masks = _subset_masks([s for s in subsets if m in s], slots)
        if not masks.shape[0]:
            continue
        swapped, _ = stack_modalities({k: degraded[k] if k == m else embeddings[k]
                                       for k in modalities}, slots=slots)
        usable = clean_usable.clone() if clean_usable is not None else torch.ones(
            n, len(slots), dtype=torch.bool)
        if degraded_present is not None and m in degraded_present:
            usable[:, list(slots).index(m)] = degraded_present[m].bool()
        for key, toks, use in (("degraded", swapped, usable), ("clean", tokens, clean_usable)):
            acc = subset_accuracy(head, toks, masks, labels, label_embeddings, (1,), use)
            out[key][m] = float(acc.nanmean())
    return out
