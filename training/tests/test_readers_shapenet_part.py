"""ShapeNet-part reader: v0_normal (<synset>/<id>.txt) and v0 (points/ + points_label/)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _reader_fixtures import write_json

from omnibind_train.datasets import DatasetLayoutError
from omnibind_train.datasets.shapenet_part import SEG_CLASSES, ShapeNetPart

CATS = [("Airplane", "02691156"), ("Bag", "02773838"), ("Mug", "03797390")]
SPLIT = {"train": [("03797390", "m1"), ("02691156", "a1")], "val": [("02691156", "a2")],
         "test": [("03797390", "m2")]}


def _cloud(seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-0.5, 0.5, (n, 3)).round(5)
    normals = xyz / np.linalg.norm(xyz, axis=1, keepdims=True)
    return xyz, normals.round(6)


def _write_root(root: Path, v0: bool) -> None:
    root.mkdir(parents=True)
    (root / "synsetoffset2category.txt").write_text(
        "".join(f"{name}\t{syn}\n" for name, syn in CATS))
    for part, items in SPLIT.items():
        write_json(root / "train_test_split" / f"shuffled_{part}_file_list.json",
                   [f"shape_data/{s}/{i}" for s, i in items])
    for seed, (syn, shape) in enumerate(sum(SPLIT.values(), [])):
        xyz, nrm = _cloud(seed)
        name = next(n for n, s in CATS if s == syn)
        local = (np.arange(len(xyz)) % len(SEG_CLASSES[name]))
        if v0:
            (root / syn / "points").mkdir(parents=True, exist_ok=True)
            (root / syn / "points_label").mkdir(parents=True, exist_ok=True)
            np.savetxt(root / syn / "points" / f"{shape}.pts", xyz, fmt="%.5f")
            np.savetxt(root / syn / "points_label" / f"{shape}.seg", local + 1, fmt="%d")
        else:
            part = np.asarray(SEG_CLASSES[name])[local].astype(float)
            (root / syn).mkdir(exist_ok=True)
            np.savetxt(root / syn / f"{shape}.txt", np.column_stack([xyz, nrm, part]),
                       fmt="%.6f")


def test_shapenet_v0_normal(tmp_path: Path) -> None:
    root = tmp_path / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
    _write_root(root, v0=False)
    r = ShapeNetPart(root, "train")
    assert r.label_names == ("Airplane", "Bag", "Mug") and r.synsets[2] == "03797390"
    assert len(r) == 2 and list(r.labels) == [2, 0]  # the split list's order
    assert r.shape_id(1) == "02691156/a1"
    pts, label = r[0]
    xyz, nrm = _cloud(0)
    assert pts.dtype == np.float32 and pts.shape == (400, 3) and label == 2
    np.testing.assert_array_equal(pts, xyz.astype(np.float32))
    np.testing.assert_allclose(r.normals(0), nrm, atol=1e-6)
    assert r.parts(0)[:4].tolist() == [36, 37, 36, 37]  # Mug's global ids
    assert r.parts(1)[:5].tolist() == [0, 1, 2, 3, 0]
    assert len(ShapeNetPart(root, "trainval")) == 3 and ShapeNetPart(root, "test").label(0) == 2
    assert len(ShapeNetPart(root, "train", categories=["Airplane"])) == 1
    up = ShapeNetPart(root, "train", z_up=True)[0][0]
    np.testing.assert_allclose(up, np.column_stack([xyz[:, 0], -xyz[:, 2], xyz[:, 1]]),
                               atol=1e-6)
    x = r.preprocessed(0)
    assert x.shape == (1024, 3)
    assert abs(float(np.linalg.norm(x, axis=1).max()) - 1.0) < 1e-5


def test_shapenet_v0_points_and_seg(tmp_path: Path) -> None:
    root = tmp_path / "shapenetcore_partanno_segmentation_benchmark_v0"
    _write_root(root, v0=True)
    r = ShapeNetPart(root, "val")
    pts, label = r[0]
    np.testing.assert_array_equal(pts, _cloud(2)[0].astype(np.float32))
    assert label == 0 and r.normals(0) is None
    assert r.parts(0)[:5].tolist() == [1, 2, 3, 4, 1]  # per-category, 1-based, as published
    assert r.path(0).as_posix().endswith("02691156/points/a2.pts")


def test_shapenet_layout_errors(tmp_path: Path) -> None:
    root = tmp_path / "sn"
    _write_root(root, v0=False)
    (root / "train_test_split" / "shuffled_val_file_list.json").unlink()
    with pytest.raises(DatasetLayoutError,
                       match="lacks train_test_split/shuffled_val_file_list.json"):
        ShapeNetPart(root, "val")
    (root / "synsetoffset2category.txt").unlink()
    with pytest.raises(DatasetLayoutError,
                       match=r"ShapeNet-part root .*sn lacks synsetoffset2category.txt"):
        ShapeNetPart(root, "train")
