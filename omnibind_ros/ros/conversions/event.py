"""Event-camera messages <-> :class:`~omnibind_ros.core.types.EventPacket`.

* ``omnibind_ros/EventArray``: the message's packed arrays (``uint16[] x, y``, ``uint32[] t``,
  ``uint8[] polarity``) are viewed in place; only ``t`` is widened to the packet's int64
  nanoseconds (one copy).
* ``event_camera_msgs/EventPacket`` (metavision_driver, libcaer_driver): the vendor-encoded
  ``events`` bytes are decoded by :mod:`omnibind_ros.core.event_codecs`; one
  :class:`EventPacketConverter` per topic, since evt3 carries decoder state across packets.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from omnibind_ros.core.errors import InvalidDtypeError, InvalidShapeError, InvalidValueError
from omnibind_ros.core.event_codecs import EventPacketDecoder
from omnibind_ros.core.event_encoders import encode_evt3
from omnibind_ros.core.types import EventPacket
from omnibind_ros.ros.conversions import _fields as f

__all__ = ["MAX_PACKET_SPAN_NS", "EventPacketConverter", "event_array_to_packet",
           "packet_to_event_array", "packet_to_event_packet"]

#: ``EventArray.t`` is uint32 nanoseconds after the stamp: one packet spans at most ~4.29 s.
MAX_PACKET_SPAN_NS = (1 << 32) - 1


def _check_events(x: np.ndarray, y: np.ndarray, t: np.ndarray, polarity: np.ndarray,
                  width: int, height: int) -> None:
    lengths = [x.size, y.size, t.size, polarity.size]
    if len(set(lengths)) != 1:
        raise InvalidShapeError(f"EventArray x, y, t, polarity must have equal lengths, got "
                                f"{lengths}")
    if width == 0 or height == 0:
        raise InvalidValueError(f"EventArray sensor size must be positive, got {width}x{height}")
    if x.size == 0:
        return
    if int(x.max()) >= width or int(y.max()) >= height:
        raise InvalidValueError(
            f"EventArray events must lie in the {width}x{height} sensor, got x up to "
            f"{int(x.max())}, y up to {int(y.max())}")
    backwards = np.flatnonzero(t[1:] < t[:-1])
    if backwards.size:
        i = int(backwards[0])
        raise InvalidValueError(
            f"EventArray t must be non-decreasing; event {i + 1} (t={int(t[i + 1])} ns) comes "
            f"before event {i} (t={int(t[i])} ns) ({backwards.size} out-of-order events)")
    if int(polarity.max()) > 1:
        raise InvalidValueError(f"EventArray polarity must be 0 or 1, got {int(polarity.max())}")


def event_array_to_packet(msg: Any) -> EventPacket:
    """Convert an ``omnibind_ros/EventArray`` to an :class:`EventPacket`.

    Parameters
    ----------
    msg : the message: ``width``, ``height`` (pixels), packed ``x``, ``y``, ``t`` (ns after
        ``header.stamp``) and ``polarity`` (0 = OFF, 1 = ON).

    Returns
    -------
    EventPacket with ``x``, ``y`` uint16 and ``polarity`` bool read-only views of the message's
    arrays, ``t_ns`` int64 (a copy). A packet with zero events is valid (a quiet scene still
    proves the camera alive); whether it carries enough events is preprocessing's decision.

    Raises
    ------
    InvalidShapeError : arrays of unequal lengths.
    InvalidValueError : zero sensor size, an event outside the sensor, ``t`` decreasing, a
        polarity other than 0/1.
    InvalidDtypeError, ConversionError : fields of the wrong type, missing fields.
    """
    what = "EventArray"
    width = f.uint_field(msg, "width", what)
    height = f.uint_field(msg, "height", what)
    x = f.typed_view(f.field(msg, "x", what), np.dtype(np.uint16), "EventArray.x")
    y = f.typed_view(f.field(msg, "y", what), np.dtype(np.uint16), "EventArray.y")
    t = f.typed_view(f.field(msg, "t", what), np.dtype(np.uint32), "EventArray.t")
    polarity = f.typed_view(f.field(msg, "polarity", what), np.dtype(np.uint8),
                            "EventArray.polarity")
    _check_events(x, y, t, polarity, width, height)
    # 0/1 bytes are valid numpy bools, so the polarity view needs no copy once checked.
    return EventPacket(x=f.read_only(x), y=f.read_only(y), t_ns=t.astype(np.int64),
                       polarity=f.read_only(polarity.view(np.bool_)), width=width,
                       height=height)


def _packet_arrays(packet: EventPacket) -> list[np.ndarray]:
    arrays = []
    for name in ("x", "y", "t_ns", "polarity"):
        value = getattr(packet, name)
        if not isinstance(value, np.ndarray) or value.ndim != 1:
            raise InvalidShapeError(f"EventPacket.{name} must be a 1-D numpy array")
        if value.dtype.kind not in "iub":
            raise InvalidDtypeError(f"EventPacket.{name} must be integer/bool, got {value.dtype}")
        arrays.append(value)
    return arrays


def _checked_packet(packet: EventPacket, max_xy: int, max_t_ns: int | None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """A packet's arrays and sensor size, checked against what a message can hold."""
    if not isinstance(packet, EventPacket):
        raise InvalidDtypeError(f"expected an EventPacket, got {type(packet).__name__}")
    x, y, t_ns, polarity = _packet_arrays(packet)
    limits = [("x", x, max_xy), ("y", y, max_xy), ("polarity", polarity, 1)]
    if max_t_ns is not None:
        limits.append(("t_ns", t_ns, max_t_ns))
    for name, values, high in limits:
        _check_range(values.astype(np.int64), name, high)
    width = f.uint_field(packet, "width", "EventPacket")
    height = f.uint_field(packet, "height", "EventPacket")
    _check_events(x, y, t_ns, polarity, width, height)
    return x, y, t_ns, polarity, width, height


def _check_range(values: np.ndarray, name: str, high: int) -> None:
    if values.size and (int(values.min()) < 0 or int(values.max()) > high):
        raise InvalidValueError(f"EventPacket.{name} must lie in [0, {high}], got "
                                f"[{int(values.min())}, {int(values.max())}]")


def packet_to_event_array(packet: EventPacket, stamp: object = None, frame_id: str = "") -> Any:
    """Build an ``omnibind_ros/EventArray`` from an :class:`EventPacket`.

    Parameters
    ----------
    packet : events with ``t_ns`` in [0, :data:`MAX_PACKET_SPAN_NS`], non-decreasing,
        relative to ``stamp``; coordinates inside the sensor.
    stamp, frame_id : header (seconds or ``builtin_interfaces/Time``; optical frame).

    Raises
    ------
    InvalidShapeError, InvalidDtypeError, InvalidValueError : a packet the message cannot hold.
    """
    from omnibind_ros.msg import EventArray

    x, y, t_ns, polarity, width, height = _checked_packet(packet, 65535, MAX_PACKET_SPAN_NS)
    return EventArray(header=f.make_header(stamp, frame_id), width=width, height=height,
                      x=f.packed("H", x), y=f.packed("H", y), t=f.packed("I", t_ns),
                      polarity=f.packed("B", polarity))


class EventPacketConverter:
    """``event_camera_msgs/msg/EventPacket`` -> :class:`EventPacket` for one camera topic.

    Reads ``encoding`` (``evt3``, ``mono``, ``libcaer``, ``libcaer_cmp``), ``events``,
    ``width``, ``height``, ``time_base`` and ``is_bigendian`` by name, so rclpy messages and bag
    readers' messages both work. Event times are relative to the packet's first event (the
    message stamp is the host arrival time of its first data); see
    :mod:`omnibind_ros.core.event_codecs` for every choice. :attr:`dropped` counts events
    outside the sensor.

    Raises (per message)
    --------------------
    UnsupportedEncodingError, InvalidValueError, MalformedPacketError, ConversionError.
    """

    what = "EventPacket"

    def __init__(self) -> None:
        self._decoder = EventPacketDecoder()

    @property
    def dropped(self) -> int:
        return self._decoder.dropped

    def __call__(self, msg: Any) -> EventPacket:
        what = self.what
        return self._decoder.decode(
            f.str_field(msg, "encoding", what), f.byte_view(f.field(msg, "events", what), what),
            f.uint_field(msg, "width", what), f.uint_field(msg, "height", what),
            # uint64 on the wire, but decoders add event times to it in int64 nanoseconds:
            # 2^62 ns is the year 2116, so anything above is a corrupt header, not a time.
            time_base=f.uint_field(msg, "time_base", what, bits=62),
            big_endian=f.bool_field(msg, "is_bigendian", what))


def packet_to_event_packet(packet: EventPacket, stamp: object = None, frame_id: str = "", *,
                           seq: int = 0) -> Any:
    """Build an ``event_camera_msgs/EventPacket`` in ``evt3``, as metavision_driver publishes
    it (``time_base`` 0, little-endian words; the sensor clock here is the stamp's time base:
    event ``i`` at ``stamp + t_ns[i]``, to the microsecond). The simulated event camera
    publishes these when its ``message_type`` says so.

    Raises
    ------
    InvalidShapeError, InvalidDtypeError, InvalidValueError : a packet the message cannot hold.
    """
    from event_camera_msgs.msg import EventPacket as EventPacketMsg

    # evt3 addresses are 11 bits; its 24-bit microsecond clock wraps, so times are not limited
    x, y, t_ns, polarity, width, height = _checked_packet(packet, 2047, None)
    sec, nanosec = f.stamp_parts(stamp)
    events = encode_evt3(x, y, sec * 1_000_000_000 + nanosec + t_ns.astype(np.int64), polarity)
    return EventPacketMsg(header=f.make_header(stamp, frame_id), height=height, width=width,
                          seq=seq, time_base=0, encoding="evt3", is_bigendian=False,
                          events=events)
