"""Tiny real experts (published checkpoint layouts, the expert tests' tiny architectures), tiny
pools in published file formats, and the tiny paper-binding config built on them."""
from __future__ import annotations

import copy
import zlib
from pathlib import Path

import numpy as np
import torch
from test_binding_experts_clap_imagebind import CLAP_TINY, IB_TINY
from test_binding_experts_clip_uni3d import EVA_18B, EVA_POSTNORM, TEXT, UNI3D

from omnibind_train.binding.experts import ExpertConfig, build_expert
from omnibind_train.binding.paper import PaperBindingConfig

VOCAB = 50  # the tiny CLIP text towers' vocabulary (EOT = 49); CLAP's tiny RoBERTa has 100
LENGTH = 8  # the tiny CLIP / ImageBind context length
N_ITEMS = 10
CORPORA = ("image", "audio", "point_cloud")


def tiny_tokenizer(expert, space):
    """Words hashed into ids 2..VOCAB-2, EOT (= VOCAB - 1, the largest id) last, pad 1."""

    def encode(texts: list[str]) -> dict[str, torch.Tensor]:
        ids = torch.ones(len(texts), LENGTH, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, t in enumerate(texts):
            words = [2 + zlib.crc32(w.encode()) % (VOCAB - 3) for w in t.lower().split()]
            words = words[:LENGTH - 1] + [VOCAB - 1]
            ids[i, :len(words)] = torch.tensor(words)
            mask[i, :len(words)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    return encode


def write_experts(root: Path) -> list[dict]:
    """Five tiny experts saved as their published files; the config entries that use them."""
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(7)
    entries = []
    # EVA-CLIP-18B-like target (BAAI layout, .pt state dict) and EVA02-E14+-like
    for name, registry, vision in (("eva18b", "eva_clip_18b", EVA_18B),
                                   ("e14p", "eva02_clip_e14p", EVA_POSTNORM)):
        arch = {"embed_dim": 16, "vision": dict(vision), "text": dict(TEXT)}
        src = build_expert(ExpertConfig(kind="eva_clip", arch=arch), load_weights=False)
        path = root / f"{name}.pt"
        torch.save(src.published_state_dict(), path)
        entries.append({"name": name, "registry": registry, "checkpoint": str(path),
                        "arch": arch, "preprocess": {"image": {"size": 28}},
                        "corpus": "image", "batch_size": 8})
    # LAION-CLAP (HTSAT + RoBERTa, training-checkpoint .pt with DDP-prefixed keys)
    arch = {**CLAP_TINY, "enable_fusion": False}
    clap = build_expert(ExpertConfig(kind="laion_clap", arch=arch), load_weights=False)
    path = root / "clap.pt"
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in
                                           clap.state_dict().items()}}, path)
    entries.append({"name": "clap", "registry": "laion_clap_music_speech_audioset",
                    "checkpoint": str(path), "arch": arch, "corpus": "audio", "batch_size": 8})
    # Uni3D point tower (DeepSpeed-style file); its image / text towers are E14+'s: aliased
    uni = build_expert(ExpertConfig(kind="uni3d", arch=dict(UNI3D), modalities=["point_cloud"]),
                       load_weights=False)
    path = root / "uni3d.pt"
    torch.save({"module": {"module." + k: v for k, v in
                           uni.encoders["point_cloud"].state_dict().items()}}, path)
    entries.append({"name": "uni3d", "registry": "uni3d_g_lvis", "checkpoint": str(path),
                    "arch": dict(UNI3D), "preprocess": {"point_cloud": {"num_points": 48}},
                    "alias": {"image": "e14p", "text": "e14p"}, "corpus": "point_cloud",
                    "batch_size": 8})
    # ImageBind (plain state dict, every modality; the unused ones are dropped on load)
    ib = build_expert(ExpertConfig(kind="imagebind", arch=copy.deepcopy(IB_TINY)),
                      load_weights=False)
    path = root / "imagebind.pth"
    torch.save(ib.state_dict(), path)
    entries.append({"name": "ib", "registry": "imagebind_huge", "checkpoint": str(path),
                    "arch": copy.deepcopy(IB_TINY),
                    "preprocess": {"vision": {"image_size": 28}}, "batch_size": 8})
    return entries


def write_pools(root: Path) -> dict:
    """jpg/png images, wav/flac clips at 22.05 kHz, .npy/.npz points, caption files."""
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(0)
    img, aud, pts, cap = (root / d for d in ("images/n01", "audio", "points", "captions"))
    for d in (img, aud, pts, cap):
        d.mkdir(parents=True, exist_ok=True)
    for i in range(N_ITEMS):
        arr = (rng.random((30 + i, 40, 3)) * 255).astype(np.uint8)
        arr[..., i % 3] = 255
        Image.fromarray(arr).save(img / f"{i:03d}.{'png' if i % 4 == 0 else 'jpg'}")
        t = np.arange(int(22050 * (0.4 + 0.1 * i))) / 22050
        wave = 0.3 * np.sin(2 * np.pi * (200 + 90 * i) * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(aud / f"{i:03d}.{'flac' if i % 3 == 0 else 'wav'}",
                 np.stack([wave, wave], 1) if i % 2 else wave, 22050)
        xyz = rng.standard_normal((60 + 5 * i, 3)).astype(np.float32) * (1 + i % 3)
        if i % 3 == 0:
            np.savez(pts / f"{i:03d}.npz", xyz=xyz, rgb=rng.integers(0, 255, xyz.shape))
        else:
            cols = [xyz] + ([rng.random(xyz.shape).astype(np.float32)] if i % 2 else [])
            np.save(pts / f"{i:03d}.npy", np.concatenate(cols, axis=1))
    (root / "images" / "README.txt").write_text("not an image: ignored\n")
    words = {"image": "a photo of a red dog on grass", "audio": "a dog barks loudly nearby",
             "point_cloud": "a 3d model of a wooden chair"}
    captions = {}
    for c in CORPORA:
        f = cap / f"{c}.txt"
        f.write_text("\n".join(f"{words[c]} {j}" for j in range(6)) + "\n\n")
        captions[c] = [str(f)]
    return {"image": str(root / "images"), "audio": str(aud), "point_cloud": str(pts),
            "captions": captions}


def tiny_config(root: Path, experts: list[dict], pools: dict) -> PaperBindingConfig:
    return PaperBindingConfig.from_dict({
        "family": "binding_paper", "name": "tiny", "out_dir": str(root / "run"), "seed": 0,
        "device": "cpu", "precision": "bf16", "progress": False,
        "experts": experts, "target": "eva18b", "pools": pools,
        "retrievers": {"image-text": ["image@eva18b", "text@eva18b"],
                       "audio-text": ["audio@clap", "text@clap"],
                       "audio-image": ["audio@ib", "image@ib"],
                       "point_cloud-image": ["point_cloud@uni3d", "image@uni3d"],
                       "point_cloud-text": ["point_cloud@uni3d", "text@uni3d"]},
        "projector": {"heads": 2, "hidden_dim": 32, "epochs": 6, "lr": 3e-3, "batch_size": 16},
        "router_training": {"epochs": 6, "lr": 3e-3, "batch_size": 16},
        "variants": {"base": ["clap", "e14p", "uni3d", "ib"],
                     "full": ["eva18b", "clap", "e14p", "uni3d", "ib"]},
        "embed": {"chunk": 4, "workers": 0, "dtype": "float32"},
        "checkpoint_every": 5,
    })
