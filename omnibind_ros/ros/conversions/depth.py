"""Depth cameras as a point-cloud source: ``sensor_msgs/Image`` (16UC1 millimetres, as
RealSense and most drivers publish; 32FC1 metres) or ``sensor_msgs/CompressedImage``
(``compressedDepth`` PNG), back-projected with the intrinsics of the paired
``sensor_msgs/CameraInfo`` (its ``camera_info`` topic beside the image).

Pixel ``(u, v)`` with depth ``z`` is the point ``((u - cx) z / fx, (v - cy) z / fy, z)`` in the
camera's optical frame (x right, y down, z forward; K = [fx 0 cx; 0 fy cy; 0 0 1]), then
rotated into the body convention of REP 103 that the point-cloud preprocessing (its
``up_axis``, ROI and ground removal) and the LiDAR share: x forward, y left, z up, so
``(z, -x, -y)``. Zero and non-finite depths (no return) are dropped; images whose size differs
from the CameraInfo's are refused (a binned or cropped stream needs its own CameraInfo).
Distortion is not undone: depth streams are published rectified (RealSense's aligned depth has
zero distortion).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from omnibind_ros.core.errors import (
    EmptyInputError,
    InvalidShapeError,
    InvalidValueError,
    MissingReferenceError,
    UnsupportedEncodingError,
)
from omnibind_ros.ros.conversions import _fields as f
from omnibind_ros.ros.conversions.image import compressed_image_to_numpy, image_to_numpy

__all__ = ["DEPTH_ENCODINGS", "DepthCloudConverter", "back_project"]

#: depth Image encoding -> metres per stored unit.
DEPTH_ENCODINGS = {"16UC1": 0.001, "mono16": 0.001, "32FC1": 1.0}


def back_project(depth_m: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``[H, W]`` depth in metres and the 3x3 K -> float32 ``[N, 3]`` points (x forward, y left,
    z up) of the pixels with a positive, finite depth."""
    h, w = depth_m.shape
    v, u = np.nonzero(np.isfinite(depth_m) & (depth_m > 0))
    z = depth_m[v, u].astype(np.float64)
    x_opt = (u - k[0, 2]) * z / k[0, 0]
    y_opt = (v - k[1, 2]) * z / k[1, 1]
    return np.stack([z, -x_opt, -y_opt], axis=1).astype(np.float32)


class DepthCloudConverter:
    """A depth image -> float32 ``[N, 3]`` points for the point-cloud modality (one per depth
    camera: it keeps the latest CameraInfo)."""

    INFO_TYPE = "sensor_msgs/msg/CameraInfo"
    INFO_SIBLING = "camera_info"

    def __init__(self) -> None:
        self.k: np.ndarray | None = None
        self.size: tuple[int, int] | None = None

    def update_info(self, info: Any) -> tuple[int, int, float, float, float, float]:
        """Take the intrinsics of a ``sensor_msgs/CameraInfo``; returns (width, height, fx, fy,
        cx, cy)."""
        what = "CameraInfo"
        k = np.asarray(f.field(info, "k", what), np.float64).reshape(-1)
        if k.size != 9 or not np.isfinite(k).all() or k[0] <= 0 or k[4] <= 0:
            raise InvalidValueError(f"CameraInfo.k must be a 3x3 matrix with fx, fy > 0, got "
                                    f"{k.tolist()}")
        width, height = f.uint_field(info, "width", what), f.uint_field(info, "height", what)
        self.k, self.size = k.reshape(3, 3), (height, width)
        return width, height, float(k[0]), float(k[4]), float(k[2]), float(k[5])

    def _metres(self, msg: Any) -> np.ndarray:
        if hasattr(msg, "encoding"):
            encoding = f.str_field(msg, "encoding", "depth Image")
            if encoding not in DEPTH_ENCODINGS:
                raise UnsupportedEncodingError(
                    f"depth Image encoding {encoding!r} is not a depth format; expected one of "
                    f"{', '.join(DEPTH_ENCODINGS)}")
            return image_to_numpy(msg).image.astype(np.float32) * DEPTH_ENCODINGS[encoding]
        fmt = f.str_field(msg, "format", "depth CompressedImage")
        if "compresseddepth" not in fmt.lower():
            raise UnsupportedEncodingError(
                f"depth CompressedImage format {fmt!r} is not compressedDepth")
        image = compressed_image_to_numpy(msg).image
        return image if image.dtype == np.float32 else image.astype(np.float32) * 0.001

    def __call__(self, msg: Any) -> np.ndarray:
        if self.k is None or self.size is None:
            raise MissingReferenceError(
                "depth image before any CameraInfo: the intrinsics are unknown (is the "
                "camera_info topic published? see the sensor's info_topic)")
        depth = self._metres(msg)
        if depth.ndim != 2:
            raise InvalidShapeError(f"depth image must be one channel, got {depth.shape}")
        if depth.shape != self.size:
            raise InvalidShapeError(f"depth image {depth.shape[1]}x{depth.shape[0]} does not "
                                    f"match its CameraInfo ({self.size[1]}x{self.size[0]})")
        points = back_project(depth, self.k)
        if points.shape[0] == 0:
            raise EmptyInputError("depth image has no valid depth (all zero or NaN)")
        return points
