"""Typed configuration: YAML file -> validated frozen dataclasses (docs/configuration.md).

Every problem is reported with the dotted path of its key, all at once, so an
operator fixes a file in one pass: ``cache.max_sessions: must be a positive
integer, got -5``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import os
import re
import reprlib
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .keyevents import LETTERS, parse_events

DEFAULT_LOCATIONS = (Path("config/sessiond.yaml"), Path("/etc/sessiond/sessiond.yaml"))

# Limits on what a config file may cost to read (issue 16). The annotated examples
# are 2-4 KB; 64 KiB is room for a config that comments every key at length, and
# keeps the worst case of PyYAML's pure-Python parser, which this needs for the
# node count below, to about half a second.
MAX_CONFIG_BYTES = 64 * 1024
# YAML nodes after alias expansion. A full config is about 100 (plus one per id in
# allowed_uids/allowed_gids). Counting the expansion, not the aliases, is what
# stops a "billion laughs" file: its few nodes are cheap to parse, but anything
# that walks the value (validation, the repr in an error message, CONFIG GET)
# pays for every expanded one. Anchors and aliases within the limit still work.
MAX_YAML_NODES = 10_000
# Nesting depth of collections: a config is 3 deep; the composer recurses per level.
MAX_YAML_DEPTH = 32
# What one error may print: a config error is read in a log line or a terminal.
MAX_PROBLEMS = 20
MAX_PROBLEM_CHARS = 300
_SHOWN = reprlib.Repr()
_SHOWN.maxstring = 60
_SHOWN.maxother = 60
_SHOWN.maxlong = 40
_SHOWN.maxlist = _SHOWN.maxdict = 6
_SHOWN.maxlevel = 2


def _show(value: Any) -> str:
    """``repr(value)``, cut short: a value from the file may be 64 KiB long, or
    expand (aliases) to far more."""
    return _SHOWN.repr(value)


def _bounded(problem: str) -> str:
    if len(problem) <= MAX_PROBLEM_CHARS:
        return problem
    return problem[: MAX_PROBLEM_CHARS - 3] + "..."


class ConfigError(Exception):
    """A config that cannot be used; ``problems`` has one line per problem (at
    most :data:`MAX_PROBLEMS` lines of at most :data:`MAX_PROBLEM_CHARS`)."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        shown = [_bounded(p) for p in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"... and {len(problems) - MAX_PROBLEMS} more problems")
        self.problems = shown
        self.source = source
        super().__init__("\n".join(shown))


@dataclass(frozen=True, slots=True)
class SocketConfig:
    path: Path = Path("/run/sessiond/sessiond.sock")
    mode: int = 0o660


@dataclass(frozen=True, slots=True)
class CacheConfig:
    max_sessions: int = 10_000
    max_memory: int = 0
    default_ttl: float = 3600.0
    sliding: bool = True
    sweep_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class PersistenceConfig:
    backend: Literal["sqlite", "postgresql", "none"] = "sqlite"
    path: Path = Path("/var/lib/sessiond/sessions.db")
    durability: Literal["always", "batch"] = "always"
    flush_interval: float = 0.1
    warm_start: bool = True
    dsn: str | None = field(default=None, repr=False)
    password_file: Path | None = None
    pool_size: int = 8
    timeout: float = 2.0
    connect_timeout: float = 30.0
    heartbeat_interval: float = 0.5
    renew_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    listen: str = "127.0.0.1:9477"

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_clients: int = 1024
    max_value_size: int = 1024 * 1024
    max_request_size: int = 8 * 1024 * 1024
    max_output_buffer: int = 64 * 1024 * 1024
    client_idle_timeout: float = 0.0


@dataclass(frozen=True, slots=True)
class SlowlogConfig:
    log_slower_than: float = 0.01  # seconds; negative: the slow log is off
    max_len: int = 128


@dataclass(frozen=True, slots=True)
class LatencyConfig:
    monitor_threshold: float = 0.1  # seconds; 0: the latency monitor is off


@dataclass(frozen=True, slots=True)
class ScriptingConfig:
    time_limit: float = 1.0


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    password: str | None = field(default=None, repr=False)
    allowed_uids: tuple[int, ...] = ()
    allowed_gids: tuple[int, ...] = ()
    # Upper case, ``NAME`` or ``NAME|SUBCOMMAND``, each a command sessiond has.
    disabled_commands: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PubSubConfig:
    notify_keyspace_events: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    socket: SocketConfig = SocketConfig()
    cache: CacheConfig = CacheConfig()
    persistence: PersistenceConfig = PersistenceConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    limits: LimitsConfig = LimitsConfig()
    slowlog: SlowlogConfig = SlowlogConfig()
    latency: LatencyConfig = LatencyConfig()
    scripting: ScriptingConfig = ScriptingConfig()
    security: SecurityConfig = SecurityConfig()
    pubsub: PubSubConfig = PubSubConfig()
    source: str = "built-in defaults"


# ---------------------------------------------------------------- value parsers


class _Invalid(ValueError):
    pass


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# Sizes are plain bytes or IEC binary units: the only spellings every tool reads the same
# way. k/kb/m/mb/g/gb are refused because conventions disagree on them: redis.conf reads
# 1k as 1000 and 1kb as 1024, SI (and GNU coreutils) 1kB as 1000, systemd 1K as 1024, so a
# value copied from one of them would silently be off by 2.4% to 7.4%.
_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_AMBIGUOUS_SIZE_UNITS = {"k": 1, "m": 2, "g": 3}  # with or without a trailing b
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


_DURATION_HINT = "must be a duration (seconds or e.g. 500ms, 30s, 15m, 1h, 7d)"


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string with a unit (``500ms``, ``15m``, ``7d``)."""
    if isinstance(value, bool):
        raise _Invalid(f"{_DURATION_HINT}, got {_show(value)}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise _Invalid(f"{_DURATION_HINT}, got {_show(value)}")
        if value < 0:
            raise _Invalid(f"must be a non-negative duration, got {_show(value)}")
        return float(value)
    if isinstance(value, str):
        m = _NUMBER_UNIT.match(value)
        if m and m.group(2).lower() in _DURATION_UNITS | {"": 1.0}:
            unit = m.group(2).lower()
            seconds = float(m.group(1)) * (_DURATION_UNITS.get(unit, 1.0))
            if math.isfinite(seconds):
                return seconds
    raise _Invalid(f"{_DURATION_HINT}, got {_show(value)}")


_SIZE_HINT = "must be a size (bytes or e.g. 64KiB, 1MiB, 2GiB)"


def _ambiguous_size(value: str, number: str, unit: str) -> str | None:
    """The problem with ``1MB``/``1m``-style sizes, or None for any other unit."""
    power = _AMBIGUOUS_SIZE_UNITS.get(unit.lower().removesuffix("b"))
    if power is None:
        return None
    n = float(number)
    if not math.isfinite(n * 1024**power):  # more digits than a float holds
        return None
    decimal, binary = round(n * 1000**power), round(n * 1024**power)
    iec = f"{number}{unit[0].upper()}iB"
    if unit.lower().endswith("b"):  # redis.conf: kb/mb/gb are binary
        return (
            f'"{value}" is ambiguous: redis.conf reads it as {binary} bytes, '
            f"SI (and earlier sessiond) as {decimal}; write {iec} or {decimal}"
        )
    return (
        f'"{value}" is ambiguous: redis.conf reads it as {decimal} bytes, '
        f"binary (systemd, earlier sessiond) as {binary}; write {decimal} or {iec}"
    )


def parse_size(value: Any) -> int:
    """Bytes from an integer or a string in bytes or IEC units (``64KiB``, ``1MiB``,
    ``2GiB``); ``1MB``, ``1m`` and the like are refused as ambiguous."""
    if isinstance(value, bool):
        raise _Invalid(f"{_SIZE_HINT}, got {_show(value)}")
    if isinstance(value, int):
        if value < 0:
            raise _Invalid(f"must be a non-negative size, got {_show(value)}")
        return value
    if isinstance(value, str):
        m = _NUMBER_UNIT.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            with contextlib.suppress(OverflowError):  # more digits than a float holds
                return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
        if m and (problem := _ambiguous_size(value.strip(), m.group(1), m.group(2))):
            raise _Invalid(problem)
    raise _Invalid(f"{_SIZE_HINT}, got {_show(value)}")


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Invalid(f"must be a positive integer, got {_show(value)}")
    return value


def _positive_size(value: Any) -> int:
    size = parse_size(value)
    if size < 1:
        raise _Invalid(f"must be a positive size, got {_show(value)}")
    return size


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise _Invalid(f"must be a positive duration, got {_show(value)}")
    return seconds


# persistence.timeout's bound: a shared store's host asks about a commit whose
# answer is lost within twice the timeout, and the commit's token is kept
# fifteen minutes after its connection has gone (store/pgsql.py, TOKENS). Five
# minutes leaves room for a daemon run under valgrind (bench/instructions.py).
MAX_STORE_TIMEOUT = 300.0


def _store_timeout(value: Any) -> float:
    seconds = _positive_duration(value)
    if seconds > MAX_STORE_TIMEOUT:
        raise _Invalid(f"must be at most 5m, got {_show(value)}")
    return seconds


def _threshold(value: Any) -> float:
    """A duration, or ``off`` (YAML reads an unquoted ``off`` as false) or a
    negative number as in redis.conf: -1.0, the slow log is off."""
    if value is False or value == "off":
        return -1.0
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        return -1.0
    try:
        return parse_duration(value)
    except _Invalid:
        raise _Invalid(f"{_DURATION_HINT} or off, got {_show(value)}") from None


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Invalid(f"must be a non-negative integer, got {_show(value)}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, got {_show(value)}")
    return value


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise _Invalid(f"must be one of {', '.join(choices)}, got {_show(value)}")
        return str(value)

    return parse


class _LeadingZeroInt(int):
    """An integer YAML read from a scalar with a leading zero (``0660``), which
    PyYAML (YAML 1.1) reads as octal."""


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that remembers which integers were written ``0660``, and
    refuses a document nested deeper than :data:`MAX_YAML_DEPTH` or of more than
    :data:`MAX_YAML_NODES` nodes once its aliases are expanded.

    The composer builds each anchored node once and makes every alias a reference
    to it, so the count is cheap: an alias adds the size its anchor's node had
    when it was composed. An alias of a node still being composed (``&a [*a]``)
    would expand forever and is refused."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> its size, aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in the stubs
        mark: Any = event.start_mark  # the stubs' two Mark types are one to the composer
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # else the composer reports an undefined alias
                size = self._sizes.get(id(target))
                if size is None:
                    raise yaml.composer.ComposerError(None, None, "found a recursive alias", mark)
                self._count(size, mark)
            return super().compose_node(parent, index)
        if self._depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark
            )
        self._count(1, mark)
        before = self._nodes
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._sizes[id(node)] = self._nodes - before + 1
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """A mapping, refusing a key written twice in it (PyYAML keeps the last
        silently: a config manager appending a second ``cache:`` section
        would drop the first without a word). Keys a merge (``<<``) brings in
        may be overridden, as YAML says."""
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = key_node.value
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {seen[key]}): "
                    "the later one would replace it",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def _count(self, nodes: int, mark: Any) -> None:
        self._nodes += nodes
        if self._nodes > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"more than {MAX_YAML_NODES} values once aliases are expanded "
                "(a config has a few hundred)",
                mark,
            )


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    try:
        value: int = loader.construct_yaml_int(node)
    except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
        raise yaml.constructor.ConstructorError(
            None, None, "integer too large", node.start_mark
        ) from None
    if re.fullmatch(r"[-+]?0[0-7_]+", str(node.value)):
        return _LeadingZeroInt(value)
    return value


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _mode(value: Any) -> int:
    # An unquoted 0660 is octal to PyYAML (432) and 660 is decimal; both mean
    # rw-rw----. Which one was written is known, so neither is ambiguous.
    if isinstance(value, _LeadingZeroInt):
        text = oct(value)[2:]
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        raise _Invalid(f'must be an octal permission string such as "0660", got {_show(value)}')
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise _Invalid(f'must be an octal permission string such as "0660", got {_show(value)}')
    return int(text, 8)


def _listen(value: Any) -> str:
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if (
            sep
            and host
            and port.isascii()
            and port.isdigit()
            and len(port) <= 5
            and 0 < int(port) < 65536
        ):
            return value
    raise _Invalid(f"must be host:port such as 127.0.0.1:9477, got {_show(value)}")


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"must be a non-empty path, got {_show(value)}")
    return value


def _optional_password(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _Invalid("must be a non-empty string or null")
    return value


def _dsn(value: Any) -> str | None:
    """A libpq connection string (``host=db1,db2 dbname=sessions user=sessiond``
    or ``postgresql://...``), checked by libpq's own parser; never echoed, it
    may hold a password."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("must be a libpq connection string (key=value pairs or a URI) or null")
    from psycopg import ProgrammingError  # only a config that names a DSN needs libpq
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(value)
    except ProgrammingError as exc:
        # libpq's reason quotes the string; not when it may hold a password.
        reason = "" if "password" in value else f": {' '.join(str(exc).split())}"
        raise _Invalid(f"is not a valid libpq connection string{reason}") from None
    return value


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its password replaced by ``(set)``: what logs and
    ``CONFIG GET`` show."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(dsn)
    except ProgrammingError:
        return "(invalid)"
    if "password" in params:
        params["password"] = "(set)"
    return make_conninfo("", **params)


def _optional_path(value: Any) -> str | None:
    return None if value is None else _path(value)


def _id_list(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise _Invalid(f"must be a list of non-negative integer ids, got {_show(value)}")
    return tuple(value)


# What a client needs to log in, start over and leave, which Redis runs whatever
# its ACL says: disabled, a password would let nobody in.
_ALWAYS_ALLOWED = frozenset({"AUTH", "HELLO", "RESET", "QUIT"})


def _command_list(value: Any) -> tuple[str, ...]:
    """Commands, or subcommands in ACL's ``container|sub`` form, that sessiond
    has: a name it does not know (a typo, a command of a later Redis) would
    otherwise disable nothing without a word."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid(f"must be a list of command names, got {_show(value)}")
    # Only a config that names commands needs their table (as a DSN needs libpq).
    from .commands import REGISTRY

    names: list[str] = []
    for given in value:
        name, bar, sub = given.strip().upper().partition("|")
        cmd = REGISTRY.get(name)
        if cmd is None or (bar and sub not in cmd.subcommands):
            what = "subcommand" if cmd is not None else "command"
            raise _Invalid(f"{_show(given)} is not a {what} sessiond has")
        if name in _ALWAYS_ALLOWED:
            raise _Invalid(
                f"{_show(given)} cannot be disabled: clients need it to log in or out "
                "(Redis' ACL does not deny it either)"
            )
        full = f"{name}|{sub}" if bar else name
        if full not in names:
            names.append(full)
    return tuple(names)


def _keyspace_events(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        wrong = [c for c in value if parse_events(c) is None]
        if not wrong:
            return value
        problem = f"{_show(wrong[0])} is not one"
    else:
        problem = "not a string"
    raise _Invalid(
        f"must be Redis' notify-keyspace-events letters (any of {LETTERS}, "
        f'"" for none), got {_show(value)}: {problem}'
    )


_Parser = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Key:
    """One config key: its parser and its documentation (``sessiond.yaml(5)``, the
    comments of ``check-config`` and of ``config/sessiond.yaml``)."""

    parse: _Parser
    kind: str  # what the value looks like, for people: "size", "duration", "sqlite | none"
    doc: str  # one line
    restart: bool = field(default=False, kw_only=True)  # a reload logs it, a restart applies it
    path: bool = field(default=False, kw_only=True)  # relative to the config file's directory


@dataclass(frozen=True, slots=True)
class Section:
    cls: type[Any]
    doc: str  # one line
    keys: dict[str, Key]


# Every key of the config file, in file order. Defaults are the dataclasses' above.
SCHEMA: dict[str, Section] = {
    "socket": Section(
        SocketConfig,
        "The Unix socket clients connect to.",
        {
            "path": Key(
                _path, "path", "Unix socket the daemon listens on", restart=True, path=True
            ),
            "mode": Key(
                _mode, "octal mode", 'permission bits of the socket file ("0660")', restart=True
            ),
        },
    ),
    "cache": Section(
        CacheConfig,
        "The in-memory LRU cache and session expiry.",
        {
            "max_sessions": Key(
                _positive_int,
                "integer",
                "LRU bound on sessions held in memory (evicted ones stay in the store)",
            ),
            "max_memory": Key(
                parse_size, "size", "bound on bytes of keys+values in memory; 0 = none"
            ),
            "default_ttl": Key(
                parse_duration, "duration", "TTL for sessions written without one; 0 = no expiry"
            ),
            "sliding": Key(_bool, "boolean", "every read or write renews the session's TTL"),
            "sweep_interval": Key(
                _positive_duration, "duration", "how often expired sessions are removed"
            ),
        },
    ),
    "persistence": Section(
        PersistenceConfig,
        "The store every session is written through to: SQLite on this host, or "
        "PostgreSQL shared by a fleet of hosts.",
        {
            "backend": Key(
                _choice("sqlite", "postgresql", "none"),
                "sqlite | postgresql | none",
                "sqlite | postgresql (shared by several hosts: dsn) | none (memory only: "
                "an evicted or expired session is gone)",
                restart=True,
            ),
            "path": Key(
                _path,
                "path",
                "SQLite file (WAL mode: -wal and -shm beside it)",
                restart=True,
                path=True,
            ),
            "durability": Key(
                _choice("always", "batch"),
                "always | batch",
                "always: reply after commit+fsync | batch: commit every flush_interval",
                restart=True,
            ),
            "flush_interval": Key(
                _positive_duration,
                "duration",
                "commit period under durability: batch",
                restart=True,
            ),
            "warm_start": Key(
                _bool, "boolean", "reload the most recently used sessions at start", restart=True
            ),
            "dsn": Key(
                _dsn,
                "libpq string | null",
                "postgresql: libpq connection string, one host or several (failover); "
                "shown without its password; the connections always use client_encoding "
                "UTF8",
                restart=True,
            ),
            "password_file": Key(
                _optional_path,
                "path | null",
                "postgresql: file holding the password (else the DSN's, PGPASSWORD or PGPASSFILE)",
                restart=True,
                path=True,
            ),
            "pool_size": Key(
                _positive_int,
                "integer",
                "postgresql: connections for reads and decisions; a host opens up to pool_size + 3 "
                "(with the writer, the LISTEN connection and a helper's)",
                restart=True,
            ),
            "timeout": Key(
                _store_timeout,
                "duration",
                "postgresql: bound on each database operation (at most 5m); then it fails, "
                "writes get MISCONF",
                restart=True,
            ),
            "connect_timeout": Key(
                parse_duration,
                "duration",
                "postgresql: how long start-up retries an unreachable database before exit 1",
                restart=True,
            ),
            "heartbeat_interval": Key(
                _positive_duration,
                "duration",
                "postgresql: how often notifications are checked; memory is dropped if one is late",
                restart=True,
            ),
            "renew_interval": Key(
                _positive_duration,
                "duration",
                "postgresql: how often TTLs renewed by reads are looked at (each is "
                "written back once it moves the database's deadline by a tenth of the TTL)",
                restart=True,
            ),
        },
    ),
    "metrics": Section(
        MetricsConfig,
        "The Prometheus endpoint.",
        {
            "enabled": Key(_bool, "boolean", "serve HTTP /metrics", restart=True),
            "listen": Key(
                _listen, "host:port", "address of HTTP /metrics for Prometheus", restart=True
            ),
        },
    ),
    "logging": Section(
        LoggingConfig,
        "Log events on stderr.",
        {
            "level": Key(
                _choice("debug", "info", "warning", "error"),
                "debug | info | warning | error",
                "debug | info | warning | error: the least severe level logged",
            ),
            "format": Key(
                _choice("json", "console"),
                "json | console",
                "json (one object per line) | console (for humans)",
            ),
        },
    ),
    "limits": Section(
        LimitsConfig,
        "Per-client and global limits.",
        {
            "max_clients": Key(
                _positive_int,
                "integer",
                'more connections get "-ERR max number of clients reached"',
            ),
            "max_value_size": Key(_positive_size, "size", "largest key or value accepted"),
            "max_request_size": Key(
                _positive_size, "size", "largest pending request buffer per client"
            ),
            "max_output_buffer": Key(
                _positive_size,
                "size",
                "replies queued for a client that does not read; then it is dropped",
            ),
            "client_idle_timeout": Key(
                parse_duration,
                "duration",
                "close connections idle this long (not subscribers); 0 = never",
            ),
        },
    ),
    "slowlog": Section(
        SlowlogConfig,
        "The slow log (SLOWLOG GET): commands that held the event loop long.",
        {
            "log_slower_than": Key(
                _threshold,
                "duration | off",
                "log commands that held the event loop this long; 0 = every command, off = none",
            ),
            "max_len": Key(_non_negative_int, "integer", "entries kept (the oldest go first)"),
        },
    ),
    "latency": Section(
        LatencyConfig,
        "The latency monitor (LATENCY LATEST): event-loop stalls.",
        {
            "monitor_threshold": Key(
                parse_duration,
                "duration",
                "record stalls of the event loop at least this long; 0 = off",
            ),
        },
    ),
    "scripting": Section(
        ScriptingConfig,
        "Lua scripts (EVAL): they run on the event loop, so nothing else runs meanwhile.",
        {
            "time_limit": Key(
                _positive_duration,
                "duration",
                "a script running longer is stopped and its writes are rolled back",
            ),
        },
    ),
    "security": Section(
        SecurityConfig,
        "Who may connect, and what no client may run: with both id lists set, a peer needs "
        "its uid or one of its groups listed.",
        {
            "password": Key(
                _optional_password,
                "string | null",
                "if set, clients must AUTH (or HELLO 3 AUTH default <password>)",
            ),
            "allowed_uids": Key(
                _id_list, "list of uids", "if non-empty, peers with these uids may connect"
            ),
            "allowed_gids": Key(
                _id_list,
                "list of gids",
                "if non-empty, peers in these groups (primary or supplementary) may connect",
            ),
            "disabled_commands": Key(
                _command_list,
                "list of commands",
                "commands no client may run, e.g. [FLUSHALL, SHUTDOWN, CONFIG|SET]: "
                "each gets -NOPERM, as a command ACL denies",
            ),
        },
    ),
    "pubsub": Section(
        PubSubConfig,
        "Publish/subscribe and keyspace notifications.",
        {
            "notify_keyspace_events": Key(
                _keyspace_events,
                "event letters",
                "Redis' notify-keyspace-events: K and/or E, then classes (Egx: expired and del "
                'events); "" = off',
            ),
        },
    ),
}

# Settings that a running daemon cannot change (docs/configuration.md).
RESTART_REQUIRED = frozenset(
    f"{name}.{key}"
    for name, section in SCHEMA.items()
    for key, k in section.keys.items()
    if k.restart
)


def _key(key: Any) -> str:
    """A key from the file as it is named in a problem: plain if it is a short
    string, else as a bounded repr."""
    if isinstance(key, str) and len(key) <= 60 and key.isprintable():
        return key
    return _show(key)


def parse_config(data: Any, base_dir: Path, source: str = "<string>") -> Config:
    """Validate a loaded YAML document; raise :class:`ConfigError` with every problem."""
    problems: list[str] = []
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([f"<top>: must be a mapping of sections, got {type(data).__name__}"])
    sections: dict[str, Any] = {}
    for name in data:
        if name not in SCHEMA:
            problems.append(f"{_key(name)}: unknown section (known: {', '.join(SCHEMA)})")
    for name, section in SCHEMA.items():
        cls, keys = section.cls, section.keys
        raw = data.get(name)
        if raw is None:
            sections[name] = cls()
            continue
        if not isinstance(raw, Mapping):
            problems.append(f"{name}: must be a mapping, got {_show(raw)}")
            continue
        values: dict[str, Any] = {}
        for key, value in raw.items():
            spec = keys.get(key)
            if spec is None:
                problems.append(f"{name}.{_key(key)}: unknown key (known: {', '.join(keys)})")
                continue
            try:
                parsed = spec.parse(value)
            except _Invalid as exc:
                problems.append(f"{name}.{key}: {exc}")
                continue
            if spec.path and parsed is not None:
                if not parsed:
                    problems.append(f"{name}.{key}: must be a non-empty path")
                    continue
                parsed = (base_dir / Path(parsed).expanduser()).resolve()
            values[key] = parsed
        sections[name] = cls(**values)
    if not problems:
        persistence: PersistenceConfig = sections["persistence"]
        if persistence.backend == "postgresql" and persistence.dsn is None:
            problems.append(
                "persistence.dsn: must be set with backend: postgresql "
                '(e.g. "host=db.internal dbname=sessiond user=sessiond")'
            )
        limits: LimitsConfig = sections["limits"]
        if limits.max_value_size > limits.max_request_size:
            problems.append(
                "limits.max_value_size: must not exceed limits.max_request_size "
                f"({limits.max_value_size} > {limits.max_request_size})"
            )
    if problems:
        raise ConfigError(problems, source)
    return Config(**sections, source=source)


def read_config_bytes(path: Path) -> bytes:
    """The file's bytes, or :class:`ConfigError` saying why not.

    It must be a regular file of at most :data:`MAX_CONFIG_BYTES`: a FIFO or a
    device put in its place is refused, not read (opening a FIFO for reading
    would wait for a writer), and a larger file is refused after reading one
    byte more than the limit."""
    source = os.path.realpath(path)  # never raises, not even in a symlink loop
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config: {_strerror(exc)}"], source) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError([f"{path}: cannot read config: {os.strerror(errno.EISDIR)}"], source)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError([f"{path}: cannot read config: not a regular file"], source)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config: {_strerror(exc)}"], source) from None
    finally:
        os.close(fd)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            [
                f"{path}: config file too large ({max(size, info.st_size)} bytes; the limit "
                f"is {MAX_CONFIG_BYTES // 1024} KiB, a config is a few KB)"
            ],
            source,
        )
    return b"".join(chunks)


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


def parse_config_bytes(data: bytes, path: Path) -> Config:
    """Parse and validate the bytes of the config file at ``path`` (relative
    paths in it are resolved against the directory of ``path``, not of the file
    a link points to); :class:`ConfigError` with every problem."""
    source = os.path.realpath(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{path}: cannot read config: not UTF-8 (byte {exc.start})"], source
        ) from None
    try:
        loaded = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}: invalid YAML{where}: {problem}"], source) from None
    return parse_config(loaded, path.absolute().parent, source)  # the link's directory


def load_config(path: Path | None) -> Config:
    """Load ``path`` or, if ``None``, the first default location that exists."""
    if path is None:
        path = next((p for p in DEFAULT_LOCATIONS if p.exists()), None)
        if path is None:
            return Config()
    return parse_config_bytes(read_config_bytes(path), path)


def flatten(config: Config, *, redact: bool = True) -> dict[str, Any]:
    """``{"cache.max_sessions": 10000, ...}`` for CONFIG GET, check-config and
    reload diffs; the password shows as ``(set)`` unless ``redact`` is false."""
    out: dict[str, Any] = {}
    for name in SCHEMA:
        section = getattr(config, name)
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if name == "socket" and f.name == "mode":
                value = f"0{value:o}"
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            if redact and name == "security" and f.name == "password" and value is not None:
                value = "(set)"
            if redact and name == "persistence" and f.name == "dsn" and value is not None:
                value = redact_dsn(value)
            out[f"{name}.{f.name}"] = value
    return out


# ------------------------------------------------------------ documentation


def defaults() -> dict[str, Any]:
    """``flatten`` of the built-in defaults: ``{"cache.max_sessions": 10000, ...}``."""
    return flatten(Config())


def key_spec(dotted: str) -> Key:
    section, name = dotted.split(".", 1)
    return SCHEMA[section].keys[name]


def _format_size(n: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def _format_duration(seconds: float) -> str:
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    ms = seconds * 1000
    if seconds and abs(ms - round(ms)) < 1e-9:
        return f"{round(ms)}ms"
    return repr(seconds) if seconds else "0"


def yaml_scalar(value: Any) -> str:
    """``value`` as YAML flow text that reads back as the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(yaml_scalar(v) for v in value) + "]"
    text = str(value)
    plain = re.fullmatch(r"[\w./()@-][\w./()@:-]*", text) and yaml.safe_load(text) == text
    return text if plain else '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def display(dotted: str, value: Any) -> str:
    """A value as a person writes it in the file: ``1MiB``, ``1h``, ``"0660"``."""
    kind = key_spec(dotted).kind
    if kind == "size" and isinstance(value, int):
        return _format_size(value)
    if kind == "duration | off" and isinstance(value, int | float) and value < 0:
        return "off"
    if kind.startswith("duration") and isinstance(value, int | float):
        return _format_duration(float(value))
    return yaml_scalar(value)


def annotated_yaml(values: dict[str, Any], *, human: bool = False, column: int = 31) -> str:
    """``values`` (dotted keys, as :func:`flatten` makes them) as a YAML document with
    every section's and key's description as comments. ``human``: sizes and durations
    with units (``1MiB``, ``1h``) rather than the exact numbers."""
    out: list[str] = []
    for name, section in SCHEMA.items():
        if out:
            out.append("")
        out.append(f"# {section.doc}")
        out.append(f"{name}:")
        for key, spec in section.keys.items():
            dotted = f"{name}.{key}"
            value = values[dotted]
            text = display(dotted, value) if human else yaml_scalar(value)
            line = f"  {key}: {text}"
            note = f"(restart) {spec.doc}" if spec.restart else spec.doc
            out.append(f"{line:<{column - 1}} # {note}")
    return "\n".join(out) + "\n"
