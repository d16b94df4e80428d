"""Scenario timelines: parsing, validation errors that name the entry, events_until, noise,
degradation events."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omnibind_ros.sim.scenario import (
    ScenarioError,
    corrupt,
    load_scenario,
    parse_scenario,
)
from omnibind_ros.sim.stream import DEFAULT_SENSORS, WorldStream

REPO = Path(__file__).resolve().parents[2]


def test_events_until_hands_out_each_event_once_in_time_order() -> None:
    sc = parse_scenario([{"t": 2, "sensor": "lidar", "action": "unplug"},
                         {"t": 1, "sensor": "camera", "action": "unplug"},
                         {"t": 1, "sensor": ["camera"], "action": "replug"}])
    assert sc.events_until(0.5) == []
    first = sc.events_until(1.0)
    assert [(t, e.action) for t, e in first] == [(1.0, "unplug"), (1.0, "replug")]
    assert sc.events_until(1.5) == []
    assert [e.sensors for _, e in sc.events_until(10.0)] == [("lidar",)]
    assert sc.events_until(100.0) == []


def test_loop_repeats_the_timeline_every_duration() -> None:
    sc = parse_scenario({"loop": True, "duration_s": 5,
                         "events": [{"t": 1, "sensor": "all", "action": "unplug"}]})
    times = [t for t, _ in sc.events_until(12.0)]
    assert times == [1.0, 6.0, 11.0]


def test_empty_documents_are_empty_scenarios() -> None:
    assert parse_scenario(None).events == ()
    assert parse_scenario({"events": []}).events_until(1e9) == []


@pytest.mark.parametrize("data, message", [
    ([{"t": 1, "sensor": "camera"}], r"event 0 .*missing keys \['action'\]"),
    ([{"t": 1, "sensor": "camera", "action": "explode"}], r"event 0 .*unknown action 'explode'"),
    ([{"t": 0, "sensor": "camera", "action": "unplug"},
      {"t": -1, "sensor": "camera", "action": "unplug"}], r"event 1 .*'t' must be >= 0"),
    ([{"t": "soon", "sensor": "camera", "action": "unplug"}], r"'t' must be a finite number"),
    ([{"t": 1, "sensor": [], "action": "unplug"}], r"'sensor' must be a name"),
    ([{"t": 1, "sensor": "camera", "action": "unplug", "when": 3}], r"unknown keys \['when'\]"),
    (["unplug camera"], r"event 0 .*must be a mapping"),
    ({"events": [], "speed": 2}, r"unknown top-level keys \['speed'\]"),
    ({"loop": True, "events": [{"t": 1, "sensor": "a", "action": "unplug"}]}, r"loop needs"),
    ({"loop": "yes", "events": []}, r"'loop' must be true or false"),
    ("camera", r"events must be a list"),
])
def test_bad_entries_are_rejected_with_clear_errors(data, message) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(data)


def test_unknown_sensor_names_the_event_and_the_configured_sensors() -> None:
    with pytest.raises(ScenarioError, match=r"event 0 .*unknown sensor\(s\) \['sonar'\]"):
        parse_scenario([{"t": 1, "sensor": ["camera", "sonar"], "action": "unplug"}],
                       known_sensors=["camera", "lidar"])


def test_load_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {t: 1, sensor: camera, action: unplug_all}\n")
    with pytest.raises(ScenarioError, match=r"bad\.yaml: scenario event 0"):
        load_scenario(bad)
    bad.write_text("- {t: 1, sensor: [camera\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", ["hotplug_demo.yaml", "quick_unplug.yaml",
                                  "degraded_demo.yaml"])
def test_shipped_scenarios_are_valid_for_the_default_sensors(name: str) -> None:
    modalities = {n: m for n, (m, _) in DEFAULT_SENSORS.items()}
    sc = load_scenario(REPO / "config" / "scenarios" / name, known_sensors=modalities)
    assert sc.events and {e.action for e in sc.events} <= {"unplug", "replug", "noise_on",
                                                           "noise_off", "degrade_on",
                                                           "degrade_off"}


def test_hotplug_demo_timeline() -> None:
    sc = load_scenario(REPO / "config" / "scenarios" / "hotplug_demo.yaml")
    assert sc.loop and sc.duration_s == 40.0
    unplugged: set[str] = set()
    for t, event in sc.events_until(39.9):
        names = set(DEFAULT_SENSORS) if "all" in event.sensors else set(event.sensors)
        if event.action == "unplug":
            unplugged |= names
        elif event.action == "replug":
            unplugged -= names
        if t == 16.0:
            assert unplugged == {"camera", "lidar"}
    assert unplugged == set()


def test_corrupt_keeps_type_shape_and_encoding() -> None:
    stream = WorldStream(seed=1, object_period_s=2.0)
    rng = np.random.default_rng(0)
    seen = set()
    for item in stream.until(0.3):
        noisy = corrupt(item.modality, item.payload, rng)
        assert type(noisy) is type(item.payload), item.modality
        if isinstance(item.payload, np.ndarray):
            assert noisy.shape == item.payload.shape and noisy.dtype == item.payload.dtype
            assert not np.array_equal(noisy, item.payload)
        seen.add(item.modality)
    assert {"image", "thermal", "event", "tactile", "audio", "point_cloud", "text"} == seen


MODALITIES = {name: modality for name, (modality, _) in DEFAULT_SENSORS.items()}


def test_degrade_events_parse_with_kind_and_severity() -> None:
    sc = parse_scenario([
        {"t": 1, "sensor": "camera", "action": "degrade_on", "kind": "dark", "severity": 0.9},
        {"t": 2, "sensor": "camera", "action": "degrade_off"},
        {"t": 3, "sensor": "all", "action": "degrade_on", "kind": "occlusion", "severity": 1}],
        known_sensors=MODALITIES)
    on, off, everywhere = sc.events
    assert (on.action, on.kind, on.severity) == ("degrade_on", "dark", 0.9)
    assert (off.kind, off.severity) == (None, None)
    # `all` means every sensor whose modality has the kind (camera and LiDAR occlusion).
    assert everywhere.targets(MODALITIES) == ["camera", "lidar"]
    assert off.targets(MODALITIES) == ["camera"]


@pytest.mark.parametrize("entry, message", [
    ({"t": 1, "sensor": "camera", "action": "degrade_on", "kind": "dark"},
     r"event 0 .*missing keys \['severity'\]"),
    ({"t": 1, "sensor": "camera", "action": "degrade_on", "severity": 0.5},
     r"event 0 .*missing keys \['kind'\]"),
    ({"t": 1, "sensor": "camera", "action": "degrade_on", "kind": "fog", "severity": 0.5},
     r"event 0 .*unknown degradation kind 'fog'; expected one of clipping, dark"),
    ({"t": 1, "sensor": "camera", "action": "degrade_on", "kind": "dark", "severity": 1.5},
     r"event 0 .*'severity' must be in \[0, 1\], got 1.5"),
    ({"t": 1, "sensor": "camera", "action": "degrade_on", "kind": "dark", "severity": "x"},
     r"'severity' must be a finite number"),
    ({"t": 1, "sensor": "camera", "action": "degrade_off", "kind": "dark"},
     r"unknown keys \['kind'\].*kind and severity go with degrade_on"),
    ({"t": 1, "sensor": "camera", "action": "unplug", "severity": 1},
     r"unknown keys \['severity'\]"),
])
def test_bad_degrade_events_name_the_entry(entry, message) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_scenario([entry])


def test_degrade_kind_must_fit_the_sensor_modality() -> None:
    with pytest.raises(ScenarioError, match=r"event 0 \(t=1.0, action=degrade_on, kind=rain\): "
                                            r"sensor 'camera' \(image\) has no degradation "
                                            r"'rain'; its kinds: dark, glare"):
        parse_scenario([{"t": 1, "sensor": "camera", "action": "degrade_on", "kind": "rain",
                         "severity": 0.5}], known_sensors=MODALITIES)
    with pytest.raises(ScenarioError, match="no configured sensor has this kind"):
        parse_scenario([{"t": 1, "sensor": "all", "action": "degrade_on", "kind": "rain",
                         "severity": 0.5}], known_sensors={"camera": "image"})
    with pytest.raises(ScenarioError, match=r"unknown sensor\(s\) \['sonar'\]"):
        parse_scenario([{"t": 1, "sensor": "sonar", "action": "degrade_off"}],
                       known_sensors=MODALITIES)


def test_degraded_demo_timeline() -> None:
    sc = load_scenario(REPO / "config" / "scenarios" / "degraded_demo.yaml",
                       known_sensors=MODALITIES)
    assert sc.loop and sc.duration_s == 40.0
    on = [(t, e.sensors, e.kind) for t, e in sc.events_until(39.9) if e.action == "degrade_on"]
    assert on == [(8.0, ("camera",), "dark"), (16.0, ("microphone",), "wind"),
                  (24.0, ("lidar",), "rain")]
    assert {e.action for e in sc.events} == {"degrade_on", "degrade_off"}
