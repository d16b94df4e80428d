"""Property-based fuzzing of the path every subscribed message type takes to an embedding.

Each strategy builds a well-formed message of one type (so most examples reach preprocessing and
the encoder), then maybe damages it the way broken drivers, bag readers and bit rot do: data
cut short or too long, a ``step`` / ``row_step`` / ``point_step`` that disagrees with the
sizes, zero sizes, absurd size claims (2^32 - 1 pixels), encodings the conversions do not know
(bayer, yuv422), wrong byte order, NaN and inf values, mismatched event arrays, zero sample
rates, truncated JPEG/PNG payloads, fields of the wrong Python type. Each example runs through
the node's own per-sensor stage (:class:`~omnibind_ros.core.pipeline.SensorStage`: conversion,
the bundle's preprocessing, the tiny test bundle's ONNX encoders) and must satisfy:

* nothing but a :class:`~omnibind_ros.core.errors.PreprocessError` escapes conversion or
  preprocessing: the stage names any other exception "unexpected ..." in the bad-sample reason;
* an embedding is a finite unit vector of the bundle's size;
* a size claim is refused before anything of that size is allocated (a MemoryError or a
  several-second example would show it).

Messages are duck-typed (``SimpleNamespace`` with ``array.array`` buffers, as rclpy stores
sequence fields), so this runs without ROS. Hypothesis is derandomised (fixed examples in CI);
``OMNIBIND_FUZZ_EXAMPLES=2000`` runs a deeper search locally.
"""
from __future__ import annotations

import array
import os
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.extra import numpy as hnp

from omnibind_ros.core.backends import create_backend
from omnibind_ros.core.bundle import load_bundle
from omnibind_ros.core.pipeline import SampleOutcome, SensorStage, make_pipeline
from omnibind_ros.ros.conversions import ENCODINGS, conversion_for
from omnibind_ros.testing import TEST_DIM, write_test_bundle

FUZZ = settings(max_examples=int(os.environ.get("OMNIBIND_FUZZ_EXAMPLES", "60")),
                deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])
S = 1_000_000_000
T0 = 1_700_000_000 * S
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
#: Sizes a corrupt header may claim: each would take gigabytes if believed.
HUGE = (65535, 1 << 16, 1 << 24, (1 << 31) - 1, (1 << 32) - 1)
#: Encodings of sensor_msgs/image_encodings.hpp (and typos) the conversions do not decode.
FOREIGN_ENCODINGS = ("bayer_rggb8", "bayer_bggr8", "bayer_gbrg16", "bayer_grbg16", "yuv422",
                     "yuv422_yuy2", "UYVY", "nv21", "8SC3", "16SC1", "32FC3", "64FC1", "",
                     "RGB8", " rgb8", "rgb8\x00")
WRONG_VALUES = (None, -1, 1.5, "3", b"\x00", [1, 2], True)


# -- the stage under test

class Runtime(tuple):
    """(bundle, backend), with a short repr for hypothesis' falsifying-example report."""

    def __repr__(self) -> str:
        return "<tiny bundle + onnxruntime>"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    bundle = load_bundle(write_test_bundle(tmp_path_factory.mktemp("fuzz") / "tiny"))
    backend = create_backend("onnxruntime", bundle)
    yield Runtime((bundle, backend))
    backend.close()


def run_stage(runtime: tuple[Any, Any], modality: str, msg_type: str, messages: list[Any],
              prepare: Callable[[Any], None] | None = None) -> list[SampleOutcome]:
    """Run ``messages`` through a fresh stage of one sensor and check every outcome."""
    bundle, backend = runtime
    convert = conversion_for(modality, msg_type)
    if prepare is not None:
        prepare(convert)
    stage = SensorStage(convert, make_pipeline(modality, bundle, backend))
    outcomes = [stage.process(msg, T0 + i * S // 10, T0 + i * S // 10)
                for i, msg in enumerate(messages)]
    for outcome in outcomes:
        assert_contained(outcome)
        if currently_in_test_context():  # --hypothesis-show-statistics: how deep examples got
            event(outcome.kind)
    return outcomes


def assert_contained(outcome: SampleOutcome) -> None:
    assert outcome.kind in ("bad", "valid", "embedding")
    if outcome.kind == "bad":
        assert outcome.reason and not outcome.reason.startswith("unexpected"), outcome.reason
        return
    if outcome.kind == "embedding":
        embedding = outcome.embedding
        assert embedding.shape == (TEST_DIM,) and embedding.dtype == np.float32
        assert np.isfinite(embedding).all()
        assert abs(float(np.linalg.norm(embedding)) - 1.0) < 1e-3


def message(**fields: Any) -> SimpleNamespace:
    """A duck-typed message; ``bytes`` become ``array.array('B')`` as in rclpy."""
    for key, value in fields.items():
        if isinstance(value, bytes):
            fields[key] = array.array("B", value)
    return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=0, nanosec=0)),
                           **fields)


def finite_or_not(width: int) -> st.SearchStrategy[float]:
    return st.one_of(st.floats(-1e3, 1e3, width=width), st.floats(width=width))


def damage(draw: st.DrawFn, fields: dict[str, Any], sizes: tuple[str, ...]) -> None:
    """Maybe damage a well-formed message's fields in place (the shared mutations)."""
    kind = draw(st.sampled_from(("none", "none", "truncate", "extend", "zero", "huge",
                                 "wrong_type", "empty_data")))
    data = fields["data"]
    if kind == "truncate" and data:
        fields["data"] = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "extend":
        fields["data"] = data + draw(st.binary(min_size=1, max_size=16))
    elif kind == "zero":
        fields[draw(st.sampled_from(sizes))] = 0
    elif kind == "huge":
        fields[draw(st.sampled_from(sizes))] = draw(st.sampled_from(HUGE))
    elif kind == "wrong_type":
        fields[draw(st.sampled_from((*sizes, "data")))] = draw(st.sampled_from(WRONG_VALUES))
    elif kind == "empty_data":
        fields["data"] = b""


# -- sensor_msgs/Image

@st.composite
def images(draw: st.DrawFn) -> SimpleNamespace:
    encoding = draw(st.sampled_from((*ENCODINGS, *FOREIGN_ENCODINGS)))
    layout = ENCODINGS.get(encoding)
    dtype = np.dtype("u1") if layout is None else layout.dtype
    channels = draw(st.integers(1, 4)) if layout is None else layout.channels
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    big_endian = draw(st.booleans())
    elements = finite_or_not(32) if dtype.kind == "f" else None
    values = draw(hnp.arrays(dtype, (height, width * channels), elements=elements))
    rows = values.astype(dtype.newbyteorder(">" if big_endian else "<")).view(np.uint8)
    padding = draw(st.integers(0, 5))
    rows = np.pad(rows, ((0, 0), (0, padding)))
    fields = {"height": height, "width": width, "encoding": encoding,
              "is_bigendian": int(big_endian), "step": rows.shape[1], "data": rows.tobytes()}
    damage(draw, fields, ("height", "width", "step"))
    if draw(st.booleans()) and isinstance(fields["step"], int):
        fields["step"] += draw(st.integers(-3, 3))  # step vs height * step vs data
    return message(**fields)


def camera_info(width: int, height: int) -> SimpleNamespace:
    k = [20.0, 0.0, width / 2, 0.0, 20.0, height / 2, 0.0, 0.0, 1.0]
    return SimpleNamespace(k=k, width=width, height=height)


@pytest.mark.parametrize("modality", ["image", "thermal", "tactile", "point_cloud"])
@FUZZ
@given(frames=st.lists(images(), min_size=1, max_size=3))
def test_image_messages_are_contained(runtime, modality: str, frames: list[Any]) -> None:
    """Every encoding, damaged or not, on every modality an Image can feed (depth -> cloud)."""
    def prepare(convert: Any) -> None:
        if modality == "point_cloud":  # a depth camera: intrinsics of the first frame's size
            first = frames[0]
            sizes = [v if type(v) is int and 0 < v < 1 << 16 else 8
                     for v in (first.width, first.height)]
            convert.update_info(camera_info(*sizes))
    run_stage(runtime, modality, IMAGE, frames, prepare)


# -- sensor_msgs/CompressedImage

def _encode(draw: st.DrawFn, codec: str, depth: bool) -> bytes:
    height, width = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    if depth:
        pixels = draw(hnp.arrays(np.uint16, (height, width)))
        header = np.array([0], "<i4").tobytes() + np.array(
            [draw(finite_or_not(32)), draw(finite_or_not(32))], "<f4").tobytes()
        return header + cv2.imencode(".png", pixels)[1].tobytes()
    channels = draw(st.sampled_from((1, 3, 4) if codec == "png" else (1, 3)))
    dtype = draw(st.sampled_from((np.uint8, np.uint16))) if codec == "png" else np.uint8
    shape = (height, width) if channels == 1 else (height, width, channels)
    pixels = draw(hnp.arrays(dtype, shape))
    return cv2.imencode(f".{codec}", pixels)[1].tobytes()


@st.composite
def compressed_images(draw: st.DrawFn) -> SimpleNamespace:
    fmt = draw(st.sampled_from((
        "jpeg", "png", "rgb8; jpeg compressed bgr8", "mono16; png compressed mono16",
        "16UC1; compressedDepth png", "32FC1; compressedDepth png", "", "JPEG", "h264",
        "theora", "16UC1; compressedDepth rvl", "bmp")))
    codec = "png" if "png" in fmt or "compressedDepth" in fmt else "jpg"
    data = _encode(draw, codec, "compressedDepth" in fmt)
    kind = draw(st.sampled_from(("none", "truncate", "flip", "garbage", "empty", "prefix",
                                 "wrong_type")))
    if kind == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "flip":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            buf[draw(st.integers(0, len(buf) - 1))] ^= draw(st.integers(1, 255))
        data = bytes(buf)
    elif kind == "garbage":
        data = draw(st.binary(max_size=300))
    elif kind == "empty":
        data = b""
    elif kind == "prefix":
        data = draw(st.binary(min_size=1, max_size=20)) + data
    if kind == "wrong_type":
        return message(format=draw(st.sampled_from(WRONG_VALUES)), data=data)
    return message(format=fmt, data=data)


@pytest.mark.parametrize("modality", ["image", "thermal", "tactile", "point_cloud"])
@FUZZ
@given(frames=st.lists(compressed_images(), min_size=1, max_size=3))
def test_compressed_image_messages_are_contained(runtime, modality: str,
                                                 frames: list[Any]) -> None:
    def prepare(convert: Any) -> None:
        if modality == "point_cloud":
            convert.update_info(camera_info(16, 16))
    run_stage(runtime, modality, COMPRESSED, frames, prepare)


# -- sensor_msgs/PointCloud2

POINT_FIELD = {np.dtype("i1"): 1, np.dtype("u1"): 2, np.dtype("i2"): 3, np.dtype("u2"): 4,
               np.dtype("i4"): 5, np.dtype("u4"): 6, np.dtype("f4"): 7, np.dtype("f8"): 8}


@st.composite
def clouds(draw: st.DrawFn) -> SimpleNamespace:
    coord = np.dtype(draw(st.sampled_from(("f4", "f4", "f8", "i2"))))
    names = ["x", "y", "z", *draw(st.lists(st.sampled_from(("intensity", "ring", "t", "x")),
                                           max_size=2))]
    if draw(st.integers(0, 4)) == 0:  # no x, y or z at all
        names.remove(draw(st.sampled_from(("x", "y", "z"))))
    fields, offset = [], 0
    for name in names:
        dtype = coord if name in "xyz" else np.dtype(draw(st.sampled_from(("f4", "u2", "f8"))))
        offset += draw(st.integers(0, 4))  # padding between fields
        fields.append(SimpleNamespace(name=name, offset=offset, datatype=POINT_FIELD[dtype],
                                      count=1))
        offset += dtype.itemsize
    point_step = offset + draw(st.integers(0, 12))  # padding after the last field
    height, width = draw(st.integers(1, 2)), draw(st.integers(1, 80))
    # Mostly a compact object near the middle of the default ROI, plus NaN/inf returns.
    centre = np.array([1.5, 0.0, 0.3])
    points = centre + draw(hnp.arrays(np.float64, (height * width, 3),
                                      elements=st.floats(-0.3, 0.3)))
    holes = draw(hnp.arrays(np.bool_, height * width))
    points[holes] = draw(st.sampled_from((np.nan, np.inf, -np.inf, 1e30)))
    big_endian = draw(st.booleans())
    order = ">" if big_endian else "<"
    record = np.zeros((height * width, point_step), np.uint8)
    for fd in fields:
        dtype = next(d for d, code in POINT_FIELD.items() if code == fd.datatype)
        column = points[:, "xyz".index(fd.name)] if fd.name in "xyz" else np.arange(len(points))
        with np.errstate(invalid="ignore", over="ignore"):
            raw = column.astype(dtype.newbyteorder(order)).view(np.uint8).reshape(len(points), -1)
        record[:, fd.offset:fd.offset + dtype.itemsize] = raw
    field_damage = draw(st.sampled_from(("none", "none", "datatype", "count", "offset",
                                         "point_step")))
    if field_damage == "datatype":
        fields[0].datatype = draw(st.sampled_from((0, 9, 255)))
    elif field_damage == "count":
        fields[0].count = draw(st.sampled_from((0, 3)))
    elif field_damage == "offset":
        fields[-1].offset = point_step + draw(st.integers(0, 8))
    values = {"height": height, "width": width, "fields": fields, "point_step": point_step,
              "row_step": point_step * width, "is_bigendian": big_endian,
              "is_dense": draw(st.booleans()), "data": record.tobytes()}
    if field_damage == "point_step":
        values["point_step"] = draw(st.sampled_from((0, 1, point_step - 1, point_step + 1)))
    damage(draw, values, ("height", "width", "point_step", "row_step"))
    return message(**values)


@FUZZ
@given(frames=st.lists(clouds(), min_size=1, max_size=3))
def test_point_cloud_messages_are_contained(runtime, frames: list[Any]) -> None:
    run_stage(runtime, "point_cloud", "sensor_msgs/msg/PointCloud2", frames)


# -- omnibind_ros/EventArray

@st.composite
def event_arrays(draw: st.DrawFn) -> SimpleNamespace:
    width = draw(st.one_of(st.integers(1, 64), st.sampled_from((0, *HUGE))))
    height = draw(st.one_of(st.integers(1, 64), st.sampled_from((0, *HUGE))))
    n = draw(st.integers(0, 60))
    in_sensor = draw(st.booleans())
    x = draw(hnp.arrays(np.uint16, n, elements=st.integers(
        0, min(width, 65536) - 1 if in_sensor and width else 65535)))
    y = draw(hnp.arrays(np.uint16, n, elements=st.integers(
        0, min(height, 65536) - 1 if in_sensor and height else 65535)))
    t = np.sort(draw(hnp.arrays(np.uint32, n)))
    if draw(st.booleans()):
        t = t[::-1].copy()  # time running backwards
    polarity = draw(hnp.arrays(np.uint8, n, elements=st.sampled_from((0, 1, 1, 2))))
    arrays = {"x": array.array("H", x.tobytes()), "y": array.array("H", y.tobytes()),
              "t": array.array("I", t.tobytes()), "polarity": array.array("B", polarity)}
    kind = draw(st.sampled_from(("none", "none", "mismatch", "typecode", "list", "wrong_type")))
    name = draw(st.sampled_from(tuple(arrays)))
    if kind == "mismatch":
        arrays[name] = arrays[name][:-1] if len(arrays[name]) else array.array(
            arrays[name].typecode, [0])
    elif kind == "typecode":
        arrays[name] = array.array("i", [-1] * n)
    elif kind == "list":
        arrays[name] = [int(v) for v in arrays[name]] + [70000]
    elif kind == "wrong_type":
        arrays[name] = draw(st.sampled_from(WRONG_VALUES))
    return message(width=width, height=height, **arrays)


@FUZZ
@given(packets=st.lists(event_arrays(), min_size=1, max_size=3))
def test_event_array_messages_are_contained(runtime, packets: list[Any]) -> None:
    run_stage(runtime, "event", "omnibind_ros/msg/EventArray", packets)


# -- event_camera_msgs/EventPacket (vendor-encoded bytes) -----------------------------------------

def _evt3_words(draw: st.DrawFn) -> bytes:
    """Plausible evt3: time words, a y address, then x events (or any 16-bit words at all)."""
    words = [0x8000, 0x6000, 0x0005]  # TIME_HIGH 0, TIME_LOW 0, ADDR_Y 5
    for _ in range(draw(st.integers(0, 40))):
        words.append(draw(st.one_of(st.integers(0x2000, 0x2FFF), st.integers(0, 0xFFFF))))
    return np.array(words, "<u2").tobytes()


@st.composite
def event_packets(draw: st.DrawFn) -> SimpleNamespace:
    encoding = draw(st.sampled_from(("evt3", "evt3", "mono", "libcaer", "libcaer_cmp", "trigger",
                                     "evt2", "")))
    data = _evt3_words(draw) if encoding == "evt3" else draw(st.binary(max_size=400))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]  # cut mid-word
    fields = {"encoding": encoding, "events": data,
              "width": draw(st.one_of(st.integers(1, 2048), st.sampled_from((0, *HUGE)))),
              "height": draw(st.one_of(st.integers(1, 2048), st.sampled_from((0, *HUGE)))),
              "time_base": draw(st.sampled_from((0, 1, (1 << 63), (1 << 64) - 1))),
              "is_bigendian": draw(st.booleans()), "seq": 0}
    return message(**fields)


@FUZZ
@given(packets=st.lists(event_packets(), min_size=1, max_size=4))
def test_event_packet_messages_are_contained(runtime, packets: list[Any]) -> None:
    """Vendor encodings, cut mid-word, with absurd sensor sizes (decoder state carries over)."""
    run_stage(runtime, "event", "event_camera_msgs/msg/EventPacket", packets)


# -- audio_common_msgs/AudioData (raw bytes, format from AudioInfo) -------------------------------

@FUZZ
@given(chunks=st.lists(st.binary(max_size=2000), min_size=1, max_size=5),
       info=st.one_of(st.none(), st.fixed_dictionaries({
           "channels": st.sampled_from((0, 1, 2, 255)),
           "sample_rate": st.sampled_from((0, 16000, 44100, (1 << 32) - 1)),
           "sample_format": st.sampled_from(("S16LE", "F32LE", "S32BE", "U8", "S24LE", "")),
           "bitrate": st.just(0), "coding_format": st.sampled_from(("wave", "mp3", ""))})))
def test_audio_data_messages_are_contained(runtime, chunks: list[bytes],
                                           info: dict[str, Any] | None) -> None:
    """Raw PCM of any length, under any (or no) AudioInfo a driver may have published."""
    def prepare(convert: Any) -> None:
        if info is not None:
            try:
                convert.update_info(SimpleNamespace(**info))
            except Exception as exc:  # noqa: BLE001  (the node logs a refused info message)
                from omnibind_ros.core.errors import PreprocessError

                assert isinstance(exc, PreprocessError), exc
    messages = [SimpleNamespace(data=array.array("B", chunk)) for chunk in chunks]
    run_stage(runtime, "audio", "audio_common_msgs/msg/AudioData", messages, prepare)


# -- omnibind_ros/AudioChunk

@st.composite
def audio_chunks(draw: st.DrawFn) -> SimpleNamespace:
    encoding = draw(st.sampled_from(("S16LE", "S16LE", "F32LE", "F32LE", "S24LE", "s16le", "")))
    rate = draw(st.sampled_from((16000, 16000, 48000, 44100, 8000, 0, 1, 100, 192000,
                                 (1 << 31) - 1, (1 << 32) - 1)))
    channels = draw(st.sampled_from((1, 1, 2, 4, 0, 255)))
    frames = draw(st.integers(1, 400))
    if encoding == "F32LE":
        style = draw(st.sampled_from(("noise", "silence", "clipped", "specials")))
        shape = (frames, max(channels, 1))
        if style == "noise":
            samples = draw(hnp.arrays(np.float32, shape, elements=st.floats(-0.5, 0.5,
                                                                             width=32)))
        elif style == "silence":
            samples = np.zeros(shape, np.float32)
        elif style == "clipped":
            samples = np.sign(np.arange(shape[0] * shape[1]) % 2 - 0.5).astype(np.float32)
        else:
            samples = draw(hnp.arrays(np.float32, shape, elements=st.floats(width=32)))
        data = samples.astype("<f4").tobytes()
    else:
        data = draw(hnp.arrays(np.int16, frames * max(channels, 1))).astype("<i2").tobytes()
    fields = {"sample_rate": rate, "channels": channels, "encoding": encoding, "data": data}
    damage(draw, fields, ("sample_rate", "channels"))
    if draw(st.integers(0, 5)) == 0 and isinstance(fields["data"], bytes):
        fields["data"] = fields["data"][:-1]  # not a whole number of frames
    return message(**fields)


@FUZZ
@given(chunks=st.lists(audio_chunks(), min_size=1, max_size=6))
def test_audio_chunk_messages_are_contained(runtime, chunks: list[Any]) -> None:
    """A stream of chunks (the preprocessor keeps a window across them), rates switching."""
    run_stage(runtime, "audio", "omnibind_ros/msg/AudioChunk", chunks)


# -- std_msgs/String

texts = st.one_of(
    st.text(max_size=200),
    st.text(st.characters(codec="utf-8", categories=("Cc", "Cf", "Zs", "Zl", "Mn")),
            max_size=50),
    st.sampled_from(("", " ", "\x00", "\n\t", "a" * 100_000, "mug " * 20_000,
                     "\u202e\u200b\ufeff", "\U0001f600" * 300)),
)


@FUZZ
@given(text=st.one_of(texts, st.sampled_from(WRONG_VALUES)))
def test_string_messages_are_contained(runtime, text: Any) -> None:
    """Empty, huge, control characters, bidi marks, emoji, and non-strings (bag readers)."""
    msg = SimpleNamespace(data=text)
    outcome, = run_stage(runtime, "text", "std_msgs/msg/String", [msg])
    if isinstance(text, str) and text.strip() and any(c.isalnum() for c in text):
        assert outcome.kind == "embedding", outcome.reason


# -- the generators reach the encoders

def test_undamaged_messages_of_every_type_become_embeddings(runtime) -> None:
    """Without damage each strategy's message is recognised: the fuzz reaches the encoders."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (12, 12, 3), np.uint8)
    image = message(height=12, width=12, encoding="rgb8", is_bigendian=0, step=36,
                    data=rgb.tobytes())
    counts = rng.integers(28000, 32000, (12, 12)).astype("<u2")
    thermal = message(height=12, width=12, encoding="mono16", is_bigendian=0, step=24,
                      data=counts.tobytes())
    jpeg = message(format="jpeg", data=cv2.imencode(".jpg", rgb)[1].tobytes())
    xyz = (np.array([1.5, 0.0, 0.3]) + rng.normal(0, 0.05, (200, 3))).astype("<f4")
    fields = [SimpleNamespace(name=n, offset=4 * i, datatype=7, count=1)
              for i, n in enumerate("xyz")]
    cloud = message(height=1, width=200, fields=fields, point_step=12, row_step=2400,
                    is_bigendian=False, is_dense=True, data=xyz.tobytes())
    events = message(width=32, height=32, x=array.array("H", rng.integers(0, 32, 500)),
                     y=array.array("H", rng.integers(0, 32, 500)),
                     t=array.array("I", np.sort(rng.integers(0, 10**7, 500))),
                     polarity=array.array("B", rng.integers(0, 2, 500)))
    noise = (rng.normal(0, 3000, 1600)).astype("<i2").tobytes()
    audio = [message(sample_rate=16000, channels=1, encoding="S16LE", data=noise)] * 2
    cases = [("image", IMAGE, [image]), ("thermal", IMAGE, [thermal]),
             ("image", COMPRESSED, [jpeg]), ("point_cloud", "sensor_msgs/msg/PointCloud2",
                                             [cloud]),
             ("event", "omnibind_ros/msg/EventArray", [events]),
             ("audio", "omnibind_ros/msg/AudioChunk", audio),
             ("text", "std_msgs/msg/String", [SimpleNamespace(data="a wooden mug")])]
    for modality, msg_type, messages in cases:
        outcomes = run_stage(runtime, modality, msg_type, messages)
        assert outcomes[-1].kind == "embedding", (modality, msg_type, outcomes[-1].reason)



# -- what the fuzz found (kept as plain regression tests) -----------------------------------------

@pytest.mark.parametrize(("width", "height"), [(1, (1 << 31) - 1), ((1 << 32) - 1, (1 << 32) - 1),
                                               (65535, 65535)])
def test_event_sensor_size_claims_are_refused_before_allocating(width: int, height: int) -> None:
    from omnibind_ros.core.errors import InvalidValueError
    from omnibind_ros.core.preprocess import build_preprocessor
    from omnibind_ros.core.types import EventPacket

    one = np.zeros(1, np.uint16)
    packet = EventPacket(x=one, y=one, t_ns=np.zeros(1, np.int64), polarity=np.ones(1, bool),
                         width=width, height=height)
    with pytest.raises(InvalidValueError, match="exceeds"):
        build_preprocessor("event", {"size": 32})(packet)


@pytest.mark.parametrize("rate", [1, 100, 999, 768_001, (1 << 32) - 1])
def test_audio_rates_no_hardware_runs_at_are_refused(rate: int) -> None:
    from omnibind_ros.core.errors import InvalidValueError
    from omnibind_ros.core.preprocess import build_preprocessor
    from omnibind_ros.core.types import AudioBlock

    pre = build_preprocessor("audio", {"window_s": 0.1, "n_mels": 16, "fmax": 8000.0})
    with pytest.raises(InvalidValueError, match="audio hardware"):
        pre.push(AudioBlock(np.zeros(320, np.float32), rate))


def test_a_tactile_frame_equal_to_its_reference_is_a_bad_sample_not_a_bug(runtime) -> None:
    """The first frame is the reference: a zero difference encodes to zero, a reported bad
    sample (an expected verdict, not "unexpected ValueError")."""
    rgb = np.full((4, 4, 3), 7, np.uint8)
    frame = message(height=4, width=4, encoding="rgb8", is_bigendian=0, step=12,
                    data=rgb.tobytes())
    outcome, = run_stage(runtime, "tactile", IMAGE, [frame])
    assert outcome.kind == "bad" and outcome.reason.startswith("UnusableEmbeddingError")
