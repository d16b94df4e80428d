"""What bench_gpu.py measures on the systems: batch-1 latency and throughput, parity between
systems, zero-shot accuracy on the test split, and the node's end-to-end latency (a
``bench_runtime.py`` subprocess); ``Budget`` skips parts once ``--budget-s`` is spent.

Imported by bench_gpu.py after it has put the repository, ``training/`` and ``benchmarks/`` on
``sys.path``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _gpu_pack
import numpy as np
from _gpu_systems import EAGER, ORT, _cudnn_benchmark, note
from bench_encoders import PROMPT, time_calls, workloads

from omnibind_ros.core.bundle import ModelBundle
from omnibind_ros.core.preprocess.text import label_prompt

REPO = Path(__file__).resolve().parents[1]


class Budget:
    """Seconds left of ``--budget-s``; ``allows(part)`` notes a part it has to skip."""

    def __init__(self, seconds: float | None, notes: list[str]) -> None:
        self.start, self.seconds, self.notes = time.monotonic(), seconds, notes

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def allows(self, part: str) -> bool:
        if self.seconds is None or self.elapsed() < self.seconds:
            return True
        note(self.notes, f"{part} skipped: the {self.seconds:.0f} s budget is spent")
        return False


# -- timing ---------------------------------------------------------------------------------------

def latency_ms(call: Callable[[], Any], *, warmup: int, runs: int) -> dict[str, float]:
    return time_calls(call, runs=runs, warmup=warmup, percentiles=(50, 99))


def samples_per_s(call: Callable[[], Any], batch: int, *, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        call()
    start = time.perf_counter()
    for _ in range(runs):
        call()
    return batch * runs / (time.perf_counter() - start)


def measure_speed(bundle: ModelBundle, systems: dict[str, Any], reps: dict[str, int],
                  budget: Budget, skip: set[str], notes: list[str]
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    latency: dict[str, dict[str, Any]] = {}
    throughput: dict[str, dict[str, Any]] = {}
    one, many = workloads(bundle, 1), workloads(bundle, reps["batch"])
    for component in [c for c in one if c not in skip]:
        if not budget.allows(f"timing of {component}"):
            break
        latency[component], throughput[component] = {}, {}
        for name, system in systems.items():
            _cudnn_benchmark(system)
            try:
                latency[component][name] = latency_ms(
                    lambda s=system, j=one[component]: j(s), warmup=reps["warmup"],
                    runs=reps["runs"])
                throughput[component][name] = samples_per_s(
                    lambda s=system, j=many[component]: j(s), reps["batch"],
                    warmup=reps["tp_warmup"], runs=reps["tp_runs"])
            except Exception as exc:  # one failing system must not cost the others' numbers
                note(notes, f"{name} failed on {component}: {type(exc).__name__}: {exc}")
        row = "  ".join(f"{n} {v['p50']:.2f}" for n, v in latency[component].items())
        print(f"  {component:<12} batch-1 p50 ms: {row}", flush=True)
    return latency, throughput


# -- parity and accuracy --------------------------------------------------------------------------

def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1),
                                        1e-12)


def parity_inputs(bundle: ModelBundle, test: _gpu_pack.TestSet | None, skip: set[str],
                  n: int = 8) -> dict[str, Any]:
    """Per component, the inputs parity is measured on: real test samples where there are
    some, else seeded random arrays; fusion tokens are filled in from FP32 embeddings later."""
    rng = np.random.default_rng(0)
    inputs: dict[str, Any] = {}
    for m, spec in bundle.modalities.items():
        if test is not None and m in test.inputs and test.valid[m].any():
            inputs[m] = test.inputs[m][test.valid[m]][:n]
        else:
            inputs[m] = rng.standard_normal((n, *spec.sample_shape)).astype(np.float32)
    if bundle.text is not None and "text" not in skip:
        templates = list(bundle.prompt_templates) or ["{}"]
        # label_prompt, as the pack's word-embedding rows were chosen by (other rows are zero)
        inputs["text"] = [label_prompt(t, name) for name in bundle.label_names[:n]
                          for t in templates[:2]] + [PROMPT]
    return inputs


def _run(system: Any, component: str, x: Any) -> np.ndarray:
    if component == "text":
        return system.embed_text(x)
    if component == "fusion":
        return system.fuse(*x)
    return system.encode(component, x)


def measure_parity(bundle: ModelBundle, systems: dict[str, Any], inputs: dict[str, Any]
                   ) -> dict[str, Any]:
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for component, x in inputs.items():
        outputs[component] = {name: _run(s, component, x) for name, s in systems.items()}
    if bundle.fusion is not None:
        modalities = list(bundle.modalities)
        tokens = np.stack([outputs[m][EAGER][:4] for m in modalities], axis=1)
        mask = np.ones(tokens.shape[:2], bool)
        mask[1, 1:] = False  # one live token
        mask[2, ::2] = False  # padded slots in between
        tokens[~mask] = np.nan  # padding may hold anything
        outputs["fusion"] = {name: s.fuse(tokens, mask) for name, s in systems.items()}
    result: dict[str, Any] = {}
    for component, out in outputs.items():
        ref = out[EAGER]
        row: dict[str, Any] = {"n": int(len(ref))}
        if ORT in out:
            row["eager_vs_ort_max_abs"] = float(np.abs(ref - out[ORT]).max())
        for name in out:
            if name not in (EAGER, ORT):
                row[f"{name}_min_cosine"] = float(_cosine(out[name], ref).min())
                row[f"{name}_max_abs"] = float(np.abs(out[name] - ref).max())
        result[component] = row
    return result


def measure_accuracy(bundle: ModelBundle, systems: dict[str, Any],
                     test: _gpu_pack.TestSet) -> dict[str, Any]:
    """Zero-shot top-1 (%) per encoder and fused over every valid encoder, per system."""
    labels = bundle.labels
    names = [n.lower() for n in labels.names]
    missing = sorted({c for c in test.class_names if c.lower() not in names})
    if missing:
        raise ValueError(f"test classes {missing} are not among the bundle's labels")
    target = np.asarray([names.index(test.class_names[c].lower()) for c in test.labels])
    label_emb = np.asarray(labels.embeddings, dtype=np.float32)
    result: dict[str, Any] = {"samples": len(test), "source": test.source, "per_system": {}}
    modalities = [m for m in bundle.modalities if m in test.inputs]
    for name, system in systems.items():
        emb = {m: system.encode(m, test.inputs[m]) for m in modalities}
        acc = {}
        for m in modalities:
            ok = test.valid[m]
            pred = (emb[m][ok] @ label_emb.T).argmax(1)
            acc[m] = float(100 * (pred == target[ok]).mean()) if ok.any() else None
        if bundle.fusion is not None:
            tokens = np.stack([emb[m] for m in modalities], axis=1)
            mask = np.stack([test.valid[m] for m in modalities], axis=1)
            live = mask.any(1)
            fused = system.fuse(tokens[live], mask[live])
            acc["fused"] = float(100 * ((fused @ label_emb.T).argmax(1) == target[live]).mean())
            result.setdefault("predictions", {})[name] = (fused @ label_emb.T).argmax(1)
        result["per_system"][name] = acc
    preds = result.pop("predictions", {})
    if EAGER in preds:
        result["fused_top1_agreement_with_fp32"] = {
            n: float(100 * (p == preds[EAGER]).mean()) for n, p in preds.items() if n != EAGER}
    return result


# -- node latency ---------------------------------------------------------------------------------

def node_latency(bundle: ModelBundle, args: argparse.Namespace, workdir: Path,
                 notes: list[str]) -> dict[str, Any] | None:
    if importlib.util.find_spec("rclpy") is None:
        note(notes, "node latency skipped: ROS 2 (rclpy) is not installed here")
        return None
    out = workdir / "node_latency.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_runtime.py"), "latency",
           "--bundle", str(bundle.root), "--set", "backend=torch_cuda",
           "--duration", f"{args.node_duration:g}",
           "--warmup", "3" if args.quick else "5", "--json", str(out)]
    if args.device == "cpu":  # the dry run: torch_cuda cannot run, the node falls back
        cmd += ["--set", "backend_fallback=true"]
    print("$ " + " ".join(cmd), flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=args.node_duration + 180)
    except subprocess.TimeoutExpired:
        note(notes, "node latency: bench_runtime.py timed out")
        return None
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:])
    if proc.returncode != 0 or not out.is_file():
        note(notes, f"node latency: bench_runtime.py exited {proc.returncode}:\n{tail}")
        return None
    result = json.loads(out.read_text())
    e2e = result.get("e2e_ms") or {}
    print("\n".join(line for line in proc.stdout.splitlines() if "RESULT" in line))
    return {"command": cmd, "p50_ms": e2e.get("p50"), "p99_ms": e2e.get("p99"),
            "n": e2e.get("n"), "answered_per_s": result.get("answered_per_s")}
