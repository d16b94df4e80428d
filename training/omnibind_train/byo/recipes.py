"""What each supported checkpoint family becomes in a bundle: towers, preprocessing, scale.

A recipe names the expert kind, which of its towers serve which runtime modality, the runtime
preprocessing that reproduces the model's own input pipeline (carried in the bundle, so the
node feeds each tower what it was trained on), and the logit scale of zero-shot
classification. Choices where the published code is silent are marked *choice*.

``open_clip`` (an open_clip / OpenAI CLIP state dict, ``visual.*`` + the text tower):
  image <- ``visual``: shorter side resized to the tower's input size (bicubic), centre crop,
  OpenAI CLIP mean/std (open_clip's ``image_transform`` for these checkpoints); text <- the
  text tower with OpenAI's BPE. Logit scale: the checkpoint's ``exp(logit_scale)`` (about 100).
  The architecture is read from tensor shapes (heads = width / 64, open_clip's rule); the
  activation cannot be, so ``act`` is an option (``quick_gelu`` for OpenAI / DFN weights,
  ``gelu`` for most LAION ones).

``imagebind`` (``imagebind_huge.pth``, a plain state dict):
  image <- ``vision`` (the same CLIP transform at 224 px, ImageBind's ``data.py``); text <-
  ``text`` (OpenAI's BPE, 77 tokens); audio <- ``audio``: Kaldi fbank, 128 mel bins, 25 ms /
  10 ms frames, 16 kHz, 2 s window padded to 204 frames, normalised with mean -4.268 and std
  9.138 (ImageBind's ``waveform2melspec``). ImageBind averages three 2 s clips of a file; a
  robot's microphone is a stream, so the runtime embeds the latest 2 s window (*choice*).
  thermal <- ``thermal``: one channel at 224 px, bicubic resize + centre crop of the [0, 1]
  temperature-window value, no further normalisation (*choice*: ImageBind's repository has no
  thermal loader; ``--preprocess`` overrides it). The depth and IMU towers load (the checkpoint
  is still checked whole) but are not exported: the package has no depth-image or IMU sensor
  modality, and LiDAR / depth cameras arrive as point clouds. Logit scale: the text
  postprocessor's ``exp(log_logit_scale)`` (ImageBind scores vision against text with it).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omnibind_ros.core.preprocess import build_config

__all__ = ["CLIP_MEAN", "CLIP_STD", "RECIPES", "Recipe", "clip_image_preprocess"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Prompt templates of the bundle's label embeddings (*choice*: a short subset of CLIP's
#: ImageNet templates; ``--templates`` replaces them).
DEFAULT_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a blurry photo of a {}.",
                     "a close-up photo of a {}.", "a photo of a small {}.",
                     "a photo of a large {}.")


def clip_image_preprocess(size: int) -> dict[str, Any]:
    """open_clip's eval transform: shorter side to ``size`` (bicubic), centre crop, CLIP norm."""
    return {"size": int(size), "resize_mode": "crop", "interpolation": "cubic",
            "mean": list(CLIP_MEAN), "std": list(CLIP_STD)}


@dataclass(frozen=True)
class Recipe:
    """How one checkpoint family maps onto the runtime's modalities.

    Attributes
    ----------
    kind : the expert kind (:func:`omnibind_train.binding.experts.expert_kinds`).
    towers : runtime modality -> the expert's tower name (text included).
    loaded : expert towers built from the checkpoint (a superset of ``towers``' values, so
        the whole checkpoint is checked even where a tower is not exported).
    """

    kind: str
    towers: dict[str, str]
    loaded: tuple[str, ...]
    notes: dict[str, str] = field(default_factory=dict)

    def preprocess(self, arch: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
                   ) -> dict[str, dict[str, Any]]:
        """Runtime preprocessing configs per exported (non-text) modality, validated."""
        configs = _PREPROCESS[self.kind](arch)
        for modality, values in (overrides or {}).items():
            if modality not in configs:
                raise ValueError(f"--preprocess names {modality!r}, which a {self.kind} bundle "
                                 f"does not have; it has {sorted(configs)}")
            configs[modality] = {**configs[modality], **dict(values)}
        return {m: build_config(m, c).to_dict() for m, c in configs.items()}


def _open_clip_preprocess(arch: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {"image": clip_image_preprocess(arch["vision"]["image_size"])}


def _imagebind_preprocess(arch: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    audio = arch["audio"]
    return {
        "image": clip_image_preprocess(arch["vision"]["image_size"]),
        "audio": {"sample_rate": 16000, "window_s": 2.0, "n_fft": 400, "hop_length": 160,
                  "n_mels": int(audio["mel_bins"]), "fmin": 20.0, "fmax": None,
                  "frontend": "kaldi_fbank", "target_frames": int(audio["target_len"]),
                  "norm_mean": -4.268, "norm_std": 9.138},
        "thermal": {"size": int(arch["thermal"]["image_size"]), "channels": 1,
                    "resize_mode": "crop", "interpolation": "cubic",
                    "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
    }


_PREPROCESS = {"open_clip": _open_clip_preprocess, "imagebind": _imagebind_preprocess}

RECIPES: dict[str, Recipe] = {
    "open_clip": Recipe(kind="open_clip", towers={"image": "image", "text": "text"},
                        loaded=("image", "text")),
    "imagebind": Recipe(
        kind="imagebind",
        towers={"image": "vision", "text": "text", "audio": "audio", "thermal": "thermal"},
        loaded=("vision", "text", "audio", "thermal", "depth", "imu"),
        notes={"depth": "loaded, not exported (no depth-image modality)",
               "imu": "loaded, not exported (no IMU modality)"}),
}


def clip_logit_scale(log_scale: float) -> float:
    """open_clip's ``logit_scale.exp()`` clamped at 100, as CLIP's forward does."""
    return float(min(math.exp(log_scale), 100.0))


def merged_arch(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` with ``overrides`` merged one level deep (per-tower dicts update)."""
    out = copy.deepcopy(dict(defaults))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **dict(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out
