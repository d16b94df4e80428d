"""TensorRT engines for an exported bundle (built on the GPU machine that runs them)."""
from __future__ import annotations

from pathlib import Path

from omnibind_ros.core.bundle import load_bundle


def build_tensorrt_engines(bundle_dir: str | Path, *, fp16: bool = True, max_batch: int = 16,
                           force: bool = False, device: int = 0,
                           engines_dir: str | Path | None = None,
                           module: str = "tensorrt") -> dict[str, Path]:
    """Build a TensorRT engine per ONNX graph of the bundle.

    Engines are cached per GPU name + compute capability + TensorRT version and land in
    ``<bundle_dir>/engines/<gpu>_sm<cc>_trt<version>/`` (or ``engines_dir``); a cached engine is
    reused only while the ONNX file's SHA-256, the precision, the batch limit and the
    optimisation profiles match, and is rebuilt otherwise. See
    :func:`omnibind_ros.core.engines.build_engines`.

    ``module`` is ``"tensorrt"`` by default: those are the engines the tensorrt backend loads.
    ``"tensorrt_rtx"`` (``pip install tensorrt-rtx``; builds without a GPU, for RTX GPUs'
    TensorRT-RTX runtime) or ``"auto"`` (tensorrt, else tensorrt_rtx) choose otherwise.

    Returns
    -------
    component (``"encoder:<modality>"``, ``"fusion"``, ``"text"``) -> engine path.

    Raises
    ------
    BackendUnavailableError
        The TensorRT module is not installed (``tensorrt`` comes with JetPack or from NVIDIA's
        wheels), or a graph fails to build.
    """
    from omnibind_ros.core.engines import build_engines

    bundle = load_bundle(bundle_dir)
    return build_engines(bundle, fp16=fp16, max_batch=max_batch, force=force, device=device,
                         engines_dir=engines_dir, module=module)
