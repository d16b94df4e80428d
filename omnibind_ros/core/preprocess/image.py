"""Image preprocessing: uint8/uint16 camera image -> normalised float32 [3, size, size].

The defaults (160 px, mean = std = 0.5 per channel, i.e. inputs in [-1, 1]) match the default
EfficientNet-Lite0 image trunk; a bundle built on another trunk stores its own values.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omnibind_ros.core.errors import InvalidShapeError, UnsupportedEncodingError
from omnibind_ros.core.preprocess import _config as cfg
from omnibind_ros.core.preprocess._image_ops import fit_square, normalise_chw, require_image

__all__ = ["CHANNEL_ORDERS", "ImagePreprocessConfig", "ImagePreprocessor", "preprocess_image"]

#: Accepted channel orders and the number of channels each implies (None: a 2-D array).
CHANNEL_ORDERS: dict[str, tuple[int | None, ...]] = {
    "rgb": (3,), "bgr": (3,), "rgba": (4,), "bgra": (4,), "mono": (None, 1),
}
# Index of R, G, B in the last axis for each colour order (alpha is dropped, not composited:
# camera drivers publish opaque frames, so alpha carries no scene content).
_RGB_INDEX = {"rgb": [0, 1, 2], "bgr": [2, 1, 0], "rgba": [0, 1, 2], "bgra": [2, 1, 0]}


@dataclass(frozen=True)
class ImagePreprocessConfig(cfg.ConfigMixin):
    """How a camera image becomes a model input.

    Attributes
    ----------
    size : output side in pixels (square output).
    resize_mode : "crop" (shorter side to ``size`` + centre crop) or "stretch" (plain resize).
    interpolation : "auto" (area when shrinking, bilinear when enlarging), "nearest", "linear",
        "cubic", "area".
    mean, std : per-channel (R, G, B) normalisation applied to intensities scaled to [0, 1].
    """

    size: int = 160
    resize_mode: str = "crop"
    interpolation: str = "auto"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        cfg.normalise_fields(
            self,
            size=cfg.as_int(self, "size", minimum=1),
            resize_mode=cfg.as_choice(self, "resize_mode", cfg.RESIZE_MODES),
            interpolation=cfg.as_choice(self, "interpolation", cfg.INTERPOLATIONS),
            mean=cfg.as_float_tuple(self, "mean", 3),
            std=cfg.as_float_tuple(self, "std", 3, positive=True),
        )


def _to_rgb(image: np.ndarray, channel_order: str) -> np.ndarray:
    if channel_order == "mono":
        mono = image if image.ndim == 2 else image[:, :, 0]
        return np.repeat(mono[:, :, None], 3, axis=2)
    return image[:, :, _RGB_INDEX[channel_order]]


def preprocess_image(image: np.ndarray, config: ImagePreprocessConfig,
                     channel_order: str = "rgb") -> np.ndarray:
    """Map a camera image to the model input.

    Parameters
    ----------
    image : uint8 or uint16 array, [H, W] or [H, W, 1] for "mono", [H, W, 3] for "rgb"/"bgr",
        [H, W, 4] for "rgba"/"bgra" (row-major, as ``sensor_msgs/Image`` data reshaped).
        uint8 is scaled by 1/255, uint16 by 1/65535.
    config : the preprocessing config.
    channel_order : "rgb", "bgr", "rgba", "bgra" or "mono" (mono is replicated to 3 channels).

    Returns
    -------
    float32 [3, size, size], channels R, G, B, ``(x / full_scale - mean) / std``.

    Raises
    ------
    UnsupportedEncodingError
        Unknown ``channel_order``.
    InvalidDtypeError, InvalidShapeError, EmptyInputError
        Not a uint8/uint16 array, channel count not matching ``channel_order``, or 0 pixels.
    """
    if channel_order not in CHANNEL_ORDERS:
        raise UnsupportedEncodingError(
            f"unknown channel_order {channel_order!r}; expected one of "
            f"{', '.join(CHANNEL_ORDERS)}")
    try:
        image = require_image(image, f"{channel_order} image", (np.uint8, np.uint16),
                              CHANNEL_ORDERS[channel_order])
    except InvalidShapeError as exc:
        raise InvalidShapeError(f"{exc} (channel_order={channel_order!r})") from None
    full_scale = 255.0 if image.dtype == np.uint8 else 65535.0
    # Reorder first (a view), resize in the native dtype (fast paths in OpenCV), scale last.
    rgb = fit_square(_to_rgb(image, channel_order), config.size, config.resize_mode,
                     config.interpolation)
    return normalise_chw(rgb.astype(np.float32) / np.float32(full_scale), config.mean, config.std)


class ImagePreprocessor:
    """Callable image preprocessor (see :func:`preprocess_image`)."""

    def __init__(self, config: ImagePreprocessConfig | None = None) -> None:
        self.config = config or ImagePreprocessConfig()

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Shape of the model input: (3, size, size)."""
        return (3, self.config.size, self.config.size)

    def __call__(self, image: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
        """Return :func:`preprocess_image` of ``image``: float32 [3, size, size]."""
        return preprocess_image(image, self.config, channel_order)
