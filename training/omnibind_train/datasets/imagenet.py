"""ImageNet-1K (ILSVRC-2012 classification): 1,000 WordNet synsets, train 1.28 M / val 50 k.

Published layouts read (``<root>`` is the folder holding ``train/`` and/or ``val/``, or the
Kaggle ``imagenet-object-localization-challenge`` folder, whose images are under
``ILSVRC/Data/CLS-LOC/``)::

    train/<wnid>/<wnid>_<n>.JPEG
    val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG            (sorted into synset folders), or
    val/ILSVRC2012_val_<8 digits>.JPEG                   (flat, as released) labelled by
        LOC_val_solution.csv    ImageId,PredictionString  ("n01751748 160 39 292 255 ...":
                                the first token is the image's synset), or by the devkit's
        ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt  (one ILSVRC2012_ID
                                per line, image 1 first) + .../data/meta.mat (ILSVRC2012_ID ->
                                WNID of the 1,000 leaf synsets, read with scipy)
    LOC_synset_mapping.txt      "n01440764 tench, Tinca tinca" (one synset per line)

Class index: the 1,000 wnids sorted (the order of ``LOC_synset_mapping.txt`` and of
torchvision's ImageFolder). :attr:`label_names` [k] is the first synonym of the synset's
mapping line ("tench"; two synsets share "crane" and two "maillot", as published);
:attr:`label_synonyms` keeps every synonym. Without a mapping file the devkit's ``meta.mat``
``words`` give the names, else the wnids do. Raw samples are uint8 ``[H, W, 3]`` RGB arrays
(the few grayscale/CMYK JPEGs and the PNG named .JPEG are decoded by content).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .base import (
    IMAGE_SUFFIXES,
    DatasetFormatError,
    DatasetLayoutError,
    DatasetReader,
    read_image_rgb,
)

__all__ = ["ImageNet1K", "read_devkit_meta", "read_synset_mapping"]

_KAGGLE = Path("ILSVRC/Data/CLS-LOC")
_DEVKIT = Path("ILSVRC2012_devkit_t12/data")


def read_synset_mapping(path: str | Path) -> dict[str, tuple[str, ...]]:
    """``wnid -> synonyms`` of a ``LOC_synset_mapping.txt`` ("n01440764 tench, Tinca tinca")."""
    out: dict[str, tuple[str, ...]] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, words = line.strip().partition(" ")
        if not (wnid.startswith("n") and wnid[1:].isdigit() and words):
            raise DatasetFormatError(f"{path} line {n}: expected '<wnid> <names>', got {line!r}")
        out[wnid] = tuple(w.strip() for w in words.split(","))
    return out


def read_devkit_meta(path: str | Path) -> tuple[dict[int, str], dict[str, tuple[str, ...]]]:
    """``ILSVRC2012_ID -> wnid`` and ``wnid -> synonyms`` of the devkit's ``meta.mat`` (its
    leaf synsets, ``num_children == 0``)."""
    from scipy.io import loadmat

    synsets = loadmat(str(path), squeeze_me=True)["synsets"]
    ids, words = {}, {}
    for s in np.atleast_1d(synsets):
        if int(s["num_children"]) != 0:
            continue
        wnid = str(s["WNID"])
        ids[int(s["ILSVRC2012_ID"])] = wnid
        words[wnid] = tuple(w.strip() for w in str(s["words"]).split(","))
    return ids, words


def _images(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder)
                  if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file())


class ImageNet1K(DatasetReader):
    """ImageNet-1K images of one split.

    Parameters
    ----------
    root : see the module docstring.
    split : "train" or "val".
    synset_mapping : a ``LOC_synset_mapping.txt`` (default: ``<root>/LOC_synset_mapping.txt``
        when present).
    """

    name = "ImageNet-1K"
    modality = "image"

    def __init__(self, root: str | Path, split: str = "train", *,
                 synset_mapping: str | Path | None = None) -> None:
        super().__init__(root)
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.split = split
        base = self.root
        if not any((base / s).is_dir() for s in ("train", "val")):
            if (base / _KAGGLE).is_dir():
                base = base / _KAGGLE
            else:
                raise DatasetLayoutError(f"{self.name} root {self.root} lacks train/ and val/ "
                                         f"(or {_KAGGLE.as_posix()}/train, val)")
        self.data_dir = base
        folder = base / split
        if not folder.is_dir():
            raise DatasetLayoutError(f"{self.name} root {self.root} lacks "
                                     f"{folder.relative_to(self.root).as_posix()}/")
        mapping_path = Path(synset_mapping) if synset_mapping else (
            self.root / "LOC_synset_mapping.txt")
        if synset_mapping and not mapping_path.is_file():
            raise DatasetLayoutError(f"{self.name}: synset mapping {mapping_path} is missing")
        synonyms = read_synset_mapping(mapping_path) if mapping_path.is_file() else {}
        meta = self.root / _DEVKIT / "meta.mat"
        devkit_ids: dict[int, str] = {}
        if meta.is_file():
            devkit_ids, devkit_words = read_devkit_meta(meta)
            synonyms = synonyms or devkit_words
        class_dirs = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        if class_dirs:  # train/, or val/ sorted into synset folders
            rels = [f"{w}/{f}" for w in class_dirs for f in _images(folder / w)]
            wnids_of = [r.split("/")[0] for r in rels]
        else:  # flat val/ as released
            rels = _images(folder)
            truth = self._val_truth(devkit_ids)
            missing = [r for r in rels if os.path.splitext(r)[0] not in truth]
            if missing:
                raise DatasetFormatError(f"{self.name}: no label for val image {missing[0]} "
                                         f"(and {len(missing) - 1} more)")
            wnids_of = [truth[os.path.splitext(r)[0]] for r in rels]
        wnids = sorted(synonyms) if synonyms else sorted(set(wnids_of))
        index = {w: k for k, w in enumerate(wnids)}
        unknown = sorted(set(wnids_of) - set(index))
        if unknown:
            raise DatasetFormatError(f"{self.name}: synsets not in the class list: {unknown[:5]}")
        self.wnids = tuple(wnids)
        self.label_synonyms = tuple(synonyms.get(w, (w,)) for w in wnids)
        self.label_names = tuple(s[0] for s in self.label_synonyms)
        self._paths = [folder / r for r in rels]
        self._labels = np.array([index[w] for w in wnids_of], dtype=np.int64)

    def _val_truth(self, devkit_ids: dict[int, str]) -> dict[str, str]:
        """``ILSVRC2012_val_XXXXXXXX -> wnid`` from LOC_val_solution.csv or the devkit."""
        solution = self.root / "LOC_val_solution.csv"
        if solution.is_file():
            truth = {}
            with solution.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
                    raise DatasetFormatError(f"{solution}: header is not "
                                             "ImageId,PredictionString")
                for r in reader:
                    truth[r["ImageId"]] = r["PredictionString"].split()[0]
            return truth
        gt = self.root / _DEVKIT / "ILSVRC2012_validation_ground_truth.txt"
        if gt.is_file() and devkit_ids:
            ids = [int(v) for v in gt.read_text().split()]
            bad = sorted(set(ids) - set(devkit_ids))
            if bad:
                raise DatasetFormatError(f"{gt}: ILSVRC2012_IDs {bad[:5]} are not leaf synsets "
                                         "of meta.mat")
            return {f"ILSVRC2012_val_{n:08d}": devkit_ids[i] for n, i in enumerate(ids, 1)}
        raise DatasetLayoutError(
            f"{self.name} root {self.root} lacks LOC_val_solution.csv (or "
            f"{(_DEVKIT / 'ILSVRC2012_validation_ground_truth.txt').as_posix()} with "
            f"{(_DEVKIT / 'meta.mat').as_posix()}) to label the flat val/ folder")

    def load(self, i: int) -> np.ndarray:
        """uint8 ``[H, W, 3]`` RGB."""
        return read_image_rgb(self.path(i))
