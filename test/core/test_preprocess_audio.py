"""Audio preprocessing: log-mel definition, quality checks, streaming and chunk independence."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnibind_ros.core.errors import (
    ClippedAudioError,
    EmptyInputError,
    InvalidDtypeError,
    InvalidShapeError,
    InvalidValueError,
    NonFiniteInputError,
    SilentAudioError,
)
from omnibind_ros.core.preprocess.audio import (
    AudioPreprocessConfig,
    AudioPreprocessor,
    log_mel,
    log_mel_window,
    to_mono,
)
from omnibind_ros.core.types import AudioBlock

SMALL = AudioPreprocessConfig(window_s=0.5)  # 8000 samples, 48 frames: keeps tests quick


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noisy(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(rate * seconds))
    return (tone(440.0, rate, seconds) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def test_default_geometry():
    config = AudioPreprocessConfig()
    assert (config.window_samples, config.n_frames, config.fmax_hz) == (32000, 198, 8000.0)
    assert AudioPreprocessor().output_shape == (1, 128, 198)


def test_log_mel_matches_librosa_melspectrogram():
    import librosa

    x = noisy(16000, 0.5)
    ours = log_mel_window(x, SMALL)
    ref = librosa.feature.melspectrogram(y=x.astype(np.float64), sr=16000, n_fft=400,
                                         hop_length=160, center=False, power=2.0, n_mels=128,
                                         fmin=20.0, window="hann")
    assert ours.shape == (1, 128, 48) and ours.dtype == np.float32
    np.testing.assert_allclose(ours[0], np.log(ref + 1e-6), atol=1e-4)


def test_normalisation_and_log_offset():
    config = AudioPreprocessConfig(window_s=0.5, norm_mean=-3.0, norm_std=2.0)
    zeros = log_mel_window(np.zeros(8000, np.float32), config)
    np.testing.assert_allclose(zeros, (np.log(1e-6) + 3.0) / 2.0, rtol=1e-6)


def test_tone_energy_lands_in_the_right_band():
    import librosa

    out = log_mel(tone(1000.0, 16000, 0.5), 16000, SMALL)
    band = int(np.argmax(out[0].mean(axis=1)))
    centres = librosa.mel_frequencies(n_mels=130, fmin=20.0, fmax=8000.0)[1:-1]
    assert abs(centres[band] - 1000.0) < 60.0


def test_resampled_input_gives_nearly_the_same_features():
    native = log_mel(tone(1000.0, 16000, 0.5), 16000, SMALL)
    for rate in (44100, 8000, 22050):
        resampled = log_mel(tone(1000.0, rate, 0.5), rate, SMALL)
        peak = native[0] > native.max() - 20  # bins within 20 nepers of the peak
        assert np.abs(resampled[0][peak] - native[0][peak]).max() < 0.2, rate


def test_stereo_is_mixed_to_mono_and_int16_is_scaled():
    left, right = noisy(16000, 0.5, 1), noisy(16000, 0.5, 2)
    mono, clipped = to_mono(np.stack([left, right], axis=1))
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-7)
    assert not clipped.any()
    as_int = np.round(left * 32768).astype(np.int16)
    np.testing.assert_allclose(log_mel(as_int, 16000, SMALL),
                               log_mel(as_int.astype(np.float32) / 32768, 16000, SMALL))


def test_short_clip_is_padded_at_the_start_or_end():
    x = noisy(16000, 0.25)
    end, start = log_mel(x, 16000, SMALL, align="end"), log_mel(x, 16000, SMALL, align="start")
    silence = float(np.log(1e-6))
    assert np.all(end[0, :, :20] == silence) and np.all(start[0, :, -20:] == silence)
    assert end[0, :, -1].max() > silence + 10 and start[0, :, 0].max() > silence + 10


def test_silent_and_clipped_clips_raise():
    with pytest.raises(SilentAudioError, match="RMS"):
        log_mel(np.zeros(8000, np.float32), 16000, SMALL)
    with pytest.raises(SilentAudioError):
        log_mel(tone(440.0, 16000, 0.5, amplitude=1e-5), 16000, SMALL)
    square = np.sign(tone(440.0, 16000, 0.5)).astype(np.float32)  # all samples at full scale
    with pytest.raises(ClippedAudioError, match="full scale"):
        log_mel(square, 16000, SMALL)
    int_square = (np.sign(tone(440.0, 16000, 0.5)) * 32767).astype(np.int16)
    with pytest.raises(ClippedAudioError):
        log_mel(int_square, 16000, SMALL)


def test_thresholds_come_from_the_config():
    x = noisy(16000, 0.5)
    x[:40] = 1.0  # 0.5 % of the samples at full scale
    log_mel(x, 16000, SMALL)  # default max_clip_fraction 1 %: fine
    strict = AudioPreprocessConfig(window_s=0.5, max_clip_fraction=0.001)
    with pytest.raises(ClippedAudioError):
        log_mel(x, 16000, strict)
    with pytest.raises(SilentAudioError):
        log_mel(x, 16000, AudioPreprocessConfig(window_s=0.5, silence_rms=0.9))


@pytest.mark.parametrize(("samples", "rate", "error"), [
    (np.zeros(0, np.float32), 16000, EmptyInputError),
    (np.zeros((0, 2), np.int16), 16000, EmptyInputError),
    (np.ones(100, np.float32), 0, InvalidValueError),
    (np.ones(100, np.float32), float("nan"), InvalidValueError),
    (np.ones(100, np.uint8), 16000, InvalidDtypeError),
    ([0.1, 0.2], 16000, InvalidDtypeError),
    (np.ones((10, 2, 2), np.float32), 16000, InvalidShapeError),
    (np.ones((10, 0), np.float32), 16000, InvalidShapeError),
    (np.array([0.1, np.nan], np.float32), 16000, NonFiniteInputError),
])
def test_bad_audio_raises_specific_errors(samples, rate, error):
    with pytest.raises(error):
        log_mel(samples, rate, SMALL)
    with pytest.raises(error):
        AudioPreprocessor(SMALL).push(AudioBlock(samples, rate))


def test_push_rejects_non_blocks():
    with pytest.raises(InvalidDtypeError):
        AudioPreprocessor(SMALL).push(np.zeros(10, np.float32))


def test_streaming_at_the_target_rate_equals_the_stateless_clip():
    x = noisy(16000, 0.8)
    pre = AudioPreprocessor(SMALL)
    for start in range(0, x.shape[0], 1000):
        pre.push(AudioBlock(x[start:start + 1000], 16000))
    np.testing.assert_array_equal(pre.features(), log_mel(x, 16000, SMALL))


def test_streaming_flags_instead_of_raising_while_filling():
    pre = AudioPreprocessor(SMALL)
    assert pre.features().shape == (1, 128, 48)  # nothing received yet: zero window
    pre.push(AudioBlock(np.zeros(4000, np.float32), 16000))
    quality = pre.quality()
    assert quality.silent and not quality.full and quality.fill_fraction == 0.5
    pre.features()  # half full and silent: no exception
    pre.push(AudioBlock(np.zeros(4000, np.float32), 16000))
    assert pre.quality().full
    with pytest.raises(SilentAudioError):
        pre.features()
    assert pre.features(check=False).shape == (1, 128, 48)
    pre.push(AudioBlock(np.ones(8000, np.float32), 16000))
    assert pre.quality().clipped
    with pytest.raises(ClippedAudioError):
        pre(AudioBlock(np.ones(10, np.float32), 16000))


def test_reset_and_rate_change():
    pre = AudioPreprocessor(SMALL)
    pre.push(AudioBlock(noisy(44100, 0.6), 44100))
    assert pre.quality().full
    pre.push(AudioBlock(noisy(22050, 0.1), 22050))  # rate change: a new resampler stream
    assert pre.quality().full and np.all(np.isfinite(pre.features()))
    pre.reset()
    assert pre.quality().fill_fraction == 0.0


@st.composite
def chunked_signals(draw):
    rate = draw(st.sampled_from([8000, 16000, 22050, 44100]))
    channels = draw(st.integers(1, 2))
    dtype = draw(st.sampled_from([np.float32, np.int16]))
    n = int(rate * draw(st.floats(0.2, 0.8)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    signal = np.stack([noisy(rate, n / rate, rng.integers(1 << 30))[:n]
                       for _ in range(channels)], axis=1)
    if dtype == np.int16:
        signal = np.round(signal * 32767).astype(np.int16)
    cuts = sorted(draw(st.lists(st.integers(1, n - 1), max_size=12, unique=True)))
    return rate, signal, cuts


@settings(max_examples=25, deadline=None)
@given(case=chunked_signals())
def test_chunk_boundaries_do_not_change_the_features(case):
    rate, signal, cuts = case
    whole, chunked = AudioPreprocessor(SMALL), AudioPreprocessor(SMALL)
    whole.push(AudioBlock(signal, rate))
    for part in np.split(signal, cuts):
        chunked.push(AudioBlock(part, rate))
    assert whole.quality() == chunked.quality()
    np.testing.assert_allclose(chunked.features(), whole.features(), atol=1e-4)
    assert whole.output_shape == whole.features().shape
