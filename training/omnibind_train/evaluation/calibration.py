"""Calibration of the fused answers: the temperature the bundle ships and its reliability report.

The runtime's confidence is the best label's probability under ``softmax(logit_scale * cos /
T)`` (:mod:`omnibind_ros.core.calibration`, the same code here and there). ``T`` is fitted on the
*validation* split and judged on the *test* split, over every (sample, modality subset) pair of
the fused evaluation (:func:`~omnibind_train.evaluation.metrics.subset_hits`' pairs: every
non-empty subset of the evaluated modalities, the inputs whose preprocessing failed masked out).
Choice: all subsets weigh the same, like the combination tables, although a robot mostly fuses
four to six sensors; the report gives the ECE per subset size so the effect of that choice is
visible, and one temperature per size was not worth a runtime rule (sizes above four differ by
less than the bins' noise on the simulated world).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from omnibind_ros.core.calibration import fit_temperature, reliability, softmax

from ..models.fusion import MODALITY_SLOTS
from .metrics import MAX_CHUNK_ELEMENTS, _device_of, enumerate_subsets, present_matrix

__all__ = ["FusedLogits", "calibration_report", "fused_logits"]


class FusedLogits:
    """Scaled label logits of fused (sample, subset) pairs: ``logits [P, C]``, ``labels [P]``,
    ``sizes [P]`` (modalities fused, after masking)."""

    def __init__(self, logits: np.ndarray, labels: np.ndarray, sizes: np.ndarray) -> None:
        self.logits, self.labels, self.sizes = logits, labels, sizes

    def confidence(self, temperature: float = 1.0) -> np.ndarray:
        return softmax(self.logits, temperature).max(axis=1)

    @property
    def correct(self) -> np.ndarray:
        return self.logits.argmax(axis=1) == self.labels


@torch.no_grad()
def fused_logits(head: nn.Module, embeddings: Mapping[str, torch.Tensor], labels: torch.Tensor,
                 label_embeddings: torch.Tensor, logit_scale: float,
                 modalities: Sequence[str], *, present: Mapping[str, torch.Tensor] | None = None,
                 slots: Sequence[str] = MODALITY_SLOTS) -> FusedLogits:
    """``logit_scale * cos(head(subset), labels)`` for every subset of ``modalities`` and every
    sample (pairs left with no usable input are skipped)."""
    n = int(labels.shape[0])
    dim = int(label_embeddings.shape[1])
    tokens = torch.stack([embeddings[m] if m in embeddings else torch.zeros(n, dim)
                          for m in slots], dim=1).float()
    subsets = enumerate_subsets(list(modalities))
    masks = torch.tensor([[s in subset for s in slots] for subset in subsets])
    usable = present_matrix(present, n, slots)
    labels_unit = torch.nn.functional.normalize(label_embeddings.float(), dim=-1)
    device = _device_of(head, tokens.device)
    chunk = max(1, MAX_CHUNK_ELEMENTS // (len(slots) * dim))
    out_logits, out_labels, out_sizes = [], [], []
    was_training = head.training
    head.eval()
    try:
        pairs = torch.arange(masks.shape[0] * n)
        for rows in pairs.split(chunk):
            sample, subset = rows % n, rows // n
            mask = masks[subset] & (usable[sample] if usable is not None else True)
            live = mask.any(dim=1)
            if not live.any():
                continue
            sample, mask = sample[live], mask[live]
            fused = head(tokens[sample].to(device), mask.to(device))
            cos = torch.nn.functional.normalize(fused.float(), dim=-1) @ labels_unit.to(device).T
            out_logits.append((logit_scale * cos).double().cpu().numpy())
            out_labels.append(labels[sample].cpu().numpy())
            out_sizes.append(mask.sum(dim=1).cpu().numpy())
    finally:
        head.train(was_training)
    if not out_logits:
        raise ValueError("no (sample, subset) pair has a usable input")
    return FusedLogits(np.concatenate(out_logits), np.concatenate(out_labels).astype(np.int64),
                       np.concatenate(out_sizes).astype(np.int64))


def calibration_report(fit: FusedLogits, test: FusedLogits) -> dict[str, Any]:
    """The temperature fitted on ``fit`` and the reliability of ``test`` before and after it,
    overall and per subset size (ECE only)."""
    temperature = fit_temperature(fit.logits, fit.labels)
    correct = test.correct
    before = reliability(test.confidence(), correct)
    after = reliability(test.confidence(temperature), correct)
    by_size = {}
    for size in np.unique(test.sizes):
        keep = test.sizes == size
        by_size[int(size)] = {
            "pairs": int(keep.sum()), "accuracy": float(correct[keep].mean()),
            "ece_before": reliability(test.confidence()[keep], correct[keep]).ece,
            "ece_after": reliability(test.confidence(temperature)[keep], correct[keep]).ece}
    return {"temperature": temperature, "fit_pairs": int(fit.labels.size),
            "test_pairs": int(test.labels.size), "before": before.to_dict(),
            "after": after.to_dict(), "by_size": by_size}
