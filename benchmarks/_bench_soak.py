"""``bench_runtime.py soak``: CPU% and RSS of the perception process over minutes, and the RSS
slope.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from _bench_session import Session, header

RSS_SLOPE_TOLERANCE_MB_MIN = 1.0


def run_soak(args: argparse.Namespace, env: dict[str, str], workdir: Path, bundle: Path,
             bundle_desc: str) -> dict[str, Any]:
    info = header(args, bundle_desc, "two processes: sim+receiver | perception (measured)")
    print(f"scenario: {args.scenario or 'none'}; {args.minutes:g} min, sampled every 1 s",
          flush=True)
    # no stage instrumentation: its sample lists would grow the measured RSS
    session = Session(args, env, workdir, bundle, ours_in_process=False,
                      scenario=args.scenario, instrument=False)
    try:
        sampler = session.rc.ProcessSampler(session.pids)
        sampler.start()
        time.sleep(args.minutes * 60.0)
        end = time.time_ns()
        sampler.stop()
    finally:
        session.close()
    result = analyse_soak(session, sampler, args.rss_warmup, end)
    result.update(info, scenario=args.scenario, loadavg_end=list(os.getloadavg()))
    print_soak(result, session)
    return result


def analyse_soak(session: Session, sampler: Any, warmup_s: float, end: int) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {"processes": {}}
    for name, samples in sampler.samples.items():
        t = np.array([s[0] for s in samples])
        cpu, rss = np.array([s[1] for s in samples]), np.array([s[2] for s in samples])
        steady = t >= warmup_s
        slope = (float(np.polyfit(t[steady], rss[steady], 1)[0] * 60.0)
                 if steady.sum() >= 3 else float("nan"))
        slope_all = float(np.polyfit(t, rss, 1)[0] * 60.0) if t.size >= 3 else float("nan")
        half = t >= t[len(t) // 2] if t.size else t.astype(bool)
        slope_half = (float(np.polyfit(t[half], rss[half], 1)[0] * 60.0)
                      if half.sum() >= 3 else float("nan"))
        out["processes"][name] = {
            "samples": len(samples), "rss_start_mb": float(rss[0]),
            "rss_after_warmup_mb": float(rss[steady][0]) if steady.any() else float("nan"),
            "rss_end_mb": float(rss[-1]), "rss_max_mb": float(rss.max()),
            "rss_slope_mb_per_min": slope, "rss_slope_all_mb_per_min": slope_all,
            "rss_slope_last_half_mb_per_min": slope_half,
            "rss_growth_last_half_mb": float(rss[-1] - rss[len(rss) // 2]) if len(rss) else 0.0,
            "cpu_mean_pct": float(cpu.mean()),
            "cpu_max_pct": float(cpu.max()),
            "series": [[round(a, 1), round(b, 1), round(c, 2)] for a, b, c in samples]}
    recs = session.rc.records_between(session.records(), session.t0_ns, end)
    secs = (end - session.t0_ns) / 1e9
    out["recognitions_per_s"] = len(recs) / secs
    out["answered_per_s"] = sum(r.answered for r in recs) / secs
    out["warmup_s"] = warmup_s
    return out


def print_soak(res: dict[str, Any], session: Session) -> None:
    rc = session.rc
    rows = []
    for name, p in res["processes"].items():
        rows.append([name, p["samples"], p["rss_start_mb"], p["rss_after_warmup_mb"],
                     p["rss_end_mb"], p["rss_max_mb"], p["rss_slope_all_mb_per_min"],
                     p["rss_slope_mb_per_min"], p["rss_slope_last_half_mb_per_min"],
                     p["cpu_mean_pct"], p["cpu_max_pct"]])
    rc.print_table(f"Soak (RSS MB; slopes MB/min by least squares over the whole run, after "
                   f"{res['warmup_s']:g} s, over the last half; CPU % of one core)",
                   ["process", "n", "RSS start", "after warm", "end", "max", "slope all",
                    "after warm", "last half", "CPU mean", "CPU max"], rows)
    traced = session.stats.get("ours", {}).get("extra", {}).get("tracemalloc")
    if traced:
        print(f"\ntracemalloc (Python heap of the perception process): "
              f"{traced['traced_mb_warm']:.1f} MB after warm-up -> {traced['traced_mb_end']:.1f}"
              " MB at the end; biggest growth by allocation site:")
        for site, kib, count in traced["top"][:12]:
            print(f"  {kib:+9.1f} KiB {count:+7d} blocks  {site}")
    ours = next(p for n, p in res["processes"].items() if n.startswith("ours"))
    series = ours["series"]
    rows = [s for i, s in enumerate(series) if i % 10 == 0 or i == len(series) - 1]
    rc.print_table("perception process every 10 s", ["t (s)", "CPU %", "RSS MB"], rows)
    slope = ours["rss_slope_last_half_mb_per_min"]
    print(f"\nRESULT soak: perception RSS {ours['rss_start_mb']:.1f} -> {ours['rss_end_mb']:.1f} "
          f"MB (max {ours['rss_max_mb']:.1f}); slope after {res['warmup_s']:g} s "
          f"{ours['rss_slope_mb_per_min']:+.2f} MB/min, over the last half {slope:+.2f} MB/min "
          f"({ours['rss_growth_last_half_mb']:+.1f} MB; flat if <= "
          f"{RSS_SLOPE_TOLERANCE_MB_MIN:g} MB/min: "
          f"{rc.verdict(slope <= RSS_SLOPE_TOLERANCE_MB_MIN)}); "
          f"CPU mean {ours['cpu_mean_pct']:.0f}% of one core; "
          f"{res['answered_per_s']:.1f} answered recognitions/s", flush=True)
