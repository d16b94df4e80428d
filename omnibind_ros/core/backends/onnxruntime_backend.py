"""ONNX Runtime backend: the default everywhere (CPU, or CUDA / TensorRT execution providers).

Needs only ``onnxruntime`` (and ``tokenizers`` for text); never torch. One
``InferenceSession`` per graph is created up front, so the first message costs no more than
later ones and a broken graph fails at configure time rather than mid-run.

Two pinned GPU variants (``onnxruntime-gpu``) are backends of their own, so a node picks them
by name like any other backend:

* ``onnxruntime_cuda`` (:class:`OnnxRuntimeCudaBackend`): the CUDA execution provider on GPU
  ``device``;
* ``onnxruntime_tensorrt`` (:class:`OnnxRuntimeTensorRTBackend`): the TensorRT execution
  provider (CUDA, then CPU, for the nodes it does not take), FP16 optional, its engines cached
  under ``<engines_dir or bundle/engines>/<gpu>_sm<cc>_orttrt<onnxruntime version>/`` with one
  sub-folder per ONNX file keyed by its SHA-256 (the EP's own cache key ignores weights).

Unlike ``onnxruntime`` with ``providers="cuda"``, they never run on the CPU silently: a missing
execution provider, or one ORT drops when creating a session (CUDA/cuDNN/TensorRT libraries
that fail to load), is a :class:`BackendUnavailableError` naming it, which ``create_backend``'s
fallback and ``auto`` act on.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omnibind_ros.core.backends.base import BackendBase, import_runtime
from omnibind_ros.core.bundle import ENGINES_DIR, ModelBundle, TensorSpec
from omnibind_ros.core.errors import BackendUnavailableError, BundleCorruptError

__all__ = ["DEFAULT_PROVIDERS", "OnnxRuntimeBackend", "OnnxRuntimeCudaBackend",
           "OnnxRuntimeTensorRTBackend", "ort_trt_cache_dir", "resolve_providers"]

#: Preference order when no providers are given: CUDA when this onnxruntime build has it.
#: The TensorRT execution provider is only used on request: it compiles engines on first run
#: (minutes), which nobody expects from a default.
DEFAULT_PROVIDERS: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
            "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider"}


def resolve_providers(requested: Sequence[str] | str | None, available: Sequence[str]
                      ) -> list[str]:
    """Pick execution providers.

    Parameters
    ----------
    requested : provider names or aliases (``"cpu"``, ``"cuda"``, ``"tensorrt"``), or None
        for :data:`DEFAULT_PROVIDERS` filtered by availability.
    available : ``onnxruntime.get_available_providers()``.

    Raises
    ------
    BackendUnavailableError
        A requested provider is not in this onnxruntime build.
    """
    if requested is None:
        return [p for p in DEFAULT_PROVIDERS if p in available] or ["CPUExecutionProvider"]
    names = [requested] if isinstance(requested, str) else list(requested)
    names = [_ALIASES.get(n.lower(), n) for n in names]
    missing = [n for n in names if n not in available]
    if missing:
        raise BackendUnavailableError(
            f"onnxruntime execution provider(s) {missing} are not available in this "
            f"onnxruntime build (available: {list(available)}); install onnxruntime-gpu for "
            "CUDA/TensorRT")
    if "CPUExecutionProvider" not in names:
        names.append("CPUExecutionProvider")  # ORT places unsupported nodes on the CPU
    return names


class OnnxRuntimeBackend(BackendBase):
    """Run a bundle's ONNX graphs with ONNX Runtime.

    Parameters
    ----------
    bundle : a loaded :class:`~omnibind_ros.core.bundle.ModelBundle`.
    threads : intra-op threads per session (ORT's default is one per core, which starves the
        other nodes of a robot); inter-op parallelism is off.
    providers : execution providers (see :func:`resolve_providers`); default CUDA if this
        onnxruntime build has it, else CPU.
    modalities : encoders to create sessions for (default all in the bundle).
    fusion, text : create the fusion / text sessions (when the bundle has them).
    """

    name = "onnxruntime"

    def __init__(self, bundle: ModelBundle, *, threads: int = 2,
                 providers: Sequence[str] | str | None = None,
                 modalities: Sequence[str] | None = None, fusion: bool = True,
                 text: bool = True) -> None:
        super().__init__(bundle, modalities)
        self._ort = import_runtime("onnxruntime", backend=self.name,
                                   hint="pip install onnxruntime (or onnxruntime-gpu)")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self._provider_names = self._select_providers(providers,
                                                      list(self._ort.get_available_providers()))
        self._sessions: dict[str, Any] = {}
        self._feeds: dict[str, list[str]] = {}
        for modality in self.modalities:
            spec = bundle.modalities[modality]
            self._open(modality, spec.file, [spec.input])
        if fusion and bundle.fusion is not None:
            self._open("<fusion>", bundle.fusion.file, bundle.fusion.inputs)
        if text and bundle.text is not None:
            self._open("<text>", bundle.text.file, bundle.text.inputs)

    @property
    def providers(self) -> tuple[str, ...]:
        """Providers the sessions actually run on (ORT drops unusable ones)."""
        first = next(iter(self._sessions.values()), None)
        return tuple(first.get_providers()) if first is not None else tuple(self._provider_names)

    def close(self) -> None:
        self._sessions.clear()
        self._feeds.clear()

    # -- hooks for the pinned GPU variants ------------------------------------------------------

    def _select_providers(self, requested: Sequence[str] | str | None,
                          available: list[str]) -> list[str]:
        return resolve_providers(requested, available)

    def _provider_options(self, key: str, path: Path) -> list[dict[str, Any]] | None:
        """Per-provider options for the session of ``key`` (None: ORT's defaults)."""
        return None

    def _check_session(self, session: Any, path: Path) -> None:
        """Called on every new session (the GPU variants check where ORT placed it)."""

    def _session_failed(self, path: Path, exc: Exception) -> Exception:
        return BundleCorruptError(f"onnxruntime cannot load {path}: {exc}", path=path)

    def _open(self, key: str, path: Path, inputs: Sequence[TensorSpec]) -> None:
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only; ORT warns about unused initialisers
        if key == "<fusion>":
            # Its token count changes with every set of live sensors: ORT's per-shape memory
            # patterns and its CPU arena would keep a new high-water mark for each, and the
            # head is small enough that plain allocations cost nothing measurable.
            options.enable_mem_pattern = False
            options.enable_cpu_mem_arena = False
        provider_options = self._provider_options(key, path)
        extra = {} if provider_options is None else {"provider_options": provider_options}
        try:
            session = self._ort.InferenceSession(str(path), sess_options=options,
                                                 providers=self._provider_names, **extra)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise self._session_failed(path, exc) from exc
        self._check_session(session, path)
        graph_inputs = {i.name for i in session.get_inputs()}
        # An exporter may drop an input the graph never reads (e.g. a CLIP text tower ignores
        # attention_mask): feeding only what the graph declares keeps such bundles usable.
        feeds = [s.name for s in inputs if s.name in graph_inputs]
        if not feeds or graph_inputs - {s.name for s in inputs}:
            raise BundleCorruptError(
                f"{path}: graph inputs {sorted(graph_inputs)} do not match bundle.yaml's "
                f"{[s.name for s in inputs]}", path=path)
        self._sessions[key], self._feeds[key] = session, feeds

    def _run(self, key: str, arrays: Sequence[np.ndarray], names: Sequence[str]) -> np.ndarray:
        feeds = {n: a for n, a in zip(names, arrays, strict=True) if n in self._feeds[key]}
        return self._sessions[key].run(None, feeds)[0]

    def _run_encoder(self, modality: str, batch: np.ndarray) -> np.ndarray:
        return self._run(modality, [batch], [self.bundle.modalities[modality].input.name])

    def _run_fusion(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if "<fusion>" not in self._sessions:
            raise ValueError("this backend was created with fusion=False")
        return self._run("<fusion>", [tokens, mask], [s.name for s in self.bundle.fusion.inputs])

    def _run_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if "<text>" not in self._sessions:
            raise ValueError("this backend was created with text=False")
        return self._run("<text>", [input_ids, attention_mask],
                         [s.name for s in self.bundle.text.inputs])


# -- pinned GPU execution providers ----------------------------------------------------------

_CUDA, _TRT, _CPU = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"


class _GpuProviderBackend(OnnxRuntimeBackend):
    """ONNX Runtime pinned to one GPU execution provider (``_ep``); never silently on the CPU."""

    _ep = _CUDA

    def _init_gpu(self, bundle: ModelBundle, device: int, threads: int,
                  modalities: Sequence[str] | None, fusion: bool, text: bool) -> None:
        if device < 0:
            raise ValueError(f"device must be >= 0, got {device}")
        self.device = device
        super().__init__(bundle, threads=threads, providers=None, modalities=modalities,
                         fusion=fusion, text=text)

    def _wanted(self, available: list[str]) -> list[str]:
        return [self._ep]

    def _select_providers(self, requested: Sequence[str] | str | None,
                          available: list[str]) -> list[str]:
        try:
            return resolve_providers(self._wanted(available), available)
        except BackendUnavailableError as exc:
            raise BackendUnavailableError(f"the {self.name} backend needs {self._ep}: {exc}"
                                          ) from exc

    def _check_session(self, session: Any, path: Path) -> None:
        placed = list(session.get_providers())
        if self._ep not in placed:
            raise BackendUnavailableError(
                f"the {self.name} backend needs {self._ep}, but onnxruntime created the "
                f"session of {path.name} on {placed} (the provider failed to load: check the "
                "CUDA/cuDNN/TensorRT libraries onnxruntime-gpu was built against, the driver "
                "and CUDA_VISIBLE_DEVICES)")

    def _session_failed(self, path: Path, exc: Exception) -> Exception:
        # A GPU provider fails here for GPU reasons too (no device, out of memory); calling it
        # unavailable lets the fallback try the CPU, which reports a truly broken graph.
        return BackendUnavailableError(
            f"the {self.name} backend cannot create a session for {path}: {exc}")


class OnnxRuntimeCudaBackend(_GpuProviderBackend):
    """ONNX Runtime on the CUDA execution provider (``onnxruntime-gpu``).

    Parameters
    ----------
    bundle : a loaded :class:`~omnibind_ros.core.bundle.ModelBundle`.
    device : CUDA device index (``device_id``).
    threads, modalities, fusion, text : as :class:`OnnxRuntimeBackend`.

    Raises
    ------
    BackendUnavailableError
        This onnxruntime has no CUDA execution provider, or it fails to load.
    """

    name = "onnxruntime_cuda"
    _ep = _CUDA

    def __init__(self, bundle: ModelBundle, *, device: int = 0, threads: int = 2,
                 modalities: Sequence[str] | None = None, fusion: bool = True,
                 text: bool = True) -> None:
        self._init_gpu(bundle, device, threads, modalities, fusion, text)

    def _provider_options(self, key: str, path: Path) -> list[dict[str, Any]]:
        return [{"device_id": self.device} if p == _CUDA else {} for p in self._provider_names]


def ort_trt_cache_dir(bundle: ModelBundle, ort_version: str, *, device: int = 0,
                      gpu: tuple[str, str] | None = None,
                      engines_dir: str | Path | None = None) -> Path:
    """``<engines_dir or bundle/engines>/<gpu>_sm<cc>_orttrt<onnxruntime version>`` (not created).

    Keyed like :func:`~omnibind_ros.core.engine_cache.engine_cache_dir`: TensorRT engines are only
    valid for the GPU and TensorRT build (here: the onnxruntime-gpu release) that made them.
    """
    from omnibind_ros.core import engine_cache

    name, cap = engine_cache.gpu_identity(device) if gpu is None else gpu
    base = Path(engines_dir) if engines_dir is not None else bundle.root / ENGINES_DIR
    slug = engine_cache._slug  # noqa: SLF001 - the same folder naming as the TensorRT backend
    return base / f"{slug(name)}_sm{slug(cap)}_orttrt{slug(ort_version)}"


def _graph_inputs(path: Path) -> set[str]:
    """Input names of an ONNX graph (initialisers excluded), read without the weights."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initialisers = {i.name for i in graph.initializer}
    return {i.name for i in graph.input if i.name not in initialisers}


def _file_key(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"{path.stem}-{digest.hexdigest()[:16]}"


def _engine_folder(path: Path, fp16: bool, profiles: dict[str, str]) -> str:
    """``<stem>-<ONNX sha>-<fp16|fp32>-p<profile hash>``: one folder per engine build setting.

    The profile hash covers the ``trt_profile_*_shapes`` strings (batch limit, text length,
    fusion slots), so neither a change of precision nor of profile reuses an older engine.
    """
    text = "\n".join(f"{k}={v}" for k, v in sorted(profiles.items()))
    profile = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return f"{_file_key(path)}-{'fp16' if fp16 else 'fp32'}-p{profile}"


class OnnxRuntimeTensorRTBackend(_GpuProviderBackend):
    """ONNX Runtime on the TensorRT execution provider (then CUDA, then CPU).

    The first session of a graph compiles a TensorRT engine (minutes on a Jetson); later ones
    load it from the cache folder (:func:`ort_trt_cache_dir`, one sub-folder per ONNX file,
    SHA-256, precision and optimisation profiles, so neither a re-exported bundle nor a change
    of ``fp16`` or ``max_batch`` loads a stale engine).

    Parameters
    ----------
    bundle : a loaded :class:`~omnibind_ros.core.bundle.ModelBundle`.
    device : CUDA device index (``device_id``).
    fp16 : let TensorRT use FP16 kernels (``trt_fp16_enable``). The fusion head always stays
        FP32: fp16 turns its masked-score constant into -inf. (INT8 is the tensorrt backend's:
        the execution provider would need a calibration table or a QDQ graph per ONNX file,
        which ``omnibind-engines`` makes for TensorRT itself.)
    engines_dir : cache root instead of ``<bundle>/engines`` (a read-only bundle needs one).
    max_batch : largest batch of the optimisation profiles
        (``trt_profile_min/opt/max_shapes``, the same ranges as
        :func:`~omnibind_ros.core.engines.profile_shapes`: batch 1..max_batch optimised for 1,
        text up to its max length, fusion tokens up to every slot).
    threads, modalities, fusion, text : as :class:`OnnxRuntimeBackend`.

    Raises
    ------
    BackendUnavailableError
        This onnxruntime has no TensorRT execution provider, it fails to load (TensorRT
        libraries missing), or the cache folder cannot be created.
    """

    name = "onnxruntime_tensorrt"
    _ep = _TRT

    def __init__(self, bundle: ModelBundle, *, device: int = 0, fp16: bool = True,
                 engines_dir: str | Path | None = None, max_batch: int | None = None,
                 threads: int = 2, modalities: Sequence[str] | None = None,
                 fusion: bool = True, text: bool = True) -> None:
        from omnibind_ros.core.engines import DEFAULT_MAX_BATCH

        self.fp16 = bool(fp16)
        self.max_batch = DEFAULT_MAX_BATCH if max_batch is None else int(max_batch)
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._engines_dir = engines_dir
        self.cache_dir: Path | None = None
        self._init_gpu(bundle, device, threads, modalities, fusion, text)

    def _wanted(self, available: list[str]) -> list[str]:
        # the CUDA EP runs the nodes TensorRT does not take (rather than the CPU)
        return [_TRT, *([_CUDA] if _CUDA in available else [])]

    def _provider_options(self, key: str, path: Path) -> list[dict[str, Any]]:
        if self.cache_dir is None:
            self.cache_dir = ort_trt_cache_dir(self.bundle, str(self._ort.__version__),
                                               device=self.device,
                                               engines_dir=self._engines_dir)
        fp16 = self.fp16 and key != "<fusion>"
        profiles = self._profile_options(key, path)
        folder = self.cache_dir / _engine_folder(path, fp16, profiles)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendUnavailableError(
                f"the {self.name} backend cannot create its engine cache {folder}: {exc}; "
                "pass engines_dir= a writable folder") from exc
        trt = {"device_id": self.device,
               "trt_fp16_enable": fp16,
               "trt_engine_cache_enable": True,
               "trt_engine_cache_path": str(folder),
               "trt_timing_cache_enable": True,
               **profiles}
        by_name = {_TRT: trt, _CUDA: {"device_id": self.device}}
        return [by_name.get(p, {}) for p in self._provider_names]

    def _profile_options(self, key: str, path: Path) -> dict[str, str]:
        """``trt_profile_{min,opt,max}_shapes``: the ranges the TensorRT engine builder uses."""
        from omnibind_ros.core.engines import profile_shapes

        if key == "<fusion>":
            specs = self.bundle.fusion.inputs
        elif key == "<text>":
            specs = self.bundle.text.inputs
        else:
            specs = (self.bundle.modalities[key].input,)
        present = _graph_inputs(path)
        ranges = [(s.name, profile_shapes(s, self.bundle, self.max_batch)) for s in specs
                  if s.name in present]  # an input the exporter dropped gets no profile
        return {f"trt_profile_{kind}_shapes": ",".join(
                    f"{name}:{'x'.join(str(d) for d in shapes[k])}" for name, shapes in ranges)
                for k, kind in enumerate(("min", "opt", "max"))}
