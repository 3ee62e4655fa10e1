"""String commands: GET SET SETEX PSETEX SETNX GETDEL GETEX GETSET MGET MSET
MSETNX STRLEN APPEND GETRANGE SETRANGE INCR INCRBY DECR DECRBY INCRBYFLOAT.

TTLs as elsewhere: a command that replaces a value the way SET does (GETSET)
gives it the default TTL, one that edits it in place (APPEND, SETRANGE, INCR...,
INCRBYFLOAT) keeps its TTL, and a new key gets the default TTL."""

from __future__ import annotations

from fractions import Fraction

from ..keyevents import (
    NOTIFY_EXPIRED,
    NOTIFY_GENERIC,
    NOTIFY_KEY_MISS,
    NOTIFY_NEW,
    NOTIFY_STRING,
)
from ..protocol import OK, Error
from ..values import Value
from . import errors
from .registry import STRING, Args, Call, Reply, command
from .util import (
    EXPIRY_UNITS,
    MAX_INT64,
    MIN_INT64,
    LongDouble,
    add_long_double,
    deadline_from,
    format_long_double,
    int_arg,
    parse_int64,
    parse_long_double,
    string,
    text,
)


@command(
    "GET", 2, "readonly fast", keys=(1, 1, 1), group=STRING, summary="Get a value", syntax="key"
)
def cmd_get(cx: Call, args: Args) -> Reply:
    entry = cx.lookup(args[1])
    if entry is None:
        if cx.keyspace.notifying:
            cx.notify(NOTIFY_KEY_MISS, b"keymiss", args[1])
        return None
    return string(entry.value)


def _set_load(args: Args) -> list[bytes]:
    # A plain SET replaces the value whatever the store holds; options read it.
    return args[1:2] if len(args) > 3 else []


_DECIDING = (b"NX", b"XX", b"GET", b"KEEPTTL")


def _set_decides(args: Args) -> bool:
    # NX, XX, GET and KEEPTTL depend on the value the key has now; EX/PX do not.
    return any(arg.upper() in _DECIDING for arg in args[3:])


@command(
    "SET",
    -3,
    "write",
    keys=(1, 1, 1),
    group=STRING,
    summary="Set a value",
    syntax=(
        "key value [NX | XX] [GET] [EX seconds | PX milliseconds | "
        "EXAT unix-time-seconds | PXAT unix-time-milliseconds | KEEPTTL]"
    ),
    load=_set_load,
    decides=_set_decides,
)
def cmd_set(cx: Call, args: Args) -> Reply:
    key, value = args[1], args[2]
    cx.check_size(key, "key")
    cx.check_size(value)
    if len(args) == 3:
        cx.set(key, value)
        if cx.keyspace.notifying:
            cx.notify(NOTIFY_STRING, b"set", key)
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
        elif opt in EXPIRY_UNITS and expiry in (None, opt) and i + 1 < len(args):
            expiry = opt
            i += 1
            amount = args[i]
        else:
            raise errors.syntax()
        i += 1
    if expiry is not None and not keep:
        ttl, deadline = deadline_from(expiry, int_arg(amount), cx.now(), "set")
    old = cx.lookup(key) if (nx or xx or get or keep) else None
    old_value = None if old is None or not get else string(old.value)
    if get and old is None and cx.keyspace.notifying:
        cx.notify(NOTIFY_KEY_MISS, b"keymiss", key)
    if (nx and old is not None) or (xx and old is None):
        return old_value if get else None
    if deadline is not None and deadline <= cx.now():
        _set_in_the_past(cx, key)
        return old_value if get else OK
    if expiry is None or keep:
        cx.set(key, value, keep_ttl=keep)
    elif deadline is not None:
        cx.set(key, value, deadline=deadline)
    else:
        cx.set(key, value, ttl)
    if cx.keyspace.notifying:
        cx.notify(NOTIFY_STRING, b"set", key)
        if expiry is not None and not keep:
            cx.notify(NOTIFY_GENERIC, b"expire", key)
    return old_value if get else OK


def _set_in_the_past(cx: Call, key: bytes) -> None:
    """SET with EXAT/PXAT already past. Redis writes the key and finds it
    expired when it next looks: new, set, expire, then expired. Here it is
    gone at once, and told in that order."""
    created = cx.keyspace.notifying_new and cx.peek(key) is None
    cx.set_expired(key)
    if cx.keyspace.notifying:
        if created:
            cx.notify(NOTIFY_NEW, b"new", key)
        cx.notify(NOTIFY_STRING, b"set", key)
        cx.notify(NOTIFY_GENERIC, b"expire", key)
        cx.notify(NOTIFY_EXPIRED, b"expired", key)


def _setex(cx: Call, args: Args) -> Reply:
    unit = b"EX" if args[0].upper() == b"SETEX" else b"PX"
    cx.check_size(args[1], "key")
    cx.check_size(args[3])
    ttl, _ = deadline_from(unit, int_arg(args[2]), cx.now(), text(args[0]).lower())
    cx.set(args[1], args[3], ttl)
    if cx.keyspace.notifying:
        cx.notify(NOTIFY_STRING, b"set", args[1])
        cx.notify(NOTIFY_GENERIC, b"expire", args[1])
    return OK


command(
    "SETEX",
    4,
    "write",
    keys=(1, 1, 1),
    group=STRING,
    summary="Set with TTL",
    syntax="key seconds value",
    load=False,
)(_setex)
command(
    "PSETEX",
    4,
    "write",
    keys=(1, 1, 1),
    group=STRING,
    summary="Set with ms TTL",
    syntax="key milliseconds value",
    load=False,
)(_setex)


@command(
    "SETNX",
    3,
    "write fast",
    keys=(1, 1, 1),
    group=STRING,
    summary="Set if absent",
    syntax="key value",
    decides=True,
)
def cmd_setnx(cx: Call, args: Args) -> Reply:
    cx.check_size(args[1], "key")
    cx.check_size(args[2])
    if cx.lookup(args[1]) is not None:
        return 0
    cx.set(args[1], args[2])
    if cx.keyspace.notifying:
        cx.notify(NOTIFY_STRING, b"set", args[1])
    return 1


@command(
    "GETDEL",
    2,
    "write fast",
    keys=(1, 1, 1),
    group=STRING,
    summary="Get and delete",
    syntax="key",
    decides=True,
)
def cmd_getdel(cx: Call, args: Args) -> Reply:
    entry = cx.lookup(args[1])
    if entry is None:
        if cx.keyspace.notifying:
            cx.notify(NOTIFY_KEY_MISS, b"keymiss", args[1])
        return None  # nothing to delete: not a change (WATCH)
    value = string(entry.value)  # a hash or set is refused, and kept
    cx.remove(args[1])
    if cx.keyspace.notifying:
        cx.notify(NOTIFY_GENERIC, b"del", args[1])
    return value


@command(
    "GETSET",
    3,
    "write fast",
    keys=(1, 1, 1),
    decides=True,
    group=STRING,
    summary="Set a value, return the old one",
    syntax="key value",
)
def cmd_getset(cx: Call, args: Args) -> Reply:
    key, value = args[1], args[2]
    cx.check_size(key, "key")
    cx.check_size(value)
    entry = cx.lookup(key)
    old = None if entry is None else string(entry.value)  # WRONGTYPE, nothing set
    notifying = cx.keyspace.notifying
    if entry is None and notifying:
        cx.notify(NOTIFY_KEY_MISS, b"keymiss", key)
    cx.set(key, value)  # as SET: the old TTL goes, the default TTL applies
    if notifying:
        cx.notify(NOTIFY_STRING, b"set", key)
    return old


@command(
    "GETEX",
    -2,
    "write fast",
    keys=(1, 1, 1),
    group=STRING,
    summary="Get, set expiry",
    syntax=(
        "key [EX seconds | PX milliseconds | EXAT unix-time-seconds | "
        "PXAT unix-time-milliseconds | PERSIST]"
    ),
    decides=lambda args: len(args) > 2,  # with an option it changes the TTL
)
def cmd_getex(cx: Call, args: Args) -> Reply:
    key = args[1]
    ttl = deadline = None
    # As Redis: the syntax is checked before the key is looked up, the amount
    # after (a missing key answers nil, a hash WRONGTYPE, whatever the amount).
    # An option may repeat (the last amount counts) but not be combined with
    # a conflicting one.
    opt: bytes | None = None
    amount = b""
    i = 2
    while i < len(args):
        given = args[i].upper()
        if given == b"PERSIST" and opt in (None, given):
            opt = given
        elif given in EXPIRY_UNITS and opt in (None, given) and i + 1 < len(args):
            opt = given
            i += 1
            amount = args[i]
        else:
            raise errors.syntax()
        i += 1
    entry = cx.lookup(key)
    if entry is None:
        if cx.keyspace.notifying:
            cx.notify(NOTIFY_KEY_MISS, b"keymiss", key)
        return None
    value = string(entry.value)
    if opt in EXPIRY_UNITS:
        ttl, deadline = deadline_from(opt, int_arg(amount), cx.now(), "getex")
    if opt == b"PERSIST":
        if cx.persist(key) and cx.keyspace.notifying:
            cx.notify(NOTIFY_GENERIC, b"persist", key)
    elif deadline is not None:
        if deadline <= cx.now():  # already past: deleted, as Redis does
            cx.remove(key)
            if cx.keyspace.notifying:
                cx.notify(NOTIFY_GENERIC, b"del", key)
        else:
            cx.set_deadline(key, deadline)
            if cx.keyspace.notifying:
                cx.notify(NOTIFY_GENERIC, b"expire", key)
    elif ttl is not None:
        cx.set_ttl(key, ttl)
        if cx.keyspace.notifying:
            cx.notify(NOTIFY_GENERIC, b"expire", key)
    return value


@command(
    "MGET",
    -2,
    "readonly fast",
    keys=(1, -1, 1),
    group=STRING,
    summary="Get values",
    syntax="key ...",
)
def cmd_mget(cx: Call, args: Args) -> Reply:
    lookup = cx.lookup
    out: list[bytes | None] = []
    for key in args[1:]:
        entry = lookup(key)
        if entry is None:
            out.append(None)
            if cx.keyspace.notifying:
                cx.notify(NOTIFY_KEY_MISS, b"keymiss", key)
        else:
            # As Redis: a key of another type reads as missing, not as an error.
            out.append(entry.value if isinstance(entry.value, bytes) else None)
    return out


@command(
    "MSET",
    -3,
    "write",
    keys=(1, -1, 2),
    group=STRING,
    summary="Set values",
    syntax="(key value) ...",
    load=False,
)
def cmd_mset(cx: Call, args: Args) -> Reply:
    if len(args) % 2 == 0:
        raise errors.wrong_arity("mset")
    for i in range(1, len(args), 2):
        cx.check_size(args[i], "key")
        cx.check_size(args[i + 1])
    for i in range(1, len(args), 2):
        cx.set(args[i], args[i + 1])
        if cx.keyspace.notifying:
            cx.notify(NOTIFY_STRING, b"set", args[i])
    return OK


@command(
    "MSETNX",
    -3,
    "write",
    keys=(1, -1, 2),
    decides=True,
    group=STRING,
    summary="Set values if none exists",
    syntax="(key value) ...",
)
def cmd_msetnx(cx: Call, args: Args) -> Reply:
    if len(args) % 2 == 0:
        raise errors.wrong_arity("msetnx")
    for i in range(1, len(args), 2):
        cx.check_size(args[i], "key")
        cx.check_size(args[i + 1])
    if any(cx.peek(args[i]) is not None for i in range(1, len(args), 2)):
        return 0
    notifying = cx.keyspace.notifying
    for i in range(1, len(args), 2):
        cx.set(args[i], args[i + 1])
        if notifying:
            cx.notify(NOTIFY_STRING, b"set", args[i])
    return 1


@command(
    "APPEND",
    3,
    "write fast",
    keys=(1, 1, 1),
    decides=True,
    group=STRING,
    summary="Append to a value",
    syntax="key value",
)
def cmd_append(cx: Call, args: Args) -> Reply:
    key, tail = args[1], args[2]
    cx.check_size(key, "key")
    entry = cx.lookup(key)
    if entry is None:
        cx.check_size(tail)
        cx.set(key, tail)
        length = len(tail)
    else:
        cx.check_length(len(string(entry.value)) + len(tail))
        updated = cx.update(key, lambda value: string(value) + tail)
        length = 0 if updated is None else len(string(updated.value))
    if cx.keyspace.notifying:
        cx.notify(NOTIFY_STRING, b"append", key)
    return length


@command(
    "GETRANGE",
    4,
    "readonly",
    keys=(1, 1, 1),
    group=STRING,
    summary="Part of a value",
    syntax="key start end",
)
def cmd_getrange(cx: Call, args: Args) -> Reply:
    start = int_arg(args[2])
    end = int_arg(args[3])
    entry = cx.lookup(args[1])
    if entry is None:
        if cx.keyspace.notifying:
            cx.notify(NOTIFY_KEY_MISS, b"keymiss", args[1])
        return b""
    value = string(entry.value)
    size = len(value)
    # Redis' index rules, including its corner cases.
    if start < 0 and end < 0 and start > end:
        return b""
    if start < 0:
        start += size
    if end < 0:
        end += size
    start = max(start, 0)
    end = max(end, 0)
    if end >= size:
        end = size - 1
    if start > end or size == 0:
        return b""
    return value[start : end + 1]


@command(
    "SETRANGE",
    4,
    "write",
    keys=(1, 1, 1),
    decides=True,
    group=STRING,
    summary="Overwrite part of a value",
    syntax="key offset value",
)
def cmd_setrange(cx: Call, args: Args) -> Reply:
    key, piece = args[1], args[3]
    offset = int_arg(args[2])
    if offset < 0:
        raise Error("ERR offset is out of range")
    cx.check_size(key, "key")
    entry = cx.lookup(key)
    if entry is None:
        if not piece:
            return 0
        cx.check_length(offset + len(piece))
        cx.set(key, bytes(offset) + piece)
        if cx.keyspace.notifying:
            cx.notify(NOTIFY_STRING, b"setrange", key)
        return offset + len(piece)
    current = string(entry.value)
    if not piece:
        return len(current)
    cx.check_length(max(len(current), offset + len(piece)))

    def splice(old: Value) -> Value:
        value = string(old)
        if len(value) < offset:
            value += bytes(offset - len(value))
        return value[:offset] + piece + value[offset + len(piece) :]

    updated = cx.update(key, splice)
    if cx.keyspace.notifying:
        cx.notify(NOTIFY_STRING, b"setrange", key)
    return 0 if updated is None else len(string(updated.value))


@command(
    "STRLEN",
    2,
    "readonly fast",
    keys=(1, 1, 1),
    group=STRING,
    summary="Length of a value",
    syntax="key",
)
def cmd_strlen(cx: Call, args: Args) -> Reply:
    entry = cx.peek(args[1])
    if entry is None:
        if cx.keyspace.notifying:
            cx.notify(NOTIFY_KEY_MISS, b"keymiss", args[1])
        return 0
    return len(string(entry.value))


def _incr_by(cx: Call, key: bytes, delta: int) -> int:
    entry = cx.lookup(key)
    current = 0
    if entry is not None:
        parsed = parse_int64(string(entry.value))
        if parsed is None:
            raise Error(errors.NOT_INT)
        current = parsed
    result = current + delta
    if not MIN_INT64 <= result <= MAX_INT64:
        raise Error(errors.OVERFLOW)
    encoded = str(result).encode()
    if entry is None:
        cx.check_size(key, "key")
        cx.set(key, encoded)
    else:
        cx.update(key, lambda _old: encoded)
    if cx.keyspace.notifying:
        cx.notify(NOTIFY_STRING, b"incrby", key)
    return result


@command(
    "INCR",
    2,
    "write fast",
    keys=(1, 1, 1),
    group=STRING,
    summary="Increment",
    syntax="key",
    decides=True,
)
def cmd_incr(cx: Call, args: Args) -> Reply:
    return _incr_by(cx, args[1], 1)


@command(
    "INCRBY",
    3,
    "write fast",
    keys=(1, 1, 1),
    group=STRING,
    summary="Increment by",
    syntax="key increment",
    decides=True,
)
def cmd_incrby(cx: Call, args: Args) -> Reply:
    return _incr_by(cx, args[1], int_arg(args[2]))


@command(
    "DECR",
    2,
    "write fast",
    keys=(1, 1, 1),
    group=STRING,
    summary="Decrement",
    syntax="key",
    decides=True,
)
def cmd_decr(cx: Call, args: Args) -> Reply:
    return _incr_by(cx, args[1], -1)


@command(
    "INCRBYFLOAT",
    3,
    "write fast",
    keys=(1, 1, 1),
    decides=True,
    group=STRING,
    summary="Increment by a float",
    syntax="key increment",
)
def cmd_incrbyfloat(cx: Call, args: Args) -> Reply:
    key = args[1]
    entry = cx.lookup(key)
    current: LongDouble | None = LongDouble(Fraction(0))
    if entry is not None:
        current = parse_long_double(string(entry.value))
    increment = parse_long_double(args[2])
    if current is None or increment is None:
        raise Error(errors.NOT_FLOAT)
    result = add_long_double(current, increment)
    if result is None:
        raise Error("ERR increment would produce NaN or Infinity")
    encoded = format_long_double(result)
    if entry is None:
        cx.check_size(key, "key")
        cx.set(key, encoded)
    else:
        cx.update(key, lambda _old: encoded)
    if cx.keyspace.notifying:
        cx.notify(NOTIFY_STRING, b"incrbyfloat", key)
    return encoded


@command(
    "DECRBY",
    3,
    "write fast",
    keys=(1, 1, 1),
    group=STRING,
    summary="Decrement by",
    syntax="key decrement",
    decides=True,
)
def cmd_decrby(cx: Call, args: Args) -> Reply:
    delta = int_arg(args[2])
    if delta == MIN_INT64:
        raise Error("ERR decrement would overflow")
    return _incr_by(cx, args[1], -delta)
