"""Live bag evaluation (omnibind_ros.bag.live): the real perception node with use_sim_time, fed
by a bag player, against offline evaluation of the same bag.

The ROS-free part (turning what the recorder received into TickRecords and StateChanges) is
tested on hand-made data; the ROS tests replay short bags (a few seconds, rate 2) with the tiny
random bundle, whose labels are replaced by the classes of the bag (config YAML
``labels.names``) so that ticks are scored. A random model answers nearly the same label
whatever it sees, so accuracy and label agreement with offline mode are weak checks here; the
sets of sensors fused tick by tick, the tick rate and the dropout are the sensitive ones. The
accuracy comparison that matters (default bundle, 2-minute bag) is benchmarks/bench_bag.py.
"""
from __future__ import annotations

import bisect
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml

from omnibind_ros.bag.live_recorder import Received, state_changes, tick_records
from omnibind_ros.bag.player import CLOCK_PERIOD_NS, header_stamp_ns
from omnibind_ros.testing import write_test_bundle

S = 1_000_000_000
T0 = 1_700_000_000 * S
REPO = Path(__file__).resolve().parents[2]


# -- ROS-free: recorder data -> records --------------------------------------------------------

def _rec(clock_s: float, stamp_s: float, label: str = "mug", wall: float = 0.0,
         sensors: tuple[str, ...] = ("camera",)) -> Received:
    return Received(clock_ns=T0 + round(clock_s * S), wall=wall,
                     stamp_ns=T0 + round(stamp_s * S), best_label=label,
                     best_score=0.5 if label else 0.0, top_labels=(label,) if label else (),
                     sensors=sensors if label else (),
                     modalities=tuple("image" for _ in sensors) if label else ())


def test_header_stamp_ns_reads_the_cdr_header_in_either_byte_order() -> None:
    little = b"\x00\x01\x00\x00" + struct.pack("<iI", 1_700_000_123, 456_789) + b"rest"
    big = b"\x00\x00\x00\x00" + struct.pack(">iI", 1_700_000_123, 456_789) + b"rest"
    assert header_stamp_ns(little) == header_stamp_ns(big) == 1_700_000_123 * S + 456_789
    assert header_stamp_ns(b"\x00\x01\x00\x00") is None


def test_tick_records_time_latency_and_tail() -> None:
    last = T0 + 10 * S
    received = [
        _rec(1.00, 0.97, wall=100.050),        # newest input 0.97 s, published at 100.000
        _rec(1.10, 1.12, wall=100.200),        # recorder clock behind the stamp: t = stamp
        _rec(10.05, 9.99, wall=110.0),         # tail: answer from a new input -> kept
        _rec(10.15, 9.99, wall=110.1),         # tail: same input again (heartbeat) -> dropped
        _rec(10.25, 10.25, label="", wall=110.2),  # tail: no answer -> dropped
    ]
    # stamps travel as int ns end to end: they match exactly (120 ns off is another input)
    stamp_wall = {T0 + round(0.97 * S): 100.000, T0 + round(9.99 * S): 109.9,
                  T0 + round(1.12 * S) + 120: 100.1}
    ticks, dropped = tick_records(received, last_ns=last, stamp_wall=stamp_wall)
    assert dropped == 2
    assert [t.t_ns for t in ticks] == [T0 + S, T0 + round(1.12 * S), T0 + round(10.05 * S)]
    assert ticks[0].stamp_ns == T0 + round(0.97 * S)
    assert ticks[0].latency_s == pytest.approx(0.050)
    assert ticks[1].latency_s is None  # no input with that stamp was published
    assert ticks[2].latency_s == pytest.approx(0.1)


def test_tick_records_time_header_less_inputs_from_the_clock() -> None:
    # operator text: the node stamps it with its /clock time on arrival
    stamp = T0 + 2 * S + 3 * CLOCK_PERIOD_NS
    ticks, _ = tick_records([_rec(2.05, (stamp - T0) / S, wall=51.0, sensors=("operator",))],
                            last_ns=T0 + 5 * S, clock_wall=[(stamp - CLOCK_PERIOD_NS, 50.89),
                                                            (stamp, 50.9), (stamp, 50.95)])
    assert ticks[0].latency_s == pytest.approx(0.1)


def test_unanswered_ticks_get_the_reason_from_status_then_diagnostics() -> None:
    live = [("camera", "LIVE", ""), ("lidar", "STALE", "no sample for 0.3 s")]
    dead = [("camera", "LOST", "no sample"), ("lidar", "DEGRADED", "3 bad samples in a row")]
    statuses = [(T0 + 1 * S, live), (T0 + 5 * S, dead), (T0 + 8 * S, live)]
    diags = [(T0 + 2 * S, "recognising from camera"),
             (T0 + round(3.5 * S), "no recognition: no embedding within max_age_s=1.00 s "
                                   "from the live sensors ['camera']"),
             (T0 + 9 * S, "recognising from camera")]
    received = [_rec(0.5, 0.5, label=""), _rec(3.0, 3.0, label=""),
                _rec(6.0, 6.0, label=""), _rec(8.5, 8.5, label="")]
    ticks, _ = tick_records(received, last_ns=T0 + 20 * S, diags=diags, statuses=statuses)
    assert [t.no_answer_reason for t in ticks] == [
        "no sensor is live",  # before any status: nothing is fusable yet
        "no embedding within max_age_s=1.00 s from the live sensors ['camera']",
        "no sensor is live",  # LOST and DEGRADED by quality
        "",  # live sensors and no diagnostics saying why: unknown
    ]
    assert all(t.stamp_ns is None and t.latency_s is None for t in ticks)


def test_state_changes_only_on_changes_and_rate_vs_quality_degraded() -> None:
    statuses = [
        (T0 + 1 * S, [("camera", "UNKNOWN", ""), ("lidar", "UNKNOWN", "")]),
        (T0 + 2 * S, [("camera", "LIVE", ""), ("lidar", "UNKNOWN", "")]),
        (T0 + 3 * S, [("camera", "LIVE", ""), ("lidar", "DEGRADED", "rate 4 Hz below 5 Hz")]),
        (T0 + 4 * S, [("camera", "LIVE", ""), ("lidar", "DEGRADED", "rate 3 Hz below 5 Hz")]),
        (T0 + 5 * S, [("camera", "LIVE", ""), ("lidar", "DEGRADED", "3 bad samples")]),
    ]
    changes = state_changes(statuses)
    assert [(c.t_ns - T0) // S for c in changes] == [1, 1, 2, 3, 5]
    assert [(c.sensor, c.state, c.fusable) for c in changes[2:]] == [
        ("camera", "LIVE", True), ("lidar", "DEGRADED", True), ("lidar", "DEGRADED", False)]


# -- ROS: real node, real player ---------------------------------------------------------------

DURATION_S = 6.0
PERIOD_S = 2.0
UNPLUG_S, REPLUG_S = 2.0, 4.0


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:

    return write_test_bundle(tmp_path_factory.mktemp("live") / "tiny")


def node_config(path: Path, labels: list[str], **fusion: Any) -> Path:
    """config/perception.yaml with the given labels (and fusion overrides)."""
    data = yaml.safe_load((REPO / "config" / "perception.yaml").read_text())
    params = data["/**/omnibind_perception"]["ros__parameters"]
    params["labels"]["names"] = labels
    params["fusion"].update(fusion)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def sim_bag(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 6 s record-sim bag: a new object every 2 s, the camera unplugged from 2 s to 4 s;
    and a node config whose labels are the bag's classes."""
    from omnibind_ros.bag.record import record_sim
    from omnibind_ros.bag.truth import GroundTruth

    root = tmp_path_factory.mktemp("live_bag")
    scenario = root / "unplug_camera.yaml"
    scenario.write_text(yaml.safe_dump({"events": [
        {"t": UNPLUG_S, "sensor": "camera", "action": "unplug"},
        {"t": REPLUG_S, "sensor": "camera", "action": "replug"}]}))
    bag = root / "sim"
    record_sim(bag, duration_s=DURATION_S, scenario=scenario, seed=3,
               object_period_s=PERIOD_S, progress=False)
    labels = GroundTruth.from_bag(bag).labels()
    assert len(labels) == 3
    return bag, node_config(root / "perception.yaml", labels)


@pytest.mark.ros
def test_live_matches_offline_on_a_sim_bag(sim_bag, bundle_dir) -> None:
    from omnibind_ros.bag.live import evaluate_live
    from omnibind_ros.bag.offline import evaluate_offline
    from omnibind_ros.bag.scoring import score

    bag, config = sim_bag
    offline = evaluate_offline(bag, bundle=bundle_dir, config=config, progress=False)
    # real time: a loaded 2-core machine keeps up with the player (at rate 2 the node's sensors
    # flap STALE when two other processes burn the cores)
    live = evaluate_live(bag, rate=1.0, bundle=bundle_dir, config=config, progress=False)
    assert live.mode == "live" and live.error is None and live.skipped_topics == {}
    assert live.extra["player"]["unmatched_topics"] == []

    # ticks at ~fusion.rate_hz (10 Hz) of bag time: on fresh evidence at most every 0.8
    # periods, plus one when a fused sensor leaves fusion or a sensor joins it (a machine that
    # stalls the node makes sensors flap LIVE/STALE: each change may add such a tick)
    span_s = (live.end_ns - live.start_ns) / S
    changes = len(live.states)
    assert 0.8 * 10 * span_s <= len(live.ticks) <= 1.25 * 10 * span_s + changes
    assert abs(len(live.ticks) - len(offline.ticks)) <= 0.2 * len(offline.ticks) + changes

    # the sensors of the bag are used, and the unplugged camera is not while it is out
    used = set().union(*(t.sensors for t in live.ticks))
    assert used <= set(live.sensors)
    assert {"camera", "thermal", "tactile", "lidar", "event_camera", "microphone"} <= used
    out = [t for t in live.ticks if t.answered and
           live.start_ns + (UNPLUG_S + 1.1) * S < t.stamp_ns < live.start_ns + REPLUG_S * S]
    assert out and all("camera" not in t.sensors for t in out)
    assert [p.label for p in live.phases] == ["all sensors", "camera unplugged",
                                              "all sensors"]

    s_live, s_off = score(live), score(offline)
    assert s_live["overall"]["scored"] >= 0.8 * s_off["overall"]["scored"]
    acc_live, acc_off = s_live["overall"]["accuracy"], s_off["overall"]["accuracy"]
    assert abs(acc_live - acc_off) <= 0.10, (acc_live, acc_off)
    # tick for tick: the live answer (and the sensors it fused) at a time is mostly offline's
    # at the nearest time; they differ where live received an input later than it was logged
    nearest = _nearest_ticks(offline.ticks)
    answered = [t for t in live.ticks if t.answered]
    same_label = [nearest(t.t_ns).best_label == t.best_label for t in answered]
    same_sensors = [set(nearest(t.t_ns).sensors) == set(t.sensors) for t in answered]
    assert sum(same_label) >= 0.75 * len(answered)
    assert sum(same_sensors) >= 0.6 * len(answered)
    lat = s_live["timing"]["latency_s"]
    assert lat["count"] == s_live["overall"]["answered"] and 0 < lat["p50"] < 1.0


def _nearest_ticks(ticks: list[Any]) -> Any:
    """``f(t_ns)``: the answered tick of ``ticks`` nearest ``t_ns``."""
    answered = [t for t in ticks if t.answered]
    times = [t.t_ns for t in answered]

    def nearest(t_ns: int) -> Any:
        i = bisect.bisect_left(times, t_ns)
        return answered[min((j for j in (i - 1, i) if 0 <= j < len(times)),
                            key=lambda j: abs(times[j] - t_ns))]
    return nearest


def _write_bag(path: Path, duration_s: float, image_px: int = 32) -> None:
    """A bag of camera + lidar at 10 Hz, plus a topic no sensor listens to and a sensor topic
    with the wrong type."""
    import numpy as np
    from builtin_interfaces.msg import Time
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from std_msgs.msg import String

    from omnibind_ros.bag.types import typestore
    from omnibind_ros.ros import conversions as conv

    rng = np.random.default_rng(0)
    store = typestore()
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        cam = writer.add_connection("/sim/camera/image_raw", "sensor_msgs/msg/Image",
                                    typestore=store)
        lidar = writer.add_connection("/sim/lidar/points", "sensor_msgs/msg/PointCloud2",
                                      typestore=store)
        other = writer.add_connection("/robot/chatter", "std_msgs/msg/String", typestore=store)
        wrong = writer.add_connection("/sim/thermal/image_raw", "std_msgs/msg/String",
                                      typestore=store)
        for k in range(int(duration_s * 10)):
            t = T0 + k * S // 10
            stamp = Time(sec=t // S, nanosec=t % S)
            pixels = rng.integers(0, 255, (image_px, image_px, 3), np.uint8)
            img = conv.numpy_to_image(pixels, "rgb8", stamp)
            pts = conv.xyz_to_pointcloud2(rng.normal(0, 0.03, (300, 3)).astype(np.float32)
                                          + np.float32([1.5, 0, 0.3]), stamp)
            writer.write(cam, t, serialize_message(img))
            writer.write(lidar, t + 1000, serialize_message(pts))
            if k % 5 == 0:
                writer.write(other, t + 2000, serialize_message(String(data="hi")))
                writer.write(wrong, t + 3000, serialize_message(String(data="no")))


@pytest.mark.ros
def test_live_plays_only_mapped_topics_in_process_player(tmp_path, bundle_dir) -> None:
    from omnibind_ros.bag.live import evaluate_live

    bag = tmp_path / "two"
    _write_bag(bag, 3.0)
    result = evaluate_live(bag, rate=2.0, bundle=bundle_dir, progress=False,
                           player_process=False)
    assert set(result.skipped_topics) == {"/robot/chatter", "/sim/thermal/image_raw"}
    assert "no sensor configured" in result.skipped_topics["/robot/chatter"]
    assert "std_msgs/msg/String" in result.skipped_topics["/sim/thermal/image_raw"]
    assert result.extra["player"]["published"] == {"/sim/camera/image_raw": 30,
                                                   "/sim/lidar/points": 30}
    assert result.truth is None and len(result.ticks) >= 20
    answered = [t for t in result.ticks if t.answered]
    assert answered and set().union(*(t.sensors for t in answered)) == {"camera", "lidar"}
    # without scenario events, phases come from the monitor: camera+lidar live, others out
    labels = {p.label for p in result.phases}
    assert any(label.startswith("thermal+event_camera+tactile+microphone+operator unplugged")
               for label in labels), labels


@pytest.mark.ros
def test_live_refuses_a_bag_without_mapped_topics(tmp_path, bundle_dir) -> None:
    from omnibind_ros.bag.live import LiveEvalError, evaluate_live

    bag = tmp_path / "two"
    _write_bag(bag, 0.5)
    config = node_config(tmp_path / "p.yaml", ["a", "b"])
    data = yaml.safe_load(config.read_text())
    data["/**/omnibind_perception"]["ros__parameters"]["sensors"] = ["tactile"]
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(LiveEvalError, match="no topic of .* is a sensor topic") as err:
        evaluate_live(bag, bundle=bundle_dir, config=config, progress=False)
    assert "/robot/chatter" in str(err.value) and "/sim/tactile/image_raw" in str(err.value)


@pytest.mark.ros
def test_live_on_a_truncated_bag_keeps_what_was_played(tmp_path, bundle_dir) -> None:
    from omnibind_ros.bag.live import evaluate_live

    bag = tmp_path / "cut"
    _write_bag(bag, 4.0, image_px=256)  # 200 KB frames: several mcap chunks
    (mcap,) = bag.glob("*.mcap")
    data = mcap.read_bytes()
    mcap.write_bytes(data[:len(data) // 2])  # a recorder killed half-way: no index, no footer
    result = evaluate_live(bag, rate=2.0, bundle=bundle_dir, progress=False)
    assert result.error is not None and "damaged at message" in result.error
    played = sum(result.extra["player"]["published"].values())
    assert 0 < played < 80
    assert result.end_ns < T0 + 4 * S and result.ticks
    assert all(t.t_ns <= result.end_ns or t.answered for t in result.ticks)
