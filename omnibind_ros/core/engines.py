"""TensorRT engine builder: one engine per ONNX graph of a bundle, cached and never stale.

Works with NVIDIA ``tensorrt`` (the runtime the :mod:`tensorrt backend
<omnibind_ros.core.backends.tensorrt_backend>` deserialises with) or ``tensorrt_rtx``
(TensorRT for RTX: same Builder/OnnxParser API; pip-installable from PyPI and able to build
engines on a machine without a GPU, which is how CI exercises this code for real). The module
is imported when a build starts, never at import; ``module="auto"`` takes ``tensorrt`` when it
is importable, else ``tensorrt_rtx``. The ``omnibind-engines`` command
(``omnibind_ros/tools/engines_cli.py``) is the command line for it.

Cache layout: ``<engines_dir or bundle/engines>/<gpu>_sm<cc>_<trt|trtrtx><version>[_dla<n>]/``
holds ``<component>.engine`` files, ``engines.json`` (header: GPU name, compute capability,
module, version; per component: ONNX SHA-256 of the file as it is now, precision, DLA core, batch
limit, optimisation profiles, engine SHA-256, and for INT8 the calibration identity: SHA-256 of
the modality's preprocessing config plus the calibration source, e.g. samples and seed; per INT8
component: its calibration files, the SHA-256 of the ONNX file and the calibration identity they
were made from) and, for ``tensorrt``, ``timing.cache``. An engine is loaded only when the
header and its entry equal what a build now would record and the engine file's checksum matches;
anything else is stale and rebuilt.

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
import json
import logging
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnibind_ros.core import int8
from omnibind_ros.core.backends.base import import_runtime
from omnibind_ros.core.bundle import ENGINES_DIR, ModelBundle, TensorSpec
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

ENGINE_MANIFEST = "engines.json"
TIMING_CACHE = "timing.cache"
#: Suffixes of a component's INT8 calibration files in the cache folder.
CALIBRATION_CACHE = ".calib"  # TensorRT's entropy calibration cache
QDQ_TABLE = ".calib.json"  # ONNX Runtime's entropy ranges (QDQ path)
QDQ_GRAPH = ".qdq.onnx"  # the explicitly quantised graph the QDQ engine is built from
TRT_MODULES = ("tensorrt", "tensorrt_rtx")
PRECISIONS = ("fp32", "fp16", "int8")
_TRT_HINT = ("TensorRT comes with JetPack on Jetson; on x86 `pip install tensorrt` (a CUDA build "
             "of torch runs the engines); `pip install tensorrt-rtx` builds engines without a GPU")
_FUSION, _TEXT = "fusion", "text"
_CHUNK = 1 << 20
DEFAULT_MAX_BATCH = 16
_CALIBRATOR, _QDQ = "entropy-calibrator", "qdq-entropy"

#: ``"fp32" | "fp16" | "int8"`` for every graph, or a mapping from a component key
#: (``"encoder:image"``, ``"text"``), a modality name or ``"default"`` to one of them.
Precision = str | Mapping[str, str]
#: Calibration batches per component key: a mapping ``{"encoder:image": batches}`` or a callable
#: ``component -> batches | None``. Batches (see :data:`omnibind_ros.core.int8.CalibrationItem`)
#: are iterated only when a component is calibrated, so a lazy source costs nothing when the
#: caches are fresh.
Calibration = Mapping[str, Iterable[Any]] | Callable[["Component"], Iterable[Any] | None]


@dataclass(frozen=True)
class Component:
    """One ONNX graph of a bundle and the inputs that get an optimisation profile."""

    key: str  # "encoder:<modality>", "fusion" or "text"
    onnx: Path
    onnx_rel: str
    inputs: tuple[TensorSpec, ...]
    fp16_allowed: bool

    @property
    def modality(self) -> str | None:
        """The modality of an encoder (None for fusion and text)."""
        return self.key.split(":", 1)[1] if self.key.startswith("encoder:") else None

    @property
    def stem(self) -> str:
        """File-name stem of the component's files in the cache folder."""
        return self.key.replace(":", "_")

    @property
    def engine_name(self) -> str:
        return self.stem + ".engine"


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


def manifest_header(trt: Any, gpu: tuple[str, str], dla_core: int | None = None
                    ) -> dict[str, Any]:
    """What every engine in a cache directory was built with (all must match to load one)."""
    header: dict[str, Any] = {"gpu": gpu[0], "compute_capability": gpu[1],
                              "module": _module_name(trt), "tensorrt": str(trt.__version__)}
    if dla_core is not None:
        header["dla_core"] = int(dla_core)
    return header


def engine_cache_dir(bundle: ModelBundle, *, trt: Any | None = None,
                     gpu: tuple[str, str] | None = None, device: int = 0,
                     engines_dir: str | Path | None = None, dla_core: int | None = None
                     ) -> Path:
    """``<engines_dir or bundle/engines>/<gpu>_sm<cc>_<trt|trtrtx><version>[_dla<n>]``.

    Not created. A DLA core gets a folder of its own: its engines are different engines.
    """
    trt = import_tensorrt() if trt is None else trt
    name, cap = gpu_identity(device) if gpu is None else gpu
    flavour = "trtrtx" if _module_name(trt) == "tensorrt_rtx" else "trt"
    base = Path(engines_dir) if engines_dir is not None else bundle.root / ENGINES_DIR
    dla = "" if dla_core is None else f"_dla{int(dla_core)}"
    return base / f"{_slug(name)}_sm{_slug(cap)}_{flavour}{_slug(str(trt.__version__))}{dla}"


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


def _check_precision(value: str, where: str) -> str:
    if value not in PRECISIONS:
        raise ValueError(f"{where} must be one of {PRECISIONS}, not {value!r}")
    return value


def resolve_precision(precision: Precision | None = None, fp16: bool | None = None) -> Precision:
    """``precision``, or the older ``fp16=`` flag as one (``True``: fp16, ``False``: fp32).

    Raises
    ------
    ValueError
        Both are given and disagree, or a precision is not one of :data:`PRECISIONS`.
    """
    if fp16 is not None:
        legacy = "fp16" if fp16 else "fp32"
        if precision is not None and precision != legacy:
            raise ValueError(f"fp16={fp16} contradicts precision={precision!r}; pass precision")
        precision = legacy
    if precision is None:
        return "fp16"
    if isinstance(precision, str):
        return _check_precision(precision, "precision")
    for key, value in precision.items():
        _check_precision(value, f"precision[{key!r}]")
    return dict(precision)


def component_precision(precision: Precision, comp: Component) -> str:
    """The precision ``comp`` is requested at (before what the TensorRT module can do).

    A single precision applies to the encoders; ``"int8"`` leaves the text encoder at fp16. A
    mapping is looked up by component key, then modality; otherwise its ``"default"`` (fp16)
    applies as a single precision would. The fusion head is always fp32.
    """
    if comp.key == _FUSION:
        return "fp32"
    if isinstance(precision, str):
        wanted = _check_precision(precision, "precision")
        return "fp16" if comp.key == _TEXT and wanted == "int8" else wanted
    for key in (comp.key, comp.modality):
        if key is not None and key in precision:
            return _check_precision(precision[key], f"precision[{key!r}]")
    return component_precision(precision.get("default", "fp16"), comp)  # the single-value rule


def _int8_method(trt: Any) -> str:
    """Implicit quantisation (entropy calibrator) where the module has it, else a QDQ graph."""
    if (_module_name(trt) == "tensorrt" and hasattr(trt, "IInt8EntropyCalibrator2")
            and hasattr(trt.BuilderFlag, "INT8")):
        return _CALIBRATOR
    return _QDQ


def _on_dla(comp: Component, dla_core: int | None) -> bool:
    return dla_core is not None and comp.modality is not None


def preprocess_sha256(bundle: ModelBundle, comp: Component) -> str | None:
    """SHA-256 of the preprocessing config that makes ``comp``'s inputs (None for fusion).

    Encoders: the modality's config; the text encoder: the text config (tokenizer settings).
    """
    if comp.modality is not None and comp.modality in bundle.modalities:
        config = bundle.modalities[comp.modality].preprocess
    elif comp.key == _TEXT and bundle.text is not None:
        config = bundle.text.preprocess
    else:
        return None
    data = config.to_dict() if hasattr(config, "to_dict") else config
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def recorded_calibration_id(manifest: dict[str, Any], comp: Component) -> dict[str, Any]:
    """The calibration source (e.g. samples, seed) ``comp``'s cached INT8 engine records."""
    entry = (manifest.get("components") or {}).get(comp.key) or {}
    recorded = entry.get("calibration")
    if not isinstance(recorded, dict):
        return {}
    return {k: v for k, v in recorded.items() if k != "preprocess_sha256"}


def expected_entry(trt: Any, comp: Component, bundle: ModelBundle, *,
                   precision: Precision = "fp16", max_batch: int,
                   onnx_sha256: str | None = None, dla_core: int | None = None,
                   calibration_id: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest entry a build of ``comp`` now would record (less the engine checksum).

    An INT8 entry also records ``"calibration"``: the SHA-256 of the preprocessing config
    (:func:`preprocess_sha256`) and ``calibration_id`` (what the calibration samples are, e.g.
    ``{"samples": 64, "seed": 1000000}``; JSON-plain values).
    """
    wanted = component_precision(precision, comp)
    if wanted == "fp16" and not (comp.fp16_allowed and hasattr(trt.BuilderFlag, "FP16")):
        wanted = "fp32"  # recorded as built: tensorrt_rtx has no FP16 flag
    on_dla = _on_dla(comp, dla_core)
    limit = 1 if on_dla else int(max_batch)
    entry: dict[str, Any] = {
        "engine": comp.engine_name, "onnx": comp.onnx_rel,
        "onnx_sha256": onnx_sha256 if onnx_sha256 is not None else _sha256(comp.onnx),
        "max_batch": limit, "precision": wanted,
        "dla_core": int(dla_core) if on_dla else None,
        "profiles": {s.name: [list(x) for x in profile_shapes(s, bundle, limit)]
                     for s in comp.inputs}}
    if wanted == "int8":
        entry["quantization"] = _int8_method(trt)
        entry["calibration"] = {**dict(calibration_id or {}),
                                "preprocess_sha256": preprocess_sha256(bundle, comp)}
    return entry


def read_manifest(directory: Path) -> dict[str, Any]:
    """``engines.json`` of a cache directory (``{}`` when missing or unreadable)."""
    try:
        data = json.loads((directory / ENGINE_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _fresh(manifest: dict[str, Any], header: dict[str, Any], comp: Component,
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
                     *, precision: Precision | None = None, fp16: bool | None = None,
                     max_batch: int | None, gpu: tuple[str, str],
                     dla_core: int | None = None) -> list[Component]:
    """Components whose cached engine is missing, corrupt or built from anything else.

    ``max_batch=None`` accepts whatever batch limit an engine was built with; ``fp16=`` is the
    older spelling of ``precision`` (see :func:`resolve_precision`). An INT8 engine is accepted
    with whatever calibration samples it records, but only while the preprocessing config it
    was calibrated through is the bundle's now.
    """
    precision = resolve_precision(precision, fp16)
    manifest = read_manifest(directory)
    header = manifest_header(trt, gpu, dla_core)
    stale = []
    for c in comps:
        limit = recorded_max_batch(manifest, c) if max_batch is None else max_batch
        entry = expected_entry(trt, c, bundle, precision=precision, max_batch=limit,
                               dla_core=dla_core,
                               calibration_id=recorded_calibration_id(manifest, c))
        if not _fresh(manifest, header, c, entry, directory):
            stale.append(c)
    return stale


def calibration_reusable(manifest: dict[str, Any], comp: Component, directory: Path,
                         onnx_sha256: str | None,
                         identity: Mapping[str, Any] | None = None) -> bool:
    """Whether ``comp``'s calibration cache was made from the ONNX file as it is now.

    With ``identity`` (an INT8 entry's ``"calibration"``: preprocessing config hash and
    calibration source), the cache must also have been made from that identity.
    """
    record = (manifest.get("calibration") or {}).get(comp.key) or {}
    table = record.get("table")
    if identity is not None and record.get("source") != dict(identity):
        return False
    return (onnx_sha256 is not None and record.get("onnx_sha256") == onnx_sha256
            and isinstance(table, str) and (directory / table).is_file())


@dataclass(frozen=True)
class CachedEngine:
    """One engine recorded in a cache folder's manifest, checked against the bundle now.

    ``status`` is ``"fresh"`` or ``"stale: <why>"`` (the ONNX file changed, the engine file is
    missing or altered, the profiles the bundle implies changed, the graph left the bundle).
    Whether the folder's GPU and TensorRT version are this machine's is for the caller.
    """

    directory: Path
    header: dict[str, Any]
    key: str
    entry: dict[str, Any]
    status: str


def cache_dirs(bundle: ModelBundle, engines_dir: str | Path | None = None) -> list[Path]:
    """Engine cache folders (those holding an ``engines.json``) under the cache root."""
    base = Path(engines_dir) if engines_dir is not None else bundle.root / ENGINES_DIR
    if not base.is_dir():
        return []
    return sorted(p.parent for p in base.glob(f"*/{ENGINE_MANIFEST}"))


def inspect_cache(bundle: ModelBundle, directory: Path) -> list[CachedEngine]:
    """Every engine ``directory``'s manifest records, with its status for ``bundle`` now.

    Needs no TensorRT: only the recorded entries, the files and the bundle are compared.
    """
    manifest = read_manifest(directory)
    header = {k: v for k, v in manifest.items() if k not in ("components", "calibration")}
    comps = {c.key: c for c in components(bundle)}
    out = []
    for key, entry in sorted((manifest.get("components") or {}).items()):
        comp = comps.get(key)
        status = "fresh"
        if comp is None:
            status = "stale: not in the bundle"
        elif entry.get("onnx_sha256") != _sha256(comp.onnx):
            status = "stale: ONNX file changed"
        elif not (directory / comp.engine_name).is_file():
            status = "stale: engine file missing"
        elif _sha256(directory / comp.engine_name) != entry.get("engine_sha256"):
            status = "stale: engine file altered"
        else:
            try:
                profiles = {s.name: [list(x) for x in profile_shapes(
                    s, bundle, int(entry.get("max_batch", DEFAULT_MAX_BATCH)))]
                    for s in comp.inputs}
            except BackendUnavailableError:
                profiles = None
            calib = entry.get("calibration")
            if profiles != entry.get("profiles"):
                status = "stale: optimisation profiles changed"
            elif "precision" not in entry or (entry.get("precision") == "int8"
                                              and not isinstance(calib, dict)):
                status = "stale: built by an older omnibind_ros"
            elif isinstance(calib, dict) and (calib.get("preprocess_sha256")
                                              != preprocess_sha256(bundle, comp)):
                status = "stale: preprocessing config changed"
        out.append(CachedEngine(directory, header, key, dict(entry), status))
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a reader never sees half a file


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
    gpu = gpu_identity(device)
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


def _write_manifest(directory: Path, manifest: dict[str, Any], header: dict[str, Any]) -> None:
    manifest.update(header)
    _atomic_write(directory / ENGINE_MANIFEST,
                  json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
