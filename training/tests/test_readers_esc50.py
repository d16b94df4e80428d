"""ESC-50 reader on a tiny copy in the published layout (audio/*.wav + meta/esc50.csv)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _reader_fixtures import tone, write_csv, write_wav

from omnibind_ros.core.types import AudioBlock
from omnibind_train.datasets import ESC50, DatasetFormatError, DatasetLayoutError, open_dataset
from omnibind_train.datasets._audio import clip_window

HEADER = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
# (fold, target, category, esc10, src, take)
ROWS = [(1, 0, "dog", True, 100032, "A"), (1, 14, "chirping_birds", False, 100038, "A"),
        (2, 0, "dog", True, 100033, "B"), (5, 49, "hand_saw", False, 99999, "A")]
TARGETS = {0: "dog", 14: "chirping_birds", 49: "hand_saw"}


def _name(fold: int, src: int, take: str, target: int) -> str:
    return f"{fold}-{src}-{take}-{target}.wav"


@pytest.fixture
def esc_root(tmp_path: Path) -> Path:
    root = tmp_path / "ESC-50-master"
    rows = []
    for fold, target, cat, esc10, src, take in ROWS:
        fname = _name(fold, src, take, target)
        # a 0.5 s tone starting at 3 s of the 5 s clip, 44.1 kHz mono 16-bit as published
        write_wav(root / "audio" / fname, tone(5.0, 44100, 300 + 10 * target, onset_s=3.0,
                                               dur_s=0.5), 44100)
        rows.append((fname, fold, target, cat, esc10, f"{src}.ogg", take))
    # every other target 1..48 needs a category for targets to be 0..49: one clip each, fold 3
    for t in range(50):
        if t in TARGETS:
            continue
        fname = _name(3, 200000 + t, "A", t)
        rows.append((fname, 3, t, f"class_{t}", False, "x.ogg", "A"))
    write_csv(root / "meta" / "esc50.csv", HEADER, rows)
    return root


def test_esc50_folds_labels_and_audio(esc_root: Path) -> None:
    r = ESC50(esc_root, folds=[1, 2, 5])
    assert len(r) == 4 and r.num_classes == 50
    assert r.label_names[0] == "dog" and r.label_names[14] == "chirping_birds"
    assert r.label_names[49] == "hand_saw" and r.label_names[7] == "class_7"
    assert list(r.labels) == [0, 14, 0, 49]
    assert [r.fold(i) for i in range(4)] == [1, 1, 2, 5]
    block, label = r[1]
    assert isinstance(block, AudioBlock) and label == 14
    assert block.sample_rate == 44100 and block.samples.shape == (5 * 44100, 1)
    assert block.samples.dtype == np.float32
    assert r.record(3)["take"] == "A" and r.record(3)["esc10"] is False
    assert r.path(0).name == "1-100032-A-0.wav"


def test_esc50_cross_validation_and_esc10(esc_root: Path) -> None:
    train, test = ESC50.cross_validation(esc_root, test_fold=1)
    assert test.folds == (1,) and train.folds == (2, 3, 4, 5)
    assert len(test) == 2 and len(train) == 2 + 47
    e10 = ESC50(esc_root, esc10=True)
    assert e10.label_names == ("dog",) and list(e10.labels) == [0, 0]
    assert open_dataset("ESC-50", esc_root, folds=5).label(0) == 49
    with pytest.raises(ValueError, match="folds must be among"):
        ESC50(esc_root, folds=6)


def test_esc50_preprocessed_uses_the_loudest_window(esc_root: Path) -> None:
    r = ESC50(esc_root, folds=1)
    x = r.preprocessed(0)
    from omnibind_ros.core.preprocess import build_preprocessor

    assert x is not None and np.isfinite(x).all()
    assert x.shape == build_preprocessor("audio", r.preprocess_config()).output_shape
    last = ESC50(esc_root, folds=1, window="last").preprocessed(0)
    # the tone (3.0-3.5 s) lies in the last 2 s too; "first" (0-2 s) is silence
    first = ESC50(esc_root, folds=1, window="first").preprocessed(0)
    assert x.max() > first.max() + 1.0 and last.max() > first.max() + 1.0
    block = r[0][0]
    win = clip_window(block, 2.0, "loudest")
    assert win.samples.shape[0] == 88200
    peak = np.argmax(np.abs(win.samples[:, 0]) > 0.1)  # the excerpt holds the burst
    assert np.abs(win.samples[:, 0]).max() > 0.4 and peak < 88200


def test_esc50_layout_errors(tmp_path: Path, esc_root: Path) -> None:
    with pytest.raises(DatasetLayoutError, match=r"ESC-50 root .*nowhere does not exist"):
        ESC50(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    (partial / "audio").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match=r"ESC-50 root .*partial lacks meta/esc50.csv"):
        ESC50(partial)
    (esc_root / "meta" / "esc50.csv").write_text("filename,fold\nx.wav,1\n")
    with pytest.raises(DatasetFormatError, match="header lacks target"):
        ESC50(esc_root)


def test_esc50_missing_clip_is_named(esc_root: Path) -> None:
    r = ESC50(esc_root, folds=5)
    r.path(0).unlink()
    with pytest.raises(DatasetLayoutError, match="5-99999-A-49.wav is missing"):
        r[0]
