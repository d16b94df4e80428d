"""Errors of bag evaluation, shared by its offline paths."""
from __future__ import annotations

__all__ = ["BagEvalError", "LiveEvalError", "WorkerFailed"]


class BagEvalError(RuntimeError):
    """The bag cannot be evaluated (no mapped topic, unusable configuration...)."""


class WorkerFailed(BagEvalError):
    """A worker process of the parallel path failed or ended unexpectedly (the message says
    which, and the worker's traceback)."""


class LiveEvalError(RuntimeError):
    """Live evaluation cannot run (the node failed to configure, no mapped topic, no clock)."""
