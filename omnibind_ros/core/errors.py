"""Exceptions raised by :mod:`omnibind_ros.core` when an input cannot be turned into a model input.

Every error derives from :class:`PreprocessError`, itself a ``ValueError``, so a node can catch
one type per message, log it and drop the message, while tests and training code can catch the
specific subclass. Messages name what was expected and what was received. Library errors
(``cv2.error``, SciPy's ``ValueError``, ``IndexError`` from numpy) never escape preprocessing:
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
    "MalformedPacketError",
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


class MalformedPacketError(InvalidValueError):
    """Vendor-encoded bytes (an ``event_camera_msgs/EventPacket`` in ``evt3``, ``mono``,
    ``libcaer``, ``libcaer_cmp``) violate their format: a length that is not a whole number of
    words or records, a reserved word type, time running backwards inside a packet."""


class MissingReferenceError(PreprocessError):
    """A payload lacks the reference it needs: a stateless tactile call got a frame without its
    no-contact reference image, a depth image arrived before any CameraInfo."""


class SilentAudioError(PreprocessError):
    """The RMS of the audio (full scale = 1) is below the configured ``silence_rms`` floor."""


class ClippedAudioError(PreprocessError):
    """More than ``max_clip_fraction`` of the audio samples sit at full scale (clipping)."""


class NoObjectError(PreprocessError):
    """Point cloud: no cluster with enough points is left after ground removal, or the chosen
    cluster has zero extent."""


# ---------------------------------------------------------------------------------------------
# Model bundle and inference backends (omnibind_ros.core.bundle, omnibind_ros.core.backends).
# Not preprocessing errors: a bad bundle stops a node at configure time instead of dropping one
# message, so these derive from RuntimeError and carry the offending path where there is one.

__all__ += [  # extends the list at the top of the module
    "BundleError",
    "BundleNotFoundError",
    "BundleCorruptError",
    "BundleIncompatibleError",
    "BackendUnavailableError",
]


class BundleError(RuntimeError):
    """Base class: a model bundle cannot be used.

    Attributes
    ----------
    path : the bundle directory, archive or file the error is about (None if unknown).
    """

    def __init__(self, message: str, *, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class BundleNotFoundError(BundleError, FileNotFoundError):
    """The bundle directory or archive does not exist, or holds no ``bundle.yaml``."""


class BundleCorruptError(BundleError):
    """The bundle is damaged: ``bundle.yaml`` does not parse or lacks a field, a file it lists is
    missing or fails its SHA-256 checksum, or the label embeddings have the wrong shape.
    ``path`` names the offending file."""


class BundleIncompatibleError(BundleError):
    """The bundle is intact but this omnibind_ros cannot use it: an unsupported format version,
    a modality the registry does not know, or a preprocessing config this version rejects."""


class BackendUnavailableError(RuntimeError):
    """An inference backend cannot run here: its runtime package is not installed (tensorrt,
    onnxruntime, torch), no GPU is visible, or its engines/weights are missing from the bundle.
    The message says what is missing and how to get it."""


# ---------------------------------------------------------------------------------------------
# ROS message conversions (omnibind_ros.ros.conversions). A PreprocessError like the others, so a
# node catches one type per message; the value errors above (shape, encoding, range) are reused
# for what they name, this class covers what only a message can get wrong.

__all__ += ["ConversionError"]  # extends the list at the top of the module


class ConversionError(PreprocessError):
    """A message cannot be read at all: it lacks a field of its type, a field holds a value of
    the wrong Python type, or a compressed payload does not decode."""
