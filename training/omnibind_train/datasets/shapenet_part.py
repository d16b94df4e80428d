"""ShapeNet-part (Yi et al. 2016, from ShapeNetCore): 16 object categories, ~16.9 k shapes.

Published layouts read (``<root>`` is the benchmark folder)::

    shapenetcore_partanno_segmentation_benchmark_v0_normal/     (PointNet++ release)
        synsetoffset2category.txt      "Airplane<TAB>02691156", one category per line
        <synset>/<id>.txt              one point per line: x y z nx ny nz part
                                       (part: the global part id 0..49, written as a float;
                                       a 4-column "x y z part" file is read too)
        train_test_split/shuffled_{train,val,test}_file_list.json
                                       ["shape_data/<synset>/<id>", ...]
    shapenetcore_partanno_segmentation_benchmark_v0/            (original PointNet release)
        synsetoffset2category.txt, train_test_split/...         (same)
        <synset>/points/<id>.pts       x y z
        <synset>/points_label/<id>.seg part (per-category id, 1-based)

The layout is detected per category (a ``points/`` folder means v0). Splits are the official
``train``, ``val``, ``test`` lists (``trainval`` = both first ones), in the lists' order.
Labels: the category, indexed in the order of ``synsetoffset2category.txt`` (alphabetical:
Airplane, Bag, Cap, ...), :attr:`label_names` as written there. Part labels are returned as
published (:meth:`ShapeNetPart.parts`); :data:`SEG_CLASSES` gives v0_normal's global part ids.

Raw samples are float32 ``[N, 3]`` points in the published frame (ShapeNet's up axis is +y);
``z_up=True`` rotates them +90 degrees about x, (x, y, z) -> (x, -z, y), into the
z-up convention of the runtime's LiDAR path (REP 103). The objects are pre-segmented, centred
and unit-scale, so :attr:`ShapeNetPart.preprocess_overrides` widen the LiDAR ROI, turn ground
removal off and make DBSCAN keep the object as one cluster (``cluster_eps`` 0.3, 30 % of the
object's size, ten times the points' spacing; "largest" cluster: a part separated from the rest
by a gap wider than that would be dropped; a larger eps costs ~O(eps^3): 1.0 takes ~2 s per
shape); FPS and the unit-sphere normalisation then run as at run time.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .base import DatasetFormatError, DatasetLayoutError, DatasetReader, require_file

__all__ = ["SEG_CLASSES", "ShapeNetPart", "read_point_rows"]

#: Global part ids of each category in the v0_normal release (PointNet++ ``seg_classes``).
SEG_CLASSES: dict[str, tuple[int, ...]] = {
    "Airplane": (0, 1, 2, 3), "Bag": (4, 5), "Cap": (6, 7), "Car": (8, 9, 10, 11),
    "Chair": (12, 13, 14, 15), "Earphone": (16, 17, 18), "Guitar": (19, 20, 21),
    "Knife": (22, 23), "Lamp": (24, 25, 26, 27), "Laptop": (28, 29),
    "Motorbike": (30, 31, 32, 33, 34, 35), "Mug": (36, 37), "Pistol": (38, 39, 40),
    "Rocket": (41, 42, 43), "Skateboard": (44, 45, 46), "Table": (47, 48, 49)}

_SPLITS = {"train": ("train",), "val": ("val",), "test": ("test",), "trainval": ("train", "val")}
_Z_UP = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float32)


def read_point_rows(path: Path) -> np.ndarray:
    """float32 ``[rows, cols]`` of a whitespace-separated numeric text file."""
    if not path.is_file():
        raise DatasetLayoutError(f"{path} is missing")
    text = path.read_text()
    lines = text.strip().splitlines()
    if not lines:
        raise DatasetFormatError(f"{path}: no points")
    cols = len(lines[0].split())
    try:
        values = np.array(text.split(), dtype=np.float32)
    except ValueError as exc:
        raise DatasetFormatError(f"{path}: {exc}") from None
    if values.size != cols * len(lines):
        raise DatasetFormatError(f"{path}: rows do not all have {cols} columns")
    return values.reshape(len(lines), cols)


class ShapeNetPart(DatasetReader):
    """ShapeNet-part shapes of one official split.

    Parameters
    ----------
    root : the benchmark folder (v0 or v0_normal, see the module docstring).
    split : "train", "val", "test" or "trainval".
    categories : keep only these category names (labels keep their full-set index).
    z_up : rotate the points from ShapeNet's y-up to z-up.
    """

    name = "ShapeNet-part"
    modality = "point_cloud"
    preprocess_overrides = {"roi_min": (-10.0, -10.0, -10.0), "roi_max": (10.0, 10.0, 10.0),
                            "remove_ground": False, "voxel_size": 0.0, "cluster_eps": 0.3,
                            "cluster_min_points": 1, "cluster_select": "largest"}

    def __init__(self, root: str | Path, split: str = "train", *,
                 categories: list[str] | tuple[str, ...] | None = None,
                 z_up: bool = False) -> None:
        super().__init__(root)
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
        self.split, self.z_up = split, z_up
        cat_file = require_file(self.root, self.name, "synsetoffset2category.txt")
        synsets: list[tuple[str, str]] = []
        for n, line in enumerate(cat_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise DatasetFormatError(f"{cat_file} line {n}: expected '<name> <synset>'")
            synsets.append((parts[0], parts[1]))
        self.label_names = tuple(name for name, _ in synsets)
        self.synsets = tuple(s for _, s in synsets)
        index = {s: k for k, s in enumerate(self.synsets)}
        if categories is not None:
            unknown = sorted(set(categories) - set(self.label_names))
            if unknown:
                raise ValueError(f"unknown ShapeNet-part categories {unknown}")
        keep = set(categories) if categories is not None else set(self.label_names)
        entries: list[str] = []
        for part in _SPLITS[split]:
            rel = f"train_test_split/shuffled_{part}_file_list.json"
            entries += json.loads(require_file(self.root, self.name, rel).read_text())
        self._v0: dict[str, bool] = {}
        self._ids: list[tuple[str, str]] = []
        labels = []
        for e in entries:
            *_, synset, shape_id = e.split("/")
            if synset not in index:
                raise DatasetFormatError(f"{self.name}: split entry {e!r} has a synset not in "
                                         "synsetoffset2category.txt")
            if self.label_names[index[synset]] not in keep:
                continue
            if synset not in self._v0:
                if not (self.root / synset).is_dir():
                    raise DatasetLayoutError(f"{self.name} root {self.root} lacks {synset}/")
                self._v0[synset] = (self.root / synset / "points").is_dir()
            self._ids.append((synset, shape_id))
            self._paths.append(self.root / synset / (
                f"points/{shape_id}.pts" if self._v0[synset] else f"{shape_id}.txt"))
            labels.append(index[synset])
        self._labels = np.array(labels, dtype=np.int64)

    def _rows(self, i: int) -> np.ndarray:
        rows = read_point_rows(self.path(i))
        if rows.shape[1] not in ((3,) if self._v0[self._ids[i][0]] else (4, 7)):
            raise DatasetFormatError(f"{self.path(i)}: {rows.shape[1]} columns per point")
        return rows

    def _frame(self, xyz: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(xyz @ _Z_UP.T if self.z_up else xyz, dtype=np.float32)

    def load(self, i: int) -> np.ndarray:
        """float32 ``[N, 3]`` points."""
        return self._frame(self._rows(self._index(i))[:, :3])

    def normals(self, i: int) -> np.ndarray | None:
        """float32 ``[N, 3]`` normals (v0_normal 7-column files), else None."""
        rows = self._rows(self._index(i))
        return self._frame(rows[:, 3:6]) if rows.shape[1] == 7 else None

    def parts(self, i: int) -> np.ndarray:
        """int64 ``[N]`` part label of every point, as published (v0_normal: global ids of
        :data:`SEG_CLASSES`; v0: the ``.seg`` file's per-category ids, 1-based)."""
        i = self._index(i)
        synset, shape_id = self._ids[i]
        if self._v0[synset]:
            seg_path = self.root / synset / "points_label" / f"{shape_id}.seg"
            labels = read_point_rows(seg_path)[:, 0]
            n = len(self._rows(i))
            if len(labels) != n:
                raise DatasetFormatError(f"{seg_path}: {len(labels)} labels for {n} points")
        else:
            labels = self._rows(i)[:, -1]
        return np.rint(labels).astype(np.int64)

    def shape_id(self, i: int) -> str:
        """``<synset>/<model id>`` of sample ``i``."""
        synset, shape_id = self._ids[self._index(i)]
        return f"{synset}/{shape_id}"
