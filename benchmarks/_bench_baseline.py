"""``bench_runtime.py baseline``: ours vs an ApproximateTimeSynchronizer node on the same dropout
scenario, answered recognitions per segment of constant plug state.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from _bench_session import Session, fusion_param, header, stage_summary

TARGET_ANSWERED = 0.95


def scenario_duration(name: str) -> float:
    from omnibind_ros.ros.sim_sensors_node import resolve_config_file
    from omnibind_ros.sim.scenario import load_scenario

    scenario = load_scenario(resolve_config_file(name))
    return float(scenario.duration_s or (scenario.events[-1].t + 5.0))


def run_baseline(args: argparse.Namespace, env: dict[str, str], workdir: Path, bundle: Path,
                 bundle_desc: str) -> dict[str, Any]:
    duration = args.duration or scenario_duration(args.scenario)
    layout = ("at once, three processes: sim+receiver | ours | baseline" if args.concurrent else
              "one after the other on the same seeded stream and scenario: sim+receiver | ours,"
              " then sim+receiver | baseline")
    info = header(args, bundle_desc, layout)
    print(f"scenario {args.scenario}, {duration:.0f} s; baseline: approximate time sync over "
          f"the stamped sensors, slop {args.slop} s, queue {args.queue_size}", flush=True)
    if args.concurrent:
        run = scenario_run(args, env, workdir, bundle, duration, ours=True, baseline=True)
        runs = {"ours": run, "baseline": run}
    else:
        runs = {"ours": scenario_run(args, env, workdir, bundle, duration, ours=True),
                "baseline": scenario_run(args, env, workdir, bundle, duration, baseline=True)}
    result = analyse_baseline(runs, args)
    cpu, seen = {}, set()
    for label, (_, _, sampler) in runs.items():
        if id(sampler) not in seen:  # one sampler when both ran at once
            seen.add(id(sampler))
            prefix = "" if args.concurrent else f"{label} run, "
            cpu.update({prefix + n: sampler.mean_cpu(n) for n in sampler.samples})
    result.update(info, scenario=args.scenario, slop_s=args.slop, queue_size=args.queue_size,
                  cpu_mean_pct=cpu, loadavg_end=list(os.getloadavg()))
    print_baseline(result, runs["ours"][0])
    return result


def scenario_run(args: argparse.Namespace, env: dict[str, str], workdir: Path, bundle: Path,
                 duration: float, *, ours: bool = False,
                 baseline: bool = False) -> tuple[Session, int, Any]:
    """The simulator with the scenario for ``duration`` s in front of the chosen nodes."""
    session = Session(args, env, workdir, bundle, ours_in_process=False, ours=ours,
                      baseline=baseline, scenario=args.scenario)
    try:
        sampler = session.rc.ProcessSampler(session.pids)
        sampler.start()
        time.sleep(duration)
        end = time.time_ns()
        sampler.stop()
    finally:
        session.close()
    return session, end, sampler



def segments(session: Session, start: int, end: int) -> list[dict[str, Any]]:
    """Spans of constant plug/noise state, from the simulator's applied commands (a degraded
    sensor counts as noisy: it publishes, and its data may mislead)."""
    unplugged: set[str] = set()
    noisy: set[str] = set()
    bounds: list[tuple[int, frozenset[str], frozenset[str]]] = []
    for t, sensor, key, value in sorted(session.log.commands):
        if key == "enabled":
            unplugged.discard(sensor) if value else unplugged.add(sensor)
        elif key in ("noise", "degradation"):  # garbage or degraded, still publishing
            noisy.add(sensor) if value else noisy.discard(sensor)
        else:  # a setting (degradation_severity) that changes no span by itself
            continue
        bounds.append((t, frozenset(unplugged), frozenset(noisy)))
    spans, state, cursor = [], (frozenset(), frozenset()), start
    for t, out, noise in bounds:
        if t > cursor:
            spans.append({"start": cursor, "end": min(t, end), "unplugged": state[0],
                          "noisy": state[1]})
            cursor = t
        state = (out, noise)
    if end > cursor:
        spans.append({"start": cursor, "end": end, "unplugged": state[0], "noisy": state[1]})
    return [s for s in spans if s["end"] - s["start"] >= 0.5e9]


def analyse_baseline(runs: dict[str, tuple[Session, int, Any]],
                     args: argparse.Namespace) -> dict[str, Any]:
    """Segments from the plug commands of ours' run; the baseline's run is read at the same
    offsets from its own start (the scenario runs on stream time, which starts with the run)."""
    (session, end, _), (b_session, b_end, _) = runs["ours"], runs["baseline"]
    rc = session.rc
    rate = float(fusion_param(args, "fusion.rate_hz"))
    min_mod = int(fusion_param(args, "fusion.min_modalities"))
    stamped = [s.name for s in rc.sensor_specs() if s.has_header]
    start, shift = session.t0_ns + round(args.warmup * 1e9), b_session.t0_ns - session.t0_ns
    rows = []
    for span in segments(session, start, min(end, b_end - shift)):
        secs = (span["end"] - span["start"]) / 1e9
        ours = rc.records_between(session.records(rc.OURS), span["start"], span["end"])
        base = rc.records_between(b_session.records(rc.BASELINE), span["start"] + shift,
                                  span["end"] + shift)
        answered = sum(r.answered for r in ours)
        rows.append({
            "t_start_s": (span["start"] - session.t0_ns) / 1e9,
            "t_end_s": (span["end"] - session.t0_ns) / 1e9, "seconds": secs,
            "unplugged": sorted(span["unplugged"]), "noisy": sorted(span["noisy"]),
            "live_stamped": len(set(stamped) - span["unplugged"]),
            "ours_per_s": len(ours) / secs, "ours_answered_per_s": answered / secs,
            "ours_answered_frac": answered / (rate * secs) if rate > 0 else float("nan"),
            "baseline_per_s": len(base) / secs,
            "ours_e2e_ms": rc.summary([(r.recv_ns - r.stamp_ns) / 1e6 for r in ours
                                       if r.answered]),
            "baseline_e2e_ms": rc.summary([(r.recv_ns - r.stamp_ns) / 1e6 for r in base])})
    return {"segments": rows, "fusion_rate_hz": rate, "min_modalities": min_mod,
            "concurrent": bool(args.concurrent),
            "baseline_emit_ms": stage_summary(b_session.stats.get("baseline", {}).get(
                "stages", {}), "baseline/emit", 0, 2**63),
            "totals": _baseline_totals(rows, min_mod)}


def _baseline_totals(rows: list[dict[str, Any]], min_mod: int) -> dict[str, Any]:
    def agg(sel: list[dict[str, Any]]) -> dict[str, float]:
        secs = sum(r["seconds"] for r in sel)
        if not secs:
            return {"seconds": 0.0}
        return {"seconds": secs,
                "ours_answered_per_s": sum(r["ours_answered_per_s"] * r["seconds"]
                                           for r in sel) / secs,
                "ours_answered_frac": sum(r["ours_answered_frac"] * r["seconds"]
                                          for r in sel) / secs,
                "min_ours_answered_frac": min(r["ours_answered_frac"] for r in sel),
                "baseline_per_s": sum(r["baseline_per_s"] * r["seconds"] for r in sel) / secs}
    live = [r for r in rows if r["live_stamped"] >= min_mod]
    return {"dropout": agg([r for r in live if r["unplugged"]]),
            "all_plugged": agg([r for r in live if not r["unplugged"]])}


def print_baseline(res: dict[str, Any], session: Session) -> None:
    rc = session.rc
    rows = [[f"{r['t_start_s']:.1f}-{r['t_end_s']:.1f}", ",".join(r["unplugged"]) or "-",
             ",".join(r["noisy"]) or "-", r["ours_per_s"], r["ours_answered_per_s"],
             100 * r["ours_answered_frac"], r["baseline_per_s"], r["ours_e2e_ms"]["p50"],
             r["baseline_e2e_ms"]["p50"]] for r in res["segments"]]
    rc.print_table(f"Dropout scenario (ours: fusion at {res['fusion_rate_hz']:g} Hz; answered % "
                   "= answered recognitions / expected ticks)", [
                       "t (s)", "unplugged", "noisy", "ours /s", "ours ans/s", "ours ans %",
                       "baseline /s", "ours e2e p50", "base e2e p50"], rows)
    emit = res["baseline_emit_ms"]
    print(f"  baseline cost per emitted set (encode all + fuse): p50 {emit['p50']:.1f} ms, "
          f"p99 {emit['p99']:.1f} ms")
    for name, cpu in res["cpu_mean_pct"].items():
        print(f"  CPU {name}: {cpu:.0f}% of one core (mean)")
    drop, full = res["totals"]["dropout"], res["totals"]["all_plugged"]
    if drop.get("seconds"):
        ok = drop["min_ours_answered_frac"] >= TARGET_ANSWERED
        print(f"\nRESULT baseline: during dropouts ({drop['seconds']:.0f} s) ours answered "
              f"{drop['ours_answered_per_s']:.1f}/s = {100 * drop['ours_answered_frac']:.0f}% "
              f"of ticks (worst segment {100 * drop['min_ours_answered_frac']:.0f}%, target >= "
              f"{100 * TARGET_ANSWERED:.0f}%: {rc.verdict(ok)}); baseline "
              f"{drop['baseline_per_s']:.2f}/s. All plugged: ours "
              f"{full.get('ours_answered_per_s', float('nan')):.1f}/s, baseline "
              f"{full.get('baseline_per_s', float('nan')):.2f}/s", flush=True)
    else:
        print("\nRESULT baseline: no dropout segment in the measured window", flush=True)
