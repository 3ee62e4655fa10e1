"""INFO's sections, with the field names redis-cli and redis_exporter read.

Each section is built only when asked for (``keyspace`` counts the store).
The counters INFO shows are what they gained since the last ``CONFIG
RESETSTAT`` (:class:`~.state.Baseline`): Redis resets them there, while the
Prometheus counters of the same events keep growing (docs/operations.md).
What each field means where sessiond differs from Redis is in
docs/operations.md (INFO).
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

from .. import REDIS_COMPAT_VERSION, __version__
from ..stats import DurationHistogram
from .registry import Call
from .state import Baseline, ServerState

# Sections in Redis' order; ``default`` leaves out commandstats and latencystats.
SECTIONS = (
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "modules",
    "errorstats",
    "commandstats",
    "latencystats",
    "cluster",
    "keyspace",
)
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s not in ("commandstats", "latencystats"))
_HEADINGS = {"cpu": "CPU"}
# The percentiles of latencystats (Redis' latency-tracking-info-percentiles).
PERCENTILES = (50.0, 99.0, 99.9)
# Deadlines sampled for avg_ttl.
TTL_SAMPLE = 256

_PAGE = os.sysconf("SC_PAGE_SIZE")

Fields = list[tuple[str, Any]]


def wanted_sections(names: list[str]) -> list[str]:
    """The sections INFO's arguments name, in Redis' order (none: default)."""
    if not names:
        names = ["default"]
    chosen: set[str] = set()
    for name in names:
        if name == "default":
            chosen.update(DEFAULT_SECTIONS)
        elif name in ("all", "everything"):
            chosen.update(SECTIONS)
        elif name in SECTIONS:
            chosen.add(name)
    return [s for s in SECTIONS if s in chosen]


def process_memory() -> tuple[int, int]:
    """(bytes the process holds for itself, resident bytes): from
    /proc/self/statm, resident pages less those backed by files (the
    program, its libraries): the anonymous memory, which is what Python's
    allocators took for objects, the session data among them."""
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
        resident, shared = int(fields[1]), int(fields[2])
    except (OSError, IndexError, ValueError):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return rss, rss
    return (resident - shared) * _PAGE, resident * _PAGE


def human(n: float) -> str:
    """Redis' ``*_human`` form: 1.23M, 512.00K, 100B."""
    for unit, factor in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= factor:
            return f"{n / factor:.2f}{unit}"
    return f"{int(n)}B"


def percentile(bounds: tuple[float, ...], counts: list[int], p: float) -> float:
    """The ``p``-th percentile (seconds) of a histogram's counts, interpolated
    within its bucket as Prometheus' histogram_quantile does; in the ``+Inf``
    bucket, the largest bound."""
    total = sum(counts)
    if total == 0:
        return 0.0
    rank = total * p / 100.0
    seen = 0
    lower = 0.0
    for i, count in enumerate(counts):
        if i == len(bounds):
            return bounds[-1]
        if count and seen + count >= rank:
            return lower + (bounds[i] - lower) * (rank - seen) / count
        seen += count
        lower = bounds[i]
    return bounds[-1]


def raw_counters(cx: Call) -> dict[str, int]:
    """The counters INFO shows that CONFIG RESETSTAT sets back, as they are."""
    stats = cx.state.stats
    server = stats.server
    cache = cx.keyspace.memory_stats()
    store_hits = cx.keyspace.store_hits
    return {
        "total_connections_received": server.connections_total,
        "total_commands_processed": stats.total_commands(),
        "total_net_input_bytes": server.net_input_bytes,
        "total_net_output_bytes": server.net_output_bytes,
        "rejected_connections": sum(server.rejected.values()),
        "expired_keys": cache.expirations,
        "evicted_keys": cache.evictions,
        "keyspace_hits": cache.hits + store_hits,
        "keyspace_misses": cache.misses - store_hits,
        "total_error_replies": sum(server.error_replies.values()),
        "store_loads_found": cache.loads_found,
        "store_loads_absent": cache.loads_absent,
        "client_output_buffer_limit_disconnections": server.output_buffer_disconnections,
    }


def reset_stats(cx: Call) -> None:
    """CONFIG RESETSTAT: what Redis resets (the stats counters, commandstats,
    errorstats, latencystats, the memory peak) starts again from zero in INFO."""
    state = cx.state
    baseline = Baseline()
    baseline.counters = raw_counters(cx)
    baseline.errors = dict(state.stats.server.error_replies)
    baseline.commands = {
        name: (c.calls, c.rejected, c.errors, c.loop_time, list(c.latency.counts))
        for name, c in state.stats.commands.items()
    }
    state.baseline = baseline
    state.peak_memory = 0


def _server(cx: Call) -> Fields:
    state = cx.state
    uname = os.uname()
    uptime = int(time.monotonic() - state.started_monotonic)
    source = state.config.source
    return [
        ("redis_version", REDIS_COMPAT_VERSION),
        ("sessiond_version", __version__),
        ("redis_mode", "standalone"),
        ("os", f"{uname.sysname} {uname.release} {uname.machine}"),
        ("arch_bits", 64 if sys.maxsize > 2**32 else 32),
        ("python_version", sys.version.split()[0]),
        ("process_id", os.getpid()),
        ("run_id", state.run_id),
        ("tcp_port", 0),
        ("server_time_usec", int(time.time() * 1_000_000)),
        ("uptime_in_seconds", uptime),
        ("uptime_in_days", uptime // 86400),
        ("executable", os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""),
        ("config_file", "" if source == "built-in defaults" else source),
        ("unix_socket", state.socket_path),
    ]


def _clients(cx: Call) -> Fields:
    config = cx.state.config
    return [
        ("connected_clients", len(cx.state.clients)),
        ("maxclients", config.limits.max_clients),
        ("blocked_clients", 0),
        ("tracking_clients", 0),
    ]


def _memory(cx: Call) -> Fields:
    state = cx.state
    cache = cx.keyspace.memory_stats()
    used, rss = process_memory()
    state.peak_memory = max(state.peak_memory, used)
    maxmemory = cache.max_memory
    return [
        ("used_memory", used),
        ("used_memory_human", human(used)),
        ("used_memory_rss", rss),
        ("used_memory_rss_human", human(rss)),
        ("used_memory_peak", state.peak_memory),
        ("used_memory_peak_human", human(state.peak_memory)),
        ("used_memory_dataset", cache.memory_bytes),
        ("total_system_memory", os.sysconf("SC_PHYS_PAGES") * _PAGE),
        ("maxmemory", maxmemory),
        ("maxmemory_human", human(maxmemory)),
        ("maxmemory_policy", "allkeys-lru"),
        ("mem_fragmentation_ratio", f"{rss / used:.2f}" if used else "0.00"),
        ("mem_allocator", "pymalloc"),
        ("max_sessions", cache.max_sessions),
        # Objects the cyclic garbage collector no longer walks (sessiond
        # freezes what survives its young collections: the sessions in memory).
        ("gc_frozen_objects", gc.get_freeze_count()),
    ]


def _persistence(cx: Call) -> Fields:
    state = cx.state
    keyspace = cx.keyspace
    persistent = keyspace.persistent
    config = state.config.persistence
    failing = keyspace.failure is not None
    fields: Fields = [
        ("loading", 0),
        ("async_loading", 0),
        # sessiond never writes an RDB file: no save ever ran, as in a Redis
        # that has not saved since it started.
        ("rdb_bgsave_in_progress", 0),
        ("rdb_last_save_time", int(state.started_at)),
        ("rdb_last_bgsave_status", "ok"),
        ("rdb_last_bgsave_time_sec", -1),
        ("rdb_current_bgsave_time_sec", -1),
        ("rdb_saves", 0),
        # The store is sessiond's append-only file: every write goes to it.
        ("aof_enabled", 1 if persistent else 0),
        ("aof_rewrite_in_progress", 0),
        ("aof_rewrite_scheduled", 0),
        ("aof_last_rewrite_time_sec", -1),
        ("aof_current_rewrite_time_sec", -1),
        ("aof_last_bgrewrite_status", "ok"),
        ("aof_rewrites", 0),
        ("aof_last_write_status", "err" if failing else "ok"),
    ]
    if persistent:
        fields.append(("aof_current_size", sum(state.stats.store.disk_bytes.values())))
    fields += [
        ("backend", config.backend if persistent else "none"),
        ("durability", config.durability),
        ("warm_start_sessions", keyspace.warmed),
        ("warm_start_in_progress", 1 if keyspace.warming else 0),
    ]
    if persistent and not keyspace.own_outcomes:
        fields.append(("memory_holds_store", 1 if keyspace.whole else 0))
    return fields


def _stats(cx: Call) -> Fields:
    state = cx.state
    stats = state.stats
    raw = raw_counters(cx)
    base = state.baseline.counters

    def since(name: str) -> int:
        return raw[name] - base.get(name, 0)

    return [
        ("total_connections_received", since("total_connections_received")),
        ("total_commands_processed", since("total_commands_processed")),
        ("instantaneous_ops_per_sec", round(stats.ops_rate.value)),
        ("total_net_input_bytes", since("total_net_input_bytes")),
        ("total_net_output_bytes", since("total_net_output_bytes")),
        ("instantaneous_input_kbps", f"{stats.input_rate.value / 1024:.2f}"),
        ("instantaneous_output_kbps", f"{stats.output_rate.value / 1024:.2f}"),
        ("rejected_connections", since("rejected_connections")),
        ("expired_keys", since("expired_keys")),
        ("evicted_keys", since("evicted_keys")),
        ("keyspace_hits", since("keyspace_hits")),
        ("keyspace_misses", since("keyspace_misses")),
        ("pubsub_channels", len(state.pubsub.channels)),
        ("pubsub_patterns", len(state.pubsub.patterns)),
        ("pubsubshard_channels", 0),
        ("total_error_replies", since("total_error_replies")),
        (
            "client_output_buffer_limit_disconnections",
            since("client_output_buffer_limit_disconnections"),
        ),
        ("store_loads_found", since("store_loads_found")),
        ("store_loads_absent", since("store_loads_absent")),
    ]


def _replication(cx: Call) -> Fields:
    return [
        ("role", "master"),
        ("connected_slaves", 0),
        ("master_failover_state", "no-failover"),
        ("master_replid", cx.state.run_id),
        ("master_repl_offset", 0),
    ]


def _cpu(cx: Call) -> Fields:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    # INFO runs on the event loop's thread: this is the loop's own CPU time.
    loop = resource.getrusage(resource.RUSAGE_THREAD)
    return [
        ("used_cpu_sys", f"{own.ru_stime:.6f}"),
        ("used_cpu_user", f"{own.ru_utime:.6f}"),
        ("used_cpu_sys_children", f"{children.ru_stime:.6f}"),
        ("used_cpu_user_children", f"{children.ru_utime:.6f}"),
        ("used_cpu_sys_main_thread", f"{loop.ru_stime:.6f}"),
        ("used_cpu_user_main_thread", f"{loop.ru_utime:.6f}"),
    ]


def _errorstats(cx: Call) -> Fields:
    state = cx.state
    base = state.baseline.errors
    fields: Fields = []
    for prefix, count in sorted(state.stats.server.error_replies.items()):
        since = count - base.get(prefix, 0)
        if since:
            fields.append((f"errorstat_{prefix}", f"count={since}"))
    return fields


def _command_counts(
    state: ServerState,
) -> list[tuple[str, int, int, int, float, list[int], DurationHistogram]]:
    """Per command since RESETSTAT: (name, executed calls, rejected, failed,
    loop seconds, latency bucket counts, its histogram); commands never
    called are left out."""
    out = []
    base = state.baseline.commands
    for name, c in state.stats.commands.items():
        b_calls, b_rejected, b_errors, b_time, b_counts = base.get(name, (0, 0, 0, 0.0, []))
        calls, rejected = c.calls - b_calls, c.rejected - b_rejected
        if not calls:
            continue
        failed = (c.errors - b_errors) - rejected
        counts = list(c.latency.counts)
        for i, n in enumerate(b_counts):
            counts[i] -= n
        out.append(
            (
                name.lower(),
                calls - rejected,
                rejected,
                failed,
                c.loop_time - b_time,
                counts,
                c.latency,
            )
        )
    return out


def _commandstats(cx: Call) -> Fields:
    fields: Fields = []
    for name, calls, rejected, failed, seconds, _counts, _hist in _command_counts(cx.state):
        usec = int(seconds * 1_000_000)
        per_call = usec / calls if calls else 0.0
        fields.append(
            (
                f"cmdstat_{name}",
                f"calls={calls},usec={usec},usec_per_call={per_call:.2f},"
                f"rejected_calls={rejected},failed_calls={failed}",
            )
        )
    return fields


def _latencystats(cx: Call) -> Fields:
    fields: Fields = []
    for name, _calls, _rejected, _failed, _seconds, counts, hist in _command_counts(cx.state):
        if not sum(counts):
            continue
        values = ",".join(
            f"p{p:g}={percentile(hist.bounds, counts, p) * 1_000_000:.3f}" for p in PERCENTILES
        )
        fields.append((f"latency_percentiles_usec_{name}", values))
    return fields


def _cluster(cx: Call) -> Fields:
    return [("cluster_enabled", 0)]


def avg_ttl_ms(cx: Call) -> int:
    """Mean time to expiry of a random sample of the sessions in memory that
    have a deadline, in milliseconds (Redis estimates avg_ttl by sampling
    too). Sessions only in the store are not sampled."""
    deadlines = cx.keyspace.cache.sample_deadlines(TTL_SAMPLE)
    if not deadlines:
        return 0
    now = cx.now()
    return max(0, int(sum(d - now for d in deadlines) / len(deadlines) * 1000))


def _keyspace(cx: Call) -> Fields:
    keys, expires = cx.counts()
    if not keys:
        return []
    return [("db0", f"keys={keys},expires={expires},avg_ttl={avg_ttl_ms(cx)}")]


BUILDERS: dict[str, Callable[[Call], Fields]] = {
    "server": _server,
    "clients": _clients,
    "memory": _memory,
    "persistence": _persistence,
    "stats": _stats,
    "replication": _replication,
    "cpu": _cpu,
    "modules": lambda cx: [],
    "errorstats": _errorstats,
    "commandstats": _commandstats,
    "latencystats": _latencystats,
    "cluster": _cluster,
    "keyspace": _keyspace,
}


def info_text(cx: Call, names: list[str]) -> str:
    """INFO's reply for the (lower-case) section names asked for."""
    parts = []
    for section in wanted_sections(names):
        heading = _HEADINGS.get(section, section.capitalize())
        lines = [f"# {heading}"] + [f"{k}:{v}" for k, v in BUILDERS[section](cx)]
        parts.append("\r\n".join(lines) + "\r\n")
    return "\r\n".join(parts)
