"""What every reader shares: the registry of seed 000's nine data sets, wrong roots, imports."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from omnibind_train.datasets import READERS, DatasetLayoutError, DatasetReader, open_dataset

# Table 1 of seed 000: data set -> modality
TABLE1 = {"ImageNet-1K": "image", "Caltech-101": "image", "ShapeNet-part": "point_cloud",
          "ESC-50": "audio", "UrbanSound8K": "audio", "LLVIP": "thermal",
          "N-ImageNet": "event", "N-Caltech101": "event", "Touch-and-Go": "tactile"}


def test_registry_holds_the_nine_source_data_sets() -> None:
    assert {cls.name: cls.modality for cls in READERS.values()} == TABLE1
    for cls in READERS.values():
        assert issubclass(cls, DatasetReader) and cls.__doc__
        assert "layout" in sys.modules[cls.__module__].__doc__.lower()  # documents what it reads
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        open_dataset("mnist", ".")


@pytest.mark.parametrize("name", sorted(TABLE1))
def test_wrong_root_names_data_set_and_root(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "not_here"
    with pytest.raises(DatasetLayoutError, match=f"{name} root .*not_here does not exist"):
        open_dataset(name, missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetLayoutError, match=f"{name} root .*empty lacks "):
        open_dataset(name, empty)


def test_importing_the_readers_pulls_in_neither_torch_nor_rclpy() -> None:
    code = ("import sys, omnibind_train.datasets; "
            "print(sorted(m for m in ('torch', 'rclpy', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"
