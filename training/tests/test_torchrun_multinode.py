"""Multi-node ``torchrun``: two launchers on this machine, each one "node" with one process,
meet through the c10d rendezvous on 127.0.0.1 (Gloo), exactly as N nodes do::

    torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d \\
        --rdzv-endpoint 127.0.0.1:<port> --rdzv-id <id> <script>

(on real nodes: ``--rdzv-endpoint <node 0's host>:29500`` and ``--nproc-per-node <GPUs>``,
the same line on every node). The two ranks run a few CAD steps with per-student global batch
sizes (thermal 16, event 8: each rank takes half) and the per-student schedule. Checked: the
rendezvous gives a world of 2 with distinct ranks, each rank draws half of each student's
global batch, both ranks end with bitwise-identical weights, and those weights are the
single-process run's on the same global batches (the losses are computed over the gathered
global batch, see ``trainers.distributed``).

Run as a script (``--worker OUT``) it is the worker the launchers start.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
#: Per-student global batches of the run (each rank takes half).
BATCHES = {"thermal": 16, "event": 8}
N = 64


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cad(dist, drawn: list | None = None):
    """A few CAD steps: two feature students, no per-rank randomness (one view, no dropout)."""
    from _tiny import clustered
    from test_trainers import F_DIM, C, D, centres_to_text, small_encoder

    from omnibind_train.trainers import LoopConfig, StudentData, train_cad
    from omnibind_train.trainers import cad as cad_module
    from omnibind_train.trainers.cad import CADConfig

    _, labels, centres = clustered(N, C, F_DIM)
    text = centres_to_text(centres)[labels]
    image = torch.nn.functional.normalize(text + 0.1 * torch.randn(
        N, D, generator=torch.Generator().manual_seed(1)), dim=-1)
    ones = torch.ones(N, dtype=torch.bool)
    students, data = {}, {}
    for i, m in enumerate(BATCHES):
        feats, _, _ = clustered(N, C, F_DIM, noise=0.5, seed=i + 1, centres=centres)
        students[m] = small_encoder(m)
        data[m] = StudentData(feats.unsqueeze(0), ones)
    cfg = CADConfig(loop=LoopConfig(epochs=2, batch_size=32, amp=False), students=list(BATCHES),
                    batch_size=dict(BATCHES), lr={"thermal": 1e-3, "event": 5e-4},
                    schedule="per_student")
    if drawn is not None:
        part_of = {id(enc.head): m for m, enc in students.items()}
        forward = cad_module.StudentLoss.forward

        def spy(self, x, text, image):
            drawn.append((part_of[id(self.part)], int(x.shape[0])))
            return forward(self, x, text, image)

        cad_module.StudentLoss.forward = spy
    res = train_cad(students, data, text, image, ones, labels, cfg, dist=dist, progress=False)
    params = {f"{m}.{k}": v.detach().clone() for m, enc in students.items()
              for k, v in enc.head.state_dict().items()}
    return res, params


def _worker(out: Path) -> None:
    torch.set_num_threads(1)
    from omnibind_train.trainers import init_distributed
    from omnibind_train.trainers.distributed import cleanup

    dist = init_distributed("cpu")
    drawn: list[tuple[str, int]] = []
    try:
        res, params = _cad(dist, drawn)
    finally:
        cleanup(dist)
    torch.save({"rank": dist.rank, "world": dist.world_size, "backend": dist.backend,
                "group_rank": int(os.environ["GROUP_RANK"]), "steps": res.steps,
                "losses": res.losses, "params": params, "drawn": drawn},
               out / f"rank{dist.rank}.pt")


def _launch(out: Path, port: int) -> list[subprocess.Popen]:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent),
                                          os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
           "--nproc-per-node", "1", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"omnibind-test-{port}",
           "--max-restarts", "0", str(Path(__file__)), "--worker", str(out)]
    procs = []
    for node in range(2):
        log = (out / f"launcher{node}.log").open("w")
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      cwd=HERE.parent))
        time.sleep(0.5)  # the first launcher hosts the rendezvous store
    return procs


@pytest.mark.slow
def test_two_node_c10d_rendezvous_trains_the_same_weights(tmp_path) -> None:
    procs = _launch(tmp_path, _free_port())
    try:
        codes = [p.wait(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = "\n".join((tmp_path / f"launcher{i}.log").read_text() for i in range(2))
    assert codes == [0, 0], logs[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world"] == 2 and r["backend"] == "gloo" for r in ranks)
    assert sorted(r["group_rank"] for r in ranks) == [0, 1]  # two nodes, one process each
    # each rank draws half of each student's global batch
    for r in ranks:
        assert {m: {b for s, b in r["drawn"] if s == m} for m in BATCHES} == {
            m: {b // 2} for m, b in BATCHES.items()}
    assert ranks[0]["drawn"] == ranks[1]["drawn"]  # same student at the same step
    # both ranks end with identical weights and log the same global loss
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2 * (N // 16 + N // 8)
    assert ranks[0]["params"].keys() == ranks[1]["params"].keys()
    for k, v in ranks[0]["params"].items():
        torch.testing.assert_close(ranks[1]["params"][k], v, rtol=0, atol=0, msg=k)
    assert ranks[0]["losses"] == pytest.approx(ranks[1]["losses"], rel=1e-6)
    # ... and the single-process run's on the same global batches
    single, params = _cad(None)
    assert single.steps == ranks[0]["steps"]
    for k, v in params.items():
        torch.testing.assert_close(ranks[0]["params"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    for key, value in single.losses.items():
        assert ranks[0]["losses"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.path[:0] = [str(HERE), str(HERE.parent)]
        _worker(Path(sys.argv[2]))
    else:
        sys.exit(f"usage: {sys.argv[0]} --worker OUT_DIR (started by torch.distributed.run)")
