"""Native thread pools of the numeric libraries the runtime uses.

OpenBLAS (numpy's BLAS: the audio mel projection, point-cloud plane fits) starts one worker
thread per core and lets them busy-wait between calls. The matrices here are small, so the
workers buy nothing, and on a 2-core robot computer their spinning competes with the encoders:
measured on the perception node with all seven simulated sensors, ~0.6 of a core went to them
(and audio features ran 8x slower during offline bag evaluation). :func:`limit_blas_threads`
caps them, process-wide, once.
"""
from __future__ import annotations

from typing import Any

__all__ = ["limit_blas_threads"]

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
