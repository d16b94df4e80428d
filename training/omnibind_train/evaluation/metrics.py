"""Accuracy of fusion heads on modality subsets: subsets in slot order, batched top-k of a head
on every (subset, sample) pair, the combination tables (Tables 2, 3, 8, 9) and single-modality
zero-shot accuracy (Tables 4-6)."""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.fusion import MODALITY_SLOTS, stack_modalities

#: Canonical head order (table rows, plot colours); other head names follow, sorted.
HEAD_ORDER: tuple[str, ...] = ("af", "mean", "linear", "concat", "cls_token", "outer")
HEAD_LABELS: dict[str, str] = {"af": "AF (ours)", "mean": "Mean", "linear": "Linear",
                               "concat": "Cat", "cls_token": "CLS token",
                               "outer": "Outer product"}
#: Top-k reported; k is clipped to the number of classes.
TOP_K: tuple[int, ...] = (1, 5)
#: Elements of one ``[rows, S, D]`` token chunk fed to a head (bounds memory).
MAX_CHUNK_ELEMENTS = 1 << 23


def subset_name(modalities: Sequence[str]) -> str:
    """``("image", "text")`` -> ``"image+text"`` (the caller gives slot order)."""
    return "+".join(modalities)


def _slot_order(modalities: Sequence[str], slots: Sequence[str]) -> list[str]:
    unknown = sorted(set(modalities) - set(slots))
    if unknown:
        raise ValueError(f"modalities {unknown} have no slot in {list(slots)}")
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"duplicate modalities in {list(modalities)}")
    return [s for s in slots if s in set(modalities)]


def enumerate_subsets(modalities: Sequence[str], *,
                      slots: Sequence[str] = MODALITY_SLOTS) -> list[tuple[str, ...]]:
    """All 2^K - 1 non-empty subsets of ``modalities``, by size, then in slot order.

    Each subset is a tuple in slot order; raises ``ValueError`` for unknown or repeated names.
    """
    ordered = _slot_order(modalities, slots)
    return [c for k in range(1, len(ordered) + 1) for c in itertools.combinations(ordered, k)]


def _subset_masks(subsets: Sequence[Sequence[str]], slots: Sequence[str]) -> torch.Tensor:
    """``[M, S]`` bool: row j is True at the slots of subset j."""
    index = {name: i for i, name in enumerate(slots)}
    masks = torch.zeros(len(subsets), len(slots), dtype=torch.bool)
    for j, subset in enumerate(subsets):
        masks[j, [index[m] for m in subset]] = True
    return masks


def _check_inputs(embeddings: Mapping[str, torch.Tensor], labels: torch.Tensor,
                  label_embeddings: torch.Tensor, modalities: Sequence[str]) -> None:
    missing = [m for m in modalities if m not in embeddings]
    if missing:
        raise ValueError(f"no embeddings for {missing}")
    n, dim = labels.shape[0], label_embeddings.shape[-1]
    for m in modalities:
        if embeddings[m].shape != (n, dim):
            raise ValueError(
                f"{m}: embeddings {tuple(embeddings[m].shape)}, expected ({n}, {dim})")


def topk_correct(embeddings: torch.Tensor, label_embeddings: torch.Tensor, labels: torch.Tensor,
                 ks: Sequence[int] = TOP_K) -> torch.Tensor:
    """Whether the true label is in the top k by cosine similarity.

    ``embeddings`` ``[B, D]``, ``label_embeddings`` ``[C, D]``, ``labels`` ``[B]`` ->
    ``[len(ks), B]`` bool; each k is clipped to C.
    """
    sims = F.normalize(embeddings, dim=-1) @ F.normalize(label_embeddings, dim=-1).to(
        embeddings.dtype).T
    ranked = sims.topk(min(max(ks), sims.shape[-1]), dim=-1).indices
    hits = ranked == labels.unsqueeze(-1)
    return torch.stack([hits[:, :min(k, sims.shape[-1])].any(-1) for k in ks])


def _device_of(module: nn.Module, default: torch.device) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else default


def present_matrix(present: Mapping[str, torch.Tensor] | torch.Tensor | None, n: int,
                   slots: Sequence[str] = MODALITY_SLOTS) -> torch.Tensor | None:
    """``[N, S]`` bool of usable inputs from modality -> ``[N]`` masks (missing modalities are
    usable) or an ``[N, S]`` tensor; None stays None (everything usable)."""
    if present is None:
        return None
    if isinstance(present, torch.Tensor):
        if present.shape != (n, len(slots)):
            raise ValueError(f"present {tuple(present.shape)}, expected ({n}, {len(slots)})")
        return present.bool().cpu()
    unknown = sorted(set(present) - set(slots))
    if unknown:
        raise ValueError(f"present: modalities {unknown} have no slot in {list(slots)}")
    out = torch.ones(n, len(slots), dtype=torch.bool)
    for i, m in enumerate(slots):
        if m in present:
            if present[m].shape != (n,):
                raise ValueError(f"present[{m!r}] {tuple(present[m].shape)}, expected ({n},)")
            out[:, i] = present[m].bool().cpu()
    return out


@torch.no_grad()
def subset_hits(head: nn.Module, tokens: torch.Tensor, masks: torch.Tensor,
                labels: torch.Tensor, label_embeddings: torch.Tensor,
                ks: Sequence[int] = TOP_K, present: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k hits of ``head`` on every (subset, sample) pair, batched.

    Parameters
    ----------
    head : fusion head, ``forward(tokens [B, S, D], mask [B, S]) -> [B, D]``.
    tokens : ``[N, S, D]`` all modalities of the N samples in slot order.
    masks : ``[M, S]`` bool, one row per subset.
    labels : ``[N]`` int64; label_embeddings : ``[C, D]``.
    present : ``[N, S]`` bool, the inputs that are usable (False: the sample's preprocessing
        failed or the modality is absent). Masked out exactly as in training
        (:func:`~omnibind_train.trainers.af.make_batch`, ``fused_accuracy``): the head sees the
        subset's modalities that are present, and a pair left with none is not evaluated.

    Returns
    -------
    hits ``[len(ks), M, N]`` bool and evaluated ``[M, N]`` bool (hits are False where not
    evaluated). The head runs in eval mode (restored afterwards).
    """
    n, s, d = tokens.shape
    total = masks.shape[0] * n
    chunk = max(1, MAX_CHUNK_ELEMENTS // (s * d))
    device = _device_of(head, tokens.device)
    hits = torch.zeros(len(ks), total, dtype=torch.bool)
    evaluated = torch.zeros(total, dtype=torch.bool)
    was_training = head.training
    head.eval()
    try:
        for start in range(0, total, chunk):
            rows = torch.arange(start, min(start + chunk, total))
            sample, subset = rows % n, rows // n
            mask = masks[subset]
            if present is not None:
                mask = mask & present[sample]
            live = mask.any(dim=1)
            evaluated[rows] = live
            if not live.any():
                continue
            sample, mask, rows = sample[live], mask[live], rows[live]
            fused = head(tokens[sample].to(device), mask.to(device))
            correct = topk_correct(fused, label_embeddings.to(device), labels[sample].to(device),
                                   ks)
            hits[:, rows] = correct.cpu()
    finally:
        head.train(was_training)
    return hits.view(len(ks), masks.shape[0], n), evaluated.view(masks.shape[0], n)


def hit_rate(hits: torch.Tensor, evaluated: torch.Tensor) -> torch.Tensor:
    """``[K, M]`` accuracies over the evaluated pairs (NaN for a subset with none)."""
    count = evaluated.sum(-1).float()
    return torch.where(count > 0, hits.sum(-1).float() / count.clamp_min(1.0),
                       torch.full_like(count, float("nan")))


@torch.no_grad()
def subset_accuracy(head: nn.Module, tokens: torch.Tensor, masks: torch.Tensor,
                    labels: torch.Tensor, label_embeddings: torch.Tensor,
                    ks: Sequence[int] = TOP_K, present: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Top-k accuracy of ``head`` on every mask row, batched over (subset, sample) pairs.

    Arguments as :func:`subset_hits`. Returns ``[len(ks), M]`` float accuracies over the
    evaluated pairs (all of them without ``present``; NaN for a subset with none).
    """
    return hit_rate(*subset_hits(head, tokens, masks, labels, label_embeddings, ks, present))


def _ordered_heads(heads: Mapping[str, nn.Module]) -> list[str]:
    return [h for h in HEAD_ORDER if h in heads] + sorted(set(heads) - set(HEAD_ORDER))


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def evaluate_combinations(embeddings: dict[str, torch.Tensor], labels: torch.Tensor,
                          label_embeddings: torch.Tensor, heads: dict[str, nn.Module],
                          modalities: list[str], *,
                          slots: Sequence[str] = MODALITY_SLOTS,
                          present: Mapping[str, torch.Tensor] | torch.Tensor | None = None
                          ) -> dict:
    """Every non-empty subset of ``modalities``, fused by every head (Tables 2, 3, 8, 9).

    Parameters
    ----------
    embeddings : modality -> ``[N, D]`` L2-normalised test embeddings; row i of every modality
        observes the same object.
    labels : ``[N]`` int64 class indices.
    label_embeddings : ``[C, D]`` label-prompt embeddings.
    heads : name -> fusion head (``"af"``, ``"mean"``, ``"linear"``, ``"concat"``; any subset).
    modalities : the K modalities to combine (2^K - 1 subsets).
    slots : slot order of the tokens (must match the slot-based heads' ``num_slots``).
    present : modality -> ``[N]`` bool (or ``[N, S]``), False where the sample's input is
        invalid (preprocessing failed) or absent. Masked as in training: a subset is fused
        from its present modalities, and a sample with none of them is left out of that
        subset's accuracy (``num_evaluated``). None: every input is used.

    Returns
    -------
    ``{"modalities", "heads", "num_samples", "num_classes", "top_k",
    "subsets": {name: {"modalities", "size", "num_evaluated", "top1": {head: acc},
    "top5": {...}}},
    "by_size": {"top1": {head: {"1": acc, ...}}, "top5": ...},
    "avg_ge2": {"top1": {head: acc | None}, "top5": ...}, "avg_all": {...},
    "deltas": {"af_minus_linear": ..., "af_minus_mean": ..., "af_minus_concat": ...}}``;
    by-size values are means over the subsets of that size, ``avg_ge2`` the mean over all
    subsets of >= 2 modalities (None when K = 1), deltas are top-1 ``avg_ge2`` differences.
    """
    _check_inputs(embeddings, labels, label_embeddings, modalities)
    subsets = enumerate_subsets(modalities, slots=slots)
    tokens, _ = stack_modalities({m: embeddings[m] for m in modalities}, slots=slots)
    masks = _subset_masks(subsets, slots)
    usable = present_matrix(present, int(labels.shape[0]), slots)
    names = _ordered_heads(heads)
    runs = {h: subset_hits(heads[h], tokens, masks, labels, label_embeddings, TOP_K, usable)
            for h in names}
    acc = {h: hit_rate(*run) for h, run in runs.items()}
    counts = (masks.any(dim=1, keepdim=True).expand(-1, labels.shape[0]) if usable is None
              else (masks[:, None, :] & usable[None]).any(-1)).sum(-1)
    metrics = [f"top{k}" for k in TOP_K]
    per_subset = {
        subset_name(sub): {"modalities": list(sub), "size": len(sub),
                           "num_evaluated": int(counts[j]),
                           **{met: {h: float(acc[h][i, j]) for h in names}
                              for i, met in enumerate(metrics)}}
        for j, sub in enumerate(subsets)}
    result = {"modalities": list(subsets[-1]), "heads": names, "num_samples": int(labels.shape[0]),
              "num_classes": int(label_embeddings.shape[0]),
              "top_k": {met: min(k, int(label_embeddings.shape[0]))
                        for met, k in zip(metrics, TOP_K, strict=True)},
              "subsets": per_subset}
    result.update(aggregate_subsets(per_subset, names, metrics))
    return result


def aggregate_subsets(per_subset: Mapping[str, Mapping[str, Any]], heads: Sequence[str],
                      metrics: Sequence[str] = ("top1", "top5")) -> dict[str, Any]:
    """``by_size``, ``avg_ge2``, ``avg_all`` and ``deltas`` from per-subset accuracies."""
    sizes = sorted({int(rec["size"]) for rec in per_subset.values()})

    def values(met: str, head: str, keep: Callable[[int], bool]) -> list[float]:
        # a subset with no evaluated sample (every input invalid) has NaN: left out
        return [rec[met][head] for rec in per_subset.values()
                if keep(int(rec["size"])) and math.isfinite(rec[met][head])]

    out: dict[str, Any] = {"by_size": {}, "avg_ge2": {}, "avg_all": {}}
    for met in metrics:
        out["by_size"][met] = {h: {str(k): _mean(values(met, h, lambda s, k=k: s == k))
                                   for k in sizes} for h in heads}
        out["avg_ge2"][met] = {h: _mean(values(met, h, lambda s: s >= 2)) for h in heads}
        out["avg_all"][met] = {h: _mean(values(met, h, lambda s: True)) for h in heads}
    ge2 = out["avg_ge2"]["top1"]
    out["deltas"] = {f"af_minus_{b}": (None if ge2["af"] is None else ge2["af"] - ge2[b])
                     for b in heads if b != "af" and "af" in heads}
    return out


@torch.no_grad()
def zero_shot_accuracy(embeddings: dict[str, torch.Tensor], labels: torch.Tensor,
                       label_embeddings: torch.Tensor,
                       present: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Single-modality zero-shot top-1 (cosine vs ``label_embeddings`` ``[C, D]``).

    ``embeddings``: modality -> ``[N, D]``; ``labels`` ``[N]``; ``present``: modality -> ``[N]``
    bool, invalid inputs left out (as in training's validation zero-shot; NaN if none is
    valid). Keys in slot order, then any modality without a slot in insertion order.
    """
    out = {}
    for m in in_slot_order(embeddings):
        ok = topk_correct(embeddings[m], label_embeddings.to(embeddings[m].device),
                          labels.to(embeddings[m].device), (1,))[0].cpu()
        if present is not None and m in present:
            ok = ok[present[m].bool().cpu()]
        out[m] = float(ok.float().mean()) if ok.numel() else float("nan")
    return out


def in_slot_order(names: Iterable[str]) -> list[str]:
    """``names`` in ``MODALITY_SLOTS`` order, then any name without a slot in given order."""
    names = list(names)
    return ([m for m in MODALITY_SLOTS if m in names]
            + [m for m in names if m not in MODALITY_SLOTS])
