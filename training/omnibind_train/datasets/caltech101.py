"""Caltech-101 (Fei-Fei et al. 2004): 101 object categories (+ a background clutter folder).

Published layout (``101_ObjectCategories.tar.gz`` extracted, as in the ``caltech-101`` archive)::

    <root>/101_ObjectCategories/<category>/image_0001.jpg ...

``<root>`` may be the folder holding ``101_ObjectCategories/`` or torchvision's ``caltech101/``
parent of it. Categories are the folder names sorted by code point (``Faces``, ``Faces_easy``,
``Leopards``, ``Motorbikes``, ``accordion``, ... as torchvision orders them) and
:attr:`label_names` are those folder names as published. ``BACKGROUND_Google`` (clutter, not an
object class) is left out by default, as is usual, leaving the 101 classes of seed 000's Table 1.

Split protocol: Caltech-101 ships no split. The common protocol is used: per category,
``train_per_class`` (30) images for training and the rest (or at most ``test_per_class``) for
test, drawn with a seeded generator (:func:`.base.per_class_split`, seed 0 by default). The
same protocol and seed give N-Caltech101 (:mod:`.ncaltech101`) the same split, file for file.

Raw samples are uint8 ``[H, W, 3]`` RGB arrays (grayscale JPEGs are expanded to 3 channels).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import (
    IMAGE_SUFFIXES,
    DatasetLayoutError,
    DatasetReader,
    per_class_split,
    read_image_rgb,
)

__all__ = ["BACKGROUND", "Caltech101", "category_files", "select_split"]

BACKGROUND = "BACKGROUND_Google"


def category_files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """``category -> {file stem -> file name}`` of a ``<category>/<file>`` tree."""
    out: dict[str, dict[str, str]] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_dir():
            continue
        files = {}
        for f in os.scandir(entry.path):
            stem, ext = os.path.splitext(f.name)
            if ext.lower() in suffixes and f.is_file():
                files[stem] = f.name
        out[entry.name] = files
    return out


def select_split(reader: DatasetReader, folder: Path, suffixes: tuple[str, ...], *,
                 include_background: bool, split: str, train_per_class: int,
                 test_per_class: int | None, seed: int) -> None:
    """Fill ``reader``'s label names, paths and labels from ``folder/<class>/<files>`` with the
    seeded per-class split (shared by Caltech-101 and N-Caltech101, so an image and its
    recording land in the same split)."""
    tree = category_files(folder, suffixes)
    if not include_background:
        tree.pop(BACKGROUND, None)
    if not tree:
        raise DatasetLayoutError(f"{reader.name} root {reader.root}: {folder.name}/ has no "
                                 "category folders")
    reader.label_names = tuple(tree)
    labels = []
    for k, (cat, files) in enumerate(tree.items()):
        for stem in per_class_split(list(files), cat, split, train_per_class, test_per_class,
                                    seed):
            reader._paths.append(folder / cat / files[stem])
            labels.append(k)
    reader._labels = np.array(labels, dtype=np.int64)


class Caltech101(DatasetReader):
    """Caltech-101 images of one split.

    Parameters
    ----------
    root : folder holding ``101_ObjectCategories/`` (or ``caltech101/101_ObjectCategories/``).
    split : "train", "test" or "all".
    train_per_class, test_per_class, seed : the split protocol (module docstring).
    include_background : keep ``BACKGROUND_Google`` as a class.
    """

    name = "Caltech-101"
    modality = "image"

    def __init__(self, root: str | Path, split: str = "train", *, train_per_class: int = 30,
                 test_per_class: int | None = None, seed: int = 0,
                 include_background: bool = False) -> None:
        super().__init__(root)
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        self.split, self.seed = split, seed
        folder = next((self.root / p for p in ("101_ObjectCategories",
                                               "caltech101/101_ObjectCategories")
                       if (self.root / p).is_dir()), None)
        if folder is None:
            raise DatasetLayoutError(f"{self.name} root {self.root} lacks 101_ObjectCategories/")
        self.images_dir = folder
        select_split(self, folder, IMAGE_SUFFIXES, include_background=include_background,
                     split=split, train_per_class=train_per_class,
                     test_per_class=test_per_class, seed=seed)

    def load(self, i: int) -> np.ndarray:
        """uint8 ``[H, W, 3]`` RGB."""
        return read_image_rgb(self.path(i))
