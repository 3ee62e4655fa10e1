"""Typed configuration: YAML file -> validated frozen dataclasses (SPEC §4).

Every problem is reported with the dotted path of its key, all at once, so an
operator fixes a file in one pass: ``cache.max_sessions: must be a positive
integer, got -5``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

DEFAULT_LOCATIONS = (Path("config/sessiond.yaml"), Path("/etc/sessiond/sessiond.yaml"))


class ConfigError(Exception):
    """A config that cannot be used; ``problems`` has one line per problem."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        super().__init__("\n".join(problems))


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
    backend: Literal["sqlite", "none"] = "sqlite"
    path: Path = Path("/var/lib/sessiond/sessions.db")
    durability: Literal["always", "batch"] = "always"
    flush_interval: float = 0.1
    warm_start: bool = True


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
class SecurityConfig:
    password: str | None = field(default=None, repr=False)
    allowed_uids: tuple[int, ...] = ()
    allowed_gids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    socket: SocketConfig = SocketConfig()
    cache: CacheConfig = CacheConfig()
    persistence: PersistenceConfig = PersistenceConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    limits: LimitsConfig = LimitsConfig()
    security: SecurityConfig = SecurityConfig()
    source: str = "built-in defaults"


# Settings that a running daemon cannot change (SPEC §4).
RESTART_REQUIRED = frozenset(
    {
        "socket.path",
        "socket.mode",
        "persistence.backend",
        "persistence.path",
        "persistence.durability",
        "persistence.flush_interval",
        "persistence.warm_start",
        "metrics.listen",
        "metrics.enabled",
    }
)

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
        raise _Invalid(f"{_DURATION_HINT}, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise _Invalid(f"{_DURATION_HINT}, got {value!r}")
        if value < 0:
            raise _Invalid(f"must be a non-negative duration, got {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _NUMBER_UNIT.match(value)
        if m and m.group(2).lower() in _DURATION_UNITS | {"": 1.0}:
            unit = m.group(2).lower()
            return float(m.group(1)) * (_DURATION_UNITS.get(unit, 1.0))
    raise _Invalid(f"{_DURATION_HINT}, got {value!r}")


_SIZE_HINT = "must be a size (bytes or e.g. 64KiB, 1MiB, 2GiB)"


def _ambiguous_size(value: str, number: str, unit: str) -> str | None:
    """The problem with ``1MB``/``1m``-style sizes, or None for any other unit."""
    power = _AMBIGUOUS_SIZE_UNITS.get(unit.lower().removesuffix("b"))
    if power is None:
        return None
    n = float(number)
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
        raise _Invalid(f"{_SIZE_HINT}, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise _Invalid(f"must be a non-negative size, got {value!r}")
        return value
    if isinstance(value, str):
        m = _NUMBER_UNIT.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
        if m and (problem := _ambiguous_size(value.strip(), m.group(1), m.group(2))):
            raise _Invalid(problem)
    raise _Invalid(f"{_SIZE_HINT}, got {value!r}")


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Invalid(f"must be a positive integer, got {value!r}")
    return value


def _positive_size(value: Any) -> int:
    size = parse_size(value)
    if size < 1:
        raise _Invalid(f"must be a positive size, got {value!r}")
    return size


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise _Invalid(f"must be a positive duration, got {value!r}")
    return seconds


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, got {value!r}")
    return value


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise _Invalid(f"must be one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return parse


class _LeadingZeroInt(int):
    """An integer YAML read from a scalar with a leading zero (``0660``), which
    PyYAML (YAML 1.1) reads as octal."""


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that remembers which integers were written ``0660``."""


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    value: int = loader.construct_yaml_int(node)
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
        raise _Invalid(f'must be an octal permission string such as "0660", got {value!r}')
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise _Invalid(f'must be an octal permission string such as "0660", got {value!r}')
    return int(text, 8)


def _listen(value: Any) -> str:
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if sep and host and port.isdigit() and 0 < int(port) < 65536:
            return value
    raise _Invalid(f"must be host:port such as 127.0.0.1:9477, got {value!r}")


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"must be a non-empty path, got {value!r}")
    return value


def _optional_password(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _Invalid("must be a non-empty string or null")
    return value


def _id_list(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise _Invalid(f"must be a list of non-negative integer ids, got {value!r}")
    return tuple(value)


_Parser = Callable[[Any], Any]
_SCHEMA: dict[str, tuple[type[Any], dict[str, _Parser]]] = {
    "socket": (SocketConfig, {"path": _path, "mode": _mode}),
    "cache": (
        CacheConfig,
        {
            "max_sessions": _positive_int,
            "max_memory": parse_size,
            "default_ttl": parse_duration,
            "sliding": _bool,
            "sweep_interval": _positive_duration,
        },
    ),
    "persistence": (
        PersistenceConfig,
        {
            "backend": _choice("sqlite", "none"),
            "path": _path,
            "durability": _choice("always", "batch"),
            "flush_interval": _positive_duration,
            "warm_start": _bool,
        },
    ),
    "metrics": (MetricsConfig, {"enabled": _bool, "listen": _listen}),
    "logging": (
        LoggingConfig,
        {
            "level": _choice("debug", "info", "warning", "error"),
            "format": _choice("json", "console"),
        },
    ),
    "limits": (
        LimitsConfig,
        {
            "max_clients": _positive_int,
            "max_value_size": _positive_size,
            "max_request_size": _positive_size,
            "max_output_buffer": _positive_size,
            "client_idle_timeout": parse_duration,
        },
    ),
    "security": (
        SecurityConfig,
        {"password": _optional_password, "allowed_uids": _id_list, "allowed_gids": _id_list},
    ),
}
_PATH_KEYS = {("socket", "path"), ("persistence", "path")}


def parse_config(data: Any, base_dir: Path, source: str = "<string>") -> Config:
    """Validate a loaded YAML document; raise :class:`ConfigError` with every problem."""
    problems: list[str] = []
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([f"<top>: must be a mapping of sections, got {type(data).__name__}"])
    sections: dict[str, Any] = {}
    for name in data:
        if name not in _SCHEMA:
            problems.append(f"{name}: unknown section (known: {', '.join(_SCHEMA)})")
    for name, (cls, parsers) in _SCHEMA.items():
        raw = data.get(name)
        if raw is None:
            sections[name] = cls()
            continue
        if not isinstance(raw, Mapping):
            problems.append(f"{name}: must be a mapping, got {raw!r}")
            continue
        values: dict[str, Any] = {}
        for key, value in raw.items():
            parser = parsers.get(key)
            if parser is None:
                problems.append(f"{name}.{key}: unknown key (known: {', '.join(parsers)})")
                continue
            try:
                parsed = parser(value)
            except _Invalid as exc:
                problems.append(f"{name}.{key}: {exc}")
                continue
            if (name, key) in _PATH_KEYS:
                if not parsed:
                    problems.append(f"{name}.{key}: must be a non-empty path")
                    continue
                parsed = (base_dir / Path(parsed).expanduser()).resolve()
            values[key] = parsed
        sections[name] = cls(**values)
    if not problems:
        limits: LimitsConfig = sections["limits"]
        if limits.max_value_size > limits.max_request_size:
            problems.append(
                "limits.max_value_size: must not exceed limits.max_request_size "
                f"({limits.max_value_size} > {limits.max_request_size})"
            )
    if problems:
        raise ConfigError(problems, source)
    return Config(**sections, source=source)


def load_config(path: Path | None) -> Config:
    """Load ``path`` or, if ``None``, the first default location that exists."""
    if path is None:
        path = next((p for p in DEFAULT_LOCATIONS if p.exists()), None)
        if path is None:
            return Config()
    source = str(path.resolve())
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config: {exc.strerror}"], source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{path}: cannot read config: not UTF-8 (byte {exc.start})"], source
        ) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}: invalid YAML{where}: {problem}"], source) from None
    return parse_config(data, path.absolute().parent, source)  # the link's directory


def flatten(config: Config, *, redact: bool = True) -> dict[str, Any]:
    """``{"cache.max_sessions": 10000, ...}`` for CONFIG GET, check-config and
    reload diffs; the password shows as ``(set)`` unless ``redact`` is false."""
    out: dict[str, Any] = {}
    for name in _SCHEMA:
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
            out[f"{name}.{f.name}"] = value
    return out
