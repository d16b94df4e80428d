"""Readers of seed 000's nine source data sets (OmniBind, Table 1 and appendix A.1).

Each reader reads one data set in the layout its authors publish, with the official splits or
folds and label names, and returns ``(raw sample, label index)`` with the raw sample in the
payload type of :mod:`omnibind_ros.core.types`, so it goes through the same core preprocessing
as the simulator's samples and the robot's messages (:meth:`DatasetReader.preprocessed`).
Nothing is downloaded; a missing or partial root raises :class:`DatasetLayoutError` naming what
is missing. The module docstring of each reader states the layout read and every choice made.

=====================  ===========  ======================  ====================================
reader                 modality     raw sample              selection
=====================  ===========  ======================  ====================================
:class:`ImageNet1K`    image        uint8 [H, W, 3] RGB     ``split`` train / val
:class:`Caltech101`    image        uint8 [H, W, 3] RGB     ``split`` train / test / all (seeded
                                                            30 per class)
:class:`ShapeNetPart`  point_cloud  float32 [N, 3]          ``split`` train / val / test /
                                                            trainval (official lists)
:class:`ESC50`         audio        AudioBlock              ``folds`` 1..5
:class:`UrbanSound8K`  audio        AudioBlock              ``folds`` 1..10
:class:`LLVIP`         thermal      ThermalFrame (mono8)    ``split`` test / train (box protocol)
:class:`NImageNet`     event        EventPacket 640 x 480   ``split`` train / val / variants
:class:`NCaltech101`   event        EventPacket             ``split`` as Caltech-101
:class:`TouchAndGo`    tactile      TactileFrame            ``split`` train / test / all;
                                                            ``task`` material / hard / rough
=====================  ===========  ======================  ====================================

:func:`open_dataset` opens a reader by its registry name (:data:`READERS`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import (
    DatasetFormatError,
    DatasetLayoutError,
    DatasetReader,
    per_class_split,
    read_audio,
    read_image_gray,
    read_image_rgb,
)
from .caltech101 import Caltech101
from .esc50 import ESC50
from .imagenet import ImageNet1K
from .llvip import LLVIP
from .ncaltech101 import NCaltech101
from .nimagenet import NImageNet
from .shapenet_part import ShapeNetPart
from .touch_and_go import TouchAndGo
from .urbansound8k import UrbanSound8K

__all__ = ["ESC50", "LLVIP", "READERS", "Caltech101", "DatasetFormatError", "DatasetLayoutError",
           "DatasetReader", "ImageNet1K", "NCaltech101", "NImageNet", "ShapeNetPart",
           "TouchAndGo", "UrbanSound8K", "open_dataset", "per_class_split", "read_audio",
           "read_image_gray", "read_image_rgb"]

#: Registry name -> reader class (names as seed 000's Table 1 lists the data sets).
READERS: dict[str, type[DatasetReader]] = {
    "imagenet": ImageNet1K,
    "caltech101": Caltech101,
    "shapenetpart": ShapeNetPart,
    "esc50": ESC50,
    "urbansound8k": UrbanSound8K,
    "llvip": LLVIP,
    "nimagenet": NImageNet,
    "ncaltech101": NCaltech101,
    "touchandgo": TouchAndGo,
}


def open_dataset(name: str, root: str | Path, **kwargs: Any) -> DatasetReader:
    """Open the reader registered as ``name`` on ``root``.

    ``name`` is matched case-insensitively, ignoring "-", "_" and spaces and a trailing "1k"
    ("ImageNet-1K", "ESC-50", "touch_and_go", "N-Caltech101" all work).
    """
    key = "".join(c for c in name.lower() if c not in "-_ ")
    key = key[:-2] if key.endswith("1k") else key
    try:
        cls = READERS[key]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(READERS)}") from None
    return cls(root, **kwargs)
