"""Ground truth from GroundTruth messages (plain objects and a real bag) and from CSV files."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from omnibind_ros.bag.truth import GroundTruth, TruthError, TruthInterval

S = 1_000_000_000
T0 = 1_700_000_000 * S


def _time(ns: int) -> SimpleNamespace:
    return SimpleNamespace(sec=ns // S, nanosec=ns % S)


def _gt(stamp_ns: int, label: str, episode: int, episode_start_ns: int) -> SimpleNamespace:
    return SimpleNamespace(header=SimpleNamespace(stamp=_time(stamp_ns)), label=label,
                           episode=episode, episode_start=_time(episode_start_ns))


def _sim_stream(period_s: float = 6.0, rate_hz: float = 2.0, duration_s: float = 15.0,
                labels=("wooden duck", "metal mug", "glass cup")) -> list:
    """What the simulator publishes: each object at its start, then every 1 / rate."""
    msgs = []
    t = 0.0
    while t < duration_s:
        episode = int(t // period_s)
        stamp = T0 + round(t * S)
        msgs.append((stamp + 1000, _gt(stamp, labels[episode], episode,
                                       T0 + round(episode * period_s * S))))
        t = round(t + 1.0 / rate_hz, 9)
    return msgs


def test_from_messages_uses_episode_starts() -> None:
    end = T0 + 15 * S
    truth = GroundTruth.from_messages(_sim_stream(), end_ns=end)
    assert truth.intervals == [
        TruthInterval(T0, T0 + 6 * S, "wooden duck", 0),
        TruthInterval(T0 + 6 * S, T0 + 12 * S, "metal mug", 1),
        TruthInterval(T0 + 12 * S, end, "glass cup", 2)]
    assert truth.label_at(T0 + 6 * S - 1) == "wooden duck"
    assert truth.label_at(T0 + 6 * S) == "metal mug"
    assert truth.label_at(T0 - 1) is None and truth.label_at(end) is None
    assert truth.change_before(T0 + 7 * S) == T0 + 6 * S
    assert truth.change_before(end + 5) is None
    assert truth.labels() == ["wooden duck", "metal mug", "glass cup"]


def test_from_messages_joined_late_and_without_episode_start() -> None:
    """A recorder that starts mid-episode still gets the episode's true start; a publisher
    without episode_start (zero) starts intervals at the message stamps; "" = nothing in view."""
    msgs = _sim_stream()[3:]  # first message at 1.5 s, episode 0 began at 0
    truth = GroundTruth.from_messages(msgs, end_ns=T0 + 15 * S)
    assert truth.intervals[0] == TruthInterval(T0, T0 + 6 * S, "wooden duck", 0)

    plain = [(T0 + k * S, _gt(T0 + k * S, label, 0, 0))
             for k, label in enumerate(["a", "a", "b", "", "c"])]
    truth = GroundTruth.from_messages(plain, end_ns=T0 + 10 * S)
    assert [(i.start_ns - T0, i.end_ns - T0, i.label) for i in truth] == [
        (0, 2 * S, "a"), (2 * S, 3 * S, "b"), (4 * S, 10 * S, "c")]
    assert truth.label_at(T0 + 3 * S + 5) is None


def test_overlapping_intervals_rejected() -> None:
    with pytest.raises(TruthError, match="overlap"):
        GroundTruth([TruthInterval(0, 10, "a"), TruthInterval(5, 15, "b")])


def test_from_bag(tmp_path: Path) -> None:
    """GroundTruth messages written into a bag come back as the same intervals."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from omnibind_ros.bag.types import typestore

    ts = typestore()
    GT = ts.types["omnibind_ros/msg/GroundTruth"]
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    with Writer(tmp_path / "bag", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection("/omnibind/ground_truth", GT.__msgtype__, typestore=ts)
        for log_ns, m in _sim_stream():
            msg = GT(header=Header(stamp=Time(sec=m.header.stamp.sec,
                                              nanosec=m.header.stamp.nanosec), frame_id=""),
                     label=m.label, class_index=0, episode=m.episode,
                     episode_start=Time(sec=m.episode_start.sec,
                                        nanosec=m.episode_start.nanosec),
                     shape="", material="")
            writer.write(conn, log_ns, ts.serialize_cdr(msg, GT.__msgtype__))
    truth = GroundTruth.from_bag(tmp_path / "bag")
    expected = GroundTruth.from_messages(_sim_stream(), end_ns=_sim_stream()[-1][0])
    assert truth.intervals == expected.intervals
    assert len(truth) == 3 and truth.intervals[-1].end_ns == T0 + 14_500_001_000


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "truth.csv"
    path.write_text(text)
    return path


def test_csv_seconds_relative_to_bag_start(tmp_path: Path) -> None:
    path = _csv(tmp_path, "# labelled by hand\nstart_s,end_s,label\n"
                          "0.5,6,wooden duck\n\n6.0,12.25,\"metal mug, dented\"\n"
                          "20,21.5,glass cup\n")
    truth = GroundTruth.from_csv(path, bag_start_ns=T0)
    assert truth.intervals == [
        TruthInterval(T0 + S // 2, T0 + 6 * S, "wooden duck"),
        TruthInterval(T0 + 6 * S, T0 + 12_250_000_000, "metal mug, dented"),
        TruthInterval(T0 + 20 * S, T0 + 21_500_000_000, "glass cup")]
    assert truth.label_at(T0 + 15 * S) is None  # a gap: not labelled
    assert truth.change_before(T0 + 7 * S) == T0 + 6 * S


def test_csv_absolute_nanoseconds_any_order_with_episodes(tmp_path: Path) -> None:
    path = _csv(tmp_path, f"\ufefflabel,start_ns,end_ns,episode\n"
                          f"b,{T0 + 5 * S},{T0 + 9 * S},1\na,{T0},{T0 + 5 * S},0\n")
    truth = GroundTruth.from_csv(path, bag_start_ns=123)  # ignored for absolute times
    assert truth.intervals == [TruthInterval(T0, T0 + 5 * S, "a", 0),
                               TruthInterval(T0 + 5 * S, T0 + 9 * S, "b", 1)]


@pytest.mark.parametrize(("text", "match"), [
    ("start_s,end_s,label\n0,1,a\n1,x,b\n", r"truth.csv:3: end_s 'x' is not a number"),
    ("start_s,end_s,label\n0,1,a\n\n# c\n3,2,b\n", r"truth.csv:5: end_s must be after start_s"),
    ("start_s,end_s,label\n0,5,a\n9,12,c\n4,6,b\n",
     r"truth.csv:4: interval overlaps the one on line 2"),
    ("start_s,end_s,label\n0,5,a,extra\n", r"truth.csv:2: 4 columns, the header has 3"),
    ("begin,end,label\n0,5,a\n", r"truth.csv:1: header .* must name start_s,end_s,label"),
    ("# nothing\n\n", r"no header row"),
    ("start_s,end_s,label\n0,5,  \n", r"truth.csv:2: empty label"),
    ("start_ns,end_ns,label\n0,5.5,a\n", r"truth.csv:2: end_ns must be a finite integer"),
    ("start_s,end_s,label,episode\n0,5,a,first\n", r"truth.csv:2: episode 'first'"),
])
def test_bad_csv_names_the_line(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(TruthError, match=match):
        GroundTruth.from_csv(_csv(tmp_path, text), bag_start_ns=T0)


def test_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        GroundTruth.from_csv(tmp_path / "none.csv", bag_start_ns=0)
