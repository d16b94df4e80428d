"""The binding family end to end on a tiny data set (:mod:`_binding_tiny`): every stage runs, the
bound bundle loads in the runtime, the evaluation has every row, routed binding beats the worst
single space, stored stages are reused, and the CLI keeps the two families' commands apart."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from _binding_tiny import SPECIALISTS, TinyBindingRun, tiny_binding_run
from _tiny import REPO

from omnibind_ros.core.bundle import load_bundle
from omnibind_train.binding.captions import STYLES
from omnibind_train.binding.pipeline import STAGES, BindingConfig

pytestmark = pytest.mark.slow

BINDING_CONFIG = REPO / "training" / "configs" / "sim_binding.yaml"
DEFAULT_CONFIG = REPO / "training" / "configs" / "sim_default.yaml"
MODALITIES = ("image", "text", "audio", "point_cloud", "thermal", "event", "tactile")
ROWS = {*SPECIALISTS, "Fixed average (Full)", "Routed Base", "Routed Full",
        "Full: L_align only", "Individual-Best"}
#: what each specialist of the tiny run embeds (its own towers; anchors excluded)
OWN = {"s0": {"image", "text"}, "s1": {"image", "text"}, "s4": {"audio", "text"},
       "s6": {"point_cloud", "text"}, "s8": {"image", "text", "audio", "thermal", "event",
                                               "tactile"},
       "s9": {"thermal", "text"}}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> TinyBindingRun:
    return tiny_binding_run(tmp_path_factory)


def _mean_zero_shot(res: dict) -> float:
    return float(np.mean([z["top1"] for z in res["zero_shot"].values()]))


def test_every_stage_ran(run: TinyBindingRun) -> None:
    assert set(STAGES) <= set(run.timings) and run.timings["total"] > 0
    for name in SPECIALISTS:
        space = run.cache / "runs" / "binding_tiny" / "spaces" / name
        assert (space / "weights.safetensors").exists() and (space / "space.json").exists()
    pairs = json.loads((run.cache / "runs" / "binding_tiny" / "binding" / "pairs.json")
                       .read_text())
    # every pool item of the 108 pool instances is a query once: 6 non-text blocks plus the
    # text block in every caption style (the blocks split 108 into 7 near-equal parts)
    blocks = [len(b) for b in np.array_split(np.arange(108), 7)]
    assert pairs["tuples"] == sum(blocks[i] for i in range(7) if i != 1) \
        + blocks[1] * len(STYLES)
    assert set(pairs["purity"]) == {*MODALITIES, "all"}
    assert all(0.0 <= v <= 1.0 for v in pairs["purity"].values())


def test_bound_bundle_loads_in_the_runtime(run: TinyBindingRun) -> None:
    bundle = load_bundle(run.bundle)
    assert bundle.family == "binding"
    prov = bundle.provenance
    assert prov["family"] == "binding" and prov["variant"] == "full"
    assert sorted(prov["spaces"]) == sorted(SPECIALISTS) and prov["target_space"] == "s0"
    assert set(bundle.modalities) == set(MODALITIES) - {"text"}
    assert bundle.text is not None and bundle.fusion is not None
    assert bundle.dim == 384  # the target space s0's size (its text tower is MiniLM)
    assert len(bundle.labels.names) == 18
    parity = bundle.export["parity_max_abs_diff"]
    assert set(parity) >= {f"encoder:{m}" for m in bundle.modalities} | {"fusion", "text"}
    assert all(v <= 1e-4 for v in parity.values()), parity
    for m, spec in bundle.manifest["modalities"].items():
        cfg = spec["encoder_config"]
        assert cfg["family"] == "binding" and cfg["variant"] == "full", m
        assert [s["name"] for s in cfg["spaces"]] == [n for n in SPECIALISTS if m in OWN[n]]


def test_results_have_every_row(run: TinyBindingRun) -> None:
    results = run.results["results"]
    rows = results["rows"]
    assert set(rows) == ROWS
    all_pairs = [f"{a}-{b}" for i, a in enumerate(MODALITIES) for b in MODALITIES[i + 1:]]
    assert sorted(results["pairs"]) == sorted(all_pairs) and len(all_pairs) == 21
    for name in ("Fixed average (Full)", "Routed Base", "Routed Full", "Full: L_align only"):
        assert rows[name]["kind"] == "binding"
        assert set(rows[name]["retrieval"]) == set(all_pairs), name
        assert set(rows[name]["zero_shot"]) == set(MODALITIES) - {"text"}, name
    for name in SPECIALISTS:  # a space reports only what it embeds itself
        own = OWN[name]
        assert rows[name]["kind"] == "individual"
        assert set(rows[name]["zero_shot"]) == own - {"text"}, name
        assert {tuple(p.split("-")) for p in rows[name]["retrieval"]} == \
            {(a, b) for a, b in (p.split("-") for p in all_pairs) if {a, b} <= own}, name
    for res in rows.values():
        for r in res["retrieval"].values():
            assert 0 <= r["R@1"] <= r["R@5"] <= 1 and 0 <= r["cR@1"] <= 1
    # the report and the diagnostics
    assert (run.eval_dir / "report.md").read_text().count("Routed Full") >= 1
    extra = run.results
    assert set(extra["router_weights"]) == set(MODALITIES)
    for m, w in extra["router_weights"].items():
        assert sum(w.values()) == pytest.approx(1.0, abs=1e-4), m
    assert set(extra["text_router_by_style"]) == set(STYLES)
    assert extra["af"]["af_test_top1"] >= 0


def test_routed_full_beats_the_worst_individual_space(run: TinyBindingRun) -> None:
    """Mean zero-shot top-1 over the modalities each row embeds (18 classes: chance 1/18)."""
    rows = run.results["results"]["rows"]
    individual = {n: _mean_zero_shot(rows[n]) for n in SPECIALISTS}
    worst = min(individual.values())
    full = _mean_zero_shot(rows["Routed Full"])
    assert full > worst + 0.03, (full, individual)
    assert full > 1.5 / 18, full  # well above chance over all six non-text modalities
    # and on the target's own column, binding keeps most of what the target space has
    assert rows["Routed Full"]["zero_shot"]["image"]["top1"] >= \
        0.5 * rows["s0"]["zero_shot"]["image"]["top1"]


def test_stored_stages_are_reused(run: TinyBindingRun) -> None:
    from omnibind_train.binding.pipeline import BindingRun
    from omnibind_train.binding.stages import run_stage

    again = BindingRun(BindingConfig.from_dict(run.config))
    out = again.out_dir
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    t0 = time.perf_counter()
    for stage in ("spaces", "pairs", "bind"):
        run_stage(again, stage)
    assert time.perf_counter() - t0 < 30
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert after == before  # nothing retrained or rewritten


def test_cli_keeps_the_families_apart(capsys) -> None:
    from omnibind_train.cli import main

    assert main(["stage0", "--config", str(BINDING_CONFIG)]) == 2
    err = capsys.readouterr().err
    assert "binding-family config" in err and "spaces" in err
    assert main(["spaces", "--config", str(DEFAULT_CONFIG)]) == 2
    err = capsys.readouterr().err
    assert "binding family" in err and "family: binding" in err
