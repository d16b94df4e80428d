"""What an evaluation produced (ticks, sensor states, phases) and how it is scored (ROS-free).

Shared by offline and live evaluation: both fill an :class:`EvalResult` with one
:class:`TickRecord` per fusion tick and one :class:`StateChange` per sensor state change, and
:func:`score` turns it into JSON-able numbers that ``report.write_report`` renders.

Time base: integer nanoseconds of the bag clock (rosbag2 log time / header stamps share one
epoch); reports show seconds since the bag's first message (``t_s``).

Scoring rules (:mod:`omnibind_ros.scoring`, shared with ``omnibind-bringup``, so a bag scores
like the live demo):

* a *tick* is one fusion tick (one ``~/recognition`` message); it is *answered* when
  ``best_label`` is not empty;
* an answered tick is matched with the ground truth in force at its ``stamp_ns`` (the header
  stamp of the newest sensor sample it fused, on the timeline the ground truth shares); an
  unanswered tick has no stamp and is placed at its tick time ``t_ns``;
* answers less than ``transition_s`` (0.5 s) after the object changed are *transition*, not
  scored: the other sensors' fused embeddings still show the previous object for up to
  ``fusion.max_age_s``; answers at a time no ground truth covers are *unscored*;
* accuracy = correct / scored answers; top-k accuracy = the truth is among ``top_labels``;
* per combination: keyed by the sorted set of fused modalities (``"image+point_cloud"``; two
  cameras are one modality) and, separately, by the sorted fused sensor names;
* per phase: the dropout phase (:class:`Phase`) the tick's time falls in;
* over time: the same counts per ``bin_s`` bin of tick time;
* unanswered ticks are grouped by the kind of reason (numbers and sensor lists stripped) with
  one full example each;
* ``input_age_s`` is ``t_ns - stamp_ns`` on the bag clock (how old the newest fused sample was
  at the tick; deterministic offline). ``latency_s`` is wall-clock (live: input to
  recognition; offline: compute time) and therefore kept apart from the deterministic numbers
  (``score(...)["timing"]``).
"""
from __future__ import annotations

import bisect
import difflib
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omnibind_ros.core.calibration import reliability
from omnibind_ros.scoring import (
    NS,
    VERDICTS,
    Phase,
    PhaseTimeline,
    SensorEvent,
    Tally,
    in_top_k,
    percentiles,
    phase_label,
    s_to_ns,
    verdict,
)

if TYPE_CHECKING:  # scoring only calls interval_at
    from omnibind_ros.bag.truth import GroundTruth

__all__ = [
    "EvalResult", "NS", "Phase", "StateChange", "TickRecord", "VERDICTS", "auto_bin_s",
    "phases_from_events", "phases_from_states", "reason_kind", "score",
    "sensor_state_seconds", "tick_verdict", "truth_label_warnings",
]

#: Monitor states that keep a sensor in (or eligible for) fusion; the others end a phase.
FUSABLE_STATES = ("LIVE",)
#: Candidate widths (s) of the over-time bins; the smallest giving at most MAX_BINS is used.
BIN_WIDTHS_S = (1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
MAX_BINS = 40
#: Ratios and percentiles of a report are rounded to this many digits (stable JSON).
DIGITS = 6


@dataclass(frozen=True)
class TickRecord:
    """One fusion tick.

    Attributes
    ----------
    t_ns : bag-clock time of the tick (live: the /clock time at which it was received).
    stamp_ns : header stamp of the Recognition (newest input fused); None without an answer.
    sensors, modalities : fused sensors and their modalities (parallel, token order).
    best_label : "" = no answer.
    top_labels : the k best labels, best first.
    no_answer_reason : why there is no answer; "" when answered (live: may be unknown, "").
    latency_s : wall-clock seconds (live: input to recognition; offline: compute time); None
        when not measured.
    best_score : probability of ``best_label`` (0 without an answer).
    confidence : the answer's calibrated confidence (``Recognition.confidence``; 0 without an
        answer).
    unsure : the node marked the answer unsure (confidence below its threshold).
    """

    t_ns: int
    stamp_ns: int | None
    sensors: tuple[str, ...]
    modalities: tuple[str, ...]
    best_label: str
    top_labels: tuple[str, ...]
    no_answer_reason: str
    latency_s: float | None
    best_score: float = 0.0
    confidence: float = 0.0
    unsure: bool = False

    @property
    def answered(self) -> bool:
        return bool(self.best_label)

    @property
    def when_ns(self) -> int:
        """The time the tick is scored at: its stamp when answered, else its tick time."""
        return self.stamp_ns if self.stamp_ns is not None else self.t_ns


@dataclass(frozen=True)
class StateChange:
    """A sensor entering ``state`` (SensorState name: LIVE, STALE, LOST, DEGRADED...).

    ``reason`` is the monitor's reason (empty for LIVE); a DEGRADED whose reason starts with
    "rate " is a rate verdict (still fused), otherwise a quality one (not fused).
    """

    t_ns: int
    sensor: str
    state: str
    reason: str = ""

    @property
    def fusable(self) -> bool:
        return self.state in FUSABLE_STATES or (
            self.state == "DEGRADED" and self.reason.startswith("rate "))


@dataclass
class EvalResult:
    """Everything one evaluation (offline or live) recorded; input of :func:`score`.

    Attributes
    ----------
    bag : path of the bag, as given.
    mode : "offline" or "live".
    ticks : fusion ticks in time order.
    states : sensor state changes in time order.
    truth : ground truth (None: nothing is scored, only answered/unanswered counted).
    phases : dropout phases covering [start_ns, end_ns).
    sensors : configured sensor names, in configuration order.
    skipped_topics : topic -> why it was not used (unknown topic, unsupported type...).
    error : a read error that ended the evaluation early (position included); None if clean.
    wall_s : wall-clock seconds the evaluation took.
    extra : mode-specific metadata (JSON-able); keys under "timing" are wall-clock figures.
    start_ns, end_ns : bag-clock span evaluated (first to last message read).
    modalities : sensor -> modality.
    """

    bag: str
    mode: str
    ticks: list[TickRecord]
    states: list[StateChange]
    truth: GroundTruth | None
    phases: list[Phase]
    sensors: list[str]
    skipped_topics: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    start_ns: int = 0
    end_ns: int = 0
    modalities: dict[str, str] = field(default_factory=dict)

    def t_s(self, t_ns: int) -> float:
        """Seconds since the bag's first message."""
        return (t_ns - self.start_ns) / NS

    @property
    def warnings(self) -> list[str]:
        """What makes the scores misleading: configured sensors the bag never feeds
        (``extra["sensor_warnings"]``, :mod:`omnibind_ros.bag.sensor_check`) and ground-truth
        labels outside the label set (``extra["labels"]``)."""
        return [*(self.extra.get("sensor_warnings") or []),
                *truth_label_warnings(self.truth, self.extra.get("labels") or [])]


def truth_label_warnings(truth: Any, labels: Sequence[str]) -> list[str]:
    """One warning per ground-truth label the model cannot answer (not in ``labels``): every
    tick of it is scored wrong, silently otherwise (a relabelled interval, a typo, another
    naming scheme). Names the nearest label by spelling (``difflib``)."""
    if truth is None or not labels:
        return []
    known = set(labels)
    out = []
    for label in truth.labels():
        if label in known:
            continue
        nearest = difflib.get_close_matches(label, list(labels), n=1, cutoff=0.0)
        out.append(f"ground-truth label {label!r} is not in the label set, so every tick of "
                   f"it is scored wrong; nearest label: {nearest[0]!r}")
    return out


# ---------------------------------------------------------------------------------------------
# phases


def phases_from_events(events: Iterable[tuple[int, Any]], sensors: Sequence[str],
                       start_ns: int, end_ns: int) -> list[Phase]:
    """Dropout phases from the scenario events recorded in a bag.

    Parameters
    ----------
    events : ``(log_time_ns, payload)`` of each ``/omnibind/scenario_event`` message; payload
        is the JSON text (or the parsed dict) ``{"t_s", "action", "sensors"}``, with ``kind``
        for a ``degrade_on`` (the phase says "camera dark", not "camera degraded"). The log time
        is the event's time on the bag clock (the messages have no header).
    sensors : sensor names in configuration order (labels list them in this order).
    start_ns, end_ns : span to cover.

    The shared :class:`~omnibind_ros.scoring.PhaseTimeline` labels the phases, so a bag and
    the live demo name them alike. Event times are the log times (exact nanoseconds), so a bag
    whose stream origin differs from its first message still places them exactly.
    """
    parsed: list[SensorEvent] = []
    for log_ns, payload in events:
        data = json.loads(payload) if isinstance(payload, str | bytes) else dict(payload)
        names = data.get("sensors", data.get("sensor", []))
        names = (names,) if isinstance(names, str) else tuple(names)
        parsed.append((int(log_ns), str(data["action"]), names, data.get("kind")))
    return PhaseTimeline(sensors, parsed, start_ns=start_ns).phases(end_ns)


def phases_from_states(states: Sequence[StateChange], sensors: Sequence[str],
                       start_ns: int, end_ns: int) -> list[Phase]:
    """Dropout phases from the monitor's verdicts (bags without scenario events).

    A phase is a maximal interval with one set of sensors out of fusion: a sensor DEGRADED by
    quality counts as "noisy", one that is STALE, LOST or DISABLED as "unplugged" (a bag cannot
    tell an unplug from a silent driver). UNKNOWN (waiting for the first sample, within the
    startup grace) counts as in: otherwise every bag would start with a phase of a fraction of
    a second while the sensors' first messages arrive; a sensor that never comes is LOST at
    the end of its grace.
    """
    current: dict[str, StateChange | None] = {name: None for name in sensors}

    def label() -> str:
        out = [n for n in sensors if current[n] is not None
               and current[n].state in ("STALE", "LOST", "DISABLED")]
        noisy = [n for n in sensors if current[n] is not None
                 and current[n].state == "DEGRADED" and not current[n].fusable]
        return phase_label(out, noisy)

    phases: list[Phase] = []
    cursor, cur_label = start_ns, label()
    for t_ns, group in _group_by_time(states):
        for change in group:
            if change.sensor in current:
                current[change.sensor] = change
        new = label()
        if new == cur_label:
            continue
        t = min(max(t_ns, start_ns), end_ns)
        if t > cursor:
            phases.append(Phase(cur_label, cursor, t))
            cursor = t
        cur_label = new
    phases.append(Phase(cur_label, cursor, max(end_ns, cursor)))
    return _merge_equal(phases)


def _group_by_time(states: Sequence[StateChange]) -> list[tuple[int, list[StateChange]]]:
    groups: dict[int, list[StateChange]] = {}
    for change in sorted(states, key=lambda s: s.t_ns):
        groups.setdefault(change.t_ns, []).append(change)
    return list(groups.items())


def _merge_equal(phases: list[Phase]) -> list[Phase]:
    out: list[Phase] = []
    for p in phases:
        if out and out[-1].label == p.label:
            out[-1] = Phase(p.label, out[-1].start_ns, p.end_ns)
        else:
            out.append(p)
    return out


# ---------------------------------------------------------------------------------------------
# scoring


def tick_verdict(tick: TickRecord, truth: GroundTruth | None, transition_ns: int) -> str:
    """no_answer | unscored (no truth at its time) | transition | correct | wrong
    (:func:`omnibind_ros.scoring.verdict` at the tick's :attr:`~TickRecord.when_ns`)."""
    span = truth.interval_at(tick.when_ns) if truth is not None and tick.answered else None
    return verdict(tick.best_label, span, tick.when_ns, transition_ns)


_NUMBER = re.compile(r"-?\d+(\.\d+)?")
_LIST = re.compile(r"\[[^\]]*\]")


def reason_kind(reason: str) -> str:
    """A no-answer reason without its numbers and sensor lists (the grouping key)."""
    if not reason:
        return "unknown (no reason recorded)"
    text = _LIST.sub("[...]", reason)
    text = re.sub(r"\(sensors \[\.\.\.\]\)", "", text)
    return re.sub(r"\s+", " ", _NUMBER.sub("#", text)).strip()


def auto_bin_s(duration_s: float) -> float:
    """The smallest of :data:`BIN_WIDTHS_S` giving at most :data:`MAX_BINS` bins."""
    for width in BIN_WIDTHS_S:
        if duration_s / width <= MAX_BINS:
            return width
    return BIN_WIDTHS_S[-1]


def score(result: EvalResult, *, transition_s: float = 0.5,
          bin_s: float | None = None) -> dict[str, Any]:
    """Score an evaluation (see the module docstring for the rules).

    Parameters
    ----------
    result : the evaluation.
    transition_s : answers this soon after an object change are not scored.
    bin_s : width of the over-time bins in s; None = :func:`auto_bin_s` of the bag span.

    Returns
    -------
    A JSON-able dict with ``overall``, ``by_modalities``, ``by_sensors``, ``by_phase``,
    ``over_time``, ``input_age_s``, ``unanswered``, ``sensor_state_s``, ``verdicts`` (per tick,
    for plots) and ``timing`` (wall-clock figures: ``latency_s``, ``wall_s``, ``ticks_per_s``;
    the only part that differs between two runs of a deterministic evaluation).
    """
    if not transition_s >= 0:
        raise ValueError(f"transition_s must be >= 0, got {transition_s!r}")
    truth = result.truth
    transition_ns = s_to_ns(transition_s)
    span_s = max(0.0, (result.end_ns - result.start_ns) / NS)
    width = float(bin_s) if bin_s else auto_bin_s(span_s)
    if width <= 0:
        raise ValueError(f"bin_s must be > 0, got {bin_s!r}")
    phase_starts = [p.start_ns for p in result.phases]
    last_bin = max(1, math.ceil(span_s / width)) - 1  # a tick at the very end: the last bin

    overall = Tally()
    by_modalities: dict[str, Tally] = defaultdict(Tally)
    by_sensors: dict[str, Tally] = defaultdict(Tally)
    by_phase: dict[int, Tally] = defaultdict(Tally)
    by_bin: dict[int, Tally] = defaultdict(Tally)
    reasons: Counter[str] = Counter()
    examples: dict[str, str] = {}
    verdicts: list[str] = []
    ages: list[float] = []
    latencies: list[float] = []
    judged: list[tuple[TickRecord, bool]] = []  # scored answers: (tick, right?)
    top_k = 0
    for tick in result.ticks:
        span = truth.interval_at(tick.when_ns) if truth is not None else None
        kind = verdict(tick.best_label, span, tick.when_ns, transition_ns)
        top = in_top_k(span, tick.top_labels)
        verdicts.append(kind)
        top_k = max(top_k, len(tick.top_labels))
        overall.add(kind, top)
        if kind in ("correct", "wrong"):
            judged.append((tick, kind == "correct"))
        if tick.answered:
            by_modalities["+".join(sorted(set(tick.modalities))) or "(none)"].add(kind, top)
            by_sensors["+".join(sorted(tick.sensors)) or "(none)"].add(kind, top)
            if tick.stamp_ns is not None:
                ages.append((tick.t_ns - tick.stamp_ns) / NS)
        else:
            reason = reason_kind(tick.no_answer_reason)
            reasons[reason] += 1
            examples.setdefault(reason, tick.no_answer_reason)
        index = _phase_index(phase_starts, tick.when_ns)
        if index is not None:
            by_phase[index].add(kind, top)
        by_bin[min(max(0, math.floor((tick.t_ns - result.start_ns) / NS / width)),
                   last_bin)].add(kind, top)
        if tick.latency_s is not None:
            latencies.append(float(tick.latency_s))

    n_bins = last_bin + 1 if result.ticks else 0
    return {
        "overall": {**overall.stats(ndigits=DIGITS), "top_k": top_k},
        "transition_s": transition_s,
        "by_modalities": _keyed(by_modalities),
        "by_sensors": _keyed(by_sensors),
        "by_phase": [{"label": p.label, "start_s": round(result.t_s(p.start_ns), 6),
                      "end_s": round(result.t_s(p.end_ns), 6),
                      **by_phase.get(i, Tally()).stats(ndigits=DIGITS)}
                     for i, p in enumerate(result.phases)],
        "over_time": {"bin_s": width, "bins": [
            {"start_s": i * width, "end_s": (i + 1) * width,
             **by_bin.get(i, Tally()).stats(ndigits=DIGITS)} for i in range(n_bins)]},
        "input_age_s": percentiles(ages, DIGITS),
        "unanswered": {"ticks": sum(reasons.values()), "reasons": [
            {"reason": kind, "ticks": count, "example": examples[kind]}
            for kind, count in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))]},
        "sensor_state_s": sensor_state_seconds(result),
        "confidence": confidence_scores(judged),
        "verdicts": verdicts,
        "timing": {"latency_s": percentiles(latencies, DIGITS), "wall_s": round(result.wall_s, 3),
                   "ticks_per_s": round(len(result.ticks) / result.wall_s, 2)
                   if result.wall_s > 0 else None},
    }


def confidence_scores(judged: Sequence[tuple[TickRecord, bool]]) -> dict[str, Any]:
    """How far the answers' confidence can be trusted: the reliability bins and ECE of the
    scored answers (:func:`omnibind_ros.core.calibration.reliability`), and the accuracy of
    the answers the node marked unsure against the others. Empty bins/None without answers."""
    if not judged:
        return {"reliability": None, "unsure": {"ticks": 0, "accuracy": None},
                "sure": {"ticks": 0, "accuracy": None}}
    rel = reliability([min(1.0, max(0.0, t.confidence)) for t, _ in judged],
                      [right for _, right in judged])

    def part(unsure: bool) -> dict[str, Any]:
        hits = [right for t, right in judged if t.unsure == unsure]
        return {"ticks": len(hits),
                "accuracy": round(sum(hits) / len(hits), DIGITS) if hits else None}
    return {"reliability": rel.to_dict(), "unsure": part(True), "sure": part(False)}


def _keyed(tallies: dict[str, Tally]) -> list[dict[str, Any]]:
    """Most ticks first, then by key: a stable order for tables and JSON."""
    items = sorted(tallies.items(), key=lambda kv: (-kv[1].count, kv[0]))
    return [{"key": key, **tally.stats(ndigits=DIGITS)} for key, tally in items]


def _phase_index(starts: list[int], t_ns: int) -> int | None:
    if not starts:
        return None
    return max(0, bisect.bisect_right(starts, t_ns) - 1)


def sensor_state_seconds(result: EvalResult) -> dict[str, dict[str, float]]:
    """Seconds each sensor spent in each state over [start_ns, end_ns] (UNKNOWN before its
    first change)."""
    out: dict[str, dict[str, float]] = {}
    by_sensor: dict[str, list[StateChange]] = defaultdict(list)
    for change in sorted(result.states, key=lambda s: s.t_ns):
        by_sensor[change.sensor].append(change)
    for name in result.sensors:
        totals: dict[str, int] = defaultdict(int)
        t, state = result.start_ns, "UNKNOWN"
        for change in by_sensor.get(name, []):
            at = min(max(change.t_ns, result.start_ns), result.end_ns)
            totals[state] += at - t
            t, state = at, change.state
        totals[state] += max(0, result.end_ns - t)
        out[name] = {s: round(v / NS, 6) for s, v in sorted(totals.items()) if v > 0}
    return out
