"""What every real pre-trained space ("expert") provides to binding, and the strict loader.

A real expert is a published multimodal model (open_clip / EVA-CLIP image-text, LAION-CLAP
audio-text, Uni3D point-text, ImageBind) rebuilt as plain ``nn.Module`` code whose parameter
names match the published checkpoint, so the checkpoint loads with ``strict=True``. Nothing is
downloaded: ``ExpertConfig.checkpoint`` is a local file (``.safetensors`` or a weights-only
torch file, read by :func:`omnibind_train.models.vit.read_checkpoint`).

Binding never looks inside an expert: it asks :meth:`ExpertSpace.encode` for unit embeddings of
one modality's preprocessed batch. ``ExpertConfig.preprocess`` carries, per modality, what the
expert expects (sample rate and clip length, image size and mean/std, point count and groups,
tokenizer and context length), so a pipeline can prepare its inputs.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...models.vit import read_checkpoint

__all__ = ["ExpertConfig", "ExpertSpace", "GeluMlp", "Inputs", "build_expert", "check_state_keys",
           "expert_kinds", "get_expert_config", "list_experts", "register_expert",
           "register_expert_kind"]

#: A modality's preprocessed batch: a tensor, or named tensors (token ids + attention mask).
Inputs = torch.Tensor | Mapping[str, torch.Tensor]


@dataclass
class ExpertConfig:
    """A real expert: which architecture, where its weights are, what its inputs look like.

    Attributes
    ----------
    kind : architecture family (``expert_kinds()``: "open_clip", "eva_clip", "laion_clap",
        "uni3d", "imagebind").
    checkpoint : local path of the published checkpoint (None: random init, tests only).
    arch : architecture sizes (widths, depths, heads, ...); the family's defaults are the
        published model's, tests pass tiny ones.
    preprocess : per modality, the input contract (documented by each family).
    modalities : modalities this space embeds (None: all the family provides).
    """

    kind: str
    checkpoint: str | None = None
    arch: dict[str, Any] = field(default_factory=dict)
    preprocess: dict[str, dict[str, Any]] = field(default_factory=dict)
    modalities: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExpertConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown expert config key(s) {unknown}; known: {sorted(known)}")
        return cls(**copy.deepcopy(dict(data)))


class ExpertSpace(nn.Module):
    """A pre-trained embedding space: one encoder per modality into a ``embed_dim`` space.

    Subclasses fill ``self.encoders`` (``nn.ModuleDict``: modality -> module whose forward takes
    the modality's :data:`Inputs` and returns ``[B, embed_dim]`` un-normalised embeddings) and
    may override :meth:`encode` where a modality needs more than one call.
    """

    def __init__(self, config: ExpertConfig, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = int(embed_dim)
        self.encoders = nn.ModuleDict()

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.encoders.keys())

    def encode(self, modality: str, inputs: Inputs) -> torch.Tensor:
        """``[B, embed_dim]`` unit embeddings of one modality's preprocessed batch."""
        if modality not in self.encoders:
            raise KeyError(f"{type(self).__name__} has no {modality!r} encoder; it embeds "
                           f"{list(self.modalities)}")
        enc = self.encoders[modality]
        out = enc(**inputs) if isinstance(inputs, Mapping) else enc(inputs)
        return F.normalize(out.float(), dim=-1)

    def load_published(self, state: Mapping[str, torch.Tensor], *, what: str) -> None:
        """Load a published state_dict (already mapped to this module's names) strictly."""
        check_state_keys(self, state, what=what)
        self.load_state_dict(dict(state), strict=True)


def check_state_keys(module: nn.Module, state: Mapping[str, torch.Tensor], *, what: str,
                     max_listed: int = 12) -> None:
    """Raise ``ValueError`` naming missing / unexpected keys and shape mismatches.

    A wrong checkpoint (another model, another size, a truncated file) must be reported by
    name, not by a ``KeyError`` deep inside a forward pass.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if not (missing or unexpected or shapes):
        return

    def listed(keys: list[str]) -> str:
        more = f" ... (+{len(keys) - max_listed} more)" if len(keys) > max_listed else ""
        return ", ".join(keys[:max_listed]) + more

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {listed(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es): {listed(shapes)}")
    raise ValueError(f"{what}: checkpoint does not match the configured architecture; "
                     + "; ".join(parts))


class GeluMlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` with the ``fc1`` / ``fc2`` names the published checkpoints use
    (HTSAT's and ImageBind's transformer MLPs)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


# --- registry ---------------------------------------------------------------------------------

#: kind -> builder(config, load_weights) -> ExpertSpace
_KINDS: dict[str, Callable[[ExpertConfig, bool], ExpertSpace]] = {}
_EXPERTS: dict[str, ExpertConfig] = {}


def register_expert_kind(kind: str, builder: Callable[[ExpertConfig, bool], ExpertSpace]
                         ) -> None:
    """Register an architecture family's builder (each family module calls this once)."""
    _KINDS[kind] = builder


def expert_kinds() -> list[str]:
    _import_families()
    return sorted(_KINDS)


def register_expert(name: str, config: ExpertConfig, *, overwrite: bool = False) -> None:
    """Register a named expert config (e.g. ``"laion_clap_630k_fusion"``)."""
    if name in _EXPERTS and not overwrite:
        raise ValueError(f"expert {name!r} is already registered")
    _EXPERTS[name] = copy.deepcopy(config)


def list_experts() -> list[str]:
    _import_families()
    return sorted(_EXPERTS)


def get_expert_config(name: str, **overrides: Any) -> ExpertConfig:
    """A copy of the registered config ``name`` with fields replaced (e.g. ``checkpoint=``)."""
    _import_families()
    if name not in _EXPERTS:
        raise KeyError(f"unknown expert {name!r}; registered: {sorted(_EXPERTS)}")
    return dataclasses.replace(copy.deepcopy(_EXPERTS[name]), **overrides)


def build_expert(config: ExpertConfig | str, *, load_weights: bool = True, **overrides: Any
                 ) -> ExpertSpace:
    """Build an expert space; with ``load_weights`` its checkpoint is read and loaded strictly.

    Raises ``ValueError`` when the checkpoint is missing or does not match (naming the keys).
    """
    _import_families()
    cfg = get_expert_config(config, **overrides) if isinstance(config, str) \
        else dataclasses.replace(config, **overrides)
    if cfg.kind not in _KINDS:
        raise ValueError(f"unknown expert kind {cfg.kind!r}; known: {sorted(_KINDS)}")
    if load_weights and cfg.checkpoint is None:
        raise ValueError(f"{cfg.kind}: set checkpoint to a local file of the published weights "
                         "(or build with load_weights=False)")
    space = _KINDS[cfg.kind](cfg, load_weights)
    return space.eval()


def load_checkpoint_state(path: str) -> dict[str, torch.Tensor]:
    """A checkpoint's state_dict (safetensors or weights-only torch; unwraps and strips
    ``module.``)."""
    return read_checkpoint(path)


def _import_families() -> None:
    """Import the family modules so their ``register_*`` calls have run."""
    from . import families  # noqa: F401
