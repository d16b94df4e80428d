"""Scoring of recognitions against ground truth, shared by ``omnibind-bringup`` and bag evaluation.

ROS-free (standard library and numpy): the live demo (``omnibind-bringup``'s scoreboard) and
the bag evaluation (:mod:`omnibind_ros.bag.scoring`) both score with these pieces, so the same
answers get the same verdicts, phases and counts in either place.

Time base: integer nanoseconds everywhere. Scenario files give event times in float seconds;
:func:`s_to_ns` converts them once, where a timeline reads them.

Rules:

* :func:`verdict` of one recognition: ``no_answer`` (empty ``best_label``), ``unscored`` (no
  ground truth covers its time), ``transition`` (less than ``transition_ns`` after the object in
  view changed: the fused embeddings of the other sensors still show the previous one),
  ``correct`` or ``wrong``; :func:`in_top_k`: the truth is among its ``top_labels``;
* a :class:`Tally` counts verdicts; accuracy = correct / scored answers (``transition`` and
  ``unscored`` answers are not scored);
* a :class:`Phase` is an interval between sensor events (unplug, replug, noise on/off,
  degrade on/off) with one set of sensors out, labelled by :func:`phase_label` ("all
  sensors", "camera unplugged", "camera+lidar unplugged, tactile noisy", "camera dark",
  "microphone in wind"); :class:`PhaseTimeline` builds them from events. A degraded sensor
  is one more kind of phase, like a noisy one: it is still publishing, so only its label
  tells the phases apart; scenarios without degradations get the phases they always had.
"""
from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from omnibind_ros.sim.scenario import ALL

if TYPE_CHECKING:
    from omnibind_ros.sim.scenario import Scenario

__all__ = [
    "ALL_SENSORS", "DEGRADED_WORDS", "NS", "VERDICTS", "Phase", "PhaseTimeline", "SensorEvent",
    "Tally", "TruthSpan", "in_top_k", "percentiles", "phase_label", "ratio", "s_to_ns",
    "scenario_timeline", "verdict",
]

NS = 1_000_000_000
#: Every verdict :func:`verdict` gives, best first.
VERDICTS = ("correct", "wrong", "transition", "unscored", "no_answer")
#: Label of a phase with every sensor in.
ALL_SENSORS = "all sensors"

#: ``(t_ns, action, sensor names)`` or ``(t_ns, action, sensor names, kind)``: action is
#: unplug, replug, noise_on, noise_off, degrade_on or degrade_off; ``kind`` is the degradation
#: of a degrade_on (None or absent: unknown, labelled "degraded").
SensorEvent = tuple[int, str, Sequence[str]] | tuple[int, str, Sequence[str], str | None]

#: How a phase label names a sensor degraded by a kind (:mod:`omnibind_ros.sim.degrade`):
#: "camera dark", "microphone in wind", "lidar in rain". Unknown kinds read "<sensor> <kind>".
DEGRADED_WORDS = {
    "dark": "dark", "glare": "in glare", "motion_blur": "motion-blurred",
    "occlusion": "occluded", "lens_dirt": "with a dirty lens",
    "hot_saturation": "saturated by a hot source", "reflection": "with reflections",
    "nuc_drift": "with NUC drift", "flicker": "under flicker", "hot_pixels": "with hot pixels",
    "no_motion": "without motion", "partial_contact": "in partial contact",
    "no_contact": "without contact", "slip": "slipping", "wind": "in wind",
    "clipping": "clipping", "dropout": "dropping out", "rain": "in rain", "sparse": "sparse",
}


def s_to_ns(seconds: float) -> int:
    """Seconds to integer nanoseconds (rounded to the nearest)."""
    return round(seconds * NS)


# ---------------------------------------------------------------------------------------------
# verdicts and counts


class TruthSpan(Protocol):
    """What was in front of the sensors at a time: ``label``, shown since ``start_ns``."""

    @property
    def label(self) -> str: ...

    @property
    def start_ns(self) -> int: ...


def verdict(best_label: str, truth: TruthSpan | None, when_ns: int, transition_ns: int) -> str:
    """no_answer | unscored (no truth at ``when_ns``) | transition | correct | wrong.

    Parameters
    ----------
    best_label : the answer; "" = no answer.
    truth : the ground truth in force at ``when_ns``; None where there is none.
    when_ns : the time the answer is scored at (the stamp of the newest input it fused).
    transition_ns : answers less than this after ``truth.start_ns`` are "transition".
    """
    if not best_label:
        return "no_answer"
    if truth is None:
        return "unscored"
    if when_ns - truth.start_ns < transition_ns:
        return "transition"
    return "correct" if best_label == truth.label else "wrong"


def in_top_k(truth: TruthSpan | None, top_labels: Sequence[str]) -> bool:
    """The truth is among the answer's k best labels."""
    return truth is not None and truth.label in top_labels


def ratio(num: int, den: int, ndigits: int | None = None) -> float | None:
    """``num / den`` (rounded to ``ndigits`` when given); None when ``den`` is 0."""
    if not den:
        return None
    return num / den if ndigits is None else round(num / den, ndigits)


@dataclass
class Tally:
    """Counts of verdicts (of a whole run, a phase, a combination, a time bin...)."""

    count: int = 0
    answered: int = 0
    scored: int = 0
    correct: int = 0
    top_k_correct: int = 0
    transition: int = 0
    unscored: int = 0

    def add(self, kind: str, top_k: bool) -> None:
        """Count one recognition of verdict ``kind`` (``top_k``: :func:`in_top_k`)."""
        self.count += 1
        if kind == "no_answer":
            return
        self.answered += 1
        if kind in ("transition", "unscored"):
            setattr(self, kind, getattr(self, kind) + 1)
            return
        self.scored += 1
        self.correct += kind == "correct"
        self.top_k_correct += top_k

    @property
    def accuracy(self) -> float | None:
        return ratio(self.correct, self.scored)

    def stats(self, count_key: str = "ticks", ndigits: int | None = 6) -> dict[str, Any]:
        """JSON-able counts; ``count_key`` names :attr:`count`, ratios rounded to ``ndigits``."""
        return {count_key: self.count, "answered": self.answered,
                "answered_fraction": ratio(self.answered, self.count, ndigits),
                "scored": self.scored, "correct": self.correct,
                "accuracy": ratio(self.correct, self.scored, ndigits),
                "top_k_accuracy": ratio(self.top_k_correct, self.scored, ndigits),
                "transition": self.transition, "unscored": self.unscored}


def percentiles(values: Sequence[float], ndigits: int = 6) -> dict[str, Any]:
    """count, p50, p95, p99, mean and max of ``values`` (None each when there are none)."""
    if not len(values):
        return {"count": 0, "p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = (float(v) for v in np.percentile(arr, [50, 95, 99]))
    return {"count": int(arr.size), "p50": round(p50, ndigits), "p95": round(p95, ndigits),
            "p99": round(p99, ndigits), "mean": round(float(arr.mean()), ndigits),
            "max": round(float(arr.max()), ndigits)}


# ---------------------------------------------------------------------------------------------
# phases


@dataclass(frozen=True)
class Phase:
    """An interval ``[start_ns, end_ns)`` with one set of sensors out; ``end_ns`` None: the
    phase has not ended (yet)."""

    label: str
    start_ns: int
    end_ns: int | None = None


def phase_label(unplugged: Sequence[str], noisy: Sequence[str],
                degraded: Mapping[str, str | None] | None = None) -> str:
    """"camera+lidar unplugged, tactile noisy, microphone in wind"; "all sensors" when all
    are empty. ``degraded`` maps a sensor to its degradation kind (None: "degraded")."""
    parts = []
    if unplugged:
        parts.append("+".join(unplugged) + " unplugged")
    if noisy:
        parts.append("+".join(noisy) + " noisy")
    for name, kind in (degraded or {}).items():
        parts.append(f"{name} {DEGRADED_WORDS.get(kind, kind) if kind else 'degraded'}")
    return ", ".join(parts) or ALL_SENSORS


class PhaseTimeline:
    """Sensor events as consecutive phases, built lazily as time advances (so a looping
    scenario without an end works).

    Parameters
    ----------
    sensors : sensor names in configuration order (labels list them in this order).
    events : :data:`SensorEvent` s, any order (sorted stably by time).
    start_ns : start of the first phase (events at or before it relabel it).
    source : instead of ``events``: called with a time, returns the events due at or before
        it not returned before (see :func:`scenario_timeline`).

    Events at one time apply together (one boundary); an event that leaves the label as it
    was (replugging a plugged sensor) makes no phase.
    """

    def __init__(self, sensors: Sequence[str], events: Iterable[SensorEvent] = (), *,
                 start_ns: int = 0,
                 source: Callable[[int], Iterable[SensorEvent]] | None = None) -> None:
        self._sensors = list(sensors)
        self._events = sorted(events, key=lambda e: e[0])
        self._next = 0
        self._source = source
        self._unplugged: set[str] = set()
        self._noisy: set[str] = set()
        self._degraded: dict[str, str | None] = {}
        self._phases = [Phase(ALL_SENSORS, start_ns)]
        self._starts = [start_ns]
        self._horizon: int | None = None
        #: One phase for ever (no events and no source).
        self.static = source is None and not self._events

    def _due(self, t_ns: int) -> list[SensorEvent]:
        due: list[SensorEvent] = []
        while self._next < len(self._events) and self._events[self._next][0] <= t_ns:
            due.append(self._events[self._next])
            self._next += 1
        if self._source is not None:
            due.extend(self._source(t_ns))
        return due

    def advance(self, t_ns: int) -> None:
        """Apply the events up to ``t_ns`` (earlier times are no-ops)."""
        if self.static or (self._horizon is not None and t_ns <= self._horizon):
            return
        self._horizon = t_ns
        for when, group in itertools.groupby(self._due(t_ns), key=lambda e: e[0]):
            for event in group:
                self._apply(event[1], event[2], event[3] if len(event) > 3 else None)
            self._boundary(when)

    def _apply(self, action: str, names: Iterable[str], kind: str | None = None) -> None:
        names = self._sensors if ALL in names else list(names)
        if action in ("degrade_on", "degrade_off"):
            for name in names:
                if action == "degrade_on":
                    self._degraded[name] = kind
                else:
                    self._degraded.pop(name, None)
            return
        target = self._unplugged if action in ("unplug", "replug") else self._noisy
        if action in ("unplug", "noise_on"):
            target.update(names)
        else:
            target.difference_update(names)

    def _boundary(self, when: int) -> None:
        unplugged = [n for n in self._sensors if n in self._unplugged]
        noisy = [n for n in self._sensors if n in self._noisy and n not in self._unplugged]
        degraded = {n: self._degraded[n] for n in self._sensors if n in self._degraded
                    and n not in self._unplugged and n not in self._noisy}
        label, last = phase_label(unplugged, noisy, degraded), self._phases[-1]
        if label == last.label:
            return
        if when <= last.start_ns:  # events at the very start relabel the first phase
            self._phases[-1] = Phase(label, last.start_ns)
            return
        self._phases[-1] = Phase(last.label, last.start_ns, when)
        self._phases.append(Phase(label, when))
        self._starts.append(when)

    def index_at(self, t_ns: int) -> int:
        """Index of the phase holding ``t_ns`` (before the start: the first)."""
        self.advance(t_ns)
        return max(0, bisect.bisect_right(self._starts, t_ns) - 1)

    def phase_at(self, t_ns: int) -> Phase:
        """The phase holding ``t_ns``; its ``end_ns`` is None while no later event is known."""
        return self._phases[self.index_at(t_ns)]

    def phases(self, end_ns: int) -> list[Phase]:
        """The phases up to ``end_ns``, the last one closed there."""
        self.advance(end_ns)
        out = [p for p in self._phases if p.start_ns < end_ns or p is self._phases[0]]
        last = out[-1]
        out[-1] = Phase(last.label, last.start_ns, max(end_ns, last.start_ns))
        return out


def scenario_timeline(scenario: Scenario | None, sensors: Sequence[str],
                      origin_ns: int = 0) -> PhaseTimeline:
    """The phases of a hot-plug scenario (:mod:`omnibind_ros.sim.scenario`) whose time 0 is
    ``origin_ns``; takes ownership of ``scenario`` (its event cursor advances). None: one
    phase, "all sensors", for ever."""
    if scenario is None or not scenario.events:
        return PhaseTimeline(sensors, start_ns=origin_ns)

    def due(t_ns: int) -> list[SensorEvent]:
        return [(origin_ns + s_to_ns(when), event.action, event.sensors, event.kind)
                for when, event in scenario.events_until((t_ns - origin_ns) / NS)]

    return PhaseTimeline(sensors, start_ns=origin_ns, source=due)
