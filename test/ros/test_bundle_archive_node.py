"""``bundle_path`` may name a ``.tar`` / ``.tar.gz`` of a bundle directory (what a user copies
onto the robot): the node extracts it once into ``<cache>/bundles/extracted/<hash>`` and loads
it from there; an archive whose members leave their directory is refused at configure."""
from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from omnibind_ros.core.bundle import load_bundle

pytestmark = pytest.mark.ros


def _configure(make_node: Any, bundle_path: Path) -> tuple[Any, bool]:
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from omnibind_ros.ros.perception_node import PerceptionNode

    node = make_node("omnibind_perception", node_class=PerceptionNode, parameter_overrides=[
        Parameter("bundle_path", value=str(bundle_path)),
        Parameter("sensors", Parameter.Type.STRING_ARRAY, ["camera"]),
        Parameter("sensors.camera.modality", value="image"),
        Parameter("sensors.camera.topic", value="camera/image_raw")])
    ok = node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    return node, ok


@pytest.mark.parametrize("kind", ["tar.gz", "tar"])
def test_node_runs_a_bundle_archive_extracted_once_by_hash(
        make_node: Any, tiny_bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        kind: str) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("OMNIBIND_CACHE_DIR", str(cache))
    archive = tmp_path / f"tiny.{kind}"
    if kind == "tar.gz":  # the README's line, on a bundle with machine-specific engines
        bundles = tmp_path / "bundles"
        shutil.copytree(tiny_bundle_dir, bundles / "tiny")
        (bundles / "tiny" / "engines").mkdir()
        (bundles / "tiny" / "engines" / "model.plan").write_bytes(b"gpu specific")
        subprocess.run(["tar", "-C", str(bundles), "-czf", str(archive),
                        "--exclude=tiny/engines", "tiny"], check=True)
    else:  # uncompressed
        subprocess.run(["tar", "-C", str(tiny_bundle_dir.parent), "-cf", str(archive),
                        tiny_bundle_dir.name], check=True)
    node, ok = _configure(make_node, archive)
    assert ok
    root = Path(node._bundle.root)
    extracted = cache / "bundles" / "extracted"
    assert root.is_relative_to(extracted) and (root / "bundle.yaml").is_file()
    assert node._bundle.name == load_bundle(tiny_bundle_dir).name
    assert not (root / "engines").exists(), "engines/ stays on the machine that built them"
    node.trigger_cleanup()
    # configured again: the same extraction is reused (one directory per archive content)
    again, ok = _configure(make_node, archive)
    assert ok and Path(again._bundle.root) == root
    assert len([p for p in extracted.iterdir() if not p.name.startswith(".")]) == 1


def test_an_archive_escaping_its_directory_fails_configure(make_node: Any, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setenv("OMNIBIND_CACHE_DIR", str(tmp_path / "cache"))
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"boom"))
    node, ok = _configure(make_node, archive)
    assert not ok and node._bundle is None
    assert not list(tmp_path.rglob("escaped.txt"))
