"""The inference-backend protocol and the input checks every backend shares.

A backend runs the graphs of one :class:`~omnibind_ros.core.bundle.ModelBundle`: per-modality
encoders, the fusion head and the text encoder. Inputs and outputs are numpy arrays whatever
runs underneath (ONNX Runtime, TensorRT, torch), so nodes and tools never touch a tensor type.
"""
from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from omnibind_ros.core.bundle import EncoderSpec, ModelBundle, TensorSpec
from omnibind_ros.core.errors import BackendUnavailableError, InvalidShapeError
from omnibind_ros.core.preprocess.text import label_prompt

__all__ = ["BackendBase", "InferenceBackend", "embed_labels", "import_runtime"]


@runtime_checkable
class InferenceBackend(Protocol):
    """What nodes and tools need from an inference runtime.

    Attributes
    ----------
    name : ``"onnxruntime"``, ``"tensorrt"`` or ``"torch"``.
    providers : where it runs, most preferred first (ONNX Runtime execution providers,
        ``("cuda:0",)``, ``("cpu",)``...).
    bundle : the bundle whose graphs it runs.
    """

    name: str
    bundle: ModelBundle

    @property
    def providers(self) -> tuple[str, ...]: ...

    def encode(self, modality: str, batch: np.ndarray) -> np.ndarray:
        """Preprocessed inputs ``[B, *sample_shape]`` -> unit embeddings float32 ``[B, D]``."""
        ...

    def fuse(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Tokens float32 ``[B, N, D]`` + mask bool ``[B, N]`` (True = live) -> ``[B, D]``."""
        ...

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """K texts -> unit embeddings float32 ``[K, D]`` (the bundle's tokenizer runs first)."""
        ...


def import_runtime(module: str, *, backend: str, hint: str) -> ModuleType:
    """Import an optional runtime, turning its absence into :class:`BackendUnavailableError`.

    Parameters
    ----------
    module : module to import (``"onnxruntime"``, ``"tensorrt"``, ``"torch"``).
    backend : backend name, for the message.
    hint : how to install it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # also a broken install whose shared libraries fail to load
        raise BackendUnavailableError(
            f"{module} is not installed (needed by the {backend} backend): {exc}. {hint}") from exc


class BackendBase:
    """Shape/dtype checks and tokenisation shared by the backends.

    Subclasses implement ``_run_encoder(modality, batch)``, ``_run_fusion(tokens, mask)`` and
    ``_run_text(input_ids, attention_mask)`` on validated, contiguous arrays.
    """

    name = "base"

    def __init__(self, bundle: ModelBundle, modalities: Sequence[str] | None = None) -> None:
        self.bundle = bundle
        unknown = sorted(set(modalities or ()) - set(bundle.modalities))
        if unknown:
            raise ValueError(f"bundle {bundle.root} has no encoder for {unknown}; it has "
                             f"{list(bundle.modalities)}")
        #: The modalities this backend instance serves (a subset saves memory per node).
        self.modalities: tuple[str, ...] = tuple(modalities or bundle.modalities)
        self._tokenizer: Any = None

    # -- public API ---------------------------------------------------------------------------

    def encode(self, modality: str, batch: np.ndarray) -> np.ndarray:
        """Preprocessed inputs ``[B, *sample_shape]`` -> unit embeddings float32 ``[B, D]``.

        Raises
        ------
        ValueError
            The backend has no encoder for ``modality``.
        InvalidShapeError
            ``batch`` is not ``[B, *sample_shape]`` with B >= 1.
        """
        spec = self._encoder_spec(modality)
        batch = _as_input(batch, spec.input, f"{spec.modality} batch")
        return self._run_encoder(spec.modality, batch)

    def fuse(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Fuse per-modality embeddings with the bundle's fusion head.

        Parameters
        ----------
        tokens : float32 ``[B, N, D]``; padded positions may hold anything (even NaN).
        mask : bool ``[B, N]``, True where the token is a live modality.

        Returns
        -------
        float32 ``[B, D]``, unit norm for every sample with at least one live token.
        """
        if self.bundle.fusion is None:
            raise ValueError(f"bundle {self.bundle.root} has no fusion head")
        token_spec, mask_spec = self.bundle.fusion.inputs
        tokens = _as_input(tokens, token_spec, "fusion tokens")
        mask = np.asarray(mask)
        if mask.shape != tokens.shape[:2]:
            raise InvalidShapeError(f"fusion mask must have shape {list(tokens.shape[:2])} "
                                    f"(tokens' [B, N]), got {list(mask.shape)}")
        return self._run_fusion(tokens, np.ascontiguousarray(mask, dtype=bool))

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """K texts -> unit embeddings float32 ``[K, D]``.

        Texts are tokenised as given (apply the bundle's text preprocessing first when they come
        from users); longer ones are truncated to the bundle's ``max_length`` tokens.
        """
        if self.bundle.text is None:
            raise ValueError(f"bundle {self.bundle.root} has no text encoder")
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            return np.zeros((0, self.bundle.dim), dtype=np.float32)
        input_ids, attention_mask = self.tokenizer(texts)
        return self._run_text(input_ids, attention_mask)

    @property
    def tokenizer(self) -> Any:
        """The bundle's :class:`~omnibind_ros.core.backends.tokenizer.BundleTokenizer`."""
        if self._tokenizer is None:
            from omnibind_ros.core.backends.tokenizer import BundleTokenizer

            if self.bundle.text is None:
                raise ValueError(f"bundle {self.bundle.root} has no text encoder")
            self._tokenizer = BundleTokenizer(self.bundle.text)
        return self._tokenizer

    def close(self) -> None:
        """Release sessions/engines (the backend is unusable afterwards)."""

    def __enter__(self) -> BackendBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(bundle={str(self.bundle.root)!r}, "
                f"modalities={list(self.modalities)}, providers={list(self.providers)})")

    @property
    def providers(self) -> tuple[str, ...]:
        raise NotImplementedError

    # -- to implement -------------------------------------------------------------------------

    def _run_encoder(self, modality: str, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _run_fusion(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _run_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- helpers ------------------------------------------------------------------------------

    def _encoder_spec(self, modality: str) -> EncoderSpec:
        key = getattr(modality, "value", modality)
        if key not in self.modalities:
            raise ValueError(f"this {self.name} backend has no encoder for modality {key!r}; "
                             f"it serves {list(self.modalities)}")
        return self.bundle.modalities[key]


def _as_input(array: np.ndarray, spec: TensorSpec, what: str) -> np.ndarray:
    """Check ``array`` against ``spec`` (fixed axes must match, B >= 1) and cast its dtype."""
    array = np.asarray(array)
    expected = spec.fixed_shape
    ok = array.ndim == len(expected) and all(
        e is None or a == e for a, e in zip(array.shape, expected, strict=True))
    if not ok or array.shape[0] < 1 or 0 in array.shape:
        want = ", ".join("B" if i == 0 else (str(e) if e is not None else "*")
                         for i, e in enumerate(expected))
        raise InvalidShapeError(f"{what} must have shape [{want}], got {list(array.shape)}")
    return np.ascontiguousarray(array, dtype=np.dtype(spec.dtype))


def embed_labels(backend: InferenceBackend, names: Sequence[str],
                 templates: Sequence[str] | None = None) -> np.ndarray:
    """Label embeddings as the exporter caches them: mean over prompt templates, normalised.

    Parameters
    ----------
    backend : any backend with a text encoder.
    names : C label names.
    templates : prompt templates with one ``{}`` (default: the bundle's).

    Returns
    -------
    float32 ``[C, D]`` unit vectors.
    """
    templates = list(templates if templates is not None else backend.bundle.prompt_templates)
    if not templates:
        templates = ["{}"]
    if not names:
        return np.zeros((0, backend.bundle.dim), dtype=np.float32)
    # the exporter's prompts: same template filling and article rule (core.preprocess.text)
    prompts = [label_prompt(t, name) for name in names for t in templates]
    emb = backend.embed_text(prompts).reshape(len(names), len(templates), -1).mean(axis=1)
    norm = np.linalg.norm(emb, axis=-1, keepdims=True)
    return (emb / np.maximum(norm, 1e-12)).astype(np.float32)
