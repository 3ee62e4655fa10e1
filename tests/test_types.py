"""Hashes and sets (issue 14): the commands session stores use, against a real
redis-server to prove the expectations, and what sessiond adds: TTL, sliding,
eviction to the store, read-through, restarts, max_memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hiredis
import pytest
import redis
from conftest import Daemon, RedisServer

Factory = Callable[..., Daemon]

# Requests whose replies must be the same bytes on both servers (after each
# other, on one connection). Replies with members in no defined order are
# compared as sorted lists (UNORDERED).
SCENARIO: list[tuple[str, ...]] = [
    ("HSET", "h", "f1", "v1", "f2", "v2"),
    ("HSET", "h", "f2", "v2b", "f3", "v3"),
    ("HGET", "h", "f2"),
    ("HGET", "h", "nope"),
    ("HGET", "nokey", "f"),
    ("HMGET", "h", "f1", "nope", "f3"),
    ("HGETALL", "h"),
    ("HKEYS", "h"),
    ("HVALS", "h"),
    ("HLEN", "h"),
    ("HEXISTS", "h", "f1"),
    ("HEXISTS", "h", "nope"),
    ("HSTRLEN", "h", "f3"),
    ("HSETNX", "h", "f1", "other"),
    ("HSETNX", "h", "f4", "v4"),
    ("HMSET", "h", "f5", "v5"),
    ("HINCRBY", "h", "n", "5"),
    ("HINCRBY", "h", "n", "-7"),
    ("HINCRBY", "h", "f1", "1"),
    ("HINCRBY", "h", "n", "abc"),
    ("HINCRBY", "h", "n", "9223372036854775807"),
    ("HINCRBYFLOAT", "h", "fl", "10.5"),
    ("HINCRBYFLOAT", "h", "fl", "0.1"),
    ("HINCRBYFLOAT", "h", "fl", "5.0e3"),
    ("HINCRBYFLOAT", "h", "fl", "-5010.6"),
    ("HINCRBYFLOAT", "h", "n", "1.5"),
    ("HINCRBYFLOAT", "h", "f1", "1"),
    ("HINCRBYFLOAT", "h", "fl", "abc"),
    ("HINCRBYFLOAT", "h", "fl", "inf"),
    # A value this long turns Redis' hash into a hashtable (its own field
    # order): a hash of its own.
    ("HINCRBYFLOAT", "hbig", "fl", "1e4932"),
    ("HINCRBYFLOAT", "hbig", "fl", "1.1e4932"),
    ("HINCRBYFLOAT", "nohash", "x", "3"),
    ("HDEL", "h", "f1", "f2", "nope"),
    ("HGETALL", "h"),
    ("HSCAN", "h", "0"),
    ("HSCAN", "h", "0", "MATCH", "f[34]"),
    ("HDEL", "h", "f3", "f4", "f5", "n"),
    ("EXISTS", "h"),
    ("HGETALL", "h"),
    ("HSET", "h", "f1"),
    ("HSET", "h"),
    # HRANDFIELD of a hash of one field: nothing random. WITHVALUES is a flat
    # array in RESP2, an array of [field, value] pairs in RESP3.
    ("HSET", "one", "f", "v"),
    ("HRANDFIELD", "one", "1", "WITHVALUES"),
    ("HRANDFIELD", "one", "-3", "WITHVALUES"),
    ("HRANDFIELD", "one", "-2"),
    ("HRANDFIELD", "one", "0", "WITHVALUES"),
    ("HRANDFIELD", "nokey", "2", "WITHVALUES"),
    # Counts out of range (none large on a key that exists: Redis would try
    # to build the reply), and the order Redis checks the arguments in.
    ("HRANDFIELD", "one", "-9223372036854775808"),
    ("HRANDFIELD", "nokey", "-9223372036854775808"),
    ("HRANDFIELD", "one", "-4611686018427387904", "WITHVALUES"),
    ("HRANDFIELD", "one", "4611686018427387904", "WITHVALUES"),
    ("HRANDFIELD", "nokey", "-4611686018427387903", "WITHVALUES"),
    ("HRANDFIELD", "one", "x", "foo"),
    ("HRANDFIELD", "one", "-9223372036854775808", "foo"),
    ("HRANDFIELD", "one", "1", "foo"),
    ("SADD", "oneset", "m"),
    ("SRANDMEMBER", "oneset", "-9223372036854775808"),
    ("SRANDMEMBER", "nokey", "-9223372036854775808"),
    ("SRANDMEMBER", "nokey", "-9223372036854775807"),
    ("SRANDMEMBER", "oneset", "-2"),
    ("SRANDMEMBER", "oneset", "1", "2"),
    ("SADD", "s", "a", "b", "c", "a"),
    ("SADD", "s", "c", "d"),
    ("SISMEMBER", "s", "a"),
    ("SISMEMBER", "s", "zz"),
    ("SMISMEMBER", "s", "a", "zz", "d"),
    ("SCARD", "s"),
    ("SMEMBERS", "s"),
    ("SREM", "s", "a", "zz"),
    ("SADD", "t", "b", "x"),
    ("SINTER", "s", "t"),
    ("SUNION", "s", "t"),
    ("SDIFF", "s", "t"),
    ("SINTER", "s", "nokey"),
    ("SMOVE", "s", "t", "c"),
    ("SMOVE", "s", "t", "nope"),
    ("SMEMBERS", "t"),
    ("SSCAN", "t", "0"),
    ("SPOP", "nokey"),
    ("SRANDMEMBER", "nokey"),
    ("SRANDMEMBER", "nokey", "3"),
    ("SPOP", "s", "-1"),
    ("TYPE", "s"),
    ("TYPE", "t"),
    ("SET", "str", "v"),
    ("TYPE", "str"),
    # HSCAN/SSCAN read the key before their options: a missing key is an
    # empty scan and another type WRONGTYPE, whatever the options are.
    ("HSCAN", "nokey", "0", "BOGUS"),
    ("SSCAN", "nokey", "0", "COUNT", "0"),
    ("HSCAN", "str", "0", "COUNT", "x"),
    ("SSCAN", "str", "0", "MATCH"),
    ("HSCAN", "nokey", "x", "BOGUS"),
    ("SSCAN", "t", "0", "BOGUS"),
    # SMOVE: a missing source answers 0 whatever the destination is; else a
    # destination of another type is WRONGTYPE, member or not.
    ("SMOVE", "nokey", "str", "m"),
    ("SMOVE", "t", "str", "nope"),
    ("SMOVE", "str", "t", "b"),
    ("HSET", "h2", "f", "v"),
    ("TYPE", "h2"),
    ("HGET", "str", "f"),
    ("SADD", "h2", "x"),
    ("GET", "h2"),
    ("STRLEN", "s"),
    ("INCR", "t"),
    ("MGET", "str", "h2", "t"),
    ("GETDEL", "h2"),
    ("EXISTS", "h2"),
    ("SET", "h2", "now a string"),
    ("TYPE", "h2"),
]
UNORDERED = {"SMEMBERS", "SUNION", "SINTER", "SDIFF", "SSCAN"}


def _request(args: tuple[str, ...]) -> bytes:
    return f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args
    )


def _replies(sock: Any, protocol: int) -> list[Any]:
    """Send the scenario on ``sock`` and read each raw reply back."""
    out: list[Any] = []
    if protocol == 3:
        sock.sendall(_request(("HELLO", "3")))
        _read_one(sock, hiredis.Reader())
    reader = hiredis.Reader()
    for args in SCENARIO:
        sock.sendall(_request(args))
        raw, parsed = _read_one(sock, reader)
        if args[0] in UNORDERED and not isinstance(parsed, Exception):
            out.append((args, _sorted(parsed)))
        else:
            out.append((args, raw))
    return out


def _read_one(sock: Any, reader: Any) -> tuple[bytes, Any]:
    data = b""
    while True:
        reply = reader.gets()
        if reply is not False:
            return data, reply
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        data += chunk
        reader.feed(chunk)


def _sorted(reply: Any) -> Any:
    if isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], list):
        return [reply[0], sorted(reply[1])]  # a SCAN reply
    if isinstance(reply, list | set):
        return sorted(reply)
    return reply


@pytest.mark.parametrize("protocol", [2, 3])
def test_hashes_and_sets_answer_as_redis_does(
    daemon_factory: Factory, redis_server: RedisServer, protocol: int
) -> None:
    d = daemon_factory({"cache": {"default_ttl": 0}})
    with redis_server.client() as r:
        r.flushall()
    with redis_server.raw() as theirs, d.raw() as ours:
        expected = _replies(theirs, protocol)
        got = _replies(ours, protocol)
    for (args, want), (_, have) in zip(expected, got, strict=True):
        assert have == want, args


def test_a_hash_ages_like_a_session(daemon_factory: Factory) -> None:
    """A hash written without a TTL gets the default one; a read renews it."""
    d = daemon_factory({"cache": {"default_ttl": "100s", "sliding": True}})
    r = d.client()
    assert r.hset("spring:session:1", mapping={"creationTime": "1", "maxInactive": "1800"}) == 2
    assert 95 <= r.ttl("spring:session:1") <= 100
    r.expire("spring:session:1", 1800)
    assert r.hgetall("spring:session:1") == {b"creationTime": b"1", b"maxInactive": b"1800"}
    assert 1795 <= r.ttl("spring:session:1") <= 1800
    assert r.sadd("index:user:7", "spring:session:1") == 1
    assert 95 <= r.ttl("index:user:7") <= 100


@pytest.mark.parametrize("durability", ["always", "batch"])
def test_hashes_and_sets_survive_eviction_and_restart(
    daemon_factory: Factory, durability: str
) -> None:
    d = daemon_factory(
        {
            "persistence": {"backend": "sqlite", "durability": durability},
            "cache": {"max_sessions": 2},
        }
    )
    r = d.client()
    r.hset("h", mapping={"a": "1", "b": "2"})
    r.sadd("s", "x", "y")
    r.set("k1", "v")
    r.set("k2", "v")  # h and s leave memory for the store
    assert r.hgetall("h") == {b"a": b"1", b"b": b"2"}  # read through
    assert r.type("s") == b"set"  # inspected in the store
    assert r.smembers("s") == {b"x", b"y"}
    assert r.hincrby("h", "a", 10) == 11
    r.close()
    assert d.stop() == 0
    d.start()
    with d.client() as again:
        assert again.hgetall("h") == {b"a": b"11", b"b": b"2"}
        assert again.smembers("s") == {b"x", b"y"}
        assert again.hdel("h", "a", "b") == 2
        assert again.exists("h") == 0


def test_max_memory_counts_fields_and_members(daemon_factory: Factory) -> None:
    d = daemon_factory({"cache": {"max_memory": "1KiB", "default_ttl": 0}})
    r = d.client()
    r.hset("h", mapping={f"f{i}": "x" * 50 for i in range(10)})
    memory = int(r.info("memory")["used_memory"])
    assert memory >= 10 * 50
    r.hset("h", mapping={f"g{i}": "x" * 50 for i in range(10)})  # 1 KiB is passed: evicted
    assert r.hlen("h") == 0  # memory only: gone with the eviction


def test_resp3_replies_are_maps_and_sets(daemon: Daemon) -> None:
    r = daemon.client(protocol=3)
    r.hset("h", "f", "v")
    r.sadd("s", "m")
    assert r.hgetall("h") == {b"f": b"v"}
    assert r.smembers("s") == {b"m"}
    # pairs, as Redis 7 replies in RESP3 (a flat array in RESP2)
    assert r.hrandfield("h", 1, withvalues=True) == [[b"f", b"v"]]
    assert r.hrandfield("h", -2, withvalues=True) == [[b"f", b"v"], [b"f", b"v"]]
    with daemon.client(protocol=2) as r2:
        assert r2.hrandfield("h", -2, withvalues=True) == [b"f", b"v", b"f", b"v"]
    with pytest.raises(redis.ResponseError, match=r"^WRONGTYPE"):
        r.get("h")


@pytest.mark.parametrize("store", [False, True])
def test_scan_type_sees_memory_and_store(daemon_factory: Factory, store: bool) -> None:
    overrides: dict[str, Any] = {"cache": {"max_sessions": 2}}
    if store:
        overrides["persistence"] = {"backend": "sqlite"}
    d = daemon_factory(overrides)
    r = d.client()
    r.hset("h:1", "f", "v")
    r.sadd("s:1", "m")
    r.set("k:1", "v")
    r.hset("h:2", "f", "v")  # with the store, h:1 and s:1 are only there now

    def scanned(kind: str) -> list[bytes]:
        return sorted(r.scan_iter(_type=kind, count=1))

    if store:
        assert scanned("hash") == [b"h:1", b"h:2"]
        assert scanned("set") == [b"s:1"]
        assert scanned("string") == [b"k:1"]
    else:  # memory only: what was evicted is gone
        assert scanned("hash") == [b"h:2"]
        assert scanned("string") == [b"k:1"]
    assert scanned("list") == []
