"""Tactile preprocessing: vision-based tactile image minus its no-contact reference.

A GelSight/DIGIT image is mostly the gel's own illumination pattern; what touches it shows only
as a change from the no-contact image. The model therefore sees the signed difference
``gain * (image - reference) / 255`` (clipped to [-1, 1] by default), resized to ``size``:
float32 [3, size, size], channels R, G, B, zero where nothing touches.

The reference comes from the payload (:attr:`TactileFrame.reference`) or, when the payload has
none, from :class:`TactilePreprocessor`, which averages the first ``reference_frames`` frames it
sees (the sensor must not be touched while it starts) until :meth:`reset_reference`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omnibind_ros.core.errors import (
    InvalidDtypeError,
    InvalidShapeError,
    MissingReferenceError,
)
from omnibind_ros.core.preprocess import _config as cfg
from omnibind_ros.core.preprocess._image_ops import fit_square, require_image
from omnibind_ros.core.types import TactileFrame

__all__ = ["TactilePreprocessConfig", "TactilePreprocessor", "preprocess_tactile",
           "tactile_difference"]


@dataclass(frozen=True)
class TactilePreprocessConfig(cfg.ConfigMixin):
    """How a tactile frame becomes a model input.

    Attributes
    ----------
    gain : multiplies the difference scaled to [-1, 1] (contact changes are a few percent of
        full scale, so a gain > 1 uses the input range).
    clip : clip ``gain * difference`` to [-1, 1].
    size : output side in pixels (square output).
    resize_mode : "crop" (shorter side + centre crop) or "stretch".
    interpolation : see :class:`~omnibind_ros.core.preprocess.image.ImagePreprocessConfig`.
    reference_frames : frames averaged into the reference by :class:`TactilePreprocessor` when
        payloads carry none (averaging lowers the reference's sensor noise).
    use_payload_reference : use :attr:`TactileFrame.reference` when present; false makes
        :class:`TactilePreprocessor` always use its captured reference.
    """

    gain: float = 4.0
    clip: bool = True
    size: int = 160
    resize_mode: str = "crop"
    interpolation: str = "auto"
    reference_frames: int = 1
    use_payload_reference: bool = True

    def __post_init__(self) -> None:
        cfg.normalise_fields(
            self,
            gain=cfg.as_float(self, "gain", low=0.0, low_open=True),
            clip=cfg.as_bool(self, "clip"),
            size=cfg.as_int(self, "size", minimum=1),
            resize_mode=cfg.as_choice(self, "resize_mode", cfg.RESIZE_MODES),
            interpolation=cfg.as_choice(self, "interpolation", cfg.INTERPOLATIONS),
            reference_frames=cfg.as_int(self, "reference_frames", minimum=1),
            use_payload_reference=cfg.as_bool(self, "use_payload_reference"),
        )


def _check_rgb(image: object, what: str) -> np.ndarray:
    return require_image(image, what, (np.uint8,), (3,))


def _difference(image: np.ndarray, reference: np.ndarray,
                config: TactilePreprocessConfig) -> np.ndarray:
    if image.shape != reference.shape:
        raise InvalidShapeError(
            f"tactile image {image.shape} and reference {reference.shape} must have equal shapes")
    diff = (image.astype(np.float32) - reference.astype(np.float32)) / np.float32(255.0)
    # Resizing is linear, so resizing the difference equals differencing resized images.
    diff = fit_square(diff, config.size, config.resize_mode, config.interpolation)
    diff = diff * np.float32(config.gain)
    if config.clip:
        diff = np.clip(diff, -1.0, 1.0)
    return np.ascontiguousarray(diff.transpose(2, 0, 1), dtype=np.float32)


def tactile_difference(image: np.ndarray, reference: np.ndarray,
                       config: TactilePreprocessConfig) -> np.ndarray:
    """Return the scaled signed difference of a tactile image to its reference.

    Parameters
    ----------
    image : uint8 [H, W, 3] RGB tactile image in contact.
    reference : uint8 [H, W, 3] RGB no-contact image of the same gel.
    config : the preprocessing config.

    Returns
    -------
    float32 [3, size, size]: ``gain * (image - reference) / 255``, clipped to [-1, 1] when
    ``config.clip``.

    Raises
    ------
    InvalidDtypeError, InvalidShapeError, EmptyInputError
        Not uint8, not [H, W, 3], shapes differ, or 0 pixels.
    """
    return _difference(_check_rgb(image, "tactile image"),
                       _check_rgb(reference, "tactile reference"), config)


def preprocess_tactile(frame: TactileFrame, config: TactilePreprocessConfig) -> np.ndarray:
    """Stateless: :func:`tactile_difference` of ``frame.image`` and ``frame.reference``.

    Raises
    ------
    MissingReferenceError
        ``frame.reference`` is None (use :class:`TactilePreprocessor` to capture one).
    """
    if not isinstance(frame, TactileFrame):
        raise InvalidDtypeError(f"expected a TactileFrame, got {type(frame).__name__}")
    if frame.reference is None:
        raise MissingReferenceError(
            "tactile frame has no reference image; pass one or use TactilePreprocessor, which "
            "captures the first frames as the reference")
    return tactile_difference(frame.image, frame.reference, config)


class TactilePreprocessor:
    """Stateful tactile preprocessor that captures its own reference when payloads lack one.

    While fewer than ``config.reference_frames`` frames have been captured, each frame without
    a usable payload reference is added to the reference average and the output is its
    difference to the partial average (near zero: the sensor is assumed untouched then).
    """

    def __init__(self, config: TactilePreprocessConfig | None = None) -> None:
        self.config = config or TactilePreprocessConfig()
        self._sum: np.ndarray | None = None
        self._count = 0

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Shape of the model input: (3, size, size)."""
        return (3, self.config.size, self.config.size)

    @property
    def reference(self) -> np.ndarray | None:
        """The captured reference, float32 [H, W, 3] in 0..255, or None before the first frame."""
        return None if self._sum is None else self._sum / np.float32(self._count)

    @property
    def reference_ready(self) -> bool:
        """True once ``reference_frames`` frames have been averaged into the reference."""
        return self._count >= self.config.reference_frames

    def reset_reference(self) -> None:
        """Forget the captured reference; the next frames are captured again."""
        self._sum, self._count = None, 0

    def set_reference(self, reference: np.ndarray) -> None:
        """Use ``reference`` (uint8 [H, W, 3]) as the complete captured reference."""
        ref = _check_rgb(reference, "tactile reference").astype(np.float32)
        self._sum, self._count = ref * self.config.reference_frames, self.config.reference_frames

    def __call__(self, frame: TactileFrame) -> np.ndarray:
        """Return the model input for ``frame``: float32 [3, size, size].

        Raises
        ------
        InvalidShapeError
            The frame's size differs from the captured reference (call :meth:`reset_reference`
            after changing the sensor's resolution), or the errors of :func:`tactile_difference`.
        """
        if not isinstance(frame, TactileFrame):
            raise InvalidDtypeError(f"expected a TactileFrame, got {type(frame).__name__}")
        if frame.reference is not None and self.config.use_payload_reference:
            return tactile_difference(frame.image, frame.reference, self.config)
        image = _check_rgb(frame.image, "tactile image")
        if self._sum is not None and self._sum.shape != image.shape:
            raise InvalidShapeError(
                f"tactile image {image.shape} differs from the captured reference "
                f"{self._sum.shape}; call reset_reference() after a resolution change")
        if not self.reference_ready:
            frame_f = image.astype(np.float32)
            self._sum = frame_f if self._sum is None else self._sum + frame_f
            self._count += 1
        return _difference(image, self.reference, self.config)
