"""The set-up's own install is a ROS package install: ``ros2 launch omnibind_ros ...`` and
``ros2 run omnibind_ros ...`` find what they need in the venv (scripts/setup.sh builds
CMakeLists.txt with OMNIBIND_INSTALL_PYTHON_PACKAGE=OFF), as they do in a colcon install.

What ``ros2 launch`` reads: the ament index entry (``share/ament_index/resource_index/
packages/omnibind_ros``, through which ``get_package_share_directory`` and launch_ros's
``FindPackageShare`` resolve the package), ``share/omnibind_ros/{launch,config,package.xml}``
and the executables in ``lib/omnibind_ros`` that launch_ros ``Node(executable=...)`` starts.
A failure here after editing launch/ or config/ means: re-run ``scripts/setup.sh``.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]
RERUN = "re-run scripts/setup.sh (it installs launch/, config/ and lib/ into the venv)"


def _share() -> Path:
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    try:
        return Path(get_package_share_directory("omnibind_ros"))
    except PackageNotFoundError as exc:
        pytest.fail(f"{exc} (AMENT_PREFIX_PATH={os.environ.get('AMENT_PREFIX_PATH')}): {RERUN}")


def test_share_directory_holds_the_launch_file_configs_and_manifest() -> None:
    share = _share()
    launch = share / "launch" / "perception.launch.py"
    assert launch.is_file(), f"{launch} missing: {RERUN}"
    assert launch.read_text() == (REPO / "launch" / "perception.launch.py").read_text(), (
        f"{launch} is older than launch/perception.launch.py: {RERUN}")
    for name in ("perception.yaml", "sim_sensors.yaml", "fastdds_localhost.xml"):
        installed = share / "config" / name
        assert installed.is_file(), f"{installed} missing: {RERUN}"
        assert installed.read_text() == (REPO / "config" / name).read_text(), (
            f"{installed} is stale: {RERUN}")
    assert (share / "package.xml").is_file()
    index = share.parents[0] / "ament_index" / "resource_index" / "packages" / "omnibind_ros"
    assert index.is_file(), "the ament index entry ros2 launch / ros2 pkg look up"


def _executables() -> list[str]:
    cmake = (REPO / "CMakeLists.txt").read_text()
    block = re.search(r"set\(OMNIBIND_EXECUTABLES(.*?)\)", cmake, re.S)
    assert block is not None
    return [m.split("=")[0] for m in re.findall(r'"([^"#]+)"', block.group(1))]


def test_executables_that_launch_starts_are_installed() -> None:
    from ament_index_python.packages import get_package_prefix

    lib = Path(get_package_prefix("omnibind_ros")) / "lib" / "omnibind_ros"
    for name in _executables():
        exe = lib / name
        assert exe.is_file() and os.access(exe, os.X_OK), f"{exe} missing: {RERUN}"
        interpreter = exe.read_text().splitlines()[0].removeprefix("#!")
        assert Path(interpreter).is_file(), f"{exe} runs {interpreter}, which does not exist"


def test_installed_sim_sensors_launcher_runs_and_stops_on_sigint() -> None:
    """What ``ros2 run omnibind_ros omnibind_sim_sensors`` (and launch) starts, namespaced."""
    from ament_index_python.packages import get_package_prefix

    lib = Path(get_package_prefix("omnibind_ros")) / "lib" / "omnibind_ros"
    exe = lib / "omnibind_sim_sensors"
    params = _share() / "config" / "sim_sensors.yaml"
    # the environment of this test process: LOCALHOST discovery and its own domain (conftest)
    proc = subprocess.Popen([str(exe), "--ros-args", "-r", "__ns:=/robot1",
                             "--params-file", str(params)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line)
            if "streaming" in line or "Traceback" in line:
                break
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines) + out
    assert "streaming 7 sensors" in text, text
    assert "plugged in on /robot1/sim/camera/image_raw" in text, text
    assert "DDS discovery: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST" in text, text
    assert proc.returncode == 0 and "Traceback" not in text, text
