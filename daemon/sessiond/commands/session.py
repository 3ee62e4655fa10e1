"""sessiond's own session commands: SESSION.CREATE SESSION.INFO
SESSION.INVALIDATE SESSION.LIST."""

from __future__ import annotations

import math
import secrets

from .. import values
from ..cache import DEFAULT
from ..keyevents import NOTIFY_GENERIC, NOTIFY_KEY_MISS, NOTIFY_STRING
from . import errors
from .registry import SESSION, Args, Call, Reply, command
from .util import int_arg, options, text


@command(
    "SESSION.CREATE",
    -1,
    "write",
    group=SESSION,
    summary="Create a session with a random id",
    syntax="[CONTEXT context] [TTL seconds] [STATE value]",
)
def cmd_session_create(cx: Call, args: Args) -> Reply:
    context: str | None = None
    ttl: float | None = None
    state = b""
    for opt, value in options(args, 1):
        if opt == b"CONTEXT":
            context = text(value)
        elif opt == b"TTL":
            seconds = int_arg(value)
            if seconds < 0:
                raise errors.invalid_expire("session.create")
            ttl = float(seconds)  # 0: never expires
        elif opt == b"STATE":
            cx.check_size(value)
            state = value
        else:
            raise errors.syntax()
    session_id = secrets.token_urlsafe(24).encode()
    cx.set(session_id, state, DEFAULT if ttl is None else ttl, context_id=context)
    if cx.keyspace.notifying:  # as SET [EX] would tell it
        cx.notify(NOTIFY_STRING, b"set", session_id)
        if ttl:
            cx.notify(NOTIFY_GENERIC, b"expire", session_id)
    return session_id


@command(
    "SESSION.INFO",
    2,
    "readonly",
    keys=(1, 1, 1),
    group=SESSION,
    summary="Session metadata",
    syntax="key",
)
def cmd_session_info(cx: Call, args: Args) -> Reply:
    key = args[1]
    entry = cx.peek(key)
    if entry is None:
        if cx.keyspace.notifying:
            cx.notify(NOTIFY_KEY_MISS, b"keymiss", key)
        return None
    where = "memory" if cx.in_memory(key) else "store"
    now = cx.now()
    remaining = entry.remaining(now)
    return {
        "context": entry.context_id or "",
        "created_at": entry.created_at,
        "updated_at": entry.updated_at,
        "ttl": -1 if remaining is None else math.ceil(remaining),
        "idle": max(0.0, now - entry.accessed_at),
        "size": values.size(entry.value),
        "where": where,
    }


@command(
    "SESSION.INVALIDATE",
    2,
    "write",
    keys=(1, 1, 1),
    group=SESSION,
    summary="Drop a session from memory, keep it in the store",
    syntax="key",
    load=False,
)
def cmd_session_invalidate(cx: Call, args: Args) -> Reply:
    return int(cx.invalidate(args[1]))


@command(
    "SESSION.LIST",
    -1,
    "readonly",
    group=SESSION,
    summary="Session ids in memory, most recently used first",
    syntax="[CONTEXT context] [COUNT count]",
)
def cmd_session_list(cx: Call, args: Args) -> Reply:
    context: str | None = None
    count: int | None = None
    for opt, value in options(args, 1):
        if opt == b"CONTEXT":
            context = text(value)
        elif opt == b"COUNT":
            count = int_arg(value)
            if count < 0:
                raise errors.syntax()
        else:
            raise errors.syntax()
    return cx.recent(context, count)
