"""Export trained models as a model bundle, check it against torch, build TensorRT engines.

:func:`export_bundle` writes the bundle described in :mod:`omnibind_ros.core.bundle`:

* one ONNX graph per modality encoder (trunk + head + L2 normalisation in one graph), input
  ``[batch, *sample_shape]`` with a dynamic batch and the fixed sample shape the modality's
  preprocessing config produces;
* the fusion head (:func:`~omnibind_train.models.fusion.export_fusion_onnx`): padded tokens
  ``[batch, tokens, D]`` + mask ``[batch, tokens]`` -> ``[batch, D]``;
* the text encoder (``input_ids`` + ``attention_mask`` ``[batch, sequence]``, both dynamic) and
  its tokenizer files, so the runtime embeds new labels without torch;
* the label set (names, prompt templates, cached ``[C, D]`` embeddings) and the logit scale the
  fusion head was trained with (``labels.logit_scale``: ``1 / tau`` of the AF loss, the
  multiplier of the label cosines before the runtime's softmax);
* optional safetensors weights for the runtime's torch fallback (``include_torch_weights``);
* ``bundle.yaml`` with configs, versions, provenance and the SHA-256 of every file.

Everything is written into a hidden staging directory next to ``out_dir``, validated (onnx
checker, :func:`~omnibind_ros.core.bundle.load_bundle`, ONNX Runtime vs torch within ``atol`` on
the real sample inputs, at batch B and at batch 1) and only then renamed into place: a reader
never sees half a bundle, and a failed export leaves the previous bundle untouched.

Exporters: ``"dynamo"`` (``torch.export``; the supported path) needs an example batch >= 2 or it
silently specialises the batch to 1, hence the sample-batch check. ``"torchscript"`` (the legacy
tracer, deprecated in torch) is several times faster on deep CNNs and is what the tiny test
bundles use. ``"auto"`` tries dynamo and falls back to the tracer with a warning; the bundle
records which exporter produced each graph, and the parity check guards both.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import logging
import math
import os
import platform
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from omnibind_ros.core.bundle import (
    BUNDLE_FILE,
    FORMAT_VERSION,
    ModelBundle,
    checksum_tree,
    dump_manifest,
    load_bundle,
    to_yaml_plain,
)
from omnibind_ros.core.modalities import Modality, parse_modality
from omnibind_ros.core.preprocess import build_config, build_preprocessor

from .models.build import build_torch_module
from .models.encoders import ModalityEncoder
from .models.fusion import FusionConfig, export_fusion_onnx

__all__ = ["EXPORTERS", "OPSET", "PARITY_ATOL", "ExportError", "ExportParityError",
           "build_tensorrt_engines", "build_torch_module", "export_bundle"]

OPSET = 18
PARITY_ATOL = 1e-4
EXPORTERS = ("auto", "dynamo", "torchscript")
ENCODER_INPUT = "input"
# Not "embedding": the dynamo exporter names aten.embedding results that way (text models).
EMBEDDING_OUTPUT = "unit_embedding"
TEXT_INPUTS = ("input_ids", "attention_mask")
FUSION_INPUTS, FUSION_OUTPUT = ("tokens", "mask"), "fused"
#: Files copied from the text encoder's tokenizer directory (weights never are).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json", "config.json",
                   "spiece.model", "sentencepiece.bpe.model")
_EXTERNAL_DATA_BYTES = 1_500_000_000  # protobuf's 2 GiB limit, with headroom
_log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The export produced something unusable (a graph the checker rejects, a batch axis that
    came out fixed, a text encoder without a tokenizer file)."""


class ExportParityError(ExportError):
    """ONNX Runtime disagrees with torch beyond the tolerance.

    Attributes
    ----------
    diffs : component -> max abs difference, for every component checked.
    failures : the components above ``tolerance``.
    tolerance : the max abs difference allowed.
    """

    def __init__(self, diffs: Mapping[str, float], tolerance: float, detail: str = "") -> None:
        self.diffs = dict(diffs)
        self.tolerance = tolerance
        self.failures = {k: v for k, v in self.diffs.items() if not v <= tolerance}
        worst = ", ".join(f"{k}: {v:.3g}" for k, v in self.failures.items())
        super().__init__(f"ONNX export parity check failed for {worst} (max abs difference to "
                         f"torch; tolerance {tolerance:g}){'; ' + detail if detail else ''}. "
                         "The exported graph does not compute what the torch module does; "
                         "nothing was written.")


# ---------------------------------------------------------------------------------------------
# Graph wrappers: explicit signatures (ModalityEncoder.forward takes *args, which torch.export
# cannot name) and the exact modules the ONNX files contain.


class _ArrayGraph(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class _TextGraph(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask)


# ---------------------------------------------------------------------------------------------
# Validated export plan


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


def _check_logit_scale(scale: Any) -> float:
    if isinstance(scale, torch.Tensor):
        scale = scale.detach().cpu().item() if scale.numel() == 1 else scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)) \
            or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"logit_scale must be a finite number > 0 (1 / tau of the AF loss), "
                         f"got {scale!r}")
    return float(scale)


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
          sample_inputs: Mapping[str, torch.Tensor]) -> _Plan:
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
        logit_scale=_check_logit_scale(logit_scale), provenance=dict(provenance))


# ---------------------------------------------------------------------------------------------
# ONNX export


def _param_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Exporter-friendly context: no warnings, no fused multi-head-attention kernel.

    The exporters warn about tracing, deprecations and shared axis names on every graph; the
    parity check is what tells whether a graph is right. In eval mode without grad,
    ``nn.MultiheadAttention`` takes a fused fast path (``aten::_native_multi_head_attention``)
    that the TorchScript exporter cannot translate; the plain path computes the same thing.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    # "torchvision is not installed. Skipping torchvision::nms" and friends, on every export
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        registration.setLevel(level)


def _export_dynamo(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, *,
                   input_names: Sequence[str], output_names: Sequence[str],
                   dynamic_axes: Mapping[str, Mapping[int, str]], opset: int) -> None:
    dims: dict[str, Any] = {}  # one Dim per axis name: inputs sharing "batch" share the size
    shapes = tuple({axis: dims.setdefault(name, torch.export.Dim(name))
                    for axis, name in dynamic_axes.get(n, {}).items()} for n in input_names)
    with _quiet_export():
        torch.onnx.export(module, args, str(path), input_names=list(input_names),
                          output_names=list(output_names), dynamic_shapes=shapes, dynamo=True,
                          opset_version=opset, verbose=False,
                          external_data=_param_bytes(module) > _EXTERNAL_DATA_BYTES)


def _export_torchscript(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, *,
                        input_names: Sequence[str], output_names: Sequence[str],
                        dynamic_axes: Mapping[str, Mapping[int, str]], opset: int) -> None:
    axes = {n: dict(a) for n, a in dynamic_axes.items()}
    axes.update({n: {0: "batch"} for n in output_names})
    with _quiet_export():
        torch.onnx.export(module, args, str(path), input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=axes, dynamo=False,
                          opset_version=opset, do_constant_folding=True)


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, *, exporter: str,
            opset: int, **names: Any) -> str:
    """Export with ``exporter``; returns the exporter that produced the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    used = _export_with(module, args, path, exporter=exporter, opset=opset, **names)
    _log.info("exported %s with the %s exporter in %.1f s", path.name, used,
              time.perf_counter() - start)
    return used


def _export_with(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, *,
                 exporter: str, opset: int, **names: Any) -> str:
    if exporter in ("auto", "dynamo"):
        try:
            _export_dynamo(module, args, path, opset=opset, **names)
            return "dynamo"
        except Exception as exc:  # torch.export raises many types; the message is what counts
            if exporter == "dynamo":
                raise ExportError(f"dynamo export of {path.name} failed: {exc}") from exc
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            warnings.warn(f"dynamo export of {path.name} failed ({type(exc).__name__}: "
                          f"{first}); falling back to the TorchScript exporter", stacklevel=3)
            _remove_partial(path)
    _export_torchscript(module, args, path, opset=opset, **names)
    return "torchscript"


def _remove_partial(path: Path) -> None:
    """Drop what a failed export may have left (the graph and its external-data file)."""
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".data").unlink(missing_ok=True)


def _value_shape(value: Any) -> list[int | str]:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def _verify_io(path: Path, inputs: Sequence[dict[str, Any]], output: dict[str, Any]) -> None:
    """The graph's I/O agrees with the manifest: fixed axes equal, dynamic axes symbolic.

    An output axis the exporter left symbolic although its size is known (the TorchScript
    exporter does this after a division) is written into the graph, so consumers such as
    TensorRT see ``[batch, D]``.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    values = {v.name: v for v in graph.input}
    if graph.output[0].name != output["name"]:
        raise ExportError(f"{path.name}: output is named {graph.output[0].name!r}, "
                          f"expected {output['name']!r}")
    present = [s for s in inputs if s["name"] in values]
    if not present:
        raise ExportError(f"{path.name}: none of the inputs {[s['name'] for s in inputs]} "
                          f"survived export (graph inputs: {list(values)})")
    for spec in present:
        _check_axes(path, spec, _value_shape(values[spec["name"]]))
    out_dims = graph.output[0].type.tensor_type.shape.dim
    _check_axes(path, output, _value_shape(graph.output[0]), output=True)
    patched = False
    for dim, want in zip(out_dims, output["shape"], strict=True):
        if isinstance(want, int) and not dim.HasField("dim_value"):
            dim.dim_value = want
            patched = True
    if patched:
        onnx.save(model, str(path))


def _check_axes(path: Path, spec: dict[str, Any], actual: list[int | str], *,
                output: bool = False) -> None:
    want = spec["shape"]
    bad = len(actual) != len(want)
    for a, w in zip(actual, want, strict=False):
        if isinstance(w, str) and isinstance(a, int) and a > 0:
            bad = True  # a dynamic axis came out fixed: the graph rejects other sizes
        if isinstance(w, int) and isinstance(a, int) and a != w:
            bad = True
        if isinstance(w, int) and isinstance(a, str) and not output:
            bad = True
    if bad:
        raise ExportError(f"{path.name}: {spec['name']} has shape {actual} in the graph, "
                          f"expected {want} (strings = dynamic axes)")


def _tensor(name: str, shape: Sequence[int | str], dtype: str) -> dict[str, Any]:
    return {"name": name, "shape": list(shape), "dtype": dtype}


def _save_torch(module: nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(module, str(path))


def _exporter_for(exporter: str | Mapping[str, str], component: str) -> str:
    if isinstance(exporter, str):
        return exporter
    return exporter.get(component, exporter.get("*", "auto"))


def _check_exporter(exporter: str | Mapping[str, str]) -> None:
    choices = [exporter] if isinstance(exporter, str) else list(exporter.values())
    bad = [c for c in choices if c not in EXPORTERS]
    if bad:
        raise ValueError(f"exporter must be one of {EXPORTERS} (or a mapping of component to "
                         f"one of them), got {bad}")


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
    """(dynamic N?, example N): AF and mean take any N, slot baselines exactly len(slots)."""
    kind = plan.fusion_config.get("kind", "af")
    if kind in ("af", "mean"):
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
            with _quiet_export():
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


def _inline_external_data(path: Path) -> None:
    """Fold a small graph's ``<name>.onnx.data`` weights file back into the graph: one file
    per graph keeps the bundle simple (export_fusion_onnx leaves the exporter's default)."""
    import onnx

    data = path.with_name(path.name + ".data")
    if data.is_file() and data.stat().st_size < _EXTERNAL_DATA_BYTES:
        model = onnx.load(str(path))  # reads the external data
        onnx.save(model, str(path), save_as_external_data=False)
        data.unlink()


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
    return {"file": "labels/labels.yaml", "embeddings": "labels/label_embeddings.npy",
            "count": len(plan.label_names), "logit_scale": plan.logit_scale}


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


# ---------------------------------------------------------------------------------------------
# Checks


def _check_onnx_files(tmp: Path) -> None:
    import onnx

    for path in sorted(tmp.rglob("*.onnx")):
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"onnx.checker rejects {path.relative_to(tmp)}: {exc}") from exc


def _max_diff(a: np.ndarray, b: torch.Tensor) -> float:
    ref = b.detach().cpu().float().numpy()
    if a.shape != ref.shape:
        return float("inf")
    return float(np.abs(a.astype(np.float32) - ref).max()) if a.size else 0.0


def _run_checked(component: str, call: Any, *args: Any, atol: float = PARITY_ATOL
                 ) -> np.ndarray:
    """Run the ONNX side; a graph that fails at a shape other than the traced one (a size
    baked in by the tracer) is a parity failure, reported as such."""
    try:
        return call(*args)
    except Exception as exc:  # onnxruntime raises its own exception types
        shapes = [f"{len(a)} texts" if isinstance(a, list) else list(np.shape(a))
                  for a in args if not isinstance(a, str)]
        raise ExportParityError({component: float("inf")}, atol,
                                f"ONNX Runtime failed on inputs {shapes}: {exc}") from exc


def _encoder_parity(plan: _Plan, backend: Any) -> dict[str, float]:
    diffs = {}
    for modality, encoder in plan.encoders.items():
        x = plan.samples[modality]
        ref = encoder(x)
        key = f"encoder:{modality}"
        full = _max_diff(_run_checked(key, backend.encode, modality, x.numpy()), ref)
        one = _max_diff(_run_checked(key, backend.encode, modality, x[:1].numpy()),
                        encoder(x[:1]))  # another batch size than the traced one
        diffs[key] = max(full, one)
    return diffs


def _fusion_parity(plan: _Plan, backend: Any) -> float:
    dynamic, n = _fusion_token_count(plan)
    tokens, mask = _fusion_example(plan.dim, n)
    cases = [(tokens, mask)]
    if dynamic:  # other token counts than the traced one, down to a single live sensor
        cases += [(tokens[:2, :2], mask[:2, :2]), (tokens[:1, :1], mask[:1, :1])]
    return max(_max_diff(_run_checked("fusion", backend.fuse, t.numpy(), m.numpy()),
                         plan.fusion(t, m)) for t, m in cases)


def _text_prompts(plan: _Plan) -> list[str]:
    prompts = [t.format(n) for n in plan.label_names[:3] for t in plan.prompt_templates]
    return prompts + ["a", "a long description of a small object lying on the floor in the "
                           "corner of a dimly lit room, seen from above"]


def _text_parity(plan: _Plan, backend: Any) -> float:
    prompts = _text_prompts(plan)
    batch = plan.tokenizer(prompts)
    ids, _ = backend.tokenizer(prompts)
    if ids.shape != tuple(batch["input_ids"].shape) or not np.array_equal(
            ids, batch["input_ids"].numpy()):
        raise ExportParityError({"text:tokenizer": float("inf")}, 0.0,
                                "the bundle's tokenizer.json tokenises differently from the "
                                "training tokenizer")
    ref = plan.text(batch["input_ids"], batch["attention_mask"])
    diff = _max_diff(_run_checked("text", backend.embed_text, prompts), ref)
    single = plan.tokenizer(prompts[:1])  # batch 1 at another sequence length
    one = _max_diff(_run_checked("text", backend.embed_text, prompts[:1]),
                    plan.text(single["input_ids"], single["attention_mask"]))
    return max(diff, one)


def _parity(plan: _Plan, bundle: ModelBundle, *, threads: int) -> dict[str, float]:
    from omnibind_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(bundle, threads=threads, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        diffs = _encoder_parity(plan, backend)
        diffs["fusion"] = _fusion_parity(plan, backend)
        diffs["text"] = _text_parity(plan, backend)
    backend.close()
    return diffs


def _torch_weights_parity(plan: _Plan, bundle: ModelBundle, *, threads: int) -> float:
    """The torch fallback rebuilds every module from bundle.yaml + safetensors: check it does."""
    from omnibind_ros.core.backends.torch_backend import TorchBackend

    previous = torch.get_num_threads()
    backend = TorchBackend(bundle, threads=threads)
    torch.set_num_threads(previous)  # TorchBackend sets it process-wide
    with torch.no_grad():
        diffs = [_max_diff(backend.encode(m, x.numpy()), plan.encoders[m](x))
                 for m, x in plan.samples.items()]
        tokens, mask = _fusion_example(plan.dim, _fusion_token_count(plan)[1])
        diffs.append(_max_diff(backend.fuse(tokens.numpy(), mask.numpy()),
                               plan.fusion(tokens, mask)))
        batch = plan.tokenizer(_text_prompts(plan))
        diffs.append(_max_diff(backend.embed_text(_text_prompts(plan)),
                               plan.text(batch["input_ids"], batch["attention_mask"])))
    backend.close()
    return max(diffs)


# ---------------------------------------------------------------------------------------------
# Public API


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
                  include_torch_weights: bool = True, threads: int = 1) -> Path:
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
                     provenance=provenance, sample_inputs=sample_inputs)
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


def build_tensorrt_engines(bundle_dir: str | Path, *, fp16: bool = True, max_batch: int = 16,
                           force: bool = False, device: int = 0,
                           engines_dir: str | Path | None = None) -> dict[str, Path]:
    """Build a TensorRT engine per ONNX graph of the bundle (cached per GPU + TensorRT version).

    Engines land in ``<bundle_dir>/engines/<gpu>_trt<version>/`` (or ``engines_dir``); a cached
    engine is reused while its ONNX checksum and precision match. See
    :func:`omnibind_ros.core.backends.tensorrt_backend.build_engines`.

    Returns
    -------
    component (``"encoder:<modality>"``, ``"fusion"``, ``"text"``) -> engine path.

    Raises
    ------
    BackendUnavailableError
        TensorRT is not installed (it cannot be installed from PyPI alone), or a graph fails to
        build.
    """
    from omnibind_ros.core.backends.tensorrt_backend import build_engines

    bundle = load_bundle(bundle_dir)
    return build_engines(bundle, fp16=fp16, max_batch=max_batch, force=force, device=device,
                         engines_dir=engines_dir)
