#!/usr/bin/env python3
"""Runtime benchmarks of the perception node with the simulated sensors.

Subcommands (each prints tables and a line against its target; ``--json OUT`` saves results)::

    latency [--two-process]   sensor header stamp -> Recognition received, p50/p99, + stages
    hotplug [--two-process]   unplug -> first Recognition without the sensor, replug -> with it
    baseline                  ours vs an ApproximateTimeSynchronizer node, same dropout scenario
    naive                     ours vs a hand-written torch-eager node, all sensors live
    soak [--minutes 2]        CPU% and RSS of the perception process, RSS slope

    python benchmarks/bench_runtime.py latency --tiny --duration 10
    python benchmarks/bench_runtime.py latency --two-process       # default bundle if present

Bundle: ``--bundle PATH``, ``--tiny`` (a random tiny bundle built in a temp dir), or by default
``<cache>/bundles/default`` when it exists, else the tiny one with a warning. Every process that
creates a ROS node runs with loopback-only discovery and a ROS_DOMAIN_ID reserved for this run
(``omnibind_ros.ros.env``), set here before rclpy is imported and passed to the children.
See benchmarks/README.md for what each number means.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "training", REPO / "benchmarks"):
    if str(_path) not in sys.path:  # runs from a checkout without pip install -e
        sys.path.insert(0, str(_path))

from omnibind_ros.ros.env import ensure_safe_ros_env, reserve_domain_id  # noqa: E402 (no rclpy)

TARGET_P50_MS, TARGET_P99_MS = 30.0, 80.0
TARGET_EXCLUDE_PERIODS = 3.0
TARGET_ANSWERED = 0.95
TARGET_NAIVE_P50_RATIO = 0.5  # ours' p50 <= this times the naive node's
RSS_SLOPE_TOLERANCE_MB_MIN = 1.0
SCRIPT = Path(__file__).resolve()


# -- arguments -----------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    src = common.add_mutually_exclusive_group()
    src.add_argument("--bundle", type=Path, help="model bundle (default: <cache>/bundles/default)")
    src.add_argument("--tiny", action="store_true", help="use a random tiny bundle (quick runs)")
    common.add_argument("--two-process", action="store_true",
                        help="perception node in a process of its own (latency, hotplug)")
    common.add_argument("--executor", choices=("multi", "rclpy-multi", "single"), default="multi",
                        help="executor of the perception node; multi = PoolSafeExecutor(4) as "
                             "omnibind_perception's main() (default); rclpy-multi = rclpy's "
                             "MultiThreadedExecutor(4), for comparison")
    common.add_argument("--warmup", type=float, default=5.0, help="s before measuring")
    common.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="perception parameter override, e.g. fusion.rate_hz=0")
    common.add_argument("--node-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment variable of the perception child process "
                             "(two-process layouts), e.g. OPENBLAS_NUM_THREADS=1")
    common.add_argument("--large-messages", action="store_true",
                        help="load the Fast DDS shared-memory profile (launch large_messages)")
    common.add_argument("--json", type=Path, help="also write the results as JSON here")
    common.add_argument("--keep-logs", action="store_true", help="keep the work dir and logs")
    common.add_argument("--node-log-level", default="warn",
                        help="log level of in-process nodes (info shows sensor state changes)")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("latency", parents=[common], help="end-to-end latency")
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    p.add_argument("--rephase", type=float, default=5.0,
                   help="restart the node's fusion timer every this many s (0 = never), so "
                        "the run averages over its phase against the sensors' (see README)")
    p = sub.add_parser("hotplug", parents=[common], help="hot-plug reaction times")
    p.add_argument("--cycles", type=int, default=3, help="unplug/replug cycles per sensor")
    p.add_argument("--sensors", default="camera,thermal,event_camera,tactile,microphone,lidar",
                   help="comma-separated sensors to cycle")
    p.add_argument("--hold", type=float, default=1.5, help="s unplugged / replugged per cycle")
    p = sub.add_parser("baseline", parents=[common], help="ours vs approximate-time-sync node")
    p.add_argument("--scenario", default="hotplug_demo.yaml", help="scenario file (loops)")
    p.add_argument("--duration", type=float, default=None,
                   help="s of scenario (default: one cycle of the scenario)")
    p.add_argument("--slop", type=float, default=0.1, help="sync slop, s (message_filters')")
    p.add_argument("--queue-size", type=int, default=10, help="sync queue size per topic")
    p.add_argument("--concurrent", action="store_true",
                   help="run both nodes at once (they then compete for the CPU) instead of "
                        "one after the other on the same seeded stream")
    p = sub.add_parser("naive", parents=[common],
                       help="ours vs a hand-written torch-eager node (benchmarks/_naive_node.py)")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds per system")
    p.add_argument("--rephase", type=float, default=5.0,
                   help="restart ours' fusion timer every this many s (as latency; 0 = never)")
    p.add_argument("--slop", type=float, default=0.1, help="the naive node's sync slop, s")
    p.add_argument("--queue-size", type=int, default=10, help="its sync queue size per topic")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="the naive node's torch.set_num_threads; 0 = torch's default (default)")
    p.add_argument("--audio-encode-hz", type=float, default=0.0,
                   help="the naive node encodes the audio window at most this often; 0 = on "
                        "every 20 ms chunk (default)")
    p.add_argument("--concurrent", action="store_true",
                   help="run both nodes at once on one simulator (they then compete for the "
                        "CPU) instead of one after the other")
    p = sub.add_parser("soak", parents=[common], help="CPU and RSS over minutes")
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--rss-warmup", type=float, default=30.0,
                   help="s after start left out of the RSS slope (arenas and caches fill)")
    p.add_argument("--tracemalloc", action="store_true",
                   help="diagnosis: trace Python allocations in the perception process and "
                        "print the sites that grew after --rss-warmup (slows the node)")
    p.add_argument("--scenario", default="hotplug_demo.yaml",
                   help="scenario during the soak ('' = all sensors stay plugged)")
    p = sub.add_parser("_child", help=argparse.SUPPRESS)
    p.add_argument("--kind", choices=("ours", "baseline", "naive"), required=True)
    p.add_argument("--bundle", required=True)
    p.add_argument("--stats", type=Path, required=True)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--slop", type=float, default=0.1)
    p.add_argument("--queue-size", type=int, default=10)
    p.add_argument("--executor", default="multi")
    p.add_argument("--no-instrument", action="store_true")
    p.add_argument("--tracemalloc-after", type=float, default=0.0)
    p.add_argument("--torch-threads", type=int, default=0)
    p.add_argument("--audio-encode-hz", type=float, default=0.0)
    return parser.parse_args(argv)


# -- environment and bundle ----------------------------------------------------------------------

def setup_env(args: argparse.Namespace, workdir: Path | None) -> dict[str, str]:
    """Loopback-only discovery, own domain and log dir: before rclpy is imported anywhere."""
    if args.command == "_child":  # inherits the parent's safe environment; re-check it
        ensure_safe_ros_env()
    else:
        ensure_safe_ros_env(domain_id=reserve_domain_id(), log_dir=workdir / "ros_log",
                            large_messages=args.large_messages)
    return dict(os.environ)


def resolve_bundle(args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    from omnibind_ros.core.bundle import default_bundle_dir

    if args.bundle is not None:
        return args.bundle.expanduser(), str(args.bundle)
    default = default_bundle_dir()
    if not args.tiny:
        if (default / "bundle.yaml").is_file():
            return default, f"default ({default})"
        print(f"WARNING: no default bundle at {default} (bundle.yaml missing): falling back to "
              "--tiny. These numbers are NOT comparable with the targets, which are for the "
              "default bundle.", flush=True)
    out = workdir / "tiny_bundle"
    # in a subprocess: torch stays out of the benchmark's own process (one-process layout)
    code = ("import sys; from omnibind_train.testing import build_tiny_bundle; "
            "build_tiny_bundle(sys.argv[1])")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "training")])}
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env, cwd=str(REPO))
    print(f"built the tiny bundle in {time.monotonic() - t0:.1f} s", flush=True)
    return out, "tiny (random weights)"


# -- a running set-up ---------------------------------------------------------------------------

class Session:
    """Receiver + simulator in this process; the perception node here or in a child; optionally
    the baseline node in a child. The simulator starts last, so its stream time 0 (and the
    scenario's t = 0) is when everything under test is ready."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], workdir: Path,
                 bundle: Path, *, ours_in_process: bool, ours: bool = True,
                 baseline: bool = False, scenario: str = "", instrument: bool = True,
                 naive: bool = False) -> None:
        import _runtime_common as rc

        self.rc = rc
        self.stats: dict[str, dict[str, Any]] = {}
        self.children: dict[str, Any] = {}
        self.recorder = rc.StageRecorder()  # stages of an in-process perception node
        self.log = rc.SimLog()
        # the in-process nodes' INFO lines (every STALE/LIVE flip under load) would bury the
        # tables; children log to files in the work dir (--keep-logs keeps them)
        level = args.node_log_level
        self.rig = rc.Rig([rc.PERCEPTION_YAML, rc.SIM_YAML], log_levels={
            "omnibind_perception": level, "omnibind_sim_sensors": level})
        labels = tuple(label for label, on in ((rc.OURS, ours), (rc.BASELINE, baseline),
                                               (rc.NAIVE, naive)) if on)
        # the receiver spins alone, so a long simulator tick never delays a receive stamp
        self.receiver = self.rig.add(rc.Receiver(self.rig.context, labels), "single")
        self.instrument = instrument
        # a traced heap takes minutes to snapshot and compare at the end
        self.stop_timeout_s = 600.0 if getattr(args, "tracemalloc", False) else 30.0
        try:
            self._start(args, env, workdir, bundle, ours_in_process if ours else None, baseline,
                        scenario, naive)
        except BaseException:
            self.close()
            raise

    def _start(self, args: argparse.Namespace, env: dict[str, str], workdir: Path,
               bundle: Path, ours_in_process: bool | None, baseline: bool,
               scenario: str, naive: bool = False) -> None:
        """``ours_in_process``: True here, False in a child, None not at all; ``naive``: the
        hand-written torch-eager node (benchmarks/_naive_node.py) in a child."""
        rc = self.rc
        overrides = [a for item in args.set for a in ("--set", item)]
        overrides += ["--executor", args.executor]
        if not self.instrument:
            overrides.append("--no-instrument")
        if getattr(args, "tracemalloc", False):
            overrides += ["--tracemalloc-after", str(args.rss_warmup)]
        if ours_in_process:
            from omnibind_ros.ros.perception_lifecycle import PerceptionNode

            hook = self.recorder.hook if self.instrument else None
            self.ours = PerceptionNode(context=self.rig.context, hook=hook, parameter_overrides=[
                rc.Parameter("bundle_path", value=str(bundle)), *rc.parse_overrides(args.set)])
            self.rig.add(self.ours, args.executor, before_spin=lambda: rc._autostart(self.ours))
        elif ours_in_process is False:
            node_env = dict(env, **dict(item.split("=", 1) for item in args.node_env))
            self.children[rc.OURS] = rc.Child(SCRIPT, rc.OURS, bundle, node_env, workdir,
                                              overrides)
        if baseline:
            self.children[rc.BASELINE] = rc.Child(
                SCRIPT, rc.BASELINE, bundle, env, workdir,
                ["--slop", str(args.slop), "--queue-size", str(args.queue_size)])
        if naive:
            self.children[rc.NAIVE] = rc.Child(
                SCRIPT, rc.NAIVE, bundle, env, workdir,
                ["--slop", str(args.slop), "--queue-size", str(args.queue_size),
                 "--torch-threads", str(args.torch_threads),
                 "--audio-encode-hz", str(args.audio_encode_hz)])
        for child in self.children.values():
            child.wait_ready(timeout_s=600.0)
        rc.instrument_sim(self.log)
        from omnibind_ros.ros.sim_sensors_node import SimSensorsNode

        self.sim = SimSensorsNode(context=self.rig.context, parameter_overrides=[
            rc.Parameter("scenario_file", value=scenario)])
        self.control = rc.SimControl(self.sim)
        self.t0_ns = time.time_ns()
        self.rig.add(self.sim, "single")  # as its main(): rclpy.spin
        print("processes: " + ", ".join(f"{k} pid {v}" for k, v in self.pids.items()),
              flush=True)

    @property
    def pids(self) -> dict[str, int]:
        here = "+ours" if getattr(self, "ours", None) is not None else ""
        pids = {f"driver(sim+receiver{here})": os.getpid()}
        pids.update({f"{k} node": c.pid for k, c in self.children.items()})
        return pids

    def set_ours_params(self, params: list[Any], timeout_s: float = 5.0) -> bool:
        """Set perception parameters through its parameter service (any layout)."""
        from rclpy.parameter_client import AsyncParameterClient

        if getattr(self, "_param_client", None) is None:
            self._param_client = AsyncParameterClient(self.receiver, "omnibind_perception")
        if not self._param_client.wait_for_services(timeout_sec=timeout_s):
            return False
        future = self._param_client.set_parameters(params)
        return sleep_until(future.done, timeout_s) and all(
            r.successful for r in future.result().results)

    def records(self, label: str = "ours") -> list[Any]:
        return self.receiver.records[label]

    def stages(self) -> dict[str, list[tuple[int, float]]]:
        if "ours" in self.stats:
            return self.stats["ours"].get("stages", {})
        return self.recorder.snapshot()

    def close(self) -> None:
        for kind, child in self.children.items():
            self.stats[kind] = child.stop(timeout_s=self.stop_timeout_s)
        self.children_logs = {k: str(c.log_path) for k, c in self.children.items()}
        self.rig.close()


def sleep_until(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return False


def header(args: argparse.Namespace, bundle_desc: str, layout: str) -> dict[str, Any]:
    layout += f"; perception executor: {args.executor}"
    if args.node_env:
        layout += f"; perception env: {' '.join(args.node_env)}"
    info = {"command": args.command, "bundle": bundle_desc, "layout": layout,
            "overrides": args.set, "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "cpus": os.cpu_count(), "domain_id": os.environ.get("ROS_DOMAIN_ID")}
    print(f"\n== {args.command}: bundle {bundle_desc}; {layout}; "
          f"{os.cpu_count()} CPUs, load average {info['loadavg_start']} "
          f"(the machine is shared: other load inflates every number)", flush=True)
    return info


def stage_summary(stages: dict[str, list], key: str, start: int, end: int) -> dict[str, float]:
    from _runtime_common import summary, window_values

    return summary(window_values(stages.get(key, []), start, end))


# -- latency -------------------------------------------------------------------------------------

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
    rate = float(_fusion_param(args, "fusion.rate_hz"))
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


# -- hot-plug ------------------------------------------------------------------------------------

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


# -- baseline ------------------------------------------------------------------------------------

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


def _fusion_param(args: argparse.Namespace, name: str) -> Any:
    import _runtime_common as rc

    value = rc.yaml_params(rc.PERCEPTION_YAML)[name]
    for param in rc.parse_overrides(args.set):
        if param.name == name:
            value = param.value
    return value


def segments(session: Session, start: int, end: int) -> list[dict[str, Any]]:
    """Spans of constant plug/noise state, from the simulator's applied commands."""
    unplugged: set[str] = set()
    noisy: set[str] = set()
    bounds: list[tuple[int, frozenset[str], frozenset[str]]] = []
    for t, sensor, key, value in sorted(session.log.commands):
        if key == "enabled":
            unplugged.discard(sensor) if value else unplugged.add(sensor)
        else:
            noisy.add(sensor) if value else noisy.discard(sensor)
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
    rate = float(_fusion_param(args, "fusion.rate_hz"))
    min_mod = int(_fusion_param(args, "fusion.min_modalities"))
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


# -- naive: ours vs a hand-written torch-eager node ----------------------------------------------

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


# -- soak ----------------------------------------------------------------------------------------

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


# -- main ----------------------------------------------------------------------------------------

RUNNERS = {"latency": run_latency, "hotplug": run_hotplug, "baseline": run_baseline,
           "naive": run_naive, "soak": run_soak}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "_child":
        setup_env(args, None)
        if args.kind == "naive":
            import _naive_node

            return _naive_node.child_main(
                args.bundle, args.stats, slop_s=args.slop, queue_size=args.queue_size,
                torch_threads=args.torch_threads, audio_encode_hz=args.audio_encode_hz)
        import _runtime_common as rc

        return rc.child_main(args.kind, args.bundle, args.stats, args.set, args.slop,
                             args.queue_size, args.executor, not args.no_instrument,
                             args.tracemalloc_after)
    workdir = Path(tempfile.mkdtemp(prefix="omnibind_bench_runtime_"))
    try:
        env = setup_env(args, workdir)
        bundle, desc = resolve_bundle(args, workdir)
        result = RUNNERS[args.command](args, env, workdir, bundle, desc)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1, default=_jsonable))
            print(f"results written to {args.json}")
    finally:
        if args.keep_logs:
            print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
