"""INT8 engines for real with TensorRT-RTX (no GPU needed to build): a QDQ graph from ONNX
Runtime's entropy calibration on simulated samples through the bundle's preprocessing, its
calibration table and graph cached and reused, and the QDQ graph's accuracy against the fp32
graph on held-out simulated samples (ONNX Runtime on the CPU: the engines themselves need an RTX
GPU to run)."""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest

from omnibind_ros.core.bundle import load_bundle
from omnibind_ros.core.engines import ENGINE_MANIFEST, build_engines
from omnibind_ros.sim.calibration import SimCalibration, sim_inputs
from omnibind_ros.testing import write_test_bundle

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                                reason="tensorrt_rtx is not installed (pip install "
                                       "tensorrt-rtx; requirements/dev.txt)")

DEFAULT_BUNDLE = Path.home() / ".cache" / "omnibind_ros" / "bundles" / "default"
HELD_OUT = range(0, 48)  # calibration draws from seed 1_000_000 on


def _cosines(bundle, modality: str, qdq: Path) -> np.ndarray:
    import onnxruntime as ort

    x = np.stack(list(sim_inputs(bundle, modality, HELD_OUT)))
    name = bundle.modalities[modality].input.name
    runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(
        None, {name: x})[0] for p in (bundle.modalities[modality].file, qdq)]
    a, q = runs
    return (a * q).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(q, axis=1)


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    bundle = load_bundle(write_test_bundle(root / "tiny"))
    calibration = SimCalibration(bundle, samples=24, batch_size=8,
                                 modalities=["image", "point_cloud"])
    kwargs = {"module": "tensorrt_rtx", "engines_dir": root / "engines", "max_batch": 4,
              "modalities": ["image", "point_cloud"], "precision": "int8",
              "calibration": calibration}
    built = build_engines(bundle, **kwargs)
    return bundle, calibration, kwargs, built


def test_rtx_int8_engine_from_a_qdq_graph(tiny_int8):
    import onnx

    bundle, calibration, _, built = tiny_int8
    directory = built["encoder:image"].parent
    manifest = json.loads((directory / ENGINE_MANIFEST).read_text())
    for modality in ("image", "point_cloud"):
        entry = manifest["components"][f"encoder:{modality}"]
        assert entry["precision"] == "int8" and entry["quantization"] == "qdq-entropy"
        record = manifest["calibration"][f"encoder:{modality}"]
        assert record["onnx_sha256"] == entry["onnx_sha256"] and record["samples"] == 24
        assert (directory / record["table"]).is_file()
        graph = onnx.load(str(directory / record["qdq"]))
        ops = {n.op_type for n in graph.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert built[f"encoder:{modality}"].stat().st_size > 0
    assert manifest["components"]["fusion"]["precision"] == "fp32"
    assert manifest["components"]["text"]["precision"] == "fp32"  # rtx: no FP16 flag
    assert calibration.iterations == {"image": 1, "point_cloud": 1}
    assert calibration.drawn == 48


def test_rtx_int8_calibration_is_reused(tiny_int8):
    bundle, calibration, kwargs, built = tiny_int8
    drawn = calibration.drawn
    directory = built["encoder:image"].parent
    stamps = {k: p.stat().st_mtime_ns for k, p in built.items()}
    again = build_engines(bundle, **kwargs)  # fresh: nothing built, nothing drawn
    assert {k: p.stat().st_mtime_ns for k, p in again.items()} == stamps
    build_engines(bundle, force=True, **kwargs)  # rebuilt from the cached QDQ graph
    assert built["encoder:image"].stat().st_mtime_ns != stamps["encoder:image"]
    qdq = directory / "encoder_image.qdq.onnx"
    qdq.unlink()  # lost: made again from the calibration table, without new samples
    build_engines(bundle, force=True, **kwargs)
    assert qdq.is_file() and calibration.drawn == drawn
    build_engines(bundle, force=True, recalibrate=True, **kwargs)
    assert calibration.drawn == drawn + 48


def test_tiny_qdq_graphs_match_fp32(tiny_int8):
    bundle, _, _, built = tiny_int8
    directory = built["encoder:image"].parent
    for modality in ("image", "point_cloud"):
        cos = _cosines(bundle, modality, directory / f"encoder_{modality}.qdq.onnx")
        assert cos.min() >= 0.995, (modality, cos.min())  # measured 0.9996 / 0.9998


@pytest.mark.slow
@pytest.mark.skipif(not (DEFAULT_BUNDLE / "bundle.yaml").is_file(),
                    reason="no default bundle in the cache")
def test_default_bundle_image_encoder_int8(tmp_path):
    """The trained image encoder (EfficientNet-Lite0 trunk + MLP head) quantised to INT8.

    Measured here (64 calibration samples, 48 held-out): cosine to fp32 mean 0.984, min 0.873;
    build (simulation, calibration, QDQ graph, engine) about 15 s; engine 10.8 MB vs 17.7 MB.
    """
    bundle = load_bundle(DEFAULT_BUNDLE, verify=False)
    calibration = SimCalibration(bundle, samples=64, modalities=["image"])
    start = time.perf_counter()
    built = build_engines(bundle, module="tensorrt_rtx", engines_dir=tmp_path,
                          modalities=["image"], precision="int8", calibration=calibration)
    elapsed = time.perf_counter() - start
    fp32 = build_engines(bundle, module="tensorrt_rtx", engines_dir=tmp_path / "fp32",
                         modalities=["image"], precision="fp32")
    assert elapsed < 120, elapsed
    assert built["encoder:image"].stat().st_size < 0.75 * fp32["encoder:image"].stat().st_size
    cos = _cosines(bundle, "image", built["encoder:image"].parent / "encoder_image.qdq.onnx")
    assert cos.mean() >= 0.975 and cos.min() >= 0.85, (cos.mean(), cos.min())
