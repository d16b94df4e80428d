"""UniAlign's losses (Eq. 10-16) against arithmetic written out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from omnibind_train.unialign.losses import (
    anchor_distillation_loss,
    feature_alignment_loss,
    kl_rows,
    model_distillation_loss,
    similarity,
    soft_binding_loss,
    unialign_loss,
)


def test_similarity_is_eq_10_by_hand():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    e1, e0 = math.exp(1.0), math.exp(0.0)
    assert similarity(a, b).tolist()[0] == pytest.approx([e1 / (e1 + e0), e0 / (e1 + e0)])
    # a temperature sharpens it
    e2 = math.exp(2.0)
    assert similarity(a, b, tau=0.5)[0, 0].item() == pytest.approx(e2 / (e2 + 1))


def test_kl_directions_by_hand_and_zero_on_equal():
    p = torch.tensor([[0.5, 0.5]])
    q = torch.tensor([[0.9, 0.1]])
    paper = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    code = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert kl_rows(p, q).item() == pytest.approx(paper)
    assert kl_rows(p, q, "code").item() == pytest.approx(code)
    assert kl_rows(q, q).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="direction"):
        kl_rows(p, q, "sideways")


def test_soft_binding_is_zero_when_samples_sit_on_their_label_text():
    torch.manual_seed(0)
    y1, y2 = torch.randn(3, 4), torch.randn(5, 4)
    labels1, labels2 = torch.tensor([0, 2, 1]), torch.tensor([4, 0])
    loss = soft_binding_loss(y1[labels1], labels1, y1, y2[labels2], labels2, y2)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # a sample away from its label text pays, and the gradient moves it back
    x1 = (y1[labels1] + torch.randn(3, 4)).requires_grad_()
    loss = soft_binding_loss(x1, labels1, y1, y2[labels2], labels2, y2)
    assert loss.item() > 0.01
    loss.backward()
    assert x1.grad is not None and x1.grad.abs().sum() > 0


def test_soft_binding_first_term_by_hand():
    y1 = torch.tensor([[1.0, 0.0]])
    y2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x1 = torch.tensor([[0.0, 1.0]])
    # term 1: KL(S(x1, y2) || S(y1_0, y2)); term 2 with x2 = y2 rows on themselves: teacher
    # S(y2_j, y1) has one column = 1, as has the student's: 0
    s = [math.exp(0) / (1 + math.e), math.e / (1 + math.e)]
    t = [math.e / (1 + math.e), 1 / (1 + math.e)]
    expected = sum(si * math.log(si / ti) for si, ti in zip(s, t, strict=True))
    got = soft_binding_loss(x1, torch.tensor([0]), y1, y2, torch.tensor([0, 1]), y2)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_anchor_distillation_zero_when_the_sample_equals_its_anchor():
    torch.manual_seed(1)
    t, i = torch.randn(4, 6), torch.randn(4, 6)
    # S(P, T) == S(I, T) exactly; the second term S(P, I) vs S(T, I) is not zero in general
    first_only = kl_rows(similarity(i, t), similarity(i, t))
    assert first_only.item() == pytest.approx(0.0, abs=1e-7)
    assert anchor_distillation_loss(i, t, i).item() > 0


def test_feature_alignment_and_model_distillation_weighting():
    s, t = torch.zeros(2, 3), torch.ones(2, 3)
    assert feature_alignment_loss(s, t).item() == pytest.approx(3.0)
    e = torch.randn(2, 4)
    total = model_distillation_loss(s, t, e, e, e, e, lam=2000.0)
    assert total.item() == pytest.approx(6000.0, rel=1e-6)  # modal term is 0: same structure


def test_total_loss_eq_16_skips_absent_terms():
    one = torch.tensor(1.0)
    assert unialign_loss(one).item() == 1.0
    assert unialign_loss(one, one, None, one, alphas=(2.0, 5.0, 3.0)).item() == 6.0
