"""Reading the paper-scale pools in their published formats, and each expert's preprocessing.

Pool listing (a folder searched recursively, or a ``.txt`` list of paths), caption files, images
(CLIP resize / crop / normalise), audio (``soundfile`` + ``resample_poly`` to the expert's rate,
CLAP's repeat-padded clip, ImageBind's Kaldi-fbank clips), point clouds (Objaverse-style
``.npy`` / ``.npz``), and the picklable per-(expert, modality) preprocessing the loader workers
run. Used by :mod:`.paper_embed`; the stages are in :mod:`.paper`.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["AUDIO_EXT", "EXPERT_MODALITY", "IMAGE_EXT", "POINT_EXT", "POOL_MODALITIES",
           "fit_clip", "imagebind_audio", "kaldi_fbank", "list_pool", "load_audio",
           "load_image", "load_points", "read_captions"]

POOL_MODALITIES = ("image", "audio", "point_cloud", "text")
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".JPEG", ".JPG", ".PNG")
AUDIO_EXT = (".wav", ".flac", ".WAV", ".FLAC")
POINT_EXT = (".npy", ".npz")
#: binding modality -> the expert's own name for it, per expert kind
EXPERT_MODALITY = {"imagebind": {"image": "vision"}}


# --- pools -------------------------------------------------------------------------------------

def list_pool(spec: str | None, exts: Sequence[str], limit: int | None = None) -> list[str]:
    """Sorted item paths of a pool folder (recursive) or of a ``.txt`` list (one per line)."""
    if not spec:
        return []
    p = Path(spec).expanduser()
    if p.is_file() and p.suffix == ".txt":
        items = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    elif p.is_dir():
        items = sorted(str(f) for f in p.rglob("*") if f.suffix in exts and f.is_file())
    else:
        raise FileNotFoundError(f"pool {spec}: neither a folder nor a .txt list of paths")
    return items[:limit] if limit else items


def read_captions(corpora: Mapping[str, Sequence[str]], limit: int | None = None
                  ) -> tuple[list[str], np.ndarray]:
    """Every corpus's captions (one per non-empty line) and each caption's corpus index."""
    texts: list[str] = []
    styles: list[int] = []
    for ci, files in enumerate(corpora.values()):
        got: list[str] = []
        for f in files:
            got += [ln.strip() for ln in Path(f).expanduser().read_text(encoding="utf-8")
                    .splitlines() if ln.strip()]
        got = got[:limit] if limit else got
        texts += got
        styles += [ci] * len(got)
    return texts, np.asarray(styles, dtype=np.int64)


# --- preprocessing -----------------------------------------------------------------------------

def load_image(path: str, size: int, mean: Sequence[float], std: Sequence[float]
               ) -> torch.Tensor:
    """CLIP preprocessing: RGB, bicubic resize of the shortest side to ``size``, centre crop,
    ``(x - mean) / std`` -> ``[3, size, size]``."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def load_audio(path: str, rate: int) -> torch.Tensor:
    """Mono float waveform at ``rate`` (``soundfile`` + ``scipy.signal.resample_poly``)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    wave, sr = sf.read(path, dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    if sr != rate:
        g = math.gcd(int(sr), int(rate))
        wave = resample_poly(wave, rate // g, sr // g).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(wave))


def fit_clip(wave: torch.Tensor, n: int) -> torch.Tensor:
    """CLAP's ``repeatpad`` to ``n`` samples (the first ``n`` of a longer clip)."""
    if len(wave) == 0:
        return torch.zeros(n)
    if len(wave) >= n:
        return wave[:n]
    wave = wave.repeat(n // len(wave) + 1)
    return wave[:n]


def _mel(f: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(f / 700.0)


def kaldi_fbank(wave: torch.Tensor, sr: int, n_mels: int, *, frame_ms: float = 25.0,
                shift_ms: float = 10.0, low_freq: float = 20.0, preemph: float = 0.97
                ) -> torch.Tensor:
    """``torchaudio.compliance.kaldi.fbank`` as ImageBind calls it (``htk_compat``, no energy,
    Hanning window, dither 0, snip edges, power spectrum, natural log): ``[frames, n_mels]``.
    Re-implemented in torch (torchaudio is not a dependency); not compared numerically with
    torchaudio here (UNVERIFIED beyond the formulas)."""
    win, shift = int(sr * frame_ms / 1000), int(sr * shift_ms / 1000)
    nfft = 1 << (win - 1).bit_length()
    if len(wave) < win:
        return torch.zeros(0, n_mels)
    frames = wave.unfold(0, win, shift).double()
    frames = frames - frames.mean(dim=1, keepdim=True)
    frames = torch.cat((frames[:, :1] * (1 - preemph), frames[:, 1:] - preemph * frames[:, :-1]),
                       dim=1)
    frames = frames * torch.hann_window(win, periodic=False, dtype=torch.float64)
    power = torch.fft.rfft(F.pad(frames, (0, nfft - win)), dim=1).abs().pow(2)
    nyq = sr / 2
    mel_lo, mel_hi = _mel(torch.tensor(low_freq)), _mel(torch.tensor(nyq))
    delta = (mel_hi - mel_lo) / (n_mels + 1)
    fft_mel = _mel(torch.arange(nfft // 2, dtype=torch.float64) * sr / nfft)
    left = mel_lo + torch.arange(n_mels, dtype=torch.float64)[:, None] * delta
    up = (fft_mel[None] - left) / delta
    down = (left + 2 * delta - fft_mel[None]) / delta
    banks = F.pad(torch.clamp(torch.minimum(up, down), min=0.0), (0, 1))  # nyquist bin: 0
    mel = power @ banks.T
    eps = torch.finfo(torch.float32).eps
    return torch.log(torch.clamp(mel, min=eps)).float()


def imagebind_audio(wave: torch.Tensor, pre: Mapping[str, Any], arch: Mapping[str, Any]
                    ) -> torch.Tensor:
    """ImageBind's audio input ``[S, 1, mel_bins, frames]``: ``clips_per_item`` clips of
    ``clip_seconds`` spread evenly over the waveform (``ConstantClipsPerVideoSampler``), each a
    zero-mean Kaldi fbank padded / cut to ``target_len`` frames, normalised."""
    sr = int(pre.get("sample_rate", 16000))
    clip = int(round(float(pre.get("clip_seconds", 2.0)) * sr))
    clips = int(pre.get("clips_per_item", 3))
    mel_bins, target = int(arch["mel_bins"]), int(arch["target_len"])
    span = max(0, len(wave) - clip)
    starts = [round(i * span / max(1, clips - 1)) for i in range(clips)]
    out = []
    for s in starts:
        seg = wave[s:s + clip]
        fb = kaldi_fbank(seg - seg.mean(), sr, mel_bins)
        fb = F.pad(fb, (0, 0, 0, max(0, target - fb.shape[0])))[:target]
        out.append(((fb.T - float(pre.get("mean", -4.268))) / float(pre.get("std", 9.138)))[None])
    return torch.stack(out)


def load_points(path: str, num: int, *, index: int = 0, allow_pickle: bool = False,
                default_rgb: float = 0.4) -> torch.Tensor:
    """``[num, 6]`` xyz + rgb in [0, 1]: centred, scaled into the unit sphere, subsampled
    (seeded by the item index) or repeated to ``num`` points. ``.npz``: ``xyz`` [+ ``rgb``]
    (else the first array); ``.npy``: an ``[N, 3|6]`` array (or, with ``allow_pickle``, a dict
    with ``xyz`` / ``rgb`` as in OpenShape's Objaverse files). Missing colours are
    ``default_rgb`` grey (OpenShape's convention; UNVERIFIED for Uni3D)."""
    if path.endswith(".npz"):
        with np.load(path) as f:
            if "xyz" in f:
                xyz, rgb = f["xyz"], f["rgb"] if "rgb" in f else None
            else:
                arr = f[f.files[0]]
                xyz, rgb = arr[:, :3], arr[:, 3:6] if arr.shape[1] >= 6 else None
    else:
        arr = np.load(path, allow_pickle=allow_pickle)
        if arr.dtype == object:
            d = arr.item()
            xyz, rgb = d["xyz"], d.get("rgb")
        else:
            xyz, rgb = arr[:, :3], arr[:, 3:6] if arr.shape[1] >= 6 else None
    xyz = np.asarray(xyz, np.float32)
    rgb = np.full_like(xyz, default_rgb) if rgb is None else np.asarray(rgb, np.float32)
    if rgb.size and rgb.max() > 1.0:
        rgb = rgb / 255.0
    n = len(xyz)
    if n >= num:
        sel = np.random.default_rng(index).choice(n, num, replace=False)
    else:
        sel = np.resize(np.arange(n), num)
    xyz, rgb = xyz[sel], rgb[sel]
    xyz = xyz - xyz.mean(axis=0, keepdims=True)
    xyz = xyz / max(float(np.linalg.norm(xyz, axis=1).max()), 1e-6)
    return torch.from_numpy(np.concatenate((xyz, rgb), axis=1))


class _Items(torch.utils.data.Dataset):
    """A chunk's items, preprocessed for one expert; ``(tensor, ok)`` (a broken file gives a
    zero tensor and ``ok=False``: its row is marked invalid, the run goes on)."""

    def __init__(self, paths: Sequence[str], start: int, prep: Callable[[str, int], torch.Tensor],
                 shape_of: Callable[[], torch.Tensor]) -> None:
        self.paths, self.start, self.prep, self.shape_of = list(paths), start, prep, shape_of

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        try:
            return self.prep(self.paths[i], self.start + i), True
        except Exception as exc:  # noqa: BLE001 - a corrupt pool file must not stop the run
            warnings.warn(f"skipping {self.paths[i]}: {exc}", stacklevel=1)
            return self.shape_of(), False


@dataclass
class _Prep:
    """Picklable per-(expert, modality) preprocessing (loader workers)."""

    kind: str
    modality: str
    pre: dict[str, Any]
    arch: dict[str, Any]
    allow_pickle: bool = False

    def __call__(self, path: str, index: int) -> torch.Tensor:
        m = self.modality
        if m == "image":
            size = int(self.pre.get("size", self.pre.get("image_size", 224)))
            return load_image(path, size, self.pre["mean"], self.pre["std"])
        if m == "audio":
            if self.kind == "imagebind":
                return imagebind_audio(load_audio(path, int(self.pre.get("sample_rate", 16000))),
                                       self.pre, self.arch["audio"])
            return fit_clip(load_audio(path, int(self.arch["sample_rate"])),
                            int(self.arch["clip_samples"]))
        if m == "point_cloud":
            return load_points(path, int(self.pre.get("num_points", 10000)), index=index,
                               allow_pickle=self.allow_pickle)
        raise ValueError(f"no file preprocessing for {m}")

    def empty(self) -> torch.Tensor:
        m = self.modality
        if m == "image":
            size = int(self.pre.get("size", self.pre.get("image_size", 224)))
            return torch.zeros(3, size, size)
        if m == "audio":
            if self.kind == "imagebind":
                a = self.arch["audio"]
                return torch.zeros(int(self.pre.get("clips_per_item", 3)), 1, int(a["mel_bins"]),
                                   int(a["target_len"]))
            return torch.zeros(int(self.arch["clip_samples"]))
        return torch.zeros(int(self.pre.get("num_points", 10000)), 6)
