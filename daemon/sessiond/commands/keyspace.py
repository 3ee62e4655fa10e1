"""Keyspace commands: DEL UNLINK EXISTS TOUCH TYPE SCAN KEYS RENAME RENAMENX
COPY RANDOMKEY OBJECT MEMORY."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Awaitable

from .. import values
from ..cache import Entry
from ..keyevents import NOTIFY_GENERIC, NOTIFY_KEY_MISS
from ..keyspace import Keyspace
from ..protocol import OK, Error, Status
from ..values import Value, type_name
from . import errors
from .registry import GENERIC, SERVER, Args, Call, Reply, command, subcommand
from .util import (
    glob_to_regex,
    help_reply,
    int_arg,
    options,
    parse_cursor,
    parse_int64,
)

_KINDS = {b"string": values.STRING, b"hash": values.HASH, b"set": values.SET}


def _delete(cx: Call, args: Args) -> Reply:
    removed = 0
    for key in args[1:]:
        if cx.peek(key) is not None:  # deleting nothing is not a change (WATCH)
            cx.remove(key)
            removed += 1
            if cx.keyspace.notifying:
                cx.notify(NOTIFY_GENERIC, b"del", key)
    return removed


command(
    "DEL",
    -2,
    "write",
    keys=(1, -1, 1),
    group=GENERIC,
    summary="Delete keys",
    syntax="key ...",
)(_delete)
command(
    "UNLINK",
    -2,
    "write fast",
    keys=(1, -1, 1),
    group=GENERIC,
    summary="Delete keys",
    syntax="key ...",
)(_delete)


@command(
    "EXISTS",
    -2,
    "readonly fast",
    keys=(1, -1, 1),
    group=GENERIC,
    summary="Count existing keys",
    syntax="key ...",
)
def cmd_exists(cx: Call, args: Args) -> Reply:
    found = 0
    for key in args[1:]:
        if cx.peek(key) is not None:
            found += 1
        elif cx.keyspace.notifying:
            cx.notify(NOTIFY_KEY_MISS, b"keymiss", key)
    return found


@command(
    "TOUCH",
    -2,
    "readonly fast",
    keys=(1, -1, 1),
    group=GENERIC,
    summary="Touch keys",
    syntax="key ...",
)
def cmd_touch(cx: Call, args: Args) -> Reply:
    touched = 0
    for key in args[1:]:
        if cx.lookup(key) is not None:
            touched += 1
        elif cx.keyspace.notifying:
            cx.notify(NOTIFY_KEY_MISS, b"keymiss", key)
    return touched


@command(
    "TYPE",
    2,
    "readonly fast",
    keys=(1, 1, 1),
    group=GENERIC,
    summary="Type of a key",
    syntax="key",
)
def cmd_type(cx: Call, args: Args) -> Reply:
    entry = cx.peek(args[1])
    if entry is None:
        if cx.keyspace.notifying:
            cx.notify(NOTIFY_KEY_MISS, b"keymiss", args[1])
        return Status("none")
    return Status(type_name(entry.value))


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


def _scan_ahead(keyspace: Keyspace, args: Args) -> Awaitable[object] | None:
    # Only a store across the network reads ahead (Keyspace.scan_ahead); a
    # request the handler will refuse reads nothing.
    cursor = parse_cursor(args[1])
    if cursor is None:
        return None
    try:
        count, _, type_name = _scan_options(args, 2)
    except Error:
        return None
    kind = None if type_name is None else _KINDS.get(type_name)
    if type_name is not None and kind is None:
        return None
    return keyspace.scan_ahead(cursor, count, kind)


@command(
    "SCAN",
    -2,
    "readonly",
    group=GENERIC,
    summary="Iterate keys",
    syntax="cursor [MATCH pattern] [COUNT count] [TYPE type]",
    ahead=_scan_ahead,
)
def cmd_scan(cx: Call, args: Args) -> Reply:
    cursor = parse_cursor(args[1])
    if cursor is None:
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
    group=GENERIC,
    summary="Keys matching a pattern",
    syntax="pattern",
    ahead=_keys_ahead,
)
def cmd_keys(cx: Call, args: Args) -> Reply:
    return cx.keys(_pattern(args[1]))


# ------------------------------------------------------ RENAME, COPY


def _place(cx: Call, key: bytes, entry: Entry[Value], value: Value) -> None:
    """Write ``value`` under ``key`` with ``entry``'s life, as Redis moves a
    key's expire with it: its sliding TTL (which this access has just renewed)
    when the TTL slides, else its deadline; no expiry if it has none."""
    if entry.ttl is not None and cx.cache.sliding:
        cx.set(key, value, entry.ttl, context_id=entry.context_id)
    elif entry.deadline is not None:
        cx.set(key, value, deadline=entry.deadline, context_id=entry.context_id)
    else:
        cx.set(key, value, None, context_id=entry.context_id)


def _duplicate(value: Value) -> Value:
    """A copy that a later change to ``value`` does not reach (a hash or a
    set is changed in place)."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, set):
        return set(value)
    return value


def _rename(cx: Call, args: Args, *, nx: bool) -> Reply:
    source, target = args[1], args[2]
    entry = cx.lookup(source)
    if entry is None:
        raise Error(errors.NO_SUCH_KEY)
    if source == target:
        return 0 if nx else OK
    exists = cx.peek(target) is not None
    if nx and exists:
        return 0
    cx.check_size(target, "key")
    if exists:
        cx.remove(target)  # as Redis: deleted, then made anew (a "new" event)
    _place(cx, target, entry, entry.value)  # moved: the source goes
    cx.remove(source)
    if cx.keyspace.notifying:
        cx.notify(NOTIFY_GENERIC, b"rename_from", source)
        cx.notify(NOTIFY_GENERIC, b"rename_to", target)
    return 1 if nx else OK


@command(
    "RENAME",
    3,
    "write",
    keys=(1, 2, 1),
    decides=True,
    group=GENERIC,
    summary="Rename a key",
    syntax="key newkey",
)
def cmd_rename(cx: Call, args: Args) -> Reply:
    return _rename(cx, args, nx=False)


@command(
    "RENAMENX",
    3,
    "write fast",
    keys=(1, 2, 1),
    decides=True,
    group=GENERIC,
    summary="Rename a key if the new name is free",
    syntax="key newkey",
)
def cmd_renamenx(cx: Call, args: Args) -> Reply:
    return _rename(cx, args, nx=True)


@command(
    "COPY",
    -3,
    "write",
    keys=(1, 2, 1),
    decides=True,
    group=GENERIC,
    summary="Copy a key",
    syntax="source destination [DB destination-db] [REPLACE]",
)
def cmd_copy(cx: Call, args: Args) -> Reply:
    source, target = args[1], args[2]
    replace = False
    i = 3
    while i < len(args):
        opt = args[i].upper()
        if opt == b"REPLACE":
            replace = True
        elif opt == b"DB" and i + 1 < len(args):
            db = parse_int64(args[i + 1])
            if db is None or not -(2**31) <= db < 2**31:
                raise Error(errors.NOT_INT)
            if db != 0:
                raise Error(errors.DB_INDEX)  # sessiond has database 0 only
            i += 1
        else:
            raise errors.syntax()
        i += 1
    if source == target:
        raise Error(errors.SAME_OBJECT)
    entry = cx.lookup(source)
    if entry is None:
        if cx.keyspace.notifying:  # Redis reads the source: its miss is told
            cx.notify(NOTIFY_KEY_MISS, b"keymiss", source)
        return 0
    exists = cx.peek(target) is not None
    if exists and not replace:
        return 0
    cx.check_size(target, "key")
    if exists:
        cx.remove(target)  # as Redis: deleted, then made anew (a "new" event)
    _place(cx, target, entry, _duplicate(entry.value))
    if cx.keyspace.notifying:
        cx.notify(NOTIFY_GENERIC, b"copy_to", target)
    return 1


@command(
    "RANDOMKEY",
    1,
    "readonly",
    group=GENERIC,
    summary="A random key",
)
def cmd_randomkey(cx: Call, args: Args) -> Reply:
    return cx.keyspace.random_key()


# ------------------------------------------------------ OBJECT, MEMORY


def _subcommand_key(args: Args) -> list[bytes]:
    # OBJECT ENCODING key, MEMORY USAGE key: read through like any key.
    return args[2:3] if len(args) > 2 and args[1].upper() != b"HELP" else []


_OBJECT_HELP = [
    "ENCODING <key>",
    "    Return the kind of internal representation used in order to store the value",
    "    associated with a <key>.",
    "FREQ <key>",
    "    Return the access frequency index of the <key>. The returned integer is",
    "    proportional to the logarithm of the recent access frequency of the key.",
    "IDLETIME <key>",
    "    Return the idle time of the <key>, that is the approximated number of",
    "    seconds elapsed since the last access to the key.",
    "REFCOUNT <key>",
    "    Return the number of references of the value associated with the specified",
    "    <key>.",
]

# Redis' shared integers: values 0..9999 are one shared object each, unless a
# memory bound with an LRU policy (sessiond's) needs a per-key access time.
_SHARED_INTEGERS = 10000
_SHARED_REFCOUNT = 2147483647
_EMBSTR_LIMIT = 44
# Redis 7.2's defaults: hash-max-listpack-entries/-value, set-max-intset-entries,
# set-max-listpack-entries/-value.
_LISTPACK_ENTRIES = 128
_LISTPACK_VALUE = 64
_INTSET_ENTRIES = 512


def _encoding(value: Value) -> str:
    """The encoding Redis 7.2 would give the value, read from the value as it
    is now (Redis keeps a container's larger encoding after it shrinks, and a
    string APPEND or SETRANGE made stays ``raw``)."""
    if isinstance(value, bytes):
        if len(value) <= 20 and parse_int64(value) is not None:
            return "int"
        return "embstr" if len(value) <= _EMBSTR_LIMIT else "raw"
    if isinstance(value, dict):
        small = len(value) <= _LISTPACK_ENTRIES and all(
            len(f) <= _LISTPACK_VALUE and len(v) <= _LISTPACK_VALUE for f, v in value.items()
        )
        return "listpack" if small else "hashtable"
    if len(value) <= _INTSET_ENTRIES and all(
        len(m) <= 20 and parse_int64(m) is not None for m in value
    ):
        return "intset"
    small = len(value) <= _LISTPACK_ENTRIES and all(len(m) <= _LISTPACK_VALUE for m in value)
    return "listpack" if small else "hashtable"


@command(
    "OBJECT",
    -2,
    "readonly",
    group=GENERIC,
    summary="Inspect a key's internals",
    subcommands={
        "ENCODING": (3, "key", "The encoding of a key's value"),
        "FREQ": (3, "key", "Access frequency (LFU policies only: an error here)"),
        "IDLETIME": (3, "key", "Seconds since the key was last read or written"),
        "REFCOUNT": (3, "key", "References to the key's value"),
        "HELP": (2, "", "Show this help"),
    },
    load=_subcommand_key,
)
def cmd_object(cx: Call, args: Args) -> Reply:
    sub = subcommand(args, "OBJECT")
    if sub == b"HELP":
        return help_reply("OBJECT", _OBJECT_HELP)
    entry = cx.peek(args[2])  # an inspection: the key is not touched
    if entry is None:
        return None
    if sub == b"ENCODING":
        return _encoding(entry.value)
    if sub == b"FREQ":
        raise Error(
            "ERR An LFU maxmemory policy is not selected, access frequency not tracked. "
            "Please note that when switching between policies at runtime LRU and LFU data "
            "will take some time to adjust."
        )
    if sub == b"IDLETIME":
        return max(0, int(cx.now() - entry.accessed_at))
    value = entry.value
    number = parse_int64(value) if isinstance(value, bytes) and len(value) <= 20 else None
    if number is not None and 0 <= number < _SHARED_INTEGERS and not cx.cache.max_memory:
        return _SHARED_REFCOUNT
    return 1


_MEMORY_HELP = [
    "USAGE <key> [SAMPLES <count>]",
    "    Return memory in bytes used by <key> and its value (sessiond: what it holds",
    "    in memory for it, or would hold once read back from the store).",
]

# What memory holds per key besides the key, value and entry objects: its
# slot in the cache's ordered dict and, for a key with a deadline, its record
# in the expiry heap.
_DICT_SLOT = 104
_HEAP_RECORD = 8 + sys.getsizeof((0.0, 0, b""))


def _memory_usage(key: bytes, entry: Entry[Value]) -> int:
    """Bytes memory spends on a session: key, value (a container with its
    items), the entry (its slots and float fields) and its share of the
    cache's structures."""
    value = entry.value
    size = sys.getsizeof(key) + sys.getsizeof(value) + sys.getsizeof(entry)
    if isinstance(value, dict):
        size += sum([sys.getsizeof(f) + sys.getsizeof(v) for f, v in value.items()])
    elif isinstance(value, set):
        size += sum([sys.getsizeof(m) for m in value])
    size += _DICT_SLOT + 3 * sys.getsizeof(time.time())
    if entry.deadline is not None:
        size += sys.getsizeof(entry.deadline) + _HEAP_RECORD
    return size


@command(
    "MEMORY",
    -2,
    "readonly",
    group=SERVER,
    summary="Memory use",
    subcommands={
        "USAGE": (-3, "key [SAMPLES count]", "Bytes used by a key and its value"),
        "HELP": (2, "", "Show this help"),
    },
    load=_subcommand_key,
)
def cmd_memory(cx: Call, args: Args) -> Reply:
    sub = subcommand(args, "MEMORY")
    if sub == b"HELP":
        return help_reply("MEMORY", _MEMORY_HELP)
    i = 3
    while i < len(args):
        if args[i].upper() == b"SAMPLES" and i + 1 < len(args):
            samples = int_arg(args[i + 1])
            if samples < 0:
                raise errors.syntax()
            i += 2
        else:
            raise errors.syntax()
    entry = cx.peek(args[2])
    if entry is None:
        return None
    return _memory_usage(args[2], entry)
