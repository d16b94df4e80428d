"""``~/annotated_image``: drawn only while subscribed, at a bounded rate, showing the newest
camera frame and the current answer (which changes the picture)."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omnibind_ros.core.availability import SensorHealth, SensorState
from omnibind_ros.core.fusion import FusionResult

TOPIC = "/omnibind_perception/annotated_image"
BLUE = (20, 40, 230)


def _healths() -> list[SensorHealth]:
    return [SensorHealth("camera", "image", "/cam", SensorState.LIVE, 10.0, 10.0, 0.05, 1, True,
                         ""),
            SensorHealth("lidar", "point_cloud", "/lidar", SensorState.LOST, 0.0, 10.0,
                         float("nan"), 0, False, "no publisher")]


def _answer(label: str, score: float = 0.8) -> FusionResult:
    return FusionResult(tick_ns=1, best_label=label, best_score=score, top_labels=(label,),
                        top_scores=(score,), sensors=("camera",), modalities=("image",))


# -- drawing (no ROS) -----------------------------------------------------------------------------

def test_picture_changes_with_the_answer_and_keeps_the_frame() -> None:
    from omnibind_ros.ros.annotation import render_annotation

    frame = np.zeros((120, 160, 3), np.uint8)
    frame[:] = BLUE
    a = render_annotation(frame, _answer("wooden mug"), _healths(), width=320, source="camera")
    b = render_annotation(frame, _answer("metal can"), _healths(), width=320, source="camera")
    none = render_annotation(frame, FusionResult(tick_ns=1, no_answer_reason="no sensor is live"),
                             _healths(), width=320, source="camera")
    assert a.shape == b.shape and a.shape[1] == 320 and a.dtype == np.uint8
    banner = slice(0, 40)
    assert (a[banner] != b[banner]).any(), "another answer must draw another banner"
    assert (a[banner] != none[banner]).any()
    # the frame is scaled to the width and shows between banner and sensor rows
    assert tuple(a[120, 160]) == BLUE
    # another confidence draws another bar
    low = render_annotation(frame, _answer("wooden mug", 0.2), _healths(), width=320,
                            source="camera")
    assert (a[banner] != low[banner]).any()


def test_sensor_states_and_a_missing_frame_are_drawn() -> None:
    from omnibind_ros.ros.annotation import STATE_COLOURS, render_annotation

    image = render_annotation(None, None, _healths(), width=640)
    assert image.shape[1] == 640
    for state in (SensorState.LIVE, SensorState.LOST):  # the rows' state boxes
        colour = np.array(STATE_COLOURS[state], np.uint8)
        assert (image == colour).all(axis=2).sum() > 50, state


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "mono16", "rgba8"])
def test_frames_of_every_camera_encoding_become_rgb8(encoding: str) -> None:
    pytest.importorskip("rclpy")
    from omnibind_ros.ros.annotation import frame_to_rgb8
    from omnibind_ros.ros.conversions import image_to_numpy, numpy_to_image

    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 2] = 200  # blue
    array = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "mono8": rgb[..., 2],
             "mono16": rgb[..., 2].astype(np.uint16) * 100 + np.arange(6, dtype=np.uint16),
             "rgba8": np.dstack([rgb, np.full((4, 6), 255, np.uint8)])}[encoding]
    decoded = image_to_numpy(numpy_to_image(np.ascontiguousarray(array), encoding))
    out = frame_to_rgb8(decoded.image, decoded.channel_order)
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    if encoding in ("rgb8", "bgr8", "rgba8"):
        assert (out == rgb).all()


# -- in the node ----------------------------------------------------------------------------------

@pytest.fixture
def harness(make_node: Callable[..., Any], rclpy_context: Any,
            tiny_bundle_dir: Path) -> Iterator[Any]:
    from rclpy.parameter import Parameter

    from omnibind_ros.ros.executor import PoolSafeExecutor
    from omnibind_ros.ros.perception_node import PerceptionNode

    node = make_node("omnibind_perception", node_class=PerceptionNode, parameter_overrides=[
        Parameter("bundle_path", value=str(tiny_bundle_dir)),
        Parameter("sensors", Parameter.Type.STRING_ARRAY, ["camera"]),
        Parameter("sensors.camera.modality", value="image"),
        Parameter("sensors.camera.topic", value="camera/image_raw"),
        Parameter("sensors.camera.expected_rate_hz", value=10.0),
        Parameter("labels.names", Parameter.Type.STRING_ARRAY, ["wooden mug"]),
        Parameter("annotated_image.rate_hz", value=20.0),
        Parameter("annotated_image.width", value=320)])
    helper = make_node("annotated_image_test")
    executor = PoolSafeExecutor(num_threads=3, context=rclpy_context)
    executor.add_node(node)
    executor.add_node(helper)
    assert node.autostart()
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield node, helper
    executor.shutdown()
    thread.join(5.0)


def _publish_camera(helper: Any, stop: threading.Event) -> threading.Thread:
    from sensor_msgs.msg import Image

    from omnibind_ros.ros import qos
    from omnibind_ros.ros.conversions import numpy_to_image

    pub = helper.create_publisher(Image, "camera/image_raw", qos.SENSOR_DATA)
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:] = BLUE

    def run() -> None:
        while not stop.is_set():
            now = helper.get_clock().now().nanoseconds * 1e-9
            pub.publish(numpy_to_image(frame, "rgb8", now, "camera_frame"))
            time.sleep(0.05)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait(cond: Callable[[], Any], timeout: float = 10.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end and not cond():
        time.sleep(0.05)
    return cond()


@pytest.mark.ros
def test_rendered_only_while_subscribed_and_shows_the_answer(harness: Any) -> None:
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from omnibind_ros.ros.annotated_image import ANNOTATED_IMAGE_QOS
    from omnibind_ros.ros.conversions import image_to_numpy

    node, helper = harness
    annotated = node._annotated
    stop = threading.Event()
    camera = _publish_camera(helper, stop)
    try:
        assert _wait(lambda: node.engine.last_result is not None
                     and node.engine.last_result.answered)
        time.sleep(0.5)  # 10 timer periods with nobody watching
        assert annotated.renders == 0, "rendered without a subscriber"

        frames: list[Any] = []
        sub = helper.create_subscription(Image, TOPIC, frames.append, ANNOTATED_IMAGE_QOS)
        assert _wait(lambda: len(frames) >= 3), "no annotated frames with a subscriber"
        msg = frames[-1]
        assert (msg.encoding, msg.width) == ("rgb8", 320)
        assert msg.header.frame_id == "camera_frame"  # stamped as the camera frame it shows
        first = image_to_numpy(msg).image.copy()
        middle = first[first.shape[0] // 3, msg.width // 2]
        assert tuple(middle) == BLUE, "the newest camera frame is the picture"

        # another answer, another picture
        node.set_parameters([Parameter("labels.names", Parameter.Type.STRING_ARRAY,
                                       ["metal can"])])
        assert _wait(lambda: node.engine.last_result.best_label == "metal can")
        count = len(frames)
        assert _wait(lambda: len(frames) >= count + 2)
        second = image_to_numpy(frames[-1]).image
        assert second.shape == first.shape and (second[:40] != first[:40]).any()

        # the rate bounds it: 20 Hz at most, whatever the camera does
        start, t0 = annotated.renders, time.monotonic()
        time.sleep(1.0)
        assert annotated.renders - start <= 20 * (time.monotonic() - t0) + 2

        helper.destroy_subscription(sub)
        assert _wait(lambda: annotated.publisher.get_subscription_count() == 0)
        time.sleep(0.2)
        settled = annotated.renders
        time.sleep(0.5)
        assert annotated.renders == settled, "still rendering after the viewer left"
    finally:
        stop.set()
        camera.join(2.0)


@pytest.mark.ros
def test_rate_zero_turns_it_off_and_bad_values_are_refused(harness: Any) -> None:
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from omnibind_ros.ros.annotated_image import ANNOTATED_IMAGE_QOS

    node, helper = harness
    refused = node.set_parameters([Parameter("annotated_image.rate_hz", value=500.0)])[0]
    assert not refused.successful and "annotated_image.rate_hz" in refused.reason
    descriptor = node.describe_parameter("annotated_image.rate_hz")
    assert descriptor.description and descriptor.floating_point_range
    assert node.set_parameters([Parameter("annotated_image.rate_hz", value=0.0)])[0].successful
    frames: list[Any] = []
    helper.create_subscription(Image, TOPIC, frames.append, ANNOTATED_IMAGE_QOS)
    time.sleep(0.6)
    assert node._annotated.renders == 0 and frames == []
    assert node.set_parameters([Parameter("annotated_image.rate_hz", value=10.0)])[0].successful
    assert _wait(lambda: len(frames) >= 1), "rate back above 0: frames again"
