"""Training the binding: projectors on pseudo pairs (Eq. 1-2), then routers (Eq. 5-7).

Stage 1 (:func:`train_projectors`): every bound space's projector psi maps each of its
modalities' embeddings into the target space, contrasted (Eq. 2, tau = 0.03) with the target
space's *text* and *image* embeddings of the same tuple ("contrastive loss between all pairs of
involved modalities", Eq. 1). The spaces' losses are independent, so all projectors train in
one loop.

Stage 2 (:func:`train_routers`): projectors frozen (the released inference code computes them
under ``no_grad`` inside the router; ``train_projectors: true`` unfreezes them), one router per
modality trained with ``L_align`` over every modality pair of the tuples (Eq. 5) plus
``lambda * L_dec`` (Eq. 6-7, lambda = 3) on the text router, whose target y_j says whether the
tuple's caption came from the corpus text encoder j was trained on.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..trainers.common import ConfigBase
from .bank import EmbeddingBank
from .losses import BINDING_TEMPERATURE, decoupling_loss, info_nce, overall_alignment_loss
from .model import BindingModel
from .pseudo_pairs import PseudoTuples

__all__ = ["ProjectorTraining", "RouterTraining", "corpus_targets", "train_projectors",
           "train_routers"]


@dataclass
class ProjectorTraining(ConfigBase):
    """Stage 1 settings (``heads``/``hidden_dim`` size every projector)."""

    heads: int = 3
    hidden_dim: int = 512
    tau: float = BINDING_TEMPERATURE
    epochs: int = 15
    lr: float = 1.0e-3
    weight_decay: float = 1.0e-4
    batch_size: int = 256
    anchors: list[str] = field(default_factory=lambda: ["text", "image"])


@dataclass
class RouterTraining(ConfigBase):
    """Stage 2 settings.

    Attributes
    ----------
    lam : lambda of Eq. 7.
    use_dec : add L_dec (False: the L_align-only ablation).
    align_reduction : ``"sum"`` over pairs (Eq. 5) or ``"mean"``.
    train_projectors : also update the projectors in stage 2.
    """

    lam: float = 3.0
    use_dec: bool = True
    tau: float = BINDING_TEMPERATURE
    epochs: int = 30
    lr: float = 1.0e-3
    weight_decay: float = 1.0e-4
    batch_size: int = 256
    align_reduction: str = "sum"
    train_projectors: bool = False


def _schedule(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps)
                                                                      / steps)))


def _batches(n: int, batch_size: int, epochs: int, gen: torch.Generator):
    bs = min(batch_size, n)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(max(1, n // bs)):
            yield order[s * bs:(s + 1) * bs]


def _rows(tuples: PseudoTuples, modality: str, idx: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(tuples.index[modality])[idx]


def train_projectors(model: BindingModel, bank: EmbeddingBank, tuples: PseudoTuples,
                     cfg: ProjectorTraining, *, seed: int = 0, progress: bool = False
                     ) -> list[float]:
    """Eq. 1 for every non-target space of ``model`` on the tuples; returns the loss curve."""
    from tqdm import tqdm

    target = model.target.name
    spaces = [s for s in model.spaces if s != target]
    if not spaces:
        return []
    params = [p for s in spaces for p in model.projectors[s].parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(tuples)
    steps = cfg.epochs * max(1, n // min(cfg.batch_size, n))
    sched = _schedule(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    model.train()
    for idx in tqdm(_batches(n, cfg.batch_size, cfg.epochs, gen), total=steps,
                    desc="projectors", disable=not progress, unit="step", mininterval=1.0):
        anchors = {a: bank.emb[target][a][_rows(tuples, a, idx)] for a in cfg.anchors}
        loss = torch.zeros(())
        for s in spaces:
            for m in model.spaces[s].modalities:
                projected = model.project(s, bank.emb[s][m][_rows(tuples, m, idx)])
                for ref in anchors.values():
                    loss = loss + info_nce(projected, ref, cfg.tau)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss))
    model.eval()
    return losses


def corpus_targets(styles: np.ndarray, space_corpus: Sequence[int]) -> torch.Tensor:
    """L_dec's y: ``[N, M]``, 1 where caption n's style is text encoder j's training corpus."""
    return torch.from_numpy(np.asarray(styles)[:, None] == np.asarray(space_corpus)[None, :]
                            ).float()


@torch.no_grad()
def project_bank(model: BindingModel, bank: EmbeddingBank) -> dict[str, torch.Tensor]:
    """``[N_m, S, D]`` projections of every bank row of every modality (frozen projectors)."""
    model.projectors.eval()
    return {m: model.projected(m, bank.raw(m, None, spaces=model.slots[m]))
            for m in model.modalities if m in bank.instances}


def route_tuples(model: BindingModel, bank: EmbeddingBank, tuples: PseudoTuples,
                 idx: torch.Tensor, projected: Mapping[str, torch.Tensor] | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Bound embeddings of a batch of tuples per modality, and each router's gate
    (``projected``: :func:`project_bank`'s output, when the projectors are frozen)."""
    bound, gates = {}, {}
    for m in model.modalities:
        if m not in tuples.index:
            continue
        rows = _rows(tuples, m, idx)
        raw = bank.raw(m, rows, spaces=model.slots[m])
        if projected is None:
            bound[m], _, gates[m] = model.route(m, raw)
        else:
            present = model.present_mask(m, raw)
            bound[m], _, gates[m] = model.route_projected(m, projected[m][rows], present, raw)
    return bound, gates


def train_routers(model: BindingModel, bank: EmbeddingBank, tuples: PseudoTuples,
                  cfg: RouterTraining, *, space_corpus: Mapping[str, int], seed: int = 0,
                  progress: bool = False) -> dict[str, list[float]]:
    """Eq. 5-7 on the tuples; ``space_corpus``: space -> style index its text tower learned.

    Returns the curves of ``loss``, ``align`` and ``dec``.
    """
    from tqdm import tqdm

    params = [p for p in model.routers.parameters()]
    if cfg.train_projectors:
        params += [p for p in model.projectors.parameters()]
    else:
        model.projectors.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(tuples)
    steps = cfg.epochs * max(1, n // min(cfg.batch_size, n))
    sched = _schedule(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    text_spaces = model.slots.get("text", [])
    y_all = corpus_targets(bank.styles[tuples.index["text"]],
                           [space_corpus.get(s, -1) for s in text_spaces]) \
        if "text" in tuples.index and text_spaces else None
    curves: dict[str, list[float]] = {"loss": [], "align": [], "dec": []}
    model.train()
    if not cfg.train_projectors:
        model.projectors.eval()
    pairs = list(itertools.combinations([m for m in model.modalities if m in tuples.index], 2))
    projected = None if cfg.train_projectors else project_bank(model, bank)
    for idx in tqdm(_batches(n, cfg.batch_size, cfg.epochs, gen), total=steps,
                    desc="routers", disable=not progress, unit="step", mininterval=1.0):
        bound, gates = route_tuples(model, bank, tuples, idx, projected)
        align = overall_alignment_loss(bound, cfg.tau, pairs=pairs,
                                       reduction=cfg.align_reduction)
        loss = align
        dec = None
        if cfg.use_dec and y_all is not None:
            dec = decoupling_loss(gates["text"], y_all[idx])
            loss = align + cfg.lam * dec
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        curves["loss"].append(float(loss))
        curves["align"].append(float(align))
        curves["dec"].append(float(dec) if dec is not None else float("nan"))
    model.eval()
    return curves


def summary(curves: Mapping[str, list[float]]) -> dict[str, Any]:
    return {k: (round(v[0], 4), round(v[-1], 4)) for k, v in curves.items() if v}
