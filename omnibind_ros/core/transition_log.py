"""State-change log lines at a bounded rate per sensor, never losing the final state.

A sensor that flaps (STALE/LIVE every few hundred ms on a loaded machine) used to write a line
per change: hundreds a minute, burying everything else. :class:`TransitionLog` lets each sensor
log ``burst`` changes at once (an unplug is LIVE -> STALE -> LOST, a replug UNKNOWN -> LIVE:
an operator sees those as they happen) and then one line per ``interval / burst`` (a token
bucket). Changes beyond that are counted, and the next line the bucket allows is a summary:
``sensor camera: 7 state changes in the last 9.6 s (LIVE->STALE 4x, STALE->LIVE 3x), now LIVE``.
:meth:`TransitionLog.flush`, called at every monitor evaluation, writes it as soon as a token is
back, so the state a sensor ends in is always logged, at most ``interval / burst`` late.

Pure and clock-injected like the monitor: times are the transitions' node-clock int ns.
Thread-safe (one lock): the node adds and flushes from its monitor timer and forgets removed
sensors from service and parameter callbacks.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from omnibind_ros.core.availability_types import NS, SensorState, Transition

__all__ = ["LogLine", "TransitionLog"]


@dataclass(frozen=True)
class LogLine:
    """One line to log: ``warning`` for summaries of suppressed changes (a flapping sensor)."""

    text: str
    warning: bool = False


@dataclass
class _Bucket:
    tokens: float
    refilled_at: int
    suppressed: Counter = field(default_factory=Counter)
    first_suppressed: int | None = None
    last: Transition | None = None


class TransitionLog:
    """Per-sensor token bucket over state-change lines (see the module docstring).

    Parameters
    ----------
    burst : changes a sensor may log at once (>= 1).
    interval_s : the bucket refills ``burst`` tokens over this many seconds (> 0).
    """

    def __init__(self, burst: int = 3, interval_s: float = 10.0) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self.configure(burst, interval_s)

    def configure(self, burst: int, interval_s: float) -> None:
        """Change the limits (kept counts and pending summaries stay)."""
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst must be an int >= 1, got {burst!r}")
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        with self._lock:
            self.burst = burst
            self._token_ns = round(interval_s * NS / burst)  # time to earn one token

    def add(self, transition: Transition) -> list[LogLine]:
        """A state change: the lines to log now (none when it is counted for a summary)."""
        with self._lock:
            return self._add(transition)

    def _add(self, transition: Transition) -> list[LogLine]:
        bucket = self._refill(transition.name, transition.time_ns)
        if bucket.tokens >= 1 and not bucket.suppressed:
            bucket.tokens -= 1
            return [LogLine(_describe(transition))]
        bucket.suppressed[(transition.old, transition.new)] += 1
        if bucket.first_suppressed is None:
            bucket.first_suppressed = transition.time_ns
        bucket.last = transition
        return self._summary(transition.name, bucket, transition.time_ns)

    def flush(self, now_ns: int) -> list[LogLine]:
        """The summaries whose sensors have a token back at ``now_ns``."""
        lines = []
        with self._lock:
            for name, bucket in self._buckets.items():
                if bucket.suppressed:
                    self._refill(name, now_ns)
                    lines += self._summary(name, bucket, now_ns)
        return lines

    def forget(self, name: str) -> None:
        """Drop a removed sensor's bucket (its pending summary with it)."""
        with self._lock:
            self._buckets.pop(name, None)

    def _refill(self, name: str, now_ns: int) -> _Bucket:
        bucket = self._buckets.get(name)
        if bucket is None or now_ns < bucket.refilled_at:  # new, or the clock went back
            bucket = self._buckets[name] = _Bucket(float(self.burst), now_ns)
            return bucket
        earned = (now_ns - bucket.refilled_at) / self._token_ns
        bucket.tokens = min(float(self.burst), bucket.tokens + earned)
        bucket.refilled_at = now_ns
        return bucket

    @staticmethod
    def _summary(name: str, bucket: _Bucket, now_ns: int) -> list[LogLine]:
        if bucket.tokens < 1 or bucket.last is None:
            return []
        bucket.tokens -= 1
        count = sum(bucket.suppressed.values())
        kinds = ", ".join(f"{old.name}->{new.name} {n}x"
                          for (old, new), n in bucket.suppressed.most_common())
        since = (now_ns - (bucket.first_suppressed or now_ns)) / NS
        last = bucket.last
        text = (f"sensor {name}: {count} state change{'s' if count > 1 else ''} in the last "
                f"{since:.1f} s ({kinds}), now {last.new.name}"
                + (f" ({last.reason})" if last.reason else ""))
        flapped = count > 1 or last.new != SensorState.LIVE
        bucket.suppressed.clear()
        bucket.first_suppressed, bucket.last = None, None
        return [LogLine(text, warning=flapped)]


def _describe(transition: Transition) -> str:
    text = f"sensor {transition.name}: {transition.old.name} -> {transition.new.name}"
    return text + (f" ({transition.reason})" if transition.reason else "")
