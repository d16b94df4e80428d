"""``audio_common_msgs`` (the microphone drivers' messages) -> :class:`AudioBlock`.

Two packages share that name with different messages:

* **ros-drivers/audio_common** (``audio_capture``): ``AudioData`` (``uint8[] data``, raw bytes),
  ``AudioDataStamped`` (header + AudioData) and ``AudioInfo`` (``channels``, ``sample_rate``,
  ``sample_format`` e.g. ``"S16LE"``, ``bitrate``, ``coding_format`` ``"wave"``/``"mp3"``) on a
  separate topic. The bytes say nothing about their format, so :class:`AudioDataConverter`
  takes it as an :class:`AudioFormat` (default: ``audio_capture``'s own defaults, S16LE,
  16 kHz, mono) and :meth:`AudioDataConverter.update_info` takes an ``AudioInfo``. Only
  ``wave`` (raw PCM) decodes; ``mp3`` is refused with the setting that fixes it.
* **mgonzs13/audio_common** (>= 2.1): ``AudioStamped`` = header + ``Audio`` (``audio_data``:
  typed arrays ``float32_data``, ``int32_data``, ``int16_data``, ``int8_data``, ``uint8_data``,
  one filled; ``info``: ``format`` as a PortAudio flag, ``channels``, ``rate``, ``chunk``),
  self-describing: :func:`audio_stamped_to_block`.

Samples are interleaved ``[frame][channel]`` in both. int16 stays int16 (the preprocessor's
native input); the other sample types become float32 at full scale 1 (int32 / 2^31, int8 / 128,
(uint8 - 128) / 128), as GStreamer and PortAudio scale them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from omnibind_ros.core.errors import (
    EmptyInputError,
    InvalidShapeError,
    InvalidValueError,
    NonFiniteInputError,
    UnsupportedEncodingError,
)
from omnibind_ros.core.types import AudioBlock
from omnibind_ros.ros.conversions import _fields as f

__all__ = ["PORTAUDIO_FORMATS", "SAMPLE_FORMATS", "AudioDataConverter", "AudioFormat",
           "audio_stamped_to_block", "block_to_audio_data_stamped"]

#: GStreamer raw-audio format names (``AudioInfo.sample_format``) -> (dtype, full scale).
SAMPLE_FORMATS: dict[str, tuple[str, float]] = {
    "S16LE": ("<i2", 32768.0), "S16BE": (">i2", 32768.0),
    "S32LE": ("<i4", 2.0 ** 31), "S32BE": (">i4", 2.0 ** 31),
    "F32LE": ("<f4", 1.0), "F32BE": (">f4", 1.0),
    "S8": ("i1", 128.0), "U8": ("u1", 128.0),
}
#: PortAudio sample-format flags (``AudioInfo.format`` of mgonzs13/audio_common) -> the
#: ``audio_data`` array that holds the samples and its GStreamer-style name.
PORTAUDIO_FORMATS: dict[int, tuple[str, str]] = {
    1: ("float32_data", "F32LE"), 2: ("int32_data", "S32LE"), 8: ("int16_data", "S16LE"),
    16: ("int8_data", "S8"), 32: ("uint8_data", "U8"),
}


def _block(samples: np.ndarray, sample_format: str, channels: int, rate: int, what: str
           ) -> AudioBlock:
    if rate <= 0 or channels <= 0:
        raise InvalidValueError(f"{what} needs a sample rate > 0 and channels >= 1, got "
                                f"{rate} Hz, {channels} channels")
    if samples.size == 0:
        raise EmptyInputError(f"{what} has no samples")
    if samples.size % channels:
        raise InvalidShapeError(f"{what}: {samples.size} samples is not a whole number of "
                                f"{channels}-channel frames")
    _, scale = SAMPLE_FORMATS[sample_format]
    if sample_format.startswith("S16"):
        out = samples.astype(np.int16, copy=False)
    elif sample_format == "U8":
        out = (samples.astype(np.float32) - 128.0) / np.float32(scale)
    else:
        out = samples.astype(np.float32) / np.float32(scale)
        if sample_format.startswith("F") and not np.isfinite(out).all():
            raise NonFiniteInputError(f"{what} holds NaN or inf samples")
    return AudioBlock(samples=out.reshape(-1, channels), sample_rate=int(rate))


@dataclass(frozen=True)
class AudioFormat:
    """What raw ``AudioData`` bytes hold (``audio_capture``'s defaults)."""

    sample_format: str = "S16LE"
    sample_rate: int = 16000
    channels: int = 1
    coding_format: str = "wave"

    def __post_init__(self) -> None:
        if self.sample_format not in SAMPLE_FORMATS:
            raise UnsupportedEncodingError(
                f"audio sample_format {self.sample_format!r} is not supported; expected one of "
                f"{', '.join(SAMPLE_FORMATS)}")
        if self.coding_format.lower() != "wave":
            raise UnsupportedEncodingError(
                f"audio coding_format {self.coding_format!r}: only raw PCM ('wave') decodes; "
                "run audio_capture with format:=wave")
        if self.sample_rate <= 0 or not 1 <= self.channels <= 255:
            raise InvalidValueError(f"audio format needs sample_rate > 0 and 1..255 channels, "
                                    f"got {self.sample_rate} Hz, {self.channels} channels")


class AudioDataConverter:
    """``audio_common_msgs/AudioData`` or ``AudioDataStamped`` -> :class:`AudioBlock` in a
    known :class:`AudioFormat` (one per microphone topic: a paired ``AudioInfo`` updates it;
    audio_capture publishes it every 5 s on ``audio_info`` beside ``audio``)."""

    INFO_TYPE = "audio_common_msgs/msg/AudioInfo"
    INFO_SIBLING = "audio_info"

    def __init__(self, fmt: AudioFormat | None = None) -> None:
        self.format = fmt or AudioFormat()

    def update_info(self, info: Any) -> AudioFormat:
        """Take the format from an ``audio_common_msgs/AudioInfo``; returns it (raises
        UnsupportedEncodingError / InvalidValueError for one that cannot decode)."""
        what = "AudioInfo"
        self.format = AudioFormat(
            sample_format=f.str_field(info, "sample_format", what),
            sample_rate=f.uint_field(info, "sample_rate", what),
            channels=f.uint_field(info, "channels", what, bits=8),
            coding_format=f.str_field(info, "coding_format", what) or "wave")
        return self.format

    def arrival_correction_ns(self, msg: Any) -> int:
        """How long before its arrival an unstamped ``AudioData`` began: its duration.

        ``AudioData`` has no header, so the node stamps it on arrival; audio_capture publishes a
        chunk once its last sample is captured, so the first sample was captured one chunk
        duration earlier (transport latency, a few ms, is not corrected). Read from the length
        alone, without decoding."""
        fmt = self.format
        data = getattr(getattr(msg, "audio", msg), "data", b"")
        bytes_per_frame = np.dtype(SAMPLE_FORMATS[fmt.sample_format][0]).itemsize * fmt.channels
        return round(len(data) / bytes_per_frame / fmt.sample_rate * 1e9)

    def __call__(self, msg: Any) -> AudioBlock:
        what = "AudioData"
        audio = getattr(msg, "audio", msg)          # AudioDataStamped wraps an AudioData
        raw = f.byte_view(f.field(audio, "data", what), f"{what}.data")
        fmt = self.format
        dtype = np.dtype(SAMPLE_FORMATS[fmt.sample_format][0])
        if raw.size % dtype.itemsize:
            raise InvalidShapeError(f"{what}: {raw.size} bytes is not a whole number of "
                                    f"{fmt.sample_format} samples")
        return _block(raw.view(dtype), fmt.sample_format, fmt.channels, fmt.sample_rate, what)


def audio_stamped_to_block(msg: Any) -> AudioBlock:
    """``audio_common_msgs/AudioStamped`` (or its ``Audio``) of mgonzs13/audio_common ->
    :class:`AudioBlock`; the format is ``info.format``'s PortAudio flag."""
    what = "AudioStamped"
    audio = getattr(msg, "audio", msg)
    info = f.field(audio, "info", what)
    flag = int(f.field(info, "format", what))
    if flag not in PORTAUDIO_FORMATS:
        raise UnsupportedEncodingError(
            f"{what}.audio.info.format {flag} is not a PortAudio sample format this package "
            f"reads; expected one of {sorted(PORTAUDIO_FORMATS)} (paFloat32 1, paInt32 2, "
            "paInt16 8, paInt8 16, paUInt8 32)")
    array_name, sample_format = PORTAUDIO_FORMATS[flag]
    data = f.field(f.field(audio, "audio_data", what), array_name, what)
    dtype = np.dtype(SAMPLE_FORMATS[sample_format][0]).newbyteorder("=")
    samples = f.typed_view(data, dtype, f"{what}.audio.audio_data.{array_name}")
    return _block(samples, sample_format, int(f.field(info, "channels", what)),
                  int(f.field(info, "rate", what)), what)


def block_to_audio_data_stamped(block: AudioBlock, stamp: object = None, frame_id: str = ""
                                ) -> Any:
    """Build a ros-drivers ``audio_common_msgs/AudioDataStamped`` as ``audio_capture`` publishes
    it with ``format:=wave`` (S16LE interleaved; the stamp is the first sample's capture time,
    GStreamer's buffer time). The simulated microphone publishes these when its
    ``message_type`` says so; the format travels separately (the converter's default is
    S16LE, mono, at ``audio_capture``'s 16 kHz: set the rates alike)."""
    from audio_common_msgs.msg import AudioData, AudioDataStamped

    from omnibind_ros.ros.conversions.audio import audio_chunk_to_block, block_to_audio_chunk

    chunk = block_to_audio_chunk(block, "S16LE", stamp, frame_id)
    audio_chunk_to_block(chunk)                       # the same checks as the package's type
    return AudioDataStamped(header=chunk.header, audio=AudioData(data=bytes(chunk.data)))
