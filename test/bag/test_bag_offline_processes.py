"""The parallel path (sensor stages in worker processes) gives exactly the reference's results.

Same short bag and tiny bundle as ``test_bag_offline`` (its helpers build them). The workers
are separate interpreters: an encoder failure is injected there with a picklable backend
wrapper defined here (this module is light to import; the workers import it by name).
"""
from __future__ import annotations

import dataclasses
import json
import os
import zlib
from pathlib import Path
from typing import Any

import pytest

from omnibind_ros.testing import write_test_bundle

pytestmark = pytest.mark.ros  # rclpy deserializes the messages


class FailingImageEncoder:
    """Backend wrapper: the image encoder returns NaN for a third of its inputs (by content,
    so the same input fails whatever the batch), as ``test_bag_offline.FailingEncoder``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode(self, modality: str, batch: Any) -> Any:
        import numpy as np

        out = np.array(self.inner.encode(modality, batch), copy=True)
        if modality == "image":
            for i, x in enumerate(batch):
                if zlib.crc32(np.ascontiguousarray(x).tobytes()) % 3 == 0:
                    out[i] = np.nan
        return out


class BrokenBackend:
    """Backend wrapper that cannot be created (a worker that fails while setting up)."""

    def __init__(self, inner: Any) -> None:
        raise RuntimeError("no backend for you")


class Stop(BaseException):
    """Raised by a message iterator mid-run (like Ctrl-C)."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from test_bag_offline import SENSORS, _config

    from omnibind_ros.bag.record import record_sim
    from omnibind_ros.bag.truth import GroundTruth

    root = tmp_path_factory.mktemp("offline_processes")
    bundle = write_test_bundle(root / "tiny")
    bag = root / "bag"
    record_sim(bag, duration_s=4.0, scenario="quick_unplug", seed=3, sensors=SENSORS,
               object_period_s=1.5, progress=False)
    labels = [*GroundTruth.from_bag(bag).labels(), "glass teapot"]
    return {"bundle": bundle, "bag": bag, "config": _config(root / "perception.yaml", labels)}


def _json_without_timing(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    doc.pop("timing")
    return doc


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_processes_match_the_reference(setup: dict[str, Any], tmp_path: Path) -> None:
    """processes=2 and processes=0 give the same report (JSON minus timing) and ticks."""
    from omnibind_ros.bag.offline import evaluate_offline
    from omnibind_ros.bag.report import write_report
    from omnibind_ros.bag.scoring import score

    kwargs = dict(bundle=setup["bundle"], config=setup["config"], progress=False)
    results = {}
    for processes in (0, 2):
        results[processes] = evaluate_offline(setup["bag"], processes=processes, **kwargs)
    assert results[0].extra["timing"]["processes"] == 0
    assert results[2].extra["timing"]["processes"] == 2
    assert sorted(sum(results[2].extra["timing"]["worker_sensors"], [])) == sorted(
        ["camera", "lidar", "microphone"])
    docs = {p: write_report(r, score(r), tmp_path / str(p), plots=False)
            for p, r in results.items()}
    assert _json_without_timing(docs[0]["json"]) == _json_without_timing(docs[2]["json"])
    assert docs[0]["ticks"].read_text() == docs[2]["ticks"].read_text()
    strip = [[dataclasses.replace(t, latency_s=None) for t in r.ticks] for r in results.values()]
    assert strip[0] == strip[1] and len(strip[0]) >= 35
    assert results[0].states == results[2].states


def test_encoder_failures_in_workers(setup: dict[str, Any]) -> None:
    """A failing encoder inside the workers: the same ticks and states as in the reference."""
    from omnibind_ros.bag.offline import evaluate_offline

    kwargs = dict(bundle=setup["bundle"], config=setup["config"], progress=False,
                  backend_wrapper=FailingImageEncoder)
    runs = {p: evaluate_offline(setup["bag"], processes=p, **kwargs) for p in (0, 2)}
    ticks = [[dataclasses.replace(t, latency_s=None) for t in r.ticks] for r in runs.values()]
    assert ticks[0] == ticks[1] and runs[0].states == runs[2].states
    camera = [c for c in runs[2].states if c.sensor == "camera"]
    assert any(c.state == "DEGRADED" and "non-finite" in c.reason for c in camera)


def _parallel(setup: dict[str, Any], wrapper: Any = None) -> tuple[Any, Any]:
    """Started and configured worker processes, and a fresh replay of the bag."""
    from omnibind_ros.bag.config import load_node_config
    from omnibind_ros.bag.parallel import ParallelStages, backend_for
    from omnibind_ros.bag.reader import open_info
    from omnibind_ros.bag.replay import BagReplay
    from omnibind_ros.core.bundle import load_bundle
    from omnibind_ros.core.labels import resolve_labels
    from omnibind_ros.core.recognizer import build_fusion_tick

    cfg = load_node_config(setup["config"])
    bundle = load_bundle(setup["bundle"])
    info = open_info(setup["bag"])
    topics = {s.topic: s.name for s in cfg.sensors}
    parallel = ParallelStages.start(cfg, 2, info, topics)
    parallel.configure(bundle, "onnxruntime", wrapper)
    backend = backend_for("onnxruntime", bundle, (), fusion=True, text=True)
    labels = resolve_labels(bundle, backend, cfg.label_names, cfg.label_file)
    replay = BagReplay(cfg, build_fusion_tick(bundle, backend, cfg.fusion, *labels),
                       info.start_ns)
    return parallel, replay


def test_workers_end_with_the_run(setup: dict[str, Any]) -> None:
    """An exception out of the message iterator (as Ctrl-C) ends the workers at once; a worker
    that fails to set up is a BagEvalError with its traceback."""
    from omnibind_ros.bag.errors import BagEvalError
    from omnibind_ros.bag.reader import iter_messages

    def interrupted() -> Any:
        for i, m in enumerate(iter_messages(setup["bag"])):
            if i == 150:
                raise Stop
            yield m

    parallel, replay = _parallel(setup)
    pids = [w.proc.pid for w in parallel.workers]
    with pytest.raises(Stop):
        try:
            parallel.run(interrupted(), _topics(setup), replay)
        finally:
            parallel.close()
    assert len(pids) == 2 and all(_gone(pid) for pid in pids)

    parallel, replay = _parallel(setup, BrokenBackend)
    pids = [w.proc.pid for w in parallel.workers]
    with pytest.raises(BagEvalError, match="no backend for you"):
        try:
            parallel.run(iter_messages(setup["bag"]), _topics(setup), replay)
        finally:
            parallel.close()
    assert all(_gone(pid) for pid in pids)


def _topics(setup: dict[str, Any]) -> dict[str, str]:
    from omnibind_ros.bag.config import load_node_config

    return {s.topic: s.name for s in load_node_config(setup["config"]).sensors}
