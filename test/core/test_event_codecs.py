"""event_camera_msgs encodings: hand-made packets with known events, state across packets, the
reference codec's edge cases, malformed input, and encoder round trips."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnibind_ros.core.errors import (
    InvalidValueError,
    MalformedPacketError,
    PreprocessError,
    UnsupportedEncodingError,
)
from omnibind_ros.core.event_codecs import EventPacketDecoder
from omnibind_ros.core.event_encoders import (
    encode_evt3,
    encode_libcaer,
    encode_libcaer_cmp,
    encode_mono,
)


def words(*values: int) -> bytes:
    return np.array(values, "<u2").tobytes()


def TH(t: int) -> int:  # noqa: N802  (evt3 word builders read like the format's names)
    return 0x8000 | t


def TL(t: int) -> int:  # noqa: N802
    return 0x6000 | t


def Y(y: int) -> int:  # noqa: N802
    return 0x0000 | y


def X(x: int, pol: int) -> int:  # noqa: N802
    return 0x2000 | (pol << 11) | x


def BASE(x: int, pol: int) -> int:  # noqa: N802
    return 0x3000 | (pol << 11) | x


def V12(mask: int) -> int:  # noqa: N802
    return 0x4000 | mask


def V8(mask: int) -> int:  # noqa: N802
    return 0x5000 | mask


def events(packet) -> list[tuple[int, int, int, bool]]:
    return list(zip(packet.x.tolist(), packet.y.tolist(), packet.t_ns.tolist(),
                    packet.polarity.tolist(), strict=True))


def test_evt3_hand_made_packet_single_and_vector_events() -> None:
    # t = (0x012 << 12 | 0x345) us = 0x12345 us; row 7; an ON event at x 3; then at 0x12346 us
    # a vector run of OFF events from x 100: 12-bit mask 0b1000_0000_0101 (x 100, 102, 111),
    # then an 8-bit mask 0b1 at the advanced base (x 112).
    buf = words(TH(0x012), TL(0x345), Y(7), X(3, 1), TL(0x346), BASE(100, 0),
                V12(0b1000_0000_0101), V8(0b1), Y(9), X(5, 0))
    packet = EventPacketDecoder().decode("evt3", buf, 640, 480)
    assert events(packet) == [(3, 7, 0, True), (100, 7, 1000, False), (102, 7, 1000, False),
                              (111, 7, 1000, False), (112, 7, 1000, False),
                              (5, 9, 1000, False)]
    assert packet.width == 640 and packet.height == 480
    assert packet.x.dtype == np.uint16 and packet.t_ns.dtype == np.int64


def test_evt3_words_before_the_first_time_are_skipped_as_in_the_codec() -> None:
    # ADDR_Y / ADDR_X before TIME_HIGH + TIME_LOW are dropped; y stays 0 until the next ADDR_Y
    buf = words(Y(5), X(1, 1), TL(0x001), TH(0x001), X(2, 1), TL(0x002), X(3, 0))
    packet = EventPacketDecoder().decode("evt3", buf, 64, 64)
    assert events(packet) == [(3, 0, 0, False)]


def test_evt3_state_carries_across_packets_and_time_high_wraps() -> None:
    dec = EventPacketDecoder()
    first = dec.decode("evt3", words(TH(0xFFF), TL(0xFFF), Y(4), BASE(10, 1)), 64, 64)
    assert len(first) == 0
    # next packet: a vector at the carried base/polarity/row; then the 24-bit clock wraps
    second = dec.decode("evt3", words(V8(0b11), TH(0x000), TL(0x001), X(0, 0)), 64, 64)
    assert events(second) == [(10, 4, 0, True), (11, 4, 0, True), (0, 4, 2000, False)]


def test_evt3_small_time_high_steps_back_are_glitches_not_wraps() -> None:
    dec = EventPacketDecoder()
    # 0x100 -> 0x0FB steps back 5 units: no wrap, and the event keeps its predecessor's time
    packet = dec.decode("evt3", words(TH(0x100), TL(0x000), Y(1), X(1, 1), TH(0x0FB),
                                      X(2, 1), TH(0x101), X(3, 1)), 64, 64)
    assert packet.t_ns.tolist() == [0, 0, 4096 * 1000]


def test_evt3_events_outside_the_sensor_are_dropped_and_counted() -> None:
    dec = EventPacketDecoder()
    packet = dec.decode("evt3", words(TH(1), TL(1), Y(3), X(70, 1), X(5, 1), Y(80), X(1, 1)),
                        64, 64)
    assert events(packet) == [(5, 3, 0, True)]
    assert dec.dropped == 2


@pytest.mark.parametrize("bad", [0x1000, 0x9000, 0xB000, 0xC000, 0xD000])
def test_evt3_reserved_word_types_are_malformed(bad: int) -> None:
    with pytest.raises(MalformedPacketError, match="word 2 .*reserved type"):
        EventPacketDecoder().decode("evt3", words(TH(1), TL(1), bad), 64, 64)


def test_evt3_ignores_triggers_others_and_continued_words() -> None:
    buf = words(TH(1), TL(1), Y(2), 0xA001, 0xE0FF, 0x7003, 0xF123, X(4, 0))
    assert events(EventPacketDecoder().decode("evt3", buf, 64, 64)) == [(4, 2, 0, False)]


def test_odd_lengths_and_unknown_encodings_are_specific_errors() -> None:
    dec = EventPacketDecoder()
    with pytest.raises(MalformedPacketError, match="not a whole number of 2-byte"):
        dec.decode("evt3", b"\x00\x80\x01", 64, 64)
    with pytest.raises(MalformedPacketError, match="8-byte"):
        dec.decode("mono", bytes(12), 64, 64)
    with pytest.raises(UnsupportedEncodingError, match="external-trigger"):
        dec.decode("trigger", bytes(8), 64, 64)
    with pytest.raises(UnsupportedEncodingError, match="'EVT3' is unknown.*lower case"):
        dec.decode("EVT3", b"", 64, 64)
    with pytest.raises(InvalidValueError, match="sensor size"):
        dec.decode("evt3", b"", 0, 64)
    assert issubclass(MalformedPacketError, PreprocessError)


def test_mono_records_and_time_base() -> None:
    rec = np.array([(1 << 63) | (7 << 48) | (9 << 32) | 500, (3 << 48) | (2 << 32) | 1500],
                   np.uint64)
    packet = EventPacketDecoder().decode("mono", rec.astype("<u8").tobytes(), 16, 16,
                                         time_base=10**12)
    assert events(packet) == [(9, 7, 0, True), (2, 3, 1000, False)]
    with pytest.raises(MalformedPacketError, match="event 1 is earlier"):
        EventPacketDecoder().decode("mono", rec[::-1].astype("<u8").tobytes(), 16, 16)


def test_libcaer_records_valid_mark_and_wrap() -> None:
    # data: x << 17 | y << 2 | polarity << 1 | valid; timestamp in us (31 bits, wraps)
    data = np.array([(5 << 17) | (6 << 2) | 2 | 1, (1 << 17) | (2 << 2) | 0 | 0,
                     (3 << 17) | (4 << 2) | 0 | 1], np.uint64)
    ts = np.array([(1 << 31) - 2, (1 << 31) - 1, 3], np.uint64)
    buf = (data | (ts << 32)).astype("<u8").tobytes()
    packet = EventPacketDecoder().decode("libcaer", buf, 16, 16, time_base=123)
    assert events(packet) == [(5, 6, 0, True), (3, 4, 5000, False)]


def test_libcaer_cmp_tokens_vectors_along_y() -> None:
    # ADDR_X 4; time 0x001_002 us; ADDR_Y 6 ON; VECT_BASE_Y 8 OFF + VECT_8 0b101 -> y 8, 10
    buf = words(0x2004, 0x0001, 0x1002, 0x3000 | (1 << 11) | 6, 0x4000 | 8, 0x5000 | 0b101,
                0x1003, 0x3001)
    packet = EventPacketDecoder().decode("libcaer_cmp", buf, 32, 32, time_base=10**9)
    assert events(packet) == [(4, 6, 0, True), (4, 8, 0, False), (4, 10, 0, False),
                              (4, 1, 1000, False)]
    with pytest.raises(MalformedPacketError, match="undefined code 6"):
        EventPacketDecoder().decode("libcaer_cmp", words(0x6000), 32, 32)


def test_big_endian_packets_follow_the_flag() -> None:
    le = words(TH(2), TL(3), Y(1), X(7, 1))
    be = np.frombuffer(le, "<u2").astype(">u2").tobytes()
    a = EventPacketDecoder().decode("evt3", le, 16, 16)
    b = EventPacketDecoder().decode("evt3", be, 16, 16, big_endian=True)
    assert events(a) == events(b) == [(7, 1, 0, True)]


@st.composite
def event_streams(draw):
    n = draw(st.integers(0, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # times span a 24-bit wrap; steps of whole microseconds
    t = np.cumsum(rng.integers(0, 200_000, n)) * 1000 + draw(st.integers(0, 2**24 - 1)) * 1000
    return (rng.integers(0, 300, n), rng.integers(0, 200, n), t, rng.integers(0, 2, n),
            draw(st.booleans()))


@settings(max_examples=60, deadline=None)
@given(event_streams(), st.integers(1, 6))
def test_evt3_round_trip_through_split_packets(stream, pieces: int) -> None:
    x, y, t, p, vectors = stream
    order = np.lexsort((x, p, y, t))
    x, y, t, p = x[order], y[order], t[order], p[order]
    buf = encode_evt3(x, y, t, p, vectors=vectors)
    # cut anywhere after the stream's first TIME_HIGH + TIME_LOW (before them, the codec
    # itself skips a packet's words until it has seen both in one packet)
    cuts = sorted({max(4, 2 * (len(buf) // 2 * k // pieces // 2)) for k in range(1, pieces)}
                  - {len(buf)}) if len(buf) > 4 else []
    dec = EventPacketDecoder()
    out = [dec.decode("evt3", buf[a:b], 300, 200)
           for a, b in zip([0, *cuts], [*cuts, len(buf)], strict=True)]
    assert np.array_equal(np.concatenate([o.x for o in out]), x)
    assert np.array_equal(np.concatenate([o.y for o in out]), y)
    assert np.array_equal(np.concatenate([o.polarity for o in out]), p.astype(bool))
    whole = EventPacketDecoder().decode("evt3", buf, 300, 200)
    assert np.array_equal(whole.t_ns, t - t[0] if t.size else t)


def test_other_encoders_round_trip() -> None:
    rng = np.random.default_rng(3)
    n = 500
    x, y, p = rng.integers(0, 320, n), rng.integers(0, 240, n), rng.integers(0, 2, n)
    t_us = np.sort(rng.integers(0, 10**6, n))
    for encoding, buf in (("mono", encode_mono(x, y, t_us * 1000, p)),
                          ("libcaer", encode_libcaer(x, y, t_us, p)),
                          ("libcaer_cmp", encode_libcaer_cmp(x, y, t_us - t_us[0], p))):
        packet = EventPacketDecoder().decode(encoding, buf, 320, 240, time_base=10**15)
        assert np.array_equal(packet.x, x) and np.array_equal(packet.y, y), encoding
        assert np.array_equal(packet.t_ns, (t_us - t_us[0]) * 1000), encoding
