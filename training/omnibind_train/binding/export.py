"""The bound encoders the robot runs: per modality one graph = the frozen trunk once, every
specialist tower of that modality, their projectors and the modality's router, producing the
unit embedding in the target space.

A :class:`BoundEncoder` looks to the bundle writer like any encoder (``config.to_dict()``,
``embed_dim``, ``tokenizer`` for text), so the same :func:`omnibind_train.export.export_bundle`
writes, checks (ONNX Runtime vs torch) and publishes the bound bundle; the runtime then runs it
by ``bundle_path`` with no code of its own. The torch fallback rebuilds it from the recorded
config through :func:`build_bound_encoder` (dispatched by ``family: binding`` in
:func:`omnibind_train.models.build.build_torch_module`).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..models.registry import TRUNK_KINDS
from .model import BindingModel, RouterConfig, SpaceInfo
from .specialists import SimSpace, SpecialistSpec

__all__ = ["BoundEncoder", "BoundEncoderConfig", "FAMILY", "build_bound_encoder"]

FAMILY = "binding"


@dataclass
class BoundEncoderConfig:
    """Everything needed to rebuild one modality's bound encoder (stored in ``bundle.yaml``).

    Attributes
    ----------
    modality : the modality it embeds.
    embed_dim : D of the target space.
    trunk : the frozen trunk config (``kind`` + fields, as :class:`EncoderConfig` stores it);
        None for point clouds (their towers read points).
    spaces : per bound space of this modality: ``name``, ``dim``, ``tower`` spec.
    target : ``{"name", "dim"}`` of the target space.
    router : the router config (:class:`RouterConfig` fields).
    projector : ``{"heads", "hidden_dim"}``.
    variant : the variant's name (Base / Large / Full).
    """

    modality: str
    embed_dim: int
    trunk: dict[str, Any] | None
    spaces: list[dict[str, Any]]
    target: dict[str, Any]
    router: dict[str, Any]
    projector: dict[str, Any] = field(default_factory=lambda: {"heads": 3, "hidden_dim": 512})
    variant: str = "full"
    family: str = FAMILY

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BoundEncoderConfig:
        return cls(**copy.deepcopy(dict(data)))


class BoundEncoder(nn.Module):
    """``preprocessed input -> trunk -> towers -> projectors -> router -> unit [B, D]``."""

    def __init__(self, config: BoundEncoderConfig, *, load_trunk_weights: bool = False) -> None:
        super().__init__()
        self.config = config
        self.modality = config.modality
        self.embed_dim = int(config.embed_dim)
        self.trunk: nn.Module | None = None
        if config.trunk is not None:
            trunk_cfg = dict(config.trunk)
            kind = trunk_cfg.pop("kind")
            self.trunk_config = TRUNK_KINDS[kind](**trunk_cfg)
            self.trunk = self.trunk_config.build(load_weights=load_trunk_weights)
            self.trunk.requires_grad_(False).eval()
        specs = [SpecialistSpec(name=s["name"], analogue="", dim=int(s["dim"]),
                                towers={config.modality: s["tower"]}) for s in config.spaces]
        self.towers = nn.ModuleDict({s.name: SimSpace(s).towers[config.modality] for s in specs})
        self.input_kinds = {s.name: s.input_kind(config.modality) for s in specs}
        target = SpaceInfo(config.target["name"], int(config.target["dim"]), ())
        infos = [SpaceInfo(s["name"], int(s["dim"]), (config.modality,)) for s in config.spaces]
        self.binding = BindingModel(infos, target, router=RouterConfig(**config.router),
                                    projector_heads=int(config.projector["heads"]),
                                    projector_hidden=int(config.projector["hidden_dim"]))
        self.tokenizer: Any = None
        if config.trunk is not None and hasattr(self.trunk_config, "build_tokenizer"):
            self.tokenizer = self.trunk_config.build_tokenizer()

    def train(self, mode: bool = True) -> BoundEncoder:
        super().train(mode)
        if self.trunk is not None:
            self.trunk.eval()
        return self

    def forward(self, *inputs: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        feats = self.trunk(*inputs, **kwargs) if self.trunk is not None else None
        raw: dict[str, torch.Tensor] = {}
        for name, tower in self.towers.items():
            kind = self.input_kinds[name]
            x = feats if kind in ("trunk", "text") else inputs[0]
            raw[name] = torch.nn.functional.normalize(tower(x), dim=-1)
        bound, _, _ = self.binding.route(self.modality, raw)
        return bound


def bound_encoder_from_trained(modality: str, spaces: Sequence[SimSpace], model: BindingModel,
                               *, trunk: Mapping[str, Any] | None, trunk_module: nn.Module | None,
                               variant: str, tokenizer: Any = None) -> BoundEncoder:
    """Assemble a bound encoder from the trained spaces, projectors and router."""
    names = model.slots[modality]
    by_name = {s.name: s for s in spaces}
    cfg = BoundEncoderConfig(
        modality=modality, embed_dim=model.dim, trunk=dict(trunk) if trunk else None,
        spaces=[{"name": n, "dim": by_name[n].embed_dim,
                 "tower": copy.deepcopy(by_name[n].spec.towers[modality])} for n in names],
        target={"name": model.target.name, "dim": model.target.dim},
        router=asdict(model.router_config),
        projector={"heads": _heads(model), "hidden_dim": _hidden(model)}, variant=variant)
    enc = BoundEncoder(cfg)
    if trunk_module is not None:
        enc.trunk = trunk_module
        enc.trunk.requires_grad_(False).eval()
    for n in names:
        enc.towers[n].load_state_dict(by_name[n].towers[modality].state_dict())
        enc.binding.projectors[n].load_state_dict(model.projectors[n].state_dict())
    enc.binding.routers[modality].load_state_dict(model.routers[modality].state_dict())
    enc.tokenizer = tokenizer if tokenizer is not None else enc.tokenizer
    return enc.eval()


def _heads(model: BindingModel) -> int:
    for p in model.projectors.values():
        if hasattr(p, "heads"):
            return len(p.heads)
    return 1


def _hidden(model: BindingModel) -> int:
    for p in model.projectors.values():
        if hasattr(p, "heads"):
            return int(p.heads[0].net[0].out_features)
    return 1


def build_bound_encoder(config: Mapping[str, Any]) -> BoundEncoder:
    """The torch fallback's builder: fresh weights, ``state_dict`` keys of the exported one."""
    return BoundEncoder(BoundEncoderConfig.from_dict(config))
