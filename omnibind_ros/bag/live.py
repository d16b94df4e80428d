"""Live evaluation: replay a bag on its topics with ``/clock``, run the real perception node with
``use_sim_time``, record what it publishes and score it like the offline evaluation.

Where offline mode (:mod:`.offline`) is the "infinitely fast machine" reference, live mode is the
node as deployed: the same :class:`~omnibind_ros.ros.perception_lifecycle.PerceptionNode`, its
QoS, its encoder threads, its executor, racing a bag played at ``rate`` times real time. The gap
between the two on one bag is what the machine costs (late embeddings, frames replaced in a
depth-1 queue, ticks that had to wait).

The pieces:

* the **player** (:mod:`omnibind_ros.bag.player`), in a child process by default;
* the **node**: the PerceptionNode with ``use_sim_time:=true`` (a parameter override on top of
  the node's YAML, like ``omnibind-bringup``'s ``--bundle``), configured and activated here
  (``autostart``) once its clock has the bag's time;
* the **recorder** (:mod:`omnibind_ros.bag.live_recorder`), which turns what the node publishes
  into ticks and sensor states.

Everything in this process is spun by :class:`~omnibind_ros.ros.executor.PoolSafeExecutor`
(rclpy 9.x's ``MultiThreadedExecutor`` floods its pool; see that module).
"""
from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnibind_ros.bag.config import info_topics
from omnibind_ros.bag.errors import LiveEvalError
from omnibind_ros.bag.live_recorder import RECORDER_NAME, Recorder, state_changes, tick_records
from omnibind_ros.bag.live_sensors import live_sensor_table, node_counts, undecodable_messages
from omnibind_ros.bag.player import PlaybackPlan, PlayerHandle
from omnibind_ros.bag.scoring import EvalResult, phases_from_events, phases_from_states
from omnibind_ros.bag.warmup import warm_up
from omnibind_ros.core.names import (
    CLOCK_TOPIC,
    GROUND_TRUTH_TOPIC,
    SCENARIO_EVENT_TOPIC,
)

__all__ = ["LiveEvalError", "evaluate_live"]

NS = 1_000_000_000
#: Longest wait (wall s) for the node's clock to reach the bag time.
CLOCK_WAIT_S = 20.0
#: After playback, the recorder has received everything once nothing came for this long (wall s).
SETTLE_S = 0.3
EXECUTOR_THREADS = 6


# ---------------------------------------------------------------------------------------------
# the bag side: what to play, truth, phases

@dataclass(frozen=True)
class _Sensor:
    name: str
    modality: str
    topic: str
    message_type: str
    reliable: bool


def _node_sensors(node: Any) -> list[_Sensor]:
    """The node's configured sensors, read from its parameters (YAML + overrides, as rcl
    parsed them): live mode plays exactly the topics the node listens to."""
    from rclpy.qos import ReliabilityPolicy

    from omnibind_ros.ros import params

    out = []
    for name in node.get_parameter("sensors").value or []:
        cfg = params.read_sensor(node, name)
        reliable = cfg.qos_profile().reliability == ReliabilityPolicy.RELIABLE
        out.append(_Sensor(cfg.name, cfg.modality, node.resolve_topic_name(cfg.topic),
                           cfg.message_type, reliable))
    return out


def _plan_topics(bag_topics: dict[str, tuple[str, int]], sensors: Sequence[_Sensor],
                 used: Iterable[str], paired: Iterable[str] = ()
                 ) -> tuple[dict[str, tuple[str, bool]], dict[str, str]]:
    """(topics to play, skipped topic -> why), as offline mode maps them. ``used``: topics the
    evaluator reads itself (ground truth, scenario events): neither played nor skipped.
    ``paired``: the sensors' info topics in the bag (``config.info_topics``), played best
    effort like the node's info subscription (offline mode feeds them to the converter too)."""
    from omnibind_ros.bag.config import map_topics
    from omnibind_ros.ros.conversions import normalise_msg_type

    mapped, skipped = map_topics(bag_topics, sensors, used)
    play = {topic: (normalise_msg_type(bag_topics[topic][0]), sensor.reliable)
            for topic, sensor in mapped.items()}
    for topic in paired:
        skipped.pop(topic, None)
        play[topic] = (normalise_msg_type(bag_topics[topic][0]), False)
    return play, skipped


def _scenario_events(bag: Path, topics: dict[str, tuple[str, int]]
                     ) -> tuple[list[tuple[int, str]], str | None]:
    """Scenario events recorded by ``record-sim`` (log ns, JSON text), and a read error."""
    from rclpy.serialization import deserialize_message
    from std_msgs.msg import String

    from omnibind_ros.bag.reader import BagReadError, iter_messages

    events: list[tuple[int, str]] = []
    if topics.get(SCENARIO_EVENT_TOPIC, ("",))[0] != "std_msgs/msg/String":
        return events, None
    try:
        for msg in iter_messages(bag, topics=[SCENARIO_EVENT_TOPIC]):
            events.append((msg.log_time_ns, deserialize_message(msg.rawdata, String).data))
    except BagReadError as exc:
        return events, str(exc)
    return events, None


# ---------------------------------------------------------------------------------------------
# evaluate_live

def _perception_overrides(bundle: Path | None, backend: str, threads: int) -> list[Any]:
    from rclpy.parameter import Parameter

    out = [Parameter("use_sim_time", value=True), Parameter("backend", value=backend),
           Parameter("backend_threads", value=int(threads))]
    if bundle is not None:
        out.append(Parameter("bundle_path", value=str(Path(bundle).expanduser().resolve())))
    return out


def _default_config() -> Path:
    from omnibind_ros.core.paths import config_file

    return config_file("perception.yaml")


def _wait(cond: Callable[[], bool], timeout_s: float, step_s: float = 0.02) -> bool:
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() >= end:
            return False
        time.sleep(step_s)
    return True


class _Progress:
    """tqdm over bag seconds (stderr), or nothing."""

    def __init__(self, enabled: bool, total_s: float, desc: str) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=round(total_s, 1), unit="bag s", desc=desc, file=sys.stderr,
                             mininterval=0.5,
                             bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} bag s "
                                        "[{elapsed}<{remaining}]")

    def update(self, done_s: float) -> None:
        if self._bar is not None:
            self._bar.n = round(min(max(done_s, 0.0), self._bar.total), 1)
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def evaluate_live(bag: Path | str, *, rate: float = 1.0, bundle: Path | str | None = None,
                  config: Path | str | None = None, truth_csv: Path | str | None = None,
                  truth_topic: str = GROUND_TRUTH_TOPIC, backend: str = "onnxruntime",
                  threads: int = 1, progress: bool = True, player_process: bool = True,
                  log_level: str | None = "warn") -> EvalResult:
    """Replay ``bag`` to the perception node in real time (x ``rate``) and score its answers.

    Parameters
    ----------
    bag : rosbag2 directory (or what :func:`omnibind_ros.bag.reader.open_info` accepts).
    rate : bag seconds per wall second (2.0 plays twice as fast).
    bundle : model bundle; None = the node config's ``bundle_path`` (else the default bundle).
    config : the node's parameters YAML (default: the package's ``config/perception.yaml``);
        its sensors decide which topics are played.
    truth_csv : ground truth from a CSV of labelled intervals instead of ``truth_topic``.
    truth_topic : ground-truth topic in the bag (``omnibind_ros/msg/GroundTruth``).
    backend, threads : the node's ``backend`` and ``backend_threads``.
    progress : tqdm progress bar over bag time on stderr.
    player_process : play from a child process (default; see the module docstring) or from a
        thread of this process.
    log_level : severity of the perception node's logger while it runs ("debug", "info",
        "warn"...; None: unchanged). Default "warn": its INFO lines (every sensor transition)
        would tear the progress bar, and the transitions are recorded and reported anyway. The
        previous level is restored afterwards (rcutils levels are process-wide).

    Returns
    -------
    EvalResult with ``mode="live"``; ``extra`` has the rate, the player's counts and, under
    ``"timing"``, the player's publish lag.

    Raises
    ------
    ConfigError : sensors the node would refuse (a bad value, a modality the bundle lacks): one
        error naming every unusable sensor by its config key, before any ROS is started
        (:mod:`omnibind_ros.bag.sensor_check`, as offline mode). Sensors the bag does not feed
        are named in one warning (``EvalResult.warnings``).
    LiveEvalError : the node failed to configure (bad bundle), no topic of the bag is one the
        node listens to, or the node never received the bag's /clock.
    FileNotFoundError, BagReadError : the bag cannot be opened at all.

    Before the node starts, the first messages of every played sensor run through their
    conversion and preprocessing in this process (:mod:`omnibind_ros.bag.warmup`): a cold
    process's one-time costs (the clustering imports on the first point cloud...) otherwise
    stall the node in the bag's first second and show as sub-second "unplugged" phases.

    The report's per-sensor table (``extra["sensors"]``) has offline mode's columns
    (:mod:`omnibind_ros.bag.live_sensors`); undecodable messages and a damaged bag are named by
    the same index among the bag's messages as offline.

    The process environment is made safe first (``ensure_safe_ros_env``, which refuses if rclpy
    was already imported with discovery beyond this machine); the evaluation creates its own
    rclpy context and shuts it down.
    """
    from omnibind_ros.ros.env import ensure_safe_ros_env

    ensure_safe_ros_env()  # rclpy is imported below
    from omnibind_ros.bag.reader import open_info

    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be > 0, got {rate!r}")
    bag = Path(bag)
    config = Path(config) if config is not None else _default_config()
    if not config.is_file():
        raise FileNotFoundError(f"node config not found: {config}")
    wall0 = time.monotonic()
    info = open_info(bag)
    # Ground truth, scenario events and the sensors first: a bad CSV or config fails before
    # minutes of playback.
    truth = _load_truth(bag, truth_csv, truth_topic, info)
    events, side_error = _scenario_events(bag, info.topics)
    cfg, check, bundle_path = _preflight(bag, info, config, bundle, truth_topic)
    warm_s = warm_up(bag, [s for s in cfg.sensors if s.name in check.fed], bundle_path,
                     info.definitions)

    import rclpy
    from rclpy.context import Context
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.signals import SignalHandlerOptions

    from omnibind_ros.ros.executor import PoolSafeExecutor, retrieve_late_errors
    from omnibind_ros.ros.perception_node import PerceptionNode

    context = Context()
    rclpy.init(args=["omnibind-bag-live"], context=context,
               signal_handler_options=SignalHandlerOptions.NO)
    perception = recorder_node = executor = thread = player = None
    restore_level = _set_log_level("", None)
    progress_bar = _Progress(False, 0, "")
    try:
        perception = PerceptionNode(
            context=context, cli_args=["--ros-args", "--params-file", str(config)],
            parameter_overrides=_perception_overrides(
                None if bundle is None else Path(bundle), backend, threads))
        restore_level = _set_log_level(perception.get_logger().name, log_level)
        sensors = _node_sensors(perception)
        plan_topics, skipped = _plan_topics(info.topics, sensors,
                                            used=(truth_topic, SCENARIO_EVENT_TOPIC),
                                            paired=info_topics(info.topics, cfg.sensors))
        if not plan_topics:
            raise LiveEvalError(
                f"no topic of {bag} is a sensor topic of the node config {config} "
                f"(bag topics: {sorted(info.topics) or 'none'}; node topics: "
                f"{[s.topic for s in sensors]}). Per sensor:\n{check.listing()}")
        recorder_node = Node(RECORDER_NAME, context=context,
                             parameter_overrides=[Parameter("use_sim_time", value=True)])
        recorder = Recorder(recorder_node, perception.get_name())
        executor = PoolSafeExecutor(num_threads=EXECUTOR_THREADS, context=context)
        executor.add_node(perception)
        executor.add_node(recorder_node)
        thread = threading.Thread(target=executor.spin, name="omnibind-bag-live-executor",
                                  daemon=True)
        thread.start()

        plan = PlaybackPlan(str(bag), plan_topics, info.start_ns, info.end_ns, float(rate))
        player = PlayerHandle(plan, process=player_process, context=context)
        player.wait_holding(timeout_s=60.0)
        clocks = (perception, recorder_node)
        if not _wait(lambda: all(n.get_clock().now().nanoseconds >= info.start_ns
                                 for n in clocks), CLOCK_WAIT_S):
            raise LiveEvalError(f"the node did not receive {CLOCK_TOPIC} from the player "
                                f"within {CLOCK_WAIT_S:.0f} s")
        if not perception.autostart():
            raise LiveEvalError(_configure_hint(perception))
        labels = list(perception.engine.fusion.label_names)
        player.go()
        progress_bar = _Progress(progress, (info.end_ns - info.start_ns) / NS,
                                 f"live x{rate:g}")
        while player.running():
            progress_bar.update((player.position_ns - info.start_ns) / NS)
            time.sleep(0.2)
        stats = player.finish()
        progress_bar.update((info.end_ns - info.start_ns) / NS)
        # answers still in flight (an encode, a queued callback): until none came for a while
        _wait(lambda: time.monotonic() - recorder.last_wall >= SETTLE_S, 5.0)
        counts = node_counts(perception, [s.name for s in sensors])  # while its workers exist
    except BaseException:
        if player is not None:
            player.close()
        raise
    finally:
        progress_bar.close()
        if executor is not None:
            executor.shutdown(timeout_sec=10.0)  # before destroy_node: never spin those
            retrieve_late_errors(executor, "omnibind-bag")
        if thread is not None:
            thread.join(timeout=10.0)
        for node in (perception, recorder_node):
            if node is not None:
                node.destroy_node()
        if context.ok():
            rclpy.shutdown(context=context)
        restore_level()

    last_ns = stats.last_log_ns if stats.last_log_ns is not None else info.start_ns
    end_ns = last_ns if stats.error else info.end_ns
    sensor_topics = {s.topic: s.message_type for s in sensors if s.topic in plan_topics}
    undecodable = undecodable_messages(bag, sensor_topics, info.definitions, until_ns=last_ns)
    ticks, dropped = tick_records(recorder.recognitions, last_ns=end_ns,
                                  diags=recorder.fusion_diags, statuses=recorder.statuses,
                                  stamp_wall=stats.stamp_wall,
                                  clock_wall=stats.clock_wall)
    # the tail's silence (every sensor going STALE, LOST) is the bag ending, not a dropout
    states = [c for c in state_changes(recorder.statuses) if c.t_ns <= end_ns]
    names = [s.name for s in sensors]
    if events:
        phases = phases_from_events(events, names, info.start_ns, end_ns)
    else:
        phases = phases_from_states(states, names, info.start_ns, end_ns)
    wall_s = time.monotonic() - wall0
    return EvalResult(
        bag=str(bag), mode="live", ticks=ticks, states=states, truth=truth, phases=phases,
        sensors=names, skipped_topics=skipped, error=stats.error or side_error, wall_s=wall_s,
        start_ns=info.start_ns, end_ns=end_ns,
        modalities={s.name: s.modality for s in sensors},
        extra={
            "rate": float(rate),
            "config": str(config),
            "bundle": str(Path(bundle_path)),
            "labels": labels,
            "sensors": live_sensor_table(sensors, plan_topics, stats.published, counts,
                                         undecodable),
            "sensor_warnings": [w for w in (check.warning(),) if w],
            "unknown_params": list(cfg.unknown),
            "player": {"process": bool(player_process), "published": stats.published,
                       "clock_messages": len(stats.clock_wall),
                       "messages_read": stats.messages_read,
                       "unmatched_topics": stats.unmatched},
            "tail_ticks_dropped": dropped,
            "truth_source": ("csv" if truth_csv is not None else
                             truth_topic if truth is not None else None),
            "timing": {"player_lag_s": stats.lag_s, "late_messages": stats.late_messages,
                       "playback_wall_s": round(stats.wall_s, 3), "warm_up_s": warm_s},
        })


def _set_log_level(logger: str, level: str | None) -> Callable[[], None]:
    """Set ``logger``'s severity; return the function restoring the previous one."""
    if level is None:
        return lambda: None
    from rclpy.logging import LoggingSeverity, get_logger_level, set_logger_level

    try:
        severity = LoggingSeverity[level.strip().upper().replace("WARNING", "WARN")]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; expected one of "
                         f"{[s.name.lower() for s in LoggingSeverity]}") from None
    previous = get_logger_level(logger)
    set_logger_level(logger, severity)
    return lambda: set_logger_level(logger, previous)


def _configure_hint(node: Any) -> str:
    from omnibind_ros.core.bundle import default_bundle_dir

    path = Path(node.get_parameter("bundle_path").value or default_bundle_dir())
    if not path.exists():
        return (f"no model bundle at {path}: pass --bundle PATH or build the default one "
                "(`make demo`)")
    return "the perception node failed to configure (its error is logged above)"


def _preflight(bag: Path, info: Any, config: Path, bundle: Path | str | None,
               truth_topic: str) -> tuple[Any, Any, Path]:
    """(the node config as bag evaluation reads it, its :class:`~omnibind_ros.bag.
    sensor_check.SensorCheck`, the bundle the node will load): the node's own YAML read as
    offline mode reads it, so a config is judged alike in both modes, before any ROS starts.

    Raises ConfigError naming every unusable sensor when the node would refuse one.
    """
    from omnibind_ros.bag.config import load_node_config
    from omnibind_ros.bag.sensor_check import preflight
    from omnibind_ros.core.bundle import default_bundle_dir

    cfg = load_node_config(config, strict=False)
    bundle_path = Path(bundle or cfg.params.get("bundle_path") or default_bundle_dir())
    bundle_path = bundle_path.expanduser()
    check = preflight(cfg, info.topics, bundle_path, used=(truth_topic, SCENARIO_EVENT_TOPIC),
                      bag=bag)
    return cfg, check, bundle_path


def _load_truth(bag: Path, truth_csv: Path | str | None, topic: str, info: Any) -> Any:
    """Ground truth as offline mode reads it: the CSV, else the bag's topic, else None."""
    from omnibind_ros.bag.truth import GroundTruth

    if truth_csv is not None:
        return GroundTruth.from_csv(Path(truth_csv), info.start_ns)
    if topic not in info.topics:
        return None
    return GroundTruth.from_bag(bag, topic, end_ns=info.end_ns)
