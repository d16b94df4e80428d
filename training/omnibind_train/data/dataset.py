"""The simulated data set a run trains on: its config, generation on first use, and the content
fingerprint every cache key starts from."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnibind_ros.sim.dataset import DatasetConfig, dataset_dir, generate

from ..trainers.common import ConfigBase

_REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass
class DataConfig(ConfigBase):
    """Which data set, how it is preprocessed and how features are cached.

    Attributes
    ----------
    dataset : path of a data set config YAML (``omnibind_ros.sim.dataset.DatasetConfig``), or
        the config inline as a mapping.
    root : an existing data set directory to use instead of ``<cache>/datasets/<name>``.
    preprocess : modality -> overrides of the core preprocessing defaults (e.g.
        ``{"image": {"size": 192}}``); the result is stored in every checkpoint and the bundle.
    augment_views : modality -> number of cached views (1 = no augmentation; view 0 is plain).
    feature_dtype : dtype of cached trunk features (``"float16"`` or ``"float32"``).
    trunk_batch_size : samples per trunk forward when caching.
    trunk_runtime : ``"torch"``, ``"onnxruntime"`` or ``"auto"`` (ONNX Runtime for image-like
        frozen trunks on the CPU when it is installed: faster than eager torch for
        EfficientNet-style trunks, and the runtime the bundle is served with; checked against
        torch on the first batch, torch is used if they disagree).
    workers : data generation processes (None: the data set config's).
    degraded : the *degraded twin* of ``dataset``: a data set config (path or mapping) with the
        same seed and student split sizes, so its student samples are the same scenes, and
        sensor degradations drawn for them (``DatasetConfig.degradations``; the world draws
        them from their own random stream, so the clean renders underneath are identical).
        Fusion trains and is evaluated with these samples' embeddings in the mix; None: none.
    """

    dataset: str | dict[str, Any] = "config/sim_dataset.yaml"
    root: str | None = None
    preprocess: dict[str, dict[str, Any]] = field(default_factory=dict)
    augment_views: dict[str, int] = field(default_factory=dict)
    feature_dtype: str = "float16"
    trunk_batch_size: int = 64
    trunk_runtime: str = "auto"
    workers: int | None = None
    degraded: str | dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.trunk_runtime not in ("auto", "torch", "onnxruntime"):
            raise ValueError(f"trunk_runtime must be auto, torch or onnxruntime, "
                             f"got {self.trunk_runtime!r}")

    def dataset_config(self) -> DatasetConfig:
        """The :class:`DatasetConfig` (read from YAML when ``dataset`` is a path)."""
        return _dataset_config(self.dataset)

    def degraded_twin(self) -> DataConfig | None:
        """This data config with the degraded twin as its data set; None without one.

        Raises ``ValueError`` when the twin's seed or student split sizes differ from the data
        set's (its samples would not be the same scenes)."""
        if self.degraded is None:
            return None
        main, twin = self.dataset_config(), _dataset_config(self.degraded)
        keys = ("seed", "student_train", "student_val", "student_test")
        differ = [k for k in keys if getattr(main, k) != getattr(twin, k)]
        if differ:
            what = ", ".join(f"{k} {getattr(twin, k)} != {getattr(main, k)}" for k in differ)
            raise ValueError(f"data.degraded: {twin.name} is not a twin of {main.name}: {what}")
        if not twin.degradations:
            raise ValueError(f"data.degraded: {twin.name} draws no degradations")
        return dataclasses.replace(self, dataset=self.degraded, root=None, degraded=None)

    def dataset_root(self, cache_dir: str | os.PathLike[str] | None) -> Path:
        """Where the data set lives (``root`` or ``<cache>/datasets/<name>``)."""
        if self.root:
            return resolve_path(self.root, must_exist=False)
        return dataset_dir(self.dataset_config(), cache_dir)


def _dataset_config(source: str | Mapping[str, Any]) -> DatasetConfig:
    if isinstance(source, Mapping):
        return DatasetConfig.from_dict(dict(source))
    return DatasetConfig.from_yaml(resolve_path(source))


def resolve_path(path: str | os.PathLike[str], *, must_exist: bool = True) -> Path:
    """An absolute path; a relative one is tried against the CWD, then the repository root."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    for base in (Path.cwd(), _REPO_ROOT):
        if (base / p).exists():
            return (base / p).absolute()
    if must_exist:
        raise FileNotFoundError(f"{path} not found in {Path.cwd()} or {_REPO_ROOT}")
    return (Path.cwd() / p).absolute()


def ensure_dataset(cfg: DataConfig, cache_dir: str | os.PathLike[str] | None, *,
                   progress: bool = True, overwrite: bool = False) -> Path:
    """Generate the data set if it is absent or partial (resumes); return its root.

    A data set of another config at the same place is an error (``ValueError``), and one
    rendered by other simulator code is kept with a warning, unless ``overwrite``: then either
    is deleted and regenerated (a current data set is never regenerated).
    """
    import warnings

    kwargs = {"root": cfg.dataset_root(cache_dir), "workers": cfg.workers,
              "progress": progress}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            root = generate(cfg.dataset_config(), cache_dir, **kwargs)
        except ValueError:
            if not overwrite:
                raise
            return generate(cfg.dataset_config(), cache_dir, overwrite=True, **kwargs)
    stale = [w for w in caught if "simulator code" in str(w.message)]
    if stale and overwrite:
        return generate(cfg.dataset_config(), cache_dir, overwrite=True, **kwargs)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return root


def dataset_fingerprint(root: str | os.PathLike[str]) -> str:
    """Identity of a generated data set: its config hash and simulator-code fingerprint."""
    manifest = json.loads((Path(root) / "manifest.json").read_text())
    return hash_json({"config": manifest["config_hash"], "code": manifest["code_fingerprint"]})


def hash_json(obj: Any) -> str:
    """16 hex chars of the SHA-256 of canonical JSON."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
