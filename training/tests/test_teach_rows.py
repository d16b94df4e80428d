"""Stage II rows of a teach run: the run's rows without the new modality, and bag rows joined
with run samples of the same label (seed 000 Sec. 3.4 label-level matching)."""
from __future__ import annotations

import torch

from omnibind_train.models.fusion import MODALITY_SLOTS
from omnibind_train.teach.fusion_rows import fusion_rows, label_matches
from omnibind_train.teach.train import _merged
from omnibind_train.trainers.af import FusionData

S = len(MODALITY_SLOTS)
IMG, THERMAL, EVENT = (MODALITY_SLOTS.index(m) for m in ("image", "thermal", "event"))


def _run(n: int = 6, d: int = 4) -> FusionData:
    labels = torch.arange(n) % 3  # classes 0, 1, 2
    tokens = torch.zeros(n, S, d)
    tokens[:, :, 0] = labels.view(-1, 1).float()  # every token says its sample's class
    present = torch.ones(n, S, dtype=torch.bool)
    present[0, EVENT] = False
    return FusionData(tokens, present, labels, torch.arange(n), present.clone())


def test_label_matches_pick_the_same_label_or_none() -> None:
    gen = torch.Generator().manual_seed(0)
    got = label_matches(torch.tensor([2, 0, 5, 2]), torch.tensor([0, 1, 2, 0, 1, 2]), gen)
    assert got[2] == -1 and all(int(got[i]) in (0, 3) if t == 0 else int(got[i]) in (2, 5)
                                for i, t in ((0, 2), (1, 0), (3, 2)))


def test_bag_rows_carry_the_matched_modalities_and_the_run_loses_the_new_one() -> None:
    run = _run()
    image, new = torch.full((3, 4), 7.0), torch.full((3, 4), 9.0)
    targets = torch.tensor([1, 2, 4])  # no run sample has label 4
    data, stats = fusion_rows("thermal", image, new, targets, run, matches_per_sample=2)
    assert stats == {"run_samples": 6, "run_records": 6, "bag_rows": 6,
                     "bag_rows_label_matched": 4, "bag_rows_unmatched": 2}
    assert data.labels.tolist() == [0, 1, 2, 0, 1, 2, 1, 1, 2, 2, 4, 4]
    assert not data.present[:6, THERMAL].any() and not data.record_masks[:6, THERMAL].any()
    bag = slice(6, 12)
    assert (data.tokens[bag, IMG] == 7).all() and (data.tokens[bag, THERMAL] == 9).all()
    assert data.present[bag, IMG].all() and data.present[bag, THERMAL].all()
    # matched rows: the event token of a run sample of the same class; unmatched: nothing else
    assert data.tokens[6:10, EVENT, 0].tolist() == [1.0, 1.0, 2.0, 2.0]
    assert data.present[10:12].sum(dim=1).tolist() == [2, 2]
    assert data.records[6:].tolist() == list(range(6, 12))
    assert torch.equal(data.record_masks[6:], data.present[6:])


def test_without_run_data_the_bag_rows_hold_image_and_new_only() -> None:
    data, stats = fusion_rows("thermal", torch.ones(2, 4), torch.ones(2, 4),
                              torch.tensor([0, 1]), None)
    assert stats["run_samples"] == 0 and stats["bag_rows"] == 2
    assert data.present.sum(dim=1).tolist() == [2, 2] and data.records.tolist() == [0, 1]


def test_af_overrides_merge_into_the_runs_config() -> None:
    run = {"loop": {"epochs": 20, "batch_size": 256}, "negatives": True}
    assert _merged(run, {"loop": {"epochs": 5}, "negatives": False}) == {
        "loop": {"epochs": 5, "batch_size": 256}, "negatives": False}
    assert run["loop"]["epochs"] == 20
