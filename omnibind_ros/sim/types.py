"""The simulator's sample type: one object observed by every requested modality at once."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omnibind_ros.core.types import AudioBlock, EventPacket, TactileFrame, ThermalFrame


@dataclass
class Sample:
    """One object, observed at once. Modalities not requested are ``None``.

    Attributes
    ----------
    seed : the integer that fully determines this sample (same seed -> identical sample).
    class_index, class_name : ground truth (index into :data:`omnibind_ros.sim.catalog.CLASSES`).
    caption : a text description (sometimes naming only the shape or only the material).
    image : uint8 [H, W, 3] rendered RGB.
    thermal : 16-bit radiometric counts (encoding "mono16", kelvin = counts * 0.01).
    events : events from the object moving in front of the event camera.
    tactile : GelSight-like image of the contact and its no-contact reference.
    audio : mono impact sound, float32 in [-1, 1].
    points : float32 [N, 3] LiDAR points in the sensor frame (x forward, y left, z up), metres.
    nuisance : the drawn nuisance parameters (pose, scale, lighting, distance, noise levels),
        recorded for analysis; never an input to a model.
    degradations : modality -> ``{"kind": str, "severity": float}`` of each payload the world
        degraded (:mod:`omnibind_ros.sim.degrade`); modalities not in it are clean.
    """

    seed: int
    class_index: int
    class_name: str
    caption: str | None = None
    image: np.ndarray | None = None
    thermal: ThermalFrame | None = None
    events: EventPacket | None = None
    tactile: TactileFrame | None = None
    audio: AudioBlock | None = None
    points: np.ndarray | None = None
    nuisance: dict[str, Any] = field(default_factory=dict)
    degradations: dict[str, dict[str, Any]] = field(default_factory=dict)
