"""One tiny end-to-end binding run (data -> spaces -> pairs -> bind -> af -> eval -> export) per
pytest session, shared by ``test_binding_pipeline.py`` and ``test_binding_node.py``.

The run writes into ``<basetemp>/omnibind_binding_tiny``; whichever test file asks first runs
it (about a minute and a half on two cores: data generation and the trunk features dominate),
the other reuses the finished run. It binds six of the twelve specialist spaces, enough for
every modality: s0 (target) and s1 image-text, s4 audio-text, s6 point cloud, s8 the weak
generalist (audio, thermal, event, tactile), s9 thermal; the retrievers of event and tactile are
s8's (s10 and s11 are left out), the pairs without a retriever go through the image hub.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BUNDLE = "binding_tiny"
RUN_NAME = "binding_tiny"
SPECIALISTS = ["s0", "s1", "s4", "s6", "s8", "s9"]


def tiny_binding_config(cache: Path) -> dict[str, Any]:
    """The tiny run's ``BindingConfig`` as a mapping (inline data set, small everything)."""
    return {
        "name": RUN_NAME, "seed": 0, "cache_dir": str(cache), "progress": False,
        "device": "cpu",
        "data": {"dataset": {"name": "sim_binding_tiny", "seed": 1, "world": {},
                             "teacher_train": 72, "teacher_val": 18, "student_train": 72,
                             "student_val": 108, "student_test": 36, "shard_size": 50,
                             "workers": 1, "combos_per_sample": 1,
                             "combo_size_weights": {1: 0.06, 2: 0.46, 3: 0.15, 4: 0.16,
                                                    5: 0.11, 6: 0.04, 7: 0.02}},
                 "trunk_batch_size": 36},
        "specialists": list(SPECIALISTS),
        "specialist_epochs_scale": 0.5,
        "target": "s0",
        "retrievers": {"image-text": ["image@s0", "text@s0"],
                       "audio-text": ["audio@s4", "text@s4"],
                       "audio-image": ["audio@s8", "image@s8"],
                       "point_cloud-image": ["point_cloud@s6", "image@s1"],
                       "point_cloud-text": ["point_cloud@s6", "text@s6"],
                       "thermal-image": ["thermal@s9", "image@s1"],
                       "thermal-text": ["thermal@s9", "text@s9"],
                       "event-image": ["event@s8", "image@s8"],
                       "tactile-image": ["tactile@s8", "image@s8"]},
        "projector": {"heads": 2, "hidden_dim": 64, "epochs": 3, "batch_size": 64},
        "router_training": {"epochs": 3, "batch_size": 64},
        "router": {"hidden_dim": 32},
        "variants": {"base": ["s1", "s4", "s6", "s8"], "full": list(SPECIALISTS)},
        "ablations": [{"name": "L_align only", "variant": "full",
                       "training": {"use_dec": False}}],
        "af": {"loop": {"epochs": 2, "batch_size": 64, "log_every": 5},
               "fusion": {"kind": "af", "num_heads": 2, "zero_init": True}},
        # TorchScript for speed (the dynamo exporter takes three times as long here)
        "export": {"bundle": BUNDLE, "variant": "full", "sample_batch": 2,
                   "exporter": "torchscript"},
    }


@dataclass
class TinyBindingRun:
    cache: Path
    config: dict[str, Any]
    bundle: Path
    eval_dir: Path
    timings: dict[str, float]

    @property
    def results(self) -> dict[str, Any]:
        return json.loads((self.eval_dir / "results.json").read_text())


def tiny_binding_run(tmp_path_factory: pytest.TempPathFactory) -> TinyBindingRun:
    """The session's tiny binding run (run on first use)."""
    import torch

    from omnibind_train.binding.pipeline import BindingConfig, BindingRun
    from omnibind_train.binding.stages import run_all

    cache = tmp_path_factory.getbasetemp() / "omnibind_binding_tiny"
    cache.mkdir(exist_ok=True)
    config = tiny_binding_config(cache)
    bundle = cache / "bundles" / BUNDLE
    eval_dir = cache / "runs" / RUN_NAME / "eval"
    timings_file = cache / "runs" / RUN_NAME / "timings.json"
    if not timings_file.exists():
        with torch.random.fork_rng(devices=[]):
            run_all(BindingRun(BindingConfig.from_dict(config)))
    return TinyBindingRun(cache, config, bundle, eval_dir,
                          json.loads(timings_file.read_text()))
