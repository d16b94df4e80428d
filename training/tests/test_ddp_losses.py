"""torchrun computes the paper's losses: the global batch's loss and gradient on every rank.

Two Gloo processes (CPU) each hold half of one global batch (rank r: rows r, r + 2, ..., as the
``DistributedSampler`` deals them), run the trainers' DDP units (stage 0's ``HeadLoss``, CAD's
``StudentLoss``) wrapped in DDP, and back-propagate once. Their loss and their DDP-averaged
gradients must equal one process's on the whole batch (float64, tolerance 1e-9 relative):
stage 0's InfoNCE with a learnable temperature (a parameter every rank holds: a loss scaled by
the world size would double its gradient), and the CAD loss with all three terms under both
weightings, for a head on features and for a PointNet trained end to end. Each rank's loss on
its own rows alone (what torchrun computed before the gather) is checked to differ, so the
comparison can fail.

Also here, without processes: the per-rank share of the global batch, and the loss terms in
float32 under bf16 autocast.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from _tiny import synthetic_points
from test_trainers import F_DIM, C, D, small_encoder

from omnibind_train.losses import CADLoss, ContrastiveLoss
from omnibind_train.trainers.cad import CADConfig, StudentLoss
from omnibind_train.trainers.common import EpochBatches
from omnibind_train.trainers.distributed import DistInfo, per_rank_batch, wrap_ddp
from omnibind_train.trainers.stage0 import HeadLoss

WORLD = 2
K = 12  # the global batch
#: case -> (CAD weighting, student); stage 0 has neither
CASES = {"stage0": (None, None), "cad_paper_eq7": ("paper_eq7", "thermal"),
         "cad_appendix_code": ("appendix_code", "thermal"),
         "cad_point_paper_eq7": ("paper_eq7", "point_cloud"),
         "cad_point_appendix_code": ("appendix_code", "point_cloud")}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _global_batch() -> dict[str, torch.Tensor]:
    """K samples of C classes: features, points, text (shared per class) and image teachers."""
    gen = torch.Generator().manual_seed(5)
    labels = torch.arange(K) % C
    centres = F.normalize(torch.randn(C, D, generator=gen, dtype=torch.float64), dim=-1)
    text = F.normalize(centres[labels] + 0.2 * torch.randn(K, D, generator=gen,
                                                          dtype=torch.float64), dim=-1)
    image = F.normalize(text + 0.3 * torch.randn(K, D, generator=gen, dtype=torch.float64),
                        dim=-1)
    return {"features": torch.randn(K, F_DIM, generator=gen, dtype=torch.float64),
            "points": synthetic_points(labels)[:, :32].double(), "text": text, "image": image}


def _unit(case: str, dist: DistInfo | None) -> torch.nn.Module:
    """The DDP unit of ``case`` (same initial weights in every process), in float64."""
    if case == "stage0":
        loss = ContrastiveLoss(temperature=0.1, learn_temperature=True)
        return HeadLoss(small_encoder("image").head, loss, dist).double()
    weighting, student = CASES[case]
    cfg = CADConfig(weighting=weighting, learn_temperature=True, students=[student])
    enc = small_encoder(student, trainable_trunk=student == "point_cloud")
    return StudentLoss(enc, cfg.build_loss(), dist).double()


def _inputs(case: str, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    if case == "stage0":
        return [batch["features"], batch["text"]]
    x = batch["points"] if CASES[case][1] == "point_cloud" else batch["features"]
    return [x, batch["text"], batch["image"]]


def _step(case: str, dist: DistInfo | None, rows: torch.Tensor) -> dict:
    """One forward/backward of ``case``'s unit (DDP-wrapped when distributed) on ``rows``."""
    unit = _unit(case, dist)
    model = wrap_ddp(unit, dist) if dist is not None else unit
    out = model(*(t[rows] for t in _inputs(case, _global_batch())))
    out["loss"].backward()
    return {"losses": {k: v.item() for k, v in out.items()},
            "grads": {n: p.grad.detach().clone() for n, p in unit.named_parameters()
                      if p.requires_grad}}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    from omnibind_train.trainers.distributed import cleanup, init_distributed

    dist = init_distributed("cpu")
    rows = torch.arange(rank, K, WORLD)  # the DistributedSampler's share of one batch
    results = {}
    try:
        for case in CASES:
            results[case] = _step(case, dist, rows)
            # what each rank computed before the gather: its own rows only
            results[case]["local"] = _step(case, None, rows)["losses"]
    finally:
        cleanup(dist)
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp_losses")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("case", CASES)
def test_ddp_loss_and_gradients_equal_one_process_on_the_global_batch(ranks, case) -> None:
    single = _step(case, None, torch.arange(K))
    terms = {"loss", "contrastive_loss"} if case == "stage0" \
        else {"loss", "in_loss", "cr_loss", "se_loss"}
    assert set(single["losses"]) == terms
    if case != "stage0":
        assert all(single["losses"][t] > 1e-3 for t in terms)  # every CAD term is live
    for rank, res in enumerate(ranks):
        for key, value in single["losses"].items():
            assert res[case]["losses"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (
                f"{case} rank {rank}: {key} is not the global-batch loss")
        assert res[case]["grads"].keys() == single["grads"].keys()
        for name, grad in single["grads"].items():
            assert grad.abs().max() > 0, f"{case}:{name} has no gradient to compare"
            torch.testing.assert_close(res[case]["grads"][name], grad, rtol=1e-9, atol=1e-12,
                                       msg=f"{case} rank {rank}: DDP gradient of {name} differs "
                                           "from the single-process gradient")
        # the comparison can fail: a rank's own rows alone give another loss
        assert res[case]["local"]["loss"] != pytest.approx(single["losses"]["loss"], rel=1e-3)
    if case == "stage0":
        assert "loss.logit_scale.log_scale" in single["grads"]  # the replicated parameter


# --- without processes ---------------------------------------------------------------------------


def test_config_batch_is_global_and_each_rank_takes_its_share() -> None:
    idx = torch.arange(100, 200)
    single = EpochBatches(idx, 20, seed=3)
    shards = [EpochBatches(idx, 20, seed=3, dist=DistInfo(rank=r, world_size=WORLD))
              for r in range(WORLD)]
    assert single.batch_size == single.global_batch_size == 20
    assert [s.batch_size for s in shards] == [10, 10]
    assert all(s.global_batch_size == 20 for s in shards)
    assert all(s.steps_per_epoch == single.steps_per_epoch == 5 for s in shards)
    for epoch in (0, 3):
        for b in range(5):
            together = torch.cat([s.batch(epoch, b) for s in shards])
            assert sorted(together.tolist()) == sorted(single.batch(epoch, b).tolist())
    # a batch larger than the data: every rank takes its whole (equal) share
    small = [EpochBatches(torch.arange(30), 64, seed=0, dist=DistInfo(rank=r, world_size=2))
             for r in range(2)]
    assert [s.batch_size for s in small] == [15, 15] and small[0].steps_per_epoch == 1


def test_a_global_batch_the_world_size_does_not_divide_is_refused() -> None:
    assert per_rank_batch(64, DistInfo(rank=0, world_size=4)) == 16
    assert per_rank_batch(7, None) == 7
    with pytest.raises(ValueError, match="multiple of the world size 2"):
        EpochBatches(torch.arange(100), 21, seed=0, dist=DistInfo(rank=1, world_size=2))
    with pytest.raises(ValueError, match="multiple of the world size 3"):
        per_rank_batch(64, DistInfo(rank=0, world_size=3))


def _unit_rows(rows: int, seed: int) -> torch.Tensor:
    x = torch.randn(rows, D, generator=torch.Generator().manual_seed(seed))
    return F.normalize(x, dim=-1)


@pytest.mark.parametrize("weighting", ["paper_eq7", "appendix_code"])
def test_cad_terms_are_float32_under_bf16_autocast(weighting) -> None:
    """The KL terms (and L_in) ignore bf16 autocast: same float32 values as without it (a bf16
    similarity matrix would move them by ~1e-3)."""
    student, text, image = _unit_rows(24, 1), _unit_rows(24, 2), _unit_rows(24, 3)
    loss = CADLoss(weighting=weighting)
    ref = loss(student, text, image)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = loss(student, text, image)
    for key, value in ref.items():
        assert got[key].dtype == torch.float32, key
        torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-7, msg=key)


def test_ddp_units_hand_the_losses_float32_embeddings_under_autocast() -> None:
    """A head run under bf16 autocast gives bf16 activations; the units normalise them in
    float32, so the losses (and their gradients) are float32."""
    torch.manual_seed(0)
    head = torch.nn.Linear(F_DIM, D)
    feats, text = torch.randn(8, F_DIM), _unit_rows(8, 4)
    stage0 = HeadLoss(head, ContrastiveLoss())
    enc = small_encoder("thermal")
    cad = StudentLoss(enc, CADLoss())
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert head(feats).dtype == torch.bfloat16  # autocast is on
        assert stage0(feats, text)["loss"].dtype == torch.float32
        out = cad(feats, text, _unit_rows(8, 5))
        assert cad.embed(feats).dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in out.values())
