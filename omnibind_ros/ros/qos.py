"""Named QoS profiles for omnibind_ros topics, and per-sensor overrides from parameters.

Import this module only after :func:`omnibind_ros.ros.env.ensure_safe_ros_env` (it imports
rclpy). Each profile is chosen for its topic:

``sensor_data`` (best effort, keep last 5, volatile)
    Small, frequent sensor messages (event packets, audio chunks): a short queue absorbs bursts
    while the encoder is busy. rclpy's ``qos_profile_sensor_data``.
``sensor_data_latest`` (best effort, keep last 1, volatile)
    Large frames (images, thermal, tactile, point clouds): only the newest frame is worth
    encoding, so latency stays bounded and memory flat.
``sensor_reliable`` (reliable, keep last 5, volatile)
    For streams where every message counts (bag playback of audio, recorded evaluations). A
    reliable subscription does not match a best-effort publisher (most camera drivers), so it is
    opt-in, never the default.
``recognition`` (reliable, keep last 10, volatile)
    The node's output: consumers (planners, loggers) should not lose results.
``sensor_status`` (reliable, transient local, keep last 1)
    Availability state: a late-joining subscriber (a UI, a supervisor) immediately gets the
    current state, as nav2 does for state topics.
``diagnostics`` (reliable, volatile, keep last 1)
    What diagnostic_updater's publisher uses for ``/diagnostics`` (``create_publisher(...,
    1)``), so the aggregator and rqt_robot_monitor match as they do with any other node.
``text`` (reliable, keep last 10, volatile)
    Operator descriptions: rare, and each one matters.

Sensor subscriptions default to best effort on purpose: a best-effort subscription matches both
reliable and best-effort publishers, so a hot-plugged sensor is heard whatever its driver's QoS.
``best_available`` (Iron and later) is not used: it resolves against the publishers present when
the subscription is created, and a sensor that appears later with best effort would not match.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rclpy.duration import Duration
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    LivelinessPolicy,
    QoSProfile,
    ReliabilityPolicy,
)

__all__ = [
    "DIAGNOSTICS", "KEYS", "PROFILES", "QoSConfigError", "RECOGNITION", "SENSOR_DATA",
    "SENSOR_DATA_LATEST", "SENSOR_INFO", "SENSOR_QOS_BY_MODALITY", "SENSOR_RELIABLE",
    "SENSOR_STATUS", "TEXT",
    "copy_qos", "describe_qos", "qos_for_modality", "qos_from_dict", "qos_from_name",
    "qos_to_dict",
]


class QoSConfigError(ValueError):
    """A QoS profile name or override dict is invalid (raised at configure time)."""


def _profile(reliability: ReliabilityPolicy, depth: int,
             durability: DurabilityPolicy = DurabilityPolicy.VOLATILE) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability,
                      durability=durability)


SENSOR_DATA = _profile(ReliabilityPolicy.BEST_EFFORT, 5)
SENSOR_DATA_LATEST = _profile(ReliabilityPolicy.BEST_EFFORT, 1)
SENSOR_RELIABLE = _profile(ReliabilityPolicy.RELIABLE, 5)
RECOGNITION = _profile(ReliabilityPolicy.RELIABLE, 10)
SENSOR_STATUS = _profile(ReliabilityPolicy.RELIABLE, 1, DurabilityPolicy.TRANSIENT_LOCAL)
DIAGNOSTICS = _profile(ReliabilityPolicy.RELIABLE, 1)
TEXT = _profile(ReliabilityPolicy.RELIABLE, 10)
#: A sensor's paired info topic (AudioInfo every 5 s, CameraInfo with each frame): best effort
#: and volatile match every publisher (reliable or not, transient-local or not); only the newest
#: matters.
SENSOR_INFO = _profile(ReliabilityPolicy.BEST_EFFORT, 1)

#: Name -> profile. Use :func:`qos_from_name`, which returns a copy safe to modify.
PROFILES: dict[str, QoSProfile] = {
    "sensor_data": SENSOR_DATA,
    "sensor_data_latest": SENSOR_DATA_LATEST,
    "sensor_reliable": SENSOR_RELIABLE,
    "recognition": RECOGNITION,
    "sensor_status": SENSOR_STATUS,
    "diagnostics": DIAGNOSTICS,
    "text": TEXT,
    # rclpy's defaults, for overrides that want to start from them.
    "default": QoSProfile(depth=10),
    "system_default": QoSProfile(history=HistoryPolicy.SYSTEM_DEFAULT, depth=0,
                                 reliability=ReliabilityPolicy.SYSTEM_DEFAULT,
                                 durability=DurabilityPolicy.SYSTEM_DEFAULT),
}

#: Default subscription profile of a sensor by modality (see the module docstring).
SENSOR_QOS_BY_MODALITY: dict[str, str] = {
    "image": "sensor_data_latest", "thermal": "sensor_data_latest",
    "tactile": "sensor_data_latest", "point_cloud": "sensor_data_latest",
    "event": "sensor_data", "audio": "sensor_data", "text": "text",
}

_POLICIES: dict[str, type] = {
    "reliability": ReliabilityPolicy, "durability": DurabilityPolicy,
    "history": HistoryPolicy, "liveliness": LivelinessPolicy,
}
_DURATIONS = ("deadline", "lifespan", "liveliness_lease_duration")
#: Keys accepted by qos_from_dict (durations in seconds, 0 = unlimited).
KEYS = ("profile", *_POLICIES, "depth", *(f"{d}_s" for d in _DURATIONS))


def copy_qos(profile: QoSProfile) -> QoSProfile:
    """An independent copy (QoSProfile holds C durations that ``copy.deepcopy`` cannot copy)."""
    durations = {key: Duration(nanoseconds=getattr(profile, key).nanoseconds)
                 for key in _DURATIONS}
    return QoSProfile(history=profile.history, depth=profile.depth,
                      reliability=profile.reliability, durability=profile.durability,
                      liveliness=profile.liveliness,
                      avoid_ros_namespace_conventions=profile.avoid_ros_namespace_conventions,
                      **durations)


def qos_from_name(name: str) -> QoSProfile:
    """Return a copy of the named profile (case-insensitive, '-' and ' ' read as '_').

    Raises
    ------
    QoSConfigError : unknown name; the message lists the known ones.
    """
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    if key not in PROFILES:
        raise QoSConfigError(
            f"unknown QoS profile {name!r}; expected one of: {', '.join(PROFILES)}")
    return copy_qos(PROFILES[key])


def qos_for_modality(modality: str) -> QoSProfile:
    """The default subscription profile for a sensor of ``modality`` (a copy)."""
    try:
        return qos_from_name(SENSOR_QOS_BY_MODALITY[str(modality)])
    except KeyError:
        raise QoSConfigError(f"no default QoS for modality {modality!r}; known: "
                             f"{', '.join(SENSOR_QOS_BY_MODALITY)}") from None


def _policy(key: str, value: Any) -> Any:
    enum = _POLICIES[key]
    if isinstance(value, enum):
        return value
    name = str(value).strip().upper().replace("-", "_").replace(" ", "_")
    valid = [m.name.lower() for m in enum if m.name != "UNKNOWN"]
    if name == "UNKNOWN" or name not in enum.__members__:
        raise QoSConfigError(f"QoS {key} {value!r} is invalid; expected one of: "
                             f"{', '.join(valid)}")
    return enum[name]


def _depth(value: Any, history: HistoryPolicy) -> int:
    # Checked before assignment: rclpy turns depth 0 under keep_last into system_default.
    minimum = 1 if history == HistoryPolicy.KEEP_LAST else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise QoSConfigError(f"QoS depth must be an integer >= {minimum} with "
                             f"{history.name.lower()} history, got {value!r}")
    return value


def _seconds(key: str, value: Any) -> Duration:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value >= 0):
        raise QoSConfigError(f"QoS {key} must be a number of seconds >= 0, got {value!r}")
    return Duration(nanoseconds=round(value * 1e9))


def qos_from_dict(spec: Mapping[str, Any] | None,
                  base: str | QoSProfile = "default") -> QoSProfile:
    """Build a profile from a per-sensor override dict (e.g. a sensor's ``qos`` parameters).

    Parameters
    ----------
    spec : keys among :data:`KEYS`: ``profile`` (a name, replaces ``base``), ``reliability``
        ("reliable", "best_effort", "system_default", "best_available"), ``durability``
        ("volatile", "transient_local", ...), ``history`` ("keep_last", "keep_all"),
        ``depth`` (>= 1 with keep_last), ``liveliness``, and ``deadline_s``/``lifespan_s``/
        ``liveliness_lease_duration_s`` in seconds. Values that are None or "" are ignored
        (an unset parameter); policy names are case-insensitive. None: ``base`` unchanged.
    base : profile name or profile the overrides apply to (not modified).

    Returns
    -------
    A new QoSProfile.

    Raises
    ------
    QoSConfigError : an unknown key, profile or policy name, or an invalid value.
    """
    if spec is not None and not isinstance(spec, Mapping):
        raise QoSConfigError(f"QoS overrides must be a mapping, got {type(spec).__name__}")
    items = {k: v for k, v in (spec or {}).items() if v is not None and v != ""}
    unknown = sorted(set(map(str, items)) - set(KEYS))
    if unknown:
        raise QoSConfigError(f"unknown QoS keys {unknown}; expected some of: {', '.join(KEYS)}")
    start = items.pop("profile", base)
    profile = copy_qos(start) if isinstance(start, QoSProfile) else qos_from_name(start)
    depth = items.pop("depth", None)
    for key, value in items.items():
        if key in _POLICIES:
            setattr(profile, key, _policy(key, value))
        else:
            setattr(profile, key[:-2], _seconds(key, value))
    if depth is not None:
        profile.depth = _depth(depth, profile.history)
    elif profile.history == HistoryPolicy.KEEP_LAST and profile.depth < 1:
        raise QoSConfigError("keep_last history needs a depth >= 1 (the base profile has none)")
    return profile


def qos_to_dict(profile: QoSProfile) -> dict[str, Any]:
    """The profile as plain values (lower-case policy names, seconds); inverse of
    :func:`qos_from_dict`."""
    out: dict[str, Any] = {key: getattr(profile, key).name.lower() for key in _POLICIES}
    out["depth"] = int(profile.depth)
    for key in _DURATIONS:
        out[f"{key}_s"] = getattr(profile, key).nanoseconds / 1e9
    return out


def describe_qos(profile: QoSProfile) -> str:
    """One line for logs, e.g. "best_effort, volatile, keep_last(5)"."""
    history = profile.history.name.lower()
    depth = f"({profile.depth})" if profile.history == HistoryPolicy.KEEP_LAST else ""
    return (f"{profile.reliability.name.lower()}, {profile.durability.name.lower()}, "
            f"{history}{depth}")
