"""Invalid inputs (preprocessing failed / modality absent) are masked at
evaluation exactly as in training (``make_batch``, ``fused_accuracy``): the head fuses the
present modalities of a subset and a sample with none is left out of that subset."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from omnibind_train.evaluation import (
    evaluate_combinations,
    robustness_sweep,
    subset_accuracy,
    zero_shot_accuracy,
)
from omnibind_train.models.fusion import MODALITY_SLOTS, AdaptiveFusion, MeanFusion
from omnibind_train.pipeline.eval_stage import evaluate_split, present_by_modality
from omnibind_train.trainers.af import FusionData, fused_accuracy

C, D = 4, 8


def _world() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor,
                      torch.Tensor]:
    """8 samples, both modalities on their label when valid. Thermal failed on samples 0-2:
    its embedding there is what an encoder gives for a blank input, the same vector for every
    sample (here: class 3's axis, so it is wrong for samples 0-2 whose labels are 0, 1, 2)."""
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3])
    label_emb = torch.eye(C, D)
    image = F.normalize(label_emb[labels] + 0.1 * torch.eye(D)[7], dim=-1)
    thermal = label_emb[labels].clone()
    thermal[:3] = label_emb[3] * 3.0  # dominates the mean with image: wrong if not masked
    present = {"image": torch.ones(8, dtype=torch.bool),
               "thermal": torch.tensor([False] * 3 + [True] * 5)}
    return {"image": image, "thermal": thermal}, present, labels, label_emb


def test_invalid_inputs_are_masked_in_every_subset():
    emb, present, labels, label_emb = _world()
    res = evaluate_combinations(emb, labels, label_emb, {"mean": MeanFusion()},
                                ["image", "thermal"], present=present)
    sub = res["subsets"]
    assert sub["image"]["top1"]["mean"] == 1.0 and sub["image"]["num_evaluated"] == 8
    # thermal alone: only its 5 valid samples count, and they are all right
    assert sub["thermal"]["num_evaluated"] == 5 and sub["thermal"]["top1"]["mean"] == 1.0
    # image+thermal: the failed thermal inputs are dropped, image decides: 8/8
    assert sub["image+thermal"]["num_evaluated"] == 8
    assert sub["image+thermal"]["top1"]["mean"] == 1.0
    # unmasked, the failed inputs count as live: thermal 5/8, the pair 5/8 (blank wins)
    raw = evaluate_combinations(emb, labels, label_emb, {"mean": MeanFusion()},
                                ["image", "thermal"])
    assert raw["subsets"]["thermal"]["top1"]["mean"] == 5 / 8
    assert raw["subsets"]["image+thermal"]["top1"]["mean"] == 5 / 8
    assert raw["subsets"]["thermal"]["num_evaluated"] == 8


def test_nan_embeddings_of_invalid_inputs_do_not_leak():
    emb, present, labels, label_emb = _world()
    emb["thermal"][:3] = float("nan")
    head = AdaptiveFusion(dim=D, num_heads=2, zero_init=False)
    res = evaluate_combinations(emb, labels, label_emb, {"af": head, "mean": MeanFusion()},
                                ["image", "thermal"], present=present)
    for rec in res["subsets"].values():
        for h in ("af", "mean"):
            assert math.isfinite(rec["top1"][h]) and math.isfinite(rec["top5"][h])
    assert res["subsets"]["image+thermal"]["top1"]["mean"] == 1.0


def test_subset_with_no_valid_sample_is_nan_and_left_out_of_the_averages():
    emb, present, labels, label_emb = _world()
    present["thermal"][:] = False
    res = evaluate_combinations(emb, labels, label_emb, {"mean": MeanFusion()},
                                ["image", "thermal"], present=present)
    assert res["subsets"]["thermal"]["num_evaluated"] == 0
    assert math.isnan(res["subsets"]["thermal"]["top1"]["mean"])
    assert res["avg_all"]["top1"]["mean"] == 1.0  # image and image+thermal, both 8/8


def test_zero_shot_and_robustness_mask_invalid_inputs():
    emb, present, labels, label_emb = _world()
    assert zero_shot_accuracy(emb, labels, label_emb, present=present) == {
        "image": 1.0, "thermal": 1.0}
    assert zero_shot_accuracy(emb, labels, label_emb)["thermal"] == 5 / 8
    clean = robustness_sweep(emb, labels, label_emb, MeanFusion(), [0.0],
                             modalities=["image", "thermal"], noisy_modalities=["image"],
                             present=present)
    assert clean == {"image": {0.0: 1.0}}


def _fusion_data() -> FusionData:
    emb, present, labels, _ = _world()
    return FusionData.build(emb, present, labels, [])


def test_eval_stage_split_masks_like_training():
    """evaluate_split (what the eval stage runs) on the stage's FusionData: the full-set subset
    scores what training's own validation metric (fused_accuracy) scores."""
    data = _fusion_data()
    _, _, labels, label_emb = _world()
    emb = {m: data.tokens[:, i] for i, m in enumerate(MODALITY_SLOTS) if m in ("image", "thermal")}
    assert present_by_modality(data)["thermal"].tolist() == [False] * 3 + [True] * 5
    head = MeanFusion()
    res = evaluate_split(data, emb, label_emb, {"mean": head}, ["image", "thermal"])
    assert res["subsets"]["image+thermal"]["top1"]["mean"] == fused_accuracy(head, data,
                                                                             label_emb) == 1.0
    assert res["subsets"]["thermal"]["num_evaluated"] == 5


def test_subset_accuracy_present_matrix():
    emb, present, labels, label_emb = _world()
    tokens = torch.stack([emb["image"], emb["thermal"]], dim=1)
    masks = torch.tensor([[False, True], [True, True]])
    usable = torch.stack([present["image"], present["thermal"]], dim=1)
    acc = subset_accuracy(MeanFusion(), tokens, masks, labels, label_emb, (1,), usable)
    assert acc.tolist() == [[1.0, 1.0]]
    acc_raw = subset_accuracy(MeanFusion(), tokens, masks, labels, label_emb, (1,))
    assert acc_raw.tolist() == [[5 / 8, 5 / 8]]
