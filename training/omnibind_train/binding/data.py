"""The binding family's data: cached tower inputs of every split, styled caption corpora, and the
unpaired pools.

It sits on the default pipeline's :class:`~omnibind_train.pipeline.Workspace` (data set
generation, frozen-trunk feature cache) and adds what binding needs on top: the pooled pixels
of the tiny-CNN tower, MiniLM features of captions in every style (:mod:`.captions`), and the
partition of the pool split into one disjoint block of instances per modality.

Splits (``config/sim_binding_dataset.yaml``): specialists pre-train on ``teacher/train`` and
``student/train``; the unpaired binding pools come from ``student/val``; ``student/test`` is
the truly paired test split. No binding step reads a label: labels are read only by the purity
diagnostic and by evaluation.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnibind_ros.sim.catalog import CLASSES

from ..data import FeatureJob, SamplePreprocessor, cached_features, feature_path, hash_json
from ..data.features import FeatureSet, load_features, save_features, trunk_encode_fn
from ..pipeline import Workspace
from .captions import STYLES, caption_corpus
from .towers import PixelsPool

__all__ = ["BindingData", "POOL_MODALITIES", "TEXT_POOL"]

#: The unimodal pools, one disjoint block of pool instances each (text: every caption style).
POOL_MODALITIES = ("image", "text", "thermal", "event", "tactile", "audio", "point_cloud")
TEXT_POOL = "text"


class BindingData:
    """Inputs, captions and pools of the binding family's data set.

    Parameters
    ----------
    ws : the workspace of the binding data set (features, text encoder, cache directory).
    pool_split : the student split the pools are cut from.
    seed : seeds the pool partition.
    """

    def __init__(self, ws: Workspace, *, pool_split: str = "val", seed: int = 0) -> None:
        self.ws = ws
        self.pool_split = pool_split
        self.seed = int(seed)
        self._inputs: dict[tuple[str, str, str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    # -- tower inputs ---------------------------------------------------------------------------

    def inputs(self, kind: str, split: str, modality: str, input_kind: str
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values [N, ...], valid [N])`` a tower of ``input_kind`` reads, for a split.

        ``text`` inputs are the split's *own* captions; styled captions come from
        :meth:`caption_features`.
        """
        key = (kind, split, modality, input_kind)
        if key not in self._inputs:
            if input_kind in ("trunk", "points", "text"):
                fs = self.ws.features(kind, split, [modality])[modality]
                self._inputs[key] = (fs.values[0], fs.valid)
            elif input_kind == "pixels":
                fs = self._pixels(kind, split)
                self._inputs[key] = (fs.values[0], fs.valid)
            else:
                raise ValueError(f"unknown input kind {input_kind!r}")
        return self._inputs[key]

    def _pixels(self, kind: str, split: str) -> FeatureSet:
        ws = self.ws
        cfg = ws.preprocess_configs["image"]
        key = hash_json({"pixels": 1, "dataset": ws.dataset_fp, "preprocess": cfg})
        pool = PixelsPool()

        def encode(inputs: list[Any]) -> torch.Tensor:
            with torch.no_grad():
                return pool(torch.from_numpy(np.stack(inputs)).float())

        job = FeatureJob(modality="image", preprocess=SamplePreprocessor("image", cfg),
                         encode=encode, views=1, dtype=torch.float16, key=key,
                         path=feature_path(ws.cache_dir, ws.dataset_root.name, kind, split,
                                           "pixels", key))
        return cached_features(ws.dataset(kind, split), [job], batch_size=128,
                               progress=ws.progress, desc=f"{kind}/{split} pixels")["image"]

    # -- captions -------------------------------------------------------------------------------

    def nuisances(self, kind: str, split: str) -> list[dict[str, Any]]:
        return [json.loads(str(s)) for s in np.asarray(
            self.ws.dataset(kind, split).field("nuisance"))]

    def seeds(self, kind: str, split: str) -> np.ndarray:
        return np.asarray(self.ws.dataset(kind, split).field("seed")).astype(np.int64)

    def captions(self, kind: str, split: str, style: str, *, variant: int = 0) -> list[str]:
        """One caption of ``style`` per instance of a split (deterministic per instance);
        ``variant`` > 0 draws other phrasings (a second corpus of the same style)."""
        if style not in STYLES:
            raise ValueError(f"unknown caption style {style!r}; styles: {STYLES}")
        labels = self.ws.labels(kind, split).numpy()
        seeds = self.seeds(kind, split) + 7919 * int(variant)
        return caption_corpus([CLASSES[c] for c in labels], self.nuisances(kind, split),
                              [int(s) for s in seeds], style)

    def caption_features(self, captions: Sequence[str]) -> torch.Tensor:
        """MiniLM features ``[N, 384]`` of captions (each distinct caption encoded once;
        cached on disk by the list's content)."""
        ws = self.ws
        key = hash_json({"minilm": ws.preprocess_configs["text"], "captions": list(captions)})
        path = ws.cache_dir / "features" / ws.dataset_root.name / "captions" \
            / f"text-{key}.safetensors"
        if path.exists():
            return load_features(path).values[0].float()
        encode = trunk_encode_fn(ws.text_encoder, ws.dist.device)
        unique = list(dict.fromkeys(captions))
        where = {c: i for i, c in enumerate(unique)}
        chunks = []
        from tqdm import tqdm

        for i in tqdm(range(0, len(unique), 256), desc="captions (MiniLM)",
                      disable=not ws.progress, unit="batch"):
            chunks.append(encode(unique[i:i + 256]))
        feats = torch.cat(chunks)[torch.tensor([where[c] for c in captions])]
        fs = FeatureSet(feats.to(torch.float16)[None], torch.ones(len(captions), dtype=torch.bool),
                        key)
        if ws.dist.is_main:
            save_features(path, fs, {"captions": len(captions)})
        return fs.values[0].float()

    # -- pools ------------------------------------------------------------------------------------

    @cached_property
    def pool_blocks(self) -> dict[str, np.ndarray]:
        """Modality -> indices of its pool instances in the pool split: a seeded permutation
        cut into one disjoint block per modality (no instance is in two pools, so pools hold
        no true pairs; the partition never looks at labels)."""
        n = len(self.ws.dataset("student", self.pool_split))
        order = np.random.default_rng([self.seed, 1001]).permutation(n)
        blocks = np.array_split(order, len(POOL_MODALITIES))
        return {m: np.sort(b) for m, b in zip(POOL_MODALITIES, blocks, strict=True)}

    def pool_captions(self) -> tuple[list[str], np.ndarray]:
        """The text pool: every caption style of the text block's instances, and each
        caption's style index (the corpus it came from, L_dec's y)."""
        idx = self.pool_blocks[TEXT_POOL]
        texts: list[str] = []
        styles: list[int] = []
        for s, style in enumerate(STYLES):
            caps = self.captions("student", self.pool_split, style)
            texts += [caps[i] for i in idx]
            styles += [s] * len(idx)
        return texts, np.asarray(styles, dtype=np.int64)

    def pool_instances(self, modality: str) -> np.ndarray:
        """Pool-split instance index of every item of a pool (text: per caption)."""
        idx = self.pool_blocks[modality]
        return np.tile(idx, len(STYLES)) if modality == TEXT_POOL else idx

    @property
    def run_dir(self) -> Path:
        return self.ws.run_dir
