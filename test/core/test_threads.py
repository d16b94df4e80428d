"""core.threads: the BLAS thread cap and the malloc arena cap take effect."""
from __future__ import annotations

import subprocess
import sys

import pytest


def test_blas_is_capped_at_one_thread() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import numpy as np

    from omnibind_ros.core.threads import limit_blas_threads

    np.ones((4, 4)) @ np.ones((4, 4))  # numpy's BLAS is loaded (as in the node)

    assert limit_blas_threads(1)
    blas = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    assert blas and all(p["num_threads"] == 1 for p in blas)


def test_malloc_arena_cap_applies_unless_the_user_set_one() -> None:
    code = ("from omnibind_ros.core.threads import limit_malloc_arenas as f; "
            "print(f(2))")
    env = {k: v for k, v in __import__("os").environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "True"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "MALLOC_ARENA_MAX": "4"},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"  # the user's setting wins
