"""A contact sheet of simulated samples: one row per sample, one column per modality.

For eyeballing the simulator (``omnibind_ros.sim.cli`` calls :func:`write_preview`): RGB, thermal
in degrees Celsius (colormap "inferno"), an event frame (ON red / OFF blue), the tactile image
beside its reference, the audio waveform over its log-mel spectrogram, the LiDAR points in 3-D
coloured by height, and the caption with the ground truth.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from omnibind_ros.core.types import EventPacket, ThermalFrame
from omnibind_ros.sim.world import World, WorldConfig

COLUMNS = ("RGB", "thermal", "events", "tactile (contact | reference)", "audio", "LiDAR",
           "caption")


def event_frame_rgb(packet: EventPacket) -> np.ndarray:
    """Events accumulated on white: ON red, OFF blue, saturating at 3 events per pixel.

    Returns
    -------
    np.ndarray : float32 [H, W, 3] in 0..1.
    """
    h, w = packet.height, packet.width
    on = np.zeros((h, w), np.float32)
    off = np.zeros((h, w), np.float32)
    pol = packet.polarity.astype(bool)
    np.add.at(on, (packet.y[pol].astype(int), packet.x[pol].astype(int)), 1.0)
    np.add.at(off, (packet.y[~pol].astype(int), packet.x[~pol].astype(int)), 1.0)
    on, off = np.clip(on / 3.0, 0, 1), np.clip(off / 3.0, 0, 1)
    # white -> red for ON, white -> blue for OFF
    return np.stack([1.0 - off, 1.0 - np.maximum(on, off), 1.0 - on], axis=-1)


def thermal_celsius(frame: ThermalFrame) -> np.ndarray:
    """Degrees Celsius [H, W] of a mono16 radiometric frame."""
    return frame.data.astype(np.float32) * frame.kelvin_per_count - 273.15


def log_mel(x: np.ndarray, sample_rate: int, n_mels: int = 64, n_fft: int = 512,
            hop: int = 160) -> np.ndarray:
    """Log-mel power spectrogram [n_mels, frames] in dB (HTK mel scale, Hann window)."""
    from scipy.signal import stft

    _, _, z = stft(x, sample_rate, window="hann", nperseg=n_fft, noverlap=n_fft - hop,
                   boundary=None, padded=False)
    power = np.abs(z) ** 2
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    imel = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = imel(np.linspace(mel(0.0), mel(sample_rate / 2.0), n_mels + 2))
    freqs = np.linspace(0.0, sample_rate / 2.0, power.shape[0])
    lo, ce, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fb = np.clip(np.minimum((freqs - lo) / (ce - lo), (hi - freqs) / (hi - ce)), 0.0, None)
    return 10.0 * np.log10(fb @ power + 1e-10)


def write_preview(path: Path, n_samples: int = 4, seed: int = 0,
                  config: WorldConfig | None = None) -> Path:
    """Render ``n_samples`` full samples (seeds ``seed``, ``seed + 1``, ...) into a PNG grid.

    Parameters
    ----------
    path : output PNG file (parent folders are created).
    n_samples : rows of the grid.
    seed : seed of the first row.
    config : world configuration (default :class:`WorldConfig`).

    Returns
    -------
    Path : ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    world = World(config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = plt.figure(figsize=(25, 3.3 * n_samples), dpi=80)
    outer = fig.add_gridspec(n_samples, len(COLUMNS), wspace=0.25, hspace=0.35,
                             width_ratios=[1, 1.25, 1, 1.6, 1.5, 1.3, 1.4])
    for row in range(n_samples):
        s = world.sample(seed + row)
        _row(fig, outer, row, s, plt)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def _row(fig, outer, row: int, s, plt) -> None:
    title = dict(fontsize=9)
    ax = fig.add_subplot(outer[row, 0])
    ax.imshow(s.image)
    ax.set_title(f"seed {s.seed}: {s.class_name}", **title)
    ax.axis("off")

    ax = fig.add_subplot(outer[row, 1])
    c = thermal_celsius(s.thermal)
    im = ax.imshow(c, cmap="inferno")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="°C")
    ax.set_title(f"thermal {c.shape[1]}x{c.shape[0]} ({c.min():.1f}..{c.max():.1f} °C)", **title)
    ax.axis("off")

    ax = fig.add_subplot(outer[row, 2])
    ax.imshow(event_frame_rgb(s.events))
    win_ms = (s.events.t_ns[-1] / 1e6) if len(s.events) else 0.0
    ax.set_title(f"events: {len(s.events)} in {win_ms:.0f} ms", **title)
    ax.axis("off")

    ax = fig.add_subplot(outer[row, 3])
    ax.imshow(np.concatenate([s.tactile.image, np.full((s.tactile.image.shape[0], 4, 3), 255,
                                                       np.uint8), s.tactile.reference], axis=1))
    ax.set_title("tactile: contact | reference", **title)
    ax.axis("off")

    inner = outer[row, 4].subgridspec(2, 1, height_ratios=[1, 1.6], hspace=0.08)
    x = s.audio.samples.reshape(-1)
    sr = s.audio.sample_rate
    ax = fig.add_subplot(inner[0])
    ax.plot(np.arange(x.size) / sr, x, lw=0.5, color="k")
    ax.set_xlim(0, x.size / sr)
    ax.set_ylim(-1, 1)
    ax.set_xticks([])
    ax.set_title(f"audio {sr} Hz: waveform / log-mel", **title)
    ax = fig.add_subplot(inner[1])
    ax.imshow(log_mel(x, sr), origin="lower", aspect="auto", cmap="magma",
              extent=(0, x.size / sr, 0, 64))
    ax.set_xlabel("s", fontsize=8)
    ax.set_ylabel("mel bin", fontsize=8)
    ax.tick_params(labelsize=7)

    ax = fig.add_subplot(outer[row, 5], projection="3d")
    p = s.points
    ax.scatter(p[:, 0], p[:, 1], p[:, 2], c=p[:, 2], cmap="viridis", s=2, depthshade=False)
    ax.view_init(elev=22, azim=-150)
    ctr = np.median(p, axis=0)
    half = max(float(np.ptp(p, axis=0).max()) / 2, 0.05)
    ax.set(xlim=(ctr[0] - half, ctr[0] + half), ylim=(ctr[1] - half, ctr[1] + half),
           zlim=(p[:, 2].min(), p[:, 2].min() + 2 * half))
    ax.tick_params(labelsize=6)
    ax.set_title(f"LiDAR {len(p)} pts (x fwd, z up; colour = z)", **title)

    ax = fig.add_subplot(outer[row, 6])
    ax.axis("off")
    nz = s.nuisance
    text = "\n".join(textwrap.wrap(f'"{s.caption}"', 34)) + (
        f"\n\ntruth: {s.class_name}\nsize {nz['size_m'] * 100:.1f} cm, yaw {nz['yaw_deg']:.0f}°"
        f"\nambient {nz['ambient_c']:.1f} °C, object {nz['apparent_object_c']:.1f} °C (app.)"
        f"\npress {nz['tactile_press_mm']:.2f} mm, LiDAR at {nz['lidar_distance_m']:.2f} m")
    ax.text(0.0, 0.95, text, va="top", ha="left", fontsize=10, family="monospace",
            transform=ax.transAxes)
