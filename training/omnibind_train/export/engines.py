"""TensorRT engines for an exported bundle (built on the GPU machine that runs them)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from omnibind_ros.core.bundle import load_bundle


def build_tensorrt_engines(bundle_dir: str | Path, *,
                           precision: str | Mapping[str, str] | None = None,
                           fp16: bool | None = None, max_batch: int = 16,
                           force: bool = False, device: int = 0,
                           engines_dir: str | Path | None = None,
                           module: str = "tensorrt", calib_samples: int = 64,
                           dla_core: int | None = None) -> dict[str, Path]:
    """Build a TensorRT engine per ONNX graph of the bundle.

    Engines are cached per GPU name + compute capability + TensorRT version (+ DLA core) and
    land in ``<bundle_dir>/engines/<gpu>_sm<cc>_trt<version>/`` (or ``engines_dir``); a cached
    engine is reused only while the ONNX file's SHA-256, the precision, the batch limit and the
    optimisation profiles match, and is rebuilt otherwise. See
    :func:`omnibind_ros.core.engines.build_engines` (``omnibind-engines build`` is the command
    line for the same).

    ``precision`` is ``"fp16"`` (default), ``"fp32"`` or ``"int8"`` (or a mapping per
    modality, e.g. ``{"default": "int8", "thermal": "fp16"}``); ``fp16=`` is its older
    spelling. INT8 encoders are calibrated on ``calib_samples`` simulated samples per modality
    through the bundle's preprocessing (:class:`omnibind_ros.sim.calibration.SimCalibration`,
    the preprocessing training uses too).

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
    from omnibind_ros.core.engines import build_engines, resolve_precision
    from omnibind_ros.sim.calibration import SimCalibration

    bundle = load_bundle(bundle_dir)
    precision = resolve_precision(precision, fp16)
    wants_int8 = (precision == "int8" if isinstance(precision, str)
                  else "int8" in precision.values())
    calibration = SimCalibration(bundle, samples=calib_samples) if wants_int8 else None
    return build_engines(bundle, precision=precision, max_batch=max_batch, force=force,
                         device=device, engines_dir=engines_dir, module=module,
                         calibration=calibration, dla_core=dla_core)
