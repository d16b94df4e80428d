"""TensorRT engine builder: one engine per ONNX graph of a bundle, cached and never stale.

Works with NVIDIA ``tensorrt`` (the runtime the :mod:`tensorrt backend
<omnibind_ros.core.backends.tensorrt_backend>` deserialises with) or ``tensorrt_rtx``
(TensorRT for RTX: same Builder/OnnxParser API; pip-installable from PyPI and able to build
engines on a machine without a GPU, which is how CI exercises this code for real). The module
is imported when a build starts, never at import; ``module="auto"`` takes ``tensorrt`` when it
is importable, else ``tensorrt_rtx``.

Cache layout: ``<engines_dir or bundle/engines>/<gpu>_sm<cc>_<trt|trtrtx><version>/`` holds
``<component>.engine`` files, ``engines.json`` (header: GPU name, compute capability, module,
version; per component: ONNX SHA-256 of the file as it is now, precision, batch limit,
optimisation profiles, engine SHA-256) and, for ``tensorrt``, ``timing.cache``. An engine is
loaded only when the header and its entry equal what a build now would record and the engine
file's checksum matches; anything else is stale and rebuilt.

Precision: ``fp16`` sets ``BuilderFlag.FP16`` for the encoders and the text encoder; the fusion
head always stays fp32 (fp16 turns its masked-score constant into -inf). ``tensorrt_rtx`` has
no FP16 flag (its networks are strongly typed: precision comes from the ONNX tensors), so its
engines are recorded as fp32. Timing caches are a no-op in TensorRT-RTX and are skipped there.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnibind_ros.core.backends.base import import_runtime
from omnibind_ros.core.bundle import ENGINES_DIR, ModelBundle, TensorSpec
from omnibind_ros.core.errors import BackendUnavailableError

__all__ = ["DEFAULT_MAX_BATCH", "ENGINE_MANIFEST", "TIMING_CACHE", "TRT_MODULES", "Component",
           "build_engines", "components", "engine_cache_dir", "expected_entry", "gpu_identity",
           "gpu_name", "import_tensorrt", "manifest_header", "profile_shapes", "read_manifest",
           "recorded_max_batch", "stale_components"]

ENGINE_MANIFEST = "engines.json"
TIMING_CACHE = "timing.cache"
TRT_MODULES = ("tensorrt", "tensorrt_rtx")
_TRT_HINT = ("TensorRT comes with JetPack on Jetson; on x86 `pip install tensorrt` (a CUDA build "
             "of torch runs the engines); `pip install tensorrt-rtx` builds engines without a GPU")
_FUSION, _TEXT = "fusion", "text"
_CHUNK = 1 << 20
DEFAULT_MAX_BATCH = 16


@dataclass(frozen=True)
class Component:
    """One ONNX graph of a bundle and the inputs that get an optimisation profile."""

    key: str  # "encoder:<modality>", "fusion" or "text"
    onnx: Path
    onnx_rel: str
    inputs: tuple[TensorSpec, ...]
    fp16_allowed: bool

    @property
    def engine_name(self) -> str:
        return self.key.replace(":", "_") + ".engine"


def import_tensorrt(module: str = "auto") -> Any:
    """Import ``tensorrt`` or ``tensorrt_rtx`` (``"auto"``: the first importable, in that order).

    Raises
    ------
    BackendUnavailableError
        The requested module (or, for ``"auto"``, both) cannot be imported.
    """
    if module not in ("auto", *TRT_MODULES):
        raise ValueError(f"module must be 'auto' or one of {TRT_MODULES}, not {module!r}")
    if module != "auto":
        return import_runtime(module, backend="tensorrt", hint=_TRT_HINT)
    try:
        return import_runtime("tensorrt", backend="tensorrt", hint=_TRT_HINT)
    except BackendUnavailableError as first:
        try:
            return import_runtime("tensorrt_rtx", backend="tensorrt", hint=_TRT_HINT)
        except BackendUnavailableError:
            raise first from None


def _module_name(trt: Any) -> str:
    name = str(getattr(trt, "__name__", "tensorrt")).split(".")[0]
    return name if name in TRT_MODULES else "tensorrt"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", str(text).lower()).strip("-") or "unknown"


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """``(name, compute capability "major.minor")`` of CUDA device ``device``.

    torch first, then ``nvidia-smi``; ``("none", "none")`` on a machine without a visible GPU
    (engines built there by ``tensorrt_rtx`` are keyed so no GPU machine mistakes them for its
    own).
    """
    try:
        import torch

        if torch.cuda.is_available() and device < torch.cuda.device_count():
            major, minor = torch.cuda.get_device_capability(device)
            return str(torch.cuda.get_device_name(device)), f"{major}.{minor}"
    except ImportError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap",
                              "--format=csv,noheader", f"--id={device}"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            name, _, cap = out.stdout.strip().splitlines()[0].rpartition(",")
            return (name.strip() or "unknown"), (cap.strip() or "unknown")
    except (OSError, subprocess.SubprocessError):
        pass
    return "none", "none"


def gpu_name(device: int = 0) -> str:
    """Marketing name of CUDA device ``device`` (``"none"`` without a GPU)."""
    return gpu_identity(device)[0]


def manifest_header(trt: Any, gpu: tuple[str, str]) -> dict[str, str]:
    """What every engine in a cache directory was built with (all must match to load one)."""
    return {"gpu": gpu[0], "compute_capability": gpu[1], "module": _module_name(trt),
            "tensorrt": str(trt.__version__)}


def engine_cache_dir(bundle: ModelBundle, *, trt: Any | None = None,
                     gpu: tuple[str, str] | None = None, device: int = 0,
                     engines_dir: str | Path | None = None) -> Path:
    """``<engines_dir or bundle/engines>/<gpu>_sm<cc>_<trt|trtrtx><version>`` (not created)."""
    trt = import_tensorrt() if trt is None else trt
    name, cap = gpu_identity(device) if gpu is None else gpu
    flavour = "trtrtx" if _module_name(trt) == "tensorrt_rtx" else "trt"
    base = Path(engines_dir) if engines_dir is not None else bundle.root / ENGINES_DIR
    return base / f"{_slug(name)}_sm{_slug(cap)}_{flavour}{_slug(str(trt.__version__))}"


def components(bundle: ModelBundle, modalities: Sequence[str] | None = None,
               fusion: bool = True, text: bool = True) -> list[Component]:
    """The bundle's graphs: encoders (all, or ``modalities``), then fusion and text."""
    def rel(path: Path) -> str:
        return path.relative_to(bundle.root).as_posix()

    comps = [Component(f"encoder:{m}", s.file, rel(s.file), (s.input,), True)
             for m, s in bundle.modalities.items() if modalities is None or m in modalities]
    if fusion and bundle.fusion is not None:
        comps.append(Component(_FUSION, bundle.fusion.file, rel(bundle.fusion.file),
                               bundle.fusion.inputs, False))
    if text and bundle.text is not None:
        comps.append(Component(_TEXT, bundle.text.file, rel(bundle.text.file),
                               bundle.text.inputs, True))
    return comps


def _dim_range(axis: int, dim: int | str, bundle: ModelBundle, max_batch: int
               ) -> tuple[int, int, int]:
    if isinstance(dim, int):
        return dim, dim, dim
    if axis == 0:  # batch: optimised for 1, what a node sends
        return 1, 1, max_batch
    if dim == "sequence" and bundle.text is not None:
        longest = bundle.text.max_length
        return 1, min(16, longest), longest
    if dim == "tokens":  # AF head: optimised for every modality live, up to every slot
        live = max(1, len(bundle.modalities))
        slots = len((bundle.fusion.config if bundle.fusion else {}).get("slots", ()))
        return 1, live, max(live, slots)
    raise BackendUnavailableError(f"no TensorRT profile rule for dynamic axis {dim!r}")


def profile_shapes(spec: TensorSpec, bundle: ModelBundle, max_batch: int
                   ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``(min, opt, max)`` shapes of one input's optimisation profile."""
    ranges = [_dim_range(i, d, bundle, max_batch) for i, d in enumerate(spec.shape)]
    return tuple(tuple(r[k] for r in ranges) for k in range(3))  # type: ignore[return-value]


def _sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _fp16_applied(trt: Any, comp: Component, fp16: bool) -> bool:
    return bool(fp16 and comp.fp16_allowed and hasattr(trt.BuilderFlag, "FP16"))


def expected_entry(trt: Any, comp: Component, bundle: ModelBundle, *, fp16: bool,
                   max_batch: int, onnx_sha256: str | None = None) -> dict[str, Any]:
    """The manifest entry a build of ``comp`` now would record (less the engine checksum)."""
    return {"engine": comp.engine_name, "onnx": comp.onnx_rel,
            "onnx_sha256": onnx_sha256 if onnx_sha256 is not None else _sha256(comp.onnx),
            "max_batch": int(max_batch), "fp16": _fp16_applied(trt, comp, fp16),
            "profiles": {s.name: [list(x) for x in profile_shapes(s, bundle, max_batch)]
                         for s in comp.inputs}}


def read_manifest(directory: Path) -> dict[str, Any]:
    """``engines.json`` of a cache directory (``{}`` when missing or unreadable)."""
    try:
        data = json.loads((directory / ENGINE_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _fresh(manifest: dict[str, Any], header: dict[str, str], comp: Component,
           entry: dict[str, Any], directory: Path) -> bool:
    if any(manifest.get(k) != v for k, v in header.items()):
        return False
    recorded = dict(manifest.get("components", {}).get(comp.key) or {})
    engine_sha = recorded.pop("engine_sha256", None)
    return (recorded == entry and engine_sha is not None
            and _sha256(directory / comp.engine_name) == engine_sha)


def recorded_max_batch(manifest: dict[str, Any], comp: Component) -> int:
    """The batch limit ``comp``'s cached engine was built with (the default when none is)."""
    entry = manifest.get("components", {}).get(comp.key) or {}
    return int(entry.get("max_batch", DEFAULT_MAX_BATCH))


def stale_components(trt: Any, bundle: ModelBundle, comps: Sequence[Component], directory: Path,
                     *, fp16: bool, max_batch: int | None, gpu: tuple[str, str]
                     ) -> list[Component]:
    """Components whose cached engine is missing, corrupt or built from anything else.

    ``max_batch=None`` accepts whatever batch limit an engine was built with.
    """
    manifest = read_manifest(directory)
    header = manifest_header(trt, gpu)
    stale = []
    for c in comps:
        limit = recorded_max_batch(manifest, c) if max_batch is None else max_batch
        entry = expected_entry(trt, c, bundle, fp16=fp16, max_batch=limit)
        if not _fresh(manifest, header, c, entry, directory):
            stale.append(c)
    return stale


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a reader never sees half a file


def _build_one(trt: Any, comp: Component, bundle: ModelBundle, entry: dict[str, Any], *,
               workspace_gib: float, timing_cache: Path | None) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(str(trt.__version__).split(".")[0])
    # TensorRT < 10 needs explicit batch requested; 10+ and TensorRT-RTX have only explicit batch.
    explicit = _module_name(trt) == "tensorrt" and major < 10
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if explicit else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(comp.onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailableError(f"TensorRT cannot parse {comp.onnx}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if entry["fp16"]:
        config.set_flag(trt.BuilderFlag.FP16)
    cache = None
    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    for name, (lo, opt, hi) in entry["profiles"].items():
        if name in names:  # the parser drops inputs the graph never reads
            profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendUnavailableError(f"TensorRT failed to build an engine from {comp.onnx} "
                                      "(see the TensorRT log above)")
    if cache is not None:
        _atomic_write(timing_cache, bytes(cache.serialize()))
    return bytes(serialized)


def build_engines(bundle: ModelBundle, *, fp16: bool = True,
                  max_batch: int = DEFAULT_MAX_BATCH,
                  workspace_gib: float = 2.0, device: int = 0, force: bool = False,
                  engines_dir: str | Path | None = None,
                  modalities: Sequence[str] | None = None, module: str = "auto",
                  trt: Any | None = None) -> dict[str, Path]:
    """Build (or reuse) one TensorRT engine per ONNX graph of ``bundle``.

    Parameters
    ----------
    bundle : the loaded bundle.
    fp16 : allow fp16 kernels (encoders and text; the fusion head stays fp32).
    max_batch : largest batch of the optimisation profile (bigger calls are chunked).
    workspace_gib : builder workspace limit.
    device : CUDA device whose name and compute capability key the cache.
    force : rebuild even when a cached engine is fresh.
    engines_dir : cache root instead of ``<bundle>/engines`` (e.g. for a read-only bundle).
    modalities : only these encoders (default all); fusion and text are always built.
    module : ``"tensorrt"``, ``"tensorrt_rtx"`` or ``"auto"`` (see :func:`import_tensorrt`).
    trt : an already imported TensorRT module (overrides ``module``).

    Returns
    -------
    component (``"encoder:<modality>"``, ``"fusion"``, ``"text"``) -> engine path.

    Raises
    ------
    BackendUnavailableError
        No TensorRT module is importable, or a graph cannot be parsed/built.
    """
    trt = import_tensorrt(module) if trt is None else trt
    gpu = gpu_identity(device)
    directory = engine_cache_dir(bundle, trt=trt, gpu=gpu, engines_dir=engines_dir)
    directory.mkdir(parents=True, exist_ok=True)
    header = manifest_header(trt, gpu)
    manifest = read_manifest(directory)
    if any(manifest.get(k) != v for k, v in header.items()):
        manifest = {}  # another GPU/version wrote it (slug collision): nothing there is ours
    entries = manifest.setdefault("components", {})
    timing = directory / TIMING_CACHE if _module_name(trt) == "tensorrt" else None
    built = {}
    for comp in components(bundle, modalities):
        entry = expected_entry(trt, comp, bundle, fp16=fp16, max_batch=max_batch)
        path = directory / comp.engine_name
        if force or not _fresh(manifest | header, header, comp, entry, directory):
            data = _build_one(trt, comp, bundle, entry, workspace_gib=workspace_gib,
                              timing_cache=timing)
            _atomic_write(path, data)
            entries[comp.key] = {**entry, "engine_sha256": hashlib.sha256(data).hexdigest()}
        built[comp.key] = path
    manifest.update(header)
    _atomic_write(directory / ENGINE_MANIFEST,
                  json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
    return built
