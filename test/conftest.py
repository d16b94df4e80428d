"""Test-suite environment and ROS fixtures.

At import time, before any test module can import rclpy, the process gets loopback-only DDS
discovery, a throwaway ROS_LOG_DIR and a ROS_DOMAIN_ID of its own (omnibind_ros.ros.env), so
concurrent test runs on one machine neither leave it nor see each other's nodes.

Domain ids: an explicit ROS_DOMAIN_ID from the caller is kept (pytest-xdist workers add their
worker index to it, so they stay distinct); otherwise each process reserves a free id in 1..100
with a lock file (workers reserve their own), which keeps concurrent runs of several users apart.

``OMNIBIND_BLOCK_TRAINING=1`` makes the training package unimportable for the whole run (an
import hook installed here, before any test module is imported): ``import omnibind_train`` and
its submodules raise ImportError, so ``pytest.importorskip("omnibind_train...")`` skips and any
other import of it fails. ``OMNIBIND_BLOCK_TRAINING=1 pytest test/core test/sim`` shows that
the runtime's tests need only the runtime requirements. Tests that need a bundle use
:func:`omnibind_ros.testing.write_test_bundle` (or the ``tiny_bundle_dir`` fixture below).
"""
from __future__ import annotations

import atexit
import importlib.abc
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

# ---------------------------------------------------------------------------------------------
# OMNIBIND_BLOCK_TRAINING: runtime tests without the training package.

BLOCK_TRAINING_VAR = "OMNIBIND_BLOCK_TRAINING"
TRAINING_PACKAGE = "omnibind_train"


class TrainingImportBlocker(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` finder that refuses ``omnibind_train`` and every submodule."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> None:
        if fullname == TRAINING_PACKAGE or fullname.startswith(TRAINING_PACKAGE + "."):
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: {BLOCK_TRAINING_VAR}=1 blocks the training "
                f"package, so this run shows what the runtime does without it", name=fullname)
        return None


def training_blocked() -> bool:
    """True when the environment asks for the training package to be blocked."""
    return os.environ.get(BLOCK_TRAINING_VAR, "").strip().lower() in ("1", "true", "yes")


def _install_training_blocker() -> None:
    if not training_blocked():
        return
    loaded = sorted(m for m in sys.modules
                    if m == TRAINING_PACKAGE or m.startswith(TRAINING_PACKAGE + "."))
    if loaded:
        raise pytest.UsageError(f"{BLOCK_TRAINING_VAR}=1 but {loaded} were imported before "
                                "test/conftest.py could block them (a plugin?)")
    if not any(isinstance(f, TrainingImportBlocker) for f in sys.meta_path):
        sys.meta_path.insert(0, TrainingImportBlocker())


_install_training_blocker()

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # the suite also runs without `pip install -e`
    sys.path.insert(0, str(_REPO))

from omnibind_ros.ros import env as ros_env  # noqa: E402  (stdlib only: no rclpy)

#: Set by this conftest when it chose the domain itself, so xdist workers (which inherit the
#: controller's environment) know the value is not the caller's and reserve their own.
_AUTO_DOMAIN_VAR = "OMNIBIND_TEST_DOMAIN_AUTO"
_DOMAIN_RANGE = (1, 100)


def _worker_index() -> int | None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else None


def _choose_domain_id() -> int:
    explicit = os.environ.get("ROS_DOMAIN_ID", "")
    worker = _worker_index()
    if explicit.isdigit() and not os.environ.get(_AUTO_DOMAIN_VAR):
        low, high = _DOMAIN_RANGE
        base = int(explicit)
        if worker is None:
            return base
        return low + (base - low + worker) % (high - low + 1)
    return ros_env.reserve_domain_id(*_DOMAIN_RANGE)


def _configure_process_env() -> dict[str, str]:
    if "rclpy" in sys.modules:
        # A plugin or an earlier conftest imported rclpy: too late to make this run safe.
        raise pytest.UsageError(
            "rclpy was imported before test/conftest.py could set "
            "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST; run pytest with it exported.")
    log_dir = tempfile.mkdtemp(prefix="omnibind_ros_test_log_")
    atexit.register(shutil.rmtree, log_dir, ignore_errors=True)
    auto = not os.environ.get("ROS_DOMAIN_ID", "").isdigit() or bool(
        os.environ.get(_AUTO_DOMAIN_VAR))
    domain_id = _choose_domain_id()
    if auto:
        os.environ[_AUTO_DOMAIN_VAR] = "1"
    return ros_env.ensure_safe_ros_env(domain_id=domain_id, log_dir=log_dir)


ROS_TEST_ENV = _configure_process_env()


def pytest_report_header(config: pytest.Config) -> list[str]:
    keys = ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "ROS_LOG_DIR")
    lines = ["ros env: " + " ".join(f"{k}={ROS_TEST_ENV.get(k, '')}" for k in keys)]
    if training_blocked():
        lines.append(f"{BLOCK_TRAINING_VAR}=1: {TRAINING_PACKAGE} cannot be imported")
    return lines


# ---------------------------------------------------------------------------------------------
# A model bundle for tests that need one but not trained weights.

@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One :func:`omnibind_ros.testing.write_test_bundle` bundle (the defaults) per session.

    Shared by every test that asks for it: read it, never modify it; a test that damages or
    edits a bundle writes its own with ``write_test_bundle(tmp_path / "bundle")``.
    """
    from omnibind_ros.testing import write_test_bundle

    return write_test_bundle(tmp_path_factory.mktemp("tiny_bundle") / "tiny")


# ---------------------------------------------------------------------------------------------
# `ros` marker: skip (with the reason) where rclpy or the generated interfaces are unavailable.

_ros_unavailable: str | None | bool = False  # False = not probed yet, None = available


def ros_unavailable_reason() -> str | None:
    """Why ROS tests cannot run here, or None if rclpy and omnibind_ros.msg both import."""
    global _ros_unavailable
    if _ros_unavailable is False:
        try:
            import rclpy  # noqa: F401
        except Exception as exc:  # ImportError, or the wheels' missing shared libraries
            _ros_unavailable = f"rclpy cannot be imported ({type(exc).__name__}: {exc})"
        else:
            try:
                import omnibind_ros.msg  # noqa: F401
            except Exception as exc:
                _ros_unavailable = (
                    f"omnibind_ros interfaces are not built ({type(exc).__name__}: {exc}); "
                    "run scripts/setup.sh")
            else:
                _ros_unavailable = None
    return _ros_unavailable  # type: ignore[return-value]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ros_items = [item for item in items if item.get_closest_marker("ros")]
    if not ros_items:
        return  # do not import rclpy at all in runs without ROS tests
    reason = ros_unavailable_reason()
    if reason:
        for item in ros_items:
            item.add_marker(pytest.mark.skip(reason=reason))


# ---------------------------------------------------------------------------------------------
# rclpy fixtures for node tests (rclpy's own tests use the same init/shutdown pattern).

@pytest.fixture
def rclpy_context() -> Iterator[Any]:
    """A fresh, initialised rclpy Context, shut down after the test.

    A private context (not the global default) keeps tests independent: one test's leftover
    nodes or a failed shutdown cannot leak into the next. Pass it as ``context=`` to nodes and
    executors. Signal handlers are not installed, so Ctrl-C still reaches pytest.
    """
    reason = ros_unavailable_reason()
    if reason:
        pytest.skip(reason)
    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    context = Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    try:
        yield context
    finally:
        if context.ok():
            rclpy.shutdown(context=context)


@pytest.fixture
def make_node(rclpy_context: Any) -> Iterator[Callable[..., Any]]:
    """Factory ``make_node(name, **node_kwargs)`` for nodes in the test's context.

    Nodes are destroyed at teardown, before the context shuts down. Stop and join any executor
    thread you start before the test returns (an executor must not spin destroyed nodes).
    """
    from rclpy.node import Node

    nodes: list[Node] = []

    def factory(name: str, *, node_class: type[Node] = Node, **kwargs: Any) -> Node:
        node = node_class(name, context=rclpy_context, **kwargs)
        nodes.append(node)
        return node

    try:
        yield factory
    finally:
        for node in reversed(nodes):
            node.destroy_node()
