"""The store's parts through their own interfaces, in-process, on real files:
the log's record format and torn tails, the overlay's answers and its race
with compaction, the compactor's order and its crash safety, the files' schema
migration. The daemon-level promises are in tests/test_persistence.py and
tests/test_store_lifecycle.py.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import random
import shutil
import sqlite3
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import structlog.testing
from sessiond.cache import Entry, SessionCache
from sessiond.keyspace import Keyspace, row_of
from sessiond.store import SCHEMA_VERSION, Change, Row, SQLiteStore, StoreError, files, scan_hash
from sessiond.store import log as wal
from sessiond.store.api import HASH_SPACE, Kept
from sessiond.store.compactor import Compaction, Compactor
from sessiond.store.files import StoreFiles, connect
from sessiond.store.overlay import Layer, Overlay
from sessiond.store.watch import DirectoryWatch
from sessiond.values import Value


def row(value: bytes, *, kind: int = 0, **fields: float | str | None) -> Row:
    now = 1_700_000_000.0
    context = fields.get("context")
    ttl = fields.get("ttl")
    deadline = fields.get("deadline")
    assert context is None or isinstance(context, str)
    assert ttl is None or isinstance(ttl, float)
    assert deadline is None or isinstance(deadline, float)
    return Row(value, context, now, now + 1, now + 2, ttl, deadline, kind)


# ---------------------------------------------------------------- the log


def test_records_round_trip_every_field() -> None:
    batch: dict[bytes, Change] = {
        b"plain": row(b"v"),
        b"full": row(b"\x00\xff" * 50, kind=7, context="ctx-\u00e9", ttl=0.0, deadline=5.5),
        b"gone": None,
        b"": row(b""),
    }
    frame = wal.encode(batch, cleared=True)
    records = list(wal.decode(bytes(frame[8:])))  # past the frame's length and checksum
    assert records[0] is None  # the FLUSH comes first
    assert dict(r for r in records[1:] if r is not None) == batch


def test_the_frame_format_is_pinned() -> None:
    """A newer sessiond replays the segments an older one wrote: the bytes of
    a frame are pinned, not only their round trip (an encoder and a decoder
    changed together would pass that). Written by the encoder of 6f91240."""
    batch: dict[bytes, Kept] = {
        b"k": (b"v", "c", 1.0, 2.0, 3.0, 4.0, 5.0, 1),
        b"d": None,
        b"p": (b"", None, 1.5, 1.5, 1.5, None, None, 0),
    }
    assert bytes(wal.encode(batch, cleared=True)) == bytes.fromhex(
        "75000000b4ef49c4030101070100000001000000010000000000"
        "0000f03f00000000000000400000000000000840000000000000"
        "104000000000000014406b766302010000006401000001000000"
        "000000000000000000000000f83f000000000000f83f00000000"
        "0000f83f0000000000000000000000000000000070"
    )


def _segment(path: Path, frames: list[bytes]) -> None:
    path.write_bytes(wal.MAGIC + b"".join(frames))


def test_a_torn_or_corrupt_tail_is_dropped_and_said(tmp_path: Path) -> None:
    frames = [wal.encode({b"k%d" % i: row(b"v%d" % i)}, False) for i in range(3)]
    path = tmp_path / "seg"
    _segment(path, frames)
    got, end, why = wal.read_frames(path)
    assert len(got) == 3 and why is None and end == path.stat().st_size

    for cut in (1, 5, 8, len(frames[2]) - 1):  # inside the header, then the payload
        _segment(path, [*frames[:2], frames[2][:cut]])
        got, end, why = wal.read_frames(path)
        assert len(got) == 2, cut
        assert end == len(wal.MAGIC) + len(frames[0]) + len(frames[1])
        assert why is not None and why.startswith("torn")

    flipped = bytearray(frames[1])
    flipped[-1] ^= 0xFF
    _segment(path, [frames[0], bytes(flipped), frames[2]])
    got, _, why = wal.read_frames(path)
    assert len(got) == 1 and why == "checksum mismatch"  # nothing after it is trusted


def test_a_segment_allocated_ahead_ends_at_its_zeros(tmp_path: Path) -> None:
    """A segment is allocated ahead and written in place: its unwritten rest
    reads as zeros, which end its frames without a torn tail; something
    other than zeros there (a frame whose header never reached the disk) is
    a torn one; zeros from the start are a segment never written, and
    anything after such zeros is not a segment (refused, as before)."""
    frames = [wal.encode({b"k%d" % i: row(b"v%d" % i)}, False) for i in range(2)]
    payloads = [frame[8:] for frame in frames]  # after each one's length and checksum
    written = len(wal.MAGIC) + sum(map(len, frames))
    path = tmp_path / "seg"
    path.write_bytes(wal.MAGIC + b"".join(frames) + bytes(4096))
    assert wal.read_frames(path) == (payloads, written, None)
    path.write_bytes(wal.MAGIC + b"".join(frames) + bytes(4096) + payloads[0])
    assert wal.read_frames(path) == (payloads, written, "torn frame")
    path.write_bytes(bytes(4096))  # made, crashed before its magic was written
    assert wal.read_frames(path) == ([], 0, None)
    path.write_bytes(bytes(4096) + wal.MAGIC + frames[0])  # its start lost: not a segment
    with pytest.raises(wal.Corrupt):
        wal.read_frames(path)


def test_an_allocation_ending_within_a_frame_header_of_the_last_frame_is_no_torn_tail(
    tmp_path: Path,
) -> None:
    """Fewer zeros left than a frame header takes: the end, not a torn header."""
    frames = [wal.encode({b"k%d" % i: row(b"v%d" % i)}, False) for i in range(2)]
    written = len(wal.MAGIC) + sum(map(len, frames))
    path = tmp_path / "seg"
    for rest in range(1, 8):
        path.write_bytes(wal.MAGIC + b"".join(frames) + bytes(rest))
        assert wal.read_frames(path) == ([f[8:] for f in frames], written, None), rest
    path.write_bytes(wal.MAGIC + b"".join(frames) + b"\x01")
    assert wal.read_frames(path) == ([f[8:] for f in frames], written, "torn frame header")


def test_a_segment_is_written_in_place_over_its_allocation(tmp_path: Path) -> None:
    """Segments are made allocated, their magic in place (where the
    filesystem can; this one can): the first commits write over the zeros,
    each read back whole and in order, and a sessiond from before allocation
    reads one never written as a segment (each zero header an empty frame),
    not as a file of zeros it would refuse."""
    files = StoreFiles(tmp_path / "s.db")
    files.open()
    try:
        fd = files.new_segment(1, allocate=65536)
        path = files.segment_path(1)
        assert path.stat().st_size == 65536
        assert path.read_bytes() == wal.MAGIC + bytes(65536 - len(wal.MAGIC))
        assert wal.read_frames(path) == ([], len(wal.MAGIC), None)
        # What an older sessiond's reader relies on to read it (docs/persistence.md):
        # a zero frame header is a whole empty frame, its checksum right.
        assert struct.unpack("<II", bytes(8)) == (0, zlib.crc32(b""))
        segment = wal.Segment(1, fd, str(path))
        frames = [wal.encode({b"k%d" % i: row(b"v%d" % i)}, False) for i in range(3)]
        for frame in frames:
            segment.append(frame)
        segment.close()
        assert path.stat().st_size == 65536
        assert wal.read_frames(path) == ([f[8:] for f in frames], segment.size, None)
    finally:
        files.close()


def test_a_filesystem_that_cannot_allocate_leaves_the_segment_to_grow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where fallocate(2) fails (NFS, some FUSE filesystems; here faked) or
    libc has none, a segment is made empty, without its magic, and grows
    as commits are appended, read back whole (docs/persistence.md)."""
    frames = [wal.encode({b"k%d" % i: row(b"v%d" % i)}, False) for i in range(2)]
    for fallocate in (lambda fd, mode, offset, size: -1, None):
        monkeypatch.setattr(files, "_FALLOCATE", fallocate)
        store_files = StoreFiles(tmp_path / "s.db")
        store_files.open()
        try:
            number = len(list(tmp_path.glob("s.db-log.*"))) + 1
            segment = wal.Segment(number, store_files.new_segment(number, 65536), "")
            path = store_files.segment_path(number)
            assert path.stat().st_size == 0
            for frame in frames:
                segment.append(frame)
            segment.close()
            assert path.stat().st_size == segment.size
            assert wal.read_frames(path) == ([f[8:] for f in frames], segment.size, None)
        finally:
            store_files.close()


def test_a_failed_append_to_an_allocated_segment_is_cut_back_and_the_next_follows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit whose fdatasync fails is cut back (the allocation with it),
    and the next is written right after the last durable frame, not where
    the failed one left the file's offset; a segment that cannot be cut
    back is damaged and still reads back every acknowledged frame."""
    if str(wal.__file__).endswith(".so"):
        pytest.skip("faults injected by patching the log module: the pure build's run")
    store_files = StoreFiles(tmp_path / "s.db")
    store_files.open()
    try:
        frames = [wal.encode({b"k%d" % i: row(b"v%d" % i * 100)}, False) for i in range(3)]
        fd = store_files.new_segment(1, allocate=65536)
        path = store_files.segment_path(1)
        segment = wal.Segment(1, fd, str(path))
        segment.append(frames[0])
        durable = segment.size

        def failing(*args: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(wal, "fdatasync", failing)
        with pytest.raises(OSError):
            segment.append(frames[1])
        monkeypatch.undo()
        assert segment.size == durable and not segment.damaged
        assert path.stat().st_size == durable
        segment.append(frames[2])
        assert wal.read_frames(path) == ([frames[0][8:], frames[2][8:]], segment.size, None)
        monkeypatch.setattr(wal, "fdatasync", failing)
        monkeypatch.setattr(wal.os, "ftruncate", failing)
        acknowledged = segment.size
        with pytest.raises(OSError):
            segment.append(frames[1])
        monkeypatch.undo()
        assert segment.damaged
        segment.close()
        got, end, _ = wal.read_frames(path)
        assert got[:2] == [frames[0][8:], frames[2][8:]] and end >= acknowledged
    finally:
        store_files.close()


def test_a_file_that_is_no_segment_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "seg"
    path.write_bytes(b"not a log at all")
    with pytest.raises(wal.Corrupt):
        wal.read_frames(path)
    path.write_bytes(b"")  # created, crashed before its first commit
    assert wal.read_frames(path) == ([], 0, None)


# ------------------------------------------------------------ the overlay


def test_the_newest_stage_answers() -> None:
    o = Overlay()
    old, new = Layer(1), Layer(2)
    o.add_layer(old)
    o.add_layer(new)
    o.record(b"a", row(b"a1"))
    o.record(b"b", row(b"b1"))
    batch, cleared, seq = o.take()
    assert (len(batch), cleared, seq) == (2, False, 2)
    o.logged(old)
    o.record(b"a", row(b"a2"))
    o.take()
    o.logged(new)
    o.record(b"a", None)  # pending
    found, rest = o.lookup([b"a", b"b", b"c"])
    assert found == {b"a": None, b"b": row(b"b1")} and rest == [b"c"]
    merged, valid = o.queued()
    assert merged == {b"a": None, b"b": row(b"b1")} and valid
    o.drop(old)
    assert o.lookup([b"b"]) == ({}, [b"b"])  # compacted: the table answers now
    assert o.drops == 1


def test_a_flush_hides_everything_older() -> None:
    o = Overlay()
    first, second = Layer(1), Layer(2)
    o.add_layer(first)
    o.add_layer(second)
    o.record(b"a", row(b"a"))
    o.take()
    o.logged(first)
    o.clear()
    o.record(b"b", row(b"b"))
    o.take()
    found, rest = o.lookup([b"a", b"b", b"c"])
    assert found == {b"a": None, b"b": row(b"b"), b"c": None} and rest == []
    o.logged(second)
    assert second.cleared
    assert o.queued() == ({b"b": row(b"b")}, False)


def test_changes_waiting_for_compaction_are_not_walked_by_the_collector(tmp_path: Path) -> None:
    """A logged change lives until its segment is compacted: up to the log's
    bound of them at once. Python's cyclic collector walks every object it
    tracks on each full collection, and it never stops tracking a NamedTuple:
    the keyspace records plain tuples, and the overlay keeps them as they are;
    the collector stops tracking them once it has looked at them (issue 18:
    full collections paused the event loop 80-450 ms)."""
    o = Overlay()
    layer = Layer(1)
    o.add_layer(layer)
    for i in range(100):
        entry = Entry(b"v%d" % i, context_id="c", created_at=1.0, ttl=5.0, deadline=9.0)
        o.record(b"k%d" % i, row_of(entry))  # what the keyspace records for a write
    o.record(b"gone", None)
    o.take()
    o.logged(layer)
    path = tmp_path / "s.db-log.000000000002"
    frame = wal.encode({b"k%d" % i: row(b"v%d" % i, context="c") for i in range(100)}, False)
    path.write_bytes(wal.MAGIC + frame)
    replayed = wal.replay(path)
    gc.collect()
    for kept in (*layer.changes.values(), *replayed.changes.values()):
        assert kept is None or not gc.is_tracked(kept)
    # Readers still get rows, with their fields by name.
    found, _ = o.lookup([b"k7"])
    assert isinstance(found[b"k7"], Row) and found[b"k7"].value == b"v7"
    assert replayed.changes[b"k7"] == row(b"v7", context="c")


def test_the_keyspace_records_plain_tuples(tmp_path: Path) -> None:
    """The overlay keeps a change as it was recorded until compaction (the
    test above): so a string, a hash and the write-back of an evicted session
    that a read renewed must each reach the store as an exact tuple, which the
    collector stops tracking, and never as a Row."""
    store = SQLiteStore(tmp_path / "k.db")
    try:
        now = [1_700_000_000.0]
        cache: SessionCache[bytes, Value] = SessionCache(2, clock=lambda: now[0])
        Keyspace(cache, store)
        cache.insert(b"s", b"1")
        cache.insert(b"h", {b"field": b"v"})
        now[0] += 1
        cache.get(b"s")  # read: its TTL slides
        cache.get(b"h")  # read last: "s" is now the least recently used
        store.overlay.take()  # the writes so far are in flight
        cache.insert(b"new", b"2")  # evicts "s", whose renewal is written back
        changes = store.overlay.pending
        assert set(changes) == {b"s", b"new"}
        assert set(store.overlay.inflight) == {b"s", b"h"}
        for change in (*changes.values(), *store.overlay.inflight.values()):
            assert type(change) is tuple, change
    finally:
        store.close()


def test_a_count_of_queued_changes_is_not_walked_by_the_collector(tmp_path: Path) -> None:
    """DBSIZE and the sessions gauge count the changes not yet compacted from a
    copy of them (up to 150k under sustained writes), on a thread, for as long
    as the table's count takes. Holding only keys and booleans, the copy is a
    dict the collector never tracks, however young the changes are (issue 18:
    every young collection walked it whole, 10-17 ms each)."""
    store = SQLiteStore(tmp_path / "c.db", close_budget=0.0)
    try:
        store.record(b"ttl", row(b"v", ttl=5.0, deadline=2e9))
        store.record(b"plain", row(b"v"))
        store.record(b"gone", None)
        counts = store.count_rows()
        assert counts.queued == {b"ttl": True, b"plain": False, b"gone": None}
        assert not gc.is_tracked(counts.queued)
        assert (counts.total, counts.expiring) == (0, 0)
    finally:
        store.close()


def test_a_failed_commit_goes_back_unless_something_newer_replaced_it() -> None:
    o = Overlay()
    o.record(b"a", row(b"old"))
    o.record(b"b", row(b"b"))
    o.take()
    o.record(b"a", row(b"newer"))
    o.put_back()
    assert o.pending == {b"a": row(b"newer"), b"b": row(b"b")}
    o.take()
    o.clear()
    o.put_back()
    assert o.pending == {} and o.pending_cleared  # the FLUSH supersedes them


def test_a_read_that_raced_a_compaction_reads_again_and_a_newer_change_wins() -> None:
    o = Overlay()
    layer = Layer(1, {b"k": row(b"logged")})
    o.add_layer(layer)
    drops = o.drops
    stale = {b"x": row(b"table, before")}
    answers, again = o.settle([b"x"], stale, drops)
    assert answers == {b"x": row(b"table, before")} and again == []
    o.drop(layer)  # a compaction ended while a read ran
    answers, again = o.settle([b"x"], stale, drops)
    assert answers == {} and again == [b"x"]
    o.record(b"x", None)  # and a change made meanwhile wins over the read
    answers, again = o.settle([b"x"], stale, o.drops)
    assert answers == {b"x": None} and again == []


# ---------------------------------------------------------- the compactor


def _open(path: Path) -> tuple[StoreFiles, sqlite3.Connection]:
    files = StoreFiles(path)
    files.open()
    return files, connect(path)


def _table(db: sqlite3.Connection) -> dict[bytes, bytes]:
    return {bytes(k): bytes(v) for k, v in db.execute("SELECT key, value FROM sessions")}


def test_compaction_writes_in_table_order_and_records_the_segment_last(tmp_path: Path) -> None:
    files, db = _open(tmp_path / "c.db")
    try:
        db.execute(
            "INSERT INTO sessions (scan_hash, key, value, created_at, updated_at, accessed_at) "
            "VALUES (?, ?, x'00', 0, 0, 0)",
            (scan_hash(b"k7"), b"k7"),
        )
        changes: dict[bytes, Change] = {b"k%d" % i: row(b"k%d=new" % i) for i in range(300)}
        changes[b"k7"] = None
        db.executescript(
            "CREATE TEMP TABLE written (key BLOB);"
            "CREATE TEMP TRIGGER w AFTER INSERT ON main.sessions "
            "BEGIN INSERT INTO written VALUES (new.key); END;"
        )
        job = Compaction(Layer(4, changes))
        compactor = Compactor(db)
        steps = 0
        while not compactor.step(job, 64):
            steps += 1
            # Not recorded before the last step: a crash now replays segment 4.
            assert db.execute("SELECT compacted_through FROM store_state").fetchone() == (0,)
        assert steps == 4
        assert db.execute("SELECT compacted_through FROM store_state").fetchone() == (4,)
        keys = [bytes(k) for (k,) in db.execute("SELECT key FROM written ORDER BY rowid")]
        assert keys == sorted(keys, key=lambda k: (scan_hash(k), k))
        table = _table(db)
        assert len(table) == 299 and b"k7" not in table
        assert all(v == k + b"=new" for k, v in table.items())
    finally:
        db.close()
        files.close()


def test_a_flushed_segment_empties_the_table_first(tmp_path: Path) -> None:
    files, db = _open(tmp_path / "c.db")
    try:
        compactor = Compactor(db)
        assert compactor.step(Compaction(Layer(1, {b"old": row(b"o")})), 10)
        flushed = Layer(2, {b"new": row(b"n")})
        flushed.cleared = True
        assert compactor.step(Compaction(flushed), 10)
        assert _table(db) == {b"new": b"n"}
    finally:
        db.close()
        files.close()


def test_a_crash_in_the_middle_of_a_compaction_replays_the_segment(tmp_path: Path) -> None:
    """The store is copied as a crash would leave it after some of a
    segment's steps: reopened, it replays the segment and ends at its newest
    changes, whatever the copy's table holds."""
    path = tmp_path / "s.db"
    gate: list[str] = []

    def hook(point: str) -> None:
        if point == "compact":
            gate.append(point)
            if len(gate) == 3:  # two steps are committed: crash here
                db = sqlite3.connect(path)
                db.execute(f"VACUUM INTO '{tmp_path / 'crashed.db'}'")
                db.close()

    store = SQLiteStore(path, compact_rows=50, hook=hook)
    for i in range(200):
        store.record(b"k%d" % i, row(b"v%d" % i))
    store.record(b"k5", None)
    store.close()  # commits, then compacts in four steps
    assert len(gate) >= 4
    # The crashed copy: the table holds part of the segment, and the log
    # segment is still there (it goes only once the segment is recorded).
    crashed = tmp_path / "crashed.db"
    db = sqlite3.connect(crashed)
    partial = db.execute("SELECT count(*) FROM sessions").fetchone()[0]
    through = db.execute("SELECT compacted_through FROM store_state").fetchone()[0]
    db.close()
    assert 0 < partial < 199 and through == 0
    frame = wal.encode({b"k%d" % i: row(b"v%d" % i) for i in range(200)} | {b"k5": None}, False)
    (tmp_path / "crashed.db-log.000000000001").write_bytes(wal.MAGIC + frame)
    again = SQLiteStore(crashed)
    try:
        assert again.load(b"k5") is None
        assert all(again.load(b"k%d" % i) == row(b"v%d" % i) for i in range(200) if i != 5)
        assert again.count_rows().total + len(again.count_rows().queued) >= 199
    finally:
        again.close()
    db = sqlite3.connect(crashed)
    assert db.execute("SELECT count(*) FROM sessions").fetchone()[0] == 199
    assert db.execute("SELECT compacted_through FROM store_state").fetchone()[0] == 1
    db.close()
    assert not list(tmp_path.glob("crashed.db-log.*"))  # compacted: deleted


def test_kind_is_kept_through_the_log_and_the_table(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    store = SQLiteStore(path, close_budget=0.0)  # stop without compacting
    store.record(b"h", row(b"encoded hash", kind=2))
    store.close()
    assert list(tmp_path.glob("k.db-log.*"))
    again = SQLiteStore(path)  # from the log
    try:
        found = again.load(b"h")
        assert found is not None and found.kind == 2
    finally:
        again.close()
    again = SQLiteStore(path)  # from the table
    try:
        assert not again.count_rows().queued
        found = again.load(b"h")
        assert found is not None and found.kind == 2
    finally:
        again.close()


def test_a_compactor_process_that_dies_before_it_answers_is_reported_gone(
    tmp_path: Path,
) -> None:
    """The daemon waits for the answer to each command it sent the compactor
    process (``reply`` every 50 ms until one comes). A child that died first
    (killed mid-command: OOM, a kill -9) must be reported gone, so that a
    new one is given the segment again; a new child started in its place by
    the wait itself never heard the command, and the wait for its answer,
    with compaction, never ended."""
    from sessiond.store.compactd import CompactorProcess

    path = tmp_path / "c.db"
    store_files = StoreFiles(path)
    store_files.open()
    child = CompactorProcess(path, store_files.lock_fd, 0, 100, 0.0)
    try:
        child.send("live")
        died = child.proc
        assert died is not None
        died.kill()  # before the interpreter has even started: no answer
        died.wait()
        with pytest.raises(EOFError):
            for _ in range(40):  # two seconds of the daemon's wait
                assert child.reply(0.05) is None
        assert child.proc is died  # gone, not silently replaced
    finally:
        child.stop(now=True)
        store_files.close()


def test_the_compactor_process_compacts_several_segments_as_one(tmp_path: Path) -> None:
    """``compact N...`` merges the segments, newest change per key (a FLUSH
    in one clears the table and every older segment), writes each session
    once, and records the last segment as compacted."""
    from sessiond.store.compactd import CompactorProcess

    path = tmp_path / "c.db"
    store_files = StoreFiles(path)
    store_files.open()

    def segment(number: int, changes: dict[bytes, Kept], cleared: bool = False) -> None:
        _segment(store_files.segment_path(number), [wal.encode(changes, cleared)])

    child = CompactorProcess(path, store_files.lock_fd, 0, 100, 0.0)
    db = connect(path)
    try:
        segment(3, {b"k1": row(b"a"), b"k2": row(b"a"), b"k3": row(b"a")})
        segment(4, {b"k1": row(b"b"), b"k2": None})
        segment(5, {b"k3": row(b"c")})
        assert child.ask("compact 3 4 5", lambda: False) == "done 5 3"  # k1, k2, k3 once each
        assert _table(db) == {b"k1": b"b", b"k3": b"c"}
        assert db.execute("SELECT compacted_through FROM store_state").fetchone() == (5,)

        segment(6, {b"k9": row(b"x")})
        segment(7, {b"k5": row(b"y")}, cleared=True)
        assert child.ask("compact 6 7", lambda: False) == "done 7 1"
        assert _table(db) == {b"k5": b"y"}
        assert db.execute("SELECT compacted_through FROM store_state").fetchone() == (7,)
    finally:
        db.close()
        child.stop(now=False)
        store_files.close()


def test_a_merge_cut_short_is_retried_with_more_segments(tmp_path: Path) -> None:
    """A compactor process killed in the middle of ``compact 3 4`` (some of
    the merge already in the table, ``compacted_through`` not moved) is
    retried with the segments sealed since, ``compact 3 4 5``: the table ends
    as the newest change per key says, a FLUSH in the first segment of a
    merge still clears what came before, and only the last is recorded."""
    from sessiond.store.compactd import CompactorProcess

    path = tmp_path / "c.db"
    store_files = StoreFiles(path)
    store_files.open()

    def segment(number: int, changes: dict[bytes, Kept], cleared: bool = False) -> None:
        _segment(store_files.segment_path(number), [wal.encode(changes, cleared)])

    def through() -> int:
        return int(db.execute("SELECT compacted_through FROM store_state").fetchone()[0])

    db = connect(path)
    child = CompactorProcess(path, store_files.lock_fd, 0, 100, 0.0)
    try:
        segment(2, {b"old": row(b"o")})
        assert child.ask("compact 2", lambda: False) == "done 2 1"
        child.stop(now=False)
        # One row a step, a second between steps: killed after the first.
        slow = CompactorProcess(path, store_files.lock_fd, 0, 1, 1.0)
        segment(3, {b"k%d" % i: row(b"a") for i in range(5)}, cleared=True)
        segment(4, {b"k%d" % i: row(b"b") for i in range(3)})
        slow.send("compact 3 4")
        deadline = time.monotonic() + 10
        while not _table(db).keys() - {b"old"}:
            assert time.monotonic() < deadline, _table(db)
            time.sleep(0.01)
        assert slow.proc is not None
        slow.proc.kill()
        slow.stop(now=True)
        assert through() == 2  # cut short: not recorded
        segment(5, {b"k0": None, b"k4": row(b"c")})
        assert child.ask("compact 3 4 5", lambda: False) == "done 5 5"
        assert _table(db) == {b"k1": b"b", b"k2": b"b", b"k3": b"a", b"k4": b"c"}
        assert through() == 5
    finally:
        db.close()
        child.stop(now=False)
        store_files.close()


# --------------------------------------------------------------- migration

_V2_SCHEMA = """
CREATE TABLE sessions (
    scan_hash INTEGER NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, context TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, accessed_at REAL NOT NULL,
    ttl REAL, deadline REAL, expire_at REAL, PRIMARY KEY (scan_hash, key)
) WITHOUT ROWID;
CREATE INDEX sessions_expire_at ON sessions(expire_at) WHERE expire_at IS NOT NULL;
CREATE TABLE journal (
    seq INTEGER PRIMARY KEY, scan_hash INTEGER NOT NULL, key BLOB NOT NULL, value BLOB,
    context TEXT, created_at REAL, updated_at REAL, accessed_at REAL, ttl REAL, deadline REAL
);
PRAGMA application_id = 1397052243;
PRAGMA user_version = 2;
"""


# Schemas 3 and 4: the table keyed by (scan_hash, key); set user_version after.
V4_SCHEMA = """
CREATE TABLE sessions (
    scan_hash INTEGER NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, context TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, accessed_at REAL NOT NULL,
    ttl REAL, deadline REAL, expire_at REAL, kind INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scan_hash, key)
) WITHOUT ROWID;
CREATE INDEX sessions_expire_at ON sessions(expire_at) WHERE expire_at IS NOT NULL;
CREATE TABLE store_state (
    id INTEGER PRIMARY KEY CHECK (id = 1), compacted_through INTEGER NOT NULL
);
INSERT INTO store_state VALUES (1, 7);
PRAGMA application_id = 1397052243;
"""


def v4_store(path: Path, sessions: int, value: bytes = b"v") -> sqlite3.Connection:
    """A store of schema 4 at ``path`` holding ``sessions`` sessions k0, k1...
    of ``value``; the connection to it (autocommit)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(V4_SCHEMA)
    db.execute("PRAGMA user_version = 4")
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO sessions VALUES (?, ?, ?, NULL, ?, 0, 0, NULL, NULL, NULL, 0)",
        [(scan_hash(b"k%d" % i), b"k%d" % i, value, time.time()) for i in range(sessions)],
    )
    db.execute("COMMIT")
    return db


def test_a_version_4_store_is_rebuilt_as_a_rowid_table_with_its_rows_as_they_were(
    tmp_path: Path,
) -> None:
    """Schema 5 keeps the rows in a rowid table, in the order they were first
    written, with a unique index on (scan_hash, key) (docs/persistence.md):
    a version 4 store is rebuilt so in one transaction at start-up, every
    column of every row kept, the segment compacted through kept, and the
    table then takes upserts, deletes and expiry's reads as before."""
    path = tmp_path / "v4.db"
    now = time.time()
    db = sqlite3.connect(path)
    db.executescript(V4_SCHEMA)
    db.execute("PRAGMA user_version = 4")
    rows = {
        b"a": (b"va", "ctx", now, 0.0, 0.0, 60.0, now + 60, now + 30, 0),
        b"b": (b"vb", None, now, now + 1, now + 2, None, None, None, 2),
        b"c": (b"vc", None, now, 0.0, 0.0, 5.0, now - 1, now - 1, 0),
    }
    db.executemany(
        "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(scan_hash(k), k, *r) for k, r in rows.items()],
    )
    db.commit()
    db.close()
    with structlog.testing.capture_logs() as logged:
        files = StoreFiles(path)
        through = files.open()
    try:
        assert through == 7
        migrated = [e for e in logged if e["event"] == "store_migrated"]
        assert migrated and migrated[0]["from_version"] == 4 and migrated[0]["sessions"] == 3
        db = connect(path)
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (5,)
        kept = {
            bytes(k): (bytes(v), *rest)
            for k, v, *rest in db.execute(
                "SELECT key, value, context, created_at, updated_at, accessed_at, ttl, "
                "deadline, expire_at, kind FROM sessions"
            )
        }
        assert kept == rows
        indexes = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"sessions_key", "sessions_expire_at"} <= indexes
        assert [i for (i,) in db.execute("SELECT id FROM sessions ORDER BY id")] == [1, 2, 3]
        # The unique index answers upserts: a rewrite stays one row, in place.
        assert Compactor(db).step(
            Compaction(
                Layer(8, {b"a": Row(b"new", None, now, now, now, None, None, 0), b"b": None})
            ),
            10,
        )
        assert _table(db) == {b"a": b"new", b"c": b"vc"}
        assert db.execute("SELECT id FROM sessions WHERE key = ?", (b"a",)).fetchone() is not None
        db.close()
    finally:
        files.close()
    store = SQLiteStore(path)
    try:
        assert store.due(now, 10) == [b"c"]  # expiry finds it through the expire_at index
        found = store.load(b"a")
        assert found is not None and found.value == b"new"
    finally:
        store.close()


def test_a_migration_reports_its_progress_as_it_starts_and_while_it_runs(
    tmp_path: Path,
) -> None:
    """The daemon extends systemd's start timeout from these reports, so a
    large store's migration is not killed (and rolled back) at every start."""
    db = v4_store(tmp_path / "v4.db", 5000)
    heard: list[str] = []
    files.migrate(db, heard.append, every=0.0)
    assert len(heard) >= 2, heard  # as it starts, and while it copies
    assert set(heard) == {"migrating the store from schema 4 to 5"}
    assert db.execute("SELECT count(*) FROM sessions").fetchone() == (5000,)
    files.migrate(db, heard.append, every=0.0)  # nothing left to do: nothing said
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    db.close()


def test_a_migration_without_room_to_copy_refuses_to_start_and_leaves_the_store(
    tmp_path: Path,
) -> None:
    """Schema 5 copies the sessions: on a disk without room for the copy the
    start fails with what is needed, and the store stays at schema 4 with
    every session, ready to migrate once there is room."""
    path = tmp_path / "v4.db"
    db = v4_store(path, 2000, b"v" * 200)
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.close()
    with pytest.raises(StoreError, match="needs two to three times the store's size"):
        StoreFiles(path, max_pages=pages + 20).open()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (4,)
    assert db.execute("SELECT count(*) FROM sessions").fetchone() == (2000,)
    db.close()
    store = SQLiteStore(path)  # room again: migrated, nothing lost
    try:
        found = store.load(b"k1999")
        assert found is not None and found.value == b"v" * 200
    finally:
        store.close()


def test_the_whole_table_and_its_pages_come_in_scan_order_whatever_order_rows_were_written(
    tmp_path: Path,
) -> None:
    """Schema 5 keeps rows in the order they were written; SCAN (and KEYS,
    which reads the whole table in one go, not through the index) must still
    get them in (scan_hash, key) order, the order memory merges with."""
    from sessiond.store.reads import TableReader

    path = tmp_path / "s.db"
    files, db = _open(path)
    try:
        now = time.time()
        keys = [b"k%d" % i for i in range(3000)]
        random.Random(7).shuffle(keys)
        compactor = Compactor(db)
        for start in range(0, len(keys), 500):  # written in several steps, shuffled
            rows = {
                k: Row(b"v", None, now, now, now, None, None, 0) for k in keys[start : start + 500]
            }
            job = Compaction(Layer(start + 1, dict(rows)))
            while not compactor.step(job, 100):
                pass
    finally:
        db.close()
        files.close()
    reader = TableReader(path)
    try:
        whole, upper = reader.slice(0, None)
        assert upper == HASH_SPACE
        expected = sorted((scan_hash(k), k) for k in keys)
        assert [(h, k) for h, k, _, _ in whole] == expected
        paged: list[tuple[int, bytes]] = []
        cursor = 0
        while cursor < HASH_SPACE:
            part, cursor = reader.slice(cursor, 97)
            paged += [(h, k) for h, k, _, _ in part]
        assert paged == expected
    finally:
        reader.close()


def test_a_version_2_store_is_migrated_with_what_its_journal_held(tmp_path: Path) -> None:
    """Schema 2 kept unfolded writes in a journal table: a store that crashed
    with rows there opens with them applied, in order, and every row gets
    kind 0 (a string)."""
    path = tmp_path / "v2.db"
    now = time.time()
    db = sqlite3.connect(path)
    db.executescript(_V2_SCHEMA)
    db.execute(
        "INSERT INTO sessions VALUES (?, ?, ?, 'ctx', ?, ?, ?, NULL, NULL, NULL)",
        (scan_hash(b"old"), b"old", b"table copy", now, now, now),
    )
    journal = [
        (1, b"old", b"journal 1"),
        (2, b"new", b"journal 2"),
        (3, b"old", b"journal 3"),
        (4, b"gone", b"journal 4"),
        (5, b"gone", None),
    ]
    for seq, key, value in journal:
        db.execute(
            "INSERT INTO journal VALUES (?, ?, ?, ?, NULL, ?, ?, ?, 60.0, ?)",
            (seq, scan_hash(key), key, value, now, now, now, now + 60 if value else None),
        )
    db.commit()
    db.close()
    store = SQLiteStore(path)
    try:
        old, new = store.load(b"old"), store.load(b"new")
        assert old is not None and old.value == b"journal 3" and old.kind == 0
        assert new is not None and new.value == b"journal 2" and new.deadline == now + 60
        assert store.load(b"gone") is None
    finally:
        store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "journal" not in tables and "store_state" in tables
    assert db.execute("SELECT DISTINCT kind FROM sessions").fetchall() == [(0,)]
    db.close()


def test_a_version_3_store_reads_its_rows_as_they_were_and_writes_times_smaller(
    tmp_path: Path,
) -> None:
    """Schema 4 writes updated_at and accessed_at as 0 where they equal the
    column before them (a 0 takes no bytes in a record). Rows that schema 3
    wrote, with every time in full, read back unchanged; so do new ones,
    written either way, and warm start still finds the most recent."""
    path = tmp_path / "v3.db"
    now = time.time()
    db = sqlite3.connect(path)
    db.executescript(V4_SCHEMA)
    db.execute("PRAGMA user_version = 3")
    for key, times in ((b"v3-read", (now, now + 1, now + 2)), (b"v3-same", (now, now, now))):
        db.execute(
            "INSERT INTO sessions VALUES (?, ?, ?, NULL, ?, ?, ?, NULL, NULL, NULL, 0)",
            (scan_hash(key), key, b"old", *times),
        )
    db.commit()
    db.close()
    files, db = _open(path)  # migrates
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        written = {
            b"v4-same": Row(b"new", None, now + 3, now + 3, now + 3, None, None, 0),
            b"v4-read": Row(b"new", None, now + 3, now + 4, now + 5, 60.0, now + 65, 0),
            b"v4-written": Row(b"new", None, now + 3, now + 6, now + 6, None, None, 0),
        }
        assert Compactor(db).step(Compaction(Layer(1, dict(written))), 10)
        raw = {
            bytes(k): (u, a)
            for k, u, a in db.execute("SELECT key, updated_at, accessed_at FROM sessions")
        }
    finally:
        db.close()
        files.close()
    assert raw[b"v3-same"] == (now, now)  # as schema 3 wrote it
    assert raw[b"v4-same"] == (0, 0) and raw[b"v4-written"] == (now + 6, 0)
    assert raw[b"v4-read"] == (now + 4, now + 5)
    store = SQLiteStore(path)
    try:
        assert store.load(b"v3-read") == Row(b"old", None, now, now + 1, now + 2, None, None, 0)
        assert store.load(b"v3-same") == Row(b"old", None, now, now, now, None, None, 0)
        for key, stored in written.items():
            assert store.load(key) == stored
        assert [key for key, _ in store.recent(3)] == [b"v4-written", b"v4-read", b"v4-same"]
    finally:
        store.close()


def test_a_stop_cuts_the_warm_start_s_table_scan_short(tmp_path: Path) -> None:
    """The warm start scans the table on the store's thread while the daemon
    serves; a stop meanwhile must not wait for a scan of every row."""
    from sessiond.store.reads import TableReader

    path = tmp_path / "s.db"
    now = time.time()
    files, db = _open(path)
    try:
        rows = {
            b"k%d" % i: Row(b"v", None, now + i, now + i, now + i, None, None, 0) for i in range(3)
        }
        assert Compactor(db).step(Compaction(Layer(1, dict(rows))), 10)
    finally:
        db.close()
        files.close()
    reader = TableReader(path)
    try:
        assert [key for key, _ in reader.recent(now, 2)] == [b"k2", b"k1"]
        assert reader.recent(now, 2, stopped=lambda: True) == []
    finally:
        reader.close()


def test_the_table_is_counted_again_only_once_another_connection_changed_it(
    tmp_path: Path,
) -> None:
    """DBSIZE and the session gauge (every 15 s) count the table: a scan of
    every row. An unchanged table keeps its count (an idle store of a
    million sessions was scanned for about 160 ms every 15 s); a compaction
    through another connection makes the next count scan again, and right."""
    from sessiond.store.reads import TableReader

    path = tmp_path / "s.db"
    files, db = _open(path)
    reader = TableReader(path)
    try:
        compactor = Compactor(db)
        assert compactor.step(Compaction(Layer(1, {b"a": row(b"v"), b"b": row(b"v")})), 10)
        statements: list[str] = []
        reader.db().set_trace_callback(statements.append)

        def scans() -> int:
            return sum("COUNT(deadline) FROM sessions" in s for s in statements)

        assert reader.counts([]) == (2, 0)
        assert reader.counts([b"a"]) == (1, 0)  # the queued key is not the table's
        assert scans() == 1
        assert compactor.step(Compaction(Layer(2, {b"c": row(b"v"), b"a": None})), 10)
        assert reader.counts([]) == (2, 0)
        assert scans() == 2
    finally:
        reader.close()
        db.close()
        files.close()


def test_every_page_is_checked_when_the_last_stop_was_not_clean(tmp_path: Path) -> None:
    """A clean stop deletes SQLite's -wal file; one left over means the last
    process did not close the store, and start-up then checks every page
    (after a clean stop only the header and schema: reading the whole file
    at every start made start-up grow with the store)."""
    path = tmp_path / "s.db"
    files, db = _open(path)
    try:
        layer = Layer(1, {b"k%05d" % i: row(b"v" * 200) for i in range(2000)})
        assert Compactor(db).step(Compaction(layer), 5000)
    finally:
        db.close()
        files.close()
    assert not Path(f"{path}-wal").exists()  # a clean stop leaves none
    data = bytearray(path.read_bytes())
    page = 4096
    data[-page + 100 : -page + 400] = b"\xff" * 300  # the last page's cells
    path.write_bytes(bytes(data))
    files = StoreFiles(path)
    files.open()  # clean: not read whole
    files.close()
    Path(f"{path}-wal").touch()  # as a crash leaves it
    with pytest.raises(StoreError, match="is corrupt"):
        StoreFiles(path).open()


# ------------------------------------------------------------- the files


@pytest.mark.parametrize(
    "how",
    [
        "file removed",
        "file replaced",
        "file moved away",
        "a name created",
        "directory moved",
        "a parent directory moved",
        "a symlink on the path repointed",
    ],
)
def test_the_watch_fires_for_every_change_of_a_name_on_the_store_s_path(
    tmp_path: Path, how: str
) -> None:
    """A commit checks the store's files only once the watch fired: it must
    fire for each way of taking the files away, and stay quiet while they are
    only written to (every commit appends to the log)."""
    real = tmp_path / "real"
    data = real / "top" / "data"
    data.mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    store = data / "s.db"
    store.write_bytes(b"x")
    (data / "s.db-wal").write_bytes(b"x")
    watch = DirectoryWatch(tmp_path / "link" / "top" / "data")
    try:
        assert _quiet_while_written(watch, store, data / "s.db-wal")
        if how == "file removed":
            store.unlink()
        elif how == "file replaced":
            (data / "copy").write_bytes(b"x")
            (data / "copy").replace(store)
        elif how == "file moved away":
            store.rename(data / "elsewhere")
        elif how == "a name created":
            (data / "s.db-log.000000000002").write_bytes(b"")
        elif how == "directory moved":
            data.rename(data.parent / "moved")
        elif how == "a parent directory moved":
            (real / "top").rename(real / "moved")
        else:
            (tmp_path / "other").mkdir()
            (tmp_path / "link").unlink()
            (tmp_path / "link").symlink_to(tmp_path / "other")
        assert watch.fired()
        assert not watch.fired()  # read: quiet until the next change
    finally:
        watch.close()


def _quiet_while_written(watch: DirectoryWatch, *files: Path) -> bool:
    """Whether ``watch`` stays quiet while ``files`` are appended to and
    rewritten in place. Names created in the directories above (/tmp, pytest's
    own) by anything else fire it too: quiet once in five tries is enough."""
    for _ in range(5):
        watch.fired()
        for file in files:
            with file.open("ab") as appended:
                appended.write(b"more")
            file.write_bytes(b"rewritten")
        if not watch.fired():
            return True
    return False


def _acknowledged(
    store: SQLiteStore, count: int, changes: Sequence[Callable[[], None]] = ()
) -> list[StoreError | None]:
    """``count`` writes, each a commit of its own, ``changes[i]`` made before
    write ``i + 1``: what each commit answered."""

    async def main() -> list[StoreError | None]:
        loop = asyncio.get_running_loop()
        store.start(loop)
        answers: list[StoreError | None] = []
        for i in range(count):
            if 0 < i <= len(changes):
                changes[i - 1]()
            store.record(b"k%d" % i, row(b"v"))
            done: asyncio.Future[StoreError | None] = loop.create_future()
            store.after_commit(done.set_result)
            answers.append(await asyncio.wait_for(done, 10))
        return answers

    try:
        return asyncio.run(main())
    finally:
        store.close()


def test_no_commit_takes_half_of_what_a_held_transaction_records(tmp_path: Path) -> None:
    """While the event loop holds commits (a transaction or a script runs),
    the writer thread's rounds (every flush_interval under batch) take none
    of its changes; once released, all of them go in one frame."""
    store = SQLiteStore(tmp_path / "s.db", durability="batch", flush_interval=0.01)

    def frames() -> list[set[bytes]]:
        out = []
        for _, segment in store.files.segments():
            for payload in wal.read_frames(segment)[0]:
                out.append({r[0] for r in wal.decode(payload) if r is not None})
        return out

    async def main() -> tuple[list[set[bytes]], list[set[bytes]]]:
        store.start(asyncio.get_running_loop())
        store.hold_commits()
        store.record(b"a", row(b"1"))
        await asyncio.sleep(0.2)  # many rounds of the writer, which waits
        store.hold_commits()  # nested (a script inside EXEC)
        store.record(b"b", row(b"1"))
        store.release_commits()
        await asyncio.sleep(0.1)
        held = frames()
        store.record(b"c", row(b"1"))
        store.release_commits()
        done: asyncio.Future[StoreError | None] = asyncio.get_running_loop().create_future()
        store.after_commit(done.set_result)
        assert await asyncio.wait_for(done, 10) is None
        return held, frames()

    try:
        held, after = asyncio.run(main())
    finally:
        store.close()
    assert held == []
    assert after == [{b"a", b"b", b"c"}]


def _refused(answer: StoreError | None) -> bool:
    return answer is not None and "removed or replaced" in str(answer)


@pytest.mark.parametrize("how", ["replaced", "removed"])
def test_a_store_changed_while_it_opened_is_refused_from_the_first_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The database is pinned by the file the lock opened, before the watch
    exists; an operator's change while the store opens (a migration, the
    page check after an unclean stop: seconds) fires nothing the watch
    hears, so the first commit always checks."""
    path = tmp_path / "s.db"
    SQLiteStore(path).close()
    migrate = files.migrate

    def migrate_then_changed(
        db: sqlite3.Connection, progress: Callable[[str], None] | None = None
    ) -> None:
        migrate(db, progress)
        if how == "replaced":
            shutil.copy(path, tmp_path / "copy")
            os.replace(tmp_path / "copy", path)
        else:
            path.unlink()

    monkeypatch.setattr(files, "migrate", migrate_then_changed)
    store = SQLiteStore(path, durability="always", fold_interval=3600)
    monkeypatch.setattr(files, "migrate", migrate)
    answers = _acknowledged(store, 2)
    assert all(map(_refused, answers)), answers


def test_a_store_moved_under_other_directories_is_watched_there(tmp_path: Path) -> None:
    """The store's directory moved under directories the watch never saw,
    with a symlink left at its name: the same files, so writes go on; and the
    watch follows, so replacing the store there is refused at once."""
    old = tmp_path / "a" / "data"
    old.mkdir(parents=True)
    deep = tmp_path / "other" / "deep"
    deep.mkdir(parents=True)
    store = SQLiteStore(old / "s.db", durability="always", fold_interval=3600)

    def moved() -> None:
        old.rename(deep / "data")
        old.symlink_to(deep / "data")

    def replaced() -> None:
        deep.rename(tmp_path / "other" / "deep.old")
        shutil.copytree(tmp_path / "other" / "deep.old", deep, symlinks=True)

    answers = _acknowledged(store, 3, [moved, replaced])
    assert answers[:2] == [None, None], answers
    assert _refused(answers[2]), answers


def test_a_filesystem_that_others_change_is_not_watched() -> None:
    """inotify hears only what this kernel does: on a filesystem another
    machine changes (here /proc's, which no list of local ones names) the
    watch is refused and every commit checks with stat."""
    with pytest.raises(OSError, match="filesystem"):
        DirectoryWatch(Path("/proc/self"))


def test_without_a_watch_every_commit_checks_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where inotify is refused (its limits reached, a network filesystem),
    the store says so and stats its files before every commit. The refusal
    is the kernel's EMFILE, injected: this machine grants inotify."""

    def refused(directory: Path) -> DirectoryWatch:
        raise OSError(errno.EMFILE, "inotify_init1: Too many open files")

    monkeypatch.setattr(files, "DirectoryWatch", refused)
    with structlog.testing.capture_logs() as logged:
        store = SQLiteStore(tmp_path / "s.db", durability="always", fold_interval=3600)
    assert store.files.watch is None
    (said,) = [e for e in logged if e["event"] == "store_watch_unavailable"]
    assert said["error"] == "inotify_init1: Too many open files", said
    answers = _acknowledged(store, 2, [(tmp_path / "s.db").unlink])
    assert answers[0] is None and _refused(answers[1]), answers
