"""TensorRT engine builder (omnibind_ros.core.engines): cache key, staleness, optimisation
profiles, FP16 and timing cache with a fake TensorRT module (runs everywhere), and a real build
with ``tensorrt_rtx`` when it is importable (it builds engines without a GPU)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from trt_fakes import FakeTorch, fake_trt

from omnibind_ros.core import engine_cache, engine_spec, engines
from omnibind_ros.core.bundle import load_bundle
from omnibind_ros.core.engines import (
    ENGINE_MANIFEST,
    TIMING_CACHE,
    build_engines,
    component_precision,
    components,
    engine_cache_dir,
    profile_shapes,
    stale_components,
)
from omnibind_ros.core.errors import BackendUnavailableError
from omnibind_ros.testing import TEST_MODALITIES, write_test_bundle

GPU = ("NVIDIA GeForce RTX 4090", "8.9")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_bundle(tmp_path_factory.mktemp("engines") / "tiny")


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return load_bundle(bundle_dir)


@pytest.fixture
def on_gpu(monkeypatch):
    monkeypatch.setattr(engine_cache, "gpu_identity", lambda device=0: GPU)


@pytest.fixture
def fake_torch(monkeypatch) -> FakeTorch:
    """A torch whose CUDA buffers are host memory (the calibrator's device buffers)."""
    torch = FakeTorch()
    monkeypatch.setitem(sys.modules, "torch", torch)
    return torch


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
    assert entry["precision"] == "fp32"  # the fusion head stays fp32
    assert manifest["components"][f"encoder:{TEST_MODALITIES[0]}"]["precision"] == "fp16"
    assert manifest["components"]["text"]["precision"] == "fp16"
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
    kwargs = {"precision": "fp16", "max_batch": 4, "gpu": GPU}
    enc = directory / comps[0].engine_name
    if change == "engine_bytes":
        enc.write_bytes(b"truncated")
    elif change == "engine_missing":
        enc.unlink()
    elif change == "fp16":
        kwargs["precision"] = "fp32"
    elif change == "max_batch":
        kwargs["max_batch"] = 8
    elif change == "version":
        trt.__version__ = "10.4.0"
    elif change == "gpu_in_manifest":  # e.g. two GPU names that slug alike
        manifest = json.loads((directory / ENGINE_MANIFEST).read_text())
        manifest["gpu"] = "NVIDIA GeForce RTX-4090"
        (directory / ENGINE_MANIFEST).write_text(json.dumps(manifest))
    elif change == "profile":
        monkeypatch.setattr(engine_spec, "_dim_range", lambda axis, dim, b, mb: (1, 2, 3)
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
    assert {e["precision"] for e in manifest["components"].values()} == {"fp32"}  # as built
    assert not (directory / TIMING_CACHE).exists()
    assert all(config.timing_cache is None and not config.flags for _, config in rtx.builds)
    assert stale_components(rtx, bundle, components(bundle), directory, fp16=True,
                            max_batch=None, gpu=GPU) == []


def test_precision_choices_and_the_fp16_spelling(bundle, tmp_path, on_gpu):
    trt = fake_trt()
    build_engines(bundle, trt=trt, engines_dir=tmp_path, precision="fp32")
    assert all(not config.flags for _, config in trt.builds)
    directory = engine_cache_dir(bundle, trt=trt, gpu=GPU, engines_dir=tmp_path)
    manifest = json.loads((directory / ENGINE_MANIFEST).read_text())
    assert {e["precision"] for e in manifest["components"].values()} == {"fp32"}
    comps = components(bundle)
    assert stale_components(trt, bundle, comps, directory, fp16=False, max_batch=None,
                            gpu=GPU) == []  # fp16=False is precision="fp32"
    assert {c.key for c in stale_components(trt, bundle, comps, directory, precision="fp16",
                                            max_batch=None, gpu=GPU)} == {
        c.key for c in comps if c.key != "fusion"}
    with pytest.raises(ValueError, match="precision must be one of"):
        build_engines(bundle, trt=trt, engines_dir=tmp_path, precision="bf16")
    with pytest.raises(ValueError, match="contradicts"):
        build_engines(bundle, trt=trt, engines_dir=tmp_path, precision="fp32", fp16=True)
    with pytest.raises(ValueError, match=r"precision\['image'\]"):
        build_engines(bundle, trt=trt, engines_dir=tmp_path, precision={"image": "int4"})


def test_component_precision_rules(bundle):
    by_key = {c.key: c for c in components(bundle)}
    image, text, fusion = by_key["encoder:image"], by_key["text"], by_key["fusion"]
    assert component_precision("int8", image) == "int8"
    assert component_precision("int8", text) == "fp16"  # text stays fp16 under a global int8
    assert component_precision("int8", fusion) == "fp32"  # and the fusion head fp32, always
    mapping = {"image": "int8", "text": "int8", "default": "fp32"}
    assert component_precision(mapping, image) == "int8"
    assert component_precision(mapping, text) == "int8"  # asked for by name
    assert component_precision(mapping, by_key["encoder:audio"]) == "fp32"
    assert component_precision({"encoder:image": "fp32", "image": "int8"}, image) == "fp32"
    assert component_precision({}, image) == "fp16"
    assert component_precision({"default": "int8", "thermal": "fp16"}, text) == "fp16"
    assert component_precision({"default": "int8"}, fusion) == "fp32"


class CountingSource:
    """Calibration batches of one encoder, counting how often they are iterated."""

    def __init__(self, shape: tuple[int, ...], n_batches: int = 3, batch: int = 5,
                 seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.batches = [rng.standard_normal((batch, *shape)).astype(np.float32)
                        for _ in range(n_batches)]
        self.iterations = 0

    def __iter__(self):
        self.iterations += 1
        return iter(self.batches)


def _int8_sources(bundle, modalities=("image", "audio")) -> dict[str, CountingSource]:
    return {f"encoder:{m}": CountingSource(bundle.modalities[m].sample_shape, seed=i)
            for i, m in enumerate(modalities)}


def test_int8_entropy_calibrator_serves_batches_in_order(bundle, tmp_path, on_gpu,
                                                         fake_torch):
    trt = fake_trt()
    sources = _int8_sources(bundle)
    build_engines(bundle, trt=trt, engines_dir=tmp_path, modalities=["image", "audio"],
                  precision="int8", calibration=sources, calib_batch=4)
    by_source = {n.source: c for n, c in trt.builds}
    image = by_source[str(bundle.modalities["image"].file)]
    assert {"int8", "fp16"} <= image.flags  # fp16: layers without an INT8 kernel fall back
    assert isinstance(image.int8_calibrator, trt.IInt8EntropyCalibrator2)
    assert image.calibration_profile.shapes["input"][0] == (4, 3, 32, 32)  # fixed shape
    fusion = by_source[str(bundle.fusion.file)]
    assert fusion.int8_calibrator is None and "int8" not in fusion.flags
    text = by_source[str(bundle.text.file)]
    assert "int8" not in text.flags and "fp16" in text.flags
    served = [c for c in trt.calibrations if c != "cache"]
    assert len(served) == 2  # image and audio
    # 3 batches of 5 re-chunked into batches of 4: 3 full ones, in order; the last 3 dropped
    expected = np.concatenate(sources["encoder:image"].batches)[:12].reshape(3, 4, 3, 32, 32)
    image_batches = next(b for b in served if b[0]["input"].shape[1:] == (3, 32, 32))
    assert len(image_batches) == 3
    for got, want in zip(image_batches, expected, strict=True):
        np.testing.assert_array_equal(got["input"], want)
    directory = engine_cache_dir(bundle, trt=trt, gpu=GPU, engines_dir=tmp_path)
    cache = directory / "encoder_image.calib"
    assert cache.read_bytes() == b"calibration-table:3"
    manifest = json.loads((directory / ENGINE_MANIFEST).read_text())
    entry = manifest["components"]["encoder:image"]
    assert entry["precision"] == "int8" and entry["quantization"] == "entropy-calibrator"
    record = manifest["calibration"]["encoder:image"]
    assert record == {"onnx_sha256": entry["onnx_sha256"], "method": "entropy-calibrator",
                      "table": "encoder_image.calib", "samples": 12,
                      "source": entry["calibration"]}
    assert entry["calibration"] == {
        "preprocess_sha256": engines.preprocess_sha256(bundle, components(bundle)[0])}
    assert manifest["components"]["text"]["precision"] == "fp16"
    assert manifest["components"]["fusion"]["precision"] == "fp32"
    # device buffers: one per input, allocated once and refilled for every batch
    assert [a["shape"] for a in fake_torch.device_allocations()] == [(4 * 3 * 32 * 32,),
                                                                     (4 * 1 * 16 * 8,)]


def test_int8_calibration_cache_reused_then_discarded_for_a_new_onnx(tmp_path, on_gpu,
                                                                     fake_torch):
    bundle = load_bundle(write_test_bundle(tmp_path / "tiny"))
    trt = fake_trt()
    sources = _int8_sources(bundle, ("image",))
    kwargs = {"trt": trt, "engines_dir": tmp_path / "e", "modalities": ["image"],
              "precision": "int8", "calibration": sources, "calib_batch": 5}
    build_engines(bundle, **kwargs)
    assert sources["encoder:image"].iterations == 1 and len(trt.calibrations) == 1
    directory = engine_cache_dir(bundle, trt=trt, gpu=GPU, engines_dir=tmp_path / "e")
    build_engines(bundle, **kwargs)  # fresh: nothing built
    assert len(trt.calibrations) == 1
    build_engines(bundle, force=True, **kwargs)  # rebuilt from the calibration cache
    assert trt.calibrations[-1] == "cache" and sources["encoder:image"].iterations == 1
    build_engines(bundle, force=True, recalibrate=True, **kwargs)
    assert trt.calibrations[-1] != "cache" and sources["encoder:image"].iterations == 2
    import onnx

    path = bundle.modalities["image"].file
    model = onnx.load(str(path))
    model.doc_string = "re-exported"
    onnx.save(model, str(path))
    (directory / "encoder_image.calib").write_bytes(b"calibration of the old graph")
    assert [c.key for c in stale_components(trt, bundle, components(bundle, ["image"]),
                                            directory, precision="int8", max_batch=None,
                                            gpu=GPU)] == ["encoder:image"]
    build_engines(bundle, **kwargs)
    assert trt.calibrations[-1] != "cache"  # the old cache was not handed to TensorRT
    assert sources["encoder:image"].iterations == 3
    manifest = json.loads((directory / ENGINE_MANIFEST).read_text())
    assert manifest["calibration"]["encoder:image"]["onnx_sha256"] == engines._sha256(path)
    assert (directory / "encoder_image.calib").read_bytes() == b"calibration-table:3"


def _int8_kwargs(tmp_path, sources, **kw):
    return {"trt": kw.pop("trt"), "engines_dir": tmp_path / "e", "modalities": ["image"],
            "precision": "int8", "calibration": sources, "calib_batch": 5, **kw}


def test_recalibrate_rebuilds_a_fresh_int8_engine(bundle, tmp_path, on_gpu, fake_torch):
    trt = fake_trt()
    sources = _int8_sources(bundle, ("image",))
    kwargs = _int8_kwargs(tmp_path, sources, trt=trt)
    build_engines(bundle, **kwargs)
    n = len(trt.builds)
    seen: list[tuple[str, bool]] = []
    build_engines(bundle, recalibrate=True, progress=lambda c, b: seen.append((c.key, b)),
                  **kwargs)  # no force
    assert len(trt.builds) == n + 1  # only the INT8 encoder: fusion and text stay cached
    assert dict(seen) == {"encoder:image": True, "fusion": False, "text": False}
    assert trt.calibrations[-1] != "cache" and sources["encoder:image"].iterations == 2


def test_calibration_identity_change_rebuilds_and_recalibrates(bundle, tmp_path, on_gpu,
                                                               fake_torch):
    trt = fake_trt()
    sources = _int8_sources(bundle, ("image",))
    kwargs = _int8_kwargs(tmp_path, sources, trt=trt)
    build_engines(bundle, calibration_id={"samples": 15, "seed": 1}, **kwargs)
    directory = engine_cache_dir(bundle, trt=trt, gpu=GPU, engines_dir=tmp_path / "e")
    entry = json.loads((directory / ENGINE_MANIFEST).read_text())["components"]["encoder:image"]
    assert entry["calibration"]["samples"] == 15 and entry["calibration"]["seed"] == 1
    n = len(trt.builds)
    build_engines(bundle, calibration_id={"samples": 15, "seed": 1}, **kwargs)
    assert len(trt.builds) == n  # same identity: fresh
    for ident in ({"samples": 15, "seed": 2}, {"samples": 30, "seed": 2}):
        build_engines(bundle, calibration_id=ident, **kwargs)  # no force, no recalibrate
        n += 1
        assert len(trt.builds) == n
        assert trt.calibrations[-1] != "cache"  # the old calibration cache is not reused
    assert sources["encoder:image"].iterations == 3
    # without calibration data, the engine's recorded calibration is accepted as it is
    assert stale_components(trt, bundle, components(bundle, ["image"]), directory,
                            precision="int8", max_batch=None, gpu=GPU) == []


class _SimLike(dict):
    """A calibration mapping with ``samples`` and ``seed`` attributes, as SimCalibration has."""

    def __init__(self, source: CountingSource, seed: int) -> None:
        super().__init__({"encoder:image": source})
        self.samples, self.seed = 15, seed


def test_calibration_identity_taken_from_samples_and_seed(bundle, tmp_path, on_gpu,
                                                          fake_torch):
    trt = fake_trt()
    source = CountingSource(bundle.modalities["image"].sample_shape)
    build_engines(bundle, **_int8_kwargs(tmp_path, {"encoder:image": source}, trt=trt))
    n = len(trt.builds)
    build_engines(bundle, **_int8_kwargs(tmp_path, {"encoder:image": source}, trt=trt))
    assert len(trt.builds) == n  # plain batches: identity {} both times
    build_engines(bundle, **_int8_kwargs(tmp_path, _SimLike(source, 4), trt=trt))
    assert len(trt.builds) == n + 1 and source.iterations == 2
    build_engines(bundle, **_int8_kwargs(tmp_path, _SimLike(source, 4), trt=trt))
    assert len(trt.builds) == n + 1
    build_engines(bundle, **_int8_kwargs(tmp_path, _SimLike(source, 5), trt=trt))
    assert len(trt.builds) == n + 2 and source.iterations == 3


def test_changed_preprocessing_makes_int8_stale_and_recalibrates(tmp_path, on_gpu,
                                                                  fake_torch):
    import yaml

    root = write_test_bundle(tmp_path / "tiny")
    bundle = load_bundle(root)
    trt = fake_trt()
    sources = _int8_sources(bundle, ("image",))
    kwargs = _int8_kwargs(tmp_path, sources, trt=trt)
    build_engines(bundle, **kwargs)
    directory = engine_cache_dir(bundle, trt=trt, gpu=GPU, engines_dir=tmp_path / "e")
    assert {r.key: r.status for r in engines.inspect_cache(bundle, directory)}[
        "encoder:image"] == "fresh"
    manifest = yaml.safe_load((root / "bundle.yaml").read_text())
    manifest["modalities"]["image"]["preprocess"]["mean"] = [0.4, 0.4, 0.4]
    (root / "bundle.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    changed = load_bundle(root)
    comps = components(changed, ["image"])
    assert [c.key for c in stale_components(trt, changed, comps, directory, precision="int8",
                                            max_batch=None, gpu=GPU)] == ["encoder:image"]
    status = {r.key: r.status for r in engines.inspect_cache(changed, directory)}
    assert status["encoder:image"] == "stale: preprocessing config changed"
    assert status["fusion"] == "fresh"
    with pytest.raises(ValueError, match="INT8 needs calibration batches"):
        build_engines(changed, trt=trt, engines_dir=tmp_path / "e", modalities=["image"],
                      precision="int8")  # the old calibration cache is of no use
    n = len(trt.builds)
    build_engines(changed, **kwargs)
    assert len(trt.builds) == n + 1 and trt.calibrations[-1] != "cache"
    assert sources["encoder:image"].iterations == 2


def test_int8_needs_calibration_data(bundle, tmp_path, on_gpu):
    with pytest.raises(ValueError, match="INT8 needs calibration batches for encoder:image"):
        build_engines(bundle, trt=fake_trt(), engines_dir=tmp_path, precision="int8",
                      modalities=["image"])
    with pytest.raises(ValueError, match=r"\{name: array\} mappings"):
        build_engines(bundle, trt=fake_trt(), engines_dir=tmp_path, modalities=[],
                      precision={"text": "int8"},
                      calibration={"text": [np.zeros((2, 8), np.int64)]})


def test_precision_change_makes_an_engine_stale(bundle, tmp_path, on_gpu, fake_torch):
    trt = fake_trt()
    build_engines(bundle, trt=trt, engines_dir=tmp_path, modalities=["image"])
    n = len(trt.builds)
    build_engines(bundle, trt=trt, engines_dir=tmp_path, modalities=["image"],
                  precision={"image": "int8"}, calibration=_int8_sources(bundle, ("image",)))
    assert len(trt.builds) == n + 1  # only the image encoder: text and fusion are unchanged


def test_dla_core_builds_encoders_for_dla_with_gpu_fallback(bundle, tmp_path, on_gpu, caplog):
    trt = fake_trt()
    with caplog.at_level("INFO", logger="omnibind_ros.core.engines"):
        built = build_engines(bundle, trt=trt, engines_dir=tmp_path, dla_core=1, max_batch=8)
    directory = engine_cache_dir(bundle, trt=trt, gpu=GPU, engines_dir=tmp_path, dla_core=1)
    assert directory.name.endswith("_trt10.3.0_dla1")
    assert {p.parent for p in built.values()} == {directory}
    assert directory != engine_cache_dir(bundle, trt=trt, gpu=GPU, engines_dir=tmp_path)
    encoders = {str(s.file) for s in bundle.modalities.values()}
    for network, config in trt.builds:
        (profile,) = config.profiles
        if network.source in encoders:
            assert config.default_device_type == "dla" and config.DLA_core == 1
            assert {"gpu_fallback", "fp16"} <= config.flags
            assert all(lo[0] == opt[0] == hi[0] == 1 for lo, opt, hi in profile.shapes.values())
        else:  # fusion and text stay on the GPU
            assert config.default_device_type == "gpu" and "gpu_fallback" not in config.flags
            assert all(hi[0] == 8 for _, _, hi in profile.shapes.values())
    manifest = json.loads((directory / ENGINE_MANIFEST).read_text())
    assert manifest["dla_core"] == 1
    assert manifest["components"]["encoder:image"]["dla_core"] == 1
    assert manifest["components"]["encoder:image"]["max_batch"] == 1
    assert manifest["components"]["fusion"]["dla_core"] is None
    assert "cannot run on DLA core 1" in caplog.text  # the L2 norm's layers fall back
    assert stale_components(trt, bundle, components(bundle), directory, max_batch=8, gpu=GPU,
                            dla_core=1) == []
    assert len(stale_components(trt, bundle, components(bundle), directory, max_batch=8,
                                gpu=GPU, dla_core=0)) == len(components(bundle))


def test_dla_refuses_fp32_missing_cores_and_tensorrt_rtx(bundle, tmp_path, on_gpu):
    with pytest.raises(ValueError, match="DLA runs only fp16 and int8"):
        build_engines(bundle, trt=fake_trt(), engines_dir=tmp_path, dla_core=0,
                      precision="fp32")
    # fp32 where nothing runs on DLA (the fusion head) is fine
    build_engines(bundle, trt=fake_trt(), engines_dir=tmp_path, dla_core=0,
                  precision={"default": "fp16"})
    with pytest.raises(BackendUnavailableError, match="has 0 DLA core"):
        build_engines(bundle, trt=fake_trt(dla_cores=0), engines_dir=tmp_path / "n",
                      dla_core=0)
    with pytest.raises(BackendUnavailableError, match="tensorrt_rtx does not target DLA"):
        build_engines(bundle, trt=fake_trt("tensorrt_rtx", "1.7.1.116", fp16=False,
                                           int8=False),
                      engines_dir=tmp_path, dla_core=0)
    with pytest.raises(ValueError, match="dla_core must be >= 0"):
        build_engines(bundle, trt=fake_trt(), engines_dir=tmp_path, dla_core=-1)


def test_progress_reports_built_and_reused(bundle, tmp_path, on_gpu):
    trt = fake_trt()
    seen: list[tuple[str, bool]] = []
    build_engines(bundle, trt=trt, engines_dir=tmp_path,
                  progress=lambda c, built: seen.append((c.key, built)))
    build_engines(bundle, trt=trt, engines_dir=tmp_path,
                  progress=lambda c, built: seen.append((c.key, built)))
    n = len(components(bundle))
    assert [b for _, b in seen] == [True] * n + [False] * n


def test_engines_built_before_a_failure_stay_recorded(bundle, tmp_path, on_gpu):
    trt = fake_trt()
    build = trt.Builder.build_serialized_network

    def fail_on_fusion(self, network, config):
        return None if network.source == str(bundle.fusion.file) else build(self, network,
                                                                             config)

    trt.Builder.build_serialized_network = fail_on_fusion
    with pytest.raises(BackendUnavailableError, match="failed to build"):
        build_engines(bundle, trt=trt, engines_dir=tmp_path)
    directory = engine_cache_dir(bundle, trt=trt, gpu=GPU, engines_dir=tmp_path)
    encoders = [c for c in components(bundle) if c.modality is not None]
    assert stale_components(trt, bundle, encoders, directory, max_batch=None, gpu=GPU) == []


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
    code = ("import sys, omnibind_ros.core.engines, omnibind_ros.core.engine_cache,"
            " omnibind_ros.core.backends.tensorrt_backend;"
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
