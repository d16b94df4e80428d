"""Sensor-availability monitor: which configured sensors are live, judged from stamps.

A pure state machine (no ROS, no wall clock). The caller feeds it events, each with ``now_ns``
read from the node's clock (sim time under ``use_sim_time``) as integer nanoseconds, and asks it
which sensors may enter fusion. Nothing here reads ``time.time()``: the same code runs live,
from a bag and in unit tests with hand-written times. Every time is an ``int`` of nanoseconds
(stamps, clock readings, transition times): no rounding, so a bag replays bit for bit; only
durations shown to people (reasons, ``SensorHealth.age_s``) are seconds.

Events
    ``on_sample`` (a valid message: its header stamp), ``on_bad_sample`` (a message that failed
    conversion/preprocessing/encoding), ``on_publisher_count`` (from the ROS graph),
    ``set_enabled`` (parameter or operator), ``add_sensor``/``remove_sensor`` (runtime reconfig).

State (first matching row wins; ``T_stale = stale_after / expected_rate_hz + slack``,
``T_lost = lost_after / expected_rate_hz + slack``, where the arrival *slack* is
``window_s + min(max_delay_s, learned extra delay + lateness credit)``, 0 for a prompt frame
sensor, module :mod:`~omnibind_ros.core.availability_timing`; "newest sample" counts bad
samples too, at their arrival time, "newest valid sample" only accepted ones, at their
stamp)::

    condition                                                  state      fusable
    disabled (config or operator)                              DISABLED   no
    publisher count 0 (from the graph)                         LOST       no
    nothing received yet, for <= T_lost since watching began   UNKNOWN    no
    nothing received yet, for >  T_lost                        LOST       no
    newest sample older than T_lost                            LOST       no
    newest sample older than T_stale                           STALE      no
    >= degraded_after_bad bad samples in a row (latched until
       recover_after_good valid ones in a row)                 DEGRADED   no
    only bad samples so far (fewer than degraded_after_bad)    UNKNOWN    no
    newest valid sample older than T_stale (bad ones since)    DEGRADED   no
    rate below (1 - rate_tolerance) * expected (latched until
       >= (1 - rate_tolerance + rate_hysteresis) * expected)   DEGRADED   if age <= max_age_s
    otherwise                                                  LIVE       if age <= max_age_s

    "age" = now - stamp of the newest valid sample. STALE and LOST need expected_rate_hz > 0.

Why these choices:

* Timeouts count from when a sample could arrive, not from its stamp. Earlier versions counted
  from the stamp and had no STALE/LIVE hysteresis, reasoning that ``stale_after = 2.5`` periods
  outlasts one dropped message plus jitter. That held on an idle machine only: a window sensor
  (event packets, audio chunks, stamped at the start of their window) is one window old on
  arrival, a loaded CPU adds tens of ms more, and the 20 Hz event camera (125 ms timeout,
  packets 60-120 ms old on arrival) flapped every few hundred ms while every packet arrived.
  Now the slack adds the window and a robust estimate of the arrival delay, so an unplugged
  sensor is still excluded about ``stale_after`` periods after its *last arrival*.
* STALE/LIVE hysteresis sits on the way *into* STALE, not out of it: a STALE sensor whose next
  valid sample arrives in the same session (it was late, not unplugged) earns a lateness credit
  that lengthens its next stale timeout (at least doubling, bounded by ``max_delay_s``, halving
  every 30 s without a late comeback). The way out stays immediate: a replugged sensor (new
  session: the graph saw its publisher come back, or it was silent beyond ``T_lost``) is LIVE
  and fusable at its first valid sample with no credit, and a merely late one rejoins at its
  next sample. The cost: a sensor that was late recently is excluded up to ``max_delay_s``
  later when it really goes silent without its publisher leaving the graph (a publisher that
  leaves is LOST at the next graph poll regardless). Rate and quality verdicts latch with
  separate enter/exit thresholds.
* A sensor DEGRADED by rate still fuses while its newest sample is fresh: its data is good, only
  slower than configured (a 30 Hz camera running at 10 Hz still sees the object). A sensor
  DEGRADED by quality does not: N bad samples in a row mean its last good one no longer
  describes the scene (lens covered, microphone clipping).
* The rate is ``1 / EWMA(interval between valid stamps)`` rather than an EWMA of ``1/interval``:
  averaging reciprocals is biased upwards by jitter and explodes on near-duplicate stamps. The
  rate verdict uses a second EWMA whose intervals are capped at ``T_stale`` and at 1.25 times
  the interval of the DEGRADED threshold (2.5 periods by default), so one outage (which STALE
  already reports) cannot drag a healthy sensor into DEGRADED after it comes back, whatever its
  ``stale_after``: with only the ``T_stale`` cap, the microphone's 6 periods let every 120 ms
  stall of a loaded machine flip it LIVE -> DEGRADED -> LIVE.
* A new "session" starts (estimators, streaks and latches cleared) when the publisher comes
  back and when a sample follows more than ``T_lost`` of silence: the old history describes a
  device that was unplugged. The arrival slack survives the second kind (same publisher, same
  path; see ``availability_timing``).
* Out-of-order or duplicate stamps are bad samples (a driver that stamps every message with the
  same time is DEGRADED with a reason instead of silently STALE). A stamp more than
  ``max_future_ns`` ahead of ``now`` is rejected without counting as bad: it is a clock problem
  (unsynchronised hosts, ``use_sim_time`` mismatch, a leftover from before a sim reset), not bad
  data, and accepting it would keep a dead sensor "fresh" until the clock catches up.
* The node's own stalls are not the sensors' silence. With ``stall_after_ns`` set, an
  :meth:`~AvailabilityMonitor.update` that comes more than that long after the previous one
  (the process was starved: a garbage collection, another process on the CPU, a long
  callback) judges the sensors as of the previous update: the messages that arrived during the
  stall are still queued behind it, and judging at the real time would turn every sensor STALE
  for the one moment before they are delivered (an unexplained LIVE -> STALE -> LIVE of all of
  them at once, measured under load). The next update, one monitor period later, judges at the
  real time, so a sensor that really went silent is excluded one period later than otherwise.
* The clock jumping backwards by more than ``clock_jump_tolerance_ns`` (a looping bag, a sim
  reset) resets every sensor's sample history: states drop to UNKNOWN (a new startup grace
  starts), ages to NaN, fusable to empty. Configuration, enabled flags and publisher counts are
  kept (the graph did not change). Small backward steps (callbacks of a multi-threaded executor
  reading the clock in one order and reporting in another) are tolerated and ignored. Jumps
  forwards need no special case: samples just become old.
* A valid sample that arrives while the graph reports 0 publishers, stamped after the loss was
  seen, proves a new publisher exists (graph updates lag messages): the sensor starts a new
  session at once instead of waiting for the next graph poll. Samples stamped before the loss are
  leftovers of the dead publisher and are dropped.
* ``expected_rate_hz = 0`` (not configured; e.g. a text topic) disables every timeout and the
  rate verdict: such a sensor is LIVE from its first valid sample until its publisher goes;
  fusion's ``max_age_s`` still bounds how old a sample may be fused.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import NamedTuple

from omnibind_ros.core.availability_timing import ArrivalTiming
from omnibind_ros.core.availability_types import (
    NS,
    SensorConfig,
    SensorHealth,
    SensorState,
    Transition,
    is_int,
)
from omnibind_ros.core.availability_types import fmt_duration as _fmt

__all__ = [
    "AvailabilityMonitor",
    "SensorConfig",
    "SensorHealth",
    "SensorState",
    "Transition",
]


class _Verdict(NamedTuple):
    state: SensorState
    reason: str
    usable: bool  # may enter fusion if its newest valid sample is young enough


class _Sensor:
    """Mutable per-sensor bookkeeping (internal)."""

    def __init__(self, cfg: SensorConfig, now_ns: int | None) -> None:
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.disabled_reason = "disabled by configuration"
        self.state = SensorState.UNKNOWN  # last committed (reported) state
        self.reason = ""
        self.publisher_count: int | None = None
        self.publisher_lost_at: int | None = None
        self.in_fusion = False
        self.reset_session(now_ns, "the sensor was added")

    def reset_session(self, now_ns: int | None, cause: str, keep_timing: bool = False) -> None:
        """Forget the sample history; a new startup grace begins at ``now_ns``.

        ``keep_timing``: keep the arrival slack (a comeback after silence from the same
        publisher: the delay of its path did not change; an overloaded machine that stalls a
        sensor beyond T_lost would otherwise judge its next, equally late, samples without it).
        """
        self.watch_since = now_ns  # None: set at the first clock reading
        self.watch_cause = cause
        self.last_valid: int | None = None  # newest accepted stamp
        self.last_seen: int | None = None  # newest valid stamp or bad-sample arrival time
        self.last_arrival: int | None = None  # node time the newest valid sample arrived
        self.interval_ewma: float | None = None  # ns, raw, for the reported rate
        self.verdict_ewma: float | None = None  # ns, capped at T_stale, for the verdict
        self.n_intervals = 0
        self.bad_streak = 0
        self.good_streak = 0
        self.bad_since_valid = 0
        self.quality_latched = False
        self.rate_latched = False
        self.last_bad_reason = ""
        self.last_reject = ""
        if not (keep_timing and hasattr(self, "timing")):
            self.timing = ArrivalTiming(self.cfg)
        self.note = ""

    def stale_timeout_ns(self) -> int | None:
        """T_stale plus the arrival slack (None: no rate configured, never by time)."""
        base = self.cfg.stale_timeout_ns
        return None if base is None else base + self.timing.slack_ns

    def lost_timeout_ns(self) -> int | None:
        """T_lost plus the arrival slack (None: never)."""
        base = self.cfg.lost_timeout_ns
        return None if base is None else base + self.timing.slack_ns

    def timeout_text(self, kind: str, timeout_ns: int) -> str:
        """E.g. "stale timeout 0.30 s = 0.25 s + 0.05 s window" for reasons."""
        slack = self.timing.describe()
        base = _fmt(timeout_ns - self.timing.slack_ns)
        text = f"{kind} timeout {_fmt(timeout_ns)}"
        return f"{text} = {base} + {slack}" if slack else text


class AvailabilityMonitor:
    """Tracks the availability of configured sensors from stamps and an injected clock.

    Every method that takes ``now_ns`` first checks the clock for a backward jump (see the module
    docstring). All methods are thread-safe (one re-entrant lock): a multi-threaded executor may
    call them from several subscription callbacks.

    Parameters
    ----------
    sensors : initial sensor configs.
    clock_jump_tolerance_ns : a ``now_ns`` smaller than the largest one seen by more than this
        resets the monitor; smaller backward steps are ignored (default 0.1 s).
    max_future_ns : sample stamps more than this ahead of ``now_ns`` are rejected (default
        0.2 s: well above NTP/PTP skew between hosts, well below any timeout that matters).
    now_ns : time at which the initial sensors start their startup grace (None: at the first
        clock reading).
    clock : optional callable returning the current time in int ns. Every method whose
        ``now_ns`` is left as None then reads it *inside the lock*. Use this from multi-threaded
        callers: a time read outside the lock by a thread that is then descheduled for longer
        than ``clock_jump_tolerance_ns`` would otherwise arrive after a newer reading and look
        like the clock jumping back.
    """

    def __init__(self, sensors: list[SensorConfig] | tuple[SensorConfig, ...] = (), *,
                 clock_jump_tolerance_ns: int = 100_000_000, max_future_ns: int = 200_000_000,
                 now_ns: int | None = None,
                 clock: Callable[[], int] | None = None,
                 stall_after_ns: int | None = None) -> None:
        for key, value in (("clock_jump_tolerance_ns", clock_jump_tolerance_ns),
                           ("max_future_ns", max_future_ns)):
            if not (is_int(value) and value >= 0):
                raise ValueError(f"{key} must be an int >= 0 (ns), got {value!r}")
        if stall_after_ns is not None and not (is_int(stall_after_ns) and stall_after_ns > 0):
            raise ValueError(f"stall_after_ns must be None or an int > 0 (ns), got "
                             f"{stall_after_ns!r}")
        #: A longer gap between two updates is the node's stall (see the module docstring).
        self.stall_after_ns = stall_after_ns
        #: Updates that judged as of the previous one because the node had stalled.
        self.stalls = 0
        self._last_update_ns: int | None = None
        self.clock_jump_tolerance_ns = int(clock_jump_tolerance_ns)
        self.max_future_ns = int(max_future_ns)
        self._lock = threading.RLock()
        self._clock = clock
        self._sensors: dict[str, _Sensor] = {}
        self._pending: list[Transition] = []
        self._last_now: int | None = None
        #: Number of backward clock jumps that reset the monitor (the node may clear its
        #: embedding store when this changes).
        self.clock_resets = 0
        for cfg in sensors:
            self.add_sensor(cfg, now_ns=now_ns)

    # -- configuration --------------------------------------------------------------------------

    def add_sensor(self, cfg: SensorConfig, now_ns: int | None = None) -> None:
        """Start monitoring a sensor (state UNKNOWN, or DISABLED if ``cfg.enabled`` is False).

        Raises
        ------
        ValueError
            A sensor with this name is already monitored.
        """
        if not isinstance(cfg, SensorConfig):
            raise TypeError(f"expected a SensorConfig, got {type(cfg).__name__}")
        with self._lock:
            if cfg.name in self._sensors:
                raise ValueError(f"sensor {cfg.name!r} is already monitored")
            now_ns = self._read_clock(now_ns, required=False)
            if now_ns is not None:
                self._observe_clock(now_ns)
            start = now_ns if now_ns is not None else self._last_now
            self._sensors[cfg.name] = _Sensor(cfg, start)

    def remove_sensor(self, name: str) -> SensorConfig:
        """Stop monitoring ``name``; returns its config. Raises ``KeyError`` if unknown."""
        with self._lock:
            sensor = self._get(name)
            del self._sensors[name]
            return sensor.cfg

    def set_enabled(self, name: str, enabled: bool, now_ns: int | None = None,
                    reason: str = "disabled by operator") -> None:
        """Enable or disable a sensor; DISABLED takes effect at once.

        Re-enabling keeps the sample history (a sensor switched off for a moment is LIVE again
        at once if its newest sample is still fresh) and restarts the startup grace.
        ``reason`` is reported while disabled.
        """
        with self._lock:
            sensor = self._get(name)
            now_ns = self._read_clock(now_ns, required=False)
            if now_ns is not None:
                self._observe_clock(now_ns)
            if enabled and not sensor.enabled:
                sensor.watch_since = now_ns if now_ns is not None else self._last_now
                sensor.watch_cause = "the sensor was enabled"
            elif not enabled:
                sensor.disabled_reason = reason or "disabled"
            sensor.enabled = bool(enabled)
            self._commit(sensor, now_ns if now_ns is not None else self._last_now)

    @property
    def sensor_names(self) -> tuple[str, ...]:
        """Monitored sensor names, in the order they were added."""
        with self._lock:
            return tuple(self._sensors)

    def config(self, name: str) -> SensorConfig:
        with self._lock:
            return self._get(name).cfg

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._sensors

    def __len__(self) -> int:
        with self._lock:
            return len(self._sensors)

    # -- events ---------------------------------------------------------------------------------

    def on_sample(self, name: str, stamp_ns: int, now_ns: int | None = None) -> bool:
        """Record a valid message of ``name``, header stamp ``stamp_ns``, received at ``now_ns``.

        Returns
        -------
        True if the sample was accepted as the sensor's newest (the node should store its
        embedding); False if it was rejected (future stamp, out-of-order or duplicate stamp,
        leftover of a vanished publisher).
        """
        with self._lock:
            now_ns = self._read_clock(now_ns)
            sensor = self._get(name)
            self._observe_clock(now_ns)
            accepted = self._sample(sensor, _checked_time(stamp_ns, "stamp_ns"), now_ns)
            self._commit(sensor, now_ns)
            return accepted

    def on_bad_sample(self, name: str, now_ns: int | None, reason: str = "bad sample") -> None:
        """Record a message of ``name`` that arrived at ``now_ns`` but could not be used.

        ``reason`` (e.g. the preprocessing error) is reported while the sensor is DEGRADED.
        """
        with self._lock:
            now_ns = self._read_clock(now_ns)
            sensor = self._get(name)
            self._observe_clock(now_ns)
            self._maybe_new_session(sensor, now_ns)
            self._bad(sensor, now_ns, reason or "bad sample")
            self._commit(sensor, now_ns)

    def on_publisher_count(self, name: str, count: int, now_ns: int | None = None) -> None:
        """Record the number of publishers the ROS graph reports on the sensor's topic.

        0 makes the sensor LOST at once. A count > 0 after 0 starts a new session: the old
        samples came from the publisher that vanished.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"publisher count must be an int >= 0, got {count!r}")
        with self._lock:
            now_ns = self._read_clock(now_ns)
            sensor = self._get(name)
            self._observe_clock(now_ns)
            previous = sensor.publisher_count
            if count == 0 and previous != 0:
                sensor.publisher_lost_at = now_ns
            elif count > 0 and previous == 0:
                sensor.reset_session(now_ns, "its publisher appeared")
            sensor.publisher_count = count
            self._commit(sensor, now_ns)

    def set_in_fusion(self, names: set[str] | list[str] | tuple[str, ...]) -> None:
        """Record which sensors the last fusion tick used (reported as ``in_fusion``)."""
        used = set(names)
        with self._lock:
            for sensor_name, sensor in self._sensors.items():
                sensor.in_fusion = sensor_name in used

    # -- queries --------------------------------------------------------------------------------

    def update(self, now_ns: int | None = None) -> list[Transition]:
        """Re-evaluate every sensor at ``now_ns``; return the state changes since the last call.

        Changes caused by events (samples, publisher counts, enable/disable, clock resets) are
        queued when they happen, so a short-lived state is reported even if it ended before
        this call. Each change is returned once.
        """
        with self._lock:
            now_ns = self._read_clock(now_ns)
            self._observe_clock(now_ns)
            judge_ns, last = now_ns, self._last_update_ns
            if self.stall_after_ns is not None and last is not None \
                    and self.stall_after_ns < now_ns - last:
                judge_ns = last  # the node stalled: its queued messages are not delivered yet
                self.stalls += 1
            self._last_update_ns = now_ns
            for sensor in self._sensors.values():
                self._commit(sensor, judge_ns)
            pending, self._pending = self._pending, []
            return pending

    def state(self, name: str, now_ns: int | None = None) -> SensorState:
        """State of ``name`` at ``now_ns`` (does not consume transitions)."""
        with self._lock:
            now_ns = self._read_clock(now_ns)
            self._observe_clock(now_ns)
            return self._evaluate(self._get(name), now_ns).state

    def health(self, now_ns: int | None = None) -> list[SensorHealth]:
        """Snapshot of every sensor at ``now_ns``, in the order they were added."""
        with self._lock:
            now_ns = self._read_clock(now_ns)
            self._observe_clock(now_ns)
            return [self._snapshot(sensor, now_ns) for sensor in self._sensors.values()]

    def fusable(self, now_ns: int | None, max_age_ns: int) -> list[str]:
        """Names of the sensors whose newest embedding may enter a fusion tick at ``now_ns``.

        A sensor is fusable when it is LIVE or DEGRADED by rate only (never DISABLED, STALE,
        LOST, UNKNOWN or DEGRADED by quality) and its newest valid sample is at most
        ``max_age_ns`` old. In the order the sensors were added.
        """
        if not (is_int(max_age_ns) and max_age_ns >= 0):
            raise ValueError(f"max_age_ns must be an int >= 0, got {max_age_ns!r}")
        with self._lock:
            now_ns = self._read_clock(now_ns)
            self._observe_clock(now_ns)
            names = []
            for name, sensor in self._sensors.items():
                if not self._evaluate(sensor, now_ns).usable or sensor.last_valid is None:
                    continue
                if now_ns - sensor.last_valid <= max_age_ns:
                    names.append(name)
            return names

    # -- internals ------------------------------------------------------------------------------

    def _read_clock(self, now_ns: int | None, *, required: bool = True) -> int | None:
        """``now_ns`` if given, else the injected clock (call with the lock held)."""
        if now_ns is not None:
            return now_ns
        if self._clock is not None:
            return _checked_time(self._clock(), "the injected clock's reading")
        if required:
            raise ValueError("now_ns is required: this monitor has no injected clock")
        return None

    def _get(self, name: str) -> _Sensor:
        try:
            return self._sensors[name]
        except KeyError:
            raise KeyError(f"unknown sensor {name!r}; monitored: {list(self._sensors)}") from None

    def _observe_clock(self, now_ns: int) -> None:
        now_ns = _checked_time(now_ns, "now_ns")
        last = self._last_now
        if last is not None and now_ns < last - self.clock_jump_tolerance_ns:
            self._reset_all(now_ns, last - now_ns)
        if last is None or now_ns > last or now_ns < last - self.clock_jump_tolerance_ns:
            self._last_now = now_ns
        for sensor in self._sensors.values():
            if sensor.watch_since is None:
                sensor.watch_since = now_ns

    def _reset_all(self, now_ns: int, jump_ns: int) -> None:
        self.clock_resets += 1
        note = f"clock jumped back {_fmt(jump_ns)} (bag loop or sim reset): history cleared"
        for sensor in self._sensors.values():
            sensor.reset_session(now_ns, "the clock jumped back")
            sensor.note = note
            # Stamps of the old timeline are caught by the future-stamp check now; keeping the
            # old loss time would reject every sample of the new timeline as a leftover.
            sensor.publisher_lost_at = None
            self._commit(sensor, now_ns)

    def _maybe_new_session(self, sensor: _Sensor, now_ns: int) -> None:
        lost = sensor.lost_timeout_ns()
        if lost is not None and sensor.last_seen is not None and now_ns - sensor.last_seen > lost:
            sensor.reset_session(now_ns, "it came back after an outage", keep_timing=True)

    def _sample(self, sensor: _Sensor, stamp_ns: int, now_ns: int) -> bool:
        if stamp_ns > now_ns + self.max_future_ns:
            sensor.last_reject = (f"stamp {_fmt(stamp_ns - now_ns)} ahead of the node clock "
                                  "(clocks not synchronised, or use_sim_time mismatch?)")
            return False
        if sensor.publisher_count == 0:
            lost_at = sensor.publisher_lost_at
            if lost_at is not None and stamp_ns <= lost_at:
                sensor.last_reject = "stamped before its publisher vanished"
                return False
            sensor.publisher_count = None  # a newer sample proves a publisher exists
            sensor.reset_session(now_ns, "a sample arrived from a new publisher")
        self._maybe_new_session(sensor, now_ns)
        if sensor.last_valid is not None and stamp_ns <= sensor.last_valid:
            self._bad(sensor, now_ns, f"stamp {stamp_ns / NS:.3f} not newer than the previous "
                                     f"one {sensor.last_valid / NS:.3f} (out of order or "
                                     "duplicate)")
            return False
        self._valid(sensor, stamp_ns, now_ns)
        return True

    def _valid(self, sensor: _Sensor, stamp_ns: int, now_ns: int) -> None:
        cfg = sensor.cfg
        stale = sensor.stale_timeout_ns()
        overshoot = 0
        if sensor.last_valid is not None and stale is not None:
            overshoot = now_ns - sensor.last_valid - stale  # > 0: it had gone STALE meanwhile
        sensor.timing.on_valid(stamp_ns, now_ns, overshoot)
        if sensor.last_valid is not None:
            interval = stamp_ns - sensor.last_valid
            capped = min(interval, cfg.rate_verdict_cap_ns or interval)
            alpha = cfg.rate_ewma_alpha
            sensor.interval_ewma = _ewma(sensor.interval_ewma, interval, alpha)
            sensor.verdict_ewma = _ewma(sensor.verdict_ewma, capped, alpha)
            sensor.n_intervals += 1
        sensor.last_valid = stamp_ns
        sensor.last_arrival = now_ns
        sensor.last_seen = stamp_ns if sensor.last_seen is None else max(sensor.last_seen,
                                                                        stamp_ns)
        sensor.bad_streak = 0
        sensor.bad_since_valid = 0
        sensor.last_reject = ""
        sensor.note = ""
        if sensor.quality_latched:
            sensor.good_streak += 1
            if sensor.good_streak >= cfg.recover_after_good:
                sensor.quality_latched = False
        self._update_rate_latch(sensor)

    def _update_rate_latch(self, sensor: _Sensor) -> None:
        cfg = sensor.cfg
        if cfg.expected_rate_hz <= 0 or sensor.verdict_ewma is None:
            return
        if sensor.n_intervals < cfg.min_rate_intervals:
            return
        rate = NS / max(sensor.verdict_ewma, 1.0)
        if not sensor.rate_latched and rate < cfg.degraded_below_hz:
            sensor.rate_latched = True
        elif sensor.rate_latched and rate >= cfg.recovered_at_hz:
            sensor.rate_latched = False

    def _bad(self, sensor: _Sensor, now_ns: int, reason: str) -> None:
        sensor.bad_streak += 1
        sensor.bad_since_valid += 1
        sensor.good_streak = 0
        sensor.last_bad_reason = reason
        sensor.last_seen = now_ns if sensor.last_seen is None else max(sensor.last_seen, now_ns)
        if sensor.bad_streak >= sensor.cfg.degraded_after_bad:
            sensor.quality_latched = True

    def _commit(self, sensor: _Sensor, now_ns: int | None) -> None:
        if now_ns is None:
            return
        verdict = self._evaluate(sensor, now_ns)
        if verdict.state != sensor.state:
            self._pending.append(Transition(sensor.cfg.name, sensor.state, verdict.state,
                                            now_ns, verdict.reason))
        sensor.state, sensor.reason = verdict.state, verdict.reason

    def _evaluate(self, sensor: _Sensor, now_ns: int) -> _Verdict:
        """The state table of the module docstring, as code (pure: no mutation)."""
        cfg = sensor.cfg
        if not sensor.enabled:
            return _Verdict(SensorState.DISABLED, sensor.disabled_reason, False)
        if sensor.publisher_count == 0:
            return _Verdict(SensorState.LOST, f"no publisher on {cfg.topic or cfg.name}", False)
        stale, lost = sensor.stale_timeout_ns(), sensor.lost_timeout_ns()
        if sensor.last_seen is None:
            return self._waiting(sensor, now_ns)
        seen_age = max(0, now_ns - sensor.last_seen)
        if lost is not None and seen_age > lost:
            return _Verdict(SensorState.LOST, self._silence(
                f"no sample for {_fmt(seen_age)} ({sensor.timeout_text('lost', lost)})",
                sensor, now_ns),
                False)
        if stale is not None and seen_age > stale:
            return _Verdict(SensorState.STALE, self._silence(
                f"no sample for {_fmt(seen_age)} ({sensor.timeout_text('stale', stale)})",
                sensor, now_ns),
                False)
        if sensor.quality_latched:
            return _Verdict(SensorState.DEGRADED, self._quality_reason(sensor), False)
        if sensor.last_valid is None:
            return _Verdict(SensorState.UNKNOWN, f"{sensor.bad_since_valid} bad sample(s) and "
                            f"no valid one yet: {sensor.last_bad_reason}", False)
        valid_age = max(0, now_ns - sensor.last_valid)
        if stale is not None and valid_age > stale:
            # messages still arrive, only bad ones: a broken sensor, not a silent one
            return _Verdict(SensorState.DEGRADED, (
                f"receiving bad samples: newest valid one is {_fmt(valid_age)} old "
                f"({sensor.timeout_text('stale', stale)}); "
                f"{sensor.bad_since_valid} bad since: {sensor.last_bad_reason}"), False)
        if sensor.rate_latched:
            rate = NS / sensor.verdict_ewma if sensor.verdict_ewma else 0.0
            return _Verdict(SensorState.DEGRADED, (
                f"rate {rate:.2f} Hz below {cfg.degraded_below_hz:.2f} Hz "
                f"({1 - cfg.rate_tolerance:.0%} of the expected {cfg.expected_rate_hz:.2f} Hz; "
                f"recovers at {cfg.recovered_at_hz:.2f} Hz)"), True)
        return _Verdict(SensorState.LIVE, "", True)

    def _waiting(self, sensor: _Sensor, now_ns: int) -> _Verdict:
        lost = sensor.lost_timeout_ns()
        since = sensor.watch_since if sensor.watch_since is not None else now_ns
        waited = max(0, now_ns - since)
        if lost is not None and waited > lost:
            text = (f"no sample in {_fmt(waited)} since {sensor.watch_cause} "
                    f"({sensor.timeout_text('lost', lost)})")
            return _Verdict(SensorState.LOST, self._silence(text, sensor, now_ns), False)
        text = f"waiting for the first sample since {sensor.watch_cause}"
        if lost is not None:
            text += f" ({_fmt(waited)} of a {_fmt(lost)} grace)"
        return _Verdict(SensorState.UNKNOWN, self._silence(text, sensor, now_ns), False)

    @staticmethod
    def _silence(text: str, sensor: _Sensor, now_ns: int) -> str:
        """``text`` plus what may explain the silence (clock reset, rejected or late samples)."""
        rejected = sensor.last_reject and f"last sample rejected: {sensor.last_reject}"
        extras = [sensor.note, rejected]
        stale = sensor.stale_timeout_ns()
        arrival, stamp = sensor.last_arrival, sensor.last_valid
        if stale is not None and arrival is not None and stamp is not None \
                and now_ns - arrival <= stale:
            # Samples do arrive, but already old: a clock or latency problem, not an unplug.
            extras.append(f"samples arrive but are {_fmt(arrival - stamp)} old on arrival "
                          "(sensor clock behind the node clock, use_sim_time mismatch, or "
                          "latency above the stale timeout)")
        return "; ".join([text, *filter(None, extras)])

    @staticmethod
    def _quality_reason(sensor: _Sensor) -> str:
        cfg = sensor.cfg
        if sensor.bad_streak >= cfg.degraded_after_bad:
            return (f"{sensor.bad_streak} bad samples in a row (limit {cfg.degraded_after_bad}): "
                    f"{sensor.last_bad_reason}")
        return (f"recovering from bad samples: {sensor.good_streak} of "
                f"{cfg.recover_after_good} valid in a row (last bad: {sensor.last_bad_reason})")

    def _snapshot(self, sensor: _Sensor, now_ns: int) -> SensorHealth:
        cfg = sensor.cfg
        verdict = self._evaluate(sensor, now_ns)
        age_ns = None if sensor.last_valid is None else max(0, now_ns - sensor.last_valid)
        rate = 0.0
        if verdict.state != SensorState.LOST and sensor.interval_ewma is not None:
            # floor at 1 ns: duplicate stamps are rejected, but an EWMA must not report inf Hz
            rate = NS / max(sensor.interval_ewma, age_ns or 0, 1.0)
        age = math.nan if age_ns is None else age_ns / NS
        return SensorHealth(
            name=cfg.name, modality=cfg.modality, topic=cfg.topic, state=verdict.state,
            rate_hz=rate, expected_rate_hz=cfg.expected_rate_hz, age_s=age,
            publisher_count=sensor.publisher_count, in_fusion=sensor.in_fusion,
            reason=verdict.reason)


def _checked_time(value: object, what: str) -> int:
    """``value`` as an int of nanoseconds; TypeError for floats (seconds passed by mistake)."""
    if not is_int(value):
        raise TypeError(f"{what} must be an int of nanoseconds, got {value!r}")
    return int(value)


def _ewma(previous: float | None, value: float, alpha: float) -> float:
    return value if previous is None else alpha * value + (1.0 - alpha) * previous
