"""What each TensorRT engine of a bundle is built from: the graphs, their profiles, precisions.

:class:`Component` is one ONNX graph of a bundle (:func:`components` lists them),
:func:`profile_shapes` gives the optimisation profile of each input, and
:func:`resolve_precision` / :func:`component_precision` turn a requested precision into the one
each graph is built at. :func:`import_tensorrt` picks the TensorRT module. Both the builder
(:mod:`omnibind_ros.core.engines`) and the engine cache (:mod:`omnibind_ros.core.engine_cache`)
work from these definitions; nothing here imports TensorRT or torch at import time.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnibind_ros.core.backends.base import import_runtime
from omnibind_ros.core.bundle import ModelBundle, TensorSpec
from omnibind_ros.core.errors import BackendUnavailableError

__all__ = ["DEFAULT_MAX_BATCH", "PRECISIONS", "TRT_MODULES", "Component", "Precision",
           "component_precision", "components", "import_tensorrt", "profile_shapes",
           "resolve_precision"]

TRT_MODULES = ("tensorrt", "tensorrt_rtx")
PRECISIONS = ("fp32", "fp16", "int8")
_TRT_HINT = ("TensorRT comes with JetPack on Jetson; on x86 `pip install tensorrt` (a CUDA build "
             "of torch runs the engines); `pip install tensorrt-rtx` builds engines without a GPU")
_FUSION, _TEXT = "fusion", "text"
DEFAULT_MAX_BATCH = 16
_CALIBRATOR, _QDQ = "entropy-calibrator", "qdq-entropy"

#: ``"fp32" | "fp16" | "int8"`` for every graph, or a mapping from a component key
#: (``"encoder:image"``, ``"text"``), a modality name or ``"default"`` to one of them.
Precision = str | Mapping[str, str]


@dataclass(frozen=True)
class Component:
    """One ONNX graph of a bundle and the inputs that get an optimisation profile."""

    key: str  # "encoder:<modality>", "fusion" or "text"
    onnx: Path
    onnx_rel: str
    inputs: tuple[TensorSpec, ...]
    fp16_allowed: bool

    @property
    def modality(self) -> str | None:
        """The modality of an encoder (None for fusion and text)."""
        return self.key.split(":", 1)[1] if self.key.startswith("encoder:") else None

    @property
    def stem(self) -> str:
        """File-name stem of the component's files in the cache folder."""
        return self.key.replace(":", "_")

    @property
    def engine_name(self) -> str:
        return self.stem + ".engine"


def import_tensorrt(module: str = "auto") -> Any:
    """Import ``tensorrt`` or ``tensorrt_rtx`` (``"auto"``: the first importable, in that order).

    Raises
    ------
    BackendUnavailableError
        The requested module (or, for ``"auto"``, both) cannot be imported.
    """
    if module not in ("auto", *TRT_MODULES):
        raise ValueError(f"module must be 'auto' or one of {TRT_MODULES}, not {module!r}")
    if module != "auto":
        return import_runtime(module, backend="tensorrt", hint=_TRT_HINT)
    try:
        return import_runtime("tensorrt", backend="tensorrt", hint=_TRT_HINT)
    except BackendUnavailableError as first:
        try:
            return import_runtime("tensorrt_rtx", backend="tensorrt", hint=_TRT_HINT)
        except BackendUnavailableError:
            raise first from None


def _module_name(trt: Any) -> str:
    name = str(getattr(trt, "__name__", "tensorrt")).split(".")[0]
    return name if name in TRT_MODULES else "tensorrt"


def components(bundle: ModelBundle, modalities: Sequence[str] | None = None,
               fusion: bool = True, text: bool = True) -> list[Component]:
    """The bundle's graphs: encoders (all, or ``modalities``), then fusion and text."""
    def rel(path: Path) -> str:
        return path.relative_to(bundle.root).as_posix()

    comps = [Component(f"encoder:{m}", s.file, rel(s.file), (s.input,), True)
             for m, s in bundle.modalities.items() if modalities is None or m in modalities]
    if fusion and bundle.fusion is not None:
        comps.append(Component(_FUSION, bundle.fusion.file, rel(bundle.fusion.file),
                               bundle.fusion.inputs, False))
    if text and bundle.text is not None:
        comps.append(Component(_TEXT, bundle.text.file, rel(bundle.text.file),
                               bundle.text.inputs, True))
    return comps


def _dim_range(axis: int, dim: int | str, bundle: ModelBundle, max_batch: int
               ) -> tuple[int, int, int]:
    if isinstance(dim, int):
        return dim, dim, dim
    if axis == 0:  # batch: optimised for 1, what a node sends
        return 1, 1, max_batch
    if dim == "sequence" and bundle.text is not None:
        longest = bundle.text.max_length
        return 1, min(16, longest), longest
    if dim == "tokens":  # AF head: optimised for every modality live, up to every slot
        live = max(1, len(bundle.modalities))
        slots = len((bundle.fusion.config if bundle.fusion else {}).get("slots", ()))
        return 1, live, max(live, slots)
    raise BackendUnavailableError(f"no TensorRT profile rule for dynamic axis {dim!r}")


def profile_shapes(spec: TensorSpec, bundle: ModelBundle, max_batch: int
                   ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``(min, opt, max)`` shapes of one input's optimisation profile."""
    ranges = [_dim_range(i, d, bundle, max_batch) for i, d in enumerate(spec.shape)]
    return tuple(tuple(r[k] for r in ranges) for k in range(3))  # type: ignore[return-value]


def _check_precision(value: str, where: str) -> str:
    if value not in PRECISIONS:
        raise ValueError(f"{where} must be one of {PRECISIONS}, not {value!r}")
    return value


def resolve_precision(precision: Precision | None = None, fp16: bool | None = None) -> Precision:
    """``precision``, or the older ``fp16=`` flag as one (``True``: fp16, ``False``: fp32).

    Raises
    ------
    ValueError
        Both are given and disagree, or a precision is not one of :data:`PRECISIONS`.
    """
    if fp16 is not None:
        legacy = "fp16" if fp16 else "fp32"
        if precision is not None and precision != legacy:
            raise ValueError(f"fp16={fp16} contradicts precision={precision!r}; pass precision")
        precision = legacy
    if precision is None:
        return "fp16"
    if isinstance(precision, str):
        return _check_precision(precision, "precision")
    for key, value in precision.items():
        _check_precision(value, f"precision[{key!r}]")
    return dict(precision)


def component_precision(precision: Precision, comp: Component) -> str:
    """The precision ``comp`` is requested at (before what the TensorRT module can do).

    A single precision applies to the encoders; ``"int8"`` leaves the text encoder at fp16. A
    mapping is looked up by component key, then modality; otherwise its ``"default"`` (fp16)
    applies as a single precision would. The fusion head is always fp32.
    """
    if comp.key == _FUSION:
        return "fp32"
    if isinstance(precision, str):
        wanted = _check_precision(precision, "precision")
        return "fp16" if comp.key == _TEXT and wanted == "int8" else wanted
    for key in (comp.key, comp.modality):
        if key is not None and key in precision:
            return _check_precision(precision[key], f"precision[{key!r}]")
    return component_precision(precision.get("default", "fp16"), comp)  # the single-value rule


def _int8_method(trt: Any) -> str:
    """Implicit quantisation (entropy calibrator) where the module has it, else a QDQ graph."""
    if (_module_name(trt) == "tensorrt" and hasattr(trt, "IInt8EntropyCalibrator2")
            and hasattr(trt.BuilderFlag, "INT8")):
        return _CALIBRATOR
    return _QDQ


def _on_dla(comp: Component, dla_core: int | None) -> bool:
    return dla_core is not None and comp.modality is not None
