"""Stage 1 of the paper-scale run: sharded, resumable embedding of the pools into banks.

Every configured expert embeds every pool it has an encoder for, in chunks dealt round-robin
to the ranks (one atomically written ``.npz`` each, skipped when present); rank 0 assembles one
memory-mappable ``.npy`` per (space, modality) and the manifest :func:`load_bank` reads back as
an :class:`~.bank.EmbeddingBank`. Reading and preprocessing the files is :mod:`.paper_pools`;
the config and the other stages are :mod:`.paper`.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..trainers.distributed import DistInfo, barrier
from .bank import EmbeddingBank
from .experts.common import ExpertSpace, build_expert
from .paper_pools import (
    AUDIO_EXT,
    EXPERT_MODALITY,
    IMAGE_EXT,
    POINT_EXT,
    POOL_MODALITIES,
    _Items,
    _Prep,
    list_pool,
    read_captions,
)

if TYPE_CHECKING:
    from .paper import PaperBindingConfig, PaperExpert, TokenizerFactory

__all__ = ["default_tokenizer", "embed_pools", "load_bank"]


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
