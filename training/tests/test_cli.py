"""``omnibind-train``: help, config errors, overrides, and tiny subcommands."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _tiny import REPO, TINY_CONFIG, tiny_cache

from omnibind_train.cli import build_parser, main
from omnibind_train.pipeline import PipelineConfig, apply_overrides

COMMANDS = ("data", "stage0", "cad", "af", "eval", "export", "all")


def test_help_lists_every_subcommand(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in COMMANDS:
        assert cmd in out


@pytest.mark.parametrize("cmd", COMMANDS)
def test_subcommand_help(cmd: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert "--config" in capsys.readouterr().out


def test_parser_options() -> None:
    args = build_parser().parse_args(["cad", "--terms", "in,se", "--resume", "auto",
                                      "--set", "cad.loop.epochs=2"])
    assert args.terms == "in,se" and args.resume == "auto"
    assert args.overrides == ["cad.loop.epochs=2"]


def test_overrides_and_config_round_trip(tmp_path) -> None:
    raw = apply_overrides({"cad": {"loop": {"epochs": 3}}},
                          ["cad.loop.epochs=5", "cad.terms=[in, cr]", "seed=7"])
    assert raw == {"cad": {"loop": {"epochs": 5}, "terms": ["in", "cr"]}, "seed": 7}
    cfg = PipelineConfig.from_yaml(TINY_CONFIG, ["af.negatives=false"])
    assert cfg.af.negatives is False and cfg.data.dataset == "config/sim_dataset_tiny.yaml"
    again = PipelineConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    default = PipelineConfig.from_yaml(REPO / "training/configs/sim_default.yaml")
    assert default.export.bundle == "default" and default.cad.terms == ["in", "cr", "se"]


def test_bad_config_is_a_one_line_usage_error(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage0: {loop: {epoch: 3}}\n")
    assert main(["stage0", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("omnibind-train: error:") and "epoch" in err and "\n" not in err
    assert main(["data", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_training_never_imports_rclpy() -> None:
    code = ("import sys, omnibind_train.cli, omnibind_train.pipeline, omnibind_train.data, "
            "omnibind_train.trainers; assert 'rclpy' not in sys.modules, 'rclpy imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_console_script_runs_tiny_data_and_stage0(tmp_path_factory, capsys) -> None:
    cache = tiny_cache(tmp_path_factory)
    exe = REPO / ".venv" / "bin" / "omnibind-train"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "omnibind_train.cli"]
    out = subprocess.run([*cmd, "data", "--config", str(TINY_CONFIG), "--cache-dir",
                          str(cache), "--no-progress"], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    root = cache / "datasets" / "sim_tiny"
    assert str(root) in out.stdout and (root / "manifest.json").exists()
    # stage 0 in-process, with an override
    assert main(["stage0", "--config", str(TINY_CONFIG), "--cache-dir", str(cache),
                 "--no-progress", "--set", "name=cli_tiny", "--set",
                 "stage0.loop.epochs=3"]) == 0
    final = cache / "runs" / "cli_tiny" / "stage0" / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["train"]["loop"]["epochs"] == 3 and config["stage"] == "stage0"
    assert "zero-shot" in capsys.readouterr().out
