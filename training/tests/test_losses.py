"""Every loss against a value computed independently here, with numpy loops, on tiny examples."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from omnibind_train.losses import (
    AFLoss,
    CADLoss,
    ContrastiveLoss,
    af_contrastive_loss,
    cad_cr_loss,
    cad_in_loss,
    cad_se_loss,
    correspondence_kl,
    symmetric_infonce,
)

TAU = 0.5


def _unit(rows: int, dim: int = 4, seed: int = 0) -> torch.Tensor:
    x = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy()


def _info_nce_rows(a: np.ndarray, b: np.ndarray, tau: float) -> float:
    """mean_i -log exp(a_i.b_i / tau) / sum_j exp(a_i.b_j / tau), explicit loops."""
    total = 0.0
    for i in range(len(a)):
        num = math.exp(float(a[i] @ b[i]) / tau)
        den = sum(math.exp(float(a[i] @ b[j]) / tau) for j in range(len(b)))
        total += -math.log(num / den)
    return total / len(a)


def _row_softmax(m: np.ndarray, t: float) -> np.ndarray:
    out = np.zeros_like(m)
    for i in range(m.shape[0]):
        e = [math.exp(v / t) for v in m[i]]
        out[i] = [v / sum(e) for v in e]
    return out


def _kl_sum(p_logits: np.ndarray, q_logits: np.ndarray, t: float = 1.0) -> float:
    p, q = _row_softmax(p_logits, t), _row_softmax(q_logits, t)
    return sum(p[i, j] * math.log(p[i, j] / q[i, j])
               for i in range(p.shape[0]) for j in range(p.shape[1]))


def test_symmetric_infonce_matches_loops():
    a, b = _unit(3, seed=1), _unit(3, seed=2)
    expected = (_info_nce_rows(_np(a), _np(b), TAU) + _info_nce_rows(_np(b), _np(a), TAU)) / 2
    assert symmetric_infonce(a, b, 1 / TAU).item() == pytest.approx(expected, rel=1e-9)


def test_symmetric_infonce_literal_value():
    """Two orthogonal pairs, tau = 1: each row is -log(e / (e + 1)) = log(1 + 1/e)."""
    eye = torch.eye(2, dtype=torch.float64)
    assert symmetric_infonce(eye, eye, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))


def test_contrastive_loss_learns_its_temperature():
    loss_fn = ContrastiveLoss(temperature=0.07)
    a, b = _unit(4, seed=3).float(), _unit(4, seed=4).float()
    out = loss_fn(a, b)
    assert set(out) == {"loss", "contrastive_loss"}
    expected = (_info_nce_rows(_np(a), _np(b), 0.07) + _info_nce_rows(_np(b), _np(a), 0.07)) / 2
    assert out["loss"].item() == pytest.approx(expected, rel=1e-4)
    out["loss"].backward()
    assert loss_fn.logit_scale.log_scale.grad is not None


def test_cad_in_loss_eq2_matches_loops():
    student, text = _unit(4, seed=5), _unit(4, seed=6)
    expected = _info_nce_rows(_np(student), _np(text), TAU)  # one direction, student -> text
    assert cad_in_loss(student, text, 1 / TAU).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("reduction,divide", [("batchmean", 3), ("sum", 1), ("mean", 9)])
def test_correspondence_kl_reductions(reduction, divide):
    p, q = _unit(3, seed=7) @ _unit(3, seed=8).T, _unit(3, seed=9) @ _unit(3, seed=10).T
    expected = _kl_sum(_np(p), _np(q), 0.3) / divide
    got = correspondence_kl(p, q, temperature=0.3, reduction=reduction).item()
    assert got == pytest.approx(expected, rel=1e-9)


def test_cad_cr_loss_eq3_4_matches_loops():
    student, text, image = _unit(3, seed=11), _unit(3, seed=12), _unit(3, seed=13)
    s, t, v = _np(student), _np(text), _np(image)
    teacher = np.array([[t[i] @ v[j] for j in range(3)] for i in range(3)])  # D_t^r = E_l E_v^T
    student_m = np.array([[t[i] @ s[j] for j in range(3)] for i in range(3)])  # E_l E_t^T
    expected = _kl_sum(teacher, student_m) / 3
    assert cad_cr_loss(student, text, image).item() == pytest.approx(expected, rel=1e-9)
    # A student that reproduces the image embeddings matches the teacher exactly.
    assert cad_cr_loss(image, text, image).item() == pytest.approx(0.0, abs=1e-12)


def test_cad_se_loss_eq5_6_matches_loops():
    student, text, image = _unit(3, seed=14), _unit(3, seed=15), _unit(3, seed=16)
    s, t, v = _np(student), _np(text), _np(image)
    gram = lambda x: np.array([[x[i] @ x[j] for j in range(3)] for i in range(3)])  # noqa: E731
    expected = _kl_sum((gram(v) + gram(t)) / 2, gram(s)) / 3
    assert cad_se_loss(student, text, image).item() == pytest.approx(expected, rel=1e-9)
    text_only = _kl_sum(gram(t), gram(s)) / 3  # the appendix code's variant
    assert cad_se_loss(student, text, None).item() == pytest.approx(text_only, rel=1e-9)


def test_cad_total_defaults_to_eq7():
    """Default weighting ``paper_eq7``: L_in + L_cr + L_se, each a per-sample mean (the
    appendix code's weighting is checked in test_cad_weighting.py)."""
    student, text, image = _unit(4, seed=17), _unit(4, seed=18), _unit(4, seed=19)
    s, t, v = _np(student), _np(text), _np(image)
    l_in = _info_nce_rows(s, t, 0.07)
    l_cr = _kl_sum(t @ v.T, t @ s.T) / 4
    l_se = _kl_sum((v @ v.T + t @ t.T) / 2, s @ s.T) / 4
    out = CADLoss().double()(student, text, image)
    assert set(out) == {"loss", "in_loss", "cr_loss", "se_loss"}
    assert out["in_loss"].item() == pytest.approx(l_in, rel=1e-6)
    assert out["cr_loss"].item() == pytest.approx(l_cr, rel=1e-9)
    assert out["se_loss"].item() == pytest.approx(l_se, rel=1e-9)
    assert out["loss"].item() == pytest.approx(l_in + l_cr + l_se, rel=1e-6)
    printed = CADLoss.as_printed().double()(student, text, image)["loss"].item()
    assert printed == pytest.approx(l_in + l_cr + l_se, rel=1e-6)


@pytest.mark.parametrize("with_image", [True, False])
def test_cad_gradients_reach_only_the_student(with_image):
    """The teachers are frozen: even teacher embeddings that require grad (e.g. computed by a
    module in train mode) get none, while the student gets a non-zero gradient."""
    student = _unit(4, seed=20).float().requires_grad_(True)
    text = _unit(4, seed=21).float().requires_grad_(True)
    image = _unit(4, seed=22).float().requires_grad_(True) if with_image else None
    loss = CADLoss(learn_temperature=True)
    loss(student, text, image)["loss"].backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert loss.logit_scale.log_scale.grad is not None  # the loss's own parameter trains too
    assert text.grad is None, "a gradient reached the text teacher"
    if image is not None:
        assert image.grad is None, "a gradient reached the image teacher"


def test_af_loss_eq9_literal_value():
    """E_m = E_pos = e1, one negative e2, tau = 1: -log(e / (e + 1))."""
    fused = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    pos = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    neg = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    got = af_contrastive_loss(fused, pos, neg, logit_scale=1.0).item()
    assert got == pytest.approx(math.log(1 + math.exp(-1)))


def test_af_loss_eq9_with_padded_negatives_matches_loops():
    fused, pos = _unit(3, seed=23), _unit(3, seed=24)
    negs = torch.stack([_unit(2, seed=25 + i) for i in range(3)])  # [B=3, M=2, D]
    mask = torch.tensor([[True, True], [True, False], [False, False]])
    f, p, n = _np(fused), _np(pos), _np(negs)
    expected = 0.0
    for i in range(3):
        num = math.exp(f[i] @ p[i] / TAU)
        den = num + sum(math.exp(f[i] @ n[i, j] / TAU) for j in range(2) if mask[i, j])
        expected += -math.log(num / den)
    got = af_contrastive_loss(fused, pos, negs, mask, logit_scale=1 / TAU).item()
    assert got == pytest.approx(expected / 3, rel=1e-9)


def test_af_loss_from_label_table_matches_loops():
    fused, labels = _unit(2, seed=30), _unit(4, seed=31)
    targets = torch.tensor([1, 3])
    negatives = torch.tensor([[True, True, False, False],  # the target (1) must be ignored
                              [False, False, True, False]])
    f, lab = _np(fused), _np(labels)
    expected = 0.0
    for i, (target, negs) in enumerate([(1, [0]), (3, [2])]):
        num = math.exp(f[i] @ lab[target] / TAU)
        den = num + sum(math.exp(f[i] @ lab[j] / TAU) for j in negs)
        expected += -math.log(num / den)
    out = AFLoss(temperature=TAU).double()(fused, labels, targets, negatives)
    assert set(out) == {"loss", "af_loss"}
    assert out["loss"].item() == pytest.approx(expected / 2, rel=1e-9)
