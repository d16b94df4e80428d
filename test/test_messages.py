"""The generated interfaces: field contract, constants, CDR round trip of realistic values.

No rclpy.init and no node: serialisation goes through the type support directly, the way bag
tools read and write these messages.
"""
from __future__ import annotations

import array
import math
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ros

RNG = np.random.default_rng(20240611)


def packed(typecode: str, values: np.ndarray) -> array.array:
    """numpy -> the array.array rclpy keeps for primitive sequences, without a per-element loop.

    (Assigning an ndarray works too, but array.array(typecode, ndarray) iterates in Python.)
    """
    dtype = {"B": "<u1", "H": "<u2", "I": "<u4", "f": "<f4"}[typecode]
    return array.array(typecode, np.ascontiguousarray(values, dtype=dtype).tobytes())


def stamp(sec: int, nanosec: int) -> Any:
    from builtin_interfaces.msg import Time

    return Time(sec=sec, nanosec=nanosec)


def header(sec: int, nanosec: int, frame_id: str) -> Any:
    from std_msgs.msg import Header

    return Header(stamp=stamp(sec, nanosec), frame_id=frame_id)


# ---------------------------------------------------------------------------------------------
# One realistic instance of each message.

def make_modality_prediction(sensor: str, modality: str, label: str, score: float) -> Any:
    from omnibind_ros.msg import ModalityPrediction

    return ModalityPrediction(sensor=sensor, modality=modality, label=label, score=score,
                              stamp=stamp(1_700_000_000, 123_456_789), age=0.0421)


def make_recognition() -> Any:
    from omnibind_ros.msg import Recognition

    scores = np.array([0.71, 0.12, 0.05], dtype=np.float32)
    embedding = RNG.standard_normal(384).astype(np.float32)
    embedding /= np.linalg.norm(embedding)
    return Recognition(
        header=header(1_700_000_000, 166_000_000, "base_link"),
        best_label="wooden mug",
        best_score=float(scores[0]),
        top_labels=["wooden mug", "metal mug", "wooden bowl"],
        top_scores=packed("f", scores),
        sensors=["front_camera", "gripper_tactile", "mic"],
        modalities=["image", "tactile", "audio"],
        per_modality=[
            make_modality_prediction("front_camera", "image", "metal mug", 0.48),
            make_modality_prediction("gripper_tactile", "tactile", "wooden bowl", 0.33),
            make_modality_prediction("mic", "audio", "wooden mug", 0.61),
        ],
        bundle="default", model_family="cad_af",
        embedding=packed("f", embedding),
    )


def make_sensor_status_array() -> Any:
    from omnibind_ros.msg import SensorStatus, SensorStatusArray

    live = SensorStatus(name="front_camera", modality="image", topic="/robot/camera/image_raw",
                        state=SensorStatus.LIVE, rate_hz=29.7, expected_rate_hz=30.0,
                        age_s=0.031, publisher_count=1, in_fusion=True, reason="")
    lost = SensorStatus(name="lidar", modality="point_cloud", topic="/robot/lidar/points",
                        state=SensorStatus.LOST, rate_hz=0.0, expected_rate_hz=10.0,
                        age_s=math.nan, publisher_count=0, in_fusion=False,
                        reason="no publisher on /robot/lidar/points")
    return SensorStatusArray(header=header(1_700_000_001, 5, ""), sensors=[live, lost])


def make_event_array(n: int = 20_000) -> Any:
    from omnibind_ros.msg import EventArray

    width, height = 346, 260
    return EventArray(
        header=header(1_700_000_002, 999_999_999, "event_camera_optical_frame"),
        width=width,
        height=height,
        x=packed("H", RNG.integers(0, width, n)),
        y=packed("H", RNG.integers(0, height, n)),
        t=packed("I", np.sort(RNG.integers(0, 2**32 - 1, n, dtype=np.uint64))),
        polarity=RNG.integers(0, 2, n, dtype=np.uint8).tobytes(),
    )


def make_audio_chunk(encoding: str) -> Any:
    from omnibind_ros.msg import AudioChunk

    rate, channels, frames = 16_000, 2, 1_600  # 100 ms stereo
    t = np.arange(frames) / rate
    wave = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 660 * t)], axis=1)
    if encoding == AudioChunk.ENCODING_S16LE:
        data = (wave * 32767).astype("<i2").tobytes()
    else:
        data = wave.astype("<f4").tobytes()
    return AudioChunk(header=header(1_700_000_003, 0, "mic_link"), sample_rate=rate,
                      channels=channels, encoding=encoding, data=data)


# Factories, not instances: parametrisation happens at collection time, where a missing
# interface build must lead to the `ros` marker's skip, not a collection error.
MESSAGE_FACTORIES = {
    "ModalityPrediction": lambda: make_modality_prediction("mic", "audio", "metal can", 0.9),
    "Recognition": make_recognition,
    "SensorStatusArray": make_sensor_status_array,
    "EventArray": make_event_array,
    "EventArray-empty": lambda: make_event_array(0),  # a quiet scene
    "AudioChunk-S16LE": lambda: make_audio_chunk("S16LE"),
    "AudioChunk-F32LE": lambda: make_audio_chunk("F32LE"),
}


# ---------------------------------------------------------------------------------------------

def assert_same(expected: Any, actual: Any, field_type: str, path: str) -> None:
    """Field-by-field comparison; float32 fields at float32 precision, NaN equal to NaN."""
    if hasattr(expected, "get_fields_and_field_types"):
        assert type(actual) is type(expected), path
        for name, sub_type in expected.get_fields_and_field_types().items():
            assert_same(getattr(expected, name), getattr(actual, name), sub_type,
                        f"{path}.{name}")
    elif isinstance(expected, (list, tuple)) and expected and hasattr(
            expected[0], "get_fields_and_field_types"):
        assert len(actual) == len(expected), path
        element_type = field_type[len("sequence<"):-1]
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_same(e, a, element_type, f"{path}[{i}]")
    elif isinstance(expected, (array.array, bytes, np.ndarray)):
        np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected), err_msg=path)
    elif field_type == "float":
        assert np.float32(actual) == np.float32(expected) or (
            math.isnan(expected) and math.isnan(actual)), path
    else:
        assert actual == expected, path


@pytest.mark.parametrize("kind", sorted(MESSAGE_FACTORIES))
def test_cdr_round_trip(kind: str) -> None:
    from rclpy.serialization import deserialize_message, serialize_message

    message = MESSAGE_FACTORIES[kind]()
    data = serialize_message(message)
    back = deserialize_message(data, type(message))
    assert_same(message, back, "", type(message).__name__)
    # And a second trip. Messages are compared, never bytes: CDR alignment padding is not
    # guaranteed to be zeroed, so equal messages may serialise to different bytes.
    again = deserialize_message(serialize_message(back), type(message))
    assert_same(back, again, "", type(message).__name__)


def test_packed_fields_are_packed_on_the_wire() -> None:
    from rclpy.serialization import serialize_message

    n = 20_000
    size = len(serialize_message(make_event_array(n)))
    # 2 + 2 + 4 + 1 bytes per event, plus the header and four length prefixes: no per-event
    # framing (a message per event would add >= 4 bytes each).
    assert 9 * n <= size < 9 * n + 128


def test_decoded_fields_view_as_numpy_without_copies() -> None:
    message = make_event_array(1000)
    x = np.frombuffer(message.x, dtype=np.uint16)
    t = np.frombuffer(message.t, dtype=np.uint32)
    polarity = np.frombuffer(message.polarity, dtype=np.uint8)
    assert x.shape == t.shape == polarity.shape == (1000,)
    assert np.all(np.diff(t.astype(np.int64)) >= 0)
    assert set(np.unique(polarity)) <= {0, 1}

    from omnibind_ros.msg import AudioChunk

    chunk = make_audio_chunk(AudioChunk.ENCODING_S16LE)
    frames = np.frombuffer(chunk.data, dtype="<i2").reshape(-1, chunk.channels)
    assert frames.shape == (1600, 2)
    assert abs(frames[:, 0].astype(np.int32)).max() > 30_000


def test_sensor_state_constants() -> None:
    from omnibind_ros.msg import SensorStatus

    assert {name: getattr(SensorStatus, name) for name in
            ("UNKNOWN", "LIVE", "STALE", "LOST", "DISABLED", "DEGRADED")} == {
        "UNKNOWN": 0, "LIVE": 1, "STALE": 2, "LOST": 3, "DISABLED": 4, "DEGRADED": 5}
    assert SensorStatus().state == SensorStatus.UNKNOWN  # a default-built status claims nothing


def test_audio_encoding_constants() -> None:
    from omnibind_ros.msg import AudioChunk

    assert AudioChunk.ENCODING_S16LE == "S16LE"
    assert AudioChunk.ENCODING_F32LE == "F32LE"


# The contract other packages and bags depend on: names and types, in order.
EXPECTED_FIELDS = {
    "ModalityPrediction": {
        "sensor": "string", "modality": "string", "label": "string", "score": "float",
        "stamp": "builtin_interfaces/Time", "age": "float",
    },
    "Recognition": {
        "header": "std_msgs/Header", "best_label": "string", "best_score": "float",
        "top_labels": "sequence<string>", "top_scores": "sequence<float>",
        "sensors": "sequence<string>", "modalities": "sequence<string>",
        "per_modality": "sequence<omnibind_ros/ModalityPrediction>",
        "bundle": "string", "model_family": "string",
        "embedding": "sequence<float>", "confidence": "float", "unsure": "boolean",
    },
    "SensorStatus": {
        "name": "string", "modality": "string", "topic": "string", "state": "uint8",
        "rate_hz": "float", "expected_rate_hz": "float", "age_s": "float",
        "publisher_count": "uint32", "in_fusion": "boolean", "reason": "string",
        "quality": "float", "quality_issue": "string",
    },
    "SensorStatusArray": {
        "header": "std_msgs/Header", "sensors": "sequence<omnibind_ros/SensorStatus>",
    },
    "EventArray": {
        "header": "std_msgs/Header", "width": "uint32", "height": "uint32",
        "x": "sequence<uint16>", "y": "sequence<uint16>", "t": "sequence<uint32>",
        "polarity": "sequence<uint8>",
    },
    "AudioChunk": {
        "header": "std_msgs/Header", "sample_rate": "uint32", "channels": "uint8",
        "encoding": "string", "data": "sequence<uint8>",
    },
}


@pytest.mark.parametrize("name", sorted(EXPECTED_FIELDS))
def test_field_contract(name: str) -> None:
    import omnibind_ros.msg

    fields = getattr(omnibind_ros.msg, name).get_fields_and_field_types()
    assert list(fields.items()) == list(EXPECTED_FIELDS[name].items())
