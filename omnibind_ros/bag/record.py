"""Recording bags: the simulated sensors without a ROS graph, or live topics of a robot.

:func:`record_sim` (``omnibind-bag record-sim``) renders the simulated world with
:class:`~omnibind_ros.sim.stream.WorldStream` and writes what ``omnibind_sim_sensors`` would
publish, message for message: the same message builders
(:func:`~omnibind_ros.ros.sim_sensors_node.build_sensor_message`), serialized with rclpy, so the
CDR bytes are those on the wire, except for the alignment padding: rmw leaves padding bytes
uninitialised (they differ from run to run, on the wire too), so each message is re-encoded by
rosbags, which zeroes them; the content is unchanged and the bag becomes byte-reproducible.
Why not record the node: recording through DDS drops messages
when rendering falls behind real time, and timing would depend on the machine; here the bag is
a pure function of its arguments (seed, sensors, scenario, duration) and renders as fast as the
CPU allows.

Conventions of a record-sim bag (the evaluator relies on them):

* stream time 0 is :data:`SIM_EPOCH_NS` (2023-11-14), so two recordings are identical;
* header stamps are the epoch plus the stream time of the sample; the log time is the stamp plus
  the sensor's publication delay (window sensors publish when their window has passed, as the
  node does);
* scenario events apply at log time: an unplugged sensor has no message logged between its
  unplug and its replug; a noisy one logs ``corrupt(...)`` payloads (the node's noise, seeded
  ``[seed, 4242]``); a degraded one (``degrade_on`` or ``sensors.<name>.degradation``) logs
  the world degraded by its kind and severity (seeded ``[seed, 4243, sensor index]``);
* ``/omnibind/ground_truth`` carries ``omnibind_ros/GroundTruth`` at every object change and at
  ``ground_truth_rate_hz`` between changes;
* ``/omnibind/scenario_event`` carries each scenario event as ``std_msgs/String`` JSON
  ``{"t_s": 12.0, "action": "unplug", "sensors": ["camera"]}`` (``all`` expanded to the recorded
  sensors), logged at the event's time; a ``degrade_on`` adds ``"kind"`` and ``"severity"``
  (``{"t_s": 8.0, "action": "degrade_on", "sensors": ["camera"], "kind": "dark",
  "severity": 0.9}``): the ground truth of a degraded phase;
* ``metadata.yaml``'s ``custom_data`` holds ``omnibind.record_sim``: the arguments as JSON.

:func:`record_live` (``omnibind-bag record``) subscribes (raw, no deserialization) to every
sensor topic of a perception configuration plus the ground truth, and writes what arrives, with
the receive time as log time, as ``ros2 bag record`` would.
"""
from __future__ import annotations

import bisect
import heapq
import importlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from omnibind_ros.bag.reader import BagInfo, open_info
from omnibind_ros.core.names import GROUND_TRUTH_TOPIC, SCENARIO_EVENT_TOPIC, SIM_SENSORS_NODE

__all__ = ["RecordError", "SIM_EPOCH_NS", "SimEvent", "SimPlan", "plan_sim",
           "record_live", "record_sim"]

#: Stream time 0 of every record-sim bag (a fixed epoch makes recordings reproducible).
SIM_EPOCH_NS = 1_700_000_000 * 1_000_000_000
STORAGES = ("mcap", "sqlite3")


class RecordError(RuntimeError):
    """A recording cannot be made; the message says why and what to change."""


# ---------------------------------------------------------------------------------------------
# Simulated sensors


@dataclass(frozen=True)
class _Change:
    t_s: float
    on: Any  # the state from t_s on: bool (plugged, noisy) or (kind, severity) | None


class SimEvent(NamedTuple):
    """A scenario event of a recording: time, action, the recorded sensors it applies to,
    and for ``degrade_on`` the degradation's kind and severity."""

    t_s: float
    action: str
    sensors: tuple[str, ...]
    kind: str | None = None
    severity: float | None = None

    def to_json(self) -> str:
        data: dict[str, Any] = {"t_s": self.t_s, "action": self.action,
                                "sensors": list(self.sensors)}
        if self.kind is not None:
            data.update(kind=self.kind, severity=self.severity)
        return json.dumps(data)


@dataclass
class SimPlan:
    """Everything a record-sim run is a function of, resolved from files and arguments."""

    sensors: list[Any]  # ros.sim_sensors_node.SensorConfig, in configuration order
    seed: int
    object_period_s: float
    duration_s: float
    ground_truth_rate_hz: float  # 0 = no ground truth
    events: list[SimEvent]  # t < duration
    params_file: Path
    scenario_file: Path | None

    def _changes(self, action_on: str, action_off: str, initial: Callable[[Any], Any],
                 value: Callable[[SimEvent], Any] = lambda e: True,
                 off: Any = False) -> dict[str, list[_Change]]:
        out = {s.name: [_Change(-math.inf, initial(s))] for s in self.sensors}
        for event in self.events:
            if event.action in (action_on, action_off):
                for name in event.sensors:
                    out[name].append(_Change(event.t_s, value(event)
                                             if event.action == action_on else off))
        return out

    def timelines(self) -> tuple[_Timeline, _Timeline, _Timeline]:
        """(plugged-in, noisy, degradation) state of every sensor as a function of stream
        time; a degradation is (kind, severity) or None."""
        return (_Timeline(self._changes("replug", "unplug", lambda s: s.enabled)),
                _Timeline(self._changes("noise_on", "noise_off", lambda s: s.noise)),
                _Timeline(self._changes(
                    "degrade_on", "degrade_off",
                    lambda s: (s.degradation, s.degradation_severity) if s.degradation else None,
                    lambda e: (e.kind, e.severity), None)))

    def to_json(self) -> str:
        return json.dumps({
            "seed": self.seed, "object_period_s": self.object_period_s,
            "duration_s": self.duration_s, "epoch_ns": SIM_EPOCH_NS,
            "sensors": [s.name for s in self.sensors],
            "params_file": self.params_file.name,
            "scenario_file": self.scenario_file.name if self.scenario_file else None},
            sort_keys=True)


class _Timeline:
    """Per-sensor state over time; events at one time apply in order (last wins)."""

    def __init__(self, changes: Mapping[str, list[_Change]]) -> None:
        self._times = {n: [c.t_s for c in cs] for n, cs in changes.items()}
        self._values = {n: [c.on for c in cs] for n, cs in changes.items()}

    def at(self, name: str, t_s: float) -> Any:
        k = bisect.bisect_right(self._times[name], t_s) - 1
        return self._values[name][k]


def _sim_params(path: Path) -> dict[str, Any]:
    from omnibind_ros.bag.config import read_params_file

    return read_params_file(path, SIM_SENSORS_NODE, what="simulator parameter file",
                            error=RecordError)


def _sensor_configs(params: Mapping[str, Any], source: Path,
                    only: Sequence[str] | None) -> list[Any]:
    from omnibind_ros.ros.sim_sensors_node import (
        SensorConfig,
        degradation_error,
        sensor_defaults,
        sensor_message_type,
    )
    from omnibind_ros.sim.stream import DEFAULT_SENSORS

    names = [str(n) for n in params.get("sensors", list(DEFAULT_SENSORS))]
    if only is not None:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise RecordError(f"sensors {unknown} are not configured in {source} "
                              f"(configured: {', '.join(names)})")
        names = [n for n in names if n in set(only)]
    if not names:
        raise RecordError("no sensors to record")
    out = []
    for name in names:
        prefix = f"sensors.{name}."
        values = sensor_defaults(name, params.get(prefix + "modality"))
        values.update({k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)})
        try:
            message_type = sensor_message_type(str(values["modality"]),
                                               str(values.get("message_type") or ""))
        except ValueError as exc:
            raise RecordError(f"{source}: sensor {name}: {exc}") from None
        rate = float(values["rate_hz"])
        if not rate > 0:
            raise RecordError(f"{source}: {prefix}rate_hz must be > 0, got {rate}")
        kind = str(values.get("degradation") or "")
        if error := degradation_error(str(values["modality"]), kind):
            raise RecordError(f"{source}: {prefix}degradation: {error}")
        out.append(SensorConfig(name, str(values["modality"]), str(values["topic"]), rate,
                                str(values["frame_id"]), bool(values["enabled"]),
                                bool(values["noise"]), message_type, kind,
                                float(values.get("degradation_severity", 0.8))))
    return out


def plan_sim(*, duration_s: float, scenario: str | Path | None = None, seed: int | None = None,
             sim_params_file: str | Path | None = None, object_period_s: float | None = None,
             sensors: Sequence[str] | None = None) -> SimPlan:
    """Resolve a record-sim run: sensors, rates, topics, seed and scenario events.

    ``None`` arguments take the simulator parameter file's values (``seed``,
    ``object_period_s``, ``scenario_file``), as the node would. ``sensors`` records a subset.

    Raises
    ------
    FileNotFoundError : the parameter or scenario file does not exist.
    RecordError / ScenarioError : invalid values (the message names the file and key).
    """
    from omnibind_ros.core.paths import config_file
    from omnibind_ros.ros.sim_sensors_node import resolve_config_file, sensor_defaults
    from omnibind_ros.sim.scenario import load_scenario

    if not duration_s > 0 or not math.isfinite(duration_s):
        raise RecordError(f"duration must be a positive number of seconds, got {duration_s}")
    params_file = (Path(sim_params_file).expanduser() if sim_params_file is not None
                   else config_file("sim_sensors.yaml"))
    params = _sim_params(params_file)
    from omnibind_ros.sim.stream import DEFAULT_SENSORS

    configured = [str(n) for n in params.get("sensors", list(DEFAULT_SENSORS))]
    sensor_cfgs = _sensor_configs(params, params_file, sensors)
    period = float(object_period_s if object_period_s is not None
                   else params.get("object_period_s", 4.0))
    if not period > 0:
        raise RecordError(f"object period must be > 0 s, got {period}")
    scenario_name = scenario if scenario is not None else params.get("scenario_file", "")
    scenario_file = None
    events: list[SimEvent] = []
    recorded = [s.name for s in sensor_cfgs]
    if scenario_name:
        name = str(scenario_name)
        if not Path(name).suffix and not Path(name).expanduser().exists():
            name += ".yaml"  # `--scenario hotplug_demo`
        scenario_file = resolve_config_file(name)
        modalities = {str(n): str(params.get(f"sensors.{n}.modality")
                                  or sensor_defaults(str(n))["modality"]) for n in configured}
        timeline = load_scenario(scenario_file, known_sensors=modalities)
        for t, event in timeline.events_until(duration_s):
            if t >= duration_s:
                continue
            names = [n for n in event.targets(modalities) if n in recorded]
            if names:
                events.append(SimEvent(float(t), event.action, tuple(names), event.kind,
                                       event.severity))
    gt_on = bool(params.get("publish_ground_truth", True))
    return SimPlan(sensors=sensor_cfgs, seed=int(seed if seed is not None
                                                 else params.get("seed", 0)),
                   object_period_s=period, duration_s=float(duration_s),
                   ground_truth_rate_hz=float(params.get("ground_truth_rate_hz", 2.0))
                   if gt_on else 0.0,
                   events=events, params_file=params_file, scenario_file=scenario_file)


def _bag_qos(profile: Any) -> Any:
    """rosbags Qos of an rclpy QoSProfile (what ros2 bag stores as offered_qos_profiles)."""
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    def duration(d: Any) -> Any:
        ns = int(d.nanoseconds)
        return QosTime(ns // 1_000_000_000, ns % 1_000_000_000)

    return Qos(history=QosHistory(int(profile.history)), depth=int(profile.depth),
               reliability=QosReliability(int(profile.reliability)),
               durability=QosDurability(int(profile.durability)),
               deadline=duration(profile.deadline), lifespan=duration(profile.lifespan),
               liveliness=QosLiveliness(int(profile.liveliness)),
               liveliness_lease_duration=duration(profile.liveliness_lease_duration),
               avoid_ros_namespace_conventions=bool(profile.avoid_ros_namespace_conventions))


def _storage_plugin(storage: str) -> Any:
    from rosbags.rosbag2 import StoragePlugin

    if storage not in STORAGES:
        raise RecordError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    return StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3


def _check_out(out: Path) -> None:
    if out.exists():
        raise FileExistsError(f"{out} exists already; a bag is a new directory (choose another "
                              "name or remove it)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"directory {out.parent} does not exist")


class _BagSink:
    """rosbags Writer plus connections keyed by (topic, msgtype)."""

    def __init__(self, writer: Any) -> None:
        from omnibind_ros.bag.types import typestore

        self.writer = writer
        self.store = typestore()
        self.conns: dict[tuple[str, str], Any] = {}
        self.counts: dict[str, int] = {}

    def connect(self, topic: str, msgtype: str, qos: Any) -> tuple[str, str]:
        key = (topic, msgtype)
        if key not in self.conns:
            if msgtype not in self.store.types:
                raise RecordError(f"topic {topic}: message type {msgtype} is unknown to the "
                                  "bag type store (ROS 2 Kilted's standard types and "
                                  "omnibind_ros/msg)")
            self.conns[key] = self.writer.add_connection(
                topic, msgtype, typestore=self.store, offered_qos_profiles=[_bag_qos(qos)])
            self.counts[topic] = 0
        return key

    def write(self, key: tuple[str, str], log_ns: int, data: bytes) -> None:
        self.writer.write(self.conns[key], log_ns, data)
        self.counts[key[0]] += 1

    def canonical(self, key: tuple[str, str], data: bytes) -> bytes:
        """``data`` with zeroed alignment padding (rmw leaves it uninitialised)."""
        msgtype = key[1]
        return bytes(self.store.serialize_cdr(self.store.deserialize_cdr(data, msgtype),
                                              msgtype))


def record_sim(out: str | Path, *, duration_s: float, scenario: str | Path | None = None,
               seed: int | None = None, storage: str = "mcap",
               sim_params_file: str | Path | None = None,
               object_period_s: float | None = None, sensors: Sequence[str] | None = None,
               progress: bool = True) -> BagInfo:
    """Record the simulated sensors into a new bag ``out`` (conventions: module docstring).

    Parameters
    ----------
    out : the bag directory to create (must not exist).
    duration_s : stream seconds to record; messages logged in [0, duration_s) are kept.
    scenario : scenario name (``hotplug_demo``), file name or path; None = the parameter
        file's ``scenario_file``; "" = none.
    seed : world seed; None = the parameter file's.
    storage : "mcap" or "sqlite3".
    sim_params_file : ``omnibind_sim_sensors`` parameters (default: config/sim_sensors.yaml).
    object_period_s : seconds per object; None = the parameter file's.
    sensors : record only these configured sensors (default: all).
    progress : tqdm bar over stream seconds on stderr.

    Returns
    -------
    BagInfo of the written bag.
    """
    from rosbags.rosbag2 import Writer

    out = Path(out).expanduser()
    plugin = _storage_plugin(storage)
    plan = plan_sim(duration_s=duration_s, scenario=scenario, seed=seed,
                    sim_params_file=sim_params_file, object_period_s=object_period_s,
                    sensors=sensors)
    _check_out(out)
    with Writer(out, version=9, storage_plugin=plugin) as writer:
        writer.set_custom_data("omnibind.record_sim", plan.to_json())
        _write_sim(_BagSink(writer), plan, progress)
    return open_info(out)


def _write_sim(sink: _BagSink, plan: SimPlan, progress: bool) -> None:
    import numpy as np
    from rclpy.serialization import serialize_message
    from std_msgs.msg import String

    from omnibind_ros.bag.types import msgtype_of
    from omnibind_ros.msg import GroundTruth
    from omnibind_ros.ros.qos import qos_from_name
    from omnibind_ros.ros.sim_sensors_node import (
        build_sensor_message,
        ground_truth_message,
        sensor_qos_name,
        stamp_from_ns,
    )
    from omnibind_ros.sim.scenario import corrupt
    from omnibind_ros.sim.stream import WorldStream, degrade_item

    sensors = {s.name: s for s in plan.sensors}
    keys = {s.name: sink.connect(s.topic, s.message_type,
                                 qos_from_name(sensor_qos_name(s.modality)))
            for s in plan.sensors}
    stream = WorldStream(seed=plan.seed, object_period_s=plan.object_period_s,
                         sensor_rates={s.name: (s.modality, s.rate_hz) for s in plan.sensors})
    plugged, noisy, degraded = plan.timelines()
    noise_rng = np.random.default_rng([plan.seed, 4242])  # as the node's
    degrade_rngs = {s.name: np.random.default_rng([plan.seed, 4243, i])
                    for i, s in enumerate(plan.sensors)}
    end_ns = SIM_EPOCH_NS + round(plan.duration_s * 1e9)
    pending: list[tuple[int, int, tuple[str, str], bytes]] = []  # (log ns, seq, key, CDR)
    seq = 0

    def push(log_ns: int, key: tuple[str, str], msg: Any) -> None:
        nonlocal seq
        data = sink.canonical(key, serialize_message(msg))
        heapq.heappush(pending, (log_ns, seq, key, data))
        seq += 1

    # Ground truth and scenario events are known up front: queue them, the stream interleaves.
    if plan.ground_truth_rate_hz > 0:
        gt_key = sink.connect(GROUND_TRUTH_TOPIC, msgtype_of(GroundTruth),
                              qos_from_name("sensor_status"))
        for t in _ground_truth_times(plan):
            push(SIM_EPOCH_NS + round(t * 1e9), gt_key,
                 ground_truth_message(stream, t, SIM_EPOCH_NS))
    if plan.events:
        ev_key = sink.connect(SCENARIO_EVENT_TOPIC, msgtype_of(String), qos_from_name("text"))
        for event in plan.events:
            push(SIM_EPOCH_NS + round(event.t_s * 1e9), ev_key, String(data=event.to_json()))

    bar = _progress_bar(plan.duration_s, progress, "record-sim")
    shown = 0.0
    try:
        while True:
            stamp_s, name = stream.peek()
            if stamp_s >= plan.duration_s:
                break
            sensor = sensors[name]
            log_s = stamp_s + sensor.delay_s
            stamp_ns = SIM_EPOCH_NS + round(stamp_s * 1e9)
            log_ns = stamp_ns + round(sensor.delay_s * 1e9)
            # Nothing later in the stream is logged before this stamp: flush up to it.
            while pending and pending[0][0] <= stamp_ns:
                t_ns, _, key, data = heapq.heappop(pending)
                sink.write(key, t_ns, data)
            if log_ns >= end_ns or not plugged.at(name, log_s):
                stream.skip()  # not published: nothing to render
                continue
            item = stream.next()
            payload = item.payload
            if noisy.at(name, log_s):
                payload = corrupt(item.modality, payload, noise_rng)
            elif (degradation := degraded.at(name, log_s)) is not None:
                payload = degrade_item(item, *degradation, degrade_rngs[name], sensor.rate_hz)
            msg = build_sensor_message(item.modality, payload, stamp_from_ns(stamp_ns),
                                       sensor.frame_id, sensor.message_type)
            push(log_ns, keys[name], msg)
            if bar is not None and stamp_s - shown >= 0.1:
                bar.update(stamp_s - shown)
                shown = stamp_s
        while pending:
            t_ns, _, key, data = heapq.heappop(pending)
            if t_ns < end_ns:
                sink.write(key, t_ns, data)
    finally:
        if bar is not None:
            bar.update(max(plan.duration_s - shown, 0.0))
            bar.close()


def _ground_truth_times(plan: SimPlan) -> list[float]:
    """At every object change, then every 1 / rate until the next change (the node's rule)."""
    times = []
    every = 1.0 / plan.ground_truth_rate_hz
    episodes = math.ceil(plan.duration_s / plan.object_period_s)
    for e in range(episodes):
        start = e * plan.object_period_s
        stop = min((e + 1) * plan.object_period_s, plan.duration_s)
        j = 0
        while start + j * every < stop - 1e-9:
            times.append(start + j * every)
            j += 1
    return times


def _progress_bar(total_s: float, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=round(total_s, 3), unit="s", desc=desc, dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} bag s "
                           "[{elapsed}<{remaining}, {rate_fmt}]")


# ---------------------------------------------------------------------------------------------
# Live topics


def _message_class(msgtype: str) -> type:
    """The rclpy class of ``pkg/msg/Type``."""
    try:
        package, kind, name = msgtype.split("/")
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ValueError, ImportError, AttributeError):
        raise RecordError(f"message type {msgtype!r} is not installed for Python "
                          "(expected pkg/msg/Type of a built interface package)") from None


def record_live(config: str | Path | None, out: str | Path, duration_s: float,
                storage: str = "mcap", *, truth_topic: str | None = GROUND_TRUTH_TOPIC,
                extra_topics: Mapping[str, str] | None = None, context: Any = None,
                progress: bool = True,
                on_ready: Callable[[], None] | None = None) -> BagInfo:
    """Record the sensor topics of a perception configuration (plus ground truth) for a while.

    Parameters
    ----------
    config : the perception node's YAML (its ``sensors`` give topics, types and QoS);
        None = config/perception.yaml.
    out : the bag directory to create (must not exist).
    duration_s : wall seconds to record (Ctrl-C stops early; the bag stays valid).
    storage : "mcap" or "sqlite3".
    truth_topic : also record this ``omnibind_ros/GroundTruth`` topic (None: don't).
    extra_topics : more topics to record, topic -> ``pkg/msg/Type``.
    context : an initialised rclpy Context to use (default: a private one, shut down after).
    on_ready : called once the subscriptions exist (tests start publishing then).

    Returns
    -------
    BagInfo of the written bag.
    """
    from omnibind_ros.ros.env import ensure_safe_ros_env

    ensure_safe_ros_env()
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions
    from rosbags.rosbag2 import Writer

    from omnibind_ros.bag.config import load_node_config
    from omnibind_ros.ros.qos import qos_from_name

    if not duration_s > 0:
        raise RecordError(f"duration must be > 0 s, got {duration_s}")
    out = Path(out).expanduser()
    plugin = _storage_plugin(storage)
    cfg = load_node_config(config)
    topics: dict[str, tuple[str, Any]] = {}
    for sensor in cfg.sensors:
        topics[sensor.topic] = (sensor.message_type, sensor.qos_profile())
    if truth_topic:
        topics.setdefault(truth_topic, ("omnibind_ros/msg/GroundTruth",
                                        qos_from_name("sensor_status")))
    for topic, msgtype in (extra_topics or {}).items():
        topics.setdefault(topic, (msgtype, qos_from_name("sensor_reliable")))
    classes = {topic: _message_class(msgtype) for topic, (msgtype, _) in topics.items()}
    _check_out(out)

    own = context is None
    if own:
        context = Context()
        rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = Node("omnibind_bag_recorder", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        with Writer(out, version=9, storage_plugin=plugin) as writer:
            writer.set_custom_data("omnibind.record", json.dumps(
                {"config": str(cfg.path), "duration_s": duration_s}, sort_keys=True))
            sink = _BagSink(writer)
            for topic, (msgtype, qos) in topics.items():
                key = sink.connect(topic, msgtype, qos)
                node.create_subscription(classes[topic], topic, _raw_writer(sink, key, node),
                                         qos, raw=True)
            if on_ready is not None:
                on_ready()
            _spin_for(executor, duration_s, progress)
    finally:
        executor.remove_node(node)
        node.destroy_node()
        executor.shutdown()
        if own and context.ok():
            rclpy.shutdown(context=context)
    return open_info(out)


def _raw_writer(sink: _BagSink, key: tuple[str, str], node: Any) -> Callable[[bytes], None]:
    clock = node.get_clock()

    def write(data: bytes) -> None:
        sink.write(key, clock.now().nanoseconds, bytes(data))
    return write


def _spin_for(executor: Any, duration_s: float, progress: bool) -> None:
    bar = _progress_bar(duration_s, progress, "record")
    start = time.monotonic()
    shown = 0.0
    try:
        while (elapsed := time.monotonic() - start) < duration_s:
            executor.spin_once(timeout_sec=min(0.05, duration_s - elapsed))
            if bar is not None and elapsed - shown >= 0.5:
                bar.update(elapsed - shown)
                shown = elapsed
    except KeyboardInterrupt:
        pass  # stop recording; the writer still closes the bag properly
    finally:
        if bar is not None:
            bar.close()
