"""Exceptions raised by :mod:`omnibind_ros.core` when an input cannot be turned into a model input.

Every error derives from :class:`PreprocessError`, itself a ``ValueError``, so a node can catch
one type per message, log it and drop the message, while tests and training code can catch the
specific subclass. Messages name what was expected and what was received. Library errors
(``cv2.error``, open3d ``RuntimeError``, ``IndexError`` from numpy) never escape preprocessing:
inputs are validated first and library calls are wrapped.
"""
from __future__ import annotations

__all__ = [
    "PreprocessError",
    "PreprocessConfigError",
    "EmptyInputError",
    "EmptyRegionError",
    "NoEventsError",
    "NonFiniteInputError",
    "InvalidShapeError",
    "InvalidDtypeError",
    "InvalidValueError",
    "UnsupportedEncodingError",
    "MissingReferenceError",
    "SilentAudioError",
    "ClippedAudioError",
    "NoObjectError",
]


class PreprocessError(ValueError):
    """Base class: a raw payload (or a preprocessing config) that cannot be preprocessed."""


class PreprocessConfigError(PreprocessError):
    """A preprocessing config is invalid.

    Raised by the ``__post_init__`` of every ``*PreprocessConfig`` (value out of range, wrong
    type, wrong length of a per-channel tuple) and by ``from_dict`` (unknown keys, not a mapping).
    """


class EmptyInputError(PreprocessError):
    """The payload holds no data: a 0-sized image, an empty point cloud, an empty audio block,
    an empty string."""


class EmptyRegionError(EmptyInputError):
    """Nothing is left after cropping to the configured region of interest (point cloud)."""


class NoEventsError(EmptyInputError):
    """An event packet has zero events, or none are left in the configured time/count window."""


class NonFiniteInputError(PreprocessError):
    """The payload has no finite values at all (all-NaN cloud or thermal frame), or holds NaN/inf
    where no value can be substituted (audio samples)."""


class InvalidShapeError(PreprocessError):
    """An array has the wrong number of dimensions or channels, or arrays that must match do not
    (event x/y/t/polarity lengths, tactile image vs reference)."""


class InvalidDtypeError(PreprocessError):
    """An array has a dtype the modality does not accept (e.g. float image, int point cloud)."""


class InvalidValueError(PreprocessError):
    """Metadata is out of range: a non-positive sample rate or sensor size, event coordinates
    outside the sensor, a non-positive radiometric scale."""


class UnsupportedEncodingError(PreprocessError):
    """An encoding string (thermal ``encoding``, image ``channel_order``) is not one this module
    knows, or one the config disables."""


class MissingReferenceError(PreprocessError):
    """A stateless tactile call got a frame without its no-contact reference image."""


class SilentAudioError(PreprocessError):
    """The RMS of the audio (full scale = 1) is below the configured ``silence_rms`` floor."""


class ClippedAudioError(PreprocessError):
    """More than ``max_clip_fraction`` of the audio samples sit at full scale (clipping)."""


class NoObjectError(PreprocessError):
    """Point cloud: no cluster with enough points is left after ground removal, or the chosen
    cluster has zero extent."""
