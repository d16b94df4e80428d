"""The parallel path of offline evaluation: sensor stages in worker processes, ahead of the engine.

The reference path (:func:`omnibind_ros.bag.offline.run_reference`) stages every message and
delivers it to the replay in one process. Staging (deserialization, conversion, preprocessing,
encoding) is nearly all of the work and is independent between sensors until the engine, so
here it runs in worker processes, while this process reads the bag and runs the engine:

* the bag is cut into windows of ``WINDOW_S`` bag seconds; each window's messages go, per
  sensor, to the worker that owns the sensor (all sensors of a modality in one worker,
  balanced by estimated CPU), up to ``READ_AHEAD`` windows before the engine needs them;
* a worker (:mod:`omnibind_ros.bag._offline_worker`, a fresh interpreter started with
  ``subprocess``: nothing of rclpy or ONNX Runtime is forked, and the caller's ``__main__`` is
  never re-imported) runs its sensors' :class:`~omnibind_ros.bag.stage.BagSensor` stages in
  message order, exactly as the reference does, and sends back the staged messages;
* this process merges a window's staged messages in bag order and delivers them to the same
  :class:`~omnibind_ros.bag.replay.BagReplay`.

A sensor's stage depends only on its own messages, so the outcomes are the reference's, and so
is everything the replay makes of them. Workers end with the evaluation (also on errors and
Ctrl-C: killed by pid; a worker whose request pipe closes exits by itself).
"""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from omnibind_ros.bag.errors import WorkerFailed
from omnibind_ros.bag.replay import BagReplay

__all__ = ["ParallelStages", "backend_for", "read_guarded"]

NS = 1_000_000_000
#: Bag seconds per window: large enough that a worker's reply carries many messages, small
#: enough to keep the windows in flight small in memory.
WINDOW_S = 2.0
#: Windows sent to the workers before the engine takes the oldest (bounds memory).
READ_AHEAD = 3
#: Estimated CPU cost of one message's stage, and of one encoded sample, by modality (ms of
#: one core with the default bundle; a worker's ``cpu_s`` in the report's timing shows what a
#: split cost). Only used to balance sensors over the workers: any split gives the same results.
STAGE_MS = {"point_cloud": 6.2, "event": 0.7, "audio": 0.24, "image": 0.18, "thermal": 0.36,
            "tactile": 0.15, "text": 0.07}
ENCODE_MS = {"point_cloud": 1.2, "audio": 1.7, "text": 5.0}  # the others: ~2.55


def read_guarded(messages: Iterable[Any], errors: list[BaseException]) -> Iterator[Any]:
    """``messages``, ending quietly at a read error (appended to ``errors``): a damaged bag
    ends the reading, but an error of the evaluation itself is never taken for one."""
    try:
        yield from messages
    except Exception as exc:  # noqa: BLE001
        errors.append(exc)


def backend_for(name: str, bundle: Any, modalities: Iterable[str], *, fusion: bool,
                text: bool) -> Any:
    """A single-threaded backend with only the sessions a process needs."""
    from omnibind_ros.core.backends import create_backend

    encoders = sorted({m for m in modalities if m in bundle.modalities})
    if not encoders:  # "no modalities" means all of them to the backends: open the smallest
        encoders = [min(bundle.modalities,
                        key=lambda m: (Path(bundle.modalities[m].file).stat().st_size, m))]
    return create_backend(name, bundle, threads=1, modalities=encoders, fusion=fusion,
                          text=text)


def assign(config: Any, n: int, counts: dict[str, int], duration_s: float) -> list[list[str]]:
    """Sensors split over ``n`` workers by estimated CPU (largest first onto the least loaded
    worker); the sensors of one modality stay together (they share an encoder)."""
    by_modality: dict[str, list[str]] = defaultdict(list)
    cost: dict[str, float] = defaultdict(float)
    for cfg in config.sensors:
        by_modality[cfg.modality].append(cfg.name)
        messages = counts.get(cfg.name, 0)
        encoded = messages if cfg.encode_rate_hz <= 0 else min(
            messages, duration_s * cfg.encode_rate_hz)
        cost[cfg.modality] += (messages * STAGE_MS.get(cfg.modality, 0.3)
                               + encoded * ENCODE_MS.get(cfg.modality, 2.55))
    groups: list[list[str]] = [[] for _ in range(max(1, min(n, len(by_modality))))]
    load = [0.0] * len(groups)
    for modality in sorted(by_modality, key=lambda m: (-cost[m], m)):
        i = min(range(len(groups)), key=lambda k: (load[k], k))
        groups[i].extend(by_modality[modality])
        load[i] += cost[modality]
    return [g for g in groups if g]


class _Worker:
    """One worker process and its two pipes (requests are sent from a thread of their own, so
    this process never blocks on a full pipe; replies are kept by (kind, key) until asked)."""

    def __init__(self, sensors: list[str]) -> None:
        from multiprocessing.connection import Connection

        self.sensors = sensors
        r_req, w_req = os.pipe()
        r_rep, w_rep = os.pipe()
        env = dict(os.environ)
        # the caller's import path (a script's or a test's directory); BLAS single-threaded
        env["PYTHONPATH"] = os.pathsep.join(
            [p for p in sys.path if isinstance(p, str) and p]
            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = "1"
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "omnibind_ros.bag._offline_worker", str(r_req),
                 str(w_rep)], pass_fds=(r_req, w_rep), env=env, stdin=subprocess.DEVNULL)
        except BaseException:
            for fd in (r_req, w_req, r_rep, w_rep):
                os.close(fd)
            raise
        os.close(r_req)
        os.close(w_rep)
        self._out = Connection(w_req, readable=False)
        self._in = Connection(r_rep, writable=False)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stash: dict[tuple[str, Any], tuple[Any, ...]] = {}
        self._sender = threading.Thread(target=self._send_loop, daemon=True,
                                        name=f"bag_worker_{self.proc.pid}")
        self._sender.start()
        self.stats: dict[str, Any] = {}

    def _send_loop(self) -> None:
        while (request := self._queue.get()) is not None:
            try:
                self._out.send(request)
            except OSError:  # the worker is gone: the reader sees EOF and says why
                return

    def send(self, request: Any) -> None:
        self._queue.put(request)

    def reply(self, kind: str, key: Any) -> tuple[Any, ...]:
        """The worker's reply ``(kind, key, ...)``; WorkerFailed if the worker failed."""
        while (kind, key) not in self._stash:
            try:
                msg = self._in.recv()
            except (EOFError, OSError):
                try:
                    code = self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    code = None
                raise WorkerFailed(f"offline evaluation worker {self.proc.pid} (sensors "
                                   f"{', '.join(self.sensors)}) ended unexpectedly (exit "
                                   f"code {code})") from None
            if msg[0] == "error":
                raise WorkerFailed(f"offline evaluation worker {self.proc.pid} (sensors "
                                   f"{', '.join(self.sensors)}) failed:\n{msg[2]}")
            self._stash[(msg[0], msg[1])] = tuple(msg[2:])
        return self._stash.pop((kind, key))

    def close(self, abort: bool) -> None:
        """Stop the worker: politely (its statistics come back), or at once with ``abort``."""
        try:
            if not abort and self.proc.poll() is None:
                self.send(("close", None))
                try:
                    (self.stats,) = self.reply("closed", None)
                except WorkerFailed:
                    abort = True
        finally:
            self._queue.put(None)
            if abort and self.proc.poll() is None:
                self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for conn in (self._out, self._in):
                conn.close()
            self._sender.join(timeout=5)


class ParallelStages:
    """Sensor stages in worker processes (see the module docstring).

    Start the workers first (:meth:`start`: they import while the caller loads the bundle),
    then :meth:`configure`, :meth:`run`, and always :meth:`close`.
    """

    def __init__(self, config: Any, workers: list[_Worker]) -> None:
        self.config = config
        self.workers = workers
        self._owner = {name: w for w in workers for name in w.sensors}
        self._next_window = 0
        self._aborted = False
        self.counters: dict[str, dict[str, Any]] = {}
        self.timing: dict[str, Any] = {}

    @classmethod
    def start(cls, config: Any, processes: int, info: Any,
              topics: dict[str, str]) -> ParallelStages:
        """Start ``processes`` workers (fewer when there are fewer modalities) for a bag."""
        counts = {topics[t]: n for t, (_, n) in info.topics.items() if t in topics}
        workers: list[_Worker] = []
        try:
            for sensors in assign(config, processes, counts, info.duration_s):
                workers.append(_Worker(sensors))
        except BaseException:
            for worker in workers:
                worker.close(abort=True)
            raise
        return cls(config, workers)

    def configure(self, bundle: Any, backend: str,
                  backend_wrapper: Callable[[Any], Any] | None = None,
                  definitions: dict[str, str] | None = None) -> None:
        """Tell the workers what to build (bundle, backend name, their sensors, the bag's
        message definitions)."""
        for worker in self.workers:
            worker.send({"config": self.config, "bundle": bundle, "backend": backend,
                         "sensors": worker.sensors, "backend_wrapper": backend_wrapper,
                         "definitions": definitions or {}})

    def run(self, messages: Iterable[Any], topics: dict[str, str], replay: BagReplay, *,
            info_topics: dict[str, str] | None = None,
            on_other: Callable[[Any], None] | None = None,
            progress: Callable[[int], None] | None = None
            ) -> tuple[int, BaseException | None]:
        """As :func:`~omnibind_ros.bag.offline.run_reference`, with the stages in the workers."""
        try:
            return self._run(messages, topics, info_topics or {}, replay, on_other, progress)
        except BaseException:
            self.abort()
            raise

    def _run(self, messages: Iterable[Any], topics: dict[str, str], info_topics: dict[str, str],
             replay: BagReplay, on_other: Callable[[Any], None] | None,
             progress: Callable[[int], None] | None) -> tuple[int, BaseException | None]:
        window_ns = round(WINDOW_S * NS)
        window_end = replay.start_ns + window_ns
        batch: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        in_flight: deque[tuple[int, list[_Worker]]] = deque()
        last_ns, errors = replay.start_ns, []
        for m in read_guarded(messages, errors):
            while m.log_time_ns >= window_end:
                in_flight.append(self._dispatch(batch))
                batch, window_end = defaultdict(list), window_end + window_ns
                while len(in_flight) > READ_AHEAD:
                    self._deliver(*in_flight.popleft(), replay, progress)
            last_ns = max(last_ns, m.log_time_ns)
            name = topics.get(m.topic)
            if name is not None:
                batch[name].append((m.index, m.log_time_ns, m.rawdata))
            elif m.topic in info_topics:   # in order with the sensor's data, in its worker
                batch[info_topics[m.topic]].append((m.index, m.log_time_ns, m.rawdata, True))
            elif on_other is not None:
                on_other(m)
        in_flight.append(self._dispatch(batch))
        while in_flight:
            self._deliver(*in_flight.popleft(), replay, progress)
        replay.finish(last_ns)
        return last_ns, errors[0] if errors else None

    def _dispatch(self, batch: dict[str, list[tuple[Any, ...]]]
                  ) -> tuple[int, list[_Worker]]:
        wid = self._next_window
        self._next_window += 1
        busy = [w for w in self.workers if any(batch.get(name) for name in w.sensors)]
        for worker in busy:
            worker.send(("window", wid, {name: batch[name] for name in worker.sensors
                                         if batch.get(name)}))
        return wid, busy

    def _deliver(self, wid: int, busy: list[_Worker], replay: BagReplay,
                 progress: Callable[[int], None] | None) -> None:
        staged = []
        for worker in busy:
            (rows,) = worker.reply("staged", wid)
            staged.extend(rows)
        staged.sort(key=lambda row: (row[1].log_ns, row[1].index))
        for sensor, message in staged:
            replay.deliver(sensor, message)
            if progress is not None:
                progress(message.log_ns)

    def abort(self) -> None:
        """Make :meth:`close` kill the workers instead of waiting for their statistics."""
        self._aborted = True

    def close(self) -> None:
        """End the workers (killed at once after an error); keep their counters and timings."""
        error: BaseException | None = None
        abort = self._aborted
        for worker in self.workers:
            try:
                worker.close(abort)
            except BaseException as exc:  # noqa: BLE001  (end the others all the same)
                abort, error = True, error or exc
        for i, worker in enumerate(self.workers):
            stats = dict(worker.stats)
            self.counters.update(stats.pop("counters", {}))
            self.timing.update({f"worker{i}.{k}": v for k, v in stats.items()
                                if isinstance(v, (int, float)) and k != "pid"})
        self.timing["worker_sensors"] = [list(w.sensors) for w in self.workers]
        self.timing["cpu_s.main_process"] = round(time.process_time(), 3)
        self.workers = []
        if error is not None:
            raise error
