"""Session locks and optimistic transactions through redis-py, RESP2 and RESP3:
``Lock`` (SET NX PX to take it, EVALSHA scripts to release, extend and
reacquire it) and ``Redis.transaction()`` / ``Pipeline.watch()``, which rest
on WATCH/MULTI/EXEC, with a concurrent writer.

The daemon keeps sessions in its SQLite store, or the PostgreSQL shared store,
with ``durability: always``, so every path (read-through, held replies,
decisions by the database) is the production one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from conftest import Daemon
from redis.exceptions import LockError, LockNotOwnedError, WatchError


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def lock_daemon(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """The daemon on SQLite, and on the shared store (PostgreSQL, a database of
    its own on the tests' cluster: docs/shared-store.md), where SET NX, the
    lock scripts and WATCH/EXEC are decided by the database."""
    persistence: dict[str, str] = {"backend": request.param, "durability": "always"}
    database = None
    if request.param == "postgresql":
        cluster = request.getfixturevalue("pg_cluster")
        database = cluster.create_database()
        persistence["dsn"] = cluster.dsn(database)
    d = Daemon(tmp_path_factory.mktemp("locks"), {"persistence": persistence}).start()
    yield d
    d.stop()
    if database is not None and cluster.running:
        cluster.drop_database(database)


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def protocol(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def r(lock_daemon: Daemon, protocol: int) -> Iterator[redis.Redis]:
    client = lock_daemon.client(protocol=protocol)
    client.flushall()
    client.script_flush()
    yield client
    client.close()


@pytest.fixture
def other(lock_daemon: Daemon, protocol: int) -> Iterator[redis.Redis]:
    client = lock_daemon.client(protocol=protocol)
    yield client
    client.close()


def test_lock_acquire_and_release(r: redis.Redis, other: redis.Redis) -> None:
    lock = r.lock("session:abc:lock", timeout=10)
    assert lock.acquire(blocking=False)
    assert lock.owned()
    assert 9000 < r.pttl("session:abc:lock") <= 10000
    contender = other.lock("session:abc:lock", timeout=10)
    assert not contender.acquire(blocking=False)
    lock.release()  # EVALSHA of redis-py's release script (EVAL once on NOSCRIPT)
    assert r.exists("session:abc:lock") == 0
    assert contender.acquire(blocking=False)
    contender.release()
    with pytest.raises(LockError):
        lock.release()  # not held any more


def test_a_blocked_contender_gets_the_lock_when_it_is_released(
    r: redis.Redis, other: redis.Redis
) -> None:
    lock = r.lock("L", timeout=10)
    assert lock.acquire()
    got: list[float] = []

    def contend() -> None:
        contender = other.lock("L", timeout=10, sleep=0.01)
        if contender.acquire(blocking_timeout=5):
            got.append(time.monotonic())
            contender.release()

    thread = threading.Thread(target=contend)
    thread.start()
    time.sleep(0.3)
    released = time.monotonic()
    lock.release()
    thread.join(10)
    assert got and got[0] >= released


def test_lock_extend_and_reacquire(r: redis.Redis) -> None:
    lock = r.lock("L", timeout=5)
    assert lock.acquire(blocking=False)
    assert lock.extend(10)  # adds to the time left
    assert 14000 < r.pttl("L") <= 15000
    assert lock.extend(3, replace_ttl=True)
    assert 2000 < r.pttl("L") <= 3000
    assert lock.reacquire()  # back to the lock's own timeout
    assert 4000 < r.pttl("L") <= 5000
    r.set("L", "someone else's token")
    with pytest.raises(LockNotOwnedError):
        lock.extend(10)
    with pytest.raises(LockNotOwnedError):
        lock.release()
    assert r.get("L") == b"someone else's token"


def test_a_lock_that_expired(r: redis.Redis, other: redis.Redis) -> None:
    lock = r.lock("L", timeout=0.2)
    assert lock.acquire(blocking=False)
    time.sleep(0.4)
    assert not lock.locked()
    taken = other.lock("L", timeout=10)
    assert taken.acquire(blocking=False)  # free again
    with pytest.raises(LockNotOwnedError):
        lock.release()  # the expired holder cannot release the new holder's lock
    assert taken.owned()
    taken.release()


def test_lock_as_a_context_manager_around_a_session_update(
    r: redis.Redis, lock_daemon: Daemon, protocol: int
) -> None:
    """Eight workers update one session under its lock: no update is lost."""
    r.set("session:s", "0")

    def worker() -> None:
        with lock_daemon.client(protocol=protocol) as c:
            for _ in range(10):
                with c.lock("session:s:lock", timeout=5, sleep=0.001, blocking_timeout=30):
                    value = int(c.get("session:s") or 0)
                    c.set("session:s", str(value + 1))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert r.get("session:s") == b"80"
    assert r.exists("session:s:lock") == 0


def test_transaction_retries_after_a_concurrent_write(r: redis.Redis, other: redis.Redis) -> None:
    r.set("balance", "100")
    attempts: list[int] = []

    def debit(pipe: redis.client.Pipeline) -> None:
        balance = int(pipe.get("balance") or 0)
        attempts.append(balance)
        if len(attempts) == 1:
            other.set("balance", "50")  # another client writes between WATCH and EXEC
        pipe.multi()
        pipe.set("balance", str(balance - 30))

    r.transaction(debit, "balance")
    assert attempts == [100, 50]
    assert r.get("balance") == b"20"


def test_pipeline_watch_raises_watch_error(r: redis.Redis, other: redis.Redis) -> None:
    r.set("k", "1")
    with r.pipeline() as pipe:
        pipe.watch("k")
        assert pipe.get("k") == b"1"  # immediate mode after WATCH
        other.incr("k")
        pipe.multi()
        pipe.set("k", "from the transaction")
        with pytest.raises(WatchError):
            pipe.execute()
    assert r.get("k") == b"2"
    with r.pipeline() as pipe:  # unchanged: it goes through
        pipe.watch("k")
        pipe.multi()
        pipe.set("k", "3")
        assert pipe.execute() == [True]
    assert r.get("k") == b"3"


def test_watch_of_an_expiring_key(r: redis.Redis) -> None:
    r.set("k", "1", px=150)
    with r.pipeline() as pipe:
        pipe.watch("k")
        time.sleep(0.3)
        pipe.multi()
        pipe.set("other", "x")
        with pytest.raises(WatchError):
            pipe.execute()
    assert r.exists("other") == 0


def test_watch_of_a_session_only_the_store_holds(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"persistence": {"backend": "sqlite"}, "cache": {"max_sessions": 2}})
    with d.client() as r, d.client() as other:
        r.set("watched", "1")
        for i in range(5):
            r.set(f"filler{i}", "x")  # "watched" is evicted: only the store holds it
        with r.pipeline() as pipe:
            pipe.watch("watched")
            other.set("watched", "2")
            pipe.multi()
            pipe.get("watched")
            with pytest.raises(WatchError):
                pipe.execute()
        with r.pipeline() as pipe:
            pipe.watch("watched")
            for i in range(5):
                other.set(f"more{i}", "x")  # evicted again meanwhile: still unchanged
            pipe.multi()
            pipe.get("watched")
            assert pipe.execute() == [b"2"]
