"""Reading a generated data set: one split as :class:`SimDataset` (samples, memory-mapped
fields), :class:`ShardedArray`, and :func:`dataset_info` for a summary of a root."""
from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omnibind_ros.core.modalities import ALL_MODALITIES, Modality, parse_modality
from omnibind_ros.sim.dataset.config import KINDS
from omnibind_ros.sim.dataset.rendering import fingerprint_matches
from omnibind_ros.sim.dataset.shards import _OFFSETS, read_npz_member, unpack_sample
from omnibind_ros.sim.types import Sample

__all__ = ["ShardedArray", "SimDataset", "dataset_info"]


class ShardedArray:
    """A read-only array split over shards, indexed as one: ``a[i]``, ``a[2:7]``, ``a[[4, 1]]``.

    Parts are memory-mapped, so indexing reads only the rows asked for; ``np.asarray(a)`` loads
    everything.
    """

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        if not parts:
            raise ValueError("no parts")
        self._parts = list(parts)
        self._starts = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
        self.dtype = parts[0].dtype
        self.shape = (int(self._starts[-1]),) + tuple(parts[0].shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            i = _normalise_index(int(idx), len(self))
            part = int(np.searchsorted(self._starts, i, side="right")) - 1
            return np.asarray(self._parts[part][i - self._starts[part]])
        rows = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = np.where(rows < 0, rows + len(self), rows).astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"index out of range for length {len(self)}")
        out = np.empty((rows.size,) + self.shape[1:], dtype=self.dtype)
        part_of = np.searchsorted(self._starts, rows, side="right") - 1
        for p in np.unique(part_of):
            sel = part_of == p
            out[sel] = self._parts[p][rows[sel] - self._starts[p]]
        return out

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = np.concatenate([np.asarray(p) for p in self._parts])
        return out if dtype is None else out.astype(dtype)


def _normalise_index(i: int, n: int) -> int:
    if not -n <= i < n:
        raise IndexError(f"index {i} out of range for length {n}")
    return i + n if i < 0 else i


class SimDataset:
    """One split of a generated data set.

    Parameters
    ----------
    root : data set root (as returned by :func:`generate`).
    split : "train", "val" or (students) "test".
    kind : "teacher" (image + caption pairs) or "student" (all modalities).

    Attributes
    ----------
    labels : int64 ``[n]`` class indices (from the index; no shard is read).
    seeds : int64 ``[n]`` sample seeds.
    class_names : names of the class indices.
    modality_free : list of (sample index, modalities) records (empty for teacher splits).
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train",
                 kind: str = "teacher") -> None:
        self.root = Path(root)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
        if split not in KINDS[kind]:
            raise ValueError(f"{kind} splits are {KINDS[kind]}, got {split!r}")
        manifest_path, index_path = self.root / "manifest.json", self.root / "index.json"
        if not manifest_path.exists() or not index_path.exists():
            raise FileNotFoundError(f"{self.root} is not a data set (no manifest/index); "
                                    "run `omnibind-sim generate` first")
        self.manifest = json.loads(manifest_path.read_text())
        if not self.manifest.get("complete"):
            raise RuntimeError(f"{self.root} is incomplete; run generate again to resume it")
        rendered_by = self.manifest.get("code_fingerprint")
        spec = (self.manifest.get("config") or {}).get("degradations") or {}
        degraded = any(entry.get("probability", 0) > 0 for entry in spec.values())
        if rendered_by not in (None, "custom-world") \
                and not fingerprint_matches(rendered_by, degraded):
            warnings.warn(f"{self.root} was rendered by other simulator code than this "
                          "checkout's; `omnibind-sim generate --overwrite` regenerates it",
                          stacklevel=2)
        index = json.loads(index_path.read_text())
        self.kind, self.split = kind, split
        self._entry = index["splits"][f"{kind}/{split}"]
        self.class_names: tuple[str, ...] = tuple(index["class_names"])
        self.labels = np.asarray(self._entry["class_index"], dtype=np.int64)
        self.seeds = np.asarray(self._entry["seeds"], dtype=np.int64)
        self.modalities = tuple(parse_modality(m) for m in self._entry["modalities"])
        self.modality_free: list[tuple[int, tuple[Modality, ...]]] = [
            (int(i), tuple(parse_modality(m) for m in mods))
            for i, mods in self._entry.get("modality_free", [])]
        self._shards = self._entry["shards"]
        self._stops = np.asarray([s["stop"] for s in self._shards], dtype=np.int64)
        self._open: dict[int, dict[str, np.ndarray]] = {}
        self._fields: dict[str, ShardedArray] = {}

    def __len__(self) -> int:
        return int(self._entry["size"])

    def __repr__(self) -> str:
        return f"SimDataset({str(self.root)!r}, split={self.split!r}, kind={self.kind!r}, " \
               f"n={len(self)})"

    def __getitem__(self, i: int) -> Sample:
        i = _normalise_index(int(i), len(self))
        s = int(np.searchsorted(self._stops, i, side="right"))
        return unpack_sample(self._shard_arrays(s), i - self._shards[s]["start"])

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def _shard_arrays(self, s: int) -> dict[str, np.ndarray]:
        """Every member of shard ``s``, memory-mapped: a random access reads only its rows."""
        if s not in self._open:
            path = self.root / self._shards[s]["file"]
            with zipfile.ZipFile(path) as zf:
                names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            self._open[s] = {k: read_npz_member(path, k) for k in names}
        return self._open[s]

    def field(self, key: str) -> ShardedArray:
        """A fixed-size field over the whole split, memory-mapped (e.g. ``"thermal.data"``).

        Raises ``KeyError`` for unknown keys and ``ValueError`` for variable-length fields
        (events, points: use ``ds[i]``).
        """
        if key not in self._fields:
            if not self._shards:
                raise ValueError(f"{self.kind}/{self.split} is empty: it has no fields")
            names = set(self._shard_arrays(0))
            if key not in names:
                raise KeyError(f"no field {key!r} in {self.kind}/{self.split}; "
                               f"fields: {', '.join(sorted(_public_fields(names)))}")
            if key + _OFFSETS in names:
                raise ValueError(f"field {key!r} is variable-length; read samples instead")
            self._fields[key] = ShardedArray(
                [self._shard_arrays(s)[key] for s in range(len(self._shards))])
        return self._fields[key]

    def degradations(self) -> list[dict[str, dict[str, Any]]]:
        """Per sample, modality -> ``{"kind", "severity"}`` of what was degraded (``{}``: a
        clean sample); read from the shards' ``degradations`` field (absent: all clean)."""
        out: list[dict[str, dict[str, Any]]] = []
        for s, shard in enumerate(self._shards):
            n = shard["stop"] - shard["start"]
            arrays = self._shard_arrays(s)
            if "degradations" not in arrays:
                out.extend({} for _ in range(n))
            else:
                out.extend(json.loads(str(text)) for text in np.asarray(arrays["degradations"]))
        return out

    @property
    def images(self) -> ShardedArray:
        """uint8 ``[n, H, W, 3]`` rendered images, memory-mapped."""
        return self.field("image")

    @property
    def captions(self) -> list[str]:
        """Every caption of the split (loaded on first use)."""
        return [str(c) for c in np.asarray(self.field("caption"))]


def _public_fields(names: set[str]) -> list[str]:
    return [n for n in names if not n.endswith(_OFFSETS)]


def dataset_info(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary of a data set root: per split size, class balance, shard completeness,
    modality-free subset-size histogram; plus the manifest."""
    root = Path(root)
    manifest = json.loads((root / "manifest.json").read_text())
    index = json.loads((root / "index.json").read_text())
    splits = {}
    for key, entry in index["splits"].items():
        counts = np.bincount(entry["class_index"], minlength=len(index["class_names"]))
        present = sum((root / s["file"]).exists() for s in entry["shards"])
        info = {"size": entry["size"], "shards": len(entry["shards"]),
                "shards_present": present, "modalities": entry["modalities"],
                "class_counts": counts.tolist(),
                "bytes": sum((root / s["file"]).stat().st_size for s in entry["shards"]
                             if (root / s["file"]).exists())}
        if "modality_free" in entry:
            sizes = np.bincount([len(m) for _, m in entry["modality_free"]],
                                minlength=len(ALL_MODALITIES) + 1)[1:]
            info["modality_free_sizes"] = {str(k + 1): int(v) for k, v in enumerate(sizes)}
        splits[key] = info
    return {"root": str(root), "manifest": manifest, "class_names": index["class_names"],
            "splits": splits}
