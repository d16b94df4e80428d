"""The perception node runs a UniAlign bundle with no code path of its own: ``omnibind-bringup``
configures on the tiny UniAlign run's bundle (:mod:`_unialign_tiny`) and every Recognition names
the bundle and the ``unialign`` family.

The training package (tests included: ``test/test_layering.py``) never imports rclpy nor
``omnibind_ros.ros``, so the node runs in a subprocess with loopback-only discovery
(``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``; ``omnibind-bringup`` enforces it too).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _unialign_tiny import TinyUniAlignRun, tiny_unialign_run
from test_binding_node import _child_env

pytestmark = [pytest.mark.slow, pytest.mark.ros]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> TinyUniAlignRun:
    return tiny_unialign_run(tmp_path_factory)


def test_perception_node_answers_with_a_unialign_bundle(run: TinyUniAlignRun, tmp_path) -> None:
    from omnibind_ros.core.bundle import load_bundle

    bundle = load_bundle(run.bundle)
    assert bundle.family == "unialign"
    out = tmp_path / "summary.json"
    cmd = [sys.executable, "-m", "omnibind_ros.tools.bringup", "--bundle", str(run.bundle),
           "--no-ui", "--duration", "8", "--summary-json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_child_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(out.read_text())
    assert summary["recognitions"] > 0 and summary["answered_fraction"] > 0, summary
    key = f"{bundle.name} [unialign]"
    assert set(summary["models"]) == {key} and summary["models"][key] > 0, summary["models"]
    assert set(summary["sensors"]) >= {"camera", "lidar", "microphone"}
