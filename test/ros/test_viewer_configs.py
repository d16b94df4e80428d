"""config/foxglove_layout.json and config/omnibind.rviz name what the node publishes.

Foxglove: an Image panel on ``~/annotated_image``, the Diagnostics summary on ``/diagnostics``,
Raw Messages on ``~/sensor_status`` and ``~/recognition``, State Transitions of every default
sensor's state. RViz: an Image display on ``~/annotated_image`` with the QoS it is published
with (a best-effort or transient-local mismatch would show nothing).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from omnibind_ros.core.names import PERCEPTION_NODE

REPO = Path(__file__).resolve().parents[2]
NODE = f"/{PERCEPTION_NODE}"


def _panels(tree: Any) -> list[str]:
    if isinstance(tree, str):
        return [tree]
    return _panels(tree["first"]) + _panels(tree["second"])


@pytest.fixture(scope="module")
def layout() -> dict[str, Any]:
    return json.loads((REPO / "config" / "foxglove_layout.json").read_text())


def test_foxglove_layout_is_complete(layout: dict[str, Any]) -> None:
    panels = _panels(layout["layout"])
    assert sorted(panels) == sorted(layout["configById"]), "every panel placed once"
    kinds = {panel.split("!")[0] for panel in panels}
    assert {"Image", "DiagnosticSummary", "RawMessages", "StateTransitions"} <= kinds
    for key in ("globalVariables", "userNodes", "playbackConfig"):
        assert key in layout


def test_foxglove_panels_read_the_nodes_topics(layout: dict[str, Any]) -> None:
    from omnibind_ros.bag.config import read_params_file

    config = layout["configById"]
    images = [c["imageMode"]["imageTopic"] for k, c in config.items() if k.startswith("Image!")]
    assert images == [f"{NODE}/annotated_image"]
    diagnostics = [c["topicToRender"] for k, c in config.items()
                   if k.startswith("DiagnosticSummary!")]
    assert diagnostics == ["/diagnostics"]
    raw = sorted(c["topicPath"].split(".")[0] for k, c in config.items()
                 if k.startswith("RawMessages!"))
    assert raw == [f"{NODE}/recognition", f"{NODE}/sensor_status"]
    sensors = read_params_file(REPO / "config" / "perception.yaml", PERCEPTION_NODE)["sensors"]
    paths = [p["value"] for k, c in config.items() if k.startswith("StateTransitions!")
             for p in c["paths"]]
    assert paths == [f'{NODE}/sensor_status.sensors[:]{{name=="{s}"}}.state' for s in sensors]


@pytest.mark.ros
def test_rviz_image_display_matches_the_published_topic_and_qos() -> None:
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    from omnibind_ros.ros.annotated_image import ANNOTATED_IMAGE_QOS, ANNOTATED_IMAGE_TOPIC

    rviz = yaml.safe_load((REPO / "config" / "omnibind.rviz").read_text())
    displays = rviz["Visualization Manager"]["Displays"]
    (image,) = [d for d in displays if d["Class"] == "rviz_default_plugins/Image"]
    topic = image["Topic"]
    assert topic["Value"] == f"{NODE}/{ANNOTATED_IMAGE_TOPIC.removeprefix('~/')}"
    reliability = {ReliabilityPolicy.RELIABLE: "Reliable",
                   ReliabilityPolicy.BEST_EFFORT: "Best Effort"}[ANNOTATED_IMAGE_QOS.reliability]
    durability = {DurabilityPolicy.VOLATILE: "Volatile",
                  DurabilityPolicy.TRANSIENT_LOCAL: "Transient Local"}[
                      ANNOTATED_IMAGE_QOS.durability]
    assert (topic["Reliability Policy"], topic["Durability Policy"]) == (reliability, durability)
