"""The preview contact sheet is written as a PNG with one row per sample."""
from __future__ import annotations

import numpy as np

from omnibind_ros.core.types import EventPacket
from omnibind_ros.sim.preview import event_frame_rgb, log_mel, write_preview


def test_write_preview_png(tmp_path) -> None:
    out = write_preview(tmp_path / "sub" / "preview.png", n_samples=2, seed=5)
    assert out == tmp_path / "sub" / "preview.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    import cv2

    img = cv2.imread(str(out))
    assert img is not None and img.shape[1] > 1.5 * img.shape[0]  # wide: 7 columns, 2 rows


def test_event_frame_colours_polarity() -> None:
    pk = EventPacket(np.array([0, 1], np.uint16), np.array([0, 0], np.uint16),
                     np.array([0, 1], np.int64), np.array([True, False]), 2, 1)
    rgb = event_frame_rgb(pk)
    assert rgb[0, 0, 0] > rgb[0, 0, 2]  # ON is red
    assert rgb[0, 1, 2] > rgb[0, 1, 0]  # OFF is blue


def test_log_mel_finds_the_tone() -> None:
    sr = 16000
    t = np.arange(sr) / sr
    low, high = log_mel(np.sin(2 * np.pi * 300 * t), sr), log_mel(np.sin(2 * np.pi * 4000 * t), sr)
    assert low.shape[0] == 64 and low.mean(axis=1).argmax() < high.mean(axis=1).argmax()
