"""A MultiThreadedExecutor that does not flood its thread pool (rclpy 9.x, ros2/rclpy#1452).

rclpy's ``Executor._wait_for_ready_callbacks`` yields, before waiting, every task that is
neither executing nor done. In a ``MultiThreadedExecutor`` a task that was *submitted* to the
thread pool but not yet picked up by a worker is such a task, so the spin thread yields it
again, submits it again, and does so without ever blocking in the wait set while it holds the
GIL. With the perception node and the simulated sensors in one process, thousands of duplicate
submissions pile up, the fusion timer is starved far below its rate and the simulated sensors
drop most of their messages as late (``benchmarks/bench_runtime.py --executor rclpy-multi``
shows it; figures in benchmarks/README.md). Upstream fixed it in rclpy 10.0.4
(ros2/rclpy#1547); the Kilted wheels (rclpy 9.x) predate that.

:class:`PoolSafeExecutor` submits each task once: a task that comes back while it is still
queued is not submitted again, and the spin thread waits (releasing the GIL) until some queued
task starts, instead of spinning. Everything else is rclpy's executor, unchanged.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from rclpy.executors import (
    ConditionReachedException,
    ExternalShutdownException,
    MultiThreadedExecutor,
    ShutdownException,
    TimeoutException,
)
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

__all__ = ["PoolSafeExecutor", "retrieve_late_errors", "spin_until_shutdown"]

_RCLError = _rclpy.RCLError

#: Longest the spin thread waits for a queued task to start before looking again (seconds).
#: Only bounds the reaction to a shutdown or a new node while every pool thread is busy.
_QUEUED_WAIT_S = 0.01


class PoolSafeExecutor(MultiThreadedExecutor):
    """``MultiThreadedExecutor`` that never queues a task twice (see the module docstring).

    Parameters are those of :class:`rclpy.executors.MultiThreadedExecutor`.
    """

    def __init__(self, num_threads: int | None = None, *, context: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(num_threads=num_threads, context=context, **kwargs)
        self._queued: set[int] = set()  # id() of tasks submitted and not yet started
        self._queue_changed = threading.Condition()

    @property
    def queued_count(self) -> int:
        """Tasks submitted to the pool that no worker has started yet (for diagnostics)."""
        with self._queue_changed:
            return len(self._queued)

    def _spin_once_impl(self, timeout_sec: Any = None,
                        wait_condition: Callable[[], bool] = lambda: False) -> None:
        try:
            handler, _entity, _node = self.wait_for_ready_callbacks(
                timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException,
                ConditionReachedException):
            return
        except _RCLError:
            # A Ctrl-C (rclpy's signal handler shuts the context down) between rclpy's context
            # check and building the wait set: the spin loop ends on the dead context next.
            if self._context.ok():
                raise
            return
        key = id(handler)
        with self._queue_changed:
            if key in self._queued:
                # Yielded again only because no worker has picked it up yet: let one run.
                self._queue_changed.wait(_QUEUED_WAIT_S)
                return
            self._queued.add(key)
        self._executor.submit(self._run_queued, handler, key)
        self._futures.append(handler)
        for future in self._futures[:]:
            if future.done():
                self._futures.remove(future)
                future.result()  # raise any exception of a callback, as rclpy does

    def _run_queued(self, handler: Callable[[], Any], key: int) -> None:
        with self._queue_changed:
            self._queued.discard(key)
            self._queue_changed.notify_all()
        handler()


def spin_until_shutdown(executor: Any) -> None:
    """``executor.spin()``, ending quietly when a SIGINT shut the context down under it.

    rclpy's signal handler shuts the context down from another thread; a spin loop that is
    just building its wait set then raises ``RCLError`` ("the given context is not valid")
    instead of returning, and a node's main printed that traceback at Ctrl-C. Any other
    ``RCLError``, or one while the context is still valid, is raised.
    """
    try:
        executor.spin()
    except _RCLError:
        if executor.context.ok():
            raise


def retrieve_late_errors(executor: Any, label: str = "omnibind") -> None:
    """Collect the errors of callbacks that were running when ``executor`` shut down.

    rclpy (9.1) ``Executor.shutdown`` does not wait for callbacks in flight (it tests
    ``_is_shutdown`` right after setting it) and destroys its guard condition under them, so a
    callback finishing then raises InvalidHandle; nothing retrieves that error and its Task
    prints "The following exception was never retrieved" when collected. Those are expected and
    dropped here; any other late error is printed to stderr, prefixed with ``label``.
    """
    import sys

    from rclpy.exceptions import InvalidHandle

    for task in list(getattr(executor, "_futures", ())):  # handlers the pool ran
        error = task.exception() if task.done() else None  # exception() marks it retrieved
        if error is not None and not isinstance(error, InvalidHandle):
            print(f"{label}: a callback failed at shutdown: {error!r}", file=sys.stderr)
