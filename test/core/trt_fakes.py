"""Fakes of the parts of TensorRT and torch.cuda the engine builder and the tensorrt backend use.

Neither ``tensorrt`` nor a CUDA torch can run here, so the tests check what is asked of them:

* :func:`fake_trt` builds "engines" that are JSON naming the ONNX file they were parsed from and
  records every build (network, config); with ``BuilderFlag.INT8`` and a calibrator it plays
  TensorRT's calibration protocol (read the cache; if none, ``get_batch`` until None, then
  ``write_calibration_cache``). Its ``Runtime`` deserialises them into engines that execute the
  ONNX file with ONNX Runtime on whatever memory the tensor addresses point at.
* :class:`FakeTorch` is a torch namespace whose "CUDA" tensors are numpy arrays in host memory
  (so a device pointer is a real address), recording allocations and copies. Its streams are
  asynchronous the way CUDA's are: a ``non_blocking`` copy to or from a CUDA tensor and an
  engine's ``execute_async_v3`` are queued on the stream and happen only at its
  ``synchronize()`` (a blocking copy waits for the stream), and reading a host tensor
  (``numpy()``) while queued work still copies into or out of it fails - so a missing or
  misplaced synchronisation shows up as an assertion, not as a pass.
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import math
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


class _Flag:
    EXPLICIT_BATCH = 0


class _Layer:
    def __init__(self, name: str, op: str) -> None:
        self.name, self.type = name, op


class _Network:
    def __init__(self) -> None:
        self.inputs: list[types.SimpleNamespace] = []
        self.layers: list[_Layer] = []
        self.source = ""

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> types.SimpleNamespace:
        return self.inputs[i]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, i: int) -> _Layer:
        return self.layers[i]


class _Parser:
    def __init__(self, network: _Network, logger: object) -> None:
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path: str) -> bool:
        import onnx

        graph = onnx.load(path, load_external_data=False).graph
        inits = {i.name for i in graph.initializer}
        self.network.inputs = [types.SimpleNamespace(name=i.name) for i in graph.input
                               if i.name not in inits]
        self.network.layers = [_Layer(n.name or f"{n.op_type}_{k}", n.op_type)
                               for k, n in enumerate(graph.node)]
        self.network.source = path
        return True


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)

    def serialize(self) -> bytes:
        return self.data + b"+"


class _Config:
    def __init__(self) -> None:
        self.flags: set[str] = set()
        self.profiles: list[_Profile] = []
        self.timing_cache: _TimingCache | None = None
        self.workspace = 0
        self.int8_calibrator: Any = None
        self.calibration_profile: _Profile | None = None
        self.default_device_type = "gpu"
        self.DLA_core = -1

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.workspace = size

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        return _TimingCache(data)

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile: _Profile) -> bool:
        self.calibration_profile = profile
        return True

    def can_run_on_DLA(self, layer: _Layer) -> bool:  # noqa: N802 - TensorRT's name
        return layer.type in ("Conv", "MatMul", "Flatten", "Relu", "Clip")


class _Calibrator:
    """TensorRT's ``IInt8EntropyCalibrator2`` base: its ``__init__`` must be called."""

    def __init__(self) -> None:
        self.base_initialised = True


def fake_trt(name: str = "tensorrt", version: str = "10.3.0", fp16: bool = True,
             int8: bool = True, dla_cores: int = 2) -> types.ModuleType:
    """A module with the part of TensorRT's builder API that build_engines uses; records builds.

    ``trt.builds``: (network, config) per build; ``trt.calibrations``: per INT8 build, the
    batches (input name -> array read through the device pointers) TensorRT was served, or
    ``"cache"`` when it took the calibration cache instead.
    """
    trt = types.ModuleType(name)
    trt.__version__ = version
    trt.builds = []
    trt.calibrations = []

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    class Builder:
        num_DLA_cores = dla_cores

        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int) -> _Network:
            return _Network()

        def create_builder_config(self) -> _Config:
            return _Config()

        def create_optimization_profile(self) -> _Profile:
            return _Profile()

        def build_serialized_network(self, network: _Network, config: _Config) -> bytes:
            trt.builds.append((network, config))
            if "int8" in config.flags and config.int8_calibrator is not None:
                trt.calibrations.append(_calibrate(config))
            return json.dumps({"onnx": network.source, "build": len(trt.builds)}).encode()

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, _Parser
    trt.NetworkDefinitionCreationFlag = _Flag
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    flags = {"TF32": "tf32", "GPU_FALLBACK": "gpu_fallback"}
    if fp16:
        flags["FP16"] = "fp16"
    if int8:
        flags["INT8"] = "int8"
        trt.IInt8EntropyCalibrator2 = _Calibrator
    trt.BuilderFlag = types.SimpleNamespace(**flags)
    trt.DeviceType = types.SimpleNamespace(GPU="gpu", DLA="dla")
    _add_runtime(trt)
    return trt


def _calibrate(config: _Config) -> Any:
    calibrator = config.int8_calibrator
    assert getattr(calibrator, "base_initialised", False), "base __init__ not called"
    cached = calibrator.read_calibration_cache()
    if cached:
        return "cache"
    profile = config.calibration_profile
    assert profile is not None, "INT8 calibration of a dynamic network needs a profile"
    names = sorted(profile.shapes)
    size = calibrator.get_batch_size()
    served = []
    while (pointers := calibrator.get_batch(names)) is not None:
        batch = {}
        for n, ptr in zip(names, pointers, strict=True):
            shape = profile.shapes[n][1]
            assert shape[0] == size
            batch[n] = _read(ptr, shape, np.float32).copy()
        served.append(batch)
    calibrator.write_calibration_cache(f"calibration-table:{len(served)}".encode())
    return served


def _read(pointer: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """The array at a host address (the fake "device" memory is host memory)."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    raw = (ctypes.c_char * size).from_address(int(pointer))
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


# -- runtime -------------------------------------------------------------------------------


def _add_runtime(trt: types.ModuleType) -> None:
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.nptype = lambda dtype: dtype
    trt.runtimes = []

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.DLA_core = -1
            trt.runtimes.append(self)

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
            try:
                return FakeEngine(json.loads(data)["onnx"])
            except (ValueError, KeyError):
                return None

    trt.Runtime = Runtime


class FakeEngine:
    """Runs the ONNX file with ONNX Runtime; tensors live at the addresses set on the context."""

    def __init__(self, onnx_path: str) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        self.names = [i.name for i in ins] + [o.name for o in outs]
        self.modes = {**{i.name: "input" for i in ins}, **{o.name: "output" for o in outs}}
        dtypes = {"tensor(float)": np.float32, "tensor(int64)": np.int64,
                  "tensor(bool)": np.bool_}
        self.dtypes = {t.name: np.dtype(dtypes[t.type]) for t in (*ins, *outs)}
        self.shapes = {t.name: t.shape for t in (*ins, *outs)}
        self.contexts: list[FakeContext] = []

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return self.modes[name]

    def get_tensor_dtype(self, name: str) -> np.dtype:
        return self.dtypes[name]

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        dims = [d if isinstance(d, int) else None for d in self.shapes[name]]
        lo = tuple(1 if d is None else d for d in dims)
        hi = tuple(8 if d is None else d for d in dims)
        return [lo, lo, hi]

    def create_execution_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.executions = 0

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.input_shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.input_shapes:
            return self.input_shapes[name]
        batch = next(iter(self.input_shapes.values()))[0]
        return tuple(batch if not isinstance(d, int) else d for d in self.engine.shapes[name])

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream: int) -> bool:
        """Queue the run on the stream of handle ``stream`` (it happens at synchronize)."""
        queue = _STREAMS.get(int(stream))
        assert queue is not None, f"execute_async_v3 on unknown CUDA stream {stream}"
        shapes, addresses = dict(self.input_shapes), dict(self.addresses)

        def run() -> None:
            feeds = {n: _read(addresses[n], s, self.engine.dtypes[n]) for n, s in shapes.items()}
            outputs = self.engine.session.run(None, feeds)
            for out, value in zip(self.engine.session.get_outputs(), outputs, strict=True):
                target = _read(addresses[out.name], value.shape, self.engine.dtypes[out.name])
                target[...] = value  # frombuffer of a ctypes array is writable
            self.executions += 1

        queue.enqueue(run, ())
        return True


# -- streams -------------------------------------------------------------------------------

#: Live fake streams by handle (``cuda_stream``), so an engine finds the stream it is given.
_STREAMS: weakref.WeakValueDictionary[int, FakeStream] = weakref.WeakValueDictionary()
_HANDLES = itertools.count(1)


class FakeStream:
    """A CUDA stream: queued work runs in order at :meth:`synchronize` (or a blocking copy)."""

    def __init__(self, torch: FakeTorch, device: Any = None) -> None:
        self._t = torch
        self.cuda_stream = next(_HANDLES)
        self.pending: list[tuple[Callable[[], None], tuple[np.ndarray, ...]]] = []
        _STREAMS[self.cuda_stream] = self
        torch.streams.append(weakref.ref(self))

    def enqueue(self, work: Callable[[], None], touches: tuple[np.ndarray, ...]) -> None:
        """Queue ``work``; ``touches`` are the host arrays it reads or writes."""
        self.pending.append((work, touches))

    def flush(self) -> None:
        """Run the queued work (what the host waiting for the stream observes)."""
        while self.pending:
            work, _ = self.pending.pop(0)
            work()

    def synchronize(self) -> None:
        self._t.synchronized += 1
        self.flush()


# -- torch ---------------------------------------------------------------------------------


class FakeTensor:
    """A torch tensor backed by a numpy array (``device`` "cuda:*" is host memory too)."""

    def __init__(self, torch: FakeTorch, array: np.ndarray, device: str = "cpu",
                 pinned: bool = False) -> None:
        self._t, self.array, self.device, self.pinned = torch, array, device, pinned

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def numel(self) -> int:
        return int(self.array.size)

    def __getitem__(self, index: Any) -> FakeTensor:
        return FakeTensor(self._t, self.array[index], self.device, self.pinned)

    def view(self, shape: tuple[int, ...]) -> FakeTensor:
        view = self.array.view()
        view.shape = tuple(shape)  # raises instead of copying, like torch's view
        return FakeTensor(self._t, view, self.device, self.pinned)

    def copy_(self, src: FakeTensor, non_blocking: bool = False) -> FakeTensor:
        """A copy on the current stream: queued when ``non_blocking`` and a CUDA tensor is
        involved, else done once the stream's earlier work is (as CUDA orders them)."""
        self._t.copies.append({"src": src.device, "dst": self.device,
                               "non_blocking": non_blocking,
                               "pinned": src.pinned or self.pinned})
        dst, source = self.array, src.array

        def copy() -> None:
            np.copyto(dst, source.reshape(dst.shape))

        if self.device == "cpu" and src.device == "cpu":
            copy()
            return self
        stream = self._t.current_stream
        host = tuple(t.array for t in (self, src) if t.device == "cpu")
        stream.enqueue(copy, host)
        if not non_blocking:
            stream.flush()
        return self

    def data_ptr(self) -> int:
        return int(self.array.ctypes.data)

    def numpy(self) -> np.ndarray:
        """The host array; fails while queued stream work still copies into or out of it."""
        assert self.device == "cpu", "numpy() of a CUDA tensor"
        busy = [a for stream in self._t.live_streams() for _, touched in stream.pending
                for a in touched if np.may_share_memory(a, self.array)]
        assert not busy, ("host tensor read while an asynchronous copy into or out of it is "
                          "still queued (stream not synchronised)")
        return self.array


class FakeTorch(types.ModuleType):
    """``torch`` with the CUDA calls the backend and the calibrator make."""

    float32, float16 = np.dtype("float32"), np.dtype("float16")
    int64, int32, int8, uint8 = (np.dtype(t) for t in ("int64", "int32", "int8", "uint8"))
    bool = np.dtype("bool")

    def __init__(self) -> None:
        super().__init__("torch")
        self.allocations: list[dict[str, Any]] = []
        self.copies: list[dict[str, Any]] = []
        self.synchronized = 0
        self.streams: list[weakref.ref[FakeStream]] = []
        self.default_stream = FakeStream(self)
        self.current_stream = self.default_stream
        fake = self

        @contextlib.contextmanager
        def stream(s: FakeStream) -> Iterator[FakeStream]:
            previous, fake.current_stream = fake.current_stream, s
            try:
                yield s
            finally:
                fake.current_stream = previous

        def synchronize(device: Any = None) -> None:
            for s in fake.live_streams():
                s.flush()

        self.cuda = types.SimpleNamespace(
            is_available=lambda: True, Stream=lambda device=None: FakeStream(fake, device),
            device=lambda device: contextlib.nullcontext(), stream=stream,
            current_stream=lambda device=None: fake.current_stream, synchronize=synchronize)

    def live_streams(self) -> list[FakeStream]:
        """The streams made so far that still exist."""
        return [s for ref in self.streams if (s := ref()) is not None]

    def device(self, kind: str, index: int = 0) -> str:
        return f"{kind}:{index}"

    def empty(self, shape: tuple[int, ...], dtype: Any = None, device: Any = None,
              pin_memory: bool = False) -> FakeTensor:
        where = "cpu" if device is None else str(device)
        self.allocations.append({"shape": tuple(shape), "device": where, "pinned": pin_memory})
        return FakeTensor(self, np.empty(shape, dtype=dtype or np.float32), where, pin_memory)

    def from_numpy(self, array: np.ndarray) -> FakeTensor:
        return FakeTensor(self, array)

    def device_allocations(self) -> Iterator[dict[str, Any]]:
        return (a for a in self.allocations if a["device"] != "cpu")
