"""Design choices are decided on the validation split, never the test split
(``select_on_val`` and the stage-II cross-fitting decision that uses it)."""
from __future__ import annotations

import pytest
import torch

from omnibind_train.evaluation import select_on_val
from omnibind_train.pipeline import eval_stage


def test_chooses_on_val_whatever_test_says():
    scores = {0: {"val": 0.90, "test": 0.99}, 2: {"val": 0.93, "test": 0.80},
              3: {"val": 0.91, "test": 0.95}}
    out = select_on_val(scores)
    assert out["chosen"] == 2 and out["split"] == "val"
    assert out["margin"] == pytest.approx(0.02)
    # any test numbers give the same choice; the test column is carried, untouched
    for test in ([0.0, 1.0, 0.5], [1.0, 0.0, 0.0]):
        swapped = {k: {**v, "test": t} for (k, v), t in zip(scores.items(), test, strict=True)}
        assert select_on_val(swapped)["chosen"] == 2
        assert select_on_val(swapped)["scores"] == swapped


def test_ties_within_tolerance_go_to_the_preferred_option():
    scores = {2: {"val": 0.931}, 0: {"val": 0.930}, 3: {"val": 0.90}}
    assert select_on_val(scores)["chosen"] == 2
    out = select_on_val(scores, tolerance=0.002, prefer=[0, 2, 3])
    assert out["chosen"] == 0 and out["tied"] == [0, 2]
    assert select_on_val(scores, tolerance=0.0005, prefer=[0, 2, 3])["chosen"] == 2


def test_refuses_test_split_and_missing_val():
    with pytest.raises(ValueError, match="val"):
        select_on_val({0: {"test": 0.9}, 2: {"test": 0.8}}, split="test")
    with pytest.raises(ValueError, match="no finite 'val'"):
        select_on_val({0: {"val": 0.9}, 2: {"test": 0.95}})
    with pytest.raises(ValueError, match="no finite 'val'"):
        select_on_val({0: {"val": float("nan")}})
    with pytest.raises(ValueError):
        select_on_val({})


class _Cfg:
    class evaluation:  # noqa: N801
        split = "test"

    class af:  # noqa: N801
        modalities = ["image", "text"]

    seed = 0


class _FakeWorkspace:
    """What run_crossfit_decision touches; the fold options differ only in their training
    embeddings, which the scripted evaluate_split below reads back."""

    cfg = _Cfg
    label_embeddings = torch.eye(2)

    def fusion_data(self, split):
        data = eval_stage.FusionData.build(
            {"image": torch.eye(2), "text": torch.eye(2)},
            {"image": torch.ones(2, dtype=torch.bool), "text": torch.ones(2, dtype=torch.bool)},
            torch.tensor([0, 1]), [])
        data.split = split
        return data, {}

    def dataset(self, kind, split):
        class _DS:
            modality_free = []
        return _DS()


def test_crossfit_decision_reads_val_and_reports_test(monkeypatch):
    """Option 2 is better on val, option 0 on test: 2 is chosen, both columns are reported."""
    script = {0: {"val": 0.80, "test": 0.95}, 2: {"val": 0.85, "test": 0.70}}

    def fake_embeddings(ws, folds):
        return {"image": torch.full((2, 2), float(folds)), "text": torch.eye(2)}

    def fake_train(ws, kind, data, seed_tag=None):
        return data.tokens[0, 0, 0].item(), 0.0  # the "head" remembers its option

    def fake_eval(data, emb, label_emb, heads, modalities):
        (option,) = heads.values()
        return {"avg_ge2": {"top1": {k: script[int(option)][data.split]
                                     for k in heads}}}

    monkeypatch.setattr(eval_stage, "crossfit_train_embeddings", fake_embeddings)
    monkeypatch.setattr(eval_stage, "_train_head", fake_train)
    monkeypatch.setattr(eval_stage, "evaluate_split", fake_eval)
    monkeypatch.setattr(eval_stage, "_say", lambda ws, msg: None)
    out = eval_stage.run_crossfit_decision(_FakeWorkspace(), folds=(0, 2), seeds=2)
    assert out["decision"]["chosen"] == 2 and out["decision"]["split"] == "val"
    assert out["options"][0]["test"] == 0.95 and out["options"][2]["test"] == 0.70
    assert len(out["options"][2]["per_seed"]) == 2
    # with a tolerance wider than the val gap, the cheaper option (fewer folds) is kept
    out = eval_stage.run_crossfit_decision(_FakeWorkspace(), folds=(2, 0), tolerance=0.1)
    assert out["decision"]["chosen"] == 0


def test_image_centre_swaps_shared_and_own_teachers():
    """Table 7's image half: the teachers swap in CAD's (text, image) slots, for the shared
    teachers and for a student carrying its own (the real data sets)."""
    from omnibind_train.trainers.cad import StudentData

    text, image = torch.zeros(3, 2), torch.ones(3, 2)
    assert eval_stage.centred_teachers(text, image, "text") == (text, image)
    first, second = eval_stage.centred_teachers(text, image, "image")
    assert first is image and second is text
    with pytest.raises(ValueError):
        eval_stage.centred_teachers(text, image, "audio")
    own = StudentData(torch.zeros(1, 3, 4), torch.ones(3, dtype=torch.bool), text=text,
                      image=image, labels=torch.zeros(3, dtype=torch.long))
    shared = StudentData(torch.zeros(1, 3, 4), torch.ones(3, dtype=torch.bool))
    out = eval_stage.centred_student_data({"tactile": own, "event": shared}, "image")
    assert out["tactile"].text is image and out["tactile"].image is text
    assert out["event"] is shared
    assert eval_stage.centred_student_data({"tactile": own}, "text")["tactile"] is own
    no_image = StudentData(torch.zeros(1, 3, 4), torch.ones(3, dtype=torch.bool), text=text,
                           labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="no image teacher"):
        eval_stage.centred_student_data({"audio": no_image}, "image")
