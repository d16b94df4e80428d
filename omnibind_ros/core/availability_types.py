"""The availability monitor's vocabulary: sensor states, per-sensor configuration, the health
snapshot and the transition record (see :mod:`omnibind_ros.core.availability` for the state
machine and the reasons behind every threshold). Pure: no ROS, no clock.
"""
from __future__ import annotations

import enum
import math
import numbers
from dataclasses import dataclass

from omnibind_ros.core.modalities import parse_modality

__all__ = ["NS", "SensorConfig", "SensorHealth", "SensorState", "Transition"]

NS = 1_000_000_000


class SensorState(enum.IntEnum):
    """Sensor state; values equal the constants of ``msg/SensorStatus.msg``."""

    UNKNOWN = 0
    LIVE = 1
    STALE = 2
    LOST = 3
    DISABLED = 4
    DEGRADED = 5


@dataclass(frozen=True)
class SensorConfig:
    """Configuration of one sensor (one entry of the node's ``sensors`` parameter list).

    Attributes
    ----------
    name : unique sensor name, e.g. ``"front_camera"``.
    modality : modality registry key (``"image"``, ``"thermal"``...); normalised to its value.
    topic : resolved topic, reported in the health snapshot.
    expected_rate_hz : nominal message rate in Hz; 0 = not configured (no timeouts, no rate
        verdict, see the module docstring).
    stale_after : STALE after this many expected periods without a sample (default 2.5: one
        dropped message does not trip it, an unplug is excluded within 3 periods).
    lost_after : LOST after this many periods (also the startup grace); > ``stale_after``.
    enabled : initial enabled flag (``set_enabled`` changes it at runtime).
    degraded_after_bad : DEGRADED after this many bad samples in a row.
    recover_after_good : valid samples in a row that end a quality DEGRADED (hysteresis).
    rate_tolerance : DEGRADED when the measured rate is below ``(1 - rate_tolerance)`` times
        the expected rate, in (0, 1).
    rate_hysteresis : a rate DEGRADED ends only at ``(1 - rate_tolerance + rate_hysteresis)``
        times the expected rate, so a rate hovering at the threshold does not flap.
    min_rate_intervals : stamp intervals needed before any rate verdict.
    rate_ewma_alpha : weight of the newest interval in the moving averages, in (0, 1].
    window_s : publication delay by construction, s: a message covering ``[stamp, stamp +
        window_s)`` (an event packet, an audio chunk) cannot arrive before its window ends.
        Added to the stale and lost timeouts (module ``availability_timing``).
    max_delay_s : most arrival delay beyond ``window_s`` (learned from the samples, plus the
        lateness credit) that is added to the timeouts, s; 0 = timeouts count from the stamp.
    """

    name: str
    modality: str
    topic: str = ""
    expected_rate_hz: float = 0.0
    stale_after: float = 2.5
    lost_after: float = 10.0
    enabled: bool = True
    degraded_after_bad: int = 3
    recover_after_good: int = 3
    rate_tolerance: float = 0.5
    rate_hysteresis: float = 0.15
    min_rate_intervals: int = 4
    rate_ewma_alpha: float = 0.25
    window_s: float = 0.0
    max_delay_s: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"sensor name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "modality", parse_modality(self.modality).value)
        if not isinstance(self.topic, str):
            raise TypeError(f"sensor {self.name}: topic must be a string, got {self.topic!r}")
        if not isinstance(self.enabled, bool):
            raise TypeError(f"sensor {self.name}: enabled must be a bool, got {self.enabled!r}")
        self._check_float("expected_rate_hz", low=0.0, low_open=False)
        self._check_float("stale_after", low=0.0)
        self._check_float("lost_after", low=self.stale_after)
        self._check_float("rate_tolerance", low=0.0, high=1.0)
        self._check_float("rate_hysteresis", low=0.0, low_open=False,
                          high=self.rate_tolerance, high_open=False)
        self._check_float("rate_ewma_alpha", low=0.0, high=1.0, high_open=False)
        self._check_float("window_s", low=0.0, low_open=False)
        self._check_float("max_delay_s", low=0.0, low_open=False)
        for key in ("degraded_after_bad", "recover_after_good", "min_rate_intervals"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"sensor {self.name}: {key} must be an int >= 1, got {value!r}")

    def _check_float(self, key: str, *, low: float, high: float = math.inf,
                     low_open: bool = True, high_open: bool = True) -> None:
        value = getattr(self, key)
        if not is_number(value):
            raise TypeError(f"sensor {self.name}: {key} must be a number, got {value!r}")
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
        if not ok:
            bounds = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            raise ValueError(f"sensor {self.name}: {key} must be in {bounds}, got {value!r}")
        object.__setattr__(self, key, float(value))

    @property
    def period_s(self) -> float | None:
        """Expected interval between messages in s, None when no rate is configured."""
        return 1.0 / self.expected_rate_hz if self.expected_rate_hz > 0 else None

    @property
    def stale_timeout_ns(self) -> int | None:
        """:attr:`stale_timeout_s` in integer nanoseconds (None: never by time)."""
        return to_ns(self.stale_timeout_s)

    @property
    def lost_timeout_ns(self) -> int | None:
        """:attr:`lost_timeout_s` in integer nanoseconds (None: never)."""
        return to_ns(self.lost_timeout_s)

    @property
    def stale_timeout_s(self) -> float | None:
        """Age in s beyond which the sensor is STALE (None: never by time)."""
        period = self.period_s
        return None if period is None else self.stale_after * period

    @property
    def lost_timeout_s(self) -> float | None:
        """Age in s beyond which the sensor is LOST, also the startup grace (None: never)."""
        period = self.period_s
        return None if period is None else self.lost_after * period

    @property
    def rate_verdict_cap_ns(self) -> int | None:
        """Longest interval (ns) the rate verdict's average takes in: the stale timeout, and at
        most 1.25 times the interval of the DEGRADED threshold (see the monitor's docstring)."""
        period = self.period_s
        if period is None:
            return None
        threshold_interval = period / (1.0 - self.rate_tolerance)
        return min(self.stale_timeout_ns, round(1.25 * threshold_interval * NS))

    @property
    def degraded_below_hz(self) -> float:
        """Measured rate in Hz below which the sensor enters DEGRADED."""
        return (1.0 - self.rate_tolerance) * self.expected_rate_hz

    @property
    def recovered_at_hz(self) -> float:
        """Measured rate in Hz at or above which a rate DEGRADED ends."""
        return (1.0 - self.rate_tolerance + self.rate_hysteresis) * self.expected_rate_hz


@dataclass(frozen=True)
class SensorHealth:
    """Snapshot of one sensor; the fields of ``msg/SensorStatus.msg``.

    Attributes
    ----------
    name, modality, topic, expected_rate_hz : from the config.
    state : the monitor's verdict at the snapshot time.
    rate_hz : measured rate in Hz, ``1 / max(EWMA interval, age of newest valid sample)`` so it
        decays while nothing arrives; 0 before two valid samples and while LOST.
    age_s : now minus the newest valid sample's stamp in s (>= 0); NaN if there is none.
    publisher_count : publishers on the topic as last reported; None if never reported (the
        ROS glue writes 0 into the uint32 field).
    in_fusion : whether the sensor was used in the last fusion tick (``set_in_fusion``).
    reason : human-readable cause of the state; empty when LIVE.
    """

    name: str
    modality: str
    topic: str
    state: SensorState
    rate_hz: float
    expected_rate_hz: float
    age_s: float
    publisher_count: int | None
    in_fusion: bool
    reason: str


@dataclass(frozen=True)
class Transition:
    """A state change, as returned by :meth:`AvailabilityMonitor.update`.

    Attributes
    ----------
    name : sensor name.
    old, new : states before and after.
    time_ns : node-clock time (int ns) at which the change was observed.
    reason : the new state's reason (empty for LIVE).
    """

    name: str
    old: SensorState
    new: SensorState
    time_ns: int
    reason: str



def fmt_duration(duration_ns: float) -> str:
    """A duration in ns as seconds with two decimals, for reasons shown to people."""
    return f"{duration_ns / NS:.2f} s"


def to_ns(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * NS)


def is_int(value: object) -> bool:
    """An integer (numpy integers included), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A real number (numpy scalars included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
