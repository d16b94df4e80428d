"""Binding under torchrun (two Gloo processes on the loopback interface) and the paper-scale
runner on tiny real experts.

* The gathered contrastive loss on each rank's half of a batch equals the single-process loss on
  the whole batch, and after the gradient all-reduce the parameter gradients equal the
  single-process ones (also for L_dec, a per-row mean averaged over ranks).
* :mod:`omnibind_train.binding.paper` end to end on two ranks: tiny experts in their published
  checkpoint layouts, tiny pools in published file formats (jpg/png, wav/flac, npy/npz, caption
  text), banks / tuples / projectors / routers written, losses finite and falling, ranks
  identical, the tuples equal to the single-process ``build_tuples``; a second run redoes only
  what was deleted.
* A training run killed mid-way resumes from its checkpoint to the same weights and curve.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from omnibind_train.binding.bank import EmbeddingBank
from omnibind_train.binding.losses import decoupling_loss, info_nce
from omnibind_train.binding.model import BindingModel, SpaceInfo
from omnibind_train.binding.pseudo_pairs import PseudoTuples, build_tuples, parse_retrievers
from omnibind_train.binding.train_binding import (
    ProjectorTraining,
    _mean_over_ranks,
    all_reduce_grads,
    rank_slice,
    train_projectors,
)
from omnibind_train.trainers.distributed import DistInfo

WORLD = 2
N, D_IN, D = 12, 6, 5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _join(rank: int, port: int) -> DistInfo:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    from omnibind_train.trainers import init_distributed

    dist = init_distributed("cpu")
    assert dist.world_size == WORLD and dist.rank == rank and dist.backend == "gloo"
    return dist


def _nce_problem():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(N, D_IN, generator=g), torch.randn(N, D, generator=g)
    y = torch.nn.functional.normalize(y, dim=-1)
    targets = (torch.rand(N, 3, generator=g) > 0.5).float()
    torch.manual_seed(0)
    proj = torch.nn.Linear(D_IN, D)
    gate = torch.nn.Linear(D_IN, 3)
    return x, y, targets, proj, gate


def _nce_loss(x, y, targets, proj, gate, dist=None):
    """Eq. 2 on projected rows + lambda L_dec (the per-row mean averaged over ranks)."""
    p = torch.nn.functional.normalize(proj(x), dim=-1)
    nce = info_nce(p, y)
    dec = decoupling_loss(torch.sigmoid(gate(x)), targets)
    if dist is not None:
        dec = _mean_over_ranks(dec)
    return nce, nce + 3.0 * dec


def _worker(rank: int, port: int, out_dir: str, tiny_root: str) -> None:
    from _binding_paper_tiny import tiny_tokenizer

    from omnibind_train.binding import paper
    from omnibind_train.trainers.distributed import cleanup

    dist = _join(rank, port)
    results: dict = {}
    try:
        x, y, targets, proj, gate = _nce_problem()
        idx = rank_slice(torch.arange(N), dist)
        nce, loss = _nce_loss(x[idx], y[idx], targets[idx], proj, gate, dist)
        loss.backward()
        params = list(proj.parameters()) + list(gate.parameters())
        all_reduce_grads(params, dist)
        results["nce"] = {"nce": float(nce.detach()), "loss": float(loss.detach()),
                          "grads": [p.grad.clone() for p in params]}

        cfg = paper.PaperBindingConfig.from_dict(torch.load(
            Path(tiny_root) / "cfg.pt", weights_only=False))
        first = paper.run(cfg, dist, tokenizer_factory=tiny_tokenizer)
        results["first"] = first
        from safetensors.torch import load_file

        train = Path(cfg.out_dir) / "train"
        results["weights"] = {f.name: load_file(str(f))
                              for f in sorted(train.glob("*.safetensors"))}
        # a second run: rank 0 deletes one bank chunk and a variant's routers in between
        from omnibind_train.trainers.distributed import barrier

        barrier(dist)
        if dist.is_main:
            chunk = Path(cfg.out_dir) / "bank" / "chunks" / "clap" / "audio" / "000001.npz"
            stamps = {str(p): p.stat().st_mtime_ns for p in
                      (Path(cfg.out_dir) / "bank" / "chunks").rglob("*.npz") if p != chunk}
            results["stamps"] = stamps
            chunk.unlink()
            (Path(cfg.out_dir) / "bank" / "manifest.json").unlink()
            (train / "routers-base.safetensors").unlink()
        barrier(dist)
        results["second"] = paper.run(cfg, dist, tokenizer_factory=tiny_tokenizer)
    finally:
        cleanup(dist)
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from _binding_paper_tiny import tiny_config, write_experts, write_pools

    root = tmp_path_factory.mktemp("paper")
    cfg = tiny_config(root, write_experts(root / "checkpoints"), write_pools(root / "pools"))
    torch.save(cfg.to_dict(), root / "cfg.pt")
    return root, cfg


@pytest.fixture(scope="module")
def ranks(tiny, tmp_path_factory: pytest.TempPathFactory):
    root, _ = tiny
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(_free_port(), str(out), str(root)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_gathered_info_nce_and_grads_equal_single_process(ranks) -> None:
    x, y, targets, proj, gate = _nce_problem()
    nce, loss = _nce_loss(x, y, targets, proj, gate)
    loss.backward()
    nce, loss = nce.detach(), loss.detach()
    grads = [p.grad for p in list(proj.parameters()) + list(gate.parameters())]
    for r in ranks:
        assert r["nce"]["nce"] == pytest.approx(float(nce), rel=1e-6)
        assert r["nce"]["loss"] == pytest.approx(float(loss), rel=1e-6)
        for got, want in zip(r["nce"]["grads"], grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_paper_runner_two_ranks_end_to_end(ranks, tiny) -> None:
    _, cfg = tiny
    from omnibind_train.binding import paper

    out = Path(cfg.out_dir)
    bank = paper.load_bank(out / "bank")
    assert set(bank.emb) == {"eva18b", "e14p", "clap", "uni3d", "ib"}
    assert set(bank.emb["uni3d"]) == {"point_cloud", "image", "text"}
    np.testing.assert_array_equal(bank.emb["uni3d"]["image"], bank.emb["e14p"]["image"])
    assert bank.size("text") == 18 and bank.size("image") == 10  # README.txt is not an image
    for m in ("image", "audio", "point_cloud", "text"):
        assert bank.valid[m].all(), m
    for space, per in bank.emb.items():
        for m, e in per.items():
            e = torch.as_tensor(np.asarray(e))
            assert torch.isfinite(e).all() and e.shape[1] == (24 if space == "clap" else 16)
            torch.testing.assert_close(e.norm(dim=-1), torch.ones(len(e)), atol=1e-4, rtol=0)
            assert e.std(dim=0).mean() > 1e-3, f"{space}/{m}: items embed identically"
    np.testing.assert_array_equal(bank.styles, np.repeat([0, 1, 2], 6))
    # the sharded search reproduces the single-process tuples
    tuples = PseudoTuples.load(out / "pairs" / "tuples.npz")
    single = build_tuples(bank, parse_retrievers(cfg.retrievers),
                          ["image", "audio", "point_cloud", "text"], hubs=cfg.hubs)
    assert len(tuples) == len(single) == 48
    for m in single.index:
        np.testing.assert_array_equal(tuples.index[m], single.index[m])
    np.testing.assert_array_equal(tuples.query, single.query)
    for f in ("projectors", "routers-base", "routers-full"):
        assert (out / "train" / f"{f}.safetensors").exists()
    assert not list((out / "train").glob("*.state.pt"))
    r0, r1 = ranks
    curves = r0["first"]["curves"]
    assert set(curves) == {"projectors", "routers/base", "routers/full"}
    proj = np.asarray(curves["projectors"])
    assert np.isfinite(proj).all() and proj[-3:].mean() < 0.8 * proj[:3].mean()
    for v in ("base", "full"):
        c = {k: np.asarray(x) for k, x in curves[f"routers/{v}"].items()}
        assert all(np.isfinite(x).all() for x in c.values())
        assert c["loss"][-3:].mean() < c["loss"][:3].mean()
        assert c["dec"][-3:].mean() < c["dec"][:3].mean()
    # every rank logs the global loss and holds the same weights
    assert r1["first"]["curves"]["projectors"] == pytest.approx(curves["projectors"], rel=1e-5)
    for name, w in r0["weights"].items():
        for k, t in w.items():
            torch.testing.assert_close(r1["weights"][name][k], t, rtol=0, atol=0)


def test_paper_runner_resume_redoes_only_what_is_missing(ranks, tiny) -> None:
    _, cfg = tiny
    r0 = ranks[0]
    second = r0["second"]
    assert set(second["curves"]) == {"routers/base"}
    assert second["curves"]["routers/base"]["loss"] == pytest.approx(
        r0["first"]["curves"]["routers/base"]["loss"], rel=1e-5)
    for path, stamp in r0["stamps"].items():
        assert Path(path).stat().st_mtime_ns == stamp, f"{path} was recomputed"
    assert (Path(cfg.out_dir) / "bank" / "chunks" / "clap" / "audio" / "000001.npz").exists()
    assert (Path(cfg.out_dir) / "train" / "routers-base.safetensors").exists()


# --- resume from a mid-run checkpoint (one process) --------------------------------------------

def _tiny_problem():
    g = torch.Generator().manual_seed(0)

    def unit(n, d):
        return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)

    n = 40
    emb = {"t": {"text": unit(n, 8), "image": unit(n, 8)},
           "a": {"audio": unit(n, 6), "text": unit(n, 6)}}
    inst = {m: np.arange(n) for m in ("text", "image", "audio")}
    bank = EmbeddingBank(emb, inst, np.arange(n) % 2, {m: np.zeros(n, int) for m in inst})
    tuples = PseudoTuples({m: np.random.default_rng(1).permutation(n) for m in inst},
                          np.zeros(n, np.int64), tuple(inst))
    torch.manual_seed(3)
    spaces = [SpaceInfo("t", 8, ("text", "image")), SpaceInfo("a", 6, ("audio", "text"))]
    return BindingModel(spaces, spaces[0], projector_heads=2, projector_hidden=16), bank, tuples


class _Killed(Exception):
    pass


class _DiesAfter(dict):
    """A tuple index that raises after ``limit`` reads (a job killed mid-run)."""

    def __init__(self, data, limit: int) -> None:
        super().__init__(data)
        self.left = limit

    def __getitem__(self, key):
        self.left -= 1
        if self.left < 0:
            raise _Killed
        return super().__getitem__(key)


def test_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    cfg = ProjectorTraining(heads=2, hidden_dim=16, epochs=3, batch_size=8)
    model, bank, tuples = _tiny_problem()
    full = train_projectors(model, bank, tuples, cfg)
    want = {k: v.clone() for k, v in model.projectors.state_dict().items()}

    model, bank, tuples = _tiny_problem()
    state = tmp_path / "proj.state.pt"
    reads_per_step = 4  # the two anchors (text, image) + space a's audio and text
    killed = PseudoTuples(_DiesAfter(tuples.index, 7 * reads_per_step + 2), tuples.query,
                          tuples.modalities)
    with pytest.raises(_Killed):
        train_projectors(model, bank, killed, cfg, state_path=state, checkpoint_every=3)
    saved = torch.load(state, weights_only=True)
    assert 0 < saved["step"] < len(full)
    model, bank, tuples = _tiny_problem()  # a fresh process: weights from the checkpoint
    resumed = train_projectors(model, bank, tuples, cfg, state_path=state, checkpoint_every=3)
    assert resumed == pytest.approx(full, rel=1e-6)
    for k, v in model.projectors.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=1e-6, atol=1e-7)
