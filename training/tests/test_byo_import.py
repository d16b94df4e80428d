"""``omnibind-train import``: bundles from a user's open_clip / ImageBind checkpoint.

Tiny random checkpoints are written in the published layouts (open_clip's root text tower +
``visual.*``; ImageBind's ``modality_*`` state dict) with a tiny CLIP BPE vocab file in the
published format. The tests check that the runtime (ONNX Runtime, the bundle's
``tokenizer.json``, the carried preprocessing) computes what the checkpoint's towers compute,
that wrong checkpoints name their keys, and that the node answers with the bundle.
"""
from __future__ import annotations

import copy
import gzip
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from omnibind_ros.core.backends import create_backend
from omnibind_ros.core.backends.base import embed_labels
from omnibind_ros.core.bundle import load_bundle
from omnibind_ros.core.preprocess import build_preprocessor
from omnibind_ros.core.types import AudioBlock, ThermalFrame
from omnibind_train.binding.experts import ExpertConfig, build_expert
from omnibind_train.byo.clip_bpe import find_bpe_vocab, write_clip_tokenizer
from omnibind_train.cli import main as train_main

#: A tiny CLIP BPE vocab in the published format (header line + one merge per line).
MERGES = ["c a", "ca t</w>", "d o", "do g</w>", "m u", "mu g</w>", "p h", "ph o", "pho t",
          "phot o</w>", "o f</w>"]
VOCAB = 512 + len(MERGES) + 2
LABELS = ["cat", "dog", "mug"]
CLIP_ARCH = {"embed_dim": 16, "act": "quick_gelu",
             "vision": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 1, "heads": 1},
             "text": {"context_length": 16, "vocab_size": VOCAB, "width": 64, "layers": 1,
                      "heads": 1}}
IB_ARCH = {"embed_dim": 16,
           "vision": {"width": 32, "layers": 1, "heads": 2, "image_size": 28},
           "text": {"width": 32, "layers": 1, "heads": 2, "context_length": 8,
                    "vocab_size": VOCAB},
           "audio": {"width": 32, "layers": 1, "heads": 2, "mel_bins": 32, "target_len": 36},
           "depth": {"width": 16, "layers": 1, "heads": 2, "image_size": 32},
           "thermal": {"width": 32, "layers": 1, "heads": 2, "image_size": 32},
           "imu": {"width": 16, "layers": 1, "heads": 2, "length": 40}}


def _write_vocab(path: Path, merges: list[str] = MERGES) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write('"bpe_simple_vocab_16e6.txt#version: 0.2\n' + "\n".join(merges) + "\n")
    return path


def _randomise(module: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))


@dataclass
class Imported:
    source: torch.nn.Module  # the expert as written to the checkpoint
    checkpoint: Path
    bundle: Path


def _import(tmp: Path, kind: str, *extra: str) -> Path:
    """``omnibind-train import KIND`` on ``tmp/KIND.pth`` into ``tmp/bundle_KIND``."""
    out = tmp / f"bundle_{kind}"
    argv = ["import", kind, "--checkpoint", str(tmp / f"{kind}.pth"), "--labels",
            ",".join(LABELS), "--out", str(out), "--threads", "1", *extra]
    assert train_main(argv) == 0
    return out


@pytest.fixture(scope="module")
def open_clip(tmp_path_factory: pytest.TempPathFactory) -> Imported:
    tmp = tmp_path_factory.mktemp("byo_clip")
    _write_vocab(tmp / "bpe_simple_vocab_16e6.txt.gz")  # found next to the checkpoint
    src = build_expert(ExpertConfig(kind="open_clip", arch=copy.deepcopy(CLIP_ARCH)),
                       load_weights=False)
    _randomise(src)
    with torch.no_grad():
        src.logit_scale.fill_(math.log(50.0))
    torch.save(src.published_state_dict(), tmp / "open_clip.pth")
    bundle = _import(tmp, "open_clip", "--torch-weights")
    return Imported(src.eval(), tmp / "open_clip.pth", bundle)


@pytest.fixture(scope="module")
def imagebind(tmp_path_factory: pytest.TempPathFactory) -> Imported:
    tmp = tmp_path_factory.mktemp("byo_ib")
    (tmp / "bpe").mkdir()
    _write_vocab(tmp / "bpe" / "bpe_simple_vocab_16e6.txt.gz")  # ImageBind's repository layout
    src = build_expert(ExpertConfig(kind="imagebind", arch=copy.deepcopy(IB_ARCH)),
                       load_weights=False)
    _randomise(src)
    torch.save(src.state_dict(), tmp / "imagebind.pth")
    (tmp / "arch.yaml").write_text(yaml.safe_dump(IB_ARCH))
    # a 0.3 s audio window keeps the tiny tower's 36 frames (28 computed + 8 padded)
    (tmp / "pre.yaml").write_text(yaml.safe_dump({"audio": {"window_s": 0.3}}))
    bundle = _import(tmp, "imagebind", "--arch", str(tmp / "arch.yaml"),
                     "--preprocess", str(tmp / "pre.yaml"))
    return Imported(src.eval(), tmp / "imagebind.pth", bundle)


# --- the tokenizer ---------------------------------------------------------------------------

def test_clip_bpe_tokenizer_follows_openai_vocab_order(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    files = write_clip_tokenizer(_write_vocab(tmp_path / "v.txt.gz"), tmp_path / "tok",
                                 vocab_size=VOCAB, context_length=6)
    tok = Tokenizer.from_file(str(files.directory / "tokenizer.json"))
    # ids: 0-255 byte symbols, 256-511 the same + </w>, 512 + i the i-th merge, then SOT, EOT
    a_end = 256 + ord("a") - ord("!")  # "a</w>": printable bytes come first in GPT-2's table
    assert a_end == 320  # the id "a</w>" has in OpenAI's own vocabulary too
    assert tok.encode("cat").ids == [VOCAB - 2, 512 + 1, VOCAB - 1]
    # lower-cased, whitespace collapsed; 6 tokens at most, so "dog" is cut and EOT kept
    assert tok.encode("A  PHOTO of   a Dog").ids == [VOCAB - 2, a_end, 512 + 9, 512 + 10,
                                                    a_end, VOCAB - 1]
    assert tok.encode("dog").ids == [VOCAB - 2, 512 + 3, VOCAB - 1]
    assert tok.encode("b").ids == [VOCAB - 2, a_end + 1, VOCAB - 1]  # no merge: "b</w>"
    long = tok.encode("cat dog mug cat dog mug").ids
    assert long == [VOCAB - 2, 513, 515, 517, 513, VOCAB - 1]  # truncation keeps SOT + EOT
    assert files.eot_id == VOCAB - 1 == max(long)  # CLIP pools at the largest id


def test_clip_bpe_rejects_wrong_vocab_files(tmp_path: Path) -> None:
    vocab = _write_vocab(tmp_path / "v.txt.gz")
    with pytest.raises(ValueError, match="needs 19 .*wrong vocab file"):
        write_clip_tokenizer(vocab, tmp_path / "tok", vocab_size=VOCAB + 8)
    plain = tmp_path / "notes.txt"
    plain.write_text("hello world\n")
    with pytest.raises(ValueError, match="#version"):
        write_clip_tokenizer(plain, tmp_path / "tok", vocab_size=VOCAB)
    with pytest.raises(FileNotFoundError, match="--bpe-vocab") as err:
        find_bpe_vocab(None, near=[tmp_path / "sub" / "model.pth"])
    assert str(tmp_path / "sub" / "bpe" / "bpe_simple_vocab_16e6.txt.gz") in str(err.value)


# --- open_clip -------------------------------------------------------------------------------

def test_open_clip_bundle_computes_what_the_checkpoint_computes(open_clip: Imported) -> None:
    bundle = load_bundle(open_clip.bundle)
    assert bundle.family == "open_clip" and bundle.modality_names == ("image",)
    assert bundle.label_names == tuple(LABELS) and bundle.dim == 16
    assert bundle.logit_scale == pytest.approx(50.0, rel=1e-5)
    image_cfg = bundle.preprocess_configs["image"]
    assert image_cfg.size == 32 and image_cfg.interpolation == "cubic"
    assert image_cfg.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    prov = bundle.provenance
    assert prov["checkpoint"]["path"] == str(open_clip.checkpoint)
    assert len(prov["checkpoint"]["sha256"]) == 64

    ort = create_backend("onnxruntime", bundle, threads=1)
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    x = build_preprocessor("image", image_cfg)(raw, "rgb")[None]
    with torch.no_grad():
        want = open_clip.source.encode("image", torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ort.encode("image", x), want, atol=1e-4)
    # the runtime's tokenizer + text graph re-embed the labels exactly as the bundle cached them
    np.testing.assert_allclose(embed_labels(ort, LABELS), bundle.label_embeddings, atol=1e-5)
    with torch.no_grad():
        ids = torch.tensor([[VOCAB - 2, 513, VOCAB - 1]])  # "cat"
        want_text = open_clip.source.encode("text", ids).numpy()
    np.testing.assert_allclose(ort.embed_text(["cat"]), want_text, atol=1e-4)
    # the torch fallback rebuilds the towers from bundle.yaml alone and agrees
    fallback = create_backend("torch", bundle, threads=1)
    np.testing.assert_allclose(fallback.encode("image", x), want, atol=1e-4)


def test_wrong_checkpoint_names_its_keys(open_clip: Imported, tmp_path: Path) -> None:
    _write_vocab(tmp_path / "bpe_simple_vocab_16e6.txt.gz")
    state = torch.load(open_clip.checkpoint, weights_only=True)
    state["visual.ln_post.w"] = state.pop("visual.ln_post.weight")
    torch.save(state, tmp_path / "open_clip.pth")
    with pytest.raises(SystemExit) as err:
        _import(tmp_path, "open_clip")
    assert "missing key(s): visual.ln_post.weight" in str(err.value)
    assert "unexpected key(s): visual.ln_post.w" in str(err.value)
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "open_clip.pth")
    with pytest.raises(SystemExit, match="not an open_clip CLIP checkpoint"):
        _import(tmp_path, "open_clip")
    # an open_clip file given as ImageBind: every ImageBind key is missing, CLIP's unexpected
    torch.save(torch.load(open_clip.checkpoint, weights_only=True), tmp_path / "imagebind.pth")
    with pytest.raises(SystemExit) as err:
        _import(tmp_path, "imagebind")
    assert "missing key(s): modality_heads" in str(err.value)
    assert "unexpected key(s): ln_final.bias" in str(err.value)
    assert not any(tmp_path.glob("bundle_*"))


# --- ImageBind -------------------------------------------------------------------------------

def test_imagebind_bundle_carries_its_towers_and_preprocessing(imagebind: Imported) -> None:
    bundle = load_bundle(imagebind.bundle)
    assert bundle.family == "imagebind"
    assert set(bundle.modality_names) == {"image", "audio", "thermal"}
    assert set(bundle.provenance["not_exported"]) == {"depth", "imu"}
    audio_cfg = bundle.preprocess_configs["audio"]
    assert (audio_cfg.frontend, audio_cfg.target_frames, audio_cfg.n_mels) == (
        "kaldi_fbank", 36, 32)
    assert (audio_cfg.norm_mean, audio_cfg.norm_std) == (-4.268, 9.138)
    assert bundle.preprocess_configs["thermal"].channels == 1
    assert bundle.logit_scale == pytest.approx(
        float(imagebind.source.logit_scale("text")), rel=1e-5)

    ort = create_backend("onnxruntime", bundle, threads=1)
    t = np.arange(8000) / 16000
    block = AudioBlock(samples=(0.3 * np.sin(2 * np.pi * 500 * t)).astype(np.float32),
                       sample_rate=16000)
    inputs = {
        "image": build_preprocessor("image", bundle.preprocess_configs["image"])(
            np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8), "rgb"),
        "audio": build_preprocessor("audio", audio_cfg)(block),
        "thermal": build_preprocessor("thermal", bundle.preprocess_configs["thermal"])(
            ThermalFrame(np.linspace(10, 40, 40 * 50, dtype=np.float32).reshape(40, 50),
                         "32FC1")),
    }
    assert inputs["audio"].shape == (1, 32, 36) and inputs["thermal"].shape == (1, 32, 32)
    towers = {"image": "vision", "audio": "audio", "thermal": "thermal"}
    for modality, x in inputs.items():
        with torch.no_grad():
            want = imagebind.source.encode(towers[modality], torch.from_numpy(x[None])).numpy()
        np.testing.assert_allclose(ort.encode(modality, x[None]), want, atol=1e-4,
                                   err_msg=modality)
    np.testing.assert_allclose(embed_labels(ort, LABELS), bundle.label_embeddings, atol=1e-5)


@pytest.mark.slow
@pytest.mark.ros
def test_perception_node_answers_with_an_imported_bundle(imagebind: Imported,
                                                         tmp_path: Path) -> None:
    """The node runs the ImageBind bundle by bundle_path with the robot's camera, microphone
    and thermal camera (the simulated ones), naming the bundle and its family."""
    from test_binding_node import _child_env

    from omnibind_ros.core.paths import config_file

    params = yaml.safe_load(config_file("perception.yaml").read_text())
    node = next(iter(params.values()))["ros__parameters"]
    node["sensors"] = ["camera", "thermal", "microphone"]
    params_file = tmp_path / "perception.yaml"
    params_file.write_text(yaml.safe_dump(params))
    out = tmp_path / "summary.json"
    cmd = [sys.executable, "-m", "omnibind_ros.tools.bringup", "--bundle", str(imagebind.bundle),
           "--params-file", str(params_file), "--no-ui", "--duration", "8",
           "--summary-json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_child_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(out.read_text())
    assert summary["recognitions"] > 0 and summary["answered_fraction"] > 0, summary
    key = f"{imagebind.bundle.name} [imagebind]"
    assert set(summary["models"]) == {key}, summary["models"]
    assert {"camera", "thermal", "microphone"} <= set(summary["sensors"])
