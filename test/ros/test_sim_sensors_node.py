"""omnibind_sim_sensors in-process: rates, decodable payloads, ground truth, hot-plug, drops.

Real rclpy (private context per test, conftest fixtures): the node under test and a probe node
share one single-threaded executor spun from the test thread, so no thread has to be joined.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[2]
RATE_TOLERANCE = 0.3


def _params(**values: Any) -> list[Any]:
    from rclpy.parameter import Parameter

    return [Parameter(name.replace("__", "."), value=value) for name, value in values.items()]


class Harness:
    """The node under test, a probe node subscribed to its topics, and one executor."""

    def __init__(self, make_node: Callable[..., Any], context: Any, **params: Any) -> None:
        from rclpy.executors import SingleThreadedExecutor

        from omnibind_ros.ros.sim_sensors_node import SimSensorsNode

        self.node = make_node("omnibind_sim_sensors", node_class=SimSensorsNode,
                              parameter_overrides=_params(**params))
        self.probe = make_node("probe")
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.probe)
        self.received: dict[str, list[tuple[float, Any]]] = defaultdict(list)

    def subscribe_sensors(self) -> None:
        from omnibind_ros.ros.qos import qos_from_name
        from omnibind_ros.ros.sim_sensors_node import sensor_message_class

        qos = qos_from_name("sensor_data")
        qos.depth = 200
        for sensor in self.node.sensors.values():
            self.probe.create_subscription(
                sensor_message_class(sensor.modality, sensor.message_type), sensor.topic,
                self._recorder(sensor.name), qos)

    def subscribe_ground_truth(self) -> None:
        from omnibind_ros.msg import GroundTruth

        from omnibind_ros.ros.qos import qos_from_name

        qos = qos_from_name("sensor_status")
        qos.depth = 100
        self.probe.create_subscription(GroundTruth, "/omnibind/ground_truth",
                                       self._recorder("ground_truth"), qos)

    def _recorder(self, key: str) -> Callable[[Any], None]:
        def record(msg: Any) -> None:
            self.received[key].append((self.node.get_clock().now().nanoseconds * 1e-9, msg))
        return record

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.01)

    def spin_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.01)
        return predicate()

    def publishers(self, sensor: str) -> int:
        return self.probe.count_publishers(self.node.sensors[sensor].topic)

    def set_remote(self, **values: Any) -> list[Any]:
        """Set parameters through the node's service, as `ros2 param set` does."""
        from rcl_interfaces.srv import SetParameters

        client = self.probe.create_client(SetParameters, "/omnibind_sim_sensors/set_parameters")
        assert self.spin_until(client.service_is_ready, 5.0)
        request = SetParameters.Request(
            parameters=[p.to_parameter_msg() for p in _params(**values)])
        future = client.call_async(request)
        assert self.spin_until(future.done, 5.0)
        self.probe.destroy_client(client)
        return list(future.result().results)

    def close(self) -> None:
        self.executor.shutdown()


@pytest.fixture
def harness(make_node: Callable[..., Any], rclpy_context: Any):
    made: list[Harness] = []

    def factory(**params: Any) -> Harness:
        made.append(Harness(make_node, rclpy_context, **params))
        return made[-1]

    yield factory
    for h in made:
        h.close()


def test_every_topic_at_its_rate_with_decodable_payloads_and_ground_truth(harness) -> None:
    from omnibind_ros.ros.conversions import conversion_for
    from omnibind_ros.sim.catalog import CLASSES

    h = harness(object_period_s=1.0)
    h.subscribe_sensors()
    h.subscribe_ground_truth()
    h.spin_for(2.3)
    elapsed = h.node.stream_time_s
    assert 2.0 < elapsed < 2.6  # realtime_factor 1 follows the clock
    for name, sensor in h.node.sensors.items():
        msgs = h.received[name]
        # Window sensors cover [stamp, stamp + 1/rate): published when the window has passed.
        window = 1.0 / sensor.rate_hz if sensor.modality in ("event", "audio") else 0.0
        expected = max((elapsed - window) * sensor.rate_hz, 1.0)
        assert abs(len(msgs) - expected) <= max(RATE_TOLERANCE * expected, 1.0), (
            name, len(msgs), expected)
        convert = conversion_for(sensor.modality, type(msgs[0][1]))
        for received_s, msg in msgs:
            convert(msg)  # raises on a malformed message
            stamp_s = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9 \
                if hasattr(msg, "header") else None
            if stamp_s is not None:
                # Causal: a window's message arrives only once the window has passed.
                assert received_s >= stamp_s + window - 0.005, name
                assert msg.header.frame_id == sensor.frame_id
        if hasattr(msgs[0][1], "header") and len(msgs) > 2:
            stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for _, m in msgs]
            spacing = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
            assert spacing == pytest.approx(1.0 / sensor.rate_hz, rel=0.05), name

    truths = [m for _, m in h.received["ground_truth"]]
    episodes = sorted({m.episode for m in truths})
    assert episodes[:3] == [0, 1, 2]
    for m in truths:
        cls = h.node.stream.class_at(m.episode * 1.0 + 0.5)
        assert (m.label, m.class_index, m.shape, m.material) == (
            cls.name, cls.index, cls.shape.name, cls.material.name)
        assert m.label == CLASSES[m.class_index].name
    assert truths[0].label != next(m for m in truths if m.episode == 1).label
    # Republished between changes (2 Hz), not only at each change.
    assert sum(m.episode == 0 for m in truths) >= 2


def test_unplug_and_replug_by_parameter(harness) -> None:
    h = harness(sensors=["camera", "microphone"])
    h.subscribe_sensors()
    assert h.spin_until(lambda: h.publishers("camera") == 1 and h.received["camera"], 5.0)

    results = h.set_remote(sensors__camera__enabled=False)
    assert all(r.successful for r in results)
    assert h.spin_until(lambda: h.publishers("camera") == 0, 5.0)
    h.spin_for(0.3)  # anything already in flight arrives
    before = len(h.received["camera"])
    mic_before = len(h.received["microphone"])
    h.spin_for(0.7)
    assert len(h.received["camera"]) == before, "an unplugged camera kept publishing"
    assert len(h.received["microphone"]) > mic_before + 20, "the other sensor must go on"
    assert h.node.stats["unplugged/camera"] >= 5
    assert h.node.get_parameter("sensors.camera.enabled").value is False

    assert all(r.successful for r in h.set_remote(sensors__camera__enabled=True))
    assert h.spin_until(lambda: h.publishers("camera") == 1, 5.0)
    assert h.spin_until(lambda: len(h.received["camera"]) > before + 3, 5.0)

    # Structural parameters are read-only: no silent half-reconfiguration.
    rejected = h.set_remote(sensors__camera__rate_hz=30.0)
    assert not rejected[0].successful


def test_scenario_file_drives_unplug_and_replug(harness) -> None:
    h = harness(sensors=["camera", "lidar"], realtime_factor=2.0,
                scenario_file="quick_unplug.yaml")  # camera out at 1 s, back at 2 s (stream)
    h.subscribe_sensors()
    seen: list[tuple[float, int]] = []

    def sample() -> bool:
        count = h.publishers("camera")
        if not seen or seen[-1][1] != count:
            seen.append((h.node.stream_time_s, count))
        return h.node.stream_time_s > 3.0

    assert h.spin_until(sample, 10.0)
    counts = [c for _, c in seen]
    assert counts[-3:] == [1, 0, 1], seen
    unplug_t, replug_t = seen[-2][0], seen[-1][0]
    assert 0.9 < unplug_t < 1.5 and 1.9 < replug_t < 2.5, seen
    assert h.publishers("lidar") == 1
    camera_stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
                     for _, m in h.received["camera"]]
    gaps = [b - a for a, b in zip(camera_stamps[:-1], camera_stamps[1:], strict=True)]
    assert max(gaps) > 0.8  # about one stream second without camera frames


def test_noise_on_keeps_the_message_valid(harness) -> None:
    import numpy as np

    from omnibind_ros.ros.conversions import image_to_numpy

    h = harness(sensors=["camera"])
    h.subscribe_sensors()
    assert h.spin_until(lambda: len(h.received["camera"]) >= 2, 5.0)
    clean = image_to_numpy(h.received["camera"][-1][1]).image.astype(float)
    h.node.set_parameters(_params(sensors__camera__noise=True))
    n = len(h.received["camera"])
    assert h.spin_until(lambda: len(h.received["camera"]) >= n + 3, 5.0)
    noisy = image_to_numpy(h.received["camera"][-1][1]).image.astype(float)
    assert noisy.shape == clean.shape
    # Uniform noise: big pixel-to-pixel differences that a rendered scene does not have.
    assert np.abs(np.diff(noisy, axis=1)).mean() > 3 * np.abs(np.diff(clean, axis=1)).mean()


def test_falls_behind_by_dropping_not_queueing(harness) -> None:
    h = harness(sensors=["camera", "event_camera"], realtime_factor=60.0, max_lag_s=0.05)
    h.subscribe_sensors()
    h.spin_for(1.5)
    stats = h.node.stats
    dropped = stats["dropped/camera"] + stats["dropped/event_camera"]
    published = stats["published/camera"] + stats["published/event_camera"]
    assert dropped > 0 and published > 0, dict(stats)
    assert len(h.node._pending) < 50  # nothing piles up


def test_bad_configuration_is_rejected(make_node) -> None:
    from omnibind_ros.ros.sim_sensors_node import SimSensorsNode
    from omnibind_ros.sim.scenario import ScenarioError

    with pytest.raises(ValueError, match="modality must be one of"):
        make_node("bad1", node_class=SimSensorsNode,
                  parameter_overrides=_params(sensors=["sonar"]))
    bad = REPO / "config" / "scenarios" / "hotplug_demo.yaml"
    with pytest.raises(ScenarioError, match="unknown sensor"):
        make_node("bad2", node_class=SimSensorsNode,
                  parameter_overrides=_params(sensors=["camera"], scenario_file=str(bad)))


def test_shipped_params_file_configures_every_sensor(make_node) -> None:
    import yaml

    from omnibind_ros.ros.sim_sensors_node import SimSensorsNode

    path = REPO / "config" / "sim_sensors.yaml"
    spec = yaml.safe_load(path.read_text())["/**/omnibind_sim_sensors"]["ros__parameters"]
    node = make_node("omnibind_sim_sensors", node_class=SimSensorsNode, namespace="/robot",
                     cli_args=["--ros-args", "--params-file", str(path)])
    assert list(node.sensors) == spec["sensors"]
    assert node.period_s == spec["object_period_s"]
    for name, sensor in node.sensors.items():
        for key in ("modality", "rate_hz", "frame_id", "enabled", "noise"):
            assert getattr(sensor, key) == spec[f"sensors.{name}"][key], (name, key)
        # relative topics: published inside the node's namespace, recorded at the root
        configured = spec[f"sensors.{name}"]["topic"]
        assert sensor.configured_topic == configured and not configured.startswith("/")
        assert node.topic_of(name) == f"/robot/{configured}"
        assert sensor.topic == f"/{configured}"


def test_use_sim_time_follows_clock(harness) -> None:
    from rosgraph_msgs.msg import Clock

    from omnibind_ros.ros.qos import qos_from_name

    h = harness(sensors=["lidar"], use_sim_time=True)
    h.subscribe_sensors()
    clock_pub = h.probe.create_publisher(Clock, "/clock", qos_from_name("sensor_reliable"))
    h.spin_for(0.3)
    assert not h.received["lidar"], "published before any /clock"
    base_ns = 1_000 * 1_000_000_000  # simulated time starts at 1000 s
    for step in range(40):  # 2 s of simulated time in 50 ms steps
        clock_pub.publish(Clock(clock=_time(base_ns + step * 50_000_000)))
        h.spin_for(0.02)
    h.spin_for(0.2)
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for _, m in h.received["lidar"]]
    assert 12 <= len(stamps) <= 22, len(stamps)  # 10 Hz over ~1.95 s of simulated time
    assert 1000.0 <= stamps[0] < 1000.2 and stamps[-1] < 1002.0


def _time(ns: int) -> Any:
    from builtin_interfaces.msg import Time

    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def test_degradation_keeps_publishing_the_world_degraded(harness) -> None:
    from omnibind_ros.ros.conversions import image_to_numpy

    h = harness(sensors=["camera"], seed=3)
    h.subscribe_sensors()
    assert h.spin_until(lambda: len(h.received["camera"]) >= 2, 5.0)
    clean = image_to_numpy(h.received["camera"][-1][1]).image.astype(float)
    results = h.set_remote(sensors__camera__degradation_severity=1.0,
                           sensors__camera__degradation="dark")
    assert all(r.successful for r in results)
    assert h.node.sensors["camera"].degradation == "dark"
    n = len(h.received["camera"])
    assert h.spin_until(lambda: len(h.received["camera"]) >= n + 3, 5.0)
    dark = image_to_numpy(h.received["camera"][-1][1]).image.astype(float)
    assert dark.shape == clean.shape and dark.mean() < 0.4 * clean.mean()
    # A kind of another modality is refused with the reason; the state is unchanged.
    [refused] = h.set_remote(sensors__camera__degradation="rain")
    assert not refused.successful and "image has no degradation 'rain'" in refused.reason
    assert h.node.sensors["camera"].degradation == "dark"
    assert all(r.successful for r in h.set_remote(sensors__camera__degradation=""))
    n = len(h.received["camera"])
    assert h.spin_until(lambda: len(h.received["camera"]) >= n + 3, 5.0)
    again = image_to_numpy(h.received["camera"][-1][1]).image.astype(float)
    assert again.mean() > 0.6 * clean.mean()


def test_scenario_degrade_events_set_the_parameters(harness, tmp_path) -> None:
    scenario = tmp_path / "degrade.yaml"
    scenario.write_text(
        "- {t: 0.2, sensor: all, action: degrade_on, kind: rain, severity: 0.7}\n"
        "- {t: 0.2, sensor: camera, action: degrade_on, kind: glare, severity: 0.5}\n"
        "- {t: 0.6, sensor: camera, action: degrade_off}\n")
    h = harness(sensors=["camera", "lidar"], scenario_file=str(scenario))
    h.subscribe_sensors()
    sensors = h.node.sensors
    assert h.spin_until(lambda: sensors["lidar"].degradation == "rain", 5.0)
    assert sensors["lidar"].degradation_severity == pytest.approx(0.7)
    assert h.node.get_parameter("sensors.camera.degradation").value == "glare"
    assert h.spin_until(lambda: sensors["camera"].degradation == "", 5.0)
    assert sensors["lidar"].degradation == "rain"
    assert h.spin_until(lambda: len(h.received["lidar"]) >= 3, 5.0)


def test_scenario_degradation_of_a_wrong_modality_is_rejected(make_node, tmp_path) -> None:
    from omnibind_ros.ros.sim_sensors_node import SimSensorsNode
    from omnibind_ros.sim.scenario import ScenarioError

    scenario = tmp_path / "bad.yaml"
    scenario.write_text("- {t: 1, sensor: camera, action: degrade_on, kind: wind, "
                        "severity: 0.5}\n")
    with pytest.raises(ScenarioError, match=r"sensor 'camera' \(image\) has no degradation"):
        make_node("bad3", node_class=SimSensorsNode,
                  parameter_overrides=_params(sensors=["camera"], scenario_file=str(scenario)))
    with pytest.raises(ValueError, match=r"sensors.camera.degradation: image has no"):
        make_node("bad4", node_class=SimSensorsNode,
                  parameter_overrides=_params(sensors=["camera"],
                                              sensors__camera__degradation="wind"))
