"""Model inputs from a bag's sensor topics, without rclpy (for tools that learn from recordings).

``omnibind-train teach`` distils a new sensor from a bag, and the training package never imports
rclpy (DESIGN.md). This module gives it the bag's messages as the model inputs the node would
have built, through the node's own code:

* deserialization with rosbags: the package's type store (:func:`omnibind_ros.bag.types.
  typestore`: ROS 2 Kilted, the package's messages and the driver interfaces), else the
  definition the bag carries (a driver type nobody installed here). The converters read fields
  by name, so they take rosbags' objects as they take rclpy's (as offline evaluation does for
  types that are not installed);
* the node's stamp rule (:func:`omnibind_ros.bag.stage.stamp_of`: the header stamp, else the
  log time with the converter's correction);
* the node's per-sensor stage (:class:`~omnibind_ros.core.pipeline.SensorStage`): stamp order,
  the converter of ``omnibind_ros.ros.conversions`` (which imports no rclpy), the streaming
  push of audio, a paired info topic (AudioInfo, CameraInfo) where the bag has one;
* the core preprocessing with the given configs (:class:`~omnibind_ros.core.pipeline.Pipeline`:
  ``preprocess`` for frames, ``features`` for the audio window).

Every message is admitted in bag order, as in the node (the audio window and the tactile
reference depend on the messages before), with no encode-rate throttle: a learner wants every
sample. Reading is two cheap passes: :func:`admitted_stamps`
(stamps of the messages the stage accepts: enough to pair sensors by time) and
:func:`iter_inputs` (the preprocessed inputs of the messages asked for).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnibind_ros.core.modalities import MODALITY_SPECS, parse_modality

__all__ = ["Admitted", "BagInputError", "InputCounts", "InputSpec", "admitted_stamps",
           "iter_inputs", "resolve_topic", "topic_candidates"]

#: Modalities whose preprocessor keeps state across frames (the tactile no-contact reference is
#: captured from the first frames): preprocessed for every admitted message.
STATEFUL_PREPROCESSING = frozenset({"tactile"})
#: Words that name a modality's sensor in topic names (topic auto-detection tie-break).
TOPIC_HINTS: dict[str, tuple[str, ...]] = {
    "image": ("camera", "rgb", "color", "colour"),
    "thermal": ("thermal", "lepton", "flir", "ir"),
    "event": ("event", "dvs", "prophesee"),
    "tactile": ("tactile", "gelsight", "digit", "touch"),
    "audio": ("audio", "mic", "microphone"),
    "point_cloud": ("lidar", "points", "cloud", "depth"),
}


class BagInputError(ValueError):
    """The bag cannot give the inputs asked for; the message names what is missing."""


@dataclass(frozen=True)
class InputSpec:
    """One sensor topic to read.

    Attributes
    ----------
    name : what to call it in counts and errors (``"camera"``, ``"thermal"``...).
    modality : its modality (picks the converter and the preprocessor).
    topic : the bag topic.
    message_type : the topic's type (``sensor_msgs/msg/Image``...), as the bag says.
    preprocess : the modality's preprocessing config (a bundle's, or the training defaults).
    info_topic : paired info topic: "" = the driver's sibling where the converter needs one,
        "none" = none (see ``omnibind_ros.ros.conversions.info_topic_for``).
    """

    name: str
    modality: str
    topic: str
    message_type: str
    preprocess: Mapping[str, Any]
    info_topic: str = ""


@dataclass
class InputCounts:
    """What became of one sensor's messages.

    Attributes
    ----------
    messages : messages of the topic read.
    undecodable : not deserializable (dropped, as the middleware would).
    rejected : refused by the stage: stamp not newer than the previous one, or conversion failed.
    failed : admitted, but preprocessing failed (only known to :func:`iter_inputs`).
    reasons : the first few reasons, for the report.
    """

    messages: int = 0
    undecodable: int = 0
    rejected: int = 0
    failed: int = 0
    reasons: list[str] = field(default_factory=list)

    def note(self, reason: str, keep: int = 5) -> None:
        if len(self.reasons) < keep:
            self.reasons.append(reason)

    def to_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "undecodable": self.undecodable,
                "rejected": self.rejected, "preprocessing_failed": self.failed,
                "first_reasons": list(self.reasons)}


@dataclass(frozen=True)
class Admitted:
    """A message the sensor's stage accepted.

    Attributes
    ----------
    seq : its position among the topic's messages (0-based; stable across passes).
    stamp_ns : its stamp (the node's rule), integer ns.
    log_ns : its log (receive) time, integer ns.
    """

    seq: int
    stamp_ns: int
    log_ns: int


def topic_candidates(info: Any, modality: str) -> list[str]:
    """Topics of a bag (``BagInfo``) whose message type a ``modality`` sensor can be read from."""
    types = MODALITY_SPECS[parse_modality(modality)].ros_types
    return sorted(t for t, (msgtype, _) in info.topics.items() if msgtype in types)


def _hinted(topic: str, modality: str) -> bool:
    """Whether a topic name carries a word of :data:`TOPIC_HINTS` for ``modality``
    (``/robot/lepton3/image_raw`` for thermal): a name part starting with a hint word."""
    parts = [p for p in re.split(r"[^a-z0-9]+", topic.lower()) if p]
    return any(p.startswith(w) for p in parts for w in TOPIC_HINTS[modality])


def resolve_topic(info: Any, modality: str, topic: str | None, *, role: str,
                  exclude: Sequence[str] = (), need_hint: bool = False) -> tuple[str, str]:
    """``(topic, message type)`` of the ``modality`` sensor in a bag.

    A given ``topic`` must exist with a type the modality reads. Without one, the candidates are
    the topics of a readable type (``exclude`` left out); the only one is taken, or among
    several the only one whose name carries a word of :data:`TOPIC_HINTS`. With ``need_hint``
    (a modality that shares its message type with the camera: a thermal or tactile
    ``sensor_msgs/Image``) the name must carry one in any case, so a bag holding only a camera
    is never read as a thermal camera. Anything else is an error listing the candidates.
    ``role`` names the sensor in messages ("new thermal sensor", "camera").

    Raises
    ------
    BagInputError : no such topic, a type the modality cannot read, no or several candidates.
    """
    mod = parse_modality(modality).value
    types = MODALITY_SPECS[parse_modality(modality)].ros_types
    listing = ", ".join(f"{t} ({v[0]})" for t, v in sorted(info.topics.items())) or "none"
    if topic:
        if topic not in info.topics:
            raise BagInputError(f"bag {info.path} has no topic {topic} (the {role}); its "
                                f"topics: {listing}")
        msgtype = info.topics[topic][0]
        if msgtype not in types:
            raise BagInputError(f"topic {topic} of bag {info.path} carries {msgtype}, which a "
                                f"{mod} sensor cannot be read from (the {role}); readable types: "
                                f"{', '.join(types)}")
        return topic, msgtype
    readable = [t for t in topic_candidates(info, mod) if t not in exclude]
    hinted = [t for t in readable if _hinted(t, mod)]
    candidates = hinted if need_hint or (len(readable) > 1 and len(hinted) == 1) else readable
    if len(candidates) == 1:
        return candidates[0], info.topics[candidates[0]][0]
    if not readable:
        raise BagInputError(f"bag {info.path} has no topic the {role} could be on (a {mod} "
                            f"sensor reads {', '.join(types)}); its topics: {listing}")
    if not candidates:
        raise BagInputError(f"no topic of bag {info.path} looks like the {role} (topics of "
                            f"its types: {', '.join(readable)}; none is named like "
                            f"{'/'.join(TOPIC_HINTS[mod])}): name its topic")
    raise BagInputError(f"bag {info.path} has several topics the {role} could be on: "
                        f"{', '.join(candidates)}; name it")


def _deserializer(msgtype: str, definitions: Mapping[str, str]) -> Callable[[bytes], Any]:
    """``rawdata -> message``: the package's rosbags type store, else the bag's definition."""
    from omnibind_ros.bag.types import typestore

    store = typestore()
    if msgtype not in store.types:
        text = definitions.get(msgtype)
        if not text:
            raise BagInputError(f"message type {msgtype} is neither known here nor defined in "
                                "the bag")
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore

        store = get_typestore(Stores.EMPTY)
        store.register(get_types_from_msg(text, msgtype))
    return lambda raw: store.deserialize_cdr(raw, msgtype)


class _Reader:
    """One sensor's deserializer, stage (converter + preprocessor) and info-topic handler."""

    def __init__(self, spec: InputSpec, info: Any) -> None:
        from omnibind_ros.core.pipeline import Pipeline, SensorStage
        from omnibind_ros.core.preprocess import build_preprocessor
        from omnibind_ros.ros.conversions import conversion_for, info_topic_for

        self.spec = spec
        self.deserialize = _deserializer(spec.message_type, info.definitions)
        convert = conversion_for(spec.modality, spec.message_type)
        pipeline = Pipeline(spec.modality, build_preprocessor(spec.modality,
                                                              dict(spec.preprocess)), None)
        self.stage = SensorStage(convert, pipeline, encode_rate_hz=0.0)
        paired = info_topic_for(convert, spec.topic, spec.info_topic)
        self.info_topic = paired[0] if paired and paired[0] in info.topics else None
        self._info_deserialize = (_deserializer(paired[1], info.definitions)
                                  if self.info_topic and paired else None)
        self.counts = InputCounts()
        self.seq = 0

    def update_info(self, rawdata: bytes) -> None:
        try:
            self.stage.convert.update_info(self._info_deserialize(rawdata))  # type: ignore
        except Exception as exc:  # noqa: BLE001  (the node ignores a bad info message)
            self.counts.note(f"bad info message: {exc}")

    def admit(self, m: Any) -> tuple[Admitted, Any] | None:
        """The message's admission (and its payload), or None when it is dropped."""
        from omnibind_ros.bag.stage import stamp_of

        seq, self.seq = self.seq, self.seq + 1
        self.counts.messages += 1
        try:
            msg = self.deserialize(m.rawdata)
        except Exception as exc:  # noqa: BLE001
            self.counts.undecodable += 1
            self.counts.note(f"message {seq}: undecodable: {exc}")
            return None
        stamp = stamp_of(msg, m.log_time_ns, self.stage.convert)
        admission = self.stage.admit(msg, stamp, m.log_time_ns)
        if admission.kind != "due":
            self.counts.rejected += 1
            self.counts.note(f"message {seq}: {admission.reason}")
            return None
        return Admitted(seq, stamp, m.log_time_ns), admission.payload

    def model_input(self, seq: int, payload: Any) -> np.ndarray | None:
        pipeline = self.stage.pipeline
        try:
            return np.asarray(pipeline.features() if pipeline.streaming
                              else pipeline.preprocess(payload))
        except Exception as exc:  # noqa: BLE001  (a bad sample: counted, never fatal)
            self.counts.failed += 1
            self.counts.note(f"message {seq}: preprocessing failed: {type(exc).__name__}: {exc}")
            return None


def _readers(bag: Path, specs: Sequence[InputSpec]) -> tuple[Any, dict[str, _Reader]]:
    from omnibind_ros.bag.reader import BagReadError, open_info

    try:
        info = open_info(bag)
    except BagReadError as exc:
        raise BagInputError(f"nothing of bag {bag} is readable: {exc}") from exc
    for spec in specs:
        if spec.topic not in info.topics:
            resolve_topic(info, spec.modality, spec.topic, role=spec.name)  # raises, names all
    return info, {spec.name: _Reader(spec, info) for spec in specs}


def _messages(bag: Path, readers: Mapping[str, _Reader], progress: Callable[[int], None] | None,
              damage: list[str]) -> Iterator[tuple[_Reader, Any]]:
    """``(reader, message)`` of the readers' topics in bag order; info messages are applied."""
    from omnibind_ros.bag.reader import BagReadError, iter_messages

    by_topic = {r.spec.topic: r for r in readers.values()}
    by_info = {r.info_topic: r for r in readers.values() if r.info_topic}
    try:
        for m in iter_messages(bag, topics=[*by_topic, *by_info]):
            if m.topic in by_info:
                by_info[m.topic].update_info(m.rawdata)
                continue
            if progress is not None:
                progress(1)
            yield by_topic[m.topic], m
    except BagReadError as exc:  # a damaged bag: what was read before the damage is used
        damage.append(str(exc))


def admitted_stamps(bag: str | Path, specs: Sequence[InputSpec], *,
                    progress: Callable[[int], None] | None = None
                    ) -> tuple[dict[str, list[Admitted]], dict[str, InputCounts], list[str]]:
    """Pass 1: every message the sensors' stages accept, in bag order (no preprocessing).

    Returns (sensor name -> admitted messages, sensor name -> counts, damage: the error that
    ended reading a damaged bag, if any).

    Raises
    ------
    BagInputError : unreadable bag, a topic missing or of a type its modality cannot read.
    """
    bag = Path(bag)
    _, readers = _readers(bag, specs)
    out: dict[str, list[Admitted]] = {name: [] for name in readers}
    damage: list[str] = []
    for reader, m in _messages(bag, readers, progress, damage):
        got = reader.admit(m)
        if got is not None:
            out[reader.spec.name].append(got[0])
    return out, {name: r.counts for name, r in readers.items()}, damage


def iter_inputs(bag: str | Path, specs: Sequence[InputSpec], wanted: Mapping[str, Iterable[int]],
                *, progress: Callable[[int], None] | None = None,
                counts: dict[str, InputCounts] | None = None
                ) -> Iterator[tuple[str, Admitted, np.ndarray | None]]:
    """Pass 2: ``(sensor name, admission, model input)`` of the ``wanted`` messages (by
    :attr:`Admitted.seq`), in bag order; the input is None where preprocessing failed.

    Every admitted message goes through the stage (the audio window fills as in the node);
    stateful preprocessing (:data:`STATEFUL_PREPROCESSING`: the tactile reference) also runs on
    every one, stateless preprocessing only on the wanted ones. Only those are yielded.
    ``counts`` (sensor name -> :class:`InputCounts`), if given, receives this pass's counts.
    """
    bag = Path(bag)
    _, readers = _readers(bag, specs)
    want = {name: frozenset(wanted.get(name, ())) for name in readers}
    damage: list[str] = []
    for reader, m in _messages(bag, readers, progress, damage):
        got = reader.admit(m)
        if got is None:
            continue
        admitted, payload = got
        keep = admitted.seq in want[reader.spec.name]
        if not keep and reader.spec.modality not in STATEFUL_PREPROCESSING:
            continue  # stateless preprocessing: skipping it changes nothing
        x = reader.model_input(admitted.seq, payload)
        if keep:
            yield reader.spec.name, admitted, x
    if counts is not None:
        counts.update({name: r.counts for name, r in readers.items()})
