"""A worker process of the parallel offline evaluation (:mod:`omnibind_ros.bag.parallel`).

Started as ``python -m omnibind_ros.bag._offline_worker R W``: R is the pipe it reads requests
from, W the one it writes replies to (``multiprocessing.connection`` framing, pickles). It owns
some of the sensors and runs their :class:`~omnibind_ros.bag.stage.BagSensor` stages, in
message order, with encoders of its own (single-threaded ONNX Runtime sessions).

Requests, in order:

* the spec (first): config, bundle, backend name, its sensors, an optional backend wrapper;
* ``("window", n, {sensor: [(index, log ns, CDR bytes)]})`` -> ``("staged", n, [(sensor,
  StagedMessage)])``;
* ``("close", None)`` -> ``("closed", None, stats)`` (counters per sensor, CPU seconds), then
  the process exits.

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
from typing import Any


def _stages(spec: dict[str, Any]) -> dict[str, Any]:
    from omnibind_ros.bag.parallel import backend_for
    from omnibind_ros.bag.stage import BagSensor

    config, bundle = spec["config"], spec["bundle"]
    mine = [cfg for cfg in config.sensors if cfg.name in set(spec["sensors"])]
    modalities = {cfg.modality for cfg in mine}
    backend = backend_for(spec["backend"], bundle, modalities, fusion=False,
                          text="text" in modalities)
    if spec.get("backend_wrapper") is not None:
        backend = spec["backend_wrapper"](backend)
    return {cfg.name: BagSensor(cfg, bundle, backend, spec.get("definitions"))
            for cfg in mine}


def serve(inbox: Any, outbox: Any, cpu0: float) -> None:
    """Answer requests until "close" (or the end of the request pipe: EOFError)."""
    sensors = _stages(inbox.recv())
    setup_cpu = time.process_time() - cpu0
    idle = 0.0  # wall seconds waiting for the next window
    while True:
        t0 = time.perf_counter()
        kind, key, *args = inbox.recv()
        idle += time.perf_counter() - t0
        if kind == "window":
            (batch,) = args
            rows = [(name, staged) for name, messages in batch.items() for staged in
                    (sensors[name].process(*m) for m in messages) if staged is not None]
            outbox.send(("staged", key, rows))
        elif kind == "close":
            outbox.send(("closed", None, {
                "pid": os.getpid(), "counters": {n: s.counters() for n, s in sensors.items()},
                "setup_cpu_s": round(setup_cpu, 3),
                "cpu_s": round(time.process_time() - cpu0, 3), "idle_s": round(idle, 3)}))
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
        # import while the evaluator loads the bundle (the spec comes after that)
        import onnxruntime  # noqa: F401
        import rclpy.serialization  # noqa: F401

        import omnibind_ros.bag.stage  # noqa: F401
        import omnibind_ros.ros.conversions  # noqa: F401

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
    """Exit without the interpreter's teardown (ONNX Runtime sessions, open3d, rclpy take a
    while to tear down and nothing here needs it)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
