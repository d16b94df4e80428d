"""Writers of tiny data sets in their published formats, for the reader tests.

Each writer is independent of the reader it feeds (no reader code is used to produce files), so
a test compares the reader against values fixed here.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_wav(path: Path, samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, rate, subtype=subtype)
    return path


def tone(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.5,
         channels: int = 1, onset_s: float = 0.0, dur_s: float | None = None) -> np.ndarray:
    """A sine burst (``[n]`` or ``[n, channels]``) that is silent outside [onset, onset+dur)."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    x = amp * np.sin(2 * np.pi * freq * t)
    end = seconds if dur_s is None else onset_s + dur_s
    x[(t < onset_s) | (t >= end)] = 0.0
    return x if channels == 1 else np.repeat(x[:, None], channels, axis=1)


def write_image(path: Path, rgb: np.ndarray, quality: int = 100) -> Path:
    """Write an RGB (or gray) uint8 array; the format follows the suffix (.jpg/.JPEG/.png)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    img = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ext = ".png" if path.suffix.lower() == ".png" else ".jpg"
    ok, buf = cv2.imencode(ext, img, [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else [])
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def flat_image(h: int, w: int, rgb: Sequence[int]) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, np.uint8), (h, w, 3)).copy()


def write_json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def atis_record(x: int, y: int, p: int, ts: int) -> bytes:
    """One 40-bit N-MNIST / N-Caltech101 record, built bit by bit from the format's table:
    bits 39-32 x, 31-24 y, 23 polarity, 22-0 timestamp (us)."""
    assert 0 <= ts < 1 << 23 and p in (0, 1) and 0 <= x < 256 and 0 <= y < 256
    word = (x << 32) | (y << 24) | (p << 23) | ts
    return word.to_bytes(5, "big")


def write_atis_bin(path: Path, records: Iterable[tuple[int, int, int, int]]) -> Path:
    """Write (x, y, p, ts) records; a record with y == 240 is a timestamp-overflow marker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(atis_record(*r) for r in records))
    return path


def voc_xml(filename: str, width: int, height: int,
            objects: Sequence[tuple[str, int, int, int, int]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
        f"<ymax>{y1}</ymax></bndbox></object>" for n, x0, y0, x1, y1 in objects)
    return (f"<annotation><folder>LLVIP</folder><filename>{filename}</filename>"
            f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"{objs}</annotation>")
