"""INT8 calibration samples (omnibind_ros.sim.calibration) are exactly the model inputs
training makes from the same simulated samples (omnibind_train.data.preprocess), and
build_tensorrt_engines builds INT8 engines from them (with tensorrt_rtx, which needs no GPU)."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from omnibind_ros.core.bundle import load_bundle
from omnibind_ros.sim.calibration import SimCalibration, sim_inputs
from omnibind_ros.sim.world import World
from omnibind_ros.testing import TEST_MODALITIES, write_test_bundle
from omnibind_train.data.preprocess import SamplePreprocessor
from omnibind_train.export import build_tensorrt_engines


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return write_test_bundle(tmp_path_factory.mktemp("calib") / "tiny")


@pytest.mark.parametrize("modality", TEST_MODALITIES)
def test_calibration_inputs_are_the_training_inputs(bundle_dir, modality):
    bundle = load_bundle(bundle_dir)
    world, seeds = World(), range(100, 106)
    config = bundle.modalities[modality].preprocess.to_dict()
    training = SamplePreprocessor(modality, config)
    expected = [training(world.sample(s, modalities=[modality])) for s in seeds]
    expected = [x for x in expected if x is not None]
    got = list(sim_inputs(bundle, modality, seeds, world))
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, np.asarray(e, dtype=np.float32))
    batches = list(SimCalibration(bundle, samples=6, batch_size=4, seed=100,
                                  modalities=[modality])[f"encoder:{modality}"])
    np.testing.assert_array_equal(np.concatenate(batches), np.stack(expected))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                    reason="tensorrt_rtx is not installed")
def test_build_tensorrt_engines_int8_with_tensorrt_rtx(bundle_dir, tmp_path):
    built = build_tensorrt_engines(bundle_dir, precision={"default": "int8",
                                                          "audio": "fp16"},
                                   module="tensorrt_rtx", engines_dir=tmp_path,
                                   calib_samples=8, max_batch=4)
    manifest = json.loads((built["fusion"].parent / "engines.json").read_text())
    precisions = {k: e["precision"] for k, e in manifest["components"].items()}
    assert precisions["encoder:image"] == "int8" and precisions["encoder:audio"] == "fp32"
    assert precisions["fusion"] == "fp32"
    assert set(manifest["calibration"]) == {f"encoder:{m}" for m in TEST_MODALITIES
                                            if m != "audio"}
