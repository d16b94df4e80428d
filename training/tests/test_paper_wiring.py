"""The paper config's CAD and AF stages on the real readers, end to end on tiny copies.

``omnibind-train features | cad | af --config training/configs/paper_omnibind.yaml`` on tiny
published-format copies of Touch-and-Go, LLVIP, Caltech-101 + N-Caltech101, ESC-50 and
ShapeNet-part under one ``DATA_ROOT``, a tiny random open_clip checkpoint (open_clip's key
layout, CLIP BPE tokenizer) under ``CKPT_DIR`` and a modality-free index under ``MF_DIR``; the
config's sizes overridden with ``--set`` so each command runs in seconds:

* each student trains on its own data set; the image teacher's input is the paired visible crop
  (LLVIP), the video frame (Touch-and-Go), the Caltech-101 image of the same file (N-Caltech101;
  a recording whose image is missing is dropped and counted), none for audio / point cloud,
  whose loss is then L_in + text-only L_se with L_cr = 0;
* features and teacher embeddings are computed once (a second run reads the cache) and a changed
  reader option gives a new cache key;
* AF trains on the modality-free items' member embeddings with the presence mask;
* a missing data root is one line, exit 2; the simulated pipeline's commands are unchanged.
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from _reader_fixtures import flat_image, voc_xml, write_image
from test_byo_import import VOCAB, _write_vocab
from test_modality_free_minilm import _caltech, _esc50, _shapenet

from omnibind_train.cli import main
from omnibind_train.datasets.modality_free import build_modality_free_index
from omnibind_train.losses import CADLoss
from omnibind_train.pipeline.paper import PaperOmniBindConfig
from omnibind_train.trainers.cad import CADConfig, StudentData, StudentLoss, train_cad

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "training" / "configs" / "paper_omnibind.yaml"
MF_SOURCES = ["caltech101_train", "shapenetpart_train", "esc50_train", "llvip_train",
              "ncaltech101_train", "touchandgo_train"]
TINY = [*(f"data.preprocess.{m}.size=32" for m in ("image", "thermal", "event", "tactile")),
        "af.fusion.dim=16", "encoders.audio.trunk.resize=[32, 32]",
        "cad.batch_size={tactile: 2, thermal: 2, event: 4}", "cad.loop.batch_size=4",
        "cad.loop.epochs=2", "af.loop.batch_size=8", "af.loop.epochs=2",
        f"data.modality_free.train.sources=[{', '.join(MF_SOURCES)}]",
        "progress=false"]


# --- tiny data sets, checkpoint, index ----------------------------------------------------------


def _touch_and_go(root: Path) -> Path:
    rows = []
    for v, video in enumerate(["20220318_020426", "20220511_164750"]):
        for f in range(3):
            name = f"{f:010d}.jpg"
            write_image(root / "dataset" / video / "gelsight_frame" / name,
                        flat_image(10, 14, (20 * f, 40 + 100 * v, 90)))
            write_image(root / "dataset" / video / "video_frame" / name,
                        flat_image(12, 16, (200, 30 * v, 40 * f)))
            if f:
                rows.append(f"{video}/{name},{v + 3}")  # wood / metal
    (root / "label.txt").write_text("\n".join(rows) + "\n")
    (root / "train.txt").write_text("\n".join(rows) + "\n")
    (root / "test.txt").write_text(rows[0] + "\n")
    return root


def _llvip(root: Path) -> Path:
    w, h = 64, 48
    for k in range(3):
        stem = f"01000{k}"
        ir = np.tile((np.arange(w) * 3 + 10 * k).astype(np.uint8), (h, 1))
        write_image(root / "infrared" / "train" / f"{stem}.jpg", np.repeat(ir[..., None], 3, 2))
        write_image(root / "visible" / "train" / f"{stem}.jpg", flat_image(h, w, (50 * k, 90, 9)))
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(
            voc_xml(f"{stem}.jpg", w, h, [("person", 4 + 3 * k, 6, 14 + 3 * k, 26)]))
    for split in ("test",):
        (root / "infrared" / split).mkdir(parents=True)
        (root / "visible" / split).mkdir(parents=True)
    return root


def _tiny_open_clip(path: Path) -> None:
    """A random tiny CLIP in open_clip's key layout, and its BPE tokenizer next to it."""
    from safetensors.torch import save_file

    from omnibind_train.byo.clip_bpe import write_clip_tokenizer
    from omnibind_train.models.vit import TextTransformer, VisionTransformer

    torch.manual_seed(5)
    visual = VisionTransformer(image_size=32, patch_size=8, width=32, layers=1, heads=1,
                               embed_dim=16, act="gelu")
    text = TextTransformer(context_length=16, vocab_size=VOCAB, width=32, layers=1, heads=1,
                           embed_dim=16, act="gelu")
    state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    state.update(text.state_dict())
    state["logit_scale"] = torch.tensor(4.6052)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    vocab = _write_vocab(path.parent / "bpe_simple_vocab_16e6.txt.gz")
    write_clip_tokenizer(vocab, path.parent / "tokenizer", vocab_size=VOCAB, context_length=16)


class StemEmbedder:
    """Bag of word stems (lower case, trailing s dropped), seeded random vectors."""

    identity = "test-stems"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), 128), np.float32)
        for r, t in enumerate(texts):
            for w in re.findall(r"[a-z0-9]+", t.lower()):
                w = w[:-1] if w.endswith("s") and len(w) > 3 else w
                out[r] += np.random.default_rng(zlib.crc32(w.encode())).standard_normal(128)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("paper_wiring")
    data = base / "data"
    _caltech(data / "caltech101" / "101_ObjectCategories", ".jpg")
    _caltech(data / "N-Caltech101" / "Caltech101", ".bin")
    (data / "caltech101" / "101_ObjectCategories" / "dalmatian" / "image_0003.jpg").unlink()
    _esc50(data / "ESC-50")
    _shapenet(data / "shapenetcore_partanno_segmentation_benchmark_v0_normal")
    _llvip(data / "LLVIP")
    _touch_and_go(data / "touch_and_go")
    _tiny_open_clip(base / "ckpt" / "ViT-L-14" / "open_clip_model.safetensors")
    return {"data": data, "ckpt": base / "ckpt", "mf": base / "mf", "cache": base / "cache"}


@pytest.fixture
def paths(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("DATA_ROOT", str(env["data"]))
    monkeypatch.setenv("CKPT_DIR", str(env["ckpt"]))
    monkeypatch.setenv("MF_DIR", str(env["mf"]))
    return env


def _args(paths: dict[str, Path], *extra: str) -> list[str]:
    out = ["--config", str(CONFIG), "--cache-dir", str(paths["cache"]), "--device", "cpu"]
    for s in [*TINY, *extra]:
        out += ["--set", s]
    return out


# --- the trainer's per-student form -------------------------------------------------------------


def test_a_student_without_image_teacher_trains_on_l_in_and_text_l_se() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 6)

    class Enc(torch.nn.Module):
        trunk_frozen = True

        def __init__(self) -> None:
            super().__init__()
            self.head = head

    loss = CADLoss(weighting="paper_eq7")
    x, text = torch.randn(5, 8), torch.nn.functional.normalize(torch.randn(5, 6), dim=-1)
    out = StudentLoss(Enc(), loss)(x, text, None)
    student = torch.nn.functional.normalize(head(x), dim=-1)
    want = loss(student, text, None)
    assert float(out["cr_loss"]) == 0.0
    torch.testing.assert_close(out["loss"], out["in_loss"] + out["se_loss"])
    torch.testing.assert_close(out["loss"], want["loss"])


def test_train_cad_takes_per_student_sample_sets() -> None:
    from test_trainers import F_DIM, D, small_encoder

    torch.manual_seed(0)
    students = {"audio": small_encoder("audio"), "thermal": small_encoder("thermal")}
    feats = {m: torch.randn(1, n, F_DIM) for m, n in (("audio", 6), ("thermal", 10))}
    emb = torch.nn.functional.normalize(torch.randn(10, D), dim=-1)
    data = {"audio": StudentData(feats["audio"], torch.ones(6, dtype=torch.bool),
                                 text=emb[:6], labels=torch.arange(6) % 3),
            "thermal": StudentData(feats["thermal"], torch.ones(10, dtype=torch.bool),
                                   text=emb, image=torch.nn.functional.normalize(
                                       torch.randn(10, D), dim=-1),
                                   teacher_valid=torch.arange(10) != 4,
                                   labels=torch.arange(10) % 2)}
    cfg = CADConfig.from_dict({"students": ["thermal", "audio"], "schedule": "per_student",
                               "batch_size": {"audio": 3, "thermal": 3},
                               "loop": {"epochs": 1, "batch_size": 3, "log_every": 1}})
    result = train_cad(students, data, None, None, None, None, cfg, progress=False)
    assert result.steps == 2 + 3  # audio 6 // 3, thermal 9 usable // 3
    with pytest.raises(ValueError, match="student audio has no teachers"):
        train_cad(students, {**data, "audio": StudentData(feats["audio"],
                                                          torch.ones(6, dtype=torch.bool))},
                  None, None, None, None, cfg, progress=False)


# --- end to end ---------------------------------------------------------------------------------


def test_missing_data_root_is_one_line(monkeypatch, capsys, tmp_path) -> None:
    for name in ("DATA_ROOT", "CKPT_DIR", "MF_DIR"):
        monkeypatch.delenv(name, raising=False)
    assert main(["cad", "--config", str(CONFIG), "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "paper-scale OmniBind config" in err and "DATA_ROOT is not set" in err
    assert err.count("\n") == 1
    assert main(["stage0", "--config", str(CONFIG)]) == 2
    assert "its commands are features, cad, af, eval, export, all" in capsys.readouterr().err


def test_features_then_cad_on_the_real_readers(paths, capsys) -> None:
    assert main(["features", *_args(paths)]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "[features] thermal: llvip_train 6 samples" in out
    assert "image teacher paired" in out
    assert "[features] event: ncaltech101_train 10 samples" in out
    assert "image teacher caltech101_train, 1 without a paired image" in out
    assert "[features] audio: esc50_train 12 samples" in out and "image teacher none" in out
    cache = paths["cache"] / "features" / "paper"
    files = sorted(cache.rglob("*.safetensors"))
    # student inputs of 5 sources + paired images of 3 (touch, thermal, event)
    assert len(files) == 8, files
    stamps = {f: f.stat().st_mtime_ns for f in files}

    assert main(["cad", *_args(paths)]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "[cad] thermal: llvip_train, 6 samples, image teacher paired -> terms in+cr+se" in out
    assert "[cad] event: ncaltech101_train, 9 samples, image teacher caltech101_train -> " \
           "terms in+cr+se" in out
    assert "[cad] audio: esc50_train, 12 samples, image teacher none -> terms in+se" in out
    assert "[cad] point_cloud: shapenetpart_train, 9 samples, image teacher none -> " \
           "terms in+se" in out
    assert "train (in-sample) zero-shot top-1" in out
    # the caches were read, not recomputed
    assert {f: f.stat().st_mtime_ns for f in sorted(cache.rglob("*.safetensors"))} == stamps
    final = paths["cache"] / "runs" / "paper_omnibind" / "cad" / "final"
    from omnibind_train.trainers.checkpoint import load_checkpoint

    ckpt = load_checkpoint(final)
    assert set(ckpt.weights) >= {"tactile", "thermal", "event", "audio", "point_cloud"}
    assert ckpt.config["data"]["cad"]["event"]["image"] == "caltech101_train"
    # a changed reader option is another key: recomputed next to the old file
    assert main(["features", *_args(paths, "data.sources.llvip_train.options={split: train, "
                                           "seed: 1}")]) == 0
    capsys.readouterr()
    assert len(list((cache / "llvip_train").glob("*.safetensors"))) == 4


def test_af_on_the_modality_free_items(paths, capsys) -> None:
    if not (paths["cache"] / "runs" / "paper_omnibind" / "cad" / "final").exists():
        assert main(["cad", *_args(paths)]) == 0
    cfg = PaperOmniBindConfig.from_yaml(CONFIG, TINY)
    sources = {k: cfg.open_source(k) for k in MF_SOURCES}
    index = build_modality_free_index(sources, paths["mf"] / "labelmap.yaml",
                                      paths["mf"] / "train_index.jsonl", embedder=StemEmbedder(),
                                      num_items=60, seed=0)
    assert max(it["size"] for it in index) >= 4
    capsys.readouterr()
    assert main(["af", *_args(paths)]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "[af] modality-free train: 60 items" in out
    assert re.search(r"\[af\] train \(no test index\) fused top-1 \(modality-free items\): "
                     r"af [0-9.]+, mean [0-9.]+, linear [0-9.]+, concat [0-9.]+", out), out
    for kind in ("af", "linear", "concat"):
        assert (paths["cache"] / "runs" / "paper_omnibind" / "af" / kind / "final").is_dir()

    from omnibind_train.pipeline.paper_run import PaperRun

    run = PaperRun(PaperOmniBindConfig.from_yaml(
        CONFIG, [*TINY, f"cache_dir={paths['cache']}", "device=cpu"]))
    data, labels, idx = run.fusion_data("train")
    arrays = idx.member_arrays()
    from omnibind_train.models.fusion import MODALITY_SLOTS

    for s, m in enumerate(MODALITY_SLOTS):
        want = torch.from_numpy(arrays[m]["present"]) if m in arrays \
            else torch.zeros(60, dtype=torch.bool)
        # present where the index has a member (every fixture sample preprocesses)
        assert torch.equal(data.present[:, s], want), m
        assert torch.all(data.tokens[~want, s] == 0)
        live = data.tokens[want, s]
        torch.testing.assert_close(live.norm(dim=-1), torch.ones(live.shape[0]))
    assert labels.shape == (len(idx.label_names), 16)
    assert torch.equal(data.labels, torch.from_numpy(arrays["label"]["index"]))
