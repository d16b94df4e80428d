"""torch_cuda backend: the torch modules on an NVIDIA GPU, tuned for one message at a time.

:class:`TorchCudaBackend` is the torch backend (:mod:`.torch_backend`: modules rebuilt from
``bundle.yaml`` configs and safetensors weights) with a set of options rather than a code path
per model family:

``precision``
    ``"fp16"`` (default), ``"bf16"`` or ``"fp32"``: encoders and the text encoder are cast to it,
    and so are their floating-point inputs on the GPU; outputs come back as float32 numpy. The
    fusion head always runs in float32: its attention masks padded slots with the score
    ``finfo(dtype).min``, and in float16 the AF head turns a sample without a live token into
    NaN instead of zeros (the head is small anyway: CUDA graphs, not precision, take its cost
    down). bf16's 8-bit mantissa is too coarse for some encoders: on real
    thermal and audio inputs the frozen EfficientNet trunk's features lose enough that the
    trained head's embeddings drift (minimum cosine to float32 over 8 test samples 0.69 and
    0.86, measured on the CPU), where fp16 stays near 0.999.
``autocast``
    (default False) mixed precision instead of a cast: weights stay float32 and
    ``torch.autocast`` runs convolutions and matrix products in ``precision`` and norms,
    softmax and reductions in float32. Closer to float32 than a cast, at the cost of casting
    the weights on every call.
``cuda_graphs``
    (default True) batch-1 latency is mostly kernel-launch overhead, so every component keeps
    one ``torch.cuda.CUDAGraph`` per input shape (:class:`GraphCache`). A shape is captured the
    second time it is seen (the first call runs eagerly and is cuDNN's benchmark run); the
    capture warms the component up on a side stream, then records it reading static input
    tensors and writing a static output; a later call copies its inputs into the static ones
    and replays the graph. At most ``max_graphs`` shapes per component are captured; further
    shapes run eagerly, as does a component whose capture failed (an operation that
    synchronises with the host, say), after one warning. One-off shapes (texts of a new token
    length) never cost a capture.
``channels_last``
    (default True) encoders that take images (``[B, C, H, W]``) run in NHWC memory format, the
    layout the tensor-core convolution kernels use.
``cudnn_benchmark``
    (default True) sets ``torch.backends.cudnn.benchmark`` (process-wide): cuDNN times its
    convolution algorithms once per shape and keeps the fastest.
``pin_memory``
    (default True) inputs are staged in page-locked host buffers (one per shape, kept) and
    copied to the GPU with ``non_blocking=True``; outputs come back through pinned buffers too,
    and are copied out of them before the call returns. A call that raises synchronises the
    stream before it returns, so no copy from a staging buffer is still in flight when the
    next call refills it.

Calls are serialised by a lock: the GPU runs one stream here anyway, and the static buffers of
a graph must not be shared by two threads at once. Each call runs with its device
(``torch.cuda.device``) current, so on ``cuda:N`` the streams, graph captures and memory pools
are that device's. ``device="cpu"`` is accepted for tests of the
precision logic only (``precision`` ``"fp32"``/``"bf16"``, ``cuda_graphs=False``). Without a
usable CUDA device the constructor raises :class:`BackendUnavailableError` saying why, so
``create_backend(..., fallback=True)`` and ``"auto"`` move on.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omnibind_ros.core.backends.base import import_runtime
from omnibind_ros.core.backends.torch_backend import ModuleBuilder, TorchBackend
from omnibind_ros.core.bundle import ModelBundle
from omnibind_ros.core.errors import BackendUnavailableError

__all__ = ["FUSION_KEY", "PRECISIONS", "CapturedGraph", "GraphCache", "TorchCudaBackend",
           "capture_cuda_graph", "cuda_unavailable_reason"]

_log = logging.getLogger(__name__)

#: ``precision`` option -> torch dtype name.
PRECISIONS: dict[str, str] = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
#: Module key of the fusion head (kept in float32 whatever the precision).
FUSION_KEY = "<fusion>"
_PINNED_BUFFERS = 32  # page-locked staging buffers kept (one per tensor shape and dtype)


def cuda_unavailable_reason(torch: Any, device: str = "cuda") -> str | None:
    """Why ``device`` cannot run CUDA work with this torch, or None when it can."""
    if torch.version.cuda is None:
        return (f"torch {torch.__version__} is built without CUDA (a CPU-only wheel); install "
                "a CUDA build of torch")
    if not torch.cuda.is_available():
        return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable CUDA "
                "device: no NVIDIA GPU, no driver, or CUDA_VISIBLE_DEVICES hides it")
    index = torch.device(device).index
    if index is not None and index >= torch.cuda.device_count():
        return (f"{device} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                "device(s)")
    return None


@dataclass
class CapturedGraph:
    """A recorded component: ``replay()`` reruns it on ``static_inputs`` into ``static_output``."""

    static_inputs: list[Any]
    static_output: Any
    replay: Callable[[], None]


#: ``capture(fn, example_inputs) -> CapturedGraph``; ``fn(*tensors) -> tensor`` on the GPU.
GraphCapture = Callable[[Callable[..., Any], Sequence[Any]], CapturedGraph]


def capture_cuda_graph(fn: Callable[..., Any], example_inputs: Sequence[Any], *,
                       warmup: int = 3) -> CapturedGraph:
    """Record ``fn`` as a ``torch.cuda.CUDAGraph`` reading static copies of ``example_inputs``.

    ``fn`` runs ``warmup`` times on a side stream first (lazy initialisation, cuDNN's benchmark
    and allocator warm-up must not happen during the capture), then once under capture. The
    graph keeps a private memory pool, so graphs can be replayed in any order.
    """
    import torch

    static_inputs = [t.clone() for t in example_inputs]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_output = fn(*static_inputs)
    return CapturedGraph(static_inputs, static_output, graph.replay)


@dataclass
class _Component:
    graphs: dict[tuple[Any, ...], CapturedGraph] = field(default_factory=dict)
    seen: set[tuple[Any, ...]] = field(default_factory=set)
    disabled: bool = False


class GraphCache:
    """CUDA graphs per (component, input shapes and dtypes), captured on second sight.

    Parameters
    ----------
    capture : records a graph (default :func:`capture_cuda_graph`; tests pass a fake).
    max_graphs : graphs kept per component; shapes beyond them run eagerly (no eviction: a
        capture costs far more than an eager call, so a workload cycling through many shapes
        must not re-capture).
    """

    def __init__(self, capture: GraphCapture | None = None, *, max_graphs: int = 8) -> None:
        if max_graphs < 0:
            raise ValueError(f"max_graphs must be >= 0, got {max_graphs}")
        self.capture: GraphCapture = capture or capture_cuda_graph
        self.max_graphs = max_graphs
        self._components: dict[str, _Component] = {}
        #: Calls served by a graph replay, by an eager run, and graphs captured, all components.
        self.stats = {"replays": 0, "eager": 0, "captures": 0, "capture_failures": 0}

    @staticmethod
    def key(inputs: Sequence[Any]) -> tuple[Any, ...]:
        """The cache key of a call: every input's shape and dtype."""
        return tuple((tuple(t.shape), str(t.dtype)) for t in inputs)

    def graphs(self, component: str) -> dict[tuple[Any, ...], CapturedGraph]:
        """The graphs captured for ``component``, by key."""
        return dict(self._components.get(component, _Component()).graphs)

    def run(self, component: str, fn: Callable[..., Any], inputs: Sequence[Any]) -> Any:
        """``fn(*inputs)``: replayed from a graph when one is (or can now be) captured.

        The result of a replay is the graph's static output: read it before the next call of
        the same component and shape.
        """
        entry = self._components.setdefault(component, _Component())
        key = self.key(inputs)
        graph = entry.graphs.get(key)
        if graph is None and self._should_capture(entry, key):
            graph = self._capture(component, entry, key, fn, inputs)
        if graph is None:
            entry.seen.add(key)
            self.stats["eager"] += 1
            return fn(*inputs)
        for static, new in zip(graph.static_inputs, inputs, strict=True):
            static.copy_(new, non_blocking=True)
        graph.replay()
        self.stats["replays"] += 1
        return graph.static_output

    def _should_capture(self, entry: _Component, key: tuple[Any, ...]) -> bool:
        return (not entry.disabled and key in entry.seen
                and len(entry.graphs) < self.max_graphs)

    def _capture(self, component: str, entry: _Component, key: tuple[Any, ...],
                 fn: Callable[..., Any], inputs: Sequence[Any]) -> CapturedGraph | None:
        try:
            graph = self.capture(fn, inputs)
        except Exception as exc:  # any capture error: this component stays eager from now on
            entry.disabled = True
            self.stats["capture_failures"] += 1
            _log.warning("CUDA graph capture of %s failed (%s: %s); it runs eagerly from now "
                         "on", component, type(exc).__name__, exc)
            return None
        entry.graphs[key] = graph
        self.stats["captures"] += 1
        return graph

    def clear(self) -> None:
        """Drop every graph (their memory pools are freed with them)."""
        self._components.clear()


class TorchCudaBackend(TorchBackend):
    """The torch backend on a CUDA GPU with reduced precision and CUDA graphs.

    Parameters
    ----------
    bundle : a bundle exported with torch weights.
    device : ``"cuda"`` or ``"cuda:N"``; ``"cpu"`` only for tests (fp32/bf16, no graphs).
    precision : ``"fp16"``, ``"bf16"`` or ``"fp32"`` for encoders and text (fusion: float32).
    autocast : mixed precision (``torch.autocast``) instead of casting modules and inputs.
    cuda_graphs : replay per-shape CUDA graphs (see :class:`GraphCache`).
    max_graphs : graphs kept per component; other shapes run eagerly.
    channels_last : NHWC memory format for encoders with ``[B, C, H, W]`` inputs.
    cudnn_benchmark : set ``torch.backends.cudnn.benchmark`` (process-wide).
    pin_memory : stage host<->GPU copies in page-locked buffers, copy with ``non_blocking``.
    threads : ``torch.set_num_threads`` for the CPU side (None leaves it alone).
    builder, modalities, fusion, text : as :class:`~.torch_backend.TorchBackend`.
    graph_capture : records one graph (default :func:`capture_cuda_graph`); for tests.

    Raises
    ------
    BackendUnavailableError
        torch has no CUDA or finds no GPU, ``device="cpu"`` with fp16 or CUDA graphs, or what
        the torch backend raises (no builder, no torch weights).
    ValueError
        An unknown ``precision``.
    """

    name = "torch_cuda"

    def __init__(self, bundle: ModelBundle, *, device: str = "cuda", precision: str = "fp16",
                 autocast: bool = False, cuda_graphs: bool = True, max_graphs: int = 8,
                 channels_last: bool = True, cudnn_benchmark: bool = True,
                 pin_memory: bool = True,
                 threads: int | None = 2, builder: ModuleBuilder | None = None,
                 modalities: Sequence[str] | None = None, fusion: bool = True,
                 text: bool = True, graph_capture: GraphCapture | None = None) -> None:
        if precision == "int8" or not isinstance(precision, str):
            # a TensorRT precision (or per-component mapping) a shared config may carry: this
            # backend cannot honour it, so auto / fallback move on instead of stopping here
            raise BackendUnavailableError(
                f"the torch_cuda backend runs fp16, bf16 or fp32, not {precision!r} (INT8 "
                "engines: backend tensorrt, built with omnibind-engines build --precision int8)")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        torch = import_runtime("torch", backend=self.name,
                               hint="pip install torch (a CUDA build, e.g. the cu12x wheels)")
        on_cuda = torch.device(device).type == "cuda"
        if on_cuda:
            reason = cuda_unavailable_reason(torch, device)
            if reason:
                raise BackendUnavailableError(f"the torch_cuda backend needs a CUDA GPU: "
                                              f"{reason}")
        elif precision == "fp16" or cuda_graphs:
            raise BackendUnavailableError(
                f"the torch_cuda backend runs on CUDA; device={device!r} is a test mode that "
                f"takes precision 'fp32' or 'bf16' and cuda_graphs=False (got precision "
                f"{precision!r}, cuda_graphs={cuda_graphs})")
        self._on_cuda = on_cuda
        self.precision = precision
        self.dtype = getattr(torch, PRECISIONS[precision])
        self.autocast = autocast and precision != "fp32"
        self.channels_last = channels_last
        self.pin_memory = pin_memory and on_cuda
        if on_cuda and cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        super().__init__(bundle, threads=threads, device=device, builder=builder,
                         modalities=modalities, fusion=fusion, text=text)
        if on_cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._nhwc = {m for m in self.modalities
                      if channels_last and len(bundle.modalities[m].sample_shape) == 3}
        for key, module in self._modules.items():
            if key != FUSION_KEY and not self.autocast:
                module.to(dtype=self.dtype)
            if key in self._nhwc:
                module.to(memory_format=torch.channels_last)
        self.graphs = GraphCache(graph_capture, max_graphs=max_graphs) if cuda_graphs else None
        self._lock = threading.Lock()
        self._pinned: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._forwards = {key: self._forward_fn(key) for key in self._modules}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(bundle={str(self.bundle.root)!r}, "
                f"device={str(self.device)!r}, precision={self.precision!r}, "
                f"autocast={self.autocast}, "
                f"cuda_graphs={self.graphs is not None}, modalities={list(self.modalities)})")

    def close(self) -> None:
        if self.graphs is not None:
            self.graphs.clear()
        self._pinned.clear()
        self._forwards.clear()
        super().close()

    def module_dtype(self, key: str) -> Any:
        """dtype of the floating-point parameters of module ``key`` (modality, ``"<fusion>"``,
        ``"<text>"``)."""
        params = [p for p in self._modules[key].parameters() if p.is_floating_point()]
        return params[0].dtype if params else None

    def _forward_fn(self, key: str) -> Callable[..., Any]:
        """The component as the GPU runs it: cast inputs, run, return float32."""
        torch = self._torch
        module = self._modules[key]
        fp32 = key == FUSION_KEY
        dtype = torch.float32 if fp32 or self.autocast else self.dtype
        nhwc = key in self._nhwc
        mixed = self.autocast and not fp32

        def forward(*tensors: Any) -> Any:
            args = []
            for t in tensors:
                if t.is_floating_point() and t.dtype != dtype:
                    t = t.to(dtype)
                if nhwc and t.dim() == 4:
                    t = t.contiguous(memory_format=torch.channels_last)
                args.append(t)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=mixed):
                out = module(*args)
            return out.float()

        return forward

    def _call(self, key: str, *arrays: np.ndarray) -> np.ndarray:
        torch = self._torch
        forward = self._forwards[key]
        with self._lock, torch.inference_mode(), self._device_context():
            try:
                inputs = [self._to_device(i, a) for i, a in enumerate(arrays)]
                if self.graphs is not None:
                    out = self.graphs.run(key, forward, inputs)
                else:
                    out = forward(*inputs)
                return self._to_host(out)  # synchronises the stream
            except BaseException:
                # copies from the staging buffers may still be in flight: wait for them
                # before the next call refills those buffers
                self._synchronize_after_error()
                raise

    def _device_context(self) -> Any:
        """``torch.cuda.device(self.device)`` on CUDA (streams, graph captures and memory pools
        of this device, not the current one), else nothing."""
        if not self._on_cuda:
            return contextlib.nullcontext()
        return self._torch.cuda.device(self.device)

    def _synchronize_after_error(self) -> None:
        if not self._on_cuda:
            return
        try:
            self._torch.cuda.current_stream(self.device).synchronize()
        except Exception as exc:  # a sticky CUDA error raises here too; the caller's stands
            _log.debug("stream synchronisation after a failed call failed: %s", exc)

    def _to_device(self, position: int, array: np.ndarray) -> Any:
        host = self._torch.from_numpy(array)
        if not self.pin_memory:
            return host.to(self.device)
        # one buffer per argument position: two inputs of one shape (token ids and attention
        # mask) must not share a buffer while the first one's copy may still be in flight
        staging = self._staging(("in", position, array.shape, array.dtype.str), host)
        staging.copy_(host)
        return staging.to(self.device, non_blocking=True)

    def _to_host(self, out: Any) -> np.ndarray:
        if not self.pin_memory:  # a copy even on the CPU: a graph's output is reused
            return out.to("cpu", copy=True).numpy()
        staging = self._staging(("out", tuple(out.shape), str(out.dtype)), out)
        staging.copy_(out, non_blocking=True)
        self._torch.cuda.current_stream(self.device).synchronize()
        return staging.numpy().copy()

    def _staging(self, key: tuple[Any, ...], like: Any) -> Any:
        """A page-locked host tensor shaped like ``like``, kept per shape (least recently used
        dropped beyond a few dozen)."""
        buf = self._pinned.get(key)
        if buf is None:
            buf = self._torch.empty(tuple(like.shape), dtype=like.dtype, device="cpu",
                                    pin_memory=True)
            self._pinned[key] = buf
            while len(self._pinned) > _PINNED_BUFFERS:
                self._pinned.popitem(last=False)
        else:
            self._pinned.move_to_end(key)
        return buf
