"""Installed ROS message classes by their type names (``"sensor_msgs/msg/Image"``)."""
from __future__ import annotations

import importlib

__all__ = ["has_header", "message_class"]


def message_class(type_name: str) -> type:
    """The installed rclpy class of ``"pkg/msg/Name"`` (ImportError/AttributeError if absent)."""
    package, _, name = type_name.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def has_header(type_name: str) -> bool:
    """Whether the message's first field is a ``std_msgs/Header`` (its stamp is the sample's)."""
    fields = message_class(type_name).get_fields_and_field_types()
    return next(iter(fields.items()), ("", ""))[1] == "std_msgs/Header"
