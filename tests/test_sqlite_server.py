"""The server's connections over the real SQLite store, driven by hand (the
transport of tests/test_shared_server.py): what happens to replies held for a
commit when something else goes wrong meanwhile, request by request."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog.testing
from sessiond.cache import SessionCache
from sessiond.commands import Dispatcher, ServerState
from sessiond.config import Config
from sessiond.keyspace import Keyspace
from sessiond.server import Connection, Server
from sessiond.stats import Stats
from sessiond.store import SQLiteStore
from sessiond.values import Value
from test_shared_server import Wire, connect, encode


class Rig:
    """A server over a SQLite store under ``durability: always``, its
    connections driven by hand."""

    def __init__(self, path: Path, **store: Any) -> None:
        self.store = SQLiteStore(path, durability="always", **store)
        self.cache: SessionCache[bytes, Value] = SessionCache(1000)
        self.keyspace = Keyspace(self.cache)
        self.keyspace.attach(self.store)
        self.state = ServerState(Config(), Stats())
        self.dispatcher = Dispatcher(self.keyspace, self.state)
        self.server = Server(self.dispatcher, self.keyspace, self.state, durable_replies=True)

    def connect(self) -> tuple[Connection, Wire]:
        return connect(self.server)


def run(
    path: Path,
    scenario: Callable[[Rig], Coroutine[Any, Any, None]],
    *,
    on_loop: bool = True,
    **store: Any,
) -> None:
    """Run ``scenario``; the store commits on the event loop's thread, or
    only on its writer thread if not ``on_loop`` (as after a slow commit)."""
    rig = Rig(path, **store)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if on_loop:
            rig.store.start(loop)
        else:
            starter = threading.Thread(target=rig.store.start, args=(loop,))
            starter.start()
            starter.join()
        try:
            await scenario(rig)
        finally:
            rig.store.close()

    asyncio.run(main())


async def answered(wire: Wire) -> None:
    """Wait until ``wire`` got a reply (2 s at most: a condition polled, not a timing)."""
    for _ in range(200):
        if wire.data:
            return
        await asyncio.sleep(0.01)


class Disk:
    """A store hook that holds each commit while the disk is stuck (``stuck``,
    from the start with ``stuck=True``), until ``free()``."""

    def __init__(self, *, stuck: bool) -> None:
        self.moving = threading.Event()
        if not stuck:
            self.moving.set()

    def stick(self) -> None:
        self.moving.clear()

    def free(self) -> None:
        self.moving.set()

    def __call__(self, point: str) -> None:
        if point == "commit":
            self.moving.wait(10)


def test_a_failed_store_read_after_a_write_does_not_release_its_held_reply(
    tmp_path: Path,
) -> None:
    """A write, then a read through that fails, ending the pipeline: the read
    is answered with the error, and the write's reply still waits for its
    commit. It was sent at once, before any commit, and its slot was left
    behind for the next batch."""
    commits: list[int] = []

    def hook(point: str) -> None:
        if point == "load":
            raise sqlite3.OperationalError("disk I/O error")
        if point == "commit":
            commits.append(1)

    async def scenario(rig: Rig) -> None:
        conn, wire = rig.connect()

        early: list[bytes] = []

        def sent(data: bytes) -> None:
            if b"+OK" in data and not commits:
                early.append(data)  # acknowledged before its commit

        wire.on_write = sent
        conn.data_received(encode(("SET", "k", "v"), ("GET", "absent")))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if wire.data:
                break
        assert bytes(wire.data) == b"+OK\r\n-ERR store read failed: disk I/O error\r\n"
        assert not early
        assert not conn.write_slots and not conn.busy
        conn.data_received(encode(("GET", "k")))
        await asyncio.sleep(0.05)
        assert bytes(wire.data).endswith(b"\r\n$1\r\nv\r\n")

    run(tmp_path / "s.db", scenario, hook=hook)


def test_a_protocol_error_with_a_reply_held_does_not_strand_the_others_of_its_commit(
    tmp_path: Path,
) -> None:
    """A write, then bytes that break the protocol: the connection is closed
    without its held reply (the replies before it are sent). When the commit it shared with another
    connection's write fails, that other write is answered with the error;
    the closed connection's callback indexed the replies it had cleared,
    raised, and the other connection was never answered."""

    async def scenario(rig: Rig) -> None:
        first, first_wire = rig.connect()
        second, second_wire = rig.connect()
        first.data_received(encode(("PING",), ("SET", "k0", "x" * 200)) + b"*1\r\n$x\r\n")
        second.data_received(encode(("SET", "k1", "v")))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if second_wire.data:
                break
        assert bytes(first_wire.data) == b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"
        assert first_wire.closed
        assert bytes(second_wire.data).startswith(b"-ERR store write failed")
        assert not second.busy

    run(tmp_path / "s.db", scenario, max_log_bytes=100)


def test_a_stop_past_its_grace_does_not_acknowledge_a_write_not_yet_committed(
    tmp_path: Path,
) -> None:
    """The daemon stops while a commit is stuck on the disk past the grace:
    the connection is closed with the replies answered before the held
    write, not with its +OK (nor the replies after it): the commit may still
    fail, or the process be killed before it ends."""
    disk = Disk(stuck=True)

    async def scenario(rig: Rig) -> None:
        conn, wire = rig.connect()
        conn.data_received(encode(("GET", "x"), ("SET", "k", "v"), ("GET", "k")))
        await asyncio.sleep(0.05)
        assert conn.busy and bytes(wire.data) == b""
        try:
            await rig.server.shutdown(0.1, unlink=False)
        finally:
            disk.free()
        assert wire.closed
        assert bytes(wire.data) == b"$-1\r\n"

    run(tmp_path / "s.db", scenario, on_loop=False, hook=disk)


def test_a_pause_begun_again_as_the_last_one_ends_releases_its_held_writes_at_its_end(
    tmp_path: Path,
) -> None:
    """A write held by a long CLIENT PAUSE; CLIENT UNPAUSE and a short pause
    in one pipeline: the release the unpause scheduled finds the new pause
    on and leaves the write held, and must go when the new pause ends. The
    timer was still the long pause's: with no other request coming, the
    write waited for the hour it was armed for."""

    async def scenario(rig: Rig) -> None:
        writer, writer_wire = rig.connect()
        admin, admin_wire = rig.connect()
        admin.data_received(encode(("CLIENT", "PAUSE", "100000", "WRITE")))
        await asyncio.sleep(0.01)
        writer.data_received(encode(("SET", "k", "v")))
        await asyncio.sleep(0.01)
        assert writer in rig.server.held
        # The short pause is a second: long enough that the look right after
        # it comes before its end even on a loaded machine (50 ms did not).
        pauses = (("CLIENT", "UNPAUSE"), ("CLIENT", "PAUSE", "1000", "WRITE"))
        admin.data_received(encode(*pauses))
        await asyncio.sleep(0.01)
        assert bytes(writer_wire.data) == b""  # the short pause holds it
        for _ in range(1000):
            await asyncio.sleep(0.01)
            if writer_wire.data:
                break
        assert bytes(writer_wire.data) == b"+OK\r\n"
        assert bytes(admin_wire.data) == b"+OK\r\n" * 3

    run(tmp_path / "s.db", scenario)


def test_a_commit_waiter_that_raises_does_not_keep_the_others_from_being_told(
    tmp_path: Path,
) -> None:
    """A bug in one waiter of a commit (an exception from its callback) is
    logged; the commit's other waiters, other clients' held replies, are
    told all the same."""

    async def scenario(rig: Rig) -> None:
        told: list[object] = []

        def broken(error: object) -> None:
            raise IndexError("a waiter's bug")

        with structlog.testing.capture_logs() as logs:
            rig.keyspace.cache.insert(b"k", b"v")  # a change for the commit to carry
            rig.store.after_commit(broken)
            rig.store.after_commit(told.append)
            for _ in range(200):
                if told:
                    break
                await asyncio.sleep(0.01)
        assert told == [None]
        assert [e["event"] for e in logs if e["log_level"] == "error"] == ["commit_waiter_failed"]

    run(tmp_path / "s.db", scenario)


def test_waitaof_answers_0_when_the_commit_of_the_writes_before_it_fails(
    tmp_path: Path,
) -> None:
    """docs/commands.md: WAITAOF answers [0, 0] if the commit of the writes
    made before it failed (a full log here), after the write's own error."""

    async def scenario(rig: Rig) -> None:
        conn, wire = rig.connect()
        conn.data_received(encode(("SET", "k", "v" * 200), ("WAITAOF", "1", "0", "0")))
        for _ in range(200):
            if wire.data.endswith(b":0\r\n"):
                break
            await asyncio.sleep(0.01)
        assert bytes(wire.data).startswith(b"-ERR store write failed")
        assert bytes(wire.data).endswith(b"\r\n*2\r\n:0\r\n:0\r\n")

    run(tmp_path / "s.db", scenario, max_log_bytes=100)


def test_a_read_waits_for_the_commit_of_the_write_it_shows(tmp_path: Path) -> None:
    """docs/persistence.md, "Promises": under ``durability: always`` a read
    shows another connection's write only once its commit is on disk, as
    Redis sends no reply before its fsync. The GET was answered while the
    SET's commit was stuck, so a crash then would have left the reader
    having seen a write that is gone. A read of a key with nothing
    uncommitted is answered at once meanwhile; a read of the whole keyspace
    (DBSIZE) waits, as it counts the write."""
    disk = Disk(stuck=False)

    async def scenario(rig: Rig) -> None:
        writer, writer_wire = rig.connect()
        reader, reader_wire = rig.connect()
        other, other_wire = rig.connect()
        counter, counter_wire = rig.connect()
        writer.data_received(encode(("SET", "j", "old")))
        await answered(writer_wire)
        assert bytes(writer_wire.data) == b"+OK\r\n"
        writer_wire.data.clear()
        disk.stick()  # the next commit sticks
        try:
            writer.data_received(encode(("SET", "k", "new")))
            reader.data_received(encode(("GET", "j"), ("GET", "k"), ("GET", "j")))
            other.data_received(encode(("GET", "j"), ("EXISTS", "absent")))
            counter.data_received(encode(("DBSIZE",)))
            await asyncio.sleep(0.05)
            assert bytes(other_wire.data) == b"$3\r\nold\r\n:0\r\n"
            assert bytes(reader_wire.data) == b""  # GET k waits, and the replies after it
            assert bytes(counter_wire.data) == b""
            assert bytes(writer_wire.data) == b""
        finally:
            disk.free()
        await answered(reader_wire)
        assert bytes(writer_wire.data) == b"+OK\r\n"
        assert bytes(reader_wire.data) == b"$3\r\nold\r\n$3\r\nnew\r\n$3\r\nold\r\n"
        await answered(counter_wire)
        assert bytes(counter_wire.data) == b":2\r\n"

    run(tmp_path / "s.db", scenario, on_loop=False, hook=disk)


def test_a_read_of_a_write_whose_commit_fails_gets_the_error_then_reads_are_served(
    tmp_path: Path,
) -> None:
    """A read held for the commit of the write it shows gets that commit's
    error (the write's outcome is unknown: it stays in memory and lands with
    the next commit that succeeds). While the store refuses writes, reads are
    served at once, with the write kept in memory: they do not wait for
    the retries."""

    async def scenario(rig: Rig) -> None:
        writer, writer_wire = rig.connect()
        reader, reader_wire = rig.connect()
        writer.data_received(encode(("SET", "k", "v" * 200)))
        reader.data_received(encode(("GET", "k")))
        for _ in range(200):
            if reader_wire.data and writer_wire.data:
                break
            await asyncio.sleep(0.01)
        assert bytes(writer_wire.data).startswith(b"-ERR store write failed")
        assert bytes(reader_wire.data) == bytes(writer_wire.data)
        assert rig.store.failure is not None and rig.store.uncommitted()
        reader_wire.data.clear()
        reader.data_received(encode(("GET", "k"), ("DBSIZE",)))
        await asyncio.sleep(0.01)
        assert bytes(reader_wire.data) == b"$200\r\n" + b"v" * 200 + b"\r\n:1\r\n"

    run(tmp_path / "s.db", scenario, max_log_bytes=100)


def test_an_error_about_a_key_does_not_show_its_uncommitted_write(tmp_path: Path) -> None:
    """A WRONGTYPE reply tells that the key exists and what it holds: while
    another connection's HSET of it waits for its commit, a GET of it waits
    too (it was answered at once, showing a write a crash could take back)."""
    disk = Disk(stuck=False)

    async def scenario(rig: Rig) -> None:
        writer, writer_wire = rig.connect()
        reader, reader_wire = rig.connect()
        disk.stick()  # the next commit sticks
        try:
            writer.data_received(encode(("HSET", "k", "f", "v")))
            for _ in range(200):  # its read-through (nothing stored) first
                if rig.cache.find(b"k") is not None:
                    break
                await asyncio.sleep(0.01)
            reader.data_received(encode(("GET", "k"), ("GET", "other")))
            await asyncio.sleep(0.05)
            assert bytes(writer_wire.data) == b""  # the HSET waits for its commit
            assert bytes(reader_wire.data) == b""
        finally:
            disk.free()
        await answered(reader_wire)
        assert bytes(writer_wire.data) == b":1\r\n"
        assert bytes(reader_wire.data).startswith(b"-WRONGTYPE")
        assert bytes(reader_wire.data).endswith(b"\r\n$-1\r\n")

    run(tmp_path / "s.db", scenario, on_loop=False, hook=disk)
