"""The naive baseline of ``bench_runtime.py naive``: the node a ROS user typically writes by hand.

:class:`NaiveTorchNode` subscribes to the stamped simulated sensor topics and, in each
subscription callback, converts the message (``omnibind_ros.ros.conversions``), preprocesses it
(``omnibind_ros.core.pipeline.make_pipeline``, the package's own preprocessing) and runs the
encoder in torch eager mode (``create_backend("torch", ...)``), all on the executor's one
thread (``SingleThreadedExecutor``, what ``rclpy.spin`` uses). It keeps the newest embedding of
every sensor; an :class:`~_runtime_common.ApproxTimeSync` over the stamps of the encoded
messages decides when to fuse, and each emitted set fuses the newest embeddings with the
bundle's fusion head and publishes ``omnibind_ros/Recognition`` on ``~/recognition`` with
``header.stamp`` = the newest input stamp fused (what the perception node stamps too).

The choices a hand-written node makes, and why they are the ones here:

* QoS: rclpy's ``qos_profile_sensor_data`` (best effort, keep last 5) on every sensor topic.
  The plain ``create_subscription(..., 10)`` (reliable, depth 10) does not match best-effort
  publishers, which the simulated drivers (like most camera drivers) are, so it would receive
  nothing; sensor-data QoS is what the ROS documentation recommends for sensor streams.
* Torch threads: left as torch sets them (``torch.get_num_threads()`` = the number of physical
  cores, 2 on the benchmark machine; 2 inter-op threads); OpenBLAS is not capped either.
* Audio: every 20 ms chunk is pushed into the streaming preprocessor and the whole window is
  encoded on every chunk (the callback handles each message like every other topic's);
  ``audio_encode_hz`` > 0 throttles it to a rate instead (the perception node's default for
  audio is 10 Hz).
* The operator text topic has no header, so it stays out of the sync (as in the approximate
  time sync baseline), which favours the naive node.
* One warm-up inference per modality before ``READY`` (the benchmark leaves its first seconds
  out anyway).

Imports rclpy: import only after ``omnibind_ros.ros.env.ensure_safe_ros_env()``.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

if os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") != "LOCALHOST":
    raise RuntimeError("import benchmarks/_naive_node.py only after ensure_safe_ros_env()")

import numpy as np  # noqa: E402
from _runtime_common import (  # noqa: E402
    PERCEPTION_YAML,
    ApproxTimeSync,
    Rig,
    StageRecorder,
    sensor_specs,
    stamp_ns,
    yaml_params,
)
from omnibind_ros.msg import Recognition  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402

from omnibind_ros.ros import qos  # noqa: E402

NODE_NAME = "omnibind_naive_torch"


class NaiveTorchNode(Node):
    """Encode every message in its callback with torch eager; fuse when the sync emits.

    Parameters
    ----------
    context : rclpy context.
    bundle_path : model bundle with torch weights.
    slop_s, queue_size : of the :class:`ApproxTimeSync` over the stamped sensors.
    torch_threads : ``torch.set_num_threads``; None leaves torch's default.
    audio_encode_hz : 0 encodes the audio window on every chunk; > 0 at most this often (by
        chunk stamp).
    recorder : receives per-stage timings (``<modality>/preprocess``, ``<modality>/encode``,
        ``<sensor>/stamp_to_callback``, ``<sensor>/stamp_to_embedding``, ``naive/fuse``).
    """

    def __init__(self, context: Context, bundle_path: str, *, slop_s: float, queue_size: int,
                 torch_threads: int | None, audio_encode_hz: float,
                 recorder: StageRecorder) -> None:
        from omnibind_ros.core.backends import create_backend
        from omnibind_ros.core.bundle import load_bundle
        from omnibind_ros.core.fusion import FusionTick
        from omnibind_ros.core.pipeline import make_pipeline
        from omnibind_ros.core.recognizer import logit_scale_of
        from omnibind_ros.ros.conversions import conversion_for
        from omnibind_ros.ros.interfaces import message_class

        super().__init__(NODE_NAME, context=context)
        params = yaml_params(PERCEPTION_YAML)
        self._rec = recorder
        self._bundle = load_bundle(bundle_path)
        self._backend = create_backend("torch", self._bundle, threads=torch_threads)
        import torch

        self.torch_threads = (torch.get_num_threads(), torch.get_num_interop_threads())
        self._specs = [s for s in sensor_specs() if s.has_header]
        self._names = [s.name for s in self._specs]
        self._pipes = {s.name: make_pipeline(s.modality, self._bundle, self._backend,
                                             hook=recorder.hook) for s in self._specs}
        self._convert = {s.name: conversion_for(s.modality, s.message_type) for s in self._specs}
        self._audio_period_ns = round(1e9 / audio_encode_hz) if audio_encode_hz > 0 else 0
        self._last_audio_ns: dict[str, int] = {}
        self._warm_up()
        fusion = self._bundle.fusion
        self._fusion = FusionTick(
            self._backend.fuse, self._bundle.label_names, self._bundle.label_embeddings,
            logit_scale_of(self._bundle), max_age_s=60.0, top_k=int(params["fusion.top_k"]),
            pad_to=fusion.max_tokens if fusion is not None else None)
        self.latest: dict[str, Any] = {}  # sensor -> EmbeddingSlot, the newest
        self._sync = ApproxTimeSync(len(self._specs), queue_size, slop_s, self._on_synced)
        self._pub = self.create_publisher(Recognition, "~/recognition", qos.RECOGNITION)
        self.emitted = 0
        self.encoded: dict[str, int] = dict.fromkeys(self._names, 0)
        self.errors: dict[str, int] = dict.fromkeys(self._names, 0)
        for index, spec in enumerate(self._specs):
            self.create_subscription(message_class(spec.message_type), spec.topic,
                                     lambda msg, i=index: self._on_msg(i, msg),
                                     qos_profile_sensor_data)

    def _warm_up(self) -> None:
        """One inference per modality (torch's first call allocates; audio features JIT)."""
        rng = np.random.default_rng(0)
        for spec in self._specs:
            pipe = self._pipes[spec.name]
            if pipe.streaming:
                from omnibind_ros.core.types import AudioBlock

                rate = pipe.preprocessor.config.sample_rate
                noise = rng.normal(0, 0.05, rate // 10).astype(np.float32)
                x = pipe.preprocessor(AudioBlock(noise, rate))
                pipe.preprocessor.reset()
            else:
                x = rng.normal(0, 0.5, self._bundle.modalities[spec.modality].sample_shape)
            pipe.encode(np.asarray(x, dtype=np.float32))

    def _on_msg(self, index: int, msg: Any) -> None:
        from omnibind_ros.core.fusion import EmbeddingSlot

        spec = self._specs[index]
        pipe = self._pipes[spec.name]
        stamp = stamp_ns(msg.header.stamp)
        self._rec.add(f"{spec.name}/stamp_to_callback", (time.time_ns() - stamp) / 1e6)
        try:
            payload = self._convert[spec.name](msg)
            if pipe.streaming:
                pipe.push(payload)
                if self._audio_period_ns:
                    last = self._last_audio_ns.get(spec.name)
                    if last is not None and stamp - last < self._audio_period_ns:
                        return
                    self._last_audio_ns[spec.name] = stamp
                x = pipe.features()
            else:
                x = pipe.preprocess(payload)
            embedding = np.asarray(pipe.encode(x), dtype=np.float32)
            slot = EmbeddingSlot(spec.name, spec.modality, stamp, embedding)
        except Exception as exc:  # noqa: BLE001  (a hand-written node logs and goes on)
            self.errors[spec.name] += 1
            self.get_logger().warn(f"{spec.name}: {type(exc).__name__}: {exc}",
                                   throttle_duration_sec=5.0)
            return
        self.latest[spec.name] = slot
        self.encoded[spec.name] += 1
        self._rec.add(f"{spec.name}/stamp_to_embedding", (time.time_ns() - stamp) / 1e6)
        self._sync.add(index, stamp, stamp)

    def _on_synced(self, _stamps: list[int]) -> None:
        """The sync found a set within the slop: fuse the newest embedding of every sensor."""
        from omnibind_ros.ros.recognition import recognition_message

        start = time.perf_counter()
        now = self.get_clock().now().nanoseconds
        result = self._fusion.tick(dict(self.latest), self._names, now)
        self._pub.publish(recognition_message(result))
        self.emitted += 1
        self._rec.add("naive/fuse", (time.perf_counter() - start) * 1e3)

    def destroy_node(self) -> None:
        super().destroy_node()
        self._backend.close()


def child_main(bundle: str, stats_path: Path, *, slop_s: float, queue_size: int,
               torch_threads: int, audio_encode_hz: float) -> int:
    """Body of ``bench_runtime.py _child --kind naive``: run the naive node until stdin says
    stop (see ``_runtime_common.child_main`` for the protocol). ``torch_threads`` 0 = torch's
    default."""
    rec = StageRecorder()
    rig = Rig([PERCEPTION_YAML])
    try:
        node = NaiveTorchNode(rig.context, bundle, slop_s=slop_s, queue_size=queue_size,
                              torch_threads=torch_threads or None,
                              audio_encode_hz=audio_encode_hz, recorder=rec)
        rig.add(node, "single")  # rclpy.spin: one thread, callbacks one after the other
        print("READY", flush=True)
        sys.stdin.readline()
        extra = {"emitted": node.emitted, "encoded": node.encoded, "errors": node.errors,
                 "torch_threads": node.torch_threads[0],
                 "torch_interop_threads": node.torch_threads[1],
                 "audio_encode_hz": audio_encode_hz}
        stats_path.write_text(json.dumps({"stages": rec.snapshot(), "extra": extra}))
    finally:
        rig.close()
    return 0
