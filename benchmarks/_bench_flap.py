"""``bench_runtime.py flap``: the hot-plug demo with CPU-burning processes beside it; sensor
state changes per minute that no scenario event caused, and answered ticks.

Layout: one process (simulator with the scenario, perception node, receiver), as ``hotplug``,
plus ``--burners`` processes that spin ``while True: pass``; they are started after the nodes
are ready and ended by their PIDs when the run ends, whatever happens. Every state change the
node's monitor reports is recorded (a class-level wrapper of ``Recognizer.on_monitor_timer``,
installed before the node exists; the node's code is untouched). A change of sensor S is
*explained* when the simulator applied a plug or noise command to S at most
``EXPLAIN_S + lost timeout of S`` before it (an unplug is STALE then LOST, a replug UNKNOWN then
LIVE, noise DEGRADED and back); every other change after the warm-up counts as a flap. Targets:
0 unexplained changes per minute, >= 95 % of received recognitions answered.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _bench_session import Session, fusion_param, header

TARGET_FLAPS_PER_MIN = 0.0
TARGET_ANSWERED = 0.95
#: Seconds after a scenario command (beyond the sensor's lost timeout) in which its sensor's
#: state changes are its consequences.
EXPLAIN_S = 2.0


def run_flap(args: argparse.Namespace, env: dict[str, str], workdir: Path, bundle: Path,
             bundle_desc: str) -> dict[str, Any]:
    info = header(args, bundle_desc, f"one process: sim + perception + receiver; "
                                     f"{args.burners} CPU burner processes beside it")
    import omnibind_ros

    print(f"omnibind_ros from {omnibind_ros.__path__[0]}; scenario {args.scenario}; "
          f"{args.duration:g} s measured after {args.warmup:g} s", flush=True)
    recorder = TransitionRecorder()
    recorder.install()
    burners: list[subprocess.Popen] = []
    session = None
    try:
        session = Session(args, env, workdir, bundle, ours_in_process=True,
                          scenario=args.scenario)
        burners = start_burners(args.burners)
        time.sleep(args.warmup)
        start = time.time_ns()
        load_start = os.getloadavg()
        time.sleep(args.duration)
        end = time.time_ns()
        load_end = os.getloadavg()
    finally:
        stop_burners(burners)
        recorder.uninstall()
        if session is not None:
            session.close()
    result = analyse_flap(session, recorder, start, end, args)
    result.update(info, scenario=args.scenario, burners=args.burners,
                  loadavg_measured=[[round(x, 2) for x in load_start],
                                    [round(x, 2) for x in load_end]],
                  package=str(omnibind_ros.__path__[0]))
    print_flap(result, session)
    return result


def start_burners(count: int) -> list[subprocess.Popen]:
    """``count`` processes spinning a core each (ended by :func:`stop_burners`, by PID)."""
    # each spins while its parent lives: a benchmark killed before its cleanup leaves none
    spin = f"import os\nwhile os.getppid() == {os.getpid()}: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(count)]
    print("CPU burners: pids " + ", ".join(str(p.pid) for p in procs), flush=True)
    return procs


def stop_burners(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait(timeout=10)


class TransitionRecorder:
    """Every state change the engine's monitor reports (wall time, transition), and every
    state-change log line the node writes where it has a rate-limited log (else one line per
    change, as the node logged them before)."""

    def __init__(self) -> None:
        self.changes: list[tuple[int, Any]] = []
        self.log_lines: list[int] | None = None
        self._lock = threading.Lock()
        self._restore: list[tuple[type, str, Any]] = []

    def install(self) -> None:
        from omnibind_ros.core.recognizer import Recognizer
        from omnibind_ros.ros.perception_lifecycle import PerceptionNode

        evaluate = Recognizer.on_monitor_timer

        def recorded(engine: Any) -> Any:
            update = evaluate(engine)
            now = time.time_ns()
            with self._lock:
                self.changes += [(now, t) for t in update.transitions]
            return update

        self._patch(Recognizer, "on_monitor_timer", recorded)
        log_lines = getattr(PerceptionNode, "_log_lines", None)
        if log_lines is not None:
            self.log_lines = []

            def counted(node: Any, lines: list[Any]) -> None:
                with self._lock:
                    self.log_lines += [time.time_ns()] * len(lines)
                log_lines(node, lines)

            self._patch(PerceptionNode, "_log_lines", counted)

    def _patch(self, cls: type, name: str, value: Any) -> None:
        self._restore.append((cls, name, getattr(cls, name)))
        setattr(cls, name, value)

    def uninstall(self) -> None:
        for cls, name, value in reversed(self._restore):
            setattr(cls, name, value)
        self._restore.clear()


def _explained(change_ns: int, sensor: str, commands: list[tuple[int, str, str, bool]],
               window_ns: dict[str, int]) -> bool:
    window = window_ns.get(sensor, round(EXPLAIN_S * 1e9))
    return any(name == sensor and t <= change_ns <= t + window for t, name, _, _ in commands)


def analyse_flap(session: Session, recorder: TransitionRecorder, start: int, end: int,
                 args: argparse.Namespace) -> dict[str, Any]:
    rc = session.rc
    specs = {s.name: s for s in rc.sensor_specs()}
    params = rc.yaml_params(rc.PERCEPTION_YAML)
    window_ns = {name: round((EXPLAIN_S + params.get(f"sensors.{name}.lost_after", 10.0)
                              * spec.period_ms / 1e3) * 1e9)
                 for name, spec in specs.items() if spec.expected_rate_hz > 0}
    commands = sorted(session.log.commands)
    minutes = (end - start) / 60e9
    per_sensor: dict[str, dict[str, Any]] = {}
    for t, tr in recorder.changes:
        if not start <= t < end:
            continue
        row = per_sensor.setdefault(tr.name, {"changes": 0, "explained": 0, "unexplained": 0,
                                              "kinds": {}})
        row["changes"] += 1
        if _explained(t, tr.name, commands, window_ns):
            row["explained"] += 1
        else:
            row["unexplained"] += 1
            kind = f"{tr.old.name}->{tr.new.name}"
            row["kinds"][kind] = row["kinds"].get(kind, 0) + 1
    stages = session.stages()
    for name in specs:  # how old the messages were when the node's callback got them
        ages = rc.window_values(stages.get(f"{name}/stamp_to_callback", []), start, end)
        row = per_sensor.setdefault(name, {"changes": 0, "explained": 0, "unexplained": 0,
                                           "kinds": {}})
        row["arrival_age_ms"] = rc.summary(ages)
    unexplained = sum(r["unexplained"] for r in per_sensor.values())
    changes = sum(r["changes"] for r in per_sensor.values())
    lines = (changes if recorder.log_lines is None
             else sum(1 for t in recorder.log_lines if start <= t < end))
    recs = rc.records_between(session.records(rc.OURS), start, end)
    rate = float(fusion_param(args, "fusion.rate_hz"))
    answered = sum(r.answered for r in recs)
    recv = [r.recv_ns for r in recs]
    window = round(4e9 / rate) if rate > 0 else 0
    most = max((sum(1 for u in recv if t <= u < t + window) for t in recv), default=0)
    return {"per_sensor": per_sensor, "minutes": minutes, "changes": changes,
            "unexplained": unexplained, "unexplained_per_min": unexplained / minutes,
            "changes_per_min": changes / minutes, "log_lines_per_min": lines / minutes,
            "log_lines_counted": recorder.log_lines is not None,
            "commands": len([c for c in commands if start - 10e9 <= c[0] < end]),
            "recognitions": len(recs), "answered": answered,
            "answered_frac": answered / len(recs) if recs else float("nan"),
            "ticks_per_s": len(recs) / ((end - start) / 1e9), "fusion_rate_hz": rate,
            "most_in_4_periods": most}


def print_flap(res: dict[str, Any], session: Session) -> None:
    rc = session.rc
    rows = [[name, r["changes"], r["explained"], r["unexplained"],
             r["unexplained"] / res["minutes"], r["arrival_age_ms"]["p50"],
             r["arrival_age_ms"]["p99"],
             ", ".join(f"{k} {n}x" for k, n in sorted(r["kinds"].items())) or "-"]
            for name, r in sorted(res["per_sensor"].items())]
    rc.print_table(f"Sensor state changes in {res['minutes']:.2f} min with {res['burners']} CPU "
                   "burners (explained = within the window after a scenario command on that "
                   "sensor)", ["sensor", "changes", "explained", "unexplained", "unexpl./min",
                               "age p50 ms", "p99", "unexplained kinds"], rows)
    lines = ("state-change log lines" if res["log_lines_counted"]
             else "state-change log lines (one per change in this version)")
    print(f"  {lines}: {res['log_lines_per_min']:.1f}/min; recognitions "
          f"{res['ticks_per_s']:.2f}/s at fusion.rate_hz {res['fusion_rate_hz']:g} (most in "
          f"any 4-period window, by receive time: {res['most_in_4_periods']}); load average "
          f"during the run {res['loadavg_measured']}")
    flaps_ok = res["unexplained_per_min"] <= TARGET_FLAPS_PER_MIN
    answered_ok = res["answered_frac"] >= TARGET_ANSWERED
    print(f"\nRESULT flap: {res['unexplained_per_min']:.1f} unexplained state changes/min "
          f"(target {TARGET_FLAPS_PER_MIN:g}: {rc.verdict(flaps_ok)}); answered "
          f"{100 * res['answered_frac']:.1f}% of {res['recognitions']} recognitions (target >= "
          f"{100 * TARGET_ANSWERED:.0f}%: {rc.verdict(answered_ok)})", flush=True)
