"""Writes each bundle component into the staging directory and returns its manifest section:
the modality encoders, the fusion head, the text encoder with its tokenizer files, the label set
(with the logit scale) and the versions of the exporting environment.
"""
from __future__ import annotations

import importlib.metadata
import platform
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ..models.fusion import TOKEN_SET_KINDS, FusionConfig, export_fusion_onnx
from .onnx_io import (
    EMBEDDING_OUTPUT,
    ENCODER_INPUT,
    FUSION_INPUTS,
    FUSION_OUTPUT,
    TEXT_INPUTS,
    ExportError,
    _ArrayGraph,
    _export,
    _export_torchscript,
    _exporter_for,
    _inline_external_data,
    _remove_partial,
    _tensor,
    _TextGraph,
    _verify_io,
    quiet_export,
)
from .plan import _Plan

#: Files copied from the text encoder's tokenizer directory (weights never are).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json", "config.json",
                   "spiece.model", "sentencepiece.bpe.model")


def _save_torch(module: nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(module, str(path))


def _export_encoders(plan: _Plan, tmp: Path, *, exporter: str | Mapping[str, str], opset: int,
                     include_torch: bool) -> dict[str, Any]:
    section = {}
    for modality, encoder in plan.encoders.items():
        sample = plan.samples[modality]
        rel = f"encoders/{modality}.onnx"
        spec_in = _tensor(ENCODER_INPUT, ["batch", *sample.shape[1:]], "float32")
        spec_out = _tensor(EMBEDDING_OUTPUT, ["batch", plan.dim], "float32")
        used = _export(_ArrayGraph(encoder), (sample,), tmp / rel,
                       exporter=_exporter_for(exporter, modality), opset=opset,
                       input_names=[ENCODER_INPUT], output_names=[EMBEDDING_OUTPUT],
                       dynamic_axes={ENCODER_INPUT: {0: "batch"}})
        _verify_io(tmp / rel, [spec_in], spec_out)
        entry = {"encoder": {"file": rel, "input": spec_in, "output": spec_out,
                             "exporter": used},
                 "preprocess": plan.preprocess[modality],
                 "encoder_config": plan.encoder_configs[modality]}
        if include_torch:
            entry["torch_weights"] = f"torch/{modality}.safetensors"
            _save_torch(encoder, tmp / entry["torch_weights"])
        section[modality] = entry
    return section


def _fusion_token_count(plan: _Plan) -> tuple[bool, int]:
    """(dynamic N?, example N): token-set heads (AF, mean, CLS token, outer product) take any N,
    slot baselines exactly len(slots)."""
    kind = plan.fusion_config.get("kind", "af")
    if kind in TOKEN_SET_KINDS:  # any N, any order: the dynamic token axis
        return True, max(3, len(plan.encoders))
    slots = plan.fusion_config.get("slots") or FusionConfig().slots
    return False, len(slots)


def _export_fusion(plan: _Plan, tmp: Path, *, exporter: str | Mapping[str, str], opset: int,
                   include_torch: bool) -> dict[str, Any]:
    exporter = _exporter_for(exporter, "fusion")
    kind = str(plan.fusion_config.get("kind", "af"))
    rel = f"fusion/{kind}_head.onnx"
    dynamic, n = _fusion_token_count(plan)
    tokens_dim: int | str = "tokens" if dynamic else n
    inputs = [_tensor(FUSION_INPUTS[0], ["batch", tokens_dim, plan.dim], "float32"),
              _tensor(FUSION_INPUTS[1], ["batch", tokens_dim], "bool")]
    output = _tensor(FUSION_OUTPUT, ["batch", plan.dim], "float32")
    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
    used = None
    if exporter != "torchscript":
        try:
            with quiet_export():
                export_fusion_onnx(plan.fusion, tmp / rel, dim=plan.dim, example_tokens=n,
                                   dynamic_tokens=dynamic, opset=opset)
            used = "dynamo"
        except Exception as exc:
            if exporter == "dynamo":
                raise ExportError(f"dynamo export of the fusion head failed: {exc}") from exc
            warnings.warn(f"dynamo export of the fusion head failed ({type(exc).__name__}); "
                          "falling back to the TorchScript exporter", stacklevel=3)
            _remove_partial(tmp / rel)
    if used == "dynamo":
        _inline_external_data(tmp / rel)
    if used is None:
        axes = {k: ({0: "batch", 1: "tokens"} if dynamic else {0: "batch"})
                for k in FUSION_INPUTS}
        tokens, mask = _fusion_example(plan.dim, n)
        _export_torchscript(plan.fusion, (tokens, mask), tmp / rel, input_names=FUSION_INPUTS,
                            output_names=[FUSION_OUTPUT], dynamic_axes=axes, opset=opset)
        used = "torchscript"
    _verify_io(tmp / rel, inputs, output)
    entry = {"file": rel, "kind": kind, "config": plan.fusion_config, "inputs": inputs,
             "output": output, "exporter": used}
    if include_torch:
        entry["torch_weights"] = "torch/fusion.safetensors"
        _save_torch(plan.fusion, tmp / entry["torch_weights"])
    return entry


def _fusion_example(dim: int, n: int, batch: int = 3, seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit tokens ``[batch, n, dim]`` and a mask with full, partial and single-token rows."""
    gen = torch.Generator().manual_seed(seed)
    tokens = F.normalize(torch.randn(batch, n, dim, generator=gen), dim=-1)
    mask = torch.rand(batch, n, generator=gen) > 0.5
    mask[:, 0] = True
    mask[0] = True
    if batch > 2:
        mask[2, 1:] = False
    return tokens, mask


def _tokenizer_files(plan: _Plan, dest: Path) -> list[str]:
    source = Path(getattr(plan.tokenizer, "path", "") or "")
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if source.name and (source / name).is_file():
            shutil.copy2(source / name, dest / name)
            copied.append(name)
    if "tokenizer.json" not in copied:
        hf = getattr(plan.tokenizer, "_tok", None)  # transformers fast tokenizer, if any
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is None:
            raise ExportError(f"no tokenizer.json in {source or 'the text tokenizer'} and the "
                              "tokenizer is not a fast one that could write it")
        backend.save(str(dest / "tokenizer.json"))
        copied.append("tokenizer.json")
    return sorted(copied)


def _pad_token(plan: _Plan) -> tuple[int, str]:
    hf = getattr(plan.tokenizer, "_tok", None)
    pad_id, pad = getattr(hf, "pad_token_id", None), getattr(hf, "pad_token", None)
    if pad_id is None or pad is None:
        return 0, "[PAD]"  # CLIP-style tokenizers have none; pad ids are masked anyway
    return int(pad_id), str(pad)


def _text_max_length(plan: _Plan) -> int:
    model = getattr(plan.tokenizer, "max_length", None) or 512
    return int(min(model, plan.text_preprocess["max_length"]))


def _text_example(plan: _Plan) -> tuple[torch.Tensor, torch.Tensor]:
    # Two prompts of different lengths: padding is part of the traced example.
    batch = plan.tokenizer([plan.prompt_templates[0].format(plan.label_names[0]), "an object"])
    return batch["input_ids"], batch["attention_mask"]


def _export_text(plan: _Plan, tmp: Path, *, exporter: str | Mapping[str, str], opset: int,
                 include_torch: bool) -> dict[str, Any]:
    rel = "text/text_encoder.onnx"
    axes = {n: {0: "batch", 1: "sequence"} for n in TEXT_INPUTS}
    inputs = [_tensor(n, ["batch", "sequence"], "int64") for n in TEXT_INPUTS]
    output = _tensor(EMBEDDING_OUTPUT, ["batch", plan.dim], "float32")
    used = _export(_TextGraph(plan.text), _text_example(plan), tmp / rel,
                   exporter=_exporter_for(exporter, "text"), opset=opset,
                   input_names=TEXT_INPUTS, output_names=[EMBEDDING_OUTPUT], dynamic_axes=axes)
    _verify_io(tmp / rel, inputs, output)
    files = _tokenizer_files(plan, tmp / "text" / "tokenizer")
    pad_id, pad = _pad_token(plan)
    entry = {"encoder": {"file": rel, "inputs": inputs, "output": output, "exporter": used},
             "tokenizer": {"dir": "text/tokenizer", "file": "text/tokenizer/tokenizer.json",
                           "files": files, "max_length": _text_max_length(plan),
                           "pad_id": pad_id, "pad_token": pad},
             "preprocess": plan.text_preprocess, "encoder_config": plan.text_config}
    if include_torch:
        entry["torch_weights"] = "torch/text.safetensors"
        _save_torch(plan.text, tmp / entry["torch_weights"])
    return entry


def _write_labels(plan: _Plan, tmp: Path) -> dict[str, Any]:
    (tmp / "labels").mkdir(parents=True, exist_ok=True)
    content = {"names": plan.label_names, "prompt_templates": plan.prompt_templates}
    (tmp / "labels" / "labels.yaml").write_text(
        yaml.safe_dump(content, sort_keys=False, allow_unicode=True), encoding="utf-8")
    np.save(tmp / "labels" / "label_embeddings.npy", plan.label_embeddings, allow_pickle=False)
    entry = {"file": "labels/labels.yaml", "embeddings": "labels/label_embeddings.npy",
             "count": len(plan.label_names), "logit_scale": plan.logit_scale}
    if plan.temperature is not None:
        entry["temperature"] = plan.temperature
    return entry


def _versions(opset: int) -> dict[str, Any]:
    import onnx

    import omnibind_ros
    import omnibind_train

    versions: dict[str, Any] = {"omnibind_ros": omnibind_ros.__version__,
                                "omnibind_train": omnibind_train.__version__,
                                "torch": torch.__version__, "onnx": onnx.__version__,
                                "opset": opset, "python": platform.python_version()}
    for dist in ("onnxruntime", "onnxscript", "transformers", "tokenizers", "safetensors"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions
