"""When a fusion tick runs: :class:`TickScheduler`, the engine's schedule (integer ns)."""
from __future__ import annotations

import math
from collections import deque

__all__ = ["TickScheduler"]

NS = 1_000_000_000


class TickScheduler:
    """When a fusion tick runs: on fresh evidence, at a deadline, or on a change of sensors.

    ``rate_hz`` is the nominal tick rate (period ``P = 1 / rate_hz``). With ``on_embedding``
    (the default), ticks follow the evidence instead of a free-running timer:

    * after a cooldown of ``EMBED_MARGIN * P`` (0.8 P) since the last tick, the next embedding
      that is the *freshest* evidence (its stamp is the newest of the fusable sensors') ticks
      at once, so the answer follows its newest input by the pipeline delay alone instead of
      waiting for the next timer tick;
    * if none came by the deadline ``TIMER_MARGIN * P`` (1.2 P), the heartbeat timer ticks
      (it fires every ``P / 4``, :attr:`timer_period_ns`, to keep that deadline within a
      quarter period), so a robot whose sensors all went silent still gets its "no answer" and
      the reason. The margins trade latency against rate: ``benchmarks/bench_runtime.py
      latency`` measures both (a deadline of 1.0 P made the late-evidence ticks the p99 of the
      latency);
    * a sensor that (re)joins fusion, or a fused one that leaves it, ticks at once, at most
      every ``MIN_GAP * P`` (0.25 P; one that comes sooner is ticked by the next heartbeat
      after the gap): the answer changes with the set of sensors without waiting for the next
      evidence, and a flapping sensor cannot flood the output;
    * every tick, whatever its trigger, also obeys the rate cap: at most ``WINDOW_PERIODS``
      (4) ticks in any window of ``WINDOW_PERIODS * P`` (any 5 consecutive ticks span at least
      4 periods). A tick the cap holds back is taken by the next evidence or heartbeat once the
      window has room. So the rate never exceeds ``rate_hz`` over any window of a few periods;
      below it, the deadline keeps it above ``rate_hz / 1.45``. A burst of joins and leaves
      (4 within one period) can hold the next tick back until the window has room, up to
      ``3.25 P`` later: that window already had its ``WINDOW_PERIODS`` answers.

    What the cap costs: without it a 0.8 P cooldown let the evidence ticks run at up to
    ``rate_hz / 0.8`` and a join added a tick on top (11 ticks/s at 10 Hz, up to 6 in a
    4-period window, in the simulation that follows). With it the evidence ticks fill the
    window, so a join usually waits for the next free slot instead of ticking at once.
    Simulated at 10 Hz with the simulator's six sensor rates and a join every 1-3 s (300 s, 3
    seeds; benchmarks/README.md, the flap section, has the set-up): 9.7 ticks/s; age of
    the newest evidence at the tick p50 0 ms, p99 34 ms (20 ms without the cap); join to tick
    p50 44 ms, p99 111 ms (0 and 44 ms without it). A cooldown of 1.0 P with a 6-period window
    would let joins tick at once more often (p50 0, p99 79 ms) but slow the answers to 9.2
    ticks/s with a p99 evidence age of 39 ms; the cooldown the latency benchmark tuned is kept.

    Without ``on_embedding`` only the timer ticks, every ``P``. ``rate_hz == 0`` ticks on every
    new embedding, unthrottled, and never on a timer.

    Times are integer nanoseconds of the caller's clock (node clock, bag clock), compared
    exactly; the scheduler is not thread-safe: call it under the lock that serialises ticks.
    """

    EMBED_MARGIN = 0.8
    TIMER_MARGIN = 1.2
    MIN_GAP = 0.25
    HEARTBEATS_PER_PERIOD = 4
    WINDOW_PERIODS = 4

    def __init__(self, rate_hz: float, on_embedding: bool = True) -> None:
        if not (math.isfinite(rate_hz) and rate_hz >= 0):
            raise ValueError(f"rate_hz must be a finite number >= 0, got {rate_hz!r}")
        self.rate_hz = float(rate_hz)
        self.on_embedding = bool(on_embedding) or self.rate_hz == 0.0
        self.period_ns = round(NS / self.rate_hz) if self.rate_hz > 0 else 0
        self._cooldown_ns = round(self.EMBED_MARGIN * self.period_ns)
        self._deadline_ns = round(self.TIMER_MARGIN * self.period_ns)
        self._min_gap_ns = round(self.MIN_GAP * self.period_ns)
        self.last_tick_ns: int | None = None
        self._window_ns = self.WINDOW_PERIODS * self.period_ns
        #: the last WINDOW_PERIODS tick times, for the rate cap (a fixed-size log: any
        #: WINDOW_PERIODS + 1 consecutive ticks must span the window)
        self._recent: deque[int] = deque(maxlen=self.WINDOW_PERIODS)
        #: A set change (join/leave) arrived within MIN_GAP of a tick: the next heartbeat
        #: after MIN_GAP ticks for it, instead of leaving it to the next evidence.
        self.change_pending = False

    @property
    def uses_timer(self) -> bool:
        return self.rate_hz > 0

    @property
    def timer_period_ns(self) -> int:
        """Period of the timer that calls :meth:`timer_due` (0 when there is none)."""
        if not self.uses_timer:
            return 0
        if not self.on_embedding:
            return self.period_ns
        return round(self.period_ns / self.HEARTBEATS_PER_PERIOD)

    def _waited(self, now_ns: int, wait_ns: int) -> bool:
        last = self.last_tick_ns
        # first tick, or the clock went back (a reset): nothing to wait for
        if not (last is None or now_ns < last or now_ns - last >= wait_ns):
            return False
        return self._under_cap(now_ns)

    def _under_cap(self, now_ns: int) -> bool:
        """Would a tick at ``now_ns`` keep every ``WINDOW_PERIODS`` window within the rate?"""
        recent = self._recent
        if self.period_ns == 0 or len(recent) < self.WINDOW_PERIODS or now_ns < recent[-1]:
            return True
        return now_ns - recent[0] >= self._window_ns

    def embedding_due(self, now_ns: int, joins: bool = False, freshest: bool = True) -> bool:
        """A new embedding arrived at ``now_ns``: tick now?

        ``joins``: its sensor is fusable but was not in the previous tick (replugged or new).
        ``freshest``: its stamp is the newest among the fusable sensors' embeddings (an event
        packet or an audio window is stamped at the start of its window, so when one of them
        started the tick, the newest input had often been waiting since the previous frame).
        """
        if not self.on_embedding:
            return False
        if self.rate_hz == 0.0:
            return True
        if joins:
            return self._change(now_ns)
        return freshest and self._waited(now_ns, self._cooldown_ns)

    def _change(self, now_ns: int) -> bool:
        if self._waited(now_ns, self._min_gap_ns):
            return True
        self.change_pending = True
        return False

    def change_due(self, now_ns: int) -> bool:
        """A sensor used by the previous tick just left fusion (STALE, LOST, DISABLED...) at
        ``now_ns``: tick now, so the answer stops using it at once?"""
        if not self.on_embedding:
            return False
        return self.rate_hz == 0.0 or self._change(now_ns)

    def timer_due(self, now_ns: int) -> bool:
        """The timer (period :attr:`timer_period_ns`) fired at ``now_ns``: tick now?"""
        if not self.uses_timer:
            return False
        if not self.on_embedding:
            return True
        if self.change_pending and self._waited(now_ns, self._min_gap_ns):
            return True
        return self._waited(now_ns, self._deadline_ns)

    def ticked(self, now_ns: int) -> None:
        """Record that a tick ran at ``now_ns``."""
        now_ns = int(now_ns)
        if self._recent and now_ns < self._recent[-1]:
            self._recent.clear()  # the clock went back: the old timeline's ticks don't count
        self._recent.append(now_ns)
        self.last_tick_ns = now_ns
        self.change_pending = False
