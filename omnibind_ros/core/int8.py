"""INT8 for the engine builder: calibration batches, TensorRT's entropy calibrator and QDQ graphs.

Two ways to an INT8 engine, both from the same calibration samples (model inputs, i.e. sensor
data after the shared preprocessing; :mod:`omnibind_ros.sim.calibration` draws them from the
simulator):

* implicit quantisation (``tensorrt`` with ``IInt8EntropyCalibrator2``):
  :func:`entropy_calibrator` serves fixed-size batches from CUDA buffers; TensorRT picks each
  tensor's range by entropy and hands back a calibration cache, kept as ``<component>.calib``;
* explicit quantisation (``tensorrt_rtx``, whose networks are strongly typed and have no
  calibrator or INT8 flag): :func:`quantize_qdq` runs ONNX Runtime's entropy calibration and
  writes a QDQ graph (QuantizeLinear/DequantizeLinear pairs with symmetric int8 scales, the form
  TensorRT reads). The ranges are kept as ``<component>.calib.json`` (ONNX Runtime's calibration
  cache format) and the graph as ``<component>.qdq.onnx``.

Nothing here imports onnxruntime, tensorrt or torch at import time.
"""
from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omnibind_ros.core.backends.cuda_buffers import BufferPool

__all__ = ["CalibrationItem", "DEFAULT_CALIB_BATCH", "as_feeds", "entropy_calibrator",
           "fixed_batches", "name_nodes", "qdq_excluded_nodes", "quantize_qdq"]

#: One calibration batch: an array ``[batch, ...]`` for a single-input graph, or input name ->
#: array for graphs with several inputs.
CalibrationItem = np.ndarray | Mapping[str, np.ndarray]
#: Samples per batch TensorRT's calibrator is fed (its calibration profile is fixed at it).
DEFAULT_CALIB_BATCH = 8
#: Element-wise operators whose constant operand TensorRT refuses as a quantised constant.
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal"})


def as_feeds(item: CalibrationItem, inputs: Sequence[str],
             dtypes: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """One calibration item as ``{input name: contiguous array}`` for ``inputs``.

    Raises
    ------
    ValueError
        An array is given for a graph with several inputs, an input is missing, or the batch
        sizes of the inputs differ.
    """
    if isinstance(item, Mapping):
        missing = [n for n in inputs if n not in item]
        if missing:
            raise ValueError(f"calibration batch lacks input(s) {missing}; it has {sorted(item)}")
        feeds = {n: item[n] for n in inputs}
    else:
        if len(inputs) != 1:
            raise ValueError(f"a graph with inputs {list(inputs)} needs calibration batches as "
                             "{name: array} mappings")
        feeds = {inputs[0]: item}
    dtypes = dtypes or {}
    feeds = {n: np.ascontiguousarray(a, dtype=dtypes.get(n, np.asarray(a).dtype))
             for n, a in feeds.items()}
    if len({a.shape[0] for a in feeds.values()}) > 1:
        raise ValueError("calibration inputs of one batch have different batch sizes")
    return feeds


def fixed_batches(items: Iterable[CalibrationItem], inputs: Sequence[str], size: int,
                  dtypes: Mapping[str, str] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Re-chunk calibration items into batches of exactly ``size`` samples.

    TensorRT calibrates at one fixed shape, so samples left over at the end (fewer than
    ``size``) are dropped.
    """
    if size < 1:
        raise ValueError(f"calibration batch size must be >= 1, got {size}")
    pending: dict[str, list[np.ndarray]] = {n: [] for n in inputs}
    held = 0
    for item in items:
        feeds = as_feeds(item, inputs, dtypes)
        for n, a in feeds.items():
            pending[n].append(a)
        held += next(iter(feeds.values())).shape[0]
        while held >= size:
            joined = {n: np.concatenate(parts, axis=0) for n, parts in pending.items()}
            yield {n: np.ascontiguousarray(a[:size]) for n, a in joined.items()}
            pending = {n: [a[size:]] for n, a in joined.items()}
            held -= size


def entropy_calibrator(trt: Any, batches: Iterable[dict[str, np.ndarray]], batch_size: int,
                       cache: Path, *, reuse: bool, device: int = 0,
                       torch: Any | None = None) -> Any:
    """A ``trt.IInt8EntropyCalibrator2`` serving ``batches`` from CUDA buffers.

    Parameters
    ----------
    trt : the ``tensorrt`` module (the class is defined against its base class here).
    batches : ``{input name: array [batch_size, ...]}`` per batch (see :func:`fixed_batches`);
        iterated only when TensorRT asks for data, i.e. when there is no usable cache.
    batch_size : samples per batch (``get_batch_size``).
    cache : the calibration cache file (``<component>.calib``).
    reuse : hand TensorRT the cache when it exists (False: calibrate afresh; the caller removes
        a cache made from another ONNX file).
    device : CUDA device of the buffers.
    torch : torch module (default: imported when the first batch is served).

    The calibrator's ``served`` counts the batches handed out; ``cache_written`` tells whether
    TensorRT wrote a cache.
    """

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.served = 0
            self.cache_written = False
            self._batches: Iterator[dict[str, np.ndarray]] | None = None
            self._pool: BufferPool | None = None
            self._torch = torch

        def get_batch_size(self) -> int:
            return int(batch_size)

        def get_batch(self, names: Sequence[str], *args: Any) -> list[int] | None:
            if self._batches is None:
                self._batches = iter(batches)
            feeds = next(self._batches, None)
            if feeds is None:
                return None
            self.served += 1
            return [self._device_pointer(n, feeds[n]) for n in names]

        def _device_pointer(self, name: str, host: np.ndarray) -> int:
            if self._pool is None:
                if self._torch is None:
                    import torch as _torch

                    self._torch = _torch
                self._pool = BufferPool(self._torch, f"cuda:{device}", pin_memory=False)
            buf = self._pool.device(name, host.shape, host.dtype)  # allocated once, refilled
            buf.copy_(self._torch.from_numpy(host))
            return int(buf.data_ptr())

        def read_calibration_cache(self) -> bytes | None:
            if reuse and cache.is_file():
                return cache.read_bytes()
            return None

        def write_calibration_cache(self, data: Any) -> None:
            tmp = cache.with_name(f"{cache.name}.tmp-{os.getpid()}")
            tmp.write_bytes(bytes(data))
            os.replace(tmp, cache)
            self.cache_written = True

    return EntropyCalibrator()


def qdq_excluded_nodes(model: Any) -> list[str]:
    """Nodes of an ONNX ``model`` left in float: element-wise operators with a constant operand.

    Quantising e.g. the ``1`` of GELU's ``1 + erf(x)`` yields a quantised scalar constant, which
    TensorRT's Q/DQ optimiser rejects ("Quantized constant ... is only allowed before DQ").
    Every node needs a name (see :func:`name_nodes`): ONNX Runtime excludes nodes by name.
    """
    graph = model.graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node
            if n.op_type in _ELEMENTWISE and any(i in constants for i in n.input)]


def name_nodes(model: Any) -> Any:
    """Give every unnamed node of an ONNX ``model`` a unique name (in place; returned)."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


class _QuietAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # ORT's pre-processing advice
        return not str(record.msg).startswith("Please consider")


def quantize_qdq(onnx_path: Path, out_path: Path, table: Path,
                 batches: Callable[[], Iterable[dict[str, np.ndarray]]], *,
                 reuse_table: bool) -> int | None:
    """Write a QDQ (explicitly quantised, symmetric int8) copy of ``onnx_path`` to ``out_path``.

    Activation ranges come from ONNX Runtime's entropy calibration over ``batches()``;
    weights are quantised per channel. Biases stay float (TensorRT takes no int32 bias
    dequantisation) and so do element-wise operators with a constant operand
    (:func:`qdq_excluded_nodes`).

    Parameters
    ----------
    onnx_path, out_path : float graph in, QDQ graph out.
    table : calibration table (ONNX Runtime's cache JSON). With ``reuse_table`` and an existing
        file, its ranges are used and ``batches`` is never called (needs an onnxruntime whose
        ``quantize_static`` takes ``calibration_cache_path``; older ones calibrate again).
    batches : returns the calibration batches (``{input name: array}``).

    Returns
    -------
    Samples calibrated on, or None when the table's ranges were reused.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = 0
            self._it: Iterator[dict[str, np.ndarray]] | None = None

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._it is None:
                self._it = iter(batches())
            feeds = next(self._it, None)
            if feeds is not None:
                self.samples += next(iter(feeds.values())).shape[0]
            return feeds

    import onnx

    model = name_nodes(onnx.load(str(onnx_path)))
    takes_cache = "calibration_cache_path" in inspect.signature(quantize_static).parameters
    if not reuse_table or not takes_cache:
        table.unlink(missing_ok=True)
    reused = takes_cache and table.is_file()
    reader = Reader()
    options: dict[str, Any] = {"calibration_cache_path": str(table)} if takes_cache else {}
    tmp = out_path.with_name(f"{out_path.name}.tmp-{os.getpid()}")
    quiet = _QuietAdvice()
    logging.getLogger().addFilter(quiet)
    try:
        quantize_static(
            model, str(tmp), None if reused else reader,
            quant_format=QuantFormat.QDQ, calibrate_method=CalibrationMethod.Entropy,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
            nodes_to_exclude=qdq_excluded_nodes(model),
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                           "QuantizeBias": False},
            **options)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        if not reused and reader.samples == 0:  # ORT's own message is about histograms
            raise ValueError(f"no calibration samples for {onnx_path.name}") from exc
        raise
    finally:
        logging.getLogger().removeFilter(quiet)
    os.replace(tmp, out_path)
    return None if reused else reader.samples
