"""Shared set-up for omnibind_train tests: one CPU thread, offline Hugging Face, cached models."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)  # one thread per test process: test processes run side by side

try:  # an un-installed checkout still tests (scripts/setup.sh installs it editable)
    import omnibind_train  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def text_encoder():
    """The real default text teacher (all-MiniLM-L6-v2), built once."""
    from omnibind_train.models import build_encoder

    return build_encoder("text_minilm_l6")
