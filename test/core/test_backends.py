"""Inference backends: ONNX Runtime on the runtime's test bundle (encoders, fusion with padding,
text embedding, label embedding), create_backend and TensorRT, with no torch or training package.
The ONNX-vs-torch parity tests (the training package's tiny bundle against the torch modules it
was exported from) live with the training package, training/tests/test_backend_parity.py, as do
the torch fallback's tests, training/tests/test_torch_backend.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from omnibind_ros.core.backends import InferenceBackend, create_backend, embed_labels
from omnibind_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend
from omnibind_ros.core.bundle import load_bundle
from omnibind_ros.core.errors import BackendUnavailableError, InvalidShapeError
from omnibind_ros.testing import TEST_MODALITIES, label_input, write_test_bundle

ATOL = 1e-4
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_bundle(tmp_path_factory.mktemp("backends") / "tiny")


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def ort(bundle) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(bundle, threads=1)


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` -> ImportError


def _batch(bundle, modality: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, *bundle.modalities[modality].sample_shape)
    return rng.standard_normal(shape).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _projection(bundle, modality: str) -> np.ndarray:
    """The test bundle's encoder weights [F, D] (encoder = unit(flatten(x) @ projection))."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(bundle.modalities[modality].file)).graph
    return numpy_helper.to_array(next(t for t in graph.initializer if t.name == "projection"))


def test_backend_satisfies_the_protocol(ort, bundle):
    assert isinstance(ort, InferenceBackend)
    assert ort.name == "onnxruntime" and ort.providers == ("CPUExecutionProvider",)
    assert ort.modalities == bundle.modality_names


@pytest.mark.parametrize("modality", TEST_MODALITIES)
@pytest.mark.parametrize("n", [1, 5])
def test_encode_runs_the_bundle_graph(ort, bundle, modality, n):
    x = _batch(bundle, modality, n, seed=n)
    out = ort.encode(modality, x)
    assert out.shape == (n, bundle.dim) and out.dtype == np.float32
    reference = _unit(x.reshape(n, -1).astype(np.float64) @ _projection(bundle, modality))
    np.testing.assert_allclose(out, reference, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # one sample at a time gives the same rows as the batch
    np.testing.assert_allclose(ort.encode(modality, x[-1:]), out[-1:], atol=1e-6, rtol=0)


def test_encode_rejects_what_the_graph_cannot_take(ort, bundle):
    with pytest.raises(InvalidShapeError, match=r"image batch must have shape \[B, 3, 32, 32\]"):
        ort.encode("image", np.zeros((2, 3, 64, 64), np.float32))
    with pytest.raises(InvalidShapeError):
        ort.encode("image", np.zeros((3, 32, 32), np.float32))  # no batch axis
    with pytest.raises(InvalidShapeError):
        ort.encode("point_cloud", np.zeros((0, 64, 3), np.float32))
    with pytest.raises(ValueError, match="no encoder for modality 'sonar'"):
        ort.encode("sonar", np.zeros((1, 3), np.float32))
    # float64 input is cast, not rejected
    assert ort.encode("point_cloud", _batch(bundle, "point_cloud", 2).astype(np.float64)).shape \
        == (2, 32)


def test_encode_with_real_preprocessing(ort, bundle):
    from omnibind_ros.core.preprocess import build_preprocessor

    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    x = build_preprocessor("image", bundle.preprocess_configs["image"])(image)
    assert ort.encode("image", x[None]).shape == (1, bundle.dim)


def _tokens(ort, bundle, n: int) -> np.ndarray:
    names = TEST_MODALITIES[:n]
    return np.stack([ort.encode(m, _batch(bundle, m, 2, seed=i)) for i, m in enumerate(names)],
                    axis=1)  # [2, n, D]


def test_fuse_ignores_padding(ort, bundle):
    live = _tokens(ort, bundle, 3)
    mask = np.ones(live.shape[:2], dtype=bool)
    fused = ort.fuse(live, mask)
    assert fused.shape == (2, bundle.dim) and fused.dtype == np.float32
    np.testing.assert_allclose(fused, _unit(live.astype(np.float64).mean(axis=1)), atol=1e-6)
    # the same sensors padded to 6 slots with garbage (NaN included) give the same result
    padded = np.full((2, 6, bundle.dim), 1e3, dtype=np.float32)
    padded[:, [0, 2, 5]] = live
    padded[1, 1] = np.nan
    pad_mask = np.zeros((2, 6), dtype=bool)
    pad_mask[:, [0, 2, 5]] = True
    np.testing.assert_allclose(ort.fuse(padded, pad_mask), fused, atol=1e-6, rtol=0)


def test_fuse_handles_varying_token_counts(ort, bundle):
    tokens = _tokens(ort, bundle, 6)
    for n in (1, 2, 6):
        mask = np.ones((2, n), dtype=bool)
        mask[1, n - 1] = n == 1  # the second sample lost its last sensor
        out = ort.fuse(tokens[:, :n], mask)
        expected = [_unit(tokens[b, :n][mask[b]].astype(np.float64).mean(axis=0))
                    for b in range(2)]
        np.testing.assert_allclose(out, np.stack(expected), atol=1e-6, rtol=0)
    with pytest.raises(InvalidShapeError, match="mask"):
        ort.fuse(tokens, np.ones((2, 5), dtype=bool))


def test_fused_label_inputs_are_recognised(ort, bundle):
    # every modality shown "plastic cube", one of them corrupted: the fusion still says cube
    rng = np.random.default_rng(0)
    tokens = []
    for i, modality in enumerate(bundle.modality_names):
        x = label_input(bundle, modality, "plastic cube")
        if i == 0:
            x = rng.standard_normal(x.shape).astype(np.float32)
        tokens.append(ort.encode(modality, x[None])[0])
    fused = ort.fuse(np.stack(tokens)[None], np.ones((1, len(tokens)), bool))[0]
    scores = bundle.logit_scale * bundle.label_embeddings @ fused
    assert bundle.label_names[int(np.argmax(scores))] == "plastic cube"


def test_embed_text(ort, bundle):
    prompts = ["a photo of a wooden mug.", "metal", "a rubber duck on the floor of a lab"]
    out = ort.embed_text(prompts)
    assert out.shape == (3, bundle.dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ort.embed_text(prompts[1]), out[1:2], atol=1e-6, rtol=0)
    np.testing.assert_allclose(ort.embed_text(prompts[::-1]), out[::-1], atol=1e-6, rtol=0)
    assert out[0] @ out[1] < 0.99  # different texts, different embeddings
    assert ort.embed_text([]).shape == (0, 32)


def test_long_text_is_truncated_to_the_bundle_length(ort, bundle):
    ids, mask = ort.tokenizer(["word " * 500, "short"])
    assert ids.shape == (2, bundle.text.max_length) and mask[1].sum() < bundle.text.max_length
    assert np.isfinite(ort.embed_text(["word " * 500])).all()


def test_embed_labels_reproduces_the_cached_label_embeddings(ort, bundle):
    np.testing.assert_allclose(embed_labels(ort, bundle.label_names), bundle.label_embeddings,
                               atol=ATOL, rtol=0)
    assert embed_labels(ort, ["pine cone"]).shape == (1, bundle.dim)
    # a label is the normalised mean of its prompts' embeddings
    prompts = [t.format("pine cone") for t in bundle.prompt_templates]
    np.testing.assert_allclose(embed_labels(ort, ["pine cone"])[0],
                               _unit(ort.embed_text(prompts).mean(axis=0)), atol=1e-6)
    assert embed_labels(ort, []).shape == (0, bundle.dim)


def test_modality_subset_creates_only_those_sessions(bundle):
    backend = OnnxRuntimeBackend(bundle, threads=1, modalities=["audio"], text=False)
    assert backend.modalities == ("audio",)
    with pytest.raises(ValueError, match="serves \\['audio'\\]"):
        backend.encode("image", _batch(bundle, "image", 1))
    with pytest.raises(ValueError, match="text=False"):
        backend.embed_text(["x"])
    with pytest.raises(ValueError, match="no encoder for \\['sonar'\\]"):
        OnnxRuntimeBackend(bundle, modalities=["sonar"])


def test_unavailable_execution_provider(bundle):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        OnnxRuntimeBackend(bundle, providers="cuda")


def test_tensorrt_missing_raises_or_falls_back(bundle, no_tensorrt):
    with pytest.raises(BackendUnavailableError, match="tensorrt is not installed"):
        create_backend("tensorrt", bundle)
    backend = create_backend("trt", bundle, fallback=True, fp16=True, threads=1)
    assert backend.name == "onnxruntime"
    assert backend.encode("image", _batch(bundle, "image", 1)).shape == (1, bundle.dim)
    assert create_backend("auto", bundle, threads=1).name == "onnxruntime"


def test_create_backend_names_and_options(bundle_dir, bundle):
    assert create_backend("ORT", str(bundle_dir), threads=1).name == "onnxruntime"
    with pytest.raises(ValueError, match="unknown inference backend 'openvino'"):
        create_backend("openvino", bundle)
    with pytest.raises(TypeError, match="fp16"):
        create_backend("onnxruntime", bundle, fp16=True)


def test_onnxruntime_backend_runs_without_torch(bundle_dir):
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from omnibind_ros.core.backends import create_backend
        backend = create_backend("onnxruntime", {str(bundle_dir)!r}, threads=1)
        shape = (1, *backend.bundle.modalities["image"].sample_shape)
        emb = backend.encode("image", np.zeros(shape, np.float32))
        fused = backend.fuse(emb[:, None], np.ones((1, 1), bool))
        text = backend.embed_text(["a wooden mug"])
        print(json.dumps({{"torch": "torch" in sys.modules,
                          "transformers": "transformers" in sys.modules,
                          "shapes": [emb.shape, fused.shape, text.shape]}}))
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"torch": False, "transformers": False,
                   "shapes": [[1, 32], [1, 32], [1, 32]]}


def _tensorrt_ready() -> bool:
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.tensorrt
@pytest.mark.skipif(not _tensorrt_ready(), reason="needs TensorRT and a CUDA GPU")
def test_tensorrt_backend_matches_onnxruntime(tmp_path, ort):
    root = write_test_bundle(tmp_path / "tiny")
    bundle = load_bundle(root)
    with pytest.raises(BackendUnavailableError, match="build_missing=True"):
        create_backend("tensorrt", bundle)
    trt = create_backend("tensorrt", bundle, build_missing=True, fp16=True, max_batch=4)
    assert trt.name == "tensorrt"
    for modality in bundle.modality_names:
        x = _batch(bundle, modality, 6, seed=3)  # > max_batch: chunked
        np.testing.assert_allclose(trt.encode(modality, x), ort.encode(modality, x), atol=2e-2)
    tokens = _tokens(ort, bundle, 3)
    mask = np.array([[True, True, True], [True, False, True]])
    np.testing.assert_allclose(trt.fuse(tokens, mask), ort.fuse(tokens, mask), atol=1e-4)
    prompts = ["a wooden mug", "a metal can on a table"]
    np.testing.assert_allclose(trt.embed_text(prompts), ort.embed_text(prompts), atol=2e-2)
    assert create_backend("tensorrt", bundle).name == "tensorrt"  # engines cached now
