"""Projectors (seed 001 Eq. 1-2) and routers (Eq. 3-4): several pre-trained spaces bound into the
target space.

:class:`ProjectorMixture` maps one bound space into the target space: ``heads`` parallel
two-layer MLPs (``Linear -> BatchNorm -> ReLU -> Linear -> BatchNorm -> L2-normalise``) whose
outputs are averaged and *not* renormalised (the released code's ``seg_mean``; the paper says
"MLP projector", the mixture of heads comes from FreeBind and the code). One projector serves
every modality of its space, as in the released code. The target space needs none (identity).

:class:`ModalityRouter` is phi_x of Eq. 4: weights over the spaces that embed modality x, and
the bound embedding is ``normalize(sum_i w_i P_i)`` (Eq. 3). Where paper and code disagree we
follow the paper by default and keep the code's choice as an option:

* **depth** - ``"paper"``: "a two-layer MLP + sigmoid" (``Linear -> ReLU -> Linear``);
  ``"code"``: ``Linear(in, 512) -> BN -> ReLU -> Linear(512, 100) -> BN -> Tanh -> Linear``.
* **gate** - ``"sigmoid_softmax"`` (default; Eq. 4 applies softmax to phi, and Eq. 6 needs phi
  to end in a sigmoid, so both paper and code do softmax(sigmoid)); ``"softmax"``: plain
  softmax of the logits (the ablation). ``scale`` multiplies the sigmoid before the softmax:
  1 as written; the code uses 10 for text (weights may then differ by up to e^10, not e).
* **input** - ``"concat"`` (default; the paper: "the concatenated outputs of each modality",
  read as the projected embeddings of every space of that modality, zeros for an absent one);
  ``"designated"``: the code's choice, the raw embedding of one named space (text: several
  concatenated).

Absent spaces (``present`` masks) get weight exactly 0 and the rest still sum to 1.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..trainers.common import ConfigBase

__all__ = ["BindingModel", "ModalityRouter", "ProjectorMixture", "RouterConfig", "SpaceInfo"]

ROUTER_DEPTHS = ("paper", "code")
ROUTER_GATES = ("sigmoid_softmax", "softmax")
ROUTER_INPUTS = ("concat", "designated")


@dataclass(frozen=True)
class SpaceInfo:
    """What binding knows of a pre-trained space: its size and the modalities it embeds."""

    name: str
    dim: int
    modalities: tuple[str, ...]


class ProjectorHead(nn.Module):
    """One head of the mixture: ``Linear -> BN -> ReLU -> Linear -> BN -> L2-normalise``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim),
                                 nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim),
                                 nn.BatchNorm1d(out_dim))
        for m in self.net:
            if isinstance(m, nn.Linear):  # the released code initialises with Xavier
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)


class ProjectorMixture(nn.Module):
    """psi of Eq. 1: the mean of ``heads`` projector heads (not renormalised)."""

    def __init__(self, in_dim: int, out_dim: int, *, heads: int = 3, hidden_dim: int = 512
                 ) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(f"a projector needs at least one head, got {heads}")
        self.heads = nn.ModuleList(ProjectorHead(in_dim, out_dim, hidden_dim)
                                   for _ in range(heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([h(x) for h in self.heads]).mean(dim=0)


@dataclass
class RouterConfig(ConfigBase):
    """How routers are built (see the module docstring for the paper-vs-code choices).

    Attributes
    ----------
    depth : ``"paper"`` or ``"code"``.
    gate : ``"sigmoid_softmax"`` or ``"softmax"``.
    input : ``"concat"`` or ``"designated"``.
    hidden_dim : hidden width of the paper-depth router.
    scale : modality -> factor on the sigmoid before the softmax (default 1).
    designated : modality -> spaces whose raw embeddings feed the router (``input:
        designated``); default the modality's first space.
    """

    depth: str = "paper"
    gate: str = "sigmoid_softmax"
    input: str = "concat"
    hidden_dim: int = 256
    scale: dict[str, float] = field(default_factory=dict)
    designated: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value, allowed in (("depth", self.depth, ROUTER_DEPTHS),
                                     ("gate", self.gate, ROUTER_GATES),
                                     ("input", self.input, ROUTER_INPUTS)):
            if value not in allowed:
                raise ValueError(f"router {name} must be one of {allowed}, got {value!r}")


class ModalityRouter(nn.Module):
    """phi_x: ``router input [B, F] -> (weights [B, S], gate [B, S])`` over S spaces."""

    def __init__(self, in_dim: int, num_spaces: int, *, depth: str = "paper",
                 gate: str = "sigmoid_softmax", hidden_dim: int = 256, scale: float = 1.0
                 ) -> None:
        super().__init__()
        if depth == "paper":
            self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True),
                                     nn.Linear(hidden_dim, num_spaces))
        elif depth == "code":
            self.mlp = nn.Sequential(nn.Linear(in_dim, 512), nn.BatchNorm1d(512),
                                     nn.ReLU(inplace=True), nn.Linear(512, 100),
                                     nn.BatchNorm1d(100), nn.Tanh(), nn.Linear(100, num_spaces))
        else:
            raise ValueError(f"router depth must be one of {ROUTER_DEPTHS}, got {depth!r}")
        if gate not in ROUTER_GATES:
            raise ValueError(f"router gate must be one of {ROUTER_GATES}, got {gate!r}")
        self.gate_kind = gate
        self.scale = float(scale)
        self.num_spaces = num_spaces

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights (sum to 1 over present spaces, 0 for absent ones) and the sigmoid gate
        phi(x) that L_dec supervises."""
        logits = self.mlp(x)
        gate = torch.sigmoid(logits)
        scores = self.scale * gate if self.gate_kind == "sigmoid_softmax" else logits
        if present is not None:
            scores = scores.masked_fill(~present.to(torch.bool), float("-inf"))
        return torch.softmax(scores, dim=-1), gate


class BindingModel(nn.Module):
    """Projectors of every bound space and one router per modality.

    Parameters
    ----------
    spaces : the bound spaces, in a stable order (router outputs follow it).
    target : name of the target space (identity projector; its dim is the bound space's D).
    router : router config.
    projector_heads, projector_hidden : the mixture's size.
    """

    def __init__(self, spaces: Sequence[SpaceInfo], target: SpaceInfo, *,
                 router: RouterConfig | None = None, projector_heads: int = 3,
                 projector_hidden: int = 512) -> None:
        super().__init__()
        self.spaces = {s.name: s for s in spaces}
        self.target = target
        self.dim = int(target.dim)
        self.router_config = router or RouterConfig()
        self.projectors = nn.ModuleDict({
            s.name: nn.Identity() if s.name == target.name else
            ProjectorMixture(s.dim, self.dim, heads=projector_heads, hidden_dim=projector_hidden)
            for s in spaces})
        self.slots: dict[str, list[str]] = {}
        for s in spaces:
            for m in s.modalities:
                self.slots.setdefault(m, []).append(s.name)
        self.routers = nn.ModuleDict({
            m: ModalityRouter(self._router_in_dim(m), len(names),
                              depth=self.router_config.depth, gate=self.router_config.gate,
                              hidden_dim=self.router_config.hidden_dim,
                              scale=self.router_config.scale.get(m, 1.0))
            for m, names in self.slots.items()})

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.slots)

    def designated(self, modality: str) -> list[str]:
        names = self.router_config.designated.get(modality) or self.slots[modality][:1]
        unknown = [n for n in names if n not in self.slots[modality]]
        if unknown:
            raise ValueError(f"router of {modality}: designated space(s) {unknown} do not embed "
                             f"{modality}; its spaces: {self.slots[modality]}")
        return list(names)

    def _router_in_dim(self, modality: str) -> int:
        if self.router_config.input == "concat":
            return self.dim * len(self.slots[modality])
        return sum(self.spaces[n].dim for n in self.designated(modality))

    def project(self, space: str, x: torch.Tensor) -> torch.Tensor:
        """psi_space(x): ``[B, d_space] -> [B, D]`` (identity for the target space)."""
        out = self.projectors[space](x)
        return F.normalize(out, dim=-1) if space == self.target.name else out

    def projected(self, modality: str, raw: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, S, D]`` projected embeddings of every slot (zeros where a space is absent)."""
        ref = next(iter(raw.values()))
        out = []
        for name in self.slots[modality]:
            if name in raw:
                out.append(self.project(name, raw[name]))
            else:
                out.append(ref.new_zeros(ref.shape[0], self.dim))
        return torch.stack(out, dim=1)

    def present_mask(self, modality: str, raw: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.tensor([n in raw for n in self.slots[modality]], dtype=torch.bool)

    def route(self, modality: str, raw: Mapping[str, torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. 3-4 for one modality.

        Parameters
        ----------
        raw : space -> ``[B, d_space]`` embeddings of the batch in that space (a space left out
            is absent: weight 0).

        Returns
        -------
        (bound ``[B, D]`` unit embeddings, weights ``[B, S]``, gate ``[B, S]``)
        """
        if not any(n in raw for n in self.slots[modality]):
            raise ValueError(f"route({modality}): none of its spaces {self.slots[modality]} given")
        projected = self.projected(modality, raw)
        present = self.present_mask(modality, raw).to(projected.device)
        return self.route_projected(modality, projected, present, raw)

    def route_projected(self, modality: str, projected: torch.Tensor, present: torch.Tensor,
                        raw: Mapping[str, torch.Tensor] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`route` from already projected slots ``[B, S, D]`` (frozen projectors: the
        projections of a fixed item set are computed once); ``raw`` is needed only by a
        ``designated``-input router."""
        if self.router_config.input == "concat":
            router_in = projected.flatten(1)
        else:
            raw = raw or {}
            missing = [n for n in self.designated(modality) if n not in raw]
            if missing:
                raise ValueError(f"route({modality}): the router reads {missing}, absent")
            router_in = torch.cat([raw[n] for n in self.designated(modality)], dim=1)
        weights, gate = self.routers[modality](router_in, present.expand(projected.shape[0], -1))
        bound = (weights.unsqueeze(-1) * projected).sum(dim=1)
        return F.normalize(bound, dim=-1), weights, gate

    def fixed_average(self, modality: str, raw: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """FreeBind-style fixed equal weights over the present projected spaces."""
        projected = self.projected(modality, raw)
        present = self.present_mask(modality, raw).to(projected)
        bound = (projected * present[None, :, None]).sum(dim=1) / present.sum()
        return F.normalize(bound, dim=-1)

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters of every projector and router."""
        out = {f"projector/{k}": sum(p.numel() for p in v.parameters())
               for k, v in self.projectors.items()}
        out.update({f"router/{k}": sum(p.numel() for p in v.parameters())
                    for k, v in self.routers.items()})
        return out
