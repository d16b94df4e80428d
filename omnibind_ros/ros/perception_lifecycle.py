"""The perception LifecycleNode (imports rclpy: import it after ``ensure_safe_ros_env``).

Use :mod:`omnibind_ros.ros.perception_node` (``main`` and a lazy ``PerceptionNode``) rather than
this module directly. The node is thin glue: parameters (ros/params), QoS (ros/qos), conversion
(ros/conversions), per-sensor workers (ros/sensor_worker), the availability monitor and fusion
tick (core), status messages (ros/diagnostics).

Lifecycle: configure loads and validates the bundle, builds the backend, label embeddings, the
monitor and one preprocessing pipeline per sensor, and creates the publishers; activate creates
subscriptions, workers and timers; deactivate destroys those; cleanup releases the rest. A bad
bundle or backend makes configure return FAILURE with one error line (the node stays alive in
``unconfigured`` and can be configured again after the fix).
"""
from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter

from omnibind_ros.core.availability import AvailabilityMonitor
from omnibind_ros.core.backends import create_backend, embed_labels
from omnibind_ros.core.bundle import default_bundle_dir, load_bundle
from omnibind_ros.core.fusion import (
    EmbeddingSlot,
    FusionResult,
    FusionTick,
    LatestEmbeddings,
    TickScheduler,
)
from omnibind_ros.core.threads import limit_blas_threads, limit_malloc_arenas
from omnibind_ros.core.types import AudioBlock
from omnibind_ros.msg import ModalityPrediction, Recognition
from omnibind_ros.ros import diagnostics, params, qos
from omnibind_ros.ros.conversions import conversion_for
from omnibind_ros.ros.params import SENSOR_KEYS, SensorParams, sensor_param
from omnibind_ros.ros.sensor_worker import SensorWorker, make_pipeline
from omnibind_ros.srv import AddSensor, RemoveSensor

__all__ = ["PerceptionNode", "bundle_logit_scale", "build_fusion_tick", "is_freshest",
           "message_class", "tick_due",
           "read_label_file",
           "resolve_labels"]

NODE_NAME = "omnibind_perception"
#: How often the monitor is evaluated (state changes are published when seen, so this bounds
#: the delay of a STALE/LOST report beyond its deadline).
MONITOR_HZ = 20.0


def _to_time(stamp_s: float) -> Time:
    ns = max(0, int(round(stamp_s * 1e9)))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def message_class(type_name: str) -> type:
    """The installed rclpy class of ``"pkg/msg/Name"`` (ImportError/AttributeError if absent)."""
    package, _, name = type_name.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def read_label_file(path: str) -> list[str]:
    """Label names of a text file: one per line, '#' starts a comment."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]


_read_label_file = read_label_file


def resolve_labels(bundle: Any, backend: Any, names: list[str] | tuple[str, ...],
                   label_file: str = "") -> tuple[tuple[str, ...], np.ndarray]:
    """The label set: ``names``, else ``label_file``'s, else the bundle's (embedded as cached)."""
    names = list(names or [])
    if not names and label_file:
        names = read_label_file(label_file)
    if not names:
        return bundle.label_names, bundle.label_embeddings
    return tuple(names), embed_labels(backend, names)


def bundle_logit_scale(bundle: Any) -> float:
    """The bundle's logit scale (multiplier of the cosines)."""
    # Bundles of format 1 carry no scale yet; 100 is CLIP's (exp of its learned 4.6052).
    labels = bundle.manifest.get("labels")
    scale = labels.get("logit_scale") if isinstance(labels, dict) else None
    return float(scale or bundle.manifest.get("logit_scale") or 100.0)


def is_freshest(store: LatestEmbeddings, sensor: str | None, fusable: list[str]) -> bool:
    """Whether ``sensor``'s stored embedding is stamped no earlier than any other fusable
    sensor's (the rule for an embedding-triggered tick; ``TickScheduler.embedding_due``)."""
    slots = store.snapshot()
    own = slots.get(sensor) if sensor is not None else None
    if own is None:
        return False
    return all(slots[n].stamp_s <= own.stamp_s for n in fusable if n in slots)


def tick_due(scheduler: TickScheduler, store: LatestEmbeddings, trigger: str, now_s: float,
             fusable: list[str], sensor: str | None = None,
             last_sensors: tuple[str, ...] | None = None) -> bool:
    """The node's rule for whether a fusion tick runs now (shared with offline evaluation).

    ``trigger``: "embedding" (``sensor``'s new embedding is stored), "change" (a fused sensor
    changed state) or "timer". ``last_sensors``: the previous tick's sensors (None before the
    first tick). A sensor *joins* when it is fusable but was not in the previous tick.
    """
    if trigger == "embedding":
        joins = (sensor is not None and sensor in fusable
                 and (last_sensors is None or sensor not in last_sensors))
        return scheduler.embedding_due(now_s, joins=joins,
                                       freshest=is_freshest(store, sensor, fusable))
    if trigger == "change":
        return scheduler.change_due(now_s)
    return scheduler.timer_due(now_s)


def build_fusion_tick(bundle: Any, backend: Any, fp: params.FusionParams,
                      label_names: tuple[str, ...], label_embeddings: np.ndarray) -> FusionTick:
    """The node's FusionTick for a bundle, backend, fusion parameters and label set (shared
    with offline bag evaluation)."""
    pad_to = bundle.fusion.max_tokens if bundle.fusion is not None else None
    return FusionTick(backend.fuse, label_names, label_embeddings, bundle_logit_scale(bundle),
                      max_age_s=fp.max_age_s, top_k=fp.top_k,
                      min_modalities=fp.min_modalities, pad_to=pad_to)


#: Backward clock steps smaller than this are reordering between threads, not a jump.
CLOCK_JUMP_TOLERANCE_S = 1.0

class _Sensor:
    """Runtime pieces of one configured sensor."""

    def __init__(self, cfg: SensorParams) -> None:
        self.cfg = cfg
        self.convert = conversion_for(cfg.modality, cfg.message_type)
        self.worker: SensorWorker | None = None
        self.subscription: Any = None
        self.group = MutuallyExclusiveCallbackGroup()


def _stop_workers(workers: list[SensorWorker | None]) -> None:
    for worker in workers:
        if worker is not None:
            worker.stop()


class PerceptionNode(LifecycleNode):
    """Multimodal recognition that keeps going while sensors come and go (see module doc).

    Parameters
    ----------
    node_name : default ``omnibind_perception``.
    **kwargs : passed to ``Node`` (``context``, ``parameter_overrides``, ``namespace``...).
    """

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        kwargs.setdefault("allow_undeclared_parameters", True)
        super().__init__(node_name, **kwargs)
        params.declare_globals(self)
        for name in self._param("sensors"):
            params.declare_sensor(self, name)
        self._lock = threading.RLock()  # sensors, fusion tick, configuration
        self._bundle: Any = None
        self._backend: Any = None
        self._monitor: AvailabilityMonitor | None = None
        self._store = LatestEmbeddings()
        self._fusion: FusionTick | None = None
        self._sensors: dict[str, _Sensor] = {}
        self._active = False
        self._pubs: dict[str, Any] = {}
        self._timers: list[Any] = []
        self._fusion_timer: Any = None
        self._scheduler = TickScheduler(10.0)  # replaced from the parameters on activate
        self._last_status_s: float | None = None
        self._last_result: FusionResult | None = None
        self._clock_resets = 0
        self._fusion_group = MutuallyExclusiveCallbackGroup()
        self._status_group = MutuallyExclusiveCallbackGroup()
        self.add_on_set_parameters_callback(self._validate_params)
        self.add_post_set_parameters_callback(self._apply_params)
        srv_group = MutuallyExclusiveCallbackGroup()
        self.create_service(AddSensor, "~/add_sensor", self._srv_add,
                            callback_group=srv_group)
        self.create_service(RemoveSensor, "~/remove_sensor", self._srv_remove,
                            callback_group=srv_group)

    # -- helpers -------------------------------------------------------------------------------

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value if self.has_parameter(name) else None

    def now_s(self) -> float:
        """Node clock (sim time aware) in s."""
        return self.get_clock().now().nanoseconds * 1e-9

    @property
    def monitor(self) -> AvailabilityMonitor | None:
        return self._monitor

    @property
    def sensor_names(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._sensors)

    # -- lifecycle -----------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as exc:  # noqa: BLE001  (any failure: one clear line, no traceback)
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        limit_blas_threads(1)  # OpenBLAS workers spin between the small matmuls (core.threads)
        limit_malloc_arenas(2)  # per-thread arenas made RSS creep (core.threads)
        path = self._param("bundle_path") or str(default_bundle_dir())
        self._bundle = load_bundle(path)
        threads = int(self._param("backend_threads"))
        opts = {"threads": threads} if threads > 0 else {}
        self._backend = create_backend(self._param("backend"), self._bundle,
                                       fallback=bool(self._param("backend_fallback")), **opts)
        self.get_logger().info(f"bundle {self._bundle.root} ({list(self._bundle.modalities)}, "
                               f"D={self._bundle.dim}), backend {self._backend.name}")
        # The monitor reads the node clock itself, inside its lock: a time read by a thread
        # that is then descheduled (seen: 2 s on a loaded 2-core CI machine) would otherwise
        # reach it after newer readings and look like the clock jumping back. A real jump back
        # (looping bag, simulator reset) is seconds; the tolerance only absorbs sim-time jitter.
        self._monitor = AvailabilityMonitor(clock_jump_tolerance_s=CLOCK_JUMP_TOLERANCE_S,
                                            clock=self.now_s)
        self._store.clear()
        self._fusion = self._build_fusion()
        for name in self._param("sensors"):
            self._add_sensor(params.read_sensor(self, name))
        self._warm_up()
        self._pubs = {
            "recognition": self.create_lifecycle_publisher(
                Recognition, "~/recognition", qos.RECOGNITION),
            "status": self.create_lifecycle_publisher(
                diagnostics.SensorStatusArray, "~/sensor_status", qos.SENSOR_STATUS),
            "diagnostics": self.create_lifecycle_publisher(
                diagnostics.DiagnosticArray, "/diagnostics", qos.DIAGNOSTICS),
        }

    def _warm_up(self) -> None:
        # The first audio features call JIT-compiles (~1.4 s): pay it here, not on the first
        # chunk of a live stream, where it would make the microphone look stalled.
        if "audio" not in self._bundle.preprocess_configs:
            return
        pipeline = make_pipeline("audio", self._bundle, self._backend)
        rate = pipeline.preprocessor.config.sample_rate
        noise = np.random.default_rng(0).normal(0, 0.05, rate // 10).astype(np.float32)
        try:
            pipeline.encode(pipeline.preprocessor(AudioBlock(noise, rate)))
        except Exception as exc:  # noqa: BLE001
            self.get_logger().warning(f"audio warm-up failed: {exc}")

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._lock:
            self._active = True
            for sensor in self._sensors.values():
                self._subscribe(sensor)
            self._timers = [
                self.create_timer(1.0 / MONITOR_HZ, self._monitor_tick,
                                  callback_group=self._status_group),
                self.create_timer(1.0 / float(self._param("graph_poll_hz")), self._poll_graph,
                                  callback_group=self._status_group),
            ]
            self._restart_fusion_timer()
        self.get_logger().info(f"activated with sensors {list(self._sensors)}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_activity()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_activity()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_activity()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_activity()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_activity(self) -> None:
        with self._lock:
            self._active = False
            for timer in [*self._timers, self._fusion_timer]:
                if timer is not None:
                    self.destroy_timer(timer)
            self._timers, self._fusion_timer = [], None
            workers = [self._unsubscribe(sensor) for sensor in self._sensors.values()]
        _stop_workers(workers)

    def _release(self) -> None:
        with self._lock:
            workers = [self._unsubscribe(sensor) for sensor in self._sensors.values()]
            self._sensors.clear()
        _stop_workers(workers)
        with self._lock:
            for pub in self._pubs.values():
                self.destroy_publisher(pub)
            self._pubs = {}
            if self._backend is not None:
                self._backend.close()
            self._backend = self._bundle = self._monitor = self._fusion = None
            self._store.clear()
            self._last_result = None

    def destroy_node(self) -> None:
        self._stop_activity()
        super().destroy_node()

    # -- sensors -------------------------------------------------------------------------------

    def _add_sensor(self, cfg: SensorParams) -> None:
        """Add a sensor to the configured node (and subscribe it when active)."""
        with self._lock:
            sensor = _Sensor(cfg)
            sensor.pipeline = make_pipeline(cfg.modality, self._bundle, self._backend)
            self._monitor.add_sensor(
                cfg.monitor_config(int(self._param("bad_samples_to_degrade"))), None)
            self._sensors[cfg.name] = sensor
            if self._active:
                self._subscribe(sensor)

    def _remove_sensor(self, name: str) -> None:
        with self._lock:
            sensor = self._sensors.pop(name, None)
            if sensor is None:
                return
            worker = self._unsubscribe(sensor)
            self._monitor.remove_sensor(name)
            self._store.remove(name)
        _stop_workers([worker])
        self._publish_status(self.now_s())

    def _subscribe(self, sensor: _Sensor) -> None:
        cfg, name = sensor.cfg, sensor.cfg.name
        monitor = self._monitor
        sensor.worker = SensorWorker(
            name, sensor.convert, sensor.pipeline,
            on_valid=lambda stamp: monitor.on_sample(name, stamp),
            on_bad=lambda reason: monitor.on_bad_sample(name, None, reason),
            on_embedding=lambda stamp, emb: self._on_embedding(cfg, stamp, emb),
            warn=self.get_logger().warning, encode_rate_hz=cfg.encode_rate_hz)
        worker = sensor.worker
        sensor.subscription = self.create_subscription(
            message_class(cfg.message_type), cfg.topic, self._callback(worker),
            cfg.qos_profile(), callback_group=sensor.group)

    def _callback(self, worker: SensorWorker) -> Callable[[Any], None]:
        def on_message(msg: Any) -> None:
            now = self.now_s()
            header = getattr(msg, "header", None)
            # String (operator text) has no header: its arrival time is its stamp.
            stamp = now if header is None else header.stamp.sec + header.stamp.nanosec * 1e-9
            worker.submit(msg, stamp, now)
        return on_message

    def _unsubscribe(self, sensor: _Sensor) -> SensorWorker | None:
        """Destroy the subscription; return the worker for the caller to stop outside the lock
        (a worker finishing an encode may need the lock for an on-embedding fusion tick)."""
        if sensor.subscription is not None:
            self.destroy_subscription(sensor.subscription)
            sensor.subscription = None
        worker, sensor.worker = sensor.worker, None
        return worker

    def _on_embedding(self, cfg: SensorParams, stamp_s: float, embedding: np.ndarray) -> None:
        if cfg.name not in self._sensors:
            return  # removed while its last message was being encoded
        self._store.put(EmbeddingSlot(cfg.name, cfg.modality, stamp_s, embedding), self.now_s())
        if self._active:
            self._fusion_tick(trigger="embedding", sensor=cfg.name)

    # -- fusion --------------------------------------------------------------------------------

    def _labels(self) -> tuple[tuple[str, ...], np.ndarray]:
        return resolve_labels(self._bundle, self._backend, self._param("labels.names") or [],
                              self._param("labels.file") or "")

    def _build_fusion(self) -> FusionTick:
        names, embeddings = self._labels()
        return build_fusion_tick(self._bundle, self._backend, params.read_fusion(self._param),
                                 names, embeddings)

    def _logit_scale(self) -> float:
        return bundle_logit_scale(self._bundle)

    def _restart_fusion_timer(self) -> None:
        if self._fusion_timer is not None:
            self.destroy_timer(self._fusion_timer)
            self._fusion_timer = None
        rate = float(self._param("fusion.rate_hz"))
        self._scheduler = TickScheduler(rate, bool(self._param("fusion.tick_on_embedding")))
        if self._active and self._scheduler.uses_timer:
            self._fusion_timer = self.create_timer(self._scheduler.timer_period_s,
                                                   self._fusion_tick,
                                                   callback_group=self._fusion_group)

    def _fusion_tick(self, trigger: str = "timer", sensor: str | None = None) -> None:
        """One fusion tick, if the scheduler says it is due (``trigger``: "timer",
        "embedding" (``sensor``: whose new embedding) or "change" (a fused sensor changed
        state))."""
        with self._lock:
            tick, monitor, scheduler = self._fusion, self._monitor, self._scheduler
            if tick is None or monitor is None:
                return
            now = self.now_s()
            fusable = monitor.fusable(None, tick.max_age_s)  # reads the clock under its lock
            last = self._last_result
            if not tick_due(scheduler, self._store, trigger, now, fusable, sensor,
                            None if last is None else last.sensors):
                return
            scheduler.ticked(now)
            try:
                result = tick.tick(self._store, fusable, now)
            except Exception as exc:  # noqa: BLE001
                self.get_logger().warning(f"fusion tick failed: {exc}",
                                          throttle_duration_sec=2.0)
                return
            monitor.set_in_fusion(result.sensors)
            self._last_result = result
        if result.no_answer_reason:
            self.get_logger().info(f"no recognition: {result.no_answer_reason}",
                                   throttle_duration_sec=5.0)
        pub = self._pubs.get("recognition")
        if pub is not None:
            pub.publish(self._recognition_msg(result))

    def _recognition_msg(self, result: FusionResult) -> Recognition:
        msg = Recognition(best_label=result.best_label, best_score=result.best_score,
                          top_labels=list(result.top_labels),
                          top_scores=list(result.top_scores), sensors=list(result.sensors),
                          modalities=list(result.modalities))
        msg.header.stamp = _to_time(result.stamp_s if result.stamp_s is not None
                                    else result.tick_s)
        msg.header.frame_id = self._param("frame_id")
        msg.per_modality = [
            ModalityPrediction(sensor=p.sensor, modality=p.modality, label=p.label,
                               score=p.score, stamp=_to_time(p.stamp_s), age=p.age_s)
            for p in result.per_modality]
        if self._param("fusion.publish_embedding") and result.embedding is not None:
            msg.embedding = result.embedding.astype(np.float32).tolist()
        return msg

    # -- status --------------------------------------------------------------------------------

    def _monitor_tick(self) -> None:
        monitor = self._monitor
        if monitor is None:
            return
        transitions = monitor.update()  # reads the clock under its lock
        now = self.now_s()
        if monitor.clock_resets != self._clock_resets:  # sim reset or looping bag
            self._clock_resets = monitor.clock_resets
            self._store.clear()
        for t in transitions:
            self.get_logger().info(f"sensor {t.name}: {t.old.name} -> {t.new.name}"
                                   + (f" ({t.reason})" if t.reason else ""))
        last = self._last_result
        if self._active and last is not None and any(t.name in last.sensors for t in transitions):
            self._fusion_tick(trigger="change")  # a fused sensor changed state: answer now
        period = 1.0 / float(self._param("status.rate_hz"))
        if transitions or self._last_status_s is None or now - self._last_status_s >= period \
                or now < self._last_status_s:
            self._publish_status(now)

    def _publish_status(self, now: float) -> None:
        monitor = self._monitor
        if monitor is None or not self._pubs:
            return
        self._last_status_s = now
        healths = monitor.health()
        stamp = _to_time(now)
        self._pubs["status"].publish(diagnostics.sensor_status_array(healths, stamp))
        result = self._last_result
        fusion = diagnostics.fusion_diag(
            self.get_name(), None if result is None else result.no_answer_reason,
            () if result is None else result.sensors)
        self._pubs["diagnostics"].publish(
            diagnostics.diagnostic_array(self.get_name(), healths, stamp, fusion))

    def _poll_graph(self) -> None:
        # Publisher counts from the graph: a driver process that died is LOST at once instead
        # of after lost_after periods of silence.
        monitor = self._monitor
        if monitor is None:
            return
        with self._lock:
            topics = {name: s.subscription.topic_name for name, s in self._sensors.items()
                      if s.subscription is not None}
        for name, topic in topics.items():
            count = self.count_publishers(topic)  # a graph query: can take a while under load
            try:
                monitor.on_publisher_count(name, count)  # reads the clock under its lock
            except KeyError:
                pass  # removed meanwhile

    # -- parameters ----------------------------------------------------------------------------

    def _validate_params(self, updates: list[Parameter]) -> SetParametersResult:
        reason = params.validate_update(updates, self._param)
        return SetParametersResult(successful=not reason, reason=reason)

    def _apply_params(self, updates: list[Parameter]) -> None:
        names = {p.name for p in updates}
        if self._monitor is None:
            return  # unconfigured: configure reads every parameter
        try:
            self._apply_sensor_params(names)
            if names & {"fusion.max_age_s", "fusion.min_modalities", "fusion.top_k",
                        "labels.names", "labels.file"}:
                fusion = self._build_fusion()
                with self._lock:
                    self._fusion = fusion
                if names & {"labels.names", "labels.file"}:
                    self.get_logger().info(f"labels now {list(fusion.label_names)}")
            if names & {"fusion.rate_hz", "fusion.tick_on_embedding"}:
                with self._lock:
                    self._restart_fusion_timer()
        except Exception as exc:  # noqa: BLE001  (validated already; report, don't crash)
            self.get_logger().error(f"applying {sorted(names)} failed: {exc}")

    def _apply_sensor_params(self, names: set[str]) -> None:
        wanted = list(self._param("sensors") or [])
        with self._lock:
            current = set(self._sensors)
        for name in current - set(wanted):
            self._remove_sensor(name)
            self.get_logger().info(f"sensor {name} removed")
        for name in wanted:
            keys = {n.split(".")[2] for n in names if n.startswith(f"sensors.{name}.")}
            if name not in current:
                self._add_sensor(params.read_sensor(self, name))
                self.get_logger().info(f"sensor {name} added")
            elif keys == {"enabled"}:
                enabled = bool(self._param(sensor_param(name, "enabled")))
                self._monitor.set_enabled(name, enabled, None, "disabled by parameter")
                self._publish_status(self.now_s())
            elif keys:  # topic, type, QoS or rates changed: rebuild the sensor
                self._remove_sensor(name)
                self._add_sensor(params.read_sensor(self, name))

    def _srv_add(self, request: AddSensor.Request, response: AddSensor.Response) -> Any:
        name = request.name
        if name in (self._param("sensors") or []):
            response.success, response.message = False, f"sensor {name!r} already exists"
            return response
        values = {"modality": request.modality, "topic": request.topic,
                  "message_type": request.message_type, "qos": request.qos_profile,
                  "expected_rate_hz": float(request.expected_rate_hz),
                  "stale_after": float(request.stale_after) or None,
                  "lost_after": float(request.lost_after) or None,
                  "encode_rate_hz": float(request.encode_rate_hz) or -1.0,
                  "enabled": not request.start_disabled}
        updates = [Parameter(sensor_param(name, k), value=v if v is not None
                             else SENSOR_KEYS[k].default) for k, v in values.items()]
        updates.append(Parameter("sensors", Parameter.Type.STRING_ARRAY,
                                 [*(self._param("sensors") or []), name]))
        return self._set(updates, response, f"sensor {name} added")

    def _srv_remove(self, request: RemoveSensor.Request,
                    response: RemoveSensor.Response) -> Any:
        names = list(self._param("sensors") or [])
        if request.name not in names:
            response.success, response.message = False, f"no sensor named {request.name!r}"
            return response
        names.remove(request.name)
        self._set([Parameter("sensors", Parameter.Type.STRING_ARRAY, names)], response,
                  f"sensor {request.name} removed")
        if response.success:
            for key in SENSOR_KEYS:
                if self.has_parameter(sensor_param(request.name, key)):
                    self.undeclare_parameter(sensor_param(request.name, key))
        return response

    def _set(self, updates: list[Parameter], response: Any, ok: str) -> Any:
        result = self.set_parameters_atomically(updates)
        response.success = bool(result.successful)
        response.message = ok if result.successful else result.reason
        return response

    # -- start-up without a lifecycle manager --------------------------------------------------

    def autostart(self) -> bool:
        """Configure and activate; return whether the node ended up active."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS
