"""The pre-trained spaces binding starts from, as small *specialist spaces* of the simulated world.

The seeds bind 14 public spaces; none can be downloaded here, so each is mirrored by a small
contrastive model trained beforehand on its own data split, each seeing only its own modality
pairs and its own caption corpus (:mod:`.captions`), differing in trunk, loss, size, data subset
and corpus. The table follows ``binding_unialign_spec.md`` C.1:

======  =====================  ===============================================================
space   paper analogue         what it is
======  =====================  ===============================================================
s0      EVA-CLIP-18B (target)  the largest image-text model, all image-caption pairs, longest
                               training; its text tower is the frozen MiniLM itself, so its
                               space is the default teacher space (the binding target)
s1      EVA02-CLIP-E/14+       image-text, EfficientNet trunk + 3-layer heads, InfoNCE, 2/3 of
                               the pairs; also the frozen image anchor of s6-s7 and s9-s11
s2      SigLIP                 image-text, sigmoid loss, another half of the pairs
s3      DFN ViT-H              image-text, a tiny CNN trained from scratch (different trunk)
s4      WavCaps (PT)           audio-text on sound captions
s5      LAION-CLAP             audio-text, fine-tuned from s4 on another half, other seed
s6      Uni3D (full scans)     LiDAR aligned to frozen s1 images + geometry captions
s7      Uni3D (partial scans)  the same on scans with an extra occluding cut (30-60 % removed)
s8      ImageBind              weak generalist: its own image-text on a small subset, then
                               audio, thermal, event, tactile aligned to its frozen image tower
s9      (thermal-image-text)   thermal aligned to frozen s1 images + heat captions
s10     (EventBind-like)       event frames aligned to frozen s1 images + motion captions
s11     (UniTouch-like)        tactile aligned to frozen s1 images + texture captions
======  =====================  ===============================================================

Every non-text modality then has at least two spaces to route between (image: s0-s3, s8;
audio: s4, s5, s8; point cloud: s6, s7; thermal: s8, s9; event: s8, s10; tactile: s8, s11).
A tower "anchored" to another space (``anchors``) is that space's frozen tower, used only as a
training target (so an anchored space has its anchor's size and lives in its geometry: s6's
points are comparable with s1's images): it is not one of the space's bound modalities (as the
released OmniBind-Full drops the Uni3D image projectors, which are EVA02 embeddings again).
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .towers import build_tower, tower_input_kind

__all__ = ["PhaseSpec", "SimSpace", "SpecialistSpec", "SPECIALISTS", "get_specialist",
           "list_specialists", "register_specialist"]

LOSSES = ("infonce", "sigmoid")


@dataclass
class PhaseSpec:
    """One training phase of a specialist.

    Attributes
    ----------
    data : ``"teacher"`` (image-caption pairs) or ``"student"`` (paired, every modality).
    subset : ``[start, stop)`` fractions of the split's instances this phase sees.
    pairs : contrastive pairs ``[a, b]``; a name ``"image@s1"`` is space s1's frozen tower.
    train : towers updated in this phase (default: every own tower named in ``pairs``).
    epochs, lr, batch_size : the loop.
    """

    data: str = "teacher"
    subset: list[float] = field(default_factory=lambda: [0.0, 1.0])
    pairs: list[list[str]] = field(default_factory=list)
    train: list[str] | None = None
    epochs: int = 10
    lr: float = 1.0e-3
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.data not in ("teacher", "student"):
            raise ValueError(f"phase data must be teacher or student, got {self.data!r}")
        lo, hi = (float(v) for v in self.subset)
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"phase subset must be 0 <= start < stop <= 1, got {self.subset}")
        if not self.pairs:
            raise ValueError("a phase needs at least one contrastive pair")


@dataclass
class SpecialistSpec:
    """A specialist space: its towers, corpus, loss and phases (a registry entry).

    Attributes
    ----------
    name : short id ("s4").
    analogue : the published space it mirrors.
    dim : embedding size of the space.
    towers : modality -> tower spec (``kind`` mlp | identity | tiny_cnn | pointnet + sizes).
    anchors : modality -> space whose frozen tower serves as a training target.
    corpus : caption style its text tower is trained on (:data:`.captions.STYLES`).
    loss : ``"infonce"`` (CLIP) or ``"sigmoid"`` (SigLIP).
    temperature : initial tau of the learnable logit scale.
    init_from : a space whose matching towers initialise this one (a fine-tune).
    point_occlusion : ``[min, max]`` fraction of points an occluding cut removes in training
        (partial-scan specialists), or None.
    seed : offset of its initialisation / batch seed.
    phases : the training phases in order.
    """

    name: str
    analogue: str
    dim: int
    towers: dict[str, dict[str, Any]]
    corpus: str = "appearance"
    anchors: dict[str, str] = field(default_factory=dict)
    loss: str = "infonce"
    temperature: float = 0.07
    init_from: str | None = None
    point_occlusion: list[float] | None = None
    seed: int = 0
    phases: list[PhaseSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"{self.name}: loss must be one of {LOSSES}, got {self.loss!r}")
        self.phases = [p if isinstance(p, PhaseSpec) else PhaseSpec(**p) for p in self.phases]
        for phase in self.phases:
            for pair in phase.pairs:
                for ref in pair:
                    m, _, space = ref.partition("@")
                    if space and self.anchors.get(m) != space:
                        raise ValueError(f"{self.name}: pair member {ref!r} is not an anchor")
                    if not space and m not in self.towers:
                        raise ValueError(f"{self.name}: pair member {ref!r} has no tower")

    @property
    def modalities(self) -> tuple[str, ...]:
        """The bound modalities: its own towers (anchors excluded)."""
        return tuple(self.towers)

    def input_kind(self, modality: str) -> str:
        return tower_input_kind(modality, self.towers[modality])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpecialistSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown specialist key(s) {unknown}; known: {sorted(known)}")
        return cls(**copy.deepcopy(dict(data)))


class SimSpace(nn.Module):
    """A specialist space: one tower per bound modality, unit embeddings of cached inputs."""

    def __init__(self, spec: SpecialistSpec) -> None:
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.embed_dim = int(spec.dim)
        self.towers = nn.ModuleDict({m: build_tower(m, t, spec.dim)
                                     for m, t in spec.towers.items()})
        self.loss_kind = spec.loss
        # CLIP: learnable log(1/tau); SigLIP: log t = log 10 and bias -10 (its paper's init)
        init = 10.0 if spec.loss == "sigmoid" else 1.0 / spec.temperature
        self.log_scale = nn.Parameter(torch.tensor(float(init)).log())
        self.bias = nn.Parameter(torch.tensor(-10.0)) if spec.loss == "sigmoid" else None

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.towers.keys())

    def encode(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """``[B, dim]`` unit embeddings of one modality's cached input."""
        return F.normalize(self.towers[modality](x), dim=-1)

    def pair_loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The space's own contrastive loss on paired unit embeddings."""
        scale = self.log_scale.exp().clamp(max=100.0)
        logits = scale * a @ b.T
        if self.loss_kind == "sigmoid":
            assert self.bias is not None
            labels = 2 * torch.eye(a.shape[0], device=a.device) - 1
            return -F.logsigmoid(labels * (logits + self.bias)).sum() / a.shape[0]
        target = torch.arange(a.shape[0], device=a.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


# --- the registry -----------------------------------------------------------------------------

SPECIALISTS: dict[str, SpecialistSpec] = {}


def register_specialist(spec: SpecialistSpec, *, overwrite: bool = False) -> None:
    if spec.name in SPECIALISTS and not overwrite:
        raise ValueError(f"specialist {spec.name!r} is already registered")
    SPECIALISTS[spec.name] = copy.deepcopy(spec)


def list_specialists() -> list[str]:
    return sorted(SPECIALISTS, key=lambda n: (len(n), n))


def get_specialist(name: str, overrides: Mapping[str, Any] | None = None) -> SpecialistSpec:
    """A copy of a registered spec, with top-level fields replaced by ``overrides``."""
    if name not in SPECIALISTS:
        raise KeyError(f"unknown specialist {name!r}; registered: {list_specialists()}")
    data = SPECIALISTS[name].to_dict()
    data.update(copy.deepcopy(dict(overrides or {})))
    return SpecialistSpec.from_dict(data)


def _mlp(hidden: int = 512, layers: int = 2) -> dict[str, Any]:
    return {"kind": "mlp", "hidden_dim": hidden, "layers": layers}


def _phase(data: str, pairs: Sequence[Sequence[str]], *, subset: Sequence[float] = (0.0, 1.0),
           epochs: int = 10, lr: float = 1e-3, train: Sequence[str] | None = None,
           batch_size: int = 256) -> PhaseSpec:
    return PhaseSpec(data=data, subset=list(subset), pairs=[list(p) for p in pairs],
                     train=list(train) if train is not None else None, epochs=epochs, lr=lr,
                     batch_size=batch_size)


def _register_defaults() -> None:
    it = [["image", "text"]]
    for spec in (
        SpecialistSpec("s0", "EVA-CLIP-18B (binding target)", 384,
                       {"image": _mlp(1024, 3), "text": {"kind": "identity"}},
                       phases=[_phase("teacher", it, epochs=12)]),
        SpecialistSpec("s1", "EVA02-CLIP-E/14+", 256,
                       {"image": _mlp(768, 3), "text": _mlp(512, 2)}, seed=1,
                       phases=[_phase("teacher", it, subset=(0.0, 0.67), epochs=10)]),
        SpecialistSpec("s2", "SigLIP", 192, {"image": _mlp(512), "text": _mlp(512)},
                       loss="sigmoid", seed=2,
                       phases=[_phase("teacher", it, subset=(0.5, 1.0), epochs=10)]),
        SpecialistSpec("s3", "DFN ViT-H (different trunk)", 128,
                       {"image": {"kind": "tiny_cnn"}, "text": _mlp(256)}, seed=3,
                       phases=[_phase("teacher", it, subset=(0.0, 0.5), epochs=5)]),
        SpecialistSpec("s4", "WavCaps HTSAT-BERT (PT)", 192,
                       {"audio": _mlp(512), "text": _mlp(512)}, corpus="sound", seed=4,
                       phases=[_phase("student", [["audio", "text"]], epochs=30)]),
        SpecialistSpec("s5", "LAION-CLAP (fine-tune of s4)", 192,
                       {"audio": _mlp(512), "text": _mlp(512)}, corpus="sound", seed=5,
                       init_from="s4",
                       phases=[_phase("student", [["audio", "text"]], subset=(0.5, 1.0),
                                      epochs=15, lr=3e-4)]),
        SpecialistSpec("s6", "Uni3D (full scans)", 256,
                       {"point_cloud": {"kind": "pointnet", "widths": [64, 128, 256]},
                        "text": _mlp(512)}, corpus="geometry", anchors={"image": "s1"},
                       seed=6,
                       phases=[_phase("student", [["point_cloud", "image@s1"],
                                                  ["point_cloud", "text"]], epochs=20,
                                      batch_size=128)]),
        SpecialistSpec("s7", "Uni3D (occluded partial scans)", 256,
                       {"point_cloud": {"kind": "pointnet", "widths": [64, 128, 256]},
                        "text": _mlp(512)}, corpus="geometry", anchors={"image": "s1"},
                       point_occlusion=[0.3, 0.6], seed=7,
                       phases=[_phase("student", [["point_cloud", "image@s1"],
                                                  ["point_cloud", "text"]], epochs=20,
                                      batch_size=128)]),
        SpecialistSpec("s8", "ImageBind (weak generalist)", 128,
                       {"image": _mlp(256), "text": _mlp(256), "audio": _mlp(256),
                        "thermal": _mlp(256), "event": _mlp(256), "tactile": _mlp(256)},
                       seed=8,
                       phases=[_phase("teacher", it, subset=(0.0, 0.2), epochs=8),
                               _phase("student", [["audio", "image"], ["thermal", "image"],
                                                  ["event", "image"], ["tactile", "image"]],
                                      subset=(0.0, 0.5), epochs=20,
                                      train=["audio", "thermal", "event", "tactile"])]),
        SpecialistSpec("s9", "thermal-image-text", 256,
                       {"thermal": _mlp(512), "text": _mlp(512)}, corpus="heat",
                       anchors={"image": "s1"}, seed=9,
                       phases=[_phase("student", [["thermal", "image@s1"],
                                                  ["thermal", "text"]], epochs=25)]),
        SpecialistSpec("s10", "EventBind-like event-image-text", 256,
                       {"event": _mlp(512), "text": _mlp(512)}, corpus="motion",
                       anchors={"image": "s1"}, seed=10,
                       phases=[_phase("student", [["event", "image@s1"],
                                                  ["event", "text"]], epochs=25)]),
        SpecialistSpec("s11", "UniTouch-like tactile-image-text", 256,
                       {"tactile": _mlp(512), "text": _mlp(512)}, corpus="texture",
                       anchors={"image": "s1"}, seed=11,
                       phases=[_phase("student", [["tactile", "image@s1"],
                                                  ["tactile", "text"]], epochs=25)]),
    ):
        register_specialist(spec)


_register_defaults()
