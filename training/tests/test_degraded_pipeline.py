"""The pipeline with a degraded twin data set: the twin renders the same scenes with degraded
sensors, stage II trains with twins mixed in, and the evaluation reports one degraded sensor."""
from __future__ import annotations

import json

import pytest
import torch
from _tiny import tiny_cache, tiny_config

from omnibind_train.data import DataConfig
from omnibind_train.models.fusion import MODALITY_SLOTS

TWIN = {"name": "sim_tiny_twin", "seed": 0, "world": {}, "teacher_train": 0, "teacher_val": 0,
        "student_train": 18, "student_val": 18, "student_test": 18, "shard_size": 16,
        "workers": 1, "combos_per_sample": 2,
        "degradations": {m: {"probability": 1.0, "severity": [0.6, 1.0]}
                         for m in ("image", "thermal", "event", "tactile", "audio",
                                   "point_cloud")}}


def test_a_twin_must_hold_the_same_scenes():
    other = {**TWIN, "student_train": 36}
    with pytest.raises(ValueError, match="not a twin.*student_train 36 != 18"):
        DataConfig(dataset="config/sim_dataset_tiny.yaml", degraded=other).degraded_twin()
    clean = {**TWIN, "degradations": None}
    with pytest.raises(ValueError, match="draws no degradations"):
        DataConfig(dataset="config/sim_dataset_tiny.yaml", degraded=clean).degraded_twin()
    assert DataConfig(dataset="config/sim_dataset_tiny.yaml").degraded_twin() is None


@pytest.mark.slow
def test_tiny_pipeline_with_a_degraded_twin(tmp_path_factory) -> None:
    from omnibind_train import pipeline as pl
    from omnibind_train.evaluation import render_report
    from omnibind_train.pipeline.eval_stage import run_degraded
    from omnibind_train.pipeline.train_stages import fusion_train_data

    ws = pl.Workspace(tiny_config(
        tiny_cache(tmp_path_factory), "name=tiny_degraded", f"data.degraded={json.dumps(TWIN)}",
        "af.degrade_prob=0.5", "af.fusion.evidence_gate=true",
        "af.fusion.single_passthrough=true", "af.loop.epochs=5", "stage0.loop.epochs=8",
        "cad.loop.epochs=8"))
    pl.run_data(ws)
    twin = ws.degraded
    assert twin is not None and twin.dataset_root.name == "sim_tiny_twin"
    # the same scenes: same seeds and classes, other sensor payloads
    clean_ds, twin_ds = ws.dataset("student", "test"), twin.dataset("student", "test")
    assert (clean_ds.labels == twin_ds.labels).all()
    pl.run_stage0(ws)
    pl.run_cad(ws)
    pl.run_af(ws)
    train = fusion_train_data(ws, "af")
    assert train.degraded is not None and train.degraded.shape == train.tokens.shape
    image = MODALITY_SLOTS.index("image")
    moved = 1 - torch.cosine_similarity(train.degraded[:, image], train.tokens[:, image], dim=-1)
    assert moved.mean() > 0.05  # degraded images embed elsewhere
    text = MODALITY_SLOTS.index("text")  # text has no degradation: its twin is the same
    assert torch.allclose(train.degraded[:, text], train.tokens[:, text], atol=1e-5)
    deg = run_degraded(ws)
    assert set(deg["min_size_2"]) == {"af", "mean", "linear", "concat"}
    modalities = [m for m in MODALITY_SLOTS if m in ws.cfg.af.modalities]
    for part in ("min_size_2", "alone"):
        for head, table in deg[part].items():
            assert set(table["degraded"]) == set(modalities), (part, head)
            assert all(0.0 <= v <= 1.0 for v in table["degraded"].values())
    # degrading a sensor costs the mean head accuracy on average
    mean = deg["alone"]["mean"]
    assert sum(mean["degraded"].values()) < sum(mean["clean"].values())
    md = render_report({"degraded": deg})
    assert "## Degraded sensors" in md and "image degraded" in md and "### The degraded" in md
