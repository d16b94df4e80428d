"""The binding losses of OmniBind (seed 001, Sec. 3): Eq. 2 (symmetric InfoNCE), Eq. 5 (cross-modal
overall alignment), Eq. 6 (language representation decoupling) and Eq. 7 (their sum).

Written as the paper writes them, with two readings where the extracted text is ambiguous:

* Eq. 2 has a ``1/N`` factor lost in extraction; we keep it (a mean over the batch), and the two
  directions are *summed*, as the equation is written, not averaged as in CLIP's code.
* Eq. 5 is a plain sum over all modality pairs (the text says "averaging", the equation sums);
  with seven modalities that is 21 terms. ``reduction="mean"`` divides by the pair count for
  users who prefer the text's reading (the loss scale then matches one pair).

Under ``torchrun`` the contrastive terms gather every rank's embeddings first
(:func:`gather_with_grad`), so each row sees the global batch as negatives, as on one device.
Every rank then computes the *whole* global loss (the same value on every rank; for the batch
sizes of binding the ``[N, N]`` logits are cheap). ``torch.distributed.nn.functional.all_gather``
back-propagates by summing the gathered tensor's gradient over ranks (reduce-scatter), so rank r's
slice receives ``world_size * dL/dx_r``; averaging the parameter gradients over ranks (what DDP
and :func:`.train_binding.all_reduce_grads` do) then gives exactly the single-process gradient of
the loss on the global batch (``test_binding_ddp.py`` checks both the value and the gradient).
The logits are computed in fp32 even under bf16 autocast: with tau = 0.03 a bf16 product would
carry errors of ~0.1 in the logits.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = ["decoupling_loss", "gather_with_grad", "info_nce", "overall_alignment_loss",
           "router_loss"]

#: tau of every binding contrastive term (seed 001, Sec. 4.1).
BINDING_TEMPERATURE = 0.03


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank (this rank's slice keeps its gradient); ``x`` itself
    when not distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def info_nce(x: torch.Tensor, y: torch.Tensor, tau: float = BINDING_TEMPERATURE, *,
             gather: bool = True) -> torch.Tensor:
    """Eq. 2: ``-(1/N) sum_i [log softmax_j(x_i.y_j / tau)_i + log softmax_j(y_i.x_j / tau)_i]``.

    Parameters
    ----------
    x, y : ``[N, D]`` embeddings, row i of ``x`` paired with row i of ``y`` (normalised by the
        caller: Eq. 2 takes dot products).
    tau : temperature.
    gather : under ``torch.distributed``, use every rank's rows as negatives.
    """
    if x.shape != y.shape:
        raise ValueError(f"info_nce: paired batches differ in shape {tuple(x.shape)} vs "
                         f"{tuple(y.shape)}")
    if gather:
        x, y = gather_with_grad(x), gather_with_grad(y)
    logits = x.float() @ y.float().T / tau
    target = torch.arange(x.shape[0], device=x.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)


def overall_alignment_loss(embeddings: Mapping[str, torch.Tensor],
                           tau: float = BINDING_TEMPERATURE, *,
                           pairs: Sequence[tuple[str, str]] | None = None,
                           reduction: str = "sum") -> torch.Tensor:
    """Eq. 5: ``sum over modality pairs (m, n) of Info(X_m, X_n)`` on the same tuples.

    Parameters
    ----------
    embeddings : modality -> ``[N, D]`` routed (bound) embeddings of the same N tuples.
    pairs : the pairs to sum (default every unordered pair of ``embeddings``' keys).
    reduction : ``"sum"`` (Eq. 5 as written) or ``"mean"`` over the pairs.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    pairs = list(pairs) if pairs is not None else list(itertools.combinations(embeddings, 2))
    if not pairs:
        raise ValueError("overall_alignment_loss needs at least two modalities")
    total = sum(info_nce(embeddings[a], embeddings[b], tau) for a, b in pairs)
    return total / len(pairs) if reduction == "mean" else total


def decoupling_loss(text_gate: torch.Tensor, corpus_targets: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 6: ``-sum_j [y_j log phi_t(T)_j + (1 - y_j) log(1 - phi_t(T)_j)]``, batch mean.

    Parameters
    ----------
    text_gate : ``[N, M]`` the text router's sigmoid outputs phi_t(T) (one per text encoder).
    corpus_targets : ``[N, M]`` y_j = 1 where the caption comes from the corpus text encoder j
        was trained on.
    mask : ``[M]`` bool, text encoders present in this variant (absent ones do not count).
    """
    p = text_gate.clamp(1e-6, 1 - 1e-6)
    y = corpus_targets.to(p.dtype)
    terms = -(y * p.log() + (1 - y) * (1 - p).log())
    if mask is not None:
        terms = terms * mask.to(p.dtype)
    return terms.sum(dim=1).mean()


def router_loss(align: torch.Tensor, dec: torch.Tensor | None, lam: float = 3.0
                ) -> torch.Tensor:
    """Eq. 7: ``L = lambda * L_dec + L_align`` (lambda = 3, Sec. 4.1); ``dec=None``: L_align
    alone (the ablation)."""
    return align if dec is None else align + lam * dec
