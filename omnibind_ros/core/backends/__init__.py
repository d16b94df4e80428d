"""Inference backends: run a model bundle's graphs on numpy arrays.

====================  ==============================================  ==========================
name                  runs                                            needs
====================  ==============================================  ==========================
onnxruntime           the ONNX files (CPU; CUDA EP when built in)     onnxruntime (+ tokenizers)
onnxruntime_cuda      the ONNX files on ORT's CUDA EP, never the CPU  onnxruntime-gpu
onnxruntime_tensorrt  the ONNX files on ORT's TensorRT EP (+ CUDA)    onnxruntime-gpu, TensorRT
tensorrt              engines built from the ONNX files, per GPU      tensorrt, torch with CUDA
torch_cuda            the torch modules on a GPU: FP16/BF16, CUDA     torch with CUDA,
                      graphs per input shape, channels-last           omnibind_train
torch                 modules rebuilt from configs + safetensors      torch, omnibind_train
====================  ==============================================  ==========================

Every backend satisfies :class:`InferenceBackend`; :func:`create_backend` picks one by name and
can fall back to ONNX Runtime; ``"auto"`` takes the first that runs here in :data:`AUTO_ORDER`.
``backend.name`` says which one you got. Nothing here imports a runtime until a backend is
created.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any

from omnibind_ros.core.backends.base import BackendBase, InferenceBackend, embed_labels
from omnibind_ros.core.bundle import ModelBundle, load_bundle
from omnibind_ros.core.errors import BackendUnavailableError

__all__ = ["BACKENDS", "BackendBase", "InferenceBackend", "backend_class", "create_backend",
           "embed_labels"]

_log = logging.getLogger(__name__)

#: Canonical backend names and their aliases.
BACKENDS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime", "ort", "onnx"),
    "onnxruntime_cuda": ("onnxruntime_cuda", "ort_cuda", "onnxruntime-cuda"),
    "onnxruntime_tensorrt": ("onnxruntime_tensorrt", "ort_tensorrt", "ort_trt",
                             "onnxruntime-tensorrt"),
    "tensorrt": ("tensorrt", "trt"),
    "torch_cuda": ("torch_cuda", "cuda", "torch-cuda", "pytorch_cuda"),
    "torch": ("torch", "pytorch"),
}
#: Order tried by ``create_backend("auto")``: fastest first.
AUTO_ORDER = ("tensorrt", "onnxruntime_tensorrt", "onnxruntime_cuda", "torch_cuda", "onnxruntime",
              "torch")


def _canonical(name: str) -> str:
    for canonical, aliases in BACKENDS.items():
        if name.lower() in aliases:
            return canonical
    valid = sorted(a for aliases in BACKENDS.values() for a in aliases) + ["auto"]
    raise ValueError(f"unknown inference backend {name!r}; expected one of {valid}")


def backend_class(name: str) -> type[BackendBase]:
    """The class of backend ``name`` (imports only the module holding it)."""
    canonical = _canonical(name)
    if canonical == "onnxruntime":
        from omnibind_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend
    if canonical == "onnxruntime_cuda":
        from omnibind_ros.core.backends.onnxruntime_backend import OnnxRuntimeCudaBackend

        return OnnxRuntimeCudaBackend
    if canonical == "onnxruntime_tensorrt":
        from omnibind_ros.core.backends.onnxruntime_backend import OnnxRuntimeTensorRTBackend

        return OnnxRuntimeTensorRTBackend
    if canonical == "tensorrt":
        from omnibind_ros.core.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend
    if canonical == "torch_cuda":
        from omnibind_ros.core.backends.torch_cuda_backend import TorchCudaBackend

        return TorchCudaBackend
    from omnibind_ros.core.backends.torch_backend import TorchBackend

    return TorchBackend


def _accepted(name: str) -> set[str]:
    return set(inspect.signature(backend_class(name).__init__).parameters) - {"self", "bundle"}


def _check_options(names: tuple[str, ...], opts: dict[str, Any]) -> None:
    known = set().union(*(_accepted(n) for n in names))
    unknown = sorted(set(opts) - known)
    if unknown:
        raise TypeError(f"option(s) {unknown} are not taken by the {'/'.join(names)} "
                        f"backend(s); known: {sorted(known)}")


def _construct(name: str, bundle: ModelBundle, opts: dict[str, Any]) -> BackendBase:
    # Each backend gets the options it takes: a config may carry fp16 for TensorRT and threads
    # for the ONNX Runtime fallback side by side.
    accepted = _accepted(name)
    return backend_class(name)(bundle, **{k: v for k, v in opts.items() if k in accepted})


def create_backend(name: str, bundle: ModelBundle | str, *, fallback: bool = False,
                   **opts: Any) -> BackendBase:
    """Create an inference backend.

    Parameters
    ----------
    name : ``"onnxruntime"`` (``"ort"``), ``"onnxruntime_cuda"`` (``"ort_cuda"``),
        ``"onnxruntime_tensorrt"`` (``"ort_trt"``), ``"tensorrt"`` (``"trt"``),
        ``"torch_cuda"`` (``"cuda"``), ``"torch"``, or ``"auto"`` (the first of
        :data:`AUTO_ORDER` that can run here: tensorrt, onnxruntime_tensorrt, onnxruntime_cuda,
        torch_cuda, onnxruntime, torch).
    bundle : a loaded bundle or a path to one (see :func:`~omnibind_ros.core.bundle.load_bundle`).
    fallback : when ``name`` cannot run here, log a warning and use ONNX Runtime instead of
        raising. Check ``backend.name`` for what you got.
    **opts : backend options (``threads``, ``providers``, ``device``, ``fp16``, ``precision``,
        ``cuda_graphs``, ``engines_dir``, ``build_missing``, ``modalities``...). Each backend
        receives the ones it takes; an option no candidate backend takes is a ``TypeError``.

    Raises
    ------
    BackendUnavailableError
        The backend cannot run here (runtime not installed, no GPU, no engines or weights) and
        ``fallback`` is False, or the fallback cannot run either. The message says what is
        missing.
    ValueError
        Unknown backend name.
    TypeError
        An option none of the candidate backends takes.
    """
    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(bundle)
    if name.lower() == "auto":
        _check_options(AUTO_ORDER, opts)
        return _create_auto(bundle, opts)
    canonical = _canonical(name)
    _check_options((canonical, "onnxruntime") if fallback else (canonical,), opts)
    try:
        return _construct(canonical, bundle, opts)
    except BackendUnavailableError as exc:
        if not fallback or canonical == "onnxruntime":
            raise
        _log.warning("%s backend unavailable (%s); falling back to onnxruntime", canonical, exc)
        try:
            return _construct("onnxruntime", bundle, opts)
        except BackendUnavailableError as fallback_exc:
            raise BackendUnavailableError(
                f"{canonical} backend unavailable ({exc}) and the onnxruntime fallback failed "
                f"too ({fallback_exc})") from fallback_exc


def _create_auto(bundle: ModelBundle, opts: dict[str, Any]) -> BackendBase:
    reasons = []
    for name in AUTO_ORDER:
        try:
            return _construct(name, bundle, opts)
        except BackendUnavailableError as exc:
            reasons.append(f"{name}: {exc}")
    raise BackendUnavailableError("no inference backend can run here: " + "; ".join(reasons))
