"""Evaluation on the simulated world: the seed 000 (OmniBind) result tables and their report.

What is computed, against which table of the paper:

* :func:`evaluate_combinations`: every non-empty modality subset (2^K - 1 of them) fused by each
  head (AF, mean, linear, concat) and classified by cosine against the label embeddings (CLS of
  Fig. 3b); per-subset top-1/top-5, the mean per subset size, the mean over subsets of >= 2
  modalities and the AF deltas (Tables 2, 3, 8, 9; 11 for the extra combinations).
* :func:`zero_shot_accuracy`: single-modality zero-shot top-1 (Tables 4-6; Table 7's cells).
* :func:`add_embedding_noise`, :func:`replace_with_random`, :func:`robustness_sweep`: one
  modality made noisy, AF accuracy over the combinations that contain it (Tables 12, 13).
* :func:`select_on_val`: the only selection among options (e.g. ``cad.crossfit_folds``),
  reading the validation split only; test scores ride along.
* Invalid inputs (``present`` masks: preprocessing failed, modality absent) are masked exactly as
  in training by :func:`evaluate_combinations`, :func:`zero_shot_accuracy` and
  :func:`robustness_sweep`.
* :func:`write_report` / :func:`format_summary`: ``report.md``, ``results.json``, PNG plots, and
  whether the paper's expected shape holds here (:func:`expected_shape`; no tuning to fit).

Conventions: accuracies and deltas are fractions in [0, 1] everywhere in ``results`` (the report
prints percent and percentage points); per-size keys are strings (``"1"``, ``"2"``, ...) so a
``results.json`` round trip gives the same dict. Subsets are named by their modalities joined with
``"+"`` in slot order (``MODALITY_SLOTS``), e.g. ``"image+tactile"``. Tokens are laid out as
:func:`~omnibind_train.models.fusion.stack_modalities` does: ``[B, S, D]`` in slot order with a
``[B, S]`` mask, so the slot-based baselines (linear, concat) see each modality in its own slot.

Modules: :mod:`.metrics` (subsets, accuracy, the combination and zero-shot tables),
:mod:`.robustness` (noise, the sweep), :mod:`.checks` (expected shape), :mod:`.selection`
(choices made on val), :mod:`.report`
(summary, ``report.md``, ``results.json``), :mod:`.plots` and :mod:`.formatting` (numbers and
table layout shared by the last two).
"""
from .checks import CAD_VARIANTS, THRESHOLDS, expected_shape
from .metrics import (
    HEAD_LABELS,
    HEAD_ORDER,
    MAX_CHUNK_ELEMENTS,
    TOP_K,
    aggregate_subsets,
    enumerate_subsets,
    evaluate_combinations,
    hit_rate,
    in_slot_order,
    present_matrix,
    subset_accuracy,
    subset_hits,
    subset_name,
    topk_correct,
    zero_shot_accuracy,
)
from .plots import (
    ABBREV,
    plot_accuracy_vs_size,
    plot_cad_ablation,
    plot_per_subset,
    plot_robustness,
)
from .report import (
    PAPER_COMBINATIONS,
    format_summary,
    render_report,
    results_json,
    to_jsonable,
    write_report,
)
from .robustness import (
    add_embedding_noise,
    degraded_sweep,
    replace_with_random,
    robustness_sweep,
)
from .selection import SELECTION_SPLIT, select_on_val

__all__ = [
    "ABBREV", "CAD_VARIANTS", "HEAD_LABELS", "HEAD_ORDER", "MAX_CHUNK_ELEMENTS",
    "PAPER_COMBINATIONS", "SELECTION_SPLIT", "THRESHOLDS", "TOP_K", "add_embedding_noise",
    "aggregate_subsets", "enumerate_subsets", "evaluate_combinations", "expected_shape",
    "format_summary", "hit_rate", "in_slot_order", "plot_accuracy_vs_size",
    "plot_cad_ablation", "plot_per_subset", "plot_robustness", "present_matrix",
    "degraded_sweep", "render_report", "replace_with_random", "results_json",
    "robustness_sweep",
    "select_on_val", "subset_accuracy", "subset_hits", "subset_name", "to_jsonable",
    "topk_correct", "write_report", "zero_shot_accuracy",
]
