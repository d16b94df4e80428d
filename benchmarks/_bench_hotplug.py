"""``bench_runtime.py hotplug``: unplug -> first Recognition without the sensor, replug -> first
with it, per sensor over a number of cycles.
"""
from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _bench_session import Session, header, sleep_until, stage_summary

TARGET_EXCLUDE_PERIODS = 3.0


def run_hotplug(args: argparse.Namespace, env: dict[str, str], workdir: Path, bundle: Path,
                bundle_desc: str) -> dict[str, Any]:
    layout = ("two processes: sim+receiver | perception" if args.two_process
              else "one process: sim + perception + receiver")
    info = header(args, bundle_desc, layout)
    names = [n for n in args.sensors.split(",") if n]
    session = Session(args, env, workdir, bundle, ours_in_process=not args.two_process)
    events: list[dict[str, Any]] = []
    rng = random.Random(0)
    try:
        time.sleep(args.warmup)
        for cycle in range(args.cycles):
            for name in names:
                events.append(hotplug_cycle(session, name, cycle, args.hold, rng))
    finally:
        session.close()
    result = analyse_hotplug(session, events)
    result.update(info, loadavg_end=list(os.getloadavg()))
    print_hotplug(result, session)
    return result


def _included(session: Session, name: str, since: int) -> bool | None:
    recs = [r for r in session.records() if r.recv_ns > since]
    return None if not recs else name in recs[-1].sensors


def _command_time(session: Session, name: str, enabled: bool, since: int) -> int | None:
    for t, sensor, key, value in session.log.commands:
        if t >= since and sensor == name and key == "enabled" and value == enabled:
            return t
    return None


def hotplug_cycle(session: Session, name: str, cycle: int, hold_s: float,
                  rng: random.Random) -> dict[str, Any]:
    """Unplug ``name``, wait until it leaves fusion, replug, wait until it is back.

    Each command waits a random 0-0.5 s first: the waits end on a received Recognition, so
    without it every command would come at the same phase of the fusion timer and the
    reaction times would be biased by that phase instead of spread over it."""
    event: dict[str, Any] = {"sensor": name, "cycle": cycle}
    now = time.time_ns()
    if not sleep_until(lambda: bool(_included(session, name, now)), 10.0):
        event["error"] = "not included before the unplug"
        return event
    for enabled in (False, True):
        time.sleep(rng.uniform(0.0, 0.5))
        asked = time.time_ns()
        session.control.set_enabled(name, enabled)
        sleep_until(lambda e=enabled, a=asked: _command_time(session, name, e, a) is not None,
                    5.0)
        cmd = _command_time(session, name, enabled, asked)
        if cmd is None:
            event["error"] = "simulator did not apply the command"
            return event
        event["replug_ns" if enabled else "unplug_ns"] = cmd
        if not sleep_until(lambda c=cmd, e=enabled: _included(session, name, c) is e, 10.0):
            event["error"] = f"not {'included' if enabled else 'excluded'} within 10 s"
        time.sleep(hold_s)
    return event


def _first(records: Sequence[Any], since: int, pred: Callable[[Any], bool]) -> Any | None:
    return next((r for r in records if r.recv_ns > since and pred(r)), None)


def analyse_hotplug(session: Session, events: list[dict[str, Any]]) -> dict[str, Any]:
    rc = session.rc
    specs = {s.name: s for s in rc.sensor_specs()}
    stages, recs = session.stages(), session.records()
    for ev in events:
        spec, name = specs[ev["sensor"]], ev["sensor"]
        pubs = [p for _, p in session.log.publications(name)]
        if "unplug_ns" in ev:
            t = ev["unplug_ns"]
            out = _first(recs, t, lambda r, n=name: n not in r.sensors)
            last_pub = max((p for p in pubs if p <= t), default=None)
            if out is not None:
                ev["exclude_ms"] = (out.recv_ns - t) / 1e6
                ev["exclude_periods"] = ev["exclude_ms"] / spec.period_ms
                if last_pub is not None:
                    ev["exclude_from_last_msg_ms"] = (out.recv_ns - last_pub) / 1e6
        if "replug_ns" in ev:
            t = ev["replug_ns"]
            back = _first(recs, t, lambda r, n=name: n in r.sensors)
            first_pub = min((p for p in pubs if p > t), default=None)
            if back is not None:
                ev["include_ms"] = (back.recv_ns - t) / 1e6
                ev["include_periods"] = ev["include_ms"] / spec.period_ms
            if first_pub is not None:
                ev["replug_to_first_msg_ms"] = (first_pub - t) / 1e6
            for stage, key in (("stamp_to_callback", "replug_to_first_callback_ms"),
                               ("stamp_to_embedding", "replug_to_first_embedding_ms")):
                seen = min((ts for ts, _ in stages.get(f"{name}/{stage}", []) if ts > t),
                           default=None)
                if seen is not None:
                    ev[key] = (seen - t) / 1e6
    per_sensor = {}
    for name in dict.fromkeys(ev["sensor"] for ev in events):
        spec, evs = specs[name], [e for e in events if e["sensor"] == name]
        encode = (stage_summary(stages, f"{spec.modality}/preprocess", 0, 2**63)["p50"]
                  + stage_summary(stages, f"{spec.modality}/encode", 0, 2**63)["p50"])
        per_sensor[name] = {
            "period_ms": spec.period_ms, "sim_period_ms": 1e3 / spec.sim_rate_hz,
            "stale_after_periods": spec.stale_after,
            "encode_ms": encode,
            "include_target_ms": spec.period_ms + encode,
            **{k: rc.summary([e[k] for e in evs if k in e]) for k in (
                "exclude_ms", "exclude_periods", "exclude_from_last_msg_ms", "include_ms",
                "include_periods", "replug_to_first_msg_ms", "replug_to_first_callback_ms",
                "replug_to_first_embedding_ms")},
            "errors": [e["error"] for e in evs if "error" in e]}
    return {"events": events, "per_sensor": per_sensor}


def print_hotplug(res: dict[str, Any], session: Session) -> None:
    rc = session.rc
    rows, misses = [], []
    for name, s in res["per_sensor"].items():
        ex, inc = s["exclude_ms"], s["include_ms"]
        ex_ok = ex["max"] <= TARGET_EXCLUDE_PERIODS * s["period_ms"]
        in_ok = inc["max"] <= s["include_target_ms"]
        rows.append([name, s["period_ms"], s["sim_period_ms"], s["stale_after_periods"],
                     ex["n"], ex["p50"], ex["max"],
                     s["exclude_periods"]["max"], s["exclude_from_last_msg_ms"]["p50"],
                     rc.verdict(ex_ok), inc["p50"], inc["max"], s["include_periods"]["max"],
                     s["replug_to_first_msg_ms"]["p50"], s["replug_to_first_callback_ms"]["p50"],
                     s["replug_to_first_embedding_ms"]["p50"], s["include_target_ms"],
                     rc.verdict(in_ok)])
        if not (ex_ok and in_ok) or s["errors"]:
            misses.append(name + (f" ({'; '.join(s['errors'])})" if s["errors"] else ""))
    rc.print_table(
        "Hot-plug reaction (ms; periods = the node's expected_rate_hz period; worst case "
        "judged; stale = the node's stale_after, periods)",
        ["sensor", "period", "sim per", "stale", "n", "unplug>out p50", "max", "max per",
                    "last msg>out", "<=3 per", "replug>in p50", "max", "max per",
                    "replug>pub", ">node cb", ">emb", "target", "<=1 per+enc"], rows)
    print(f"\nRESULT hotplug: {len(res['per_sensor']) - len(misses)} of "
          f"{len(res['per_sensor'])} sensors meet both targets in every cycle"
          + (f"; misses: {', '.join(misses)}" if misses else ""), flush=True)
