"""``omnibind-bag``: record bags of the simulated or live sensors, inspect them, evaluate on them.

::

    omnibind-bag record-sim sim.bag --duration 120 --scenario hotplug_demo   # mcap, seed 0
    omnibind-bag record-sim sim_db3 --duration 10 --storage sqlite3 --seed 4
    omnibind-bag record robot.bag --config my_perception.yaml --duration 60   # live topics
    omnibind-bag info sim.bag
    omnibind-bag eval sim.bag                          # offline: deterministic, fast
    omnibind-bag eval sim.bag --live --rate 2          # replay to the running node, x2
    omnibind-bag eval their.bag --config their_perception.yaml --truth-csv labels.csv

``eval`` writes ``report.md``, ``report.json``, ``ticks.csv``, ``timeline.png`` and
``accuracy_by_combination.png`` into ``--out`` (default ``./<bag name>_<mode>_report``) and
prints the main table.

Exit codes: 0 done; 2 usage or input error (bad option, missing file, unusable config or CSV,
no topic of the bag mapped to a sensor); 3 the bag is damaged (``eval`` still writes the report
of everything before the damage; ``info`` prints what is readable); 1 anything else; 130
interrupted.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omnibind_ros.core.names import GROUND_TRUTH_TOPIC
from omnibind_ros.ros.env import ensure_safe_ros_env

__all__ = ["EXIT_CORRUPT", "EXIT_USAGE", "build_parser", "main"]

PROG = "omnibind-bag"
EXIT_USAGE = 2
EXIT_CORRUPT = 3


class _UsageError(Exception):
    """An input problem the user fixes by changing the command line or a file."""


class _Unavailable(Exception):
    """A part of the tool is not installed (exit 1 with the reason, no traceback)."""


# ---------------------------------------------------------------------------------------------
# argument parsing


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Record, inspect and evaluate rosbags of omnibind perception.",
        epilog="Exit codes: 0 ok, 2 usage/input error, 3 damaged bag (partial results kept).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("record-sim", help="record the simulated sensors (no ROS graph needed)",
                       description="Render the simulated sensors into a new bag, "
                                   "deterministically, with a scripted dropout scenario.")
    p.add_argument("out", type=Path, help="bag directory to create")
    p.add_argument("--duration", type=_positive, default=120.0, metavar="S",
                   help="seconds of stream time (default: 120)")
    p.add_argument("--scenario", default=None, metavar="NAME",
                   help="dropout scenario: a name under config/scenarios (hotplug_demo, "
                        "quick_unplug), a file, or '' for none (default: the parameter "
                        "file's scenario_file)")
    p.add_argument("--seed", type=int, default=None,
                   help="world seed (default: the parameter file's, 0)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--sim-params-file", type=Path, default=None, metavar="F",
                   help="omnibind_sim_sensors parameters (default: config/sim_sensors.yaml)")
    p.add_argument("--object-period", type=_positive, default=None, metavar="S",
                   help="seconds each object stays (default: the parameter file's)")
    p.add_argument("--sensors", default=None, metavar="A,B",
                   help="record only these configured sensors (comma-separated)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_record_sim)

    p = sub.add_parser("record", help="record the live sensor topics of a perception config",
                       description="Subscribe to every sensor topic of a perception node "
                                   "configuration (plus the ground truth) and record for a "
                                   "while; Ctrl-C stops early and keeps a valid bag.")
    p.add_argument("out", type=Path, help="bag directory to create")
    p.add_argument("--config", type=Path, default=None, metavar="YAML",
                   help="perception node parameters (default: config/perception.yaml)")
    p.add_argument("--duration", type=_positive, required=True, metavar="S",
                   help="wall seconds to record")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--truth-topic", default=GROUND_TRUTH_TOPIC, metavar="T",
                   help="ground-truth topic to record too ('' for none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_record)

    p = sub.add_parser("info", help="storage, span and topics of a bag",
                       description="Summarise a bag; a damaged bag is scanned and the damage "
                                   "is named (exit code 3).")
    p.add_argument("bag", type=Path)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("eval", help="score recognition on a bag (offline or --live)",
                       description="Feed the bag through the perception path and score its "
                                   "recognitions against the ground truth.")
    p.add_argument("bag", type=Path)
    p.add_argument("--live", action="store_true",
                   help="replay to the perception node with /clock (default: offline)")
    p.add_argument("--rate", type=_positive, default=None, metavar="X",
                   help="--live playback speed, bag seconds per wall second (default: 1)")
    p.add_argument("--bundle", type=Path, default=None, metavar="P",
                   help="model bundle (default: the config's bundle_path, else the default)")
    p.add_argument("--config", type=Path, default=None, metavar="YAML",
                   help="perception node parameters: topic -> sensor mapping, fusion, labels "
                        "(default: config/perception.yaml)")
    p.add_argument("--truth-csv", type=Path, default=None, metavar="F",
                   help="ground truth as labelled intervals (start_s,end_s,label)")
    p.add_argument("--truth-topic", default=GROUND_TRUTH_TOPIC, metavar="T",
                   help="ground-truth topic in the bag (omnibind_ros/msg/GroundTruth)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="report directory (default: ./<bag name>_<mode>_report)")
    p.add_argument("--backend", default="onnxruntime", metavar="B",
                   help="inference backend (default: onnxruntime)")
    p.add_argument("--processes", type=int, default=None, metavar="N",
                   help="offline: worker processes for the sensor stages; 0 = all in this "
                        "process (default: one per core)")
    p.add_argument("--threads", type=_count, default=None, metavar="N",
                   help="--live: the node's backend threads (default: 1)")
    p.add_argument("--transition", type=float, default=0.5, metavar="S",
                   help="answers this soon after an object change are not scored (0.5)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_eval)
    return parser


# ---------------------------------------------------------------------------------------------
# commands


def _console() -> Any:
    from rich.console import Console

    # Piped or captured output gets a wide fixed width: modality combinations are long keys.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _cmd_record_sim(args: argparse.Namespace) -> int:
    from omnibind_ros.bag.record import record_sim
    from omnibind_ros.bag.summary import format_info

    sensors = [s.strip() for s in args.sensors.split(",") if s.strip()] if args.sensors \
        else None
    wall = time.perf_counter()
    info = record_sim(args.out, duration_s=args.duration, scenario=args.scenario,
                      seed=args.seed, storage=args.storage,
                      sim_params_file=args.sim_params_file,
                      object_period_s=args.object_period, sensors=sensors,
                      progress=not args.no_progress)
    wall = time.perf_counter() - wall
    print(format_info(info))
    print(f"recorded {args.duration:g} s of simulated sensors in {wall:.1f} s "
          f"({args.duration / wall:.2f} bag s per wall s)")
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    from omnibind_ros.bag.record import record_live
    from omnibind_ros.bag.summary import format_info

    info = record_live(args.config, args.out, args.duration, args.storage,
                       truth_topic=args.truth_topic or None, progress=not args.no_progress)
    print(format_info(info))
    empty = [t for t, (_, n) in info.topics.items() if n == 0]
    if empty:
        print(f"no message arrived on: {', '.join(empty)}", file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from omnibind_ros.bag.reader import open_info
    from omnibind_ros.bag.summary import format_info

    info = open_info(args.bag)
    print(format_info(info))
    return EXIT_CORRUPT if info.error else 0


def _evaluator(live: bool) -> Any:
    """B's / C's evaluation function, imported only when asked for."""
    name = "live" if live else "offline"
    try:
        if live:
            from omnibind_ros.bag.live import evaluate_live as fn
        else:
            from omnibind_ros.bag.offline import evaluate_offline as fn
    except ImportError as exc:
        raise _Unavailable(f"{name} evaluation is not available in this installation "
                           f"(omnibind_ros.bag.{name}: {exc})") from exc
    return fn


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.rate is not None and not args.live:
        raise _UsageError("--rate applies to --live replay only (offline runs as fast as it "
                          "can)")
    if args.threads is not None and not args.live:
        raise _UsageError("--threads applies to --live only; offline parallelism is "
                          "--processes N")
    if args.processes is not None and (args.live or args.processes < 0):
        raise _UsageError("--processes applies to offline evaluation and must be >= 0")
    if args.transition < 0:
        raise _UsageError(f"--transition must be >= 0, got {args.transition}")
    if not args.bag.exists():
        raise FileNotFoundError(f"bag {args.bag} does not exist")
    for option, path in (("--bundle", args.bundle), ("--config", args.config),
                         ("--truth-csv", args.truth_csv)):
        if path is not None and not path.exists():
            raise FileNotFoundError(f"{option} {path} does not exist")
    evaluate = _evaluator(args.live)
    from omnibind_ros.bag.report import write_report
    from omnibind_ros.bag.scoring import score

    mode = "live" if args.live else "offline"
    common: dict[str, Any] = dict(bundle=args.bundle, config=args.config,
                                  truth_csv=args.truth_csv, truth_topic=args.truth_topic,
                                  backend=args.backend, progress=not args.no_progress)
    if args.live:
        threads = {} if args.threads is None else {"threads": args.threads}
        result = evaluate(args.bag, rate=args.rate or 1.0, **common, **threads)
    else:
        result = evaluate(args.bag, processes=args.processes, **common)
    scores = score(result, transition_s=args.transition)
    out = args.out or Path.cwd() / f"{args.bag.resolve().name}_{mode}_report"
    paths = write_report(result, scores, out, plots=not args.no_plots)
    print_summary(result, scores, paths, _console())
    return EXIT_CORRUPT if result.error else 0


# ---------------------------------------------------------------------------------------------
# output


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def print_summary(result: Any, scores: dict[str, Any], paths: dict[str, Path],
                  console: Any) -> None:
    """The main table (overall, per modality combination, per dropout phase) and the files."""
    from rich.markup import escape
    from rich.table import Table

    overall = scores["overall"]
    span = max(0.0, (result.end_ns - result.start_ns) * 1e-9)
    title = (f"{result.mode} evaluation of {result.bag}: {span:.1f} s of bag, "
             f"{overall['ticks']} fusion ticks")
    table = Table(title=escape(title), title_justify="left")
    table.add_column("group", overflow="fold")
    table.add_column("ticks", justify="right")
    table.add_column("answered", justify="right")
    table.add_column("scored", justify="right")
    table.add_column("correct", justify="right")
    table.add_column("accuracy", justify="right")
    table.add_column(f"top-{overall.get('top_k') or 'k'}", justify="right")

    def row(name: str, s: dict[str, Any], style: str | None = None) -> None:
        table.add_row(escape(name), str(s["ticks"]), str(s["answered"]), str(s["scored"]),
                      str(s["correct"]), _pct(s["accuracy"]), _pct(s["top_k_accuracy"]),
                      style=style)

    row("overall", overall, "bold")
    table.add_section()
    for entry in scores.get("by_modalities", []):
        row(f"modalities: {entry['key']}", entry)
    table.add_section()
    for phase in scores.get("by_phase", []):
        row(f"phase {phase['start_s']:.1f}-{phase['end_s']:.1f} s: {phase['label']}", phase)
    console.print(table)

    unanswered = scores.get("unanswered", {})
    if unanswered.get("ticks"):
        reasons = ", ".join(f"{r['reason']} ({r['ticks']})" for r in unanswered["reasons"])
        console.print(escape(f"ticks without an answer: {unanswered['ticks']}: {reasons}"))
    timing = scores.get("timing", {})
    latency = timing.get("latency_s") or {}
    parts = [f"wall {timing['wall_s']:.1f} s"] if timing.get("wall_s") is not None else []
    if timing.get("ticks_per_s"):
        parts.append(f"{timing['ticks_per_s']:.1f} ticks/s")
    if latency.get("p50") is not None:
        parts.append(f"latency p50 {1e3 * latency['p50']:.1f} ms, "
                     f"p95 {1e3 * latency['p95']:.1f} ms")
    if parts:
        console.print("timing: " + ", ".join(parts))
    for warning in result.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}")
    if result.skipped_topics:
        console.print(escape("skipped topics: " + "; ".join(
            f"{t} ({why})" for t, why in sorted(result.skipped_topics.items()))))
    if result.error:
        console.print(f"[bold red]bag damaged:[/] {escape(result.error)}; the report covers "
                      "everything before it")
    console.print(escape(f"report in {paths['markdown'].parent}:"))
    for path in paths.values():
        console.print(escape(f"  {path}"), soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# entry point


def _input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "fix your input" (exit 2), imported without importing rclpy."""
    from omnibind_ros.bag.record import RecordError
    from omnibind_ros.bag.truth import TruthError
    from omnibind_ros.sim.scenario import ScenarioError

    errors: list[type[BaseException]] = [_UsageError, FileNotFoundError, FileExistsError,
                                         RecordError, TruthError, ScenarioError]
    try:
        from omnibind_ros.bag.config import ConfigError

        errors.append(ConfigError)
    except ImportError:
        pass
    return tuple(errors)


def _eval_failure(exc: BaseException) -> int | None:
    """Exit code of an evaluation that could not run, None if ``exc`` is no such failure.

    Offline: nothing of the bag readable (3) or no topic mapped to a sensor (2, fix --config).
    Live: the node or the player could not run (1); a damaged bag is reported as for offline.
    """
    from omnibind_ros.bag.reader import BagReadError

    name = type(exc).__name__
    if name not in ("BagEvalError", "LiveEvalError"):
        return None
    if isinstance(exc.__cause__, BagReadError):
        return EXIT_CORRUPT
    if "no topic of" in str(exc):
        return EXIT_USAGE
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``omnibind-bag`` (returns the exit code)."""
    ensure_safe_ros_env()  # before anything imports rclpy (recording, evaluation)
    parser = build_parser()
    args = parser.parse_args(argv)
    from omnibind_ros.bag.reader import BagReadError

    try:
        return int(args.func(args))
    except BagReadError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CORRUPT
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except _Unavailable as exc:
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if isinstance(exc, _input_errors()):
            print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        code = _eval_failure(exc)
        if code is None:
            raise
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
