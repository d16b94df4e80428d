"""``bench_runtime.py naive``: ours vs the hand-written torch-eager node
(benchmarks/_naive_node.py), every sensor live: latency, rates and CPU of each.
"""
from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _bench_latency import measure_with_rephase
from _bench_session import Session, header, stage_summary

TARGET_NAIVE_P50_RATIO = 0.5  # ours' p50 <= this times the naive node's


def run_naive(args: argparse.Namespace, env: dict[str, str], workdir: Path, bundle: Path,
              bundle_desc: str) -> dict[str, Any]:
    """Ours and the naive node (benchmarks/_naive_node.py), each in its own process, every
    sensor live: one after the other on a fresh simulator each (default), or at once."""
    import _runtime_common as rc

    layout = ("at once, three processes: sim+receiver | ours | naive" if args.concurrent else
              "one after the other, each on a fresh simulator: sim+receiver | ours, then "
              "sim+receiver | naive")
    info = header(args, bundle_desc, layout)
    threads = args.torch_threads or "torch's default"
    audio = (f"at most {args.audio_encode_hz:g} Hz" if args.audio_encode_hz > 0
             else "on every 20 ms chunk")
    print(f"naive node: torch eager ({threads} threads), encode in every callback (audio "
          f"{audio}), rclpy.spin; fuses when an approximate time sync over the stamped "
          f"sensors emits (slop {args.slop} s, queue {args.queue_size}); {args.duration:g} s "
          f"measured per system after {args.warmup:g} s", flush=True)
    if args.concurrent:
        run = naive_run(args, env, workdir, bundle, ours=True, naive=True)
        runs = {rc.OURS: run, rc.NAIVE: run}
    else:
        runs = {rc.OURS: naive_run(args, env, workdir, bundle, ours=True),
                rc.NAIVE: naive_run(args, env, workdir, bundle, naive=True)}
    result = {"systems": {label: analyse_system(label, *run) for label, run in runs.items()}}
    ours, naive = result["systems"][rc.OURS], result["systems"][rc.NAIVE]

    def ratio(a: float, b: float) -> float:
        return a / b if b and b == b and a == a else float("nan")

    result["ratios_ours_over_naive"] = {
        "e2e_p50": ratio(ours["e2e_ms"]["p50"], naive["e2e_ms"]["p50"]),
        "e2e_p99": ratio(ours["e2e_ms"]["p99"], naive["e2e_ms"]["p99"]),
        "cpu": ratio(ours["cpu_mean_pct"], naive["cpu_mean_pct"])}
    result.update(info, slop_s=args.slop, queue_size=args.queue_size,
                  torch_threads=args.torch_threads, audio_encode_hz=args.audio_encode_hz,
                  duration_s=args.duration, concurrent=bool(args.concurrent),
                  loadavg_end=[round(x, 2) for x in os.getloadavg()])
    print_naive(result)
    return result


def naive_run(args: argparse.Namespace, env: dict[str, str], workdir: Path, bundle: Path, *,
              ours: bool = False, naive: bool = False
              ) -> tuple[Session, int, int, Any, list[float]]:
    """A fresh simulator in front of the chosen nodes; measure ``--duration`` s after
    ``--warmup`` s (ours' fusion timer restarted every ``--rephase`` s, as in latency).
    Also returns the 1-minute load average at the start and the end of the measurement."""
    session = Session(args, env, workdir, bundle, ours_in_process=False, ours=ours,
                      naive=naive)
    try:
        sampler = session.rc.ProcessSampler(session.pids)
        time.sleep(args.warmup)
        sampler.start()
        start, load = time.time_ns(), [round(os.getloadavg()[0], 2)]
        if ours:
            measure_with_rephase(session, args, start)
        else:
            time.sleep(args.duration)
        end = time.time_ns()
        load.append(round(os.getloadavg()[0], 2))
        sampler.stop()
    finally:
        session.close()
    return session, start, end, sampler, load


def analyse_system(label: str, session: Session, start: int, end: int, sampler: Any,
                   load: list[float]) -> dict[str, Any]:
    """End-to-end latency, rates and CPU of one system under test (``label``)."""
    rc = session.rc
    recs = rc.records_between(session.records(label), start, end)
    answered = [r for r in recs if r.answered]
    seconds = (end - start) / 1e9
    stats = session.stats.get(label, {})
    stages = stats.get("stages", {})
    sensors = {}
    for spec in rc.sensor_specs():
        if not spec.has_header:
            continue
        embedded = rc.window_values(stages.get(f"{spec.name}/stamp_to_embedding", []),
                                    start, end)
        sensors[spec.name] = {
            "modality": spec.modality, "sim_rate_hz": spec.sim_rate_hz,
            "encoded_per_s": len(embedded) / seconds,
            "stamp_to_embedding_ms": rc.summary(embedded),
            "preprocess_ms": stage_summary(stages, f"{spec.modality}/preprocess", start, end),
            "encode_ms": stage_summary(stages, f"{spec.modality}/encode", start, end)}
    skew, pub_to_recv = [], []
    for r in answered:  # the simulator's share: stamp -> publish of the newest input
        pub = session.log.publish_time(r.newest, r.stamp_ns)
        if pub is not None:
            skew.append((pub - r.stamp_ns) / 1e6)
            pub_to_recv.append((r.recv_ns - pub) / 1e6)
    process = f"{label} node"
    return {
        "duration_s": seconds, "loadavg_1min_start_end": load,
        "recognitions": len(recs), "answered": len(answered),
        "recognitions_per_s": len(recs) / seconds, "answered_per_s": len(answered) / seconds,
        "mean_sensors_fused": sum(len(r.sensors) for r in answered) / max(1, len(answered)),
        "e2e_ms": rc.summary([(r.recv_ns - r.stamp_ns) / 1e6 for r in answered]),
        "newest_stamp_to_publish_ms": rc.summary(skew),
        "newest_publish_to_receive_ms": rc.summary(pub_to_recv),
        "newest_sensor": dict(Counter(r.newest for r in answered).most_common()),
        "cpu_mean_pct": sampler.mean_cpu(process) if process in sampler.samples
        else float("nan"),
        "cpu_driver_pct": next((sampler.mean_cpu(n) for n in sampler.samples
                                if n.startswith("driver")), float("nan")),
        "encoded_per_s": sum(s["encoded_per_s"] for s in sensors.values()),
        "sensors": sensors, "extra": stats.get("extra", {}),
        "sim_dropped": {k.split("/")[1]: v for k, v in session.sim.stats.items()
                        if k.startswith("dropped")}}


def print_naive(res: dict[str, Any]) -> None:
    from _runtime_common import fmt, print_table, verdict

    systems, ratios = res["systems"], res["ratios_ours_over_naive"]
    names = {"ours": "ours (omnibind_perception, ORT)",
             "naive": f"naive (torch eager, {systems['naive']['extra'].get('torch_threads', '?')}"
                      " threads)"}
    rows = [[names[label], s["answered"], s["recognitions_per_s"], s["answered_per_s"],
             s["e2e_ms"]["p50"], s["e2e_ms"]["p90"], s["e2e_ms"]["p99"], s["e2e_ms"]["max"],
             s["newest_stamp_to_publish_ms"]["p50"], s["newest_publish_to_receive_ms"]["p50"],
             s["cpu_mean_pct"], s["encoded_per_s"], s["mean_sensors_fused"]]
            for label, s in systems.items()]
    rows.append(["ratio ours / naive", "", "", "", ratios["e2e_p50"], "", ratios["e2e_p99"],
                 "", "", "", ratios["cpu"], "", ""])
    print_table(f"End-to-end latency (receive - header.stamp = newest input stamp), ms, over "
                f"{res['duration_s']:g} s each; CPU = mean % of one core of the system's own "
                "process; stamp>pub / pub>recv: p50 of the newest input's stamp -> simulator "
                "publish -> received", ["system", "n", "rec/s", "answered/s", "p50", "p90",
                                        "p99", "max", "stamp>pub", "pub>recv", "CPU %",
                                        "enc/s", "sensors"], rows)
    ours, naive = systems["ours"]["sensors"], systems["naive"]["sensors"]
    rows = [[f"{name} ({s['modality']})", s["sim_rate_hz"], s["encoded_per_s"],
             naive[name]["encoded_per_s"], s["preprocess_ms"]["p50"],
             naive[name]["preprocess_ms"]["p50"], s["encode_ms"]["p50"],
             naive[name]["encode_ms"]["p50"], s["stamp_to_embedding_ms"]["p50"],
             naive[name]["stamp_to_embedding_ms"]["p50"]] for name, s in ours.items()]
    print_table("Per sensor (p50, ms; rates /s)", [
        "sensor", "sim Hz", "ours enc/s", "naive enc/s", "ours prep", "naive prep",
        "ours encode", "naive encode", "ours s>emb", "naive s>emb"], rows)
    for label, s in systems.items():
        print(f"  {label}: 1-min load average {s['loadavg_1min_start_end'][0]} -> "
              f"{s['loadavg_1min_start_end'][1]} over its measurement; newest input "
              f"{s['newest_sensor']}; driver (sim+receiver) CPU "
              f"{fmt(s['cpu_driver_pct'], 0)}%; simulator messages dropped as late: "
              f"{s['sim_dropped'] or 'none'}")
    extra = systems["naive"]["extra"]
    if extra:
        print(f"  naive: torch threads {extra.get('torch_threads')} (inter-op "
              f"{extra.get('torch_interop_threads')}), sets emitted {extra.get('emitted')}, "
              f"errors {extra.get('errors')}")
    print(f"  load average {res['loadavg_start']} at the start, {res['loadavg_end']} at the end")
    p50, naive_p50 = systems["ours"]["e2e_ms"]["p50"], systems["naive"]["e2e_ms"]["p50"]
    ok = ratios["e2e_p50"] <= TARGET_NAIVE_P50_RATIO
    print(f"\nRESULT naive: ours p50 {p50:.1f} ms vs naive p50 {naive_p50:.1f} ms = "
          f"{fmt(ratios['e2e_p50'], 2)}x (target <= {TARGET_NAIVE_P50_RATIO:g}x: "
          f"{verdict(ok)}); p99 {fmt(ratios['e2e_p99'], 2)}x, CPU {fmt(ratios['cpu'], 2)}x",
          flush=True)
