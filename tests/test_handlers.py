"""Command handlers without a socket: the dispatcher over a real keyspace and
cache with an injected clock, and an in-memory double of the store interface.

These pin the request path's own rules (read-through before a command runs,
the per-command context, MULTI/EXEC, refusing writes while the store cannot
commit) fast and deterministically; the black-box tests in test_commands.py
and test_persistence.py hold the same behaviour through real clients.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from sessiond.cache import SessionCache
from sessiond.commands import REGISTRY, Client, Dispatcher, ServerState
from sessiond.commands.scripting import TIME_LIMIT_ERROR
from sessiond.config import Config
from sessiond.keyspace import Context, Keyspace, Prepared
from sessiond.protocol import NIL_ARRAY, OK, QUEUED, Error
from sessiond.scripting import ScriptEngine
from sessiond.stats import Stats
from sessiond.store import (
    HASH_SPACE,
    Row,
    SQLiteStore,
    Store,
    StoreError,
    TableCounts,
    TableSlice,
    scan_hash,
)
from sessiond.store.api import Kept

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
        self.table_lag = 0.0  # every change is in its table at once
        self.loads: list[list[bytes]] = []
        self.point_reads: list[bytes] = []  # blocking reads (a script's undeclared keys)
        self.closed = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        return None

    def record(self, key: bytes, change: Kept) -> None:
        if change is None:
            self.rows.pop(key, None)
        else:
            self.rows[key] = Row(*change)  # read back as a Row, as a store does

    def clear(self) -> None:
        self.rows.clear()

    def load(self, key: bytes) -> Row | None:
        self.point_reads.append(key)
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

    def evicted(self, key: bytes, deadline: float) -> None:
        return None  # never called: table_lag is 0

    def recent(self, limit: int) -> list[tuple[bytes, Row]]:
        live = [(k, r) for k, r in self.rows.items() if r.live(self.clock())]
        live.sort(key=lambda kr: -kr[1].accessed_at)
        return live[:limit]

    async def recent_rows(self, limit: int) -> list[tuple[bytes, Row]]:
        return self.recent(limit)

    def after_commit(self, callback: Callable[[StoreError | None], None]) -> None:
        callback(self.failure)

    def hold_commits(self) -> None:
        return None  # every change is durable at once

    def release_commits(self) -> None:
        return None

    def lagging(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


class Daemon:
    """A keyspace, a dispatcher and one client, driven request by request."""

    def __init__(
        self,
        *,
        store: bool = True,
        max_sessions: int = 100,
        scripts: ScriptEngine | None = None,
        backend: Store | None = None,
        **cache: Any,
    ) -> None:
        """A store double if ``store``, or the real ``backend`` given."""
        self.clock = Clock()
        self.cache: SessionCache[bytes, bytes] = SessionCache(
            max_sessions, clock=self.clock, **cache
        )
        self.store = StoreDouble(self.clock) if store and backend is None else None
        self.keyspace = Keyspace(self.cache, backend or self.store)
        self.state = ServerState(Config(), Stats())
        self.dispatcher = Dispatcher(self.keyspace, self.state, scripts=scripts)
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
    reply = d("EXEC")  # a transaction that writes is refused whole, as Redis refuses it
    assert isinstance(reply, Error)
    assert reply.message.startswith("EXECABORT Transaction discarded because of: MISCONF")
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


# SCAN reads its cursor as Redis 7.2 does (strtoul): any unsigned 64-bit
# number, a sign wrapping around as in C. Checked against redis-server in
# test_commands.py.
CURSORS_PAST_THE_END = [
    str(HASH_SPACE),
    str(2**63 - 1),
    str(2**63),
    str(2**64 - 1),
    "-1",  # 2^64 - 1
    str(-(2**63)),  # 2^63
]
NOT_CURSORS = [str(2**64), "99999999999999999999", str(-(2**64)), " 1", "1 ", "0x1", "1_0", "-"]


@pytest.mark.parametrize("backend", ["memory", "store double", "sqlite"])
def test_scan_takes_any_64_bit_cursor_and_count(backend: str, tmp_path: Any) -> None:
    """A cursor past the last key ends the scan, a huge COUNT is only a hint,
    whether the keys are in memory or in the store: the SQLite store binds
    both as 64-bit SQL integers, which 2^63 and COUNT + 1 overflowed."""
    sqlite = SQLiteStore(tmp_path / "scan.db") if backend == "sqlite" else None
    d = Daemon(store=backend == "store double", backend=sqlite, max_sessions=10)
    try:
        for i in range(30):
            d("SET", f"k{i}", "v")
        keys = set(d("KEYS", "*"))  # with a store, 20 of them are only there
        assert len(keys) == (10 if backend == "memory" else 30)
        for cursor in CURSORS_PAST_THE_END:
            assert d("SCAN", cursor) == [b"0", []], cursor
            assert d("SCAN", cursor, "COUNT", str(2**63 - 1), "MATCH", "k*") == [b"0", []]
        for cursor in NOT_CURSORS:
            for words in (("SCAN", cursor), ("HSCAN", "h", cursor), ("SSCAN", "s", cursor)):
                assert message(d(*words)) == "ERR invalid cursor", words
        for count in (str(HASH_SPACE), str(2**63 - 1)):
            cursor, found = d("SCAN", "0", "COUNT", count)
            assert (cursor, sorted(found)) == (b"0", sorted(keys)), count
        assert message(d("SCAN", "0", "COUNT", str(2**63))) == (
            "ERR value is not an integer or out of range"
        )
        assert message(d("SCAN", "0", "COUNT", "0")) == "ERR syntax error"
        for zero in ("", "000", "-0", "+0"):
            cursor, found = d("SCAN", zero, "COUNT", "1000")
            assert (cursor, sorted(found)) == (b"0", sorted(keys)), zero
        d("HSET", "h", "f", "v")
        assert d("HSCAN", "h", str(2**64 - 1)) == [b"0", [b"f", b"v"]]
        assert d("SSCAN", "nokey", str(2**63)) == [b"0", []]
    finally:
        if sqlite is not None:
            sqlite.close()


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

    async def warm() -> int:
        return await d.keyspace.warm(3)()

    assert asyncio.run(warm()) == 3
    assert sorted(k for k, _ in d.cache.items()) == [b"w2", b"w3", b"w4"]
    d.clock.now += 60
    d("GET", "w4")  # a renewal memory alone knows
    d.keyspace.close()
    stored = d.store.rows[b"w4"]
    assert stored.deadline == pytest.approx(d.clock.now + 3600)
    assert d.store.closed


def message(reply: Any) -> str:
    assert isinstance(reply, Error), reply
    return reply.message


def evict(d: Daemon, *keys: str) -> None:
    """Push ``keys`` out of memory (they stay in the store)."""
    for key in keys:
        assert d.cache.invalidate(key.encode())


# ------------------------------------------------------------------ WATCH


def test_exec_aborts_when_another_client_changes_a_watched_key() -> None:
    d = Daemon()
    other = d.new_client()
    d("SET", "k", "1")
    assert d("WATCH", "k") is OK
    assert d.keyspace.watching
    d("SET", "k", "2", client=other)
    d("MULTI")
    d("SET", "k", "mine")
    assert d("EXEC") is NIL_ARRAY
    assert d("GET", "k") == b"2"
    assert d.client.watched is None and not d.keyspace.watching  # EXEC unwatches
    # Unchanged: it runs.
    d("WATCH", "k")
    d("MULTI")
    d("SET", "k", "mine")
    assert d("EXEC") == [OK]


def test_own_changes_deletes_and_flushes_count_as_changes() -> None:
    d = Daemon()
    other = d.new_client()
    for words in (("SET", "k", "x"), ("DEL", "k"), ("EXPIRE", "k", "100"), ("FLUSHDB",)):
        d("SET", "k", "1")
        d("WATCH", "k")
        d(*words)
        d("MULTI")
        d("GET", "k")
        assert d("EXEC") is NIL_ARRAY, words
    # Deleting or flushing a key that does not exist changes nothing, nor does
    # persisting a key without a TTL (as in Redis).
    d("DEL", "k")
    d("WATCH", "k")
    d("DEL", "k", client=other)
    d("FLUSHDB", client=other)
    d("MULTI")
    d("GET", "k")
    assert d("EXEC") == [None]
    d("SET", "p", "v", "EX", "100")
    d("PERSIST", "p")
    d("WATCH", "p")
    assert d("PERSIST", "p", client=other) == 0
    assert d("GETEX", "p", "PERSIST", client=other) == b"v"
    d("MULTI")
    d("GET", "p")
    assert d("EXEC") == [b"v"]


def test_a_watched_key_that_expires_aborts_exec() -> None:
    d = Daemon()
    d("SET", "k", "1", "PX", "500")
    d("WATCH", "k")
    d.clock.now += 1  # past its deadline; nobody has touched it
    d("MULTI")
    d("SET", "other", "x")
    assert d("EXEC") is NIL_ARRAY
    # A key that only the store holds expires just as well.
    d("SET", "s", "1", "PX", "500")
    evict(d, "s")
    d("WATCH", "s")
    assert d.cache.find(b"s") is None  # WATCH read it through, did not admit it
    d.clock.now += 1
    d("MULTI")
    d("GET", "s")
    assert d("EXEC") is NIL_ARRAY


def test_a_key_already_expired_when_watched_is_no_change_when_it_is_removed() -> None:
    """As Redis 7 (multi.c, a watched key's ``expired`` flag): a key past its
    deadline but not yet removed when WATCH runs does not exist for it, so
    its removal by another client's read (or the sweep) changes nothing;
    written again after that, it has changed. Found by the differential test
    against redis-server."""
    d = Daemon()
    other = d.new_client()
    d("SET", "k", "1", "PX", "500")
    d.clock.now += 1  # expired, still in memory
    d("WATCH", "k")
    assert d("GET", "k", client=other) is None  # the read removes it
    d("MULTI")
    d("SET", "x", "1")
    assert d("EXEC") == [OK]
    d("SET", "k", "1", "PX", "500")
    d.clock.now += 1
    d("WATCH", "k")
    d.cache.sweep()  # the sweep removes it: no change either
    d("SET", "k", "2", client=other)  # but a write is
    d("MULTI")
    d("GET", "k")
    assert d("EXEC") is NIL_ARRAY


class _Ticking(Clock):
    """A clock that moves 0.1 s each time it is read, once ``ticking``."""

    ticking = False

    def __call__(self) -> float:
        if self.ticking:
            self.now += 0.1
        return self.now


@pytest.mark.parametrize("how", ["exec", "script", "script in exec"])
def test_no_key_expires_in_the_middle_of_a_transaction_or_a_script(how: str) -> None:
    """As Redis (the command time it caches for EXEC and scripts): every
    command of a transaction or a script reads deadlines against the moment
    it began, so a key alive then is alive to its end. Found by the
    differential test against redis-server: a 1 ms TTL ran out between two
    commands of one EXEC."""
    d = Daemon()
    clock = _Ticking()
    d.cache.clock = d.clock = clock
    d("SET", "k", "v", "PX", "250")
    reads = [("GET", "k"), ("STRLEN", "k"), ("EXISTS", "k"), ("PTTL", "k"), ("GET", "k")]
    clock.ticking = True
    if how == "exec":
        d("MULTI")
        for words in reads:
            d(*words)
        replies = d("EXEC")
    elif how == "script in exec":
        # The script's end must not start the clock again for the rest of EXEC.
        d("MULTI")
        d("EVAL", "return redis.call('GET', 'k')", "0")
        for words in reads[1:]:
            d(*words)
        replies = d("EXEC")
    else:
        calls = ", ".join("redis.call('" + "', '".join(words) + "')" for words in reads)
        replies = d("EVAL", f"return {{{calls}}}", "0")
    clock.ticking = False
    assert replies[:3] == [b"v", 1, 1] and 0 < replies[3] <= 250 and replies[4] == b"v"
    assert d.cache.clock is clock  # running again
    d.clock.now += 1
    assert d("GET", "k") is None


def test_watching_a_key_only_the_store_holds() -> None:
    d = Daemon()
    other = d.new_client()
    d("SET", "s", "1")
    evict(d, "s")
    d("WATCH", "s")
    d("SET", "s", "2", client=other)  # a plain SET: it does not even read the store
    d("MULTI")
    d("GET", "s")
    assert d("EXEC") is NIL_ARRAY
    # Untouched, it runs, and EXEC reads the watched key through if evicted meanwhile.
    d("WATCH", "s")
    evict(d, "s")
    d("MULTI")
    d("GET", "s")
    assert d("EXEC") == [b"2"]


def test_watch_inside_multi_unwatch_discard_reset_and_disconnect() -> None:
    d = Daemon()
    other = d.new_client()
    d("MULTI")
    assert message(d("WATCH", "k")) == "ERR WATCH inside MULTI is not allowed"
    d("SET", "k", "v")
    assert d("EXEC") == [OK]  # the refused WATCH did not abort the transaction
    for clear in (("UNWATCH",), ("MULTI", "DISCARD"), ("RESET",)):
        d("WATCH", "k")
        for word in clear:
            d(word)
        assert d.client.watched is None, clear
        assert not d.keyspace.watching
        d("SET", "k", "changed", client=other)
        d("MULTI")
        d("GET", "k")
        assert d("EXEC") == [b"changed"], clear
    d("WATCH", "k", client=other)
    assert d.keyspace.watching
    d.dispatcher.forget(other)  # the connection closed
    assert not d.keyspace.watching and d.dispatcher.watches.keys == {}


def test_nobody_is_called_for_a_write_when_nobody_watches() -> None:
    d = Daemon()
    d("WATCH", "a", "b")
    a, b = d.new_client(), d.new_client()
    d("WATCH", "a", client=a)
    d("WATCH", "b", client=b)
    d("UNWATCH")
    d("UNWATCH", client=a)
    assert d.keyspace.watching
    d("UNWATCH", client=b)
    assert not d.keyspace.watching
    assert d.keyspace.change_listeners == []
    assert d.cache.listener is None  # the core no longer copies replaced entries


# ---------------------------------------------------------------- scripts


def test_a_script_reads_its_declared_keys_before_it_runs() -> None:
    d = Daemon()
    d("SET", "a", "1")
    d("SET", "b", "2")
    evict(d, "a", "b")
    script = "return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}"
    assert d("EVAL", script, "2", "a", "b") == [b"1", b"2"]
    assert d.store is not None
    assert d.store.loads == [[b"a", b"b"]]
    assert d.store.point_reads == []


def test_an_undeclared_key_is_read_from_the_store_at_once() -> None:
    d = Daemon()
    d("SET", "hidden", "here")
    evict(d, "hidden")
    assert d("EVAL", "return redis.call('GET', 'hidden')", "0") == b"here"
    assert d.store is not None
    assert d.store.point_reads == [b"hidden"]
    assert d.cache.find(b"hidden") is not None  # admitted, as a read-through does
    assert d("EVAL", "return redis.call('EXISTS', 'nowhere')", "0") == 0
    assert d.store.point_reads == [b"hidden", b"nowhere"]
    assert (d.cache.loads_found, d.cache.loads_absent) == (1, 1)
    # Outside scripts nothing reads the store synchronously.
    assert d("GET", "nowhere2") is None
    assert d.store.point_reads == [b"hidden", b"nowhere"]


def test_redis_call_runs_commands_in_the_script_context_and_counts_them() -> None:
    d = Daemon()
    calls = d.state.stats.commands
    before = calls["SET"].calls
    script = "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('INCR', KEYS[1])"
    assert d("EVAL", script, "1", "n", "41") == 42
    assert calls["SET"].calls == before + 1
    assert calls["INCR"].calls == 1
    assert calls["EVAL"].calls == 1
    assert d.client.last_command == "EVAL"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("return redis.call('NOPE')", "ERR Unknown Redis command called from script"),
        ("return redis.call('GET')", "ERR Wrong number of args calling Redis command from script"),
        ("return redis.call('MULTI')", "ERR This Redis command is not allowed from script"),
        ("return redis.call('WATCH', 'k')", "ERR This Redis command is not allowed from script"),
        ("return redis.call('EVAL', 'return 1', '0')", "ERR This Redis command is not allowed"),
        ("return redis.call('SCRIPT', 'FLUSH')", "ERR This Redis command is not allowed"),
        ("return redis.call('CLIENT', 'ID')", "ERR This Redis command is not allowed"),
        ("return redis.call('FLUSHALL')", "ERR This Redis command is not allowed"),
    ],
)
def test_commands_refused_in_scripts(script: str, expected: str) -> None:
    d = Daemon()
    assert message(d("EVAL", script, "0")).startswith(expected)


def test_read_only_scripts_refuse_writes() -> None:
    d = Daemon()
    refused = "ERR Write commands are not allowed from read-only scripts."
    assert message(d("EVAL_RO", "return redis.call('SET', 'k', 'v')", "0")).startswith(refused)
    no_writes = "#!lua flags=no-writes\nreturn redis.call('DEL', 'k')"
    assert message(d("EVAL", no_writes, "0")).startswith(refused)
    assert d("EVAL_RO", "return redis.call('GET', 'k')", "0") is None
    reply = d("EVAL_RO", "#!lua\nreturn 1", "0")
    assert message(reply) == "ERR Can not execute a script with write flag using *_ro command."
    sha = d("SCRIPT", "LOAD", "return redis.call('SET', 'k', 'v')")
    assert message(d("EVALSHA_RO", sha, "0")).startswith(refused)
    assert d("EXISTS", "k") == 0


def test_eval_argument_errors() -> None:
    d = Daemon()
    assert message(d("EVAL", "return 1", "x")) == "ERR value is not an integer or out of range"
    assert message(d("EVAL", "return 1", "-1")) == "ERR Number of keys can't be negative"
    assert message(d("EVAL", "return 1", "2", "a")) == (
        "ERR Number of keys can't be greater than number of args"
    )
    assert message(d("EVALSHA", "abc", "0")) == "NOSCRIPT No matching script. Please use EVAL."
    assert message(d("EVALSHA", "a" * 40, "0")).startswith("NOSCRIPT")
    assert message(d("EVAL", "return (", "0")).startswith("ERR Error compiling script")
    assert message(d("SCRIPT", "KILL")) == "NOTBUSY No scripts in execution right now."
    assert message(d("SCRIPT", "LOAD")) == "ERR wrong number of arguments for 'script|load' command"
    assert message(d("SCRIPT", "NOPE")) == "ERR unknown subcommand 'NOPE'. Try SCRIPT HELP."
    assert message(d("SCRIPT", "FLUSH", "LATER")) == (
        "ERR SCRIPT FLUSH only support SYNC|ASYNC option"
    )


def test_a_script_error_keeps_the_writes_before_it() -> None:
    d = Daemon()
    reply = d("EVAL", "redis.call('SET', 'k', 'v') error('boom')", "0")
    assert "boom" in message(reply)
    assert d("GET", "k") == b"v"  # as in Redis


@pytest.mark.parametrize("timed", [False, True])
def test_a_dropped_daemon_frees_its_script_engine_without_the_cyclic_collector(
    timed: bool,
) -> None:
    """Scripts that fail in every way leave no reference cycle holding the
    script engine. Left to the cyclic collector, an engine is
    freed in the middle of a collection, and closing its Lua state there
    crashed the process (the suite segfaulted "Garbage-collecting" while an
    error reply kept the frame that raised it, and that frame the engine)."""
    gc.disable()
    try:
        d = Daemon(scripts=timed_engine() if timed else None)
        for request in [
            ("EVAL", "return redis.call('SET', 'k', 'v')", "0"),
            ("EVAL", "return (", "0"),
            ("EVAL", "error('x')", "0"),
            ("EVAL", "return redis.call('NOPE')", "0"),
            ("EVAL", "return redis.pcall('NOPE')", "0"),
            ("EVAL", "return redis.pcall('INCR', 'k')", "0"),
            ("EVAL", "return redis.call('GET')", "0"),
            ("EVAL", "return redis.call('EVAL', 'return 1', '0')", "0"),
            ("EVAL", "return cjson.decode('{')", "0"),
            ("EVAL", "return {err = 'x'}", "0"),
            ("EVAL_RO", "return redis.call('SET', 'a', 'b')", "0"),
            ("EVALSHA", "a" * 40, "0"),
            ("EVAL", "redis.call('SET', 'k', 'w') while true do end", "0"),
        ]:
            d(*request)
        engine = weakref.ref(d.dispatcher.scripts)  # a compiled Dispatcher takes no weakref
        del d
        assert engine() is None
    finally:
        gc.enable()


def timed_engine(limit: float = 5.0) -> ScriptEngine:
    return ScriptEngine(
        busy_threshold=0,
        time_limit=limit,
        clock=StepClock(),
        hook_interval=1000,
        time_limit_error=TIME_LIMIT_ERROR,
    )


class StepClock:
    """A monotonic clock that advances one second each time it is read."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_a_stopped_script_gives_hashes_and_sets_back_as_they_were() -> None:
    """Hashes and sets change in place: the undo log keeps copies."""
    d = Daemon(scripts=timed_engine())
    d("HSET", "h", "a", "1", "b", "2")
    d("SADD", "s", "x", "y")
    script = """
        redis.call('HSET', 'h', 'a', 'changed', 'c', '3')
        redis.call('HDEL', 'h', 'b')
        redis.call('HINCRBYFLOAT', 'h', 'n', '1.5')
        redis.call('SREM', 's', 'x')
        redis.call('SADD', 's', 'z')
        redis.call('HSET', 'new', 'f', 'v')
        while true do end
    """
    assert message(d("EVAL", script, "0")).startswith("ERR Script killed")
    assert d("HGETALL", "h") == {b"a": b"1", b"b": b"2"}
    assert d("SMEMBERS", "s") == {b"x", b"y"}
    assert d("EXISTS", "new") == 0


def test_a_script_stopped_by_the_time_limit_is_rolled_back() -> None:
    d = Daemon(scripts=timed_engine())
    assert d.store is not None
    d("SET", "mem", "old", "EX", "100")
    d("SET", "stored", "old-stored")
    d("SET", "gone", "x")
    evict(d, "stored")
    d.clock.now += 10  # TTLs as they were: the rollback must not renew them
    ttl_before = d("PTTL", "mem")
    script = """
        redis.call('SET', 'mem', 'new')
        redis.call('APPEND', 'stored', '+more')
        redis.call('DEL', 'gone')
        redis.call('SET', 'created', 'new', 'EX', '5')
        redis.call('PERSIST', 'mem')
        while true do end
    """
    reply = d("EVAL", script, "0")
    assert message(reply).startswith(
        "ERR Script killed: it ran longer than scripting.time_limit (5s); "
        "its writes were rolled back. script: "
    )
    assert d("PTTL", "mem") == ttl_before  # not renewed by the rollback (PTTL inspects)
    assert d("GET", "mem") == b"old"
    assert d("GET", "stored") == b"old-stored"
    assert d("GET", "gone") == b"x"
    assert d("EXISTS", "created") == 0
    # The store holds the same as memory: the rollback was written through.
    assert d.store.rows[b"mem"].value == b"old"
    assert d.store.rows[b"stored"].value == b"old-stored"
    assert d.store.rows[b"gone"].value == b"x"
    assert b"created" not in d.store.rows
    # Undeclared keys memory did not hold were read from the store: for APPEND's
    # lookup, and for the undo log before SET wrote a key it had never seen.
    assert d.store.point_reads == [b"stored", b"created"]


def test_a_rolled_back_key_keeps_its_deadline() -> None:
    d = Daemon(scripts=timed_engine(), sliding=False)
    d("SET", "k", "v", "EX", "100")
    d.clock.now += 40
    d("EVAL", "redis.call('EXPIRE', 'k', '1000') while true do end", "0")
    assert d("TTL", "k") == 60


def test_the_engine_takes_its_time_limit_from_the_config() -> None:
    d = Daemon()
    assert d.dispatcher.scripts.time_limit == Config().scripting.time_limit == 1.0


# ------------------------------------------------------ string commands


def test_getset_append_getrange_setrange() -> None:
    d = Daemon()
    d("SET", "k", "hello", "EX", "100")
    assert d("GETSET", "k", "world") == b"hello"
    assert d("TTL", "k") == 3600  # replaced as SET does: the default TTL
    assert d("GETSET", "new", "v") is None
    assert d("APPEND", "k", "!") == 6
    d("EXPIRE", "k", "50")
    assert d("APPEND", "k", "?") == 7
    assert d("TTL", "k") == 50  # edited in place: the TTL stays
    assert d("APPEND", "fresh", "abc") == 3
    assert d("GETRANGE", "k", "0", "4") == b"world"
    assert d("GETRANGE", "k", "-2", "-1") == b"!?"
    assert d("GETRANGE", "k", "5", "100") == b"!?"
    assert d("GETRANGE", "k", "-1", "-5") == b""
    assert d("GETRANGE", "k", "3", "1") == b""
    assert d("GETRANGE", "missing", "0", "-1") == b""
    assert message(d("GETRANGE", "k", "a", "1")) == "ERR value is not an integer or out of range"
    assert d("SETRANGE", "k", "0", "W") == 7
    assert d("GET", "k") == b"World!?"
    assert d("SETRANGE", "k", "10", "x") == 11
    assert d("GET", "k") == b"World!?\x00\x00\x00x"
    assert d("SETRANGE", "missing", "0", "") == 0
    assert d("EXISTS", "missing") == 0
    assert d("SETRANGE", "k", "3", "") == 11
    assert d("SETRANGE", "pad", "2", "ab") == 4
    assert d("GET", "pad") == b"\x00\x00ab"
    assert message(d("SETRANGE", "k", "-1", "x")) == "ERR offset is out of range"
    # Refused before a byte is allocated.
    assert message(d("SETRANGE", "k", str(2**40), "x")).startswith(
        "ERR value of 1099511627777 bytes exceeds limits.max_value_size"
    )
    d.keyspace.max_value_size = 8
    assert message(d("APPEND", "pad", "123456")).startswith("ERR value of 10 bytes exceeds")


def test_the_size_error_names_a_key_as_a_key() -> None:
    """limits.max_value_size bounds keys too: the error says which it refused."""
    d = Daemon()
    d.keyspace.max_value_size = 8
    long, short = "k" * 9, "v"
    for words in (
        ("SET", long, short),
        ("SETEX", long, "10", short),
        ("SETNX", long, short),
        ("GETSET", long, short),
        ("MSET", "a", short, long, short),
        ("APPEND", long, short),
        ("SETRANGE", long, "0", short),
        ("INCRBYFLOAT", long, "1"),
        ("INCR", long),
        ("DECRBY", long, "2"),
        ("HSET", long, "f", short),
        ("HSETNX", long, "f", short),
        ("HINCRBY", long, "f", "1"),
        ("SADD", long, "m"),
    ):
        assert message(d(*words)) == (
            "ERR key of 9 bytes exceeds limits.max_value_size (8 bytes)"
        ), words
    d("SET", "a", "v")
    assert message(d("RENAME", "a", long)).startswith("ERR key of 9 bytes exceeds")
    assert message(d("COPY", "a", long)).startswith("ERR key of 9 bytes exceeds")
    assert message(d("SET", "a", long)).startswith("ERR value of 9 bytes exceeds")
    assert message(d("HSET", "h", long, "v")).startswith("ERR field of 9 bytes exceeds")
    assert message(d("HSET", "h", "f", long)).startswith("ERR value of 9 bytes exceeds")
    assert message(d("SADD", "s", long)).startswith("ERR member of 9 bytes exceeds")
    d("SADD", "s", "m")
    assert message(d("SMOVE", "s", long, "m")).startswith("ERR key of 9 bytes exceeds")
    assert d("SMEMBERS", "s") == {b"m"}  # refused before anything moved
    assert d("EXISTS", long) == 0


def test_role_and_lastsave_answer_as_a_lone_redis() -> None:
    """Clients and tools ask ROLE before they trust a connection with writes,
    and LASTSAVE for the last save: a primary with no replicas, and the
    start (every write is in the store when acknowledged), as INFO says."""
    d = Daemon()
    assert d("ROLE") == [b"master", 0, []]
    assert d("LASTSAVE") == int(d.state.started_at)
    assert message(d("ROLE", "x")) == "ERR wrong number of arguments for 'role' command"


def test_incrbyfloat_computes_as_redis_long_double() -> None:
    d = Daemon()
    d("SET", "f", "10.50", "EX", "100")
    assert d("INCRBYFLOAT", "f", "0.1") == b"10.6"
    assert d("INCRBYFLOAT", "f", "5.0e3") == b"5010.60000000000000009"
    assert d("TTL", "f") == 100
    assert d("INCRBYFLOAT", "n", "-1.5") == b"-1.5"
    assert d("INCRBYFLOAT", "n", "1.5") == b"0"
    assert d("INCRBYFLOAT", "h", "0x10") == b"16"
    for bad in (" 1", "1 ", "abc", "nan", "1e5000", ""):
        assert message(d("INCRBYFLOAT", "n", bad)) == "ERR value is not a valid float", bad
    assert message(d("INCRBYFLOAT", "n", "inf")) == ("ERR increment would produce NaN or Infinity")
    d("SET", "s", "text")
    assert message(d("INCRBYFLOAT", "s", "1")) == "ERR value is not a valid float"


def test_msetnx_sets_all_or_nothing_and_sees_the_store() -> None:
    d = Daemon()
    assert d("MSETNX", "a", "1", "b", "2") == 1
    evict(d, "b")
    assert d("MSETNX", "c", "3", "b", "x") == 0  # b is only in the store: it exists
    assert d("EXISTS", "c") == 0
    assert message(d("MSETNX", "a", "1", "b")) == (
        "ERR wrong number of arguments for 'msetnx' command"
    )


# ---------------------------------------------------- keyspace commands


def test_rename_moves_value_and_ttl_and_reads_the_store() -> None:
    d = Daemon(sliding=False)
    d("SET", "src", "v", "EX", "100")
    d("SET", "dst", "old")
    evict(d, "src")
    d.clock.now += 30
    assert d("RENAME", "src", "dst") is OK
    assert d("GET", "dst") == b"v"
    assert d("TTL", "dst") == 70  # the source's deadline moves with it
    assert d("EXISTS", "src") == 0
    assert d.store is not None and b"src" not in d.store.rows
    d("SET", "plain", "p")
    d("PERSIST", "plain")
    d("SET", "dst2", "x", "EX", "5")
    assert d("RENAME", "plain", "dst2") is OK
    assert d("TTL", "dst2") == -1  # no TTL on the source: none on the destination
    assert message(d("RENAME", "nosuch", "x")) == "ERR no such key"
    assert message(d("RENAME", "nosuch", "nosuch")) == "ERR no such key"
    assert d("RENAME", "dst", "dst") is OK
    assert d("RENAMENX", "dst", "dst2") == 0
    assert d("RENAMENX", "dst", "dst") == 0
    assert d("RENAMENX", "dst", "free") == 1
    assert d("GET", "free") == b"v"


def test_rename_with_a_sliding_ttl_keeps_it_sliding() -> None:
    d = Daemon()
    d("SET", "src", "v", "EX", "100")
    d.clock.now += 30
    d("RENAME", "src", "dst")
    assert d("TTL", "dst") == 100
    d.clock.now += 50
    d("GET", "dst")
    assert d("TTL", "dst") == 100


def test_copy() -> None:
    d = Daemon(sliding=False)
    d("SET", "a", "1", "EX", "100")
    evict(d, "a")
    assert d("COPY", "a", "b") == 1
    assert d("GET", "b") == b"1" and d("TTL", "b") == 100
    assert d("COPY", "a", "b") == 0
    d("SET", "c", "other")
    assert d("COPY", "a", "c", "REPLACE") == 1
    assert d("GET", "c") == b"1"
    assert d("COPY", "missing", "x") == 0
    assert d("COPY", "a", "d", "DB", "0") == 1
    assert message(d("COPY", "a", "a")) == "ERR source and destination objects are the same"
    assert message(d("COPY", "a", "e", "DB", "1")) == "ERR DB index is out of range"
    assert message(d("COPY", "a", "e", "DB", "x")) == (
        "ERR value is not an integer or out of range"
    )
    assert message(d("COPY", "a", "e", "NOPE")) == "ERR syntax error"


@pytest.mark.parametrize("store", [True, False])
def test_randomkey(store: bool) -> None:
    d = Daemon(store=store, max_sessions=5)
    assert d("RANDOMKEY") is None
    keys = {f"k{i}".encode() for i in range(20)}
    for key in keys:
        d("SET", key, "v")
    seen = {d("RANDOMKEY") for _ in range(200)}
    assert seen <= keys
    assert len(seen) > 1
    d("FLUSHDB")
    d("SET", "last", "v", "PX", "10")
    d.clock.now += 1
    assert d("RANDOMKEY") is None  # expired keys are not picked


def test_object_and_memory_usage() -> None:
    d = Daemon()
    d("SET", "int", "123")
    d("SET", "short", "hello")
    d("SET", "long", "x" * 45)
    d("SET", "big", "99999")
    assert d("OBJECT", "ENCODING", "int") == "int"
    assert d("OBJECT", "ENCODING", "short") == "embstr"
    assert d("OBJECT", "ENCODING", "long") == "raw"
    assert d("OBJECT", "ENCODING", "missing") is None
    assert d("OBJECT", "REFCOUNT", "int") == 2147483647
    assert d("OBJECT", "REFCOUNT", "big") == 1
    assert d("OBJECT", "REFCOUNT", "short") == 1
    d.clock.now += 7
    assert d("OBJECT", "IDLETIME", "int") == 7
    assert d("OBJECT", "IDLETIME", "int") == 7  # an inspection: it does not touch
    assert message(d("OBJECT", "FREQ", "int")).startswith("ERR An LFU maxmemory policy")
    assert d("OBJECT", "FREQ", "missing") is None
    assert message(d("OBJECT", "ENCODING")) == (
        "ERR wrong number of arguments for 'object|encoding' command"
    )
    assert message(d("OBJECT", "NOPE", "x")) == "ERR unknown subcommand 'NOPE'. Try OBJECT HELP."
    assert d("OBJECT", "HELP")[0].startswith("OBJECT <subcommand>")
    small, large = d("MEMORY", "USAGE", "short"), d("MEMORY", "USAGE", "long")
    assert 0 < small < large
    assert d("MEMORY", "USAGE", "short", "SAMPLES", "0") == small
    assert d("MEMORY", "USAGE", "missing") is None
    assert message(d("MEMORY", "USAGE", "short", "SAMPLES", "-1")) == "ERR syntax error"
    assert message(d("MEMORY", "USAGE", "short", "FOO")) == "ERR syntax error"
    evict(d, "short")
    assert d("OBJECT", "ENCODING", "short") == "embstr"  # read through from the store
    assert d("MEMORY", "USAGE", "short") == small
    assert d.cache.find(b"short") is None  # inspected, not admitted


# ------------------------------------------------------- server commands


@pytest.mark.parametrize("container", ["CONFIG", "COMMAND"])
def test_config_and_command_help_list_the_subcommands_they_take(container: str) -> None:
    """Their errors say "Try CONFIG HELP." (COMMAND HELP): HELP lists, in
    Redis' frame, exactly the subcommands declared (which COMMAND DOCS shows)."""
    d = Daemon(store=False)
    lines = d(container, "HELP")
    assert lines[0] == f"{container} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"
    assert lines[-2:] == ["HELP", "    Print this help."]
    named = {line.split()[0] for line in lines[1:] if line[0] not in " ("}
    assert named == set(REGISTRY[container].subcommands)
    for sub in named:
        reply = d(container, sub)
        assert not (isinstance(reply, Error) and "unknown subcommand" in reply.message), sub
    assert message(d(container, "HELP", "x")) == (
        f"ERR wrong number of arguments for '{container.lower()}|help' command"
    )
    assert message(d(container, "NOPE")) == (
        f"ERR unknown subcommand 'NOPE'. Try {container} HELP."
    )


def test_command_list_filterby() -> None:
    d = Daemon(store=False)
    everything = d("COMMAND", "LIST")
    assert len(everything) == d("COMMAND", "COUNT")
    assert d("COMMAND", "LIST", "filterby", "pattern", "HG*") == ["hget", "hgetall"]
    assert d("COMMAND", "LIST", "FILTERBY", "PATTERN", "session.*") == [
        "session.create",
        "session.info",
        "session.invalidate",
        "session.list",
    ]
    hashes = d("COMMAND", "LIST", "FILTERBY", "ACLCAT", "Hash")
    assert "hset" in hashes and "hrandfield" in hashes and "get" not in hashes
    writes = set(d("COMMAND", "LIST", "FILTERBY", "ACLCAT", "write"))
    assert {"set", "del", "hset", "sadd", "flushdb", "session.create"} <= writes
    assert not writes & {"get", "scan", "ping"}
    assert {"slowlog", "latency"} <= set(d("COMMAND", "LIST", "FILTERBY", "ACLCAT", "admin"))
    assert d("COMMAND", "LIST", "FILTERBY", "ACLCAT", "@hash") == []
    assert d("COMMAND", "LIST", "FILTERBY", "MODULE", "anything") == []
    for words in (("foo",), ("FILTERBY", "PATTERN"), ("FILTERBY", "NAME", "x"), ("x", "y", "z")):
        assert message(d("COMMAND", "LIST", *words)) == "ERR syntax error", words


def test_client_list_flags_and_command_as_redis_shows_them() -> None:
    d = Daemon(store=False)
    other = d.new_client()

    def shown() -> tuple[str, str]:
        line = other.info_line("/run/s.sock")
        fields = dict(field.split("=", 1) for field in line.split(" "))
        return fields["flags"], fields["cmd"]

    assert shown() == ("U", "NULL")  # nothing yet: every client is a Unix socket's
    d("CLIENT", "SETNAME", "x", client=other)
    assert shown() == ("U", "client|setname")
    d("CONFIG", "GET", "maxmemory", client=other)
    assert shown() == ("U", "config|get")
    d("CLIENT", "NOPE", client=other)
    assert shown() == ("U", "NULL")  # Redis' lookup finds no such command
    d("NOSUCH", client=other)
    assert shown() == ("U", "NULL")
    d("GET", client=other)  # refused (arity), but it was the command
    assert shown() == ("U", "get")
    d("WATCH", "w", client=other)
    d("SET", "w", "1")
    assert shown() == ("dU", "watch")
    d("MULTI", client=other)
    d("GET", "w", client=other)
    assert shown() == ("xdU", "get")  # queued
    d("EXEC", client=other)
    assert shown() == ("U", "exec")  # not what it ran
    d("EVAL", "return redis.call('GET', 'w')", "0", client=other)
    assert shown() == ("U", "eval")
    d("SUBSCRIBE", "ch", client=other)
    assert shown() == ("PU", "subscribe")


def test_command_getkeys_checks_as_redis_7_2() -> None:
    d = Daemon(store=False)
    assert d("COMMAND", "GETKEYS", "GET", "k") == [b"k"]
    assert d("COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2") == [b"a", b"b"]
    assert d("COMMAND", "GETKEYS", "OBJECT", "ENCODING", "k") == [b"k"]
    assert d("COMMAND", "GETKEYS", "EVAL", "return 1", "0") == []  # keys are optional
    assert d("COMMAND", "GETKEYS", "SESSION.INFO", "id") == [b"id"]
    for words, error in (
        (("NOSUCH",), "ERR Invalid command specified"),
        (("OBJECT", "NOPE", "k"), "ERR Invalid command specified"),
        (("PING", "x"), "ERR The command has no key arguments"),
        (("CLIENT", "LIST"), "ERR The command has no key arguments"),
        (("OBJECT",), "ERR The command has no key arguments"),
        (("OBJECT", "HELP"), "ERR The command has no key arguments"),
        (("GET",), "ERR Invalid number of arguments specified for command"),
        (("GET", "a", "b"), "ERR Invalid number of arguments specified for command"),
        (("MSET", "a"), "ERR Invalid number of arguments specified for command"),
        (("MEMORY", "USAGE"), "ERR Invalid number of arguments specified for command"),
    ):
        assert message(d("COMMAND", "GETKEYS", *words)) == error, words


def test_config_errors_are_redis_7s() -> None:
    d = Daemon(store=False)
    assert message(d("CONFIG", "GET")) == "ERR wrong number of arguments for 'config|get' command"
    assert message(d("CONFIG", "SET", "a")) == (
        "ERR wrong number of arguments for 'config|set' command"
    )
    assert message(d("CONFIG", "SET", "a", "b", "c")) == "ERR syntax error"
    assert message(d("CONFIG", "RESETSTAT", "x")) == (
        "ERR wrong number of arguments for 'config|resetstat' command"
    )
    # sessiond never rewrites its config file: not a subcommand it has
    assert message(d("CONFIG", "REWRITE")) == "ERR unknown subcommand 'REWRITE'. Try CONFIG HELP."
    assert d("CONFIG", "GET", "maxmemory") == {"maxmemory": "0"}
    assert d("CONFIG", "RESETSTAT") is OK


# ------------------------------------------------ with hashes and sets


def test_a_rolled_back_hash_or_set_is_as_it_was_not_as_the_script_left_it() -> None:
    """Hashes and sets are changed in place: the undo log copies them."""
    d = Daemon(scripts=timed_engine())
    d("HSET", "h", "a", "1", "b", "2")
    d("SADD", "s", "x", "y")
    script = """
        redis.call('HSET', 'h', 'a', 'changed', 'c', '3')
        redis.call('HDEL', 'h', 'b')
        redis.call('SADD', 's', 'z')
        redis.call('SREM', 's', 'x')
        while true do end
    """
    assert "scripting.time_limit" in message(d("EVAL", script, "0"))
    assert d("HGETALL", "h") == {b"a": b"1", b"b": b"2"}
    assert d("SMEMBERS", "s") == {b"x", b"y"}
    assert d.store is not None
    assert d.store.rows[b"h"].kind == 1  # written back as a hash


def test_string_commands_on_a_hash_are_wrongtype_and_change_nothing() -> None:
    d = Daemon()
    d("HSET", "h", "f", "v")
    for words in (
        ("GETSET", "h", "x"),
        ("APPEND", "h", "x"),
        ("GETRANGE", "h", "0", "1"),
        ("SETRANGE", "h", "0", "x"),
        ("INCRBYFLOAT", "h", "1"),
    ):
        assert message(d(*words)).startswith("WRONGTYPE"), words
    assert d("HGETALL", "h") == {b"f": b"v"}


def test_copy_of_a_hash_is_a_copy_and_rename_moves_it() -> None:
    d = Daemon()
    d("HSET", "h", "f", "v")
    d("SADD", "s", "m")
    assert d("COPY", "h", "h2") == 1
    assert d("COPY", "s", "s2") == 1
    d("HSET", "h2", "f", "other")
    d("SADD", "s2", "n")
    assert d("HGET", "h", "f") == b"v"
    assert d("SMEMBERS", "s") == {b"m"}
    evict(d, "h")
    assert d("RENAME", "h", "moved") is OK  # from the store
    assert d("HGETALL", "moved") == {b"f": b"v"}
    assert d("TYPE", "moved") == "hash"


def test_random_counts_out_of_range_are_refused() -> None:
    """-2^63 has no negation in 64 bits: Redis refuses it (it answered an
    empty array for a missing key, and ran out of memory for one that exists)."""
    d = Daemon()
    d("HSET", "h", "f", "v")
    d("SADD", "s", "m")
    most = 2**63 - 1
    out_of_range = f"ERR value is out of range, value must between {-most} and {most}"
    for key in ("nokey", "h"):
        assert message(d("HRANDFIELD", key, str(-(2**63)))) == out_of_range
        assert message(d("HRANDFIELD", key, str(2**62), "WITHVALUES")) == (
            "ERR value is out of range"
        )
    for key in ("nokey", "s"):
        assert message(d("SRANDMEMBER", key, str(-(2**63)))) == out_of_range
    assert d("HRANDFIELD", "nokey", str(2**62 - 1), "WITHVALUES") == []
    assert d("HRANDFIELD", "h", str(2**63 - 1)) == [b"f"]
    assert d("SRANDMEMBER", "s", str(2**63 - 1)) == [b"m"]
    # the count is read before the rest, as Redis does
    assert message(d("HRANDFIELD", "h", "x", "nope")) == (
        "ERR value is not an integer or out of range"
    )
    assert message(d("HRANDFIELD", "h", "1", "nope")) == "ERR syntax error"


def test_a_repeating_count_whose_reply_passes_the_output_limit_is_refused() -> None:
    """A negative count asks for that many elements, repeats allowed, built
    whole before the reply leaves: -2^62 took the daemon to 11 GB (and
    Redis, which builds it too, was killed at 23 GB), for a reply its client
    would be dropped for at limits.max_output_buffer anyway. A count whose
    reply cannot be smaller than that limit is refused; one within it runs."""
    d = Daemon()
    d("HSET", "h", "f", "v")
    d("SADD", "s", "m")
    limit = 64 * 1024 * 1024  # the default
    fits = -(limit // 6)  # six bytes at least an element ("$0\r\n\r\n")
    for words in (("SRANDMEMBER", "s"), ("HRANDFIELD", "h")):
        refused = message(d(*words, str(fits - 1)))
        assert refused.startswith(f"ERR a count of {fits - 1} makes a reply of at least "), refused
        assert refused.endswith(f"over limits.max_output_buffer ({limit} bytes)")
        assert message(d(*words, str(-(2**62)))).startswith("ERR a count of")
        assert d(*words, "-3") == [b"m" if words[0] == "SRANDMEMBER" else b"f"] * 3
    assert message(d("HRANDFIELD", "h", str(fits // 2 - 1), "WITHVALUES")).startswith(
        "ERR a count of"
    )
    assert d("SRANDMEMBER", "nokey", str(-(2**62))) == []  # nothing to repeat


def test_object_encoding_and_memory_usage_of_containers() -> None:
    d = Daemon()
    d("HSET", "small", "f", "v")
    d("HSET", "wide", "f", "x" * 65)
    d("SADD", "ints", "1", "2")
    d("SADD", "words", "a", "b")
    d("SADD", "many", *[str(i) for i in range(600)])
    assert d("OBJECT", "ENCODING", "small") == "listpack"
    assert d("OBJECT", "ENCODING", "wide") == "hashtable"
    assert d("OBJECT", "ENCODING", "ints") == "intset"
    assert d("OBJECT", "ENCODING", "words") == "listpack"
    assert d("OBJECT", "ENCODING", "many") == "hashtable"
    assert d("OBJECT", "REFCOUNT", "small") == 1
    assert d("MEMORY", "USAGE", "wide") > d("MEMORY", "USAGE", "small") > 0


def test_what_client_pause_write_holds() -> None:
    """Redis' CLIENT PAUSE WRITE holds writes and what may replicate: PUBLISH
    and scripts that do not declare no-writes."""
    d = Daemon()

    def held(*words: str) -> bool:
        args = [w.encode() for w in words]
        cmd = d.dispatcher.resolve(args[0])
        assert cmd is not None
        return d.dispatcher.may_write(d.client, cmd, args)

    assert held("SET", "k", "v")
    assert held("PUBLISH", "ch", "x")
    assert held("EVAL", "return 1", "0")
    assert not held("EVAL", "#!lua flags=no-writes\nreturn 1", "0")
    assert not held("GET", "k")
    assert not held("PUBSUB", "CHANNELS")


def test_a_command_s_one_key_to_read_is_the_key_its_load_names() -> None:
    """Command.load_one, the read-through check's shortcut (Dispatcher.prepare),
    names the key ``load`` names, for every command that has one, at every
    length of arguments that reaches it; GET has one, MGET and SET none."""
    shortcuts = 0
    for cmd in REGISTRY.values():
        if not cmd.load_one:
            continue
        shortcuts += 1
        assert cmd.load is not None and cmd.ahead is None
        for n in range(cmd.load_one + 1, cmd.load_one + 6):
            args = [b"%d" % i for i in range(n)]
            assert cmd.load(args) == [args[cmd.load_one]], (cmd.name, n)
    assert REGISTRY["GET"].load_one == 1
    assert REGISTRY["MGET"].load_one == 0
    assert shortcuts > 20
