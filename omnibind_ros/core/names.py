"""The project's own ROS names: node names and the topics it defines, written once.

Plain strings (no rclpy), so the nodes, the simulator, bag recording and evaluation, bringup
and the benchmarks all name the same things the same way. Sensor topics are not here: they
come from the node's parameters (``config/perception.yaml``).
"""
from __future__ import annotations

__all__ = ["CLOCK_TOPIC", "GROUND_TRUTH_TOPIC", "PERCEPTION_NODE", "SCENARIO_EVENT_TOPIC",
           "SIM_SENSORS_NODE"]

#: The perception lifecycle node.
PERCEPTION_NODE = "omnibind_perception"
#: The simulated sensors node.
SIM_SENSORS_NODE = "omnibind_sim_sensors"
#: What the simulated world shows (``omnibind_ros/msg/GroundTruth``).
GROUND_TRUTH_TOPIC = "/omnibind/ground_truth"
#: The simulator's scenario events: unplug, replug, noise (``std_msgs/msg/String``, JSON).
SCENARIO_EVENT_TOPIC = "/omnibind/scenario_event"
#: ROS time under ``use_sim_time`` (``rosgraph_msgs/msg/Clock``).
CLOCK_TOPIC = "/clock"
