"""The bundle writer: :func:`export_bundle` stages every component in a hidden directory next to
the target, checks it and only then renames it into place.
"""
from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from omnibind_ros.core.bundle import (
    BUNDLE_FILE,
    FORMAT_VERSION,
    checksum_tree,
    dump_manifest,
    load_bundle,
)

from ..models.encoders import ModalityEncoder
from .components import _export_encoders, _export_fusion, _export_text, _versions, _write_labels
from .onnx_io import OPSET, _check_exporter
from .parity import (
    PARITY_ATOL,
    ExportParityError,
    _check_onnx_files,
    _parity,
    _torch_weights_parity,
)
from .plan import _check_out_dir, _eval_mode, _Plan, _plan


def _publish(tmp: Path, out_dir: Path) -> None:
    """Rename the finished staging directory to ``out_dir`` (replacing an older bundle)."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    _check_out_dir(out_dir)  # may have appeared while we exported
    old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except OSError:
        os.rename(old, out_dir)  # put the previous bundle back
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_bundle(out_dir: str | Path, *, encoders: Mapping[str, ModalityEncoder],
                  fusion: nn.Module, fusion_config: Mapping[str, Any] | Any,
                  text_encoder: ModalityEncoder, label_names: Sequence[str],
                  prompt_templates: Sequence[str], label_embeddings: torch.Tensor,
                  logit_scale: float,
                  preprocess_configs: Mapping[str, Any], provenance: Mapping[str, Any],
                  sample_inputs: Mapping[str, torch.Tensor],
                  exporter: str | Mapping[str, str] = "auto",
                  opset: int = OPSET, atol: float = PARITY_ATOL,
                  include_torch_weights: bool = True, threads: int = 1,
                  temperature: float | None = None) -> Path:
    """Write a validated model bundle to ``out_dir`` (atomically; see the module docstring).

    Parameters
    ----------
    out_dir : bundle directory; an existing bundle there is replaced, any other non-empty
        directory is refused (``FileExistsError``).
    encoders : modality -> trained encoder (``trunk -> head -> L2``); a ``"text"`` entry must
        be ``text_encoder`` itself.
    fusion : the fusion head, ``(tokens [B, N, D], mask [B, N]) -> [B, D]``.
    fusion_config : its :class:`~omnibind_train.models.fusion.FusionConfig` dict (``kind`` picks
        dynamic N for ``af``/``mean``, ``slots`` fixes N for the slot baselines).
    text_encoder : the text encoder, with ``.tokenizer`` (its directory's tokenizer files are
        copied into the bundle).
    label_names : C class names.
    prompt_templates : templates with one ``{}``; the label embeddings average over them.
    label_embeddings : ``[C, D]`` cached label embeddings (as the trainer computed them).
    logit_scale : ``1 / tau`` of the AF loss the fusion head was trained with (the value of
        ``AFLoss.logit_scale()``), written to ``labels.logit_scale``: the runtime multiplies the
        label cosines by it before its softmax, so its probabilities are the trainer's.
    preprocess_configs : modality -> preprocessing config (dict or config object) for every
        encoder modality, optionally ``"text"``; missing fields take their defaults.
    provenance : training provenance (data, seeds, checkpoint paths, metrics); plain YAML.
    sample_inputs : modality -> real preprocessed samples ``[B >= 2, *sample_shape]``; the
        export traces them and parity is measured on them.
    exporter : ``"auto"``, ``"dynamo"`` or ``"torchscript"``, or a mapping from component
        (modality name, ``"fusion"``, ``"text"``, ``"*"`` for the rest) to one of them.
    opset : ONNX opset.
    atol : max abs difference allowed between ONNX Runtime and torch.
    include_torch_weights : also write ``torch/*.safetensors`` for the torch fallback backend
        (doubles the bundle's size; checked by rebuilding every module from the bundle).
    threads : ONNX Runtime / torch threads for the checks.
    temperature : the confidence calibration fitted on held-out data
        (:func:`omnibind_ros.core.calibration.fit_temperature`), written to
        ``labels.temperature``; None writes none (the runtime's confidence is then the best
        label's probability as the model gives it).

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    ValueError, TypeError
        Inconsistent inputs (embedding sizes, sample shapes vs preprocessing, batch < 2, ...).
    ExportParityError
        ONNX Runtime (or the rebuilt torch fallback) differs from torch beyond ``atol``.
    ExportError
        The checker rejects a graph, or a dynamic axis came out fixed.
    """
    _check_exporter(exporter)
    out_dir = Path(out_dir).absolute()
    _check_out_dir(out_dir)
    all_modules = [*encoders.values(), fusion, text_encoder]
    with _eval_mode(*all_modules), torch.no_grad():
        plan = _plan(encoders=encoders, fusion=fusion, fusion_config=fusion_config,
                     text_encoder=text_encoder, label_names=label_names,
                     prompt_templates=prompt_templates, label_embeddings=label_embeddings,
                     logit_scale=logit_scale, preprocess_configs=preprocess_configs,
                     provenance=provenance, sample_inputs=sample_inputs,
                     temperature=temperature)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            _write_and_check(plan, tmp, exporter=exporter, opset=opset, atol=atol,
                             include_torch=include_torch_weights, threads=threads)
            _publish(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _write_and_check(plan: _Plan, tmp: Path, *, exporter: str | Mapping[str, str], opset: int,
                     atol: float, include_torch: bool, threads: int) -> None:
    opts = {"exporter": exporter, "opset": opset, "include_torch": include_torch}
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "embedding_dim": plan.dim,
        "modalities": _export_encoders(plan, tmp, **opts),
        "fusion": _export_fusion(plan, tmp, **opts),
        "text": _export_text(plan, tmp, **opts),
        "labels": _write_labels(plan, tmp),
        "versions": _versions(opset),
        "export": {"opset": opset, "tolerance": atol},
        "provenance": plan.provenance,
    }
    manifest["files"] = checksum_tree(tmp)
    dump_manifest(manifest, tmp / BUNDLE_FILE)
    _check_onnx_files(tmp)
    bundle = load_bundle(tmp)  # the runtime's own validation of what was just written
    diffs = _parity(plan, bundle, threads=threads)
    if include_torch:
        diffs["torch_fallback"] = _torch_weights_parity(plan, bundle, threads=threads)
    if any(not d <= atol for d in diffs.values()):
        raise ExportParityError(diffs, atol)
    manifest["export"]["parity_max_abs_diff"] = {k: float(f"{v:.3g}") for k, v in diffs.items()}
    dump_manifest(manifest, tmp / BUNDLE_FILE)  # bundle.yaml is not in its own checksum list
