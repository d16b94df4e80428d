"""A worker process of the offline bag evaluator (``omnibind_ros.bag.offline``).

Started by ``offline._WorkerProcess`` as ``python -m omnibind_ros.bag._offline_worker R W``: R is
the pipe it reads requests from, W the one it writes replies to (``multiprocessing.connection``
framing, pickles). It owns some of the sensors: it runs their per-sensor stage (deserialize,
admit, preprocess) and their encoders, keeping the model inputs in its own memory keyed by
message index. Only metadata (kind, stamps, bad reason) and embeddings go back.

Requests, in arrival order except that everything but a window goes first (the evaluator waits
for encodings, while windows are read ahead):

* the spec (first): config, bundle, backend name, sensors, ``encode_all``, backend wrapper;
* ``("window", n, {sensor: [(index, log ns, CDR bytes)]})`` -> ``("stage", n, outcomes,
  counters, cpu)``;
* ``("encode", r, [[index, ...] per modality])`` -> ``("encoded", r, results, cpu)``;
* ``("release", n, keep)``: forget the model inputs of windows <= n not in ``keep`` (inputs
  are kept after encoding until then: the evaluator may discard a request and make it again);
* ``("close", None)`` -> ``("closed", None, stats)``, then the process exits.

A failure is sent as ``("error", None, traceback)`` before exiting. The process also exits when
its request pipe reaches end of file (the evaluator is gone). SIGINT is ignored: on Ctrl-C the
evaluator, which gets it too, ends its workers itself.
"""
from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections import deque
from typing import Any

NS = 1_000_000_000


class Worker:
    """The sensors of one worker process (see the module docstring)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from omnibind_ros.bag import offline as off

        self.off = off
        self.blas_limits = off._single_threaded_blas()
        config, bundle = spec["config"], spec["bundle"]
        names = list(spec["sensors"])
        modalities = {cfg.modality for cfg in config.sensors if cfg.name in names}
        if "point_cloud" in modalities:
            try:  # DBSCAN: one thread per process costs less CPU per cloud (same clusters)
                import open3d

                open3d.utility.set_max_threads(1)
            except (ImportError, AttributeError):
                pass
        backend = off._backend_for(spec["backend"], bundle, modalities, fusion=False,
                                   text="text" in modalities)
        if spec.get("backend_wrapper") is not None:
            backend = spec["backend_wrapper"](backend)
        self.bundle = bundle
        self.encode_all = bool(spec["encode_all"])
        self.runs = off._sensor_runs(config, bundle, backend, names)
        self.inputs: dict[int, tuple[int, str, Any]] = {}  # index -> (window, sensor, input)
        self.most_inputs = 0

    def stage(self, wid: int, batch: dict[str, list[tuple[int, int, bytes]]]
              ) -> tuple[list[tuple[Any, ...]], dict[str, tuple[int, int, str]],
                         dict[str, float]]:
        off = self.off
        rows: list[tuple[Any, ...]] = []
        cpu: dict[str, float] = {}
        for name, messages in batch.items():
            run = self.runs[name]
            cpu0 = time.thread_time()
            outcomes = off._stage(run, name, messages)
            cpu[f"cpu_s.sensor_stage.{name}"] = time.thread_time() - cpu0
            due = [o for o in outcomes if o.kind == "due"]
            if self.encode_all:  # per sensor and window, as the in-process stage does
                self._encode(run.pipeline, due, cpu)
            else:
                for o in due:
                    self.inputs[o.order] = (wid, name, o.model_input)
            rows.extend((o.order, o.log_ns, o.sensor, o.stamp_ns, o.stamp_s, o.kind,
                         o.reason, o.cost_s, o.embedding) for o in outcomes)
        self.most_inputs = max(self.most_inputs, len(self.inputs))
        counters = {name: (run.received, run.undecodable, run.first_error)
                    for name, run in self.runs.items()}
        return rows, counters, cpu

    def _encode(self, pipeline: Any, outcomes: list[Any], cpu: dict[str, float]) -> None:
        """encode_all: embed the due outcomes of one sensor in place."""
        key = f"cpu_s.encode.{pipeline.modality}"
        results = self.off._encode_inputs(
            pipeline, [o.model_input for o in outcomes],
            self.off._batch_size(self.bundle, pipeline.modality),
            add_cpu=lambda s: cpu.__setitem__(key, cpu.get(key, 0.0) + s))
        for o, (embedding, reason, share) in zip(outcomes, results, strict=True):
            o.cost_s += share
            o.model_input = None
            if embedding is not None:
                o.embedding = embedding
            else:
                o.kind, o.reason = "bad", reason

    def encode(self, groups: list[list[int]]) -> tuple[list[tuple[Any, str, float]],
                                                       dict[str, float]]:
        results: list[tuple[Any, str, float]] = []
        cpu: dict[str, float] = {}
        for orders in groups:
            # kept until released: a discarded request may be made again
            entries = [self.inputs[order] for order in orders]
            pipeline = self.runs[entries[0][1]].pipeline
            key = f"cpu_s.encode.{pipeline.modality}"
            results.extend(self.off._encode_inputs(
                pipeline, [entry[2] for entry in entries],
                self.off._batch_size(self.bundle, pipeline.modality),
                add_cpu=lambda s, key=key: cpu.__setitem__(key, cpu.get(key, 0.0) + s)))
        return results, cpu

    def release(self, wid: int, keep: set[int]) -> None:
        for order in [k for k, (w, _, _) in self.inputs.items() if w <= wid and k not in keep]:
            del self.inputs[order]


def serve(inbox: Any, outbox: Any, cpu0: float) -> None:
    """Answer requests until "close" (or the end of the request pipe: EOFError)."""
    spec = inbox.recv()
    worker = Worker(spec)
    setup_cpu = time.process_time() - cpu0
    urgent: deque[tuple[Any, ...]] = deque()
    windows: deque[tuple[Any, ...]] = deque()
    idle = 0.0  # wall seconds waiting for work after the first request
    started = False
    while True:
        # take in whatever has arrived; wait only when there is nothing to do
        while (not urgent and not windows) or inbox.poll():
            t0 = time.perf_counter()
            request = inbox.recv()
            if started and not urgent and not windows:
                idle += time.perf_counter() - t0
            started = True
            (windows if request[0] == "window" else urgent).append(request)
        kind, key, *args = urgent.popleft() if urgent else windows.popleft()
        if kind == "window":
            outbox.send(("stage", key, *worker.stage(key, *args)))
        elif kind == "encode":
            outbox.send(("encoded", key, *worker.encode(*args)))
        elif kind == "release":
            worker.release(key, *args)
        elif kind == "close":
            outbox.send(("closed", None, {"pid": os.getpid(), "sensors": sorted(worker.runs),
                                          "setup_cpu_s": round(setup_cpu, 3),
                                          "cpu_s": round(time.process_time() - cpu0, 3),
                                          "idle_s": round(idle, 3),
                                          "most_inputs_held": worker.most_inputs}))
            return
        else:
            raise ValueError(f"unknown request {kind!r}")


def main(argv: list[str] | None = None) -> int:
    cpu0 = time.process_time()
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from multiprocessing.connection import Connection

    inbox = Connection(int(args[0]), writable=False)
    outbox = Connection(int(args[1]), readable=False)
    try:
        from omnibind_ros.ros.env import ensure_safe_ros_env

        ensure_safe_ros_env()  # before rclpy (deserialization); no node is ever created here
        # imports while the evaluator sets up (the spec comes once it has loaded the bundle)
        import numpy  # noqa: F401
        import onnxruntime  # noqa: F401
        import rclpy.serialization  # noqa: F401

        import omnibind_ros.bag.offline  # noqa: F401
        import omnibind_ros.ros.conversions  # noqa: F401
        import omnibind_ros.ros.perception_lifecycle  # noqa: F401
        import omnibind_ros.ros.sensor_worker  # noqa: F401

        serve(inbox, outbox, cpu0)
    except (EOFError, BrokenPipeError):  # the evaluator is gone
        return 0
    except BaseException:  # noqa: BLE001
        try:
            outbox.send(("error", None, traceback.format_exc()))
        except OSError:
            pass
        return 1
    return 0


def _exit(code: int) -> None:
    """Exit without the interpreter's teardown (ONNX Runtime sessions, open3d, rclpy: ~0.5 s
    the evaluator would wait for); nothing here needs cleaning up."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
