"""Raw sensor payloads as plain numpy containers.

These are what ``ros/conversions`` produce from messages and what the simulator produces directly,
so preprocessing (and therefore training and runtime) sees exactly one representation per modality.
Images, thermal frames and point clouds are bare ``np.ndarray``; the types below exist where a bare
array would lose meaning (events, audio, thermal encoding, tactile reference).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Radiometric convention for 16-bit thermal counts (FLIR Lepton / Boson "TLinear" high
#: resolution): temperature_K = counts * 0.01. Used by the simulator and by default configs.
THERMAL_KELVIN_PER_COUNT = 0.01


@dataclass
class EventPacket:
    """A packet of camera events (DVS), structure-of-arrays.

    Attributes
    ----------
    x, y : uint16 [N] pixel coordinates (0 <= x < width, 0 <= y < height).
    t_ns : int64 [N] time of each event in nanoseconds, offset from the packet stamp, ascending.
    polarity : bool [N], True for an ON (brightness increase) event.
    width, height : sensor resolution in pixels.
    """

    x: np.ndarray
    y: np.ndarray
    t_ns: np.ndarray
    polarity: np.ndarray
    width: int
    height: int

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class AudioBlock:
    """A block of PCM audio.

    Attributes
    ----------
    samples : [n_frames, channels] float32 in [-1, 1] or int16; a 1-D array is mono.
    sample_rate : samples per second per channel.
    """

    samples: np.ndarray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / float(self.sample_rate)


@dataclass
class ThermalFrame:
    """A thermal image with its encoding.

    Attributes
    ----------
    data : [H, W] array: uint16 radiometric counts ("mono16"/"16UC1", kelvin = counts *
        ``kelvin_per_count``), uint8 ("mono8", an AGC'd image with no absolute scale), or
        float32 degrees Celsius ("32FC1").
    encoding : "mono16", "16UC1", "mono8" or "32FC1".
    kelvin_per_count : radiometric scale of 16-bit counts.
    """

    data: np.ndarray
    encoding: str
    kelvin_per_count: float = THERMAL_KELVIN_PER_COUNT


@dataclass
class TactileFrame:
    """A vision-based tactile sensor image (GelSight/DIGIT style) and its no-contact reference.

    Attributes
    ----------
    image : uint8 [H, W, 3] RGB image of the gel while in contact.
    reference : uint8 [H, W, 3] RGB image of the same gel with nothing touching it, or None when
        the consumer keeps its own reference (the runtime captures one).
    """

    image: np.ndarray
    reference: np.ndarray | None = None
