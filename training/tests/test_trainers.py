"""Trainers: schedules and sampling on synthetic data, then the tiny end-to-end pipeline on CPU."""
from __future__ import annotations

import json

import pytest
import torch
from _tiny import clustered, synthetic_points, tiny_cache, tiny_config

from omnibind_train.losses import AFLoss
from omnibind_train.models.encoders import ModalityEncoder
from omnibind_train.models.fusion import MODALITY_SLOTS, FusionConfig
from omnibind_train.models.registry import EncoderConfig, HeadConfig, PointNetTrunk, build_encoder
from omnibind_train.trainers import (
    AFConfig,
    CADConfig,
    FusionData,
    LoopConfig,
    OptimConfig,
    Stage0Config,
    fused_accuracy,
    load_checkpoint,
    train_cad,
    train_fusion,
    train_stage0,
)
from omnibind_train.trainers.af import make_batch, noise_one_modality, random_subsets
from omnibind_train.trainers.cad import _Plan, augment_points
from omnibind_train.trainers.common import EpochBatches, class_subset, generator
from omnibind_train.trainers.distributed import DistInfo

D, C, F_DIM = 32, 6, 16


def small_encoder(modality: str, *, trainable_trunk: bool = False) -> ModalityEncoder:
    """A cheap encoder: a tiny PointNet trunk (frozen ones are bypassed by cached features)."""
    trunk = PointNetTrunk(widths=(16, F_DIM) if trainable_trunk else (F_DIM,),
                          frozen=not trainable_trunk)
    torch.manual_seed(0)
    return build_encoder(EncoderConfig(modality, trunk, HeadConfig(hidden_dim=32), D),
                         load_weights=False)


def zero_shot(emb: torch.Tensor, labels: torch.Tensor, label_emb: torch.Tensor) -> float:
    return float(((emb @ label_emb.T).argmax(1) == labels).float().mean())


# --- sampling and schedules -------------------------------------------------------------------


def test_epoch_batches_are_a_pure_function_and_split_ranks() -> None:
    idx = torch.arange(100, 150)
    a = EpochBatches(idx, 8, seed=3)
    b = EpochBatches(idx, 8, seed=3)
    assert a.steps_per_epoch == 6
    assert torch.equal(a.batch(2, 1), b.batch(2, 1))
    assert not torch.equal(a.batch(0, 0), a.batch(1, 0))  # reshuffled per epoch
    assert set(torch.cat([a.batch(0, i) for i in range(6)]).tolist()) <= set(idx.tolist())
    # batch_size is the global batch: 10 over 2 ranks, 5 each
    ranks = [EpochBatches(idx, 10, seed=3, dist=DistInfo(rank=r, world_size=2)) for r in (0, 1)]
    seen = [set(torch.cat([rk.batch(0, i) for i in range(rk.steps_per_epoch)]).tolist())
            for rk in ranks]
    assert not seen[0] & seen[1]


def test_class_subset_is_balanced() -> None:
    labels = torch.arange(60) % 6
    keep = class_subset(labels, 0.25, seed=0)
    counts = torch.bincount(labels[keep], minlength=6)
    assert counts.tolist() == [2] * 6 or counts.tolist() == [3] * 6
    assert class_subset(labels, 1.0, seed=0).numel() == 60


def test_cad_plan_visits_every_student_once_per_round_in_random_orders() -> None:
    students = ["thermal", "event", "tactile", "audio", "point_cloud"]
    batches = {m: EpochBatches(torch.arange(20), 5, seed=i) for i, m in enumerate(students)}
    plan = _Plan(students, batches, steps_per_visit=1, seed=0)
    orders = [tuple(plan.at(r * 5 + v)[0] for v in range(5)) for r in range(6)]
    assert all(sorted(o) == sorted(students) for o in orders)
    assert len(set(orders)) > 1


def test_cad_config_terms_toggle_loss_weights() -> None:
    assert CADConfig(terms=["in", "se"]).loss_weights() == (1.0, 0.0, 1.0)  # Eq. 7
    assert CADConfig(terms=["in", "se"], weighting="appendix_code").loss_weights() == \
        (1.0, 0.0, 100.0)
    with pytest.raises(ValueError, match="terms"):
        CADConfig(terms=["in", "xx"])
    cfg = CADConfig.from_dict(CADConfig(terms=["in"]).to_dict())
    assert cfg.terms == ["in"] and isinstance(cfg.loop, LoopConfig)
    with pytest.raises(ValueError, match="unknown key"):
        CADConfig.from_dict({"epochs": 3})


def test_point_augmentation_rotates_about_z_and_subsamples() -> None:
    pts = torch.randn(4, 50, 3)
    out = augment_points(pts, generator(0), subsample=20, rotate=True)
    assert out.shape == (4, 20, 3)
    rot = augment_points(pts, generator(0), subsample=0, rotate=True)
    assert torch.allclose(rot.norm(dim=-1), pts.norm(dim=-1), atol=1e-5)
    assert torch.allclose(rot[..., 2], pts[..., 2])


def test_random_subsets_are_non_empty_and_allowed() -> None:
    allowed = torch.tensor([True, False, True, True, False, True, True])
    masks = random_subsets(500, allowed, generator(1))
    assert masks.any(1).all() and not (masks & ~allowed).any()
    sizes = torch.bincount(masks.sum(1), minlength=6)[1:6]
    assert (sizes > 50).all()  # every size 1..5 is drawn


def test_noise_hits_exactly_one_live_token() -> None:
    tokens = torch.nn.functional.normalize(torch.randn(64, 7, D), dim=-1)
    mask = torch.rand(64, 7) < 0.6
    mask[:, 0] = True
    out = noise_one_modality(tokens, mask, 1.0, 1.0, generator(2))
    changed = (out - tokens).abs().sum(-1) > 1e-6
    assert (changed.sum(1) == 1).all() and not (changed & ~mask).any()
    pinned = noise_one_modality(tokens, mask, 1.0, 1.0, generator(2), slot=0)
    assert ((pinned - tokens).abs().sum(-1) > 1e-6)[:, 0].all()


def _fusion_data(n: int = 120, seed: int = 0) -> tuple[FusionData, torch.Tensor]:
    emb, present = {}, {}
    centres = None
    gen = generator(seed, "present")
    for i, m in enumerate(MODALITY_SLOTS):
        x, labels, centres = clustered(n, C, D, noise=1.5, seed=seed * 10 + i, centres=centres)
        emb[m], present[m] = x, torch.rand(n, generator=gen) > 0.1
    records = [(i, list(MODALITY_SLOTS[: 1 + i % 7])) for i in range(n)]
    return FusionData.build(emb, present, labels, records), centres


def test_af_batches_respect_presence_and_negatives() -> None:
    data, label_emb = _fusion_data()
    cfg = AFConfig(random_subset_prob=0.5)
    batch = make_batch(data, torch.arange(40), label_emb, cfg, generator(0))
    sample = data.records[:40]
    assert not (batch.mask & ~data.present[sample]).any()
    assert batch.mask.any(1).all()
    assert not batch.negatives[torch.arange(40), batch.targets].any()
    assert batch.negatives.any(1).all()
    no_neg = make_batch(data, torch.arange(40), label_emb, cfg.replace(negatives=False),
                        generator(0))
    assert (no_neg.negatives.sum(1) == C - 1).all()


# --- trainers on synthetic features -----------------------------------------------------------


def test_stage0_learns_and_writes_a_loadable_checkpoint(tmp_path) -> None:
    feats, labels, centres = clustered(240, C, F_DIM, noise=0.5)
    text = centres_to_text(centres)[labels]
    enc = small_encoder("image")
    cfg = Stage0Config(loop=LoopConfig(epochs=15, batch_size=48),
                       optim=OptimConfig(lr=3e-3, warmup_frac=0.1))
    res = train_stage0(enc, feats.unsqueeze(0), text, torch.ones(240, dtype=torch.bool), cfg,
                       run_dir=tmp_path, record={"model": {"image": enc.config.to_dict()}},
                       progress=False)
    assert res.steps == 75
    with torch.no_grad():
        acc = zero_shot(enc.encode_features(feats), labels, centres_to_text(centres))
    assert acc > 0.8
    ckpt = load_checkpoint(tmp_path / "final")
    assert ckpt.config["stage"] == "stage0" and ckpt.config["train"]["loop"]["epochs"] == 15
    assert set(ckpt.weights) == {"image", "loss"}
    assert not any(k.startswith("trunk.") for k in ckpt.weights["image"])  # frozen: not stored
    assert ckpt.state is not None and ckpt.state["step"] == 75
    assert (tmp_path / "tb").is_dir()


def centres_to_text(centres: torch.Tensor) -> torch.Tensor:
    """A fixed 'text space' D-dim embedding of each F_DIM class centre."""
    gen = torch.Generator().manual_seed(99)
    proj = torch.randn(centres.shape[1], D, generator=gen)
    return torch.nn.functional.normalize(centres @ proj, dim=-1)


def test_cad_aligns_feature_and_point_students() -> None:
    n = 180
    _, labels, centres = clustered(n, C, F_DIM)
    text_lab = centres_to_text(centres)
    text = text_lab[labels]
    image = torch.nn.functional.normalize(text + 0.1 * torch.randn(n, D), dim=-1)
    feats, _, _ = clustered(n, C, F_DIM, noise=0.5, seed=1, centres=centres)
    points = synthetic_points(labels)
    students = {"thermal": small_encoder("thermal"),
                "point_cloud": small_encoder("point_cloud", trainable_trunk=True)}
    from omnibind_train.trainers import StudentData

    data = {"thermal": StudentData(feats.unsqueeze(0), torch.ones(n, dtype=torch.bool)),
            "point_cloud": StudentData(points.unsqueeze(0), torch.ones(n, dtype=torch.bool))}
    cfg = CADConfig(loop=LoopConfig(epochs=12, batch_size=30), students=list(students),
                    optim=OptimConfig(lr=3e-3))
    res = train_cad(students, data, text, image, torch.ones(n, dtype=torch.bool), labels, cfg,
                    progress=False)
    assert res.steps == 12 * 6 * 2
    with torch.no_grad():
        acc_t = zero_shot(students["thermal"].encode_features(feats), labels, text_lab)
    assert acc_t > 0.8
    with torch.no_grad():
        acc_p = zero_shot(students["point_cloud"](points), labels, text_lab)
    assert acc_p > 1.5 / C  # point shape only separates 3 of the 6 classes


def test_crossfit_gives_out_of_fold_embeddings() -> None:
    from omnibind_train.trainers import StudentData
    from omnibind_train.trainers.cad import crossfit_embeddings, fold_masks

    labels = torch.arange(60) % C
    folds = fold_masks(labels, 3, seed=0)
    assert torch.stack(folds).sum(0).eq(1).all()  # a partition
    per_class = torch.stack([torch.bincount(labels[f], minlength=C) for f in folds])
    assert (per_class.max(0).values - per_class.min(0).values).le(1).all()
    assert [int(f.sum()) for f in folds] == [20, 20, 20]
    with pytest.raises(ValueError):
        fold_masks(labels, 1, seed=0)
    n = 60
    feats, _, centres = clustered(n, C, F_DIM, noise=0.5)
    text = centres_to_text(centres)[labels]
    ones = torch.ones(n, dtype=torch.bool)
    data = {"thermal": StudentData(feats.unsqueeze(0), ones)}
    cfg = CADConfig(loop=LoopConfig(epochs=2, batch_size=10), students=["thermal"],
                    crossfit_folds=2)
    made = []

    def make():
        made.append(small_encoder("thermal"))
        return {"thermal": made[-1]}

    oof = crossfit_embeddings(make, data, text, text, ones, labels, cfg, progress=False)
    assert len(made) == 2 and oof["thermal"].shape == (n, D)
    torch.testing.assert_close(oof["thermal"].norm(dim=-1), torch.ones(n))
    # each sample is embedded by the model that did not train on it
    held_out = fold_masks(labels, 2, seed=0)[0]
    with torch.no_grad():
        expect = made[0].encode_features(feats[held_out])
    torch.testing.assert_close(oof["thermal"][held_out], expect)


def test_af_training_improves_accuracy_and_mean_head_is_not_trained() -> None:
    data, label_emb = _fusion_data(240)
    # randomly initialised attention (not the zero-initialised start, which equals the mean
    # baseline): the untrained head mixes the modalities badly, so training has room to improve
    cfg = AFConfig(loop=LoopConfig(epochs=8, batch_size=60),
                   fusion=FusionConfig(dim=D, num_heads=4, zero_init=False))
    torch.manual_seed(0)
    head = cfg.fusion.build()
    before = fused_accuracy(head, data, label_emb)
    res = train_fusion(head, data, label_emb, cfg, progress=False)
    assert res is not None and res.steps == 32
    after = fused_accuracy(head, data, label_emb)
    assert after >= before + 0.1, f"AF training did not improve top-1: {before:.3f} -> {after:.3f}"
    assert after > 3 / C
    mean = FusionConfig(kind="mean", dim=D).build()
    assert train_fusion(mean, data, label_emb, cfg, progress=False) is None


# --- the tiny pipeline end to end --------------------------------------------------------------


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_is_above_chance(tmp_path_factory) -> None:
    from omnibind_train import pipeline as pl

    ws = pl.Workspace(tiny_config(tiny_cache(tmp_path_factory), "name=tiny_e2e"))
    pl.run_data(ws)
    stage0 = pl.run_stage0(ws)
    chance = 1 / len(ws.class_names)
    assert stage0["zero_shot_image"] > 4 * chance
    cad = pl.run_cad(ws)
    assert set(cad) == {"thermal", "event", "tactile", "audio", "point_cloud"}
    assert max(cad.values()) > 3 * chance
    af = pl.run_af(ws)
    assert set(af) == {"af", "mean", "linear", "concat"}
    assert af["af"] > 4 * chance
    # test split: zero-shot image and AF-fused accuracy
    data, emb = ws.fusion_data("test")
    labels = ws.labels("student", "test")
    assert pl.zero_shot(emb["image"], labels, ws.label_embeddings) > 4 * chance
    assert fused_accuracy(ws.load_fusion_heads()["af"], data, ws.label_embeddings) > 4 * chance
    # the confidence temperature the export writes: fitted on val, judged on test
    cal = pl.eval_stage.af_calibration(ws)
    assert 0.02 < cal["temperature"] < 50 and cal["test_pairs"] == cal["after"]["n"] > 0
    assert cal["after"]["ece"] <= cal["before"]["ece"] + 0.05
    # what the export writes as labels.logit_scale: the AF loss's 1 / tau (fixed here)
    assert ws.fusion_logit_scale() == float(AFLoss(temperature=ws.cfg.af.temperature)
                                            .logit_scale())
    # checkpoints carry model, preprocess and training configs
    cfg = json.loads((ws.stage_dir("cad") / "final" / "config.json").read_text())
    assert cfg["model"]["point_cloud"]["trunk"]["kind"] == "pointnet"
    assert cfg["preprocess"]["audio"]["n_mels"] == 128
    assert cfg["train"]["terms"] == ["in", "cr", "se"]
    state = torch.load(ws.stage_dir("cad") / "final" / "trainer_state.pt", weights_only=True)
    assert state["step"] == cfg["step"]
