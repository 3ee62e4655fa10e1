"""Decisions on the PostgreSQL store, in process against a real PostgreSQL: the
decisions a host asks for while its connections are busy share one transaction
(docs/shared-store.md, "What a decision costs"), and that sharing changes
nothing a decision promises: each sees and changes its own keys, a caller that
leaves frees its keys, and a failed commit fails every decision in it and
changes nothing. tests/test_fleet.py holds decisions across real daemons.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import psycopg
import pytest
import structlog.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg import PgCluster, PgDatabase
from pg_fixtures import fields
from sessiond.store import StoreError, pgsql, postgres, scan_hash
from sessiond.store.postgres import PostgresStore

Scenario = Callable[[PostgresStore], Coroutine[Any, Any, None]]


def run(pg_db: PgDatabase, scenario: Scenario, **options: Any) -> None:
    async def main() -> None:
        store = PostgresStore(pg_db.dsn(), **{"timeout": 5.0, **options})
        await store.open(10.0)
        try:
            # bounded: a decision that never opens fails its test, not the run
            await asyncio.wait_for(scenario(store), 120)
        finally:
            await store.aclose()

    asyncio.run(main())


async def finished(store: PostgresStore, decisions: list[Any]) -> list[StoreError | None]:
    """Finish every decision; what each one's ``done`` is called with."""
    results: list[StoreError | None] = []
    all_done = asyncio.Event()

    def done(error: StoreError | None) -> None:
        results.append(error)
        if len(results) == len(decisions):
            all_done.set()

    for decision in decisions:
        store.finish(decision, done)
    await asyncio.wait_for(all_done.wait(), 30)
    return results


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(600):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


class OtherHost:
    """A connection of another host's, which takes keys' locks as its
    decisions do and sees who waits for them."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def hold(self, *keys: bytes) -> None:
        await self.conn.execute(
            "SELECT pg_advisory_lock(%s, h) FROM unnest(%s::int4[]) AS h",
            (pgsql.LOCK_CLASS, [pgsql.lock_id(key) for key in keys]),
        )

    async def release(self) -> None:
        await self.conn.execute("SELECT pg_advisory_unlock_all()")

    def waiting(self, count: int) -> Callable[[], Awaitable[bool]]:
        """Whether ``count`` advisory locks are waited for now."""

        async def check() -> bool:
            cur = await self.conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            row = await cur.fetchone()
            return row is not None and row[0] == count

        return check


@contextlib.asynccontextmanager
async def other_host(pg_db: PgDatabase) -> AsyncIterator[OtherHost]:
    async with await psycopg.AsyncConnection.connect(pg_db.dsn(), autocommit=True) as conn:
        yield OtherHost(conn)


def stored(pg_db: PgDatabase) -> dict[bytes, bytes]:
    with pg_db.connect() as conn:
        rows = conn.execute(f"SELECT key, value FROM {pgsql.TABLE}").fetchall()
    return {bytes(key): bytes(value) for key, value in rows}


def test_decisions_asked_for_at_once_share_one_transaction(pg_db: PgDatabase) -> None:
    keys = [b"k%d" % i for i in range(10)]

    async def scenario(store: PostgresStore) -> None:
        # Asked for in one iteration of the loop, taken by one batch.
        decisions = await asyncio.gather(*(store.decide([key]) for key in keys))
        assert store.shared_stats.decisions == 10
        assert store.shared_stats.decision_transactions == 1
        assert len({id(decision.batch) for decision in decisions}) == 1
        for key, decision in zip(keys, decisions, strict=True):
            # each sees its own key, and records its own change
            assert decision.keys == frozenset([key])
            assert decision.rows == {key: None}
            decision.record(key, fields(b"v-" + key))
        assert await finished(store, decisions) == [None] * 10
        assert store.stats.writes == 10

        # The next round reads back what the batch committed.
        again = await asyncio.gather(*(store.decide([key]) for key in keys))
        assert store.shared_stats.decision_transactions == 2
        assert [d.rows[key].value for key, d in zip(keys, again, strict=True)] == [  # type: ignore[union-attr]
            b"v-" + key for key in keys
        ]
        assert await finished(store, again) == [None] * 10

    run(pg_db, scenario)
    assert stored(pg_db) == {key: b"v-" + key for key in keys}


def test_decisions_asked_for_at_once_on_one_key_each_see_the_other(
    pg_db: PgDatabase,
) -> None:
    async def scenario(store: PostgresStore) -> None:
        first = asyncio.ensure_future(store.decide([b"n", b"a"]))
        second = asyncio.ensure_future(store.decide([b"n"]))
        third = asyncio.ensure_future(store.decide([b"b"]))
        decision = await first
        # In one transaction the second would not see the first's change: it
        # waits for a transaction of its own; the third shares the first's.
        assert (await third).batch is decision.batch
        assert not second.done()
        decision.record(b"n", fields(b"1"))
        assert await finished(store, [decision, await third]) == [None, None]
        later = await asyncio.wait_for(second, 30)
        assert later.rows[b"n"] is not None and later.rows[b"n"].value == b"1"
        assert await finished(store, [later]) == [None]
        assert store.shared_stats.decision_transactions == 2

    # One connection: the second's transaction cannot take "n" before the
    # first's does. With two, its lock request could reach the database first
    # (the keyspace never asks for one key twice at once, so no order between
    # such decisions is promised); the first would then wait for its batch to
    # end, which this scenario finishes only after the first opens.
    run(pg_db, scenario, pool_size=1)


def test_a_key_another_host_holds_delays_only_its_own_decision(pg_db: PgDatabase) -> None:
    others = [b"k%d" % i for i in range(5)]

    async def scenario(store: PostgresStore) -> None:
        async with other_host(pg_db) as other:
            await other.hold(b"hot")
            hot = asyncio.ensure_future(store.decide([b"hot"]))
            asked = [asyncio.ensure_future(store.decide([key])) for key in others]
            # The batch takes the keys it can and opens without the held one:
            # its decisions commit while that key is still held elsewhere.
            decisions = [await asyncio.wait_for(task, 30) for task in asked]
            assert len({id(decision.batch) for decision in decisions}) == 1
            for key, decision in zip(others, decisions, strict=True):
                decision.record(key, fields(b"done"))
            assert await finished(store, decisions) == [None] * 5
            assert not hot.done()
            await other.release()
        # The held key's decision had a transaction of its own, which waited.
        decision = await asyncio.wait_for(hot, 30)
        decision.record(b"hot", fields(b"done"))
        assert await finished(store, [decision]) == [None]
        assert store.shared_stats.decisions == 6
        assert store.shared_stats.decision_transactions == 2

    run(pg_db, scenario)
    assert stored(pg_db) == dict.fromkeys([b"hot", *others], b"done")


def test_a_decision_whose_caller_left_while_it_opened_frees_its_keys(
    pg_db: PgDatabase,
) -> None:
    async def scenario(store: PostgresStore) -> None:
        async with other_host(pg_db) as other:
            # Another host holds the key: the batch waits for its lock.
            await other.hold(b"k")
            asked = asyncio.ensure_future(store.decide([b"k"]))

            await until(other.waiting(1), "the batch to wait for the key's lock")
            asked.cancel()  # the client went away
            await other.release()
        # The abandoned decision commits nothing and lets the key go.
        decision = await asyncio.wait_for(store.decide([b"k"]), 30)
        decision.record(b"k", fields(b"after"))
        assert await finished(store, [decision]) == [None]
        assert store.shared_stats.decisions == 2

    run(pg_db, scenario)
    assert stored(pg_db) == {b"k": b"after"}


def test_a_failed_commit_fails_every_decision_of_its_batch_and_changes_nothing(
    pg_db: PgDatabase,
) -> None:
    keys = [b"k%d" % i for i in range(5)]

    async def scenario(store: PostgresStore) -> None:
        decisions = await asyncio.gather(*(store.decide([key]) for key in keys))
        assert len({id(decision.batch) for decision in decisions}) == 1
        for key, decision in zip(keys, decisions, strict=True):
            decision.record(key, fields(b"lost"))
        with pg_db.admin() as admin:  # the database drops the batch's connection
            pid = decisions[0].batch.conn.info.backend_pid
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        errors = await finished(store, decisions)
        assert all(isinstance(error, StoreError) for error in errors), errors
        assert len({id(error) for error in errors}) == 1
        assert store.shared_stats.decision_errors == 5
        # The store goes on deciding on a new connection.
        decision = await asyncio.wait_for(store.decide([b"k0"]), 30)
        assert decision.rows == {b"k0": None}
        assert await finished(store, [decision]) == [None]

    run(pg_db, scenario)
    assert stored(pg_db) == {}


def test_a_reply_that_asks_after_a_decision_that_failed_is_told_it_failed(
    pg_db: PgDatabase,
) -> None:
    """A pipeline's INCR decides, and its connection goes on to a request that
    reads through; meanwhile the INCR's decision commits, and fails. Its reply
    then asks to wait for that decision along with the plain writes made so far,
    one of which is not committed yet: the decision, no longer open, was left
    out of what the reply waited for, and the reply was told OK."""

    async def scenario(store: PostgresStore) -> None:
        decision = await store.decide([b"n"])
        decision.record(b"n", fields(b"1"))
        with pg_db.admin() as admin:  # the database drops the batch's connection
            pid = decision.batch.conn.info.backend_pid
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
        [error] = await finished(store, [decision])
        assert isinstance(error, StoreError)
        store.record(b"other", fields(b"v"))  # another write, still to commit
        told: asyncio.Future[StoreError | None] = asyncio.get_running_loop().create_future()
        store.after_commit_for(told.set_result, [decision])
        assert isinstance(await asyncio.wait_for(told, 30), StoreError)

    run(pg_db, scenario)
    assert stored(pg_db) == {b"other": b"v"}


def test_after_a_failed_commit_a_reply_waits_for_none_of_what_it_forgot(
    pg_db: PgDatabase,
) -> None:
    """Under durability: always a failed group commit forgets its changes, and
    every reply waiting for them is told it failed. A reply that asks to wait
    afterwards with nothing recorded since (QUEUED inside MULTI, an EXEC of
    reads) waited for the next commit to succeed, which came only once the
    database was back: for as long as it was away, the client had no answer.
    (The writer's retry is an hour away here: nothing else commits.)"""

    async def scenario(store: PostgresStore) -> None:
        with pg_db.admin() as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                "WHERE application_name = 'sessiond:writer'"
            )
        store.record(b"k", fields(b"v"))
        first: asyncio.Future[StoreError | None] = asyncio.get_running_loop().create_future()
        store.after_commit(first.set_result)
        assert isinstance(await asyncio.wait_for(first, 30), StoreError)
        assert store.failure is not None
        told: list[StoreError | None] = []
        store.after_commit(told.append)
        assert told == [None]

    run(pg_db, scenario, retry_interval=3600.0)
    assert stored(pg_db) == {}


def test_decisions_whose_keys_are_all_held_elsewhere_wait_each_on_its_own(
    pg_db: PgDatabase,
) -> None:
    async def scenario(store: PostgresStore) -> None:
        async with other_host(pg_db) as other:
            await other.hold(b"a", b"b")
            # One with two keys, one of them held; one with a held key alone.
            asked = [
                asyncio.ensure_future(store.decide([b"a", b"free"])),
                asyncio.ensure_future(store.decide([b"b"])),
            ]
            # The batch kept neither and ended at once: each waits in a
            # transaction of its own, holding nothing the other needs.
            await until(other.waiting(2), "both decisions to wait for their keys")
            assert store.shared_stats.decision_transactions == 0
            await other.release()
        decisions = [await asyncio.wait_for(task, 30) for task in asked]
        assert decisions[0].keys == {b"a", b"free"} and decisions[0].batch is not decisions[1].batch
        decisions[0].record(b"free", fields(b"1"))
        assert await finished(store, decisions) == [None, None]
        assert store.shared_stats.decision_transactions == 2

    run(pg_db, scenario)
    assert stored(pg_db) == {b"free": b"1"}


def test_without_a_connection_every_decision_asked_for_fails_at_once(
    pg_db: PgDatabase,
) -> None:
    async def scenario(store: PostgresStore) -> None:
        first = await store.decide([b"k"])  # holds the pool's one connection
        asked = [asyncio.ensure_future(store.decide([b"k%d" % i])) for i in range(70)]
        results = await asyncio.wait_for(asyncio.gather(*asked, return_exceptions=True), 60)
        assert all(isinstance(result, StoreError) for result in results), results
        assert await finished(store, [first]) == [None]
        again = await asyncio.wait_for(store.decide([b"k1"]), 30)  # the store goes on
        assert await finished(store, [again]) == [None]

    run(pg_db, scenario, pool_size=1, timeout=0.5)


def test_a_closed_store_takes_no_decision(pg_db: PgDatabase) -> None:
    async def main() -> None:
        store = PostgresStore(pg_db.dsn(), timeout=5.0)
        await store.open(10.0)
        await store.aclose()
        with pytest.raises(StoreError, match="closed"):
            await store.decide([b"k"])

    asyncio.run(main())


def test_a_batch_on_a_connection_that_died_idle_is_opened_again_with_all_its_decisions(
    pg_db: PgDatabase,
) -> None:
    async def scenario(store: PostgresStore) -> None:
        first = await store.decide([b"k"])
        pid = first.batch.conn.info.backend_pid
        assert await finished(store, [first]) == [None]  # its connection idles in the pool
        with pg_db.admin() as admin:  # a server restart, as the idle connection sees it
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        keys = [b"k%d" % i for i in range(5)]
        decisions = await asyncio.wait_for(
            asyncio.gather(*(store.decide([key]) for key in keys)), 30
        )
        assert len({id(decision.batch) for decision in decisions}) == 1
        assert decisions[0].batch.conn.info.backend_pid != pid
        for key, decision in zip(keys, decisions, strict=True):
            decision.record(key, fields(b"v"))
        assert await finished(store, decisions) == [None] * 5
        assert store.shared_stats.decision_transactions == 2

    run(pg_db, scenario)
    assert stored(pg_db) == dict.fromkeys([b"k%d" % i for i in range(5)], b"v")


def test_a_decision_that_left_a_batch_for_one_key_waits_for_it_without_a_connection(
    pg_db: PgDatabase,
) -> None:
    """A decision whose key another host holds leaves the batch, which has
    already locked its other keys: it opens once the batch has ended, holding
    no pooled connection and none of its keys meanwhile."""

    async def scenario(store: PostgresStore) -> None:
        async with other_host(pg_db) as other:
            await other.hold(b"a")
            moved = asyncio.ensure_future(store.decide([b"a", b"free"]))
            kept = await asyncio.wait_for(store.decide([b"c"]), 30)
            await other.release()
        # The pool's second connection is free for another decision while the
        # batch (the first) is open.
        alone = await asyncio.wait_for(store.decide([b"d"]), 30)
        assert not moved.done()
        assert await finished(store, [alone]) == [None]
        kept.record(b"c", fields(b"1"))
        assert await finished(store, [kept]) == [None]
        decision = await asyncio.wait_for(moved, 30)
        decision.record(b"free", fields(b"2"))
        assert await finished(store, [decision]) == [None]

    run(pg_db, scenario, pool_size=2)
    assert stored(pg_db) == {b"c": b"1", b"free": b"2"}


def test_past_64_decisions_asked_for_at_once_the_rest_share_another_transaction(
    pg_db: PgDatabase,
) -> None:
    keys = [b"k%d" % i for i in range(70)]

    async def scenario(store: PostgresStore) -> None:
        decisions = await asyncio.gather(*(store.decide([key]) for key in keys))
        batches = [decision.batch for decision in decisions]
        assert sorted(batches.count(batch) for batch in set(batches)) == [6, 64]
        for key, decision in zip(keys, decisions, strict=True):
            decision.record(key, fields(b"v"))
        assert await finished(store, decisions) == [None] * 70

    run(pg_db, scenario)
    assert stored(pg_db) == dict.fromkeys(keys, b"v")


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=50))
def test_a_row_s_lock_id_in_sql_is_its_key_s_lock_id(pg_db: PgDatabase, keys: list[bytes]) -> None:
    """Decisions lock keys by :func:`pgsql.lock_id`; the batch's row read and the
    sweep find a row's lock id from its scan_hash in SQL: the two must agree for
    every key (and stay CRC-32 as a signed int: hosts of every version agree)."""
    with pg_db.connect() as conn:
        row = conn.execute(
            f"SELECT array_agg({pgsql._LOCK_ID} ORDER BY n) "
            "FROM unnest(%s::int8[]) WITH ORDINALITY AS t(scan_hash, n)",
            ([scan_hash(key) for key in keys],),
        ).fetchone()
    crc = [zlib.crc32(key) for key in keys]
    signed = [h - 2**32 if h >= 2**31 else h for h in crc]
    assert row is not None
    assert row[0] == [pgsql.lock_id(key) for key in keys] == signed


def test_a_commit_under_way_when_the_store_closes_is_never_reported_landed(
    pg_db: PgDatabase,
) -> None:
    """Closing used to run its own last commit beside the writer's: with the
    writer's commit still waiting for a key's lock, the close found nothing
    pending and told the write it had landed. It never did."""

    async def scenario(store: PostgresStore) -> None:
        told: list[StoreError | None] = []
        async with other_host(pg_db) as other:
            await other.hold(b"k")
            store.record(b"k", fields(b"v"))
            store.after_commit(told.append)
            await until(other.waiting(1), "the commit to wait for the key's lock")
            await store.aclose()
            assert len(told) == 1 and told[0] is not None, told
            await other.release()

    run(pg_db, scenario, timeout=1.0)
    assert b"k" not in stored(pg_db)


def test_odd_notifications_on_the_heartbeat_channel_leave_the_host_listening(
    pg_db: PgDatabase,
) -> None:
    """A payload that looks like a heartbeat's number and is not one ('²' is a
    digit to str.isdigit, 5,000 digits are past int()'s limit) must not stop
    the host hearing the others, nor leave it coherent without a listener."""

    async def scenario(store: PostgresStore) -> None:
        odd = ["\u00b2", "7" * 5000, "b", ""]
        async with other_host(pg_db) as other:
            for _ in range(20):  # both while a heartbeat's statement runs and between
                for payload in odd:
                    await other.conn.execute(
                        "SELECT pg_notify(%s, %s)", (store._heartbeat_channel, payload)
                    )
                await asyncio.sleep(0.02)
            before = store.shared_stats.notifications_received
            await other.conn.execute(
                "SELECT pg_notify(%s, n) FROM unnest(%s::text[]) AS n",
                (pgsql.CHANNEL, pgsql.payloads("elsewhere", 0.0, [b"k"], False)),
            )

            async def heard() -> bool:
                return store.shared_stats.notifications_received > before

            await until(heard, "another host's change to be heard")
            await asyncio.sleep(0.5)  # a heartbeat or two more
            assert store.coherent

    run(pg_db, scenario, heartbeat_interval=0.1)


def test_a_batch_rolled_back_keeps_the_decisions_statements_prepared(pg_db: PgDatabase) -> None:
    """A batch whose decisions all went to transactions of their own ends with
    a ROLLBACK. Sent through psycopg on a connection where psycopg had
    prepared statements of its own (it does after a few decisions), that
    ROLLBACK made psycopg send DEALLOCATE ALL, which took the statements the
    decisions commit with too: the next decision on the connection failed
    with 'prepared statement "sessiond_barrier" does not exist'."""

    async def scenario(store: PostgresStore) -> None:
        for i in range(8):  # psycopg prepares the statements that open decisions
            decision = await store.decide([b"k"])
            decision.record(b"k", fields(b"%d" % i))
            assert await finished(store, [decision]) == [None]
        async with other_host(pg_db) as other:
            await other.hold(b"a", b"b")
            asked = [asyncio.ensure_future(store.decide([key])) for key in (b"a", b"b")]
            await until(other.waiting(2), "both decisions to wait for their keys")
            await other.release()
            decisions = [await asyncio.wait_for(ask, 30) for ask in asked]
        assert await finished(store, decisions) == [None, None]
        assert store.shared_stats.decision_errors == 0
        # The connection that rolled back, and any other, still has them.
        marked = [conn for conn in store._pool.idle if conn in store._decided_on]
        assert marked
        for conn in marked:
            cur = await conn.execute("SELECT name FROM pg_prepared_statements")
            names = {name for (name,) in await cur.fetchall()}
            assert {pgsql.DECIDED_STATEMENT, pgsql.BARRIER_STATEMENT} <= names, names

    run(pg_db, scenario, pool_size=2)


def test_a_decision_reads_each_row_as_a_plain_read_does(pg_db: PgDatabase) -> None:
    """A decision reads its rows in binary through libpq, a plain read through
    psycopg's loaders: the same Row and version for every kind of column
    (no TTL, a TTL, a non-ASCII context, a kind other than a string's, a
    version moved by writes), alone (waiting for the locks) and in a batch
    (trying them)."""

    async def scenario(store: PostgresStore) -> None:
        async with await psycopg.AsyncConnection.connect(pg_db.dsn(), autocommit=True) as conn:
            await conn.execute(
                "INSERT INTO sessiond_sessions (key, scan_hash, value, context, created_at, "
                "updated_at, accessed_at, ttl, deadline, kind, version, expire_at) VALUES "
                "('plain', 1, 'v', NULL, 1.5, 2.5, 3.5, NULL, NULL, 0, 1, NULL), ('ttl', 2, "
                "'\\x00ff'::bytea, 'caf\u00e9', 1.25, 1.25, 1.25, 60, 61.25, 2, 7, 61.25)"
            )
        keys = [b"plain", b"ttl", b"absent"]
        want = await store.load_many(keys)
        assert want[b"ttl"] is not None and want[b"ttl"].context == "caf\u00e9"
        alone = await store.decide(keys)
        assert alone.rows == want, (alone.rows, want)
        assert alone.versions == {b"plain": 1, b"ttl": 7}
        assert await finished(store, [alone]) == [None]
        together = [asyncio.ensure_future(store.decide([key])) for key in keys]
        batched = [await asyncio.wait_for(ask, 30) for ask in together]
        assert {key: d.rows[key] for d in batched for key in d.rows} == want
        assert await finished(store, batched) == [None] * 3

    run(pg_db, scenario)


def test_a_decision_whose_statements_were_deallocated_prepares_them_again(
    pg_db: PgDatabase,
) -> None:
    """The store keeps which pooled connections hold a decision's prepared
    statements. If they go behind its back (psycopg deallocates its own and
    everyone's after a ROLLBACK, DROP or ALTER it runs), the next decision
    on that connection prepares them again instead of failing."""

    async def scenario(store: PostgresStore) -> None:
        first = await store.decide([b"k"])
        conn = first.batch.conn
        first.record(b"k", fields(b"1"))
        assert await finished(store, [first]) == [None]
        assert conn in store._decided_on
        await conn.execute("DEALLOCATE ALL")
        with structlog.testing.capture_logs() as logged:
            second = await store.decide([b"k"])
        assert [e["event"] for e in logged] == ["store_statements_prepared_again"], logged
        assert second.batch.conn is conn
        second.record(b"k", fields(b"2"))
        assert await finished(store, [second]) == [None]
        assert store.shared_stats.decision_errors == 0

    run(pg_db, scenario, pool_size=1)
    assert stored(pg_db) == {b"k": b"2"}


def test_a_reply_that_asks_while_a_lost_commit_is_asked_about_is_told_it_landed(
    pg_db: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decision commits, its answer is lost (here: raised after the real
    commit), and the store asks the database whether it landed. A reply that
    asks to wait for that decision meanwhile (its connection's batch went on
    after a read-through) must be told what the database says: it landed."""
    from sessiond.store import postgres

    real_commit = postgres._commit_decision

    async def lossy(conn: Any, params: Any, notify: Any) -> None:
        await real_commit(conn, params, notify)
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(postgres, "_commit_decision", lossy)

    async def scenario(store: PostgresStore) -> None:
        asking, go_on = asyncio.Event(), asyncio.Event()
        real_landed = store._landed

        async def landed(sent: Any) -> bool | None:
            asking.set()
            await go_on.wait()
            return await real_landed(sent)

        store._landed = landed  # type: ignore[method-assign]
        decision = await store.decide([b"n"])
        decision.record(b"n", fields(b"1"))
        done: list[StoreError | None] = []
        store.finish(decision, done.append)
        await asyncio.wait_for(asking.wait(), 30)
        told: asyncio.Future[StoreError | None] = asyncio.get_running_loop().create_future()
        store.after_commit_for(told.set_result, [decision])
        go_on.set()
        error = await asyncio.wait_for(told, 30)
        assert done == [None]
        assert error is None, f"landed, but the reply was told: {error}"

    run(pg_db, scenario)
    assert stored(pg_db) == {b"n": b"1"}


_INSERT_TOKEN = f"INSERT INTO {pgsql.TOKENS} (slot, token, pid) VALUES (%s, %s, pg_backend_pid())"


def test_a_commit_s_token_says_whether_it_landed(pg_db: PgDatabase) -> None:
    """Asked about, a commit whose token is there landed; one whose token
    is not did not, and never will: the asking took its place. Asked again
    (its first answer lost), the asking answers the same."""

    async def scenario(store: PostgresStore) -> None:
        async with await psycopg.AsyncConnection.connect(pg_db.dsn(), autocommit=True) as conn:
            await conn.execute(_INSERT_TOKEN, (1, 5))
            assert await store._landed(postgres._Sent(1, 5)) is True
            assert await store._landed(postgres._Sent(1, 5)) is True
            assert await store._landed(postgres._Sent(1, 6)) is False
            assert await store._landed(postgres._Sent(1, 6)) is False
            with pytest.raises(psycopg.errors.UniqueViolation):  # the commit, late
                await conn.execute(_INSERT_TOKEN, (1, 6))

    run(pg_db, scenario)


def test_the_tokens_of_gone_connections_are_swept_fifteen_minutes_after_they_are_seen_gone(
    pg_db: PgDatabase,
) -> None:
    """A writer's connect marks the tokens whose backend is gone (an asker's
    row is marked when it is made) and deletes those marked fifteen minutes
    before or more; a live connection's token stays."""

    async def scenario(store: PostgresStore) -> None:
        async with await psycopg.AsyncConnection.connect(pg_db.dsn(), autocommit=True) as conn:
            await conn.execute(_INSERT_TOKEN, (10, 1))  # this live connection's
            await conn.execute(
                f"INSERT INTO {pgsql.TOKENS} (slot, token, pid) VALUES (11, 1, 2147483647)"
            )  # a backend that is gone
            assert await store._landed(postgres._Sent(12, 1)) is False  # an asker's row

            async def marked() -> dict[int, bool]:
                cur = await conn.execute(
                    f"SELECT slot, gone_since IS NOT NULL FROM {pgsql.TOKENS} ORDER BY slot"
                )
                return {int(slot): bool(gone) for slot, gone in await cur.fetchall()}

            await postgres._sweep_tokens(conn)
            assert await marked() == {10: False, 11: True, 12: True}
            await conn.execute(
                f"UPDATE {pgsql.TOKENS} SET gone_since = now() - interval '14 minutes' "
                "WHERE slot = 11"
            )
            await conn.execute(
                f"UPDATE {pgsql.TOKENS} SET gone_since = now() - interval '16 minutes' "
                "WHERE slot = 12"
            )
            await postgres._sweep_tokens(conn)
            assert await marked() == {10: False, 11: True}

    run(pg_db, scenario)


@pytest.mark.parametrize("end", ["COMMIT", "ROLLBACK"])
def test_asking_waits_for_a_commit_that_is_writing_its_token(pg_db: PgDatabase, end: str) -> None:
    """A commit that has written its token and not yet ended: the asking
    waits for it to end and answers as it ended."""

    async def scenario(store: PostgresStore) -> None:
        async with await psycopg.AsyncConnection.connect(pg_db.dsn(), autocommit=True) as conn:
            pid = conn.info.backend_pid
            await conn.execute("BEGIN")
            await conn.execute(_INSERT_TOKEN, (2, 7))
            asking = asyncio.ensure_future(store._landed(postgres._Sent(2, 7)))

            async def waits() -> bool:
                row = await (
                    await conn.execute(
                        "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid <> %s", (pid,)
                    )
                ).fetchone()
                return bool(row and row[0])

            await until(waits, "the asking to wait for the commit")
            assert not asking.done()
            await conn.execute(end)
            assert await asking is (end == "COMMIT")

    run(pg_db, scenario)


def test_a_crash_recovery_in_place_does_not_make_a_lost_commit_landed(
    pg_own_cluster: PgCluster,
) -> None:
    """A backend's crash makes the server recover in place (restart_after_crash,
    the default): the commit it was running never reached the WAL, and its
    token is not there after the recovery, whatever the transactions after it
    commit. (Asked by transaction id, pg_xact_status, it could count as
    landed: the server gives a lost commit's id to the next transaction.)"""
    db = PgDatabase(pg_own_cluster, pg_own_cluster.create_database())

    async def lose_a_commit() -> None:
        store = PostgresStore(db.dsn())
        await store.open(10.0)  # makes the table of tokens
        await store.aclose()
        conn = await psycopg.AsyncConnection.connect(db.dsn(), autocommit=True)
        await conn.execute("BEGIN")
        await conn.execute(_INSERT_TOKEN, (3, 7))
        os.kill(conn.info.backend_pid, signal.SIGKILL)  # the server recovers from the crash
        await conn.close()  # without COMMIT, which would fail: the backend is gone

    asyncio.run(lose_a_commit())
    for _ in range(20):  # transactions after it, committed
        while True:
            try:
                with db.connect(autocommit=True) as conn:
                    conn.execute("SELECT pg_current_xact_id()")
                break
            except psycopg.OperationalError:
                time.sleep(0.2)  # still recovering

    async def scenario(store: PostgresStore) -> None:
        assert await store._landed(postgres._Sent(3, 7)) is False

    run(db, scenario)
