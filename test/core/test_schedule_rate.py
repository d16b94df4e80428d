"""The tick scheduler's rate cap: whatever the evidence, joins and leaves, no window of
``WINDOW_PERIODS`` periods holds more than ``WINDOW_PERIODS`` ticks, and the heartbeat still
keeps the answers coming. Times are ints of nanoseconds, as in the engine."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from omnibind_ros.core.schedule import TickScheduler

MS = 1_000_000
EVENTS = ("fresh", "old", "join", "leave")


def drive(rate_hz: float, steps: list[tuple[int, str]]) -> tuple[TickScheduler, list[int]]:
    """Run ``steps`` (gap in ns to the next event, event kind) with the heartbeat firing every
    :attr:`TickScheduler.timer_period_ns` in between, as the engine's timer does."""
    sched = TickScheduler(rate_hz)
    ticks: list[int] = []
    now, next_beat = 0, 0

    def tick_if(due: bool, t: int) -> None:
        if due:
            sched.ticked(t)
            ticks.append(t)

    for gap, kind in steps:
        target = now + gap
        while next_beat <= target:
            tick_if(sched.timer_due(next_beat), next_beat)
            next_beat += sched.timer_period_ns
        now = target
        if kind == "leave":
            tick_if(sched.change_due(now), now)
        else:
            tick_if(sched.embedding_due(now, joins=kind == "join", freshest=kind != "old"), now)
    return sched, ticks


def most_ticks_in_a_window(ticks: list[int], window_ns: int) -> int:
    """Ticks in the fullest half-open window ``[t, t + window_ns)`` (one starting at a tick is
    the fullest)."""
    return max((sum(1 for u in ticks if t <= u < t + window_ns) for t in ticks), default=0)


@settings(max_examples=150, deadline=None)
@given(rate_hz=st.sampled_from([5.0, 10.0, 30.0]),
       steps=st.lists(st.tuples(st.integers(0, 60 * MS), st.sampled_from(EVENTS)),
                      min_size=1, max_size=300))
def test_no_window_of_a_few_periods_exceeds_the_rate(rate_hz, steps) -> None:
    sched, ticks = drive(rate_hz, steps)
    n, period = TickScheduler.WINDOW_PERIODS, sched.period_ns
    for k in (1, 2, 3):  # windows of 4, 8 and 12 periods
        assert most_ticks_in_a_window(ticks, k * n * period) <= k * n
    assert all(b > a for a, b in zip(ticks, ticks[1:], strict=False))


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 60 * MS), st.sampled_from(EVENTS)),
                      min_size=20, max_size=300))
def test_the_heartbeat_still_answers_within_the_cap(steps) -> None:
    """A burst of joins and leaves can fill the window early; the next tick then waits for the
    window to have room, never longer than the window plus one heartbeat."""
    sched, ticks = drive(10.0, steps)
    window = TickScheduler.WINDOW_PERIODS * sched.period_ns
    assert ticks and ticks[0] == 0
    end = sum(gap for gap, _ in steps)
    gaps = [b - a for a, b in zip(ticks, [*ticks[1:], end], strict=True)]
    assert max(gaps) <= window + sched.timer_period_ns


def test_joins_in_a_burst_are_capped_and_the_answer_resumes() -> None:
    sched, ticks = drive(10.0, [(0, "fresh"), *[(30 * MS, "join")] * 6, (400 * MS, "fresh")])
    # 0, then joins at 30, 60, 90 ms (30 ms >= the 25 ms min gap); the fifth tick waits until
    # the first leaves the 400 ms window: the heartbeat at 400 ms takes the pending change
    assert ticks[:5] == [0, 30 * MS, 60 * MS, 90 * MS, 400 * MS]


def test_without_the_cap_the_same_sequence_would_exceed_the_rate() -> None:
    """The property test can fail: the pre-cap rule (cooldown and min gap only) on evidence
    every 14 ms plus a join every 30 ms ticks 6 times in some 4-period window."""
    class Uncapped(TickScheduler):
        def _under_cap(self, now_ns: int) -> bool:
            return True

    steps = [(14 * MS, "fresh")] * 30 + [(30 * MS, "join")] * 5 + [(14 * MS, "fresh")] * 30
    sched, ticks = drive(10.0, steps)
    assert most_ticks_in_a_window(ticks, 400 * MS) <= 4
    uncapped = Uncapped(10.0)
    free: list[int] = []
    now = 0
    for gap, kind in steps:
        now += gap
        if uncapped.embedding_due(now, joins=kind == "join"):
            uncapped.ticked(now)
            free.append(now)
    assert most_ticks_in_a_window(free, 400 * MS) > 4
