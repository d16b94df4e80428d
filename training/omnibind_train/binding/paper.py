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

Modules: this one holds the config, the stages and the CLI; :mod:`.paper_pools` reads the pools
and preprocesses them per expert, :mod:`.paper_embed` is stage 1 (the names are re-exported here).

Memory: EVA-CLIP-18B (the target) needs about 36 GB in bf16 (``embed.expert_dtype: bf16``):
its embedding pass needs 40 GB+ GPUs (A100/H100 80 GB); every other expert and all of the
training fit a 24 GB RTX 4090.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..pipeline.config import YamlConfig
from ..trainers.common import ConfigBase
from ..trainers.distributed import DistInfo, barrier, broadcast_object, cleanup, init_distributed
from .bank import EmbeddingBank
from .experts.common import ExpertConfig, ExpertSpace, get_expert_config
from .model import BindingModel, RouterConfig, SpaceInfo
from .paper_embed import (
    _atomic_npz,
    _pool_modalities,
    _say,
    default_tokenizer,
    embed_pools,
    load_bank,
)
from .paper_pools import (
    AUDIO_EXT,
    EXPERT_MODALITY,
    IMAGE_EXT,
    POINT_EXT,
    POOL_MODALITIES,
    fit_clip,
    imagebind_audio,
    kaldi_fbank,
    list_pool,
    load_audio,
    load_image,
    load_points,
    read_captions,
)
from .pseudo_pairs import PseudoTuples, Retriever, parse_retrievers, tuple_parts
from .train_binding import (
    PRECISIONS,
    ProjectorTraining,
    RouterTraining,
    train_projectors,
    train_routers,
)

__all__ = ["EmbedSettings", "PaperBindingConfig", "PaperExpert", "PaperPools", "STAGES",
           "build_tuples_sharded", "embed_pools", "kaldi_fbank", "load_bank", "main", "run",
           # re-exported from .paper_pools / .paper_embed
           "AUDIO_EXT", "EXPERT_MODALITY", "IMAGE_EXT", "POINT_EXT", "POOL_MODALITIES",
           "default_tokenizer", "fit_clip", "imagebind_audio", "list_pool", "load_audio",
           "load_image", "load_points", "read_captions"]

FAMILY = "binding_paper"
STAGES = ("embed", "pairs", "train")
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
class PaperBindingConfig(YamlConfig):
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

    def expert(self, name: str) -> PaperExpert:
        return next(e for e in self.experts if e.name == name)


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
    top1 = _Top1(bank, dist.device, chunk)
    index, query = tuple_parts(bank, retrievers, modalities, hubs=hubs, top1=top1,
                               shard=(dist.rank, dist.world_size),
                               progress=progress and dist.is_main)
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
