"""The perception LifecycleNode runs a bound (binding-family) bundle: it configures on the tiny
binding run's bundle (:mod:`_binding_tiny`), fuses a camera and a LiDAR, and publishes a
Recognition whose label is one of the bundle's and whose model family is ``binding``.

rclpy is imported only inside the tests, after this module has made the process's ROS
environment loopback-only (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, a private log directory
and a reserved domain id), as ``test/conftest.py`` does for the runtime suite.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from _binding_tiny import TinyBindingRun, tiny_binding_run

from omnibind_ros.ros import env as ros_env


def _make_ros_env_safe() -> str | None:
    """Loopback-only discovery before any rclpy import (rclpy itself is imported only by the
    ROS test); why ROS must not be used here, or None."""
    try:
        domain = None if os.environ.get("ROS_DOMAIN_ID", "").isdigit() else \
            ros_env.reserve_domain_id(1, 100)
        ros_env.ensure_safe_ros_env(domain_id=domain)
    except Exception as exc:  # rclpy imported earlier without LOCALHOST: refuse to go on
        return f"cannot make the ROS environment loopback-only ({exc})"
    return None


_UNSAFE_ENV = _make_ros_env_safe()
pytestmark = pytest.mark.slow

SENSORS = {"camera": ("image", "/binding_t/camera", "sensor_msgs/msg/Image"),
           "lidar": ("point_cloud", "/binding_t/lidar", "sensor_msgs/msg/PointCloud2")}
RATE_HZ = 10.0


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> TinyBindingRun:
    return tiny_binding_run(tmp_path_factory)


@pytest.fixture(scope="module")
def ctx() -> Iterator[Any]:
    if _UNSAFE_ENV:
        pytest.skip(_UNSAFE_ENV)
    assert os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST"
    try:
        import rclpy

        import omnibind_ros.msg  # noqa: F401
    except Exception as exc:  # ImportError, or the wheels' missing shared libraries
        pytest.skip(f"rclpy or the omnibind_ros interfaces are unavailable ({exc})")
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    context = Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    yield context
    rclpy.shutdown(context=context)


def _overrides(bundle: str) -> list[Any]:
    from rclpy.parameter import Parameter

    out = [Parameter("bundle_path", value=bundle), Parameter("fusion.rate_hz", value=20.0),
           Parameter("sensors", Parameter.Type.STRING_ARRAY, list(SENSORS))]
    for name, (modality, topic, mtype) in SENSORS.items():
        out += [Parameter(f"sensors.{name}.modality", value=modality),
                Parameter(f"sensors.{name}.topic", value=topic),
                Parameter(f"sensors.{name}.message_type", value=mtype),
                Parameter(f"sensors.{name}.expected_rate_hz", value=RATE_HZ)]
    return out


def _message(modality: str, stamp_s: float, rng: np.random.Generator) -> Any:
    from omnibind_ros.ros import conversions as conv

    if modality == "image":
        return conv.numpy_to_image(rng.integers(0, 255, (48, 64, 3), np.uint8), "rgb8", stamp_s)
    # one compact object in front of the sensor (the preprocessor looks for a cluster)
    return conv.xyz_to_pointcloud2(rng.normal(0, 0.05, (400, 3)).astype(np.float32)
                                   + np.float32([1.5, 0, 0.3]), stamp_s)


@pytest.mark.ros
def test_perception_node_answers_with_a_bound_bundle(run: TinyBindingRun, ctx: Any) -> None:
    from lifecycle_msgs.msg import State
    from rclpy.node import Node

    from omnibind_ros.msg import Recognition
    from omnibind_ros.ros import qos
    from omnibind_ros.ros.executor import PoolSafeExecutor
    from omnibind_ros.ros.interfaces import message_class
    from omnibind_ros.ros.perception_node import PerceptionNode

    node = PerceptionNode(context=ctx, parameter_overrides=_overrides(str(run.bundle)))
    helper = Node("binding_perception_test_helper", context=ctx)
    recognitions: list[Any] = []
    helper.create_subscription(Recognition, "/omnibind_perception/recognition",
                               recognitions.append, qos.RECOGNITION)
    pubs = {name: (helper.create_publisher(message_class(mtype), topic, qos.SENSOR_DATA),
                   modality) for name, (modality, topic, mtype) in SENSORS.items()}
    executor = PoolSafeExecutor(num_threads=4, context=ctx)
    executor.add_node(node)
    executor.add_node(helper)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    rng = np.random.default_rng(0)
    try:
        assert node.autostart()
        assert node._state_machine.current_state[0] == State.PRIMARY_STATE_ACTIVE
        bundle = node._bundle
        assert bundle.family == "binding"
        labels = set(bundle.labels.names)

        def both_fused() -> Any:
            return next((r for r in reversed(recognitions)
                         if set(r.sensors) == set(SENSORS)), None)

        end = time.monotonic() + 60.0
        while time.monotonic() < end and both_fused() is None:
            now = helper.get_clock().now().nanoseconds * 1e-9
            for pub, modality in pubs.values():
                pub.publish(_message(modality, now, rng))
            time.sleep(1.0 / RATE_HZ)
        rec = both_fused()
        assert rec is not None, f"no fused recognition; got {len(recognitions)} messages"
        assert rec.best_label in labels and rec.best_label == rec.top_labels[0]
        assert set(rec.top_labels) <= labels
        assert 0.0 < rec.best_score <= 1.0
        assert list(rec.top_scores) == sorted(rec.top_scores, reverse=True)
        assert sorted(rec.modalities) == ["image", "point_cloud"]
        assert len(rec.per_modality) == 2
        assert rec.model_family == "binding" and rec.bundle == bundle.name
    finally:
        executor.shutdown()
        thread.join(5.0)
        node.destroy_node()
        helper.destroy_node()


def test_bound_bundle_through_the_runtime_backend(run: TinyBindingRun) -> None:
    """The same bundle through the runtime's ONNX backend without ROS: every bound encoder
    embeds inputs into unit vectors of the bundle's size, the fusion head fuses them, and the
    bound text graph reproduces the exported label embeddings (the bound text router)."""
    from omnibind_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend
    from omnibind_ros.core.bundle import load_bundle

    bundle = load_bundle(run.bundle)
    backend = OnnxRuntimeBackend(bundle, threads=1)
    rng = np.random.default_rng(1)
    tokens = []
    for m, spec in bundle.modalities.items():
        x = rng.standard_normal((2, *spec.input.shape[1:])).astype(np.float32)
        e = backend.encode(m, x)
        assert e.shape == (2, bundle.dim), m
        assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4), m
        tokens.append(e)
    fused = backend.fuse(np.stack(tokens, axis=1), np.ones((2, len(tokens)), dtype=bool))
    assert fused.shape == (2, bundle.dim) and np.isfinite(fused).all()
    labels = bundle.labels
    names = list(labels.names[:3])
    prompts = [t.format(n) for n in names for t in labels.prompt_templates]
    k = len(labels.prompt_templates)
    text = backend.embed_text(prompts).reshape(len(names), k, -1).mean(1)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    # the labels were embedded at export from float16-cached MiniLM features: near, not equal
    cosine = (text * labels.embeddings[:3]).sum(axis=1)
    assert (cosine > 0.995).all(), cosine
    assert ((text @ labels.embeddings.T).argmax(axis=1) == np.arange(3)).all()
