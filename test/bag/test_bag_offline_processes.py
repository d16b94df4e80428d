"""The offline evaluator's worker processes give exactly the in-process (threads) results.

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
    pytest.importorskip("omnibind_train.testing", reason="needs omnibind_train (torch)")
    from omnibind_train import testing
    from test_bag_offline import SENSORS, _config

    from omnibind_ros.bag.record import record_sim
    from omnibind_ros.bag.truth import GroundTruth

    root = tmp_path_factory.mktemp("offline_processes")
    bundle = testing.build_tiny_bundle(root / "tiny")
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


def test_processes_match_threads(setup: dict[str, Any], tmp_path: Path) -> None:
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
    # encode_all in workers: the same ticks again, more samples encoded
    every = evaluate_offline(setup["bag"], processes=2, encode_all=True, **kwargs)
    assert [dataclasses.replace(t, latency_s=None) for t in every.ticks] == strip[0]
    assert every.states == results[0].states
    assert sum(v["encoded"] for v in every.extra["sensors"].values()) > \
        sum(v["encoded"] for v in results[2].extra["sensors"].values())


def test_encoder_failures_in_workers(setup: dict[str, Any]) -> None:
    """A failing encoder inside the workers: the same ticks and states as in-process, lazily
    (pass 2 replays windows) and with encode_all; the workers are gone afterwards."""
    from omnibind_ros.bag.config import load_node_config
    from omnibind_ros.bag.offline import OfflineEvaluator, _backend_for
    from omnibind_ros.bag.reader import iter_messages
    from omnibind_ros.core.backends import create_backend
    from omnibind_ros.core.bundle import load_bundle

    messages = list(iter_messages(setup["bag"]))
    cfg = load_node_config(setup["config"])
    bundle = load_bundle(setup["bundle"])
    runs, replayed = {}, {}
    for processes in (0, 2):
        for encode_all in (True, False):
            if processes:
                backend = _backend_for("onnxruntime", bundle, (), fusion=True, text=True)
            else:
                backend = FailingImageEncoder(create_backend("onnxruntime", bundle, threads=1))
            evaluator = OfflineEvaluator(cfg, bundle, backend, threads=2, encode_all=encode_all,
                                         processes=processes,
                                         backend_wrapper=FailingImageEncoder)
            pids = [w.proc.pid for w in evaluator._workers]
            assert len(pids) == processes
            try:
                ticks, states, _ = evaluator.run(messages, messages[0].log_time_ns)
            finally:
                evaluator.close()
            assert all(_gone(pid) for pid in pids)
            runs[processes, encode_all] = ([dataclasses.replace(t, latency_s=None)
                                            for t in ticks], states)
            replayed[processes, encode_all] = evaluator.timing["windows_replayed"]
    for encode_all in (True, False):
        assert runs[2, encode_all] == runs[0, encode_all]
        assert replayed[2, encode_all] == replayed[0, encode_all]
    assert replayed[2, False] > 0 and replayed[2, True] == 0
    camera = [c for c in runs[2, True][1] if c.sensor == "camera"]
    assert any(c.state == "DEGRADED" and "non-finite" in c.reason for c in camera)


def test_workers_end_with_the_run(setup: dict[str, Any]) -> None:
    """An exception out of the message iterator (as Ctrl-C) ends the workers at once; a worker
    that fails to set up is a BagEvalError with its traceback."""
    from omnibind_ros.bag.config import load_node_config
    from omnibind_ros.bag.offline import BagEvalError, OfflineEvaluator, _backend_for
    from omnibind_ros.bag.reader import iter_messages
    from omnibind_ros.core.bundle import load_bundle

    cfg = load_node_config(setup["config"])
    bundle = load_bundle(setup["bundle"])
    backend = _backend_for("onnxruntime", bundle, (), fusion=True, text=True)

    def interrupted() -> Any:
        for i, m in enumerate(iter_messages(setup["bag"])):
            if i == 150:
                raise Stop
            yield m

    evaluator = OfflineEvaluator(cfg, bundle, backend, processes=2)
    pids = [w.proc.pid for w in evaluator._workers]
    with pytest.raises(Stop):
        try:
            evaluator.run(interrupted(), bundle_start(setup["bag"]))
        finally:
            evaluator.close()
    assert len(pids) == 2 and all(_gone(pid) for pid in pids)

    evaluator = OfflineEvaluator(cfg, bundle, backend, processes=2,
                                 backend_wrapper=BrokenBackend)
    pids = [w.proc.pid for w in evaluator._workers]
    with pytest.raises(BagEvalError, match="no backend for you"):
        try:
            evaluator.run(iter_messages(setup["bag"]), bundle_start(setup["bag"]))
        finally:
            evaluator.close()
    assert all(_gone(pid) for pid in pids)


def bundle_start(bag: Path) -> int:
    from omnibind_ros.bag.reader import open_info

    return open_info(bag).start_ns
