"""The report files of an evaluation: tables, JSON without wall-clock outside "timing", plots."""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

from omnibind_ros.bag.report import render_markdown, write_report
from omnibind_ros.bag.scoring import EvalResult, Phase, StateChange, TickRecord, score
from omnibind_ros.bag.truth import GroundTruth, TruthInterval

S = 1_000_000_000
T0 = 1_700_000_000 * S
MS = 1_000_000
PNG = b"\x89PNG\r\n\x1a\n"


def _result(latency: float = 0.01, wall_s: float = 3.0) -> EvalResult:
    ticks = []
    for k in range(1, 60):  # 10 Hz for 6 s; the camera is out in [2, 4) s
        t = T0 + k * 100 * MS
        sensors, mods = (("lidar",), ("point_cloud",)) if 2 * S <= t - T0 < 4 * S else (
            ("cam", "lidar"), ("image", "point_cloud"))
        if k % 13 == 0:
            ticks.append(TickRecord(t, None, (), (), "", (), "no sensor is live", None))
            continue
        label = "mug" if t - T0 < 3 * S else ("can" if k % 4 else "mug")
        # the node was sure of "mug" (confidence 0.8) and unsure of "can" (0.3)
        ticks.append(TickRecord(t, t - 20 * MS, sensors, mods, label, (label, "cup"), "",
                                latency * k, 0.9, 0.8 if label == "mug" else 0.3,
                                label != "mug"))
    states = [StateChange(T0 + 10 * MS, "cam", "LIVE"), StateChange(T0 + 10 * MS, "lidar", "LIVE"),
              StateChange(T0 + 2170 * MS, "cam", "STALE", "no sample for 0.17 s"),
              StateChange(T0 + 2700 * MS, "cam", "LOST", "no sample for 0.7 s"),
              StateChange(T0 + 4 * S, "cam", "LIVE")]
    truth = GroundTruth([TruthInterval(T0, T0 + 3 * S, "mug", 0),
                         TruthInterval(T0 + 3 * S, T0 + 6 * S, "can", 1)])
    return EvalResult(
        bag="/data/run.mcap", mode="offline", ticks=ticks, states=states, truth=truth,
        phases=[Phase("all sensors", T0, T0 + 2 * S), Phase("cam unplugged", T0 + 2 * S,
                                                            T0 + 4 * S),
                Phase("all sensors", T0 + 4 * S, T0 + 6 * S)],
        sensors=["cam", "lidar"], skipped_topics={"/tf": "no sensor configured for it"},
        error=None, wall_s=wall_s,
        extra={"bundle": "/b", "truth_source": "/omnibind/ground_truth",
               "timing": {"encode_s": wall_s / 2}},
        start_ns=T0, end_ns=T0 + 6 * S, modalities={"cam": "image", "lidar": "point_cloud"})


def test_write_report_files(tmp_path: Path) -> None:
    result = _result()
    scores = score(result)
    paths = write_report(result, scores, tmp_path / "out")
    assert set(paths) == {"markdown", "json", "ticks", "timeline", "accuracy_by_combination",
                          "reliability"}
    for key in ("timeline", "accuracy_by_combination", "reliability"):
        data = paths[key].read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
    md = paths["markdown"].read_text()
    for heading in ("## Overall", "## Accuracy per active-modality combination",
                    "## Accuracy per dropout phase", "## Ticks without an answer: 4",
                    "## Sensor states", "## Skipped topics", "![timeline](timeline.png)",
                    "![accuracy per combination](accuracy_by_combination.png)",
                    "## Confidence", "![reliability diagram](reliability.png)"):
        assert heading in md, heading
    assert "| image+point_cloud |" in md and "| cam unplugged | 2.0 | 4.0 |" in md
    assert "| no sensor is live | no sensor is live | 4 |" in md
    doc = json.loads(paths["json"].read_text())
    assert doc["scores"]["overall"] == scores["overall"]
    assert doc["phases"][1] == {"label": "cam unplugged", "start_s": 2.0, "end_s": 4.0}
    assert doc["timing"]["encode_s"] == 1.5 and "verdicts" not in doc["scores"]
    rows = list(csv.DictReader(paths["ticks"].open()))
    assert len(rows) == len(result.ticks)
    assert rows[0]["t_s"] == "0.100000" and rows[0]["verdict"] == "transition"
    assert rows[12]["verdict"] == "no_answer" and rows[12]["no_answer_reason"]
    assert {r["truth"] for r in rows} == {"mug", "can"}
    # confidence: per scored answer, right or wrong, binned; unsure answers counted apart
    scored = [r for r in rows if r["verdict"] in ("correct", "wrong")]
    unsure = [r for r in scored if r["unsure"] == "1"]
    conf = doc["scores"]["confidence"]
    assert conf["unsure"]["ticks"] == len(unsure) > 0
    assert conf["unsure"]["accuracy"] == round(
        sum(r["verdict"] == "correct" for r in unsure) / len(unsure), 6)
    assert conf["reliability"]["n"] == len(scored)
    by_conf = {c: [r["verdict"] == "correct" for r in scored if float(r["confidence"]) == c]
               for c in (0.8, 0.3)}
    expected_ece = sum(len(v) * abs(sum(v) / len(v) - c) for c, v in by_conf.items()) / len(
        scored)
    assert conf["reliability"]["ece"] == round(expected_ece, 6)


def test_json_differs_only_in_timing(tmp_path: Path) -> None:
    """Wall-clock figures (latency, evaluation time) live under "timing" and nowhere else."""
    a, b = _result(latency=0.01, wall_s=3.0), _result(latency=0.05, wall_s=9.0)
    ja = write_report(a, score(a), tmp_path / "a", plots=False)["json"]
    jb = write_report(b, score(b), tmp_path / "b", plots=False)["json"]
    da, db = json.loads(ja.read_text()), json.loads(jb.read_text())
    assert da["timing"] != db["timing"]
    da.pop("timing"), db.pop("timing")
    assert da == db
    assert ja.read_text().index('"bag"') < ja.read_text().index('"timing"')  # sorted keys


def test_markdown_flags_damage_and_empty_runs() -> None:
    result = dataclasses.replace(_result(), error="bag x is damaged at message 12 at t=1.20 s",
                                 ticks=[], truth=None)
    md = render_markdown(result, score(result))
    assert "The bag is damaged" in md and "message 12 at t=1.20 s" in md
    assert "ground truth: /omnibind/ground_truth" in md
    assert "## Ticks without an answer: 0" in md


def test_plots_without_answers(tmp_path: Path) -> None:
    result = dataclasses.replace(_result(), ticks=[
        TickRecord(T0 + S, None, (), (), "", (), "no sensor is live", None)], states=[])
    paths = write_report(result, score(result), tmp_path)
    assert paths["accuracy_by_combination"].read_bytes().startswith(PNG)
    assert paths["timeline"].read_bytes().startswith(PNG)


def test_per_sensor_messages_table_in_both_modes() -> None:
    """The table and each sensor's first undecodable message, offline and live alike; only the
    meaning of "received" is explained per mode."""
    sensors = {
        "cam": {"topic": "/cam", "messages": 40, "received": 37, "encoded": 30, "bad": 2,
                "undecodable": 1, "first_undecodable": "message 66: CDR buffer too short"},
        "lidar": {"topic": "/points", "messages": 40, "received": 40, "encoded": 38, "bad": 0,
                  "undecodable": 0}}
    for mode, meaning in (("offline", "every decodable message reaches the engine"),
                          ("live", "messages the node's callbacks got")):
        result = dataclasses.replace(_result(), mode=mode,
                                     extra={**_result().extra, "sensors": sensors})
        md = render_markdown(result, score(result))
        assert meaning in md
        assert "| sensor | topic | messages | received | encoded | bad | undecodable |" in md
        assert "| cam | `/cam` | 40 | 37 | 30 | 2 | 1 |" in md
        assert "| lidar | `/points` | 40 | 40 | 38 | 0 | 0 |" in md
        assert "- first undecodable message of cam: message 66: CDR buffer too short" in md
        assert "first undecodable message of lidar" not in md
