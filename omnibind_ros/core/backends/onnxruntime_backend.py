"""ONNX Runtime backend: the default everywhere (CPU, or CUDA / TensorRT execution providers).

Needs only ``onnxruntime`` (and ``tokenizers`` for text); never torch. One
``InferenceSession`` per graph is created up front, so the first message costs no more than
later ones and a broken graph fails at configure time rather than mid-run.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omnibind_ros.core.backends.base import BackendBase, import_runtime
from omnibind_ros.core.bundle import ModelBundle, TensorSpec
from omnibind_ros.core.errors import BackendUnavailableError, BundleCorruptError

__all__ = ["DEFAULT_PROVIDERS", "OnnxRuntimeBackend", "resolve_providers"]

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
        self._provider_names = resolve_providers(providers,
                                                 self._ort.get_available_providers())
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

    def _open(self, key: str, path: Path, inputs: Sequence[TensorSpec]) -> None:
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only; ORT warns about unused initialisers
        try:
            session = self._ort.InferenceSession(str(path), sess_options=options,
                                                 providers=self._provider_names)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise BundleCorruptError(f"onnxruntime cannot load {path}: {exc}", path=path) from exc
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
