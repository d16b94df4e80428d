"""Calibrated confidence: temperature fitting, reliability bins/ECE, and the fusion tick's
``confidence`` / ``unsure``."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnibind_ros.core.calibration import fit_temperature, reliability, softmax
from omnibind_ros.core.fusion import EmbeddingSlot, FusionTick


def _synthetic_logits(true_temperature: float, n: int = 4000, classes: int = 10,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / true_temperature): a model that is
    exactly calibrated at that temperature."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, (n, classes))
    probs = softmax(logits, true_temperature)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_generating_temperature(true_t):
    logits, labels = _synthetic_logits(true_t)
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.1)


def test_temperature_fixes_an_overconfident_model():
    logits, labels = _synthetic_logits(2.0, seed=1)
    raw = softmax(logits)
    t = fit_temperature(logits, labels)
    calibrated = softmax(logits, t)
    correct = raw.argmax(1) == labels
    assert (calibrated.argmax(1) == raw.argmax(1)).all()  # the answer never changes
    before = reliability(raw.max(1), correct).ece
    after = reliability(calibrated.max(1), correct).ece
    assert before > 0.1 and after < 0.03


def test_reliability_bins_by_hand():
    conf = np.array([0.05, 0.95, 0.95, 1.0, 0.55])
    correct = np.array([False, True, False, True, True])
    rel = reliability(conf, correct, n_bins=10)
    assert rel.counts.tolist() == [1, 0, 0, 0, 0, 1, 0, 0, 0, 3]
    assert rel.accuracy[9] == pytest.approx(2 / 3) and rel.confidence[9] == pytest.approx(
        (0.95 + 0.95 + 1.0) / 3)
    expected = (1 * 0.05 + 1 * 0.45 + 3 * abs(2 / 3 - 2.9 / 3)) / 5
    assert rel.ece == pytest.approx(expected)
    assert rel.mce == pytest.approx(0.45)
    d = rel.to_dict()
    assert d["n"] == 5 and d["bin_accuracy"][1] is None


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=1, max_size=200),
       st.integers(1, 30))
def test_ece_is_a_weighted_gap_between_zero_and_one(pairs, bins):
    conf, correct = map(np.array, zip(*pairs, strict=True))
    rel = reliability(conf, correct, bins)
    assert 0.0 <= rel.ece <= rel.mce + 1e-12 <= 1.0 + 1e-12
    assert rel.n == len(pairs)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        reliability(np.array([1.5]), np.array([True]))
    with pytest.raises(ValueError, match="same length"):
        reliability(np.array([0.5, 0.2]), np.array([True]))
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(np.zeros((3, 4)), np.array([0, 1, 4]))
    with pytest.raises(ValueError, match="temperature"):
        softmax(np.zeros((1, 2)), 0.0)


def _tick(temperature: float = 1.0, unsure_below: float = 0.0) -> FusionTick:
    labels = np.eye(4, dtype=np.float32)
    return FusionTick(lambda tokens, mask: tokens[:, 0], ["a", "b", "c", "d"], labels, 10.0,
                      max_age_s=1.0, temperature=temperature, unsure_below=unsure_below)


def _slot(vec) -> EmbeddingSlot:
    return EmbeddingSlot("cam", "image", 1_000, np.asarray(vec, dtype=np.float32))


def test_uncalibrated_confidence_is_the_best_score():
    result = _tick().tick([_slot([1.0, 0.3, 0.0, 0.0])], ["cam"], 2_000)
    assert result.best_label == "a" and result.confidence == result.best_score
    assert not result.unsure


def test_temperature_changes_confidence_not_the_answer_or_scores():
    slot = _slot([1.0, 0.6, 0.0, 0.0])
    plain = _tick().tick([slot], ["cam"], 2_000)
    hot = _tick(temperature=3.0).tick([slot], ["cam"], 2_000)
    assert hot.top_labels == plain.top_labels and hot.top_scores == plain.top_scores
    cos = np.array([1.0, 0.6, 0.0, 0.0]) / np.linalg.norm([1.0, 0.6])
    assert hot.confidence == pytest.approx(softmax(10.0 * cos, 3.0).max(), rel=1e-6)
    assert hot.confidence < plain.confidence


def test_unsure_below_threshold_keeps_the_label():
    result = _tick(temperature=3.0, unsure_below=0.5).tick(
        [_slot([1.0, 0.9, 0.8, 0.0])], ["cam"], 2_000)
    assert result.confidence < 0.5 and result.unsure and result.best_label == "a"
    sure = _tick(unsure_below=0.5).tick([_slot([1.0, 0.0, 0.0, 0.0])], ["cam"], 2_000)
    assert sure.confidence > 0.5 and not sure.unsure
    empty = _tick(unsure_below=0.5).tick([], ["cam"], 2_000)
    assert not empty.answered and empty.confidence == 0.0 and not empty.unsure


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"temperature": float("nan")},
                                    {"unsure_below": 1.5}])
def test_tick_refuses_bad_calibration_settings(kwargs):
    with pytest.raises(ValueError):
        _tick(**kwargs)
