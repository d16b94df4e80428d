"""Bag evaluation: offline throughput and live-vs-offline accuracy on one simulated bag.

Records (or reuses from ``<cache>/bags``) a simulated bag with the ``hotplug_demo`` dropout
scenario, evaluates it offline twice, with the parallel path (sensor stages in ``--processes``
worker processes) and with the reference path (everything in one process, message by message),
printing fusion ticks/s, wall time and accuracy of each and whether their ticks are identical;
then live at ``--rate`` (the perception node with ``use_sim_time`` fed by a bag player; prints
its accuracy and the player's publish lag), and compares them against these targets:

* offline evaluation >= 100 fusion ticks/s (on 2 cores, default bundle);
* offline and live accuracy within 2 points on the same bag.

Ticks/s is fusion ticks over the whole offline evaluation's wall time (bundle loading
included: what a user waits for), as the report's ``timing.ticks_per_s``; the rate without
set-up is printed too. The machine may be shared: the load average is printed at the start and
the end; quote numbers from an idle machine.

Usage::

    python benchmarks/bench_bag.py [--duration 120] [--rate 1.0] [--bundle PATH] [--skip-live]
                                   [--scenario hotplug_demo] [--seed 0] [--processes N]
                                   [--skip-reference]
                                   [--report-dir DIR] [--json PATH] [--fresh]
                                   [--in-process-player]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from omnibind_ros.ros.env import ensure_safe_ros_env  # noqa: E402

TICKS_PER_S_TARGET = 100.0
ACCURACY_POINTS_TARGET = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120.0, metavar="S",
                        help="bag length in stream seconds (default 120)")
    parser.add_argument("--rate", type=float, default=1.0,
                        help="live playback rate, bag seconds per wall second (default 1.0)")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="model bundle (default: <cache>/bundles/default)")
    parser.add_argument("--skip-live", action="store_true", help="offline evaluation only")
    parser.add_argument("--scenario", default="hotplug_demo",
                        help="dropout scenario of the bag (default hotplug_demo)")
    parser.add_argument("--seed", type=int, default=0, help="world seed of the bag (default 0)")
    parser.add_argument("--processes", type=int, default=None,
                        help="worker processes of the parallel offline path (default: one per "
                             "core)")
    parser.add_argument("--skip-reference", action="store_true",
                        help="do not run the single-process reference path for comparison")
    parser.add_argument("--config", type=Path, default=None,
                        help="perception node config (default: config/perception.yaml)")
    parser.add_argument("--report-dir", type=Path, default=None,
                        help="also write both reports (markdown, JSON, plots) under DIR/offline "
                             "and DIR/live")
    parser.add_argument("--in-process-player", action="store_true",
                        help="live: play the bag from a thread of the node's process instead "
                             "of a child process (to measure what the GIL costs)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers as JSON")
    parser.add_argument("--fresh", action="store_true", help="re-record the bag")
    args = parser.parse_args(argv)
    if not args.duration > 0 or not args.rate > 0:
        parser.error("--duration and --rate must be > 0")
    return args


def _bag_key(args: argparse.Namespace) -> str:
    """Cache name of the bag: changes with the recording's arguments and the files they read."""
    from omnibind_ros.bag.record import plan_sim

    plan = plan_sim(duration_s=args.duration, scenario=args.scenario, seed=args.seed)
    digest = hashlib.sha256(plan.to_json().encode())
    for path in (plan.params_file, plan.scenario_file):
        if path is not None:
            digest.update(Path(path).read_bytes())
    return f"sim_{args.scenario}_{args.duration:g}s_seed{args.seed}_{digest.hexdigest()[:10]}"


def bag_for(args: argparse.Namespace) -> tuple[Path, float | None]:
    """(bag path, seconds spent recording it; None when reused from the cache)."""
    from omnibind_ros.bag.reader import BagReadError, open_info
    from omnibind_ros.bag.record import record_sim
    from omnibind_ros.core.paths import default_cache_dir

    root = default_cache_dir() / "bags"
    bag = root / _bag_key(args)
    if bag.is_dir() and not args.fresh:
        try:
            if open_info(bag).error is None:
                return bag, None
        except (BagReadError, FileNotFoundError):
            pass
    shutil.rmtree(bag, ignore_errors=True)
    partial = root / f"{bag.name}.partial-{os.getpid()}"  # an interrupted run is never reused
    shutil.rmtree(partial, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    record_sim(partial, duration_s=args.duration, scenario=args.scenario, seed=args.seed)
    partial.rename(bag)
    return bag, time.perf_counter() - t0


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _summary(result: Any, scores: dict[str, Any]) -> dict[str, Any]:
    overall = scores["overall"]
    return {"ticks": len(result.ticks), "wall_s": round(result.wall_s, 3),
            "ticks_per_s": scores["timing"]["ticks_per_s"], "accuracy": overall["accuracy"],
            "scored": overall["scored"], "answered_fraction": overall["answered_fraction"],
            "top_k_accuracy": overall["top_k_accuracy"],
            "by_phase": [{k: p[k] for k in ("label", "start_s", "end_s", "ticks", "accuracy")}
                         for p in scores["by_phase"]],
            "latency_s": scores["timing"]["latency_s"], "input_age_s": scores["input_age_s"],
            "error": result.error}


def _phase_table(offline: dict[str, Any], live: dict[str, Any] | None) -> list[str]:
    lines = [f"  {'phase':<52} {'start':>6} {'end':>6} {'offline':>9} {'live':>9}"]
    live_phases = {(p["label"], p["start_s"]): p for p in (live or {}).get("by_phase", [])}
    for p in offline["by_phase"]:
        other = live_phases.get((p["label"], p["start_s"]))
        live_acc = _pct(other["accuracy"]) if other else "-"
        lines.append(f"  {p['label'][:52]:<52} {p['start_s']:6.1f} {p['end_s']:6.1f} "
                     f"{_pct(p['accuracy']):>9} {live_acc:>9}")
    return lines


def _print_throughput(title: str, result: Any, summary: dict[str, Any]) -> None:
    setup = float(result.extra.get("timing", {}).get("setup_s", 0.0))
    no_setup = len(result.ticks) / max(1e-9, result.wall_s - setup)
    print(f"\n{title}: {summary['ticks']} fusion ticks in {summary['wall_s']:.2f} s wall = "
          f"{summary['ticks_per_s']:.1f} ticks/s ({no_setup:.1f} ticks/s without the "
          f"{setup:.2f} s set-up)")


def _same_ticks(a: Any, b: Any) -> bool:
    """The same ticks (latency, a wall-clock figure, aside) and the same sensor states."""
    import dataclasses

    def strip(result: Any) -> list[Any]:
        return [dataclasses.replace(t, latency_s=None) for t in result.ticks]

    return strip(a) == strip(b) and a.states == b.states


def _write_report(result: Any, scores: dict[str, Any], out: Path) -> None:
    from omnibind_ros.bag.report import write_report

    paths = write_report(result, scores, out)
    print(f"  report: {paths.get('markdown', out)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_safe_ros_env()  # live mode creates nodes; offline deserializes with rclpy
    from omnibind_ros.bag.live import evaluate_live
    from omnibind_ros.bag.offline import default_processes, evaluate_offline
    from omnibind_ros.bag.scoring import score
    from omnibind_ros.core.bundle import default_bundle_dir

    bundle = args.bundle or default_bundle_dir()
    if not (Path(bundle) / "bundle.yaml").is_file():
        print(f"bench_bag: no model bundle at {bundle} (build the default one with `make demo`, "
              "or pass --bundle)", file=sys.stderr)
        return 2
    print(f"bench_bag: {os.cpu_count()} CPUs, load average {_load()} at start")
    bag, record_s = bag_for(args)
    print(f"bag: {bag} ({args.duration:g} s, scenario {args.scenario}, seed {args.seed}; "
          + ("reused from the cache)" if record_s is None else f"recorded in {record_s:.1f} s)"))
    print(f"bundle: {bundle}")

    processes = default_processes() if args.processes is None else args.processes
    offline = evaluate_offline(bag, bundle=bundle, config=args.config, processes=processes)
    s_off = score(offline)
    off = _summary(offline, s_off)
    _print_throughput(f"offline, {processes} worker processes", offline, off)
    reference = None
    if not args.skip_reference and processes:
        reference = evaluate_offline(bag, bundle=bundle, config=args.config, processes=0)
        ref = _summary(reference, score(reference))
        _print_throughput("offline reference, one process", reference, ref)
        same = _same_ticks(offline, reference)
        print(f"  parallel vs reference: ticks {'identical' if same else 'DIFFER'}, "
              f"{off['wall_s'] / ref['wall_s']:.2f}x the wall time")
    print(f"  accuracy {_pct(off['accuracy'])} over {off['scored']} scored ticks, top-k "
          f"{_pct(off['top_k_accuracy'])}, answered {_pct(off['answered_fraction'])}")
    if args.report_dir:
        _write_report(offline, s_off, args.report_dir / "offline")

    out: dict[str, Any] = {"bag": str(bag), "duration_s": args.duration,
                           "scenario": args.scenario, "seed": args.seed, "bundle": str(bundle),
                           "cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg()),
                           "record_s": record_s, "offline": off, "processes": processes}
    if reference is not None:
        out["offline_reference"] = _summary(reference, score(reference))
        out["parallel_equals_reference"] = _same_ticks(offline, reference)
    verdicts = {"ticks_per_s": off["ticks_per_s"] is not None
                and off["ticks_per_s"] >= TICKS_PER_S_TARGET}
    if reference is not None:
        verdicts["parallel_equals_reference"] = out["parallel_equals_reference"]
    live_sum = None
    if not args.skip_live:
        live = evaluate_live(bag, rate=args.rate, bundle=bundle, config=args.config,
                             player_process=not args.in_process_player)
        s_live = score(live)
        live_sum = _summary(live, s_live)
        timing = live.extra.get("timing", {})
        live_sum["player"] = {**live.extra.get("player", {}), **timing}
        lag = timing.get("player_lag_s", {})
        where = "in-process" if args.in_process_player else "child-process"
        print(f"\nlive x{args.rate:g} ({where} player): {live_sum['ticks']} ticks in "
              f"{live_sum['wall_s']:.1f} s wall; accuracy {_pct(live_sum['accuracy'])} over "
              f"{live_sum['scored']} scored ticks, answered {_pct(live_sum['answered_fraction'])}")
        lat = live_sum["latency_s"]
        if lat.get("p50") is not None:
            print(f"  latency input->recognition p50 {1e3 * lat['p50']:.1f} ms, p95 "
                  f"{1e3 * lat['p95']:.1f} ms; player publish lag p50 "
                  f"{1e3 * lag.get('p50', 0):.2f} ms, p95 {1e3 * lag.get('p95', 0):.2f} ms, "
                  f"max {1e3 * lag.get('max', 0):.1f} ms "
                  f"({timing.get('late_messages', 0)} messages > 10 ms late)")
        if args.report_dir:
            _write_report(live, s_live, args.report_dir / "live")
        out["live"] = live_sum
        if off["accuracy"] is not None and live_sum["accuracy"] is not None:
            diff = 100 * (live_sum["accuracy"] - off["accuracy"])
            out["live_minus_offline_points"] = round(diff, 3)
            verdicts["live_vs_offline"] = abs(diff) <= ACCURACY_POINTS_TARGET
        else:
            verdicts["live_vs_offline"] = False

    print("\nper phase (accuracy):")
    print("\n".join(_phase_table(off, live_sum)))
    print("\ntargets:")
    print(f"  offline throughput {off['ticks_per_s']} ticks/s (>= {TICKS_PER_S_TARGET:g}): "
          f"{'PASS' if verdicts['ticks_per_s'] else 'FAIL'}")
    if "parallel_equals_reference" in verdicts:
        print(f"  parallel path == reference path: "
              f"{'PASS' if verdicts['parallel_equals_reference'] else 'FAIL'}")
    if "live_vs_offline" in verdicts:
        diff = out.get("live_minus_offline_points")
        text = "n/a" if diff is None else f"{diff:+.2f} points"
        print(f"  live - offline accuracy {text} (|diff| <= {ACCURACY_POINTS_TARGET:g}): "
              f"{'PASS' if verdicts['live_vs_offline'] else 'FAIL'}")
    out["verdicts"] = verdicts
    out["loadavg_end"] = list(os.getloadavg())
    print(f"load average {_load()} at the end")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0 if all(verdicts.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
