"""The runtime's torch fallback (``omnibind_ros.core.backends.torch_backend``) on the tiny bundle:
it finds this package's module builder through the ``omnibind_ros.torch_builders`` entry point,
rebuilds every module with it and matches ONNX Runtime."""
from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from omnibind_ros.core.backends import BackendBase, create_backend, torch_backend
from omnibind_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend
from omnibind_ros.core.bundle import BUNDLE_FILE, dump_manifest, load_bundle
from omnibind_ros.core.errors import BackendUnavailableError
from omnibind_train import testing
from omnibind_train.models.build import build_torch_module

ATOL = 1e-4
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return testing.build_tiny_bundle(tmp_path_factory.mktemp("torch_backend") / "tiny")


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def ort(bundle) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(bundle, threads=1)


def test_torch_backend_matches_onnxruntime(bundle, ort):
    threads = torch.get_num_threads()
    backend = create_backend("torch", bundle, threads=1)
    torch.set_num_threads(threads)
    assert isinstance(backend, BackendBase) and backend.name == "torch"
    for modality in bundle.modality_names:
        x = testing.random_inputs(bundle, modality, 2, seed=7)
        np.testing.assert_allclose(backend.encode(modality, x), ort.encode(modality, x),
                                   atol=ATOL, rtol=0)
    tokens = testing.token_stack(ort, bundle, 4)
    mask = np.array([[True, True, False, True], [True, False, False, False]])
    np.testing.assert_allclose(backend.fuse(tokens, mask), ort.fuse(tokens, mask), atol=ATOL)
    np.testing.assert_allclose(backend.embed_text(["a metal can."]),
                               ort.embed_text(["a metal can."]), atol=ATOL, rtol=0)


def test_torch_backend_needs_weights_in_the_bundle(tmp_path):
    root = testing.build_tiny_bundle(tmp_path / "tiny")
    manifest = yaml.safe_load((root / BUNDLE_FILE).read_text())
    manifest["modalities"]["image"].pop("torch_weights")
    dump_manifest(manifest, root / BUNDLE_FILE)
    with pytest.raises(BackendUnavailableError, match="no torch weights for image"):
        create_backend("torch", load_bundle(root), threads=None)


def test_the_builder_entry_point_resolves_to_the_model_builder():
    entries = importlib.metadata.entry_points(group=torch_backend.BUILDER_GROUP)
    assert torch_backend.BUILDER_GROUP == "omnibind_ros.torch_builders"
    assert {e.name: e.value for e in entries}["default"] == \
        "omnibind_train.models.build:build_torch_module", (
            "the installed omnibind_train does not register its builder; reinstall it "
            "(pip install --no-deps -e training)")
    assert entries["default"].load() is build_torch_module
    assert torch_backend.default_builder() is build_torch_module
    assert torch_backend.default_builder("default") is build_torch_module


def test_missing_builder_names_the_group_and_what_to_install(bundle, monkeypatch):
    monkeypatch.setattr(torch_backend.importlib.metadata, "entry_points",
                        lambda **kw: importlib.metadata.EntryPoints(()))
    with pytest.raises(BackendUnavailableError,
                       match=r"'omnibind_ros.torch_builders'.*pip install -e training"):
        create_backend("torch", bundle, threads=None)


def test_unknown_or_broken_builders_are_reported(monkeypatch):
    with pytest.raises(BackendUnavailableError, match="no torch module builder 'nope'"):
        torch_backend.default_builder("nope")
    broken = importlib.metadata.EntryPoint(name="default", value="no_such_module:build",
                                           group=torch_backend.BUILDER_GROUP)
    monkeypatch.setattr(torch_backend.importlib.metadata, "entry_points",
                        lambda **kw: importlib.metadata.EntryPoints((broken,)))
    with pytest.raises(BackendUnavailableError, match="no_such_module:build.*cannot be loaded"):
        torch_backend.default_builder()


def test_an_explicit_builder_bypasses_the_entry_point(bundle, monkeypatch):
    monkeypatch.setattr(torch_backend.importlib.metadata, "entry_points",
                        lambda **kw: importlib.metadata.EntryPoints(()))
    calls = []

    def builder(component, config, bundle_):
        calls.append(component)
        return build_torch_module(component, config, bundle_)

    threads = torch.get_num_threads()
    backend = create_backend("torch", bundle, threads=1, builder=builder)
    torch.set_num_threads(threads)
    assert sorted(set(calls)) == ["encoder", "fusion", "text"]
    x = testing.random_inputs(bundle, "image", 1)
    assert backend.encode("image", x).shape == (1, bundle.dim)


def test_runtime_sources_never_import_the_training_package():
    """Core finds the builders through the entry point only: no ``omnibind_train`` import
    anywhere under ``omnibind_ros/`` (docstrings may name the package)."""
    offenders = []
    for path in sorted((REPO / "omnibind_ros").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "omnibind_train" for n in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == [], f"omnibind_ros imports omnibind_train at {offenders}"
