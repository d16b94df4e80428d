"""ros/qos: the named profiles, name lookup, per-sensor overrides, and the matching they promise.

Profile and override tests need no ROS graph; the last two tests create nodes in a private
context (test/conftest.py: loopback-only discovery, own domain) to check the two behaviours the
profiles were chosen for: a late joiner gets the sensor status, and a best-effort sensor
subscription hears reliable and best-effort publishers alike.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def qos() -> Any:
    from omnibind_ros.ros import qos as module  # after conftest made the environment safe

    return module


def policies(profile: Any) -> tuple[str, str, str, int]:
    return (profile.reliability.name, profile.durability.name, profile.history.name,
            profile.depth)


@pytest.mark.parametrize(("name", "expected"), [
    ("sensor_data", ("BEST_EFFORT", "VOLATILE", "KEEP_LAST", 5)),
    ("sensor_data_latest", ("BEST_EFFORT", "VOLATILE", "KEEP_LAST", 1)),
    ("sensor_reliable", ("RELIABLE", "VOLATILE", "KEEP_LAST", 5)),
    ("recognition", ("RELIABLE", "VOLATILE", "KEEP_LAST", 10)),
    ("sensor_status", ("RELIABLE", "TRANSIENT_LOCAL", "KEEP_LAST", 1)),
    ("diagnostics", ("RELIABLE", "VOLATILE", "KEEP_LAST", 1)),  # diagnostic_updater: depth 1
    ("text", ("RELIABLE", "VOLATILE", "KEEP_LAST", 10)),
    ("default", ("RELIABLE", "VOLATILE", "KEEP_LAST", 10)),
])
def test_named_profiles(qos: Any, name: str, expected: tuple) -> None:
    assert policies(qos.qos_from_name(name)) == expected


def test_sensor_data_is_rclpys_profile(qos: Any) -> None:
    from rclpy.qos import qos_profile_sensor_data

    assert qos.qos_from_name("sensor_data") == qos_profile_sensor_data


def test_qos_from_name_spellings_copies_and_errors(qos: Any) -> None:
    assert qos.qos_from_name(" Sensor-Status ") == qos.SENSOR_STATUS
    copy = qos.qos_from_name("recognition")
    copy.depth = 99
    assert qos.RECOGNITION.depth == 10 and qos.qos_from_name("recognition").depth == 10
    with pytest.raises(qos.QoSConfigError, match="unknown QoS profile 'fast'.*sensor_data"):
        qos.qos_from_name("fast")
    assert issubclass(qos.QoSConfigError, ValueError)


def test_every_modality_has_a_best_effort_default(qos: Any) -> None:
    from omnibind_ros.core.modalities import Modality

    for modality in Modality:
        profile = qos.qos_for_modality(modality.value)
        if modality is not Modality.TEXT:
            # best effort matches any publisher: a hot-plugged driver is heard whatever its QoS
            assert profile.reliability.name == "BEST_EFFORT", modality
    assert qos.qos_for_modality("image").depth == 1  # only the newest frame is worth encoding
    with pytest.raises(qos.QoSConfigError, match="no default QoS"):
        qos.qos_for_modality("sonar")


def test_qos_from_dict_overrides(qos: Any) -> None:
    profile = qos.qos_from_dict({"reliability": "RELIABLE", "depth": 3, "deadline_s": 0.25},
                                base="sensor_data")
    assert policies(profile) == ("RELIABLE", "VOLATILE", "KEEP_LAST", 3)
    assert profile.deadline.nanoseconds == 250_000_000
    assert qos.SENSOR_DATA.reliability.name == "BEST_EFFORT"  # the base is not modified
    named = qos.qos_from_dict({"profile": "sensor_status", "durability": "volatile"},
                              base="sensor_data")
    assert policies(named) == ("RELIABLE", "VOLATILE", "KEEP_LAST", 1)
    keep_all = qos.qos_from_dict({"history": "keep_all", "lifespan_s": 2, "depth": 0})
    assert keep_all.history.name == "KEEP_ALL" and keep_all.lifespan.nanoseconds == 2 * 10**9
    # Unset parameters arrive as "" or None and mean "keep the base".
    unset = qos.qos_from_dict({"reliability": "", "depth": None}, base=qos.SENSOR_DATA_LATEST)
    assert unset == qos.SENSOR_DATA_LATEST and unset is not qos.SENSOR_DATA_LATEST
    assert qos.qos_from_dict(None, base="text") == qos.TEXT


@pytest.mark.parametrize(("spec", "message"), [
    ({"reliabilty": "reliable"}, "unknown QoS keys"),
    ({"reliability": "sometimes"}, "reliable, best_effort"),
    ({"durability": "forever"}, "transient_local"),
    ({"reliability": "unknown"}, "invalid"),
    ({"depth": 0}, "depth must be an integer >= 1 with keep_last"),
    ({"depth": "5"}, "depth must be an integer"),
    ({"depth": True}, "depth must be an integer"),
    ({"deadline_s": -1.0}, "seconds >= 0"),
    ({"lifespan_s": float("inf")}, "seconds >= 0"),
    ({"profile": "nope"}, "unknown QoS profile"),
    ({"profile": "system_default", "history": "keep_last"}, "needs a depth"),
])
def test_qos_from_dict_errors(qos: Any, spec: dict, message: str) -> None:
    with pytest.raises(qos.QoSConfigError, match=message):
        qos.qos_from_dict(spec)


def test_qos_from_dict_rejects_non_mappings(qos: Any) -> None:
    with pytest.raises(qos.QoSConfigError, match="mapping"):
        qos.qos_from_dict(["reliable"])  # type: ignore[arg-type]


def test_dict_round_trip_and_description(qos: Any) -> None:
    for name in qos.PROFILES:
        profile = qos.qos_from_name(name)
        assert qos.qos_from_dict(qos.qos_to_dict(profile)) == profile, name
    assert qos.describe_qos(qos.SENSOR_DATA) == "best_effort, volatile, keep_last(5)"
    assert qos.describe_qos(qos.qos_from_dict({"history": "keep_all"})) == \
        "reliable, volatile, keep_all"


# ---------------------------------------------------------------------------------------------
# The behaviours the profiles were chosen for, with real nodes.

def spin_until(executor: Any, condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    return condition()


def test_sensor_status_reaches_a_late_joiner(qos: Any, rclpy_context: Any,
                                             make_node: Any) -> None:
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String

    node = make_node("qos_late_joiner")
    publisher = node.create_publisher(String, "status", qos.SENSOR_STATUS)
    publisher.publish(String(data="camera LIVE"))
    received: list[str] = []
    node.create_subscription(String, "status", lambda m: received.append(m.data),
                             qos.qos_from_name("sensor_status"))  # created after the publish
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    try:
        assert spin_until(executor, lambda: received == ["camera LIVE"])
    finally:
        executor.shutdown()


def test_best_effort_sensor_subscription_matches_any_publisher(qos: Any, rclpy_context: Any,
                                                               make_node: Any) -> None:
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String

    node = make_node("qos_matching")
    reliable_driver = node.create_publisher(String, "reliable_cam", qos.SENSOR_RELIABLE)
    best_effort_driver = node.create_publisher(String, "be_cam", qos.SENSOR_DATA)
    for topic in ("reliable_cam", "be_cam"):
        node.create_subscription(String, topic, lambda m: None, qos.qos_for_modality("image"))
    strict = node.create_publisher(String, "strict", qos.SENSOR_DATA)
    node.create_subscription(String, "strict", lambda m: None, qos.SENSOR_RELIABLE)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    try:
        assert spin_until(executor, lambda: reliable_driver.get_subscription_count() == 1
                          and best_effort_driver.get_subscription_count() == 1)
        # ...whereas the opt-in reliable profile cannot hear a best-effort driver.
        spin_until(executor, lambda: False, timeout_s=0.3)
        assert strict.get_subscription_count() == 0
    finally:
        executor.shutdown()
