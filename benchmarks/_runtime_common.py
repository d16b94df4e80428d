"""Shared pieces of ``benchmarks/bench_runtime.py``: probes, instrumentation, baseline, children.

Imports rclpy, so import it only after ``omnibind_ros.ros.env.ensure_safe_ros_env()`` (the import
refuses to run otherwise). Nothing here edits the nodes under test: the perception node's
per-stage timings come from the stage hook it takes (``PerceptionNode(hook=...)``, handed to its
sensor workers, pipelines and engine); the simulator's from wrapping its methods in the
benchmark's own process (:func:`instrument_sim`). Either costs a few microseconds per call.

Clocks: every node runs on ROS system time (``CLOCK_REALTIME``), the clock of ``time.time_ns()``,
so "receive time minus header stamp" compares two readings of one clock, also across processes.
"""
from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

if os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") != "LOCALHOST":
    raise RuntimeError("import benchmarks/_runtime_common.py only after ensure_safe_ros_env()")

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
import yaml  # noqa: E402
from omnibind_ros.msg import Recognition  # noqa: E402
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.signals import SignalHandlerOptions  # noqa: E402

from omnibind_ros.ros import qos  # noqa: E402
from omnibind_ros.ros.executor import retrieve_late_errors  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PERCEPTION_YAML = REPO / "config" / "perception.yaml"
SIM_YAML = REPO / "config" / "sim_sensors.yaml"
OURS, BASELINE = "ours", "baseline"
RECOGNITION_TOPICS = {OURS: "/omnibind_perception/recognition",
                      BASELINE: "/omnibind_baseline_sync/recognition"}
#: The hand-written torch-eager node of ``bench_runtime.py naive`` (benchmarks/_naive_node.py).
NAIVE = "naive"
RECOGNITION_TOPICS[NAIVE] = "/omnibind_naive_torch/recognition"


# -- statistics and tables ---------------------------------------------------------------------

def summary(values: Sequence[float]) -> dict[str, float]:
    """n, p50, p90, p99, max, mean of ``values`` (NaN when empty)."""
    if len(values) == 0:
        return {"n": 0, "p50": float("nan"), "p90": float("nan"), "p99": float("nan"),
                "max": float("nan"), "mean": float("nan")}
    arr = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"n": int(arr.size), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "max": float(arr.max()), "mean": float(arr.mean())}


def fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.{digits}f}"
    return str(value)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  " + "  ".join(h.rjust(w) if i else h.ljust(w)
                           for i, (h, w) in enumerate(zip(headers, widths, strict=True))))
    for row in cells:
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# -- configuration -------------------------------------------------------------------------------

def _flatten(prefix: str, data: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _flatten(f"{name}.", value, out)
        else:
            out[name] = value
    return out


def yaml_params(path: Path) -> dict[str, Any]:
    """The first node's ``ros__parameters`` of a params file, flattened to dotted names."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    node = next(iter(data.values()))
    return _flatten("", node["ros__parameters"], {})


@dataclass(frozen=True)
class SensorSpec:
    """One sensor of config/perception.yaml, with the simulator's rate from sim_sensors.yaml."""

    name: str
    modality: str
    topic: str
    message_type: str
    expected_rate_hz: float
    sim_rate_hz: float
    stale_after: float = 2.5

    @property
    def period_ms(self) -> float:
        return 1e3 / self.expected_rate_hz if self.expected_rate_hz > 0 else float("nan")

    @property
    def has_header(self) -> bool:
        return self.message_type != "std_msgs/msg/String"


def sensor_specs() -> list[SensorSpec]:
    ours, sim = yaml_params(PERCEPTION_YAML), yaml_params(SIM_YAML)
    return [SensorSpec(n, ours[f"sensors.{n}.modality"], ours[f"sensors.{n}.topic"],
                       ours[f"sensors.{n}.message_type"],
                       float(ours[f"sensors.{n}.expected_rate_hz"]),
                       float(sim.get(f"sensors.{n}.rate_hz", float("nan"))),
                       float(ours.get(f"sensors.{n}.stale_after", 2.5)))
            for n in ours["sensors"]]


def parse_overrides(items: Sequence[str]) -> list[Parameter]:
    """``name=value`` strings as Parameters, typed like the node's default in perception.yaml
    (``fusion.rate_hz=0`` must become a double, or the declared parameter rejects it)."""
    defaults = yaml_params(PERCEPTION_YAML)
    out = []
    for item in items:
        name, _, text = item.partition("=")
        value = yaml.safe_load(text)
        if isinstance(defaults.get(name), float) and isinstance(value, int):
            value = float(value)
        out.append(Parameter(name, value=value))
    return out


# -- recording -----------------------------------------------------------------------------------

class StageRecorder:
    """Thread-safe ``key -> [(wall ns, value ms)]`` (list.append is atomic under the GIL)."""

    def __init__(self) -> None:
        self.data: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def add(self, key: str, value_ms: float) -> None:
        self.data[key].append((time.time_ns(), value_ms))

    def snapshot(self) -> dict[str, list[tuple[int, float]]]:
        return {key: list(values) for key, values in list(self.data.items())}

    def hook(self, key: str, seconds: float) -> None:
        """The perception node's stage hook (``PerceptionNode(hook=...)``): seconds -> ms.

        Keys: ``<sensor>/stamp_to_callback`` (header stamp -> subscription callback: the
        sensor's own stamp offset + transport + executor dispatch), ``<sensor>/queue_wait``
        (callback -> worker picks it up), ``<modality>/preprocess``, ``<modality>/encode``,
        ``<sensor>/stamp_to_embedding`` (stamp -> embedding stored), ``fusion/tick`` (one tick:
        select, fuse, classify, publish).
        """
        self.add(key, seconds * 1e3)


def window_values(samples: Sequence[Sequence[float]], start_ns: int, end_ns: int) -> list[float]:
    return [v for t, v in samples if start_ns <= t <= end_ns]


@dataclass(frozen=True)
class RecognitionRecord:
    """One received Recognition (times in ns of CLOCK_REALTIME)."""

    recv_ns: int
    stamp_ns: int
    sensors: tuple[str, ...]
    answered: bool
    newest: str  # sensor whose stamp is header.stamp ("" when unanswered)
    tick_ns: int  # fusion tick time = newest stamp + its age (0 when unanswered)


def stamp_ns(stamp: Any) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


class Receiver(Node):
    """Subscribes to the recognitions of the nodes under test and timestamps each on arrival."""

    def __init__(self, context: Context, labels: Sequence[str] = (OURS,)) -> None:
        super().__init__("omnibind_bench_receiver", context=context)
        self.records: dict[str, list[RecognitionRecord]] = {label: [] for label in labels}
        for label in labels:
            # own group: a slow callback elsewhere never delays the receive timestamp
            self.create_subscription(
                Recognition, RECOGNITION_TOPICS[label],
                lambda msg, label=label: self._on(label, msg), qos.RECOGNITION,
                callback_group=MutuallyExclusiveCallbackGroup())

    def _on(self, label: str, msg: Recognition) -> None:
        recv = time.time_ns()
        newest, tick = "", 0
        if msg.per_modality:
            best = max(msg.per_modality, key=lambda p: stamp_ns(p.stamp))
            newest, tick = best.sensor, stamp_ns(best.stamp) + round(best.age * 1e9)
        self.records[label].append(RecognitionRecord(
            recv, stamp_ns(msg.header.stamp), tuple(msg.sensors), bool(msg.best_label),
            newest, tick))


def records_between(records: Sequence[RecognitionRecord], start_ns: int,
                    end_ns: int) -> list[RecognitionRecord]:
    return [r for r in records if start_ns <= r.recv_ns < end_ns]


# -- instrumentation (wrappers; the node files stay untouched) -----------------------------------

class SimLog:
    """What the simulator did, on the wall clock: publications and plug/noise commands."""

    def __init__(self) -> None:
        # sensor -> {stamp ms (rounded) -> (stamp ns, publish ns)}
        self.published: dict[str, dict[int, tuple[int, int]]] = defaultdict(dict)
        self.commands: list[tuple[int, str, str, bool]] = []  # (ns, sensor, key, value)

    def publish_time(self, sensor: str, stamp: int) -> int | None:
        """Publish time of ``sensor``'s message stamped ``stamp`` (ns; float round trips in the
        node shift stamps by < 1 us, so look the neighbouring millisecond up too)."""
        table, key = self.published.get(sensor, {}), round(stamp / 1e6)
        hits = [table[k] for k in (key - 1, key, key + 1) if k in table]
        hits = [h for h in hits if abs(h[0] - stamp) < 100_000]
        return hits[0][1] if hits else None

    def publications(self, sensor: str) -> list[tuple[int, int]]:
        return sorted(self.published.get(sensor, {}).values(), key=lambda x: x[1])


def instrument_sim(log: SimLog) -> None:
    """Record every publication (stamp, publish time) and plug/noise change of the simulator."""
    from omnibind_ros.ros.sim_sensors_node import SimSensorsNode

    if getattr(SimSensorsNode, "_bench_patched", False):
        SimSensorsNode._bench_log[0] = log
        return
    SimSensorsNode._bench_patched, SimSensorsNode._bench_log = True, [log]
    emit, apply = SimSensorsNode._emit, SimSensorsNode._apply_sensor

    def emit_timed(self: Any, item: Any, lag_s: float) -> None:
        key = f"published/{item.sensor}"
        before = self.stats[key]
        emit(self, item, lag_s)
        if self.stats[key] != before:
            now, stamp = time.time_ns(), self._start_ns + round(item.stamp_s * 1e9)
            self._bench_log[0].published[item.sensor][round(stamp / 1e6)] = (stamp, now)

    def apply_timed(self: Any, sensor: Any, key: str, value: bool) -> None:
        if getattr(sensor, key, value) != value:
            self._bench_log[0].commands.append((time.time_ns(), sensor.name, key, bool(value)))
        apply(self, sensor, key, value)

    SimSensorsNode._emit, SimSensorsNode._apply_sensor = emit_timed, apply_timed


class SimControl:
    """Unplug/replug from the benchmark thread, applied inside the simulator's executor.

    Destroying a publisher from another thread while the pacing timer publishes on it would
    race; a timer in the simulator's default (mutually exclusive) callback group never runs
    concurrently with that timer. The wall time of the change is what :class:`SimLog` records.
    """

    def __init__(self, sim: Node, rate_hz: float = 100.0) -> None:
        self._sim = sim
        self._queue: queue.SimpleQueue[tuple[str, bool]] = queue.SimpleQueue()
        self._timer = sim.create_timer(1.0 / rate_hz, self._poll)

    def set_enabled(self, sensor: str, enabled: bool) -> None:
        self._queue.put((sensor, enabled))

    def _poll(self) -> None:
        while not self._queue.empty():
            sensor, enabled = self._queue.get()
            self._sim.set_parameters([Parameter(f"sensors.{sensor}.enabled", value=enabled)])


# -- the in-process rig -----------------------------------------------------------------------

EXECUTORS = ("multi", "rclpy-multi", "single")


def make_executor(kind: str, context: Context) -> Any:
    """``multi``: PoolSafeExecutor(4), what omnibind_perception's main() uses; ``rclpy-multi``:
    rclpy's own MultiThreadedExecutor(4), which floods its pool on rclpy 9.x (see
    omnibind_ros/ros/executor.py); ``single``:
    what rclpy.spin uses (the simulator's main). (rclpy.experimental.EventsExecutor of Kilted
    was tried: the perception node under it ran no callback at all, so it is not offered.)"""
    if kind == "multi":
        from omnibind_ros.ros.executor import PoolSafeExecutor

        return PoolSafeExecutor(num_threads=4, context=context)
    if kind == "rclpy-multi":
        return MultiThreadedExecutor(num_threads=4, context=context)
    if kind == "single":
        return SingleThreadedExecutor(context=context)
    raise ValueError(f"executor must be one of {EXECUTORS}, got {kind!r}")


class Rig:
    """One rclpy context; every node spins in an executor and thread of its own, as it would in
    its own main(), so the nodes' executors do not queue behind each other's callbacks."""

    def __init__(self, params_files: Sequence[Path],
                 log_levels: dict[str, str] | None = None) -> None:
        args = ["--ros-args"]
        for path in params_files:
            args += ["--params-file", str(path)]
        for logger, level in (log_levels or {}).items():
            args += ["--log-level", f"{logger}:={level}"]
        self.context = Context()
        rclpy.init(context=self.context, args=args,
                   signal_handler_options=SignalHandlerOptions.NO)
        self._spinners: list[tuple[Any, threading.Thread | None, Node]] = []

    def add(self, node: Node, executor: str = "single",
            before_spin: Callable[[], None] | None = None) -> Node:
        """Spin ``node`` in a new executor of kind ``executor`` (see make_executor); call
        ``before_spin`` after adding it and before spinning (the order of perception's main)."""
        ex = make_executor(executor, self.context)
        ex.add_node(node)
        self._spinners.append((ex, None, node))  # closed even if before_spin raises
        if before_spin is not None:
            before_spin()
        thread = threading.Thread(target=ex.spin, daemon=True, name=f"spin_{node.get_name()}")
        thread.start()
        self._spinners[-1] = (ex, thread, node)
        return node

    def close(self) -> None:
        # shut the executors down and join them before destroying nodes (never spin a dead node)
        for ex, _, _ in reversed(self._spinners):
            ex.shutdown(timeout_sec=10.0)
        for ex, thread, _ in self._spinners:
            if thread is not None:
                thread.join(timeout=10.0)
            retrieve_late_errors(ex, "bench_runtime")
        for _, _, node in reversed(self._spinners):
            node.destroy_node()
        rclpy.shutdown(context=self.context)


# -- the baseline: approximate time sync over every sensor --------------------------------------

class ApproxTimeSync:
    """A minimal re-implementation of message_filters' Python ``ApproximateTimeSynchronizer``.

    message_filters is not installable here, so this mirrors its semantics (rclpy version,
    ``message_filters/__init__.py``): one queue per input, ``{stamp ns: msg}`` keeping the
    ``queue_size`` newest stamps; on every message, each OTHER queue must hold at least one
    stamp within ``slop`` of the new one (else nothing happens); the candidates of each queue
    are sorted by distance to the new stamp, combinations are tried in ``itertools.product``
    order, and the first whose spread (max - min stamp) is strictly below ``slop`` is emitted
    (callback called under the lock, in input order) and its messages removed from the queues.
    Like the original, an input that stops publishing stops every emission.
    """

    def __init__(self, n_inputs: int, queue_size: int, slop_s: float,
                 callback: Callable[[list[Any]], None]) -> None:
        self.queues: list[dict[int, Any]] = [{} for _ in range(n_inputs)]
        self.queue_size = int(queue_size)
        self.slop_ns = round(slop_s * 1e9)
        self.callback = callback
        self._lock = threading.Lock()

    def add(self, index: int, stamp: int, msg: Any) -> bool:
        """Queue ``msg`` (stamped ``stamp`` ns) from input ``index``; True if a set was emitted."""
        with self._lock:
            mine = self.queues[index]
            mine[stamp] = msg
            while len(mine) > self.queue_size:
                del mine[min(mine)]
            candidates = []
            for i, other in enumerate(self.queues):
                if i == index:
                    continue
                near = sorted((abs(s - stamp), s) for s in other if abs(s - stamp) <= self.slop_ns)
                if not near:
                    return False
                candidates.append([s for _, s in near])
            for combo in itertools.product(*candidates):
                stamps = [*combo[:index], stamp, *combo[index:]]
                if max(stamps) - min(stamps) < self.slop_ns and all(
                        s in q for q, s in zip(self.queues, stamps, strict=True)):
                    self.callback([q[s] for q, s in zip(self.queues, stamps, strict=True)])
                    for q, s in zip(self.queues, stamps, strict=True):
                        del q[s]
                    return True
        return False


class BaselineSyncNode(Node):
    """The common design: approximate time sync over all stamped sensors, fuse each set.

    Same bundle, backend, conversions, preprocessing and fusion head as the perception node;
    the difference is only *when* it fuses: when :class:`ApproxTimeSync` emits a set, the node
    encodes the set's messages (in the callback, as a typical message_filters node does) and
    fuses them. Audio chunks are all pushed into the streaming preprocessor on arrival (any
    audio consumer keeps a window); the text topic has no header and is left out of the sync
    (with it the baseline could emit only every 4 s), which favours the baseline.
    """

    def __init__(self, context: Context, bundle_path: str, *, slop_s: float, queue_size: int,
                 recorder: StageRecorder) -> None:
        from omnibind_ros.core.backends import create_backend
        from omnibind_ros.core.bundle import load_bundle
        from omnibind_ros.core.fusion import FusionTick
        from omnibind_ros.core.pipeline import make_pipeline
        from omnibind_ros.core.recognizer import logit_scale_of
        from omnibind_ros.ros.conversions import conversion_for
        from omnibind_ros.ros.interfaces import message_class

        super().__init__("omnibind_baseline_sync", context=context)
        params = yaml_params(PERCEPTION_YAML)
        self._rec = recorder
        self._bundle = load_bundle(bundle_path)
        threads = int(params.get("backend_threads", 0))
        self._backend = create_backend(str(params.get("backend", "onnxruntime")), self._bundle,
                                       **({"threads": threads} if threads > 0 else {}))
        self._specs = [s for s in sensor_specs() if s.has_header]
        self._pipes = {s.name: make_pipeline(s.modality, self._bundle, self._backend)
                       for s in self._specs}
        self._convert = {s.name: conversion_for(s.modality, s.message_type) for s in self._specs}
        self._warm_up()
        fusion = self._bundle.fusion
        self._fusion = FusionTick(
            self._backend.fuse, self._bundle.label_names, self._bundle.label_embeddings,
            logit_scale_of(self._bundle), max_age_s=60.0, top_k=int(params["fusion.top_k"]),
            pad_to=fusion.max_tokens if fusion is not None else None)
        self._sync = ApproxTimeSync(len(self._specs), queue_size, slop_s, self._on_synced)
        self._pub = self.create_publisher(Recognition, "~/recognition", qos.RECOGNITION)
        self.emitted = 0
        for index, spec in enumerate(self._specs):
            self.create_subscription(message_class(spec.message_type), spec.topic,
                                     lambda msg, i=index: self._on_msg(i, msg),
                                     qos.SENSOR_DATA)

    def _warm_up(self) -> None:
        # The perception node pays the audio features' JIT at configure; so does the baseline.
        for spec in self._specs:
            pipe = self._pipes[spec.name]
            if pipe.streaming:
                rate = pipe.preprocessor.config.sample_rate
                from omnibind_ros.core.types import AudioBlock
                noise = np.random.default_rng(0).normal(0, 0.05, rate // 10).astype(np.float32)
                pipe.encode(pipe.preprocessor(AudioBlock(noise, rate)))

    def _on_msg(self, index: int, msg: Any) -> None:
        spec = self._specs[index]
        pipe = self._pipes[spec.name]
        if pipe.streaming:
            pipe.push(self._convert[spec.name](msg))
        self._sync.add(index, stamp_ns(msg.header.stamp), msg)

    def _on_synced(self, msgs: list[Any]) -> None:
        from omnibind_ros.core.fusion import EmbeddingSlot
        from omnibind_ros.ros.recognition import recognition_message

        start = time.perf_counter()
        slots = []
        for spec, msg in zip(self._specs, msgs, strict=True):
            pipe = self._pipes[spec.name]
            x = pipe.features() if pipe.streaming else pipe.preprocess(
                self._convert[spec.name](msg))
            slots.append(EmbeddingSlot(spec.name, spec.modality, stamp_ns(msg.header.stamp),
                                       np.asarray(pipe.encode(x), dtype=np.float32)))
        now = self.get_clock().now().nanoseconds
        result = self._fusion.tick(slots, [s.name for s in self._specs], now)
        self._pub.publish(recognition_message(result))
        self.emitted += 1
        self._rec.add("baseline/emit", (time.perf_counter() - start) * 1e3)

    def destroy_node(self) -> None:
        super().destroy_node()
        self._backend.close()


# -- child processes -----------------------------------------------------------------------------

def child_main(kind: str, bundle: str, stats_path: Path, overrides: Sequence[str],
               slop_s: float, queue_size: int, executor: str, instrument: bool = True,
               tracemalloc_after_s: float = 0.0) -> int:
    """Body of ``bench_runtime.py _child``: run one node under test until stdin says stop.

    Prints ``READY`` once the node is active, ``FAILED <reason>`` if it cannot start; on a line
    on stdin (or EOF) writes its stage timings to ``stats_path`` and exits.
    """
    rec = StageRecorder()
    tracer = _HeapTracer(tracemalloc_after_s) if tracemalloc_after_s > 0 else None
    rig = Rig([PERCEPTION_YAML])
    node: Node
    try:
        if kind == OURS:
            from omnibind_ros.ros.perception_lifecycle import PerceptionNode

            node = PerceptionNode(context=rig.context, hook=rec.hook if instrument else None,
                                  parameter_overrides=[Parameter("bundle_path", value=bundle),
                                                       *parse_overrides(overrides)])
            rig.add(node, executor, before_spin=lambda: _autostart(node))
        else:
            node = BaselineSyncNode(rig.context, bundle, slop_s=slop_s, queue_size=queue_size,
                                    recorder=rec)
            rig.add(node, "single")  # the common set-up: rclpy.spin, callbacks in order
        print("READY", flush=True)
        sys.stdin.readline()
        extra: dict[str, Any] = {"emitted": getattr(node, "emitted", None)}
        if tracer is not None:
            extra["tracemalloc"] = tracer.report()
        stats_path.write_text(json.dumps({"stages": rec.snapshot(), "extra": extra}))
    finally:
        rig.close()
    return 0


class _HeapTracer:
    """Diagnosis: Python allocation sites that grew between ``after_s`` and the end."""

    def __init__(self, after_s: float) -> None:
        import tracemalloc

        self._tm = tracemalloc
        tracemalloc.start(4)
        self._first: Any = None
        self._timer = threading.Timer(after_s, self._snap)
        self._timer.daemon = True
        self._timer.start()

    def _snap(self) -> None:
        self._first = self._tm.take_snapshot()

    def report(self, top: int = 25) -> dict[str, Any]:
        self._timer.cancel()
        last = self._tm.take_snapshot()
        first = self._first or last
        filters = [self._tm.Filter(False, self._tm.__file__)]
        first, last = first.filter_traces(filters), last.filter_traces(filters)
        diff = last.compare_to(first, "traceback")[:top]
        return {"traced_mb_warm": sum(s.size for s in first.statistics("filename")) / 2**20,
                "traced_mb_end": sum(s.size for s in last.statistics("filename")) / 2**20,
                "top": [[" <- ".join(f"{Path(f.filename).name}:{f.lineno}"
                                     for f in reversed(d.traceback)),
                         d.size_diff / 1024, d.count_diff] for d in diff]}


def _autostart(node: Any) -> None:
    if not node.autostart():
        print("FAILED autostart (see the log)", flush=True)
        raise RuntimeError("the perception node failed to start (see its log)")


class Child:
    """A node under test in a process of its own (``bench_runtime.py _child``)."""

    def __init__(self, script: Path, kind: str, bundle: Path, env: dict[str, str],
                 workdir: Path, extra_args: Sequence[str] = ()) -> None:
        self.kind = kind
        self.stats_path = workdir / f"{kind}_stats.json"
        self.log_path = workdir / f"{kind}.log"
        self._log: IO[str] = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "_child", "--kind", kind, "--bundle", str(bundle),
             "--stats", str(self.stats_path), *extra_args],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True, cwd=str(REPO))
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self._lines.put(line.strip())
        self._lines.put("EOF")

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line == "READY":
                return
            if line.startswith("FAILED") or line == "EOF":
                break
        raise RuntimeError(f"{self.kind} node did not start; log tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Ask the child to write its stats and exit; return the stats ({} if none)."""
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write("stop\n")  # type: ignore[union-attr]
                self.proc.stdin.flush()  # type: ignore[union-attr]
            self.proc.wait(timeout=timeout_s)
        except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
            self.kill()
        finally:
            self._log.close()
        if self.stats_path.is_file():
            return json.loads(self.stats_path.read_text())
        return {}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # our own child, by its PID
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


# -- process sampling ----------------------------------------------------------------------------

class _ProcProcess:
    """The two psutil.Process calls the sampler makes, from /proc (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._last: tuple[float, float] | None = None
        self._tick = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")

    def cpu_percent(self, interval: None = None) -> float:
        """% of one core since the previous call (0.0 on the first), like psutil's."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        cpu_s = (int(fields[11]) + int(fields[12])) / self._tick  # utime + stime
        now, last = time.monotonic(), self._last
        self._last = (now, cpu_s)
        return 0.0 if last is None else 100.0 * (cpu_s - last[1]) / max(now - last[0], 1e-9)

    def memory_info(self) -> Any:
        rss_pages = int(Path(f"/proc/{self.pid}/statm").read_text().split()[1])
        return type("MemoryInfo", (), {"rss": rss_pages * self._page})()


class ProcessSampler:
    """CPU% (100 = one core) and RSS of some processes, sampled every ``period_s`` seconds."""

    def __init__(self, pids: dict[str, int], period_s: float = 1.0) -> None:
        try:
            from psutil import Process
        except ImportError:  # psutil is no project dependency: read /proc instead
            Process = _ProcProcess  # noqa: N806
        self.period_s = period_s
        self._procs = {name: Process(pid) for name, pid in pids.items()}
        self.samples: dict[str, list[tuple[float, float, float]]] = {n: [] for n in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        for proc in self._procs.values():
            proc.cpu_percent(None)  # first call primes the counter
        self._thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(self.period_s):
            now = time.monotonic() - t0
            for name, proc in self._procs.items():
                try:
                    cpu, rss = proc.cpu_percent(None), proc.memory_info().rss / 2**20
                except Exception:  # noqa: BLE001  (process gone: stop sampling it)
                    continue
                self.samples[name].append((now, cpu, rss))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def mean_cpu(self, name: str) -> float:
        values = [c for _, c, _ in self.samples[name]]
        return float(np.mean(values)) if values else float("nan")
