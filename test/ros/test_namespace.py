"""A namespaced bringup (launch ``namespace:=robot1``): every sensor topic, the simulated
sensors' and the perception node's, resolves inside the namespace.

The shipped configs name the sensor topics relatively (``sim/camera/image_raw``), so one
namespace moves the simulator's publishers and the perception node's subscriptions together;
bag recording still writes them at the root (``/sim/...``), where a bag has no namespace.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_record_sim_topics_stay_at_the_root() -> None:
    pytest.importorskip("rclpy")
    from omnibind_ros.ros.sim_sensors_node import SensorConfig, root_topic

    assert root_topic("sim/camera/image_raw") == "/sim/camera/image_raw"
    assert root_topic("/robot/eye") == "/robot/eye"
    assert root_topic("~/points") == "/omnibind_sim_sensors/points"
    cfg = SensorConfig("camera", "image", "sim/camera/image_raw", 15.0, "sim_camera")
    assert (cfg.topic, cfg.configured_topic) == ("/sim/camera/image_raw", "sim/camera/image_raw")


def test_shipped_configs_name_sensor_topics_relatively_and_alike() -> None:
    from omnibind_ros.bag.config import read_params_file
    from omnibind_ros.core.names import PERCEPTION_NODE, SIM_SENSORS_NODE

    perception = read_params_file(REPO / "config" / "perception.yaml", PERCEPTION_NODE)
    sim = read_params_file(REPO / "config" / "sim_sensors.yaml", SIM_SENSORS_NODE)

    def topics(params: dict) -> dict[str, str]:
        return {name: params[f"sensors.{name}.topic"] for name in params["sensors"]}

    assert topics(perception) == topics(sim)
    relative = [t for t in topics(perception).values() if t.startswith(("/", "~"))]
    assert relative == [], "absolute sensor topics would not follow namespace:=..."


@pytest.mark.ros
def test_namespaced_bringup_puts_every_topic_under_the_namespace(tiny_bundle_dir: Path) -> None:
    from omnibind_ros.tools.bringup_nodes import Bringup, BringupOptions

    app = Bringup(BringupOptions(bundle=str(tiny_bundle_dir), ui=False, namespace="robot1",
                                 duration_s=10.0))
    try:
        app.start()
        app.spin()
        deadline = time.monotonic() + 60.0
        while app.scoreboard.received < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert app.scoreboard.received >= 3, "no recognitions reached the namespaced monitor"
        sim_topics = {app.sim.topic_of(name) for name in app.sim.sensors}
        assert all(t.startswith("/robot1/sim/") for t in sim_topics), sim_topics
        # the perception node listens where the namespaced simulator publishes
        assert set(app.perception.subscribed_topics().values()) == sim_topics
        statuses = {h.topic for h in app.perception.monitor.health()}
        assert statuses == sim_topics, "sensor status names the resolved topics"
        graph = {name for name, _ in app.monitor_node.get_topic_names_and_types()}
        assert sim_topics <= graph
        assert "/robot1/omnibind_perception/recognition" in graph
        assert not [t for t in graph if t.startswith("/sim/")], sorted(graph)
    finally:
        app.close()
