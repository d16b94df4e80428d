"""Imports point one way: ros -> core <- training, sim -> core; tools are only ever callers.

``omnibind_ros.core`` and ``omnibind_ros.sim`` must import without rclpy, any message package or
torch: training and the simulator run where ROS is absent, and torch costs seconds and gigabytes
to import. Two checks: really importing every module in a clean interpreter (catches indirect
imports), and an AST scan of the sources (names the offending line, and catches imports hidden
behind a branch the first check did not take).

Beyond the layers, the house rules that keep one thing in one place: nothing under
``omnibind_ros`` imports the CLIs of ``omnibind_ros.tools`` or the training package; offline bag
evaluation never imports the rclpy node module; only the engine (``core.recognizer``) builds the
availability monitor, the embedding store and the tick scheduler; scoring is written once
(``omnibind_ros.scoring``); the project's own topic names are written once (``core.names``).
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "omnibind_ros"
PURE_LAYERS = ("core", "sim")


def modules_under(root: Path, dotted_root: str) -> list[str]:
    """Dotted names of every module and package below ``root`` (found on disk, none excluded)."""
    names = []
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(root).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        names.append(".".join([dotted_root, *parts]))
    return names


PURE_MODULES = [m for layer in PURE_LAYERS if (PACKAGE / layer).is_dir()
                for m in modules_under(PACKAGE / layer, f"omnibind_ros.{layer}")]
PURE_MODULES.append("omnibind_ros.scoring")


def is_forbidden_runtime(module: str) -> bool:
    top = module.split(".")[0]
    return (
        top in ("rclpy", "torch", "rosidl_runtime_py", "rosidl_parser", "launch", "launch_ros")
        or top.endswith("_msgs")
        or top.endswith("_interfaces")  # builtin_interfaces, rcl_interfaces, ...
        or module == "omnibind_ros.msg" or module.startswith("omnibind_ros.msg.")
        or module == "omnibind_ros.srv" or module.startswith("omnibind_ros.srv.")
    )


def test_pure_layers_import_without_ros_or_torch() -> None:
    assert "omnibind_ros.core" in PURE_MODULES
    code = textwrap.dedent(f"""
        import importlib, json, sys
        failed = {{}}
        for name in {PURE_MODULES!r}:
            try:
                importlib.import_module(name)
            except Exception as exc:
                failed[name] = f"{{type(exc).__name__}}: {{exc}}"
        print(json.dumps({{"modules": sorted(sys.modules), "failed": failed}}))
    """)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["failed"] == {}, "modules of core/sim that do not even import"
    offenders = sorted(m for m in out["modules"] if is_forbidden_runtime(m))
    assert offenders == [], (
        "importing omnibind_ros.core/.sim pulled in ROS or torch; import them lazily inside "
        f"the function that needs them: {offenders}")


# ---------------------------------------------------------------------------------------------
# AST scan

def imports_of(path: Path, package: str) -> Iterator[tuple[int, str, bool]]:
    """(line, absolute module name, at_top_level) for every import statement in ``path``.

    ``package`` is the package containing ``path`` (for ``__init__.py``, its own package); it
    resolves relative imports.

    Top level = executed when the module is imported: module body, including ``if``/``try``/
    ``with`` blocks there, but not function or class bodies (lazy imports) and not
    ``if TYPE_CHECKING:`` blocks.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def resolve(node: ast.ImportFrom) -> list[str]:
        if node.level == 0:
            base = node.module or ""
        else:
            parts = package.split(".")  # level 1 = this package, 2 = its parent, ...
            keep = len(parts) - (node.level - 1)
            base = ".".join(parts[:keep] + ([node.module] if node.module else []))
        # `from pkg import mod` may import a submodule: report both candidates.
        return [base] + [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]

    def walk(nodes: list[ast.stmt], top: bool) -> Iterator[tuple[int, str, bool]]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield node.lineno, alias.name, top
            elif isinstance(node, ast.ImportFrom):
                for name in resolve(node):
                    yield node.lineno, name, top
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                # class bodies do run at import time, but their methods do not
                if isinstance(node, ast.ClassDef):
                    yield from walk(node.body, top)
                else:
                    yield from walk(node.body, False)
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                yield from walk(node.orelse, top)
            else:
                for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                    children = getattr(node, field, None)
                    if isinstance(children, list):
                        stmts = [c for c in children if isinstance(c, ast.stmt)]
                        for child in children:  # except handlers / match cases hold statements
                            if isinstance(child, (ast.ExceptHandler, ast.match_case)):
                                stmts.extend(child.body)
                        yield from walk(stmts, top)

    yield from walk(tree.body, True)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def package_of(path: Path) -> str:
    return ".".join(path.relative_to(REPO).parent.parts)


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts) \
        if root.is_dir() else []


def test_core_and_sim_sources_keep_their_layer() -> None:
    """No top-level rclpy/messages/torch; never the ROS glue; core never imports sim."""
    violations = []
    for layer in PURE_LAYERS:
        for path in python_files(PACKAGE / layer):
            for line, module, top in imports_of(path, package_of(path)):
                where = f"{path.relative_to(REPO)}:{line} imports {module}"
                if top and is_forbidden_runtime(module):
                    violations.append(f"{where} at import time")
                if _matches(module, "rclpy") or _matches(module, "omnibind_ros.msg") \
                        or _matches(module, "omnibind_ros.srv"):
                    if not top:
                        violations.append(f"{where} (ROS belongs in omnibind_ros.ros)")
                if _matches(module, "omnibind_ros.ros") or _matches(module, "omnibind_ros.tools"):
                    violations.append(f"{where} (imports point ros -> {layer}, not back)")
                if layer == "core" and _matches(module, "omnibind_ros.sim"):
                    violations.append(f"{where} (sim imports core, not the other way)")
    assert violations == []


def test_training_never_imports_rclpy() -> None:
    training = REPO / "training"
    violations = []
    for path in python_files(training):
        for line, module, _top in imports_of(path, ""):
            if _matches(module, "rclpy") or _matches(module, "omnibind_ros.ros"):
                violations.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert violations == []


@pytest.mark.parametrize(("source", "expected"), [
    ("import rclpy", [(1, "rclpy", True)]),
    ("def f():\n    import torch", [(2, "torch", False)]),
    ("try:\n    import torch\nexcept ImportError:\n    import numpy",
     [(2, "torch", True), (4, "numpy", True)]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch",
     [(1, "typing", True), (1, "typing.TYPE_CHECKING", True)]),
    ("from ..ros import conversions", [(1, "omnibind_ros.ros", True),
                                       (1, "omnibind_ros.ros.conversions", True)]),
    ("class A:\n    import numpy\n    def m(self):\n        import rclpy",
     [(2, "numpy", True), (4, "rclpy", False)]),
])
def test_import_scanner(tmp_path: Path, source: str, expected: list) -> None:
    path = tmp_path / "mod.py"
    path.write_text(source)
    assert list(imports_of(path, "omnibind_ros.core")) == expected


# ---------------------------------------------------------------------------------------------
# One thing in one place

def _package_sources(exclude: tuple[str, ...] = ()) -> list[Path]:
    return [p for p in python_files(PACKAGE)
            if not any(p.is_relative_to(PACKAGE / e) for e in exclude)]


def _import_violations(paths: list[Path], forbidden: tuple[str, ...], why: str) -> list[str]:
    """Every import (lazy ones included) of a module under ``forbidden`` in ``paths``."""
    return [f"{path.relative_to(REPO)}:{line} imports {module} ({why})"
            for path in paths for line, module, _top in imports_of(path, package_of(path))
            if any(_matches(module, f) for f in forbidden)]


def test_nothing_in_the_package_imports_the_tools_or_the_training_package() -> None:
    violations = _import_violations(_package_sources(exclude=("tools",)),
                                    ("omnibind_ros.tools",), "the CLIs only call in")
    violations += _import_violations(_package_sources(), ("omnibind_train",),
                                     "the runtime never needs the training package")
    assert violations == []


#: The offline evaluation path: pure engine calls on the bag clock, no rclpy node.
OFFLINE_MODULES = ("offline.py", "replay.py", "stage.py", "parallel.py", "_offline_worker.py")


def test_offline_evaluation_does_not_import_the_node() -> None:
    paths = [PACKAGE / "bag" / name for name in OFFLINE_MODULES]
    assert all(p.is_file() for p in paths)
    assert _import_violations(paths, ("omnibind_ros.ros.perception_lifecycle",
                                      "omnibind_ros.ros.perception_node"),
                              "offline evaluation runs core.recognizer, not the node") == []


def _names_used(path: Path) -> set[tuple[int, str]]:
    """(line, name) of every identifier and attribute read in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            out.add((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            out.add((node.lineno, node.attr))
        elif isinstance(node, ast.alias):
            out.add((getattr(node, "lineno", 0), node.name.split(".")[-1]))
    return out


#: The engine's parts: only their own modules and the engine may name them.
ENGINE_PARTS = {"AvailabilityMonitor": "core/availability.py",
                "TickScheduler": "core/schedule.py", "LatestEmbeddings": "core/fusion.py"}
ENGINE = "core/recognizer.py"


def test_only_the_engine_builds_the_runtime_path() -> None:
    violations = []
    for path in _package_sources():
        rel = path.relative_to(PACKAGE).as_posix()
        for line, name in _names_used(path):
            home = ENGINE_PARTS.get(name)
            if home is not None and rel not in (home, ENGINE):
                violations.append(f"{rel}:{line} uses {name} (use core.recognizer.Recognizer)")
    assert violations == []


#: Scoring definitions that exist once, in omnibind_ros/scoring.py.
SCORING_NAMES = {"Tally", "PhaseTimeline", "phase_label", "verdict", "percentiles", "ratio"}


def _definitions(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(node.lineno, node.name.lstrip("_")) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.ClassDef))]


def test_scoring_is_defined_once() -> None:
    home = PACKAGE / "scoring.py"
    assert {name for _, name in _definitions(home)} >= SCORING_NAMES
    violations = [f"{path.relative_to(REPO)}:{line} defines {name} again"
                  for path in _package_sources() if path != home
                  for line, name in _definitions(path) if name in SCORING_NAMES]
    assert violations == []


def _string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_project_topics_are_named_once() -> None:
    home = PACKAGE / "core" / "names.py"
    from omnibind_ros.core import names

    topics = {names.GROUND_TRUTH_TOPIC, names.SCENARIO_EVENT_TOPIC}
    sources = _package_sources() + python_files(REPO / "benchmarks")
    violations = [f"{path.relative_to(REPO)}:{line} spells {value!r}"
                  for path in sources if path != home
                  for line, value in _string_constants(path) if value in topics]
    assert violations == []
