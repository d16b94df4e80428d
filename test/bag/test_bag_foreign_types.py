"""A bag written with rosbags by someone else's drivers: an event camera in
event_camera_msgs/EventPacket (evt3) and a microphone in mgonzs13/audio_common's AudioStamped, a
type no package installs here. Offline evaluation reads the installed type with rclpy and the
other by the definition the bag carries."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omnibind_ros.testing import write_test_bundle

pytestmark = pytest.mark.ros

S = 1_000_000_000
T0 = 1_700_000_000 * S
#: mgonzs13/audio_common >= 2.1 (audio_common_msgs/msg/*.msg), verbatim field lists.
MGONZS13 = {
    "audio_common_msgs/msg/AudioData": ("float32[] float32_data\nint32[] int32_data\n"
                                        "int16[] int16_data\nint8[] int8_data\n"
                                        "uint8[] uint8_data\n"),
    "audio_common_msgs/msg/AudioInfo": "int32 format\nint32 channels\nint32 rate\nint32 chunk\n",
    "audio_common_msgs/msg/Audio": "audio_common_msgs/AudioData audio_data\n"
                                   "audio_common_msgs/AudioInfo info\n",
    "audio_common_msgs/msg/AudioStamped": ("std_msgs/Header header\n"
                                           "audio_common_msgs/Audio audio\n"),
}
EVENTS, AUDIO = "/prophesee/events", "/audio"


def _store() -> Any:
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    from omnibind_ros.bag.types import driver_msg_dirs

    store = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for name, text in MGONZS13.items():
        types.update(get_types_from_msg(text, name))
    event_msg = driver_msg_dirs()["event_camera_msgs"] / "EventPacket.msg"
    types.update(get_types_from_msg(event_msg.read_text(), "event_camera_msgs/msg/EventPacket"))
    store.register(types)
    return store


def _write_bag(path: Path) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer

    from omnibind_ros.core.event_encoders import encode_evt3

    store = _store()
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    Packet = store.types["event_camera_msgs/msg/EventPacket"]
    Stamped, Audio = (store.types[f"audio_common_msgs/msg/{n}"] for n in ("AudioStamped", "Audio"))
    Data, Info = (store.types[f"audio_common_msgs/msg/{n}"] for n in ("AudioData", "AudioInfo"))
    rng = np.random.default_rng(0)
    empty = {k: np.zeros(0, d) for k, d in (("float32_data", np.float32), ("int32_data", np.int32),
                                            ("int16_data", np.int16), ("int8_data", np.int8),
                                            ("uint8_data", np.uint8))}

    def header(ns: int) -> Any:
        return Header(stamp=Time(sec=ns // S, nanosec=ns % S), frame_id="sensor")

    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        ev = writer.add_connection(EVENTS, "event_camera_msgs/msg/EventPacket", typestore=store)
        au = writer.add_connection(AUDIO, "audio_common_msgs/msg/AudioStamped", typestore=store)
        for k in range(40):                     # 2 s: 20 Hz event packets, 50 ms audio chunks
            ns = T0 + k * 50_000_000
            n = 3000
            t = np.sort(rng.integers(0, 50_000, n)) * 1000 + ns
            x, y = rng.integers(0, 320, n), rng.integers(0, 240, n)
            order = np.lexsort((x, y, t))
            events = encode_evt3(x[order], y[order], t[order], rng.integers(0, 2, n))
            packet = Packet(header=header(ns), height=240, width=320, seq=k, time_base=0,
                            encoding="evt3", is_bigendian=False,
                            events=np.frombuffer(events, np.uint8))
            writer.write(ev, ns, store.serialize_cdr(packet, Packet.__msgtype__))
            chunk = (np.sin(np.arange(800) * 0.3 + k) * 0.3).astype(np.float32)
            audio = Stamped(header=header(ns + 50_000_000), audio=Audio(
                audio_data=Data(**{**empty, "float32_data": chunk}),
                info=Info(format=1, channels=1, rate=16000, chunk=800)))
            writer.write(au, ns + 50_000_000, store.serialize_cdr(audio, Stamped.__msgtype__))


def _config(path: Path) -> Path:
    path.write_text(f"""/**/omnibind_perception:
  ros__parameters:
    sensors: [event_camera, microphone]
    fusion: {{rate_hz: 10.0, max_age_s: 1.0}}
    labels:
      names: {json.dumps(["metal can", "glass teapot"])}
    sensors.event_camera: {{modality: event, topic: {EVENTS},
                           message_type: event_camera_msgs/msg/EventPacket,
                           expected_rate_hz: 20.0}}
    sensors.microphone: {{modality: audio, topic: {AUDIO},
                         message_type: audio_common_msgs/msg/AudioStamped, expected_rate_hz: 20.0,
                         stale_after: 6.0, lost_after: 25.0}}
""")
    return path


@pytest.mark.parametrize("processes", [0, 2])
def test_foreign_bag_reads_by_installed_class_and_by_the_bags_definitions(
        tmp_path_factory: pytest.TempPathFactory, processes: int) -> None:
    from omnibind_ros.bag.offline import evaluate_offline
    from omnibind_ros.bag.reader import open_info
    from omnibind_ros.ros.interfaces import message_class

    root = tmp_path_factory.mktemp("foreign")
    with pytest.raises(AttributeError):     # the premise: this type is not installed here
        message_class("audio_common_msgs/msg/AudioStamped")
    bag = root / "bag"
    _write_bag(bag)
    assert "audio_common_msgs/msg/AudioStamped" in open_info(bag).definitions
    result = evaluate_offline(bag, bundle=write_test_bundle(root / "tiny"),
                              config=_config(root / "perception.yaml"), processes=processes,
                              progress=False)
    # audio encodes at its default encode_rate_hz (10 Hz) while every chunk feeds its window
    for sensor, encoded in (("event_camera", 30), ("microphone", 15)):
        got = result.extra["sensors"][sensor]
        assert got["mapped"] and got["messages"] == 40, (sensor, got)
        assert got["undecodable"] == 0, (sensor, got)
        assert got["encoded"] >= encoded, (sensor, got)
    assert sum(t.answered for t in result.ticks) >= 10


def _write_audio_capture_bag(path: Path, with_info: bool) -> np.ndarray:
    """What audio_capture (format:=wave, sample_format S32LE, 2 channels, 48 kHz) records:
    unstamped AudioData chunks on /mic/audio and its AudioInfo on /mic/audio_info."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from omnibind_ros.bag.types import typestore

    store = typestore()
    Data, Info = (store.types[f"audio_common_msgs/msg/{n}"] for n in ("AudioData", "AudioInfo"))
    frames = (np.sin(np.arange(96_000)[:, None] * [0.05, 0.07]) * 0.4 * 2**31).astype("<i4")
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        data_conn = writer.add_connection("/mic/audio", Data.__msgtype__, typestore=store)
        info_conn = writer.add_connection("/mic/audio_info", Info.__msgtype__, typestore=store)
        if with_info:
            info = Info(channels=2, sample_rate=48000, sample_format="S32LE", bitrate=0,
                        coding_format="wave")
            writer.write(info_conn, T0 - 1, store.serialize_cdr(info, Info.__msgtype__))
        for k in range(0, 96_000, 960):           # 20 ms chunks, 2 s
            chunk = Data(data=np.frombuffer(frames[k:k + 960].tobytes(), np.uint8))
            log = T0 + round((k + 960) / 48000 * S)
            writer.write(data_conn, log, store.serialize_cdr(chunk, Data.__msgtype__))
    return frames


def test_audio_data_takes_its_format_from_the_paired_audio_info(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    from omnibind_ros.bag.offline import evaluate_offline

    root = tmp_path_factory.mktemp("audio_capture")
    config = root / "perception.yaml"
    config.write_text(f"""/**/omnibind_perception:
  ros__parameters:
    sensors: [microphone]
    fusion: {{rate_hz: 10.0, max_age_s: 1.0}}
    labels:
      names: {json.dumps(["metal can", "glass teapot"])}
    sensors.microphone: {{modality: audio, topic: /mic/audio, expected_rate_hz: 50.0,
                         message_type: audio_common_msgs/msg/AudioData}}
""")
    bundle = write_test_bundle(root / "tiny")
    out = {}
    for with_info in (True, False):
        bag = root / f"bag_{with_info}"
        _write_audio_capture_bag(bag, with_info)
        for processes in (0, 2):
            result = evaluate_offline(bag, bundle=bundle, config=config, processes=processes,
                                      progress=False)
            mic = result.extra["sensors"]["microphone"]
            assert mic["messages"] == 100 and mic["undecodable"] == 0, mic
            assert mic.get("info_messages", 0) == int(with_info), mic
            assert "/mic/audio_info" not in result.skipped_topics
            out[with_info, processes] = result
    # with its AudioInfo the chunks are 20 ms of 48 kHz stereo, stamped 20 ms before their
    # arrival; without it they are read as audio_capture's default (S16LE mono 16 kHz: 240 ms
    # of noise each, stamped 240 ms before arrival: the monitor's arrival slack accepts such a
    # steady delay, but every answer is then fused from a quarter-second-old "sample")
    answered = {k: sum(t.answered for t in r.ticks) for k, r in out.items()}
    assert answered[True, 0] == answered[True, 2] >= 15
    assert answered[False, 0] == answered[False, 2]
    stamps = [t.stamp_ns for t in out[True, 0].ticks if t.answered]
    assert all((s - T0) % 20_000_000 == 0 for s in stamps)   # chunk starts: k * 20 ms

    def ages(result) -> list[float]:
        return [(t.t_ns - t.stamp_ns) / 1e9 for t in result.ticks if t.answered]
    assert max(ages(out[True, 0])) < 0.1
    assert ages(out[False, 0]) and min(ages(out[False, 0])) >= 0.2


def test_live_plays_the_paired_audio_info(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Live mode plays a sensor's info topic too (the node's info subscription sets the
    converter's format, as offline mode's feeding does): without it, 48 kHz stereo S32LE would
    be read as 16 kHz mono S16LE and the microphone would never be LIVE."""
    from omnibind_ros.bag.live import evaluate_live

    root = tmp_path_factory.mktemp("audio_capture_live")
    config = root / "perception.yaml"
    config.write_text(f"""/**/omnibind_perception:
  ros__parameters:
    sensors: [microphone]
    fusion: {{rate_hz: 10.0, max_age_s: 1.0}}
    labels:
      names: {json.dumps(["metal can", "glass teapot"])}
    sensors.microphone: {{modality: audio, topic: /mic/audio, expected_rate_hz: 50.0,
                         message_type: audio_common_msgs/msg/AudioData}}
""")
    bag = root / "bag"
    _write_audio_capture_bag(bag, with_info=True)
    result = evaluate_live(bag, rate=1.0, bundle=write_test_bundle(root / "tiny"),
                           config=config, progress=False)
    assert result.extra["player"]["published"] == {"/mic/audio": 100, "/mic/audio_info": 1}
    assert "/mic/audio_info" not in result.skipped_topics
    assert any(c.sensor == "microphone" and c.state == "LIVE" for c in result.states)
    assert sum(t.answered for t in result.ticks) >= 10
