"""Scores of hand-written ticks: verdicts, combinations, phases, bins, reasons (ROS-free)."""
from __future__ import annotations

import json

import pytest

from omnibind_ros.bag.scoring import (
    EvalResult,
    Phase,
    StateChange,
    TickRecord,
    auto_bin_s,
    phases_from_events,
    phases_from_states,
    reason_kind,
    score,
    tick_verdict,
)
from omnibind_ros.bag.truth import GroundTruth, TruthInterval

S = 1_000_000_000
T0 = 1_700_000_000 * S
MS = 1_000_000


def _tick(t_ms: int, label: str = "", modalities: tuple[str, ...] = ("image",),
          top: tuple[str, ...] = (), reason: str = "", latency: float | None = None,
          stamp_lag_ms: int = 20) -> TickRecord:
    if not label:
        return TickRecord(T0 + t_ms * MS, None, (), (), "", (), reason or "no sensor is live",
                          latency)
    sensors = tuple({"image": "cam", "point_cloud": "lidar", "audio": "mic"}[m]
                    for m in modalities)
    return TickRecord(T0 + t_ms * MS, T0 + (t_ms - stamp_lag_ms) * MS, sensors, modalities,
                      label, top or (label,), "", latency)


TRUTH = GroundTruth([TruthInterval(T0, T0 + 2 * S, "mug", 0),
                     TruthInterval(T0 + 2 * S, T0 + 4 * S, "can", 1)])


def _result(ticks: list[TickRecord], **kw: object) -> EvalResult:
    base = dict(bag="b", mode="offline", ticks=ticks, states=[], truth=TRUTH,
                phases=[Phase("all sensors", T0, T0 + 4 * S)], sensors=["cam", "lidar", "mic"],
                start_ns=T0, end_ns=T0 + 4 * S)
    base.update(kw)
    return EvalResult(**base)  # type: ignore[arg-type]


def test_verdicts_use_the_stamp_and_the_transition_window() -> None:
    tr = round(0.5 * S)
    assert tick_verdict(_tick(1000, "mug"), TRUTH, tr) == "correct"
    assert tick_verdict(_tick(1000, "can"), TRUTH, tr) == "wrong"
    # tick at 2.1 s fused a sample stamped 2.08 s: within 0.5 s of the change to "can"
    assert tick_verdict(_tick(2100, "can"), TRUTH, tr) == "transition"
    # tick time after the change, but its newest input is from before it: the old object
    assert tick_verdict(_tick(2010, "mug", stamp_lag_ms=30), TRUTH, tr) == "correct"
    assert tick_verdict(_tick(4500, "can"), TRUTH, tr) == "unscored"  # beyond the truth
    assert tick_verdict(_tick(1000, "mug"), None, tr) == "unscored"
    assert tick_verdict(_tick(1000), TRUTH, tr) == "no_answer"


def test_scores_overall_combinations_phases_bins() -> None:
    ticks = [
        _tick(100, "mug"),  # transition (first object appeared at 0)
        _tick(1000, "mug", ("image", "point_cloud"), latency=0.010),
        _tick(1100, "can", ("image", "point_cloud"), top=("can", "mug"), latency=0.030),
        _tick(1200, "mug", ("point_cloud",), latency=0.020),
        _tick(1300, reason="no embedding within max_age_s=1.00 s from the live sensors "
                           "['cam']"),
        _tick(1400, reason="no embedding within max_age_s=1.00 s from the live sensors "
                           "['cam', 'lidar']"),
        _tick(1500),
        _tick(3000, "can", ("image", "point_cloud", "image")),  # two cameras: one modality
        _tick(3100, "can", ("audio",)),
    ]
    phases = [Phase("all sensors", T0, T0 + 1150 * MS),
              Phase("cam unplugged", T0 + 1150 * MS, T0 + 2 * S),
              Phase("all sensors", T0 + 2 * S, T0 + 4 * S)]
    result = _result(ticks, phases=phases, wall_s=2.0)
    sc = score(result, bin_s=1.0)
    assert sc["overall"] == {"ticks": 9, "answered": 6, "answered_fraction": round(6 / 9, 6),
                             "scored": 5, "correct": 4, "accuracy": 0.8,
                             "top_k_accuracy": 1.0, "transition": 1, "unscored": 0,
                             "top_k": 2}
    by_mod = {row["key"]: row for row in sc["by_modalities"]}
    assert list(by_mod) == ["image+point_cloud", "audio", "image", "point_cloud"]  # most first
    assert (by_mod["image+point_cloud"]["ticks"], by_mod["image+point_cloud"]["correct"]) == (3, 2)
    assert by_mod["image"]["transition"] == 1 and by_mod["audio"]["accuracy"] == 1.0
    assert {row["key"] for row in sc["by_sensors"]} == {"cam+lidar", "cam", "mic", "lidar",
                                                        "cam+cam+lidar"}
    assert [(p["label"], p["ticks"], p["answered"], p["correct"]) for p in sc["by_phase"]] == [
        ("all sensors", 3, 3, 1), ("cam unplugged", 4, 1, 1), ("all sensors", 2, 2, 2)]
    assert [(b["start_s"], b["ticks"], b["scored"]) for b in sc["over_time"]["bins"]] == [
        (0.0, 1, 0), (1.0, 6, 3), (2.0, 0, 0), (3.0, 2, 2)]
    unanswered = sc["unanswered"]
    assert unanswered["ticks"] == 3
    assert [(r["reason"], r["ticks"]) for r in unanswered["reasons"]] == [
        ("no embedding within max_age_s=# s from the live sensors [...]", 2),
        ("no sensor is live", 1)]
    assert sc["input_age_s"]["p50"] == pytest.approx(0.02)
    assert sc["timing"]["latency_s"]["count"] == 3
    assert sc["timing"]["latency_s"]["p50"] == pytest.approx(0.02)
    assert sc["timing"]["ticks_per_s"] == 4.5
    assert sc["verdicts"][:3] == ["transition", "correct", "wrong"]
    json.dumps(sc, allow_nan=False)  # JSON-able


def test_score_without_truth_or_ticks() -> None:
    sc = score(_result([_tick(1000, "mug"), _tick(1100)], truth=None))
    assert sc["overall"]["answered"] == 1 and sc["overall"]["unscored"] == 1
    assert sc["overall"]["accuracy"] is None
    empty = score(_result([]))
    assert empty["overall"]["ticks"] == 0 and empty["over_time"]["bins"] == []
    assert empty["timing"]["latency_s"]["p50"] is None


def test_tick_at_the_very_end_lands_in_the_last_bin() -> None:
    sc = score(_result([_tick(4000, "can")]), bin_s=1.0)
    assert [b["ticks"] for b in sc["over_time"]["bins"]] == [0, 0, 0, 1]
    assert auto_bin_s(8.0) == 1.0 and auto_bin_s(120.0) == 5.0 and auto_bin_s(7200.0) == 300.0


def test_reason_kind_strips_numbers_and_lists() -> None:
    assert reason_kind("1 live modality ['image'] (sensors ['cam']), min_modalities is 2") == \
        "# live modality [...] , min_modalities is #"
    assert reason_kind("") == "unknown (no reason recorded)"


def test_phases_from_recorded_events() -> None:
    events = [(T0 + 10 * S, json.dumps({"t_s": 10.0, "action": "unplug", "sensors": ["cam"]})),
              (T0 + 20 * S, {"t_s": 20.0, "action": "unplug", "sensors": ["lidar"]}),
              (T0 + 20 * S, {"t_s": 20.0, "action": "noise_on", "sensors": ["mic"]}),
              (T0 + 30 * S, {"t_s": 30.0, "action": "replug", "sensors": ["cam", "lidar"]}),
              (T0 + 35 * S, {"t_s": 35.0, "action": "noise_off", "sensors": ["mic"]})]
    phases = phases_from_events(events, ["cam", "lidar", "mic"], T0, T0 + 40 * S)
    assert [(p.label, (p.start_ns - T0) // S, (p.end_ns - T0) // S) for p in phases] == [
        ("all sensors", 0, 10), ("cam unplugged", 10, 20),
        ("cam+lidar unplugged, mic noisy", 20, 30), ("mic noisy", 30, 35),
        ("all sensors", 35, 40)]
    assert phases_from_events([], ["cam"], T0, T0 + S) == [Phase("all sensors", T0, T0 + S)]


def test_phases_from_monitor_states() -> None:
    states = [StateChange(T0 + 10 * MS, "cam", "LIVE"), StateChange(T0 + 20 * MS, "lidar", "LIVE"),
              StateChange(T0 + 3 * S, "cam", "STALE", "no sample for 0.30 s"),
              StateChange(T0 + 4 * S, "cam", "LOST", "no sample for 1.1 s"),
              StateChange(T0 + 5 * S, "lidar", "DEGRADED", "rate 2.0 Hz below 5.0 Hz"),
              StateChange(T0 + 6 * S, "cam", "LIVE"),
              StateChange(T0 + 7 * S, "lidar", "DEGRADED", "3 bad samples in a row: NoObject"),
              StateChange(T0 + 8 * S, "lidar", "LIVE")]
    phases = phases_from_states(states, ["cam", "lidar"], T0, T0 + 10 * S)
    # UNKNOWN at the start is not a phase; STALE and LOST are one "unplugged" phase; a rate
    # DEGRADED still fuses (no phase); a quality DEGRADED is "noisy"
    assert [(p.label, (p.start_ns - T0) / S, (p.end_ns - T0) / S) for p in phases] == [
        ("all sensors", 0.0, 3.0), ("cam unplugged", 3.0, 6.0), ("all sensors", 6.0, 7.0),
        ("lidar noisy", 7.0, 8.0), ("all sensors", 8.0, 10.0)]


def test_truth_labels_outside_the_label_set_are_warned_with_the_nearest_label() -> None:
    from omnibind_ros.bag.report import render_markdown, report_json

    relabelled = _result([_tick(1000, "mug")], extra={"labels": ["mug", "cans", "teapot"]})
    assert relabelled.warnings == [
        "ground-truth label 'can' is not in the label set, so every tick of it is scored "
        "wrong; nearest label: 'cans'"]
    scores = score(relabelled)
    assert "> **Warning:** ground-truth label 'can'" in render_markdown(relabelled, scores)
    assert report_json(relabelled, scores)["warnings"] == relabelled.warnings
    assert _result([], extra={"labels": ["mug", "can"]}).warnings == []
    assert _result([], truth=None, extra={"labels": ["x"]}).warnings == []


def test_degraded_phases_from_bag_events_name_the_degradation() -> None:
    """A record-sim bag's scenario events carry the degradation's kind: the phase says what
    happened to the sensor ("camera dark"), as the live demo does."""
    s = 1_000_000_000
    events = [(2 * s, '{"t_s": 2.0, "action": "degrade_on", "sensors": ["camera"], '
                      '"kind": "dark", "severity": 0.9}'),
              (4 * s, {"t_s": 4.0, "action": "degrade_off", "sensors": ["camera"]}),
              (5 * s, {"t_s": 5.0, "action": "degrade_on", "sensors": ["microphone"]})]
    phases = phases_from_events(events, ["camera", "microphone"], 0, 6 * s)
    assert [p.label for p in phases] == ["all sensors", "camera dark", "all sensors",
                                         "microphone degraded"]
    assert [(p.start_ns, p.end_ns) for p in phases] == [(0, 2 * s), (2 * s, 4 * s),
                                                         (4 * s, 5 * s), (5 * s, 6 * s)]
