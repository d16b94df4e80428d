"""Decoders for the event encodings real event-camera drivers publish in
``event_camera_msgs/msg/EventPacket`` (metavision_driver: ``evt3``; libcaer_driver:
``libcaer_cmp``, ``libcaer``; event_camera_tools: ``mono``), vectorised with numpy: no Python
loop per event or per word.

What each encoding holds, as ``event_camera_codecs`` (the reference C++ decoders) reads it:

============  =========================================================================
encoding      layout and time
============  =========================================================================
evt3          Prophesee EVT 3.0: little-endian 16-bit words, type in the top 4 bits.
              ADDR_Y (0x0) sets y; ADDR_X (0x2) is one event (x, polarity in bit 11);
              VECT_BASE_X (0x3) sets the base x and polarity of the vectors after it;
              VECT_12 (0x4) / VECT_8 (0x5) carry 12 / 8 valid bits, bit i an event at
              base + i, and advance the base by 12 / 8; TIME_HIGH (0x8) and TIME_LOW (0x6)
              are the upper and lower 12 bits of a 24-bit microsecond clock. ``time_base``
              is unused (0). Sensor time is decoded, and the state (y, vector base, time)
              carries from one packet to the next.
mono          8-byte little-endian records: dt (bits 0-31, ns), x (32-47), y (48-62),
              polarity (63); sensor time = ``time_base + dt``.
libcaer       libcaer's ``caer_polarity_event``: uint32 data (bit 0 valid mark, bit 1
              polarity, bits 2-16 y, 17-31 x), int32 timestamp in microseconds (31 bits,
              a decrease inside the packet is a wrap); time = ``time_base + 1000 * ts``.
libcaer_cmp   16-bit tokens like evt3 but with their own codes (0 TIME_HIGH, 1 TIME_LOW,
              2 ADDR_X sets x, 3 ADDR_Y is one event with polarity in bit 11,
              4 VECT_BASE_Y, 5 VECT_8 along y); time = ``time_base + 1000 * dt_us``, the
              time words restarting at 0 in every packet.
trigger       external trigger records only (no camera events): refused.
============  =========================================================================

Choices, stated here:

* **Time in the packet.** :class:`~omnibind_ros.core.types.EventPacket` times are nanoseconds
  after the message stamp. Drivers stamp ``header.stamp`` with the host arrival time of the
  packet's first data (metavision_driver, libcaer_driver), and event_camera_msgs' README gives
  "ROS sensor time = header stamp + dt" for ``mono``. So every decoder returns the sensor times
  relative to the packet's first event: event ``i`` is at ``header.stamp + t_i - t_0``. The
  sensor clock's offset to ROS time is thereby re-anchored at every packet (a packet spans about
  a millisecond), instead of the low-pass offset estimate of ``event_camera_tools``.
* **evt3 time glitches.** The sensor sometimes steps TIME_HIGH back by a few units without a
  wrap; as in the codec a wrap is counted only for a step back of more than 10 units (41 ms),
  and times inside a packet are held non-decreasing (a glitched event takes its predecessor's
  time) because an EventPacket's times ascend.
* **Before the first time.** As in the codec, evt3 words are skipped until a TIME_HIGH and a
  later TIME_LOW have been seen (a stream joined mid-way has no valid y or time before that).
* **Outside the sensor.** Events at ``x >= width`` or ``y >= height`` are dropped, as the codec
  drops them, and counted in :attr:`EventPacketDecoder.dropped`; libcaer events whose valid
  mark is 0 (filtered by libcaer) are dropped too (the codec passes them on).
* **Byte order.** Words and records are read little-endian unless the message says
  ``is_bigendian`` (the codec reads host order; libcaer_driver sets the flag to the host's).
* **Malformed input** raises :class:`~omnibind_ros.core.errors.MalformedPacketError`: a length
  that is not a whole number of words/records, a reserved evt3 word type (0x1, 0x9, 0xB-0xD:
  the codec throws), a libcaer_cmp code it does not define, or mono/libcaer times running
  backwards.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from omnibind_ros.core.errors import (
    InvalidValueError,
    MalformedPacketError,
    UnsupportedEncodingError,
)
from omnibind_ros.core.types import EventPacket

__all__ = ["DECODABLE_ENCODINGS", "KNOWN_ENCODINGS", "DecodedEvents", "EventPacketDecoder",
           "Evt3Decoder", "LibcaerCmpDecoder", "decode_libcaer", "decode_mono"]

#: Encodings with camera (CD) events that decode into an EventPacket.
DECODABLE_ENCODINGS = ("evt3", "mono", "libcaer", "libcaer_cmp")
#: Every encoding event_camera_codecs knows (``trigger`` carries no camera events).
KNOWN_ENCODINGS = (*DECODABLE_ENCODINGS, "trigger")

# evt3 word types (Prophesee EVT 3.0; event_camera_codecs evt3_types.h).
_ADDR_Y, _ADDR_X, _VECT_BASE_X, _VECT_12, _VECT_8 = 0x0, 0x2, 0x3, 0x4, 0x5
_TIME_LOW, _TIME_HIGH = 0x6, 0x8
_EVT3_RESERVED_LUT = np.isin(np.arange(16), (0x1, 0x9, 0xB, 0xC, 0xD))
#: A TIME_HIGH this many units (of 4096 us) or fewer below the last one is a glitch, not a wrap.
_EVT3_WRAP_MIN_STEP = 10

_BITS = np.arange(12, dtype=np.int64)


class DecodedEvents(NamedTuple):
    """Decoded camera events in stream order: ``t_ns`` is sensor time in nanoseconds."""

    x: np.ndarray
    y: np.ndarray
    t_ns: np.ndarray
    polarity: np.ndarray

    @classmethod
    def empty(cls) -> DecodedEvents:
        return cls(np.zeros(0, np.uint16), np.zeros(0, np.uint16), np.zeros(0, np.int64),
                   np.zeros(0, np.bool_))


def _words(buf: object, itemsize: int, big_endian: bool, what: str) -> np.ndarray:
    raw = np.frombuffer(memoryview(buf).cast("B"), np.uint8)  # type: ignore[arg-type]
    if raw.size % itemsize:
        raise MalformedPacketError(
            f"{what}: {raw.size} bytes is not a whole number of {itemsize}-byte words")
    order = ">" if big_endian else "<"
    return raw.view(f"{order}u{itemsize}").astype(f"=u{itemsize}", copy=False)


class _State:
    """The decoder state at the words that emit events, read from a packet's stream of words:
    for a kind of state word (TIME_LOW, ADDR_Y...), the value of the last such word at or
    before each emitting word (or the state carried in from the previous packet). One cumulative
    count per kind and gathers at the emitting words only: no Python loop, no full-size
    temporaries beyond the counts."""

    def __init__(self, code: np.ndarray, emits: np.ndarray) -> None:
        self.code, self.emits = code, emits

    def last(self, kind: int, values: np.ndarray, initial: int) -> tuple[np.ndarray, int]:
        """(value at each emitting word, value at the end of the packet)."""
        mask = self.code == kind
        seen = np.cumsum(mask, dtype=np.int32)[self.emits] - 1
        vals = values[mask]
        at = np.where(seen >= 0, vals[np.maximum(seen, 0)], initial) if vals.size else \
            np.full(self.emits.size, initial, dtype=np.int64)
        return at, (int(vals[-1]) if vals.size else initial)


#: Set bits of every 12-bit mask (a vector word's event count).
_POPCOUNT = np.array([bin(i).count("1") for i in range(1 << 12)], np.int32)


def _expand(single: np.ndarray, mask: np.ndarray, start: np.ndarray, fixed: np.ndarray,
            t: np.ndarray, polarity: np.ndarray, along_x: bool) -> DecodedEvents:
    """Events of the emitting words in stream order: a single-event word gives one event at
    ``start``; a vector word one per set bit ``i`` of ``mask`` at ``start + i``."""
    counts = np.where(single, 1, _POPCOUNT[mask])
    offsets = np.cumsum(counts) - counts
    n = int(counts.sum())
    moving = np.empty(n, np.int64)
    word = np.empty(n, np.int64)                   # the emitting word of each event
    si = np.flatnonzero(single)
    moving[offsets[si]] = start[si]
    word[offsets[si]] = si
    vi = np.flatnonzero(~single)
    if vi.size:
        bits = ((mask[vi, None] >> _BITS) & 1).astype(np.bool_)
        r, b = np.nonzero(bits)                    # row-major: each row's events in order
        vcounts = counts[vi]
        rank = np.arange(r.size) - (np.cumsum(vcounts) - vcounts)[r]
        pos = offsets[vi][r] + rank
        moving[pos] = start[vi][r] + b
        word[pos] = vi[r]
    other = fixed[word]
    x, y = (moving, other) if along_x else (other, moving)
    return DecodedEvents(x, y, t[word], polarity[word].astype(np.bool_))


@dataclass
class Evt3Decoder:
    """Stateful EVT 3.0 decoder: y, vector base, time and wrap count carry across packets (one
    decoder per camera topic)."""

    y: int = 0
    base_x: int = 0
    polarity: int = 0
    time_high: int = 0
    time_low: int = 0
    wraps: int = 0
    has_time: bool = False

    def decode(self, buf: object, *, big_endian: bool = False) -> DecodedEvents:
        """Decode one packet's bytes into events (sensor time, ns)."""
        words = _words(buf, 2, big_endian, "evt3")
        code = (words >> 12).astype(np.intp)
        pay = (words & 0xFFF).astype(np.int64)
        reserved = np.flatnonzero(_EVT3_RESERVED_LUT[code])
        if reserved.size:
            i = int(reserved[0])
            raise MalformedPacketError(
                f"evt3 word {i} (0x{int(words[i]):04x}) has the reserved type 0x{code[i]:x} "
                f"({reserved.size} such words)")
        start = 0 if self.has_time else self._find_time(code, pay)
        if start is None:
            return DecodedEvents.empty()
        return self._decode_words(code[start:], pay[start:])

    def _find_time(self, code: np.ndarray, pay: np.ndarray) -> int | None:
        """Index after the first TIME_LOW that follows a TIME_HIGH (the codec skips every word
        before it); TIME_HIGHs seen update the clock either way."""
        highs = np.flatnonzero(code == _TIME_HIGH)
        if highs.size == 0:
            return None
        lows = np.flatnonzero(code[highs[0] + 1:] == _TIME_LOW)
        end = code.size if lows.size == 0 else int(highs[0] + 1 + lows[0]) + 1
        head_highs = pay[:end][code[:end] == _TIME_HIGH]
        self._advance_high(head_highs)
        if lows.size == 0:
            return None
        self.time_low = int(pay[end - 1])
        self.has_time = True
        return end

    def _advance_high(self, highs: np.ndarray) -> np.ndarray:
        """Extended TIME_HIGH values ``(wraps << 24) | (h << 12)`` of a run of TIME_HIGH words;
        updates the carried clock."""
        if highs.size == 0:
            return highs
        prev = np.concatenate([[self.time_high], highs[:-1]])
        wrapped = (highs < prev) & (prev - highs > _EVT3_WRAP_MIN_STEP)
        wraps = self.wraps + np.cumsum(wrapped)
        self.time_high, self.wraps = int(highs[-1]), int(wraps[-1])
        return (wraps << 24) | (highs << 12)

    def _decode_words(self, code: np.ndarray, pay: np.ndarray) -> DecodedEvents:
        if code.size == 0:
            return DecodedEvents.empty()
        emits = np.flatnonzero((code == _ADDR_X) | (code == _VECT_12) | (code == _VECT_8))
        state = _State(code, emits)
        start_high = (self.wraps << 24) | (self.time_high << 12)
        high_ext = np.zeros(code.size, np.int64)
        is_high = code == _TIME_HIGH
        high_ext[is_high] = self._advance_high(pay[is_high])
        high, _ = state.last(_TIME_HIGH, high_ext, start_high)
        low, self.time_low = state.last(_TIME_LOW, pay, self.time_low)
        y, self.y = state.last(_ADDR_Y, pay & 0x7FF, self.y)
        # Vector base: the last VECT_BASE_X's x plus 12/8 per vector word since, as the codec.
        step = np.where(code == _VECT_12, 12, np.where(code == _VECT_8, 8, 0))
        before = np.cumsum(step) - step
        base_pos, end_pos = state.last(_VECT_BASE_X, np.arange(code.size), -1)
        known = base_pos >= 0
        base_word = pay[np.maximum(base_pos, 0)]
        base = np.where(known, (base_word & 0x7FF) - before[np.maximum(base_pos, 0)],
                        self.base_x) + before[emits]
        vec_pol = np.where(known, (base_word >> 11) & 1, self.polarity)
        total = int(before[-1] + step[-1])
        if end_pos >= 0:
            self.base_x = int(pay[end_pos] & 0x7FF) + total - int(before[end_pos])
            self.polarity = int(pay[end_pos] >> 11) & 1
        else:
            self.base_x += total
        c, p = code[emits], pay[emits]
        single = c == _ADDR_X
        mask = np.where(c == _VECT_12, p & 0xFFF, p & 0xFF)
        start = np.where(single, p & 0x7FF, base)
        pol = np.where(single, (p >> 11) & 1, vec_pol)
        return _expand(single, mask, start, y, (high | low) * 1000, pol, along_x=True)


# libcaer_cmp token codes (libcaer_driver compression_tokens.hpp, event_camera_codecs).
_CMP_TIME_HIGH, _CMP_TIME_LOW, _CMP_ADDR_X, _CMP_ADDR_Y, _CMP_VECT_BASE_Y, _CMP_VECT_8 = range(6)


@dataclass
class LibcaerCmpDecoder:
    """libcaer_cmp decoder; the column (x) carries across packets, time restarts per packet."""

    x: int = 0

    def decode(self, buf: object, time_base: int, *, big_endian: bool = False
               ) -> DecodedEvents:
        words = _words(buf, 2, big_endian, "libcaer_cmp")
        code = (words >> 12).astype(np.int64)
        pay = (words & 0xFFF).astype(np.int64)
        bad = np.flatnonzero(code > _CMP_VECT_8)
        if bad.size:
            i = int(bad[0])
            raise MalformedPacketError(
                f"libcaer_cmp word {i} (0x{int(words[i]):04x}) has the undefined code {code[i]}")
        if code.size == 0:
            return DecodedEvents.empty()
        emits = np.flatnonzero((code == _CMP_ADDR_Y) | (code == _CMP_VECT_8))
        state = _State(code, emits)
        high, _ = state.last(_CMP_TIME_HIGH, pay << 12, 0)     # time restarts every packet
        low, _ = state.last(_CMP_TIME_LOW, pay, 0)
        x, self.x = state.last(_CMP_ADDR_X, pay & 0x7FF, self.x)
        step = np.where(code == _CMP_VECT_8, 8, 0)
        before = np.cumsum(step) - step
        base_pos, _ = state.last(_CMP_VECT_BASE_Y, np.arange(code.size), -1)
        known = base_pos >= 0
        base_word = pay[np.maximum(base_pos, 0)]
        base = (base_word & 0x7FF) + before[emits] - before[np.maximum(base_pos, 0)]
        c, p = code[emits], pay[emits]
        single = c == _CMP_ADDR_Y
        keep = single | known                       # a vector before any base has no y
        single, p, base, x = single[keep], p[keep], base[keep], x[keep]
        t_ns = int(time_base) + (high[keep] | low[keep]) * 1000
        pol = np.where(single, (p >> 11) & 1, (base_word[keep] >> 11) & 1)
        start = np.where(single, p & 0x7FF, base)
        return _expand(single, p & 0xFF, start, x, t_ns, pol, along_x=False)


def _records(buf: object, big_endian: bool, what: str) -> np.ndarray:
    return _words(buf, 8, big_endian, what)


def _require_ascending(t_ns: np.ndarray, what: str) -> None:
    back = np.flatnonzero(t_ns[1:] < t_ns[:-1])
    if back.size:
        i = int(back[0]) + 1
        raise MalformedPacketError(f"{what}: event {i} is earlier than event {i - 1} "
                                   f"({back.size} out-of-order events)")


def decode_mono(buf: object, time_base: int, *, big_endian: bool = False) -> DecodedEvents:
    """The ``mono`` encoding: sensor time = ``time_base + dt`` (ns)."""
    rec = _records(buf, big_endian, "mono")
    dt = (rec & 0xFFFFFFFF).astype(np.int64)
    _require_ascending(dt, "mono")
    return DecodedEvents(((rec >> 32) & 0xFFFF).astype(np.int64),
                         ((rec >> 48) & 0x7FFF).astype(np.int64), int(time_base) + dt,
                         (rec >> 63).astype(np.bool_))


def decode_libcaer(buf: object, time_base: int, *, big_endian: bool = False) -> DecodedEvents:
    """The ``libcaer`` encoding: events whose valid mark is set, time = ``time_base + 1000 *
    timestamp_us`` with a 2^31 us wrap wherever the timestamp decreases inside the packet."""
    rec = _records(buf, big_endian, "libcaer")
    data = (rec & 0xFFFFFFFF).astype(np.int64)
    ts = (rec >> 32).astype(np.uint32).view(np.int32).astype(np.int64)
    wraps = np.concatenate([[0], np.cumsum(ts[1:] < ts[:-1])])
    t_ns = int(time_base) + (ts + (wraps << 31)) * 1000
    valid = (data & 1).astype(np.bool_)
    return DecodedEvents(((data >> 17) & 0x7FFF)[valid], ((data >> 2) & 0x7FFF)[valid],
                         t_ns[valid], ((data >> 1) & 1).astype(np.bool_)[valid])


@dataclass
class EventPacketDecoder:
    """``event_camera_msgs/EventPacket`` fields -> :class:`EventPacket` (one per camera topic:
    evt3 and libcaer_cmp carry state from packet to packet).

    Attributes
    ----------
    dropped : events dropped so far because they lay outside the sensor.
    """

    dropped: int = 0

    def __post_init__(self) -> None:
        self._evt3 = Evt3Decoder()
        self._cmp = LibcaerCmpDecoder()

    def decode(self, encoding: str, events: object, width: int, height: int, *,
               time_base: int = 0, big_endian: bool = False) -> EventPacket:
        """Decode one packet; times are relative to its first event (see the module docstring).

        Raises
        ------
        UnsupportedEncodingError : ``trigger`` or an encoding the codecs do not define.
        InvalidValueError : a zero sensor size.
        MalformedPacketError : bytes that violate the encoding.
        """
        if encoding not in DECODABLE_ENCODINGS:
            if encoding == "trigger":
                raise UnsupportedEncodingError(
                    "EventPacket encoding 'trigger' holds external-trigger records, no camera "
                    "events: subscribe the event sensor to the camera's event topic")
            raise UnsupportedEncodingError(
                f"EventPacket encoding {encoding!r} is unknown; decodable: "
                f"{', '.join(DECODABLE_ENCODINGS)} (names are lower case)")
        if width <= 0 or height <= 0:
            raise InvalidValueError(f"EventPacket sensor size must be positive, got "
                                    f"{width}x{height}")
        if encoding == "evt3":
            ev = self._evt3.decode(events, big_endian=big_endian)
        elif encoding == "libcaer_cmp":
            ev = self._cmp.decode(events, time_base, big_endian=big_endian)
        elif encoding == "mono":
            ev = decode_mono(events, time_base, big_endian=big_endian)
        else:
            ev = decode_libcaer(events, time_base, big_endian=big_endian)
            _require_ascending(ev.t_ns, "libcaer")
        return self._to_packet(ev, width, height)

    def _to_packet(self, ev: DecodedEvents, width: int, height: int) -> EventPacket:
        inside = (ev.x < width) & (ev.y < height)
        self.dropped += int(inside.size - np.count_nonzero(inside))
        t = ev.t_ns[inside]
        if t.size:
            t = np.maximum.accumulate(t) - t[0]    # evt3 glitches held, relative to event 0
        return EventPacket(x=ev.x[inside].astype(np.uint16), y=ev.y[inside].astype(np.uint16),
                           t_ns=t.astype(np.int64), polarity=ev.polarity[inside],
                           width=int(width), height=int(height))
