"""Reading rosbag2 bags (mcap or sqlite3) in log-time order, with damaged-bag recovery.

Why more than ``rosbags.rosbag2.Reader``: a bag whose recorder was killed (no mcap footer, no
``metadata.yaml``), was cut short by a full disk or copied incompletely, is common, and rosbags
refuses to open it at all (an mcap is opened from its footer index; a sqlite3 bag runs ``COUNT``
queries over the whole table first). An evaluation should keep everything up to the damage and
say where the damage is. So:

* intact bags are read by rosbags (indexed, log-time order);
* when rosbags cannot open the storage, each file is *scanned* from its start: mcap record by
  record (schemas, channels and chunks in file order, as a streaming reader does), sqlite3 row by
  row in insertion order. Within a bounded window the messages are put back into log-time
  order (recorders write in receive order, so storage order is log-time order but for small
  interleavings);
* where reading stops on damage, :class:`BagReadError` is raised *after* every message before it
  has been yielded, naming the position (message index, bag time, byte offset or row).

Accepted paths: a rosbag2 directory (``metadata.yaml`` plus ``.mcap``/``.db3`` files), such a
directory without ``metadata.yaml`` (a recorder that died; its storage files are scanned), or a
bare ``.mcap``/``.db3`` file. Only CDR serialization is supported (as rosbags).

ROS-free: rawdata stays CDR bytes; deserializing is the caller's choice.
"""
from __future__ import annotations

import heapq
import io
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BagInfo", "BagMessage", "BagReadError", "iter_messages", "open_info"]

_MCAP_MAGIC = b"\x89MCAP0\r\n"
_STORAGE_BY_SUFFIX = {".mcap": "mcap", ".db3": "sqlite3"}
#: Recovery reorders messages within this many buffered bytes / messages (a few mcap chunks).
_REORDER_BYTES = 16 * 2**20
_REORDER_COUNT = 8192


@dataclass(frozen=True)
class BagMessage:
    """One serialized message as stored in the bag."""

    topic: str
    msgtype: str  # "sensor_msgs/msg/Image"
    log_time_ns: int  # rosbag2 receive/log time
    rawdata: bytes  # CDR, exactly as on the wire
    index: int  # 0-based position among the messages this iteration yielded


@dataclass(frozen=True)
class BagInfo:
    """Summary of a bag: storage, time span, topics with their types and message counts.

    ``error`` is set when the bag is damaged but its beginning is readable: the summary then
    covers what was readable, and ``error`` says where reading stopped. ``recovered`` is True
    when the storage index could not be used and the files were scanned instead.
    """

    path: Path
    storage: str  # "mcap" | "sqlite3"
    start_ns: int
    end_ns: int
    message_count: int
    topics: dict[str, tuple[str, int]]  # topic -> (msgtype, count)
    error: str | None = None
    recovered: bool = False
    #: msgtype -> the ``.msg`` definition the bag carries (with its dependencies), where known
    definitions: dict[str, str] = field(default_factory=dict)
    #: topic -> (first, last) log time, where known without extra reading (a scanned bag);
    #: :func:`omnibind_ros.bag.summary.topic_spans` gives them for any bag
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        """Seconds from the first to the last message (0 for an empty bag)."""
        return max(self.end_ns - self.start_ns, 0) * 1e-9


class BagReadError(RuntimeError):
    """A bag is truncated or corrupt.

    Attributes
    ----------
    position : where reading stopped, e.g. ``"message 1234 at t=61.20 s (chunk at byte
        8123456 of x.mcap)"``: the index of the first message that could not be read, the bag
        time of the last one that could (seconds since the first message) and the storage
        position.
    messages_read : messages read (and yielded) before the damage.
    last_log_time_ns : log time of the last message read, None if none was.
    """

    def __init__(self, bag: Path | str, cause: str, *, position: str = "",
                 messages_read: int = 0, last_log_time_ns: int | None = None) -> None:
        self.bag = str(bag)
        self.cause = cause
        self.position = position or "start of the bag"
        self.messages_read = messages_read
        self.last_log_time_ns = last_log_time_ns
        super().__init__(f"bag {self.bag} is damaged at {self.position}: {cause} "
                         f"({messages_read} messages before it were read)")


# ---------------------------------------------------------------------------------------------
# Locating the storage


@dataclass
class _Layout:
    """Where a bag's data is: the path rosbags opens, its storage files and metadata."""

    path: Path  # as given
    target: Path  # what rosbags.Reader opens (directory with metadata.yaml, or a file)
    files: list[Path]
    storage: str
    compression: str = ""  # "", "message" or "file" (zstd)
    metadata_error: str = ""  # why metadata.yaml was not usable, if it was not
    notes: list[str] = field(default_factory=list)


def _storage_of(files: list[Path]) -> str:
    kinds = {_STORAGE_BY_SUFFIX.get(f.suffix, "") for f in files}
    if len(kinds) != 1 or "" in kinds:
        raise BagReadError(files[0].parent, "cannot tell the storage format of "
                           + ", ".join(f.name for f in files))
    return kinds.pop()


def _layout(path: Path | str) -> _Layout:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"bag {path} does not exist (expected a rosbag2 directory or a "
                                ".mcap/.db3 file)")
    if path.is_file():
        if path.suffix not in _STORAGE_BY_SUFFIX:
            raise BagReadError(path, f"not a rosbag2 storage file (suffix {path.suffix!r}; "
                               "expected .mcap or .db3, or the bag directory)")
        return _Layout(path, path, [path], _STORAGE_BY_SUFFIX[path.suffix])
    meta = path / "metadata.yaml"
    storage_files = sorted(p for p in path.iterdir()
                           if p.suffix in _STORAGE_BY_SUFFIX and p.is_file())
    if not meta.is_file():
        if not storage_files:
            raise BagReadError(path, "neither metadata.yaml nor .mcap/.db3 files in it: not a "
                               "rosbag2 bag")
        layout = _Layout(path, storage_files[0] if len(storage_files) == 1 else path,
                         storage_files, _storage_of(storage_files))
        layout.metadata_error = "metadata.yaml is missing (the recorder did not finish)"
        return layout
    try:
        import yaml

        info = yaml.safe_load(meta.read_text())["rosbag2_bagfile_information"]
        files = [path / Path(rel).name for rel in info["relative_file_paths"]]
        storage = str(info["storage_identifier"])
        compression = str(info.get("compression_mode") or "").lower()
    except Exception as exc:  # noqa: BLE001 - any unreadable metadata: fall back to the files
        if not storage_files:
            raise BagReadError(path, f"metadata.yaml is unreadable ({exc}) and there are no "
                               ".mcap/.db3 files") from None
        layout = _Layout(path, path, storage_files, _storage_of(storage_files))
        layout.metadata_error = f"metadata.yaml is unreadable ({type(exc).__name__}: {exc})"
        return layout
    layout = _Layout(path, path, files, storage, "" if compression == "none" else compression)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        layout.notes.append(f"storage files listed in metadata.yaml are missing: {missing}")
        layout.files = [f for f in files if f.is_file()]
    return layout


# ---------------------------------------------------------------------------------------------
# Sources: (topic, msgtype, log_time, rawdata) plus a description of the storage position


class _Damage(Exception):
    """Raised by a source where its storage is damaged: ``where`` is the storage position."""

    def __init__(self, cause: str, where: str) -> None:
        super().__init__(cause)
        self.cause, self.where = cause, where


_Raw = tuple[str, str, int, bytes]


def _rosbags_source(reader: Any, topics: set[str] | None) -> Iterator[_Raw]:
    conns = [c for c in reader.connections if topics is None or c.topic in topics]
    if not conns:
        return
    it = reader.messages(connections=conns)
    last: int | None = None
    while True:
        try:
            conn, t, data = next(it)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - any failure inside the storage is damage
            raise _Damage(f"{type(exc).__name__}: {exc}", _indexed_where(reader, last)) from exc
        last = t
        yield conn.topic, conn.msgtype, t, bytes(data)


def _indexed_where(reader: Any, last_ns: int | None) -> str:
    """Best guess of the damaged mcap chunk: the next one in time after the last good message
    (the indexed reader opens chunks in order of their first message)."""
    storage = reader.storage
    for sub in getattr(storage, "storages", [storage]):
        chunks = sorted(getattr(sub, "chunks", []), key=lambda c: c.message_start_time)
        later = [c for c in chunks if last_ns is None or c.message_start_time > last_ns]
        if later:
            return (f"chunk at byte {later[0].chunk_start_offset} of "
                    f"{Path(str(sub.path)).name}, indexed read")
    return "indexed read"


class _McapScanner:
    """Reads an mcap file record by record from its start, as a streaming reader does.

    Chunks are decompressed one at a time; their messages come sorted by log time (chunks hold
    overlapping spans in general). Stops at the DataEnd record or a clean end of file.
    """

    def __init__(self, path: Path, topics: set[str] | None) -> None:
        self.path = path
        self.topics = topics
        self.schemas: dict[int, str] = {}
        self.channels: dict[int, tuple[str, str]] = {}  # id -> (topic, msgtype)

    def _where(self, offset: int, what: str) -> str:
        return f"{what} at byte {offset} of {self.path.name}"

    def messages(self) -> Iterator[_Raw]:
        with self.path.open("rb") as f:
            size = self.path.stat().st_size
            if f.read(8) != _MCAP_MAGIC:
                raise _Damage("not an mcap file (bad magic)", self._where(0, "header"))
            while True:
                offset = f.tell()
                head = f.read(9)
                if not head:
                    return  # no footer at all: a recorder killed between records
                if len(head) < 9:
                    raise _Damage(f"file ends inside a record header ({size} bytes)",
                                  self._where(offset, "record"))
                op, length = head[0], struct.unpack_from("<Q", head, 1)[0]
                if op in (0x02, 0x0F):  # footer / data end: all messages have been seen
                    return
                if offset + 9 + length > size:
                    what = "chunk" if op == 0x06 else f"record 0x{op:02x}"
                    raise _Damage(f"truncated: the {what} needs {length} bytes, the file ends "
                                  f"after {size - offset - 9}", self._where(offset, what))
                if op == 0x06:
                    body = f.read(length)
                    yield from self._chunk(body, offset)
                elif op in (0x03, 0x04, 0x05):
                    yield from self._records(op, f.read(length), offset, chunk_offset=None)
                else:
                    f.seek(length, io.SEEK_CUR)

    def _chunk(self, body: bytes, offset: int) -> Iterator[_Raw]:
        from rosbags.rosbag2.storage_mcap import decompress

        try:
            _, _, usize, crc = struct.unpack_from("<QQQI", body, 0)
            (clen,) = struct.unpack_from("<I", body, 28)
            compression = body[32:32 + clen].decode()
            (dlen,) = struct.unpack_from("<Q", body, 32 + clen)
            start = 40 + clen
            if start + dlen > len(body):
                raise ValueError("chunk data runs past its record")
            data = decompress(body[start:start + dlen], compression, usize, crc)
        except Exception as exc:  # noqa: BLE001 - bad header, codec or checksum
            raise _Damage(f"unreadable chunk ({type(exc).__name__}: {exc})",
                          self._where(offset, "chunk")) from None
        msgs: list[tuple[int, int, _Raw]] = []
        pos = 0
        try:
            while pos < len(data):
                op, length = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
                rec = data[pos + 9:pos + 9 + length]
                if len(rec) != length:
                    raise ValueError(f"record 0x{op:02x} runs past the chunk end")
                for raw in self._records(op, rec, offset, chunk_offset=pos):
                    msgs.append((raw[2], len(msgs), raw))
                pos += 9 + length
        except _Damage:
            raise
        except Exception as exc:  # noqa: BLE001 - garbage inside a chunk that decompressed
            raise _Damage(f"corrupt record inside chunk ({type(exc).__name__}: {exc})",
                          self._where(offset, f"chunk (record at +{pos})")) from None
        msgs.sort()
        for _, _, raw in msgs:
            yield raw

    def _records(self, op: int, rec: bytes, offset: int, chunk_offset: int | None
                 ) -> Iterator[_Raw]:
        if op == 0x03:  # schema: id u16, name str, encoding str, data bytes
            (sid,) = struct.unpack_from("<H", rec, 0)
            (n,) = struct.unpack_from("<I", rec, 2)
            self.schemas[sid] = rec[6:6 + n].decode()
        elif op == 0x04:  # channel: id u16, schema_id u16, topic str, encoding str, metadata
            cid, sid = struct.unpack_from("<HH", rec, 0)
            (n,) = struct.unpack_from("<I", rec, 4)
            topic = rec[8:8 + n].decode()
            (m,) = struct.unpack_from("<I", rec, 8 + n)
            encoding = rec[12 + n:12 + n + m].decode()
            if encoding != "cdr":
                where = self._where(offset, "channel")
                raise _Damage(f"channel {topic} uses {encoding!r}; only cdr is supported", where)
            self.channels[cid] = (topic, self.schemas.get(sid, ""))
        elif op == 0x05:  # message: channel u16, sequence u32, log_time u64, publish u64, data
            cid, _, log_time, _ = struct.unpack_from("<HIQQ", rec, 0)
            if cid not in self.channels:
                what = "message" if chunk_offset is None else f"chunk (record at +{chunk_offset})"
                raise _Damage(f"message on unknown channel {cid}", self._where(offset, what))
            topic, msgtype = self.channels[cid]
            if self.topics is None or topic in self.topics:
                yield topic, msgtype, log_time, bytes(rec[22:])


_PAD_VFS: Any = None


def _padding_vfs() -> str:
    """An apsw VFS that reads a truncated sqlite file as if zero-padded to its header's size.

    Why: sqlite refuses a database shorter than its header says ("malformed") before reading a
    single row; padded, the missing pages read as empty and the error comes at the first row
    that needs them, after every row before it was read.
    """
    global _PAD_VFS
    if _PAD_VFS is None:
        import apsw

        class PaddedFile(apsw.VFSFile):  # type: ignore[misc]
            def __init__(self, name: Any) -> None:
                path = name.filename() if isinstance(name, apsw.URIFilename) else str(name)
                self.file = open(path, "rb")  # noqa: SIM115 - closed by xClose
                self.real = Path(path).stat().st_size
                head = self.file.read(100)
                page = struct.unpack(">H", head[16:18])[0] if len(head) == 100 else 0
                pages = struct.unpack(">I", head[28:32])[0] if len(head) == 100 else 0
                self.size = max(self.real, (65536 if page == 1 else page) * pages)

            def xRead(self, amount: int, offset: int) -> bytes:  # noqa: N802 - apsw API
                self.file.seek(offset)
                data = self.file.read(amount)
                return data + bytes(amount - len(data))

            def xFileSize(self) -> int:  # noqa: N802
                return self.size

            def xClose(self) -> None:  # noqa: N802
                self.file.close()

            def xLock(self, level: int) -> None:  # noqa: N802
                pass

            def xUnlock(self, level: int) -> None:  # noqa: N802
                pass

            def xCheckReservedLock(self) -> bool:  # noqa: N802
                return False

            def xSectorSize(self) -> int:  # noqa: N802
                return 4096

            def xDeviceCharacteristics(self) -> int:  # noqa: N802
                return 0

            def xFileControl(self, op: int, ptr: int) -> bool:  # noqa: N802
                return False

            def xSync(self, flags: int) -> None:  # noqa: N802
                pass

        class PaddedVFS(apsw.VFS):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__("omnibind_padded", "")

            def xOpen(self, name: Any, flags: list[int]) -> Any:  # noqa: N802
                return PaddedFile(name)

        _PAD_VFS = PaddedVFS()
    return "omnibind_padded"


def _sqlite_source(path: Path, topics: set[str] | None) -> Iterator[_Raw]:
    """Rows in insertion order (rowid): unlike the timestamp index, it needs no index pages,
    which sqlite allocates interleaved with the data, so it reads up to the first bad page."""
    import apsw

    try:
        con = apsw.Connection(f"file:{path}?immutable=1",
                              flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI,
                              vfs=_padding_vfs())
    except (apsw.Error, OSError) as exc:
        raise _Damage(f"cannot open database ({exc})", path.name) from None
    try:
        try:
            conns = {int(i): (str(name), str(mtype)) for i, name, mtype in
                     con.execute("SELECT id, name, type FROM topics")}
        except apsw.Error as exc:
            raise _Damage(f"topics table unreadable ({exc})", path.name) from None
        wanted = [i for i, (name, _) in conns.items() if topics is None or name in topics]
        if not wanted:
            return
        query = ("SELECT id, topic_id, timestamp, data FROM messages WHERE topic_id IN ("
                 + ",".join("?" * len(wanted)) + ") ORDER BY id")
        last_row: int | None = None
        try:
            for row, topic_id, t, data in con.execute(query, wanted):
                last_row = row
                yield (*conns[topic_id], int(t), bytes(data))
        except apsw.Error as exc:
            where = (f"row after id {last_row} of {path.name}" if last_row is not None
                     else f"first row of {path.name}")
            raise _Damage(f"database is corrupt ({exc})", where) from None
    finally:
        con.close()


def _reordered(raws: Iterable[_Raw]) -> Iterator[_Raw]:
    """Log-time order within a bounded window (storage order beyond it)."""
    heap: list[tuple[int, int, _Raw]] = []
    held = 0
    for seq, raw in enumerate(raws):
        heapq.heappush(heap, (raw[2], seq, raw))
        held += len(raw[3])
        while heap and (held > _REORDER_BYTES or len(heap) > _REORDER_COUNT):
            out = heapq.heappop(heap)[2]
            held -= len(out[3])
            yield out
    while heap:
        yield heapq.heappop(heap)[2]


class _Flushing:
    """Wraps :func:`_reordered` so that on damage the buffered messages still come out first."""

    def __init__(self, raws: Iterator[_Raw]) -> None:
        self.raws = raws
        self.damage: _Damage | None = None

    def _guarded(self) -> Iterator[_Raw]:
        try:
            yield from self.raws
        except _Damage as exc:
            self.damage = exc  # end the stream here; _reordered flushes its buffer

    def __iter__(self) -> Iterator[_Raw]:
        yield from _reordered(self._guarded())
        if self.damage is not None:
            raise self.damage


def _recovery_source(layout: _Layout, topics: set[str] | None) -> Iterator[_Raw]:
    if layout.compression == "file":
        raise _Damage("the bag is file-compressed and its storage cannot be opened; "
                      "decompress it (zstd -d) to recover what is readable", layout.path.name)
    for path in layout.files:
        if layout.storage == "mcap":
            raws: Iterator[_Raw] = _McapScanner(path, topics).messages()
        else:
            raws = _sqlite_source(path, topics)
        if layout.compression == "message":
            raws = _decompressed(raws, path)
        yield from _Flushing(raws)


def _decompressed(raws: Iterator[_Raw], path: Path) -> Iterator[_Raw]:
    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        from backports import zstd  # type: ignore[import-not-found,no-redef]
    for topic, msgtype, t, data in raws:
        try:
            yield topic, msgtype, t, zstd.decompress(data)
        except Exception as exc:  # noqa: BLE001
            raise _Damage(f"message does not decompress ({exc})", path.name) from None


# ---------------------------------------------------------------------------------------------
# Public API


class _Session:
    """One pass over a bag: picks rosbags or recovery, turns damage into BagReadError."""

    def __init__(self, path: Path | str, topics: Iterable[str] | None) -> None:
        self.layout = _layout(path)
        self.topics = None if topics is None else set(topics)
        self.recovered = False
        self.open_error = ""
        self.reader: Any = None
        self.first_ns: int | None = None

    def __enter__(self) -> _Session:
        from rosbags.rosbag2 import Reader

        layout = self.layout
        if not layout.metadata_error or len(layout.files) == 1:
            try:
                self.reader = Reader(layout.target)
                self.reader.open()
            except Exception as exc:  # noqa: BLE001 - ReaderError, sqlite/apsw errors, OSError
                self.reader = None
                self.open_error = f"{type(exc).__name__}: {exc}"
        self.recovered = self.reader is None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.reader is not None:
            self.reader.close()

    def raw(self) -> Iterator[_Raw]:
        if self.reader is not None:
            return _rosbags_source(self.reader, self.topics)
        return _recovery_source(self.layout, self.topics)

    def messages(self) -> Iterator[BagMessage]:
        index, last = 0, None
        try:
            for topic, msgtype, t, data in self.raw():
                if self.first_ns is None:
                    self.first_ns = t
                yield BagMessage(topic, msgtype, t, data, index)
                index, last = index + 1, t
        except _Damage as exc:
            rel = 0.0 if last is None or self.first_ns is None else (last - self.first_ns) * 1e-9
            cause = exc.cause
            if self.open_error and self.recovered:
                cause += f" [the storage index was unusable: {self.open_error}]"
            raise BagReadError(self.layout.path, cause,
                               position=f"message {index} at t={rel:.2f} s ({exc.where})",
                               messages_read=index, last_log_time_ns=last) from None


def iter_messages(path: Path | str, topics: Iterable[str] | None = None
                  ) -> Iterator[BagMessage]:
    """Every message of the bag (or of ``topics``) in log-time order.

    Raises
    ------
    FileNotFoundError : ``path`` does not exist.
    BagReadError : the bag is damaged; raised after all messages before the damage were
        yielded (``messages_read`` of them).
    """
    with _Session(path, topics) as session:
        yield from session.messages()


def open_info(path: Path | str) -> BagInfo:
    """Storage, time span and topics of a bag.

    An intact bag is summarised from its index (fast). A bag whose index is unusable is scanned:
    the summary covers the readable part and ``error`` names where it stops.

    Raises
    ------
    FileNotFoundError : ``path`` does not exist.
    BagReadError : nothing of the bag is readable (not a bag, damaged header).
    """
    with _Session(path, None) as session:
        layout = session.layout
        if session.reader is not None:
            reader = session.reader
            topics = {name: (info.msgtype or "?", int(info.msgcount))
                      for name, info in sorted(reader.topics.items())}
            count = int(reader.message_count)
            start = int(reader.start_time) if count else 0
            end = int(reader.end_time) - 1 if count else 0
            return BagInfo(layout.path, layout.storage, start, end, count, topics,
                           definitions=_definitions(reader))
        counts: dict[str, list[Any]] = {}
        spans: dict[str, tuple[int, int]] = {}
        start = end = None
        error = None
        n = 0
        try:
            for msg in session.messages():
                entry = counts.setdefault(msg.topic, [msg.msgtype, 0])
                entry[1] += 1
                first, last = spans.get(msg.topic, (msg.log_time_ns, msg.log_time_ns))
                spans[msg.topic] = (min(first, msg.log_time_ns), max(last, msg.log_time_ns))
                start = msg.log_time_ns if start is None else min(start, msg.log_time_ns)
                end = msg.log_time_ns if end is None else max(end, msg.log_time_ns)
                n += 1
        except BagReadError as exc:
            if exc.messages_read == 0:
                raise
            error = f"{exc.position}: {exc.cause}"
        return BagInfo(layout.path, layout.storage, start or 0, end or 0, n,
                       {k: (v[0], v[1]) for k, v in sorted(counts.items())}, error,
                       recovered=True, spans=dict(sorted(spans.items())))


def _definitions(reader: Any) -> dict[str, str]:
    """msgtype -> ``.msg`` text of every connection that carries one (mcap schemas, rosbag2's
    message_definitions table); IDL definitions are left out."""
    out: dict[str, str] = {}
    for conn in reader.connections:
        msgdef = getattr(conn, "msgdef", None)
        fmt = str(getattr(getattr(msgdef, "format", None), "name", "")).upper()
        data = getattr(msgdef, "data", "")
        if fmt == "MSG" and data and conn.msgtype not in out:
            out[conn.msgtype] = str(data)
    return out
