"""UniAlign's data on the simulated world: preprocessed inputs at the family's own sizes, the
labelled per-modality data sets with their vocabularies, and the image anchors.

Splits (``config/sim_binding_dataset.yaml``, shared with the binding family so the partial-modal
teachers can be its pre-trained specialist spaces):

* ``teacher/train`` image-caption pairs: the small CLIP backbone's own pre-training split;
* ``student/train``: where the partial-modal teachers were trained (never seen by UniAlign);
* ``student/val``: UniAlign's training data, one labelled data set per modality in its
  modality's vocabulary (:mod:`.vocab`) with only 12 of the 18 classes (a different subset per
  modality); each sample's *anchor* is the same instance's RGB view (as ShapeNet renders and
  SUN RGB-D photos are). By default (``disjoint=False``) every modality's data set draws from the
  whole split: no loss pairs two modalities' samples (soft binding reads labels only, anchors are
  each sample's own image), so shared instances give no cross-modal pairing, and each data set
  is six times larger than a disjoint block (1,680 vs 280 samples: the analogue was
  data- and step-starved with blocks). ``disjoint=True`` cuts the split into one seeded,
  label-blind block of instances per modality instead;
* ``student/test``: the truly paired test split.

Inputs are the runtime preprocessors' outputs at the sizes of the config's ``data.preprocess``
(64 px images; audio at 64 mels) cached once as float16.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from omnibind_ros.sim.text import PROMPT_TEMPLATES

from ..data import FeatureJob, SamplePreprocessor, cached_features, feature_path, hash_json
from ..pipeline import Workspace
from .vocab import LabelVocab, vocab_for

__all__ = ["LabelledSet", "UniAlignData", "label_prompts"]


def label_prompts(names: Sequence[str], templates: Sequence[str] = PROMPT_TEMPLATES
                  ) -> list[str]:
    """Every label in every prompt template, label-major (``[n * T]``)."""
    return [t.format(n) for n in names for t in templates]


@dataclass
class LabelledSet:
    """One modality's labelled data set.

    Attributes
    ----------
    modality : its modality.
    rows : instance indices in the pool split.
    labels : label index per row in ``vocab.names``.
    vocab : the data set's vocabulary.
    """

    modality: str
    rows: np.ndarray
    labels: np.ndarray
    vocab: LabelVocab

    def __len__(self) -> int:
        return int(len(self.rows))


class UniAlignData:
    """Inputs, data sets and anchors of the UniAlign family.

    Parameters
    ----------
    ws : the family's workspace (its ``preprocess_configs`` carry the family's sizes).
    modalities : the modalities that get a labelled data set.
    pool_split : the student split the data sets are cut from.
    seed : seeds the partition and the class subsets.
    keep_classes : classes per extended data set (None: all).
    disjoint : one disjoint block of instances per modality instead of the whole split.
    """

    def __init__(self, ws: Workspace, modalities: Sequence[str], *, pool_split: str = "val",
                 seed: int = 0, keep_classes: int | None = 12, disjoint: bool = False) -> None:
        self.ws = ws
        self.modalities = list(modalities)
        self.pool_split = pool_split
        self.seed = int(seed)
        self.keep_classes = keep_classes
        self.disjoint = disjoint
        self._inputs: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def inputs(self, kind: str, split: str, modality: str,
               preprocess: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values [N, ...] float16, valid [N])``: preprocessed inputs of a split (cached);
        ``preprocess`` replaces the family's config (e.g. another bundle's)."""
        ws = self.ws
        cfg = dict(preprocess) if preprocess is not None else ws.preprocess_configs[modality]
        key3 = (kind, split, modality, hash_json(cfg))
        if key3 not in self._inputs:
            key = hash_json({"inputs": 1, "dataset": ws.dataset_fp, "modality": modality,
                             "preprocess": cfg})
            job = FeatureJob(modality=modality, preprocess=SamplePreprocessor(modality, cfg),
                             encode=None, views=1, dtype=torch.float16, key=key,
                             path=feature_path(ws.cache_dir, ws.dataset_root.name, kind, split,
                                               f"{modality}-inputs", key))
            fs = cached_features(ws.dataset(kind, split), [job], batch_size=128,
                                 progress=ws.progress,
                                 desc=f"{kind}/{split} inputs")[modality]
            self._inputs[key3] = (fs.values[0], fs.valid)
        return self._inputs[key3]

    @cached_property
    def blocks(self) -> dict[str, np.ndarray]:
        """Modality -> the pool-split instances its data set draws from (all of them, or a
        seeded, disjoint, label-blind block each)."""
        n = len(self.ws.dataset("student", self.pool_split))
        if not self.disjoint:
            return {m: np.arange(n) for m in self.modalities}
        order = np.random.default_rng([self.seed, 2002]).permutation(n)
        parts = np.array_split(order, len(self.modalities))
        return {m: np.sort(p) for m, p in zip(self.modalities, parts, strict=True)}

    def vocab(self, modality: str) -> LabelVocab:
        return vocab_for(modality, seed=self.seed, keep=self.keep_classes)

    @cached_property
    def sets(self) -> dict[str, LabelledSet]:
        """Modality -> its labelled data set (block rows whose class the vocabulary keeps and
        whose input could be preprocessed)."""
        classes = self.ws.labels("student", self.pool_split).numpy()
        out = {}
        for m in self.modalities:
            vocab = self.vocab(m)
            rows = self.blocks[m]
            labels = vocab.labels_of(classes[rows])
            _, valid = self.inputs("student", self.pool_split, m)
            keep = (labels >= 0) & valid.numpy()[rows]
            out[m] = LabelledSet(m, rows[keep], labels[keep], vocab)
        return out

    def test_classes(self) -> np.ndarray:
        return self.ws.labels("student", "test").numpy()
