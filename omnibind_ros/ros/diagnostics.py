"""Status messages of the perception node: ~/sensor_status and /diagnostics.

/diagnostics follows diagnostic_updater's conventions (the package is not installable here):
one ``DiagnosticStatus`` per sensor named ``"<node name>: sensor <sensor>"`` with the topic as
``hardware_id`` and the details as key/values, plus one ``"<node name>: fusion"`` status saying
why nothing is recognised when that is the case. Levels per state:

=========  =====  ==============================================================
state      level  why
=========  =====  ==============================================================
LIVE       OK     at the expected rate and fresh
DISABLED   OK     an operator's choice, not a fault
UNKNOWN    WARN   waiting for the first message (startup grace)
DEGRADED   WARN   off-rate, or bad messages in a row
STALE      ERROR  silent beyond stale_after periods
LOST       ERROR  no publisher, or silent beyond lost_after periods
=========  =====  ==============================================================

A LIVE or DEGRADED sensor whose input quality (:mod:`omnibind_ros.core.quality`) is below the
node's ``quality.warn_below`` is at least WARN, its message naming the problem ("live at
10.0 Hz; dark, quality 0.12"): on time is not the same as usable.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from omnibind_ros.core.availability import SensorHealth, SensorState
from omnibind_ros.core.quality import GOOD, InputQuality
from omnibind_ros.msg import SensorStatus, SensorStatusArray

Qualities = Mapping[str, InputQuality]

__all__ = ["LEVELS", "diagnostic_array", "sensor_status_array"]

LEVELS: dict[SensorState, bytes] = {
    SensorState.LIVE: DiagnosticStatus.OK,
    SensorState.DISABLED: DiagnosticStatus.OK,
    SensorState.UNKNOWN: DiagnosticStatus.WARN,
    SensorState.DEGRADED: DiagnosticStatus.WARN,
    SensorState.STALE: DiagnosticStatus.ERROR,
    SensorState.LOST: DiagnosticStatus.ERROR,
}


def _f32(value: float) -> float:
    return float(value) if value is not None else float("nan")


def sensor_status(health: SensorHealth, quality: InputQuality = GOOD) -> SensorStatus:
    return SensorStatus(
        name=health.name, modality=health.modality, topic=health.topic,
        state=int(health.state), rate_hz=_f32(health.rate_hz),
        expected_rate_hz=_f32(health.expected_rate_hz), age_s=_f32(health.age_s),
        publisher_count=int(health.publisher_count or 0), in_fusion=bool(health.in_fusion),
        reason=health.reason, quality=float(quality.score), quality_issue=quality.issue)


def sensor_status_array(healths: Iterable[SensorHealth], stamp: object,
                        qualities: Qualities | None = None) -> SensorStatusArray:
    """``qualities``: sensor name -> its current input quality (missing: :data:`GOOD`)."""
    q = qualities or {}
    msg = SensorStatusArray(sensors=[sensor_status(h, q.get(h.name, GOOD)) for h in healths])
    msg.header.stamp = stamp
    return msg


def _receiving(health: SensorHealth) -> bool:
    return health.state in (SensorState.LIVE, SensorState.DEGRADED)


def _message(health: SensorHealth, quality: InputQuality, warn_below: float) -> str:
    text = health.state.name.lower()
    if health.state is SensorState.LIVE:
        text = f"live at {health.rate_hz:.1f} Hz"
    elif health.reason:
        text = f"{text}: {health.reason}"
    if _receiving(health) and quality.score < warn_below:
        text += f"; {quality.issue}, quality {quality.score:.2f}"
    return text


def _level(health: SensorHealth, quality: InputQuality, warn_below: float) -> bytes:
    level = LEVELS[health.state]
    if _receiving(health) and quality.score < warn_below and level == DiagnosticStatus.OK:
        return DiagnosticStatus.WARN
    return level


def _sensor_diag(node_name: str, health: SensorHealth, quality: InputQuality = GOOD,
                 warn_below: float = 0.5) -> DiagnosticStatus:
    age = "nan" if math.isnan(health.age_s) else f"{health.age_s:.3f}"
    values = {
        "state": health.state.name, "modality": health.modality, "topic": health.topic,
        "rate_hz": f"{health.rate_hz:.2f}", "expected_rate_hz": f"{health.expected_rate_hz:.2f}",
        "age_s": age, "publisher_count": str(health.publisher_count or 0),
        "in_fusion": str(bool(health.in_fusion)).lower(), "reason": health.reason,
        "quality": f"{quality.score:.2f}", "quality_issue": quality.issue,
    }
    return DiagnosticStatus(
        level=_level(health, quality, warn_below), name=f"{node_name}: sensor {health.name}",
        message=_message(health, quality, warn_below), hardware_id=health.topic,
        values=[KeyValue(key=k, value=v) for k, v in values.items()])


def fusion_diag(node_name: str, no_answer_reason: str | None,
                used: Iterable[str] = (), model: Mapping[str, str] | None = None
                ) -> DiagnosticStatus:
    """OK while recognising; WARN with the reason when not (e.g. min_modalities not met).

    ``model`` (bundle, family, backend, providers) is carried as key/values, so a monitor sees
    which inference backend ``backend: auto`` or a fallback actually chose."""
    if no_answer_reason is None:
        level, message = DiagnosticStatus.WARN, "no fusion tick yet"
    elif no_answer_reason:
        level, message = DiagnosticStatus.WARN, f"no recognition: {no_answer_reason}"
    else:
        level, message = DiagnosticStatus.OK, "recognising from " + ", ".join(used)
    return DiagnosticStatus(level=level, name=f"{node_name}: fusion", message=message,
                            hardware_id=node_name,
                            values=[KeyValue(key=k, value=str(v))
                                    for k, v in (model or {}).items()])


def diagnostic_array(node_name: str, healths: Iterable[SensorHealth], stamp: object,
                     fusion: DiagnosticStatus | None = None,
                     qualities: Qualities | None = None,
                     warn_below: float = 0.5) -> DiagnosticArray:
    q = qualities or {}
    status = [_sensor_diag(node_name, h, q.get(h.name, GOOD), warn_below) for h in healths]
    if fusion is not None:
        status.append(fusion)
    msg = DiagnosticArray(status=status)
    msg.header.stamp = stamp
    return msg
