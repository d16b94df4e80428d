"""Ground truth of a bag: labelled time intervals, from a topic or from a CSV file.

Why intervals rather than the messages themselves: recognition is scored at fusion-tick times,
which fall between ground-truth messages; an interval says what was in front of the sensors at
any time, and where it started (answers right after a change are scored as "transition").

Sources:

* the ``/omnibind/ground_truth`` topic (``omnibind_ros/msg/GroundTruth``, as the simulator and
  ``omnibind-bag record-sim`` publish it): consecutive messages of one episode and label form an
  interval, starting at the episode's ``episode_start`` (the exact change time; the first
  message's stamp when it is zero) and ending where the next one starts (or at the bag's end);
* a CSV of labelled intervals for bags recorded by others (one header row, then one interval
  per row; ``#`` comments and blank lines are skipped; labels with commas in double quotes)::

      start_s,end_s,label          # seconds since the bag's first message
      0.0,6.0,wooden duck
      6.0,12.5,metal mug

  or ``start_ns,end_ns,label`` with absolute bag-clock nanoseconds. An optional ``episode``
  column numbers the objects. Times not covered by any row have no truth (not scored).

All times are integer nanoseconds of the bag clock (the evaluator's time base).
"""
from __future__ import annotations

import bisect
import csv
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnibind_ros.core.names import GROUND_TRUTH_TOPIC

__all__ = ["GroundTruth", "TruthError", "TruthInterval"]

_TIME_COLUMNS = {("start_s", "end_s"): 1e9, ("start_ns", "end_ns"): 1}


class TruthError(ValueError):
    """Ground truth that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class TruthInterval:
    """``label`` was in front of the sensors during [start_ns, end_ns)."""

    start_ns: int
    end_ns: int
    label: str
    episode: int | None = None


def _stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class GroundTruth:
    """Sorted, non-overlapping labelled intervals with lookups by time.

    Parameters
    ----------
    intervals : any order; overlapping ones are rejected (TruthError).
    """

    def __init__(self, intervals: Iterable[TruthInterval]) -> None:
        self.intervals: list[TruthInterval] = sorted(intervals, key=lambda i: i.start_ns)
        for a, b in itertools.pairwise(self.intervals):
            if b.start_ns < a.end_ns:
                raise TruthError(f"ground-truth intervals overlap: {a} and {b}")
        self._starts = [i.start_ns for i in self.intervals]

    def __len__(self) -> int:
        return len(self.intervals)

    def __iter__(self) -> Iterator[TruthInterval]:
        return iter(self.intervals)

    def __repr__(self) -> str:
        return f"GroundTruth({len(self.intervals)} intervals)"

    def interval_at(self, t_ns: int) -> TruthInterval | None:
        """The interval containing ``t_ns``, None where there is no truth."""
        k = bisect.bisect_right(self._starts, t_ns) - 1
        if k >= 0 and t_ns < self.intervals[k].end_ns:
            return self.intervals[k]
        return None

    def label_at(self, t_ns: int) -> str | None:
        """What was in front of the sensors at ``t_ns`` (None: unknown)."""
        interval = self.interval_at(t_ns)
        return interval.label if interval else None

    def change_before(self, t_ns: int) -> int | None:
        """Start of the interval containing ``t_ns``: when the current object appeared."""
        interval = self.interval_at(t_ns)
        return interval.start_ns if interval else None

    def labels(self) -> list[str]:
        """Distinct labels in order of first appearance."""
        return list(dict.fromkeys(i.label for i in self.intervals))

    # ------------------------------------------------------------------ sources
    @classmethod
    def from_messages(cls, msgs: Iterable[tuple[int, Any]], end_ns: int) -> GroundTruth:
        """Intervals from ``(log_time_ns, GroundTruth message)`` pairs in time order.

        Works with rclpy and rosbags messages alike (same field names). A message with an empty
        label ends the current interval (nothing in view). The last interval ends at
        ``end_ns`` (the bag's last message), or just after its start if that is earlier.
        """
        runs: list[list[Any]] = []  # [start_ns, label, episode]
        for log_ns, msg in msgs:
            stamp = _stamp_ns(msg.header.stamp) if hasattr(msg, "header") else 0
            t = stamp or int(log_ns)
            label = str(msg.label)
            episode = int(msg.episode) if hasattr(msg, "episode") else None
            if runs and runs[-1][1] == label and runs[-1][2] == episode:
                continue  # a republication of the current object
            start = t
            episode_start = getattr(msg, "episode_start", None)
            if episode_start is not None and _stamp_ns(episode_start) > 0:
                start = _stamp_ns(episode_start)
            if runs:
                start = max(start, runs[-1][0] + 1)  # never before the previous start
            runs.append([start, label, episode])
        intervals = []
        for k, (start, label, episode) in enumerate(runs):
            end = runs[k + 1][0] if k + 1 < len(runs) else max(int(end_ns), start + 1)
            if label:
                intervals.append(TruthInterval(start, end, label, episode))
        return cls(intervals)

    @classmethod
    def from_bag(cls, path: Path | str, topic: str = GROUND_TRUTH_TOPIC,
                 end_ns: int | None = None) -> GroundTruth:
        """Intervals from the ground-truth topic of a bag (decoded with rosbags, ROS-free).

        On a damaged bag, the truth read before the damage is returned; the damage itself is
        reported by the pass that reads the sensor messages.
        """
        from omnibind_ros.bag.reader import BagReadError, iter_messages
        from omnibind_ros.bag.types import typestore

        store = typestore()
        pairs = []
        last = 0
        try:
            for m in iter_messages(path, topics=[topic]):
                pairs.append((m.log_time_ns, store.deserialize_cdr(m.rawdata, m.msgtype)))
                last = m.log_time_ns
        except BagReadError:
            pass
        return cls.from_messages(pairs, last if end_ns is None else end_ns)

    @classmethod
    def from_csv(cls, path: Path | str, bag_start_ns: int) -> GroundTruth:
        """Intervals from a CSV file (format in the module docstring).

        Raises
        ------
        FileNotFoundError : no such file.
        TruthError : bad header, value or overlap; the message names ``path:line``.
        """
        path = Path(path)
        text = path.read_text(encoding="utf-8-sig")  # Excel writes a BOM
        rows = [(n, row) for n, row in enumerate(csv.reader(text.splitlines()), start=1)
                if row and any(c.strip() for c in row) and not row[0].lstrip().startswith("#")]
        if not rows:
            raise TruthError(f"{path}: no header row (expected start_s,end_s,label or "
                             "start_ns,end_ns,label)")
        header_line, header = rows[0]
        columns = [c.strip().lower() for c in header]
        scale = next((s for (a, b), s in _TIME_COLUMNS.items()
                      if a in columns and b in columns), None)
        if scale is None or "label" not in columns:
            raise TruthError(f"{path}:{header_line}: header {header} must name start_s,end_s,"
                             "label (seconds since the bag start) or start_ns,end_ns,label "
                             "(absolute nanoseconds), plus optionally episode")
        unit = "s" if scale != 1 else "ns"
        i_start, i_end = columns.index(f"start_{unit}"), columns.index(f"end_{unit}")
        i_label = columns.index("label")
        i_episode = columns.index("episode") if "episode" in columns else None
        offset = int(bag_start_ns) if scale != 1 else 0
        intervals: list[tuple[int, TruthInterval]] = []
        for line, row in rows[1:]:
            where = f"{path}:{line}"
            if len(row) != len(columns):
                raise TruthError(f"{where}: {len(row)} columns, the header has {len(columns)}")
            start = offset + _time(row[i_start], scale, where, f"start_{unit}")
            end = offset + _time(row[i_end], scale, where, f"end_{unit}")
            label = row[i_label].strip()
            if not label:
                raise TruthError(f"{where}: empty label")
            if end <= start:
                raise TruthError(f"{where}: end_{unit} must be after start_{unit} "
                                 f"({row[i_end].strip()} <= {row[i_start].strip()})")
            episode = None
            if i_episode is not None and row[i_episode].strip():
                try:
                    episode = int(row[i_episode])
                except ValueError:
                    raise TruthError(f"{where}: episode {row[i_episode]!r} is not an integer"
                                     ) from None
            intervals.append((line, TruthInterval(start, end, label, episode)))
        intervals.sort(key=lambda li: li[1].start_ns)
        for (la, a), (lb, b) in itertools.pairwise(intervals):
            if b.start_ns < a.end_ns:
                raise TruthError(f"{path}:{lb}: interval overlaps the one on line {la} "
                                 f"({b.label!r} starts before {a.label!r} ends)")
        return cls(i for _, i in intervals)


def _time(text: str, scale: float, where: str, column: str) -> int:
    text = text.strip()
    if scale == 1:  # nanoseconds: exact integers (a float would lose the last digits)
        try:
            return int(text)
        except ValueError:
            pass
    try:
        value = float(text)
    except ValueError:
        raise TruthError(f"{where}: {column} {text!r} is not a number") from None
    if not math.isfinite(value) or scale == 1:
        raise TruthError(f"{where}: {column} must be a finite "
                         f"{'integer' if scale == 1 else 'number'}, got {text!r}")
    return round(value * scale)
