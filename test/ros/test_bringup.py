"""omnibind-bringup: live scoring (pure), the state-change log and the events panel, then the
whole bringup in-process (perception + simulated sensors + monitor in one executor) on the tiny
bundle with the quick_unplug scenario, the live view in a pseudo-terminal (no log line reaches
it), and the CLI's failure path. Phases themselves: test/test_scoring.py."""
from __future__ import annotations

import io
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from omnibind_ros.scoring import scenario_timeline
from omnibind_ros.sim.scenario import load_scenario
from omnibind_ros.tools import bringup
from omnibind_ros.tools.bringup_nodes import StateEventLog
from omnibind_ros.tools.live_view import LiveState, StateEvent, render_events, render_live
from omnibind_ros.tools.scoreboard import Sample, Scoreboard

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "config" / "scenarios"
SENSORS = ["camera", "thermal", "event_camera", "tactile", "microphone", "lidar", "operator"]
S = 1_000_000_000  # ns per s


def quick_scoreboard() -> Scoreboard:
    timeline = scenario_timeline(load_scenario(SCENARIOS / "quick_unplug.yaml"), SENSORS)
    return Scoreboard(timeline, transition_s=0.5, period_s=2.0)


def test_scoreboard_matches_stamps_with_episodes_and_counts_transitions() -> None:
    board, origin = quick_scoreboard(), 100 * S
    board.on_truth(origin, 0, "wooden mug", origin)
    for t, label in [(0.2, "wooden mug"),  # < 0.5 s after the object appeared: transition
                     (0.7, "wooden mug"), (1.5, "metal can"),  # correct; wrong (camera off)
                     (2.1, "wooden mug"),  # new object since 2.0: transition, not an error
                     (2.8, "metal can"), (3.0, "")]:  # correct; no answer
        board.on_recognition(Sample(origin + int(t * S), label, (label, "rubber duck")))
    assert board.total.count == 0  # each waits for ground truth covering its stamp
    board.on_truth(origin + 2 * S, 1, "metal can", origin + 2 * S)
    assert board.total.count == 3
    board.on_truth(origin + int(3.5 * S), 1, "metal can", origin + 2 * S)
    summary = board.summary(4 * S)
    assert (summary["recognitions"], summary["answered"], summary["scored"],
            summary["correct"], summary["transition"]) == (6, 5, 3, 2, 2)
    assert summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["answered_fraction"] == pytest.approx(5 / 6)
    phases = {(p["label"], p["start_s"]): p for p in summary["phases"]}
    assert phases[("all sensors", 0.0)]["recognitions"] == 2
    assert phases[("camera unplugged", 1.0)]["accuracy"] == 0.0
    last = phases[("all sensors", 2.0)]
    assert (last["recognitions"], last["transition"], last["correct"]) == (3, 1, 1)
    assert last["end_s"] == 4.0
    assert last["recognitions_per_s"] == pytest.approx(3 / 2.0)


def test_scoreboard_scores_the_tail_after_the_last_truth_with_the_period() -> None:
    board, origin = quick_scoreboard(), 50 * S
    board.on_truth(origin, 0, "wooden mug", origin)
    board.on_recognition(Sample(origin + int(1.9 * S), "wooden mug"))  # episode 0 still
    board.on_recognition(Sample(origin + int(2.5 * S), "wooden mug"))  # episode 1: unknown
    summary = board.summary(3 * S)
    assert (summary["correct"], summary["unscored"]) == (1, 1)


# ---------------------------------------------------------------------------------------------
# recent events: from ~/sensor_status arrays to the panel

def test_state_event_log_keeps_the_changes_only() -> None:
    log = StateEventLog(keep=3)
    assert log.update(0.1, [("camera", "UNKNOWN", "waiting"), ("lidar", "LIVE", "")]) == [
        StateEvent(0.1, "lidar", "UNKNOWN", "LIVE", "")]
    assert log.update(0.5, [("camera", "LIVE", ""), ("lidar", "LIVE", "")]) == [
        StateEvent(0.5, "camera", "UNKNOWN", "LIVE", "")]
    assert log.update(1.0, [("camera", "LIVE", ""), ("lidar", "LIVE", "")]) == []  # 1 Hz repeat
    log.update(1.2, [("camera", "STALE", "no sample for 0.21 s"), ("lidar", "LIVE", "")])
    log.update(1.9, [("camera", "LOST", "no publisher"), ("lidar", "LIVE", "")])
    assert log.total == 4
    assert [(e.t_s, e.sensor, e.old, e.new) for e in log.recent()] == [
        (0.5, "camera", "UNKNOWN", "LIVE"), (1.2, "camera", "LIVE", "STALE"),
        (1.9, "camera", "STALE", "LOST")]


def _text(renderable: Any, width: int = 120) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_events_panel_shows_time_sensor_change_and_reason() -> None:
    events = [StateEvent(10.25, "camera", "LIVE", "STALE", "no sample for 0.31 s"),
              StateEvent(11.0, "camera", "STALE", "LOST", "no publisher on /sim/camera")]
    text = _text(render_events(events, total=5))
    lines = [ln for ln in text.splitlines() if "camera" in ln]
    assert len(lines) == 2
    assert re.search(r"10\.2 s.*camera.*LIVE → STALE.*no sample for 0\.31 s", lines[0]), text
    assert re.search(r"11\.0 s.*camera.*STALE → LOST.*no publisher", lines[1]), text
    assert "recent events (last 2 of 5)" in text
    assert "no sensor state change yet" in _text(render_events([]))
    frame = _text(render_live(LiveState(3.0, 20.0, "all sensors", (0.0, 10.0), events=events,
                                        events_total=2, log_file="/tmp/x/run.log")))
    assert "recent events" in frame and "STALE → LOST" in frame
    assert "full log: /tmp/x/run.log" in frame



def test_live_view_names_poor_inputs_and_unsure_answers() -> None:
    from omnibind_ros.tools.live_view import RecognitionView, SensorRow, status_line

    rows = [SensorRow("camera", "image", "LIVE", 10.0, 10.0, 0.05, 1, True, "", "", 0.08,
                      "dark"),
            SensorRow("lidar", "point_cloud", "LIVE", 10.0, 10.0, 0.05, 1, True, "", "", 0.9,
                      "sparse")]  # mild: above the warning level, not named
    rec = RecognitionView("metal mug", 0.41, (("metal mug", 0.41),), ("camera", "lidar"),
                          ("image", "point_cloud"), confidence=0.33, unsure=True)
    state = LiveState(12.0, 40.0, "camera dark", (8.0, 16.0), sensors=rows, recognition=rec,
                      truth="metal mug", verdict="correct")
    line = status_line(state)
    assert "poor input: camera dark 0.08" in line and "lidar sparse" not in line
    assert "(2 sensors, unsure)" in line
    frame = _text(render_live(state), width=160)
    assert "dark 0.08" in frame and "confidence 0.33 (unsure)" in frame


# ---------------------------------------------------------------------------------------------
# the real thing, in-process

@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from omnibind_ros.testing import write_test_bundle

    return write_test_bundle(tmp_path_factory.mktemp("bringup") / "tiny")


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
    assert summary["clean_shutdown"] and summary["log_file"] is None  # logs stayed on stderr
    alive = [t.name for t in threading.enumerate() if t.name == bringup.EXECUTOR_THREAD]
    assert not alive


# ---------------------------------------------------------------------------------------------
# the live view owns the terminal: run the CLI in a pseudo-terminal

#: rcutils' console format ("[INFO] [1712345678.123456789] [node]: text").
ROS_LOG_LINE = re.compile(r"\[(DEBUG|INFO|WARN|ERROR|FATAL)\] \[\d+\.\d+\]")
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]|\r")
#: Writes to every path by which output could reach the terminal, once the view has taken it
#: (fd 1 stops being a terminal), then runs the CLI.
LEAKING_MAIN = """
import logging, os, sys, threading, time, warnings
def leak():
    while os.isatty(1):
        time.sleep(0.02)
    print("LEAK-print", flush=True)
    sys.stderr.write("LEAK-stderr\\n")
    os.write(1, b"LEAK-fd1\\n")
    os.write(2, b"LEAK-fd2\\n")
    warnings.warn("LEAK-warning")
    logging.getLogger("leak").warning("LEAK-logging")
    import rclpy.logging
    rclpy.logging.get_logger("leak").warning("LEAK-rcutils")
threading.Thread(target=leak, daemon=True).start()
from omnibind_ros.tools.bringup import main

from omnibind_ros.testing import write_test_bundle
raise SystemExit(main(sys.argv[1:]))
"""
LEAKS = ("LEAK-print", "LEAK-stderr", "LEAK-fd1", "LEAK-fd2", "LEAK-warning", "LEAK-logging",
         "LEAK-rcutils")


def run_in_pty(argv: list[str], env: dict[str, str], timeout_s: float,
               size: tuple[int, int] = (50, 200)) -> tuple[int, int, str]:
    """Run ``argv`` with stdin, stdout and stderr on a pseudo-terminal of ``size`` (rows,
    columns); return (pid, exit code, everything the terminal received)."""
    import fcntl
    import pty
    import select
    import signal
    import struct
    import subprocess
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO,
                            start_new_session=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: every copy of the terminal's other end is closed
                break
            if not data:
                break
            chunks.append(data)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
    return proc.pid, code, b"".join(chunks).decode(errors="replace")


@pytest.mark.ros
@pytest.mark.slow
def test_live_view_owns_the_terminal_and_logs_go_to_the_file(tiny_bundle: Path,
                                                              tmp_path: Path) -> None:
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(ROS_LOG_DIR=str(tmp_path / "log"), TERM="xterm-256color",
               PYTHONWARNINGS="default")
    pid, code, screen = run_in_pty(
        [sys.executable, "-c", LEAKING_MAIN, "--scenario", "quick_unplug", "--duration", "4",
         "--bundle", str(tiny_bundle)], env, timeout_s=180)
    text = ANSI.sub("", screen)
    assert code == 0, text[-3000:]
    leaked = [ln for ln in text.splitlines()
              if ROS_LOG_LINE.search(ln) or "LEAK-" in ln or "Traceback" in ln
              or "pybullet build time" in ln]
    assert leaked == [], "log lines reached the terminal while the view owned it"
    assert "omnibind-bringup summary" in text, text[-3000:]
    log_file = tmp_path / "log" / f"omnibind-bringup-{pid}.log"
    assert f"full log (nodes, libraries): {log_file}" in text, text[-3000:]
    # the scenario unplugs the camera at 1 s: the events panel shows it
    assert re.search(r"camera\s+\S+ → (STALE|LOST)", text), text[-3000:]
    log = log_file.read_text(errors="replace")
    for leak in LEAKS:
        assert leak in log, (leak, log[-3000:])
    ros_lines = [ln for ln in log.splitlines() if ROS_LOG_LINE.search(ln)]
    assert any("[omnibind_perception]" in ln for ln in ros_lines), log[-3000:]
    assert any("[omnibind_sim_sensors]" in ln for ln in ros_lines), log[-3000:]


@pytest.mark.ros
def test_live_run_that_cannot_configure_repeats_the_logged_error(tmp_path: Path) -> None:
    from rich.console import Console

    (tmp_path / "not_a_bundle").mkdir()
    log_file = tmp_path / "run.log"
    opts = bringup.BringupOptions(sim=False, duration_s=1.0, ui=True,
                                  bundle=str(tmp_path / "not_a_bundle"))
    with pytest.raises(bringup.BringupError) as exc:
        bringup.run_bringup(opts, console=Console(file=io.StringIO()), log_file=log_file)
    message = str(exc.value)
    assert f"its error is in {log_file}" in message, message
    assert "[ERROR]" in message and "[omnibind_perception]" in message, message
    assert "[ERROR]" in log_file.read_text()


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
