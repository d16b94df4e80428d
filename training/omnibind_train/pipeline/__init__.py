"""The OmniBind pipeline on the simulated world: data -> stage 0 -> CAD -> AF -> eval -> export.

One YAML (:class:`PipelineConfig`) drives everything. Outputs go to the cache directory::

    <cache>/datasets/<data set>/          the simulated data set (omnibind_ros.sim)
    <cache>/features/<data set>/...       cached trunk features / preprocessed point sets
    <cache>/runs/<name>/stage0/final/     image head + temperature (checkpoint directories,
    <cache>/runs/<name>/cad/final/        see trainers.checkpoint), with checkpoints/ and tb/
    <cache>/runs/<name>/af/<head>/final/  one per fusion head (af, linear, concat)
    <cache>/runs/<name>/embeddings/       frozen per-modality embeddings of the student splits
    <cache>/runs/<name>/eval/             report.md, results.json, plots
    <cache>/bundles/<bundle>/             the exported model bundle the runtime reads

Each stage reads the previous stages' ``final`` checkpoints, so stages can run as separate
commands (or under ``torchrun``); expensive inputs (data, features) are cached by content.

Modules: :mod:`.config` (the YAML config), :mod:`.workspace` (shared, cached inputs and stage
outputs), :mod:`.train_stages` (data, stage 0, CAD, AF), :mod:`.eval_stage`,
:mod:`.export_stage` and :mod:`.run` (stages in order, timed).
"""
from .config import (
    STUDENT_NAMES,
    AblationConfig,
    EvalConfig,
    ExportConfig,
    PipelineConfig,
    RobustnessConfig,
    apply_overrides,
)
from .eval_stage import run_cad_ablation, run_eval, run_robustness
from .export_stage import bundle_dir, run_export, sample_inputs
from .run import STAGES, run_all
from .train_stages import (
    run_af,
    run_cad,
    run_crossfit,
    run_data,
    run_stage0,
    student_accuracy,
    train_cad_variant,
    zero_shot,
)
from .workspace import ORT_MIN_SAMPLES, Workspace

__all__ = [
    "ORT_MIN_SAMPLES", "STAGES", "STUDENT_NAMES", "AblationConfig", "EvalConfig",
    "ExportConfig", "PipelineConfig", "RobustnessConfig", "Workspace", "apply_overrides",
    "bundle_dir", "run_af", "run_all", "run_cad", "run_cad_ablation", "run_crossfit",
    "run_data", "run_eval", "run_export", "run_robustness", "run_stage0", "sample_inputs",
    "student_accuracy", "train_cad_variant", "zero_shot",
]
