"""Depth cameras as a point-cloud source: back-projection with the paired CameraInfo, the
body-frame convention the point-cloud preprocessing expects, and clear errors."""
from __future__ import annotations

import struct
from types import SimpleNamespace as NS

import numpy as np
import pytest

from omnibind_ros.core.errors import (
    EmptyInputError,
    InvalidShapeError,
    InvalidValueError,
    MissingReferenceError,
    UnsupportedEncodingError,
)
from omnibind_ros.ros import conversions as conv

W, H = 64, 48
K = [100.0, 0.0, 32.0, 0.0, 120.0, 24.0, 0.0, 0.0, 1.0]


def camera_info(width: int = W, height: int = H, k=K) -> NS:
    return NS(width=width, height=height, k=list(k))


def depth_converter():
    convert = conv.conversion_for("point_cloud", "sensor_msgs/msg/Image")
    assert convert.INFO_SIBLING == "camera_info"
    assert convert.update_info(camera_info()) == (W, H, 100.0, 120.0, 32.0, 24.0)
    return convert


def test_pixels_back_project_into_the_body_frame() -> None:
    depth = np.zeros((H, W), np.uint16)
    depth[24, 42] = 2000              # 2 m, 10 px right of the centre: 0.2 m to the right
    depth[36, 32] = 1500              # 1.5 m, 12 px below the centre: 0.15 m down
    points = depth_converter()(conv.numpy_to_image(depth, "16UC1"))
    # x forward, y left, z up (REP 103), in stream (row-major) order; zero depth dropped
    np.testing.assert_allclose(points, [[2.0, -0.2, 0.0], [1.5, 0.0, -0.15]], atol=1e-6)
    assert points.dtype == np.float32


def test_32fc1_metres_and_compressed_depth_png_agree_with_16uc1() -> None:
    rng = np.random.default_rng(1)
    mm = rng.integers(300, 4000, (H, W)).astype(np.uint16)
    mm[::7, ::5] = 0
    convert = depth_converter()
    ref = convert(conv.numpy_to_image(mm, "16UC1"))
    metres = np.where(mm > 0, mm / 1000.0, np.nan).astype(np.float32)
    np.testing.assert_allclose(convert(conv.numpy_to_image(metres, "32FC1")), ref, atol=1e-6)
    import cv2

    ok, png = cv2.imencode(".png", mm)
    assert ok
    msg = NS(format="16UC1; compressedDepth png",
             data=struct.pack("<iff", 0, 0.0, 0.0) + png.tobytes())
    compressed = conv.conversion_for("point_cloud", "sensor_msgs/msg/CompressedImage")
    compressed.update_info(camera_info())
    np.testing.assert_allclose(compressed(msg), ref, atol=1e-6)


def test_depth_errors_name_what_is_missing_or_wrong() -> None:
    fresh = conv.conversion_for("point_cloud", "sensor_msgs/msg/Image")
    with pytest.raises(MissingReferenceError, match="before any CameraInfo"):
        fresh(conv.numpy_to_image(np.ones((H, W), np.uint16), "16UC1"))
    convert = depth_converter()
    with pytest.raises(InvalidShapeError, match="does not match its CameraInfo"):
        convert(conv.numpy_to_image(np.ones((H, W + 2), np.uint16), "16UC1"))
    with pytest.raises(UnsupportedEncodingError, match="not a depth format"):
        convert(conv.numpy_to_image(np.ones((H, W, 3), np.uint8), "rgb8"))
    with pytest.raises(EmptyInputError, match="no valid depth"):
        convert(conv.numpy_to_image(np.zeros((H, W), np.uint16), "16UC1"))
    with pytest.raises(InvalidValueError, match="fx, fy > 0"):
        convert.update_info(camera_info(k=[0.0] * 9))


def test_a_depth_view_of_an_object_on_a_floor_preprocesses_to_the_object() -> None:
    """A camera 0.6 m above a floor looking forward at a 0.3 m cube 2 m ahead: the cloud goes
    through the point-cloud preprocessing (ground removal, clustering) like a LiDAR's."""
    from omnibind_ros.core.preprocess import build_preprocessor

    w, h, f = 160, 120, 110.0
    k = [f, 0.0, w / 2, 0.0, f, h / 2, 0.0, 0.0, 1.0]
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    ray_y, ray_x = (v - h / 2) / f, (u - w / 2) / f          # optical: y down, x right
    with np.errstate(divide="ignore", invalid="ignore"):
        floor = np.where(ray_y > 0, 0.6 / ray_y, np.inf)     # the floor 0.6 m below the camera
        cube = np.where((np.abs(ray_x * 2.0) < 0.15) & (ray_y * 2.0 > 0.3)
                        & (ray_y * 2.0 < 0.6), 2.0, np.inf)   # the cube's front face at 2 m
    depth = np.minimum(floor, cube)
    depth[~np.isfinite(depth) | (depth > 6.0)] = 0.0
    convert = conv.conversion_for("point_cloud", "sensor_msgs/msg/Image")
    convert.update_info(camera_info(w, h, k))
    points = convert(conv.numpy_to_image((depth * 1000).astype(np.uint16), "16UC1"))
    assert np.isclose(np.median(points[:, 2]), -0.6, atol=0.01)   # mostly floor, 0.6 m down
    model_input = build_preprocessor("point_cloud", {
        "num_points": 256, "roi_min": [0.5, -2.0, -1.0], "roi_max": [5.0, 2.0, 1.0]})(points)
    assert model_input.shape == (256, 3) and np.isfinite(model_input).all()
