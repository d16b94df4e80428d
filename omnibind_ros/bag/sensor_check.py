"""Which configured sensors a bag evaluation can use, and for every one it cannot: why, by its
config key, and what would work.

Why: a bag recorded by someone else comes with someone else's names. Before this check a
borrowed config failed on its first bad sensor (fix it, run again, meet the second), a sensor
whose modality the bundle lacks stopped the evaluation with the bundle's error and no config key,
and a sensor whose topic the bag does not have was silently LOST for the whole bag (every
dropout phase then says it is unplugged). Now one pass names them all, each with what the bag
and the bundle offer instead:

==========================================  =====  =============================================
problem (config key)                        fatal  what would work
==========================================  =====  =============================================
a value the node rejects (the key it names)  yes   the node's reason; for ``message_type`` /
                                                   ``modality`` the bag topics that fit
modality not in the bundle (``.modality``)   yes   the bundle's modalities
topic not in the bag (``.topic``)            no    the bag's topics of a type the sensor's
                                                   modality reads
topic of another type (``.message_type``)    no    that type, if the modality reads it; else
                                                   fitting topics and the modalities reading it
==========================================  =====  =============================================

*Fatal* problems are those the node itself refuses at configure time (the evaluation could not
run the node's path): they raise one :class:`~omnibind_ros.bag.config.ConfigError` listing
every problem of the config, fatal or not. The others leave a sensor that receives nothing from
this bag: the evaluation runs (as the node would), and one warning lists them all. A config in
which no sensor is fed by the bag is refused by each mode with its own "no topic of ..." error,
to which :meth:`SensorCheck.listing` is appended.

Disabled sensors (``enabled: false``) are checked only against the bundle (the node builds
their pipelines too, to enable them at run time): the user switched them off, so a topic the bag
lacks is no surprise.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnibind_ros.bag.config import ConfigError

__all__ = ["SensorCheck", "SensorProblem", "bundle_modalities", "check_sensors",
           "modalities_reading", "preflight", "readable_types"]


@dataclass(frozen=True)
class SensorProblem:
    """One unusable sensor.

    sensor : its name; key : the config key at fault (``sensors.lidar.topic``);
    problem : what is wrong; fix : what would work ("" when the problem says it);
    fatal : the node refuses to configure with it.
    """

    sensor: str
    key: str
    problem: str
    fix: str
    fatal: bool

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}" + (f"; {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class SensorCheck:
    """The outcome of :func:`check_sensors`: the problems (config order) and the sensors a bag
    topic feeds."""

    problems: tuple[SensorProblem, ...]
    fed: tuple[str, ...]

    @property
    def fatal(self) -> list[SensorProblem]:
        return [p for p in self.problems if p.fatal]

    def listing(self) -> str:
        """Every problem, one per line (for an error message)."""
        return "\n".join(f"  - {p}" for p in self.problems)

    def warning(self) -> str | None:
        """One line naming every sensor this bag does not feed (None when there is none)."""
        silent = [p for p in self.problems if not p.fatal]
        if not silent:
            return None
        return (f"{len(silent)} configured sensor(s) receive nothing from this bag and are "
                "never fused (a timed sensor is LOST throughout, and every dropout phase "
                "counts it unplugged): " + "; ".join(map(str, silent)))


def readable_types(modality: str) -> list[str]:
    """Message types a sensor of ``modality`` can be read from (the node's converters)."""
    from omnibind_ros.ros.conversions import CONVERTERS

    return [t for (m, t) in CONVERTERS if m == modality]


def modalities_reading(msgtype: str) -> list[str]:
    """Modalities whose sensors can be read from ``msgtype``."""
    from omnibind_ros.ros.conversions import CONVERTERS

    canonical = _canonical(msgtype)
    return [m for (m, t) in CONVERTERS if t == canonical]


def _canonical(msgtype: str) -> str:
    from omnibind_ros.ros.conversions import normalise_msg_type

    try:
        return normalise_msg_type(msgtype)
    except ValueError:
        return msgtype


def bundle_modalities(path: str | Path) -> tuple[str, list[str]]:
    """(bundle name, modalities it has an encoder and preprocessing for), read without
    verifying checksums (the evaluation loads and verifies it afterwards)."""
    from omnibind_ros.core.bundle import load_bundle

    bundle = load_bundle(path, verify=False)
    return bundle.name, sorted(bundle.preprocess_configs)


def _a(word: str) -> str:
    """'a image' -> 'an image'."""
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def _fitting(modality: str, bag_topics: Mapping[str, tuple[str, int]], taken: set[str],
             configured_type: str, name: str) -> str:
    """'bag topics a <modality> sensor can read: ...' (with the message_type to set), or what
    the bag lacks."""
    readable = readable_types(modality)
    fits = [(t, _canonical(v[0])) for t, v in sorted(bag_topics.items())
            if t not in taken and _canonical(v[0]) in readable]
    if not fits:
        return (f"the bag has no topic {_a(modality)} sensor can read "
                f"({', '.join(readable)}); "
                f"remove {name} from `sensors` if the robot had no such sensor")
    shown = []
    for topic, msgtype in fits[:8]:
        same = msgtype == _canonical(configured_type)
        shown.append(f"{topic} ({msgtype}" + ("" if same else
                                              f", with sensors.{name}.message_type: "
                                              f"{msgtype}") + ")")
    more = f" and {len(fits) - 8} more" if len(fits) > 8 else ""
    return f"bag topics {_a(modality)} sensor can read: {', '.join(shown)}{more}"


def check_sensors(cfg: Any, bag_topics: Mapping[str, tuple[str, int]],
                  modalities: Sequence[str], *, bundle: str = "the bundle",
                  used: Iterable[str] = ()) -> SensorCheck:
    """Check every configured sensor against the bag and the bundle (see the module docstring).

    Parameters
    ----------
    cfg : ``bag.config.NodeConfig``, loaded with ``strict=False`` (its ``invalid`` sensors are
        reported here, with the rest).
    bag_topics : topic -> (message type, count) of the bag.
    modalities : the bundle's modalities (:func:`bundle_modalities`); bundle : its name.
    used : topics the evaluator reads itself (ground truth, scenario events): never offered.
    """
    used = set(used)
    fed = [s.name for s in cfg.sensors if s.enabled and s.modality in modalities
           and s.topic in bag_topics
           and _canonical(bag_topics[s.topic][0]) == _canonical(s.message_type)]
    taken = used | {s.topic for s in cfg.sensors if s.name in fed}
    have = sorted(modalities)
    problems: list[SensorProblem] = []
    invalid = dict(getattr(cfg, "invalid", {}) or {})
    for name in cfg.params.get("sensors") or []:
        if name in invalid:
            key, reason = invalid[name]
            problems.append(SensorProblem(name, key, reason,
                                          _invalid_fix(cfg, name, key, bag_topics, taken, have),
                                          True))
            continue
        sensor = next((s for s in cfg.sensors if s.name == name), None)
        if sensor is None:
            continue
        if sensor.modality not in modalities:  # the node builds disabled sensors' pipelines too
            problems.append(SensorProblem(
                name, f"sensors.{name}.modality",
                f"{bundle} has no {sensor.modality} encoder (the node refuses to configure)",
                f"its modalities: {', '.join(have)}; remove {name} from `sensors` or use a "
                f"bundle with {_a(sensor.modality)} encoder", True))
            continue
        if not sensor.enabled:
            continue
        if sensor.topic not in bag_topics:
            problems.append(SensorProblem(
                name, f"sensors.{name}.topic", f"{sensor.topic} is not in the bag",
                _fitting(sensor.modality, bag_topics, taken, sensor.message_type, name),
                False))
            continue
        bag_type = _canonical(bag_topics[sensor.topic][0])
        if bag_type == _canonical(sensor.message_type):
            continue
        problem = (f"the bag's {sensor.topic} is {bag_type}, the sensor is configured for "
                   f"{_canonical(sensor.message_type)}")
        if bag_type in readable_types(sensor.modality):
            fix = f"set sensors.{name}.message_type: {bag_type}"
        else:
            fix = (f"{_a(sensor.modality)} sensor cannot read {bag_type}; "
                   + _fitting(sensor.modality, bag_topics, taken, sensor.message_type, name))
            other = [m for m in modalities_reading(bag_type) if m in modalities]
            if other:
                fix += (f"; or, if {sensor.topic} is another kind of sensor, "
                        f"sensors.{name}.modality: one of {', '.join(other)}")
        problems.append(SensorProblem(name, f"sensors.{name}.message_type", problem, fix,
                                      False))
    return SensorCheck(tuple(problems), tuple(fed))


def _invalid_fix(cfg: Any, name: str, key: str, bag_topics: Mapping[str, tuple[str, int]],
                 taken: set[str], have: list[str]) -> str:
    """What would work for a sensor the node rejects: for a type or modality problem, what the
    bag's topic (or the bag) offers; otherwise the node's reason says it."""
    from omnibind_ros.bag.config import _absolute
    from omnibind_ros.core.names import PERCEPTION_NODE

    raw_topic = str(cfg.params.get(f"sensors.{name}.topic") or "")
    topic = _absolute(raw_topic, PERCEPTION_NODE) if raw_topic else ""
    modality = str(cfg.params.get(f"sensors.{name}.modality") or "")
    if key.endswith(".message_type"):
        if topic in bag_topics:
            bag_type = _canonical(bag_topics[topic][0])
            if bag_type in readable_types(modality):
                return f"the bag's {topic} is {bag_type}: set sensors.{name}.message_type: " \
                       f"{bag_type}"
        return _fitting(modality, bag_topics, taken, "", name) if modality else ""
    if key.endswith(".modality"):
        fix = f"the bundle's modalities: {', '.join(have)}"
        if topic in bag_topics:
            bag_type = _canonical(bag_topics[topic][0])
            readers = [m for m in modalities_reading(bag_type) if m in have]
            if readers:
                fix += f"; the bag's {topic} ({bag_type}) is read by: {', '.join(readers)}"
        return fix
    return ""


def preflight(cfg: Any, bag_topics: Mapping[str, tuple[str, int]], bundle_path: str | Path,
              *, used: Iterable[str] = (), bag: str | Path = "") -> SensorCheck:
    """:func:`check_sensors` against the bundle at ``bundle_path``; raises one ConfigError
    listing every problem when any of them is fatal (see the module docstring).

    Raises
    ------
    ConfigError : a sensor the node would refuse (the message names all problems).
    BundleNotFoundError, BundleCorruptError... : the bundle cannot be read.
    """
    name, modalities = bundle_modalities(bundle_path)
    check = check_sensors(cfg, bag_topics, modalities, bundle=f"bundle {name}", used=used)
    if check.fatal:
        where = str(cfg.path) if getattr(cfg, "path", None) else "the configuration"
        raise ConfigError(
            f"{where}: {len(check.problems)} configured sensor(s) cannot be used"
            + (f" with bag {bag}" if bag else "") + f" and bundle {name} ({len(check.fatal)} "
            "of them the node would refuse):\n" + check.listing())
    return check
