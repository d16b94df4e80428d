"""The paper-scale UniAlign runner on its tiny variant: a tiny CLIP ViT saved in open_clip's
layout, prepared per-modality directories in the documented format, one process and two Gloo
ranks (the DDP path: per-rank batch shares, gradient all-reduce, identical weights on every
rank), gradient accumulation, and clear errors on a bad prepared directory."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from omnibind_train.models.vit import VisionTransformer
from omnibind_train.unialign.paper import PaperUniAlignConfig, load_prepared, run_paper

EMBED = 16
SHAPES = {"audio": (1, 16, 24), "point_cloud": (48, 3), "image": (3, 32, 32)}


def write_prepared(root: Path, modality: str, n: int, labels: int, *, teacher: int | None,
                   seed: int) -> Path:
    rng = np.random.default_rng(seed)
    d = root / modality
    d.mkdir(parents=True)
    np.save(d / "inputs.npy", rng.standard_normal((n, *SHAPES[modality])).astype(np.float16))
    np.save(d / "labels.npy", rng.integers(0, labels, n))
    (d / "labels.json").write_text(json.dumps([f"{modality} label {i}" for i in range(labels)]))
    np.save(d / "label_text.npy", rng.standard_normal((labels, EMBED)).astype(np.float32))
    np.save(d / "anchors.npy", rng.standard_normal((n, EMBED)).astype(np.float32))
    if teacher:
        np.save(d / "teacher.npy", rng.standard_normal((n, teacher)).astype(np.float32))
        np.save(d / "teacher_text.npy", rng.standard_normal((labels, teacher))
                .astype(np.float32))
    return d


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("unialign_paper")
    torch.manual_seed(0)
    visual = VisionTransformer(image_size=32, patch_size=16, width=32, layers=2, heads=2,
                               embed_dim=EMBED, act="gelu")
    save_file({f"visual.{k}": v.contiguous() for k, v in visual.state_dict().items()},
              str(root / "clip.safetensors"))
    data = {"image": write_prepared(root, "image", 20, 4, teacher=None, seed=1),
            "audio": write_prepared(root, "audio", 24, 3, teacher=12, seed=2),
            "point_cloud": write_prepared(root, "point_cloud", 16, 5, teacher=8, seed=3)}
    return {"root": root, "clip": root / "clip.safetensors", "data": data}


def tiny_config(tiny: dict, out: Path, **training) -> PaperUniAlignConfig:
    return PaperUniAlignConfig.from_dict({
        "out_dir": str(out), "device": "cpu", "progress": False,
        "clip_checkpoint": str(tiny["clip"]), "clip_act": "gelu",
        "datasets": {m: {"dir": str(d), "repeat": r} for (m, d), r in
                     zip(tiny["data"].items(), (0.5, 1.0, 2.0), strict=True)},
        "tokenizers": {"audio": {"channels": [0], "patch": 8, "stride": 4},
                       "point_cloud": {"kind": "point", "groups": 4, "group_size": 8,
                                       "point_widths": [8, 16, 16]}},
        "training": {"epochs": 2, "batch_per_modality": 4, "batch_share": "data",
                     "accum_steps": 2, "checkpoint_every": 2, **training}})


def test_the_shipped_config_parses() -> None:
    cfg = PaperUniAlignConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs"
                                        / "paper_unialign.yaml")
    t = cfg.training
    assert t.batch_per_modality * len(cfg.datasets) * t.accum_steps == 2048
    assert t.optim.lr == 2e-4 and t.optim.weight_decay == 0.05 and t.epochs == 100
    assert cfg.moe.r == 4 and cfg.moe.alpha == 32 and cfg.moe.experts == 2


def test_single_process_run_writes_a_trained_model(tiny, tmp_path) -> None:
    path = run_paper(tiny_config(tiny, tmp_path / "run"))
    saved = torch.load(path, weights_only=False)
    assert saved["model_config"]["modalities"] == ["audio", "point_cloud"]
    assert saved["model_config"]["teacher_dims"] == {"audio": 12, "point_cloud": 8}
    assert saved["vocabularies"]["audio"] == [f"audio label {i}" for i in range(3)]
    loss = saved["curves"]["loss"]
    assert len(loss) >= 2 and all(np.isfinite(loss))
    assert any(k.startswith("connectors.audio") for k in saved["model"])
    assert not (tmp_path / "run" / "model.state").exists()


def test_bad_prepared_directory_is_named(tiny, tmp_path) -> None:
    bad = write_prepared(tmp_path, "audio", 10, 3, teacher=None, seed=4)
    np.save(bad / "labels.npy", np.full(10, 7))
    with pytest.raises(ValueError, match="labels outside 0..2"):
        load_prepared(bad, EMBED)
    (bad / "anchors.npy").unlink()
    with pytest.raises(FileNotFoundError, match="anchors.npy is missing"):
        load_prepared(bad, EMBED)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, port: int, cfg_dict: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    from omnibind_train.trainers.distributed import cleanup, init_distributed
    from omnibind_train.unialign import paper

    dist = init_distributed("cpu")
    captured = {}
    train = paper.train_unialign

    def train_and_keep(model, *args, **kwargs):
        curves = train(model, *args, **kwargs)
        captured["state"] = paper.trainable_state(model)
        return curves

    paper.train_unialign = train_and_keep
    try:
        paper.run_paper(PaperUniAlignConfig.from_dict(cfg_dict), dist)
    finally:
        cleanup(dist)
    torch.save(captured, Path(out) / f"rank{rank}.pt")


def test_two_gloo_ranks_train_identical_weights(tiny, tmp_path) -> None:
    cfg = tiny_config(tiny, tmp_path / "ddp")
    mp.spawn(_worker, args=(_free_port(), cfg.to_dict(), str(tmp_path)), nprocs=2, join=True)
    saved = torch.load(tmp_path / "ddp" / "model.pt", weights_only=False)
    assert all(np.isfinite(saved["curves"]["loss"]))
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False)["state"]
              for r in range(2)]
    assert states[0] and set(states[0]) == set(states[1]) == set(saved["model"])
    for k, v in states[0].items():
        torch.testing.assert_close(states[1][k], v, msg=lambda m, k=k: f"ranks differ: {k}")
        torch.testing.assert_close(saved["model"][k], v)
