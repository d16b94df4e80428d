"""Live scoring of ``omnibind-bringup``: recognitions matched with ground truth as both arrive.

ROS-free; the verdicts, counts and phases are :mod:`omnibind_ros.scoring`'s (the bag evaluation
uses the same), this module adds what a live stream needs:

* a recognition is matched with the ground-truth episode in force at its ``header.stamp`` (the
  newest sensor sample it used), on the stream timeline both share; it is scored once ground
  truth stamped at or after it has arrived (the episode in force is then known), or at
  :meth:`Scoreboard.summary`;
* the stream origin (time 0 of the scenario) is located from the first episode and the
  simulator's object period, so a recognition's phase is the one its stamp falls in (scenario
  time, not the moment the perception node noticed the change: the reaction delay shows in the
  phase's numbers); ticks stamped before the origin belong to no run (``before_start``).

All times are integer nanoseconds.
"""
from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from omnibind_ros.scoring import (
    NS,
    Phase,
    PhaseTimeline,
    Tally,
    in_top_k,
    s_to_ns,
    verdict,
)

__all__ = ["Sample", "Scoreboard", "Truth"]

#: Recognitions still unmatched this long after a newer one are scored without truth, so a run
#: without a ground-truth publisher keeps no backlog.
MAX_PENDING_NS = 5 * NS


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


class Scoreboard:
    """Matches recognitions with ground truth by stamp and counts them per phase (thread-safe).

    Parameters
    ----------
    timeline : the scenario's phases, in nanoseconds since the stream's origin.
    transition_s : answers this soon after an object change count as transition.
    period_s : object period of the simulator; locates the stream origin from any episode and
        scores the last recognitions (after the last ground truth) at the end.
    """

    def __init__(self, timeline: PhaseTimeline, *, transition_s: float = 0.5,
                 period_s: float | None = None) -> None:
        self._lock = threading.Lock()
        self._timeline = timeline
        self.transition_s = transition_s
        self._transition_ns = s_to_ns(transition_s)
        self._period_ns = s_to_ns(period_s) if period_s else None
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
        kind = verdict(sample.best_label, truth, sample.stamp_ns, self._transition_ns)
        return (truth.label if truth else ""), kind

    def phase_now(self, t_ns: int) -> Phase:
        """The phase at ``t_ns`` since the stream's origin."""
        with self._lock:
            return self._timeline.phase_at(t_ns)

    def _resolve(self, final: bool) -> None:
        keep: deque[Sample] = deque()
        for s in self._pending:
            if self._latest_truth_ns is not None and s.stamp_ns <= self._latest_truth_ns:
                self._score(s, self.truth_at(s.stamp_ns))
            elif final or s.stamp_ns < self._newest_ns - MAX_PENDING_NS:
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
        kind = verdict(s.best_label, truth, s.stamp_ns, self._transition_ns)
        top = in_top_k(truth, s.top_labels)
        self.total.add(kind, top)
        index = self._phase_index(s.stamp_ns)
        if index is not None:
            self._phase_tallies.setdefault(index, Tally()).add(kind, top)

    def _phase_index(self, stamp_ns: int) -> int | None:
        if self.origin_ns is None:
            # No ground truth, so no stream origin: only a scenario-less run has its phase.
            return 0 if self._timeline.static else None
        return self._timeline.index_at(stamp_ns - self.origin_ns)

    def summary(self, end_ns: int, realtime_factor: float = 1.0) -> dict[str, Any]:
        """Score what is pending and return the run's numbers up to ``end_ns`` since the
        stream's origin: :meth:`Tally.stats <omnibind_ros.scoring.Tally.stats>` of the run
        (counted as ``recognitions``) and of each phase (plus ``start_s``, ``end_s``,
        ``recognitions_per_s`` of wall time), ``top_k``, ``transition_s``, ``before_start``."""
        with self._lock:
            self._resolve(final=True)
            phases = []
            for i, phase in enumerate(self._timeline.phases(end_ns)):
                tally = self._phase_tallies.get(i, Tally())
                end = end_ns if phase.end_ns is None else phase.end_ns
                wall = (end - phase.start_ns) / NS / realtime_factor
                phases.append({"label": phase.label, "start_s": phase.start_ns / NS,
                               "end_s": end / NS, **tally.stats("recognitions", ndigits=None),
                               "recognitions_per_s": tally.count / wall if wall > 0
                               else None})
            return {**self.total.stats("recognitions", ndigits=None), "phases": phases,
                    "top_k": self.top_k, "transition_s": self.transition_s,
                    "before_start": self.before_start}
