#!/usr/bin/env python3
"""Latency of every graph of a model bundle: ONNX Runtime vs torch (and TensorRT if asked).

Times ``backend.encode`` per modality, ``fuse`` over all modalities and ``embed_text`` on one
prompt, at a fixed batch (default 1: what a node does per message) and thread count, and prints
p50 / p90 over ``--runs`` calls after ``--warmup`` calls. Inputs are random arrays of each
encoder's input shape (latency does not depend on the values).

    python benchmarks/bench_encoders.py --tiny              # builds a random tiny bundle first
    python benchmarks/bench_encoders.py --bundle ~/.cache/omnibind_ros/bundles/default

The torch column needs ``omnibind_train`` and a bundle exported with torch weights; ONNX
Runtime and torch run with the same number of intra-op threads.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runs from a checkout without pip install -e
    sys.path.insert(0, str(REPO))

from omnibind_ros.core.backends import create_backend  # noqa: E402
from omnibind_ros.core.bundle import ModelBundle, default_bundle_dir, load_bundle  # noqa: E402
from omnibind_ros.core.errors import BackendUnavailableError  # noqa: E402

PROMPT = "a photo of a wooden mug."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=None,
                        help=f"bundle directory or archive (default: {default_bundle_dir()})")
    parser.add_argument("--tiny", action="store_true",
                        help="build a random tiny bundle in a temporary directory and use it")
    parser.add_argument("--tiny-text", choices=("tiny", "minilm"), default="tiny",
                        help="text encoder of the --tiny bundle (minilm: the real MiniLM)")
    parser.add_argument("--backends", default="onnxruntime,torch",
                        help="comma-separated backends to time (onnxruntime, torch, tensorrt)")
    parser.add_argument("--batch", type=int, default=1, help="batch size per call")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads per backend")
    parser.add_argument("--runs", type=int, default=50, help="timed calls per graph")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per graph first")
    parser.add_argument("--json", type=Path, default=None, help="also write results as JSON")
    return parser.parse_args(argv)


def time_calls(call: Callable[[], Any], *, runs: int, warmup: int,
               percentiles: tuple[int, ...] = (50, 90)) -> dict[str, float]:
    """Latency of ``call`` in milliseconds: ``p<q>`` for each of ``percentiles``, and the mean."""
    for _ in range(warmup):
        call()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        call()
        times[i] = time.perf_counter() - start
    times *= 1e3
    stats = {f"p{q}": float(np.percentile(times, q)) for q in percentiles}
    return {**stats, "mean": float(times.mean())}


def workloads(bundle: ModelBundle, batch: int) -> dict[str, Callable[[Any], Any]]:
    """Component name -> ``f(backend)`` running that graph once on fixed random inputs."""
    rng = np.random.default_rng(0)
    jobs: dict[str, Callable[[Any], Any]] = {}
    for modality, spec in bundle.modalities.items():
        x = rng.standard_normal((batch, *spec.sample_shape)).astype(np.float32)
        jobs[modality] = lambda b, m=modality, x=x: b.encode(m, x)
    if bundle.fusion is not None:
        n = bundle.fusion.max_tokens or len(bundle.modalities)
        tokens = rng.standard_normal((batch, n, bundle.dim)).astype(np.float32)
        mask = np.ones((batch, n), dtype=bool)
        jobs["fusion"] = lambda b: b.fuse(tokens, mask)
    if bundle.text is not None:
        jobs["text"] = lambda b: b.embed_text([PROMPT] * batch)
    return jobs


def build_tiny(text: str, root: Path) -> Path:
    try:
        from omnibind_train.testing import build_tiny_bundle
    except ImportError as exc:
        sys.exit(f"--tiny needs the omnibind_train package (pip install -e training): {exc}")
    print(f"building a tiny random bundle in {root} ...", flush=True)
    return build_tiny_bundle(root / "tiny", text=text, cache=False)


def make_backends(names: list[str], bundle: ModelBundle, threads: int) -> dict[str, Any]:
    backends = {}
    for name in names:
        opts = {"threads": threads} if name in ("onnxruntime", "torch") else {}
        try:
            backends[name] = create_backend(name, bundle, **opts)
        except BackendUnavailableError as exc:
            print(f"[skip] {name}: {exc}", file=sys.stderr)
    return backends


def print_table(results: dict[str, dict[str, dict[str, float]]], names: list[str]) -> None:
    compare = {"onnxruntime", "torch"} <= set(names)
    head = f"{'graph':<12}" + "".join(f"{name + ' p50 / p90 ms':>28}" for name in names)
    head += f"{'torch/ort p50':>15}" if compare else ""
    print(head)
    print("-" * len(head))
    for graph, per_backend in results.items():
        cells = [f"{r['p50']:>9.3f} / {r['p90']:<9.3f}" if (r := per_backend.get(n)) else "-"
                 for n in names]
        row = f"{graph:<12}" + "".join(f"{c:>28}" for c in cells)
        if compare:
            row += f"{per_backend['torch']['p50'] / per_backend['onnxruntime']['p50']:>14.1f}x"
        print(row)


def run(args: argparse.Namespace, path: Path) -> int:
    if not Path(path).exists():
        sys.exit(f"no bundle at {path}: train and export one, pass --bundle, or use --tiny")
    bundle = load_bundle(path)
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    backends = make_backends(names, bundle, args.threads)
    if not backends:
        sys.exit("no backend could be created")
    print(f"bundle {bundle.root} (D={bundle.dim}, {len(bundle.modalities)} encoders); batch "
          f"{args.batch}, {args.threads} threads, {args.runs} runs after {args.warmup} warm-up")
    results: dict[str, dict[str, dict[str, float]]] = {}
    for graph, job in workloads(bundle, args.batch).items():
        results[graph] = {name: time_calls(lambda b=backend, j=job: j(b), runs=args.runs,
                                           warmup=args.warmup)
                          for name, backend in backends.items()}
    print_table(results, list(backends))
    if args.json:
        args.json.write_text(json.dumps({"bundle": str(bundle.root), "batch": args.batch,
                                         "threads": args.threads, "runs": args.runs,
                                         "results": results}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.tiny:
        return run(args, args.bundle or default_bundle_dir())
    with tempfile.TemporaryDirectory(prefix="bench_tiny_bundle_") as tmp:
        return run(args, build_tiny(args.tiny_text, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
