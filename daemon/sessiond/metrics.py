"""Prometheus metrics (docs/operations.md), read from plain counters at scrape time.

Nothing here runs per command: the cache, server and store count into plain
integers and histograms of :mod:`sessiond.stats`; :class:`SessiondCollector`
turns them into metric families when Prometheus scrapes ``/metrics``.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import __version__
from .commands import ServerState
from .keyspace import Keyspace
from .metrics_http import MetricsHTTPServer
from .stats import DATABASE_BUCKETS, DurationHistogram, SharedStats

# Every store operation that counts failures, exported at 0 from the start so
# that the first error is an increase Prometheus can see.
STORE_OPERATIONS = ("commit", "compact", "expire", "load")


def _buckets(hist: DurationHistogram) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs, ``+Inf`` last."""
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip(hist.bounds, hist.counts, strict=False):
        cumulative += count
        buckets.append((repr(float(bound)), cumulative))
    buckets.append(("+Inf", cumulative + hist.counts[-1]))
    return buckets


def _by_label(
    family: CounterMetricFamily, counts: dict[str, int], always: Iterable[str] = ()
) -> CounterMetricFamily:
    """``family`` with one sample per label value in ``counts``, in label
    order; the values in ``always`` are there at 0 before anything happened
    (so that rate() and alerts see the series from the first scrape)."""
    values = dict.fromkeys(always, 0)
    values.update(counts)
    for label, value in sorted(values.items()):
        family.add_metric([label], value)
    return family


def _histogram(name: str, doc: str, hist: DurationHistogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=_buckets(hist), sum_value=hist.sum)


class SessiondCollector(Collector):
    def __init__(self, keyspace: Keyspace, state: ServerState) -> None:
        self.keyspace = keyspace
        self.state = state

    def collect(self) -> Iterable[Metric]:
        return list(self._collect())

    def _collect(self) -> Iterator[Metric]:
        cache = self.keyspace.memory_stats()
        stats = self.state.stats.server
        yield CounterMetricFamily(
            "sessiond_cache_hits", "Lookups answered from memory.", value=cache.hits
        )
        yield CounterMetricFamily(
            "sessiond_cache_misses", "Lookups not in memory (then store).", value=cache.misses
        )
        evictions = CounterMetricFamily(
            "sessiond_cache_evictions", "LRU evictions by bound.", labels=["reason"]
        )
        evictions.add_metric(["max_sessions"], cache.evictions_max_sessions)
        evictions.add_metric(["max_memory"], cache.evictions_max_memory)
        yield evictions
        yield CounterMetricFamily(
            "sessiond_cache_expirations",
            "Sessions removed because their TTL ran out.",
            value=cache.expirations,
        )
        yield GaugeMetricFamily("sessiond_cache_sessions", "Sessions in memory.", cache.sessions)
        yield GaugeMetricFamily(
            "sessiond_cache_max_sessions", "Current bound on sessions.", cache.max_sessions
        )
        yield GaugeMetricFamily(
            "sessiond_cache_memory_bytes", "Bytes of keys and values in memory.", cache.memory_bytes
        )
        yield GaugeMetricFamily(
            "sessiond_cache_max_memory_bytes",
            "Current cache.max_memory: the bound on bytes of keys and values in memory (0: none).",
            cache.max_memory,
        )
        sessions = self.state.stats.keyspace_sessions
        if sessions is not None:
            yield GaugeMetricFamily(
                "sessiond_keyspace_sessions",
                "Sessions in memory and store together (what DBSIZE answers), counted every 15 s.",
                sessions,
            )
        yield GaugeMetricFamily(
            "sessiond_warm_start_in_progress",
            "1 while the warm start loads stored sessions into memory (the daemon serves "
            "meanwhile), else 0.",
            1 if self.keyspace.warming else 0,
        )
        loads = CounterMetricFamily(
            "sessiond_store_loads", "Read-through loads by result.", labels=["result"]
        )
        loads.add_metric(["found"], cache.loads_found)
        loads.add_metric(["absent"], cache.loads_absent)
        loads.add_metric(["error"], cache.loads_error)
        yield loads
        store = self.state.stats.store
        yield CounterMetricFamily(
            "sessiond_store_writes", "Sessions written to the store.", value=store.writes
        )
        yield _by_label(
            CounterMetricFamily(
                "sessiond_store_errors", "Store failures by operation.", labels=["operation"]
            ),
            store.errors,
            STORE_OPERATIONS,
        )
        yield _histogram(
            "sessiond_store_commit_duration_seconds",
            "Time per store commit.",
            store.commit_duration,
        )
        disk = GaugeMetricFamily(
            "sessiond_store_disk_bytes",
            "Bytes the store's files take on disk, by file (database, wal, log).",
            labels=["file"],
        )
        for name, size in sorted(store.disk_bytes.items()):
            disk.add_metric([name], size)
        yield disk
        yield GaugeMetricFamily(
            "sessiond_store_live_bytes",
            "Bytes of keys and values of the sessions in the store's table (sampled).",
            store.live_bytes,
        )
        yield CounterMetricFamily(
            "sessiond_store_compactions",
            "Compactions into the store's table (each of one or more log segments).",
            value=store.compactions,
        )
        yield CounterMetricFamily(
            "sessiond_store_compacted_changes",
            "Session changes written to the table by compaction (after deduplication).",
            value=store.compacted_changes,
        )
        yield CounterMetricFamily(
            "sessiond_store_backpressure_seconds",
            "Time commits were held back because compaction was behind.",
            value=store.backpressure_seconds,
        )
        yield GaugeMetricFamily(
            "sessiond_writes_refused",
            "1 while writes are refused because the store cannot commit (MISCONF), else 0.",
            0 if self.keyspace.failure is None else 1,
        )
        commands = CounterMetricFamily(
            "sessiond_commands", "Commands executed.", labels=["command"]
        )
        command_errors = CounterMetricFamily(
            "sessiond_command_errors",
            "Commands answered with an error.",
            labels=["command"],
        )
        for name, command in self.state.stats.commands.items():
            commands.add_metric([name.lower()], command.calls)
            command_errors.add_metric([name.lower()], command.errors)
        commands.add_metric(["unknown"], stats.unknown.calls)
        command_errors.add_metric(["unknown"], stats.unknown.errors)
        yield commands
        yield command_errors
        yield _histogram(
            "sessiond_command_duration_seconds",
            "Event-loop time per command (parsing and running it, shared within a batch).",
            self.state.stats.command_duration,
        )
        latency = HistogramMetricFamily(
            "sessiond_command_latency_seconds",
            "What a client waits: from its request's arrival to its reply's write.",
            labels=["command"],
        )
        for name, command in self.state.stats.commands.items():
            if command.calls:  # a series per command used, not per command known
                hist = command.latency
                latency.add_metric([name.lower()], _buckets(hist), sum_value=hist.sum)
        yield latency
        yield _histogram(
            "sessiond_event_loop_lag_seconds",
            "How late a 100 ms timer on the event loop fired.",
            self.state.stats.loop_lag,
        )
        yield _by_label(
            CounterMetricFamily(
                "sessiond_error_replies",
                "Error replies by their first word (ERR, NOAUTH, MISCONF...).",
                labels=["prefix"],
            ),
            stats.error_replies,
        )
        yield CounterMetricFamily(
            "sessiond_slowlog_entries",
            "Entries added to the slow log (SLOWLOG RESET does not set it back).",
            value=self.state.stats.slowlog.next_id,
        )
        yield CounterMetricFamily(
            "sessiond_net_input_bytes", "Bytes read from clients.", value=stats.net_input_bytes
        )
        yield CounterMetricFamily(
            "sessiond_net_output_bytes", "Bytes written to clients.", value=stats.net_output_bytes
        )
        yield GaugeMetricFamily(
            "sessiond_connected_clients", "Open client connections.", len(self.state.clients)
        )
        yield GaugeMetricFamily(
            "sessiond_max_clients",
            "Current limits.max_clients.",
            self.state.config.limits.max_clients,
        )
        yield CounterMetricFamily(
            "sessiond_connections", "Connections accepted.", value=stats.connections_total
        )
        yield _by_label(
            CounterMetricFamily(
                "sessiond_rejected_connections", "Connections refused by reason.", labels=["reason"]
            ),
            stats.rejected,
            ("max_clients", "peer_credentials"),
        )
        yield CounterMetricFamily(
            "sessiond_client_output_buffer_disconnections",
            "Clients dropped for not reading their output past limits.max_output_buffer.",
            value=stats.output_buffer_disconnections,
        )
        reloads = CounterMetricFamily(
            "sessiond_config_reloads", "Config reloads by result.", labels=["result"]
        )
        reload_stats = self.state.stats.reload
        reloads.add_metric(["success"], reload_stats.success)
        reloads.add_metric(["failure"], reload_stats.failure)
        yield reloads
        yield GaugeMetricFamily(
            "sessiond_config_last_reload_successful",
            "1 if the last reload succeeded (or none was tried), else 0.",
            1 if reload_stats.last_successful else 0,
        )
        yield GaugeMetricFamily(
            "sessiond_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
            reload_stats.last_success_timestamp,
        )
        info = GaugeMetricFamily(
            "sessiond_build_info", "Build information; always 1.", labels=["version", "python"]
        )
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        persistence = self.state.config.persistence
        if persistence.backend == "postgresql":
            yield from _shared_store(self.state.stats.shared, persistence.pool_size)


# Operations whose database round trips are timed, and connections that
# reconnect: exported from the start, so that the first is an increase.
SHARED_OPERATIONS = ("commit", "decide", "read", "heartbeat")
SHARED_CONNECTIONS = ("listen", "writer")
UNANSWERED_OUTCOMES = ("landed", "rolled back", "unknown")


def _shared_store(shared: SharedStats, pool_max: int) -> Iterator[Metric]:
    """The PostgreSQL store's families (docs/operations.md)."""
    trips = HistogramMetricFamily(
        "sessiond_store_round_trip_seconds",
        "Database round trips by operation (commit, decide, read, heartbeat, ...).",
        labels=["operation"],
    )
    histograms = dict(shared.round_trips)
    for operation in SHARED_OPERATIONS:
        histograms.setdefault(operation, DurationHistogram(DATABASE_BUCKETS))
    for operation, hist in sorted(histograms.items()):
        trips.add_metric([operation], _buckets(hist), sum_value=hist.sum)
    yield trips
    yield GaugeMetricFamily(
        "sessiond_store_pool_connections", "Pooled database connections open.", shared.pool_size
    )
    yield GaugeMetricFamily(
        "sessiond_store_pool_connections_in_use",
        "Pooled database connections in use (reads, decisions, sweeps).",
        shared.pool_in_use,
    )
    yield GaugeMetricFamily(
        "sessiond_store_pool_connections_max", "persistence.pool_size.", pool_max
    )
    yield GaugeMetricFamily(
        "sessiond_store_listening",
        "1 while this host hears the other hosts' changes (LISTEN up, heartbeats in time).",
        shared.listening,
    )
    yield CounterMetricFamily(
        "sessiond_store_memory_flushes",
        "Times memory was emptied: notifications lost or restored, or a flush elsewhere.",
        value=shared.memory_flushes,
    )
    yield _by_label(
        CounterMetricFamily(
            "sessiond_store_reconnects",
            "Reconnections of the store's own connections after a loss.",
            labels=["connection"],
        ),
        shared.reconnects,
        SHARED_CONNECTIONS,
    )
    yield CounterMetricFamily(
        "sessiond_store_invalidations_sent",
        "Changed sessions announced to the other hosts.",
        value=shared.invalidations_sent,
    )
    yield CounterMetricFamily(
        "sessiond_store_invalidations_received",
        "Changed sessions heard of from the other hosts.",
        value=shared.invalidations_received,
    )
    yield CounterMetricFamily(
        "sessiond_store_notifications_sent",
        "NOTIFY payloads sent (each names up to ~180 sessions).",
        value=shared.notifications_sent,
    )
    yield CounterMetricFamily(
        "sessiond_store_notifications_received",
        "NOTIFY payloads received from the other hosts.",
        value=shared.notifications_received,
    )
    yield _histogram(
        "sessiond_store_invalidation_lag_seconds",
        "From the start of another host's commit (its clock) to this host hearing of it.",
        shared.invalidation_lag,
    )
    yield CounterMetricFamily(
        "sessiond_store_decisions",
        "Decisions opened for commands the database decides (SET NX, INCR, ...); "
        "commands waiting for a key of one run in it and are not counted again.",
        value=shared.decisions,
    )
    yield CounterMetricFamily(
        "sessiond_store_decision_transactions",
        "Transactions the decisions ran in: those asked for while a connection was busy share one.",
        value=shared.decision_transactions,
    )
    yield CounterMetricFamily(
        "sessiond_store_decision_errors",
        "Decisions whose commit failed (their commands were answered with an error).",
        value=shared.decision_errors,
    )
    yield _by_label(
        CounterMetricFamily(
            "sessiond_store_unanswered_commits",
            "Commits whose answer was lost (connection dropped, or no answer within the "
            "timeout), by what the database said of them afterwards.",
            labels=["outcome"],
        ),
        shared.unanswered_commits,
        UNANSWERED_OUTCOMES,
    )
    yield CounterMetricFamily(
        "sessiond_store_renewals",
        "Sliding-TTL renewals by reads written back to the database.",
        value=shared.renewals,
    )
    yield CounterMetricFamily(
        "sessiond_store_expired_rows",
        "Rows past their deadline this host's sweeps deleted from the database.",
        value=shared.expired,
    )


class MetricsServer:
    """``/metrics`` over HTTP, served on the event loop (see :mod:`.metrics_http`)."""

    def __init__(self, collector: SessiondCollector) -> None:
        self.collector = collector
        self._http: MetricsHTTPServer | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen and serve on the running loop; ``OSError`` if it cannot listen."""
        REGISTRY.register(self.collector)
        http = MetricsHTTPServer(REGISTRY)
        try:
            await http.start(host, port)
        except BaseException:
            REGISTRY.unregister(self.collector)
            raise
        self._http = http

    @property
    def port(self) -> int:
        return 0 if self._http is None else self._http.port

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        REGISTRY.unregister(self.collector)
