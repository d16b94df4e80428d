"""``omnibind-engines``: build and list the TensorRT engines of a model bundle.

Examples
--------
::

    omnibind-engines build ~/.cache/omnibind_ros/bundles/default              # fp16
    omnibind-engines build BUNDLE --precision int8 --calib-samples 128
    omnibind-engines build BUNDLE --precision int8 --precision-for thermal=fp16
    omnibind-engines build BUNDLE --module tensorrt_rtx        # no GPU needed to build
    omnibind-engines build BUNDLE --dla-core 0                 # Jetson Xavier/Orin DLA
    omnibind-engines list BUNDLE

``build`` wraps :func:`omnibind_ros.core.engines.build_engines`: engines are cached per GPU,
compute capability, TensorRT version (and DLA core), and a fresh engine is reused unless
``--force``. INT8 calibration samples come from the simulated world through the bundle's own
preprocessing (:class:`omnibind_ros.sim.calibration.SimCalibration`), so only the modality
encoders can be INT8 (``--precision-for text=int8`` is refused); an INT8 engine is rebuilt when
``--calib-samples``, ``--calib-seed`` or the modality's preprocessing config change, and its
calibration cache is reused only while the ONNX file and those are unchanged
(``--recalibrate`` discards it and rebuilds). After a build, INT8 encoders built in this run as
QDQ graphs (``tensorrt_rtx``) are compared with fp32 on held-out simulated samples. ``list``
shows every cache folder of the bundle and whether each engine in it is fresh for the bundle
as it is now, marking folders of another GPU or of a TensorRT other than the importable one.

BUNDLE is a bundle directory, its ``bundle.yaml`` or a ``.tar``/``.tar.gz`` archive (extracted
into the cache; its engines land there unless ``--engines-dir`` is given). Errors (missing
bundle, no TensorRT module, bad arguments, an unwritable cache folder, a missing optional
package, a failed calibration) are one line on stderr, no traceback: exit status 2 for usage
errors, 1 for a build that cannot run or fails.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

EXIT_FAILED = 1
EXIT_USAGE = 2

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "build_parser", "main", "qdq_fidelity"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and for documentation generators)."""
    from omnibind_ros.core.engines import DEFAULT_MAX_BATCH, PRECISIONS, TRT_MODULES
    from omnibind_ros.sim.calibration import DEFAULT_CALIB_SAMPLES

    parser = argparse.ArgumentParser(
        prog="omnibind-engines",
        description="Build and list the TensorRT engines of an omnibind_ros model bundle.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("build", help="build (or reuse) one engine per ONNX graph")
    b.add_argument("bundle", type=Path, help="bundle directory, bundle.yaml or .tar(.gz)")
    b.add_argument("--precision", choices=PRECISIONS, default="fp16",
                   help="encoder precision (default fp16; int8 calibrates on simulated "
                        "samples; the fusion head is always fp32, text stays fp16 under int8)")
    b.add_argument("--precision-for", action="append", default=[], metavar="NAME=PRECISION",
                   type=_precision_override,
                   help="precision of one modality or of 'text' (repeatable; text cannot be "
                        "int8), e.g. thermal=fp16 next to --precision int8")
    b.add_argument("--calib-samples", type=_positive_int, default=DEFAULT_CALIB_SAMPLES,
                   help=f"simulated samples per INT8 encoder (default {DEFAULT_CALIB_SAMPLES})")
    b.add_argument("--calib-seed", type=int, default=None,
                   help="first seed of the calibration samples")
    b.add_argument("--recalibrate", action="store_true",
                   help="discard INT8 calibration caches, calibrate again and rebuild the "
                        "INT8 engines")
    b.add_argument("--no-check", action="store_true",
                   help="skip comparing the INT8 (QDQ, tensorrt_rtx) encoders built in this "
                        "run with fp32 on held-out simulated samples (ONNX Runtime on the "
                        "CPU)")
    b.add_argument("--max-batch", type=_positive_int, default=DEFAULT_MAX_BATCH,
                   help=f"largest batch of the optimisation profiles (default "
                        f"{DEFAULT_MAX_BATCH})")
    b.add_argument("--module", choices=("auto", *TRT_MODULES), default="auto",
                   help="TensorRT module (default auto: tensorrt, else tensorrt_rtx)")
    b.add_argument("--engines-dir", type=Path, default=None,
                   help="engine cache root (default <bundle>/engines)")
    b.add_argument("--dla-core", type=_non_negative_int, default=None,
                   help="build the encoders for this DLA core (Jetson; fp16 or int8)")
    b.add_argument("--device", type=_non_negative_int, default=0,
                   help="CUDA device whose name keys the cache (default 0)")
    b.add_argument("--workspace-gib", type=float, default=2.0,
                   help="builder workspace limit in GiB (default 2)")
    b.add_argument("--force", action="store_true", help="rebuild fresh engines too")
    b.add_argument("--modalities", nargs="+", default=None, metavar="MODALITY",
                   help="only these encoders (fusion and text are always built)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")

    ls = sub.add_parser("list", help="show the cached engines and whether they are fresh")
    ls.add_argument("bundle", type=Path, help="bundle directory, bundle.yaml or .tar(.gz)")
    ls.add_argument("--engines-dir", type=Path, default=None,
                    help="engine cache root (default <bundle>/engines)")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _precision_override(text: str) -> tuple[str, str]:
    from omnibind_ros.core.engines import PRECISIONS

    name, sep, value = text.partition("=")
    if not sep or not name or value not in PRECISIONS:
        raise argparse.ArgumentTypeError(
            f"expected NAME=PRECISION with PRECISION one of {', '.join(PRECISIONS)}, "
            f"got {text!r}")
    if value == "int8" and name == "text":
        raise argparse.ArgumentTypeError(
            "text=int8: INT8 calibration draws simulated sensor samples, which the text "
            "encoder does not take; only modality encoders can be int8 (text: fp16 or fp32)")
    return name, value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (0 ok, 1 build failed, 2 usage error)."""
    from omnibind_ros.core.errors import (
        BackendUnavailableError,
        BundleError,
        BundleNotFoundError,
    )

    args = build_parser().parse_args(argv)
    handlers = {"build": _cmd_build, "list": _cmd_list}
    try:
        return handlers[args.command](args)
    except (BundleNotFoundError, ValueError) as exc:
        _error(args, exc)
        return EXIT_USAGE
    except (BundleError, BackendUnavailableError) as exc:
        _error(args, exc)
        return EXIT_FAILED
    except OSError as exc:  # e.g. a read-only bundle folder
        hint = ("; pass --engines-dir DIR (a writable folder)"
                if getattr(args, "engines_dir", None) is None else "")
        _error(args, f"{_os_message(exc)}{hint}")
        return EXIT_FAILED
    except ImportError as exc:  # pybullet (the simulator), onnxruntime.quantization, tqdm
        missing = getattr(exc, "name", None)
        _error(args, f"{exc}" + (f" (install {missing.split('.')[0]})" if missing else ""))
        return EXIT_FAILED
    except RuntimeError as exc:  # e.g. calibration or the simulator failing
        _error(args, f"{type(exc).__name__}: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted; engines built so far are cached", file=sys.stderr)
        return 130


def _os_message(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"cannot write or read {exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def _error(args: argparse.Namespace, exc: BaseException | str) -> None:
    message = " ".join(str(exc).split())  # one line
    print(f"omnibind-engines {args.command}: error: {message}", file=sys.stderr)


def _load(path: Path) -> Any:
    from omnibind_ros.core.bundle import load_bundle

    return load_bundle(path)


def _precision(args: argparse.Namespace, bundle: Any) -> str | dict[str, str]:
    if not args.precision_for:
        return args.precision
    known = {*bundle.modalities, "text"}
    mapping = {"default": args.precision}
    for name, value in args.precision_for:
        if name not in known:
            raise ValueError(f"--precision-for {name}={value}: the bundle has no {name!r} "
                             f"graph (it has {', '.join(sorted(known))})")
        mapping[name] = value
    return mapping


def _cmd_build(args: argparse.Namespace) -> int:
    from omnibind_ros.core.engines import (
        build_engines,
        component_precision,
        components,
        import_tensorrt,
    )
    from omnibind_ros.sim.calibration import DEFAULT_CALIB_SEED, SimCalibration

    bundle = _load(args.bundle)
    if args.modalities is not None:
        unknown = sorted(set(args.modalities) - set(bundle.modalities))
        if unknown:
            raise ValueError(f"--modalities {' '.join(unknown)}: not in the bundle (it has "
                             f"{', '.join(bundle.modalities)})")
    precision = _precision(args, bundle)
    comps = components(bundle, args.modalities)
    needs_int8 = [c for c in comps if component_precision(precision, c) == "int8"]
    _check_calibratable(needs_int8)
    trt = import_tensorrt(args.module)
    calibration = calibration_id = None
    seed = DEFAULT_CALIB_SEED if args.calib_seed is None else args.calib_seed
    if needs_int8:
        calibration = SimCalibration(bundle, samples=args.calib_samples, seed=seed,
                                     modalities=[c.modality for c in needs_int8])
        calibration_id = {"samples": args.calib_samples, "seed": seed}
    bar = _progress(len(comps), disabled=args.no_progress)
    outcome: dict[str, bool] = {}

    def on_component(comp: Any, built: bool) -> None:
        outcome[comp.key] = built
        if bar is not None:
            bar.set_postfix_str(f"{comp.key} {'built' if built else 'cached'}")
            bar.update(1)

    start = time.perf_counter()
    try:
        built = build_engines(bundle, precision=precision, max_batch=args.max_batch,
                              workspace_gib=args.workspace_gib, device=args.device,
                              force=args.force, engines_dir=args.engines_dir,
                              modalities=args.modalities, trt=trt, calibration=calibration,
                              recalibrate=args.recalibrate,
                              calibration_id=calibration_id, dla_core=args.dla_core,
                              progress=on_component)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start
    directory = next(iter(built.values())).parent if built else None
    n_built = sum(outcome.values())
    print(f"{directory}: {n_built} built, {len(built) - n_built} cached, {elapsed:.1f} s")
    for key, path in built.items():
        state = "built" if outcome.get(key) else "cached"
        print(f"  {key:<22} {state:<7} {path.name}")
    rebuilt = [c for c in needs_int8 if outcome.get(c.key)]  # cached ones were checked before
    if rebuilt and directory is not None and not args.no_check:
        _check_int8(bundle, directory, rebuilt, seed + args.calib_samples)
    return 0


def _check_calibratable(comps: Sequence[Any]) -> None:
    """Refuse INT8 for a graph the simulator's calibration samples cannot feed."""
    from omnibind_ros.sim.calibration import PAYLOAD_FIELD

    refused = [c.key for c in comps if c.modality not in PAYLOAD_FIELD]
    if refused:
        names = ", ".join(k.split(":", 1)[-1] for k in refused)
        raise ValueError(f"int8 for {names}: INT8 calibration draws simulated sensor samples, "
                         f"and the simulator has none for {names} (it has "
                         f"{', '.join(PAYLOAD_FIELD)}); build it at fp16 or fp32 with "
                         f"--precision-for")


#: Mean cosine to fp32 below which an INT8 encoder is reported as degraded.
INT8_WARN_COSINE = 0.98
_CHECK_SAMPLES = 32


def _check_int8(bundle: Any, directory: Path, comps: Sequence[Any], first_seed: int) -> None:
    """Print each QDQ encoder's cosine to fp32 on held-out simulated samples.

    A check that cannot run (a missing package, a simulator or ONNX Runtime error) prints a
    note on stderr instead; the engines are built either way.
    """
    from omnibind_ros.core.engine_cache import read_manifest
    records = read_manifest(directory).get("calibration") or {}
    seeds = range(first_seed, first_seed + _CHECK_SAMPLES)
    for comp in comps:
        graph = (records.get(comp.key) or {}).get("qdq")
        if comp.modality is None or not graph or not (directory / graph).is_file():
            continue  # TensorRT's own calibrator: the engine needs a GPU to be checked
        try:
            mean, low = qdq_fidelity(bundle, comp.modality, directory / graph, seeds)
        except Exception as exc:  # noqa: BLE001 - the check is advisory; the build succeeded
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            print(f"omnibind-engines build: note: INT8 check of {comp.key} not run ({message})",
                  file=sys.stderr)
            continue
        line = (f"  {comp.key:<22} int8 vs fp32 cosine mean {mean:.3f}, min {low:.3f} "
                f"({_CHECK_SAMPLES} held-out simulated samples)")
        if mean < INT8_WARN_COSINE:
            line += (f"  WARNING: degraded; consider --precision-for {comp.modality}=fp16")
        print(line)


def _progress(total: int, *, disabled: bool) -> Any:
    if disabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="graph", desc="engines", file=sys.stderr,
                dynamic_ncols=True, leave=False)


def _cmd_list(args: argparse.Namespace) -> int:
    from omnibind_ros.core.engine_cache import cache_dirs, gpu_identity, inspect_cache

    bundle = _load(args.bundle)
    folders = cache_dirs(bundle, args.engines_dir)
    root = args.engines_dir if args.engines_dir is not None else bundle.root / "engines"
    if not folders:
        print(f"no engines under {root}; build them with `omnibind-engines build "
              f"{args.bundle}`")
        return 0
    here = gpu_identity()
    installed = _installed_tensorrt()
    for folder in folders:
        records = inspect_cache(bundle, folder)
        header = records[0].header if records else {}
        gpu, cap = header.get("gpu", "?"), header.get("compute_capability", "?")
        dla = header.get("dla_core")
        mine = "" if (gpu, cap) == here else "  (not this machine's GPU)"
        other_trt = bool(installed) and installed.get(str(header.get("module"))) != str(
            header.get("tensorrt"))
        print(f"{folder}")
        print(f"  GPU {gpu} (sm {cap}), {header.get('module', '?')} "
              f"{header.get('tensorrt', '?')}" + ("" if dla is None else f", DLA core {dla}")
              + mine + ("  (not this TensorRT)" if other_trt else ""))
        for r in records:
            status = r.status
            if other_trt and status == "fresh":
                status += " (not this TensorRT)"
            print(f"  {r.key:<22} {str(r.entry.get('precision', '?')):<5} "
                  f"max batch {r.entry.get('max_batch', '?'):<3} {status}")
    return 0


def _installed_tensorrt() -> dict[str, str]:
    """Version of each importable TensorRT module (``tensorrt``, ``tensorrt_rtx``)."""
    import importlib

    from omnibind_ros.core.engines import TRT_MODULES

    found = {}
    for name in TRT_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112 - not installed or its libraries fail to load
            continue
        found[name] = str(getattr(module, "__version__", "?"))
    return found


def qdq_fidelity(bundle: Any, modality: str, qdq_graph: str | Path,
                 seeds: Iterable[int], world: Any | None = None) -> tuple[float, float]:
    """``(mean, min)`` cosine between the fp32 encoder and its QDQ (INT8) graph.

    Both run with ONNX Runtime on the CPU, on the simulated samples of ``seeds`` (use seeds
    the calibration did not draw).
    """
    import onnxruntime as ort

    from omnibind_ros.sim.calibration import sim_inputs

    x = np.stack(list(sim_inputs(bundle, modality, seeds, world)))
    name = bundle.modalities[modality].input.name
    options = ort.SessionOptions()
    options.log_severity_level = 3
    a, q = (ort.InferenceSession(str(path), sess_options=options,
                                 providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
            for path in (bundle.modalities[modality].file, qdq_graph))
    cos = (a * q).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(q, axis=1) + 1e-12)
    return float(cos.mean()), float(cos.min())


if __name__ == "__main__":
    sys.exit(main())
