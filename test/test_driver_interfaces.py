"""The wire-compatible stand-ins for the driver interfaces (``interfaces/``): same definitions as
the released packages, pinned by their ROS 2 type hashes, and readable end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from omnibind_ros.bag.types import DRIVER_PACKAGES, driver_msg_dirs, typestore

REPO = Path(__file__).resolve().parents[1]

#: RIHS01 hashes of the released definitions (event_camera_msgs 1.1.6, msg_ros2/EventPacket.msg;
#: ros-drivers/audio_common branch ros2, audio_common_msgs 0.3.12), computed from their .msg
#: files with rosidl's algorithm: a change to a field name, type or order changes them.
UPSTREAM_HASHES = {
    "event_camera_msgs/msg/EventPacket":
        "RIHS01_d6fa176260b1f37e5a40845305315e150a0f18191241eb64f407442aa29844aa",
    "audio_common_msgs/msg/AudioData":
        "RIHS01_a9742fba1567e649bbdba6ae034a72c7ef129b97c7a4da50fd2f3e1bfd8ffa86",
    "audio_common_msgs/msg/AudioDataStamped":
        "RIHS01_6fc679d5a868ed68e4d301f1ef42abecc86140afb57d255656ff2d9e476ea9e3",
    "audio_common_msgs/msg/AudioInfo":
        "RIHS01_b3494d204e513d2cceefae1888e5be3da7c8c8ca31eb277f7b5b62f364bcb1fb",
}


def test_stand_in_sources_hash_like_the_released_packages() -> None:
    store = typestore()
    for name, expected in UPSTREAM_HASHES.items():
        assert store.hash_rihs01(name) == expected, name
    assert set(driver_msg_dirs()) == set(DRIVER_PACKAGES)


def test_stand_ins_are_colcon_ignored_and_built_by_setup() -> None:
    for package in DRIVER_PACKAGES:
        root = REPO / "interfaces" / package
        assert (root / "COLCON_IGNORE").exists(), package
        assert f"<name>{package}</name>" in (root / "package.xml").read_text()
    assert "build_fallback_interfaces" in (REPO / "scripts" / "setup.sh").read_text()


@pytest.mark.ros
def test_installed_interfaces_carry_the_released_hashes() -> None:
    """What rosidl generated into this environment (the stand-ins, or the real packages)."""
    import importlib

    for name, expected in UPSTREAM_HASHES.items():
        package, _, msg = name.split("/")
        module = importlib.import_module(f"{package}.msg")
        share = Path(module.__file__).resolve()
        candidates = [p / "share" / package / "msg" / f"{msg}.json" for p in share.parents]
        description = next(c for c in candidates if c.exists())
        hashes = json.loads(description.read_text())["type_hashes"]
        assert hashes[0] == {"type_name": name, "hash_string": expected}


@pytest.mark.ros
def test_event_packet_cdr_round_trip_decodes_through_the_sensor_converter() -> None:
    from event_camera_msgs.msg import EventPacket
    from rclpy.serialization import deserialize_message, serialize_message

    from omnibind_ros.core.event_encoders import encode_evt3
    from omnibind_ros.ros.conversions import conversion_for

    x, y = np.array([1, 2, 3, 40]), np.array([5, 5, 5, 6])
    t, p = np.array([0, 0, 0, 7000]), np.array([1, 1, 1, 0])
    msg = EventPacket(encoding="evt3", width=64, height=48, seq=3,
                      events=encode_evt3(x, y, t, p))
    back = deserialize_message(serialize_message(msg), EventPacket)
    packet = conversion_for("event", EventPacket)(back)
    assert packet.x.tolist() == [1, 2, 3, 40] and packet.y.tolist() == [5, 5, 5, 6]
    assert packet.t_ns.tolist() == [0, 0, 0, 7000]
    assert packet.polarity.tolist() == [True, True, True, False]
    assert (packet.width, packet.height) == (64, 48)


@pytest.mark.ros
def test_a_missing_driver_type_names_where_to_get_it() -> None:
    from omnibind_ros.ros.interfaces import require_message_class

    assert require_message_class("event_camera_msgs/msg/EventPacket", "sensor ev").__name__ \
        == "EventPacket"
    with pytest.raises(ValueError, match=r"sensor mic: message type "
                       r"audio_common_msgs/msg/AudioStamped is not installed.*mgonzs13"):
        require_message_class("audio_common_msgs/msg/AudioStamped", "sensor mic")
    with pytest.raises(ValueError, match="build or install the foo_msgs package"):
        require_message_class("foo_msgs/msg/Bar", "sensor x")
