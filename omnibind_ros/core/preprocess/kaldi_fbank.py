"""Kaldi-compatible log mel filterbank features ("fbank"), vectorised numpy.

Models trained on ``torchaudio.compliance.kaldi.fbank`` features (ImageBind, AST, BEATs, ...)
need the same numbers at runtime, and core cannot import torch. This module computes Kaldi's
``compute-fbank-feats`` definition with the options those models pass:

1. frames of ``frame_length`` samples every ``frame_shift`` samples, ``snip_edges`` (only
   frames that fit: T = 1 + (n - frame_length) // frame_shift);
2. per frame: the DC offset removed (``remove_dc_offset``), pre-emphasis
   ``x[i] - preemph * x[i - 1]`` with ``x[-1] = x[0]`` (Kaldi's convention), then the window
   (``"hanning"``: the symmetric Hann window ``0.5 - 0.5 cos(2 pi i / (N - 1))``, or
   ``"povey"``: that to the power 0.85, Kaldi's default);
3. zero-padded to the next power of two (``round_to_power_of_two``), power spectrum;
4. Kaldi's triangular mel bank: mel = 1127 ln(1 + f / 700), ``n_mels`` triangles equally spaced
   in mel between ``fmin`` and ``fmax`` (Nyquist by default), weights computed in the mel
   domain, the Nyquist bin unused;
5. ``log(max(energy, eps))`` with eps = float32 machine epsilon.

Dither is 0 (deterministic: every model cited sets ``dither=0``), ``use_energy`` is off. The
result matches ``kaldi_native_fbank`` (Kaldi's own C++ ported, the test suite's reference) to
float32 rounding.
"""
from __future__ import annotations

import functools

import numpy as np

from omnibind_ros.core.errors import InvalidShapeError, InvalidValueError

__all__ = ["KALDI_WINDOWS", "kaldi_fbank", "kaldi_mel_banks"]

#: Window types implemented (Kaldi's names).
KALDI_WINDOWS = ("hanning", "povey", "hamming", "rectangular")
_EPS = float(np.finfo(np.float32).eps)


def _mel(freq: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=16)
def kaldi_mel_banks(n_mels: int, padded_length: int, sample_rate: float, fmin: float,
                    fmax: float) -> np.ndarray:
    """Kaldi's mel filterbank: float64 ``[n_mels, padded_length // 2 + 1]`` (read-only).

    The last column (the Nyquist bin) is zero, as in Kaldi.
    """
    n_bins = padded_length // 2
    nyquist = 0.5 * sample_rate
    high = fmax if fmax > 0 else nyquist + fmax  # Kaldi: a non-positive high_freq is an offset
    if not 0.0 <= fmin < high <= nyquist:
        raise InvalidValueError(f"mel band edges must satisfy 0 <= fmin < fmax <= Nyquist "
                                f"({nyquist} Hz), got fmin={fmin}, fmax={high}")
    mel_low, mel_high = _mel(fmin), _mel(high)
    delta = (mel_high - mel_low) / (n_mels + 1)
    left = mel_low + delta * np.arange(n_mels)[:, None]
    centre, right = left + delta, left + 2.0 * delta
    mel = _mel(sample_rate / padded_length * np.arange(n_bins))[None, :]
    up = (mel - left) / (centre - left)
    down = (right - mel) / (right - centre)
    bank = np.maximum(0.0, np.minimum(up, down))
    bank = np.concatenate([bank, np.zeros((n_mels, 1))], axis=1)
    bank.setflags(write=False)
    return bank


@functools.lru_cache(maxsize=8)
def _window(kind: str, length: int) -> np.ndarray:
    i = np.arange(length, dtype=np.float64)
    arg = 2.0 * np.pi * i / (length - 1)
    if kind == "hanning":
        window = 0.5 - 0.5 * np.cos(arg)
    elif kind == "povey":
        window = (0.5 - 0.5 * np.cos(arg)) ** 0.85
    elif kind == "hamming":
        window = 0.54 - 0.46 * np.cos(arg)
    else:
        window = np.ones(length)
    window.setflags(write=False)
    return window


def kaldi_fbank(samples: np.ndarray, sample_rate: float, *, n_mels: int = 128,
                frame_length: int = 400, frame_shift: int = 160, fmin: float = 20.0,
                fmax: float = 0.0, window: str = "hanning", preemphasis: float = 0.97,
                remove_dc_offset: bool = True) -> np.ndarray:
    """Log mel filterbank features of a mono signal, Kaldi's definition (module docstring).

    Parameters
    ----------
    samples : float [n] mono samples (any scale: Kaldi does not rescale).
    sample_rate : Hz.
    n_mels : number of mel bins.
    frame_length, frame_shift : in samples (25 ms / 10 ms at 16 kHz by default).
    fmin, fmax : band edges in Hz; ``fmax <= 0`` is Nyquist + fmax (Kaldi's ``high_freq``).
    window : one of :data:`KALDI_WINDOWS`.
    preemphasis : pre-emphasis coefficient (0 disables it).
    remove_dc_offset : subtract each frame's mean first.

    Returns
    -------
    float32 ``[T, n_mels]`` (Kaldi's layout: frames first).

    Raises
    ------
    InvalidShapeError
        ``samples`` is not 1-D or is shorter than one frame.
    InvalidValueError
        Unknown window, or band edges outside ``[0, Nyquist]``.
    """
    if window not in KALDI_WINDOWS:
        raise InvalidValueError(f"window must be one of {KALDI_WINDOWS}, got {window!r}")
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.shape[0] < frame_length:
        raise InvalidShapeError(f"kaldi_fbank needs a 1-D signal of >= {frame_length} samples, "
                                f"got shape {x.shape}")
    frames = np.lib.stride_tricks.sliding_window_view(x, frame_length)[::frame_shift]
    if remove_dc_offset:
        frames = frames - frames.mean(axis=1, keepdims=True)
    if preemphasis:
        previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
        frames = frames - preemphasis * previous
    frames = frames * _window(window, frame_length)
    padded = 1 << (frame_length - 1).bit_length()
    power = np.square(np.abs(np.fft.rfft(frames, n=padded, axis=1)))
    bank = kaldi_mel_banks(n_mels, padded, float(sample_rate), float(fmin), float(fmax))
    energies = power @ bank.T
    return np.log(np.maximum(energies, _EPS)).astype(np.float32)
