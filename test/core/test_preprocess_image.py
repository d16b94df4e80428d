"""Image preprocessing: exact values, channel orders, crop geometry, errors, properties."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnibind_ros.core.errors import (
    EmptyInputError,
    InvalidDtypeError,
    InvalidShapeError,
    UnsupportedEncodingError,
)
from omnibind_ros.core.preprocess.image import (
    ImagePreprocessConfig,
    ImagePreprocessor,
    preprocess_image,
)

RNG = np.random.default_rng(7)


def test_known_pixels_map_to_known_values():
    image = np.array([[[0, 255, 51], [102, 0, 0]],
                      [[255, 255, 255], [0, 0, 0]]], dtype=np.uint8)
    out = preprocess_image(image, ImagePreprocessConfig(size=2))
    assert out.shape == (3, 2, 2) and out.dtype == np.float32
    # (v / 255 - 0.5) / 0.5, channel-first
    np.testing.assert_allclose(out[:, 0, 0], [-1.0, 1.0, -0.6], atol=1e-6)
    np.testing.assert_allclose(out[:, 0, 1], [-0.2, -1.0, -1.0], atol=1e-6)
    np.testing.assert_allclose(out[:, 1, 0], [1.0, 1.0, 1.0], atol=1e-6)


def test_custom_mean_std_are_per_channel():
    image = np.full((2, 2, 3), 255, np.uint8)
    config = ImagePreprocessConfig(size=2, mean=(0.0, 0.5, 1.0), std=(1.0, 0.25, 2.0))
    out = preprocess_image(image, config)
    np.testing.assert_allclose(out[:, 0, 0], [1.0, 2.0, 0.0], atol=1e-6)


@pytest.mark.parametrize(("order", "swapped"), [("bgr", "rgb"), ("bgra", "rgba")])
def test_swapped_channel_orders_give_identical_outputs(order, swapped):
    channels = 3 if order == "bgr" else 4
    image = RNG.integers(0, 256, (37, 53, channels), dtype=np.uint8)
    flipped = image.copy()
    flipped[:, :, :3] = image[:, :, 2::-1]
    config = ImagePreprocessConfig(size=16)
    np.testing.assert_array_equal(preprocess_image(image, config, order),
                                  preprocess_image(flipped, config, swapped))


def test_alpha_is_dropped():
    rgb = RNG.integers(0, 256, (9, 9, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, RNG.integers(0, 256, (9, 9, 1), dtype=np.uint8)], axis=2)
    config = ImagePreprocessConfig(size=5)
    np.testing.assert_array_equal(preprocess_image(rgba, config, "rgba"),
                                  preprocess_image(rgb, config, "rgb"))


def test_mono_is_row_major_and_replicated():
    mono = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10  # value = 10 * (4 * row + col)
    out = preprocess_image(mono, ImagePreprocessConfig(size=4), "mono")
    expected = (mono / 255.0 - 0.5) / 0.5
    for channel in range(3):
        np.testing.assert_allclose(out[channel], expected, atol=1e-6)
    assert out[0, 0, 3] == pytest.approx((30 / 255 - 0.5) / 0.5)  # row 0, column 3
    np.testing.assert_array_equal(
        preprocess_image(mono[:, :, None], ImagePreprocessConfig(size=4), "mono"), out)


def test_crop_keeps_the_centre_of_a_wide_image():
    wide = np.array([[0, 10, 20, 30], [40, 50, 60, 70]], dtype=np.uint8)  # H=2, W=4
    out = preprocess_image(wide, ImagePreprocessConfig(size=2), "mono")
    np.testing.assert_allclose(out[0], (wide[:, 1:3] / 255.0 - 0.5) / 0.5, atol=1e-6)


def test_crop_mode_drops_margins_stretch_mode_keeps_them():
    image = np.full((40, 80, 3), 255, np.uint8)
    image[:, 20:60] = 0  # black centre square, white margins left and right
    cropped = preprocess_image(image, ImagePreprocessConfig(size=8, resize_mode="crop"))
    stretched = preprocess_image(image, ImagePreprocessConfig(size=8, resize_mode="stretch"))
    np.testing.assert_allclose(cropped, -1.0)
    np.testing.assert_allclose(stretched[:, :, :2], 1.0)
    np.testing.assert_allclose(stretched[:, :, 2:6], -1.0)


def test_uint16_mono_is_scaled_by_full_16_bit_range():
    mono = np.array([[0, 65535], [32768, 65535]], dtype=np.uint16)
    out = preprocess_image(mono, ImagePreprocessConfig(size=2), "mono")
    np.testing.assert_allclose(out[1], [[-1.0, 1.0], [32768 / 65535 * 2 - 1, 1.0]], atol=1e-6)


def test_upscaling_a_tiny_image_is_constant_for_a_constant_input():
    out = preprocess_image(np.full((1, 1, 3), 51, np.uint8), ImagePreprocessConfig(size=7))
    np.testing.assert_allclose(out, -0.6, atol=1e-6)


@pytest.mark.parametrize(("image", "order", "error"), [
    (np.zeros((4, 4, 3), np.float32), "rgb", InvalidDtypeError),
    (np.zeros((4, 4, 3), np.int16), "rgb", InvalidDtypeError),
    ([[0, 1], [2, 3]], "mono", InvalidDtypeError),
    (np.zeros((4, 4, 4), np.uint8), "rgb", InvalidShapeError),
    (np.zeros((4, 4), np.uint8), "bgr", InvalidShapeError),
    (np.zeros((4, 4, 3), np.uint8), "mono", InvalidShapeError),
    (np.zeros((4,), np.uint8), "mono", InvalidShapeError),
    (np.zeros((0, 5, 3), np.uint8), "rgb", EmptyInputError),
    (np.zeros((4, 4, 3), np.uint8), "yuv422", UnsupportedEncodingError),
])
def test_bad_images_raise_specific_errors(image, order, error):
    with pytest.raises(error):
        preprocess_image(image, ImagePreprocessConfig(size=4), order)


def test_error_message_names_expected_and_received():
    with pytest.raises(InvalidShapeError, match=r"HxWx3.*\(4, 4, 4\)"):
        preprocess_image(np.zeros((4, 4, 4), np.uint8), ImagePreprocessConfig(), "rgb")


_ORDERS = {"rgb": 3, "bgr": 3, "rgba": 4, "bgra": 4, "mono": 0}


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 48), w=st.integers(1, 48), order=st.sampled_from(sorted(_ORDERS)),
       dtype=st.sampled_from([np.uint8, np.uint16]), size=st.sampled_from([1, 5, 16]),
       mode=st.sampled_from(["crop", "stretch"]),
       interpolation=st.sampled_from(["auto", "nearest", "linear", "cubic", "area"]),
       seed=st.integers(0, 2**16))
def test_output_shape_dtype_and_range(h, w, order, dtype, size, mode, interpolation, seed):
    channels = _ORDERS[order]
    shape = (h, w) if channels == 0 else (h, w, channels)
    info = np.iinfo(dtype)
    image = np.random.default_rng(seed).integers(0, info.max, shape, dtype=dtype,
                                                 endpoint=True)
    pre = ImagePreprocessor(ImagePreprocessConfig(size=size, resize_mode=mode,
                                                  interpolation=interpolation))
    out = pre(image, order)
    assert out.shape == pre.output_shape == (3, size, size)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert np.all(np.isfinite(out)) and out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6
