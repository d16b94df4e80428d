"""ESC-50 (Piczak 2015): 2,000 five-second environmental recordings, 50 classes, 5 folds.

Published layout (the ``ESC-50-master`` folder of github.com/karolpiczak/ESC-50)::

    <root>/audio/<fold>-<freesound id>-<take>-<target>.wav   44.1 kHz mono 16-bit, 5 s
    <root>/meta/esc50.csv   filename,fold,target,category,esc10,src_file,take

Labels are ``target`` (0..49) and :attr:`label_names` [target] is its ``category``
("dog", "chirping_birds", ... as written in the CSV). The official protocol is 5-fold cross
validation over ``fold`` (1..5; clips of one source recording share a fold):
:meth:`ESC50.cross_validation` gives the (train, test) readers of one round. ``esc10=True``
keeps the ESC-10 subset (``esc10`` column True) relabelled 0..9 in order of their ESC-50 target.

Raw samples are :class:`~omnibind_ros.core.types.AudioBlock` (float32 ``[n, channels]`` at the
file's rate); the preprocessing window is chosen as in :mod:`._audio`.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ._audio import FoldedClipReader, read_metadata_csv
from .base import DatasetFormatError, require_dir, require_file, select_folds

__all__ = ["ESC50"]

_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")


class ESC50(FoldedClipReader):
    """ESC-50 clips of the chosen folds.

    Parameters
    ----------
    root : the ``ESC-50-master`` folder (holding ``audio/`` and ``meta/esc50.csv``).
    folds : a fold (1..5), several, or None for all 2,000 clips.
    esc10 : keep only the ESC-10 subset (10 classes, relabelled 0..9).
    window : preprocessing excerpt, "loudest" | "first" | "last" (see :mod:`._audio`).
    """

    name = "ESC-50"
    FOLDS = (1, 2, 3, 4, 5)

    def __init__(self, root: str | Path, folds: int | Iterable[int] | None = None, *,
                 esc10: bool = False, window: str = "loudest") -> None:
        super().__init__(root, window)
        self.folds = select_folds(folds, self.FOLDS, self.name)
        self.esc10 = esc10
        meta = require_file(self.root, self.name, "meta/esc50.csv")
        audio = require_dir(self.root, self.name, "audio")
        rows = _read_meta(meta)
        names: dict[int, str] = {}
        for r in rows:
            if names.setdefault(r["target"], r["category"]) != r["category"]:
                raise DatasetFormatError(f"{meta}: target {r['target']} has two categories")
        if esc10:
            rows = [r for r in rows if r["esc10"]]
            targets = sorted({r["target"] for r in rows})
        else:
            targets = sorted(names)
            if targets != list(range(len(targets))):
                raise DatasetFormatError(f"{meta}: targets are not 0..{len(targets) - 1}")
        index = {t: k for k, t in enumerate(targets)}
        self.label_names = tuple(names[t] for t in targets)
        self._rows = [r for r in rows if r["fold"] in self.folds]
        self._paths = [audio / r["filename"] for r in self._rows]
        self._labels = np.array([index[r["target"]] for r in self._rows], dtype=np.int64)
        self._fold = np.array([r["fold"] for r in self._rows], dtype=np.int64)


def _read_meta(path: Path) -> list[dict[str, Any]]:
    return read_metadata_csv(path, _COLUMNS, lambda r: {
        "filename": r["filename"], "fold": int(r["fold"]), "target": int(r["target"]),
        "category": r["category"], "esc10": r["esc10"].strip().lower() == "true",
        "src_file": r["src_file"], "take": r["take"]})
