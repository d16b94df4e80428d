"""The registry of degradations: modality -> {kind -> function}, filled by a decorator.

Every degradation has the signature ``function(payload, severity, rng, **context) -> payload``:
``severity`` in [0, 1] (0 returns the payload itself, unchanged), ``rng`` the only source of
randomness (same generator state -> same output), ``context`` optional facts about the sensor
(e.g. ``window_s`` of an event packet) that a function may use and must not require.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["DEGRADATIONS", "Degradation", "apply", "degradation", "kinds"]

#: ``(payload, severity, rng, **context) -> payload`` of the same type, dtype and shape rules.
Degradation = Callable[..., Any]

#: modality value -> {kind name -> degradation}; filled when the modality modules import.
DEGRADATIONS: dict[str, dict[str, Degradation]] = {}


def degradation(modality: str, kind: str) -> Callable[[Degradation], Degradation]:
    """Register ``function`` as ``kind`` of ``modality``; the wrapper validates ``severity``
    and returns the payload untouched at severity 0 (so no function has to)."""
    def register(function: Degradation) -> Degradation:
        @functools.wraps(function)
        def wrapper(payload: Any, severity: float, rng: np.random.Generator, **context: Any
                    ) -> Any:
            severity = check_severity(severity)
            if severity == 0.0:
                return payload
            return function(payload, severity, rng, **context)

        table = DEGRADATIONS.setdefault(modality, {})
        if kind in table:
            raise ValueError(f"degradation {modality}/{kind} registered twice")
        table[kind] = wrapper
        return wrapper
    return register


def check_severity(severity: Any) -> float:
    """``severity`` as a float in [0, 1]; ValueError otherwise."""
    if isinstance(severity, bool) or not isinstance(severity, (int, float, np.floating)) \
            or not math.isfinite(severity) or not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be a number in [0, 1], got {severity!r}")
    return float(severity)


def kinds(modality: str) -> tuple[str, ...]:
    """The degradation kinds of ``modality`` (ValueError for a modality without any)."""
    if modality not in DEGRADATIONS:
        raise ValueError(f"no degradations for modality {modality!r}; modalities with "
                         f"degradations: {', '.join(DEGRADATIONS)}")
    return tuple(DEGRADATIONS[modality])


def apply(modality: str, kind: str, payload: Any, severity: float, rng: np.random.Generator,
          **context: Any) -> Any:
    """Degrade ``payload`` of ``modality`` by ``kind`` at ``severity`` (ValueError naming the
    known kinds for an unknown one)."""
    table = DEGRADATIONS.get(modality, {})
    if kind not in table:
        raise ValueError(f"unknown degradation {kind!r} for {modality}; known: "
                         f"{', '.join(kinds(modality))}")
    return table[kind](payload, severity, rng, **context)
