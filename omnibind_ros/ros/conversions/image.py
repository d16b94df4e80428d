"""sensor_msgs/Image and CompressedImage <-> numpy, thermal and tactile frames.

What cv_bridge does, without it (it is not installable from PyPI): a message in, numpy out, no
node. Raw images are returned as views of ``msg.data`` whenever the bytes can be used in place:

* always for 8-bit encodings, with or without row padding (the row pitch ``step`` becomes the
  view's first stride);
* for 16/32-bit encodings when the message's byte order is the machine's (little-endian on every
  platform ROS 2 runs on); a big-endian message is byte-swapped into a copy, because
  preprocessing expects native dtypes.

Views are read-only (writing through them would alter the message) and keep ``msg.data``
from being resized in place while they live; assigning a new value to ``msg.data`` is fine.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

import numpy as np

from omnibind_ros.core.errors import (
    ConversionError,
    EmptyInputError,
    InvalidDtypeError,
    InvalidShapeError,
    NonFiniteInputError,
    UnsupportedEncodingError,
)
from omnibind_ros.core.types import THERMAL_KELVIN_PER_COUNT, TactileFrame, ThermalFrame
from omnibind_ros.ros.conversions import _fields as f

__all__ = [
    "ENCODINGS", "DecodedImage", "ImageEncoding", "compressed_image_to_numpy", "image_to_numpy",
    "numpy_to_compressed_image", "numpy_to_image", "tactile_from_compressed_image",
    "tactile_from_image", "tactile_to_image", "thermal_from_image", "thermal_to_image",
]


class ImageEncoding(NamedTuple):
    """Layout of one ``sensor_msgs/Image`` encoding.

    Attributes
    ----------
    dtype : numpy dtype of one channel value (native byte order).
    channels : values per pixel.
    channel_order : "rgb", "bgr", "rgba", "bgra" or "mono", as the image preprocessor names it.
    """

    dtype: np.dtype
    channels: int
    channel_order: str


def _enc(dtype: str, channels: int, order: str) -> ImageEncoding:
    return ImageEncoding(np.dtype(dtype), channels, order)


#: Supported encodings (sensor_msgs/image_encodings.hpp names). The OpenCV type names
#: (8UC3, 8UC4) carry no colour order; OpenCV's convention (BGR) is assumed, as cv_bridge does.
ENCODINGS: dict[str, ImageEncoding] = {
    "rgb8": _enc("u1", 3, "rgb"), "bgr8": _enc("u1", 3, "bgr"),
    "rgba8": _enc("u1", 4, "rgba"), "bgra8": _enc("u1", 4, "bgra"),
    "mono8": _enc("u1", 1, "mono"), "8UC1": _enc("u1", 1, "mono"),
    "8UC3": _enc("u1", 3, "bgr"), "8UC4": _enc("u1", 4, "bgra"),
    "rgb16": _enc("u2", 3, "rgb"), "bgr16": _enc("u2", 3, "bgr"),
    "rgba16": _enc("u2", 4, "rgba"), "bgra16": _enc("u2", 4, "bgra"),
    "mono16": _enc("u2", 1, "mono"), "16UC1": _enc("u2", 1, "mono"),
    "32FC1": _enc("f4", 1, "mono"),
}
_THERMAL_ENCODINGS = ("mono16", "16UC1", "mono8", "32FC1")


class DecodedImage(NamedTuple):
    """An image array and the channel order the image preprocessor needs to read it.

    Unpacks like a tuple: ``image, channel_order = image_to_numpy(msg)``.

    Attributes
    ----------
    image : [H, W] (one channel) or [H, W, C] array.
    channel_order : "rgb", "bgr", "rgba", "bgra" or "mono".
    """

    image: np.ndarray
    channel_order: str


# ---------------------------------------------------------------------------------------------
# sensor_msgs/Image -> numpy

def _encoding_of(msg: object, what: str = "Image") -> tuple[str, ImageEncoding]:
    name = f.str_field(msg, "encoding", what)
    layout = ENCODINGS.get(name)
    if layout is None:
        raise UnsupportedEncodingError(
            f"{what} encoding {name!r} is not supported; expected one of {', '.join(ENCODINGS)}")
    return name, layout


def image_to_numpy(msg: Any) -> DecodedImage:
    """Convert a ``sensor_msgs/Image`` to an array, in place where possible.

    Parameters
    ----------
    msg : the message (or any object with its fields): ``height``, ``width`` (pixels), ``step``
        (bytes per row, >= width * bytes per pixel; extra bytes are row padding),
        ``encoding`` (one of :data:`ENCODINGS`), ``is_bigendian`` and ``data``
        (exactly ``step * height`` bytes).

    Returns
    -------
    DecodedImage
        ``image``: [H, W] for one channel, else [H, W, C], of the encoding's dtype in native byte
        order; a read-only view of ``msg.data`` unless the message is big-endian with a
        multi-byte dtype (then a swapped copy). ``channel_order``: see :data:`ENCODINGS`.

    Raises
    ------
    UnsupportedEncodingError : unknown encoding.
    EmptyInputError : zero width or height.
    InvalidShapeError : ``step`` shorter than a row, or ``len(data) != step * height``.
    ConversionError : a missing field or a field of the wrong type.
    """
    name, layout = _encoding_of(msg)
    height = f.uint_field(msg, "height", "Image")
    width = f.uint_field(msg, "width", "Image")
    step = f.uint_field(msg, "step", "Image")
    big_endian = f.bool_field(msg, "is_bigendian", "Image")
    data = f.byte_view(f.field(msg, "data", "Image"), "Image.data")
    if height == 0 or width == 0:
        raise EmptyInputError(f"Image ({name}) is empty: {width}x{height} pixels")
    pixel_bytes = layout.channels * layout.dtype.itemsize
    if step < width * pixel_bytes:
        raise InvalidShapeError(
            f"Image ({name}, {width} px wide) needs step >= {width * pixel_bytes} bytes, "
            f"got step {step}")
    if data.size != step * height:
        raise InvalidShapeError(
            f"Image ({name}, {width}x{height}, step {step}) needs {step * height} bytes of "
            f"data, got {data.size}")
    dtype = layout.dtype.newbyteorder(">" if big_endian else "<")
    image = np.ndarray((height, width, layout.channels), dtype=dtype, buffer=data,
                       strides=(step, pixel_bytes, layout.dtype.itemsize))
    if layout.channels == 1:
        image = image[:, :, 0]
    swapped = f.native(image)
    return DecodedImage(f.read_only(image) if swapped is image else swapped,
                        layout.channel_order)


# ---------------------------------------------------------------------------------------------
# numpy -> sensor_msgs/Image

def _check_array_for(array: np.ndarray, name: str, layout: ImageEncoding) -> np.ndarray:
    """Return ``array`` as [H, W, C] after checking it matches the encoding's layout."""
    if not isinstance(array, np.ndarray):
        raise InvalidDtypeError(f"{name} image must be a numpy array, got {type(array).__name__}")
    if array.dtype.kind != layout.dtype.kind or array.dtype.itemsize != layout.dtype.itemsize:
        raise InvalidDtypeError(f"{name} image must have dtype {layout.dtype}, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == layout.channels:
        return array
    if array.ndim == 2 and layout.channels == 1:
        return array[:, :, None]
    expected = "HxW" if layout.channels == 1 else f"HxWx{layout.channels}"
    raise InvalidShapeError(f"{name} image must have shape {expected}, got {array.shape}")


def numpy_to_image(array: np.ndarray, encoding: str, stamp: object = None, frame_id: str = "",
                   *, step: int | None = None, big_endian: bool = False) -> Any:
    """Build a ``sensor_msgs/Image`` from an array.

    Parameters
    ----------
    array : [H, W] or [H, W, C] array whose dtype and channel count match ``encoding``.
    encoding : one of :data:`ENCODINGS`; the array is written as is (no colour conversion).
    stamp : header stamp: seconds (float), a ``builtin_interfaces/Time``, or None (zero).
    frame_id : header frame.
    step : row pitch in bytes (default: no padding); larger values pad each row with zeros.
    big_endian : write multi-byte values big-endian and set ``is_bigendian``.

    Returns
    -------
    sensor_msgs.msg.Image with ``data`` assigned as ``bytes`` (one memcpy into the message).

    Raises
    ------
    UnsupportedEncodingError, InvalidDtypeError, InvalidShapeError, EmptyInputError
    """
    from sensor_msgs.msg import Image

    layout = ENCODINGS.get(encoding) if isinstance(encoding, str) else None
    if layout is None:
        raise UnsupportedEncodingError(
            f"encoding {encoding!r} is not supported; expected one of {', '.join(ENCODINGS)}")
    pixels = _check_array_for(array, encoding, layout)
    height, width = pixels.shape[:2]
    if height == 0 or width == 0:
        raise EmptyInputError(f"{encoding} image is empty: shape {array.shape}")
    row_bytes = width * layout.channels * layout.dtype.itemsize
    step = row_bytes if step is None else int(step)
    if step < row_bytes:
        raise InvalidShapeError(f"step {step} is shorter than a row ({row_bytes} bytes)")
    order = ">" if big_endian else "<"
    rows = np.ascontiguousarray(pixels, dtype=layout.dtype.newbyteorder(order))
    rows = rows.reshape(height, row_bytes // layout.dtype.itemsize).view(np.uint8)
    if step > row_bytes:
        padded = np.zeros((height, step), np.uint8)
        padded[:, :row_bytes] = rows
        rows = padded
    return Image(header=f.make_header(stamp, frame_id), height=height, width=width,
                 encoding=encoding, is_bigendian=int(big_endian), step=step,
                 data=rows.tobytes())


# ---------------------------------------------------------------------------------------------
# sensor_msgs/CompressedImage

#: Codecs OpenCV decodes; the format string must name one of them (or be empty).
_CODECS = ("jpeg", "jpg", "png", "webp", "tiff", "tif", "bmp", "jp2", "pgm", "ppm", "pnm")
#: compressed_depth_image_transport prefixes the PNG with a ConfigHeader: int32 format, then
#: float32 depthParam[2] (the inverse-depth quantisation of 32FC1 images).
_DEPTH_HEADER_BYTES = 12


def _format_tokens(fmt: str) -> list[str]:
    # "rgb8; jpeg compressed bgr8" -> ["rgb8", "jpeg", "compressed", "bgr8"]
    return [t for t in re.split(r"[;\s]+", fmt.strip().lower()) if t]


def _imdecode(payload: np.ndarray, what: str) -> np.ndarray:
    import cv2

    try:
        image = cv2.imdecode(payload, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ConversionError(f"{what}: {payload.size} bytes do not decode ({exc})") from None
    if image is None or image.size == 0:
        raise ConversionError(f"{what}: {payload.size} bytes do not decode as an image")
    return image


def _decode_depth(data: np.ndarray, fmt: str) -> DecodedImage:
    tokens = _format_tokens(fmt)
    if any(t in tokens for t in ("rvl", "zstd")):
        raise UnsupportedEncodingError(f"compressedDepth codec in {fmt!r} is not supported "
                                       "(only png)")
    if data.size <= _DEPTH_HEADER_BYTES:
        raise EmptyInputError(f"compressedDepth payload of {data.size} bytes holds no image")
    quant_a, quant_b = np.frombuffer(data[4:_DEPTH_HEADER_BYTES].tobytes(), "<f4")
    depth = _imdecode(data[_DEPTH_HEADER_BYTES:], f"CompressedImage ({fmt!r})")
    if depth.ndim != 2 or depth.dtype != np.uint16:
        raise ConversionError(f"compressedDepth image must decode to 16-bit mono, got "
                              f"{depth.dtype} {depth.shape}")
    if tokens[:1] != ["32fc1"]:
        return DecodedImage(depth, "mono")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        metres = (quant_a / (depth.astype(np.float32) - quant_b)).astype(np.float32)
    metres[depth == 0] = np.nan  # 0 encodes "no depth"
    return DecodedImage(metres, "mono")


def compressed_image_to_numpy(msg: Any) -> DecodedImage:
    """Decode a ``sensor_msgs/CompressedImage`` with OpenCV.

    Parameters
    ----------
    msg : the message: ``format`` (e.g. "jpeg", "png", "rgb8; jpeg compressed bgr8" as
        image_transport writes it, "16UC1; compressedDepth png"; empty: detect from the
        payload) and ``data`` (the compressed bytes, decoded without a copy).

    Returns
    -------
    DecodedImage
        OpenCV's decoding: colour images are [H, W, 3] "bgr" or [H, W, 4] "bgra", grey ones
        [H, W] "mono"; 8- or 16-bit as stored (PNG keeps 16 bits). compressedDepth: uint16
        [H, W] (16UC1) or float32 metres with NaN for no depth (32FC1).

    Raises
    ------
    UnsupportedEncodingError : a format naming no codec OpenCV decodes (e.g. "h264").
    EmptyInputError : no data.
    ConversionError : the payload does not decode.
    """
    fmt = f.str_field(msg, "format", "CompressedImage")
    data = f.byte_view(f.field(msg, "data", "CompressedImage"), "CompressedImage.data")
    tokens = _format_tokens(fmt)
    if any(t.startswith("compresseddepth") for t in tokens):
        return _decode_depth(data, fmt)
    if tokens and not any(t in _CODECS for t in tokens):
        raise UnsupportedEncodingError(
            f"CompressedImage format {fmt!r} names no supported codec ({', '.join(_CODECS)})")
    if data.size == 0:
        raise EmptyInputError(f"CompressedImage ({fmt!r}) has no data")
    image = _imdecode(data, f"CompressedImage ({fmt!r})")
    channels = 1 if image.ndim == 2 else image.shape[2]
    orders = {1: "mono", 3: "bgr", 4: "bgra"}  # OpenCV decodes colour as BGR(A)
    if channels not in orders:
        raise UnsupportedEncodingError(
            f"CompressedImage decoded to {channels} channels; expected 1, 3 or 4")
    image = image[:, :, 0] if image.ndim == 3 and channels == 1 else image
    return DecodedImage(image, orders[channels])


def numpy_to_compressed_image(array: np.ndarray, fmt: str = "jpeg", channel_order: str = "rgb",
                              stamp: object = None, frame_id: str = "", *,
                              jpeg_quality: int = 90) -> Any:
    """Encode an 8-bit image into a ``sensor_msgs/CompressedImage`` (image_transport style).

    Parameters
    ----------
    array : uint8 [H, W] ("mono") or [H, W, 3] ("rgb"/"bgr"); "png" also takes uint16 mono.
    fmt : "jpeg" or "png".
    channel_order : colour order of ``array``; colour images are stored BGR as OpenCV encodes.
    stamp, frame_id : header (see :func:`numpy_to_image`).
    jpeg_quality : 0..100.

    Returns
    -------
    sensor_msgs.msg.CompressedImage whose ``format`` is e.g. "rgb8; jpeg compressed bgr8".
    """
    import cv2
    from sensor_msgs.msg import CompressedImage

    if fmt not in ("jpeg", "png"):
        raise UnsupportedEncodingError(f"format must be 'jpeg' or 'png', got {fmt!r}")
    shape = getattr(array, "shape", None)
    if isinstance(array, np.ndarray) and array.ndim == 2 and channel_order == "mono":
        source_enc = target = "mono16" if array.dtype == np.uint16 else "mono8"
        pixels = array
    elif isinstance(array, np.ndarray) and shape[2:] == (3,) and channel_order in ("rgb", "bgr"):
        source_enc, target = f"{channel_order}8", "bgr8"  # OpenCV encodes BGR
        pixels = array[:, :, ::-1] if channel_order == "rgb" else array
    else:
        raise InvalidShapeError(f"cannot encode an array of shape {shape} as {channel_order!r}")
    if pixels.dtype != np.uint8 and not (fmt == "png" and pixels.dtype == np.uint16):
        raise InvalidDtypeError(f"{fmt} encoding takes uint8 (png: also uint16), "
                                f"got {pixels.dtype}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if fmt == "jpeg" else []
    ok, encoded = cv2.imencode("." + ("jpg" if fmt == "jpeg" else fmt),
                               np.ascontiguousarray(pixels), params)
    if not ok:
        raise ConversionError(f"OpenCV could not encode a {pixels.shape} image as {fmt}")
    return CompressedImage(header=f.make_header(stamp, frame_id),
                           format=f"{source_enc}; {fmt} compressed {target}",
                           data=encoded.tobytes())


# ---------------------------------------------------------------------------------------------
# Thermal and tactile frames

def thermal_from_image(msg: Any, kelvin_per_count: float = THERMAL_KELVIN_PER_COUNT
                       ) -> ThermalFrame:
    """Convert a thermal camera ``sensor_msgs/Image`` to a :class:`ThermalFrame`.

    Parameters
    ----------
    msg : Image with encoding "mono16"/"16UC1" (radiometric counts, kelvin = counts *
        ``kelvin_per_count``), "mono8" (an AGC'd image with no absolute scale) or "32FC1"
        (degrees Celsius).
    kelvin_per_count : radiometric scale of 16-bit counts (K per count).

    Returns
    -------
    ThermalFrame with ``data`` [H, W] (uint16, uint8 or float32), a view of ``msg.data`` as in
    :func:`image_to_numpy`. Individual NaN pixels of a 32FC1 frame are kept (preprocessing
    replaces them); a frame with no finite pixel is rejected.

    Raises
    ------
    UnsupportedEncodingError : another encoding (colour images are not thermal frames).
    NonFiniteInputError : a 32FC1 frame without a single finite temperature.
    The errors of :func:`image_to_numpy`.
    """
    encoding = f.str_field(msg, "encoding", "Image")
    if encoding not in _THERMAL_ENCODINGS:
        raise UnsupportedEncodingError(
            f"thermal Image encoding {encoding!r} is not supported; expected one of "
            f"{', '.join(_THERMAL_ENCODINGS)}")
    data = image_to_numpy(msg).image
    if encoding == "32FC1" and not np.isfinite(data).any():
        raise NonFiniteInputError(f"32FC1 thermal frame {data.shape} has no finite temperature")
    return ThermalFrame(data=data, encoding=encoding, kelvin_per_count=kelvin_per_count)


def thermal_from_compressed_image(msg: Any,
                                  kelvin_per_count: float = THERMAL_KELVIN_PER_COUNT
                                  ) -> ThermalFrame:
    """A thermal ``sensor_msgs/CompressedImage``: a 16-bit grey PNG is radiometric counts (as
    "mono16"), an 8-bit grey image an AGC'd frame (as "mono8"). A colour image (a false-colour
    palette) carries no temperature and is refused.

    Raises
    ------
    UnsupportedEncodingError : a colour image.
    The errors of :func:`compressed_image_to_numpy`.
    """
    decoded = compressed_image_to_numpy(msg)
    image = decoded.image
    if decoded.channel_order != "mono" or image.dtype not in (np.uint8, np.uint16):
        raise UnsupportedEncodingError(
            f"thermal CompressedImage decoded to {decoded.channel_order} {image.dtype}; "
            "expected grey 16-bit PNG counts or an 8-bit grey image (a false-colour palette "
            "holds no temperature)")
    encoding = "mono16" if image.dtype == np.uint16 else "mono8"
    return ThermalFrame(data=image, encoding=encoding, kelvin_per_count=kelvin_per_count)


def thermal_to_image(frame: ThermalFrame, stamp: object = None, frame_id: str = "") -> Any:
    """Build a ``sensor_msgs/Image`` from a :class:`ThermalFrame` (its encoding kept).

    A float64 32FC1 frame is written as float32; other dtypes must match the encoding.
    """
    if not isinstance(frame, ThermalFrame):
        raise InvalidDtypeError(f"expected a ThermalFrame, got {type(frame).__name__}")
    if frame.encoding not in _THERMAL_ENCODINGS:
        raise UnsupportedEncodingError(
            f"thermal encoding {frame.encoding!r} is not one of {', '.join(_THERMAL_ENCODINGS)}")
    data = frame.data
    if frame.encoding == "32FC1" and isinstance(data, np.ndarray) and data.dtype == np.float64:
        data = data.astype(np.float32)
    return numpy_to_image(data, frame.encoding, stamp, frame_id)


def _to_rgb(decoded: DecodedImage, what: str) -> np.ndarray:
    image, order = decoded
    if image.dtype != np.uint8:
        raise InvalidDtypeError(f"{what} must be 8-bit, got {image.dtype}")
    if order == "mono":
        return np.repeat(image[:, :, None], 3, axis=2)
    rgb = image[:, :, [2, 1, 0]] if order.startswith("bgr") else image[:, :, :3]
    # rgb8 without padding stays a view; everything else becomes one contiguous copy so that
    # consumers (OpenCV, torch.from_numpy) never see negative or padded strides.
    return np.ascontiguousarray(rgb)


def tactile_from_image(msg: Any) -> TactileFrame:
    """Convert a vision-based tactile sensor image to a :class:`TactileFrame`.

    Parameters
    ----------
    msg : Image with an 8-bit encoding (rgb8, bgr8, rgba8, bgra8, mono8, 8UC1/3/4).

    Returns
    -------
    TactileFrame with ``image`` uint8 [H, W, 3] RGB (a view of ``msg.data`` for unpadded rgb8,
    otherwise a contiguous copy: colour order swapped, alpha dropped, mono replicated) and
    ``reference`` None (the runtime keeps its own no-contact reference).

    Raises
    ------
    InvalidDtypeError : a 16/32-bit encoding.
    The errors of :func:`image_to_numpy`.
    """
    return TactileFrame(image=_to_rgb(image_to_numpy(msg), "tactile Image"))


def tactile_from_compressed_image(msg: Any) -> TactileFrame:
    """Like :func:`tactile_from_image` for a ``sensor_msgs/CompressedImage`` (JPEG/PNG)."""
    return TactileFrame(image=_to_rgb(compressed_image_to_numpy(msg), "tactile CompressedImage"))


def tactile_to_image(frame: TactileFrame, stamp: object = None, frame_id: str = "",
                     encoding: str = "rgb8") -> Any:
    """Build a ``sensor_msgs/Image`` ("rgb8" or "bgr8") from a :class:`TactileFrame`'s image."""
    if not isinstance(frame, TactileFrame):
        raise InvalidDtypeError(f"expected a TactileFrame, got {type(frame).__name__}")
    if encoding not in ("rgb8", "bgr8"):
        raise UnsupportedEncodingError(f"tactile encoding must be rgb8 or bgr8, got {encoding!r}")
    image = frame.image
    if encoding == "bgr8" and isinstance(image, np.ndarray) and image.ndim == 3:
        image = image[:, :, ::-1]
    return numpy_to_image(image, encoding, stamp, frame_id)
