"""Installed ROS message classes by their type names (``"sensor_msgs/msg/Image"``)."""
from __future__ import annotations

import importlib

__all__ = ["has_header", "message_class", "require_message_class"]

#: Where a missing driver interface package comes from.
_INSTALL_HINTS = {
    "event_camera_msgs": "apt install ros-$ROS_DISTRO-event-camera-msgs, or scripts/setup.sh "
                         "(builds a wire-compatible stand-in in a pip install)",
    "audio_common_msgs": "the microphone driver's own package (ros-drivers/audio_common: "
                         "AudioData, AudioDataStamped, AudioInfo; mgonzs13/audio_common: "
                         "AudioStamped), or scripts/setup.sh (stand-in of the ros-drivers one)",
}


def message_class(type_name: str) -> type:
    """The installed rclpy class of ``"pkg/msg/Name"`` (ImportError/AttributeError if absent)."""
    package, _, name = type_name.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def has_header(type_name: str) -> bool:
    """Whether the message's first field is a ``std_msgs/Header`` (its stamp is the sample's)."""
    fields = message_class(type_name).get_fields_and_field_types()
    return next(iter(fields.items()), ("", ""))[1] == "std_msgs/Header"


def require_message_class(type_name: str, what: str) -> type:
    """:func:`message_class`, or a ValueError saying which package to install (``what``: who
    needs it, e.g. "sensor mic")."""
    try:
        return message_class(type_name)
    except (ImportError, AttributeError, ValueError):
        package = type_name.split("/")[0]
        hint = _INSTALL_HINTS.get(package, f"build or install the {package} package")
        raise ValueError(f"{what}: message type {type_name} is not installed here ({hint})"
                         ) from None
