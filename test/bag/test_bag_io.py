"""Bag reading: both storages, our custom types, damaged bags, odd paths (ROS-free).

Bags are written with rosbags' Writer and the typestore of omnibind_ros.bag.types, so these
tests also prove that the custom messages (EventArray, AudioChunk, GroundTruth) can be recorded.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from omnibind_ros.bag.reader import (
    BagReadError,
    iter_messages,
    open_info,
)
from omnibind_ros.bag.summary import format_info, topic_rates, topic_spans
from omnibind_ros.bag.types import msg_dir, typestore

T0 = 1_700_000_000_000_000_000
STORAGES = ("mcap", "sqlite3")
IMAGE_BYTES = 48 * 48 * 3 * 10  # ~69 KB: 100 images make several 1 MiB mcap chunks


def _header(ts, t_ns: int):
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    return Header(stamp=Time(sec=t_ns // 10**9, nanosec=t_ns % 10**9), frame_id="f")


def _messages(ts) -> list[tuple[str, str, int, object]]:
    """(topic, msgtype, log time, message): 100 images at 20 Hz, events, audio, ground truth."""
    t = ts.types
    out = []
    for k in range(100):
        stamp = T0 + k * 50_000_000
        data = np.full(IMAGE_BYTES, k % 256, np.uint8)
        out.append(("/cam", "sensor_msgs/msg/Image", stamp, t["sensor_msgs/msg/Image"](
            header=_header(ts, stamp), height=1, width=IMAGE_BYTES // 3, encoding="rgb8",
            is_bigendian=0, step=IMAGE_BYTES, data=data)))
        if k % 2 == 0:
            n = k + 1
            out.append(("/events", "omnibind_ros/msg/EventArray", stamp + 1, t[
                "omnibind_ros/msg/EventArray"](
                header=_header(ts, stamp), width=64, height=48,
                x=np.arange(n, dtype=np.uint16), y=np.full(n, 3, np.uint16),
                t=np.arange(n, dtype=np.uint32) * 10, polarity=np.ones(n, np.uint8))))
            out.append(("/audio", "omnibind_ros/msg/AudioChunk", stamp + 2, t[
                "omnibind_ros/msg/AudioChunk"](
                header=_header(ts, stamp), sample_rate=16000, channels=1, encoding="S16LE",
                data=np.arange(640, dtype=np.uint8))))
        if k % 10 == 0:
            Time = t["builtin_interfaces/msg/Time"]
            out.append(("/omnibind/ground_truth", "omnibind_ros/msg/GroundTruth", stamp + 3, t[
                "omnibind_ros/msg/GroundTruth"](
                header=_header(ts, stamp), label=f"wooden duck {k}", class_index=k,
                episode=k // 10, episode_start=Time(sec=0, nanosec=0), shape="duck",
                material="wooden")))
    return out


def write_bag(path: Path, storage: str) -> list[tuple[str, str, int, bytes]]:
    """Write the test bag; return what was written as (topic, msgtype, log time, CDR)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = typestore()
    written = []
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {}
        for topic, msgtype, t_ns, msg in _messages(ts):
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            raw = bytes(ts.serialize_cdr(msg, msgtype))
            writer.write(conns[topic], t_ns, raw)
            written.append((topic, msgtype, t_ns, raw))
    return written


Bag = tuple[Path, str, list[tuple[str, str, int, bytes]]]


def _make(tmp_path_factory, storage: str) -> Bag:
    path = tmp_path_factory.mktemp(f"bag_{storage}") / "bag"
    return path, storage, write_bag(path, storage)


@pytest.fixture(scope="module")
def mcap_bag(tmp_path_factory) -> Bag:
    return _make(tmp_path_factory, "mcap")


@pytest.fixture(scope="module")
def sqlite_bag(tmp_path_factory) -> Bag:
    return _make(tmp_path_factory, "sqlite3")


@pytest.fixture(params=STORAGES)
def bag(request) -> Bag:
    return request.getfixturevalue("mcap_bag" if request.param == "mcap" else "sqlite_bag")


def _storage_file(path: Path) -> Path:
    return next(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_round_trip_in_log_time_order(bag) -> None:
    path, _, written = bag
    got = list(iter_messages(path))
    expected = sorted(written, key=lambda w: w[2])
    assert [(m.topic, m.msgtype, m.log_time_ns, m.rawdata) for m in got] == expected
    assert [m.index for m in got] == list(range(len(expected)))


def test_custom_types_decode(bag) -> None:
    ts = typestore()
    path, _, _ = bag
    events = [m for m in iter_messages(path, topics=["/events"])]
    assert len(events) == 50
    msg = ts.deserialize_cdr(events[3].rawdata, "omnibind_ros/msg/EventArray")
    assert msg.width == 64 and msg.x.tolist() == list(range(7))
    assert msg.t.tolist() == [10 * i for i in range(7)]
    gt = [ts.deserialize_cdr(m.rawdata, m.msgtype)
          for m in iter_messages(path, topics={"/omnibind/ground_truth"})]
    assert [g.label for g in gt] == [f"wooden duck {k}" for k in range(0, 100, 10)]


def test_info(bag) -> None:
    path, storage, written = bag
    info = open_info(path)
    assert info.storage == storage and info.error is None and not info.recovered
    assert info.message_count == len(written) == 100 + 50 + 50 + 10
    assert info.start_ns == T0
    assert info.end_ns == T0 + 99 * 50_000_000
    assert info.topics == {
        "/audio": ("omnibind_ros/msg/AudioChunk", 50),
        "/cam": ("sensor_msgs/msg/Image", 100),
        "/events": ("omnibind_ros/msg/EventArray", 50),
        "/omnibind/ground_truth": ("omnibind_ros/msg/GroundTruth", 10)}
    text = format_info(info)
    assert "4.950 s" in text and "omnibind_ros/msg/EventArray" in text
    cam = next(line for line in text.splitlines() if line.startswith("  /cam "))
    # 99 intervals of 50 ms while active; 100 images over the 4.95 s bag
    assert cam.split()[-5:] == ["20.00", "20.20", "0.000", "..", "4.950"]


def test_topic_spans_from_the_indexes_match_the_messages(bag) -> None:
    """Several mcap chunks (MessageIndex records) or the sqlite3 table: the same first and last
    log time per topic as reading every message."""
    path, _, written = bag
    expected: dict[str, tuple[int, int]] = {}
    for topic, _, t_ns, _ in written:
        first, last = expected.get(topic, (t_ns, t_ns))
        expected[topic] = (min(first, t_ns), max(last, t_ns))
    info = open_info(path)
    assert not info.recovered and info.spans == {}  # the index is read only when asked
    assert topic_spans(info) == expected
    assert expected["/omnibind/ground_truth"] == (T0 + 3, T0 + 90 * 50_000_000 + 3)


def _write_late_topic_bag(path: Path, storage: str) -> None:
    """/always at 20 Hz over [0, 10] s; /late at 10 Hz over [6, 8] s only (21 messages)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = typestore()
    String = ts.types["std_msgs/msg/String"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    rows = [(T0 + k * 50_000_000, "/always") for k in range(201)]
    rows += [(T0 + 6 * 10**9 + k * 100_000_000, "/late") for k in range(21)]
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {t: writer.add_connection(t, "std_msgs/msg/String", typestore=ts)
                 for t in ("/always", "/late")}
        for t_ns, topic in sorted(rows):
            writer.write(conns[topic], t_ns,
                         bytes(ts.serialize_cdr(String(data="x"), "std_msgs/msg/String")))


@pytest.mark.parametrize("storage, scanned", [("mcap", False), ("sqlite3", False),
                                              ("mcap", True)])
def test_info_rate_over_the_span_a_topic_was_active(tmp_path, storage, scanned) -> None:
    """A topic recorded for 2 s of a 10 s bag runs at 10 Hz, not 2.1 Hz; the whole-bag average
    is shown beside it. From the indexes, and from a scan where the index is unusable (an mcap
    without its closing magic: rosbags refuses it, every message is still readable)."""
    path = tmp_path / "late"
    _write_late_topic_bag(path, storage)
    if scanned:
        f = _storage_file(path)
        os.truncate(f, f.stat().st_size - 8)
    info = open_info(path)
    assert info.recovered is scanned and info.error is None and info.message_count == 222
    spans = topic_spans(info)
    assert spans == {"/always": (T0, T0 + 10 * 10**9),
                     "/late": (T0 + 6 * 10**9, T0 + 8 * 10**9)}
    rates = topic_rates(info, spans)
    assert rates["/late"] == (pytest.approx(10.0), pytest.approx(21 / 10.0))
    assert rates["/always"] == (pytest.approx(20.0), pytest.approx(20.1))
    late = next(line for line in format_info(info).splitlines() if line.startswith("  /late "))
    assert late.split()[-6:] == ["21", "10.00", "2.10", "6.000", "..", "8.000"]


def test_info_rate_of_a_single_message_topic(tmp_path) -> None:
    """One message has no interval: no active rate (not an infinite or zero one)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = typestore()
    String = ts.types["std_msgs/msg/String"]
    path = tmp_path / "one"
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        a = writer.add_connection("/a", "std_msgs/msg/String", typestore=ts)
        b = writer.add_connection("/b", "std_msgs/msg/String", typestore=ts)
        raw = bytes(ts.serialize_cdr(String(data="x"), "std_msgs/msg/String"))
        writer.write(a, T0, raw)
        writer.write(b, T0 + 10**9, raw)
        writer.write(a, T0 + 2 * 10**9, raw)
    info = open_info(path)
    assert topic_rates(info)["/b"] == (None, pytest.approx(0.5))
    line = next(line for line in format_info(info).splitlines() if line.startswith("  /b "))
    assert line.split()[-6:] == ["1", "-", "0.50", "1.000", "..", "1.000"]


def test_custom_type_hashes_match_the_built_interfaces() -> None:
    """rosbags computes the RIHS01 of our types from msg/; rosidl wrote its own at build time:
    they must agree, or players/recorders would see two different types."""
    ts = typestore()
    assert (msg_dir() / "EventArray.msg").is_file()
    share = Path(sys.prefix) / "share" / "omnibind_ros" / "msg"
    if not (share / "EventArray.json").is_file():
        pytest.skip("omnibind_ros interfaces are not built into this environment")
    for name in ("EventArray", "AudioChunk", "GroundTruth"):
        desc = json.loads((share / f"{name}.json").read_text())
        hashes = [h["hash_string"] for h in desc["type_hashes"]
                  if h["type_name"] == f"omnibind_ros/msg/{name}"]
        assert hashes == [ts.hash_rihs01(f"omnibind_ros/msg/{name}")]


def _check_partial(path: Path, written: list, storage_hint: str) -> BagReadError:
    expected = sorted(written, key=lambda w: w[2])
    got = []
    with pytest.raises(BagReadError) as err:
        for m in iter_messages(path):
            got.append((m.topic, m.msgtype, m.log_time_ns, m.rawdata))
    exc = err.value
    n = len(got)
    assert 0 < n < len(expected)
    assert got == expected[:n]  # everything before the damage, intact and in order
    assert exc.messages_read == n
    assert exc.last_log_time_ns == expected[n - 1][2]
    t_s = (expected[n - 1][2] - T0) * 1e-9
    assert exc.position.startswith(f"message {n} at t={t_s:.2f} s (")
    assert storage_hint in exc.position
    assert str(path) in str(exc)
    info = open_info(path)
    assert info.message_count == n and info.recovered and info.error
    assert info.error.startswith(f"message {n} at")
    return exc


def test_truncated_mcap(tmp_path, mcap_bag) -> None:
    path, _, written = mcap_bag
    broken = _copy(path, tmp_path / "cut")
    f = _storage_file(broken)
    os.truncate(f, f.stat().st_size // 2)
    exc = _check_partial(broken, written, "byte")
    assert "truncated" in exc.cause and "chunk at byte" in exc.position


def test_corrupt_chunk_in_indexed_mcap(tmp_path, mcap_bag) -> None:
    """Footer intact, garbage in the middle: the index is used and reading stops at the chunk."""
    path, _, written = mcap_bag
    broken = _copy(path, tmp_path / "garbage")
    f = _storage_file(broken)
    size = f.stat().st_size
    with f.open("r+b") as fh:
        fh.seek(size // 2)
        fh.write(b"\xff" * (size // 10))
    exc = _check_partial_indexed(broken, written)
    assert "chunk at byte" in exc.position


def _check_partial_indexed(path: Path, written: list) -> BagReadError:
    expected = sorted(written, key=lambda w: w[2])
    got = []
    with pytest.raises(BagReadError) as err:
        for m in iter_messages(path):
            got.append((m.topic, m.msgtype, m.log_time_ns, m.rawdata))
    assert 0 < len(got) < len(expected) and got == expected[:len(got)]
    assert err.value.messages_read == len(got)
    assert err.value.position.startswith(f"message {len(got)} at t=")
    return err.value


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_damaged_sqlite3(tmp_path, sqlite_bag, damage) -> None:
    path, _, written = sqlite_bag
    broken = _copy(path, tmp_path / damage)
    f = _storage_file(broken)
    size = f.stat().st_size
    if damage == "truncate":
        os.truncate(f, size // 2)
    else:  # the second half of the file zeroed (a disk that lost its blocks)
        with f.open("r+b") as fh:
            fh.seek(size // 2)
            fh.write(bytes(size - size // 2))
    exc = _check_partial(broken, written, "row after id")
    assert "corrupt" in exc.cause


def test_missing_path_and_not_a_bag(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.*does not exist"):
        open_info(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        list(iter_messages(tmp_path / "nope"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BagReadError, match="not a rosbag2 storage file"):
        open_info(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagReadError, match="not a rosbag2 bag"):
        open_info(tmp_path / "empty")
    (tmp_path / "fake.mcap").write_bytes(b"this is no mcap file at all")
    with pytest.raises(BagReadError, match="bad magic") as err:
        list(iter_messages(tmp_path / "fake.mcap"))
    assert err.value.messages_read == 0


def test_without_metadata_and_bare_file(tmp_path, bag) -> None:
    """A recorder that died leaves no metadata.yaml; a bare storage file is a bag too."""
    path, storage, written = bag
    expected = sorted(written, key=lambda w: w[2])
    no_meta = _copy(path, tmp_path / "no_meta")
    (no_meta / "metadata.yaml").unlink()
    for target in (no_meta, _storage_file(no_meta)):
        got = [(m.topic, m.msgtype, m.log_time_ns, m.rawdata) for m in iter_messages(target)]
        assert got == expected
        info = open_info(target)
        assert info.message_count == len(expected) and info.error is None
        assert info.storage == storage
