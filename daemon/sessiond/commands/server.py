"""Server commands: INFO CONFIG COMMAND DBSIZE FLUSHDB FLUSHALL TIME."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Awaitable, Iterable
from typing import Any

from .. import REDIS_COMPAT_VERSION, __version__
from ..config import flatten
from ..keyspace import Keyspace
from ..protocol import OK, Error, Status, Verbatim
from . import errors
from .docs import doc_fields
from .registry import REGISTRY, SERVER, Args, Call, Command, Reply, command
from .util import glob_to_regex, text

# ------------------------------------------------------------------- INFO

# INFO arguments that mean every section.
_EVERY_SECTION = frozenset({"default", "all", "everything"})


def total_commands(cx: Call) -> int:
    """Commands run so far, summed at read time (nothing extra per command)."""
    stats = cx.state.stats
    return sum(c.calls for c in stats.commands.values()) + stats.server.unknown.calls


def info_text(cx: Call, section: bytes | None) -> str:
    state = cx.state
    config = state.config
    cache = cx.keyspace.memory_stats()
    stats = state.stats.server
    persistent = cx.keyspace.persistent
    uptime = int(time.monotonic() - state.started_monotonic)
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
            ("unix_socket", state.socket_path),
            ("config_file", config.source),
        ],
        "clients": [
            ("connected_clients", len(state.clients)),
            ("maxclients", config.limits.max_clients),
            ("blocked_clients", 0),
        ],
        "memory": [
            ("used_memory", cache.memory_bytes),
            ("maxmemory", cache.max_memory),
            ("maxmemory_policy", "allkeys-lru"),
            ("max_sessions", cache.max_sessions),
        ],
        "persistence": [
            ("loading", 0),
            ("backend", config.persistence.backend if persistent else "none"),
            ("durability", config.persistence.durability),
            ("warm_start_sessions", cx.keyspace.warmed),
        ],
        "stats": [
            ("total_connections_received", stats.connections_total),
            ("total_commands_processed", total_commands(cx)),
            ("rejected_connections", sum(stats.rejected.values())),
            ("expired_keys", cache.expirations),
            ("evicted_keys", cache.evictions),
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
    name = None if section is None else text(section).lower()
    if name is None or name in _EVERY_SECTION:
        wanted = sections
    else:
        wanted = [name] if name in sections else []
    if "keyspace" in wanted:  # a whole-keyspace count: only when asked for
        keys, expires = cx.counts()
        if keys:
            sections["keyspace"].append(("db0", f"keys={keys},expires={expires},avg_ttl=0"))
    parts = []
    for title in wanted:
        heading = "CPU" if title == "cpu" else title.capitalize()
        lines = [f"# {heading}"] + [f"{k}:{v}" for k, v in sections[title]]
        parts.append("\r\n".join(lines) + "\r\n")
    return "\r\n".join(parts)


def _info_count_ahead(keyspace: Keyspace, args: Args) -> Awaitable[object] | None:
    """The store's counts if INFO with these arguments has a keyspace section."""
    names = [text(a).lower() for a in args[1:]] or ["default"]
    if any(n in _EVERY_SECTION or n == "keyspace" for n in names):
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
    if len(args) > 2:
        return Verbatim("\r\n".join(filter(None, (info_text(cx, a) for a in args[1:]))))
    return Verbatim(info_text(cx, args[1] if len(args) == 2 else None))


# ----------------------------------------------------------------- CONFIG


def _redis_config(cx: Call) -> dict[str, Any]:
    """Redis' own names for the settings tools such as redis-benchmark ask for."""
    config = cx.state.config
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


@command(
    "CONFIG",
    -2,
    "noscript",
    group=SERVER,
    summary="Read the effective config",
    subcommands={
        "GET": ("parameter ...", "The effective value of config parameters"),
        "SET": ("parameter value", "Not supported: edit the config file"),
        "RESETSTAT": ("", "Accepted and ignored"),
    },
)
def cmd_config(cx: Call, args: Args) -> Reply:
    sub = args[1].upper()
    if sub == b"GET" and len(args) >= 3:
        flat = {**flatten(cx.state.config), **_redis_config(cx)}
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
    raise errors.unknown_subcommand(text(args[1]), "CONFIG")


# ---------------------------------------------------------------- COMMAND


def _command_info(cmd: Command) -> list[Any]:
    return [
        cmd.name.lower(),
        cmd.arity,
        {Status(f) for f in cmd.flags},
        cmd.first_key,
        cmd.last_key,
        cmd.step,
        {Status(f"@{cmd.group}")},
        [],
        [],
        [],
    ]


def _declared(name: bytes) -> Command | None:
    return REGISTRY.get(name.decode("utf-8", "replace").upper())


@command(
    "COMMAND",
    -1,
    group=SERVER,
    summary="Command introspection",
    subcommands={
        "COUNT": ("", "Number of commands"),
        "DOCS": ("[command-name ...]", "Documentary information about commands"),
        "INFO": ("[command-name ...]", "Information about commands"),
        "LIST": ("", "Names of all commands"),
        "GETKEYS": ("command [arg ...]", "The keys of a full command"),
    },
)
def cmd_command(cx: Call, args: Args) -> Reply:
    if len(args) == 1:
        return [_command_info(c) for c in REGISTRY.values()]
    sub = args[1].upper()
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
                **doc_fields(c.name),
            }
            for c in found
            if c is not None
        }
    if sub == b"LIST":
        return [c.name.lower() for c in REGISTRY.values()]
    if sub == b"GETKEYS" and len(args) > 2:
        target = _declared(args[2])
        if target is None:
            raise Error("ERR Invalid command specified")
        return target.keys(args[2:])
    raise errors.unknown_subcommand(text(args[1]), "COMMAND")


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
