"""Encoders for the event-camera wire encodings (the inverse of
:mod:`omnibind_ros.core.event_codecs`), vectorised: tests, the decode benchmark and simulated
drivers write ``event_camera_msgs/EventPacket`` bytes with them.

:func:`encode_evt3` writes what a Prophesee sensor writes: TIME_HIGH / TIME_LOW only when the
24-bit microsecond clock changes, ADDR_Y only when the row changes, and each run of events that
share a time, a row and a polarity as VECT_BASE_X + VECT_12 words per 12-pixel window (a lone
event as ADDR_X).
"""
from __future__ import annotations

import numpy as np

__all__ = ["encode_evt3", "encode_libcaer", "encode_libcaer_cmp", "encode_mono"]


def _as_events(x: np.ndarray, y: np.ndarray, t_ns: np.ndarray, polarity: np.ndarray
               ) -> tuple[np.ndarray, ...]:
    x, y, t, p = (np.asarray(a).astype(np.int64).reshape(-1) for a in (x, y, t_ns, polarity))
    if not (x.size == y.size == t.size == p.size):
        raise ValueError("x, y, t_ns and polarity must have equal lengths")
    if t.size and np.any(np.diff(t) < 0):
        raise ValueError("t_ns must be non-decreasing")
    return x, y, t, p


def encode_evt3(x: np.ndarray, y: np.ndarray, t_ns: np.ndarray, polarity: np.ndarray, *,
                vectors: bool = True) -> bytes:
    """EVT 3.0 words (little-endian) for events in time order; times are kept to the
    microsecond modulo 2^24 us, as the sensor's clock."""
    x, y, t, p = _as_events(x, y, t_ns, polarity)
    if t.size == 0:
        return b""
    us = (t // 1000) & 0xFFFFFF
    window = x // 12 if vectors else np.arange(x.size)
    # one group per (time, row, polarity, 12-pixel window) run, in stream order
    key_change = np.ones(x.size, np.bool_)
    key_change[1:] = ((us[1:] != us[:-1]) | (y[1:] != y[:-1]) | (p[1:] != p[:-1])
                      | (window[1:] != window[:-1]))
    starts = np.flatnonzero(key_change)
    bit = (x - (window * 12 if vectors else x)).astype(np.int64)
    mask = np.bitwise_or.reduceat(np.left_shift(1, bit), starts)
    g_us, g_y, g_p = us[starts], y[starts], p[starts]
    count = np.diff(np.append(starts, x.size))
    single = count == 1
    prev_us = np.concatenate([[-1], g_us[:-1]])
    prev_y = np.concatenate([[-1], g_y[:-1]])
    high = g_us >> 12
    new_high = high != np.concatenate([[-1], high[:-1]])
    words = np.stack([
        0x8000 | high,                                        # TIME_HIGH
        0x6000 | (g_us & 0xFFF),                              # TIME_LOW
        0x0000 | g_y,                                         # ADDR_Y
        np.where(single, 0x2000 | (g_p << 11) | x[starts],    # ADDR_X, or
                 0x3000 | (g_p << 11) | (window[starts] * 12)),  # VECT_BASE_X
        0x4000 | mask,                                        # VECT_12
    ], axis=1)
    keep = np.stack([new_high, g_us != prev_us, g_y != prev_y, np.ones_like(single),
                     ~single], axis=1)
    return words[keep].astype("<u2").tobytes()


def encode_mono(x: np.ndarray, y: np.ndarray, dt_ns: np.ndarray, polarity: np.ndarray
                ) -> bytes:
    """``mono`` records: dt (ns after ``time_base``) | x << 32 | y << 48 | polarity << 63."""
    x, y, t, p = _as_events(x, y, dt_ns, polarity)
    rec = (t.astype(np.uint64) & 0xFFFFFFFF) | (x.astype(np.uint64) << 32) \
        | (y.astype(np.uint64) << 48) | (p.astype(np.uint64) << 63)
    return rec.astype("<u8").tobytes()


def encode_libcaer(x: np.ndarray, y: np.ndarray, ts_us: np.ndarray, polarity: np.ndarray,
                   valid: np.ndarray | None = None) -> bytes:
    """libcaer ``caer_polarity_event`` records (``ts_us``: the 31-bit microsecond stamp)."""
    x, y, t, p = _as_events(x, y, np.zeros_like(np.asarray(x)), polarity)
    t = np.asarray(ts_us, np.int64).reshape(-1)
    v = np.ones(x.size, np.int64) if valid is None else np.asarray(valid, np.int64)
    data = (x << 17) | (y << 2) | (p << 1) | v
    rec = (data.astype(np.uint64) & 0xFFFFFFFF) | ((t.astype(np.uint64) & 0xFFFFFFFF) << 32)
    return rec.astype("<u8").tobytes()


def encode_libcaer_cmp(x: np.ndarray, y: np.ndarray, dt_us: np.ndarray, polarity: np.ndarray
                       ) -> bytes:
    """libcaer_cmp tokens, one event per ADDR_Y after ADDR_X and the time words (``dt_us`` after
    the packet's ``time_base``; the simple form of what libcaer_driver writes)."""
    x, y, t, p = _as_events(x, y, dt_us, polarity)
    words = np.stack([0x0000 | ((t >> 12) & 0xFFF), 0x1000 | (t & 0xFFF), 0x2000 | x,
                      0x3000 | (p << 11) | y], axis=1)
    return words.reshape(-1).astype("<u2").tobytes()
