"""``omnibind-engines`` (omnibind_ros.tools.engines_cli): build and list with TensorRT-RTX on a
tiny bundle (builds without a GPU), and one-line errors with exit status 2 (usage) or 1 (cannot
build)."""
from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import sys
import types
from pathlib import Path

import pytest

from omnibind_ros.core import engine_cache, engines
from omnibind_ros.core import int8 as int8_module
from omnibind_ros.core.bundle import archive_bundle
from omnibind_ros.testing import write_test_bundle
from omnibind_ros.tools import engines_cli
from omnibind_ros.tools.engines_cli import EXIT_FAILED, EXIT_USAGE, main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from trt_fakes import FakeTorch, fake_trt  # noqa: E402 - test/core's fakes

GPU = ("NVIDIA GeForce RTX 4090", "8.9")

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


@pytest.fixture
def fake_modules(monkeypatch):
    """``install(name, version, **kw)``: a fake TensorRT module (the other one absent); a fake
    torch and a fixed GPU."""
    monkeypatch.setitem(sys.modules, "torch", FakeTorch())
    monkeypatch.setattr(engine_cache, "gpu_identity", lambda device=0: GPU)

    def install(name: str = "tensorrt", version: str = "10.3.0", **kw):
        trt = fake_trt(name, version, **kw)
        for module in engines.TRT_MODULES:
            monkeypatch.setitem(sys.modules, module, trt if module == name else None)
        return trt

    return install


def _one_line_failure(code: int, out: str, err: str) -> None:
    assert code == EXIT_FAILED, err
    assert err.count("\n") == 1 and err.startswith("omnibind-engines build: error: "), err
    assert "Traceback" not in err


def test_read_only_bundle_folder_is_one_line_with_a_hint(bundle_dir, capsys, monkeypatch,
                                                         fake_modules):
    fake_modules()
    bundle_dir.chmod(0o555)
    try:
        if os.access(bundle_dir, os.W_OK):  # root: chmod does not stop writes
            mkdir = pathlib.Path.mkdir

            def refuse(self, *args, **kwargs):
                if str(self).startswith(str(bundle_dir)):
                    raise PermissionError(13, "Permission denied", str(self))
                return mkdir(self, *args, **kwargs)

            monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
        code, out, err = _run(capsys, "build", bundle_dir, "--module", "tensorrt",
                              "--no-progress")
    finally:
        bundle_dir.chmod(0o755)
    _one_line_failure(code, out, err)
    assert "Permission denied" in err and "--engines-dir" in err


def _fail_world(exc: BaseException):
    class World:
        def __init__(self, *args, **kwargs) -> None:
            raise exc

    return World


@pytest.mark.parametrize("case", ["tqdm", "pybullet", "calibration"])
def test_missing_packages_and_calibration_errors_are_one_line(bundle_dir, capsys,
                                                              monkeypatch, fake_modules,
                                                              case):
    fake_modules()
    argv = ["build", bundle_dir, "--module", "tensorrt", "--modalities", "image"]
    if case == "tqdm":
        monkeypatch.setitem(sys.modules, "tqdm", None)
    else:
        import omnibind_ros.sim.world as world

        exc = (ImportError("No module named 'pybullet'", name="pybullet") if case == "pybullet"
               else RuntimeError("simulated world failed to render"))
        monkeypatch.setattr(world, "World", _fail_world(exc))
        argv += ["--precision", "int8", "--calib-samples", "4", "--no-progress"]
    code, out, err = _run(capsys, *argv)
    _one_line_failure(code, out, err)
    expected = {"tqdm": "tqdm", "pybullet": "install pybullet",
                "calibration": "simulated world failed"}[case]
    assert expected in err


def test_int8_for_text_or_an_unsimulated_modality_is_a_usage_error(bundle_dir, capsys,
                                                                   monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["build", str(bundle_dir), "--precision-for", "text=int8"])
    assert exit_info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "text=int8" in err and "only modality encoders can be int8" in err
    from omnibind_ros.sim import calibration

    monkeypatch.delitem(calibration.PAYLOAD_FIELD, "thermal")
    code, out, err = _run(capsys, "build", bundle_dir, "--precision-for", "thermal=int8")
    assert code == EXIT_USAGE and out == "" and err.count("\n") == 1
    assert "int8 for thermal" in err and "the simulator has none for thermal" in err
    code, _, err = _run(capsys, "build", bundle_dir, "--precision", "int8")
    assert code == EXIT_USAGE and "int8 for thermal" in err


@pytest.fixture
def qdq_stub(monkeypatch):
    """QDQ graphs without ONNX Runtime's calibration (a copy of the float graph), and a
    fidelity check that records what it is asked to check."""
    checked: list[str] = []

    def quantize(onnx_path, out_path, table, batches, *, reuse_table):
        shutil.copyfile(onnx_path, out_path)
        table.write_text("{}")
        return 8

    def fidelity(bundle, modality, graph, seeds, world=None):
        checked.append(modality)
        if modality == "audio":
            raise RuntimeError("ONNX Runtime cannot run\nthe graph")
        return 0.999, 0.99

    monkeypatch.setattr(int8_module, "quantize_qdq", quantize)
    monkeypatch.setattr(engines_cli, "qdq_fidelity", fidelity)
    return checked


def test_int8_check_runs_only_for_engines_built_now(bundle_dir, capsys, fake_modules,
                                                    qdq_stub):
    fake_modules("tensorrt_rtx", "1.7.1.116", fp16=False, int8=False)
    argv = ["build", bundle_dir, "--module", "tensorrt_rtx", "--no-progress", "--modalities",
            "image", "--precision", "int8", "--calib-samples", "8"]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    assert qdq_stub == ["image"] and "int8 vs fp32 cosine mean 0.999" in out
    code, out, err = _run(capsys, *argv)  # everything cached: nothing to check
    assert code == 0 and "0 built, 3 cached" in out
    assert qdq_stub == ["image"] and "cosine" not in out
    for extra in (["--calib-seed", "5"], ["--calib-samples", "16"], ["--recalibrate"]):
        code, out, err = _run(capsys, *argv, *extra)  # no --force: rebuilt all the same
        assert code == 0 and "1 built, 2 cached" in out, (extra, out)
    assert qdq_stub == ["image"] * 4
    code, out, err = _run(capsys, *argv[:-5], "image", "audio", "--precision", "int8",
                          "--calib-samples", "8")
    assert code == 0, err  # the audio check failed: a note, the build stands
    assert qdq_stub == ["image"] * 4 + ["audio"]  # the image encoder was cached
    assert "INT8 check of encoder:audio not run (RuntimeError: ONNX Runtime cannot run the " \
           "graph)" in err and "Traceback" not in err


def test_list_marks_folders_of_another_tensorrt(bundle_dir, capsys, fake_modules):
    from omnibind_ros.core.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    engines.build_engines(bundle, trt=fake_trt(version="10.3.0"), modalities=["image"])
    engines.build_engines(bundle, trt=fake_trt(version="10.4.0"), modalities=["image"])
    fake_modules("tensorrt", "10.4.0")
    code, out, _ = _run(capsys, "list", bundle_dir)
    assert code == 0
    blocks = out.split(str(bundle_dir / "engines") + "/")[1:]
    by_version = {b.split()[0].rsplit("_trt", 1)[1]: b for b in blocks}
    assert set(by_version) == {"10.3.0", "10.4.0"}
    old, new = _listed(by_version["10.3.0"]), _listed(by_version["10.4.0"])
    assert all(line.endswith("fresh (not this TensorRT)") for line in old.values())
    assert "(not this TensorRT)" in by_version["10.3.0"].splitlines()[1]
    assert all(line.endswith("fresh") for line in new.values())
    assert "not this TensorRT" not in by_version["10.4.0"]
    fake_modules("tensorrt_rtx", "1.7.1.116")  # only TensorRT-RTX: neither folder is its own
    _, out, _ = _run(capsys, "list", bundle_dir)
    assert out.count("(not this TensorRT)") == 2 * (1 + 3)  # header and 3 engines each
