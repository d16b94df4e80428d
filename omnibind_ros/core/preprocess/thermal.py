"""Thermal preprocessing: radiometric frame -> temperature window -> float32 [C, size, size].

C is ``channels``: 3 (the value replicated, for trunks pre-trained on RGB, the default) or 1
(for encoders with a one-channel thermal stem, such as ImageBind's).

Encodings
---------
- "mono16" / "16UC1": uint16 radiometric counts; kelvin = counts * ``kelvin_per_count``
  (FLIR TLinear convention), then degrees Celsius.
- "32FC1": float32/float64 degrees Celsius.
- "mono8": an AGC'd (automatic gain control) 8-bit image. It has no absolute scale: the camera
  has already stretched the scene's own range to 0..255, so we treat it as *relative*:
  ``value / 255`` replaces the temperature window (the ``t_min_c``/``t_max_c`` clip is skipped)
  and the frame is not re-stretched (that would amplify noise on a uniform scene). A model
  trained on radiometric frames sees a different distribution from mono8 frames; set
  ``mono8="reject"`` to refuse them instead (UnsupportedEncodingError).

Non-finite pixels of a 32FC1 frame (dead pixels reported as NaN) are set to ``t_min_c``; a frame
with no finite pixel raises NonFiniteInputError.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omnibind_ros.core.errors import (
    InvalidDtypeError,
    InvalidValueError,
    NonFiniteInputError,
    UnsupportedEncodingError,
)
from omnibind_ros.core.preprocess import _config as cfg
from omnibind_ros.core.preprocess._image_ops import fit_square, normalise_chw, require_image
from omnibind_ros.core.types import ThermalFrame

__all__ = ["ENCODINGS", "ThermalPreprocessConfig", "ThermalPreprocessor", "preprocess_thermal",
           "thermal_to_unit"]

KELVIN_AT_0C = 273.15
#: Accepted encodings and the dtypes their data may have.
ENCODINGS: dict[str, tuple[type, ...]] = {
    "mono16": (np.uint16,), "16UC1": (np.uint16,), "32FC1": (np.float32, np.float64),
    "mono8": (np.uint8,),
}


@dataclass(frozen=True)
class ThermalPreprocessConfig(cfg.ConfigMixin):
    """How a thermal frame becomes a model input.

    Attributes
    ----------
    t_min_c, t_max_c : temperature window in degrees Celsius mapped to [0, 1] (clipped outside).
    size : output side in pixels (square output).
    resize_mode : "crop" (shorter side + centre crop) or "stretch".
    interpolation : see :class:`~omnibind_ros.core.preprocess.image.ImagePreprocessConfig`.
    mean, std : per-channel normalisation of the [0, 1] value replicated to 3 channels.
    mono8 : "relative" (accept AGC'd 8-bit frames as value / 255) or "reject".
    channels : 3 (replicate the value) or 1; with 1 only ``mean[0]`` / ``std[0]`` apply.
    """

    t_min_c: float = 0.0
    t_max_c: float = 50.0
    size: int = 160
    resize_mode: str = "crop"
    interpolation: str = "auto"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    mono8: str = "relative"
    channels: int = 3

    def __post_init__(self) -> None:
        t_min = cfg.as_float(self, "t_min_c", low=-KELVIN_AT_0C)
        t_max = cfg.as_float(self, "t_max_c")
        if t_max <= t_min:
            raise cfg.fail(self, f"t_max_c ({t_max}) must be > t_min_c ({t_min})")
        cfg.normalise_fields(
            self, t_min_c=t_min, t_max_c=t_max,
            size=cfg.as_int(self, "size", minimum=1),
            resize_mode=cfg.as_choice(self, "resize_mode", cfg.RESIZE_MODES),
            interpolation=cfg.as_choice(self, "interpolation", cfg.INTERPOLATIONS),
            mean=cfg.as_float_tuple(self, "mean", 3),
            std=cfg.as_float_tuple(self, "std", 3, positive=True),
            mono8=cfg.as_choice(self, "mono8", ("relative", "reject")),
            channels=cfg.as_int(self, "channels", minimum=1),
        )
        if self.channels not in (1, 3):
            raise cfg.fail(self, f"channels must be 1 or 3, got {self.channels}")


def _check_frame(frame: ThermalFrame, config: ThermalPreprocessConfig) -> np.ndarray:
    if not isinstance(frame, ThermalFrame):
        raise InvalidDtypeError(f"expected a ThermalFrame, got {type(frame).__name__}")
    if frame.encoding not in ENCODINGS:
        raise UnsupportedEncodingError(
            f"unknown thermal encoding {frame.encoding!r}; expected one of {', '.join(ENCODINGS)}")
    if frame.encoding == "mono8" and config.mono8 == "reject":
        raise UnsupportedEncodingError(
            "mono8 thermal frames have no absolute scale and the config has mono8='reject'")
    return require_image(frame.data, f"{frame.encoding} thermal frame",
                         ENCODINGS[frame.encoding], (None, 1))


def _celsius_to_unit(celsius: np.ndarray, config: ThermalPreprocessConfig) -> np.ndarray:
    finite = np.isfinite(celsius)
    if not finite.any():
        raise NonFiniteInputError(
            f"thermal frame of shape {celsius.shape} has no finite temperature")
    celsius = np.where(finite, celsius, config.t_min_c)
    span = config.t_max_c - config.t_min_c
    return np.clip((celsius - config.t_min_c) / span, 0.0, 1.0).astype(np.float32)


def thermal_to_unit(frame: ThermalFrame, config: ThermalPreprocessConfig) -> np.ndarray:
    """Map a thermal frame to [0, 1] at its native resolution.

    Parameters
    ----------
    frame : the frame; ``data`` [H, W] (or [H, W, 1]) as described in the module docstring.
    config : the preprocessing config (temperature window in degrees Celsius).

    Returns
    -------
    float32 [H, W] in [0, 1]: ``clip((T_c - t_min_c) / (t_max_c - t_min_c), 0, 1)`` for
    radiometric frames, ``value / 255`` for mono8.

    Raises
    ------
    UnsupportedEncodingError, InvalidDtypeError, InvalidShapeError, EmptyInputError,
    InvalidValueError (kelvin_per_count <= 0), NonFiniteInputError (no finite pixel).
    """
    data = _check_frame(frame, config)
    data = data if data.ndim == 2 else data[:, :, 0]
    if frame.encoding == "mono8":
        return data.astype(np.float32) / np.float32(255.0)
    if frame.encoding == "32FC1":
        return _celsius_to_unit(data.astype(np.float64), config)
    scale = frame.kelvin_per_count
    if isinstance(scale, bool) or not isinstance(scale, int | float | np.floating) or not (
            np.isfinite(scale) and scale > 0):
        raise InvalidValueError(
            f"kelvin_per_count must be a finite number > 0, got {frame.kelvin_per_count!r}")
    celsius = data.astype(np.float64) * float(scale) - KELVIN_AT_0C
    return _celsius_to_unit(celsius, config)


def preprocess_thermal(frame: ThermalFrame, config: ThermalPreprocessConfig) -> np.ndarray:
    """Map a thermal frame to the model input.

    Parameters
    ----------
    frame : see :func:`thermal_to_unit`.
    config : the preprocessing config.

    Returns
    -------
    float32 [channels, size, size]: the [0, 1] value resized, replicated to 3 channels
    (``channels=3``), then ``(v - mean) / std``.

    Raises
    ------
    The errors of :func:`thermal_to_unit`.
    """
    unit = thermal_to_unit(frame, config)
    # Resize before replicating: one channel is a third of the work and gives the same result.
    small = fit_square(unit, config.size, config.resize_mode, config.interpolation)
    channels = config.channels
    return normalise_chw(np.repeat(small[:, :, None], channels, axis=2),
                         config.mean[:channels], config.std[:channels])


class ThermalPreprocessor:
    """Callable thermal preprocessor (see :func:`preprocess_thermal`)."""

    def __init__(self, config: ThermalPreprocessConfig | None = None) -> None:
        self.config = config or ThermalPreprocessConfig()

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Shape of the model input: (channels, size, size)."""
        return (self.config.channels, self.config.size, self.config.size)

    def __call__(self, frame: ThermalFrame) -> np.ndarray:
        """Return :func:`preprocess_thermal` of ``frame``: float32 [3, size, size]."""
        return preprocess_thermal(frame, self.config)
