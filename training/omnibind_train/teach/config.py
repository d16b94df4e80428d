"""The configuration of ``omnibind-train teach`` (``training/configs/teach.yaml``), with
``key.sub=value`` overrides like every ``omnibind-train`` config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omnibind_ros.core.names import GROUND_TRUTH_TOPIC

from ..pipeline.config import YamlConfig
from ..trainers.cad import CADConfig
from ..trainers.common import ConfigBase, LoopConfig, OptimConfig

INIT_CHOICES = ("registry", "bundle")
RUN_DATA_CHOICES = ("auto", "none")


@dataclass
class TeachExportConfig(ConfigBase):
    """How the taught bundle is written (see :func:`omnibind_train.export.export_bundle`).

    Attributes
    ----------
    exporter : ONNX exporter, or a mapping component -> exporter (``"*"`` for the rest).
    include_torch_weights : write ``torch/*.safetensors`` (needed to teach the bundle again, and
        by the runtime's torch backend).
    sample_batch : real preprocessed samples per modality for the parity checks.
    """

    exporter: str | dict[str, str] = "auto"
    include_torch_weights: bool = True
    sample_batch: int = 2


def _default_cad() -> CADConfig:
    # A 2-minute bag holds ~10^3 samples of ~20 objects: the run's 20 epochs (40 and 80 gave a
    # lower out-of-fold accuracy against the pseudo-labels on the simulated bag, the criterion
    # a robot without labels has), smaller batches (fewer near-duplicate frames per batch).
    return CADConfig(loop=LoopConfig(epochs=20, batch_size=64, log_every=20),
                     optim=OptimConfig(lr=1e-3, weight_decay=0.05))


@dataclass
class TeachConfig(YamlConfig):
    """Everything ``omnibind-train teach`` needs besides the bag and the bundles.

    Attributes
    ----------
    modality : the new sensor's modality (a student modality: thermal, event, tactile, audio,
        point_cloud).
    topic : the new sensor's topic (None: the bag's only topic of a readable type, see
        :func:`omnibind_ros.bag_inputs.resolve_topic`).
    camera_topic : the camera's topic (None: likewise, the new sensor's topic left out).
    tolerance_s : largest stamp difference between a sensor sample and its camera frame.
    labels : ``"none"`` (pseudo-labels from the image teacher), ``"topic"`` (the bag's
        ground-truth topic) or the path of a CSV of labelled intervals
        (``start_s,end_s,label``; see :mod:`omnibind_ros.bag.truth`).
    truth_topic : the ground-truth topic (labels, and the pseudo-label check when present).
    init : ``"registry"`` (the student starts from the registry's encoder, ``encoder``) or
        ``"bundle"`` (from the bundle's own encoder of that modality).
    encoder : registry name or ``EncoderConfig`` dict of the student (None: the registry's
        default for the modality); its ``embed_dim`` is always the bundle's.
    preprocess : overrides of the new modality's preprocessing config (the bundle's when it has
        the modality, else the core defaults).
    run_data : ``"auto"``: stage II also trains on the training run's data set embeddings of
        the other modalities when the bundle's run is in the cache and matches the bundle;
        ``"none"``: the bag only.
    matches_per_sample : stage II rows per bag sample built by label-level matching (seed 000
        Sec. 3.4): the bag's image and new-sensor embeddings with the other modalities of a
        run sample of the same (pseudo-)label.
    crossfit_folds : folds of the out-of-fold new-sensor embeddings stage II trains on (0: the
        final student's in-sample embeddings).
    crossfit_block_s : the folds are made of contiguous spans of this many seconds, assigned in
        turn: neighbouring frames are near-duplicates and must not straddle folds.
    cad : stage I settings (``students`` and ``terms`` are set by teach; see the module
        docstring of :mod:`omnibind_train.teach.train`).
    af : overrides of the bundle's AF training config (its run's ``af`` section; nested keys
        merge: ``{loop: {epochs: 5}}`` keeps the run's batch size).
    augment_views : cached views of each new-sensor sample for a frozen-trunk student (1 =
        none; views >= 1 are the pipeline's training augmentation, ``augment_input``: random
        flip and shift of image-like inputs, a time shift of audio); each CAD step draws one.
    encode_batch : inputs per encoder call while reading the bag.
    trunk_runtime : ``"auto"`` (ONNX Runtime for a frozen student trunk on the CPU, checked
        against torch, as the pipeline's feature cache) or ``"torch"``.
    seed, device, threads, progress, cache_dir : as in the pipeline config.
    work_dir : checkpoints and the teach report (None: ``<cache>/runs/teach/<out name>``).
    export : see :class:`TeachExportConfig`.
    """

    modality: str = "thermal"
    topic: str | None = None
    camera_topic: str | None = None
    tolerance_s: float = 0.05
    labels: str = "none"
    truth_topic: str = GROUND_TRUTH_TOPIC
    init: str = "registry"
    encoder: str | dict[str, Any] | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    run_data: str = "auto"
    matches_per_sample: int = 1
    crossfit_folds: int = 2
    crossfit_block_s: float = 10.0
    cad: CADConfig = field(default_factory=_default_cad)
    af: dict[str, Any] = field(default_factory=dict)
    augment_views: int = 1
    encode_batch: int = 32
    trunk_runtime: str = "auto"
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    progress: bool = True
    cache_dir: str | None = None
    work_dir: str | None = None
    export: TeachExportConfig = field(default_factory=TeachExportConfig)

    def __post_init__(self) -> None:
        from omnibind_ros.core.modalities import STUDENTS, parse_modality

        self.modality = parse_modality(self.modality).value
        if self.modality not in {m.value for m in STUDENTS}:
            raise ValueError(f"modality {self.modality!r} is a teacher; teach a student "
                             f"modality: {', '.join(m.value for m in STUDENTS)}")
        if self.init not in INIT_CHOICES:
            raise ValueError(f"init must be one of {INIT_CHOICES}, got {self.init!r}")
        if self.run_data not in RUN_DATA_CHOICES:
            raise ValueError(f"run_data must be one of {RUN_DATA_CHOICES}, got {self.run_data!r}")
        if not self.tolerance_s >= 0:
            raise ValueError(f"tolerance_s must be >= 0, got {self.tolerance_s}")
        if self.trunk_runtime not in ("auto", "torch"):
            raise ValueError(f"trunk_runtime must be auto or torch, got {self.trunk_runtime!r}")
        if self.matches_per_sample < 1:
            raise ValueError("matches_per_sample must be >= 1")
        if self.crossfit_folds == 1 or self.crossfit_folds < 0:
            raise ValueError("crossfit_folds must be 0 (off) or >= 2")
        if not self.labels:
            self.labels = "none"
