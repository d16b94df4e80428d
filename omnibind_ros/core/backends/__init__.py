"""Inference backends: run a model bundle's graphs on numpy arrays.

=============  ===============================================  ===============================
name           runs                                             needs
=============  ===============================================  ===============================
onnxruntime    the ONNX files (CPU; CUDA/TensorRT EPs if built)  onnxruntime (+ tokenizers)
tensorrt       engines built from the ONNX files, per GPU       tensorrt, torch with CUDA
torch          modules rebuilt from configs + safetensors       torch, omnibind_train
=============  ===============================================  ===============================

Every backend satisfies :class:`InferenceBackend`; :func:`create_backend` picks one by name and
can fall back to ONNX Runtime. Nothing here imports a runtime until a backend is created.
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
    "tensorrt": ("tensorrt", "trt"),
    "torch": ("torch", "pytorch"),
}
#: Order tried by ``create_backend("auto")``.
AUTO_ORDER = ("tensorrt", "onnxruntime", "torch")


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
    if canonical == "tensorrt":
        from omnibind_ros.core.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend
    from omnibind_ros.core.backends.torch_backend import TorchBackend

    return TorchBackend


def _construct(name: str, bundle: ModelBundle, opts: dict[str, Any], *, strict: bool
               ) -> BackendBase:
    cls = backend_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    if strict:
        unknown = sorted(set(opts) - set(accepted))
        if unknown:
            raise TypeError(f"{cls.__name__} does not take option(s) {unknown}")
        return cls(bundle, **opts)
    # A fallback backend gets only the options it understands (fp16 means nothing to ORT).
    return cls(bundle, **{k: v for k, v in opts.items() if k in accepted})


def create_backend(name: str, bundle: ModelBundle | str, *, fallback: bool = False,
                   **opts: Any) -> BackendBase:
    """Create an inference backend.

    Parameters
    ----------
    name : ``"onnxruntime"`` (``"ort"``), ``"tensorrt"`` (``"trt"``), ``"torch"``, or
        ``"auto"`` (tensorrt, then onnxruntime, then torch: the first that can run here).
    bundle : a loaded bundle or a path to one (see :func:`~omnibind_ros.core.bundle.load_bundle`).
    fallback : when ``name`` cannot run here, log a warning and use ONNX Runtime instead of
        raising. Check ``backend.name`` for what you got.
    **opts : backend options (``threads``, ``providers``, ``device``, ``fp16``,
        ``build_missing``, ``modalities``...); a fallback backend receives the ones it takes.

    Raises
    ------
    BackendUnavailableError
        The backend cannot run here (runtime not installed, no GPU, no engines or weights) and
        ``fallback`` is False, or the fallback cannot run either. The message says what is
        missing.
    ValueError
        Unknown backend name.
    """
    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(bundle)
    if name.lower() == "auto":
        return _create_auto(bundle, opts)
    canonical = _canonical(name)
    try:
        return _construct(canonical, bundle, opts, strict=True)
    except BackendUnavailableError as exc:
        if not fallback or canonical == "onnxruntime":
            raise
        _log.warning("%s backend unavailable (%s); falling back to onnxruntime", canonical, exc)
        try:
            return _construct("onnxruntime", bundle, opts, strict=False)
        except BackendUnavailableError as fallback_exc:
            raise BackendUnavailableError(
                f"{canonical} backend unavailable ({exc}) and the onnxruntime fallback failed "
                f"too ({fallback_exc})") from fallback_exc


def _create_auto(bundle: ModelBundle, opts: dict[str, Any]) -> BackendBase:
    reasons = []
    for name in AUTO_ORDER:
        try:
            return _construct(name, bundle, opts, strict=False)
        except BackendUnavailableError as exc:
            reasons.append(f"{name}: {exc}")
    raise BackendUnavailableError("no inference backend can run here: " + "; ".join(reasons))
