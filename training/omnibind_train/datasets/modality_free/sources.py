"""What the modality-free builder needs from a source data set, and how it names one.

A source is any object with ``modality``, ``label_names``, ``labels`` and ``len()`` (and
``source[i] -> (raw sample, label index)`` when a captioner describes raw samples): every
reader of :mod:`omnibind_train.datasets` is one. Sources are passed as ``{key: reader}``; the key
(e.g. ``"imagenet"``, ``"esc50"``: the registry names of :data:`omnibind_train.datasets.READERS`
are a good choice) is how the label map and the index refer to the data set.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from omnibind_ros.core.modalities import ALL_MODALITIES, Modality

__all__ = ["MODALITY_ORDER", "SOURCE_MODALITIES", "LabelledSource", "check_sources",
           "label_fingerprint", "label_keys", "readable_label", "source_summary"]

#: Canonical order of modalities in an item (the core registry's order).
MODALITY_ORDER: tuple[str, ...] = tuple(m.value for m in ALL_MODALITIES)
#: Modalities a source data set can hold (text comes from the label map, not from a data set).
SOURCE_MODALITIES: tuple[str, ...] = tuple(m for m in MODALITY_ORDER if m != Modality.TEXT.value)


@runtime_checkable
class LabelledSource(Protocol):
    """The part of a :class:`~omnibind_train.datasets.DatasetReader` the builder uses."""

    modality: str
    label_names: Sequence[str]

    @property
    def labels(self) -> np.ndarray:
        """int ``[len]`` label index of every sample."""
        ...

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[Any, int]: ...


_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def readable_label(name: str) -> str:
    """A label name as words: ``"car_horn"`` -> ``"car horn"``, ``"Faces_easy"`` -> ``"faces
    easy"``, ``"BACKGROUND_Google"`` -> ``"background google"`` (underscores, hyphens between
    words and camel case split; lower case; whitespace collapsed)."""
    text = _CAMEL.sub(" ", str(name)).replace("_", " ")
    text = re.sub(r"(?<=\w)-(?=\w)", " ", text)
    return " ".join(text.lower().split())


def label_keys(src: LabelledSource) -> tuple[str, ...]:
    """How the label map and the index name each label of ``src``: its label name, made unique
    where the data set repeats a name (ImageNet-1K's first synonyms hold "crane" and "maillot"
    twice) by a suffix: the synset id when the reader has ``wnids`` (``"crane [n02012849]"``),
    else the label index (``"crane [#134]"``)."""
    names = [str(n) for n in src.label_names]
    wnids = getattr(src, "wnids", None)
    if wnids is not None and len(wnids) != len(names):
        wnids = None
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    return tuple(n if seen[n] == 1 else f"{n} [{wnids[k] if wnids is not None else f'#{k}'}]"
                 for k, n in enumerate(names))


def label_fingerprint(label_names: Sequence[str]) -> str:
    """sha1 of the label names in order (one per line): a map or an index written for one list of
    names is stale for any other."""
    return hashlib.sha1("\n".join(str(n) for n in label_names).encode("utf-8")).hexdigest()


def check_sources(sources: Mapping[str, LabelledSource]) -> dict[str, LabelledSource]:
    """Validate ``{key: source}``: non-empty string keys, known non-text modalities, label
    arrays within the label names. Returns a plain dict in the given order."""
    if not sources:
        raise ValueError("no source data sets given")
    out: dict[str, LabelledSource] = {}
    for key, src in sources.items():
        if not isinstance(key, str) or not key.strip() or key != key.strip():
            raise ValueError(f"source keys must be non-empty names without surrounding spaces, "
                             f"got {key!r}")
        modality = str(getattr(src, "modality", ""))
        if modality not in SOURCE_MODALITIES:
            raise ValueError(f"source {key!r}: modality {modality!r} is not one of "
                             f"{list(SOURCE_MODALITIES)}")
        names = label_keys(src)
        if len(set(names)) != len(names):
            raise ValueError(f"source {key!r}: label names cannot be told apart: {names}")
        labels = np.asarray(src.labels)
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise ValueError(f"source {key!r}: label indices outside 0..{len(names) - 1}")
        out[key] = src
    return out


def source_summary(src: LabelledSource) -> dict[str, Any]:
    """Provenance of one source for the index header: modality, reader, size, label fingerprint,
    and the reader's root and selection where it has them."""
    summary: dict[str, Any] = {
        "modality": str(src.modality),
        "reader": type(src).__name__,
        "num_samples": int(len(src)),
        "num_labels": len(src.label_names),
        "labels_sha1": label_fingerprint(src.label_names),
        "samples_sha1": hashlib.sha1(np.asarray(src.labels, dtype=np.int64).tobytes()
                                     ).hexdigest(),
    }
    root = getattr(src, "root", None)
    if root is not None:
        summary["root"] = str(root)
    selection = getattr(src, "split", None) or getattr(src, "folds", None)
    if selection is not None:
        summary["selection"] = list(selection) if isinstance(selection, tuple) else selection
    return summary
