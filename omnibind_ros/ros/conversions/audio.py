"""omnibind_ros/AudioChunk <-> :class:`~omnibind_ros.core.types.AudioBlock`.

Samples are viewed in place: ``np.frombuffer(msg.data, "<i2" | "<f4").reshape(-1, channels)``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from omnibind_ros.core.errors import (
    EmptyInputError,
    InvalidDtypeError,
    InvalidShapeError,
    InvalidValueError,
    NonFiniteInputError,
    UnsupportedEncodingError,
)
from omnibind_ros.core.types import AudioBlock
from omnibind_ros.ros.conversions import _fields as f

__all__ = ["AUDIO_ENCODINGS", "audio_chunk_to_block", "block_to_audio_chunk"]

#: AudioChunk encoding -> little-endian sample dtype.
AUDIO_ENCODINGS: dict[str, np.dtype] = {"S16LE": np.dtype("<i2"), "F32LE": np.dtype("<f4")}
#: int16 full scale: float x in [-1, 1) <-> round(x * 32768), as core.preprocess.audio scales.
_S16_FULL_SCALE = 32768.0


def audio_chunk_to_block(msg: Any) -> AudioBlock:
    """Convert an ``omnibind_ros/AudioChunk`` to an :class:`AudioBlock`.

    Parameters
    ----------
    msg : the message: ``sample_rate`` (Hz, > 0), ``channels`` (>= 1), ``encoding``
        ("S16LE" or "F32LE") and interleaved ``data``
        (``n_frames * channels * bytes_per_sample`` bytes, n_frames >= 1).

    Returns
    -------
    AudioBlock with ``samples`` [n_frames, channels] (also for mono), int16 for S16LE or float32
    for F32LE: a read-only view of ``msg.data`` (a copy only on a big-endian machine).

    Raises
    ------
    UnsupportedEncodingError : another encoding.
    InvalidValueError : zero sample rate or channels.
    EmptyInputError : no data.
    InvalidShapeError : data not a whole number of frames.
    NonFiniteInputError : a NaN/inf F32LE sample.
    """
    what = "AudioChunk"
    encoding = f.str_field(msg, "encoding", what)
    if encoding not in AUDIO_ENCODINGS:
        raise UnsupportedEncodingError(f"AudioChunk encoding {encoding!r} is not supported; "
                                       f"expected one of {', '.join(AUDIO_ENCODINGS)}")
    rate = f.uint_field(msg, "sample_rate", what)
    channels = f.uint_field(msg, "channels", what, bits=8)
    data = f.byte_view(f.field(msg, "data", what), "AudioChunk.data")
    if rate == 0 or channels == 0:
        raise InvalidValueError(f"AudioChunk needs sample_rate > 0 and channels >= 1, got "
                                f"{rate} Hz, {channels} channels")
    if data.size == 0:
        raise EmptyInputError("AudioChunk has no data")
    dtype = AUDIO_ENCODINGS[encoding]
    frame_bytes = channels * dtype.itemsize
    if data.size % frame_bytes:
        raise InvalidShapeError(
            f"AudioChunk ({encoding}, {channels} ch) data of {data.size} bytes is not a whole "
            f"number of {frame_bytes}-byte frames")
    samples = data.view(dtype).reshape(-1, channels)
    if dtype.kind == "f" and not np.isfinite(samples).all():
        raise NonFiniteInputError("AudioChunk F32LE data contains NaN or inf samples")
    native = f.native(samples)
    return AudioBlock(samples=f.read_only(samples) if native is samples else native,
                      sample_rate=rate)


def _encode(samples: np.ndarray, encoding: str) -> bytes:
    if samples.dtype == np.int16:
        as_float = samples.astype(np.float32) / np.float32(_S16_FULL_SCALE)
        return (samples if encoding == "S16LE" else as_float).astype(
            AUDIO_ENCODINGS[encoding]).tobytes()
    if not np.isfinite(samples).all():
        raise NonFiniteInputError("audio samples contain NaN or inf")
    if encoding == "F32LE":
        return samples.astype("<f4").tobytes()
    scaled = np.clip(np.round(samples.astype(np.float64) * _S16_FULL_SCALE), -32768, 32767)
    return scaled.astype("<i2").tobytes()


def block_to_audio_chunk(block: AudioBlock, encoding: str = "S16LE", stamp: object = None,
                         frame_id: str = "") -> Any:
    """Build an ``omnibind_ros/AudioChunk`` from an :class:`AudioBlock`.

    Parameters
    ----------
    block : samples [n] (mono) or [n, channels], int16 or float (full scale 1), and the rate.
    encoding : "S16LE" (floats are scaled by 32768, rounded and clipped) or "F32LE" (int16 is
        divided by 32768).
    stamp : capture time of the first frame (seconds or ``builtin_interfaces/Time``).
    frame_id : microphone frame.

    Raises
    ------
    UnsupportedEncodingError, InvalidDtypeError, InvalidShapeError, InvalidValueError,
    EmptyInputError, NonFiniteInputError
    """
    from omnibind_ros.msg import AudioChunk

    if not isinstance(block, AudioBlock):
        raise InvalidDtypeError(f"expected an AudioBlock, got {type(block).__name__}")
    if encoding not in AUDIO_ENCODINGS:
        raise UnsupportedEncodingError(f"encoding must be one of {', '.join(AUDIO_ENCODINGS)}, "
                                       f"got {encoding!r}")
    samples = block.samples
    if not isinstance(samples, np.ndarray) or samples.dtype.kind not in "if" or (
            samples.dtype.kind == "i" and samples.dtype != np.int16):
        raise InvalidDtypeError("AudioBlock.samples must be an int16 or float array, got "
                                f"{getattr(samples, 'dtype', type(samples).__name__)}")
    frames = samples[:, None] if samples.ndim == 1 else samples
    if frames.ndim != 2 or not 1 <= frames.shape[1] <= 255:
        raise InvalidShapeError(f"AudioBlock.samples must be [n] or [n, 1..255], got "
                                f"{samples.shape}")
    if frames.shape[0] == 0:
        raise EmptyInputError("AudioBlock has no samples")
    rate = f.uint_field(block, "sample_rate", "AudioBlock")
    if rate == 0:
        raise InvalidValueError("AudioBlock.sample_rate must be > 0")
    return AudioChunk(header=f.make_header(stamp, frame_id), sample_rate=rate,
                      channels=frames.shape[1], encoding=encoding,
                      data=_encode(frames, encoding))
