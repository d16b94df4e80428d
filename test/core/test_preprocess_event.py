"""Event preprocessing: windows, hot pixels, exact histograms, scaling, errors, properties."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnibind_ros.core.errors import (
    InvalidDtypeError,
    InvalidShapeError,
    InvalidValueError,
    NoEventsError,
)
from omnibind_ros.core.preprocess.event import (
    EventPreprocessConfig,
    EventPreprocessor,
    event_histogram,
    hot_pixel_mask,
    preprocess_events,
)
from omnibind_ros.core.types import EventPacket

MS = 1_000_000  # ns
RAW = dict(hot_pixel_k=0.0, normalize_percentile=0.0, mean=(0, 0, 0), std=(1, 1, 1))


def packet(events: list[tuple[int, int, int, bool]], width: int = 4,
           height: int = 3) -> EventPacket:
    """Events as (x, y, t_ns, on) tuples."""
    x, y, t, p = (np.array(v) for v in zip(*events, strict=True)) if events else ([],) * 4
    return EventPacket(np.asarray(x, np.uint16), np.asarray(y, np.uint16),
                       np.asarray(t, np.int64), np.asarray(p, bool), width, height)


def test_known_events_give_known_histogram_counts_row_major():
    events = [(1, 2, 0, True)] * 3 + [(0, 0, 1, False)] * 2 + [(3, 0, 2, True)]
    hist = event_histogram(packet(events), EventPreprocessConfig(**RAW))
    assert hist.shape == (2, 3, 4) and hist.dtype == np.float32
    on = np.zeros((3, 4))
    on[2, 1], on[0, 3] = 3, 1  # [row = y, column = x]
    off = np.zeros((3, 4))
    off[0, 0] = 2
    np.testing.assert_array_equal(hist[0], on)
    np.testing.assert_array_equal(hist[1], off)


def test_output_channels_are_on_off_and_difference():
    events = [(1, 2, 0, True)] * 3 + [(0, 0, 1, False)] * 2 + [(1, 2, 2, False)]
    out = preprocess_events(packet(events, 3, 3), EventPreprocessConfig(size=3, **RAW))
    assert out.shape == (3, 3, 3) and out.dtype == np.float32
    assert (out[0, 2, 1], out[1, 2, 1], out[2, 2, 1]) == (3.0, 1.0, 2.0)
    assert (out[0, 0, 0], out[1, 0, 0], out[2, 0, 0]) == (0.0, 2.0, -2.0)
    assert np.count_nonzero(out) == 5


def test_time_window_keeps_the_last_window_ms():
    events = [(0, 0, 0, True), (1, 0, 10 * MS, True), (2, 0, 60 * MS, True),
              (3, 0, 100 * MS, True), (3, 1, 50 * MS, True)]  # exactly 50 ms old: dropped
    config = EventPreprocessConfig(window="time", window_ms=50.0, **RAW)
    hist = event_histogram(packet(events), config)
    assert hist.sum() == 2 and hist[0, 0, 2] == 1 and hist[0, 0, 3] == 1
    shuffled = packet([events[i] for i in (3, 0, 4, 2, 1)])
    np.testing.assert_array_equal(event_histogram(shuffled, config), hist)


def test_count_window_keeps_the_last_events_in_time_order():
    events = [(0, 0, 30, True), (1, 0, 10, True), (2, 0, 20, False), (3, 0, 0, True)]
    hist = event_histogram(packet(events), EventPreprocessConfig(window="count", max_events=2,
                                                                 **RAW))
    assert hist.sum() == 2 and hist[0, 0, 0] == 1 and hist[1, 0, 2] == 1


def test_hot_pixel_is_dropped_and_filter_can_be_disabled():
    events = [(x, 0, x, True) for x in range(10)] + [(5, 2, 100 + i, False) for i in range(50)]
    pkt = packet(events, width=10, height=3)
    config = EventPreprocessConfig(**{**RAW, "hot_pixel_k": 10.0})
    hist = event_histogram(pkt, config)
    assert hist.sum() == 10 and hist[1].sum() == 0  # 50 > 10 x median(1): hot
    assert event_histogram(pkt, EventPreprocessConfig(**RAW)).sum() == 60
    # 10 events at one pixel is not > 10 x median 1: kept
    mask = hot_pixel_mask(np.array([0] * 10 + [1, 2]), 4, 10.0)
    assert mask.all()


def test_percentile_normalisation_and_default_mean_std():
    events = [(0, 0, 0, True)] * 4 + [(1, 0, 1, True)] * 2 + [(2, 0, 2, False)]
    config = EventPreprocessConfig(hot_pixel_k=0.0, normalize_percentile=100.0, size=3)
    out = preprocess_events(packet(events, 3, 3), config)
    # ON = [1, 0.5, 0], OFF = [0, 0, 0.25]; ON/OFF -> (v - 0.5) / 0.5, ON-OFF -> as is
    np.testing.assert_allclose(out[0, 0], [1.0, 0.0, -1.0])
    np.testing.assert_allclose(out[1, 0], [-1.0, -1.0, -0.5])
    np.testing.assert_allclose(out[2, 0], [1.0, 0.5, -0.25])
    assert out[0, 1:].max() == -1.0 and np.all(out[2, 1:] == 0)


def test_log_scale_applies_log1p_to_counts():
    events = [(0, 0, i, True) for i in range(3)]
    config = EventPreprocessConfig(size=3, log_scale=True, **RAW)
    out = preprocess_events(packet(events, 3, 3), config)
    assert out[0, 0, 0] == pytest.approx(np.log(4.0))


def test_resize_area_averages_counts():
    events = [(0, 0, 0, True)] * 4  # one pixel of a 4x4 sensor -> 2x2 output
    out = preprocess_events(packet(events, 4, 4), EventPreprocessConfig(size=2, **RAW))
    assert out[0, 0, 0] == pytest.approx(1.0) and out[0].sum() == pytest.approx(1.0)


@pytest.mark.parametrize(("pkt", "error"), [
    (packet([]), NoEventsError),
    (EventPacket(np.zeros(3, np.uint16), np.zeros(2, np.uint16), np.zeros(3, np.int64),
                 np.zeros(3, bool), 4, 3), InvalidShapeError),
    (EventPacket(np.zeros((3, 1), np.uint16), np.zeros(3, np.uint16), np.zeros(3, np.int64),
                 np.zeros(3, bool), 4, 3), InvalidShapeError),
    (EventPacket(np.zeros(3, np.float32), np.zeros(3, np.uint16), np.zeros(3, np.int64),
                 np.zeros(3, bool), 4, 3), InvalidDtypeError),
    (packet([(4, 0, 0, True)]), InvalidValueError),
    (packet([(0, 3, 0, True)]), InvalidValueError),
    (packet([(0, 0, 0, True)], width=0), InvalidValueError),
    ("not a packet", InvalidDtypeError),
])
def test_bad_packets_raise_specific_errors(pkt, error):
    with pytest.raises(error):
        preprocess_events(pkt, EventPreprocessConfig(size=4))


def test_no_events_error_names_the_problem():
    with pytest.raises(NoEventsError, match="zero events"):
        EventPreprocessor()(packet([]))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3000), width=st.integers(1, 64), height=st.integers(1, 64),
       size=st.sampled_from([1, 8, 32]), window=st.sampled_from(["time", "count"]),
       log_scale=st.booleans(), seed=st.integers(0, 2**16))
def test_output_shape_dtype_and_range(n, width, height, size, window, log_scale, seed):
    rng = np.random.default_rng(seed)
    pkt = EventPacket(rng.integers(0, width, n).astype(np.uint16),
                      rng.integers(0, height, n).astype(np.uint16),
                      np.sort(rng.integers(0, 200 * MS, n)), rng.random(n) > 0.5, width, height)
    pre = EventPreprocessor(EventPreprocessConfig(size=size, window=window, max_events=500,
                                                  log_scale=log_scale))
    out = pre(pkt)
    assert out.shape == pre.output_shape == (3, size, size) and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6
