"""The data set's index, a pure function of its config: sample seeds, balanced classes and the
modality-free records of the student splits (:func:`build_index`)."""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from omnibind_ros.core.modalities import ALL_MODALITIES, Modality
from omnibind_ros.sim.catalog import CLASS_NAMES
from omnibind_ros.sim.dataset.config import (
    FORMAT_VERSION,
    KIND_MODALITIES,
    SEED_LIMIT,
    DatasetConfig,
)

__all__ = ["build_index", "class_indices", "modality_free_records", "sample_seed"]


def sample_seed(dataset_seed: int, kind: str, split: str, index: int) -> int:
    """Seed of sample ``index`` of ``kind/split``: a hash, so it needs no other sample.

    Returns
    -------
    int
        In ``[0, 2**53)``; distinct (kind, split, index) give distinct seeds with probability
        ~1 - n^2 / 2^54 (the writer checks uniqueness anyway).
    """
    digest = hashlib.blake2b(f"omnibind-sim/{dataset_seed}/{kind}/{split}/{index}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "little") % SEED_LIMIT


def class_indices(n: int, n_classes: int) -> np.ndarray:
    """Balanced class of each sample, ``int64 [n]``: sample i has class ``i % n_classes``.

    Any prefix of length k * n_classes is exactly balanced; the whole split differs by at most
    one sample per class.
    """
    return np.arange(n, dtype=np.int64) % n_classes


def modality_free_records(n_samples: int, per_sample: int, weights: Mapping[int, float],
                          rng_seed: int, modalities: Sequence[Modality] = ALL_MODALITIES,
                          ) -> list[tuple[int, tuple[Modality, ...]]]:
    """Draw the modality-free index of one student split.

    Subset sizes are allocated *exactly* in proportion to ``weights`` (largest remainder over all
    ``n_samples * per_sample`` records), then shuffled; each record's subset is uniform among
    subsets of its size, and a sample's records are distinct subsets where possible.

    Parameters
    ----------
    n_samples : samples in the split.
    per_sample : records per sample.
    weights : ``{subset size: weight}``.
    rng_seed : seeds the draw (the writer derives it from the data set seed and split).
    modalities : the pool subsets are drawn from, in canonical order.

    Returns
    -------
    list of (sample index, modalities in canonical order), sorted by sample index.
    """
    n_records = n_samples * per_sample
    if n_records == 0:
        return []
    rng = np.random.default_rng(rng_seed)
    sizes = np.repeat(list(weights), _largest_remainder(list(weights.values()), n_records))
    rng.shuffle(sizes)
    pool = list(modalities)
    records: list[tuple[int, tuple[Modality, ...]]] = []
    for i in range(n_samples):
        seen: set[tuple[int, ...]] = set()
        for size in sizes[i * per_sample:(i + 1) * per_sample]:
            size = min(int(size), len(pool))
            for _ in range(8):  # redraw a duplicate subset a few times, then accept it
                pick = tuple(sorted(rng.choice(len(pool), size=size, replace=False).tolist()))
                if pick not in seen:
                    break
            seen.add(pick)
            records.append((i, tuple(pool[j] for j in pick)))
    return records


def _largest_remainder(weights: Sequence[float], total: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    quota = w / w.sum() * total
    counts = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return counts


def build_index(config: DatasetConfig, n_classes: int = len(CLASS_NAMES),
                class_names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
    """The data set's index (a JSON-ready dict), computed from the config alone."""
    splits: dict[str, Any] = {}
    for (kind, split), n in config.split_sizes().items():
        starts = range(0, n, config.shard_size)
        entry: dict[str, Any] = {
            "kind": kind,
            "split": split,
            "size": n,
            "modalities": [m.value for m in KIND_MODALITIES[kind]],
            "seeds": [sample_seed(config.seed, kind, split, i) for i in range(n)],
            "class_index": class_indices(n, n_classes).tolist(),
            "shards": [{"file": f"{kind}/{split}/shard_{s:05d}.npz", "start": start,
                        "stop": min(start + config.shard_size, n)}
                       for s, start in enumerate(starts)],
        }
        if kind == "student":
            mf_seed = int.from_bytes(hashlib.blake2b(
                f"omnibind-sim/{config.seed}/modality-free/{split}".encode(),
                digest_size=8).digest(), "little")
            records = modality_free_records(n, config.combos_per_sample,
                                            config.combo_size_weights, mf_seed)
            entry["modality_free"] = [[i, [m.value for m in mods]] for i, mods in records]
        splits[f"{kind}/{split}"] = entry
    all_seeds = [s for e in splits.values() for s in e["seeds"]]
    if len(set(all_seeds)) != len(all_seeds):
        raise RuntimeError("sample seed collision; change the data set seed")
    return {"format_version": FORMAT_VERSION, "config_hash": config.content_hash(),
            "class_names": list(class_names), "splits": splits}

