"""ImageNet-1K reader: train synset folders, the three val layouts, the synset mapping."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _reader_fixtures import flat_image, write_csv, write_image

from omnibind_train.datasets import DatasetLayoutError, open_dataset
from omnibind_train.datasets.imagenet import ImageNet1K

# wnid, mapping line words, ILSVRC2012_ID (devkit order is not the sorted order), colour
SYN = [("n01440764", "tench, Tinca tinca", 449, (200, 10, 10)),
       ("n02119789", "kit fox, Vulpes macrotis", 1, (10, 200, 10)),
       ("n03126707", "crane", 517, (10, 10, 200))]
VAL = {1: 2, 2: 0, 3: 1, 4: 2}  # val image number -> index into SYN


def _mapping(root: Path) -> None:
    # published in sorted wnid order; written shuffled to check the reader sorts
    lines = [f"{w} {words}" for w, words, _, _ in (SYN[2], SYN[0], SYN[1])]
    (root / "LOC_synset_mapping.txt").write_text("\n".join(lines) + "\n")


def _train(base: Path) -> None:
    for w, _, _, rgb in SYN:
        for n in (10026, 9):
            write_image(base / "train" / w / f"{w}_{n}.JPEG", flat_image(12, 16, rgb))


def _flat_val(base: Path) -> None:
    for n, k in VAL.items():
        write_image(base / "val" / f"ILSVRC2012_val_{n:08d}.JPEG", flat_image(8, 8, SYN[k][3]))


@pytest.fixture
def in_root(tmp_path: Path) -> Path:
    root = tmp_path / "imagenet"
    _train(root)
    _flat_val(root)
    _mapping(root)
    write_csv(root / "LOC_val_solution.csv", ("ImageId", "PredictionString"),
              [(f"ILSVRC2012_val_{n:08d}", f"{SYN[k][0]} 10 20 30 40 {SYN[k][0]} 1 2 3 4 ")
               for n, k in VAL.items()])
    return root


def test_imagenet_train_folders_and_mapping(in_root: Path) -> None:
    r = ImageNet1K(in_root, "train")
    assert r.wnids == ("n01440764", "n02119789", "n03126707")
    assert r.label_names == ("tench", "kit fox", "crane")
    assert r.label_synonyms[1] == ("kit fox", "Vulpes macrotis")
    assert len(r) == 6 and list(r.labels) == [0, 0, 1, 1, 2, 2]
    assert r.path(0).name == "n01440764_10026.JPEG"  # sorted by name within the synset
    image, label = r[3]
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8 and label == 1
    assert np.abs(image.astype(int) - (10, 200, 10)).max() <= 3  # RGB order kept
    x = r.preprocessed(0)
    assert x.shape == (3, 160, 160)


def test_imagenet_flat_val_with_loc_solution(in_root: Path) -> None:
    r = open_dataset("imagenet", in_root, split="val")
    assert len(r) == 4 and list(r.labels) == [2, 0, 1, 2]
    assert r.path(1).name == "ILSVRC2012_val_00000002.JPEG"
    assert np.abs(r[1][0].astype(int) - SYN[0][3]).max() <= 3


def test_imagenet_flat_val_with_devkit(tmp_path: Path) -> None:
    from scipy.io import savemat

    root = tmp_path / "in_devkit"
    _flat_val(root)
    fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"),
              ("num_children", "O"), ("children", "O"), ("wordnet_height", "O"),
              ("num_train_images", "O")]
    syn = np.zeros(len(SYN) + 1, dtype=fields)
    for i, (w, words, sid, _) in enumerate(SYN):
        syn[i] = (sid, w, words, "gloss", 0, np.zeros(0), 0, 1300)
    syn[-1] = (1001, "n00001740", "entity", "root", 3, np.array([1, 449, 517]), 19, 0)
    devkit = root / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    savemat(str(devkit / "meta.mat"), {"synsets": syn})
    ids = [SYN[VAL[n]][2] for n in sorted(VAL)]
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "\n".join(map(str, ids)) + "\n")
    r = ImageNet1K(root, "val")  # no mapping file: names from meta.mat words
    assert r.wnids == ("n01440764", "n02119789", "n03126707")
    assert r.label_names == ("tench", "kit fox", "crane")
    assert list(r.labels) == [2, 0, 1, 2]


def test_imagenet_val_in_synset_folders_and_kaggle_layout(tmp_path: Path) -> None:
    root = tmp_path / "kaggle"
    base = root / "ILSVRC" / "Data" / "CLS-LOC"
    _train(base)
    for n, k in VAL.items():
        write_image(base / "val" / SYN[k][0] / f"ILSVRC2012_val_{n:08d}.JPEG",
                    flat_image(8, 8, SYN[k][3]))
    _mapping(root)
    r = ImageNet1K(root, "val")
    assert list(r.labels) == [0, 1, 2, 2]  # folder order: synset, then file name
    assert len(ImageNet1K(root, "train")) == 6


def test_imagenet_layout_errors(tmp_path: Path, in_root: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetLayoutError,
                       match=r"ImageNet-1K root .*empty lacks train/ and val/"):
        ImageNet1K(empty)
    (in_root / "LOC_val_solution.csv").unlink()
    with pytest.raises(DatasetLayoutError, match="lacks LOC_val_solution.csv"):
        ImageNet1K(in_root, "val")
    with pytest.raises(DatasetLayoutError, match="synset mapping .*nope.txt is missing"):
        ImageNet1K(in_root, "train", synset_mapping=tmp_path / "nope.txt")
