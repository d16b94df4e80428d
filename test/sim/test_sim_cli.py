"""``omnibind-sim`` argument parsing, error reporting and the three subcommands."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from omnibind_ros.sim import cli
from omnibind_ros.sim.dataset import writer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_dataset import fake_factory  # noqa: E402  (the fake world shared with the writer tests)

TINY = Path(__file__).resolve().parents[2] / "config" / "sim_dataset_tiny.yaml"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("OMNIBIND_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake_world(monkeypatch) -> None:
    monkeypatch.setattr(writer, "default_world_factory", fake_factory)  # generate's default


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_parser_defaults_and_required_command() -> None:
    args = cli.build_parser().parse_args(["generate"])
    assert args.config == Path("config/sim_dataset.yaml") and args.workers is None
    assert args.out is None and not args.overwrite
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args([])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["generate", "--workers", "0"])
    assert e.value.code == 2


@pytest.mark.parametrize("text, key", [
    ("teacher_train: 10\nstudnet_train: 5\n", "studnet_train"),
    ("student_val: -3\n", "student_val"),
    ("shard_size: 0\n", "shard_size"),
    ("- a\n- b\n", "mapping"),
])
def test_bad_config_exits_2_with_one_line_naming_the_key(tmp_path, capsys, text, key) -> None:
    cfg = write_yaml(tmp_path / "bad.yaml", text)
    assert cli.main(["generate", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err and err.count("\n") == 1


def test_missing_config_and_missing_dataset_exit_2(tmp_path, capsys) -> None:
    assert cli.main(["generate", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli.main(["info", str(tmp_path)]) == 2
    assert "not a data set" in capsys.readouterr().err


def test_generate_then_info(tmp_path, capsys, fake_world) -> None:
    out = tmp_path / "ds"
    assert cli.main(["generate", "--config", str(TINY), "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "samples/s" in text and "108 samples" in text
    assert json.loads((out / "manifest.json").read_text())["complete"]
    # a second run renders nothing (everything is there) and still succeeds
    assert cli.main(["generate", "--config", str(TINY), "--out", str(out), "--no-progress"]) == 0
    assert "(0 rendered now)" in capsys.readouterr().out

    assert cli.main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "complete" in info and "teacher/train" in info and "student/test" in info
    assert "2..2 per class" in info and "modality-free sizes" in info
    assert cli.main(["info", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["teacher/val"]["class_counts"] == [1] * 18


def test_generate_default_location_is_the_cache(cache, capsys, fake_world) -> None:
    assert cli.main(["generate", "--config", str(TINY), "--no-progress"]) == 0
    assert (cache / "datasets" / "sim_tiny" / "index.json").exists()


def test_generate_refuses_to_mix_configs(tmp_path, capsys, fake_world) -> None:
    out = tmp_path / "ds"
    assert cli.main(["generate", "--config", str(TINY), "--out", str(out), "--no-progress"]) == 0
    other = write_yaml(tmp_path / "other.yaml", TINY.read_text().replace("seed: 0", "seed: 1"))
    assert cli.main(["generate", "--config", str(other), "--out", str(out),
                     "--no-progress"]) == 2
    assert "another config" in capsys.readouterr().err
    assert cli.main(["generate", "--config", str(other), "--out", str(out), "--overwrite",
                     "--no-progress"]) == 0


def test_preview_calls_world_preview_with_default_path(cache, capsys, monkeypatch) -> None:
    calls = []

    def write_preview(path, n_samples, seed, config):
        calls.append((Path(path), n_samples, seed, config))
        Path(path).write_bytes(b"png")
        return Path(path)

    fake = types.ModuleType("omnibind_ros.sim.preview")
    fake.write_preview = write_preview
    monkeypatch.setitem(sys.modules, "omnibind_ros.sim.preview", fake)
    assert cli.main(["preview"]) == 0
    expected = cache / "preview" / "sim_preview.png"
    assert capsys.readouterr().out.strip() == str(expected)
    assert calls == [(expected, 4, 0, None)]
    assert cli.main(["preview", "-n", "2", "--seed", "9", "--config", str(TINY),
                     "--out", str(cache / "p.png")]) == 0
    world = pytest.importorskip("omnibind_ros.sim.world")
    assert calls[-1] == (cache / "p.png", 2, 9, world.WorldConfig())
    overrides = write_yaml(cache / "w.yaml", "image_size: 64\n")
    assert cli.main(["preview", "--config", str(overrides)]) == 0
    assert calls[-1][3] == world.WorldConfig(image_size=64)
    bad = write_yaml(cache / "bad.yaml", "image_sise: 64\n")
    assert cli.main(["preview", "--config", str(bad)]) == 2
    assert "image_sise" in capsys.readouterr().err


def test_bad_world_section_exits_2(tmp_path, capsys) -> None:
    pytest.importorskip("omnibind_ros.sim.world")
    cfg = write_yaml(tmp_path / "w.yaml", "world: {image_size: -3, lidar_pointz: 5}\n")
    assert cli.main(["generate", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "lidar_pointz" in err and "Traceback" not in err
