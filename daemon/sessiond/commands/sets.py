"""Set commands: SADD SREM SMEMBERS SISMEMBER SMISMEMBER SCARD SPOP
SRANDMEMBER SSCAN SINTER SUNION SDIFF SMOVE.

A set lives in memory as a ``set`` and ages like a string (see
:mod:`.hashes`); SCARD only inspects. A set whose last member is removed is
deleted.
"""

from __future__ import annotations

import random

from ..keyevents import NOTIFY_GENERIC, NOTIFY_KEY_MISS, NOTIFY_SET
from ..protocol import Error
from ..values import Members, Value
from . import errors
from .registry import SET, Args, Call, Reply, command
from .util import (
    check_repeats,
    count_arg,
    glob_to_regex,
    int_arg,
    members_of,
    options,
    parse_cursor,
    positive_arg,
)


def _read(cx: Call, key: bytes) -> Members | None:
    entry = cx.lookup(key)
    return None if entry is None else members_of(entry.value)


def _lookup(cx: Call, key: bytes) -> Members | None:
    """``_read`` for a read command: a miss is told (keymiss), as Redis' read
    lookups do (a write's lookup tells none)."""
    found = _read(cx, key)
    if found is None and cx.keyspace.notifying:
        cx.notify(NOTIFY_KEY_MISS, b"keymiss", key)
    return found


def _add(cx: Call, key: bytes, members: list[bytes]) -> int:
    cx.check_size(key, "key")
    for member in members:
        cx.check_size(member, "member")
    current = _read(cx, key)
    if current is None:
        fresh = set(members)
        cx.set(key, fresh)
        return len(fresh)
    new = {m for m in members if m not in current}
    if new:

        def apply(value: Value) -> Value:
            found = members_of(value)
            found |= new
            return found

        cx.update(key, apply)
    return len(new)


def _remove(cx: Call, key: bytes, current: Members, doomed: set[bytes], event: bytes) -> None:
    """Take ``doomed`` (all members of ``current``) out; the key goes with the
    last. Tells ``event`` (srem, spop), then del if the key went."""
    if len(doomed) == len(current):
        cx.remove(key)
        if cx.keyspace.notifying:
            cx.notify(NOTIFY_SET, event, key)
            cx.notify(NOTIFY_GENERIC, b"del", key)
        return

    def apply(value: Value) -> Value:
        found = members_of(value)
        found -= doomed
        return found

    cx.update(key, apply)
    if cx.keyspace.notifying:
        cx.notify(NOTIFY_SET, event, key)


@command(
    "SADD",
    -3,
    "write fast",
    keys=(1, 1, 1),
    group=SET,
    summary="Add members to a set",
    syntax="key member ...",
    decides=True,
)
def cmd_sadd(cx: Call, args: Args) -> Reply:
    added = _add(cx, args[1], args[2:])
    if added and cx.keyspace.notifying:
        cx.notify(NOTIFY_SET, b"sadd", args[1])
    return added


@command(
    "SREM",
    -3,
    "write fast",
    keys=(1, 1, 1),
    group=SET,
    summary="Remove members from a set",
    syntax="key member ...",
    decides=True,
)
def cmd_srem(cx: Call, args: Args) -> Reply:
    current = _read(cx, args[1])
    if current is None:
        return 0
    doomed = {m for m in args[2:] if m in current}
    if doomed:
        _remove(cx, args[1], current, doomed, b"srem")
    return len(doomed)


@command(
    "SMEMBERS",
    2,
    "readonly",
    keys=(1, 1, 1),
    group=SET,
    summary="Every member of a set",
    syntax="key",
)
def cmd_smembers(cx: Call, args: Args) -> Reply:
    return set(_lookup(cx, args[1]) or ())


@command(
    "SISMEMBER",
    3,
    "readonly fast",
    keys=(1, 1, 1),
    group=SET,
    summary="Whether a member is in a set",
    syntax="key member",
)
def cmd_sismember(cx: Call, args: Args) -> Reply:
    return int(args[2] in (_lookup(cx, args[1]) or ()))


@command(
    "SMISMEMBER",
    -3,
    "readonly fast",
    keys=(1, 1, 1),
    group=SET,
    summary="Whether members are in a set",
    syntax="key member ...",
)
def cmd_smismember(cx: Call, args: Args) -> Reply:
    found = _lookup(cx, args[1]) or set()
    return [int(m in found) for m in args[2:]]


@command(
    "SCARD",
    2,
    "readonly fast",
    keys=(1, 1, 1),
    group=SET,
    summary="Number of members",
    syntax="key",
)
def cmd_scard(cx: Call, args: Args) -> Reply:
    entry = cx.peek(args[1])
    if entry is None:
        if cx.keyspace.notifying:
            cx.notify(NOTIFY_KEY_MISS, b"keymiss", args[1])
        return 0
    return len(members_of(entry.value))


@command(
    "SPOP",
    -2,
    "write fast",
    keys=(1, 1, 1),
    group=SET,
    summary="Remove and return random members",
    syntax="key [count]",
    decides=True,
)
def cmd_spop(cx: Call, args: Args) -> Reply:
    if len(args) > 3:
        raise errors.syntax()
    # Redis gives the negative count's error for a non-integer too.
    count = positive_arg(args[2], errors.MUST_BE_POSITIVE) if len(args) == 3 else None
    current = _read(cx, args[1])
    if not current:
        return None if count is None else set()
    chosen = random.sample(sorted(current), min(1 if count is None else count, len(current)))
    if chosen:
        _remove(cx, args[1], current, set(chosen), b"spop")
    return chosen[0] if count is None else set(chosen)


@command(
    "SRANDMEMBER",
    -2,
    "readonly",
    keys=(1, 1, 1),
    group=SET,
    summary="Random members of a set",
    syntax="key [count]",
)
def cmd_srandmember(cx: Call, args: Args) -> Reply:
    if len(args) > 3:
        raise errors.syntax()
    count = count_arg(args[2]) if len(args) == 3 else None
    current = _lookup(cx, args[1])
    if count is None:
        return None if not current else random.choice(sorted(current))
    if not current:
        return []
    check_repeats(cx.state.config.limits.max_output_buffer, count)
    members = sorted(current)
    if count >= 0:
        return random.sample(members, min(count, len(members)))
    return [random.choice(members) for _ in range(-count)]


@command(
    "SSCAN",
    -3,
    "readonly",
    keys=(1, 1, 1),
    group=SET,
    summary="Iterate the members of a set",
    syntax="key cursor [MATCH pattern] [COUNT count]",
)
def cmd_sscan(cx: Call, args: Args) -> Reply:
    if parse_cursor(args[2]) is None:
        raise Error(errors.INVALID_CURSOR)
    # The key before the options, as Redis reads them (see HSCAN).
    found = _lookup(cx, args[1])
    if found is None:
        return [b"0", []]
    pattern = None
    for opt, value in options(args, 3):
        if opt == b"MATCH":
            pattern = None if value == b"*" else glob_to_regex(value)
        elif opt == b"COUNT":
            if int_arg(value) < 1:
                raise errors.syntax()
        else:
            raise errors.syntax()
    # One step returns the whole (small) set, cursor 0: see HSCAN.
    return [b"0", [m for m in found if pattern is None or pattern.match(m)]]


def _sets(cx: Call, keys: Args) -> list[Members]:
    return [_lookup(cx, key) or set() for key in keys]


@command(
    "SINTER",
    -2,
    "readonly",
    keys=(1, -1, 1),
    group=SET,
    summary="Members in every given set",
    syntax="key ...",
)
def cmd_sinter(cx: Call, args: Args) -> Reply:
    found = _sets(cx, args[1:])
    return set.intersection(*found) if found else set()


@command(
    "SUNION",
    -2,
    "readonly",
    keys=(1, -1, 1),
    group=SET,
    summary="Members in any given set",
    syntax="key ...",
)
def cmd_sunion(cx: Call, args: Args) -> Reply:
    return set().union(*_sets(cx, args[1:]))


@command(
    "SDIFF",
    -2,
    "readonly",
    keys=(1, -1, 1),
    group=SET,
    summary="Members of the first set in no other",
    syntax="key ...",
)
def cmd_sdiff(cx: Call, args: Args) -> Reply:
    first, *rest = _sets(cx, args[1:])
    return first.difference(*rest)


@command(
    "SMOVE",
    4,
    "write fast",
    keys=(1, 2, 1),
    group=SET,
    summary="Move a member from one set to another",
    syntax="source destination member",
    decides=True,
)
def cmd_smove(cx: Call, args: Args) -> Reply:
    source, destination, member = args[1], args[2], args[3]
    current = _read(cx, source)
    if current is None:
        return 0  # as Redis: whatever the destination holds
    target = _read(cx, destination)  # WRONGTYPE before anything moves
    cx.check_size(destination, "key")  # and a key too large for it
    if member not in current:
        return 0
    if source == destination:
        return 1
    _remove(cx, source, current, {member}, b"srem")
    added = (target is None or member not in target) and _add(cx, destination, [member]) > 0
    if added and cx.keyspace.notifying:
        cx.notify(NOTIFY_SET, b"sadd", destination)
    return 1
