"""Server commands: INFO CONFIG COMMAND DBSIZE FLUSHDB FLUSHALL TIME ROLE LASTSAVE
MONITOR SHUTDOWN ACL."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, Final

import structlog

from ..config import flatten
from ..keyevents import LETTERS, parse_events
from ..keyspace import Keyspace
from ..protocol import OK, Error, Status, Verbatim
from . import errors
from .docs import doc_fields
from .info import info_text, reset_stats, wanted_sections
from .registry import (
    CONNECTION,
    GENERIC,
    HASH,
    PUBSUB,
    REGISTRY,
    SCRIPTING,
    SERVER,
    SESSION,
    SET,
    STRING,
    TRANSACTIONS,
    Args,
    Call,
    Command,
    Reply,
    arity_fits,
    command,
    subcommand,
    subcommand_error,
)
from .state import REPLY_OFF, ServerState
from .util import glob_to_regex, help_reply, text

log = structlog.get_logger("sessiond.commands")

# ------------------------------------------------------------------- INFO


def _info_count_ahead(keyspace: Keyspace, args: Args) -> Awaitable[object] | None:
    """The store's counts if INFO with these arguments has a keyspace section."""
    if "keyspace" in wanted_sections([text(a).lower() for a in args[1:]]):
        return keyspace.count_ahead()
    return None


@command(
    "INFO",
    -1,
    group=SERVER,
    summary="Server information",
    syntax="[section ...]",
    ahead=_info_count_ahead,
)
def cmd_info(cx: Call, args: Args) -> Reply:
    return Verbatim(info_text(cx, [text(a).lower() for a in args[1:]]))


# ----------------------------------------------------------------- CONFIG


def _redis_config(cx: Call) -> dict[str, Any]:
    """Redis' own names for the settings tools such as redis-benchmark and
    redis_exporter ask for. The store is sessiond's append-only file:
    ``appendfsync`` is ``always`` under ``durability: always``, and
    ``everysec``, the nearest of Redis' values, under ``batch`` (which
    commits every ``flush_interval``, 100 ms by default)."""
    config = cx.state.config
    persistent = cx.keyspace.persistent
    slowlog = config.slowlog
    return {
        "save": "",
        "appendonly": "yes" if persistent else "no",
        "appendfsync": (
            "no"
            if not persistent
            else "always"
            if config.persistence.durability == "always"
            else "everysec"
        ),
        "slowlog-log-slower-than": (
            int(slowlog.log_slower_than * 1_000_000) if slowlog.log_slower_than >= 0 else -1
        ),
        "slowlog-max-len": slowlog.max_len,
        "latency-monitor-threshold": int(config.latency.monitor_threshold * 1000),
        "databases": 1,
        "maxclients": config.limits.max_clients,
        "maxmemory": config.cache.max_memory,
        "maxmemory-policy": "allkeys-lru",
        "timeout": int(config.limits.client_idle_timeout),
        "proto-max-bulk-len": config.limits.max_value_size,
        "client-query-buffer-limit": config.limits.max_request_size,
        # What CONFIG SET made it, else the config file's value.
        "notify-keyspace-events": cx.state.pubsub.events_text,
        "pubsub.notify_keyspace_events": cx.state.pubsub.events_text,
    }


# The one setting CONFIG SET changes: the running value, until the config
# file's own value for it changes or the daemon restarts (docs/configuration.md).
_SETTABLE = (b"notify-keyspace-events", b"pubsub.notify_keyspace_events")


def _config_set(cx: Call, args: Args) -> Reply:
    if len(args) % 2:  # not name-value pairs (at least one: CONFIG SET's arity)
        raise errors.syntax()
    pairs = [(args[i].lower(), args[i + 1]) for i in range(2, len(args), 2)]
    for name, _ in pairs:
        if name not in _SETTABLE:
            raise Error(
                f"ERR CONFIG SET {text(name)} is not supported: only notify-keyspace-events "
                "may be set; edit the config file for the rest, sessiond reloads it"
            )
    if len(pairs) > 1:
        raise Error(
            f"ERR CONFIG SET failed (possibly related to argument '{text(pairs[1][0])}') - "
            "duplicate parameter"
        )
    name, value = pairs[0]
    flags = parse_events(text(value))
    if flags is None:
        raise Error(
            f"ERR CONFIG SET failed (possibly related to argument '{text(name)}') - "
            f"Invalid event class character. Use '{LETTERS}'."
        )
    hub = cx.state.pubsub
    old = hub.events_text
    hub.set_events(flags)
    log.info(
        "config_set",
        parameter="notify-keyspace-events",
        old=old,
        new=hub.events_text,
        client_id=cx.client.id,
    )
    return OK


def _config_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


# No REWRITE: the config file is the operator's, and a reload applies it.
_CONFIG_HELP = [
    "GET <pattern>",
    "    Return parameters matching the glob-like <pattern> and their values.",
    "SET notify-keyspace-events <value>",
    "    Set the keyspace events notified, the one parameter CONFIG SET changes;",
    "    edit the config file for the others: the daemon reloads it.",
    "RESETSTAT",
    "    Reset statistics reported by the INFO command.",
]


@command(
    "CONFIG",
    -2,
    "noscript",
    group=SERVER,
    summary="Read the effective config",
    admin_subcommands="GET SET RESETSTAT",
    subcommands={
        "GET": (-3, "parameter ...", "The effective value of config parameters"),
        "SET": (-4, "parameter value", "Set notify-keyspace-events, the one parameter it sets"),
        "RESETSTAT": (2, "", "Reset INFO's counters (Prometheus' keep counting)"),
        "HELP": (2, "", "Show this help"),
    },
)
def cmd_config(cx: Call, args: Args) -> Reply:
    sub = subcommand(args, "CONFIG")
    if sub == b"GET":
        flat = {**flatten(cx.state.config), **_redis_config(cx)}
        out: dict[str, Any] = {}
        for pattern in args[2:]:
            rx = glob_to_regex(pattern.lower())
            for key, value in flat.items():
                if rx.match(key.encode()):
                    out[key] = _config_value(value)
        return out
    if sub == b"SET":
        return _config_set(cx, args)
    if sub == b"RESETSTAT":
        reset_stats(cx)
        return OK
    return help_reply("CONFIG", _CONFIG_HELP)


# ---------------------------------------------------------------- COMMAND


# The ACL category of each group's commands, as Redis names it (server
# commands have none of their own; sessiond's are @session).
_GROUP_CATEGORY = {
    CONNECTION: "connection",
    STRING: "string",
    GENERIC: "keyspace",
    HASH: "hash",
    SET: "set",
    TRANSACTIONS: "transaction",
    PUBSUB: "pubsub",
    SCRIPTING: "scripting",
    SESSION: "session",
}
# Commands whose category is not their group's (Redis files WAIT and WAITAOF
# under "generic" and gives them @connection).
_OWN_CATEGORY = {"WAIT": "connection", "WAITAOF": "connection"}
# Redis 7.2's categories of a command beyond its group's and its flags'.
_MORE_CATEGORIES = {
    "INFO": ("dangerous",),
    "COMMAND": ("connection",),
    "DBSIZE": ("keyspace",),
    "FLUSHDB": ("keyspace", "dangerous"),
    "FLUSHALL": ("keyspace", "dangerous"),
    "KEYS": ("dangerous",),
    "ROLE": ("admin", "dangerous"),
    "LASTSAVE": ("admin", "dangerous"),
}


def acl_categories(cmd: Command) -> list[str]:
    """``cmd``'s ACL categories (COMMAND INFO, COMMAND LIST FILTERBY ACLCAT):
    its group's and those Redis adds, then those its flags imply, as Redis'
    setImplicitACLCategories derives them. A container command (CLIENT,
    OBJECT...) gets them like any other: Redis gives the container only
    @slow and its ``parent|sub`` entries theirs, which COMMAND does not list."""
    own = _OWN_CATEGORY.get(cmd.name) or _GROUP_CATEGORY.get(cmd.group)
    found = [own] if own else []
    found += _MORE_CATEGORIES.get(cmd.name, ())
    flags = cmd.flags
    if "write" in flags:
        found.append("write")
    if "readonly" in flags and cmd.group != SCRIPTING:
        found.append("read")
    if "admin" in flags:
        found += ("admin", "dangerous")
    if "pubsub" in flags and "pubsub" not in found:
        found.append("pubsub")
    found.append("fast" if "fast" in flags else "slow")
    return found


def _command_info(cmd: Command) -> list[Any]:
    """COMMAND INFO's entry for ``cmd``; a container's lists its
    subcommands' entries last, as Redis 7 does."""
    return [
        cmd.name.lower(),
        cmd.arity,
        {Status(f) for f in cmd.flags},
        cmd.first_key,
        cmd.last_key,
        cmd.step,
        {Status(f"@{c}") for c in acl_categories(cmd)},
        [],
        [],
        [_command_info(_subcommand(cmd, sub)) for sub in cmd.subcommands],
    ]


def _subcommand(cmd: Command, sub: str) -> Command:
    """Subcommand ``sub`` (upper case) of container ``cmd`` as a command of
    its own, named ``parent|sub`` as in Redis: its arity; the container's
    flags, with ``admin`` where Redis flags the subcommand so; a key in
    second place where its syntax starts with one (OBJECT ENCODING key)."""
    syntax, summary = cmd.subcommands[sub]
    flags = cmd.flags
    if sub.encode() in cmd.admin_subcommands and "admin" not in flags:
        flags = (*flags, "admin")
    first = 2 if syntax.split(" ", 1)[0] == "key" else 0
    return replace(
        cmd,
        name=f"{cmd.name}|{sub}",
        arity=cmd.subcommand_arity[sub.encode()],
        flags=flags,
        first_key=first,
        last_key=first,
        step=1 if first else 0,
        summary=summary,
        syntax=syntax,
        subcommands={},
    )


def _command_list(args: Args) -> list[str]:
    """COMMAND LIST [FILTERBY MODULE name | ACLCAT category | PATTERN pattern],
    with Redis' syntax: one filter, last. Its names are COMMAND's (no
    ``parent|sub`` entries: COMMAND lists no subcommands)."""
    names = [c.name.lower() for c in REGISTRY.values()]
    if len(args) == 2:
        return names
    if len(args) != 5 or args[2].upper() != b"FILTERBY":
        raise errors.syntax()
    kind, value = args[3].upper(), args[4]
    if kind == b"MODULE":
        return []  # sessiond loads no modules
    if kind == b"ACLCAT":
        category = text(value).lower()
        return [c.name.lower() for c in REGISTRY.values() if category in acl_categories(c)]
    if kind == b"PATTERN":
        # Redis matches without case (stringmatchlen's nocase); names are lower case.
        rx = glob_to_regex(value.lower())
        return [name for name in names if rx.match(name.encode())]
    raise errors.syntax()


def _declared(name: bytes) -> Command | None:
    """The command named ``name``, or ``parent|sub`` a container's subcommand."""
    parent, bar, sub = name.decode("utf-8", "replace").upper().partition("|")
    cmd = REGISTRY.get(parent)
    if not bar or cmd is None:
        return cmd
    return _subcommand(cmd, sub) if sub in cmd.subcommands else None


_COMMAND_HELP = [
    "(no subcommand)",
    "    Return details about all commands.",
    "COUNT",
    "    Return the total number of commands in this server.",
    "LIST [FILTERBY (MODULE <module-name>|ACLCAT <category>|PATTERN <pattern>)]",
    "    Return a list of all commands in this server, or of those that match",
    "    the filter.",
    "INFO [<command-name> ...]",
    "    Return details about multiple commands.",
    "    If no command names are given, documentation details for all",
    "    commands are returned.",
    "DOCS [<command-name> ...]",
    "    Return documentation details about multiple commands.",
    "    If no command names are given, documentation details for all",
    "    commands are returned.",
    "GETKEYS <full-command>",
    "    Return the keys from a full command.",
]


@command(
    "COMMAND",
    -1,
    group=SERVER,
    summary="Command introspection",
    subcommands={
        "COUNT": (2, "", "Number of commands"),
        "DOCS": (-2, "[command-name ...]", "Documentary information about commands"),
        "INFO": (-2, "[command-name ...]", "Information about commands"),
        "LIST": (
            -2,
            "[FILTERBY (MODULE module-name | ACLCAT category | PATTERN pattern)]",
            "Names of all commands, or of those that match a filter",
        ),
        "GETKEYS": (-3, "command [arg ...]", "The keys of a full command"),
        "HELP": (2, "", "Show this help"),
    },
)
def cmd_command(cx: Call, args: Args) -> Reply:
    if len(args) == 1:
        return [_command_info(c) for c in REGISTRY.values()]
    sub = subcommand(args, "COMMAND")
    if sub == b"COUNT":
        return len(REGISTRY)
    if sub == b"INFO":
        if len(args) == 2:
            return [_command_info(c) for c in REGISTRY.values()]
        return [None if (c := _declared(n)) is None else _command_info(c) for n in args[2:]]
    if sub == b"DOCS":
        found = list(REGISTRY.values()) if len(args) == 2 else [_declared(n) for n in args[2:]]
        return {
            c.name.lower(): {
                "summary": c.summary,
                "since": "1.0.0",
                "group": c.group,
                "complexity": "O(1)",
                **doc_fields(c),
            }
            for c in found
            if c is not None
        }
    if sub == b"LIST":
        return _command_list(args)
    if sub == b"GETKEYS":
        return _getkeys(args[2:])
    return help_reply("COMMAND", _COMMAND_HELP)


_NO_KEYS = "ERR The command has no key arguments"


def _getkeys(words: Args) -> list[bytes]:
    """COMMAND GETKEYS: the keys of the command ``words``, with Redis 7.2's
    checks in its order: the command (a container's subcommand) exists, has
    key arguments, is given a number of arguments its arity allows."""
    target = REGISTRY.get(text(words[0]).upper())  # no parent|sub form here, as in Redis
    if target is None:
        raise Error("ERR Invalid command specified")
    syntax: str | None = None  # a container's subcommand's
    if target.subcommands:
        if len(words) == 1:
            raise Error(_NO_KEYS)  # the container itself has none
        declared = target.subcommands.get(text(words[1]).upper())
        if declared is None:
            raise Error("ERR Invalid command specified")
        syntax = declared[0]
    if target.first_key == 0 and target.load is None:
        raise Error(_NO_KEYS)
    if not arity_fits(target.arity, len(words)):
        raise Error("ERR Invalid number of arguments specified for command")
    keys = target.keys(words)
    if not keys and syntax is not None:
        # A subcommand without keys (OBJECT HELP), or one whose key is missing.
        if syntax.split(" ", 1)[0] == "key":
            raise Error("ERR Invalid number of arguments specified for command")
        raise Error(_NO_KEYS)
    return keys


# ------------------------------------------------------------ the keyspace


@command(
    "DBSIZE",
    1,
    "readonly fast",
    group=SERVER,
    summary="Number of keys",
    ahead=lambda keyspace, args: keyspace.count_ahead(),
)
def cmd_dbsize(cx: Call, args: Args) -> Reply:
    return cx.counts()[0]


def _flush(cx: Call, args: Args) -> Reply:
    if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
        raise errors.syntax()
    cx.flush()
    return OK


# noscript, unlike Redis: a script stopped by its time limit is rolled back,
# and no undo log could give back a whole store.
command(
    "FLUSHDB",
    -1,
    "write noscript",
    group=SERVER,
    summary="Delete all keys",
    syntax="[ASYNC | SYNC]",
)(_flush)
command(
    "FLUSHALL",
    -1,
    "write noscript",
    group=SERVER,
    summary="Delete all keys",
    syntax="[ASYNC | SYNC]",
)(_flush)


@command("TIME", 1, "fast", group=SERVER, summary="Server time")
def cmd_time(cx: Call, args: Args) -> Reply:
    now = time.time()
    seconds = int(now)
    return [str(seconds).encode(), str(int((now - seconds) * 1_000_000)).encode()]


@command("ROLE", 1, "noscript loading stale fast", group=SERVER, summary="Replication role")
def cmd_role(cx: Call, args: Args) -> Reply:
    # A primary with no replicas, as a lone Redis answers (clients and
    # tools ask before they trust a connection with writes).
    return [b"master", 0, []]


@command("LASTSAVE", 1, "loading stale fast", group=SERVER, summary="Time of the last save")
def cmd_lastsave(cx: Call, args: Args) -> Reply:
    # Every write is in the store when it is acknowledged; the start, as
    # INFO's rdb_last_save_time says.
    return int(cx.state.started_at)


@command(
    "MONITOR",
    1,
    "admin noscript loading stale",
    group=SERVER,
    summary="Stream every command the daemon receives",
)
def cmd_monitor(cx: Call, args: Args) -> Reply:
    # Until the connection closes or RESET: each request any client sends is
    # written to this one as it arrives (monitor_line), in Redis' format.
    client = cx.client
    client.monitoring = True
    cx.state.monitors[client.id] = client
    return OK


# What a byte of an argument becomes in a MONITOR line: as Redis' sdscatrepr
# writes it (printable ASCII as it is, the usual escapes, else \xHH).
_ESCAPES = {
    ord("\\"): b"\\\\",
    ord('"'): b'\\"',
    10: b"\\n",
    13: b"\\r",
    9: b"\\t",
    7: b"\\a",
    8: b"\\b",
}
_REPR: Final[tuple[bytes, ...]] = tuple(
    _ESCAPES.get(i, bytes([i]) if 0x20 <= i < 0x7F else b"\\x%02x" % i) for i in range(256)
)
_PLAIN = re.compile(rb"[ !#-\[\]-~]*\Z")
# Arguments Redis shows as "(redacted)": AUTH's, and HELLO's after AUTH.
_REDACTED = b'"(redacted)"'


def _quoted(arg: bytes) -> bytes:
    if _PLAIN.match(arg):
        return b'"' + arg + b'"'
    return b'"' + b"".join([_REPR[c] for c in arg]) + b'"'


def monitor_line(source: bytes, args: Args, now: float) -> bytes:
    """One MONITOR line for a request with ``args``: the time, the database
    and where it came from (``source``: ``unix:`` and the socket's path, as
    Redis shows a Unix-socket client, or ``lua``), each argument quoted,
    passwords redacted."""
    name = args[0].upper()
    if name == b"AUTH":
        words = [_quoted(args[0])] + [_REDACTED] * (len(args) - 1)
    else:
        words = [_quoted(arg) for arg in args]
        if name == b"HELLO":
            # Its options as HELLO reads them, in pairs after the version: an
            # option's value may itself be the word AUTH.
            i = 2 if len(args) > 1 and args[1].isdigit() else 1
            while i < len(args):
                option = args[i].upper()
                if option == b"AUTH":
                    words[i + 1 : i + 3] = [_REDACTED] * len(words[i + 1 : i + 3])
                    i += 3
                else:
                    i += 2 if option == b"SETNAME" else 1
    head = b"+%.6f [0 %s] " % (now, source)
    return head + b" ".join(words) + b"\r\n"


def feed_monitors(state: ServerState, cmd: Command, args: Args, *, lua: bool = False) -> None:
    """Write the request to every MONITOR client (dispatch, for any request
    once a client monitors; ``lua``: a script's redis.call, as it runs), but
    for the administrative ones Redis hides, and a container's subcommand
    Redis refuses before running it (one the container does not have, or
    with the wrong number of arguments), which it never shows."""
    if "admin" in cmd.flags:
        return
    # Alone (COMMAND) the container itself runs.
    if (
        cmd.subcommands
        and len(args) > 1
        and (args[1].upper() in cmd.admin_subcommands or subcommand_error(cmd, args) is not None)
    ):
        return
    source = b"lua" if lua else b"unix:" + state.socket_path.encode()
    line = monitor_line(source, args, time.time())
    for client in list(state.monitors.values()):
        push = client.push
        if push is not None:
            push(line)


@command(
    "SHUTDOWN",
    -1,
    "admin noscript loading stale no_multi allow_busy",
    group=SERVER,
    summary="Stop the daemon, as SIGTERM does",
    syntax="[NOSAVE | SAVE] [NOW] [FORCE] [ABORT]",
)
def cmd_shutdown(cx: Call, args: Args) -> Reply:
    # Every write is in the store when it is acknowledged and every stop is
    # the clean one SIGTERM makes: SAVE, NOSAVE, NOW and FORCE change nothing,
    # and no shutdown waits to be aborted. Checked as Redis 7.0 checks them.
    words = {arg.upper() for arg in args[1:]}
    if not words <= _SHUTDOWN_OPTIONS:
        raise errors.syntax()
    abort = b"ABORT" in words
    if (abort and len(words) > 1) or {b"SAVE", b"NOSAVE"} <= words:
        raise errors.syntax()
    if abort:
        raise Error("ERR No shutdown in progress.")
    stop = cx.state.on_shutdown
    if stop is None:
        raise Error("ERR Errors trying to SHUTDOWN. Check logs.")
    stop(cx.client)
    # As Redis: no reply, the connection closes (redis-py and redis-cli take
    # that as success).
    cx.client.reply_mode = REPLY_OFF
    cx.client.close_after_reply = True
    return OK


_SHUTDOWN_OPTIONS = frozenset((b"NOSAVE", b"SAVE", b"NOW", b"FORCE", b"ABORT"))

# ---------------------------------------------------------------------- ACL

# Redis 7.0's ACL categories in ACL CAT's order, and sessiond's own.
_CATEGORIES = [
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "bitmap",
    "hyperloglog",
    "geo",
    "stream",
    "pubsub",
    "admin",
    "fast",
    "slow",
    "blocking",
    "dangerous",
    "connection",
    "transaction",
    "scripting",
    "session",
]

_ACL_HELP = [
    "CAT [<category>]",
    "    List all commands that belong to <category>, or all command categories",
    "    when no category is specified.",
    "USERS",
    "    List all the registered usernames.",
    "WHOAMI",
    "    Return the current connection username.",
]


@command(
    "ACL",
    -2,
    "noscript loading stale",
    group=SERVER,
    summary="Access control: the one user there is",
    admin_subcommands="USERS",
    subcommands={
        "CAT": (-2, "[category]", "The ACL categories, or a category's commands"),
        "USERS": (2, "", "The users: default"),
        "WHOAMI": (2, "", "The connection's user: default"),
        "HELP": (2, "", "Show this help"),
    },
)
def cmd_acl(cx: Call, args: Args) -> Reply:
    # One user, "default", whom security.password (AUTH) admits to every
    # command: the subcommands that read users and categories answer; those
    # that would change users are unknown (docs/commands.md).
    sub = subcommand(args, "ACL")
    if sub == b"WHOAMI":
        return b"default"
    if sub == b"USERS":
        return [b"default"]
    if sub == b"CAT":
        if len(args) == 2:
            return _CATEGORIES
        if len(args) > 3:
            raise Error(
                f"ERR unknown subcommand or wrong number of arguments for '{text(args[1])}'. "
                "Try ACL HELP."
            )
        category = text(args[2]).lower()
        if category not in _CATEGORIES:
            raise Error(f"ERR Unknown category '{text(args[2])}'")
        return [c.name.lower() for c in REGISTRY.values() if category in acl_categories(c)]
    return help_reply("ACL", _ACL_HELP)
