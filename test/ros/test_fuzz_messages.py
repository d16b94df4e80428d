"""Bad messages of every subscribed type at a live perception node (rclpy in-process).

One node with a sensor per message type (Image, CompressedImage, PointCloud2, EventArray,
AudioChunk, String) runs on the tiny test bundle. Every sensor first goes LIVE on valid data,
then receives a handful of malformed messages of its type (unknown encodings, size and step
mismatches, size claims of 2^32 pixels, truncated JPEG, clouds without x, mismatched event
arrays, a zero sample rate, NaN samples, blank text), then valid data again. Checked, as an
operator would see it on the graph:

* the node keeps spinning and stays active;
* each sensor goes DEGRADED, and its ``SensorStatus.reason`` names the conversion error (never
  an "unexpected" exception);
* the bad-message warning is throttled: one line per sensor per ``WARN_INTERVAL_S`` however
  many bad messages arrive (the node's log lines are recorded by a stand-in logger);
* each sensor is LIVE again once valid data flows.

The random (hypothesis) search over the same types runs without ROS in
``test/core/test_fuzz_pipeline.py``; ``test_perception_node.py`` fires random messages at a
node and checks it survives.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omnibind_ros.core.sensor_worker import WARN_INTERVAL_S
from omnibind_ros.testing import write_test_bundle

pytestmark = pytest.mark.ros

RATE_HZ = 10.0
SENSORS = {  # name -> (modality, topic, message type)
    "camera": ("image", "/fz/camera", "sensor_msgs/msg/Image"),
    "jpeg": ("image", "/fz/jpeg", "sensor_msgs/msg/CompressedImage"),
    "lidar": ("point_cloud", "/fz/lidar", "sensor_msgs/msg/PointCloud2"),
    "events": ("event", "/fz/events", "omnibind_ros/msg/EventArray"),
    "mic": ("audio", "/fz/mic", "omnibind_ros/msg/AudioChunk"),
    "operator": ("text", "/fz/operator", "std_msgs/msg/String"),
}
STATES = {0: "UNKNOWN", 1: "LIVE", 2: "STALE", 3: "LOST", 4: "DISABLED", 5: "DEGRADED"}
RNG = np.random.default_rng(14)


# -- messages

def valid_message(name: str, stamp_s: float) -> Any:
    from std_msgs.msg import String

    from omnibind_ros.core.types import AudioBlock, EventPacket
    from omnibind_ros.ros import conversions as conv

    if name == "camera":
        return conv.numpy_to_image(RNG.integers(0, 255, (32, 32, 3), np.uint8), "rgb8", stamp_s)
    if name == "jpeg":
        return conv.numpy_to_compressed_image(RNG.integers(0, 255, (32, 32, 3), np.uint8),
                                              "jpeg", stamp=stamp_s)
    if name == "lidar":
        points = RNG.normal(0, 0.03, (300, 3)).astype(np.float32) + np.float32([1.5, 0, 0.3])
        return conv.xyz_to_pointcloud2(points, stamp_s)
    if name == "events":
        n = 400
        packet = EventPacket(x=RNG.integers(0, 32, n).astype(np.uint16),
                             y=RNG.integers(0, 32, n).astype(np.uint16),
                             t_ns=np.sort(RNG.integers(0, 20_000_000, n)).astype(np.int64),
                             polarity=RNG.integers(0, 2, n).astype(bool), width=32, height=32)
        return conv.packet_to_event_array(packet, stamp_s)
    if name == "mic":
        block = AudioBlock(RNG.normal(0, 0.1, 1600).astype(np.float32), 16000)
        return conv.block_to_audio_chunk(block, "S16LE", stamp_s)
    return String(data="a wooden mug")


def bad_messages(name: str, stamp_s: float) -> list[Any]:
    """Malformed messages of the sensor's type (each a different fault)."""
    def damaged(**changes: Any) -> Any:
        msg = valid_message(name, stamp_s)
        for key, value in changes.items():
            setattr(msg, key, value)
        return msg

    if name == "camera":
        return [damaged(encoding="bayer_rggb8"), damaged(encoding="yuv422"),
                damaged(data=bytes(10)), damaged(step=7), damaged(height=(1 << 32) - 1),
                damaged(width=0)]
    if name == "jpeg":
        valid = bytes(valid_message(name, stamp_s).data)
        return [damaged(data=valid[:len(valid) // 3]), damaged(data=RNG.bytes(200)),
                damaged(format="h264"), damaged(data=b"")]
    if name == "lidar":
        msg = valid_message(name, stamp_s)
        return [damaged(fields=list(msg.fields)[1:]), damaged(data=bytes(msg.data)[:100]),
                damaged(point_step=0), damaged(width=0),
                damaged(data=np.full(len(msg.data) // 4, np.nan, np.float32).tobytes())]
    if name == "events":
        return [damaged(polarity=[2] * 400), damaged(x=list(range(399))), damaged(width=0),
                damaged(width=(1 << 32) - 1, height=(1 << 32) - 1), damaged(x=[40] * 400)]
    if name == "mic":
        nan = np.full(1600, np.nan, np.float32).tobytes()
        return [damaged(sample_rate=0), damaged(encoding="S24LE"), damaged(data=bytes(3201)),
                damaged(encoding="F32LE", data=nan), damaged(channels=0)]
    from std_msgs.msg import String

    return [String(data=""), String(data="   "), String(data="\n\t ")]


# -- harness

class LogLines:
    """Stands in for the node's logger and records its lines (not forwarded: rclpy keys
    severity and throttling on a log call's call site, which a forwarding wrapper would
    share between all of the node's calls)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _record(self, message: str, *args: Any, **kwargs: Any) -> None:
        self.lines.append(message)

    debug = info = warning = warn = error = fatal = _record


class Harness:
    """A PerceptionNode (its log recorded) and a helper node (publishers, status listener)."""

    def __init__(self, ctx: Any, bundle_dir: Path) -> None:
        from omnibind_ros.msg import SensorStatusArray
        from rclpy.node import Node
        from rclpy.parameter import Parameter

        from omnibind_ros.ros import qos
        from omnibind_ros.ros.executor import PoolSafeExecutor
        from omnibind_ros.ros.interfaces import message_class
        from omnibind_ros.ros.perception_node import PerceptionNode

        overrides = [Parameter("bundle_path", value=str(bundle_dir)),
                     Parameter("fusion.rate_hz", value=10.0),
                     Parameter("sensors", Parameter.Type.STRING_ARRAY, list(SENSORS))]
        for name, (modality, topic, mtype) in SENSORS.items():
            rate = 0.0 if modality == "text" else RATE_HZ
            overrides += [Parameter(f"sensors.{name}.modality", value=modality),
                          Parameter(f"sensors.{name}.topic", value=topic),
                          Parameter(f"sensors.{name}.message_type", value=mtype),
                          Parameter(f"sensors.{name}.expected_rate_hz", value=rate)]
        self.node = PerceptionNode(context=ctx, parameter_overrides=overrides)
        self.log = LogLines()
        self.node.get_logger = lambda: self.log
        self.helper = Node("fuzz_messages_helper", context=ctx)
        self.statuses: list[Any] = []
        self.helper.create_subscription(SensorStatusArray, "/omnibind_perception/sensor_status",
                                        self.statuses.append, qos.SENSOR_STATUS)
        self.pubs = {name: self.helper.create_publisher(message_class(mtype), topic,
                                                        qos.SENSOR_RELIABLE)
                     for name, (_, topic, mtype) in SENSORS.items()}
        self.executor = PoolSafeExecutor(num_threads=4, context=ctx)
        self.executor.add_node(self.node)
        self.executor.add_node(self.helper)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def now(self) -> float:
        return self.helper.get_clock().now().nanoseconds * 1e-9

    def publish_valid(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for name, pub in self.pubs.items():
                pub.publish(valid_message(name, self.now()))
            time.sleep(1.0 / RATE_HZ)

    def status(self, name: str) -> Any:
        for array in reversed(self.statuses):
            for status in array.sensors:
                if status.name == name:
                    return status
        return None

    def state(self, name: str) -> str:
        status = self.status(name)
        return "" if status is None else STATES[status.state]

    def wait(self, cond: Callable[[], bool], timeout: float, step: Callable[[], None]) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            step()
        return cond()

    def warnings(self, name: str) -> list[str]:
        prefix = f"sensor {name}: bad message"
        return [line for line in list(self.log.lines) if line.startswith(prefix)]

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(5.0)
        self.node.destroy_node()
        self.helper.destroy_node()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    ctx = Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    h = Harness(ctx, write_test_bundle(tmp_path_factory.mktemp("fuzz_node") / "tiny"))
    try:
        assert h.node.autostart()
        yield h
    finally:
        h.close()
        rclpy.shutdown(context=ctx)


# The errors each sensor's bad messages raise (the reason names the last one).
EXPECTED_ERRORS = {
    "camera": ("UnsupportedEncodingError", "InvalidShapeError", "InvalidValueError",
               "EmptyInputError"),
    "jpeg": ("ConversionError", "UnsupportedEncodingError", "EmptyInputError"),
    "lidar": ("InvalidShapeError", "EmptyInputError", "NonFiniteInputError"),
    "events": ("InvalidValueError", "InvalidShapeError"),
    "mic": ("InvalidValueError", "UnsupportedEncodingError", "InvalidShapeError",
            "NonFiniteInputError"),
    "operator": ("EmptyInputError",),
}


def test_bad_messages_of_every_type_degrade_warn_throttled_and_recover(harness) -> None:
    from lifecycle_msgs.msg import State

    h = harness
    assert h.wait(lambda: all(h.state(n) == "LIVE" for n in SENSORS), 20.0,
                  lambda: h.publish_valid(0.1)), {n: h.state(n) for n in SENSORS}
    bad_before = {n: h.node.sensor_worker(n).bad for n in SENSORS}
    start = time.monotonic()
    sent = dict.fromkeys(SENSORS, 0)

    def publish_bad() -> None:  # one message per sensor and period, cycling through the faults
        for name, pub in h.pubs.items():
            faults = bad_messages(name, h.now())
            pub.publish(faults[sent[name] % len(faults)])
            sent[name] += 1
        time.sleep(1.0 / RATE_HZ)

    for _ in range(12):  # every fault of every type at least twice
        publish_bad()
    assert h.wait(lambda: all(h.state(n) == "DEGRADED" for n in SENSORS), 10.0, publish_bad), \
        {n: (h.state(n), h.status(n).reason) for n in SENSORS}
    elapsed = time.monotonic() - start
    assert h.thread.is_alive()
    assert h.node._state_machine.current_state[0] == State.PRIMARY_STATE_ACTIVE
    for name in SENSORS:
        reason = h.status(name).reason
        assert "bad samples in a row" in reason, (name, reason)
        assert "unexpected" not in reason, (name, reason)
        assert any(error in reason for error in EXPECTED_ERRORS[name]), (name, reason)
        received_bad = h.node.sensor_worker(name).bad - bad_before[name]
        assert received_bad >= 6, (name, received_bad, sent[name])
    # Throttled: one warning per sensor per WARN_INTERVAL_S, not one per bad message.
    allowed = math.ceil(elapsed / WARN_INTERVAL_S) + 1
    for name in SENSORS:
        lines = h.warnings(name)
        assert 1 <= len(lines) <= allowed, (name, len(lines), allowed, sent[name])
        assert "unexpected" not in lines[0] and "bad message" in lines[0]

    assert h.wait(lambda: all(h.state(n) == "LIVE" for n in SENSORS), 15.0,
                  lambda: h.publish_valid(0.1)), {n: (h.state(n), h.status(n).reason)
                                                  for n in SENSORS}
    assert h.thread.is_alive()
