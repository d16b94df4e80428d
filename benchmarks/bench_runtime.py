#!/usr/bin/env python3
"""Runtime benchmarks of the perception node with the simulated sensors.

Subcommands (each prints tables and a line against its target; ``--json OUT`` saves results)::

    latency [--two-process]   sensor header stamp -> Recognition received, p50/p99, + stages
    hotplug [--two-process]   unplug -> first Recognition without the sensor, replug -> with it
    baseline                  ours vs an ApproximateTimeSynchronizer node, same dropout scenario
    naive                     ours vs a hand-written torch-eager node, all sensors live
    soak [--minutes 2]        CPU% and RSS of the perception process, RSS slope
    flap [--burners 2]        hot-plug demo beside CPU burners: unexplained state changes/min
    chaos [--minutes 10]      soak with random hot-plug, degradations and parameter changes:
                              RSS slope, threads, FDs, answered share, longest stall

    python benchmarks/bench_runtime.py latency --tiny --duration 10
    python benchmarks/bench_runtime.py latency --two-process       # default bundle if present

Bundle: ``--bundle PATH``, ``--tiny`` (a random tiny bundle built in a temp dir), or by default
``<cache>/bundles/default`` when it exists, else the tiny one with a warning. Every process that
creates a ROS node runs with loopback-only discovery and a ROS_DOMAIN_ID reserved for this run
(``omnibind_ros.ros.env``), set here before rclpy is imported and passed to the children.
See benchmarks/README.md for what each number means.

This file parses the arguments, sets up the environment and the bundle and dispatches; each
subcommand lives in ``benchmarks/_bench_<subcommand>.py``, the running set-up they share
(:class:`Session`) in ``benchmarks/_bench_session.py``, the probes and child processes in
``benchmarks/_runtime_common.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "training", REPO / "benchmarks"):
    if str(_path) not in sys.path:  # runs from a checkout without pip install -e
        sys.path.insert(0, str(_path))

# none of these imports rclpy: each subcommand imports it only when it runs, after setup_env()
from _bench_baseline import run_baseline  # noqa: E402
from _bench_chaos import run_chaos  # noqa: E402
from _bench_flap import run_flap  # noqa: E402
from _bench_hotplug import run_hotplug  # noqa: E402
from _bench_latency import run_latency  # noqa: E402
from _bench_naive import run_naive  # noqa: E402
from _bench_soak import run_soak  # noqa: E402

from omnibind_ros.ros.env import ensure_safe_ros_env, reserve_domain_id  # noqa: E402 (no rclpy)

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
    p = sub.add_parser("flap", parents=[common],
                       help="hot-plug demo beside CPU burners: state changes no event caused")
    p.add_argument("--duration", type=float, default=90.0, help="measured seconds")
    p.add_argument("--burners", type=int, default=2, help="CPU-burning processes beside it")
    p.add_argument("--scenario", default="hotplug_demo.yaml", help="scenario file (loops)")
    p = sub.add_parser("chaos", parents=[common],
                       help="soak with random hot-plug, degradations and parameter changes")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--every", type=float, default=3.0, help="seconds between random changes")
    p.add_argument("--seed", type=int, default=0, help="seed of the random changes")
    p.add_argument("--rss-warmup", type=float, default=60.0,
                   help="s after start left out of the RSS slope and thread/FD baselines")
    p.add_argument("--tracemalloc", action="store_true",
                   help="diagnosis: trace Python allocations in the perception process and "
                        "print the sites that grew after --rss-warmup (slows the node)")
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


# -- main ----------------------------------------------------------------------------------------

RUNNERS = {"latency": run_latency, "hotplug": run_hotplug, "baseline": run_baseline,
           "naive": run_naive, "soak": run_soak, "flap": run_flap, "chaos": run_chaos}


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
