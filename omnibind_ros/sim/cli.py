"""``omnibind-sim``: preview the simulated world, generate data sets, summarise them.

Examples
--------
::

    omnibind-sim preview                                  # PNG grid of every modality
    omnibind-sim generate --config config/sim_dataset.yaml --workers 2
    omnibind-sim info ~/.cache/omnibind_ros/datasets/sim_default

A bad config (unknown key, negative size) is reported in one line on stderr with exit status 2,
like any other usage error; no traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from omnibind_ros.core.paths import default_cache_dir

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and for documentation generators)."""
    parser = argparse.ArgumentParser(
        prog="omnibind-sim", description="The procedural multimodal world of omnibind_ros.")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache directory (default: $OMNIBIND_CACHE_DIR, "
                             "$XDG_CACHE_HOME/omnibind_ros or ~/.cache/omnibind_ros)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("preview", help="write a PNG grid of samples in every modality")
    p.add_argument("--out", type=Path, default=None,
                   help="PNG path (default: <cache>/preview/sim_preview.png)")
    p.add_argument("-n", "--n-samples", type=_positive_int, default=4,
                   help="samples (rows) to show (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first sample (default 0)")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML of WorldConfig overrides, or a data set config (its 'world' "
                        "section is used)")

    g = sub.add_parser("generate", help="render a data set into the cache (resumable)")
    g.add_argument("--config", type=Path, default=Path("config/sim_dataset.yaml"),
                   help="data set config YAML (default config/sim_dataset.yaml)")
    g.add_argument("--out", type=Path, default=None,
                   help="data set directory (default: <cache>/datasets/<config name>)")
    g.add_argument("--workers", type=_positive_int, default=None,
                   help="rendering processes (default: the config's 'workers')")
    g.add_argument("--overwrite", action="store_true",
                   help="delete an existing data set at the output first")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")

    i = sub.add_parser("info", help="print split sizes, class balance and completeness")
    i.add_argument("root", type=Path, help="data set directory")
    i.add_argument("--json", action="store_true", help="print the full summary as JSON")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (0 ok, 2 usage/config error)."""
    args = build_parser().parse_args(argv)
    handlers = {"preview": _cmd_preview, "generate": _cmd_generate, "info": _cmd_info}
    try:
        return handlers[args.command](args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"omnibind-sim {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; `generate` resumes from the finished shards", file=sys.stderr)
        return 130


def _cache(args: argparse.Namespace) -> Path:
    return args.cache_dir if args.cache_dir is not None else default_cache_dir()


def _cmd_preview(args: argparse.Namespace) -> int:
    from omnibind_ros.sim.preview import write_preview

    out = args.out or _cache(args) / "preview" / "sim_preview.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    config = None
    if args.config is not None:
        from omnibind_ros.sim.world import WorldConfig

        config = WorldConfig.from_dict(_world_overrides(args.config))
    written = write_preview(out, args.n_samples, args.seed, config)
    print(Path(written) if written else out)
    return 0


def _world_overrides(path: Path) -> dict:
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    if "world" in data:  # a data set config: use its world section
        return dict(data["world"] or {})
    return data


def _cmd_generate(args: argparse.Namespace) -> int:
    from omnibind_ros.sim.dataset import DatasetConfig, generate

    if not args.config.exists():
        raise FileNotFoundError(f"config {args.config} not found")
    config = DatasetConfig.from_yaml(args.config)
    n = sum(config.split_sizes().values())
    t0 = time.perf_counter()
    root = generate(config, _cache(args), root=args.out, workers=args.workers,
                    progress=not args.no_progress, overwrite=args.overwrite)
    elapsed = time.perf_counter() - t0
    rendered = _last_run_samples(root)
    rate = rendered / elapsed if elapsed > 0 else float("inf")
    print(f"wrote {root}")
    print(f"{n} samples ({rendered} rendered now) in {elapsed:.1f} s: {rate:.1f} samples/s "
          f"with {args.workers or config.workers} worker(s)")
    return 0


def _last_run_samples(root: Path) -> int:
    manifest = json.loads((root / "manifest.json").read_text())
    return int(manifest.get("last_run", {}).get("samples", 0))


def _cmd_info(args: argparse.Namespace) -> int:
    from omnibind_ros.sim.dataset import dataset_info

    if not (args.root / "manifest.json").exists():
        raise FileNotFoundError(f"{args.root} is not a data set (no manifest.json)")
    info = dataset_info(args.root)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    manifest = info["manifest"]
    state = "complete" if manifest.get("complete") else "INCOMPLETE (run generate to resume)"
    print(f"{info['root']}: {manifest['config'].get('name')} "
          f"(config {manifest['config_hash']}), {state}")
    for key, split in info["splits"].items():
        counts = split["class_counts"]
        balance = f"{min(counts)}..{max(counts)} per class" if counts else "empty"
        line = (f"  {key:<14} {split['size']:>6} samples  {balance:<18} shards "
                f"{split['shards_present']}/{split['shards']}  {split['bytes'] / 1e6:8.1f} MB")
        if "modality_free_sizes" in split:
            hist = " ".join(f"{k}:{v}" for k, v in split["modality_free_sizes"].items())
            line += f"  modality-free sizes {hist}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
