"""omnibind_ros.bag_inputs: a bag's sensor messages as model inputs, without rclpy.

The inputs must be exactly what the node's path makes of the same messages (rclpy
deserialization, the node's converter, the core preprocessor); topic resolution and the counts
of dropped messages must name what happened.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from omnibind_ros.bag_inputs import (
    BagInputError,
    InputSpec,
    admitted_stamps,
    iter_inputs,
    resolve_topic,
)
from omnibind_ros.core.preprocess import default_configs

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
CAM, THERMAL = "/robot/front/image_raw", "/robot/lepton/image_raw"


def _write(path: Path, *, stamps_thermal: list[int] | None = None) -> None:
    """Camera rgb8 32x24 at 10 Hz and thermal mono16 16x12 at ~8.7 Hz for 1 s."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from omnibind_ros.bag.types import typestore

    ts = typestore()
    Image, Header, Time = (ts.types[t] for t in ("sensor_msgs/msg/Image", "std_msgs/msg/Header",
                                                 "builtin_interfaces/msg/Time"))
    rng = np.random.default_rng(0)

    def img(ns: int, w: int, h: int, enc: str, data: np.ndarray, step: int):
        return Image(header=Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9),
                                   frame_id="f"), height=h, width=w, encoding=enc,
                     is_bigendian=0, step=step, data=data.reshape(-1).view(np.uint8))

    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        cam = w.add_connection(CAM, "sensor_msgs/msg/Image", typestore=ts)
        th = w.add_connection(THERMAL, "sensor_msgs/msg/Image", typestore=ts)
        msgs = []
        for k in range(10):
            ns = T0 + k * 100 * MS
            px = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
            msgs.append((ns, cam, img(ns, 32, 24, "rgb8", px, 96)))
        thermal = stamps_thermal or [T0 + k * 115 * MS for k in range(9)]
        for k, ns in enumerate(thermal):  # logged in this order, whatever the stamps say
            counts = (29315 + rng.integers(0, 3000, (12, 16))).astype(np.uint16)
            msgs.append((T0 + k * 115 * MS + 1, th, img(ns, 16, 12, "mono16", counts, 32)))
        for ns, conn, msg in sorted(msgs, key=lambda m: m[0]):
            w.write(conn, ns, ts.serialize_cdr(msg, msg.__msgtype__))


def _specs() -> list[InputSpec]:
    cfg = default_configs()
    return [InputSpec("camera", "image", CAM, "sensor_msgs/msg/Image",
                      {**cfg["image"], "size": 16}),
            InputSpec("thermal", "thermal", THERMAL, "sensor_msgs/msg/Image",
                      {**cfg["thermal"], "size": 16})]


def test_inputs_are_the_nodes(tmp_path: Path) -> None:
    """Same arrays as rclpy deserialization + the node's converter + the core preprocessor."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from omnibind_ros.bag.reader import iter_messages
    from omnibind_ros.core.preprocess import build_preprocessor
    from omnibind_ros.ros.conversions import conversion_for

    bag = tmp_path / "b"
    _write(bag)
    specs = _specs()
    admitted, counts, damage = admitted_stamps(bag, specs)
    assert damage == [] and len(admitted["camera"]) == 10 and len(admitted["thermal"]) == 9
    assert counts["thermal"].to_dict()["messages"] == 9
    got = {(n, a.seq): x for n, a, x in iter_inputs(bag, specs, {"camera": range(10),
                                                                  "thermal": [0, 4, 8]})}
    assert sorted(k for k in got if k[0] == "thermal") == [("thermal", 0), ("thermal", 4),
                                                          ("thermal", 8)]
    seen = {"camera": 0, "thermal": 0}
    for m in iter_messages(bag):
        spec = next(s for s in specs if s.topic == m.topic)
        msg = deserialize_message(m.rawdata, Image)
        payload = conversion_for(spec.modality, spec.message_type)(msg)
        pre = build_preprocessor(spec.modality, spec.preprocess)
        ref = (pre(payload.image, channel_order=payload.channel_order)
               if spec.modality == "image" else pre(payload))
        key = (spec.name, seen[spec.name])
        seen[spec.name] += 1
        if key in got:
            np.testing.assert_array_equal(got[key], ref)
    assert seen == {"camera": 10, "thermal": 9}


def test_out_of_order_stamp_is_rejected_and_counted(tmp_path: Path) -> None:
    bag = tmp_path / "b"
    stamps = [T0, T0 + 200 * MS, T0 + 100 * MS, T0 + 300 * MS]  # 3rd stamp goes back in time
    _write(bag, stamps_thermal=stamps)
    admitted, counts, _ = admitted_stamps(bag, _specs())
    assert [a.stamp_ns for a in admitted["thermal"]] == [T0, T0 + 200 * MS, T0 + 300 * MS]
    assert [a.seq for a in admitted["thermal"]] == [0, 1, 3]
    assert counts["thermal"].rejected == 1 and "not newer" in counts["thermal"].reasons[0]


def test_resolve_topic_names_what_is_missing() -> None:
    info = SimpleNamespace(path="x.bag", topics={CAM: ("sensor_msgs/msg/Image", 10),
                                                 THERMAL: ("sensor_msgs/msg/Image", 9),
                                                 "/chat": ("std_msgs/msg/String", 1)})
    assert resolve_topic(info, "thermal", None, role="new sensor") == (
        THERMAL, "sensor_msgs/msg/Image")  # two Image topics: "lepton" names the thermal one
    assert resolve_topic(info, "image", None, role="camera", exclude=[THERMAL])[0] == CAM
    with pytest.raises(BagInputError, match="no topic /nope.*its topics: /chat"):
        resolve_topic(info, "thermal", "/nope", role="new sensor")
    with pytest.raises(BagInputError, match="carries std_msgs/msg/String"):
        resolve_topic(info, "thermal", "/chat", role="new sensor")
    with pytest.raises(BagInputError, match="no topic the new sensor could be on"):
        resolve_topic(info, "event", None, role="new sensor")
    with pytest.raises(BagInputError, match="several topics"):
        resolve_topic(info, "tactile", None, role="new sensor")
    camera_only = SimpleNamespace(path="c.bag", topics={CAM: ("sensor_msgs/msg/Image", 10)})
    assert resolve_topic(camera_only, "thermal", None, role="t")[0] == CAM  # by type alone
    with pytest.raises(BagInputError, match="looks like the new thermal.*/robot/front/image_raw"):
        resolve_topic(camera_only, "thermal", None, role="new thermal sensor", need_hint=True)
    assert resolve_topic(info, "thermal", None, role="t", need_hint=True)[0] == THERMAL


def test_reading_imports_no_rclpy(tmp_path: Path) -> None:
    bag = tmp_path / "b"
    _write(bag)
    code = ("import sys\nfrom omnibind_ros.bag_inputs import admitted_stamps, iter_inputs\n"
            "from test_bag_inputs_specs import specs\n"
            f"a, c, d = admitted_stamps({str(bag)!r}, specs())\n"
            f"n = sum(1 for _ in iter_inputs({str(bag)!r}, specs(), {{'thermal': range(9)}}))\n"
            "assert n == 9, n\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('rclpy', 'sensor_msgs')]\n"
            "assert not bad, bad\n")
    helper = tmp_path / "test_bag_inputs_specs.py"
    helper.write_text("from omnibind_ros.core.preprocess import default_configs\n"
                      "from omnibind_ros.bag_inputs import InputSpec\n"
                      "def specs():\n    c = default_configs()\n"
                      f"    return [InputSpec('camera', 'image', {CAM!r}, "
                      "'sensor_msgs/msg/Image', c['image']),\n"
                      f"            InputSpec('thermal', 'thermal', {THERMAL!r}, "
                      "'sensor_msgs/msg/Image', c['thermal'])]\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
