"""Audio preprocessing: PCM chunks -> mono -> resampled -> log-mel window, float32 [1, M, T].

Feature definition (all from :class:`AudioPreprocessConfig`; defaults in brackets):

- mono mix: the mean over channels; int16 is scaled by 1/32768, int32 by 1/2**31, floats are
  taken as already in [-1, 1];
- resampling to ``sample_rate`` [16000 Hz] with soxr (``resample_quality`` ["HQ"]);
- the window is the last ``window_s`` [2.0 s] of audio, W = round(window_s * sample_rate)
  samples; before it has filled, its start is zero (silence);
- STFT: frames of ``n_fft`` [400 = 25 ms] samples every ``hop_length`` [160 = 10 ms] samples,
  periodic Hann window, no centre padding (every frame lies inside the window), so
  T = 1 + (W - n_fft) // hop_length [198]; power spectrum |X|^2;
- mel: ``librosa.filters.mel`` (Slaney scale and area normalisation), ``n_mels`` [128] bands
  from ``fmin`` [20 Hz] to ``fmax`` [None = Nyquist];
- ``log(mel + log_offset)`` (natural log, offset [1e-6] keeps silence finite), then
  ``(x - norm_mean) / norm_std`` [0, 1: identity; a bundle stores its training set's values].

``frontend="kaldi_fbank"`` replaces the STFT, mel and log steps by Kaldi's fbank definition
(:mod:`.kaldi_fbank`: frames of ``n_fft`` samples every ``hop_length``, per-frame DC removal,
pre-emphasis 0.97, symmetric Hann window, FFT padded to a power of two, Kaldi's mel bank,
``log(max(energy, eps))``), after subtracting the window's mean, which is what models trained
on ``torchaudio.compliance.kaldi.fbank`` saw (ImageBind's ``waveform2melspec``; imported
ImageBind bundles carry this frontend). ``target_frames`` [None] pads (with 0 in the log
domain, before the normalisation, as ImageBind pads) or crops the frame axis to a fixed
length, e.g. ImageBind's 204 frames for 198 computed ones.

Quality: a window whose RMS (full scale 1) is below ``silence_rms`` is silent, one where more
than ``max_clip_fraction`` of the samples have any channel at or above ``clip_level`` (checked
on the input samples, before resampling smears the plateaus) is clipped.
:func:`log_mel` raises SilentAudioError / ClippedAudioError. :class:`AudioPreprocessor` raises
them from :meth:`~AudioPreprocessor.features` only once its window has filled; while it fills,
it returns features of the zero-padded window and reports the condition through
:meth:`~AudioPreprocessor.quality` instead, because a node that has just subscribed should not
log errors for audio it has not yet received.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from omnibind_ros.core.errors import (
    ClippedAudioError,
    EmptyInputError,
    InvalidDtypeError,
    InvalidShapeError,
    InvalidValueError,
    NonFiniteInputError,
    SilentAudioError,
)
from omnibind_ros.core.preprocess import _config as cfg
from omnibind_ros.core.preprocess.kaldi_fbank import kaldi_fbank
from omnibind_ros.core.types import AudioBlock

__all__ = ["AUDIO_FRONTENDS", "INPUT_RATE_RANGE_HZ", "AudioPreprocessConfig",
           "AudioPreprocessor", "AudioQuality", "log_mel", "log_mel_window", "mel_filterbank",
           "to_mono"]

_QUALITIES = ("VHQ", "HQ", "MQ", "LQ", "QQ")
#: Feature definitions: the module's own log-mel, or Kaldi's fbank.
AUDIO_FRONTENDS = ("log_mel", "kaldi_fbank")
_INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2.0 ** 31}
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class AudioPreprocessConfig(cfg.ConfigMixin):
    """How audio becomes a log-mel window (see the module docstring for the definition).

    Attributes
    ----------
    sample_rate : rate the features are computed at, Hz.
    window_s : length of the analysed window, seconds.
    n_fft : STFT frame length (= FFT size), samples at ``sample_rate``.
    hop_length : STFT hop, samples.
    n_mels : number of mel bands.
    fmin, fmax : band edges of the mel filterbank in Hz; ``fmax=None`` is ``sample_rate / 2``.
    log_offset : added to the mel power before the natural log.
    norm_mean, norm_std : normalisation of the log-mel values.
    silence_rms : RMS below which a window is silent (1e-4 is -80 dBFS).
    clip_level : absolute sample value (full scale 1) counted as clipped.
    max_clip_fraction : fraction of clipped samples above which a window is clipped.
    resample_quality : soxr quality, "VHQ", "HQ", "MQ", "LQ" or "QQ".
    frontend : "log_mel" or "kaldi_fbank" (module docstring; ``log_offset`` is unused by the
        latter, which floors at float32 eps as Kaldi does).
    target_frames : pad / crop the frame axis to this many frames (None: keep them all).
    """

    sample_rate: int = 16000
    window_s: float = 2.0
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 128
    fmin: float = 20.0
    fmax: float | None = None
    log_offset: float = 1e-6
    norm_mean: float = 0.0
    norm_std: float = 1.0
    silence_rms: float = 1e-4
    clip_level: float = 0.999
    max_clip_fraction: float = 0.01
    resample_quality: str = "HQ"
    frontend: str = "log_mel"
    target_frames: int | None = None

    def __post_init__(self) -> None:
        cfg.normalise_fields(
            self,
            sample_rate=cfg.as_int(self, "sample_rate", minimum=1),
            window_s=cfg.as_float(self, "window_s", low=0.0, low_open=True),
            n_fft=cfg.as_int(self, "n_fft", minimum=2),
            hop_length=cfg.as_int(self, "hop_length", minimum=1),
            n_mels=cfg.as_int(self, "n_mels", minimum=1),
            fmin=cfg.as_float(self, "fmin", low=0.0),
            log_offset=cfg.as_float(self, "log_offset", low=0.0, low_open=True),
            norm_mean=cfg.as_float(self, "norm_mean"),
            norm_std=cfg.as_float(self, "norm_std", low=0.0, low_open=True),
            silence_rms=cfg.as_float(self, "silence_rms", low=0.0),
            clip_level=cfg.as_float(self, "clip_level", low=0.0, high=1.0, low_open=True),
            max_clip_fraction=cfg.as_float(self, "max_clip_fraction", low=0.0, high=1.0),
            resample_quality=cfg.as_choice(self, "resample_quality", _QUALITIES),
            frontend=cfg.as_choice(self, "frontend", AUDIO_FRONTENDS),
        )
        if self.target_frames is not None:
            self._set("target_frames", cfg.as_int(self, "target_frames", minimum=1))
        if self.fmax is not None:
            self._set("fmax", cfg.as_float(self, "fmax", low=0.0, high=self.sample_rate / 2))
        if self.fmin >= self.fmax_hz:
            raise cfg.fail(self, f"fmin ({self.fmin}) must be < fmax ({self.fmax_hz})")
        if self.window_samples < self.n_fft:
            raise cfg.fail(self, f"window_s * sample_rate = {self.window_samples} samples is "
                                 f"shorter than n_fft = {self.n_fft}")

    @property
    def fmax_hz(self) -> float:
        """Upper band edge in Hz (``fmax`` or the Nyquist frequency)."""
        return self.sample_rate / 2 if self.fmax is None else float(self.fmax)

    @property
    def window_samples(self) -> int:
        """W, the window length in samples at ``sample_rate``."""
        return int(round(self.window_s * self.sample_rate))

    @property
    def computed_frames(self) -> int:
        """The number of STFT frames that fit in a window."""
        return 1 + (self.window_samples - self.n_fft) // self.hop_length

    @property
    def n_frames(self) -> int:
        """T, the number of frames of the features (``target_frames`` when set)."""
        return self.target_frames if self.target_frames is not None else self.computed_frames


@dataclass(frozen=True)
class AudioQuality:
    """Quality of the current audio window.

    Attributes
    ----------
    rms : root mean square of the received part of the window (full scale 1).
    clip_fraction : fraction of the received input samples at full scale.
    fill_fraction : received part of the window, 0..1.
    silent, clipped : the thresholds of the config are crossed.
    """

    rms: float
    clip_fraction: float
    fill_fraction: float
    silent: bool
    clipped: bool

    @property
    def full(self) -> bool:
        """True once the window holds ``window_s`` of audio."""
        return self.fill_fraction >= 1.0

    def check(self) -> None:
        """Raise SilentAudioError or ClippedAudioError if the window is silent or clipped."""
        if self.silent:
            raise SilentAudioError(f"audio is silent: RMS {self.rms:.3g} below the floor")
        if self.clipped:
            raise ClippedAudioError(
                f"audio is clipped: {100 * self.clip_fraction:.2f}% of samples at full scale")


def _quality(window: np.ndarray, clip_flags: np.ndarray, fill: float,
             config: AudioPreprocessConfig) -> AudioQuality:
    rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64)))) if window.size else 0.0
    clip_fraction = float(clip_flags.mean()) if clip_flags.size else 0.0
    return AudioQuality(rms, clip_fraction, fill, silent=rms < config.silence_rms,
                        clipped=clip_fraction > config.max_clip_fraction)


def to_mono(samples: np.ndarray, clip_level: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Mix PCM samples to mono floats and flag clipped samples.

    Parameters
    ----------
    samples : [n] or [n, channels] int16, int32, float32 or float64 (floats in [-1, 1]).
    clip_level : a sample with any channel at ``|x| >= clip_level`` (full scale 1) is clipped.

    Returns
    -------
    mono : float32 [n], the mean over channels, full scale 1.
    clipped : bool [n].

    Raises
    ------
    InvalidDtypeError, InvalidShapeError, EmptyInputError, NonFiniteInputError
    """
    if not isinstance(samples, np.ndarray):
        raise InvalidDtypeError(f"audio samples must be a numpy array, got {type(samples)}")
    if samples.dtype not in _INT_SCALE and samples.dtype not in _FLOATS:
        raise InvalidDtypeError(
            f"audio samples must be int16, int32, float32 or float64, got {samples.dtype}")
    if samples.ndim not in (1, 2) or (samples.ndim == 2 and samples.shape[1] == 0):
        raise InvalidShapeError(
            f"audio samples must have shape [n] or [n, channels], got {samples.shape}")
    if samples.shape[0] == 0:
        raise EmptyInputError(f"audio block has no samples: shape {samples.shape}")
    scaled = samples.astype(np.float32)
    if samples.dtype in _INT_SCALE:
        scaled /= np.float32(_INT_SCALE[samples.dtype])
    elif not np.all(np.isfinite(scaled)):
        raise NonFiniteInputError("audio samples contain NaN or inf")
    if scaled.ndim == 1:
        return scaled, np.abs(scaled) >= clip_level
    return scaled.mean(axis=1), np.any(np.abs(scaled) >= clip_level, axis=1)


#: Input rates accepted, Hz: what audio hardware runs at (8 kHz telephony to 768 kHz). Outside
#: it a header is corrupt, and believing it is costly: a chunk at 1 Hz resamples into 16,000
#: times as many samples, and at 2^32 Hz the window's clip flags alone would take gigabytes.
INPUT_RATE_RANGE_HZ = (1_000.0, 768_000.0)


def _check_rate(rate: object) -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float | np.number) or not (
            math.isfinite(rate) and rate > 0):
        raise InvalidValueError(f"sample rate must be a finite number > 0 Hz, got {rate!r}")
    low, high = INPUT_RATE_RANGE_HZ
    if not low <= rate <= high:
        raise InvalidValueError(f"sample rate {rate!r} Hz is outside the {low:.0f}..{high:.0f} "
                                "Hz audio hardware runs at (a corrupt header?)")
    return float(rate)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float,
                   fmax: float) -> np.ndarray:
    """Return the (cached, read-only) float64 [n_mels, n_fft // 2 + 1] librosa mel filterbank."""
    import librosa.filters

    bank = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin,
                               fmax=fmax, htk=False, norm="slaney", dtype=np.float64)
    bank.setflags(write=False)
    return bank


@functools.lru_cache(maxsize=8)
def _hann(n: int) -> np.ndarray:
    # Periodic Hann (scipy.signal.get_window("hann", n)), as librosa uses for STFTs.
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    window.setflags(write=False)
    return window


def log_mel_window(window: np.ndarray, config: AudioPreprocessConfig) -> np.ndarray:
    """Log-mel features of one window already at ``config.sample_rate``.

    Parameters
    ----------
    window : float [W] mono samples, W = ``config.window_samples``, full scale 1.
    config : the preprocessing config.

    Returns
    -------
    float32 [1, n_mels, n_frames].
    """
    if window.shape != (config.window_samples,):
        raise InvalidShapeError(
            f"window must have shape ({config.window_samples},), got {window.shape}")
    if config.frontend == "kaldi_fbank":
        mel = kaldi_fbank(window - window.mean(), config.sample_rate, n_mels=config.n_mels,
                          frame_length=config.n_fft, frame_shift=config.hop_length,
                          fmin=config.fmin, fmax=config.fmax_hz).T.astype(np.float64)
    else:
        frames = np.lib.stride_tricks.sliding_window_view(window.astype(np.float64),
                                                          config.n_fft)
        frames = frames[::config.hop_length] * _hann(config.n_fft)
        power = np.square(np.abs(np.fft.rfft(frames, axis=1)))
        bank = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.fmin,
                              config.fmax_hz)
        mel = np.log(bank @ power.T + config.log_offset)
    mel = _fit_frames(mel, config.n_frames)
    return ((mel - config.norm_mean) / config.norm_std).astype(np.float32)[None]


def _fit_frames(mel: np.ndarray, frames: int) -> np.ndarray:
    """Crop the frame axis (the last) to ``frames``, or pad it with zeros at the end."""
    if mel.shape[1] >= frames:
        return mel[:, :frames]
    return np.pad(mel, ((0, 0), (0, frames - mel.shape[1])))


def _resample(mono: np.ndarray, rate: float, config: AudioPreprocessConfig) -> np.ndarray:
    if rate == config.sample_rate:
        return mono
    import soxr

    return soxr.resample(mono, rate, config.sample_rate, quality=config.resample_quality)


def log_mel(samples: np.ndarray, sample_rate: float, config: AudioPreprocessConfig,
            align: str = "end") -> np.ndarray:
    """Stateless log-mel features of a clip (training data sets, offline evaluation).

    Parameters
    ----------
    samples : [n] or [n, channels] PCM (see :func:`to_mono`) at ``sample_rate`` Hz.
    sample_rate : input rate in Hz.
    config : the preprocessing config.
    align : "end" keeps the last ``window_s`` of the clip and zero-pads a short clip at the
        start, exactly like a freshly filled :class:`AudioPreprocessor`; "start" keeps the first
        ``window_s`` and pads at the end (an onset at the start of a clip is kept).

    Returns
    -------
    float32 [1, n_mels, n_frames].

    Raises
    ------
    SilentAudioError, ClippedAudioError
        The kept part of the clip is silent or clipped.
    InvalidValueError
        ``sample_rate`` <= 0 or ``align`` unknown; and the errors of :func:`to_mono`.
    """
    if align not in ("end", "start"):
        raise InvalidValueError(f"align must be 'end' or 'start', got {align!r}")
    rate = _check_rate(sample_rate)
    mono, clipped = to_mono(samples, config.clip_level)
    keep_in = math.ceil(config.window_s * rate)
    clipped = clipped[-keep_in:] if align == "end" else clipped[:keep_in]
    audio = _resample(mono, rate, config)
    n = config.window_samples
    kept = audio[-n:] if align == "end" else audio[:n]
    pad = np.zeros(n - kept.shape[0], dtype=np.float32)
    window = np.concatenate([pad, kept] if align == "end" else [kept, pad])
    _quality(kept, clipped, kept.shape[0] / n, config).check()
    return log_mel_window(window, config)


class _Ring:
    """Fixed-length ring buffer keeping the newest ``size`` values."""

    def __init__(self, size: int, dtype: type) -> None:
        self.data = np.zeros(size, dtype=dtype)
        self.pos = 0
        self.filled = 0

    def write(self, values: np.ndarray) -> None:
        size = self.data.shape[0]
        values = values[-size:]
        n = values.shape[0]
        first = min(n, size - self.pos)
        self.data[self.pos:self.pos + first] = values[:first]
        self.data[:n - first] = values[first:]
        self.pos = (self.pos + n) % size
        self.filled = min(size, self.filled + n)

    def ordered(self) -> np.ndarray:
        """All values, oldest first (unfilled slots, zeros, come first)."""
        return np.concatenate([self.data[self.pos:], self.data[:self.pos]])

    def received(self) -> np.ndarray:
        """Only the values written so far, oldest first."""
        return self.ordered()[self.data.shape[0] - self.filled:]


class AudioPreprocessor:
    """Streaming log-mel preprocessor over incoming audio blocks.

    Blocks of any rate, channel count and dtype are mixed to mono, resampled with one
    continuous soxr stream (so block boundaries do not change the result) and appended to a
    ring buffer holding the last ``window_s`` seconds. A change of input rate flushes the old
    stream into the buffer and starts a new one (the clip statistics restart).

    Examples
    --------
    >>> pre = AudioPreprocessor(AudioPreprocessConfig())
    >>> pre.push(block)                      # as chunks arrive
    >>> if pre.quality().full: x = pre.features()   # float32 [1, n_mels, n_frames]
    """

    def __init__(self, config: AudioPreprocessConfig | None = None) -> None:
        self.config = config or AudioPreprocessConfig()
        self.reset()

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Shape of the model input: (1, n_mels, n_frames)."""
        return (1, self.config.n_mels, self.config.n_frames)

    def reset(self) -> None:
        """Empty the window and drop the resampler state."""
        self._ring = _Ring(self.config.window_samples, np.float32)
        self._clip_ring: _Ring | None = None
        self._stream = None
        self._rate: float | None = None

    def _start_stream(self, rate: float) -> None:
        if self._stream is not None:  # keep the old stream's delayed tail
            self._ring.write(self._stream.resample_chunk(np.zeros(0, np.float32), last=True))
        self._stream = None
        if rate != self.config.sample_rate:
            import soxr

            self._stream = soxr.ResampleStream(rate, self.config.sample_rate, 1,
                                               dtype="float32",
                                               quality=self.config.resample_quality)
        self._clip_ring = _Ring(math.ceil(self.config.window_s * rate), bool)
        self._rate = rate

    def push(self, block: AudioBlock) -> None:
        """Append an audio block to the window.

        Parameters
        ----------
        block : ``samples`` [n] or [n, channels] int16/int32/float32/float64 at
            ``sample_rate`` Hz.

        Raises
        ------
        InvalidValueError, InvalidDtypeError, InvalidShapeError, EmptyInputError,
        NonFiniteInputError
        """
        if not isinstance(block, AudioBlock):
            raise InvalidDtypeError(f"expected an AudioBlock, got {type(block).__name__}")
        rate = _check_rate(block.sample_rate)
        mono, clipped = to_mono(block.samples, self.config.clip_level)
        if rate != self._rate:
            self._start_stream(rate)
        self._clip_ring.write(clipped)
        out = mono if self._stream is None else self._stream.resample_chunk(mono)
        self._ring.write(np.asarray(out, dtype=np.float32))

    def window(self) -> np.ndarray:
        """Return the current window: float32 [W] at ``sample_rate``, oldest first, zero-padded
        at the start until it has filled."""
        return self._ring.ordered()

    def quality(self) -> AudioQuality:
        """Return the quality of the received part of the window."""
        clip = self._clip_ring.received() if self._clip_ring else np.zeros(0, bool)
        fill = self._ring.filled / self._ring.data.shape[0]
        return _quality(self._ring.received(), clip, fill, self.config)

    def features(self, check: bool = True) -> np.ndarray:
        """Return the log-mel features of the current window: float32 [1, n_mels, n_frames].

        Before the window has filled (even before any output of the resampler) this returns
        the features of the zero-padded window and never raises; see :meth:`quality`.

        Raises
        ------
        SilentAudioError, ClippedAudioError
            ``check`` is true and the window has filled and is silent / clipped.
        """
        quality = self.quality()
        if check and quality.full:
            quality.check()
        return log_mel_window(self.window(), self.config)

    def __call__(self, block: AudioBlock) -> np.ndarray:
        """Push ``block`` and return :meth:`features`: float32 [1, n_mels, n_frames]."""
        self.push(block)
        return self.features()
