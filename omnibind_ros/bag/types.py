"""The rosbags type store: ROS 2 Kilted's standard messages, omnibind_ros's own, and the driver
interfaces the package reads (``event_camera_msgs``, ``audio_common_msgs``).

Why: rosbags needs a message definition for every connection it writes (mcap stores it as the
channel schema, so any reader can decode the bag) and for every type it decodes. Our custom
types (EventArray, AudioChunk, GroundTruth, ...) are registered from the package's ``msg/``
files, the same sources rosidl generated the rclpy classes from, so the RIHS01 hashes written
into bags match those of the installed interfaces.

The driver interfaces come from ``interfaces/<package>/msg`` (the definitions of the released
packages, verbatim: a test pins their type hashes), so a test or tool can write a bag as a real
event camera or microphone driver would.

ROS-free: importing this module does not import rclpy.
"""
from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["DRIVER_PACKAGES", "PACKAGE", "driver_msg_dirs", "msg_dir", "msgtype_of",
           "typestore"]

PACKAGE = "omnibind_ros"
#: Interface packages of real drivers whose messages the package converts.
DRIVER_PACKAGES = ("event_camera_msgs", "audio_common_msgs")


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


def driver_msg_dirs() -> dict[str, Path]:
    """Package -> its ``msg/`` directory: the source tree's ``interfaces/``, then installs."""
    root = Path(__file__).resolve().parents[2]
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    out = {}
    for package in DRIVER_PACKAGES:
        candidates = [root / "interfaces" / package / "msg"]
        candidates += [Path(p) / "share" / package / "msg" for p in [*prefixes, sys.prefix]]
        found = next((c for c in candidates if c.is_dir() and any(c.glob("*.msg"))), None)
        if found is not None:
            out[package] = found
    return out


@lru_cache(maxsize=1)
def typestore() -> Any:
    """rosbags ``Typestore`` of ROS 2 Kilted with every ``omnibind_ros/msg/*`` type and the
    driver interfaces (:data:`DRIVER_PACKAGES`) registered.

    Cached: building it parses every definition once per process.
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    dirs = {PACKAGE: msg_dir(), **driver_msg_dirs()}
    for package, directory in dirs.items():
        for path in sorted(directory.glob("*.msg")):
            types.update(get_types_from_msg(path.read_text(), f"{package}/msg/{path.stem}"))
    store.register(types)
    return store


def msgtype_of(msg_class: type) -> str:
    """``pkg/msg/Type`` of an rclpy message class (its module is ``pkg.msg._type``)."""
    package = msg_class.__module__.split(".")[0]
    return f"{package}/msg/{msg_class.__name__}"
