"""Live mode: the simulated world as time-stamped sensor messages on a simulated clock.

:class:`WorldStream` plays *episodes* of ``object_period_s`` seconds; each episode shows one object
(the class changes at every episode boundary) that moves continuously (a slow Lissajous drift and
a yaw rotation), so the event camera sees motion. Every sensor fires at its own rate, and
:meth:`WorldStream.next` returns the next message of any sensor in time order:

- frame sensors (image, thermal, tactile, point_cloud, text) are stamped at the capture time
  ``k / rate``;
- window sensors are stamped at the *start* of the window they cover, ``[k / rate, (k+1) / rate)``:
  an event packet holds the events of that window (``t_ns`` offsets from the stamp), an audio
  chunk the samples of that window of one continuous signal (impacts at random times within the
  episode over a continuous background). A node that wants causal publication delays them by one
  period.

The tactile finger presses the object from 0.5 s after the episode starts to 0.5 s before it ends
(smooth 0.3 s ramps), so a tactile stream also shows no-contact frames.

Degraded sensors: with a :class:`~omnibind_ros.sim.degrade.DegradationSpec`, each episode draws
per modality whether its sensors are degraded, by which kind and how badly (a condition of the
episode: it gets dark, the wind rises), and every message of such a sensor in that episode is
degraded (:meth:`WorldStream.degradation_at` tells which). The draws use their own random
streams, so the clean messages are those of a stream without a spec. Scripted degradations
(scenario ``degrade_on``) are applied by the publisher with :func:`degrade_item`.

Per-episode state (scene, backdrop, gel patch, audio signal) is cached, so a stream is cheap:
one TinyRenderer pass per image/thermal/LiDAR message and a few small ones per event packet. The
stream is deterministic for a given seed and sensor set, ROS-free, and must be consumed in order
(it is a generator of a simulated clock, not random access); ``class_at`` is random access.
"""
from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy.signal import lfilter

from omnibind_ros.core.modalities import Modality, parse_modality
from omnibind_ros.core.types import AudioBlock, EventPacket, TactileFrame
from omnibind_ros.sim.catalog import CLASSES, ObjectClass
from omnibind_ros.sim.degrade import DegradationSpec, apply
from omnibind_ros.sim.events import EventSimulator, to_packet
from omnibind_ros.sim.render import get_renderer
from omnibind_ros.sim.tactile import GelPatch
from omnibind_ros.sim.world import STREAM_DEGRADE, Motion, Scene, World

#: Default simulated sensors: name -> (modality, rate in Hz). Rates of common hardware: a 10 Hz
#: camera stream, a FLIR Lepton at 8.7 Hz, 50 ms event packets, a GelSight Mini at ~25 Hz (15
#: here), 20 ms audio chunks, a 10 Hz LiDAR, an operator speaking every few seconds.
DEFAULT_SENSORS: dict[str, tuple[str, float]] = {
    "camera": ("image", 10.0),
    "thermal": ("thermal", 8.7),
    "event_camera": ("event", 20.0),
    "tactile": ("tactile", 15.0),
    "microphone": ("audio", 50.0),
    "lidar": ("point_cloud", 10.0),
    "operator": ("text", 0.25),
}

#: Windowed modalities: a message covers [stamp, stamp + 1 / rate).
WINDOWED = (Modality.EVENT, Modality.AUDIO)
#: Event-camera frames rendered per second of simulated time (ESIM interpolates between them).
EVENT_RENDER_HZ = 100.0
#: Impacts (taps on the object) per episode, inclusive range.
IMPACTS_PER_EPISODE = (1, 3)
#: Continuous background noise of the microphone (std, full scale 1).
AUDIO_BACKGROUND_STD = 0.004


class StreamItem(NamedTuple):
    """One message: its stamp (s), the sensor's name, its modality value, and the payload.

    Payload types: image uint8 [H, W, 3]; thermal ThermalFrame; event EventPacket; tactile
    TactileFrame; audio AudioBlock (float32 mono); point_cloud float32 [N, 3]; text str.
    """

    stamp_s: float
    sensor: str
    modality: str
    payload: Any


def degrade_item(item: StreamItem, kind: str, severity: float, rng: np.random.Generator,
                 rate_hz: float | None = None) -> Any:
    """``item``'s payload degraded by ``kind`` at ``severity`` (text passes unchanged: it has
    no degradations); ``rate_hz`` gives a window sensor's window (1 / rate)."""
    if item.modality == Modality.TEXT.value:
        return item.payload
    context = {"window_s": 1.0 / rate_hz} if rate_hz else {}
    return apply(item.modality, kind, item.payload, severity, rng, **context)


@dataclass
class _Episode:
    index: int
    scene: Scene
    background: np.ndarray | None = None
    gel: GelPatch | None = None
    audio: np.ndarray | None = None  # float64 [period + tail] samples from the episode start
    audio_out: np.ndarray | None = None  # float32 [period] what the microphone delivers


class WorldStream:
    """Time-ordered messages of simulated sensors watching a changing, moving object.

    Parameters
    ----------
    world : the world to observe (default: ``World()``).
    seed : makes the whole stream reproducible.
    sensor_rates : sensor name -> (modality value, rate in Hz); default :data:`DEFAULT_SENSORS`.
    object_period_s : how long each object stays (the class changes every period).
    degradations : degradations drawn per episode and modality (see the module docstring);
        None = clean sensors.
    """

    def __init__(self, world: World | None = None, seed: int = 0,
                 sensor_rates: Mapping[str, tuple[str, float]] | None = None,
                 object_period_s: float = 4.0,
                 degradations: DegradationSpec | None = None) -> None:
        self.world = world or World()
        self.degradations = degradations if degradations and degradations.active else None
        self.seed = int(seed)
        self.period = float(object_period_s)
        if self.period <= 0:
            raise ValueError(f"object_period_s must be positive, got {object_period_s}")
        rates = dict(DEFAULT_SENSORS if sensor_rates is None else sensor_rates)
        self.sensors: dict[str, tuple[Modality, float]] = {}
        for name, (mod, rate) in rates.items():
            if rate <= 0:
                raise ValueError(f"sensor {name!r}: rate must be positive, got {rate}")
            self.sensors[name] = (parse_modality(mod), float(rate))
        self._classes: list[int] = []
        self._episodes: dict[int, _Episode] = {}
        self._count = {name: 0 for name in self.sensors}
        self._heap = [(0.0, i, name) for i, name in enumerate(self.sensors)]
        heapq.heapify(self._heap)
        self._rng = {name: np.random.default_rng([self.seed, 7919, i])
                     for i, name in enumerate(self.sensors)}
        self._degrade_rng = {name: np.random.default_rng([self.seed, STREAM_DEGRADE, 7919, i])
                             for i, name in enumerate(self.sensors)}
        self._event: dict[str, tuple[EventSimulator, float]] = {}
        self.time_s = 0.0

    # ------------------------------------------------------------------ ground truth
    def episode_at(self, t: float) -> int:
        """Index of the episode playing at time ``t`` (seconds, >= 0)."""
        return int(np.floor(max(t, 0.0) / self.period + 1e-12))

    def class_index(self, episode: int) -> int:
        """Class of ``episode``: random, never the same as the previous episode's."""
        while len(self._classes) <= episode:
            k = len(self._classes)
            rng = np.random.default_rng([self.seed, 104729, k])
            if k == 0:
                self._classes.append(int(rng.integers(len(CLASSES))))
            else:  # a different class every time: offset 1..N-1 from the previous one
                prev = self._classes[-1]
                self._classes.append((prev + 1 + int(rng.integers(len(CLASSES) - 1)))
                                     % len(CLASSES))
        return self._classes[episode]

    def class_at(self, t: float) -> ObjectClass:
        """The object class in front of the sensors at time ``t`` (ground truth)."""
        return CLASSES[self.class_index(self.episode_at(t))]

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[StreamItem]:
        return self

    def __next__(self) -> StreamItem:
        return self.next()

    def next(self) -> StreamItem:
        """The next message in stamp order (ties: in the order sensors were given)."""
        stamp, order, name = heapq.heappop(self._heap)
        k = self._count[name]
        mod, rate = self.sensors[name]
        self._count[name] = k + 1
        heapq.heappush(self._heap, ((k + 1) / rate, order, name))
        self.time_s = stamp
        item = StreamItem(stamp, name, mod.value, self._payload(name, mod, rate, stamp))
        drawn = self.degradation_at(name, stamp)
        if drawn is None:
            return item
        return item._replace(payload=degrade_item(item, *drawn, self._degrade_rng[name], rate))

    def degradation_at(self, sensor: str, t: float) -> tuple[str, float] | None:
        """(kind, severity) the spec degrades ``sensor`` by at time ``t``; None: clean."""
        if self.degradations is None:
            return None
        mod = self.sensors[sensor][0]
        e = self.episode_at(t)
        seed = int(np.random.SeedSequence([self.seed, 15485863, e]).generate_state(1)[0])
        return self.degradations.draw(seed, STREAM_DEGRADE).get(mod.value)

    def peek(self) -> tuple[float, str]:
        """Stamp and sensor name of the next message, without rendering it."""
        stamp, _, name = self._heap[0]
        return stamp, name

    def skip(self) -> tuple[float, str]:
        """Advance past the next message without rendering it; return its stamp and sensor.

        For a consumer that fell behind and would drop the message anyway (the ROS sim node
        under load): it catches up at no rendering cost. The sensor's noise generator is not
        advanced, so the noise of later messages differs from a run that skipped nothing;
        ground truth (class and pose at each time) does not depend on skipping.
        """
        stamp, order, name = heapq.heappop(self._heap)
        k = self._count[name] + 1
        self._count[name] = k
        heapq.heappush(self._heap, (k / self.sensors[name][1], order, name))
        self.time_s = stamp
        return stamp, name

    def until(self, t_end: float) -> Iterator[StreamItem]:
        """Messages with stamps < ``t_end``, in order (continues where the stream is)."""
        while self._heap[0][0] < t_end:
            yield self.next()

    # ------------------------------------------------------------------ episodes
    def _episode(self, t: float) -> _Episode:
        e = self.episode_at(t)
        if e not in self._episodes:
            ss = np.random.SeedSequence([self.seed, 15485863, e])
            scene = self.world.scene(int(ss.generate_state(1)[0]), self.class_index(e))
            scene.motion = self._drift(scene, np.random.default_rng(ss.spawn(1)[0]))
            self._episodes[e] = _Episode(e, scene)
            for old in [k for k in self._episodes if k < e - 1]:
                del self._episodes[old]  # keep this and the previous one (audio tails)
        return self._episodes[e]

    def _drift(self, scene: Scene, rng: np.random.Generator) -> Motion:
        """Continuous motion: a few cm of Lissajous drift and a slow yaw, from episode start."""
        return dataclasses.replace(
            scene.motion, velocity=(0.0, 0.0, 0.0), t_ref=0.0,
            yaw_rate=float(rng.uniform(0.3, 1.0) * rng.choice([-1.0, 1.0])),
            amplitude=(0.005, float(rng.uniform(0.015, 0.035)), float(rng.uniform(0.008, 0.02))),
            freq=tuple(float(f) for f in rng.uniform(0.2, 0.7, 3)),
            phase=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, 3)))

    def _local(self, t: float) -> tuple[_Episode, float]:
        ep = self._episode(t)
        return ep, t - ep.index * self.period

    # ------------------------------------------------------------------ payloads
    def _payload(self, name: str, mod: Modality, rate: float, t: float) -> Any:
        rng = self._rng[name]
        if mod is Modality.IMAGE:
            ep, tl = self._local(t)
            if ep.background is None:
                ep.background = self.world.background(ep.scene, np.random.default_rng(
                    [self.seed, 31, ep.index]))
            view = self.world.render_view(ep.scene, tl)
            return self.world.image(ep.scene, rng, view, ep.background)
        if mod is Modality.THERMAL:
            ep, tl = self._local(t)
            return self.world.thermal(ep.scene, rng, tl)
        if mod is Modality.POINT_CLOUD:
            ep, tl = self._local(t)
            return self.world.points(ep.scene, rng, tl)[0]
        if mod is Modality.TEXT:
            ep, _ = self._local(t)
            return self.world.caption(ep.scene, rng)
        if mod is Modality.TACTILE:
            return self._tactile(rng, t)
        if mod is Modality.EVENT:
            return self._events(name, rng, t, 1.0 / rate)
        if mod is Modality.AUDIO:
            return self._audio(t, 1.0 / rate)
        raise ValueError(f"no simulator for modality {mod}")

    def _tactile(self, rng: np.random.Generator, t: float) -> TactileFrame:
        ep, tl = self._local(t)
        cfg = self.world.config
        if ep.gel is None:
            sc = ep.scene
            ep.gel = GelPatch.make(get_renderer(), sc.cls.shape, sc.cls.material, sc.motion.scale,
                                   sc.contact, np.random.default_rng([self.seed, 37, ep.index]),
                                   size=cfg.tactile_size, patch_mm=cfg.tactile_patch_mm)
        # Press from 0.5 s after the object arrives to 0.5 s before it leaves, 0.3 s ramps.
        ramp = np.clip(min(tl - 0.5, self.period - 0.5 - tl) / 0.3, 0.0, 1.0)
        press = ep.scene.contact.press_mm * float(0.5 - 0.5 * np.cos(np.pi * ramp))
        return ep.gel.frame(press, rng, cfg.tactile_noise_std)[0]

    def _events(self, name: str, rng: np.random.Generator, t0: float, window: float
                ) -> EventPacket:
        cfg = self.world.config
        n = max(int(np.ceil(window * EVENT_RENDER_HZ)), 1)
        times = t0 + window * np.arange(1, n + 1) / n
        if name not in self._event:  # one physical sensor: thresholds fixed for the stream
            ep, tl = self._local(t0)
            sim = self.world.event_simulator(ep.scene, rng)
            sim.reset(self._event_frame(t0), t0)
            self._event[name] = (sim, t0)
        sim = self._event[name][0]
        x, y, tt, p = sim.simulate([self._event_frame(ti) for ti in times], times)
        return to_packet(x, y, tt, p, *cfg.event_size, stamp_s=t0)

    def _event_frame(self, t: float) -> np.ndarray:
        ep, tl = self._local(t)
        return self.world.event_frame(ep.scene, ep.scene.motion.pose(tl))

    # ------------------------------------------------------------------ audio
    def _audio(self, t0: float, window: float) -> AudioBlock:
        sr = self.world.config.audio_rate
        n_ep = int(round(self.period * sr))
        start = int(round(t0 * sr))
        stop = start + int(round(window * sr))
        out = np.empty(stop - start, np.float32)
        pos = start
        while pos < stop:
            e = pos // n_ep
            sig = self._episode_audio(e)
            end = min(stop, (e + 1) * n_ep)
            out[pos - start:end - start] = sig[pos - e * n_ep:end - e * n_ep]
            pos = end
        return AudioBlock(out, sr)

    def _episode_audio(self, e: int) -> np.ndarray:
        """The microphone signal of episode ``e`` (impacts + background, previous tails added)."""
        ep = self._episode(e * self.period)
        if ep.audio is None:
            sr = self.world.config.audio_rate
            n_ep = int(round(self.period * sr))
            tail = int(round(self.world.config.audio_duration_s * sr))
            rng = np.random.default_rng([self.seed, 41, e])
            sig = np.zeros(n_ep + tail, np.float64)
            # Background: low-passed white noise (room rumble + electronics), continuous.
            bg = lfilter([1.0 - 0.9], [1.0, -0.9], rng.standard_normal(n_ep + tail))
            sig[:n_ep] += AUDIO_BACKGROUND_STD * bg[:n_ep] / max(float(bg.std()), 1e-9)
            for _ in range(int(rng.integers(IMPACTS_PER_EPISODE[0], IMPACTS_PER_EPISODE[1] + 1))):
                onset = int(rng.uniform(0.1, max(self.period - 0.3, 0.2)) * sr)
                clip = self._impact(ep.scene, rng)
                m = min(clip.size, sig.size - onset)
                sig[onset:onset + m] += clip[:m]
            prev = self._episodes.get(e - 1)
            if prev is not None and prev.audio is not None:
                sig[:tail] += prev.audio[n_ep:n_ep + tail]  # the last taps still ringing
            ep.audio = sig
            ep.audio_out = np.clip(sig[:n_ep], -0.9999, 0.9999).astype(np.float32)
        return ep.audio_out

    def _impact(self, scene: Scene, rng: np.random.Generator) -> np.ndarray:
        from omnibind_ros.sim.audio import impact_sound

        cfg = self.world.config
        return impact_sound(scene.cls.material, scene.nuisance["size_m"], rng,
                            sample_rate=cfg.audio_rate, duration_s=cfg.audio_duration_s,
                            noise_level=0.0).astype(np.float64)
