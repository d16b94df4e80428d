"""N-Caltech101 (Orchard et al. 2015): Caltech-101 recorded by an ATIS event camera on saccades.

Published layout (the ``Caltech101.zip`` of the N-Caltech101 release, extracted)::

    <root>/Caltech101/<category>/image_0001.bin ...

Binary format (N-MNIST / N-Caltech101 "binary format", Orchard's ``Read_Ndataset.m``): a file is
a flat sequence of 40-bit (5-byte) records, one per event, most significant byte first::

    byte 0      bits 39-32   x address (pixels, 0-based)
    byte 1      bits 31-24   y address (pixels, 0-based)
    byte 2 b7   bit  23      polarity: 1 = ON (brightness increase), 0 = OFF
    byte 2 b6-0 bits 22-16 \\
    byte 3      bits 15-8   > timestamp, microseconds, 23 bits
    byte 4      bits 7-0   /

A record whose y address is 240 is not an event but a timestamp-overflow marker: every record
after it has ``overflow_increment_us`` added to its timestamp (cumulatively, one increment per
marker), and the marker is dropped. The increment is 2**13 us, the value of the dataset
authors' reference readers (``Read_Ndataset.m`` and the Python ``eventvision`` reader; tonic uses
the same) -- not 2**23, the range of the 23-bit field; it is a parameter
(``overflow_increment_us``) should a copy of the data need the other. Decoding is vectorised: one
``reshape(-1, 5)`` and a cumulative marker count. Recordings last ~300 ms (< 2**23 us), so real
N-Caltech101 files are not expected to hold markers at all.

Categories: the folder names sorted by code point. N-Caltech101 has no ``Faces`` folder (only
``Faces_easy``) and ships ``BACKGROUND_Google``, which is kept by default: 100 objects +
background are the 101 classes of seed 000's Table 1. :attr:`label_names` are the folder names.
Split: the seeded per-class protocol of :mod:`.caltech101` (30 train per class, rest test, seed
0), so ``Caltech101/<c>/image_0007.bin`` lands in the same split as Caltech-101's
``101_ObjectCategories/<c>/image_0007.jpg`` (the pairs used for image<->event retrieval).

Raw samples are :class:`~omnibind_ros.core.types.EventPacket`: ``t_ns`` is the recorded time in
ns (from the recording's start), polarity True = ON. Frame size: the saccades sweep images
scaled into ~240 x 180 of the 304 x 240 ATIS, so the packet is 240 x 180 pixels, grown to
``max + 1`` of a sample's addresses when an event lies outside. No preprocessing override is
set: the core event preprocessing keeps its configured window (the runtime default is the
packet's last 50 ms, i.e. part of the third saccade of a ~300 ms recording); a training config
may choose ``window="count"`` or a longer ``window_ms`` in the bundle's event config instead.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from omnibind_ros.core.types import EventPacket

from .base import DatasetFormatError, DatasetLayoutError, DatasetReader
from .caltech101 import select_split

__all__ = ["FRAME_SIZE", "OVERFLOW_INCREMENT_US", "OVERFLOW_Y", "NCaltech101", "decode_atis40",
           "read_atis_bin"]

#: y address of the timestamp-overflow marker records.
OVERFLOW_Y = 240
#: Microseconds added after each overflow marker (the reference readers' value).
OVERFLOW_INCREMENT_US = 1 << 13
#: Nominal (width, height) of N-Caltech101 packets.
FRAME_SIZE = (240, 180)


def decode_atis40(data: bytes | np.ndarray, overflow_increment_us: int = OVERFLOW_INCREMENT_US
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decode 40-bit ATIS records (module docstring) without a per-event loop.

    Returns
    -------
    x, y : uint16 [N]; t_us : int64 [N] (overflow markers applied); polarity : bool [N].

    Raises
    ------
    DatasetFormatError
        The byte count is not a multiple of 5.
    """
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    if raw.size % 5:
        raise DatasetFormatError(f"{raw.size} bytes is not a whole number of 5-byte events")
    rec = raw.reshape(-1, 5)
    x, y = rec[:, 0], rec[:, 1]
    polarity = (rec[:, 2] >> 7).astype(bool)
    t = ((rec[:, 2].astype(np.int64) & 0x7F) << 16) | (rec[:, 3].astype(np.int64) << 8) | rec[:, 4]
    marker = y == OVERFLOW_Y
    if marker.any():
        t = t + int(overflow_increment_us) * np.cumsum(marker, dtype=np.int64)
        keep = ~marker
        x, y, t, polarity = x[keep], y[keep], t[keep], polarity[keep]
    return x.astype(np.uint16), y.astype(np.uint16), t, polarity


def read_atis_bin(path: str | Path, frame_size: tuple[int, int] = FRAME_SIZE,
                  overflow_increment_us: int = OVERFLOW_INCREMENT_US) -> EventPacket:
    """An N-MNIST / N-Caltech101 ``.bin`` file as an :class:`EventPacket` (times in ns; events
    put in time order by a stable sort should a file not be)."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetLayoutError(f"{path} is missing") from None
    try:
        x, y, t_us, p = decode_atis40(data, overflow_increment_us)
    except DatasetFormatError as exc:
        raise DatasetFormatError(f"{path}: {exc}") from None
    if t_us.size > 1 and np.any(np.diff(t_us) < 0):
        order = np.argsort(t_us, kind="stable")
        x, y, t_us, p = x[order], y[order], t_us[order], p[order]
    width = max(frame_size[0], int(x.max()) + 1 if x.size else 0)
    height = max(frame_size[1], int(y.max()) + 1 if y.size else 0)
    return EventPacket(x=x, y=y, t_ns=t_us * 1000, polarity=p, width=width, height=height)


class NCaltech101(DatasetReader):
    """N-Caltech101 event recordings of one split.

    Parameters
    ----------
    root : folder holding ``Caltech101/`` (the extracted release).
    split : "train", "test" or "all".
    train_per_class, test_per_class, seed : the split protocol (see :mod:`.caltech101`).
    include_background : keep ``BACKGROUND_Google`` as a class (default True: 101 classes).
    frame_size : nominal (width, height) of the packets.
    overflow_increment_us : microseconds added after each overflow marker.
    """

    name = "N-Caltech101"
    modality = "event"

    def __init__(self, root: str | Path, split: str = "train", *, train_per_class: int = 30,
                 test_per_class: int | None = None, seed: int = 0,
                 include_background: bool = True,
                 frame_size: tuple[int, int] = FRAME_SIZE,
                 overflow_increment_us: int = OVERFLOW_INCREMENT_US) -> None:
        super().__init__(root)
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        self.split, self.seed, self.frame_size = split, seed, tuple(frame_size)
        self.overflow_increment_us = int(overflow_increment_us)
        folder = self.root / "Caltech101"
        if not folder.is_dir():
            raise DatasetLayoutError(f"{self.name} root {self.root} lacks Caltech101/")
        select_split(self, folder, (".bin",), include_background=include_background,
                     split=split, train_per_class=train_per_class,
                     test_per_class=test_per_class, seed=seed)

    def load(self, i: int) -> EventPacket:
        return read_atis_bin(self.path(i), self.frame_size, self.overflow_increment_us)

    def pair_key(self, i: int) -> str:
        """``<category>/<stem>``: the key of the Caltech-101 image this recording shows."""
        p = self.path(i)
        return f"{p.parent.name}/{p.stem}"
