"""The sensor-availability monitor: every transition with explicit times, and properties over
random event sequences (hypothesis). No ROS, no wall clock: every time is written out, as an
int of nanoseconds (``ns(0.12)`` is 120 ms); ages and rates read back are float s and Hz."""
from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnibind_ros.core.availability import (
    AvailabilityMonitor,
    SensorConfig,
    SensorHealth,
    SensorState,
    Transition,
)

REPO = Path(__file__).resolve().parents[2]
S = SensorState
SEC = 1_000_000_000  # ns per s


def ns(seconds: float) -> int:
    """``seconds`` as an int of nanoseconds (test times are written in s for readability)."""
    return round(seconds * SEC)


RATE = 10.0  # Hz: period 0.1 s, stale 0.25 s, lost 1.0 s with the defaults
PERIOD = ns(0.1)
STALE = ns(0.25)
LOST = ns(1.0)
MAX_AGE = ns(0.5)


def cam(name: str = "cam", **kw) -> SensorConfig:
    kw.setdefault("expected_rate_hz", RATE)
    return SensorConfig(name, kw.pop("modality", "image"), f"/{name}/image", **kw)


def monitor(*cfgs: SensorConfig, now_ns: int = 0, **kw) -> AvailabilityMonitor:
    return AvailabilityMonitor(list(cfgs) or [cam()], now_ns=now_ns, **kw)


def feed(mon: AvailabilityMonitor, t0: int, t1: int, rate: float = RATE, name: str = "cam",
         latency: int = 0) -> int:
    """Valid samples stamped t0, t0 + 1/rate, ... < t1 (ns), each received ``latency`` ns
    later; returns the last stamp."""
    k, stamp = 0, t0
    while t0 + round(k * SEC / rate) < t1:
        stamp = t0 + round(k * SEC / rate)
        assert mon.on_sample(name, stamp, stamp + latency)
        k += 1
    return stamp


def health(mon: AvailabilityMonitor, now: int, name: str = "cam") -> SensorHealth:
    return next(h for h in mon.health(now) if h.name == name)


# ---------------------------------------------------------------------------------------------
# The contract with msg/SensorStatus.msg and the module's hygiene


def test_state_values_match_sensor_status_msg() -> None:
    text = (REPO / "msg" / "SensorStatus.msg").read_text()
    constants = dict(re.findall(r"^uint8 ([A-Z]+)=(\d+)", text, flags=re.M))
    assert {k: int(v) for k, v in constants.items()} == {s.name: s.value for s in SensorState}


def test_health_has_every_sensor_status_field() -> None:
    text = (REPO / "msg" / "SensorStatus.msg").read_text()
    fields = re.findall(r"^\w+(?:\[\])? ([a-z_]+)\s*$", text, flags=re.M)
    # the input quality comes from the sensor's stage (core.quality), not from the monitor
    assert set(fields) == set(SensorHealth.__dataclass_fields__) | {"quality", "quality_issue"}


def test_no_wall_clock_in_core_timing_modules() -> None:
    for module in ("availability.py", "fusion.py"):
        tree = ast.parse((REPO / "omnibind_ros" / "core" / module).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"time", "datetime"}, module


@pytest.mark.parametrize(("kw", "error"), [
    ({"expected_rate_hz": -1.0}, ValueError), ({"expected_rate_hz": math.nan}, ValueError),
    ({"stale_after": 0.0}, ValueError), ({"lost_after": 2.0}, ValueError),
    ({"degraded_after_bad": 0}, ValueError), ({"recover_after_good": 1.5}, ValueError),
    ({"rate_tolerance": 1.0}, ValueError), ({"rate_hysteresis": 0.6}, ValueError),
    ({"rate_ewma_alpha": 0.0}, ValueError), ({"enabled": 1}, TypeError),
    ({"expected_rate_hz": "10"}, TypeError), ({"modality": "sonar"}, ValueError),
])
def test_config_rejects_bad_values(kw: dict, error: type) -> None:
    with pytest.raises(error):
        cam(**kw)


def test_default_timeouts_meet_the_hot_plug_target() -> None:
    cfg = cam()
    assert cfg.modality == "image"
    assert 2.0 < cfg.stale_timeout_s / cfg.period_s <= 3.0  # survives one drop, excludes in 3
    assert cfg.lost_timeout_s > cfg.stale_timeout_s
    assert cfg.degraded_below_hz < cfg.recovered_at_hz <= RATE
    assert (cfg.stale_timeout_ns, cfg.lost_timeout_ns) == (STALE, LOST)
    assert type(cfg.stale_timeout_ns) is int and type(cfg.lost_timeout_ns) is int
    assert cam(expected_rate_hz=3.0).stale_timeout_ns == 833_333_333  # 2.5 / 3 Hz, rounded
    text = SensorConfig("operator", "text")
    assert (text.stale_timeout_ns, text.lost_timeout_ns) == (None, None)


# ---------------------------------------------------------------------------------------------
# Transitions, one by one


def test_unknown_then_live_at_the_first_sample() -> None:
    mon = monitor()
    h = health(mon, ns(0.05))
    assert h.state == S.UNKNOWN and h.reason and math.isnan(h.age_s) and h.rate_hz == 0.0
    assert mon.fusable(ns(0.05), MAX_AGE) == []
    assert mon.on_sample("cam", ns(0.10), ns(0.12))
    h = health(mon, ns(0.12))
    assert h.state == S.LIVE and h.reason == "" and h.age_s == 0.02  # float s, exact
    assert h.rate_hz == 0.0  # one sample: no interval yet
    assert mon.fusable(ns(0.12), MAX_AGE) == ["cam"]
    (tr,) = mon.update(ns(0.12))
    assert tr == Transition("cam", S.UNKNOWN, S.LIVE, 120_000_000, "")
    assert type(tr.time_ns) is int
    assert mon.update(ns(0.13)) == []  # each transition is returned once


def test_live_becomes_stale_after_stale_after_periods() -> None:
    mon = monitor()
    last = feed(mon, 0, ns(1.0))  # last stamp 0.9 s
    assert last == ns(0.9)
    assert health(mon, last).rate_hz == pytest.approx(RATE)
    mon.update(last)
    assert mon.state("cam", last + ns(0.24)) == S.LIVE  # 2.4 periods: one dropped frame is fine
    assert mon.state("cam", last + ns(0.26)) == S.STALE
    (tr,) = mon.update(last + ns(0.26))
    assert (tr.old, tr.new) == (S.LIVE, S.STALE) and "stale timeout 0.25 s" in tr.reason
    assert tr.time_ns == last + ns(0.26)
    assert mon.fusable(last + ns(0.26), max_age_ns=ns(10.0)) == []  # a long max age can't help
    assert health(mon, last + ns(0.5)).rate_hz == pytest.approx(2.0)  # decays as 1 / age


def test_stale_becomes_lost_after_lost_after_periods() -> None:
    mon = monitor()
    last = feed(mon, 0, ns(1.0))
    assert mon.state("cam", last + ns(0.99)) == S.STALE
    assert mon.state("cam", last + ns(1.01)) == S.LOST
    h = health(mon, last + ns(1.01))
    assert "lost timeout" in h.reason and h.rate_hz == 0.0


def test_stale_and_lost_boundaries_are_exact_to_the_nanosecond() -> None:
    """A sample exactly the timeout old is not yet STALE (LOST); one nanosecond later it is."""
    mon = monitor()
    last = feed(mon, 0, ns(1.0))
    assert mon.state("cam", last + STALE) == S.LIVE
    assert mon.fusable(last + STALE, MAX_AGE) == ["cam"]
    assert mon.state("cam", last + STALE + 1) == S.STALE
    assert mon.fusable(last + STALE + 1, MAX_AGE) == []
    assert mon.state("cam", last + LOST) == S.STALE
    assert mon.state("cam", last + LOST + 1) == S.LOST


def test_startup_grace_boundary_is_exact() -> None:
    mon = monitor(now_ns=ns(5.0))
    assert mon.state("cam", ns(5.0) + LOST) == S.UNKNOWN
    assert mon.state("cam", ns(5.0) + LOST + 1) == S.LOST


def test_fusable_max_age_boundary_is_exact() -> None:
    """A sample exactly ``max_age_ns`` old is fused; one nanosecond older is not."""
    mon = monitor()
    assert mon.on_sample("cam", ns(1.0), ns(1.0))
    assert mon.fusable(ns(1.0), 0) == ["cam"]  # max age 0: only a sample stamped now
    assert mon.fusable(ns(1.0) + 1, 0) == []
    assert mon.fusable(ns(1.0) + ns(0.2), ns(0.2)) == ["cam"]
    assert mon.fusable(ns(1.0) + ns(0.2) + 1, ns(0.2)) == []
    assert mon.clock_resets == 0


def test_unknown_becomes_lost_when_nothing_arrives_within_the_grace() -> None:
    mon = monitor(now_ns=ns(5.0))
    assert mon.state("cam", ns(5.99)) == S.UNKNOWN
    assert mon.state("cam", ns(6.01)) == S.LOST
    assert "no sample in" in health(mon, ns(6.01)).reason


def test_grace_starts_at_the_first_clock_reading_when_added_without_time() -> None:
    mon = AvailabilityMonitor()
    mon.add_sensor(cam())
    assert mon.state("cam", ns(100.0)) == S.UNKNOWN
    assert mon.state("cam", ns(100.9)) == S.UNKNOWN
    assert mon.state("cam", ns(101.1)) == S.LOST


def test_publisher_gone_is_lost_at_once_and_back_waits_for_a_sample() -> None:
    mon = monitor()
    mon.on_publisher_count("cam", 1, 0)
    last = feed(mon, 0, ns(1.0))
    mon.on_publisher_count("cam", 0, last + ns(0.01))
    h = health(mon, last + ns(0.01))
    assert h.state == S.LOST and h.publisher_count == 0
    assert "no publisher on /cam/image" in h.reason
    assert mon.fusable(last + ns(0.01), MAX_AGE) == []  # though its newest sample is 10 ms old
    mon.on_publisher_count("cam", 1, ns(3.0))
    h = health(mon, ns(3.0))
    assert h.state == S.UNKNOWN and math.isnan(h.age_s)  # old samples: the old publisher's
    assert mon.on_sample("cam", ns(3.05), ns(3.06))
    assert mon.state("cam", ns(3.06)) == S.LIVE and mon.fusable(ns(3.06), MAX_AGE) == ["cam"]
    states = [(t.old, t.new) for t in mon.update(ns(3.06))]
    assert states == [(S.UNKNOWN, S.LIVE), (S.LIVE, S.LOST), (S.LOST, S.UNKNOWN),
                      (S.UNKNOWN, S.LIVE)]


def test_sample_newer_than_the_publisher_loss_revives_before_the_graph_catches_up() -> None:
    mon = monitor()
    feed(mon, 0, ns(1.0))
    mon.on_publisher_count("cam", 0, ns(1.0))
    assert not mon.on_sample("cam", ns(0.95), ns(1.01))  # in flight from the vanished publisher
    assert mon.state("cam", ns(1.01)) == S.LOST
    assert mon.on_sample("cam", ns(2.0), ns(2.01))  # only a new publisher can have sent this
    h = health(mon, ns(2.01))
    assert h.state == S.LIVE and h.publisher_count is None


def test_replug_after_lost_is_live_and_fusable_at_the_first_valid_sample() -> None:
    mon = monitor()
    feed(mon, 0, ns(1.0))
    assert mon.state("cam", ns(5.0)) == S.LOST
    assert mon.on_sample("cam", ns(5.0), ns(5.01))
    assert mon.state("cam", ns(5.01)) == S.LIVE and mon.fusable(ns(5.01), MAX_AGE) == ["cam"]
    feed(mon, ns(5.1), ns(6.0))
    h = health(mon, ns(5.95))
    assert h.state == S.LIVE and h.rate_hz == pytest.approx(RATE)  # the outage left no trace


def test_short_outage_comes_back_live_not_degraded() -> None:
    mon = monitor()
    feed(mon, 0, ns(1.0))  # last 0.9 s
    assert mon.state("cam", ns(1.5)) == S.STALE
    for k in range(8):  # 0.7 s gap (< lost timeout) then the normal rate again
        t = ns(1.6) + k * PERIOD
        assert mon.on_sample("cam", t, t)
        assert mon.state("cam", t) == S.LIVE, k


def test_disable_and_enable() -> None:
    mon = monitor()
    feed(mon, 0, ns(1.0))
    mon.set_enabled("cam", False, now_ns=ns(0.95))
    h = health(mon, ns(0.95))
    assert h.state == S.DISABLED and h.reason == "disabled by operator"
    assert mon.on_sample("cam", ns(1.0), ns(1.0))  # recorded while disabled...
    assert mon.fusable(ns(1.0), MAX_AGE) == []  # ...but never fused
    mon.set_enabled("cam", True, now_ns=ns(1.05))
    assert mon.state("cam", ns(1.05)) == S.LIVE  # its newest sample is fresh
    assert [(t.old, t.new) for t in mon.update(ns(1.05))][-2:] == [(S.LIVE, S.DISABLED),
                                                                   (S.DISABLED, S.LIVE)]


def test_disabled_by_configuration() -> None:
    mon = monitor(cam(enabled=False))
    feed(mon, 0, ns(0.5))
    h = health(mon, ns(0.45))
    assert h.state == S.DISABLED and h.reason == "disabled by configuration"
    assert mon.fusable(ns(0.45), MAX_AGE) == []
    mon.set_enabled("cam", True, now_ns=ns(0.45))
    assert mon.fusable(ns(0.45), MAX_AGE) == ["cam"]


def test_enable_restarts_the_grace() -> None:
    mon = monitor(cam(enabled=False))
    mon.set_enabled("cam", True, now_ns=ns(10.0))
    assert mon.state("cam", ns(10.9)) == S.UNKNOWN
    assert mon.state("cam", ns(11.1)) == S.LOST


def test_n_bad_in_a_row_degrade_and_good_ones_recover() -> None:
    mon = monitor()
    feed(mon, 0, ns(1.0))  # last 0.9 s
    mon.on_bad_sample("cam", ns(1.0), "NonFiniteInputError: all NaN")
    mon.on_bad_sample("cam", ns(1.1), "NonFiniteInputError: all NaN")
    assert mon.state("cam", ns(1.1)) == S.LIVE  # 2 < 3 in a row
    mon.on_bad_sample("cam", ns(1.2), "NonFiniteInputError: all NaN")
    h = health(mon, ns(1.2))
    assert h.state == S.DEGRADED and "3 bad samples in a row" in h.reason
    assert "all NaN" in h.reason
    assert mon.fusable(ns(1.2), max_age_ns=ns(10.0)) == []  # quality: last good one untrusted
    assert mon.state("cam", ns(1.4)) == S.DEGRADED  # bad samples keep arriving: not STALE
    for k, t in enumerate((ns(1.3), ns(1.4))):
        assert mon.on_sample("cam", t, t)
        assert mon.state("cam", t) == S.DEGRADED, k
        assert "recovering" in health(mon, t).reason
    assert mon.on_sample("cam", ns(1.5), ns(1.5))
    assert mon.state("cam", ns(1.5)) == S.LIVE  # 3 good in a row


def test_degraded_sensor_that_goes_silent_is_stale_then_lost() -> None:
    mon = monitor()
    for t in (ns(0.1), ns(0.2), ns(0.3)):
        mon.on_bad_sample("cam", t, "x")
    assert mon.state("cam", ns(0.6)) == S.STALE  # nothing at all arrives any more
    assert mon.state("cam", ns(1.35)) == S.LOST
    assert mon.on_sample("cam", ns(2.0), ns(2.0))  # a new session: the old bad streak is gone
    assert mon.state("cam", ns(2.0)) == S.LIVE


def test_isolated_bad_samples_never_degrade() -> None:
    mon = monitor(cam(expected_rate_hz=3.0))  # one valid sample every 0.3 s is on rate
    for k in range(40):  # bad, bad, good, bad, bad, good...
        t = k * PERIOD
        if k % 3 == 2:
            mon.on_sample("cam", t, t)
        else:
            mon.on_bad_sample("cam", t, "ClippedAudioError")
        assert mon.state("cam", t) in (S.UNKNOWN, S.LIVE)


def test_bad_samples_only_are_unknown_then_degraded() -> None:
    mon = monitor()
    mon.on_bad_sample("cam", ns(0.1), "InvalidShapeError")
    h = health(mon, ns(0.1))
    assert h.state == S.UNKNOWN and "no valid one yet" in h.reason
    mon.on_bad_sample("cam", ns(0.2), "InvalidShapeError")
    mon.on_bad_sample("cam", ns(0.3), "InvalidShapeError")
    assert mon.state("cam", ns(0.3)) == S.DEGRADED


def test_sparse_bad_samples_do_not_hide_stale_data() -> None:
    mon = monitor()
    feed(mon, 0, ns(1.0))  # last valid 0.9 s
    mon.on_bad_sample("cam", ns(1.1), "x")
    mon.on_bad_sample("cam", ns(1.2), "x")
    h = health(mon, ns(1.2))  # something arrives, but the newest valid sample is 0.3 s old
    # messages arrive, only bad ones: a broken sensor (DEGRADED), never a silent one (STALE)
    assert h.state == S.DEGRADED and "receiving bad samples" in h.reason
    assert "newest valid one" in h.reason and mon.fusable(ns(1.2), MAX_AGE) == []


def test_rate_well_below_expected_degrades_but_still_fuses() -> None:
    mon = monitor()
    last = feed(mon, 0, ns(3.0), rate=4.0)  # 40 % of 10 Hz, intervals inside the stale timeout
    h = health(mon, last)
    assert h.state == S.DEGRADED and "below 5.00 Hz" in h.reason
    assert h.rate_hz == pytest.approx(4.0)
    assert mon.fusable(last, MAX_AGE) == ["cam"]  # the data is good, only slow
    last = feed(mon, last + PERIOD, last + ns(3.0))  # back to 10 Hz
    assert mon.state("cam", last) == S.LIVE


def test_rate_hovering_at_the_threshold_does_not_flap() -> None:
    mon = monitor()
    feed(mon, 0, ns(2.0), rate=4.0)
    assert mon.state("cam", ns(1.9)) == S.DEGRADED
    mon.update(ns(1.9))
    t = ns(1.75)  # the last sample
    for k in range(60):  # intervals alternate 0.19 / 0.21 s: about 5 Hz, the enter threshold
        t += ns(0.19) if k % 2 else ns(0.21)
        mon.on_sample("cam", t, t)
    assert mon.update(t) == []  # stayed DEGRADED: exit needs 6.5 Hz
    for _ in range(60):  # 5.3 Hz: above the enter threshold from the LIVE side
        t += ns(0.19)
        mon.on_sample("cam", t, t)
    assert mon.state("cam", t) == S.DEGRADED


def test_rate_above_threshold_never_degrades_from_live() -> None:
    mon = monitor()
    t = 0
    for k in range(100):  # 5.3 Hz with jitter: above 5 Hz, below 6.5 Hz
        t += ns(0.19) + (ns(0.01) if k % 2 else -ns(0.01))
        mon.on_sample("cam", t, t)
        assert mon.state("cam", t) == S.LIVE


def test_no_rate_verdict_before_enough_intervals() -> None:
    mon = monitor()
    for t in (0, ns(0.22), ns(0.44), ns(0.66)):  # 3 slow intervals < min_rate_intervals
        mon.on_sample("cam", t, t)
    assert mon.state("cam", ns(0.66)) == S.LIVE
    mon.on_sample("cam", ns(0.88), ns(0.88))
    assert mon.state("cam", ns(0.88)) == S.DEGRADED


def test_clock_backwards_resets_cleanly() -> None:
    mon = monitor(cam(), cam("cam2", modality="thermal"))
    mon.on_publisher_count("cam2", 0, 0)
    feed(mon, 0, ns(5.0))
    mon.update(ns(4.95))
    h = health(mon, ns(0.5))  # a looping bag restarts at 0.5 s
    assert h.state == S.UNKNOWN and math.isnan(h.age_s) and "clock jumped back" in h.reason
    assert health(mon, ns(0.5), "cam2").state == S.LOST  # the graph did not change
    assert mon.fusable(ns(0.5), MAX_AGE) == [] and mon.clock_resets == 1
    assert [(t.name, t.old, t.new) for t in mon.update(ns(0.5))] == [("cam", S.LIVE, S.UNKNOWN)]
    assert mon.on_sample("cam", ns(0.5), ns(0.51))  # older than every stamp before the jump
    assert mon.state("cam", ns(0.51)) == S.LIVE and mon.fusable(ns(0.51), MAX_AGE) == ["cam"]
    assert mon.on_sample("cam2", ns(0.52), ns(0.53))  # the stale loss time does not block it
    assert mon.state("cam2", ns(0.53)) == S.LIVE


def test_small_backward_clock_steps_are_ignored() -> None:
    mon = monitor()
    feed(mon, 0, ns(1.0))
    assert mon.state("cam", ns(0.85)) == S.LIVE  # 50 ms back: executor threads out of order
    assert mon.clock_resets == 0 and health(mon, ns(0.95)).age_s == 0.05


def test_clock_jump_tolerance_boundary_is_exact() -> None:
    """A step back of exactly ``clock_jump_tolerance_ns`` is tolerated; one ns more resets."""
    mon = monitor(clock_jump_tolerance_ns=ns(0.1))
    assert mon.clock_jump_tolerance_ns == 100_000_000
    assert mon.on_sample("cam", ns(1.0), ns(1.0))
    assert mon.state("cam", ns(0.9)) == S.LIVE and mon.clock_resets == 0
    assert mon.state("cam", ns(0.9) - 1) == S.UNKNOWN and mon.clock_resets == 1
    assert AvailabilityMonitor().clock_jump_tolerance_ns == 100_000_000  # the default, 0.1 s


def test_future_stamps_are_rejected_with_a_reason() -> None:
    mon = monitor()
    assert not mon.on_sample("cam", ns(100.0), ns(1.0))  # sensor clock 99 s ahead
    h = health(mon, ns(1.0))
    assert h.state == S.UNKNOWN and "ahead of the node clock" in h.reason
    assert mon.fusable(ns(1.0), MAX_AGE) == []
    assert mon.on_sample("cam", ns(1.1), ns(1.0))  # 0.1 s ahead: host skew, accepted
    h = health(mon, ns(1.0))
    assert h.state == S.LIVE and h.age_s == 0.0


def test_future_tolerance_boundary_is_exact() -> None:
    mon = monitor()
    assert mon.max_future_ns == 200_000_000  # the default, 0.2 s
    assert not mon.on_sample("cam", ns(1.2) + 1, ns(1.0))  # 1 ns beyond the tolerance
    assert mon.on_sample("cam", ns(1.2), ns(1.0))  # exactly at it


def test_samples_old_on_arrival_are_stale_with_a_clock_hint() -> None:
    mon = monitor(now_ns=ns(1000.0))
    for k in range(5):  # sensor stamps 5 s behind the node clock (use_sim_time mismatch)
        assert mon.on_sample("cam", ns(995.0) + k * PERIOD, ns(1000.0) + k * PERIOD)
    h = health(mon, ns(1000.45))
    assert h.state == S.LOST and "old on arrival" in h.reason and h.age_s == 5.05
    assert mon.fusable(ns(1000.45), max_age_ns=ns(10.0)) == []


def test_numpy_integers_are_accepted_as_times() -> None:
    mon = monitor()
    assert mon.on_sample("cam", np.int64(ns(0.5)), np.int64(ns(0.5)))
    assert mon.fusable(np.int64(ns(0.6)), np.int64(ns(0.5))) == ["cam"]
    assert mon.fusable(np.int32(ns(0.6)), np.uint32(ns(0.1))) == ["cam"]
    assert mon.fusable(np.int64(ns(0.6)) + 1, np.int64(ns(0.1))) == []


FLOAT_TIMES = [1.0, 0.5, np.float64(1.0), np.float32(1.0), math.nan, math.inf, True]


@pytest.mark.parametrize("bad", FLOAT_TIMES, ids=repr)
def test_a_time_that_is_not_an_int_of_nanoseconds_raises_type_error(bad) -> None:
    """Seconds passed by mistake (a float, even a whole one) fail loudly, for every entry."""
    mon = monitor()
    assert mon.on_sample("cam", ns(0.1), ns(0.1))
    calls = [
        lambda: mon.on_sample("cam", bad, ns(0.2)),  # the stamp
        lambda: mon.on_sample("cam", ns(0.2), bad),  # the clock reading
        lambda: mon.on_bad_sample("cam", bad, "x"),
        lambda: mon.on_publisher_count("cam", 1, bad),
        lambda: mon.set_enabled("cam", False, now_ns=bad),
        lambda: mon.update(bad),
        lambda: mon.state("cam", bad),
        lambda: mon.health(bad),
        lambda: mon.fusable(bad, MAX_AGE),
        lambda: mon.add_sensor(cam("cam2"), now_ns=bad),
        lambda: AvailabilityMonitor([cam()], now_ns=bad),
    ]
    for k, call in enumerate(calls):
        with pytest.raises(TypeError, match="must be an int of nanoseconds"):
            call()
        assert mon.clock_resets == 0, k
    # nothing was recorded by the failed calls
    assert mon.sensor_names == ("cam",) and mon.state("cam", ns(0.2)) == S.LIVE
    assert health(mon, ns(0.2)).age_s == 0.1
    assert [(t.old, t.new) for t in mon.update(ns(0.2))] == [(S.UNKNOWN, S.LIVE)]


def test_max_age_and_tolerances_must_be_ints_of_nanoseconds() -> None:
    mon = monitor()
    with pytest.raises(ValueError, match="max_age_ns must be an int"):
        mon.fusable(0, 0.5)
    for key in ("clock_jump_tolerance_ns", "max_future_ns"):
        with pytest.raises(ValueError, match=key):
            AvailabilityMonitor(**{key: 0.1})
        with pytest.raises(ValueError, match=key):
            AvailabilityMonitor(**{key: -1})


def test_out_of_order_and_duplicate_stamps_are_bad() -> None:
    mon = monitor()
    feed(mon, 0, ns(1.0))  # last 0.9 s
    assert not mon.on_sample("cam", ns(0.8), ns(1.0))  # reordered by a best-effort transport
    assert mon.state("cam", ns(1.0)) == S.LIVE
    for t in (ns(1.0), ns(1.1), ns(1.2)):  # a driver stamping every message 0.9 s
        assert not mon.on_sample("cam", ns(0.9), t)
    h = health(mon, ns(1.2))
    assert h.state == S.DEGRADED and "out of order or duplicate" in h.reason


def test_a_stamp_one_nanosecond_newer_is_in_order() -> None:
    mon = monitor()
    assert mon.on_sample("cam", ns(0.9), ns(0.9))
    assert not mon.on_sample("cam", ns(0.9), ns(0.95))  # duplicate
    assert mon.on_sample("cam", ns(0.9) + 1, ns(0.95))  # newer by 1 ns: no rounding in between


def test_remove_and_add_at_runtime() -> None:
    mon = monitor()
    feed(mon, 0, ns(1.0))
    assert mon.remove_sensor("cam").name == "cam"
    assert "cam" not in mon and mon.fusable(ns(0.95), MAX_AGE) == []
    assert mon.health(ns(0.95)) == []
    with pytest.raises(KeyError, match="unknown sensor 'cam'"):
        mon.on_sample("cam", ns(1.0), ns(1.0))
    mon.add_sensor(cam(), now_ns=ns(1.0))
    assert mon.state("cam", ns(1.0)) == S.UNKNOWN  # history went with the removal
    mon.add_sensor(cam("lidar", modality="point_cloud"), now_ns=ns(1.0))
    assert mon.sensor_names == ("cam", "lidar") and len(mon) == 2
    with pytest.raises(ValueError, match="already monitored"):
        mon.add_sensor(cam())


def test_sensor_without_expected_rate_has_no_timeouts() -> None:
    mon = monitor(SensorConfig("operator", "text", "/operator/text"))
    big = 10**15  # 1e6 s
    assert mon.state("operator", big) == S.UNKNOWN
    for t in (big, big + ns(1.0), big + ns(7.0), big + ns(7.5), big + ns(500.0)):
        assert mon.on_sample("operator", t, t)
    assert mon.fusable(big + ns(500.2), MAX_AGE) == ["operator"]
    assert mon.state("operator", 2 * big) == S.LIVE
    assert mon.fusable(2 * big, MAX_AGE) == []  # but the max age still bounds what is fused


def test_in_fusion_and_health_fields() -> None:
    mon = monitor(cam(), cam("lidar", modality="point_cloud", expected_rate_hz=5.0))
    mon.on_publisher_count("cam", 2, 0)
    feed(mon, 0, ns(1.0))
    mon.set_in_fusion(["cam"])
    cam_h, lidar_h = mon.health(ns(0.95))
    assert (cam_h.name, cam_h.modality, cam_h.topic) == ("cam", "image", "/cam/image")
    assert cam_h.in_fusion and not lidar_h.in_fusion
    assert cam_h.publisher_count == 2 and lidar_h.publisher_count is None
    assert (cam_h.expected_rate_hz, lidar_h.expected_rate_hz) == (10.0, 5.0)
    assert type(cam_h.age_s) is float and cam_h.age_s == 0.05  # a duration for people, in s


def test_bad_arguments() -> None:
    mon = monitor()
    for bad_now in (math.nan, math.inf):
        with pytest.raises(TypeError, match="now_ns"):
            mon.update(bad_now)
    with pytest.raises(ValueError):
        mon.on_publisher_count("cam", -1, 0)
    with pytest.raises(ValueError):
        mon.fusable(0, -1)
    with pytest.raises(TypeError):
        mon.add_sensor({"name": "x"})  # type: ignore[arg-type]


def _scenario_live(mon: AvailabilityMonitor) -> int:
    return feed(mon, 0, ns(1.0))


def _scenario_disabled(mon: AvailabilityMonitor) -> int:
    mon.set_enabled("cam", False, now_ns=0, reason="")
    return 0


def _scenario_bad(mon: AvailabilityMonitor) -> int:
    for t in (ns(0.1), ns(0.2), ns(0.3)):
        mon.on_bad_sample("cam", t, "")
    return ns(0.3)


def _scenario_lost_publisher(mon: AvailabilityMonitor) -> int:
    mon.on_publisher_count("cam", 0, ns(0.1))
    return ns(0.1)


def _scenario_slow(mon: AvailabilityMonitor) -> int:
    return feed(mon, 0, ns(3.0), rate=4.0)


@pytest.mark.parametrize(("scenario", "expected"), [
    (_scenario_live, S.LIVE), (_scenario_disabled, S.DISABLED), (_scenario_bad, S.DEGRADED),
    (_scenario_lost_publisher, S.LOST), (_scenario_slow, S.DEGRADED),
])
@pytest.mark.parametrize("later", [0, ns(0.2), ns(0.5), ns(3.0)])
def test_reason_is_empty_exactly_when_live(scenario, expected: SensorState, later: int) -> None:
    mon = monitor()
    t = scenario(mon) + later
    h = health(mon, t)
    if later == 0:
        assert h.state == expected
    assert (h.reason == "") == (h.state == S.LIVE), h


# ---------------------------------------------------------------------------------------------
# Properties over random event sequences
#
# Three kinds of sensor: "good" ones publish valid samples at their expected rate (small jitter
# and latency) and are otherwise left alone; "noisy" ones get random samples, bad samples, gaps,
# publisher counts and enable/disable; the clock sometimes jumps back (a looping bag). Times
# are ints of nanoseconds; rates are Hz and jitter and phase fractions of a period.

OPS = ("sample", "late_sample", "future_sample", "old_sample", "burst", "bad", "pub0", "pub1",
       "disable", "enable", "tick", "jump_back")


@dataclass
class GoodSensor:
    name: str
    rate: float
    phase: float
    jitter: list[float]
    next_t: int = 0
    k: int = 0
    first_t: int | None = None  # first sample in the current timeline

    @property
    def period(self) -> int:
        return round(SEC / self.rate)

    def restart(self, now: int) -> None:
        self.next_t, self.first_t = now + round(self.phase * self.period), None


@dataclass
class Oracle:
    """What the test itself knows, independently of the monitor."""

    newest_stamp: dict[str, int] = field(default_factory=dict)  # newest valid stamp sent
    enabled: dict[str, bool] = field(default_factory=dict)


def check_invariants(mon: AvailabilityMonitor, now: int, goods: list[GoodSensor],
                     oracle: Oracle, max_age: int) -> None:
    healths = {h.name: h for h in mon.health(now)}
    fusable = mon.fusable(now, max_age)
    for h in healths.values():
        assert isinstance(h.state, SensorState)
        assert math.isnan(h.age_s) or h.age_s >= 0.0
        assert h.rate_hz >= 0.0 and math.isfinite(h.rate_hz)
        assert (h.reason == "") == (h.state == S.LIVE)
    for name in fusable:
        assert oracle.enabled[name], f"disabled {name} fused"
        assert healths[name].state in (S.LIVE, S.DEGRADED)
        newest = oracle.newest_stamp.get(name)
        assert newest is not None and now - newest <= max_age, f"old {name} fused"
    for name, enabled in oracle.enabled.items():
        if not enabled:
            assert healths[name].state == S.DISABLED and name not in fusable
    for g in goods:
        if g.first_t is not None and now >= g.first_t + g.period:
            assert healths[g.name].state == S.LIVE, (g, healths[g.name])


def run_sequence(goods: list[GoodSensor], steps: list[tuple], max_age: int) -> None:
    noisy = [cam("n0"), cam("n1", modality="audio", expected_rate_hz=25.0),
             SensorConfig("n2", "text")]
    cfgs = [cam(g.name, expected_rate_hz=g.rate) for g in goods] + noisy
    mon = AvailabilityMonitor(cfgs, now_ns=0)
    oracle = Oracle(enabled={c.name: True for c in cfgs})
    now = 0
    for g in goods:
        g.restart(now)

    def emit_goods_until(t_end: int) -> None:
        nonlocal now
        while True:
            g = min(goods, key=lambda s: s.next_t, default=None)
            if g is None or g.next_t > t_end:
                return
            now = max(now, g.next_t)
            # latency < 0.1 period
            stamp = now - round(0.1 * g.period * g.jitter[g.k % len(g.jitter)])
            assert mon.on_sample(g.name, stamp, now)
            oracle.newest_stamp[g.name] = max(oracle.newest_stamp.get(g.name, stamp), stamp)
            g.first_t = now if g.first_t is None else g.first_t
            g.k += 1
            g.next_t = now + round((1.0 + 0.2 * (g.jitter[g.k % len(g.jitter)] - 0.5))
                                   * g.period)
            check_invariants(mon, now, goods, oracle, max_age)

    for dt, op, idx, x, n in steps:  # dt and x: ns
        target = now + dt
        emit_goods_until(target)
        now = target
        name = noisy[idx % len(noisy)].name
        if op == "jump_back" and now > SEC + 10 * x:  # always beyond the jump tolerance
            now -= SEC + 10 * x
            oracle.newest_stamp.clear()
            for g in goods:
                g.restart(now)
        elif op in ("sample", "late_sample", "future_sample", "old_sample"):
            offset = {"sample": 0, "late_sample": -x // 2, "future_sample": 2 * x,
                      "old_sample": -5 * x}[op]
            stamp = now + offset
            if mon.on_sample(name, stamp, now):
                oracle.newest_stamp[name] = max(oracle.newest_stamp.get(name, stamp), stamp)
        elif op == "burst":  # n samples every 0.02-0.4 s: on rate, slow, or with gaps
            for _ in range(n):
                target = now + ns(0.02) + 38 * x // 100
                emit_goods_until(target)
                now = target
                if mon.on_sample(name, now, now):
                    oracle.newest_stamp[name] = max(oracle.newest_stamp.get(name, now), now)
                check_invariants(mon, now, goods, oracle, max_age)
        elif op == "bad":
            for _ in range(n // 2 + 1):
                mon.on_bad_sample(name, now, "bad")
        elif op in ("pub0", "pub1"):
            mon.on_publisher_count(name, int(op == "pub1"), now)
        elif op in ("disable", "enable"):
            mon.set_enabled(name, op == "enable", now_ns=now)
            oracle.enabled[name] = op == "enable"
        for tr in mon.update(now):
            assert tr.old != tr.new and isinstance(tr.new, SensorState)
            assert type(tr.time_ns) is int
        check_invariants(mon, now, goods, oracle, max_age)


good_sensors = st.lists(
    st.builds(GoodSensor, name=st.sampled_from(["g0", "g1"]),
              rate=st.sampled_from([2.0, 5.0, 15.0, 30.0]),
              phase=st.floats(0.0, 1.0), jitter=st.lists(st.floats(0.0, 1.0), min_size=1,
                                                         max_size=5)),
    max_size=2, unique_by=lambda g: g.name)
steps_strategy = st.lists(
    st.tuples(st.integers(0, ns(0.4)), st.sampled_from(OPS), st.integers(0, 2),
              st.integers(0, SEC), st.integers(1, 12)),
    min_size=5, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(goods=good_sensors, steps=steps_strategy,
       max_age=st.sampled_from([ns(0.05), ns(0.3), ns(2.0)]))
def test_invariants_hold_over_random_event_sequences(goods, steps, max_age) -> None:
    run_sequence(goods, steps, max_age)


@settings(max_examples=40, deadline=None)
@given(rate=st.floats(1.0, 60.0), latency=st.floats(0.0, 0.3),
       start=st.integers(0, 10**14), n=st.integers(1, 30))
def test_sensor_at_its_rate_is_live_from_its_first_message(rate, latency, start, n) -> None:
    mon = monitor(cam(expected_rate_hz=rate), now_ns=start)
    period = round(SEC / rate)
    for k in range(n):
        stamp = start + k * period
        now = stamp + round(latency * period)  # latency: a fraction of a period
        assert mon.on_sample("cam", stamp, now)
        for t in (now, stamp + period - 1):  # until the next message is due
            assert mon.state("cam", t) == S.LIVE
            assert mon.fusable(t, max_age_ns=2 * period) == ["cam"]
    unplugged = start + (n - 1) * period + 1000
    assert mon.fusable(unplugged + 3 * period, max_age_ns=ns(10.0)) == []  # hot-plug target


# ---------------------------------------------------------------------------------------------
# The injected clock: read under the lock, so threads cannot deliver stale readings


def test_injected_clock_is_read_inside_the_lock() -> None:
    seen_owned: list[bool] = []
    times = iter(range(0, ns(100.0), ns(0.05)))

    def clock() -> int:
        seen_owned.append(mon._lock._is_owned())  # noqa: SLF001  (the point of the test)
        return next(times)

    mon = AvailabilityMonitor(clock=clock)
    mon.add_sensor(cam())
    for k in range(10):
        assert mon.on_sample("cam", k * PERIOD)
        mon.update()
    assert mon.state("cam") is S.LIVE
    assert seen_owned and all(seen_owned)
    assert mon.clock_resets == 0


def test_explicit_time_wins_over_the_injected_clock() -> None:
    mon = AvailabilityMonitor([cam()], clock=lambda: ns(1000.0))
    assert mon.on_sample("cam", 0, 0)
    assert mon.state("cam", ns(0.05)) is S.LIVE  # the clock would say 1000 s: LOST
    assert mon.state("cam") is S.LOST


def test_threads_sharing_the_injected_clock_never_fake_a_clock_jump() -> None:
    """Many threads hammering the monitor with a clock that advances on every reading: times
    reach the monitor in reading order, so no reset however the threads interleave."""
    import threading

    lock, now = threading.Lock(), [0]

    def clock() -> int:
        with lock:
            now[0] += ns(0.001)
            return now[0]

    mon = AvailabilityMonitor([cam(f"c{i}") for i in range(4)], clock=clock,
                              clock_jump_tolerance_ns=0)

    def hammer(name: str) -> None:
        for k in range(300):
            mon.on_sample(name, k * 1000)  # stamps far in the past: only the clock matters
            mon.update()
            mon.fusable(None, MAX_AGE)

    threads = [threading.Thread(target=hammer, args=(f"c{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mon.clock_resets == 0


def test_no_time_and_no_clock_is_a_clear_error() -> None:
    mon = AvailabilityMonitor([cam()])
    with pytest.raises(ValueError, match="no injected clock"):
        mon.update()


def test_an_injected_clock_that_returns_seconds_is_refused() -> None:
    """A clock in float seconds would otherwise be read as a handful of nanoseconds."""
    with pytest.raises(TypeError, match="injected clock"):
        AvailabilityMonitor([cam()], clock=lambda: 1.5)  # the first sensor reads the clock
    mon = AvailabilityMonitor(clock=lambda: 1.5)
    with pytest.raises(TypeError, match="injected clock"):
        mon.update()
    assert AvailabilityMonitor([cam()], clock=lambda: 1_500_000_000).update() == []
