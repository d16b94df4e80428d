"""TensorRT engine cache: where engines are kept, what they were built from, whether still valid.

Cache layout: ``<engines_dir or bundle/engines>/<gpu>_sm<cc>_<trt|trtrtx><version>[_dla<n>]/``
holds ``<component>.engine`` files, ``engines.json`` (header: GPU name, compute capability,
module, version; per component: ONNX SHA-256 of the file as it is now, precision, DLA core, batch
limit, optimisation profiles, engine SHA-256, and for INT8 the calibration identity: SHA-256 of
the modality's preprocessing config plus the calibration source, e.g. samples and seed; per INT8
component: its calibration files, the SHA-256 of the ONNX file and the calibration identity they
were made from) and, for ``tensorrt``, ``timing.cache``. An engine is loaded only when the
header and its entry equal what a build now would record and the engine file's checksum matches;
anything else is stale and rebuilt.

This module names the cache folders (:func:`engine_cache_dir`, keyed by :func:`gpu_identity`
and the TensorRT module), reads and writes the manifest, computes the entry a build would
record (:func:`expected_entry`) and checks cached engines and calibration caches against it
(:func:`stale_components`, :func:`calibration_reusable`, :func:`inspect_cache`). Building is
:mod:`omnibind_ros.core.engines`; nothing here imports TensorRT or torch at import time.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnibind_ros.core.bundle import ENGINES_DIR, ModelBundle
from omnibind_ros.core.engine_spec import (
    _TEXT,
    DEFAULT_MAX_BATCH,
    Component,
    Precision,
    _int8_method,
    _module_name,
    _on_dla,
    component_precision,
    components,
    import_tensorrt,
    profile_shapes,
    resolve_precision,
)
from omnibind_ros.core.errors import BackendUnavailableError

__all__ = ["CALIBRATION_CACHE", "ENGINE_MANIFEST", "QDQ_GRAPH", "QDQ_TABLE", "TIMING_CACHE",
           "CachedEngine", "cache_dirs", "calibration_reusable", "engine_cache_dir",
           "expected_entry", "gpu_identity", "gpu_name", "inspect_cache", "manifest_header",
           "preprocess_sha256", "read_manifest", "recorded_calibration_id",
           "recorded_max_batch", "stale_components"]

ENGINE_MANIFEST = "engines.json"
TIMING_CACHE = "timing.cache"
#: Suffixes of a component's INT8 calibration files in the cache folder.
CALIBRATION_CACHE = ".calib"  # TensorRT's entropy calibration cache
QDQ_TABLE = ".calib.json"  # ONNX Runtime's entropy ranges (QDQ path)
QDQ_GRAPH = ".qdq.onnx"  # the explicitly quantised graph the QDQ engine is built from
_CHUNK = 1 << 20


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


def _sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


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


def _write_manifest(directory: Path, manifest: dict[str, Any], header: dict[str, Any]) -> None:
    manifest.update(header)
    _atomic_write(directory / ENGINE_MANIFEST,
                  json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
