"""DDP against single-process training: two Gloo processes on the loopback interface train with the
same data and seeds as one process, and the results are compared.

A config's ``batch_size`` is the global batch: each of the two ranks takes half of it, and the
``DistributedSampler`` deals rank r the positions r, r + 2, ... of one shuffled order, so at
every step the two ranks' batches together are exactly the single-process batch.

* AF: Eq. 9 is a per-sample loss against the label table, so DDP's averaged gradient is the
  single-process gradient. With the batch built without random choices (no subset swaps, no
  noise, every other label a negative) a real single-process run must end with the same weights
  and the same loss as the DDP run.
* Stage 0 and CAD: their contrastive and distillation losses are computed over the gathered
  global batch (negatives and ``k x k`` matrices of every rank's rows), so a DDP run and a
  single-process run with the same global batch optimise the same objective with the same
  gradients: without per-rank random choices (one feature view, feature students, no dropout)
  they must end with the same weights, and every rank logs the global loss.
  ``test_ddp_losses.py`` checks one step's loss and gradients in float64.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from _tiny import clustered
from test_trainers import F_DIM, C, D, centres_to_text, small_encoder

from omnibind_train.models.fusion import MODALITY_SLOTS, FusionConfig
from omnibind_train.trainers import (
    AFConfig,
    FusionData,
    LoopConfig,
    Stage0Config,
    StudentData,
    train_cad,
    train_fusion,
    train_stage0,
)
from omnibind_train.trainers.cad import CADConfig
from omnibind_train.trainers.checkpoint import trainable_state
from omnibind_train.trainers.distributed import DistInfo

WORLD = 2
#: AF's global batch (each rank takes half of it).
AF_BATCH = 20
#: Stage 0's and CAD's global batch.
GLOBAL_BATCH = 40


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _params(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{k}.{n}": t.detach().clone() for k, m in modules.items()
            for n, t in trainable_state(m).items()}


def _af(dist: DistInfo | None, batch_size: int = AF_BATCH):
    """AF on clustered embeddings, every modality present, batches without random choices."""
    n = 100
    emb, present, centres = {}, {}, None
    for i, m in enumerate(MODALITY_SLOTS):
        emb[m], labels, centres = clustered(n, C, D, noise=1.5, seed=i, centres=centres)
        present[m] = torch.ones(n, dtype=torch.bool)
    records = [(i, list(MODALITY_SLOTS[: 1 + i % len(MODALITY_SLOTS)])) for i in range(n)]
    data = FusionData.build(emb, present, labels, records)
    cfg = AFConfig(loop=LoopConfig(epochs=4, batch_size=batch_size),
                   fusion=FusionConfig(dim=D, num_heads=4, zero_init=False),
                   random_subset_prob=0.0, noise_prob=0.0, negatives=False)
    torch.manual_seed(0)
    head = cfg.fusion.build()
    res = train_fusion(head, data, centres, cfg, dist=dist, progress=False)
    return res, {"fusion": head}


def _stage0_global(dist: DistInfo | None):
    """Stage 0 with a learnable temperature, one view, no dropout: no per-rank randomness."""
    feats, labels, centres = clustered(120, C, F_DIM, noise=0.5)
    enc = small_encoder("image")
    cfg = Stage0Config(loop=LoopConfig(epochs=3, batch_size=GLOBAL_BATCH))
    res = train_stage0(enc, feats.unsqueeze(0), centres_to_text(centres)[labels],
                       torch.ones(120, dtype=torch.bool), cfg, dist=dist, progress=False)
    return res, {"image": enc}


def _cad_global(dist: DistInfo | None):
    """CAD, all three terms, two feature students (no point augmentation: no per-rank
    randomness), the appendix code's weighting and a learnable temperature."""
    n = 120
    _, labels, centres = clustered(n, C, F_DIM)
    text = centres_to_text(centres)[labels]
    image = torch.nn.functional.normalize(text + 0.1 * torch.randn(
        n, D, generator=torch.Generator().manual_seed(1)), dim=-1)
    feats, _, _ = clustered(n, C, F_DIM, noise=0.5, seed=1, centres=centres)
    ones = torch.ones(n, dtype=torch.bool)
    students = {"thermal": small_encoder("thermal"), "audio": small_encoder("audio")}
    data = {"thermal": StudentData(feats.unsqueeze(0), ones),
            "audio": StudentData(feats.flip(-1).unsqueeze(0), ones)}
    cfg = CADConfig(loop=LoopConfig(epochs=3, batch_size=GLOBAL_BATCH), students=list(students),
                    weighting="appendix_code", learn_temperature=True)
    res = train_cad(students, data, text, image, ones, labels, cfg, dist=dist, progress=False)
    return res, students


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    from test_resume import _cad, _stage0

    from omnibind_train.trainers import init_distributed
    from omnibind_train.trainers.distributed import cleanup

    dist = init_distributed("cpu")
    assert dist.world_size == WORLD and dist.rank == rank and dist.backend == "gloo"
    results = {}
    try:
        for name, train in (("stage0", _stage0), ("cad", _cad)):
            res, modules = train(Path(out_dir) / name, dist=dist)
            results[name] = {"losses": res.losses, "steps": res.steps, "params": _params(modules)}
        for name, train in (("af", _af), ("stage0_global", _stage0_global),
                            ("cad_global", _cad_global)):
            res, modules = train(dist)
            results[name] = {"losses": res.losses, "steps": res.steps,
                             "params": _params(modules)}
    finally:
        cleanup(dist)
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, Path]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return (torch.load(out / "rank0.pt", weights_only=True),
            torch.load(out / "rank1.pt", weights_only=True), out)


@pytest.mark.slow
def test_ddp_af_equals_a_single_process_run_with_the_global_batch(ranks) -> None:
    r0, r1, _ = ranks
    single, modules = _af(None)
    weights = _params(modules)
    assert r0["af"]["steps"] == r1["af"]["steps"] == single.steps > 0
    assert r0["af"]["params"].keys() == weights.keys()
    for name, t in weights.items():
        ddp = r0["af"]["params"][name]
        if name == "fusion.qkv.bias":
            # The key bias shifts every score of a row equally: softmax cancels it, so its
            # gradient is zero up to rounding, which AdamW normalises into steps of up to lr.
            # It is compared within that bound; the query and value biases exactly.
            d = t.numel() // 3
            torch.testing.assert_close(ddp[d:2 * d], t[d:2 * d], rtol=0,
                                       atol=single.steps * AFConfig().optim.lr)
            ddp, t = torch.cat([ddp[:d], ddp[2 * d:]]), torch.cat([t[:d], t[2 * d:]])
        torch.testing.assert_close(ddp, t, rtol=1e-5, atol=1e-6,
                                   msg=f"af:{name}: DDP differs from the single-process run")
    # each rank's loss is the mean over its half of the batch: their mean is the global loss
    ddp_loss = (r0["af"]["losses"]["loss"] + r1["af"]["losses"]["loss"]) / 2
    assert ddp_loss == pytest.approx(single.losses["loss"], rel=1e-4, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("stage, train", [("stage0_global", _stage0_global),
                                          ("cad_global", _cad_global)])
def test_ddp_stage0_and_cad_equal_a_single_process_run_with_the_global_batch(ranks, stage,
                                                                             train) -> None:
    r0, r1, _ = ranks
    single, modules = train(None)
    weights = _params(modules)
    assert r0[stage]["steps"] == r1[stage]["steps"] == single.steps > 0
    assert r0[stage]["params"].keys() == weights.keys()
    for name, t in weights.items():
        torch.testing.assert_close(r0[stage]["params"][name], t, rtol=1e-5, atol=1e-6,
                                   msg=f"{stage}:{name}: DDP differs from the single-process run")
    # every rank logs the global-batch loss (and the learned temperature), not its own half's
    assert single.losses.keys() == r0[stage]["losses"].keys()
    for key, value in single.losses.items():
        for rank, res in enumerate((r0, r1)):
            assert res[stage]["losses"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (
                f"{stage} rank {rank}: {key}")


@pytest.mark.slow
def test_ranks_end_identical_and_only_rank0_writes(ranks) -> None:
    r0, r1, out = ranks
    for stage in ("stage0", "cad", "af"):
        assert r0[stage]["steps"] == r1[stage]["steps"] > 0
        for res in (r0, r1):
            assert all(torch.isfinite(torch.tensor(v)) for v in res[stage]["losses"].values())
        assert r0[stage]["params"].keys() == r1[stage]["params"].keys()
        for name, t in r0[stage]["params"].items():
            torch.testing.assert_close(r1[stage]["params"][name], t, rtol=0, atol=0,
                                       msg=f"{stage}:{name} differs between ranks")
    assert (out / "stage0" / "final").is_dir()
    assert not any((out / "stage0").glob("**/*.tmp.*"))


@pytest.mark.slow
def test_torchrun_cli_runs_the_stages_on_two_ranks(tmp_path_factory) -> None:
    """``torchrun --nproc_per_node 2 -m omnibind_train.cli all`` (data -> AF) on tiny data: every
    stage reads checkpoints rank 0 has just written, so this catches missing barriers."""
    import subprocess
    import sys

    from _tiny import REPO, TINY_CONFIG, tiny_cache

    cache = tiny_cache(tmp_path_factory)
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "omnibind_train.cli", "all", "--config", str(TINY_CONFIG), "--cache-dir",
           str(cache), "--no-progress", "--threads", "1", "--skip", "eval,export",
           "--set", "name=torchrun"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = cache / "runs" / "torchrun"
    for stage in ("stage0/final", "cad/final", "af/af/final", "af/linear/final"):
        assert (run / stage / "weights.safetensors").exists(), stage
    assert out.stdout.count("[af] val fused top-1") == 1  # only rank 0 reports
