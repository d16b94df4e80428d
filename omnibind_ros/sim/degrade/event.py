"""Event camera degradations on :class:`~omnibind_ros.core.types.EventPacket`.

New events are merged into the packet and the result sorted by time (stable), so ``t_ns`` stays
ascending; every event keeps within the packet's window (``window_s`` from the context, else
the span of the packet's events, else 50 ms).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from omnibind_ros.core.types import EventPacket
from omnibind_ros.sim.degrade.registry import degradation

#: Mains flicker: lamps on 50 Hz mains vary in brightness at twice the mains frequency.
FLICKER_HZ = 100.0
#: Background activity of a DVS pixel with a static scene (events per pixel per second).
BACKGROUND_RATE_HZ = 0.02
DEFAULT_WINDOW_S = 0.05


def _window_ns(packet: EventPacket, context: dict[str, object]) -> int:
    window = context.get("window_s")
    if isinstance(window, (int, float)) and window > 0:
        return max(int(round(float(window) * 1e9)), 1)
    if len(packet):
        return max(int(packet.t_ns.max()) + 1, 1)
    return int(DEFAULT_WINDOW_S * 1e9)


def _merged(packet: EventPacket, x: np.ndarray, y: np.ndarray, t_ns: np.ndarray,
            polarity: np.ndarray) -> EventPacket:
    """``packet`` plus the given events, time-sorted, with the packet's dtypes."""
    t_all = np.concatenate([packet.t_ns, t_ns.astype(packet.t_ns.dtype)])
    order = np.argsort(t_all, kind="stable")
    return dataclasses.replace(
        packet, x=np.concatenate([packet.x, x.astype(packet.x.dtype)])[order],
        y=np.concatenate([packet.y, y.astype(packet.y.dtype)])[order], t_ns=t_all[order],
        polarity=np.concatenate([packet.polarity, polarity.astype(packet.polarity.dtype)]
                                )[order])


@degradation("event", "flicker")
def flicker(packet: EventPacket, severity: float, rng: np.random.Generator,
            **context: object) -> EventPacket:
    """A lamp on mains power lights part of the scene, its brightness pulsing at 100 Hz. Where
    its modulation exceeds the pixel's contrast threshold, a pixel fires one ON event on every
    rise and one OFF event on every fall of every cycle, whether anything moves or not. The lit
    region (a soft-edged disc, the lamp's falloff) covers up to 30 % of the sensor at severity
    1; timing jitter of 0.3 ms spreads each burst."""
    window = _window_ns(packet, context)
    w, h = packet.width, packet.height
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    radius = np.sqrt(0.3 * severity * w * h / np.pi)
    lit = np.flatnonzero(((yy - cy) ** 2 + (xx - cx) ** 2).ravel() <= radius ** 2)
    period_ns = 1e9 / FLICKER_HZ
    phase = rng.uniform(0.0, period_ns)
    edges = np.arange(phase - period_ns, window + period_ns, period_ns / 2.0)
    edges = edges[(edges >= 0) & (edges < window)]
    if lit.size == 0 or edges.size == 0:
        return packet
    pix = np.repeat(lit, edges.size)
    times = np.tile(edges, lit.size) + rng.normal(0.0, 3e5, pix.size)
    keep = (times >= 0) & (times < window)
    rising = (np.round((np.tile(edges, lit.size) - phase) / (period_ns / 2.0)) % 2) == 0
    pix, times, rising = pix[keep], times[keep], rising[keep]
    return _merged(packet, pix % w, pix // w, times.astype(np.int64), rising)


@degradation("event", "hot_pixels")
def hot_pixels(packet: EventPacket, severity: float, rng: np.random.Generator,
               **context: object) -> EventPacket:
    """A storm of hot pixels (leaky photodiodes, worse when the sensor is warm): 2 to 40 pixels
    firing as Poisson sources at 0.5-10 kHz each (both grow with severity), mostly ON events
    (90 %): a few bright dots that dominate an event count."""
    window = _window_ns(packet, context)
    count = 2 + int(round(38 * severity))
    rate_hz = 500.0 + 9500.0 * severity
    pixels = rng.choice(packet.width * packet.height, size=count, replace=False)
    per_pixel = rng.poisson(rate_hz * window * 1e-9, count)
    pix = np.repeat(pixels, per_pixel)
    times = rng.uniform(0.0, window, pix.size).astype(np.int64)
    return _merged(packet, pix % packet.width, pix // packet.width, times,
                   rng.random(pix.size) < 0.9)


@degradation("event", "no_motion")
def no_motion(packet: EventPacket, severity: float, rng: np.random.Generator,
              **context: object) -> EventPacket:
    """Nothing moves relative to the camera: an event camera then reports (almost) nothing.
    Each motion event survives with probability ``(1 - severity)^2`` and the sensor's
    background activity (0.02 Hz per pixel) remains, at least one event, so the packet is
    still valid."""
    window = _window_ns(packet, context)
    keep = rng.random(len(packet)) < (1.0 - severity) ** 2
    kept = dataclasses.replace(packet, x=packet.x[keep], y=packet.y[keep],
                               t_ns=packet.t_ns[keep], polarity=packet.polarity[keep])
    n_noise = max(int(rng.poisson(BACKGROUND_RATE_HZ * packet.width * packet.height
                                  * window * 1e-9)), 1 if not keep.any() else 0)
    pix = rng.integers(0, packet.width * packet.height, n_noise)
    return _merged(kept, pix % packet.width, pix // packet.width,
                   rng.uniform(0.0, window, n_noise).astype(np.int64), rng.random(n_noise) < 0.5)
