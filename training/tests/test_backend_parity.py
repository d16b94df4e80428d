"""ONNX Runtime (``omnibind_ros.core.backends.onnxruntime_backend``) on this package's tiny bundle
against the torch modules it was exported from (same seed, same weights): encoders, fusion with
padding and varying token counts, text embedding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from omnibind_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend
from omnibind_ros.core.bundle import load_bundle
from omnibind_ros.core.errors import InvalidShapeError
from omnibind_train import testing

ATOL = 1e-4


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory):
    return load_bundle(testing.build_tiny_bundle(tmp_path_factory.mktemp("parity") / "tiny"))


@pytest.fixture(scope="module")
def ort(bundle) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(bundle, threads=1)


@pytest.fixture(scope="module")
def models():
    """The torch modules the bundle was exported from (same seed, same weights)."""
    return testing.tiny_models()


def _torch(module, *arrays: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(*(torch.from_numpy(a) for a in arrays)).numpy()


@pytest.mark.parametrize("modality", testing.TINY_MODALITIES)
@pytest.mark.parametrize("n", [1, 5])
def test_ort_encode_matches_torch(ort, bundle, models, modality, n):
    x = testing.random_inputs(bundle, modality, n, seed=n)
    out = ort.encode(modality, x)
    assert out.shape == (n, bundle.dim) and out.dtype == np.float32
    np.testing.assert_allclose(out, _torch(models.encoders[modality], x), atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_fuse_matches_torch_and_ignores_padding(ort, bundle, models):
    live = testing.token_stack(ort, bundle, 3)
    mask = np.ones(live.shape[:2], dtype=bool)
    fused = ort.fuse(live, mask)
    assert fused.shape == (2, bundle.dim)
    np.testing.assert_allclose(fused, _torch(models.fusion, live, mask), atol=ATOL, rtol=0)
    # the same sensors padded to 6 slots with garbage (NaN included) give the same result
    padded = np.full((2, 6, bundle.dim), 1e3, dtype=np.float32)
    padded[:, [0, 2, 5]] = live
    padded[1, 1] = np.nan
    pad_mask = np.zeros((2, 6), dtype=bool)
    pad_mask[:, [0, 2, 5]] = True
    np.testing.assert_allclose(ort.fuse(padded, pad_mask), fused, atol=1e-5, rtol=0)


def test_fuse_matches_torch_with_varying_token_counts(ort, bundle, models):
    tokens = testing.token_stack(ort, bundle, 6)
    for n in (1, 2, 6):
        mask = np.ones((2, n), dtype=bool)
        mask[1, n - 1] = n == 1  # the second sample lost its last sensor
        out = ort.fuse(tokens[:, :n], mask)
        np.testing.assert_allclose(out, _torch(models.fusion, tokens[:, :n], mask), atol=ATOL,
                                   rtol=0)
    with pytest.raises(InvalidShapeError, match="mask"):
        ort.fuse(tokens, np.ones((2, 5), dtype=bool))


def test_embed_text_matches_torch(ort, models):
    prompts = ["a photo of a wooden mug.", "metal", "a rubber duck on the floor of a lab"]
    batch = models.text_encoder.tokenizer(prompts)
    with torch.no_grad():
        ref = models.text_encoder(batch["input_ids"], batch["attention_mask"]).numpy()
    np.testing.assert_allclose(ort.embed_text(prompts), ref, atol=ATOL, rtol=0)
    np.testing.assert_allclose(ort.embed_text(prompts[1]), ref[1:2], atol=ATOL, rtol=0)
    assert ort.embed_text([]).shape == (0, 32)
