"""Kaldi fbank features (the ImageBind audio frontend) against Kaldi's own C++ ported
(``kaldi_native_fbank``), and the audio preprocessor's ``frontend`` / ``target_frames``."""
from __future__ import annotations

import numpy as np
import pytest

from omnibind_ros.core.errors import InvalidShapeError, InvalidValueError
from omnibind_ros.core.preprocess.audio import (
    AudioPreprocessConfig,
    AudioPreprocessor,
    log_mel,
)
from omnibind_ros.core.preprocess.kaldi_fbank import kaldi_fbank, kaldi_mel_banks
from omnibind_ros.core.types import AudioBlock

knf = pytest.importorskip("kaldi_native_fbank", reason="the reference needs kaldi-native-fbank "
                          "(requirements/dev.txt)")


def _signal(n: int = 24000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t * (1 + t)) + 0.05 * rng.standard_normal(n)
            ).astype(np.float32)


def _reference(x: np.ndarray, *, bins: int, window: str) -> np.ndarray:
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.samp_freq = 16000
    opts.frame_opts.window_type = window
    opts.mel_opts.num_bins = bins
    opts.mel_opts.use_slaney_mel_scale = False  # Kaldi's own mel (1127 ln(1 + f / 700))
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, x.tolist())
    fbank.input_finished()
    return np.stack([np.asarray(fbank.get_frame(i)) for i in range(fbank.num_frames_ready)])


@pytest.mark.parametrize(("bins", "window"), [(80, "hanning"), (64, "povey"), (23, "hamming")])
def test_matches_kaldi(bins: int, window: str) -> None:
    x = _signal()
    ours = kaldi_fbank(x, 16000, n_mels=bins, window=window)
    ref = _reference(x, bins=bins, window=window)
    assert ours.shape == ref.shape == (1 + (24000 - 400) // 160, bins)
    # Kaldi computes in float32: low-energy bins differ by a few 1e-4 in the log
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)
    assert np.abs(ours - ref).mean() < 2e-5


def test_empty_bands_floor_at_eps_as_torchaudio() -> None:
    """128 bins over a 512-point FFT leave the lowest bands without an FFT bin: Kaldi's C++
    refuses, torchaudio (what ImageBind ran) gives them zero energy, i.e. log(eps)."""
    bank = kaldi_mel_banks(128, 512, 16000.0, 20.0, 0.0)
    empty = np.flatnonzero(bank.sum(axis=1) == 0)
    assert empty.size > 0 and empty.max() < 10
    out = kaldi_fbank(_signal(), 16000, n_mels=128)
    np.testing.assert_allclose(out[:, empty], np.log(np.finfo(np.float32).eps), rtol=1e-6)
    assert np.all(out[:, bank.sum(axis=1) > 0] > np.log(np.finfo(np.float32).eps))


def test_bad_input_is_named() -> None:
    with pytest.raises(InvalidShapeError, match=">= 400 samples"):
        kaldi_fbank(np.zeros(100), 16000)
    with pytest.raises(InvalidValueError, match="window"):
        kaldi_fbank(_signal(), 16000, window="blackman_typo")
    with pytest.raises(InvalidValueError, match="fmin < fmax"):
        kaldi_fbank(_signal(), 16000, fmin=9000.0)


def test_preprocessor_kaldi_frontend_pads_to_target_frames() -> None:
    """ImageBind's audio input: the window's mean removed, Kaldi fbank, 198 frames padded with
    0 (log domain) to 204, then (x - mean) / std."""
    cfg = AudioPreprocessConfig(frontend="kaldi_fbank", n_mels=80, target_frames=204,
                                norm_mean=-4.268, norm_std=9.138)
    x = _signal(32000) + 0.2  # a DC offset the frontend must remove
    out = log_mel(x, 16000, cfg)
    assert out.shape == (1, 80, 204) == AudioPreprocessor(cfg).output_shape
    expected = (_reference(x - x.mean(), bins=80, window="hanning").T + 4.268) / 9.138
    np.testing.assert_allclose(out[0, :, :198], expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(out[0, :, 198:], 4.268 / 9.138, rtol=1e-6)
    # streaming gives the same features once the window has filled
    pre = AudioPreprocessor(cfg)
    for chunk in np.array_split(x, 7):
        pre.push(AudioBlock(samples=chunk, sample_rate=16000))
    np.testing.assert_allclose(pre.features(), out, atol=1e-5, rtol=0)


def test_target_frames_crops_and_default_frontend_unchanged() -> None:
    base = AudioPreprocessConfig()
    cropped = AudioPreprocessConfig(target_frames=100)
    x = _signal(32000)
    full = log_mel(x, 16000, base)
    assert full.shape == (1, 128, 198) and base.n_frames == base.computed_frames == 198
    np.testing.assert_array_equal(log_mel(x, 16000, cropped), full[:, :, :100])
    with pytest.raises(ValueError, match="frontend"):
        AudioPreprocessConfig(frontend="mfcc")
