"""Single-process and ``torchrun`` (DDP) execution: ranks, devices, wrapping, autocast.

Under ``torchrun`` the environment holds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`init_distributed` then joins the process group (NCCL on CUDA, Gloo on CPU). Without them
everything runs in one process and the helpers here are no-ops. Only rank 0 writes files.

Global batch. A config's ``batch_size`` is the *global* batch (all ranks together); each rank
takes ``batch_size // world_size`` samples per step (:func:`per_rank_batch`, an error when it
does not divide). The contrastive and distillation losses are computed over the global batch:
every rank gathers the embeddings of the whole batch with :func:`gather_batch` and evaluates
the same global-batch loss, so under ``torchrun`` the negatives of InfoNCE and the ``k x k``
similarity matrices of the CAD KL terms are those of the global batch, as in one process.

Why the gradient is exact. Each rank back-propagates the (identical) global loss ``L`` into its
own shard ``E_r`` only (the other ranks' rows arrive through a plain ``all_gather``, without
autograd). The single-process gradient is ``sum_r dL/dE_r . dE_r/dtheta + dL/dtheta|direct``
(direct: parameters of the loss itself, e.g. a learnable temperature, that every rank holds).
DDP averages the ranks' gradients, i.e. divides their sum by ``W``. So the local shard's
gradient is multiplied by ``W`` on its way back (:func:`gather_batch`), while the direct path is
left alone: ``mean_r (W dL/dE_r . dE_r/dtheta + dL/dtheta|direct)`` is then exactly the
single-process gradient. Scaling the whole loss by ``W`` instead would be exact for the
embedding path but ``W`` times too large for the loss's own parameters.

The alternative, ``torch.distributed.nn.functional.all_gather`` (autograd-aware), gives the
same gradient by a different route: its backward sums every rank's gradient of its gathered
copy, i.e. ``W`` identical copies of ``dL/dE_r``, with a reduce-scatter (NCCL) or an
all-to-all (Gloo) in every backward pass. The plain gather + local slot + ``W`` factor needs
one ``all_gather`` per tensor in the forward pass and no collective in the backward pass, where
DDP's own gradient all-reduce already runs.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job.

    Attributes
    ----------
    rank, world_size, local_rank : as torchrun sets them (0, 1, 0 in a single process).
    device : where tensors and modules go.
    backend : ``"nccl"``, ``"gloo"`` or None (not distributed).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def single_process(device: str | torch.device = "cpu") -> DistInfo:
    """A :class:`DistInfo` for one process on ``device``."""
    return DistInfo(device=torch.device(device))


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: the local rank's CUDA device if there is one, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if the environment says so; else one process.

    NCCL for CUDA devices, Gloo otherwise. Idempotent: returns the current group's info when one
    is already initialised.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(device=dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend)
    return DistInfo(rank=tdist.get_rank(), world_size=tdist.get_world_size(),
                    local_rank=local_rank, device=dev, backend=backend)


def cleanup(dist: DistInfo) -> None:
    """Leave the process group (no-op in a single process)."""
    if dist.is_distributed and tdist.is_initialized():
        tdist.destroy_process_group()


def barrier(dist: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_distributed:
        if dist.backend == "nccl":
            tdist.barrier(device_ids=[dist.local_rank])
        else:
            tdist.barrier()


def wrap_ddp(module: nn.Module, dist: DistInfo) -> nn.Module:
    """``DistributedDataParallel(module)`` when distributed and trainable, else ``module``.

    Buffers are not broadcast: the trained parts hold none that change (frozen trunks stay in
    eval mode and are identical on every rank by construction).
    """
    module.to(dist.device)
    if not dist.is_distributed or not any(p.requires_grad for p in module.parameters()):
        return module
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [dist.local_rank] if dist.device.type == "cuda" else None
    params = inspect.signature(DDP.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params \
        else {"broadcast_buffers": False}  # the older name (deprecated in newer torch)
    return DDP(module, device_ids=ids, **no_sync)


def per_rank_batch(batch_size: int, dist: DistInfo | None) -> int:
    """This rank's share of the global ``batch_size``: ``batch_size // world_size``.

    Raises
    ------
    ValueError
        ``batch_size`` is not a positive multiple of the world size (ranks must hold equally
        many rows for the gather, and the global batch must be the configured one).
    """
    world = dist.world_size if dist is not None else 1
    if batch_size < 1 or batch_size % world:
        raise ValueError(f"batch_size {batch_size} is the global batch and must be a positive "
                         f"multiple of the world size {world} (each rank takes "
                         f"batch_size // world_size samples per step)")
    return batch_size // world


class _ScaleGrad(torch.autograd.Function):
    """Identity whose backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def gather_batch(x: torch.Tensor, dist: DistInfo | None) -> torch.Tensor:
    """The global batch of a per-rank tensor: ``[b, ...]`` on each rank -> ``[W b, ...]``.

    Rows are rank-major (rank 0's rows, then rank 1's, ...) and identical on every rank. The
    other ranks' rows carry no gradient; this rank's rows are ``x`` itself (gradients flow into
    it), with the gradient multiplied by ``W`` so that DDP's averaging gives exactly the
    single-process gradient of the global-batch loss (module docstring). A tensor that does not
    require grad (a frozen teacher's embeddings) is gathered as it is. In a single process:
    ``x`` unchanged. Every rank must call it, in the same order, with the same shape.
    """
    if dist is None or not dist.is_distributed:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.world_size)]
    tdist.all_gather(parts, x.detach().contiguous())
    if x.requires_grad:
        parts[dist.rank] = _ScaleGrad.apply(x, float(dist.world_size))
    return torch.cat(parts)


def autocast(dist: DistInfo, enabled: bool = True) -> Any:
    """bf16 autocast on CUDA when ``enabled``; a no-op context on the CPU."""
    if enabled and dist.device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def all_reduce_mean(value: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    """Mean of ``value`` over ranks (a copy; the input is unchanged)."""
    out = value.detach().clone()
    if dist.is_distributed:
        tdist.all_reduce(out)
        out /= dist.world_size
    return out


def broadcast_object(obj: Any, dist: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not dist.is_distributed:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]
