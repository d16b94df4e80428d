"""The ROS side of ``omnibind-bringup``: its nodes, executor thread and monitor subscriptions.

:class:`Bringup` creates the perception node, the simulated sensors and a monitor node in one
rclpy context, configures and activates perception (bringup is its own lifecycle manager), then
starts the simulated sensors, so the scenario's clock starts when perception is ready. The
monitor (:class:`Monitor`) feeds recognitions and ground truth to the
:class:`~omnibind_ros.tools.scoreboard.Scoreboard` and keeps what the view shows: sensor rows,
the newest recognition and the sensors' recent state changes (:class:`StateEventLog`).

rclpy is imported lazily: the CLI makes the ROS environment safe before anything imports it.
"""
from __future__ import annotations

import copy
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnibind_ros.core.names import GROUND_TRUTH_TOPIC, PERCEPTION_NODE
from omnibind_ros.core.paths import config_file
from omnibind_ros.scoring import NS, Phase, PhaseTimeline, ratio, s_to_ns, scenario_timeline
from omnibind_ros.tools.live_view import LiveState, RecognitionView, SensorRow, StateEvent
from omnibind_ros.tools.scoreboard import Sample, Scoreboard

__all__ = ["Bringup", "BringupError", "BringupOptions", "Monitor", "StateEventLog"]

MONITOR_NODE = "omnibind_bringup_monitor"
EXECUTOR_THREAD = "omnibind-bringup-executor"
#: Without a duration_s in the scenario, run this long after its last event.
TAIL_AFTER_LAST_EVENT_S = 5.0
#: State changes the view keeps (the recent-events panel).
EVENTS_KEPT = 8
#: SensorStatus.state constants (msg/SensorStatus.msg) by value.
STATE_NAMES = ("UNKNOWN", "LIVE", "STALE", "LOST", "DISABLED", "DEGRADED")


class BringupError(RuntimeError):
    """Bringup cannot run (a node failed to start); the message says what to do."""


def state_name(value: int) -> str:
    return STATE_NAMES[value] if 0 <= value < len(STATE_NAMES) else str(value)


class StateEventLog:
    """Sensor state changes seen in successive ``~/sensor_status`` arrays (ROS-free).

    A sensor first seen in a state other than UNKNOWN counts as a change from UNKNOWN.
    """

    def __init__(self, keep: int = EVENTS_KEPT) -> None:
        self._states: dict[str, str] = {}
        self._recent: deque[StateEvent] = deque(maxlen=keep)
        self.total = 0

    def update(self, t_s: float, statuses: Iterable[tuple[str, str, str]]) -> list[StateEvent]:
        """Record the changes in ``(sensor, state, reason)`` entries seen at ``t_s``."""
        new = []
        for name, state, reason in statuses:
            old = self._states.get(name, "UNKNOWN")
            self._states[name] = state
            if state != old:
                new.append(StateEvent(t_s, name, old, state, reason))
        self._recent.extend(new)
        self.total += len(new)
        return new

    def recent(self) -> tuple[StateEvent, ...]:
        """The newest changes, oldest first."""
        return tuple(self._recent)


def _stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * NS + int(stamp.nanosec)


class Monitor:
    """The monitor node's subscriptions: recognition, sensor status, ground truth.

    Callbacks run on executor threads; :meth:`view` is called from the view's thread.
    ``clock`` gives the run's time in seconds (the time of the state changes).
    """

    def __init__(self, node: Any, scoreboard: Scoreboard, perception: str,
                 clock: Callable[[], float] = lambda: 0.0) -> None:
        from omnibind_ros.msg import GroundTruth, Recognition, SensorStatusArray
        from omnibind_ros.ros.qos import qos_from_name

        self._lock = threading.Lock()
        self._scoreboard = scoreboard
        self._clock = clock
        self._statuses: list[Any] = []
        self._recognition: Any = None
        self._truth_label = ""
        self.events = StateEventLog()
        #: "bundle [family]" -> recognitions it answered (which model answered, by message)
        self.models: dict[str, int] = {}
        rec_qos = qos_from_name("recognition")
        rec_qos.depth = 100  # the view must not lose ticks while the machine is busy
        truth_qos = qos_from_name("sensor_status")  # reliable + transient local, as published
        truth_qos.depth = 10
        status_qos = qos_from_name("sensor_status")
        status_qos.depth = 20  # every change is one message: keep them for the events panel
        node.create_subscription(Recognition, f"{perception}/recognition",
                                 self._on_recognition, rec_qos)
        node.create_subscription(SensorStatusArray, f"{perception}/sensor_status",
                                 self._on_status, status_qos)
        node.create_subscription(GroundTruth, GROUND_TRUTH_TOPIC, self._on_truth, truth_qos)

    def _on_recognition(self, msg: Any) -> None:
        self._scoreboard.on_recognition(Sample(_stamp_ns(msg.header.stamp), msg.best_label,
                                               tuple(msg.top_labels)))
        model = f"{msg.bundle or '?'} [{msg.model_family or '?'}]"
        with self._lock:
            self._recognition = msg
            self.models[model] = self.models.get(model, 0) + 1

    def _on_status(self, msg: Any) -> None:
        t = self._clock()
        with self._lock:
            self._statuses = list(msg.sensors)
            self.events.update(t, ((s.name, state_name(s.state), s.reason)
                                   for s in msg.sensors))

    def _on_truth(self, msg: Any) -> None:
        self._scoreboard.on_truth(_stamp_ns(msg.header.stamp), int(msg.episode), msg.label,
                                  _stamp_ns(msg.episode_start))
        with self._lock:
            self._truth_label = msg.label

    def answered(self) -> bool:
        """Whether the newest recognition has an answer."""
        with self._lock:
            return self._recognition is not None and bool(self._recognition.best_label)

    def final_states(self) -> dict[str, str]:
        with self._lock:
            return {s.name: state_name(s.state) for s in self._statuses}

    def recent_events(self) -> tuple[tuple[StateEvent, ...], int]:
        """(newest state changes, how many there were in all)."""
        with self._lock:
            return self.events.recent(), self.events.total

    def view(self) -> tuple[list[SensorRow], RecognitionView | None, str, str]:
        """(sensor rows, newest recognition, truth label, verdict) for the live view."""
        with self._lock:
            statuses, rec, truth = self._statuses, self._recognition, self._truth_label
        alone = {} if rec is None else {p.sensor: f"{p.label} {p.score:.2f}"
                                        for p in rec.per_modality}
        rows = [SensorRow(s.name, s.modality, state_name(s.state), s.rate_hz,
                          s.expected_rate_hz, s.age_s, s.publisher_count, s.in_fusion,
                          s.reason, alone.get(s.name, ""), s.quality, s.quality_issue)
                for s in statuses]
        if rec is None:
            return rows, None, truth, ""
        view = RecognitionView(rec.best_label, rec.best_score,
                               tuple(zip(rec.top_labels, rec.top_scores, strict=False)),
                               tuple(rec.sensors), tuple(rec.modalities), rec.confidence,
                               rec.unsure)
        truth_then, kind = self._scoreboard.current(
            Sample(_stamp_ns(rec.header.stamp), rec.best_label, tuple(rec.top_labels)))
        return rows, view, truth_then or truth, kind


@dataclass
class BringupOptions:
    """What ``omnibind-bringup`` runs (the CLI options; see ``bringup.build_parser``)."""

    params_file: Path = field(default_factory=lambda: config_file("perception.yaml"))
    sim: bool = True
    sim_params_file: Path = field(default_factory=lambda: config_file("sim_sensors.yaml"))
    scenario: str | None = None
    duration_s: float | None = None
    bundle: str | None = None
    backend: str | None = None
    namespace: str = ""
    realtime_factor: float | None = None
    transition_s: float = 0.5
    ui: bool = True
    status_every_s: float = 2.0
    ros_args: Sequence[str] = ()
    #: save one ~/annotated_image frame here as a PNG, then stop (bringup_snapshot)
    snapshot: Path | None = None
    #: stream seconds before the snapshot is taken (then at the first answered frame)
    snapshot_after_s: float = 3.0


def _params_args(path: Path) -> list[str]:
    return ["--ros-args", "--params-file", str(path)]


def _resolve_scenario(name: str) -> Path:
    """A scenario given as a path, a file name or a bare name under config/scenarios."""
    from omnibind_ros.ros.sim_sensors_node import resolve_config_file

    try:
        return resolve_config_file(name).resolve()
    except FileNotFoundError:
        if name.endswith((".yaml", ".yml")):
            raise
        return resolve_config_file(name + ".yaml").resolve()


class Bringup:
    """The nodes, the executor thread and the scoreboard of one run.

    ``log_file``: where the nodes' output goes while the view runs (None: the terminal).
    """

    def __init__(self, opts: BringupOptions, log_file: Path | None = None) -> None:
        self.opts = opts
        self.log_file = log_file
        self.context: Any = None
        self.perception: Any = None
        self.sim: Any = None
        self.monitor_node: Any = None
        self.monitor: Monitor | None = None
        self.executor: Any = None
        self.thread: threading.Thread | None = None
        self.scoreboard = Scoreboard(PhaseTimeline(()), transition_s=opts.transition_s)
        self.scenario_name: str | None = None
        self.duration_s = opts.duration_s
        self.realtime_factor = 1.0
        self._t0: float | None = None
        self._wall_s = 0.0
        self._end_s: float | None = None
        self._plan: list[Phase] = []
        self._summary: dict[str, Any] | None = None
        self.snapshot_saver: Any = None  # bringup_snapshot.Snapshot with opts.snapshot

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the nodes, configure and activate perception, then the simulated sensors."""
        import rclpy
        from rclpy.context import Context
        from rclpy.node import Node
        from rclpy.signals import SignalHandlerOptions

        from omnibind_ros.ros.executor import PoolSafeExecutor
        from omnibind_ros.ros.perception_node import PerceptionNode

        self.context = Context()
        # No rclpy signal handlers: main() owns SIGINT, so shutdown happens in order.
        rclpy.init(args=["omnibind-bringup", *self.opts.ros_args], context=self.context,
                   signal_handler_options=SignalHandlerOptions.NO)
        ns = self.opts.namespace
        self.perception = PerceptionNode(
            context=self.context, namespace=ns, cli_args=_params_args(self.opts.params_file),
            parameter_overrides=self._perception_overrides())
        self.monitor_node = Node(MONITOR_NODE, context=self.context, namespace=ns)
        # Encoders run in the perception node's own worker threads; six executor threads keep
        # the fusion tick, the sim's pacing timer and the monitor from waiting on each other.
        self.executor = PoolSafeExecutor(num_threads=6, context=self.context)
        if self.opts.sim:  # streams only once spun: its clock starts with spin()
            self._start_sim()
        if not self.perception.autostart():
            raise BringupError(self._configure_hint())
        self.monitor = Monitor(self.monitor_node, self.scoreboard, PERCEPTION_NODE, self.t_s)
        if self.opts.snapshot is not None:
            from omnibind_ros.tools.bringup_snapshot import Snapshot

            self.snapshot_saver = Snapshot(
                self.monitor_node, PERCEPTION_NODE, self.opts.snapshot,
                self.opts.snapshot_after_s, self.t_s, self.monitor.answered)
        for node in (self.perception, self.monitor_node, self.sim):
            if node is not None:
                self.executor.add_node(node)

    def _perception_overrides(self) -> list[Any]:
        from rclpy.parameter import Parameter

        out = []
        if self.opts.bundle:
            bundle = str(Path(self.opts.bundle).expanduser().resolve())
            out.append(Parameter("bundle_path", value=bundle))
        if self.opts.backend:
            out.append(Parameter("backend", value=self.opts.backend))
        return out

    def _configure_hint(self) -> str:
        from omnibind_ros.core.bundle import default_bundle_dir

        path = Path(self.perception.get_parameter("bundle_path").value or default_bundle_dir())
        if not path.exists():
            return (f"no model bundle at {path}: build the default one with `make demo` (it runs "
                    "`omnibind-train all --config training/configs/sim_default.yaml`), or pass "
                    "--bundle PATH")
        where = "logged above" if self.log_file is None else f"in {self.log_file}"
        return f"the perception node failed to configure (its error is {where})"

    def _start_sim(self) -> None:
        from rclpy.parameter import Parameter

        from omnibind_ros.ros.sim_sensors_node import SimSensorsNode, resolve_config_file
        from omnibind_ros.sim.scenario import load_scenario

        overrides = []
        if self.opts.scenario:
            path = str(_resolve_scenario(self.opts.scenario))
            overrides.append(Parameter("scenario_file", value=path))
        if self.opts.realtime_factor:
            overrides.append(Parameter("realtime_factor", value=float(self.opts.realtime_factor)))
        self.sim = SimSensorsNode(context=self.context, namespace=self.opts.namespace,
                                  cli_args=_params_args(self.opts.sim_params_file),
                                  parameter_overrides=overrides)
        self.realtime_factor = float(self.sim.get_parameter("realtime_factor").value)
        scenario_file = str(self.sim.get_parameter("scenario_file").value)
        scenario = None
        sensors = list(self.sim.sensors)
        if scenario_file:  # our own copy: the node's one has its own event cursor
            scenario = load_scenario(resolve_config_file(scenario_file), sensors)
            self.scenario_name = Path(scenario_file).stem
            if self.duration_s is None:
                self.duration_s = scenario.duration_s or (
                    max((e.t for e in scenario.events), default=0.0) + TAIL_AFTER_LAST_EVENT_S)
        if scenario is not None and self.duration_s is not None:  # the view shows phase ends
            plan = scenario_timeline(copy.deepcopy(scenario), sensors)
            self._plan = plan.phases(s_to_ns(self.duration_s))
        self.scoreboard = Scoreboard(scenario_timeline(scenario, sensors),
                                     transition_s=self.opts.transition_s,
                                     period_s=self.sim.period_s)

    def spin(self) -> None:
        """Start the executor thread (the simulated stream's clock starts here)."""
        self._t0 = time.monotonic()
        self.thread = threading.Thread(target=self.executor.spin, name=EXECUTOR_THREAD,
                                       daemon=True)
        self.thread.start()

    # -- while running -------------------------------------------------------------------------

    def t_s(self) -> float:
        """Stream seconds with the simulator, else wall seconds since spin()."""
        if self.sim is not None:
            return float(self.sim.stream_time_s)
        return 0.0 if self._t0 is None else time.monotonic() - self._t0

    def done(self) -> bool:
        if self.snapshot_saver is not None and self.snapshot_saver.saved.is_set():
            return True
        return self.duration_s is not None and self.t_s() >= self.duration_s

    def snapshot(self) -> LiveState:
        t = self.t_s()
        phase = self.scoreboard.phase_now(s_to_ns(t))
        planned = [p for p in self._plan if p.start_ns == phase.start_ns]
        phase = planned[0] if planned else phase
        end_s = float("inf") if phase.end_ns is None else phase.end_ns / NS
        rows, rec, truth, kind = self.monitor.view() if self.monitor else ([], None, "", "")
        events, total_events = self.monitor.recent_events() if self.monitor else ((), 0)
        total = self.scoreboard.total
        wall = time.monotonic() - self._t0 if self._t0 else 0.0
        title = f"omnibind-bringup [{self.scenario_name or 'no scenario'}]"
        return LiveState(
            t_s=t, duration_s=self.duration_s, phase=phase.label,
            phase_range=(phase.start_ns / NS, end_s) if self.scenario_name else None,
            sensors=rows, recognition=rec, truth=truth, verdict=kind,
            recognitions=self.scoreboard.received,
            per_s=self.scoreboard.received / wall if wall > 0 else 0.0,
            answered_fraction=ratio(self.scoreboard.received_answered,
                                    self.scoreboard.received),
            accuracy=total.accuracy, scored=total.scored, title=title,
            events=events, events_total=total_events,
            log_file=str(self.log_file) if self.log_file else "")

    # -- stop ----------------------------------------------------------------------------------

    def halt(self) -> None:
        """Stop the executor and join its thread (nothing runs or logs afterwards)."""
        if self._end_s is not None:
            return
        self._end_s = self.t_s()
        self._wall_s = time.monotonic() - self._t0 if self._t0 else 0.0
        if self.executor is not None:
            from omnibind_ros.ros.executor import retrieve_late_errors

            self.executor.shutdown(timeout_sec=10.0)  # before destroy_node: never spin those
            retrieve_late_errors(self.executor, "omnibind-bringup")
        if self.thread is not None:
            self.thread.join(timeout=10.0)

    def close(self) -> dict[str, Any]:
        """Halt, score, destroy the nodes, shut rclpy down; idempotent."""
        if self._summary is not None:
            return self._summary
        self.halt()
        clean = self.thread is None or not self.thread.is_alive()
        summary = self._summary_dict(self._end_s or 0.0, clean)
        for node in (self.sim, self.monitor_node, self.perception):
            if node is not None:
                node.destroy_node()
        if self.context is not None and self.context.ok():
            import rclpy

            rclpy.shutdown(context=self.context)
        self._summary = summary
        return summary

    def _summary_dict(self, end_s: float, clean: bool) -> dict[str, Any]:
        scores = self.scoreboard.summary(s_to_ns(end_s), self.realtime_factor)
        rate = self.scoreboard.received / self._wall_s if self._wall_s > 0 else 0.0
        stats = dict(self.sim.stats) if self.sim is not None else {}

        def count(prefix: str) -> int:
            return sum(v for k, v in stats.items() if k.startswith(prefix))

        sim = {"published": count("published/"), "dropped": count("dropped/"),
               "unplugged": count("unplugged/"), "ground_truth": stats.get("ground_truth", 0)}
        return {"scenario": self.scenario_name, "duration_s": end_s, "wall_s": self._wall_s,
                "realtime_factor": self.realtime_factor, **scores,
                "recognitions_per_s": rate,
                "sensors": self.monitor.final_states() if self.monitor else {},
                "models": dict(self.monitor.models) if self.monitor else {},
                "sim": sim if self.sim is not None else None, "clean_shutdown": clean,
                "log_file": str(self.log_file) if self.log_file else None,
                **self._snapshot_summary()}

    def _snapshot_summary(self) -> dict[str, Any]:
        shot = self.snapshot_saver
        if shot is None:
            return {}
        saved = shot.saved.is_set() and not shot.error
        return {"snapshot": str(shot.path) if saved else None,
                "snapshot_error": shot.error or (None if saved else "no frame saved before "
                                                 "the run ended")}
