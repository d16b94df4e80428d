#!/usr/bin/env python3
"""GPU inference: torch eager FP32 vs the optimised torch_cuda backend vs ONNX Runtime (CPU).

For every encoder, the AF fusion head and the text encoder, on one GPU:

* systems: ``eager_fp32`` (the torch backend on CUDA: float32, torch defaults, cuDNN benchmark
  off); the torch_cuda backend with CUDA graphs, channels-last, cuDNN benchmark and pinned
  copies as ``opt_fp16`` (modules cast to float16: the default), ``opt_fp16_amp`` (float32
  weights under ``torch.autocast``) and ``opt_bf16``; ``ort_cpu`` (ONNX Runtime on all the
  machine's CPU cores);
* latency p50/p99 of one call at batch 1 (what a node does per message, host arrays in and out)
  and throughput at batch 32 (samples/s);
* parity on real test inputs: eager FP32 vs ONNX Runtime max abs <= 1e-3, FP16 cosine >= 0.999
  (BF16 >= 0.99);
* zero-shot top-1 on the simulated student test split (per encoder and fused, against the
  bundle's label embeddings): each optimised system within 1 point of eager FP32;
* the target: ``opt_fp16`` >= 3x faster than ``eager_fp32`` per encoder at batch 1, with a
  PASS/MISS line each;
* ``--node-latency``: ``bench_runtime.py latency --set backend=torch_cuda`` in a subprocess
  (needs ROS 2), its end-to-end p50/p99.

``--device cpu`` is a dry run of every code path on a machine without a GPU: the optimised
systems are ``opt_bf16_cpu`` and ``opt_bf16_amp_cpu`` (the torch_cuda backend's CPU test mode:
BF16, no CUDA graphs), speed lines read DRY. ``--quick`` cuts repetitions and the test subset.

Bundle: ``--bundle`` takes a bundle directory (default ``<cache>/bundles/default``) or a pack
written by ``--pack DIR`` (``benchmarks/_gpu_pack.py``: deduplicated float16 weights, the ONNX
graphs without their weights and a preprocessed test subset, small enough to travel to a GPU
machine that has neither the bundle, nor the data set, nor onnx); a pack is unpacked into a
temporary bundle first. ``--pack`` refuses a directory that is neither empty nor a pack.
The test split comes from the pack, else from the rendered data set
(``config/sim_dataset.yaml``, ``--per-class`` samples per class); without either, accuracy is
skipped with a note.

    python benchmarks/bench_gpu.py --device cpu --quick                  # dry run, here
    python benchmarks/bench_gpu.py --pack .gpu_pack --per-class 3        # here, for the GPU box
    python benchmarks/bench_gpu.py --bundle .gpu_pack --json gpu.json    # on the GPU box

Needs numpy, pyyaml, torch, safetensors and this repository with ``training/`` on ``sys.path``
(the module builder; reading the data set); onnxruntime (the ``ort_cpu`` system), tokenizers
(text), rclpy (``--node-latency``) where there; ``--pack`` also needs onnx (its ONNX export).
It starts with a preflight line naming every one of those modules that is missing; a part that
needs one prints a note and is skipped, and a bundle or pack that cannot be used ends the run
with a one-line note (also in ``--json``). benchmarks/run_gpu_check.sh runs it on the GPU
machine.

The systems are built in ``_gpu_systems.py``, the measurements are in ``_gpu_checks.py``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "training", REPO / "benchmarks"):
    if str(_path) not in sys.path:  # runs from a checkout without pip install -e
        sys.path.insert(0, str(_path))

import _gpu_pack  # noqa: E402
from _gpu_checks import (  # noqa: E402
    Budget,
    measure_accuracy,
    measure_parity,
    measure_speed,
    node_latency,
    parity_inputs,
)
from _gpu_systems import (  # noqa: E402
    EAGER,
    ORT,
    BundleUnusable,
    make_systems,
    module_builder,
    note,
    opt_name,
    resolve_bundle,
    variants,
)
from bench_encoders import PROMPT  # noqa: E402

from omnibind_ros.core.bundle import default_bundle_dir, load_bundle  # noqa: E402

TARGET_SPEEDUP = 3.0  # opt_fp16 vs eager_fp32, batch-1 p50, per encoder
PARITY_ORT_ATOL = 1e-3
FP16_MIN_COSINE = 0.999
BF16_MIN_COSINE = 0.99
ACCURACY_MAX_DROP_PTS = 1.0
THROUGHPUT_BATCH = 32


def min_cosine(system: str) -> float:
    return BF16_MIN_COSINE if "bf16" in system else FP16_MIN_COSINE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda: the benchmark; cpu: a dry run of every code path")
    parser.add_argument("--bundle", type=Path, default=None,
                        help=f"bundle directory or pack (default: {default_bundle_dir()})")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="few repetitions, small subset")
    parser.add_argument("--node-latency", action="store_true",
                        help="also run bench_runtime.py latency with backend=torch_cuda")
    parser.add_argument("--node-duration", type=float, default=None,
                        help="measured seconds of the node latency run (default 20, quick 5)")
    parser.add_argument("--per-class", type=int, default=None,
                        help="test samples per class read from the data set (0 = all; "
                             "default 3, quick 1); a pack holds what it was written with")
    parser.add_argument("--dataset-root", type=Path, default=None,
                        help="rendered data set (default: config/sim_dataset.yaml's)")
    parser.add_argument("--ort-threads", type=int, default=os.cpu_count() or 1,
                        help="ONNX Runtime intra-op threads (default: every core)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock budget: parts that would start after it are skipped "
                             "with a note")
    parser.add_argument("--pack", type=Path, default=None, metavar="DIR",
                        help="write a travel-size pack of --bundle and a test subset to DIR, "
                             "then exit")
    args = parser.parse_args(argv)
    if args.per_class is None:
        args.per_class = 1 if args.quick else 3
    if args.node_duration is None:
        args.node_duration = 5.0 if args.quick else 20.0
    return args


def settings(device: str, quick: bool) -> dict[str, int]:
    """Repetitions: latency warm-up/runs at batch 1, throughput warm-up/runs at ``batch``."""
    if device == "cpu":
        return {"warmup": 1, "runs": 3 if quick else 10, "tp_warmup": 1,
                "tp_runs": 1 if quick else 3, "batch": 4 if quick else THROUGHPUT_BATCH}
    return {"warmup": 10 if quick else 25, "runs": 50 if quick else 300, "tp_warmup": 3,
            "tp_runs": 5 if quick else 20, "batch": THROUGHPUT_BATCH}


# -- environment ----------------------------------------------------------------------------------

#: Modules imported on demand: name -> (what needs it, whether a run cannot go on without it).
MODULES: dict[str, tuple[str, bool]] = {
    "torch": ("the torch systems", True),
    "safetensors": ("the torch weights", True),
    "omnibind_train": ("the module builder (training/ on sys.path)", True),
    "onnxruntime": ("the ort_cpu system", False),
    "tokenizers": ("text", False),
    "rclpy": ("--node-latency", False),
    "onnx": ("--pack", False),
}


def missing_modules(pack: bool = False) -> dict[str, tuple[str, bool]]:
    """The modules of :data:`MODULES` that cannot be imported here (``onnx`` is required only
    for ``--pack``)."""
    missing = {}
    for name, (use, required) in MODULES.items():
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing[name] = (use, required or (pack and name == "onnx"))
    return missing


def preflight(pack: bool = False) -> str | None:
    """Print one line naming the missing modules and what each costs; exit with it when one is
    required. Returns that line, None when nothing is missing."""
    missing = missing_modules(pack)
    if not missing:
        print("preflight: every module is importable", flush=True)
        return None
    line = "preflight: missing " + ", ".join(
        f"{name} ({'required' if required else 'skips'}: {use})"
        for name, (use, required) in missing.items())
    print(line, flush=True)
    if any(required for _, required in missing.values()):
        sys.exit(line)
    return line


def environment(device: str) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(),
                           "cpu_count": os.cpu_count(), "numpy": np.__version__}
    try:
        import torch

        env.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                   cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(
                props.total_memory / 2**30, 1), sm=f"{props.major}.{props.minor}",
                cudnn=torch.backends.cudnn.version(),
                conv_tf32=torch.backends.cudnn.allow_tf32,
                matmul_tf32=torch.backends.cuda.matmul.allow_tf32)
    except ImportError as exc:
        env["torch"] = f"missing ({exc})"
    try:
        import onnxruntime

        env.update(onnxruntime=onnxruntime.__version__,
                   ort_providers=onnxruntime.get_available_providers())
    except ImportError as exc:
        env["onnxruntime"] = f"missing ({exc})"
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    return env


def require_cuda() -> None:
    """Exit with the reason when ``--device cuda`` cannot run here."""
    try:
        import torch
    except ImportError as exc:
        sys.exit(f"--device cuda needs torch with CUDA: {exc}")
    from omnibind_ros.core.backends.torch_cuda_backend import cuda_unavailable_reason

    reason = cuda_unavailable_reason(torch)
    if reason:
        sys.exit(f"CUDA is not available: {reason}. Run on the GPU machine "
                 "(benchmarks/run_gpu_check.sh) or use --device cpu for a dry run.")


# -- report ---------------------------------------------------------------------------------------

def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(res: dict[str, Any], device: str) -> list[str]:
    """Print the tables and the target lines; returns the target lines."""
    systems = res["systems"]
    batch = res["settings"]["batch"]
    width = max(17, *(len(n) for n in systems)) + 2
    speed = [f"x {v}" for v in res["variants"]]
    print(f"\nBatch-1 latency, ms p50 / p99 (x: {EAGER} p50 / that system's p50)")
    _table(["component", *systems, *speed], width, [
        [comp] + [f"{_fmt(per[s]['p50'])} / {_fmt(per[s]['p99'])}" if s in per else "-"
                  for s in systems]
        + [f"{_fmt(res['speedup'][comp].get(v))}x" for v in res["variants"]]
        for comp, per in res["latency"].items()])
    print(f"\nThroughput at batch {batch}, samples/s")
    _table(["component", *systems], width, [
        [comp] + [_fmt(per.get(s), ".0f") for s in systems]
        for comp, per in res["throughput"].items()])
    if res.get("parity"):
        print(f"\nParity ({EAGER} vs {ORT} max abs <= {PARITY_ORT_ATOL:g}; "
              f"cosine vs {EAGER} >= {FP16_MIN_COSINE:g} fp16, >= {BF16_MIN_COSINE:g} bf16)")
        for comp, row in res["parity"].items():
            cells = ", ".join(f"{k} {_fmt(v, '.2e') if 'abs' in k else _fmt(v, '.5f')}"
                              for k, v in row.items() if k != "n")
            print(f"  {comp:<12} n={row['n']}: {cells}")
    if res.get("accuracy"):
        acc = res["accuracy"]
        print(f"\nZero-shot top-1 % on {acc['samples']} test samples ({acc['source']})")
        for name, per in acc["per_system"].items():
            print(f"  {name:<11} " + "  ".join(f"{m} {_fmt(v, '.1f')}" for m, v in per.items()))
        for name, agree in acc.get("fused_top1_agreement_with_fp32", {}).items():
            print(f"  fused top-1 agreement {name} vs {EAGER}: {agree:.1f}%")
    if res.get("node_latency"):
        n = res["node_latency"]
        print(f"\nNode latency (bench_runtime latency, backend=torch_cuda): p50 "
              f"{_fmt(n['p50_ms'], '.1f')} ms, p99 {_fmt(n['p99_ms'], '.1f')} ms")
    lines = target_lines(res, device)
    print()
    for line in lines:
        print(line)
    return lines


def _table(head: list[str], width: int, rows: list[list[str]]) -> None:
    widths = [12] + [width] * (len(head) - 1)
    print("".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, (h, w) in
                  enumerate(zip(head, widths, strict=True))))
    print("-" * sum(widths))
    for row in rows:
        print("".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w) in
                      enumerate(zip(row, widths, strict=True))))


def target_lines(res: dict[str, Any], device: str) -> list[str]:
    dry, opt = device == "cpu", res["opt"]

    def tag(ok: bool) -> str:
        return "DRY" if dry else ("PASS" if ok else "MISS")

    lines = []
    for comp, ratios in res["speedup"].items():
        ratio = ratios.get(opt)
        if ratio is None:
            continue
        kind = "encoder" if comp not in ("fusion", "text") else comp
        lines.append(f"{tag(ratio >= TARGET_SPEEDUP)} speed-up {comp} ({kind}): {opt} "
                     f"{ratio:.2f}x {EAGER} at batch 1 (target >= {TARGET_SPEEDUP:g}x)")
    for comp, row in (res.get("parity") or {}).items():
        if "eager_vs_ort_max_abs" in row:
            d = row["eager_vs_ort_max_abs"]
            lines.append(f"{'PASS' if d <= PARITY_ORT_ATOL else 'MISS'} parity {comp}: {EAGER} "
                         f"vs {ORT} max abs {d:.2e} (<= {PARITY_ORT_ATOL:g})")
        for name in res["variants"]:
            c = row.get(f"{name}_min_cosine")
            if c is not None:
                want = min_cosine(name)
                lines.append(f"{'PASS' if c >= want else 'MISS'} parity {comp}: {name} min "
                             f"cosine {c:.5f} (>= {want:g})")
    acc = (res.get("accuracy") or {}).get("per_system", {})
    for name in res["variants"]:
        if EAGER not in acc or name not in acc:
            continue
        for m, ref in acc[EAGER].items():
            got = acc[name].get(m)
            if ref is None or got is None:
                continue
            ok = abs(got - ref) <= ACCURACY_MAX_DROP_PTS
            lines.append(f"{'PASS' if ok else 'MISS'} accuracy {m}: {name} {got:.1f}% vs "
                         f"{EAGER} {ref:.1f}% (within {ACCURACY_MAX_DROP_PTS:g} pt)")
    return lines


def graph_stats(systems: dict[str, Any]) -> dict[str, Any]:
    return {name: dict(s.graphs.stats) for name, s in systems.items()
            if getattr(s, "graphs", None) is not None}


# -- main -----------------------------------------------------------------------------------------

def write_pack(args: argparse.Namespace) -> int:
    try:
        _gpu_pack.check_pack_target(args.pack)
    except FileExistsError as exc:
        sys.exit(f"--pack: {exc}")
    preflight(pack=True)
    bundle = load_bundle(Path(args.bundle or default_bundle_dir()).expanduser())
    try:
        test = _gpu_pack.load_test_split(bundle, args.per_class, args.dataset_root)
    except Exception as exc:
        print(f"[note] no test split ({type(exc).__name__}: {exc}); the pack has none")
        test = None
    desc = _gpu_pack.write_pack(bundle, args.pack, test=test, prompts=[PROMPT],
                                builder=module_builder())
    mib = desc["bytes"] / 2**20
    print(f"wrote {args.pack}: {mib:.1f} MiB ({desc.get('test', {}).get('samples', 0)} test "
          f"samples)")
    if mib > 56:
        print("[note] over 56 MiB: with the repository it may not fit a 64 MiB transfer; "
              "lower --per-class")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pack is not None:
        return write_pack(args)
    notes: list[str] = []
    missing = preflight()
    env = environment(args.device)
    if missing:
        notes.append(missing)
    if args.device == "cuda":
        require_cuda()
    budget = Budget(args.budget_s, notes)
    reps = settings(args.device, args.quick)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        workdir = Path(tmp)
        try:
            bundle, test = resolve_bundle(args, workdir, notes)
        except BundleUnusable as exc:
            note(notes, str(exc))
            if args.json:
                args.json.write_text(json.dumps({"env": env, "device": args.device,
                                                 "notes": notes}, indent=1, default=str))
            return 2
        print(f"bundle {bundle.root} (D={bundle.dim}, {list(bundle.modalities)}); test split: "
              f"{test.source if test is not None else 'none'}", flush=True)
        systems = make_systems(bundle, args, notes)
        opt = opt_name(args.device)
        res: dict[str, Any] = {"env": env, "device": args.device, "bundle": str(bundle.root),
                               "systems": list(systems), "opt": opt, "settings": reps,
                               "notes": notes,
                               "variants": [v for v in variants(args.device) if v in systems]}
        if args.device == "cpu":
            note(notes, f"dry run on the CPU: {opt} is the torch_cuda backend's CPU test mode "
                 "(bf16, no CUDA graphs); no speed target applies")
        skip = set()
        if bundle.text is not None and importlib.util.find_spec("tokenizers") is None:
            note(notes, "text skipped: the tokenizers package is not installed")
            skip.add("text")

        def save() -> None:  # after every part: a run stopped later keeps what it measured
            if args.json:
                args.json.write_text(json.dumps(res, indent=1, default=str))

        res["latency"], res["throughput"] = measure_speed(bundle, systems, reps, budget, skip,
                                                          notes)
        res["speedup"] = {c: {v: per[EAGER]["p50"] / per[v]["p50"] for v in res["variants"]
                              if EAGER in per and v in per}
                          for c, per in res["latency"].items()}
        save()
        for part, run in (("parity", lambda: measure_parity(
                              bundle, systems, parity_inputs(bundle, test, skip))),
                          ("accuracy", lambda: measure_accuracy(bundle, systems, test))):
            if (part == "accuracy" and test is None) or not budget.allows(part):
                continue
            try:
                res[part] = run()
            except Exception as exc:  # a failed part is a note; the rest still reports
                note(notes, f"{part} failed: {type(exc).__name__}: {exc}")
            save()
        res["graph_stats"] = graph_stats(systems)
        if args.node_latency and budget.allows("node latency"):
            for system in systems.values():
                system.close()  # free the GPU for the node's process
            res["node_latency"] = node_latency(bundle, args, workdir, notes)
        res["targets"] = print_report(res, args.device)
        if res["graph_stats"]:
            print(f"CUDA graphs: {res['graph_stats']}")
        print(f"total {budget.elapsed():.0f} s; notes: {len(notes)}")
        for text in notes:
            print(f"  - {text}")
        save()
        if args.json:
            print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
