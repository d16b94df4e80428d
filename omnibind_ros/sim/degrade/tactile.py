"""Vision-based tactile (GelSight/DIGIT-like) degradations on
:class:`~omnibind_ros.core.types.TactileFrame`.

A contact shows as the difference between the gel image and its no-contact reference; each
degradation reshapes that difference (the imprint) and adds it back to the reference, so the
reference stays the true empty gel. A frame without a reference uses its per-channel median as
the empty gel (most of a GelSight patch is untouched).
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from omnibind_ros.core.types import TactileFrame
from omnibind_ros.sim.degrade.camera import line_psf
from omnibind_ros.sim.degrade.registry import degradation

#: Sensor noise of the gel camera (uint8 levels, standard deviation).
CAMERA_NOISE = 1.5


def _reference(frame: TactileFrame) -> np.ndarray:
    if frame.reference is not None:
        return frame.reference.astype(np.float32)
    image = frame.image.astype(np.float32)
    return np.broadcast_to(np.median(image, axis=(0, 1)), image.shape).copy()


def imprint(frame: TactileFrame) -> np.ndarray:
    """float32 [H, W, 3] image minus reference (the contact's signature)."""
    return frame.image.astype(np.float32) - _reference(frame)


def _with_imprint(frame: TactileFrame, difference: np.ndarray, rng: np.random.Generator,
                  noise: float = CAMERA_NOISE) -> TactileFrame:
    image = _reference(frame) + difference + rng.normal(0.0, noise, difference.shape)
    return dataclasses.replace(frame, image=np.clip(np.round(image), 0, 255).astype(np.uint8))


@degradation("tactile", "partial_contact")
def partial_contact(frame: TactileFrame, severity: float, rng: np.random.Generator,
                    **_: object) -> TactileFrame:
    """The finger meets the object at an angle or at its edge: only part of the patch is
    pressed. The imprint is cut by a soft line (8 % of the width) at a random angle, leaving
    a fraction ``1 - 0.9 * severity`` of the patch in contact."""
    diff = imprint(frame)
    h, w = diff.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    along = (xx - w / 2) * np.cos(angle) + (yy - h / 2) * np.sin(angle)
    cut = np.quantile(along, 1.0 - 0.9 * severity)
    keep = 1.0 / (1.0 + np.exp((along - cut) / (0.08 * w / 4.0)))
    return _with_imprint(frame, diff * keep[..., None], rng)


@degradation("tactile", "no_contact")
def no_contact(frame: TactileFrame, severity: float, rng: np.random.Generator,
               **_: object) -> TactileFrame:
    """The finger misses or barely touches: the imprint fades to nothing as severity reaches
    1 (press depth scales with ``1 - severity``), leaving the flat gel and the camera's
    noise (1.5 levels)."""
    return _with_imprint(frame, imprint(frame) * (1.0 - severity), rng)


@degradation("tactile", "slip")
def slip(frame: TactileFrame, severity: float, rng: np.random.Generator,
         **_: object) -> TactileFrame:
    """The object slides during the exposure: the imprint is smeared along the slip direction
    (a linear blur up to 25 % of the patch width) and shifted by half that (shear of the gel),
    so texture and edges wash out."""
    diff = imprint(frame)
    h, w = diff.shape[:2]
    length = 1.0 + 0.25 * w * severity
    kernel, dx, dy = line_psf(length, rng.uniform(0.0, np.pi))
    smeared = cv2.filter2D(diff, -1, kernel, borderType=cv2.BORDER_CONSTANT)
    shift = np.float32([[1, 0, 0.5 * dx], [0, 1, 0.5 * dy]])
    sheared = cv2.warpAffine(smeared, shift, (w, h), borderMode=cv2.BORDER_CONSTANT)
    return _with_imprint(frame, sheared, rng)
