"""Thermal preprocessing: radiometric counts -> degrees C -> window -> normalised 3 channels."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnibind_ros.core.errors import (
    EmptyInputError,
    InvalidDtypeError,
    InvalidShapeError,
    InvalidValueError,
    NonFiniteInputError,
    UnsupportedEncodingError,
)
from omnibind_ros.core.preprocess.thermal import (
    ThermalPreprocessConfig,
    ThermalPreprocessor,
    preprocess_thermal,
    thermal_to_unit,
)
from omnibind_ros.core.types import THERMAL_KELVIN_PER_COUNT, ThermalFrame

CONFIG = ThermalPreprocessConfig(t_min_c=0.0, t_max_c=50.0, size=2)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
def test_known_counts_map_to_known_values(encoding):
    # 29815 counts * 0.01 K = 298.15 K = 25 C -> middle of [0, 50] C -> 0.5 -> (0.5-0.5)/0.5 = 0
    counts = np.array([[29815, 27315], [32315, 28565]], dtype=np.uint16)
    out = preprocess_thermal(ThermalFrame(counts, encoding), CONFIG)
    assert out.shape == (3, 2, 2) and out.dtype == np.float32
    expected = np.array([[0.0, -1.0], [1.0, -0.5]])  # 25 C, 0 C, 50 C, 12.5 C
    for channel in range(3):
        np.testing.assert_allclose(out[channel], expected, atol=1e-5)


def test_a_frame_without_a_scale_uses_the_radiometric_convention():
    # Counts written with THERMAL_KELVIN_PER_COUNT (as the simulator and thermal_from_image do)
    # read back as the temperatures they encode when the frame does not state its scale.
    celsius = np.array([[5.0, 20.0], [37.5, 45.0]])
    counts = np.round((celsius + 273.15) / THERMAL_KELVIN_PER_COUNT).astype(np.uint16)
    unit = thermal_to_unit(ThermalFrame(counts, "mono16"), CONFIG)
    np.testing.assert_allclose(unit, celsius / 50.0, atol=1e-4)
    stated = ThermalFrame(counts, "mono16", kelvin_per_count=THERMAL_KELVIN_PER_COUNT)
    np.testing.assert_array_equal(thermal_to_unit(stated, CONFIG), unit)


def test_counts_outside_the_window_are_clipped():
    counts = np.array([[35000, 20000], [0, 65535]], dtype=np.uint16)
    unit = thermal_to_unit(ThermalFrame(counts, "mono16"), CONFIG)
    np.testing.assert_array_equal(unit, [[1.0, 0.0], [0.0, 1.0]])


def test_kelvin_per_count_is_honoured():
    counts = np.full((2, 2), 3000, dtype=np.uint16)  # 3000 * 0.1 K = 300 K = 26.85 C
    unit = thermal_to_unit(ThermalFrame(counts, "mono16", kelvin_per_count=0.1), CONFIG)
    np.testing.assert_allclose(unit, 26.85 / 50.0, atol=1e-6)


def test_celsius_float_frames_and_nan_pixels():
    celsius = np.array([[25.0, np.nan], [-10.0, 60.0]], dtype=np.float32)
    out = preprocess_thermal(ThermalFrame(celsius, "32FC1"), CONFIG)
    np.testing.assert_allclose(out[0], [[0.0, -1.0], [-1.0, 1.0]], atol=1e-6)


def test_mono8_is_relative_and_ignores_the_temperature_window():
    agc = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    for config in (CONFIG, ThermalPreprocessConfig(t_min_c=-40, t_max_c=400, size=2)):
        out = preprocess_thermal(ThermalFrame(agc, "mono8"), config)
        np.testing.assert_allclose(out[2], [[-1.0, 1.0], [-0.6, -0.2]], atol=1e-6)


def test_window_is_configurable():
    counts = np.full((2, 2), 29815, dtype=np.uint16)  # 25 C
    config = ThermalPreprocessConfig(t_min_c=20.0, t_max_c=30.0, size=2, mean=(0, 0, 0),
                                     std=(1, 1, 1))
    np.testing.assert_allclose(preprocess_thermal(ThermalFrame(counts, "mono16"), config), 0.5,
                               atol=1e-5)


def test_resize_to_config_size():
    counts = np.full((120, 160), 29815, dtype=np.uint16)
    out = ThermalPreprocessor(ThermalPreprocessConfig(size=32))(ThermalFrame(counts, "mono16"))
    assert out.shape == (3, 32, 32)
    np.testing.assert_allclose(out, 0.0, atol=1e-5)


@pytest.mark.parametrize(("frame", "error"), [
    (ThermalFrame(np.zeros((4, 4), np.uint8), "rgb8"), UnsupportedEncodingError),
    (ThermalFrame(np.zeros((4, 4), np.float32), "mono16"), InvalidDtypeError),
    (ThermalFrame(np.zeros((4, 4), np.uint16), "32FC1"), InvalidDtypeError),
    (ThermalFrame(np.zeros((4, 4, 3), np.uint16), "mono16"), InvalidShapeError),
    (ThermalFrame(np.zeros((0, 4), np.uint16), "mono16"), EmptyInputError),
    (ThermalFrame(np.full((4, 4), np.nan, np.float32), "32FC1"), NonFiniteInputError),
    (ThermalFrame(np.zeros((4, 4), np.uint16), "mono16", kelvin_per_count=0.0),
     InvalidValueError),
    (ThermalFrame(np.zeros((4, 4), np.uint16), "mono16", kelvin_per_count="0.01"),
     InvalidValueError),
    (np.zeros((4, 4), np.uint16), InvalidDtypeError),
])
def test_bad_frames_raise_specific_errors(frame, error):
    with pytest.raises(error):
        preprocess_thermal(frame, CONFIG)


def test_mono8_can_be_rejected():
    frame = ThermalFrame(np.zeros((4, 4), np.uint8), "mono8")
    with pytest.raises(UnsupportedEncodingError, match="mono8"):
        preprocess_thermal(frame, ThermalPreprocessConfig(mono8="reject"))


def _frames(draw_encoding: str, data: np.ndarray) -> ThermalFrame:
    return ThermalFrame(data, draw_encoding)


@settings(max_examples=30, deadline=None)
@given(encoding=st.sampled_from(["mono16", "16UC1", "32FC1", "mono8"]),
       h=st.integers(1, 40), w=st.integers(1, 40), size=st.sampled_from([1, 8, 24]),
       seed=st.integers(0, 2**16))
def test_output_shape_dtype_and_range(encoding, h, w, size, seed):
    rng = np.random.default_rng(seed)
    if encoding == "32FC1":
        data = rng.uniform(-50, 150, (h, w)).astype(np.float32)
    elif encoding == "mono8":
        data = rng.integers(0, 256, (h, w), dtype=np.uint8)
    else:
        data = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    pre = ThermalPreprocessor(ThermalPreprocessConfig(size=size))
    out = pre(_frames(encoding, data))
    assert out.shape == pre.output_shape == (3, size, size) and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6
    np.testing.assert_array_equal(out[0], out[1])


def test_one_channel_output_for_single_channel_stems():
    """``channels=1`` (ImageBind's thermal stem): the same values as channel 0 of the default,
    normalised with ``mean[0]`` / ``std[0]``."""
    counts = np.array([[29815, 27315], [32315, 28565]], dtype=np.uint16)
    one = ThermalPreprocessConfig(t_min_c=0.0, t_max_c=50.0, size=2, channels=1)
    out = preprocess_thermal(ThermalFrame(counts, "mono16"), one)
    assert out.shape == (1, 2, 2) == ThermalPreprocessor(one).output_shape
    np.testing.assert_array_equal(out, preprocess_thermal(ThermalFrame(counts, "mono16"),
                                                          CONFIG)[:1])
    raw = ThermalPreprocessConfig(size=2, channels=1, mean=(0, 0, 0), std=(1, 1, 1))
    np.testing.assert_allclose(preprocess_thermal(ThermalFrame(counts, "mono16"), raw)[0],
                               [[0.5, 0.0], [1.0, 0.25]], atol=1e-5)
    for bad in (2, 0, True):
        with pytest.raises(ValueError, match="channels"):
            ThermalPreprocessConfig(channels=bad)
