"""Clock jumps at a live perception node: a looping bag under use_sim_time, a clock stepped on.

The node runs on sim time; a helper publishes ``/clock`` (100 Hz) and a camera and a LiDAR
(10 Hz) stamped with that clock, the way ``ros2 bag play --loop --clock`` does. Two jumps:

* **loop**: the clock and the stamps jump back 5 s (the bag starts over). The monitor clears
  every sensor's history (``core/availability.py``), so each sensor may go LIVE -> UNKNOWN and
  back to LIVE once; messages of the new timeline must not be refused as "out of order", and
  no sensor may go STALE, LOST or DEGRADED.
* **step**: the clock and the stamps jump 30 s forward together (a system clock stepped by
  NTP, a simulator skipping ahead). At most the one period before the next message sees old
  samples: each sensor may report at most one excursion, never a storm of them.

Transitions are counted from the node's own log lines ("sensor X: A -> B (reason)").
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omnibind_ros.testing import write_test_bundle

pytestmark = pytest.mark.ros

S = 1_000_000_000
START_NS = 1_000 * S
SENSORS = {"camera": ("image", "/cj/camera", "sensor_msgs/msg/Image"),
           "lidar": ("point_cloud", "/cj/lidar", "sensor_msgs/msg/PointCloud2")}
TRANSITION = re.compile(r"^sensor (\w+): (\w+) -> (\w+)")


class SimWorld:
    """Publishes /clock and the sensors from one thread; :meth:`jump` moves the clock."""

    def __init__(self, node: Any) -> None:
        from rosgraph_msgs.msg import Clock

        from omnibind_ros.ros import qos
        from omnibind_ros.ros.interfaces import message_class

        self.node = node
        self.clock_pub = node.create_publisher(Clock, "/clock", 10)
        self.pubs = {name: (node.create_publisher(message_class(mtype), topic, qos.SENSOR_DATA),
                            modality) for name, (modality, topic, mtype) in SENSORS.items()}
        self.rng = np.random.default_rng(2)
        self.offset_ns = START_NS - time.monotonic_ns()  # sim time = monotonic + offset
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def sim_ns(self) -> int:
        with self.lock:
            return time.monotonic_ns() + self.offset_ns

    def jump(self, by_ns: int) -> None:
        with self.lock:
            self.offset_ns += by_ns

    def _message(self, modality: str, stamp_s: float) -> Any:
        from omnibind_ros.ros import conversions as conv

        if modality == "image":
            return conv.numpy_to_image(self.rng.integers(0, 255, (32, 32, 3), np.uint8), "rgb8",
                                       stamp_s)
        points = self.rng.normal(0, 0.03, (300, 3)).astype(np.float32) + np.float32([1.5, 0, .3])
        return conv.xyz_to_pointcloud2(points, stamp_s)

    def _run(self) -> None:
        from builtin_interfaces.msg import Time
        from rosgraph_msgs.msg import Clock

        tick = 0
        while not self.stop.wait(0.01):
            now = self.sim_ns()
            self.clock_pub.publish(Clock(clock=Time(sec=now // S, nanosec=now % S)))
            if tick % 10 == 0:
                for pub, modality in self.pubs.values():
                    pub.publish(self._message(modality, now / S))
            tick += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5.0)


class TransitionLog:
    """Stands in for the node's logger: records every line and parses the state transitions.

    Lines are not forwarded: rclpy keys severity and throttling on a log call's call site, so a
    wrapper forwarding from one line breaks on the node's first throttled call.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _record(self, message: str, *args: Any, **kwargs: Any) -> None:
        self.lines.append(message)

    debug = info = warning = warn = error = fatal = _record

    def transitions(self, since: int = 0) -> list[tuple[str, str, str, str]]:
        out = []
        for line in self.lines[since:]:
            match = TRANSITION.match(line)
            if match:
                out.append((*match.groups(), line))
        return out


@pytest.fixture
def running(tmp_path: Path) -> Any:
    import rclpy
    from rclpy.context import Context
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.signals import SignalHandlerOptions

    from omnibind_ros.ros.executor import PoolSafeExecutor
    from omnibind_ros.ros.perception_node import PerceptionNode

    bundle = write_test_bundle(tmp_path / "tiny", modalities=("image", "point_cloud"))
    overrides = [Parameter("use_sim_time", value=True),
                 Parameter("bundle_path", value=str(bundle)),
                 Parameter("fusion.rate_hz", value=10.0),
                 Parameter("sensors", Parameter.Type.STRING_ARRAY, list(SENSORS))]
    for name, (modality, topic, mtype) in SENSORS.items():
        overrides += [Parameter(f"sensors.{name}.modality", value=modality),
                      Parameter(f"sensors.{name}.topic", value=topic),
                      Parameter(f"sensors.{name}.message_type", value=mtype),
                      # Half the published rate and 5 periods to STALE (1 s): load on a
                      # 2-core machine (gaps of 0.3 s) must not look like a jump's effect.
                      Parameter(f"sensors.{name}.expected_rate_hz", value=5.0),
                      Parameter(f"sensors.{name}.stale_after", value=5.0)]
    ctx = Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    node = PerceptionNode(context=ctx, parameter_overrides=overrides)
    log = TransitionLog()
    node.get_logger = lambda: log
    helper = Node("clock_jumps_helper", context=ctx)
    executor = PoolSafeExecutor(num_threads=4, context=ctx)
    executor.add_node(node)
    executor.add_node(helper)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    world = SimWorld(helper)
    try:
        assert node.autostart()
        yield node, world, log
    finally:
        world.close()
        executor.shutdown()
        spin.join(5.0)
        node.destroy_node()
        helper.destroy_node()
        rclpy.shutdown(context=ctx)


def wait_for(cond: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def states(node: Any) -> dict[str, str]:
    return {h.name: h.state.name for h in node.engine.monitor.health()}


def fused(node: Any) -> set[str]:
    result = node.engine.last_result
    return set() if result is None else set(result.sensors)


def settle(node: Any, seconds: float = 8.0) -> None:
    assert wait_for(lambda: set(states(node).values()) == {"LIVE"} and fused(node)
                    == set(SENSORS), seconds), [(h.name, h.state.name, h.reason)
                                                for h in node.engine.monitor.health()]


@pytest.mark.parametrize("jump_s, allowed", [
    (-5.0, {("LIVE", "UNKNOWN"), ("UNKNOWN", "LIVE")}),  # a bag loop: history cleared once
    (+30.0, {("LIVE", "STALE"), ("LIVE", "LOST"), ("STALE", "LIVE"), ("LOST", "LIVE")}),
], ids=["bag loop back 5 s", "clock step forward 30 s"])
def test_a_clock_jump_causes_no_transition_storm(running, jump_s: float,
                                                 allowed: set[tuple[str, str]]) -> None:
    node, world, log = running
    settle(node)
    time.sleep(1.0)  # a steady second: nothing changes while nothing happens
    before = len(log.lines)
    assert log.transitions(before) == []
    world.jump(round(jump_s * S))
    time.sleep(3.0)  # 30 periods of each sensor on the new timeline
    settle(node)
    after = log.transitions(before)
    print(f"jump {jump_s:+.0f} s: {len(after)} transitions: {[line for *_, line in after]}")
    for name in SENSORS:
        mine = [(old, new) for sensor, old, new, _ in after if sensor == name]
        assert set(mine) <= allowed, [line for *_, line in after] + log.lines[before:]
        assert len(mine) <= 2, [line for *_, line in after]  # one excursion and back at most
    bad = [line for line in log.lines[before:] if "bad message" in line]
    assert len(bad) <= len(SENSORS), bad  # at most a message in flight per sensor
    assert not any(new in ("STALE", "LOST", "DEGRADED") for _, _, new, _ in after) \
        or jump_s > 0, [line for *_, line in after]
