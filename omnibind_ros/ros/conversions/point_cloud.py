"""sensor_msgs/PointCloud2 <-> numpy, with any field layout (what sensor_msgs_py does).

A cloud is a 2-D grid (``height`` rows of ``width`` points; height 1 for unorganised clouds) of
fixed-size records (``point_step`` bytes) whose fields sit at arbitrary byte offsets, rows
``row_step`` bytes apart. A numpy structured dtype with explicit offsets and ``itemsize =
point_step`` describes exactly that, so :func:`pointcloud2_to_array` is always a view of
``msg.data``; :func:`pointcloud2_to_xyz` is a view too when x, y, z are consecutive native
float32 values and rows are unpadded (the common LiDAR layout), otherwise one gathered copy.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from omnibind_ros.core.errors import (
    EmptyInputError,
    InvalidDtypeError,
    InvalidShapeError,
    NonFiniteInputError,
    UnsupportedEncodingError,
)
from omnibind_ros.ros.conversions import _fields as f

__all__ = ["POINT_FIELD_DTYPES", "pointcloud2_to_array", "pointcloud2_to_xyz",
           "xyz_to_pointcloud2"]

#: sensor_msgs/PointField datatype constants -> numpy dtype (byte order applied per message).
POINT_FIELD_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("i1"), 2: np.dtype("u1"), 3: np.dtype("i2"), 4: np.dtype("u2"),
    5: np.dtype("i4"), 6: np.dtype("u4"), 7: np.dtype("f4"), 8: np.dtype("f8"),
}
_DATATYPE_OF = {dtype: code for code, dtype in POINT_FIELD_DTYPES.items()}


class _Field(NamedTuple):
    name: str
    offset: int
    dtype: np.dtype
    count: int


class _Layout(NamedTuple):
    height: int
    width: int
    point_step: int
    row_step: int
    big_endian: bool
    data: np.ndarray
    fields: dict[str, _Field]


def _read_field(pf: object, index: int) -> _Field:
    what = f"PointCloud2.fields[{index}]"
    name = f.str_field(pf, "name", what)
    offset = f.uint_field(pf, "offset", what)
    datatype = f.uint_field(pf, "datatype", what, bits=8)
    count = f.uint_field(pf, "count", what)
    if datatype not in POINT_FIELD_DTYPES:
        raise UnsupportedEncodingError(
            f"{what} ({name!r}) has datatype {datatype}; PointField defines 1..8")
    if count == 0:
        raise InvalidShapeError(f"{what} ({name!r}) has count 0")
    return _Field(name, offset, POINT_FIELD_DTYPES[datatype], count)


def _read_layout(msg: Any) -> _Layout:
    what = "PointCloud2"
    raw_fields = f.field(msg, "fields", what)
    try:
        field_list = list(raw_fields)
    except TypeError:
        raise InvalidDtypeError("PointCloud2.fields must be a sequence of PointField") from None
    fields: dict[str, _Field] = {}
    for index, pf in enumerate(field_list):
        parsed = _read_field(pf, index)
        fields.setdefault(parsed.name, parsed)  # a duplicated name: the first one wins
    layout = _Layout(
        height=f.uint_field(msg, "height", what), width=f.uint_field(msg, "width", what),
        point_step=f.uint_field(msg, "point_step", what),
        row_step=f.uint_field(msg, "row_step", what),
        big_endian=f.bool_field(msg, "is_bigendian", what),
        data=f.byte_view(f.field(msg, "data", what), "PointCloud2.data"), fields=fields)
    _check_sizes(layout)
    return layout


def _check_sizes(cloud: _Layout) -> None:
    if cloud.height == 0 or cloud.width == 0:
        raise EmptyInputError(f"PointCloud2 has no points ({cloud.width}x{cloud.height})")
    if cloud.point_step == 0:
        raise InvalidShapeError("PointCloud2.point_step is 0")
    if cloud.row_step < cloud.width * cloud.point_step:
        raise InvalidShapeError(
            f"PointCloud2.row_step {cloud.row_step} is shorter than width {cloud.width} x "
            f"point_step {cloud.point_step}")
    if cloud.data.size != cloud.row_step * cloud.height:
        raise InvalidShapeError(
            f"PointCloud2 ({cloud.width}x{cloud.height}, row_step {cloud.row_step}) needs "
            f"{cloud.row_step * cloud.height} bytes of data, got {cloud.data.size}")
    for fd in cloud.fields.values():
        end = fd.offset + fd.dtype.itemsize * fd.count
        if end > cloud.point_step:
            raise InvalidShapeError(
                f"PointCloud2 field {fd.name!r} spans bytes {fd.offset}..{end} of a "
                f"{cloud.point_step}-byte point")


def _select(cloud: _Layout, names: Sequence[str] | None) -> list[_Field]:
    if names is None:
        return list(cloud.fields.values())
    missing = [n for n in names if n not in cloud.fields]
    if missing:
        raise InvalidShapeError(
            f"PointCloud2 has no field {', '.join(map(repr, missing))} "
            f"(fields: {', '.join(cloud.fields) or 'none'})")
    return [cloud.fields[n] for n in names]


def _struct_dtype(cloud: _Layout, selected: list[_Field]) -> np.dtype:
    order = ">" if cloud.big_endian else "<"
    formats = [fd.dtype.newbyteorder(order) if fd.count == 1
               else (fd.dtype.newbyteorder(order), (fd.count,)) for fd in selected]
    try:
        return np.dtype({"names": [fd.name for fd in selected], "formats": formats,
                         "offsets": [fd.offset for fd in selected],
                         "itemsize": cloud.point_step})
    except (TypeError, ValueError) as exc:  # e.g. an empty field name
        names = [fd.name for fd in selected]
        raise InvalidShapeError(f"PointCloud2 fields {names} form no valid layout: {exc}") \
            from None


def pointcloud2_to_array(msg: Any, fields: Sequence[str] | None = None) -> np.ndarray:
    """View a ``sensor_msgs/PointCloud2`` as a structured array (no copy).

    Parameters
    ----------
    msg : the message (or an object with its fields).
    fields : names of the fields to expose (default: all, in message order; a duplicated name
        keeps its first definition).

    Returns
    -------
    Read-only structured ndarray [height, width] over ``msg.data``; fields keep the message's
    datatypes and byte order (a field with ``count > 1`` is a sub-array). Padding bytes between
    fields and at the end of rows are skipped by the strides.

    Raises
    ------
    EmptyInputError : zero width or height.
    InvalidShapeError : sizes that disagree with the data, a field past the end of a point, a
        requested field that is missing.
    UnsupportedEncodingError : a PointField datatype outside 1..8.
    ConversionError : a missing message field or one of the wrong type.
    """
    cloud = _read_layout(msg)
    return _array_view(cloud, _select(cloud, fields))


def _array_view(cloud: _Layout, selected: list[_Field]) -> np.ndarray:
    view = np.ndarray((cloud.height, cloud.width), dtype=_struct_dtype(cloud, selected),
                      buffer=cloud.data, strides=(cloud.row_step, cloud.point_step))
    return f.read_only(view)


def _xyz_view(cloud: _Layout, selected: list[_Field]) -> np.ndarray | None:
    """[N, k] float32 view when the fields are consecutive native float32 and rows unpadded."""
    f4 = np.dtype("f4")
    if cloud.big_endian == np.little_endian:  # not the machine's byte order
        return None
    first = selected[0].offset
    for i, fd in enumerate(selected):
        if fd.dtype != f4 or fd.count != 1 or fd.offset != first + 4 * i:
            return None
    if cloud.height > 1 and cloud.row_step != cloud.width * cloud.point_step:
        return None
    return np.ndarray((cloud.height * cloud.width, len(selected)), dtype=f4,
                      buffer=cloud.data, offset=first, strides=(cloud.point_step, 4))


def pointcloud2_to_xyz(msg: Any, fields: Sequence[str] = ("x", "y", "z"),
                       skip_nans: bool = True) -> np.ndarray:
    """Extract coordinates (or any scalar fields) of a ``sensor_msgs/PointCloud2``.

    Parameters
    ----------
    msg : the message; fields of any of the 8 PointField datatypes, at any offsets, either
        byte order, ``row_step`` padding and organised (height > 1) clouds are all read.
    fields : scalar fields to return as columns (metres for x, y, z).
    skip_nans : drop points with a NaN/inf in any returned column (the invalid returns of an
        ``is_dense = False`` cloud); the flag itself is not trusted, the values are checked.

    Returns
    -------
    float32 [N, len(fields)], rows in row-major point order. A read-only view of ``msg.data``
    when the fields are consecutive native float32, rows are unpadded and no point is dropped;
    otherwise a new array (int/float64 fields are cast to float32).

    Raises
    ------
    NonFiniteInputError : ``skip_nans`` and no point is finite.
    InvalidShapeError : a requested field is missing or has ``count > 1``; ``fields`` is empty.
    The errors of :func:`pointcloud2_to_array`.
    """
    names = [fields] if isinstance(fields, str) else list(fields)
    if not names:
        raise InvalidShapeError("pointcloud2_to_xyz needs at least one field name")
    cloud = _read_layout(msg)
    selected = _select(cloud, names)
    arrays = [fd for fd in selected if fd.count != 1]
    if arrays:
        raise InvalidShapeError(f"PointCloud2 field {arrays[0].name!r} has count "
                                f"{arrays[0].count}; only scalar fields can be columns")
    points = _xyz_view(cloud, selected)
    if points is None:
        view = _array_view(cloud, selected).reshape(-1)
        points = np.empty((view.shape[0], len(names)), np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # huge float64 -> inf, then dropped
            for column, name in enumerate(names):
                points[:, column] = view[name]
    else:
        points = f.read_only(points)
    return _drop_non_finite(points) if skip_nans else points


def _drop_non_finite(points: np.ndarray) -> np.ndarray:
    if np.isfinite(points).all():  # one reduction: ~7x faster than the per-row test below
        return points
    finite = np.isfinite(points).all(axis=1)
    if not finite.any():
        raise NonFiniteInputError(f"all {points.shape[0]} points have a NaN/inf coordinate")
    return points[finite]


# ---------------------------------------------------------------------------------------------
# numpy -> PointCloud2

def _column(name: str, values: object, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(values, np.ndarray):
        raise InvalidDtypeError(f"field {name!r} must be a numpy array, got {type(values)}")
    values = values.astype(np.uint8) if values.dtype == np.bool_ else values
    if values.dtype.newbyteorder("=") not in _DATATYPE_OF:
        raise InvalidDtypeError(f"field {name!r} has dtype {values.dtype}, which PointField "
                                "cannot describe (int8..int32, uint8..uint32, float32/64)")
    if values.shape != shape:
        raise InvalidShapeError(f"field {name!r} has shape {values.shape}, expected {shape}")
    return values


def _packed_layout(columns: Mapping[str, np.ndarray]) -> tuple[np.dtype, list[Any]]:
    """Little-endian record with each field at its natural alignment (as PCL lays them out)."""
    from sensor_msgs.msg import PointField

    names, formats, offsets, point_fields = [], [], [], []
    offset, align = 0, 1
    for name, values in columns.items():
        dtype = values.dtype.newbyteorder("<")
        offset = -(-offset // dtype.itemsize) * dtype.itemsize
        names.append(name)
        formats.append(dtype)
        offsets.append(offset)
        point_fields.append(PointField(name=name, offset=offset, count=1,
                                       datatype=_DATATYPE_OF[dtype.newbyteorder("=")]))
        offset += dtype.itemsize
        align = max(align, dtype.itemsize)
    itemsize = -(-offset // align) * align
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": itemsize}), point_fields


def xyz_to_pointcloud2(points: np.ndarray, stamp: object = None, frame_id: str = "",
                       extra_fields: Mapping[str, np.ndarray] | None = None) -> Any:
    """Build a ``sensor_msgs/PointCloud2`` from coordinates and optional per-point fields.

    Parameters
    ----------
    points : float32 or float64 [N, 3] (unorganised, height 1) or [H, W, 3] (organised) x, y, z
        in metres; the dtype is kept (float64 becomes FLOAT64 fields).
    stamp, frame_id : header (see :func:`~omnibind_ros.ros.conversions.numpy_to_image`).
    extra_fields : name -> [N] (or [H, W]) array of a PointField dtype (bool is written as
        uint8), e.g. ``{"intensity": f32, "ring": u16}``.

    Returns
    -------
    sensor_msgs.msg.PointCloud2, little-endian, fields aligned to their size, ``is_dense`` True
    exactly when every coordinate is finite.
    """
    from sensor_msgs.msg import PointCloud2

    if not isinstance(points, np.ndarray) or points.dtype not in (np.float32, np.float64):
        raise InvalidDtypeError(f"points must be a float32/float64 array, got "
                                f"{getattr(points, 'dtype', type(points).__name__)}")
    if points.ndim not in (2, 3) or points.shape[-1] != 3:
        raise InvalidShapeError(f"points must have shape [N, 3] or [H, W, 3], got {points.shape}")
    grid = points if points.ndim == 3 else points[None]
    height, width = grid.shape[:2]
    if height * width == 0:
        raise EmptyInputError(f"point cloud has no points: shape {points.shape}")
    columns = {axis: grid[:, :, i] for i, axis in enumerate("xyz")}
    for name, values in (extra_fields or {}).items():
        if name in columns:
            raise InvalidShapeError(f"extra field {name!r} duplicates a coordinate field")
        columns[name] = _column(name, values, points.shape[:-1]).reshape(height, width)
    dtype, point_fields = _packed_layout(columns)
    records = np.zeros((height, width), dtype)
    for name, values in columns.items():
        records[name] = values
    return PointCloud2(header=f.make_header(stamp, frame_id), height=height, width=width,
                       fields=point_fields, is_bigendian=False, point_step=dtype.itemsize,
                       row_step=dtype.itemsize * width, data=records.tobytes(),
                       is_dense=bool(np.isfinite(points).all()))
