"""TensorRT backend: engines built from the bundle's ONNX files on the target GPU.

A TensorRT engine is only valid for the GPU model and TensorRT version that built it, so engines
are cached under ``<bundle>/engines/<gpu>_<tensorrt>/`` (``engines.json`` there records the
ONNX checksum, precision and batch limit each engine was built with; a changed ONNX rebuilds).
Every engine has one optimisation profile: batch 1..``max_batch`` (optimised for 1, what a
node sends), text length 1..``max_length`` and fusion tokens 1..number of modalities.

Needs ``tensorrt`` and, for device buffers and the CUDA stream, ``torch`` with CUDA (Jetson and
desktop images ship both). Both are imported when a backend or a build starts, never at import.
The fusion head is always built in fp32: it is tiny, and fp16 turns its masked-score constant
into -inf.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omnibind_ros.core.backends.base import BackendBase, import_runtime
from omnibind_ros.core.bundle import ENGINES_DIR, ModelBundle, TensorSpec
from omnibind_ros.core.errors import BackendUnavailableError

__all__ = ["ENGINE_MANIFEST", "TensorRTBackend", "build_engines", "engine_cache_dir",
           "gpu_name"]

ENGINE_MANIFEST = "engines.json"
_TRT_HINT = ("TensorRT comes with JetPack on Jetson; on x86 install it from NVIDIA "
             "(pip install tensorrt needs NVIDIA's package index) and a CUDA build of torch")
_FUSION, _TEXT = "fusion", "text"


@dataclass(frozen=True)
class _Component:
    key: str  # "encoder:<modality>", "fusion" or "text"
    onnx: Path
    onnx_rel: str
    inputs: tuple[TensorSpec, ...]
    fp16_allowed: bool

    @property
    def engine_name(self) -> str:
        return self.key.replace(":", "_") + ".engine"


def _import_tensorrt() -> Any:
    return import_runtime("tensorrt", backend="tensorrt", hint=_TRT_HINT)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


def gpu_name(device: int = 0) -> str:
    """Marketing name of CUDA device ``device`` (torch, else nvidia-smi, else ``gpu<N>``)."""
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(device))
    except ImportError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader",
                              f"--id={device}"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return f"gpu{device}"


def engine_cache_dir(bundle: ModelBundle, *, device: int = 0, trt_version: str | None = None,
                     engines_dir: str | Path | None = None) -> Path:
    """``<engines_dir or bundle/engines>/<gpu>_<tensorrt version>`` (not created)."""
    if trt_version is None:
        trt_version = str(_import_tensorrt().__version__)
    base = Path(engines_dir) if engines_dir is not None else bundle.root / ENGINES_DIR
    return base / f"{_slug(gpu_name(device))}_trt{_slug(trt_version)}"


def _components(bundle: ModelBundle, modalities: Sequence[str] | None = None,
                fusion: bool = True, text: bool = True) -> list[_Component]:
    def rel(path: Path) -> str:
        return path.relative_to(bundle.root).as_posix()

    comps = [_Component(f"encoder:{m}", s.file, rel(s.file), (s.input,), True)
             for m, s in bundle.modalities.items() if modalities is None or m in modalities]
    if fusion and bundle.fusion is not None:
        comps.append(_Component(_FUSION, bundle.fusion.file, rel(bundle.fusion.file),
                                bundle.fusion.inputs, False))
    if text and bundle.text is not None:
        comps.append(_Component(_TEXT, bundle.text.file, rel(bundle.text.file),
                                bundle.text.inputs, True))
    return comps


def _dim_range(axis: int, dim: int | str, bundle: ModelBundle, max_batch: int
               ) -> tuple[int, int, int]:
    if isinstance(dim, int):
        return dim, dim, dim
    if axis == 0:
        return 1, 1, max_batch
    if dim == "sequence" and bundle.text is not None:
        longest = bundle.text.max_length
        return 1, min(16, longest), longest
    if dim == "tokens":
        live = max(1, len(bundle.modalities))
        slots = len((bundle.fusion.config if bundle.fusion else {}).get("slots", ()))
        return 1, live, max(live, slots)
    raise BackendUnavailableError(f"no TensorRT profile rule for dynamic axis {dim!r}")


def _profile(spec: TensorSpec, bundle: ModelBundle, max_batch: int
             ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    ranges = [_dim_range(i, d, bundle, max_batch) for i, d in enumerate(spec.shape)]
    return tuple(tuple(r[k] for r in ranges) for k in range(3))  # type: ignore[return-value]


def _build_engine(trt: Any, comp: _Component, bundle: ModelBundle, *, fp16: bool,
                  max_batch: int, workspace_gib: float) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(str(trt.__version__).split(".")[0])
    # TensorRT < 10 needs explicit batch requested; 10 has only explicit batch (flag removed).
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(comp.onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailableError(f"TensorRT cannot parse {comp.onnx}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16 and comp.fp16_allowed and getattr(builder, "platform_has_fast_fp16", True):
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    for spec in comp.inputs:
        if spec.name in names:  # the parser drops inputs the graph never reads
            profile.set_shape(spec.name, *_profile(spec, bundle, max_batch))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendUnavailableError(f"TensorRT failed to build an engine from {comp.onnx} "
                                      "(see the TensorRT log above)")
    return bytes(serialized)


def _read_manifest(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / ENGINE_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _entry(comp: _Component, bundle: ModelBundle, fp16: bool, max_batch: int
           ) -> dict[str, Any]:
    return {"engine": comp.engine_name, "onnx": comp.onnx_rel,
            "onnx_sha256": bundle.files.get(comp.onnx_rel), "max_batch": max_batch,
            "fp16": bool(fp16 and comp.fp16_allowed)}


def _usable(manifest: dict[str, Any], comp: _Component, bundle: ModelBundle, fp16: bool,
            directory: Path) -> bool:
    """A cached engine fits when it was built from this ONNX with this precision."""
    entry = manifest.get(comp.key) or {}
    return (entry.get("onnx_sha256") == bundle.files.get(comp.onnx_rel)
            and entry.get("fp16") == bool(fp16 and comp.fp16_allowed)
            and (directory / comp.engine_name).is_file())


def build_engines(bundle: ModelBundle, *, fp16: bool = True, max_batch: int = 16,
                  workspace_gib: float = 2.0, device: int = 0, force: bool = False,
                  engines_dir: str | Path | None = None,
                  modalities: Sequence[str] | None = None) -> dict[str, Path]:
    """Build (or reuse) one TensorRT engine per ONNX graph of ``bundle``.

    Parameters
    ----------
    bundle : the loaded bundle.
    fp16 : allow fp16 kernels (encoders and text; the fusion head stays fp32).
    max_batch : largest batch of the optimisation profile (bigger calls are chunked).
    workspace_gib : builder workspace limit.
    device : CUDA device whose name keys the cache.
    force : rebuild even when a cached engine matches.
    engines_dir : cache root instead of ``<bundle>/engines`` (e.g. for a read-only bundle).
    modalities : only these encoders (default all); fusion and text are always built.

    Returns
    -------
    component (``"encoder:<modality>"``, ``"fusion"``, ``"text"``) -> engine path.

    Raises
    ------
    BackendUnavailableError
        TensorRT is not installed, or cannot parse/build a graph.
    """
    trt = _import_tensorrt()
    directory = engine_cache_dir(bundle, device=device, trt_version=str(trt.__version__),
                                 engines_dir=engines_dir)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(directory)
    built = {}
    for comp in _components(bundle, modalities):
        entry = _entry(comp, bundle, fp16, max_batch)
        path = directory / comp.engine_name
        if force or manifest.get(comp.key) != entry or not path.is_file():
            data = _build_engine(trt, comp, bundle, fp16=fp16, max_batch=max_batch,
                                 workspace_gib=workspace_gib)
            tmp = path.with_suffix(f".tmp-{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # a reader never sees half an engine
            manifest[comp.key] = entry
        built[comp.key] = path
    manifest["tensorrt"] = str(trt.__version__)
    manifest["gpu"] = gpu_name(device)
    tmp = directory / f"{ENGINE_MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, directory / ENGINE_MANIFEST)
    return built


_NP_TO_TORCH_NAMES = {"float32": "float32", "float16": "float16", "int64": "int64",
                      "int32": "int32", "bool": "bool", "int8": "int8", "uint8": "uint8"}


class _EngineRunner:
    """One deserialised engine + execution context; calls are serialised by a lock."""

    def __init__(self, trt: Any, torch: Any, path: Path, device: Any, max_batch: int) -> None:
        self._torch = torch
        self.device = device
        self.max_batch = max_batch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BackendUnavailableError(f"TensorRT cannot deserialise {path}; rebuild it")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        self.np_dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n)))
                          for n in names}
        self.stream = torch.cuda.Stream(device=device)
        self._lock = threading.Lock()

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run in chunks of at most ``max_batch`` along axis 0; returns the first output."""
        total = next(iter(feeds.values())).shape[0]
        if total <= self.max_batch:
            return self._run(feeds)
        parts = [self._run({k: v[i:i + self.max_batch] for k, v in feeds.items()})
                 for i in range(0, total, self.max_batch)]
        return np.concatenate(parts, axis=0)

    def _torch_dtype(self, name: str) -> Any:
        return getattr(self._torch, _NP_TO_TORCH_NAMES[self.np_dtypes[name].name])

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        with self._lock, torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            keep = []  # device inputs must outlive the asynchronous execution
            for name in self.inputs:
                host = np.ascontiguousarray(feeds[name], dtype=self.np_dtypes[name])
                dev = torch.from_numpy(host).to(self.device)
                keep.append(dev)
                self.context.set_input_shape(name, tuple(host.shape))
                self.context.set_tensor_address(name, dev.data_ptr())
            outputs = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=self._torch_dtype(name),
                                            device=self.device)
                self.context.set_tensor_address(name, outputs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed (see the TensorRT log)")
            self.stream.synchronize()
            return outputs[self.outputs[0]].float().cpu().numpy()


class TensorRTBackend(BackendBase):
    """Run a bundle's graphs as TensorRT engines on a CUDA GPU.

    Parameters
    ----------
    bundle : the loaded bundle.
    device : CUDA device index.
    fp16 : which cached engines to use / build (fp16 or fp32 encoders).
    build_missing : build engines that are missing or stale (minutes per graph) instead of
        raising :class:`BackendUnavailableError`.
    max_batch : batch limit of engines built here.
    engines_dir : engine cache root (default ``<bundle>/engines``).
    modalities, fusion, text : what to load.
    """

    name = "tensorrt"

    def __init__(self, bundle: ModelBundle, *, device: int = 0, fp16: bool = True,
                 build_missing: bool = False, max_batch: int = 16,
                 engines_dir: str | Path | None = None, modalities: Sequence[str] | None = None,
                 fusion: bool = True, text: bool = True) -> None:
        super().__init__(bundle, modalities)
        trt = _import_tensorrt()
        torch = import_runtime("torch", backend=self.name,
                               hint="the tensorrt backend uses torch.cuda for device buffers")
        if not torch.cuda.is_available():
            raise BackendUnavailableError("the tensorrt backend needs a CUDA GPU; torch sees "
                                          "none (check the driver and CUDA_VISIBLE_DEVICES)")
        self._device = torch.device("cuda", device)
        comps = _components(bundle, self.modalities, fusion, text)
        directory = engine_cache_dir(bundle, device=device, trt_version=str(trt.__version__),
                                     engines_dir=engines_dir)
        manifest = _read_manifest(directory)
        stale = [c for c in comps if not _usable(manifest, c, bundle, fp16, directory)]
        if stale and not build_missing:
            raise BackendUnavailableError(
                f"no up-to-date TensorRT engines for {[c.key for c in stale]} in {directory}; "
                "build them once with omnibind_train.export.build_tensorrt_engines(bundle_dir) "
                "or create the backend with build_missing=True")
        if stale:
            build_engines(bundle, fp16=fp16, max_batch=max_batch, device=device,
                          engines_dir=engines_dir, modalities=self.modalities)
            manifest = _read_manifest(directory)
        self._runners = {c.key: _EngineRunner(trt, torch, directory / c.engine_name,
                                              self._device, int(manifest[c.key]["max_batch"]))
                         for c in comps}
        self.engine_dir = directory

    @property
    def providers(self) -> tuple[str, ...]:
        return (f"cuda:{self._device.index}",)

    def close(self) -> None:
        self._runners.clear()

    def _runner(self, key: str) -> _EngineRunner:
        if key not in self._runners:
            raise ValueError(f"this tensorrt backend was created without {key!r}")
        return self._runners[key]

    def _run_encoder(self, modality: str, batch: np.ndarray) -> np.ndarray:
        spec = self.bundle.modalities[modality]
        return self._runner(f"encoder:{modality}")({spec.input.name: batch})

    def _run_fusion(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        names = [s.name for s in self.bundle.fusion.inputs]
        return self._feed(self._runner(_FUSION), dict(zip(names, (tokens, mask), strict=True)))

    def _run_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        names = [s.name for s in self.bundle.text.inputs]
        feeds = dict(zip(names, (input_ids, attention_mask), strict=True))
        return self._feed(self._runner(_TEXT), feeds)

    @staticmethod
    def _feed(runner: _EngineRunner, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return runner({k: v for k, v in feeds.items() if k in runner.inputs})
