"""The model bundle: the directory (or archive) that training exports and the runtime loads.

Layout (format version 1; every path is relative to the bundle root)::

    bundle.yaml                    manifest: versions, modalities, configs, the logit scale,
                                   SHA-256 of each file
    encoders/<modality>.onnx       trunk + head + L2 norm, input [batch, *sample_shape]
    fusion/<kind>_head.onnx        tokens [batch, tokens, D] + mask [batch, tokens] -> [batch, D]
    text/text_encoder.onnx         input_ids + attention_mask [batch, sequence] -> [batch, D]
    text/tokenizer/tokenizer.json  (+ vocab, configs) so the runtime can embed new labels
    labels/labels.yaml             label names and prompt templates
    labels/label_embeddings.npy    float32 [C, D], the cached label embeddings
    torch/*.safetensors            optional: weights for the torch fallback backend
    engines/<gpu>_<trt>/           optional: TensorRT engines built on the target machine

``bundle.yaml`` lists every file except itself and ``engines/`` (machine-local caches) with its
SHA-256; :func:`load_bundle` refuses a bundle whose files are missing or differ. Only yaml,
hashlib and numpy are used here: loading a bundle never imports torch or an inference runtime.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import yaml

from omnibind_ros.core.errors import (
    BundleCorruptError,
    BundleIncompatibleError,
    BundleNotFoundError,
    PreprocessConfigError,
)
from omnibind_ros.core.modalities import Modality, parse_modality
from omnibind_ros.core.paths import default_cache_dir

__all__ = [
    "BUNDLE_FILE", "ENGINES_DIR", "FORMAT_VERSION", "SUPPORTED_FORMAT_VERSIONS", "EncoderSpec",
    "FusionSpec", "LabelSet", "ModelBundle", "TensorSpec", "TextSpec", "archive_bundle",
    "checksum_tree", "default_bundle_dir", "dump_manifest", "load_bundle", "sha256_file",
    "to_yaml_plain",
]

BUNDLE_FILE = "bundle.yaml"
#: Written by the runtime (TensorRT engines), never checksummed: they are built per machine.
ENGINES_DIR = "engines"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS: tuple[int, ...] = (1,)
_CHUNK = 1 << 20


def default_bundle_dir() -> Path:
    """``<cache dir>/bundles/default``: where the default training pipeline exports to."""
    return default_cache_dir() / "bundles" / "default"


# ---------------------------------------------------------------------------------------------
# Specs


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output.

    Attributes
    ----------
    name : the ONNX value name.
    shape : ints for fixed axes, strings (``"batch"``, ``"sequence"``, ``"tokens"``) for
        dynamic ones.
    dtype : numpy dtype name (``"float32"``, ``"int64"``, ``"bool"``).
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @property
    def fixed_shape(self) -> tuple[int | None, ...]:
        """The shape with None for every dynamic axis."""
        return tuple(d if isinstance(d, int) else None for d in self.shape)


@dataclass(frozen=True)
class EncoderSpec:
    """A per-modality encoder: ``input [batch, *sample_shape]`` -> unit ``[batch, D]``.

    Attributes
    ----------
    modality : modality name (a :class:`~omnibind_ros.core.modalities.Modality` value).
    file : absolute path of the ONNX file.
    input, output : graph input and output.
    preprocess : the modality's ``*PreprocessConfig`` (what turns a sensor message into input).
    config : the training encoder config dict (provenance; the torch backend rebuilds from it).
    torch_weights : absolute path of the safetensors weights, or None.
    """

    modality: str
    file: Path
    input: TensorSpec
    output: TensorSpec
    preprocess: Any
    config: dict[str, Any]
    torch_weights: Path | None = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one model input (no batch axis), e.g. ``(3, 160, 160)``."""
        return tuple(int(d) for d in self.input.shape[1:])


@dataclass(frozen=True)
class FusionSpec:
    """The fusion head: ``tokens [batch, tokens, D]`` + ``mask [batch, tokens]`` -> ``[batch, D]``.

    Attributes
    ----------
    file : absolute path of the ONNX file.
    kind : ``"af"`` (Adaptive Fusion) or a baseline (``"mean"``, ``"linear"``, ``"concat"``).
    inputs : ``(tokens, mask)`` specs; ``tokens`` is an int for slot-based heads.
    output : fused embedding spec.
    config : the fusion config dict (``slots`` gives the slot order of slot-based heads).
    torch_weights : safetensors weights or None.
    """

    file: Path
    kind: str
    inputs: tuple[TensorSpec, ...]
    output: TensorSpec
    config: dict[str, Any]
    torch_weights: Path | None = None

    @property
    def max_tokens(self) -> int | None:
        """The fixed token count of slot-based heads, None when N is dynamic."""
        n = self.inputs[0].shape[1]
        return n if isinstance(n, int) else None


@dataclass(frozen=True)
class TextSpec:
    """The text encoder and its tokenizer.

    Attributes
    ----------
    file : absolute path of the ONNX file.
    inputs : ``input_ids`` and ``attention_mask`` specs (int64 ``[batch, sequence]``).
    output : embedding spec.
    tokenizer_file : the Hugging Face ``tokenizer.json`` (read with the ``tokenizers`` library).
    tokenizer_dir : the directory holding it and the other tokenizer files.
    max_length : truncation length in tokens.
    pad_id, pad_token : padding token.
    preprocess : the :class:`~omnibind_ros.core.preprocess.TextPreprocessConfig`.
    config : the training encoder config dict.
    torch_weights : safetensors weights or None.
    """

    file: Path
    inputs: tuple[TensorSpec, ...]
    output: TensorSpec
    tokenizer_file: Path
    tokenizer_dir: Path
    max_length: int
    pad_id: int
    pad_token: str
    preprocess: Any
    config: dict[str, Any]
    torch_weights: Path | None = None


@dataclass(frozen=True)
class LabelSet:
    """Label names, the prompt templates their embeddings average over, and the embeddings.

    Attributes
    ----------
    names : C label names.
    prompt_templates : templates with one ``{}`` each.
    embeddings : float32 ``[C, D]`` (read-only).
    logit_scale : the multiplier of the cosines before the softmax over labels: ``1 / tau`` of
        the loss the fusion head was trained with (manifest ``labels.logit_scale``); None in a
        bundle exported without it.
    temperature : the confidence calibration (manifest ``labels.temperature``, fitted on
        held-out data at export: :mod:`omnibind_ros.core.calibration`); None = uncalibrated.
    """

    names: tuple[str, ...]
    prompt_templates: tuple[str, ...]
    embeddings: np.ndarray
    logit_scale: float | None = None
    temperature: float | None = None


@dataclass(frozen=True)
class ModelBundle:
    """A validated bundle (see the module docstring for the layout).

    Attributes
    ----------
    root : the bundle directory (the extraction directory for archives).
    format_version : manifest format version.
    dim : D, the embedding size shared by every encoder, the fusion head and the labels.
    modalities : modality name -> :class:`EncoderSpec`, in manifest order (text excluded).
    fusion : the fusion head, or None.
    text : the text encoder, or None.
    labels : the label set.
    versions : package versions at export (omnibind_ros, torch, onnx, opset, ...).
    provenance : training provenance (data, seeds, checkpoints, metrics).
    export : exporter details and the measured ONNX-vs-torch parity.
    files : relative path -> SHA-256 of every checksummed file.
    manifest : the parsed ``bundle.yaml``.
    """

    root: Path
    format_version: int
    dim: int
    modalities: dict[str, EncoderSpec]
    fusion: FusionSpec | None
    text: TextSpec | None
    labels: LabelSet
    versions: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        """The bundle's name: ``name`` in ``bundle.yaml``, else its directory's name."""
        return str(self.manifest.get("name") or self.root.name)

    @property
    def family(self) -> str:
        """The model family that produced it (``family`` in ``bundle.yaml`` or its provenance:
        "cad_af", "binding", "unialign", ...); empty when the bundle does not say."""
        return str(self.manifest.get("family") or self.provenance.get("family") or "")

    @property
    def modality_names(self) -> tuple[str, ...]:
        """The modalities with an encoder, in manifest order."""
        return tuple(self.modalities)

    @property
    def preprocess_configs(self) -> dict[str, Any]:
        """Modality -> ``*PreprocessConfig`` (text included when the bundle has a text encoder)."""
        configs = {m: spec.preprocess for m, spec in self.modalities.items()}
        if self.text is not None:
            configs[Modality.TEXT.value] = self.text.preprocess
        return configs

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.labels.names

    @property
    def prompt_templates(self) -> tuple[str, ...]:
        return self.labels.prompt_templates

    @property
    def logit_scale(self) -> float | None:
        """Multiplier of the label cosines (``1 / tau`` of training); None if not exported."""
        return self.labels.logit_scale

    @property
    def label_embeddings(self) -> np.ndarray:
        """float32 ``[C, D]``."""
        return self.labels.embeddings

    @property
    def engines_dir(self) -> Path:
        """Where TensorRT engines for this bundle are cached (``<root>/engines``)."""
        return self.root / ENGINES_DIR

    def path(self, relative: str) -> Path:
        """Absolute path of a file given relative to the bundle root."""
        return self.root / relative


# ---------------------------------------------------------------------------------------------
# Checksums and manifest writing (used by the exporter)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_tree(root: str | Path) -> dict[str, str]:
    """SHA-256 of every file below ``root`` except ``bundle.yaml`` and ``engines/``.

    Returns
    -------
    POSIX relative path -> hex digest, sorted by path.
    """
    root = Path(root)
    sums = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == BUNDLE_FILE or rel.split("/")[0] == ENGINES_DIR:
            continue
        sums[rel] = sha256_file(path)
    return sums


def to_yaml_plain(value: Any) -> Any:
    """``value`` with tuples as lists, numpy scalars as Python numbers and paths as strings.

    ``yaml.safe_dump`` rejects tuples and numpy scalars; manifests hold plain YAML only.
    """
    if isinstance(value, Mapping):
        return {str(k): to_yaml_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_yaml_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str) and type(value) is not str:  # TorchVersion, str enums
        return str.__str__(value)
    return value


class _ManifestDumper(yaml.SafeDumper):
    """Block style, except lists of scalars (shapes, mean/std) on one line."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(not isinstance(v, dict | list) for v in data) and len(data) <= 16
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ManifestDumper.add_representer(list, _represent_list)


def dump_manifest(manifest: Mapping[str, Any], path: str | Path) -> None:
    """Write a manifest dict as ``bundle.yaml`` (plain YAML, keys in insertion order)."""
    text = yaml.dump(to_yaml_plain(manifest), Dumper=_ManifestDumper, sort_keys=False,
                     allow_unicode=True, width=99, default_flow_style=False)
    Path(path).write_text(text, encoding="utf-8")


def archive_bundle(bundle_dir: str | Path, archive: str | Path) -> Path:
    """Pack a bundle directory into a ``.tar.gz`` (``engines/`` left out: machine-specific).

    The archive holds one top-level directory named after the bundle directory.
    """
    bundle_dir, archive = Path(bundle_dir), Path(archive)
    if not (bundle_dir / BUNDLE_FILE).is_file():
        raise BundleNotFoundError(f"{bundle_dir} is not a bundle (no {BUNDLE_FILE})",
                                  path=bundle_dir)

    def skip_engines(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = PurePosixPath(info.name).parts
        return None if len(parts) > 1 and parts[1] == ENGINES_DIR else info

    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle_dir, arcname=bundle_dir.name, filter=skip_engines)
    return archive


# ---------------------------------------------------------------------------------------------
# Loading


def load_bundle(path: str | Path, *, verify: bool = True,
                cache_dir: str | Path | None = None) -> ModelBundle:
    """Load and validate a model bundle.

    Parameters
    ----------
    path : bundle directory, its ``bundle.yaml``, or a ``.tar`` / ``.tar.gz`` archive of one.
    verify : check the SHA-256 of every listed file (reads every byte). Presence, the
        manifest and the label shapes are always checked.
    cache_dir : where archives are extracted (default ``<cache dir>/bundles/extracted``); an
        archive already extracted there (same SHA-256) is reused.

    Returns
    -------
    ModelBundle

    Raises
    ------
    BundleNotFoundError
        ``path`` does not exist or holds no ``bundle.yaml``.
    BundleCorruptError
        ``bundle.yaml`` does not parse or lacks a field, a listed file is missing or fails its
        checksum (the error names it), a path leaves the bundle, or the labels are malformed.
    BundleIncompatibleError
        Unsupported format version, unknown modality, or a preprocessing config this version
        rejects.
    """
    root = _resolve_root(Path(path), cache_dir)
    manifest = _read_manifest(root)
    _check_version(manifest, root)
    files = _check_files(manifest, root, verify=verify)
    return _build(manifest, root, files)


def _resolve_root(path: Path, cache_dir: str | Path | None) -> Path:
    if not path.exists():
        raise BundleNotFoundError(f"model bundle not found: {path}", path=path)
    if path.is_file() and path.name == BUNDLE_FILE:
        return path.parent
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise BundleNotFoundError(
                f"{path} is neither a bundle directory nor a .tar/.tar.gz archive", path=path)
        return _extract(path, Path(cache_dir) if cache_dir else None)
    if not (path / BUNDLE_FILE).is_file():
        raise BundleNotFoundError(f"{path} holds no {BUNDLE_FILE}: not a model bundle",
                                  path=path)
    return path


def _extract(archive: Path, cache_dir: Path | None) -> Path:
    base = cache_dir or default_cache_dir() / "bundles" / "extracted"
    target = base / sha256_file(archive)[:16]
    if not target.is_dir():
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=base))
        try:
            _safe_extract(archive, tmp)
            try:
                os.rename(tmp, target)
            except OSError:  # a concurrent process extracted the same archive first
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _archive_root(target, archive)


def _safe_extract(archive: Path, dest: Path) -> None:
    # The "data" filter refuses absolute paths, "..", links out of dest and device files. A
    # truncated .tar.gz ends in EOFError (or zlib.error) from the decompressor, not a TarError.
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleCorruptError(f"cannot extract bundle archive {archive}: {_one_line(exc)}",
                                 path=archive) from exc


def _archive_root(target: Path, archive: Path) -> Path:
    if (target / BUNDLE_FILE).is_file():
        return target
    subdirs = [p for p in target.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / BUNDLE_FILE).is_file():
        return subdirs[0]
    raise BundleNotFoundError(
        f"archive {archive} holds no {BUNDLE_FILE} at its root or in one top-level directory",
        path=archive)


def _one_line(exc: BaseException) -> str:
    """A library's message on one line: PyYAML points at the error with a multi-line excerpt,
    and a node logs each bundle error as one line."""
    return " ".join(str(exc).split())


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / BUNDLE_FILE
    try:
        manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BundleCorruptError(f"{path} is not valid YAML: {_one_line(exc)}",
                                 path=path) from exc
    if not isinstance(manifest, dict):
        raise BundleCorruptError(f"{path} must hold a mapping, got {type(manifest).__name__}",
                                 path=path)
    return manifest


def _check_version(manifest: Mapping[str, Any], root: Path) -> None:
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise BundleCorruptError(
            f"{root / BUNDLE_FILE}: format_version must be an integer, got {version!r}",
            path=root / BUNDLE_FILE)
    if version not in SUPPORTED_FORMAT_VERSIONS:
        newer = version > max(SUPPORTED_FORMAT_VERSIONS)
        raise BundleIncompatibleError(
            f"bundle {root} has format version {version}; this omnibind_ros reads "
            f"{list(SUPPORTED_FORMAT_VERSIONS)}"
            + ("; upgrade omnibind_ros to load it" if newer else "; re-export it"), path=root)


def _safe_relative(rel: Any, root: Path) -> str:
    if not isinstance(rel, str) or not rel:
        raise BundleCorruptError(f"{root / BUNDLE_FILE}: file entry {rel!r} is not a path",
                                 path=root / BUNDLE_FILE)
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or "\\" in rel:
        raise BundleCorruptError(
            f"{root / BUNDLE_FILE}: file {rel!r} is not a relative path inside the bundle",
            path=root / BUNDLE_FILE)
    return pure.as_posix()


def _check_files(manifest: Mapping[str, Any], root: Path, *, verify: bool) -> dict[str, str]:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleCorruptError(f"{root / BUNDLE_FILE}: 'files' (path -> sha256) is missing",
                                 path=root / BUNDLE_FILE)
    checked = {}
    for rel, digest in files.items():
        rel = _safe_relative(rel, root)
        path = root / rel
        if not path.is_file():
            raise BundleCorruptError(
                f"bundle file missing: {rel} (listed in {root / BUNDLE_FILE})", path=path)
        if verify:
            actual = sha256_file(path)
            if actual != str(digest).lower():
                raise BundleCorruptError(
                    f"checksum mismatch for bundle file {rel}: expected sha256 {digest}, "
                    f"got {actual} (the file is damaged or was modified after export)",
                    path=path)
        checked[rel] = str(digest).lower()
    return checked


class _Reader:
    """Typed access to manifest fields; every problem names the field and the bundle."""

    def __init__(self, root: Path, files: Mapping[str, str]) -> None:
        self.root = root
        self.files = files
        self.manifest_path = root / BUNDLE_FILE

    def fail(self, where: str, message: str) -> BundleCorruptError:
        return BundleCorruptError(f"{self.manifest_path}: {where}: {message}",
                                  path=self.manifest_path)

    def section(self, data: Any, key: str, where: str, *, optional: bool = False) -> Any:
        if not isinstance(data, Mapping):
            raise self.fail(where, "must be a mapping")
        if key not in data:
            if optional:
                return None
            raise self.fail(where, f"missing field {key!r}")
        return data[key]

    def mapping(self, data: Any, key: str, where: str, *, optional: bool = False) -> Any:
        value = self.section(data, key, where, optional=optional)
        if value is None and optional:
            return None
        if not isinstance(value, Mapping):
            raise self.fail(f"{where}.{key}", "must be a mapping")
        return value

    def file(self, data: Any, key: str, where: str, *, optional: bool = False) -> Path | None:
        rel = self.section(data, key, where, optional=optional)
        if rel is None and optional:
            return None
        rel = _safe_relative(rel, self.root)
        if rel not in self.files:
            raise self.fail(f"{where}.{key}", f"{rel} is not in the checksummed 'files' list")
        return self.root / rel

    def tensor(self, data: Any, where: str) -> TensorSpec:
        if not isinstance(data, Mapping):
            raise self.fail(where, "must be a mapping with name, shape, dtype")
        shape = data.get("shape")
        if not isinstance(shape, list) or not all(
                isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d > 0)
                for d in shape):
            raise self.fail(where, f"shape must be a list of positive ints / axis names, "
                                   f"got {shape!r}")
        try:
            dtype = np.dtype(str(data.get("dtype"))).name
        except TypeError as exc:
            raise self.fail(where, f"unknown dtype {data.get('dtype')!r}") from exc
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise self.fail(where, f"name must be a string, got {name!r}")
        return TensorSpec(name=name, shape=tuple(shape), dtype=dtype)

    def tensors(self, data: Any, where: str) -> tuple[TensorSpec, ...]:
        if not isinstance(data, list) or not data:
            raise self.fail(where, "must be a non-empty list")
        return tuple(self.tensor(d, f"{where}[{i}]") for i, d in enumerate(data))


def _preprocess_config(modality: str, data: Any, root: Path) -> Any:
    from omnibind_ros.core.preprocess import build_config

    try:
        return build_config(modality, data if data is not None else {})
    except PreprocessConfigError as exc:
        raise BundleIncompatibleError(
            f"bundle {root}: the {modality} preprocessing config cannot be used by this "
            f"omnibind_ros: {exc}", path=root / BUNDLE_FILE) from exc


def _sample_shape(modality: str, config: Any) -> tuple[int, ...] | None:
    from omnibind_ros.core.preprocess import build_preprocessor

    shape = build_preprocessor(modality, config).output_shape
    return tuple(shape) if shape is not None else None


def _encoder(reader: _Reader, name: Any, data: Any, dim: int) -> EncoderSpec:
    where = f"modalities.{name}"
    try:
        modality = parse_modality(name).value
    except ValueError as exc:
        raise BundleIncompatibleError(
            f"bundle {reader.root} has an encoder for modality {name!r}, which this "
            f"omnibind_ros does not know ({exc})", path=reader.manifest_path) from exc
    if modality == Modality.TEXT.value:
        raise reader.fail(where, "text belongs in the 'text' section, not in 'modalities'")
    enc = reader.mapping(data, "encoder", where)
    preprocess = _preprocess_config(modality, reader.section(data, "preprocess", where),
                                    reader.root)
    spec = EncoderSpec(
        modality=modality, file=reader.file(enc, "file", f"{where}.encoder"),
        input=reader.tensor(reader.section(enc, "input", f"{where}.encoder"),
                            f"{where}.encoder.input"),
        output=reader.tensor(reader.section(enc, "output", f"{where}.encoder"),
                             f"{where}.encoder.output"),
        preprocess=preprocess,
        config=dict(reader.mapping(data, "encoder_config", where, optional=True) or {}),
        torch_weights=reader.file(data, "torch_weights", where, optional=True))
    expected = _sample_shape(modality, preprocess)
    if expected is not None and spec.input.shape[1:] != expected:
        raise reader.fail(f"{where}.encoder.input",
                          f"shape {list(spec.input.shape)} does not match the preprocessing "
                          f"output [batch, {', '.join(map(str, expected))}]")
    if spec.output.shape[-1] != dim:
        raise reader.fail(f"{where}.encoder.output",
                          f"embedding size {spec.output.shape[-1]} != embedding_dim {dim}")
    return spec


def _fusion(reader: _Reader, data: Any, dim: int) -> FusionSpec:
    spec = FusionSpec(
        file=reader.file(data, "file", "fusion"),
        kind=str(reader.section(data, "kind", "fusion")),
        inputs=reader.tensors(reader.section(data, "inputs", "fusion"), "fusion.inputs"),
        output=reader.tensor(reader.section(data, "output", "fusion"), "fusion.output"),
        config=dict(reader.mapping(data, "config", "fusion", optional=True) or {}),
        torch_weights=reader.file(data, "torch_weights", "fusion", optional=True))
    if len(spec.inputs) != 2 or len(spec.inputs[0].shape) != 3 or spec.inputs[0].shape[2] != dim:
        raise reader.fail("fusion.inputs", f"expected tokens [batch, tokens, {dim}] and mask")
    return spec


def _text(reader: _Reader, data: Any, dim: int) -> TextSpec:
    enc = reader.mapping(data, "encoder", "text")
    tok = reader.mapping(data, "tokenizer", "text")
    tokenizer_file = reader.file(tok, "file", "text.tokenizer")
    max_length = reader.section(tok, "max_length", "text.tokenizer")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise reader.fail("text.tokenizer.max_length", f"must be an int >= 2, got {max_length!r}")
    spec = TextSpec(
        file=reader.file(enc, "file", "text.encoder"),
        inputs=reader.tensors(reader.section(enc, "inputs", "text.encoder"),
                              "text.encoder.inputs"),
        output=reader.tensor(reader.section(enc, "output", "text.encoder"),
                             "text.encoder.output"),
        tokenizer_file=tokenizer_file, tokenizer_dir=tokenizer_file.parent,
        max_length=max_length, pad_id=int(tok.get("pad_id", 0)),
        pad_token=str(tok.get("pad_token", "[PAD]")),
        preprocess=_preprocess_config(Modality.TEXT.value,
                                      reader.section(data, "preprocess", "text", optional=True),
                                      reader.root),
        config=dict(reader.mapping(data, "encoder_config", "text", optional=True) or {}),
        torch_weights=reader.file(data, "torch_weights", "text", optional=True))
    if spec.output.shape[-1] != dim:
        raise reader.fail("text.encoder.output",
                          f"embedding size {spec.output.shape[-1]} != embedding_dim {dim}")
    return spec


def _labels(reader: _Reader, data: Any, dim: int) -> LabelSet:
    labels_file = reader.file(data, "file", "labels")
    try:
        content = yaml.safe_load(labels_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BundleCorruptError(f"{labels_file} is not valid YAML: {_one_line(exc)}",
                                 path=labels_file) from exc
    names = content.get("names") if isinstance(content, dict) else None
    templates = content.get("prompt_templates", []) if isinstance(content, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BundleCorruptError(f"{labels_file}: 'names' must be a list of strings",
                                 path=labels_file)
    if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
        raise BundleCorruptError(f"{labels_file}: 'prompt_templates' must be a list of strings",
                                 path=labels_file)
    emb_file = reader.file(data, "embeddings", "labels")
    try:
        embeddings = np.load(emb_file, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise BundleCorruptError(f"{emb_file} is not a numpy .npy array: {_one_line(exc)}",
                                 path=emb_file) from exc
    if embeddings.shape != (len(names), dim) or not np.issubdtype(embeddings.dtype, np.floating):
        raise BundleCorruptError(
            f"{emb_file}: label embeddings must be float [C={len(names)}, D={dim}], got "
            f"{embeddings.dtype} {list(embeddings.shape)}", path=emb_file)
    if not np.isfinite(embeddings).all():
        raise BundleCorruptError(f"{emb_file}: label embeddings hold NaN/inf", path=emb_file)
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    embeddings.flags.writeable = False
    return LabelSet(tuple(names), tuple(templates), embeddings,
                    _positive(reader, data, "logit_scale"), _positive(reader, data, "temperature"))


def _positive(reader: _Reader, data: Any, key: str) -> float | None:
    """``labels.<key>``: absent (None) or a finite number > 0."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not (np.isfinite(value) and value > 0):
        raise reader.fail(f"labels.{key}", f"must be a finite number > 0, got {value!r}")
    return float(value)


def _build(manifest: dict[str, Any], root: Path, files: dict[str, str]) -> ModelBundle:
    reader = _Reader(root, files)
    dim = manifest.get("embedding_dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise reader.fail("embedding_dim", f"must be a positive int, got {dim!r}")
    modalities = reader.mapping(manifest, "modalities", "bundle")
    encoders = {spec.modality: spec for spec in
                (_encoder(reader, name, data, dim) for name, data in modalities.items())}
    fusion = manifest.get("fusion")
    text = manifest.get("text")
    return ModelBundle(
        root=root, format_version=manifest["format_version"], dim=dim, modalities=encoders,
        fusion=_fusion(reader, fusion, dim) if fusion is not None else None,
        text=_text(reader, text, dim) if text is not None else None,
        labels=_labels(reader, reader.mapping(manifest, "labels", "bundle"), dim),
        versions=dict(manifest.get("versions") or {}),
        provenance=dict(manifest.get("provenance") or {}),
        export=dict(manifest.get("export") or {}), files=files, manifest=manifest)

