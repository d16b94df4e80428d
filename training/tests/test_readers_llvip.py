"""LLVIP reader: visible/infrared pairs + VOC annotations, ImageBind's balanced box protocol."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _reader_fixtures import voc_xml, write_image

from omnibind_ros.core.types import ThermalFrame
from omnibind_train.datasets import DatasetLayoutError
from omnibind_train.datasets.llvip import LLVIP

W, H = 64, 48
# image id -> objects (name, xmin, ymin, xmax, ymax); no 30 x 40 box avoids 190003's person in
# 190003 or in 190001, so its random box must land in 190002 (x 30..64 is free there);
# 190002 has a "car" that is not a person. The train image's person fills it: no random box fits.
ANN = {"190001": [("person", 4, 6, 14, 30), ("person", 40, 10, 52, 40)],
       "190002": [("car", 0, 0, 30, 20), ("person", 20, 20, 30, 44)],
       "190003": [("person", 17, 4, 47, 44)],
       "010001": [("person", 0, 0, 64, 48)]}


def _ir(seed: int) -> np.ndarray:  # value encodes x (gradient) so crops can be located
    return np.tile((np.arange(W) * 3 + seed).astype(np.uint8), (H, 1))


def _vis() -> np.ndarray:
    x, y = np.meshgrid(np.arange(W), np.arange(H))
    return np.stack([x * 3, y * 4, np.full_like(x, 100)], axis=2).astype(np.uint8)


@pytest.fixture
def llvip_root(tmp_path: Path) -> Path:
    root = tmp_path / "LLVIP"
    for split, ids in (("test", [i for i in ANN if i != "010001"]), ("train", ["010001"])):
        for k, i in enumerate(ids):
            ir = _ir(k)
            write_image(root / "infrared" / split / f"{i}.jpg", np.repeat(ir[..., None], 3, 2))
            write_image(root / "visible" / split / f"{i}.jpg", _vis())
            (root / "Annotations").mkdir(parents=True, exist_ok=True)
            (root / "Annotations" / f"{i}.xml").write_text(
                voc_xml(f"{i}.jpg", W, H, ANN[i]))
    return root


def _intersects(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_llvip_balanced_person_and_random_boxes(llvip_root: Path) -> None:
    r = LLVIP(llvip_root, "test", seed=3)
    assert r.label_names == ("background", "person")
    assert len(r) == 8 and int(r.labels.sum()) == 4  # 4 persons + 4 random boxes
    persons = {i: [b[1:] for b in v if b[0] == "person"] for i, v in ANN.items()
               if i != "010001"}
    pos = sorted(r.box(i) for i in range(len(r)) if r.label(i) == 1)
    assert pos == sorted((i, b) for i, bs in persons.items() for b in bs)
    neg = [r.box(i) for i in range(len(r)) if r.label(i) == 0]
    assert sorted((b[2] - b[0], b[3] - b[1]) for _, b in neg) == sorted(
        (b[2] - b[0], b[3] - b[1]) for _, b in pos)  # same sizes as the person boxes
    for image_id, b in neg:
        assert 0 <= b[0] and b[2] <= W and 0 <= b[1] and b[3] <= H
        assert not any(_intersects(b, p) for p in persons[image_id])
    big = [b for i, b in neg if b[2] - b[0] == 30 and b[3] - b[1] == 40]
    assert [i for i, b in neg if b in big] == ["190002"]  # no room in 190003: placed elsewhere
    again = LLVIP(llvip_root, "test", seed=3)
    assert [again.box(i) for i in range(8)] == [r.box(i) for i in range(8)]
    other = LLVIP(llvip_root, "test", seed=4)
    assert [other.box(i) for i in range(8)] != [r.box(i) for i in range(8)]


def test_llvip_crops_thermal_and_visible(llvip_root: Path) -> None:
    r = LLVIP(llvip_root)
    i = next(i for i in range(len(r)) if r.box(i) == ("190001", (40, 10, 52, 40)))
    frame, label = r[i]
    assert isinstance(frame, ThermalFrame) and frame.encoding == "mono8" and label == 1
    assert frame.data.shape == (30, 12) and frame.data.dtype == np.uint8
    np.testing.assert_allclose(frame.data[0].astype(int), np.arange(40, 52) * 3, atol=3)
    vis = r.visible(i)
    assert vis.shape == (30, 12, 3)
    np.testing.assert_allclose(vis[:, 0, 1].astype(int), np.arange(10, 40) * 4, atol=4)
    assert r.preprocessed(i).shape == (3, 160, 160)
    with pytest.warns(UserWarning, match="1 random boxes found no place"):
        assert len(LLVIP(llvip_root, "train")) == 0  # its person box is dropped: balanced


def test_llvip_layout_errors(tmp_path: Path, llvip_root: Path) -> None:
    (llvip_root / "Annotations" / "190002.xml").unlink()
    with pytest.raises(DatasetLayoutError, match="190002.xml is missing"):
        LLVIP(llvip_root)
    (tmp_path / "half" / "infrared" / "test").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match=r"LLVIP root .*half lacks visible/test/"):
        LLVIP(tmp_path / "half")
