"""Teach a bundle a new sensor from one recording (``omnibind-train teach``).

A robot gets a new sensor (a thermal camera, a tactile pad...) next to its camera. One bag of
the two, no labels needed: the new sensor's messages are paired with the camera frames nearest
in time, distilled into the bundle's space by CAD with the bundle's image encoder as the teacher
(seed 000 Sec. 3.2, image as the align centre), the AF head is retrained with the new modality
(pseudo-labels from the image teacher where there are no labels, Sec. 3.3), and an updated
bundle is exported next to the old one, with the bag, topics, span and pairing counts in its
provenance.

Modules: :mod:`.config` (``TeachConfig``), :mod:`.pairing` (nearest-stamp pairing),
:mod:`.bagdata` (the bag read through ``omnibind_ros.bag_inputs`` and encoded),
:mod:`.bundle_io` (the input bundle's torch modules, the student, the training run),
:mod:`.fusion_rows` (stage II rows by label-level matching), :mod:`.train` (:func:`teach`),
:mod:`.experiment` (the evidence: a bundle without a modality, zero-shot accuracies).
"""
from .bundle_io import TeachError
from .config import TeachConfig
from .pairing import Pairing, pair_nearest
from .train import TeachResult, teach, time_folds

__all__ = ["Pairing", "TeachConfig", "TeachError", "TeachResult", "pair_nearest", "teach",
           "time_folds"]
