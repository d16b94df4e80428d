"""Thin rclpy glue: message conversions, QoS profiles, parameter handling, nodes.

The modules here import rclpy and message packages; this ``__init__`` does not, so that
``omnibind_ros.ros.env`` (which must run *before* rclpy is imported) can be imported from
anywhere. Keep it that way: import submodules explicitly.
"""
