"""OMNIBIND_BLOCK_TRAINING=1 (test/conftest.py) makes omnibind_train unimportable for a run.

``test_blocker_state_matches_the_environment`` checks the hook of the current run, whatever the
variable says; ``test_blocker_in_a_pytest_run`` starts pytest in a subprocess with the variable
set, so the blocked case is exercised in every run.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VAR = "OMNIBIND_BLOCK_TRAINING"


def _blockers() -> list[object]:
    return [f for f in sys.meta_path if type(f).__name__ == "TrainingImportBlocker"]


def test_blocker_state_matches_the_environment() -> None:
    if os.environ.get(VAR, "").strip().lower() not in ("1", "true", "yes"):
        assert _blockers() == [], f"{VAR} is not set, yet an import blocker is installed"
        return
    assert len(_blockers()) == 1
    for name in ("omnibind_train", "omnibind_train.testing", "omnibind_train.export"):
        sys.modules.pop(name, None)
        with pytest.raises(ModuleNotFoundError, match=f"{VAR}=1 blocks the training") as info:
            importlib.import_module(name)
        assert info.value.name == "omnibind_train"  # the package is imported first
    with pytest.raises(ImportError, match=VAR):
        from omnibind_train import testing  # noqa: F401
    assert not any(m.split(".")[0] == "omnibind_train" for m in sys.modules)
    # importorskip turns the block into a skip, which is how runtime tests opt out
    with pytest.raises(pytest.skip.Exception):
        pytest.importorskip("omnibind_train.testing")
    importlib.import_module("omnibind_ros.testing")  # the runtime's own helpers still import


def test_blocker_in_a_pytest_run() -> None:
    env = dict(os.environ, **{VAR: "1"})
    target = f"{Path(__file__).relative_to(REPO)}::test_blocker_state_matches_the_environment"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
         "-W", "error::pytest.PytestDeprecationWarning", target],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout and f"{VAR}=1" in proc.stdout, proc.stdout[-3000:]
