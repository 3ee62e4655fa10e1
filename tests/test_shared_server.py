"""The server's connections over the in-memory double of the shared store
(tests/test_shared_handlers.py): what a connection's pipeline does with held
replies, CLIENT PAUSE and its decisions, request by request, without a socket
or a database."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sessiond.server import Connection, Server
from sessiond.store import StoreError
from test_shared_handlers import Host, fleet, run, settle


class Wire:
    """The transport a connection writes its replies to."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.conn: Connection | None = None
        self.on_write: Callable[[bytes], object] | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def write(self, data: bytes) -> None:
        self.data += data
        if self.on_write is not None:
            self.on_write(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            conn = self.conn
            if conn is not None:
                asyncio.get_running_loop().call_soon(conn.connection_lost, None)

    abort = close

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


def encode(*commands: tuple[str, ...]) -> bytes:
    out = bytearray()
    for words in commands:
        out += b"*%d\r\n" % len(words)
        for word in words:
            w = word.encode()
            out += b"$%d\r\n%b\r\n" % (len(w), w)
    return bytes(out)


def connect(server: Server) -> tuple[Connection, Wire]:
    """A connection to ``server`` over a :class:`Wire`, driven by hand."""
    conn = Connection(server)
    wire = Wire()
    wire.conn = conn
    conn.connection_made(wire)  # type: ignore[arg-type]
    return conn, wire


class Served:
    """A host's server, its connections driven by hand."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.server = Server(host.dispatcher, host.keyspace, host.state, durable_replies=True)

    def connect(self) -> tuple[Connection, Wire]:
        return connect(self.server)


def test_a_pause_with_replies_held_gives_up_a_decision_handed_to_the_next_request() -> None:
    """A decision handed along a chain (INCR, then another connection's INCR
    or the first one's next INCR) reaches a request that CLIENT PAUSE WRITE
    holds, while its connection still owes the reply of its first INCR. That
    reply waits for the decision's commit, which waits for the held request to
    run: the decision must be given up, not kept, or both connections (and
    every command on the key, and a WAITAOF anywhere) wait for ever, after
    the pause too."""

    async def scenario() -> None:
        db, (a,) = fleet(1)
        served = Served(a)
        first, first_wire = served.connect()
        second, second_wire = served.connect()
        # A monitor sees the first connection's first INCR as it runs: the
        # pause begins there, before the decision reaches the next INCR.
        monitor, monitor_wire = served.connect()
        monitor.data_received(encode(("MONITOR",)))
        await settle()

        def pause_at_the_first_incr(data: bytes) -> None:
            if b'"INCR"' in data:
                monitor_wire.on_write = None  # once
                a.state.pause(3600, every_command=False)

        monitor_wire.on_write = pause_at_the_first_incr
        gate = asyncio.Event()
        a.store.gate = gate
        first.data_received(encode(("INCR", "k"), ("INCR", "k")))
        await settle()
        second.data_received(encode(("INCR", "k")))
        await settle()
        gate.set()
        await settle()
        # The decision commits while the pause lasts: a WAITAOF without a
        # timeout (not held by a pause of writes) waits for nothing else.
        third, third_wire = served.connect()
        third.data_received(encode(("WAITAOF", "1", "0", "0")))
        for _ in range(200):
            await asyncio.sleep(0)
        assert bytes(third_wire.data) == b"*2\r\n:1\r\n:0\r\n"
        assert bytes(first_wire.data) == b":1\r\n"  # acknowledged once committed
        assert bytes(second_wire.data) == b""  # held by the pause
        a.state.unpause()  # the pause ends: everything goes on
        for _ in range(200):
            await asyncio.sleep(0)
        replies = {bytes(second_wire.data), bytes(first_wire.data)[len(b":1\r\n") :]}
        assert replies == {b":2\r\n", b":3\r\n"}
        assert db.rows[b"k"].value == b"3"
        assert not a.keyspace.holds

    run(scenario)


def test_decisions_no_reply_waits_for_are_not_kept_for_the_connection() -> None:
    """WATCH, an error that changed nothing, a reply CLIENT REPLY OFF does not
    send: each decides, and no reply waits for its commit. Kept for the
    connection until a reply of its does wait, they would pile up on one
    that never writes, and a commit of theirs that failed would make that
    later reply an error, for a write that was committed."""

    async def scenario() -> None:
        db, (a,) = fleet(1)
        served = Served(a)
        conn, wire = served.connect()
        conn.data_received(encode(("SET", "s", "text")))
        await settle()
        assert bytes(wire.data) == b"+OK\r\n"
        del wire.data[:]
        for _ in range(5):
            conn.data_received(encode(("WATCH", "w"), ("UNWATCH",)))
            await settle()
        assert bytes(wire.data) == b"+OK\r\n" * 10
        del wire.data[:]
        conn.data_received(encode(("CLIENT", "REPLY", "OFF"), ("INCR", "n")))
        await settle()
        assert not a.keyspace.decisions
        a.store.fail_commit = True  # the commit of the next decision fails
        conn.data_received(encode(("CLIENT", "REPLY", "ON"), ("INCR", "s")))
        await settle()
        assert bytes(wire.data).startswith(b"+OK\r\n-ERR value is not an integer")
        assert not a.store.fail_commit and not a.keyspace.decisions
        del wire.data[:]
        conn.data_received(encode(("SET", "x", "1")))
        await settle()
        assert bytes(wire.data) == b"+OK\r\n"  # committed: not the INCR's failure
        assert db.rows[b"x"].value == b"1" and db.rows[b"n"].value == b"1"

    run(scenario)


def test_an_error_decided_on_a_change_not_yet_committed_waits_for_its_commit() -> None:
    """A decision handed on from a command that changed its key: the next
    command's error (INCR of the value the first one set) was decided on a
    change not yet committed. If that commit fails the value never existed,
    so the error must not have gone out: it waits, and carries the failure."""

    async def scenario() -> None:
        db, (a,) = fleet(1)
        served = Served(a)
        setter, setter_wire = served.connect()
        counter, counter_wire = served.connect()
        setter.data_received(encode(("SET", "k", "5")))
        await settle()
        gate = asyncio.Event()
        a.store.gate = gate
        setter.data_received(encode(("SET", "k", "abc", "XX")))  # decides: XX
        await settle()
        counter.data_received(encode(("INCR", "k")))  # waits for the same key
        await settle()
        a.store.fail_commit = True  # the decision both commands share fails
        gate.set()
        for _ in range(200):
            await asyncio.sleep(0)
        assert bytes(setter_wire.data) == b"+OK\r\n-ERR store write failed: connection lost\r\n"
        assert bytes(counter_wire.data) == b"-ERR store write failed: connection lost\r\n"
        assert db.rows[b"k"].value == b"5"
        assert not a.keyspace.decisions

    run(scenario)


def test_an_exec_whose_decision_could_not_open_ends_the_transaction() -> None:
    """EXEC decides on its queue's keys; when that decision cannot be opened
    (the database did not answer within the timeout) EXEC is answered with the
    error, and, as any EXEC that does not run, ends the transaction. It used
    to leave it open: the connection's next commands were answered QUEUED (a
    PING included), and ran at a later EXEC."""

    async def scenario() -> None:
        _db, (a,) = fleet(1)
        served = Served(a)
        conn, wire = served.connect()
        store: Any = a.store
        real = store.decide

        async def fails(keys: list[bytes]) -> Any:
            store.decide = real  # once
            raise StoreError("store decide failed: no answer within 2s")

        store.decide = fails
        conn.data_received(
            encode(("MULTI",), ("INCR", "n"), ("EXEC",), ("PING",), ("INCR", "n"), ("EXEC",))
        )
        await settle()
        replies = bytes(wire.data).split(b"\r\n")
        assert replies[:3] == [b"+OK", b"+QUEUED", b"-ERR store decide failed: no answer within 2s"]
        assert replies[3:5] == [b"+PONG", b":1"], replies  # the failed EXEC ran nothing
        assert replies[5].startswith(b"-ERR EXEC without MULTI"), replies

    run(scenario)
