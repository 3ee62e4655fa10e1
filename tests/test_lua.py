"""Scripting, WATCH and the commands of issue #14 against the real daemon.

The same requests go to sessiond and to a real redis-server started by the
test (Debian's, on a Unix socket, persistence off), and the exact reply bytes
must be the same, error replies included: that proves the expectations
rather than writing them down. sessiond runs with ``default_ttl: 0`` and
``sliding: false`` there, so that TTLs are Redis'.

Then what Redis cannot show: hostile scripts (an endless loop, a huge
allocation, ``os.exit``, refused commands) against a daemon with a short
``scripting.time_limit``; a script stopped after writing is rolled back,
proved by reading its keys (and after a restart, from the store); the daemon
stays up and serves other clients once the limit has passed.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import Daemon, RedisServer
from test_protocol import encode_request

Factory = Callable[..., Daemon]


def _reply_end(buf: bytes, i: int) -> int | None:
    """Where the RESP2/RESP3 reply starting at ``buf[i]`` ends, if it is whole."""
    crlf = buf.find(b"\r\n", i)
    if crlf < 0:
        return None
    kind, line, j = buf[i : i + 1], buf[i + 1 : crlf], crlf + 2
    if kind in b"+-:_#,(":
        return j
    n = int(line)
    if kind in b"$=!":
        if n < 0:
            return j
        return j + n + 2 if len(buf) >= j + n + 2 else None
    if n < 0:
        return j
    count = 2 * n if kind in b"%|" else n
    for _ in range(count):
        end = _reply_end(buf, j)
        if end is None:
            return None
        j = end
    return j


class Wire:
    """One raw connection: requests out, each reply's exact bytes back."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, *args: bytes | str) -> None:
        self.sock.sendall(encode_request(*args))

    def read(self) -> bytes:
        while True:
            end = _reply_end(self.buf, 0) if self.buf else None
            if end is not None:
                reply, self.buf = self.buf[:end], self.buf[end:]
                return reply
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.buf += chunk

    def __call__(self, *args: bytes | str) -> bytes:
        self.send(*args)
        return self.read()

    def nothing_more(self, wait: float = 0.2) -> bool:
        """Whether no reply is waiting (after ``wait`` seconds)."""
        self.sock.settimeout(wait)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return not self.buf
        finally:
            self.sock.settimeout(10)
        self.buf += chunk
        return False

    def close(self) -> None:
        self.sock.close()


# Scripts that clients run in production, verbatim.
PHPREDIS_UNLOCK = (
    'if redis.call("get",KEYS[1]) == ARGV[1] then return redis.call("del",KEYS[1]) '
    "else return 0 end"
)
REDIS_PY_RELEASE = redis.lock.Lock.LUA_RELEASE_SCRIPT
REDIS_PY_EXTEND = redis.lock.Lock.LUA_EXTEND_SCRIPT
REDIS_PY_REACQUIRE = redis.lock.Lock.LUA_REACQUIRE_SCRIPT
# ASP.NET Core's session cache (Microsoft.Extensions.Caching.StackExchangeRedis)
# writes an entry as a hash and expires it in one script: HMSET in its older
# releases, HSET in the newer ones.
ASPNET_SET = """
                redis.call('HSET', KEYS[1], 'absexp', ARGV[1], 'sldexp', ARGV[2], 'data', ARGV[4])
                if ARGV[3] ~= '-1' then
                  redis.call('EXPIRE', KEYS[1], ARGV[3])
                end
                return 1"""
ASPNET_SET_OLD = ASPNET_SET.replace("'HSET'", "'HMSET'")

SCRIPTS: list[tuple[str, ...]] = [
    # Lock release and extension, as phpredis and redis-py send them.
    ("SET", "lock", "secret", "NX", "PX", "30000"),
    ("SET", "lock", "other", "NX", "PX", "30000"),
    ("EVAL", PHPREDIS_UNLOCK, "1", "lock", "wrong"),
    ("EVAL", PHPREDIS_UNLOCK, "1", "lock", "secret"),
    ("EXISTS", "lock"),
    ("SET", "rlock", "tok", "PX", "100000"),
    ("EVAL", REDIS_PY_EXTEND, "1", "rlock", "tok", "200000", "1"),
    ("TTL", "rlock"),
    ("EVAL", REDIS_PY_EXTEND, "1", "rlock", "nope", "200000", "1"),
    ("EVAL", REDIS_PY_REACQUIRE, "1", "rlock", "tok", "300000"),
    ("EVAL", REDIS_PY_RELEASE, "1", "rlock", "nope"),
    ("EVAL", REDIS_PY_RELEASE, "1", "rlock", "tok"),
    ("EVAL", REDIS_PY_RELEASE, "1", "rlock", "tok"),
    ("EVAL", ASPNET_SET, "1", "aspnet:s1", "-1", "12000000000", "1200", "session bytes"),
    ("HMGET", "aspnet:s1", "absexp", "sldexp", "data"),
    ("TTL", "aspnet:s1"),
    ("EVAL", ASPNET_SET_OLD, "1", "aspnet:s2", "638000000000000000", "-1", "-1", "x"),
    ("HGETALL", "aspnet:s2"),
    ("TTL", "aspnet:s2"),
    ("EVAL", ASPNET_SET, "1", "aspnet:s1", "-1", "12000000000", "60", "refreshed"),
    ("HGET", "aspnet:s1", "data"),
    ("TTL", "aspnet:s1"),
    ("EVAL", "return redis.call('HGETALL', KEYS[1])", "1", "aspnet:s2"),
    ("EVAL", "return redis.call('GET', KEYS[1])", "1", "aspnet:s2"),
    ("EVAL", "return redis.pcall('GET', KEYS[1])", "1", "aspnet:s2"),
    # The script cache.
    ("SCRIPT", "LOAD", PHPREDIS_UNLOCK),
    ("SCRIPT", "EXISTS", "e3f8cd2bf8f5e5a1e3f7d3b5c06b7a1e4a5d2c11", "0" * 40),
    ("EVALSHA", "9d2b3a1b2b2b8cbd0b0d1d6f1d8e2c3b4a5f6e7d", "0"),
    ("EVALSHA", "short", "0"),
    ("EVAL", "return 1", "x"),
    ("EVAL", "return 1", "-1"),
    ("EVAL", "return 1", "3", "a"),
    ("EVAL", "return (", "0"),
    # Conversions both ways.
    ("EVAL", "return {1, 2.9, 'x', true, false, nil, 'after nil'}", "0"),
    ("EVAL", "return {1, {2, {3, 'deep'}}, {ok='status'}, {err='ERR nested'}}", "0"),
    ("EVAL", "return redis.call('GET', 'missing')", "0"),
    ("EVAL", "return type(redis.call('GET', 'missing'))", "0"),
    ("EVAL", "return {redis.call('SET', 'a', 'b'), redis.call('GET', 'a')}", "0"),
    ("EVAL", "return redis.call('INCR', 'counter') + 0.5", "0"),
    ("EVAL", "return 3.99", "0"),
    ("EVAL", "return -3.99", "0"),
    ("EVAL", "return redis.status_reply('FINE')", "0"),
    ("EVAL", "return redis.error_reply('MYERR something broke')", "0"),
    ("EVAL", "return redis.error_reply('no code here')", "0"),
    ("EVAL", "return {KEYS[1], KEYS[2], ARGV[1], #ARGV}", "2", "k1", "k2", "v1", "v2"),
    ("EVAL", "return cjson.encode({1, 2, 'three'})", "0"),
    ("EVAL", "return cjson.decode('[1,2,{\"a\":3}]')[3].a", "0"),
    ("EVAL", "return redis.sha1hex('')", "0"),
    ("EVAL", "redis.setresp(3) return {double=3.5}", "0"),
    # Maps and sets in the order Lua walks the table, keys that convert
    # alike (1.5 and 1.25 are both 1) repeated, a set member whatever its value.
    ("EVAL", "return {set={f=true, g=true, h=false}}", "0"),
    ("EVAL", "return {map={f=1, g=2, h='x'}}", "0"),
    ("EVAL", "return {map={[1.5]='a', [1.25]='b'}}", "0"),
    ("EVAL", "return {set={[1.5]=true, [1.25]=true, [true]=true}}", "0"),
    # A big number is one in RESP3 (a bulk string in RESP2), whatever its text.
    ("EVAL", "return {big_number='123456789012345678901234567890'}", "0"),
    ("EVAL", "return {big_number='12a\\r\\nb'}", "0"),
    ("EVAL", "return {big_number=''}", "0"),
    # A verbatim string in RESP3 has any format (three bytes, padded) and any
    # text; a bulk string of the text in RESP2.
    ("EVAL", "return {verbatim_string={format='mkd', string='hi'}}", "0"),
    ("EVAL", "return {verbatim_string={format='markdown', string='a\\r\\nb'}}", "0"),
    ("EVAL", "return {verbatim_string={format='', string='\\0\\255'}}", "0"),
    ("EVAL", "return {verbatim_string={format='t\\0x', string='\\255'}}", "0"),
    ("EVAL", "return {verbatim_string={format=1, string='x'}}", "0"),
    # An integral double is written without a fraction, in RESP3 too.
    ("EVAL", "return {double=0}", "0"),
    ("EVAL", "return {double=100}", "0"),
    ("EVAL", "return {double=2^53}", "0"),
    ("EVAL", "return {double=-0.0}", "0"),
    ("EVAL", "return {double=-1/0}", "0"),
    ("EVAL", "redis.setresp(3) return true", "0"),
    ("EVAL", "redis.setresp(3) return redis.call('GET', 'missing') == nil", "0"),
    ("EVAL", "return redis.call('EXPIRE', 'a', '100')", "0"),
    ("EVAL", "return redis.call('TTL', 'a')", "0"),
    # HRANDFIELD ... WITHVALUES: flat in RESP2, pairs in RESP3 (the script's
    # protocol, whatever its caller speaks); one field, so nothing is random.
    ("HSET", "h1", "f", "v"),
    ("EVAL", "return redis.call('HRANDFIELD', 'h1', -2, 'WITHVALUES')", "0"),
    ("EVAL", "redis.setresp(3) return redis.call('HRANDFIELD', 'h1', -2, 'WITHVALUES')", "0"),
    (
        "EVAL",
        "redis.setresp(3) return type(redis.call('HRANDFIELD', 'h1', 1, 'WITHVALUES')[1])",
        "0",
    ),
    # Errors, and where they happened.
    ("EVAL", "error('boom')", "0"),
    ("EVAL", "error({err='ERR raised table'})", "0"),
    # A number in err is its text (Redis reads it with lua_tostring).
    ("EVAL", "error({err=42})", "0"),
    ("EVAL", "error({err=1.5})", "0"),
    ("EVAL", "error({err=2^63})", "0"),
    ("EVAL", "local x = nil\nreturn x.y", "0"),
    ("EVAL", "return redis.call('INCR', 'a')", "0"),
    ("EVAL", "return redis.pcall('INCR', 'a')", "0"),
    ("EVAL", "local ok, e = pcall(redis.call, 'INCR', 'a') return e", "0"),
    ("EVAL", "return redis.call('NOSUCH')", "0"),
    ("EVAL", "return redis.call('GET')", "0"),
    ("EVAL", "return redis.call('GET', 'a', 'b')", "0"),
    ("EVAL", "return redis.call('MULTI')", "0"),
    ("EVAL", "return redis.call('EXEC')", "0"),
    ("EVAL", "return redis.call('WATCH', 'a')", "0"),
    ("EVAL", "return redis.call('EVAL', 'return 1', '0')", "0"),
    ("EVAL", "return redis.call('SCRIPT', 'FLUSH')", "0"),
    ("EVAL", "return redis.call('AUTH', 'x')", "0"),
    ("EVAL", "return redis.call('CLIENT', 'ID')", "0"),
    ("EVAL", "return redis.call('SET', 'a')", "0"),
    ("EVAL", "return redis.call()", "0"),
    ("EVAL", "return redis.call({})", "0"),
    ("EVAL", "os.exit(1)", "0"),
    ("EVAL", "return require('os')", "0"),
    ("EVAL", "x = 1", "0"),
    ("EVAL", "return loadstring('return 1')()", "0"),
    # Read-only scripts.
    ("EVAL_RO", "return redis.call('GET', 'a')", "0"),
    ("EVAL_RO", "return redis.call('SET', 'a', 'b')", "0"),
    ("EVAL_RO", "return redis.call('DEL', 'a')", "0"),
    ("EVAL_RO", "return redis.call('PUBLISH', 'ch', 'x')", "0"),  # may replicate
    ("EVAL", "#!lua flags=no-writes\nreturn redis.call('PUBLISH', 'ch', 'x')", "0"),
    ("EVAL", "return redis.call('PUBLISH', 'ch', 'x')", "0"),
    ("EVAL", "#!lua flags=no-writes\nreturn redis.call('SET', 'a', 'b')", "0"),
    ("EVAL", "#!lua flags=no-writes\nreturn redis.call('GET', 'a')", "0"),
    ("EVAL_RO", "#!lua\nreturn 1", "0"),
    ("EVAL", "#!lua flags=nonsense\nreturn 1", "0"),
    ("EVAL", "#!python\nreturn 1", "0"),
    ("SCRIPT", "KILL"),
    ("SCRIPT", "FLUSH"),
    ("SCRIPT", "FLUSH", "ASYNC"),
    ("SCRIPT", "FLUSH", "LATER"),
    ("SCRIPT", "LOAD"),
    ("SCRIPT", "NOPE"),
    ("SCRIPT", "EXISTS"),
]

STRING_COMMANDS: list[tuple[str, ...]] = [
    ("SET", "s", "hello"),
    ("GETSET", "s", "world"),
    ("GETSET", "fresh", "x"),
    ("GETSET", "s"),
    ("APPEND", "s", "!!"),
    ("APPEND", "new", "abc"),
    ("GETRANGE", "s", "0", "4"),
    ("GETRANGE", "s", "-3", "-1"),
    ("GETRANGE", "s", "-1", "-5"),
    ("GETRANGE", "s", "5", "1000"),
    ("GETRANGE", "s", "-100", "2"),
    ("GETRANGE", "missing", "0", "-1"),
    ("GETRANGE", "s", "x", "1"),
    ("SETRANGE", "s", "0", "W"),
    ("SETRANGE", "s", "10", "tail"),
    ("GET", "s"),
    ("SETRANGE", "s", "0", ""),
    ("SETRANGE", "none", "5", ""),
    ("EXISTS", "none"),
    ("SETRANGE", "pad", "3", "x"),
    ("GET", "pad"),
    ("SETRANGE", "s", "-1", "x"),
    ("SETRANGE", "s", "x", "x"),
    ("SET", "f", "10.50"),
    ("INCRBYFLOAT", "f", "0.1"),
    ("INCRBYFLOAT", "f", "5.0e3"),
    ("INCRBYFLOAT", "f", "-5010.6"),
    ("INCRBYFLOAT", "nf", "3"),
    ("INCRBYFLOAT", "nf", "1.5e-3"),
    ("INCRBYFLOAT", "nf", "-1e300"),
    ("INCRBYFLOAT", "nf", "0x1p4"),
    ("INCRBYFLOAT", "big", "1e300"),
    ("INCRBYFLOAT", "big", "1e300"),
    ("INCRBYFLOAT", "nf", "abc"),
    ("INCRBYFLOAT", "nf", " 1"),
    ("INCRBYFLOAT", "nf", "nan"),
    ("INCRBYFLOAT", "nf", "inf"),
    ("INCRBYFLOAT", "nf", "1e5000"),
    ("INCRBYFLOAT", "huge", "1e4932"),  # 4933 digits: more than str(int) allows
    ("INCRBYFLOAT", "s", "1"),
    ("MSETNX", "m1", "1", "m2", "2"),
    ("MSETNX", "m2", "x", "m3", "3"),
    ("MGET", "m1", "m2", "m3"),
    ("MSETNX", "m1", "1", "m2"),
    ("SET", "r", "v", "EX", "1000"),
    ("RENAME", "r", "r2"),
    ("TTL", "r2"),
    ("EXISTS", "r"),
    ("RENAME", "r", "r3"),
    ("RENAME", "r2", "r2"),
    ("RENAME", "missing", "missing"),
    ("SET", "plain", "p"),
    ("SET", "target", "t", "EX", "500"),
    ("RENAME", "plain", "target"),
    ("TTL", "target"),
    ("RENAMENX", "target", "s"),
    ("RENAMENX", "target", "target"),
    ("RENAMENX", "target", "freshname"),
    ("COPY", "freshname", "copied"),
    ("COPY", "freshname", "copied"),
    ("COPY", "freshname", "copied", "REPLACE"),
    ("COPY", "r2", "withttl"),
    ("TTL", "withttl"),
    ("COPY", "nothing", "x"),
    ("COPY", "freshname", "freshname"),
    ("COPY", "freshname", "x", "DB", "zero"),
    ("COPY", "freshname", "x", "BOGUS"),
    ("COPY", "freshname", "x", "DB", "0", "REPLACE"),
    # Strings commands on a hash, and hashes moved and copied.
    ("HSET", "h", "f", "1", "g", "2"),
    ("GETSET", "h", "x"),
    ("APPEND", "h", "x"),
    ("GETRANGE", "h", "0", "1"),
    ("SETRANGE", "h", "0", "x"),
    ("SETRANGE", "h", "0", ""),
    ("INCRBYFLOAT", "h", "1"),
    ("MSETNX", "h", "1", "other", "2"),
    ("COPY", "h", "hcopy"),
    ("HSET", "hcopy", "f", "changed"),
    ("HGET", "h", "f"),
    ("RENAME", "hcopy", "hmoved"),
    ("HGETALL", "hmoved"),
    ("OBJECT", "ENCODING", "h"),
    ("HSET", "bigh", "f", "x" * 65),
    ("OBJECT", "ENCODING", "bigh"),
    ("OBJECT", "REFCOUNT", "h"),
    ("SADD", "ints", "1", "2", "3"),
    ("OBJECT", "ENCODING", "ints"),
    ("MEMORY", "USAGE", "nothing"),
    ("SET", "int", "12345"),
    ("SET", "emb", "hello"),
    ("SET", "raw", "x" * 45),
    ("SET", "neg", "-5"),
    ("SET", "padded", "007"),
    ("OBJECT", "ENCODING", "int"),
    ("OBJECT", "ENCODING", "emb"),
    ("OBJECT", "ENCODING", "raw"),
    ("OBJECT", "ENCODING", "neg"),
    ("OBJECT", "ENCODING", "padded"),
    ("OBJECT", "ENCODING", "missing"),
    ("OBJECT", "REFCOUNT", "int"),
    ("OBJECT", "REFCOUNT", "emb"),
    ("OBJECT", "REFCOUNT", "missing"),
    ("SET", "small", "42"),
    ("OBJECT", "REFCOUNT", "small"),
    ("OBJECT", "FREQ", "int"),
    ("OBJECT", "FREQ", "missing"),
    ("OBJECT", "IDLETIME", "missing"),
    ("OBJECT", "ENCODING"),
    ("OBJECT", "NOPE", "x"),
    ("MEMORY", "USAGE", "missing"),
    ("MEMORY", "USAGE"),
    ("MEMORY", "USAGE", "int", "SAMPLES", "-1"),
    ("MEMORY", "USAGE", "int", "BOGUS"),
    ("FLUSHALL",),
    ("RANDOMKEY",),
    ("CLIENT", "NOPE"),
    ("CLIENT", "KILL"),
    ("CLIENT", "KILL", "ID", "0"),
    ("CLIENT", "KILL", "ID", "abc"),
    ("CLIENT", "KILL", "USER", "bob"),
    ("CLIENT", "KILL", "TYPE", "bogus"),
    ("CLIENT", "KILL", "SKIPME", "maybe"),
    ("CLIENT", "KILL", "MAXAGE", "1"),
    ("CLIENT", "KILL", "ID"),
    ("CLIENT", "KILL", "/nowhere:0"),
    ("CLIENT", "KILL", "ID", "999999"),
    ("CLIENT", "KILL", "TYPE", "pubsub"),
    ("CLIENT", "PAUSE", "abc"),
    ("CLIENT", "PAUSE", "-1"),
    ("CLIENT", "PAUSE", "10", "BOGUS"),
    ("CLIENT", "PAUSE", "0"),
    ("CLIENT", "UNPAUSE"),
    ("CLIENT", "UNPAUSE", "x"),
    ("CLIENT", "REPLY"),
    ("CLIENT", "REPLY", "MAYBE"),
    ("CLIENT", "LIST", "TYPE", "bogus"),
    ("CLIENT", "LIST", "TYPE", "pubsub"),
]


def transcript(open_wire: Callable[[], Wire], resp3: bool) -> list[tuple[str, bytes]]:
    """Every request of the scenario with the exact reply it got."""
    a, b = open_wire(), open_wire()
    out: list[tuple[str, bytes]] = []

    def step(w: Wire, *args: str) -> None:
        out.append((" ".join(args)[:120], w(*args)))

    try:
        if resp3:
            a("HELLO", "3")  # the replies describe the server: not compared
            b("HELLO", "3")
        a("FLUSHALL")
        a("SCRIPT", "FLUSH")
        for args in [*SCRIPTS, *STRING_COMMANDS]:
            step(a, *args)
        # WATCH, with a second client.
        step(a, "SET", "w", "1")
        step(a, "WATCH", "w")
        step(b, "SET", "w", "2")
        step(a, "MULTI")
        step(a, "SET", "w", "mine")
        step(a, "EXEC")
        step(a, "GET", "w")
        step(a, "WATCH", "w", "other")
        step(a, "MULTI")
        step(a, "WATCH", "w")
        step(a, "INCR", "w")
        step(a, "EXEC")
        step(a, "WATCH", "w")
        step(a, "UNWATCH")
        step(b, "SET", "w", "3")
        step(a, "MULTI")
        step(a, "GET", "w")
        step(a, "EXEC")
        step(a, "WATCH", "w")
        step(a, "EVAL", "return redis.call('SET', 'w', 'by script')", "0")
        step(a, "MULTI")
        step(a, "GET", "w")
        step(a, "EXEC")
        step(a, "WATCH", "nonexistent")
        step(b, "DEL", "nonexistent")
        step(a, "MULTI")
        step(a, "GET", "nonexistent")
        step(a, "EXEC")
        step(a, "SET", "p", "v")
        step(a, "WATCH", "p")
        step(b, "PERSIST", "p")
        step(b, "GETEX", "p", "PERSIST")
        step(a, "MULTI")
        step(a, "GET", "p")
        step(a, "EXEC")
        step(a, "WATCH", "w")
        step(a, "MULTI")
        step(a, "NOSUCHCOMMAND")
        step(a, "EXEC")
        step(a, "WATCH")
        step(a, "UNWATCH", "x")
        step(a, "SET", "gone", "1", "PX", "100")
        step(a, "WATCH", "gone")
        time.sleep(0.3)
        step(a, "MULTI")
        step(a, "PING")
        step(a, "EXEC")
        # CLIENT REPLY: what is not sent is not received.
        a.send("CLIENT", "REPLY", "OFF")
        a.send("SET", "quiet", "1")
        a.send("INCR", "nokey-is-fine")
        a.send("GET", "quiet")
        step(a, "CLIENT", "REPLY", "ON")
        a.send("CLIENT", "REPLY", "SKIP")
        a.send("GET", "quiet")
        step(a, "ECHO", "after skip")
        a.send("CLIENT", "REPLY", "OFF")
        a.send("CLIENT", "REPLY", "SKIP")
        step(a, "CLIENT", "REPLY", "ON")
        # Subscription confirmations are pushes: CLIENT REPLY does not stop them.
        a.send("CLIENT", "REPLY", "OFF")
        a.send("SUBSCRIBE", "c1", "c2")
        out.append(("SUBSCRIBE under REPLY OFF", a.read() + a.read()))
        a.send("UNSUBSCRIBE", "c1", "c2")  # named: Redis' order for all is its dict's
        out.append(("UNSUBSCRIBE under REPLY OFF", a.read() + a.read()))
        step(a, "CLIENT", "REPLY", "ON")
        assert a.nothing_more()
        return out
    finally:
        a.close()
        b.close()


@pytest.fixture(scope="module")
def like_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(
        tmp_path_factory.mktemp("like-redis"),
        {
            "cache": {"default_ttl": 0, "sliding": False},
            "persistence": {"backend": "sqlite"},
        },
    ).start()
    yield d
    d.stop()


def _within_a_second(want: bytes, have: bytes) -> bool:
    """Two TTL replies (``:N``) a second apart at most: the two servers read
    the key at different moments, and a TTL rounds to the nearest second, so
    half a second of a loaded machine between the write and the read turns 200
    into 199 (a timing, not a difference)."""
    if not (want.startswith(b":") and have.startswith(b":")):
        return False
    w, h = int(want[1:]), int(have[1:])
    return w > 0 and h > 0 and abs(w - h) <= 1


@pytest.mark.parametrize("resp3", [False, True], ids=["resp2", "resp3"])
def test_same_replies_as_redis_server(
    like_redis: Daemon, redis_server: RedisServer, resp3: bool
) -> None:
    expected = transcript(lambda: Wire(redis_server.raw()), resp3)
    got = transcript(lambda: Wire(like_redis.raw()), resp3)
    assert len(got) == len(expected)
    for (request, want), (_, have) in zip(expected, got, strict=True):
        if request[0] == "TTL" and _within_a_second(want, have):
            continue
        assert have == want, f"{request!r}: redis-server {want!r}, sessiond {have!r}"
    assert redis_server.version.startswith("7.")
    assert "command_failed" not in like_redis.log_text()


def test_redis_cli_help_shows_the_new_commands_as_for_redis(
    like_redis: Daemon, redis_server: RedisServer
) -> None:
    """redis-cli builds ``help`` from COMMAND DOCS: the syntax line it shows
    is the same as for redis-server."""

    def syntax(path: Path, name: str) -> str:
        proc = subprocess.run(
            ["redis-cli", "-s", str(path), "help", name],
            capture_output=True,
            text=True,
            timeout=30,
        )
        lines = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout).strip().splitlines()
        assert lines, proc.stderr
        return lines[0].strip()

    for name in [
        "RENAME", "RENAMENX", "COPY", "GETSET", "APPEND", "GETRANGE", "SETRANGE",
        "INCRBYFLOAT", "MSETNX", "RANDOMKEY", "WATCH", "UNWATCH", "EVAL", "EVALSHA",
        "EVAL_RO", "EVALSHA_RO",
    ]:  # fmt: skip
        assert syntax(like_redis.socket_path, name) == syntax(redis_server.socket_path, name)
    assert syntax(like_redis.socket_path, "RENAME") == "RENAME key newkey"


# ------------------------------------------------------------- hostile scripts


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(
        tmp_path_factory.mktemp("limited"),
        {
            "scripting": {"time_limit": "500ms"},
            "persistence": {"backend": "sqlite", "durability": "always"},
        },
    ).start()
    yield d
    d.stop()


@pytest.fixture
def lr(limited: Daemon) -> Iterator[redis.Redis]:
    client = limited.client()
    client.flushall()
    yield client
    client.close()


def error_text(run: Callable[[], Any]) -> str:
    with pytest.raises(redis.ResponseError) as caught:
        run()
    return str(caught.value)


def test_an_endless_loop_is_stopped_at_the_limit(limited: Daemon, lr: redis.Redis) -> None:
    started = time.monotonic()
    text = error_text(lambda: lr.eval("while true do end", 0))
    took = time.monotonic() - started
    assert text.startswith(
        "Script killed: it ran longer than scripting.time_limit (500ms); its writes were "
        "rolled back. script: "
    )
    assert 0.45 < took < 3
    for script in (
        "while true do pcall(function() while true do end end) end",
        "local co = coroutine.wrap(function() while true do end end) while true do pcall(co) end",
        "local t = {} setmetatable(t, {__index = function(t, k) return t[k + 1] end}) "
        "while true do pcall(function() return t[1] end) end",
    ):
        assert "scripting.time_limit" in error_text(lambda s=script: lr.eval(s, 0))  # type: ignore[misc]
    assert lr.ping()


def test_other_clients_wait_at_most_the_limit(limited: Daemon, lr: redis.Redis) -> None:
    """The loop is busy with the script, so others wait; once it is stopped
    they are served, in order."""
    answered: list[float] = []
    sent = threading.Event()

    def other() -> None:
        with limited.client() as c:
            c.ping()
            assert sent.wait(10)  # the script's EVAL went first, however late
            c.set("other", "1")
            answered.append(time.monotonic())

    thread = threading.Thread(target=other)
    thread.start()
    script = Wire(limited.raw())
    started = time.monotonic()
    script.send("EVAL", "while true do end", "0")
    # The SET goes after the EVAL has had time to be read: sent together, the
    # daemon could read the SET's connection first.
    time.sleep(0.05)
    sent.set()
    assert b"scripting.time_limit" in script.read()
    script.sock.close()
    ended = time.monotonic()
    thread.join(10)
    assert answered and started + 0.4 < answered[0] < ended + 1.0
    assert lr.get("other") == b"1"


def test_huge_allocations_fail_the_script_not_the_daemon(lr: redis.Redis) -> None:
    for script in (
        "return string.rep('x', 2^30)",
        "local t = {} for i = 1, 1e9 do t[i] = i end",
        "local s = 'x' while true do s = s .. s end",
        "return table.concat({string.rep('x', 2^25), string.rep('y', 2^25)})",
    ):
        text = error_text(lambda s=script: lr.eval(s, 0))  # type: ignore[misc]
        assert "not enough memory" in text or "scripting.time_limit" in text, text
        assert lr.ping()
    assert lr.eval("return 'still here'", 0) == b"still here"


def test_sandbox_and_refused_commands(lr: redis.Redis) -> None:
    assert "nonexistent global variable 'os'" in error_text(lambda: lr.eval("os.exit(1)", 0))
    assert "nonexistent global variable 'io'" in error_text(
        lambda: lr.eval("io.open('/etc/passwd')", 0)
    )
    for call in (
        "'MULTI'", "'EXEC'", "'WATCH', 'k'", "'SUBSCRIBE', 'c'", "'FLUSHALL'", "'CLIENT', 'ID'",
        "'SHUTDOWN'", "'EVAL', 'return 1', 0", "'SCRIPT', 'KILL'",
    ):  # fmt: skip
        text = error_text(lambda c=call: lr.eval(f"return redis.call({c})", 0))  # type: ignore[misc]
        assert text.startswith(
            ("This Redis command is not allowed from script", "Unknown Redis command")
        ), text
    assert lr.ping()


def test_a_script_stopped_after_writing_is_rolled_back(limited: Daemon, lr: redis.Redis) -> None:
    lr.set("balance:a", "100", ex=600)
    lr.set("balance:b", "0")
    lr.set("gone", "kept")
    ttl = lr.ttl("balance:a")
    script = """
        redis.call('DECRBY', KEYS[1], 30)
        redis.call('INCRBY', KEYS[2], 30)
        redis.call('SET', 'brand-new', 'x')
        redis.call('DEL', 'gone')
        redis.call('PERSIST', KEYS[1])
        while true do end
    """
    text = error_text(lambda: lr.eval(script, 2, "balance:a", "balance:b"))
    assert "its writes were rolled back" in text
    assert lr.mget("balance:a", "balance:b", "brand-new", "gone") == [b"100", b"0", None, b"kept"]
    assert lr.ttl("balance:a") in (ttl, ttl - 1)
    stopped = limited.wait_for_event("script_stopped")[-1]
    assert (stopped["level"], stopped["rolled_back"], stopped["time_limit"]) == ("warning", 4, 0.5)
    # The store got the rollback too: after a restart the keys are as they were.
    limited.stop()
    limited.start()
    with limited.client() as fresh:
        assert fresh.mget("balance:a", "balance:b", "brand-new", "gone") == [
            b"100",
            b"0",
            None,
            b"kept",
        ]
    assert "Traceback" not in limited.log_text()


def test_redis_log_goes_to_the_daemon_log(limited: Daemon, lr: redis.Redis) -> None:
    lr.eval("redis.log(redis.LOG_WARNING, 'from a script', 42)", 0)
    event = limited.wait_for_event("script_log")[-1]
    assert (event["level"], event["message"]) == ("warning", "from a script 42")


def test_a_script_error_keeps_its_writes_as_in_redis(lr: redis.Redis) -> None:
    text = error_text(lambda: lr.eval("redis.call('SET', 'k', 'v') error('after')", 0))
    assert "after" in text
    assert lr.get("k") == b"v"


def test_undeclared_keys_only_in_the_store_are_read(daemon_factory: Factory) -> None:
    d = daemon_factory({"persistence": {"backend": "sqlite"}, "cache": {"max_sessions": 2}})
    with d.client() as c:
        for i in range(10):
            c.set(f"k{i}", f"v{i}")
        # k0 has been evicted to the store; the script names it without declaring it.
        script = "return {redis.call('GET', 'k0'), redis.call('GET', KEYS[1])}"
        assert c.eval(script, 1, "k1") == [b"v0", b"v1"]


def test_time_limit_reloads(daemon_factory: Factory) -> None:
    d = daemon_factory({"scripting": {"time_limit": "200ms"}})
    with d.client() as c:
        assert "(200ms)" in error_text(lambda: c.eval("while true do end", 0))
        d.config["scripting"]["time_limit"] = "300ms"
        d.write_config()
        d.wait_for_event("config_reloaded")
        assert "(300ms)" in error_text(lambda: c.eval("while true do end", 0))


# ------------------------------------------------------- CLIENT KILL, PAUSE


def closed(wire: Wire) -> bool:
    """Whether the daemon closed this connection (nothing more to read)."""
    wire.sock.settimeout(5)
    try:
        return wire.sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_client_kill_by_id_and_filters(daemon: Daemon) -> None:
    me, victim, bystander = (Wire(daemon.raw()) for _ in range(3))
    victim_id = int(victim("CLIENT", "ID")[1:-2])
    assert me("CLIENT", "KILL", "ID", str(victim_id)) == b":1\r\n"
    assert closed(victim)
    assert f"id={victim_id} ".encode() not in me("CLIENT", "LIST")
    # ADDR: every client of a Unix socket has the socket's address; SKIPME
    # (yes by default) spares the caller.
    address = f"{daemon.socket_path}:0"
    assert me("CLIENT", "KILL", "ADDR", address, "USER", "default") == b":1\r\n"
    assert closed(bystander)
    assert me("PING") == b"+PONG\r\n"
    assert me("CLIENT", "KILL", "LADDR", "/elsewhere:0") == b":0\r\n"
    # The old form kills the caller too, after its reply.
    assert me("CLIENT", "KILL", address) == b"+OK\r\n"
    assert closed(me)
    assert "Traceback" not in daemon.log_text()


def test_client_kill_skipme_no_closes_the_caller_after_its_reply(daemon: Daemon) -> None:
    wire = Wire(daemon.raw())
    assert wire("CLIENT", "KILL", "SKIPME", "no", "TYPE", "normal") == b":1\r\n"
    assert wire.sock.recv(100) == b""  # closed


# A pause of a minute: a request it held would not be answered before the
# client's 10 s timeout, so "answered" means "not held" whatever the machine's
# load. What it holds is checked as "no reply yet", then released with UNPAUSE.
# Lower bounds on a pause that ends by itself are measured from before PAUSE.
LONG_PAUSE = "60000"


def test_client_pause_write_holds_writes_only(daemon: Daemon) -> None:
    with daemon.client() as admin, daemon.client() as c:
        c.set("k", "1")
        assert admin.execute_command("CLIENT", "PAUSE", LONG_PAUSE, "WRITE") == b"OK"
        assert c.get("k") == b"1"  # reads go on
        assert c.eval("#!lua flags=no-writes\nreturn 1", 0) == 1
        writer, scripter = Wire(daemon.raw()), Wire(daemon.raw())
        writer.send("SET", "k", "2")
        scripter.send("EVAL", "return redis.call('SET', 'k2', '3')", "0")  # may write
        assert writer.nothing_more() and scripter.nothing_more()  # both held
        assert c.get("k") == b"1" and c.get("k2") is None
        admin.execute_command("CLIENT", "UNPAUSE")
        assert writer.read() == b"+OK\r\n" and scripter.read() == b"+OK\r\n"
        assert c.get("k") == b"2" and c.get("k2") == b"3"
        writer.close()
        scripter.close()
        started = time.monotonic()
        assert admin.execute_command("CLIENT", "PAUSE", "300", "WRITE") == b"OK"
        assert c.set("k", "4")  # held until the pause ends by itself
        assert time.monotonic() - started >= 0.3


def test_client_unpause_releases_held_clients(daemon: Daemon) -> None:
    with daemon.client() as admin, daemon.client() as c:
        admin.execute_command("CLIENT", "PAUSE", LONG_PAUSE, "WRITE")
        done: list[float] = []
        thread = threading.Thread(target=lambda: (c.set("k", "v"), done.append(1)))
        thread.start()
        time.sleep(0.2)
        assert not done
        admin.execute_command("CLIENT", "UNPAUSE")
        thread.join(10)  # released long before the minute is up
        assert done
        assert admin.get("k") == b"v"


def test_client_pause_all_holds_everything_and_is_extended(daemon: Daemon) -> None:
    with daemon.client() as admin, daemon.client() as c:
        started = time.monotonic()
        admin.execute_command("CLIENT", "PAUSE", "300", "ALL")
        assert c.ping()  # every command waits, the caller's too
        assert time.monotonic() - started >= 0.3
        admin_wire = Wire(daemon.raw())
        started = time.monotonic()
        admin_wire("CLIENT", "PAUSE", "1000", "ALL")
        # Under ALL, even CLIENT UNPAUSE waits (as in Redis) ...
        admin_wire.send("CLIENT", "PAUSE", "10", "WRITE")
        assert admin_wire.read() == b"+OK\r\n"
        assert time.monotonic() - started >= 1.0
        # ... and WRITE would not have weakened ALL, nor a shorter pause shortened it.
        assert c.get("k") is None
        # A request that fails its arity check is answered at once (the last
        # step: under ALL nothing lifts this pause early).
        admin_wire("CLIENT", "PAUSE", LONG_PAUSE, "ALL")
        assert admin_wire("GET") == b"-ERR wrong number of arguments for 'get' command\r\n"
        admin_wire.close()


def test_client_pause_write_holds_exec_of_writes_not_of_reads(daemon: Daemon) -> None:
    with daemon.client() as admin:
        reader, writer = Wire(daemon.raw()), Wire(daemon.raw())
        for w in (reader, writer):
            assert w("MULTI") == b"+OK\r\n"
        assert reader("GET", "k") == b"+QUEUED\r\n"
        assert writer("SET", "k", "v") == b"+QUEUED\r\n"
        admin.execute_command("CLIENT", "PAUSE", LONG_PAUSE, "WRITE")
        assert reader("EXEC") == b"*1\r\n$-1\r\n"
        writer.send("EXEC")
        assert writer.nothing_more()  # held
        admin.execute_command("CLIENT", "UNPAUSE")
        assert writer.read() == b"*1\r\n+OK\r\n"
        reader.close()
        writer.close()


def test_replies_before_a_held_request_are_sent(daemon: Daemon) -> None:
    with daemon.client() as admin:
        wire = Wire(daemon.raw())
        admin.execute_command("CLIENT", "PAUSE", LONG_PAUSE, "WRITE")
        wire.sock.sendall(
            encode_request("PING") + encode_request("SET", "k", "v") + encode_request("PING")
        )
        assert wire.read() == b"+PONG\r\n"
        assert wire.nothing_more()  # the SET is held, and the PING behind it
        admin.execute_command("CLIENT", "UNPAUSE")
        assert wire.read() == b"+OK\r\n"
        assert wire.read() == b"+PONG\r\n"
        wire.close()


def test_client_reply_off_with_a_store(daemon_factory: Factory) -> None:
    d = daemon_factory({"persistence": {"backend": "sqlite", "durability": "always"}})
    wire = Wire(d.raw())
    wire.send("CLIENT", "REPLY", "OFF")
    for i in range(100):
        wire.send("SET", f"k{i}", "v")
    assert wire("CLIENT", "REPLY", "ON") == b"+OK\r\n"
    assert wire("DBSIZE") == b":100\r\n"
    assert wire.nothing_more()
    wire.close()
