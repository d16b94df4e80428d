"""A borrowed config with several unusable sensors: every one named by its config key, with what
the bag and the bundle offer instead (omnibind_ros.bag.sensor_check), offline and live alike."""
from __future__ import annotations

from pathlib import Path

import pytest
from foreign_bag import CAMERA, CHATTER, LIDAR, foreign_config, write_foreign_bag

from omnibind_ros.testing import write_test_bundle

pytestmark = pytest.mark.ros  # ros.params / conversions import rclpy's types

BAG_TOPICS = {
    CAMERA: ("sensor_msgs/msg/Image", 40),
    "/cam/left/compressed": ("sensor_msgs/msg/CompressedImage", 40),
    "/flir/image": ("sensor_msgs/msg/Image", 30),
    LIDAR: ("sensor_msgs/msg/PointCloud2", 40),
    "/audio/audio": ("audio_common_msgs/msg/AudioData", 200),
    CHATTER: ("std_msgs/msg/String", 8),
    "/omnibind/ground_truth": ("omnibind_ros/msg/GroundTruth", 8),
}

PC2 = "sensor_msgs/msg/PointCloud2"
BORROWED = f"""
    sensors.thermal: {{modality: thermal, topic: /robot/thermal/image}}
    sensors.lidar2: {{modality: point_cloud, topic: /velodyne_points_2}}
    sensors.depth: {{modality: point_cloud, topic: /flir/image, message_type: {PC2}}}
    sensors.mic: {{modality: audio, topic: /audio/audio,
                  message_type: audio_common_msgs/msg/AudioData}}
    sensors.skin: {{modality: tactile, topic: /robot/skin, message_type: {PC2}}}
    sensors.nose: {{modality: smell, topic: /robot/chatter}}
    sensors.spare: {{modality: image, topic: /not/recorded, enabled: false}}
"""
SENSORS = ("front", "velo", "thermal", "lidar2", "depth", "mic", "skin", "nose", "spare")


def _check(tmp_path: Path, modalities: list[str]) -> object:
    from omnibind_ros.bag.config import load_node_config
    from omnibind_ros.bag.sensor_check import check_sensors

    cfg = load_node_config(foreign_config(tmp_path / "p.yaml", ["a"], BORROWED, SENSORS),
                           strict=False)
    return check_sensors(cfg, BAG_TOPICS, modalities, bundle="bundle b",
                         used=("/omnibind/ground_truth",))


def test_every_unusable_sensor_is_named_with_what_would_work(tmp_path: Path) -> None:
    check = _check(tmp_path, ["image", "point_cloud", "tactile", "text", "thermal"])
    by_key = {p.key: p for p in check.problems}
    # (spare, disabled, on a topic the bag lacks: not named; its image encoder exists)
    # every sensor but the two usable ones and the disabled one, in config order, by its key
    assert list(by_key) == ["sensors.thermal.topic", "sensors.lidar2.topic",
                            "sensors.depth.message_type", "sensors.mic.modality",
                            "sensors.skin.message_type", "sensors.nose.modality"]
    assert check.fed == ("front", "velo")
    assert [p.fatal for p in check.problems] == [False, False, False, True, True, True]

    # a topic the bag lacks: the bag's topics of a type the modality reads (a taken one not)
    thermal = by_key["sensors.thermal.topic"]
    assert thermal.problem == "/robot/thermal/image is not in the bag"
    assert thermal.fix == ("bag topics a thermal sensor can read: /cam/left/compressed "
                           "(sensor_msgs/msg/CompressedImage, with sensors.thermal.message_type:"
                           " sensor_msgs/msg/CompressedImage), /flir/image "
                           "(sensor_msgs/msg/Image)")
    # the LiDAR topic is velo's; depth images and compressedDepth feed a point cloud too
    assert by_key["sensors.lidar2.topic"].fix == (
        "bag topics a point_cloud sensor can read: /cam/left/compressed "
        "(sensor_msgs/msg/CompressedImage, with sensors.lidar2.message_type: "
        "sensor_msgs/msg/CompressedImage), /flir/image (sensor_msgs/msg/Image, with "
        "sensors.lidar2.message_type: sensor_msgs/msg/Image)")
    # a topic of another type the modality reads: the message_type to set
    depth = by_key["sensors.depth.message_type"]
    assert depth.problem == ("the bag's /flir/image is sensor_msgs/msg/Image, the sensor is "
                             "configured for sensor_msgs/msg/PointCloud2")
    assert depth.fix == "set sensors.depth.message_type: sensor_msgs/msg/Image"
    # the bundle lacks the modality: the node would refuse; the bundle's modalities
    mic = by_key["sensors.mic.modality"]
    assert mic.problem == "bundle b has no audio encoder (the node refuses to configure)"
    assert mic.fix.startswith("its modalities: image, point_cloud, tactile, text, thermal;")
    # values the node rejects: its reason, and what the bag offers for that key
    skin = by_key["sensors.skin.message_type"]
    assert "a tactile sensor cannot be read from sensor_msgs/msg/PointCloud2" in skin.problem
    assert skin.fix.startswith("bag topics a tactile sensor can read: /cam/left/compressed")
    nose = by_key["sensors.nose.modality"]
    assert nose.problem.startswith("unknown modality 'smell'")
    assert nose.fix == ("the bundle's modalities: image, point_cloud, tactile, text, thermal; "
                        "the bag's /robot/chatter (std_msgs/msg/String) is read by: text")

    warning = check.warning()
    assert warning.startswith("3 configured sensor(s) receive nothing from this bag")
    assert all(key in warning for key in ("sensors.thermal.topic", "sensors.lidar2.topic",
                                          "sensors.depth.message_type"))
    assert "sensors.mic" not in warning  # fatal ones are the error's, not a warning's


def test_a_disabled_sensor_still_needs_its_encoder(tmp_path: Path) -> None:
    """The node builds every configured sensor's pipeline, enabled or not (it may be enabled at
    run time): a disabled sensor of a modality the bundle lacks is fatal too."""
    check = _check(tmp_path, ["point_cloud", "tactile", "text", "thermal", "audio"])
    spare = next(p for p in check.problems if p.sensor == "spare")
    assert (spare.key, spare.fatal) == ("sensors.spare.modality", True)
    assert spare.problem == "bundle b has no image encoder (the node refuses to configure)"


def test_a_clean_config_has_no_problem(tmp_path: Path) -> None:
    from omnibind_ros.bag.config import load_node_config
    from omnibind_ros.bag.sensor_check import check_sensors

    cfg = load_node_config(foreign_config(tmp_path / "p.yaml", ["a"]))
    check = check_sensors(cfg, BAG_TOPICS, ["image", "point_cloud"])
    assert check.problems == () and check.fed == ("front", "velo")
    assert check.warning() is None


def test_strict_load_names_every_invalid_sensor(tmp_path: Path) -> None:
    from omnibind_ros.bag.config import ConfigError, load_node_config

    path = foreign_config(tmp_path / "p.yaml", ["a"], BORROWED, SENSORS)
    with pytest.raises(ConfigError) as err:
        load_node_config(path)
    text = str(err.value)
    assert text.startswith(f"{path}: 2 sensors are invalid:\n")
    assert "  sensors.skin.message_type: a tactile sensor cannot be read from" in text
    assert "  sensors.nose.modality: unknown modality 'smell'" in text
    cfg = load_node_config(path, strict=False)
    assert set(cfg.invalid) == {"skin", "nose"}
    assert [s.name for s in cfg.sensors] == ["front", "velo", "thermal", "lidar2", "depth",
                                             "mic", "spare"]


# -- the evaluations -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bag_and_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sensor_check")
    bag = root / "bag"
    write_foreign_bag(bag, duration_s=1.0, damaged_at_s=None)
    return {"root": root, "bag": bag,
            "bundle": write_test_bundle(root / "tiny"),
            "no_audio": write_test_bundle(root / "img_pc", modalities=("image", "point_cloud"))}


def _borrowed(root: Path) -> Path:
    extra = ("    sensors.thermal: {modality: thermal, topic: /robot/thermal/image}\n"
             "    sensors.mic: {modality: audio, topic: /audio/audio}\n"
             "    sensors.skin: {modality: tactile, topic: /robot/skin, message_type: "
             "sensor_msgs/msg/PointCloud2}\n")
    return foreign_config(root / "borrowed.yaml", ["a", "b"], extra,
                          ("front", "velo", "thermal", "mic", "skin"))


@pytest.mark.parametrize("mode", ["offline", "live"])
def test_evaluation_refuses_once_naming_every_sensor(bag_and_bundles, mode) -> None:
    """Offline and live (before any ROS starts) raise one ConfigError with all three."""
    from omnibind_ros.bag.config import ConfigError

    d = bag_and_bundles
    if mode == "offline":
        from omnibind_ros.bag.offline import evaluate_offline as evaluate
    else:
        from omnibind_ros.bag.live import evaluate_live as evaluate
    with pytest.raises(ConfigError) as err:
        evaluate(d["bag"], bundle=d["no_audio"], config=_borrowed(d["root"]), progress=False)
    lines = str(err.value).splitlines()
    assert "3 configured sensor(s) cannot be used" in lines[0]
    assert "bundle img_pc (3 of them the node would refuse)" in lines[0]
    assert [line.split(":")[0] for line in lines[1:]] == [
        "  - sensors.thermal.modality", "  - sensors.mic.modality",
        "  - sensors.skin.message_type"]
    assert "its modalities: image, point_cloud, text" in lines[1]
    assert "its modalities: image, point_cloud, text" in lines[2]


def test_offline_warns_once_about_the_sensors_the_bag_does_not_feed(bag_and_bundles,
                                                                     tmp_path) -> None:
    from omnibind_ros.bag.offline import evaluate_offline
    from omnibind_ros.bag.report import write_report
    from omnibind_ros.bag.scoring import score

    d = bag_and_bundles
    extra = ("    sensors.thermal: {modality: thermal, topic: /robot/thermal/image}\n"
             "    sensors.depth: {modality: point_cloud, topic: /velodyne_points, "
             "message_type: sensor_msgs/msg/Image}\n")
    config = foreign_config(tmp_path / "p.yaml", ["a", "b"], extra,
                            ("front", "thermal", "depth"))
    result = evaluate_offline(d["bag"], bundle=d["bundle"], config=config, processes=0,
                              progress=False)
    (warning,) = result.warnings
    assert warning.startswith("2 configured sensor(s) receive nothing from this bag")
    # the camera topic is the front sensor's: not offered
    assert "sensors.thermal.topic: /robot/thermal/image is not in the bag; the bag has no " \
           "topic a thermal sensor can read" in warning
    assert ("sensors.depth.message_type: the bag's /velodyne_points is "
            "sensor_msgs/msg/PointCloud2, the sensor is configured for sensor_msgs/msg/Image; "
            "set sensors.depth.message_type: sensor_msgs/msg/PointCloud2") in warning
    assert any(t.answered for t in result.ticks)  # the camera still answers
    md = write_report(result, score(result), tmp_path / "r", plots=False)["markdown"]
    assert f"> **Warning:** {warning}" in md.read_text()


def test_no_mapped_topic_lists_each_sensor(bag_and_bundles, tmp_path) -> None:
    from omnibind_ros.bag.offline import BagEvalError, evaluate_offline

    d = bag_and_bundles
    extra = "    sensors.cam: {modality: image, topic: /robot/front/image}\n"
    config = foreign_config(tmp_path / "p.yaml", ["a"], extra, ("cam",))
    with pytest.raises(BagEvalError) as err:
        evaluate_offline(d["bag"], bundle=d["bundle"], config=config, progress=False)
    text = str(err.value)
    assert text.startswith("no topic of bag") and "Per sensor:\n" in text
    assert text.endswith("  - sensors.cam.topic: /robot/front/image is not in the bag; bag "
                         f"topics an image sensor can read: {CAMERA} (sensor_msgs/msg/Image)")
