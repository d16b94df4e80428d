"""Training data: core preprocessing of simulator samples, the feature cache, label prompts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny import REPO, tiny_cache

from omnibind_ros.core.preprocess import build_preprocessor, default_configs
from omnibind_ros.sim.dataset import DatasetConfig, SimDataset, generate
from omnibind_train.data import (
    DataConfig,
    FeatureJob,
    SamplePreprocessor,
    augment_input,
    cached_features,
    feature_key,
    feature_path,
    label_embeddings,
    onnx_trunk_encode_fn,
    resolve_preprocess_configs,
)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> str:
    cfg = DatasetConfig.from_yaml(REPO / "config" / "sim_dataset_tiny.yaml")
    return str(generate(cfg, tiny_cache(tmp_path_factory), progress=False))


@pytest.fixture(scope="module")
def student(tiny_root) -> SimDataset:
    return SimDataset(tiny_root, "train", "student")


def test_sample_preprocessor_is_the_core_preprocessing(student) -> None:
    sample = student[0]
    configs = default_configs()
    for modality, payload in (("image", sample.image), ("thermal", sample.thermal),
                              ("event", sample.events), ("point_cloud", sample.points)):
        ours = SamplePreprocessor(modality, configs[modality])(sample)
        core = build_preprocessor(modality, configs[modality])(payload)
        np.testing.assert_array_equal(ours, core)
    audio = SamplePreprocessor("audio", configs["audio"])
    a, b = audio(sample), audio(sample)  # fresh window per sample: no state leaks between calls
    np.testing.assert_array_equal(a, b)
    assert a.shape == build_preprocessor("audio", configs["audio"]).output_shape
    assert SamplePreprocessor("tactile", configs["tactile"])(sample).shape == (3, 160, 160)
    assert SamplePreprocessor("text", configs["text"])(sample) == sample.caption.lower().strip()


def test_unpreprocessable_payload_is_invalid_not_an_error(student) -> None:
    sample = student[0]
    sample.points = np.zeros((0, 3), np.float32)
    pre = SamplePreprocessor("point_cloud", default_configs()["point_cloud"])
    assert pre(sample) is None
    assert pre.blank().shape == (1024, 3)
    sample.events = None
    assert SamplePreprocessor("event", default_configs()["event"])(sample) is None


def test_preprocess_configs_take_the_trunk_norm_and_overrides() -> None:
    from omnibind_ros.sim.text import PROMPT_TEMPLATES

    cfgs = resolve_preprocess_configs({"image": ((0.4, 0.4, 0.4), (0.2, 0.2, 0.2))},
                                      {"audio": {"n_mels": 64}})
    assert cfgs["image"]["mean"] == [0.4, 0.4, 0.4] and cfgs["image"]["std"] == [0.2] * 3
    assert cfgs["event"]["mean"] == default_configs()["event"]["mean"]  # own normalisation
    assert cfgs["audio"]["n_mels"] == 64
    assert tuple(cfgs["text"]["prompt_templates"]) == tuple(PROMPT_TEMPLATES)
    with pytest.raises(ValueError):
        resolve_preprocess_configs({}, {"sonar": {}})
    with pytest.raises(ValueError):
        resolve_preprocess_configs({}, {"audio": {"n_melz": 3}})
    with pytest.raises(ValueError, match="trunk_runtime"):
        DataConfig(trunk_runtime="tpu")


def test_augmentation_wraps_the_preprocessed_input() -> None:
    x = np.random.default_rng(0).standard_normal((3, 32, 32)).astype(np.float32)
    a = augment_input(x, "image", np.random.default_rng(1))
    b = augment_input(x, "image", np.random.default_rng(1))
    assert a.shape == x.shape and np.array_equal(a, b) and not np.array_equal(a, x)
    spec = np.random.default_rng(0).standard_normal((1, 8, 50)).astype(np.float32)
    assert augment_input(spec, "audio", np.random.default_rng(2)).shape == spec.shape
    pts = np.zeros((16, 3), np.float32)
    assert augment_input(pts, "point_cloud", np.random.default_rng(0)) is pts


def _job(tmp_path, modality: str, cfg: dict, calls: list, views: int = 1) -> FeatureJob:
    key = feature_key("ds", modality, {"kind": "toy"}, cfg, views, "float16")

    def encode(xs):
        calls.append(len(xs))
        return torch.from_numpy(np.stack(xs)).flatten(1)[:, :8].float()

    return FeatureJob(modality=modality, preprocess=SamplePreprocessor(modality, cfg),
                      encode=encode, views=views, dtype=torch.float16, key=key,
                      path=feature_path(tmp_path, "tiny", "student", "train", modality, key))


def test_feature_cache_is_keyed_by_content(tmp_path, student) -> None:
    cfg = default_configs()["thermal"]
    calls: list[int] = []
    first = cached_features(student, [_job(tmp_path, "thermal", cfg, calls)], batch_size=8,
                            progress=False)["thermal"]
    assert first.values.shape == (1, len(student), 8) and first.values.dtype == torch.float16
    assert first.valid.all() and sum(calls) == len(student)
    again = cached_features(student, [_job(tmp_path, "thermal", cfg, calls)],
                            progress=False)["thermal"]
    assert sum(calls) == len(student)  # read from the cache, trunk not run
    assert torch.equal(again.values, first.values)
    changed = cached_features(student, [_job(tmp_path, "thermal", {**cfg, "t_max_c": 60.0},
                                             calls)], progress=False)["thermal"]
    assert sum(calls) == 2 * len(student)
    assert not torch.equal(changed.values, first.values)
    views = cached_features(student, [_job(tmp_path, "thermal", cfg, calls, views=2)],
                            progress=False)["thermal"]
    assert views.values.shape[0] == 2 and torch.equal(views.values[0], first.values[0])


def test_text_features_run_once_per_distinct_caption(tmp_path, student) -> None:
    calls: list[int] = []
    job = _job(tmp_path, "text", default_configs()["text"], calls)
    job.dedupe = True
    job.encode = lambda xs: (calls.append(len(xs)), torch.tensor(
        [[float(len(x))] for x in xs]))[1]
    fs = cached_features(student, [job], progress=False)["text"]
    captions = [student[i].caption for i in range(len(student))]
    assert sum(calls) == len(set(c.lower() for c in captions))
    assert fs.values[0, :, 0].tolist() == [float(len(c.lower().strip())) for c in captions]


def test_onnx_trunk_matches_torch(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from omnibind_train.models.encoders import ModalityEncoder
    from omnibind_train.models.registry import EncoderConfig, HeadConfig, PointNetTrunk

    trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    enc = ModalityEncoder(config=EncoderConfig("image", PointNetTrunk(frozen=True),
                                               HeadConfig(kind="linear"), 8),
                          trunk=trunk, head=torch.nn.Identity())
    example = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    fn = onnx_trunk_encode_fn(enc, tmp_path / "t.onnx", example)
    assert fn is not None and (tmp_path / "t.onnx").exists()
    xs = list(np.random.default_rng(1).standard_normal((5, 3, 16, 16)).astype(np.float32))
    with torch.no_grad():
        ref = trunk(torch.from_numpy(np.stack(xs)))
    torch.testing.assert_close(fn(xs), ref, atol=1e-5, rtol=1e-4)


def test_label_embeddings_average_prompts(text_encoder) -> None:
    cfg = default_configs()["text"]
    names = ["metal mug", "wooden duck", "plastic cone"]
    emb = label_embeddings(text_encoder, names, cfg)
    assert emb.shape == (3, 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    one = label_embeddings(text_encoder, names, {**cfg, "prompt_templates": ["a photo of a {}."]})
    assert not torch.allclose(one, emb)
    assert (emb @ emb.T - torch.eye(3)).max() < 0.99


def test_overwrite_regenerates_only_a_stale_data_set(tmp_path) -> None:
    import json
    import warnings

    from omnibind_train.data import ensure_dataset

    cfg = DataConfig(dataset={"name": "ow", "teacher_train": 2, "teacher_val": 1,
                              "student_train": 2, "student_val": 1, "student_test": 1,
                              "workers": 1})
    root = ensure_dataset(cfg, tmp_path, progress=False)
    manifest = json.loads((root / "manifest.json").read_text())
    assert ensure_dataset(cfg, tmp_path, progress=False, overwrite=True) == root
    assert json.loads((root / "manifest.json").read_text())["last_run"]["samples"] == 0
    (root / "manifest.json").write_text(json.dumps({**manifest, "code_fingerprint": "old"}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ensure_dataset(cfg, tmp_path, progress=False)
    assert any("simulator code" in str(w.message) for w in caught)
    ensure_dataset(cfg, tmp_path, progress=False, overwrite=True)
    assert json.loads((root / "manifest.json").read_text())["code_fingerprint"] != "old"
    other = DataConfig(dataset={**cfg.dataset, "seed": 3})
    with pytest.raises(ValueError, match="another config"):
        ensure_dataset(other, tmp_path, progress=False)
    ensure_dataset(other, tmp_path, progress=False, overwrite=True)
