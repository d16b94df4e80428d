"""record_sim (simulated sensors into a bag, no ROS graph) and record_live (topics of a graph).

record_sim is deterministic, so counts are exact: a sensor at r Hz logs every message whose log
time (stamp, plus one period for window sensors) falls in [0, duration) and outside its dropout.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros  # rclpy serializes the messages

S = 1_000_000_000
SENSORS = ["camera", "microphone", "operator"]  # cheap to render; one window sensor
CAMERA = "/sim/camera/image_raw"
MIC = "/sim/microphone/audio"
TEXT = "/sim/operator/text"
GT = "/omnibind/ground_truth"
EVENTS = "/omnibind/scenario_event"


def _messages(path: Path) -> list[tuple[str, str, int, bytes]]:
    from omnibind_ros.bag.reader import iter_messages

    return [(m.topic, m.msgtype, m.log_time_ns, m.rawdata) for m in iter_messages(path)]


@pytest.fixture(scope="module")
def sim_bag(tmp_path_factory) -> tuple[Path, object]:
    """3 s, camera unplugged in [1, 2) s (config/scenarios/quick_unplug.yaml)."""
    from omnibind_ros.bag.record import record_sim

    path = tmp_path_factory.mktemp("rec") / "sim_mcap"
    info = record_sim(path, duration_s=3.0, scenario="quick_unplug", seed=3, sensors=SENSORS,
                      progress=False)
    return path, info


def test_topics_and_counts(sim_bag) -> None:
    from omnibind_ros.bag.record import SIM_EPOCH_NS

    path, info = sim_bag
    assert info.storage == "mcap" and info.error is None
    assert info.topics == {
        CAMERA: ("sensor_msgs/msg/Image", 15 * 3 - 15),  # 15 Hz, minus the 1 s dropout
        MIC: ("omnibind_ros/msg/AudioChunk", 149),  # 20 ms windows ending before 3 s
        TEXT: ("std_msgs/msg/String", 1),  # 0.25 Hz: t = 0 only
        GT: ("omnibind_ros/msg/GroundTruth", 6),  # 2 Hz, one object (period 6 s)
        EVENTS: ("std_msgs/msg/String", 2)}
    assert info.start_ns == SIM_EPOCH_NS
    assert info.end_ns < SIM_EPOCH_NS + 3 * S
    meta = (path / "metadata.yaml").read_text()
    assert "omnibind.record_sim" in meta and "quick_unplug.yaml" in meta


def test_dropout_and_stamps(sim_bag) -> None:
    from omnibind_ros.msg import AudioChunk, GroundTruth
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from omnibind_ros.bag.record import SIM_EPOCH_NS
    from omnibind_ros.sim.stream import WorldStream

    path, _ = sim_bag
    msgs = _messages(path)
    assert [m[2] for m in msgs] == sorted(m[2] for m in msgs)
    rel = {topic: [(t - SIM_EPOCH_NS) / S for tt, _, t, _ in msgs if tt == topic]
           for topic in (CAMERA, MIC)}
    assert not [t for t in rel[CAMERA] if 1.0 <= t < 2.0]  # unplugged: nothing logged
    assert len([t for t in rel[CAMERA] if t < 1.0]) == 15
    assert len([t for t in rel[CAMERA] if t >= 2.0]) == 15
    assert len([t for t in rel[MIC] if 1.0 <= t < 2.0]) == 50  # others unaffected

    for topic, _, log_ns, raw in msgs:
        if topic == CAMERA:
            img = deserialize_message(raw, Image)
            stamp = img.header.stamp.sec * S + img.header.stamp.nanosec
            assert stamp == log_ns  # a frame is published at its capture time
            assert (img.width, img.height, img.encoding, img.header.frame_id) == (
                160, 160, "rgb8", "sim_camera")
        elif topic == MIC:
            chunk = deserialize_message(raw, AudioChunk)
            stamp = chunk.header.stamp.sec * S + chunk.header.stamp.nanosec
            assert log_ns - stamp == 20_000_000  # logged when its 20 ms window has passed
            assert chunk.sample_rate == 16000 and len(chunk.data) == 320 * 2
    events = [json.loads(deserialize_message(raw, String).data)
              for topic, _, _, raw in msgs if topic == EVENTS]
    assert events == [{"t_s": 1.0, "action": "unplug", "sensors": ["camera"]},
                      {"t_s": 2.0, "action": "replug", "sensors": ["camera"]}]
    truth = [deserialize_message(raw, GroundTruth) for topic, _, _, raw in msgs if topic == GT]
    expected = WorldStream(seed=3, object_period_s=6.0).class_at(0.0)
    assert {g.label for g in truth} == {expected.name}
    assert [g.header.stamp.nanosec for g in truth] == [0, S // 2] * 3


def test_deterministic_and_sqlite3(sim_bag, tmp_path) -> None:
    """The same arguments give the same messages, byte for byte, in either storage."""
    from omnibind_ros.bag.record import record_sim

    path, _ = sim_bag
    info = record_sim(tmp_path / "sim_db3", duration_s=3.0, scenario="quick_unplug", seed=3,
                      sensors=SENSORS, storage="sqlite3", progress=False)
    assert info.storage == "sqlite3"
    assert next((tmp_path / "sim_db3").glob("*.db3")).is_file()
    assert _messages(tmp_path / "sim_db3") == _messages(path)


def test_noise_seed_and_params_file(tmp_path) -> None:
    """A custom parameter file (sensor name, topic, rate), a noise_on event and the seed."""
    import numpy as np
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from omnibind_ros.bag.record import SIM_EPOCH_NS, record_sim

    params = tmp_path / "sim.yaml"
    params.write_text("/**/omnibind_sim_sensors:\n  ros__parameters:\n    seed: 5\n"
                      "    object_period_s: 0.5\n    sensors: [eye]\n"
                      "    sensors.eye: {modality: image, topic: /robot/eye, rate_hz: 10.0}\n")
    scenario = tmp_path / "noisy.yaml"
    scenario.write_text("- {t: 0.5, sensor: eye, action: noise_on}\n")

    def frames(name: str, **kw) -> list[tuple[int, np.ndarray]]:
        record_sim(tmp_path / name, duration_s=1.0, sim_params_file=params, progress=False,
                   **kw)
        out = []
        for topic, msgtype, t, raw in _messages(tmp_path / name):
            if topic == "/robot/eye":
                assert msgtype == "sensor_msgs/msg/Image"
                out.append((t - SIM_EPOCH_NS, np.frombuffer(
                    bytes(deserialize_message(raw, Image).data), np.uint8)))
        return out

    clean = frames("clean", scenario="")
    noisy = frames("noisy", scenario=scenario)
    other = frames("other_seed", scenario="", seed=6)  # overrides the file's seed 5
    assert [t for t, _ in clean] == [k * S // 10 for k in range(10)]
    for (t, a), (_, b), (_, c) in zip(clean, noisy, other, strict=True):
        if t < S // 2:
            assert np.array_equal(a, b)
        else:  # noise: uniform bytes, nothing like a rendered scene
            assert not np.array_equal(a, b) and abs(float(b.mean()) - 127.5) < 3.0
        assert not np.array_equal(a, c)
    from omnibind_ros.msg import GroundTruth

    truth = [deserialize_message(raw, GroundTruth)
             for topic, _, _, raw in _messages(tmp_path / "clean") if topic == GT]
    # A new object every 0.5 s: one message at each change (the 2 Hz repeats coincide).
    assert [g.episode for g in truth] == [0, 1] and truth[0].label != truth[1].label


def test_errors(tmp_path, sim_bag) -> None:
    from omnibind_ros.bag.record import RecordError, record_sim

    path, _ = sim_bag
    with pytest.raises(FileExistsError, match="exists already"):
        record_sim(path, duration_s=1.0, progress=False)
    with pytest.raises(RecordError, match=r"sensors \['sonar'\] are not configured"):
        record_sim(tmp_path / "x", duration_s=1.0, sensors=["sonar"], progress=False)
    with pytest.raises(RecordError, match="storage must be one of mcap, sqlite3"):
        record_sim(tmp_path / "x", duration_s=1.0, storage="bag", progress=False)
    with pytest.raises(FileNotFoundError, match="no_such_scenario"):
        record_sim(tmp_path / "x", duration_s=1.0, scenario="no_such_scenario",
                   progress=False)
    with pytest.raises(RecordError, match="positive"):
        record_sim(tmp_path / "x", duration_s=0.0, progress=False)
    assert not (tmp_path / "x").exists()


def test_record_live(tmp_path, rclpy_context) -> None:
    """A publisher in this process (its own context, its own thread) on two configured topics
    and the ground truth; record_live (a private context) records them for 1.5 s."""
    from omnibind_ros.msg import GroundTruth
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from omnibind_ros.bag.record import record_live
    from omnibind_ros.ros.qos import qos_from_name

    config = tmp_path / "perception.yaml"
    config.write_text(
        "omnibind_perception:\n  ros__parameters:\n    sensors: [cam, talk]\n"
        "    sensors.cam: {modality: image, topic: /rec_test/cam, expected_rate_hz: 20.0}\n"
        "    sensors.talk: {modality: text, topic: /rec_test/text}\n")
    node = Node("rec_test_publisher", context=rclpy_context)
    cam = node.create_publisher(Image, "/rec_test/cam", qos_from_name("sensor_data"))
    talk = node.create_publisher(String, "/rec_test/text", qos_from_name("text"))
    truth = node.create_publisher(GroundTruth, GT, qos_from_name("sensor_status"))
    sent = {"cam": 0, "talk": 0}

    def tick() -> None:
        sent["cam"] += 1
        cam.publish(Image(height=2, width=2, encoding="mono8", step=2,
                          data=bytes([sent["cam"] % 256] * 4)))
        if sent["cam"] % 5 == 0:
            sent["talk"] += 1
            talk.publish(String(data=f"hello {sent['talk']}"))

    truth.publish(GroundTruth(label="wooden duck"))  # transient local: a late joiner gets it
    node.create_timer(0.05, tick)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    stop = threading.Event()
    thread = threading.Thread(target=lambda: [executor.spin_once(timeout_sec=0.02)
                                              for _ in iter(stop.is_set, True)], daemon=True)
    thread.start()
    try:
        info = record_live(config, tmp_path / "live", duration_s=1.5, progress=False)
    finally:
        stop.set()
        thread.join(timeout=5)
        executor.shutdown()
        node.destroy_node()
    assert not thread.is_alive()
    assert set(info.topics) == {"/rec_test/cam", "/rec_test/text", GT}
    cams = [deserialize_message(raw, Image) for topic, _, _, raw in _messages(tmp_path / "live")
            if topic == "/rec_test/cam"]
    texts = [deserialize_message(raw, String).data
             for topic, _, _, raw in _messages(tmp_path / "live") if topic == "/rec_test/text"]
    # ~30 frames in 1.5 s at 20 Hz; discovery takes part of it on a loaded machine.
    assert 8 <= len(cams) <= 32
    counters = [c.data[0] for c in cams]
    assert counters == sorted(counters) and cams[0].encoding == "mono8"
    assert 1 <= len(texts) <= 7 and texts[0].startswith("hello ")
    assert info.topics[GT] == ("omnibind_ros/msg/GroundTruth", 1)


def test_degraded_phase_is_recorded_with_its_ground_truth(tmp_path) -> None:
    """A degrade_on event: frames after it are the world degraded (the camera in the dark),
    frames before it are those of a clean recording, and the scenario event carries the kind
    and severity; `all` reaches only sensors whose modality has the kind."""
    import numpy as np
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from omnibind_ros.bag.record import SIM_EPOCH_NS, plan_sim, record_sim

    params = tmp_path / "sim.yaml"
    params.write_text("/**/omnibind_sim_sensors:\n  ros__parameters:\n    seed: 5\n"
                      "    object_period_s: 2.0\n    sensors: [eye, ear]\n"
                      "    sensors.eye: {modality: image, topic: /eye, rate_hz: 10.0}\n"
                      "    sensors.ear: {modality: audio, topic: /ear, rate_hz: 10.0}\n")
    scenario = tmp_path / "dark.yaml"
    scenario.write_text("- {t: 0.5, sensor: all, action: degrade_on, kind: dark, severity: 0.9}\n"
                        "- {t: 0.8, sensor: eye, action: degrade_off}\n")
    plan = plan_sim(duration_s=1.0, scenario=scenario, sim_params_file=params)
    assert [(e.action, e.sensors, e.kind) for e in plan.events] == [
        ("degrade_on", ("eye",), "dark"), ("degrade_off", ("eye",), None)]

    def record(name: str, **kw) -> list[tuple[str, int, bytes]]:
        record_sim(tmp_path / name, duration_s=1.0, sim_params_file=params, progress=False,
                   **kw)
        return [(topic, t - SIM_EPOCH_NS, raw)
                for topic, _, t, raw in _messages(tmp_path / name)]

    def frames(messages) -> list[tuple[int, np.ndarray]]:
        return [(t, np.frombuffer(bytes(deserialize_message(raw, Image).data), np.uint8))
                for topic, t, raw in messages if topic == "/eye"]

    clean_msgs, dark_msgs = record("clean", scenario=""), record("dark", scenario=scenario)
    clean, dark = frames(clean_msgs), frames(dark_msgs)
    assert [t for t, _ in clean] == [t for t, _ in dark] == [k * S // 10 for k in range(10)]
    for (t, a), (_, b) in zip(clean, dark, strict=True):
        if S // 2 <= t < 8 * S // 10:
            assert b.mean() < 0.5 * a.mean()
        else:
            assert np.array_equal(a, b)
    # The microphone is untouched (no `dark` for audio), so its messages are the clean ones.
    assert [m for m in clean_msgs if m[0] == "/ear"] == [m for m in dark_msgs if m[0] == "/ear"]
    events = [json.loads(deserialize_message(raw, String).data)
              for topic, _, raw in dark_msgs if topic == EVENTS]
    assert events == [
        {"t_s": 0.5, "action": "degrade_on", "sensors": ["eye"], "kind": "dark",
         "severity": 0.9},
        {"t_s": 0.8, "action": "degrade_off", "sensors": ["eye"]}]
