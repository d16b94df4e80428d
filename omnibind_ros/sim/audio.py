"""Impact sounds by modal synthesis: what a microphone hears when the object is tapped.

The material sets the partials (ratios to the fundamental) and how long they ring; the size sets
the pitch (a plate's or bar's modal frequencies scale as 1/size); the strike adds a short contact
noise whose length and brightness depend on hardness. So audio separates *materials* (and sizes a
little), not shapes: by design it cannot name the class on its own.

Every random draw comes from the caller's generator, in a fixed order, so a sample's sound is
reproducible from its seed.
"""
from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

from omnibind_ros.sim.catalog import Material

#: Fraction of the clip in which the strike happens (a recording starts a little before the tap).
ONSET_MAX_FRACTION = 0.2
#: Strike strength range, as a fraction of the loudest strike (people tap softly or firmly).
STRIKE_RANGE = (0.35, 1.0)
#: Peak level of the loudest strike before noise; leaves headroom so clipping stays rare.
PEAK_LEVEL = 0.8
#: Relative jitter (std) of each modal frequency: real objects are never exactly the model.
FREQ_JITTER = 0.015
#: Relative jitter (half-range) of each mode's decay time.
DECAY_JITTER = 0.15
#: Highest mode kept, as a fraction of the sample rate (modes above it would alias).
MAX_MODE_FRACTION = 0.45
#: Level of the contact burst relative to the modal peak.
BURST_LEVEL = 0.35
#: Above this magnitude the output is compressed smoothly so it never reaches 1.0.
SOFT_CLIP_KNEE = 0.9

_LN_1000 = np.log(1000.0)  # a 60 dB decay is a factor of 1000 in amplitude


def impact_sound(material: Material, size_m: float, rng: np.random.Generator, *,
                 sample_rate: int = 16000, duration_s: float = 1.0,
                 noise_level: float = 0.01) -> np.ndarray:
    """Synthesize the sound of one tap on an object of ``material`` and largest extent ``size_m``.

    Parameters
    ----------
    material : the object's material (``modal_ratios``, ``decay_s``, ``base_freq_hz``,
        ``hardness`` are used).
    size_m : largest extent of the object in metres; the fundamental is
        ``base_freq_hz * 0.1 / size_m``.
    rng : source of every random draw (onset, strike strength, per-mode jitter, noise).
    sample_rate : samples per second.
    duration_s : clip length in seconds.
    noise_level : standard deviation of the pink background noise (full scale = 1).

    Returns
    -------
    np.ndarray
        float32 ``[round(sample_rate * duration_s)]`` mono samples, strictly inside (-1, 1).
    """
    n = int(round(sample_rate * duration_s))
    if n <= 0 or sample_rate <= 0:
        raise ValueError(f"need a positive clip length, got {sample_rate=} {duration_s=}")
    if size_m <= 0:
        raise ValueError(f"size_m must be positive, got {size_m}")
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")

    onset = int(rng.uniform(0.0, ONSET_MAX_FRACTION) * n)
    strength = rng.uniform(*STRIKE_RANGE)
    t = np.arange(n - onset) / sample_rate
    ring = _modal_ring(material, size_m, t, rng, sample_rate)
    ring *= _attack(material.hardness, t)
    ring *= PEAK_LEVEL * strength / max(float(np.max(np.abs(ring))), 1e-9)
    burst = _contact_burst(material.hardness, rng, sample_rate)[: n - onset]
    ring[: burst.size] += BURST_LEVEL * PEAK_LEVEL * strength * burst

    out = np.zeros(n)
    out[onset:] = ring
    out += noise_level * pink_noise(n, rng, sample_rate)
    # tanh saturates to exactly 1.0 in floating point for huge inputs; keep strictly inside.
    return np.clip(soft_clip(out), -0.9999, 0.9999).astype(np.float32)


def modal_frequencies(material: Material, size_m: float) -> np.ndarray:
    """Nominal (jitter-free) modal frequencies in Hz, ``[len(material.modal_ratios)]``."""
    f0 = material.base_freq_hz * 0.1 / size_m
    return f0 * np.asarray(material.modal_ratios, dtype=np.float64)


def _modal_ring(material: Material, size_m: float, t: np.ndarray, rng: np.random.Generator,
                sample_rate: int) -> np.ndarray:
    """Sum of exponentially damped sinusoids, one per mode, ``[len(t)]``.

    Mode k rings for ``decay_s / ratio_k`` (constant-Q loss: higher modes die faster, the
    usual loss-factor model of struck solids); amplitudes fall as ``ratio**-0.7``. Both
    choices are ours, picked so that partials stay audible but the fundamental dominates.
    """
    ratios = np.asarray(material.modal_ratios, dtype=np.float64)
    # Draw every jitter up front, in a fixed count, so later draws do not depend on filtering.
    f_jit = 1.0 + FREQ_JITTER * rng.standard_normal(ratios.size)
    d_jit = 1.0 + rng.uniform(-DECAY_JITTER, DECAY_JITTER, ratios.size)
    a_jit = rng.uniform(0.6, 1.0, ratios.size)
    freqs = modal_frequencies(material, size_m) * f_jit
    t60 = material.decay_s * d_jit / ratios
    amps = a_jit * ratios ** -0.7
    keep = freqs < MAX_MODE_FRACTION * sample_rate
    if not keep.any():  # a tiny object: its fundamental is above the band; keep the lowest
        keep = freqs == freqs.min()
        freqs = np.minimum(freqs, MAX_MODE_FRACTION * sample_rate)
    ring = np.zeros_like(t)
    for f, d, a in zip(freqs[keep], t60[keep], amps[keep], strict=True):
        ring += a * np.exp(-_LN_1000 * t / d) * np.sin(2.0 * np.pi * f * t)
    return ring


def _attack(hardness: float, t: np.ndarray) -> np.ndarray:
    """Rise of the ring: ~0.2 ms for hard materials, up to ~2 ms for soft ones."""
    tau = 2e-4 + 1.8e-3 * (1.0 - float(np.clip(hardness, 0.0, 1.0)))
    return 1.0 - np.exp(-t / tau)


def _contact_burst(hardness: float, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Short low-passed noise burst of the contact itself, peak-normalised to 1.

    A hard contact is short and bright (0.5 ms, ~7 kHz corner), a soft one longer and duller
    (up to 4.5 ms, ~1 kHz corner): these ranges are our choice, typical of tap recordings.
    """
    h = float(np.clip(hardness, 0.0, 1.0))
    length = max(int((0.5e-3 + 4e-3 * (1.0 - h)) * sample_rate), 2)
    noise = rng.standard_normal(length) * np.hanning(length + 2)[1:-1]
    corner_hz = min(1000.0 + 6000.0 * h, MAX_MODE_FRACTION * sample_rate)
    pole = np.exp(-2.0 * np.pi * corner_hz / sample_rate)
    burst = lfilter([1.0 - pole], [1.0, -pole], noise)
    return burst / max(float(np.max(np.abs(burst))), 1e-9)


def pink_noise(n: int, rng: np.random.Generator, sample_rate: int = 16000,
               highpass_hz: float = 20.0) -> np.ndarray:
    """Unit-variance 1/f (pink) noise, ``[n]``: the spectrum of room and electronics hiss.

    Content below ``highpass_hz`` is removed, as a microphone's high-pass would (and so the
    1/f spectrum does not blow up towards DC).
    """
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sample_rate)
    spectrum = np.where(f >= highpass_hz, spectrum / np.sqrt(np.maximum(f, 1e-9)), 0.0)
    noise = np.fft.irfft(spectrum, n)
    return noise / max(float(np.std(noise)), 1e-12)


def soft_clip(x: np.ndarray, knee: float = SOFT_CLIP_KNEE) -> np.ndarray:
    """Identity below ``knee``; above it, a tanh knee that approaches but never reaches 1."""
    mag = np.abs(x)
    over = mag > knee
    if not over.any():
        return x
    y = x.copy()
    y[over] = np.sign(x[over]) * (knee + (1.0 - knee) * np.tanh((mag[over] - knee) / (1 - knee)))
    return y
