"""The node pays each sensor path's one-time costs at configure: a fresh process configuring on
a bundle with a point-cloud encoder has imported the clustering's SciPy modules (about 0.4 s
holding the GIL and the import lock) before any message arrives, so the first LiDAR cloud does
not stall every sensor; without one it has not."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from omnibind_ros.testing import write_test_bundle

pytestmark = pytest.mark.ros

SCRIPT = """
import sys, time
import rclpy
from rclpy.context import Context
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from omnibind_ros.ros.perception_node import PerceptionNode

ctx = Context()
rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
sensors = sys.argv[2].split(",")
kinds = {"camera": ("image", "sensor_msgs/msg/Image"),
         "lidar": ("point_cloud", "sensor_msgs/msg/PointCloud2")}
overrides = [Parameter("bundle_path", value=sys.argv[1]),
             Parameter("sensors", Parameter.Type.STRING_ARRAY, sensors)]
for name in sensors:
    modality, mtype = kinds[name]
    overrides += [Parameter(f"sensors.{name}.modality", value=modality),
                  Parameter(f"sensors.{name}.topic", value=f"/w/{name}"),
                  Parameter(f"sensors.{name}.message_type", value=mtype)]
before = "scipy.spatial" in sys.modules
node = PerceptionNode(context=ctx, parameter_overrides=overrides)
start = time.perf_counter()
assert node.autostart()
print(before, "scipy.spatial" in sys.modules, f"{time.perf_counter() - start:.2f}")
node.destroy_node()
rclpy.shutdown(context=ctx)
"""


def _configure(bundle: Path, sensors: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(bundle), sensors],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warm-up failed" not in proc.stderr, proc.stderr[-2000:]
    return proc.stdout.split()


def test_configure_warms_the_point_cloud_path(tmp_path: Path) -> None:
    bundle = write_test_bundle(tmp_path / "tiny")
    before, after, _ = _configure(bundle, "camera,lidar")
    assert (before, after) == ("False", "True")
    before, after, _ = _configure(write_test_bundle(tmp_path / "img", modalities=("image",)),
                                  "camera")
    assert (before, after) == ("False", "False")
