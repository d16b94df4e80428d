"""TensorRT engine builder: one engine per ONNX graph of a bundle, cached and never stale.

Works with NVIDIA ``tensorrt`` (the runtime the :mod:`tensorrt backend
<omnibind_ros.core.backends.tensorrt_backend>` deserialises with) or ``tensorrt_rtx``
(TensorRT for RTX: same Builder/OnnxParser API; pip-installable from PyPI and able to build
engines on a machine without a GPU, which is how CI exercises this code for real). The module
is imported when a build starts, never at import; ``module="auto"`` takes ``tensorrt`` when it
is importable, else ``tensorrt_rtx``. The ``omnibind-engines`` command
(``omnibind_ros/tools/engines_cli.py``) is the command line for it.

The builder's inputs (components, optimisation profiles, precision rules, the TensorRT
module) are defined in :mod:`omnibind_ros.core.engine_spec`; the cache it writes to (folder
naming, ``engines.json``, freshness checks) in :mod:`omnibind_ros.core.engine_cache`. This
module re-exports both, so every name it has always offered is still importable from here.

Precision (``precision="fp32" | "fp16" | "int8"``, or a mapping per modality/component):

* ``fp16`` sets ``BuilderFlag.FP16`` for the encoders and the text encoder. ``tensorrt_rtx``
  has no FP16 flag (its networks are strongly typed: precision comes from the ONNX tensors), so
  its fp16 requests are built and recorded as fp32.
* ``int8`` quantises the modality encoders from calibration batches (sensor samples through the
  shared preprocessing): with ``tensorrt`` by ``IInt8EntropyCalibrator2`` (``BuilderFlag.INT8``
  plus FP16 so layers without an INT8 kernel fall back to fp16; cache ``<component>.calib``),
  with ``tensorrt_rtx`` by a QDQ graph from ONNX Runtime's entropy calibration (see
  :mod:`omnibind_ros.core.int8`). A calibration cache is reused while the ONNX file's SHA-256
  and the calibration identity are the ones it was made from; a changed identity (other
  samples or seed, a changed preprocessing config in ``bundle.yaml``) makes the INT8 engine
  stale, and ``recalibrate=True`` rebuilds it even when fresh. The text encoder stays fp16
  unless a precision mapping asks for int8 for ``"text"`` (and calibration batches for it are
  given).
* The fusion head always stays fp32: it is tiny (nothing to gain), and fp16 turns its
  masked-score constant into -inf (int8 would clip it the same way).

Timing caches are a no-op in TensorRT-RTX and are skipped there.

Jetson
------
* JetPack ships TensorRT with the OS image: JetPack 5.1.x has TensorRT 8.5 (Xavier and Orin);
  JetPack 6.x (Orin only) has TensorRT 8.6 (6.0) or 10.x (later 6.x releases). Check your
  JetPack's release notes for the exact version; ``python3 -c "import tensorrt;
  print(tensorrt.__version__)"`` says what is installed. The builder handles both API
  generations (explicit batch is requested below TensorRT 10).
* Engines are specific to the GPU and the TensorRT version that built them: build them on the
  Jetson itself (or an identical module with the same JetPack), never on an x86 machine. The
  cache key (GPU name, compute capability 7.2 on Xavier / 8.7 on Orin, TensorRT version) keeps
  engines made elsewhere from being loaded.
* DLA: Xavier and Orin AGX/NX modules have NVDLA cores (one or two; check your module's data
  sheet); the Orin Nano and the original Nano have none. ``dla_core=n`` builds the modality
  encoders for DLA core ``n`` with ``BuilderFlag.GPU_FALLBACK``. DLA runs only fp16 and int8, so
  fp32 is refused. Layers DLA does not support run on the GPU instead (the build logs how many
  ``IBuilderConfig.can_run_on_DLA`` rejects; ``trtexec --useDLACore=n --allowGPUFallback
  --verbose`` shows the placement), and every switch between DLA and GPU costs time. DLA
  encoder engines are built with a fixed batch-1 profile (DLA works on shapes fixed at build
  time; a sensor node sends one sample at a time). The fusion head and the text encoder always
  run on the GPU. DLA engines live in their own ``_dla<n>`` cache folder. See "DLA Supported
  Layers and Restrictions" in the TensorRT developer guide of your version.
* Power mode changes timings: ``sudo nvpmodel -q`` shows the mode, ``sudo nvpmodel -m <id>``
  sets it and ``sudo jetson_clocks`` pins the clocks at the mode's maximum. Build and benchmark
  in the mode the robot runs in; the engines stay valid across modes, the timings do not.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omnibind_ros.core import engine_cache, int8
from omnibind_ros.core.bundle import ModelBundle
from omnibind_ros.core.engine_cache import (
    CALIBRATION_CACHE,
    ENGINE_MANIFEST,
    QDQ_GRAPH,
    QDQ_TABLE,
    TIMING_CACHE,
    CachedEngine,
    _atomic_write,
    _fresh,
    _sha256,
    _write_manifest,
    cache_dirs,
    calibration_reusable,
    engine_cache_dir,
    expected_entry,
    gpu_identity,
    gpu_name,
    inspect_cache,
    manifest_header,
    preprocess_sha256,
    read_manifest,
    recorded_calibration_id,
    recorded_max_batch,
    stale_components,
)
from omnibind_ros.core.engine_spec import (
    _CALIBRATOR,
    DEFAULT_MAX_BATCH,
    PRECISIONS,
    TRT_MODULES,
    Component,
    Precision,
    _module_name,
    _on_dla,
    component_precision,
    components,
    import_tensorrt,
    profile_shapes,
    resolve_precision,
)
from omnibind_ros.core.errors import BackendUnavailableError

__all__ = ["CALIBRATION_CACHE", "DEFAULT_MAX_BATCH", "ENGINE_MANIFEST", "PRECISIONS",
           "QDQ_GRAPH", "QDQ_TABLE", "TIMING_CACHE", "TRT_MODULES", "CachedEngine",
           "Calibration", "Component", "Precision", "build_engines", "cache_dirs",
           "calibration_reusable", "component_precision", "components", "engine_cache_dir",
           "expected_entry", "gpu_identity", "gpu_name", "import_tensorrt", "inspect_cache",
           "manifest_header", "preprocess_sha256", "profile_shapes", "read_manifest",
           "recorded_calibration_id", "recorded_max_batch", "resolve_precision",
           "stale_components"]

_log = logging.getLogger(__name__)

#: Calibration batches per component key: a mapping ``{"encoder:image": batches}`` or a callable
#: ``component -> batches | None``. Batches (see :data:`omnibind_ros.core.int8.CalibrationItem`)
#: are iterated only when a component is calibrated, so a lazy source costs nothing when the
#: caches are fresh.
Calibration = Mapping[str, Iterable[Any]] | Callable[["Component"], Iterable[Any] | None]


def _check_dla(trt: Any, comps: Sequence[Component], precision: Precision,
               dla_core: int | None) -> None:
    if dla_core is None:
        return
    if dla_core < 0:
        raise ValueError(f"dla_core must be >= 0, got {dla_core}")
    if _module_name(trt) != "tensorrt" or not hasattr(trt, "DeviceType"):
        raise BackendUnavailableError(
            "DLA engines are built with NVIDIA tensorrt on a Jetson (Xavier/Orin); "
            f"{_module_name(trt)} does not target DLA cores")
    fp32 = [c.key for c in comps if _on_dla(c, dla_core)
            and component_precision(precision, c) == "fp32"]
    if fp32:
        raise ValueError(f"DLA runs only fp16 and int8 layers; {fp32} are requested at fp32: "
                         "build with precision fp16 or int8 (the fusion head and the text "
                         "encoder run on the GPU)")


def _configure_dla(trt: Any, builder: Any, network: Any, config: Any, comp: Component,
                   dla_core: int) -> None:
    available = getattr(builder, "num_DLA_cores", None)
    if available is not None and dla_core >= int(available):
        raise BackendUnavailableError(
            f"DLA core {dla_core} requested, but this device has {available} DLA core(s) "
            "(the Orin Nano and the Nano have none)")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = int(dla_core)
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    can_run = getattr(config, "can_run_on_DLA", None)
    layers = int(getattr(network, "num_layers", 0) or 0)
    if can_run is not None and layers:
        gpu = sum(1 for i in range(layers) if not can_run(network.get_layer(i)))
        _log.info("%s: %d of %d layers cannot run on DLA core %d and fall back to the GPU",
                  comp.key, gpu, layers, dla_core)


def _build_one(trt: Any, comp: Component, entry: dict[str, Any], *, workspace_gib: float,
               timing_cache: Path | None, onnx: Path | None = None,
               calibrator: Any | None = None, calib_shapes: Mapping[str, tuple] | None = None
               ) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(str(trt.__version__).split(".")[0])
    # TensorRT < 10 needs explicit batch requested; 10+ and TensorRT-RTX have only explicit batch.
    explicit = _module_name(trt) == "tensorrt" and major < 10
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if explicit else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    source = comp.onnx if onnx is None else onnx
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailableError(f"TensorRT cannot parse {source}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    precision = entry["precision"]
    if precision in ("fp16", "int8") and hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8: layers without an INT8 kernel use fp16
    if entry.get("dla_core") is not None:
        _configure_dla(trt, builder, network, config, comp, entry["dla_core"])
    cache = None
    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in entry["profiles"].items():
        if name in names:  # the parser drops inputs the graph never reads
            profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
    config.add_optimization_profile(profile)
    if calibrator is not None:
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        fixed = builder.create_optimization_profile()  # calibration runs at one shape
        for name, shape in (calib_shapes or {}).items():
            if name in names:
                fixed.set_shape(name, tuple(shape), tuple(shape), tuple(shape))
        config.set_calibration_profile(fixed)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendUnavailableError(f"TensorRT failed to build an engine from {source} "
                                      "(see the TensorRT log above)")
    if cache is not None:
        _atomic_write(timing_cache, bytes(cache.serialize()))
    return bytes(serialized)


def _calibration_items(calibration: Calibration | None, comp: Component
                       ) -> Iterable[Any] | None:
    if calibration is None:
        return None
    if callable(calibration) and not isinstance(calibration, Mapping):
        return calibration(comp)
    return calibration.get(comp.key)


class _Int8Plan:
    """What an INT8 build of one component needs: its calibrator or QDQ graph, and the record."""

    def __init__(self, trt: Any, comp: Component, bundle: ModelBundle, entry: dict[str, Any],
                 directory: Path, manifest: dict[str, Any], calibration: Calibration | None,
                 calib_batch: int, recalibrate: bool, device: int) -> None:
        self.comp, self.entry, self.directory = comp, entry, directory
        self.names = [s.name for s in comp.inputs]
        self.dtypes = {s.name: s.dtype for s in comp.inputs}
        self.onnx: Path | None = None
        self.calibrator: Any | None = None
        self.calib_shapes: dict[str, tuple] = {}
        sha = entry["onnx_sha256"]
        self.previous = (manifest.get("calibration") or {}).get(comp.key) or {}
        self.reuse = (not recalibrate and self.previous.get("method") == entry["quantization"]
                      and calibration_reusable(manifest, comp, directory, sha,
                                               entry["calibration"]))
        self._items = _calibration_items(calibration, comp)
        if not self.reuse and self._items is None:
            raise ValueError(
                f"INT8 needs calibration batches for {comp.key} (no calibration cache made "
                f"from this ONNX file and preprocessing config in {directory}); "
                "`omnibind-engines build BUNDLE --precision int8` draws them from the "
                "simulator")
        if entry["quantization"] == _CALIBRATOR:
            self._prepare_calibrator(trt, bundle, calib_batch, device)
        else:
            self._prepare_qdq()

    def _batches(self, size: int | None = None) -> Iterable[dict[str, Any]]:
        items = self._items if self._items is not None else ()
        if size is not None:
            return int8.fixed_batches(items, self.names, size, self.dtypes)
        return (int8.as_feeds(i, self.names, self.dtypes) for i in items)

    def _prepare_calibrator(self, trt: Any, bundle: ModelBundle, calib_batch: int,
                            device: int) -> None:
        cache = self.directory / (self.comp.stem + CALIBRATION_CACHE)
        self.calib_batch = int(calib_batch)
        if not self.reuse:
            cache.unlink(missing_ok=True)  # made from another ONNX file or calibration
        for spec in self.comp.inputs:
            opt = profile_shapes(spec, bundle, max(calib_batch, 1))[1]
            self.calib_shapes[spec.name] = (calib_batch, *opt[1:])
        self.calibrator = int8.entropy_calibrator(trt, self._batches(calib_batch), calib_batch,
                                                  cache, reuse=self.reuse, device=device)
        self.table = cache.name

    def _prepare_qdq(self) -> None:
        table = self.directory / (self.comp.stem + QDQ_TABLE)
        graph = self.directory / (self.comp.stem + QDQ_GRAPH)
        self.table, self.graph = table.name, graph.name
        reuse_graph = (self.reuse and self.previous.get("qdq_sha256") is not None
                       and _sha256(graph) == self.previous.get("qdq_sha256"))
        self.samples = self.previous.get("samples") if self.reuse else None
        if not reuse_graph:
            made = int8.quantize_qdq(self.comp.onnx, graph, table, self._batches,
                                     reuse_table=self.reuse)
            if made is not None:
                self.samples = made
        self.onnx = graph

    def record(self) -> dict[str, Any]:
        """The manifest's calibration record after the build."""
        record = {"onnx_sha256": self.entry["onnx_sha256"], "method": self.entry["quantization"],
                  "table": self.table, "source": dict(self.entry["calibration"])}
        if self.calibrator is not None:
            if not self.calibrator.cache_written and not (self.directory / self.table).is_file():
                return {}
            served = self.calibrator.served * self.calib_batch
            record["samples"] = served if served else self.previous.get("samples")
        else:
            record["samples"] = self.samples
            record["qdq"] = self.graph
            record["qdq_sha256"] = _sha256(self.directory / self.graph)
        return record


def build_engines(bundle: ModelBundle, *, precision: Precision | None = None,
                  fp16: bool | None = None, max_batch: int = DEFAULT_MAX_BATCH,
                  workspace_gib: float = 2.0, device: int = 0, force: bool = False,
                  engines_dir: str | Path | None = None,
                  modalities: Sequence[str] | None = None, module: str = "auto",
                  trt: Any | None = None, calibration: Calibration | None = None,
                  calib_batch: int = int8.DEFAULT_CALIB_BATCH, recalibrate: bool = False,
                  calibration_id: Mapping[str, Any] | None = None,
                  dla_core: int | None = None,
                  progress: Callable[[Component, bool], None] | None = None
                  ) -> dict[str, Path]:
    """Build (or reuse) one TensorRT engine per ONNX graph of ``bundle``.

    Parameters
    ----------
    bundle : the loaded bundle.
    precision : ``"fp32"``, ``"fp16"`` (default) or ``"int8"``, or a mapping per component
        (see :func:`component_precision`; the fusion head is always fp32).
    fp16 : the older spelling: ``True`` is ``precision="fp16"``, ``False`` ``"fp32"``.
    max_batch : largest batch of the optimisation profile (bigger calls are chunked).
    workspace_gib : builder workspace limit.
    device : CUDA device whose name and compute capability key the cache.
    force : rebuild even when a cached engine is fresh (calibration caches are still reused).
    engines_dir : cache root instead of ``<bundle>/engines`` (e.g. for a read-only bundle).
    modalities : only these encoders (default all); fusion and text are always built.
    module : ``"tensorrt"``, ``"tensorrt_rtx"`` or ``"auto"`` (see :func:`import_tensorrt`).
    trt : an already imported TensorRT module (overrides ``module``).
    calibration : INT8 calibration batches per component (see :data:`Calibration`); needed
        for an INT8 component unless its calibration cache is reusable.
    calib_batch : samples per batch fed to TensorRT's calibrator.
    recalibrate : discard calibration caches, calibrate again and rebuild the INT8 engines
        (fresh ones too).
    calibration_id : what the calibration batches are (JSON-plain, e.g. ``{"samples": 64,
        "seed": 1000000}``), recorded in each INT8 entry: an engine or calibration cache made
        from another identity is stale. Default: ``samples`` and ``seed`` of ``calibration``
        when it has both as ints (:class:`~omnibind_ros.sim.calibration.SimCalibration`),
        ``{}`` for other calibration data, and without calibration the identity the cached
        engine records (its calibration cache is all a build could reuse).
    dla_core : build the encoders for this DLA core (Jetson; fp16 or int8 only).
    progress : called with each component and whether it was built (False: cache reused).

    Returns
    -------
    component (``"encoder:<modality>"``, ``"fusion"``, ``"text"``) -> engine path.

    Raises
    ------
    BackendUnavailableError
        No TensorRT module is importable, a graph cannot be parsed/built, or a DLA core is
        requested where there is none.
    ValueError
        A bad precision, fp32 on DLA, or INT8 without calibration batches or cache.
    """
    precision = resolve_precision(precision, fp16)
    trt = import_tensorrt(module) if trt is None else trt
    comps = components(bundle, modalities)
    _check_dla(trt, comps, precision, dla_core)
    gpu = engine_cache.gpu_identity(device)  # resolved at call time in engine_cache
    directory = engine_cache_dir(bundle, trt=trt, gpu=gpu, engines_dir=engines_dir,
                                 dla_core=dla_core)
    directory.mkdir(parents=True, exist_ok=True)
    header = manifest_header(trt, gpu, dla_core)
    manifest = read_manifest(directory)
    if any(manifest.get(k) != v for k, v in header.items()):
        manifest = {}  # another GPU/version wrote it (slug collision): nothing there is ours
    entries = manifest.setdefault("components", {})
    calibrations = manifest.setdefault("calibration", {})
    timing = directory / TIMING_CACHE if _module_name(trt) == "tensorrt" else None
    given_id = _calibration_id(calibration, calibration_id)
    built = {}
    for comp in comps:
        ident = recorded_calibration_id(manifest, comp) if given_id is None else given_id
        entry = expected_entry(trt, comp, bundle, precision=precision, max_batch=max_batch,
                               dla_core=dla_core, calibration_id=ident)
        path = directory / comp.engine_name
        rebuild = (force or (recalibrate and entry["precision"] == "int8")
                   or not _fresh(manifest | header, header, comp, entry, directory))
        if rebuild:
            plan = None
            if entry["precision"] == "int8":
                plan = _Int8Plan(trt, comp, bundle, entry, directory, manifest, calibration,
                                 calib_batch, recalibrate, device)
            data = _build_one(trt, comp, entry, workspace_gib=workspace_gib,
                              timing_cache=timing, onnx=plan.onnx if plan else None,
                              calibrator=plan.calibrator if plan else None,
                              calib_shapes=plan.calib_shapes if plan else None)
            _atomic_write(path, data)
            entries[comp.key] = {**entry, "engine_sha256": hashlib.sha256(data).hexdigest()}
            if plan is not None:
                calibrations[comp.key] = plan.record()
            _write_manifest(directory, manifest, header)  # a later failure keeps this one
        built[comp.key] = path
        if progress is not None:
            progress(comp, rebuild)
    _write_manifest(directory, manifest, header)
    return built


def _calibration_id(calibration: Calibration | None, explicit: Mapping[str, Any] | None
                    ) -> dict[str, Any] | None:
    """The calibration identity of a build (None: take the one the cache records)."""
    if explicit is not None:
        return dict(explicit)
    if calibration is None:
        return None
    samples, seed = getattr(calibration, "samples", None), getattr(calibration, "seed", None)
    if isinstance(samples, int) and isinstance(seed, int):
        return {"samples": samples, "seed": seed}
    return {}
