"""Offline evaluation of a recorded bag against a direct, message-by-message evaluation.

One short record-sim bag (4 s; camera, lidar, microphone and operator text; the camera unplugged
in [1, 2) s; a new object every 1.5 s) and the tiny bundle with the bag's labels (embedded by
its text tower), so the answers are deterministic but not trivially right or wrong.

The direct evaluation below is the plainest form of the node's path: every message in bag
order through SampleGate, its own single-sample encode, the monitor, the store, the tick
scheduler and FusionTick, with the heartbeat timer interleaved. The evaluator batches,
parallelises and encodes only what ticks fuse; its ticks must be the same, number for number.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import zlib
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.ros  # rclpy deserializes the messages

testing = pytest.importorskip("omnibind_train.testing", reason="needs omnibind_train (torch)")

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
    bundle = testing.build_tiny_bundle(root / "tiny")
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
                            threads=2, progress=False)


def direct_evaluation(bag: Path, config: Path, bundle_dir: Path,
                      wrap: Any = None) -> list[tuple[int, Any]]:
    """(tick ns, FusionResult) of the node's path run message by message (module docstring);
    ``wrap(backend)`` may replace the backend."""
    from rclpy.serialization import deserialize_message

    from omnibind_ros.bag.config import load_node_config
    from omnibind_ros.bag.reader import iter_messages, open_info
    from omnibind_ros.core.availability import AvailabilityMonitor
    from omnibind_ros.core.backends import create_backend
    from omnibind_ros.core.bundle import load_bundle
    from omnibind_ros.core.fusion import EmbeddingSlot, LatestEmbeddings, TickScheduler
    from omnibind_ros.ros import perception_lifecycle as pl
    from omnibind_ros.ros.conversions import conversion_for
    from omnibind_ros.ros.sensor_worker import (
        SampleGate,
        bad_reason,
        checked_embedding,
        make_pipeline,
    )

    cfg = load_node_config(config)
    bundle = load_bundle(bundle_dir)
    backend = create_backend("onnxruntime", bundle, threads=1)
    if wrap is not None:
        backend = wrap(backend)
    names, embeddings = pl.resolve_labels(bundle, backend, cfg.label_names, cfg.label_file)
    fusion = pl.build_fusion_tick(bundle, backend, cfg.fusion, names, embeddings)
    start = open_info(bag).start_ns
    monitor = AvailabilityMonitor(clock_jump_tolerance_s=pl.CLOCK_JUMP_TOLERANCE_S)
    sensors = {}
    for s in cfg.sensors:
        monitor.add_sensor(s.monitor_config(cfg.bad_samples_to_degrade), start * 1e-9)
        gate = SampleGate(conversion_for(s.modality, s.message_type),
                          make_pipeline(s.modality, bundle, backend), s.encode_rate_hz)
        sensors[s.topic] = (s, gate, pl.message_class(s.message_type))
    store = LatestEmbeddings()
    scheduler = TickScheduler(cfg.fusion.rate_hz, cfg.fusion.tick_on_embedding)
    period = round(scheduler.timer_period_s * S)  # the node's fusion timer
    monitor_period = round(S / pl.MONITOR_HZ)  # the node's monitor timer
    out: list[tuple[int, Any]] = []
    k = u = 1

    def tick(t_ns: int, sensor: str | None = None, trigger: str = "timer") -> None:
        now = t_ns * 1e-9  # PerceptionNode._fusion_tick
        fusable = monitor.fusable(now, fusion.max_age_s)
        if sensor is not None:
            last = out[-1][1].sensors if out else None
            due = scheduler.embedding_due(now, joins=sensor in fusable and (
                last is None or sensor not in last),
                freshest=pl.is_freshest(store, sensor, fusable))
        elif trigger == "change":
            due = scheduler.change_due(now)
        else:
            due = scheduler.timer_due(now)
        if due:
            scheduler.ticked(now)
            out.append((t_ns, fusion.tick(store, fusable, now)))

    def monitor_tick(t_ns: int) -> None:  # PerceptionNode._monitor_tick
        changed = {t.name for t in monitor.update(t_ns * 1e-9)}
        if out and changed & set(out[-1][1].sensors):
            tick(t_ns, trigger="change")

    def timers(until: int, inclusive: bool) -> None:
        nonlocal k, u
        while True:  # fusion timer and monitor timer, earliest first (fusion on a tie)
            t_fusion, t_monitor = start + k * period, start + u * monitor_period
            t = min(t_fusion, t_monitor)
            if t > until or (t == until and not inclusive):
                return
            if t_fusion <= t_monitor:
                k += 1
                tick(t_fusion)
            else:
                u += 1
                monitor_tick(t_monitor)

    last = start
    for m in iter_messages(bag):
        last = m.log_time_ns
        if m.topic not in sensors:
            continue
        timers(m.log_time_ns, inclusive=False)
        s, gate, cls = sensors[m.topic]
        msg = deserialize_message(m.rawdata, cls)
        now = m.log_time_ns * 1e-9
        header = getattr(msg, "header", None)
        stamp = now if header is None else header.stamp.sec + header.stamp.nanosec * 1e-9
        admission = gate.admit(msg, stamp, now)
        if admission.kind == "bad":
            monitor.on_bad_sample(s.name, now, admission.reason)
            continue
        if admission.kind == "valid":
            monitor.on_sample(s.name, stamp, now)
            continue
        try:
            model_input = gate.model_input(admission.payload)
            embedding = checked_embedding(gate.pipeline.encode(model_input))
        except Exception as exc:  # noqa: BLE001
            monitor.on_bad_sample(s.name, now, bad_reason(exc))
            continue
        if monitor.on_sample(s.name, stamp, now):
            store.put(EmbeddingSlot(s.name, s.modality, stamp, embedding), now)
            tick(m.log_time_ns, s.name)
    timers(last, inclusive=True)
    monitor_tick(last)
    return out


def test_offline_matches_direct_evaluation(setup: dict[str, Any], result: Any) -> None:
    from omnibind_ros.bag.scoring import EvalResult, TickRecord, score

    direct = direct_evaluation(setup["bag"], setup["config"], setup["bundle"])
    assert result.error is None
    assert len(result.ticks) == len(direct) >= 35  # ~10 Hz over 4 s
    for tick, (t_ns, ref) in zip(result.ticks, direct, strict=True):
        assert tick.t_ns == t_ns
        assert tick.best_label == ref.best_label
        assert tick.top_labels == ref.top_labels
        assert tick.sensors == ref.sensors and tick.modalities == ref.modalities
        assert tick.no_answer_reason == ref.no_answer_reason
        assert tick.best_score == pytest.approx(ref.best_score, abs=1e-6)
        if ref.stamp_s is not None:
            assert tick.stamp_ns * 1e-9 == pytest.approx(ref.stamp_s, abs=1e-6)
    # the same scores from the direct ticks
    ref_ticks = [TickRecord(t, None if r.stamp_s is None else round(r.stamp_s * S),
                            r.sensors, r.modalities, r.best_label, r.top_labels,
                            r.no_answer_reason, None) for t, r in direct]
    ref_result = EvalResult(
        bag=result.bag, mode="direct", ticks=ref_ticks, states=result.states,
        truth=result.truth, phases=result.phases, sensors=result.sensors,
        start_ns=result.start_ns, end_ns=result.end_ns)
    ours, theirs = score(result), score(ref_result)
    for key in ("overall", "by_modalities", "by_sensors", "by_phase", "over_time"):
        assert ours[key] == theirs[key], key
    overall = ours["overall"]
    assert overall["scored"] > 10 and overall["accuracy"] is not None
    assert overall["correct"] == sum(v == "correct" for v in ours["verdicts"])


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


def _ticks_equal(ours: list[Any], direct: list[tuple[int, Any]]) -> None:
    assert [(t.t_ns, t.best_label, t.sensors, t.no_answer_reason) for t in ours] == [
        (t, r.best_label, r.sensors, r.no_answer_reason) for t, r in direct]


def test_encoder_failures_are_bad_samples(setup: dict[str, Any]) -> None:
    """The engine on in-memory messages with a failing encoder: with encode_all, exactly the
    direct evaluation; lazily, failures of fused samples are still bad samples (pass 2)."""
    from omnibind_ros.bag.config import load_node_config
    from omnibind_ros.bag.offline import OfflineEvaluator
    from omnibind_ros.bag.reader import iter_messages
    from omnibind_ros.core.backends import create_backend
    from omnibind_ros.core.bundle import load_bundle

    messages = list(iter_messages(setup["bag"]))
    cfg = load_node_config(setup["config"])
    bundle = load_bundle(setup["bundle"])
    direct = direct_evaluation(setup["bag"], setup["config"], setup["bundle"], FailingEncoder)
    runs, replayed = {}, {}
    for encode_all in (True, False):
        backend = FailingEncoder(create_backend("onnxruntime", bundle, threads=1))
        evaluator = OfflineEvaluator(cfg, bundle, backend, threads=2, encode_all=encode_all)
        try:
            runs[encode_all] = evaluator.run(messages, messages[0].log_time_ns)
        finally:
            evaluator.close()
        replayed[encode_all] = evaluator.timing["windows_replayed"]
    assert replayed == {True: 0, False: replayed[False]} and replayed[False] > 0
    ticks, states, _ = runs[True]
    _ticks_equal(ticks, direct)
    camera = [c for c in states if c.sensor == "camera"]
    assert any(c.state == "DEGRADED" and "non-finite" in c.reason for c in camera)
    lazy_ticks, lazy_states, _ = runs[False]
    assert any(c.state == "DEGRADED" for c in lazy_states if c.sensor == "camera")
    assert len(lazy_ticks) > 30 and all(t.best_label or t.no_answer_reason for t in lazy_ticks)


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
    # audio: every chunk counts, the encoder runs at 10 Hz at most (and only for fused ones)
    assert result.extra["sensors"]["microphone"]["encoded"] <= 41


def _json_without_timing(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    doc.pop("timing")
    return doc


def test_deterministic_json(setup: dict[str, Any], result: Any, tmp_path: Path) -> None:
    """Two runs: identical JSON apart from "timing"; another thread count and encoding every
    message: the same ticks."""
    from omnibind_ros.bag.offline import evaluate_offline
    from omnibind_ros.bag.report import write_report
    from omnibind_ros.bag.scoring import score

    kwargs = dict(bundle=setup["bundle"], config=setup["config"], progress=False)
    again = evaluate_offline(setup["bag"], threads=2, **kwargs)
    a = write_report(result, score(result), tmp_path / "a", plots=False)
    b = write_report(again, score(again), tmp_path / "b", plots=False)
    assert _json_without_timing(a["json"]) == _json_without_timing(b["json"])
    assert a["json"].read_text() != b["json"].read_text()  # the timing part does differ
    assert a["ticks"].read_text() == b["ticks"].read_text()
    other = evaluate_offline(setup["bag"], threads=1, encode_all=True, **kwargs)

    def key(r: Any) -> list[Any]:
        return [dataclasses.replace(t, latency_s=None) for t in r.ticks]

    assert key(other) == key(result) and other.states == result.states
    assert sum(v["encoded"] for v in other.extra["sensors"].values()) > \
        sum(v["encoded"] for v in result.extra["sensors"].values())


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
                               threads=2, progress=False)
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
                                truth_csv=csv_path, threads=2, progress=False)
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
    out = evaluate_offline(setup["bag"], bundle=setup["bundle"], config=config, threads=2,
                           progress=False)
    assert "sensor lidar is configured for sensor_msgs/msg/CompressedImage" in \
        out.skipped_topics["/sim/lidar/points"]
    assert out.skipped_topics["/sim/microphone/audio"].startswith("no sensor configured")
    assert "/sim/operator/text" in out.skipped_topics
    assert out.extra["sensors"]["lidar"]["messages"] == 0
    assert all(t.sensors in ((), ("camera",)) for t in out.ticks)
    lidar = [c.state for c in out.states if c.sensor == "lidar"]
    assert lidar[-1] == "LOST"  # configured but silent: LOST after its grace
