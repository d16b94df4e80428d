"""The tensorrt backend against FAKE tensorrt and torch modules (test/core/trt_fakes.py): the
fake engines run their ONNX graphs with ONNX Runtime on the memory the backend's buffers hold,
so results are compared with the onnxruntime backend, and the fake torch records allocations
and copies (pinned host buffers, asynchronous copies, buffers reused between calls)."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from trt_fakes import FakeTorch, fake_trt

from omnibind_ros.core import engine_cache, engines
from omnibind_ros.core.backends import tensorrt_backend
from omnibind_ros.core.backends.cuda_buffers import BufferPool
from omnibind_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend
from omnibind_ros.core.backends.tensorrt_backend import TensorRTBackend
from omnibind_ros.core.bundle import load_bundle
from omnibind_ros.core.errors import BackendUnavailableError
from omnibind_ros.testing import write_test_bundle

GPU = ("NVIDIA Jetson AGX Orin", "8.7")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(write_test_bundle(tmp_path_factory.mktemp("trt_backend") / "tiny"))


@pytest.fixture(scope="module")
def ort(bundle):
    return OnnxRuntimeBackend(bundle, threads=1)


@pytest.fixture
def fakes(monkeypatch):
    trt, torch = fake_trt(), FakeTorch()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setattr(engine_cache, "gpu_identity", lambda device=0: GPU)
    monkeypatch.setattr(tensorrt_backend, "gpu_identity", lambda device=0: GPU)
    return trt, torch


def _inputs(bundle, modality: str, n: int, seed: int = 0) -> np.ndarray:
    shape = bundle.modalities[modality].sample_shape
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def test_engines_match_onnxruntime_with_async_pinned_copies(bundle, ort, fakes, tmp_path):
    trt, torch = fakes
    backend = TensorRTBackend(bundle, build_missing=True, max_batch=4, engines_dir=tmp_path)
    assert backend.precision == "fp16"
    for modality in bundle.modality_names:
        x = _inputs(bundle, modality, 3)
        np.testing.assert_allclose(backend.encode(modality, x), ort.encode(modality, x),
                                   rtol=1e-5, atol=1e-6)
    x = _inputs(bundle, "image", 6, seed=1)  # > max_batch: two chunks
    np.testing.assert_allclose(backend.encode("image", x), ort.encode("image", x), atol=1e-6)
    tokens = ort.encode("image", _inputs(bundle, "image", 6, seed=2)).reshape(2, 3, -1)
    mask = np.array([[True, True, False], [True, False, True]])
    np.testing.assert_allclose(backend.fuse(tokens, mask), ort.fuse(tokens, mask), atol=1e-6)
    prompts = ["a wooden mug", "a metal can on a table"]
    np.testing.assert_allclose(backend.embed_text(prompts), ort.embed_text(prompts), atol=1e-6)
    h2d = [c for c in torch.copies if c["src"] == "cpu"]
    d2h = [c for c in torch.copies if c["dst"] == "cpu"]
    assert h2d and d2h
    assert all(c["non_blocking"] and c["pinned"] for c in h2d + d2h)  # asynchronous
    assert all(a["pinned"] for a in torch.allocations if a["device"] == "cpu")
    runs = sum(ctx.executions for r in backend._runners.values() for ctx in r.engine.contexts)
    assert torch.synchronized == runs  # one synchronisation per engine run


def test_buffers_are_allocated_once_per_max_shape(bundle, fakes, tmp_path):
    trt, torch = fakes
    backend = TensorRTBackend(bundle, build_missing=True, max_batch=4, engines_dir=tmp_path,
                              modalities=["image"], fusion=False, text=False)
    backend.encode("image", _inputs(bundle, "image", 1))
    after_first = len(torch.allocations)
    assert after_first == 4  # input and output, device and pinned host
    runner = backend._runners["encoder:image"]
    largest = runner.engine.get_tensor_profile_shape("input", 0)[2]
    assert torch.allocations[0]["shape"] == (int(np.prod(largest)),)  # sized for the max
    for n in (4, 2, 8, 3):
        x = _inputs(bundle, "image", n, seed=n)
        out = backend.encode("image", x)
        assert out.shape == (n, bundle.dim)
    assert len(torch.allocations) == after_first  # reused: nothing allocated again
    first = backend.encode("image", _inputs(bundle, "image", 1, seed=5))
    kept = first.copy()
    backend.encode("image", _inputs(bundle, "image", 1, seed=6))
    np.testing.assert_array_equal(first, kept)  # results are copies, not the pinned buffer


def test_int8_engines_load_without_building(bundle, fakes, tmp_path):
    trt, _ = fakes
    rng = np.random.default_rng(0)
    calibration = {"encoder:image": [_inputs(bundle, "image", 8, seed=s) for s in range(2)]}
    engines.build_engines(bundle, trt=trt, engines_dir=tmp_path, precision="int8",
                          modalities=["image"], calibration=calibration, calib_batch=4)
    built = len(trt.builds)
    backend = TensorRTBackend(bundle, precision="int8", engines_dir=tmp_path,
                              modalities=["image"])
    assert len(trt.builds) == built and backend.precision == "int8"
    assert backend.encode("image", rng.standard_normal(
        (2, *bundle.modalities["image"].sample_shape)).astype(np.float32)).shape == (2, bundle.dim)
    with pytest.raises(BackendUnavailableError, match="no up-to-date TensorRT engines"):
        TensorRTBackend(bundle, precision="fp16", engines_dir=tmp_path, modalities=["image"])
    with pytest.raises(BackendUnavailableError, match="INT8 needs calibration batches"):
        TensorRTBackend(bundle, precision="int8", engines_dir=tmp_path / "other",
                        build_missing=True, modalities=["image"])


def test_build_missing_rebuilds_int8_only_from_a_calibration_cache(bundle, fakes, tmp_path):
    trt, _ = fakes
    calibration = {"encoder:image": [_inputs(bundle, "image", 8, seed=s) for s in range(2)]}
    built = engines.build_engines(bundle, trt=trt, engines_dir=tmp_path, precision="int8",
                                  modalities=["image"], calibration=calibration, calib_batch=4)
    built["encoder:image"].unlink()  # the engine is lost, its calibration cache is not
    backend = TensorRTBackend(bundle, precision="int8", engines_dir=tmp_path,
                              build_missing=True, modalities=["image"])
    assert trt.calibrations[-1] == "cache" and backend.precision == "int8"
    built["encoder:image"].unlink()
    (built["encoder:image"].parent / "encoder_image.calib").unlink()
    with pytest.raises(BackendUnavailableError, match="INT8 needs calibration batches"):
        TensorRTBackend(bundle, precision="int8", engines_dir=tmp_path, build_missing=True,
                        modalities=["image"])


def test_precision_options(bundle, fakes, tmp_path):
    with pytest.raises(BackendUnavailableError, match="not bf16"):
        TensorRTBackend(bundle, precision="bf16", engines_dir=tmp_path)
    with pytest.raises(ValueError, match="contradicts"):
        TensorRTBackend(bundle, precision="fp16", fp16=False, engines_dir=tmp_path)
    backend = TensorRTBackend(bundle, fp16=False, build_missing=True, engines_dir=tmp_path,
                              modalities=["image"], text=False)
    assert backend.precision == "fp32"


def test_dla_engines_deserialised_for_their_core(bundle, fakes, tmp_path):
    trt, _ = fakes
    backend = TensorRTBackend(bundle, build_missing=True, engines_dir=tmp_path, dla_core=1,
                              modalities=["image"])
    assert backend.engine_dir.name.endswith("_dla1")
    cores = sorted(r.DLA_core for r in trt.runtimes)
    assert cores == [-1, -1, 1]  # the encoder on DLA core 1; fusion and text on the GPU
    assert backend._runners["encoder:image"].max_batch == 1
    x = _inputs(bundle, "image", 3)
    assert backend.encode("image", x).shape == (3, bundle.dim)  # chunked to batch 1


def test_buffer_pool_reuse_and_growth():
    torch = FakeTorch()
    pool = BufferPool(torch, "cuda:0")
    pool.reserve("x", (8, 4))
    a = pool.device("x", (2, 4), np.float32)
    b = pool.device("x", (8, 4), np.float32)
    assert pool.allocations == 1 and torch.allocations[0]["shape"] == (32,)
    assert a.data_ptr() == b.data_ptr()  # views of one buffer
    pool.device("x", (9, 4), np.float32)  # bigger than reserved: grows
    assert pool.allocations == 2
    pool.device("x", (2, 4), np.int64)  # another dtype: a new buffer
    assert pool.allocations == 3
    host = pool.host("x", (2, 4), np.float32)
    assert torch.allocations[-1] == {"shape": (32,), "device": "cpu", "pinned": True}
    assert host.numpy().shape == (2, 4)
    assert BufferPool(torch, "cuda:0", pin_memory=False).host("y", (1,), "float32").pinned is False
    with pytest.raises(ValueError, match="no torch dtype"):
        pool.device("z", (1,), np.complex64)


def test_fake_stream_defers_async_copies_until_synchronize():
    """The fake torch is as asynchronous as CUDA, so the backend's synchronisation is tested."""
    torch = FakeTorch()
    stream = torch.cuda.Stream()
    host = torch.empty((4,), pin_memory=True)
    host.numpy()[:] = 1.0
    dev = torch.empty((4,), device="cuda:0")
    back = torch.empty((4,), pin_memory=True)
    back.numpy()[:] = 0.0
    with torch.cuda.stream(stream):
        dev.copy_(host, non_blocking=True)
        back.copy_(dev, non_blocking=True)
    with pytest.raises(AssertionError, match="still queued"):
        back.numpy()  # read before the stream is synchronised
    with pytest.raises(AssertionError, match="still queued"):
        host.numpy()  # its copy to the device has not run yet either
    stream.synchronize()
    np.testing.assert_array_equal(back.numpy(), np.ones(4, np.float32))
    with torch.cuda.stream(stream):
        dev.copy_(torch.from_numpy(np.full(4, 2.0, np.float32)))  # blocking: done on return
        back.copy_(dev)
    np.testing.assert_array_equal(back.numpy(), np.full(4, 2.0, np.float32))
