"""Offline evaluation of a bag: the node's recognition path, driven by the bag's clock.

Offline is the *infinitely fast machine*: every message reaches the node at its log time (the
time the recorder received it), is converted, preprocessed and encoded with zero latency, and
its embedding is available at that same instant. What remains is exactly what the node decides,
so the numbers measure the model and the availability logic, not this machine's speed (live
mode, ``omnibind_ros.bag.live``, measures the real-time behaviour). Nothing here depends on
wall-clock time or thread scheduling: the same bag gives the same numbers on every run.

The path is the node's, piece by piece:

* messages are deserialized with ``rclpy.serialization.deserialize_message`` into the installed
  message classes (the objects the node's callbacks get); the stamp is ``header.stamp``, or the
  arrival (log) time for header-less messages (operator text), as in the node's callback;
* ``ros.sensor_worker.SampleGate`` applies the callback-side rules (stamp order, conversion via
  ``ros.conversions``, the audio stream push, the ``encode_rate_hz`` throttle) and gives the
  model input (``core.preprocess`` via ``make_pipeline``); ``checked_embedding`` checks the
  encoder output. A message that fails any step is a bad sample, one skipped by the throttle a
  valid one (the sensor worker's docstring explains the rule); no message is ever superseded
  (an infinitely fast worker is never busy);
* ``core.availability.AvailabilityMonitor`` hears every sample at its log time, with the node's
  settings (``bad_samples_to_degrade``, clock-jump tolerance); it is evaluated on the node's
  ``MONITOR_HZ`` grid for the state changes it reports. A bag has no ROS graph, so publisher
  counts are never reported: an unplugged sensor is found by its silence (STALE, LOST), as it
  would be by a node whose graph poll lags;
* ``core.fusion``: accepted embeddings go into a ``LatestEmbeddings`` store, the node's
  ``TickScheduler`` decides when a tick runs (on a new embedding, at most ``fusion.rate_hz``;
  the heartbeat timer at ``start + k / rate_hz`` of the bag clock, from the first message to
  the last), and the node's ``FusionTick`` (labels and logit scale from the same helpers,
  ``ros.perception_lifecycle.build_fusion_tick``) computes the answer.

Ordering at equal times: messages with a log time <= T are handled before the timer tick at T,
then the monitor evaluation at T; messages of equal log time in bag order.

How it is fast (>= 100 ticks/s on 2 cores with the default bundle is the target). The bag is
cut into windows of ``WINDOW_S`` bag seconds; per window:

1. *per-sensor stage* (one sequential task per sensor, up to ``READ_AHEAD`` windows ahead of
   the rest): deserialize, admit, preprocess. Sensors are independent until the monitor, and
   their preprocessors (audio, tactile) keep state, so each sensor's messages stay in order on
   one task;
2. *pass 1* (main thread, log-time order): monitor, store and scheduler over the window's
   outcomes, with *shadow* ticks: a ``FusionTick`` with the node's selection and no-answer
   rules on 1-d placeholder embeddings. Which samples a tick fuses, and whether it answers,
   depend on stamps, sensors and modalities only, so the shadow tells exactly which samples the
   real ticks will fuse (and the node's "a sensor joining ticks at once" rule, which reads the
   previous tick's sensors, sees the same sensors);
3. *encode* only those samples (batched per modality: the sorted samples of one window in
   batches of ``MAX_BATCH``). A sample no tick fuses is never encoded: its embedding cannot
   change any answer;
4. *fuse*: the real ticks of pass 1, in order.

Where steps 1 and 3 run (the results are the same either way; tests check it):

* *worker processes* (``processes``, default one per core on 2+ cores with ONNX Runtime): each
  worker (``omnibind_ros.bag._offline_worker``, a fresh interpreter started with
  ``subprocess``: nothing of rclpy or ONNX Runtime is forked, and the caller's ``__main__`` is
  never re-imported) owns some sensors, all sensors of a modality together, split by estimated
  CPU (``STAGE_MS``/``ENCODE_MS`` x the bag's message counts). It loads its own encoders, runs
  its sensors' stage and keeps the model inputs in its memory, keyed by message index; only
  metadata (kind, stamps, bad reason) comes back for pass 1, and only embeddings (384 floats)
  for step 4. The main process reads the bag, runs passes 1/2 and fusion. Workers take
  encoding requests before stage windows (``PROCESS_READ_AHEAD`` windows ahead), and the
  encoding of a window is requested right after its pass 1, up to ``ENCODE_AHEAD`` windows
  before the older ones are fused, leaving out samples already requested: without that, the
  workers waited on each other and on the main process once per window. If an older window
  is then replayed (pass 2), the later requests are discarded unused (workers keep model
  inputs until released) and made again from the new plans, so the embeddings used are
  exactly the in-process design's. Workers end with the evaluation (also on errors and
  Ctrl-C: killed by pid; a worker whose request pipe closes exits by itself).
* *threads* (``processes=0``: on one core, other backends, or an injected in-process
  backend): one thread per sensor for step 1, ``threads`` encoders in parallel for step 3
  (ONNX Runtime releases the GIL). On 2 cores this leaves ~20 % of the CPU idle (the GIL between
  the sensor threads, encoder threads and the main thread; see the measurements below).

Exactness: an encoder *failure* (non-finite output) is a bad sample for the node, which pass 1
could not know. When a sample fails to encode in step 3, or a real tick raises (the node then
keeps its previous result), the window is replayed from its start (*pass 2*) with the real
ticks inline, encoding on demand whatever the changed course needs (and replaying again if
that fails too). What stays unobserved is a failure on a sample no tick fuses;
``encode_all=True`` encodes every due message in step 1 instead (exact for that too, slower).

Sessions run single-threaded, so an encoder gives bit-identical outputs whatever the
scheduling (and the batches are the same in both designs). For the same reason BLAS (numpy's
OpenBLAS: the audio mel matrix product, point-cloud plane fits) is limited to one thread while
an evaluation runs (``threadpoolctl``, when installed; ``OPENBLAS_NUM_THREADS=1`` in the
workers): its worker threads busy-wait, and with the evaluation's own threads on every core
they made the audio features 8x slower (measured on 2 cores). Workers also run open3d (the
point-cloud DBSCAN) on one thread: 5.95 instead of 6.5 ms of CPU per cloud, same clusters.

Measured on 2 cores (AMD EPYC VM, idle, load average < 2 from these runs themselves), 120 s
``hotplug_demo`` bag, default bundle, 1251 ticks, wall time of the whole evaluation (set-up
included, as ``benchmarks/bench_bag.py``): threads 15.5-17.5 s = 71-81 ticks/s at 150-160 %
CPU; worker processes 13.3-14.1 s = 89-94 ticks/s at 184-187 % CPU (bench_bag: 89.6). Short
of the 100 ticks/s target: the work itself is ~24 s of CPU (encoders ~14 s for ~5,900
samples at ~2.5 ms, stages ~8.4 s of which the lidar DBSCAN ~4.1 s, main process ~2 s, set-up
~1.2 s in the workers), i.e. >= 12.2 s on 2 cores with no idle time at all; and the CPU per
sample grows ~5-7 % when both cores run (24.5 s of CPU at 170 %, 26.2 s at 185 %). Three or
four workers use more CPU (extra set-up) and were not faster.
"""
from __future__ import annotations

import copy
import math
import os
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnibind_ros.bag.scoring import (
    EvalResult,
    StateChange,
    TickRecord,
    phases_from_events,
    phases_from_states,
)

__all__ = ["BagEvalError", "OfflineEvaluator", "SCENARIO_TOPIC", "default_processes",
           "evaluate_offline"]

NS = 1_000_000_000
#: Topic of record-sim's scenario events (std_msgs/String, JSON; see the shared plan).
SCENARIO_TOPIC = "/omnibind/scenario_event"
#: Bag seconds handled per window: big enough for useful encoder batches, small enough to keep
#: the model inputs of one window in memory (~60 inputs/s of ~0.3 MB with 7 sensors).
WINDOW_S = 2.0
#: Largest encoder batch (the split is deterministic). EfficientNet-Lite0 at 160 px costs
#: 2.50 / 2.39 / 2.40 / 2.71 ms of CPU per sample at batch 1 / 4 / 8 / 16 (one thread; larger
#: batches spill the caches).
MAX_BATCH = 8
#: Windows the per-sensor stage may run ahead of the replay (bounds memory).
READ_AHEAD = 2
#: With worker processes: windows the stage may run ahead, and windows whose encoding may be
#: requested before the oldest of them is fused (speculatively). Bounds the model inputs a
#: worker holds (~620 with the default sensors: ~190 MB); 2/1 instead cost ~0.4 s on the
#: 120 s bag.
PROCESS_READ_AHEAD = 4
ENCODE_AHEAD = 2
#: CPU milliseconds per message of the per-sensor stage, and per encoded sample, by modality
#: (default bundle, 2 cores, 120 s hotplug_demo bag). Only used to balance the sensors over the
#: worker processes; any split gives the same results.
STAGE_MS = {"point_cloud": 6.2, "event": 0.7, "audio": 0.24, "image": 0.18, "thermal": 0.36,
            "tactile": 0.15, "text": 0.07}
ENCODE_MS = {"point_cloud": 1.2, "audio": 1.7, "text": 5.0}  # the others: ~2.55
#: CPU milliseconds a worker spends importing for a modality (open3d: DBSCAN).
SETUP_MS = {"point_cloud": 450.0}


class BagEvalError(RuntimeError):
    """The bag cannot be evaluated (no mapped topic, unusable configuration...)."""


@dataclass
class _Outcome:
    """One sensor message after the per-sensor stage.

    kind : "bad" (``reason``), "valid" (counted, not encoded) or "due" (``model_input`` or,
        once encoded, ``embedding``).
    """

    order: int
    log_ns: int
    sensor: str
    stamp_ns: int
    stamp_s: float
    kind: str
    reason: str = ""
    model_input: Any = None
    embedding: np.ndarray | None = None
    cost_s: float = 0.0  # wall time of preprocessing + its share of the encode (latency)


@dataclass
class _Plan:
    """A tick as pass 1 saw it: the store's slots and the samples the tick fuses."""

    t_ns: int
    now_s: float
    fusable: list[str]
    slots: dict[str, Any]
    used: dict[str, _Outcome]


@dataclass
class _Window:
    """A window of the bag between its per-sensor stage and its fused ticks."""

    until: int
    wid: int
    final: bool
    outcomes: list[_Outcome]
    snapshot: Any = None  # the replay state before pass 1 (pass 2 starts from it)
    plans: list[_Plan] = field(default_factory=list)
    states: list[StateChange] = field(default_factory=list)
    ticket: Any = None  # the encoding of what the plans fuse


class _Redo(Exception):
    """A sample a tick fuses failed to encode: replay the window with it as a bad sample."""


#: ``fuse(t_ns, now_s, fusable, state) -> sensors of the result, or None if the tick failed``
FuseFn = Callable[[int, float, list[str], "_Replay"], "tuple[str, ...] | None"]


@dataclass
class _Replay:
    """Everything the replay mutates (cloned per window so a window can be replayed)."""

    monitor: Any
    store: Any
    scheduler: Any
    reported_max: dict[str, float]
    refs: dict[tuple[str, float], _Outcome]
    next_timer: int = 1
    next_update: int = 1
    #: sensors of the last successful tick (the node's ``_last_result.sensors``)
    last_sensors: tuple[str, ...] | None = None
    pending_states: list[StateChange] = field(default_factory=list)
    #: float seconds given to the monitor -> exact ns (transitions carry the float back)
    ns_of: dict[float, int] = field(default_factory=dict)


def _clone(replay: _Replay) -> _Replay:
    # Locks cannot be deep-copied: give the copies fresh ones (the replay is single-threaded).
    memo: dict[int, Any] = {id(replay.monitor._lock): threading.RLock(),
                            id(replay.store._lock): threading.Lock()}
    for outcome in replay.refs.values():  # outcomes are shared, not copied
        memo[id(outcome)] = outcome
    return copy.deepcopy(replay, memo)


@dataclass
class _SensorRun:
    """Per-sensor state of the per-sensor stage (touched by one task at a time)."""

    cfg: Any
    msg_class: type
    gate: Any
    pipeline: Any
    received: int = 0
    bad: int = 0
    undecodable: int = 0
    encoded: int = 0
    first_error: str = ""


def _single_threaded_blas() -> Any:
    """Limit BLAS to one thread (see the module docstring); the limiter, or None."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only speed depends on it
        return None
    return threadpool_limits(limits=1, user_api="blas")


def _stamp_of(msg: Any, log_ns: int) -> tuple[int, float]:
    """(stamp ns, stamp s as the node computes it); header-less: the arrival time."""
    header = getattr(msg, "header", None)
    if header is None:
        return log_ns, log_ns * 1e-9
    sec, nanosec = int(header.stamp.sec), int(header.stamp.nanosec)
    return sec * NS + nanosec, sec + nanosec * 1e-9


def _sensor_runs(config: Any, bundle: Any, backend: Any,
                 names: Iterable[str] | None = None) -> dict[str, _SensorRun]:
    """The per-sensor stage state (gate, pipeline) of ``names`` (default: every sensor)."""
    from omnibind_ros.ros import perception_lifecycle as pl
    from omnibind_ros.ros.conversions import conversion_for
    from omnibind_ros.ros.sensor_worker import SampleGate, make_pipeline

    wanted = None if names is None else set(names)
    runs: dict[str, _SensorRun] = {}
    for cfg in config.sensors:
        if wanted is not None and cfg.name not in wanted:
            continue
        pipeline = make_pipeline(cfg.modality, bundle, backend)
        gate = SampleGate(conversion_for(cfg.modality, cfg.message_type), pipeline,
                          cfg.encode_rate_hz)
        runs[cfg.name] = _SensorRun(cfg, pl.message_class(cfg.message_type), gate, pipeline)
    return runs


def _batch_size(bundle: Any, modality: str) -> int:
    """Encoder batch of a modality: MAX_BATCH, or 1 for a graph with a fixed batch size."""
    spec = bundle.modalities.get(modality)
    return MAX_BATCH if spec is None or spec.input.fixed_shape[0] is None else 1


def _stage(run: _SensorRun, name: str, messages: Iterable[tuple[int, int, bytes]]
           ) -> list[_Outcome]:
    """The per-sensor stage of ``(index, log ns, CDR bytes)`` messages of one sensor, in order:
    deserialize, admit, preprocess (model inputs stay in the outcomes)."""
    from rclpy.serialization import deserialize_message

    from omnibind_ros.ros.sensor_worker import bad_reason

    out: list[_Outcome] = []
    for index, log_ns, rawdata in messages:
        run.received += 1
        try:
            msg = deserialize_message(rawdata, run.msg_class)
        except Exception as exc:  # noqa: BLE001  (rmw drops what it cannot decode)
            run.undecodable += 1
            run.first_error = run.first_error or f"message {index}: {exc}"
            continue
        stamp_ns, stamp_s = _stamp_of(msg, log_ns)
        start = time.perf_counter()
        admission = run.gate.admit(msg, stamp_s, log_ns * 1e-9)
        outcome = _Outcome(index, log_ns, name, stamp_ns, stamp_s, admission.kind,
                           admission.reason)
        if admission.kind == "due":
            try:
                outcome.model_input = run.gate.model_input(admission.payload)
            except Exception as exc:  # noqa: BLE001
                outcome.kind, outcome.reason = "bad", bad_reason(exc)
        outcome.cost_s = time.perf_counter() - start
        out.append(outcome)
    return out


def _encode_inputs(pipeline: Any, inputs: list[Any], size: int, sem: Any = None,
                   add_cpu: Callable[[float], None] | None = None
                   ) -> list[tuple[np.ndarray | None, str, float]]:
    """Embed model inputs in batches of ``size``: per input (embedding, "", wall share) or
    (None, bad reason, wall share). ``sem`` is held around each batch run."""
    from omnibind_ros.ros.sensor_worker import bad_reason, checked_embedding

    results: list[tuple[np.ndarray | None, str, float]] = []
    for i in range(0, len(inputs), size):
        batch = inputs[i:i + size]
        start, cpu0 = time.perf_counter(), time.thread_time()
        try:
            if sem is not None:
                with sem:
                    out = pipeline.encode_batch(batch)
            else:
                out = pipeline.encode_batch(batch)
            rows: list[Any] = list(out)
            if len(rows) != len(batch):
                raise ValueError(f"encoder returned {len(rows)} rows for {len(batch)}")
        except Exception:  # noqa: BLE001  (one at a time tells which input fails)
            rows = []
            for x in batch:
                try:
                    rows.append(pipeline.encode(x))
                except Exception as exc:  # noqa: BLE001
                    rows.append(exc)
        share = (time.perf_counter() - start) / len(batch)
        if add_cpu is not None:
            add_cpu(time.thread_time() - cpu0)
        for row in rows:
            try:
                if isinstance(row, BaseException):
                    raise row
                results.append((checked_embedding(row), "", share))
            except Exception as exc:  # noqa: BLE001
                results.append((None, bad_reason(exc), share))
    return results


def _backend_for(name: str, bundle: Any, modalities: Iterable[str], *, fusion: bool,
                 text: bool) -> Any:
    """A single-threaded backend with only the sessions a process needs."""
    from omnibind_ros.core.backends import create_backend

    encoders = sorted({m for m in modalities if m in bundle.modalities})
    if not encoders:  # "no modalities" means all of them to the backends: open the smallest
        encoders = [min(bundle.modalities,
                        key=lambda m: (Path(bundle.modalities[m].file).stat().st_size, m))]
    return create_backend(name, bundle, threads=1, modalities=encoders, fusion=fusion,
                          text=text)


def default_processes(backend: str = "onnxruntime") -> int:
    """Worker processes :func:`evaluate_offline` uses by default: one per core (at most 8),
    none (threads in this process) on one core or with a backend other than ONNX Runtime."""
    from omnibind_ros.core.backends import _canonical

    try:
        canonical = _canonical(backend)
    except ValueError:
        return 0
    cpus = os.cpu_count() or 1
    return min(8, cpus) if cpus > 1 and canonical == "onnxruntime" else 0


def _assign(config: Any, n: int, weights: dict[str, float] | None) -> list[list[str]]:
    """Sensors split over ``n`` workers by estimated CPU (largest first onto the least loaded
    worker); the sensors of one modality stay together (their encoder batches are shared)."""
    by_modality: dict[str, list[str]] = defaultdict(list)
    cost: dict[str, float] = defaultdict(float)
    for cfg in config.sensors:
        by_modality[cfg.modality].append(cfg.name)
        if weights is not None and cfg.name in weights:
            cost[cfg.modality] += weights[cfg.name]
        else:  # per second at the nominal rate; about one encode per fusion period at most
            rate = float(cfg.expected_rate_hz or 10.0)
            encodes = min(rate, cfg.encode_rate_hz if cfg.encode_rate_hz > 0 else rate,
                          1.1 * (float(config.fusion.rate_hz) or rate))
            cost[cfg.modality] += (rate * STAGE_MS.get(cfg.modality, 0.3)
                                   + encodes * ENCODE_MS.get(cfg.modality, 2.55))
    groups: list[list[str]] = [[] for _ in range(max(1, min(n, len(by_modality))))]
    load = [0.0] * len(groups)
    for modality in by_modality:
        cost[modality] += SETUP_MS.get(modality, 0.0) * (1.0 if weights is not None else 0.0)
    for modality in sorted(by_modality, key=lambda m: (-cost[m], m)):
        i = min(range(len(groups)), key=lambda k: (load[k], k))
        groups[i].extend(by_modality[modality])
        load[i] += cost[modality]
    return [g for g in groups if g]


def _grow_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer (fewer wake-ups per window of messages); best effort."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (OSError, ImportError):
        pass


class _WorkerProcess:
    """One worker process (``omnibind_ros.bag._offline_worker``) and its two pipes.

    The process is started with ``subprocess`` (a fresh interpreter: no rclpy or ONNX Runtime
    state is forked, and the caller's ``__main__`` is never re-imported). Requests go through a
    sender thread, so the main thread never blocks on a full pipe; replies are read when needed
    and kept by (kind, key) until asked for.
    """

    def __init__(self, sensors: list[str]) -> None:
        import queue
        import subprocess
        from multiprocessing.connection import Connection

        self.sensors = sensors
        r_req, w_req = os.pipe()
        r_rep, w_rep = os.pipe()
        for fd in (w_req, w_rep):
            _grow_pipe(fd)
        env = dict(os.environ)
        # the caller's import path (a script's or a test's directory), threads off in BLAS
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
        self._queue: Any = queue.SimpleQueue()
        self._stash: dict[tuple[str, Any], tuple[Any, ...]] = {}
        self._thread = threading.Thread(target=self._sender, daemon=True,
                                        name=f"bag_worker_{self.proc.pid}")
        self._thread.start()
        self.stats: dict[str, Any] = {}
        self._closing = False

    def _sender(self) -> None:
        while True:
            request = self._queue.get()
            if request is None:
                return
            try:
                self._out.send(request)
            except OSError:  # the worker is gone: the reader sees EOF and says why
                return

    def send(self, request: Any) -> None:
        self._queue.put(request)

    def reply(self, kind: str, key: Any) -> tuple[Any, ...]:
        """The worker's reply ``(kind, key, ...)``; BagEvalError if the worker failed."""
        while (kind, key) not in self._stash:
            try:
                msg = self._in.recv()
            except (EOFError, OSError):
                try:
                    code = self.proc.wait(timeout=5)
                except Exception:  # noqa: BLE001
                    code = None
                raise BagEvalError(f"offline evaluation worker {self.proc.pid} (sensors "
                                   f"{', '.join(self.sensors)}) ended unexpectedly (exit code "
                                   f"{code})") from None
            if msg[0] == "error":
                raise BagEvalError(f"offline evaluation worker {self.proc.pid} (sensors "
                                   f"{', '.join(self.sensors)}) failed:\n{msg[2]}")
            self._stash[(msg[0], msg[1])] = tuple(msg[2:])
        return self._stash.pop((kind, key))

    def request_close(self) -> None:
        """Ask the worker to finish (then :meth:`close`; several workers end in parallel)."""
        if not self._closing and self.proc.poll() is None:
            self.send(("close", None))
            self._closing = True

    def close(self, abort: bool) -> None:
        """Stop the worker: politely (its statistics come back), or at once with ``abort``."""
        import subprocess

        done = False
        try:
            if not abort and (self._closing or self.proc.poll() is None):
                self.request_close()
                try:
                    (self.stats,) = self.reply("closed", None)
                except BagEvalError:
                    abort = True
            self._queue.put(None)
            if abort and self.proc.poll() is None:
                self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            done = True
        finally:
            if not done:  # interrupted while closing (a second Ctrl-C): no waiting any more
                self._queue.put(None)
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
            for conn in (self._out, self._in):
                try:
                    conn.close()
                except OSError:
                    pass
            self._thread.join(timeout=5)


def start_workers(config: Any, processes: int,
                  weights: dict[str, float] | None = None) -> list[_WorkerProcess]:
    """Start the worker processes of an evaluation (they import while the caller sets up);
    give them to :class:`OfflineEvaluator` (``workers=``), which ends them."""
    workers: list[_WorkerProcess] = []
    try:
        for sensors in _assign(config, processes, weights):
            workers.append(_WorkerProcess(sensors))
    except BaseException:
        for worker in workers:
            worker.close(abort=True)
        raise
    return workers


class OfflineEvaluator:
    """Runs one offline evaluation (use :func:`evaluate_offline`).

    Parameters
    ----------
    config : a loaded ``NodeConfig``.
    bundle, backend : a loaded model bundle and an inference backend on it.
    threads : parallel tasks (sensors, encoders) of the in-process design (``processes=0``).
    encode_all : encode every due message (see the module docstring).
    processes : worker processes for the per-sensor stage and the encoders (0 = threads in
        this process). Workers create their own single-threaded ``backend.name`` backend on
        ``bundle``; ``backend`` itself then only needs the fusion head (and the text tower
        when the config's labels must be embedded).
    weights : estimated CPU per sensor, to balance the workers (default from the config).
    workers : worker processes already started by :func:`start_workers` (instead of
        ``processes``); the evaluator ends them in :meth:`close`, as its own.
    backend_wrapper : ``backend -> backend`` applied to each worker's backend (picklable:
        tests use it to inject encoder failures).
    """

    def __init__(self, config: Any, bundle: Any, backend: Any, *, threads: int = 2,
                 encode_all: bool = False, processes: int = 0,
                 weights: dict[str, float] | None = None,
                 backend_wrapper: Callable[[Any], Any] | None = None,
                 workers: list[_WorkerProcess] | None = None) -> None:
        from omnibind_ros.core.availability import AvailabilityMonitor
        from omnibind_ros.core.fusion import FusionTick, LatestEmbeddings, TickScheduler
        from omnibind_ros.ros import perception_lifecycle as pl

        self.config, self.bundle, self.backend = config, bundle, backend
        self.threads = max(1, int(threads))
        self.encode_all = bool(encode_all)
        self.timing: dict[str, float] = defaultdict(float)
        self._timing_lock = threading.Lock()
        self._workers: list[_WorkerProcess] = list(workers or [])
        self._aborted = False
        self._cpu0 = time.process_time()
        try:
            if not self._workers and processes > 0:  # first: they import while we set up
                self._workers = start_workers(config, processes, weights)
            spec = {"config": config, "bundle": bundle,
                    "backend": getattr(backend, "name", "onnxruntime"),
                    "encode_all": self.encode_all, "backend_wrapper": backend_wrapper}
            for worker in self._workers:
                worker.send({**spec, "sensors": worker.sensors})
        except BaseException:
            self.close(abort=True)
            raise
        self.processes = len(self._workers)
        self.worker_sensors = [list(w.sensors) for w in self._workers]
        self._worker_of = {name: w for w in self._workers for name in w.sensors}
        try:
            self._setup(pl, AvailabilityMonitor, FusionTick, LatestEmbeddings, TickScheduler)
        except BaseException:
            self.close(abort=True)
            raise

    def _setup(self, pl: Any, monitor_cls: Any, tick_cls: Any, store_cls: Any,
               scheduler_cls: Any) -> None:
        config, bundle, backend = self.config, self.bundle, self.backend
        names, embeddings = pl.resolve_labels(bundle, backend, config.label_names,
                                              config.label_file)
        self.fusion = pl.build_fusion_tick(bundle, backend, config.fusion, names, embeddings)
        # Same selection and no-answer rules, on 1-d placeholder embeddings: tells which
        # samples a tick fuses before they are encoded.
        f = self.fusion
        self._shadow = tick_cls(
            lambda tokens, mask: np.ones((1, 1), np.float32), ("-",),
            np.ones((1, 1), np.float32), f.logit_scale, max_age_s=f.max_age_s, top_k=1,
            min_modalities=f.min_modalities, max_tokens=f.max_tokens, pad_to=f.pad_to,
            min_quality=f.min_quality, future_tolerance_s=f.future_tolerance_s)
        self.monitor_period_ns = round(NS / pl.MONITOR_HZ)
        rate = float(config.fusion.rate_hz)
        # The node's fusion timer runs at the scheduler's period (a quarter period as the
        # deadline heartbeat when ticks follow the evidence).
        self.timer_period_ns = round(scheduler_cls(
            rate, bool(getattr(config.fusion, "tick_on_embedding", False))).timer_period_s * NS)
        # With worker processes these pipelines are not run here (the workers build their
        # own); building them checks the bundle has every configured modality all the same.
        self.sensors: dict[str, _SensorRun] = _sensor_runs(config, bundle, backend)
        self._make_monitor = lambda: monitor_cls(
            clock_jump_tolerance_s=pl.CLOCK_JUMP_TOLERANCE_S)
        self._make_store = store_cls
        self._make_scheduler = lambda: scheduler_cls(
            rate, bool(getattr(config.fusion, "tick_on_embedding", False)))
        self._sem = threading.Semaphore(self.threads)
        self._encode_pool: ThreadPoolExecutor | None = None
        self._sensor_pools: dict[str, ThreadPoolExecutor] = {}
        if not self._workers:
            self._encode_pool = ThreadPoolExecutor(self.threads,
                                                   thread_name_prefix="bag_encode")
            self._sensor_pools = {name: ThreadPoolExecutor(1, thread_name_prefix=f"bag_{name}")
                                  for name in self.sensors}
        self._blas_limits = _single_threaded_blas()
        self.fusion_errors: list[str] = []
        self._next_window = 0
        self._next_request = 0

    def close(self, abort: bool = False) -> None:
        """Release threads and worker processes (``abort``: kill the workers at once)."""
        abort = abort or self._aborted
        if not abort:
            for worker in self._workers:
                worker.request_close()
        error: BaseException | None = None
        for i, worker in enumerate(self._workers):
            try:
                worker.close(abort)
            except BaseException as exc:  # noqa: BLE001  (end the others all the same)
                abort, error = True, error or exc
            for key, value in worker.stats.items():
                if isinstance(value, (int, float)) and key != "pid":
                    self.timing[f"worker{i}.{key}"] = value
        if self._workers:
            self.timing["cpu_s.main_process"] = time.process_time() - self._cpu0
        self._workers = []
        for pool in [*filter(None, [getattr(self, "_encode_pool", None)]),
                     *getattr(self, "_sensor_pools", {}).values()]:
            pool.shutdown(wait=True, cancel_futures=True)
        if getattr(self, "_blas_limits", None) is not None:
            self._blas_limits.restore_original_limits()
            self._blas_limits = None
        if error is not None:
            raise error

    # -- per-sensor stage ------------------------------------------------------------------------

    def _sensor_stage(self, name: str, messages: list[Any]) -> list[_Outcome]:
        run = self.sensors[name]
        with self._sem:
            cpu0 = time.thread_time()
            out = _stage(run, name, [(m.index, m.log_time_ns, m.rawdata) for m in messages])
            self._add_cpu(f"cpu_s.sensor_stage.{name}", time.thread_time() - cpu0)
            if self.encode_all:
                self._encode([o for o in out if o.kind == "due"], hold_semaphore=False)
        return out

    def _add_cpu(self, key: str, seconds: float) -> None:
        with self._timing_lock:
            self.timing[key] += seconds

    def _submit_stage(self, batch: dict[str, list[Any]]) -> tuple[int, Any]:
        """Start the per-sensor stage of one window: (window number, handle)."""
        wid = self._next_window
        self._next_window += 1
        if not self._workers:
            return wid, {name: self._sensor_pools[name].submit(self._sensor_stage, name, msgs)
                         for name, msgs in batch.items() if msgs}
        for worker in self._workers:
            worker.send(("window", wid, {
                name: [(m.index, m.log_time_ns, m.rawdata) for m in batch[name]]
                for name in worker.sensors if batch.get(name)}))
        return wid, None

    def _stage_result(self, wid: int, handle: Any) -> list[_Outcome]:
        """The outcomes of a window's per-sensor stage (all sensors; any order)."""
        if not self._workers:
            return [o for f in handle.values() for o in f.result()]
        out: list[_Outcome] = []
        for worker in self._workers:
            rows, counters, cpu = worker.reply("stage", wid)
            for (order, log_ns, sensor, stamp_ns, stamp_s, kind, reason, cost_s,
                 embedding) in rows:
                o = _Outcome(order, log_ns, sensor, stamp_ns, stamp_s, kind, reason,
                             embedding=embedding, cost_s=cost_s)
                if embedding is not None:  # encode_all: encoded in the stage
                    self.sensors[sensor].encoded += 1
                out.append(o)
            for name, (received, undecodable, first_error) in counters.items():
                run = self.sensors[name]
                run.received, run.undecodable, run.first_error = (received, undecodable,
                                                                  first_error)
            for key, seconds in cpu.items():
                self.timing[key] += seconds
        return out

    def _release(self, wid: int, states: Iterable[_Replay]) -> None:
        """Workers may forget the model inputs of windows <= ``wid`` that no store of
        ``states`` holds (nothing later can fuse them)."""
        if not self._workers:
            return
        keep = {o.order for state in states for o in state.refs.values()
                if o.kind == "due" and o.embedding is None}
        for worker in self._workers:
            worker.send(("release", wid, keep))

    # -- encoding --------------------------------------------------------------------------------

    def _apply(self, o: _Outcome, embedding: np.ndarray | None, reason: str, share: float,
               failed: list[_Outcome]) -> None:
        o.cost_s += share
        o.model_input = None
        if embedding is not None:
            o.embedding = embedding
            self.sensors[o.sensor].encoded += 1
        else:
            o.kind, o.reason = "bad", reason
            failed.append(o)

    def _encode(self, outcomes: list[_Outcome], hold_semaphore: bool = True) -> list[_Outcome]:
        """Embed ``outcomes`` (same sensor or modality) in batches; return those that failed
        (marked bad)."""
        if not outcomes:
            return []
        if self._workers:
            return self._encode_wait(self._encode_start(outcomes))
        pipeline = self.sensors[outcomes[0].sensor].pipeline
        results = _encode_inputs(
            pipeline, [o.model_input for o in outcomes], _batch_size(self.bundle,
                                                                     pipeline.modality),
            self._sem if hold_semaphore else None,
            lambda s: self._add_cpu(f"cpu_s.encode.{pipeline.modality}", s))
        failed: list[_Outcome] = []
        for o, (embedding, reason, share) in zip(outcomes, results, strict=True):
            self._apply(o, embedding, reason, share, failed)
        return failed

    def _by_modality(self, outcomes: list[_Outcome]) -> list[list[_Outcome]]:
        by_modality: dict[str, list[_Outcome]] = defaultdict(list)
        for o in sorted(outcomes, key=lambda o: o.order):
            by_modality[self.sensors[o.sensor].cfg.modality].append(o)
        return [group for _, group in sorted(by_modality.items())]

    def _encode_start(self, outcomes: list[_Outcome]) -> Any:
        """Start encoding outcomes of several sensors (batched per modality, modalities in
        parallel); :meth:`_encode_wait` gives the failures. In-process: done at once."""
        groups = self._by_modality(outcomes)
        if not self._workers:
            futures = [self._encode_pool.submit(self._encode, g) for g in groups]
            return [o for f in futures for o in f.result()]
        request = self._next_request
        self._next_request += 1
        per_worker: dict[int, list[list[_Outcome]]] = defaultdict(list)
        for group in groups:
            per_worker[self._workers.index(self._worker_of[group[0].sensor])].append(group)
        for i, worker_groups in per_worker.items():
            self._workers[i].send(("encode", request,
                                   [[o.order for o in g] for g in worker_groups]))
        return request, per_worker

    def _ticket_outcomes(self, ticket: Any) -> list[_Outcome]:
        if not self._workers or ticket is None:
            return []
        return [o for groups in ticket[1].values() for g in groups for o in g]

    def _encode_discard(self, ticket: Any) -> None:
        """Wait for a request's embeddings and drop them (the plan they were for is off)."""
        request, per_worker = ticket
        for i in sorted(per_worker):
            self._workers[i].reply("encoded", request)
        self.timing["encodes_discarded"] += 1

    def _encode_wait(self, ticket: Any) -> list[_Outcome]:
        if not self._workers:
            return ticket
        request, per_worker = ticket
        failed: list[_Outcome] = []
        for i, worker_groups in sorted(per_worker.items()):
            results, cpu = self._workers[i].reply("encoded", request)
            outcomes = [o for g in worker_groups for o in g]
            for o, (embedding, reason, share) in zip(outcomes, results, strict=True):
                self._apply(o, embedding, reason, share, failed)
            for key, seconds in cpu.items():
                self.timing[key] += seconds
        return failed

    def _encode_group(self, outcomes: list[_Outcome]) -> list[_Outcome]:
        """Encode outcomes of several sensors: batched per modality, modalities in parallel."""
        return self._encode_wait(self._encode_start(outcomes))

    # -- replay ----------------------------------------------------------------------------------

    def new_replay(self, start_ns: int) -> _Replay:
        monitor = self._make_monitor()
        for cfg in self.config.sensors:
            monitor.add_sensor(cfg.monitor_config(self.config.bad_samples_to_degrade),
                               start_ns * 1e-9)
        return _Replay(monitor, self._make_store(), self._make_scheduler(), {}, {})

    def replay(self, state: _Replay, outcomes: list[_Outcome], start_ns: int, until_ns: int,
               final: bool, fuse: FuseFn) -> None:
        """Feed ``outcomes`` (log-time order) and the timers up to ``until_ns`` (exclusive;
        inclusive when ``final``) through monitor, store and scheduler; ``fuse`` runs the
        ticks (the node's ``_on_embedding`` and ``_fusion_tick``, without the threads)."""
        from omnibind_ros.core.fusion import EmbeddingSlot
        from omnibind_ros.ros.perception_lifecycle import tick_due

        monitor, scheduler = state.monitor, state.scheduler
        placeholder = np.ones(1, dtype=np.float32)  # embeddings are looked up by the fuse step

        def fusion_tick(t_ns: int, now_s: float, sensor: str | None,
                        trigger: str = "timer") -> None:
            # PerceptionNode._fusion_tick: the same triggers and the same scheduler calls.
            fusable = monitor.fusable(now_s, self.fusion.max_age_s)
            if sensor is not None:
                trigger = "embedding"
            if not tick_due(scheduler, state.store, trigger, now_s, fusable, sensor,
                            state.last_sensors):
                return
            scheduler.ticked(now_s)
            used = fuse(t_ns, now_s, fusable, state)
            if used is not None:
                state.last_sensors = used

        def timers_until(t_ns: int, inclusive: bool) -> None:
            while True:
                timer = (start_ns + state.next_timer * self.timer_period_ns
                         if self.timer_period_ns else math.inf)
                update = start_ns + state.next_update * self.monitor_period_ns
                nxt = min(timer, update)
                if nxt > t_ns or (nxt == t_ns and not inclusive):
                    return
                if timer <= update:
                    state.next_timer += 1
                    fusion_tick(int(timer), timer * 1e-9, None)
                else:
                    state.next_update += 1
                    monitor_tick(update)

        def monitor_tick(t_ns: int) -> None:
            # PerceptionNode._monitor_tick: a fused sensor that changed state ticks at once.
            changed = self._collect_states(state, t_ns)
            last = state.last_sensors
            if last is not None and any(name in last for name in changed):
                fusion_tick(t_ns, t_ns * 1e-9, None, trigger="change")

        for o in outcomes:
            timers_until(o.log_ns, inclusive=False)
            now_s = o.log_ns * 1e-9
            state.ns_of[now_s] = o.log_ns
            if o.kind == "bad":
                monitor.on_bad_sample(o.sensor, now_s, o.reason)
                continue
            # SensorWorker._report_valid: a stamp not above the highest reported one was
            # counted already (cannot happen in order, kept for fidelity).
            if o.stamp_s <= state.reported_max.get(o.sensor, -math.inf):
                continue
            state.reported_max[o.sensor] = o.stamp_s
            accepted = monitor.on_sample(o.sensor, o.stamp_s, now_s)
            if o.kind != "due" or not accepted:
                continue
            cfg = self.sensors[o.sensor].cfg
            state.store.put(EmbeddingSlot(cfg.name, cfg.modality, o.stamp_s, placeholder),
                            now_s)
            state.refs[(cfg.name, o.stamp_s)] = o
            fusion_tick(o.log_ns, now_s, cfg.name)
        timers_until(until_ns, inclusive=final)
        if final:
            monitor_tick(until_ns)
        self._forget_unreachable(state)

    @staticmethod
    def _forget_unreachable(state: _Replay) -> None:
        """Drop references to samples the store no longer holds (memory)."""
        held = {(name, slot.stamp_s) for name, slot in state.store.snapshot().items()}
        for key in [k for k in state.refs if k not in held]:
            del state.refs[key]

    @staticmethod
    def _collect_states(state: _Replay, now_ns: int) -> list[str]:
        """Evaluate the monitor at ``now_ns``; record its changes; return the changed names."""
        state.ns_of[now_ns * 1e-9] = now_ns
        changed = []
        for t in state.monitor.update(now_ns * 1e-9):
            t_ns = state.ns_of.get(t.time_s, round(t.time_s * NS))
            state.pending_states.append(StateChange(t_ns, t.name, t.new.name, t.reason))
            changed.append(t.name)
        state.ns_of.clear()  # update() returned every queued change: none refers to these
        return changed

    # -- fusion ----------------------------------------------------------------------------------

    def _selected(self, now_s: float, fusable: list[str], state: _Replay) -> Any:
        """The shadow tick: which stored samples the real tick fuses (no embeddings needed:
        token selection and the no-answer rules read stamps, sensors and modalities only)."""
        return self._shadow.tick(state.store, fusable, now_s)

    def planner(self, plans: list[_Plan]) -> FuseFn:
        """Pass 1: run the ticks in shadow, recording what each one fuses."""
        def fuse(t_ns: int, now_s: float, fusable: list[str], state: _Replay
                 ) -> tuple[str, ...] | None:
            shadow = self._selected(now_s, fusable, state)
            snapshot = state.store.snapshot()
            used = {name: state.refs[(name, snapshot[name].stamp_s)] for name in shadow.sensors}
            plans.append(_Plan(t_ns, now_s, fusable, snapshot, used))
            return shadow.sensors
        return fuse

    def _fuse(self, t_ns: int, now_s: float, fusable: list[str], slots: dict[str, Any],
              used: list[_Outcome], records: list[TickRecord]) -> tuple[str, ...] | None:
        """The real tick on ``slots`` whose ``used`` samples carry their embeddings; appends
        its TickRecord; returns its sensors, None if fusion raised (the node logs that and
        publishes nothing)."""
        from omnibind_ros.core.fusion import EmbeddingSlot

        start = time.perf_counter()
        slots = dict(slots)
        for o in used:
            slots[o.sensor] = EmbeddingSlot(o.sensor, slots[o.sensor].modality, o.stamp_s,
                                            o.embedding)
        try:
            result = self.fusion.tick(slots, fusable, now_s)
        except Exception as exc:  # noqa: BLE001
            self.fusion_errors.append(f"t={now_s:.3f}: {exc}")
            return None
        spent = time.perf_counter() - start
        if result.sensors != tuple(o.sensor for o in used):  # the same selection code
            raise RuntimeError(f"fusion used {result.sensors}, the plan "
                               f"{[o.sensor for o in used]}")
        if not result.answered:
            records.append(TickRecord(t_ns, None, (), (), "", (), result.no_answer_reason,
                                      spent))
        else:
            newest = max(used, key=lambda o: o.stamp_ns)
            records.append(TickRecord(
                t_ns, newest.stamp_ns, result.sensors, result.modalities, result.best_label,
                result.top_labels, "", spent + newest.cost_s, round(result.best_score, 6)))
        return result.sensors

    def fuser(self, records: list[TickRecord]) -> FuseFn:
        """Pass 2 (when pass 1's plan cannot be used): the real ticks inline; a sample not
        encoded yet is encoded here, and if that fails, :class:`_Redo`."""
        def fuse(t_ns: int, now_s: float, fusable: list[str], state: _Replay
                 ) -> tuple[str, ...] | None:
            shadow = self._selected(now_s, fusable, state)
            slots = state.store.snapshot()
            used = []
            for name in shadow.sensors:
                o = state.refs[(name, slots[name].stamp_s)]
                if o.embedding is None and (o.kind != "due" or self._encode([o])):
                    raise _Redo(name)
                used.append(o)
            return self._fuse(t_ns, now_s, fusable, slots, used, records)
        return fuse

    # -- driver ----------------------------------------------------------------------------------

    def run(self, messages: Iterable[Any], start_ns: int, *,
            topics: dict[str, str] | None = None,
            on_other: Callable[[Any], None] | None = None,
            progress: Callable[[int], None] | None = None) -> tuple[
                list[TickRecord], list[StateChange], int]:
        """Evaluate ``messages`` (BagMessage-like: topic, log_time_ns, rawdata, index; log-time
        order) from bag time ``start_ns``.

        ``topics`` maps topic -> sensor (default: every configured sensor's topic; leave out
        topics whose type does not match). Messages of other topics go to ``on_other``.

        Returns (ticks, state changes, last log time). An exception of the message iterator
        (a damaged bag) ends the reading; everything read before it is evaluated, and the
        exception is left in ``self.read_error``.
        """
        try:
            return self._run(messages, start_ns, topics, on_other, progress)
        except BaseException:
            self._aborted = True  # close() kills the workers instead of waiting for them
            raise

    def _run(self, messages: Iterable[Any], start_ns: int, topics: dict[str, str] | None,
             on_other: Callable[[Any], None] | None,
             progress: Callable[[int], None] | None) -> tuple[
                 list[TickRecord], list[StateChange], int]:
        if topics is None:
            topics = {run.cfg.topic: name for name, run in self.sensors.items()}
        window_ns = round(WINDOW_S * NS)
        state = self.new_replay(start_ns)
        ticks: list[TickRecord] = []
        states: list[StateChange] = []
        pending: deque[tuple[int, int, Any]] = deque()  # (until, window number, stage handle)
        planned: deque[_Window] = deque()  # pass 1 done, not yet fused
        self.read_error: BaseException | None = None
        last_ns = start_ns
        # With worker processes, pass 1 of window k+1 runs, and its encoding is requested,
        # while the workers encode window k: pass 1 needs no embedding, and the encoders never
        # wait for the main process. If window k is then replayed (pass 2), what k+1 fuses may
        # change: its request is discarded unused and made again from the new plan.
        overlap = bool(self._workers)

        def dispatch(batch: dict[str, list[Any]], until: int) -> None:
            wid, handle = self._submit_stage(batch)
            pending.append((until, wid, handle))

        def plan(until: int, wid: int, handle: Any, final: bool) -> _Window:
            t0 = time.perf_counter()
            outcomes = sorted(self._stage_result(wid, handle),
                              key=lambda o: (o.log_ns, o.order))
            self.timing["wait_sensor_stage_s"] += time.perf_counter() - t0
            window = _Window(until, wid, final, outcomes)
            replan(window)
            return window

        def replan(window: _Window) -> None:
            # pass 1: replay with shadow ticks, recording what each tick fuses
            t0 = time.perf_counter()
            window.snapshot = _clone(state)
            window.plans = []
            self.replay(state, window.outcomes, start_ns, window.until, window.final,
                        self.planner(window.plans))
            window.states, state.pending_states = state.pending_states, []
            self.timing["replay_s"] += time.perf_counter() - t0

        def request(window: _Window, in_flight: list[_Window] | None = None) -> None:
            """Request the encoding of what the window fuses; samples requested ``in_flight``
            (by earlier windows, not back yet) are left out: they will have their embedding,
            or an earlier window is replayed and this request discarded."""
            skip = {id(o) for w in in_flight or () for o in self._ticket_outcomes(w.ticket)}
            needed = {id(o): o for plan in window.plans for o in plan.used.values()
                      if o.embedding is None and o.kind == "due" and id(o) not in skip}
            t0 = time.perf_counter()
            window.ticket = self._encode_start(list(needed.values()))
            self.timing["encode_s"] += time.perf_counter() - t0

        def complete(window: _Window) -> bool:
            """Fuse a planned window; True if it was replayed (``state`` replaced)."""
            nonlocal state
            t0 = time.perf_counter()
            failed = self._encode_wait(window.ticket)  # failures: bad samples
            t1 = time.perf_counter()
            records: list[TickRecord] = []
            exact = not failed and all(
                self._fuse(plan.t_ns, plan.now_s, plan.fusable, plan.slots,
                           list(plan.used.values()), records) is not None
                for plan in window.plans)
            # pass 2, only when the plan is off: a sample failed to encode (a bad sample the
            # plan counted as valid) or a tick raised (the node's last result differs). The
            # window is replayed from its start with the real ticks inline.
            replayed = not exact
            while not exact:
                self.timing["windows_replayed"] += 1
                state = _clone(window.snapshot)
                records = []
                try:
                    self.replay(state, window.outcomes, start_ns, window.until, window.final,
                                self.fuser(records))
                    exact = True
                except _Redo:
                    pass
            if replayed:
                window.states, state.pending_states = state.pending_states, []
            ticks.extend(records)
            states.extend(window.states)
            self.timing["encode_s"] += t1 - t0
            self.timing["fuse_s"] += time.perf_counter() - t1
            if progress is not None:
                progress(window.until)
            return replayed

        def advance(last: bool) -> None:
            """Plan the oldest dispatched window, encode what it fuses and fuse it."""
            until, wid, handle = pending.popleft()
            final = last and not pending
            window = plan(max(until, last_ns) if final else until, wid, handle, final)
            request(window)
            complete(window)

        def finish_oldest() -> None:
            """Fuse the oldest planned window; if it was replayed, the later ones are planned
            and requested again (their requests discarded unused)."""
            previous = planned.popleft()
            if complete(previous):
                for window in planned:
                    self._encode_discard(window.ticket)
                for i, window in enumerate(planned):
                    replan(window)
                    request(window, in_flight=list(planned)[:i])
            self._release(previous.wid, [state, *(w.snapshot for w in planned)])

        def advance_overlapped(last: bool) -> None:
            """Plan the oldest dispatched window and request its encoding (speculatively:
            before the windows still being encoded are fused), then fuse the oldest planned
            window once ``ENCODE_AHEAD`` others are in flight behind it."""
            until, wid, handle = pending.popleft()
            final = last and not pending
            window = plan(max(until, last_ns) if final else until, wid, handle, final)
            request(window, in_flight=list(planned))
            planned.append(window)
            while len(planned) > ENCODE_AHEAD:
                finish_oldest()

        step = advance_overlapped if overlap else advance
        read_ahead = PROCESS_READ_AHEAD if overlap else READ_AHEAD
        window_end = start_ns + window_ns
        batch: dict[str, list[Any]] = defaultdict(list)
        iterator: Iterator[Any] = iter(messages)
        try:
            for m in iterator:
                while m.log_time_ns >= window_end:
                    dispatch(batch, window_end)
                    batch = defaultdict(list)
                    window_end += window_ns
                    while len(pending) > read_ahead:
                        step(last=False)
                name = topics.get(m.topic)
                if name is not None:
                    batch[name].append(m)
                elif on_other is not None:
                    on_other(m)
                last_ns = max(last_ns, m.log_time_ns)
        except Exception as exc:  # noqa: BLE001  (a damaged bag: keep what was read)
            self.read_error = exc
        dispatch(batch, last_ns)
        while pending:
            step(last=True)
        while planned:
            finish_oldest()
        return ticks, states, last_ns


def _progress_bar(enabled: bool, start_ns: int, end_ns: int) -> tuple[Callable[[int], None],
                                                                     Callable[[], None]]:
    if not enabled:
        return (lambda _t: None), (lambda: None)
    from tqdm import tqdm

    total = max(0.0, (end_ns - start_ns) / NS)
    bar = tqdm(total=round(total, 1), unit="bag s", desc="offline eval", leave=False)
    done = [0.0]

    def update(t_ns: int) -> None:
        now = round(min(total, max(0.0, (t_ns - start_ns) / NS)), 1)
        bar.update(max(0.0, now - done[0]))
        done[0] = max(done[0], now)

    return update, bar.close


def _map_topics(info: Any, config: Any, truth_topic: str) -> tuple[dict[str, str],
                                                                   dict[str, str]]:
    """(topic -> sensor name, skipped topic -> why) from the bag's topics and the config."""
    from omnibind_ros.bag.config import map_topics

    mapped, skipped = map_topics(info.topics, config.sensors, (truth_topic, SCENARIO_TOPIC))
    return {topic: cfg.name for topic, cfg in mapped.items()}, skipped


def _weights(config: Any, info: Any, mapped: dict[str, str]) -> dict[str, float]:
    """Estimated CPU ms per sensor on this bag (message counts x STAGE_MS / ENCODE_MS; at most
    about one encoded sample per fusion period), to balance the worker processes."""
    counts = {mapped[t]: n for t, (_, n) in info.topics.items() if t in mapped}
    rate = float(config.fusion.rate_hz) or 10.0
    fused = max(1.0, info.duration_s * rate * 1.1)
    out = {}
    for cfg in config.sensors:
        n = counts.get(cfg.name, 0)
        due = n if cfg.encode_rate_hz <= 0 else min(n, info.duration_s * cfg.encode_rate_hz)
        out[cfg.name] = (n * STAGE_MS.get(cfg.modality, 0.3)
                         + min(due, fused) * ENCODE_MS.get(cfg.modality, 2.55))
    return out


def evaluate_offline(bag: str | Path, *, bundle: str | Path | None = None,
                     config: str | Path | None = None, truth_csv: str | Path | None = None,
                     truth_topic: str = "/omnibind/ground_truth",
                     backend: str = "onnxruntime", threads: int | None = None,
                     progress: bool = True, encode_all: bool = False,
                     processes: int | None = None) -> EvalResult:
    """Evaluate a bag offline (see the module docstring).

    Parameters
    ----------
    bag : rosbag2 directory (or a bare .mcap/.db3).
    bundle : model bundle; None = the config's ``bundle_path``, else the default bundle.
    config : the node's parameter YAML (topic -> sensor mapping, fusion, labels); None = the
        package's ``config/perception.yaml``.
    truth_csv : ground truth as labelled intervals (replaces the truth topic).
    truth_topic : ground-truth topic (omnibind_ros/msg/GroundTruth).
    backend : inference backend (sessions single-threaded: deterministic outputs).
    threads : parallel sensors/encoders of the in-process design (``processes=0``); None =
        the machine's cores (at most 8).
    progress : a progress bar (tqdm) on stderr.
    encode_all : encode every due message, not only the fused ones.
    processes : worker processes for the per-sensor stages and encoders; 0 = threads in this
        process; None = :func:`default_processes` (one per core; 0 on one core or with a
        backend other than ONNX Runtime). The results are the same either way.

    Raises
    ------
    FileNotFoundError : bag, bundle or config missing.
    BagEvalError : no topic of the bag maps to a configured sensor (the message lists both),
        or nothing of the bag is readable.
    ConfigError, TruthError : an unusable config or ground-truth CSV.

    A bag damaged part-way is not an error: the result holds everything up to the damage and
    ``error`` names the position.
    """
    import os

    from omnibind_ros.ros.env import ensure_safe_ros_env

    ensure_safe_ros_env()  # rclpy (serialization) is imported below
    from omnibind_ros.bag.config import load_node_config
    from omnibind_ros.bag.reader import BagReadError, iter_messages, open_info
    from omnibind_ros.bag.truth import GroundTruth
    from omnibind_ros.core.backends import create_backend
    from omnibind_ros.core.bundle import default_bundle_dir, load_bundle

    wall0 = time.perf_counter()
    bag = Path(bag)
    cfg = load_node_config(config)
    try:
        info = open_info(bag)
    except BagReadError as exc:
        raise BagEvalError(f"nothing of bag {bag} is readable: {exc}") from exc
    mapped, skipped = _map_topics(info, cfg, truth_topic)
    if not mapped:
        raise BagEvalError(
            f"no topic of bag {bag} belongs to a configured sensor. Bag topics: "
            + (", ".join(f"{t} ({v[0]})" for t, v in sorted(info.topics.items())) or "none")
            + ". Configured sensors ("
            + (str(cfg.path) if cfg.path else "defaults") + "): "
            + ", ".join(f"{s.name} on {s.topic} ({s.message_type})" for s in cfg.sensors)
            + ". Pass the node configuration the bag was recorded for (--config).")
    bundle_path = bundle or cfg.params.get("bundle_path") or default_bundle_dir()
    n_threads = threads if threads else min(8, os.cpu_count() or 1)
    n_procs = default_processes(backend) if processes is None else max(0, int(processes))
    # the workers start first: they import while this process loads the bundle
    workers = start_workers(cfg, n_procs, _weights(cfg, info, mapped)) if n_procs else []
    try:
        model = load_bundle(bundle_path)
        if workers:
            # the workers hold the encoders; here only fusion (and the text tower when the
            # config's labels must be embedded)
            engine = _backend_for(backend, model, (), fusion=True,
                                  text=bool(cfg.label_names or cfg.label_file))
        else:
            engine = create_backend(backend, model, threads=1)
        evaluator = OfflineEvaluator(cfg, model, engine, threads=n_threads,
                                     encode_all=encode_all, workers=workers)
    except BaseException:
        for worker in workers:
            worker.close(abort=True)
        raise
    truth_msgs: list[tuple[int, Any]] = []
    events: list[tuple[int, str]] = []

    def on_other(m: Any) -> None:
        from rclpy.serialization import deserialize_message

        if m.topic == truth_topic and truth_csv is None:
            from omnibind_ros.msg import GroundTruth as GroundTruthMsg

            truth_msgs.append((m.log_time_ns, deserialize_message(m.rawdata, GroundTruthMsg)))
        elif m.topic == SCENARIO_TOPIC:
            from std_msgs.msg import String

            events.append((m.log_time_ns, deserialize_message(m.rawdata, String).data))

    update, close_bar = _progress_bar(progress, info.start_ns, info.end_ns)
    setup_s = time.perf_counter() - wall0
    try:
        # Every topic is read (unknown ones are dropped in on_other): the evaluation spans the
        # bag from its first to its last message, whatever their topic.
        ticks, states, last_ns = evaluator.run(iter_messages(bag), info.start_ns,
                                               topics=mapped, on_other=on_other,
                                               progress=update)
    finally:
        close_bar()
        evaluator.close()
    error = None
    if evaluator.read_error is not None:
        exc = evaluator.read_error
        if not isinstance(exc, BagReadError):
            raise exc
        error = str(exc)
    end_ns = last_ns
    if truth_csv is not None:
        truth = GroundTruth.from_csv(truth_csv, info.start_ns)
    elif truth_msgs:
        truth = GroundTruth.from_messages(truth_msgs, end_ns)
    else:
        truth = None
    names = [s.name for s in cfg.sensors]
    if events:
        phases = phases_from_events(events, names, info.start_ns, end_ns)
    else:
        phases = phases_from_states(states, names, info.start_ns, end_ns)
    sensors_extra = {}
    for name, run in evaluator.sensors.items():
        sensors_extra[name] = {"topic": run.cfg.topic, "modality": run.cfg.modality,
                               "mapped": run.cfg.topic in mapped, "messages": run.received,
                               "undecodable": run.undecodable, "encoded": run.encoded}
        if run.first_error:
            sensors_extra[name]["first_undecodable"] = run.first_error
    wall = time.perf_counter() - wall0
    extra = {
        "config": str(cfg.path) if cfg.path else None,
        "bundle": str(Path(bundle_path)),
        "backend": getattr(engine, "name", backend),
        "encode_all": encode_all,
        "fusion": {"rate_hz": cfg.fusion.rate_hz, "max_age_s": cfg.fusion.max_age_s,
                   "min_modalities": cfg.fusion.min_modalities, "top_k": cfg.fusion.top_k,
                   "tick_on_embedding": bool(getattr(cfg.fusion, "tick_on_embedding", False))},
        "labels": list(evaluator.fusion.label_names),
        "sensors": sensors_extra,
        "truth_source": ("csv" if truth_csv is not None else
                         truth_topic if truth_msgs else None),
        "scenario_events": len(events),
        "unknown_params": list(cfg.unknown),
        "fusion_errors": evaluator.fusion_errors[:20],
        "timing": {"setup_s": round(setup_s, 3), "threads": n_threads,
                   "processes": len(evaluator.worker_sensors),
                   "worker_sensors": evaluator.worker_sensors,
                   **{k: round(v, 3) for k, v in evaluator.timing.items()}},
    }
    return EvalResult(
        bag=str(bag), mode="offline", ticks=ticks, states=states, truth=truth, phases=phases,
        sensors=names, skipped_topics=skipped, error=error, wall_s=wall, extra=extra,
        start_ns=info.start_ns, end_ns=end_ns,
        modalities={s.name: s.modality for s in cfg.sensors})
