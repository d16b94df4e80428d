"""Command-line tools: bringup, simulated sensors, bag record/evaluation, benchmarks.

Every tool that creates ROS nodes calls ``omnibind_ros.ros.env.ensure_safe_ros_env()`` first,
before anything imports rclpy (loopback-only discovery, temporary log dir).
"""
