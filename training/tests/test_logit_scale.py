"""The bundle carries the logit scale its AF head was trained with, and the runtime's fused label
probabilities are the trainer's.

A tiny AF head is trained with a learned temperature (so its ``1 / tau`` is neither the default
nor the runtime's former constant 100), exported with the scale read back from its checkpoint,
and the runtime (ONNX Runtime fusion + ``FusionTick`` / ``classify`` with
``bundle.logit_scale``) is compared with the trainer's softmax over all labels of
``AFLoss.logit_scale() * fused @ labels.T`` for the same token sets.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny import clustered

from omnibind_ros.core.backends import create_backend
from omnibind_ros.core.bundle import load_bundle
from omnibind_ros.core.fusion import EmbeddingSlot, FusionTick, classify
from omnibind_train.export import export_bundle
from omnibind_train.losses import AFLoss
from omnibind_train.models.fusion import MODALITY_SLOTS, FusionConfig
from omnibind_train.testing import TINY_EXPORTER, TINY_LOGIT_SCALE, tiny_models
from omnibind_train.trainers import AFConfig, FusionData, LoopConfig, OptimConfig, train_fusion
from omnibind_train.trainers.af import checkpoint_logit_scale
from omnibind_train.trainers.checkpoint import load_checkpoint, load_trainable_state

#: Max abs difference between the runtime's and the trainer's probabilities: ONNX Runtime and
#: torch fuse to within float32 rounding; that error, times the scale, through the softmax.
PROB_ATOL = 5e-6
#: Token sets, as modality lists (one sensor each; repeats are two sensors of one modality).
TOKEN_SETS = (("image",), ("thermal", "audio"), ("event", "tactile", "point_cloud"),
              ("image", "thermal", "event", "tactile", "audio", "point_cloud"),
              ("audio", "audio", "point_cloud"))


def _fusion_data(label_emb: torch.Tensor, n: int = 80) -> FusionData:
    """Per-modality embeddings clustered around the label embeddings (noisy enough that the
    modalities disagree, so fusion has something to learn)."""
    emb, present = {}, {}
    for i, m in enumerate(MODALITY_SLOTS):
        x, labels, _ = clustered(n, label_emb.shape[0], label_emb.shape[1], noise=3.0, seed=i,
                                 centres=label_emb)
        emb[m], present[m] = x, torch.ones(n, dtype=torch.bool)
    return FusionData.build(emb, present, labels, [])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train the tiny bundle's AF head (learned temperature), export it with the scale the
    checkpoint holds; returns the bundle, the trained head, the loss and the label table."""
    root = tmp_path_factory.mktemp("logit_scale")
    models = tiny_models(modalities=("point_cloud",))
    label_emb = models.label_embeddings.float()
    cfg = AFConfig(loop=LoopConfig(epochs=4, batch_size=20),
                   optim=OptimConfig(lr=2e-2, weight_decay=0.0),
                   fusion=FusionConfig.from_dict(models.fusion_config),
                   temperature=0.05, learn_temperature=True)
    torch.manual_seed(0)
    train_fusion(models.fusion, _fusion_data(label_emb), label_emb, cfg, run_dir=root / "af",
                 progress=False)
    ckpt = load_checkpoint(root / "af" / "final")
    loss = AFLoss(temperature=cfg.temperature, learn_temperature=True)
    load_trainable_state(loss, ckpt.weights["loss"])
    scale = checkpoint_logit_scale(ckpt)
    out = export_bundle(root / "bundle", **{**models.export_kwargs(), "logit_scale": scale},
                        exporter=TINY_EXPORTER, include_torch_weights=False)
    return {"bundle": load_bundle(out), "head": models.fusion.eval(), "loss": loss,
            "label_emb": label_emb, "scale": scale, "root": Path(root)}


def test_the_bundle_carries_the_trained_scale(trained):
    with torch.no_grad():
        trainer_scale = float(trained["loss"].logit_scale())
    assert trained["scale"] == trainer_scale
    assert trained["bundle"].logit_scale == trainer_scale  # exact, through bundle.yaml
    # a learned value: neither the initial 1 / 0.05, the default 1 / 0.07 nor 100
    assert not any(np.isclose(trainer_scale, s, rtol=1e-3)
                   for s in (20.0, TINY_LOGIT_SCALE, 100.0)), trainer_scale


def _tokens(label_emb: torch.Tensor, modalities: tuple[str, ...], seed: int) -> np.ndarray:
    x, _, _ = clustered(len(modalities), label_emb.shape[0], label_emb.shape[1], noise=3.0,
                        seed=100 + seed, centres=label_emb)
    return x.numpy().astype(np.float32)


def _trainer_probs(trained: dict, tokens: np.ndarray) -> np.ndarray:
    """The trainer's softmax over all labels: ``AFLoss.logit_scale() * fused @ labels.T``."""
    with torch.no_grad():
        t = torch.from_numpy(tokens)[None]
        fused = trained["head"](t, torch.ones(t.shape[:2], dtype=torch.bool))
        logits = trained["loss"].logit_scale() * fused @ trained["label_emb"].T
        return torch.softmax(logits.double(), dim=-1)[0].numpy()


@pytest.mark.parametrize("index", range(len(TOKEN_SETS)))
def test_runtime_fused_probabilities_equal_the_trainers_softmax(trained, index):
    bundle = trained["bundle"]
    names = list(bundle.label_names)
    modalities = TOKEN_SETS[index]
    tokens = _tokens(trained["label_emb"], modalities, index)
    backend = create_backend("onnxruntime", bundle, threads=1)
    tick = FusionTick(backend.fuse, names, bundle.label_embeddings, bundle.logit_scale,
                      max_age_s=1.0, top_k=len(names))
    # (sensor, modality, stamp in int ns, embedding): every slot fresh at the tick (10.1 s)
    slots = [EmbeddingSlot(f"sensor{i}", m, 10_000_000_000, tokens[i])
             for i, m in enumerate(modalities)]
    result = tick(slots, [s.sensor for s in slots], 10_100_000_000)
    assert result.answered, result.no_answer_reason
    order = [int(s.removeprefix("sensor")) for s in result.sensors]  # the runtime's token order
    expected = _trainer_probs(trained, tokens[order])
    runtime = np.zeros(len(names))
    for label, p in zip(result.top_labels, result.top_scores, strict=True):
        runtime[names.index(label)] = p
    np.testing.assert_allclose(runtime, expected, atol=PROB_ATOL, rtol=0,
                               err_msg="FusionTick's probabilities differ from the trainer's")
    # classify() on the runtime's fused embedding gives the same distribution
    idx, probs = classify(result.embedding, bundle.label_embeddings, bundle.logit_scale,
                          top_k=len(names))
    np.testing.assert_allclose(probs, expected[idx], atol=PROB_ATOL, rtol=0)
    # the check is sharp: the former constant scale of 100 would not pass it
    _, probs_100 = classify(result.embedding, bundle.label_embeddings, 100.0, top_k=len(names))
    assert np.abs(probs_100 - expected[idx]).max() > 100 * PROB_ATOL


def test_a_calibrated_bundle_gives_the_trainers_tempered_confidence(trained, tmp_path):
    """The exported temperature reaches the runtime: the engine's FusionTick reads it from the
    bundle and the confidence is the trainer's softmax at ``logit_scale / T``."""
    from omnibind_ros.core.recognizer import FusionSettings, build_fusion_tick

    models = tiny_models(modalities=("point_cloud",))
    out = export_bundle(tmp_path / "calibrated", **{**models.export_kwargs(),
                                                      "logit_scale": trained["scale"]},
                        exporter=TINY_EXPORTER, include_torch_weights=False, temperature=2.5)
    bundle = load_bundle(out)
    assert bundle.labels.temperature == 2.5
    backend = create_backend("onnxruntime", bundle, threads=1)
    tick = build_fusion_tick(bundle, backend, FusionSettings(unsure_below=0.9),
                             list(bundle.label_names), bundle.label_embeddings)
    assert tick.temperature == 2.5 and tick.unsure_below == 0.9
    tokens = _tokens(torch.from_numpy(bundle.label_embeddings), ("image", "audio"), 7)
    slots = [EmbeddingSlot(f"s{i}", m, 10_000_000_000, tokens[i])
             for i, m in enumerate(("image", "audio"))]
    result = tick(slots, ["s0", "s1"], 10_100_000_000)
    cos = bundle.label_embeddings @ result.embedding / np.linalg.norm(
        bundle.label_embeddings, axis=1)
    logits = trained["scale"] * cos / 2.5
    expected = np.exp(logits - logits.max()).max() / np.exp(logits - logits.max()).sum()
    assert result.confidence == pytest.approx(expected, rel=1e-5)
    assert result.confidence < result.best_score and result.unsure
    # an uncalibrated bundle: the confidence is the best score
    plain = build_fusion_tick(trained["bundle"], create_backend(
        "onnxruntime", trained["bundle"], threads=1), FusionSettings(),
        list(trained["bundle"].label_names), trained["bundle"].label_embeddings)
    assert plain.temperature == 1.0 and trained["bundle"].labels.temperature is None
