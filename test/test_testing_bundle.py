"""omnibind_ros.testing.write_test_bundle: a bundle the runtime loads, whose graphs compute what
the module says (checked against numpy), self-consistent labels, determinism, no torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from omnibind_ros.core.backends import embed_labels
from omnibind_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend
from omnibind_ros.core.bundle import BUNDLE_FILE, load_bundle
from omnibind_ros.core.preprocess import build_preprocessor
from omnibind_ros.core.types import AudioBlock, EventPacket, TactileFrame, ThermalFrame
from omnibind_ros.testing import (
    FUNCTION_WORD_SCALE,
    TEST_DIM,
    TEST_LABELS,
    TEST_LOGIT_SCALE,
    TEST_MODALITIES,
    TEST_TEMPLATES,
    label_input,
    tiny_preprocess_configs,
    write_test_bundle,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory):
    return load_bundle(write_test_bundle(tmp_path_factory.mktemp("testing") / "tiny"))


@pytest.fixture(scope="module")
def ort(bundle) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(bundle, threads=1)


def _weights(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def payloads(seed: int = 0) -> dict[str, object]:
    """One raw sensor payload per modality, as ros/conversions or the simulator produce them."""
    rng = np.random.default_rng(seed)
    n = 400
    sphere = rng.standard_normal((1000, 3))
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    return {
        "image": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
        "thermal": ThermalFrame(rng.integers(28000, 32000, (60, 80)).astype(np.uint16),
                                "mono16"),
        "event": EventPacket(rng.integers(0, 64, n).astype(np.uint16),
                             rng.integers(0, 48, n).astype(np.uint16),
                             np.sort(rng.integers(0, 40_000_000, n)).astype(np.int64),
                             rng.random(n) < 0.5, 64, 48),
        "tactile": TactileFrame(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
                                rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)),
        "audio": AudioBlock((0.1 * rng.standard_normal(1600)).astype(np.float32), 16000),
        "point_cloud": (np.array([2.0, 0.0, 0.5]) + 0.2 * sphere).astype(np.float32),
    }


def test_the_runtime_loads_it(bundle):
    assert bundle.format_version == 1 and bundle.dim == TEST_DIM == 32
    assert bundle.modality_names == TEST_MODALITIES
    assert bundle.label_names == TEST_LABELS and bundle.prompt_templates == TEST_TEMPLATES
    assert bundle.logit_scale == pytest.approx(TEST_LOGIT_SCALE)
    assert bundle.fusion.kind == "mean" and bundle.fusion.max_tokens is None
    assert bundle.text.max_length == 32 and bundle.text.pad_token == "[PAD]"
    assert bundle.preprocess_configs["text"].prompt_templates == TEST_TEMPLATES
    for modality, spec in bundle.modalities.items():
        assert spec.torch_weights is None
        assert spec.sample_shape == build_preprocessor(modality, spec.preprocess).output_shape
    assert "torch" not in bundle.versions and bundle.versions["opset"] == 18
    assert set(bundle.files) == {
        *(f"encoders/{m}.onnx" for m in TEST_MODALITIES), "fusion/mean_head.onnx",
        "text/text_encoder.onnx", "text/tokenizer/tokenizer.json", "labels/labels.yaml",
        "labels/label_embeddings.npy"}


def test_the_onnx_files_pass_the_checker(bundle):
    import onnx

    for rel in bundle.files:
        if rel.endswith(".onnx"):
            onnx.checker.check_model(onnx.load(str(bundle.path(rel))), full_check=True)


def test_preprocess_configs_are_the_small_ones(bundle):
    configs = tiny_preprocess_configs()
    for modality in (*TEST_MODALITIES, "text"):
        assert bundle.preprocess_configs[modality].to_dict() == configs[modality]
    shapes = {m: bundle.modalities[m].sample_shape for m in TEST_MODALITIES}
    assert shapes == {"image": (3, 32, 32), "thermal": (3, 32, 32), "event": (3, 32, 32),
                      "tactile": (3, 32, 32), "audio": (1, 16, 8), "point_cloud": (64, 3)}


@pytest.mark.parametrize("modality", TEST_MODALITIES)
def test_every_encoder_maps_real_preprocessing_output_to_a_unit_projection(bundle, ort,
                                                                          modality):
    spec = bundle.modalities[modality]
    x = build_preprocessor(modality, spec.preprocess)(payloads()[modality])
    out = ort.encode(modality, np.stack([x, 0.5 * x + 1.0]))
    assert out.shape == (2, 32) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    projection = _weights(spec.file)["projection"].astype(np.float64)
    np.testing.assert_allclose(projection.T @ projection, np.eye(32), atol=1e-5)  # orthonormal
    flat = np.stack([x, 0.5 * x + 1.0]).reshape(2, -1).astype(np.float64)
    np.testing.assert_allclose(out, _unit(flat @ projection), atol=1e-5)


def test_fusion_is_the_normalised_mean_of_the_live_tokens(bundle, ort):
    rng = np.random.default_rng(1)
    tokens = _unit(rng.standard_normal((3, 5, 32))).astype(np.float32)
    mask = np.array([[True, True, True, True, True],
                     [True, False, True, False, False],
                     [False, False, False, True, False]])
    tokens[1, 1] = np.nan  # padding may hold anything
    tokens[1, 3] = 1e30
    fused = ort.fuse(tokens, mask)
    expected = [_unit(tokens[b][mask[b]].astype(np.float64).mean(axis=0)) for b in range(3)]
    np.testing.assert_allclose(fused, np.stack(expected), atol=1e-6)
    np.testing.assert_allclose(fused[2], tokens[2, 3], atol=1e-6)  # one live token: itself
    for n in (1, 2, 7):  # the token axis is dynamic
        out = ort.fuse(_unit(rng.standard_normal((2, n, 32))).astype(np.float32),
                       np.ones((2, n), bool))
        assert out.shape == (2, 32)
    nothing = ort.fuse(tokens[:1], np.zeros((1, 5), bool))
    assert np.isfinite(nothing).all() and not nothing.any()  # no live token: zeros, not NaN


def test_label_embeddings_are_the_text_encoders_own(bundle, ort):
    np.testing.assert_allclose(embed_labels(ort, bundle.label_names), bundle.label_embeddings,
                               atol=1e-6)
    # ...and the text graph is the normalised mean of the tokens' rows of the table
    table = _weights(bundle.text.file)["word_embeddings"].astype(np.float64)
    prompts = [t.format(n) for n in TEST_LABELS for t in TEST_TEMPLATES]
    ids, mask = ort.tokenizer(prompts)
    expected = [_unit(table[i[m == 1]].mean(axis=0)) for i, m in zip(ids, mask, strict=True)]
    np.testing.assert_allclose(ort.embed_text(prompts), np.stack(expected), atol=1e-5)


def test_labels_are_distinct_and_template_words_weigh_little(bundle, ort):
    cos = bundle.label_embeddings @ bundle.label_embeddings.T
    assert np.abs(cos - np.eye(len(TEST_LABELS))).max() < 0.6
    text = ort.embed_text(["a photo of a metal can.", "metal can", "a photo of a."])
    assert text[0] @ text[1] > 0.9 and abs(text[0] @ text[2]) < 0.5
    table = _weights(bundle.text.file)["word_embeddings"]
    vocab = json.loads(bundle.text.tokenizer_file.read_text())["model"]["vocab"]
    norm = {w: float(np.linalg.norm(table[vocab[w]])) for w in ("photo", "a", ".", "metal")}
    assert norm["photo"] < 3 * FUNCTION_WORD_SCALE * norm["metal"]
    assert np.linalg.norm(table[vocab["[PAD]"]]) == 0


def test_any_ascii_word_gets_its_own_tokens(ort):
    ids, mask = ort.tokenizer(["a Red APPLE", "blue chair", "zyzzyva", "Café"])
    assert 1 not in ids[mask == 1]  # no [UNK]
    emb = ort.embed_text(["red apple", "blue chair", "apple red"])
    assert emb[0] @ emb[1] < 0.9
    np.testing.assert_allclose(emb[0], emb[2], atol=1e-6)  # a bag of words: order is lost
    ids, _ = ort.tokenizer(["word " * 100])
    assert ids.shape == (1, 32)


def test_label_input_lands_on_the_label(bundle, ort):
    scores = {}
    for modality in TEST_MODALITIES:
        x = label_input(bundle, modality, "rubber duck")
        assert x.shape == bundle.modalities[modality].sample_shape and x.dtype == np.float32
        assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)
        scores[modality] = ort.encode(modality, x[None])[0]
    duck = bundle.label_embeddings[TEST_LABELS.index("rubber duck")]
    for emb in scores.values():
        assert emb @ duck > 0.9999
    tokens = np.stack([label_input(bundle, "image", "metal can"),
                       label_input(bundle, "tactile", "metal can")]).astype(np.float32)
    can = [ort.encode(m, t[None])[0] for m, t in zip(("image", "tactile"), tokens, strict=True)]
    fused = ort.fuse(np.stack(can)[None], np.ones((1, 2), bool))[0]
    logits = bundle.logit_scale * bundle.label_embeddings @ fused
    assert TEST_LABELS[int(np.argmax(logits))] == "metal can"
    noisy = label_input(bundle, "image", "metal can") + np.random.default_rng(0).normal(
        0.0, 1.0, (3, 32, 32)).astype(np.float32)
    assert 0.5 < ort.encode("image", noisy[None])[0] @ can[0] < 0.9999  # noise moves it away
    np.testing.assert_allclose(label_input(bundle, "audio", 2.0 * duck),  # a vector target
                               label_input(bundle, "audio", "rubber duck"), atol=1e-5)
    with pytest.raises(ValueError, match="not a label"):
        label_input(bundle, "image", "pine cone")
    with pytest.raises(ValueError, match="no 'sonar' encoder"):
        label_input(bundle, "sonar", "metal can")


def test_deterministic_in_the_seed(tmp_path):
    a = write_test_bundle(tmp_path / "a", seed=3)
    b = write_test_bundle(tmp_path / "b", seed=3)
    c = write_test_bundle(tmp_path / "c", seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "encoders/image.onnx").read_bytes() != (c / "encoders/image.onnx").read_bytes()
    assert (a / "labels/labels.yaml").read_bytes() == (c / "labels/labels.yaml").read_bytes()


def test_arguments(tmp_path):
    root = write_test_bundle(tmp_path / "b", dim=8, modalities=["audio", "image"],
                             labels=["red apple", "blue chair", "green box"],
                             prompt_templates=["{}"], logit_scale=None, text_max_length=4)
    bundle = load_bundle(root)
    assert bundle.dim == 8 and bundle.modality_names == ("audio", "image")
    assert bundle.label_embeddings.shape == (3, 8) and bundle.logit_scale is None
    assert bundle.text.max_length == 4 and bundle.prompt_templates == ("{}",)
    default = write_test_bundle(tmp_path / "default")
    # an encoder's weights depend on the seed, its modality and D only
    same = write_test_bundle(tmp_path / "same", modalities=["point_cloud"], labels=["x"])
    assert (same / "encoders/point_cloud.onnx").read_bytes() == \
        (default / "encoders/point_cloud.onnx").read_bytes()
    with pytest.raises(FileExistsError, match="not empty"):
        write_test_bundle(root)
    assert load_bundle(write_test_bundle(root, overwrite=True)).dim == TEST_DIM
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_test_bundle(empty) == empty
    with pytest.raises(ValueError, match="no test encoder"):
        write_test_bundle(tmp_path / "sonar", modalities=["sonar"])


def test_manifest_is_plain_and_checksummed(bundle):
    manifest = yaml.safe_load((bundle.root / BUNDLE_FILE).read_text())
    assert manifest["labels"]["logit_scale"] == pytest.approx(1 / 0.07)
    assert manifest["provenance"]["kind"] == "runtime test bundle"
    load_bundle(bundle.root, verify=True)


def test_written_and_used_without_torch_or_the_training_package(tmp_path):
    code = textwrap.dedent(f"""
        import json, sys
        sys.modules["torch"] = None  # any import of torch fails
        sys.modules["omnibind_train"] = None
        import numpy as np
        from omnibind_ros.core.backends import create_backend
        from omnibind_ros.testing import label_input, write_test_bundle
        root = write_test_bundle({str(tmp_path / "b")!r})
        backend = create_backend("onnxruntime", str(root), threads=1)
        x = label_input(backend.bundle, "image", "fabric ball")
        emb = backend.encode("image", x[None])
        fused = backend.fuse(emb[:, None], np.ones((1, 1), bool))
        scores = backend.bundle.label_embeddings @ fused[0]
        best = backend.bundle.label_names[int(np.argmax(scores))]
        print(json.dumps({{"best": best, "text": backend.embed_text(["a mug"]).shape,
                          "loaded": sorted(m for m in ("torch", "transformers")
                                           if sys.modules.get(m) is not None)}}))
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"best": "fabric ball", "text": [1, 32], "loaded": []}
