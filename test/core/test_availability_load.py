"""The availability monitor under load: window sensors and late packets do not flap, an unplugged
sensor is still excluded promptly, a replugged one rejoins at once (module
``core.availability_timing``). Pure: hand-written int-ns times, no ROS."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnibind_ros.core.availability import AvailabilityMonitor, SensorConfig, SensorState
from omnibind_ros.core.availability_timing import CREDIT_HALF_LIFE_S

S = SensorState
SEC = 1_000_000_000
MS = 1_000_000


def ns(seconds: float) -> int:
    return round(seconds * SEC)


def event_camera(**kw) -> SensorConfig:
    """The simulator's event camera: 20 Hz, 50 ms packets stamped at the window start."""
    kw.setdefault("window_s", 0.05)
    return SensorConfig("events", "event", "/events", expected_rate_hz=20.0, **kw)


LEGACY = {"window_s": 0.0, "max_delay_s": 0.0}  # timeouts counted from the stamp, as before


def run(cfg: SensorConfig, arrivals: list[tuple[int, int]], end: int,
        poll: int = 10 * MS) -> tuple[AvailabilityMonitor, list]:
    """Feed ``(stamp, arrival)`` pairs in arrival order and poll ``update`` every ``poll`` ns
    (the node polls at 20 Hz; 10 ms sees more); return the monitor and every transition."""
    mon = AvailabilityMonitor([cfg], now_ns=0)
    transitions, t = [], 0
    for stamp, arrival in sorted(arrivals, key=lambda a: a[1]):
        while t < arrival:
            transitions += mon.update(t)
            t += poll
        mon.on_sample(cfg.name, stamp, arrival)
    while t <= end:
        transitions += mon.update(t)
        t += poll
    return mon, transitions


def loaded_packets(seconds: float, seed: int = 0, rate: float = 20.0,
                   delay=(0.06, 0.12)) -> list[tuple[int, int]]:
    """Packets every 1/rate s, each arriving 60-120 ms after its stamp (the window plus 10-70
    ms of scheduling delay: what a loaded 2-core machine showed)."""
    rng = random.Random(seed)
    period = 1.0 / rate
    return [(ns(k * period), ns(k * period + rng.uniform(*delay)))
            for k in range(int(seconds * rate))]


def flaps(transitions: list) -> int:
    """Changes after the first LIVE (the start-up UNKNOWN -> LIVE is not a flap)."""
    states = [tr.new for tr in transitions]
    return len(states) - states.index(S.LIVE) - 1 if S.LIVE in states else len(states)


def test_late_window_packets_under_load_do_not_flap() -> None:
    packets = loaded_packets(30.0)
    _, legacy = run(event_camera(**LEGACY), packets, ns(30.0))
    assert flaps(legacy) > 50  # the symptom: a 125 ms timeout against 60-120 ms old packets
    mon, now = run(event_camera(), packets, ns(30.0))
    assert flaps(now) == 0 and [tr.new for tr in now] == [S.LIVE]
    h = mon.health(ns(30.0) - 1)[0]
    assert h.state == S.LIVE


def test_scheduling_stalls_earn_a_lateness_credit_and_stop_flapping() -> None:
    """Every 2 s the publisher stalls 250 ms, then its packets arrive in a burst."""
    packets = []
    for stamp, arrival in loaded_packets(20.0, delay=(0.055, 0.065)):
        stall = stamp % ns(2.0) >= ns(1.7) and stamp % ns(2.0) < ns(1.95)
        packets.append((stamp, ns(1.95) + stamp // ns(2.0) * ns(2.0) + 5 * MS if stall
                        else arrival))
    _, legacy = run(event_camera(**LEGACY), packets, ns(20.0))
    assert flaps(legacy) >= 2 * 9  # STALE and back at every stall
    mon, now = run(event_camera(), packets, ns(20.0))
    assert flaps(now) == 2  # the first stall only: LIVE -> STALE -> LIVE
    timing = mon._sensors["events"].timing
    assert timing.late_comebacks == 1 and 0 < timing.credit_ns <= ns(1.0)


def test_the_credit_is_bounded_and_halves_without_late_comebacks() -> None:
    mon = AvailabilityMonitor([event_camera(max_delay_s=0.1)], now_ns=0)
    t = 0
    for gap in (0.2, 0.3, 0.4):  # three late comebacks, each longer (same session: < T_lost)
        for _ in range(5):
            t += ns(0.05)
            mon.on_sample("events", t, t + ns(0.06))
        t += ns(gap)
        mon.on_sample("events", t, t + ns(0.06))
    timing = mon._sensors["events"].timing
    assert timing.late_comebacks == 3 and timing.credit_ns == ns(0.1)  # capped at max_delay_s
    credit = timing.credit_ns
    for _ in range(int(2 * CREDIT_HALF_LIFE_S * 20) + 1):  # 60 s of punctual packets
        t += ns(0.05)
        mon.on_sample("events", t, t + ns(0.06))
    assert timing.credit_ns == credit // 4


def test_an_unplugged_sensor_is_excluded_within_stale_after_periods_of_its_last_arrival() -> None:
    cfg = event_camera()
    packets = loaded_packets(10.0)
    mon, _ = run(cfg, packets, packets[-1][1])
    last_stamp, last_arrival = packets[-1]
    sensor = mon._sensors["events"]
    slack = sensor.timing.slack_ns
    assert ns(0.05) < slack <= ns(0.05 + 1.0)  # window + learned delay, capped
    stale_at = last_stamp + cfg.stale_timeout_ns + slack
    assert mon.state("events", stale_at) == S.LIVE
    assert mon.state("events", stale_at + 1) == S.STALE
    assert mon.fusable(stale_at + 1, ns(10.0)) == []
    # counted from the last arrival: 2.5 periods plus the estimate's margin over that packet
    assert stale_at - last_arrival <= cfg.stale_timeout_ns + ns(0.06)
    assert mon.state("events", last_stamp + cfg.lost_timeout_ns + slack + 1) == S.LOST


def test_a_replugged_sensor_rejoins_at_its_first_sample_without_credit() -> None:
    mon = AvailabilityMonitor([event_camera()], now_ns=0)
    t = 0
    for _ in range(10):
        t += ns(0.05)
        mon.on_sample("events", t, t + ns(0.06))
    t += ns(0.4)  # a late comeback: credit
    mon.on_sample("events", t, t + ns(0.06))
    assert mon._sensors["events"].timing.credit_ns > 0
    mon.on_publisher_count("events", 0, t + ns(0.1))
    assert mon.state("events", t + ns(0.1)) == S.LOST
    mon.on_publisher_count("events", 1, t + ns(2.0))
    assert mon.on_sample("events", t + ns(2.0), t + ns(2.05))
    assert mon.state("events", t + ns(2.05)) == S.LIVE
    assert mon.fusable(t + ns(2.05), ns(1.0)) == ["events"]
    timing = mon._sensors["events"].timing
    assert timing.credit_ns == 0 and timing.late_comebacks == 0


def test_the_reason_shows_what_the_timeout_is_made_of() -> None:
    mon = AvailabilityMonitor([event_camera()], now_ns=0)
    for k in range(20):  # always 70 ms old on arrival: 20 ms beyond the 50 ms window
        mon.on_sample("events", ns(0.05 * k), ns(0.05 * k + 0.07))
    last = ns(0.05 * 19)
    slack = mon._sensors["events"].timing.slack_ns
    assert slack == ns(0.07)
    h = mon.health(last + ns(0.125) + slack + 1)[0]
    assert h.state == S.STALE
    assert "stale timeout 0.20 s = 0.12 s + 0.05 s window + 0.02 s arrival delay" in h.reason


def test_a_sensor_whose_clock_lags_by_seconds_stays_stale() -> None:
    """The slack is bounded: stamps 5 s behind the node clock do not become fresh."""
    mon = AvailabilityMonitor([event_camera()], now_ns=ns(100.0))
    for k in range(40):
        mon.on_sample("events", ns(95.0 + 0.05 * k), ns(100.0 + 0.05 * k))
    h = mon.health(ns(102.0))[0]
    assert h.state == S.LOST and "old on arrival" in h.reason
    assert mon._sensors["events"].timing.slack_ns == ns(0.05 + 1.0)


@pytest.mark.parametrize(("kw", "error"), [
    ({"window_s": -0.01}, ValueError), ({"max_delay_s": float("nan")}, ValueError),
    ({"window_s": "0.05"}, TypeError)])
def test_config_rejects_bad_slack_values(kw, error) -> None:
    with pytest.raises(error):
        event_camera(**kw)


@settings(max_examples=60, deadline=None)
@given(rate=st.sampled_from([10.0, 20.0, 50.0]), extra=st.floats(0.0, 1.2),
       jitter=st.floats(0.0, 0.1), seed=st.integers(0, 2**16), n=st.integers(3, 80))
def test_regular_window_packets_are_live_until_unplugged(rate, extra, jitter, seed, n) -> None:
    """Packets one window plus up to ``extra`` periods late, at the rate +-``jitter``: LIVE
    from the first to the last; after the last, STALE within stale_after periods + window +
    max_delay_s of its stamp."""
    rng = random.Random(seed)
    period = 1.0 / rate
    cfg = SensorConfig("s", "audio", "/s", expected_rate_hz=rate, window_s=period)
    mon = AvailabilityMonitor([cfg], now_ns=0)
    stamp = 0.0
    packets = []
    for _ in range(n):
        packets.append((ns(stamp), ns(stamp + period * (1 + rng.uniform(0, extra)))))
        stamp += period * (1 + rng.uniform(-jitter, jitter))
    seen_live = False
    for (stamp_ns, arrival), nxt in zip(packets, [*packets[1:], None], strict=True):
        mon.on_sample("s", stamp_ns, arrival)
        seen_live = True
        if nxt is not None:
            assert mon.state("s", max(arrival, nxt[1] - 1)) == S.LIVE
    assert seen_live
    last = packets[-1][0]
    bound = last + cfg.stale_timeout_ns + ns(period) + ns(cfg.max_delay_s) + 1
    assert mon.state("s", bound) in (S.STALE, S.LOST)


def test_a_comeback_after_silence_keeps_the_learned_delay() -> None:
    """Stalled beyond T_lost on an overloaded machine, the same publisher's next packet (as late
    as ever) is LIVE at once: the delay of its path is kept across that new session."""
    mon = AvailabilityMonitor([event_camera()], now_ns=0)
    t = 0
    for _ in range(40):
        t += ns(0.05)
        mon.on_sample("events", t, t + ns(0.4))  # every packet 0.4 s old on arrival
    slack = mon._sensors["events"].timing.slack_ns
    assert slack == ns(0.4)
    t += ns(2.0)  # silent beyond T_lost: LOST, then a new session at the next packet
    assert mon.state("events", t) == S.LOST
    assert mon.on_sample("events", t, t + ns(0.4))
    assert mon.state("events", t + ns(0.4)) == S.LIVE
    assert mon._sensors["events"].timing.slack_ns == slack


def test_one_stall_does_not_flip_a_long_stale_after_sensor_into_degraded() -> None:
    """The microphone's 6-period stale timeout: a 120 ms stall of 20 ms chunks used to weigh 6
    periods in the rate verdict (average 2.25 periods: 'below half the rate')."""
    mic = SensorConfig("mic", "audio", "/mic", expected_rate_hz=50.0, stale_after=6.0,
                       lost_after=25.0, window_s=0.02)
    assert mic.rate_verdict_cap_ns == ns(0.05)  # 2.5 periods, not the 6 of T_stale
    mon = AvailabilityMonitor([mic], now_ns=0)
    t, states = 0, set()
    for k in range(200):
        t += ns(0.12) if k % 40 == 39 else ns(0.02)  # a 120 ms stall every 0.9 s
        mon.on_sample("mic", t, t + ns(0.03))
        states.add(mon.state("mic", t + ns(0.03)))
    assert states == {S.LIVE}
    slow = AvailabilityMonitor([mic], now_ns=0)  # a microphone at a third of its rate
    for k in range(40):
        slow.on_sample("mic", k * ns(0.06), k * ns(0.06) + ns(0.03))
    assert slow.state("mic", 39 * ns(0.06) + ns(0.03)) == S.DEGRADED


def test_the_nodes_own_stall_is_not_its_sensors_silence() -> None:
    """A monitor update 600 ms after the previous one (the process was starved) judges as of
    that previous update: the sensors' messages of the stall are still queued, so no sensor
    turns STALE for the instant before they arrive; one period later the real time is judged,
    so a sensor that really went silent is still excluded."""
    from omnibind_ros.core.availability import AvailabilityMonitor, SensorConfig, SensorState

    ms = 1_000_000
    mon = AvailabilityMonitor([SensorConfig("cam", "image", "/cam", 10.0),
                               SensorConfig("mic", "audio", "/mic", 10.0)],
                              now_ns=0, stall_after_ns=200 * ms)
    plain = AvailabilityMonitor([SensorConfig("cam", "image", "/cam", 10.0)], now_ns=0)
    t = 0
    while t <= 1000 * ms:  # both live, updates every 50 ms
        for m, names in ((mon, ("cam", "mic")), (plain, ("cam",))):
            for name in names:
                m.on_sample(name, t, t)
            m.update(t)
        t += 50 * ms
    stall_end = 1600 * ms  # nothing ran for 600 ms (> T_stale = 250 ms)
    assert all(tr.new != SensorState.STALE for tr in mon.update(stall_end))
    assert mon.stalls == 1
    assert [tr.new for tr in plain.update(stall_end)] == [SensorState.STALE]  # without it
    # the queued camera messages are delivered; the microphone really went silent
    for k in range(1, 7):
        mon.on_sample("cam", 1000 * ms + k * 100 * ms, stall_end + k * ms)
    changes = mon.update(stall_end + 50 * ms)
    assert [(tr.name, tr.new) for tr in changes] == [("mic", SensorState.STALE)]
    assert mon.state("cam", stall_end + 50 * ms) == SensorState.LIVE
