"""Resume: k steps + checkpoint + fresh objects + the remaining steps == one uninterrupted run."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from _tiny import REPO, TINY_CONFIG, clustered, synthetic_points, tiny_cache, tiny_config
from test_trainers import F_DIM, C, D, _fusion_data, centres_to_text, small_encoder

from omnibind_train.models.fusion import FusionConfig
from omnibind_train.trainers import (
    AFConfig,
    CADConfig,
    LoopConfig,
    OptimConfig,
    Stage0Config,
    StudentData,
    load_checkpoint,
    train_cad,
    train_fusion,
    train_stage0,
)
from omnibind_train.trainers.checkpoint import checkpoint_step, latest_checkpoint


def assert_same_weights(a_dir, b_dir) -> None:
    a, b = load_checkpoint(a_dir).weights, load_checkpoint(b_dir).weights
    assert set(a) == set(b)
    for part in a:
        assert set(a[part]) == set(b[part])
        for name, t in a[part].items():
            torch.testing.assert_close(b[part][name], t, rtol=0, atol=1e-6,
                                       msg=f"{part}/{name} differs after resume")


def _stage0(run_dir, resume=None, dist=None):
    """Stage 0 on synthetic features; returns (result, trained modules)."""
    feats, labels, centres = clustered(120, C, F_DIM, noise=0.5)
    # two views: the per-step view choice must also be reproduced
    views = torch.stack([feats, feats.flip(-1)])
    cfg = Stage0Config(loop=LoopConfig(epochs=6, batch_size=24, ckpt_every=7),
                       optim=OptimConfig(lr=3e-3))
    enc = small_encoder("image")
    enc.head.append(torch.nn.Dropout(0.2))  # exercises the re-seeded global RNG
    res = train_stage0(enc, views, centres_to_text(centres)[labels],
                       torch.ones(120, dtype=torch.bool), cfg, run_dir=run_dir, resume=resume,
                       progress=False, dist=dist)
    return res, {"image": enc}


def _cad(run_dir, resume=None, dist=None):
    """CAD with two feature students and a PointNet student; returns (result, students)."""
    n = 90
    _, labels, centres = clustered(n, C, F_DIM)
    text = centres_to_text(centres)[labels]
    image = torch.nn.functional.normalize(text + 0.1 * torch.randn(
        n, D, generator=torch.Generator().manual_seed(1)), dim=-1)
    feats, _, _ = clustered(n, C, F_DIM, noise=0.5, seed=1, centres=centres)
    students = {"thermal": small_encoder("thermal"), "audio": small_encoder("audio"),
                "point_cloud": small_encoder("point_cloud", trainable_trunk=True)}
    ones = torch.ones(n, dtype=torch.bool)
    data = {"thermal": StudentData(feats.unsqueeze(0), ones),
            "audio": StudentData(feats.flip(-1).unsqueeze(0), ones),
            "point_cloud": StudentData(synthetic_points(labels).unsqueeze(0), ones)}
    cfg = CADConfig(loop=LoopConfig(epochs=3, batch_size=20, ckpt_every=11),
                    students=list(students), point_subsample=16, learn_temperature=True)
    res = train_cad(students, data, text, image, ones, labels, cfg, run_dir=run_dir,
                    resume=resume, progress=False, dist=dist)
    return res, students


def _af(run_dir, resume=None, dist=None):
    """AF with noise injection and negatives; returns (result, {"fusion": head})."""
    data, label_emb = _fusion_data(100)
    cfg = AFConfig(loop=LoopConfig(epochs=4, batch_size=20, ckpt_every=6),
                   fusion=FusionConfig(dim=D, num_heads=4, zero_init=False), noise_prob=0.3)
    torch.manual_seed(0)
    head = cfg.fusion.build()
    res = train_fusion(head, data, label_emb, cfg, run_dir=run_dir, resume=resume,
                       progress=False, dist=dist)
    return res, {"fusion": head}


@pytest.mark.parametrize("train", [_stage0, _cad, _af], ids=["stage0", "cad", "af"])
def test_resume_matches_uninterrupted_run(train, tmp_path) -> None:
    full = tmp_path / "full"
    res, _ = train(full)
    ckpts = sorted((full / "checkpoints").glob("step_*"))
    assert len(ckpts) >= 2
    mid = ckpts[len(ckpts) // 2]  # crosses at least one epoch boundary afterwards
    assert 0 < checkpoint_step(mid) < res.steps
    resumed = tmp_path / "resumed"
    res2, _ = train(resumed, resume=mid)
    assert res2.resumed_from == checkpoint_step(mid)
    assert_same_weights(full / "final", resumed / "final")
    state_a = load_checkpoint(full / "final").state
    state_b = load_checkpoint(resumed / "final").state
    for sa, sb in zip(state_a["optimizer"]["state"].values(),
                      state_b["optimizer"]["state"].values(), strict=True):
        torch.testing.assert_close(sb["exp_avg"], sa["exp_avg"], rtol=0, atol=1e-6)
    assert latest_checkpoint(full) == full / "final"


def test_resume_refuses_a_different_schedule(tmp_path) -> None:
    _af(tmp_path / "a")
    ckpt = sorted((tmp_path / "a" / "checkpoints").glob("step_*"))[0]
    data, label_emb = _fusion_data(100)
    cfg = AFConfig(loop=LoopConfig(epochs=5, batch_size=20),
                   fusion=FusionConfig(dim=D, num_heads=4))
    with pytest.raises(ValueError, match="schedule"):
        train_fusion(cfg.fusion.build(), data, label_emb, cfg, resume=ckpt, progress=False)


@pytest.mark.slow
def test_cli_resume_in_a_new_process(tmp_path_factory) -> None:
    """``omnibind-train stage0`` twice: straight, and resumed from a mid-run checkpoint in a new
    process; identical final weights."""
    from omnibind_train import pipeline as pl

    cache = tiny_cache(tmp_path_factory)
    pl.run_data(pl.Workspace(tiny_config(cache)))

    def cli(name: str, *extra: str) -> None:
        cmd = [sys.executable, "-m", "omnibind_train.cli", "stage0", "--config",
               str(TINY_CONFIG), "--cache-dir", str(cache), "--no-progress", "--threads", "1",
               "--set", f"name={name}", "--set", "stage0.loop.ckpt_every=15", *extra]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]

    cli("resume_a")
    run_a = cache / "runs" / "resume_a" / "stage0"
    mid = run_a / "checkpoints" / "step_0000015"
    assert mid.is_dir()
    cli("resume_b", "--resume", str(mid))
    assert_same_weights(run_a / "final", cache / "runs" / "resume_b" / "stage0" / "final")
