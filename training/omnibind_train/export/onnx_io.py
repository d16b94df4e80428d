"""ONNX I/O of the exporter: the graphs' tensor names, the dynamo and TorchScript exporters, and
the check that a written graph's inputs and output have the axes the manifest promises.

Exporters: ``"dynamo"`` (``torch.export``; the supported path) needs an example batch >= 2 or it
silently specialises the batch to 1, hence the sample-batch check of :mod:`.plan`.
``"torchscript"`` (the legacy tracer, deprecated in torch) is several times faster on deep CNNs
and is what the tiny test bundles use. ``"auto"`` tries dynamo and falls back to the tracer with
a warning; the bundle records which exporter produced each graph, and the parity check
(:mod:`.parity`) guards both.
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

OPSET = 18
EXPORTERS = ("auto", "dynamo", "torchscript")
ENCODER_INPUT = "input"
# Not "embedding": the dynamo exporter names aten.embedding results that way (text models).
EMBEDDING_OUTPUT = "unit_embedding"
TEXT_INPUTS = ("input_ids", "attention_mask")
FUSION_INPUTS, FUSION_OUTPUT = ("tokens", "mask"), "fused"
_EXTERNAL_DATA_BYTES = 1_500_000_000  # protobuf's 2 GiB limit, with headroom
_log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The export produced something unusable (a graph the checker rejects, a batch axis that
    came out fixed, a text encoder without a tokenizer file)."""


# Graph wrappers: explicit signatures (ModalityEncoder.forward takes *args, which torch.export
# cannot name) and the exact modules the ONNX files contain.


class _ArrayGraph(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        # the wrapper takes the encoder's mode: the TorchScript exporter restores the wrapper's
        # mode afterwards, and a new module's (train) would switch the encoder's BatchNorm and
        # dropout to training for the parity check that follows
        self.training = encoder.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class _TextGraph(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.training = encoder.training  # as _ArrayGraph

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask)


def _param_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
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
    with quiet_export():
        torch.onnx.export(module, args, str(path), input_names=list(input_names),
                          output_names=list(output_names), dynamic_shapes=shapes, dynamo=True,
                          opset_version=opset, verbose=False,
                          external_data=_param_bytes(module) > _EXTERNAL_DATA_BYTES)


def _export_torchscript(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, *,
                        input_names: Sequence[str], output_names: Sequence[str],
                        dynamic_axes: Mapping[str, Mapping[int, str]], opset: int) -> None:
    axes = {n: dict(a) for n, a in dynamic_axes.items()}
    axes.update({n: {0: "batch"} for n in output_names})
    with quiet_export():
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


def _inline_external_data(path: Path) -> None:
    """Fold a small graph's ``<name>.onnx.data`` weights file back into the graph: one file
    per graph keeps the bundle simple (export_fusion_onnx leaves the exporter's default)."""
    import onnx

    data = path.with_name(path.name + ".data")
    if data.is_file() and data.stat().st_size < _EXTERNAL_DATA_BYTES:
        model = onnx.load(str(path))  # reads the external data
        onnx.save(model, str(path), save_as_external_data=False)
        data.unlink()
