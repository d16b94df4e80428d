"""Microphone degradations on :class:`~omnibind_ros.core.types.AudioBlock`.

Samples are processed as float in [-1, 1] (int16 scaled by 1/32768) and converted back to the
block's dtype and shape (mono ``[n]`` or ``[n, channels]``, each channel alike).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy.signal import butter, sosfilt

from omnibind_ros.core.types import AudioBlock
from omnibind_ros.sim.degrade.registry import degradation

#: SNR of the wind noise at severity 0 and 1 (dB): from a breeze to a gale on a bare capsule.
WIND_SNR_DB = (20.0, -10.0)
#: Reference level for the SNR of a near-silent block (-40 dBFS RMS): wind noise is loud in
#: absolute terms, not only relative to whatever the microphone hears at the moment.
SNR_FLOOR_RMS = 0.01


def _to_float(block: AudioBlock) -> np.ndarray:
    samples = np.asarray(block.samples)
    if samples.dtype.kind in "iu":
        return samples.astype(np.float64) / 32768.0
    return samples.astype(np.float64)


def _from_float(block: AudioBlock, samples: np.ndarray) -> AudioBlock:
    dtype = np.asarray(block.samples).dtype
    if dtype.kind in "iu":
        out = np.clip(np.round(samples * 32768.0), -32768, 32767).astype(dtype)
    else:
        out = np.clip(samples, -1.0, 1.0).astype(dtype)
    return dataclasses.replace(block, samples=out)


@degradation("audio", "wind")
def wind(block: AudioBlock, severity: float, rng: np.random.Generator, **_: object
         ) -> AudioBlock:
    """Wind buffeting the capsule: turbulent pressure is low-frequency (white noise through a
    4th-order 150 Hz low-pass) and comes in gusts (an envelope of 1-3 Hz), mixed in at an SNR
    falling linearly in dB from 20 dB at severity 0 to -10 dB at 1 (signal power measured
    on the block, with a -40 dBFS floor)."""
    x = _to_float(block)
    n, rate = x.shape[0], float(block.sample_rate)
    sos = butter(4, min(150.0, 0.45 * rate), fs=rate, output="sos")
    rumble = sosfilt(sos, rng.standard_normal(n + 2048))[2048:]  # past the filter's start-up
    t = np.arange(n) / rate
    gusts = 1.0 + 0.6 * np.sin(2 * np.pi * rng.uniform(1.0, 3.0) * t + rng.uniform(0, 2 * np.pi))
    noise = rumble * gusts
    signal_rms = max(float(np.sqrt(np.mean(x ** 2))), SNR_FLOOR_RMS)
    snr_db = WIND_SNR_DB[0] + (WIND_SNR_DB[1] - WIND_SNR_DB[0]) * severity
    noise *= signal_rms / max(float(np.sqrt(np.mean(noise ** 2))), 1e-12) / 10 ** (snr_db / 20)
    return _from_float(block, x + (noise[:, None] if x.ndim == 2 else noise))


@degradation("audio", "clipping")
def clipping(block: AudioBlock, severity: float, rng: np.random.Generator, **_: object
             ) -> AudioBlock:
    """The preamp gain is too high for the sound: up to +40 dB of gain (a loud, close impact
    on a gain set for speech), then the ADC hard-clips at full scale."""
    gain_db = severity * rng.uniform(30.0, 40.0)
    return _from_float(block, np.clip(_to_float(block) * 10 ** (gain_db / 20), -1.0, 1.0))


@degradation("audio", "dropout")
def dropout(block: AudioBlock, severity: float, rng: np.random.Generator, **_: object
            ) -> AudioBlock:
    """Lost packets or a loose connector: gaps of 5-50 ms of digital silence (zeros) at random
    places, covering about 60 % of the block at severity 1."""
    x = _to_float(block)
    n, rate = x.shape[0], float(block.sample_rate)
    target = int(0.6 * severity * n)
    zeroed = np.zeros(n, bool)
    while zeroed.sum() < target:
        length = max(int(rng.uniform(0.005, 0.05) * rate), 1)
        start = int(rng.integers(0, max(n - length, 0) + 1))
        zeroed[start:start + length] = True
    x = x.copy()
    x[zeroed] = 0.0
    return _from_float(block, x)
