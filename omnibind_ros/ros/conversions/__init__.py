"""ROS message <-> numpy conversions for every sensor modality (no node, no ROS graph).

Message in, numpy or :mod:`omnibind_ros.core.types` out, as cv_bridge and sensor_msgs_py do
(neither is installable from PyPI). Converters read fields by name, so duck-typed messages (a bag
reader's, a test's) work too; message classes are imported only by the builders (``*_to_*``
functions that make messages), so reading needs nothing but numpy (and OpenCV for compressed
images).

Zero copy: ``msg.data`` of an rclpy message is an ``array.array``; converters return read-only
numpy views of it wherever the bytes are usable in place (see each function). Builders assign
``bytes`` to the message's sequence fields: rclpy copies them with one memcpy, while assigning
an ndarray makes it iterate element by element in Python, orders of magnitude slower for an
image.

Errors: every malformed message raises a subclass of
:class:`~omnibind_ros.core.errors.PreprocessError` (the node logs it throttled, drops the message
and counts it toward the sensor's DEGRADED state); nothing else escapes a converter.

:func:`conversion_for` picks the converter for a sensor's modality and ROS message type.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omnibind_ros.core.errors import EmptyInputError
from omnibind_ros.core.modalities import parse_modality
from omnibind_ros.ros.conversions import _fields
from omnibind_ros.ros.conversions.audio import (
    AUDIO_ENCODINGS,
    audio_chunk_to_block,
    block_to_audio_chunk,
)
from omnibind_ros.ros.conversions.audio_common import (
    AudioDataConverter,
    AudioFormat,
    audio_stamped_to_block,
    block_to_audio_data_stamped,
)
from omnibind_ros.ros.conversions.depth import DepthCloudConverter, back_project
from omnibind_ros.ros.conversions.event import (
    MAX_PACKET_SPAN_NS,
    EventPacketConverter,
    event_array_to_packet,
    packet_to_event_array,
    packet_to_event_packet,
)
from omnibind_ros.ros.conversions.image import (
    ENCODINGS,
    DecodedImage,
    ImageEncoding,
    compressed_image_to_numpy,
    image_to_numpy,
    numpy_to_compressed_image,
    numpy_to_image,
    tactile_from_compressed_image,
    tactile_from_image,
    tactile_to_image,
    thermal_from_compressed_image,
    thermal_from_image,
    thermal_to_image,
)
from omnibind_ros.ros.conversions.point_cloud import (
    POINT_FIELD_DTYPES,
    pointcloud2_to_array,
    pointcloud2_to_xyz,
    xyz_to_pointcloud2,
)

__all__ = [
    "AUDIO_ENCODINGS", "CONVERTERS", "ENCODINGS", "MAX_PACKET_SPAN_NS", "POINT_FIELD_DTYPES",
    "AudioDataConverter", "AudioFormat", "DecodedImage", "DepthCloudConverter",
    "EventPacketConverter",
    "ImageEncoding", "arrival_stamp_ns", "audio_chunk_to_block", "back_project",
    "info_topic_for",
    "audio_stamped_to_block", "block_to_audio_chunk", "block_to_audio_data_stamped",
    "compressed_image_to_numpy", "conversion_for", "event_array_to_packet", "image_to_numpy",
    "normalise_msg_type", "numpy_to_compressed_image", "numpy_to_image",
    "packet_to_event_array", "packet_to_event_packet", "pointcloud2_to_array",
    "pointcloud2_to_xyz", "string_to_text",
    "tactile_from_compressed_image", "tactile_from_image", "tactile_to_image",
    "thermal_from_compressed_image", "thermal_from_image", "thermal_to_image",
    "xyz_to_pointcloud2",
]


def info_topic_for(convert: Callable[[Any], Any], topic: str, configured: str = ""
                   ) -> tuple[str, str] | None:
    """(info topic, its message type) a sensor's converter listens to, or None.

    A converter that needs a paired info topic (``AudioDataConverter``: ``AudioInfo``) has
    ``INFO_TYPE``, ``INFO_SIBLING`` (the topic name its driver uses beside the data topic) and
    ``update_info(msg)``; ``DepthCloudConverter`` listens to ``camera_info``. ``configured``:
    the sensor's ``info_topic`` ("" = the sibling,
    "none" = none)."""
    info_type = getattr(convert, "INFO_TYPE", None)
    if info_type is None or configured.strip().lower() == "none":
        return None
    if configured.strip():
        return configured.strip(), info_type
    head, _, _ = topic.rstrip("/").rpartition("/")
    return f"{head}/{convert.INFO_SIBLING}", info_type


def arrival_stamp_ns(convert: Callable[[Any], Any], msg: Any, arrival_ns: int) -> int:
    """The stamp of a message without a header: its arrival time, corrected by the converter
    where it knows better (``arrival_correction_ns``: unstamped audio began one chunk earlier)."""
    correction = getattr(convert, "arrival_correction_ns", None)
    if correction is None:
        return arrival_ns
    try:
        return arrival_ns - int(correction(msg))
    except Exception:  # noqa: BLE001  (a malformed message: conversion will say what is wrong)
        return arrival_ns


def string_to_text(msg: Any) -> str:
    """``std_msgs/String`` -> its text; raise EmptyInputError for a blank one."""
    text = _fields.str_field(msg, "data", "String")
    if not text.strip():
        raise EmptyInputError("String message is empty")
    return text


IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"

#: (modality, ROS type) -> converter. Image converters return a :class:`DecodedImage`
#: (call the preprocessor as ``pre(d.image, channel_order=d.channel_order)``); the others
#: return the payload type of :mod:`omnibind_ros.core.preprocess` directly. A class is a
#: stateful converter (state carried from message to message): :func:`conversion_for` makes
#: one per sensor.
CONVERTERS: dict[tuple[str, str], Callable[[Any], Any] | type] = {
    ("image", IMAGE): image_to_numpy,
    ("image", COMPRESSED_IMAGE): compressed_image_to_numpy,
    ("thermal", IMAGE): thermal_from_image,
    ("thermal", COMPRESSED_IMAGE): thermal_from_compressed_image,
    ("tactile", IMAGE): tactile_from_image,
    ("tactile", COMPRESSED_IMAGE): tactile_from_compressed_image,
    ("event", "omnibind_ros/msg/EventArray"): event_array_to_packet,
    ("event", "event_camera_msgs/msg/EventPacket"): EventPacketConverter,
    ("audio", "omnibind_ros/msg/AudioChunk"): audio_chunk_to_block,
    ("audio", "audio_common_msgs/msg/AudioData"): AudioDataConverter,
    ("audio", "audio_common_msgs/msg/AudioDataStamped"): AudioDataConverter,
    ("audio", "audio_common_msgs/msg/AudioStamped"): audio_stamped_to_block,
    ("point_cloud", "sensor_msgs/msg/PointCloud2"): pointcloud2_to_xyz,
    ("point_cloud", IMAGE): DepthCloudConverter,
    ("point_cloud", COMPRESSED_IMAGE): DepthCloudConverter,
    ("text", "std_msgs/msg/String"): string_to_text,
}


def normalise_msg_type(msg_type: str | type) -> str:
    """Return the canonical "pkg/msg/Type" name of a type string or a message class.

    Accepts "sensor_msgs/msg/Image", "sensor_msgs/Image", "sensor_msgs.msg.Image" and the
    class ``sensor_msgs.msg.Image`` itself.
    """
    if isinstance(msg_type, type):
        package = msg_type.__module__.split(".")[0]
        return f"{package}/msg/{msg_type.__name__}"
    if not isinstance(msg_type, str):
        raise ValueError(f"message type must be a str or a message class, got {msg_type!r}")
    parts = [p for p in msg_type.strip().replace(".", "/").split("/") if p]
    if len(parts) == 2:
        parts.insert(1, "msg")
    if len(parts) != 3 or parts[1] != "msg":
        raise ValueError(f"message type {msg_type!r} is not of the form 'package/msg/Type'")
    return "/".join(parts)


def conversion_for(modality: str, msg_type: str | type) -> Callable[[Any], Any]:
    """Return the converter for a sensor of ``modality`` publishing ``msg_type``.

    Parameters
    ----------
    modality : a modality name (see :class:`omnibind_ros.core.modalities.Modality`).
    msg_type : the sensor topic's type, e.g. "sensor_msgs/msg/Image" (see
        :func:`normalise_msg_type` for accepted spellings).

    Returns
    -------
    A function ``msg -> payload`` (see :data:`CONVERTERS`); a stateful converter is a new
    instance per call, so every sensor has its own state.

    Raises
    ------
    ValueError : an unknown modality, or a type that modality cannot be read from (the message
        lists the types it can); a configuration error, raised once at configure time.
    """
    mod = parse_modality(modality).value
    canonical = normalise_msg_type(msg_type)
    converter = CONVERTERS.get((mod, canonical))
    if converter is None:
        accepted = [t for (m, t) in CONVERTERS if m == mod]
        raise ValueError(
            f"a {mod} sensor cannot be read from {canonical}; supported types: "
            f"{', '.join(accepted)}")
    return converter() if isinstance(converter, type) else converter
