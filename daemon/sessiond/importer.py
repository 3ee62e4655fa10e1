"""``sessiond import SOURCE``: copy the sessions of a Redis server into a running
sessiond, so that moving a fleet's sessions from Redis logs nobody out.

It is a client of both servers and nothing more: it walks the source with
``SCAN``, reads each key with its type's command and its remaining TTL
(``PTTL``), and writes it to the daemon named by the config (its socket and
password) through the socket, as any client would, in pipelined batches. What
sessiond holds (strings, hashes, sets) is copied; a key of another type is
reported and left out. A key with a TTL keeps the time it has left (written
with ``PX``); one without stays without (``PERSIST``: ``cache.default_ttl``
does not apply to a copy). A hash or a set is replaced whole, in a
``MULTI``/``EXEC`` of its own. Keys the source drops while the copy runs
(expired, deleted) are counted and skipped.

Nothing here knows the daemon's insides: the wire is RESP, read with hiredis.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

if TYPE_CHECKING:
    from .config import Config

# Keys read and written per round trip (each key is a few commands).
BATCH = 500
# Failures printed one by one; the rest are counted.
SHOWN_FAILURES = 10
COPIED_TYPES = (b"string", b"hash", b"set")


class CopyFailed(Exception):
    """A problem that stops the copy (a server that cannot be reached or
    refuses us): printed as one line, exit status 1."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a server listens and how to log in: a Unix socket path, or
    ``host``/``port``."""

    path: str | None = None
    host: str = "127.0.0.1"
    port: int = 6379
    password: str | None = None
    username: str | None = None
    db: int = 0

    def __str__(self) -> str:
        where = self.path if self.path is not None else f"{self.host}:{self.port}"
        return where if self.db == 0 else f"{where} (db {self.db})"


def parse_source(url: str) -> Endpoint:
    """``redis://[[user]:password@]host[:port][/db]`` or
    ``unix://[[user]:password@]/path[?db=N]``; without a password in it,
    ``REDISCLI_AUTH`` is used, as redis-cli does (a password in a command
    line is visible to every user of the machine)."""
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password is not None else None
    username = unquote(parts.username) if parts.username else None
    if password is None:
        password = os.environ.get("REDISCLI_AUTH") or None
    try:
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("no socket path")
            db = _db(parse_qs(parts.query).get("db", ["0"])[0])
            return Endpoint(path=parts.path, password=password, username=username, db=db)
        if parts.scheme == "redis":
            db_text = parts.path.strip("/")
            return Endpoint(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 6379,
                password=password,
                username=username,
                db=_db(db_text) if db_text else 0,
            )
    except ValueError as exc:
        raise CopyFailed(f"source {url!r}: {exc}") from None
    raise CopyFailed(
        f"source {url!r}: expected redis://host[:port][/db] or unix:///path/to.sock[?db=N]"
    )


def _db(text: str) -> int:
    """A database number from a source URL (``int()``'s own message would
    name neither the database nor what was wrong)."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"the database must be a number, got {text!r}") from None


def _failed(name: str, what: str, reply: hiredis.ReplyError) -> CopyFailed:
    """``what`` refused by ``name``'s server; a source that wants a password
    it was not given is told where one goes."""
    hint = ""
    if name == "source" and str(reply).startswith("NOAUTH"):
        hint = " (give its password in the URL or in REDISCLI_AUTH)"
    return CopyFailed(f"{name}: {what} failed: {reply}{hint}")


class Link:
    """One connection, used one pipeline at a time: every command of a batch
    sent in one write, then its replies read in order (errors come back as
    ``hiredis.ReplyError`` values, not raised)."""

    def __init__(self, endpoint: Endpoint, name: str, timeout: float = 30.0) -> None:
        self.name = name
        try:
            if endpoint.path is not None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(endpoint.path)
            else:
                self.sock = socket.create_connection((endpoint.host, endpoint.port), timeout)
        except OSError as exc:
            raise CopyFailed(f"{name} {endpoint}: {exc.strerror or exc}") from None
        self.reader = hiredis.Reader()
        if endpoint.password is not None:
            login = [b"AUTH", endpoint.password.encode()]
            if endpoint.username is not None:
                login.insert(1, endpoint.username.encode())
            self.expect_ok(login, "AUTH")
        if endpoint.db:
            self.expect_ok([b"SELECT", str(endpoint.db).encode()], "SELECT")

    def expect_ok(self, command: list[bytes], what: str) -> None:
        (reply,) = self.pipeline([command])
        if isinstance(reply, hiredis.ReplyError):
            raise _failed(self.name, what, reply)

    def pipeline(self, commands: Sequence[Sequence[bytes]]) -> list[Any]:
        out = bytearray()
        for args in commands:
            out += b"*%d\r\n" % len(args)
            for arg in args:
                out += b"$%d\r\n%b\r\n" % (len(arg), arg)
        try:
            self.sock.sendall(out)
            replies: list[Any] = []
            while len(replies) < len(commands):
                reply = self.reader.gets()
                if reply is False:
                    data = self.sock.recv(1 << 20)
                    if not data:
                        raise CopyFailed(f"{self.name} closed the connection")
                    self.reader.feed(data)
                    continue
                replies.append(reply)
        except OSError as exc:
            raise CopyFailed(f"{self.name}: {exc.strerror or exc}") from None
        except hiredis.ProtocolError as exc:
            raise CopyFailed(f"{self.name}: not the Redis protocol: {exc}") from None
        return replies

    def close(self) -> None:
        self.sock.close()


@dataclass
class Tally:
    copied: Counter[str] = field(default_factory=Counter)
    other_types: Counter[str] = field(default_factory=Counter)
    gone: int = 0
    failures: list[tuple[bytes, str]] = field(default_factory=list)

    def report(self, out: Any, err: Any) -> int:
        """Print what happened; the exit status (1 if a key was not copied)."""
        total = sum(self.copied.values())
        kinds = ", ".join(
            f"{n} {_PLURALS[kind] if n != 1 else kind}" for kind, n in sorted(self.copied.items())
        )
        copied = f"copied {total} key{'' if total == 1 else 's'}"
        print(copied + (f" ({kinds})" if kinds else ""), file=out)
        if self.gone:
            gone = "1 key was" if self.gone == 1 else f"{self.gone} keys were"
            print(f"{gone} expired or deleted on the source meanwhile", file=out)
        for key, problem in self.failures[:SHOWN_FAILURES]:
            print(f"not copied: {_show(key)}: {problem}", file=err)
        if len(self.failures) > SHOWN_FAILURES:
            print(f"... and {len(self.failures) - SHOWN_FAILURES} more not copied", file=err)
        if self.other_types:
            kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.other_types.items()))
            print(f"not copied, of types sessiond does not hold: {kinds}", file=err)
        return 1 if self.failures or self.other_types else 0


_PLURALS = {"string": "strings", "hash": "hashes", "set": "sets"}


def _show(key: bytes) -> str:
    text = repr(key)[2:-1]
    return text if len(text) <= 80 else text[:77] + "..."


def scan(source: Link, match: bytes) -> Iterator[list[bytes]]:
    """The source's keys, a SCAN page at a time, each key once. SCAN may
    return a key twice (a source that rehashes meanwhile): copying it again
    would be harmless, but counting it again made the summary claim more
    keys than the source holds. The keys seen are kept for the whole walk,
    about 100 bytes each with short keys (100 MB for a million sessions)."""
    seen: set[bytes] = set()
    cursor = b"0"
    while True:
        (reply,) = source.pipeline([[b"SCAN", cursor, b"MATCH", match, b"COUNT", b"1000"]])
        if isinstance(reply, hiredis.ReplyError):
            raise _failed("source", "SCAN", reply)
        cursor, keys = reply
        fresh = [key for key in dict.fromkeys(keys) if key not in seen]
        if fresh:
            seen.update(fresh)
            yield fresh
        if cursor == b"0":
            return


_READ = {b"string": b"GET", b"hash": b"HGETALL", b"set": b"SMEMBERS"}


def copy_batch(source: Link, target: Link, keys: list[bytes], tally: Tally, config: Config) -> None:
    """Copy ``keys`` into the daemon ``config`` describes: no request sent to
    it is larger than its limits.max_request_size (it closes the connection
    of a client that sends one), and no key with a part it would refuse is
    sent at all."""
    max_request = config.limits.max_request_size
    types = source.pipeline([[b"TYPE", key] for key in keys])
    wanted: list[tuple[bytes, bytes]] = []
    for key, kind in zip(keys, types, strict=True):
        if isinstance(kind, hiredis.ReplyError):
            tally.failures.append((key, f"source: {kind}"))
        elif kind == b"none":
            tally.gone += 1
        elif kind in COPIED_TYPES:
            wanted.append((key, kind))
        else:
            tally.other_types[kind.decode("utf-8", "replace")] += 1
    if not wanted:
        return
    reads: list[list[bytes]] = []
    for key, kind in wanted:
        reads += [[_READ[kind], key], [b"PTTL", key]]
    found = source.pipeline(reads)
    writes: list[list[bytes]] = []
    plans: list[tuple[bytes, bytes, int]] = []  # key, type, replies its writes take
    for i, (key, kind) in enumerate(wanted):
        value, ttl = found[2 * i], found[2 * i + 1]
        problem = next((r for r in (value, ttl) if isinstance(r, hiredis.ReplyError)), None)
        if problem is not None:  # the key changed type between TYPE and the read
            tally.failures.append((key, f"source: {problem}"))
            continue
        # PTTL 0: the key's deadline is this millisecond, it expires the next
        # (SET ... PX 0 is an error, PEXPIRE 0 a delete): gone.
        if value is None or value == [] or ttl == -2 or ttl == 0:
            tally.gone += 1
            continue
        refusal = _refused_part(key, kind, value, config)
        if refusal is not None:
            tally.failures.append((key, f"sessiond: {refusal}"))
            continue
        commands = _writes(key, kind, value, ttl, max_request)
        if commands is None:
            too_large = f"too large for one request (limits.max_request_size: {max_request} bytes)"
            tally.failures.append((key, f"sessiond: {too_large}"))
            continue
        writes += commands
        plans.append((key, kind, len(commands)))
    replies = target.pipeline(writes)
    at = 0
    for key, kind, n in plans:
        mine = replies[at : at + n]
        at += n
        problem = next((r for r in mine if isinstance(r, hiredis.ReplyError)), None)
        if problem is None and kind != b"string":
            # MULTI ... EXEC: QUEUED replies, then EXEC's own array of replies.
            done = mine[-1] if isinstance(mine[-1], list) else [hiredis.ReplyError("EXEC: nil")]
            problem = next((r for r in done if isinstance(r, hiredis.ReplyError)), None)
        if problem is not None:
            tally.failures.append((key, f"sessiond: {problem}"))
        else:
            tally.copied[kind.decode()] += 1


def _refused_part(key: bytes, kind: bytes, value: Any, config: Config) -> str | None:
    """Why the daemon would refuse ``key``: a key, value, field or member over
    limits.max_value_size or cache.max_memory, the bounds it checks each part
    against. Checked before anything is sent: a hash or set is replaced in a
    MULTI that deletes it first, and a refusal inside its EXEC would leave
    the key deleted (a copy from an earlier import gone)."""
    parts = [key, value] if kind == b"string" else [key, *value]
    largest = max(len(part) for part in parts)
    bounds = [("limits.max_value_size", config.limits.max_value_size)]
    if config.cache.max_memory:
        bounds.append(("cache.max_memory", config.cache.max_memory))
    for name, bound in bounds:
        if largest > bound:
            return f"a part of {largest} bytes exceeds {name} ({bound} bytes)"
    return None


def _size(args: Sequence[bytes]) -> int:
    """Bytes of ``args`` as one request on the wire, but its ``*<count>``
    header (:data:`_HEADER` bytes at most)."""
    return sum(len(b"$%d\r\n\r\n" % len(arg)) + len(arg) for arg in args)


_HEADER = len(b"*%d\r\n" % (1 << 62))


def _writes(
    key: bytes, kind: bytes, value: Any, ttl: int, max_request: int
) -> list[list[bytes]] | None:
    """What recreates ``key`` in sessiond, TTL included, in requests of at
    most ``max_request`` bytes: a hash or set takes as many HSET or SADD as
    it needs. ``None`` if a string, or one field or member, cannot fit."""
    keep = [b"PERSIST", key] if ttl < 0 else [b"PEXPIRE", key, str(ttl).encode()]
    room = max_request - _HEADER
    if kind == b"string":
        write = [b"SET", key, value] if ttl < 0 else [b"SET", key, value, b"PX", keep[2]]
        if _size(write) > room:
            return None
        return [write, keep] if ttl < 0 else [write]
    start = [b"HSET", key] if kind == b"hash" else [b"SADD", key]
    step = 2 if kind == b"hash" else 1  # HGETALL's replies: field, value, field...
    fills: list[list[bytes]] = []
    fill, used = list(start), _size(start)
    for i in range(0, len(value), step):
        item = value[i : i + step]
        size = _size(item)
        if used + size > room:
            if len(fill) == len(start):
                return None  # the one field or member alone is too large
            fills.append(fill)
            fill, used = list(start), _size(start)
            if used + size > room:
                return None
        fill += item
        used += size
    fills.append(fill)
    return [[b"MULTI"], [b"DEL", key], *fills, keep, [b"EXEC"]]


def _run_id(link: Link) -> bytes:
    """The server's ``run_id`` (INFO server; random per start, in Redis and
    sessiond alike), or ``b""`` if it gives none."""
    (reply,) = link.pipeline([[b"INFO", b"server"]])
    if isinstance(reply, bytes):
        for line in reply.splitlines():
            if line.startswith(b"run_id:"):
                return line[len(b"run_id:") :].strip()
    return b""


def run(source_url: str, config: Config, match: str) -> int:
    """Copy ``source_url``'s keys into the daemon ``config`` describes; the
    exit status."""
    tally = Tally()
    try:
        with contextlib.ExitStack() as links:
            source = Link(parse_source(source_url), "source")
            links.callback(source.close)
            daemon = Endpoint(path=str(config.socket.path), password=config.security.password)
            target = Link(daemon, "sessiond")
            links.callback(target.close)
            origin = _run_id(source)
            if origin and origin == _run_id(target):
                raise CopyFailed(f"the source is this daemon ({daemon.path}): nothing to copy")
            for page in scan(source, match.encode()):
                for start in range(0, len(page), BATCH):
                    batch = page[start : start + BATCH]
                    copy_batch(source, target, batch, tally, config)
    except CopyFailed as exc:
        tally.report(sys.stdout, sys.stderr)
        print(f"sessiond import: {exc}", file=sys.stderr)
        return 1
    return tally.report(sys.stdout, sys.stderr)
