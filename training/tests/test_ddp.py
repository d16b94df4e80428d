"""DDP smoke test: two Gloo processes on the loopback interface train every stage on synthetic
data; the losses are finite and both ranks end with identical parameters."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

WORLD = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    from test_resume import _af, _cad, _stage0

    from omnibind_train.trainers import init_distributed
    from omnibind_train.trainers.checkpoint import trainable_state
    from omnibind_train.trainers.distributed import cleanup

    dist = init_distributed("cpu")
    assert dist.world_size == WORLD and dist.rank == rank and dist.backend == "gloo"
    results = {}
    try:
        for name, train in (("stage0", _stage0), ("cad", _cad), ("af", _af)):
            res, modules = train(Path(out_dir) / name, dist=dist)
            results[name] = {"losses": res.losses, "steps": res.steps,
                             "params": {f"{k}.{n}": t.detach().clone() for k, m in modules.items()
                                        for n, t in trainable_state(m).items()}}
    finally:
        cleanup(dist)
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_gloo_ranks_train_identically(tmp_path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for stage in ("stage0", "cad", "af"):
        assert r0[stage]["steps"] == r1[stage]["steps"] > 0
        for res in (r0, r1):
            assert all(torch.isfinite(torch.tensor(v)) for v in res[stage]["losses"].values())
        assert r0[stage]["params"].keys() == r1[stage]["params"].keys()
        for name, t in r0[stage]["params"].items():
            torch.testing.assert_close(r1[stage]["params"][name], t, rtol=0, atol=0,
                                       msg=f"{stage}:{name} differs between ranks")
    # each rank saw its own share of the data: the (rank-local) losses differ
    assert r0["stage0"]["losses"]["loss"] != r1["stage0"]["losses"]["loss"]
    # only rank 0 wrote checkpoints
    assert (tmp_path / "stage0" / "final").is_dir()
    # the run under DDP halves the steps per epoch (each rank sees half the samples)
    single = torch.load(tmp_path / "rank0.pt", weights_only=True)["stage0"]["steps"]
    assert single == 6 * ((120 // WORLD) // 25)


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
