"""The rosbags type store: ROS 2 Kilted's standard messages plus omnibind_ros's own.

Why: rosbags needs a message definition for every connection it writes (mcap stores it as the
channel schema, so any reader can decode the bag) and for every type it decodes. Our custom
types (EventArray, AudioChunk, GroundTruth, ...) are registered from the package's ``msg/``
files, the same sources rosidl generated the rclpy classes from, so the RIHS01 hashes written
into bags match those of the installed interfaces.

ROS-free: importing this module does not import rclpy.
"""
from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["PACKAGE", "msg_dir", "msgtype_of", "typestore"]

PACKAGE = "omnibind_ros"


def msg_dir() -> Path:
    """``msg/`` of the package: the source tree first, then ``share/omnibind_ros/msg`` installs.

    Raises
    ------
    FileNotFoundError : no directory with ``*.msg`` files was found (the message says where it
        looked).
    """
    candidates = [Path(__file__).resolve().parents[2] / "msg"]
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    candidates += [Path(p) / "share" / PACKAGE / "msg" for p in [*prefixes, sys.prefix]]
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.msg")):
            return candidate
    raise FileNotFoundError("omnibind_ros msg/ definitions not found; looked at: "
                            + ", ".join(map(str, candidates)))


@lru_cache(maxsize=1)
def typestore() -> Any:
    """rosbags ``Typestore`` of ROS 2 Kilted with every ``omnibind_ros/msg/*`` type registered.

    Cached: building it parses every definition once per process.
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for path in sorted(msg_dir().glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"{PACKAGE}/msg/{path.stem}"))
    store.register(types)
    return store


def msgtype_of(msg_class: type) -> str:
    """``pkg/msg/Type`` of an rclpy message class (its module is ``pkg.msg._type``)."""
    package = msg_class.__module__.split(".")[0]
    return f"{package}/msg/{msg_class.__name__}"
