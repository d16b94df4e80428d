"""Impact-sound synthesis: determinism, range, and that material and size set the pitch."""
from __future__ import annotations

import numpy as np
import pytest

from omnibind_ros.sim.audio import impact_sound, modal_frequencies, pink_noise, soft_clip
from omnibind_ros.sim.catalog import MATERIALS

SR = 16000


def _peak_hz(x: np.ndarray, sr: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1.0 / sr)[spectrum.argmax()])


def _onset(x: np.ndarray, floor: float = 0.1) -> int:
    return int(np.argmax(np.abs(x) > floor * np.abs(x).max()))


def test_shape_dtype_range_and_determinism() -> None:
    for mat in MATERIALS:
        a = impact_sound(mat, 0.12, np.random.default_rng(7), duration_s=0.5)
        b = impact_sound(mat, 0.12, np.random.default_rng(7), duration_s=0.5)
        c = impact_sound(mat, 0.12, np.random.default_rng(8), duration_s=0.5)
        assert a.dtype == np.float32 and a.shape == (8000,)
        assert np.abs(a).max() < 1.0
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


@pytest.mark.parametrize("mat", MATERIALS, ids=lambda m: m.name)
def test_fundamental_follows_material_and_size(mat) -> None:
    for size in (0.10, 0.16):
        x = impact_sound(mat, size, np.random.default_rng(3), noise_level=0.0)
        f0 = modal_frequencies(mat, size)[0]
        assert abs(_peak_hz(x) - f0) < 0.06 * f0, (mat.name, size, _peak_hz(x), f0)


def test_smaller_object_rings_higher() -> None:
    mat = MATERIALS[1]
    small = impact_sound(mat, 0.08, np.random.default_rng(0), noise_level=0.0)
    large = impact_sound(mat, 0.16, np.random.default_rng(0), noise_level=0.0)
    assert _peak_hz(small) > 1.7 * _peak_hz(large)


def test_metal_rings_longer_than_plastic() -> None:
    by_name = {m.name: m for m in MATERIALS}

    def tail_energy(mat) -> float:
        x = impact_sound(mat, 0.12, np.random.default_rng(1), noise_level=0.0).astype(float)
        start = _onset(x)
        return float(np.sum(x[start + 3200:] ** 2) / np.sum(x[start:] ** 2))  # after 200 ms

    assert tail_energy(by_name["metal"]) > 0.1  # T60 1.6 s: ~e^-1.7 of the energy
    assert tail_energy(by_name["plastic"]) < 1e-3
    assert tail_energy(by_name["wooden"]) < tail_energy(by_name["metal"])


def test_onset_is_random_within_first_fifth() -> None:
    onsets = [_onset(impact_sound(MATERIALS[0], 0.12, np.random.default_rng(s), noise_level=0.0))
              for s in range(20)]
    assert max(onsets) <= 0.2 * SR + 5
    assert len(set(onsets)) > 10  # not a fixed position


def test_strike_strength_varies() -> None:
    peaks = [np.abs(impact_sound(MATERIALS[1], 0.12, np.random.default_rng(s),
                                 noise_level=0.0)).max() for s in range(20)]
    assert max(peaks) / min(peaks) > 1.5


def test_background_noise_level_and_silence_before_onset() -> None:
    # Noise is drawn last, so the same seed gives the same strike with and without noise.
    quiet = impact_sound(MATERIALS[2], 0.12, np.random.default_rng(5), noise_level=0.0)
    noisy = impact_sound(MATERIALS[2], 0.12, np.random.default_rng(5), noise_level=0.02)
    assert np.std(noisy - quiet) == pytest.approx(0.02, rel=0.02)
    first = int(np.flatnonzero(quiet)[0])
    assert first > 0 or np.abs(quiet[:5]).max() < 1e-3  # silent before the onset


def test_pink_noise_spectrum_falls() -> None:
    n = pink_noise(1 << 15, np.random.default_rng(0), SR)
    assert abs(n.std() - 1.0) < 1e-6
    power = np.abs(np.fft.rfft(n)) ** 2
    f = np.fft.rfftfreq(n.size, 1.0 / SR)
    low = power[(f > 100) & (f < 200)].mean()
    high = power[(f > 3200) & (f < 6400)].mean()
    assert 10 < low / high < 60  # 1/f: 32x ratio of centre frequencies; white noise gives ~1
    assert power[f < 15].max() == pytest.approx(0.0, abs=1e-9)


def test_soft_clip_is_identity_below_knee_and_bounded() -> None:
    x = np.linspace(-5, 5, 1001)
    y = soft_clip(x)
    inside = np.abs(x) <= 0.9
    np.testing.assert_array_equal(y[inside], x[inside])
    assert np.all(np.abs(y) <= 1.0) and np.all(np.diff(y) >= 0)


def test_loud_noise_stays_in_range() -> None:
    x = impact_sound(MATERIALS[0], 0.12, np.random.default_rng(0), noise_level=3.0)
    assert np.abs(x).max() < 1.0


@pytest.mark.parametrize("kwargs", [dict(duration_s=0.0), dict(noise_level=-1.0)])
def test_bad_arguments_raise(kwargs) -> None:
    with pytest.raises(ValueError):
        impact_sound(MATERIALS[0], 0.12, np.random.default_rng(0), **kwargs)
    with pytest.raises(ValueError):
        impact_sound(MATERIALS[0], 0.0, np.random.default_rng(0))
