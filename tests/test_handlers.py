"""Command handlers without a socket: the dispatcher over a real keyspace and
cache with an injected clock, and an in-memory double of the store interface.

These pin the request path's own rules (read-through before a command runs,
the per-command context, MULTI/EXEC, refusing writes while the store cannot
commit) fast and deterministically; the black-box tests in test_commands.py
and test_persistence.py hold the same behaviour through real clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from sessiond.cache import SessionCache
from sessiond.commands import Client, Dispatcher, ServerState
from sessiond.config import Config
from sessiond.keyspace import Context, Keyspace, Prepared
from sessiond.protocol import OK, QUEUED, Error
from sessiond.stats import Stats
from sessiond.store import HASH_SPACE, Change, Row, StoreError, TableCounts, TableSlice, scan_hash

T = TypeVar("T")


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class StoreDouble:
    """The store interface over a dict: every change is durable at once."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.rows: dict[bytes, Row] = {}
        self.failure: StoreError | None = None
        self.loads: list[list[bytes]] = []
        self.closed = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        return None

    def record(self, key: bytes, change: Change) -> None:
        if change is None:
            self.rows.pop(key, None)
        else:
            self.rows[key] = change

    def clear(self) -> None:
        self.rows.clear()

    def load(self, key: bytes) -> Row | None:
        return self.rows.get(key)

    async def load_many(self, keys: list[bytes]) -> dict[bytes, Row | None]:
        self.loads.append(list(keys))
        return {k: self.rows.get(k) for k in keys}

    def count_rows(self) -> TableCounts:
        expiring = sum(1 for r in self.rows.values() if r.deadline is not None)
        return TableCounts({}, len(self.rows), expiring)

    def scan_rows(self, cursor: int, count: int | None) -> TableSlice:
        rows = sorted((scan_hash(k), k, r.deadline, r.kind) for k, r in self.rows.items())
        rows = [r for r in rows if r[0] >= cursor]
        return TableSlice(rows, {}, True, HASH_SPACE)

    async def whole_table(self, read: Callable[[], T], operation: str) -> T:
        return read()

    def due(self, now: float, limit: int) -> list[bytes]:
        due = [k for k, r in self.rows.items() if r.deadline is not None and r.deadline <= now]
        return due[:limit]

    def recent(self, limit: int) -> list[tuple[bytes, Row]]:
        live = [(k, r) for k, r in self.rows.items() if r.live(self.clock())]
        live.sort(key=lambda kr: -kr[1].accessed_at)
        return live[:limit]

    def after_commit(self, callback: Callable[[StoreError | None], None]) -> None:
        callback(self.failure)

    def lagging(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


class Daemon:
    """A keyspace, a dispatcher and one client, driven request by request."""

    def __init__(self, *, store: bool = True, max_sessions: int = 100, **cache: Any) -> None:
        self.clock = Clock()
        self.cache: SessionCache[bytes, bytes] = SessionCache(
            max_sessions, clock=self.clock, **cache
        )
        self.store = StoreDouble(self.clock) if store else None
        self.keyspace = Keyspace(self.cache, self.store)
        self.state = ServerState(Config(), Stats())
        self.dispatcher = Dispatcher(self.keyspace, self.state)
        self.client = self.new_client()

    def new_client(self) -> Client:
        return self.state.new_client(authenticated=self.state.password is None)

    def __call__(self, *words: str | bytes, client: Client | None = None) -> Any:
        """Run one request as the server does: read through, then execute."""
        args = [w.encode() if isinstance(w, str) else w for w in words]
        who = client or self.client
        cmd = self.dispatcher.resolve(args[0])
        prepared: Prepared | None = None
        while True:
            work = self.dispatcher.prepare(who, cmd, args, prepared)
            if work is None:
                break
            prepared = _finish(work)
        return self.dispatcher.execute(who, cmd, args, prepared)


def _finish(work: Awaitable[T]) -> T:
    async def wait() -> T:
        return await work

    return asyncio.run(wait())


def row(value: bytes, now: float, ttl: float | None = None) -> Row:
    deadline = None if ttl is None else now + ttl
    return Row(value, None, now, now, now, ttl, deadline)


# ------------------------------------------------------------------ basics


def test_set_get_and_sliding_ttl_follow_the_injected_clock() -> None:
    d = Daemon(store=False)
    assert d("SET", "k", "v", "EX", "10") is OK
    d.clock.now += 8
    assert d("GET", "k") == b"v"  # an access: the TTL slides back to 10
    d.clock.now += 8
    assert d("TTL", "k") == 2  # inspection does not slide it
    d.clock.now += 3
    assert d("GET", "k") is None
    assert d("EXISTS", "k") == 0


def test_unknown_commands_arity_and_noauth_are_error_replies() -> None:
    d = Daemon(store=False)
    reply = d("NOPE", "a")
    assert isinstance(reply, Error) and reply.message.startswith("ERR unknown command 'NOPE'")
    reply = d("GET")
    assert isinstance(reply, Error) and "wrong number of arguments for 'get'" in reply.message
    stranger = Client(99, authenticated=False)
    reply = d("GET", "k", client=stranger)
    assert isinstance(reply, Error) and reply.message.startswith("NOAUTH")
    counts = d.state.stats.commands["GET"]
    assert (counts.calls, counts.errors) == (2, 2)
    assert d.state.stats.server.unknown.calls == 1


def test_a_handler_bug_is_an_error_reply_not_an_exception() -> None:
    d = Daemon(store=False)
    d("SET", "k", "v")
    d.cache.persistence = None  # type: ignore[assignment]  # breaks every write
    reply = d("SET", "k", "w")
    assert isinstance(reply, Error) and reply.message == "ERR internal error while running 'set'"
    assert d.state.stats.commands["SET"].errors == 1


# ----------------------------------------------------------- read-through


def test_an_evicted_session_is_read_through_before_the_command_runs() -> None:
    d = Daemon(max_sessions=2)
    for key in ("a", "b", "c"):
        d("SET", key, key.upper())
    assert d.cache.find(b"a") is None  # evicted, kept in the store
    assert d("GET", "a") == b"A"
    assert d.store is not None and d.store.loads == [[b"a"]]
    assert d.cache.find(b"a") is not None  # admitted back to memory
    assert d("GET", "nothing") is None
    assert d.store.loads[-1] == [b"nothing"]
    assert (d.cache.loads_found, d.cache.loads_absent) == (1, 1)


def test_inspection_sees_the_store_without_admitting() -> None:
    d = Daemon(max_sessions=1)
    d("SET", "a", "1", "EX", "100")
    d("SET", "b", "2")
    assert d("EXISTS", "a") == 1
    assert d("TTL", "a") == 100
    assert d("TYPE", "a") == "string"
    assert d.cache.find(b"a") is None  # inspected, not admitted


def test_exec_reads_every_queued_key_first_and_reads_its_own_writes_back() -> None:
    """EXEC [SET x, SET y (evicts x), GET x]: x was written by this very
    command and evicted by it; GET reads that write back, not the store's
    older copy nor nothing."""
    d = Daemon(max_sessions=1)
    d("SET", "x", "old")
    d("SET", "other", "o")  # x leaves memory
    assert d("MULTI") is OK
    assert d("SET", "x", "new") is QUEUED
    assert d("SET", "y", "y") is QUEUED
    assert d("GET", "x") is QUEUED
    assert d("EXEC") == [OK, OK, b"new"]


def test_a_failed_read_through_is_raised_to_the_server() -> None:
    d = Daemon(max_sessions=1)
    d("SET", "a", "1")
    d("SET", "b", "2")
    assert d.store is not None

    async def broken(keys: list[bytes]) -> dict[bytes, Row | None]:
        raise StoreError("store read failed: disk I/O error")

    d.store.load_many = broken  # type: ignore[method-assign]
    cmd = d.dispatcher.resolve(b"GET")
    work = d.dispatcher.prepare(d.client, cmd, [b"GET", b"a"], None)
    assert work is not None
    with pytest.raises(StoreError):
        _finish(work)
    assert d.cache.loads_error == 1


# ------------------------------------------------------------ transactions


def test_multi_queues_checks_arity_and_aborts_exec() -> None:
    d = Daemon(store=False)
    assert d("MULTI") is OK
    reply = d("MULTI")
    assert isinstance(reply, Error) and reply.message == "ERR MULTI calls can not be nested"
    assert d("SET", "k", "v") is QUEUED
    assert isinstance(d("GET"), Error)  # wrong arity: flags the transaction
    reply = d("EXEC")
    assert isinstance(reply, Error) and reply.message.startswith("EXECABORT")
    assert d("GET", "k") is None
    reply = d("DISCARD")
    assert isinstance(reply, Error) and reply.message == "ERR DISCARD without MULTI"


def test_writes_are_refused_while_the_store_cannot_commit() -> None:
    d = Daemon()
    assert d.store is not None
    d("SET", "k", "v")
    d.store.failure = StoreError("store write failed: disk full")
    reply = d("SET", "k", "w")
    assert isinstance(reply, Error) and reply.message.startswith("MISCONF store write failed")
    assert d("GET", "k") == b"v"  # reads are served
    d("MULTI")
    assert d("SET", "k", "w") is QUEUED
    reply = d("EXEC")  # a transaction that writes is refused whole
    assert isinstance(reply, Error) and reply.message.startswith("MISCONF")
    assert d.client.multi is None
    d.store.failure = None
    assert d("SET", "k", "w") is OK


# ----------------------------------------------------- whole-keyspace reads


def test_dbsize_scan_and_keys_merge_memory_and_store() -> None:
    d = Daemon(max_sessions=2)
    for i in range(5):
        d("SET", f"k{i}", "v")
    d("SET", "gone", "v", "PX", "10")
    d.clock.now += 1  # gone expired in memory; its store row too
    assert d("DBSIZE") == 6  # as Redis: counted until swept
    assert sorted(d("KEYS", "k*")) == [b"k0", b"k1", b"k2", b"k3", b"k4"]
    cursor, seen = b"0", []
    while True:
        cursor, keys = d("SCAN", cursor, "COUNT", "2")
        seen += keys
        if cursor == b"0":
            break
    assert sorted(seen) == [b"k0", b"k1", b"k2", b"k3", b"k4"]


def test_store_expiry_spares_what_memory_renewed() -> None:
    d = Daemon(max_sessions=10)
    assert d.store is not None
    d("SET", "renewed", "v", "EX", "10")
    d.store.record(b"stale", row(b"v", d.clock.now - 100, ttl=10))
    d.clock.now += 8
    d("GET", "renewed")  # slides in memory only (written back lazily)
    d.clock.now += 4  # the store's copy of "renewed" is past its deadline now
    assert d.keyspace.expire_store(100) == 1  # "stale" is deleted ...
    assert b"stale" not in d.store.rows
    renewed = d.store.rows[b"renewed"]  # ... "renewed" is written back renewed
    assert renewed.deadline is not None and renewed.deadline > d.clock.now


# ------------------------------------------------- the per-command context


def test_a_command_cannot_start_while_another_runs() -> None:
    d = Daemon(store=False)
    running = Context(d.keyspace, None)
    d.keyspace.enter(running)
    with pytest.raises(AssertionError, match="another one was running"):
        d("GET", "k")
    d.keyspace.leave(running)
    assert d("GET", "k") is None


def test_warm_start_and_close_go_through_rows() -> None:
    d = Daemon(max_sessions=3)
    assert d.store is not None
    for i in range(5):
        d.store.record(b"w%d" % i, row(b"v%d" % i, d.clock.now - 10 + i, ttl=3600))
    assert d.keyspace.warm(3) == 3
    assert sorted(k for k, _ in d.cache.items()) == [b"w2", b"w3", b"w4"]
    d.clock.now += 60
    d("GET", "w4")  # a renewal memory alone knows
    d.keyspace.close()
    stored = d.store.rows[b"w4"]
    assert stored.deadline == pytest.approx(d.clock.now + 3600)
    assert d.store.closed
