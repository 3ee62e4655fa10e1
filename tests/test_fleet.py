"""A fleet of hosts sharing one PostgreSQL store (issue #15, docs/shared-store.md).

Several real sessiond daemons, each on its own socket, play the hosts; the store is
a real PostgreSQL (tests/pg.py): a fresh database of the shared cluster for the
tests that do not hurt it, a cluster of the test's own for those that stop, kill,
slow down or replace it. Clients are real clients (redis-py here, the frameworks'
own stores in test_fleet_frameworks.py).

What is checked is what a client sees: a write acknowledged on one host is what
every other host serves once the invalidation lag has passed, decisions (INCR,
SET NX) hold across hosts exactly, renewals on one host keep a session alive for
all, and no failure makes a host serve a value it cannot know is current.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest
import redis
from conftest import Daemon, deep_merge, free_port, wait_until
from pg import APP_DB, PgCluster, PgDatabase
from psycopg.pq import ExecStatus
from sessiond.store import pgsql
from sessiond.store.pgsql import FUNCTION, LOCK_CLASS, PREVIOUS_FUNCTION, commit_params, lock_id

pytestmark = pytest.mark.fleet

Fleet = Callable[..., list[Daemon]]


def fleet_config(dsn: str, **extra: Any) -> dict[str, Any]:
    return deep_merge(
        {
            "persistence": {
                "backend": "postgresql",
                "dsn": dsn,
                "durability": "always",
                "timeout": "2s",
                "connect_timeout": "10s",
                "renew_interval": "200ms",
                "heartbeat_interval": "250ms",
            },
            "cache": {"sweep_interval": "100ms"},
        },
        extra,
    )


def refused_start(
    daemon_factory: Callable[..., Daemon], config: dict[str, Any]
) -> tuple[Daemon, str]:
    """A daemon on ``config`` that must not start: it exits 1 with no traceback;
    it and its ``startup_failed`` error."""
    d = daemon_factory(config, start=False)
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(30) == 1
    assert "Traceback" not in d.log_text()
    return d, d.wait_for_event("startup_failed")[0]["error"]


@pytest.fixture
def fleet(pg_db: PgDatabase, daemon_factory: Callable[..., Daemon]) -> Fleet:
    """``fleet(n, **config)``: ``n`` started daemons on one fresh database; host
    ``i``'s connections are named ``host<i>:<role>`` in pg_stat_activity."""

    def make(n: int = 3, **extra: Any) -> list[Daemon]:
        return [
            daemon_factory(fleet_config(pg_db.dsn(application_name=f"host{i}"), **extra))
            for i in range(n)
        ]

    return make


@pytest.fixture
def clients() -> Iterator[Callable[[Daemon], redis.Redis]]:
    made: list[redis.Redis] = []

    def make(d: Daemon) -> redis.Redis:
        client = d.client()
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def eventually(check: Callable[[], bool], timeout: float = 2.0, what: str = "") -> float:
    """Poll ``check`` until it holds; how long that took."""
    started = time.monotonic()
    wait_until(check, timeout, what)
    return time.monotonic() - started


def on_every_host(
    hosts: list[Daemon], clients: int, work: Callable[[redis.Redis, str], None]
) -> None:
    """``work(client, name)`` in ``clients`` threads per host at once, each
    with a client of its own named ``h<host>c<client>``; the first errors
    are reported once every thread is done."""
    errors: list[BaseException] = []

    def run(d: Daemon, name: str) -> None:
        try:
            with d.client() as r:
                work(r, name)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(d, f"h{h}c{c}"))
        for h, d in enumerate(hosts)
        for c in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def every_host_agrees(hosts: list[Daemon], key: str, value: bytes) -> None:
    for d in hosts:
        with d.client() as r:
            # a plain read: the last changes may reach this host within the lag
            eventually(lambda r=r: r.get(key) == value, what="every host to agree")


def table_rows(db: PgDatabase) -> dict[bytes, tuple[Any, ...]]:
    with db.admin() as conn:
        rows = conn.execute(
            "SELECT key, value, ttl, deadline, version FROM sessiond_sessions"
        ).fetchall()
    return {bytes(r[0]): tuple(r[1:]) for r in rows}


# --------------------------------------------------------------- coherence


def test_a_write_on_one_host_is_read_on_the_others(fleet: Fleet, clients: Any) -> None:
    a, b, c = (clients(d) for d in fleet(3))
    assert a.set("sess:1", "alice", ex=600)
    assert a.hset("h:1", mapping={"user": "alice", "n": "1"}) == 2
    assert a.sadd("s:1", "x", "y") == 2
    for other in (b, c):
        assert other.get("sess:1") == b"alice"
        assert 590 <= other.ttl("sess:1") <= 600
        assert other.hgetall("h:1") == {b"user": b"alice", b"n": b"1"}
        assert other.smembers("s:1") == {b"x", b"y"}
    # B and C hold the session in memory now; A's overwrite reaches them.
    assert a.set("sess:1", "bob", ex=600)
    for other in (b, c):
        eventually(lambda o=other: o.get("sess:1") == b"bob", what="the overwrite")
    assert b.hset("h:1", "n", "2") == 0
    eventually(lambda: c.hget("h:1", "n") == b"2" and a.hget("h:1", "n") == b"2")


def test_waitaof_answers_once_batch_writes_are_in_the_database(
    fleet: Fleet, pg_db: PgDatabase
) -> None:
    """Under durability: batch with a minute between commits, WAITAOF 1 0 0
    answers [1, 0] once the writes before it are committed: their rows are in
    PostgreSQL when it answers."""
    (a,) = fleet(1, persistence={"durability": "batch", "flush_interval": "60s"})
    with a.client() as r:
        pipe = r.pipeline(transaction=False)
        for i in range(20):
            pipe.set(f"w{i}", i)
        pipe.execute_command("WAITAOF", 1, 0, 0)
        assert pipe.execute()[-1] == [1, 0]
        assert r.waitaof(0, 0, 0) == [1, 0]  # numlocal 0: what holds, at once
    with pg_db.connect() as conn:
        rows = conn.execute(f"SELECT key FROM {pgsql.TABLE}").fetchall()
    assert {bytes(key) for (key,) in rows} == {b"w%d" % i for i in range(20)}
    with a.client() as r:
        r.set("uncommitted", "1")  # the next commit is a minute away
        assert r.waitaof(0, 0, 0) == [0, 0]
        assert r.waitaof(1, 0, 0) == [1, 0]


def test_a_waitaof_that_times_out_leaves_the_writes_before_it_waiting_for_their_commit(
    pg_own_cluster: PgCluster, daemon_factory: Callable[..., Daemon]
) -> None:
    """A write a decision commits (INCR) holds its reply until that commit,
    with a WAITAOF after it in the same pipeline as without: a WAITAOF whose
    timeout runs out first answers [0, 0], and the INCR's reply still waits
    for the commit (its row is in PostgreSQL when the replies come)."""
    pg = pg_own_cluster
    d = daemon_factory(fleet_config(pg.dsn()))
    with d.client() as r:
        assert r.set("warm", "1")
        pg.set_commit_delay(0.1)  # every commit takes 100 ms
        for i in range(3):
            pipe = r.pipeline(transaction=False)
            pipe.incr(f"n{i}")
            pipe.execute_command("WAITAOF", 1, 0, 1)
            assert pipe.execute() == [1, [0, 0]]
            rows = pg.query(
                "SELECT key FROM sessiond_sessions WHERE key = %s",
                (f"n{i}".encode(),),
                dbname=APP_DB,
            )
            assert len(rows) == 1, f"n{i} acknowledged before its commit"
        pg.set_commit_delay(0)
    assert "Traceback" not in d.log_text()


def test_deletes_and_expiry_on_one_host_are_gone_on_the_others(
    fleet: Fleet, clients: Any, pg_db: PgDatabase
) -> None:
    a, b = (clients(d) for d in fleet(2))
    a.mset({"gone": "1", "short": "2"})
    assert b.get("gone") == b"1" and b.get("short") == b"2"  # cached on B
    assert a.delete("gone") == 1
    eventually(lambda: b.get("gone") is None, what="the delete")
    assert b.exists("gone") == 0
    assert a.pexpire("short", 300)
    eventually(lambda: b.pttl("short") <= 300, what="the new TTL")
    eventually(lambda: b.exists("short") == 0 and a.exists("short") == 0, 3, "the expiry")
    # The row is deleted by a sweep (after its grace), once, whichever host ran it.
    eventually(lambda: b"short" not in table_rows(pg_db), 15, "the sweep")


def test_sliding_renewals_on_one_host_keep_the_session_alive_for_all(
    fleet: Fleet, clients: Any, pg_db: PgDatabase
) -> None:
    a, b = (clients(d) for d in fleet(2))
    assert a.set("busy", "v", ex=2)
    assert a.set("idle", "v", ex=2)
    assert a.get("busy") == b"v"  # A holds both in memory with a 2 s deadline
    first_deadline = table_rows(pg_db)[b"busy"][2]
    end = time.monotonic() + 4
    while time.monotonic() < end:
        assert b.get("busy") == b"v"  # a read on B renews it
        time.sleep(0.25)
    # A never touched "busy" again: its own copy ran out long ago, but B's
    # renewals reached the database.
    assert a.exists("busy") == 1
    assert a.get("busy") == b"v"
    assert a.exists("idle") == 0 and b.exists("idle") == 0
    # The row's deadline moved with the renewals, by more than the TTL
    assert table_rows(pg_db)[b"busy"][2] > first_deadline + 2


def test_renewals_held_back_on_one_host_are_written_when_it_stops(
    fleet: Fleet, clients: Any, pg_db: PgDatabase
) -> None:
    """Reads on B for a second move a 60 s session's deadline by less than a
    tenth of its TTL: B holds the renewals back (it writes none, the row
    keeps A's deadline) and writes them when it stops."""
    hosts = fleet(2, metrics={"enabled": True})
    a, b = (clients(d) for d in hosts)
    assert a.set("s", "v", ex=60)
    written = table_rows(pg_db)[b"s"][2]
    for _ in range(10):  # over several of B's write-back rounds (every 200 ms)
        assert b.get("s") == b"v"
        time.sleep(0.1)
    assert hosts[1].metric("sessiond_store_renewals_total") == 0
    assert table_rows(pg_db)[b"s"][2] == written
    assert hosts[1].stop() == 0
    assert table_rows(pg_db)[b"s"][2] > written + 0.5  # B's last read + 60 s


def test_expired_rows_are_deleted_once_whichever_host_sweeps(
    fleet: Fleet, pg_db: PgDatabase
) -> None:
    hosts = fleet(3, metrics={"enabled": True})
    with hosts[0].client() as r, r.pipeline(transaction=False) as p:
        for i in range(300):
            p.set(f"e:{i}", "v", px=100)
        p.set("kept", "v")
        assert all(p.execute())
    eventually(lambda: len(table_rows(pg_db)) == 1, 30, "the sweeps")
    assert list(table_rows(pg_db)) == [b"kept"]
    # Three hosts swept the same rows concurrently; each row was deleted by one.
    deleted = [d.metric("sessiond_store_expired_rows_total") for d in hosts]
    assert sum(deleted) == 300, deleted
    for d in hosts:
        with d.client() as r:
            assert r.dbsize() == 1


def test_incr_from_three_hosts_and_eight_clients_each_counts_exactly(fleet: Fleet) -> None:
    hosts = fleet(3)

    def work(r: redis.Redis, _: str) -> None:
        for _ in range(1000):
            r.incr("counter")

    on_every_host(hosts, 8, work)
    every_host_agrees(hosts, "counter", b"24000")


def test_decisions_on_overlapping_keys_from_three_hosts_count_exactly(fleet: Fleet) -> None:
    """Each host puts the decisions its clients ask for at once in one
    transaction: batches of several hosts, over the same keys in every order,
    neither deadlock nor lose an increment."""
    hosts = fleet(3, metrics={"enabled": True})

    def keys(name: str) -> list[str]:
        start = sum(map(ord, name))
        return [f"c:{(start + i * 7) % 20}" for i in range(300)]

    def work(r: redis.Redis, name: str) -> None:
        for key in keys(name):
            r.incr(key)

    on_every_host(hosts, 8, work)
    want = Counter(key for h in range(3) for c in range(8) for key in keys(f"h{h}c{c}"))
    with hosts[0].client() as r:
        assert {key: int(r.get(key) or 0) for key in want} == want
    for host in hosts:
        # (commands waiting for a key of a decision of their host join it)
        decisions = host.metric("sessiond_store_decisions_total")
        assert 0 < host.metric("sessiond_store_decision_transactions_total") <= decisions
        assert decisions <= 8 * 300
        assert host.metric("sessiond_store_decision_errors_total") == 0


def test_set_nx_lock_has_exactly_one_winner_per_round(fleet: Fleet) -> None:
    hosts = fleet(3)
    rounds = 30
    barrier = threading.Barrier(len(hosts) * 8)
    wins: list[list[str]] = [[] for _ in range(rounds)]

    def contend(r: redis.Redis, name: str) -> None:
        try:
            for i in range(rounds):
                barrier.wait(30)
                if r.set(f"lock:{i}", name, nx=True, px=60_000):
                    wins[i].append(name)
        except BaseException:
            barrier.abort()  # the others stop waiting for this one
            raise

    on_every_host(hosts, 8, contend)
    assert [len(w) for w in wins] == [1] * rounds
    with hosts[2].client() as r:
        for i in range(rounds):
            assert r.get(f"lock:{i}") == wins[i][0].encode()


def test_decisions_see_the_database_not_a_stale_copy(fleet: Fleet, clients: Any) -> None:
    a, b = (clients(d) for d in fleet(2))
    a.set("k", "1")
    assert b.get("k") == b"1"  # B caches "1"
    a.set("k", "41")
    # Whatever B's memory holds, INCR and SET NX/XX/GET decide on the row.
    assert b.incr("k") == 42
    assert b.set("k", "x", nx=True) is None
    assert b.set("k", "y", xx=True, get=True) == b"42"
    # A plain read on another host may lag by the invalidation lag (the promise).
    eventually(lambda: a.get("k") == b"y", what="A to hear of B's SET")
    assert a.getdel("k") == b"y"
    assert b.set("k", "z", nx=True)
    assert b.persist("k")  # it had cache.default_ttl
    assert b.expire("k", 100, gt=True) is False  # no TTL: GT is false, as in Redis
    assert a.expire("k", 100, nx=True) is True
    eventually(lambda: 90 <= b.ttl("k") <= 100, what="B to hear of A's EXPIRE")


def test_transactions_and_plain_writes_order_on_each_host(fleet: Fleet, clients: Any) -> None:
    a, b = (clients(d) for d in fleet(2))
    with a.pipeline(transaction=True) as p:
        p.set("t1", "1").incr("t1").set("t2", "x").expire("t2", 50)
        assert p.execute() == [True, 2, True, True]
    assert b.mget("t1", "t2") == [b"2", b"x"]
    assert 40 <= b.ttl("t2") <= 50
    # Pipelined without MULTI on one connection: replies in order, values in order.
    with b.pipeline(transaction=False) as p:
        for i in range(50):
            p.set("seq", str(i)).incr("seq")
        replies = p.execute()
    assert replies[-1] == 50
    assert a.get("seq") == b"50"


def test_scan_keys_and_dbsize_see_every_host_s_sessions(fleet: Fleet, clients: Any) -> None:
    a, b = (clients(d) for d in fleet(2))
    a.mset({f"a:{i}": "x" for i in range(30)})
    b.mset({f"b:{i}": "x" for i in range(30)})
    for r in (a, b):
        assert r.dbsize() == 60
        assert sorted(r.keys("*")) == sorted(
            [f"a:{i}".encode() for i in range(30)] + [f"b:{i}".encode() for i in range(30)]
        )
        assert set(r.scan_iter(count=7)) == set(r.keys("*"))
    assert a.delete(*[f"b:{i}" for i in range(10)]) == 10
    eventually(lambda: b.dbsize() == 50)


def test_flushdb_on_one_host_empties_every_host_s_memory(fleet: Fleet, clients: Any) -> None:
    a, b = (clients(d) for d in fleet(2))
    a.mset({"x": "1", "y": "2"})
    assert b.mget("x", "y") == [b"1", b"2"]
    assert a.flushdb()
    eventually(lambda: b.mget("x", "y") == [None, None], what="the flush")
    assert b.dbsize() == 0


def test_read_modify_write_commands_from_two_hosts_lose_nothing(fleet: Fleet) -> None:
    """APPEND, INCRBYFLOAT, HINCRBYFLOAT, GETSET and RENAME read the key's
    current value: the database decides them, as INCR."""
    hosts = fleet(2)
    taken: list[bytes] = []

    def work(r: redis.Redis, name: str) -> None:
        for i in range(100):
            r.append("appended", "x")
            r.incrbyfloat("float", 0.5)
            r.hincrbyfloat("hash", "f", 0.25)
            old = r.getset("token", f"{name}:{i}")
            if old is not None:
                taken.append(old)

    on_every_host(hosts, 4, work)
    with hosts[1].client() as r:
        assert r.strlen("appended") == 800
        assert float(r.get("float") or 0) == 400.0
        assert float(r.hget("hash", "f") or 0) == 200.0
        # every value GETSET wrote was handed back once, but the last
        assert len(taken) == 799 and len(set(taken)) == 799
        assert r.get("token") not in taken
        assert r.rename("appended", "moved")
    with hosts[0].client() as r:
        eventually(lambda: r.exists("appended") == 0, what="host 0 to hear of the RENAME")
        assert r.strlen("moved") == 800


# ------------------------------------------------- WATCH/EXEC and scripts


def test_exec_aborts_when_another_host_changed_a_watched_key(fleet: Fleet, clients: Any) -> None:
    """The database's versions decide, not the notification: B's change
    aborts A's transaction even if A has not heard of it yet."""
    a, b = (clients(d) for d in fleet(2))
    a.set("k", "1")
    for change in (
        lambda: b.set("k", "2"),  # overwritten
        lambda: b.delete("k") and b.set("k", "2"),  # deleted and made again
        lambda: b.expire("k", 100),  # a new TTL is a change, as in Redis
    ):
        with a.pipeline() as p:
            p.watch("k")
            assert p.get("k") is not None
            change()
            p.multi()
            p.set("k", "mine")
            with pytest.raises(redis.WatchError):
                p.execute()
    with a.pipeline() as p:  # a key absent at WATCH and created elsewhere
        p.watch("absent")
        b.set("absent", "x")
        p.multi()
        p.set("absent", "mine")
        with pytest.raises(redis.WatchError):
            p.execute()
    with a.pipeline() as p:  # reads on another host (renewals) change nothing
        p.watch("k")
        assert b.get("k") == b"2"
        p.multi()
        p.set("k", "mine")
        assert p.execute() == [True]
    eventually(lambda: b.get("k") == b"mine", what="B to hear of A's EXEC")


def test_optimistic_increments_with_watch_from_two_hosts_count_exactly(fleet: Fleet) -> None:
    hosts = fleet(2)
    retries: list[int] = []

    def work(r: redis.Redis, _: str) -> None:
        for _ in range(50):
            while True:
                with r.pipeline() as p:
                    try:
                        p.watch("opt")
                        value = int(p.get("opt") or 0)
                        p.multi()
                        p.set("opt", value + 1)
                        p.execute()
                        break
                    except redis.WatchError:
                        retries.append(1)

    on_every_host(hosts, 4, work)
    every_host_agrees(hosts, "opt", b"400")
    assert retries  # they did contend


INCR_SCRIPT = "return redis.call('SET', KEYS[1], (tonumber(redis.call('GET', KEYS[1])) or 0) + 1)"


def test_scripts_from_two_hosts_decide_on_their_declared_keys(fleet: Fleet) -> None:
    hosts = fleet(2)

    def work(r: redis.Redis, _: str) -> None:
        for _ in range(200):
            r.eval(INCR_SCRIPT, 1, "scripted")

    on_every_host(hosts, 4, work)
    every_host_agrees(hosts, "scripted", b"1600")


def test_redis_py_locks_guard_a_session_across_hosts(fleet: Fleet) -> None:
    """redis-py's Lock (SET NX PX to take it, EVALSHA scripts to extend and
    release it): eight workers on two hosts update one session under its
    lock, and no update is lost."""
    hosts = fleet(2)

    def worker(c: redis.Redis, _: str) -> None:
        for _ in range(10):
            with c.lock("session:s:lock", timeout=5, sleep=0.001, blocking_timeout=60) as lk:
                value = int(c.get("session:s") or 0)
                assert lk.extend(5)
                c.set("session:s", str(value + 1))

    on_every_host(hosts, 4, worker)
    every_host_agrees(hosts, "session:s", b"80")
    for d in hosts:
        with d.client() as r:
            assert r.exists("session:s:lock") == 0


def test_after_taking_a_lock_a_host_reads_what_was_written_before_its_release(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon]
) -> None:
    """A writes the session, then releases the lock; B takes the lock and reads
    the session. B's reply to SET NX waits until B has heard every change
    committed before the lock was free (a barrier through its LISTEN
    connection), so the read is not B's stale copy. B's LISTEN backend is
    stopped (SIGSTOP) to hold back the invalidation deterministically."""
    import os
    import signal

    config = {"persistence": {"heartbeat_interval": "2s"}}
    a = daemon_factory(fleet_config(pg_db.dsn(application_name="A"), **config))
    b = daemon_factory(fleet_config(pg_db.dsn(application_name="B"), **config))
    ra, rb = a.client(), b.client(socket_timeout=30)
    assert ra.set("session", "old")
    assert rb.get("session") == b"old"  # B holds a copy
    assert ra.set("lock", "A", nx=True, px=60_000)
    with pg_db.admin() as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'B:listen'"
        ).fetchone()
    assert row is not None
    os.kill(row[0], signal.SIGSTOP)
    try:
        assert ra.set("session", "new")
        assert ra.delete("lock") == 1
        assert rb.set("lock", "B", nx=True, px=60_000)
        assert rb.get("session") == b"new"
    finally:
        os.kill(row[0], signal.SIGCONT)
    ra.close()
    rb.close()


def test_a_script_may_not_use_a_key_it_did_not_declare(fleet: Fleet, clients: Any) -> None:
    (a,) = (clients(d) for d in fleet(1))
    a.set("declared", "1")
    a.set("other", "1")
    with pytest.raises(redis.ResponseError, match=r"did not declare.*postgresql"):
        a.eval("return redis.call('GET', 'other')", 1, "declared")
    with pytest.raises(redis.ResponseError, match="did not declare"):
        a.eval("return redis.call('SET', 'other', '2')", 0)
    assert a.get("other") == b"1"
    assert a.eval("return redis.call('GET', KEYS[1])", 1, "declared") == b"1"
    assert a.eval("return redis.call('INCR', KEYS[1])", 1, "declared") == 2


def test_pub_sub_and_keyspace_events_stay_within_a_host(fleet: Fleet, clients: Any) -> None:
    """docs/shared-store.md: PUBLISH reaches the host's own subscribers, and
    keyspace events are sent for the changes made through the host."""
    a, b = (clients(d) for d in fleet(2, pubsub={"notify_keyspace_events": "KA"}))
    sub = a.pubsub()
    sub.subscribe("news", "__keyspace@0__:k")
    for _ in range(2):
        message = sub.get_message(timeout=5.0)
        assert message is not None and message["type"] == "subscribe"
    assert b.publish("news", "from b") == 0  # no subscriber on B
    assert a.set("k", "1")  # through A: A's subscriber hears it
    assert a.publish("news", "from a") == 1
    b.set("k", "2")  # through B: A drops its copy, but sends no event
    eventually(lambda: a.get("k") == b"2", what="A to hear of B's SET")
    got = []
    while (message := sub.get_message(timeout=1.0)) is not None:
        got.append((message["channel"], message["data"]))
    assert got == [(b"__keyspace@0__:k", b"set"), (b"news", b"from a")]
    sub.close()


# -------------------------------------------------------------- the schema


def test_the_schema_is_created_once_and_a_newer_one_is_refused(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon]
) -> None:
    config = fleet_config(pg_db.dsn())
    first = daemon_factory(config)
    second = daemon_factory(config)
    created = [e for d in (first, second) for e in d.events()
               if e.get("event") == "store_schema_created"]  # fmt: skip
    assert len(created) == 1
    first.stop()
    second.stop()
    with pg_db.admin() as conn:
        conn.execute("UPDATE sessiond_schema SET version = 99")
    _, error = refused_start(daemon_factory, config)
    assert "schema is version 99" in error, error


def test_a_store_made_before_the_commit_function_gets_it_and_takes_writes(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon]
) -> None:
    """A store made by a sessiond from before the one-statement group commit
    (the same tables, no function) is given the function at the next start,
    by the one host that starts first, and takes writes through it."""
    config = fleet_config(pg_db.dsn())
    first = daemon_factory(config)
    first.stop()
    with pg_db.admin() as conn:
        conn.execute(f"DROP FUNCTION {FUNCTION}")
    hosts = [daemon_factory(config) for _ in range(2)]
    made = [e for d in hosts for e in d.events() if e.get("event") == "store_function_created"]
    assert len(made) == 1, made
    with hosts[0].client() as r:
        assert r.set("k", "v")
    with hosts[1].client() as r:
        assert r.get("k") == b"v"
    assert table_rows(pg_db)[b"k"][0] == b"v"


@pytest.mark.parametrize(
    ("drop", "name", "event"),
    [
        ("FUNCTION", FUNCTION, "store_function_created"),
        ("TABLE", pgsql.TOKENS, "store_table_created"),
    ],
)
def test_a_commit_function_gone_while_running_is_made_again_without_a_restart(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon], drop: str, name: str, event: str
) -> None:
    """The function, or the table of its tokens, dropped under a running
    host (a restore of the tables alone, say): the commit that finds it gone
    fails with a clear error, writes are refused meanwhile, and the writer's
    reconnect makes it again."""
    d = daemon_factory(fleet_config(pg_db.dsn()))
    r = d.client()
    assert r.set("k", "before")
    with pg_db.admin() as conn:
        conn.execute(f"DROP {drop} {name}")
    with pytest.raises(redis.ResponseError) as refused:
        r.set("k", "lost")
    assert name in str(refused.value) and "CONTEXT" not in str(refused.value)
    eventually(lambda: _writes(r), 10, "writes after it is made again")
    assert r.set("k", "after")
    assert table_rows(pg_db)[b"k"][0] == b"after"
    made = [e for e in d.events() if e.get("event") == event]
    assert len(made) == 2, made  # at the start, and again
    r.close()


@pytest.mark.parametrize(
    ("drop", "name", "event"),
    [
        ("FUNCTION", FUNCTION, "store_function_created"),
        ("TABLE", pgsql.TOKENS, "store_table_created"),
    ],
)
def test_a_commit_function_gone_while_running_is_made_again_for_decisions_alone(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon], drop: str, name: str, event: str
) -> None:
    """Decisions commit through the same function. A host that only decides
    (INCR here) never reconnects its writer, yet gets the function, or the
    table of its tokens, back: the decision that finds it gone fails with a
    clear error, and it is made again without a plain write or a restart."""
    d = daemon_factory(fleet_config(pg_db.dsn()))
    r = d.client()
    assert r.incr("n") == 1
    with pg_db.admin() as conn:
        conn.execute(f"DROP {drop} {name}")
    with pytest.raises(redis.ResponseError) as refused:
        r.incr("n")
    assert name in str(refused.value) and "CONTEXT" not in str(refused.value)
    eventually(lambda: _answers(lambda: r.incr("n")), 10, "an INCR after it is made again")
    assert int(table_rows(pg_db)[b"n"][0]) >= 2
    made = [e for e in d.events() if e.get("event") == event]
    assert len(made) == 2, made  # at the start, and again
    r.close()


def test_a_host_of_a_new_version_adds_its_function_beside_the_old_one(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon]
) -> None:
    """A rolling upgrade: the database holds the commit function of the version
    before (here a stand-in of that name, sessiond_commit_v1) and not this
    version's. A host of this version makes its own, commits through it, and
    leaves the old one in place for the hosts that still call it."""
    config = fleet_config(pg_db.dsn())
    daemon_factory(config).stop()
    with pg_db.admin() as conn:
        conn.execute(f"DROP FUNCTION {FUNCTION}")
        conn.execute("CREATE FUNCTION sessiond_commit_v1() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    d = daemon_factory(config)
    assert [e for e in d.events() if e.get("event") == "store_function_created"]
    with d.client() as r:
        assert r.set("k", "v")
    assert table_rows(pg_db)[b"k"][0] == b"v"
    with pg_db.admin() as conn:
        assert conn.execute("SELECT sessiond_commit_v1()").fetchone() == (1,)
        assert conn.execute(f"SELECT to_regproc('{FUNCTION}')").fetchone() != (None,)


def _filing(db: PgDatabase) -> dict[bytes, tuple[Any, Any]]:
    """Each row's (deadline, expire_at)."""
    with db.admin() as conn:
        rows = conn.execute("SELECT key, deadline, expire_at FROM sessiond_sessions").fetchall()
    return {bytes(r[0]): (r[1], r[2]) for r in rows}


def _indexes(db: PgDatabase) -> set[str]:
    with db.admin() as conn:
        found = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'sessiond_sessions'"
        ).fetchall()
    return {name for (name,) in found}


def _back_to_schema_1(db: PgDatabase, *, old_function_by_admin: bool = False) -> None:
    """Undo the migration on a new store: schema 1's deadline index, no
    expire_at, and in place of this version's commit function a stand-in of
    the version before's that does nothing, made by the hosts' role (as they
    made it) or by the superuser (a role they may not replace it as)."""
    with db.admin() as conn:
        (signature,) = conn.execute(
            f"SELECT pg_get_function_arguments('{FUNCTION}'::regproc)"
        ).fetchone()
        conn.execute(f"DROP FUNCTION {FUNCTION}")
        # Version 3's signature, the version before's: no slot, no token.
        signature = signature.replace("p_slot bigint, p_token bigint, p_previous bigint, ", "")
        assert "p_token" not in signature, signature
        conn.execute("ALTER TABLE sessiond_sessions DROP COLUMN expire_at")
        conn.execute(
            "CREATE INDEX sessiond_sessions_deadline ON sessiond_sessions (deadline) "
            "WHERE deadline IS NOT NULL"
        )
        conn.execute("UPDATE sessiond_schema SET version = 1")
    stand_in = (
        f"CREATE FUNCTION {PREVIOUS_FUNCTION}({signature}) RETURNS void "
        "LANGUAGE sql AS 'SELECT NULL'"
    )
    if old_function_by_admin:
        with db.admin() as conn:
            conn.execute(stand_in)
    else:
        with db.connect(autocommit=True) as conn:
            conn.execute(stand_in)


def _refused_while_read(
    db: PgDatabase, daemon_factory: Callable[..., Daemon], config: dict[str, Any]
) -> str:
    """The error of a start on a store of schema 1 that must fail to migrate
    while a reader's transaction holds the sessions table."""
    with db.admin() as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM sessiond_sessions")
        _, error = refused_start(daemon_factory, config)
        reader.execute("ROLLBACK")
    assert "cannot migrate the store's schema from version 1 to 2" in error, error
    return error


def _schema_version(db: PgDatabase) -> int:
    with db.admin() as conn:
        (version,) = conn.execute("SELECT version FROM sessiond_schema").fetchone()
    return int(version)


def test_a_schema_1_store_is_migrated_and_hosts_of_the_version_before_write_beside_it(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon]
) -> None:
    """Schema 1 indexed the deadline; schema 2 files rows by expire_at. A store
    of schema 1 (made here by undoing the migration on a new one) is migrated
    at the next start: its rows keep their sessions and expire as before, and
    the version before's commit function, which its hosts go on calling until
    they are restarted, writes expire_at too (here a stand-in of it that does
    nothing: the migration gives it this version's body). The migration of
    its 300,000 sessions takes longer than the store's timeout, which bounds
    every other statement: it is not cut short."""
    config = fleet_config(pg_db.dsn(), persistence={"timeout": "500ms"})
    daemon_factory(config).stop()
    _back_to_schema_1(pg_db)
    now = time.time()
    with pg_db.admin() as conn:
        for key, ttl, deadline in (
            (b"gone", 10.0, now - 100),
            (b"kept", 3600.0, now + 3600),
            (b"forever", None, None),
        ):
            conn.execute(
                "INSERT INTO sessiond_sessions (key, scan_hash, value, created_at, "
                "updated_at, accessed_at, ttl, deadline) VALUES (%s, 0, %s, %s, %s, %s, %s, %s)",
                (key, b"v", now, now, now, ttl, deadline),
            )
        conn.execute(
            "INSERT INTO sessiond_sessions (key, scan_hash, value, created_at, updated_at, "
            "accessed_at, ttl, deadline) SELECT ('s:' || i)::bytea, i, %s, %s, %s, %s, 3600, %s "
            "FROM generate_series(1, 300000) AS i",
            (b"v" * 200, now, now, now, now + 3600),
        )
    d = daemon_factory(config)
    migrated = d.wait_for_event("store_migrated")[0]
    assert (migrated["from_version"], migrated["to_version"]) == (1, 2)
    assert migrated["seconds"] > 0.5, migrated  # longer than the timeout: not cut short
    assert "sessiond_sessions_deadline" not in _indexes(pg_db)
    assert "sessiond_sessions_expire_at" in _indexes(pg_db)
    filing = _filing(pg_db)
    assert filing[b"s:300000"] == filing[b"kept"] == (now + 3600, now + 3600)
    assert filing[b"forever"] == (None, None)
    eventually(lambda: b"gone" not in _filing(pg_db), 15, "the sweep of a migrated row")
    with d.client() as r:
        assert r.get("kept") == b"v" and r.get("forever") == b"v"
    # A host of the version before commits through its own function.
    row = (b"v", None, now, now, now, 10.0, now - 100, 0)
    batch = {b"old-gone": row, b"old-kept": (*row[:5], 3600.0, now + 3600, 0)}
    params, _ = commit_params("old-host", now, batch, False, {}, (0, 0, 0), now + 60)
    del params[-4:-1]  # version 3's parameters: no slot, no tokens
    placeholders = ", ".join(f"${i}" for i in range(1, len(params) + 1))
    call = f"SELECT {PREVIOUS_FUNCTION}({placeholders})".encode()
    with pg_db.connect(autocommit=True) as conn:
        result = conn.pgconn.exec_params(call, params, param_formats=[1] * len(params))
        assert result.status == ExecStatus.TUPLES_OK, result.error_message
    assert _filing(pg_db)[b"old-kept"] == (now + 3600, now + 3600)
    eventually(lambda: b"old-gone" not in _filing(pg_db), 15, "the sweep of its write")
    # A write that does not keep expire_at (a call that began under the old
    # body, an older build) is refused, not left to never expire.
    with pg_db.connect(autocommit=True) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO sessiond_sessions (key, scan_hash, value, created_at, updated_at, "
            "accessed_at, ttl, deadline) VALUES ('unfiled', 0, 'v', 0, 0, 0, 10, %s)",
            (now + 10,),
        )


def test_a_migration_this_role_may_not_make_fails_before_it_changes_anything(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon]
) -> None:
    """The version before's commit function belongs to another role (one that
    made the store once, say): the migration, which must replace it, fails
    with exit 1 and a message that says which role to start as, and leaves
    the store at schema 1. It tries that step first, so that it fails before
    it waits for the table's lock: here a reader's transaction holds the table
    throughout, and the start is refused with that message all the same (the
    other order would wait for that reader's lock, then fail on the lock
    timeout without saying which role to start as)."""
    config = fleet_config(pg_db.dsn())
    daemon_factory(config).stop()
    _back_to_schema_1(pg_db, old_function_by_admin=True)
    error = _refused_while_read(pg_db, daemon_factory, config)
    assert f"the role that owns sessiond_sessions and {PREVIOUS_FUNCTION}" in error, error
    assert _schema_version(pg_db) == 1
    with pg_db.admin() as conn:
        found = conn.execute(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_name = 'sessiond_sessions' AND column_name = 'expire_at'"
        ).fetchone()
        assert found == (0,)


def test_a_migration_that_waits_past_the_timeout_for_the_table_fails_and_is_tried_again(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon]
) -> None:
    """The migration has no statement timeout, but waits for the table's lock
    no longer than ``persistence.timeout`` (the other hosts' writes queue
    behind it meanwhile): a transaction holding the table past it fails the
    start, exit 1, and leaves schema 1. Once it ends, the next start migrates."""
    config = fleet_config(pg_db.dsn(), persistence={"timeout": "500ms"})
    daemon_factory(config).stop()
    _back_to_schema_1(pg_db)
    error = _refused_while_read(pg_db, daemon_factory, config)
    assert "lock timeout" in error, error
    assert _schema_version(pg_db) == 1
    d = daemon_factory(config)
    assert d.wait_for_event("store_migrated")[0]["to_version"] == 2
    assert _schema_version(pg_db) == 2


def test_a_row_renewed_past_its_filing_is_filed_again_not_expired(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon]
) -> None:
    """A sliding renewal moves a row's deadline but not when expiry looks at it
    (expire_at: moving that index at every renewal is what schema 2 saves). A
    row whose expire_at comes due with its deadline still ahead is filed again
    at its deadline, and stays; one whose TTL was taken away is unfiled."""
    d = daemon_factory(fleet_config(pg_db.dsn()))
    with d.client() as r:
        assert r.set("slid", "v", ex=3600)
        assert r.set("persisted", "v", ex=3600)
        assert r.persist("persisted")
    deadline = _filing(pg_db)[b"slid"][0]
    assert _filing(pg_db)[b"persisted"] == (None, None)
    with pg_db.admin() as conn:
        conn.execute(
            "UPDATE sessiond_sessions SET expire_at = %s WHERE key = 'slid'", (time.time() - 100,)
        )
        conn.execute(
            "UPDATE sessiond_sessions SET expire_at = %s WHERE key = 'persisted'",
            (time.time() - 100,),
        )
    eventually(
        lambda: _filing(pg_db) == {b"slid": (deadline, deadline), b"persisted": (None, None)},
        15,
        "the sweep to file both again",
    )
    with d.client() as r:
        assert r.get("slid") == b"v" and r.ttl("slid") > 3000


def test_a_write_or_renewal_that_pushes_the_deadline_later_leaves_the_filing_alone(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon]
) -> None:
    """What schema 2 saves: expire_at, the indexed column, moves only when the
    deadline comes before it (a shorter TTL), not when a SET or a sliding
    renewal pushes the deadline later."""
    d = daemon_factory(fleet_config(pg_db.dsn()))
    r = d.client()
    assert r.set("k", "v", ex=100)
    first, filed = _filing(pg_db)[b"k"]
    assert filed == first
    assert r.set("k", "w", ex=3600)  # later: the filing stays
    deadline, filed = _filing(pg_db)[b"k"]
    assert deadline > first + 3000 and filed == first
    time.sleep(0.05)
    assert r.get("k") == b"w"  # a sliding renewal: held back (it moves an hour by 50 ms)
    r.close()
    assert d.stop() == 0  # and written back at the stop
    assert _filing(pg_db)[b"k"][0] > deadline
    assert _filing(pg_db)[b"k"][1] == first
    r = daemon_factory(fleet_config(pg_db.dsn())).client()
    assert r.expire("k", 10)  # earlier than the filing: it moves with the deadline
    deadline, filed = _filing(pg_db)[b"k"]
    assert deadline < first and filed == deadline
    assert r.persist("k")
    assert _filing(pg_db)[b"k"] == (None, None)
    r.close()


def test_a_host_starting_while_another_holds_the_schema_lock_waits_for_it(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon]
) -> None:
    """A host that starts while another creates or migrates the schema (which
    takes seconds a million sessions) waits for it, says so and who holds it,
    and starts once it is free, instead of failing after its timeout."""
    config = fleet_config(pg_db.dsn())
    daemon_factory(config).stop()
    with pg_db.admin() as conn:
        conn.execute("SELECT pg_advisory_lock(%s, 0)", (LOCK_CLASS,))
        d = daemon_factory(config, start=False)
        d.start(wait=False)
        busy = d.wait_for_event("store_schema_busy")[0]
        assert busy["holder_pid"] == conn.info.backend_pid, busy
        time.sleep(3)  # past the store's timeout (2s): still waiting
        assert d.proc is not None and d.proc.poll() is None
        conn.execute("SELECT pg_advisory_unlock(%s, 0)", (LOCK_CLASS,))
    d.wait_ready()
    with d.client() as r:
        assert r.set("k", "v") and r.get("k") == b"v"


def test_a_host_gives_up_on_a_schema_lock_held_past_its_connect_timeout(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon]
) -> None:
    """Held past ``persistence.connect_timeout`` (here 1 s; never less than
    5 s of waiting), the schema lock makes a starting host exit 1 and say
    why, for its service manager to start it again."""
    config = fleet_config(pg_db.dsn(), persistence={"connect_timeout": "1s"})
    daemon_factory(config).stop()
    with pg_db.admin() as conn:
        conn.execute("SELECT pg_advisory_lock(%s, 0)", (LOCK_CLASS,))
        d, error = refused_start(daemon_factory, config)
    assert "another host held the store's schema lock" in error, error
    assert d.wait_for_event("store_schema_busy")


def test_a_store_reset_by_dropping_its_tables_starts_again(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon]
) -> None:
    """Dropping the tables and leaving the function (a reset by hand): the
    next start makes the tables and keeps the function it finds."""
    config = fleet_config(pg_db.dsn())
    daemon_factory(config).stop()
    with pg_db.admin() as conn:
        conn.execute("DROP TABLE sessiond_sessions, sessiond_schema")
    d = daemon_factory(config)
    with d.client() as r:
        assert r.set("k", "v") and r.get("k") == b"v"
    assert [e for e in d.events() if e.get("event") == "store_schema_created"]
    assert not [e for e in d.events() if e.get("event") == "store_function_created"]


def test_a_role_that_may_not_create_the_commit_function_is_told_what_to_do(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon]
) -> None:
    """The tables exist but the function is missing, and the daemon's role may
    no longer create in their schema: start-up fails with exit 1 and a
    message that names the function and the fix, no traceback."""
    config = fleet_config(pg_db.dsn())
    daemon_factory(config).stop()
    with pg_db.admin() as conn:
        conn.execute(f"DROP FUNCTION {FUNCTION}")
        conn.execute("ALTER SCHEMA public OWNER TO postgres")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    _, error = refused_start(daemon_factory, config)
    assert f"cannot create the function {FUNCTION}" in error, error
    assert "permission denied" in error, error


def test_the_table_of_tokens_made_by_another_role_belongs_to_the_hosts_role(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon]
) -> None:
    """A store whose table of commit tokens is missing, made again by a host
    started once as another role (here the superuser, as the fix above
    says): the table belongs to the sessions table's owner, so the hosts'
    own role writes its tokens."""
    config = fleet_config(pg_db.dsn())
    daemon_factory(config).stop()
    with pg_db.admin() as conn:
        conn.execute(f"DROP TABLE {pgsql.TOKENS}")
        conn.execute(pgsql.CREATE_TOKENS)
        owners = conn.execute(
            "SELECT relname, relowner::regrole::text FROM pg_class WHERE relname = ANY(%s)",
            ([pgsql.TABLE, pgsql.TOKENS],),
        ).fetchall()
    assert len(owners) == 2 and owners[0][1] == owners[1][1] != "postgres", owners
    with daemon_factory(config).client() as r:
        assert r.set("k", "v") and r.incr("n") == 1


def test_a_table_not_made_by_sessiond_is_refused(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon]
) -> None:
    with pg_db.connect() as conn:
        conn.execute("CREATE TABLE sessiond_sessions (id int)")
        conn.commit()
    _, error = refused_start(daemon_factory, fleet_config(pg_db.dsn()))
    assert "was not made by sessiond" in error, error


def test_the_password_is_never_logged_and_may_come_from_a_file(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon]
) -> None:
    secret = pg_db.cluster.password
    d = daemon_factory(fleet_config(pg_db.dsn()), start=True)
    with d.client() as r:
        assert secret.encode() not in b"".join(str(v).encode() for v in r.config_get("*").values())
    d.stop()
    assert secret not in d.log_text()
    pwfile = d.workdir / "pg.pw"
    pwfile.write_text(secret + "\n")
    with_file = daemon_factory(
        fleet_config(pg_db.dsn(password=""), persistence={"password_file": str(pwfile)})
    )
    with with_file.client() as r:
        assert r.set("k", "v")
    with_file.stop()
    assert secret not in with_file.log_text()
    pwfile.write_text("wrong\n")
    wrong, error = refused_start(
        daemon_factory,
        fleet_config(
            pg_db.dsn(password=""),
            persistence={"password_file": str(pwfile), "connect_timeout": "1s"},
        ),
    )
    assert "password authentication failed" in error
    assert "persistence.password_file" in error, error  # where a password goes
    assert "wrong" not in wrong.log_text().replace("wrong\\n", "")
    _, error = refused_start(
        daemon_factory,
        fleet_config(pg_db.dsn(password=""), persistence={"connect_timeout": "1s"}),
    )
    assert "no password supplied (sessiond takes the role's password from " in error, error


# -------------------------------------------------------------- failures


def test_an_unreachable_database_is_tried_for_the_whole_connect_timeout(
    daemon_factory: Callable[..., Daemon],
) -> None:
    """Start-up gives up once ``persistence.connect_timeout`` has passed, not
    a pause of its backoff earlier (with 3s it used to give up after 1.5 s)."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = fleet_config(
        f"host=127.0.0.1 port={port} dbname=sessions user=sessiond",
        persistence={"connect_timeout": "3s"},
    )
    d, error = refused_start(daemon_factory, config)
    assert "within persistence.connect_timeout (3s)" in error, error

    def at(name: str) -> datetime:
        (event,) = [e for e in d.events() if e.get("event") == name]
        return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))

    tried = (at("startup_failed") - at("store_connecting")).total_seconds()
    assert 3.0 <= tried < 6.0, tried


def test_unreachable_at_start_waits_then_exits_1(
    pg_own_cluster: PgCluster, daemon_factory: Callable[..., Daemon]
) -> None:
    pg = pg_own_cluster
    pg.stop()
    config = fleet_config(pg.dsn(), persistence={"connect_timeout": "2s"})
    d, error = refused_start(daemon_factory, config)
    waiting = d.wait_for_event("store_waiting")[0]
    assert waiting["gives_up_after"] == 2 and "password" not in str(waiting)
    assert "within persistence.connect_timeout (2s)" in error, error
    assert f"127.0.0.1:{pg.port}" in error, error
    # Started while the database is down, it serves once the database comes up.
    late = daemon_factory(fleet_config(pg.dsn()), start=False)
    late.start(wait=False)
    time.sleep(1.0)
    pg.start()
    late.wait_ready()
    with late.client() as r:
        assert r.set("k", "v") and r.get("k") == b"v"


def test_a_multi_host_dsn_is_named_host_by_host(daemon_factory: Callable[..., Daemon]) -> None:
    """The servers of a DSN listing several (failover) are named as libpq
    pairs them, each host with its port; they read
    ``127.0.0.1,127.0.0.1:p1,p2``. Nothing listens on either port here."""
    p1, p2 = free_port(), free_port()
    dsn = f"host=127.0.0.1,127.0.0.1 port={p1},{p2} dbname=sessiond user=sessiond"
    _, error = refused_start(
        daemon_factory, fleet_config(dsn, persistence={"connect_timeout": "1s"})
    )
    assert f"at 127.0.0.1:{p1},127.0.0.1:{p2} " in error, error


def test_lost_mid_run_refuses_writes_with_misconf_then_recovers_without_restart(
    pg_own_cluster: PgCluster, daemon_factory: Callable[..., Daemon]
) -> None:
    pg = pg_own_cluster
    a = daemon_factory(fleet_config(pg.dsn(application_name="a")))
    r = a.client()
    assert r.set("before", "1")
    pg.stop("immediate")
    with pytest.raises(redis.ResponseError) as first:
        r.set("during", "1")
    # The writer's connection died with the server, sending nothing back: for
    # all it knows, its commit may have reached the server before.
    assert any(
        words in str(first.value)
        for words in ("store write failed", "store commit outcome unknown", "MISCONF")
    ), first.value
    with pytest.raises(redis.ResponseError, match="MISCONF"):
        r.set("during", "2")
    # Reads may not come from memory: the host cannot hear changes meanwhile.
    with pytest.raises(redis.ResponseError, match="store read failed"):
        r.get("before")
    pg.start()
    eventually(lambda: _writes(r), 20, "writes to resume")
    assert r.get("before") == b"1"
    # The LISTEN connection reconnects on its own backoff (up to 2 s), maybe
    # after the writer: under load, after the writes resumed.
    a.wait_for_event("listen_restored", timeout=20)
    events = {e["event"] for e in a.events()}
    assert {"store_error", "store_recovered", "listen_lost", "listen_restored"} <= events
    assert "Traceback" not in a.log_text()
    r.close()


def test_an_expiry_sweep_failing_while_the_database_is_down_is_logged_once(
    pg_own_cluster: PgCluster, daemon_factory: Callable[..., Daemon]
) -> None:
    """The sweep runs every sweep_interval (100 ms here). With the database
    down and nothing written, each sweep fails: every failure is counted,
    only the first is logged, and the first sweep that succeeds after them
    says so with how many failed (at 3 a.m. one line, not one a second)."""
    pg = pg_own_cluster
    a = daemon_factory(fleet_config(pg.dsn(), metrics={"enabled": True}))
    pg.stop("immediate")
    failures = 'sessiond_store_errors_total{operation="expire"}'
    eventually(lambda: a.metric(failures) >= 5, 20, "five failed sweeps")
    logged = [
        e for e in a.events() if e["event"] == "store_error" and e.get("operation") == "expire"
    ]
    assert len(logged) == 1, logged
    pg.start()
    (recovered,) = a.wait_for_event("store_expiry_recovered", timeout=20)
    assert recovered["failures"] >= 5, recovered
    assert "Traceback" not in a.log_text()


def test_a_write_answered_with_an_error_never_lands_over_a_later_one(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon], tcp_proxy: Any
) -> None:
    """A's link goes silent: its write times out and is answered with an
    error (outcome unknown: its transaction id did not come back, and the
    commit may have reached the database). B then writes the key and is
    acknowledged. When A's link heals, A's commit, which reaches the database
    only then, must not land over B's: its fence rolls it back."""
    link = tcp_proxy(pg_db.cluster.port)
    a = daemon_factory(fleet_config(pg_db.dsn(port=link.port)))
    b = daemon_factory(fleet_config(pg_db.dsn()))
    ra, rb = a.client(socket_timeout=30), b.client()
    assert ra.set("k", "first")
    link.partition()
    with pytest.raises(redis.ResponseError, match="store commit outcome unknown: no answer within"):
        ra.set("k", "failed on A")
    assert rb.set("k", "acknowledged on B")
    link.heal()
    a.wait_for_event("store_recovered", timeout=20)
    a.wait_for_event("listen_restored", timeout=20)
    assert ra.set("other", "1")  # A commits again
    assert table_rows(pg_db)[b"k"][0] == b"acknowledged on B"
    eventually(lambda: ra.get("k") == b"acknowledged on B", what="A to read B's value")
    ra.close()
    rb.close()


def _drop_the_writer(r: redis.Redis, pg_db: PgDatabase) -> None:
    """Host 0's writer connection, once it has committed, dropped by the
    database: its next commit fails."""
    assert r.set("warm", "1")
    _end_the_writer(pg_db)


def _end_the_writer(pg_db: PgDatabase) -> None:
    """Host 0's writer connection (open) ended by the database."""
    with pg_db.admin() as admin:
        (gone,) = admin.execute(
            "SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity "
            "WHERE application_name = 'host0:writer'"
        ).fetchone() or (0,)
    assert gone == 1


def test_a_write_whose_commit_failed_while_its_pipeline_waited_is_not_acknowledged(
    fleet: Fleet, pg_db: PgDatabase
) -> None:
    """A pipeline's SET, then an INCR of the same key: the INCR's decision
    commits the SET first (read your writes) while the SET's reply is held, on
    a writer whose connection the database dropped. That commit fails and, under
    durability: always, forgets the SET. The SET's reply did not wait for that
    commit yet (the pipeline was parked on the INCR), so it waited for the next
    one, and was answered OK once the writer's probe succeeded: the session was
    acknowledged and gone."""
    (a,) = fleet(1)
    with a.client() as r:
        _drop_the_writer(r, pg_db)
        pipe = r.pipeline(transaction=False)
        pipe.set("k", "1")
        pipe.incr("k")
        set_reply, incr_reply = pipe.execute(raise_on_error=False)
        assert isinstance(incr_reply, redis.ResponseError), incr_reply
        row = table_rows(pg_db).get(b"k")
        if set_reply is True:
            assert row is not None and row[0] == b"1", "SET k acknowledged, not stored"
        else:
            assert isinstance(set_reply, redis.ResponseError), set_reply
            assert "store write failed" in str(set_reply)
        assert r.get("k") == (row[0] if row is not None else None)


def test_a_queued_command_is_not_told_that_a_commit_failed(fleet: Fleet, pg_db: PgDatabase) -> None:
    """A command queued inside MULTI writes nothing until EXEC: its QUEUED
    must not wait for a commit, nor be replaced by the error of one that
    fails (here the commit of the SET before it, on a writer whose
    connection the database dropped). Told "store write failed", a client
    would take the command for refused, while EXEC still runs it."""
    (a,) = fleet(1)
    with a.client() as r:
        _drop_the_writer(r, pg_db)
        pipe = r.pipeline(transaction=False)
        pipe.set("x", "1")
        pipe.execute_command("MULTI")
        pipe.execute_command("APPEND", "k", "v")  # no reply callback in redis-py
        pipe.execute_command("DISCARD")
        set_reply, multi, queued, discarded = pipe.execute(raise_on_error=False)
        assert isinstance(set_reply, redis.ResponseError), set_reply
        assert (multi, queued, discarded) == (b"OK", b"QUEUED", b"OK")


def _answers(command: Callable[[], object]) -> bool:
    """Whether ``command`` is answered without an error reply."""
    try:
        return bool(command())
    except redis.ResponseError:
        return False


def _writes(r: redis.Redis) -> bool:
    return _answers(lambda: r.set("after", "1"))


def test_a_slow_database_times_out_and_queues_nothing_without_bound(
    pg_own_cluster: PgCluster, daemon_factory: Callable[..., Daemon]
) -> None:
    pg = pg_own_cluster
    d = daemon_factory(fleet_config(pg.dsn(), persistence={"timeout": "500ms"}))
    with d.client() as r:
        assert r.set("k", "1")
        pg.set_commit_delay(0.1)  # every commit waits 100 ms: slow, not dead
        assert r.set("k", "2")
        assert r.incr("n") == 1
        with pg.admin("sessiond") as conn:
            # A lock held longer than the timeout: the daemon's decision waits on
            # it and is answered with the timeout's error, not left hanging.
            conn.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_CLASS, lock_id(b"n")))
            with pytest.raises(redis.ResponseError, match="store deci") as timed_out:
                r.incr("n")
            # Three bounds of 500 ms race (the lock's, the statement's, the
            # client's): whichever comes first is named.
            assert any(
                why in str(timed_out.value)
                for why in ("lock timeout", "statement timeout", "no answer within 0.5s")
            ), timed_out.value
            conn.execute("SELECT pg_advisory_unlock_all()")
        pg.set_commit_delay(0)
        assert r.incr("n") == 2
        assert r.get("k") == b"2"
    assert "Traceback" not in d.log_text()


def test_a_read_or_decision_the_server_times_out_fails_once_naming_the_timeout(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon]
) -> None:
    """A read or a decision that the server stops (its statement_timeout or
    lock_timeout, which persistence.timeout sets) is answered then, naming the
    timeout: it ran its time, so it is not tried again on another connection,
    which doubled the wait. The DSN's options lower the server's bounds here
    so that they, not the client's, come first."""
    dsn = pg_db.dsn(options="-c statement_timeout=1000 -c lock_timeout=1000")
    d = daemon_factory(fleet_config(dsn, persistence={"timeout": "5s"}))
    with d.client() as r:
        assert r.get("warm") is None  # the pool now holds an idle connection
        assert r.incr("n") == 1
        with pg_db.admin() as conn:
            conn.execute("BEGIN")
            conn.execute("LOCK TABLE sessiond_sessions IN ACCESS EXCLUSIVE MODE")
            for command in (("GET", "absent"), ("INCR", "n")):
                with pytest.raises(redis.ResponseError) as failed:
                    r.execute_command(*command)
                # The words of the branch that answers at once; the retry on
                # another connection answered with the server's words alone.
                assert "no answer within 5s (canceling statement due to" in str(failed.value)
            conn.execute("ROLLBACK")
        assert r.incr("n") == 2
    assert "Traceback" not in d.log_text()


def test_a_slow_link_holds_connections_to_the_pool_size(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon], tcp_proxy: Any
) -> None:
    """Many clients missing memory at once over a slow link: they queue for the
    pool's connections, the host never opens more than pool_size + 3 (the
    writer, the LISTEN connection, the helper thread's)."""
    link = tcp_proxy(pg_db.cluster.port)
    d = daemon_factory(
        fleet_config(
            pg_db.dsn(port=link.port, application_name="slow"), persistence={"pool_size": 3}
        )
    )
    other = daemon_factory(fleet_config(pg_db.dsn()))
    with other.client() as r:  # written elsewhere: the slow host has none in memory
        assert r.mset({f"k{i}": "v" for i in range(1, 201)})
    link.set_delay(0.02)
    errors: list[BaseException] = []
    seen: list[int] = []

    def read(first: int) -> None:
        try:
            with d.client() as r:
                for i in range(first, 201, 20):
                    assert r.get(f"k{i}") == b"v"
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(1, 21)]
    for t in threads:
        t.start()
    with pg_db.admin() as conn:
        while any(t.is_alive() for t in threads):
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'slow:%'"
            ).fetchone()
            seen.append(int(row[0]) if row else 0)
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert seen and max(seen) <= 3 + 3, seen
    assert "Traceback" not in d.log_text()


def test_a_decision_held_by_client_pause_lets_its_keys_go_meanwhile(
    pg_db: PgDatabase, fleet: Fleet
) -> None:
    """A command whose decision opened as CLIENT PAUSE began does not keep the
    decision (its keys, its transaction) for the pause: it decides again after."""
    host, other = fleet(2)
    paused: list[int] = []
    with pg_db.admin() as conn, host.client() as r, host.client() as admin:
        conn.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_CLASS, lock_id(b"n")))
        incr = threading.Thread(target=lambda: paused.append(int(r.incr("n"))))
        incr.start()
        wait_until(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                ).fetchone()
                == (1,)
            ),
            what="the decision to wait for the key",
        )
        assert admin.execute_command("CLIENT", "PAUSE", "60000", "WRITE")
        conn.execute("SELECT pg_advisory_unlock_all()")
        with other.client() as elsewhere:
            assert elsewhere.incr("n") == 1  # the paused host does not hold the key
        assert admin.execute_command("CLIENT", "UNPAUSE")
        incr.join(30)
    assert paused == [2]


def test_failover_to_a_promoted_replica_through_a_multi_host_dsn(
    pg_own_cluster: PgCluster, daemon_factory: Callable[..., Daemon]
) -> None:
    from pg import multi_host_dsn

    primary = pg_own_cluster
    replica = primary.create_replica()
    dsn = multi_host_dsn([primary, replica], connect_timeout=2)
    a, b = daemon_factory(fleet_config(dsn)), daemon_factory(fleet_config(dsn))
    ra, rb = a.client(), b.client()
    assert ra.set("k", "before")
    assert rb.get("k") == b"before"
    # Wait until the replica has it (synchronous replication is not in use:
    # a promotion may lose the last commits, as PostgreSQL documents).
    _caught_up(primary, replica)
    primary.kill()
    replica.promote()
    eventually(lambda: _writes(ra), 20, "writes through the promoted replica")
    assert ra.set("k", "after")
    eventually(lambda: rb.get("k") == b"after", 10, "B to follow")
    # B hears A through its new LISTEN connection before its own writer has
    # found the old primary gone: its first commit there (the renewal of that
    # read) fails, and writes get MISCONF until the next one reconnects, a
    # second later (docs/shared-store.md, "lost mid-run").
    eventually(lambda: _writes(rb), 20, "writes through B after the promotion")
    assert rb.incr("n") == 1
    ra.close()
    rb.close()


def _caught_up(primary: PgCluster, replica: PgCluster) -> None:
    with primary.admin() as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
    assert row is not None
    with replica.admin() as conn:
        wait_until(
            lambda: (
                conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (row[0],)).fetchone()
                == (True,)
            ),
            10,
        )


# --------------------------------------------------------- LISTEN lost


def test_a_terminated_listen_connection_never_serves_a_stale_read(
    fleet: Fleet, clients: Any, pg_db: PgDatabase
) -> None:
    host_a, host_b = fleet(2)
    a, b = clients(host_a), clients(host_b)
    a.set("k", "old")
    assert b.get("k") == b"old"  # cached on B
    assert pg_db.cluster.terminate_backends(application_name="host1:listen") == 1
    host_b.wait_for_event("listen_lost")
    a.set("k", "new")  # B cannot hear this one
    assert b.get("k") == b"new"
    host_b.wait_for_event("listen_restored", timeout=10)
    a.set("k", "newer")
    eventually(lambda: b.get("k") == b"newer", what="the next change")


def test_a_silent_listen_connection_is_found_out_and_never_serves_a_stale_read(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon], tcp_proxy: Any
) -> None:
    link = tcp_proxy(pg_db.cluster.port)
    a = daemon_factory(fleet_config(pg_db.dsn()))
    b = daemon_factory(fleet_config(pg_db.dsn(port=link.port)))
    ra, rb = a.client(), b.client(socket_timeout=30)
    ra.set("k", "old")
    assert rb.get("k") == b"old"
    # Counted from here: a heartbeat late on a loaded machine may have cost
    # B its listener once already.
    losses = len([e for e in b.events() if e.get("event") == "listen_lost"])
    restores = len([e for e in b.events() if e.get("event") == "listen_restored"])
    link.partition()  # B's every connection hangs: no error, no notification
    ra.set("k", "new")
    # The heartbeat through the LISTEN connection does not come back: B knows
    # it may have missed changes.
    lost = b.wait_for_event("listen_lost", count=losses + 1, timeout=5)[-1]
    # The words deploy/README.md's and the alerts' runbooks grep for.
    assert lost["reason"] == "no heartbeat back within 0.25s", lost
    with pytest.raises(redis.ResponseError, match="store read failed"):
        rb.get("k")  # not "old": memory was dropped, the database cannot answer
    link.heal()
    b.wait_for_event("listen_restored", count=restores + 1, timeout=15)
    assert rb.get("k") == b"new"
    ra.close()
    rb.close()


# ------------------------------------------------------ crashes under load


class Writer(threading.Thread):
    """SETs ``<name>:<n>`` for n = 0, 1, ... until stopped; remembers every
    acknowledged one (and how many were answered with an error)."""

    def __init__(self, d: Daemon, name: str) -> None:
        super().__init__(daemon=True)
        self.d = d
        self.name_ = name
        self.acked: list[str] = []
        self.failed = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        r = self.d.client(socket_timeout=5)
        while not self.stopping.is_set():
            key = f"{self.name_}:{n}"
            try:
                if r.set(key, str(n)):
                    self.acked.append(key)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                self.failed += 1
                time.sleep(0.05)
            n += 1
        r.close()


def test_kill_9_of_a_host_under_load_loses_no_acknowledged_write(
    fleet: Fleet, pg_db: PgDatabase
) -> None:
    a, b = fleet(2)
    writers = [Writer(a, f"w{i}") for i in range(4)]
    for w in writers:
        w.start()
    # Under load, not after a fixed time: a busy machine acknowledges fewer.
    eventually(lambda: sum(len(w.acked) for w in writers) > 100, 30, "100 acknowledged writes")
    a.kill()
    for w in writers:
        w.stopping.set()
        w.join(10)
    acked = [k for w in writers for k in w.acked]
    assert len(acked) > 100
    with b.client() as r:
        values = r.mget(acked)
    missing = [k for k, v in zip(acked, values, strict=True) if v is None]
    assert not missing, missing[:5]


def test_kill_9_of_postgresql_under_load_loses_no_acknowledged_write(
    pg_own_cluster: PgCluster, daemon_factory: Callable[..., Daemon]
) -> None:
    pg = pg_own_cluster
    d = daemon_factory(fleet_config(pg.dsn()))
    writers = [Writer(d, f"w{i}") for i in range(4)]
    for w in writers:
        w.start()
    time.sleep(1.0)
    pg.kill()
    time.sleep(0.5)
    pg.start()
    time.sleep(2.0)
    for w in writers:
        w.stopping.set()
        w.join(10)
    acked = [k for w in writers for k in w.acked]
    assert sum(w.failed for w in writers) > 0  # the crash was seen
    with psycopg.connect(pg.dsn()) as conn:
        stored = {
            bytes(k)
            for (k,) in conn.execute(
                "SELECT key FROM sessiond_sessions WHERE key = ANY(%s)",
                ([k.encode() for k in acked],),
            ).fetchall()
        }
    missing = [k for k in acked if k.encode() not in stored]
    assert not missing, missing[:5]
    assert "Traceback" not in d.log_text()


# ----------------------------------------------------------------- metrics


def test_the_shared_store_s_metrics(
    fleet: Fleet, pg_db: PgDatabase, daemon_factory: Callable[..., Daemon]
) -> None:
    # A heartbeat late by more than its interval counts as a lost listener:
    # a second, not the fleet tests' quarter, so that a loaded machine does
    # not reconnect it in the middle of the counts below.
    host_a, host_b = fleet(2, metrics={"enabled": True}, persistence={"heartbeat_interval": "1s"})
    a, b = host_a.client(), host_b.client()
    assert host_a.metric("sessiond_store_listening") == 1
    b.set("k", "1")
    assert a.get("k") == b"1"
    b.set("k", "2")
    eventually(lambda: a.get("k") == b"2")
    assert a.incr("n") == 1
    assert host_b.metric("sessiond_store_invalidations_sent_total") >= 2
    assert host_a.metric("sessiond_store_invalidations_received_total") >= 1
    assert host_a.metric("sessiond_store_notifications_received_total") >= 1
    assert host_a.metric("sessiond_store_invalidation_lag_seconds_count") >= 1
    assert host_a.metric("sessiond_store_decisions_total") == 1
    assert host_a.metric("sessiond_store_round_trip_seconds_count", operation="decide") == 1
    assert host_a.metric("sessiond_store_round_trip_seconds_count", operation="heartbeat") >= 1
    assert host_a.metric("sessiond_store_pool_connections_max") == 8
    assert host_a.metric("sessiond_store_pool_connections") >= 1
    # Exported from the start (how many: what the machine's load made of it).
    assert 'sessiond_store_reconnects_total{connection="listen"}' in host_a.scrape()
    # A hears its own commits back on the channel too, and counts none of them:
    # once B's next write reached A (after A's own, in commit order), A has
    # received exactly one more notification.
    heard = host_a.metric("sessiond_store_notifications_received_total")
    for i in range(3):
        assert a.set(f"own{i}", "x")
    b.set("k", "3")
    eventually(lambda: a.get("k") == b"3")
    assert host_a.metric("sessiond_store_notifications_received_total") == heard + 1
    flushes = host_a.metric("sessiond_store_memory_flushes_total")
    reconnects = host_a.metric("sessiond_store_reconnects_total", connection="listen")
    restored = len([e for e in host_a.events() if e.get("event") == "listen_restored"])
    pg_db.cluster.terminate_backends(application_name="host0:listen")
    host_a.wait_for_event("listen_restored", count=restored + 1, timeout=10)
    assert host_a.metric("sessiond_store_reconnects_total", connection="listen") == reconnects + 1
    assert host_a.metric("sessiond_store_memory_flushes_total") == flushes + 2
    assert host_a.metric("sessiond_store_listening") == 1
    a.close()
    b.close()


def _losing_commit_acks(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon], tcp_proxy: Any, **extra: Any
) -> tuple[Any, Daemon]:
    """A host whose connections go through a proxy that can lose a commit's
    acknowledgement (tests/tcp_proxy.py), and nothing of its own committing
    meanwhile but what the test does (no sweeps)."""
    link = tcp_proxy(pg_db.cluster.port)
    config = fleet_config(
        pg_db.dsn(port=link.port, application_name="host0"),
        **deep_merge({"cache": {"sweep_interval": "1h"}}, extra),
    )
    return link, daemon_factory(config)


def _set_calls(r: redis.Redis) -> int:
    """How many SETs the host has run (a SET under way runs at once, its
    reply waits for the commit)."""
    return int(r.info("commandstats")["cmdstat_set"]["calls"])


def _reply(command: Callable[[], object]) -> object:
    try:
        return command()
    except redis.ResponseError as exc:
        return exc


@pytest.mark.parametrize("then", ["cut", "silence"])
@pytest.mark.parametrize("durability", ["always", "batch"])
def test_a_write_whose_commit_landed_unacknowledged_is_answered_as_landed(
    pg_db: PgDatabase,
    daemon_factory: Callable[..., Daemon],
    tcp_proxy: Any,
    then: str,
    durability: str,
) -> None:
    """The database commits a group commit, then its acknowledgement is lost:
    the connection is reset, or says nothing more until the timeout. The
    writer asks the database, on another connection, whether that
    transaction committed (its id came back before the commit ran) and
    answers OK, as it landed; it does not commit it again under batch."""
    link, a = _losing_commit_acks(
        pg_db,
        daemon_factory,
        tcp_proxy,
        persistence={"durability": durability},
        metrics={"enabled": True},
    )
    with a.client() as r:
        assert r.set("k", "first")
        r.execute_command("WAITAOF", 1, 0, 0)
        first = table_rows(pg_db)[b"k"][3]  # its version: every commit of it adds one
        link.lose_commit_ack(b"host0:writer", then=then)
        pipe = r.pipeline(transaction=False)
        pipe.set("k", "landed")
        pipe.execute_command("WAITAOF", 1, 0, 0)
        assert pipe.execute() == [True, [1, 0]]
        assert link.commit_acks_lost == 1
        assert r.set("other", "1") and r.execute_command("WAITAOF", 1, 0, 0) == [1, 0]
        value, *_, version = table_rows(pg_db)[b"k"]
        assert (value, version) == (b"landed", first + 1)  # committed once, not again
        assert r.get("k") == b"landed"
    (unanswered,) = a.wait_for_event("store_commit_unanswered")
    assert unanswered["outcome"] == "landed" and unanswered["operation"] == "commit"
    assert not [e for e in a.events() if e.get("event") == "store_error"]
    assert a.metric("sessiond_store_unanswered_commits_total", outcome="landed") == 1
    assert a.metric("sessiond_store_unanswered_commits_total", outcome="unknown") == 0


@pytest.mark.parametrize("then", ["cut", "silence"])
def test_a_decision_whose_commit_landed_unacknowledged_is_answered_as_landed(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon], tcp_proxy: Any, then: str
) -> None:
    """An INCR's decision commits, then its acknowledgement is lost. The
    database is asked whether its transaction committed: the INCR is answered
    with its count, not with an error (a client told it failed would count
    again). This was the torture's one unexplained problem (bench/pg_torture.py):
    a DEL answering 1 for a counter whose INCR had been answered with an error."""
    link, a = _losing_commit_acks(pg_db, daemon_factory, tcp_proxy)
    with a.client() as r:
        assert r.incr("n") == 1
        link.lose_commit_ack(b"host0:pool", then=then)
        assert _reply(lambda: r.incr("n")) == 2
        assert link.commit_acks_lost == 1
        assert table_rows(pg_db)[b"n"][0] == b"2"
        assert r.incr("n") == 3
    (unanswered,) = a.wait_for_event("store_commit_unanswered")
    assert unanswered["outcome"] == "landed" and unanswered["operation"] == "decide"


def test_a_decision_that_changed_nothing_keeps_its_reply_when_its_commit_s_answer_is_lost(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon], tcp_proxy: Any
) -> None:
    """SET NX of a key that exists decides and changes nothing; its commit
    (its barrier alone) loses its acknowledgement. Nothing of it could have
    landed, so its reply stands: it was answered with the lost connection's
    error."""
    link, a = _losing_commit_acks(pg_db, daemon_factory, tcp_proxy)
    with a.client() as r:
        assert r.set("k", "v", nx=True)
        link.lose_commit_ack(b"host0:pool", then="cut")
        assert _reply(lambda: r.set("k", "w", nx=True)) is None
        assert link.commit_acks_lost == 1
        assert r.get("k") == b"v"


def test_a_commit_that_cannot_be_asked_about_is_answered_as_unknown(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon], tcp_proxy: Any
) -> None:
    """The acknowledgement is lost and the database is then out of reach for
    longer than the timeout: the reply says the outcome is unknown (never
    that the write failed: it landed), memory keeps no copy of either, and
    the next read, the database back, finds what landed."""
    link, a = _losing_commit_acks(pg_db, daemon_factory, tcp_proxy)
    with a.client(socket_timeout=30) as r:
        assert r.set("k", "first")
        link.lose_commit_ack(b"host0:writer", then="partition")
        reply = _reply(lambda: r.set("k", "landed"))
        assert isinstance(reply, redis.ResponseError), reply
        assert "store commit outcome unknown: no answer within 2s" in str(reply)
        assert table_rows(pg_db)[b"k"][0] == b"landed"
        link.heal()
        assert r.get("k") == b"landed"
    (unanswered,) = a.wait_for_event("store_commit_unanswered")
    assert unanswered["outcome"] == "unknown"


def test_a_failed_commit_of_one_connection_is_not_reported_to_another(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon], tcp_proxy: Any
) -> None:
    """A's SET waits for a group commit that cannot finish (the writer's link
    is silent); B's INCR meanwhile is decided and committed on a pooled
    connection. B's reply waited for every write the host had recorded, A's
    too, and was told A's error for a count that had landed (the crash
    torture saw this as counters one higher than their acknowledged
    increments): now it waits for its own writes only."""
    link, a = _losing_commit_acks(pg_db, daemon_factory, tcp_proxy)
    with a.client(socket_timeout=30) as ra, a.client() as rb, a.client() as rc:
        assert ra.set("x", "0") and rb.incr("n") == 1  # the writer and a pooled connection
        link.silence(b"host0:writer")
        answered: list[object] = []
        setter = threading.Thread(target=lambda: answered.append(_reply(lambda: ra.set("x", "1"))))
        setter.start()
        eventually(lambda: _set_calls(rc) == 2, what="A's SET to run")  # in memory, uncommitted
        assert _reply(lambda: rb.incr("n")) == 2
        setter.join(30)
        assert table_rows(pg_db)[b"n"][0] == b"2"
    (reply,) = answered
    assert isinstance(reply, redis.ResponseError), reply
    # Its commit never reached the database, which says so when asked.
    assert "store commit failed: no answer within 2s" in str(reply)
    (unanswered,) = a.wait_for_event("store_commit_unanswered")
    assert unanswered["outcome"] == "rolled back", unanswered


def test_a_pipeline_s_replies_each_get_their_own_command_s_outcome(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon], tcp_proxy: Any
) -> None:
    """One pipeline, SET x then INCR n: the SET's group commit fails (the
    writer's link is silent) while the INCR's decision lands on a pooled
    connection. The replies a connection held together got one outcome, and
    the INCR was answered with the SET's error for a count that had landed
    (a client retrying it would count twice): each now gets its own."""
    link, a = _losing_commit_acks(pg_db, daemon_factory, tcp_proxy)
    with a.client(socket_timeout=30) as r:
        assert r.set("x", "0") and r.incr("n") == 1  # the writer and a pooled connection
        link.silence(b"host0:writer")
        pipe = r.pipeline(transaction=False)
        pipe.set("x", "1").incr("n")
        set_reply, incr_reply = pipe.execute(raise_on_error=False)
    assert isinstance(set_reply, redis.ResponseError), set_reply
    assert "store commit failed: no answer within 2s" in str(set_reply)
    assert incr_reply == 2, incr_reply
    assert table_rows(pg_db)[b"n"][0] == b"2"
    assert table_rows(pg_db)[b"x"][0] == b"0"


def test_under_batch_a_decision_s_reply_does_not_wait_for_an_acknowledged_write(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon], tcp_proxy: Any
) -> None:
    """durability: batch acknowledges a SET at once; an INCR on the same
    connection after it waits for its decision's commit only. It waited for
    the SET's group commit too, and got that commit's error when it failed
    (the writer's link silent), for a count that had landed."""
    link, a = _losing_commit_acks(
        pg_db, daemon_factory, tcp_proxy, persistence={"durability": "batch"}
    )
    with a.client(socket_timeout=30) as r:
        assert r.set("x", "0") and r.incr("n") == 1
        link.silence(b"host0:writer")
        assert r.set("x", "1")  # acknowledged at once
        assert _reply(lambda: r.incr("n")) == 2
    assert table_rows(pg_db)[b"n"][0] == b"2"


def test_a_refused_command_in_a_pipeline_keeps_its_own_error(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon], tcp_proxy: Any
) -> None:
    """A request refused before it runs (a disabled EVAL) after a SET whose
    commit fails: its reply waited for the command before it, whose state the
    keyspace still held, and was replaced by that commit's error."""
    link, a = _losing_commit_acks(
        pg_db, daemon_factory, tcp_proxy, security={"disabled_commands": ["EVAL"]}
    )
    with a.client(socket_timeout=30) as r:
        assert r.set("x", "0")
        link.silence(b"host0:writer")
        pipe = r.pipeline(transaction=False)
        pipe.set("x", "1").execute_command("EVAL", "return 1", 0)
        set_reply, eval_reply = pipe.execute(raise_on_error=False)
    assert isinstance(set_reply, redis.ResponseError), set_reply
    assert isinstance(eval_reply, redis.exceptions.NoPermissionError), eval_reply  # NOPERM


def test_under_batch_a_held_write_whose_commit_fails_is_not_told_it_failed(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon], tcp_proxy: Any
) -> None:
    """durability: batch holds a write's reply while the store lags (a commit
    under way for longer than flush_interval). When that commit fails the
    write is kept and committed once the database is back, so its reply says
    the outcome is unknown and that it is kept; it said the write failed."""
    link, a = _losing_commit_acks(
        pg_db,
        daemon_factory,
        tcp_proxy,
        persistence={"durability": "batch", "flush_interval": "1ms"},
    )
    with a.client(socket_timeout=30) as r:
        assert r.set("x", "0")
        r.execute_command("WAITAOF", 1, 0, 0)
        link.silence(b"host0:writer")
        assert r.set("y", "1")  # acknowledged at once
        eventually(lambda: link.silenced_bytes > 0, what="y's commit to be sent")
        # The store lags once that commit is older than flush_interval (1ms):
        # fifty of them (the test observed the commit as it was sent).
        time.sleep(0.05)
        reply = _reply(lambda: r.set("z", "1"))  # held: that commit is late
        link.heal()
    assert isinstance(reply, redis.ResponseError), reply
    assert "store commit outcome unknown" in str(reply), reply
    assert "kept and committed once the database answers" in str(reply), reply
    eventually(lambda: b"z" in table_rows(pg_db), 20, "z to land once the database answers")


@pytest.mark.parametrize("how", ["get", "exec", "getex"])
def test_a_read_never_shows_a_value_whose_commit_then_fails(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon], tcp_proxy: Any, how: str
) -> None:
    """A's SET is in memory and its commit under way when B reads the key;
    the commit then fails (the writer's link is silent). B's reply showed
    A's value, which was never applied (the next GET showed the value
    before it); it now waits for the commit, as Redis' reply waits for the fsync, and gets
    its error. EXEC of reads and GETEX without options are not readonly
    commands, yet show what memory holds: they waited for nothing."""
    link, a = _losing_commit_acks(pg_db, daemon_factory, tcp_proxy)
    with a.client(socket_timeout=30) as ra, a.client(socket_timeout=30) as rb:
        assert ra.set("k", "old")
        link.silence(b"host0:writer")
        answered: list[object] = []
        setter = threading.Thread(
            target=lambda: answered.append(_reply(lambda: ra.set("k", "new")))
        )
        setter.start()
        eventually(lambda: _set_calls(rb) == 2, what="A's SET to run")
        if how == "exec":
            pipe = rb.pipeline(transaction=True)
            pipe.get("k")
            read = _reply(lambda: pipe.execute(raise_on_error=False)[0])
        else:
            read = _reply(lambda: rb.execute_command(how.upper(), "k"))
        setter.join(30)
        assert isinstance(answered[0], redis.ResponseError), answered
        assert read != b"new", "B was shown a value that was never applied"
        assert rb.get("k") == b"old"


def test_a_read_is_told_when_the_commit_of_what_it_shows_fails_before_a_later_one_lands(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon], tcp_proxy: Any
) -> None:
    """A's SET k is in a commit under way; C's SET j is recorded after it;
    B's GET k shows A's value and waits through C's change. A's commit fails
    and C's, the next, lands: B was answered with A's value, which was never
    applied (its wait was told of failures of C's commit only)."""
    link, a = _losing_commit_acks(pg_db, daemon_factory, tcp_proxy, persistence={"timeout": "5s"})
    with (
        a.client(socket_timeout=30) as ra,
        a.client(socket_timeout=30) as rb,
        a.client(socket_timeout=30) as rc,
    ):
        assert ra.set("k", "old")
        link.silence(b"host0:writer")
        answered: list[object] = []
        other: list[object] = []
        read: list[object] = []
        setter = threading.Thread(
            target=lambda: answered.append(_reply(lambda: ra.set("k", "new")))
        )
        setter.start()
        eventually(lambda: link.silenced_bytes > 0, what="A's commit to be sent")
        writer = threading.Thread(target=lambda: other.append(_reply(lambda: rc.set("j", "x"))))
        writer.start()
        eventually(lambda: _set_calls(rb) == 3, what="C's SET to run")
        reader = threading.Thread(target=lambda: read.append(_reply(lambda: rb.get("k"))))
        reader.start()
        setter.join(30)
        link.heal()
        reader.join(30)
        writer.join(30)
        assert isinstance(answered[0], redis.ResponseError), answered
        assert ra.get("k") == b"old"
    assert read[0] != b"new", "B was shown a value that was never applied"


def test_under_batch_a_decision_after_a_failed_commit_is_not_told_it_is_kept(
    pg_db: PgDatabase, daemon_factory: Callable[..., Daemon], tcp_proxy: Any
) -> None:
    """An INCR reads this host's own pending writes first (a flush); when
    that commit fails, the INCR never ran and never lands: it must not be
    told that it is kept and committed later, as the writes are."""
    link, a = _losing_commit_acks(
        pg_db, daemon_factory, tcp_proxy, persistence={"durability": "batch"}
    )
    with a.client(socket_timeout=30) as r:
        assert r.set("n", "0")
        r.execute_command("WAITAOF", 1, 0, 0)
        link.silence(b"host0:writer")
        assert r.set("n", "5")
        reply = _reply(lambda: r.incr("n"))
        link.heal()
    assert isinstance(reply, redis.ResponseError), reply
    assert "kept" not in str(reply), reply
    eventually(lambda: table_rows(pg_db)[b"n"][0] == b"5", 20, "the SET to land")


def test_flushall_on_an_empty_memory_waits_for_its_commit(fleet: Fleet, pg_db: PgDatabase) -> None:
    """FLUSHALL on a host whose memory holds no live session records the
    clear (store.clear) but no delete: its reply must still wait for the
    clear's commit, and be an error when that commit fails."""
    a, b = fleet(2)
    with a.client() as ra, b.client() as rb:
        assert rb.set("s1", "kept?")
        assert ra.set("warm", "1") and ra.delete("warm") == 1  # A's writer committed; memory empty
        _end_the_writer(pg_db)
        reply = _reply(lambda: ra.flushall())
        if reply is True:
            a.wait_for_event("store_error")  # the clear's commit failed (forgotten: always)
            a.wait_for_event("store_recovered", timeout=20)
            rows = table_rows(pg_db)
            assert b"s1" not in rows, f"FLUSHALL acknowledged, but the table still has {rows}"
        else:
            assert isinstance(reply, redis.ResponseError), reply
