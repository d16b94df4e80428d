"""The label vocabularies of UniAlign's per-modality data sets on the simulated world.

UniAlign joins data sets that were labelled independently: SUN RGB-D names scenes, ShapeNet
names shapes, AudioSet names sound events. Its soft binding (Eq. 10-11) exists to bridge such
vocabularies. The analogue gives every extended modality its own labelled data set whose label
words are what that sensor can tell, and which covers only part of the 18 classes:

=============  ============================  ======  ==============================================
modality       labels name                   labels  why
=============  ============================  ======  ==============================================
thermal        warmth + shape ("cold mug")   18      temperature follows the material (SUN-D-like)
event          moving shape outline          6       an event camera sees edges, not materials
audio          the impact's sound event      3       an impact sounds of its material only
tactile        the surface's texture         3       touch feels the material's texture
point_cloud    shape name (synonyms)         6       geometry only (ShapeNet-like)
image          the class name                18      ImageNet-like (used when image experts train)
=============  ============================  ======  ==============================================

Each extended data set keeps 12 of the 18 classes (a seeded choice per modality), so the data
sets overlap only partly. The words are this module's choice; the paper's data sets come with
their own.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from omnibind_ros.sim.catalog import CLASSES, ObjectClass

__all__ = ["DATASET_CLASSES", "LabelVocab", "class_name", "vocab_for"]

#: Classes each extended modality's data set keeps (the others are absent from it).
DATASET_CLASSES = 12

_WARMTH = {"metal": "cold", "wooden": "lukewarm", "plastic": "warm"}
_SOUND = {"metal": "metallic clang", "wooden": "hollow wooden knock",
          "plastic": "sharp plastic click"}
_TEXTURE = {"metal": "smooth brushed metal", "wooden": "ridged wood grain",
            "plastic": "pebbled plastic"}
_SHAPE_SYNONYM = {"mug": "cup", "duck": "rubber duck", "bunny": "rabbit figure",
                  "torus": "ring", "cone": "traffic cone", "teddy bear": "teddy"}


def class_name(obj: ObjectClass) -> str:
    """The runtime's label of a class ("metal mug")."""
    return f"{obj.material.name} {obj.shape.name}"


def _label(modality: str, obj: ObjectClass) -> str:
    shape, material = obj.shape.name, obj.material.name
    if modality == "thermal":
        return f"{_WARMTH[material]} {shape}"
    if modality == "event":
        return f"moving {shape} outline"
    if modality == "audio":
        return _SOUND[material]
    if modality == "tactile":
        return _TEXTURE[material]
    if modality == "point_cloud":
        return _SHAPE_SYNONYM.get(shape, shape)
    if modality == "image":
        return class_name(obj)
    raise ValueError(f"no label vocabulary for modality {modality!r}")


@dataclass(frozen=True)
class LabelVocab:
    """One data set's labels.

    Attributes
    ----------
    modality : the data set's modality.
    names : its label names (distinct, in first-seen class order).
    class_label : per world class, its label index in ``names``, or -1 when the data set does
        not contain that class.
    """

    modality: str
    names: tuple[str, ...]
    class_label: tuple[int, ...]

    def labels_of(self, classes: Sequence[int] | np.ndarray) -> np.ndarray:
        """Label index per sample of world class ``classes`` (-1: not in this data set)."""
        table = np.asarray(self.class_label, dtype=np.int64)
        return table[np.asarray(classes, dtype=np.int64)]

    @property
    def kept_classes(self) -> list[int]:
        return [c for c, lab in enumerate(self.class_label) if lab >= 0]


def vocab_for(modality: str, *, seed: int = 0, keep: int | None = DATASET_CLASSES,
              objects: Sequence[ObjectClass] = CLASSES) -> LabelVocab:
    """The label vocabulary of ``modality``'s data set. ``keep`` classes survive (a seeded
    choice per modality; None or the image data set: all)."""
    n = len(objects)
    kept = np.arange(n)
    if keep is not None and modality != "image" and keep < n:
        salt = sum(ord(ch) for ch in modality)
        kept = np.sort(np.random.default_rng([seed, salt]).permutation(n)[:keep])
    names: list[str] = []
    table = [-1] * n
    for c in kept:
        name = _label(modality, objects[int(c)])
        if name not in names:
            names.append(name)
        table[int(c)] = names.index(name)
    return LabelVocab(modality, tuple(names), tuple(table))
