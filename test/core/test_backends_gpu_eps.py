"""ONNX Runtime's GPU execution providers as backends (onnxruntime_cuda, onnxruntime_tensorrt)
and ``auto``'s order, against a FAKE onnxruntime module: onnxruntime-gpu cannot be installed
here, so these tests check what is asked of it (providers, provider options, engine cache
folders) and how a missing or dropped provider fails or falls back."""
from __future__ import annotations

import logging
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omnibind_ros.core import engine_cache, engines
from omnibind_ros.core.backends import AUTO_ORDER, BACKENDS, create_backend
from omnibind_ros.core.backends.onnxruntime_backend import (
    OnnxRuntimeCudaBackend,
    OnnxRuntimeTensorRTBackend,
    ort_trt_cache_dir,
)
from omnibind_ros.core.bundle import load_bundle
from omnibind_ros.core.errors import BackendUnavailableError
from omnibind_ros.testing import write_test_bundle

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
GPU = ("NVIDIA Jetson AGX Orin", "8.7")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory):
    return load_bundle(write_test_bundle(tmp_path_factory.mktemp("gpu_eps") / "tiny"))


def _graph_inputs(bundle) -> dict[str, list[str]]:
    out = {str(spec.file): [spec.input.name] for spec in bundle.modalities.values()}
    for part in (bundle.fusion, bundle.text):
        if part is not None:
            out[str(part.file)] = [s.name for s in part.inputs]
    return out


class FakeOrt(types.ModuleType):
    """What the backends use of onnxruntime; records every session it creates."""

    def __init__(self, bundle, available: list[str], *, drops: tuple[str, ...] = (),
                 fails: str | None = None) -> None:
        super().__init__("onnxruntime")
        self.__version__ = "1.20.1"
        self.available, self.drops, self.fails = list(available), drops, fails
        self.sessions: list[FakeSession] = []
        self.inputs = _graph_inputs(bundle)
        fake = self

        class FakeSession:
            def __init__(self, path: str, sess_options: Any = None,
                         providers: list[str] | None = None,
                         provider_options: list[dict[str, Any]] | None = None) -> None:
                if fake.fails:
                    raise RuntimeError(fake.fails)
                self.path, self.providers = path, list(providers or [])
                self.provider_options = provider_options
                self.sess_options = sess_options
                fake.sessions.append(self)

            def get_providers(self) -> list[str]:
                return [p for p in self.providers if p not in fake.drops]

            def get_inputs(self) -> list[Any]:
                return [types.SimpleNamespace(name=n) for n in fake.inputs[self.path]]

            def run(self, outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
                batch = next(iter(feeds.values())).shape[0]
                return [np.ones((batch, 4), dtype=np.float32)]

        self.InferenceSession = FakeSession
        self.SessionOptions = types.SimpleNamespace
        self.ExecutionMode = types.SimpleNamespace(ORT_SEQUENTIAL="seq")
        self.GraphOptimizationLevel = types.SimpleNamespace(ORT_ENABLE_ALL="all")

    def get_available_providers(self) -> list[str]:
        return list(self.available)


@pytest.fixture
def fake_ort(monkeypatch, bundle):
    """``fake_ort(available, drops=..., fails=...)`` installs a fake onnxruntime; no TensorRT
    or torch is importable, and the GPU is a fixed one."""

    def install(available: list[str], **kw: Any) -> FakeOrt:
        module = FakeOrt(bundle, available, **kw)
        monkeypatch.setitem(sys.modules, "onnxruntime", module)
        return module

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setattr(engine_cache, "gpu_identity", lambda device=0: GPU)
    return install


def _n_sessions(bundle) -> int:
    return len(bundle.modalities) + (bundle.fusion is not None) + (bundle.text is not None)


def test_backend_names_are_node_choices():
    # the node's `backend` parameter lists BACKENDS' keys, so it offers the new names as is
    assert {"onnxruntime_cuda", "onnxruntime_tensorrt"} <= set(BACKENDS)
    assert AUTO_ORDER == ("tensorrt", "onnxruntime_tensorrt", "onnxruntime_cuda", "torch_cuda",
                          "onnxruntime", "torch")


def test_cuda_requests_the_cuda_provider_on_the_device(fake_ort, bundle):
    ort = fake_ort([TRT, CUDA, CPU])
    backend = create_backend("onnxruntime_cuda", bundle, device=1, threads=3)
    assert isinstance(backend, OnnxRuntimeCudaBackend)
    assert backend.name == "onnxruntime_cuda"
    assert backend.providers == (CUDA, CPU)
    assert len(ort.sessions) == _n_sessions(bundle)
    for session in ort.sessions:
        assert session.providers == [CUDA, CPU]
        assert session.provider_options == [{"device_id": 1}, {}]
        assert session.sess_options.intra_op_num_threads == 3
    assert backend.encode("image", np.zeros((2, *bundle.modalities["image"].input.fixed_shape[1:]),
                                            dtype=np.float32)).shape == (2, 4)
    assert create_backend("ort_cuda", bundle).name == "onnxruntime_cuda"


def test_tensorrt_requests_trt_then_cuda_with_options(fake_ort, bundle, tmp_path):
    ort = fake_ort([TRT, CUDA, CPU])
    backend = create_backend("onnxruntime_tensorrt", bundle, device=0, fp16=True,
                             engines_dir=tmp_path)
    assert backend.name == "onnxruntime_tensorrt"
    assert backend.providers == (TRT, CUDA, CPU)
    cache = tmp_path / "nvidia-jetson-agx-orin_sm8.7_orttrt1.20.1"
    assert backend.cache_dir == cache
    assert cache == ort_trt_cache_dir(bundle, "1.20.1", engines_dir=tmp_path)
    folders = set()
    for session in ort.sessions:
        assert session.providers == [TRT, CUDA, CPU]
        trt, cuda, cpu = session.provider_options
        assert cuda == {"device_id": 0} and cpu == {}
        assert trt["device_id"] == 0
        assert trt["trt_engine_cache_enable"] is True
        folder = Path(trt["trt_engine_cache_path"])
        assert folder.parent == cache and folder.is_dir()
        assert folder.name.startswith(Path(session.path).stem + "-")
        folders.add(folder)
        is_fusion = bundle.fusion is not None and session.path == str(bundle.fusion.file)
        assert trt["trt_fp16_enable"] is (not is_fusion)  # the fusion head stays fp32
    assert len(folders) == len({s.path for s in ort.sessions})  # one folder per ONNX file


def test_tensorrt_profiles_are_the_engine_builders(fake_ort, bundle, tmp_path):
    ort = fake_ort([TRT, CUDA, CPU])
    create_backend("onnxruntime_tensorrt", bundle, engines_dir=tmp_path, max_batch=8)
    by_path = {s.path: s.provider_options[0] for s in ort.sessions}
    image = by_path[str(bundle.modalities["image"].file)]
    assert image["trt_profile_min_shapes"] == "input:1x3x32x32"
    assert image["trt_profile_opt_shapes"] == "input:1x3x32x32"  # optimised for batch 1
    assert image["trt_profile_max_shapes"] == "input:8x3x32x32"
    live = len(bundle.modalities)
    slots = max(live, len(bundle.fusion.config.get("slots", ())))
    fusion = by_path[str(bundle.fusion.file)]
    assert fusion["trt_profile_min_shapes"] == f"tokens:1x1x{bundle.dim},mask:1x1"
    assert fusion["trt_profile_opt_shapes"] == f"tokens:1x{live}x{bundle.dim},mask:1x{live}"
    assert fusion["trt_profile_max_shapes"] == f"tokens:8x{slots}x{bundle.dim},mask:8x{slots}"
    text = by_path[str(bundle.text.file)]
    longest = bundle.text.max_length
    names = [n for n in ("input_ids", "attention_mask") if n in ort.inputs[str(bundle.text.file)]]
    assert text["trt_profile_max_shapes"] == ",".join(f"{n}:8x{longest}" for n in names)
    assert text["trt_profile_opt_shapes"] == ",".join(f"{n}:1x16" for n in names)
    for session in ort.sessions:  # the same ranges as the TensorRT engine builder
        specs = {str(s.file): (s.input,) for s in bundle.modalities.values()}
        specs[str(bundle.fusion.file)] = bundle.fusion.inputs
        specs[str(bundle.text.file)] = bundle.text.inputs
        ranges = [(s.name, engines.profile_shapes(s, bundle, 8)) for s in specs[session.path]
                  if s.name in ort.inputs[session.path]]
        for k, kind in enumerate(("min", "opt", "max")):
            assert session.provider_options[0][f"trt_profile_{kind}_shapes"] == ",".join(
                f"{n}:{'x'.join(map(str, r[k]))}" for n, r in ranges)
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        create_backend("onnxruntime_tensorrt", bundle, engines_dir=tmp_path, max_batch=0)


def test_tensorrt_default_profile_batch(fake_ort, bundle, tmp_path):
    ort = fake_ort([TRT, CUDA, CPU])
    create_backend("onnxruntime_tensorrt", bundle, engines_dir=tmp_path, modalities=["image"],
                   fusion=False, text=False)
    (session,) = ort.sessions
    assert session.provider_options[0]["trt_profile_max_shapes"] == (
        f"input:{engines.DEFAULT_MAX_BATCH}x3x32x32")


def test_tensorrt_cache_defaults_to_the_bundle_engines_folder(fake_ort, bundle):
    fake_ort([TRT, CPU])  # a build with TensorRT but no CUDA EP: TensorRT, then the CPU
    backend = OnnxRuntimeTensorRTBackend(bundle, fp16=False, modalities=["image"],
                                         fusion=False, text=False)
    assert backend.providers == (TRT, CPU)
    engines_root = bundle.root / "engines"
    assert backend.cache_dir == engines_root / "nvidia-jetson-agx-orin_sm8.7_orttrt1.20.1"
    shutil.rmtree(engines_root)


def test_tensorrt_fp16_off(fake_ort, bundle, tmp_path):
    ort = fake_ort([TRT, CUDA, CPU])
    create_backend("ort_trt", bundle, fp16=False, engines_dir=tmp_path)
    assert all(s.provider_options[0]["trt_fp16_enable"] is False for s in ort.sessions)


def test_tensorrt_cache_folder_keyed_by_precision_and_profile(fake_ort, bundle, tmp_path):
    ort = fake_ort([TRT, CUDA, CPU])
    image = str(bundle.modalities["image"].file)

    def folder(**kw: Any) -> Path:
        create_backend("onnxruntime_tensorrt", bundle, engines_dir=tmp_path,
                       modalities=["image"], fusion=False, text=False, **kw)
        session = ort.sessions[-1]
        assert session.path == image
        return Path(session.provider_options[0]["trt_engine_cache_path"])

    base = folder(fp16=True, max_batch=8)
    assert folder(fp16=True, max_batch=8) == base  # same settings: the same engine cache
    others = [folder(fp16=False, max_batch=8), folder(fp16=True, max_batch=4),
              folder(fp16=False, max_batch=4)]
    assert len({base, *others}) == 4  # a change of precision or profile: another folder
    assert all(f.parent == base.parent and f.name.startswith("image-") for f in others)
    assert "-fp16-" in base.name and "-fp32-" in others[0].name


@pytest.mark.parametrize(("name", "missing"), [("onnxruntime_cuda", CUDA),
                                                ("onnxruntime_tensorrt", TRT)])
def test_missing_provider_fails_naming_it(fake_ort, bundle, name, missing):
    ort = fake_ort([CPU])
    with pytest.raises(BackendUnavailableError,
                       match=f"the {name} backend needs {missing}") as err:
        create_backend(name, bundle)
    assert "onnxruntime-gpu" in str(err.value) and "CPUExecutionProvider" in str(err.value)
    assert ort.sessions == []


def test_missing_provider_falls_back_to_onnxruntime(fake_ort, bundle, caplog):
    ort = fake_ort([CPU])
    with caplog.at_level(logging.WARNING):
        backend = create_backend("onnxruntime_tensorrt", bundle, fallback=True, fp16=True,
                                 device=0, threads=1)
    assert backend.name == "onnxruntime"
    assert backend.providers == (CPU,)
    assert "onnxruntime_tensorrt backend unavailable" in caplog.text
    assert "TensorrtExecutionProvider" in caplog.text
    assert all(s.providers == [CPU] and s.provider_options is None for s in ort.sessions)


def test_provider_dropped_by_onnxruntime_is_unavailable(fake_ort, bundle, tmp_path):
    # onnxruntime-gpu lists TensorRT but its libraries fail to load: ORT quietly runs the
    # session on CUDA; the pinned backend refuses instead of running slower than asked
    fake_ort([TRT, CUDA, CPU], drops=(TRT,))
    with pytest.raises(BackendUnavailableError, match="failed to load"):
        create_backend("onnxruntime_tensorrt", bundle, engines_dir=tmp_path)
    backend = create_backend("onnxruntime_tensorrt", bundle, engines_dir=tmp_path,
                             fallback=True)
    assert backend.name == "onnxruntime"


def test_session_error_is_unavailable_not_corrupt(fake_ort, bundle):
    fake_ort([CUDA, CPU], fails="CUDA failure 100: no CUDA-capable device is detected")
    with pytest.raises(BackendUnavailableError, match="no CUDA-capable device"):
        create_backend("onnxruntime_cuda", bundle)


def test_unwritable_cache_is_unavailable(fake_ort, bundle, tmp_path):
    fake_ort([TRT, CUDA, CPU])
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BackendUnavailableError, match="engines_dir"):
        create_backend("onnxruntime_tensorrt", bundle, engines_dir=blocker)


def test_options_no_backend_takes_are_rejected(fake_ort, bundle):
    fake_ort([CUDA, CPU])
    with pytest.raises(TypeError, match="build_missing"):
        create_backend("onnxruntime_cuda", bundle, build_missing=True)
    with pytest.raises(ValueError, match="device must be >= 0"):
        create_backend("onnxruntime_cuda", bundle, device=-1)


@pytest.mark.parametrize(("available", "drops", "expected"), [
    ([TRT, CUDA, CPU], (), "onnxruntime_tensorrt"),
    ([TRT, CUDA, CPU], (TRT,), "onnxruntime_cuda"),
    ([CUDA, CPU], (), "onnxruntime_cuda"),
    ([CPU], (), "onnxruntime"),
])
def test_auto_takes_the_best_available(fake_ort, bundle, tmp_path, available, drops, expected):
    fake_ort(available, drops=drops)
    backend = create_backend("auto", bundle, engines_dir=tmp_path, threads=1)
    assert backend.name == expected


def test_auto_reports_every_reason_when_nothing_runs(fake_ort, bundle, monkeypatch):
    fake_ort([CPU])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed at all
    with pytest.raises(BackendUnavailableError) as err:
        create_backend("auto", bundle)
    text = str(err.value)
    for name in AUTO_ORDER:
        assert f"{name}: " in text
