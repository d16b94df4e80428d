"""Thermal, event, tactile and LiDAR simulators: physics sanity and output contracts."""
from __future__ import annotations

import numpy as np
import pytest

from omnibind_ros.sim.catalog import CLASSES, MATERIALS
from omnibind_ros.sim.events import EventSimulator, to_packet
from omnibind_ros.sim.lidar import GROUND, OBJECT, LidarSetup, lidar_scan
from omnibind_ros.sim.render import get_renderer, rotation_zyx
from omnibind_ros.sim.tactile import Contact, GelPatch
from omnibind_ros.sim.thermal import ThermalScene
from omnibind_ros.sim.world import STREAM_LIDAR, World, rng_for


@pytest.fixture(scope="module")
def world() -> World:
    return World()


# ------------------------------------------------------------------------------------ thermal

def test_thermal_counts_are_radiometric_kelvin(world: World) -> None:
    s = world.sample(5, ["thermal"])
    th = s.thermal
    assert th.encoding == "mono16" and th.data.dtype == np.uint16
    assert th.data.shape == (120, 160)
    kelvin = th.data.astype(float) * th.kelvin_per_count
    assert 273.15 + 5 < kelvin.min() and kelvin.max() < 273.15 + 45
    # the background sits at the drawn ambient (within gradient + noise)
    assert abs(np.median(kelvin) - 273.15 - s.nuisance["ambient_c"]) < 1.5


def test_metal_looks_colder_than_wood_and_plastic(world: World) -> None:
    contrast = {m.name: [] for m in MATERIALS}
    for seed in range(6):
        for c in CLASSES:
            if c.shape.name != "mug":
                continue
            th = world.sample(seed, ["thermal"], c.index).thermal.data.astype(float) * 0.01
            centre = th[50:70, 70:90].mean()  # the object is centred in the view
            contrast[c.material.name].append(centre - np.median(th))
    metal, wood, plastic = (np.mean(contrast[k]) for k in ("metal", "wooden", "plastic"))
    assert metal < -0.5 < wood < plastic


def test_apparent_temperature_mixes_reflection() -> None:
    sc = ThermalScene(20.0, 30.0, 10.0, 1.0, (0.0, 0.0))
    assert sc.apparent_object_c() == pytest.approx(30.0)
    mirror = ThermalScene(20.0, 30.0, 10.0, 0.0, (0.0, 0.0))
    assert mirror.apparent_object_c() == pytest.approx(10.0)


# ------------------------------------------------------------------------------------ events

def test_esim_step_counts_threshold_crossings() -> None:
    sim = EventSimulator(4, 3, np.random.default_rng(0), threshold=0.2, threshold_sigma=0.0,
                         refractory_s=0.0, noise_rate_hz=0.0)
    dark = np.full((3, 4), 0.1)
    bright = (dark + 0.03) * np.exp(1.0) - 0.03  # +1.0 in log(I + eps)
    sim.reset(dark, 0.0)
    x, y, t, p = sim.step(bright, 0.01)
    assert len(x) == 12 * 5 and p.all()  # floor(1.0 / 0.2) = 5 ON events per pixel
    assert np.all((t > 0) & (t <= 0.01))
    x, y, t, p = sim.step(dark, 0.02)
    assert len(x) == 12 * 5 and not p.any()  # and back: 5 OFF events
    x, _, _, _ = sim.step(dark, 0.03)
    assert len(x) == 0  # static scene, no noise: silence


def test_esim_refractory_period_spaces_events() -> None:
    sim = EventSimulator(1, 1, np.random.default_rng(0), threshold=0.05, threshold_sigma=0.0,
                         refractory_s=2e-3, noise_rate_hz=0.0)
    sim.reset(np.full((1, 1), 0.1), 0.0)
    _, _, t, _ = sim.step(np.full((1, 1), 0.9), 0.01)  # ~40 crossings in 10 ms
    assert 0 < len(t) <= 6
    assert np.all(np.diff(np.sort(t)) >= 2e-3 - 1e-12)


def test_event_packet_contract(world: World) -> None:
    ev = world.sample(11, ["event"]).events
    assert len(ev) > 100
    assert ev.x.dtype == np.uint16 and ev.y.dtype == np.uint16
    assert ev.t_ns.dtype == np.int64 and ev.polarity.dtype == bool
    assert (ev.width, ev.height) == world.config.event_size
    assert ev.x.max() < ev.width and ev.y.max() < ev.height
    assert np.all(np.diff(ev.t_ns) >= 0)
    assert ev.t_ns[0] >= 0 and ev.t_ns[-1] <= world.config.event_window_s * 1e9
    assert 0.1 < ev.polarity.mean() < 0.9  # both polarities


def test_to_packet_sorts_and_offsets() -> None:
    pk = to_packet(np.array([1, 2]), np.array([0, 1]), np.array([2.5, 2.1]),
                   np.array([True, False]), 4, 4, stamp_s=2.0)
    np.testing.assert_array_equal(pk.t_ns, [100_000_000, 500_000_000])
    np.testing.assert_array_equal(pk.x, [2, 1])


# ------------------------------------------------------------------------------------ tactile

def test_tactile_differs_from_reference_in_the_contact(world: World) -> None:
    s = world.sample(2, ["tactile"], class_index=0)  # metal mug, smooth surface
    tac = s.tactile
    assert tac.image.shape == (96, 96, 3) and tac.image.dtype == np.uint8
    assert tac.reference is not None and tac.reference.shape == tac.image.shape
    scene = world.scene(2, 0)
    patch = GelPatch.make(get_renderer(), scene.cls.shape, scene.cls.material,
                          scene.motion.scale, scene.contact, np.random.default_rng(0))
    from omnibind_ros.sim.tactile import indentation

    ind = indentation(patch.depth_mm, scene.contact.press_mm, patch.hardness, patch.pixel_mm)
    assert (ind > 0.05).mean() > 0.01  # the finger does touch
    diff = np.abs(tac.image.astype(int) - tac.reference.astype(int)).sum(axis=-1)
    gy, gx = np.gradient(ind)
    slope = np.hypot(gx, gy) > 0.01
    assert slope.any()
    assert diff[slope].mean() > 3 * diff[ind == 0].mean() + 5


def test_tactile_without_press_is_the_reference(world: World) -> None:
    scene = world.scene(4, 4)
    patch = GelPatch.make(get_renderer(), scene.cls.shape, scene.cls.material,
                          scene.motion.scale, scene.contact, np.random.default_rng(1))
    frame, info = patch.frame(0.0, np.random.default_rng(2), noise_std=0.0)
    np.testing.assert_array_equal(frame.image, frame.reference)
    assert info["contact_area_mm2"] == 0.0


def test_contact_points_face_outwards() -> None:
    from omnibind_ros.sim.meshes import load_mesh

    mesh = load_mesh(CLASSES[0].shape)  # the mug: its inside faces must not be pressed
    rng = np.random.default_rng(0)
    for _ in range(50):
        c = Contact.draw(mesh, rng)
        assert np.dot(c.normal, c.point) > 0


# ------------------------------------------------------------------------------------ LiDAR

def test_lidar_sees_ground_and_object() -> None:
    shape = CLASSES[3].shape  # duck
    setup = LidarSetup(distance=1.5, height=0.4, lateral=0.1, range_noise=0.0, dropout=0.0,
                       boxes=((1.5, 0.3, 0.2, 0.05, 0.05, 0.05),))
    pts, lab = lidar_scan(get_renderer(), shape, rotation_zyx(0.5, 0, 0), 1.0, setup,
                          np.random.default_rng(0), n_points=100000)
    assert pts.dtype == np.float32 and pts.ndim == 2 and pts.shape[1] == 3
    assert np.isfinite(pts).all()
    assert (lab == GROUND).sum() > 100 and (lab == OBJECT).sum() > 200
    np.testing.assert_allclose(pts[lab == GROUND, 2], -0.4, atol=1e-4)  # noiseless ground
    obj = pts[lab == OBJECT]
    assert obj[:, 2].min() >= -0.4 - 1e-3  # resting on, not under, the ground
    assert abs(np.median(obj[:, 1]) - 0.1) < 0.05 and np.all(obj[:, 0] > 1.3)  # x forward
    assert obj[:, 0].min() < 1.5  # only the near (visible) side
    assert np.ptp(obj[:, 2]) > 0.08  # ~0.13 m tall duck


def test_lidar_sample_is_fixed_size_and_noisy(world: World) -> None:
    a = world.sample(9, ["point_cloud"]).points
    assert a.shape == (world.config.lidar_points, 3)
    pts, lab = world.points(world.scene(9), rng_for(9, STREAM_LIDAR))
    np.testing.assert_array_equal(pts, a)
    assert 0.15 < (lab == OBJECT).mean() < 0.9
