"""The validated export plan: every input of ``export_bundle`` checked for consistency (embedding
sizes, sample shapes against the preprocessing configs, labels, logit scale) and turned into CPU
float32 modules in eval mode, before anything is written.
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from omnibind_ros.core.bundle import BUNDLE_FILE, to_yaml_plain
from omnibind_ros.core.modalities import Modality, parse_modality
from omnibind_ros.core.preprocess import build_config, build_preprocessor

from ..models.encoders import ModalityEncoder


@dataclass
class _Plan:
    dim: int
    encoders: dict[str, nn.Module]  # CPU float32 modules in eval mode
    encoder_configs: dict[str, dict[str, Any]]
    preprocess: dict[str, dict[str, Any]]
    samples: dict[str, torch.Tensor]
    fusion: nn.Module
    fusion_config: dict[str, Any]
    text: nn.Module
    text_config: dict[str, Any]
    tokenizer: Any
    text_preprocess: dict[str, Any]
    label_names: list[str]
    prompt_templates: list[str]
    label_embeddings: np.ndarray
    logit_scale: float
    provenance: dict[str, Any]
    temperature: float | None = None


def _config_dict(obj: Any, what: str) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    raise TypeError(f"{what} must be a dict or have to_dict(), got {type(obj).__name__}")


def _cpu_float(module: nn.Module) -> nn.Module:
    """``module`` itself when already on CPU in float32, else a CPU float32 copy."""
    tensors = list(module.parameters()) + list(module.buffers())
    if all(t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point())
           for t in tensors):
        return module
    tokenizer = getattr(module, "tokenizer", None)
    memo = {id(tokenizer): tokenizer} if tokenizer is not None else {}  # share, don't copy
    return copy.deepcopy(module, memo).cpu().float()


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Eval mode (dropout off, BatchNorm statistics fixed) for the block, then restore."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def _sample_check(modality: str, sample: Any, preprocess: dict[str, Any]) -> torch.Tensor:
    if not isinstance(sample, torch.Tensor):
        raise TypeError(f"sample_inputs[{modality!r}] must be a torch.Tensor, "
                        f"got {type(sample).__name__}")
    expected = build_preprocessor(modality, preprocess).output_shape
    if sample.ndim < 2 or sample.shape[0] < 2:
        raise ValueError(f"sample_inputs[{modality!r}] must be a batch of >= 2 samples, got "
                         f"shape {list(sample.shape)}: the dynamo exporter turns a batch of 1 "
                         "into a constant and the graph would reject any other batch size")
    if expected is not None and tuple(sample.shape[1:]) != tuple(expected):
        raise ValueError(f"sample_inputs[{modality!r}] has per-sample shape "
                         f"{list(sample.shape[1:])} but the {modality} preprocessing config "
                         f"produces {list(expected)}: the runtime would feed the encoder "
                         "inputs it was not exported for")
    sample = sample.detach().cpu().float()
    if not torch.isfinite(sample).all():
        raise ValueError(f"sample_inputs[{modality!r}] holds NaN/inf")
    return sample


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not (out_dir / BUNDLE_FILE).is_file() and (
            not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not a model bundle; refusing to "
                              "replace it (export into a new or empty directory)")


def _check_labels(names: Sequence[str], templates: Sequence[str], embeddings: Any, dim: int
                  ) -> np.ndarray:
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError("label_names must be a non-empty list of non-empty strings")
    if len(set(names)) != len(names):
        raise ValueError("label_names has duplicates")
    if not templates or not all(isinstance(t, str) and t.count("{}") == 1 for t in templates):
        raise ValueError(f"prompt_templates must be strings with exactly one '{{}}', "
                         f"got {list(templates)!r}")
    emb = torch.as_tensor(embeddings).detach().cpu().float().numpy()
    if emb.shape != (len(names), dim):
        raise ValueError(f"label_embeddings must be [C={len(names)}, D={dim}], got "
                         f"{list(emb.shape)}")
    if not np.isfinite(emb).all():
        raise ValueError("label_embeddings hold NaN/inf")
    return np.ascontiguousarray(emb, dtype=np.float32)


def _positive(value: Any, message: str) -> float:
    """``value`` as a float when it is a finite number > 0, else ValueError(message)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
            or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{message}, got {value!r}")
    return float(value)


def _check_logit_scale(scale: Any) -> float:
    if isinstance(scale, torch.Tensor):
        scale = scale.detach().cpu().item() if scale.numel() == 1 else scale
    return _positive(scale, "logit_scale must be a finite number > 0 (1 / tau of the AF loss)")


def _check_temperature(temperature: Any) -> float | None:
    if temperature is None:
        return None
    return _positive(temperature, "temperature must be None or a finite number > 0 (the "
                                  "confidence calibration)")


def _modality_encoders(encoders: Mapping[str, ModalityEncoder], text_encoder: nn.Module
                       ) -> dict[str, ModalityEncoder]:
    if not encoders:
        raise ValueError("encoders is empty: a bundle needs at least one modality encoder")
    out = {}
    for name, encoder in encoders.items():
        modality = parse_modality(name).value
        if modality == Modality.TEXT.value:
            if encoder is not text_encoder:
                raise ValueError("encoders['text'] differs from text_encoder; pass the text "
                                 "encoder once, as text_encoder")
            continue
        out[modality] = encoder
    return out


def _plan(*, encoders: Mapping[str, ModalityEncoder], fusion: nn.Module, fusion_config: Any,
          text_encoder: ModalityEncoder, label_names: Sequence[str],
          prompt_templates: Sequence[str], label_embeddings: Any, logit_scale: Any,
          preprocess_configs: Mapping[str, Any], provenance: Mapping[str, Any],
          sample_inputs: Mapping[str, torch.Tensor], temperature: Any = None) -> _Plan:
    mods = _modality_encoders(encoders, text_encoder)
    dims = {m: int(e.embed_dim) for m, e in mods.items()}
    dims["text"] = int(getattr(text_encoder, "embed_dim", 0))
    dim = int(torch.as_tensor(label_embeddings).shape[-1])
    if set(dims.values()) != {dim}:
        raise ValueError(f"embedding sizes differ: {dims}, label_embeddings D={dim}")
    fusion_cfg = _config_dict(fusion_config, "fusion_config")
    if int(fusion_cfg.get("dim", dim)) != dim:
        raise ValueError(f"fusion_config dim {fusion_cfg['dim']} != embedding dim {dim}")
    missing = sorted(set(mods) - set(preprocess_configs))
    if missing:
        raise ValueError(f"preprocess_configs lacks {missing}: the runtime cannot build "
                         "inputs for those encoders")
    preprocess = {m: build_config(m, preprocess_configs[m]).to_dict() for m in mods}
    missing = sorted(set(mods) - set(sample_inputs))
    if missing:
        raise ValueError(f"sample_inputs lacks {missing}: parity cannot be checked")
    tokenizer = getattr(text_encoder, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("text_encoder has no tokenizer: the runtime needs one to embed labels")
    text_pre = preprocess_configs.get(Modality.TEXT.value,
                                      {"prompt_templates": list(prompt_templates)})
    try:
        yaml.safe_dump(to_yaml_plain(dict(provenance)))
    except yaml.YAMLError as exc:
        raise ValueError(f"provenance must hold plain YAML values: {exc}") from exc
    return _Plan(
        dim=dim, encoders={m: _cpu_float(e) for m, e in mods.items()},
        encoder_configs={m: _config_dict(e.config, f"{m} encoder config")
                         for m, e in mods.items()},
        preprocess=preprocess,
        samples={m: _sample_check(m, sample_inputs[m], preprocess[m]) for m in mods},
        fusion=_cpu_float(fusion), fusion_config=fusion_cfg, text=_cpu_float(text_encoder),
        text_config=_config_dict(text_encoder.config, "text encoder config"),
        tokenizer=tokenizer,
        text_preprocess=build_config(Modality.TEXT.value, text_pre).to_dict(),
        label_names=list(label_names), prompt_templates=list(prompt_templates),
        label_embeddings=_check_labels(label_names, prompt_templates, label_embeddings, dim),
        logit_scale=_check_logit_scale(logit_scale), provenance=dict(provenance),
        temperature=_check_temperature(temperature))
