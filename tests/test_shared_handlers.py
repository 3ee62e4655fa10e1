"""The near cache's decision path without a socket or a database: several
:class:`SharedKeyspace` "hosts" over one in-memory double of the shared store,
driven request by request in one event loop with an injected clock.

The double keeps the database's rows, takes each key's lock for a decision (as
the advisory locks do), commits a decision's changes when it is finished, and
queues every committed change as a notification that the test delivers when it
chooses: so the races of a real fleet (a stale copy in memory, a notification
arriving between two commands, a read under way when a change is heard) are
played out exactly. tests/test_fleet.py holds the same behaviour with real
daemons on a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from sessiond.cache import SessionCache
from sessiond.commands import Client, ServerState
from sessiond.commands.shared import SharedDispatcher
from sessiond.config import Config, parse_config
from sessiond.keyspace import Prepared
from sessiond.protocol import NIL_ARRAY, OK, Error
from sessiond.shared import CHAIN_LIMIT, SharedKeyspace
from sessiond.stats import Stats
from sessiond.store import (
    HASH_SPACE,
    Change,
    Coherence,
    Decision,
    Renewal,
    Row,
    StoreError,
    TableCounts,
    TableSlice,
    scan_hash,
)
from sessiond.store.api import Kept, as_row
from test_handlers import Clock

T = TypeVar("T")


class Database:
    """The shared rows, the keys' locks, and the notifications not yet delivered."""

    def __init__(self) -> None:
        self.rows: dict[bytes, Row] = {}
        self.versions: dict[bytes, int] = {}  # as the version column: +1 a write
        self.locks: dict[bytes, asyncio.Lock] = {}
        self.hosts: list[StoreDouble] = []
        self.queued: list[tuple[StoreDouble, list[bytes]]] = []

    def commit(self, sender: StoreDouble, changes: dict[bytes, Change]) -> None:
        for key, change in changes.items():
            if change is None:
                self.rows.pop(key, None)
                self.versions.pop(key, None)
            else:
                self.versions[key] = self.versions[key] + 1 if key in self.rows else 1
                self.rows[key] = change
        if changes:
            self.queued.append((sender, list(changes)))

    def deliver(self) -> None:
        """Every host hears every change another host committed."""
        queued, self.queued = self.queued, []
        for sender, keys in queued:
            for host in self.hosts:
                if host is not sender and host.listener is not None and host.coherent:
                    host.listener.invalidated(keys)


class DecisionDouble:
    def __init__(self, keys: frozenset[bytes], rows: dict[bytes, Row | None]) -> None:
        self.keys = keys
        self.rows = rows
        self.versions: dict[bytes, int] = {}
        self.changes: dict[bytes, Change] = {}
        self.error: StoreError | None = None
        self.locks: list[asyncio.Lock] = []

    def record(self, key: bytes, change: Kept) -> None:
        self.changes[key] = as_row(change)


class StoreDouble:
    """One host's view of the shared store (:class:`~sessiond.store.SharedStore`).
    Plain writes commit at once; ``gate`` (an event) holds reads and decisions
    until it is set; ``fail_commit`` makes the next decision's commit fail."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.hosts.append(self)
        self.failure: StoreError | None = None
        self.table_lag = 0.0
        self.coherent = True
        self.listener: Coherence | None = None
        self.gate: asyncio.Event | None = None
        self.fail_commit = False
        self.opened = 0
        self.open: set[DecisionDouble] = set()
        self.renewed: dict[bytes, Renewal] = {}
        self.expired_at: list[float] = []
        self.loads: list[list[bytes]] = []
        self.whole_reads = 0

    def subscribe(self, listener: Coherence) -> None:
        self.listener = listener

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        return None

    def record(self, key: bytes, change: Kept) -> None:
        self.db.commit(self, {key: as_row(change)})  # the database reads back Rows

    def clear(self) -> None:
        self.db.rows.clear()

    def load(self, key: bytes) -> Row | None:
        return self.db.rows.get(key)

    async def load_many(self, keys: list[bytes]) -> dict[bytes, Row | None]:
        self.loads.append(list(keys))
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise StoreError("store read failed: database gone")
        return {k: self.db.rows.get(k) for k in keys}

    async def decide(self, keys: list[bytes]) -> DecisionDouble:
        await asyncio.sleep(0)  # a round trip: other commands run meanwhile
        locks = [self.db.locks.setdefault(k, asyncio.Lock()) for k in sorted(set(keys))]
        for lock in locks:
            await lock.acquire()
        if self.gate is not None:
            await self.gate.wait()
        self.opened += 1
        decision = DecisionDouble(frozenset(keys), {k: self.db.rows.get(k) for k in keys})
        decision.versions = {k: self.db.versions[k] for k in keys if k in self.db.versions}
        decision.locks = locks
        self.open.add(decision)
        return decision

    def finish(self, decision: Decision, done: Callable[[StoreError | None], None]) -> None:
        assert isinstance(decision, DecisionDouble)

        def commit() -> None:
            if self.fail_commit:
                self.fail_commit = False
                decision.error = StoreError("store write failed: connection lost")
            else:
                self.db.commit(self, decision.changes)
            for lock in decision.locks:
                lock.release()
            self.open.discard(decision)
            done(decision.error)

        asyncio.get_running_loop().call_soon(commit)

    def after_commit(self, callback: Callable[[StoreError | None], None]) -> None:
        self.after_commit_for(callback, [])

    def hold_commits(self) -> None:
        return None  # commits run on the loop, as PostgresStore's do

    def release_commits(self) -> None:
        return None

    def recorded(self) -> int:
        return 0  # plain writes are durable at once: none waits

    def uncommitted(self) -> bool:
        return False

    def after_commit_for(
        self,
        callback: Callable[[StoreError | None], None],
        decisions: list[Decision],
        through: int | None = None,
        shown: bool = False,
    ) -> None:
        async def wait() -> None:
            while any(d in self.open for d in decisions):
                await asyncio.sleep(0)
            callback(next((d.error for d in decisions if d.error is not None), None))

        _background.add(asyncio.ensure_future(wait()))

    def lagging(self) -> bool:
        return False

    def renew(self, renewals: dict[bytes, Renewal]) -> None:
        self.renewed.update(renewals)

    def expire_due(self, now: float) -> None:
        self.expired_at.append(now)

    async def recent_rows(self, limit: int) -> list[tuple[bytes, Row]]:
        return []

    def count_rows(self) -> TableCounts:
        expiring = sum(1 for r in self.db.rows.values() if r.deadline is not None)
        return TableCounts({}, len(self.db.rows), expiring)

    def scan_rows(self, cursor: int, count: int | None) -> TableSlice:
        rows = sorted((scan_hash(k), k, r.deadline, r.kind) for k, r in self.db.rows.items())
        return TableSlice([r for r in rows if r[0] >= cursor], {}, True, HASH_SPACE)

    async def whole_table(self, read: Callable[[], T], operation: str) -> T:
        self.whole_reads += 1
        return read()

    def due(self, now: float, limit: int) -> list[bytes]:
        return []

    def evicted(self, key: bytes, deadline: float) -> None:
        return None

    def recent(self, limit: int) -> list[tuple[bytes, Row]]:
        return []

    def close(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


_background: set[asyncio.Future[None]] = set()


class Host:
    """One daemon's keyspace and dispatcher over the shared double."""

    def __init__(self, db: Database, clock: Clock, *, max_sessions: int = 100) -> None:
        self.clock = clock
        self.cache: SessionCache[bytes, Any] = SessionCache(max_sessions, clock=clock)
        self.store = StoreDouble(db)
        self.keyspace = SharedKeyspace(self.cache)
        self.keyspace.attach_shared(self.store)
        self.state = ServerState(Config(), Stats())
        self.dispatcher = SharedDispatcher(self.keyspace, self.state)

    def client(self) -> Client:
        return self.state.new_client(authenticated=True)

    async def __call__(self, *words: str | bytes, client: Client | None = None) -> Any:
        """One request as the server runs it: prepare until ready, execute, and
        hold a write's reply until its commit (as under durability: always)."""
        args = [w.encode() if isinstance(w, str) else w for w in words]
        who = client or self.client()
        cmd = self.dispatcher.resolve(args[0])
        prepared: Prepared | None = None
        while True:
            work = self.dispatcher.prepare(who, cmd, args, prepared)
            if work is None:
                break
            prepared = await work
        reply = self.dispatcher.execute(who, cmd, args, prepared)
        if cmd is not None and cmd.waits_for_commit and not isinstance(reply, Error):
            committed: asyncio.Future[StoreError | None] = (
                asyncio.get_running_loop().create_future()
            )
            self.keyspace.after_commit(committed.set_result, who)
            error = await committed
            if error is not None:
                return Error(f"ERR {error}")
        return reply


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def fleet(n: int = 2, **kwargs: Any) -> tuple[Database, list[Host]]:
    db = Database()
    clock = Clock()
    return db, [Host(db, clock, **kwargs) for _ in range(n)]


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


# -------------------------------------------------------------- decisions


def test_decisions_read_the_database_not_a_stale_copy() -> None:
    async def scenario() -> None:
        db, (a, b) = fleet()
        await a("SET", "k", "1")
        assert await b("GET", "k") == b"1"  # B caches "1"
        await a("SET", "k", "41")  # B has not heard of it yet
        assert b.cache.find(b"k") is not None
        assert await b("GET", "k") == b"1"  # a plain read: memory, within the lag
        assert await b("INCR", "k") == 42  # a decision: the database's value
        assert await b("SET", "k", "x", "NX") is None
        assert await b("SET", "k", "y", "XX", "GET") == b"42"
        assert db.rows[b"k"].value == b"y"
        db.deliver()
        assert await a("GET", "k") == b"y"

    run(scenario)


def test_two_hosts_never_both_win_set_nx() -> None:
    async def scenario() -> None:
        db, (a, b) = fleet()
        db_gate = asyncio.Event()
        a.store.gate = db_gate
        b.store.gate = db_gate
        both = [
            asyncio.ensure_future(a("SET", "lock", "a", "NX", "PX", "10000")),
            asyncio.ensure_future(b("SET", "lock", "b", "NX", "PX", "10000")),
        ]
        await settle()
        db_gate.set()
        replies = await asyncio.gather(*both)
        assert sorted(r is OK for r in replies) == [False, True]
        winner = b"a" if replies[0] is OK else b"b"
        assert db.rows[b"lock"].value == winner

    run(scenario)


def test_commands_of_a_host_wait_for_its_decision_on_their_keys_and_keep_their_order() -> None:
    async def scenario() -> None:
        db, (a,) = fleet(1)
        gate = asyncio.Event()
        a.store.gate = gate
        incr = asyncio.ensure_future(a("INCR", "n"))
        await settle()
        get = asyncio.ensure_future(a("GET", "n"))
        put = asyncio.ensure_future(a("SET", "n", "100"))
        other = asyncio.ensure_future(a("SET", "m", "1"))
        await settle()
        assert other.done() and not get.done() and not put.done()
        gate.set()
        assert await incr == 1
        assert await get == b"1"  # after the decision, not before
        assert await put is OK
        assert db.rows[b"n"].value == b"100"

    run(scenario)


def test_waiting_decisions_of_a_host_chain_in_one_transaction() -> None:
    async def scenario() -> None:
        db, (a,) = fleet(1)
        gate = asyncio.Event()
        a.store.gate = gate
        incrs = [asyncio.ensure_future(a("INCR", "n")) for _ in range(CHAIN_LIMIT + 4)]
        await settle()
        gate.set()
        assert sorted(await asyncio.gather(*incrs)) == list(range(1, CHAIN_LIMIT + 5))
        assert db.rows[b"n"].value == str(CHAIN_LIMIT + 4).encode()
        assert a.store.opened == 2  # the limit, then the rest

    run(scenario)


def test_a_notification_between_two_chained_commands_loses_no_increment() -> None:
    """A change another host committed before this decision took its locks is
    heard while the decision runs: memory drops its copy, and the next command
    of the chain must still count from what the one before it left."""

    async def scenario() -> None:
        db, (a, b) = fleet()
        await b("SET", "n", "10")
        gate = asyncio.Event()
        a.store.gate = gate
        incrs = [asyncio.ensure_future(a("INCR", "n")) for _ in range(3)]
        await settle()
        gate.set()
        for _ in range(200):
            await asyncio.sleep(0)
            db.deliver()  # B's old SET, heard again and again meanwhile
            a.keyspace.invalidated([b"n"])
        assert sorted(await asyncio.gather(*incrs)) == [11, 12, 13]
        assert db.rows[b"n"].value == b"13"

    run(scenario)


def test_a_failed_decision_answers_an_error_and_forgets_its_keys() -> None:
    async def scenario() -> None:
        _db, (a,) = fleet(1)
        await a("SET", "n", "5")
        a.store.fail_commit = True
        reply = await a("INCR", "n")
        assert isinstance(reply, Error) and "connection lost" in reply.message
        assert a.cache.find(b"n") is None  # memory's 6 never committed
        assert await a("GET", "n") == b"5"
        assert not a.keyspace.holds

    run(scenario)


def test_a_held_reply_waits_for_its_own_decisions_whoever_asks_for_a_commit_first() -> None:
    """A connection whose pipeline waits for its next decision to open has
    its earlier reply held for the commit of the decision before it. Another
    connection asking for its own commit meanwhile must not take that
    decision: the first connection's reply would then wait for nothing and
    say OK for a write whose commit failed (and the other's would carry an
    error that is not its own)."""

    async def scenario() -> None:
        _db, (a,) = fleet(1)
        first, second = a.client(), a.client()
        cmd = a.dispatcher.resolve(b"INCR")
        args = [b"INCR", b"x"]
        prepared: Prepared | None = None
        while (work := a.dispatcher.prepare(first, cmd, args, prepared)) is not None:
            prepared = await work
        a.store.fail_commit = True  # the commit of this decision fails
        assert a.dispatcher.execute(first, cmd, args, prepared) == 1  # its reply is held
        # Before the first connection asks for its commit, the second writes
        # and asks for its own.
        assert await a("INCR", "y", client=second) == 1
        committed: asyncio.Future[StoreError | None] = asyncio.get_running_loop().create_future()
        a.keyspace.after_commit(committed.set_result, first)
        error = await committed
        assert error is not None and "connection lost" in str(error)

    run(scenario)


def test_what_a_closed_connection_decided_is_not_kept_for_it() -> None:
    async def scenario() -> None:
        _db, (a,) = fleet(1)
        client = a.client()
        cmd = a.dispatcher.resolve(b"INCR")
        args = [b"INCR", b"x"]
        prepared: Prepared | None = None
        while (work := a.dispatcher.prepare(client, cmd, args, prepared)) is not None:
            prepared = await work
        a.dispatcher.execute(client, cmd, args, prepared)
        assert client in a.keyspace.decisions
        a.dispatcher.forget(client)  # its connection closed before it asked
        assert client not in a.keyspace.decisions

    run(scenario)


def test_a_decision_for_a_request_that_never_runs_is_passed_on() -> None:
    async def scenario() -> None:
        db, (a,) = fleet(1)
        client = a.client()
        cmd = a.dispatcher.resolve(b"INCR")
        work = a.dispatcher.prepare(client, cmd, [b"INCR", b"n"], None)
        assert work is not None
        prepared = await work
        assert prepared.decision is not None and a.keyspace.holds
        waiting = asyncio.ensure_future(a("INCR", "n"))
        await settle()
        a.keyspace.discard(prepared)  # the connection went away
        assert await waiting == 1
        await settle()
        assert not a.keyspace.holds and db.rows[b"n"].value == b"1"

    run(scenario)


def test_a_disabled_command_opens_no_decision_and_reads_nothing() -> None:
    """security.disabled_commands on a shared store: the refused request
    neither decides (a transaction holding its keys' locks) nor reads the
    table (KEYS), nor waits for a decision holding its key: it is answered
    -NOPERM at once, as on a store of one host."""

    async def scenario() -> None:
        db, (a,) = fleet(1)
        disabled = {"security": {"disabled_commands": ["INCR", "KEYS", "GET"]}}
        a.state.configure(parse_config(disabled, Path(".")))
        await a("SET", "n", "1")
        assert a.store.whole_reads == 0 and a.store.opened == 0
        a.store.loads.clear()
        for words in (("INCR", "n"), ("KEYS", "*"), ("GET", "cold")):
            reply = await a(*words)
            assert isinstance(reply, Error), (words, reply)
            assert reply.message.startswith("NOPERM User default has no permissions"), reply
        assert a.store.opened == 0 and a.store.whole_reads == 0 and a.store.loads == []
        # A decision of another request holds the key: the refusal does not wait for it.
        gate = asyncio.Event()
        a.store.gate = gate
        held = asyncio.ensure_future(a("SET", "n", "2", "XX"))
        await settle()
        assert a.keyspace.holds
        client = a.client()
        cmd = a.dispatcher.resolve(b"INCR")
        assert a.dispatcher.prepare(client, cmd, [b"INCR", b"n"], None) is None
        gate.set()
        assert await held == OK
        assert db.rows[b"n"].value == b"2"

    run(scenario)


def test_no_decision_opens_while_the_store_cannot_commit() -> None:
    async def scenario() -> None:
        _db, (a,) = fleet(1)
        a.store.failure = StoreError("store write failed: connection lost")
        reply = await a("INCR", "n")
        assert isinstance(reply, Error) and reply.message.startswith("MISCONF")
        assert a.store.opened == 0 and not a.keyspace.holds

    run(scenario)


def test_exec_decides_when_a_queued_command_does() -> None:
    async def scenario() -> None:
        _db, (a, b) = fleet()
        await a("SET", "x", "1")
        assert await b("GET", "x") == b"1"
        await a("SET", "x", "5")  # not heard by B
        client = b.client()
        assert await b("MULTI", client=client) is OK
        await b("INCR", "x", client=client)
        await b("GET", "x", client=client)
        assert await b("EXEC", client=client) == [6, b"6"]
        assert b.store.opened == 1

    run(scenario)


def test_exec_aborts_on_a_change_the_host_has_not_heard_of() -> None:
    async def scenario() -> None:
        _db, (a, b) = fleet()
        await a("SET", "k", "1")
        watcher = a.client()
        assert await a("WATCH", "k", client=watcher) is OK
        await b("SET", "k", "2")  # not delivered: A's memory cannot know
        assert await a("MULTI", client=watcher) is OK
        await a("SET", "k", "3", client=watcher)
        assert await a("EXEC", client=watcher) is NIL_ARRAY
        assert await b("GET", "k") == b"2"

    run(scenario)


def test_a_watch_chained_after_a_change_to_its_key_counts_that_change_as_before_it() -> None:
    """WATCH waiting for this host's INCR decides in the same transaction,
    after it: the version it notes is the one that commit writes, so an EXEC
    with nothing changed since runs."""

    async def scenario() -> None:
        db, (a,) = fleet(1)
        await a("SET", "k", "1")
        gate = asyncio.Event()
        a.store.gate = gate
        watcher = a.client()
        incr = asyncio.ensure_future(a("INCR", "k"))
        await settle()
        watch = asyncio.ensure_future(a("WATCH", "k", client=watcher))
        await settle()
        gate.set()
        assert await incr == 2
        assert await watch is OK
        assert a.store.opened == 1  # one transaction: the WATCH joined the INCR's
        a.store.gate = None
        assert await a("MULTI", client=watcher) is OK
        await a("SET", "k", "x", client=watcher)
        assert await a("EXEC", client=watcher) == [OK]
        assert db.rows[b"k"].value == b"x"

    run(scenario)


# Writes whose outcome does not depend on the key's current value
# (docs/shared-store.md, "plain writes"): memory and a group commit suffice.
PLAIN_WRITES = {
    "DEL", "UNLINK", "FLUSHALL", "FLUSHDB", "MSET", "PSETEX", "SETEX",
    "SESSION.CREATE", "SESSION.INVALIDATE",
}  # fmt: skip


def test_every_write_is_decided_by_the_database_or_a_known_plain_write() -> None:
    """A write command added without ``decides`` would read the near cache and
    write blind on a shared store: it must be declared one or the other."""
    from sessiond.commands.registry import REGISTRY

    undecided = {n for n, c in REGISTRY.items() if c.write and c.decides is None}
    assert undecided - PLAIN_WRITES == set()
    assert set(REGISTRY) >= PLAIN_WRITES


# -------------------------------------------------------------- coherence


def test_a_read_under_way_when_a_change_is_heard_is_not_kept() -> None:
    async def scenario() -> None:
        db, (a, b) = fleet()
        await a("SET", "k", "old")
        gate = asyncio.Event()
        b.store.gate = gate
        read = asyncio.ensure_future(b("GET", "k"))
        await settle()
        await a("SET", "k", "new")
        db.deliver()  # heard while B's read of "old" is under way
        gate.set()
        assert await read in (b"old", b"new")  # either is a correct answer then
        assert b.cache.find(b"k") is None  # but it is not kept
        b.store.gate = None
        assert await b("GET", "k") == b"new"

    run(scenario)


def test_without_notifications_memory_is_not_trusted() -> None:
    async def scenario() -> None:
        _db, (a, b) = fleet()
        await a("SET", "k", "old")
        assert await b("GET", "k") == b"old"
        b.store.coherent = False
        b.keyspace.invalidated_all("notifications lost")
        await a("SET", "k", "new")  # B cannot hear it
        assert await b("GET", "k") == b"new"
        assert b.cache.find(b"k") is None  # read, served, forgotten
        await b("SET", "mine", "1")
        assert b.cache.find(b"mine") is None  # the database answers for it
        assert await b("GET", "mine") == b"1"
        b.store.coherent = True
        b.keyspace.invalidated_all("notifications restored")
        assert await b("GET", "k") == b"new"
        assert b.cache.find(b"k") is not None  # cached again

    run(scenario)


def test_memory_expiry_forgets_and_asks_the_database() -> None:
    async def scenario() -> None:
        db, (a, b) = fleet()
        await a("SET", "s", "v", "EX", "10")
        assert await a("GET", "s") == b"v"
        a.clock.now += 8
        assert await b("GET", "s") == b"v"  # B renews it to now + 10
        db.rows[b"s"] = db.rows[b"s"]._replace(deadline=a.clock.now + 10)  # written back
        a.clock.now += 4  # A's copy ran out; B's renewal did not
        a.cache.sweep()
        assert b"s" in db.rows  # memory's expiry deleted nothing
        assert await a("GET", "s") == b"v"

    run(scenario)


def test_renewals_are_those_of_sessions_read_since_the_last_write_back() -> None:
    async def scenario() -> None:
        _db, (a,) = fleet(1, max_sessions=3)
        await a("SET", "read", "v", "EX", "100")
        await a("SET", "written", "v", "EX", "100")
        await a("SET", "fixed", "v", "PX", "100000")
        await a("PEXPIREAT", "fixed", str(int((a.clock.now + 100) * 1000)))
        a.keyspace.renew_due()
        assert a.store.renewed == {}  # nothing was read
        a.clock.now += 10  # a tenth of the TTL: worth writing back at once
        await a("GET", "read")
        await a("GET", "fixed")  # an absolute deadline does not slide
        await a("SET", "written", "w", "EX", "100")
        assert a.keyspace.renew_due() == 1
        assert a.store.renewed == {b"read": Renewal(100.0, a.clock.now + 100, a.clock.now)}
        a.store.renewed.clear()
        a.clock.now += 5
        await a("GET", "read")
        assert a.keyspace.renew_due() == 0  # held back: it moves the deadline by 5 s
        a.clock.now += 1
        await a("SET", "x", "1")  # evicts "read" (LRU) with its renewal held back
        await a("SET", "y", "1")
        await a("SET", "z", "1")
        assert a.cache.find(b"read") is None
        assert a.keyspace.renew_due() == 1
        assert a.store.renewed[b"read"].deadline == a.clock.now - 1 + 100

    run(scenario)


async def _read_every_second(host: Host, key: str, seconds: int) -> list[int]:
    """Read ``key`` on ``host`` once a second for ``seconds``, with a
    write-back round after each read; how many renewals each round wrote."""
    written = []
    for _ in range(seconds):
        host.clock.now += 1
        assert await host("GET", key) == b"v"
        written.append(host.keyspace.renew_due())
    return written


def test_a_session_read_all_the_time_is_written_back_once_a_tenth_of_its_ttl() -> None:
    """Each read renews a session in memory; the database's deadline moves
    only once memory's is a tenth of the TTL past it: a session read every
    second costs the database a write every 10 s at a TTL of 100 s, where it
    cost one a second."""

    async def scenario() -> None:
        _db, (a,) = fleet(1)
        await a("SET", "s", "v", "EX", "100")
        written = await _read_every_second(a, "s", 30)
        assert written == ([0] * 9 + [1]) * 3, written
        assert a.store.renewed[b"s"].deadline == a.clock.now + 100

    run(scenario)


def test_a_renewal_held_back_is_written_before_the_databases_deadline_comes_near() -> None:
    """A session read a little and then left alone: its last renewal is held
    back (it moved the deadline by less than a tenth of the TTL), and written
    once the database's deadline comes within ``renew_margin``, so that no
    host's sweep deletes the row while memory here still holds it alive."""

    async def scenario() -> None:
        _db, (a,) = fleet(1)
        a.keyspace.renew_margin = 3.0
        start = a.clock.now
        await a("SET", "s", "v", "EX", "100")  # the database's deadline: start + 100
        assert await _read_every_second(a, "s", 5) == [0] * 5
        while a.clock.now < start + 96:
            a.clock.now += 1
            assert a.keyspace.renew_due() == 0
        a.clock.now += 1  # start + 97: the deadline is 3 s away
        assert a.keyspace.renew_due() == 1
        assert a.store.renewed == {b"s": Renewal(100.0, start + 105, start + 5)}
        a.store.renewed.clear()
        a.clock.now += 1
        assert a.keyspace.renew_due() == 0  # written: nothing held back any more

    run(scenario)


def test_a_stop_writes_every_renewal_held_back() -> None:
    async def scenario() -> None:
        _db, (a,) = fleet(1)
        await a("SET", "s", "v", "EX", "100")
        await a("SET", "t", "v", "EX", "100")
        assert await _read_every_second(a, "s", 3) == [0] * 3
        await a.keyspace.shutdown()
        assert a.store.renewed == {b"s": Renewal(100.0, a.clock.now + 100, a.clock.now)}

    run(scenario)


def test_a_renewal_held_back_goes_with_a_write_or_another_hosts_change() -> None:
    """A held-back renewal is of the session as memory had it: a write here
    (which files its own deadline) or another host's change (heard as an
    invalidation) replaces it, and the database's deadline this host knew
    no longer holds: a shorter TTL written since is not taken for the old,
    longer one."""

    async def scenario() -> None:
        db, (a, b) = fleet()
        a.keyspace.renew_margin = 3.0
        start = a.clock.now
        await a("SET", "mine", "v", "EX", "100")
        await a("SET", "theirs", "v", "EX", "100")
        assert await a("GET", "theirs") == b"v"
        assert await _read_every_second(a, "mine", 5) == [0] * 5
        await a("SET", "mine", "w", "EX", "20")  # its deadline is now + 20, written
        await b("SET", "theirs", "w", "EX", "100")
        db.deliver()
        assert a.cache.find(b"theirs") is None
        a.clock.now += 1
        assert await a("GET", "mine") == b"w"
        assert a.keyspace.renew_due() == 0  # 1 s of 20: held back
        while a.clock.now < start + 21:
            a.clock.now += 1
            assert a.keyspace.renew_due() == 0
        # Written as the 20 s deadline of its write comes near (start + 25),
        # not held until the 100 s one the old renewal knew of.
        a.clock.now += 1
        assert a.keyspace.renew_due() == 1
        assert a.store.renewed == {b"mine": Renewal(20.0, start + 26, start + 6)}
        while a.clock.now < start + 100:
            a.clock.now += 1
            assert a.keyspace.renew_due() == 0  # nor is the other's old renewal written

    run(scenario)


def test_what_a_host_keeps_of_renewals_held_back_stays_bounded() -> None:
    """A session another host writes every second and this one reads every
    second: each write here replaces the renewal held back (and its place in
    the queue of those due): after an hour of that, the queue holds about as
    many items as there are sessions, not one per second."""

    async def scenario() -> None:
        db, (a, b) = fleet()
        for _ in range(3600):
            a.clock.now += 0.5
            await a("SET", "s", "v", "EX", "1800")
            db.deliver()
            a.clock.now += 0.5
            assert await b("GET", "s") == b"v"
            assert b.keyspace.renew_due() == 0  # held back
        assert len(b.keyspace.stored) <= 1
        assert len(b.keyspace.due) <= 2 * 1 + 1024

    run(scenario)


def test_scan_hands_the_database_only_a_cursor_and_count_it_can_bind() -> None:
    """PostgreSQL binds SCAN's cursor and COUNT + 1 (its LIMIT) as bigint: a
    client's cursor of 2^63 or more, or COUNT 2^63 - 1, must not reach it."""

    async def scenario() -> None:
        _db, (a,) = fleet(1)
        for i in range(5):
            await a("SET", f"k{i}", "v")
        asked: list[tuple[int, int | None]] = []
        scan_rows = a.store.scan_rows

        def recording(cursor: int, count: int | None) -> TableSlice:
            asked.append((cursor, count))
            return scan_rows(cursor, count)

        a.store.scan_rows = recording  # type: ignore[method-assign]
        for cursor in (HASH_SPACE, 2**63, 2**64 - 1):
            assert await a("SCAN", str(cursor), "COUNT", str(2**63 - 1)) == [b"0", []]
        cursor, keys = await a("SCAN", "0", "COUNT", str(2**63 - 1))
        assert (cursor, sorted(keys)) == (b"0", [f"k{i}".encode() for i in range(5)])
        assert asked == [(0, HASH_SPACE)]

    run(scenario)


def test_a_whole_flush_elsewhere_empties_memory() -> None:
    async def scenario() -> None:
        _db, (a, b) = fleet()
        await a("MSET", "x", "1", "y", "2")
        assert await b("MGET", "x", "y") == [b"1", b"2"]
        b.keyspace.invalidated_all("another host flushed the keyspace")
        assert len(b.cache) == 0

    run(scenario)


def test_a_key_too_long_to_name_is_dropped_by_its_scan_hash() -> None:
    async def scenario() -> None:
        _db, (a,) = fleet(1)
        long_key = b"k" * 10_000
        await a("SET", long_key, "v")
        await a("SET", "other", "v")
        a.keyspace.invalidated_hashes([scan_hash(long_key)])
        assert a.cache.find(long_key) is None and a.cache.find(b"other") is not None

    run(scenario)


def test_replies_of_writes_wait_for_their_own_decisions_only() -> None:
    async def scenario() -> None:
        _db, (a,) = fleet(1)
        gate = asyncio.Event()
        a.store.gate = gate
        slow = asyncio.ensure_future(a("INCR", "held"))
        await settle()
        assert await a("SET", "free", "1") is OK  # not held back by the open decision
        assert not slow.done()
        gate.set()
        assert await slow == 1

    run(scenario)


# ------------------------------------------- renewals held back: the database


def _write_back(db: Database, host: Host) -> None:
    """Apply the renewals ``host`` handed its store as the commit function
    does: only while the row slides by the renewal's TTL, and only later."""
    for key, renewal in host.store.renewed.items():
        row = db.rows.get(key)
        if row is None or row.ttl != renewal.ttl or row.deadline is None:
            continue
        db.rows[key] = row._replace(
            deadline=max(row.deadline, renewal.deadline),
            accessed_at=max(row.accessed_at, renewal.accessed_at),
        )
    host.store.renewed.clear()


def _sweep(db: Database, now: float, grace: float = 5.0) -> list[bytes]:
    """The database sweep as a host with clock ``now`` runs it: rows past
    their deadline by more than ``grace`` are deleted, and every host that
    listens hears of it."""
    gone = [k for k, r in db.rows.items() if r.deadline is not None and r.deadline < now - grace]
    for key in gone:
        del db.rows[key]
        db.versions.pop(key, None)
    for host in db.hosts:
        if gone and host.listener is not None and host.coherent:
            host.listener.invalidated(gone)
    return gone


def test_a_renewal_held_back_then_replaced_by_a_write_is_not_kept_for_ever() -> None:
    """A session read (its renewal held back), then written and never read
    again: the write replaces the held renewal, which renew_due skips when
    it comes due, but the host's record keeps it marked as held, and
    _forget_stored keeps every record marked held. Once the sessions have
    left memory, what the host keeps of them must go too, else ``stored``
    grows with every session used so, and each round past the bound scans
    all of it."""

    async def scenario() -> None:
        _db, (a,) = fleet(1, max_sessions=10_000)
        n = 3000
        keys = [f"s{i}" for i in range(n)]
        for key in keys:
            await a("SET", key, "v", "EX", "100")
        a.clock.now += 1
        for key in keys:
            assert await a("GET", key) == b"v"
        assert a.keyspace.renew_due() == 0  # 1 s of 100: held back
        for key in keys:
            await a("SET", key, "w", "EX", "100")  # the write replaces what was held
        scans = 0  # each scan builds the table anew (no patching: compiled too)
        for _ in range(300):
            a.clock.now += 1
            a.cache.sweep(100_000)
            table = a.keyspace.stored
            a.keyspace.renew_due()
            scans += a.keyspace.stored is not table
        assert len(a.cache) == 0  # every session expired from memory long ago
        assert len(a.keyspace.stored) <= 1024, len(a.keyspace.stored)
        assert scans <= 2, f"{scans} rounds scanned all of stored"

    run(scenario)


def test_reads_while_notifications_are_lost_renew_the_session_in_the_database() -> None:
    """B cannot hear other hosts: every command reads its keys from the
    database and memory forgets them after it (cache.drop, which tells
    nobody). A session B reads every second must stay alive all the same;
    its renewals never reach the database: renew_due looks only at what
    memory holds."""

    async def scenario() -> None:
        db, (a, b) = fleet()
        await a("SET", "s", "v", "EX", "100")
        b.store.coherent = False
        b.keyspace.invalidated_all("notifications lost")
        for second in range(200):
            b.clock.now += 1
            assert await b("GET", "s") == b"v", f"gone after {second + 1} s of reads"
            b.keyspace.renew_due()
            _write_back(db, b)
            _sweep(db, b.clock.now)

    run(scenario)


def test_a_deadline_set_on_another_clock_is_not_taken_for_the_write_time_plus_ttl() -> None:
    """renew_due takes ``updated_at + ttl`` for a lower bound of the row's
    deadline. EXPIRE keeps ``updated_at`` and sets the deadline from the
    clock of the host that runs it: after a write by a host whose clock is
    20 s ahead, B's EXPIRE 100 leaves a row whose deadline is 19 s before
    ``updated_at + ttl``. B reads the session for 9 s: each renewal is held
    back (it moves the deadline B believes by less than a tenth), due 3 s
    before that believed deadline, and the sweep deletes the row first. The
    session goes 23 s before B's last read + TTL, more than the tenth a
    crash may take, with no crash; writing every renewal (as before) kept
    it."""

    async def scenario() -> None:
        db = Database()
        real = Clock()
        start = real.now
        ahead = Clock(start + 20)
        a = Host(db, ahead)
        b = Host(db, real)
        b.keyspace.renew_margin = 3.0
        await a("SET", "s", "v", "EX", "100")  # updated_at start + 20 (A's clock)
        db.deliver()
        for clock in (real, ahead):
            clock.now += 1
        assert await b("EXPIRE", "s", "100") == 1  # deadline start + 101 (B's clock)
        db.deliver()
        assert db.rows[b"s"].deadline == start + 101
        while real.now < start + 120:
            for clock in (real, ahead):
                clock.now += 1
            if start + 21 <= real.now <= start + 29:
                assert await b("GET", "s") == b"v"  # the last read: start + 29
            b.keyspace.renew_due()
            _write_back(db, b)
            _sweep(db, real.now)
        # B's last read was at start + 29 with a TTL of 100 s.
        assert await b("GET", "s") == b"v"

    run(scenario)


def test_a_decision_on_this_hosts_session_sees_its_renewal_held_back() -> None:
    """B reads a session (its renewal held back: the database's deadline
    stays 5 s behind memory's) and asks TTL: 99 s, from memory. EXPIRE 97
    GT must not apply (97 is not greater than 99), but the decision reads
    the row as the database has it, without this host's own renewal, and
    shortens the session. Before renewals were held back the database was
    at most a round (1 s) behind."""

    async def scenario() -> None:
        db, (a,) = fleet(1)
        start = a.clock.now
        await a("SET", "s", "v", "EX", "100")
        a.clock.now += 5
        assert await a("GET", "s") == b"v"
        a.keyspace.renew_due()
        _write_back(db, a)
        a.clock.now += 1
        assert await a("TTL", "s") == 99
        assert await a("EXPIRE", "s", "97", "GT") == 0
        # Not shortened: the EXPIRE's own access slid it to now + 100.
        assert await a("PEXPIRETIME", "s") == int((start + 106) * 1000)

    run(scenario)


async def _idle_until(db: Database, host: Host, until: float) -> None:
    """Write-back rounds and sweeps, a second apart, until ``until``."""
    while host.clock.now < until:
        host.clock.now += 1
        host.keyspace.renew_due()
        _write_back(db, host)
        _sweep(db, host.clock.now)


def _read_then(then: Callable[[Host], Coroutine[Any, Any, None]]) -> None:
    """A session with a TTL of 100 s, read 90 s after its write (alive until
    write + 190), then ``then`` in the same write-back round: 150 s after the
    write it must still be there (not swept for the read's lost renewal)."""

    async def scenario() -> None:
        db, (a,) = fleet(1)
        start = a.clock.now
        await a("SET", "s", "v", "EX", "100")
        await _idle_until(db, a, start + 90)
        assert await a("GET", "s") == b"v"
        await then(a)
        await _idle_until(db, a, start + 150)
        assert await a("GET", "s") == b"v"

    run(scenario)


def test_a_decision_that_only_looks_keeps_the_renewal_of_a_read_before_it() -> None:
    """GET renews the session in memory; WATCH, in the same write-back
    round, decides on the row as the database has it, and memory drops its
    copy first (cache.drop, which tells nobody). WATCH only looks: nothing
    admits the key again, and the GET's renewal, which no round had seen,
    is gone: the row keeps its old deadline and is swept 85 s after the
    last read of a session with a TTL of 100 s."""

    async def watch(a: Host) -> None:
        assert await a("WATCH", "s") == OK

    _read_then(watch)


def test_a_read_just_before_notifications_are_lost_keeps_its_renewal() -> None:
    """As above with the memory emptied when the notifications are lost
    (cache.drop_all): the renewal of a read no round had seen yet goes with
    it."""

    async def lose_notifications(a: Host) -> None:
        a.store.coherent = False
        a.keyspace.invalidated_all("notifications lost")
        a.store.coherent = True
        a.keyspace.invalidated_all("notifications restored")

    _read_then(lose_notifications)


def test_renewals_held_back_when_memory_is_emptied_are_not_scanned_every_round() -> None:
    """Memory is emptied (notifications lost, or restored) with 3,000
    renewals held back: their records stay (written when due, up to a TTL
    later) and outnumber twice memory plus 1024, so each write-back round
    rebuilt the whole table to drop none of them, every second until they
    came due: a scan of every session read lately, a second, on the event
    loop. A scan that drops nothing need not run again until the table has
    grown."""

    async def scenario() -> None:
        _db, (a,) = fleet(1, max_sessions=10_000)
        keys = [f"s{i}" for i in range(3000)]
        for key in keys:
            await a("SET", key, "v", "EX", "100")
        a.clock.now += 1
        for key in keys:
            assert await a("GET", key) == b"v"
        assert a.keyspace.renew_due() == 0  # all held back
        a.keyspace.invalidated_all("notifications restored")
        scans = 0  # each scan builds the table anew (no patching: compiled too)
        for _ in range(90):
            a.clock.now += 1
            table = a.keyspace.stored
            a.keyspace.renew_due()
            scans += a.keyspace.stored is not table
        assert len(a.keyspace.stored) == 3000  # still held: not due yet
        assert scans <= 2, f"{scans} rounds scanned all of stored"

    run(scenario)


def test_a_host_that_dies_takes_at_most_a_tenth_of_the_ttl_and_a_round() -> None:
    """docs/shared-store.md: a host that dies with renewals held back shortens
    the sessions only it was reading by at most a tenth of their TTL and one
    renew_interval. Read every second for 37 s at a TTL of 100 s, then the
    host is gone (no stop, no write-back): the database's deadline is within
    that bound of the last read's, and any moment of the reads gives the same."""

    async def scenario() -> None:
        for reads in range(1, 38):
            db, (a,) = fleet(1)
            await a("SET", "s", "v", "EX", "100")
            for _ in range(reads):
                a.clock.now += 1
                assert await a("GET", "s") == b"v"
                a.keyspace.renew_due()
                _write_back(db, a)
            # Died here: what memory held (the last read's deadline) is lost.
            held = a.clock.now + 100
            assert db.rows[b"s"].deadline >= held - 100 * 0.1 - 1, reads

    run(scenario)
