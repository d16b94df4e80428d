"""LiDAR degradations on point clouds: float ``[N, >=3]`` arrays in the sensor frame (x
forward, y left, z up, metres); extra columns (intensity, ...) travel with their points.

Every change moves a point along its own ray or removes it, as a real return would: a LiDAR
measures a range per beam, and what goes wrong is the range (or whether there is one).
"""
from __future__ import annotations

import numpy as np

from omnibind_ros.sim.degrade.registry import degradation


def _ranges(points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points[:, :3].astype(np.float64), axis=1)


def _at_range(points: np.ndarray, rows: np.ndarray, new_range: np.ndarray) -> np.ndarray:
    """Copy of ``points`` with ``rows`` moved along their rays to ``new_range``."""
    out = points.copy()
    r = _ranges(points[rows])
    scale = np.where(r > 0, new_range / np.maximum(r, 1e-9), 1.0)
    out[rows, :3] = (points[rows, :3] * scale[:, None]).astype(points.dtype)
    return out


@degradation("point_cloud", "rain")
def rain(points: np.ndarray, severity: float, rng: np.random.Generator, **_: object
         ) -> np.ndarray:
    """Rain, fog or dust: a beam hits a drop before its target and returns early. Up to 30 %
    of the beams (growing with severity) return from a random range between 0.2 m and their
    target (at most 2 m away), and the wet, scattering air adds range noise to every return
    (standard deviation up to 3 cm)."""
    if len(points) == 0:
        return points
    r = _ranges(points)
    noisy = r + rng.normal(0.0, 0.03 * severity, r.size)
    hit = np.flatnonzero(rng.random(r.size) < 0.3 * severity)
    noisy[hit] = rng.uniform(0.2, np.maximum(np.minimum(r[hit], 2.0), 0.2 + 1e-6))
    return _at_range(points, np.arange(r.size), np.maximum(noisy, 0.05))


@degradation("point_cloud", "occlusion")
def occlusion(points: np.ndarray, severity: float, rng: np.random.Generator, **_: object
              ) -> np.ndarray:
    """Something stands between the sensor and the scene (a person, a pole, a box): the
    beams of an azimuth sector, up to 60 % of the cloud's horizontal extent and centred
    near its middle, return from a vertical surface 0.4-0.8 m ahead instead of from what
    lies behind it."""
    if len(points) == 0:
        return points
    xyz = points[:, :3].astype(np.float64)
    azimuth = np.arctan2(xyz[:, 1], xyz[:, 0])
    low, high = np.quantile(azimuth, [0.02, 0.98])
    width = 0.6 * severity * (high - low)
    centre = np.median(azimuth) + rng.uniform(-0.25, 0.25) * (high - low)
    distance = rng.uniform(0.4, 0.8)
    inside = np.abs(azimuth - centre) <= width / 2
    forward = xyz[:, 0] > 1e-6
    behind = inside & forward & (xyz[:, 0] > distance)
    rows = np.flatnonzero(behind)
    # The ray meets the plane x = distance at range r * distance / x.
    new_range = _ranges(points[rows]) * distance / xyz[rows, 0]
    return _at_range(points, rows, new_range)


@degradation("point_cloud", "sparse")
def sparse(points: np.ndarray, severity: float, rng: np.random.Generator, **_: object
           ) -> np.ndarray:
    """A weak return (dark, wet or glancing surfaces at range): the echo power falls as
    1 / range^2, so beams beyond the median range are lost first. Each point survives with
    probability ``(1 - 0.85 severity) * (median range / range)^2`` (at most 1): at severity 1
    about a sixth of the points remain."""
    if len(points) == 0:
        return points
    r = _ranges(points)
    median = float(np.median(r))
    survive = (1.0 - 0.85 * severity) * (median / np.maximum(r, 1e-6)) ** 2
    return points[rng.random(r.size) < np.minimum(survive, 1.0)]
