"""Input quality from the raw signal: clean simulated sensors pass, the degradations a payload
can show are named, and the tracker smooths short packets into a steady verdict."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnibind_ros.core.quality import GOOD, QualityLevels, QualityTracker, assess, judge, measure
from omnibind_ros.core.types import AudioBlock, EventPacket, TactileFrame
from omnibind_ros.sim.degrade.registry import apply
from omnibind_ros.sim.stream import WorldStream
from omnibind_ros.sim.world import World

FIELDS = {"image": "image", "thermal": "thermal", "event": "events", "tactile": "tactile",
          "audio": "audio", "point_cloud": "points"}
#: What one payload shows at full severity: (modality, kind) -> the issue named.
DETECTED = {("image", "dark"): "dark", ("image", "glare"): "glare",
            ("image", "motion_blur"): "blurred", ("image", "occlusion"): "blank",
            ("thermal", "hot_saturation"): "saturated", ("event", "flicker"): "event storm",
            ("event", "hot_pixels"): "hot pixels", ("event", "no_motion"): "no events",
            ("tactile", "no_contact"): "no contact", ("audio", "dropout"): "dropout",
            ("audio", "wind"): "wind", ("point_cloud", "rain"): "near clutter",
            ("point_cloud", "occlusion"): "near clutter", ("point_cloud", "sparse"): "sparse"}


@pytest.fixture(scope="module")
def samples():
    world = World()
    return [world.sample(seed) for seed in range(6)]


def test_clean_world_samples_pass(samples):
    for sample in samples:
        for modality, field in FIELDS.items():
            q = assess(modality, getattr(sample, field))
            assert q.score == 1.0 and q.issue == "", (sample.seed, modality, q)


@pytest.mark.parametrize("modality,kind", sorted(DETECTED))
def test_full_severity_degradations_are_named(samples, modality, kind):
    flagged = []
    for sample in samples:
        degraded = apply(modality, kind, getattr(sample, FIELDS[modality]), 1.0,
                         np.random.default_rng(sample.seed), window_s=0.05)
        q = assess(modality, degraded)
        flagged.append(q.issue == DETECTED[(modality, kind)] and q.score < 0.5)
    # an occluder may stand outside the LiDAR's view of the object: not every scan shows it
    assert sum(flagged) >= (3 if (modality, kind) == ("point_cloud", "occlusion") else 5), (
        modality, kind, flagged)


def test_a_live_stream_is_steady_when_clean_and_warns_in_wind():
    trackers: dict[str, QualityTracker] = {}
    low: list[tuple[str, str]] = []
    wind: list[float] = []
    rng = np.random.default_rng(0)
    for item in WorldStream(seed=11).until(6.0):
        if item.modality == "text":
            continue
        tracker = trackers.setdefault(item.sensor, QualityTracker(item.modality))
        q = tracker.update(item.payload, round(item.stamp_s * 1e9))
        if item.stamp_s > 1.0 and q.score < 0.8 and q.issue != "no contact":
            low.append((item.sensor, q.issue))  # the finger lifts between objects: true
        if item.modality == "audio":
            windy = apply("audio", "wind", item.payload, 0.8, rng)
            wq = trackers.setdefault("windy", QualityTracker("audio")).update(
                windy, round(item.stamp_s * 1e9))
            if item.stamp_s > 1.0:
                wind.append(wq.score)
    assert low == []
    assert max(wind) < 0.5  # every smoothed verdict after the first second says wind


def test_tracker_smooths_and_restarts_after_a_gap():
    tracker = QualityTracker("point_cloud", smoothing_s=0.5, reset_after_s=1.0)
    dense = np.random.default_rng(0).uniform(1.0, 2.0, (1000, 3)).astype(np.float32)
    sparse = dense[:50]
    assert tracker.update(dense, 0).score == 1.0
    one = tracker.update(sparse, 600_000_000)  # one sparse scan: partly believed
    assert 0.0 < one.score < 1.0 and one.issue == "sparse"
    for k in range(7, 25):
        settled = tracker.update(sparse, k * 100_000_000)
    assert settled.score == 0.0
    assert tracker.update(dense, 5_000_000_000).score == 1.0  # after a gap: a new device
    tracker.reset()
    assert tracker.current is GOOD


def test_unmeasured_inputs_make_no_claim():
    assert assess("text", "a red mug") is GOOD
    assert assess("image", np.zeros((4, 4), np.uint16)) is GOOD  # mono16: no claim
    assert assess("tactile", TactileFrame(np.zeros((8, 8, 3), np.uint8))) is GOOD  # no ref
    assert measure("audio", AudioBlock(np.zeros(0, np.float32), 16000)) is None
    assert judge("audio", None) is GOOD


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(0, 3000), st.integers(1, 64), st.integers(1, 64), st.integers(0, 2 ** 32))
def test_event_quality_is_bounded_for_any_packet(n, width, height, seed):
    rng = np.random.default_rng(seed)
    packet = EventPacket(rng.integers(0, width, n).astype(np.uint16),
                         rng.integers(0, height, n).astype(np.uint16),
                         np.sort(rng.integers(0, 50_000_000, n)).astype(np.int64),
                         rng.integers(0, 2, n).astype(bool), width, height)
    q = assess("event", packet)
    assert 0.0 <= q.score <= 1.0 and (q.score == 1.0) == (q.issue == "")


def test_levels_are_parameters():
    image = np.full((32, 32, 3), 60, np.uint8)
    image[::4] = 90  # some texture, so only the exposure matters
    assert assess("image", image).issue == "dark"
    lenient = QualityLevels(dark_p95=(50.0, 20.0))
    assert assess("image", image, lenient).issue != "dark"


def test_decoded_images_are_read_in_their_channel_order():
    from omnibind_ros.ros.conversions.image import DecodedImage

    blue_dark = np.zeros((32, 32, 3), np.uint8)
    blue_dark[..., 2] = np.random.default_rng(0).integers(60, 120, (32, 32))  # luma ~10
    assert assess("image", DecodedImage(blue_dark, "rgb")).issue == "dark"
    # the same bytes as BGR are a red frame of luma ~27: still dark but brighter
    bgr = measure("image", DecodedImage(blue_dark, "bgr"))
    assert bgr["luma_p95"] > measure("image", DecodedImage(blue_dark, "rgb"))["luma_p95"]
    assert assess("image", DecodedImage(blue_dark[..., 0], "mono")) is GOOD
