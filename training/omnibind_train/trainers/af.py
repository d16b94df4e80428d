"""Stage II: Adaptive Fusion (seed 000 Sec. 3.3, Eq. 8-9) and the mean/linear/concat baselines.

All encoders are frozen, so every student sample's per-modality embeddings are computed once and
passed in as ``tokens [N, S, D]`` in slot order (``MODALITY_SLOTS``) with a ``present [N, S]``
mask. Each training example is a (sample, modality subset) pair: the subsets come from the data
set's modality-free index, and with probability ``random_subset_prob`` a random non-empty subset
replaces it (any combination may show up at runtime). Per batch:

1. CLS (Fig. 3b): each live modality's prediction = the label with the highest cosine;
2. negative labels = the wrong predictions, or one random wrong label when all are right
   (:func:`~omnibind_train.models.fusion.select_negative_labels`); with ``negatives=False``
   (the robustness ablation) every other label is a negative instead, i.e. plain InfoNCE over
   the label set;
3. optional degraded inputs (``degrade_prob``): each live token is replaced, with that
   probability, by the embedding of the same sample seen by a degraded sensor (the data's
   ``degraded`` twin: dark camera, microphone in wind... rendered by the simulated world);
   then optional noise on one live modality's embedding (``noise_prob``), as
   :func:`omnibind_train.evaluation.add_embedding_noise` defines it;
4. the head fuses the padded tokens with the mask; Eq. 9 against the label embeddings.

The mean baseline has no parameters and is not trained; linear and concat train exactly like AF.

Under ``torchrun`` ``loop.batch_size`` is the global batch, as in every trainer. Eq. 9 is a
per-sample loss against the label table (no in-batch negatives), so nothing is gathered: the
ranks' batches are equally large and DDP's average of their batch means is the global mean.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from omnibind_train.losses import AFLoss
from omnibind_train.models.fusion import (
    MODALITY_SLOTS,
    FusionConfig,
    classify,
    select_negative_labels,
)

from .checkpoint import Checkpoint, load_trainable_state
from .common import (
    ConfigBase,
    EpochBatches,
    EvalFn,
    LoopConfig,
    LoopResult,
    OptimConfig,
    TrainLoop,
    generator,
    make_optimizer,
    param_groups,
)
from .distributed import DistInfo, single_process, wrap_ddp


@dataclass
class AFConfig(ConfigBase):
    """Stage II settings (one fusion head).

    Attributes
    ----------
    loop, optim : see :class:`LoopConfig`, :class:`OptimConfig`.
    fusion : the head (``kind`` af / linear / concat / mean, heads, slots).
    negatives : Eq. 9 with negative labels from wrong per-modality predictions (the paper);
        False: every other label is a negative (the "w/o negative labels" ablation).
    temperature, learn_temperature : tau of Eq. 9.
    random_subset_prob : probability that an example's modality-free subset is replaced by a
        uniformly random non-empty subset of ``modalities``.
    modalities : modalities that may be fused (default: every slot).
    noise_prob : probability that one live modality of an example gets Gaussian noise.
    noise_std : relative noise norm (``add_embedding_noise``'s ``std``).
    noise_modality : always noise this modality when live (None: a random live one).
    degrade_prob : probability that a live token is replaced by its degraded twin (needs data
        with ``degraded`` tokens; 0: clean training, the paper's).
    """

    loop: LoopConfig = field(default_factory=lambda: LoopConfig(epochs=20, batch_size=128))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.01))
    fusion: FusionConfig = field(default_factory=FusionConfig)
    negatives: bool = True
    temperature: float = 0.07
    learn_temperature: bool = False
    random_subset_prob: float = 0.5
    modalities: list[str] = field(default_factory=lambda: list(MODALITY_SLOTS))
    noise_prob: float = 0.0
    noise_std: float = 1.0
    noise_modality: str | None = None
    degrade_prob: float = 0.0


@dataclass
class FusionData:
    """Frozen per-modality embeddings of a split, in slot order.

    Attributes
    ----------
    tokens : ``[N, S, D]`` unit embeddings (zeros where absent).
    present : ``[N, S]`` bool, modality usable for the sample.
    labels : ``[N]`` int64.
    records : ``[R]`` sample index of each modality-free record.
    record_masks : ``[R, S]`` bool, the record's modalities.
    degraded : ``[N, S, D]`` the same samples seen by degraded sensors (None: none rendered).
    degraded_present : ``[N, S]`` bool, degraded input usable (None with ``degraded``).
    """

    tokens: torch.Tensor
    present: torch.Tensor
    labels: torch.Tensor
    records: torch.Tensor
    record_masks: torch.Tensor
    degraded: torch.Tensor | None = None
    degraded_present: torch.Tensor | None = None

    def with_degraded(self, embeddings: Mapping[str, torch.Tensor],
                      present: Mapping[str, torch.Tensor],
                      slots: Sequence[str] = MODALITY_SLOTS) -> FusionData:
        """This data with a degraded twin (modality -> ``[N, D]`` / ``[N]``, same samples in the
        same order; a modality without one stays clean)."""
        tokens = self.tokens.clone()
        usable = torch.zeros_like(self.present)
        for i, m in enumerate(slots):
            if m in embeddings:
                if embeddings[m].shape != self.tokens[:, i].shape:
                    raise ValueError(f"degraded {m}: {tuple(embeddings[m].shape)}, expected "
                                     f"{tuple(self.tokens[:, i].shape)}")
                tokens[:, i] = embeddings[m].float()
                usable[:, i] = present[m].bool() if m in present else True
        return dataclasses.replace(self, degraded=tokens, degraded_present=usable)

    @classmethod
    def build(cls, embeddings: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor],
              labels: torch.Tensor, modality_free: Sequence[tuple[int, Sequence[str]]],
              slots: Sequence[str] = MODALITY_SLOTS) -> FusionData:
        """From modality -> ``[N, D]`` embeddings / ``[N]`` masks and the modality-free index
        (``(sample index, modalities)`` records; every sample once with all modalities if
        empty)."""
        ref = next(iter(embeddings.values()))
        n, d = ref.shape
        tokens = torch.zeros(n, len(slots), d)
        mask = torch.zeros(n, len(slots), dtype=torch.bool)
        for i, m in enumerate(slots):
            if m in embeddings:
                tokens[:, i] = embeddings[m].float()
                mask[:, i] = present[m].bool() if m in present else True
        if not modality_free:
            modality_free = [(i, list(slots)) for i in range(n)]
        index = {m: i for i, m in enumerate(slots)}
        rec = torch.tensor([int(i) for i, _ in modality_free], dtype=torch.long)
        rec_masks = torch.zeros(len(modality_free), len(slots), dtype=torch.bool)
        for r, (_, mods) in enumerate(modality_free):
            rec_masks[r, [index[str(getattr(m, "value", m))] for m in mods]] = True
        return cls(tokens, mask, labels.long(), rec, rec_masks)


def random_subsets(n: int, allowed: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``[n, S]`` bool: random non-empty subsets of the ``allowed`` ``[S]`` slots.

    Sizes are uniform in 1..K (K allowed slots), then the subset is uniform among that size's,
    so single modalities and full sets are as frequent as any other size.
    """
    k = int(allowed.sum())
    sizes = torch.randint(1, k + 1, (n,), generator=gen)
    ranks = torch.rand(n, allowed.numel(), generator=gen).masked_fill(~allowed, 2.0)
    order = ranks.argsort(dim=1).argsort(dim=1)
    return order < sizes.unsqueeze(1)


def degrade_tokens(data: FusionData, sample: torch.Tensor, tokens: torch.Tensor,
                   mask: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Replace each live token, with probability ``prob``, by its degraded twin (where the twin
    is usable; a failed degraded input leaves the clean token). ``[B, S, D]`` -> new tensor."""
    if prob <= 0 or data.degraded is None:
        return tokens
    swap = (torch.rand(mask.shape, generator=gen) < prob) & mask & data.degraded_present[sample]
    return torch.where(swap.unsqueeze(-1), data.degraded[sample], tokens)


def noise_one_modality(tokens: torch.Tensor, mask: torch.Tensor, prob: float, std: float,
                       gen: torch.Generator, slot: int | None = None) -> torch.Tensor:
    """Noise one live token of a ``prob`` fraction of rows (``[B, S, D]`` -> new tensor).

    The noisy token is ``slot`` when live in that row, else a random live one; noise as in
    :func:`omnibind_train.evaluation.add_embedding_noise` (relative norm ``std``, re-normalised).
    """
    if prob <= 0 or std <= 0:
        return tokens
    b, s, d = tokens.shape
    rows = torch.rand(b, generator=gen) < prob
    pick = torch.rand(b, s, generator=gen).masked_fill(~mask, -1.0).argmax(dim=1)
    if slot is not None:
        pick = torch.where(mask[:, slot], torch.full_like(pick, slot), pick)
    noise = torch.randn(b, d, generator=gen) * (std / d ** 0.5)
    out = tokens.clone()
    r = torch.nonzero(rows & mask.any(dim=1)).flatten()
    out[r, pick[r]] = F.normalize(out[r, pick[r]] + noise[r], dim=-1)
    return out


class FusionLoss(nn.Module):
    """A fusion head plus Eq. 9 (the DDP unit)."""

    def __init__(self, head: nn.Module, loss: AFLoss) -> None:
        super().__init__()
        self.head, self.loss = head, loss

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, label_embeddings: torch.Tensor,
                targets: torch.Tensor, negatives: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.loss(self.head(tokens, mask), label_embeddings, targets, negatives)


@dataclass
class AFBatch:
    """One training batch: tokens ``[B, S, D]``, mask ``[B, S]``, targets ``[B]``,
    negatives ``[B, C]``."""

    tokens: torch.Tensor
    mask: torch.Tensor
    targets: torch.Tensor
    negatives: torch.Tensor


def make_batch(data: FusionData, records: torch.Tensor, label_embeddings: torch.Tensor,
               cfg: AFConfig, gen: torch.Generator, slots: Sequence[str] = MODALITY_SLOTS
               ) -> AFBatch:
    """Sample subsets, mask absent modalities, add noise, choose negative labels."""
    allowed = torch.tensor([s in cfg.modalities for s in slots])
    sample = data.records[records]
    present = data.present[sample] & allowed
    mask = data.record_masks[records] & allowed
    swap = torch.rand(records.numel(), generator=gen) < cfg.random_subset_prob
    mask = torch.where(swap.unsqueeze(1), random_subsets(records.numel(), allowed, gen), mask)
    mask = mask & present
    mask = torch.where(mask.any(dim=1, keepdim=True), mask, present)
    # masked with where, not a product: an invalid input's token may be NaN (NaN * 0 is NaN)
    tokens = torch.where(mask.unsqueeze(-1), data.tokens[sample], 0.0)
    tokens = degrade_tokens(data, sample, tokens, mask, cfg.degrade_prob, gen)
    slot = list(slots).index(cfg.noise_modality) if cfg.noise_modality else None
    tokens = noise_one_modality(tokens, mask, cfg.noise_prob, cfg.noise_std, gen, slot)
    targets = data.labels[sample]
    num_classes = label_embeddings.shape[0]
    if cfg.negatives:
        predictions = classify(tokens, label_embeddings)
        negatives = select_negative_labels(predictions, mask, targets, num_classes,
                                           generator=gen)
    else:
        negatives = ~F.one_hot(targets, num_classes).bool()
    return AFBatch(tokens, mask, targets, negatives)


def trainable(head: nn.Module) -> bool:
    """Whether a fusion head has parameters to train (the mean baseline has none)."""
    return any(p.requires_grad for p in head.parameters())


def train_fusion(head: nn.Module, data: FusionData, label_embeddings: torch.Tensor,
                 cfg: AFConfig, *, seed: int = 0, dist: DistInfo | None = None,
                 run_dir: Path | None = None, record: Mapping[str, Any] | None = None,
                 resume: str | Path | None = None, eval_fn: EvalFn | None = None,
                 progress: bool = True, name: str = "af") -> LoopResult | None:
    """Train a fusion head (in place) with Eq. 9; returns None for a parameter-free head.

    Parameters
    ----------
    head : the fusion head (``cfg.fusion.build()``).
    data : frozen embeddings of the training split.
    label_embeddings : ``[C, D]`` unit label embeddings.
    cfg : the stage config.
    seed, dist, run_dir, record, resume, eval_fn, progress : see :class:`TrainLoop`.
    name : stage name (progress bar, TensorBoard, seeds).
    """
    if not trainable(head):
        return None
    dist = dist or single_process()
    loss = AFLoss(temperature=cfg.temperature, learn_temperature=cfg.learn_temperature)
    model = wrap_ddp(FusionLoss(head, loss), dist)
    usable = (data.present[data.records]).any(dim=1)
    batches = EpochBatches(torch.nonzero(usable).flatten(), cfg.loop.batch_size, seed=seed,
                           dist=dist)
    total = cfg.loop.epochs * batches.steps_per_epoch
    groups = param_groups({"fusion": list(head.parameters()),
                           "logit_scale": list(loss.parameters())}, cfg.optim)
    optimizer, scheduler = make_optimizer(groups, cfg.optim, total)
    loop = TrainLoop(name=name, modules={"fusion": head, "loss": loss}, optimizer=optimizer,
                     scheduler=scheduler, total_steps=total, seed=seed, loop=cfg.loop,
                     grad_clip=cfg.optim.grad_clip, dist=dist, run_dir=run_dir,
                     record={**(record or {}), "train": cfg.to_dict(),
                             "model": {"fusion": cfg.fusion.to_dict()}},
                     progress=progress)
    device = dist.device
    labels_dev = label_embeddings.to(device, torch.float32)

    def step(s: int) -> dict[str, torch.Tensor]:
        _, index = batches.at(s)
        b = make_batch(data, index, label_embeddings.float(), cfg,
                       generator(seed, name, s, dist.rank))
        out = model(b.tokens.to(device), b.mask.to(device), labels_dev, b.targets.to(device),
                    b.negatives.to(device))
        return {**out, "negatives_per_sample": b.negatives.sum(1).float().mean()}

    model.train()
    return loop.run(step, eval_fn=eval_fn, resume=resume)


@torch.no_grad()
def fused_accuracy(head: nn.Module, data: FusionData, label_embeddings: torch.Tensor, *,
                   batch_size: int = 1024) -> float:
    """Top-1 of ``head`` over the modality-free records of ``data`` (absent modalities masked)."""
    was = head.training
    head.eval()
    correct, total = 0, 0
    device = next((p.device for p in head.parameters()), torch.device("cpu"))
    for start in range(0, data.records.numel(), batch_size):
        rec = torch.arange(start, min(start + batch_size, data.records.numel()))
        sample = data.records[rec]
        mask = data.record_masks[rec] & data.present[sample]
        keep = mask.any(dim=1)
        fused = head(data.tokens[sample][keep].to(device), mask[keep].to(device))
        pred = classify(fused, label_embeddings.to(device)).cpu()
        correct += int((pred == data.labels[sample][keep]).sum())
        total += int(keep.sum())
    head.train(was)
    return correct / max(1, total)


def checkpoint_logit_scale(ckpt: Checkpoint) -> float:
    """The ``1 / tau`` an AF checkpoint's loss multiplies the label cosines by (Eq. 9).

    Rebuilds :class:`~omnibind_train.losses.AFLoss` from the checkpoint's training config, loads
    its saved state (part ``"loss"``, holding ``logit_scale.log_scale``) and returns exactly
    ``AFLoss.logit_scale()``: ``exp(log_scale)`` clamped at ``max_scale``. A learned
    temperature is therefore exported as trained, a fixed one as configured.

    Raises
    ------
    KeyError
        The checkpoint has no training config or no saved loss state.
    """
    train = ckpt.config.get("train")
    if train is None:
        raise KeyError(f"{ckpt.path}: no training config; not an AF checkpoint")
    cfg = AFConfig.from_dict(train)
    loss = AFLoss(temperature=cfg.temperature, learn_temperature=cfg.learn_temperature)
    if "loss" not in ckpt.weights:
        raise KeyError(f"{ckpt.path}: no saved AF loss state (part 'loss'), so the logit scale "
                       "the head was trained with is unknown")
    load_trainable_state(loss, ckpt.weights["loss"], what=f"{ckpt.path}:loss")
    with torch.no_grad():
        return float(loss.logit_scale())
