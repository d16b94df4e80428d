"""TensorRT backend: engines built from the bundle's ONNX files on the target GPU.

A TensorRT engine is only valid for the GPU model and TensorRT version that built it; the
builder, its cache (keyed by GPU name + compute capability + TensorRT version + ONNX SHA-256;
a stale engine is rebuilt, never loaded) and its optimisation profiles live in
:mod:`omnibind_ros.core.engines`. This backend loads engines with ``tensorrt`` only: engines
built by ``tensorrt_rtx`` (which CI uses to test the builder without a GPU) belong to the
TensorRT-RTX runtime and are cached apart from them.

Needs ``tensorrt`` and, for device buffers and the CUDA stream, ``torch`` with CUDA (Jetson and
desktop images ship both). Both are imported when a backend or a build starts, never at import.
Engines of any precision the builder makes (fp32, fp16, int8) load the same way; inputs and
outputs pass through pinned host buffers with asynchronous copies on the engine's stream, and
device buffers are allocated once for the largest profile shape and reused. The fusion head is
always built in fp32: it is tiny, and fp16 turns its masked-score constant into -inf.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omnibind_ros.core.backends.base import BackendBase, import_runtime
from omnibind_ros.core.backends.cuda_buffers import BufferPool
from omnibind_ros.core.bundle import ModelBundle
from omnibind_ros.core.engines import (
    DEFAULT_MAX_BATCH,
    ENGINE_MANIFEST,
    Precision,
    build_engines,
    components,
    engine_cache_dir,
    gpu_identity,
    gpu_name,
    import_tensorrt,
    read_manifest,
    recorded_max_batch,
    resolve_precision,
    stale_components,
)
from omnibind_ros.core.errors import BackendUnavailableError

__all__ = ["ENGINE_MANIFEST", "TensorRTBackend", "build_engines", "engine_cache_dir",
           "gpu_name"]

_FUSION, _TEXT = "fusion", "text"


class _EngineRunner:
    """One deserialised engine + execution context; calls are serialised by a lock.

    Inputs go host -> pinned host buffer -> device buffer and the first output back the same
    way, all copies asynchronous on the runner's CUDA stream, which is synchronised once per
    call. Buffers are allocated for the optimisation profile's largest shapes up front and
    reused (:class:`~omnibind_ros.core.backends.cuda_buffers.BufferPool`).
    """

    def __init__(self, trt: Any, torch: Any, path: Path, device: Any, max_batch: int,
                 dla_core: int | None = None) -> None:
        self._torch = torch
        self.device = device
        self.max_batch = max_batch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        if dla_core is not None:
            runtime.DLA_core = int(dla_core)
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
        self.buffers = BufferPool(torch, device, pin_memory=True)
        self._reserve_max_shapes()
        self._lock = threading.Lock()

    def _reserve_max_shapes(self) -> None:
        """Size every buffer for the profile's max input shapes (grown later if needed)."""
        try:
            for name in self.inputs:
                largest = tuple(self.engine.get_tensor_profile_shape(name, 0)[2])
                self.context.set_input_shape(name, largest)
                self.buffers.reserve(name, largest)
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                if all(d >= 0 for d in shape):
                    self.buffers.reserve(name, shape)
        except (AttributeError, TypeError, IndexError):
            pass  # an engine without profiles: buffers grow on demand

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run in chunks of at most ``max_batch`` along axis 0; returns the first output."""
        total = next(iter(feeds.values())).shape[0]
        if total <= self.max_batch:
            return self._run(feeds)
        parts = [self._run({k: v[i:i + self.max_batch] for k, v in feeds.items()})
                 for i in range(0, total, self.max_batch)]
        return np.concatenate(parts, axis=0)

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        with self._lock, torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            for name in self.inputs:
                array = np.asarray(feeds[name])
                host = self.buffers.host(name, array.shape, self.np_dtypes[name])
                np.copyto(host.numpy(), array, casting="unsafe")
                dev = self.buffers.device(name, array.shape, self.np_dtypes[name])
                dev.copy_(host, non_blocking=True)  # pinned -> device, on self.stream
                self.context.set_input_shape(name, tuple(array.shape))
                self.context.set_tensor_address(name, dev.data_ptr())
            outputs = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                outputs[name] = self.buffers.device(name, shape, self.np_dtypes[name])
                self.context.set_tensor_address(name, outputs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed (see the TensorRT log)")
            first = self.outputs[0]
            out = self.buffers.host(first, tuple(outputs[first].shape), self.np_dtypes[first])
            out.copy_(outputs[first], non_blocking=True)
            self.stream.synchronize()
            # a copy: the pinned buffer is overwritten by the next call
            return np.array(out.numpy(), dtype=np.float32)


class TensorRTBackend(BackendBase):
    """Run a bundle's graphs as TensorRT engines on a CUDA GPU (or a Jetson's DLA).

    Parameters
    ----------
    bundle : the loaded bundle.
    device : CUDA device index.
    precision : which cached engines to use / build: ``"fp16"`` (default), ``"fp32"`` or
        ``"int8"``, or a mapping per component (see
        :func:`~omnibind_ros.core.engines.component_precision`). INT8 engines need calibration
        data, so they are built beforehand (``omnibind-engines build BUNDLE --precision int8``);
        ``build_missing`` rebuilds a missing or stale INT8 engine only from a calibration cache
        in the cache folder made from the same ONNX file and preprocessing config (e.g. when
        the engine file was lost), and raises :class:`BackendUnavailableError` without one.
    fp16 : the older spelling (``True``: ``"fp16"``, ``False``: ``"fp32"``).
    build_missing : build engines that are missing or stale (minutes per graph) instead of
        raising :class:`BackendUnavailableError`.
    max_batch : batch limit of engines built here (default: accept the cached engines' limit,
        else build with :data:`~omnibind_ros.core.engines.DEFAULT_MAX_BATCH`).
    engines_dir : engine cache root (default ``<bundle>/engines``).
    dla_core : use the engines built for this DLA core (Jetson; the encoders run there).
    modalities, fusion, text : what to load.
    """

    name = "tensorrt"

    def __init__(self, bundle: ModelBundle, *, device: int = 0,
                 precision: Precision | None = None, fp16: bool | None = None,
                 build_missing: bool = False, max_batch: int | None = None,
                 engines_dir: str | Path | None = None, dla_core: int | None = None,
                 modalities: Sequence[str] | None = None, fusion: bool = True,
                 text: bool = True) -> None:
        super().__init__(bundle, modalities)
        if precision == "bf16":  # a torch_cuda precision a shared config may carry
            raise BackendUnavailableError("TensorRT engines are built fp32, fp16 or int8, "
                                          "not bf16")
        precision = resolve_precision(precision, fp16)
        trt = import_tensorrt("tensorrt")
        torch = import_runtime("torch", backend=self.name,
                               hint="the tensorrt backend uses torch.cuda for device buffers")
        if not torch.cuda.is_available():
            raise BackendUnavailableError("the tensorrt backend needs a CUDA GPU; torch sees "
                                          "none (check the driver and CUDA_VISIBLE_DEVICES)")
        self._device = torch.device("cuda", device)
        comps = components(bundle, self.modalities, fusion, text)
        gpu = gpu_identity(device)
        directory = engine_cache_dir(bundle, trt=trt, gpu=gpu, engines_dir=engines_dir,
                                     dla_core=dla_core)
        stale = stale_components(trt, bundle, comps, directory, precision=precision,
                                 max_batch=max_batch, gpu=gpu, dla_core=dla_core)
        if stale and not build_missing:
            raise BackendUnavailableError(
                f"no up-to-date TensorRT engines for {[c.key for c in stale]} in {directory}; "
                "build them once with `omnibind-engines build BUNDLE` (or "
                "omnibind_train.export.build_tensorrt_engines(bundle_dir)) or create the "
                "backend with build_missing=True")
        if stale:
            limit = DEFAULT_MAX_BATCH if max_batch is None else max_batch
            try:
                build_engines(bundle, precision=precision, max_batch=limit, device=device,
                              engines_dir=engines_dir, modalities=self.modalities, trt=trt,
                              dla_core=dla_core)
            except ValueError as exc:  # int8 without calibration, fp32 on DLA
                raise BackendUnavailableError(f"cannot build the missing engines: {exc}"
                                              ) from exc
        manifest = read_manifest(directory)
        entries = manifest.get("components", {})
        self._runners = {c.key: _EngineRunner(trt, torch, directory / c.engine_name,
                                              self._device, recorded_max_batch(manifest, c),
                                              (entries.get(c.key) or {}).get("dla_core"))
                         for c in comps}
        self.precision = precision
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
