"""export_bundle: all seven modalities (six encoders + the real MiniLM text teacher) and the AF
head through the dynamo exporter, ORT-vs-torch parity, atomic replacement, loud failures."""
from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from torch import nn

from omnibind_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend
from omnibind_ros.core.bundle import BUNDLE_FILE, load_bundle
from omnibind_ros.core.errors import BackendUnavailableError
from omnibind_ros.core.preprocess import build_preprocessor
from omnibind_train.export import (
    PARITY_ATOL,
    ExportParityError,
    build_tensorrt_engines,
    export_bundle,
)
from omnibind_train.testing import (
    TINY_LOGIT_SCALE,
    TINY_MODALITIES,
    build_tiny_bundle,
    tiny_models,
)

ALL_COMPONENTS = {f"encoder:{m}" for m in TINY_MODALITIES} | {"fusion", "text", "torch_fallback"}


@pytest.fixture(scope="module")
def minilm_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six random tiny encoders + AF head + the real all-MiniLM-L6-v2, all exported by dynamo."""
    out = tmp_path_factory.mktemp("export") / "bundle"
    return build_tiny_bundle(out, text="minilm", exporter="dynamo", cache=False)


@pytest.fixture(scope="module")
def manifest(minilm_bundle: Path) -> dict:
    return yaml.safe_load((minilm_bundle / BUNDLE_FILE).read_text())


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_bundle_has_every_component_and_parity_within_tolerance(minilm_bundle, manifest):
    bundle = load_bundle(minilm_bundle)
    assert bundle.dim == 384
    assert bundle.modality_names == TINY_MODALITIES
    assert bundle.text is not None and bundle.fusion is not None and bundle.fusion.kind == "af"
    parity = manifest["export"]["parity_max_abs_diff"]
    assert set(parity) == ALL_COMPONENTS
    assert all(0 <= v <= PARITY_ATOL for v in parity.values()), parity
    exporters = {m["encoder"]["exporter"] for m in manifest["modalities"].values()}
    assert exporters | {manifest["fusion"]["exporter"],
                        manifest["text"]["encoder"]["exporter"]} == {"dynamo"}
    assert {"omnibind_ros", "torch", "onnx", "opset"} <= set(manifest["versions"])
    assert manifest["provenance"]["text"] == "minilm"


def test_every_file_is_checksummed(minilm_bundle, manifest):
    on_disk = {p.relative_to(minilm_bundle).as_posix(): p for p in minilm_bundle.rglob("*")
               if p.is_file() and p.name != BUNDLE_FILE}
    assert set(manifest["files"]) == set(on_disk)
    for rel, path in on_disk.items():
        assert manifest["files"][rel] == hashlib.sha256(path.read_bytes()).hexdigest(), rel
    assert {"text/tokenizer/tokenizer.json", "text/tokenizer/vocab.txt",
            "labels/label_embeddings.npy", "fusion/af_head.onnx"} <= set(on_disk)
    assert not any(p.endswith(".data") for p in on_disk), "one file per graph"


def _dims(value) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in value.type.tensor_type.shape.dim]


def test_graphs_have_dynamic_batch_and_the_preprocessing_shape(minilm_bundle):
    bundle = load_bundle(minilm_bundle)
    for modality, spec in bundle.modalities.items():
        model = onnx.load(str(spec.file))
        onnx.checker.check_model(model)
        (graph_input,) = model.graph.input
        dims = _dims(graph_input)
        assert isinstance(dims[0], str) and dims[0], f"{modality}: batch axis is fixed"
        expected = build_preprocessor(modality, spec.preprocess).output_shape
        assert dims[1:] == list(expected), modality
        assert _dims(model.graph.output[0])[1:] == [bundle.dim]
    text = onnx.load(str(bundle.text.file))
    assert all(all(isinstance(d, str) for d in _dims(i)) for i in text.graph.input)
    fusion = onnx.load(str(bundle.fusion.file))
    assert [isinstance(d, str) for d in _dims(fusion.graph.input[0])] == [True, True, False]


def test_runtime_embeds_new_text_like_the_real_minilm(minilm_bundle, text_encoder):
    backend = OnnxRuntimeBackend(load_bundle(minilm_bundle), threads=1)
    prompts = ["a dented metal can on a table", "wooden mug", "a", "THE RUBBER DUCK squeaks"]
    batch = text_encoder.tokenizer(prompts)
    with torch.no_grad():
        ref = text_encoder(batch["input_ids"], batch["attention_mask"]).numpy()
    ids, _ = backend.tokenizer(prompts)
    np.testing.assert_array_equal(ids, batch["input_ids"].numpy())
    np.testing.assert_allclose(backend.embed_text(prompts), ref, atol=PARITY_ATOL, rtol=0)


def test_labels_are_stored_as_given(minilm_bundle):
    models_labels = yaml.safe_load((minilm_bundle / "labels" / "labels.yaml").read_text())
    bundle = load_bundle(minilm_bundle)
    assert list(bundle.label_names) == models_labels["names"]
    assert bundle.label_embeddings.shape == (len(bundle.label_names), 384)
    np.testing.assert_allclose(np.linalg.norm(bundle.label_embeddings, axis=1), 1.0, atol=1e-5)
    assert bundle.logit_scale == TINY_LOGIT_SCALE  # build_tiny_bundle's default 1 / 0.07


def test_logit_scale_is_written_for_every_bundle(tmp_path):
    out = build_tiny_bundle(tmp_path / "bundle", modalities=("point_cloud",), logit_scale=42.5)
    manifest = yaml.safe_load((out / BUNDLE_FILE).read_text())
    assert manifest["labels"]["logit_scale"] == 42.5
    assert load_bundle(out).logit_scale == 42.5
    kwargs = tiny_models(modalities=("point_cloud",)).export_kwargs()
    del kwargs["logit_scale"]
    with pytest.raises(TypeError, match="logit_scale"):
        export_bundle(tmp_path / "other", **kwargs)  # required: no silent default


class _TracerTrap(nn.Module):
    """A head with Python control flow on tensor values: the tracer records only the branch the
    example batch took, so the graph is right at the traced batch and wrong at batch 1."""

    def __init__(self, head: nn.Module, threshold: float) -> None:
        super().__init__()
        self.head = head
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        return h if x.sum() > self.threshold else -h


def test_parity_failure_is_loud_and_keeps_the_previous_bundle(tmp_path):
    out = build_tiny_bundle(tmp_path / "bundle", modalities=("point_cloud",))
    before = (out / BUNDLE_FILE).read_text()
    models = tiny_models(modalities=("point_cloud",), seed=1)
    encoder = models.encoders["point_cloud"]
    with torch.no_grad():  # split the traced batch and its first sample on either side
        features = encoder.trunk(models.sample_inputs["point_cloud"])
    threshold = float(features.sum() + features[:1].sum()) / 2
    encoder.head = _TracerTrap(encoder.head, threshold)
    with pytest.raises(ExportParityError) as info:
        export_bundle(out, **models.export_kwargs(),
                      exporter={"*": "torchscript", "text": "dynamo"}, include_torch_weights=False)
    assert set(info.value.failures) == {"encoder:point_cloud"}
    assert "encoder:point_cloud" in str(info.value)
    assert (out / BUNDLE_FILE).read_text() == before
    load_bundle(out)
    assert _leftovers(tmp_path) == []


def test_export_replaces_an_existing_bundle(tmp_path):
    out = build_tiny_bundle(tmp_path / "bundle")  # all modalities
    (out / "engines").mkdir()  # a stale engine cache must go with the old bundle
    models = tiny_models(modalities=("point_cloud",), seed=2)
    export_bundle(out, **models.export_kwargs(), exporter={"*": "torchscript", "text": "dynamo"},
                  include_torch_weights=False)
    bundle = load_bundle(out)
    assert bundle.modality_names == ("point_cloud",)
    assert bundle.modalities["point_cloud"].torch_weights is None
    assert not (out / "engines").exists() and not (out / "torch").exists()
    assert bundle.provenance["seed"] == 2
    assert _leftovers(tmp_path) == []


def test_export_refuses_to_replace_a_directory_that_is_not_a_bundle(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a model bundle"):
        export_bundle(out, **tiny_models(modalities=("point_cloud",)).export_kwargs())
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.fixture
def pc_kwargs() -> dict:
    return tiny_models(modalities=("point_cloud",)).export_kwargs()


@pytest.mark.parametrize("change, message", [
    (lambda kw: kw["sample_inputs"].update(point_cloud=torch.zeros(1, 64, 3)), "batch of >= 2"),
    (lambda kw: kw["sample_inputs"].update(point_cloud=torch.zeros(2, 32, 3)),
     "preprocessing config produces"),
    (lambda kw: kw.update(label_embeddings=torch.zeros(5, 16)), "embedding sizes differ"),
    (lambda kw: kw.update(label_names=["a", "b"]), "label_embeddings must be"),
    (lambda kw: kw.update(prompt_templates=["no placeholder"]), "exactly one"),
    (lambda kw: kw["preprocess_configs"].pop("point_cloud"), "preprocess_configs lacks"),
    (lambda kw: kw.update(exporter="onnx-magic"), "exporter must be one of"),
    (lambda kw: kw.update(logit_scale=0.0), "logit_scale must be a finite number > 0"),
    (lambda kw: kw.update(logit_scale=float("nan")), "logit_scale must be a finite number > 0"),
])
def test_export_rejects_inconsistent_inputs(tmp_path, pc_kwargs, change, message):
    change(pc_kwargs)
    with pytest.raises(ValueError, match=message):
        export_bundle(tmp_path / "bundle", **pc_kwargs)
    assert not (tmp_path / "bundle").exists()


def test_tiny_bundle_is_cached_per_process(tmp_path):
    build_tiny_bundle(tmp_path / "a")
    start = time.perf_counter()
    build_tiny_bundle(tmp_path / "b")
    assert time.perf_counter() - start < 3.0
    assert (tmp_path / "a" / BUNDLE_FILE).read_text() == (tmp_path / "b" / BUNDLE_FILE).read_text()


def test_build_tensorrt_engines_without_tensorrt_says_so(tmp_path, monkeypatch):
    bundle_dir = build_tiny_bundle(tmp_path / "bundle")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(BackendUnavailableError, match="tensorrt is not installed"):
        build_tensorrt_engines(bundle_dir)


def _tensorrt_ready() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.tensorrt
@pytest.mark.skipif(not _tensorrt_ready(), reason="needs TensorRT and a CUDA GPU")
def test_build_tensorrt_engines_caches_per_gpu_and_version(tmp_path):
    bundle_dir = build_tiny_bundle(tmp_path / "bundle")
    engines = build_tensorrt_engines(bundle_dir, fp16=True)
    assert set(engines) == {f"encoder:{m}" for m in TINY_MODALITIES} | {"fusion", "text"}
    assert all(p.is_file() and p.parent.parent == bundle_dir / "engines"
               for p in engines.values())
    stamps = {k: p.stat().st_mtime_ns for k, p in engines.items()}
    again = build_tensorrt_engines(bundle_dir, fp16=True)
    assert {k: p.stat().st_mtime_ns for k, p in again.items()} == stamps  # reused, not rebuilt
    load_bundle(bundle_dir)  # engines/ is outside the checksums
