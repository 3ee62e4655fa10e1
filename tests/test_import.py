"""``sessiond import``: a real redis-server's keys copied into a real daemon
through its socket, by the command line an operator runs (docs/operations.md,
"Moving sessions from Redis")."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
import redis
from conftest import Daemon, RedisServer

Factory = Callable[..., Daemon]


def run_import(d: Daemon, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "sessiond", "import", "--config", str(d.config_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def source(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """Database 3 of the redis-server, emptied after the test."""
    with redis_server.client(db=3) as r:
        yield r
        r.config_set("requirepass", "")
        r.flushall()


def test_import_copies_every_session_with_the_time_it_has_left(
    daemon_factory: Factory, redis_server: RedisServer, source: redis.Redis
) -> None:
    strings = {f"session:{i}".encode(): os.urandom(40) for i in range(1200)}  # several batches
    odd_key, odd_value = b"session:\r\n\x00\xff", b"\x00\r\n$3\r\nnot a request"
    source.mset({**strings, odd_key: odd_value})
    for key in list(strings)[:300]:
        source.pexpire(key, 600_000)
    source.hset("cart:1", mapping={"sku": "42", "qty": "3", "\x00": "\r\n"})
    source.expire("cart:1", 300)
    source.sadd("flags:1", "a", "b", b"\xff")
    source.rpush("queue", "job")
    source.zadd("board", {"x": 1})
    d = daemon_factory({"persistence": {"backend": "sqlite"}, "security": {"password": "pw"}})

    code, out, err = run_import(d, f"unix://{redis_server.socket_path}?db=3")

    assert code == 1, (out, err)  # the list and the sorted set are left out, and said to be
    assert out.splitlines()[0] == "copied 1203 keys (1 hash, 1 set, 1201 strings)"
    assert "not copied, of types sessiond does not hold: list: 1, zset: 1" in err
    with d.client(password="pw") as r:
        assert r.mget(list(strings)) == list(strings.values())
        assert r.get(odd_key) == odd_value
        assert r.hgetall("cart:1") == {b"sku": b"42", b"qty": b"3", b"\x00": b"\r\n"}
        assert r.smembers("flags:1") == {b"a", b"b", b"\xff"}
        assert r.exists("queue", "board") == 0
        # The time left at the copy, at most (the MGET above renewed it to that).
        assert source.pttl("session:0") - 60_000 < r.pttl("session:0") <= 600_000
        assert 0 < r.ttl("cart:1") <= 300
        # No TTL on the source: none here either (cache.default_ttl is not applied).
        assert r.ttl("session:1199") == r.ttl("flags:1") == r.ttl(odd_key) == -1
        assert r.dbsize() == 1203

    code, out, err = run_import(d, "--match", "cart:*", f"unix://{redis_server.socket_path}?db=3")
    assert (code, out, err) == (0, "copied 1 key (1 hash)\n", "")


def test_import_logs_in_to_the_source_and_names_what_fails(
    daemon_factory: Factory, redis_server: RedisServer, source: redis.Redis
) -> None:
    source.set("small", "ok")
    source.set("big", "x" * 2048)
    source.config_set("requirepass", "src-pw")
    d = daemon_factory({"limits": {"max_value_size": 1024}})
    where = f"unix://{redis_server.socket_path}?db=3"

    code, _, err = run_import(d, where)
    assert code == 1
    assert "sessiond import: source: AUTH failed" not in err  # no password given: no AUTH
    assert "NOAUTH" in err and "give its password in the URL or in REDISCLI_AUTH" in err, err

    code, _, err = run_import(d, where, env={"REDISCLI_AUTH": "wrong"})
    assert code == 1
    assert "sessiond import: source: AUTH failed: WRONGPASS" in err

    code, out, err = run_import(d, where, env={"REDISCLI_AUTH": "src-pw"})
    assert code == 1
    assert out == "copied 1 key (1 string)\n"
    assert "not copied: big: sessiond: a part of 2048 bytes exceeds limits.max_value_size" in err
    with d.client() as r:
        assert (r.get("small"), r.exists("big")) == (b"ok", 0)

    code, _, err = run_import(d, f"unix://{redis_server.socket_path}.missing")
    assert code == 1
    assert "sessiond import: source " in err and "No such file or directory" in err
    code, _, err = run_import(d, "http://example.invalid")
    assert (code, err.strip().splitlines()[-1]) == (
        1,
        "sessiond import: source 'http://example.invalid': expected "
        "redis://host[:port][/db] or unix:///path/to.sock[?db=N]",
    )
    for url in ("redis://127.0.0.1:6379/abc", f"unix://{redis_server.socket_path}?db=x"):
        code, out, err = run_import(d, url)
        bad = url.rsplit("/", 1)[1] if url.startswith("redis") else "x"
        assert (code, err.strip().splitlines()[-1]) == (
            1,
            f"sessiond import: source {url!r}: the database must be a number, got {bad!r}",
        )


def test_import_splits_what_one_request_could_not_carry_and_goes_on(
    daemon_factory: Factory, redis_server: RedisServer, source: redis.Redis
) -> None:
    """A hash or set larger than limits.max_request_size (each field well
    under max_value_size: sessiond holds it) is written in several requests;
    a string too large for one request is named as not copied, and the keys
    after it are still copied (the daemon closes a connection that sends a
    request over the limit)."""
    fields = {f"f{i}": os.urandom(1000) for i in range(200)}  # ~200 KB
    members = {os.urandom(1000) for _ in range(300)}  # ~300 KB
    source.hset("cart:big", mapping=fields)
    source.expire("cart:big", 300)
    source.sadd("flags:big", *members)
    source.set("huge", b"x" * 200_000)
    source.mset({f"session:{i}": f"v{i}" for i in range(50)})
    d = daemon_factory({"limits": {"max_value_size": "64KiB", "max_request_size": "128KiB"}})

    code, out, err = run_import(d, f"unix://{redis_server.socket_path}?db=3")

    assert code == 1, (out, err)
    assert out.splitlines()[0] == "copied 52 keys (1 hash, 1 set, 50 strings)", (out, err)
    # Over max_value_size too (which config keeps at most max_request_size).
    assert "not copied: huge: sessiond: a part of 200000 bytes exceeds limits.max_value_size" in err
    assert "closed the connection" not in err
    with d.client() as r:
        assert r.hgetall("cart:big") == {k.encode(): v for k, v in fields.items()}
        assert 0 < r.ttl("cart:big") <= 300
        assert r.smembers("flags:big") == members
        assert r.ttl("flags:big") == -1
        assert r.exists("huge") == 0
        assert r.dbsize() == 52


class _FrozenSource:
    """A source whose keys are read at the millisecond their TTL ends: PTTL
    answers 0 (Redis does while the deadline is now: the key is not yet
    expired, and is the next moment)."""

    def pipeline(self, commands: list[list[bytes]]) -> list[object]:
        replies: list[object] = []
        for name, key, *_ in commands:
            if name == b"TYPE":
                replies.append(b"string" if key.startswith(b"s") else b"hash")
            elif name == b"GET":
                replies.append(b"value")
            elif name == b"HGETALL":
                replies.append([b"field", b"value"])
            else:
                assert name == b"PTTL"
                replies.append(0)
        return replies


def test_import_counts_a_key_whose_ttl_ends_as_it_is_read_as_gone(daemon: Daemon) -> None:
    from sessiond.config import Config
    from sessiond.importer import Endpoint, Link, Tally, copy_batch

    target = Link(Endpoint(path=str(daemon.socket_path)), "sessiond")
    tally = Tally()
    copy_batch(_FrozenSource(), target, [b"session:1", b"cart:1"], tally, Config())  # type: ignore[arg-type]
    target.close()
    assert (tally.failures, tally.gone, sum(tally.copied.values())) == ([], 2, 0)
    with daemon.client() as r:
        assert r.exists("session:1", "cart:1") == 0


class _RehashingSource:
    """A source whose SCAN returns some keys twice, as Redis' does when its
    table is rehashed during the walk (SCAN guarantees every key at least
    once, not at most once)."""

    def pipeline(self, commands: list[list[bytes]]) -> list[object]:
        ((name, cursor, *_),) = commands
        assert name == b"SCAN"
        pages = {b"0": [b"7", [b"a", b"b", b"b"]], b"7": [b"0", [b"b", b"c", b"a"]]}
        return [pages[cursor]]


def test_import_walks_each_key_once_when_scan_repeats_it() -> None:
    from sessiond.importer import scan

    pages = list(scan(_RehashingSource(), b"*"))  # type: ignore[arg-type]
    assert pages == [[b"a", b"b"], [b"c"]]


def test_import_from_the_daemon_itself_is_refused(daemon_factory: Factory) -> None:
    """Copying the daemon onto itself would only overwrite what its clients
    write meanwhile: told apart by INFO's run_id."""
    d = daemon_factory()
    with d.client() as r:
        r.set("mine", "1")
    code, out, err = run_import(d, f"unix://{d.socket_path}")
    assert (code, out) == (1, "copied 0 keys\n")
    assert f"sessiond import: the source is this daemon ({d.socket_path})" in err


def test_a_key_the_daemon_would_refuse_is_not_sent_and_its_earlier_copy_stays(
    daemon_factory: Factory, redis_server: RedisServer, source: redis.Redis
) -> None:
    """A hash is replaced in a MULTI that deletes it first: a field the daemon
    refuses inside that EXEC would leave the key deleted, the copy an earlier
    import made gone. Such a key is named and not sent at all."""
    source.hset("cart:1", mapping={"sku": "42"})
    d = daemon_factory({"limits": {"max_value_size": 1024}})
    where = f"unix://{redis_server.socket_path}?db=3"
    assert run_import(d, where)[:2] == (0, "copied 1 key (1 hash)\n")

    source.hset("cart:1", "note", "x" * 2048)
    code, out, err = run_import(d, where)
    assert (code, out) == (1, "copied 0 keys\n")
    assert (
        "not copied: cart:1: sessiond: a part of 2048 bytes exceeds limits.max_value_size "
        "(1024 bytes)"
    ) in err
    with d.client() as r:
        assert r.hgetall("cart:1") == {b"sku": b"42"}
