"""Bring up omnibind perception, optionally with the simulated hot-pluggable sensors.

    ros2 launch omnibind_ros perception.launch.py
    ros2 launch omnibind_ros perception.launch.py sim:=false namespace:=robot1 \
        params_file:=/path/to/my_perception.yaml backend:=tensorrt
    ros2 launch omnibind_ros perception.launch.py scenario_file:=hotplug_demo.yaml \
        large_messages:=true
    ros2 launch omnibind_ros perception.launch.py sim:=false discovery_range:=SUBNET

Starts ``omnibind_perception`` (a lifecycle node; ``autostart:=true`` lets it configure and
activate itself, ``autostart:=false`` leaves that to a lifecycle manager) and, with
``sim:=true``, ``omnibind_sim_sensors`` streaming the simulated world on the topics the default
perception config subscribes to. Both run in ``namespace``: the default configs name the sensor
topics relatively (``sim/camera/image_raw``), so ``namespace:=robot1`` moves the simulated
sensors and the perception node's subscriptions to ``/robot1/sim/...`` together.

DDS discovery: the nodes keep it on this machine (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``,
omnibind_ros/ros/env.py) and log the effective settings at start-up. A robot whose nodes run
on several hosts opens it here: ``discovery_range:=SUBNET`` or ``static_peers:="10.0.0.2;..."``
(both also set ``OMNIBIND_KEEP_DISCOVERY_RANGE=1``, so the nodes keep what launch set).

Every launch import happens inside :func:`generate_launch_description`, so the file can be
imported (and checked by the test suite) where the launch system is not installed.
"""
from __future__ import annotations

import os
from typing import Any

PACKAGE = "omnibind_ros"
#: Fast DDS 3 (Kilted and later) reads the first name; Fast DDS 2 distros the second (the same
#: choice as omnibind_ros/ros/env.py, which holds the reasons).
FASTDDS_PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
FASTDDS2_DISTROS = ("humble", "iron", "jazzy")


def fastdds_profile_variable(distro: str | None = None) -> str:
    """The profile variable the installed Fast DDS reads (ROS_DISTRO picks the generation)."""
    distro = (os.environ.get("ROS_DISTRO", "") if distro is None else distro).lower()
    return FASTDDS_PROFILE_VARS[1] if distro in FASTDDS2_DISTROS else FASTDDS_PROFILE_VARS[0]


def generate_launch_description() -> Any:
    # Imported here, not at module level: see the module docstring. (isort off: ruff takes
    # `launch` for this repository's launch/ folder.)
    from launch import LaunchDescription  # noqa: I001
    from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
    from launch.conditions import IfCondition
    from launch.substitutions import (
        LaunchConfiguration,
        NotEqualsSubstitution,
        PathJoinSubstitution,
    )
    from launch_ros.actions import Node
    from launch_ros.parameter_descriptions import ParameterFile, ParameterValue
    from launch_ros.substitutions import FindPackageShare

    config_dir = PathJoinSubstitution([FindPackageShare(PACKAGE), "config"])
    arg = LaunchConfiguration
    declared = [
        DeclareLaunchArgument(
            "params_file", default_value=PathJoinSubstitution([config_dir, "perception.yaml"]),
            description="Parameter file of omnibind_perception (sensors, model bundle, fusion).",
        ),
        DeclareLaunchArgument(
            "namespace", default_value="",
            description="Namespace of both nodes (e.g. robot1); empty for none.",
        ),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", choices=["true", "false"],
            description="Use /clock (a bag or a simulator) as the time source of both nodes.",
        ),
        DeclareLaunchArgument(
            "backend", default_value="onnxruntime",
            description="Inference backend of omnibind_perception, e.g. onnxruntime, torch or "
                        "tensorrt (overrides the params file).",
        ),
        DeclareLaunchArgument(
            "autostart", default_value="true", choices=["true", "false"],
            description="Configure and activate omnibind_perception at start-up; false leaves "
                        "the lifecycle transitions to a lifecycle manager.",
        ),
        DeclareLaunchArgument(
            "sim", default_value="true", choices=["true", "false"],
            description="Also start omnibind_sim_sensors: the simulated world as hot-pluggable "
                        "sensors on the topics the default perception config listens to.",
        ),
        DeclareLaunchArgument(
            "sim_params_file",
            default_value=PathJoinSubstitution([config_dir, "sim_sensors.yaml"]),
            description="Parameter file of omnibind_sim_sensors (sensors, rates, topics).",
        ),
        DeclareLaunchArgument(
            "scenario_file", default_value="",
            description="Hot-plug timeline for the simulated sensors: a path or a name under "
                        "config/scenarios (e.g. hotplug_demo.yaml); overrides the sim params "
                        "file; empty: none, every sensor stays plugged in.",
        ),
        DeclareLaunchArgument(
            "large_messages", default_value="false", choices=["true", "false"],
            description="Load the Fast DDS shared-memory profile (config/fastdds_localhost.xml) "
                        "so that best-effort messages over ~512 KB reach other processes.",
        ),
        DeclareLaunchArgument(
            "discovery_range", default_value="LOCALHOST",
            choices=["LOCALHOST", "SUBNET", "SYSTEM_DEFAULT", "OFF"],
            description="ROS_AUTOMATIC_DISCOVERY_RANGE of both nodes. LOCALHOST (default) keeps "
                        "DDS discovery on this machine; SUBNET for a robot whose nodes run on "
                        "several hosts.",
        ),
        DeclareLaunchArgument(
            "static_peers", default_value="",
            description="ROS_STATIC_PEERS of both nodes: ';'-separated hosts to discover "
                        "directly (works with discovery_range:=LOCALHOST, no multicast); "
                        "empty: none.",
        ),
        DeclareLaunchArgument(
            "log_level", default_value="info",
            choices=["debug", "info", "warn", "error", "fatal"],
            description="Log level of both nodes.",
        ),
    ]
    use_sim_time = ParameterValue(arg("use_sim_time"), value_type=bool)
    log_level = ["--log-level", arg("log_level")]

    # Any other range or static peers is the user's explicit choice: tell the nodes (env.py) to
    # keep it instead of forcing LOCALHOST.
    discovery = [
        SetEnvironmentVariable("ROS_AUTOMATIC_DISCOVERY_RANGE", arg("discovery_range")),
        SetEnvironmentVariable("ROS_STATIC_PEERS", arg("static_peers"),
                               condition=IfCondition(NotEqualsSubstitution(
                                   arg("static_peers"), ""))),
        SetEnvironmentVariable("OMNIBIND_KEEP_DISCOVERY_RANGE", "1",
                               condition=IfCondition(NotEqualsSubstitution(
                                   arg("discovery_range"), "LOCALHOST"))),
        SetEnvironmentVariable("OMNIBIND_KEEP_DISCOVERY_RANGE", "1",
                               condition=IfCondition(NotEqualsSubstitution(
                                   arg("static_peers"), ""))),
    ]

    large_messages = SetEnvironmentVariable(
        fastdds_profile_variable(),
        PathJoinSubstitution([config_dir, "fastdds_localhost.xml"]),
        condition=IfCondition(arg("large_messages")))

    perception = Node(
        package=PACKAGE, executable="omnibind_perception", name="omnibind_perception",
        namespace=arg("namespace"), output="screen", emulate_tty=True, ros_arguments=log_level,
        parameters=[
            ParameterFile(arg("params_file"), allow_substs=True),
            {"use_sim_time": use_sim_time,
             "backend": arg("backend"),
             "autostart": ParameterValue(arg("autostart"), value_type=bool)},
        ],
        # Relative names resolve inside `namespace`; remap here to rewire a deployment without
        # editing the params file, e.g. ("recognition", "/hri/recognition").
        remappings=[],
    )

    sim_sensors = Node(
        package=PACKAGE, executable="omnibind_sim_sensors", name="omnibind_sim_sensors",
        namespace=arg("namespace"), output="screen", emulate_tty=True, ros_arguments=log_level,
        parameters=[
            ParameterFile(arg("sim_params_file"), allow_substs=True),
            {"use_sim_time": use_sim_time, "scenario_file": arg("scenario_file")},
        ],
        condition=IfCondition(arg("sim")),
    )

    return LaunchDescription([*declared, *discovery, large_messages, sim_sensors, perception])

