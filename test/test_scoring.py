"""The shared scoring (omnibind_ros.scoring): verdicts, tallies, percentiles and scenario phases,
and one set of ticks scored by both of its users, the live demo's scoreboard and the bag
evaluation, with the same verdicts, counts and phases (ROS-free)."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from omnibind_ros.bag.scoring import EvalResult, TickRecord, phases_from_events, score
from omnibind_ros.bag.truth import GroundTruth, TruthInterval
from omnibind_ros.scoring import (
    NS,
    VERDICTS,
    Phase,
    PhaseTimeline,
    Tally,
    in_top_k,
    percentiles,
    phase_label,
    ratio,
    s_to_ns,
    scenario_timeline,
    verdict,
)
from omnibind_ros.sim.scenario import load_scenario, parse_scenario
from omnibind_ros.tools.scoreboard import Sample, Scoreboard

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "config" / "scenarios"
SENSORS = ["camera", "thermal", "event_camera", "tactile", "microphone", "lidar", "operator"]
S = NS
MS = NS // 1000


def spans(phases: list[Phase]) -> list[tuple[str, float, float | None]]:
    return [(p.label, p.start_ns / S, None if p.end_ns is None else p.end_ns / S)
            for p in phases]


@dataclass(frozen=True)
class Span:
    label: str
    start_ns: int


# ---------------------------------------------------------------------------------------------
# verdicts, tallies, ratios, percentiles

def test_verdict_rules() -> None:
    mug = Span("mug", 10 * S)
    transition = S // 2
    assert verdict("", mug, 12 * S, transition) == "no_answer"
    assert verdict("mug", None, 12 * S, transition) == "unscored"
    assert verdict("mug", mug, 10 * S + transition - 1, transition) == "transition"
    assert verdict("can", mug, 10 * S + transition - 1, transition) == "transition"
    assert verdict("mug", mug, 10 * S + transition, transition) == "correct"
    assert verdict("can", mug, 11 * S, transition) == "wrong"
    assert in_top_k(mug, ("can", "mug")) and not in_top_k(mug, ("can",))
    assert not in_top_k(None, ("mug",))
    assert set(VERDICTS) == {"correct", "wrong", "transition", "unscored", "no_answer"}


def test_tally_counts_and_stats() -> None:
    tally = Tally()
    for kind, top in [("correct", True), ("wrong", True), ("wrong", False), ("transition", True),
                      ("unscored", False), ("no_answer", False)]:
        tally.add(kind, top)
    assert (tally.count, tally.answered, tally.scored, tally.correct, tally.top_k_correct,
            tally.transition, tally.unscored) == (6, 5, 3, 1, 2, 1, 1)
    assert tally.accuracy == pytest.approx(1 / 3)
    assert tally.stats() == {"ticks": 6, "answered": 5, "answered_fraction": 0.833333,
                             "scored": 3, "correct": 1, "accuracy": 0.333333,
                             "top_k_accuracy": 0.666667, "transition": 1, "unscored": 1}
    raw = tally.stats("recognitions", ndigits=None)
    assert raw["recognitions"] == 6 and raw["accuracy"] == 1 / 3 and "ticks" not in raw
    assert Tally().stats()["accuracy"] is None
    assert ratio(1, 3) == 1 / 3 and ratio(1, 3, 2) == 0.33 and ratio(1, 0) is None


def test_percentiles() -> None:
    p = percentiles([0.1, 0.2, 0.3, 0.4])
    assert p["count"] == 4 and p["p50"] == pytest.approx(0.25) and p["max"] == 0.4
    assert p["mean"] == pytest.approx(0.25) and p["p95"] <= p["p99"] <= p["max"]
    assert percentiles([]) == {"count": 0, "p50": None, "p95": None, "p99": None,
                               "mean": None, "max": None}
    assert percentiles([1 / 3], ndigits=2)["p50"] == 0.33


# ---------------------------------------------------------------------------------------------
# phases

def test_phase_labels() -> None:
    assert phase_label((), ()) == "all sensors"
    assert phase_label(["camera", "lidar"], ["tactile"]) == \
        "camera+lidar unplugged, tactile noisy"
    assert phase_label((), ["tactile"]) == "tactile noisy"


def test_hotplug_demo_phases_are_labelled_by_the_live_sensor_set() -> None:
    timeline = scenario_timeline(load_scenario(SCENARIOS / "hotplug_demo.yaml"), SENSORS)
    assert spans(timeline.phases(40 * S)) == [
        ("all sensors", 0.0, 10.0),
        ("camera unplugged", 10.0, 16.0),
        ("camera+lidar unplugged", 16.0, 22.0),
        ("lidar unplugged", 22.0, 28.0),
        ("thermal+microphone+lidar unplugged", 28.0, 31.0),
        ("thermal+microphone+lidar unplugged, tactile noisy", 31.0, 34.0),
        ("all sensors", 34.0, 40.0),  # replug all + noise_off at one time: one boundary
    ]


def test_looping_scenario_continues_and_unchanged_state_makes_no_phase() -> None:
    timeline = scenario_timeline(load_scenario(SCENARIOS / "hotplug_demo.yaml"), SENSORS)
    assert timeline.phase_at(45 * S).label == "all sensors"  # the cycle restart is no event
    assert spans(timeline.phases(55 * S))[-2:] == [("all sensors", 34.0, 50.0),
                                                   ("camera unplugged", 50.0, 55.0)]
    assert timeline.phase_at(52 * S).end_ns is None  # still going
    start = parse_scenario([{"t": 0.0, "sensor": "lidar", "action": "unplug"}])
    assert spans(scenario_timeline(start, SENSORS).phases(3 * S)) == [
        ("lidar unplugged", 0.0, 3.0)]
    assert spans(scenario_timeline(None, SENSORS).phases(3 * S)) == [("all sensors", 0.0, 3.0)]
    assert scenario_timeline(None, SENSORS).static


def test_timeline_from_events_in_nanoseconds() -> None:
    t0 = 1_700_000_000 * S + 123
    events = [(t0 + 2 * S + 1, "noise_on", ("tactile",)), (t0 + S + 7, "unplug", ("camera",)),
              (t0 + 2 * S + 1, "unplug", ("lidar",)), (t0 + 3 * S, "replug", ("all",)),
              (t0 + 4 * S, "replug", ("camera",))]  # nothing changes: no phase
    timeline = PhaseTimeline(SENSORS, events, start_ns=t0)
    assert not timeline.static
    assert timeline.index_at(t0 - S) == 0 and timeline.index_at(t0 + S + 7) == 1
    assert timeline.index_at(t0 + S + 6) == 0
    assert [(p.label, p.start_ns - t0, p.end_ns - t0) for p in timeline.phases(t0 + 5 * S)] == [
        ("all sensors", 0, S + 7), ("camera unplugged", S + 7, 2 * S + 1),
        ("camera+lidar unplugged, tactile noisy", 2 * S + 1, 3 * S),
        ("tactile noisy", 3 * S, 5 * S)]
    assert s_to_ns(0.1) == 100_000_000 and s_to_ns(28.0) == 28 * S


# ---------------------------------------------------------------------------------------------
# both users on the same ticks

def _bag_events(scenario_file: Path, origin_ns: int) -> list[tuple[int, str]]:
    """The scenario as record-sim writes it into a bag: JSON events at their log times."""
    scenario = load_scenario(scenario_file)
    return [(origin_ns + s_to_ns(e.t), json.dumps({"t_s": e.t, "action": e.action,
                                                    "sensors": list(e.sensors)}))
            for e in scenario.events]


def test_bringup_scoreboard_and_bag_scoring_agree_on_the_same_ticks() -> None:
    origin, period, end_s = 1_700_000_000 * S + 5 * MS, 2 * S, 4.0
    labels = ["wooden mug", "metal can"]
    # (stamp ms since origin, answer, top-k); "" = no answer
    ticks = [(100, "wooden mug", ()), (400, "wooden mug", ()), (700, "wooden mug", ()),
             (999, "metal can", ("metal can", "wooden mug")), (1000, "wooden mug", ()),
             (1300, "", ()), (1600, "metal can", ()), (1999, "wooden mug", ()),
             (2000, "metal can", ()), (2499, "wooden mug", ()), (2500, "metal can", ()),
             (3100, "", ()), (3500, "wooden mug", ("wooden mug", "metal can")),
             (3900, "metal can", ())]

    board = Scoreboard(scenario_timeline(load_scenario(SCENARIOS / "quick_unplug.yaml"),
                                         SENSORS), transition_s=0.5, period_s=period / S)
    for episode, label in enumerate(labels):
        start = origin + episode * period
        board.on_truth(start, episode, label, start)
    samples = [Sample(origin + ms * MS, best, top or ((best,) if best else ()))
               for ms, best, top in ticks]
    for sample in samples:
        board.on_recognition(sample)
    live_verdicts = [board.current(s)[1] for s in samples]
    live = board.summary(s_to_ns(end_s))

    records = [TickRecord(s.stamp_ns, s.stamp_ns if s.best_label else None,
                          ("camera",) if s.best_label else (),
                          ("image",) if s.best_label else (), s.best_label, s.top_labels,
                          "" if s.best_label else "no sensor is live", None)
               for s in samples]
    truth = GroundTruth([TruthInterval(origin + k * period, origin + (k + 1) * period, label, k)
                         for k, label in enumerate(labels)])
    end_ns = origin + s_to_ns(end_s)
    phases = phases_from_events(_bag_events(SCENARIOS / "quick_unplug.yaml", origin), SENSORS,
                                origin, end_ns)
    bag = score(EvalResult("b", "offline", records, [], truth, phases, SENSORS,
                           start_ns=origin, end_ns=end_ns))

    assert live_verdicts == bag["verdicts"]
    assert set(live_verdicts) == set(VERDICTS) - {"unscored"}  # every rule is exercised
    keys = ("answered", "scored", "correct", "transition", "unscored")
    assert {k: live[k] for k in keys} == {k: bag["overall"][k] for k in keys}
    assert live["recognitions"] == bag["overall"]["ticks"] == len(ticks)
    assert live["accuracy"] == pytest.approx(bag["overall"]["accuracy"], abs=1e-6)
    assert live["top_k_accuracy"] == pytest.approx(bag["overall"]["top_k_accuracy"], abs=1e-6)
    assert [(p["label"], p["start_s"], p["end_s"]) for p in live["phases"]] == \
        [(p["label"], p["start_s"], p["end_s"]) for p in bag["by_phase"]] == [
            ("all sensors", 0.0, 1.0), ("camera unplugged", 1.0, 2.0), ("all sensors", 2.0, 4.0)]
    for lp, bp in zip(live["phases"], bag["by_phase"], strict=True):
        assert lp["recognitions"] == bp["ticks"]
        assert {k: lp[k] for k in keys} == {k: bp[k] for k in keys}


def test_scoring_module_imports_without_ros_or_the_tools() -> None:
    code = ("import sys, omnibind_ros.scoring, omnibind_ros.bag.scoring; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rich', 'torch') "
            "or m.startswith('omnibind_ros.tools') or m.startswith('omnibind_ros.ros')]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout.strip()
    assert out == "[]"


def test_nothing_in_the_package_imports_the_tools() -> None:
    offenders = []
    for path in sorted((REPO / "omnibind_ros").rglob("*.py")):
        if "tools" in path.relative_to(REPO / "omnibind_ros").parts[:1]:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "omnibind_ros.tools" in line and "import" in line:
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert offenders == []


def test_degraded_demo_phases_name_the_degradation() -> None:
    timeline = scenario_timeline(load_scenario(SCENARIOS / "degraded_demo.yaml"), SENSORS)
    assert spans(timeline.phases(40 * S)) == [
        ("all sensors", 0.0, 8.0),
        ("camera dark", 8.0, 16.0),
        ("microphone in wind", 16.0, 24.0),
        ("lidar in rain", 24.0, 32.0),
        ("all sensors", 32.0, 40.0),
    ]


def test_degraded_phases_beside_unplugged_and_noisy_sensors() -> None:
    assert phase_label(["camera"], ["tactile"], {"lidar": "rain", "thermal": None}) == \
        "camera unplugged, tactile noisy, lidar in rain, thermal degraded"
    assert phase_label((), (), {"camera": "glare"}) == "camera in glare"
    assert phase_label((), (), {}) == "all sensors"
    events = [(1 * S, "degrade_on", ("camera",), "dark"), (2 * S, "unplug", ("camera",)),
              (3 * S, "replug", ("camera",)), (4 * S, "noise_on", ("camera",)),
              (5 * S, "noise_off", ("camera",)), (6 * S, "degrade_off", ("all",)),
              (7 * S, "degrade_on", ("lidar",))]  # from a bag: kind unknown
    timeline = PhaseTimeline(SENSORS, events)
    # An unplugged or noisy sensor is labelled as such, not by its degradation.
    assert spans(timeline.phases(8 * S)) == [
        ("all sensors", 0.0, 1.0), ("camera dark", 1.0, 2.0), ("camera unplugged", 2.0, 3.0),
        ("camera dark", 3.0, 4.0), ("camera noisy", 4.0, 5.0), ("camera dark", 5.0, 6.0),
        ("all sensors", 6.0, 7.0), ("lidar degraded", 7.0, 8.0)]
