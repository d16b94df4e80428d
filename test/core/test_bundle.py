"""Model bundle loading and validation: checksums, missing files, versions, modalities, archives.

Bundles come from :func:`omnibind_ros.testing.write_test_bundle` (onnx.helper graphs, no torch);
each test writes its own to damage.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from omnibind_ros.core.bundle import (
    BUNDLE_FILE,
    archive_bundle,
    checksum_tree,
    dump_manifest,
    load_bundle,
)
from omnibind_ros.core.errors import (
    BundleCorruptError,
    BundleError,
    BundleIncompatibleError,
    BundleNotFoundError,
)
from omnibind_ros.core.preprocess import ImagePreprocessConfig, build_preprocessor
from omnibind_ros.testing import (
    TEST_LABELS,
    TEST_LOGIT_SCALE,
    TEST_MODALITIES,
    TEST_TEMPLATES,
    write_test_bundle,
)


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return write_test_bundle(tmp_path / "tiny")


def edit_manifest(root: Path, change: Callable[[dict], None]) -> None:
    manifest = yaml.safe_load((root / BUNDLE_FILE).read_text())
    change(manifest)
    dump_manifest(manifest, root / BUNDLE_FILE)


def test_loads_a_valid_bundle(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert bundle.root == bundle_dir
    assert bundle.format_version == 1 and bundle.dim == 32
    assert bundle.modality_names == TEST_MODALITIES
    assert isinstance(bundle.preprocess_configs["image"], ImagePreprocessConfig)
    assert bundle.preprocess_configs["image"].size == 32
    assert bundle.preprocess_configs["text"].prompt_templates == TEST_TEMPLATES
    for modality, spec in bundle.modalities.items():
        assert spec.file.is_file() and spec.torch_weights is None
        assert spec.sample_shape == build_preprocessor(modality, spec.preprocess).output_shape
        assert spec.input.shape[0] == "batch" and spec.output.shape == ("batch", 32)
        assert spec.config["modality"] == modality
    assert bundle.fusion.kind == "mean" and bundle.fusion.max_tokens is None
    assert [s.dtype for s in bundle.fusion.inputs] == ["float32", "bool"]
    assert bundle.text.tokenizer_file.name == "tokenizer.json" and bundle.text.max_length == 32
    assert bundle.label_names == TEST_LABELS
    assert bundle.label_embeddings.shape == (5, 32)
    assert bundle.label_embeddings.dtype == np.float32
    assert not bundle.label_embeddings.flags.writeable
    assert bundle.logit_scale == pytest.approx(TEST_LOGIT_SCALE)
    assert bundle.versions["opset"] == 18
    assert bundle.provenance["kind"] == "runtime test bundle"
    assert load_bundle(bundle_dir / BUNDLE_FILE).modality_names == bundle.modality_names


def test_name_and_family_come_from_the_manifest_else_the_directory(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert bundle.name == "tiny" and bundle.family == ""
    edit_manifest(bundle_dir, lambda m: m["provenance"].update(family="binding"))
    assert load_bundle(bundle_dir).family == "binding"
    edit_manifest(bundle_dir, lambda m: m.update(name="robot_model", family="unialign"))
    bundle = load_bundle(bundle_dir)
    assert (bundle.name, bundle.family) == ("robot_model", "unialign")


def test_flipped_byte_is_a_checksum_error_naming_the_file(bundle_dir):
    path = bundle_dir / "encoders" / "image.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleCorruptError, match=r"checksum mismatch .*encoders/image\.onnx") \
            as info:
        load_bundle(bundle_dir)
    assert info.value.path == path
    assert load_bundle(bundle_dir, verify=False).dim == 32  # verify=False trusts the files


def test_missing_file_is_named(bundle_dir):
    (bundle_dir / "labels" / "label_embeddings.npy").unlink()
    with pytest.raises(BundleCorruptError, match=r"missing: labels/label_embeddings\.npy"):
        load_bundle(bundle_dir)


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleNotFoundError, match="not found") as info:
        load_bundle(tmp_path / "nowhere")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(BundleNotFoundError, match="no bundle.yaml"):
        load_bundle(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"not a tar")
    with pytest.raises(BundleNotFoundError, match="neither a bundle directory nor"):
        load_bundle(tmp_path / "model.onnx")


@pytest.mark.parametrize("version, message", [(2, "upgrade omnibind_ros"), (0, "re-export")])
def test_unsupported_format_version(bundle_dir, version, message):
    edit_manifest(bundle_dir, lambda m: m.update(format_version=version))
    with pytest.raises(BundleIncompatibleError, match=message):
        load_bundle(bundle_dir)


def test_unknown_modality(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m["modalities"].update(
        sonar=m["modalities"].pop("image")))
    with pytest.raises(BundleIncompatibleError, match="'sonar'"):
        load_bundle(bundle_dir)


def test_preprocess_config_this_version_rejects(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m["modalities"]["audio"]["preprocess"].update(
        spectral_whitening=True))
    with pytest.raises(BundleIncompatibleError, match="audio preprocessing config"):
        load_bundle(bundle_dir)


def test_preprocess_shape_must_match_the_graph(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m["modalities"]["image"]["preprocess"].update(size=64))
    with pytest.raises(BundleCorruptError, match=r"modalities\.image\.encoder\.input.*64, 64"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("change, error, message", [
    (lambda m: m.pop("files"), BundleCorruptError, "'files'"),
    (lambda m: m.pop("embedding_dim"), BundleCorruptError, "embedding_dim"),
    (lambda m: m["modalities"]["image"].pop("encoder"), BundleCorruptError,
     r"modalities\.image: missing field 'encoder'"),
    (lambda m: m["files"].update({"../../etc/passwd": "0" * 64}), BundleCorruptError,
     "not a relative path inside the bundle"),
    (lambda m: m["files"].pop("encoders/thermal.onnx"), BundleCorruptError,
     "encoders/thermal.onnx is not in the checksummed 'files' list"),
    (lambda m: m.update(embedding_dim=16), BundleCorruptError, "embedding size 32 != "),
    (lambda m: m.update(format_version="one"), BundleCorruptError, "format_version"),
    (lambda m: m["labels"].update(logit_scale=-1.0), BundleCorruptError,
     r"labels\.logit_scale: must be a finite number > 0"),
    (lambda m: m["labels"].update(logit_scale=True), BundleCorruptError, "logit_scale"),
])
def test_malformed_manifest(bundle_dir, change, error, message):
    edit_manifest(bundle_dir, change)
    with pytest.raises(error, match=message):
        load_bundle(bundle_dir)


def test_logit_scale_is_optional(bundle_dir):
    edit_manifest(bundle_dir, lambda m: m["labels"].pop("logit_scale"))
    assert load_bundle(bundle_dir).logit_scale is None


def test_invalid_yaml(bundle_dir):
    (bundle_dir / BUNDLE_FILE).write_text("format_version: [1\n")
    with pytest.raises(BundleCorruptError, match="not valid YAML"):
        load_bundle(bundle_dir)


def _rehash(root: Path, rel: str) -> None:
    digest = hashlib.sha256((root / rel).read_bytes()).hexdigest()
    edit_manifest(root, lambda m: m["files"].update({rel: digest}))


def test_label_embeddings_must_be_c_by_d(bundle_dir):
    rel = "labels/label_embeddings.npy"
    np.save(bundle_dir / rel, np.zeros((5, 31), dtype=np.float32))
    _rehash(bundle_dir, rel)  # a consistent but wrong bundle: checksums alone do not catch it
    with pytest.raises(BundleCorruptError, match=r"\[C=5, D=32\].*\[5, 31\]"):
        load_bundle(bundle_dir)


def test_label_embeddings_refuse_pickles(bundle_dir):
    rel = "labels/label_embeddings.npy"
    np.save(bundle_dir / rel, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    _rehash(bundle_dir, rel)
    with pytest.raises(BundleCorruptError, match="not a numpy .npy array"):
        load_bundle(bundle_dir)


def test_every_error_is_a_bundle_error():
    for cls in (BundleNotFoundError, BundleCorruptError, BundleIncompatibleError):
        assert issubclass(cls, BundleError) and issubclass(cls, RuntimeError)


def test_checksum_tree_skips_manifest_and_engines(bundle_dir):
    (bundle_dir / "engines" / "gpu_trt10").mkdir(parents=True)
    (bundle_dir / "engines" / "gpu_trt10" / "image.engine").write_bytes(b"engine")
    sums = checksum_tree(bundle_dir)
    assert sums == yaml.safe_load((bundle_dir / BUNDLE_FILE).read_text())["files"]
    load_bundle(bundle_dir)  # engines built on the robot do not invalidate the bundle


def test_archive_round_trip_and_reuse(bundle_dir, tmp_path):
    archive = archive_bundle(bundle_dir, tmp_path / "tiny.tar.gz")
    cache = tmp_path / "cache"
    first = load_bundle(archive, cache_dir=cache)
    assert first.root.parent.parent == cache and first.root.name == "tiny"
    assert first.modality_names == TEST_MODALITIES
    again = load_bundle(archive, cache_dir=cache)
    assert again.root == first.root
    assert len(list(cache.iterdir())) == 1  # extracted once


def test_archive_with_a_path_escaping_its_root_is_rejected(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"boom"))
    with pytest.raises(BundleCorruptError, match="cannot extract"):
        load_bundle(archive, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "escaped.txt").exists()
