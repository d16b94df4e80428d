"""PoolSafeExecutor: every callback runs, each ready task is queued once, errors still surface.

The load below (a fast timer and a fast publisher/subscriber pair, callbacks that hold the GIL
for a moment) is what made rclpy 9.x's MultiThreadedExecutor queue thousands of duplicate
tasks in omnibind-bringup; the numbers asserted are its opposite.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import pytest

pytestmark = pytest.mark.ros

NUM_THREADS = 4
RUN_S = 2.0
TIMER_HZ = 200.0


def _busy(seconds: float) -> None:
    """Hold the GIL like a Python callback doing real work."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _spin_for(executor: Any, seconds: float) -> dict[str, int]:
    """Spin on a thread for ``seconds``; sample the pool's backlog meanwhile."""
    worst = {"futures": 0, "queued": 0}
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        worst["futures"] = max(worst["futures"], len(executor._futures))  # noqa: SLF001
        worst["queued"] = max(worst["queued"], executor.queued_count)
        time.sleep(0.01)
    executor.shutdown()
    thread.join(timeout=5.0)
    assert not thread.is_alive()
    return worst


def test_loaded_node_runs_every_callback_without_a_backlog(make_node, rclpy_context) -> None:
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
    from std_msgs.msg import UInt32

    from omnibind_ros.ros.executor import PoolSafeExecutor

    node = make_node("pool_safe_load")
    counts = {"timer": 0, "received": 0}
    pub = node.create_publisher(UInt32, "pool_safe_topic", 10)

    def on_timer() -> None:
        counts["timer"] += 1
        pub.publish(UInt32(data=counts["timer"]))
        _busy(0.0005)

    def on_message(_msg: UInt32) -> None:
        counts["received"] += 1
        _busy(0.0005)

    node.create_timer(1.0 / TIMER_HZ, on_timer, callback_group=MutuallyExclusiveCallbackGroup())
    node.create_subscription(UInt32, "pool_safe_topic", on_message, 10,
                             callback_group=MutuallyExclusiveCallbackGroup())
    executor = PoolSafeExecutor(num_threads=NUM_THREADS, context=rclpy_context)
    executor.add_node(node)
    worst = _spin_for(executor, RUN_S)

    expected = TIMER_HZ * RUN_S
    assert counts["timer"] >= 0.8 * expected, counts
    assert counts["received"] >= 0.8 * counts["timer"], counts
    # Two entities: at most one queued task each, plus the ones being pruned.
    assert worst["queued"] <= 2, worst
    assert worst["futures"] <= 2 * NUM_THREADS, worst


def test_callback_exception_still_reaches_spin(make_node, rclpy_context) -> None:
    from omnibind_ros.ros.executor import PoolSafeExecutor

    node = make_node("pool_safe_error")

    def boom() -> None:
        raise RuntimeError("callback failed on purpose")

    node.create_timer(0.01, boom)
    executor = PoolSafeExecutor(num_threads=2, context=rclpy_context)
    executor.add_node(node)
    try:
        with pytest.raises(RuntimeError, match="on purpose"):
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.05)
    finally:
        executor.shutdown()


def test_a_shutdown_racing_the_wait_set_ends_the_spin_quietly(make_node, rclpy_context,
                                                              monkeypatch) -> None:
    """rclpy raises RCLError when the context dies between its check and building the wait
    set (a Ctrl-C at the wrong moment): quiet once the context is down, raised while it is up."""
    import rclpy
    from rclpy.impl.implementation_singleton import rclpy_implementation

    from omnibind_ros.ros.executor import PoolSafeExecutor

    executor = PoolSafeExecutor(num_threads=2, context=rclpy_context)
    executor.add_node(make_node("pool_safe_race"))

    def dead_context(*args: Any, **kwargs: Any) -> Any:
        raise rclpy_implementation.RCLError("failed to initialize wait set: context not valid")

    monkeypatch.setattr(executor, "wait_for_ready_callbacks", dead_context)
    try:
        with pytest.raises(rclpy_implementation.RCLError):
            executor.spin_once(timeout_sec=0.01)  # the context is fine: a real error
        rclpy.shutdown(context=rclpy_context)
        executor.spin_once(timeout_sec=0.01)  # the context is down: the race, no error
    finally:
        executor.shutdown()
