"""Touch and Go (Yang et al. 2022): egocentric video + GelSight frames of touches in the wild.

Published layout (the ``touch_and_go`` folder of the release, after its ``extract_frame.py``
has turned each recording's videos into frames)::

    <root>/dataset/<video id>/video_frame/<frame>.jpg      e.g. 20220318_020426/0000000096.jpg
    <root>/dataset/<video id>/gelsight_frame/<frame>.jpg   the GelSight frame of the same instant
    <root>/label.txt     "<video id>/<frame>.jpg,<material id>" for the labelled (onset) frames

Splits: ``split="all"`` reads ``label.txt``. The material-classification split of the authors'
code (``train.txt`` / ``test.txt`` in ``Visuo-tactile contrastive learning/dataset/`` of
github.com/fredfyyang/Touch-and-Go, same line format; ``pretrain.txt`` too) is read from
``split_dir`` (default ``<root>``: copy the files next to ``label.txt``). ``task="hard"`` maps
material ids to hard (0) / soft (1) as that code does (ids 7, 8, 9, 11, 13 are soft);
``task="rough"`` reads ``<split>_rough.txt`` (labels 0/1 as written).

Label names: ``label.txt`` holds ids only. :data:`MATERIAL_NAMES` is the order we use for the
20 ids (concrete, plastic, glass, wood, metal, brick, tile, leather, synthetic fabric, rubber,
paper, tree, grass, soil, rock, gravel, sand, plants, others, natural fabric). It agrees with the
ids other code maps to plastic (1), glass (2), wood (3), metal (4), tile (6), but it is NOT
shipped with the data and could not be checked against it here: pass ``label_names`` when you
hold the authoritative list. The rough/smooth names of ``task="rough"`` are unverified as well.

Raw samples are :class:`~omnibind_ros.core.types.TactileFrame`: the GelSight frame (uint8 RGB)
with, as its no-contact ``reference``, the recording's first GelSight frame (frames sorted by
name; each recording starts before the sensor touches anything); ``reference="none"`` leaves it
None. :meth:`TouchAndGo.image` gives the paired video frame.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from omnibind_ros.core.types import TactileFrame

from .base import (
    DatasetFormatError,
    DatasetLayoutError,
    DatasetReader,
    read_image_rgb,
    require_dir,
    require_file,
)

__all__ = ["HARD_SOFT_NAMES", "MATERIAL_NAMES", "ROUGH_NAMES", "SOFT_MATERIAL_IDS",
           "TouchAndGo", "read_label_file"]

#: Our order of the 20 material ids (unverified, see the module docstring).
MATERIAL_NAMES = ("concrete", "plastic", "glass", "wood", "metal", "brick", "tile", "leather",
                  "synthetic fabric", "rubber", "paper", "tree", "grass", "soil", "rock",
                  "gravel", "sand", "plants", "others", "natural fabric")
#: Material ids the authors' code counts as soft.
SOFT_MATERIAL_IDS = frozenset({7, 8, 9, 11, 13})
HARD_SOFT_NAMES = ("hard", "soft")
ROUGH_NAMES = ("rough", "smooth")
_TASKS = ("material", "hard", "rough")


def read_label_file(path: Path) -> list[tuple[str, str, int]]:
    """``(video id, frame file, label)`` of each line ``<video>/<frame>.jpg,<label>``."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        rel, _, label = line.rpartition(",")
        video, _, frame = rel.partition("/")
        if not (video and frame and label.strip().lstrip("-").isdigit()):
            raise DatasetFormatError(f"{path} line {n}: expected '<video>/<frame>.jpg,<label>',"
                                     f" got {line!r}")
        out.append((video, frame, int(label)))
    return out


class TouchAndGo(DatasetReader):
    """Touch and Go GelSight frames of one split.

    Parameters
    ----------
    root : the ``touch_and_go`` folder (holding ``dataset/`` and ``label.txt``).
    split : "all" (``label.txt``), or "train" / "test" / "pretrain" (``<split>.txt``).
    task : "material" (20 classes), "hard" (hard/soft) or "rough" (rough/smooth).
    split_dir : folder of the split files (default ``root``).
    label_names : names of the task's label ids, overriding the defaults.
    reference : "first" (the recording's first GelSight frame) or "none".
    """

    name = "Touch-and-Go"
    modality = "tactile"

    def __init__(self, root: str | Path, split: str = "train", *, task: str = "material",
                 split_dir: str | Path | None = None,
                 label_names: Sequence[str] | None = None, reference: str = "first") -> None:
        super().__init__(root)
        if task not in _TASKS:
            raise ValueError(f"task must be one of {_TASKS}, got {task!r}")
        if reference not in ("first", "none"):
            raise ValueError(f"reference must be 'first' or 'none', got {reference!r}")
        self.split, self.task, self.reference = split, task, reference
        self._data = require_dir(self.root, self.name, "dataset")
        sdir = Path(split_dir) if split_dir is not None else self.root
        if split == "all":
            if task == "rough":
                raise ValueError("task='rough' has no 'all' split (label.txt holds materials)")
            listing = require_file(self.root, self.name, "label.txt")
        else:
            fname = f"{split}_rough.txt" if task == "rough" else f"{split}.txt"
            listing = sdir / fname
            if not listing.is_file():
                raise DatasetLayoutError(
                    f"{self.name} split file {listing} is missing (the authors' code repository "
                    f"ships {fname} in 'Visuo-tactile contrastive learning/dataset/'; copy it "
                    f"to {sdir} or pass split_dir)")
        rows = read_label_file(listing)
        defaults = {"material": MATERIAL_NAMES, "hard": HARD_SOFT_NAMES, "rough": ROUGH_NAMES}
        self.label_names = tuple(label_names) if label_names is not None else defaults[task]
        if task == "hard":
            rows = [(v, f, int(lab in SOFT_MATERIAL_IDS)) for v, f, lab in rows]
        bad = sorted({lab for *_, lab in rows if not 0 <= lab < len(self.label_names)})
        if bad:
            raise DatasetFormatError(f"{listing}: label ids {bad} outside the "
                                     f"{len(self.label_names)} label names")
        for video in sorted({v for v, _, _ in rows}):
            if not (self._data / video).is_dir():
                raise DatasetLayoutError(f"{self.name} root {self.root} lacks dataset/{video}/")
        self._frames = [(v, f) for v, f, _ in rows]
        self._paths = [self._data / v / "gelsight_frame" / f for v, f, _ in rows]
        self._labels = np.array([lab for *_, lab in rows], dtype=np.int64)
        self._first: dict[str, Path] = {}

    def reference_path(self, i: int) -> Path:
        """The no-contact reference of sample ``i``: its recording's first GelSight frame."""
        video = self._frames[self._index(i)][0]
        if video not in self._first:
            folder = self._data / video / "gelsight_frame"
            if not folder.is_dir():
                raise DatasetLayoutError(f"{self.name} root {self.root} lacks "
                                         f"dataset/{video}/gelsight_frame/")
            names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".jpg"))
            if not names:
                raise DatasetLayoutError(f"{folder} holds no frames")
            self._first[video] = folder / names[0]
        return self._first[video]

    def load(self, i: int) -> TactileFrame:
        """The GelSight frame with its reference (see the module docstring)."""
        i = self._index(i)
        image = read_image_rgb(self.path(i))
        ref = read_image_rgb(self.reference_path(i)) if self.reference == "first" else None
        return TactileFrame(image=image, reference=ref)

    def image(self, i: int) -> np.ndarray:
        """The paired video frame, uint8 ``[H, W, 3]`` RGB."""
        video, frame = self._frames[self._index(i)]
        return read_image_rgb(self._data / video / "video_frame" / frame)

    def frame_id(self, i: int) -> str:
        """``<video id>/<frame>.jpg`` as written in the split file."""
        video, frame = self._frames[self._index(i)]
        return f"{video}/{frame}"
