"""TensorRT engines for an exported bundle (built on the GPU machine that runs them)."""
from __future__ import annotations

from pathlib import Path

from omnibind_ros.core.bundle import load_bundle


def build_tensorrt_engines(bundle_dir: str | Path, *, fp16: bool = True, max_batch: int = 16,
                           force: bool = False, device: int = 0,
                           engines_dir: str | Path | None = None) -> dict[str, Path]:
    """Build a TensorRT engine per ONNX graph of the bundle (cached per GPU + TensorRT version).

    Engines land in ``<bundle_dir>/engines/<gpu>_trt<version>/`` (or ``engines_dir``); a cached
    engine is reused while its ONNX checksum and precision match. See
    :func:`omnibind_ros.core.backends.tensorrt_backend.build_engines`.

    Returns
    -------
    component (``"encoder:<modality>"``, ``"fusion"``, ``"text"``) -> engine path.

    Raises
    ------
    BackendUnavailableError
        TensorRT is not installed (it cannot be installed from PyPI alone), or a graph fails to
        build.
    """
    from omnibind_ros.core.backends.tensorrt_backend import build_engines

    bundle = load_bundle(bundle_dir)
    return build_engines(bundle, fp16=fp16, max_batch=max_batch, force=force, device=device,
                         engines_dir=engines_dir)
