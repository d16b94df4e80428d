"""N-ImageNet (Kim et al. 2021): ImageNet-1K recorded by a moving Prophesee Gen3 VGA (640 x 480).

Published layout (``N_ImageNet.7z`` extracted, per the authors' README)::

    <root>/train_list.txt, val_list.txt   absolute paths on the authors' machine, e.g.
        /home/jhkim/Datasets/N_Imagenet/extracted_train/n01440764/n01440764_10026.npz
    <root>/extracted_train/<wnid>/<name>.npz
    <root>/extracted_val/<wnid>/<name>.npz

The variants of ``N_ImageNet_cam.7z`` (``val_mode_1`` ... ``val_mode_brightness_7``) follow the
same ``<split>/<wnid>/*.npz`` pattern; any ``split`` names ``extracted_<split>/`` or ``<split>/``.

Sample list: when ``<split>_list.txt`` exists, its entries (in order) are used, each matched by
its tail ``<wnid>/<name>.npz`` under the split folder (the authors' absolute prefix is
ignored, so the lists need no editing); otherwise the folder is listed (sorted).

``.npz`` keys supported (the two forms of the authors' ``load_event``):

- compressed (the published files): ``event_data``, a structured array with fields ``x``,
  ``y``, ``t`` (microseconds) and ``p`` (bool, or 0/1, or -1/+1);
- uncompressed: arrays ``x_pos``, ``y_pos``, ``timestamp`` (microseconds), ``polarity``.

Polarity ``> 0`` is ON. Classes are the 1,000 wnids sorted (the ImageNet class index); names
come from a ``LOC_synset_mapping.txt`` (``synset_mapping`` argument, or found in ``<root>``) as
in :mod:`.imagenet`, else the wnids themselves. Raw samples are
:class:`~omnibind_ros.core.types.EventPacket` (640 x 480, ``t_ns`` = recorded us * 1000, events
stably sorted by time should a file not be).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from omnibind_ros.core.types import EventPacket

from .base import DatasetFormatError, DatasetLayoutError, DatasetReader
from .imagenet import read_synset_mapping

__all__ = ["SENSOR_SIZE", "NImageNet", "read_nimagenet_npz"]

#: (width, height) of the Prophesee Gen3 VGA sensor N-ImageNet was recorded with.
SENSOR_SIZE = (640, 480)


def read_nimagenet_npz(path: str | Path, sensor_size: tuple[int, int] = SENSOR_SIZE
                       ) -> EventPacket:
    """One N-ImageNet ``.npz`` recording as an :class:`EventPacket` (keys: module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(f"{path} is missing")
    with np.load(path) as data:
        keys = set(data.files)
        if "event_data" in keys:
            ev = data["event_data"]
            names = ev.dtype.names or ()
            if not {"x", "y", "t", "p"} <= set(names):
                raise DatasetFormatError(f"{path}: event_data has fields {names}, expected "
                                         "x, y, t, p")
            x, y, t, p = ev["x"], ev["y"], ev["t"], ev["p"]
        elif {"x_pos", "y_pos", "timestamp", "polarity"} <= keys:
            x, y = data["x_pos"], data["y_pos"]
            t, p = data["timestamp"], data["polarity"]
        else:
            raise DatasetFormatError(
                f"{path}: keys {sorted(keys)}; expected 'event_data' (fields x, y, t, p) or "
                "'x_pos', 'y_pos', 'timestamp', 'polarity'")
    t_us = np.asarray(t).astype(np.int64)
    x, y, p = np.asarray(x), np.asarray(y), np.asarray(p)
    if t_us.size > 1 and np.any(np.diff(t_us) < 0):
        order = np.argsort(t_us, kind="stable")
        x, y, t_us, p = x[order], y[order], t_us[order], p[order]
    return EventPacket(x=x.astype(np.uint16), y=y.astype(np.uint16), t_ns=t_us * 1000,
                       polarity=p.astype(np.int64) > 0 if p.dtype != np.bool_ else p.copy(),
                       width=int(sensor_size[0]), height=int(sensor_size[1]))


class NImageNet(DatasetReader):
    """N-ImageNet recordings of one split.

    Parameters
    ----------
    root : the ``N_Imagenet`` folder.
    split : "train", "val", or a variant folder (``val_mode_1`` ...).
    synset_mapping : a ``LOC_synset_mapping.txt`` for class names (default: ``<root>/
        LOC_synset_mapping.txt`` when present).
    use_list : use ``<split>_list.txt`` when present (False: list the folder).
    """

    name = "N-ImageNet"
    modality = "event"

    def __init__(self, root: str | Path, split: str = "train", *,
                 synset_mapping: str | Path | None = None, use_list: bool = True) -> None:
        super().__init__(root)
        self.split = split
        folder = next((self.root / n for n in (f"extracted_{split}", split)
                       if (self.root / n).is_dir()), None)
        if folder is None:
            raise DatasetLayoutError(f"{self.name} root {self.root} lacks extracted_{split}/")
        self.split_dir = folder
        wnids = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        if not wnids:
            raise DatasetLayoutError(f"{self.name} root {self.root}: {folder.name}/ has no "
                                     "class folders")
        listing = self.root / f"{split}_list.txt"
        if use_list and listing.is_file():
            rels = _list_entries(listing, folder.name)
        else:
            rels = [f"{w}/{f}" for w in wnids
                    for f in sorted(os.listdir(folder / w)) if f.endswith(".npz")]
        mapping_path = Path(synset_mapping) if synset_mapping else (
            self.root / "LOC_synset_mapping.txt")
        if synset_mapping and not mapping_path.is_file():
            raise DatasetLayoutError(f"{self.name}: synset mapping {mapping_path} is missing")
        mapping = read_synset_mapping(mapping_path) if mapping_path.is_file() else {}
        if mapping:
            wnids = sorted(mapping)
        index = {w: k for k, w in enumerate(wnids)}
        unknown = sorted({r.split("/")[0] for r in rels} - set(index))
        if unknown:
            raise DatasetFormatError(f"{self.name}: class folders not in the class list: "
                                     f"{unknown[:5]}")
        self.wnids = tuple(wnids)
        self.label_names = tuple(mapping[w][0] if w in mapping else w for w in wnids)
        self._paths = [folder / r for r in rels]
        self._labels = np.array([index[r.split("/")[0]] for r in rels], dtype=np.int64)

    def load(self, i: int) -> EventPacket:
        return read_nimagenet_npz(self.path(i))


def _list_entries(listing: Path, folder_name: str) -> list[str]:
    """``<wnid>/<name>.npz`` of each line of a ``*_list.txt`` (authors' prefixes dropped)."""
    rels = []
    for n, line in enumerate(listing.read_text().splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = line.replace("\\", "/").split("/")
        if len(parts) < 2 or not parts[-1].endswith(".npz"):
            raise DatasetFormatError(f"{listing} line {n}: not a path to <wnid>/<name>.npz: "
                                     f"{line!r}")
        if len(parts) >= 3 and parts[-3] != folder_name:
            raise DatasetFormatError(f"{listing} line {n}: {line!r} is not under "
                                     f"{folder_name}/")
        rels.append(f"{parts[-2]}/{parts[-1]}")
    return rels
