"""The start-up line every node logs about DDS discovery (omnibind_ros.ros.env.discovery_summary):
the effective range, static peers and domain, who set them, and how a multi-host robot opens
them. That the nodes log it: test/ros/test_perception_main.py."""
from __future__ import annotations

import pytest

from omnibind_ros.ros import env as ros_env


def test_localhost_says_how_to_open_it() -> None:
    line = ros_env.discovery_summary({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                                      "ROS_DOMAIN_ID": "7"})
    assert line.startswith("DDS discovery: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, "
                           "ROS_STATIC_PEERS=<none>, ROS_DOMAIN_ID=7")
    assert "keeps discovery on this machine" in line
    for hint in ("OMNIBIND_KEEP_DISCOVERY_RANGE=1", "ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET",
                 "ROS_STATIC_PEERS=", "discovery_range:=SUBNET"):
        assert hint in line, hint
    assert "\n" not in line


def test_a_kept_range_is_reported_as_the_users() -> None:
    line = ros_env.discovery_summary({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
                                      "ROS_STATIC_PEERS": "10.0.0.2;10.0.0.3",
                                      "OMNIBIND_KEEP_DISCOVERY_RANGE": "1"})
    assert "ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET" in line
    assert "ROS_STATIC_PEERS=10.0.0.2;10.0.0.3" in line and "ROS_DOMAIN_ID=0" in line
    assert "kept as the environment set them" in line
    assert "keeps discovery on this machine" not in line


def test_what_was_forced_in_this_process_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ros_env, "_forced_from", {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
                                                  "ROS_STATIC_PEERS": "10.0.0.9"})
    line = ros_env.discovery_summary()
    assert "ROS_AUTOMATIC_DISCOVERY_RANGE was SUBNET; ROS_STATIC_PEERS was 10.0.0.9" in line
    # an explicit mapping is not this process's environment: nothing forced there
    assert " was " not in ros_env.discovery_summary({})


def test_ensure_safe_ros_env_records_what_it_forced(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path) -> None:
    import os
    import sys

    # A stand-in process environment (this process's own stays LOCALHOST), and rclpy hidden:
    # with it imported, forcing the process environment raises instead (env.py).
    fake = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET", "AMENT_PREFIX_PATH": str(tmp_path),
            "ROS_LOG_DIR": str(tmp_path)}
    monkeypatch.setattr(ros_env, "_forced_from", {})
    monkeypatch.setattr(os, "environ", fake)
    monkeypatch.delitem(sys.modules, "rclpy", raising=False)
    with pytest.warns(RuntimeWarning, match="SUBNET"):
        ros_env.ensure_safe_ros_env()
    assert fake["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert ros_env._forced_from == {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}
    assert "ROS_AUTOMATIC_DISCOVERY_RANGE was SUBNET" in ros_env.discovery_summary()


def test_keeping_a_loopback_setup_does_not_warn() -> None:
    import warnings

    env = {"OMNIBIND_KEEP_DISCOVERY_RANGE": "1", "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "ROS_STATIC_PEERS": "127.0.0.1", "ROS_LOG_DIR": "/tmp", "AMENT_PREFIX_PATH": "/x"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ros_env.ensure_safe_ros_env(environ=env)  # launch static_peers:=127.0.0.1
    env["ROS_STATIC_PEERS"] = "10.0.0.2"  # a peer on another host: said out loud
    with pytest.warns(RuntimeWarning, match="ROS_STATIC_PEERS=10.0.0.2"):
        ros_env.ensure_safe_ros_env(environ=env)
    assert env["ROS_STATIC_PEERS"] == "10.0.0.2"
