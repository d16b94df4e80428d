"""The pipeline's configuration: one YAML file (``training/configs/*.yaml``) read into
:class:`PipelineConfig`, with ``key.sub=value`` overrides from the command line."""
from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from omnibind_ros.core.modalities import STUDENTS

from ..data import DataConfig, resolve_path
from ..trainers.af import AFConfig
from ..trainers.cad import ABLATION_VARIANTS, CADConfig
from ..trainers.common import ConfigBase
from ..trainers.stage0 import Stage0Config

Y = TypeVar("Y", bound="YamlConfig")


class YamlConfig(ConfigBase):
    """A config read from a YAML file with ``key.sub=value`` overrides (values parsed as YAML);
    every family's top-level config is one."""

    @classmethod
    def from_yaml(cls: type[Y], path: str | os.PathLike[str], overrides: Sequence[str] = ()
                  ) -> Y:
        import yaml

        raw = yaml.safe_load(resolve_path(path).read_text()) or {}
        return cls.from_dict(apply_overrides(raw, overrides))


@dataclass
class AblationConfig(ConfigBase):
    """CAD loss ablation (Table 7): every variant trains every student from scratch.

    Attributes
    ----------
    enabled : run it in ``eval``.
    train_fraction : class-balanced fraction of the student training samples (scarce data).
    epochs : epochs per variant (None: the CAD config's).
    variants : Table 7 rows to run (keys of ``ABLATION_VARIANTS``).
    """

    enabled: bool = True
    train_fraction: float = 0.25
    epochs: int | None = None
    variants: list[str] = field(default_factory=lambda: list(ABLATION_VARIANTS))


@dataclass
class RobustnessConfig(ConfigBase):
    """AF with vs without negative labels under a noisy modality (Tables 12-13).

    Attributes
    ----------
    enabled : run it in ``eval``.
    noise_stds : relative noise norms of the sweep (0 = clean).
    noisy_modalities : modalities made noisy one at a time (None: every fused modality).
    samples_per_class : evaluate on this many samples per class of the split (0: all); the
        sweep runs the head on every subset containing the noisy modality, so it is the
        costliest evaluation.
    af : overrides of the AF config for both variants (e.g. ``{"noise_prob": 0.3}``).
    min_size : smallest subset size evaluated.
    """

    enabled: bool = True
    noise_stds: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0])
    noisy_modalities: list[str] | None = None
    samples_per_class: int = 0
    af: dict[str, Any] = field(default_factory=dict)
    min_size: int = 2


@dataclass
class EvalConfig(ConfigBase):
    """What ``eval`` computes.

    Attributes
    ----------
    split : student split evaluated (``"test"``).
    ablation, robustness : the orchestrated ablations.
    """

    split: str = "test"
    ablation: AblationConfig = field(default_factory=AblationConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)


@dataclass
class ExportConfig(ConfigBase):
    """Where and how the bundle is exported.

    Attributes
    ----------
    bundle : bundle name: ``<cache>/bundles/<bundle>``.
    out : explicit output directory (overrides ``bundle``).
    sample_batch : real preprocessed test samples per modality handed over for parity checks.
    exporter : ONNX exporter passed to ``export_bundle`` (``"auto"``, ``"dynamo"``,
        ``"torchscript"``).
    """

    bundle: str = "default"
    out: str | None = None
    sample_batch: int = 2
    exporter: str = "auto"


@dataclass
class PipelineConfig(YamlConfig):
    """Everything ``omnibind-train`` needs (``training/configs/*.yaml``).

    Attributes
    ----------
    name : run name: ``<cache>/runs/<name>``.
    seed : root seed of every random choice (initialisation, batches, subsets, noise).
    cache_dir : cache directory (None: ``OMNIBIND_CACHE_DIR`` / XDG default).
    device : ``"auto"``, ``"cpu"`` or ``"cuda"``.
    threads : torch CPU threads (None: torch's default).
    progress : tqdm progress bars.
    data : data set, preprocessing and feature cache.
    encoders : modality -> registry name or ``EncoderConfig`` dict (default:
        ``DEFAULT_ENCODERS``).
    stage0, cad, af : the three training stages.
    baselines : fusion baselines trained/evaluated next to AF (``mean``, ``linear``, ``concat``).
    evaluation : evaluation and ablations.
    export : bundle export.
    """

    name: str = "sim_default"
    seed: int = 0
    cache_dir: str | None = None
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    encoders: dict[str, Any] = field(default_factory=dict)
    stage0: Stage0Config = field(default_factory=Stage0Config)
    cad: CADConfig = field(default_factory=CADConfig)
    af: AFConfig = field(default_factory=AFConfig)
    baselines: list[str] = field(default_factory=lambda: ["mean", "linear", "concat"])
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` + ``["a.b=2", "c=[1, 2]"]`` -> a new dict (values parsed as YAML)."""
    import yaml

    out = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return out


STUDENT_NAMES = tuple(m.value for m in STUDENTS)
