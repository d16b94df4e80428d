"""Parameters of the perception node: declaration with descriptors, validation, typed views.

Layout (nav2's ``observation_sources`` convention): ``sensors`` is a list of names and each name
has a sub-dict ``sensors.<name>.*`` (see config/perception.yaml, which documents every
parameter). Validation lives here, not in the node, so one function decides what
a parameter update may change: ``validate_update`` returns the reason of a rejection, which rclpy
hands back to ``ros2 param set``.

Why ``allow_undeclared_parameters``: a sensor added at runtime by parameters needs its
``sensors.<name>.modality``/``topic`` set before ``sensors`` names it, and they cannot be
declared before the node knows the name. ``validate_update`` still rejects every name that is
not a known global parameter or a known per-sensor key, so a typo fails instead of silently
creating a parameter.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter

from omnibind_ros.core.availability import SensorConfig
from omnibind_ros.core.backends import BACKENDS
from omnibind_ros.core.modalities import MODALITY_SPECS, parse_modality
from omnibind_ros.core.recognizer import FusionSettings
from omnibind_ros.ros.conversions import conversion_for
from omnibind_ros.ros.qos import PROFILES, qos_for_modality, qos_from_name

__all__ = [
    "GLOBAL_PARAMS", "SENSOR_KEYS", "ParamSpec", "SensorParams",
    "declare_globals", "declare_sensor", "read_fusion", "read_sensor", "sensor_param",
    "validate_update",
]

SENSOR_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
#: Audio arrives as 20 ms chunks (50 Hz): every chunk feeds the streaming preprocessor, but the
#: window is encoded at most this often (an encode per chunk would cost 50 encoder runs/s for
#: windows that overlap by 98%). Other modalities encode every message by default.
DEFAULT_ENCODE_RATE_HZ = {"audio": 10.0}
#: Modalities whose message covers a window ``[stamp, stamp + 1 / rate)`` (stamped at its start,
#: as event cameras and audio drivers do): they arrive at least one period after their stamp,
#: so ``window_s = -1`` means one expected period for them and 0 for frame sensors.
WINDOWED_MODALITIES = ("event", "audio")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: type, default, description, and range (inclusive) or allowed values."""

    ptype: Parameter.Type
    default: Any
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str] | None = None  # returns a reason, "" when valid

    def descriptor(self, name: str) -> ParameterDescriptor:
        desc = ParameterDescriptor(name=name, type=int(self.ptype), description=self.description)
        if self.ptype == Parameter.Type.STRING_ARRAY and not self.default:
            # rclpy infers BYTE_ARRAY from an empty default list and would then refuse string
            # lists; the type is checked by validate_update instead.
            desc.dynamic_typing = True
        if self.choices:
            desc.additional_constraints = "one of: " + ", ".join(self.choices)
        if self.low is not None and self.ptype == Parameter.Type.DOUBLE:
            desc.floating_point_range = [FloatingPointRange(
                from_value=float(self.low), to_value=float(self.high), step=0.0)]
        elif self.low is not None and self.ptype == Parameter.Type.INTEGER:
            desc.integer_range = [IntegerRange(
                from_value=int(self.low), to_value=int(self.high), step=1)]
        return desc

    def reason(self, name: str, value: Any) -> str:
        """Why ``value`` is invalid for this parameter; "" if it is valid."""
        if not _type_ok(self.ptype, value):
            return f"{name} must be of type {self.ptype.name.lower()}, got {value!r}"
        if self.low is not None and not (math.isfinite(value)
                                         and self.low <= value <= self.high):
            return f"{name} must be in [{self.low}, {self.high}], got {value!r}"
        if self.choices and value not in self.choices:
            return f"{name} must be one of {list(self.choices)}, got {value!r}"
        return self.check(value) if self.check else ""


def _type_ok(ptype: Parameter.Type, value: Any) -> bool:
    if ptype == Parameter.Type.DOUBLE:
        return isinstance(value, float | int) and not isinstance(value, bool)
    if ptype == Parameter.Type.INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    if ptype == Parameter.Type.BOOL:
        return isinstance(value, bool)
    if ptype == Parameter.Type.STRING:
        return isinstance(value, str)
    if ptype == Parameter.Type.STRING_ARRAY:
        return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    return False


def _modality_reason(value: str) -> str:
    try:
        parse_modality(value)
    except ValueError as exc:
        return str(exc)
    return ""


def _qos_reason(value: str) -> str:
    if not value:
        return ""
    try:
        qos_from_name(value)
    except ValueError as exc:
        return str(exc)
    return ""


def _names_reason(value: list[str]) -> str:
    bad = [n for n in value if not SENSOR_NAME_RE.match(n)]
    if bad:
        return f"sensor names must match {SENSOR_NAME_RE.pattern}, got {bad}"
    if len(set(value)) != len(value):
        return f"sensor names must be unique, got {list(value)}"
    return ""


_BACKEND_NAMES = (*BACKENDS, "auto")
_D, _I, _B, _S, _SA = (Parameter.Type.DOUBLE, Parameter.Type.INTEGER, Parameter.Type.BOOL,
                       Parameter.Type.STRING, Parameter.Type.STRING_ARRAY)

#: Node-wide parameters. Values marked "configure" take effect at the next configure.
GLOBAL_PARAMS: dict[str, ParamSpec] = {
    "bundle_path": ParamSpec(_S, "", "model bundle directory or archive; '' = "
                             "<cache>/bundles/default (configure)"),
    "backend": ParamSpec(_S, "onnxruntime", "inference backend (configure)",
                         choices=_BACKEND_NAMES),
    "backend_fallback": ParamSpec(_B, False, "use onnxruntime when the chosen backend cannot "
                                  "run here instead of failing configure (configure)"),
    "backend_threads": ParamSpec(_I, 1, "intra-op threads of the backend; 0 = runtime default "
                                 "(configure)", 0, 256),
    "autostart": ParamSpec(_B, False, "configure and activate at start-up (no lifecycle "
                           "manager needed; main() only)"),
    "frame_id": ParamSpec(_S, "", "header.frame_id of Recognition"),
    "sensors": ParamSpec(_SA, [], "names of the configured sensors; each has sensors.<name>.*",
                         check=_names_reason),
    "fusion.rate_hz": ParamSpec(_D, 10.0, "fusion ticks per second; 0 = tick on every new "
                                "embedding", 0.0, 1000.0),
    "fusion.tick_on_embedding": ParamSpec(_B, True, "a new embedding ticks at once when the "
                                          "last tick is >= 1/rate_hz old; the timer only "
                                          "ticks when no embedding comes"),
    "fusion.max_age_s": ParamSpec(_D, 1.0, "oldest embedding (s, by header stamp) that may "
                                  "be fused", 0.0, 3600.0),
    "fusion.min_modalities": ParamSpec(_I, 1, "distinct live modalities needed for an answer",
                                       1, 16),
    "fusion.top_k": ParamSpec(_I, 5, "labels in Recognition.top_labels", 1, 1000),
    "fusion.publish_embedding": ParamSpec(_B, False, "fill Recognition.embedding"),
    "fusion.unsure_below": ParamSpec(_D, 0.5, "answers whose calibrated confidence is below "
                                     "it are marked Recognition.unsure; 0 = never", 0.0, 1.0),
    "fusion.min_quality": ParamSpec(_D, 0.0, "leave out of fusion a sensor whose input quality "
                                    "(SensorStatus.quality) is below it; 0 = fuse every live "
                                    "sensor", 0.0, 1.0),
    "quality.warn_below": ParamSpec(_D, 0.5, "/diagnostics warns about a live sensor whose "
                                    "input quality is below it (dark camera, wind...)",
                                    0.0, 1.0),
    "labels.names": ParamSpec(_SA, [], "label names; [] = labels.file, or the bundle's"),
    "labels.file": ParamSpec(_S, "", "text file, one label per line ('#' comments); used "
                             "when labels.names is empty"),
    "status.rate_hz": ParamSpec(_D, 1.0, "periodic ~/sensor_status and /diagnostics rate "
                                "(also published on every state change)", 0.1, 100.0),
    "graph_poll_hz": ParamSpec(_D, 2.0, "publisher-count polling of sensor topics", 0.1, 100.0),
    "state_log.burst": ParamSpec(_I, 3, "sensor state changes each sensor logs at once; "
                                 "further ones are counted and summarised", 1, 1000),
    "state_log.interval_s": ParamSpec(_D, 10.0, "each sensor earns state_log.burst log lines "
                                      "per this many seconds; a summary with the final state "
                                      "comes out when one is earned", 0.1, 3600.0),
    "bad_samples_to_degrade": ParamSpec(_I, 3, "bad messages in a row that make a sensor "
                                        "DEGRADED (configure)", 1, 1000),
    "annotated_image.rate_hz": ParamSpec(_D, 5.0, "most frames per second of "
                                         "~/annotated_image, rendered only while subscribed; "
                                         "0 = never", 0.0, 30.0),
    "annotated_image.sensor": ParamSpec(_S, "", "image sensor whose newest frame "
                                        "~/annotated_image shows; '' = the first live one"),
    "annotated_image.width": ParamSpec(_I, 640, "width in pixels of ~/annotated_image (the "
                                       "frame is scaled to it)", 160, 3840),
}

#: Per-sensor keys (parameter ``sensors.<name>.<key>``). Defaults of None depend on modality.
SENSOR_KEYS: dict[str, ParamSpec] = {
    "modality": ParamSpec(_S, "", "modality registry key", check=_modality_reason),
    "topic": ParamSpec(_S, "", "topic to subscribe to",
                       check=lambda v: "" if v.strip() else "topic must not be empty"),
    "message_type": ParamSpec(_S, "", "ROS type, e.g. sensor_msgs/msg/Image; '' = the "
                              "modality's first type"),
    "qos": ParamSpec(_S, "", "named QoS profile; '' = the modality's default (best effort)",
                     check=_qos_reason),
    "expected_rate_hz": ParamSpec(_D, 0.0, "nominal rate in Hz; 0 = no timeouts", 0.0, 10000.0),
    "stale_after": ParamSpec(_D, 2.5, "STALE after this many expected periods", 0.1, 1000.0),
    "lost_after": ParamSpec(_D, 10.0, "LOST after this many expected periods (> stale_after)",
                            0.1, 10000.0),
    "enabled": ParamSpec(_B, True, "false = DISABLED, never fused"),
    "encode_rate_hz": ParamSpec(_D, -1.0, "encode at most this often in Hz; 0 = every "
                                "message; -1 = modality default (10 for audio, else 0)",
                                -1.0, 10000.0),
    "window_s": ParamSpec(_D, -1.0, "publication delay by construction, s (a message stamped "
                          "at the start of the window it covers); added to the stale and lost "
                          "timeouts; -1 = one period for event and audio, 0 for the others",
                          -1.0, 60.0),
    "max_delay_s": ParamSpec(_D, 1.0, "most learned arrival delay (beyond window_s) plus "
                             "lateness credit added to the stale and lost timeouts, s; 0 = "
                             "timeouts count from the stamp", 0.0, 60.0),
    "info_topic": ParamSpec(_S, "", "paired info topic of a message type that needs one "
                            "(AudioInfo for AudioData, CameraInfo for a depth image); '' = the "
                            "driver's sibling topic (audio_info, camera_info), 'none' = none"),
}


def sensor_param(name: str, key: str) -> str:
    return f"sensors.{name}.{key}"


def _split_sensor_param(pname: str) -> tuple[str, str] | None:
    parts = pname.split(".")
    if len(parts) == 3 and parts[0] == "sensors":
        return parts[1], parts[2]
    return None


def declare_globals(node: Any) -> None:
    for name, spec in GLOBAL_PARAMS.items():
        if not node.has_parameter(name):
            node.declare_parameter(name, spec.default, spec.descriptor(name))


def sensor_default(key: str, modality: str) -> Any:
    """Default of ``sensors.<name>.<key>`` for a sensor of ``modality``."""
    if key == "encode_rate_hz":
        return DEFAULT_ENCODE_RATE_HZ.get(modality, 0.0)
    if key == "message_type":
        return MODALITY_SPECS[parse_modality(modality)].ros_types[0]
    return SENSOR_KEYS[key].default


def declare_sensor(node: Any, name: str, values: Mapping[str, Any] | None = None) -> None:
    """Declare ``sensors.<name>.*`` (parameters already set, e.g. by overrides, are kept)."""
    values = dict(values or {})
    for key, spec in SENSOR_KEYS.items():
        pname = sensor_param(name, key)
        if node.has_parameter(pname):
            continue
        value = values.get(key)
        if value is None:
            modality = values.get("modality") or _get(node, sensor_param(name, "modality"))
            try:
                value = sensor_default(key, modality) if modality else spec.default
            except ValueError:
                value = spec.default
        node.declare_parameter(pname, value, spec.descriptor(pname))


def _get(node: Any, pname: str) -> Any:
    if not node.has_parameter(pname):
        return None
    return node.get_parameter(pname).value


@dataclass(frozen=True)
class SensorParams:
    """One sensor's parameters, validated and with modality-dependent defaults applied."""

    name: str
    modality: str
    topic: str
    message_type: str
    qos: str
    expected_rate_hz: float
    stale_after: float
    lost_after: float
    enabled: bool
    encode_rate_hz: float
    info_topic: str = ""
    window_s: float = 0.0
    max_delay_s: float = 1.0

    def monitor_config(self, degraded_after_bad: int = 3) -> SensorConfig:
        return SensorConfig(name=self.name, modality=self.modality, topic=self.topic,
                            expected_rate_hz=self.expected_rate_hz,
                            stale_after=self.stale_after, lost_after=self.lost_after,
                            enabled=self.enabled, degraded_after_bad=degraded_after_bad,
                            window_s=self.window_s, max_delay_s=self.max_delay_s)

    def qos_profile(self) -> Any:
        return qos_from_name(self.qos) if self.qos else qos_for_modality(self.modality)


def sensor_values(lookup: Callable[[str], Any], name: str) -> dict[str, Any]:
    """The raw ``sensors.<name>.*`` values via ``lookup(param_name)`` (None where unset)."""
    return {key: lookup(sensor_param(name, key)) for key in SENSOR_KEYS}


def build_sensor(name: str, raw: Mapping[str, Any]) -> SensorParams:
    """Typed, checked sensor parameters. Raises ValueError with the reason."""
    modality = raw.get("modality")
    if not modality:
        raise ValueError(f"sensor {name}: sensors.{name}.modality is not set")
    if not raw.get("topic"):
        raise ValueError(f"sensor {name}: sensors.{name}.topic is not set")
    values: dict[str, Any] = {}
    for key, spec in SENSOR_KEYS.items():
        value = raw.get(key)
        if value is None or (key in ("message_type",) and value == "") or (
                key in ("encode_rate_hz", "window_s") and value < 0):
            value = sensor_default(key, parse_modality(modality).value)
        reason = spec.reason(sensor_param(name, key), value)
        if reason:
            raise ValueError(reason)
        values[key] = float(value) if spec.ptype == _D else value
    values["modality"] = parse_modality(modality).value
    if values["window_s"] < 0:  # one period of a windowed sensor (needs the rate, read above)
        rate = values["expected_rate_hz"]
        windowed = values["modality"] in WINDOWED_MODALITIES and rate > 0
        values["window_s"] = 1.0 / rate if windowed else 0.0
    if values["lost_after"] <= values["stale_after"]:
        raise ValueError(f"sensor {name}: lost_after ({values['lost_after']}) must be greater "
                         f"than stale_after ({values['stale_after']})")
    conversion_for(values["modality"], values["message_type"])  # ValueError names the types
    return SensorParams(name=name, **values)


def read_sensor(node: Any, name: str) -> SensorParams:
    return build_sensor(name, sensor_values(lambda p: _get(node, p), name))


def read_fusion(lookup: Callable[[str], Any]) -> FusionSettings:
    """The ``fusion.*`` parameters (``lookup(name)`` gives a parameter's value)."""
    return FusionSettings(rate_hz=float(lookup("fusion.rate_hz")),
                          max_age_s=float(lookup("fusion.max_age_s")),
                          min_modalities=int(lookup("fusion.min_modalities")),
                          top_k=int(lookup("fusion.top_k")),
                          publish_embedding=bool(lookup("fusion.publish_embedding")),
                          tick_on_embedding=bool(lookup("fusion.tick_on_embedding")),
                          unsure_below=float(lookup("fusion.unsure_below")),
                          min_quality=float(lookup("fusion.min_quality")))


def validate_update(params: Iterable[Parameter], current: Callable[[str], Any]) -> str:
    """Check a batch of parameter updates; return the reason of a rejection or "".

    ``current(name)`` returns the present value of a parameter (None if unset); values in the
    batch take precedence, so one atomic update may add a sensor with all its keys.
    """
    batch = {p.name: p.value for p in params}

    def value_of(pname: str) -> Any:
        return batch[pname] if pname in batch else current(pname)

    for pname, value in batch.items():
        reason = _check_one(pname, value)
        if reason:
            return reason
    for pname in batch:
        split = _split_sensor_param(pname)
        if split and split[0] in (value_of("sensors") or []):
            reason = _sensor_reason(split[0], value_of)
            if reason:
                return reason
    if "sensors" in batch:
        for name in batch["sensors"] or []:
            reason = _sensor_reason(name, value_of)
            if reason:
                return reason
    return ""


def _check_one(pname: str, value: Any) -> str:
    if pname in GLOBAL_PARAMS:
        return GLOBAL_PARAMS[pname].reason(pname, value)
    if pname == "use_sim_time" or pname.startswith("qos_overrides."):
        return ""
    split = _split_sensor_param(pname)
    if split is None or split[1] not in SENSOR_KEYS:
        return (f"unknown parameter {pname!r}; per-sensor keys are sensors.<name>."
                f"{{{','.join(SENSOR_KEYS)}}}")
    if not SENSOR_NAME_RE.match(split[0]):
        return f"sensor name {split[0]!r} must match {SENSOR_NAME_RE.pattern}"
    return SENSOR_KEYS[split[1]].reason(pname, value)


def _sensor_reason(name: str, value_of: Callable[[str], Any]) -> str:
    try:
        build_sensor(name, sensor_values(value_of, name))
    except ValueError as exc:
        return str(exc)
    return ""


def known_profiles() -> tuple[str, ...]:
    return tuple(PROFILES)
