"""The bag player of live evaluation: a bag's messages and ``/clock``, published in real time.

:class:`Player` publishes ``/clock`` (``rosgraph_msgs/Clock``, every ``clock_period_ns`` of bag
time) and every mapped topic's messages as the raw CDR bytes of the bag (rclpy's
``Publisher.publish`` takes ``bytes``: nothing is deserialised), each at its log time / ``rate``
on the wall clock. It publishes ``/clock`` = the bag's first log time before the node is
configured, so the node's availability monitor starts on the bag's clock; holds there until the
node is active and its subscriptions are matched; plays; then keeps playing ``/clock`` for
``tail_ns`` of bag time after the last message so the last ticks come out.

By default it runs in a **child process** (its own interpreter and rclpy context; see
:class:`PlayerHandle`): a robot's sensor drivers are other processes, so the node then receives
the bag over DDS between processes as it would from them, and the player's pacing never waits
for the node's GIL. ``process=False`` plays from a thread of the caller's process
(``benchmarks/bench_bag.py --in-process-player`` compares the two).
"""
from __future__ import annotations

import contextlib
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnibind_ros.bag.errors import LiveEvalError
from omnibind_ros.core.names import CLOCK_TOPIC
from omnibind_ros.scoring import percentiles

__all__ = ["CLOCK_PERIOD_NS", "PlaybackPlan", "PlaybackStats", "Player", "PlayerHandle",
           "TAIL_NS", "header_stamp_ns"]

NS = 1_000_000_000
#: /clock every 10 ms of bag time: the node's timers (20 Hz monitor, 10 Hz fusion heartbeat)
#: see their times with at most 10 ms of quantisation; rosbag2's ``--clock`` default is 40 Hz.
CLOCK_PERIOD_NS = 10_000_000
#: /clock played after the last message so that answers to the last inputs come out.
TAIL_NS = 1_000_000_000
#: While holding, /clock is republished this often (wall s): a late-joining subscription (the
#: node's time source is best effort, volatile) gets the bag time within this.
HOLD_REPUBLISH_S = 0.05
#: Longest wait (wall s) for the player's publishers to match the node's subscriptions.
MATCH_WAIT_S = 10.0
PLAYER_NAME = "omnibind_bag_player"


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
    messages_read, last_log_ns : messages read from the bag (every topic, played or not), log
        time of the last one (the end of the evaluated span, as offline).
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


class Player:
    """Publishes a bag's messages and ``/clock`` on a node (see the module docstring).

    Not spun by any executor: it only publishes, from the thread that calls :meth:`hold` and
    :meth:`play`. ``position_ns`` is the bag time reached (read by a progress bar).
    """

    def __init__(self, node: Any, plan: PlaybackPlan) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        from omnibind_ros.ros.interfaces import has_header, message_class

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
            self._headers[topic] = has_header(msgtype)
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
            # Every message of the bag is read, the planned topics' are published: a damaged
            # bag then stops at the message offline evaluation stops at, named by the same
            # index among the bag's messages (a topic-filtered read counts only its own).
            for msg in iter_messages(plan.bag):
                if stop():
                    break
                stats.messages_read += 1
                last = msg.log_time_ns
                if msg.topic not in self._pubs:
                    continue
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
        except BagReadError as exc:
            stats.error = str(exc)
        stats.last_log_ns = last if stats.messages_read else None
        clock_until(last + plan.tail_ns)
        stats.wall_s = time.monotonic() - wall0
        stats.lag_s = percentiles(lags)
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
    """Main of the player's child process (``python -c``; see :class:`PlayerHandle`).

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


class PlayerHandle:
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
        code = ("import sys; from omnibind_ros.bag.player import _player_child; "
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


