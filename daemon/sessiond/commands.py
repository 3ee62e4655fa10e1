"""The command table: Redis command names -> handlers over the cache and store.

Every handler is a plain function ``handler(rt, client, args) -> reply`` (the
reply is a value :mod:`sessiond.protocol` encodes), so each can be tested with a
:class:`Runtime` and a :class:`Client` and no socket. A handler signals an error
reply by raising :class:`~sessiond.protocol.Error`.

Keys and values are ``bytes``. Sessions that are in the store but not in memory
are made visible to handlers before they run: the server awaits
:meth:`Runtime.prefetch` for the keys a command names (``CommandSpec.load``), so
handlers themselves never wait.
"""

from __future__ import annotations

import hmac
import itertools
import math
import os
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import REDIS_COMPAT_VERSION, __version__
from .cache import DEFAULT, Entry, SessionCache
from .config import Config, flatten
from .docs import doc_fields
from .protocol import OK, PONG, Error, Status, Verbatim
from .store import Store, TableCounts, scan_hash

Args = list[bytes]
Handler = Callable[["Runtime", "Client", Args], Any]

ERR_SYNTAX = "ERR syntax error"
ERR_NOT_INT = "ERR value is not an integer or out of range"
ERR_NOAUTH = "NOAUTH Authentication required."
ERR_WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."
MAX_INT64 = 2**63 - 1
MIN_INT64 = -(2**63)


# ------------------------------------------------------------------- state


class Client:
    """Per-connection state that commands read and change."""

    __slots__ = (
        "authenticated",
        "close_after_reply",
        "created_at",
        "fd",
        "id",
        "last_active",
        "last_command",
        "lib_name",
        "lib_ver",
        "multi",
        "multi_error",
        "name",
        "peer",
        "resp3",
    )

    _ids = itertools.count(1)

    def __init__(self, *, authenticated: bool, peer: str = "", fd: int = -1) -> None:
        self.id = next(Client._ids)
        self.authenticated = authenticated
        self.resp3 = False
        self.name: str | None = None
        self.lib_name = ""
        self.lib_ver = ""
        self.multi: list[tuple[CommandSpec, Args]] | None = None
        self.multi_error = False
        self.close_after_reply = False
        self.created_at = time.monotonic()
        self.last_active = self.created_at
        self.last_command = "NULL"
        self.peer = peer
        self.fd = fd

    def info_line(self, socket_path: str = "") -> str:
        """One CLIENT LIST line in Redis' format (a Unix-socket client's ``addr``
        is the socket path and port 0); the peer's credentials follow as
        ``peer-pid`` / ``peer-uid`` fields. No value may hold a space or ``=``:
        clients split the line on both."""
        now = time.monotonic()
        flags = "x" if self.multi is not None else "N"
        peer = "".join(f" peer-{field}" for field in self.peer.split(",") if "=" in field)
        return (
            f"id={self.id} addr={socket_path}:0 laddr={socket_path}:0 fd={self.fd} "
            f"name={self.name or ''} "
            f"age={int(now - self.created_at)} idle={int(now - self.last_active)} flags={flags} "
            f"db=0 sub=0 psub=0 ssub=0 multi={-1 if self.multi is None else len(self.multi)} "
            f"qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 "
            f"tot-mem=0 events=r cmd={self.last_command.lower()} user=default redir=-1 "
            f"resp={3 if self.resp3 else 2} lib-name={self.lib_name} lib-ver={self.lib_ver}"
            f"{peer}"
        )


@dataclass(slots=True)
class CommandSpec:
    """One command: handler, Redis arity, flags for COMMAND, and plain-integer
    call/error counters that metrics read at scrape time."""

    name: str
    handler: Handler
    arity: int
    flags: tuple[str, ...] = ()
    first_key: int = 0
    last_key: int = 0
    step: int = 0
    group: str = "generic"
    summary: str = ""
    load: Callable[[Args], list[bytes]] | None = None
    # A whole-table read that a request needs (DBSIZE, INFO keyspace, KEYS),
    # or None: the server awaits it off the event loop, then runs the handler
    # with its result (never None) in ``Runtime.ahead``. Not inside MULTI
    # (run in place).
    ahead: Callable[[Runtime, Args], Awaitable[Any] | None] | None = None
    write: bool = False
    calls: int = 0
    errors: int = 0

    def keys(self, args: Args) -> list[bytes]:
        if self.first_key == 0:
            return []
        last = self.last_key if self.last_key > 0 else len(args) + self.last_key
        return args[self.first_key : last + 1 : self.step]


@dataclass
class ServerStats:
    """Connection-level plain counters; the server bumps them, metrics read them."""

    connections_total: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    unknown_commands: int = 0
    unknown_command_errors: int = 0


class Runtime:
    """What handlers run against: the cache, the store, the effective config and
    the server's view of its clients."""

    def __init__(
        self, config: Config, cache: SessionCache[bytes, bytes], store: Store | None = None
    ) -> None:
        self.config = config
        self.cache = cache
        self.store = store
        self.clients: dict[int, Client] = {}
        self.stats = ServerStats()
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        # Store entries fetched for inspection commands; cleared after each command.
        self.peeked: dict[bytes, Entry[bytes] | None] = {}
        # What CommandSpec.ahead read for the running command, else None.
        self.ahead: Any = None
        self.apply_config(config)

    def apply_config(self, config: Config) -> None:
        self.config = config
        self.max_value_size = config.limits.max_value_size
        self.password = config.security.password

    # ------------------------------------------------------------ lookups

    def lookup(self, key: bytes) -> Entry[bytes] | None:
        """An access: the live entry or ``None``; renews LRU and sliding TTL. A
        session the server fetched from the store for this command is admitted
        to memory here (read-through)."""
        entry = self.cache.get_entry(key)
        if entry is None and self.peeked:
            stored = self.peeked.pop(key, None)
            if stored is not None:
                entry = self.cache.admit(key, stored)
                if entry is None and (stored.deadline is None or stored.deadline > time.time()):
                    # Live, but larger than cache.max_memory: admitting it evicted
                    # it again (back to the store). Serve this read from that copy.
                    entry = stored
        return entry

    def peek(self, key: bytes) -> Entry[bytes] | None:
        """An inspection: the live entry in memory or, failing that, the store's
        copy fetched for this command; touches nothing."""
        entry = self.cache.peek(key)
        if entry is None and self.peeked:
            entry = self.peeked.get(key)
            if entry is not None and entry.deadline is not None and entry.deadline <= time.time():
                return None
        return entry

    def check_size(self, data: bytes) -> None:
        if len(data) > self.max_value_size:
            raise Error(
                f"ERR value of {len(data)} bytes exceeds limits.max_value_size "
                f"({self.max_value_size} bytes)"
            )
        # A session larger than the whole memory bound would be evicted as soon as
        # it is written: refuse it rather than acknowledge a write no GET can see.
        if self.cache.max_memory and len(data) > self.cache.max_memory:
            raise Error(
                f"ERR value of {len(data)} bytes exceeds cache.max_memory "
                f"({self.cache.max_memory} bytes)"
            )

    def dbsize(self) -> int:
        if self.store is not None:
            return self.store.keyspace(self.cache, self.ahead)[0]
        return len(self.cache)


# ---------------------------------------------------------------- helpers


_INT64 = re.compile(rb"(?:0|-?[1-9][0-9]{0,18})\Z")


def parse_int64(data: bytes) -> int | None:
    """``data`` as Redis' ``string2ll`` reads a 64-bit integer: optional ``-``,
    no ``+``, spaces, underscores or leading zeros; ``None`` if it is not one."""
    if _INT64.match(data) is None:
        return None
    value = int(data)
    return value if MIN_INT64 <= value <= MAX_INT64 else None


def _int(arg: bytes, message: str = ERR_NOT_INT) -> int:
    value = parse_int64(arg)
    if value is None:
        raise Error(message)
    return value


def _upper(arg: bytes) -> bytes:
    return arg.upper()


def _text(arg: bytes) -> str:
    return arg.decode("utf-8", "replace")


def _syntax() -> Error:
    return Error(ERR_SYNTAX)


def _expire_error(cmd: str) -> Error:
    return Error(f"ERR invalid expire time in '{cmd}' command")


_EXPIRY_UNITS = (b"EX", b"PX", b"EXAT", b"PXAT")


def _deadline_from(
    unit: bytes, amount: int, now: float, cmd: str
) -> tuple[float | None, float | None]:
    """(relative ttl, absolute deadline) for EX/PX/EXAT/PXAT with Redis' checks:
    positive, and in milliseconds (plus now, if relative) within 64 bits."""
    if amount <= 0:
        raise _expire_error(cmd)
    if unit == b"EX":
        if amount > (MAX_INT64 - int(now * 1000)) // 1000:
            raise _expire_error(cmd)
        return float(amount), None
    if unit == b"PX":
        if amount > MAX_INT64 - int(now * 1000):
            raise _expire_error(cmd)
        return amount / 1000.0, None
    if unit == b"EXAT":
        if amount > MAX_INT64 // 1000:
            raise _expire_error(cmd)
        return None, float(amount)
    return None, amount / 1000.0


def _glob_atoms(pattern: bytes) -> list[bytes | None]:
    """Redis' ``stringmatchlen`` pattern as a list of one-byte regex atoms, with
    ``None`` for a ``*``. Read exactly as Redis reads it: ``\\x`` is a literal,
    a class may be negated with ``^``, hold ranges (``z-a`` is ``a-z``) and
    escapes, and an unterminated ``[`` runs to the end of the pattern."""
    atoms: list[bytes | None] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 0x2A:  # '*'
            if not atoms or atoms[-1] is not None:
                atoms.append(None)
        elif c == 0x3F:  # '?'
            atoms.append(b".")
        elif c == 0x5B:  # '['
            i += 1
            negate = i < n and pattern[i] == 0x5E  # '^'
            if negate:
                i += 1
            ranges: list[tuple[int, int]] = []
            while True:
                left = n - i
                if left == 0:
                    i -= 1  # unterminated: the class ends with the pattern
                    break
                if left >= 2 and pattern[i] == 0x5C:  # '\'
                    i += 1
                    ranges.append((pattern[i], pattern[i]))
                elif pattern[i] == 0x5D:  # ']'
                    break
                elif left >= 3 and pattern[i + 1] == 0x2D:  # 'x-y'
                    lo, hi = sorted((pattern[i], pattern[i + 2]))
                    ranges.append((lo, hi))
                    i += 2
                else:
                    ranges.append((pattern[i], pattern[i]))
                i += 1
            body = b"".join(b"\\x%02x-\\x%02x" % r for r in ranges)
            if body:
                atoms.append(b"[" + (b"^" if negate else b"") + body + b"]")
            else:
                atoms.append(b"." if negate else b"(?!)")
        else:
            if c == 0x5C and i + 1 < n:  # '\x'
                i += 1
            atoms.append(b"\\x%02x" % pattern[i])
        i += 1
    return atoms


def glob_to_regex(pattern: bytes) -> re.Pattern[bytes]:
    """A Redis glob (``*``, ``?``, ``[abc]``, ``[^a]``, ``[a-z]``, ``\\x``) as a
    regex that matches the whole key. Between two stars every part has a fixed
    length, so the first place it fits is the best one: each is matched in an
    atomic group, and matching takes linear time however many stars there are
    (a plain translation backtracks exponentially: ``*a*a*a*a*a*a*a*b``)."""
    segments: list[list[bytes]] = [[]]
    for atom in _glob_atoms(pattern):
        if atom is None:
            segments.append([])
        else:
            segments[-1].append(atom)
    texts = [b"".join(segment) for segment in segments]
    regex = texts[0]
    if len(texts) > 1:
        regex += b"".join(b"(?>.*?" + text + b")" for text in texts[1:-1])
        regex += b".*" + texts[-1]
    return re.compile(regex + b"\\Z", re.DOTALL)


# ------------------------------------------------------------- connection


def cmd_ping(rt: Runtime, client: Client, args: Args) -> Any:
    if len(args) > 2:
        raise Error("ERR wrong number of arguments for 'ping' command")
    return PONG if len(args) == 1 else args[1]


def cmd_echo(rt: Runtime, client: Client, args: Args) -> Any:
    return args[1]


def cmd_quit(rt: Runtime, client: Client, args: Args) -> Any:
    client.close_after_reply = True
    return OK


def _check_password(rt: Runtime, user: bytes, password: bytes) -> None:
    """Only the ``default`` user exists; with no password set it accepts any
    password, as Redis' ``nopass`` default user does."""
    if user != b"default":
        raise Error(ERR_WRONGPASS)
    if rt.password is not None and not hmac.compare_digest(password, rt.password.encode()):
        raise Error(ERR_WRONGPASS)


def cmd_auth(rt: Runtime, client: Client, args: Args) -> Any:
    if len(args) == 2:
        if rt.password is None:
            raise Error(
                "ERR AUTH <password> called without any password configured for the default "
                "user. Are you sure your configuration is correct?"
            )
        user, password = b"default", args[1]
    elif len(args) == 3:
        user, password = args[1], args[2]
    else:
        raise _syntax()
    _check_password(rt, user, password)
    client.authenticated = True
    return OK


def cmd_hello(rt: Runtime, client: Client, args: Args) -> Any:
    resp3 = client.resp3
    i = 1
    if len(args) > 1:
        try:
            version = int(args[1])
        except ValueError:
            raise Error("ERR Protocol version is not an integer or out of range") from None
        if version not in (2, 3):
            raise Error("NOPROTO unsupported protocol version")
        resp3 = version == 3
        i = 2
    name: str | None = None
    while i < len(args):
        opt = args[i].upper()
        if opt == b"AUTH" and i + 2 < len(args):
            _check_password(rt, args[i + 1], args[i + 2])
            client.authenticated = True
            i += 3
        elif opt == b"SETNAME" and i + 1 < len(args):
            name = _client_name(args[i + 1])
            i += 2
        else:
            raise Error(f"ERR Syntax error in HELLO option '{_text(args[i])}'")
    if not client.authenticated:
        raise Error("NOAUTH HELLO must be called with the client already authenticated, "
                    "otherwise the HELLO <proto> AUTH <user> <pass> option can be used to "
                    "authenticate the client and select the RESP protocol version at the same "
                    "time")  # fmt: skip
    if name is not None:
        client.name = name or None
    client.resp3 = resp3
    return {
        "server": "redis",
        "version": REDIS_COMPAT_VERSION,
        "sessiond_version": __version__,
        "proto": 3 if resp3 else 2,
        "id": client.id,
        "mode": "standalone",
        "role": "master",
        "modules": [],
    }


def cmd_reset(rt: Runtime, client: Client, args: Args) -> Any:
    client.multi = None
    client.multi_error = False
    client.resp3 = False
    client.name = None
    client.authenticated = rt.password is None
    return Status("RESET")


def cmd_select(rt: Runtime, client: Client, args: Args) -> Any:
    index = _int(args[1])
    if index != 0:
        raise Error("ERR DB index is out of range")
    return OK


def _client_name(arg: bytes) -> str:
    if any(c <= 32 or c > 126 for c in arg):
        raise Error("ERR Client names cannot contain spaces, newlines or special characters.")
    return _text(arg)


def cmd_client(rt: Runtime, client: Client, args: Args) -> Any:
    sub = args[1].upper()
    if sub == b"SETNAME" and len(args) == 3:
        client.name = _client_name(args[2]) or None
        return OK
    if sub == b"GETNAME" and len(args) == 2:
        return None if client.name is None else client.name.encode()
    if sub == b"ID" and len(args) == 2:
        return client.id
    if sub == b"SETINFO" and len(args) == 4:
        attr = args[2].upper()
        if attr not in (b"LIB-NAME", b"LIB-VER"):
            raise Error(f"ERR Unrecognized option '{_text(args[2])}'")
        if any(c <= 32 or c > 126 for c in args[3]):
            raise Error(
                f"ERR {_text(args[2])} cannot contain spaces, newlines or special characters."
            )
        if attr == b"LIB-NAME":
            client.lib_name = _text(args[3])
        else:
            client.lib_ver = _text(args[3])
        return OK
    if sub == b"INFO" and len(args) == 2:
        return Verbatim(client.info_line(str(rt.config.socket.path)) + "\n")
    if sub == b"LIST":
        ids: set[int] | None = None
        if len(args) >= 4 and args[2].upper() == b"ID":
            ids = {_int(a) for a in args[3:]}
        elif len(args) == 4 and args[2].upper() == b"TYPE":
            if args[3].lower() not in (b"normal",):
                return Verbatim("")
        elif len(args) != 2:
            raise _syntax()
        path = str(rt.config.socket.path)
        lines = [
            c.info_line(path) + "\n" for c in rt.clients.values() if ids is None or c.id in ids
        ]
        return Verbatim("".join(lines))
    if sub == b"NO-EVICT" or sub == b"NO-TOUCH":
        return OK
    raise Error(
        f"ERR unknown subcommand or wrong number of arguments for '{_text(args[1])}'. "
        "Try CLIENT HELP."
    )


def cmd_time(rt: Runtime, client: Client, args: Args) -> Any:
    now = time.time()
    seconds = int(now)
    return [str(seconds).encode(), str(int((now - seconds) * 1_000_000)).encode()]


def cmd_dbsize(rt: Runtime, client: Client, args: Args) -> Any:
    return rt.dbsize()


def cmd_flushdb(rt: Runtime, client: Client, args: Args) -> Any:
    if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
        raise _syntax()
    rt.cache.clear()
    if rt.store is not None:
        rt.store.clear()
    return OK


def cmd_config(rt: Runtime, client: Client, args: Args) -> Any:
    sub = args[1].upper()
    if sub == b"GET" and len(args) >= 3:
        flat = {**flatten(rt.config), **_redis_config(rt)}
        out: dict[str, Any] = {}
        for pattern in args[2:]:
            rx = glob_to_regex(pattern.lower())
            for key, value in flat.items():
                if rx.match(key.encode()):
                    out[key] = _config_value(value)
        return out
    if sub == b"SET":
        raise Error("ERR CONFIG SET is not supported: edit the config file, sessiond reloads it")
    if sub == b"RESETSTAT" and len(args) == 2:
        return OK
    raise Error(
        f"ERR unknown subcommand or wrong number of arguments for '{_text(args[1])}'. "
        "Try CONFIG HELP."
    )


def _redis_config(rt: Runtime) -> dict[str, Any]:
    """Redis' own names for the settings tools such as redis-benchmark ask for."""
    config = rt.config
    return {
        "save": "",
        "appendonly": "no",
        "databases": 1,
        "maxclients": config.limits.max_clients,
        "maxmemory": config.cache.max_memory,
        "maxmemory-policy": "allkeys-lru",
        "timeout": int(config.limits.client_idle_timeout),
        "proto-max-bulk-len": config.limits.max_value_size,
        "client-query-buffer-limit": config.limits.max_request_size,
    }


def _config_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


# ---------------------------------------------------------------- strings


def cmd_get(rt: Runtime, client: Client, args: Args) -> Any:
    entry = rt.lookup(args[1])
    return None if entry is None else entry.value


def cmd_set(rt: Runtime, client: Client, args: Args) -> Any:
    key, value = args[1], args[2]
    rt.check_size(key)
    rt.check_size(value)
    if len(args) == 3:
        rt.cache.insert(key, value)
        return OK
    nx = xx = get = keep = False
    ttl: float | None = None
    deadline: float | None = None
    # As in Redis: an option may repeat (the last amount counts) but not be
    # combined with a conflicting one; the amount is checked after parsing.
    expiry: bytes | None = None
    amount = b""
    i = 3
    while i < len(args):
        opt = args[i].upper()
        if opt == b"NX" and not xx:
            nx = True
        elif opt == b"XX" and not nx:
            xx = True
        elif opt == b"GET":
            get = True
        elif opt == b"KEEPTTL" and expiry in (None, opt):
            keep = True
            expiry = opt
        elif opt in _EXPIRY_UNITS and expiry in (None, opt) and i + 1 < len(args):
            expiry = opt
            i += 1
            amount = args[i]
        else:
            raise _syntax()
        i += 1
    if expiry is not None and not keep:
        ttl, deadline = _deadline_from(expiry, _int(amount), time.time(), "set")
    old = rt.lookup(key) if (nx or xx or get or keep) else None
    if get and old is not None and not isinstance(old.value, bytes):
        raise Error("WRONGTYPE Operation against a key holding the wrong kind of value")
    old_value = None if old is None else old.value
    if (nx and old is not None) or (xx and old is None):
        return old_value if get else None
    if expiry is None or keep:
        rt.cache.insert(key, value, keep_ttl=keep)
    elif deadline is not None:
        rt.cache.insert(key, value, deadline=deadline)
    else:
        rt.cache.insert(key, value, ttl)
    return old_value if get else OK


def cmd_setex(rt: Runtime, client: Client, args: Args) -> Any:
    unit = b"EX" if args[0].upper() == b"SETEX" else b"PX"
    rt.check_size(args[1])
    rt.check_size(args[3])
    ttl, _ = _deadline_from(unit, _int(args[2]), time.time(), _text(args[0]).lower())
    rt.cache.insert(args[1], args[3], ttl)
    return OK


def cmd_setnx(rt: Runtime, client: Client, args: Args) -> Any:
    rt.check_size(args[1])
    rt.check_size(args[2])
    if rt.lookup(args[1]) is not None:
        return 0
    rt.cache.insert(args[1], args[2])
    return 1


def cmd_getdel(rt: Runtime, client: Client, args: Args) -> Any:
    entry = rt.lookup(args[1])
    rt.cache.remove(args[1])
    return None if entry is None else entry.value


def cmd_getex(rt: Runtime, client: Client, args: Args) -> Any:
    key = args[1]
    opt = args[2].upper() if len(args) > 2 else b""
    ttl = deadline = None
    # Options are checked before the key is touched, as Redis does.
    if opt in _EXPIRY_UNITS and len(args) == 4:
        ttl, deadline = _deadline_from(opt, _int(args[3]), time.time(), "getex")
    elif len(args) > 2 and not (opt == b"PERSIST" and len(args) == 3):
        raise _syntax()
    entry = rt.lookup(key)
    if entry is None:
        return None
    value = entry.value
    if opt == b"PERSIST":
        rt.cache.persist(key)
    elif deadline is not None:
        rt.cache.set_deadline(key, deadline)
    elif ttl is not None:
        rt.cache.set_ttl(key, ttl)
    return value


def cmd_mget(rt: Runtime, client: Client, args: Args) -> Any:
    get = rt.lookup
    out: list[bytes | None] = []
    for key in args[1:]:
        entry = get(key)
        out.append(None if entry is None else entry.value)
    return out


def cmd_mset(rt: Runtime, client: Client, args: Args) -> Any:
    if len(args) % 2 == 0:
        raise Error("ERR wrong number of arguments for 'mset' command")
    for i in range(1, len(args), 2):
        rt.check_size(args[i])
        rt.check_size(args[i + 1])
    for i in range(1, len(args), 2):
        rt.cache.insert(args[i], args[i + 1])
    return OK


def cmd_del(rt: Runtime, client: Client, args: Args) -> Any:
    removed = 0
    for key in args[1:]:
        existed = rt.peek(key) is not None
        rt.cache.remove(key)
        removed += existed
    return removed


def cmd_exists(rt: Runtime, client: Client, args: Args) -> Any:
    return sum(1 for key in args[1:] if rt.peek(key) is not None)


def cmd_touch(rt: Runtime, client: Client, args: Args) -> Any:
    return sum(1 for key in args[1:] if rt.lookup(key) is not None)


def cmd_type(rt: Runtime, client: Client, args: Args) -> Any:
    return Status("none" if rt.peek(args[1]) is None else "string")


def cmd_strlen(rt: Runtime, client: Client, args: Args) -> Any:
    entry = rt.peek(args[1])
    return 0 if entry is None else len(entry.value)


def _incr_by(rt: Runtime, key: bytes, delta: int) -> int:
    entry = rt.lookup(key)
    current = 0
    if entry is not None:
        parsed = parse_int64(entry.value)
        if parsed is None:
            raise Error(ERR_NOT_INT)
        current = parsed
    result = current + delta
    if not MIN_INT64 <= result <= MAX_INT64:
        raise Error("ERR increment or decrement would overflow")
    encoded = str(result).encode()
    if entry is None:
        rt.cache.insert(key, encoded)
    else:
        rt.cache.update(key, lambda _old: encoded)
    return result


def cmd_incr(rt: Runtime, client: Client, args: Args) -> Any:
    return _incr_by(rt, args[1], 1)


def cmd_decr(rt: Runtime, client: Client, args: Args) -> Any:
    return _incr_by(rt, args[1], -1)


def cmd_incrby(rt: Runtime, client: Client, args: Args) -> Any:
    return _incr_by(rt, args[1], _int(args[2]))


def cmd_decrby(rt: Runtime, client: Client, args: Args) -> Any:
    delta = _int(args[2])
    if delta == MIN_INT64:
        raise Error("ERR decrement would overflow")
    return _incr_by(rt, args[1], -delta)


# ----------------------------------------------------------------- expiry


def _expire_common(rt: Runtime, args: Args, *, ms: bool, absolute: bool) -> int:
    key = args[1]
    flags: set[bytes] = set()
    for arg in args[3:]:
        opt = arg.upper()
        if opt not in (b"NX", b"XX", b"GT", b"LT"):
            raise Error(f"ERR Unsupported option {_text(arg)}")
        flags.add(opt)
    if b"NX" in flags and len(flags) > 1:
        raise Error("ERR NX and XX, GT or LT options at the same time are not compatible")
    if b"GT" in flags and b"LT" in flags:
        raise Error("ERR GT and LT options at the same time are not compatible")
    amount = _int(args[2])
    now = time.time()
    # Redis' overflow checks: seconds * 1000, plus now if relative, in 64 bits.
    if not ms and abs(amount) > MAX_INT64 // 1000:
        raise _expire_error(_text(args[0]).lower())
    if not absolute and (amount if ms else amount * 1000) > MAX_INT64 - int(now * 1000):
        raise _expire_error(_text(args[0]).lower())
    seconds = amount / 1000.0 if ms else float(amount)
    new_deadline = seconds if absolute else now + seconds
    # NX/XX/GT/LT compare with the deadline as it was, not as this access
    # (which slides it) would leave it.
    before = rt.peek(key)
    current = None if before is None else before.deadline
    entry = rt.lookup(key)
    if entry is None:
        return 0
    if b"NX" in flags and current is not None:
        return 0
    if b"XX" in flags and current is None:
        return 0
    if b"GT" in flags and (current is None or new_deadline <= current):
        return 0
    if b"LT" in flags and current is not None and new_deadline >= current:
        return 0
    if new_deadline <= now:
        rt.cache.remove(key)
        return 1
    if absolute:
        rt.cache.set_deadline(key, new_deadline)
    else:
        rt.cache.set_ttl(key, seconds)
    return 1


def cmd_expire(rt: Runtime, client: Client, args: Args) -> Any:
    return _expire_common(rt, args, ms=False, absolute=False)


def cmd_pexpire(rt: Runtime, client: Client, args: Args) -> Any:
    return _expire_common(rt, args, ms=True, absolute=False)


def cmd_expireat(rt: Runtime, client: Client, args: Args) -> Any:
    return _expire_common(rt, args, ms=False, absolute=True)


def cmd_pexpireat(rt: Runtime, client: Client, args: Args) -> Any:
    return _expire_common(rt, args, ms=True, absolute=True)


def _remaining_ms(rt: Runtime, key: bytes) -> int:
    entry = rt.peek(key)
    if entry is None:
        return -2
    if entry.deadline is None:
        return -1
    return max(0, round((entry.deadline - time.time()) * 1000))


def cmd_ttl(rt: Runtime, client: Client, args: Args) -> Any:
    ms = _remaining_ms(rt, args[1])
    return ms if ms < 0 else (ms + 500) // 1000


def cmd_pttl(rt: Runtime, client: Client, args: Args) -> Any:
    return _remaining_ms(rt, args[1])


def _expiretime(rt: Runtime, key: bytes) -> float | int:
    entry = rt.peek(key)
    if entry is None:
        return -2
    if entry.deadline is None:
        return -1
    return entry.deadline


def cmd_expiretime(rt: Runtime, client: Client, args: Args) -> Any:
    value = _expiretime(rt, args[1])
    return value if isinstance(value, int) else int(value)


def cmd_pexpiretime(rt: Runtime, client: Client, args: Args) -> Any:
    value = _expiretime(rt, args[1])
    return value if isinstance(value, int) else int(value * 1000)


def cmd_persist(rt: Runtime, client: Client, args: Args) -> Any:
    return int(rt.lookup(args[1]) is not None and rt.cache.persist(args[1]))


# --------------------------------------------------------------- keyspace


def _options(args: Args, start: int) -> Iterator[tuple[bytes, bytes]]:
    """``(NAME, value)`` pairs of trailing ``NAME value`` options; a name
    without its value is a syntax error."""
    if (len(args) - start) % 2:
        raise _syntax()
    for i in range(start, len(args), 2):
        yield args[i].upper(), args[i + 1]


def _scan_options(args: Args, start: int) -> tuple[int, re.Pattern[bytes] | None, bytes | None]:
    count = 10
    pattern: re.Pattern[bytes] | None = None
    type_name: bytes | None = None
    for opt, value in _options(args, start):
        if opt == b"COUNT":
            count = _int(value)
            if count < 1:
                raise _syntax()
        elif opt == b"MATCH":
            pattern = None if value == b"*" else glob_to_regex(value)
        elif opt == b"TYPE":
            type_name = value.lower()
        else:
            raise _syntax()
    return count, pattern, type_name


def cmd_scan(rt: Runtime, client: Client, args: Args) -> Any:
    try:
        cursor = int(args[1])
    except ValueError:
        raise Error("ERR invalid cursor") from None
    if cursor < 0:
        raise Error("ERR invalid cursor")
    count, pattern, type_name = _scan_options(args, 2)
    if type_name is not None and type_name != b"string":
        return [b"0", []]
    if rt.store is not None:
        keys, next_cursor = rt.store.scan(cursor, count, memory=rt.cache)
    else:
        keys, next_cursor = scan_memory(rt.cache, cursor, count)
    if pattern is not None:
        keys = [k for k in keys if pattern.match(k)]
    return [str(next_cursor).encode(), keys]


def scan_memory(
    cache: SessionCache[bytes, bytes], cursor: int, count: int
) -> tuple[list[bytes], int]:
    """One SCAN step over memory in stable hash order: every key present for the
    whole iteration is returned exactly once, however LRU order changes."""
    now = time.time()
    candidates = sorted(
        (h, key)
        for key, entry in cache._data.items()
        if (h := scan_hash(key)) >= cursor and (entry.deadline is None or entry.deadline > now)
    )
    return take_hash_groups(candidates, count)


def take_hash_groups(candidates: list[tuple[int, bytes]], count: int) -> tuple[list[bytes], int]:
    """At least ``count`` keys from sorted ``(hash, key)`` pairs, never splitting
    a group of equal hashes; the next cursor (0 when done)."""
    if len(candidates) <= count:
        return [k for _, k in candidates], 0
    end = count
    last_hash = candidates[end - 1][0]
    while end < len(candidates) and candidates[end][0] == last_hash:
        end += 1
    if end == len(candidates):
        return [k for _, k in candidates], 0
    return [k for _, k in candidates[:end]], last_hash + 1


def _keys_pattern(arg: bytes) -> re.Pattern[bytes] | None:
    return None if arg == b"*" else glob_to_regex(arg)


def cmd_keys(rt: Runtime, client: Client, args: Args) -> Any:
    if rt.ahead is not None:
        return rt.ahead  # listed and matched off the event loop
    pattern = _keys_pattern(args[1])
    if rt.store is not None:
        keys = rt.store.all_keys(memory=rt.cache)
    else:
        keys = [key for key, _ in rt.cache.items()]
    return keys if pattern is None else [k for k in keys if pattern.match(k)]


def _list_keys_ahead(rt: Runtime, args: Args) -> Awaitable[list[bytes]] | None:
    if rt.store is None or len(args) != 2:
        return None
    return rt.store.list_keys(rt.cache, _keys_pattern(args[1]))


# ---------------------------------------------------------------- sessions


def cmd_session_create(rt: Runtime, client: Client, args: Args) -> Any:
    context: str | None = None
    ttl: float | None = None
    state = b""
    for opt, value in _options(args, 1):
        if opt == b"CONTEXT":
            context = _text(value)
        elif opt == b"TTL":
            seconds = _int(value)
            if seconds < 0:
                raise _expire_error("session.create")
            ttl = float(seconds)  # 0: never expires
        elif opt == b"STATE":
            rt.check_size(value)
            state = value
        else:
            raise _syntax()
    session_id = secrets.token_urlsafe(24).encode()
    rt.cache.insert(session_id, state, DEFAULT if ttl is None else ttl, context_id=context)
    return session_id


def cmd_session_info(rt: Runtime, client: Client, args: Args) -> Any:
    key = args[1]
    entry = rt.cache.peek(key)
    where = "memory"
    if entry is None:
        entry = rt.peek(key)
        where = "store"
    if entry is None:
        return None
    now = time.time()
    remaining = entry.remaining(now)
    return {
        "context": entry.context_id or "",
        "created_at": entry.created_at,
        "updated_at": entry.updated_at,
        "ttl": -1 if remaining is None else math.ceil(remaining),
        "idle": max(0.0, now - entry.accessed_at),
        "size": len(entry.value),
        "where": where,
    }


def cmd_session_invalidate(rt: Runtime, client: Client, args: Args) -> Any:
    return int(rt.cache.invalidate(args[1]))


def cmd_session_list(rt: Runtime, client: Client, args: Args) -> Any:
    context: str | None = None
    count: int | None = None
    for opt, value in _options(args, 1):
        if opt == b"CONTEXT":
            context = _text(value)
        elif opt == b"COUNT":
            count = _int(value)
            if count < 0:
                raise _syntax()
        else:
            raise _syntax()
    return rt.cache.list(context_id=context, count=count)


# ------------------------------------------------------------------- INFO


def total_commands(rt: Runtime) -> int:
    """Commands run so far, summed at read time (nothing extra per command)."""
    return sum(spec.calls for spec in COMMANDS.values()) + rt.stats.unknown_commands


# INFO arguments that mean every section.
_EVERY_SECTION = frozenset({"default", "all", "everything"})


def info_text(rt: Runtime, section: bytes | None) -> str:
    cache = rt.cache
    stats = rt.stats
    uptime = int(time.monotonic() - rt.started_monotonic)
    sections: dict[str, list[tuple[str, Any]]] = {
        "server": [
            ("redis_version", REDIS_COMPAT_VERSION),
            ("sessiond_version", __version__),
            ("redis_mode", "standalone"),
            ("os", f"{os.uname().sysname} {os.uname().release} {os.uname().machine}"),
            ("arch_bits", 64 if sys.maxsize > 2**32 else 32),
            ("python_version", sys.version.split()[0]),
            ("process_id", os.getpid()),
            ("uptime_in_seconds", uptime),
            ("uptime_in_days", uptime // 86400),
            ("unix_socket", str(rt.config.socket.path)),
            ("config_file", rt.config.source),
        ],
        "clients": [
            ("connected_clients", len(rt.clients)),
            ("maxclients", rt.config.limits.max_clients),
            ("blocked_clients", 0),
        ],
        "memory": [
            ("used_memory", cache.memory),
            ("maxmemory", cache.max_memory),
            ("maxmemory_policy", "allkeys-lru"),
            ("max_sessions", cache.max_sessions),
        ],
        "persistence": [
            ("loading", 0),
            ("backend", rt.config.persistence.backend if rt.store is not None else "none"),
            ("durability", rt.config.persistence.durability),
            ("warm_start_sessions", rt.store.warmed if rt.store is not None else 0),
        ],
        "stats": [
            ("total_connections_received", stats.connections_total),
            ("total_commands_processed", total_commands(rt)),
            ("rejected_connections", sum(stats.rejected.values())),
            ("expired_keys", cache.expirations),
            ("evicted_keys", cache.evictions_max_sessions + cache.evictions_max_memory),
            ("keyspace_hits", cache.hits),
            ("keyspace_misses", cache.misses),
            ("store_loads_found", cache.loads_found),
            ("store_loads_absent", cache.loads_absent),
        ],
        "replication": [("role", "master"), ("connected_slaves", 0)],
        "cpu": [
            ("used_cpu_sys", round(os.times().system, 6)),
            ("used_cpu_user", round(os.times().user, 6)),
        ],
        "keyspace": [],
    }
    wanted: Iterable[str]
    name = None if section is None else section.decode("utf-8", "replace").lower()
    if name is None or name in _EVERY_SECTION:
        wanted = sections
    else:
        wanted = [name] if name in sections else []
    if "keyspace" in wanted:  # a whole-keyspace scan: only when asked for
        if rt.store is not None:
            keys, expires = rt.store.keyspace(cache, rt.ahead)
        else:
            keys = len(cache)
            expires = cache.expiring
        if keys:
            sections["keyspace"].append(("db0", f"keys={keys},expires={expires},avg_ttl=0"))
    parts = []
    for title in wanted:
        heading = "CPU" if title == "cpu" else title.capitalize()
        lines = [f"# {heading}"] + [f"{k}:{v}" for k, v in sections[title]]
        parts.append("\r\n".join(lines) + "\r\n")
    return "\r\n".join(parts)


def cmd_info(rt: Runtime, client: Client, args: Args) -> Any:
    if len(args) > 2:
        return Verbatim("\r\n".join(filter(None, (info_text(rt, a) for a in args[1:]))))
    return Verbatim(info_text(rt, args[1] if len(args) == 2 else None))


def _count_ahead(rt: Runtime, args: Args) -> Awaitable[TableCounts] | None:
    return None if rt.store is None else rt.store.count_table()


def _info_count_ahead(rt: Runtime, args: Args) -> Awaitable[TableCounts] | None:
    """The store's counts if INFO with these arguments has a keyspace section."""
    names = [a.decode("utf-8", "replace").lower() for a in args[1:]] or ["default"]
    if any(n in _EVERY_SECTION or n == "keyspace" for n in names):
        return _count_ahead(rt, args)
    return None


# ---------------------------------------------------------------- COMMAND


def _command_info(spec: CommandSpec) -> list[Any]:
    return [
        spec.name.lower(),
        spec.arity,
        {Status(f) for f in spec.flags},
        spec.first_key,
        spec.last_key,
        spec.step,
        {Status(f"@{spec.group}")},
        [],
        [],
        [],
    ]


def cmd_command(rt: Runtime, client: Client, args: Args) -> Any:
    if len(args) == 1:
        return [_command_info(s) for s in COMMANDS.values()]
    sub = args[1].upper()
    if sub == b"COUNT":
        return len(COMMANDS)
    if sub == b"INFO":
        names = args[2:] or [s.name.encode() for s in COMMANDS.values()]
        return [
            _command_info(COMMANDS[n.upper()]) if n.upper() in COMMANDS else None for n in names
        ]
    if sub == b"DOCS":
        names = [n.upper() for n in args[2:]] or list(COMMANDS)
        return {
            COMMANDS[n].name.lower(): {
                "summary": COMMANDS[n].summary,
                "since": "1.0.0",
                "group": COMMANDS[n].group,
                "complexity": "O(1)",
                **doc_fields(COMMANDS[n].name, COMMANDS[n].group),
            }
            for n in names
            if n in COMMANDS
        }
    if sub == b"LIST":
        return [s.name.lower() for s in COMMANDS.values()]
    if sub == b"GETKEYS" and len(args) > 2:
        spec = COMMANDS.get(args[2].upper())
        if spec is None:
            raise Error("ERR Invalid command specified")
        return spec.keys(args[2:])
    raise Error(
        f"ERR unknown subcommand or wrong number of arguments for '{_text(args[1])}'. "
        "Try COMMAND HELP."
    )


# Transactions are run by the server (they span several commands); these
# entries exist so COMMAND, arity checks and metrics know them.
def _server_handled(rt: Runtime, client: Client, args: Args) -> Any:
    raise Error(f"ERR {_text(args[0]).upper()} is handled by the connection")


# ------------------------------------------------------------------ table


def _keys_at(first: int, last: int, step: int) -> Callable[[Args], list[bytes]]:
    def load(args: Args) -> list[bytes]:
        end = last if last > 0 else len(args) + last
        return args[first : end + 1 : step]

    return load


def _set_load(args: Args) -> list[bytes]:
    # A plain SET replaces the value whatever the store holds; options read it.
    return args[1:2] if len(args) > 3 else []


def _spec(
    name: str,
    handler: Handler,
    arity: int,
    flags: str = "",
    keys: tuple[int, int, int] = (0, 0, 0),
    *,
    group: str = "generic",
    summary: str = "",
    load: Callable[[Args], list[bytes]] | bool | None = True,
    ahead: Callable[[Runtime, Args], Awaitable[Any] | None] | None = None,
) -> CommandSpec:
    flag_tuple = tuple(flags.split())
    loader: Callable[[Args], list[bytes]] | None
    if load is True:
        loader = _keys_at(*keys) if keys[0] else None
    elif load is False:
        loader = None
    else:
        loader = load
    return CommandSpec(
        name=name,
        handler=handler,
        arity=arity,
        flags=flag_tuple,
        first_key=keys[0],
        last_key=keys[1],
        step=keys[2],
        group=group,
        summary=summary,
        load=loader,
        ahead=ahead,
        write="write" in flag_tuple,
    )


_CONN = "connection"
_STR = "string"
_KEYS = "keyspace"
_SERVER = "server"
_SESSION = "session"

_SPECS = [
    _spec("PING", cmd_ping, -1, "fast", group=_CONN, summary="Ping the server"),
    _spec("ECHO", cmd_echo, 2, "fast", group=_CONN, summary="Echo the given string"),
    _spec("QUIT", cmd_quit, -1, "fast", group=_CONN, summary="Close the connection"),
    _spec("AUTH", cmd_auth, -2, "noauth fast", group=_CONN, summary="Authenticate"),
    _spec("HELLO", cmd_hello, -1, "noauth fast", group=_CONN, summary="Handshake"),
    _spec("RESET", cmd_reset, 1, "noauth fast", group=_CONN, summary="Reset the connection"),
    _spec("SELECT", cmd_select, 2, "fast", group=_CONN, summary="Select database 0"),
    _spec("CLIENT", cmd_client, -2, "", group=_CONN, summary="Client connection commands"),
    _spec("COMMAND", cmd_command, -1, "", group=_SERVER, summary="Command introspection"),
    _spec(
        "INFO",
        cmd_info,
        -1,
        "",
        group=_SERVER,
        summary="Server information",
        ahead=_info_count_ahead,
    ),
    _spec("CONFIG", cmd_config, -2, "", group=_SERVER, summary="Read the effective config"),
    _spec(
        "DBSIZE",
        cmd_dbsize,
        1,
        "readonly fast",
        group=_SERVER,
        summary="Number of keys",
        ahead=_count_ahead,
    ),
    _spec("FLUSHDB", cmd_flushdb, -1, "write", group=_SERVER, summary="Delete all keys"),
    _spec("FLUSHALL", cmd_flushdb, -1, "write", group=_SERVER, summary="Delete all keys"),
    _spec("TIME", cmd_time, 1, "fast", group=_SERVER, summary="Server time"),
    _spec("MULTI", _server_handled, 1, "fast", group="transactions", summary="Start a transaction"),
    _spec("EXEC", _server_handled, 1, "", group="transactions", summary="Run a transaction"),
    _spec(
        "DISCARD", _server_handled, 1, "fast", group="transactions", summary="Drop a transaction"
    ),
    _spec("GET", cmd_get, 2, "readonly fast", (1, 1, 1), group=_STR, summary="Get a value"),
    _spec(
        "SET", cmd_set, -3, "write", (1, 1, 1), group=_STR, summary="Set a value", load=_set_load
    ),
    _spec(
        "SETEX", cmd_setex, 4, "write", (1, 1, 1), group=_STR, summary="Set with TTL", load=False
    ),
    _spec(
        "PSETEX",
        cmd_setex,
        4,
        "write",
        (1, 1, 1),
        group=_STR,
        summary="Set with ms TTL",
        load=False,
    ),
    _spec("SETNX", cmd_setnx, 3, "write fast", (1, 1, 1), group=_STR, summary="Set if absent"),
    _spec("GETDEL", cmd_getdel, 2, "write fast", (1, 1, 1), group=_STR, summary="Get and delete"),
    _spec("GETEX", cmd_getex, -2, "write fast", (1, 1, 1), group=_STR, summary="Get, set expiry"),
    _spec("MGET", cmd_mget, -2, "readonly fast", (1, -1, 1), group=_STR, summary="Get values"),
    _spec("MSET", cmd_mset, -3, "write", (1, -1, 2), group=_STR, summary="Set values", load=False),
    _spec("DEL", cmd_del, -2, "write", (1, -1, 1), group=_KEYS, summary="Delete keys"),
    _spec(
        "UNLINK",
        cmd_del,
        -2,
        "write fast",
        (1, -1, 1),
        group=_KEYS,
        summary="Delete keys",
    ),
    _spec(
        "EXISTS",
        cmd_exists,
        -2,
        "readonly fast",
        (1, -1, 1),
        group=_KEYS,
        summary="Count existing keys",
    ),
    _spec("TOUCH", cmd_touch, -2, "readonly fast", (1, -1, 1), group=_KEYS, summary="Touch keys"),
    _spec(
        "TYPE",
        cmd_type,
        2,
        "readonly fast",
        (1, 1, 1),
        group=_KEYS,
        summary="Type of a key",
    ),
    _spec(
        "STRLEN",
        cmd_strlen,
        2,
        "readonly fast",
        (1, 1, 1),
        group=_STR,
        summary="Length of a value",
    ),
    _spec("INCR", cmd_incr, 2, "write fast", (1, 1, 1), group=_STR, summary="Increment"),
    _spec("INCRBY", cmd_incrby, 3, "write fast", (1, 1, 1), group=_STR, summary="Increment by"),
    _spec("DECR", cmd_decr, 2, "write fast", (1, 1, 1), group=_STR, summary="Decrement"),
    _spec("DECRBY", cmd_decrby, 3, "write fast", (1, 1, 1), group=_STR, summary="Decrement by"),
    _spec("EXPIRE", cmd_expire, -3, "write fast", (1, 1, 1), group=_KEYS, summary="Set TTL"),
    _spec("PEXPIRE", cmd_pexpire, -3, "write fast", (1, 1, 1), group=_KEYS, summary="Set ms TTL"),
    _spec(
        "EXPIREAT", cmd_expireat, -3, "write fast", (1, 1, 1), group=_KEYS, summary="Set deadline"
    ),
    _spec(
        "PEXPIREAT",
        cmd_pexpireat,
        -3,
        "write fast",
        (1, 1, 1),
        group=_KEYS,
        summary="Set ms deadline",
    ),
    _spec(
        "TTL",
        cmd_ttl,
        2,
        "readonly fast",
        (1, 1, 1),
        group=_KEYS,
        summary="Remaining TTL",
    ),
    _spec(
        "PTTL",
        cmd_pttl,
        2,
        "readonly fast",
        (1, 1, 1),
        group=_KEYS,
        summary="Remaining ms TTL",
    ),
    _spec(
        "EXPIRETIME",
        cmd_expiretime,
        2,
        "readonly fast",
        (1, 1, 1),
        group=_KEYS,
        summary="Deadline",
    ),
    _spec(
        "PEXPIRETIME",
        cmd_pexpiretime,
        2,
        "readonly fast",
        (1, 1, 1),
        group=_KEYS,
        summary="Deadline in ms",
    ),
    _spec("PERSIST", cmd_persist, 2, "write fast", (1, 1, 1), group=_KEYS, summary="Remove TTL"),
    _spec("SCAN", cmd_scan, -2, "readonly", group=_KEYS, summary="Iterate keys"),
    _spec(
        "KEYS",
        cmd_keys,
        2,
        "readonly",
        group=_KEYS,
        summary="Keys matching a pattern",
        ahead=_list_keys_ahead,
    ),
    _spec(
        "SESSION.CREATE",
        cmd_session_create,
        -1,
        "write",
        group=_SESSION,
        summary="Create a session with a random id",
    ),
    _spec(
        "SESSION.INFO",
        cmd_session_info,
        2,
        "readonly",
        (1, 1, 1),
        group=_SESSION,
        summary="Session metadata",
    ),
    _spec(
        "SESSION.INVALIDATE",
        cmd_session_invalidate,
        2,
        "write",
        (1, 1, 1),
        group=_SESSION,
        summary="Drop a session from memory, keep it in the store",
        load=False,
    ),
    _spec(
        "SESSION.LIST",
        cmd_session_list,
        -1,
        "readonly",
        group=_SESSION,
        summary="Session ids in memory, most recently used first",
    ),
]

COMMANDS: dict[bytes, CommandSpec] = {spec.name.encode(): spec for spec in _SPECS}
# Lookups try the bytes as sent first; most clients send upper or lower case.
LOOKUP: dict[bytes, CommandSpec] = {**COMMANDS, **{k.lower(): v for k, v in COMMANDS.items()}}

__all__ = [
    "COMMANDS",
    "LOOKUP",
    "Client",
    "CommandSpec",
    "Runtime",
    "glob_to_regex",
    "scan_memory",
]
