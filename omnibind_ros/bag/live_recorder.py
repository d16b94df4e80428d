"""What the perception node publishes during live evaluation, recorded and made into ticks.

:class:`Recorder` is a node (``use_sim_time``) subscribed to ``~/recognition``,
``~/sensor_status`` and ``/diagnostics``; a tick's time is its ``/clock`` time at receipt
(never before the Recognition's stamp). :func:`tick_records` and :func:`state_changes` turn
what it received into the records offline evaluation makes, so both are scored alike.

Stamps: ``Recognition.header.stamp`` is the newest input fused (the node's rule), so the ground
truth is matched at the same stamp offline and live. ``latency_s`` of a tick is wall-clock
seconds from the player publishing the input whose header stamp is the Recognition's stamp
(the earliest, when several inputs share it) to the recorder receiving the Recognition; a
header-less input (operator text, stamped by the node with its clock on arrival) is timed from
the ``/clock`` message that carried that time. Unanswered ticks carry no reason in the
Recognition message: "no sensor is live" when the node's newest ~/sensor_status has no
fusable sensor, else the text of its ``"<node>: fusion"`` /diagnostics status nearest the tick
when that reports no recognition, else "" (unknown); see :func:`reason_at`.

Ticks: those received up to the bag's last message are kept; in the tail only ticks that answer
from an input newer than every input answered before (the delayed answers to the last messages
the tail was played for), not heartbeat ticks repeating old embeddings, which offline mode,
ending at the last message, does not have.
"""
from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from omnibind_ros.bag.scoring import StateChange, TickRecord

__all__ = ["Received", "Recorder", "reason_at", "state_changes", "tick_records"]

NS = 1_000_000_000
RECORDER_NAME = "omnibind_bag_recorder"
_STATES = {0: "UNKNOWN", 1: "LIVE", 2: "STALE", 3: "LOST", 4: "DISABLED", 5: "DEGRADED"}


@dataclass(frozen=True)
class Received:
    """One Recognition as received (plain data, taken out of the message in the callback)."""

    clock_ns: int
    wall: float
    stamp_ns: int
    best_label: str
    best_score: float
    top_labels: tuple[str, ...]
    sensors: tuple[str, ...]
    modalities: tuple[str, ...]
    confidence: float = 0.0
    unsure: bool = False


def _ns(stamp: Any) -> int:
    return int(stamp.sec) * NS + int(stamp.nanosec)


class Recorder:
    """Subscriptions to the node's outputs; callbacks only copy plain data under a lock."""

    def __init__(self, node: Any, perception: str) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        from omnibind_ros.msg import Recognition, SensorStatusArray
        from omnibind_ros.ros.qos import DIAGNOSTICS, RECOGNITION, SENSOR_STATUS, copy_qos

        self._node = node
        self._lock = threading.Lock()
        self._fusion_status = f"{perception}: fusion"
        self.recognitions: list[Received] = []
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
        rec = Received(
            clock_ns=self._node.get_clock().now().nanoseconds, wall=time.monotonic(),
            stamp_ns=_ns(msg.header.stamp), best_label=msg.best_label,
            best_score=float(msg.best_score), top_labels=tuple(msg.top_labels),
            sensors=tuple(msg.sensors), modalities=tuple(msg.modalities),
            confidence=float(msg.confidence), unsure=bool(msg.unsure))
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


def reason_at(tick_ns: int, diags: Sequence[tuple[int, str]],
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


class _InputWall:
    """Wall time at which the player published the input with a given header stamp; for
    header-less inputs (stamped by the node with its clock) the /clock that carried it. Stamps
    travel as integer nanoseconds end to end, so they match exactly."""

    def __init__(self, stamp_wall: dict[int, float],
                 clock_wall: Sequence[tuple[int, float]]) -> None:
        self._stamp_wall = dict(stamp_wall)
        self._clock_wall: dict[int, float] = {}
        for clock_ns, wall in sorted(clock_wall):  # the earliest /clock carrying a time
            self._clock_wall.setdefault(clock_ns, wall)

    def __call__(self, stamp_ns: int) -> float | None:
        wall = self._stamp_wall.get(stamp_ns)
        return wall if wall is not None else self._clock_wall.get(stamp_ns)


def tick_records(received: Iterable[Received], *, last_ns: int,
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
            no_answer_reason="" if answered else reason_at(rec.stamp_ns, diags, statuses),
            latency_s=latency, best_score=rec.best_score if answered else 0.0,
            confidence=rec.confidence if answered else 0.0,
            unsure=rec.unsure if answered else False))
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


