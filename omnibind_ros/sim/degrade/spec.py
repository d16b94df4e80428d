"""Which degradations a sample gets: :class:`DegradationSpec` (per modality: probability,
allowed kinds, severity range), its draw from a sample's seed, and its application.

The draw uses its own random stream (``[seed, stream]``, the world's ``STREAM_DEGRADE``) and
draws the same numbers for every degradable modality whatever the spec and the requested
modalities are, so a sample's clean payloads never change and one modality's degradation does
not depend on another's settings. Each degradation then runs with its own generator
``[seed, stream, 1 + modality position]``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omnibind_ros.core.modalities import parse_modality
from omnibind_ros.sim.degrade.registry import apply, kinds

__all__ = ["DEGRADABLE", "PAYLOAD_FIELDS", "DegradationSpec", "ModalityDegradation"]

#: Sample attribute of each degradable modality's payload, in draw order (never reorder: it
#: changes every degraded sample).
PAYLOAD_FIELDS: dict[str, str] = {"image": "image", "thermal": "thermal", "event": "events",
                                  "tactile": "tactile", "audio": "audio",
                                  "point_cloud": "points"}
DEGRADABLE = tuple(PAYLOAD_FIELDS)


def _fraction(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{where}: must be a number in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ModalityDegradation:
    """How one modality is degraded.

    Attributes
    ----------
    probability : chance that a sample's payload of this modality is degraded.
    kinds : the kinds drawn from, uniformly (all of the modality's kinds by default).
    severity : (low, high) of the uniform severity draw, within [0, 1].
    """

    probability: float = 0.0
    kinds: tuple[str, ...] = ()
    severity: tuple[float, float] = (0.0, 1.0)

    @classmethod
    def from_dict(cls, modality: str, data: Mapping[str, Any]) -> ModalityDegradation:
        """Validate one modality's entry; errors name the modality and the key."""
        where = f"degradations.{modality}"
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: must be a mapping with probability, kinds, severity")
        unknown = sorted(map(str, set(data) - {"probability", "kinds", "severity"}))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; expected probability, kinds, "
                             "severity")
        known = kinds(modality)
        chosen = data.get("kinds") or known
        if isinstance(chosen, str) or not all(isinstance(k, str) for k in chosen):
            raise ValueError(f"{where}.kinds: must be a list of names, got {chosen!r}")
        bad = sorted(set(chosen) - set(known))
        if bad:
            raise ValueError(f"{where}.kinds: unknown {bad}; {modality} has {', '.join(known)}")
        severity = data.get("severity", (0.0, 1.0))
        if not isinstance(severity, (list, tuple)) or len(severity) != 2:
            raise ValueError(f"{where}.severity: must be [low, high], got {severity!r}")
        low = _fraction(severity[0], f"{where}.severity[0]")
        high = _fraction(severity[1], f"{where}.severity[1]")
        if low > high:
            raise ValueError(f"{where}.severity: low {low} > high {high}")
        return cls(_fraction(data.get("probability", 0.0), f"{where}.probability"),
                   tuple(dict.fromkeys(chosen)), (low, high))

    def to_dict(self) -> dict[str, Any]:
        return {"probability": self.probability, "kinds": list(self.kinds),
                "severity": list(self.severity)}


@dataclass(frozen=True)
class DegradationSpec:
    """Degradations to draw per modality (modalities not listed stay clean).

    Built from YAML such as::

        image: {probability: 0.3, kinds: [dark, glare], severity: [0.4, 1.0]}
        audio: {probability: 0.3}          # every audio kind, severity 0-1
    """

    modalities: dict[str, ModalityDegradation] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DegradationSpec:
        """Validate a mapping modality -> entry (None or empty: no degradation)."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f"degradations: must be a mapping modality -> settings, got "
                             f"{type(data).__name__}")
        out: dict[str, ModalityDegradation] = {}
        for name, entry in data.items():
            try:
                modality = parse_modality(name).value
            except ValueError:
                raise ValueError(f"degradations: unknown modality {name!r}; degradable: "
                                 f"{', '.join(DEGRADABLE)}") from None
            if modality not in PAYLOAD_FIELDS:
                raise ValueError(f"degradations: {modality} has no degradations; degradable: "
                                 f"{', '.join(DEGRADABLE)}")
            out[modality] = ModalityDegradation.from_dict(modality, entry)
        return cls({m: out[m] for m in DEGRADABLE if m in out})

    def to_dict(self) -> dict[str, Any]:
        return {m: d.to_dict() for m, d in self.modalities.items()}

    @property
    def active(self) -> bool:
        """Some modality can be degraded (a probability above 0)."""
        return any(d.probability > 0 for d in self.modalities.values())

    def draw(self, seed: int, stream: int) -> dict[str, tuple[str, float]]:
        """modality -> (kind, severity) for the modalities sample ``seed`` degrades."""
        rng = np.random.default_rng([int(seed), int(stream)])
        out: dict[str, tuple[str, float]] = {}
        for modality in DEGRADABLE:
            u, pick, level = rng.random(), rng.random(), rng.random()  # always all three
            entry = self.modalities.get(modality)
            if entry is None or u >= entry.probability:
                continue
            low, high = entry.severity
            out[modality] = (entry.kinds[int(pick * len(entry.kinds))],
                             float(low + (high - low) * level))
        return out

    def apply(self, sample: Any, seed: int, stream: int, **context: Any) -> Any:
        """Degrade ``sample``'s present payloads in place as drawn; records
        ``sample.degradations[modality] = {"kind", "severity"}``; returns the sample."""
        for modality, (kind, severity) in self.draw(seed, stream).items():
            name = PAYLOAD_FIELDS[modality]
            payload = getattr(sample, name, None)
            if payload is None:
                continue
            rng = np.random.default_rng([int(seed), int(stream),
                                         1 + DEGRADABLE.index(modality)])
            setattr(sample, name, apply(modality, kind, payload, severity, rng, **context))
            sample.degradations[modality] = {"kind": kind, "severity": severity}
        return sample

