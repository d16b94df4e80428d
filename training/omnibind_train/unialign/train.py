"""Training UniAlign: mixed-modality steps with modality-aware gradient accumulation (§3.3).

Every step draws one mini-batch from every modality's labelled data set (a shorter data set
cycles). The loss of the whole mixed batch is Eq. 16 (:func:`batch_loss`):

* **L_NCE**: per modality, cross-entropy of ``logit_scale * cos`` against its own data set's
  label texts (the CLIP loss on label-paired data, as ViT-Lens and the code train), plus
  CLIP's InfoNCE against the paired anchor images (``nce_anchor``);
* **L_soft_bind** (Eq. 11): every pair of modalities in the batch, each against the other's
  label vocabulary;
* **L_anch_distil** (Eq. 12): sample, label text and anchor image of each modality;
* **L_model_distil** (Eq. 15): ``(lambda / ref_dim) * Eq. 13`` on the KD connector's unit output
  vs the cached unit teacher feature, plus Eq. 14 with the label text as the anchor modality
  (student: frozen text side; teacher: its own text tower). Choice, said here: the paper's
  lambda = 2000 multiplies ``F.mse_loss`` (a mean over the teacher's d elements) for teachers of
  d = 512 (ULIP) to 1536; Eq. 13 as written sums over elements, so the effective weight on the
  squared distance is lambda / d. We fix it at ``lambda / ref_dim`` (ref_dim = 512: 3.9 per unit
  of squared distance) for every teacher dimension, instead of letting a 192-d teacher weigh
  2.7x more than a 512-d one.

Each term is averaged over the modalities (pairs) it covers; ``tau`` (0.1) is the temperature of
S in Eq. 10-14, which the paper leaves out (at tau = 1 unit-vector softmaxes are nearly flat).

**Modality-aware accumulation** (``accumulation: modality``, the code's scheme): every
modality's mini-batch is forwarded without gradients first; then each modality is re-forwarded
with gradients, the *whole* batch loss is evaluated with the other modalities' cached outputs and
back-propagated, and the optimiser steps once. By the chain rule the summed gradients equal one
backward through the joint batch (``accumulation: joint``), while only one modality's graph is
alive at a time. Parameters used by the loss directly (the logit scale) take their gradient in
the first pass only.

Distributed: every rank takes its contiguous share of every modality's batch (the same global
permutation from the seed), computes its local loss, and the gradients are averaged with an
explicit all-reduce (:func:`..binding.train_binding.all_reduce_grads`); no cross-rank negatives.
bf16 autocast on CUDA; checkpoints every ``checkpoint_every`` steps, resumed on restart.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..binding.train_binding import (
    TrainingState,
    all_reduce_grads,
    average_buffers,
    broadcast_params,
    rank_slice,
)
from ..trainers.common import ConfigBase, OptimConfig, make_optimizer, param_groups
from ..trainers.distributed import DistInfo, autocast, single_process
from .losses import (
    anchor_distillation_loss,
    clip_loss,
    model_distillation_loss,
    soft_binding_loss,
    unialign_loss,
)
from .model import UniAlignModel

__all__ = ["ACCUMULATIONS", "LossConfig", "ModalitySet", "TrainConfig", "batch_loss",
           "train_unialign"]

ACCUMULATIONS = ("modality", "joint")


@dataclass
class LossConfig(ConfigBase):
    """Which terms of Eq. 16 are on, and their settings (see the module docstring)."""

    soft_bind: bool = True
    anchor_distil: bool = True
    model_distil: bool = True
    alphas: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    nce_anchor: bool = True
    tau: float = 0.1
    direction: str = "paper"
    feat_lambda: float = 2000.0
    feat_ref_dim: int = 512


@dataclass
class TrainConfig(ConfigBase):
    """The training loop (the paper: AdamW lr 2e-4, wd 0.05, batch 2048, 100 epochs).

    ``batch_share``: ``equal`` (every modality ``batch_per_modality`` rows per micro-step) or
    ``data`` (``batch_per_modality * M`` rows split by each data set's repeat-weighted size, as
    the code splits a batch by dataset share); ``accum_steps`` micro-steps make one optimiser
    step (the paper's 2048 = 256 per GPU x 4 GPUs x ``accum_steps`` 2 with two modality passes
    each, or any other product); ``repeat``: per-modality repeat factor of its data set.
    """

    epochs: int = 40
    batch_per_modality: int = 64
    accum_steps: int = 1
    batch_share: str = "equal"
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=1e-3, weight_decay=0.05, betas=(0.9, 0.98), warmup_frac=0.05, grad_clip=1.0))
    accumulation: str = "modality"
    checkpoint_every: int = 0
    repeat: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.batch_share not in ("equal", "data"):
            raise ValueError(f"batch_share must be 'equal' or 'data', got {self.batch_share!r}")
        if self.accumulation not in ACCUMULATIONS:
            raise ValueError(f"accumulation must be one of {ACCUMULATIONS}, "
                             f"got {self.accumulation!r}")


@dataclass
class ModalitySet:
    """One modality's training tensors (rows aligned).

    Attributes
    ----------
    x : preprocessed inputs ``[N, ...]``.
    labels : label index per row.
    label_text : ``[n_labels, E]`` frozen unit text embeddings of the data set's labels.
    anchor : ``[N, E]`` frozen unit CLIP embeddings of each row's anchor image.
    teacher : ``[N, d_t]`` unit teacher features (None: not distilled).
    teacher_text : ``[n_labels, d_t]`` the teacher's unit label-text embeddings.
    """

    x: torch.Tensor
    labels: torch.Tensor
    label_text: torch.Tensor
    anchor: torch.Tensor
    teacher: torch.Tensor | None = None
    teacher_text: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, idx: torch.Tensor, device: torch.device) -> ModalitySet:
        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[idx].to(device).float()

        return ModalitySet(pick(self.x), self.labels[idx].to(device), self.label_text.to(device),
                           pick(self.anchor), pick(self.teacher),
                           None if self.teacher_text is None else self.teacher_text.to(device))


def _nce(b: ModalitySet, emb: torch.Tensor, scale: torch.Tensor, anchor: bool) -> torch.Tensor:
    loss = F.cross_entropy(scale * emb @ b.label_text.T, b.labels)
    if anchor and emb.shape[0] > 1:
        loss = loss + clip_loss(emb, b.anchor, scale)
    return loss


Outputs = Mapping[str, Mapping[str, torch.Tensor]]


def batch_loss(batch: Mapping[str, ModalitySet], outs: Outputs, logit_scale: torch.Tensor,
               cfg: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 16 over a mixed batch (see the module docstring); returns the total and its parts."""
    mods = list(batch)
    scale = logit_scale.exp().clamp(max=100.0)
    kw = {"tau": cfg.tau, "direction": cfg.direction}
    nce = torch.stack([_nce(batch[m], outs[m]["emb"], scale, cfg.nce_anchor)
                       for m in mods]).mean()
    soft = anchor = model = None
    pairs = list(itertools.combinations(mods, 2))
    if cfg.soft_bind and pairs:
        soft = torch.stack([soft_binding_loss(
            outs[a]["emb"], batch[a].labels, batch[a].label_text, outs[b]["emb"],
            batch[b].labels, batch[b].label_text, **kw) for a, b in pairs]).mean()
    if cfg.anchor_distil:
        anchor = torch.stack([anchor_distillation_loss(
            outs[m]["emb"], batch[m].label_text[batch[m].labels], batch[m].anchor, **kw)
            for m in mods]).mean()
    distilled = [m for m in mods if batch[m].teacher is not None and "kd" in outs[m]]
    if cfg.model_distil and distilled:
        model = torch.stack([model_distillation_loss(
            outs[m]["kd"], batch[m].teacher, outs[m]["emb"],
            batch[m].label_text[batch[m].labels], batch[m].teacher,
            batch[m].teacher_text[batch[m].labels], lam=cfg.feat_lambda / cfg.feat_ref_dim,
            **kw) for m in distilled]).mean()
    total = unialign_loss(nce, soft, anchor, model, alphas=tuple(cfg.alphas))
    parts = {"loss": total.item(), "nce": nce.item()}
    for name, term in (("soft_bind", soft), ("anch_distil", anchor), ("model_distil", model)):
        if term is not None:
            parts[name] = term.item()
    return total, parts


def accumulate_step(model: UniAlignModel, batch: Mapping[str, ModalitySet], cfg: LossConfig,
                    accumulation: str, *, dist: DistInfo | None = None) -> dict[str, float]:
    """Forward/backward of one mixed batch into ``.grad`` (no optimiser step)."""
    amp = autocast(dist if dist is not None else single_process(), True)
    if accumulation == "joint":
        with amp:
            outs = {m: model.outputs(m, b.x) for m, b in batch.items()}
        loss, parts = batch_loss(batch, _float(outs), model.logit_scale, cfg)
        loss.backward()
        return parts
    with torch.no_grad(), amp:
        cached = {m: model.outputs(m, b.x) for m, b in batch.items()}
    cached = _float(cached)
    parts: dict[str, float] = {}
    for i, (m, b) in enumerate(batch.items()):
        with amp:
            fresh = model.outputs(m, b.x)
        outs = {**cached, m: _float({m: fresh})[m]}
        scale = model.logit_scale if i == 0 else model.logit_scale.detach()
        loss, parts = batch_loss(batch, outs, scale, cfg)
        loss.backward()
    return parts


def _float(outs: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    return {m: {k: v.float() for k, v in o.items()} for m, o in outs.items()}


class _Sampler:
    """Per-modality seeded permutations; a data set shorter than the epoch cycles."""

    def __init__(self, n: int, seed: int, tag: int) -> None:
        self.n, self.gen = n, torch.Generator().manual_seed(seed * 1009 + tag)
        self.order, self.pos = torch.randperm(n, generator=self.gen), 0

    def take(self, k: int) -> torch.Tensor:
        out = []
        while k > 0:
            if self.pos >= self.n:
                self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
            got = self.order[self.pos:self.pos + k]
            self.pos += len(got)
            k -= len(got)
            out.append(got)
        return torch.cat(out)


def modality_batches(sets: Mapping[str, ModalitySet], cfg: TrainConfig) -> dict[str, int]:
    """Rows per modality in one micro-step (see :class:`TrainConfig`)."""
    if cfg.batch_share == "equal":
        return {m: cfg.batch_per_modality for m in sets}
    sizes = {m: len(s) * float(cfg.repeat.get(m, 1.0)) for m, s in sets.items()}
    total = cfg.batch_per_modality * len(sets)
    return {m: max(2, round(total * n / sum(sizes.values()))) for m, n in sizes.items()}


def steps_per_epoch(sets: Mapping[str, ModalitySet], cfg: TrainConfig) -> int:
    """Optimiser steps that show every (repeat-weighted) data set about once."""
    batches = modality_batches(sets, cfg)
    return max(1, max(math.ceil(len(s) * float(cfg.repeat.get(m, 1.0))
                                / (batches[m] * cfg.accum_steps)) for m, s in sets.items()))


def train_unialign(model: UniAlignModel, sets: Mapping[str, ModalitySet], cfg: TrainConfig,
                   loss_cfg: LossConfig, *, seed: int = 0, dist: DistInfo | None = None,
                   state_path: str | Path | None = None, progress: bool = False,
                   desc: str = "unialign") -> dict[str, list[float]]:
    """Train ``model``'s trainable set on the modality data sets; returns the loss curves."""
    from tqdm import tqdm

    device = dist.device if dist is not None else torch.device("cpu")
    model.freeze().to(device).train()
    groups = model.trainable_parameters()
    params = [p for ps in groups.values() for p in ps]
    broadcast_params(params, dist)
    batches = modality_batches(sets, cfg)
    per_epoch = steps_per_epoch(sets, cfg)
    total = per_epoch * cfg.epochs
    opt, sched = make_optimizer(param_groups(groups, cfg.optim), cfg.optim, total)
    curves: dict[str, list[float]] = {}
    state = TrainingState(state_path, cfg.checkpoint_every, dist, {"model": model}, opt, sched,
                          curves)
    start = state.resume()
    samplers = {m: _Sampler(len(s), seed, i) for i, (m, s) in enumerate(sets.items())}
    for _ in range(start * cfg.accum_steps):     # replay the consumed batches' draws
        for m in sets:
            samplers[m].take(batches[m])
    main = dist is None or dist.is_main
    bar = tqdm(range(start, total), desc=desc, disable=not (progress and main), unit="step",
               dynamic_ncols=True, mininterval=1.0)
    for step in bar:
        opt.zero_grad(set_to_none=True)
        for _ in range(cfg.accum_steps):
            batch = {m: s.take(rank_slice(samplers[m].take(batches[m]), dist), device)
                     for m, s in sets.items()}
            parts = accumulate_step(model, batch, loss_cfg, cfg.accumulation, dist=dist)
        if cfg.accum_steps > 1:
            for p in params:
                if p.grad is not None:
                    p.grad /= cfg.accum_steps
        all_reduce_grads(params, dist)
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        opt.step()
        sched.step()
        for k, v in parts.items():
            curves.setdefault(k, []).append(v)
        bar.set_postfix(loss=f"{parts['loss']:.3f}", refresh=False)
        state.maybe_save(step + 1, total)
    average_buffers(model, dist)
    return curves


def trainable_state(model: UniAlignModel) -> dict[str, torch.Tensor]:
    """Everything that is not the frozen CLIP tower or text side (what a run stores)."""
    frozen = {f"backbone.visual.{k}" for k, _ in model.backbone.visual.named_parameters()
              if ".moe." not in k} | {f"text_head.{k}" for k in model.text_head.state_dict()}
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if k not in frozen}


def load_trainable_state(model: UniAlignModel, state: Mapping[str, Any]) -> None:
    missing, unexpected = model.load_state_dict(dict(state), strict=False)
    expected_missing = set(model.state_dict()) - set(trainable_state(model))
    bad = sorted(set(missing) - expected_missing) + sorted(unexpected)
    if bad:
        raise ValueError(f"UniAlign state does not match the model: {bad[:8]}")
