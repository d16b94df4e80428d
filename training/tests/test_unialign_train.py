"""UniAlign training: modality-aware gradient accumulation equals one backward through the joint
batch; Eq. 16's terms switch on and off as configured; a tiny synthetic task is learned well
above chance; a checkpointed run resumes to the same weights as an uninterrupted one."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_unialign_model import SHAPES, tiny_model

from omnibind_train.unialign.train import (
    LossConfig,
    ModalitySet,
    TrainConfig,
    accumulate_step,
    batch_loss,
    train_unialign,
)

MODS = ("thermal", "audio", "point_cloud")


def synthetic_sets(n: int = 48, seed: int = 0, labels_per_mod: int = 3
                   ) -> dict[str, ModalitySet]:
    """Class-dependent inputs per modality (a bright quadrant / band / blob per class), label
    texts and anchors that are random unit vectors, teacher features for two modalities."""
    g = torch.Generator().manual_seed(seed)
    sets = {}
    for m in MODS:
        y = torch.randint(0, labels_per_mod, (n,), generator=g)
        x = 0.3 * torch.randn(n, *SHAPES[m], generator=g)
        for i, c in enumerate(y.tolist()):
            if m == "point_cloud":
                x[i, : 16 * (c + 1), c] += 2.0
            elif m == "audio":
                x[i, 0, 8 * c:8 * c + 8] += 2.0
            else:
                x[i, :, 16 * (c // 2):16 * (c // 2) + 16, 16 * (c % 2):16 * (c % 2) + 16] += 2.0
        text = torch.nn.functional.normalize(torch.randn(labels_per_mod, 16, generator=g), dim=-1)
        anchor = torch.nn.functional.normalize(text[y] + 0.3 * torch.randn(n, 16, generator=g),
                                               dim=-1)
        teacher = teacher_text = None
        if m in ("thermal", "point_cloud"):
            d = 10 if m == "thermal" else 6
            teacher_text = torch.nn.functional.normalize(torch.randn(labels_per_mod, d,
                                                                     generator=g), dim=-1)
            teacher = torch.nn.functional.normalize(teacher_text[y] + 0.2 * torch.randn(
                n, d, generator=g), dim=-1)
        sets[m] = ModalitySet(x, y, text, anchor, teacher, teacher_text)
    return sets


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_modality_aware_accumulation_equals_the_joint_batch() -> None:
    sets = synthetic_sets()
    batch = {m: s.take(torch.arange(12), torch.device("cpu")) for m, s in sets.items()}
    cfg = LossConfig()
    grads = {}
    for how in ("joint", "modality"):
        model = tiny_model().eval()          # eval: BatchNorm uses running stats in both passes
        model.zero_grad(set_to_none=True)
        parts = accumulate_step(model, batch, cfg, how)
        grads[how] = _grads(model)
        assert {"nce", "soft_bind", "anch_distil", "model_distil"} <= set(parts)
    assert set(grads["joint"]) == set(grads["modality"]) and grads["joint"]
    for name, g in grads["joint"].items():
        torch.testing.assert_close(grads["modality"][name], g, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, n=name: f"{n}: {m}")
    assert "logit_scale" in grads["joint"]


def test_terms_follow_the_config() -> None:
    sets = synthetic_sets()
    model = tiny_model().eval()
    batch = {m: s.take(torch.arange(8), torch.device("cpu")) for m, s in sets.items()}
    with torch.no_grad():
        outs = {m: model.outputs(m, b.x) for m, b in batch.items()}
    total, parts = batch_loss(batch, outs, model.logit_scale, LossConfig())
    expected = parts["nce"] + parts["soft_bind"] + parts["anch_distil"] + parts["model_distil"]
    assert total.item() == pytest.approx(expected, rel=1e-5)
    nce_only = LossConfig(soft_bind=False, anchor_distil=False, model_distil=False)
    total2, parts2 = batch_loss(batch, outs, model.logit_scale, nce_only)
    assert set(parts2) == {"loss", "nce"} and total2.item() == pytest.approx(parts["nce"])
    # lambda / ref_dim: doubling ref_dim halves the feature term only
    _, half = batch_loss(batch, outs, model.logit_scale, LossConfig(feat_ref_dim=1024))
    assert half["model_distil"] < parts["model_distil"]


def _accuracy(model, sets: dict[str, ModalitySet]) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        return {m: float(((model.embed(m, s.x) @ s.label_text.T).argmax(1) == s.labels)
                         .float().mean()) for m, s in sets.items()}


def test_tiny_synthetic_task_is_learned_above_chance() -> None:
    train, test = synthetic_sets(seed=0), synthetic_sets(seed=0)
    # the test split: same label texts and teachers, fresh inputs
    fresh = synthetic_sets(seed=0, n=96)
    for m in MODS:
        test[m] = ModalitySet(fresh[m].x[48:], fresh[m].labels[48:], train[m].label_text,
                              fresh[m].anchor[48:])
    model = tiny_model()
    before = _accuracy(model, test)
    cfg = TrainConfig.from_dict({"epochs": 25, "batch_per_modality": 16,
                                 "optim": {"lr": 3e-3, "warmup_frac": 0.05}})
    curves = train_unialign(model, train, cfg, LossConfig(), seed=0)
    after = _accuracy(model, test)
    assert np.mean(curves["loss"][-5:]) < 0.7 * np.mean(curves["loss"][:5])
    for m in MODS:
        assert after[m] >= 0.6, (m, before[m], after[m])      # chance: 1/3


class _Killed(RuntimeError):
    pass


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, monkeypatch) -> None:
    from omnibind_train.binding.train_binding import TrainingState

    sets = synthetic_sets()
    cfg = TrainConfig.from_dict({"epochs": 4, "batch_per_modality": 16, "checkpoint_every": 3})
    full = tiny_model()
    train_unialign(full, sets, cfg, LossConfig(), seed=1)
    state = tmp_path / "run.state"
    save = TrainingState.maybe_save

    def save_then_die(self, step: int, total: int) -> None:
        save(self, step, total)
        if step == 6:
            raise _Killed

    monkeypatch.setattr(TrainingState, "maybe_save", save_then_die)
    with pytest.raises(_Killed):
        train_unialign(tiny_model(), sets, cfg, LossConfig(), seed=1, state_path=state)
    monkeypatch.setattr(TrainingState, "maybe_save", save)
    assert torch.load(state, weights_only=True)["step"] == 6
    resumed = tiny_model()          # a new process: fresh weights, resumed from step 6
    curves = train_unialign(resumed, sets, cfg, LossConfig(), seed=1, state_path=state)
    assert len(curves["loss"]) == 12
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(),
                                 strict=True):
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: n)
