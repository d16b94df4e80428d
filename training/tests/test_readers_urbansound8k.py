"""UrbanSound8K reader on a tiny copy in the published layout (audio/foldN + metadata CSV)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _reader_fixtures import tone, write_csv, write_wav

from omnibind_ros.core.types import AudioBlock
from omnibind_train.datasets import DatasetLayoutError, UrbanSound8K

HEADER = ("slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class")
CLASSES = ("air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
           "engine_idling", "gun_shot", "jackhammer", "siren", "street_music")
# (fsID, classID, occurrence, slice, fold, rate, channels, seconds, subtype)
CLIPS = [(100032, 3, 0, 0, 5, 44100, 2, 0.317, "PCM_16"),
         (100263, 2, 0, 117, 5, 48000, 2, 4.0, "PCM_24"),
         (101415, 1, 0, 3, 1, 22050, 1, 1.5, "PCM_U8"),
         (7383, 8, 0, 0, 10, 96000, 1, 0.25, "PCM_16")]


@pytest.fixture
def us_root(tmp_path: Path) -> Path:
    root = tmp_path / "UrbanSound8K"
    rows = []
    for fs, cid, occ, sl, fold, rate, ch, sec, subtype in CLIPS:
        fname = f"{fs}-{cid}-{occ}-{sl}.wav"
        write_wav(root / "audio" / f"fold{fold}" / fname, tone(sec, rate, 500, 0.3, ch), rate,
                  subtype)
        rows.append((fname, fs, 1.5, 1.5 + sec, 1 + (cid % 2), fold, cid, CLASSES[cid]))
    for k, c in enumerate(CLASSES):  # the other classes appear in folds not written to disk
        if k not in {clip[1] for clip in CLIPS}:
            rows.append((f"9{k}-{k}-0-0.wav", 9000 + k, 0.0, 4.0, 1, 7, k, c))
    for f in range(1, 11):
        (root / "audio" / f"fold{f}").mkdir(parents=True, exist_ok=True)
    write_csv(root / "metadata" / "UrbanSound8K.csv", HEADER, rows)
    return root


def test_urbansound8k_folds_rates_lengths(us_root: Path) -> None:
    r = UrbanSound8K(us_root, folds=[1, 5, 10])
    assert r.label_names == CLASSES
    assert len(r) == 4 and list(r.labels) == [3, 2, 1, 8]
    assert [r.fold(i) for i in range(4)] == [5, 5, 1, 10]
    for i, (_, cid, _, _, _, rate, ch, sec, _) in enumerate(CLIPS):
        block, label = r[i]
        assert isinstance(block, AudioBlock) and label == cid
        assert block.sample_rate == rate
        assert block.samples.shape == (int(round(sec * rate)), ch)
    assert abs(r[1][0].duration_s - 4.0) < 1e-9
    assert r.record(0)["salience"] == 2 and r.record(0)["fsID"] == 100032
    assert r.path(2).as_posix().endswith("audio/fold1/101415-1-0-3.wav")


def test_urbansound8k_cross_validation_and_preprocessing(us_root: Path) -> None:
    train, test = UrbanSound8K.cross_validation(us_root, test_fold=5)
    assert test.folds == (5,) and 5 not in train.folds and len(train.folds) == 9
    assert len(test) == 2
    x = test.preprocessed(1)  # 48 kHz stereo 24-bit clip -> log-mel
    assert x is not None and x.ndim == 3 and x.shape[0] == 1 and np.isfinite(x).all()


def test_urbansound8k_layout_errors(tmp_path: Path, us_root: Path) -> None:
    (us_root / "metadata" / "UrbanSound8K.csv").rename(us_root / "UrbanSound8K.csv")
    with pytest.raises(DatasetLayoutError,
                       match=r"UrbanSound8K root .* lacks metadata/UrbanSound8K.csv"):
        UrbanSound8K(us_root)
    (us_root / "UrbanSound8K.csv").rename(us_root / "metadata" / "UrbanSound8K.csv")
    (us_root / "audio" / "fold7").rmdir()
    with pytest.raises(DatasetLayoutError, match="lacks audio/fold7/"):
        UrbanSound8K(us_root)
    assert len(UrbanSound8K(us_root, folds=5)) == 2  # other folds need not be present
