"""LLVIP (Jia et al. 2021): 15,488 aligned visible/infrared pairs of night street scenes.

Published layout (the extracted ``LLVIP`` folder)::

    <root>/visible/{train,test}/<id>.jpg     RGB, 1280 x 1024
    <root>/infrared/{train,test}/<id>.jpg    8-bit (AGC'd) infrared, saved as 3 equal channels
    <root>/Annotations/<id>.xml              Pascal VOC: <size>, <object><name>person</name>
                                             <bndbox><xmin>..<ymax></bndbox></object> ...

(12,025 train / 3,463 test pairs; the test annotations hold 7,931 persons.) A pair shares its
id and its annotation file.

Classification protocol (ImageBind's, followed by seed 000 for its 15,809 balanced boxes):
binary "person" vs "background" crops. Every ``person`` box of the split's images is a positive
crop; for each positive, one random box of the *same width and height* is placed uniformly in
the same image so that it does not intersect any person box of that image (``max_tries``
uniform draws). When it does not fit there, other images of the split are tried in a seeded
random order (at most ``max_images`` of them). Random boxes are drawn from a generator seeded
by ``(seed, image index, box index)``, so the set is reproducible and independent of reading
order. Should some random box find no place at all, as many positives are dropped (the last
ones) to keep the two classes equal, with a warning.

Boxes are used as written, as half-open pixel ranges ``[xmin, xmax) x [ymin, ymax)`` clipped to
the image; empty ones are skipped. Image sizes come from the XML ``<size>`` (read from the image
when absent). Samples are ordered by image, positives before the random boxes of that image.

Raw samples are :class:`~omnibind_ros.core.types.ThermalFrame` crops of the infrared image
(``encoding="mono8"``: no radiometric scale, as the core thermal preprocessing expects of AGC'd
8-bit frames); :meth:`LLVIP.visible` gives the paired RGB crop of the visible image.
"""
from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from omnibind_ros.core.types import ThermalFrame

from .base import (
    DatasetFormatError,
    DatasetLayoutError,
    DatasetReader,
    read_image_gray,
    read_image_rgb,
    require_dir,
)

__all__ = ["LLVIP", "read_voc"]

Box = tuple[int, int, int, int]


def read_voc(path: Path, names: tuple[str, ...] = ("person",)
             ) -> tuple[tuple[int, int] | None, list[Box]]:
    """``((width, height) or None, boxes)`` of a VOC annotation, boxes of objects named in
    ``names`` (case-insensitive) as ``(xmin, ymin, xmax, ymax)`` integers."""
    if not path.is_file():
        raise DatasetLayoutError(f"{path} is missing")
    try:
        tree = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DatasetFormatError(f"{path}: {exc}") from None
    size = None
    w, h = tree.findtext("size/width"), tree.findtext("size/height")
    if w and h and int(float(w)) > 0 and int(float(h)) > 0:
        size = (int(float(w)), int(float(h)))
    wanted = {n.lower() for n in names}
    boxes = []
    for obj in tree.iter("object"):
        if (obj.findtext("name") or "").strip().lower() not in wanted:
            continue
        try:
            boxes.append(tuple(int(round(float(obj.findtext(f"bndbox/{k}"))))
                               for k in ("xmin", "ymin", "xmax", "ymax")))
        except (TypeError, ValueError):
            raise DatasetFormatError(f"{path}: an object lacks a numeric bndbox") from None
    return size, boxes


def _clip(box: Box, size: tuple[int, int]) -> Box | None:
    x0, y0 = max(0, box[0]), max(0, box[1])
    x1, y1 = min(size[0], box[2]), min(size[1], box[3])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _place(rng: np.random.Generator, w: int, h: int, size: tuple[int, int],
           avoid: np.ndarray, tries: int) -> Box | None:
    """A w x h box uniformly placed in ``size`` not intersecting any box of ``avoid``."""
    if w > size[0] or h > size[1]:
        return None
    x0 = rng.integers(0, size[0] - w + 1, size=tries)
    y0 = rng.integers(0, size[1] - h + 1, size=tries)
    if len(avoid):
        hit = ((x0[:, None] < avoid[None, :, 2]) & (avoid[None, :, 0] < x0[:, None] + w)
               & (y0[:, None] < avoid[None, :, 3]) & (avoid[None, :, 1] < y0[:, None] + h))
        free = np.flatnonzero(~hit.any(axis=1))
    else:
        free = np.arange(tries)
    if not free.size:
        return None
    k = int(free[0])
    return int(x0[k]), int(y0[k]), int(x0[k]) + w, int(y0[k]) + h


class LLVIP(DatasetReader):
    """LLVIP person / background crops of one split (ImageBind's protocol, module docstring).

    Parameters
    ----------
    root : the ``LLVIP`` folder.
    split : "test" (the protocol's) or "train".
    seed : seed of the random boxes.
    max_tries : uniform draws per random box and image.
    max_images : other images tried for a random box that does not fit in its own.
    """

    name = "LLVIP"
    modality = "thermal"
    LABELS = ("background", "person")

    def __init__(self, root: str | Path, split: str = "test", *, seed: int = 0,
                 max_tries: int = 100, max_images: int = 20) -> None:
        super().__init__(root)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.split, self.seed = split, seed
        ir_dir = require_dir(self.root, self.name, f"infrared/{split}")
        self._vis_dir = require_dir(self.root, self.name, f"visible/{split}")
        ann_dir = require_dir(self.root, self.name, "Annotations")
        self.label_names = self.LABELS
        files = sorted(p.name for p in ir_dir.iterdir() if p.suffix.lower() == ".jpg")
        self._images = [ir_dir / f for f in files]
        sizes: list[tuple[int, int]] = []
        persons: list[np.ndarray] = []
        for f in files:
            size, boxes = read_voc(ann_dir / (Path(f).stem + ".xml"))
            if size is None:
                h, w = read_image_gray(ir_dir / f).shape
                size = (w, h)
            clipped = [b for b in (_clip(b, size) for b in boxes) if b is not None]
            sizes.append(size)
            persons.append(np.array(clipped, dtype=np.int64).reshape(-1, 4))
        positives = [(k, tuple(int(v) for v in b)) for k, p in enumerate(persons) for b in p]
        negatives, unplaced = [], 0
        for j, (k, (x0, y0, x1, y1)) in enumerate(positives):
            rng = np.random.default_rng([seed, k, j])
            order = [k] + [int(m) for m in rng.permutation(len(files)) if m != k][:max_images]
            for m in order:
                box = _place(rng, x1 - x0, y1 - y0, sizes[m], persons[m], max_tries)
                if box is not None:
                    negatives.append((m, box))
                    break
            else:
                unplaced += 1
        if unplaced:
            warnings.warn(f"LLVIP {split}: {unplaced} random boxes found no place; the last "
                          f"{unplaced} person boxes are dropped to keep the classes balanced",
                          stacklevel=2)
            positives = positives[:len(positives) - unplaced]
        items = sorted([(k, 0, n, b, 1) for n, (k, b) in enumerate(positives)]
                       + [(k, 1, n, b, 0) for n, (k, b) in enumerate(negatives)])
        self._boxes = [(k, b) for k, _, _, b, _ in items]
        self._paths = [self._images[k] for k, _ in self._boxes]
        self._labels = np.array([lab for *_, lab in items], dtype=np.int64)

    def box(self, i: int) -> tuple[str, Box]:
        """``(image id, (x0, y0, x1, y1))`` of sample ``i``."""
        k, b = self._boxes[self._index(i)]
        return self._images[k].stem, b

    def load(self, i: int) -> ThermalFrame:
        """The infrared crop, uint8 ``[h, w]``, as a mono8 :class:`ThermalFrame`."""
        k, (x0, y0, x1, y1) = self._boxes[self._index(i)]
        crop = read_image_gray(self._images[k])[y0:y1, x0:x1]
        return ThermalFrame(data=np.ascontiguousarray(crop), encoding="mono8")

    def visible(self, i: int) -> np.ndarray:
        """The paired visible crop, uint8 ``[h, w, 3]`` RGB."""
        k, (x0, y0, x1, y1) = self._boxes[self._index(i)]
        image = read_image_rgb(self._vis_dir / self._images[k].name)
        return np.ascontiguousarray(image[y0:y1, x0:x1])
