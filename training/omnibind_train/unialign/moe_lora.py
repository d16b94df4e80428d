"""UniAlign's modality-aware mixture of LoRA experts (seed 002, Eq. 3-9), as plain torch modules.

A frozen FFN (``fc1 -> act -> fc2``) of a ViT block gains, per modality, ``n`` LoRA experts and a
router; the block's FFN output becomes ``F^FFN(x) + F^MoE(x)`` (Eq. 7). Where paper and the
public (third-party) copy of the code disagree, the paper's equations are the default and the
code's choice an option:

* **placement** - ``"parallel"`` (default, Eq. 7-9 as written: each expert is one LoRA
  ``D -> D`` beside the whole frozen FFN); ``"fc"`` (the code's ``MultiModalLoRAMoE_MG``: LoRA
  experts inside both ``fc1`` and ``fc2``, each with its own router).
* **routing** - ``"grouped"`` (default, Eq. 5 expert grouping: tokens of modality M go to M's
  own experts only, weighted by M's router: hard by modality, then learned); ``"global"``
  (Eq. 6: one router per modality over every modality's experts).
* **top-k** - the router's logits are cut to the k largest before the softmax (the code);
  ``top_k = n`` keeps the paper's dense softmax of Eq. 4.

LoRA (Eq. 9): ``(alpha / r) * B A x`` with A Kaiming-initialised and B zero, so a fresh block
computes exactly the frozen FFN. Rank r = 4 and alpha = 32 are the paper's. The routers have no
bias (the code). :func:`load_balance_loss` (Switch-Transformer style) is provided as an option:
the paper does not use one (the code has none either).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LoRA", "MoELoRA", "MoELoRAFFN", "load_balance_loss"]

PLACEMENTS = ("parallel", "fc")
ROUTINGS = ("grouped", "global")


class LoRA(nn.Module):
    """Eq. 9: ``(alpha / r) * B(A(dropout(x)))``; B starts at zero (the expert adds nothing)."""

    def __init__(self, d_in: int, d_out: int, *, r: int = 4, alpha: float = 32.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        self.A = nn.Linear(d_in, r, bias=False)
        self.B = nn.Linear(r, d_out, bias=False)
        nn.init.kaiming_uniform_(self.A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.B.weight)
        self.scale = float(alpha) / r
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.B(self.A(self.dropout(x)))


class MoELoRA(nn.Module):
    """Eq. 4/8 for one linear map: ``sum_i G(x)_i LoRA_i(x)`` over the routed experts.

    Parameters
    ----------
    d_in, d_out : the map's sizes.
    modalities : the modalities routed (each has its own router; with grouped routing also its
        own ``experts`` experts).
    experts : experts per modality (n).
    top_k : experts mixed per token (the k largest router logits, softmax over them).
    routing : ``"grouped"`` or ``"global"``.
    """

    def __init__(self, d_in: int, d_out: int, modalities: Sequence[str], *, experts: int = 2,
                 top_k: int = 2, r: int = 4, alpha: float = 32.0, dropout: float = 0.0,
                 routing: str = "grouped") -> None:
        super().__init__()
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
        if not modalities:
            raise ValueError("MoELoRA needs at least one modality")
        self.modalities = list(modalities)
        self.routing = routing
        self.experts_per_modality = int(experts)
        total = experts * len(self.modalities)
        self.experts = nn.ModuleList(LoRA(d_in, d_out, r=r, alpha=alpha, dropout=dropout)
                                     for _ in range(total))
        fan_out = experts if routing == "grouped" else total
        if not 1 <= top_k <= fan_out:
            raise ValueError(f"top_k must be in 1..{fan_out}, got {top_k}")
        self.top_k = int(top_k)
        self.routers = nn.ModuleDict({m: nn.Linear(d_in, fan_out, bias=False)
                                      for m in self.modalities})

    def expert_indices(self, modality: str) -> list[int]:
        """The experts a token of ``modality`` may be routed to (global: all of them)."""
        if modality not in self.routers:
            raise KeyError(f"no experts for modality {modality!r}; routed: {self.modalities}")
        if self.routing == "global":
            return list(range(len(self.experts)))
        k = self.modalities.index(modality)
        n = self.experts_per_modality
        return list(range(k * n, (k + 1) * n))

    def gates(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """``[..., fan_out]`` routing weights: softmax over the top-k logits, 0 elsewhere."""
        logits = self.routers[modality](x)
        if self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.softmax(logits, dim=-1)

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """``sum_i G_i (alpha / r) B_i A_i x`` as two matmuls over the stacked experts: the
        gate scales each expert's rank-r code before the B's (same sum, one kernel each)."""
        idx = self.expert_indices(modality)
        gates = self.gates(x, modality)
        first = self.experts[idx[0]]
        a = torch.cat([self.experts[i].A.weight for i in idx])             # [k r, d_in]
        b = torch.cat([self.experts[i].B.weight for i in idx], dim=1)      # [d_out, k r]
        h = F.linear(first.dropout(x), a) * gates.repeat_interleave(first.A.out_features, -1)
        return first.scale * F.linear(h, b)


class MoELoRAFFN(nn.Module):
    """A frozen ViT FFN with a modality-aware MoE of LoRA experts beside or inside it (Eq. 7).

    Parameters
    ----------
    fc1, fc2, act : the frozen FFN (``fc2(act(fc1(x)))``); frozen here.
    placement : ``"parallel"`` or ``"fc"`` (see the module docstring).
    """

    def __init__(self, fc1: nn.Linear, fc2: nn.Linear, act: nn.Module,
                 modalities: Sequence[str], *, placement: str = "parallel", experts: int = 2,
                 top_k: int = 2, r: int = 4, alpha: float = 32.0, dropout: float = 0.0,
                 routing: str = "grouped") -> None:
        super().__init__()
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        self.fc1, self.fc2, self.act = fc1, fc2, act
        for p in (*fc1.parameters(), *fc2.parameters()):
            p.requires_grad_(False)
        self.placement = placement
        opts = {"experts": experts, "top_k": top_k, "r": r, "alpha": alpha,
                "dropout": dropout, "routing": routing}
        d, hidden = fc1.in_features, fc1.out_features
        if placement == "parallel":
            self.moe = nn.ModuleDict({"ffn": MoELoRA(d, fc2.out_features, modalities, **opts)})
        else:
            self.moe = nn.ModuleDict({"fc1": MoELoRA(d, hidden, modalities, **opts),
                                      "fc2": MoELoRA(hidden, fc2.out_features, modalities,
                                                     **opts)})

    @property
    def modalities(self) -> list[str]:
        return next(iter(self.moe.values())).modalities

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """The FFN output for tokens of ``modality``; a modality without experts (e.g. the
        image path when image experts are off) gets exactly the frozen FFN."""
        if modality not in self.modalities:
            return self.fc2(self.act(self.fc1(x)))
        if self.placement == "parallel":
            return self.fc2(self.act(self.fc1(x))) + self.moe["ffn"](x, modality)
        h = self.act(self.fc1(x) + self.moe["fc1"](x, modality))
        return self.fc2(h) + self.moe["fc2"](h, modality)


def load_balance_loss(gates: torch.Tensor) -> torch.Tensor:
    """Switch-style balance: ``E * sum_e f_e * p_e`` (1 when tokens spread evenly).

    ``gates`` ``[..., E]`` are routing weights of a batch of tokens; ``f_e`` is the fraction of
    tokens whose top-1 expert is e, ``p_e`` the mean weight of e. Optional (not in the paper).
    """
    flat = gates.reshape(-1, gates.shape[-1])
    e = flat.shape[-1]
    top1 = F.one_hot(flat.argmax(dim=-1), e).float().mean(0)
    return e * (top1 * flat.mean(0)).sum()
