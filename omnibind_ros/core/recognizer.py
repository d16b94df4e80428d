"""The recognition engine: the runtime path from samples to recognitions, written once.

A :class:`Recognizer` owns the availability monitor, the latest embedding of every sensor, the
tick scheduler, the fusion tick and the last result. Its callers feed it events and timers with
a clock they inject:

* ``on_sample`` / ``on_bad_sample`` / ``on_embedding``: what a sensor's messages amount to
  (delivered by :class:`~omnibind_ros.core.sensor_worker.SampleReporter`);
* ``on_fusion_timer``: the heartbeat timer, every :attr:`Recognizer.timer_period_ns`;
* ``on_monitor_timer``: the availability monitor's evaluation, every ``1 / MONITOR_RATE_HZ``;
* ``add_sensor`` / ``remove_sensor`` / ``set_enabled`` / ``on_publisher_count``: configuration
  and the ROS graph.

Every tick's result goes to ``on_result`` (and a failed tick's exception to ``on_tick_error``),
whatever started it. The perception node (threads, ROS clock), offline bag evaluation (one
thread, the bag clock), and through the node the live bag evaluation, ``omnibind-bringup`` and
the benchmarks all run this class, so they cannot drift apart.

When a tick runs (:class:`~omnibind_ros.core.schedule.TickScheduler` decides; these are the
triggers it is asked about):

* a new embedding: it *joins* fusion when its sensor is fusable but was not fused in the
  previous tick, and it is the *freshest* evidence when its stamp is the newest of the fusable
  sensors' embeddings;
* a sensor fused in the previous tick changes state (the monitor evaluation reports it);
* the heartbeat timer.

Times are integer nanoseconds of the injected clock (stamps too). Thread safety: every method
may be called from any thread; one lock serialises ticks and configuration, and the monitor
reads the clock inside its own lock.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from omnibind_ros.core.availability import AvailabilityMonitor, SensorConfig, Transition
from omnibind_ros.core.errors import BundleIncompatibleError
from omnibind_ros.core.fusion import EmbeddingSlot, FusionResult, FusionTick, LatestEmbeddings
from omnibind_ros.core.pipeline import CLOCK_JUMP_TOLERANCE_NS as PIPELINE_CLOCK_JUMP_TOLERANCE_NS
from omnibind_ros.core.pipeline import StageHook
from omnibind_ros.core.schedule import TickScheduler

__all__ = ["CLOCK_JUMP_TOLERANCE_NS", "MONITOR_RATE_HZ", "NODE_STALL_NS", "FusionSettings",
           "MonitorUpdate",
           "Recognizer", "build_fusion_tick", "logit_scale_of"]

#: How often the monitor is evaluated (state changes are reported when seen, so this bounds the
#: delay of a STALE/LOST report beyond its deadline).
MONITOR_RATE_HZ = 20.0
#: Backward clock steps smaller than this (ns) are reordering between threads, not a jump. A
#: real jump back (looping bag, simulator reset) is seconds; this only absorbs sim-time jitter.
CLOCK_JUMP_TOLERANCE_NS = PIPELINE_CLOCK_JUMP_TOLERANCE_NS  # one tolerance for stage and engine
NS = 1_000_000_000
#: Four missed monitor periods in a row: a node that runs the monitor on its timer stalled.
NODE_STALL_NS = round(4 * NS / MONITOR_RATE_HZ)


@dataclass(frozen=True)
class FusionSettings:
    """The ``fusion.*`` parameters of the perception node.

    rate_hz : nominal tick rate (see :class:`~omnibind_ros.core.schedule.TickScheduler`).
    max_age_s : oldest sample that may be fused.
    min_modalities : distinct modalities needed for an answer.
    top_k : labels per answer.
    publish_embedding : put the fused embedding into the Recognition message.
    tick_on_embedding : tick on fresh evidence (else on the timer only).
    unsure_below : answers whose calibrated confidence is below it are marked unsure.
    min_quality : embeddings of inputs whose quality (:mod:`omnibind_ros.core.quality`) is
        below it are left out of fusion; 0 = every live sensor is fused.
    """

    rate_hz: float = 10.0
    max_age_s: float = 1.0
    min_modalities: int = 1
    top_k: int = 5
    publish_embedding: bool = False
    tick_on_embedding: bool = True
    unsure_below: float = 0.5
    min_quality: float = 0.0


def logit_scale_of(bundle: Any) -> float:
    """The bundle's logit scale: the multiplier of the label cosines that training used (1/tau
    of the fusion loss), so a fused score here is the trainer's softmax."""
    scale = bundle.logit_scale
    if scale is None:
        raise BundleIncompatibleError(
            f"the model bundle {bundle.root} carries no labels.logit_scale (exported before the "
            "bundle recorded it); re-export it: omnibind-train export --config <its config>",
            path=bundle.root)
    return float(scale)


def build_fusion_tick(bundle: Any, backend: Any, settings: FusionSettings,
                      label_names: Sequence[str], label_embeddings: np.ndarray) -> FusionTick:
    """The FusionTick of a bundle, a backend on it, the fusion settings and a label set; the
    confidence uses the bundle's calibration temperature when it has one."""
    pad_to = bundle.fusion.max_tokens if bundle.fusion is not None else None
    temperature = getattr(bundle.labels, "temperature", None) or 1.0
    return FusionTick(backend.fuse, label_names, label_embeddings, logit_scale_of(bundle),
                      max_age_s=settings.max_age_s, top_k=settings.top_k,
                      min_modalities=settings.min_modalities, pad_to=pad_to,
                      min_quality=settings.min_quality, temperature=temperature,
                      unsure_below=settings.unsure_below)


@dataclass(frozen=True)
class MonitorUpdate:
    """What one monitor evaluation found.

    transitions : sensor state changes since the previous evaluation, in order.
    clock_reset : the clock jumped back since then (the sensors' history and the embeddings
        stamped ahead of the clock were dropped).
    """

    transitions: tuple[Transition, ...]
    clock_reset: bool = False


ResultListener = Callable[[FusionResult], None]
ErrorListener = Callable[[Exception], None]


class Recognizer:
    """The engine (see the module docstring).

    Parameters
    ----------
    fusion : the fusion tick (:func:`build_fusion_tick`).
    clock : ``() -> now`` in int nanoseconds on the caller's clock (node clock, bag clock).
    rate_hz, tick_on_embedding : the tick schedule (:class:`TickScheduler`).
    on_result : receives every tick's result (outside the engine's lock).
    on_tick_error : receives the exception of a tick that failed (the previous result stays).
    hook : optional stage timings: ``"fusion/tick"`` (one tick, s) and
        ``"<sensor>/stamp_to_embedding"`` (clock at storing minus the sample's stamp, s).
    stall_after_ns : a longer gap between two :meth:`on_monitor_timer` calls is the caller's
        own stall, not its sensors' silence (:class:`AvailabilityMonitor`); None: off (a
        caller that does not run the monitor on a timer). :data:`NODE_STALL_NS` for a node.
    """

    def __init__(self, fusion: FusionTick, *, clock: Callable[[], int],
                 rate_hz: float = 10.0, tick_on_embedding: bool = True,
                 on_result: ResultListener | None = None,
                 on_tick_error: ErrorListener | None = None,
                 hook: StageHook | None = None, stall_after_ns: int | None = None) -> None:
        self._lock = threading.RLock()
        self._clock = clock
        self.monitor = AvailabilityMonitor(clock_jump_tolerance_ns=CLOCK_JUMP_TOLERANCE_NS,
                                           clock=clock, stall_after_ns=stall_after_ns)
        self.store = LatestEmbeddings()
        self._fusion = fusion
        self._scheduler = TickScheduler(rate_hz, tick_on_embedding)
        self._modalities: dict[str, str] = {}
        self._last: FusionResult | None = None
        self._clock_resets = 0
        self.on_result = on_result
        self.on_tick_error = on_tick_error
        self.hook = hook
        #: False stops every tick (the node while inactive); samples are still recorded.
        self.ticking = True

    # -- configuration -------------------------------------------------------------------------

    @property
    def fusion(self) -> FusionTick:
        return self._fusion

    @property
    def scheduler(self) -> TickScheduler:
        return self._scheduler

    @property
    def timer_period_ns(self) -> int:
        """Period of :meth:`on_fusion_timer` calls (0: the schedule needs no timer)."""
        return self._scheduler.timer_period_ns

    @property
    def last_result(self) -> FusionResult | None:
        """The newest successful tick's result."""
        return self._last

    @property
    def sensor_names(self) -> tuple[str, ...]:
        return self.monitor.sensor_names

    def set_fusion(self, fusion: FusionTick) -> None:
        """Replace the fusion tick (new labels, max age, top-k...)."""
        with self._lock:
            self._fusion = fusion

    def set_schedule(self, rate_hz: float, tick_on_embedding: bool = True) -> None:
        """Replace the tick schedule (the caller re-creates its timer: :attr:`timer_period_ns`)."""
        with self._lock:
            self._scheduler = TickScheduler(rate_hz, tick_on_embedding)

    def add_sensor(self, config: SensorConfig) -> None:
        """Start watching a sensor (its startup grace starts now)."""
        with self._lock:
            self.monitor.add_sensor(config)
            self._modalities[config.name] = config.modality

    def remove_sensor(self, name: str) -> None:
        """Forget a sensor and its embedding (unknown names are ignored)."""
        with self._lock:
            if self._modalities.pop(name, None) is None:
                return
            self.monitor.remove_sensor(name)
            self.store.remove(name)

    def set_enabled(self, name: str, enabled: bool, reason: str = "disabled by operator") -> None:
        self.monitor.set_enabled(name, enabled, None, reason)

    def on_publisher_count(self, name: str, count: int) -> None:
        """Publishers on the sensor's topic, from the ROS graph (unknown names are ignored)."""
        try:
            self.monitor.on_publisher_count(name, count)
        except KeyError:
            pass  # removed meanwhile

    def clear(self) -> None:
        """Drop every embedding and the last result (sensors and their history stay)."""
        with self._lock:
            self.store.clear()
            self._last = None

    # -- samples ---------------------------------------------------------------------------------

    def on_sample(self, name: str, stamp_ns: int) -> bool:
        """A valid message of ``name``; whether it is the sensor's newest (False for a removed
        sensor, a future stamp, a leftover of a vanished publisher)."""
        try:
            return self.monitor.on_sample(name, stamp_ns)
        except KeyError:
            return False

    def on_bad_sample(self, name: str, reason: str) -> None:
        try:
            self.monitor.on_bad_sample(name, None, reason)
        except KeyError:
            pass

    def on_embedding(self, name: str, stamp_ns: int, embedding: np.ndarray,
                     quality: float = 1.0) -> FusionResult | None:
        """Store the embedding of an accepted sample (with its input quality in [0, 1], which
        fusion's ``min_quality`` may act on); tick if the scheduler says so. Returns the tick's
        result, or None (no tick, a failed tick, or a sensor removed meanwhile)."""
        modality = self._modalities.get(name)
        if modality is None:
            return None  # removed while its last message was being encoded
        now = self._clock()
        if self.hook is not None:
            self.hook(f"{name}/stamp_to_embedding", (now - stamp_ns) / NS)
        self.store.put(EmbeddingSlot(name, modality, stamp_ns, embedding,
                                     min(1.0, max(0.0, float(quality)))), now)
        return self._tick("embedding", name)

    # -- timers ----------------------------------------------------------------------------------

    def on_fusion_timer(self) -> FusionResult | None:
        """The heartbeat timer fired: tick if due."""
        return self._tick("timer")

    def on_monitor_timer(self) -> MonitorUpdate:
        """Evaluate the monitor; a fused sensor that changed state ticks at once."""
        transitions = tuple(self.monitor.update())
        resets = self.monitor.clock_resets
        reset = resets != self._clock_resets
        if reset:  # sim reset or looping bag: drop the embeddings of the old timeline (those
            # of the new one, stored since the monitor saw the jump, stay)
            self._clock_resets = resets
            self.store.drop_after(self._clock() + self.store.future_tolerance_ns)
        last = self._last
        if last is not None and any(t.name in last.sensors for t in transitions):
            self._tick("change")
        return MonitorUpdate(transitions, reset)

    # -- the tick --------------------------------------------------------------------------------

    def _tick(self, trigger: str, sensor: str | None = None) -> FusionResult | None:
        error: Exception | None = None
        with self._lock:
            if not self.ticking:
                return None
            fusion, scheduler = self._fusion, self._scheduler
            now = self._clock()
            fusable = self.monitor.fusable(None, fusion.max_age_ns)  # clock read in its lock
            if not self._due(scheduler, trigger, now, fusable, sensor):
                return None
            scheduler.ticked(now)
            start = time.perf_counter()
            try:
                result = fusion.tick(self.store, fusable, now)
            except Exception as exc:  # noqa: BLE001  (reported; the previous result stays)
                error = exc
            else:
                self.monitor.set_in_fusion(result.sensors)
                self._last = result
            spent = time.perf_counter() - start
        if self.hook is not None:
            self.hook("fusion/tick", spent)
        if error is not None:
            if self.on_tick_error is not None:
                self.on_tick_error(error)
            return None
        if self.on_result is not None:
            self.on_result(result)
        return result

    def _due(self, scheduler: TickScheduler, trigger: str, now: int, fusable: list[str],
             sensor: str | None) -> bool:
        if trigger == "embedding":
            last = self._last
            joins = (sensor is not None and sensor in fusable
                     and (last is None or sensor not in last.sensors))
            return scheduler.embedding_due(now, joins=joins,
                                           freshest=self._is_freshest(sensor, fusable))
        if trigger == "change":
            return scheduler.change_due(now)
        return scheduler.timer_due(now)

    def _is_freshest(self, sensor: str | None, fusable: list[str]) -> bool:
        slots = self.store.snapshot()
        own = slots.get(sensor) if sensor is not None else None
        if own is None:
            return False
        return all(slots[n].stamp_ns <= own.stamp_ns for n in fusable if n in slots)
