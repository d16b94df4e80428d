"""omnibind_ros.ros.env: the environment every tool sets before it imports rclpy.

Anything that depends on what is already imported (rclpy) or on the real process environment
runs in a subprocess with a scrubbed environment; the rest edits a plain dict via ``environ=``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from omnibind_ros.ros import env as ros_env

REPO = Path(__file__).resolve().parents[1]
SCRUBBED = (
    *ros_env.MANAGED_VARS,
    "ROS_STATIC_PEERS",
    "ROS_DISCOVERY_SERVER",
    ros_env.KEEP_DISCOVERY_RANGE_VAR,
)


def run_python(code: str, **env_overrides: str) -> dict:
    """Run ``code`` in a fresh interpreter; it must print one JSON object as its last line."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(env_overrides)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


ENSURE_AND_REPORT = """
    import json, os, sys, warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from omnibind_ros.ros.env import ensure_safe_ros_env
        result = ensure_safe_ros_env({kwargs})
    print(json.dumps({{"result": result, "environ": dict(os.environ), "prefix": sys.prefix,
                      "warnings": [str(w.message) for w in caught]}}))
"""


def ensure_in_subprocess(kwargs: str = "", **env_overrides: str) -> dict:
    return run_python(ENSURE_AND_REPORT.format(kwargs=kwargs), **env_overrides)


def test_fresh_environment_gets_safe_defaults() -> None:
    out = ensure_in_subprocess()
    environ, result = out["environ"], out["result"]
    assert environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert Path(environ["ROS_LOG_DIR"]).is_dir()
    assert environ["AMENT_PREFIX_PATH"] == out["prefix"]
    assert "ROS_DOMAIN_ID" not in environ  # not asked for: ROS's default applies
    assert not any(var in environ for var in ros_env.FASTDDS_PROFILE_VARS)
    assert result == {k: environ[k] for k in ros_env.MANAGED_VARS if k in environ}
    assert out["warnings"] == []


def test_explicit_localhost_and_existing_values_are_kept(tmp_path: Path) -> None:
    out = ensure_in_subprocess(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                               ROS_LOG_DIR=str(tmp_path),
                               AMENT_PREFIX_PATH="/opt/ros/overlay:/opt/ros/kilted",
                               ROS_DOMAIN_ID="17")
    environ = out["environ"]
    assert environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert environ["ROS_LOG_DIR"] == str(tmp_path)
    assert environ["AMENT_PREFIX_PATH"] == "/opt/ros/overlay:/opt/ros/kilted"
    assert environ["ROS_DOMAIN_ID"] == "17"
    assert out["warnings"] == []


@pytest.mark.parametrize("wider", ["SUBNET", "SYSTEM_DEFAULT", "OFF", "bogus"])
def test_any_other_discovery_range_is_overridden_loudly(wider: str) -> None:
    out = ensure_in_subprocess(ROS_AUTOMATIC_DISCOVERY_RANGE=wider)
    assert out["environ"]["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert any(wider in message for message in out["warnings"])


def test_deployments_can_keep_their_range_explicitly() -> None:
    out = ensure_in_subprocess(ROS_AUTOMATIC_DISCOVERY_RANGE="SUBNET",
                               OMNIBIND_KEEP_DISCOVERY_RANGE="1",
                               ROS_STATIC_PEERS="192.168.1.20")
    assert out["environ"]["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET"
    assert out["environ"]["ROS_STATIC_PEERS"] == "192.168.1.20"
    assert any("may leave this machine" in message for message in out["warnings"])


def test_explicit_domain_and_log_dir(tmp_path: Path) -> None:
    out = ensure_in_subprocess(f"domain_id=42, log_dir={str(tmp_path / 'logs')!r}",
                               ROS_DOMAIN_ID="3", ROS_LOG_DIR=str(tmp_path / "elsewhere"))
    assert out["environ"]["ROS_DOMAIN_ID"] == "42"
    assert out["environ"]["ROS_LOG_DIR"] == str(tmp_path / "logs")
    assert (tmp_path / "logs").is_dir()


@pytest.mark.parametrize("bad", [-1, 233, 1000])
def test_domain_id_out_of_range_is_rejected(bad: int) -> None:
    with pytest.raises(ValueError, match="ROS_DOMAIN_ID"):
        ros_env.ensure_safe_ros_env(domain_id=bad, environ={})


def test_environ_argument_leaves_the_process_environment_alone() -> None:
    before = dict(os.environ)
    child: dict[str, str] = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}
    with pytest.warns(RuntimeWarning, match="SUBNET"):
        result = ros_env.ensure_safe_ros_env(domain_id=9, environ=child, large_messages=True)
    assert dict(os.environ) == before
    assert child["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert child["ROS_DOMAIN_ID"] == "9"
    assert result["ROS_DOMAIN_ID"] == "9"


@pytest.mark.parametrize(("distro", "var"), [
    (None, "FASTDDS_DEFAULT_PROFILES_FILE"),  # the PyPI wheels: Kilted, Fast DDS 3
    ("kilted", "FASTDDS_DEFAULT_PROFILES_FILE"),
    ("jazzy", "FASTRTPS_DEFAULT_PROFILES_FILE"),  # Fast DDS 2 knows only the old name
])
def test_large_messages_selects_the_profile_variable(distro: str | None, var: str) -> None:
    out = ensure_in_subprocess("large_messages=True", **({"ROS_DISTRO": distro} if distro else {}))
    set_vars = [v for v in ros_env.FASTDDS_PROFILE_VARS if v in out["environ"]]
    assert set_vars == [var]  # never both: Kilted warns on every participant about the old one
    assert Path(out["environ"][var]).name == "fastdds_localhost.xml"


def test_large_messages_profile_content() -> None:
    out = ensure_in_subprocess("large_messages=True")
    profile = Path(out["environ"]["FASTDDS_DEFAULT_PROFILES_FILE"])
    assert profile.is_file()

    ns = {"d": "http://www.eprosima.com"}
    root = ET.parse(profile).getroot()
    participant = root.find("d:profiles/d:participant", ns)
    assert participant is not None and participant.get("is_default_profile") == "true"
    assert participant.findtext("d:rtps/d:useBuiltinTransports", namespaces=ns) == "false"
    used = {e.text for e in participant.findall("d:rtps/d:userTransports/d:transport_id", ns)}
    descriptors = {d.findtext("d:transport_id", namespaces=ns): d
                   for d in root.findall("d:profiles/d:transport_descriptors/*", ns)}
    assert used == set(descriptors)
    by_type = {d.findtext("d:type", namespaces=ns): d for d in descriptors.values()}
    assert set(by_type) == {"SHM", "UDPv4"}
    for tag in ("segment_size", "maxMessageSize"):
        assert int(by_type["SHM"].findtext(f"d:{tag}", namespaces=ns)) == 16 * 1024 * 1024
    allowed = [a.text for a in by_type["UDPv4"].findall("d:interfaceWhiteList/d:address", ns)]
    assert allowed == ["127.0.0.1"]  # UDP never leaves loopback


def test_a_configured_profile_is_respected() -> None:
    out = ensure_in_subprocess("large_messages=True",
                               FASTDDS_DEFAULT_PROFILES_FILE="/etc/my_profile.xml")
    assert out["environ"]["FASTDDS_DEFAULT_PROFILES_FILE"] == "/etc/my_profile.xml"
    assert "FASTRTPS_DEFAULT_PROFILES_FILE" not in out["environ"]


@pytest.mark.parametrize("var", ["ROS_STATIC_PEERS", "ROS_DISCOVERY_SERVER"])
@pytest.mark.parametrize(("value", "kept"), [
    ("127.0.0.1;localhost", True),
    ("127.0.0.1:11811;[::1]:11811", True),
    (";;127.0.0.1:11811", True),
    ("192.168.1.20", False),
    ("127.0.0.1;10.0.0.7:11811", False),
    ("robot.local", False),  # a host name could be anywhere
])
def test_peers_on_other_hosts_are_removed(var: str, value: str, kept: bool) -> None:
    environ = {var: value}
    if kept:
        ros_env.ensure_safe_ros_env(environ=environ)
        assert environ[var] == value
    else:
        with pytest.warns(RuntimeWarning, match=var):
            ros_env.ensure_safe_ros_env(environ=environ)
        assert var not in environ


REFUSE_AFTER_IMPORT = """
    import json, sys, types
    {import_rclpy}
    from omnibind_ros.ros.env import ensure_safe_ros_env, UnsafeRosEnvironmentError
    try:
        ensure_safe_ros_env()
    except UnsafeRosEnvironmentError as exc:
        print(json.dumps({{"refused": True, "message": str(exc)}}))
    else:
        print(json.dumps({{"refused": False}}))
"""
# Stands in for rclpy: the check is on sys.modules, and a real import with a range other than
# LOCALHOST is exactly what the project never does.
FAKE_RCLPY = "sys.modules['rclpy'] = types.ModuleType('rclpy')"


@pytest.mark.parametrize("preset", [None, "SUBNET"])
def test_refuses_when_rclpy_was_imported_first(preset: str | None) -> None:
    env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": preset} if preset else {}
    out = run_python(REFUSE_AFTER_IMPORT.format(import_rclpy=FAKE_RCLPY), **env)
    assert out["refused"] is True
    assert "before importing rclpy" in out["message"]


def test_no_refusal_when_rclpy_came_after_a_localhost_setting() -> None:
    out = run_python(REFUSE_AFTER_IMPORT.format(import_rclpy=FAKE_RCLPY),
                     ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    assert out["refused"] is False


@pytest.mark.ros
def test_with_real_rclpy_imported_under_localhost() -> None:
    # rclpy really imported (under LOCALHOST, as always); removing the setting afterwards must be
    # refused, keeping it must pass.
    code = """
        import json, os, rclpy
        from omnibind_ros.ros.env import ensure_safe_ros_env, UnsafeRosEnvironmentError
        kept = ensure_safe_ros_env()
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SUBNET"
        try:
            ensure_safe_ros_env()
            refused = False
        except UnsafeRosEnvironmentError:
            refused = True
        print(json.dumps({"kept": kept["ROS_AUTOMATIC_DISCOVERY_RANGE"], "refused": refused}))
    """
    out = run_python(code, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                     ROS_LOG_DIR=os.environ["ROS_LOG_DIR"])
    assert out == {"kept": "LOCALHOST", "refused": True}


def test_reserved_domain_ids_are_exclusive_across_processes() -> None:
    # Ids above the suite's own range (1..100): nothing joins these domains, only the locks count.
    mine = [ros_env.reserve_domain_id(120, 232) for _ in range(3)]
    assert len(set(mine)) == 3 and all(120 <= d <= 232 for d in mine)
    code = f"""
        import json
        from omnibind_ros.ros.env import reserve_domain_id
        refused = []
        for domain in {mine!r}:
            try:
                reserve_domain_id(domain, domain)
            except RuntimeError:
                refused.append(domain)
        print(json.dumps({{"refused": refused, "other": reserve_domain_id(120, 232)}}))
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["refused"] == mine
    assert out["other"] not in mine


def test_this_test_process_runs_in_a_safe_environment() -> None:
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert 1 <= int(os.environ["ROS_DOMAIN_ID"]) <= 100
    assert Path(os.environ["ROS_LOG_DIR"]).is_dir()


def test_shell_exports_round_trip(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env["ROS_STATIC_PEERS"] = "10.1.2.3"
    script = (f"eval \"$({sys.executable} -m omnibind_ros.ros.env --domain-id 12 "
              f"--log-dir {tmp_path} --large-messages)\" && "
              "echo \"$ROS_AUTOMATIC_DISCOVERY_RANGE|$ROS_DOMAIN_ID|$ROS_LOG_DIR|"
              "${ROS_STATIC_PEERS-unset}|$FASTDDS_DEFAULT_PROFILES_FILE\"")
    proc = subprocess.run(["bash", "-c", script], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    range_, domain, log_dir, peers, profile = proc.stdout.strip().split("|")
    assert (range_, domain, log_dir, peers) == ("LOCALHOST", "12", str(tmp_path), "unset")
    assert Path(profile).name == "fastdds_localhost.xml"
