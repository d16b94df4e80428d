"""Readers of seed 000's nine source data sets (OmniBind, Table 1 and appendix A.1).

Each reader reads one data set in the layout its authors publish, with the official splits or
folds and label names, and returns ``(raw sample, label index)`` with the raw sample in the
payload type of :mod:`omnibind_ros.core.types`, so it goes through the same core preprocessing
as the simulator's samples and the robot's messages (:meth:`DatasetReader.preprocessed`).
Nothing is downloaded; a missing or partial root raises :class:`DatasetLayoutError`.

==================  ==============  ===========================================================
reader              modality        selection
==================  ==============  ===========================================================
:class:`ESC50`      audio           ``folds`` 1..5 (+ ``cross_validation``)
:class:`UrbanSound8K` audio         ``folds`` 1..10 (+ ``cross_validation``)
==================  ==============  ===========================================================

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
from .urbansound8k import UrbanSound8K

__all__ = ["ESC50", "LLVIP", "READERS", "Caltech101", "DatasetFormatError", "DatasetLayoutError",
           "DatasetReader", "ImageNet1K", "NCaltech101", "NImageNet", "UrbanSound8K",
           "ShapeNetPart", "open_dataset", "per_class_split", "read_audio", "read_image_gray",
           "read_image_rgb"]

#: Registry name -> reader class.
READERS: dict[str, type[DatasetReader]] = {
    "imagenet": ImageNet1K,
    "caltech101": Caltech101,
    "shapenetpart": ShapeNetPart,
    "esc50": ESC50,
    "urbansound8k": UrbanSound8K,
    "llvip": LLVIP,
    "nimagenet": NImageNet,
    "ncaltech101": NCaltech101,
}


def open_dataset(name: str, root: str | Path, **kwargs: Any) -> DatasetReader:
    """Open the reader registered as ``name`` (see :data:`READERS`) on ``root``."""
    try:
        cls = READERS[name.lower().replace("-", "").replace("_", "")]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(READERS)}") from None
    return cls(root, **kwargs)
