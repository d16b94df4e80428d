"""The perception node's YAML configuration, read without a node (for bag evaluation).

Bags recorded by others map topics to sensors with the same file the node runs with
(``config/perception.yaml`` by default). This reads it the way rcl reads ``--params-file``:

* top-level keys are node names; every key that matches the node applies, in file order (later
  keys override earlier ones): ``/**`` and ``/*`` (any node), ``/**/omnibind_perception`` (any
  namespace), ``omnibind_perception`` / ``/omnibind_perception`` and
  ``/<namespace>/omnibind_perception`` (an evaluation has no namespace, so a namespaced section
  of this node is taken too: the user pointed us at this file for this node);
* values live under ``ros__parameters``; nested mappings are flattened with dots
  (``fusion: {rate_hz: 10}`` is ``fusion.rate_hz``; ``sensors.camera: {topic: ...}`` is
  ``sensors.camera.topic``).

Values are checked with the node's own specs (``ros.params.GLOBAL_PARAMS`` / ``SENSOR_KEYS``,
``build_sensor``), so a file the node rejects is rejected here with the same reason, and
unset values get the node's defaults. Parameters the node does not know are reported in
``NodeConfig.unknown`` (the node, which allows undeclared parameters, ignores them too).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnibind_ros.core.names import PERCEPTION_NODE

__all__ = ["ConfigError", "NodeConfig", "default_config_path", "info_topics", "load_node_config",
           "map_topics", "parse_node_params", "sensor_key"]

#: Node-level keys rcl and rclpy handle themselves (accepted, not checked here).
_ROS_KEYS = ("use_sim_time",)


class ConfigError(ValueError):
    """The configuration file cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class NodeConfig:
    """What an evaluation needs of the node's configuration.

    Attributes
    ----------
    path : the file read (None: built-in defaults only).
    params : every parameter value after defaults, flattened (``fusion.rate_hz``...).
    sensors : configured sensors, in the order of the ``sensors`` list.
    fusion : fusion parameters (``ros.params.FusionParams``).
    bad_samples_to_degrade : bad messages in a row that make a sensor DEGRADED.
    label_names : ``labels.names`` ([] = ``labels.file`` or the bundle's).
    label_file : ``labels.file`` ("" = none), resolved against the config's directory when it
        is relative and not found from the working directory.
    unknown : parameter names in the file the node does not know (typos, other versions).
    invalid : sensors the node would refuse (only with ``load_node_config(strict=False)``):
        name -> (the config key at fault, e.g. ``sensors.lidar.message_type``, the node's
        reason). They are not in ``sensors``.
    """

    path: Path | None
    params: dict[str, Any]
    sensors: list[Any]
    fusion: Any
    bad_samples_to_degrade: int
    label_names: list[str] = field(default_factory=list)
    label_file: str = ""
    unknown: list[str] = field(default_factory=list)
    invalid: dict[str, tuple[str, str]] = field(default_factory=dict)

    def sensor(self, name: str) -> Any:
        for cfg in self.sensors:
            if cfg.name == name:
                return cfg
        raise KeyError(f"no sensor named {name!r}; configured: {[s.name for s in self.sensors]}")

    @property
    def topics(self) -> dict[str, Any]:
        """Topic -> sensor params (absolute topic names)."""
        return {cfg.topic: cfg for cfg in self.sensors}


def default_config_path() -> Path:
    """``config/perception.yaml`` of the package (source tree first, then share/)."""
    from omnibind_ros.core.paths import config_file

    return config_file("perception.yaml")


def _matches(key: str, node_name: str) -> bool:
    key = key.strip()
    if key in ("/**", "/*", "**", "*"):
        return True
    parts = [p for p in key.split("/") if p]
    return bool(parts) and parts[-1] == node_name


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def parse_node_params(document: Any, node_name: str = PERCEPTION_NODE,
                      source: str = "<config>") -> dict[str, Any]:
    """The flattened ``ros__parameters`` of every section matching ``node_name``.

    Raises
    ------
    ConfigError : not a mapping of node names, a section without ``ros__parameters``.
    """
    if document is None:
        return {}
    if not isinstance(document, Mapping):
        raise ConfigError(f"{source}: expected a mapping of node names to "
                          f"{{ros__parameters: ...}}, got {type(document).__name__}")
    params: dict[str, Any] = {}
    for key, section in document.items():
        if not _matches(str(key), node_name):
            continue
        if not isinstance(section, Mapping) or "ros__parameters" not in section:
            raise ConfigError(f"{source}: section {key!r} has no 'ros__parameters' mapping")
        body = section["ros__parameters"]
        if body is None:
            continue
        if not isinstance(body, Mapping):
            raise ConfigError(f"{source}: {key}.ros__parameters must be a mapping, got "
                              f"{type(body).__name__}")
        _flatten("", body, params)
    return params


def _absolute(topic: str, node_name: str) -> str:
    """A relative topic resolved as the node (root namespace) resolves it."""
    if topic.startswith("~/"):
        return f"/{node_name}/{topic[2:]}"
    return topic if topic.startswith("/") else "/" + topic


def read_params_file(path: Path, node_name: str, *, what: str = "parameter file",
                     error: type[Exception] | None = None) -> dict[str, Any]:
    """The flattened ``ros__parameters`` of ``node_name`` in a ``--params-file`` YAML.

    Raises FileNotFoundError (naming ``what``) or ``error`` (default ConfigError) on bad YAML.
    """
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise (error or ConfigError)(f"{path}: not valid YAML: {exc}") from exc
    return parse_node_params(document, node_name, str(path))


def sensor_key(name: str, reason: str) -> str:
    """The config key a sensor's rejection is about (``sensors.<name>.<key>``), read from the
    node's reason; ``sensors.<name>`` when the reason names none."""
    import re

    match = re.search(rf"sensors\.{re.escape(name)}\.(\w+)", reason)
    if match:
        return f"sensors.{name}.{match.group(1)}"
    for needle, key in (("cannot be read from", "message_type"),  # conversion_for
                        ("unknown modality", "modality"), ("QoS", "qos"),
                        ("lost_after", "lost_after")):
        if needle in reason:
            return f"sensors.{name}.{key}"
    return f"sensors.{name}"


def load_node_config(path: str | Path | None = None,
                     node_name: str = PERCEPTION_NODE, *, strict: bool = True) -> NodeConfig:
    """Read the node's parameters from a YAML file (default: the package's perception.yaml).

    Parameters
    ----------
    path : the ``--params-file`` of the node; None = :func:`default_config_path`.
    node_name : the node's name (sections are matched against it).
    strict : raise on sensors the node would refuse (one error naming every one of them by
        its config key, not only the first: a user fixing a borrowed config should not
        discover them one run at a time). False: return them in ``NodeConfig.invalid`` (bag
        evaluation then names them together with what the bag and the bundle offer, see
        :mod:`omnibind_ros.bag.sensor_check`).

    Raises
    ------
    FileNotFoundError : the file does not exist.
    ConfigError : YAML syntax, a bad value (the node's reason), two sensors on one topic.
    """
    from omnibind_ros.ros import params as P

    path = Path(path).expanduser() if path is not None else default_config_path()
    raw = read_params_file(path, node_name, what="configuration file")
    values = {name: spec.default for name, spec in P.GLOBAL_PARAMS.items()}
    unknown: list[str] = []
    for name, value in raw.items():
        if name in P.GLOBAL_PARAMS:
            if isinstance(value, list) and not value and \
                    P.GLOBAL_PARAMS[name].default == []:
                value = []
            reason = P.GLOBAL_PARAMS[name].reason(name, value)
            if reason:
                raise ConfigError(f"{path}: {reason}")
            values[name] = value
        elif name.startswith("sensors."):
            values[name] = value
        elif name in _ROS_KEYS or name.startswith("qos_overrides."):
            continue
        else:
            unknown.append(name)
    names = list(values["sensors"] or [])
    sensors = []
    invalid: dict[str, tuple[str, str]] = {}
    for name in names:
        prefix = f"sensors.{name}."
        extra = sorted(k for k in raw if k.startswith(prefix) and k[len(prefix):]
                       not in P.SENSOR_KEYS)
        unknown += extra
        try:
            cfg = P.build_sensor(name, {k: raw.get(prefix + k) for k in P.SENSOR_KEYS})
        except ValueError as exc:
            invalid[name] = (sensor_key(name, str(exc)), str(exc))
            continue
        sensors.append(_with_topic(cfg, _absolute(cfg.topic, node_name)))
    if invalid and strict:
        if len(invalid) == 1:
            ((key, reason),) = invalid.values()
            raise ConfigError(f"{path}: {reason}")
        raise ConfigError(f"{path}: {len(invalid)} sensors are invalid:\n" + "\n".join(
            f"  {key}: {reason}" for key, reason in invalid.values()))
    listed = {f"sensors.{n}." for n in names}
    unknown += sorted(k for k in raw if k.startswith("sensors.") and k != "sensors"
                      and not any(k.startswith(p) for p in listed))
    topics = [s.topic for s in sensors]
    dupes = sorted({t for t in topics if topics.count(t) > 1})
    if dupes:
        raise ConfigError(f"{path}: several sensors on one topic {dupes}: a bag message could "
                          "not be attributed to one sensor")
    fusion = P.read_fusion(values.__getitem__)
    label_file = str(values["labels.file"] or "")
    if label_file and not Path(label_file).expanduser().is_file() and \
            (path.parent / label_file).is_file():
        label_file = str(path.parent / label_file)
    return NodeConfig(path=path, params=values, sensors=sensors, fusion=fusion,
                      bad_samples_to_degrade=int(values["bad_samples_to_degrade"]),
                      label_names=list(values["labels.names"] or []), label_file=label_file,
                      unknown=sorted(set(unknown)), invalid=invalid)


def _with_topic(cfg: Any, topic: str) -> Any:
    import dataclasses

    return cfg if cfg.topic == topic else dataclasses.replace(cfg, topic=topic)


def map_topics(bag_topics: Mapping[str, tuple[str, int]], sensors: Sequence[Any],
               used: Iterable[str] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """Which bag topics feed which configured sensor (offline and live modes alike).

    ``bag_topics``: topic -> (message type, count); ``sensors``: objects with ``name``,
    ``topic`` and ``message_type``; ``used``: topics the evaluator reads itself (ground truth,
    scenario events), neither mapped nor skipped. Returns (topic -> sensor, skipped topic ->
    why): a topic no sensor listens to, or one whose type is not the sensor's, is skipped.
    """
    from omnibind_ros.ros.conversions import normalise_msg_type

    used = set(used)
    by_topic = {s.topic: s for s in sensors}
    mapped: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for topic, (msgtype, count) in sorted(bag_topics.items()):
        if topic in used:
            continue
        sensor = by_topic.get(topic)
        if sensor is None:
            skipped[topic] = f"no sensor configured for it ({msgtype}, {count} messages)"
            continue
        try:
            same = normalise_msg_type(msgtype) == normalise_msg_type(sensor.message_type)
        except ValueError:
            same = False
        if not same:
            skipped[topic] = (f"type {msgtype}, but sensor {sensor.name} is configured for "
                              f"{sensor.message_type} ({count} messages)")
            continue
        mapped[topic] = sensor
    return mapped, skipped


def info_topics(bag_topics: Mapping[str, Any], sensors: Sequence[Any]) -> dict[str, str]:
    """A sensor's paired info topic (AudioInfo beside AudioData, CameraInfo beside a depth
    image) -> the sensor, where the bag has it: offline mode feeds its messages to the sensor's
    converter as the node's info subscription does, live mode plays it to that subscription."""
    from omnibind_ros.ros.conversions import conversion_for, info_topic_for

    out = {}
    for s in sensors:
        paired = info_topic_for(conversion_for(s.modality, s.message_type), s.topic,
                                getattr(s, "info_topic", ""))
        if paired is not None and paired[0] in bag_topics:
            out[paired[0]] = s.name
    return out
