"""What every trainer shares: config dataclasses, deterministic randomness, batches, the loop.

Determinism (what makes resume exact): every random decision of step ``s`` comes from a generator
seeded with ``derive_seed(seed, name, s, ...)``, and the global torch RNG is re-seeded from it
before each step (dropout). Batches come from a :class:`~torch.utils.data.DistributedSampler`
whose epoch is a function of the step. So the state to restore is: the trainable weights, the
optimiser, the scheduler and the step; the RNG states are saved and restored too, as a second
line of defence.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from .checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_trainable_state,
    save_checkpoint,
    trainable_state,
)
from .distributed import DistInfo, autocast, barrier, per_rank_batch, single_process

C = TypeVar("C", bound="ConfigBase")


# --- config dataclasses -------------------------------------------------------------------------


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Turn a plain value (YAML/JSON) into the annotated type ``tp`` (nested dataclasses)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return tp.from_dict(value) if hasattr(tp, "from_dict") else tp(**value)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            if (dataclasses.is_dataclass(arg) and isinstance(value, Mapping)) \
                    or (arg in (float, int) and isinstance(value, str)):
                return _convert(arg, value, where)
        return value
    args = typing.get_args(tp)
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == len(value):
            return tuple(_convert(a, v, where) for a, v in zip(args, value, strict=True))
        return tuple(value)
    if origin is list and isinstance(value, (list, tuple)) and args:
        return [_convert(args[0], v, where) for v in value]
    if origin is dict and isinstance(value, Mapping) and len(args) == 2:
        return {k: _convert(args[1], v, where) for k, v in value.items()}
    if tp in (float, int) and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-3" (no dot) as a string
            return tp(value)
        except ValueError:
            raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


class ConfigBase:
    """Mixin for config dataclasses: ``to_dict`` / ``from_dict`` with nested dataclasses.

    ``from_dict`` raises ``ValueError`` naming unknown keys (no silent drift between a YAML file
    and the code); missing keys take their defaults.
    """

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-safe dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any] | None) -> C:
        data = dict(data or {})
        known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; known: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        kwargs = {k: _convert(hints[k], v, f"{cls.__name__}.{k}") for k, v in data.items()}
        return cls(**kwargs)

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied (dataclasses.replace)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass
class OptimConfig(ConfigBase):
    """AdamW + linear warm-up + cosine (or constant) schedule.

    Attributes
    ----------
    lr : peak learning rate.
    weight_decay : AdamW decoupled weight decay (not applied to 1-d parameters: norms, biases,
        the logit scale).
    betas : AdamW betas.
    warmup_frac : fraction of the steps spent warming up linearly from 0.
    schedule : ``"cosine"`` (to ``min_lr_ratio * lr``) or ``"constant"``.
    min_lr_ratio : final learning rate of the cosine, relative to ``lr``.
    grad_clip : max global gradient norm, or None.
    """

    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_frac: float = 0.05
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        self.betas = tuple(self.betas)  # type: ignore[assignment]


@dataclass
class LoopConfig(ConfigBase):
    """How long and how a trainer runs.

    Attributes
    ----------
    epochs : passes over the training samples.
    batch_size : the *global* batch: samples per optimiser step, all ranks together. Under
        ``torchrun`` each rank takes ``batch_size // world_size`` of them (an error when the
        world size does not divide it) and the losses are computed over the gathered global
        batch, so a run computes the same losses and gradients on any number of ranks.
    log_every : steps between TensorBoard scalar writes (and the progress bar's postfix).
    ckpt_every : steps between checkpoints (0: only the final one).
    eval_every : steps between evaluations (0: only at the end).
    amp : bf16 autocast on CUDA (ignored on CPU).
    """

    epochs: int = 10
    batch_size: int = 64
    log_every: int = 10
    ckpt_every: int = 0
    eval_every: int = 0
    amp: bool = True


# --- deterministic randomness -----------------------------------------------------------------


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (``derive_seed(seed, "cad", step)``); stable across runs."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(*parts: Any) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


# --- batches ----------------------------------------------------------------------------------


class EpochBatches:
    """Per-rank batches of ``range(n)`` with a ``DistributedSampler`` (shuffled per epoch).

    ``batch(epoch, b)`` is a pure function of its arguments (and ``seed``, ``dist``), which is
    what lets a resumed run see exactly the batches an uninterrupted run would have seen.

    The sampler deals rank r the positions r, r + W, ... of one shuffled order (the same for
    every world size), so the ranks' batches ``b`` together are exactly the single-process batch
    ``b`` of the global batch size: positions ``[b B, (b + 1) B)`` of that order.

    Parameters
    ----------
    indices : the sample indices to draw from (e.g. the valid samples of a split), ``[n]``.
    batch_size : the global batch (all ranks together); this rank takes
        ``batch_size // world_size`` (:func:`~.distributed.per_rank_batch`: an error when the
        world size does not divide it), fewer when a rank's share of the samples is smaller.
    seed : sampler seed.
    dist : ranks; the sampler gives each rank a disjoint share.

    Attributes
    ----------
    batch_size : this rank's batch.
    global_batch_size : all ranks' batches together (``batch_size * world_size``).
    """

    def __init__(self, indices: torch.Tensor | Sequence[int], batch_size: int, *, seed: int,
                 dist: DistInfo | None = None) -> None:
        from torch.utils.data import DistributedSampler

        self.indices = torch.as_tensor(indices, dtype=torch.long)
        if self.indices.numel() == 0:
            raise ValueError("no samples to draw batches from")
        dist = dist or single_process()
        self.sampler = DistributedSampler(range(len(self.indices)), num_replicas=dist.world_size,
                                          rank=dist.rank, shuffle=True, seed=seed)
        per_rank = len(self.sampler)
        self.batch_size = min(per_rank_batch(batch_size, dist), per_rank)
        self.global_batch_size = self.batch_size * dist.world_size
        self.steps_per_epoch = per_rank // self.batch_size  # drop the ragged tail
        self._epoch: int | None = None
        self._order = torch.empty(0, dtype=torch.long)

    def batch(self, epoch: int, b: int) -> torch.Tensor:
        """Sample indices ``[batch_size]`` of batch ``b`` of ``epoch``."""
        if self._epoch != epoch:
            self.sampler.set_epoch(epoch)
            self._order = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
            self._epoch = epoch
        return self.indices[self._order[b * self.batch_size:(b + 1) * self.batch_size]]

    def at(self, counter: int) -> tuple[int, torch.Tensor]:
        """The ``counter``-th batch overall: ``(epoch, indices)``."""
        epoch, b = divmod(counter, self.steps_per_epoch)
        return epoch, self.batch(epoch, b)


def class_subset(labels: torch.Tensor, fraction: float, *, seed: int,
                 candidates: torch.Tensor | None = None) -> torch.Tensor:
    """A class-balanced random ``fraction`` of the samples (the scarce-data setting).

    ``labels`` ``[N]``; ``candidates`` bool ``[N]`` restricts the draw. Returns sorted indices,
    at least one per class present.
    """
    keep = torch.ones_like(labels, dtype=torch.bool) if candidates is None else candidates
    if fraction >= 1.0:
        return torch.nonzero(keep).flatten()
    gen = generator(seed, "class_subset")
    chosen = []
    for c in torch.unique(labels[keep]).tolist():
        idx = torch.nonzero(keep & (labels == c)).flatten()
        k = max(1, round(fraction * idx.numel()))
        chosen.append(idx[torch.randperm(idx.numel(), generator=gen)[:k]])
    return torch.sort(torch.cat(chosen)).values


# --- optimiser and schedule ---------------------------------------------------------------------


def param_groups(named: Mapping[str, Sequence[nn.Parameter]], optim: OptimConfig,
                 lr_overrides: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """AdamW parameter groups: per named part, with and without weight decay (1-d params)."""
    groups = []
    for name, params in named.items():
        lr = float((lr_overrides or {}).get(name, optim.lr))
        decay = [p for p in params if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in params if p.requires_grad and p.ndim < 2]
        for ps, wd in ((decay, optim.weight_decay), (no_decay, 0.0)):
            if ps:
                groups.append({"params": ps, "lr": lr, "weight_decay": wd, "name": name})
    return groups


class WarmupCosine:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine to ``min_ratio``."""

    def __init__(self, total: int, warmup: int, *, min_ratio: float = 0.0,
                 cosine: bool = True) -> None:
        self.total, self.warmup = max(1, total), max(0, warmup)
        self.min_ratio, self.cosine = min_ratio, cosine

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if not self.cosine:
            return 1.0
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def make_optimizer(groups: list[dict[str, Any]], optim: OptimConfig, total_steps: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``groups`` and its warm-up/cosine ``LambdaLR``."""
    opt = torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas)
    schedule = WarmupCosine(total_steps, round(optim.warmup_frac * total_steps),
                            min_ratio=optim.min_lr_ratio, cosine=optim.schedule == "cosine")
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


# --- the loop ---------------------------------------------------------------------------------


StepFn = Callable[[int], Mapping[str, torch.Tensor | float]]
EvalFn = Callable[[int], Mapping[str, float]]


@dataclass
class LoopResult:
    """What :meth:`TrainLoop.run` returns: final step, last logged losses, last evaluation."""

    steps: int
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    resumed_from: int = 0


class TrainLoop:
    """Optimizer steps with per-step seeding, logging, checkpoints and exact resume.

    Parameters
    ----------
    name : stage name (progress bar, seeds, TensorBoard tags).
    modules : the modules whose *trainable* state is checkpointed (unwrapped, not DDP).
    optimizer, scheduler : built over those modules' parameters.
    total_steps : steps of the whole run.
    seed : root seed.
    loop : logging/checkpoint cadence and autocast.
    dist : ranks; only rank 0 writes files and shows progress.
    run_dir : where ``checkpoints/``, ``final/`` and ``tb/`` go; None writes nothing.
    record : configs stored in every checkpoint's ``config.json`` (model, preprocess, train).
    progress : show a tqdm bar.
    """

    def __init__(self, *, name: str, modules: Mapping[str, nn.Module],
                 optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, total_steps: int, seed: int,
                 loop: LoopConfig, grad_clip: float | None, dist: DistInfo | None = None,
                 run_dir: Path | None = None, record: Mapping[str, Any] | None = None,
                 progress: bool = True) -> None:
        self.name, self.modules = name, dict(modules)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.total_steps, self.seed, self.loop = int(total_steps), seed, loop
        self.grad_clip = grad_clip
        self.dist = dist or single_process()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.record = dict(record or {})
        self.progress = progress
        self.step = 0
        self._start = 0
        self._writer: Any = None

    # -- state ----------------------------------------------------------------------------------

    def _params(self) -> list[nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def state(self) -> dict[str, Any]:
        """Trainer state for ``trainer_state.pt`` (plain tensors and containers only)."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"step": self.step, "total_steps": self.total_steps,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng}

    def save(self, directory: Path, extra: Mapping[str, Any] | None = None) -> Path | None:
        """Write a checkpoint (rank 0 only); returns its directory."""
        if not self.dist.is_main:
            return None
        weights = {k: trainable_state(m) for k, m in self.modules.items()}
        config = {**self.record, "stage": self.name, "step": self.step,
                  "total_steps": self.total_steps, **(extra or {})}
        return save_checkpoint(directory, weights, config, self.state())

    def load(self, directory: Path) -> None:
        """Restore weights, optimiser, scheduler, step and RNG from a checkpoint directory."""
        ckpt = load_checkpoint(directory, map_location=self.dist.device)
        if ckpt.state is None:
            raise ValueError(f"{directory} has no trainer state (a weights-only checkpoint)")
        for key, module in self.modules.items():
            load_trainable_state(module, ckpt.weights.get(key, {}), what=f"{directory}:{key}")
        self.optimizer.load_state_dict(ckpt.state["optimizer"])
        self.scheduler.load_state_dict(ckpt.state["scheduler"])
        self.step = int(ckpt.state["step"])
        if int(ckpt.state.get("total_steps", self.total_steps)) != self.total_steps:
            raise ValueError(f"{directory} was a run of {ckpt.state['total_steps']} steps, "
                             f"this one has {self.total_steps}: the schedule would differ")
        torch.set_rng_state(ckpt.state["rng"]["torch"].cpu())
        if "cuda" in ckpt.state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt.state["rng"]["cuda"]])

    def resolve_resume(self, resume: str | Path | None) -> Path | None:
        """``"auto"``: the newest checkpoint under ``run_dir`` (None if there is none)."""
        if resume is None:
            return None
        if str(resume) == "auto":
            return latest_checkpoint(self.run_dir) if self.run_dir is not None else None
        return Path(resume)

    # -- logging --------------------------------------------------------------------------------

    def _log(self, scalars: Mapping[str, float]) -> None:
        if self.run_dir is None or not self.dist.is_main:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a crashed run logged after the checkpoint we resumed from
            self._writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self._start)
        for k, v in scalars.items():
            self._writer.add_scalar(f"{self.name}/{k}", v, self.step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- running --------------------------------------------------------------------------------

    def _one_step(self, step_fn: StepFn, step: int) -> dict[str, float]:
        torch.manual_seed(derive_seed(self.seed, self.name, "global", step, self.dist.rank))
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.dist, self.loop.amp):
            out = step_fn(step)
        loss = out["loss"]
        assert isinstance(loss, torch.Tensor)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_([p for p in self._params() if p.grad is not None],
                                     self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
                for k, v in out.items()}

    def run(self, step_fn: StepFn, *, eval_fn: EvalFn | None = None,
            resume: str | Path | None = None) -> LoopResult:
        """Run from step 0 (or the resumed step) to ``total_steps``; save ``final/``."""
        start_time = time.perf_counter()
        ckpt = self.resolve_resume(resume)
        if ckpt is not None:
            self.load(ckpt)
        self._start = self.step
        result = LoopResult(steps=self.total_steps, resumed_from=self.step)
        bar = self._bar()
        try:
            while self.step < self.total_steps:
                losses = self._one_step(step_fn, self.step)
                self.step += 1
                bar.update(1)
                if not all(math.isfinite(v) for v in losses.values()):
                    raise FloatingPointError(f"{self.name}: non-finite loss at step {self.step}: "
                                             f"{losses}")
                result.losses = losses
                self._after_step(losses, bar, eval_fn, result)
            if eval_fn is not None:
                result.metrics = dict(eval_fn(self.step))
                self._log({f"eval/{k}": v for k, v in result.metrics.items()})
            if self.run_dir is not None:
                self.save(self.run_dir / "final", {"metrics": result.metrics})
            barrier(self.dist)  # later stages on every rank read what rank 0 just wrote
        finally:
            bar.close()
            self.close()
        result.seconds = time.perf_counter() - start_time
        return result

    def _after_step(self, losses: dict[str, float], bar: Any, eval_fn: EvalFn | None,
                    result: LoopResult) -> None:
        every = self.loop
        if self.step % max(1, every.log_every) == 0 or self.step == self.total_steps:
            lrs = {f"lr/{g.get('name', i)}": g["lr"]
                   for i, g in enumerate(self.optimizer.param_groups)}
            self._log({**losses, **lrs})
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items() if k.endswith("loss")},
                            refresh=False)
        if eval_fn is not None and every.eval_every and self.step % every.eval_every == 0 \
                and self.step < self.total_steps:
            result.metrics = dict(eval_fn(self.step))
            self._log({f"eval/{k}": v for k, v in result.metrics.items()})
        if self.run_dir is not None and every.ckpt_every and self.step % every.ckpt_every == 0 \
                and self.step < self.total_steps:
            self.save(self.run_dir / "checkpoints" / f"step_{self.step:07d}")

    def _bar(self) -> Any:
        from tqdm import tqdm

        return tqdm(total=self.total_steps, initial=self.step, desc=self.name, unit="step",
                    disable=not (self.progress and self.dist.is_main), dynamic_ncols=True,
                    mininterval=1.0, leave=True)


def batch_iterator(n: int, batch_size: int) -> Iterator[slice]:
    """Slices covering ``range(n)`` in order (inference batches)."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def maybe_no_grad(train: bool) -> Any:
    """``torch.no_grad()`` unless ``train``."""
    return nullcontext() if train else torch.no_grad()
