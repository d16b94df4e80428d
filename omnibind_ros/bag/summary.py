"""What ``omnibind-bag info`` prints: a bag's span, storage and topics, each topic's rate over
the span it was active.

Why per-topic spans: a topic that was recorded for a part of the bag only (a driver started
late, a sensor unplugged half-way, a topic published on request) has a rate that is meaningless
over the whole bag: 2 messages in an 8 s bag are "0.25 Hz" although they were 4 s apart, and a
10 Hz camera that ran for the last 2 s of a 60 s bag looks like a broken 0.33 Hz one. So each
topic gets its first and last log time, and its rate is ``(n - 1) / (last - first)`` (the mean
interval between its messages, as ``ros2 topic hz`` reports), beside the whole-bag average
``n / duration`` the summary printed before.

The spans come from the storage's indexes, without reading the messages:

* mcap: the chunk indexes and, per chunk and channel, the MessageIndex record (log time and
  offset of each message; 16 bytes per message) that rosbag2 writes after every chunk;
* sqlite3: ``MIN``/``MAX`` of the timestamps per topic (no blob is read);
* anything else (an unindexed mcap, a bag scanned because it is damaged): the messages'
  log times as they are read (a damaged bag's scan fills them in :func:`open_info` already).

ROS-free.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from omnibind_ros.bag.reader import BagInfo, iter_messages

__all__ = ["format_info", "topic_rates", "topic_spans"]

Span = tuple[int, int]


def _mcap_spans(path: Path) -> dict[str, Span] | None:
    """Per-topic (first, last) log times of an indexed mcap file, from its MessageIndex records;
    None when the file has no chunk index (then the messages must be read)."""
    from rosbags.rosbag2.storage_mcap import McapReader

    reader = McapReader(path)  # type: ignore[arg-type]  (a Path is what it opens)
    reader.open()
    try:
        chunks = list(reader.chunks)
        channels = {cid: ch.topic for cid, ch in reader.channels.items()}
        if not chunks:
            return None if reader.statistics and reader.statistics.message_count else {}
        spans: dict[str, Span] = {}
        with path.open("rb") as f:
            for chunk in chunks:
                for cid, offset in chunk.message_index_offsets.items():
                    times = list(_index_times(f, offset))
                    if not times:
                        continue
                    topic = channels.get(cid, f"<channel {cid}>")
                    first, last = min(times), max(times)
                    if topic in spans:
                        first, last = min(first, spans[topic][0]), max(last, spans[topic][1])
                    spans[topic] = (first, last)
        return spans
    finally:
        reader.close()


def _index_times(f: object, offset: int) -> Iterator[int]:
    """Log times of one MessageIndex record (op 0x07: channel u16, then a u32-sized array of
    (log_time u64, offset u64))."""
    f.seek(offset)  # type: ignore[attr-defined]
    head = f.read(9 + 2 + 4)  # type: ignore[attr-defined]
    if len(head) < 15 or head[0] != 0x07:
        raise ValueError(f"no MessageIndex record at byte {offset}")
    (size,) = struct.unpack_from("<I", head, 11)
    body = f.read(size)  # type: ignore[attr-defined]
    if len(body) != size:
        raise ValueError(f"MessageIndex record at byte {offset} is truncated")
    for (log_time, _) in struct.iter_unpack("<QQ", body):
        yield log_time


def _sqlite_spans(path: Path) -> dict[str, Span]:
    """Per-topic (first, last) timestamps of a rosbag2 sqlite3 file."""
    import sqlite3

    con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        rows = con.execute("SELECT topics.name, MIN(messages.timestamp), "
                           "MAX(messages.timestamp) FROM messages JOIN topics "
                           "ON messages.topic_id = topics.id GROUP BY topics.name").fetchall()
    finally:
        con.close()
    return {str(name): (int(first), int(last)) for name, first, last in rows}


def _scanned_spans(path: Path) -> dict[str, Span]:
    spans: dict[str, Span] = {}
    for msg in iter_messages(path):
        first, last = spans.get(msg.topic, (msg.log_time_ns, msg.log_time_ns))
        spans[msg.topic] = (min(first, msg.log_time_ns), max(last, msg.log_time_ns))
    return spans


def _storage_files(info: BagInfo) -> list[Path]:
    path = Path(info.path).expanduser()
    if path.is_file():
        return [path]
    suffix = ".mcap" if info.storage == "mcap" else ".db3"
    return sorted(p for p in path.iterdir() if p.suffix == suffix and p.is_file())


def topic_spans(info: BagInfo) -> dict[str, Span]:
    """Topic -> (first, last) log time in ns, for every topic with messages.

    A damaged bag's spans are those of its readable part (:func:`open_info` scanned it). An
    intact one's come from its indexes (see the module docstring), or from reading it where
    there are none.
    """
    if info.recovered or info.spans:
        return dict(info.spans)
    spans: dict[str, Span] = {}
    try:
        for path in _storage_files(info):
            part = _mcap_spans(path) if info.storage == "mcap" else _sqlite_spans(path)
            if part is None:
                raise ValueError(f"{path.name} has no chunk index")
            for topic, (first, last) in part.items():
                if topic in spans:
                    first, last = min(first, spans[topic][0]), max(last, spans[topic][1])
                spans[topic] = (first, last)
    except Exception:  # noqa: BLE001  (an index we cannot use: read the log times instead)
        return _scanned_spans(info.path)
    return spans


def topic_rates(info: BagInfo, spans: dict[str, Span] | None = None
                ) -> dict[str, tuple[float | None, float | None]]:
    """Topic -> (rate over its active span, rate over the whole bag) in Hz.

    The active rate is ``(n - 1) / (last - first)``: None for a topic with one message (or all
    of them at one time). The whole-bag rate is ``n / duration`` (None for a zero-length bag).
    """
    spans = topic_spans(info) if spans is None else spans
    out: dict[str, tuple[float | None, float | None]] = {}
    for topic, (_, count) in info.topics.items():
        first, last = spans.get(topic, (0, 0))
        active = (count - 1) / ((last - first) * 1e-9) if count > 1 and last > first else None
        whole = count / info.duration_s if info.duration_s > 0 else None
        out[topic] = (active, whole)
    return out


def _hz(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_info(info: BagInfo, spans: dict[str, Span] | None = None) -> str:
    """Human-readable summary (``omnibind-bag info``): span, storage, one line per topic with
    its count, its rate while active, the whole-bag average and when it was active (seconds
    since the bag's first message). ``spans``: :func:`topic_spans` (computed when None)."""
    spans = topic_spans(info) if spans is None else spans
    lines = [f"bag:       {info.path}",
             f"storage:   {info.storage}" + ("  (index unusable: scanned)" if info.recovered
                                             else ""),
             f"duration:  {info.duration_s:.3f} s  ({info.start_ns * 1e-9:.3f} .. "
             f"{info.end_ns * 1e-9:.3f} s since the epoch)",
             f"messages:  {info.message_count}"]
    if info.error:
        lines.append(f"DAMAGED:   {info.error}")
    if not info.topics:
        lines.append("topics:    none")
        return "\n".join(lines)
    rates = topic_rates(info, spans)
    width = max(len(t) for t in info.topics)
    tw = max(len(v[0]) for v in info.topics.values())
    lines.append(f"{'topics:':<{width + tw + 6}}{'msgs':>7}  {'Hz active':>9}  {'Hz bag':>8}  "
                 "active s")
    for topic, (msgtype, count) in info.topics.items():
        active, whole = rates[topic]
        first, last = spans.get(topic, (info.start_ns, info.start_ns))
        when = (f"{(first - info.start_ns) * 1e-9:.3f} .. {(last - info.start_ns) * 1e-9:.3f}"
                if topic in spans else "-")
        lines.append(f"  {topic:<{width}}  {msgtype:<{tw}}  {count:>7}  {_hz(active):>9}  "
                     f"{_hz(whole):>8}  {when}")
    lines.append("(Hz active: (messages - 1) / (last - first message of the topic); Hz bag: "
                 "messages / bag duration)")
    return "\n".join(lines)
