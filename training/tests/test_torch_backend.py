"""The runtime's torch fallback (``omnibind_ros.core.backends.torch_backend``) on the tiny bundle:
it rebuilds every module with this package's builders and matches ONNX Runtime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from omnibind_ros.core.backends import BackendBase, create_backend
from omnibind_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend
from omnibind_ros.core.bundle import BUNDLE_FILE, dump_manifest, load_bundle
from omnibind_ros.core.errors import BackendUnavailableError
from omnibind_train import testing

ATOL = 1e-4


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return testing.build_tiny_bundle(tmp_path_factory.mktemp("torch_backend") / "tiny")


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def ort(bundle) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(bundle, threads=1)


def _batch(bundle, modality: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, *bundle.modalities[modality].sample_shape)
    return rng.standard_normal(shape).astype(np.float32)


def _tokens(ort, bundle, n: int) -> np.ndarray:
    names = testing.TINY_MODALITIES[:n]
    return np.stack([ort.encode(m, _batch(bundle, m, 2, seed=i)) for i, m in enumerate(names)],
                    axis=1)  # [2, n, D]


def test_torch_backend_matches_onnxruntime(bundle, ort):
    threads = torch.get_num_threads()
    backend = create_backend("torch", bundle, threads=1)
    torch.set_num_threads(threads)
    assert isinstance(backend, BackendBase) and backend.name == "torch"
    for modality in bundle.modality_names:
        x = _batch(bundle, modality, 2, seed=7)
        np.testing.assert_allclose(backend.encode(modality, x), ort.encode(modality, x),
                                   atol=ATOL, rtol=0)
    tokens = _tokens(ort, bundle, 4)
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
