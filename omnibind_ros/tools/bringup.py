"""``omnibind-bringup``: perception and simulated sensors in one process, with a live view.

The launch system is not installable from PyPI, so this is the pip user's (and ``make demo``'s)
equivalent of ``ros2 launch omnibind_ros perception.launch.py``: the same nodes, from the same
configuration, spun by one multi-threaded executor (omnibind_ros.ros.executor)::

    omnibind-bringup                                  # perception + simulated sensors; Ctrl-C
    omnibind-bringup --scenario hotplug_demo          # scripted hot-plug; stops after 40 s
    omnibind-bringup --no-sim --params-file my.yaml   # perception on your own sensors
    omnibind-bringup --no-ui --summary-json run.json --ros-args --log-level warn

Configuration: each node gets ``--ros-args --params-file <file>`` as its own command line, so
rcl reads the YAML exactly as ``ros2 run`` and launch do (``/**/`` wildcards included); the
options (``--bundle``, ``--backend``, ``--scenario``...) are parameter overrides on top, as
launch's inline parameters are. Arguments after ``--ros-args`` are global ROS arguments. Bringup
is its own lifecycle manager: it configures and activates the perception node, then starts the
simulated sensors, so the scenario's clock starts when perception is ready.

The view (rich; ``--no-ui`` prints plain status lines instead) shows every sensor's state, the
current recognition against the simulator's ground truth (``/omnibind/ground_truth``) and the
scenario phase. Node logs go to a file under ``ROS_LOG_DIR`` while the view owns the terminal;
their newest lines are shown below it.

Scoring, printed at the end (and written by ``--summary-json``):

* a *recognition* is one ``~/recognition`` message (one fusion tick); it is *answered* when
  ``best_label`` is not empty;
* it is matched with the ground-truth episode in force at its ``header.stamp`` (the newest sensor
  sample it used), on the stream timeline both share;
* answers less than ``--transition`` seconds (0.5) after the object changed are counted as
  *transition*, not scored: the fused embeddings of the other sensors still show the previous
  object for up to ``fusion.max_age_s``;
* accuracy = correct / scored answers; top-k = the truth is among ``top_labels``;
* a *phase* is an interval between scenario events with a constant set of live sensors, labelled
  by it ("all sensors", "camera unplugged", "camera+lidar unplugged", "..., tactile noisy"); the
  phase of a recognition is the one its stamp falls in (scenario time, not the moment the
  perception node noticed the change, so the reaction delay shows in the phase's numbers).
"""
from __future__ import annotations

import argparse
import bisect
import copy
import itertools
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from omnibind_ros.core.names import GROUND_TRUTH_TOPIC, PERCEPTION_NODE
from omnibind_ros.core.paths import config_file
from omnibind_ros.ros.env import ensure_safe_ros_env
from omnibind_ros.sim.scenario import ALL, Scenario
from omnibind_ros.tools.live_view import (
    LiveState,
    RecognitionView,
    SensorRow,
    render_live,
    render_summary,
    status_line,
)

__all__ = ["BringupError", "BringupOptions", "PhaseTimeline", "Scoreboard", "main",
           "run_bringup"]

MONITOR_NODE = "omnibind_bringup_monitor"
EXECUTOR_THREAD = "omnibind-bringup-executor"
#: Without a duration_s in the scenario, run this long after its last event.
TAIL_AFTER_LAST_EVENT_S = 5.0
#: Recognitions still unmatched this long (stream s) after a newer one are scored without truth,
#: so a run without a ground-truth publisher keeps no backlog.
_MAX_PENDING_NS = 5_000_000_000
_REFRESH_S = 0.25


class BringupError(RuntimeError):
    """Bringup cannot run (a node failed to start); the message says what to do."""


# ---------------------------------------------------------------------------------------------
# Scenario phases and scoring (ROS-free)

@dataclass(frozen=True)
class Phase:
    """An interval of stream time [start_s, end_s) with one set of live sensors."""

    label: str
    start_s: float
    end_s: float = math.inf


def phase_label(unplugged: Sequence[str], noisy: Sequence[str]) -> str:
    parts = []
    if unplugged:
        parts.append("+".join(unplugged) + " unplugged")
    if noisy:
        parts.append("+".join(noisy) + " noisy")
    return ", ".join(parts) or "all sensors"


class PhaseTimeline:
    """A scenario as consecutive phases, built lazily as stream time advances (so a looping
    scenario with no end works). Takes ownership of ``scenario`` (its event cursor advances).

    Parameters
    ----------
    scenario : None: one phase, "all sensors", forever.
    sensors : sensor names in configuration order (labels list them in this order).
    """

    def __init__(self, scenario: Scenario | None, sensors: Sequence[str]) -> None:
        self._scenario = scenario
        self._sensors = list(sensors)
        self._unplugged: set[str] = set()
        self._noisy: set[str] = set()
        self._phases = [Phase(phase_label((), ()), 0.0)]
        self._horizon = -math.inf

    @property
    def static(self) -> bool:
        """One phase for ever (no scenario, or one without events)."""
        return self._scenario is None or not self._scenario.events

    def advance(self, t: float) -> None:
        """Apply the events up to stream time ``t`` (earlier times are no-ops)."""
        if self._scenario is None or t <= self._horizon:
            return
        self._horizon = t
        due = self._scenario.events_until(t)
        for when, group in itertools.groupby(due, key=lambda item: item[0]):
            for _, event in group:  # same-time events apply together: one boundary
                self._apply(event.action, event.sensors)
            self._boundary(when)

    def _apply(self, action: str, names: Iterable[str]) -> None:
        names = self._sensors if ALL in names else list(names)
        target = self._unplugged if action in ("unplug", "replug") else self._noisy
        if action in ("unplug", "noise_on"):
            target.update(names)
        else:
            target.difference_update(names)

    def _boundary(self, when: float) -> None:
        unplugged = [n for n in self._sensors if n in self._unplugged]
        noisy = [n for n in self._sensors if n in self._noisy and n not in self._unplugged]
        label, last = phase_label(unplugged, noisy), self._phases[-1]
        if label == last.label:
            return  # e.g. replugging a plugged sensor: no new phase
        if when <= last.start_s:  # events at the very start relabel the first phase
            self._phases[-1] = Phase(label, last.start_s)
            return
        self._phases[-1] = Phase(last.label, last.start_s, when)
        self._phases.append(Phase(label, when))

    def index_at(self, t: float) -> int:
        """Index of the phase holding stream time ``t`` (before 0: the first)."""
        self.advance(t)
        starts = [p.start_s for p in self._phases]
        return max(0, bisect.bisect_right(starts, t) - 1)

    def phase_at(self, t: float) -> Phase:
        return self._phases[self.index_at(t)]

    def phases(self, end_s: float) -> list[Phase]:
        """The phases up to ``end_s``, the last one closed there."""
        self.advance(end_s)
        out = [p for p in self._phases if p.start_s < end_s or p is self._phases[0]]
        last = out[-1]
        out[-1] = Phase(last.label, last.start_s, max(end_s, last.start_s))
        return out


@dataclass(frozen=True)
class Truth:
    """One ground-truth episode: ``label`` from ``start_ns`` (stream timeline) on."""

    episode: int
    label: str
    start_ns: int


@dataclass(frozen=True)
class Sample:
    """What scoring needs of one Recognition."""

    stamp_ns: int
    best_label: str
    top_labels: tuple[str, ...] = ()


def verdict(sample: Sample, truth: Truth | None, transition_ns: int) -> str:
    """no_answer | unscored (no truth) | transition | correct | wrong."""
    if not sample.best_label:
        return "no_answer"
    if truth is None:
        return "unscored"
    if sample.stamp_ns - truth.start_ns < transition_ns:
        return "transition"
    return "correct" if sample.best_label == truth.label else "wrong"


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


@dataclass
class Tally:
    """Counts of one phase (or of the whole run)."""

    recognitions: int = 0
    answered: int = 0
    transition: int = 0
    unscored: int = 0
    scored: int = 0
    correct: int = 0
    top_k_correct: int = 0

    def add(self, kind: str, in_top_k: bool) -> None:
        self.recognitions += 1
        if kind == "no_answer":
            return
        self.answered += 1
        if kind in ("transition", "unscored"):
            setattr(self, kind, getattr(self, kind) + 1)
            return
        self.scored += 1
        self.correct += kind == "correct"
        self.top_k_correct += in_top_k

    def stats(self) -> dict[str, Any]:
        return {"recognitions": self.recognitions, "answered": self.answered,
                "answered_fraction": _ratio(self.answered, self.recognitions),
                "scored": self.scored, "correct": self.correct,
                "accuracy": _ratio(self.correct, self.scored),
                "top_k_accuracy": _ratio(self.top_k_correct, self.scored),
                "transition": self.transition, "unscored": self.unscored}


class Scoreboard:
    """Matches recognitions with ground truth by stamp and counts them per phase (thread-safe).

    A recognition is scored once ground truth stamped at or after it has arrived (the episode
    in force at its stamp is then known), or at :meth:`summary`.

    Parameters
    ----------
    timeline : the scenario's phases, in stream seconds since the stream's origin.
    transition_s : answers this soon after an object change count as transition.
    period_s : object period of the simulator; locates the stream origin from any episode and
        scores the last recognitions (after the last ground truth) at the end.
    """

    def __init__(self, timeline: PhaseTimeline, *, transition_s: float = 0.5,
                 period_s: float | None = None) -> None:
        self._lock = threading.Lock()
        self._timeline = timeline
        self._transition_ns = int(transition_s * 1e9)
        self.transition_s = transition_s
        self._period_ns = int(period_s * 1e9) if period_s else None
        self._truths: list[Truth] = []
        self._starts: list[int] = []
        self._latest_truth_ns: int | None = None
        self._newest_ns = 0
        self.origin_ns: int | None = None
        self._pending: deque[Sample] = deque()
        self.total = Tally()
        self._phase_tallies: dict[int, Tally] = {}
        self.received = 0
        self.before_start = 0
        self.received_answered = 0
        self.top_k = 0

    def on_truth(self, stamp_ns: int, episode: int, label: str, start_ns: int) -> None:
        with self._lock:
            if not self._truths or episode > self._truths[-1].episode:
                self._truths.append(Truth(episode, label, start_ns))
                self._starts.append(start_ns)
            if self.origin_ns is None and (episode == 0 or self._period_ns):
                self.origin_ns = start_ns - episode * (self._period_ns or 0)
            self._latest_truth_ns = max(stamp_ns, self._latest_truth_ns or stamp_ns)
            self._resolve(final=False)

    def on_recognition(self, sample: Sample) -> None:
        with self._lock:
            self.received += 1
            self.received_answered += bool(sample.best_label)
            self.top_k = max(self.top_k, len(sample.top_labels))
            self._newest_ns = max(self._newest_ns, sample.stamp_ns)
            self._pending.append(sample)
            self._resolve(final=False)

    def truth_at(self, stamp_ns: int) -> Truth | None:
        i = bisect.bisect_right(self._starts, stamp_ns) - 1
        return self._truths[i] if i >= 0 else None

    def current(self, sample: Sample) -> tuple[str, str]:
        """(truth label, verdict) for the live view, from the truth known so far."""
        with self._lock:
            truth = self.truth_at(sample.stamp_ns)
        kind = verdict(sample, truth, self._transition_ns)
        return (truth.label if truth else ""), kind

    def phase_now(self, t: float) -> Phase:
        with self._lock:
            return self._timeline.phase_at(t)

    def _resolve(self, final: bool) -> None:
        keep: deque[Sample] = deque()
        for s in self._pending:
            if self._latest_truth_ns is not None and s.stamp_ns <= self._latest_truth_ns:
                self._score(s, self.truth_at(s.stamp_ns))
            elif final or s.stamp_ns < self._newest_ns - _MAX_PENDING_NS:
                self._score(s, self._last_truth_for(s.stamp_ns))
            else:
                keep.append(s)
        self._pending = keep

    def _last_truth_for(self, stamp_ns: int) -> Truth | None:
        """The known episode if it provably still held at ``stamp_ns`` (period known)."""
        truth = self.truth_at(stamp_ns)
        if truth is None or self._period_ns is None:
            return None
        return truth if stamp_ns < truth.start_ns + self._period_ns else None

    def _score(self, s: Sample, truth: Truth | None) -> None:
        if self.origin_ns is not None and s.stamp_ns < self.origin_ns:
            self.before_start += 1  # a tick before the simulated stream began: not its run
            return
        kind = verdict(s, truth, self._transition_ns)
        in_top_k = truth is not None and truth.label in s.top_labels
        self.total.add(kind, in_top_k)
        index = self._phase_index(s.stamp_ns)
        if index is not None:
            self._phase_tallies.setdefault(index, Tally()).add(kind, in_top_k)

    def _phase_index(self, stamp_ns: int) -> int | None:
        if self.origin_ns is None:
            # No ground truth, so no stream origin: only a scenario-less run has its phase.
            return 0 if self._timeline.static else None
        return self._timeline.index_at((stamp_ns - self.origin_ns) * 1e-9)

    def summary(self, end_s: float, realtime_factor: float = 1.0) -> dict[str, Any]:
        """Score what is pending and return the run's numbers (see the module docstring)."""
        with self._lock:
            self._resolve(final=True)
            phases = []
            for i, phase in enumerate(self._timeline.phases(end_s)):
                tally = self._phase_tallies.get(i, Tally())
                wall = (phase.end_s - phase.start_s) / realtime_factor
                phases.append({"label": phase.label, "start_s": phase.start_s,
                               "end_s": phase.end_s, **tally.stats(),
                               "recognitions_per_s": tally.recognitions / wall if wall > 0
                               else None})
            return {**self.total.stats(), "phases": phases, "top_k": self.top_k,
                    "transition_s": self.transition_s, "before_start": self.before_start}


# ---------------------------------------------------------------------------------------------
# ROS side (rclpy is imported lazily: main() makes the environment safe first)

def _stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class Monitor:
    """The monitor node's subscriptions: recognition, sensor status, ground truth.

    Callbacks run on executor threads; :meth:`view` is called from the view's thread.
    """

    def __init__(self, node: Any, scoreboard: Scoreboard, perception: str) -> None:
        from omnibind_ros.msg import GroundTruth, Recognition, SensorStatusArray
        from omnibind_ros.ros.qos import qos_from_name

        self._lock = threading.Lock()
        self._scoreboard = scoreboard
        self._statuses: list[Any] = []
        self._recognition: Any = None
        self._truth_label = ""
        rec_qos = qos_from_name("recognition")
        rec_qos.depth = 100  # the view must not lose ticks while the machine is busy
        truth_qos = qos_from_name("sensor_status")  # reliable + transient local, as published
        truth_qos.depth = 10
        node.create_subscription(Recognition, f"{perception}/recognition",
                                 self._on_recognition, rec_qos)
        node.create_subscription(SensorStatusArray, f"{perception}/sensor_status",
                                 self._on_status, qos_from_name("sensor_status"))
        node.create_subscription(GroundTruth, GROUND_TRUTH_TOPIC, self._on_truth, truth_qos)

    def _on_recognition(self, msg: Any) -> None:
        self._scoreboard.on_recognition(Sample(_stamp_ns(msg.header.stamp), msg.best_label,
                                               tuple(msg.top_labels)))
        with self._lock:
            self._recognition = msg

    def _on_status(self, msg: Any) -> None:
        with self._lock:
            self._statuses = list(msg.sensors)

    def _on_truth(self, msg: Any) -> None:
        self._scoreboard.on_truth(_stamp_ns(msg.header.stamp), int(msg.episode), msg.label,
                                  _stamp_ns(msg.episode_start))
        with self._lock:
            self._truth_label = msg.label

    def final_states(self) -> dict[str, str]:
        from omnibind_ros.core.availability import SensorState

        with self._lock:
            return {s.name: SensorState(s.state).name for s in self._statuses}

    def view(self) -> tuple[list[SensorRow], RecognitionView | None, str, str]:
        """(sensor rows, newest recognition, truth label, verdict) for the live view."""
        from omnibind_ros.core.availability import SensorState

        with self._lock:
            statuses, rec, truth = self._statuses, self._recognition, self._truth_label
        alone = {} if rec is None else {p.sensor: f"{p.label} {p.score:.2f}"
                                        for p in rec.per_modality}
        rows = [SensorRow(s.name, s.modality, SensorState(s.state).name, s.rate_hz,
                          s.expected_rate_hz, s.age_s, s.publisher_count, s.in_fusion,
                          s.reason, alone.get(s.name, "")) for s in statuses]
        if rec is None:
            return rows, None, truth, ""
        view = RecognitionView(rec.best_label, rec.best_score,
                               tuple(zip(rec.top_labels, rec.top_scores, strict=False)),
                               tuple(rec.sensors), tuple(rec.modalities))
        truth_then, kind = self._scoreboard.current(
            Sample(_stamp_ns(rec.header.stamp), rec.best_label, tuple(rec.top_labels)))
        return rows, view, truth_then or truth, kind


@dataclass
class BringupOptions:
    """What ``omnibind-bringup`` runs (the CLI options; see :func:`build_parser`)."""

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
    """The nodes, the executor thread and the scoreboard of one run."""

    def __init__(self, opts: BringupOptions) -> None:
        self.opts = opts
        self.context: Any = None
        self.perception: Any = None
        self.sim: Any = None
        self.monitor_node: Any = None
        self.monitor: Monitor | None = None
        self.executor: Any = None
        self.thread: threading.Thread | None = None
        self.scoreboard = Scoreboard(PhaseTimeline(None, ()), transition_s=opts.transition_s)
        self.scenario_name: str | None = None
        self.duration_s = opts.duration_s
        self.realtime_factor = 1.0
        self._t0: float | None = None
        self._wall_s = 0.0
        self._end_s: float | None = None
        self._plan: list[Phase] = []
        self._summary: dict[str, Any] | None = None

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
        self.monitor = Monitor(self.monitor_node, self.scoreboard, PERCEPTION_NODE)
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
        return "the perception node failed to configure (its error is logged above)"

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
        if scenario_file:  # our own copy: the node's one has its own event cursor
            scenario = load_scenario(resolve_config_file(scenario_file), self.sim.sensors)
            self.scenario_name = Path(scenario_file).stem
            if self.duration_s is None:
                self.duration_s = scenario.duration_s or (
                    max((e.t for e in scenario.events), default=0.0) + TAIL_AFTER_LAST_EVENT_S)
        if scenario is not None and self.duration_s is not None:  # the view shows phase ends
            plan = PhaseTimeline(copy.deepcopy(scenario), list(self.sim.sensors))
            self._plan = plan.phases(self.duration_s)
        self.scoreboard = Scoreboard(PhaseTimeline(scenario, list(self.sim.sensors)),
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
        return self.duration_s is not None and self.t_s() >= self.duration_s

    def snapshot(self, log_tail: Sequence[str] = ()) -> LiveState:
        t = self.t_s()
        phase = self.scoreboard.phase_now(t)
        planned = [p for p in self._plan if p.start_s == phase.start_s]
        phase = planned[0] if planned else phase
        rows, rec, truth, kind = self.monitor.view() if self.monitor else ([], None, "", "")
        total = self.scoreboard.total
        wall = time.monotonic() - self._t0 if self._t0 else 0.0
        title = f"omnibind-bringup [{self.scenario_name or 'no scenario'}]"
        return LiveState(
            t_s=t, duration_s=self.duration_s, phase=phase.label,
            phase_range=(phase.start_s, phase.end_s) if self.scenario_name else None,
            sensors=rows, recognition=rec, truth=truth, verdict=kind,
            recognitions=self.scoreboard.received,
            per_s=self.scoreboard.received / wall if wall > 0 else 0.0,
            answered_fraction=_ratio(self.scoreboard.received_answered,
                                     self.scoreboard.received),
            accuracy=_ratio(total.correct, total.scored), scored=total.scored, title=title,
            log_tail=log_tail)

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
        summary = self._summary_dict(self._end_s, clean)
        for node in (self.sim, self.monitor_node, self.perception):
            if node is not None:
                node.destroy_node()
        if self.context is not None and self.context.ok():
            import rclpy

            rclpy.shutdown(context=self.context)
        self._summary = summary
        return summary

    def _summary_dict(self, end_s: float, clean: bool) -> dict[str, Any]:
        scores = self.scoreboard.summary(end_s, self.realtime_factor)
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
                "sim": sim if self.sim is not None else None, "clean_shutdown": clean}


# ---------------------------------------------------------------------------------------------
# Running: live view or plain lines

class _StderrToFile:
    """Point fd 2 at a file while the live view owns the terminal, and tail it.

    rcutils (every node's logger) writes to fd 2 directly, below Python's ``sys.stderr``, so
    rich cannot redirect it and the log lines would tear the screen.
    """

    def __init__(self, path: Path, keep: int = 6) -> None:
        self.path = path
        self._lines: deque[str] = deque(maxlen=keep)
        self._rest = b""

    def __enter__(self) -> _StderrToFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sys.stderr.flush()
        self._saved = os.dup(2)
        with open(self.path, "ab") as log:
            os.dup2(log.fileno(), 2)
        self._reader = open(self.path, "rb")  # noqa: SIM115  (closed in __exit__)
        self._reader.seek(0, os.SEEK_END)
        return self

    def tail(self) -> tuple[str, ...]:
        data = self._rest + self._reader.read()
        *lines, self._rest = data.split(b"\n")
        self._lines.extend(ln.decode(errors="replace").rstrip() for ln in lines if ln.strip())
        return tuple(self._lines)

    def __exit__(self, *exc: object) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._reader.close()


def _log_path() -> Path:
    root = Path(os.environ.get("ROS_LOG_DIR") or tempfile.gettempdir())
    return root / f"omnibind-bringup-{os.getpid()}.log"


def _run_live(app: Bringup, stop: threading.Event, console: Any) -> Path:
    from rich.live import Live

    path = _log_path()
    def frame(tail: Sequence[str] = ()) -> Any:
        return render_live(app.snapshot(tail), console.width)

    with _StderrToFile(path) as logs, Live(frame(), console=console, refresh_per_second=4,
                                          redirect_stderr=False) as live:
        app.spin()
        while not stop.wait(_REFRESH_S) and not app.done():
            live.update(frame(logs.tail()))
        app.halt()  # while fd 2 still goes to the file: the nodes log until they stop
        live.update(frame(logs.tail()))
    return path


def _run_plain(app: Bringup, stop: threading.Event, out: TextIO) -> None:
    app.spin()
    phase, next_line = None, 0.0
    while not stop.wait(_REFRESH_S / 2) and not app.done():
        state = app.snapshot()
        if state.phase != phase:
            phase = state.phase
            print(f"[{state.t_s:6.1f} s] phase: {phase}", file=out, flush=True)
        if state.t_s >= next_line:
            print(status_line(state), file=out, flush=True)
            next_line = state.t_s + app.opts.status_every_s


def run_bringup(opts: BringupOptions, *, stop: threading.Event | None = None,
                out: TextIO | None = None, console: Any = None) -> dict[str, Any]:
    """Run until ``stop`` is set or the duration has passed; return the summary dict.

    The caller's process must already have a safe ROS environment (``ensure_safe_ros_env``).
    Raises :class:`BringupError` (after cleaning up) when perception cannot start.
    """
    stop = stop or threading.Event()
    app = Bringup(opts)
    log_file = None
    try:
        app.start()
        if opts.ui:
            from rich.console import Console

            log_file = _run_live(app, stop, console or Console())
        else:
            _run_plain(app, stop, out or sys.stdout)
    finally:
        summary = app.close()
    summary["log_file"] = str(log_file) if log_file else None
    return summary


# ---------------------------------------------------------------------------------------------
# CLI

def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnibind-bringup", description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog="Arguments after --ros-args are passed to ROS (e.g. --ros-args --log-level warn).")
    parser.add_argument("--params-file", type=Path, default=config_file("perception.yaml"),
                        help="perception parameters (default: the package's "
                             "config/perception.yaml, as the launch file)")
    parser.add_argument("--sim", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the simulated sensors (default: on)")
    parser.add_argument("--sim-params-file", type=Path, default=config_file("sim_sensors.yaml"),
                        help="simulated sensors' parameters (default: config/sim_sensors.yaml)")
    parser.add_argument("--scenario", default=None,
                        help="hot-plug scenario: a path or a name under config/scenarios "
                             "(e.g. hotplug_demo, quick_unplug); default: the sim params "
                             "file's scenario_file (none)")
    parser.add_argument("--duration", type=_positive, default=None, metavar="S",
                        help="stop after S seconds (stream seconds with the simulator); "
                             "default: the scenario's length, else run until Ctrl-C")
    parser.add_argument("--bundle", default=None, metavar="PATH",
                        help="model bundle (overrides bundle_path; default: the params "
                             "file's, else <cache>/bundles/default)")
    parser.add_argument("--backend", default=None,
                        help="inference backend (onnxruntime, torch, tensorrt, auto)")
    parser.add_argument("--namespace", default="", help="namespace of the nodes")
    parser.add_argument("--realtime-factor", type=_positive, default=None,
                        help="stream seconds per wall second of the simulator")
    parser.add_argument("--transition", type=float, default=0.5, metavar="S",
                        help="answers within S s after an object change are not scored "
                             "(default 0.5)")
    parser.add_argument("--large-messages", action="store_true",
                        help="load the Fast DDS shared-memory profile (sensors in other "
                             "processes sending messages over ~512 KB)")
    parser.add_argument("--no-ui", action="store_true",
                        help="plain status lines instead of the live view (default when "
                             "stdout is not a terminal)")
    parser.add_argument("--summary-json", type=Path, default=None, metavar="PATH",
                        help="also write the summary as JSON")
    return parser


def _split_ros_args(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--ros-args" not in argv:
        return argv, []
    i = argv.index("--ros-args")
    return argv[:i], argv[i:]


def options_from_args(args: argparse.Namespace, ros_args: Sequence[str],
                      is_terminal: bool) -> BringupOptions:
    return BringupOptions(
        params_file=args.params_file, sim=args.sim, sim_params_file=args.sim_params_file,
        scenario=args.scenario, duration_s=args.duration, bundle=args.bundle,
        backend=args.backend, namespace=args.namespace, realtime_factor=args.realtime_factor,
        transition_s=args.transition, ui=not args.no_ui and is_terminal,
        ros_args=list(ros_args))


def _install_stop_handlers(stop: threading.Event) -> Callable[[], None]:
    """First Ctrl-C/SIGTERM: orderly stop; a second one: exit at once. Returns the undo."""
    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            os._exit(130)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(sig, prev) for sig, prev in previous.items()]  # type: ignore


def _check_files(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for opt, path in (("--params-file", args.params_file),
                      ("--sim-params-file", args.sim_params_file if args.sim else None)):
        if path is not None and not Path(path).is_file():
            parser.error(f"{opt}: no such file: {path}")
    if args.scenario and not args.sim:
        parser.error("--scenario drives the simulated sensors: it needs --sim")


def main(argv: list[str] | None = None) -> int:
    ensure_safe_ros_env()
    own, ros_args = _split_ros_args(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(own)
    _check_files(parser, args)
    if args.large_messages:  # before rclpy is imported (run_bringup imports it)
        ensure_safe_ros_env(large_messages=True)
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped: rich would squeeze tables into 80 columns
        console = Console(width=120)
    opts = options_from_args(args, ros_args, console.is_terminal)
    stop = threading.Event()
    restore = _install_stop_handlers(stop)
    try:
        summary = run_bringup(opts, stop=stop, console=console)
    except BringupError as exc:
        print(f"omnibind-bringup: error: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:  # a scenario name that resolves to nothing
        print(f"omnibind-bringup: error: {exc}", file=sys.stderr)
        return 2
    finally:
        restore()
    for part in render_summary(summary):
        console.print(part)
    if args.summary_json:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
