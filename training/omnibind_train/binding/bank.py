"""Embedding banks: every space's unit embeddings of a set of items, per modality.

Binding only ever needs the frozen spaces' embeddings of its items (pool items for pseudo
pairs and training, test instances for evaluation), so they are computed once and stored:
``bank[space][modality]`` is ``[N_modality, d_space]``. A bank of text holds several caption
styles side by side; ``styles`` says which style each text row is.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .captions import STYLES
from .data import POOL_MODALITIES, BindingData
from .specialists import SimSpace
from .train_spaces import embed_inputs

__all__ = ["EmbeddingBank", "pool_bank", "test_bank"]


@dataclass
class EmbeddingBank:
    """Frozen embeddings of a set of items in every space.

    Attributes
    ----------
    emb : space -> modality -> ``[N_m, d_space]`` unit embeddings.
    instances : modality -> instance index (in its split) of every row.
    styles : style index of every text row (:data:`.captions.STYLES`).
    labels : modality -> hidden class of every row (diagnostics and evaluation only).
    valid : modality -> bool ``[N_m]`` rows whose input could be preprocessed.
    """

    emb: dict[str, dict[str, torch.Tensor]]
    instances: dict[str, np.ndarray]
    styles: np.ndarray
    labels: dict[str, np.ndarray]
    valid: dict[str, np.ndarray] = field(default_factory=dict)

    def size(self, modality: str) -> int:
        return int(len(self.instances[modality]))

    def spaces_of(self, modality: str) -> list[str]:
        return [s for s, per in self.emb.items() if modality in per]

    def raw(self, modality: str, rows: torch.Tensor | np.ndarray | None = None,
            spaces: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """space -> ``[n, d]`` embeddings of some rows of a modality (all spaces by default)."""
        names = spaces if spaces is not None else self.spaces_of(modality)
        out = {}
        for s in names:
            if modality in self.emb.get(s, {}):
                e = self.emb[s][modality]
                out[s] = e if rows is None else e[torch.as_tensor(rows, dtype=torch.long)]
        return out

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        tensors = {f"emb/{s}/{m}": t.contiguous() for s, per in self.emb.items()
                   for m, t in per.items()}
        for m in self.instances:
            # copies: several modalities may share one index array (shared memory is refused)
            tensors[f"inst/{m}"] = torch.from_numpy(np.array(self.instances[m], np.int64))
            tensors[f"label/{m}"] = torch.from_numpy(np.array(self.labels[m], np.int64))
            if m in self.valid:
                tensors[f"valid/{m}"] = torch.from_numpy(np.array(self.valid[m], np.bool_))
        tensors["styles"] = torch.from_numpy(np.asarray(self.styles, np.int64))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> EmbeddingBank:
        from safetensors.torch import load_file

        t = load_file(str(path))
        emb: dict[str, dict[str, torch.Tensor]] = {}
        inst, labels, valid = {}, {}, {}
        for k, v in t.items():
            kind, _, rest = k.partition("/")
            if kind == "emb":
                s, m = rest.split("/")
                emb.setdefault(s, {})[m] = v
            elif kind == "inst":
                inst[rest] = v.numpy()
            elif kind == "label":
                labels[rest] = v.numpy()
            elif kind == "valid":
                valid[rest] = v.numpy()
        return cls(emb, inst, t["styles"].numpy(), labels, valid)


def _embed_rows(spaces: Mapping[str, SimSpace], data: BindingData, kind: str, split: str,
                modality: str, rows: np.ndarray) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    out: dict[str, torch.Tensor] = {}
    ok = np.ones(len(rows), dtype=bool)
    for name, space in spaces.items():
        if modality not in space.modalities:
            continue
        x, valid = data.inputs(kind, split, modality, space.spec.input_kind(modality))
        out[name] = embed_inputs(space, modality, x[torch.from_numpy(rows)].float())
        ok &= valid[torch.from_numpy(rows)].numpy()
    return out, ok


def _embed_text(spaces: Mapping[str, SimSpace], data: BindingData, captions: Sequence[str]
                ) -> dict[str, torch.Tensor]:
    feats = data.caption_features(list(captions))
    return {name: embed_inputs(space, "text", feats) for name, space in spaces.items()
            if "text" in space.modalities}


def _assemble(per_modality: Mapping[str, dict[str, torch.Tensor]]
              ) -> dict[str, dict[str, torch.Tensor]]:
    emb: dict[str, dict[str, torch.Tensor]] = {}
    for m, per_space in per_modality.items():
        for s, e in per_space.items():
            emb.setdefault(s, {})[m] = e
    return emb


def pool_bank(spaces: Mapping[str, SimSpace], data: BindingData) -> EmbeddingBank:
    """Every space's embeddings of the unpaired pools (pool split, one block per modality)."""
    split = data.pool_split
    labels_all = data.ws.labels("student", split).numpy()
    per_modality: dict[str, dict[str, torch.Tensor]] = {}
    instances, labels, valid = {}, {}, {}
    styles = np.zeros(0, dtype=np.int64)
    for m in POOL_MODALITIES:
        rows = data.pool_instances(m)
        if m == "text":
            texts, styles = data.pool_captions()
            per_modality[m] = _embed_text(spaces, data, texts)
            ok = np.ones(len(rows), dtype=bool)
        else:
            per_modality[m], ok = _embed_rows(spaces, data, "student", split, m, rows)
        instances[m], labels[m], valid[m] = rows, labels_all[rows], ok
    return EmbeddingBank(_assemble(per_modality), instances, styles, labels, valid)


def test_bank(spaces: Mapping[str, SimSpace], data: BindingData, split: str = "test", *,
              styles: Sequence[str] = STYLES) -> EmbeddingBank:
    """Every space's embeddings of every instance of a paired student split in every modality;
    text holds one caption per instance per style of ``styles`` (style-major)."""
    n = len(data.ws.dataset("student", split))
    rows = np.arange(n)
    labels_all = data.ws.labels("student", split).numpy()
    per_modality: dict[str, dict[str, torch.Tensor]] = {}
    instances, labels, valid = {}, {}, {}
    for m in POOL_MODALITIES:
        if m == "text":
            texts = [c for style in styles for c in data.captions("student", split, style)]
            per_modality[m] = _embed_text(spaces, data, texts)
            instances[m] = np.tile(rows, len(styles))
            valid[m] = np.ones(len(texts), dtype=bool)
        else:
            per_modality[m], valid[m] = _embed_rows(spaces, data, "student", split, m, rows)
            instances[m] = rows
        labels[m] = labels_all[instances[m]]
    style_index = np.repeat(np.array([STYLES.index(s) for s in styles]), n)
    return EmbeddingBank(_assemble(per_modality), instances, style_index, labels, valid)
