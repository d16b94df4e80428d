"""A bag as real drivers record it: the event camera as event_camera_msgs/EventPacket (evt3,
metavision_driver's layout) and the microphone as audio_common_msgs/AudioDataStamped
(audio_capture, wave), recorded by record-sim standing in for those drivers, then evaluated
offline with a perception config that names the drivers' types. The same bag in the package's
own types (EventArray, AudioChunk) is the reference: the sensors must encode the same messages.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from omnibind_ros.testing import write_test_bundle

pytestmark = pytest.mark.ros

SENSORS = ["event_camera", "microphone"]
DRIVER_TYPES = {"event_camera": "event_camera_msgs/msg/EventPacket",
                "microphone": "audio_common_msgs/msg/AudioDataStamped"}


def _sim_params(path: Path, types: dict[str, str]) -> Path:
    body = "\n".join(f"    sensors.{name}.message_type: {t}" for name, t in types.items())
    base = Path(__file__).resolve().parents[2] / "config" / "sim_sensors.yaml"
    path.write_text(base.read_text() + body + "\n")
    return path


def _config(path: Path, labels: list[str], types: dict[str, str]) -> Path:
    path.write_text(f"""/**/omnibind_perception:
  ros__parameters:
    sensors: {json.dumps(SENSORS)}
    fusion: {{rate_hz: 10.0, max_age_s: 1.0}}
    labels:
      names: {json.dumps(labels)}
    sensors.event_camera: {{modality: event, topic: /sim/event_camera/events,
                           message_type: {types.get("event_camera", "")}, expected_rate_hz: 20.0}}
    sensors.microphone: {{modality: audio, topic: /sim/microphone/audio,
                         message_type: {types.get("microphone", "")}, expected_rate_hz: 50.0,
                         stale_after: 6.0, lost_after: 25.0}}
""")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from omnibind_ros.bag.offline import evaluate_offline
    from omnibind_ros.bag.reader import open_info
    from omnibind_ros.bag.record import record_sim
    from omnibind_ros.bag.truth import GroundTruth

    root = tmp_path_factory.mktemp("drivers")
    bundle = write_test_bundle(root / "tiny")
    out: dict[str, Any] = {}
    for kind, types in (("drivers", DRIVER_TYPES), ("own", {})):
        bag = root / f"bag_{kind}"
        record_sim(bag, duration_s=3.0, scenario="", seed=5, sensors=SENSORS,
                   sim_params_file=_sim_params(root / f"sim_{kind}.yaml", types),
                   object_period_s=1.5, progress=False)
        labels = [*GroundTruth.from_bag(bag).labels(), "glass teapot"]
        config = _config(root / f"perception_{kind}.yaml", labels, types)
        out[kind] = {"bag": bag, "info": open_info(bag),
                     "result": evaluate_offline(bag, bundle=bundle, config=config,
                                                processes=0, progress=False)}
    return out


def test_record_sim_writes_the_drivers_types(runs: dict[str, Any]) -> None:
    topics = {name: msgtype for name, (msgtype, _) in runs["drivers"]["info"].topics.items()}
    assert topics["/sim/event_camera/events"] == DRIVER_TYPES["event_camera"]
    assert topics["/sim/microphone/audio"] == DRIVER_TYPES["microphone"]


def test_driver_types_encode_like_the_packages_own(runs: dict[str, Any]) -> None:
    drivers, own = (runs[k]["result"] for k in ("drivers", "own"))
    for sensor in SENSORS:
        got, ref = drivers.extra["sensors"][sensor], own.extra["sensors"][sensor]
        assert got["mapped"] and got["undecodable"] == 0, (sensor, got)
        assert got["messages"] == ref["messages"] > 0, sensor
        assert got["encoded"] == ref["encoded"] > 0, sensor
    answered = [sum(t.answered for t in r.ticks) for r in (drivers, own)]
    assert answered[0] == answered[1] > 0
    # evt3 keeps event times to the microsecond (EventArray: the nanosecond): same answers
    same = [a.best_label == b.best_label for a, b in zip(drivers.ticks, own.ticks, strict=True)]
    assert sum(same) >= 0.95 * len(same)
