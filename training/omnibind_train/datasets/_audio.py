"""Shared by the audio readers (ESC-50, UrbanSound8K): clip loading and the preprocessing window.

The runtime's audio preprocessor analyses the last ``window_s`` seconds of a stream. A data set
clip is longer than that window (ESC-50: 5 s, UrbanSound8K: up to 4 s) and its sound often sits
at the start with silence padding after it (ESC-50 pads short sounds), so pushing the whole clip
would often analyse silence. :meth:`AudioClipReader.preprocessed` therefore pushes one
``window_s`` excerpt of the clip, chosen by ``window``:

- ``"loudest"`` (default): the excerpt with the highest energy (mean square of the channel
  mean), found with a cumulative sum over every start sample;
- ``"first"`` / ``"last"``: the clip's first / last ``window_s`` seconds.

A clip shorter than the window is pushed whole (the preprocessor zero-pads the window's start,
as at run time). The raw sample (``reader[i]``) is always the whole clip.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from omnibind_ros.core.types import AudioBlock

from .base import DatasetFormatError, DatasetReader, read_audio

__all__ = ["WINDOW_CHOICES", "AudioClipReader", "clip_window"]

WINDOW_CHOICES = ("loudest", "first", "last")


def clip_window(block: AudioBlock, window_s: float, window: str = "loudest") -> AudioBlock:
    """The ``window_s``-second excerpt of ``block`` chosen by ``window`` (see module doc)."""
    if window not in WINDOW_CHOICES:
        raise ValueError(f"window must be one of {WINDOW_CHOICES}, got {window!r}")
    samples = block.samples
    n = samples.shape[0]
    w = int(math.ceil(window_s * block.sample_rate))
    if n <= w:
        return block
    if window == "first":
        start = 0
    elif window == "last":
        start = n - w
    else:
        mono = samples.astype(np.float64)
        mono = mono.mean(axis=1) if mono.ndim == 2 else mono
        energy = np.concatenate([[0.0], np.cumsum(mono * mono)])
        start = int(np.argmax(energy[w:] - energy[:-w]))
    return AudioBlock(samples=samples[start:start + w], sample_rate=block.sample_rate)


class AudioClipReader(DatasetReader):
    """A reader of audio clips (one file per sample) with the window choice above."""

    modality = "audio"

    def __init__(self, root: Any, window: str = "loudest") -> None:
        super().__init__(root)
        if window not in WINDOW_CHOICES:
            raise ValueError(f"window must be one of {WINDOW_CHOICES}, got {window!r}")
        self.window = window

    def load(self, i: int) -> AudioBlock:
        """The whole clip at the file's rate: float32 ``[n_frames, channels]``."""
        return read_audio(self.path(i))

    def _for_preprocessing(self, payload: AudioBlock, config: Mapping[str, Any]) -> AudioBlock:
        return clip_window(payload, float(config["window_s"]), self.window)


def read_metadata_csv(path: Path, columns: tuple[str, ...],
                      typed: Callable[[dict[str, str]], dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of a data set's metadata CSV, each through ``typed``; a header lacking one of
    ``columns`` or a row ``typed`` cannot convert raises DatasetFormatError naming the line."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or ())]
        if missing:
            raise DatasetFormatError(f"{path}: header lacks {', '.join(missing)} (expected "
                                     f"{','.join(columns)})")
        rows = []
        for line, r in enumerate(reader, start=2):
            try:
                rows.append(typed(r))
            except (TypeError, ValueError) as exc:
                raise DatasetFormatError(f"{path} line {line}: {exc}") from exc
    return rows


class FoldedClipReader(AudioClipReader):
    """An audio data set published with numbered cross-validation folds (ESC-50,
    UrbanSound8K): subclasses set ``FOLDS`` and fill ``_rows`` (metadata rows) and ``_fold``."""

    FOLDS: tuple[int, ...] = ()
    _rows: list[dict[str, Any]]
    _fold: np.ndarray

    @classmethod
    def cross_validation(cls, root: Any, test_fold: int, **kwargs: Any
                         ) -> tuple[Any, Any]:
        """The (train, test) readers of the round that holds out ``test_fold``."""
        test = cls(root, test_fold, **kwargs)
        train = cls(root, [f for f in cls.FOLDS if f != test.folds[0]], **kwargs)
        return train, test

    def fold(self, i: int) -> int:
        """The fold of sample ``i`` (one of ``FOLDS``)."""
        return int(self._fold[self._index(i)])

    def record(self, i: int) -> dict[str, Any]:
        """Sample ``i``'s row of the data set's metadata CSV (typed)."""
        return dict(self._rows[self._index(i)])
