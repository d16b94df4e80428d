"""Thermal camera degradations on :class:`~omnibind_ros.core.types.ThermalFrame`.

Each works in kelvin: radiometric 16-bit counts (``mono16``/``16UC1``, kelvin = counts *
``kelvin_per_count``) and ``32FC1`` degrees Celsius convert exactly; an AGC'd ``mono8`` frame
has no absolute scale and is treated as one count per kelvin, clipped to 0-255. The result is
quantised back to the frame's encoding and dtype.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from omnibind_ros.core.types import ThermalFrame
from omnibind_ros.sim.degrade.registry import degradation

KELVIN_0C = 273.15
#: Upper end of a Lepton-class camera's high-gain radiometric range (140 degC): hotter
#: scenes read as this value (the camera would have to switch to low gain to see more).
UPPER_LIMIT_C = 140.0


def to_kelvin(frame: ThermalFrame) -> np.ndarray:
    """float64 [H, W] temperatures (kelvin; mono8: its counts)."""
    data = np.asarray(frame.data, dtype=np.float64)
    if frame.encoding == "32FC1":
        return data + KELVIN_0C
    if frame.encoding == "mono8":
        return data
    return data * frame.kelvin_per_count


def from_kelvin(frame: ThermalFrame, kelvin: np.ndarray) -> ThermalFrame:
    """A frame like ``frame`` holding ``kelvin`` (quantised and clipped to its dtype)."""
    dtype = np.asarray(frame.data).dtype
    if frame.encoding == "32FC1":
        data = (kelvin - KELVIN_0C).astype(dtype)
    else:
        counts = kelvin if frame.encoding == "mono8" else kelvin / frame.kelvin_per_count
        info = np.iinfo(dtype)
        data = np.clip(np.round(counts), info.min, info.max).astype(dtype)
    return dataclasses.replace(frame, data=data)


def upper_limit_k(frame: ThermalFrame) -> float:
    """The hottest value the frame can report (kelvin; mono8: 255)."""
    return 255.0 if frame.encoding == "mono8" else UPPER_LIMIT_C + KELVIN_0C


def _blob(shape: tuple[int, int], cy: float, cx: float, sy: float, sx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    return np.exp(-0.5 * (((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))


@degradation("thermal", "hot_saturation")
def hot_saturation(frame: ThermalFrame, severity: float, rng: np.random.Generator,
                   **_: object) -> ThermalFrame:
    """A hot source in view (a lamp, an engine, a stove at 300-600 degC), its radius growing
    to 25 % of the width with severity; the germanium optics scatter 10 % of its excess into
    a halo three times as wide, and everything above the high-gain limit (140 degC) clips
    there: a flat saturated plateau with a hot rim around it."""
    kelvin = to_kelvin(frame)
    h, w = kelvin.shape
    radius = (0.03 + 0.22 * severity) * w
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    source_k = rng.uniform(300.0, 600.0) + KELVIN_0C
    limit = upper_limit_k(frame)
    if frame.encoding == "mono8":
        source_k = 2.0 * limit
    core = _blob(kelvin.shape, cy, cx, radius, radius)
    halo = _blob(kelvin.shape, cy, cx, 3 * radius, 3 * radius)
    excess = source_k - kelvin
    hot = kelvin + excess * np.clip(1.5 * core, 0.0, 1.0) + 0.1 * excess * halo
    return from_kelvin(frame, np.minimum(hot, limit))


@degradation("thermal", "reflection")
def reflection(frame: ThermalFrame, severity: float, rng: np.random.Generator,
               **_: object) -> ThermalFrame:
    """A glossy surface (glass, polished floor) mirrors a warm source out of view (a person at
    34 degC, a radiator at 45 degC): a blurred, vertically mirrored ghost whose apparent
    temperature mixes by radiance, ``T^4 = (1 - r) T_scene^4 + r T_source^4``, with
    reflectance r from 0.15 up to 0.6 (glass in LWIR reflects little; polished surfaces
    more) and a size up to 40 % of the frame."""
    kelvin = to_kelvin(frame)
    h, w = kelvin.shape
    source_k = rng.uniform(34.0, 45.0) + KELVIN_0C
    if frame.encoding == "mono8":
        source_k = float(np.percentile(kelvin, 99)) + 40.0
    reflectance = 0.15 + 0.45 * severity
    size = 0.15 + 0.25 * severity
    # A standing figure, upside down in the reflection: taller than wide.
    ghost = _blob(kelvin.shape, rng.uniform(0.5, 1.0) * h, rng.uniform(0.1, 0.9) * w,
                  size * h, 0.5 * size * w)
    mixed = ((1 - reflectance * ghost) * kelvin ** 4 + reflectance * ghost * source_k ** 4)
    return from_kelvin(frame, mixed ** 0.25)


@degradation("thermal", "nuc_drift")
def nuc_drift(frame: ThermalFrame, severity: float, rng: np.random.Generator,
              **_: object) -> ThermalFrame:
    """The non-uniformity correction is stale (the shutter has not closed while the camera
    warmed up): column offsets (std 1.5 K at severity 1, the readout's per-column
    amplifiers), weaker row offsets (0.5 K), a smooth gain error over the array (up to
    +-15 %, applied to the deviation from the frame's median) and a global offset drift of
    up to +-2 K."""
    kelvin = to_kelvin(frame)
    h, w = kelvin.shape
    columns = rng.normal(0.0, 1.5 * severity, w)
    rows = rng.normal(0.0, 0.5 * severity, h)
    coarse = rng.normal(0.0, 1.0, (3, 3)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float64)
    gain = 1.0 + 0.15 * severity * np.clip(field, -1.0, 1.0)
    median = float(np.median(kelvin))
    drifted = median + (kelvin - median) * gain + columns[None, :] + rows[:, None] \
        + rng.uniform(-2.0, 2.0) * severity
    return from_kelvin(frame, drifted)
