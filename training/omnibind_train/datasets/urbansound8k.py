"""UrbanSound8K (Salamon et al. 2014): 8,732 urban sound excerpts (<= 4 s), 10 classes, 10 folds.

Published layout (the extracted ``UrbanSound8K`` folder)::

    <root>/audio/fold1 .. fold10/<fsID>-<classID>-<occurrenceID>-<sliceID>.wav
    <root>/metadata/UrbanSound8K.csv
        slice_file_name,fsID,start,end,salience,fold,classID,class

Labels are ``classID`` (0..9) and :attr:`label_names` [classID] its ``class``
("air_conditioner", "car_horn", ...). The files are the excerpts themselves (``start``/``end``
locate them in the original Freesound recording and are not applied again). The official
protocol is 10-fold cross validation over the predefined folds (never re-shuffled: excerpts of
one recording share a fold); :meth:`UrbanSound8K.cross_validation` gives one round.

Files keep their own sample rate, bit depth and channel count (they vary); raw samples are
:class:`~omnibind_ros.core.types.AudioBlock` (float32 ``[n, channels]``), and the preprocessing
window is chosen as in :mod:`._audio`.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ._audio import FoldedClipReader, read_metadata_csv
from .base import DatasetFormatError, require_dir, require_file, select_folds

__all__ = ["UrbanSound8K"]

_COLUMNS = ("slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class")


class UrbanSound8K(FoldedClipReader):
    """UrbanSound8K excerpts of the chosen folds.

    Parameters
    ----------
    root : the ``UrbanSound8K`` folder (holding ``audio/`` and ``metadata/UrbanSound8K.csv``).
    folds : a fold (1..10), several, or None for all.
    window : preprocessing excerpt, "loudest" | "first" | "last" (see :mod:`._audio`).
    """

    name = "UrbanSound8K"
    FOLDS = tuple(range(1, 11))

    def __init__(self, root: str | Path, folds: int | Iterable[int] | None = None, *,
                 window: str = "loudest") -> None:
        super().__init__(root, window)
        self.folds = select_folds(folds, self.FOLDS, self.name)
        meta = require_file(self.root, self.name, "metadata/UrbanSound8K.csv")
        for fold in self.folds:
            require_dir(self.root, self.name, f"audio/fold{fold}")
        rows = _read_meta(meta)
        names: dict[int, str] = {}
        for r in rows:
            if names.setdefault(r["classID"], r["class"]) != r["class"]:
                raise DatasetFormatError(f"{meta}: classID {r['classID']} has two names")
        if sorted(names) != list(range(len(names))):
            raise DatasetFormatError(f"{meta}: classID values are not 0..{len(names) - 1}")
        self.label_names = tuple(names[k] for k in range(len(names)))
        self._rows = [r for r in rows if r["fold"] in self.folds]
        self._paths = [self.root / "audio" / f"fold{r['fold']}" / r["slice_file_name"]
                       for r in self._rows]
        self._labels = np.array([r["classID"] for r in self._rows], dtype=np.int64)
        self._fold = np.array([r["fold"] for r in self._rows], dtype=np.int64)


def _read_meta(path: Path) -> list[dict[str, Any]]:
    return read_metadata_csv(path, _COLUMNS, lambda r: {
        "slice_file_name": r["slice_file_name"], "fsID": int(r["fsID"]),
        "start": float(r["start"]), "end": float(r["end"]), "salience": int(r["salience"]),
        "fold": int(r["fold"]), "classID": int(r["classID"]), "class": r["class"]})
