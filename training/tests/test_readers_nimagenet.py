"""N-ImageNet reader: extracted_<split>/<wnid>/*.npz, the *_list.txt files, both npz key sets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omnibind_ros.core.types import EventPacket
from omnibind_train.datasets import DatasetFormatError, DatasetLayoutError
from omnibind_train.datasets.nimagenet import NImageNet, read_nimagenet_npz

WNIDS = ("n01440764", "n15075141")
X = np.array([0, 639, 320, 5], np.uint16)
Y = np.array([0, 479, 240, 6], np.uint16)
T = np.array([1_000, 1_250, 2_000, 900_000], np.int64)  # us
P = np.array([True, False, True, False])


def _compressed(path: Path, shift: int = 0) -> None:
    ev = np.zeros(4, dtype=[("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "?")])
    ev["x"], ev["y"], ev["t"], ev["p"] = X, Y, T + shift, P
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, event_data=ev)


@pytest.fixture
def nin_root(tmp_path: Path) -> Path:
    root = tmp_path / "N_Imagenet"
    names = {"train": [(WNIDS[0], "n01440764_10026"), (WNIDS[0], "n01440764_3"),
                       (WNIDS[1], "n15075141_999")],
             "val": [(WNIDS[1], "ILSVRC2012_val_00000001")]}
    for split, items in names.items():
        for k, (w, stem) in enumerate(items):
            _compressed(root / f"extracted_{split}" / w / f"{stem}.npz", shift=k)
        # the authors' lists hold absolute paths of their own machine; listed order kept
        lines = [f"/home/jhkim/Datasets/N_Imagenet/extracted_{split}/{w}/{s}.npz"
                 for w, s in reversed(items)]
        (root / f"{split}_list.txt").write_text("\n".join(lines) + "\n")
    (root / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn15075141 toilet tissue, toilet paper, bathroom tissue\n")
    return root


def test_nimagenet_events_and_labels(nin_root: Path) -> None:
    r = NImageNet(nin_root, "train")
    assert r.label_names == ("tench", "toilet tissue") and r.wnids == WNIDS
    assert len(r) == 3 and list(r.labels) == [1, 0, 0]  # the list's order
    assert r.path(0).name == "n15075141_999.npz"
    pkt, label = r[2]
    assert isinstance(pkt, EventPacket) and label == 0
    assert (pkt.width, pkt.height) == (640, 480)
    assert pkt.x.tolist() == X.tolist() and pkt.y.tolist() == Y.tolist()
    assert pkt.t_ns.tolist() == (T * 1000).tolist() and pkt.polarity.tolist() == P.tolist()
    assert r.preprocessed(2).shape == (3, 160, 160)
    val = NImageNet(nin_root, "val")
    assert len(val) == 1 and val.label(0) == 1
    folder = NImageNet(nin_root, "train", use_list=False)  # listed from the folders instead
    assert [p.name for p in folder._paths] == ["n01440764_10026.npz", "n01440764_3.npz",
                                               "n15075141_999.npz"]


def test_nimagenet_uncompressed_keys_and_unsorted(tmp_path: Path) -> None:
    path = tmp_path / "u.npz"
    np.savez(path, x_pos=X[::-1], y_pos=Y[::-1], timestamp=T[::-1],
             polarity=np.where(P[::-1], 1, -1).astype(np.int8))
    pkt = read_nimagenet_npz(path)
    assert pkt.t_ns.tolist() == (T * 1000).tolist()  # put in time order
    assert pkt.x.tolist() == X.tolist() and pkt.polarity.tolist() == P.tolist()
    np.savez(tmp_path / "bad.npz", events=np.zeros((3, 4)))
    with pytest.raises(DatasetFormatError, match="expected 'event_data'"):
        read_nimagenet_npz(tmp_path / "bad.npz")


def test_nimagenet_layout_errors(tmp_path: Path, nin_root: Path) -> None:
    with pytest.raises(DatasetLayoutError, match=r"N-ImageNet root .* lacks extracted_test/"):
        NImageNet(nin_root, "test")
    (nin_root / "extracted_train" / WNIDS[1] / "n15075141_999.npz").unlink()
    r = NImageNet(nin_root, "train")
    with pytest.raises(DatasetLayoutError, match="n15075141_999.npz is missing"):
        r[0]
    (nin_root / "train_list.txt").write_text("/elsewhere/extracted_val/n01440764/a.npz\n")
    with pytest.raises(DatasetFormatError, match="is not under extracted_train/"):
        NImageNet(nin_root, "train")
