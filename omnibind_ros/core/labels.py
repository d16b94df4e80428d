"""The label set a node recognises: the bundle's, a list of names, or a text file of names.

New names are embedded with the bundle's text encoder and prompt templates
(:func:`omnibind_ros.core.backends.embed_labels`); the bundle's own labels use its cached
embeddings.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omnibind_ros.core.backends import embed_labels

__all__ = ["read_label_file", "resolve_labels"]


def read_label_file(path: str | Path) -> list[str]:
    """Label names of a text file: one per line, '#' starts a comment."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]


def resolve_labels(bundle: Any, backend: Any, names: Sequence[str] = (),
                   label_file: str | Path = "") -> tuple[tuple[str, ...], np.ndarray]:
    """The label set: ``names``, else ``label_file``'s, else the bundle's (embedded as cached)."""
    names = list(names or [])
    if not names and label_file:
        names = read_label_file(label_file)
    if not names:
        return bundle.label_names, bundle.label_embeddings
    return tuple(names), embed_labels(backend, names)
