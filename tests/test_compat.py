"""Regression tests for the incompatibilities that real session stores found in
sessiond (tests/test_frameworks.py, issue 7). Each test talks to the daemon with
redis-py or raw RESP only, not through the framework that found the problem.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import hiredis
import pytest
import redis
from conftest import Daemon

Factory = Callable[..., Daemon]


def test_scan_and_dbsize_see_writes_committed_during_the_call(daemon_factory: Factory) -> None:
    """Found by connect-redis' ``length()``/``ids()`` (SCAN MATCH ... COUNT 100) under
    ``durability: batch``: SCAN, KEYS and DBSIZE read the store's rows, then the
    uncommitted writes; a batch committed between the two was in neither, so keys
    written (and acknowledged) before the call were missing from its answer."""
    d = daemon_factory(
        {
            "persistence": {"backend": "sqlite", "durability": "batch", "flush_interval": "5ms"},
            "cache": {"max_sessions": 1000},
        }
    )
    r = d.client()
    pipe = r.pipeline(transaction=False)
    for i in range(20000):  # enough rows that reading them overlaps commits
        pipe.set(f"base:{i}", "x")
    pipe.execute()

    acked = 0
    stop = threading.Event()

    def writer() -> None:
        nonlocal acked
        with d.client() as w:
            i = 0
            while not stop.is_set():
                p = w.pipeline(transaction=False)
                for _ in range(50):
                    p.set(f"new:{i}", "y")
                    i += 1
                p.execute()
                acked = i

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for _ in range(20):
            before = acked
            assert r.dbsize() >= 20000 + before
            before = acked
            found = {int(k.split(b":")[1]) for k in r.scan_iter(match="new:*", count=5000)}
            assert set(range(before)) <= found
            before = acked
            found = {int(k.split(b":")[1]) for k in r.keys("new:*")}
            assert set(range(before)) <= found
    finally:
        stop.set()
        thread.join()
    r.close()


# Found by connect-redis with a 200 KB session and ``cache.max_memory: 64KiB``:
# SET answered OK and EXISTS/STRLEN saw the session, but GET answered nil (and
# GETDEL deleted it unseen). Admitting a store-only session larger than the whole
# memory bound evicted it again at once, and the read treated that as "absent".


def test_value_larger_than_max_memory_is_refused(daemon_factory: Factory) -> None:
    d = daemon_factory({"persistence": {"backend": "sqlite"}, "cache": {"max_memory": 1000}})
    r = d.client()
    with pytest.raises(redis.ResponseError, match=r"exceeds cache\.max_memory \(1000 bytes\)"):
        r.set("big", b"x" * 1001)
    with pytest.raises(redis.ResponseError, match=r"exceeds cache\.max_memory"):
        r.mset({"a": "1", "big": b"x" * 1001})
    with pytest.raises(redis.ResponseError, match=r"exceeds cache\.max_memory"):
        r.execute_command("SESSION.CREATE", "STATE", b"x" * 1001)
    assert r.exists("big", "a") == 0
    assert r.set("fits", b"x" * 900) is True
    assert r.get("fits") == b"x" * 900


@pytest.mark.parametrize("protocol", [2, 3])
def test_session_larger_than_max_memory_is_read_from_the_store(
    daemon_factory: Factory, protocol: int
) -> None:
    """Key + value over the bound (the value alone is accepted), or a bound lowered by
    a reload below a stored session's size: every read still returns the session."""
    d = daemon_factory({"persistence": {"backend": "sqlite"}, "cache": {"max_memory": 1000}})
    r = d.client(protocol=protocol)
    key = "k" * 200
    value = b"v" * 900
    assert r.set(key, value, ex=600) is True
    info = r.execute_command("SESSION.INFO", key)
    if isinstance(info, list):
        info = dict(zip(info[::2], info[1::2], strict=True))
    assert info[b"where"] == b"store"  # written, then evicted at once: too big for memory
    assert r.get(key) == value
    assert r.get(key) == value
    assert r.mget([key, "missing"]) == [value, None]
    assert r.getex(key) == value
    assert r.strlen(key) == 900
    assert 590 <= r.ttl(key) <= 600
    assert r.getdel(key) == value
    assert r.exists(key) == 0

    # the bound lowered under a session that fitted when it was written
    assert r.set("s", b"y" * 800) is True
    config = d.config
    config["cache"]["max_memory"] = 100
    d.write_config(config)
    d.wait_for_event("config_reloaded")
    assert r.get("s") == b"y" * 800
    assert r.mget(["s"]) == [b"y" * 800]


def _raw_reply(d: Daemon, *args: str) -> bytes:
    """The exact bytes of one reply (hiredis only tells where it ends)."""
    request = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args
    )
    with d.raw() as sock:
        sock.sendall(request)
        reader = hiredis.Reader()
        data = b""
        while True:
            chunk = sock.recv(65536)
            assert chunk, "connection closed"
            data += chunk
            reader.feed(chunk)
            if reader.gets() is not False:
                return data


@pytest.mark.parametrize("protocol", [2, 3])
def test_command_docs_describe_arguments(daemon: Daemon, protocol: int) -> None:
    """Found with redis-cli: ``help SET`` and the interactive hints showed no syntax,
    because COMMAND DOCS answered ``arguments`` as an empty list for every command.
    redis-cli asserts argument flags are simple strings (``+optional``)."""
    r = daemon.client(protocol=protocol, decode_responses=True)
    docs = r.execute_command("COMMAND DOCS", "set", "scan", "client")
    if isinstance(docs, list):
        docs = dict(zip(docs[::2], docs[1::2], strict=True))

    def fields(reply: Any) -> dict[str, Any]:
        if isinstance(reply, list):
            return dict(zip(reply[::2], reply[1::2], strict=True))
        return dict(reply)

    args = [fields(a) for a in fields(docs["set"])["arguments"]]
    assert [a["name"] for a in args[:2]] == ["key", "value"]
    assert args[0]["type"] == "key"
    assert args[2]["type"] == "oneof"
    assert [fields(a)["token"] for a in args[2]["arguments"]] == ["NX", "XX"]
    assert list(args[2]["flags"]) == ["optional"]
    expiry = [fields(a) for a in args[4]["arguments"]]
    assert [(a["token"], a["type"]) for a in expiry] == [
        ("EX", "integer"),
        ("PX", "integer"),
        ("EXAT", "unix-time"),
        ("PXAT", "unix-time"),
        ("KEEPTTL", "pure-token"),
    ]
    scan = [fields(a) for a in fields(docs["scan"])["arguments"]]
    assert [(a["name"], a.get("token")) for a in scan] == [
        ("cursor", None),
        ("pattern", "MATCH"),
        ("count", "COUNT"),
        ("type", "TYPE"),
    ]
    subcommands = fields(fields(docs["client"])["subcommands"])
    assert "client|setname" in subcommands

    raw = _raw_reply(daemon, "COMMAND", "DOCS", "SET")
    assert b"$5\r\nflags\r\n*1\r\n+optional\r\n" in raw
    for name in ("GET", "MSET", "HELLO", "EXPIRE", "SESSION.CREATE", "COMMAND", "CONFIG"):
        assert b"arguments" in _raw_reply(daemon, "COMMAND", "DOCS", name)
