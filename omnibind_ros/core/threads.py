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

open3d runs DBSCAN (the point-cloud clustering) on an OpenMP team of one thread per core. A
cloud of ~1,000 points is clustered in a few milliseconds; a team of threads on a 2-core robot
computer that is also encoding other sensors mostly waits at the barrier (the node's point-cloud
preprocessing took 3-4x its single-thread time), so :func:`limit_open3d_threads` caps it. The
clusters do not depend on the thread count.
"""
from __future__ import annotations

from typing import Any

__all__ = ["limit_blas_threads", "limit_malloc_arenas", "limit_open3d_threads"]

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


def limit_open3d_threads(threads: int = 1) -> bool:
    """Cap open3d's OpenMP threads (DBSCAN); imports open3d, so call it where point clouds are
    processed. False when open3d is missing or too old to have the setting."""
    try:
        import open3d
    except ImportError:
        return False
    setter = getattr(getattr(open3d, "utility", None), "set_max_threads", None)
    if setter is None:
        return False
    setter(int(threads))
    return True
