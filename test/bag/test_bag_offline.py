"""Offline evaluation of a recorded bag against the perception node fed the same messages.

One short record-sim bag (4 s; camera, lidar, microphone and operator text; the camera unplugged
in [1, 2) s; a new object every 1.5 s) and the tiny bundle with the bag's labels (embedded by
its text tower), so the answers are deterministic but not trivially right or wrong.

The reference is the node itself (:func:`node_evaluation`): a configured and activated
PerceptionNode on sim time, each bag message handed to its subscription's callback at the
message's log time and its sensor worker waited for (an infinitely fast machine), its own timers
called on their grid of the bag clock. Offline evaluation must publish the same ticks.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import zlib
from pathlib import Path
from typing import Any

import pytest

from omnibind_ros.testing import write_test_bundle

pytestmark = pytest.mark.ros  # rclpy deserializes the messages


S = 1_000_000_000
SENSORS = ["camera", "lidar", "microphone", "operator"]
CAMERA = "/sim/camera/image_raw"


def _config(path: Path, labels: list[str], sensors: dict[str, str] | None = None) -> Path:
    sensors = sensors or {
        "camera": "{modality: image, topic: /sim/camera/image_raw, expected_rate_hz: 15.0}",
        "lidar": "{modality: point_cloud, topic: sim/lidar/points, expected_rate_hz: 10.0}",
        "microphone": ("{modality: audio, topic: /sim/microphone/audio, expected_rate_hz: 50.0,"
                       " stale_after: 6.0, lost_after: 25.0}")}
    body = "\n".join(f"    sensors.{name}: {spec}" for name, spec in sensors.items())
    path.write_text(f"""/**/omnibind_perception:
  ros__parameters:
    sensors: {json.dumps(list(sensors))}
    fusion: {{rate_hz: 10.0, max_age_s: 1.0}}
    labels:
      names: {json.dumps(labels)}
{body}
""")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from omnibind_ros.bag.record import record_sim
    from omnibind_ros.bag.truth import GroundTruth

    root = tmp_path_factory.mktemp("offline")
    bundle = write_test_bundle(root / "tiny")
    bag = root / "bag"
    record_sim(bag, duration_s=4.0, scenario="quick_unplug", seed=3, sensors=SENSORS,
               object_period_s=1.5, progress=False)
    truth = GroundTruth.from_bag(bag)
    labels = [*truth.labels(), "glass teapot"]  # the truth plus one distractor
    config = _config(root / "perception.yaml", labels)
    return {"root": root, "bundle": bundle, "bag": bag, "config": config, "labels": labels}


@pytest.fixture(scope="module")
def result(setup: dict[str, Any]) -> Any:
    from omnibind_ros.bag.offline import evaluate_offline

    return evaluate_offline(setup["bag"], bundle=setup["bundle"], config=setup["config"],
                            processes=0, progress=False)


def node_evaluation(bag: Path, config: Path, bundle_dir: Path) -> list[Any]:
    """The Recognition messages the perception node publishes when fed the bag (see the
    module docstring)."""
    import rclpy
    from rclpy.context import Context
    from rclpy.parameter import Parameter
    from rclpy.serialization import deserialize_message
    from rclpy.signals import SignalHandlerOptions
    from rclpy.time import Time

    from omnibind_ros.bag.reader import iter_messages, open_info
    from omnibind_ros.core.recognizer import MONITOR_RATE_HZ
    from omnibind_ros.ros.interfaces import message_class
    from omnibind_ros.ros.perception_lifecycle import PerceptionNode

    context = Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    published: list[Any] = []
    node = PerceptionNode(
        context=context, cli_args=["--ros-args", "--params-file", str(config)],
        parameter_overrides=[Parameter("bundle_path", value=str(bundle_dir)),
                             Parameter("use_sim_time", value=True)],
        on_recognition=published.append)
    try:
        clock = node.get_clock()
        start = open_info(bag).start_ns

        def at(t_ns: int) -> None:
            clock.set_ros_time_override(Time(nanoseconds=t_ns, clock_type=clock.clock_type))

        at(start)
        assert node.autostart()
        timers = {t.timer_period_ns: t for t in node.timers}
        fusion_period = node.engine.timer_period_ns
        monitor_period = round(S / MONITOR_RATE_HZ)
        fusion_timer, monitor_timer = timers[fusion_period], timers[monitor_period]
        subscriptions = {sub.topic_name: sub for sub in node.subscriptions}
        sensors = {topic: name for name, topic in node.subscribed_topics().items()}
        k = u = 1

        def timers_until(until: int, inclusive: bool) -> None:
            nonlocal k, u
            while True:  # fusion timer and monitor timer, earliest first (fusion on a tie)
                t_fusion, t_monitor = start + k * fusion_period, start + u * monitor_period
                t = min(t_fusion, t_monitor)
                if t > until or (t == until and not inclusive):
                    return
                at(t)
                if t_fusion <= t_monitor:
                    k += 1
                    fusion_timer.callback()
                else:
                    u += 1
                    monitor_timer.callback()

        last = start
        for m in iter_messages(bag):
            last = m.log_time_ns
            name = sensors.get(m.topic)
            if name is None:
                continue
            timers_until(m.log_time_ns, inclusive=False)
            at(m.log_time_ns)
            sub = subscriptions[m.topic]
            sub.callback(deserialize_message(m.rawdata, message_class(m.msgtype)))
            assert node.sensor_worker(name).wait_idle(10.0)
        timers_until(last, inclusive=True)
        at(last)
        monitor_timer.callback()
        return published
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


def _stamp_ns(msg: Any) -> int:
    return msg.header.stamp.sec * S + msg.header.stamp.nanosec


def _same_ticks(ticks: list[Any], published: list[Any]) -> None:
    """Offline ticks and the node's Recognition messages, one for one."""
    assert len(ticks) == len(published)
    for tick, msg in zip(ticks, published, strict=True):
        assert tick.best_label == msg.best_label
        assert tick.sensors == tuple(msg.sensors) and tick.modalities == tuple(msg.modalities)
        assert tick.top_labels == tuple(msg.top_labels)
        assert tick.best_score == pytest.approx(msg.best_score, abs=1e-6)
        # an answer is stamped with its newest sample, "no answer" with the tick time
        assert (tick.stamp_ns if tick.answered else tick.t_ns) == _stamp_ns(msg)


def test_offline_matches_the_node(setup: dict[str, Any], result: Any) -> None:
    from omnibind_ros.bag.scoring import score

    published = node_evaluation(setup["bag"], setup["config"], setup["bundle"])
    assert result.error is None
    assert len(result.ticks) >= 35  # ~10 Hz over 4 s
    _same_ticks(result.ticks, published)
    assert sum(t.answered for t in result.ticks) >= 35
    assert {t.sensors for t in result.ticks} >= {("camera", "microphone", "lidar"),
                                                  ("microphone", "lidar")}  # camera unplugged
    overall = score(result)["overall"]
    assert overall["scored"] > 10 and overall["accuracy"] is not None
    assert overall["correct"] == sum(v == "correct" for v in score(result)["verdicts"])


class FailingEncoder:
    """A backend whose camera encoder returns NaN for a third of its inputs (by content, so
    the same input fails whatever the batch)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode(self, modality: str, batch: Any) -> Any:
        import numpy as np

        out = np.array(self.inner.encode(modality, batch), copy=True)
        if modality == "image":
            for i, x in enumerate(batch):
                if zlib.crc32(np.ascontiguousarray(x).tobytes()) % 3 == 0:
                    out[i] = np.nan
        return out


def test_encoder_failures_are_bad_samples(setup: dict[str, Any],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A camera encoder that fails for some inputs: bad samples (camera DEGRADED), offline as
    in the node."""
    from omnibind_ros.bag.offline import evaluate_offline
    from omnibind_ros.ros import perception_lifecycle

    failing = evaluate_offline(setup["bag"], bundle=setup["bundle"], config=setup["config"],
                               processes=0, backend_wrapper=FailingEncoder, progress=False)
    real = perception_lifecycle.create_backend
    monkeypatch.setattr(perception_lifecycle, "create_backend",
                        lambda *args, **kwargs: FailingEncoder(real(*args, **kwargs)))
    published = node_evaluation(setup["bag"], setup["config"], setup["bundle"])
    _same_ticks(failing.ticks, published)
    camera = [c for c in failing.states if c.sensor == "camera"]
    assert any(c.state == "DEGRADED" and "non-finite" in c.reason for c in camera)
    assert any("camera" in t.sensors for t in failing.ticks)  # its good samples still fuse


def test_offline_follows_the_scenario(result: Any) -> None:
    """Camera unplugged in [1, 2) s: phases from the recorded events, camera out of fusion."""
    from omnibind_ros.bag.scoring import score

    t0 = result.start_ns
    assert [(p.label, p.start_ns - t0, p.end_ns - t0) for p in result.phases] == [
        ("all sensors", 0, 1 * S), ("camera unplugged", 1 * S, 2 * S),
        ("all sensors", 2 * S, result.end_ns - t0)]
    stale_after_s = 2.5 / 15.0
    for tick in result.ticks:
        t = (tick.t_ns - t0) / S
        if 1.0 + stale_after_s + 0.01 < t < 2.0:
            assert "camera" not in tick.sensors and tick.best_label  # lidar + mic still answer
        if 0.3 < t < 1.0 or 2.1 < t:
            assert "camera" in tick.sensors
    camera = [(c.t_ns - t0, c.state) for c in result.states if c.sensor == "camera"]
    # STALE after 2.5 periods, LOST after 10 (0.67 s), LIVE at the first sample after 2 s
    assert [s for _, s in camera] == ["LIVE", "STALE", "LOST", "LIVE"]
    monitor_period = S // 20  # the node's MONITOR_HZ grid reports time-driven changes
    assert 1 * S < camera[1][0] <= 1 * S + round(stale_after_s * S) + monitor_period
    assert camera[2][0] <= 1 * S + round(10 / 15 * S) + monitor_period
    assert camera[3][0] == 2 * S
    phases = score(result)["by_phase"]
    assert [p["label"] for p in phases] == ["all sensors", "camera unplugged", "all sensors"]
    assert sum(p["ticks"] for p in phases) == len(result.ticks)
    assert result.skipped_topics == {
        "/sim/operator/text": "no sensor configured for it (std_msgs/msg/String, 1 messages)"}
    assert result.extra["sensors"]["microphone"]["messages"] == 199
    # audio: every chunk counts, the encoder runs at 10 Hz at most
    assert 30 <= result.extra["sensors"]["microphone"]["encoded"] <= 41


def _json_without_timing(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    doc.pop("timing")
    return doc


def test_deterministic_json(setup: dict[str, Any], result: Any, tmp_path: Path) -> None:
    """Two runs: identical JSON apart from "timing"."""
    from omnibind_ros.bag.offline import evaluate_offline
    from omnibind_ros.bag.report import write_report
    from omnibind_ros.bag.scoring import score

    again = evaluate_offline(setup["bag"], bundle=setup["bundle"], config=setup["config"],
                             processes=0, progress=False)
    a = write_report(result, score(result), tmp_path / "a", plots=False)
    b = write_report(again, score(again), tmp_path / "b", plots=False)
    assert _json_without_timing(a["json"]) == _json_without_timing(b["json"])
    assert a["json"].read_text() != b["json"].read_text()  # the timing part does differ
    assert a["ticks"].read_text() == b["ticks"].read_text()


def test_truncated_bag_keeps_partial_results(setup: dict[str, Any], result: Any,
                                             tmp_path: Path) -> None:
    from omnibind_ros.bag.offline import evaluate_offline
    from omnibind_ros.bag.report import write_report
    from omnibind_ros.bag.scoring import score

    damaged = tmp_path / "damaged"
    shutil.copytree(setup["bag"], damaged)
    (mcap,) = damaged.glob("*.mcap")
    data = mcap.read_bytes()
    mcap.write_bytes(data[:int(len(data) * 0.6)])  # a recorder killed part-way
    partial = evaluate_offline(damaged, bundle=setup["bundle"], config=setup["config"],
                               processes=0, progress=False)
    assert partial.error and "damaged at message" in partial.error and " t=" in partial.error
    assert result.start_ns < partial.end_ns < result.end_ns
    assert 5 < len(partial.ticks) < len(result.ticks)
    # up to the damage, the evaluation is the intact bag's
    def key(ticks: list[Any]) -> list[Any]:  # latency_s is wall-clock compute time
        return [dataclasses.replace(t, latency_s=None) for t in ticks if t.t_ns < partial.end_ns]

    assert key(partial.ticks) == key(result.ticks)[:len(key(partial.ticks))]
    paths = write_report(partial, score(partial), tmp_path / "report", plots=False)
    assert "The bag is damaged" in paths["markdown"].read_text()
    assert json.loads(paths["json"].read_text())["error"] == partial.error


def test_csv_truth_scores_like_the_topic(setup: dict[str, Any], result: Any,
                                         tmp_path: Path) -> None:
    from omnibind_ros.bag.offline import evaluate_offline
    from omnibind_ros.bag.scoring import score

    rows = ["start_s,end_s,label"]
    for interval in result.truth.intervals:
        start = (interval.start_ns - result.start_ns) / S
        end = (interval.end_ns - result.start_ns) / S
        rows.append(f"{start!r},{end!r},{interval.label}")
    csv_path = tmp_path / "truth.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    with_csv = evaluate_offline(setup["bag"], bundle=setup["bundle"], config=setup["config"],
                                truth_csv=csv_path, processes=0, progress=False)
    assert with_csv.extra["truth_source"] == "csv"
    assert [(i.start_ns, i.label) for i in with_csv.truth.intervals] == [
        (i.start_ns, i.label) for i in result.truth.intervals]
    ours, theirs = score(with_csv), score(result)
    for key in ("overall", "by_modalities", "by_phase", "over_time", "verdicts"):
        assert ours[key] == theirs[key], key
    assert ours["overall"]["scored"] > 0


def test_bag_without_mapped_topic(setup: dict[str, Any], tmp_path: Path) -> None:
    from omnibind_ros.bag.offline import BagEvalError, evaluate_offline

    config = _config(tmp_path / "other.yaml", setup["labels"], {
        "front": "{modality: image, topic: /robot/front/image, expected_rate_hz: 30.0}"})
    with pytest.raises(BagEvalError) as err:
        evaluate_offline(setup["bag"], bundle=setup["bundle"], config=config, progress=False)
    text = str(err.value)
    assert "no topic of bag" in text and CAMERA in text and "/robot/front/image" in text


def test_unknown_and_mistyped_topics_are_skipped(setup: dict[str, Any], tmp_path: Path) -> None:
    """A sensor configured with another type on a bag topic is skipped with the reason."""
    from omnibind_ros.bag.offline import evaluate_offline

    config = _config(tmp_path / "mistyped.yaml", setup["labels"], {
        "camera": "{modality: image, topic: /sim/camera/image_raw, expected_rate_hz: 15.0}",
        "lidar": ("{modality: image, topic: /sim/lidar/points, expected_rate_hz: 10.0, "
                  "message_type: sensor_msgs/msg/CompressedImage}")})
    out = evaluate_offline(setup["bag"], bundle=setup["bundle"], config=config, processes=0,
                           progress=False)
    assert "sensor lidar is configured for sensor_msgs/msg/CompressedImage" in \
        out.skipped_topics["/sim/lidar/points"]
    assert out.skipped_topics["/sim/microphone/audio"].startswith("no sensor configured")
    assert "/sim/operator/text" in out.skipped_topics
    assert out.extra["sensors"]["lidar"]["messages"] == 0
    assert all(t.sensors in ((), ("camera",)) for t in out.ticks)
    lidar = [c.state for c in out.states if c.sensor == "lidar"]
    assert lidar[-1] == "LOST"  # configured but silent: LOST after its grace
