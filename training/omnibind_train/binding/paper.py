"""OmniBind binding at paper scale: real experts, unpaired pools in published formats, torchrun.

Run (one 8-GPU node; ``training/configs/paper_binding.yaml``, paths filled in)::

    torchrun --standalone --nproc_per_node 8 -m omnibind_train.binding.paper \\
        --config training/configs/paper_binding.yaml \\
        [--set key=value ...] [--stages embed,pairs,train]

One process also works (``python -m omnibind_train.binding.paper --config ...``). This is a
separate entry point: ``family: binding_paper`` is not routed by ``omnibind-train`` (whose
``family: binding`` is the simulated world's pipeline, :mod:`.pipeline`).

Stages (each stores its output under ``out_dir`` and is skipped when that output exists, so a
killed job resumes where it stopped):

1. **embed** -- every configured expert (registry name + local ``checkpoint``) embeds every
   pool it has an encoder for. Pools are published formats: an image folder (``jpg``/``png``,
   e.g. ImageNet train), an audio folder (``wav``/``flac``, e.g. AudioSet clips; resampled to
   each expert's rate with ``scipy.signal.resample_poly``), a point-cloud folder (``.npy`` /
   ``.npz``, Objaverse-style ``xyz`` [+ ``rgb``]), and caption files (one caption per line, one
   list of files per corpus: image / audio / 3D captions), or a ``.txt`` file listing item paths.
   Items are cut into chunks of ``embed.chunk`` rows dealt round-robin to the ranks; each chunk is
   one ``.npz`` (written atomically, skipped when present). Rank 0 then assembles each
   ``(space, modality)`` into one ``.npy`` that every rank memory-maps: the
   :class:`~.bank.EmbeddingBank` of the pools (:func:`load_bank`). Preprocessing follows each
   expert's ``ExpertConfig.preprocess`` (image size / mean / std, CLAP's rate and 10 s clip with
   repeat-padding, ImageBind's three 2 s Kaldi-fbank clips, Uni3D's 10k points in the unit
   sphere); text needs a local tokenizer directory per expert (``tokenizer``: CLIP BPE or
   RoBERTa, read with ``transformers.AutoTokenizer``, offline) -- absent, the run stops before
   embedding anything and says which expert needs one.
2. **pairs** -- pseudo tuples with the configured retrievers (paper: WavCaps/CLAP audio-text,
   EVA-CLIP-18B image-text, ImageBind audio-image, Uni3D 3D-image/text), the same algorithm as
   :func:`.pseudo_pairs.build_tuples` (every valid item a query, top-1 in every other pool, hubs
   for pairs without a retriever), with each rank searching its share of the queries on its
   device; the result is identical to the single-process one.
3. **train** -- projectors (Eq. 1-2; 7 heads, 2048 hidden, tau 0.03) then, per variant
   (Base / Large / Full), routers (Eq. 5-7, lambda 3), with :mod:`.train_binding`'s DDP
   (per-rank slices of each global batch, gathered negatives, gradient all-reduce), bf16 autocast
   on CUDA, periodic checkpoints and resume.

Nothing GPU-specific is exported: the trained projectors / routers are plain safetensors under
``out_dir/train``; building the bound bundle for the runtime stays the sim pipeline's job
(:mod:`.export`).

Memory: EVA-CLIP-18B (the target) needs about 36 GB in bf16 (``embed.expert_dtype: bf16``):
its embedding pass needs 40 GB+ GPUs (A100/H100 80 GB); every other expert and all of the
training fit a 24 GB RTX 4090.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..trainers.common import ConfigBase
from ..trainers.distributed import DistInfo, barrier, broadcast_object, cleanup, init_distributed
from .bank import EmbeddingBank
from .experts.common import ExpertConfig, ExpertSpace, build_expert, get_expert_config
from .model import BindingModel, RouterConfig, SpaceInfo
from .pseudo_pairs import PseudoTuples, Retriever, parse_retrievers
from .train_binding import (
    PRECISIONS,
    ProjectorTraining,
    RouterTraining,
    train_projectors,
    train_routers,
)

__all__ = ["EmbedSettings", "PaperBindingConfig", "PaperExpert", "PaperPools", "STAGES",
           "build_tuples_sharded", "embed_pools", "kaldi_fbank", "load_bank", "main", "run"]

FAMILY = "binding_paper"
STAGES = ("embed", "pairs", "train")
POOL_MODALITIES = ("image", "audio", "point_cloud", "text")
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".JPEG", ".JPG", ".PNG")
AUDIO_EXT = (".wav", ".flac", ".WAV", ".FLAC")
POINT_EXT = (".npy", ".npz")
#: binding modality -> the expert's own name for it, per expert kind
EXPERT_MODALITY = {"imagebind": {"image": "vision"}}

#: ``tokenizer_factory(expert, space) -> (list[str] -> {"input_ids", "attention_mask"})``
TokenizerFactory = Callable[["PaperExpert", ExpertSpace], Callable[[list[str]], dict]]


# --- config ------------------------------------------------------------------------------------

@dataclass
class PaperExpert(ConfigBase):
    """One pre-trained space.

    Attributes
    ----------
    name : space name (variants, retrievers and the target refer to it).
    registry : registered expert config (:func:`.experts.list_experts`); default ``name``.
    checkpoint : local path of the published checkpoint.
    arch : entries replacing the registered architecture's (top-level keys).
    preprocess : modality -> entries replacing the registered preprocessing contract.
    modalities : binding modalities to embed (default: those it has among the pools').
    tokenizer : local tokenizer directory (CLIP BPE or RoBERTa) for its text encoder.
    corpus : the caption corpus its text tower was trained for (L_dec's y; a key of
        ``pools.captions``), or None.
    alias : modality -> another expert whose embeddings this space reuses (Uni3D's image / text
        towers *are* EVA02-E14+'s: embedding them again would be wasted).
    batch_size : embedding batch.
    """

    name: str = ""
    registry: str = ""
    checkpoint: str | None = None
    arch: dict[str, Any] = field(default_factory=dict)
    preprocess: dict[str, dict[str, Any]] = field(default_factory=dict)
    modalities: list[str] | None = None
    tokenizer: str | None = None
    corpus: str | None = None
    alias: dict[str, str] = field(default_factory=dict)
    batch_size: int = 64

    def config(self) -> ExpertConfig:
        reg = get_expert_config(self.registry or self.name)
        pre = {m: {**reg.preprocess.get(m, {}), **self.preprocess.get(m, {})}
               for m in set(reg.preprocess) | set(self.preprocess)}
        return dataclasses.replace(reg, checkpoint=self.checkpoint, arch={**reg.arch,
                                                                          **self.arch},
                                   preprocess=pre)


@dataclass
class PaperPools(ConfigBase):
    """The unpaired pools: a folder (searched recursively) or a ``.txt`` list of paths each;
    ``captions``: corpus -> caption files (corpus order = style index); ``limit``: first N items
    of every pool (smoke runs)."""

    image: str | None = None
    audio: str | None = None
    point_cloud: str | None = None
    captions: dict[str, list[str]] = field(default_factory=dict)
    limit: int | None = None


@dataclass
class EmbedSettings(ConfigBase):
    """Embedding pass: ``chunk`` rows per chunk file, ``workers`` loader processes per rank,
    ``dtype`` of the stored embeddings, ``expert_dtype`` of the expert weights on CUDA,
    ``allow_pickle`` for Objaverse ``.npy`` files that are pickled dicts (arbitrary code:
    off by default)."""

    chunk: int = 8192
    workers: int = 6
    dtype: str = "float16"
    expert_dtype: str = "bf16"
    allow_pickle: bool = False


def _paper_projector() -> ProjectorTraining:
    return ProjectorTraining(heads=7, hidden_dim=2048, epochs=10, lr=1e-3, batch_size=4096)


def _paper_routers() -> RouterTraining:
    return RouterTraining(lam=3.0, epochs=5, lr=1e-3, batch_size=4096)


@dataclass
class PaperBindingConfig(ConfigBase):
    """``training/configs/paper_binding.yaml`` (``family: binding_paper``)."""

    family: str = FAMILY
    name: str = "omnibind_paper"
    out_dir: str = "runs/omnibind_paper"
    seed: int = 0
    device: str = "auto"
    precision: str = "bf16"
    progress: bool = True
    experts: list[PaperExpert] = field(default_factory=list)
    target: str = "eva_clip_18b"
    pools: PaperPools = field(default_factory=PaperPools)
    retrievers: dict[str, list[str]] = field(default_factory=dict)
    hubs: list[str] = field(default_factory=lambda: ["image", "text"])
    projector: ProjectorTraining = field(default_factory=_paper_projector)
    router_training: RouterTraining = field(default_factory=_paper_routers)
    router: RouterConfig = field(default_factory=RouterConfig)
    variants: dict[str, list[str]] = field(default_factory=dict)
    embed: EmbedSettings = field(default_factory=EmbedSettings)
    retrieval_chunk: int = 4096
    checkpoint_every: int = 200
    sync_bn: bool = False

    def __post_init__(self) -> None:
        if self.family != FAMILY:
            raise ValueError(f"family must be {FAMILY!r}, got {self.family!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        names = [e.name for e in self.experts]
        if len(set(names)) != len(names) or "" in names:
            raise ValueError(f"experts need distinct non-empty names, got {names}")
        if self.target not in names:
            raise ValueError(f"target {self.target!r} is not an expert ({names})")
        for v, spaces in self.variants.items():
            unknown = sorted(set(spaces) - set(names))
            if unknown:
                raise ValueError(f"variant {v!r} binds {unknown}, not among the experts")
        for e in self.experts:
            if e.corpus is not None and e.corpus not in self.pools.captions:
                raise ValueError(f"expert {e.name}: corpus {e.corpus!r} is not a caption corpus "
                                 f"({sorted(self.pools.captions)})")
            for m, src in e.alias.items():
                if src not in names:
                    raise ValueError(f"expert {e.name}: alias {m} -> {src!r}: no such expert")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> PaperBindingConfig:
        import yaml

        from ..data import resolve_path
        from ..pipeline.config import apply_overrides

        raw = yaml.safe_load(resolve_path(path).read_text()) or {}
        return cls.from_dict(apply_overrides(raw, overrides))

    def expert(self, name: str) -> PaperExpert:
        return next(e for e in self.experts if e.name == name)


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


def default_tokenizer(expert: PaperExpert, space: ExpertSpace) -> Callable[[list[str]], dict]:
    """``transformers.AutoTokenizer`` from the expert's local ``tokenizer`` directory (offline),
    padded / truncated to the text context length."""
    if not expert.tokenizer:
        raise ValueError(f"expert {expert.name}: its text encoder needs a local tokenizer "
                         "directory (CLIP BPE for open_clip / EVA-CLIP / Uni3D / ImageBind, e.g. "
                         "a saved openai/clip-vit-base-patch32 tokenizer; roberta-base for "
                         f"LAION-CLAP): set experts[{expert.name}].tokenizer")
    path = Path(expert.tokenizer).expanduser()
    if not path.is_dir():
        raise ValueError(f"expert {expert.name}: tokenizer directory {path} does not exist")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    length = int(space.config.preprocess.get("text", {}).get("context_length", 77))

    def encode(texts: list[str]) -> dict[str, torch.Tensor]:
        out = tok(list(texts), padding="max_length", truncation=True, max_length=length,
                  return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    return encode


# --- stage 1: embedding ------------------------------------------------------------------------

def _say(dist: DistInfo, msg: str) -> None:
    if dist.is_main:
        print(msg, flush=True)


def _pool_modalities(cfg: PaperBindingConfig) -> list[str]:
    p = cfg.pools
    return [m for m in POOL_MODALITIES if (p.captions if m == "text" else getattr(p, m))]


def _expert_modalities(cfg: PaperBindingConfig, e: PaperExpert) -> list[str]:
    """Binding modalities the expert embeds among the pools (aliased ones included)."""
    kind = e.config().kind
    own = {"open_clip": ["image", "text"], "eva_clip": ["image", "text"],
           "laion_clap": ["audio", "text"], "uni3d": ["point_cloud", "image", "text"],
           "imagebind": ["image", "audio", "text"]}.get(kind, list(POOL_MODALITIES))
    wanted = e.modalities if e.modalities is not None else own
    return [m for m in _pool_modalities(cfg) if m in wanted]


def _atomic_npz(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _build(cfg: PaperBindingConfig, e: PaperExpert, mods: Sequence[str], dist: DistInfo
           ) -> ExpertSpace:
    ec = e.config()
    remap = EXPERT_MODALITY.get(ec.kind, {})
    space = build_expert(ec, modalities=[remap.get(m, m) for m in mods])
    if dist.device.type == "cuda" and cfg.embed.expert_dtype == "bf16":
        space = space.to(torch.bfloat16)
    return space.to(dist.device).eval()


@torch.no_grad()
def _embed_batch(space: ExpertSpace, kind: str, modality: str, x: Any, device: torch.device
                 ) -> torch.Tensor:
    name = EXPERT_MODALITY.get(kind, {}).get(modality, modality)
    dtype = next(space.parameters()).dtype
    if isinstance(x, Mapping):
        x = {k: v.to(device) for k, v in x.items()}
        if kind != "laion_clap":
            x = x["input_ids"]
    else:
        x = x.to(device, dtype) if x.is_floating_point() else x.to(device)
    return space.encode(name, x).float().cpu()


def embed_pools(cfg: PaperBindingConfig, dist: DistInfo,
                tokenizer_factory: TokenizerFactory | None = None) -> Path:
    """Stage 1: every expert's embeddings of every pool, chunked across ranks (resumable);
    rank 0 assembles ``bank/<space>/<modality>.npy`` (+ ``.valid.npy``), ``bank/manifest.json``.
    Returns the bank folder."""
    from tqdm import tqdm

    out = Path(cfg.out_dir) / "bank"
    manifest = out / "manifest.json"
    if manifest.exists():
        return out
    tokenizer_factory = tokenizer_factory or default_tokenizer
    lim = cfg.pools.limit
    items = {"image": list_pool(cfg.pools.image, IMAGE_EXT, lim),
             "audio": list_pool(cfg.pools.audio, AUDIO_EXT, lim),
             "point_cloud": list_pool(cfg.pools.point_cloud, POINT_EXT, lim)}
    texts, styles = read_captions(cfg.pools.captions, lim)
    sizes = {m: (len(texts) if m == "text" else len(items[m])) for m in _pool_modalities(cfg)}
    jobs = []  # (expert, modality, chunk)
    for e in cfg.experts:
        for m in _expert_modalities(cfg, e):
            if m in e.alias:
                continue
            for c in range(math.ceil(sizes[m] / cfg.embed.chunk)):
                jobs.append((e.name, m, c))
    mine = [j for i, j in enumerate(jobs) if i % dist.world_size == dist.rank]
    todo = [j for j in mine if not (out / "chunks" / j[0] / j[1] / f"{j[2]:06d}.npz").exists()]
    # a missing tokenizer stops every rank before any embedding is computed
    needs_text = sorted({e.name for e in cfg.experts if "text" in _expert_modalities(cfg, e)
                         and "text" not in e.alias and not e.tokenizer})
    if needs_text and tokenizer_factory is default_tokenizer:
        default_tokenizer(cfg.expert(needs_text[0]), None)  # type: ignore[arg-type]  # raises
    _say(dist, f"[embed] {len(jobs)} chunks over {dist.world_size} rank(s); "
               f"pools: {sizes}")
    bar = tqdm(total=len(todo), desc=f"embed r{dist.rank}", disable=not cfg.progress,
               unit="chunk", position=dist.rank)
    by_expert: dict[str, list[tuple[str, str, int]]] = {}
    for j in todo:
        by_expert.setdefault(j[0], []).append(j)
    for name, js in by_expert.items():
        e = cfg.expert(name)
        mods = sorted({m for _, m, _ in js})
        space = _build(cfg, e, [m for m in _expert_modalities(cfg, e) if m not in e.alias], dist)
        kind = space.config.kind
        tok = tokenizer_factory(e, space) if "text" in mods else None
        for _, m, c in js:
            lo, hi = c * cfg.embed.chunk, min(sizes[m], (c + 1) * cfg.embed.chunk)
            embs, ok = [], []
            if m == "text":
                for i in range(lo, hi, e.batch_size):
                    batch = texts[i:min(hi, i + e.batch_size)]
                    embs.append(_embed_batch(space, kind, m, tok(batch), dist.device))
                    ok.append(torch.ones(len(batch), dtype=torch.bool))
            else:
                ec = space.config
                prep = _Prep(kind, m, dict(ec.preprocess.get(EXPERT_MODALITY.get(kind, {})
                                                             .get(m, m), {})),
                             dict(getattr(space, "arch", ec.arch)), cfg.embed.allow_pickle)
                ds = _Items(items[m][lo:hi], lo, prep, prep.empty)
                loader = torch.utils.data.DataLoader(
                    ds, batch_size=e.batch_size, num_workers=cfg.embed.workers,
                    pin_memory=dist.device.type == "cuda")
                for x, valid in loader:
                    embs.append(_embed_batch(space, kind, m, x, dist.device))
                    ok.append(valid.bool())
            emb = torch.cat(embs).numpy().astype(cfg.embed.dtype)
            _atomic_npz(out / "chunks" / name / m / f"{c:06d}.npz", emb=emb,
                        valid=torch.cat(ok).numpy())
            bar.update(1)
        del space
        if dist.device.type == "cuda":
            torch.cuda.empty_cache()
    bar.close()
    barrier(dist)
    if dist.is_main:
        _assemble(cfg, out, sizes, styles)
    barrier(dist)
    return out


def _assemble(cfg: PaperBindingConfig, out: Path, sizes: Mapping[str, int],
              styles: np.ndarray) -> None:
    """Chunks -> one memory-mappable ``.npy`` per (space, modality), streaming."""
    entries: dict[str, dict[str, str]] = {}
    for e in cfg.experts:
        for m in _expert_modalities(cfg, e):
            if m in e.alias:
                continue
            n = sizes[m]
            chunks = [out / "chunks" / e.name / m / f"{c:06d}.npz"
                      for c in range(math.ceil(n / cfg.embed.chunk))]
            with np.load(chunks[0]) as f0:
                dim = f0["emb"].shape[1]
            path = out / e.name / f"{m}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            arr = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+",
                                            dtype=cfg.embed.dtype, shape=(n, dim))
            valid = np.zeros(n, dtype=bool)
            for c, ch in enumerate(chunks):
                with np.load(ch) as f:
                    lo = c * cfg.embed.chunk
                    arr[lo:lo + len(f["emb"])] = f["emb"]
                    valid[lo:lo + len(f["emb"])] = f["valid"]
            arr.flush()
            del arr
            os.replace(path.with_suffix(".tmp.npy"), path)
            np.save(out / e.name / f"{m}.valid.npy", valid)
            entries.setdefault(e.name, {})[m] = f"{e.name}/{m}.npy"
    for e in cfg.experts:
        for m, src in e.alias.items():
            if m in _expert_modalities(cfg, e):
                entries.setdefault(e.name, {})[m] = entries[src][m]
    np.save(out / "text_styles.npy", styles)
    (out / "manifest.json").write_text(json.dumps(
        {"sizes": dict(sizes), "emb": entries, "corpora": list(cfg.pools.captions),
         "time": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))


def load_bank(folder: str | Path) -> EmbeddingBank:
    """The pools' :class:`~.bank.EmbeddingBank`, memory-mapped (rows are read on demand and the
    page cache is shared by every rank of a node). Labels are unknown (zeros): nothing here
    reads them."""
    folder = Path(folder)
    man = json.loads((folder / "manifest.json").read_text())
    emb: dict[str, dict[str, torch.Tensor]] = {}
    valid: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only memmap -> tensor
        for space, per in man["emb"].items():
            for m, rel in per.items():
                emb.setdefault(space, {})[m] = torch.from_numpy(np.load(folder / rel,
                                                                        mmap_mode="r"))
                v = np.load(folder / rel.replace(".npy", ".valid.npy"))
                valid[m] = valid[m] & v if m in valid else v
    sizes = man["sizes"]
    inst = {m: np.arange(n) for m, n in sizes.items()}
    labels = {m: np.zeros(n, dtype=np.int64) for m, n in sizes.items()}
    return EmbeddingBank(emb, inst, np.load(folder / "text_styles.npy"), labels, valid)


# --- stage 2: pseudo tuples --------------------------------------------------------------------

class _Top1:
    """Top-1 search of a retriever's keys on this rank's device (keys cached per side)."""

    def __init__(self, bank: EmbeddingBank, device: torch.device, chunk: int) -> None:
        self.bank, self.device, self.chunk = bank, device, chunk
        self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        self._keys: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def keys(self, space: str, m: str) -> tuple[torch.Tensor, torch.Tensor]:
        if (space, m) not in self._keys:
            k = self.bank.emb[space][m]
            keys = torch.cat([k[i:i + 65536].to(self.device, self.dtype)
                              for i in range(0, len(k), 65536)])
            ok = torch.from_numpy(np.asarray(self.bank.valid.get(m, np.ones(len(k), bool))))
            self._keys[(space, m)] = (keys, ok.to(self.device))
        return self._keys[(space, m)]

    def __call__(self, r: Retriever, src: str, dst: str, rows: np.ndarray) -> np.ndarray:
        keys, ok = self.keys(r.side(dst), dst)
        q = self.bank.emb[r.side(src)][src]
        out = []
        for i in range(0, len(rows), self.chunk):
            qi = q[torch.from_numpy(rows[i:i + self.chunk])].to(self.device, self.dtype)
            sim = (qi @ keys.T).float()
            sim[:, ~ok] = -torch.inf
            out.append(sim.argmax(dim=1).cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def build_tuples_sharded(bank: EmbeddingBank, retrievers: Mapping[frozenset[str], Retriever],
                         modalities: Sequence[str], dist: DistInfo, *,
                         hubs: Sequence[str] = ("image", "text"), chunk: int = 4096,
                         part_dir: Path | None = None, progress: bool = False
                         ) -> PseudoTuples | None:
    """:func:`.pseudo_pairs.build_tuples` with each rank searching a contiguous share of every
    pool's queries. Ranks write their parts to ``part_dir``; rank 0 concatenates them in rank
    order (the single-process tuple order) and returns the tuples (None on other ranks).
    """
    from tqdm import tqdm

    top1 = _Top1(bank, dist.device, chunk)
    index: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
    query: list[np.ndarray] = []
    for src in tqdm(modalities, desc="pseudo pairs", disable=not (progress and dist.is_main),
                    unit="pool"):
        rows = np.flatnonzero(np.asarray(bank.valid.get(src, np.ones(bank.size(src), bool))))
        rows = np.array_split(rows, dist.world_size)[dist.rank]
        got: dict[str, np.ndarray] = {src: rows}
        for dst in modalities:
            if dst == src or dst in got:
                continue
            got[dst] = _retrieve(top1, retrievers, src, dst, rows, got, hubs)
        for m in modalities:
            index[m].append(got[m])
        query.append(np.full(len(rows), modalities.index(src), dtype=np.int64))
    # per source pool, every rank's part, in rank order
    mine = {m: [np.asarray(a, np.int64) for a in v] for m, v in index.items()}
    if not dist.is_distributed:
        return PseudoTuples({m: np.concatenate(v) for m, v in mine.items()},
                            np.concatenate(query), tuple(modalities))
    assert part_dir is not None
    part = part_dir / f"part-{dist.rank:03d}.npz"
    _atomic_npz(part, **{f"{m}_{i}": a for m, v in mine.items() for i, a in enumerate(v)},
                **{f"query_{i}": q for i, q in enumerate(query)})
    barrier(dist)
    if not dist.is_main:
        return None
    parts = [np.load(part_dir / f"part-{r:03d}.npz") for r in range(dist.world_size)]
    idx = {m: np.concatenate([p[f"{m}_{i}"] for i in range(len(modalities)) for p in parts])
           for m in modalities}
    q = np.concatenate([p[f"query_{i}"] for i in range(len(modalities)) for p in parts])
    return PseudoTuples(idx, q, tuple(modalities))


def _retrieve(top1: _Top1, retrievers: Mapping[frozenset[str], Retriever], src: str, dst: str,
              rows: np.ndarray, got: dict[str, np.ndarray], hubs: Sequence[str]) -> np.ndarray:
    direct = retrievers.get(frozenset((src, dst)))
    if direct is not None:
        return top1(direct, src, dst, rows)
    for hub in hubs:
        if hub in (src, dst):
            continue
        first, second = retrievers.get(frozenset((src, hub))), retrievers.get(frozenset((hub,
                                                                                        dst)))
        if first is None or second is None:
            continue
        if hub not in got:
            got[hub] = top1(first, src, hub, rows)
        return top1(second, hub, dst, got[hub])
    raise ValueError(f"no retriever for {src}-{dst} and no hub among {list(hubs)} with "
                     "retrievers on both sides")


def make_tuples(cfg: PaperBindingConfig, bank: EmbeddingBank, dist: DistInfo) -> PseudoTuples:
    """Stage 2 (resumable: ``pairs/tuples.npz``)."""
    folder = Path(cfg.out_dir) / "pairs"
    path = folder / "tuples.npz"
    if not path.exists():
        mods = [m for m in _pool_modalities(cfg) if m in bank.instances]
        t0 = time.perf_counter()
        tuples = build_tuples_sharded(bank, parse_retrievers(cfg.retrievers), mods, dist,
                                      hubs=cfg.hubs, chunk=cfg.retrieval_chunk,
                                      part_dir=folder / "parts", progress=cfg.progress)
        if dist.is_main:
            assert tuples is not None
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / ".tuples.tmp.npz"
            tuples.save(tmp)
            os.replace(tmp, path)
            _say(dist, f"[pairs] {len(tuples)} tuples in {time.perf_counter() - t0:.1f} s")
        barrier(dist)
    return PseudoTuples.load(path)


# --- stage 3: training -------------------------------------------------------------------------

def _space_info(cfg: PaperBindingConfig, bank: EmbeddingBank, name: str) -> SpaceInfo:
    per = bank.emb[name]
    return SpaceInfo(name, int(next(iter(per.values())).shape[1]),
                     tuple(m for m in POOL_MODALITIES if m in per))


def new_model(cfg: PaperBindingConfig, bank: EmbeddingBank, names: Sequence[str]
              ) -> BindingModel:
    torch.manual_seed(cfg.seed + 4242)
    return BindingModel([_space_info(cfg, bank, n) for n in names],
                        _space_info(cfg, bank, cfg.target), router=cfg.router,
                        projector_heads=cfg.projector.heads,
                        projector_hidden=cfg.projector.hidden_dim)


def space_corpus(cfg: PaperBindingConfig) -> dict[str, int]:
    corpora = list(cfg.pools.captions)
    return {e.name: corpora.index(e.corpus) for e in cfg.experts if e.corpus is not None}


def _save(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
              str(tmp))
    os.replace(tmp, path)


def train(cfg: PaperBindingConfig, bank: EmbeddingBank, tuples: PseudoTuples, dist: DistInfo
          ) -> dict[str, Any]:
    """Stage 3: projectors (every expert but the target), then routers per variant. Returns
    the loss curves of what was trained in this call (empty for resumed-and-done parts)."""
    from safetensors.torch import load_file

    folder = Path(cfg.out_dir) / "train"
    curves: dict[str, Any] = {}
    model = new_model(cfg, bank, [e.name for e in cfg.experts])
    proj_path = folder / "projectors.safetensors"
    common = {"dist": dist, "precision": cfg.precision, "sync_bn": cfg.sync_bn,
              "checkpoint_every": cfg.checkpoint_every, "progress": cfg.progress}
    if proj_path.exists():
        model.projectors.load_state_dict(load_file(str(proj_path)))
    else:
        curves["projectors"] = train_projectors(model, bank, tuples, cfg.projector,
                                                seed=cfg.seed,
                                                state_path=folder / "projectors.state.pt",
                                                **common)
        if dist.is_main:
            _save(model.projectors, proj_path)
            (folder / "projectors.state.pt").unlink(missing_ok=True)
            _say(dist, f"[train] projectors: {len(curves['projectors'])} steps, loss "
                       f"{curves['projectors'][0]:.3f} -> {curves['projectors'][-1]:.3f}")
        barrier(dist)
    shared = model.projectors
    corpus = space_corpus(cfg)
    for variant, names in cfg.variants.items():
        path = folder / f"routers-{variant}.safetensors"
        if path.exists():
            continue
        vm = new_model(cfg, bank, names)
        for n in names:
            vm.projectors[n].load_state_dict(shared[n].state_dict())
        c = train_routers(vm, bank, tuples, cfg.router_training, space_corpus=corpus,
                          seed=cfg.seed, precompute=False,
                          state_path=folder / f"routers-{variant}.state.pt", **common)
        curves[f"routers/{variant}"] = c
        if dist.is_main:
            _save(vm.routers, path)
            (folder / f"routers-{variant}.state.pt").unlink(missing_ok=True)
            _say(dist, f"[train] routers {variant}: {len(c['loss'])} steps, L_align "
                       f"{c['align'][0]:.2f} -> {c['align'][-1]:.2f}, L_dec {c['dec'][0]:.3f} "
                       f"-> {c['dec'][-1]:.3f}")
        barrier(dist)
    if dist.is_main and curves:
        log = folder / "curves.json"
        old = json.loads(log.read_text()) if log.exists() else {}
        log.write_text(json.dumps({**old, **curves}))
    return curves


# --- driver ------------------------------------------------------------------------------------

def run(cfg: PaperBindingConfig, dist: DistInfo | None = None, *,
        stages: Sequence[str] = STAGES, tokenizer_factory: TokenizerFactory | None = None
        ) -> dict[str, Any]:
    """Run the stages (each skipped when its output exists). ``dist``: from
    :func:`~omnibind_train.trainers.distributed.init_distributed` (default: joined here)."""
    dist = dist or init_distributed(cfg.device)
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages: {list(STAGES)}")
    out = Path(cfg.out_dir)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    result: dict[str, Any] = {"timings": {}}
    t0 = time.perf_counter()
    bank_dir = out / "bank"
    if "embed" in stages:
        embed_pools(cfg, dist, tokenizer_factory)
        result["timings"]["embed"] = round(time.perf_counter() - t0, 2)
    if not ({"pairs", "train"} & set(stages)):
        return result
    bank = load_bank(bank_dir)
    t0 = time.perf_counter()
    tuples = make_tuples(cfg, bank, dist)
    result["timings"]["pairs"] = round(time.perf_counter() - t0, 2)
    result["tuples"] = len(tuples)
    if "train" in stages:
        t0 = time.perf_counter()
        result["curves"] = train(cfg, bank, tuples, dist)
        result["timings"]["train"] = round(time.perf_counter() - t0, 2)
    result = broadcast_object(result, dist) if dist.is_distributed else result
    return result


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m omnibind_train.binding.paper",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config entry (repeatable), e.g. pools.limit=1000")
    ap.add_argument("--stages", default=",".join(STAGES),
                    help=f"comma-separated subset of {','.join(STAGES)}")
    args = ap.parse_args(argv)
    cfg = PaperBindingConfig.from_yaml(args.config, args.set)
    dist = init_distributed(cfg.device)
    try:
        res = run(cfg, dist, stages=[s for s in args.stages.split(",") if s])
        _say(dist, f"[done] {json.dumps(res['timings'])}")
    finally:
        cleanup(dist)


if __name__ == "__main__":
    main()
