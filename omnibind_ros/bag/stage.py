"""One sensor of a bag evaluation: its recorded messages turned into outcomes, as the node would.

:class:`BagSensor` deserializes a message's CDR bytes into the installed message class (the
object the node's subscription callback gets), takes its stamp as the node does (the header
stamp, or the arrival time for header-less messages such as operator text), and runs the
sensor's :class:`~omnibind_ros.core.pipeline.SensorStage` at the message's log time (the
arrival time of an infinitely fast machine): conversion, preprocessing and encoding. A message
that does not deserialize is counted and dropped (the middleware would drop it), never reported.

A message type that is not installed here (a driver's interface package nobody built) is
read by the definition the bag carries (:attr:`~omnibind_ros.bag.reader.BagInfo.definitions`)
with rosbags: the converters read fields by name, so they take that message as they take
rclpy's.

It runs in the evaluating process (the reference path) and in the worker processes of the
parallel path alike.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omnibind_ros.core.pipeline import SampleOutcome, SensorStage, make_pipeline

__all__ = ["BagSensor", "StagedMessage", "bag_deserializer", "stamp_of", "undecodable_text"]

NS = 1_000_000_000


def stamp_of(msg: Any, log_ns: int, convert: Callable[[Any], Any] | None = None) -> int:
    """A message's stamp in ns: its header stamp, or without a header its log time (corrected
    as the node corrects it: :func:`~omnibind_ros.ros.conversions.arrival_stamp_ns`)."""
    header = getattr(msg, "header", None)
    if header is None:
        if convert is None:
            return log_ns
        from omnibind_ros.ros.conversions import arrival_stamp_ns

        return arrival_stamp_ns(convert, msg, log_ns)
    return int(header.stamp.sec) * NS + int(header.stamp.nanosec)


def undecodable_text(index: int, exc: BaseException) -> str:
    """How an undecodable message is named in a report: its index among the bag's messages (all
    topics, log-time order: :attr:`~omnibind_ros.bag.reader.BagMessage.index`) and the error.
    Offline and live evaluation both name it so, so one damaged message reads the same in
    either report."""
    return f"message {index}: {exc}"


@dataclass(frozen=True)
class StagedMessage:
    """A sensor message after its stage: what the engine hears, and what it cost.

    index, log_ns : the message's position in the bag and its log time.
    outcome : see :class:`~omnibind_ros.core.pipeline.SampleOutcome`.
    cost_s : wall seconds of deserialization, conversion, preprocessing and encoding.
    """

    index: int
    log_ns: int
    outcome: SampleOutcome
    cost_s: float


def bag_deserializer(msgtype: str, definitions: Mapping[str, str] | None
                     ) -> Callable[[bytes], Any]:
    """``rawdata -> message``: rclpy's installed class, else the bag's own definition (rosbags);
    ValueError when neither exists."""
    from omnibind_ros.ros.interfaces import message_class

    try:
        cls = message_class(msgtype)
    except (ImportError, AttributeError, ValueError):
        text = (definitions or {}).get(msgtype)
        if not text:
            raise ValueError(f"message type {msgtype} is neither installed here nor defined "
                             "in the bag") from None
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore

        store = get_typestore(Stores.EMPTY)
        store.register(get_types_from_msg(text, msgtype))
        return lambda raw: store.deserialize_cdr(raw, msgtype)
    from rclpy.serialization import deserialize_message

    return lambda raw: deserialize_message(raw, cls)


class BagSensor:
    """The stage of one configured sensor (see the module docstring).

    Parameters
    ----------
    cfg : the sensor's parameters (``ros.params.SensorParams``).
    bundle, backend : the model bundle and a backend with this sensor's encoder.
    definitions : the bag's message definitions (msgtype -> ``.msg`` text), used for a type
        that is not installed.
    """

    def __init__(self, cfg: Any, bundle: Any, backend: Any,
                 definitions: Mapping[str, str] | None = None) -> None:
        from omnibind_ros.ros.conversions import conversion_for

        self.cfg = cfg
        self.definitions = dict(definitions or {})
        self.deserialize = bag_deserializer(cfg.message_type, definitions)
        self._info_deserialize: Callable[[bytes], Any] | None = None
        self.info_messages = self.bad_info = 0
        self.stage = SensorStage(conversion_for(cfg.modality, cfg.message_type),
                                 make_pipeline(cfg.modality, bundle, backend),
                                 cfg.encode_rate_hz)
        self.received = self.undecodable = self.encoded = 0
        self.first_error = ""

    def process(self, index: int, log_ns: int, rawdata: bytes, info: bool = False
                ) -> StagedMessage | None:
        """One message; None if it does not deserialize. ``info``: a message of the sensor's
        paired info topic (it updates the converter; nothing is staged)."""
        if info:
            self.info_messages += 1
            self._update_info(rawdata)
            return None
        start = time.perf_counter()
        self.received += 1
        try:
            msg = self.deserialize(rawdata)
        except Exception as exc:  # noqa: BLE001  (the middleware drops what it cannot decode)
            self.undecodable += 1
            self.first_error = self.first_error or undecodable_text(index, exc)
            return None
        outcome = self.stage.process(msg, stamp_of(msg, log_ns, self.stage.convert), log_ns)
        if outcome.kind == "embedding":
            self.encoded += 1
        return StagedMessage(index, log_ns, outcome, time.perf_counter() - start)

    def _update_info(self, rawdata: bytes) -> None:
        from omnibind_ros.ros.conversions import info_topic_for

        convert = self.stage.convert
        if self._info_deserialize is None:
            paired = info_topic_for(convert, self.cfg.topic, getattr(self.cfg, "info_topic", ""))
            if paired is None:
                return
            self._info_deserialize = bag_deserializer(paired[1], self.definitions)
        try:
            convert.update_info(self._info_deserialize(rawdata))  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001  (the node logs and ignores a bad info message)
            self.bad_info += 1

    def counters(self) -> dict[str, Any]:
        """Messages received, undecodable and encoded, the first decoding error, and the paired
        info topic's messages (and how many of those were unusable)."""
        return {"received": self.received, "undecodable": self.undecodable,
                "encoded": self.encoded, "first_error": self.first_error,
                "info_messages": self.info_messages, "bad_info": self.bad_info}

    @staticmethod
    def no_counters() -> dict[str, Any]:
        """The counters of a sensor that received nothing."""
        return {"received": 0, "undecodable": 0, "encoded": 0, "first_error": "",
                "info_messages": 0, "bad_info": 0}
