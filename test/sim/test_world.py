"""World.sample: determinism, per-modality contracts, config round trip, multiprocessing."""
from __future__ import annotations

import json
import multiprocessing as mp

import numpy as np
import pytest

from omnibind_ros.core.modalities import Modality
from omnibind_ros.core.types import AudioBlock, EventPacket, TactileFrame, ThermalFrame
from omnibind_ros.sim.catalog import CLASSES
from omnibind_ros.sim.types import Sample
from omnibind_ros.sim.world import World, WorldConfig


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def _arrays(s: Sample) -> dict[str, np.ndarray]:
    out = {"image": s.image, "thermal": s.thermal.data, "ev.x": s.events.x, "ev.y": s.events.y,
           "ev.t": s.events.t_ns, "ev.p": s.events.polarity, "tac": s.tactile.image,
           "tac.ref": s.tactile.reference, "audio": s.audio.samples, "points": s.points}
    return {k: np.asarray(v) for k, v in out.items()}


def test_same_seed_is_bit_identical(world: World) -> None:
    a, b = world.sample(123), World().sample(123)
    assert a.class_index == b.class_index and a.caption == b.caption
    assert json.dumps(a.nuisance, sort_keys=True) == json.dumps(b.nuisance, sort_keys=True)
    for (k, x), y in zip(_arrays(a).items(), _arrays(b).values(), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert np.array_equal(x, y), k


def test_different_seeds_differ(world: World) -> None:
    a, b = world.sample(7, class_index=4), world.sample(8, class_index=4)
    for k, x in _arrays(a).items():
        y = _arrays(b)[k]
        assert x.shape != y.shape or not np.array_equal(x, y), k


def test_modality_subset_matches_full_sample(world: World) -> None:
    full = world.sample(31)
    for mod in ("thermal", "point_cloud", "audio"):
        part = world.sample(31, [mod])
        assert part.image is None and part.class_index == full.class_index
    assert np.array_equal(world.sample(31, ["thermal"]).thermal.data, full.thermal.data)
    assert np.array_equal(world.sample(31, [Modality.POINT_CLOUD]).points, full.points)
    assert np.array_equal(world.sample(31, ["event", "text"]).events.t_ns, full.events.t_ns)


def test_every_modality_contract(world: World) -> None:
    cfg = world.config
    s = world.sample(42)
    assert 0 <= s.class_index < len(CLASSES) and s.class_name == CLASSES[s.class_index].name
    assert isinstance(s.caption, str) and s.caption
    assert s.image.shape == (cfg.image_size, cfg.image_size, 3) and s.image.dtype == np.uint8
    assert isinstance(s.thermal, ThermalFrame) and s.thermal.data.dtype == np.uint16
    assert s.thermal.data.shape == cfg.thermal_size[::-1]
    assert isinstance(s.events, EventPacket) and len(s.events) > 0
    assert isinstance(s.tactile, TactileFrame)
    assert s.tactile.image.shape == (*cfg.tactile_size[::-1], 3)
    assert isinstance(s.audio, AudioBlock) and s.audio.sample_rate == cfg.audio_rate
    assert s.audio.samples.dtype == np.float32
    assert s.audio.samples.shape == (int(cfg.audio_rate * cfg.audio_duration_s),)
    assert np.abs(s.audio.samples).max() < 1.0
    assert s.points.dtype == np.float32 and s.points.shape[1] == 3
    assert np.isfinite(s.points).all()
    json.dumps(s.nuisance)  # recorded nuisance is JSON-serialisable
    for key in ("yaw_deg", "scale", "light_intensity", "camera_distance_m", "ambient_c"):
        assert key in s.nuisance


def test_class_index_and_argument_checks(world: World) -> None:
    assert world.sample(1, ["text"], class_index=17).class_name == CLASSES[17].name
    drawn = {world.sample(s, ["text"]).class_index for s in range(60)}
    assert len(drawn) > 12  # the seed draws all sorts of classes
    with pytest.raises(IndexError):
        world.sample(1, ["text"], class_index=18)
    with pytest.raises(ValueError):
        world.sample(-1, ["text"])
    with pytest.raises(ValueError, match="unknown modality"):
        world.sample(1, ["smell"])


def test_config_round_trip_and_validation() -> None:
    cfg = WorldConfig(image_size=96, thermal_size=(80, 60), ambient_c=(10.0, 12.0))
    back = WorldConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert WorldConfig.from_dict({}) == WorldConfig()
    with pytest.raises(ValueError, match="unknown"):
        WorldConfig.from_dict({"image_sise": 3})
    with pytest.raises(ValueError):
        WorldConfig.from_dict({"thermal_size": [80]})
    with pytest.raises(ValueError):
        WorldConfig.from_dict({"lidar_points": 10.5})


def test_config_changes_sizes() -> None:
    cfg = WorldConfig(image_size=64, thermal_size=(80, 60), event_size=(64, 48),
                      tactile_size=(48, 48), lidar_points=256, audio_duration_s=0.5)
    s = World(cfg).sample(3)
    assert s.image.shape == (64, 64, 3) and s.thermal.data.shape == (60, 80)
    assert (s.events.width, s.events.height) == (64, 48) and s.events.y.max() < 48
    assert s.tactile.image.shape == (48, 48, 3) and len(s.points) <= 256
    assert s.audio.samples.shape == (8000,)


def _sample_in_child(seed: int) -> tuple[int, bytes, bytes]:
    s = World().sample(seed, ["image", "point_cloud"])
    return s.class_index, s.image.tobytes(), s.points.tobytes()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_worker_processes_give_identical_samples(world: World, method: str) -> None:
    world.sample(0, ["image"])  # the parent holds pybullet clients before forking
    with mp.get_context(method).Pool(1) as pool:
        got = pool.map(_sample_in_child, [5, 6])
    for seed, (ci, img, pts) in zip([5, 6], got, strict=True):
        s = world.sample(seed, ["image", "point_cloud"])
        assert ci == s.class_index and img == s.image.tobytes() and pts == s.points.tobytes()
