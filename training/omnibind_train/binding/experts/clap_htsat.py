"""LAION-CLAP's HTSAT audio branch (``audio_branch``) in the published layout: the torchlibrosa
log-mel front end (``Spectrogram`` / ``LogmelFilterBank``), the Swin layers, the patch embedding
with its ``aff_2d`` fusion, and HTSAT itself. :mod:`.clap` (the family module) builds the space.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .common import GeluMlp

__all__ = ["AFF", "HTSAT", "BasicLayer", "LogmelFilterBank", "PatchEmbed", "PatchMerging",
           "Spectrogram", "SwinBlock", "WindowAttention", "htk_mel_filterbank",
           "slaney_mel_filterbank"]

#: The expert kind errors name (registered by :mod:`.clap`).
_KIND = "laion_clap"


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
        self.mlp = GeluMlp(dim, int(dim * mlp_ratio))
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
            raise ValueError(f"{_KIND}: spec_size {spec} must be a multiple of n_mels {n_mels}")
        self.enable_fusion = bool(a["enable_fusion"])
        if self.enable_fusion and a["fusion_type"] != "aff_2d":
            raise ValueError(f"{_KIND}: fusion_type {a['fusion_type']!r} is not supported "
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
            raise ValueError(f"{_KIND}: {t} frames x {f} mel bins exceed the model's "
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
