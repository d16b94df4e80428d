"""Touch-and-Go reader: dataset/<video>/{video_frame,gelsight_frame}/ + label/split files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _reader_fixtures import flat_image, write_image

from omnibind_ros.core.types import TactileFrame
from omnibind_train.datasets import DatasetFormatError, DatasetLayoutError
from omnibind_train.datasets.touch_and_go import MATERIAL_NAMES, TouchAndGo

VIDEOS = {"20220318_020426": [1, 96, 97], "20220511_164750": [0, 713]}
LABELS = ["20220318_020426/0000000096.jpg,8", "20220318_020426/0000000097.jpg,8",
          "20220511_164750/0000000713.jpg,3"]


def _gel(video: int, frame: int) -> np.ndarray:
    return flat_image(10, 14, (10 * frame % 250, 40 + video * 100, 90))


@pytest.fixture
def tg_root(tmp_path: Path) -> Path:
    root = tmp_path / "touch_and_go"
    for v, (video, frames) in enumerate(VIDEOS.items()):
        for f in frames:
            name = f"{f:010d}.jpg"
            write_image(root / "dataset" / video / "gelsight_frame" / name, _gel(v, f))
            write_image(root / "dataset" / video / "video_frame" / name,
                        flat_image(12, 16, (200, 30 * v, f % 250)))
    (root / "label.txt").write_text("\n".join(LABELS) + "\n")
    (root / "train.txt").write_text(LABELS[2] + "\n" + LABELS[0] + "\n")
    (root / "test.txt").write_text(LABELS[1] + "\n")
    (root / "train_rough.txt").write_text("20220511_164750/0000000713.jpg,1\n")
    return root


def test_touch_and_go_frames_labels_and_reference(tg_root: Path) -> None:
    r = TouchAndGo(tg_root, "train")
    assert r.label_names == MATERIAL_NAMES and r.num_classes == 20
    assert len(r) == 2 and list(r.labels) == [3, 8]
    assert r.frame_id(1) == "20220318_020426/0000000096.jpg"
    frame, label = r[1]
    assert isinstance(frame, TactileFrame) and label == 8
    assert frame.image.shape == (10, 14, 3) and frame.image.dtype == np.uint8
    assert np.abs(frame.image.astype(int) - _gel(0, 96)).max() <= 3
    assert np.abs(frame.reference.astype(int) - _gel(0, 1)).max() <= 3  # recording's first
    assert r.reference_path(0).name == "0000000000.jpg"
    assert np.abs(r.image(1).astype(int) - (200, 0, 96)).max() <= 3
    x = r.preprocessed(1)
    assert x.shape == (3, 160, 160) and np.abs(x).max() > 0.1  # differs from the reference
    assert TouchAndGo(tg_root, "train", reference="none")[0][0].reference is None


def test_touch_and_go_splits_and_tasks(tg_root: Path) -> None:
    assert len(TouchAndGo(tg_root, "all")) == 3 and len(TouchAndGo(tg_root, "test")) == 1
    hard = TouchAndGo(tg_root, "all", task="hard")
    assert hard.label_names == ("hard", "soft") and list(hard.labels) == [1, 1, 0]
    rough = TouchAndGo(tg_root, "train", task="rough")
    assert len(rough) == 1 and rough.label(0) == 1
    named = TouchAndGo(tg_root, "all", label_names=[f"m{k}" for k in range(20)])
    assert named.label_names[8] == "m8"
    with pytest.raises(DatasetFormatError,
                       match=r"label ids \[3, 8\] outside the 3 label names"):
        TouchAndGo(tg_root, "all", label_names=["a", "b", "c"])


def test_touch_and_go_layout_errors(tmp_path: Path, tg_root: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="split file .*pretrain.txt is missing"):
        TouchAndGo(tg_root, "pretrain")
    (tg_root / "label.txt").write_text("20220601_000000/0000000001.jpg,2\n")
    with pytest.raises(DatasetLayoutError,
                       match=r"Touch-and-Go root .* lacks dataset/20220601_000000/"):
        TouchAndGo(tg_root, "all")
    (tg_root / "label.txt").write_text("no comma here\n")
    with pytest.raises(DatasetFormatError, match="label.txt line 1"):
        TouchAndGo(tg_root, "all")
    (tmp_path / "bare").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"Touch-and-Go root .*bare lacks dataset/"):
        TouchAndGo(tmp_path / "bare")
