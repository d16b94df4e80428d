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

1. *per-sensor stage* (one sequential task per sensor, sensors in parallel, up to
   ``READ_AHEAD`` windows ahead of the rest): deserialize, admit, preprocess. Sensors are
   independent until the monitor, and their preprocessors (audio, tactile) keep state, so each
   sensor's messages stay in order on one task at a time;
2. *pass 1* (main thread, log-time order): monitor, store and scheduler over the window's
   outcomes, with *shadow* ticks: a ``FusionTick`` with the node's selection and no-answer
   rules on 1-d placeholder embeddings. Which samples a tick fuses, and whether it answers,
   depend on stamps, sensors and modalities only, so the shadow tells exactly which samples the
   real ticks will fuse (and the node's "a sensor joining ticks at once" rule, which reads the
   previous tick's sensors, sees the same sensors);
3. *encode* only those samples (batched per encoder, encoders in parallel; ONNX Runtime
   releases the GIL). A sample no tick fuses is never encoded: its embedding cannot change any
   answer;
4. *fuse*: the real ticks of pass 1, in order.

Exactness: an encoder *failure* (non-finite output) is a bad sample for the node, which pass 1
could not know. When a sample fails to encode in step 3, or a real tick raises (the node then
keeps its previous result), the window is replayed from its start (*pass 2*) with the real
ticks inline, encoding on demand whatever the changed course needs (and replaying again if
that fails too). What stays unobserved is a failure on a sample no tick fuses;
``encode_all=True`` encodes every due message in step 1 instead (exact for that too, slower).

Sessions run single-threaded (``threads`` parallelises across sensors and encoders instead), so
an encoder gives bit-identical outputs whatever the scheduling. For the same reason BLAS
(numpy's OpenBLAS: the audio mel matrix product, point-cloud plane fits) is limited to one
thread while an evaluation runs (``threadpoolctl``, when installed): its worker threads
busy-wait, and with the evaluation's own threads on every core they made the audio features
8x slower (measured on 2 cores).
"""
from __future__ import annotations

import copy
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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

__all__ = ["BagEvalError", "OfflineEvaluator", "SCENARIO_TOPIC", "evaluate_offline"]

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


class OfflineEvaluator:
    """Runs one offline evaluation (use :func:`evaluate_offline`).

    Parameters
    ----------
    config : a loaded ``NodeConfig``.
    bundle, backend : a loaded model bundle and an inference backend on it.
    threads : parallel tasks (sensors, encoders).
    encode_all : encode every due message (see the module docstring).
    """

    def __init__(self, config: Any, bundle: Any, backend: Any, *, threads: int = 2,
                 encode_all: bool = False) -> None:
        from omnibind_ros.core.availability import AvailabilityMonitor
        from omnibind_ros.core.fusion import FusionTick, LatestEmbeddings, TickScheduler
        from omnibind_ros.ros import perception_lifecycle as pl
        from omnibind_ros.ros.sensor_worker import SampleGate, make_pipeline

        self.config, self.bundle, self.backend = config, bundle, backend
        self.threads = max(1, int(threads))
        self.encode_all = bool(encode_all)
        names, embeddings = pl.resolve_labels(bundle, backend, config.label_names,
                                              config.label_file)
        self.fusion = pl.build_fusion_tick(bundle, backend, config.fusion, names, embeddings)
        # Same selection and no-answer rules, on 1-d placeholder embeddings: tells which
        # samples a tick fuses before they are encoded.
        f = self.fusion
        self._shadow = FusionTick(
            lambda tokens, mask: np.ones((1, 1), np.float32), ("-",),
            np.ones((1, 1), np.float32), f.logit_scale, max_age_s=f.max_age_s, top_k=1,
            min_modalities=f.min_modalities, max_tokens=f.max_tokens, pad_to=f.pad_to,
            min_quality=f.min_quality, future_tolerance_s=f.future_tolerance_s)
        self.monitor_period_ns = round(NS / pl.MONITOR_HZ)
        rate = float(config.fusion.rate_hz)
        self.timer_period_ns = round(NS / rate) if rate > 0 else 0
        self.sensors: dict[str, _SensorRun] = {}
        for cfg in config.sensors:
            pipeline = make_pipeline(cfg.modality, bundle, backend)
            from omnibind_ros.ros.conversions import conversion_for

            gate = SampleGate(conversion_for(cfg.modality, cfg.message_type), pipeline,
                              cfg.encode_rate_hz)
            self.sensors[cfg.name] = _SensorRun(cfg, pl.message_class(cfg.message_type), gate,
                                                pipeline)
        self._make_monitor = lambda: AvailabilityMonitor(
            clock_jump_tolerance_s=pl.CLOCK_JUMP_TOLERANCE_S)
        self._make_store = LatestEmbeddings
        self._make_scheduler = lambda: TickScheduler(
            rate, bool(getattr(config.fusion, "tick_on_embedding", False)))
        self._sem = threading.Semaphore(self.threads)
        self._encode_pool = ThreadPoolExecutor(self.threads, thread_name_prefix="bag_encode")
        self._sensor_pools = {name: ThreadPoolExecutor(1, thread_name_prefix=f"bag_{name}")
                              for name in self.sensors}
        self._batchable = {m: spec.input.fixed_shape[0] is None
                           for m, spec in bundle.modalities.items()}
        self.timing: dict[str, float] = defaultdict(float)
        self._timing_lock = threading.Lock()
        self._blas_limits = _single_threaded_blas()
        self.fusion_errors: list[str] = []

    def close(self) -> None:
        for pool in [self._encode_pool, *self._sensor_pools.values()]:
            pool.shutdown(wait=True, cancel_futures=True)
        if self._blas_limits is not None:
            self._blas_limits.restore_original_limits()
            self._blas_limits = None

    # -- per-sensor stage ------------------------------------------------------------------------

    def _sensor_stage(self, name: str, messages: list[Any]) -> list[_Outcome]:
        from rclpy.serialization import deserialize_message

        from omnibind_ros.ros.sensor_worker import bad_reason

        run = self.sensors[name]
        out: list[_Outcome] = []
        with self._sem:
            cpu0 = time.thread_time()
            for m in messages:
                run.received += 1
                try:
                    msg = deserialize_message(m.rawdata, run.msg_class)
                except Exception as exc:  # noqa: BLE001  (rmw drops what it cannot decode)
                    run.undecodable += 1
                    run.first_error = run.first_error or f"message {m.index}: {exc}"
                    continue
                stamp_ns, stamp_s = _stamp_of(msg, m.log_time_ns)
                start = time.perf_counter()
                admission = run.gate.admit(msg, stamp_s, m.log_time_ns * 1e-9)
                outcome = _Outcome(m.index, m.log_time_ns, name, stamp_ns, stamp_s,
                                   admission.kind, admission.reason)
                if admission.kind == "due":
                    try:
                        outcome.model_input = run.gate.model_input(admission.payload)
                    except Exception as exc:  # noqa: BLE001
                        outcome.kind, outcome.reason = "bad", bad_reason(exc)
                outcome.cost_s = time.perf_counter() - start
                out.append(outcome)
            self._add_cpu(f"cpu_s.sensor_stage.{name}", time.thread_time() - cpu0)
            if self.encode_all:
                self._encode([o for o in out if o.kind == "due"], hold_semaphore=False)
        return out

    def _add_cpu(self, key: str, seconds: float) -> None:
        with self._timing_lock:
            self.timing[key] += seconds

    # -- encoding --------------------------------------------------------------------------------

    def _encode(self, outcomes: list[_Outcome], hold_semaphore: bool = True) -> list[_Outcome]:
        """Embed ``outcomes`` (same sensor or modality) in batches; return those that failed
        (marked bad)."""
        from omnibind_ros.ros.sensor_worker import bad_reason, checked_embedding

        if not outcomes:
            return []
        pipeline = self.sensors[outcomes[0].sensor].pipeline
        size = MAX_BATCH if self._batchable.get(pipeline.modality, True) else 1
        failed = []
        for i in range(0, len(outcomes), size):
            batch = outcomes[i:i + size]
            start, cpu0 = time.perf_counter(), time.thread_time()
            try:
                if hold_semaphore:
                    with self._sem:
                        out = pipeline.encode_batch([o.model_input for o in batch])
                else:
                    out = pipeline.encode_batch([o.model_input for o in batch])
                rows: list[Any] = list(out)
                if len(rows) != len(batch):
                    raise ValueError(f"encoder returned {len(rows)} rows for {len(batch)}")
            except Exception:  # noqa: BLE001  (one at a time tells which input fails)
                rows = []
                for o in batch:
                    try:
                        rows.append(pipeline.encode(o.model_input))
                    except Exception as exc:  # noqa: BLE001
                        rows.append(exc)
            share = (time.perf_counter() - start) / len(batch)
            self._add_cpu(f"cpu_s.encode.{pipeline.modality}", time.thread_time() - cpu0)
            for o, row in zip(batch, rows, strict=True):
                o.cost_s += share
                try:
                    if isinstance(row, BaseException):
                        raise row
                    o.embedding = checked_embedding(row)
                    o.model_input = None
                    self.sensors[o.sensor].encoded += 1
                except Exception as exc:  # noqa: BLE001
                    o.kind, o.reason, o.model_input = "bad", bad_reason(exc), None
                    failed.append(o)
        return failed

    def _encode_group(self, outcomes: list[_Outcome]) -> list[_Outcome]:
        """Encode outcomes of several sensors: batched per modality, modalities in parallel."""
        by_modality: dict[str, list[_Outcome]] = defaultdict(list)
        for o in sorted(outcomes, key=lambda o: o.order):
            by_modality[self.sensors[o.sensor].cfg.modality].append(o)
        futures = [self._encode_pool.submit(self._encode, group)
                   for _, group in sorted(by_modality.items())]
        return [o for f in futures for o in f.result()]

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

        monitor, scheduler = state.monitor, state.scheduler
        placeholder = np.ones(1, dtype=np.float32)  # embeddings are looked up by the fuse step

        def fusion_tick(t_ns: int, now_s: float, sensor: str | None) -> None:
            fusable = monitor.fusable(now_s, self.fusion.max_age_s)
            if sensor is not None:
                last = state.last_sensors
                joins = sensor in fusable and (last is None or sensor not in last)
                due = scheduler.embedding_due(now_s, joins=joins)
            else:
                due = scheduler.timer_due(now_s)
            if not due:
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
                    self._collect_states(state, update)

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
            self._collect_states(state, until_ns)
        self._forget_unreachable(state)

    @staticmethod
    def _forget_unreachable(state: _Replay) -> None:
        """Drop references to samples the store no longer holds (memory)."""
        held = {(name, slot.stamp_s) for name, slot in state.store.snapshot().items()}
        for key in [k for k in state.refs if k not in held]:
            del state.refs[key]

    @staticmethod
    def _collect_states(state: _Replay, now_ns: int) -> None:
        state.ns_of[now_ns * 1e-9] = now_ns
        for t in state.monitor.update(now_ns * 1e-9):
            t_ns = state.ns_of.get(t.time_s, round(t.time_s * NS))
            state.pending_states.append(StateChange(t_ns, t.name, t.new.name, t.reason))
        state.ns_of.clear()  # update() returned every queued change: none refers to these

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
        if topics is None:
            topics = {run.cfg.topic: name for name, run in self.sensors.items()}
        window_ns = round(WINDOW_S * NS)
        state = self.new_replay(start_ns)
        ticks: list[TickRecord] = []
        states: list[StateChange] = []
        pending: list[tuple[int, dict[str, Future]]] = []
        self.read_error: BaseException | None = None
        last_ns = start_ns

        def dispatch(batch: dict[str, list[Any]], until: int) -> None:
            futures = {name: self._sensor_pools[name].submit(self._sensor_stage, name, msgs)
                       for name, msgs in batch.items() if msgs}
            pending.append((until, futures))

        def finish(until: int, futures: dict[str, Future], final: bool) -> None:
            nonlocal state
            t0 = time.perf_counter()
            outcomes = sorted((o for f in futures.values() for o in f.result()),
                              key=lambda o: (o.log_ns, o.order))
            t1 = time.perf_counter()
            # pass 1: replay with shadow ticks, recording what each tick fuses; encode that
            snapshot = _clone(state)
            plans: list[_Plan] = []
            self.replay(state, outcomes, start_ns, until, final, self.planner(plans))
            t2 = time.perf_counter()
            needed = {id(o): o for plan in plans for o in plan.used.values()
                      if o.embedding is None and o.kind == "due"}
            failed = self._encode_group(list(needed.values()))  # failures: bad samples
            t3 = time.perf_counter()
            records: list[TickRecord] = []
            exact = not failed and all(
                self._fuse(plan.t_ns, plan.now_s, plan.fusable, plan.slots,
                           list(plan.used.values()), records) is not None for plan in plans)
            # pass 2, only when the plan is off: a sample failed to encode (a bad sample the
            # plan counted as valid) or a tick raised (the node's last result differs). The
            # window is replayed from its start with the real ticks inline.
            while not exact:
                self.timing["windows_replayed"] += 1
                state = _clone(snapshot)
                records = []
                try:
                    self.replay(state, outcomes, start_ns, until, final, self.fuser(records))
                    exact = True
                except _Redo:
                    pass
            ticks.extend(records)
            states.extend(state.pending_states)
            state.pending_states = []
            self.timing["wait_sensor_stage_s"] += t1 - t0
            self.timing["replay_s"] += t2 - t1
            self.timing["encode_s"] += t3 - t2
            self.timing["fuse_s"] += time.perf_counter() - t3
            if progress is not None:
                progress(until)

        window_end = start_ns + window_ns
        batch: dict[str, list[Any]] = defaultdict(list)
        iterator: Iterator[Any] = iter(messages)
        try:
            for m in iterator:
                while m.log_time_ns >= window_end:
                    dispatch(batch, window_end)
                    batch = defaultdict(list)
                    window_end += window_ns
                    while len(pending) > READ_AHEAD:
                        until, futures = pending.pop(0)
                        finish(until, futures, final=False)
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
            until, futures = pending.pop(0)
            final = not pending
            finish(max(until, last_ns) if final else until, futures, final=final)
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
    """(topic -> sensor, skipped topic -> why) from the bag's topics and the config."""
    from omnibind_ros.ros.conversions import normalise_msg_type

    mapped: dict[str, str] = {}
    skipped: dict[str, str] = {}
    by_topic = {cfg.topic: cfg for cfg in config.sensors}
    for topic, (msgtype, count) in sorted(info.topics.items()):
        cfg = by_topic.get(topic)
        if topic in (truth_topic, SCENARIO_TOPIC):
            continue
        if cfg is None:
            skipped[topic] = f"no sensor configured for it ({msgtype}, {count} messages)"
            continue
        try:
            same = normalise_msg_type(msgtype) == normalise_msg_type(cfg.message_type)
        except ValueError:
            same = False
        if not same:
            skipped[topic] = (f"type {msgtype}, but sensor {cfg.name} is configured for "
                              f"{cfg.message_type} ({count} messages)")
            continue
        mapped[topic] = cfg.name
    return mapped, skipped


def evaluate_offline(bag: str | Path, *, bundle: str | Path | None = None,
                     config: str | Path | None = None, truth_csv: str | Path | None = None,
                     truth_topic: str = "/omnibind/ground_truth",
                     backend: str = "onnxruntime", threads: int | None = None,
                     progress: bool = True, encode_all: bool = False) -> EvalResult:
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
    threads : parallel sensors/encoders; None = the machine's cores (at most 8).
    progress : a progress bar (tqdm) on stderr.
    encode_all : encode every due message, not only the fused ones.

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
    model = load_bundle(bundle_path)
    n_threads = threads if threads else min(8, os.cpu_count() or 1)
    engine = create_backend(backend, model, threads=1)
    evaluator = OfflineEvaluator(cfg, model, engine, threads=n_threads, encode_all=encode_all)
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
                   **{k: round(v, 3) for k, v in evaluator.timing.items()}},
    }
    return EvalResult(
        bag=str(bag), mode="offline", ticks=ticks, states=states, truth=truth, phases=phases,
        sensors=names, skipped_topics=skipped, error=error, wall_s=wall, extra=extra,
        start_ns=info.start_ns, end_ns=end_ns,
        modalities={s.name: s.modality for s in cfg.sensors})
