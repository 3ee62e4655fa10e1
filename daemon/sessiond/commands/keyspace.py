"""Keyspace commands: DEL UNLINK EXISTS TOUCH TYPE SCAN KEYS."""

from __future__ import annotations

import re
from collections.abc import Awaitable

from .. import values
from ..keyspace import Keyspace
from ..protocol import Error, Status
from ..values import type_name
from . import errors
from .registry import KEYSPACE, Args, Call, Reply, command
from .util import glob_to_regex, int_arg, options

_KINDS = {b"string": values.STRING, b"hash": values.HASH, b"set": values.SET}


def _delete(cx: Call, args: Args) -> Reply:
    removed = 0
    for key in args[1:]:
        existed = cx.peek(key) is not None
        cx.remove(key)
        removed += existed
    return removed


command(
    "DEL",
    -2,
    "write",
    keys=(1, -1, 1),
    group=KEYSPACE,
    summary="Delete keys",
    syntax="key ...",
)(_delete)
command(
    "UNLINK",
    -2,
    "write fast",
    keys=(1, -1, 1),
    group=KEYSPACE,
    summary="Delete keys",
    syntax="key ...",
)(_delete)


@command(
    "EXISTS",
    -2,
    "readonly fast",
    keys=(1, -1, 1),
    group=KEYSPACE,
    summary="Count existing keys",
    syntax="key ...",
)
def cmd_exists(cx: Call, args: Args) -> Reply:
    return sum(1 for key in args[1:] if cx.peek(key) is not None)


@command(
    "TOUCH",
    -2,
    "readonly fast",
    keys=(1, -1, 1),
    group=KEYSPACE,
    summary="Touch keys",
    syntax="key ...",
)
def cmd_touch(cx: Call, args: Args) -> Reply:
    return sum(1 for key in args[1:] if cx.lookup(key) is not None)


@command(
    "TYPE",
    2,
    "readonly fast",
    keys=(1, 1, 1),
    group=KEYSPACE,
    summary="Type of a key",
    syntax="key",
)
def cmd_type(cx: Call, args: Args) -> Reply:
    entry = cx.peek(args[1])
    return Status("none" if entry is None else type_name(entry.value))


def _scan_options(args: Args, start: int) -> tuple[int, re.Pattern[bytes] | None, bytes | None]:
    count = 10
    pattern: re.Pattern[bytes] | None = None
    type_name: bytes | None = None
    for opt, value in options(args, start):
        if opt == b"COUNT":
            count = int_arg(value)
            if count < 1:
                raise errors.syntax()
        elif opt == b"MATCH":
            pattern = None if value == b"*" else glob_to_regex(value)
        elif opt == b"TYPE":
            type_name = value.lower()
        else:
            raise errors.syntax()
    return count, pattern, type_name


@command(
    "SCAN",
    -2,
    "readonly",
    group=KEYSPACE,
    summary="Iterate keys",
    syntax="cursor [MATCH pattern] [COUNT count] [TYPE type]",
)
def cmd_scan(cx: Call, args: Args) -> Reply:
    try:
        cursor = int(args[1])
    except ValueError:
        raise Error(errors.INVALID_CURSOR) from None
    if cursor < 0:
        raise Error(errors.INVALID_CURSOR)
    count, pattern, type_name = _scan_options(args, 2)
    kind = None
    if type_name is not None:
        kind = _KINDS.get(type_name)
        if kind is None:  # a type sessiond never holds: none of its keys match
            return [b"0", []]
    keys, next_cursor = cx.scan(cursor, count, kind)
    if pattern is not None:
        keys = [k for k in keys if pattern.match(k)]
    return [str(next_cursor).encode(), keys]


def _pattern(arg: bytes) -> re.Pattern[bytes] | None:
    return None if arg == b"*" else glob_to_regex(arg)


def _keys_ahead(keyspace: Keyspace, args: Args) -> Awaitable[object] | None:
    return keyspace.keys_ahead(_pattern(args[1])) if len(args) == 2 else None


@command(
    "KEYS",
    2,
    "readonly",
    group=KEYSPACE,
    summary="Keys matching a pattern",
    syntax="pattern",
    ahead=_keys_ahead,
)
def cmd_keys(cx: Call, args: Args) -> Reply:
    return cx.keys(_pattern(args[1]))
