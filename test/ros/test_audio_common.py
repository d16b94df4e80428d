"""audio_common_msgs (ros-drivers AudioData/AudioDataStamped + AudioInfo; mgonzs13 AudioStamped)
-> AudioBlock: every sample format, the format from an AudioInfo, and clear errors."""
from __future__ import annotations

import array
from types import SimpleNamespace as NS

import numpy as np
import pytest

from omnibind_ros.core.errors import (
    EmptyInputError,
    InvalidShapeError,
    InvalidValueError,
    NonFiniteInputError,
    UnsupportedEncodingError,
)
from omnibind_ros.core.preprocess import build_preprocessor
from omnibind_ros.ros import conversions as conv
from omnibind_ros.ros.conversions.audio_common import AudioDataConverter, AudioFormat

STEREO = np.array([[0.5, -0.25], [-1.0, 0.75], [0.0, 0.125]])


def info(fmt: str, rate: int = 16000, channels: int = 1, coding: str = "wave") -> NS:
    return NS(channels=channels, sample_rate=rate, sample_format=fmt, bitrate=0,
              coding_format=coding)


@pytest.mark.parametrize(("fmt", "dtype", "scale", "offset"), [
    ("S16LE", "<i2", 32768, 0), ("S16BE", ">i2", 32768, 0), ("S32LE", "<i4", 2**31, 0),
    ("S32BE", ">i4", 2**31, 0), ("F32LE", "<f4", 1, 0), ("F32BE", ">f4", 1, 0),
    ("S8", "i1", 128, 0), ("U8", "u1", 128, 128)])
def test_audio_data_sample_formats_decode_to_full_scale_one(fmt, dtype, scale, offset) -> None:
    raw = np.clip(np.round(STEREO * scale) + offset, np.iinfo(dtype).min if dtype[-2] != "f"
                  else -2, np.iinfo(dtype).max if dtype[-2] != "f" else 2)
    data = raw.astype(dtype).tobytes()
    convert = AudioDataConverter()
    assert convert.update_info(info(fmt, 44100, 2)) == AudioFormat(fmt, 44100, 2, "wave")
    block = convert(NS(data=data))
    assert block.sample_rate == 44100 and block.samples.shape == (3, 2)
    expected = (raw - offset) / scale
    if fmt.startswith("S16"):
        assert block.samples.dtype == np.int16
        np.testing.assert_array_equal(block.samples, raw)
    else:
        assert block.samples.dtype == np.float32
        np.testing.assert_allclose(block.samples, expected, atol=1e-6)


def test_audio_data_stamped_defaults_to_audio_capture_settings() -> None:
    samples = (np.sin(np.arange(1600) / 5) * 8000).astype("<i2")
    convert = conv.conversion_for("audio", "audio_common_msgs/msg/AudioDataStamped")
    other = conv.conversion_for("audio", "audio_common_msgs/msg/AudioDataStamped")
    assert convert is not other        # one per microphone: each keeps its own AudioInfo
    block = convert(NS(header=None, audio=NS(data=array.array("B", samples.tobytes()))))
    assert block.sample_rate == 16000 and block.samples.shape == (1600, 1)
    np.testing.assert_array_equal(block.samples[:, 0], samples)
    features = build_preprocessor("audio", {})(block)
    assert np.isfinite(features).all()


def test_audio_data_refuses_what_cannot_decode() -> None:
    convert = AudioDataConverter()
    with pytest.raises(UnsupportedEncodingError, match="format:=wave"):
        convert.update_info(info("S16LE", coding="mp3"))
    with pytest.raises(UnsupportedEncodingError, match="'S24LE' is not supported"):
        convert.update_info(info("S24LE"))
    with pytest.raises(InvalidValueError, match="sample_rate > 0"):
        convert.update_info(info("S16LE", rate=0))
    with pytest.raises(InvalidShapeError, match="whole number of S16LE"):
        convert(NS(data=b"\x00\x01\x02"))
    with pytest.raises(EmptyInputError):
        convert(NS(data=b""))
    convert.update_info(info("S16LE", channels=2))
    with pytest.raises(InvalidShapeError, match="2-channel frames"):
        convert(NS(data=np.zeros(3, "<i2").tobytes()))
    convert.update_info(info("F32LE"))
    with pytest.raises(NonFiniteInputError):
        convert(NS(data=np.array([0.1, np.nan], "<f4").tobytes()))


def stamped(fmt: int, **arrays) -> NS:
    data = {k: array.array("f", []) for k in ("float32_data",)}
    data.update({"float32_data": array.array("f"), "int32_data": array.array("i"),
                 "int16_data": array.array("h"), "int8_data": array.array("b"),
                 "uint8_data": array.array("B")})
    data.update(arrays)
    return NS(header=None, audio=NS(audio_data=NS(**data),
                                    info=NS(format=fmt, channels=2, rate=48000, chunk=3)))


def test_audio_stamped_reads_the_array_its_portaudio_flag_names() -> None:
    cases = {1: ("float32_data", "f", STEREO), 2: ("int32_data", "i", STEREO * 2**31 * 0.999),
             8: ("int16_data", "h", np.round(STEREO * 32767)),
             16: ("int8_data", "b", np.round(STEREO * 127)),
             32: ("uint8_data", "B", np.round(STEREO * 127) + 128)}
    for flag, (name, code, values) in cases.items():
        msg = stamped(flag, **{name: array.array(code, values.reshape(-1).astype(
            {"f": "<f4", "i": "<i4", "h": "<i2", "b": "i1", "B": "u1"}[code]).tolist())})
        block = conv.conversion_for("audio", "audio_common_msgs/msg/AudioStamped")(msg)
        assert block.sample_rate == 48000 and block.samples.shape == (3, 2), flag
        as_float = block.samples / 32768.0 if block.samples.dtype == np.int16 else block.samples
        np.testing.assert_allclose(as_float, STEREO, atol=1 / 64, err_msg=str(flag))
    with pytest.raises(UnsupportedEncodingError, match="paInt16 8"):
        audio_stamped = conv.conversion_for("audio", "audio_common_msgs/msg/AudioStamped")
        audio_stamped(stamped(4))


@pytest.mark.ros
def test_stand_in_audio_data_stamped_round_trips_and_converts() -> None:
    from audio_common_msgs.msg import AudioData, AudioDataStamped
    from rclpy.serialization import deserialize_message, serialize_message

    samples = np.arange(-400, 400, dtype="<i2")
    msg = AudioDataStamped(audio=AudioData(data=samples.tobytes()))
    back = deserialize_message(serialize_message(msg), AudioDataStamped)
    block = conv.conversion_for("audio", AudioDataStamped)(back)
    np.testing.assert_array_equal(block.samples[:, 0], samples)


def test_unstamped_audio_is_stamped_one_chunk_before_its_arrival() -> None:
    from omnibind_ros.bag.stage import stamp_of

    convert = conv.conversion_for("audio", "audio_common_msgs/msg/AudioData")
    chunk = NS(data=np.zeros(1600, "<i2").tobytes())            # 100 ms at 16 kHz mono
    assert conv.arrival_stamp_ns(convert, chunk, 5_000_000_000) == 4_900_000_000
    assert stamp_of(chunk, 5_000_000_000, convert) == 4_900_000_000   # the bag path, alike
    convert.update_info(info("F32LE", 48000, 2))
    stereo = NS(data=np.zeros((480, 2), "<f4").tobytes())      # 10 ms at 48 kHz stereo
    assert conv.arrival_stamp_ns(convert, stereo, 10**9) == 10**9 - 10_000_000
    text = conv.conversion_for("text", "std_msgs/msg/String")
    assert conv.arrival_stamp_ns(text, NS(data="hi"), 7) == 7       # no correction elsewhere
