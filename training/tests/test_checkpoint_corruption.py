"""Damaged checkpoints are refused clearly by every loader and never execute code: truncated,
random bytes, and pickles whose ``__reduce__`` would write a marker file (the checkpoint rows of
the corruption matrix, ``test/test_corruption_matrix.py``)."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from omnibind_train.models.vit import read_checkpoint
from omnibind_train.trainers.checkpoint import load_checkpoint


class WritesMarker:
    """Unpickling this calls ``Path.write_text(marker, "pwned")``: code execution if loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pwned"))


def evil_pickle(path: Path, marker: Path) -> None:
    """A torch-style file (zip of data.pkl) and a plain pickle: both would run the payload."""
    import torch

    torch.save({"state": WritesMarker(marker)}, path)


def plain_evil_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"weights": WritesMarker(marker)}))


def truncate(path: Path, marker: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def random_bytes(path: Path, marker: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


CHECKPOINT_DAMAGE = {"truncated": truncate, "random bytes": random_bytes,
                     "code-executing pickle": evil_pickle,
                     "plain code-executing pickle": plain_evil_pickle}


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from omnibind_train.trainers.checkpoint import save_checkpoint

    weights = {"image": {"head.weight": torch.ones(4, 3)}}
    state = {"step": 3, "optimizer": {"lr": torch.tensor(0.1)}}
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "step_3", weights,
                           {"stage": "cad", "step": 3}, state)


@pytest.mark.parametrize("damage", list(CHECKPOINT_DAMAGE))
@pytest.mark.parametrize("loader, file", [
    ("trainer load_checkpoint", "trainer_state.pt"),
    ("trainer load_checkpoint", "weights.safetensors"),
    ("read_checkpoint (.pt)", "weights.pt"),
    ("read_checkpoint (.safetensors)", "weights.safetensors"),
])
def test_a_damaged_checkpoint_is_refused(loader: str, file: str, damage: str, checkpoint_dir,
                                         tmp_path: Path) -> None:
    """Every loader raises; no damage makes one execute code from the file."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint_dir, ckpt)
    torch.save({"head.weight": torch.ones(2)}, ckpt / "weights.pt")
    marker = tmp_path / "marker"
    CHECKPOINT_DAMAGE[damage](ckpt / file, marker)
    with pytest.raises(Exception) as info:  # noqa: PT011  (the type is recorded below)
        if loader.startswith("trainer"):
            load_checkpoint(ckpt)
        else:
            read_checkpoint(ckpt / file)
    assert not marker.exists(), "a checkpoint executed code while loading"
    error = f"{type(info.value).__name__}: {info.value}"
    assert str(info.value).strip(), error  # says something, never an empty message
    assert file in str(info.value) and "\n" not in str(info.value), error  # names it, one line
    if "pickle" in damage and file.endswith(".pt"):
        assert isinstance(info.value, pickle.UnpicklingError), error
        assert "weights_only" in str(info.value) or "Weights only" in str(info.value), error


