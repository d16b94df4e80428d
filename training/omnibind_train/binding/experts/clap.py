"""LAION-CLAP audio-text expert (kind ``"laion_clap"``) in the published checkpoint layout.

Layout followed: github.com/LAION-AI/CLAP, ``src/laion_clap/clap_module/model.py``
(class ``CLAP``), ``htsat.py`` (``HTSAT_Swin_Transformer``), ``feature_fusion.py`` (``AFF``),
the torchlibrosa ``Spectrogram`` / ``LogmelFilterBank`` front end it embeds, and HF
``RobertaModel`` for the text branch. Every parameter and persistent buffer has the published
name, so a published ``.pt`` (``{"state_dict": {"module.<key>": ...}, "epoch": ...,
"optimizer": ...}``) loads strictly:

- ``audio_branch.spectrogram_extractor.stft.conv_{real,imag}.weight`` (Hann-windowed DFT as a
  Conv1d), ``audio_branch.logmel_extractor.melW`` (librosa Slaney mel filterbank),
  ``audio_branch.bn0``, ``audio_branch.patch_embed.{proj,norm}``,
  ``audio_branch.layers.N.blocks.M.{norm1, attn.{qkv, proj, relative_position_bias_table,
  relative_position_index}, attn_mask (shifted blocks only), norm2, mlp.fc1, mlp.fc2}``,
  ``audio_branch.layers.N.downsample.{norm,reduction}``, ``audio_branch.norm``,
  ``audio_branch.tscam_conv``, ``audio_branch.head``; fusion (``aff_2d``) adds
  ``audio_branch.patch_embed.mel_conv2d`` and ``audio_branch.patch_embed.fusion_model.{local_att,
  global_att}.*``.
- ``text_branch.embeddings.{word,position,token_type}_embeddings``, ``text_branch.embeddings.
  LayerNorm``, ``text_branch.encoder.layer.N.{attention.self.{query,key,value},
  attention.output.{dense,LayerNorm}, intermediate.dense, output.{dense,LayerNorm}}``,
  ``text_branch.pooler.dense`` (RoBERTa-base, post-LayerNorm, eps 1e-5, pad id 1).
- ``text_projection.{0,2}``, ``audio_projection.{0,2}`` (Linear-ReLU-Linear into the 512-d joint
  space), ``text_transform.sequential.{0,3}``, ``audio_transform.sequential.{0,3}`` (training-only
  MLPs, loaded but unused by embeddings), ``logit_scale_a``, ``logit_scale_t``.

Embeddings are what ``CLAP.get_audio_embedding`` / ``get_text_embedding`` return before their
L2 normalisation: ``audio_projection(mean over HTSAT's final normed tokens)`` and
``text_projection(RoBERTa pooler_output)``.

Inputs (``ExpertConfig.preprocess``):

- ``audio``: a 48 kHz mono waveform ``[B, T]`` (float in [-1, 1]). Shorter clips are
  repeat-padded to 10 s (``data_filling="repeatpad"``), longer ones are cut to their first 10 s
  (the published ``rand_trunc`` crops at random; a deterministic crop is chosen here). The
  non-fusion model computes its log-mel inside (``spectrogram_extractor`` ->
  ``logmel_extractor`` -> ``bn0``), as published. The fusion model was trained on the data
  pipeline's torchaudio HTK mel (``training/data.py: get_mel``); for a waveform input it is
  recomputed here in plain torch (``torch.stft`` + HTK filterbank, power to dB) and fed as the
  four identical ``mel_fusion`` channels of a clip of at most 10 s (``longer=False``). For the
  published long-audio fusion path pass a mapping ``{"mel_fusion": [B, 4, T, n_mels],
  "longer": [B] bool}`` prepared like ``get_audio_features`` (random chunks + shrunk global
  view); the attentional feature fusion (``AFF``) then runs on the longer items.
  The published hook also round-trips waveforms through int16; do that in the pipeline if wanted.
- ``text``: ``{"input_ids": [B, L], "attention_mask": [B, L]}`` from the RoBERTa tokenizer
  (``roberta-base``, max length 77, padding to max length); a bare id tensor gets the mask
  ``ids != pad_id``. :meth:`ClapSpace.tokenize` uses a local tokenizer directory
  (``preprocess["text"]["tokenizer"]``) via ``transformers.AutoTokenizer`` if one is set.

Not supported (fails loudly): PANN audio branches, BERT/BART/transformer text branches, the 1-D
fusion variants (``daf_1d``/``aff_1d``/``iaff_1d``, which add ``audio_branch.mel_conv1d``),
``channel_map`` / ``daf_2d`` / ``iaff_2d`` fusion, absolute position embeddings (``ape``),
training-time SpecAugment / mixup. ``tscam_conv`` and ``head`` (the AudioSet tagging head) are
loaded but not evaluated: they do not feed the embedding. Published checkpoints also carry the
derived buffer ``text_branch.embeddings.position_ids`` (older transformers); it is dropped on load
as the reference loader does. Checkpoints without the STFT / mel front-end tensors get them
computed from the config (they are fixed functions of it).
"""
from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...models.vit import read_checkpoint
from .common import ExpertConfig, ExpertSpace, register_expert, register_expert_kind

__all__ = ["ClapSpace", "HTSAT", "RobertaModel", "build_clap", "read_clap_checkpoint",
           "CLAP_DEFAULT_ARCH"]

KIND = "laion_clap"

#: HTSAT-tiny / RoBERTa-base defaults (``model_configs/HTSAT-tiny.json`` + ``htsat.py``).
CLAP_DEFAULT_ARCH: dict[str, Any] = {
    # audio front end (audio_cfg)
    "sample_rate": 48000, "clip_samples": 480000, "n_fft": 1024, "hop_length": 480,
    "n_mels": 64, "fmin": 50.0, "fmax": 14000.0,
    # HTSAT (create_htsat_model)
    "spec_size": 256, "patch_size": 4, "patch_stride": 4, "htsat_dim": 96,
    "depths": [2, 2, 6, 2], "num_heads": [4, 8, 16, 32], "swin_window": 8, "mlp_ratio": 4.0,
    "num_classes": 527, "enable_fusion": False, "fusion_type": "aff_2d",
    # RoBERTa-base text branch
    "text_vocab_size": 50265, "text_max_positions": 514, "text_type_vocab_size": 1,
    "text_width": 768, "text_layers": 12, "text_heads": 12, "text_mlp_dim": 3072,
    "text_ln_eps": 1e-5, "text_pad_id": 1,
    # joint space
    "joint_embed_dim": 512, "mlp_act": "relu",
}

#: Derived tensors some checkpoints carry that the model recomputes (dropped on load).
_DERIVED_KEYS = ("text_branch.embeddings.position_ids", "text_branch.embeddings.token_type_ids")
_FRONTEND_KEYS = ("audio_branch.spectrogram_extractor.stft.conv_real.weight",
                  "audio_branch.spectrogram_extractor.stft.conv_imag.weight",
                  "audio_branch.logmel_extractor.melW")


def _arch(cfg: ExpertConfig) -> dict[str, Any]:
    unknown = sorted(set(cfg.arch) - set(CLAP_DEFAULT_ARCH))
    if unknown:
        raise ValueError(f"{KIND}: unknown arch key(s) {unknown}; known: "
                         f"{sorted(CLAP_DEFAULT_ARCH)}")
    return {**CLAP_DEFAULT_ARCH, **cfg.arch}


# --- audio front end (torchlibrosa layout) ----------------------------------------------------

def _hz_to_mel_slaney(f: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz, min_log_mel = 200.0 / 3, 1000.0, 15.0
    logstep = math.log(6.4) / 27.0
    lin = f / f_sp
    return torch.where(f >= min_log_hz,
                       min_log_mel + torch.log(torch.clamp(f, min=1e-10) / min_log_hz) / logstep,
                       lin)


def _mel_to_hz_slaney(m: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz, min_log_mel = 200.0 / 3, 1000.0, 15.0
    logstep = math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)),
                       f_sp * m)


def slaney_mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float
                          ) -> torch.Tensor:
    """``librosa.filters.mel(htk=False, norm="slaney").T``: ``[n_fft // 2 + 1, n_mels]``."""
    cpu = torch.device("cpu")  # computed on the CPU even under a meta / cuda default device
    fft_freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64, device=cpu)
    lo, hi = _hz_to_mel_slaney(torch.tensor([float(fmin), float(fmax)], dtype=torch.float64,
                                            device=cpu)).tolist()
    mel_pts = torch.linspace(lo, hi, n_mels + 2, dtype=torch.float64, device=cpu)
    mel_f = _mel_to_hz_slaney(mel_pts)
    fdiff = mel_f[1:] - mel_f[:-1]
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    weights = weights * (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.T.float().contiguous()


def htk_mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float
                       ) -> torch.Tensor:
    """torchaudio ``melscale_fbanks(mel_scale="htk", norm=None)``: ``[n_fft // 2 + 1, n_mels]``."""
    cpu = torch.device("cpu")
    all_freqs = torch.linspace(0, sr // 2, n_fft // 2 + 1, dtype=torch.float64, device=cpu)
    to_mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)  # noqa: E731
    m_pts = torch.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2, dtype=torch.float64,
                           device=cpu)
    f_pts = 700.0 * (10.0 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).float().contiguous()


class _STFT(nn.Module):
    """torchlibrosa ``STFT``: real / imaginary Hann-windowed DFT rows as frozen Conv1d kernels."""

    def __init__(self, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        bins = n_fft // 2 + 1
        self.conv_real = nn.Conv1d(1, bins, n_fft, stride=hop_length, bias=False)
        self.conv_imag = nn.Conv1d(1, bins, n_fft, stride=hop_length, bias=False)
        n = torch.arange(n_fft, dtype=torch.float64)
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / n_fft)  # periodic Hann
        angle = 2 * math.pi * torch.arange(bins, dtype=torch.float64)[:, None] * n[None] / n_fft
        with torch.no_grad():
            self.conv_real.weight.copy_((torch.cos(angle) * window)[:, None].float())
            self.conv_imag.weight.copy_((-torch.sin(angle) * window)[:, None].float())
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.pad(x[:, None, :], (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        return (self.conv_real(x)[:, None].transpose(2, 3),
                self.conv_imag(x)[:, None].transpose(2, 3))


class Spectrogram(nn.Module):
    """``[B, T]`` -> power spectrogram ``[B, 1, frames, n_fft // 2 + 1]``."""

    def __init__(self, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self.stft = _STFT(n_fft, hop_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        real, imag = self.stft(x)
        return real ** 2 + imag ** 2


class LogmelFilterBank(nn.Module):
    """Power spectrogram -> dB mel (``ref=1``, ``amin=1e-10``, ``top_db=None``)."""

    def __init__(self, sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> None:
        super().__init__()
        self.melW = nn.Parameter(slaney_mel_filterbank(sr, n_fft, n_mels, fmin, fmax),
                                 requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10(torch.clamp(x @ self.melW, min=1e-10))


# --- HTSAT (Swin transformer over the log-mel "image") -----------------------------------------

def _window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w, w, c)


def _window_reverse(win: torch.Tensor, w: int, h: int, wd: int) -> torch.Tensor:
    b = win.shape[0] // ((h // w) * (wd // w))
    x = win.view(b, h // w, wd // w, w, w, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, wd, -1)


class WindowAttention(nn.Module):
    """Window MSA with a learned relative position bias (Swin / HTSAT names)."""

    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.window, self.heads = window, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            0.02 * torch.randn((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                            indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        index = rel[..., 0] * (2 * window - 1) + rel[..., 1]
        self.register_buffer("relative_position_index", index)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.heads, n, n)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """HTSAT ``SwinTransformerBlock`` (pre-norm, optional cyclic shift with its mask buffer)."""

    def __init__(self, dim: int, resolution: tuple[int, int], heads: int, window: int,
                 shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.resolution = resolution
        if min(resolution) <= window:  # window covers the map: no partition, no shift
            shift, window = 0, min(resolution)
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        mask = None
        if shift > 0:
            h, w = resolution
            img = torch.zeros(1, h, w, 1)
            spans = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
            cnt = 0
            for hs in spans:
                for ws in spans:
                    img[:, hs, ws, :] = cnt
                    cnt += 1
            win = _window_partition(img, window).view(-1, window * window)
            diff = win[:, None, :] - win[:, :, None]
            mask = diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)
        self.register_buffer("attn_mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        win = _window_partition(y, self.window).view(-1, self.window * self.window, c)
        win = self.attn(win, self.attn_mask).view(-1, self.window, self.window, c)
        y = _window_reverse(win, self.window, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, resolution: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(nn.Module):
    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, heads: int,
                 window: int, mlp_ratio: float, downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, heads, window, 0 if i % 2 == 0 else window // 2,
                      mlp_ratio) for i in range(depth))
        self.downsample = PatchMerging(resolution, dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class AFF(nn.Module):
    """Attentional feature fusion (2-D), ``feature_fusion.AFF`` names (r = 4)."""

    def __init__(self, channels: int, r: int = 4) -> None:
        super().__init__()
        inter = channels // r
        self.local_att = nn.Sequential(
            nn.Conv2d(channels, inter, 1), nn.BatchNorm2d(inter), nn.ReLU(inplace=True),
            nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels))
        self.global_att = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, inter, 1), nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True), nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        xa = x + residual
        wei = torch.sigmoid(self.local_att(xa) + self.global_att(xa))
        return 2 * x * wei + 2 * residual * (1 - wei)


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch: int, stride: int, dim: int, fusion: bool) -> None:
        super().__init__()
        self.img_size, self.fusion = img_size, fusion
        pad = ((patch - stride) // 2, (patch - stride) // 2)
        self.proj = nn.Conv2d(1, dim, patch, stride=stride, padding=pad)
        self.norm = nn.LayerNorm(dim)
        if fusion:
            self.mel_conv2d = nn.Conv2d(1, dim, (patch, patch * 3), stride=(stride, stride * 3),
                                        padding=pad)
            self.fusion_model = AFF(dim)

    def forward(self, x: torch.Tensor, longer_idx: torch.Tensor | None = None) -> torch.Tensor:
        assert x.shape[-2:] == (self.img_size, self.img_size), (
            f"expected a {self.img_size}x{self.img_size} spectrogram image, got "
            f"{tuple(x.shape[-2:])}")
        if self.fusion:
            glob = self.proj(x[:, 0:1])
            if longer_idx is not None and longer_idx.numel() > 0:
                loc = x[longer_idx, 1:]
                b, c, h, w = loc.shape
                loc = self.mel_conv2d(loc.reshape(b * c, 1, h, w))
                loc = loc.view(b, c, *loc.shape[1:]).permute(0, 2, 3, 1, 4).flatten(3)
                tw = glob.shape[-1]
                loc = F.pad(loc, (0, tw - loc.shape[-1])) if loc.shape[-1] < tw \
                    else loc[..., :tw]
                glob = glob.clone()
                glob[longer_idx] = self.fusion_model(glob[longer_idx], loc)
            x = glob
        else:
            x = self.proj(x)
        return self.norm(x.flatten(2).transpose(1, 2))


class HTSAT(nn.Module):
    """LAION-CLAP ``HTSAT_Swin_Transformer`` (``audio_branch``); forward gives the 'embedding'
    output (mean of the final normed tokens), ``[B, htsat_dim * 2 ** (stages - 1)]``."""

    def __init__(self, a: Mapping[str, Any]) -> None:
        super().__init__()
        spec, n_mels = int(a["spec_size"]), int(a["n_mels"])
        if spec % n_mels:
            raise ValueError(f"{KIND}: spec_size {spec} must be a multiple of n_mels {n_mels}")
        self.enable_fusion = bool(a["enable_fusion"])
        if self.enable_fusion and a["fusion_type"] != "aff_2d":
            raise ValueError(f"{KIND}: fusion_type {a['fusion_type']!r} is not supported "
                             "(only 'aff_2d', the published fusion checkpoints' type)")
        self.spec_size, self.freq_ratio = spec, spec // n_mels
        depths, heads = list(a["depths"]), list(a["num_heads"])
        dim, stride = int(a["htsat_dim"]), int(a["patch_stride"])
        self.spectrogram_extractor = Spectrogram(int(a["n_fft"]), int(a["hop_length"]))
        self.logmel_extractor = LogmelFilterBank(int(a["sample_rate"]), int(a["n_fft"]), n_mels,
                                                 float(a["fmin"]), float(a["fmax"]))
        self.bn0 = nn.BatchNorm2d(n_mels)
        self.patch_embed = PatchEmbed(spec, int(a["patch_size"]), stride, dim,
                                      self.enable_fusion)
        grid = spec // stride
        self.layers = nn.ModuleList(
            BasicLayer(dim * 2 ** i, (grid // 2 ** i, grid // 2 ** i), depths[i], heads[i],
                       int(a["swin_window"]), float(a["mlp_ratio"]), i < len(depths) - 1)
            for i in range(len(depths)))
        self.num_features = dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        sf = spec // 2 ** (len(depths) - 1) // stride // self.freq_ratio
        self.tscam_conv = nn.Conv2d(self.num_features, int(a["num_classes"]), (sf, 3),
                                    padding=(0, 1))
        self.head = nn.Linear(int(a["num_classes"]), int(a["num_classes"]))

    def logmel(self, waveform: torch.Tensor) -> torch.Tensor:
        """The non-fusion front end: ``[B, T]`` -> ``[B, 1, frames, n_mels]`` (dB)."""
        return self.logmel_extractor(self.spectrogram_extractor(waveform))

    def _reshape_wav2img(self, x: torch.Tensor) -> torch.Tensor:
        target_t, target_f = self.spec_size * self.freq_ratio, self.spec_size // self.freq_ratio
        t, f = x.shape[2], x.shape[3]
        if t > target_t or f > target_f:
            raise ValueError(f"{KIND}: {t} frames x {f} mel bins exceed the model's "
                             f"{target_t} x {target_f}")
        if t < target_t:
            x = F.interpolate(x, (target_t, f), mode="bicubic", align_corners=True)
        if f < target_f:
            x = F.interpolate(x, (x.shape[2], target_f), mode="bicubic", align_corners=True)
        b, c = x.shape[:2]
        x = x.permute(0, 1, 3, 2).reshape(b, c, target_f, self.freq_ratio, -1)
        return x.permute(0, 1, 3, 2, 4).reshape(b, c, self.freq_ratio * target_f, -1)

    def forward(self, mel: torch.Tensor, longer_idx: torch.Tensor | None = None) -> torch.Tensor:
        """``mel``: ``[B, C, frames, n_mels]`` (C = 1, or 4 ``mel_fusion`` channels)."""
        x = self.bn0(mel.transpose(1, 3)).transpose(1, 3)
        x = self.patch_embed(self._reshape_wav2img(x), longer_idx)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x).mean(dim=1)


# --- RoBERTa text branch -----------------------------------------------------------------------

class _RobertaEmbeddings(nn.Module):
    def __init__(self, vocab: int, positions: int, types: int, width: int, eps: float,
                 pad_id: int) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.word_embeddings = nn.Embedding(vocab, width, padding_idx=pad_id)
        self.position_embeddings = nn.Embedding(positions, width, padding_idx=pad_id)
        self.token_type_embeddings = nn.Embedding(types, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        keep = input_ids.ne(self.pad_id).long()
        pos = torch.cumsum(keep, dim=1) * keep + self.pad_id  # RoBERTa: positions start at pad+1
        x = (self.word_embeddings(input_ids) + self.position_embeddings(pos)
             + self.token_type_embeddings(torch.zeros_like(input_ids)))
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        split = lambda t: t.view(b, n, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5 + bias
        return (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)


class _DenseLN(nn.Module):
    """``dense`` + residual + ``LayerNorm`` (BERT's ``*Output`` modules)."""

    def __init__(self, d_in: int, width: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, eps: float) -> None:
        super().__init__()
        self.self = _SelfAttention(width, heads)
        self.output = _DenseLN(width, width, eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, bias), x)


class _Intermediate(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.attention = _Attention(width, heads, eps)
        self.intermediate = _Intermediate(width, hidden)
        self.output = _DenseLN(hidden, width, eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, bias)
        return self.output(self.intermediate(x), x)


class _Encoder(nn.Module):
    def __init__(self, layers: int, width: int, heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(width, heads, hidden, eps) for _ in range(layers))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, bias)
        return x


class _Pooler(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class RobertaModel(nn.Module):
    """HF ``RobertaModel`` (post-LN BERT) parameter for parameter; forward -> ``pooler_output``."""

    def __init__(self, a: Mapping[str, Any]) -> None:
        super().__init__()
        width = int(a["text_width"])
        self.pad_id = int(a["text_pad_id"])
        self.embeddings = _RobertaEmbeddings(
            int(a["text_vocab_size"]), int(a["text_max_positions"]),
            int(a["text_type_vocab_size"]), width, float(a["text_ln_eps"]), self.pad_id)
        self.encoder = _Encoder(int(a["text_layers"]), width, int(a["text_heads"]),
                                int(a["text_mlp_dim"]), float(a["text_ln_eps"]))
        self.pooler = _Pooler(width)

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = input_ids.ne(self.pad_id)
        x = self.embeddings(input_ids)
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        return self.pooler(self.encoder(x, bias))


class _MLPLayers(nn.Module):
    """CLAP ``MLPLayers(units=[d, d, d])``: ``sequential.{0,3}`` (Linear-ReLU-Dropout-Linear)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.sequential = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(0.1),
                                        nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sequential(x)


def _projection(d_in: int, d_out: int, act: str) -> nn.Sequential:
    acts = {"relu": nn.ReLU, "gelu": nn.GELU}
    if act not in acts:
        raise ValueError(f"{KIND}: mlp_act must be one of {sorted(acts)}, got {act!r}")
    return nn.Sequential(nn.Linear(d_in, d_out), acts[act](), nn.Linear(d_out, d_out))


# --- the space ---------------------------------------------------------------------------------

class _EncoderView(nn.Module):
    """An ``encoders[m]`` entry: calls the space without registering it again as a child (so
    the state_dict keeps exactly the published names)."""

    def __init__(self, space: nn.Module, method: str) -> None:
        super().__init__()
        self.__dict__["_space"] = space
        self._method = method

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return getattr(self.__dict__["_space"], self._method)(*args, **kwargs)


class ClapSpace(ExpertSpace):
    """LAION-CLAP's joint audio-text space (modules at the published root names)."""

    def __init__(self, config: ExpertConfig) -> None:
        a = _arch(config)
        super().__init__(config, int(a["joint_embed_dim"]))
        self.arch = a
        self.audio_branch = HTSAT(a)
        self.text_branch = RobertaModel(a)
        joint = int(a["joint_embed_dim"])
        self.text_transform = _MLPLayers(joint)
        self.text_projection = _projection(int(a["text_width"]), joint, a["mlp_act"])
        self.audio_transform = _MLPLayers(joint)
        self.audio_projection = _projection(self.audio_branch.num_features, joint, a["mlp_act"])
        self.logit_scale_a = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.logit_scale_t = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("_htk_mel", htk_mel_filterbank(
            int(a["sample_rate"]), int(a["n_fft"]), int(a["n_mels"]), float(a["fmin"]),
            float(a["fmax"])), persistent=False)
        wanted = config.modalities or ["audio", "text"]
        bad = sorted(set(wanted) - {"audio", "text"})
        if bad:
            raise ValueError(f"{KIND}: no encoder for modalities {bad}; it embeds audio, text")
        for m in wanted:
            self.encoders[m] = _EncoderView(self, f"embed_{m}")

    # audio ------------------------------------------------------------------------------------
    def _fit_clip(self, waveform: torch.Tensor) -> torch.Tensor:
        """Repeat-pad short clips to ``clip_samples``, keep the first ``clip_samples`` of long."""
        n = int(self.arch["clip_samples"])
        t = waveform.shape[-1]
        if t > n:
            return waveform[..., :n]
        if t < n:
            waveform = waveform.repeat(1, n // t)
            waveform = F.pad(waveform, (0, n - waveform.shape[-1]))
        return waveform

    def htk_logmel(self, waveform: torch.Tensor) -> torch.Tensor:
        """The fusion models' input mel (torchaudio ``MelSpectrogram`` HTK, no norm, power 2,
        ``AmplitudeToDB``): ``[B, T]`` -> ``[B, frames, n_mels]``."""
        n_fft, hop = int(self.arch["n_fft"]), int(self.arch["hop_length"])
        window = torch.hann_window(n_fft, device=waveform.device, dtype=waveform.dtype)
        spec = torch.stft(waveform, n_fft, hop_length=hop, win_length=n_fft, window=window,
                          center=True, pad_mode="reflect", onesided=True, return_complex=True)
        mel = spec.abs().pow(2).transpose(1, 2) @ self._htk_mel.to(waveform.dtype)
        return 10.0 * torch.log10(torch.clamp(mel, min=1e-10))

    def embed_audio(self, waveform: torch.Tensor | None = None,
                    mel_fusion: torch.Tensor | None = None,
                    longer: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, embed_dim]`` audio embeddings (before L2 normalisation).

        ``waveform``: ``[B, T]`` mono at ``sample_rate``; or (fusion models) ``mel_fusion``
        ``[B, 4, frames, n_mels]`` with ``longer`` ``[B]`` bool, as ``get_audio_features`` makes.
        """
        branch = self.audio_branch
        if mel_fusion is not None:
            if not branch.enable_fusion:
                raise ValueError(f"{KIND}: mel_fusion input needs a fusion model "
                                 "(arch enable_fusion=True)")
            idx = None if longer is None else torch.nonzero(longer.bool(), as_tuple=False)[:, 0]
            feats = branch(mel_fusion, idx)
        else:
            if waveform is None:
                raise ValueError(f"{KIND}: audio needs a waveform [B, T] (or mel_fusion)")
            if waveform.ndim != 2:
                raise ValueError(f"{KIND}: waveform must be [B, T], got {tuple(waveform.shape)}")
            waveform = self._fit_clip(waveform.float())
            if branch.enable_fusion:
                mel = self.htk_logmel(waveform)[:, None].expand(-1, 4, -1, -1)
                feats = branch(mel, None)
            else:
                feats = branch(branch.logmel(waveform), None)
        return self.audio_projection(feats)

    # text -------------------------------------------------------------------------------------
    def embed_text(self, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, embed_dim]`` text embeddings (before L2 normalisation) from RoBERTa ids."""
        return self.text_projection(self.text_branch(input_ids.long(), attention_mask))

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """RoBERTa ids + mask (max length 77) with the local tokenizer directory named in
        ``preprocess["text"]["tokenizer"]`` (``transformers`` tokenizer, offline)."""
        text_cfg = self.config.preprocess.get("text", {})
        path = text_cfg.get("tokenizer")
        if not path:
            raise ValueError(f"{KIND}: set preprocess['text']['tokenizer'] to a local "
                             "roberta-base tokenizer directory")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        out = tok(list(texts), padding="max_length", truncation=True,
                  max_length=int(text_cfg.get("context_length", 77)), return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


def read_clap_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """A published CLAP ``.pt`` (full training checkpoint) read weights-only.

    The released files hold numpy scalars next to the weights; they are allow-listed for the
    weights-only unpickler (no arbitrary code runs).
    """
    try:
        return read_checkpoint(path)
    except pickle.UnpicklingError:
        import numpy as np

        try:  # numpy >= 2 (importing numpy.core there warns)
            from numpy._core.multiarray import scalar
        except ImportError:  # numpy 1.x
            from numpy.core.multiarray import scalar
        allowed: list[Any] = [np.dtype, (scalar, "numpy.core.multiarray.scalar"),
                              (scalar, "numpy._core.multiarray.scalar")]
        allowed += [getattr(np.dtypes, n) for n in ("Float32DType", "Float64DType", "Int64DType")
                    if hasattr(getattr(np, "dtypes", None), n)]
        with torch.serialization.safe_globals(allowed):
            return read_checkpoint(path)


def build_clap(cfg: ExpertConfig, load_weights: bool) -> ClapSpace:
    """Builder for kind ``"laion_clap"``: the space, with its published checkpoint if asked."""
    space = ClapSpace(cfg)
    if load_weights:
        assert cfg.checkpoint is not None
        state = {k: v for k, v in read_clap_checkpoint(cfg.checkpoint).items()
                 if k not in _DERIVED_KEYS}
        own = space.state_dict()
        for key in _FRONTEND_KEYS:  # fixed functions of the config: fill if absent
            state.setdefault(key, own[key])
        space.load_published(state, what=f"{KIND} checkpoint {cfg.checkpoint}")
    return space


register_expert_kind(KIND, build_clap)


def _preprocess(arch: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    a = {**CLAP_DEFAULT_ARCH, **arch}
    return {
        "audio": {"input": "waveform [B, T], mono float in [-1, 1]",
                  "sample_rate": a["sample_rate"], "clip_seconds": a["clip_samples"] / a[
                      "sample_rate"], "clip_samples": a["clip_samples"], "n_mels": a["n_mels"],
                  "window": a["n_fft"], "hop": a["hop_length"], "fmin": a["fmin"],
                  "fmax": a["fmax"], "fill": "repeatpad", "truncate": "first clip"},
        "text": {"input": "input_ids + attention_mask [B, L]", "tokenizer": None,
                 "tokenizer_name": "roberta-base", "context_length": 77,
                 "pad_id": a["text_pad_id"]},
    }


#: ``630k-fusion-best.pt``: HTSAT-tiny, aff_2d fusion (``CLAP_Module(enable_fusion=True)``).
_FUSION_ARCH = {"htsat_dim": 96, "depths": [2, 2, 6, 2], "enable_fusion": True,
                "fusion_type": "aff_2d"}
#: ``music_speech_audioset_epoch_15_esc_89.98.pt``: HTSAT-base, no fusion.
_MSA_ARCH = {"htsat_dim": 128, "depths": [2, 2, 12, 2], "enable_fusion": False}

register_expert("laion_clap_630k_fusion", ExpertConfig(
    kind=KIND, arch=dict(_FUSION_ARCH), preprocess=_preprocess(_FUSION_ARCH)))
register_expert("laion_clap_music_speech_audioset", ExpertConfig(
    kind=KIND, arch=dict(_MSA_ARCH), preprocess=_preprocess(_MSA_ARCH)))
