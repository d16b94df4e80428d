"""Two processes, as a robot runs them: the simulated sensors in one, perception in another
(both from the package's config files), and recognition arrives in a third (this test).

Both children get the test's safe environment explicitly (loopback-only discovery, the test's
ROS_DOMAIN_ID, a temporary ROS_LOG_DIR); they are stopped by PID with SIGINT, as launch does,
and must exit 0 without a traceback.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from omnibind_ros.testing import write_test_bundle

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"
RECOGNITION_TIMEOUT_S = 60.0


def child_env(log_dir: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", ROS_LOG_DIR=str(log_dir))
    # conftest made this process safe; the children must run in exactly that environment.
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert env["ROS_DOMAIN_ID"].isdigit()
    return env


class Child:
    """A node process whose output goes to a file (a pipe nobody reads could block it)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], out_dir: Path) -> None:
        self.name = name
        self.log = out_dir / f"{name}.out"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env,
                                         stdout=log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def interrupt(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9


@pytest.fixture
def children(tmp_path: Path) -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:  # a failed test still leaves no process behind
        child.interrupt()
    for child in started:
        child.wait()


def report(children: list[Child]) -> str:
    return "\n".join(f"--- {c.name} (rc {c.proc.poll()}):\n{c.output()[-3000:]}"
                     for c in children)


def wait_for_recognition(node: Any, children: list[Child]) -> Any:
    """Spin ``node`` until a Recognition with an answer arrives; fail early if a child dies."""
    from omnibind_ros.msg import Recognition
    from rclpy.executors import SingleThreadedExecutor

    from omnibind_ros.ros.qos import RECOGNITION

    answered: list[Any] = []
    node.create_subscription(Recognition, "/omnibind_perception/recognition",
                             lambda m: answered.append(m) if m.best_label else None,
                             RECOGNITION)
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    deadline = time.monotonic() + RECOGNITION_TIMEOUT_S
    try:
        while not answered and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.2)
            dead = [c.name for c in children if c.proc.poll() is not None]
            assert not dead, f"{dead} exited early\n{report(children)}"
    finally:
        executor.shutdown()
    assert answered, f"no recognition in {RECOGNITION_TIMEOUT_S} s\n{report(children)}"
    return answered[0]


def test_sensors_and_perception_in_two_processes(tmp_path: Path, make_node: Any,
                                                  children: list[Child]) -> None:
    bundle = write_test_bundle(tmp_path / "tiny")
    env = child_env(tmp_path / "log")
    children.append(Child("sim_sensors", [
        "-m", "omnibind_ros.ros.sim_sensors_node",
        "--ros-args", "--params-file", str(CONFIG / "sim_sensors.yaml")], env, tmp_path))
    children.append(Child("perception", [
        "-m", "omnibind_ros.ros.perception_node",
        "--ros-args", "--params-file", str(CONFIG / "perception.yaml"),
        "-p", "autostart:=true", "-p", f"bundle_path:={bundle}"], env, tmp_path))

    msg = wait_for_recognition(make_node("two_process_listener"), children)
    assert msg.sensors and len(msg.sensors) == len(msg.modalities), msg
    assert msg.top_labels[0] == msg.best_label and 0.0 <= msg.best_score <= 1.0

    for child in children:
        child.interrupt()
    codes = {child.name: child.wait() for child in children}
    assert codes == {"sim_sensors": 0, "perception": 0}, report(children)
    for child in children:
        assert "Traceback" not in child.output(), report(children)
