"""Hot-plug scenarios: a scripted timeline of sensor plug/unplug/noise events (ROS-free).

A scenario file is YAML, either a plain list of events or a mapping with the list under
``events`` plus options::

    loop: true            # optional: replay the timeline every `duration_s` seconds
    duration_s: 40.0      # optional: length of one cycle (required with loop)
    events:
      - {t: 10.0, sensor: camera, action: unplug}
      - {t: 28.0, sensor: [thermal, microphone], action: unplug}
      - {t: 34.0, sensor: all, action: replug}

Each event has ``t`` (seconds of stream time since the simulator started, >= 0), ``sensor`` (a
sensor name, a list of names, or ``all``) and ``action``:

``unplug`` / ``replug``
    the sensor's publisher disappears from / comes back to the ROS graph;
``noise_on`` / ``noise_off``
    the sensor stays plugged in but publishes garbage of the right type and shape (a broken
    cable): exercises a consumer's bad-input handling, not its hot-plug handling;
``degrade_on`` / ``degrade_off``
    the sensor keeps publishing the world, degraded the way its physics goes (a camera in the
    dark, a microphone in the wind, a LiDAR in the rain): ``degrade_on`` takes two more keys,
    ``kind`` (a degradation of the sensor's modality, :mod:`omnibind_ros.sim.degrade`) and
    ``severity`` (0-1), e.g. ``{t: 12, sensor: camera, action: degrade_on, kind: dark,
    severity: 0.9}``; with ``sensor: all`` it applies to every sensor whose modality has that
    kind. ``degrade_off`` ends it.

Events at the same ``t`` apply in file order. :func:`corrupt` is what ``noise_on`` does to a
payload.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omnibind_ros.core.types import AudioBlock, EventPacket, TactileFrame

__all__ = ["ACTIONS", "ALL", "Scenario", "ScenarioError", "ScenarioEvent", "corrupt",
           "load_scenario", "parse_scenario"]

ACTIONS = ("unplug", "replug", "noise_on", "noise_off", "degrade_on", "degrade_off")
#: Sensor name that stands for every configured sensor.
ALL = "all"
_EVENT_KEYS = {"t", "sensor", "action"}
#: The extra keys of a ``degrade_on`` event.
_DEGRADE_KEYS = {"kind", "severity"}
_TOP_KEYS = {"events", "loop", "duration_s"}


class ScenarioError(ValueError):
    """A scenario file or event is invalid; the message names the offending entry."""


@dataclass(frozen=True)
class ScenarioEvent:
    """One timeline entry: at ``t`` seconds, apply ``action`` to ``sensors`` (names); a
    ``degrade_on`` event also has the degradation ``kind`` and its ``severity``."""

    t: float
    sensors: tuple[str, ...]
    action: str
    kind: str | None = None
    severity: float | None = None

    def targets(self, modalities: Mapping[str, str]) -> list[str]:
        """The sensors this event applies to, given sensor name -> modality (``all``
        expanded: for ``degrade_on``, to the sensors whose modality has ``kind``)."""
        if ALL not in self.sensors:
            return list(self.sensors)
        if self.action != "degrade_on":
            return list(modalities)
        return [n for n, m in modalities.items() if self.kind in _kinds_of(m)]


def _kinds_of(modality: str) -> tuple[str, ...]:
    from omnibind_ros.sim.degrade import DEGRADATIONS  # numpy/cv2/scipy: only when needed

    return tuple(DEGRADATIONS.get(modality, {}))


@dataclass
class Scenario:
    """A validated timeline; :meth:`events_until` hands out each event once, in order.

    Parameters
    ----------
    events : sorted by ``t`` (stable: same-time events keep their order).
    loop : replay the timeline every ``duration_s`` seconds.
    duration_s : length of one cycle; must be > the last event's ``t`` when looping.
    """

    events: tuple[ScenarioEvent, ...]
    loop: bool = False
    duration_s: float | None = None
    _cycle: int = dataclasses.field(default=0, init=False, repr=False)
    _index: int = dataclasses.field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.events = tuple(sorted(self.events, key=lambda e: e.t))
        if self.loop:
            if self.duration_s is None or not self.events or (
                    self.duration_s <= self.events[-1].t):
                raise ScenarioError(
                    "scenario: loop needs events and duration_s greater than the last event's "
                    f"t (got duration_s={self.duration_s})")

    def events_until(self, t: float) -> list[tuple[float, ScenarioEvent]]:
        """Events due at or before ``t`` not returned yet, as (absolute time, event) pairs.

        ``t`` must not go back between calls (it is a stream clock).
        """
        due: list[tuple[float, ScenarioEvent]] = []
        while self.events:
            if self._index >= len(self.events):
                if not self.loop:
                    break
                self._cycle, self._index = self._cycle + 1, 0
            offset = self._cycle * (self.duration_s or 0.0)
            event = self.events[self._index]
            if event.t + offset > t:
                break
            due.append((event.t + offset, event))
            self._index += 1
        return due

    def sensor_names(self) -> set[str]:
        """Every sensor name the timeline mentions (without ``all``)."""
        return {name for e in self.events for name in e.sensors if name != ALL}

    def check_sensors(self, known: Iterable[str]) -> None:
        """Raise ScenarioError if an event names a sensor outside ``known``."""
        known = set(known)
        for i, event in enumerate(self.events):
            unknown = sorted(set(event.sensors) - known - {ALL})
            if unknown:
                raise ScenarioError(
                    f"scenario event {i} (t={event.t}, action={event.action}): unknown sensor(s) "
                    f"{unknown}; configured sensors: {sorted(known)}")

    def check_degradations(self, modalities: Mapping[str, str]) -> None:
        """Raise ScenarioError if a ``degrade_on`` event names a sensor whose modality
        (``modalities``: sensor name -> modality) has no such kind, or if ``all`` matches no
        sensor."""
        self.check_sensors(modalities)
        for i, event in enumerate(self.events):
            if event.action != "degrade_on":
                continue
            where = f"scenario event {i} (t={event.t}, action=degrade_on, kind={event.kind})"
            if not event.targets(modalities):
                raise ScenarioError(f"{where}: no configured sensor has this kind")
            for name in event.targets(modalities):
                kinds = _kinds_of(modalities[name])
                if event.kind not in kinds:
                    raise ScenarioError(
                        f"{where}: sensor {name!r} ({modalities[name]}) has no degradation "
                        f"{event.kind!r}; its kinds: {', '.join(kinds) or 'none'}")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ScenarioError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _sensors(value: Any, where: str) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, Sequence) or isinstance(names, str) or not names or not all(
            isinstance(n, str) and n.strip() for n in names):
        raise ScenarioError(f"{where}: 'sensor' must be a name, a non-empty list of names or "
                            f"'{ALL}', got {value!r}")
    return tuple(n.strip() for n in names)


def _event(index: int, entry: Any) -> ScenarioEvent:
    where = f"scenario event {index} ({entry!r})"
    if not isinstance(entry, Mapping):
        raise ScenarioError(f"{where}: must be a mapping with keys t, sensor, action")
    degrade = entry.get("action") == "degrade_on"
    expected = _EVENT_KEYS | (_DEGRADE_KEYS if degrade else set())
    missing = sorted(expected - set(entry))
    extra = sorted(map(str, set(entry) - expected))
    if missing or extra:
        raise ScenarioError(f"{where}: missing keys {missing}, unknown keys {extra}; "
                            f"expected exactly {', '.join(sorted(expected, key=_key_order))}"
                            + ("" if degrade else " (kind and severity go with degrade_on)"))
    t = _number(entry["t"], f"{where}: 't'")
    if t < 0:
        raise ScenarioError(f"{where}: 't' must be >= 0 seconds, got {t}")
    action = entry["action"]
    if action not in ACTIONS:
        raise ScenarioError(f"{where}: unknown action {action!r}; expected one of "
                            f"{', '.join(ACTIONS)}")
    sensors = _sensors(entry["sensor"], where)
    if not degrade:
        return ScenarioEvent(t, sensors, action)
    return ScenarioEvent(t, sensors, action, _kind(entry["kind"], where),
                         _severity(entry["severity"], where))


def _key_order(key: str) -> int:
    return ["t", "sensor", "action", "kind", "severity"].index(key)


def _kind(value: Any, where: str) -> str:
    from omnibind_ros.sim.degrade import DEGRADATIONS

    known = sorted({k for table in DEGRADATIONS.values() for k in table})
    if not isinstance(value, str) or value not in known:
        raise ScenarioError(f"{where}: unknown degradation kind {value!r}; expected one of "
                            f"{', '.join(known)}")
    return value


def _severity(value: Any, where: str) -> float:
    severity = _number(value, f"{where}: 'severity'")
    if not 0.0 <= severity <= 1.0:
        raise ScenarioError(f"{where}: 'severity' must be in [0, 1], got {severity}")
    return severity


def parse_scenario(data: Any,
                   known_sensors: Iterable[str] | Mapping[str, str] | None = None) -> Scenario:
    """Validate a loaded YAML document (list of events, or mapping with ``events``).

    Parameters
    ----------
    data : the document; None or an empty list is an empty scenario.
    known_sensors : if given, every named sensor must be one of them; a mapping sensor name
        -> modality also checks that each ``degrade_on`` kind exists for its sensors.

    Raises
    ------
    ScenarioError : naming the bad entry (its index and content) and what was expected.
    """
    loop, duration = False, None
    if isinstance(data, Mapping):
        extra = sorted(map(str, set(data) - _TOP_KEYS))
        if extra:
            raise ScenarioError(f"scenario: unknown top-level keys {extra}; expected some of "
                                f"{sorted(_TOP_KEYS)}")
        loop = data.get("loop", False)
        if not isinstance(loop, bool):
            raise ScenarioError(f"scenario: 'loop' must be true or false, got {loop!r}")
        if data.get("duration_s") is not None:
            duration = _number(data["duration_s"], "scenario: 'duration_s'")
            if duration <= 0:
                raise ScenarioError(f"scenario: 'duration_s' must be > 0, got {duration}")
        data = data.get("events")
    if data is None:
        data = []
    if not isinstance(data, list):
        raise ScenarioError(f"scenario: events must be a list, got {type(data).__name__}")
    scenario = Scenario(tuple(_event(i, e) for i, e in enumerate(data)), loop, duration)
    if isinstance(known_sensors, Mapping):
        scenario.check_degradations({str(k): str(v) for k, v in known_sensors.items()})
    elif known_sensors is not None:
        scenario.check_sensors(known_sensors)
    return scenario


def load_scenario(path: str | Path,
                  known_sensors: Iterable[str] | Mapping[str, str] | None = None) -> Scenario:
    """Read and validate a scenario YAML file (errors name the file)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(f"scenario file {path} is not valid YAML: {exc}") from exc
    try:
        return parse_scenario(data, known_sensors)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# noise_on: garbage of the right type and shape, so only the content is wrong.

def corrupt(modality: str, payload: Any, rng: np.random.Generator) -> Any:
    """Replace a sensor payload by noise of the same type, shape and encoding."""
    if modality in ("image", "point_cloud"):
        arr = np.asarray(payload)
        if arr.dtype == np.uint8:
            return rng.integers(0, 256, arr.shape, dtype=np.uint8)
        return rng.uniform(-2.0, 2.0, arr.shape).astype(arr.dtype)
    if modality == "thermal":
        data = payload.data
        noise = rng.integers(0, np.iinfo(data.dtype).max, data.shape, dtype=data.dtype) \
            if data.dtype.kind in "ui" else rng.normal(25.0, 30.0, data.shape).astype(data.dtype)
        return dataclasses.replace(payload, data=noise)
    if modality == "tactile":
        return TactileFrame(rng.integers(0, 256, payload.image.shape, dtype=np.uint8))
    if modality == "audio":
        samples = rng.uniform(-0.5, 0.5, payload.samples.shape).astype(np.float32)
        return AudioBlock(samples, payload.sample_rate)
    if modality == "event":
        return _random_events(payload, rng)
    if modality == "text":
        words = ("static", "noise", "blur", "unknown", "thing", "signal", "lost")
        return " ".join(rng.choice(words, 5))
    raise ValueError(f"no noise model for modality {modality!r}")


def _random_events(packet: EventPacket, rng: np.random.Generator) -> EventPacket:
    n = max(int(packet.x.size), 200)
    span = int(packet.t_ns.max()) if packet.t_ns.size else 50_000_000
    return dataclasses.replace(
        packet, x=rng.integers(0, packet.width, n).astype(np.uint16),
        y=rng.integers(0, packet.height, n).astype(np.uint16),
        t_ns=np.sort(rng.integers(0, max(span, 1), n)).astype(np.int64),
        polarity=rng.integers(0, 2, n).astype(bool))
