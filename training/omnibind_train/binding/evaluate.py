"""Evaluation in the seeds' shape on the truly paired test split: cross-modal retrieval R@1/R@5 for
every modality pair, zero-shot top-1/top-5 per modality, per *row* (a way of embedding).

Rows: each individual space (only the pairs and modalities it embeds itself), Individual-Best
(per column the best individual space, as the paper's row), the FreeBind-style fixed average of
the projected spaces, and routed binding per variant and ablation.

Choices where the papers are silent:

* Retrieval is instance-level (the test split renders each instance in every modality, so the
  one true partner is known); R@k is the mean of both directions (a->b and b->a). A caption
  query/gallery uses the caption style of the other modality (sound captions with audio,
  geometry captions with LiDAR, appearance captions with images...), as a benchmark pairs
  audio with AudioCaps-style captions. Class-level R@1 (top-1 of the same class) is reported
  beside it because instances of one class can be near-identical in some sensors.
* Zero-shot classifies each non-text modality against the 18 class names in the prompt
  templates of its style (:func:`.captions.style_prompts`), embedded by the row's text side.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .bank import EmbeddingBank
from .captions import STYLE_MODALITY, STYLES, style_prompts

__all__ = ["Row", "evaluate_rows", "individual_best", "mean_metric", "retrieval_pairs"]

MODALITY_STYLE = {m: s for s, m in STYLE_MODALITY.items()}

#: A row embeds: modality -> rows of the bank (``None`` rows: all) -> [n, D] unit embeddings,
#: or None when the row does not embed that modality.
EmbedFn = Callable[[str, np.ndarray], torch.Tensor | None]
#: captions -> [n, D] unit text embeddings in the row's space (None: no text side).
TextFn = Callable[[Sequence[str]], torch.Tensor | None]


@dataclass
class Row:
    """One way of embedding the test split (a space, a fixed average, a routed variant)."""

    name: str
    embed: EmbedFn
    text: TextFn
    kind: str = "binding"                      # "individual" | "binding"
    info: dict[str, Any] = field(default_factory=dict)


def retrieval_pairs(modalities: Sequence[str]) -> list[tuple[str, str]]:
    return list(itertools.combinations(modalities, 2))


def _text_rows(bank: EmbeddingBank, other: str) -> np.ndarray:
    """Text rows of the style that goes with ``other`` (instance order)."""
    style = STYLES.index(MODALITY_STYLE.get(other, "appearance"))
    return np.flatnonzero(bank.styles == style)


def _rows_of(bank: EmbeddingBank, modality: str, partner: str) -> np.ndarray:
    if modality == "text":
        return _text_rows(bank, partner)
    return np.arange(bank.size(modality))


def _recall(q: torch.Tensor, g: torch.Tensor, q_inst: np.ndarray, g_inst: np.ndarray,
            q_lab: np.ndarray, g_lab: np.ndarray) -> dict[str, float]:
    sim = q @ g.T
    top = sim.topk(min(5, sim.shape[1]), dim=1).indices.numpy()
    hit_inst = g_inst[top] == q_inst[:, None]
    return {"R@1": float(hit_inst[:, 0].mean()), "R@5": float(hit_inst.any(axis=1).mean()),
            "cR@1": float((g_lab[top[:, 0]] == q_lab).mean())}


def retrieval(row: Row, bank: EmbeddingBank, a: str, b: str) -> dict[str, float] | None:
    """Both directions of a-b retrieval and their mean (None if the row lacks a side)."""
    ra, rb = _rows_of(bank, a, b), _rows_of(bank, b, a)
    ea, eb = row.embed(a, ra), row.embed(b, rb)
    if ea is None or eb is None:
        return None
    ia, ib = bank.instances[a][ra], bank.instances[b][rb]
    la, lb = bank.labels[a][ra], bank.labels[b][rb]
    va = np.asarray(bank.valid.get(a, np.ones(bank.size(a), bool)))[ra]
    vb = np.asarray(bank.valid.get(b, np.ones(bank.size(b), bool)))[rb]
    keep_a, keep_b = torch.from_numpy(va), torch.from_numpy(vb)
    ab = _recall(ea[keep_a], eb[keep_b], ia[va], ib[vb], la[va], lb[vb])
    ba = _recall(eb[keep_b], ea[keep_a], ib[vb], ia[va], lb[vb], la[va])
    out = {k: (ab[k] + ba[k]) / 2 for k in ab}
    out.update({f"{a}->{b} {k}": v for k, v in ab.items()})
    out.update({f"{b}->{a} {k}": v for k, v in ba.items()})
    return out


def zero_shot(row: Row, bank: EmbeddingBank, modality: str, class_names: Sequence[str]
              ) -> dict[str, float] | None:
    """Top-1/top-5 of one modality against the class prompts of its style."""
    rows = np.arange(bank.size(modality))
    emb = row.embed(modality, rows)
    if emb is None:
        return None
    templates = style_prompts(MODALITY_STYLE.get(modality, "appearance"))
    prompts = [t.format(c) for c in class_names for t in templates]
    text = row.text(prompts)
    if text is None:
        return None
    classes = F.normalize(text.view(len(class_names), len(templates), -1).mean(1), dim=-1)
    valid = np.asarray(bank.valid.get(modality, np.ones(len(rows), bool)))
    top = (emb @ classes.T).topk(5, dim=1).indices.numpy()[valid]
    labels = bank.labels[modality][valid]
    return {"top1": float((top[:, 0] == labels).mean()),
            "top5": float((top == labels[:, None]).any(axis=1).mean())}


def evaluate_rows(rows: Sequence[Row], bank: EmbeddingBank, modalities: Sequence[str],
                  class_names: Sequence[str]) -> dict[str, Any]:
    """Retrieval for every pair and zero-shot for every non-text modality, per row."""
    out: dict[str, Any] = {"pairs": [f"{a}-{b}" for a, b in retrieval_pairs(modalities)],
                           "test_size": bank.size(modalities[0]), "rows": {}}
    for row in rows:
        res: dict[str, Any] = {"kind": row.kind, "retrieval": {}, "zero_shot": {},
                               **row.info}
        for a, b in retrieval_pairs(modalities):
            r = retrieval(row, bank, a, b)
            if r is not None:
                res["retrieval"][f"{a}-{b}"] = r
        for m in modalities:
            if m == "text":
                continue
            z = zero_shot(row, bank, m, class_names)
            if z is not None:
                res["zero_shot"][m] = z
        out["rows"][row.name] = res
    out["rows"]["Individual-Best"] = individual_best(out["rows"])
    return out


def individual_best(rows: Mapping[str, Any]) -> dict[str, Any]:
    """Per column, the best individual space's numbers (and which space it was)."""
    best: dict[str, Any] = {"kind": "individual-best", "retrieval": {}, "zero_shot": {},
                            "source": {}}
    for name, res in rows.items():
        if res.get("kind") != "individual":
            continue
        for pair, r in res["retrieval"].items():
            if pair not in best["retrieval"] or r["R@1"] > best["retrieval"][pair]["R@1"]:
                best["retrieval"][pair] = r
                best["source"][pair] = name
        for m, z in res["zero_shot"].items():
            if m not in best["zero_shot"] or z["top1"] > best["zero_shot"][m]["top1"]:
                best["zero_shot"][m] = z
                best["source"][m] = name
    return best


def mean_metric(res: Mapping[str, Any], metric: str = "R@1",
                pairs: Sequence[str] | None = None) -> float:
    """Mean of a retrieval metric over ``pairs`` (default: the pairs the row has)."""
    got = res["retrieval"]
    keys = [p for p in (pairs if pairs is not None else got) if p in got]
    return float(np.mean([got[p][metric] for p in keys])) if keys else float("nan")
