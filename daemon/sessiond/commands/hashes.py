"""Hash commands: HSET HSETNX HMSET HGET HMGET HGETALL HDEL HEXISTS HLEN HKEYS
HVALS HSTRLEN HINCRBY HINCRBYFLOAT HSCAN HRANDFIELD.

A hash lives in memory as a ``dict`` and ages like a string: a write without
a TTL gets the default one, reads and writes renew a sliding TTL (HLEN and
HSTRLEN only inspect, as STRLEN does), eviction keeps it in the store. A hash
whose last field is deleted is deleted.
"""

from __future__ import annotations

import random
import re

from ..keyevents import NOTIFY_GENERIC, NOTIFY_HASH, NOTIFY_KEY_MISS
from ..protocol import OK, Error, Pairs
from ..values import Hash, Value
from . import errors
from .registry import HASH, Args, Call, Reply, command
from .util import (
    MAX_INT64,
    MIN_INT64,
    add_long_double,
    check_repeats,
    count_arg,
    format_long_double,
    glob_to_regex,
    hash_of,
    int_arg,
    options,
    parse_cursor,
    parse_int64,
    parse_long_double,
)

NOT_INT = "ERR hash value is not an integer"
NOT_FLOAT = "ERR hash value is not a float"


def _read(cx: Call, key: bytes) -> Hash | None:
    """The hash at ``key`` as an access, ``None`` if there is none."""
    entry = cx.lookup(key)
    return None if entry is None else hash_of(entry.value)


def _inspect(cx: Call, key: bytes) -> Hash | None:
    entry = cx.peek(key)
    return None if entry is None else hash_of(entry.value)


def _missed(cx: Call, key: bytes, found: Hash | None) -> Hash | None:
    """``found``, telling a read command's miss (keymiss), as Redis' read lookups do."""
    if found is None and cx.keyspace.notifying:
        cx.notify(NOTIFY_KEY_MISS, b"keymiss", key)
    return found


def _hset(cx: Call, key: bytes) -> None:
    if cx.keyspace.notifying:
        cx.notify(NOTIFY_HASH, b"hset", key)


def _write(cx: Call, key: bytes, pairs: list[tuple[bytes, bytes]], only_new: bool = False) -> int:
    """Set ``pairs`` in the hash at ``key`` (created if missing); how many
    fields were new. With ``only_new`` an existing field keeps its value."""
    cx.check_size(key, "key")
    for field, value in pairs:
        cx.check_size(field, "field")
        cx.check_size(value)
    current = _read(cx, key)
    if current is None:
        fresh: Hash = {}
        for field, value in pairs:
            if not (only_new and field in fresh):
                fresh[field] = value
        cx.set(key, fresh)
        return len(fresh)
    added = 0

    def apply(value: Value) -> Value:
        nonlocal added
        fields = hash_of(value)
        for field, item in pairs:
            if field not in fields:
                added += 1
            elif only_new:
                continue
            fields[field] = item
        return fields

    if not only_new or any(field not in current for field, _ in pairs):
        cx.update(key, apply)
    return added


def _pairs(args: Args, start: int, name: str) -> list[tuple[bytes, bytes]]:
    if (len(args) - start) % 2 or len(args) == start:
        raise errors.wrong_arity(name)
    return [(args[i], args[i + 1]) for i in range(start, len(args), 2)]


@command(
    "HSET",
    -4,
    "write fast",
    keys=(1, 1, 1),
    group=HASH,
    summary="Set fields of a hash",
    syntax="key (field value) ...",
    decides=True,
)
def cmd_hset(cx: Call, args: Args) -> Reply:
    added = _write(cx, args[1], _pairs(args, 2, "hset"))
    _hset(cx, args[1])
    return added


@command(
    "HMSET",
    -4,
    "write fast",
    keys=(1, 1, 1),
    group=HASH,
    summary="Set fields of a hash (deprecated form of HSET)",
    syntax="key (field value) ...",
    decides=True,
)
def cmd_hmset(cx: Call, args: Args) -> Reply:
    _write(cx, args[1], _pairs(args, 2, "hmset"))
    _hset(cx, args[1])
    return OK


@command(
    "HSETNX",
    4,
    "write fast",
    keys=(1, 1, 1),
    group=HASH,
    summary="Set a field of a hash if it is new",
    syntax="key field value",
    decides=True,
)
def cmd_hsetnx(cx: Call, args: Args) -> Reply:
    added = _write(cx, args[1], [(args[2], args[3])], only_new=True)
    if added:
        _hset(cx, args[1])
    return added


@command(
    "HGET",
    3,
    "readonly fast",
    keys=(1, 1, 1),
    group=HASH,
    summary="The value of a field",
    syntax="key field",
)
def cmd_hget(cx: Call, args: Args) -> Reply:
    fields = _missed(cx, args[1], _read(cx, args[1]))
    return None if fields is None else fields.get(args[2])


@command(
    "HMGET",
    -3,
    "readonly fast",
    keys=(1, 1, 1),
    group=HASH,
    summary="The values of fields",
    syntax="key field ...",
)
def cmd_hmget(cx: Call, args: Args) -> Reply:
    fields = _missed(cx, args[1], _read(cx, args[1])) or {}
    return [fields.get(field) for field in args[2:]]


@command(
    "HGETALL",
    2,
    "readonly",
    keys=(1, 1, 1),
    group=HASH,
    summary="Every field and value of a hash",
    syntax="key",
)
def cmd_hgetall(cx: Call, args: Args) -> Reply:
    return dict(_missed(cx, args[1], _read(cx, args[1])) or {})


@command(
    "HKEYS",
    2,
    "readonly",
    keys=(1, 1, 1),
    group=HASH,
    summary="The fields of a hash",
    syntax="key",
)
def cmd_hkeys(cx: Call, args: Args) -> Reply:
    return list(_missed(cx, args[1], _read(cx, args[1])) or ())


@command(
    "HVALS",
    2,
    "readonly",
    keys=(1, 1, 1),
    group=HASH,
    summary="The values of a hash",
    syntax="key",
)
def cmd_hvals(cx: Call, args: Args) -> Reply:
    return list((_missed(cx, args[1], _read(cx, args[1])) or {}).values())


@command(
    "HDEL",
    -3,
    "write fast",
    keys=(1, 1, 1),
    group=HASH,
    summary="Delete fields of a hash",
    syntax="key field ...",
    decides=True,
)
def cmd_hdel(cx: Call, args: Args) -> Reply:
    key = args[1]
    current = _read(cx, key)
    if current is None:
        return 0
    doomed = {field for field in args[2:] if field in current}
    if not doomed:
        return 0
    if len(doomed) == len(current):
        cx.remove(key)  # no field left: the key goes, as in Redis
        if cx.keyspace.notifying:
            cx.notify(NOTIFY_HASH, b"hdel", key)
            cx.notify(NOTIFY_GENERIC, b"del", key)
        return len(doomed)

    def apply(value: Value) -> Value:
        fields = hash_of(value)
        for field in doomed:
            del fields[field]
        return fields

    cx.update(key, apply)
    if cx.keyspace.notifying:
        cx.notify(NOTIFY_HASH, b"hdel", key)
    return len(doomed)


@command(
    "HEXISTS",
    3,
    "readonly fast",
    keys=(1, 1, 1),
    group=HASH,
    summary="Whether a field exists",
    syntax="key field",
)
def cmd_hexists(cx: Call, args: Args) -> Reply:
    fields = _missed(cx, args[1], _read(cx, args[1]))
    return int(fields is not None and args[2] in fields)


@command(
    "HLEN",
    2,
    "readonly fast",
    keys=(1, 1, 1),
    group=HASH,
    summary="Number of fields",
    syntax="key",
)
def cmd_hlen(cx: Call, args: Args) -> Reply:
    return len(_missed(cx, args[1], _inspect(cx, args[1])) or ())


@command(
    "HSTRLEN",
    3,
    "readonly fast",
    keys=(1, 1, 1),
    group=HASH,
    summary="Length of a field's value",
    syntax="key field",
)
def cmd_hstrlen(cx: Call, args: Args) -> Reply:
    fields = _missed(cx, args[1], _inspect(cx, args[1])) or {}
    return len(fields.get(args[2], b""))


def _increment(cx: Call, key: bytes, field: bytes, new: bytes) -> None:
    cx.check_size(new)
    _write(cx, key, [(field, new)])


@command(
    "HINCRBY",
    4,
    "write fast",
    keys=(1, 1, 1),
    group=HASH,
    summary="Increment the integer value of a field",
    syntax="key field increment",
    decides=True,
)
def cmd_hincrby(cx: Call, args: Args) -> Reply:
    key, field = args[1], args[2]
    delta = int_arg(args[3])
    fields = _read(cx, key) or {}
    current = 0
    if field in fields:
        parsed = parse_int64(fields[field])
        if parsed is None:
            raise Error(NOT_INT)
        current = parsed
    result = current + delta
    if not MIN_INT64 <= result <= MAX_INT64:
        raise Error(errors.OVERFLOW)
    _increment(cx, key, field, str(result).encode())
    if cx.keyspace.notifying:
        cx.notify(NOTIFY_HASH, b"hincrby", key)
    return result


@command(
    "HINCRBYFLOAT",
    4,
    "write fast",
    keys=(1, 1, 1),
    decides=True,
    group=HASH,
    summary="Increment the float value of a field",
    syntax="key field increment",
)
def cmd_hincrbyfloat(cx: Call, args: Args) -> Reply:
    """As INCRBYFLOAT, in C's long double, with Redis' HINCRBYFLOAT errors."""
    key, field = args[1], args[2]
    increment = parse_long_double(args[3])
    if increment is None:
        raise Error(errors.NOT_FLOAT)
    if increment.inf:
        raise Error("ERR value is NaN or Infinity")
    fields = _read(cx, key) or {}
    current = parse_long_double(fields.get(field, b"0"))
    if current is None:
        raise Error(NOT_FLOAT)
    result = add_long_double(current, increment)
    if result is None:
        raise Error("ERR increment would produce NaN or Infinity")
    encoded = format_long_double(result)
    _increment(cx, key, field, encoded)
    if cx.keyspace.notifying:
        cx.notify(NOTIFY_HASH, b"hincrbyfloat", key)
    return encoded


@command(
    "HSCAN",
    -3,
    "readonly",
    keys=(1, 1, 1),
    group=HASH,
    summary="Iterate the fields of a hash",
    syntax="key cursor [MATCH pattern] [COUNT count]",
)
def cmd_hscan(cx: Call, args: Args) -> Reply:
    _cursor(args[2])
    # The key before the options, as Redis reads them: a missing key is an
    # empty scan and another type WRONGTYPE, whatever options follow.
    found = _missed(cx, args[1], _read(cx, args[1]))
    if found is None:
        return [b"0", []]
    pattern = _match(args, 3)
    out: list[bytes] = []
    for field, value in found.items():
        if pattern is None or pattern.match(field):
            out += [field, value]
    # A session's hash is small: one step returns all of it (cursor 0), as
    # Redis does for a hash in its compact encoding.
    return [b"0", out]


def _cursor(arg: bytes) -> None:
    if parse_cursor(arg) is None:
        raise Error(errors.INVALID_CURSOR)


def _match(args: Args, start: int) -> re.Pattern[bytes] | None:
    pattern: re.Pattern[bytes] | None = None
    for opt, value in options(args, start):
        if opt == b"MATCH":
            pattern = None if value == b"*" else glob_to_regex(value)
        elif opt == b"COUNT":
            if int_arg(value) < 1:
                raise errors.syntax()
        else:
            raise errors.syntax()
    return pattern


@command(
    "HRANDFIELD",
    -2,
    "readonly",
    keys=(1, 1, 1),
    group=HASH,
    summary="Random fields of a hash",
    syntax="key [count [WITHVALUES]]",
)
def cmd_hrandfield(cx: Call, args: Args) -> Reply:
    # Redis' order: the count, the syntax, the count's range with WITHVALUES
    # (twice as many replies), then the key.
    count = count_arg(args[2]) if len(args) > 2 else None
    if len(args) > 4 or (len(args) == 4 and args[3].upper() != b"WITHVALUES"):
        raise errors.syntax()
    withvalues = len(args) == 4
    if withvalues and count is not None and abs(count) > MAX_INT64 // 2:
        raise Error("ERR value is out of range")
    fields = _missed(cx, args[1], _read(cx, args[1]))
    if count is None:
        return None if not fields else random.choice(list(fields))
    if not fields:
        return []
    check_repeats(cx.state.config.limits.max_output_buffer, count, 2 if withvalues else 1)
    names = list(fields)
    if count >= 0:
        chosen = random.sample(names, min(count, len(names)))
    else:
        chosen = [random.choice(names) for _ in range(-count)]
    if not withvalues:
        return chosen
    # Flat in RESP2, a pair per field in RESP3 (the caller's, or a script's).
    return Pairs([(name, fields[name]) for name in chosen])
