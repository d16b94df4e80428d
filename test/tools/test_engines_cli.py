"""``omnibind-engines`` (omnibind_ros.tools.engines_cli): build and list with TensorRT-RTX on a
tiny bundle (builds without a GPU), and one-line errors with exit status 2 (usage) or 1 (cannot
build)."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from omnibind_ros.core.bundle import archive_bundle
from omnibind_ros.testing import write_test_bundle
from omnibind_ros.tools.engines_cli import EXIT_FAILED, EXIT_USAGE, main

needs_rtx = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                               reason="tensorrt_rtx is not installed (pip install tensorrt-rtx)")
RTX = ["--module", "tensorrt_rtx", "--no-progress"]


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return write_test_bundle(tmp_path / "tiny")


def _reexport(bundle_dir: Path, rel: str) -> None:
    """New bytes for one graph, with bundle.yaml's checksums updated (as an export would)."""
    import onnx
    import yaml

    from omnibind_ros.core.bundle import checksum_tree, dump_manifest

    model = onnx.load(str(bundle_dir / rel))
    model.doc_string = "re-exported"
    onnx.save(model, str(bundle_dir / rel))
    manifest = yaml.safe_load((bundle_dir / "bundle.yaml").read_text())
    manifest["files"] = checksum_tree(bundle_dir)
    dump_manifest(manifest, bundle_dir / "bundle.yaml")


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _listed(out: str) -> dict[str, str]:
    """component -> status line of `list`."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and (parts[0].startswith("encoder:") or parts[0] in ("fusion",
                                                                                 "text")):
            rows[parts[0]] = line
    return rows


@needs_rtx
def test_build_list_rebuild_and_force(bundle_dir, capsys):
    code, out, err = _run(capsys, "build", bundle_dir, *RTX, "--modalities", "image",
                          "--max-batch", "4")
    assert code == 0, err
    assert "3 built, 0 cached" in out and "encoder:image" in out
    code, out, _ = _run(capsys, "list", bundle_dir)
    assert code == 0
    rows = _listed(out)
    assert set(rows) == {"encoder:image", "fusion", "text"}
    assert all(line.endswith("fresh") for line in rows.values())
    assert "tensorrt_rtx" in out and "max batch 4" in rows["encoder:image"]
    code, out, _ = _run(capsys, "build", bundle_dir, *RTX, "--modalities", "image",
                        "--max-batch", "4")
    assert code == 0 and "0 built, 3 cached" in out  # reused
    code, out, _ = _run(capsys, "build", bundle_dir, *RTX, "--modalities", "image",
                        "--max-batch", "4", "--force")
    assert code == 0 and "3 built, 0 cached" in out
    _reexport(bundle_dir, "encoders/image.onnx")
    _, out, _ = _run(capsys, "list", bundle_dir)
    assert _listed(out)["encoder:image"].endswith("stale: ONNX file changed")
    assert _listed(out)["fusion"].endswith("fresh")


@needs_rtx
def test_int8_build_checks_each_encoder_against_fp32(bundle_dir, capsys):
    code, out, err = _run(capsys, "build", bundle_dir, *RTX, "--modalities", "image", "audio",
                          "--precision", "int8", "--precision-for", "audio=fp16",
                          "--calib-samples", "8")
    assert code == 0, err
    check = [line for line in out.splitlines() if "int8 vs fp32 cosine" in line]
    assert len(check) == 1 and check[0].split()[0] == "encoder:image"
    mean = float(check[0].split("mean ")[1].split(",")[0])
    assert mean > 0.99 and "WARNING" not in check[0]
    rows = _listed(_run(capsys, "list", bundle_dir)[1])
    assert rows["encoder:image"].split()[1] == "int8"
    assert rows["encoder:audio"].split()[1] == "fp32"  # fp16 requested; rtx builds fp32
    assert rows["text"].split()[1] == "fp32"  # text stays fp16 (here fp32) under int8


@needs_rtx
def test_archive_bundle_with_engines_dir_and_progress(bundle_dir, tmp_path, capsys,
                                                      monkeypatch):
    monkeypatch.setenv("OMNIBIND_CACHE_DIR", str(tmp_path / "cache"))
    archive = archive_bundle(bundle_dir, tmp_path / "tiny.tar.gz")
    code, out, err = _run(capsys, "build", archive, "--module", "tensorrt_rtx",
                          "--modalities", "image", "--engines-dir", tmp_path / "engines")
    assert code == 0, err
    assert "engines" in err and "graph" in err  # the tqdm bar, on stderr
    assert str(tmp_path / "engines") in out
    _, out, _ = _run(capsys, "list", archive, "--engines-dir", tmp_path / "engines")
    assert len(_listed(out)) == 3


def test_missing_bundle_is_one_line(tmp_path, capsys):
    code, out, err = _run(capsys, "build", tmp_path / "nope")
    assert code == EXIT_USAGE and out == ""
    assert err.count("\n") == 1 and "model bundle not found" in err
    assert "Traceback" not in err
    code, _, err = _run(capsys, "list", tmp_path / "nope")
    assert code == EXIT_USAGE and "not found" in err


def test_missing_tensorrt_names_tensorrt_rtx(bundle_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    for module in ("tensorrt", "auto"):
        code, _, err = _run(capsys, "build", bundle_dir, "--module", module, "--no-progress")
        assert code == EXIT_FAILED and err.count("\n") == 1
        assert "tensorrt is not installed" in err
        assert "`pip install tensorrt-rtx` builds engines without a GPU" in err


def test_bad_arguments(bundle_dir, capsys, monkeypatch):
    for argv in (["--precision", "fp8"], ["--max-batch", "0"], ["--dla-core", "-1"],
                 ["--precision-for", "image"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["build", str(bundle_dir), *argv])
        assert exit_info.value.code == EXIT_USAGE
        assert "error: argument" in capsys.readouterr().err
    code, _, err = _run(capsys, "build", bundle_dir, "--precision-for", "sonar=int8")
    assert code == EXIT_USAGE and "no 'sonar' graph" in err
    code, _, err = _run(capsys, "build", bundle_dir, "--modalities", "sonar")
    assert code == EXIT_USAGE and "--modalities sonar: not in the bundle" in err
    trt = types.ModuleType("tensorrt")  # enough of tensorrt for the DLA checks
    trt.__version__ = "8.5.2"
    trt.DeviceType = types.SimpleNamespace(DLA="dla")
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    code, _, err = _run(capsys, "build", bundle_dir, "--module", "tensorrt", "--dla-core", "0",
                        "--precision", "fp32", "--no-progress")
    assert code == EXIT_USAGE and "DLA runs only fp16 and int8" in err


@needs_rtx
def test_dla_with_tensorrt_rtx_is_refused(bundle_dir, capsys):
    code, _, err = _run(capsys, "build", bundle_dir, *RTX, "--dla-core", "0")
    assert code == EXIT_FAILED and "does not target DLA cores" in err


def test_console_script_is_declared():
    setup = (Path(__file__).resolve().parents[2] / "setup.py").read_text()
    assert "omnibind-engines = omnibind_ros.tools.engines_cli:main" in setup
