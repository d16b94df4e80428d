"""ros/conversions against hand-built messages: round trips, layouts, zero copy, errors, fuzz.

No rclpy.init and no node (as image_geometry's tests build CameraInfo by hand): messages are
constructed directly, their bytes packed with ``struct`` or plain numpy independently of the
builders under test, so a shared mistake in a builder and a converter cannot cancel out.

Zero copy, what is achievable with rclpy: a received message keeps every primitive sequence
(``uint8[] data``, ``uint16[] x``...) in an ``array.array``; converters view it in place
(``np.shares_memory`` with the message's buffer). Building a message always copies: the field
setter copies whatever it is given into a new ``array.array`` (a memcpy for ``bytes``/``array``,
an element-by-element loop for an ndarray, which is why builders assign ``bytes``).
"""
from __future__ import annotations

import array
import struct
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnibind_ros.core import errors
from omnibind_ros.core.errors import (
    ConversionError,
    EmptyInputError,
    InvalidDtypeError,
    InvalidShapeError,
    InvalidValueError,
    NonFiniteInputError,
    PreprocessError,
    UnsupportedEncodingError,
)
from omnibind_ros.core.modalities import MODALITY_SPECS
from omnibind_ros.core.types import AudioBlock, EventPacket, TactileFrame, ThermalFrame
from omnibind_ros.ros import conversions as conv

pytestmark = pytest.mark.ros

RNG = np.random.default_rng(7)

# Expected layout per encoding, written out independently of conv.ENCODINGS:
# (dtype, channels, channel_order).
EXPECTED_ENCODINGS = {
    "rgb8": ("u1", 3, "rgb"), "bgr8": ("u1", 3, "bgr"), "rgba8": ("u1", 4, "rgba"),
    "bgra8": ("u1", 4, "bgra"), "mono8": ("u1", 1, "mono"), "mono16": ("u2", 1, "mono"),
    "16UC1": ("u2", 1, "mono"), "32FC1": ("f4", 1, "mono"), "8UC1": ("u1", 1, "mono"),
    "8UC3": ("u1", 3, "bgr"), "8UC4": ("u1", 4, "bgra"), "rgb16": ("u2", 3, "rgb"),
    "bgr16": ("u2", 3, "bgr"), "rgba16": ("u2", 4, "rgba"), "bgra16": ("u2", 4, "bgra"),
}


def buffer_of(field: Any) -> np.ndarray:
    """The bytes a message field holds, as a uint8 view (for np.shares_memory)."""
    return np.frombuffer(field, np.uint8)


def random_pixels(encoding: str, height: int = 5, width: int = 7) -> np.ndarray:
    dtype, channels, _ = EXPECTED_ENCODINGS[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype == "f4":
        return RNG.uniform(-40.0, 400.0, shape).astype(np.float32)
    return RNG.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def image_msg(pixels: np.ndarray, encoding: str, pad: int = 0, big_endian: bool = False) -> Any:
    """An Image packed by hand: rows of raw values, each followed by ``pad`` junk bytes."""
    from sensor_msgs.msg import Image

    order = ">" if big_endian else "<"
    rows = [np.ascontiguousarray(row, pixels.dtype.newbyteorder(order)).tobytes() + b"\xa5" * pad
            for row in pixels]
    return Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding,
                 is_bigendian=int(big_endian), step=len(rows[0]), data=b"".join(rows))


# ---------------------------------------------------------------------------------------------
# sensor_msgs/Image

def test_encoding_table_is_the_documented_one() -> None:
    assert set(conv.ENCODINGS) == set(EXPECTED_ENCODINGS)
    for name, (dtype, channels, order) in EXPECTED_ENCODINGS.items():
        assert conv.ENCODINGS[name] == (np.dtype(dtype), channels, order)


@pytest.mark.parametrize("encoding", sorted(EXPECTED_ENCODINGS))
@pytest.mark.parametrize("pad", [0, 1, 3, 8])
def test_image_round_trip_every_encoding_and_row_padding(encoding: str, pad: int) -> None:
    pixels = random_pixels(encoding)
    row_bytes = pixels.shape[1] * pixels[0, 0].nbytes
    msg = conv.numpy_to_image(pixels, encoding, 12.5, "cam", step=row_bytes + pad)
    assert msg.step == row_bytes + pad and len(msg.data) == msg.step * msg.height
    assert isinstance(msg.data, array.array)  # bytes were assigned, rclpy keeps array.array
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (
        12, 500_000_000, "cam")
    image, order = conv.image_to_numpy(msg)
    assert order == EXPECTED_ENCODINGS[encoding][2]
    assert image.dtype == pixels.dtype and image.shape == pixels.shape
    np.testing.assert_array_equal(image, pixels)
    assert np.shares_memory(image, buffer_of(msg.data)), "8/16/32-bit little-endian: a view"
    assert not image.flags.writeable


@pytest.mark.parametrize("align", [4, 8])
@pytest.mark.parametrize("encoding", ["rgb8", "mono8", "mono16", "32FC1", "bgra8"])
def test_hand_built_rows_padded_to_alignment(encoding: str, align: int) -> None:
    pixels = random_pixels(encoding, height=4, width=5)  # odd width: rows need padding
    row_bytes = pixels.shape[1] * pixels[0, 0].nbytes
    pad = -row_bytes % align
    msg = image_msg(pixels, encoding, pad=pad)
    assert msg.step % align == 0
    image, _ = conv.image_to_numpy(msg)
    np.testing.assert_array_equal(image, pixels)
    assert np.shares_memory(image, buffer_of(msg.data))
    assert image.strides[0] == msg.step  # the padding is skipped by the stride, not copied


def test_big_endian_mono16_hand_built() -> None:
    from sensor_msgs.msg import Image

    values = [[0x0102, 0xFF00, 30000], [1, 2, 65535]]
    data = b"".join(struct.pack(">3H", *row) + b"\x00\x00" for row in values)  # step 8
    msg = Image(height=2, width=3, encoding="mono16", is_bigendian=1, step=8, data=data)
    image, order = conv.image_to_numpy(msg)
    assert order == "mono" and image.dtype == np.uint16 and image.dtype.isnative
    np.testing.assert_array_equal(image, values)
    # A big-endian message cannot be a native view: it is swapped into a copy.
    assert not np.shares_memory(image, buffer_of(msg.data))


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "32FC1", "rgb16"])
def test_big_endian_round_trip(encoding: str) -> None:
    pixels = random_pixels(encoding)
    msg = conv.numpy_to_image(pixels, encoding, big_endian=True, step=None)
    assert msg.is_bigendian == 1
    raw = np.frombuffer(msg.data, pixels.dtype.newbyteorder(">")).reshape(pixels.shape)
    np.testing.assert_array_equal(raw, pixels)  # the builder really wrote big-endian
    np.testing.assert_array_equal(conv.image_to_numpy(msg).image, pixels)


def test_image_converter_accepts_duck_typed_messages_and_bytes() -> None:
    pixels = random_pixels("rgb8", 3, 4)
    msg = SimpleNamespace(height=3, width=4, encoding="rgb8", is_bigendian=0, step=12,
                          data=pixels.tobytes())
    image, order = conv.image_to_numpy(msg)
    np.testing.assert_array_equal(image, pixels)
    assert np.shares_memory(image, np.frombuffer(msg.data, np.uint8))


def test_padded_view_goes_through_image_preprocessing() -> None:
    from omnibind_ros.core.preprocess import ImagePreprocessor

    pixels = random_pixels("bgr8", 30, 41)
    image, order = conv.image_to_numpy(image_msg(pixels, "bgr8", pad=5))
    pre = ImagePreprocessor()
    out = pre(image, channel_order=order)
    expected = pre(np.ascontiguousarray(pixels[:, :, ::-1]), channel_order="rgb")
    np.testing.assert_allclose(out, expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Thermal and tactile

@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "mono8", "32FC1"])
def test_thermal_round_trip(encoding: str) -> None:
    data = random_pixels(encoding, 6, 8)
    frame = ThermalFrame(data=data, encoding=encoding)
    msg = conv.thermal_to_image(frame, 3.0, "thermal")
    back = conv.thermal_from_image(msg, kelvin_per_count=0.04)
    assert back.encoding == encoding and back.kelvin_per_count == 0.04
    np.testing.assert_array_equal(back.data, data)
    assert np.shares_memory(back.data, buffer_of(msg.data))


def test_thermal_big_endian_counts_feed_preprocessing() -> None:
    from omnibind_ros.core.preprocess import ThermalPreprocessor

    counts = np.full((8, 8), 30015, np.uint16)  # 300.15 K = 27 degC
    frame = conv.thermal_from_image(image_msg(counts, "mono16", big_endian=True))
    unit = ThermalPreprocessor()(frame)
    reference = ThermalPreprocessor()(ThermalFrame(counts, "mono16"))
    np.testing.assert_allclose(unit, reference)


def test_thermal_32fc1_keeps_isolated_nans_rejects_all_nan() -> None:
    celsius = np.full((4, 4), 21.5, np.float32)
    celsius[1, 2] = np.nan
    frame = conv.thermal_from_image(image_msg(celsius, "32FC1"))
    assert np.isnan(frame.data[1, 2]) and frame.data[0, 0] == np.float32(21.5)
    with pytest.raises(NonFiniteInputError):
        conv.thermal_from_image(image_msg(np.full((4, 4), np.nan, np.float32), "32FC1"))


def test_thermal_from_compressed_png_keeps_16_bit_counts() -> None:
    from omnibind_ros.core.preprocess import ThermalPreprocessor

    counts = np.linspace(27000, 31000, 48, dtype=np.uint16).reshape(6, 8)
    msg = conv.numpy_to_compressed_image(counts, "png", "mono")
    frame = conv.conversion_for("thermal", "sensor_msgs/msg/CompressedImage")(msg)
    assert frame.encoding == "mono16" and frame.data.dtype == np.uint16
    np.testing.assert_array_equal(frame.data, counts)     # PNG is lossless, 16 bits kept
    np.testing.assert_allclose(ThermalPreprocessor()(frame),
                               ThermalPreprocessor()(ThermalFrame(counts, "mono16")))
    grey8 = conv.thermal_from_compressed_image(
        conv.numpy_to_compressed_image(np.full((4, 4), 90, np.uint8), "png", "mono"))
    assert grey8.encoding == "mono8"
    with pytest.raises(UnsupportedEncodingError, match="false-colour"):
        conv.thermal_from_compressed_image(
            conv.numpy_to_compressed_image(random_pixels("rgb8", 6, 8), "png", "rgb"))


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC3"])
def test_tactile_from_image_is_rgb(encoding: str) -> None:
    rgb = random_pixels("rgb8", 6, 9)
    source = {
        "rgb8": rgb, "bgr8": rgb[:, :, ::-1], "8UC3": rgb[:, :, ::-1],
        "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
        "bgra8": np.dstack([rgb[:, :, ::-1], np.zeros(rgb.shape[:2], np.uint8)]),
        "mono8": rgb[:, :, 0],
    }[encoding]
    frame = conv.tactile_from_image(image_msg(np.ascontiguousarray(source), encoding))
    expected = np.repeat(rgb[:, :, :1], 3, axis=2) if encoding == "mono8" else rgb
    assert frame.reference is None and frame.image.dtype == np.uint8
    np.testing.assert_array_equal(frame.image, expected)
    assert frame.image.flags.c_contiguous


def test_tactile_rgb8_unpadded_is_a_view_and_round_trips() -> None:
    rgb = random_pixels("rgb8", 5, 5)
    for encoding in ("rgb8", "bgr8"):
        msg = conv.tactile_to_image(TactileFrame(rgb), 1.0, "gel", encoding=encoding)
        assert msg.encoding == encoding
        frame = conv.tactile_from_image(msg)
        np.testing.assert_array_equal(frame.image, rgb)
        assert np.shares_memory(frame.image, buffer_of(msg.data)) == (encoding == "rgb8")


# ---------------------------------------------------------------------------------------------
# sensor_msgs/CompressedImage

def test_png_round_trip_is_exact_and_bgr() -> None:
    rgb = random_pixels("rgb8", 12, 17)
    msg = conv.numpy_to_compressed_image(rgb, "png", "rgb", 2.0, "cam")
    assert msg.format == "rgb8; png compressed bgr8"
    image, order = conv.compressed_image_to_numpy(msg)
    assert order == "bgr"
    np.testing.assert_array_equal(image[:, :, ::-1], rgb)


def test_png_16bit_mono_and_jpeg_round_trip() -> None:
    depth = random_pixels("mono16", 9, 11)
    image, order = conv.compressed_image_to_numpy(
        conv.numpy_to_compressed_image(depth, "png", "mono"))
    assert order == "mono" and image.dtype == np.uint16
    np.testing.assert_array_equal(image, depth)
    smooth = np.dstack([*np.meshgrid(np.arange(64), np.arange(48)), np.full((48, 64), 7)])
    smooth = (smooth * 3).astype(np.uint8)
    msg = conv.numpy_to_compressed_image(smooth, "jpeg", "rgb", jpeg_quality=95)
    assert msg.format == "rgb8; jpeg compressed bgr8"
    image, order = conv.compressed_image_to_numpy(msg)
    assert order == "bgr" and image.shape == smooth.shape
    assert np.abs(image[:, :, ::-1].astype(int) - smooth).mean() < 2.0  # lossy, but close


@pytest.mark.parametrize("fmt", ["jpeg", "png", "", "rgb8; jpeg compressed bgr8", "JPG",
                                 "bgr8; png compressed bgr8"])
def test_compressed_format_strings(fmt: str) -> None:
    import cv2
    from sensor_msgs.msg import CompressedImage

    bgr = random_pixels("bgr8", 8, 8)
    ext = ".jpg" if "jp" in fmt.lower() else ".png"
    msg = CompressedImage(format=fmt, data=cv2.imencode(ext, bgr)[1].tobytes())
    image, order = conv.compressed_image_to_numpy(msg)
    assert order == "bgr" and image.shape == (8, 8, 3)


def test_tactile_from_compressed_image() -> None:
    rgb = random_pixels("rgb8", 10, 10)
    frame = conv.tactile_from_compressed_image(conv.numpy_to_compressed_image(rgb, "png"))
    np.testing.assert_array_equal(frame.image, rgb)


def compressed_depth_msg(depth: np.ndarray, fmt: str, quant: tuple[float, float]) -> Any:
    """compressed_depth_image_transport layout: int32 format, float32[2] params, then PNG."""
    import cv2
    from sensor_msgs.msg import CompressedImage

    header = struct.pack("<iff", 0, *quant)
    return CompressedImage(format=fmt, data=header + cv2.imencode(".png", depth)[1].tobytes())


def test_compressed_depth_png() -> None:
    depth = random_pixels("16UC1", 6, 7)
    image, order = conv.compressed_image_to_numpy(
        compressed_depth_msg(depth, "16UC1; compressedDepth png", (0.0, 0.0)))
    assert order == "mono"
    np.testing.assert_array_equal(image, depth)
    # 32FC1: inverse-depth quantisation, value = A / (d - B), 0 = no depth.
    quant_a, quant_b = 100.0, -10.0
    metres = np.array([[1.0, 2.0], [4.0, np.nan]], np.float32)
    quantised = np.where(np.isnan(metres), 0, np.round(quant_a / metres + quant_b))
    image, _ = conv.compressed_image_to_numpy(compressed_depth_msg(
        quantised.astype(np.uint16), "32FC1; compressedDepth png", (quant_a, quant_b)))
    np.testing.assert_allclose(image, metres, rtol=1e-3)


# ---------------------------------------------------------------------------------------------
# sensor_msgs/PointCloud2, hand-built with struct

def point_field(name: str, offset: int, datatype: int, count: int = 1) -> Any:
    from sensor_msgs.msg import PointField

    return PointField(name=name, offset=offset, datatype=datatype, count=count)


def cloud_msg(fields: list[Any], point_step: int, rows: list[bytes], width: int,
              big_endian: bool = False, dense: bool = True) -> Any:
    from sensor_msgs.msg import PointCloud2

    return PointCloud2(height=len(rows), width=width, fields=fields, is_bigendian=big_endian,
                       point_step=point_step, row_step=len(rows[0]), data=b"".join(rows),
                       is_dense=dense)


XYZ = np.array([[1.0, 2.0, 3.0], [-4.5, 0.25, 6.0], [7.0, -8.0, 0.5], [0.0, 0.0, 1e-3]],
               np.float32)


def test_pcl_like_layout_xyz_intensity_ring_padding() -> None:
    # x y z, 4 pad bytes (PCL's 16-byte xyz), intensity f32, ring u16, 10 pad: 32-byte points.
    fields = [point_field("x", 0, 7), point_field("y", 4, 7), point_field("z", 8, 7),
              point_field("intensity", 16, 7), point_field("ring", 20, 4)]
    data = b"".join(struct.pack("<fff4xfH10x", *p, 10.0 * i, i) for i, p in enumerate(XYZ))
    msg = cloud_msg(fields, 32, [data], width=4)
    xyz = conv.pointcloud2_to_xyz(msg)
    np.testing.assert_array_equal(xyz, XYZ)
    assert xyz.dtype == np.float32 and np.shares_memory(xyz, buffer_of(msg.data))
    records = conv.pointcloud2_to_array(msg)
    assert records.shape == (1, 4) and np.shares_memory(records, buffer_of(msg.data))
    np.testing.assert_array_equal(records["ring"][0], [0, 1, 2, 3])
    np.testing.assert_array_equal(records["intensity"][0], [0, 10, 20, 30])
    np.testing.assert_array_equal(conv.pointcloud2_to_xyz(msg, ("intensity", "ring"))[:, 1],
                                  [0, 1, 2, 3])


def test_float64_xyz_is_cast() -> None:
    fields = [point_field("x", 0, 8), point_field("y", 8, 8), point_field("z", 16, 8)]
    data = b"".join(struct.pack("<ddd", *p) for p in XYZ.astype(np.float64))
    xyz = conv.pointcloud2_to_xyz(cloud_msg(fields, 24, [data], width=4))
    assert xyz.dtype == np.float32
    np.testing.assert_array_equal(xyz, XYZ)


def test_big_endian_cloud() -> None:
    fields = [point_field("x", 0, 7), point_field("y", 4, 7), point_field("z", 8, 7),
              point_field("label", 12, 1)]
    data = b"".join(struct.pack(">fffb3x", *p, -i) for i, p in enumerate(XYZ))
    msg = cloud_msg(fields, 16, [data], width=4, big_endian=True)
    np.testing.assert_array_equal(conv.pointcloud2_to_xyz(msg), XYZ)
    np.testing.assert_array_equal(conv.pointcloud2_to_array(msg)["label"][0], [0, -1, -2, -3])


def test_organised_cloud_with_nans_and_row_padding() -> None:
    nan = float("nan")
    grid = [[(1, 2, 3), (nan, nan, nan), (4, 5, 6)],
            [(7, 8, 9), (10, nan, 11), (float("inf"), 0, 0)]]
    fields = [point_field("x", 0, 7), point_field("y", 4, 7), point_field("z", 8, 7)]
    rows = [b"".join(struct.pack("<fff4x", *p) for p in row) + b"\xee" * 8 for row in grid]
    msg = cloud_msg(fields, 16, rows, width=3, dense=False)
    assert msg.height == 2 and msg.row_step == 3 * 16 + 8
    np.testing.assert_array_equal(conv.pointcloud2_to_xyz(msg),
                                  [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    everything = conv.pointcloud2_to_xyz(msg, skip_nans=False)
    assert everything.shape == (6, 3) and np.isnan(everything[1]).all()
    assert conv.pointcloud2_to_array(msg).shape == (2, 3)


def test_all_eight_datatypes_at_unaligned_offsets() -> None:
    names = "abcdefgh"
    fmt = "<bBhHiIfd"  # datatypes 1..8, packed with no alignment: offsets 0,1,2,4,6,10,14,18
    offsets = np.cumsum([0] + [struct.calcsize("<" + c) for c in fmt[1:-1]]).tolist()
    fields = [point_field(n, o, dt) for n, o, dt in zip(names, offsets, range(1, 9), strict=True)]
    values = [(-5, 250, -30000, 65000, -2_000_000_000, 4_000_000_000, 1.5, -2.25),
              (7, 1, 2, 3, 4, 5, 6.0, 7.0)]
    data = b"".join(struct.pack(fmt, *v) for v in values)
    msg = cloud_msg(fields, struct.calcsize(fmt), [data], width=2)
    records = conv.pointcloud2_to_array(msg)
    for i, name in enumerate(names):
        assert records[name].dtype.itemsize == struct.calcsize("<" + fmt[i + 1])
        np.testing.assert_array_equal(records[name][0], [v[i] for v in values])
    columns = conv.pointcloud2_to_xyz(msg, tuple(names))
    np.testing.assert_array_equal(columns, np.array(values, np.float64).astype(np.float32))


def test_count_greater_than_one_is_a_sub_array() -> None:
    fields = [point_field("x", 0, 7), point_field("y", 4, 7), point_field("z", 8, 7),
              point_field("rgb", 12, 2, count=3)]
    data = b"".join(struct.pack("<fff3Bx", *p, i, i + 1, i + 2) for i, p in enumerate(XYZ))
    msg = cloud_msg(fields, 16, [data], width=4)
    assert conv.pointcloud2_to_array(msg)["rgb"].shape == (1, 4, 3)
    np.testing.assert_array_equal(conv.pointcloud2_to_xyz(msg), XYZ)
    with pytest.raises(InvalidShapeError, match="count 3"):
        conv.pointcloud2_to_xyz(msg, ("x", "rgb"))


@pytest.mark.parametrize("shape", [(50, 3), (4, 6, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_xyz_round_trip_with_extra_fields(shape: tuple[int, ...], dtype: type) -> None:
    points = RNG.normal(size=shape).astype(dtype)
    extra = {"intensity": RNG.random(shape[:-1]).astype(np.float32),
             "ring": RNG.integers(0, 64, shape[:-1]).astype(np.uint16),
             "valid": RNG.random(shape[:-1]) > 0.5}
    msg = conv.xyz_to_pointcloud2(points, 4.0, "lidar", extra)
    assert (msg.height, msg.width) == ((1,) + shape[:1] if len(shape) == 2 else shape[:2])
    assert msg.is_dense and msg.row_step == msg.point_step * msg.width
    xyz = conv.pointcloud2_to_xyz(msg)
    np.testing.assert_array_equal(xyz, points.reshape(-1, 3).astype(np.float32))
    assert np.shares_memory(xyz, buffer_of(msg.data)) == (dtype == np.float32)
    records = conv.pointcloud2_to_array(msg).reshape(shape[:-1])
    for name, values in extra.items():
        np.testing.assert_array_equal(records[name], values)
    offsets = {pf.name: pf.offset for pf in msg.fields}
    assert all(pf.offset % np.dtype(conv.POINT_FIELD_DTYPES[pf.datatype]).itemsize == 0
               for pf in msg.fields), offsets


def test_xyz_builder_marks_nan_clouds_not_dense() -> None:
    points = XYZ.copy()
    points[1] = np.nan
    msg = conv.xyz_to_pointcloud2(points)
    assert not msg.is_dense
    np.testing.assert_array_equal(conv.pointcloud2_to_xyz(msg), XYZ[[0, 2, 3]])


# ---------------------------------------------------------------------------------------------
# omnibind_ros/EventArray

def event_msg(width: int, height: int, x: list[int], y: list[int], t: list[int],
              p: list[int]) -> Any:
    from omnibind_ros.msg import EventArray

    return EventArray(width=width, height=height, x=array.array("H", x), y=array.array("H", y),
                      t=array.array("I", t), polarity=array.array("B", p))


def test_event_array_hand_built_views() -> None:
    msg = event_msg(640, 480, [0, 639, 5], [479, 0, 7], [0, 0, 4_000_000_000], [1, 0, 1])
    packet = conv.event_array_to_packet(msg)
    assert (packet.width, packet.height, len(packet)) == (640, 480, 3)
    np.testing.assert_array_equal(packet.x, [0, 639, 5])
    np.testing.assert_array_equal(packet.t_ns, [0, 0, 4_000_000_000])
    assert packet.t_ns.dtype == np.int64 and packet.polarity.dtype == np.bool_
    np.testing.assert_array_equal(packet.polarity, [True, False, True])
    assert np.shares_memory(packet.x, buffer_of(msg.x))
    assert np.shares_memory(packet.polarity, buffer_of(msg.polarity))


def test_event_round_trip_and_empty_packet() -> None:
    n = 1000
    packet = EventPacket(x=RNG.integers(0, 346, n).astype(np.uint16),
                         y=RNG.integers(0, 260, n).astype(np.uint16),
                         t_ns=np.sort(RNG.integers(0, 2**32 - 1, n)),
                         polarity=RNG.random(n) > 0.5, width=346, height=260)
    msg = conv.packet_to_event_array(packet, 5.25, "dvs")
    assert msg.header.frame_id == "dvs" and msg.header.stamp.nanosec == 250_000_000
    back = conv.event_array_to_packet(msg)
    for name in ("x", "y", "t_ns", "polarity"):
        np.testing.assert_array_equal(getattr(back, name), getattr(packet, name))
    empty = conv.event_array_to_packet(event_msg(10, 10, [], [], [], []))
    assert len(empty) == 0  # a quiet scene: valid, the camera is alive


def test_event_packet_feeds_preprocessing() -> None:
    from omnibind_ros.core.preprocess import EventPreprocessor

    msg = event_msg(32, 24, [1, 2, 3, 30], [4, 5, 6, 20], [0, 10, 20, 30], [1, 0, 1, 1])
    out = EventPreprocessor()(conv.event_array_to_packet(msg))
    assert out.ndim == 3 and np.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# omnibind_ros/AudioChunk

def test_audio_chunk_hand_built_stereo_s16() -> None:
    from omnibind_ros.msg import AudioChunk

    frames = [(1, -1), (32767, -32768), (0, 5)]
    data = struct.pack("<6h", *[v for f in frames for v in f])
    msg = AudioChunk(sample_rate=48000, channels=2, encoding=AudioChunk.ENCODING_S16LE,
                     data=data)
    block = conv.audio_chunk_to_block(msg)
    assert block.sample_rate == 48000 and block.samples.dtype == np.int16
    np.testing.assert_array_equal(block.samples, frames)
    assert np.shares_memory(block.samples, buffer_of(msg.data))


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("encoding", ["S16LE", "F32LE"])
def test_audio_round_trip_multichannel(encoding: str, channels: int) -> None:
    floats = RNG.uniform(-1, 1, (257, channels)).astype(np.float32)
    as_int = np.round(floats * 32768).clip(-32768, 32767).astype(np.int16)
    for samples in (floats, as_int):
        msg = conv.block_to_audio_chunk(AudioBlock(samples, 16000), encoding, 1.0, "mic")
        assert msg.channels == channels and msg.encoding == encoding
        block = conv.audio_chunk_to_block(msg)
        assert block.samples.shape == (257, channels)
        if encoding == "F32LE":
            expected = floats if samples is floats else as_int / np.float32(32768)
            np.testing.assert_array_equal(block.samples, expected.astype(np.float32))
        else:
            np.testing.assert_array_equal(block.samples, as_int)
        assert np.shares_memory(block.samples, buffer_of(msg.data))


def test_mono_block_and_float_clipping() -> None:
    samples = np.array([0.0, 0.5, -1.0, 1.0, 2.0], np.float32)
    block = conv.audio_chunk_to_block(conv.block_to_audio_chunk(AudioBlock(samples, 8000)))
    np.testing.assert_array_equal(block.samples[:, 0], [0, 16384, -32768, 32767, 32767])


# ---------------------------------------------------------------------------------------------
# Malformed messages -> the specific error

def ns(**fields: Any) -> SimpleNamespace:
    return SimpleNamespace(**fields)


def img(**over: Any) -> SimpleNamespace:
    base = dict(height=2, width=3, encoding="rgb8", is_bigendian=0, step=9, data=bytes(18))
    return ns(**{**base, **over})


def cloud(**over: Any) -> SimpleNamespace:
    xyz = [ns(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate("xyz")]
    base = dict(height=1, width=2, fields=xyz, is_bigendian=False, point_step=12, row_step=24,
                data=np.zeros(6, np.float32).tobytes(), is_dense=True)
    return ns(**{**base, **over})


def events(**over: Any) -> SimpleNamespace:
    base = dict(width=4, height=4, x=[0, 1], y=[2, 3], t=[0, 1], polarity=[0, 1])
    return ns(**{**base, **over})


def chunk(**over: Any) -> SimpleNamespace:
    base = dict(sample_rate=16000, channels=2, encoding="S16LE", data=bytes(8))
    return ns(**{**base, **over})


MALFORMED = [
    ("image step too small", conv.image_to_numpy, img(step=8), InvalidShapeError),
    ("image data short", conv.image_to_numpy, img(data=bytes(17)), InvalidShapeError),
    ("image data long", conv.image_to_numpy, img(data=bytes(19)), InvalidShapeError),
    ("image unknown encoding", conv.image_to_numpy, img(encoding="yuv422"),
     UnsupportedEncodingError),
    ("image encoding case", conv.image_to_numpy, img(encoding="RGB8"), UnsupportedEncodingError),
    ("image empty", conv.image_to_numpy, img(width=0, step=0, data=b""), EmptyInputError),
    ("image missing step", conv.image_to_numpy, ns(height=1, width=1, encoding="mono8",
                                                   is_bigendian=0, data=b"\x00"),
     ConversionError),
    ("image width str", conv.image_to_numpy, img(width="3"), ConversionError),
    ("image width negative", conv.image_to_numpy, img(width=-3), InvalidValueError),
    ("image data None", conv.image_to_numpy, img(data=None), InvalidDtypeError),
    ("image data out of byte range", conv.image_to_numpy, img(data=[256] * 18),
     InvalidValueError),
    ("thermal colour", conv.thermal_from_image, img(), UnsupportedEncodingError),
    ("thermal all NaN", conv.thermal_from_image,
     img(encoding="32FC1", width=1, height=1, step=4, data=struct.pack("<f", float("nan"))),
     NonFiniteInputError),
    ("tactile 16 bit", conv.tactile_from_image,
     img(encoding="mono16", step=6, data=bytes(12)), InvalidDtypeError),
    ("compressed h264", conv.compressed_image_to_numpy, ns(format="h264", data=b"\x00" * 9),
     UnsupportedEncodingError),
    ("compressed garbage", conv.compressed_image_to_numpy, ns(format="jpeg", data=b"nope" * 9),
     ConversionError),
    ("compressed empty", conv.compressed_image_to_numpy, ns(format="png", data=b""),
     EmptyInputError),
    ("compressed rvl depth", conv.compressed_image_to_numpy,
     ns(format="16UC1; compressedDepth rvl", data=bytes(40)), UnsupportedEncodingError),
    ("compressed depth no image", conv.compressed_image_to_numpy,
     ns(format="16UC1; compressedDepth png", data=bytes(12)), EmptyInputError),
    ("cloud missing z", conv.pointcloud2_to_xyz, cloud(fields=cloud().fields[:2]),
     InvalidShapeError),
    ("cloud datatype 9", conv.pointcloud2_to_xyz,
     cloud(fields=[*cloud().fields, ns(name="i", offset=0, datatype=9, count=1)]),
     UnsupportedEncodingError),
    ("cloud field past point", conv.pointcloud2_to_xyz, cloud(point_step=10, row_step=20,
                                                              data=bytes(20)),
     InvalidShapeError),
    ("cloud data size", conv.pointcloud2_to_xyz, cloud(data=bytes(23)), InvalidShapeError),
    ("cloud row_step short", conv.pointcloud2_to_xyz, cloud(row_step=12, data=bytes(12)),
     InvalidShapeError),
    ("cloud empty", conv.pointcloud2_to_xyz, cloud(width=0, row_step=0, data=b""),
     EmptyInputError),
    ("cloud all NaN", conv.pointcloud2_to_xyz,
     cloud(data=np.full(6, np.nan, np.float32).tobytes(), is_dense=False), NonFiniteInputError),
    ("cloud point_step 0", conv.pointcloud2_to_xyz, cloud(point_step=0), InvalidShapeError),
    ("cloud count 0", conv.pointcloud2_to_xyz,
     cloud(fields=[ns(name="x", offset=0, datatype=7, count=0)]), InvalidShapeError),
    ("cloud fields not a list", conv.pointcloud2_to_array, cloud(fields=7), InvalidDtypeError),
    ("cloud field name int", conv.pointcloud2_to_array,
     cloud(fields=[ns(name=1, offset=0, datatype=7, count=1)]), ConversionError),
    ("events lengths", conv.event_array_to_packet, events(t=[0]), InvalidShapeError),
    ("events x outside", conv.event_array_to_packet, events(x=[0, 4]), InvalidValueError),
    ("events t backwards", conv.event_array_to_packet, events(t=[5, 4]), InvalidValueError),
    ("events polarity 2", conv.event_array_to_packet, events(polarity=[2, 0]),
     InvalidValueError),
    ("events zero width", conv.event_array_to_packet, events(width=0), InvalidValueError),
    ("events negative x", conv.event_array_to_packet, events(x=[-1, 0]), InvalidValueError),
    ("events float t", conv.event_array_to_packet, events(t=[0.5, 1.0]), InvalidDtypeError),
    ("events signed array", conv.event_array_to_packet,
     events(x=array.array("h", [-1, 0])), InvalidValueError),
    ("audio S24LE", conv.audio_chunk_to_block, chunk(encoding="S24LE"),
     UnsupportedEncodingError),
    ("audio partial frame", conv.audio_chunk_to_block, chunk(data=bytes(6)), InvalidShapeError),
    ("audio NaN", conv.audio_chunk_to_block,
     chunk(encoding="F32LE", data=struct.pack("<2f", 0.1, float("nan"))), NonFiniteInputError),
    ("audio empty", conv.audio_chunk_to_block, chunk(data=b""), EmptyInputError),
    ("audio zero channels", conv.audio_chunk_to_block, chunk(channels=0), InvalidValueError),
    ("audio zero rate", conv.audio_chunk_to_block, chunk(sample_rate=0), InvalidValueError),
    ("audio 256 channels", conv.audio_chunk_to_block, chunk(channels=256), InvalidValueError),
    ("text empty", conv.string_to_text, ns(data="  "), EmptyInputError),
    ("text not str", conv.string_to_text, ns(data=5), ConversionError),
]


@pytest.mark.parametrize(("converter", "msg", "error"),
                         [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_message_raises_the_specific_error(converter: Any, msg: Any,
                                                     error: type) -> None:
    with pytest.raises(error) as info:
        converter(msg)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert str(info.value)  # says what was expected and what came


BAD_BUILDER_INPUTS = [
    ("image dtype", lambda: conv.numpy_to_image(np.zeros((2, 2), np.float64), "32FC1"),
     InvalidDtypeError),
    ("image channels", lambda: conv.numpy_to_image(np.zeros((2, 2, 4), np.uint8), "rgb8"),
     InvalidShapeError),
    ("image encoding", lambda: conv.numpy_to_image(np.zeros((2, 2), np.uint8), "yuv422"),
     UnsupportedEncodingError),
    ("image step", lambda: conv.numpy_to_image(np.zeros((2, 2), np.uint8), "mono8", step=1),
     InvalidShapeError),
    ("image stamp", lambda: conv.numpy_to_image(np.zeros((2, 2), np.uint8), "mono8", -1.0),
     InvalidValueError),
    ("cloud dtype", lambda: conv.xyz_to_pointcloud2(np.zeros((2, 3), np.int32)),
     InvalidDtypeError),
    ("cloud extra dtype", lambda: conv.xyz_to_pointcloud2(
        np.zeros((2, 3), np.float32), extra_fields={"c": np.zeros(2, np.complex64)}),
     InvalidDtypeError),
    ("cloud extra shape", lambda: conv.xyz_to_pointcloud2(
        np.zeros((2, 3), np.float32), extra_fields={"i": np.zeros(3, np.float32)}),
     InvalidShapeError),
    ("events t span", lambda: conv.packet_to_event_array(EventPacket(
        np.zeros(1, np.uint16), np.zeros(1, np.uint16), np.array([2**32]), np.ones(1, bool),
        4, 4)), InvalidValueError),
    ("audio NaN", lambda: conv.block_to_audio_chunk(AudioBlock(np.array([np.nan]), 8000)),
     NonFiniteInputError),
    ("audio int32", lambda: conv.block_to_audio_chunk(AudioBlock(np.zeros(4, np.int32), 8000)),
     InvalidDtypeError),
    ("thermal encoding", lambda: conv.thermal_to_image(ThermalFrame(np.zeros((2, 2)), "rgb8")),
     UnsupportedEncodingError),
]


@pytest.mark.parametrize(("build", "error"), [b[1:] for b in BAD_BUILDER_INPUTS],
                         ids=[b[0] for b in BAD_BUILDER_INPUTS])
def test_builders_reject_bad_input(build: Any, error: type) -> None:
    with pytest.raises(error):
        build()


def test_conversion_error_is_a_preprocess_error() -> None:
    assert issubclass(ConversionError, PreprocessError)
    assert "ConversionError" in errors.__all__


# ---------------------------------------------------------------------------------------------
# conversion_for

def test_conversion_for_covers_every_registered_modality_type() -> None:
    for modality, spec in MODALITY_SPECS.items():
        for ros_type in spec.ros_types:
            assert callable(conv.conversion_for(modality.value, ros_type)), (modality, ros_type)


def test_conversion_for_spellings_and_errors() -> None:
    from sensor_msgs.msg import Image, PointCloud2

    assert conv.conversion_for("image", "sensor_msgs/Image") is conv.image_to_numpy
    assert conv.conversion_for("thermal", Image) is conv.thermal_from_image
    assert conv.conversion_for("point_cloud", PointCloud2) is conv.pointcloud2_to_xyz
    assert conv.conversion_for("IMAGE", "sensor_msgs.msg.CompressedImage") is \
        conv.compressed_image_to_numpy
    with pytest.raises(ValueError, match="supported types: omnibind_ros/msg/AudioChunk"):
        conv.conversion_for("audio", "sensor_msgs/msg/Image")
    with pytest.raises(ValueError, match="unknown modality"):
        conv.conversion_for("sonar", "sensor_msgs/msg/Range")
    with pytest.raises(ValueError, match="package/msg/Type"):
        conv.conversion_for("image", "Image")


def test_conversion_for_payloads_match_the_preprocessors() -> None:
    pixels = random_pixels("rgb8", 4, 4)
    decoded = conv.conversion_for("image", "sensor_msgs/msg/Image")(
        conv.numpy_to_image(pixels, "rgb8"))
    assert isinstance(decoded, conv.DecodedImage) and decoded.channel_order == "rgb"
    thermal = conv.conversion_for("thermal", "sensor_msgs/msg/Image")(
        conv.numpy_to_image(random_pixels("mono16"), "mono16"))
    assert isinstance(thermal, ThermalFrame)
    block = conv.conversion_for("audio", "omnibind_ros/msg/AudioChunk")(
        conv.block_to_audio_chunk(AudioBlock(np.zeros(8, np.float32), 8000)))
    assert isinstance(block, AudioBlock)


def test_read_only_payloads_go_through_every_preprocessor() -> None:
    """Converters hand out read-only views: no preprocessor may write into its input."""
    from omnibind_ros.core.preprocess import build_preprocessor

    ground = RNG.uniform(-2, 2, (2000, 3)) * [1, 1, 0]
    blob = RNG.normal([1.5, 0, 0.3], 0.1, (600, 3))
    payloads = {
        "image": conv.image_to_numpy(conv.numpy_to_image(random_pixels("bgra8", 20, 30),
                                                         "bgra8", step=128)),
        "thermal": conv.thermal_from_image(conv.numpy_to_image(
            np.full((20, 20), 30000, np.uint16), "mono16")),
        "tactile": conv.tactile_from_image(conv.numpy_to_image(random_pixels("rgb8", 24, 24),
                                                               "rgb8")),
        "event": conv.event_array_to_packet(event_msg(32, 24, [1, 2, 30], [4, 5, 20],
                                                      [0, 10, 20], [1, 0, 1])),
        "point_cloud": conv.pointcloud2_to_xyz(conv.xyz_to_pointcloud2(
            np.concatenate([ground, blob]).astype(np.float32))),
    }
    for modality, payload in payloads.items():
        pre = build_preprocessor(modality)
        out = pre(payload.image, channel_order=payload.channel_order) \
            if isinstance(payload, conv.DecodedImage) else pre(payload)
        assert np.isfinite(out).all(), modality
    audio = build_preprocessor("audio")
    block = conv.audio_chunk_to_block(conv.block_to_audio_chunk(
        AudioBlock(RNG.uniform(-0.5, 0.5, (16000, 2)).astype(np.float32), 16000)))
    assert not block.samples.flags.writeable
    audio.push(block)
    assert np.isfinite(audio.window()).all()


# ---------------------------------------------------------------------------------------------
# Fuzz: random and malformed messages through every converter. The only exceptions allowed are
# PreprocessError subclasses (the node drops those); anything else would kill a callback.

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

WILD = st.one_of(st.none(), st.text(max_size=4), st.floats(), st.booleans(),
                 st.integers(-(2**70), 2**70), st.binary(max_size=6),
                 st.lists(st.integers(-3, 300), max_size=4), st.just(object()))


#: Plausible small sizes; 0 (empty) is one of them but not the most likely.
SIZES = st.sampled_from([1, 2, 3, 5, 0])


class Corrupter:
    """Draws each field plausibly, except a few chosen fields that get a WILD value.

    Choosing the corrupted fields first (instead of a per-field coin) keeps a good share of
    messages entirely plausible, so the fuzz also reaches the success paths.
    """

    def __init__(self, draw: Any, names: list[str]) -> None:
        self.draw = draw
        self.bad = draw(st.sets(st.sampled_from(names), max_size=2)) if draw(
            st.booleans()) else set()

    def __call__(self, name: str, plausible: st.SearchStrategy) -> Any:
        return self.draw(WILD if name in self.bad else plausible)


def sized_data(draw: Any, size: int) -> Any:
    """Mostly exactly ``size`` bytes, sometimes a little off, as bytes or array.array."""
    how = draw(st.sampled_from(["exact", "exact", "near", "any"]))
    n = {"exact": size, "near": max(size + draw(st.integers(-3, 3)), 0),
         "any": draw(st.integers(0, 64))}[how]
    raw = bytes(np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, n,
                                                                           dtype=np.uint8))
    if draw(st.booleans()):  # special float patterns: NaN/inf/huge values in F32/F64 fields
        raw = (draw(st.sampled_from([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f",
                                     b"\xff\xff\xef\x7f"])) * (n // 4 + 1))[:n]
    return draw(st.sampled_from([raw, array.array("B", raw), bytearray(raw)]))


def as_int(value: Any, default: int, limit: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and \
        0 <= value < limit else default


@st.composite
def image_like(draw: Any) -> SimpleNamespace:
    field = Corrupter(draw, ["encoding", "height", "width", "step", "is_bigendian", "data"])
    encoding = field("encoding", st.sampled_from([*EXPECTED_ENCODINGS, "yuv422", "Mono8"]))
    height = field("height", SIZES)
    width = field("width", SIZES)
    layout = EXPECTED_ENCODINGS.get(encoding if isinstance(encoding, str) else "", ("u1", 1, ""))
    pixel = np.dtype(layout[0]).itemsize * layout[1]
    w, h = as_int(width, 1, 64), as_int(height, 1, 64)
    step = field("step", st.sampled_from([w * pixel, w * pixel + 3]) | st.integers(0, 40))
    return SimpleNamespace(encoding=encoding, height=height, width=width, step=step,
                           is_bigendian=field("is_bigendian", st.integers(0, 1)),
                           data=field("data", st.just(sized_data(draw, as_int(step, 0, 512)
                                                                 * h))))


def check_image_result(result: Any) -> None:
    image, order = result
    assert isinstance(image, np.ndarray) and image.ndim in (2, 3) and image.size > 0
    assert order in ("rgb", "bgr", "rgba", "bgra", "mono")


@FUZZ
@given(msg=image_like())
def test_fuzz_image_converters_raise_only_preprocess_errors(msg: SimpleNamespace) -> None:
    for converter in (conv.image_to_numpy, conv.thermal_from_image, conv.tactile_from_image):
        try:
            result = converter(msg)
        except PreprocessError:
            continue
        if converter is conv.image_to_numpy:
            check_image_result(result)
        elif converter is conv.tactile_from_image:
            assert result.image.ndim == 3 and result.image.shape[2] == 3


@st.composite
def compressed_like(draw: Any) -> SimpleNamespace:
    import cv2

    field = Corrupter(draw, ["format", "data"])
    fmt = field("format", st.sampled_from(
        ["jpeg", "png", "", "rgb8; jpeg compressed bgr8", "h264", "16UC1; compressedDepth png",
         "32FC1; compressedDepth png", "16UC1; compressedDepth rvl", "compressedDepth"]))
    pixels = np.random.default_rng(draw(st.integers(0, 9))).integers(0, 256, (4, 5, 3))
    if draw(st.booleans()):
        pixels = pixels[:, :, 0] * 250  # grey, 16-bit for png
    ext = draw(st.sampled_from([".png", ".jpg"]))
    pixels = pixels.astype(np.uint16 if ext == ".png" and pixels.ndim == 2 else np.uint8)
    valid = cv2.imencode(ext, pixels)[1].tobytes()
    cut = draw(st.integers(0, len(valid)))
    corrupted = bytearray(valid)
    corrupted[draw(st.integers(0, len(valid) - 1))] ^= draw(st.integers(1, 255))
    data = draw(st.sampled_from([valid, valid, valid[:cut], bytes(corrupted),
                                 struct.pack("<iff", 0, 1.0, 0.0) + valid, b""]))
    return SimpleNamespace(format=fmt, data=field("data", st.just(data)))


@FUZZ
@given(msg=compressed_like())
def test_fuzz_compressed_converters_raise_only_preprocess_errors(msg: SimpleNamespace) -> None:
    for converter in (conv.compressed_image_to_numpy, conv.tactile_from_compressed_image):
        try:
            result = converter(msg)
        except PreprocessError:
            continue
        if converter is conv.compressed_image_to_numpy:
            check_image_result(result)


@st.composite
def point_fields(draw: Any) -> list[SimpleNamespace]:
    """x, y, z (+ extras) at random offsets and datatypes, sometimes one of them broken."""
    names = ["x", "y", "z", *draw(st.lists(st.sampled_from(["intensity", "x", ""]),
                                           max_size=2))]
    out = []
    for name in draw(st.permutations(names)):
        field = Corrupter(draw, ["name", "offset", "datatype", "count"]) if draw(
            st.integers(0, 3)) == 0 else (lambda _name, plausible: draw(plausible))
        out.append(SimpleNamespace(name=field("name", st.just(name)),
                                   offset=field("offset", st.integers(0, 24)),
                                   datatype=field("datatype", st.sampled_from(
                                       [*range(1, 9), 7, 7, 7, 0, 9])),
                                   count=field("count", st.sampled_from([1, 1, 1, 0, 2]))))
    return out


@st.composite
def cloud_like(draw: Any) -> SimpleNamespace:
    field = Corrupter(draw, ["fields", "width", "height", "point_step", "row_step",
                             "is_bigendian", "data"])
    fields = field("fields", point_fields())
    width = field("width", SIZES)
    height = field("height", SIZES)
    ends = [as_int(getattr(pf, "offset", 0), 0, 64) + 8 for pf in
            (fields if isinstance(fields, list) else [])]
    point_step = field("point_step", st.sampled_from([max(ends, default=12), 32])
                       | st.integers(0, 28))
    w, h, p = as_int(width, 1, 64), as_int(height, 1, 64), as_int(point_step, 0, 64)
    row_step = field("row_step", st.sampled_from([w * p, w * p + 5]) | st.integers(0, 80))
    return SimpleNamespace(
        fields=fields, width=width, height=height, point_step=point_step, row_step=row_step,
        is_bigendian=field("is_bigendian", st.booleans()), is_dense=draw(st.booleans()),
        data=field("data", st.just(sized_data(draw, as_int(row_step, 0, 1024) * h))))


@FUZZ
@given(msg=cloud_like(), skip_nans=st.booleans())
def test_fuzz_point_cloud_raises_only_preprocess_errors(msg: SimpleNamespace,
                                                        skip_nans: bool) -> None:
    try:
        xyz = conv.pointcloud2_to_xyz(msg, skip_nans=skip_nans)
    except PreprocessError:
        pass
    else:
        assert xyz.dtype == np.float32 and xyz.ndim == 2 and xyz.shape[1] == 3
        assert not skip_nans or np.isfinite(xyz).all()
    try:
        conv.pointcloud2_to_array(msg)
    except PreprocessError:
        pass


@st.composite
def events_like(draw: Any) -> SimpleNamespace:
    n = draw(st.integers(0, 6))
    field = Corrupter(draw, ["width", "height", "x", "y", "t", "polarity"])

    def column(name: str, high: int, typecode: str) -> Any:
        values = draw(st.lists(st.integers(0, high), min_size=n, max_size=n)
                      if draw(st.integers(0, 5)) else st.lists(st.integers(-2, high + 2),
                                                               max_size=8))
        values = sorted(values) if name == "t" and draw(st.integers(0, 5)) else values
        if name in field.bad:
            return draw(WILD)
        if draw(st.booleans()) and all(0 <= v < 1 << 8 * array.array(typecode).itemsize
                                       for v in values):
            return array.array(typecode, values)
        return draw(st.sampled_from([values, np.array(values, dtype=np.int64)]))

    return SimpleNamespace(width=field("width", st.sampled_from([10, 12, 346, 5, 0])),
                           height=field("height", st.sampled_from([10, 12, 260, 5, 0])),
                           x=column("x", 9, "H"), y=column("y", 9, "H"),
                           t=column("t", 2**32, "I"), polarity=column("polarity", 2, "B"))


@FUZZ
@given(msg=events_like())
def test_fuzz_events_raise_only_preprocess_errors(msg: SimpleNamespace) -> None:
    try:
        packet = conv.event_array_to_packet(msg)
    except PreprocessError:
        return
    assert len({len(packet.x), len(packet.y), len(packet.t_ns), len(packet.polarity)}) == 1
    assert packet.t_ns.dtype == np.int64 and np.all(np.diff(packet.t_ns) >= 0)


@st.composite
def audio_like(draw: Any) -> SimpleNamespace:
    field = Corrupter(draw, ["encoding", "channels", "sample_rate", "data"])
    encoding = field("encoding", st.sampled_from(["S16LE", "F32LE"] * 3 + ["U8", "s16le"]))
    channels = field("channels", st.sampled_from([1, 2, 3, 6, 0]))
    bytes_per_sample = 2 if encoding == "S16LE" else 4
    frame = as_int(channels, 1, 8) * bytes_per_sample
    return SimpleNamespace(encoding=encoding, channels=channels,
                           sample_rate=field("sample_rate",
                                             st.sampled_from([16000, 44100, 8000, 1, 0])),
                           data=field("data", st.just(sized_data(
                               draw, draw(st.integers(0, 4)) * frame))))


@FUZZ
@given(msg=audio_like())
def test_fuzz_audio_raises_only_preprocess_errors(msg: SimpleNamespace) -> None:
    try:
        block = conv.audio_chunk_to_block(msg)
    except PreprocessError:
        return
    assert block.samples.ndim == 2 and block.samples.shape[0] >= 1
    assert block.samples.dtype in (np.int16, np.float32) and block.sample_rate > 0


@FUZZ
@given(data=st.data())
def test_fuzz_real_messages_with_inconsistent_fields(data: st.DataObject) -> None:
    """Real message classes with well-typed but inconsistent values, as a subscriber gets them."""
    from omnibind_ros.msg import AudioChunk, EventArray
    from sensor_msgs.msg import Image, PointCloud2, PointField

    small = st.integers(0, 6)
    raw = data.draw(st.binary(max_size=80))
    messages = [
        Image(height=data.draw(small), width=data.draw(small), step=data.draw(st.integers(0, 30)),
              encoding=data.draw(st.sampled_from([*EXPECTED_ENCODINGS, "bayer_rggb8"])),
              is_bigendian=data.draw(st.integers(0, 1)), data=raw),
        PointCloud2(height=data.draw(small), width=data.draw(small),
                    point_step=data.draw(st.integers(0, 16)),
                    row_step=data.draw(st.integers(0, 40)), data=raw,
                    is_bigendian=data.draw(st.booleans()),
                    fields=[PointField(name=n, offset=data.draw(st.integers(0, 12)),
                                       datatype=data.draw(st.integers(0, 9)),
                                       count=data.draw(st.integers(0, 2))) for n in "xyz"]),
        EventArray(width=data.draw(small), height=data.draw(small),
                   x=data.draw(st.lists(st.integers(0, 9), max_size=4)),
                   y=data.draw(st.lists(st.integers(0, 9), max_size=4)),
                   t=data.draw(st.lists(st.integers(0, 2**32 - 1), max_size=4)),
                   polarity=data.draw(st.lists(st.integers(0, 3), max_size=4))),
        AudioChunk(sample_rate=data.draw(st.integers(0, 9)), channels=data.draw(small),
                   encoding=data.draw(st.sampled_from(["S16LE", "F32LE", "S8"])), data=raw),
    ]
    converters = [(conv.image_to_numpy, conv.thermal_from_image, conv.tactile_from_image),
                  (conv.pointcloud2_to_xyz, conv.pointcloud2_to_array),
                  (conv.event_array_to_packet,), (conv.audio_chunk_to_block,)]
    for msg, funcs in zip(messages, converters, strict=True):
        for func in funcs:
            try:
                func(msg)
            except PreprocessError:
                pass
