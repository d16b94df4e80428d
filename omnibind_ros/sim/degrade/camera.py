"""RGB camera degradations on uint8 ``[H, W, 3]`` (or ``[H, W]``) images.

The physics happens in linear light: the image is decoded with a 2.2 gamma, degraded, and
encoded and quantised back to uint8, as a camera's pipeline does after the sensor.
"""
from __future__ import annotations

import cv2
import numpy as np

from omnibind_ros.sim.degrade.registry import degradation

#: Display gamma of the rendered images (sRGB is close to 2.2).
GAMMA = 2.2
#: Full-well capacity and read noise of a small CMOS pixel (electrons), for the noise model.
FULL_WELL_E = 6000.0
READ_NOISE_E = 3.0
#: The most analog gain auto-exposure applies before giving up (a typical 12 dB limit).
MAX_GAIN = 4.0


def line_psf(length: float, angle: float) -> tuple[np.ndarray, float, float]:
    """A normalised linear point-spread function ``length`` px long at ``angle`` (rad), drawn
    anti-aliased, and its half extent ``(dx, dy)``: blur along a straight motion."""
    size = int(np.ceil(length)) | 1
    kernel = np.zeros((size, size), np.float32)
    c, dx, dy = size // 2, 0.5 * length * np.cos(angle), 0.5 * length * np.sin(angle)
    cv2.line(kernel, (int(round(c - dx)), int(round(c - dy))),
             (int(round(c + dx)), int(round(c + dy))), 1.0, thickness=1, lineType=cv2.LINE_AA)
    return kernel / kernel.sum(), dx, dy


def to_linear(image: np.ndarray) -> np.ndarray:
    """uint8 image -> float32 linear light in [0, 1]."""
    return (image.astype(np.float32) / 255.0) ** GAMMA


def to_uint8(linear: np.ndarray) -> np.ndarray:
    """Linear light -> clipped, gamma-encoded, quantised uint8 (the sensor's ADC and ISP)."""
    encoded = np.clip(linear, 0.0, 1.0) ** (1.0 / GAMMA)
    return np.round(encoded * 255.0).astype(np.uint8)


def _grid(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape[:2]
    return np.mgrid[0:h, 0:w].astype(np.float32)


def _per_pixel(mask: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A [H, W] map broadcast over the channels of ``like``."""
    return mask[..., None] if like.ndim == 3 else mask


@degradation("image", "dark")
def dark(image: np.ndarray, severity: float, rng: np.random.Generator, **_: object
         ) -> np.ndarray:
    """Underexposure: the exposure falls to 2 % of normal at severity 1 (``(1 - s)^2``
    shaped, a dusk-to-night range); auto-exposure raises analog gain up to 4x, which lifts
    the signal and its Poisson shot noise and 3 e- read noise alike (6000 e- full well), and
    the 8-bit ADC quantises what is left: a dim, grainy, banded image."""
    exposure = 0.02 + 0.98 * (1.0 - severity) ** 2
    gain = min(1.0 / exposure, MAX_GAIN)
    electrons = to_linear(image) * FULL_WELL_E * exposure
    noisy = rng.poisson(electrons).astype(np.float32) \
        + rng.normal(0.0, READ_NOISE_E, image.shape).astype(np.float32)
    return to_uint8(noisy * gain / FULL_WELL_E)


@degradation("image", "glare")
def glare(image: np.ndarray, severity: float, rng: np.random.Generator, **_: object
          ) -> np.ndarray:
    """A bright light source in or near the view: a veiling-glare blob (Gaussian, radius up to
    half the image, peak up to 6x full scale) plus a uniform veil of scattered light (up to
    30 % of full scale) that washes out contrast; charge above full well blooms into the
    neighbours (the excess spread by a Gaussian of 3 % of the width) before clipping at 255."""
    h, w = image.shape[:2]
    yy, xx = _grid(image.shape)
    cy, cx = rng.uniform(-0.1, 1.1) * h, rng.uniform(-0.1, 1.1) * w
    sigma = (0.1 + 0.4 * severity) * max(h, w) / 2.0
    blob = 6.0 * severity * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * sigma ** 2))
    tint = rng.uniform(0.85, 1.0, 3).astype(np.float32) if image.ndim == 3 else 1.0
    light = to_linear(image) + _per_pixel(blob + 0.3 * severity, image) * tint
    excess = np.maximum(light - 1.0, 0.0)
    bloom = cv2.GaussianBlur(excess, (0, 0), sigmaX=max(0.03 * w, 1.0))
    return to_uint8(light + bloom)


@degradation("image", "motion_blur")
def motion_blur(image: np.ndarray, severity: float, rng: np.random.Generator, **_: object
                ) -> np.ndarray:
    """Camera or object motion during the exposure: a linear point-spread function along a
    random direction, up to 15 % of the image width long at severity 1 (a 30 deg/s pan at
    1/30 s on a 40 deg lens), integrated in linear light."""
    w = image.shape[1]
    length = 1.0 + severity * 0.15 * w
    kernel, _, _ = line_psf(length, rng.uniform(0.0, np.pi))
    blurred = cv2.filter2D(to_linear(image), -1, kernel, borderType=cv2.BORDER_REFLECT)
    return to_uint8(blurred)


@degradation("image", "occlusion")
def occlusion(image: np.ndarray, severity: float, rng: np.random.Generator, **_: object
              ) -> np.ndarray:
    """Something close to the lens (a hand, a cable, a leaf) covers a fraction ``severity`` of
    the view: it enters from a random side with a wavy edge, is out of focus (soft edge,
    Gaussian of 2 % of the width) and dark and almost uniform (it is unlit from the front)."""
    h, w = image.shape[:2]
    yy, xx = _grid(image.shape)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    along = (xx - w / 2) * np.cos(angle) + (yy - h / 2) * np.sin(angle)
    across = -(xx - w / 2) * np.sin(angle) + (yy - h / 2) * np.cos(angle)
    wave = 0.06 * max(h, w) * np.sin(2 * np.pi * across / max(h, w) * rng.uniform(0.5, 2.0)
                                     + rng.uniform(0, 2 * np.pi))
    depth = along + wave
    edge = np.quantile(depth, 1.0 - severity)  # the covered fraction is the severity
    cover = (depth >= edge).astype(np.float32)
    cover = cv2.GaussianBlur(cover, (0, 0), sigmaX=max(0.02 * w, 0.5))
    colour = rng.uniform(0.005, 0.04) * rng.uniform(0.7, 1.0, 3).astype(np.float32)
    occluder = colour if image.ndim == 3 else colour.mean()
    alpha = _per_pixel(cover, image)
    return to_uint8(to_linear(image) * (1.0 - alpha) + occluder * alpha)


@degradation("image", "lens_dirt")
def lens_dirt(image: np.ndarray, severity: float, rng: np.random.Generator, **_: object
              ) -> np.ndarray:
    """Dust, drops and fingerprints on the front glass: 2-10 smudges (count and opacity grow
    with severity, opacity up to 0.85), far out of focus (blurred by 4 % of the width). A
    smudge absorbs some light and scatters the rest over the image, so it shows as a soft
    patch that pulls towards the image's mean brightness: contrast is lost under it."""
    h, w = image.shape[:2]
    mask = np.zeros((h, w), np.float32)
    for _ in range(2 + int(round(8 * severity))):
        centre = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        axes = (int(rng.uniform(0.05, 0.2) * w) + 1, int(rng.uniform(0.05, 0.2) * h) + 1)
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360,
                    float(rng.uniform(0.5, 1.0)), thickness=-1)
    mask = np.clip(cv2.GaussianBlur(mask, (0, 0), sigmaX=max(0.04 * w, 1.0)), 0.0, 1.0)
    alpha = _per_pixel(0.85 * severity * mask, image)
    light = to_linear(image)
    scattered = 0.8 * light.mean(axis=(0, 1))  # absorbs 20 %, spreads the rest evenly
    return to_uint8(light * (1.0 - alpha) + scattered * alpha)
