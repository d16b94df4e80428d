"""The systems bench_gpu.py compares: the bundle (or an unpacked pack) they load, the torch module
builder, and ``eager_fp32``, the torch_cuda variants and ``ort_cpu`` built from it.

Imported by bench_gpu.py after it has put the repository, ``training/`` and ``benchmarks/`` on
``sys.path``; torch, onnxruntime and the training package are imported where they are used.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _gpu_pack

from omnibind_ros.core.bundle import ModelBundle, default_bundle_dir, load_bundle
from omnibind_ros.core.errors import BackendUnavailableError

EAGER, ORT = "eager_fp32", "ort_cpu"
#: torch_cuda systems: name -> (precision, autocast); all with CUDA graphs, channels-last,
#: cuDNN benchmark and pinned copies. The first is the one the targets are about.
CUDA_VARIANTS = {"opt_fp16": ("fp16", False), "opt_fp16_amp": ("fp16", True),
                 "opt_bf16": ("bf16", False)}
#: The dry run's: the torch_cuda backend's CPU test mode (bf16, no CUDA graphs).
CPU_VARIANTS = {"opt_bf16_cpu": ("bf16", False), "opt_bf16_amp_cpu": ("bf16", True)}


def variants(device: str) -> dict[str, tuple[str, bool]]:
    return CPU_VARIANTS if device == "cpu" else CUDA_VARIANTS


def opt_name(device: str) -> str:
    """The system the targets are about: ``opt_fp16`` on CUDA, ``opt_bf16_cpu`` in a dry run."""
    return next(iter(variants(device)))


def note(notes: list[str], text: str) -> None:
    notes.append(text)
    print(f"[note] {text}", flush=True)


# -- bundle, builder, systems ---------------------------------------------------------------------

def module_builder() -> Any:
    """The registered torch module builder, else the training package's on ``sys.path``
    (a checkout that is not pip-installed has no entry point)."""
    from omnibind_ros.core.backends.torch_backend import default_builder

    try:
        return default_builder()
    except BackendUnavailableError:
        from omnibind_train.models.build import build_torch_module

        return build_torch_module


class BundleUnusable(Exception):
    """The bundle or pack cannot be used; the message is one line."""


def resolve_bundle(args: argparse.Namespace, workdir: Path, notes: list[str]
                   ) -> tuple[ModelBundle, _gpu_pack.TestSet | None]:
    """The bundle to measure (a pack is unpacked into ``workdir`` first) and its test split.

    Raises :class:`BundleUnusable` with a one-line reason when there is no usable bundle.
    """
    path = Path(args.bundle or default_bundle_dir()).expanduser()
    if not path.exists():
        raise BundleUnusable(f"no bundle at {path}: pass --bundle (a bundle or a pack from "
                             "--pack)")
    try:
        return _resolve_bundle(path, args, workdir, notes)
    except Exception as exc:  # unpacking, the builder, the manifest: one line, no traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BundleUnusable(f"cannot use {path}: {type(exc).__name__}: {first}") from exc


def _resolve_bundle(path: Path, args: argparse.Namespace, workdir: Path, notes: list[str]
                    ) -> tuple[ModelBundle, _gpu_pack.TestSet | None]:
    if _gpu_pack.is_pack(path):
        start = time.perf_counter()
        root = _gpu_pack.unpack(path, workdir / "bundle", module_builder(),
                                lambda text: note(notes, text))
        print(f"unpacked {path} into {root} (weights and ONNX graphs) in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        test = _gpu_pack.load_pack_test_set(path)
        if test is None:
            note(notes, f"{path} holds no test split; accuracy skipped")
        return load_bundle(root), test
    bundle = load_bundle(path)
    try:
        test = _gpu_pack.load_test_split(bundle, args.per_class, args.dataset_root)
    except Exception as exc:  # no data set, no training package, unreadable shards
        note(notes, f"no test split ({type(exc).__name__}: {exc}); accuracy skipped")
        test = None
    return bundle, test


def make_systems(bundle: ModelBundle, args: argparse.Namespace, notes: list[str]
                 ) -> dict[str, Any]:
    from omnibind_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend
    from omnibind_ros.core.backends.torch_backend import TorchBackend
    from omnibind_ros.core.backends.torch_cuda_backend import TorchCudaBackend

    try:
        builder = module_builder()
    except ImportError as exc:
        sys.exit(f"no torch module builder: {type(exc).__name__}: {exc}")
    cpu = args.device == "cpu"
    threads = os.cpu_count() if cpu else None
    makers: dict[str, Callable[[], Any]] = {
        EAGER: lambda: TorchBackend(bundle, device=args.device, threads=threads,
                                    builder=builder)}
    for name, (precision, amp) in variants(args.device).items():
        makers[name] = (lambda p=precision, a=amp: TorchCudaBackend(
            bundle, device=args.device, threads=threads, precision=p, autocast=a,
            cuda_graphs=not cpu, builder=builder))
    makers[ORT] = lambda: OnnxRuntimeBackend(bundle, threads=args.ort_threads, providers="cpu")
    systems = {}
    for name, make in makers.items():
        start = time.perf_counter()
        try:
            systems[name] = make()
        except Exception as exc:  # unavailable, or a graph it cannot load: the rest still run
            kind = "" if isinstance(exc, BackendUnavailableError) else f"{type(exc).__name__}: "
            note(notes, f"{name} unavailable: {kind}{exc}")
            continue
        print(f"  {name}: {systems[name]!r} ({time.perf_counter() - start:.1f} s)", flush=True)
    if EAGER not in systems or opt_name(args.device) not in systems:
        sys.exit("the torch systems could not be created (see the notes above)")
    return systems


def _cudnn_benchmark(system: Any) -> None:
    """Torch defaults for the eager baseline, cuDNN's benchmark for the torch_cuda systems
    (the flag is process-wide and read per convolution)."""
    try:
        import torch
    except ImportError:
        return
    torch.backends.cudnn.benchmark = getattr(system, "name", "") == "torch_cuda"
