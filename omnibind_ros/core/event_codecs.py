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
_EVT3_RESERVED = (0x1, 0x9, 0xB, 0xC, 0xD)
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


def _ffill(mask: np.ndarray, values: np.ndarray, initial: int) -> np.ndarray:
    """Per position, ``values`` at the last position ``<=`` it where ``mask`` holds (else
    ``initial``): the decoder state a stream of words leaves behind, without a loop."""
    idx = np.where(mask, np.arange(mask.size), -1)
    np.maximum.accumulate(idx, out=idx)
    return np.where(idx >= 0, values[np.maximum(idx, 0)], initial)


def _expand(rows_mask: np.ndarray, x0: np.ndarray, along_x: bool, fixed: np.ndarray,
            t: np.ndarray, polarity: np.ndarray) -> DecodedEvents:
    """One event per set bit ``i`` of each row's mask at ``x0 + i`` (or ``y0 + i``), row-major,
    so the order is the stream's."""
    bits = ((rows_mask[:, None] >> _BITS) & 1).astype(np.bool_)
    r, b = np.nonzero(bits)
    moving = (x0[r] + b).astype(np.int64)
    other = fixed[r].astype(np.int64)
    x, y = (moving, other) if along_x else (other, moving)
    return DecodedEvents(x, y, t[r], polarity[r].astype(np.bool_))


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
        code = (words >> 12).astype(np.int64)
        pay = (words & 0xFFF).astype(np.int64)
        reserved = np.flatnonzero(np.isin(code, _EVT3_RESERVED))
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
        start_high = (self.wraps << 24) | (self.time_high << 12)
        is_high = code == _TIME_HIGH
        high_ext = np.zeros(code.size, np.int64)
        high_ext[is_high] = self._advance_high(pay[is_high])
        high = _ffill(is_high, high_ext, start_high)
        low = _ffill(code == _TIME_LOW, pay, self.time_low)
        t_ns = (high | low) * 1000
        y = _ffill(code == _ADDR_Y, pay & 0x7FF, self.y)
        # Vector base: the last VECT_BASE_X's x plus 12/8 per vector word since, as the codec.
        step = np.where(code == _VECT_12, 12, np.where(code == _VECT_8, 8, 0))
        before = np.cumsum(step) - step
        is_base = code == _VECT_BASE_X
        at_base = _ffill(is_base, np.arange(code.size), -1)
        from_base = np.where(at_base >= 0, before - before[np.maximum(at_base, 0)], before)
        base = np.where(at_base >= 0, pay[np.maximum(at_base, 0)] & 0x7FF, self.base_x) \
            + from_base
        vec_pol = np.where(at_base >= 0, (pay[np.maximum(at_base, 0)] >> 11) & 1, self.polarity)
        self.y, self.time_low = int(y[-1]), int(low[-1])
        self.base_x, self.polarity = int(base[-1] + step[-1]), int(vec_pol[-1])

        is_x = code == _ADDR_X
        emits = np.flatnonzero(is_x | (code == _VECT_12) | (code == _VECT_8))
        c, p = code[emits], pay[emits]
        mask = np.where(c == _ADDR_X, 1, np.where(c == _VECT_12, p & 0xFFF, p & 0xFF))
        x0 = np.where(c == _ADDR_X, p & 0x7FF, base[emits])
        pol = np.where(c == _ADDR_X, (p >> 11) & 1, vec_pol[emits])
        return _expand(mask, x0, True, y[emits], t_ns[emits], pol)


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
        high = _ffill(code == _CMP_TIME_HIGH, pay << 12, 0)
        low = _ffill(code == _CMP_TIME_LOW, pay, 0)
        t_ns = int(time_base) + (high | low) * 1000
        x = _ffill(code == _CMP_ADDR_X, pay & 0x7FF, self.x)
        step = np.where(code == _CMP_VECT_8, 8, 0)
        before = np.cumsum(step) - step
        at_base = _ffill(code == _CMP_VECT_BASE_Y, np.arange(code.size), -1)
        known = at_base >= 0
        base_word = pay[np.maximum(at_base, 0)]
        base = np.where(known, (base_word & 0x7FF) + before - before[np.maximum(at_base, 0)], 0)
        vec_pol = np.where(known, (base_word >> 11) & 1, 0)
        self.x = int(x[-1])
        emits = np.flatnonzero((code == _CMP_ADDR_Y) | ((code == _CMP_VECT_8) & known))
        c, p = code[emits], pay[emits]
        mask = np.where(c == _CMP_ADDR_Y, 1, p & 0xFF)
        y0 = np.where(c == _CMP_ADDR_Y, p & 0x7FF, base[emits])
        pol = np.where(c == _CMP_ADDR_Y, (p >> 11) & 1, vec_pol[emits])
        return _expand(mask, y0, False, x[emits], t_ns[emits], pol)


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
