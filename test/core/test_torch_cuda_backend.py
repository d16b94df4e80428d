"""The torch_cuda backend without a GPU: the reason it gives where CUDA is missing, the
create_backend fallback, the precision casting (``device="cpu"`` with fp32 / bf16), the fusion
head kept float32, and the CUDA-graph cache with a fake capture.

The torch bundle here is the runtime test bundle plus safetensors weights for modules defined in
this file (linear encoders, a masked-softmax fusion head that reduces to the test bundle's mean
head, a mean-of-word-embeddings text encoder), passed with ``builder=``, so no training package
is needed (the trained default bundle in bf16 and the GPU machine's dry run are checked in
``training/tests/test_gpu_check.py``, where the training package is importable).

The CUDA path's host side (pinned staging buffers, stream synchronisation, the device context)
runs on the CPU with a recording stand-in for ``torch.cuda``. The GPU check's pack
(``benchmarks/_gpu_pack.py``) refuses to overwrite what is not a pack."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from omnibind_ros.core.backends import AUTO_ORDER, BACKENDS, backend_class, create_backend
from omnibind_ros.core.bundle import BUNDLE_FILE, checksum_tree, dump_manifest, load_bundle
from omnibind_ros.core.errors import BackendUnavailableError
from omnibind_ros.testing import TEST_MODALITIES, write_test_bundle

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from omnibind_ros.core.backends import torch_cuda_backend  # noqa: E402
from omnibind_ros.core.backends.torch_cuda_backend import (  # noqa: E402
    FUSION_KEY,
    CapturedGraph,
    GraphCache,
    TorchCudaBackend,
    cuda_unavailable_reason,
)

nn = torch.nn
F = torch.nn.functional


# -- a torch version of the test bundle ------------------------------------------------------

class _LinearEncoder(nn.Module):
    def __init__(self, features: int, dim: int) -> None:
        super().__init__()
        self.projection = nn.Parameter(torch.zeros(features, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.flatten(1) @ self.projection, dim=-1)


class _MaskedSoftmaxFusion(nn.Module):
    """Softmax-weighted mean of the live tokens; padded scores get ``finfo(dtype).min``, as the
    AF head masks them. With ``score`` zero it is the test bundle's mean head."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Parameter(torch.zeros(dim))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        tokens = torch.where(mask[..., None], tokens, torch.zeros_like(tokens))
        scores = torch.where(mask, tokens @ self.score, torch.finfo(tokens.dtype).min)
        weights = scores.softmax(dim=-1) * mask
        return F.normalize((weights[..., None] * tokens).sum(1), dim=-1)


class _MeanWordsText(nn.Module):
    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Parameter(torch.zeros(vocab, dim))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        live = attention_mask[..., None].to(self.word_embeddings.dtype)
        summed = (self.word_embeddings[input_ids] * live).sum(1)
        return F.normalize(summed / live.sum(1).clamp_min(1), dim=-1)


def _builder(component: str, config: dict[str, Any], bundle: Any) -> nn.Module:
    if component == "encoder":
        return _LinearEncoder(config["features"], config["embed_dim"])
    if component == "fusion":
        return _MaskedSoftmaxFusion(config["dim"])
    return _MeanWordsText(config["vocab_size"], config["embed_dim"])


def _initializer(path: Path, name: str) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return numpy_helper.to_array(next(t for t in graph.initializer if t.name == name))


def _write_torch_bundle(root: Path) -> Path:
    from safetensors.numpy import save_file

    write_test_bundle(root)
    manifest = yaml.safe_load((root / BUNDLE_FILE).read_text())
    (root / "torch").mkdir()
    for modality, entry in manifest["modalities"].items():
        weights = _initializer(root / entry["encoder"]["file"], "projection")
        save_file({"projection": np.ascontiguousarray(weights)}, root / f"torch/{modality}.st")
        entry["torch_weights"] = f"torch/{modality}.st"
    dim = manifest["embedding_dim"]
    save_file({"score": np.zeros(dim, np.float32)}, root / "torch/fusion.st")
    manifest["fusion"]["torch_weights"] = "torch/fusion.st"
    table = _initializer(root / manifest["text"]["encoder"]["file"], "word_embeddings")
    save_file({"word_embeddings": np.ascontiguousarray(table)}, root / "torch/text.st")
    manifest["text"]["torch_weights"] = "torch/text.st"
    manifest.pop("files", None)
    manifest["files"] = checksum_tree(root)
    dump_manifest(manifest, root / BUNDLE_FILE)
    return root


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_bundle(_write_torch_bundle(tmp_path_factory.mktemp("torch_cuda") / "tiny"))


def _cpu(bundle: Any, precision: str, **opts: Any) -> TorchCudaBackend:
    return TorchCudaBackend(bundle, device="cpu", precision=precision, cuda_graphs=False,
                            builder=_builder, threads=None, **opts)


def _inputs(bundle: Any, modality: str, n: int, seed: int = 0) -> np.ndarray:
    shape = (n, *bundle.modalities[modality].sample_shape)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


# -- availability ----------------------------------------------------------------------------

def test_registered_with_aliases_and_auto_order():
    assert BACKENDS["torch_cuda"] == ("torch_cuda", "cuda", "torch-cuda", "pytorch_cuda")
    assert backend_class("cuda") is TorchCudaBackend
    # after the GPU runtimes that beat it, before the CPU ones
    assert AUTO_ORDER.index("onnxruntime_cuda") < AUTO_ORDER.index("torch_cuda") \
        < AUTO_ORDER.index("onnxruntime")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_error_says_why(bundle):
    with pytest.raises(BackendUnavailableError, match="torch_cuda backend needs a CUDA GPU") \
            as err:
        TorchCudaBackend(bundle, builder=_builder)
    assert torch.__version__ in str(err.value)
    assert cuda_unavailable_reason(torch) in str(err.value)


def test_reasons_for_each_missing_piece():
    class Version:
        cuda = None

    class FakeTorch:
        __version__ = "9.9+cpu"
        version = Version()
        device = torch.device

        class cuda:  # noqa: N801  (mirrors torch.cuda)
            @staticmethod
            def is_available() -> bool:
                return True

            @staticmethod
            def device_count() -> int:
                return 1

    assert "built without CUDA" in cuda_unavailable_reason(FakeTorch)
    FakeTorch.version.cuda = "12.8"
    assert cuda_unavailable_reason(FakeTorch, "cuda:0") is None
    assert "has 1 CUDA device" in cuda_unavailable_reason(FakeTorch, "cuda:3")
    FakeTorch.cuda.is_available = staticmethod(lambda: False)
    assert "finds no usable CUDA device" in cuda_unavailable_reason(FakeTorch)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_create_backend_falls_back_to_onnxruntime(bundle, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # auto: no TensorRT engine builds here
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    backend = create_backend("torch_cuda", bundle, fallback=True, threads=1,
                             precision="fp16", cuda_graphs=True)
    assert backend.name == "onnxruntime"
    assert "torch_cuda backend unavailable" in caplog.text
    with pytest.raises(BackendUnavailableError, match="needs a CUDA GPU"):
        create_backend("cuda", bundle, builder=_builder)
    assert create_backend("auto", bundle, threads=1).name in ("onnxruntime",
                                                              "onnxruntime_cuda")


def test_cpu_is_a_test_mode_only(bundle):
    with pytest.raises(BackendUnavailableError, match="test mode"):
        TorchCudaBackend(bundle, device="cpu", builder=_builder)  # fp16 + graphs by default
    with pytest.raises(BackendUnavailableError, match="test mode"):
        TorchCudaBackend(bundle, device="cpu", precision="bf16", builder=_builder)
    with pytest.raises(ValueError, match="precision must be one of"):
        TorchCudaBackend(bundle, device="cpu", precision="fp8", builder=_builder)


# -- precision -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fp32(bundle) -> TorchCudaBackend:
    return _cpu(bundle, "fp32")


@pytest.fixture(scope="module")
def bf16(bundle) -> TorchCudaBackend:
    return _cpu(bundle, "bf16")


def test_fp32_matches_onnxruntime(bundle, fp32):
    ort = create_backend("onnxruntime", bundle, threads=1)
    for modality in TEST_MODALITIES:
        x = _inputs(bundle, modality, 3)
        np.testing.assert_allclose(fp32.encode(modality, x), ort.encode(modality, x),
                                   atol=1e-5, rtol=0)
    np.testing.assert_allclose(fp32.embed_text(["a metal can.", "a duck"]),
                               ort.embed_text(["a metal can.", "a duck"]), atol=1e-5, rtol=0)


def test_bf16_casts_modules_and_inputs_and_returns_float32(bundle, fp32, bf16):
    assert bf16.precision == "bf16" and bf16.providers == ("cpu",)
    for key in (*bundle.modality_names, "<text>"):
        assert bf16.module_dtype(key) == torch.bfloat16
        assert fp32.module_dtype(key) == torch.float32
    for modality in TEST_MODALITIES:
        x = _inputs(bundle, modality, 4, seed=1)
        out = bf16.encode(modality, x)
        assert out.dtype == np.float32 and out.shape == (4, bundle.dim)
        assert _cosine(out, fp32.encode(modality, x)).min() >= 0.99
        assert np.abs(out - fp32.encode(modality, x)).max() > 0  # really ran in bf16
    texts = ["a photo of a rubber duck.", "a fabric ball."]
    assert _cosine(bf16.embed_text(texts), fp32.embed_text(texts)).min() >= 0.99


def test_autocast_keeps_float32_weights(bundle, fp32):
    amp = _cpu(bundle, "bf16", autocast=True)
    assert amp.autocast and amp.module_dtype("image") == torch.float32
    x = _inputs(bundle, "image", 3, seed=2)
    out = amp.encode("image", x)
    assert out.dtype == np.float32 and _cosine(out, fp32.encode("image", x)).min() >= 0.99
    assert np.abs(out - fp32.encode("image", x)).max() > 0  # the matmul ran in bf16
    assert not _cpu(bundle, "fp32", autocast=True).autocast  # nothing to mix in fp32


def test_image_encoders_run_channels_last(bundle):
    backend = _cpu(bundle, "fp32", modalities=["image", "audio", "point_cloud"], fusion=False,
                   text=False)
    assert backend._nhwc == {"image", "audio"}  # [B, C, H, W] inputs, not [B, N, 3] points
    assert backend.encode("image", _inputs(bundle, "image", 2)).shape == (2, bundle.dim)
    plain = _cpu(bundle, "fp32", modalities=["image"], fusion=False, text=False,
                 channels_last=False)
    assert plain._nhwc == set()


def test_fusion_stays_float32(bundle, bf16, fp32):
    assert bf16.module_dtype(FUSION_KEY) == torch.float32
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((3, 4, bundle.dim)).astype(np.float32)
    tokens[:, 2:] = np.nan  # padding may hold anything
    mask = np.array([[True, True, False, False], [True, False, False, False],
                     [False, False, False, False]])
    fused = bf16.fuse(tokens, mask)
    np.testing.assert_array_equal(fused, fp32.fuse(tokens, mask))  # float32 in both
    assert np.isfinite(fused).all()
    np.testing.assert_allclose(fused[2], 0.0)  # no live token: zeros, not NaN
    ort = create_backend("onnxruntime", bundle, threads=1)
    np.testing.assert_allclose(fused, ort.fuse(tokens, mask), atol=1e-6, rtol=0)


# -- the CUDA-graph cache --------------------------------------------------------------------

class FakeCapture:
    """Records what would be captured; replay reruns ``fn`` on the static inputs in place."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.captured: list[tuple[Any, ...]] = []

    def __call__(self, fn: Any, inputs: Any) -> CapturedGraph:
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        static_inputs = [t.clone() for t in inputs]
        static_output = fn(*static_inputs).clone()
        self.captured.append(GraphCache.key(inputs))

        def replay() -> None:
            static_output.copy_(fn(*static_inputs))

        return CapturedGraph(static_inputs, static_output, replay)


def _double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def test_graph_is_captured_on_second_sight_and_replayed_per_shape():
    capture = FakeCapture()
    cache = GraphCache(capture, max_graphs=4)
    a, b = torch.ones(1, 3), torch.ones(2, 3)
    assert torch.equal(cache.run("image", _double, [a]), a * 2)  # first sight: eager
    assert cache.stats == {"replays": 0, "eager": 1, "captures": 0, "capture_failures": 0}
    out = cache.run("image", _double, [a + 1])  # second: captured, then replayed on new input
    assert torch.equal(out, (a + 1) * 2)
    assert capture.captured == [(((1, 3), "torch.float32"),)]
    out = cache.run("image", _double, [a * 5])
    assert torch.equal(out, a * 10) and cache.stats["replays"] == 2
    assert out is cache.graphs("image")[GraphCache.key([a])].static_output
    # another shape, another dtype, another component: keys of their own
    cache.run("image", _double, [b])
    cache.run("image", _double, [b.double()])
    cache.run("audio", _double, [a])
    assert len(cache.graphs("image")) == 1 and cache.graphs("audio") == {}
    cache.run("image", _double, [b])
    assert set(cache.graphs("image")) == {GraphCache.key([a]), GraphCache.key([b])}


def test_shapes_beyond_the_cache_run_eagerly():
    capture = FakeCapture()
    cache = GraphCache(capture, max_graphs=2)
    shapes = [torch.ones(n, 2) for n in (1, 2, 3)]
    for _ in range(3):
        for x in shapes:
            assert torch.equal(cache.run("fusion", _double, [x]), x * 2)
    assert len(capture.captured) == 2  # no eviction, no re-capture
    assert set(cache.graphs("fusion")) == {GraphCache.key([shapes[0]]),
                                           GraphCache.key([shapes[1]])}
    assert cache.stats["eager"] == 3 + 2  # first sights, then shape 3 every time
    assert GraphCache(capture, max_graphs=0).graphs("x") == {}
    with pytest.raises(ValueError):
        GraphCache(capture, max_graphs=-1)


def test_a_failed_capture_leaves_the_component_eager(caplog):
    cache = GraphCache(FakeCapture(fail=True))
    x = torch.ones(1, 2)
    for _ in range(4):
        assert torch.equal(cache.run("<text>", _double, [x]), x * 2)
    assert cache.stats["capture_failures"] == 1 and cache.stats["eager"] == 4
    assert "CUDA graph capture of <text> failed" in caplog.text


def test_backend_routes_every_component_through_the_graph_cache(bundle, fp32):
    # the CPU test mode with a fake capture injected: the same calls as on the GPU
    capture = FakeCapture()
    backend = _cpu(bundle, "fp32", graph_capture=capture)
    backend.graphs = GraphCache(capture)  # cuda_graphs=False built none; plug one in
    x = _inputs(bundle, "image", 1)
    tokens = np.random.default_rng(0).standard_normal((1, 3, bundle.dim)).astype(np.float32)
    mask = np.array([[True, False, True]])
    for _ in range(3):
        np.testing.assert_allclose(backend.encode("image", x), fp32.encode("image", x),
                                   atol=1e-6)
        np.testing.assert_allclose(backend.fuse(tokens, mask), fp32.fuse(tokens, mask),
                                   atol=1e-6)
    assert backend.graphs.stats["replays"] == 4 and len(capture.captured) == 2
    # outputs are copies: a later replay does not change what an earlier call returned
    first = backend.encode("image", x)
    backend.encode("image", x * 3)
    np.testing.assert_allclose(first, fp32.encode("image", x), atol=1e-6)


def test_a_tensorrt_precision_is_unavailable_not_an_error(bundle) -> None:
    """``auto`` forwards ``precision`` to every backend: int8 must make torch_cuda step aside."""
    from omnibind_ros.core.backends import create_backend
    from omnibind_ros.core.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="int8"):
        create_backend("torch_cuda", bundle, precision="int8")
    backend = create_backend("auto", bundle, precision="int8")
    # an ONNX Runtime backend, CPU or CUDA, whatever onnxruntime package is installed
    assert backend.name not in ("torch_cuda", "tensorrt")


# -- the CUDA path's host side, with a stand-in for torch.cuda -------------------------------

class _FakeCuda:
    """What the backend calls of ``torch.cuda`` on its CUDA path; ``events`` records it, in
    order, ``current`` is the device entered with ``device(...)``."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.current: Any = None
        self.sync_error: Exception | None = None

    @contextlib.contextmanager
    def device(self, device: Any) -> Any:
        previous, self.current = self.current, device
        self.events.append(f"enter {device}")
        try:
            yield
        finally:
            self.current = previous
            self.events.append(f"exit {device}")

    def current_stream(self, device: Any = None) -> Any:
        cuda = self

        class _Stream:
            def synchronize(self) -> None:
                cuda.events.append("synchronize")
                if cuda.sync_error is not None:
                    raise cuda.sync_error

        return _Stream()


class _FakeTorch:
    """torch, with ``cuda`` replaced by :class:`_FakeCuda` and pinned allocations recorded
    (``pin_memory`` itself needs a CUDA build)."""

    def __init__(self) -> None:
        self.cuda = _FakeCuda()
        self.pinned: list[torch.Tensor] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def empty(self, *args: Any, pin_memory: bool = False, **kwargs: Any) -> torch.Tensor:
        buf = torch.empty(*args, **kwargs)
        if pin_memory:
            self.pinned.append(buf)
            self.cuda.events.append("pin")
        return buf


def _on_fake_cuda(bundle: Any, **opts: Any) -> tuple[TorchCudaBackend, _FakeTorch]:
    """The CPU test mode switched onto the CUDA path (pinned staging, device context,
    synchronisation) against :class:`_FakeTorch`."""
    backend = _cpu(bundle, "fp32", modalities=["image"], fusion=False, text=False, **opts)
    fake = _FakeTorch()
    backend._torch, backend._on_cuda, backend.pin_memory = fake, True, True
    return backend, fake


def test_pinned_staging_is_reused_per_shape_and_outputs_are_copied_out(bundle, fp32):
    backend, fake = _on_fake_cuda(bundle)
    x, y = _inputs(bundle, "image", 2, seed=4), _inputs(bundle, "image", 2, seed=5)
    first = backend.encode("image", x)
    assert fake.cuda.events == ["enter cpu", "pin", "pin", "synchronize", "exit cpu"]
    staged_out = fake.pinned[1]
    second = backend.encode("image", y)
    assert len(fake.pinned) == 2  # same shapes: the same input and output buffers
    assert fake.cuda.events.count("synchronize") == 2  # every output waited for
    # what a call returned is a copy: the next call's output in the buffer does not change it
    np.testing.assert_allclose(first, fp32.encode("image", x), atol=1e-6)
    np.testing.assert_allclose(second, fp32.encode("image", y), atol=1e-6)
    np.testing.assert_array_equal(staged_out.numpy(), second)
    assert not np.shares_memory(first, staged_out.numpy())
    assert not np.shares_memory(second, staged_out.numpy())
    backend.encode("image", _inputs(bundle, "image", 3))  # another batch: buffers of its own
    assert len(fake.pinned) == 4


def test_staging_buffers_beyond_the_limit_drop_the_least_recently_used(bundle, monkeypatch):
    monkeypatch.setattr(torch_cuda_backend, "_PINNED_BUFFERS", 4)
    backend, fake = _on_fake_cuda(bundle)
    for n in (1, 2, 1, 3):  # batch 1 used again before batch 3 arrives
        backend.encode("image", _inputs(bundle, "image", n))
    assert len(fake.pinned) == 6 and len(backend._pinned) == 4
    # keys: ("in", position, shape, dtype) and ("out", shape, dtype); batch 2's are gone
    batches = sorted((key[2] if key[0] == "in" else key[1])[0] for key in backend._pinned)
    assert batches == [1, 1, 3, 3]
    backend.encode("image", _inputs(bundle, "image", 1))
    assert len(fake.pinned) == 6  # still kept
    backend.encode("image", _inputs(bundle, "image", 2))
    assert len(fake.pinned) == 8  # dropped before: staged anew


def test_a_failing_call_synchronises_before_its_buffers_are_reused(bundle, fp32):
    backend, fake = _on_fake_cuda(bundle)
    forward = backend._forwards["image"]

    def failing(*tensors: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("kernel failed")

    backend._forwards["image"] = failing
    x = _inputs(bundle, "image", 2)
    with pytest.raises(RuntimeError, match="kernel failed"):
        backend.encode("image", x)
    # the input was staged and sent, then the stream was waited for before the call returned
    assert fake.cuda.events == ["enter cpu", "pin", "synchronize", "exit cpu"]
    fake.cuda.sync_error = RuntimeError("an illegal memory access was encountered")
    with pytest.raises(RuntimeError, match="kernel failed"):  # the call's own error stands
        backend.encode("image", x)
    fake.cuda.sync_error = None
    backend._forwards["image"] = forward
    np.testing.assert_allclose(backend.encode("image", x), fp32.encode("image", x), atol=1e-6)


def test_calls_and_graph_captures_run_in_the_backends_device_context(bundle):
    # on cuda:1 the streams and the graph captures must be cuda:1's, not the current device's
    backend, fake = _on_fake_cuda(bundle)
    backend.device = torch.device("cpu")  # stands for cuda:1: what the context is entered with
    seen: list[tuple[str, Any]] = []
    capture = FakeCapture()

    def recording_capture(fn: Any, inputs: Any) -> CapturedGraph:
        seen.append(("capture", fake.cuda.current))
        return capture(fn, inputs)

    forward = backend._forwards["image"]

    def recording_forward(*tensors: torch.Tensor) -> torch.Tensor:
        seen.append(("forward", fake.cuda.current))
        return forward(*tensors)

    backend._forwards["image"] = recording_forward
    backend.graphs = GraphCache(recording_capture)
    x = _inputs(bundle, "image", 1)
    for _ in range(3):  # eager, captured, replayed
        backend.encode("image", x)
    assert backend.graphs.stats["captures"] == 1
    assert {device for _, device in seen} == {backend.device}
    assert ("capture", backend.device) in seen
    assert fake.cuda.current is None  # left again after every call
    assert fake.cuda.events.count("enter cpu") == fake.cuda.events.count("exit cpu") == 3
    # off CUDA (the CPU test mode) nothing of torch.cuda is called
    backend._on_cuda, backend.pin_memory = False, False
    fake.cuda.events.clear()
    backend.encode("image", x)
    assert fake.cuda.events == []


# -- the GPU check: benchmarks/bench_gpu.py and its pack --------------------------------------

REPO = Path(__file__).resolve().parents[2]

def _gpu_pack_module(monkeypatch: pytest.MonkeyPatch) -> Any:
    spec = importlib.util.spec_from_file_location("_gpu_pack", REPO / "benchmarks/_gpu_pack.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "_gpu_pack", module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


def _bench_gpu(*args: str, env: dict[str, str] | None = None, timeout: float = 120
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "benchmarks/bench_gpu.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})


def test_write_pack_refuses_what_is_not_a_pack(tmp_path, monkeypatch):
    gpu_pack = _gpu_pack_module(monkeypatch)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "keep.py").write_text("kept\n")
    (tmp_path / "file").write_text("kept\n")
    for target in (checkout, tmp_path / "file"):
        with pytest.raises(FileExistsError, match="refusing to replace it"):
            gpu_pack.write_pack(None, target, test=None, prompts=[], builder=None)
    assert (checkout / "keep.py").read_text() == "kept\n"
    assert (tmp_path / "file").read_text() == "kept\n"
    (tmp_path / "empty").mkdir()
    (tmp_path / "old_pack").mkdir()
    (tmp_path / "old_pack" / gpu_pack.PACK_FILE).write_text("{}")
    for target in (tmp_path / "absent", tmp_path / "empty", tmp_path / "old_pack"):
        gpu_pack.check_pack_target(target)  # may be (re)written
    proc = _bench_gpu("--pack", str(checkout), timeout=60)
    assert proc.returncode != 0 and "refusing to replace it" in proc.stderr
    assert (checkout / "keep.py").read_text() == "kept\n"
