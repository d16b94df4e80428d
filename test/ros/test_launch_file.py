"""launch/perception.launch.py: checked statically here, built for real where launch_ros exists.

The launch system (``launch``, ``launch_ros``) comes with a ROS 2 installation and is not
installable from PyPI, so most checks parse the file with ``ast``: every DeclareLaunchArgument
has a description, the expected arguments exist, every LaunchConfiguration names a declared
argument, the executables and config files it refers to exist, and each node's default
parameter file holds a section for that node. The ``launch`` test builds the description with
launch_ros where it is installed.
"""
from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCH_FILE = REPO / "launch" / "perception.launch.py"
REQUIRED_ARGUMENTS = {"params_file", "namespace", "use_sim_time", "backend", "sim",
                      "large_messages", "discovery_range", "static_peers"}
EXECUTABLES = {"omnibind_perception", "omnibind_sim_sensors"}


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    def called(node: ast.Call) -> str:
        func = node.func
        return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and called(n) == name]


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _literal_str(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


@pytest.fixture(scope="module")
def tree() -> ast.Module:
    return ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))


def _declared(tree: ast.Module) -> dict[str, ast.Call]:
    declared = {}
    for call in _calls(tree, "DeclareLaunchArgument"):
        name = _literal_str(call.args[0] if call.args else _keyword(call, "name"))
        assert name, f"line {call.lineno}: argument name must be a string literal"
        assert name not in declared, f"argument {name} declared twice"
        declared[name] = call
    return declared


def test_every_argument_has_a_description(tree: ast.Module) -> None:
    declared = _declared(tree)
    assert declared
    for name, call in declared.items():
        description = _literal_str(_keyword(call, "description"))
        assert description and len(description.split()) >= 3, (
            f"DeclareLaunchArgument {name!r} (line {call.lineno}) needs a real description")
        assert _keyword(call, "default_value") is not None, f"{name} has no default"


def test_expected_arguments_exist(tree: ast.Module) -> None:
    missing = REQUIRED_ARGUMENTS - set(_declared(tree))
    assert not missing, f"launch arguments missing: {sorted(missing)}"


def test_every_launch_configuration_is_declared(tree: ast.Module) -> None:
    declared = set(_declared(tree))
    used = {_literal_str(c.args[0]) for c in _calls(tree, "arg") + _calls(
        tree, "LaunchConfiguration") if c.args}
    assert None not in used, "LaunchConfiguration names must be string literals"
    assert used - declared == set(), f"used but not declared: {sorted(used - declared)}"
    assert declared - used == set(), f"declared but never used: {sorted(declared - used)}"


def test_nodes_use_registered_executables_and_shipped_configs(tree: ast.Module) -> None:
    executables = {_literal_str(_keyword(c, "executable")) for c in _calls(tree, "Node")}
    assert executables == EXECUTABLES
    cmake = (REPO / "CMakeLists.txt").read_text()
    block = re.search(r"set\(OMNIBIND_EXECUTABLES(.*?)\)", cmake, re.S)
    assert block is not None
    registered = {m.split("=")[0] for m in re.findall(r'"([^"#]+)"', block.group(1))}
    assert EXECUTABLES <= registered, "add the executables to OMNIBIND_EXECUTABLES"
    for name in {"sim_sensors.yaml", "fastdds_localhost.xml"}:
        assert f'"{name}"' in LAUNCH_FILE.read_text() and (REPO / "config" / name).is_file()


def _yaml_literals(node: ast.AST | None) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and n.value.endswith(".yaml")] if node else []


def test_each_node_gets_a_shipped_params_file_with_its_section(tree: ast.Module) -> None:
    from omnibind_ros.bag.config import read_params_file
    from omnibind_ros.core.names import PERCEPTION_NODE, SIM_SENSORS_NODE

    declared = _declared(tree)
    params_argument = {}
    for node in _calls(tree, "Node"):
        name = _literal_str(_keyword(node, "name"))
        files = _calls(node, "ParameterFile")
        assert len(files) == 1 and files[0].args, f"node {name}: one ParameterFile(arg(...))"
        argument = files[0].args[0]
        assert isinstance(argument, ast.Call) and argument.args
        params_argument[name] = _literal_str(argument.args[0])
    assert params_argument == {PERCEPTION_NODE: "params_file",
                               SIM_SENSORS_NODE: "sim_params_file"}, (
        f"node names (omnibind_ros.core.names) and their params-file arguments: "
        f"{params_argument}")
    for name, argument in params_argument.items():
        defaults = _yaml_literals(_keyword(declared[argument], "default_value"))
        assert len(defaults) == 1, f"{argument}: default should name one config/*.yaml"
        path = REPO / "config" / defaults[0]
        # A section keyed by another node name is silently ignored by ROS: check it matches.
        assert read_params_file(path, name), f"{path} has no ros__parameters for node {name}"


def test_scenario_named_in_the_description_is_shipped(tree: ast.Module) -> None:
    description = _literal_str(_keyword(_declared(tree)["scenario_file"], "description"))
    named = re.findall(r"[\w.-]+\.yaml", description or "")
    missing = [n for n in named if not (REPO / "config" / "scenarios" / n).is_file()]
    assert named and not missing, f"scenario_file names {missing} not in config/scenarios"


def test_both_nodes_run_in_the_namespace_argument(tree: ast.Module) -> None:
    # With the configs' relative sensor topics (test/ros/test_namespace.py), one namespace
    # moves the simulated sensors and the perception node's subscriptions together.
    for node in _calls(tree, "Node"):
        namespace = _keyword(node, "namespace")
        assert isinstance(namespace, ast.Call) and namespace.args, ast.dump(node)
        assert _literal_str(namespace.args[0]) == "namespace", _literal_str(
            _keyword(node, "name"))


def _set_env_calls(tree: ast.Module) -> dict[str, list[ast.Call]]:
    calls: dict[str, list[ast.Call]] = {}
    for call in _calls(tree, "SetEnvironmentVariable"):
        name = _literal_str(call.args[0]) if call.args else None
        if name:
            calls.setdefault(name, []).append(call)
    return calls


def test_discovery_defaults_to_localhost_and_opening_it_keeps_it(tree: ast.Module) -> None:
    from omnibind_ros.ros import env as ros_env

    declared = _declared(tree)
    assert _literal_str(_keyword(declared["discovery_range"], "default_value")) == "LOCALHOST"
    assert _literal_str(_keyword(declared["static_peers"], "default_value")) == ""
    calls = _set_env_calls(tree)
    # the range always comes from the argument (LOCALHOST unless the user opens it)
    (range_call,) = calls[ros_env.DISCOVERY_RANGE_VAR]
    assert _keyword(range_call, "condition") is None
    assert ast.unparse(range_call.args[1]) == "arg('discovery_range')"
    # any other range or static peers sets the variable env.py honours, and only then
    keep = calls[ros_env.KEEP_DISCOVERY_RANGE_VAR]
    conditions = sorted(ast.unparse(_keyword(c, "condition")) for c in keep)
    assert conditions == [
        "IfCondition(NotEqualsSubstitution(arg('discovery_range'), 'LOCALHOST'))",
        "IfCondition(NotEqualsSubstitution(arg('static_peers'), ''))"]
    (peers,) = calls["ROS_STATIC_PEERS"]
    assert _keyword(peers, "condition") is not None


def _load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("perception_launch", LAUNCH_FILE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_importable_without_the_launch_system() -> None:
    module = _load_module()  # no launch import at module level
    assert callable(module.generate_launch_description)


def test_large_messages_sets_the_variable_the_installed_fast_dds_reads() -> None:
    from omnibind_ros.ros import env as ros_env

    module = _load_module()
    # Same choice as ensure_safe_ros_env: Fast DDS 3 from Kilted on, Fast DDS 2 before.
    environ: dict[str, str] = {"ROS_DISTRO": "kilted"}
    for distro in ("kilted", "rolling", "", "jazzy", "humble"):
        environ = {"ROS_DISTRO": distro, "AMENT_PREFIX_PATH": "/nonexistent",
                   "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
        ros_env.ensure_safe_ros_env(large_messages=True, environ=environ)
        chosen = [v for v in ros_env.FASTDDS_PROFILE_VARS if environ.get(v)]
        assert [module.fastdds_profile_variable(distro)] == chosen, distro


# ---------------------------------------------------------------------------------------------
# With the real launch system (a ROS install; not installable from PyPI).

def _launch_ros_reason() -> str | None:
    # Only launch_ros is probed: `import launch` can succeed on this repository's own launch/
    # folder (a namespace package when the repository root is on sys.path).
    try:
        import launch_ros  # noqa: F401
    except ImportError as exc:
        return (f"launch_ros is not importable ({exc}): the ROS 2 launch system comes with a "
                "ROS 2 installation and is not installable from PyPI")
    return None


@pytest.mark.launch
@pytest.mark.skipif(_launch_ros_reason() is not None, reason=str(_launch_ros_reason()))
def test_launch_description_builds_with_launch_ros() -> None:
    from launch import LaunchDescription  # noqa: I001  (ruff takes launch/ for first-party)
    from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
    from launch_ros.actions import Node

    description: Any = _load_module().generate_launch_description()
    assert isinstance(description, LaunchDescription)
    arguments = {a.name: a for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert REQUIRED_ARGUMENTS <= set(arguments)
    assert all(a.description for a in arguments.values())
    assert sum(isinstance(e, Node) for e in description.entities) == 2
    assert any(isinstance(e, SetEnvironmentVariable) for e in description.entities)


@pytest.mark.launch
@pytest.mark.skipif(_launch_ros_reason() is not None, reason=str(_launch_ros_reason()))
@pytest.mark.parametrize("arguments, expected", [
    ({}, {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}),
    ({"discovery_range": "SUBNET"},
     {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET", "OMNIBIND_KEEP_DISCOVERY_RANGE": "1"}),
    ({"static_peers": "127.0.0.1"},
     {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_STATIC_PEERS": "127.0.0.1",
      "OMNIBIND_KEEP_DISCOVERY_RANGE": "1"}),
])
def test_launch_arguments_resolve_to_the_namespace_and_discovery_environment(
        arguments: dict[str, str], expected: dict[str, str]) -> None:
    """Evaluated as launch does (no process started): namespace:=robot1 puts both nodes in
    /robot1; the discovery arguments set exactly these variables."""
    from launch import LaunchContext  # noqa: I001
    from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
    from launch.utilities import perform_substitutions
    from launch_ros.actions import Node

    description: Any = _load_module().generate_launch_description()
    context = LaunchContext()
    context.launch_configurations.update({"namespace": "robot1", **arguments})
    for entity in description.entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.visit(context)  # defaults of the arguments not given, choices checked

    def active(entity: Any) -> bool:
        return entity.condition is None or entity.condition.evaluate(context)

    discovery = {"ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_STATIC_PEERS",
                 "OMNIBIND_KEEP_DISCOVERY_RANGE"}
    environment = {perform_substitutions(context, e.name): perform_substitutions(context, e.value)
                   for e in description.entities
                   if isinstance(e, SetEnvironmentVariable) and active(e)}
    assert {k: v for k, v in environment.items() if k in discovery} == expected
    nodes = [e for e in description.entities if isinstance(e, Node) and active(e)]
    assert len(nodes) == 2
    for node in nodes:
        node._perform_substitutions(context)  # what Node.execute does first
        assert node.expanded_node_namespace == "/robot1"
