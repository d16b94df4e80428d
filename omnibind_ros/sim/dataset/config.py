"""What a simulated data set holds: :class:`DatasetConfig`, the kinds of samples and their
splits, and where a data set goes in the cache (:func:`dataset_dir`)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnibind_ros.core.modalities import ALL_MODALITIES, Modality
from omnibind_ros.core.paths import default_cache_dir

__all__ = ["DEFAULT_COMBO_WEIGHTS", "FORMAT_VERSION", "KINDS", "KIND_MODALITIES", "SEED_LIMIT",
           "DatasetConfig", "dataset_dir"]

FORMAT_VERSION = 1
KINDS: dict[str, tuple[str, ...]] = {"teacher": ("train", "val"),
                                     "student": ("train", "val", "test")}
#: What each kind of sample observes: teachers are image-caption pairs, students see everything.
KIND_MODALITIES: dict[str, tuple[Modality, ...]] = {
    "teacher": (Modality.IMAGE, Modality.TEXT),
    "student": ALL_MODALITIES,
}
#: Proportions of modality-subset sizes in the modality-free index: mostly pairs (46%), then
#: 3 (15%) and 4 (16%) modalities, 5 and more 17% (split 11/4/2 over 5/6/7: larger
#: combinations rarer) and single modalities 6%.
DEFAULT_COMBO_WEIGHTS: dict[int, float] = {1: 0.06, 2: 0.46, 3: 0.15, 4: 0.16,
                                           5: 0.11, 6: 0.04, 7: 0.02}
#: Seeds stay below 2**53 so they are exact in JSON readers that parse numbers as doubles.
SEED_LIMIT = 2 ** 53


@dataclass
class DatasetConfig:
    """What to generate. Defaults are the project's default data set (``config/sim_dataset.yaml``).

    Attributes
    ----------
    name : directory name of the data set under ``<cache>/datasets/``.
    seed : root of every sample seed.
    world : overrides passed to ``WorldConfig.from_dict`` (render sizes, noise levels, ...).
    teacher_train, teacher_val : image+caption pairs (abundant, the teachers' data).
    student_train, student_val, student_test : samples observing all 7 modalities (scarce).
    shard_size : samples per shard file (also the unit of resumption and of progress).
    workers : processes rendering in parallel (1 = in this process).
    combos_per_sample : modality-free records drawn per student sample.
    combo_size_weights : ``{subset size: weight}`` for the modality-free index.
    degradations : sensor degradations of the student samples, a
        :class:`~omnibind_ros.sim.degrade.DegradationSpec` mapping (per modality:
        ``probability``, ``kinds``, ``severity``); None = clean sensors. Teacher pairs stay
        clean: the teacher space is learnt from clean image-caption pairs, and degraded
        sensors are what fusion must cope with. Absent from :meth:`to_dict` (and so from the
        content hash) when None, so clean data sets keep their hash.
    """

    name: str = "sim_default"
    seed: int = 0
    world: dict[str, Any] = field(default_factory=dict)
    teacher_train: int = 16200
    teacher_val: int = 1800
    student_train: int = 1800
    student_val: int = 360
    student_test: int = 540
    shard_size: int = 250
    workers: int = 2
    combos_per_sample: int = 2
    combo_size_weights: dict[int, float] = field(
        default_factory=lambda: dict(DEFAULT_COMBO_WEIGHTS))
    degradations: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name \
                or self.name in (".", ".."):
            raise ValueError(f"name: must be a plain directory name, got {self.name!r}")
        _check_int("seed", self.seed, 0)
        if not isinstance(self.world, dict):
            raise ValueError(f"world: must be a mapping of WorldConfig overrides, "
                             f"got {type(self.world).__name__}")
        for key in ("teacher_train", "teacher_val", "student_train", "student_val",
                    "student_test"):
            _check_int(key, getattr(self, key), 0)
        _check_int("shard_size", self.shard_size, 1)
        _check_int("workers", self.workers, 1)
        _check_int("combos_per_sample", self.combos_per_sample, 1)
        self.combo_size_weights = _check_weights(self.combo_size_weights)
        self.degradations = _check_degradations(self.degradations)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetConfig:
        """Build from a mapping; raise ``ValueError`` naming any unknown key."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a data set config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown data set config key(s): {', '.join(map(str, unknown))}; "
                             f"known: {', '.join(sorted(known))}")
        kwargs = dict(data)
        if kwargs.get("world") is None and "world" in kwargs:
            kwargs["world"] = {}
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> DatasetConfig:
        """Load a YAML file (an empty file gives the defaults)."""
        import yaml  # local: only the CLI and training read YAML

        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        return cls.from_dict({} if data is None else data)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON/YAML mapping that :meth:`from_dict` reads back to an equal config."""
        out = dataclasses.asdict(self)
        out["combo_size_weights"] = {int(k): float(v) for k, v in self.combo_size_weights.items()}
        if self.degradations is None:
            del out["degradations"]
        return out

    @property
    def degraded(self) -> bool:
        """Some student samples may be degraded (a modality with a probability above 0)."""
        return bool(self.degradations) and any(
            entry["probability"] > 0 for entry in self.degradations.values())

    def split_sizes(self) -> dict[tuple[str, str], int]:
        """``{(kind, split): number of samples}`` in a stable order."""
        return {(kind, split): int(getattr(self, f"{kind}_{split}"))
                for kind, splits in KINDS.items() for split in splits}

    def content_hash(self) -> str:
        """SHA-256 (hex, 16 chars) of everything that changes the data (not name or workers)."""
        content = {k: v for k, v in self.to_dict().items() if k not in ("name", "workers")}
        return _hash_json(content)


def _check_int(key: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{key}: must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{key}: must be >= {minimum}, got {value}")


def _check_weights(weights: Any) -> dict[int, float]:
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError("combo_size_weights: must be a non-empty mapping {size: weight}")
    out: dict[int, float] = {}
    for k, v in weights.items():
        try:
            size = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"combo_size_weights: key {k!r} is not an integer") from None
        if not 1 <= size <= len(ALL_MODALITIES):
            raise ValueError(f"combo_size_weights: size {size} outside 1..{len(ALL_MODALITIES)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v < 0:
            raise ValueError(f"combo_size_weights: weight of size {size} must be >= 0, got {v!r}")
        out[size] = float(v)
    if sum(out.values()) <= 0:
        raise ValueError("combo_size_weights: weights sum to zero")
    return dict(sorted(out.items()))


def _check_degradations(spec: Any) -> dict[str, Any] | None:
    """The spec, validated and completed (every key explicit), or None for none/empty."""
    if spec is None or (isinstance(spec, Mapping) and not spec):
        return None
    from omnibind_ros.sim.degrade import DegradationSpec

    try:
        return DegradationSpec.from_dict(spec).to_dict()
    except ValueError as exc:
        raise ValueError(f"degradations: {exc}") from None


def _hash_json(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]



def dataset_dir(config: DatasetConfig, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where :func:`generate` puts ``config``'s data set: ``<cache>/datasets/<name>``."""
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / "datasets" \
        / config.name
