"""TensorRT engine builder (omnibind_ros.core.engines): cache key, staleness, optimisation
profiles, FP16 and timing cache with a fake TensorRT module (runs everywhere), and a real build
with ``tensorrt_rtx`` when it is importable (it builds engines without a GPU)."""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

from omnibind_ros.core import engines
from omnibind_ros.core.bundle import load_bundle
from omnibind_ros.core.engines import (
    ENGINE_MANIFEST,
    TIMING_CACHE,
    build_engines,
    components,
    engine_cache_dir,
    profile_shapes,
    stale_components,
)
from omnibind_ros.core.errors import BackendUnavailableError
from omnibind_ros.testing import TEST_MODALITIES, write_test_bundle

GPU = ("NVIDIA GeForce RTX 4090", "8.9")


class _Flag:
    EXPLICIT_BATCH = 0


class _Network:
    def __init__(self) -> None:
        self.inputs: list[types.SimpleNamespace] = []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> types.SimpleNamespace:
        return self.inputs[i]


class _Parser:
    def __init__(self, network: _Network, logger: object) -> None:
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path: str) -> bool:
        import onnx

        graph = onnx.load(path, load_external_data=False).graph
        inits = {i.name for i in graph.initializer}
        self.network.inputs = [types.SimpleNamespace(name=i.name) for i in graph.input
                               if i.name not in inits]
        self.source = path
        return True


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)

    def serialize(self) -> bytes:
        return self.data + b"+"


class _Config:
    def __init__(self) -> None:
        self.flags: set[str] = set()
        self.profiles: list[_Profile] = []
        self.timing_cache: _TimingCache | None = None
        self.workspace = 0

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.workspace = size

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        return _TimingCache(data)

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


def fake_trt(name: str = "tensorrt", version: str = "10.3.0", fp16: bool = True
             ) -> types.ModuleType:
    """A module with the part of TensorRT's builder API that build_engines uses; records builds."""
    trt = types.ModuleType(name)
    trt.__version__ = version
    trt.builds = []  # (onnx path, config, profile shapes)

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    class Builder:
        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int) -> _Network:
            return _Network()

        def create_builder_config(self) -> _Config:
            return _Config()

        def create_optimization_profile(self) -> _Profile:
            return _Profile()

        def build_serialized_network(self, network: _Network, config: _Config) -> bytes:
            trt.builds.append((network, config))
            return f"engine:{len(trt.builds)}".encode()

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, _Parser
    trt.NetworkDefinitionCreationFlag = _Flag
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(**({"FP16": "fp16"} if fp16 else {}), TF32="tf32")
    return trt


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_bundle(tmp_path_factory.mktemp("engines") / "tiny")


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return load_bundle(bundle_dir)


@pytest.fixture
def on_gpu(monkeypatch):
    monkeypatch.setattr(engines, "gpu_identity", lambda device=0: GPU)


def test_cache_dir_keyed_by_gpu_capability_module_and_version(bundle, tmp_path):
    trt = fake_trt(version="10.3.0")
    d = engine_cache_dir(bundle, trt=trt, gpu=GPU, engines_dir=tmp_path)
    assert d == tmp_path / "nvidia-geforce-rtx-4090_sm8.9_trt10.3.0"
    assert engine_cache_dir(bundle, trt=trt, gpu=("NVIDIA GeForce RTX 4090", "8.6"),
                            engines_dir=tmp_path) != d
    assert engine_cache_dir(bundle, trt=fake_trt(version="10.4.0"), gpu=GPU,
                            engines_dir=tmp_path) != d
    rtx = engine_cache_dir(bundle, trt=fake_trt("tensorrt_rtx", "1.7.1.116"), gpu=GPU,
                           engines_dir=tmp_path)
    assert rtx.name == "nvidia-geforce-rtx-4090_sm8.9_trtrtx1.7.1.116"
    assert engine_cache_dir(bundle, trt=trt, gpu=GPU).parent == bundle.root / "engines"


def test_build_then_reuse_records_the_key(bundle, tmp_path, on_gpu):
    trt = fake_trt()
    built = build_engines(bundle, trt=trt, engines_dir=tmp_path, max_batch=4)
    n = len(components(bundle))
    assert set(built) == {c.key for c in components(bundle)} and len(trt.builds) == n
    assert all(p.is_file() for p in built.values())
    directory = next(iter(built.values())).parent
    manifest = json.loads((directory / ENGINE_MANIFEST).read_text())
    assert manifest["gpu"] == GPU[0] and manifest["compute_capability"] == GPU[1]
    assert manifest["module"] == "tensorrt" and manifest["tensorrt"] == "10.3.0"
    entry = manifest["components"]["fusion"]
    assert entry["onnx_sha256"] == engines._sha256(bundle.fusion.file)
    assert entry["fp16"] is False  # the fusion head stays fp32
    assert manifest["components"][f"encoder:{TEST_MODALITIES[0]}"]["fp16"] is True
    build_engines(bundle, trt=trt, engines_dir=tmp_path, max_batch=4)
    assert len(trt.builds) == n  # all fresh: nothing rebuilt
    assert stale_components(trt, bundle, components(bundle), directory, fp16=True,
                            max_batch=4, gpu=GPU) == []
    assert stale_components(trt, bundle, components(bundle), directory, fp16=True,
                            max_batch=None, gpu=GPU) == []  # None: any recorded limit
    build_engines(bundle, trt=trt, engines_dir=tmp_path, max_batch=4, force=True)
    assert len(trt.builds) == 2 * n


def test_changed_onnx_is_stale_and_rebuilt(tmp_path, on_gpu):
    root = write_test_bundle(tmp_path / "tiny")
    bundle = load_bundle(root)
    trt = fake_trt()
    build_engines(bundle, trt=trt, engines_dir=tmp_path / "e")
    n = len(trt.builds)
    directory = engine_cache_dir(bundle, trt=trt, gpu=GPU, engines_dir=tmp_path / "e")
    fusion = next(c for c in components(bundle) if c.key == "fusion")
    import onnx

    model = onnx.load(str(fusion.onnx))
    model.doc_string = "re-exported"  # same bundle.yaml, new bytes
    onnx.save(model, str(fusion.onnx))
    assert [c.key for c in stale_components(trt, bundle, components(bundle), directory,
                                            fp16=True, max_batch=None, gpu=GPU)] == ["fusion"]
    build_engines(bundle, trt=trt, engines_dir=tmp_path / "e")
    assert len(trt.builds) == n + 1


@pytest.mark.parametrize("change", ["engine_bytes", "engine_missing", "fp16", "max_batch",
                                    "version", "gpu_in_manifest", "profile"])
def test_anything_else_is_stale(bundle, tmp_path, on_gpu, change, monkeypatch):
    trt = fake_trt()
    build_engines(bundle, trt=trt, engines_dir=tmp_path, max_batch=4)
    directory = engine_cache_dir(bundle, trt=trt, gpu=GPU, engines_dir=tmp_path)
    comps = components(bundle)
    kwargs = {"fp16": True, "max_batch": 4, "gpu": GPU}
    enc = directory / comps[0].engine_name
    if change == "engine_bytes":
        enc.write_bytes(b"truncated")
    elif change == "engine_missing":
        enc.unlink()
    elif change == "fp16":
        kwargs["fp16"] = False
    elif change == "max_batch":
        kwargs["max_batch"] = 8
    elif change == "version":
        trt.__version__ = "10.4.0"
    elif change == "gpu_in_manifest":  # e.g. two GPU names that slug alike
        manifest = json.loads((directory / ENGINE_MANIFEST).read_text())
        manifest["gpu"] = "NVIDIA GeForce RTX-4090"
        (directory / ENGINE_MANIFEST).write_text(json.dumps(manifest))
    elif change == "profile":
        monkeypatch.setattr(engines, "_dim_range", lambda axis, dim, b, mb: (1, 2, 3)
                            if not isinstance(dim, int) else (dim, dim, dim))
    stale = stale_components(trt, bundle, comps, directory, **kwargs)
    if change in ("engine_bytes", "engine_missing"):
        assert [c.key for c in stale] == [comps[0].key]
    elif change == "fp16":  # the fp32 fusion head stays fresh
        assert {c.key for c in stale} == {c.key for c in comps if c.fp16_allowed}
    else:
        assert {c.key for c in stale} == {c.key for c in comps}
    before = len(trt.builds)
    if change in ("engine_bytes", "engine_missing", "gpu_in_manifest"):
        build_engines(bundle, trt=trt, engines_dir=tmp_path, max_batch=4)
        assert len(trt.builds) == before + len(stale)  # rebuilt, never loaded
        assert stale_components(trt, bundle, comps, directory, fp16=True, max_batch=4,
                                gpu=GPU) == []


def test_profiles_batch_and_af_tokens(bundle, tmp_path, on_gpu):
    trt = fake_trt()
    build_engines(bundle, trt=trt, engines_dir=tmp_path, max_batch=8)
    fusion_shapes = None
    for network, config in trt.builds:
        (profile,) = config.profiles
        assert set(profile.shapes) <= {i.name for i in network.inputs}
        for lo, opt, hi in profile.shapes.values():
            assert lo[0] == 1 and opt[0] == 1 and hi[0] == 8  # batch 1..8, optimised for 1
        if "tokens" in profile.shapes:
            fusion_shapes = profile.shapes
            assert "fp16" not in config.flags
        else:
            assert "fp16" in config.flags
        assert config.workspace == 2 << 30
    assert fusion_shapes is not None
    live = len(bundle.modalities)
    slots = len(bundle.fusion.config.get("slots", ()))
    lo, opt, hi = fusion_shapes["tokens"]
    assert (lo[1], opt[1], hi[1]) == (1, live, max(live, slots))
    assert fusion_shapes["mask"] == tuple(s[:2] for s in fusion_shapes["tokens"])
    spec = bundle.fusion.inputs[0]
    assert profile_shapes(spec, bundle, 8) == fusion_shapes[spec.name]


def test_unknown_dynamic_axis_is_refused(bundle):
    spec = type(bundle.fusion.inputs[0])(name="x", shape=("batch", "weird"), dtype="float32")
    with pytest.raises(BackendUnavailableError, match="no TensorRT profile rule"):
        profile_shapes(spec, bundle, 4)


def test_timing_cache_written_and_reused_for_tensorrt(bundle, tmp_path, on_gpu):
    trt = fake_trt()
    build_engines(bundle, trt=trt, engines_dir=tmp_path)
    directory = engine_cache_dir(bundle, trt=trt, gpu=GPU, engines_dir=tmp_path)
    n = len(trt.builds)
    assert (directory / TIMING_CACHE).read_bytes() == b"+" * n  # each build fed the next
    assert trt.builds[0][1].timing_cache.data == b""
    assert trt.builds[-1][1].timing_cache.data == b"+" * (n - 1)


def test_tensorrt_rtx_flavour_no_fp16_flag_no_timing_cache(bundle, tmp_path, on_gpu):
    rtx = fake_trt("tensorrt_rtx", "1.7.1.116", fp16=False)
    build_engines(bundle, trt=rtx, engines_dir=tmp_path, fp16=True)
    directory = engine_cache_dir(bundle, trt=rtx, gpu=GPU, engines_dir=tmp_path)
    manifest = json.loads((directory / ENGINE_MANIFEST).read_text())
    assert manifest["module"] == "tensorrt_rtx"
    assert not any(e["fp16"] for e in manifest["components"].values())  # recorded as built
    assert not (directory / TIMING_CACHE).exists()
    assert all(config.timing_cache is None and not config.flags for _, config in rtx.builds)
    assert stale_components(rtx, bundle, components(bundle), directory, fp16=True,
                            max_batch=None, gpu=GPU) == []


def test_import_tensorrt_auto_falls_back_to_rtx(monkeypatch):
    rtx = fake_trt("tensorrt_rtx", "1.7.1.116")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", rtx)
    assert engines.import_tensorrt() is rtx
    with pytest.raises(BackendUnavailableError, match="tensorrt is not installed"):
        engines.import_tensorrt("tensorrt")
    trt = fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    assert engines.import_tensorrt() is trt  # tensorrt first
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    with pytest.raises(BackendUnavailableError, match="tensorrt is not installed"):
        engines.import_tensorrt()
    with pytest.raises(ValueError):
        engines.import_tensorrt("onnxruntime")


def test_engines_module_imports_no_runtime():
    code = ("import sys, omnibind_ros.core.engines, omnibind_ros.core.backends.tensorrt_backend;"
            "print(sorted(m for m in ('tensorrt', 'tensorrt_rtx', 'torch') if m in sys.modules))")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


_HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None


@pytest.mark.skipif(not _HAS_RTX, reason="tensorrt_rtx is not installed "
                    "(pip install tensorrt-rtx; requirements/dev.txt)")
def test_tensorrt_rtx_builds_real_engines(bundle, tmp_path):
    """TensorRT-RTX parses the bundle's ONNX graphs and builds engines on this machine
    (no GPU needed); the second call reuses them."""
    import tensorrt_rtx

    built = build_engines(bundle, module="tensorrt_rtx", engines_dir=tmp_path, max_batch=4)
    assert set(built) == {c.key for c in components(bundle)}
    assert all(p.stat().st_size > 0 for p in built.values())
    directory = next(iter(built.values())).parent
    manifest = json.loads((directory / ENGINE_MANIFEST).read_text())
    assert manifest["module"] == "tensorrt_rtx"
    assert manifest["tensorrt"] == tensorrt_rtx.__version__
    mtimes = {k: p.stat().st_mtime_ns for k, p in built.items()}
    again = build_engines(bundle, module="tensorrt_rtx", engines_dir=tmp_path, max_batch=4)
    assert {k: p.stat().st_mtime_ns for k, p in again.items()} == mtimes  # reused
    runtime = tensorrt_rtx.Runtime(tensorrt_rtx.Logger(tensorrt_rtx.Logger.WARNING))
    assert runtime is not None  # deserialising needs an RTX GPU; not attempted here
