"""The node's YAML read without a node: rcl's key matching, flattening, the node's checks."""
from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.ros  # ros.params imports rclpy's Parameter types

from omnibind_ros.bag.config import (  # noqa: E402
    ConfigError,
    default_config_path,
    load_node_config,
    parse_node_params,
)


def _write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_parse_matches_node_keys_in_file_order() -> None:
    doc = {
        "/**": {"ros__parameters": {"fusion": {"rate_hz": 5.0, "top_k": 3}}},
        "other_node": {"ros__parameters": {"fusion": {"rate_hz": 99.0}}},
        "/robot1/omnibind_perception": {"ros__parameters": {"frame_id": "base"}},
        "/**/omnibind_perception": {"ros__parameters": {
            "fusion": {"rate_hz": 7.5}, "sensors.cam": {"topic": "/c", "modality": "image"}}},
    }
    assert parse_node_params(doc) == {"fusion.rate_hz": 7.5, "fusion.top_k": 3,
                                      "frame_id": "base", "sensors.cam.topic": "/c",
                                      "sensors.cam.modality": "image"}
    assert parse_node_params(None) == {}
    with pytest.raises(ConfigError, match="no 'ros__parameters'"):
        parse_node_params({"omnibind_perception": {"fusion": {}}}, source="x.yaml")
    with pytest.raises(ConfigError, match="mapping of node names"):
        parse_node_params([1, 2])


def test_default_config_is_the_nodes() -> None:
    cfg = load_node_config()
    assert cfg.path == default_config_path() and cfg.path.name == "perception.yaml"
    assert [s.name for s in cfg.sensors] == ["camera", "thermal", "event_camera", "tactile",
                                             "microphone", "lidar", "operator"]
    assert cfg.sensor("microphone").encode_rate_hz == 10.0  # -1 = the modality default
    assert cfg.sensor("camera").encode_rate_hz == 0.0
    assert cfg.topics["/sim/lidar/points"].modality == "point_cloud"
    assert (cfg.fusion.rate_hz, cfg.fusion.max_age_s, cfg.fusion.top_k) == (10.0, 1.0, 5)
    assert cfg.bad_samples_to_degrade == 3 and cfg.unknown == [] and cfg.label_names == []


def test_values_defaults_and_relative_topics(tmp_path: Path) -> None:
    labels = _write(tmp_path, "# labels\nwooden mug\nmetal can  # a comment\n", "labels.txt")
    path = _write(tmp_path, """
omnibind_perception:
  ros__parameters:
    sensors: [front, mic]
    bad_samples_to_degrade: 5
    use_sim_time: true
    labels: {file: labels.txt}
    sensors.front: {modality: image, topic: camera/front, expected_rate_hz: 30}
    sensors.mic: {modality: audio, topic: ~/audio}
""")
    cfg = load_node_config(path)
    front, mic = cfg.sensors
    assert (front.topic, front.expected_rate_hz, front.message_type) == (
        "/camera/front", 30.0, "sensor_msgs/msg/Image")
    assert mic.topic == "/omnibind_perception/audio" and mic.encode_rate_hz == 10.0
    assert cfg.fusion.rate_hz == 10.0 and cfg.bad_samples_to_degrade == 5
    assert cfg.label_file == str(labels)  # relative to the config file
    from omnibind_ros.core.labels import read_label_file

    assert read_label_file(cfg.label_file) == ["wooden mug", "metal can"]


@pytest.mark.parametrize("body, message", [
    ("sensors: [cam]\n    sensors.cam: {topic: /c}", "sensors.cam.modality is not set"),
    ("sensors: [cam]\n    sensors.cam: {modality: smell, topic: /c}", "smell"),
    ("fusion: {rate_hz: -1.0}", "fusion.rate_hz must be in"),
    ("sensors: [cam]\n    sensors.cam: {modality: image, topic: /c, message_type: "
     "sensor_msgs/msg/PointCloud2}", "cannot be read from sensor_msgs/msg/PointCloud2"),
    ("sensors: [a, b]\n    sensors.a: {modality: image, topic: /c}\n"
     "    sensors.b: {modality: thermal, topic: /c}", "several sensors on one topic"),
    ("sensors: [cam]\n    sensors.cam: {modality: image, topic: /c, stale_after: 5.0, "
     "lost_after: 2.0}", "lost_after"),
])
def test_bad_values_name_file_and_reason(tmp_path: Path, body: str, message: str) -> None:
    path = _write(tmp_path, f"/**:\n  ros__parameters:\n    {body}\n")
    with pytest.raises(ConfigError, match=message) as err:
        load_node_config(path)
    assert str(path) in str(err.value)


def test_unknown_keys_are_reported_not_fatal(tmp_path: Path) -> None:
    path = _write(tmp_path, """
/**:
  ros__parameters:
    fusion: {rate: 3.0}
    sensors: [cam]
    sensors.cam: {modality: image, topic: /c, colour: red}
    sensors.old: {modality: image, topic: /o}
""")
    cfg = load_node_config(path)
    assert cfg.unknown == ["fusion.rate", "sensors.cam.colour", "sensors.old.modality",
                           "sensors.old.topic"]
    assert [s.name for s in cfg.sensors] == ["cam"]


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_node_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_node_config(_write(tmp_path, "a: [b\n"))
