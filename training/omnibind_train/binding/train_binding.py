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

Distributed (``dist``: a :class:`~omnibind_train.trainers.distributed.DistInfo` from
``init_distributed`` under ``torchrun``):

* **data**: every rank draws the same global permutation from ``seed`` and takes its own
  contiguous slice of every global batch (rank r: rows ``[r B/W, (r+1) B/W)`` of the batch of
  ``B``, rounded down to a multiple of the world size ``W``), so the gathered batch, in rank
  order, *is* the single-process batch.
* **loss**: :func:`.losses.info_nce` gathers every rank's embeddings (the global batch is the
  set of negatives); every rank computes the same global loss.
* **gradients**: an explicit all-reduce (mean over ranks) of the trained parameters' gradients
  after ``backward`` (:func:`all_reduce_grads`, flat buckets), not DDP: the forward is not one
  module call (a ``ModuleDict`` of projectors, one of routers, frozen parts, precomputed
  projections), so DDP would need a wrapper module and ``find_unused_parameters``; with the
  gather's summed backward the mean is exactly the single-process gradient (see
  :mod:`.losses`). Parameters are broadcast from rank 0 before training, so every rank holds
  the same weights throughout.
* **BatchNorm** in the projector heads normalises each rank's local slice during training
  (plain multi-GPU training without SyncBN); at the end the running statistics are averaged over
  ranks (:func:`average_buffers`), so every rank holds the same module. ``sync_bn=True`` swaps in
  ``SyncBatchNorm`` on CUDA for the duration of training (NCCL only; not available on the CPU).
* **precision**: ``"bf16"`` autocasts the projector / router forward on CUDA (the logits of the
  contrastive terms stay fp32); on the CPU it falls back to fp32.
* **checkpoints**: with ``state_path``, rank 0 saves the trained modules, optimizer, scheduler,
  step and curves every ``checkpoint_every`` steps (atomically); a rerun resumes from the saved
  step (the batch order is a function of the seed, so the remaining batches are the same).

Without ``dist`` (or with one process) everything is as before: the sim pipeline's calls and
results are unchanged.
"""
from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..trainers.common import ConfigBase
from ..trainers.distributed import DistInfo
from .bank import EmbeddingBank
from .losses import BINDING_TEMPERATURE, decoupling_loss, info_nce, overall_alignment_loss
from .model import BindingModel
from .pseudo_pairs import PseudoTuples

__all__ = ["PRECISIONS", "ProjectorTraining", "RouterTraining", "TrainingState",
           "all_reduce_grads", "average_buffers", "broadcast_params", "corpus_targets",
           "rank_slice", "train_projectors", "train_routers"]

PRECISIONS = ("fp32", "bf16")


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


def _optimizer(params: list[torch.nn.Parameter], cfg: ProjectorTraining | RouterTraining,
               n: int, world: int, dist: DistInfo | None, seed: int
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, int,
                          torch.Generator]:
    """Rank 0's initial weights on every rank, AdamW with warm-up + cosine over the run's
    steps, and the batch generator every rank seeds alike."""
    broadcast_params(params, dist)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = _steps(n, cfg.batch_size, cfg.epochs, world)
    return opt, _schedule(opt, steps), steps, torch.Generator().manual_seed(seed)


def _schedule(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps)
                                                                      / steps)))


def _global_batch(n: int, batch_size: int, world: int = 1) -> int:
    """The global batch: ``min(batch_size, n)`` rounded down to a multiple of ``world``."""
    bs = min(batch_size, n)
    if world > 1:
        bs -= bs % world
        if bs < world:
            raise ValueError(f"{n} tuples cannot give each of {world} ranks a row")
    return bs


def _steps(n: int, batch_size: int, epochs: int, world: int = 1) -> int:
    return epochs * max(1, n // _global_batch(n, batch_size, world))


def _batches(n: int, batch_size: int, epochs: int, gen: torch.Generator, world: int = 1
             ) -> Iterator[torch.Tensor]:
    """Global batches (the same on every rank: one permutation per epoch from ``gen``)."""
    bs = _global_batch(n, batch_size, world)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(max(1, n // bs)):
            yield order[s * bs:(s + 1) * bs]


def rank_slice(idx: torch.Tensor, dist: DistInfo | None) -> torch.Tensor:
    """This rank's contiguous share of a global batch (all of it in one process)."""
    if dist is None or not dist.is_distributed:
        return idx
    per = len(idx) // dist.world_size
    return idx[dist.rank * per:(dist.rank + 1) * per]


def _rows(tuples: PseudoTuples, modality: str, idx: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(tuples.index[modality])[idx]


def _device(dist: DistInfo | None) -> torch.device:
    return dist.device if dist is not None else torch.device("cpu")


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch of bank rows on the training device, fp32 (banks may be stored in fp16)."""
    return x.to(device, non_blocking=True).float()


def _autocast(precision: str, device: torch.device) -> Any:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def broadcast_params(params: Sequence[torch.Tensor], dist: DistInfo | None) -> None:
    """Rank 0's values of ``params`` on every rank (no-op in one process)."""
    if dist is None or not dist.is_distributed:
        return
    import torch.distributed as tdist

    with torch.no_grad():
        for p in params:
            tdist.broadcast(p.data, src=0)


def all_reduce_grads(params: Sequence[torch.Tensor], dist: DistInfo | None,
                     bucket_elems: int = 1 << 24) -> None:
    """Mean of every parameter's gradient over ranks, in flat buckets (missing gradients count
    as zeros on that rank, so every rank makes the same collective calls)."""
    if dist is None or not dist.is_distributed:
        return
    import torch.distributed as tdist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0

    def flush() -> None:
        nonlocal bucket, size
        if not bucket:
            return
        flat = torch.cat([g.reshape(-1) for g in bucket])
        tdist.all_reduce(flat)
        flat /= dist.world_size
        offset = 0
        for g in bucket:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        bucket, size = [], 0

    for p in params:
        g = p.grad
        if bucket and (g.dtype != bucket[0].dtype or size + g.numel() > bucket_elems):
            flush()
        bucket.append(g)
        size += g.numel()
    flush()


def average_buffers(module: torch.nn.Module, dist: DistInfo | None) -> None:
    """Mean over ranks of every floating-point buffer (BatchNorm running statistics: each rank
    saw only its slices), so every rank ends with the same module (no-op in one process)."""
    if dist is None or not dist.is_distributed:
        return
    import torch.distributed as tdist

    with torch.no_grad():
        for b in module.buffers():
            if b.is_floating_point():
                tdist.all_reduce(b)
                b /= dist.world_size


def _sync_batchnorm(root: torch.nn.Module, dist: DistInfo | None, enabled: bool
                    ) -> Callable[[], None]:
    """Swap every ``BatchNorm1d`` under ``root`` for a ``SyncBatchNorm`` sharing its parameters
    and buffers (CUDA + distributed only); returns the function that swaps them back."""
    if not enabled or dist is None or not dist.is_distributed or dist.device.type != "cuda":
        return lambda: None
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.BatchNorm1d:
                sync = torch.nn.SyncBatchNorm(child.num_features, child.eps, child.momentum,
                                              child.affine, child.track_running_stats)
                for attr in ("weight", "bias", "running_mean", "running_var",
                             "num_batches_tracked"):
                    setattr(sync, attr, getattr(child, attr))
                sync.train(child.training)
                setattr(parent, name, sync)
                swapped.append((parent, name, child))

    def restore() -> None:
        for parent, name, child in swapped:
            child.train(getattr(parent, name).training)
            setattr(parent, name, child)

    return restore


class TrainingState:
    """Resumable training state: trained modules, optimizer, scheduler, step, curves."""

    def __init__(self, path: str | Path | None, every: int, dist: DistInfo | None,
                 modules: Mapping[str, torch.nn.Module], opt: torch.optim.Optimizer,
                 sched: Any, curves: dict[str, list[float]]) -> None:
        self.path = Path(path) if path is not None else None
        self.every = int(every)
        self.main = dist is None or dist.is_main
        self.modules, self.opt, self.sched, self.curves = modules, opt, sched, curves
        self.step = 0

    def resume(self) -> int:
        if self.path is None or not self.path.exists():
            return 0
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        for k, v in state["curves"].items():
            self.curves.setdefault(k, [])[:] = list(v)
        self.step = int(state["step"])
        return self.step

    def maybe_save(self, step: int, total: int) -> None:
        self.step = step
        if self.path is None or not self.main or self.every <= 0:
            return
        if step % self.every and step != total:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        torch.save({"modules": {k: m.state_dict() for k, m in self.modules.items()},
                    "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                    "curves": self.curves, "step": step}, tmp)
        os.replace(tmp, self.path)


def train_projectors(model: BindingModel, bank: EmbeddingBank, tuples: PseudoTuples,
                     cfg: ProjectorTraining, *, seed: int = 0, progress: bool = False,
                     dist: DistInfo | None = None, precision: str = "fp32",
                     sync_bn: bool = False, state_path: str | Path | None = None,
                     checkpoint_every: int = 0) -> list[float]:
    """Eq. 1 for every non-target space of ``model`` on the tuples; returns the loss curve
    (the global-batch loss, the same on every rank). See the module docstring for ``dist``,
    ``precision``, ``sync_bn``, ``state_path`` / ``checkpoint_every``."""
    from tqdm import tqdm

    target = model.target.name
    spaces = [s for s in model.spaces if s != target]
    if not spaces:
        return []
    device = _device(dist)
    world = dist.world_size if dist is not None else 1
    model.to(device)
    params = [p for s in spaces for p in model.projectors[s].parameters()]
    n = len(tuples)
    opt, sched, steps, gen = _optimizer(params, cfg, n, world, dist, seed)
    losses: list[float] = []
    state = TrainingState(state_path, checkpoint_every, dist,
                   {"projectors": model.projectors}, opt, sched, {"loss": losses})
    done = state.resume()
    restore = _sync_batchnorm(model.projectors, dist, sync_bn)
    model.train()
    show = progress and (dist is None or dist.is_main)
    try:
        for step, idx in enumerate(tqdm(_batches(n, cfg.batch_size, cfg.epochs, gen, world),
                                        total=steps, initial=0, desc="projectors",
                                        disable=not show, unit="step", mininterval=1.0)):
            if step < done:
                continue
            idx = rank_slice(idx, dist)
            anchors = {a: _to(bank.emb[target][a][_rows(tuples, a, idx)], device)
                       for a in cfg.anchors}
            loss = torch.zeros((), device=device)
            for s in spaces:
                for m in model.spaces[s].modalities:
                    x = _to(bank.emb[s][m][_rows(tuples, m, idx)], device)
                    with _autocast(precision, device):
                        projected = model.project(s, x)
                    for ref in anchors.values():
                        loss = loss + info_nce(projected.float(), ref, cfg.tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            all_reduce_grads(params, dist)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            state.maybe_save(step + 1, steps)
    finally:
        restore()
    average_buffers(model.projectors, dist)
    model.eval()
    return losses


def corpus_targets(styles: np.ndarray, space_corpus: Sequence[int]) -> torch.Tensor:
    """L_dec's y: ``[N, M]``, 1 where caption n's style is text encoder j's training corpus."""
    return torch.from_numpy(np.asarray(styles)[:, None] == np.asarray(space_corpus)[None, :]
                            ).float()


@torch.no_grad()
def project_bank(model: BindingModel, bank: EmbeddingBank, *, device: torch.device | None = None,
                 chunk: int | None = None) -> dict[str, torch.Tensor]:
    """``[N_m, S, D]`` projections of every bank row of every modality (frozen projectors);
    ``chunk`` rows at a time on ``device`` (default: all at once, on the model's device)."""
    model.projectors.eval()
    out = {}
    for m in model.modalities:
        if m not in bank.instances:
            continue
        n = bank.size(m)
        step = chunk or max(n, 1)
        parts = []
        for i in range(0, n, step):
            rows = torch.arange(i, min(n, i + step))
            raw = bank.raw(m, rows if chunk else None, spaces=model.slots[m])
            if device is not None:
                raw = {k: _to(v, device) for k, v in raw.items()}
            parts.append(model.projected(m, raw))
        out[m] = torch.cat(parts) if len(parts) != 1 else parts[0]
    return out


def route_tuples(model: BindingModel, bank: EmbeddingBank, tuples: PseudoTuples,
                 idx: torch.Tensor, projected: Mapping[str, torch.Tensor] | None = None, *,
                 device: torch.device | None = None, frozen_projectors: bool = False
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Bound embeddings of a batch of tuples per modality, and each router's gate
    (``projected``: :func:`project_bank`'s output, when the projectors are frozen;
    ``frozen_projectors``: project the batch's rows under ``no_grad`` instead)."""
    bound, gates = {}, {}
    for m in model.modalities:
        if m not in tuples.index:
            continue
        rows = _rows(tuples, m, idx)
        raw = bank.raw(m, rows, spaces=model.slots[m])
        if device is not None:
            raw = {k: _to(v, device) for k, v in raw.items()}
        if projected is None and not frozen_projectors:
            bound[m], _, gates[m] = model.route(m, raw)
            continue
        present = model.present_mask(m, raw)
        if projected is None:
            with torch.no_grad():
                proj = model.projected(m, raw)
        else:
            proj = projected[m][rows]
            if device is not None:
                proj = proj.to(device)
        present = present.to(proj.device)
        bound[m], _, gates[m] = model.route_projected(m, proj, present, raw)
    return bound, gates


def train_routers(model: BindingModel, bank: EmbeddingBank, tuples: PseudoTuples,
                  cfg: RouterTraining, *, space_corpus: Mapping[str, int], seed: int = 0,
                  progress: bool = False, dist: DistInfo | None = None,
                  precision: str = "fp32", precompute: bool = True, sync_bn: bool = False,
                  state_path: str | Path | None = None, checkpoint_every: int = 0
                  ) -> dict[str, list[float]]:
    """Eq. 5-7 on the tuples; ``space_corpus``: space -> style index its text tower learned.

    ``precompute`` (frozen projectors only): project every bank row once before training (the
    sim pipeline); False projects each batch's rows under ``no_grad`` (paper scale, where the
    projections of every pool item in every space do not fit in memory). See the module
    docstring for ``dist``, ``precision``, ``sync_bn``, ``state_path``.

    Returns the curves of ``loss``, ``align`` and ``dec`` (global-batch values).
    """
    from tqdm import tqdm

    device = _device(dist)
    world = dist.world_size if dist is not None else 1
    model.to(device)
    params = [p for p in model.routers.parameters()]
    if cfg.train_projectors:
        params += [p for p in model.projectors.parameters()]
    else:
        model.projectors.requires_grad_(False)
    n = len(tuples)
    opt, sched, steps, gen = _optimizer(params, cfg, n, world, dist, seed)
    text_spaces = model.slots.get("text", [])
    y_all = corpus_targets(bank.styles[tuples.index["text"]],
                           [space_corpus.get(s, -1) for s in text_spaces]) \
        if "text" in tuples.index and text_spaces else None
    curves: dict[str, list[float]] = {"loss": [], "align": [], "dec": []}
    trained = {"routers": model.routers}
    if cfg.train_projectors:
        trained["projectors"] = model.projectors
    state = TrainingState(state_path, checkpoint_every, dist, trained, opt, sched, curves)
    done = state.resume()
    model.train()
    if not cfg.train_projectors:
        model.projectors.eval()
    pairs = list(itertools.combinations([m for m in model.modalities if m in tuples.index], 2))
    frozen = not cfg.train_projectors
    projected = project_bank(model, bank, device=device if dist is not None else None,
                             chunk=8192 if dist is not None else None) \
        if frozen and precompute and done < steps else None
    restore = _sync_batchnorm(model, dist, sync_bn)
    show = progress and (dist is None or dist.is_main)
    try:
        for step, idx in enumerate(tqdm(_batches(n, cfg.batch_size, cfg.epochs, gen, world),
                                        total=steps, desc="routers", disable=not show,
                                        unit="step", mininterval=1.0)):
            if step < done:
                continue
            idx = rank_slice(idx, dist)
            with _autocast(precision, device):
                bound, gates = route_tuples(model, bank, tuples, idx, projected,
                                            device=device if dist is not None else None,
                                            frozen_projectors=frozen)
            bound = {m: b.float() for m, b in bound.items()}
            align = overall_alignment_loss(bound, cfg.tau, pairs=pairs,
                                           reduction=cfg.align_reduction)
            loss = align
            dec = None
            if cfg.use_dec and y_all is not None:
                dec = decoupling_loss(gates["text"].float(), y_all[idx].to(device))
                if dist is not None and dist.is_distributed:
                    # L_dec is a per-row mean: the mean over ranks of the local means is the
                    # global mean (equal slices); every rank carries the global value
                    dec = _mean_over_ranks(dec)
                loss = align + cfg.lam * dec
            opt.zero_grad(set_to_none=True)
            loss.backward()
            all_reduce_grads(params, dist)
            opt.step()
            sched.step()
            curves["loss"].append(float(loss.detach()))
            curves["align"].append(float(align.detach()))
            curves["dec"].append(float(dec) if dec is not None else float("nan"))
            state.maybe_save(step + 1, steps)
    finally:
        restore()
    average_buffers(model.routers, dist)
    if cfg.train_projectors:
        average_buffers(model.projectors, dist)
    model.eval()
    return curves


def _mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Differentiable mean over ranks of a per-rank scalar (its gradient on each rank is
    ``world_size`` times the local term's share, as for the gathered contrastive terms, so the
    averaged parameter gradient is the global one)."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.reshape(1))).mean()


def summary(curves: Mapping[str, list[float]]) -> dict[str, Any]:
    return {k: (round(v[0], 4), round(v[-1], 4)) for k, v in curves.items() if v}
