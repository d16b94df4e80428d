"""State-change log lines at a bounded rate per sensor (``core.transition_log``)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnibind_ros.core.availability import SensorState, Transition
from omnibind_ros.core.transition_log import TransitionLog

S = SensorState
SEC = 1_000_000_000
MS = 1_000_000


def change(name: str, old: S, new: S, t: int, reason: str = "") -> Transition:
    return Transition(name, old, new, t, reason)


def test_an_unplug_and_a_replug_are_logged_as_they_happen() -> None:
    log = TransitionLog(burst=3, interval_s=10.0)
    seq = [(S.LIVE, S.STALE, 0), (S.STALE, S.LOST, 300 * MS), (S.LOST, S.LIVE, 6 * SEC),
           (S.LIVE, S.STALE, 16 * SEC)]
    lines = [line for old, new, t in seq for line in log.add(change("cam", old, new, t, "why"))]
    assert [line.text for line in lines] == [
        "sensor cam: LIVE -> STALE (why)", "sensor cam: STALE -> LOST (why)",
        "sensor cam: LOST -> LIVE (why)", "sensor cam: LIVE -> STALE (why)"]
    assert not any(line.warning for line in lines)


def test_a_flapping_sensor_is_summarised_and_its_final_state_is_logged() -> None:
    log = TransitionLog(burst=3, interval_s=10.0)  # one token per 3.33 s after the burst
    lines = []
    state, t = S.LIVE, 0
    for _ in range(40):  # a flip every 100 ms for 4 s
        new = S.STALE if state == S.LIVE else S.LIVE
        lines += log.add(change("mic", state, new, t))
        state, t = new, t + 100 * MS
    lines += log.flush(t)
    assert len(lines) == 4  # 3 at once, one summary at the first change after a token (3.4 s)
    summary = lines[3]
    assert summary.warning and "sensor mic: 32 state changes in the last 3.1 s" in summary.text
    assert "LIVE->STALE 16x" in summary.text and "STALE->LIVE 16x" in summary.text
    assert summary.text.endswith("now STALE")
    # the flapping stops in LIVE: nothing more until the next token, then the final state
    assert log.flush(t + SEC) == []
    final = log.flush(t + 4 * SEC)
    assert len(final) == 1 and final[0].text.startswith("sensor mic: 5 state changes")
    assert final[0].text.endswith("now LIVE")
    assert log.flush(t + 20 * SEC) == []  # said once


def test_sensors_have_buckets_of_their_own() -> None:
    log = TransitionLog(burst=1, interval_s=10.0)
    assert log.add(change("a", S.LIVE, S.STALE, 0))
    assert log.add(change("a", S.STALE, S.LIVE, MS)) == []
    assert log.add(change("b", S.LIVE, S.STALE, MS))  # b is not silenced by a
    lines = log.flush(10 * SEC)
    assert [line.text for line in lines] == [
        "sensor a: 1 state change in the last 10.0 s (STALE->LIVE 1x), now LIVE"]
    assert not lines[0].warning  # one change back to LIVE is no flapping


def test_a_clock_jump_back_starts_afresh_and_bad_limits_are_refused() -> None:
    log = TransitionLog(burst=1, interval_s=10.0)
    assert log.add(change("a", S.LIVE, S.STALE, 100 * SEC))
    assert log.add(change("a", S.STALE, S.LIVE, 5 * SEC))  # looping bag: a new bucket
    for bad in ({"burst": 0}, {"burst": 1.5}, {"interval_s": 0.0}):
        with pytest.raises(ValueError):
            TransitionLog(**bad)


@settings(max_examples=60, deadline=None)
@given(gaps=st.lists(st.integers(0, 2 * SEC), min_size=1, max_size=200),
       burst=st.integers(1, 5), interval=st.sampled_from([1.0, 10.0, 60.0]))
def test_lines_are_bounded_and_the_last_state_always_comes_out(gaps, burst, interval) -> None:
    log = TransitionLog(burst=burst, interval_s=interval)
    emitted: list[tuple[int, str]] = []
    state, t = S.LIVE, 0
    for gap in gaps:
        t += gap
        new = S.STALE if state == S.LIVE else S.LIVE
        emitted += [(t, line.text) for line in log.add(change("s", state, new, t))]
        emitted += [(t, line.text) for line in log.flush(t)]
        state = new
    # token bucket: at most burst + elapsed / (interval / burst) lines
    assert len(emitted) <= burst + t / (interval * SEC / burst) + 1e-9
    end = t + round(interval * SEC)
    emitted += [(end, line.text) for line in log.flush(end)]
    assert emitted[-1][1].endswith(f"-> {state.name}") or \
        emitted[-1][1].endswith(f"now {state.name}")
