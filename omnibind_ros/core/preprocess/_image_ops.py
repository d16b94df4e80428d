"""Array checks and the resize/normalise steps shared by the image-like modalities.

OpenCV is imported inside :func:`fit_square` so that importing the preprocess package stays cheap.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from omnibind_ros.core.errors import (
    EmptyInputError,
    InvalidDtypeError,
    InvalidShapeError,
    PreprocessError,
)


def require_array(value: object, what: str) -> np.ndarray:
    """Return ``value`` as an ndarray, or raise InvalidDtypeError naming ``what``."""
    if not isinstance(value, np.ndarray):
        raise InvalidDtypeError(f"{what} must be a numpy array, got {type(value).__name__}")
    return value


def require_image(image: object, what: str, dtypes: Sequence[type],
                  channels: Sequence[int | None]) -> np.ndarray:
    """Check an HxW / HxWxC array: non-empty, dtype in ``dtypes``, C in ``channels``.

    ``None`` in ``channels`` admits a 2-D array (no channel axis).
    """
    image = require_array(image, what)
    names = ", ".join(np.dtype(d).name for d in dtypes)
    if image.dtype not in [np.dtype(d) for d in dtypes]:
        raise InvalidDtypeError(f"{what} must have dtype {names}, got {image.dtype}")
    shapes = ", ".join("HxW" if c is None else f"HxWx{c}" for c in channels)
    ok = (image.ndim == 2 and None in channels) or (image.ndim == 3 and image.shape[2] in channels)
    if not ok:
        raise InvalidShapeError(f"{what} must have shape {shapes}, got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise EmptyInputError(f"{what} is empty: shape {image.shape}")
    return image


def _interpolation_flag(name: str, shrinking: bool) -> int:
    import cv2

    if name == "auto":
        # Area averaging anti-aliases when shrinking; it degenerates to near-nearest when
        # enlarging, where bilinear is the better choice.
        return cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR,
            "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}[name]


def centre_square(image: np.ndarray) -> np.ndarray:
    """Return the largest centred square view of an HxW[xC] array (no copy)."""
    h, w = image.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return image[y0:y0 + side, x0:x0 + side]


def fit_square(image: np.ndarray, size: int, mode: str, interpolation: str) -> np.ndarray:
    """Resize an HxW or HxWxC (C <= 4) array to ``size`` x ``size``.

    Parameters
    ----------
    image : [H, W] or [H, W, C] uint8, uint16 or float32.
    size : output side in pixels.
    mode : "crop": centre-crop the largest square, then resize (the same as resizing the
        shorter side to ``size`` and centre-cropping, without resizing pixels that are cut);
        "stretch": resize H and W independently (aspect ratio not kept).
    interpolation : "auto" (area when shrinking, bilinear when enlarging), "nearest", "linear",
        "cubic" or "area".

    Returns
    -------
    [size, size] or [size, size, C] array of the input dtype.
    """
    if mode == "crop":
        image = centre_square(image)
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    import cv2

    flag = _interpolation_flag(interpolation, shrinking=h * w > size * size)
    try:
        out = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=flag)
    except cv2.error as exc:  # e.g. a dtype/channel combination OpenCV cannot resize
        raise PreprocessError(
            f"resize of a {image.shape} {image.dtype} array to {size}x{size} failed: {exc}"
        ) from exc
    if image.ndim == 3 and out.ndim == 2:  # OpenCV drops a trailing channel axis of size 1
        out = out[:, :, None]
    return out


def normalise_chw(hwc: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Return ``(hwc - mean) / std`` as a contiguous float32 [C, H, W] array."""
    chw = np.transpose(hwc.astype(np.float32, copy=False), (2, 0, 1))
    mean_a = np.asarray(mean, dtype=np.float32)[:, None, None]
    std_a = np.asarray(std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((chw - mean_a) / std_a, dtype=np.float32)
