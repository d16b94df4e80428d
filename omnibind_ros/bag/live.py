"""Live evaluation: replay a bag on its topics with ``/clock``, run the real perception node with
``use_sim_time``, record what it publishes and score it like the offline evaluation.

Where offline mode (:mod:`.offline`) is the "infinitely fast machine" reference, live mode is the
node as deployed: the same :class:`~omnibind_ros.ros.perception_lifecycle.PerceptionNode`, its
QoS, its encoder threads, its executor, racing a bag played at ``rate`` times real time. The gap
between the two on one bag is what the machine costs (late embeddings, frames replaced in a
depth-1 queue, ticks that had to wait).

The pieces, in one process unless said otherwise:

* **player** (:class:`Player`): publishes ``/clock`` (``rosgraph_msgs/Clock``, every
  ``clock_period_ns`` of bag time) and every mapped topic's messages as the raw CDR bytes of the
  bag (rclpy's ``Publisher.publish`` takes ``bytes``: nothing is deserialised), each at its log
  time / ``rate`` on the wall clock. It publishes ``/clock`` = the bag's first log time before
  the node is configured, so the node's availability monitor starts on the bag's clock; holds
  there until the node is active and its subscriptions are matched; plays; then keeps playing
  ``/clock`` for ``tail_ns`` of bag time after the last message so the last ticks come out.
  By default it runs in a **child process** (its own interpreter and rclpy context; see
  :class:`_PlayerHandle`): a robot's sensor drivers are other processes, so the node then
  receives the bag over DDS between processes as it would from them, and the player's pacing
  never waits for the node's GIL (which matters on machines with more cores than busy
  threads). Measured on the 2-core development machine (shared, load average 3-4), default
  bundle, 30 s ``hotplug_demo`` bag, rate 1.0, three alternating runs each: publish lag
  p95 5.9-6.6 ms, max 83-114 ms from the child process; p95 3.2-5.3 ms, max 67-81 ms from a
  thread of the node's process; live accuracy 89.2-92.4 % and 89.3-92.7 %. So on 2 cores an
  in-process player keeps up as well (its work is ~200 publishes per bag second; the machine's
  load, not the GIL, makes the lag), and either gives live accuracy within 0.5 point of
  offline on the 2-minute bag (``benchmarks/bench_bag.py [--in-process-player]``).
  ``player_process=False`` plays from a thread.
* **node**: the PerceptionNode with ``use_sim_time:=true`` (a parameter override on top of the
  node's YAML, like ``omnibind-bringup``'s ``--bundle``), configured and activated here
  (``autostart``) once its clock has the bag's time.
* **recorder**: a node (also ``use_sim_time``) subscribed to ``~/recognition``,
  ``~/sensor_status`` and ``/diagnostics``; a tick's time is the recorder's ``/clock`` time at
  receipt (never before the Recognition's stamp).

Everything in the node's process is spun by :class:`~omnibind_ros.ros.executor.PoolSafeExecutor`
(rclpy 9.x's ``MultiThreadedExecutor`` floods its pool; see that module).

Stamps: ``Recognition.header.stamp`` is the newest input fused (the node's rule), so the ground
truth is matched at the same stamp offline and live. ``latency_s`` of a tick is wall-clock
seconds from the player publishing the input whose header stamp is the Recognition's stamp
(the earliest, when several inputs share it) to the recorder receiving the Recognition; a
header-less input (operator text, stamped by the node with its clock on arrival) is timed from
the ``/clock`` message that carried that time. Unanswered ticks carry no reason in the
Recognition message: "no sensor is live" when the node's newest ~/sensor_status has no
fusable sensor, else the text of its ``"<node>: fusion"`` /diagnostics status nearest the tick
when that reports no recognition, else "" (unknown); see :func:`_reason_at`.

Ticks: those received up to the bag's last message are kept; in the tail only ticks that answer
from an input newer than every input answered before (the delayed answers to the last messages
the tail was played for), not heartbeat ticks repeating old embeddings, which offline mode,
ending at the last message, does not have.
"""
from __future__ import annotations

import bisect
import contextlib
import math
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnibind_ros.bag.scoring import (
    EvalResult,
    StateChange,
    TickRecord,
    phases_from_events,
    phases_from_states,
)

__all__ = [
    "CLOCK_TOPIC", "LiveEvalError", "PlaybackPlan", "PlaybackStats", "Player", "evaluate_live",
    "header_stamp_ns", "state_changes", "tick_records",
]

NS = 1_000_000_000
CLOCK_TOPIC = "/clock"
SCENARIO_EVENT_TOPIC = "/omnibind/scenario_event"
#: /clock every 10 ms of bag time: the node's timers (20 Hz monitor, 10 Hz fusion heartbeat)
#: see their times with at most 10 ms of quantisation; rosbag2's ``--clock`` default is 40 Hz.
CLOCK_PERIOD_NS = 10_000_000
#: /clock played after the last message so that answers to the last inputs come out.
TAIL_NS = 1_000_000_000
#: While holding, /clock is republished this often (wall s): a late-joining subscription (the
#: node's time source is best effort, volatile) gets the bag time within this.
HOLD_REPUBLISH_S = 0.05
#: Longest wait (wall s) for the node's clock to reach the bag time, and for the player's
#: publishers to match the node's subscriptions.
CLOCK_WAIT_S = 20.0
MATCH_WAIT_S = 10.0
#: After playback, the recorder has received everything once nothing came for this long (wall s).
SETTLE_S = 0.3
EXECUTOR_THREADS = 6
PERCEPTION_NAME = "omnibind_perception"
RECORDER_NAME = "omnibind_bag_recorder"
PLAYER_NAME = "omnibind_bag_player"
_STATES = {0: "UNKNOWN", 1: "LIVE", 2: "STALE", 3: "LOST", 4: "DISABLED", 5: "DEGRADED"}


class LiveEvalError(RuntimeError):
    """Live evaluation cannot run (the node failed to configure, no mapped topic, no clock)."""


# ---------------------------------------------------------------------------------------------
# player (runs in a child process by default: only picklable data crosses)

@dataclass(frozen=True)
class PlaybackPlan:
    """What the player plays (picklable: it is handed to the player's process).

    Attributes
    ----------
    bag : bag path.
    topics : topic -> (message type "pkg/msg/Type", reliable publisher?) of the mapped topics.
    start_ns, end_ns : bag clock span (first and last log time of the bag).
    rate : bag seconds per wall second.
    clock_period_ns, tail_ns : see :data:`CLOCK_PERIOD_NS`, :data:`TAIL_NS`.
    """

    bag: str
    topics: dict[str, tuple[str, bool]]
    start_ns: int
    end_ns: int
    rate: float = 1.0
    clock_period_ns: int = CLOCK_PERIOD_NS
    tail_ns: int = TAIL_NS


@dataclass
class PlaybackStats:
    """What the player did (picklable; returned from the player's process).

    Attributes
    ----------
    published : topic -> messages published.
    lag_s : p50/p95/p99/max of how late (wall s) sensor messages were published.
    late_messages : sensor messages published more than 10 ms after their due time.
    stamp_wall : header stamp (ns) -> earliest monotonic wall time a message with it was published.
    clock_wall : (bag ns, monotonic wall time) of every /clock message published while playing.
    wall_s : seconds from the start of playback to the end of the tail.
    error : the bag read error that ended playback early (its position), or None.
    messages_read, last_log_ns : messages read from the bag, log time of the last one.
    unmatched : topics without a matched subscription when playback started.
    """

    published: dict[str, int] = field(default_factory=dict)
    lag_s: dict[str, float] = field(default_factory=dict)
    late_messages: int = 0
    stamp_wall: dict[int, float] = field(default_factory=dict)
    clock_wall: list[tuple[int, float]] = field(default_factory=list)
    wall_s: float = 0.0
    error: str | None = None
    messages_read: int = 0
    last_log_ns: int | None = None
    unmatched: list[str] = field(default_factory=list)


def header_stamp_ns(raw: bytes) -> int | None:
    """Header stamp of a CDR message whose first field is ``std_msgs/Header`` (None if the
    buffer is too short). CDR: 4 encapsulation bytes (byte 1 odd = little endian), then
    ``builtin_interfaces/Time`` (int32 sec, uint32 nanosec)."""
    if len(raw) < 12:
        return None
    sec, nsec = struct.unpack_from("<iI" if raw[1] & 1 else ">iI", raw, 4)
    return sec * NS + nsec


def _has_header(msgtype: str) -> bool:
    from omnibind_ros.ros.perception_lifecycle import message_class

    fields = message_class(msgtype).get_fields_and_field_types()
    return next(iter(fields.items()), ("", ""))[1] == "std_msgs/Header"


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    import numpy as np

    p50, p95, p99 = np.percentile(np.asarray(values), [50, 95, 99])
    return {"p50": round(float(p50), 6), "p95": round(float(p95), 6),
            "p99": round(float(p99), 6), "max": round(float(max(values)), 6)}


class Player:
    """Publishes a bag's messages and ``/clock`` on a node (see the module docstring).

    Not spun by any executor: it only publishes, from the thread that calls :meth:`hold` and
    :meth:`play`. ``position_ns`` is the bag time reached (read by a progress bar).
    """

    def __init__(self, node: Any, plan: PlaybackPlan) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        from omnibind_ros.ros.perception_lifecycle import message_class

        self.plan = plan
        self._clock_cls = Clock
        self._time_cls = type(Clock().clock)
        self._clock_pub = node.create_publisher(Clock, CLOCK_TOPIC, QoSProfile(depth=1))
        self._pubs: dict[str, Any] = {}
        self._headers: dict[str, bool] = {}
        for topic, (msgtype, reliable) in plan.topics.items():
            qos = QoSProfile(depth=10 if reliable else 5,
                             reliability=ReliabilityPolicy.RELIABLE if reliable
                             else ReliabilityPolicy.BEST_EFFORT)
            self._pubs[topic] = node.create_publisher(message_class(msgtype), topic, qos)
            self._headers[topic] = _has_header(msgtype)
        self.position_ns = plan.start_ns

    def _publish_clock(self, t_ns: int) -> None:
        self._clock_pub.publish(self._clock_cls(
            clock=self._time_cls(sec=t_ns // NS, nanosec=t_ns % NS)))

    def hold(self, go: Callable[[], bool], stop: Callable[[], bool]) -> bool:
        """Publish ``/clock`` = the bag's start until ``go()`` (True) or ``stop()`` (False)."""
        while not stop():
            self._publish_clock(self.plan.start_ns)
            if go():
                return True
            time.sleep(HOLD_REPUBLISH_S)
        return False

    def wait_matched(self, stop: Callable[[], bool], timeout_s: float = MATCH_WAIT_S
                     ) -> list[str]:
        """Wait until every topic's publisher has a subscription; return those that have none.

        Discovery is asynchronous even in one process: without this the first messages would
        go to nobody.
        """
        end = time.monotonic() + timeout_s
        while not stop():
            missing = [t for t, p in self._pubs.items() if p.get_subscription_count() == 0]
            if not missing or time.monotonic() >= end:
                return missing
            self._publish_clock(self.plan.start_ns)
            time.sleep(0.02)
        return []

    def play(self, stop: Callable[[], bool]) -> PlaybackStats:
        """Play the bag, then the tail of ``/clock``; returns what was done.

        A :class:`~omnibind_ros.bag.reader.BagReadError` ends playback where the damage is (its
        position goes to ``PlaybackStats.error``) and the tail is played from there.
        """
        from omnibind_ros.bag.reader import BagReadError, iter_messages

        plan, stats = self.plan, PlaybackStats(published={t: 0 for t in self._pubs})
        wall0 = time.monotonic()
        scale = 1.0 / (plan.rate * NS)
        lags: list[float] = []
        next_clock = plan.start_ns

        def pace(t_ns: int) -> float:
            due = wall0 + (t_ns - plan.start_ns) * scale
            while (left := due - time.monotonic()) > 0:
                time.sleep(min(left, 0.05))
            return due

        def clock_until(t_ns: int) -> None:
            nonlocal next_clock
            while next_clock <= t_ns and not stop():
                pace(next_clock)
                self._publish_clock(next_clock)
                stats.clock_wall.append((next_clock, time.monotonic()))
                self.position_ns = next_clock
                next_clock += plan.clock_period_ns

        last = plan.start_ns
        try:
            for msg in iter_messages(plan.bag, topics=list(self._pubs)):
                if stop():
                    break
                stats.messages_read += 1
                clock_until(msg.log_time_ns)
                due = pace(msg.log_time_ns)
                self._pubs[msg.topic].publish(msg.rawdata)
                now = time.monotonic()
                lags.append(now - due)
                stats.published[msg.topic] += 1
                if self._headers[msg.topic]:
                    stamp = header_stamp_ns(msg.rawdata)
                    if stamp is not None and stamp not in stats.stamp_wall:
                        stats.stamp_wall[stamp] = now
                last = msg.log_time_ns
        except BagReadError as exc:
            stats.error = str(exc)
        stats.last_log_ns = last if stats.messages_read else None
        clock_until(last + plan.tail_ns)
        stats.wall_s = time.monotonic() - wall0
        stats.lag_s = _percentiles(lags)
        stats.late_messages = sum(lag > 0.01 for lag in lags)
        return stats


class _Control:
    """The child's side of the control channel: "go" and "stop" from the parent, read at most
    every 20 ms (the player asks before every message). A vanished parent means stop."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._go = self._stop = False
        self._next = 0.0

    def _poll(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + 0.02
        try:
            while self._conn.poll():
                command = self._conn.recv()
                self._go |= command == "go"
                self._stop |= command == "stop"
        except (EOFError, OSError):
            self._stop = True

    def go(self) -> bool:
        self._poll()
        return self._go

    def stop(self) -> bool:
        self._poll()
        return self._stop


def _player_child(fd: int) -> None:
    """Main of the player's child process (``python -c``; see :class:`_PlayerHandle`).

    Protocol on the connection ``fd``: receives the :class:`PlaybackPlan`, then "go"/"stop";
    sends ``("holding",)`` once /clock is out, ``("playing", unmatched topics, monotonic
    time playback starts)``, then ``("done", PlaybackStats)`` or ``("error", text)``.
    """
    from multiprocessing.connection import Connection

    from omnibind_ros.ros.env import ensure_safe_ros_env

    conn = Connection(fd)
    ensure_safe_ros_env()  # before rclpy: the parent's environment, checked again
    import rclpy
    from rclpy.context import Context
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions

    context = Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    try:
        plan = conn.recv()
        control = _Control(conn)
        node = Node(PLAYER_NAME, context=context)
        player = Player(node, plan)
        conn.send(("holding",))
        stats = PlaybackStats()
        if player.hold(control.go, control.stop):
            unmatched = player.wait_matched(control.stop)
            conn.send(("playing", unmatched, time.monotonic()))
            stats = player.play(control.stop)
            stats.unmatched = unmatched
        conn.send(("done", stats))
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the parent went away or was interrupted: nothing to report to
    except Exception as exc:  # noqa: BLE001  (reported to the parent, which raises it)
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.shutdown(context=context)
        conn.close()


class _PlayerHandle:
    """The player in a child process (default) or in a thread of this process, driven alike.

    The child is a plain ``python -c`` subprocess talking over a socketpair with
    ``multiprocessing.connection`` framing, rather than a ``multiprocessing`` spawn: spawn
    re-imports the caller's ``__main__``, which fails (or re-runs the caller's script) when
    ``evaluate_live`` is called from a script without an ``if __name__ == "__main__"`` guard.
    It gets a session of its own so a Ctrl-C reaches only this process, which stops it in
    order; it also stops by itself when this process vanishes (its socket closes).
    """

    def __init__(self, plan: PlaybackPlan, *, process: bool, context: Any = None) -> None:
        self.plan = plan
        self.process = process
        self._stats: PlaybackStats | None = None
        self._error: str | None = None
        self._play_wall0: float | None = None
        self._node: Any = None
        self.unmatched: list[str] | None = None
        if process:
            self._start_child()
        else:
            from rclpy.node import Node

            self._stop_event = threading.Event()
            self._go_event = threading.Event()
            self._node = Node(PLAYER_NAME, context=context)
            self._player = Player(self._node, plan)
            self._thread = threading.Thread(target=self._run_thread, name="omnibind-bag-player",
                                            daemon=True)
            self._thread.start()

    def _start_child(self) -> None:
        import os
        import socket
        import subprocess
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # this omnibind_ros, even uninstalled
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        code = ("import sys; from omnibind_ros.bag.live import _player_child; "
                "_player_child(int(sys.argv[1]))")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
            env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send(self.plan)

    def _run_thread(self) -> None:
        try:
            if self._player.hold(self._go_event.is_set, self._stop_event.is_set):
                self.unmatched = self._player.wait_matched(self._stop_event.is_set)
                stats = self._player.play(self._stop_event.is_set)
                stats.unmatched = self.unmatched
                self._stats = stats
        except Exception as exc:  # noqa: BLE001  (re-raised by finish())
            self._error = f"{type(exc).__name__}: {exc}"

    @property
    def position_ns(self) -> int:
        """Bag time reached (the child's estimated from its start time and the rate)."""
        if not self.process:
            return self._player.position_ns
        if self._play_wall0 is None:
            return self.plan.start_ns
        played = (time.monotonic() - self._play_wall0) * self.plan.rate * NS
        return min(self.plan.end_ns, self.plan.start_ns + int(played))

    def _receive(self, timeout_s: float) -> None:
        """Handle the child's messages that arrive within ``timeout_s``."""
        try:
            ready = self._conn.poll(timeout_s)
            while ready:
                message = self._conn.recv()
                if message[0] == "error":
                    self._error = message[1]
                elif message[0] == "playing":
                    self.unmatched, self._play_wall0 = message[1], message[2]
                elif message[0] == "done":
                    self._stats = message[1]
                ready = self._conn.poll()
        except (EOFError, OSError):
            if self._stats is None and self._error is None:
                self._error = f"the player process ended (exit code {self._proc.poll()})"
        if self._error:
            raise LiveEvalError(f"player: {self._error}")

    def wait_holding(self, timeout_s: float) -> None:
        """Until the child publishes /clock (it has imported rclpy and read the plan)."""
        if not self.process:
            return
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self._conn.poll(0.1):
                message = self._conn.recv()
                if message[0] == "holding":
                    return
                self._error = message[1] if message[0] == "error" else str(message)
                raise LiveEvalError(f"player: {self._error}")
            if self._proc.poll() is not None:
                raise LiveEvalError(f"the player process ended (exit code "
                                    f"{self._proc.returncode}) before playing")
        raise LiveEvalError(f"the player process did not start within {timeout_s:.0f} s")

    def go(self) -> None:
        if self.process:
            self._conn.send("go")
        else:
            self._go_event.set()

    def running(self) -> bool:
        if not self.process:
            return self._thread.is_alive()
        self._receive(0)
        return self._stats is None and self._proc.poll() is None

    def finish(self, timeout_s: float = 30.0) -> PlaybackStats:
        """Wait for the end of playback (stopping it after ``timeout_s``); its stats."""
        end = time.monotonic() + timeout_s
        while self.running() and time.monotonic() < end:
            time.sleep(0.05)
        self.close()
        if self._error:
            raise LiveEvalError(f"player: {self._error}")
        if self._stats is None:
            raise LiveEvalError("the player ended without reporting (see its log above)")
        return self._stats

    def close(self) -> None:
        """Stop and reap the player (idempotent)."""
        if not self.process:
            self._stop_event.set()
            self._thread.join(10.0)
            if self._node is not None:
                self._node.destroy_node()
                self._node = None
            return
        if self._conn.closed:
            return
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        try:
            self._proc.wait(10.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()  # our own child, by its handle
            self._proc.wait(5.0)
        self._conn.close()


# ---------------------------------------------------------------------------------------------
# recorder

@dataclass(frozen=True)
class _Received:
    """One Recognition as received (plain data, taken out of the message in the callback)."""

    clock_ns: int
    wall: float
    stamp_ns: int
    best_label: str
    best_score: float
    top_labels: tuple[str, ...]
    sensors: tuple[str, ...]
    modalities: tuple[str, ...]


def _ns(stamp: Any) -> int:
    return int(stamp.sec) * NS + int(stamp.nanosec)


class _Recorder:
    """Subscriptions to the node's outputs; callbacks only copy plain data under a lock."""

    def __init__(self, node: Any, perception: str) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        from omnibind_ros.msg import Recognition, SensorStatusArray
        from omnibind_ros.ros.qos import DIAGNOSTICS, RECOGNITION, SENSOR_STATUS, copy_qos

        self._node = node
        self._lock = threading.Lock()
        self._fusion_status = f"{perception}: fusion"
        self.recognitions: list[_Received] = []
        #: (stamp ns, [(sensor, state, reason)]) per SensorStatusArray
        self.statuses: list[tuple[int, list[tuple[str, str, str]]]] = []
        #: (stamp ns, message) of the node's fusion diagnostic status
        self.fusion_diags: list[tuple[int, str]] = []
        self.last_wall = time.monotonic()
        rec_qos, status_qos, diag_qos = (copy_qos(p) for p in (RECOGNITION, SENSOR_STATUS,
                                                               DIAGNOSTICS))
        rec_qos.depth = 1000  # a busy executor must not lose ticks
        status_qos.depth = diag_qos.depth = 100
        node.create_subscription(Recognition, f"/{perception}/recognition",
                                 self._on_recognition, rec_qos)
        node.create_subscription(SensorStatusArray, f"/{perception}/sensor_status",
                                 self._on_status, status_qos)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics,
                                 diag_qos)

    def _on_recognition(self, msg: Any) -> None:
        rec = _Received(
            clock_ns=self._node.get_clock().now().nanoseconds, wall=time.monotonic(),
            stamp_ns=_ns(msg.header.stamp), best_label=msg.best_label,
            best_score=float(msg.best_score), top_labels=tuple(msg.top_labels),
            sensors=tuple(msg.sensors), modalities=tuple(msg.modalities))
        with self._lock:
            self.recognitions.append(rec)
            self.last_wall = rec.wall

    def _on_status(self, msg: Any) -> None:
        entry = (_ns(msg.header.stamp),
                 [(s.name, _STATES.get(int(s.state), str(s.state)), s.reason)
                  for s in msg.sensors])
        with self._lock:
            self.statuses.append(entry)

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.name == self._fusion_status:
                with self._lock:
                    self.fusion_diags.append((_ns(msg.header.stamp), status.message))

    def count(self) -> int:
        with self._lock:
            return len(self.recognitions)


# ---------------------------------------------------------------------------------------------
# turning what was recorded into TickRecords / StateChanges (ROS-free, unit-testable)

_NO_RECOGNITION = "no recognition: "


#: A /diagnostics fusion status this far (node clock) from a tick may describe it.
REASON_WINDOW_NS = 1_500_000_000


def _fusable(state: str, reason: str) -> bool:
    return state == "LIVE" or (state == "DEGRADED" and reason.startswith("rate "))


def _reason_at(tick_ns: int, diags: Sequence[tuple[int, str]],
               statuses: Sequence[tuple[int, Sequence[tuple[str, str, str]]]]) -> str:
    """The no-answer reason of a tick at node time ``tick_ns`` (both lists sorted by time).

    The Recognition message has no reason field, so: "no sensor is live" when the newest
    ~/sensor_status at or before the tick has no fusable sensor (the node's exact wording and
    condition: a sensor that is not LIVE, or DEGRADED by rate, is never fusable); otherwise the
    node's "<node>: fusion" /diagnostics status reporting no recognition nearest after the tick,
    else nearest before it (within :data:`REASON_WINDOW_NS`); else "" (unknown).
    """
    i = bisect.bisect_right([t for t, _ in statuses], tick_ns) - 1
    if i < 0 or not any(_fusable(state, reason) for _, state, reason in statuses[i][1]):
        return "no sensor is live"
    times = [t for t, _ in diags]
    j = bisect.bisect_left(times, tick_ns)
    after = [k for k in range(j, len(diags)) if diags[k][0] - tick_ns <= REASON_WINDOW_NS]
    before = [k for k in range(j - 1, -1, -1) if tick_ns - diags[k][0] <= REASON_WINDOW_NS]
    for k in (*after[:1], *before[:1]):
        if diags[k][1].startswith(_NO_RECOGNITION):
            return diags[k][1][len(_NO_RECOGNITION):]
    return ""


#: Stamps come back from the node through float seconds (``header.stamp`` -> ``stamp_s`` ->
#: ``Recognition.header.stamp``): at 1.7e9 s a float64 keeps ~0.24 us, so a stamp is matched to
#: the nearest input stamp within this.
STAMP_MATCH_NS = 1_000


def _nearest(keys: Sequence[int], t_ns: int) -> int | None:
    """Index of the key nearest ``t_ns`` within :data:`STAMP_MATCH_NS` (keys sorted)."""
    i = bisect.bisect_left(keys, t_ns)
    best = min((j for j in (i - 1, i) if 0 <= j < len(keys)),
               key=lambda j: abs(keys[j] - t_ns), default=None)
    return best if best is not None and abs(keys[best] - t_ns) <= STAMP_MATCH_NS else None


class _InputWall:
    """Wall time at which the player published the input with a given header stamp; for
    header-less inputs (stamped by the node with its clock) the /clock that carried it."""

    def __init__(self, stamp_wall: dict[int, float],
                 clock_wall: Sequence[tuple[int, float]]) -> None:
        self._stamps = sorted(stamp_wall)
        self._walls = [stamp_wall[s] for s in self._stamps]
        clocks = sorted(clock_wall)
        self._clocks = [c for c, _ in clocks]
        self._clock_walls = [w for _, w in clocks]

    def __call__(self, stamp_ns: int) -> float | None:
        i = _nearest(self._stamps, stamp_ns)
        if i is not None:
            return self._walls[i]
        i = _nearest(self._clocks, stamp_ns)
        return None if i is None else self._clock_walls[i]


def tick_records(received: Iterable[_Received], *, last_ns: int,
                 diags: Sequence[tuple[int, str]] = (),
                 statuses: Sequence[tuple[int, Sequence[tuple[str, str, str]]]] = (),
                 stamp_wall: dict[int, float] | None = None,
                 clock_wall: Sequence[tuple[int, float]] = ()) -> tuple[list[TickRecord], int]:
    """TickRecords of the received Recognitions, in time order, and the number of tail ticks
    dropped (see the module docstring: ticks after ``last_ns`` are kept only when they answer
    from a new input)."""
    input_wall = _InputWall(stamp_wall or {}, clock_wall)
    diags = sorted(diags)
    statuses = sorted(statuses, key=lambda s: s[0])
    ticks: list[TickRecord] = []
    newest_answered = -1
    dropped = 0
    for rec in sorted(received, key=lambda r: (max(r.clock_ns, r.stamp_ns), r.wall)):
        answered = bool(rec.best_label)
        t_ns = max(rec.clock_ns, rec.stamp_ns)  # the recorder's clock may trail the node's
        if t_ns > last_ns and not (answered and rec.stamp_ns > newest_answered):
            dropped += 1
            continue
        latency = None
        if answered:
            newest_answered = max(newest_answered, rec.stamp_ns)
            wall = input_wall(rec.stamp_ns)
            latency = None if wall is None else max(0.0, rec.wall - wall)
        ticks.append(TickRecord(
            t_ns=t_ns, stamp_ns=rec.stamp_ns if answered else None,
            sensors=rec.sensors, modalities=rec.modalities, best_label=rec.best_label,
            top_labels=rec.top_labels,
            no_answer_reason="" if answered else _reason_at(rec.stamp_ns, diags, statuses),
            latency_s=latency, best_score=rec.best_score if answered else 0.0))
    return ticks, dropped


def state_changes(statuses: Iterable[tuple[int, Sequence[tuple[str, str, str]]]]
                  ) -> list[StateChange]:
    """One StateChange per sensor whenever its state (or, for DEGRADED, the kind of verdict:
    rate or quality, which decides whether it is fused) differs from the previous status."""
    last: dict[str, tuple[str, bool]] = {}
    out: list[StateChange] = []
    for t_ns, sensors in sorted(statuses, key=lambda s: s[0]):
        for name, state, reason in sensors:
            key = (state, state == "DEGRADED" and reason.startswith("rate "))
            if last.get(name) != key:
                last[name] = key
                out.append(StateChange(t_ns, name, state, reason))
    return out


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
                 used: Iterable[str]) -> tuple[dict[str, tuple[str, bool]], dict[str, str]]:
    """(topics to play, skipped topic -> why), as offline mode maps them. ``used``: topics the
    evaluator reads itself (ground truth, scenario events): neither played nor skipped."""
    from omnibind_ros.bag.config import map_topics
    from omnibind_ros.ros.conversions import normalise_msg_type

    mapped, skipped = map_topics(bag_topics, sensors, used)
    play = {topic: (normalise_msg_type(bag_topics[topic][0]), sensor.reliable)
            for topic, sensor in mapped.items()}
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
                  truth_topic: str = "/omnibind/ground_truth", backend: str = "onnxruntime",
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
    LiveEvalError : the node failed to configure (bad bundle), no topic of the bag is one the
        node listens to, or the node never received the bag's /clock.
    FileNotFoundError, BagReadError : the bag cannot be opened at all.

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
    # Ground truth and scenario events first: a bad CSV fails before minutes of playback.
    truth = _load_truth(bag, truth_csv, truth_topic, info)
    events, side_error = _scenario_events(bag, info.topics)

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
                                            used=(truth_topic, SCENARIO_EVENT_TOPIC))
        if not plan_topics:
            raise LiveEvalError(
                f"no topic of {bag} is a sensor topic of the node config {config} "
                f"(bag topics: {sorted(info.topics) or 'none'}; node topics: "
                f"{[s.topic for s in sensors]})")
        recorder_node = Node(RECORDER_NAME, context=context,
                             parameter_overrides=[Parameter("use_sim_time", value=True)])
        recorder = _Recorder(recorder_node, perception.get_name())
        executor = PoolSafeExecutor(num_threads=EXECUTOR_THREADS, context=context)
        executor.add_node(perception)
        executor.add_node(recorder_node)
        thread = threading.Thread(target=executor.spin, name="omnibind-bag-live-executor",
                                  daemon=True)
        thread.start()

        plan = PlaybackPlan(str(bag), plan_topics, info.start_ns, info.end_ns, float(rate))
        player = _PlayerHandle(plan, process=player_process, context=context)
        player.wait_holding(timeout_s=60.0)
        clocks = (perception, recorder_node)
        if not _wait(lambda: all(n.get_clock().now().nanoseconds >= info.start_ns
                                 for n in clocks), CLOCK_WAIT_S):
            raise LiveEvalError(f"the node did not receive {CLOCK_TOPIC} from the player "
                                f"within {CLOCK_WAIT_S:.0f} s")
        if not perception.autostart():
            raise LiveEvalError(_configure_hint(perception))
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
            "player": {"process": bool(player_process), "published": stats.published,
                       "clock_messages": len(stats.clock_wall),
                       "messages_read": stats.messages_read,
                       "unmatched_topics": stats.unmatched},
            "tail_ticks_dropped": dropped,
            "truth_source": ("csv" if truth_csv is not None else
                             truth_topic if truth is not None else None),
            "timing": {"player_lag_s": stats.lag_s, "late_messages": stats.late_messages,
                       "playback_wall_s": round(stats.wall_s, 3)},
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


def _load_truth(bag: Path, truth_csv: Path | str | None, topic: str, info: Any) -> Any:
    """Ground truth as offline mode reads it: the CSV, else the bag's topic, else None."""
    from omnibind_ros.bag.truth import GroundTruth

    if truth_csv is not None:
        return GroundTruth.from_csv(Path(truth_csv), info.start_ns)
    if topic not in info.topics:
        return None
    return GroundTruth.from_bag(bag, topic, end_ns=info.end_ns)
