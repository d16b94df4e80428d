"""omnibind_sim_sensors: the simulated world streamed as hot-pluggable ROS 2 sensors.

Publishes every sensor of a :class:`~omnibind_ros.sim.stream.WorldStream` on its own topic at its
own rate, plus the ground truth (``/omnibind/ground_truth``, :msg:`omnibind_ros/GroundTruth`).
Each sensor can be unplugged and replugged at runtime, by parameter
(``ros2 param set /omnibind_sim_sensors sensors.camera.enabled false``) or by a scenario file
(:mod:`omnibind_ros.sim.scenario`, which sets the same parameters). An unplug destroys the
publisher, so the graph sees the sensor vanish as it would for a real driver. A sensor can also
stay plugged in and publish the world degraded the way its physics goes
(``sensors.<name>.degradation``: a kind of :mod:`omnibind_ros.sim.degrade` such as ``dark``,
``wind`` or ``rain``, at ``sensors.<name>.degradation_severity``; scenario ``degrade_on`` /
``degrade_off`` set them), like ``noise`` but a realistic failure rather than garbage.

Pacing: one timer (``tick_rate_hz``) publishes every message whose time has come. Stream time
runs at ``realtime_factor`` times the node clock (a ``/clock`` with ``use_sim_time``), and header
stamps are ``node clock at stream start + stream seconds``. Window sensors (event packets, audio
chunks) are stamped at their window's start but published when the window has passed, so no
message describes the future. When the node falls behind (rendering on a loaded machine), late
messages are dropped and counted rather than queued, with a throttled warning giving the lag.
Unplugged sensors' messages are still rendered and then discarded: the stream must be consumed
in order (the event camera and microphone are continuous signals), so a replugged sensor resumes
mid-episode exactly where it would have been.

Counters in ``stats``: ``published/<name>``, ``dropped/<name>`` (late), ``unplugged/<name>``
(discarded while unplugged), ``ground_truth``; logged at shutdown.
"""
from __future__ import annotations

import heapq
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnibind_ros.ros.env import discovery_summary, ensure_safe_ros_env

# This module is an executable's entry point (the lib/omnibind_ros launcher imports it): make the
# environment safe before rclpy is imported below, not only in main().
ensure_safe_ros_env()

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from builtin_interfaces.msg import Time  # noqa: E402
from rcl_interfaces.msg import (  # noqa: E402
    FloatingPointRange,
    ParameterDescriptor,
    ParameterType,
)
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor  # noqa: E402
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.publisher import Publisher  # noqa: E402
from std_msgs.msg import Header, String  # noqa: E402

from omnibind_ros.core.names import GROUND_TRUTH_TOPIC, SIM_SENSORS_NODE  # noqa: E402
from omnibind_ros.msg import GroundTruth  # noqa: E402
from omnibind_ros.ros import conversions as conv  # noqa: E402
from omnibind_ros.ros.executor import spin_until_shutdown  # noqa: E402
from omnibind_ros.ros.qos import qos_from_name  # noqa: E402
from omnibind_ros.sim.degrade import DEGRADATIONS  # noqa: E402
from omnibind_ros.sim.scenario import Scenario, corrupt, load_scenario  # noqa: E402
from omnibind_ros.sim.stream import (  # noqa: E402
    DEFAULT_SENSORS,
    WINDOWED,
    StreamItem,
    WorldStream,
    degrade_item,
)

__all__ = ["DEFAULT_TOPIC_SUFFIX", "SensorConfig", "SimSensorsNode",
           "build_sensor_message", "ground_truth_message", "main", "root_topic",
           "sensor_defaults", "sensor_message_class", "sensor_message_type", "sensor_qos_name",
           "stamp_from_ns"]

#: Topic of sensor <name> by default: sim/<name>/<suffix>, a relative name, so it follows the
#: node's namespace (``namespace:=robot1`` -> /robot1/sim/camera/image_raw), as the perception
#: node's default configuration does.
DEFAULT_TOPIC_SUFFIX = {"image": "image_raw", "thermal": "image_raw", "event": "events",
                        "tactile": "image_raw", "audio": "audio", "point_cloud": "points",
                        "text": "text"}
_WINDOWED = {m.value for m in WINDOWED}
#: Render no longer than this per tick, so parameter services stay responsive while catching up.
_TICK_BUDGET_S = 0.05

Builder = Callable[[Any, Time, str], Any]
#: (modality, message type) -> builder; the first type of a modality is its default. The
#: drivers' types (event_camera_msgs, audio_common_msgs) let the simulator stand in for a real
#: event camera (metavision_driver, evt3) or microphone (audio_capture, wave).
_BUILDERS: dict[tuple[str, str], Builder] = {
    ("image", "sensor_msgs/msg/Image"): lambda p, s, f: conv.numpy_to_image(p, "rgb8", s, f),
    ("thermal", "sensor_msgs/msg/Image"): conv.thermal_to_image,
    ("event", "omnibind_ros/msg/EventArray"): conv.packet_to_event_array,
    ("event", "event_camera_msgs/msg/EventPacket"): conv.packet_to_event_packet,
    ("tactile", "sensor_msgs/msg/Image"): conv.tactile_to_image,
    ("audio", "omnibind_ros/msg/AudioChunk"):
        lambda p, s, f: conv.block_to_audio_chunk(p, "S16LE", s, f),
    ("audio", "audio_common_msgs/msg/AudioDataStamped"): conv.block_to_audio_data_stamped,
    ("point_cloud", "sensor_msgs/msg/PointCloud2"): conv.xyz_to_pointcloud2,
    ("text", "std_msgs/msg/String"): lambda p, s, f: String(data=p),
}
_MODALITIES = tuple(dict.fromkeys(m for m, _ in _BUILDERS))


def root_topic(topic: str, node_name: str = SIM_SENSORS_NODE) -> str:
    """A topic name as a node in the root namespace resolves it ("sim/x" -> "/sim/x",
    "~/x" -> "/<node_name>/x"): what a bag records, since a bag has no namespace."""
    if topic.startswith("~/"):
        return f"/{node_name}/{topic[2:]}"
    return topic if topic.startswith("/") else "/" + topic


@dataclass
class SensorConfig:
    """One simulated sensor as configured (``sensors.<name>.*`` parameters).

    ``topic`` is the name resolved in the root namespace (``/sim/camera/image_raw``: what bag
    recording writes); ``configured_topic`` keeps the name as configured, which the node
    publishes on, so a relative name follows the node's namespace.
    """

    name: str
    modality: str
    topic: str
    rate_hz: float
    frame_id: str
    enabled: bool = True
    noise: bool = False
    message_type: str = ""
    degradation: str = ""  # a kind of omnibind_ros.sim.degrade; "" = clean
    degradation_severity: float = 0.8
    configured_topic: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.configured_topic = self.topic
        self.topic = root_topic(self.topic)

    @property
    def delay_s(self) -> float:
        """Publication delay after the stamp: a window sensor publishes when its window ends."""
        return 1.0 / self.rate_hz if self.modality in _WINDOWED else 0.0


def _descriptor(text: str, ptype: int, *, read_only: bool = True,
                low: float | None = None, high: float | None = None) -> ParameterDescriptor:
    desc = ParameterDescriptor(description=text, type=ptype, read_only=read_only)
    if low is not None:
        desc.floating_point_range = [FloatingPointRange(from_value=low, to_value=high, step=0.0)]
    return desc


def stamp_from_ns(ns: int) -> Time:
    """builtin_interfaces/Time of a nanosecond count."""
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


# Message building, public so that bag recording (omnibind_ros.bag.record) produces exactly the
# messages this node publishes, without a node.

def sensor_message_type(modality: str, message_type: str = "") -> str:
    """The type a simulated sensor publishes ("" = the modality's default); ValueError names
    the types it can publish."""
    types = [t for m, t in _BUILDERS if m == modality]
    if not types:
        raise ValueError(f"{modality!r} is not a simulated modality; one of "
                         f"{', '.join(_MODALITIES)}")
    chosen = conv.normalise_msg_type(message_type) if message_type else types[0]
    if chosen not in types:
        raise ValueError(f"a simulated {modality} sensor publishes {', '.join(types)}, not "
                         f"{chosen}")
    return chosen


def sensor_message_class(modality: str, message_type: str = "") -> type:
    """rclpy message class a simulated sensor of ``modality`` publishes."""
    from omnibind_ros.ros.interfaces import message_class

    return message_class(sensor_message_type(modality, message_type))


def build_sensor_message(modality: str, payload: Any, stamp: Time, frame_id: str,
                         message_type: str = "") -> Any:
    """The message for one :class:`~omnibind_ros.sim.stream.StreamItem` payload."""
    # Per message: a configured sensor's type is already canonical, so look it up directly.
    builder = _BUILDERS.get((modality, message_type))
    if builder is None:
        builder = _BUILDERS[(modality, sensor_message_type(modality, message_type))]
    return builder(payload, stamp, frame_id)


def sensor_qos_name(modality: str) -> str:
    """Named QoS profile (omnibind_ros.ros.qos) of a simulated sensor's publisher."""
    return "text" if modality == "text" else "sensor_data"


def sensor_defaults(name: str, modality: str | None = None) -> dict[str, Any]:
    """Defaults of the ``sensors.<name>.*`` parameters (modality and rate by name from
    ``DEFAULT_SENSORS``; topic and frame from the name and the modality)."""
    default_mod, rate = DEFAULT_SENSORS.get(name, ("", 10.0))
    mod = modality or default_mod
    return {"modality": mod, "topic": f"sim/{name}/{DEFAULT_TOPIC_SUFFIX.get(mod, 'data')}",
            "rate_hz": float(rate), "frame_id": f"sim_{name}", "enabled": True, "noise": False,
            "degradation": "", "degradation_severity": 0.8}


def degradation_error(modality: str, kind: str) -> str | None:
    """Why ``kind`` is not a degradation of ``modality`` ("" is none: always fine)."""
    kinds = tuple(DEGRADATIONS.get(modality, {}))
    if not kind or kind in kinds:
        return None
    return (f"{modality} has no degradation {kind!r}; its kinds: {', '.join(kinds) or 'none'} "
            "('' = clean)")


def ground_truth_message(stream: WorldStream, t_s: float, start_ns: int) -> GroundTruth:
    """Ground truth at stream time ``t_s``: the object in view, its episode and start."""
    episode = stream.episode_at(t_s)
    cls = stream.class_at(t_s)
    return GroundTruth(
        header=Header(stamp=stamp_from_ns(start_ns + round(t_s * 1e9))), label=cls.name,
        class_index=cls.index, episode=episode, shape=cls.shape.name,
        material=cls.material.name,
        episode_start=stamp_from_ns(start_ns + round(episode * stream.period * 1e9)))


def resolve_config_file(path: str) -> Path:
    """A config file given absolute, relative to the working directory, or relative to the
    package's config/ (source tree first, then share/omnibind_ros/config of AMENT_PREFIX_PATH)."""
    candidates = [Path(path).expanduser()]
    roots = [Path(__file__).resolve().parents[2] / "config"]
    roots += [Path(p) / "share" / "omnibind_ros" / "config"
              for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    candidates += [root / sub / path for root in roots for sub in ("", "scenarios")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"scenario file {path!r} not found; looked at: "
                            + ", ".join(map(str, candidates)))


class SimSensorsNode(Node):
    """Streams a simulated world on hot-pluggable sensor topics (see the module docstring)."""

    def __init__(self, node_name: str = SIM_SENSORS_NODE, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.get_logger().info(discovery_summary())
        self._declare_parameters()
        self.sensors = self._read_sensors()
        self.seed = int(self._param("seed"))
        self.period_s = float(self._param("object_period_s"))
        self.stream = WorldStream(
            seed=self.seed, object_period_s=self.period_s,
            sensor_rates={s.name: (s.modality, s.rate_hz) for s in self.sensors.values()})
        self.scenario = self._load_scenario(str(self._param("scenario_file")))
        self.stats: Counter[str] = Counter()  # "published/<name>", "dropped/<name>", ...
        self._sensor_pubs: dict[str, Publisher] = {}
        self._noise_rng = np.random.default_rng([self.seed, 4242])
        self._degrade_rngs = {name: np.random.default_rng([self.seed, 4243, i])
                              for i, name in enumerate(self.sensors)}
        self._gt_pub: Publisher | None = None
        self._gt_episode = -1
        self._gt_last = -math.inf
        self._start_ns: int | None = None  # node clock at stream time 0
        self._anchor: tuple[int, float] | None = None  # (node clock ns, stream s) at last rtf
        self._lookahead: StreamItem | None = None
        self._pending: list[tuple[float, int, StreamItem]] = []  # (due stream s, seq, item)
        self._seq = 0
        self._last_drop_warning = -math.inf
        self.stream_time_s = 0.0
        for sensor in self.sensors.values():
            if sensor.enabled:
                self._plug(sensor)
        self._set_ground_truth(bool(self._param("publish_ground_truth")))
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        self._timer = self.create_timer(1.0 / float(self._param("tick_rate_hz")), self._tick)
        self.get_logger().info(
            f"streaming {len(self.sensors)} sensors ({', '.join(self.sensors)}), object every "
            f"{self.period_s} s, realtime factor {self._param('realtime_factor')}"
            + (f", scenario with {len(self.scenario.events)} events" if self.scenario else ""))

    # ------------------------------------------------------------------ parameters
    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _declare_parameters(self) -> None:
        d, p = _descriptor, ParameterType
        self.declare_parameter("seed", 0, d("Seed of the simulated world (reproducible stream).",
                                            p.PARAMETER_INTEGER))
        self.declare_parameter("object_period_s", 4.0, d(
            "Seconds of stream time each object stays before the next one (a different class).",
            p.PARAMETER_DOUBLE, low=0.1, high=3600.0))
        self.declare_parameter("realtime_factor", 1.0, d(
            "Stream seconds per node-clock second: 1 = real time; >1 runs faster (benchmarks, "
            "bag recording), as far as rendering keeps up.", p.PARAMETER_DOUBLE,
            read_only=False, low=0.01, high=100.0))
        self.declare_parameter("tick_rate_hz", 200.0, d(
            "Rate of the pacing timer; bounds the publication jitter (1 / rate).",
            p.PARAMETER_DOUBLE, low=1.0, high=2000.0))
        self.declare_parameter("max_lag_s", 0.5, d(
            "A message more than this late (node-clock seconds) is dropped, not published.",
            p.PARAMETER_DOUBLE, read_only=False, low=0.0, high=60.0))
        self.declare_parameter("scenario_file", "", d(
            "YAML timeline of unplug/replug/noise_on/noise_off/degrade_on/degrade_off events "
            "(omnibind_ros/sim/scenario.py); a path, or a name under config/scenarios. Empty: "
            "none.",
            p.PARAMETER_STRING))
        self.declare_parameter("publish_ground_truth", True, d(
            f"Publish {GROUND_TRUTH_TOPIC} (at each object change and at ground_truth_rate_hz).",
            p.PARAMETER_BOOL, read_only=False))
        self.declare_parameter("ground_truth_rate_hz", 2.0, d(
            "Republication rate of the ground truth between object changes.",
            p.PARAMETER_DOUBLE, low=0.01, high=100.0))
        self.declare_parameter("sensors", list(DEFAULT_SENSORS), d(
            "Names of the simulated sensors; each has sensors.<name>.* parameters.",
            p.PARAMETER_STRING_ARRAY))

    def _declare_sensor(self, name: str) -> SensorConfig:
        d, p = _descriptor, ParameterType
        defaults = sensor_defaults(name)
        prefix = f"sensors.{name}."
        mod = self.declare_parameter(prefix + "modality", defaults["modality"], d(
            "Modality: image, thermal, event, tactile, audio, point_cloud or text.",
            p.PARAMETER_STRING)).value
        if mod not in _MODALITIES:
            raise ValueError(f"sensor {name!r}: {prefix}modality must be one of "
                             f"{', '.join(_MODALITIES)}, got {mod!r}")
        defaults = sensor_defaults(name, mod)
        topic = self.declare_parameter(
            prefix + "topic", defaults["topic"],
            d("Topic the sensor publishes on; a relative name (sim/camera/image_raw) follows the "
              "node's namespace.", p.PARAMETER_STRING))
        rate_hz = self.declare_parameter(prefix + "rate_hz", defaults["rate_hz"], d(
            "Messages per second (window sensors: one window per message).",
            p.PARAMETER_DOUBLE, low=0.01, high=1000.0))
        frame = self.declare_parameter(prefix + "frame_id", defaults["frame_id"], d(
            "header.frame_id of the sensor's messages.", p.PARAMETER_STRING))
        enabled = self.declare_parameter(prefix + "enabled", True, d(
            "Plugged in: false destroys the publisher (an unplug), true recreates it.",
            p.PARAMETER_BOOL, read_only=False))
        noise = self.declare_parameter(prefix + "noise", False, d(
            "Publish noise of the right type and shape instead of the world (a faulty sensor).",
            p.PARAMETER_BOOL, read_only=False))
        kind = self.declare_parameter(prefix + "degradation", "", d(
            "Publish the world degraded by this kind (omnibind_ros/sim/degrade: e.g. dark, "
            "glare, wind, rain); '' = clean.", p.PARAMETER_STRING, read_only=False)).value
        if error := degradation_error(mod, kind):
            raise ValueError(f"sensor {name!r}: {prefix}degradation: {error}")
        severity = self.declare_parameter(prefix + "degradation_severity", 0.8, d(
            "Severity of the degradation, 0 (none) to 1 (worst).", p.PARAMETER_DOUBLE,
            read_only=False, low=0.0, high=1.0)).value
        msg_type = self.declare_parameter(prefix + "message_type", "", d(
            "Message type to publish; '' = the package's own. Drivers' types: "
            "event_camera_msgs/msg/EventPacket (evt3) for events, "
            "audio_common_msgs/msg/AudioDataStamped (S16LE) for audio.", p.PARAMETER_STRING))
        try:
            message_type = sensor_message_type(mod, msg_type.value)
        except ValueError as exc:
            raise ValueError(f"sensor {name!r}: {prefix}message_type: {exc}") from None
        return SensorConfig(name, mod, topic.value, float(rate_hz.value), frame.value,
                            bool(enabled.value), bool(noise.value), message_type, kind,
                            float(severity))

    def _read_sensors(self) -> dict[str, SensorConfig]:
        names = [str(n) for n in self._param("sensors")]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"parameter 'sensors' must hold unique, non-empty names: {names}")
        return {name: self._declare_sensor(name) for name in names}

    def _load_scenario(self, path: str) -> Scenario | None:
        if not path:
            return None
        return load_scenario(resolve_config_file(path),
                             known_sensors={n: s.modality for n, s in self.sensors.items()})

    def _validate_parameters(self, params: list[Parameter]) -> Any:
        """Refuse a degradation kind the sensor's modality does not have."""
        from rcl_interfaces.msg import SetParametersResult

        for param in params:
            parts = param.name.split(".")
            if len(parts) == 3 and parts[0] == "sensors" and parts[1] in self.sensors \
                    and parts[2] == "degradation":
                error = degradation_error(self.sensors[parts[1]].modality, str(param.value))
                if error:
                    return SetParametersResult(successful=False,
                                               reason=f"{param.name}: {error}")
        return SetParametersResult(successful=True)

    def _on_parameters_set(self, params: list[Parameter]) -> None:
        """Apply runtime changes (validated by the descriptors before they got here)."""
        for param in params:
            parts = param.name.split(".")
            if len(parts) == 3 and parts[0] == "sensors" and parts[1] in self.sensors:
                self._apply_sensor(self.sensors[parts[1]], parts[2], param.value)
            elif param.name == "publish_ground_truth":
                self._set_ground_truth(bool(param.value))
            elif param.name == "realtime_factor":
                self._reanchor()

    def _apply_sensor(self, sensor: SensorConfig, key: str, value: Any) -> None:
        if key == "enabled" and value != sensor.enabled:
            sensor.enabled = bool(value)
            (self._plug if value else self._unplug)(sensor)
        elif key == "noise" and value != sensor.noise:
            sensor.noise = bool(value)
            self.get_logger().info(f"sensor {sensor.name}: noise {'on' if value else 'off'}")
        elif key == "degradation" and value != sensor.degradation:
            sensor.degradation = str(value)
            self.get_logger().info(
                f"sensor {sensor.name}: degraded by {value} at severity "
                f"{sensor.degradation_severity:.2f}" if value else
                f"sensor {sensor.name}: degradation off")
        elif key == "degradation_severity":
            sensor.degradation_severity = float(value)

    # ------------------------------------------------------------------ plugging
    def _plug(self, sensor: SensorConfig) -> None:
        msg_type = sensor_message_class(sensor.modality, sensor.message_type)
        qos = qos_from_name(sensor_qos_name(sensor.modality))
        pub = self.create_publisher(msg_type, sensor.configured_topic, qos)
        self._sensor_pubs[sensor.name] = pub
        self.get_logger().info(f"sensor {sensor.name} plugged in on {pub.topic_name}")

    def _unplug(self, sensor: SensorConfig) -> None:
        pub = self._sensor_pubs.pop(sensor.name, None)
        if pub is not None:
            self.destroy_publisher(pub)
        self.get_logger().info(f"sensor {sensor.name} unplugged from {self.topic_of(sensor.name)}")

    def topic_of(self, name: str) -> str:
        """The fully qualified topic sensor ``name`` publishes on (namespace included)."""
        sensor = self.sensors[name]
        return self.resolve_topic_name(sensor.configured_topic)

    def _set_ground_truth(self, on: bool) -> None:
        if on and self._gt_pub is None:
            self._gt_pub = self.create_publisher(GroundTruth, GROUND_TRUTH_TOPIC,
                                                 qos_from_name("sensor_status"))
            self._gt_episode = -1  # publish the current object right away
        elif not on and self._gt_pub is not None:
            self.destroy_publisher(self._gt_pub)
            self._gt_pub = None

    # ------------------------------------------------------------------ pacing
    def _reanchor(self) -> None:
        if self._start_ns is not None:
            self._anchor = (self.get_clock().now().nanoseconds, self.stream_time_s)

    def _stream_time(self, now_ns: int) -> float:
        anchor_ns, anchor_s = self._anchor  # type: ignore[misc]
        return anchor_s + (now_ns - anchor_ns) * 1e-9 * float(self._param("realtime_factor"))

    def _tick(self) -> None:
        now_ns = self.get_clock().now().nanoseconds
        if self._start_ns is None:
            if now_ns == 0:
                return  # use_sim_time and no /clock yet
            self._start_ns, self._anchor = now_ns, (now_ns, 0.0)
        target = max(self._stream_time(now_ns), self.stream_time_s)
        self.stream_time_s = target
        if self.scenario is not None:
            self._run_scenario(target)
        try:
            self._publish_ground_truth(target)
            self._publish_due(target, time.monotonic() + _TICK_BUDGET_S)
        except _rclpy.RCLError:
            if self.context.ok():
                raise
            # Ctrl-C shut the context down while this callback was publishing: just stop.

    def _run_scenario(self, t: float) -> None:
        updates = []
        modalities = {n: s.modality for n, s in self.sensors.items()}
        for when, event in self.scenario.events_until(t):  # type: ignore[union-attr]
            names = event.targets(modalities)
            detail = f" {event.kind} {event.severity:.2f}" if event.kind else ""
            self.get_logger().info(
                f"scenario t={when:.1f} s: {event.action}{detail} {', '.join(names)}")
            for name in names:
                updates += [Parameter(f"sensors.{name}.{key}", value=value)
                            for key, value in _scenario_settings(event)]
        if updates:
            self.set_parameters(updates)  # same path as `ros2 param set`: state stays visible

    def _publish_due(self, target: float, deadline: float) -> None:
        """Render messages stamped up to ``target`` and publish those whose time has come."""
        max_lag = float(self._param("max_lag_s")) * float(self._param("realtime_factor"))
        while True:
            if self._lookahead is None:
                stamp, name = self.stream.peek()
                if target - (stamp + self.sensors[name].delay_s) > max_lag:
                    # Too late to publish: skip it unrendered, so a stall (a loaded machine,
                    # a debugger) is caught up at once instead of rendering what gets dropped.
                    self.stream.skip()
                    self._count_dropped(name, target - stamp)
                    continue
                if stamp <= target and name not in self._sensor_pubs:  # unplugged
                    self.stream.skip()
                    self.stats[f"unplugged/{name}"] += 1
                    continue
                # Renders, up to one item ahead of its time: a frame is ready when its stamp
                # comes, so rendering does not add to the stamp-to-publish delay.
                self._lookahead = self.stream.next()
            item = self._lookahead
            if item.stamp_s > target:
                break
            self._lookahead = None
            due = item.stamp_s + self.sensors[item.sensor].delay_s
            heapq.heappush(self._pending, (due, self._seq, item))
            self._seq += 1
            if time.monotonic() > deadline:
                break  # render budget spent: let the executor breathe, continue next tick
        while self._pending and self._pending[0][0] <= target:
            due, _, item = heapq.heappop(self._pending)
            self._emit(item, (target - due) / float(self._param("realtime_factor")))

    def _emit(self, item: StreamItem, lag_s: float) -> None:
        sensor = self.sensors[item.sensor]
        pub = self._sensor_pubs.get(item.sensor)
        if pub is None:
            self.stats[f"unplugged/{item.sensor}"] += 1
            return
        if lag_s > float(self._param("max_lag_s")):
            self._count_dropped(item.sensor, lag_s)
            return
        payload = item.payload
        if sensor.noise:
            payload = corrupt(item.modality, payload, self._noise_rng)
        elif sensor.degradation:
            payload = degrade_item(item, sensor.degradation, sensor.degradation_severity,
                                   self._degrade_rngs[item.sensor], sensor.rate_hz)
        stamp = stamp_from_ns(self._start_ns + round(item.stamp_s * 1e9))  # type: ignore[operator]
        pub.publish(build_sensor_message(item.modality, payload, stamp, sensor.frame_id,
                                         sensor.message_type))
        self.stats[f"published/{item.sensor}"] += 1

    def _count_dropped(self, sensor: str, lag_s: float) -> None:
        self.stats[f"dropped/{sensor}"] += 1
        # Throttled here, not with throttle_duration_sec: rclpy resolves the caller's frame
        # (realpath) on every call, even throttled ones, which costs CPU exactly when the
        # node is already behind.
        now = time.monotonic()
        if now - self._last_drop_warning >= 5.0:
            self._last_drop_warning = now
            dropped = sum(v for k, v in self.stats.items() if k.startswith("dropped/"))
            self.get_logger().warning(
                f"falling behind: {sensor} message {lag_s:.2f} s late, dropped "
                f"({dropped} so far)")

    def _publish_ground_truth(self, t: float) -> None:
        if self._gt_pub is None:
            return
        episode = self.stream.episode_at(t)
        every = float(self._param("realtime_factor")) / float(self._param("ground_truth_rate_hz"))
        if episode == self._gt_episode and t - self._gt_last < every:
            return
        self._gt_pub.publish(ground_truth_message(self.stream, t, self._start_ns or 0))
        self._gt_episode, self._gt_last = episode, t
        self.stats["ground_truth"] += 1


def _scenario_settings(event: Any) -> list[tuple[str, Any]]:
    """The ``sensors.<name>.*`` parameter values a scenario event sets."""
    if event.action == "degrade_on":
        # Severity first: the kind's change logs it.
        return [("degradation_severity", float(event.severity)), ("degradation", event.kind)]
    return [{"unplug": ("enabled", False), "replug": ("enabled", True),
             "noise_on": ("noise", True), "noise_off": ("noise", False),
             "degrade_off": ("degradation", "")}[event.action]]


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run omnibind_ros omnibind_sim_sensors`` / ``omnibind-sim-sensors``."""
    ensure_safe_ros_env()  # already done at import; kept so the contract is visible here
    try:
        with rclpy.init(args=args):
            # The executor exists before the node starts streaming: a SIGINT that lands while
            # rclpy.spin() would still be building one interrupted its __init__, and its
            # __del__ then printed a traceback at shutdown.
            executor = SingleThreadedExecutor()
            node = SimSensorsNode()
            executor.add_node(node)
            try:
                spin_until_shutdown(executor)
            finally:
                node.get_logger().info(f"stream stats: {dict(node.stats)}")
                node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
