"""The fused answers' confidence calibration: logits of every (sample, subset) pair, the fitted
temperature, its report section and plot, and the temperature carried into the bundle manifest."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _tiny import clustered

from omnibind_train.evaluation import write_report
from omnibind_train.evaluation.calibration import calibration_report, fused_logits
from omnibind_train.export.plan import _check_temperature
from omnibind_train.models.fusion import FusionConfig

D, C, N = 16, 6, 90
MODS = ("image", "audio", "point_cloud")


def _split(seed: int, noise: float = 2.5):
    embeddings, labels, centres = {}, None, None
    gen_centres = clustered(1, C, D, seed=99)[2]
    for i, m in enumerate(MODS):
        x, labels, centres = clustered(N, C, D, noise=noise, seed=seed * 10 + i,
                                       centres=gen_centres)
        embeddings[m] = x
    return embeddings, labels, centres


def test_fused_logits_are_the_scaled_cosines_of_every_subset_pair():
    emb, labels, centres = _split(0)
    present = {"audio": torch.arange(N) % 3 != 0}  # a third of the audio inputs failed
    head = FusionConfig(kind="mean", dim=D).build().eval()
    out = fused_logits(head, emb, labels, centres, 7.0, MODS, present=present)
    # every subset of the 3 modalities, minus the pairs left with no input (audio alone, failed)
    assert out.logits.shape == (7 * N - N // 3, C)
    assert sorted(set(out.sizes.tolist())) == [1, 2, 3]
    # spot-check one pair: image+point_cloud of sample 5 is their normalised mean
    fused = F.normalize(emb["image"][5] + emb["point_cloud"][5], dim=0)
    expected = 7.0 * (fused @ F.normalize(centres, dim=-1).T)
    rows = np.where((out.sizes == 2) & (out.labels == labels[5].item()))[0]
    assert any(np.allclose(out.logits[r], expected.numpy(), atol=1e-5) for r in rows)


def test_calibration_report_fixes_an_overconfident_scale(tmp_path: Path):
    head = FusionConfig(kind="mean", dim=D).build().eval()
    fit_emb, fit_labels, centres = _split(1)
    test_emb, test_labels, _ = _split(2)
    # scale 60 on noisy clusters: the model's softmax claims far more than it gets right
    fit = fused_logits(head, fit_emb, fit_labels, centres, 60.0, MODS)
    test = fused_logits(head, test_emb, test_labels, centres, 60.0, MODS)
    cal = calibration_report(fit, test)
    assert cal["temperature"] > 1.5
    assert cal["before"]["mean_confidence"] > cal["before"]["accuracy"] + 0.1
    assert cal["after"]["ece"] < 0.5 * cal["before"]["ece"]
    assert set(cal["by_size"]) == {1, 2, 3}
    assert sum(v["pairs"] for v in cal["by_size"].values()) == cal["test_pairs"] == 7 * N
    paths = write_report({"calibration": cal}, tmp_path / "eval")
    assert paths["calibration"].read_bytes().startswith(b"\x89PNG")
    md = paths["report"].read_text()
    assert "## Confidence calibration (AF)" in md and f"T = {cal['temperature']:.4g}" in md
    assert "| 3 | " in md  # the per-size table


@pytest.mark.parametrize("value,ok", [(None, True), (1.7, True), (0.0, False),
                                      (float("inf"), False), (True, False), ("2", False)])
def test_export_checks_the_temperature(value, ok):
    if ok:
        assert _check_temperature(value) == value
    else:
        with pytest.raises(ValueError, match="temperature"):
            _check_temperature(value)


def test_subset_order_matches_the_combination_tables():
    """The pairs are the evaluation's: every non-empty subset, by size (itertools order)."""
    from omnibind_train.evaluation.metrics import enumerate_subsets

    expected = [c for k in (1, 2, 3) for c in itertools.combinations(MODS, k)]
    assert enumerate_subsets(list(MODS)) == expected
