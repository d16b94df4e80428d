"""One tiny end-to-end UniAlign run (data -> backbone -> teachers -> train -> ablate -> af ->
eval -> export) per pytest session, shared by ``test_unialign_pipeline.py`` and
``test_unialign_node.py``.

It shares the tiny binding run's data set and cache (:mod:`_binding_tiny`): its teachers are
that run's specialist spaces (s9 thermal, s4 audio, s6 point cloud, s8 for event and tactile),
trained here when the binding run has not run yet in this session.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from _binding_tiny import tiny_binding_config

BUNDLE = "unialign_tiny"
RUN_NAME = "unialign_tiny"


def tiny_unialign_config(cache: Path, teacher_yaml: Path) -> dict[str, Any]:
    binding = tiny_binding_config(cache)
    return {
        "name": RUN_NAME, "seed": 0, "cache_dir": str(cache), "progress": False,
        "device": "cpu", "data": binding["data"] | {"preprocess": {
            "image": {"size": 32}, "thermal": {"size": 32}, "event": {"size": 32},
            "tactile": {"size": 32}, "audio": {"n_mels": 32, "hop_length": 640,
                                               "norm_mean": -11.0, "norm_std": 3.0},
            "point_cloud": {"num_points": 128}}},
        "keep_classes": 12,
        "teachers": {"config": str(teacher_yaml), "spaces": {
            "thermal": "s9", "event": "s8", "audio": "s4", "tactile": "s8",
            "point_cloud": "s6"}},
        "backbone": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 2,
                     "embed_dim": 32},
        "pretrain": {"epochs": 2, "batch_size": 24},
        "tokenizers": {"thermal": {"channels": [0], "patch": 8, "stride": 8},
                       "event": {"channels": [0, 1], "patch": 8, "stride": 8},
                       "tactile": {"channels": [0, 1, 2], "patch": 8, "stride": 8},
                       "audio": {"channels": [0], "patch": 8, "stride": 6},
                       "point_cloud": {"kind": "point", "groups": 8, "group_size": 8,
                                       "point_widths": [16, 32, 32]}},
        "training": {"epochs": 3, "batch_per_modality": 8},
        "ablations": [{"name": "global routing", "table": "routing",
                       "moe": {"routing": "global"}}],
        "af": {"loop": {"epochs": 2, "batch_size": 64, "log_every": 5},
               "fusion": {"kind": "af", "num_heads": 2, "zero_init": True}},
        "export": {"bundle": BUNDLE, "sample_batch": 2, "exporter": "torchscript"},
    }


@dataclass
class TinyUniAlignRun:
    cache: Path
    config: dict[str, Any]
    bundle: Path
    eval_dir: Path
    timings: dict[str, float]

    @property
    def results(self) -> dict[str, Any]:
        return json.loads((self.eval_dir / "results.json").read_text())


def tiny_unialign_run(tmp_path_factory: pytest.TempPathFactory) -> TinyUniAlignRun:
    """The session's tiny UniAlign run (run on first use)."""
    import torch

    from omnibind_train.unialign.pipeline import STAGES, UniAlignConfig, UniAlignRun
    from omnibind_train.unialign.stages import run_all

    cache = tmp_path_factory.getbasetemp() / "omnibind_binding_tiny"
    cache.mkdir(exist_ok=True)
    teacher_yaml = cache / "binding_tiny.yaml"
    teacher_yaml.write_text(yaml.safe_dump(tiny_binding_config(cache)))
    config = tiny_unialign_config(cache, teacher_yaml)
    bundle = cache / "bundles" / BUNDLE
    eval_dir = cache / "runs" / RUN_NAME / "eval"
    timings_file = cache / "runs" / RUN_NAME / "timings.json"
    if not timings_file.exists():
        stages = [*STAGES[:4], "ablate", *STAGES[4:]]
        with torch.random.fork_rng(devices=[]):
            run_all(UniAlignRun(UniAlignConfig.from_dict(config)), stages)
    return TinyUniAlignRun(cache, config, bundle, eval_dir,
                           json.loads(timings_file.read_text()))
