"""Corruption matrix: damaged bundles, checkpoints and bags fail clearly and harm nothing else.

Rows and where each cell is tested (cells tested elsewhere are listed in ``ELSEWHERE`` and
checked to still exist, so the matrix cannot silently lose one):

=====================================  ==========================================================
damage                                 expected
=====================================  ==========================================================
bundle: checksum mismatch, missing     the lifecycle node's configure fails with ONE error line
ONNX, bad/truncated YAML, truncated    naming the file and the problem, the node stays alive in
ONNX, wrong dims (ONNX output or       ``unconfigured`` and configures once the bundle is fixed
input vs bundle.yaml, label tensor),   (:func:`test_a_damaged_bundle_fails_configure_in_one_line`;
pickled tensor, missing bundle,        the loader's own errors: ``test/core/test_bundle.py``)
truncated archive
checkpoints (training and runtime      a clear exception naming the file, on one line; a pickle
loaders): truncated, random bytes,     whose ``__reduce__`` would write a marker file is never
code-executing pickle                  executed (``training/tests/test_checkpoint_corruption.py``;
                                       here: every ``torch.load`` in the code is weights-only)
bags: truncated, corrupt chunk         the partial report is kept (``ELSEWHERE``: test/bag)
=====================================  ==========================================================
"""
from __future__ import annotations

import ast
import hashlib
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from omnibind_ros.core.bundle import BUNDLE_FILE, archive_bundle, dump_manifest
from omnibind_ros.testing import write_test_bundle

REPO = Path(__file__).resolve().parents[1]


# -- bundles at the lifecycle node ----------------------------------------------------------------

def _rehash(root: Path, rel: str) -> None:
    """Make the manifest agree with a damaged file: only deeper checks can catch it then."""
    manifest = yaml.safe_load((root / BUNDLE_FILE).read_text())
    manifest["files"][rel] = hashlib.sha256((root / rel).read_bytes()).hexdigest()
    dump_manifest(manifest, root / BUNDLE_FILE)


def flip_byte(root: Path, spare: Path) -> None:
    path = root / "encoders/image.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def remove_onnx(root: Path, spare: Path) -> None:
    (root / "encoders/thermal.onnx").unlink()


def bad_yaml(root: Path, spare: Path) -> None:
    (root / BUNDLE_FILE).write_text("format_version: [1\nmodalities: {\n")


def truncate_yaml(root: Path, spare: Path) -> None:
    text = (root / BUNDLE_FILE).read_text()
    (root / BUNDLE_FILE).write_text(text[:len(text) // 3])


def truncate_onnx_rehashed(root: Path, spare: Path) -> None:
    path = root / "encoders/event.onnx"
    path.write_bytes(path.read_bytes()[:200])
    _rehash(root, "encoders/event.onnx")


def onnx_of_another_dim(root: Path, spare: Path) -> None:
    """The image encoder of a D=16 export dropped into a D=32 bundle (re-hashed)."""
    shutil.copy(spare / "encoders/image.onnx", root / "encoders/image.onnx")
    _rehash(root, "encoders/image.onnx")


def onnx_input_of_another_size(root: Path, spare: Path) -> None:
    import onnx

    path = root / "encoders/thermal.onnx"
    model = onnx.load(path)
    for axis in (2, 3):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_value = 16
    onnx.save(model, path)
    _rehash(root, "encoders/thermal.onnx")


def yaml_input_of_another_size(root: Path, spare: Path) -> None:
    manifest = yaml.safe_load((root / BUNDLE_FILE).read_text())
    manifest["modalities"]["image"]["preprocess"]["size"] = 64
    dump_manifest(manifest, root / BUNDLE_FILE)


def label_tensor_of_another_dim(root: Path, spare: Path) -> None:
    np.save(root / "labels/label_embeddings.npy", np.ones((5, 31), np.float32))
    _rehash(root, "labels/label_embeddings.npy")


def pickled_label_tensor(root: Path, spare: Path) -> None:
    np.save(root / "labels/label_embeddings.npy", np.array([{"a": 1}], dtype=object),
            allow_pickle=True)
    _rehash(root, "labels/label_embeddings.npy")


def remove_bundle(root: Path, spare: Path) -> None:
    shutil.rmtree(root)


# damage -> (file the error line must name, what it must say about it)
BUNDLE_CELLS: dict[str, tuple[Callable[[Path, Path], None], str, str]] = {
    "checksum mismatch": (flip_byte, "encoders/image.onnx", "checksum mismatch"),
    "missing ONNX": (remove_onnx, "encoders/thermal.onnx", "missing"),
    "bad YAML": (bad_yaml, BUNDLE_FILE, "not valid YAML"),
    "truncated YAML": (truncate_yaml, BUNDLE_FILE, "bundle.yaml"),
    "truncated ONNX (re-hashed)": (truncate_onnx_rehashed, "encoders/event.onnx",
                                   "cannot load"),
    "ONNX output dim != embedding_dim": (onnx_of_another_dim, "encoders/image.onnx",
                                         "embedding_dim is 32"),
    "ONNX input size != bundle.yaml": (onnx_input_of_another_size, "encoders/thermal.onnx",
                                       "cannot load"),
    "bundle.yaml input size != ONNX": (yaml_input_of_another_size, BUNDLE_FILE,
                                       "modalities.image.encoder.input"),
    "label tensor [C, D-1]": (label_tensor_of_another_dim, "labels/label_embeddings.npy",
                              "[C=5, D=32]"),
    "pickled label tensor": (pickled_label_tensor, "labels/label_embeddings.npy",
                             "not a numpy .npy array"),
    "missing bundle": (remove_bundle, "", "not found"),
}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("matrix")
    return write_test_bundle(root / "good"), write_test_bundle(root / "d16", dim=16)


class RecordingLogger:
    """Stands in for the node's logger and keeps every (level, line).

    Lines are not forwarded: rclpy keys severity and throttling on a log call's call site, so a
    wrapper forwarding from one line breaks on the node's first throttled call.
    """

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def _record(self, level: str, message: str) -> None:
        self.lines.append((level, message))

    def debug(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._record("debug", message)

    def info(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._record("info", message)

    def warning(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._record("warning", message)

    warn = warning

    def error(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._record("error", message)

    def fatal(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._record("fatal", message)

    def errors(self) -> list[str]:
        return [line for level, line in self.lines if level in ("error", "fatal")]


class NodeUnderTest:
    """A PerceptionNode (one camera sensor) spinning in the background, its log recorded."""

    def __init__(self, ctx: Any, bundle_path: Path) -> None:
        from rclpy.parameter import Parameter

        from omnibind_ros.ros.executor import PoolSafeExecutor
        from omnibind_ros.ros.perception_node import PerceptionNode

        self.node = PerceptionNode(context=ctx, parameter_overrides=[
            Parameter("bundle_path", value=str(bundle_path)),
            Parameter("sensors", Parameter.Type.STRING_ARRAY, ["camera"]),
            Parameter("sensors.camera.modality", value="image"),
            Parameter("sensors.camera.topic", value="/matrix/camera")])
        self.log = RecordingLogger()
        self.node.get_logger = lambda: self.log  # what the node logs from here on
        self.executor = PoolSafeExecutor(num_threads=2, context=ctx)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(5.0)
        self.node.destroy_node()


@pytest.fixture(scope="module")
def ros_context() -> Iterator[Any]:
    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    ctx = Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    yield ctx
    rclpy.shutdown(context=ctx)


@pytest.mark.ros
@pytest.mark.parametrize("cell", [*BUNDLE_CELLS, "truncated archive"])
def test_a_damaged_bundle_fails_configure_in_one_line(cell: str, bundles, ros_context,
                                                      tmp_path: Path) -> None:
    from lifecycle_msgs.msg import State
    from rclpy.lifecycle import TransitionCallbackReturn

    good, spare = bundles
    if cell == "truncated archive":
        target = archive_bundle(good, tmp_path / "bundle.tar.gz")
        intact = target.read_bytes()
        target.write_bytes(intact[:len(intact) // 2])
        names, says = target.name, "bundle archive"
    else:
        damage, names, says = BUNDLE_CELLS[cell]
        target = tmp_path / "bundle"
        shutil.copytree(good, target)
        damage(target, spare)
    h = NodeUnderTest(ros_context, target)
    try:
        assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert h.node._state_machine.current_state[0] == State.PRIMARY_STATE_UNCONFIGURED
        lines = h.log.errors()
        assert len(lines) == 1, lines
        line = lines[0]
        assert line.startswith("configure failed: ") and "\n" not in line, line
        assert names in line and says in line, line
        assert "Traceback" not in line

        # Fixed on disk: the same node configures (and runs) without a restart.
        if cell == "truncated archive":
            target.write_bytes(intact)
        else:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(good, target)
        ok = TransitionCallbackReturn.SUCCESS
        assert h.node.trigger_configure() == ok
        assert h.node.trigger_activate() == ok
        assert h.node.trigger_deactivate() == ok
        assert h.node.trigger_cleanup() == ok
        assert h.thread.is_alive()
    finally:
        h.close()


# -- checkpoints: training/tests/test_checkpoint_corruption.py (they need the training package,
# which the runtime run of `make test` blocks) ---------------------------------------------------


def _calls(path: Path, name: str) -> Iterator[ast.Call]:
    text = path.read_text()
    if f"{name}(" not in text:  # parsing only the files that can hold such a call: 10x faster
        return
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called == name:
                yield node


def _python_files() -> list[Path]:
    roots = [REPO / "omnibind_ros", REPO / "training" / "omnibind_train"]
    return [p for root in roots for p in root.rglob("*.py")]


#: Reviewed exceptions: (file, why it may pass ``allow_pickle`` through).
PICKLE_OPT_INS = {
    "training/omnibind_train/binding/paper_pools.py":
        "load_points(allow_pickle=False): an explicit opt-in for OpenShape's Objaverse .npy "
        "files, which are pickled dicts; off by default",
}


def test_no_loader_in_the_code_can_unpickle() -> None:
    """Every ``torch.load`` passes ``weights_only=True``; no ``pickle.load(s)`` reads a file;
    ``np.load`` never allows pickles (but for the reviewed opt-ins above). A new loader that
    forgets it fails here."""
    offenders = []
    for path in _python_files():
        rel = path.relative_to(REPO)
        for call in _calls(path, "load"):
            func = call.func
            owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            keywords = {k.arg: k.value for k in call.keywords}
            if owner == "torch":
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    offenders.append(f"{rel}:{call.lineno} torch.load without weights_only=True")
            elif owner == "pickle":
                offenders.append(f"{rel}:{call.lineno} pickle.load")
            elif owner == "np" and "allow_pickle" in keywords:
                flag = keywords["allow_pickle"]
                reviewed = str(rel) in PICKLE_OPT_INS and not isinstance(flag, ast.Constant)
                if not (isinstance(flag, ast.Constant) and flag.value is False) and not reviewed:
                    offenders.append(f"{rel}:{call.lineno} np.load(allow_pickle=...)")
        offenders += [f"{rel}:{c.lineno} pickle.loads" for c in _calls(path, "loads")
                      if getattr(c.func, "value", None) is not None
                      and getattr(c.func.value, "id", "") == "pickle"]
    assert not offenders, offenders


# -- bags and the cells tested elsewhere ----------------------------------------------------------

ELSEWHERE = [
    # corrupt bags: the partial report is kept
    ("test/bag/test_bag_offline.py", "test_truncated_bag_keeps_partial_results"),
    ("test/bag/test_bag_live.py", "test_live_on_a_truncated_bag_keeps_what_was_played"),
    ("test/bag/test_bag_io.py", "test_truncated_mcap"),
    ("test/bag/test_bag_io.py", "test_corrupt_chunk_in_indexed_mcap"),
    # the bundle loader's error for each bundle cell
    ("test/core/test_bundle.py", "test_flipped_byte_is_a_checksum_error_naming_the_file"),
    ("test/core/test_bundle.py", "test_missing_file_is_named"),
    ("test/core/test_bundle.py", "test_invalid_yaml"),
    ("test/core/test_bundle.py", "test_malformed_manifest"),
    ("test/core/test_bundle.py", "test_preprocess_shape_must_match_the_graph"),
    ("test/core/test_bundle.py", "test_label_embeddings_must_be_c_by_d"),
    ("test/core/test_bundle.py", "test_label_embeddings_refuse_pickles"),
    ("test/core/test_bundle.py", "test_missing_bundle"),
    ("test/core/test_bundle.py", "test_archive_with_a_path_escaping_its_root_is_rejected"),
]


@pytest.mark.parametrize("module, name", ELSEWHERE, ids=[n for _, n in ELSEWHERE])
def test_the_cells_tested_elsewhere_still_exist(module: str, name: str) -> None:
    tree = ast.parse((REPO / module).read_text())
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert name in names, f"{module}::{name} is gone: its cell of the corruption matrix is not " \
                          "tested any more"

