"""The perception node runs a bound (binding-family) bundle: ``omnibind-bringup`` configures on
the tiny binding run's bundle (:mod:`_binding_tiny`), and its recognitions name the bundle and
the ``binding`` family; and the bundle runs through the runtime's ONNX backend.

The training package (tests included: ``test/test_layering.py``) never imports rclpy nor
``omnibind_ros.ros``, so the node runs in a subprocess with loopback-only discovery
(``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``; ``omnibind-bringup`` enforces it too).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from _binding_tiny import TinyBindingRun, tiny_binding_run

pytestmark = pytest.mark.slow


def _child_env() -> dict[str, str]:
    """The bringup child's environment: loopback-only discovery (the CLI also enforces it) and
    a domain id of its own when the caller set none (as the Makefile's test run does)."""
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    if not env.get("ROS_DOMAIN_ID", "").isdigit():
        env["ROS_DOMAIN_ID"] = str(150 + os.getpid() % 80)
    return env


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> TinyBindingRun:
    return tiny_binding_run(tmp_path_factory)


@pytest.mark.ros
def test_perception_node_answers_with_a_bound_bundle(run: TinyBindingRun, tmp_path) -> None:
    """``omnibind-bringup`` (the perception node and the simulated sensors, in its own
    process: the training package never imports rclpy, its tests neither) configures on the
    bound bundle and answers; every Recognition names the bundle and the binding family."""
    from omnibind_ros.core.bundle import load_bundle

    bundle = load_bundle(run.bundle)
    assert bundle.family == "binding"
    out = tmp_path / "summary.json"
    cmd = [sys.executable, "-m", "omnibind_ros.tools.bringup", "--bundle", str(run.bundle),
           "--no-ui", "--duration", "8", "--summary-json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_child_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(out.read_text())
    assert summary["recognitions"] > 0 and summary["answered_fraction"] > 0, summary
    # every recognition the monitor received was answered by the bound bundle
    assert summary["models"] == {f"{bundle.name} [binding]": summary["models"].get(
        f"{bundle.name} [binding]", -1)} and sum(summary["models"].values()) > 0
    assert set(summary["sensors"]) >= {"camera", "lidar"}


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
