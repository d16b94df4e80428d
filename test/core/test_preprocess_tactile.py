"""Tactile preprocessing: signed difference to a reference, captured reference state, errors."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnibind_ros.core.errors import (
    EmptyInputError,
    InvalidDtypeError,
    InvalidShapeError,
    MissingReferenceError,
)
from omnibind_ros.core.preprocess.tactile import (
    TactilePreprocessConfig,
    TactilePreprocessor,
    preprocess_tactile,
    tactile_difference,
)
from omnibind_ros.core.types import TactileFrame

RNG = np.random.default_rng(3)


def rgb(value: int | np.ndarray, shape=(2, 2, 3)) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, np.uint8), shape).copy()


def test_known_difference_scaled_by_gain():
    reference = rgb(100)
    image = reference.copy()
    image[0, 1] = [151, 100, 49]  # +51, 0, -51
    out = tactile_difference(image, reference, TactilePreprocessConfig(gain=2.0, size=2,
                                                                       clip=False))
    assert out.shape == (3, 2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 1], [0.4, 0.0, -0.4], atol=1e-6)
    assert np.count_nonzero(out) == 2


def test_clip_limits_to_unit_range():
    out = tactile_difference(rgb(255), rgb(0), TactilePreprocessConfig(gain=4.0, size=2))
    np.testing.assert_array_equal(out, 1.0)
    unclipped = tactile_difference(rgb(255), rgb(0),
                                   TactilePreprocessConfig(gain=4.0, size=2, clip=False))
    np.testing.assert_allclose(unclipped, 4.0)


def test_payload_reference_is_used_statelessly():
    image, reference = RNG.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    config = TactilePreprocessConfig(size=8)
    np.testing.assert_array_equal(preprocess_tactile(TactileFrame(image, reference), config),
                                  tactile_difference(image, reference, config))


def test_captured_reference_first_frame_then_reset():
    pre = TactilePreprocessor(TactilePreprocessConfig(size=2, gain=1.0))
    assert pre.reference is None and not pre.reference_ready
    first = pre(TactileFrame(rgb(100)))
    np.testing.assert_array_equal(first, 0.0)  # the first frame is the reference
    assert pre.reference_ready
    np.testing.assert_allclose(pre(TactileFrame(rgb(151))), 0.2, atol=1e-6)
    pre.reset_reference()
    np.testing.assert_array_equal(pre(TactileFrame(rgb(151))), 0.0)
    np.testing.assert_allclose(pre(TactileFrame(rgb(100))), -0.2, atol=1e-6)


def test_captured_reference_averages_configured_frames():
    pre = TactilePreprocessor(TactilePreprocessConfig(size=2, gain=1.0, reference_frames=2))
    pre(TactileFrame(rgb(100)))
    assert not pre.reference_ready
    pre(TactileFrame(rgb(110)))  # reference = 105
    assert pre.reference_ready
    np.testing.assert_allclose(pre(TactileFrame(rgb(156))), 51 / 255, atol=1e-6)
    np.testing.assert_allclose(pre.reference, 105.0)


def test_payload_reference_takes_precedence_unless_disabled():
    pre = TactilePreprocessor(TactilePreprocessConfig(size=2, gain=1.0))
    pre.set_reference(rgb(0))
    np.testing.assert_allclose(pre(TactileFrame(rgb(51), rgb(51))), 0.0)
    captured = TactilePreprocessor(TactilePreprocessConfig(size=2, gain=1.0,
                                                           use_payload_reference=False))
    captured.set_reference(rgb(0))
    np.testing.assert_allclose(captured(TactileFrame(rgb(51), rgb(51))), 0.2, atol=1e-6)


def test_resolution_change_needs_a_reset():
    pre = TactilePreprocessor(TactilePreprocessConfig(size=2))
    pre(TactileFrame(rgb(0, (4, 4, 3))))
    with pytest.raises(InvalidShapeError, match="reset_reference"):
        pre(TactileFrame(rgb(0, (6, 6, 3))))
    pre.reset_reference()
    assert pre(TactileFrame(rgb(0, (6, 6, 3)))).shape == (3, 2, 2)


@pytest.mark.parametrize(("frame", "error"), [
    (TactileFrame(rgb(0), None), MissingReferenceError),
    (TactileFrame(rgb(0), rgb(0, (3, 2, 3))), InvalidShapeError),
    (TactileFrame(rgb(0, (2, 2)), rgb(0, (2, 2))), InvalidShapeError),
    (TactileFrame(rgb(0).astype(np.uint16), rgb(0)), InvalidDtypeError),
    (TactileFrame(rgb(0, (0, 2, 3)), rgb(0, (0, 2, 3))), EmptyInputError),
    (rgb(0), InvalidDtypeError),
])
def test_bad_frames_raise_specific_errors(frame, error):
    with pytest.raises(error):
        preprocess_tactile(frame, TactilePreprocessConfig(size=2))


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 48), w=st.integers(1, 48), size=st.sampled_from([1, 8, 24]),
       gain=st.floats(0.1, 20.0), clip=st.booleans(), seed=st.integers(0, 2**16))
def test_output_shape_dtype_and_range(h, w, size, gain, clip, seed):
    image, reference = np.random.default_rng(seed).integers(0, 256, (2, h, w, 3), np.uint8)
    pre = TactilePreprocessor(TactilePreprocessConfig(size=size, gain=gain, clip=clip))
    out = pre(TactileFrame(image, reference))
    assert out.shape == pre.output_shape == (3, size, size) and out.dtype == np.float32
    bound = 1.0 if clip else gain
    assert np.all(np.isfinite(out)) and np.abs(out).max() <= bound + 1e-5
