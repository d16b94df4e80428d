"""ImageBind expert (kind ``"imagebind"``) in the published checkpoint layout.

Layout followed: github.com/facebookresearch/ImageBind, ``imagebind/models/imagebind_model.py``
(``ImageBindModel``, ``imagebind_huge``), ``multimodal_preprocessors.py`` (``RGBDTPreprocessor``,
``AudioPreprocessor``, ``ThermalPreprocessor``, ``TextPreprocessor``, ``IMUPreprocessor``,
``PatchEmbedGeneric``, ``PadIm2Video``), ``transformer.py`` (``SimpleTransformer``,
``BlockWithMasking`` around ``nn.MultiheadAttention``) and ``helpers.py``
(``SelectEOSAndProject``, ``LearnableLogitScaling``). The published ``imagebind_huge.pth`` is a
plain state dict; its names load here unchanged:

- ``modality_preprocessors.vision.{rgbt_stem.proj.1.weight (Conv3d, 2x14x14, no bias),
  pos_embedding_helper.pos_embed, cls_token}``; ``...audio`` / ``...thermal``
  ``.{rgbt_stem.proj.weight (Conv2d), rgbt_stem.norm_layer.*, pos_embedding_helper.pos_embed,
  cls_token}``; ``...depth.{depth_stem.proj.weight, depth_stem.norm_layer.*,
  pos_embedding_helper.pos_embed, cls_token}``; ``...text.{token_embedding.weight, pos_embed,
  mask}`` (the causal mask is a persistent buffer); ``...imu.{imu_stem.proj.weight (Linear 48->d),
  imu_stem.norm_layer.*, pos_embed, cls_token}``.
- ``modality_trunks.<m>.{pre_transformer_layer.0.* (LayerNorm, vision only),
  blocks.N.{attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.*, attn.bias_k, attn.bias_v
  (audio/depth/thermal/imu), norm_1, norm_2, mlp.fc1, mlp.fc2}}`` (pre-norm, LayerNorm eps 1e-6,
  GELU MLP x4).
- ``modality_heads.<m>.{0 (LayerNorm), 2 (Linear, no bias)}`` (CLS token); ``imu`` has a dropout
  at 2 so its Linear is ``3``; ``text`` is ``proj.{0,1}`` applied at the EOT token (argmax id).
- ``modality_postprocessors.<m>.1.log_logit_scale`` (text: a parameter; audio/depth/thermal/imu:
  buffers with the published constants 20/5/10/5; vision has none).

Embeddings (``encoders[m]``) are the head outputs, i.e. ImageBind's outputs before
``Normalize`` and the logit scaling (a positive scalar, so the direction is the published one).
Multi-clip inputs (``[B, S, ...]``, as ImageBind's data loaders make for audio / video) average
the unit clip embeddings, as ``ImageBindModel.forward`` does.

Inputs (``ExpertConfig.preprocess``):

- ``vision``: ``[B, 3, 224, 224]`` (bicubic resize 224 + centre crop, CLIP mean/std); a single
  frame is repeated to the 2-frame Conv3d kernel (``PadIm2Video(repeat, 2)``). Video clips
  ``[B, S, 3, 2, 224, 224]``.
- ``text``: CLIP BPE ids ``[B, L]`` with ``L <= 77`` (EOT has the largest id); an
  ``attention_mask`` is accepted and unused (causal mask + EOT pooling, as published).
- ``audio``: Kaldi fbank log-mel ``[B, 1, 128, 204]`` (16 kHz, 2 s clips, 128 bins, 204 frames,
  10 ms shift, 25 ms Hann window; normalised with mean -4.268 and std 9.138), or
  ``[B, S, 1, 128, 204]`` for S clips per item (ImageBind uses 3).
- ``thermal``: ``[B, 1, 224, 224]``; ``depth``: ``[B, 1, 224, 224]`` disparity;
  ``imu``: ``[B, 6, 2000]``.

Modalities: all six are supported. ``ExpertConfig.modalities`` selects which ones are built
(default: all, so the full published file loads strictly); the checkpoint keys of modalities
left out (``modality_{preprocessors,trunks,heads,postprocessors}.<m>.*``) are dropped on load
and listed in ``ImageBindSpace.skipped_keys`` and a log message. Not supported: position
embedding interpolation for other input sizes (a mismatched token count raises), training-time
drop-path, patch masking.
"""
from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...models.vit import read_checkpoint
from .common import ExpertConfig, ExpertSpace, GeluMlp, register_expert, register_expert_kind

__all__ = ["IMAGEBIND_HUGE_ARCH", "ImageBindSpace", "build_imagebind"]

KIND = "imagebind"
MODALITIES = ("vision", "text", "audio", "depth", "thermal", "imu")
_log = logging.getLogger(__name__)

#: ``imagebind_huge()`` sizes (``imagebind_model.py``).
IMAGEBIND_HUGE_ARCH: dict[str, Any] = {
    "embed_dim": 1024,
    "mlp_ratio": 4.0,
    "vision": {"width": 1280, "layers": 32, "heads": 16, "image_size": 224, "patch": 14,
               "frames": 2},
    "text": {"width": 1024, "layers": 24, "heads": 16, "context_length": 77,
             "vocab_size": 49408, "logit_scale": 1 / 0.07},
    "audio": {"width": 768, "layers": 12, "heads": 12, "mel_bins": 128, "target_len": 204,
              "kernel": 16, "stride": 10, "logit_scale": 20.0},
    "depth": {"width": 384, "layers": 12, "heads": 8, "image_size": 224, "kernel": 16,
              "logit_scale": 5.0},
    "thermal": {"width": 768, "layers": 12, "heads": 12, "image_size": 224, "kernel": 16,
                "logit_scale": 10.0},
    "imu": {"width": 512, "layers": 6, "heads": 8, "channels": 6, "length": 2000, "kernel": 8,
            "logit_scale": 5.0},
}


def _arch(cfg: ExpertConfig) -> dict[str, Any]:
    a = copy.deepcopy(IMAGEBIND_HUGE_ARCH)
    for key, value in cfg.arch.items():
        if key not in a:
            raise ValueError(f"{KIND}: unknown arch key {key!r}; known: {sorted(a)}")
        if isinstance(a[key], dict):
            if not isinstance(value, Mapping):
                raise ValueError(f"{KIND}: arch[{key!r}] must be a mapping")
            unknown = sorted(set(value) - set(a[key]))
            if unknown:
                raise ValueError(f"{KIND}: unknown arch[{key!r}] key(s) {unknown}; known: "
                                 f"{sorted(a[key])}")
            a[key].update(value)
        else:
            a[key] = value
    return a


# --- preprocessors -----------------------------------------------------------------------------

class _PadIm2Video(nn.Module):
    """``[B, C, H, W]`` -> ``[B, C, ntimes, H, W]`` by repeating the frame (no parameters)."""

    def __init__(self, ntimes: int) -> None:
        super().__init__()
        self.ntimes = ntimes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(2)
        if x.shape[2] == 1:
            x = x.repeat(1, 1, self.ntimes, 1, 1)
        return x


class _PatchEmbed(nn.Module):
    """``PatchEmbedGeneric``: ``proj`` (a module or a Sequential) then optional ``norm_layer``."""

    def __init__(self, proj: nn.Module, norm_layer: nn.Module | None = None) -> None:
        super().__init__()
        self.proj = proj
        self.norm_layer = norm_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        return self.norm_layer(x) if self.norm_layer is not None else x


class _PosEmbed(nn.Module):
    """``SpatioTemporalPosEmbeddingHelper(learnable=True)``: holds ``pos_embed``."""

    def __init__(self, tokens: int, width: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(width ** -0.5 * torch.randn(1, tokens, width))


class _ImagePreprocessor(nn.Module):
    """``RGBDTPreprocessor`` / ``AudioPreprocessor`` / ``ThermalPreprocessor``: stem, CLS token,
    learned position embedding. ``stem_name`` is ``rgbt_stem`` or ``depth_stem``."""

    def __init__(self, stem: _PatchEmbed, stem_name: str, num_patches: int, width: int) -> None:
        super().__init__()
        self.stem_name = stem_name
        setattr(self, stem_name, stem)
        self.pos_embedding_helper = _PosEmbed(num_patches + 1, width)
        self.cls_token = nn.Parameter(width ** -0.5 * torch.randn(1, 1, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = getattr(self, self.stem_name)(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        pos = self.pos_embedding_helper.pos_embed
        if tokens.shape[1] != pos.shape[1]:
            raise ValueError(f"{KIND}: input {tuple(x.shape)} gives {tokens.shape[1]} tokens, "
                             f"the position embedding has {pos.shape[1]} (resize the input; "
                             "interpolation is not supported)")
        return tokens + pos


class _TextPreprocessor(nn.Module):
    def __init__(self, vocab: int, context: int, width: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.pos_embed = nn.Parameter(0.01 * torch.randn(1, context, width))
        self.register_buffer("mask", torch.full((context, context), float("-inf")).triu(1))

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = ids.shape[1]
        if n > self.pos_embed.shape[1]:
            raise ValueError(f"{KIND}: {n} text tokens exceed the context length "
                             f"{self.pos_embed.shape[1]}")
        return self.token_embedding(ids) + self.pos_embed[:, :n], self.mask[:n, :n]


class _IMUPreprocessor(nn.Module):
    def __init__(self, stem: _PatchEmbed, kernel: int, tokens: int, width: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.imu_stem = stem
        self.pos_embed = nn.Parameter(0.01 * torch.randn(1, tokens + 1, width))
        self.cls_token = nn.Parameter(width ** -0.5 * torch.randn(1, 1, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unfold(-1, self.kernel, self.kernel).permute(0, 2, 1, 3)
        x = x.reshape(x.shape[0], x.shape[1], -1)
        tokens = self.imu_stem.norm_layer(self.imu_stem.proj(x))
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        if tokens.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(f"{KIND}: imu input gives {tokens.shape[1]} tokens, expected "
                             f"{self.pos_embed.shape[1]}")
        return tokens + self.pos_embed


# --- trunks ------------------------------------------------------------------------------------

class _Block(nn.Module):
    """``BlockWithMasking``: pre-norm ``nn.MultiheadAttention`` + GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, bias_kv: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, bias=True, add_bias_kv=bias_kv,
                                          batch_first=True)
        self.norm_1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = GeluMlp(dim, int(mlp_ratio * dim))
        self.norm_2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        h = self.norm_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.norm_2(x))


class _Trunk(nn.Module):
    """``SimpleTransformer``: ``pre_transformer_layer`` (LayerNorm for vision) + ``blocks``."""

    def __init__(self, dim: int, layers: int, heads: int, mlp_ratio: float, pre_ln: bool,
                 bias_kv: bool) -> None:
        super().__init__()
        self.pre_transformer_layer = nn.Sequential(
            nn.LayerNorm(dim, eps=1e-6) if pre_ln else nn.Identity())
        self.blocks = nn.Sequential(*(_Block(dim, heads, mlp_ratio, bias_kv)
                                      for _ in range(layers)))

    def forward(self, tokens: torch.Tensor, attn_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        x = self.pre_transformer_layer(tokens)
        for blk in self.blocks:
            x = blk(x, attn_mask)
        return x


# --- heads / postprocessors -------------------------------------------------------------------

class _SelectElement(nn.Module):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index]


class _SelectEOSAndProject(nn.Module):
    def __init__(self, proj: nn.Module) -> None:
        super().__init__()
        self.proj = proj

    def forward(self, x: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
        return self.proj(x[torch.arange(x.shape[0], device=x.device), seq_len])


class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


class _LogitScaling(nn.Module):
    """``LearnableLogitScaling``: ``log_logit_scale`` (parameter if learnable, else buffer)."""

    def __init__(self, init: float, learnable: bool, max_scale: float = 100.0) -> None:
        super().__init__()
        self.max_scale = max_scale
        value = torch.tensor(math.log(init))
        if learnable:
            self.log_logit_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_logit_scale", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clip(self.log_logit_scale.exp(), max=self.max_scale) * x


# --- the space ---------------------------------------------------------------------------------

class _EncoderView(nn.Module):
    """An ``encoders[m]`` entry calling :meth:`ImageBindSpace.embed` without registering the
    space as a child again (the state_dict keeps exactly the published names)."""

    def __init__(self, space: nn.Module, modality: str) -> None:
        super().__init__()
        self.__dict__["_space"] = space
        self.modality = modality

    def forward(self, inputs: torch.Tensor | None = None, **kwargs: torch.Tensor) -> torch.Tensor:
        if inputs is None:  # a mapping input: {"input_ids": ..., "attention_mask": ...} etc.
            inputs = kwargs.pop("input_ids", None)
            if inputs is None:
                inputs = kwargs.pop(self.modality, None)
            if inputs is None:
                raise ValueError(f"{KIND}: no {self.modality} input in {sorted(kwargs)}")
        return self.__dict__["_space"].embed(self.modality, inputs)


class ImageBindSpace(ExpertSpace):
    """ImageBind's joint space; the published ``modality_*`` ModuleDicts sit at the root."""

    #: how many leading dims a single item has, per modality (more: a batch of clips).
    _ITEM_NDIM = {"vision": 4, "audio": 4, "thermal": 4, "depth": 4, "imu": 3, "text": 2}

    def __init__(self, config: ExpertConfig) -> None:
        a = _arch(config)
        super().__init__(config, int(a["embed_dim"]))
        self.arch = a
        wanted = list(config.modalities) if config.modalities else list(MODALITIES)
        bad = sorted(set(wanted) - set(MODALITIES))
        if bad:
            raise ValueError(f"{KIND}: unknown modalities {bad}; supported: {list(MODALITIES)}")
        self.built = tuple(m for m in MODALITIES if m in wanted)
        self.skipped_keys: list[str] = []
        out, ratio = int(a["embed_dim"]), float(a["mlp_ratio"])
        pre, trunks, heads, post = (nn.ModuleDict() for _ in range(4))
        for m in self.built:
            c = a[m]
            w = int(c["width"])
            if m == "vision":
                k, t = int(c["patch"]), int(c["frames"])
                stem = _PatchEmbed(nn.Sequential(
                    _PadIm2Video(t), nn.Conv3d(3, w, (t, k, k), stride=(t, k, k), bias=False)))
                pre[m] = _ImagePreprocessor(stem, "rgbt_stem", (int(c["image_size"]) // k) ** 2,
                                            w)
            elif m == "text":
                pre[m] = _TextPreprocessor(int(c["vocab_size"]), int(c["context_length"]), w)
            elif m == "audio":
                k, s = int(c["kernel"]), int(c["stride"])
                stem = _PatchEmbed(nn.Conv2d(1, w, k, stride=s, bias=False), nn.LayerNorm(w))
                n = ((int(c["mel_bins"]) - k) // s + 1) * ((int(c["target_len"]) - k) // s + 1)
                pre[m] = _ImagePreprocessor(stem, "rgbt_stem", n, w)
            elif m in ("thermal", "depth"):
                k = int(c["kernel"])
                stem = _PatchEmbed(nn.Conv2d(1, w, k, stride=k, bias=False), nn.LayerNorm(w))
                pre[m] = _ImagePreprocessor(stem, "rgbt_stem" if m == "thermal" else "depth_stem",
                                            (int(c["image_size"]) // k) ** 2, w)
            else:  # imu
                k = int(c["kernel"])
                stem = _PatchEmbed(nn.Linear(int(c["channels"]) * k, w, bias=False),
                                   nn.LayerNorm(w))
                pre[m] = _IMUPreprocessor(stem, k, int(c["length"]) // k, w)
            trunks[m] = _Trunk(w, int(c["layers"]), int(c["heads"]), ratio,
                               pre_ln=(m == "vision"), bias_kv=m not in ("vision", "text"))
            if m == "text":
                heads[m] = _SelectEOSAndProject(nn.Sequential(
                    nn.LayerNorm(w, eps=1e-6), nn.Linear(w, out, bias=False)))
            elif m == "imu":
                heads[m] = nn.Sequential(nn.LayerNorm(w, eps=1e-6), _SelectElement(0),
                                         nn.Dropout(0.5), nn.Linear(w, out, bias=False))
            else:
                heads[m] = nn.Sequential(nn.LayerNorm(w, eps=1e-6), _SelectElement(0),
                                         nn.Linear(w, out, bias=False))
            post[m] = _Normalize() if m == "vision" else nn.Sequential(
                _Normalize(), _LogitScaling(float(c["logit_scale"]), learnable=(m == "text")))
            self.encoders[m] = _EncoderView(self, m)
        self.modality_preprocessors = pre
        self.modality_trunks = trunks
        self.modality_heads = heads
        self.modality_postprocessors = post

    def _embed_items(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        if modality == "text":
            ids = x.long()
            tokens, mask = self.modality_preprocessors.text(ids)
            feats = self.modality_trunks.text(tokens, mask)
            return self.modality_heads.text(feats, ids.argmax(dim=-1))
        tokens = self.modality_preprocessors[modality](x)
        return self.modality_heads[modality](self.modality_trunks[modality](tokens))

    def embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """``[B, embed_dim]`` embeddings (before ImageBind's normalisation / logit scaling).

        Inputs with one more leading dim than an item (``[B, S, ...]``; video for vision) are
        S clips per item: their unit embeddings are averaged.
        """
        if modality not in self.built:
            raise KeyError(f"{KIND}: modality {modality!r} was not built (built: "
                           f"{list(self.built)})")
        item = self._ITEM_NDIM[modality]
        if modality == "vision" and x.ndim == 6:  # [B, S, 3, T, H, W] video clips
            item = 5
        if x.ndim == item + 1:
            b, s = x.shape[:2]
            clips = F.normalize(self._embed_items(modality, x.flatten(0, 1)), dim=-1)
            return clips.view(b, s, -1).mean(dim=1)
        if x.ndim != item:
            raise ValueError(f"{KIND}: {modality} input must have {item} dims (or {item + 1} "
                             f"for clips), got {tuple(x.shape)}")
        return self._embed_items(modality, x)

    def logit_scale(self, modality: str) -> float:
        """The published output scale of a modality (1 for vision)."""
        post = self.modality_postprocessors[modality]
        if isinstance(post, _Normalize):
            return 1.0
        scaling = post[1]
        return float(torch.clip(scaling.log_logit_scale.exp(), max=scaling.max_scale))


def build_imagebind(cfg: ExpertConfig, load_weights: bool) -> ImageBindSpace:
    """Builder for kind ``"imagebind"``; keys of modalities not built are dropped and listed."""
    space = ImageBindSpace(cfg)
    if load_weights:
        assert cfg.checkpoint is not None
        state = read_checkpoint(cfg.checkpoint)
        groups = ("modality_preprocessors", "modality_trunks", "modality_heads",
                  "modality_postprocessors")
        skipped_mods = [m for m in MODALITIES if m not in space.built]
        skip = tuple(f"{g}.{m}." for g in groups for m in skipped_mods)
        space.skipped_keys = sorted(k for k in state if k.startswith(skip))
        if space.skipped_keys:
            present = sorted({k.split(".")[1] for k in space.skipped_keys})
            _log.info("%s: %s not built (modalities=%s); skipped %d checkpoint keys", KIND,
                      present, list(space.built), len(space.skipped_keys))
        state = {k: v for k, v in state.items() if not k.startswith(skip)}
        space.load_published(state, what=f"{KIND} checkpoint {cfg.checkpoint}")
    return space


register_expert_kind(KIND, build_imagebind)

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

register_expert("imagebind_huge", ExpertConfig(
    kind=KIND,
    arch={},
    preprocess={
        "vision": {"input": "[B, 3, 224, 224]", "image_size": 224, "resize": "bicubic",
                   "crop": "center", "mean": _CLIP_MEAN, "std": _CLIP_STD},
        "text": {"input": "input_ids [B, L<=77]", "tokenizer": "clip_bpe_16e6",
                 "context_length": 77},
        "audio": {"input": "[B, 1, 128, 204] or [B, S, 1, 128, 204]", "sample_rate": 16000,
                  "clip_seconds": 2.0, "clips_per_item": 3, "n_mels": 128, "frames": 204,
                  "features": "kaldi fbank (hanning, 10 ms shift, dither 0)",
                  "mean": -4.268, "std": 9.138},
        "thermal": {"input": "[B, 1, 224, 224]", "image_size": 224},
        "depth": {"input": "[B, 1, 224, 224]", "image_size": 224},
        "imu": {"input": "[B, 6, 2000]"},
    },
))
