"""Live evaluation of another robot's bag, against offline evaluation of the same bag: no
start-up "unplugged" phases, damage at the same message index, the per-sensor message table
and the truth-label warning in the live report too.

The live run of the intact bag happens in a fresh interpreter (a subprocess): the start-up stall
it checks for came from one-time costs of a cold process (open3d's import on the first point
cloud), which an earlier test in this process would have paid already.
"""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from foreign_bag import CAMERA, LIDAR, TORN, S, foreign_config, truth_csv, write_foreign_bag

from omnibind_ros.testing import write_test_bundle

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[2]
DURATION_S = 4.0
LABELS = ["a", "b"]
TRUTH = ("a", "b_typo")  # a relabelled interval: not in the label set


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("live_foreign")
    bag = root / "robot"
    write_foreign_bag(bag, duration_s=DURATION_S, damaged_at_s=3.0)
    return {"root": root, "bag": bag, "bundle": write_test_bundle(root / "tiny"),
            "config": foreign_config(root / "robot.yaml", LABELS),
            "truth": truth_csv(root / "labels.csv", DURATION_S, TRUTH)}


@pytest.fixture(scope="module")
def offline(setup: dict[str, Path]) -> Any:
    from omnibind_ros.bag.offline import evaluate_offline

    return evaluate_offline(setup["bag"], bundle=setup["bundle"], config=setup["config"],
                            truth_csv=setup["truth"], processes=0, progress=False)


_LIVE = """
import pickle, sys
from omnibind_ros.bag.live import evaluate_live
bag, bundle, config, truth, out = sys.argv[1:]
result = evaluate_live(bag, rate=1.0, bundle=bundle, config=config, truth_csv=truth,
                       progress=False)
with open(out, "wb") as f:
    pickle.dump(result, f)
"""


@pytest.fixture(scope="module")
def live(setup: dict[str, Path]) -> Any:
    """evaluate_live in a fresh interpreter (see the module docstring)."""
    out = setup["root"] / "live.pickle"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    subprocess.run([sys.executable, "-c", _LIVE, str(setup["bag"]), str(setup["bundle"]),
                    str(setup["config"]), str(setup["truth"]), str(out)],
                   env=env, check=True, timeout=240)
    with out.open("rb") as f:
        return pickle.load(f)


def test_no_unplugged_phase_at_start_up(live: Any) -> None:
    """Without scenario events the phases come from the monitor: the bag starts with all
    sensors, and no sensor leaves LIVE while playback starts (before the warm-up: 3-4
    sub-second phases in the first second, from the node stalled in open3d's import). Later
    phases are not asserted: on a loaded machine a stall of the whole process can still mark
    both sensors out for a moment mid-bag (seen once in a fresh-clone run beside other tests),
    which is the live node's real behaviour, not a start-up artefact."""
    assert live.phases and live.phases[0].label == "all sensors"
    assert [p.label for p in live.phases if p.start_ns < live.start_ns + 2 * S] == [
        "all sensors"]
    early = [(c.sensor, c.state, round((c.t_ns - live.start_ns) / S, 3)) for c in live.states
             if c.t_ns < live.start_ns + 2 * S]
    assert {c[0] for c in early if c[1] == "LIVE"} == {"front", "velo"}
    assert [c for c in early if c[1] not in ("UNKNOWN", "LIVE")] == []
    # the cold process's first point cloud was paid before the clock started (open3d's import)
    assert live.extra["timing"]["warm_up_s"]["velo"] > 0.1


def _damaged_index(bag: Path) -> int:
    from omnibind_ros.bag.reader import iter_messages

    (index,) = [m.index for m in iter_messages(bag) if m.rawdata == TORN]
    return index


def test_undecodable_message_named_alike_offline_and_live(setup, offline, live) -> None:
    index = _damaged_index(setup["bag"])
    assert index == 3 * 10 * 2 + 6  # camera + lidar every 0.1 s, chatter every 0.5 s
    for result in (offline, live):
        front = result.extra["sensors"]["front"]
        assert front["undecodable"] == 1
        assert front["first_undecodable"].startswith(f"message {index}: ")
        assert result.extra["sensors"]["velo"]["undecodable"] == 0
    assert live.extra["sensors"]["front"]["first_undecodable"] == \
        offline.extra["sensors"]["front"]["first_undecodable"]


def test_live_sensor_table_has_offline_columns(offline, live, tmp_path) -> None:
    from omnibind_ros.bag.report import write_report
    from omnibind_ros.bag.scoring import score

    for result in (offline, live):
        front, velo = result.extra["sensors"]["front"], result.extra["sensors"]["velo"]
        assert (front["topic"], front["messages"], velo["topic"], velo["messages"]) == (
            CAMERA, 40, LIDAR, 40)
        assert front["mapped"] and velo["mapped"]
        # every decodable message reaches the node (live: over DDS, one a best-effort queue
        # replaced while a loaded machine starved the node's executor does not)
        assert 30 <= front["received"] <= 39 and 30 <= velo["received"] <= 40
        assert front["encoded"] >= 20 and velo["encoded"] >= 20
        assert front["bad"] == velo["bad"] == 0
    assert offline.extra["sensors"]["front"]["received"] == 39
    md = write_report(live, score(live), tmp_path / "live", plots=False)["markdown"].read_text()
    row = next(line for line in md.splitlines() if line.startswith(f"| front | `{CAMERA}` |"))
    live_front = live.extra["sensors"]["front"]
    assert row.split("|")[3:8] == [
        " 40 ", f" {live_front['received']} ", f" {live_front['encoded']} ", " 0 ", " 1 "]
    assert f"- first undecodable message of front: message {_index(live)}: " in md


def _index(result: Any) -> int:
    return int(result.extra["sensors"]["front"]["first_undecodable"].split(":")[0].split()[1])


def test_truth_label_outside_the_label_set_is_warned_live(offline, live) -> None:
    assert live.extra["labels"] == LABELS
    expected = ("ground-truth label 'b_typo' is not in the label set, so every tick of it is "
                "scored wrong; nearest label: 'b'")
    assert live.warnings == offline.warnings == [expected]


def test_damaged_bag_stops_at_the_same_message_offline_and_live(setup) -> None:
    """A bag cut part-way: both modes name the same message (an index among all the bag's
    messages, the unmapped topic's too) and end the evaluated span at the same time."""
    from omnibind_ros.bag.live import evaluate_live
    from omnibind_ros.bag.offline import evaluate_offline

    cut = setup["root"] / "cut"
    shutil.rmtree(cut, ignore_errors=True)
    write_foreign_bag(cut, duration_s=DURATION_S, damaged_at_s=None, image_px=160)
    (mcap,) = cut.glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[:int(mcap.stat().st_size * 0.6)])
    common = dict(bundle=setup["bundle"], config=setup["config"], progress=False)
    off = evaluate_offline(cut, processes=0, **common)
    on = evaluate_live(cut, rate=2.0, **common)
    assert off.error is not None and "damaged at message" in off.error
    assert on.error == off.error
    assert on.end_ns == off.end_ns
