"""TensorRT backend: engines built from the bundle's ONNX files on the target GPU.

A TensorRT engine is only valid for the GPU model and TensorRT version that built it; the
builder, its cache (keyed by GPU name + compute capability + TensorRT version + ONNX SHA-256;
a stale engine is rebuilt, never loaded) and its optimisation profiles live in
:mod:`omnibind_ros.core.engines`. This backend loads engines with ``tensorrt`` only: engines
built by ``tensorrt_rtx`` (which CI uses to test the builder without a GPU) belong to the
TensorRT-RTX runtime and are cached apart from them.

Needs ``tensorrt`` and, for device buffers and the CUDA stream, ``torch`` with CUDA (Jetson and
desktop images ship both). Both are imported when a backend or a build starts, never at import.
The fusion head is always built in fp32: it is tiny, and fp16 turns its masked-score constant
into -inf.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omnibind_ros.core.backends.base import BackendBase, import_runtime
from omnibind_ros.core.bundle import ModelBundle
from omnibind_ros.core.engines import (
    DEFAULT_MAX_BATCH,
    ENGINE_MANIFEST,
    build_engines,
    components,
    engine_cache_dir,
    gpu_identity,
    gpu_name,
    import_tensorrt,
    read_manifest,
    recorded_max_batch,
    stale_components,
)
from omnibind_ros.core.errors import BackendUnavailableError

__all__ = ["ENGINE_MANIFEST", "TensorRTBackend", "build_engines", "engine_cache_dir",
           "gpu_name"]

_FUSION, _TEXT = "fusion", "text"


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
    max_batch : batch limit of engines built here (default: accept the cached engines' limit,
        else build with :data:`~omnibind_ros.core.engines.DEFAULT_MAX_BATCH`).
    engines_dir : engine cache root (default ``<bundle>/engines``).
    modalities, fusion, text : what to load.
    """

    name = "tensorrt"

    def __init__(self, bundle: ModelBundle, *, device: int = 0, fp16: bool = True,
                 build_missing: bool = False, max_batch: int | None = None,
                 engines_dir: str | Path | None = None, modalities: Sequence[str] | None = None,
                 fusion: bool = True, text: bool = True) -> None:
        super().__init__(bundle, modalities)
        trt = import_tensorrt("tensorrt")
        torch = import_runtime("torch", backend=self.name,
                               hint="the tensorrt backend uses torch.cuda for device buffers")
        if not torch.cuda.is_available():
            raise BackendUnavailableError("the tensorrt backend needs a CUDA GPU; torch sees "
                                          "none (check the driver and CUDA_VISIBLE_DEVICES)")
        self._device = torch.device("cuda", device)
        comps = components(bundle, self.modalities, fusion, text)
        gpu = gpu_identity(device)
        directory = engine_cache_dir(bundle, trt=trt, gpu=gpu, engines_dir=engines_dir)
        stale = stale_components(trt, bundle, comps, directory, fp16=fp16, max_batch=max_batch,
                                 gpu=gpu)
        if stale and not build_missing:
            raise BackendUnavailableError(
                f"no up-to-date TensorRT engines for {[c.key for c in stale]} in {directory}; "
                "build them once with omnibind_train.export.build_tensorrt_engines(bundle_dir) "
                "or create the backend with build_missing=True")
        if stale:
            limit = DEFAULT_MAX_BATCH if max_batch is None else max_batch
            build_engines(bundle, fp16=fp16, max_batch=limit, device=device,
                          engines_dir=engines_dir, modalities=self.modalities, trt=trt)
        manifest = read_manifest(directory)
        self._runners = {c.key: _EngineRunner(trt, torch, directory / c.engine_name,
                                              self._device, recorded_max_batch(manifest, c))
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
