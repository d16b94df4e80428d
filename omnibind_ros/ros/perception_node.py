"""``omnibind_perception``: the perception LifecycleNode's entry point.

Run it with a lifecycle manager, or stand-alone with ``autostart: true`` (it then configures and
activates itself)::

    omnibind_perception --ros-args --params-file config/perception.yaml -p autostart:=true

``main`` makes the environment safe (loopback-only DDS discovery) before rclpy is imported, which
is why this module imports no rclpy at module level; ``PerceptionNode`` is loaded lazily from
:mod:`omnibind_ros.ros.perception_lifecycle` (import it only in a process whose environment is
already safe, e.g. a test under test/conftest.py or after ``ensure_safe_ros_env()``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omnibind_ros.ros.env import ensure_safe_ros_env

if TYPE_CHECKING:  # imports rclpy: only lazily at runtime (see __getattr__)
    from omnibind_ros.ros.perception_lifecycle import PerceptionNode

__all__ = ["PerceptionNode", "main"]


def __getattr__(name: str) -> Any:
    if name == "PerceptionNode":
        from omnibind_ros.ros import perception_lifecycle

        return getattr(perception_lifecycle, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(args: list[str] | None = None) -> int:
    """Console entry: spin one PerceptionNode in a multi-threaded executor until shut down."""
    ensure_safe_ros_env()
    from omnibind_ros.core.threads import limit_malloc_arenas

    limit_malloc_arenas(2)  # before any thread exists (core.threads explains why)
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from omnibind_ros.ros.executor import PoolSafeExecutor, spin_until_shutdown
    from omnibind_ros.ros.perception_lifecycle import PerceptionNode

    try:
        with rclpy.init(args=args):
            # Encoders run in the sensors' own worker threads; the executor runs only cheap
            # callbacks, timers and services, so 4 threads keep the fusion tick and the status
            # independent of a burst of sensor callbacks. Built before the node: a SIGINT
            # landing inside an executor's __init__ made its __del__ print a traceback.
            executor = PoolSafeExecutor(num_threads=4)
            node = PerceptionNode()
            executor.add_node(node)
            try:
                if node.get_parameter("autostart").value and not node.autostart():
                    node.get_logger().error("autostart failed; waiting for a lifecycle manager")
                spin_until_shutdown(executor)
            finally:
                executor.shutdown()  # before destroy_node: never spin a destroyed node
                node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
