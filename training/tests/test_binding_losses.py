"""Binding losses (seed 001 Eq. 2, 5, 6, 7) against arithmetic written out by hand with math.log /
math.exp (no torch loss function is used to compute an expected value)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from omnibind_train.binding.losses import (
    BINDING_TEMPERATURE,
    decoupling_loss,
    info_nce,
    overall_alignment_loss,
    router_loss,
)

MODALITIES = ("image", "text", "audio", "point_cloud", "thermal", "event", "tactile")


def _log_softmax_diag(sim: list[list[float]], tau: float) -> list[float]:
    """log softmax_j(sim[i][j] / tau) at j = i, for every row i, in plain Python."""
    out = []
    for i, row in enumerate(sim):
        denom = sum(math.exp(v / tau) for v in row)
        out.append(sim[i][i] / tau - math.log(denom))
    return out


def _info_nce_by_hand(x: list[list[float]], y: list[list[float]], tau: float) -> float:
    """Eq. 2: -(1/N) sum_i [log softmax_j(x_i.y_j/tau)_i + log softmax_j(y_i.x_j/tau)_i]."""
    dot = [[sum(a * b for a, b in zip(xi, yj, strict=True)) for yj in y] for xi in x]
    dot_t = [[dot[j][i] for j in range(len(x))] for i in range(len(y))]
    n = len(x)
    return -(sum(_log_softmax_diag(dot, tau)) + sum(_log_softmax_diag(dot_t, tau))) / n


def test_info_nce_2x2_matches_the_equation_written_out() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    tau = 0.5
    # similarities s[i][j] = x_i . y_j: [[0.6, 0.0], [0.8, 1.0]], divided by tau = 0.5
    x_to_y = -(math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(0.0)))
               + math.log(math.exp(2.0) / (math.exp(1.6) + math.exp(2.0))))
    # the other direction reads the columns: y_0 against (x_0, x_1) = (1.2, 1.6), y_1: (0, 2)
    y_to_x = -(math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(1.6)))
               + math.log(math.exp(2.0) / (math.exp(0.0) + math.exp(2.0))))
    expected = (x_to_y + y_to_x) / 2  # 1/N with N = 2, the two directions summed
    got = info_nce(x, y, tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the directions are summed, not averaged as CLIP's code does (that would be half)
    clip_style = (x_to_y + y_to_x) / 2 / 2
    assert abs(got.item() - clip_style) > 0.1


def test_info_nce_3x2_and_symmetry() -> None:
    x = F.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0], [-1.0, 0.5]]), dim=-1)
    y = F.normalize(torch.tensor([[0.9, 0.1], [0.1, 0.8], [-0.7, 0.9]]), dim=-1)
    tau = 0.1
    expected = _info_nce_by_hand(x.tolist(), y.tolist(), tau)
    assert info_nce(x, y, tau).item() == pytest.approx(expected, rel=1e-5)
    assert info_nce(y, x, tau).item() == pytest.approx(expected, rel=1e-5)
    # default temperature is the paper's 0.03
    assert BINDING_TEMPERATURE == 0.03
    assert info_nce(x, y).item() == pytest.approx(
        _info_nce_by_hand(x.tolist(), y.tolist(), 0.03), rel=1e-3, abs=1e-6)


def test_info_nce_perfect_pairs_and_shape_errors() -> None:
    x = torch.eye(3)
    # each row: log(e^{1/tau} / (e^{1/tau} + 2)), both directions, mean over rows
    tau = 0.25
    per_row = -math.log(math.exp(4.0) / (math.exp(4.0) + 2.0))
    assert info_nce(x, x, tau).item() == pytest.approx(2 * per_row, rel=1e-6)
    with pytest.raises(ValueError, match="shape"):
        info_nce(torch.zeros(3, 2), torch.zeros(2, 2))


def test_decoupling_loss_by_hand_with_and_without_mask() -> None:
    p = torch.tensor([[0.9, 0.2, 0.5], [0.3, 0.6, 0.1]])
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])

    def bce(pv: float, yv: float) -> float:
        return -(yv * math.log(pv) + (1 - yv) * math.log(1 - pv))

    row0 = bce(0.9, 1) + bce(0.2, 0) + bce(0.5, 0)
    row1 = bce(0.3, 0) + bce(0.6, 1) + bce(0.1, 1)
    assert decoupling_loss(p, y).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    mask = torch.tensor([True, False, True])
    masked = ((bce(0.9, 1) + bce(0.5, 0)) + (bce(0.3, 0) + bce(0.1, 1))) / 2
    assert decoupling_loss(p, y, mask).item() == pytest.approx(masked, rel=1e-6)
    # a saturated gate is clamped, not infinite
    hard = decoupling_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]))
    assert torch.isfinite(hard) and hard.item() == pytest.approx(-2 * math.log(1e-6), rel=1e-3)


def test_overall_alignment_sums_all_21_pairs_and_mean_divides() -> None:
    gen = torch.Generator().manual_seed(0)
    emb = {m: F.normalize(torch.randn(5, 8, generator=gen), dim=-1) for m in MODALITIES}
    pairs = list(itertools.combinations(MODALITIES, 2))
    assert len(pairs) == 21
    by_hand = sum(_info_nce_by_hand(emb[a].tolist(), emb[b].tolist(), 0.1) for a, b in pairs)
    total = overall_alignment_loss(emb, 0.1)
    assert total.item() == pytest.approx(by_hand, rel=1e-5)
    mean = overall_alignment_loss(emb, 0.1, reduction="mean")
    assert mean.item() == pytest.approx(by_hand / 21, rel=1e-5)
    # given pairs: only those
    some = [("image", "text"), ("audio", "tactile")]
    expected = sum(_info_nce_by_hand(emb[a].tolist(), emb[b].tolist(), 0.1) for a, b in some)
    assert overall_alignment_loss(emb, 0.1, pairs=some).item() == pytest.approx(expected,
                                                                                rel=1e-5)
    assert overall_alignment_loss(emb, 0.1, pairs=some, reduction="mean").item() == \
        pytest.approx(expected / 2, rel=1e-5)


def test_overall_alignment_rejects_bad_input() -> None:
    emb = {"image": torch.eye(2), "text": torch.eye(2)}
    with pytest.raises(ValueError, match="reduction"):
        overall_alignment_loss(emb, reduction="max")
    with pytest.raises(ValueError, match="two modalities"):
        overall_alignment_loss({"image": torch.eye(2)})


def test_router_loss_eq7() -> None:
    align, dec = torch.tensor(2.5), torch.tensor(0.4)
    assert router_loss(align, dec).item() == pytest.approx(2.5 + 3.0 * 0.4)
    assert router_loss(align, dec, lam=0.5).item() == pytest.approx(2.5 + 0.5 * 0.4)
    assert router_loss(align, None).item() == pytest.approx(2.5)


def test_losses_are_differentiable() -> None:
    x = F.normalize(torch.randn(4, 6), dim=-1).requires_grad_(True)
    y = F.normalize(torch.randn(4, 6), dim=-1)
    gate = torch.rand(4, 3).clamp(0.05, 0.95).requires_grad_(True)
    loss = router_loss(overall_alignment_loss({"a": x, "b": y}),
                       decoupling_loss(gate, torch.eye(3)[torch.tensor([0, 1, 2, 0])]))
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert gate.grad is not None and gate.grad.abs().sum() > 0
