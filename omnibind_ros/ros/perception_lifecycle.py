"""The perception LifecycleNode (imports rclpy: import it after ``ensure_safe_ros_env``).

Use :mod:`omnibind_ros.ros.perception_node` (``main`` and a lazy ``PerceptionNode``) rather than
this module directly. The node is thin glue around the engine,
:class:`~omnibind_ros.core.recognizer.Recognizer`, which owns availability, embeddings, tick
schedule and fusion: here are parameters (ros/params), QoS (ros/qos), conversion
(ros/conversions), one :class:`~omnibind_ros.core.sensor_worker.SensorWorker` per sensor,
timers, and the messages (ros/recognition, ros/diagnostics).

Lifecycle: configure loads and validates the bundle, builds the backend, the label embeddings,
the engine and one preprocessing pipeline per sensor, and creates the publishers; activate
creates subscriptions, workers and timers and lets the engine tick; deactivate destroys those;
cleanup releases the rest. A bad bundle or backend makes configure return FAILURE with one
error line (the node stays alive in ``unconfigured`` and can be configured again after the fix).
"""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter

from omnibind_ros.core.backends import create_backend
from omnibind_ros.core.bundle import default_bundle_dir, load_bundle
from omnibind_ros.core.fusion import FusionResult, FusionTick
from omnibind_ros.core.labels import resolve_labels
from omnibind_ros.core.names import PERCEPTION_NODE
from omnibind_ros.core.pipeline import Pipeline, SensorStage, StageHook, make_pipeline
from omnibind_ros.core.quality import InputQuality
from omnibind_ros.core.recognizer import (
    MONITOR_RATE_HZ,
    NODE_STALL_NS,
    Recognizer,
    build_fusion_tick,
)
from omnibind_ros.core.sensor_worker import SampleReporter, SensorWorker
from omnibind_ros.core.threads import limit_blas_threads, limit_malloc_arenas
from omnibind_ros.core.transition_log import LogLine, TransitionLog
from omnibind_ros.core.types import AudioBlock
from omnibind_ros.msg import Recognition
from omnibind_ros.ros import diagnostics, params, qos
from omnibind_ros.ros.annotated_image import AnnotatedImage
from omnibind_ros.ros.conversions import arrival_stamp_ns, conversion_for, info_topic_for
from omnibind_ros.ros.env import discovery_summary
from omnibind_ros.ros.interfaces import require_message_class
from omnibind_ros.ros.params import SENSOR_KEYS, SensorParams, sensor_param
from omnibind_ros.ros.recognition import from_time, recognition_message, to_time
from omnibind_ros.srv import AddSensor, RemoveSensor

__all__ = ["PerceptionNode"]


class _Sensor:
    """Runtime pieces of one configured sensor."""

    def __init__(self, cfg: SensorParams, pipeline: Pipeline) -> None:
        self.cfg = cfg
        self.msg_class = require_message_class(cfg.message_type, f"sensor {cfg.name}")
        self.convert = conversion_for(cfg.modality, cfg.message_type)
        self.info = info_topic_for(self.convert, cfg.topic, cfg.info_topic)
        self.info_class = None if self.info is None else require_message_class(
            self.info[1], f"sensor {cfg.name} (info topic {self.info[0]})")
        self.pipeline = pipeline
        self.worker: SensorWorker | None = None
        self.subscription: Any = None
        self.info_subscription: Any = None
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
    hook : optional stage timings (``core.pipeline.StageHook``) of the workers, pipelines and
        engine this node builds; for benchmarks.
    on_recognition : optional, called with every Recognition message as it is published, in
        the thread that ran the tick (for in-process consumers: tests, tools).
    **kwargs : passed to ``Node`` (``context``, ``parameter_overrides``, ``namespace``...).
    """

    def __init__(self, node_name: str = PERCEPTION_NODE, *, hook: StageHook | None = None,
                 on_recognition: Callable[[Recognition], None] | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("allow_undeclared_parameters", True)
        super().__init__(node_name, **kwargs)
        params.declare_globals(self)
        for name in self._param("sensors"):
            params.declare_sensor(self, name)
        self._hook = hook
        self._on_recognition = on_recognition
        self._lock = threading.RLock()  # sensors and configuration
        self._bundle: Any = None
        #: (bundle name, model family) every Recognition carries; read once at configure
        self._model: tuple[str, str] = ("", "")
        self._backend: Any = None
        self._engine: Recognizer | None = None
        self._sensors: dict[str, _Sensor] = {}
        self._active = False
        self._pubs: dict[str, Any] = {}
        self._annotated: AnnotatedImage | None = None  # ~/annotated_image
        self._timers: list[Any] = []
        self._fusion_timer: Any = None
        self._last_status_ns: int | None = None
        # sensor state changes at a bounded rate per sensor (a flapping one is summarised)
        self._state_log = TransitionLog(int(self._param("state_log.burst")),
                                        float(self._param("state_log.interval_s")))
        self._fusion_group = MutuallyExclusiveCallbackGroup()
        self._status_group = MutuallyExclusiveCallbackGroup()
        self.add_on_set_parameters_callback(self._validate_params)
        self.add_post_set_parameters_callback(self._apply_params)
        srv_group = MutuallyExclusiveCallbackGroup()
        self.create_service(AddSensor, "~/add_sensor", self._srv_add,
                            callback_group=srv_group)
        self.create_service(RemoveSensor, "~/remove_sensor", self._srv_remove,
                            callback_group=srv_group)
        self.get_logger().info(discovery_summary())

    # -- helpers -------------------------------------------------------------------------------

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value if self.has_parameter(name) else None

    def now_ns(self) -> int:
        """Node clock (sim time aware) in int nanoseconds."""
        return self.get_clock().now().nanoseconds

    @property
    def engine(self) -> Recognizer | None:
        """The recognition engine (None while unconfigured)."""
        return self._engine

    @property
    def monitor(self) -> Any:
        """The engine's availability monitor (None while unconfigured)."""
        return None if self._engine is None else self._engine.monitor

    @property
    def sensor_names(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._sensors)

    def subscribed_topics(self) -> dict[str, str]:
        """Sensor name -> resolved topic of each active subscription."""
        with self._lock:
            return {name: s.subscription.topic_name for name, s in self._sensors.items()
                    if s.subscription is not None}

    def sensor_worker(self, name: str) -> SensorWorker | None:
        """The worker of an active sensor (None while inactive)."""
        with self._lock:
            sensor = self._sensors.get(name)
            return None if sensor is None else sensor.worker

    # -- lifecycle -----------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as exc:  # noqa: BLE001  (any failure: one clear line, no traceback)
            # one line whatever the library's message holds (ROS log lines are line-oriented)
            self.get_logger().error(" ".join(
                f"configure failed: {type(exc).__name__}: {exc}".split()))
            self._release()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        limit_blas_threads(1)  # OpenBLAS workers spin between the small matmuls (core.threads)
        limit_malloc_arenas(2)  # per-thread arenas made RSS creep (core.threads)
        path = self._param("bundle_path") or str(default_bundle_dir())
        self._bundle = load_bundle(path)
        self._model = (self._bundle.name, self._bundle.family)
        threads = int(self._param("backend_threads"))
        opts = {"threads": threads} if threads > 0 else {}
        self._backend = create_backend(self._param("backend"), self._bundle,
                                       fallback=bool(self._param("backend_fallback")), **opts)
        # An archive (.tar, .tar.gz) is extracted once, keyed by its hash, into the cache.
        archive = Path(path).is_file() and Path(path).name != "bundle.yaml"
        source = f" (extracted from {path})" if archive else ""
        self.get_logger().info(f"bundle {self._bundle.name} [{self._bundle.family or '?'}] "
                               f"{self._bundle.root}{source} ({list(self._bundle.modalities)}, "
                               f"D={self._bundle.dim}), backend {self._backend.name}")
        settings = params.read_fusion(self._param)
        # The clock is read inside the engine's and the monitor's locks: a time read by a
        # thread that is then descheduled would otherwise arrive after newer readings and look
        # like the clock jumping back.
        self._engine = Recognizer(self._build_fusion(), clock=self.now_ns,
                                  rate_hz=settings.rate_hz,
                                  tick_on_embedding=settings.tick_on_embedding,
                                  on_result=self._publish_recognition,
                                  on_tick_error=self._tick_failed, hook=self._hook,
                                  stall_after_ns=NODE_STALL_NS)
        self._engine.ticking = False  # until activated
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
        self._annotated = AnnotatedImage(self, f"{self._model[0]} [{self._model[1] or '?'}]")

    def _warm_up(self) -> None:
        """Pay each sensor path's one-time costs at configure, not on its first live messages.

        The first audio features call JIT-compiles (about a second); the first point cloud
        imports SciPy's k-d tree and graph modules (about 0.4 s, holding the GIL and the import
        lock, so every other sensor's messages wait too). On a live stream either makes sensors
        look stalled for a moment.
        """
        configs = self._bundle.preprocess_configs
        rng = np.random.default_rng(0)
        if "audio" in configs:
            pipeline = make_pipeline("audio", self._bundle, self._backend)
            rate = pipeline.preprocessor.config.sample_rate
            noise = rng.normal(0, 0.05, rate // 10).astype(np.float32)
            self._warm("audio", lambda: pipeline.encode(pipeline.preprocessor(
                AudioBlock(noise, rate))))
        if "point_cloud" in configs:
            pipeline = make_pipeline("point_cloud", self._bundle, self._backend)
            cfg = pipeline.preprocessor.config
            centre = (np.asarray(cfg.roi_min) + np.asarray(cfg.roi_max)) / 2
            cube = (centre + rng.uniform(-0.15, 0.15, (400, 3))).astype(np.float32)
            self._warm("point_cloud", lambda: pipeline.encode(pipeline.preprocess(cube)))

    def _warm(self, modality: str, run: Callable[[], object]) -> None:
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - a warm-up never fails configure
            self.get_logger().warning(f"{modality} warm-up failed: {exc}")

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._lock:
            self._active = True
            self._engine.ticking = True
            for sensor in self._sensors.values():
                self._subscribe(sensor)
            self._timers = [
                self.create_timer(1.0 / MONITOR_RATE_HZ, self._monitor_tick,
                                  callback_group=self._status_group),
                self.create_timer(1.0 / float(self._param("graph_poll_hz")), self._poll_graph,
                                  callback_group=self._status_group),
            ]
            self._restart_fusion_timer()
            self._annotated.start()
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
            if self._engine is not None:
                self._engine.ticking = False
            for timer in [*self._timers, self._fusion_timer]:
                if timer is not None:
                    self.destroy_timer(timer)
            self._timers, self._fusion_timer = [], None
            if self._annotated is not None:
                self._annotated.stop()
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
            if self._annotated is not None:
                self._annotated.destroy()
                self._annotated = None
            if self._backend is not None:
                self._backend.close()
            self._backend = self._bundle = self._engine = None

    def destroy_node(self) -> None:
        self._stop_activity()
        super().destroy_node()

    # -- sensors -------------------------------------------------------------------------------

    def _add_sensor(self, cfg: SensorParams) -> None:
        """Add a sensor to the configured node (and subscribe it when active)."""
        with self._lock:
            pipeline = make_pipeline(cfg.modality, self._bundle, self._backend, self._hook)
            sensor = _Sensor(cfg, pipeline)
            monitor_cfg = cfg.monitor_config(int(self._param("bad_samples_to_degrade")))
            # Status and diagnostics name the topic as resolved (namespace, remappings), while
            # the subscription keeps the configured name: a relative one follows the namespace.
            self._engine.add_sensor(dataclasses.replace(
                monitor_cfg, topic=self.resolve_topic_name(cfg.topic)))
            self._sensors[cfg.name] = sensor
            if self._active:
                self._subscribe(sensor)

    def _remove_sensor(self, name: str) -> None:
        with self._lock:
            sensor = self._sensors.pop(name, None)
            if sensor is None:
                return
            worker = self._unsubscribe(sensor)
            self._engine.remove_sensor(name)
            self._state_log.forget(name)
        _stop_workers([worker])
        self._publish_status(self.now_ns())

    def _subscribe(self, sensor: _Sensor) -> None:
        cfg = sensor.cfg
        stage = SensorStage(sensor.convert, sensor.pipeline, cfg.encode_rate_hz)
        reporter = SampleReporter(cfg.name, self._engine, self.get_logger().warning)
        sensor.worker = SensorWorker(stage, reporter, self._hook)
        callback = self._callback(sensor.worker, sensor.convert)
        if cfg.modality == "image" and self._annotated is not None:
            callback = self._annotated.tap(cfg.name, sensor.convert, callback)
        sensor.subscription = self.create_subscription(
            sensor.msg_class, cfg.topic, callback, cfg.qos_profile(), callback_group=sensor.group)
        if sensor.info is not None:
            # Same callback group as the data: the converter is never updated mid-conversion.
            sensor.info_subscription = self.create_subscription(
                sensor.info_class, sensor.info[0], self._info_callback(sensor),
                qos.SENSOR_INFO, callback_group=sensor.group)
            self.get_logger().info(f"sensor {cfg.name}: format from {sensor.info[0]} "
                                   f"({sensor.info[1]}) when it arrives")

    def _info_callback(self, sensor: _Sensor) -> Callable[[Any], None]:
        last: list[Any] = [None]

        def on_info(msg: Any) -> None:
            try:
                fmt = sensor.convert.update_info(msg)  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001  (a bad info message never kills the node)
                self.get_logger().warning(f"sensor {sensor.cfg.name}: info message ignored: "
                                          f"{exc}", throttle_duration_sec=10.0)
                return
            if fmt != last[0]:
                last[0] = fmt
                self.get_logger().info(f"sensor {sensor.cfg.name}: {fmt}")
        return on_info

    def _callback(self, worker: SensorWorker, convert: Callable[[Any], Any]
                  ) -> Callable[[Any], None]:
        def on_message(msg: Any) -> None:
            now = self.now_ns()
            header = getattr(msg, "header", None)
            # String (operator text), AudioData have no header: stamped on arrival (audio: minus
            # the chunk's duration, conversions.arrival_stamp_ns).
            stamp = arrival_stamp_ns(convert, msg, now) if header is None else \
                from_time(header.stamp)
            worker.submit(msg, stamp, now)
        return on_message

    def _unsubscribe(self, sensor: _Sensor) -> SensorWorker | None:
        """Destroy the subscription; return the worker for the caller to stop outside the lock
        (a worker finishing an encode may be waiting for the engine's lock to tick)."""
        for sub in (sensor.subscription, sensor.info_subscription):
            if sub is not None:
                self.destroy_subscription(sub)
        sensor.subscription = sensor.info_subscription = None
        if self._annotated is not None:
            self._annotated.forget(sensor.cfg.name)
        worker, sensor.worker = sensor.worker, None
        return worker

    # -- fusion --------------------------------------------------------------------------------

    def _build_fusion(self) -> FusionTick:
        names, embeddings = resolve_labels(self._bundle, self._backend,
                                           self._param("labels.names") or [],
                                           self._param("labels.file") or "")
        return build_fusion_tick(self._bundle, self._backend, params.read_fusion(self._param),
                                 names, embeddings)

    def _restart_fusion_timer(self) -> None:
        if self._fusion_timer is not None:
            self.destroy_timer(self._fusion_timer)
            self._fusion_timer = None
        self._engine.set_schedule(float(self._param("fusion.rate_hz")),
                                  bool(self._param("fusion.tick_on_embedding")))
        period_ns = self._engine.timer_period_ns
        if self._active and period_ns > 0:
            self._fusion_timer = self.create_timer(period_ns * 1e-9, self._engine.on_fusion_timer,
                                                   callback_group=self._fusion_group)

    def _publish_recognition(self, result: FusionResult) -> None:
        if result.no_answer_reason:
            self.get_logger().info(f"no recognition: {result.no_answer_reason}",
                                   throttle_duration_sec=5.0)
        msg = recognition_message(result, self._param("frame_id"),
                                  bool(self._param("fusion.publish_embedding")),
                                  bundle=self._model[0], model_family=self._model[1])
        if self._on_recognition is not None:
            self._on_recognition(msg)
        pub = self._pubs.get("recognition")
        if pub is not None:
            pub.publish(msg)

    def _tick_failed(self, exc: Exception) -> None:
        self.get_logger().warning(f"fusion tick failed: {exc}", throttle_duration_sec=2.0)

    # -- status --------------------------------------------------------------------------------

    def _monitor_tick(self) -> None:
        engine = self._engine
        if engine is None:
            return
        update = engine.on_monitor_timer()  # a fused sensor that changed state ticks here
        now = self.now_ns()
        for t in update.transitions:
            self._log_lines(self._state_log.add(t))
        self._log_lines(self._state_log.flush(now))
        period_ns = round(1e9 / float(self._param("status.rate_hz")))
        last = self._last_status_ns
        if update.transitions or last is None or now - last >= period_ns or now < last:
            self._publish_status(now)

    def _log_lines(self, lines: list[LogLine]) -> None:
        logger = self.get_logger()
        for line in lines:
            # two call sites: rclpy refuses a second severity from the same one (ValueError)
            if line.warning:
                logger.warning(line.text)
            else:
                logger.info(line.text)

    def _publish_status(self, now: int) -> None:
        engine = self._engine
        if engine is None or not self._pubs:
            return
        self._last_status_ns = now
        healths = engine.monitor.health()
        stamp = to_time(now)
        qualities = self._input_qualities()
        self._pubs["status"].publish(diagnostics.sensor_status_array(healths, stamp, qualities))
        result = engine.last_result
        fusion = diagnostics.fusion_diag(
            self.get_name(), None if result is None else result.no_answer_reason,
            () if result is None else result.sensors, self._model_info())
        self._pubs["diagnostics"].publish(diagnostics.diagnostic_array(
            self.get_name(), healths, stamp, fusion, qualities,
            float(self._param("quality.warn_below"))))

    def _input_qualities(self) -> dict[str, InputQuality]:
        """Each subscribed sensor's current input quality (its stage's smoothed verdict)."""
        with self._lock:
            workers = {name: s.worker for name, s in self._sensors.items()}
        return {name: w.stage.input_quality.current for name, w in workers.items()
                if w is not None}

    def _model_info(self) -> dict[str, str]:
        bundle, backend = self._bundle, self._backend
        if bundle is None or backend is None:
            return {}
        return {"bundle": bundle.name, "family": bundle.family or "?",
                "backend": backend.name, "providers": ", ".join(backend.providers)}

    def _poll_graph(self) -> None:
        # Publisher counts from the graph: a driver process that died is LOST at once instead
        # of after lost_after periods of silence.
        engine = self._engine
        if engine is None:
            return
        for name, topic in self.subscribed_topics().items():
            count = self.count_publishers(topic)  # a graph query: can take a while under load
            engine.on_publisher_count(name, count)  # the monitor reads the clock in its lock

    # -- parameters ----------------------------------------------------------------------------

    def _validate_params(self, updates: list[Parameter]) -> SetParametersResult:
        reason = params.validate_update(updates, self._param)
        return SetParametersResult(successful=not reason, reason=reason)

    def _apply_params(self, updates: list[Parameter]) -> None:
        names = {p.name for p in updates}
        if names & {"state_log.burst", "state_log.interval_s"}:
            self._state_log.configure(int(self._param("state_log.burst")),
                                      float(self._param("state_log.interval_s")))
        engine = self._engine
        if engine is None:
            return  # unconfigured: configure reads every parameter
        try:
            self._apply_sensor_params(names)
            if names & {"fusion.max_age_s", "fusion.min_modalities", "fusion.top_k",
                        "fusion.unsure_below", "fusion.min_quality", "labels.names",
                        "labels.file"}:
                fusion = self._build_fusion()
                engine.set_fusion(fusion)
                if names & {"labels.names", "labels.file"}:
                    self.get_logger().info(f"labels now {list(fusion.label_names)}")
            if names & {"fusion.rate_hz", "fusion.tick_on_embedding"}:
                with self._lock:
                    self._restart_fusion_timer()
            if "annotated_image.rate_hz" in names and self._active and self._annotated:
                self._annotated.start()
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
                self._engine.set_enabled(name, enabled, "disabled by parameter")
                self._publish_status(self.now_ns())
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
