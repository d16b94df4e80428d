"""Native thread pools of the numeric libraries the runtime uses.

OpenBLAS (numpy's BLAS: the audio mel projection, point-cloud plane fits) starts one worker
thread per core and lets them busy-wait between calls. The matrices here are small, so the
workers buy nothing, and on a small robot computer their spinning competes with the encoders
(a sizeable part of a core went to them in the perception node with all seven simulated
sensors; ``benchmarks/bench_runtime.py`` with ``--node-env OPENBLAS_NUM_THREADS=...`` compares).
:func:`limit_blas_threads` caps them, process-wide, once.

glibc gives every thread that allocates its own malloc arena (up to 8 per core); the node's
executor, sensor workers and ONNX Runtime threads each keep freed memory in theirs, so RSS
creeps up for minutes with a flat Python heap. :func:`limit_malloc_arenas` caps the arenas (the
``MALLOC_ARENA_MAX`` setting, applied at run time with ``mallopt``);
``benchmarks/bench_runtime.py soak`` measures the RSS slope with and without it.
"""
from __future__ import annotations

from typing import Any

__all__ = ["limit_blas_threads", "limit_malloc_arenas"]

_limiter: Any = None


def limit_blas_threads(threads: int = 1) -> bool:
    """Cap the BLAS thread pools of this process at ``threads``; returns False when
    ``threadpoolctl`` is missing (only speed depends on it). Later calls change the cap."""
    global _limiter
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return False
    _limiter = threadpool_limits(limits=int(threads), user_api="blas")
    return True


_M_ARENA_MAX = -8  # glibc malloc.h


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for threads created from now on; False where it cannot
    (not glibc, or ``MALLOC_ARENA_MAX`` already set by the user, which wins)."""
    import ctypes
    import ctypes.util
    import os

    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, int(arenas)))
    except (OSError, AttributeError):
        return False
