"""Differential test: random command sequences sent to a real redis-server and
to sessiond must get the same replies, byte for byte, in RESP2 and RESP3,
Lua scripts included.

Each example is a sequence of requests over a small keyspace (four keys, one
of them binary; values empty, numeric, binary), spread over two connections
per server so that ``WATCH`` sees another client's writes. Both servers start
each example from ``FLUSHALL`` and ``RESET`` connections. The commands are
those of docs/commands.md that session stores and locks use: strings,
keyspace, expiry, hashes, sets and transactions, well-formed and not (wrong
arity, syntax, wrong type, out-of-range numbers, requests of random shape).

sessiond runs with ``cache: {sliding: false, default_ttl: 0}``, so expiry
behaves as Redis' (sliding TTLs and the default TTL are documented
differences), in two configurations: memory only, and SQLite with room for
two sessions in memory, so that most keys are evicted to the store and read
back through; both must behave as one Redis keyspace. The SQLite one sweeps
every 20 ms (``cache.sweep_interval``), so that an example waits little for
the expiries only its store's sweep tells (below).

Keyspace notifications: each example sets ``notify-keyspace-events`` on both
servers to ``AKEmn`` (every event, keymiss and new included), ``Egx`` (Spring
Session's) or ``K``, ``E`` or ``KE`` with classes at random (of ``g$shxemnA``,
those docs/configuration.md lists). A third connection per server, in the
example's protocol, is subscribed to ``__key*__:*`` throughout; after each
step a ``PING`` on it is answered after every message the server had queued
for it (both servers publish a command's events before its reply), so the
messages before the answer are that step's events. They are compared as
they came (pattern, channel, array or push), in order, but for:

- ``expired``: Redis tells a key's expiry when a command finds it past its
  deadline or when its active expiry's sampling does, which is timing (a
  1 ms TTL, a past ``EXAT``/``PXAT`` it keeps until then); sessiond tells a
  past ``SET … EXAT|PXAT`` at once and a session that expired only in its
  store at its sweep, if no command finds it first (docs/commands.md). So
  ``expired`` messages are compared per example, not per step: at the end
  of an example in which a key may have expired, ``EXISTS`` of every key
  makes Redis tell those it has not yet, sessiond's sweep is waited for (at
  most five seconds), and each server must have told the same messages as
  many times each.
- ``del`` from Redis where sessiond tells ``expire`` (the same key, in the
  same place), in a step that sets a 1 ms TTL: Redis' ``PEXPIRE`` reads its
  clock once for the deadline and again to see whether it is already past;
  when a millisecond turns in between, it deletes the key (``del``, and no
  ``expired`` later). Taken as ``expire`` and an ``expired``.
- ``keymiss`` in a step that may run ``SCAN … TYPE`` (itself, queued in the
  ``EXEC`` that runs it, or called by a script whose source names a scan):
  Redis 7.0 checks each key's type with a lookup that tells ``keymiss`` of a
  key it finds expired (the ``expired`` timing again); Redis 7.2 no longer
  does, nor does sessiond, which follows 7.2 (docs/commands.md).

``evicted`` needs nothing: neither server sends it here, Redis having no
``maxmemory`` and sessiond's memory configuration no bound, while its SQLite
configuration evicts to the store, which is not an event (docs/commands.md).

Time: relative TTLs in requests grow by one second per step, so ``GT``/``LT``
never compare two deadlines set milliseconds apart, and none runs out during
a sequence; a request with a 1 ms TTL is followed by a 5 ms wait (after the
``EXEC`` that runs it, if queued), so the key has expired on both servers
before the next step. Nothing follows a 1 ms TTL in its transaction or script
(a request queued after it is not sent, a script makes no call after it):
Redis 7.0's ``PEXPIRE`` reads its clock twice and deletes the key when a
millisecond turns in between, and its ``PTTL`` reads the clock, not the
transaction's or script's time, so what comes after sees the key gone or its
``PTTL`` 0 where Redis 7.2 and sessiond, whose time stands still there, see it
(a fixed ``SET``, ``PEXPIRE k 1``, ``GET``, ``PTTL`` 20,000 times each in
``MULTI`` and ``EVAL`` on a loaded machine: ``GET`` nil 9 times, ``PTTL`` 0 67).

What is normalised, and why (nothing else is):

- ``TTL``, ``PTTL``, ``EXPIRETIME``, ``PEXPIRETIME``: time passes between the
  two servers' replies, so a remaining time or relative deadline is compared
  within two seconds (sign and presence exactly).
- ``DBSIZE``, once a key may have expired in the example (a 1 ms TTL, a past
  ``EXAT``/``PXAT``): Redis counts an expired key until its lazy or active
  expiry notices it, which is timing; only the reply's type is compared.
- ``SMEMBERS``, ``SINTER``, ``SUNION``, ``SDIFF``, ``SSCAN``, ``SCAN``, ``KEYS``:
  members in no defined order (Redis' own order depends on its encodings),
  sorted.
- ``SRANDMEMBER``, ``HRANDFIELD``, ``RANDOMKEY``: random, so only the reply's
  type and size are compared. ``SPOP`` is sent only with count 0 or bad
  arguments: a random pop would make the keyspaces differ.
- ``HELLO``'s reply names the server and its version: not compared.

Not sent: the binary key among the tokens of requests of random shape. Redis
formats an argument it quotes in an error (``Unsupported option``, ``unknown
command``) as a C string: cut at its first NUL byte, other bytes as they
are. sessiond keeps a NUL and sends a byte that is not UTF-8 as U+FFFD: a
difference left as it is, since no client matches on such bytes. Nor a hash
value over 64 bytes: Redis' hash would become a hashtable, whose field order
is its own.

Nor ``GT``/``LT`` with a time whose deadline lies past 2^42 seconds (the year
141,000; ``EXPIREAT k 9223372036854775``, ``PEXPIREAT k 9223372036854775807``,
``PEXPIRE k 9223372036854775``): sessiond keeps a deadline as a double of
seconds, whose steps there are over a millisecond, so it finds those two
absolute deadlines 807 ms apart equal (docs/commands.md); and Redis compares
two such relative deadlines by the milliseconds between the steps that set
them, which is timing.

Scripts: ``EVAL`` (and ``EVAL_RO``) of Lua drawn from a small grammar, one
statement a line so that error texts name lines: ``redis.call`` and
``redis.pcall`` of the requests above (not ``MULTI``/``EXEC``/``WATCH``, but
requests of random shape, which name them), their arguments as ``KEYS[i]``,
``ARGV[i]``, string literals or Lua numbers, the command name in either case;
calls Redis refuses before running a command (no name, an argument of the
wrong type); then a return of nil, booleans, integers, floats Redis
truncates, strings, nested tables and tables with holes, ``{err=}``,
``{ok=}``, ``redis.error_reply``/``status_reply``, ``{double=}``, ``{map=}``,
``{set=}``, ``{big_number=}``, ``{verbatim_string=}``, ``tonumber``/``tostring``
conversions, ``pcall`` results, or an error (raised strings, tables and
numbers, runtime errors, unknown commands, wrong arity, ``WRONGTYPE`` through
call and pcall, a write to a global), maybe after ``redis.setresp(2|3)`` and a
``#!lua`` shebang (``flags=no-writes``); then ``EVALSHA``/``EVALSHA_RO`` (sha in
either case) of scripts sent earlier in the sequence with their keys and
arguments, ``SCRIPT EXISTS``, ``SCRIPT LOAD`` and ``SCRIPT FLUSH``. Each example
starts with ``SCRIPT FLUSH``. Script replies are compared exactly: a call whose
reply is not deterministic goes through a Lua helper in the script itself
(``pos``: a positive time is 1; ``size``: a list is its length, a member or key
its type), as the normalising above does outside scripts.

Not sent in scripts, each for its reason:

- ``error({})``: a raised table with no ``err`` crashes Redis 7.0.15 (a NULL
  message in ``luaCallFunction``); sessiond answers ``ERR unknown error``.
- Numbers whose text differs between Redis 7.0 and 7.2, as ``redis.call``
  arguments or in ``{double=}``: Redis 7.0 writes them with ``%.17g``
  (``0.10000000000000001``, ``4.6116860184273879e+18``, ``-0`` as an
  argument, ``-nan``), Redis 7.2 and sessiond with the shortest digits that
  read back (``0.1``, ``4611686018427387904``, ``0``, ``nan``); both read back as
  the same double. Only numbers both write alike are sent
  (docs/commands.md).
- A NUL or a byte that is not UTF-8 in an error or status text (``{err=}``,
  ``{ok=}``, ``error_reply``, ``status_reply``): Redis cuts it at the NUL, as
  for the quoted arguments below.
- ``tostring`` of a table or function, and tables as ``{map=}``/``{set=}``
  keys: they show or order by an address.

``SESSIOND_DIFF_EXAMPLES`` sets the number of examples per configuration
with RESP2 (a third of it with RESP3): a longer search than CI's.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import Daemon, RedisServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("SESSIOND_DIFF_EXAMPLES", "450"))

CONFIGS: dict[str, dict[str, Any]] = {
    "memory": {
        "cache": {"sliding": False, "default_ttl": 0},
        "persistence": {"backend": "none"},
    },
    "sqlite": {
        "cache": {
            "sliding": False,
            "default_ttl": 0,
            "max_sessions": 2,
            "sweep_interval": "20ms",
        },
        "persistence": {"backend": "sqlite"},
    },
}

# ------------------------------------------------------------------ RESP

Node = tuple[str, Any]


def parse(buf: bytes, pos: int = 0) -> tuple[Node, int] | None:
    """One RESP2/RESP3 reply from ``buf`` at ``pos`` as ``(type, payload)``,
    keeping every type distinction the wire makes; None if incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, line, pos = chr(buf[pos]), buf[pos + 1 : end], end + 2
    if kind in "+-:_,#(":
        return (kind, line), pos
    if kind in "$!=":
        n = int(line)
        if n < 0:
            return (kind, None), pos
        if len(buf) < pos + n + 2:
            return None
        return (kind, buf[pos : pos + n]), pos + n + 2
    if kind in "*~%>|":
        n = int(line)
        if n < 0:
            return (kind, None), pos
        items = []
        for _ in range(n * 2 if kind in "%|" else n):
            got = parse(buf, pos)
            if got is None:
                return None
            item, pos = got
            items.append(item)
        return (kind, tuple(items)), pos
    raise AssertionError(f"not RESP: {buf[pos - 1 :]!r}")


def encode(args: tuple[bytes, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    """One raw connection: a request in, its reply as a parsed node out."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buf = b""

    def __call__(self, *args: bytes) -> Node:
        self.send(*args)
        return self.read()

    def send(self, *args: bytes) -> None:
        self.sock.sendall(encode(args))

    def read(self) -> Node:
        while True:
            got = parse(self.buf) if self.buf else None
            if got is not None:
                node, used = got
                self.buf = self.buf[used:]
                return node
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------ requests


@dataclass(frozen=True)
class Rel:
    """A relative TTL, made concrete at send time: ``seconds`` plus one
    second per step (in milliseconds if ``ms``)."""

    seconds: int
    ms: bool

    def at(self, step: int) -> bytes:
        value = self.seconds + step
        return str(value * 1000 if self.ms else value).encode()


@dataclass(frozen=True)
class Soon:
    """A TTL of one millisecond: the step that sends it waits a few
    milliseconds after it (and after the EXEC that runs it), so that the key
    has expired on both servers before the next step."""

    def at(self, step: int) -> bytes:
        return b"1"


@dataclass(frozen=True)
class Again:
    """EVALSHA (or EVALSHA_RO) of the ``n``-th script sent earlier in the
    sequence (counted modulo how many), with its keys and arguments; of a
    script never sent if there is none. ``upper``: the sha in capitals."""

    n: int
    ro: bool
    upper: bool


@dataclass(frozen=True)
class Sha:
    """The sha1 of the ``n``-th script sent earlier (of one never sent if
    there is none), as an argument of SCRIPT EXISTS."""

    n: int

    def of(self, scripts: list[Request]) -> bytes:
        body = scripts[self.n % len(scripts)][1] if scripts else b"return 'never sent'"
        assert isinstance(body, bytes)
        return hashlib.sha1(body).hexdigest().encode()


@dataclass(frozen=True)
class Body:
    """The source of the ``n``-th script sent earlier, for SCRIPT LOAD."""

    n: int

    def of(self, scripts: list[Request]) -> bytes:
        body = scripts[self.n % len(scripts)][1] if scripts else b"return 'loaded'"
        assert isinstance(body, bytes)
        return body


Arg = bytes | Rel | Soon | Sha | Body | Again

KEYS = [b"a", b"b", b"c", b"k\x00\xff"]
VALUES = [
    b"",
    b"0",
    b"1",
    b"-7",
    b"10.5",
    b"abc",
    b"\x00\xff\r\n",
    b"9223372036854775807",
    b"-9223372036854775808",
    b" 1",
    b"1e3",
    b"007",
]
FIELDS = [b"f", b"g", b"", b"\xff"]
INTS = [b"1", b"-1", b"0", b"5", b"9223372036854775807", b"-9223372036854775808", b"x", b"1.5"]
FLOATS = [b"1.5", b"-0.1", b"0", b"5.0e3", b"1e308", b"inf", b"nan", b"x", b"", b"3"]
OFFSETS = [b"0", b"1", b"3", b"-1", b"-3", b"100", b"-100", b"x", b"9223372036854775807"]
BAD_TIMES = [b"0", b"-1", b"x", b"", b"1.5", b"9223372036854775807", b"-9223372036854775808"]
HUGE_TIMES = [b"9223372036854775", b"9223372036854775808"]
ABS_SECONDS = [b"1", b"4000000000", b"4000000001"]
ABS_MS = [b"1", b"4000000000000", b"4000000000500"]

keys = st.sampled_from(KEYS)
values = st.sampled_from(VALUES)
fields = st.sampled_from(FIELDS)
ints = st.sampled_from(INTS)
floats = st.sampled_from(FLOATS)
# No 1e308 in a hash: a value over 64 bytes turns Redis' hash into a
# hashtable, whose field order is its own (tests/test_types.py).
hash_floats = st.sampled_from([f for f in FLOATS if f != b"1e308"])
offsets = st.sampled_from(OFFSETS)
rel_seconds = st.builds(Rel, st.sampled_from([100, 100_000]), st.just(False))
rel_ms = st.builds(Rel, st.sampled_from([100, 100_000]), st.just(True))
seconds = st.one_of(rel_seconds, rel_seconds, st.sampled_from(BAD_TIMES + HUGE_TIMES))
milliseconds = st.one_of(rel_ms, rel_ms, st.sampled_from(BAD_TIMES + HUGE_TIMES))
abs_seconds = st.sampled_from(ABS_SECONDS + BAD_TIMES + HUGE_TIMES)
abs_ms = st.sampled_from(ABS_MS + BAD_TIMES + HUGE_TIMES)

Request = tuple[Arg, ...]


def req(*parts: Any) -> st.SearchStrategy[Request]:
    """A request of fixed parts and strategies, lists of args flattened."""

    def flatten(drawn: tuple[Any, ...]) -> Request:
        out: list[Arg] = []
        for p in drawn:
            if isinstance(p, list):
                for q in p:
                    out.extend(q if isinstance(q, tuple | list) else [q])
            else:
                out.append(p)
        return tuple(out)

    return st.tuples(*(p if isinstance(p, st.SearchStrategy) else st.just(p) for p in parts)).map(
        flatten
    )


def some(strategy: st.SearchStrategy[Any], lo: int = 1, hi: int = 3) -> st.SearchStrategy[Any]:
    return st.lists(strategy, min_size=lo, max_size=hi)


def options(*choices: st.SearchStrategy[Any], hi: int = 3) -> st.SearchStrategy[Any]:
    return st.lists(st.one_of(*choices), max_size=hi)


def opt(*parts: Any) -> st.SearchStrategy[Any]:
    return req(*parts).map(list)


ttl_options = [
    opt(b"EX", seconds),
    opt(b"PX", milliseconds),
    opt(b"EXAT", abs_seconds),
    opt(b"PXAT", abs_ms),
]
set_options = options(
    *ttl_options, st.just([b"NX"]), st.just([b"XX"]), st.just([b"GET"]), st.just([b"KEEPTTL"])
)
getex_options = options(*ttl_options, st.just([b"PERSIST"]), hi=2)
expire_flags = options(st.sampled_from([[b"NX"], [b"XX"], [b"GT"], [b"LT"]]), hi=2)
# Past 2^42 seconds (the year 141,000) a double of seconds, sessiond's
# deadline, no longer holds every millisecond (the module's docstring).
FAR = 2**42


def expiring(name: bytes, times: st.SearchStrategy[Arg], ms: bool) -> st.SearchStrategy[Request]:
    """``name`` with a key, a time and flags: not ``GT`` nor ``LT`` with a
    time past :data:`FAR`."""

    def with_flags(time: Arg) -> st.SearchStrategy[Request]:
        far = isinstance(time, bytes) and time.isdigit() and int(time) >= FAR * (1000 if ms else 1)
        flags = options(st.sampled_from([[b"NX"], [b"XX"]]), hi=2) if far else expire_flags
        return req(name, keys, st.just(time), flags)

    return times.flatmap(with_flags)


pairs = some(st.tuples(keys, values), 1, 3)
field_pairs = some(st.tuples(fields, values), 1, 3)

strings = [
    req(b"GET", keys),
    req(b"SET", keys, values, set_options),
    req(b"SETNX", keys, values),
    req(b"SETEX", keys, seconds, values),
    req(b"PSETEX", keys, milliseconds, values),
    req(b"GETSET", keys, values),
    req(b"GETDEL", keys),
    req(b"GETEX", keys, getex_options),
    req(b"MGET", some(keys)),
    req(b"MSET", pairs),
    req(b"MSETNX", pairs),
    req(b"APPEND", keys, values),
    req(b"STRLEN", keys),
    req(st.sampled_from([b"INCR", b"DECR"]), keys),
    req(st.sampled_from([b"INCRBY", b"DECRBY"]), keys, ints),
    req(b"INCRBYFLOAT", keys, floats),
    req(b"GETRANGE", keys, offsets, offsets),
    req(b"SETRANGE", keys, st.sampled_from([b"0", b"1", b"3", b"-1", b"x"]), values),
]
keyspace = [
    req(st.sampled_from([b"DEL", b"UNLINK", b"EXISTS", b"TOUCH"]), some(keys)),
    req(b"TYPE", keys),
    req(st.sampled_from([b"RENAME", b"RENAMENX"]), keys, keys),
    req(b"COPY", keys, keys, options(st.just([b"REPLACE"]), st.just([b"DB", b"0"]), hi=2)),
    expiring(b"EXPIRE", seconds, ms=False),
    expiring(b"PEXPIRE", milliseconds, ms=True),
    expiring(b"EXPIREAT", abs_seconds, ms=False),
    expiring(b"PEXPIREAT", abs_ms, ms=True),
    req(b"PERSIST", keys),
    req(st.sampled_from([b"TTL", b"PTTL", b"EXPIRETIME", b"PEXPIRETIME"]), keys),
    req(b"DBSIZE"),
    req(b"KEYS", st.sampled_from([b"*", b"?", b"[ab]", b"k*"])),
    req(b"RANDOMKEY"),
    req(
        b"SCAN",
        b"0",
        b"COUNT",
        b"100",
        options(
            st.just([b"MATCH", b"[ab]*"]),
            st.sampled_from([[b"TYPE", b"string"], [b"TYPE", b"hash"], [b"TYPE", b"set"]]),
            hi=2,
        ),
    ),
]
hashes = [
    req(st.sampled_from([b"HSET", b"HMSET"]), keys, field_pairs),
    req(b"HSETNX", keys, fields, values),
    req(st.sampled_from([b"HGET", b"HEXISTS", b"HSTRLEN"]), keys, fields),
    req(st.sampled_from([b"HMGET", b"HDEL"]), keys, some(fields)),
    req(st.sampled_from([b"HGETALL", b"HKEYS", b"HVALS", b"HLEN"]), keys),
    req(b"HINCRBY", keys, fields, ints),
    req(b"HINCRBYFLOAT", keys, fields, hash_floats),
    req(b"HSCAN", keys, b"0", options(st.just([b"MATCH", b"f*"]), st.just([b"COUNT", b"5"]))),
    req(b"HRANDFIELD", keys, options(st.sampled_from([b"2", b"-2", b"0"]), hi=1)),
    req(b"HRANDFIELD", keys, st.sampled_from([b"1", b"-3", b"x"]), b"WITHVALUES"),
]
sets = [
    req(st.sampled_from([b"SADD", b"SREM", b"SMISMEMBER"]), keys, some(fields)),
    req(b"SISMEMBER", keys, fields),
    req(st.sampled_from([b"SMEMBERS", b"SCARD"]), keys),
    req(st.sampled_from([b"SINTER", b"SUNION", b"SDIFF"]), some(keys)),
    req(b"SMOVE", keys, keys, fields),
    req(b"SSCAN", keys, b"0", options(st.just([b"MATCH", b"*"]), st.just([b"COUNT", b"5"]))),
    req(b"SRANDMEMBER", keys, options(st.sampled_from([b"2", b"-2", b"0"]), hi=1)),
    req(b"SPOP", keys, st.sampled_from([b"0", b"-1", b"x"])),
]
transactions = [
    st.just((b"MULTI",)),
    st.just((b"MULTI",)),
    st.just((b"EXEC",)),
    st.just((b"EXEC",)),
    st.just((b"DISCARD",)),
    st.just((b"UNWATCH",)),
    req(b"WATCH", some(keys, 1, 2)),
]
NAMES = [
    b"GET", b"SET", b"SETNX", b"SETEX", b"PSETEX", b"GETSET", b"GETDEL", b"GETEX", b"MGET",
    b"MSET", b"MSETNX", b"APPEND", b"STRLEN", b"INCR", b"DECR", b"INCRBY", b"DECRBY",
    b"INCRBYFLOAT", b"GETRANGE", b"SETRANGE", b"DEL", b"UNLINK", b"EXISTS", b"TYPE", b"RENAME",
    b"RENAMENX", b"COPY", b"EXPIRE", b"PEXPIRE", b"EXPIREAT", b"PEXPIREAT", b"PERSIST", b"TTL",
    b"PTTL", b"EXPIRETIME", b"PEXPIRETIME", b"HSET", b"HGET", b"HMGET", b"HDEL", b"HINCRBY",
    b"HGETALL", b"SADD", b"SREM", b"SMEMBERS", b"SISMEMBER", b"SMOVE", b"WATCH", b"MULTI",
    b"EXEC", b"DISCARD", b"NOSUCHCMD",
]  # fmt: skip
# Tokens for requests of random shape: none is a short positive time, which
# some position could read as a TTL that runs out during the sequence, nor
# the binary key (the module's docstring says why).
TOKENS = [
    *KEYS[:3], b"", b"0", b"-1", b"100000", b"x", b"EX", b"PX", b"EXAT", b"PXAT", b"NX", b"XX",
    b"GT", b"LT", b"GET", b"KEEPTTL", b"PERSIST", b"REPLACE", b"DB", b"WITHVALUES",
]  # fmt: skip
shapeless = req(st.sampled_from(NAMES), st.lists(st.sampled_from(TOKENS), max_size=4))

soon = [
    req(b"PEXPIRE", keys, Soon()),
    req(b"SET", keys, values, b"PX", Soon()),
    req(b"PSETEX", keys, Soon(), values),
    req(b"GETEX", keys, b"PX", Soon()),
]

# ------------------------------------------------------------- scripts

# A script is drawn as Lua source plus the KEYS and ARGV it is sent with. Its
# statements each take one line (error texts name lines): calls of the
# requests above through redis.call or redis.pcall, their arguments as
# KEYS[i], ARGV[i] or literals; then an error or a return of an expression
# over the calls' results and Lua values of every type.


def lua_string(value: bytes) -> str:
    """``value`` as a Lua string literal, any byte escaped as ``\\ddd``."""
    out = []
    for b in value:
        c = chr(b)
        out.append(c if 32 <= b < 127 and c not in "'\\" else f"\\{b:03d}")
    return "'" + "".join(out) + "'"


class Builder:
    """The KEYS and ARGV of a script being drawn, and its result variables."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.argv: list[Arg] = []
        self.results = 0
        self.helpers: set[str] = set()
        self.soon = False  # a call sets a 1 ms TTL: no call after it

    def key(self, key: bytes) -> str:
        if key not in self.keys:
            self.keys.append(key)
        return f"KEYS[{self.keys.index(key) + 1}]"

    def arg(self, arg: Arg) -> str:
        self.argv.append(arg)
        return f"ARGV[{len(self.argv)}]"


# Helpers that make a result whose value is not deterministic (a remaining
# time, a random member, members in no defined order) comparable: a
# positive time becomes 1, a list its length, anything else but an error or
# a status its type.
HELPERS = {
    "pos": "local function pos(x) if type(x) == 'number' and x > 0 then return 1 end return x end",
    "size": "local function size(x) if type(x) == 'table' then if x.err or x.ok then return x end"
    " return #x end return type(x) end",
}
SIZED = {b"SMEMBERS", b"SINTER", b"SUNION", b"SDIFF", b"KEYS", b"SCAN", b"SSCAN", b"DBSIZE"}
# The requests a script calls: all above but MULTI/EXEC/WATCH (shapeless
# requests still name them, and scripts are refused them).
inner_requests = st.one_of(*strings, *keyspace, *hashes, *sets, *soon, shapeless)
LUA_INTS = ["0", "1", "-1", "42", "2^53", "2^62", "-2^63"]
LUA_FLOATS = ["3.99", "-3.99", "0.5", "-0.5", "1e20", "-1e20", "2^63", "1/0", "-1/0", "0/0", "1e-3"]
# Numbers as redis.call arguments, which it turns into strings, and as
# doubles a script returns: only those Redis 7.0 and 7.2 write alike (the
# module's docstring says why).
LUA_NUMBERS = ["1e20", "2^53 + 1", "0.5", "-2.25", "1/0", "-1/0", "1e3"]
INT15 = re.compile(rb"-?[0-9]{1,15}")
DOUBLES = ["3.5", "-0.5", "0", "100", "1e20", "2^53", "1/0", "-1/0", "'2.5'", "'x'", "nil", "{}"]
LUA_FIELDS = ["f", "g", "['1']", "[2]", "[1.5]", "[1.25]", "[true]"]
LUA_STRINGS = [
    b"", b"x", b"OK", b"ERR boom", b"MYERR thing went wrong", b"nospace", b"-ERR dash",
    b"a\r\nb", b"10", b"3.5", b" 1", b"0x10", b"1e3", b"\x00\xff",
]  # fmt: skip


@st.composite
def lua_call(draw: st.DrawFn, b: Builder) -> str:
    """``redis.call(...)`` or ``redis.pcall(...)`` of a request, or a call
    that Redis refuses before running a command."""
    fn = draw(st.sampled_from(["redis.call", "redis.pcall"]))
    odd = draw(st.sampled_from([None] * 12 + ["", "true", "nil", "{}", "1.5"]))
    if odd is not None:  # no command name, or an argument of the wrong type
        return f"{fn}({odd})" if odd in ("", "{}") else f"{fn}('GET', {odd})"
    request = draw(inner_requests)
    b.soon = b.soon or any(isinstance(a, Soon) for a in request)
    parts = []
    for i, a in enumerate(request):
        if i == 0:
            name = a.decode() if isinstance(a, bytes) else "GET"
            parts.append(lua_string((name.lower() if draw(st.booleans()) else name).encode()))
        elif not isinstance(a, bytes):
            parts.append(b.arg(a))
        elif a in KEYS and draw(st.integers(0, 3)):
            parts.append(b.key(a))
        else:
            how = draw(st.integers(0, 6))
            if how == 0 and (a in (b"10.5", b"1.5", b"1e3", b"5.0e3") or re.fullmatch(INT15, a)):
                parts.append(a.decode())  # a Lua number, converted back by redis.call
            elif how == 0:
                parts.append(draw(st.sampled_from(LUA_NUMBERS)))
            elif how < 3:
                parts.append(b.arg(a))
            else:
                parts.append(lua_string(a))
    call = f"{fn}({', '.join(parts)})"
    name = request[0].upper() if isinstance(request[0], bytes) else b""
    if name in TIMES:
        b.helpers.add("pos")
        return f"pos({call})"
    if name in SIZED or name in RANDOM:
        b.helpers.add("size")
        return f"size({call})"
    return call


@st.composite
def lua_scalar(draw: st.DrawFn, b: Builder, depth: int = 0, text: bool = False) -> str:
    """An expression of a Lua type other than a table (so ``tostring`` of it
    never shows an address); with ``text``, never a string with a NUL or a
    byte that is not UTF-8 (the module's docstring says why)."""
    kind = draw(st.integers(0, 9 if depth < 2 else 5))
    strings = [x for x in LUA_STRINGS + VALUES if not text or b"\x00" not in x]
    if kind == 0:
        return draw(st.sampled_from(["nil", "false", "true"]))
    if kind == 1:
        return draw(st.sampled_from(LUA_INTS))
    if kind == 2:
        return draw(st.sampled_from(LUA_FLOATS))
    if kind == 3:
        return lua_string(draw(st.sampled_from(strings)))
    if kind == 4:
        return b.arg(draw(st.sampled_from(strings)))
    if kind == 5:
        return draw(st.sampled_from(["#KEYS", "#ARGV", "ARGV[9]", "KEYS[1]"][: 3 if text else 4]))
    if kind == 6:
        return f"tonumber({draw(lua_scalar(b, depth + 1, text))})"
    if kind == 7:
        return f"tostring({draw(lua_scalar(b, depth + 1, text))})"
    if kind == 8 and b.results:
        r = f"r{draw(st.integers(1, b.results))}"
        return draw(st.sampled_from([f"type({r})", f"tonumber({r})", f"({r} ~= nil)"]))
    return f"(tonumber({draw(lua_scalar(b, depth + 1, text))}) or 0) + 0.5"


@st.composite
def lua_value(draw: st.DrawFn, b: Builder, depth: int = 0) -> str:
    """An expression of any Lua type: what a script returns."""
    kind = draw(st.integers(0, 11 if depth < 2 else 2))
    if kind <= 1:
        return draw(lua_scalar(b))
    if kind == 2 and b.results:
        return f"r{draw(st.integers(1, b.results))}"
    if kind <= 4:  # an array, maybe with holes, maybe nested
        items = draw(st.lists(lua_value(b, depth + 1), max_size=4))
        return "{" + ", ".join(items) + "}"
    if kind == 5:
        field = draw(st.sampled_from(["err", "ok"]))
        return f"{{{field}={draw(lua_scalar(b, depth + 1, text=True))}}}"
    if kind == 6:
        fn = draw(st.sampled_from(["redis.error_reply", "redis.status_reply"]))
        return f"{fn}({draw(lua_scalar(b, depth + 1, text=True))})"
    if kind == 7:
        return f"{{double={draw(st.sampled_from(DOUBLES))}}}"
    if kind == 8:  # RESP3 types (a RESP2 client gets them converted)
        names = draw(st.lists(st.sampled_from(LUA_FIELDS), max_size=3))
        if draw(st.booleans()):
            entries = [f"{n}={draw(lua_value(b, depth + 1))}" for n in names]
            return "{map={" + ", ".join(entries) + "}}"
        return "{set={" + ", ".join(f"{n}=true" for n in names) + "}}"
    if kind == 9:
        return f"{{big_number={draw(lua_scalar(b, depth + 1))}}}"
    if kind == 10:
        fmt = draw(st.sampled_from(["'txt'", "'mkd'", "'x'", "'markdown'", "''", "1"]))
        return f"{{verbatim_string={{format={fmt}, string={draw(lua_scalar(b, depth + 1))}}}}}"
    if b.results and not b.soon:
        return f"{{pcall(redis.call, 'INCR', {b.key(draw(keys))})}}"
    return "{'no', 'results'}"


LUA_ERRORS = [
    "error('boom')",
    "error({err='ERR raised table'})",
    "error(redis.error_reply('MYERR raised reply'))",
    "error(42)",
    "error({err=42})",
    "error({err='ERR a\\r\\nb'})",
    "local t = nil; return t.field",
    "return ARGV[1] + 0",
    "return redis.call('NOSUCHCMD', 'x')",
    "return redis.pcall('NOSUCHCMD', 'x')",
    "return redis.call('GET')",
    "return redis.pcall('SET', 'x')",
    "return redis.call('EVAL', 'return 1', '0')",
    "x_global = 1",
]


@st.composite
def lua_script(draw: st.DrawFn) -> tuple[bytes, list[bytes], list[Arg]]:
    b = Builder()
    lines = []
    for _ in range(draw(st.integers(0, 3))):
        if b.soon:
            break
        call = draw(lua_call(b))
        b.results += 1
        lines.append(f"local r{b.results} = {call}")
    if draw(st.integers(0, 4)) == 0:
        lines.append(draw(st.sampled_from(LUA_ERRORS)))
    else:
        lines.append(f"return {draw(lua_value(b))}")
    head = [HELPERS[h] for h in sorted(b.helpers)]
    resp = draw(st.sampled_from([None, None, None, 2, 3]))
    if resp is not None:
        head.insert(0, f"redis.setresp({resp})")
    shebang = draw(st.sampled_from([None] * 8 + ["#!lua", "#!lua flags=no-writes"]))
    if shebang is not None:
        head.insert(0, shebang)
    return "\n".join(head + lines).encode(), b.keys, b.argv


def eval_request(script: tuple[bytes, list[bytes], list[Arg]], name: bytes) -> Request:
    body, script_keys, argv = script
    return (name, body, str(len(script_keys)).encode(), *script_keys, *argv)


evals = st.builds(eval_request, lua_script(), st.sampled_from([b"EVAL"] * 5 + [b"EVAL_RO"]))
script_requests = [
    evals,
    evals,
    evals,
    evals,
    evals,
    st.builds(Again, st.integers(0, 9), st.sampled_from([False] * 3 + [True]), st.booleans()).map(
        lambda again: (again,)
    ),
    req(b"SCRIPT", b"EXISTS", some(st.builds(Sha, st.integers(0, 9)))),
    req(
        b"SCRIPT", b"LOAD", st.one_of(st.builds(Body, st.integers(0, 9)), evals.map(lambda r: r[1]))
    ),
    st.just((b"SCRIPT", b"FLUSH")),
]

requests = st.one_of(
    *strings,
    *keyspace,
    *hashes,
    *sets,
    *transactions,
    *soon,
    shapeless,
    shapeless,
    *script_requests,
)
# Runs of requests, so that sequences are long on average yet shrink to one.
steps = st.lists(
    st.lists(st.tuples(st.sampled_from([0, 0, 0, 1]), requests), min_size=1, max_size=12),
    min_size=1,
    max_size=6,
).map(lambda runs: [step for run in runs for step in run])

# Keyspace events each example turns on: everything (keymiss and new
# included), Spring Session's choice, or classes and channel kinds at random.
PATTERN = b"__key*__:*"
notify_flags = st.one_of(
    st.just(b"AKEmn"),
    st.just(b"Egx"),
    st.builds(
        lambda kinds, classes: (kinds + classes).encode(),
        st.sampled_from(["K", "E", "KE"]),
        st.text(alphabet="g$shxemnA", min_size=1, max_size=5),
    ),
)

# --------------------------------------------------------- normalising

TIMES = {b"TTL": 2, b"EXPIRETIME": 2, b"PTTL": 2000, b"PEXPIRETIME": 2000}
UNORDERED = {b"SMEMBERS", b"SINTER", b"SUNION", b"SDIFF", b"KEYS"}
RANDOM = {b"SRANDMEMBER", b"HRANDFIELD", b"RANDOMKEY"}


@dataclass(frozen=True)
class Near:
    """A positive time, equal to another within ``slack``."""

    value: int
    slack: int

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Near) and abs(self.value - other.value) <= self.slack

    def __hash__(self) -> int:
        return 0


def normal(name: bytes, node: Node, expired: bool) -> Any:
    """``node``, the reply to a ``name`` request, as it is compared
    (``expired``: whether a key may have expired in this example)."""
    kind, payload = node
    if kind == "-":
        return node
    if name == b"DBSIZE" and expired:
        return kind  # Redis counts an expired key until it notices
    if name in TIMES and kind == ":" and int(payload) > 0:
        return (kind, Near(int(payload), TIMES[name]))
    if name in UNORDERED and payload is not None:
        return (kind, tuple(sorted(payload)))
    if name in (b"SSCAN", b"SCAN") and kind == "*" and len(payload) == 2:
        cursor, (members_kind, members) = payload
        return (kind, (cursor, (members_kind, tuple(sorted(members)))))
    if name in RANDOM:  # one element (present or nil), or how many
        return (kind, payload if payload is None else len(payload) if kind in "*~%" else 1)
    return node


class Session:
    """One connection to each server, and what it is in the middle of."""

    def __init__(self, theirs: Conn, ours: Conn) -> None:
        self.theirs = theirs
        self.ours = ours
        self.queued: list[bytes] | None = None  # names queued since MULTI
        self.marks: frozenset[str] = frozenset()  # those of the requests queued

    def normal(self, name: bytes, node: Node, expired: bool) -> Any:
        """As :func:`normal`, EXEC's replies each by the command it ran."""
        if name == b"EXEC" and node[0] == "*" and node[1] is not None and self.queued:
            replies = zip(self.queued, node[1], strict=True)
            return ("*", tuple(normal(n, r, expired) for n, r in replies))
        return normal(name, node, expired)

    def follow(self, name: bytes, reply: Node, marks: frozenset[str]) -> frozenset[str]:
        """Track MULTI from Redis' reply (the reference); the marks of what
        ran now (:func:`marks`): the request's, or those of the requests an
        EXEC ran, or none for a request queued."""
        if name == b"MULTI" and reply == ("+", b"OK"):
            self.queued = []
        elif self.queued is not None:
            if name in (b"EXEC", b"DISCARD"):
                self.queued = None
                ran = self.marks if name == b"EXEC" else frozenset()
                self.marks = frozenset()
                return ran
            elif reply == ("+", b"QUEUED"):
                self.queued.append(name)
                self.marks |= marks
                return frozenset()
        return marks


def marks(request: Request, args: tuple[bytes, ...], scripts: list[Request]) -> frozenset[str]:
    """What in a request the comparison must know of: ``soon``, it sets a
    1 ms TTL; ``scan``, it may run ``SCAN`` with ``TYPE`` (a script whose
    source names any scan may)."""
    out = set()
    if any(isinstance(a, Soon) for a in request):
        out.add("soon")
    name = args[0].upper()
    if name == b"SCAN" and any(a.upper() == b"TYPE" for a in args):
        out.add("scan")
    if name.startswith(b"EVAL"):
        body = args[1]
        if name.startswith(b"EVALSHA"):
            sent = [r[1] for r in scripts if isinstance(r[1], bytes)]
            body = next(
                (b for b in sent if hashlib.sha1(b).hexdigest().encode() == body.lower()), b""
            )
        if b"scan" in body.lower():
            out.add("scan")
    return frozenset(out)


def is_event(node: Node) -> bool:
    """Whether ``node`` is a pattern subscription's message (an array in
    RESP2, a push in RESP3)."""
    kind, payload = node
    return kind in "*>" and bool(payload) and payload[0] == ("$", b"pmessage")


def told(node: Node) -> tuple[bytes, bytes]:
    """The event and key a keyspace event message tells, whichever channel
    kind it came on."""
    channel, data = node[1][2][1], node[1][3][1]
    prefix, _, rest = channel.partition(b":")
    return (data, rest) if prefix.startswith(b"__keyspace") else (rest, data)


class Listener:
    """A subscriber to every keyspace event on each server."""

    def __init__(self, theirs: Conn, ours: Conn) -> None:
        self.theirs = theirs
        self.ours = ours

    def subscribe(self, protocol: int) -> None:
        for conn in (self.theirs, self.ours):
            if protocol == 3:
                assert conn(b"HELLO", b"3")[0] == "%"
            assert conn(b"PSUBSCRIBE", PATTERN)[1][0] == ("$", b"psubscribe")

    def heard(self) -> tuple[list[Node], list[Node]]:
        """What each server has published since the last call: a PING on the
        subscriber's own connection is answered after every message the server
        had queued for it, and a server publishes a command's events before
        it replies (sessiond before the end of its loop's iteration)."""
        for conn in (self.theirs, self.ours):
            conn.send(b"PING")
        out: tuple[list[Node], list[Node]] = ([], [])
        for conn, got in zip((self.theirs, self.ours), out, strict=True):
            while is_event(node := conn.read()):
                got.append(node)
        return out


def events(heard: list[Node], ran: frozenset[str]) -> list[Node]:
    """The events of a step as they are compared: without ``expired``, nor
    ``keymiss`` if the step may have run ``SCAN ... TYPE`` (``ran``: its
    :func:`marks`)."""
    dropped = {b"expired", b"keymiss"} if "scan" in ran else {b"expired"}
    return [node for node in heard if told(node)[0] not in dropped]


def excused(
    theirs: list[Node],
    ours: list[Node],
    ran: frozenset[str],
    expiries: tuple[Counter[Node], Counter[Node]],
) -> list[Node]:
    """Redis' events of a step, where a step that set a 1 ms TTL has Redis
    tell ``del`` of a key and sessiond ``expire`` (the same key, channel kind
    and place), Redis' taken as sessiond's, and as the ``expired`` sessiond
    will tell: ``PEXPIRE`` reads Redis' clock twice, and if a millisecond
    turns in between, the deadline is already past and the key deleted."""
    if "soon" not in ran or len(theirs) != len(ours):
        return theirs
    out = []
    for t, o in zip(theirs, ours, strict=True):
        (event, key), (ours_event, ours_key) = told(t), told(o)
        keyspace = t[1][2][1].startswith(b"__keyspace")
        same_kind = keyspace == o[1][2][1].startswith(b"__keyspace")
        if same_kind and (event, ours_event, key) == (b"del", b"expire", ours_key):
            t = o
            channel, data = (b"__keyspace@0__:" + key, b"expired")
            if not keyspace:
                channel, data = (b"__keyevent@0__:expired", key)
            expiries[0][(("$", channel), ("$", data))] += 1
        out.append(t)
    return out


def count_expiries(counts: tuple[Counter[Node], Counter[Node]], *heard: list[Node]) -> None:
    """Add the ``expired`` events each server published to its count."""
    for count, nodes in zip(counts, heard, strict=True):
        count.update(n[1][2:] for n in nodes if told(n)[0] == b"expired")


def again(request: Request, scripts: list[Request]) -> Request:
    """``request``, an :class:`Again` made the EVALSHA it stands for."""
    if not request or not isinstance(request[0], Again):
        return request
    a = request[0]
    earlier = scripts[a.n % len(scripts)] if scripts else (b"EVAL", b"return 'never sent'", b"0")
    sha = Sha(a.n).of([earlier])
    name = b"EVALSHA_RO" if a.ro else b"EVALSHA"
    return (name, sha.upper() if a.upper else sha, *earlier[2:])


def concrete(arg: Arg, step: int, scripts: list[Request]) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, Sha | Body):
        return arg.of(scripts)
    assert not isinstance(arg, Again)
    return arg.at(step)


# ------------------------------------------------------------- servers


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def sessiond(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp(f"diff-{request.param}"), CONFIGS[request.param]).start()
    yield d
    d.stop()


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def sessions(
    request: pytest.FixtureRequest, sessiond: Daemon, redis_server: RedisServer
) -> Iterator[tuple[int, list[Session], Listener]]:
    conns = [
        Session(Conn(str(redis_server.socket_path)), Conn(str(sessiond.socket_path)))
        for _ in range(2)
    ]
    listener = Listener(Conn(str(redis_server.socket_path)), Conn(str(sessiond.socket_path)))
    listener.subscribe(request.param)
    yield request.param, conns, listener
    for s in [*conns, listener]:
        s.theirs.close()
        s.ours.close()
    with redis_server.client() as r:
        r.config_set("notify-keyspace-events", "")


def test_random_sequences_answer_as_redis_does(
    sessions: tuple[int, list[Session], Listener],
) -> None:
    protocol, conns, listener = sessions

    @settings(
        max_examples=EXAMPLES if protocol == 2 else EXAMPLES // 3,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(steps, notify_flags)
    def check(sequence: list[tuple[int, Request]], flags: bytes) -> None:
        for s in conns:
            for conn in (s.theirs, s.ours):
                assert conn(b"RESET") == ("+", b"RESET")
                if protocol == 3:
                    assert conn(b"HELLO", b"3")[0] == "%"
            s.queued, s.marks = None, frozenset()
        for command in [(b"FLUSHALL",), (b"SCRIPT", b"FLUSH")]:
            assert conns[0].theirs(*command) == conns[0].ours(*command) == ("+", b"OK")
        config = (b"CONFIG", b"SET", b"notify-keyspace-events", flags)
        assert conns[0].theirs(*config) == conns[0].ours(*config) == ("+", b"OK")
        listener.heard()  # anything the previous example left
        history: list[str] = []
        expiries: tuple[Counter[Node], Counter[Node]] = (Counter(), Counter())
        expired = False
        scripts: list[Request] = []  # the EVAL requests sent so far
        for step, (client, drawn) in enumerate(sequence):
            request = again(drawn, scripts)
            args = tuple(concrete(a, step, scripts) for a in request)
            name = args[0].upper()
            s = conns[client]
            if s.queued is not None and "soon" in s.marks and name not in (b"EXEC", b"DISCARD"):
                continue  # nothing after a 1 ms TTL in its transaction (the docstring)
            if name in (b"EVAL", b"EVAL_RO"):
                scripts.append(request)
            theirs = s.theirs(*args)
            ours = s.ours(*args)
            history.append(f"  [{client}] {args!r}\n      redis: {theirs!r}\n   sessiond: {ours!r}")
            assert s.normal(name, ours, expired) == s.normal(name, theirs, expired), "\n".join(
                history
            )
            ran = s.follow(name, theirs, marks(request, args, scripts))
            heard_theirs, heard_ours = listener.heard()
            count_expiries(expiries, heard_theirs, heard_ours)
            if heard_theirs or heard_ours:
                history.append(
                    f"      events ({flags.decode()}):"
                    f"\n      redis: {[told(n) for n in heard_theirs]}"
                    f"\n   sessiond: {[told(n) for n in heard_ours]}"
                )
            theirs_events = excused(
                events(heard_theirs, ran), events(heard_ours, ran), ran, expiries
            )
            assert events(heard_ours, ran) == theirs_events, "\n".join(history)
            # SET with a deadline already past leaves Redis a key it has not
            # noticed is expired yet.
            expired = expired or any(a.upper() in (b"EXAT", b"PXAT") for a in args)
            if "soon" in ran:
                time.sleep(0.005)
                expired = True
        if expired:
            # Every expiry is told once, by the end: a read of each key makes
            # Redis (and sessiond) tell those not told yet; sessiond's sweep
            # may be telling one just now.
            for conn in (conns[0].theirs, conns[0].ours):
                assert conn(b"RESET") == ("+", b"RESET")
                assert conn(b"EXISTS", *KEYS)[0] == ":"
            deadline = time.monotonic() + 5
            while True:
                count_expiries(expiries, *listener.heard())
                if expiries[0] == expiries[1] or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            assert expiries[1] == expiries[0], "\n".join(
                [*history, "expired: (redis, sessiond)", repr(expiries)]
            )

    check()
