"""WorldStream: time order, per-sensor rates, ground truth, continuous audio and events."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from omnibind_ros.core.types import AudioBlock, EventPacket, TactileFrame, ThermalFrame
from omnibind_ros.sim.stream import DEFAULT_SENSORS, WorldStream
from omnibind_ros.sim.world import World, WorldConfig

HORIZON_S = 4.6


@pytest.fixture(scope="module")
def items():
    stream = WorldStream(World(), seed=3, object_period_s=2.0)
    return stream, list(stream.until(HORIZON_S))


def test_stamps_never_go_back(items) -> None:
    _, its = items
    stamps = np.array([it.stamp_s for it in its])
    assert np.all(np.diff(stamps) >= 0)
    assert stamps[-1] < HORIZON_S


def test_each_sensor_keeps_its_rate(items) -> None:
    _, its = items
    counts = Counter(it.sensor for it in its)
    for name, (_, rate) in DEFAULT_SENSORS.items():
        expected = HORIZON_S * rate
        if expected < 5:
            assert abs(counts[name] - expected) <= 1, name
        else:
            assert abs(counts[name] - expected) / expected < 0.05, name
        stamps = np.array([it.stamp_s for it in its if it.sensor == name])
        if stamps.size > 2:
            np.testing.assert_allclose(np.diff(stamps), 1.0 / rate, rtol=1e-6)


def test_payload_types(items) -> None:
    _, its = items
    kinds = {"image": np.ndarray, "thermal": ThermalFrame, "event": EventPacket,
             "tactile": TactileFrame, "audio": AudioBlock, "point_cloud": np.ndarray,
             "text": str}
    seen = set()
    for it in its:
        assert isinstance(it.payload, kinds[it.modality]), it.modality
        seen.add(it.modality)
    assert seen == set(kinds)


def test_class_changes_every_period(items) -> None:
    stream, _ = items
    classes = [stream.class_at(t).index for t in (0.1, 1.9, 2.1, 3.9, 4.1)]
    assert classes[0] == classes[1] and classes[2] == classes[3]
    assert classes[0] != classes[2] and classes[2] != classes[4]


def test_audio_is_one_continuous_signal(items) -> None:
    _, its = items
    chunks = [it for it in its if it.modality == "audio"]
    assert all(c.payload.samples.shape == (320,) for c in chunks)  # 20 ms at 16 kHz
    sig = np.concatenate([c.payload.samples for c in chunks])
    assert sig.size == round(HORIZON_S * 16000) and np.abs(sig).max() < 1.0
    # impacts stand out of the background noise
    assert np.abs(sig).max() > 10 * np.median(np.abs(sig))


def test_event_packets_cover_their_window(items) -> None:
    _, its = items
    packets = [it.payload for it in its if it.modality == "event"]
    window_ns = 1e9 / DEFAULT_SENSORS["event_camera"][1]
    moving = 0
    for pk in packets:
        if len(pk):
            assert np.all(np.diff(pk.t_ns) >= 0)
            assert pk.t_ns[0] >= 0 and pk.t_ns[-1] <= window_ns
        moving += len(pk) > 50
    assert moving > 0.8 * len(packets)  # the object keeps moving


def test_object_moves_between_frames(items) -> None:
    stream, its = items
    frames = [it.payload for it in its if it.modality == "image" and it.stamp_s < 1.9]
    assert not np.array_equal(frames[0], frames[5])


def test_tactile_touches_then_releases(items) -> None:
    _, its = items
    tac = [(it.stamp_s, it.payload) for it in its if it.modality == "tactile"]
    diff = {round(t, 3): np.abs(p.image.astype(int) - p.reference.astype(int)).mean()
            for t, p in tac}
    assert diff[0.0] < diff[1.0] or diff[round(2.0, 3)] < diff[3.0]


def test_same_seed_same_stream() -> None:
    cfg = WorldConfig(image_size=48, event_size=(32, 32), event_render_size=32)
    rates = {"cam": ("image", 5.0), "ev": ("event", 10.0), "mic": ("audio", 25.0)}
    a = list(WorldStream(World(cfg), 9, rates, 1.0).until(1.2))
    b = list(WorldStream(World(cfg), 9, rates, 1.0).until(1.2))
    assert [(x.stamp_s, x.sensor) for x in a] == [(x.stamp_s, x.sensor) for x in b]
    for x, y in zip(a, b, strict=True):
        if x.modality == "image":
            assert np.array_equal(x.payload, y.payload)
        elif x.modality == "event":
            assert np.array_equal(x.payload.t_ns, y.payload.t_ns)
        else:
            assert np.array_equal(x.payload.samples, y.payload.samples)


def test_bad_sensor_specs_raise() -> None:
    with pytest.raises(ValueError):
        WorldStream(sensor_rates={"x": ("image", 0.0)})
    with pytest.raises(ValueError):
        WorldStream(sensor_rates={"x": ("sonar", 1.0)})


def test_peek_and_skip_keep_the_schedule_without_rendering(monkeypatch) -> None:
    cfg = WorldConfig(image_size=48, event_size=(32, 32), event_render_size=32)
    rates = {"cam": ("image", 5.0), "mic": ("audio", 25.0)}
    full = [(x.stamp_s, x.sensor) for x in WorldStream(World(cfg), 4, rates, 1.0).until(1.0)]
    stream = WorldStream(World(cfg), 4, rates, 1.0)
    rendered = []
    original = stream._payload  # noqa: SLF001

    def counting(name, mod, rate, t):
        rendered.append((t, name))
        return original(name, mod, rate, t)

    monkeypatch.setattr(stream, "_payload", counting)
    order = []
    while stream.peek()[0] < 1.0:
        peeked = stream.peek()
        if peeked[1] == "cam":
            assert stream.skip() == peeked
            order.append(peeked)
        else:
            item = stream.next()
            order.append((item.stamp_s, item.sensor))
    assert order == full  # skipping changes nothing in the schedule
    assert all(name == "mic" for _, name in rendered)  # skipped camera frames never rendered
    assert len(rendered) == sum(1 for _, n in full if n == "mic")


def test_degraded_stream_degrades_whole_episodes_and_keeps_clean_ones() -> None:
    """A spec draws per episode and modality; other messages are those of a clean stream."""
    from omnibind_ros.sim.degrade import DegradationSpec

    sensors = {"camera": ("image", 10.0), "lidar": ("point_cloud", 10.0)}
    spec = DegradationSpec.from_dict({"image": {"probability": 0.5, "kinds": ["dark"],
                                                "severity": [0.9, 1.0]}})
    clean = list(WorldStream(seed=5, sensor_rates=sensors, object_period_s=0.5).until(3.0))
    stream = WorldStream(seed=5, sensor_rates=sensors, object_period_s=0.5, degradations=spec)
    degraded = list(stream.until(3.0))
    episodes = {stream.episode_at(it.stamp_s) for it in degraded}
    dark = {e for e in episodes if stream.degradation_at("camera", e * 0.5) is not None}
    assert dark and dark != episodes  # p = 0.5 over 6 episodes: some of each
    assert all(stream.degradation_at("lidar", e * 0.5) is None for e in episodes)
    for a, b in zip(clean, degraded, strict=True):
        assert (a.stamp_s, a.sensor) == (b.stamp_s, b.sensor)
        if a.sensor == "camera" and stream.episode_at(a.stamp_s) in dark:
            kind, severity = stream.degradation_at("camera", a.stamp_s)
            assert kind == "dark" and 0.9 <= severity <= 1.0
            assert b.payload.mean() < 0.5 * a.payload.mean()
        else:
            np.testing.assert_array_equal(a.payload, b.payload)
