"""``bench_runtime.py chaos``: the soak with everything changing at once.

For ``--minutes`` (default 10) the perception node (its own process, as deployed) runs on the
simulated sensors while, every ``--every`` seconds (default 3), one random change is made
(seeded, so a run can be repeated):

* hot-plug: a simulated sensor is unplugged (never fewer than two stay plugged) or replugged;
* degradation: a sensor starts publishing degraded data (a random kind of its modality,
  severity 0.4-1: ``omnibind_ros.sim.degrade``) or is clean again;
* a perception parameter changes at runtime: ``fusion.top_k``, ``fusion.rate_hz``,
  ``fusion.max_age_s``, or an operator disables / re-enables a sensor (``sensors.<n>.enabled``).

Measured on the perception process: RSS (least-squares slope after the warm-up, MB/min; target
<= 1), threads and open file descriptors (growth from after the warm-up to the end; target
none), the share of recognitions with an answer (target >= 95 %; every change keeps at least
one sensor live and enabled), and stalls: the longest gap between two recognitions received
(target < 1 s).
"""
from __future__ import annotations

import argparse
import os
import queue
import random
import threading
import time
from pathlib import Path
from typing import Any

from _bench_session import Session, header

#: Targets (what RESULT lines judge).
RSS_SLOPE_MAX_MB_MIN = 1.0
ANSWERED_MIN = 0.95
STALL_MAX_S = 1.0
#: Simulated sensors (config/sim_sensors.yaml) and the modality of each.
SENSORS = {"camera": "image", "thermal": "thermal", "event_camera": "event",
           "tactile": "tactile", "microphone": "audio", "lidar": "point_cloud"}
PERCEPTION_CHANGES = (("fusion.top_k", (3, 5)), ("fusion.rate_hz", (8.0, 10.0, 12.5)),
                      ("fusion.max_age_s", (0.4, 0.5, 0.6)))


class SimParams:
    """Simulator parameter changes applied from the simulator's own timer (its callbacks never
    run concurrently with its publishing timer), queued from the chaos thread."""

    def __init__(self, sim: Any, rate_hz: float = 50.0) -> None:
        from rclpy.parameter import Parameter

        self._param = Parameter
        self._sim = sim
        self._queue: queue.SimpleQueue[list[tuple[str, Any]]] = queue.SimpleQueue()
        self._timer = sim.create_timer(1.0 / rate_hz, self._poll)

    def set(self, *pairs: tuple[str, Any]) -> None:
        self._queue.put(list(pairs))

    def _poll(self) -> None:
        while not self._queue.empty():
            self._sim.set_parameters([self._param(k, value=v) for k, v in self._queue.get()])


class ProcSampler(threading.Thread):
    """Threads and open file descriptors of one process, every ``period_s`` (from /proc)."""

    def __init__(self, pid: int, period_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.period_s = pid, period_s
        self.samples: list[tuple[float, int, int]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self._stop_event.wait(self.period_s):
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
                threads = int(next(line.split()[1] for line in status.splitlines()
                                   if line.startswith("Threads:")))
                fds = len(os.listdir(f"/proc/{self.pid}/fd"))
            except (OSError, StopIteration):
                continue
            self.samples.append((time.monotonic() - t0, threads, fds))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5.0)


class Chaos(threading.Thread):
    """One random change every ``every_s`` seconds; the log is (wall ns, what)."""

    def __init__(self, session: Session, sim: SimParams, every_s: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.session, self.sim, self.every_s = session, sim, every_s
        self.rng = random.Random(seed)
        self.plugged = set(SENSORS)
        self.degraded: set[str] = set()
        self.disabled: set[str] = set()
        self.log: list[tuple[int, str]] = []
        self.failed: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.every_s):
            action = self.rng.choice((self.hotplug, self.degrade, self.perception))
            what = action()
            self.log.append((time.time_ns(), what))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10.0)

    def _usable(self) -> set[str]:
        return self.plugged - self.disabled

    def hotplug(self) -> str:
        unplugged = sorted(set(SENSORS) - self.plugged)
        removable = sorted(s for s in self.plugged if len(self._usable() - {s}) >= 2)
        if unplugged and (not removable or self.rng.random() < 0.5):
            name = self.rng.choice(unplugged)
            self.plugged.add(name)
            self.sim.set((f"sensors.{name}.enabled", True))
            return f"replug {name}"
        name = self.rng.choice(removable)
        self.plugged.discard(name)
        self.sim.set((f"sensors.{name}.enabled", False))
        return f"unplug {name}"

    def degrade(self) -> str:
        from omnibind_ros.sim.degrade import kinds

        if self.degraded and self.rng.random() < 0.5:
            name = self.rng.choice(sorted(self.degraded))
            self.degraded.discard(name)
            self.sim.set((f"sensors.{name}.degradation", ""))
            return f"clean {name}"
        name = self.rng.choice(sorted(SENSORS))
        kind = self.rng.choice(kinds(SENSORS[name]))
        severity = round(self.rng.uniform(0.4, 1.0), 2)
        self.degraded.add(name)
        self.sim.set((f"sensors.{name}.degradation_severity", severity),
                     (f"sensors.{name}.degradation", kind))
        return f"degrade {name} {kind} {severity}"

    def perception(self) -> str:
        from rclpy.parameter import Parameter

        if self.rng.random() < 0.3:  # an operator switches a sensor off or back on
            if self.disabled and self.rng.random() < 0.5:
                name = self.rng.choice(sorted(self.disabled))
                self.disabled.discard(name)
                key, value = f"sensors.{name}.enabled", True
            else:
                candidates = sorted(s for s in SENSORS if len(self._usable() - {s}) >= 2
                                    and s not in self.disabled)
                if not candidates:
                    return "no change (too few sensors to disable one)"
                name = self.rng.choice(candidates)
                self.disabled.add(name)
                key, value = f"sensors.{name}.enabled", False
        else:
            key, values = self.rng.choice(PERCEPTION_CHANGES)
            value = self.rng.choice(values)
        ok = self.session.set_ours_params([Parameter(key, value=value)])
        if not ok:
            self.failed.append(f"{key}={value}")
        return f"perception {key}={value}" + ("" if ok else " (refused)")


def run_chaos(args: argparse.Namespace, env: dict[str, str], workdir: Path, bundle: Path,
              bundle_desc: str) -> dict[str, Any]:
    info = header(args, bundle_desc, "two processes: sim+receiver+chaos | perception (measured)")
    print(f"{args.minutes:g} min, one random change every {args.every:g} s (seed {args.seed})",
          flush=True)
    session = Session(args, env, workdir, bundle, ours_in_process=False, scenario="",
                      instrument=False)
    try:
        pid = session.children[session.rc.OURS].pid
        rss = session.rc.ProcessSampler({"perception": pid})
        procs = ProcSampler(pid)
        chaos = Chaos(session, SimParams(session.sim), args.every, args.seed)
        for thread in (rss, procs, chaos):
            thread.start()
        time.sleep(args.minutes * 60.0)
        chaos.stop()
        end = time.time_ns()
        rss.stop()
        procs.stop()
    finally:
        session.close()
    result = analyse_chaos(session, rss, procs, chaos, args.rss_warmup, end)
    result.update(info, loadavg_end=list(os.getloadavg()))
    traced = session.stats.get("ours", {}).get("extra", {}).get("tracemalloc")
    if traced:
        result["tracemalloc"] = traced
        print(f"tracemalloc (Python heap of the perception process): "
              f"{traced['traced_mb_warm']:.1f} MB after warm-up -> {traced['traced_mb_end']:.1f}"
              " MB at the end; biggest growth by allocation site:")
        for site, kib, count in traced["top"][:12]:
            print(f"  {kib:+9.1f} KiB {count:+7d} blocks  {site}")
    print_chaos(result)
    return result


def analyse_chaos(session: Session, rss: Any, procs: ProcSampler, chaos: Chaos,
                  warmup_s: float, end: int) -> dict[str, Any]:
    import numpy as np

    samples = rss.samples["perception"]
    t = np.array([s[0] for s in samples])
    mem = np.array([s[2] for s in samples])
    steady = t >= warmup_s
    slope = float(np.polyfit(t[steady], mem[steady], 1)[0] * 60.0) if steady.sum() >= 3 \
        else float("nan")
    # a leak grows to the end; warm-up (arenas, the first of each degradation's buffer sizes)
    # flattens: the slope over the last half tells them apart
    half = t >= t[len(t) // 2] if t.size else t.astype(bool)
    slope_half = float(np.polyfit(t[half], mem[half], 1)[0] * 60.0) if half.sum() >= 3 \
        else float("nan")
    warm = [s for s in procs.samples if s[0] >= warmup_s]
    recs = session.rc.records_between(session.records(), session.t0_ns, end)
    recv = sorted(r.recv_ns for r in recs)
    gaps = np.diff(recv) / 1e9 if len(recv) > 1 else np.array([float("inf")])
    actions: dict[str, int] = {}
    for _, what in chaos.log:
        kind = what.split()[0]
        actions[kind] = actions.get(kind, 0) + 1
    return {
        "minutes": (end - session.t0_ns) / 60e9, "changes": len(chaos.log),
        "changes_by_kind": actions, "refused_parameter_changes": chaos.failed,
        "rss_start_mb": float(mem[0]), "rss_end_mb": float(mem[-1]),
        "rss_max_mb": float(mem.max()), "rss_slope_mb_per_min": slope,
        "rss_slope_last_half_mb_per_min": slope_half,
        "rss_every_30s": [[round(a), round(b, 1)] for a, b in zip(t[::30], mem[::30],
                                                                    strict=True)],
        "threads_after_warmup": warm[0][1] if warm else None,
        "threads_end": warm[-1][1] if warm else None,
        "threads_max": max((s[1] for s in warm), default=None),
        "fds_after_warmup": warm[0][2] if warm else None, "fds_end": warm[-1][2] if warm else None,
        "fds_max": max((s[2] for s in warm), default=None),
        "recognitions": len(recs), "answered": sum(r.answered for r in recs),
        "answered_fraction": sum(r.answered for r in recs) / len(recs) if recs else 0.0,
        "longest_gap_s": float(gaps.max()), "gaps_over_1s": int((gaps > 1.0).sum()),
        "log": [(round((ns - session.t0_ns) / 1e9, 2), what) for ns, what in chaos.log],
    }


def print_chaos(res: dict[str, Any]) -> None:
    print("perception RSS every 30 s (s, MB): " + ", ".join(
        f"{t}: {m}" for t, m in res["rss_every_30s"]))
    ok = {"rss": res["rss_slope_mb_per_min"] <= RSS_SLOPE_MAX_MB_MIN,
          "threads": res["threads_end"] is not None
          and res["threads_end"] <= res["threads_after_warmup"],
          "fds": res["fds_end"] is not None and res["fds_end"] <= res["fds_after_warmup"],
          "answered": res["answered_fraction"] >= ANSWERED_MIN,
          "stall": res["longest_gap_s"] < STALL_MAX_S}
    print(f"changes: {res['changes']} {res['changes_by_kind']}; refused parameter changes: "
          f"{res['refused_parameter_changes'] or 'none'}")
    print(f"RESULT chaos: {res['minutes']:.1f} min; perception RSS {res['rss_start_mb']:.1f} -> "
          f"{res['rss_end_mb']:.1f} MB (max {res['rss_max_mb']:.1f}), slope after warm-up "
          f"{res['rss_slope_mb_per_min']:+.2f} MB/min, over the last half "
          f"{res['rss_slope_last_half_mb_per_min']:+.2f} MB/min "
          f"[{'PASS' if ok['rss'] else 'FAIL'}]; "
          f"threads {res['threads_after_warmup']} -> {res['threads_end']} (max "
          f"{res['threads_max']}) [{'PASS' if ok['threads'] else 'FAIL'}]; FDs "
          f"{res['fds_after_warmup']} -> {res['fds_end']} (max {res['fds_max']}) "
          f"[{'PASS' if ok['fds'] else 'FAIL'}]; answered {res['answered']}/"
          f"{res['recognitions']} = {100 * res['answered_fraction']:.1f} % "
          f"[{'PASS' if ok['answered'] else 'FAIL'}]; longest gap between recognitions "
          f"{res['longest_gap_s']:.2f} s, {res['gaps_over_1s']} over 1 s "
          f"[{'PASS' if ok['stall'] else 'FAIL'}]", flush=True)
