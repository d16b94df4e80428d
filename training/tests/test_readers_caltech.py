"""Caltech-101 and N-Caltech101 readers: folder layouts, the seeded split, 40-bit ATIS events."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _reader_fixtures import atis_record, flat_image, write_atis_bin, write_image

from omnibind_ros.core.types import EventPacket
from omnibind_train.datasets import DatasetFormatError, DatasetLayoutError
from omnibind_train.datasets.caltech101 import Caltech101
from omnibind_train.datasets.ncaltech101 import NCaltech101, decode_atis40, read_atis_bin

CLASSES = {"Faces_easy": 5, "accordion": 4, "yin_yang": 3}

# (x, y, p, ts_us); y == 240 rows are overflow markers
EVENTS = [(0, 0, 1, 5), (233, 173, 0, 8000), (17, 42, 1, 8191), (0, 240, 0, 0),
          (5, 6, 0, 3), (0, 240, 1, 77), (7, 8, 1, 1)]
# expected after decoding: markers dropped, +2**13 us per marker seen so far
EXPECTED = [(0, 0, True, 5), (233, 173, False, 8000), (17, 42, True, 8191),
            (5, 6, False, 3 + 8192), (7, 8, True, 1 + 2 * 8192)]


def test_atis_record_bit_layout() -> None:
    rec = atis_record(0xAB, 0x12, 1, 0x7F3456)
    assert rec == bytes([0xAB, 0x12, 0x80 | 0x7F, 0x34, 0x56])
    x, y, t, p = decode_atis40(rec)
    assert (int(x[0]), int(y[0]), int(t[0]), bool(p[0])) == (0xAB, 0x12, 0x7F3456, True)


def test_ncaltech_bin_decoding_with_overflow(tmp_path: Path) -> None:
    path = write_atis_bin(tmp_path / "image_0001.bin", EVENTS)
    assert path.stat().st_size == 5 * len(EVENTS)
    pkt = read_atis_bin(path)
    assert isinstance(pkt, EventPacket) and len(pkt) == len(EXPECTED)
    assert pkt.x.tolist() == [e[0] for e in EXPECTED]
    assert pkt.y.tolist() == [e[1] for e in EXPECTED]
    assert pkt.polarity.tolist() == [e[2] for e in EXPECTED]
    assert pkt.t_ns.tolist() == [1000 * e[3] for e in EXPECTED]
    assert (pkt.width, pkt.height) == (240, 180)
    x, y, t, p = decode_atis40(path.read_bytes())
    assert t.tolist() == [e[3] for e in EXPECTED] and t.dtype == np.int64
    _, _, t23, _ = decode_atis40(path.read_bytes(), overflow_increment_us=1 << 23)
    assert t23.tolist()[3:] == [3 + (1 << 23), 1 + (2 << 23)]
    # the 23-bit maximum, and a file out of time order (EventPacket needs ascending times)
    late = write_atis_bin(tmp_path / "late.bin", [(1, 1, 1, (1 << 23) - 1), (2, 2, 0, 10)])
    pkt = read_atis_bin(late)
    assert pkt.t_ns.tolist() == [10_000, 1000 * ((1 << 23) - 1)] and pkt.x.tolist() == [2, 1]


def test_ncaltech_bin_errors_and_large_addresses(tmp_path: Path) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00" * 7)
    with pytest.raises(DatasetFormatError, match="bad.bin: 7 bytes is not a whole number"):
        read_atis_bin(bad)
    big = write_atis_bin(tmp_path / "big.bin", [(250, 200, 1, 10), (1, 1, 0, 11)])
    pkt = read_atis_bin(big)
    assert (pkt.width, pkt.height) == (251, 201)  # grown to hold every address


def _caltech_tree(root: Path, ext: str) -> None:
    for cat, n in {**CLASSES, "BACKGROUND_Google": 2}.items():
        for k in range(1, n + 1):
            p = root / cat / f"image_{k:04d}{ext}"
            if ext == ".jpg":
                write_image(p, flat_image(6, 9, (k * 20, 5, 250)))
            else:
                write_atis_bin(p, [(k, 2, 1, 10), (3, k, 0, 20 + k)])


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    cal = tmp_path / "caltech-101"
    _caltech_tree(cal / "101_ObjectCategories", ".jpg")
    ncal = tmp_path / "N-Caltech101"
    _caltech_tree(ncal / "Caltech101", ".bin")
    return cal, ncal


def test_caltech101_classes_split_and_images(roots: tuple[Path, Path]) -> None:
    cal, _ = roots
    r = Caltech101(cal, "train", train_per_class=2)
    assert r.label_names == ("Faces_easy", "accordion", "yin_yang")  # background left out
    assert len(r) == 6 and list(r.labels) == [0, 0, 1, 1, 2, 2]
    test = Caltech101(cal, "test", train_per_class=2)
    assert len(test) == (5 - 2) + (4 - 2) + (3 - 2)
    for cat in CLASSES:
        tr = {p.name for p in r._paths if p.parent.name == cat}
        te = {p.name for p in test._paths if p.parent.name == cat}
        assert not tr & te and len(tr | te) == CLASSES[cat]
    capped = Caltech101(cal, "test", train_per_class=2, test_per_class=1)
    assert len(capped) == 3
    again = Caltech101(cal, "train", train_per_class=2)
    assert again._paths == r._paths  # seeded: the same split every time
    seeds = {tuple(Caltech101(cal, "train", train_per_class=2, seed=s)._paths) for s in range(6)}
    assert len(seeds) > 1  # ... and the seed changes it
    image, label = r[0]
    assert image.shape == (6, 9, 3) and image.dtype == np.uint8 and label == 0
    assert len(Caltech101(cal, "all", include_background=True).label_names) == 4
    assert Caltech101(cal, "all").preprocessed(0).shape == (3, 160, 160)


def test_ncaltech101_matches_caltech_split(roots: tuple[Path, Path]) -> None:
    cal, ncal = roots
    ev = NCaltech101(ncal, "train", train_per_class=2)
    assert ev.label_names == ("BACKGROUND_Google", "Faces_easy", "accordion", "yin_yang")
    no_bg = NCaltech101(ncal, "train", train_per_class=2, include_background=False)
    im = Caltech101(cal, "train", train_per_class=2)
    assert [no_bg.pair_key(i) for i in range(len(no_bg))] == [
        f"{p.parent.name}/{p.stem}" for p in im._paths]
    pkt, label = no_bg[0]
    k = int(no_bg.path(0).stem.split("_")[1])
    assert label == 0 and pkt.x.tolist() == [k, 3] and pkt.y.tolist() == [2, k]
    assert pkt.t_ns.tolist() == [10_000, (20 + k) * 1000]
    assert pkt.polarity.tolist() == [True, False]
    x = no_bg.preprocessed(0)
    assert x is not None and x.shape == (3, 160, 160)


def test_caltech_layout_errors(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    with pytest.raises(DatasetLayoutError,
                       match=r"Caltech-101 root .*c lacks 101_ObjectCategories/"):
        Caltech101(tmp_path / "c")
    with pytest.raises(DatasetLayoutError, match=r"N-Caltech101 root .*c lacks Caltech101/"):
        NCaltech101(tmp_path / "c")
    with pytest.raises(ValueError, match="split must be"):
        Caltech101(tmp_path / "c", "val")
