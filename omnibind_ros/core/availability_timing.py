"""How late a sensor's samples may be before the monitor calls it STALE: the arrival slack.

The monitor judges freshness by ``now - stamp``. A sample is never zero seconds old on arrival:

* a *window* sensor (event packets, audio chunks) stamps the start of the window it covers and
  can publish only when the window ends, so it is at least ``window_s`` old on arrival;
* transport, the executor and a busy CPU add a delay that varies from machine to machine and
  from minute to minute (60-120 ms for 50 ms event packets on a loaded 2-core machine).

A timeout counted from the stamp therefore gives a late sensor less silence than a prompt one,
and under load a sensor flaps STALE/LIVE while every one of its messages arrives. The
:class:`ArrivalTiming` of a sensor computes the *slack* added to its stale and lost timeouts::

    slack = window_s + min(max_delay_s, extra delay + late credit)

``window_s``
    the publication delay known by construction (config; 0 for frame sensors).
``extra delay``
    a robust running estimate of how much later than ``window_s`` samples arrive: the
    ``DELAY_QUANTILE`` quantile of ``now - stamp - window_s`` over the last ``DELAY_SAMPLES``
    valid samples (a high quantile, not the maximum: one sample held up by a GC pause must not
    raise it; not the mean: half of the samples would then arrive later than it allows).
``late credit``
    the hysteresis: a sample that arrives after the sensor had already passed its stale timeout
    in the same session (a *late comeback*: it was late, not unplugged, or the graph would have
    reported it gone and a new session would have started) raises the credit to cover that
    overshoot plus half a period, and at least doubles it, so the next flap needs a longer gap
    than the last one. It halves every ``CREDIT_HALF_LIFE_S`` without a late comeback, so a
    sensor that was late for a minute is judged strictly again afterwards.
``max_delay_s``
    the bound on what lateness can buy (config; default 1 s, the default ``fusion.max_age_s``,
    as an older sample is not fused anyway): a sensor whose stamps lag the clock by seconds
    stays STALE with its "old on arrival" hint instead of being fresh forever.

Because the slack follows the delay of the samples themselves, an unplugged sensor is still
excluded ``stale_after`` periods after its *last arrival* (plus whatever credit it has, never more
than ``max_delay_s``): the timeout now counts from when a sample could arrive, not from when it
was stamped. A sensor whose publisher came back (the graph saw it leave, or a new publisher's
sample arrived) or whose clock jumped back starts afresh (window only, no credit) and is LIVE
at its first valid sample, as before; one that comes back after mere silence keeps its slack,
since the path its messages take did not change (an overloaded machine that stalls a sensor
beyond T_lost would otherwise judge the next, equally late, messages without it). Every value
is an int of nanoseconds, every update is driven by the caller's times: no clock is read here.
"""
from __future__ import annotations

from collections import deque

from omnibind_ros.core.availability_types import NS, SensorConfig

__all__ = ["CREDIT_HALF_LIFE_S", "DELAY_QUANTILE", "DELAY_SAMPLES", "ArrivalTiming"]

#: Valid samples whose arrival delays form the estimate (a few seconds of a 5-50 Hz sensor).
DELAY_SAMPLES = 32
#: Quantile of the recent arrival delays taken as the estimate.
DELAY_QUANTILE = 0.9
#: The late credit halves after this long without a late comeback.
CREDIT_HALF_LIFE_S = 30.0
_HALF_LIFE_NS = round(CREDIT_HALF_LIFE_S * NS)


class ArrivalTiming:
    """The arrival slack of one sensor in one session (see the module docstring).

    Parameters
    ----------
    cfg : the sensor's config (``window_s``, ``max_delay_s``, its period).
    """

    def __init__(self, cfg: SensorConfig) -> None:
        self._window_ns = round(cfg.window_s * NS)
        self._max_ns = round(cfg.max_delay_s * NS)
        self._half_period_ns = round(NS / cfg.expected_rate_hz / 2) if cfg.expected_rate_hz else 0
        self._delays: deque[int] = deque(maxlen=DELAY_SAMPLES)
        self._extra_ns = 0  # the delay estimate beyond the window
        self.credit_ns = 0
        self._credit_since: int | None = None  # time of the last late comeback / halving
        #: Late comebacks in this session (for reasons and tests).
        self.late_comebacks = 0
        self.slack_ns = self._window_ns

    @property
    def extra_delay_ns(self) -> int:
        """The estimated arrival delay beyond the window (ns, >= 0, not capped)."""
        return self._extra_ns

    def on_valid(self, stamp_ns: int, now_ns: int, overshoot_ns: int) -> None:
        """Account for a valid sample stamped ``stamp_ns`` that arrived at ``now_ns``.

        ``overshoot_ns``: by how much the previous valid sample's age had passed the stale
        timeout (with the current slack) when this one arrived; > 0 is a late comeback.
        """
        self._decay(now_ns)
        if overshoot_ns > 0:
            self.late_comebacks += 1
            self.credit_ns = min(self._max_ns, max(2 * self.credit_ns,
                                                   overshoot_ns + self._half_period_ns))
            self._credit_since = now_ns
        self._delays.append(max(0, now_ns - stamp_ns - self._window_ns))
        ordered = sorted(self._delays)
        self._extra_ns = ordered[int(DELAY_QUANTILE * (len(ordered) - 1))]
        self.slack_ns = self._window_ns + min(self._max_ns, self._extra_ns + self.credit_ns)

    def _decay(self, now_ns: int) -> None:
        since = self._credit_since
        if since is None or self.credit_ns == 0:
            return
        while now_ns - since >= _HALF_LIFE_NS and self.credit_ns:
            self.credit_ns //= 2
            since += _HALF_LIFE_NS
        self._credit_since = since

    def describe(self) -> str:
        """What the slack is made of, for reasons ("" when there is none)."""
        shown = NS // 200  # parts that print as 0.00 s are left out
        parts = [f"{self._window_ns / NS:.2f} s window"] if self._window_ns >= shown else []
        learned = self.slack_ns - self._window_ns
        if learned >= shown:
            parts.append(f"{learned / NS:.2f} s arrival delay"
                         + (" and lateness credit" if self.credit_ns else ""))
        return " + ".join(parts)
