"""The procedural world: one catalogue object observed by every modality at once, from a seed.

``World.sample(seed)`` draws the class (unless given) and every nuisance parameter from the seed,
then renders only the requested modalities. Each modality draws its own noise from its own
random stream (``default_rng([seed, stream_id])``), and all nuisance parameters are drawn up front
in a fixed order, so a modality's output does not depend on which other modalities were
requested, and the same seed always gives bit-identical arrays.

Sensors (all looking at the same object):

======== =====================================================================================
image    RGB camera 0.34-0.5 m away (``render.py``)
thermal  LWIR camera behind the RGB camera, wider field of view (``thermal.py``)
event    event camera beside the RGB camera; the object moves during a 50 ms window (``events.py``)
tactile  GelSight-like finger pressed on a random surface point (``tactile.py``)
lidar    solid-state LiDAR 1-2 m away, object on the ground (``lidar.py``)
audio    impact sound of tapping the object (``audio.py``, modal synthesis)
text     a caption (``text.py``)
======== =====================================================================================

No process-global state other than per-pid caches (meshes, pybullet clients), so a ``World`` can be
pickled to worker processes (fork or spawn); each process connects its own pybullet clients lazily.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omnibind_ros.core.modalities import Modality, parse_modality
from omnibind_ros.core.types import AudioBlock, EventPacket, TactileFrame, ThermalFrame
from omnibind_ros.sim.catalog import CLASSES, ObjectClass
from omnibind_ros.sim.degrade import DegradationSpec
from omnibind_ros.sim.events import EventSimulator, event_backdrop, render_intensity, to_packet
from omnibind_ros.sim.lidar import LidarSetup, draw_boxes, lidar_scan
from omnibind_ros.sim.meshes import load_mesh
from omnibind_ros.sim.render import (
    Appearance,
    Camera,
    Light,
    Pose,
    RenderResult,
    compose_rgb,
    get_renderer,
    paint_background,
    rotation_zyx,
)
from omnibind_ros.sim.tactile import Contact, tactile_frame
from omnibind_ros.sim.thermal import ThermalScene, thermal_frame
from omnibind_ros.sim.types import Sample

#: Random stream ids (second entry of the seed sequence). Never renumber: it changes every sample.
STREAM_SCENE, STREAM_IMAGE, STREAM_THERMAL, STREAM_EVENT = 0, 1, 2, 3
STREAM_TACTILE, STREAM_AUDIO, STREAM_LIDAR, STREAM_TEXT, STREAM_CLASS = 4, 5, 6, 7, 8
STREAM_DEGRADE = 9


def rng_for(seed: int, stream: int) -> np.random.Generator:
    """The independent random generator of ``stream`` for sample ``seed``."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([int(seed), int(stream)])


Range = tuple[float, float]


@dataclass
class WorldConfig:
    """Sizes, rates and nuisance ranges of the simulated sensors.

    Ranges are (low, high) of a uniform draw per sample. Sizes are (width, height) in pixels.
    The defaults are chosen for speed (small renders) and for a clear but not trivial signal.
    Chosen physical values: Lepton-like thermal (80 x 60, 57 deg HFOV, NETD 30-80 mK, 1.6x
    the RGB camera's distance so the silhouette is small and blurred: material, not shape); DVS
    contrast thresholds 0.15-0.3 log units with 0.03 per-pixel mismatch and a 1 ms refractory
    period (DAVIS-like); GelSight-like 16 mm patch pressed 0.6-2 mm; a dense solid-state LiDAR
    1-2 m away at 0.25-0.6 m height with 2-10 mm range noise; 16 kHz audio.
    """

    # --- RGB camera
    image_size: int = 160
    image_fov_deg: float = 40.0
    camera_distance_m: Range = (0.34, 0.5)
    camera_elevation_deg: Range = (5.0, 40.0)
    object_scale: Range = (0.8, 1.2)
    object_tilt_deg: float = 10.0
    light_intensity: Range = (0.55, 1.15)
    light_ambient: Range = (0.2, 0.45)
    light_elevation_deg: Range = (20.0, 80.0)
    background_clutter_max: int = 4
    image_noise_std: Range = (0.0, 0.025)
    image_blur_px: Range = (0.0, 0.8)
    # --- thermal camera (Lepton-like 80x60 focal plane, published upscaled)
    thermal_sensor_size: tuple[int, int] = (80, 60)
    thermal_size: tuple[int, int] = (160, 120)
    thermal_hfov_deg: float = 57.0
    thermal_distance_factor: float = 1.6
    ambient_c: Range = (16.0, 28.0)
    thermal_netd_k: Range = (0.03, 0.08)
    thermal_blur_px: Range = (1.2, 2.2)
    # --- event camera
    event_size: tuple[int, int] = (128, 128)
    event_render_size: int = 64
    event_frames: int = 5
    event_window_s: float = 0.05
    event_threshold: Range = (0.15, 0.3)
    event_threshold_sigma: float = 0.03
    event_refractory_s: float = 1e-3
    event_noise_rate_hz: Range = (0.02, 0.3)
    object_speed_mps: Range = (0.1, 0.3)
    object_yaw_rate_rps: Range = (-1.5, 1.5)
    # --- tactile sensor
    tactile_size: tuple[int, int] = (96, 96)
    tactile_patch_mm: float = 16.0
    tactile_press_mm: Range = (0.6, 2.0)
    tactile_noise_std: float = 0.01
    # --- LiDAR
    lidar_points: int = 1024
    lidar_grid: int = 96
    lidar_distance_m: Range = (1.0, 2.0)
    lidar_height_m: Range = (0.25, 0.6)
    lidar_lateral_m: Range = (-0.2, 0.2)
    lidar_range_noise_m: Range = (0.002, 0.01)
    lidar_dropout: Range = (0.02, 0.1)
    lidar_clutter_max: int = 2
    # --- microphone
    audio_rate: int = 16000
    audio_duration_s: float = 1.0
    audio_noise_level: Range = (0.002, 0.02)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-friendly dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WorldConfig:
        """Inverse of :meth:`to_dict`; missing keys keep their defaults.

        Raises ``ValueError`` on unknown keys, on a tuple field of the wrong length and on a
        non-integral value for an integer field.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown WorldConfig keys: {unknown}; known: {sorted(names)}")
        defaults = cls()
        kw: dict[str, Any] = {}
        for k, v in d.items():
            ref = getattr(defaults, k)
            if isinstance(ref, tuple):
                if not isinstance(v, (list, tuple)) or len(v) != len(ref):
                    raise ValueError(f"WorldConfig.{k}: expected {len(ref)} values, got {v!r}")
                kw[k] = tuple(type(r)(_checked(k, type(r), x))
                              for r, x in zip(ref, v, strict=True))
            else:
                kw[k] = type(ref)(_checked(k, type(ref), v))
        return cls(**kw)


def _checked(key: str, kind: type, value: Any) -> Any:
    if kind is int and float(value) != int(float(value)):
        raise ValueError(f"WorldConfig.{key}: expected an integer, got {value!r}")
    return int(float(value)) if kind is int else value


@dataclass(frozen=True)
class Motion:
    """The object's trajectory: translation and yaw as functions of time (seconds).

    ``translation(t) = centre + velocity * (t - t_ref) + amplitude * sin(2 pi freq t + phase)``
    and ``yaw(t) = yaw0 + yaw_rate * (t - t_ref)``; pitch/roll are a fixed small tilt.
    """

    yaw0: float
    pitch: float
    roll: float
    scale: float
    yaw_rate: float = 0.0
    velocity: tuple[float, float, float] = (0.0, 0.0, 0.0)
    t_ref: float = 0.0
    amplitude: tuple[float, float, float] = (0.0, 0.0, 0.0)
    freq: tuple[float, float, float] = (0.0, 0.0, 0.0)
    phase: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def rotation(self, t: float) -> np.ndarray:
        """Object-to-world rotation [3, 3] at time ``t``."""
        return rotation_zyx(self.yaw0 + self.yaw_rate * (t - self.t_ref), self.pitch, self.roll)

    def pose(self, t: float) -> Pose:
        """Pose at time ``t`` (bounding-box centre near the world origin)."""
        tr = (np.asarray(self.velocity) * (t - self.t_ref)
              + np.asarray(self.amplitude) * np.sin(2 * np.pi * np.asarray(self.freq) * t
                                                    + np.asarray(self.phase)))
        return Pose(self.rotation(t), tr, self.scale)


@dataclass
class Scene:
    """Everything drawn from a seed before any sensor renders (see :meth:`World.scene`)."""

    seed: int
    cls: ObjectClass
    motion: Motion
    camera: Camera
    light: Light
    look: Appearance
    thermal: ThermalScene
    contact: Contact
    lidar: LidarSetup
    params: dict[str, float] = field(default_factory=dict)
    nuisance: dict[str, Any] = field(default_factory=dict)


def _u(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


class World:
    """The procedural multimodal world.

    Parameters
    ----------
    config : sensor sizes and nuisance ranges (defaults: :class:`WorldConfig`).
    degradations : sensor degradations drawn per sample (:mod:`omnibind_ros.sim.degrade`);
        None = clean sensors. Kept apart from ``config`` so that a world config, and the hash
        of every data set built from it, is the same with and without this feature.
    """

    def __init__(self, config: WorldConfig | None = None,
                 degradations: DegradationSpec | None = None) -> None:
        self.config = config or WorldConfig()
        self.degradations = degradations

    # ------------------------------------------------------------------ scene
    def scene(self, seed: int, class_index: int | None = None) -> Scene:
        """Draw the class (unless given) and every nuisance parameter of sample ``seed``.

        The draws happen in a fixed order whatever is rendered later, which is what makes
        per-modality outputs independent of the requested modality set.
        """
        cfg = self.config
        if class_index is None:
            class_index = int(rng_for(seed, STREAM_CLASS).integers(len(CLASSES)))
        if not 0 <= class_index < len(CLASSES):
            raise IndexError(f"class_index {class_index} outside 0..{len(CLASSES) - 1}")
        cls = CLASSES[class_index]
        r = rng_for(seed, STREAM_SCENE)
        tilt = np.deg2rad(cfg.object_tilt_deg)
        yaw, pitch, roll = r.uniform(-np.pi, np.pi), r.uniform(-tilt, tilt), r.uniform(-tilt, tilt)
        scale = _u(r, cfg.object_scale)
        dist, elev = _u(r, cfg.camera_distance_m), np.deg2rad(_u(r, cfg.camera_elevation_deg))
        camera = Camera.orbit(dist, 0.0, elev, fov_deg=cfg.image_fov_deg, width=cfg.image_size,
                              height=cfg.image_size, near=0.02, far=3.0)
        l_az = r.uniform(-np.deg2rad(120), np.deg2rad(120))
        l_el = np.deg2rad(_u(r, cfg.light_elevation_deg))
        light = Light((float(np.cos(l_el) * np.cos(l_az)), float(np.cos(l_el) * np.sin(l_az)),
                       float(np.sin(l_el))), _u(r, cfg.light_intensity), _u(r, cfg.light_ambient))
        # Event-window motion: velocity across the image plane, a yaw rate; centred mid-window.
        speed, ang = _u(r, cfg.object_speed_mps), r.uniform(0, 2 * np.pi)
        right, up, _ = camera.basis()
        vel = speed * (np.cos(ang) * right + np.sin(ang) * up)
        motion = Motion(float(yaw), float(pitch), float(roll), scale,
                        _u(r, cfg.object_yaw_rate_rps), tuple(float(v) for v in vel),
                        cfg.event_window_s / 2.0)
        look = Appearance.draw(cls.material, r)
        thermal = ThermalScene.draw(cls.material, r, ambient_range_c=cfg.ambient_c)
        contact = Contact.draw(load_mesh(cls.shape), r, cfg.tactile_press_mm)
        l_dist, l_h = _u(r, cfg.lidar_distance_m), _u(r, cfg.lidar_height_m)
        l_lat = _u(r, cfg.lidar_lateral_m)
        clearance = load_mesh(cls.shape).radius * scale
        boxes = draw_boxes(r, np.array([l_dist, l_lat]), clearance, cfg.lidar_clutter_max)
        lidar = LidarSetup(l_dist, l_h, l_lat, cfg.lidar_grid, range_noise=_u(
            r, cfg.lidar_range_noise_m), dropout=_u(r, cfg.lidar_dropout), boxes=boxes)
        params = {
            "image_noise_std": _u(r, cfg.image_noise_std),
            "image_blur_px": _u(r, cfg.image_blur_px),
            "thermal_netd_k": _u(r, cfg.thermal_netd_k),
            "thermal_blur_px": _u(r, cfg.thermal_blur_px),
            "event_threshold": _u(r, cfg.event_threshold),
            "event_noise_rate_hz": _u(r, cfg.event_noise_rate_hz),
            "event_gray": float(r.uniform(0.45, 0.95)),
            "event_backdrop": float(r.uniform(0.1, 0.6)),
            "event_backdrop_tilt": (float(r.uniform(-0.1, 0.1)), float(r.uniform(-0.1, 0.1))),
            "audio_noise_level": _u(r, cfg.audio_noise_level),
        }
        nuisance = {
            "yaw_deg": float(np.rad2deg(yaw)), "pitch_deg": float(np.rad2deg(pitch)),
            "roll_deg": float(np.rad2deg(roll)), "scale": scale,
            "size_m": cls.shape.size_m * scale,
            "camera_distance_m": dist, "camera_elevation_deg": float(np.rad2deg(elev)),
            "light_direction": list(light.direction), "light_intensity": light.intensity,
            "light_ambient": light.ambient, "object_velocity_mps": list(motion.velocity),
            "object_yaw_rate_rps": motion.yaw_rate, "albedo_rgb": list(look.base_rgb),
            "ambient_c": thermal.ambient_c, "object_c": thermal.object_c,
            "reflected_c": thermal.reflected_c, "emissivity": thermal.emissivity,
            "apparent_object_c": thermal.apparent_object_c(),
            "tactile_point": list(contact.point), "tactile_normal": list(contact.normal),
            "tactile_press_mm": contact.press_mm, "lidar_distance_m": l_dist,
            "lidar_height_m": l_h, "lidar_lateral_m": l_lat, "lidar_boxes": len(boxes),
            "lidar_range_noise_m": lidar.range_noise, "lidar_dropout": lidar.dropout,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()},
        }
        return Scene(int(seed), cls, motion, camera, light, look, thermal, contact, lidar,
                     params, nuisance)

    # ------------------------------------------------------------------ sensors
    def render_view(self, scene: Scene, t: float | None = None) -> RenderResult:
        """The RGB camera's geometry pass at time ``t`` (default: mid event window)."""
        t = scene.motion.t_ref if t is None else t
        return get_renderer().render(scene.cls.shape, scene.motion.pose(t), scene.camera,
                                     scene.light)

    def image(self, scene: Scene, rng: np.random.Generator, view: RenderResult | None = None,
              background: np.ndarray | None = None) -> np.ndarray:
        """uint8 [S, S, 3] RGB image (``rng`` draws the backdrop unless given, then the noise)."""
        view = view or self.render_view(scene)
        if background is None:
            background = self.background(scene, rng)
        return compose_rgb(view, scene.cls.material, scene.look, scene.light, background, rng,
                           noise_std=scene.params["image_noise_std"],
                           blur_px=scene.params["image_blur_px"])

    def background(self, scene: Scene, rng: np.random.Generator) -> np.ndarray:
        """The RGB backdrop float32 [S, S, 3] (wall, table, clutter); records its parameters."""
        s = self.config.image_size
        bg, info = paint_background(s, s, rng, clutter_max=self.config.background_clutter_max)
        scene.nuisance.update({f"background_{k}": v for k, v in info.items()})
        return bg

    def thermal_camera(self, scene: Scene) -> Camera:
        """The thermal camera: behind the RGB camera on the same line of sight (body-mounted,
        ``thermal_distance_factor`` times as far), wider field of view, 2x sensor sampling."""
        cfg = self.config
        sw, sh = cfg.thermal_sensor_size
        vfov = 2.0 * np.rad2deg(np.arctan(np.tan(np.deg2rad(cfg.thermal_hfov_deg) / 2) * sh / sw))
        c = scene.camera
        eye = np.asarray(c.target) + cfg.thermal_distance_factor * np.subtract(c.eye, c.target)
        # Rendered at twice the focal-plane resolution: the detector then area-integrates 2x2.
        return dataclasses.replace(c, eye=tuple(float(v) for v in eye), fov_deg=float(vfov),
                                   width=2 * sw, height=2 * sh)

    def thermal(self, scene: Scene, rng: np.random.Generator, t: float | None = None
                ) -> ThermalFrame:
        """Radiometric frame, counts = kelvin * 100, [thermal_size[1], thermal_size[0]]."""
        t = scene.motion.t_ref if t is None else t
        cfg = self.config
        view = get_renderer().render(scene.cls.shape, scene.motion.pose(t),
                                     self.thermal_camera(scene), scene.light)
        return thermal_frame(view.mask, scene.thermal, rng, sensor_size=cfg.thermal_sensor_size,
                             output_size=cfg.thermal_size,
                             blur_px=scene.params["thermal_blur_px"],
                             netd_k=scene.params["thermal_netd_k"])

    def event_camera(self, scene: Scene) -> Camera:
        """Low-resolution render camera of the event sensor (same viewpoint as the RGB camera)."""
        cfg, c = self.config, scene.camera
        ew, eh = cfg.event_size
        rw = cfg.event_render_size
        return dataclasses.replace(c, width=rw, height=max(int(round(rw * eh / ew)), 1))

    def event_simulator(self, scene: Scene, rng: np.random.Generator) -> EventSimulator:
        """A fresh ESIM state for this scene's sensor (thresholds drawn from ``rng``)."""
        cfg = self.config
        return EventSimulator(*cfg.event_size, rng, threshold=scene.params["event_threshold"],
                              threshold_sigma=cfg.event_threshold_sigma,
                              refractory_s=cfg.event_refractory_s,
                              noise_rate_hz=scene.params["event_noise_rate_hz"])

    def event_frame(self, scene: Scene, pose: Pose) -> np.ndarray:
        """Linear-intensity frame [eh, ew] of the event sensor for the object at ``pose``."""
        cfg = self.config
        backdrop = event_backdrop(*cfg.event_size, scene.params["event_backdrop"],
                                  scene.params["event_backdrop_tilt"])
        return render_intensity(get_renderer(), scene.cls.shape, pose, self.event_camera(scene),
                                scene.light, backdrop, scene.params["event_gray"],
                                cfg.event_size)

    def events(self, scene: Scene, rng: np.random.Generator) -> EventPacket:
        """Events of one window [0, event_window_s] of the object's motion (stamp = 0)."""
        cfg = self.config
        sim = self.event_simulator(scene, rng)
        times = np.linspace(0.0, cfg.event_window_s, max(cfg.event_frames, 2))
        frames = [self.event_frame(scene, scene.motion.pose(t)) for t in times]
        x, y, t, p = sim.simulate(frames, times)
        return to_packet(x, y, t, p, *cfg.event_size, stamp_s=0.0)

    def tactile(self, scene: Scene, rng: np.random.Generator, press_scale: float = 1.0
                ) -> tuple[TactileFrame, dict]:
        """GelSight-like image + reference uint8 [th, tw, 3], and contact info."""
        cfg = self.config
        contact = scene.contact
        if press_scale != 1.0:
            contact = dataclasses.replace(contact, press_mm=contact.press_mm * press_scale)
        return tactile_frame(get_renderer(), scene.cls.shape, scene.cls.material,
                             scene.motion.scale, contact, rng, size=cfg.tactile_size,
                             patch_mm=cfg.tactile_patch_mm, noise_std=cfg.tactile_noise_std)

    def points(self, scene: Scene, rng: np.random.Generator, t: float | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """LiDAR points float32 [N, 3] (sensor frame) and labels int8 [N] at time ``t``."""
        t = scene.motion.t_ref if t is None else t
        return lidar_scan(get_renderer(), scene.cls.shape, scene.motion.rotation(t),
                          scene.motion.scale, scene.lidar, rng, self.config.lidar_points)

    def audio(self, scene: Scene, rng: np.random.Generator, duration_s: float | None = None
              ) -> np.ndarray:
        """One impact sound, float32 [n] in (-1, 1) (the other engineer's modal synthesis)."""
        from omnibind_ros.sim.audio import impact_sound

        cfg = self.config
        return impact_sound(scene.cls.material, scene.nuisance["size_m"], rng,
                            sample_rate=cfg.audio_rate,
                            duration_s=cfg.audio_duration_s if duration_s is None else duration_s,
                            noise_level=scene.params["audio_noise_level"])

    def caption(self, scene: Scene, rng: np.random.Generator) -> str:
        """A caption of the object (templates; sometimes shape-only or material-only)."""
        from omnibind_ros.sim.text import caption

        return caption(scene.cls, rng)

    # ------------------------------------------------------------------ one-shot sample
    def sample(self, seed: int, modalities: Iterable[str] | None = None,
               class_index: int | None = None) -> Sample:
        """Observe one object with the requested modalities.

        Parameters
        ----------
        seed : non-negative integer; same seed and arguments -> bit-identical sample.
        modalities : values of :class:`~omnibind_ros.core.modalities.Modality` ("image", "text",
            "thermal", "event", "tactile", "audio", "point_cloud"); None = all.
        class_index : index into :data:`~omnibind_ros.sim.catalog.CLASSES`; None = drawn from
            the seed.

        Returns
        -------
        Sample : requested fields filled, the others None; ``nuisance`` holds every drawn
            parameter; ``degradations`` what the world's degradation spec applied (drawn from
            its own random stream, after rendering, so clean payloads never change).
        """
        mods = set(Modality) if modalities is None else {parse_modality(m) for m in modalities}
        scene = self.scene(seed, class_index)
        out = Sample(seed=int(seed), class_index=scene.cls.index, class_name=scene.cls.name)
        if Modality.IMAGE in mods:
            out.image = self.image(scene, rng_for(seed, STREAM_IMAGE))
        if Modality.THERMAL in mods:
            out.thermal = self.thermal(scene, rng_for(seed, STREAM_THERMAL))
        if Modality.EVENT in mods:
            out.events = self.events(scene, rng_for(seed, STREAM_EVENT))
        if Modality.TACTILE in mods:
            out.tactile, info = self.tactile(scene, rng_for(seed, STREAM_TACTILE))
            scene.nuisance.update({f"tactile_{k}": v for k, v in info.items()})
        if Modality.AUDIO in mods:
            samples = self.audio(scene, rng_for(seed, STREAM_AUDIO))
            out.audio = AudioBlock(samples, self.config.audio_rate)
        if Modality.POINT_CLOUD in mods:
            out.points, labels = self.points(scene, rng_for(seed, STREAM_LIDAR))
            scene.nuisance["lidar_object_points"] = int((labels == 1).sum())
        if Modality.TEXT in mods:
            out.caption = self.caption(scene, rng_for(seed, STREAM_TEXT))
        out.nuisance = scene.nuisance
        if self.degradations is not None and self.degradations.active:
            self.degrade(out)
        return out

    def degrade(self, sample: Sample) -> Sample:
        """Apply this world's degradation spec to ``sample`` (its seed draws them)."""
        if self.degradations is None:
            return sample
        return self.degradations.apply(sample, sample.seed, STREAM_DEGRADE,
                                       window_s=self.config.event_window_s)


def default_world() -> World:
    """A world with the default configuration."""
    return World()


__all__ = ["STREAM_DEGRADE", "World", "WorldConfig", "Scene", "Motion", "rng_for",
           "default_world"]
