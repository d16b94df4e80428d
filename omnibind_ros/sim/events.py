"""An event camera (DVS) simulated ESIM-style from rendered frames of a moving object.

ESIM (Rebecq et al., CoRL 2018) model, as implemented here:

- each pixel remembers the log intensity at its last event (the *reference*);
- between two rendered frames the log intensity is linearly interpolated in time; every time it
  moves one contrast threshold ``C`` away from the reference an event fires (ON when rising, OFF
  when falling), at the interpolated crossing time, and the reference moves by ``C``;
- thresholds vary per pixel (fabrication mismatch, std ~0.03 around ~0.2), ON and OFF separately;
- after an event a pixel is blind for a refractory period (events inside it are dropped);
- background-activity noise: Poisson events at a small per-pixel rate with random polarity.

The simulator is stateful (:class:`EventSimulator`), so consecutive packets of a stream continue
from the previous references; a one-shot sample is one window of a few frames.

Frames are grayscale *shading* of the object (uniform albedo) over a static, flat backdrop: the
event camera is here to see geometry and motion, not surface texture (see ``sim/catalog.py``).
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from omnibind_ros.core.types import EventPacket
from omnibind_ros.sim.catalog import Shape
from omnibind_ros.sim.render import Camera, Light, Pose, Renderer

#: Offset added to linear intensity before the log, as DVS photoreceptors have a dark current;
#: it stops black pixels from producing unbounded log changes.
LOG_EPS = 0.03


class EventSimulator:
    """Per-pixel ESIM state for a ``width`` x ``height`` sensor.

    Parameters
    ----------
    width, height : sensor size in pixels.
    rng : draws the per-pixel thresholds now and the noise events later.
    threshold : mean contrast threshold C, in log-intensity units (~0.2 for a DAVIS346 default).
    threshold_sigma : std of the per-pixel threshold mismatch.
    refractory_s : dead time after an event, seconds.
    noise_rate_hz : background-activity rate per pixel, events/s.
    """

    def __init__(self, width: int, height: int, rng: np.random.Generator, *,
                 threshold: float = 0.2, threshold_sigma: float = 0.03,
                 refractory_s: float = 1e-3, noise_rate_hz: float = 0.1) -> None:
        self.width, self.height = int(width), int(height)
        self.rng = rng
        n = self.width * self.height
        self.c_on = np.clip(rng.normal(threshold, threshold_sigma, n), 0.05, None)
        self.c_off = np.clip(rng.normal(threshold, threshold_sigma, n), 0.05, None)
        self.refractory_s = float(refractory_s)
        self.noise_rate_hz = float(noise_rate_hz)
        self._ref: np.ndarray | None = None  # log intensity at the last event, [n]
        self._log: np.ndarray | None = None  # log intensity of the last frame, [n]
        self._t: float = 0.0
        self._last_event_t = np.full(n, -np.inf)

    def reset(self, frame: np.ndarray, t_s: float) -> None:
        """Start from ``frame`` (float [H, W] linear intensity 0..1) at time ``t_s``, no events."""
        self._log = self._to_log(frame)
        self._ref = self._log.copy()
        self._t = float(t_s)
        self._last_event_t[:] = -np.inf

    def _to_log(self, frame: np.ndarray) -> np.ndarray:
        if frame.shape != (self.height, self.width):
            raise ValueError(f"frame shape {frame.shape} != sensor {(self.height, self.width)}")
        return np.log(frame.astype(np.float64).reshape(-1) + LOG_EPS)

    def step(self, frame: np.ndarray, t_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                         np.ndarray]:
        """Advance to ``frame`` at time ``t_s``; events in (previous t, t_s].

        Returns
        -------
        x, y : int64 [N] pixel coordinates.
        t : float64 [N] event times, seconds (same clock as ``t_s``), not sorted.
        polarity : bool [N] True for ON.
        """
        if self._log is None or self._ref is None:
            self.reset(frame, t_s)
            return _empty()
        t0, t1 = self._t, float(t_s)
        if t1 <= t0:
            raise ValueError(f"frames must advance in time: {t1} <= {t0}")
        l0, l1 = self._log, self._to_log(frame)
        diff = l1 - self._ref
        up = diff > 0
        c = np.where(up, self.c_on, self.c_off)
        n = np.floor(np.abs(diff) / c).astype(np.int64)
        pix = np.nonzero(n)[0]
        counts = n[pix]
        ev_pix = np.repeat(pix, counts)
        # k-th crossing (1-based) of each pixel: position within its run of repeats
        k = np.arange(ev_pix.size) - np.repeat(np.cumsum(counts) - counts, counts) + 1
        sgn = np.where(up[ev_pix], 1.0, -1.0)
        level = self._ref[ev_pix] + sgn * k * c[ev_pix]
        dl = l1[ev_pix] - l0[ev_pix]
        frac = np.where(np.abs(dl) > 1e-12, (level - l0[ev_pix]) / np.where(dl == 0, 1, dl), 1.0)
        t = t0 + np.clip(frac, 0.0, 1.0) * (t1 - t0)
        keep = self._refractory(ev_pix, t)
        self._ref = self._ref + np.where(up, 1.0, -1.0) * n * c
        self._log, self._t = l1, t1
        kept = ev_pix[keep]
        x, y, tk, pol = kept % self.width, kept // self.width, t[keep], sgn[keep] > 0
        nx, ny, nt, npol = self._noise(t0, t1)
        return (np.concatenate([x, nx]), np.concatenate([y, ny]), np.concatenate([tk, nt]),
                np.concatenate([pol, npol]))

    def _refractory(self, pix: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Mask of events at least ``refractory_s`` after the previous one at their pixel.

        Events are grouped by pixel and ascending in time within a group (as generated). The
        previous event is the previous *generated* one (kept or not): a vectorised approximation
        of a true dead-time that is exact when at most one event per pixel falls in a dead time.
        """
        if pix.size == 0:
            return np.zeros(0, bool)
        prev_t = np.empty_like(t)
        prev_t[1:] = t[:-1]
        first = np.ones(pix.size, bool)
        first[1:] = pix[1:] != pix[:-1]
        prev_t[first] = self._last_event_t[pix[first]]
        keep = (t - prev_t) >= self.refractory_s
        last = np.ones(pix.size, bool)
        last[:-1] = pix[1:] != pix[:-1]
        self._last_event_t[pix[last]] = t[last]
        return keep

    def _noise(self, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                    np.ndarray]:
        lam = self.noise_rate_hz * self.width * self.height * (t1 - t0)
        m = int(self.rng.poisson(lam)) if lam > 0 else 0
        return (self.rng.integers(0, self.width, m), self.rng.integers(0, self.height, m),
                self.rng.uniform(t0, t1, m), self.rng.random(m) < 0.5)

    def simulate(self, frames: Sequence[np.ndarray], times_s: Sequence[float]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Feed ``frames`` [K] x [H, W] at ``times_s`` [K]; concatenated events of all intervals.

        The first frame resets the state if the simulator has not seen a frame yet.
        """
        parts = [self.step(f, t) for f, t in zip(frames, times_s, strict=True)]
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))  # type: ignore


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64),
            np.zeros(0, bool))


def to_packet(x: np.ndarray, y: np.ndarray, t_s: np.ndarray, polarity: np.ndarray, width: int,
              height: int, stamp_s: float) -> EventPacket:
    """Sort events by time and pack them relative to ``stamp_s``.

    Returns
    -------
    EventPacket : x, y uint16; t_ns int64 ascending, nanoseconds after ``stamp_s`` (>= 0);
        polarity bool.
    """
    t_ns = np.round((np.asarray(t_s, np.float64) - stamp_s) * 1e9).astype(np.int64)
    t_ns = np.maximum(t_ns, 0)
    order = np.argsort(t_ns, kind="stable")
    return EventPacket(np.asarray(x)[order].astype(np.uint16),
                       np.asarray(y)[order].astype(np.uint16), t_ns[order],
                       np.asarray(polarity)[order].astype(bool), int(width), int(height))


def event_backdrop(width: int, height: int, level: float, tilt: tuple[float, float]
                   ) -> np.ndarray:
    """A static, smooth grayscale backdrop [H, W] (linear intensity) for the event camera."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.clip(level + tilt[0] * (xx / width - 0.5) + tilt[1] * (yy / height - 0.5),
                   0.02, 1.0).astype(np.float32)


def render_intensity(renderer: Renderer, shape: Shape, pose: Pose, camera: Camera, light: Light,
                     backdrop: np.ndarray, gray: float, out_size: tuple[int, int]) -> np.ndarray:
    """One grayscale linear-intensity frame of the object over ``backdrop``.

    Parameters
    ----------
    camera : the (low-resolution) render camera; the frame is then resized to ``out_size``.
    backdrop : float32 [out_h, out_w] static background intensity.
    gray : uniform albedo of the object (0..1).
    out_size : (width, height) of the event sensor.

    Returns
    -------
    np.ndarray : float32 [out_h, out_w] intensity 0..1.
    """
    res = renderer.render(shape, pose, camera, light)
    ow, oh = out_size
    # shading is 0 off the object, so its resize is already premultiplied by coverage
    obj = cv2.resize(res.shading * gray, (ow, oh), interpolation=cv2.INTER_LINEAR)
    cover = cv2.resize(res.mask.astype(np.float32), (ow, oh), interpolation=cv2.INTER_LINEAR)
    return (obj + (1.0 - cover) * backdrop).astype(np.float32)
