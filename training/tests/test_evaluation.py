"""Evaluation tables against answers known by construction or computed by hand."""
from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from omnibind_train.evaluation import (
    CAD_VARIANTS,
    add_embedding_noise,
    aggregate_subsets,
    enumerate_subsets,
    evaluate_combinations,
    expected_shape,
    format_summary,
    replace_with_random,
    robustness_sweep,
    to_jsonable,
    write_report,
    zero_shot_accuracy,
)
from omnibind_train.models import (
    MODALITY_SLOTS,
    AdaptiveFusion,
    ConcatFusion,
    LinearFusion,
    MeanFusion,
)

C, D = 8, 16


def _world(n: int = 400, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor,
                                                  torch.Tensor]:
    """Labels, one-hot label embeddings; image = its label (+ small noise), audio = pure noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (n,), generator=gen)
    label_emb = torch.eye(C, D)
    image = F.normalize(label_emb[labels] + 0.05 * torch.randn(n, D, generator=gen), dim=-1)
    audio = F.normalize(torch.randn(n, D, generator=gen), dim=-1)
    return {"image": image, "audio": audio}, labels, label_emb


def _heads(dim: int) -> dict[str, torch.nn.Module]:
    return {"af": AdaptiveFusion(dim=dim, num_heads=1), "mean": MeanFusion(),
            "linear": LinearFusion(dim=dim), "concat": ConcatFusion(dim=dim)}


def _toy() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """4 samples, 3 classes, D = 3; accuracies worked out by hand in the tests."""
    label_emb = torch.eye(3)
    labels = torch.tensor([0, 1, 2, 0])
    image = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0.8, 0, 0.6], [0, 0.6, 0.8]])
    text = torch.tensor([[0.6, 0.8, 0], [0, 0.6, 0.8], [0, 0, 1.0], [1.0, 0, 0]])
    return {"image": image, "text": text}, labels, label_emb


# --- subsets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", range(1, 8))
def test_subset_count_and_size_grouping(k):
    subsets = enumerate_subsets(list(MODALITY_SLOTS[:k]))
    assert len(subsets) == 2**k - 1 == len(set(subsets))
    assert Counter(len(s) for s in subsets) == {j: math.comb(k, j) for j in range(1, k + 1)}
    assert [len(s) for s in subsets] == sorted(len(s) for s in subsets)


def test_subsets_follow_slot_order_and_reject_unknown_names():
    subsets = enumerate_subsets(["point_cloud", "image", "text"])
    assert subsets[:3] == [("image",), ("text",), ("point_cloud",)]
    assert subsets[-1] == ("image", "text", "point_cloud")
    with pytest.raises(ValueError, match="no slot"):
        enumerate_subsets(["image", "sonar"])
    with pytest.raises(ValueError, match="duplicate"):
        enumerate_subsets(["image", "image"])


# --- accuracy -----------------------------------------------------------------------------------


def test_zero_shot_informative_modality_is_perfect_and_noise_is_chance():
    emb, labels, label_emb = _world(n=2000)
    acc = zero_shot_accuracy(emb, labels, label_emb)
    assert list(acc) == ["image", "audio"]  # slot order, not insertion order
    assert acc["image"] == 1.0
    assert abs(acc["audio"] - 1 / C) < 0.03


def test_toy_case_by_hand_for_every_head():
    emb, labels, label_emb = _toy()
    res = evaluate_combinations(emb, labels, label_emb, _heads(3), ["text", "image"])
    assert list(res["subsets"]) == ["image", "text", "image+text"]
    # image predicts 0, 1, 0, 2 -> right on samples 0, 1; text predicts 1, 2, 2, 0 -> 2, 3.
    # mean(image, text) = [1.6 .8 0], [0 1.6 .8], [.8 0 1.6], [1 .6 .8] -> 0, 1, 2, 0: all right.
    # Untrained linear / concat / zero-init AF all equal the mean.
    for head in ("af", "mean", "linear", "concat"):
        assert res["subsets"]["image"]["top1"][head] == 0.5
        assert res["subsets"]["text"]["top1"][head] == 0.5
        assert res["subsets"]["image+text"]["top1"][head] == 1.0
        assert res["subsets"]["image+text"]["top5"][head] == 1.0  # k clipped to C = 3
        assert res["by_size"]["top1"][head] == {"1": 0.5, "2": 1.0}
        assert res["avg_ge2"]["top1"][head] == 1.0
        assert res["avg_all"]["top1"][head] == pytest.approx(2 / 3)
    assert res["top_k"] == {"top1": 1, "top5": 3}
    assert res["deltas"] == {"af_minus_mean": 0.0, "af_minus_linear": 0.0,
                             "af_minus_concat": 0.0}


def test_linear_head_sees_each_modality_in_its_own_slot():
    emb, labels, label_emb = _toy()
    heads = {"linear": LinearFusion(dim=3)}
    with torch.no_grad():  # all weight on the text slot: image+text must behave like text
        heads["linear"].slot_logits[MODALITY_SLOTS.index("text")] = 20.0
    res = evaluate_combinations(emb, labels, label_emb, heads, ["image", "text"])
    assert res["subsets"]["image+text"]["top1"]["linear"] == 0.5
    assert "deltas" in res and res["deltas"] == {}  # no AF head, no deltas


def test_mean_fusion_matches_a_hand_computed_mean_and_aggregates_by_size():
    emb, labels, label_emb = _world(n=300)
    emb["text"] = F.normalize(emb["image"] + 0.8 * emb["audio"].roll(1, dims=1), dim=-1)
    res = evaluate_combinations(emb, labels, label_emb, {"mean": MeanFusion()},
                                ["image", "text", "audio"])
    zs = zero_shot_accuracy(emb, labels, label_emb)
    for m in ("image", "text", "audio"):
        assert res["subsets"][m]["top1"]["mean"] == pytest.approx(zs[m])
    by_hand = F.normalize(emb["image"] + emb["audio"], dim=-1) @ label_emb.T
    expected = (by_hand.argmax(-1) == labels).float().mean().item()
    assert res["subsets"]["image+audio"]["top1"]["mean"] == pytest.approx(expected)
    top5 = (by_hand.topk(5).indices == labels[:, None]).any(-1).float().mean().item()
    assert res["subsets"]["image+audio"]["top5"]["mean"] == pytest.approx(top5)
    pairs = [res["subsets"][k]["top1"]["mean"] for k in ("image+text", "image+audio",
                                                          "text+audio")]
    assert res["by_size"]["top1"]["mean"]["2"] == pytest.approx(sum(pairs) / 3)
    assert len(res["subsets"]) == 7
    ge2 = pairs + [res["subsets"]["image+text+audio"]["top1"]["mean"]]
    assert res["avg_ge2"]["top1"]["mean"] == pytest.approx(sum(ge2) / 4)


def test_all_seven_modalities_run_every_head_in_batches(monkeypatch):
    from omnibind_train.evaluation import metrics

    monkeypatch.setattr(metrics, "MAX_CHUNK_ELEMENTS", 7 * D * 37)  # force many uneven chunks
    base, labels, label_emb = _world(n=50)
    gen = torch.Generator().manual_seed(1)
    emb = {m: F.normalize(base["image"] + 0.6 * torch.randn(50, D, generator=gen), dim=-1)
           for m in MODALITY_SLOTS}
    heads = _heads(D)
    heads["af"] = AdaptiveFusion(dim=D, num_heads=4, zero_init=False).train()
    res = evaluate_combinations(emb, labels, label_emb, heads, list(MODALITY_SLOTS))
    assert len(res["subsets"]) == 127
    assert res["by_size"]["top1"]["af"].keys() == {str(k) for k in range(1, 8)}
    assert heads["af"].training  # mode restored
    full = "+".join(MODALITY_SLOTS)
    tokens = torch.stack([emb[m] for m in MODALITY_SLOTS], 1)
    with torch.no_grad():
        fused = heads["af"].eval()(tokens, torch.ones(50, 7, dtype=torch.bool))
    direct = ((fused @ label_emb.T).argmax(-1) == labels).float().mean().item()
    assert res["subsets"][full]["top1"]["af"] == pytest.approx(direct)
    assert res["deltas"]["af_minus_linear"] == pytest.approx(
        res["avg_ge2"]["top1"]["af"] - res["avg_ge2"]["top1"]["linear"])


# --- noise ------------------------------------------------------------------------------------


def test_gaussian_noise_keeps_unit_norm_and_is_identity_at_zero():
    emb, _, _ = _world(n=200)
    x = emb["image"]
    assert torch.equal(add_embedding_noise(x, 0.0, torch.Generator().manual_seed(0)), x)
    cos = []
    for std in (0.1, 0.5, 2.0):
        y = add_embedding_noise(x, std, torch.Generator().manual_seed(0))
        torch.testing.assert_close(y.norm(dim=-1), torch.ones(200))
        cos.append((x * y).sum(-1).mean().item())
    assert 1.0 > cos[0] > cos[1] > cos[2]
    assert cos[0] > 0.98  # std is the relative noise norm: 0.1 barely moves a unit vector
    again = add_embedding_noise(x, 0.5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, add_embedding_noise(x, 0.5,
                                                          torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError):
        add_embedding_noise(x, -1.0)


def test_replace_with_random_changes_exactly_the_fraction():
    emb, _, _ = _world(n=100)
    x = emb["image"]
    y = replace_with_random(x, 0.3, torch.Generator().manual_seed(0))
    changed = ~(y == x).all(-1)
    assert int(changed.sum()) == 30
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(100))
    assert torch.equal(replace_with_random(x, 0.0), x)


def test_robustness_sweep_zero_std_is_clean_and_noise_hurts():
    emb, labels, label_emb = _world(n=300)
    emb["text"] = F.normalize(emb["image"] + 0.3 * torch.randn(300, D), dim=-1)
    head = MeanFusion()
    curves = robustness_sweep(emb, labels, label_emb, head, [0.0, 4.0],
                              noisy_modalities=["image"], min_size=1)
    clean = evaluate_combinations(emb, labels, label_emb, {"mean": head},
                                  ["image", "text", "audio"])
    with_image = [r["top1"]["mean"] for r in clean["subsets"].values()
                  if "image" in r["modalities"]]
    assert list(curves) == ["image"]
    assert curves["image"][0.0] == pytest.approx(sum(with_image) / len(with_image))
    assert curves["image"][4.0] < curves["image"][0.0] - 0.1


# --- report ------------------------------------------------------------------------------------


def _results(af_bonus: float = 0.1) -> dict:
    emb, labels, label_emb = _world(n=64)
    gen = torch.Generator().manual_seed(2)
    emb = {m: F.normalize(emb["image"] + 0.9 * torch.randn(64, D, generator=gen), dim=-1)
           for m in MODALITY_SLOTS}
    comb = evaluate_combinations(emb, labels, label_emb, _heads(D), list(MODALITY_SLOTS))
    for rec in comb["subsets"].values():  # pretend AF learned something (or not)
        rec["top1"]["af"] = min(1.0, rec["top1"]["af"] + af_bonus)
    comb.update(aggregate_subsets(comb["subsets"], comb["heads"]))
    cad = {s: {v: 0.5 + 0.03 * i + 0.01 * j for j, v in enumerate(CAD_VARIANTS)}
           for i, s in enumerate(("thermal", "event", "tactile"))}
    rob = {"with_negatives": {m: {0.0: 0.9, 0.5: 0.8, 1.0: 0.7} for m in ("text", "event")},
           "without_negatives": {m: {0.0: 0.9, 0.5: 0.75, 1.0: 0.6} for m in ("text", "event")}}
    return {"combinations": comb, "zero_shot": zero_shot_accuracy(emb, labels, label_emb),
            "cad_ablation": cad, "robustness": rob,
            "meta": {"dataset": "sim-test", "seed": 0, "bundle": {"dim": D}}}


def test_write_report_files_sections_and_deterministic_json(tmp_path):
    results = _results()
    a = write_report(results, tmp_path / "a")
    assert set(a) == {"report", "json", "acc_vs_size", "per_subset", "cad_ablation",
                      "robustness"}
    for key, path in a.items():
        assert path.exists() and path.stat().st_size > 0, key
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = a["report"].read_text()
    for section in ("## Provenance", "## Expected shape", "## Zero-shot",
                    "## Any-modality combinations", "### Top-1 by subset size", "<details>",
                    "## CAD ablation (Table 7)", "## Robustness", "Δ AF − Linear", "≥2M avg",
                    "C1 {I,A,P}", "acc_vs_size.png"):
        assert section in md, section
    assert md.count("| `image") > 0 and "_not run_" not in md
    # reversed insertion orders must not change a byte of results.json
    shuffled = dict(reversed(list(results.items())))
    shuffled["combinations"] = dict(reversed(list(results["combinations"].items())))
    b = write_report(shuffled, tmp_path / "b")
    assert a["json"].read_bytes() == b["json"].read_bytes()
    data = json.loads(a["json"].read_text())
    assert len(data["combinations"]["subsets"]) == 127
    assert data["checks"]["af_vs_linear"]["status"] == "holds"
    assert data["cad_ablation"]["event"]["all"] == 0.56


def test_json_rounds_to_four_decimals_and_orders_keys():
    out = to_jsonable({"b": 0.123456, "a": {2.0: -0.00001, 0.5: float("nan"), "10": 1},
                       "t": torch.tensor([0.5, 1 / 3])})
    assert list(out) == ["a", "b", "t"]
    assert list(out["a"]) == ["0.5", "2", "10"]
    assert out["b"] == 0.1235 and out["a"]["2"] == 0.0 and out["a"]["0.5"] is None
    assert out["t"] == [0.5, 0.3333]
    assert json.dumps(out["a"]) == '{"0.5": null, "2": 0.0, "10": 1}'


def test_missing_sections_say_not_run(tmp_path):
    paths = write_report({"zero_shot": {"image": 0.9}}, tmp_path)
    assert set(paths) == {"report", "json"}
    md = paths["report"].read_text()
    assert md.count("_not run_") == 4  # provenance, combinations, CAD, robustness
    assert "| image | teacher | 90.00 |" in md
    assert "[not run]" in format_summary({})


def test_summary_reports_holds_and_does_not_hold_honestly():
    good = _results(af_bonus=0.1)
    summary = format_summary(good)
    assert "[holds] AF >= Linear" in summary
    assert "[holds] CAD all" in summary and "[holds] negative labels" in summary
    bad = _results(af_bonus=-0.2)
    bad["cad_ablation"] = {"event": {"L_in": 0.6, "L_in+L_cr": 0.6, "L_in+L_se": 0.6,
                                     "all": 0.61}}
    bad["robustness"]["with_negatives"] = bad["robustness"]["without_negatives"]
    summary = format_summary(bad)
    assert "[does not hold] AF >= Linear" in summary
    assert "[does not hold] AF >= Mean" in summary
    assert "[does not hold] CAD all" in summary  # +1 point < the 2-point threshold
    assert "[does not hold] negative labels" in summary  # equal curves: no gain
    checks = expected_shape(bad)
    assert checks["cad_full_vs_in"]["value"] == pytest.approx(0.01)
    assert checks["af_vs_mean"]["value"] < 0
