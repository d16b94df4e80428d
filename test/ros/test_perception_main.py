"""``omnibind_perception`` as a process: autostart, then SIGINT (what launch sends) ends it
cleanly, with exit status 0 and no traceback."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omnibind_ros.testing import write_test_bundle

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[2]


def test_main_autostarts_and_exits_cleanly_on_sigint(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path / "tiny")
    code = "from omnibind_ros.ros.perception_node import main; raise SystemExit(main())"
    args = [sys.executable, "-c", code, "--ros-args", "--params-file",
            str(REPO / "config" / "perception.yaml"), "-p", "autostart:=true",
            "-p", f"bundle_path:={bundle}"]
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "activated" in line or "Traceback" in line:
                break
        assert any("activated" in ln for ln in lines), "".join(lines)
        # the start-up line on DDS discovery: effective range and how to open it
        discovery = [ln for ln in lines if "DDS discovery:" in ln]
        assert len(discovery) == 1, "".join(lines)
        assert "[INFO]" in discovery[0], discovery[0]
        assert "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST" in discovery[0], discovery[0]
        assert "OMNIBIND_KEEP_DISCOVERY_RANGE=1" in discovery[0], discovery[0]
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines) + out
    assert proc.returncode == 0, text
    assert "Traceback" not in text, text
