"""The UniAlign pipeline end to end on a tiny data set (:mod:`_unialign_tiny`): every stage runs,
the bundle names the family and loads in the runtime, its graphs match torch, the torch fallback
rebuilds each path from ``bundle.yaml``, the report has the paper's tables, stored outputs are
reused, and the CLI routes ``family: unialign`` configs."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _unialign_tiny import TinyUniAlignRun, tiny_unialign_run

from omnibind_ros.core.bundle import load_bundle

pytestmark = pytest.mark.slow

EXTENDED = ("thermal", "event", "audio", "tactile", "point_cloud")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> TinyUniAlignRun:
    return tiny_unialign_run(tmp_path_factory)


def test_every_stage_ran(run: TinyUniAlignRun) -> None:
    from omnibind_train.unialign.pipeline import STAGES

    assert set(STAGES) | {"ablate"} <= set(run.timings) and run.timings["total"] > 0
    out = run.cache / "runs" / "unialign_tiny" / "unialign"
    assert len(list(out.glob("model-main-*.pt"))) == 1
    assert len(list(out.glob("model-global_routing-*.pt"))) == 1
    assert not list(out.glob("*.state"))          # finished runs drop their resume state


def test_bundle_names_the_family_and_runs_in_the_runtime(run: TinyUniAlignRun) -> None:
    from omnibind_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend

    bundle = load_bundle(run.bundle)
    assert bundle.family == "unialign" and bundle.provenance["family"] == "unialign"
    assert set(bundle.modalities) == {"image", *EXTENDED}
    assert bundle.dim == 32 and len(bundle.labels.names) == 18
    parity = bundle.export["parity_max_abs_diff"]
    assert set(parity) >= {f"encoder:{m}" for m in bundle.modalities} | {"fusion", "text"}
    assert all(v <= 1e-4 for v in parity.values()), parity
    assert bundle.preprocess_configs["image"].size == 32      # the family's own sizes
    backend = OnnxRuntimeBackend(bundle, threads=1)
    rng = np.random.default_rng(0)
    for m, spec in bundle.modalities.items():
        assert bundle.manifest["modalities"][m]["encoder_config"]["family"] == "unialign"
        x = rng.standard_normal((3, *spec.input.shape[1:])).astype(np.float32)
        e = backend.encode(m, x)
        assert e.shape == (3, 32) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    names = list(bundle.labels.names[:3])
    prompts = [t.format(n) for n in names for t in bundle.labels.prompt_templates]
    text = backend.embed_text(prompts).reshape(len(names), -1, bundle.dim).mean(1)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    # the labels were embedded at export from float16-cached MiniLM features: near, not equal
    assert ((text * bundle.labels.embeddings[:3]).sum(axis=1) > 0.995).all()
    assert ((text @ bundle.labels.embeddings.T).argmax(axis=1) == np.arange(3)).all()


@pytest.mark.parametrize("modality", ["thermal", "point_cloud"])
def test_torch_fallback_rebuilds_a_path_from_bundle_yaml(run: TinyUniAlignRun,
                                                         modality: str) -> None:
    from omnibind_train.models.build import build_torch_module
    from omnibind_train.unialign.export import UniAlignEncoder, unialign_encoder
    from omnibind_train.unialign.pipeline import UniAlignConfig, UniAlignRun

    bundle = load_bundle(run.bundle)
    recorded = bundle.manifest["modalities"][modality]["encoder_config"]
    rebuilt = build_torch_module("encoder", recorded)
    assert isinstance(rebuilt, UniAlignEncoder)
    trained = unialign_encoder(modality, UniAlignRun(UniAlignConfig.from_dict(run.config))
                               .model())
    assert list(rebuilt.state_dict()) == list(trained.state_dict())
    rebuilt.load_state_dict(trained.state_dict(), strict=True)
    shape = bundle.modalities[modality].input.shape[1:]
    x = torch.randn(4, *shape)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), trained.eval()(x))
        fresh = build_torch_module("encoder", recorded).eval()
        assert not torch.allclose(fresh(x), trained(x), atol=1e-3)


def test_report_has_the_papers_tables(run: TinyUniAlignRun) -> None:
    data = run.results
    rows = data["results"]["rows"]
    assert {"UniAlign", "global routing", "s9", "s4", "s6", "s8", "Individual-Best"} <= set(rows)
    for m in ("image", *EXTENDED):
        z = rows["UniAlign"]["zero_shot"][m]
        assert 0.0 <= z["top1"] <= z["top5"] <= 1.0
    for m in EXTENDED:
        for other in ("text", "image"):
            pair = f"{m}-{other}" if f"{m}-{other}" in rows["UniAlign"]["retrieval"] \
                else f"{other}-{m}"
            assert {"R@1", "R@5", "cR@1"} <= set(rows["UniAlign"]["retrieval"][pair])
    params = data["parameters"]
    assert params["groups"]["lora_moe"] == params["lora_moe_formula_total"]
    assert set(data["vocabularies"]) == {"image", *EXTENDED}
    own = data["own_vocabulary"]
    assert set(own) == {"main", "global routing"} and set(own["main"]) == set(EXTENDED)
    assert all(0.0 <= v <= 1.0 for v in own["main"].values())
    assert "own labels" in (run.eval_dir / "report.md").read_text()
    assert data["curves"]["main"]["loss"][-1] < data["curves"]["main"]["loss"][0]
    report = (run.eval_dir / "report.md").read_text()
    for title in ("Zero-shot classification", "Retrieval against text",
                  "Retrieval against images", "Table 8 analogue", "Trainable parameters",
                  "fc, 4 modalities"):
        assert title in report, title
    assert (run.eval_dir / "zero_shot.png").stat().st_size > 1000
    assert 0.0 <= data["af"]["af_test_top1"] <= 1.0


def test_stored_stages_are_reused(run: TinyUniAlignRun) -> None:
    from omnibind_train.unialign.pipeline import UniAlignConfig, UniAlignRun
    from omnibind_train.unialign.stages import run_stage

    again = UniAlignRun(UniAlignConfig.from_dict(run.config))
    before = {p.name: p.stat().st_mtime_ns for p in again.out_dir.iterdir()}
    t0 = time.perf_counter()
    for stage in ("backbone", "teachers", "train", "ablate"):
        run_stage(again, stage)
    assert time.perf_counter() - t0 < 60
    assert {p.name: p.stat().st_mtime_ns for p in again.out_dir.iterdir()} == before


def test_cli_routes_unialign_configs(capsys, tmp_path) -> None:
    from omnibind_train.cli import main

    config = REPO / "training" / "configs" / "sim_unialign.yaml"
    assert main(["spaces", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unialign-family config" in err and "ablate" in err
    assert main(["train", "--config", str(REPO / "training" / "configs" / "tiny.yaml")]) == 2
    assert "family: unialign" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"family": "unialign", "modalities": ["sonar"]}))
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown extended modalities" in capsys.readouterr().err
