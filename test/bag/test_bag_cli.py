"""``omnibind-bag``: record-sim, info, eval plumbing (evaluation stubbed), exit codes."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from omnibind_ros.bag.cli import EXIT_CORRUPT, EXIT_USAGE, main

pytestmark = pytest.mark.ros  # record-sim serializes with rclpy

S = 1_000_000_000
T0 = 1_700_000_000 * S


@pytest.fixture(scope="module")
def cli_bag(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "sim"
    code = main(["record-sim", str(out), "--duration", "1.5", "--sensors", "camera,operator",
                 "--scenario", "quick_unplug", "--seed", "2", "--no-progress"])
    assert code == 0
    return out


def test_record_sim_and_info(cli_bag, capsys) -> None:
    assert (cli_bag / "metadata.yaml").is_file() and next(cli_bag.glob("*.mcap")).is_file()
    assert main(["info", str(cli_bag)]) == 0
    out = capsys.readouterr().out
    assert "storage:   mcap" in out and "messages:  20" in out  # 15 + 1 + 3 truth + 1 event
    rows = {line.split()[0]: line.split()[2:] for line in out.splitlines()
            if line.startswith("  /")}
    # msgs, Hz while active, Hz over the bag, active from .. to (s since the bag's start)
    assert rows["/sim/camera/image_raw"] == ["15", "15.00", "15.00", "0.000", "..", "0.933"]
    assert rows["/omnibind/ground_truth"] == ["3", "2.00", "3.00", "0.000", "..", "1.000"]
    assert rows["/sim/operator/text"] == ["1", "-", "1.00", "0.000", "..", "0.000"]
    assert "DAMAGED" not in out


def test_info_of_damaged_and_missing_bags(cli_bag, tmp_path, capsys) -> None:
    from rosbags.rosbag2 import Reader

    with Reader(next(cli_bag.glob("*.mcap"))) as reader:
        chunks = sorted(c.chunk_start_offset for c in reader.storage.chunks)
    assert len(chunks) >= 2  # 15 camera frames of 77 KB: more than one 1 MiB chunk
    broken = tmp_path / "broken"
    shutil.copytree(cli_bag, broken)
    mcap = next(broken.glob("*.mcap"))
    os.truncate(mcap, chunks[1] + 20)  # the second chunk is cut
    assert main(["info", str(broken)]) == EXIT_CORRUPT
    out = capsys.readouterr().out
    assert "DAMAGED:   message " in out and f"chunk at byte {chunks[1]}" in out
    os.truncate(mcap, 100)  # nothing readable: only the error, on stderr
    assert main(["info", str(broken)]) == EXIT_CORRUPT
    assert "is damaged at message 0" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing")]) == EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    [],
    ["record-sim", "x", "--storage", "zip"],
    ["record-sim", "x", "--duration", "-1"],
    ["eval", "b", "--threads", "0"],
])
def test_argument_errors_exit_2(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == EXIT_USAGE
    assert "usage: omnibind-bag" in capsys.readouterr().err


def test_input_errors_exit_2(cli_bag, tmp_path, capsys) -> None:
    cases = [
        (["record-sim", str(cli_bag), "--duration", "1"], "exists already"),
        (["record-sim", str(tmp_path / "n"), "--duration", "1", "--scenario", "nope"],
         "nope"),
        (["record-sim", str(tmp_path / "n"), "--sensors", "sonar"], "not configured"),
        (["eval", str(cli_bag), "--rate", "2"], "--rate applies to --live"),
        (["eval", str(tmp_path / "missing")], "does not exist"),
        (["eval", str(cli_bag), "--truth-csv", str(tmp_path / "t.csv")],
         "--truth-csv"),
    ]
    for argv, message in cases:
        assert main(argv) == EXIT_USAGE, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "n").exists()


def _fake_result(bag: str, mode: str, error: str | None) -> Any:
    from omnibind_ros.bag.scoring import EvalResult, Phase, TickRecord
    from omnibind_ros.bag.truth import GroundTruth, TruthInterval

    ticks = []
    for k in range(20):  # 10 Hz for 2 s; camera gone in [1, 2) s
        t = T0 + k * S // 10
        cam = k < 10
        sensors = ("camera", "operator") if cam else ("operator",)
        modalities = ("image", "text") if cam else ("text",)
        label = "wooden duck" if cam or k % 2 else "metal mug"
        top = (label, "x") if label == "wooden duck" else (label, "wooden duck")
        ticks.append(TickRecord(t, t, sensors, modalities, label, top, "", 0.01))
    return EvalResult(
        bag=bag, mode=mode, ticks=ticks, states=[], sensors=["camera", "operator"],
        truth=GroundTruth([TruthInterval(T0, T0 + 2 * S, "wooden duck")]),
        phases=[Phase("all sensors", T0, T0 + S), Phase("camera unplugged", T0 + S, T0 + 2 * S)],
        error=error, wall_s=0.5, start_ns=T0, end_ns=T0 + 2 * S,
        modalities={"camera": "image", "operator": "text"})


@pytest.mark.parametrize("live", [False, True])
def test_eval_calls_the_evaluator_scores_and_reports(cli_bag, tmp_path, capsys, monkeypatch,
                                                     live) -> None:
    """The evaluation itself is stubbed (tested in test_bag_offline/live); scoring and the
    report are the real ones. A damaged bag still gets its report, and exit code 3."""
    module = pytest.importorskip("omnibind_ros.bag.live" if live else "omnibind_ros.bag.offline")
    pytest.importorskip("omnibind_ros.bag.report")
    calls: list[tuple[Any, dict[str, Any]]] = []
    error = "message 7 at t=0.50 s (chunk at byte 123 of sim.mcap): truncated [x]"

    def fake(bag, **kwargs):
        calls.append((bag, kwargs))
        return _fake_result(str(bag), "live" if live else "offline", error)

    monkeypatch.setattr(module, "evaluate_live" if live else "evaluate_offline", fake)
    csv = tmp_path / "truth.csv"
    csv.write_text("start_s,end_s,label\n0,2,wooden duck\n")
    out = tmp_path / "report"
    argv = ["eval", str(cli_bag), "--out", str(out), "--truth-csv", str(csv),
            "--no-plots", "--no-progress", "--truth-topic", "/gt"]
    argv += ["--live", "--rate", "2", "--threads", "3"] if live else ["--processes", "3"]
    assert main(argv) == EXIT_CORRUPT
    (bag, kwargs), = calls
    assert Path(bag) == cli_bag
    assert kwargs["truth_csv"] == csv
    assert kwargs.get("threads") == (3 if live else None)
    assert kwargs.get("processes") == (None if live else 3)
    assert kwargs["truth_topic"] == "/gt" and kwargs["progress"] is False
    assert kwargs["bundle"] is None and kwargs["config"] is None
    assert kwargs.get("rate") == (2.0 if live else None)
    printed = capsys.readouterr().out
    assert "overall" in printed and "modalities: image+text" in printed
    assert "phase 1.0-2.0 s: camera unplugged" in printed
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in printed.splitlines() if line.count("│") > 3}
    # The first 0.5 s are a transition (not scored); wrong on every other tick without camera.
    assert rows["overall"] == ["20", "20", "15", "10", "66.7%", "100.0%"]
    assert rows["phase 0.0-1.0 s: all sensors"][2:5] == ["5", "5", "100.0%"]
    assert rows["phase 1.0-2.0 s: camera unplugged"][2:6] == ["10", "5", "50.0%", "100.0%"]
    assert rows["modalities: text"][2:5] == ["10", "5", "50.0%"]
    assert "top-2" in printed
    assert "bag damaged" in printed and "truncated [x]" in printed  # no markup eaten
    assert str(out / "report.md") in printed
    report = json.loads((out / "report.json").read_text())
    assert json.dumps(report).count("camera unplugged") >= 1
    assert (out / "report.md").is_file()


@pytest.mark.parametrize("argv", [["--threads", "2"], ["--live", "--processes", "2"],
                                  ["--processes", "-1"], ["--rate", "2"]])
def test_eval_options_of_the_other_mode_are_usage_errors(cli_bag, capsys, argv) -> None:
    assert main(["eval", str(cli_bag), "--no-progress", *argv]) == EXIT_USAGE
    assert "applies to" in capsys.readouterr().err


def test_eval_without_a_mapped_topic_exits_2(cli_bag, tmp_path, capsys) -> None:
    """A real offline evaluation: a config whose sensors are on other topics fails before any
    model is needed, with both topic lists in the message."""
    pytest.importorskip("omnibind_ros.bag.offline")
    config = tmp_path / "other.yaml"
    config.write_text("omnibind_perception:\n  ros__parameters:\n    sensors: [eye]\n"
                      "    sensors.eye: {modality: image, topic: /robot/eye}\n")
    assert main(["eval", str(cli_bag), "--config", str(config), "--no-progress"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "/robot/eye" in err and "/sim/camera/image_raw" in err
