"""``bench_runtime.py latency``: header stamp -> Recognition received, p50/p99, and where the
time goes (per stage, per sensor), with the node's fusion timer restarted to average its phase.
"""
from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _bench_session import Session, fusion_param, header, stage_summary

TARGET_P50_MS, TARGET_P99_MS = 30.0, 80.0


def run_latency(args: argparse.Namespace, env: dict[str, str], workdir: Path, bundle: Path,
                bundle_desc: str) -> dict[str, Any]:
    layout = ("two processes: sim+receiver | perception" if args.two_process
              else "one process: sim + perception + receiver")
    info = header(args, bundle_desc, layout)
    session = Session(args, env, workdir, bundle, ours_in_process=not args.two_process)
    rc = session.rc
    try:
        sampler = rc.ProcessSampler(session.pids)
        time.sleep(args.warmup)
        sampler.start()
        start = time.time_ns()
        rephases = measure_with_rephase(session, args, start)
        end = time.time_ns()
        sampler.stop()
    finally:
        session.close()
    result = analyse_latency(session, start, end, rephases)
    result["fusion_timer_restarts"] = len(rephases)
    result.update(info, cpu_mean_pct={n: sampler.mean_cpu(n) for n in sampler.samples},
                  sim_stats=dict(session.sim.stats), loadavg_end=list(os.getloadavg()))
    print_latency(result, session, start, end)
    return result


def measure_with_rephase(session: Session, args: argparse.Namespace, start: int) -> list[int]:
    """Sleep through the measurement; every ``--rephase`` s set fusion.rate_hz to its own value,
    which restarts the node's fusion timer at a new phase against the sensors' clocks. Returns
    the restart times (ns)."""
    rate = float(fusion_param(args, "fusion.rate_hz"))
    end, restarts = start + round(args.duration * 1e9), []
    while True:
        left = (end - time.time_ns()) / 1e9
        if left <= 0:
            return restarts
        time.sleep(min(left, args.rephase) if args.rephase > 0 else left)
        if args.rephase > 0 and time.time_ns() < end and rate > 0:
            asked = time.time_ns()
            if session.set_ours_params([session.rc.Parameter("fusion.rate_hz", value=rate)]):
                restarts.append(asked)


def _embedded_at(stages: dict[str, list], sensor: str) -> dict[int, tuple[int, int]]:
    """``{stamp ms: (stamp ns, embedding stored ns)}`` from the stamp_to_embedding samples."""
    out = {}
    for t, ms in stages.get(f"{sensor}/stamp_to_embedding", []):
        stamp = t - round(ms * 1e6)
        out[round(stamp / 1e6)] = (stamp, t)
    return out


def _lookup(table: dict[int, tuple[int, int]], stamp: int) -> int | None:
    key = round(stamp / 1e6)
    hits = [table[k] for k in (key - 1, key, key + 1) if k in table]
    hits = [h for h in hits if abs(h[0] - stamp) < 200_000]
    return hits[0][1] if hits else None


def tick_intervals(recs: Sequence[Any], restarts: Sequence[int]) -> list[float]:
    """ms between consecutive fusion ticks (an unanswered tick's stamp is its tick time),
    leaving out the intervals that contain a timer restart."""
    ticks = [r.tick_ns if r.answered else r.stamp_ns for r in recs]
    return [(b - a) / 1e6 for a, b in zip(ticks, ticks[1:], strict=False)
            if not any(a <= t <= b for t in restarts)]


def analyse_latency(session: Session, start: int, end: int,
                    restarts: Sequence[int] = ()) -> dict[str, Any]:
    rc = session.rc
    recs = rc.records_between(session.records(), start, end)
    answered = [r for r in recs if r.answered]
    e2e = [(r.recv_ns - r.stamp_ns) / 1e6 for r in answered]
    to_tick = [(r.tick_ns - r.stamp_ns) / 1e6 for r in answered]
    tick_to_recv = [(r.recv_ns - r.tick_ns) / 1e6 for r in answered]
    skew, pub_to_recv, pub_to_emb, emb_to_tick = [], [], [], []
    stages = session.stages()
    embedded = {s.name: _embedded_at(stages, s.name) for s in rc.sensor_specs()}
    for r in answered:
        pub = session.log.publish_time(r.newest, r.stamp_ns)
        emb = _lookup(embedded.get(r.newest, {}), r.stamp_ns)
        if pub is not None:
            skew.append((pub - r.stamp_ns) / 1e6)
            pub_to_recv.append((r.recv_ns - pub) / 1e6)
        if pub is not None and emb is not None:
            pub_to_emb.append((emb - pub) / 1e6)
            emb_to_tick.append((r.tick_ns - emb) / 1e6)
    seconds = (end - start) / 1e9
    return {
        "duration_s": seconds, "recognitions": len(recs), "answered": len(answered),
        "answered_per_s": len(answered) / seconds,
        "mean_sensors_fused": sum(len(r.sensors) for r in answered) / max(1, len(answered)),
        "e2e_ms": rc.summary(e2e),
        "newest_stamp_to_tick_ms": rc.summary(to_tick),
        "tick_to_receive_ms": rc.summary(tick_to_recv),
        "newest_stamp_to_publish_ms": rc.summary(skew),
        "newest_publish_to_embedding_ms": rc.summary(pub_to_emb),
        "newest_embedding_to_tick_ms": rc.summary(emb_to_tick),
        "newest_publish_to_receive_ms": rc.summary(pub_to_recv),
        "newest_sensor": dict(Counter(r.newest for r in answered).most_common()),
        "sensors": sensor_stages(session, start, end),
        "fusion_tick_ms": stage_summary(session.stages(), "fusion/tick", start, end),
        "fusion_tick_interval_ms": rc.summary(tick_intervals(recs, restarts)),
    }


def sensor_stages(session: Session, start: int, end: int) -> dict[str, dict[str, Any]]:
    rc, stages = session.rc, session.stages()
    seconds = (end - start) / 1e9
    out = {}
    for spec in rc.sensor_specs():
        pubs = [(p - s) / 1e6 for s, p in session.log.publications(spec.name) if start <= p <= end]
        embedded = rc.window_values(stages.get(f"{spec.name}/stamp_to_embedding", []), start, end)
        out[spec.name] = {
            "modality": spec.modality, "sim_rate_hz": spec.sim_rate_hz,
            "published_per_s": len(pubs) / seconds, "encoded_per_s": len(embedded) / seconds,
            "stamp_to_publish": rc.summary(pubs),
            "stamp_to_callback": stage_summary(stages, f"{spec.name}/stamp_to_callback",
                                               start, end),
            "queue_wait": stage_summary(stages, f"{spec.name}/queue_wait", start, end),
            "preprocess": stage_summary(stages, f"{spec.modality}/preprocess", start, end),
            "encode": stage_summary(stages, f"{spec.modality}/encode", start, end),
            "stamp_to_embedding": rc.summary(embedded),
        }
    return out


def print_latency(res: dict[str, Any], session: Session, start: int, end: int) -> None:
    rc = session.rc
    rows = [[name] + ([s["n"], s["p50"], s["p90"], s["p99"], s["max"]] if s else [""] * 5)
            for name, s in [
        ("end-to-end: receive - header.stamp", res["e2e_ms"]),
        ("  = newest input stamp -> fusion tick", res["newest_stamp_to_tick_ms"]),
        ("  + fusion tick -> received", res["tick_to_receive_ms"]),
        ("newest input, by stage:", None),
        ("  stamp -> sim publish", res["newest_stamp_to_publish_ms"]),
        ("  sim publish -> embedding stored", res["newest_publish_to_embedding_ms"]),
        ("  embedding stored -> fusion tick", res["newest_embedding_to_tick_ms"]),
        ("  fusion tick -> received", res["tick_to_receive_ms"]),
        ("publish-referenced: publish -> recv", res["newest_publish_to_receive_ms"]),
        ("fusion tick duration (in node)", res["fusion_tick_ms"]),
        ("fusion tick interval (timer)", res["fusion_tick_interval_ms"])]]
    rc.print_table(f"Latency over {res['duration_s']:.0f} s ({res['answered']} answered of "
                   f"{res['recognitions']} recognitions, {res['answered_per_s']:.1f}/s, "
                   f"{res['mean_sensors_fused']:.1f} sensors fused on average), ms",
                   ["stage", "n", "p50", "p90", "p99", "max"], rows)
    print(f"  newest input was: {res['newest_sensor']}; fusion timer restarted "
          f"{res['fusion_timer_restarts']} times to average over its phase")
    rows = []
    for name, s in res["sensors"].items():
        rows.append([f"{name} ({s['modality']})", s["sim_rate_hz"], s["published_per_s"],
                     s["encoded_per_s"], s["stamp_to_publish"]["p50"],
                     s["stamp_to_callback"]["p50"], s["queue_wait"]["p50"],
                     s["preprocess"]["p50"], s["encode"]["p50"], s["encode"]["p99"],
                     s["stamp_to_embedding"]["p50"], s["stamp_to_embedding"]["p99"]])
    rc.print_table("Per sensor (p50 unless noted), ms; rates /s", [
        "sensor", "sim Hz", "pub/s", "enc/s", "stamp>pub", "stamp>cb", "queue", "prep",
        "encode", "enc p99", "stamp>emb", "s>emb p99"], rows)
    for name, cpu in res["cpu_mean_pct"].items():
        print(f"  CPU {name}: {cpu:.0f}% of one core (mean)")
    dropped = {k.split("/")[1]: v for k, v in res["sim_stats"].items() if k.startswith("dropped")}
    print(f"  simulator messages dropped as late (whole run): {dropped or 'none'}")
    e2e = res["e2e_ms"]
    print(f"\nRESULT latency ({res['layout']}): p50 {e2e['p50']:.1f} ms (target <= "
          f"{TARGET_P50_MS:.0f}: {rc.verdict(e2e['p50'] <= TARGET_P50_MS)}), p99 "
          f"{e2e['p99']:.1f} ms (target <= {TARGET_P99_MS:.0f}: "
          f"{rc.verdict(e2e['p99'] <= TARGET_P99_MS)})", flush=True)
