"""omnibind-bringup: scenario phases and ground-truth scoring (pure), then the whole bringup
in-process (perception + simulated sensors + monitor in one executor) on the tiny bundle with
the quick_unplug scenario, and the CLI's failure path."""
from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest

from omnibind_ros.sim.scenario import load_scenario, parse_scenario
from omnibind_ros.tools import bringup
from omnibind_ros.tools.bringup import PhaseTimeline, Sample, Scoreboard

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "config" / "scenarios"
SENSORS = ["camera", "thermal", "event_camera", "tactile", "microphone", "lidar", "operator"]
S = 1_000_000_000  # ns per s


def spans(phases: list[Any]) -> list[tuple[str, float, float]]:
    return [(p.label, p.start_s, p.end_s) for p in phases]


def test_hotplug_demo_phases_are_labelled_by_the_live_sensor_set() -> None:
    timeline = PhaseTimeline(load_scenario(SCENARIOS / "hotplug_demo.yaml"), SENSORS)
    assert spans(timeline.phases(40.0)) == [
        ("all sensors", 0.0, 10.0),
        ("camera unplugged", 10.0, 16.0),
        ("camera+lidar unplugged", 16.0, 22.0),
        ("lidar unplugged", 22.0, 28.0),
        ("thermal+microphone+lidar unplugged", 28.0, 31.0),
        ("thermal+microphone+lidar unplugged, tactile noisy", 31.0, 34.0),
        ("all sensors", 34.0, 40.0),  # replug all + noise_off at one time: one boundary
    ]


def test_looping_scenario_continues_and_unchanged_state_makes_no_phase() -> None:
    timeline = PhaseTimeline(load_scenario(SCENARIOS / "hotplug_demo.yaml"), SENSORS)
    assert timeline.phase_at(45.0).label == "all sensors"  # the cycle restart is no event
    assert spans(timeline.phases(55.0))[-2:] == [("all sensors", 34.0, 50.0),
                                                 ("camera unplugged", 50.0, 55.0)]
    start = parse_scenario([{"t": 0.0, "sensor": "lidar", "action": "unplug"}])
    assert spans(PhaseTimeline(start, SENSORS).phases(3.0)) == [("lidar unplugged", 0.0, 3.0)]
    assert spans(PhaseTimeline(None, SENSORS).phases(3.0)) == [("all sensors", 0.0, 3.0)]


def quick_scoreboard() -> Scoreboard:
    timeline = PhaseTimeline(load_scenario(SCENARIOS / "quick_unplug.yaml"), SENSORS)
    return Scoreboard(timeline, transition_s=0.5, period_s=2.0)


def test_scoreboard_matches_stamps_with_episodes_and_counts_transitions() -> None:
    board, origin = quick_scoreboard(), 100 * S
    board.on_truth(origin, 0, "wooden mug", origin)
    for t, label in [(0.2, "wooden mug"),  # < 0.5 s after the object appeared: transition
                     (0.7, "wooden mug"), (1.5, "metal can"),  # correct; wrong (camera off)
                     (2.1, "wooden mug"),  # new object since 2.0: transition, not an error
                     (2.8, "metal can"), (3.0, "")]:  # correct; no answer
        board.on_recognition(Sample(origin + int(t * S), label, (label, "rubber duck")))
    assert board.total.recognitions == 0  # each waits for ground truth covering its stamp
    board.on_truth(origin + 2 * S, 1, "metal can", origin + 2 * S)
    assert board.total.recognitions == 3
    board.on_truth(origin + int(3.5 * S), 1, "metal can", origin + 2 * S)
    summary = board.summary(4.0)
    assert (summary["recognitions"], summary["answered"], summary["scored"],
            summary["correct"], summary["transition"]) == (6, 5, 3, 2, 2)
    assert summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["answered_fraction"] == pytest.approx(5 / 6)
    phases = {(p["label"], p["start_s"]): p for p in summary["phases"]}
    assert phases[("all sensors", 0.0)]["recognitions"] == 2
    assert phases[("camera unplugged", 1.0)]["accuracy"] == 0.0
    last = phases[("all sensors", 2.0)]
    assert (last["recognitions"], last["transition"], last["correct"]) == (3, 1, 1)
    assert last["recognitions_per_s"] == pytest.approx(3 / 2.0)


def test_scoreboard_scores_the_tail_after_the_last_truth_with_the_period() -> None:
    board, origin = quick_scoreboard(), 50 * S
    board.on_truth(origin, 0, "wooden mug", origin)
    board.on_recognition(Sample(origin + int(1.9 * S), "wooden mug"))  # episode 0 still
    board.on_recognition(Sample(origin + int(2.5 * S), "wooden mug"))  # episode 1: unknown
    summary = board.summary(3.0)
    assert (summary["correct"], summary["unscored"]) == (1, 1)


# ---------------------------------------------------------------------------------------------
# the real thing, in-process

@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    testing = pytest.importorskip("omnibind_train.testing", reason="needs omnibind_train")
    return testing.build_tiny_bundle(tmp_path_factory.mktemp("bringup") / "tiny")


def in_unit(value: float | None) -> bool:
    return value is None or 0.0 <= value <= 1.0


@pytest.mark.ros
def test_bringup_in_process_recognises_through_the_scenario(tiny_bundle: Path) -> None:
    opts = bringup.BringupOptions(scenario="quick_unplug", duration_s=8.0,
                                  bundle=str(tiny_bundle), ui=False, status_every_s=1.0)
    stop, out = threading.Event(), io.StringIO()
    watchdog = threading.Timer(90.0, stop.set)  # a hung run fails instead of blocking the suite
    watchdog.start()
    try:
        summary = bringup.run_bringup(opts, stop=stop, out=out)
    finally:
        watchdog.cancel()
    text = out.getvalue()
    assert not stop.is_set(), "the run did not stop on its duration\n" + text
    assert summary["scenario"] == "quick_unplug" and summary["duration_s"] >= 8.0
    assert summary["recognitions"] > 20 and summary["answered"] > 0, text
    assert summary["scored"] > 0, summary
    assert [(p["label"], p["start_s"]) for p in summary["phases"]] == [
        ("all sensors", 0.0), ("camera unplugged", 1.0), ("all sensors", 2.0)]
    assert summary["phases"][-1]["end_s"] == pytest.approx(summary["duration_s"])
    assert summary["phases"][-1]["answered"] > 0
    assert sum(p["recognitions"] for p in summary["phases"]) <= summary["recognitions"]
    for entry in [summary, *summary["phases"]]:
        for key in ("accuracy", "top_k_accuracy", "answered_fraction"):
            assert in_unit(entry[key]), (key, entry)
    assert summary["sim"]["published"] > 0 and summary["sim"]["unplugged"] > 0
    assert "phase: camera unplugged" in text, text
    assert summary["clean_shutdown"]
    alive = [t.name for t in threading.enumerate() if t.name == bringup.EXECUTOR_THREAD]
    assert not alive


@pytest.mark.ros
def test_cli_without_a_bundle_exits_1_with_the_way_to_build_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = bringup.main(["--no-sim", "--no-ui", "--duration", "1",
                         "--bundle", str(tmp_path / "missing")])
    assert code == 1
    err = capsys.readouterr().err
    assert "no model bundle at" in err and "make demo" in err, err
    assert "Traceback" not in err


def test_cli_rejects_a_scenario_without_the_simulator() -> None:
    with pytest.raises(SystemExit) as exc:
        bringup.main(["--no-sim", "--scenario", "quick_unplug"])
    assert exc.value.code == 2
