"""Prometheus metrics (SPEC §7), read from plain counters at scrape time.

Nothing here runs per command: the cache, server and store keep plain integers
and a :class:`~sessiond.server.DurationHistogram`; :class:`SessiondCollector`
turns them into metric families when Prometheus scrapes ``/metrics``.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import REGISTRY
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import __version__
from .commands import COMMANDS, Runtime
from .metrics_http import MetricsHTTPServer
from .reload import ReloadStats as ReloadStats  # its home; imported from here before
from .server import DurationHistogram, Server

# Every store operation that counts failures, exported at 0 from the start so
# that the first error is an increase Prometheus can see.
STORE_OPERATIONS = ("commit", "expire", "fold", "load")


@dataclass
class StoreStats:
    """Counters a store keeps; zero when persistence is off."""

    writes: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    commit_duration: DurationHistogram = field(
        default_factory=lambda: DurationHistogram(
            (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
        )
    )


def _histogram(name: str, doc: str, hist: DurationHistogram) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip(hist.bounds, hist.counts, strict=False):
        cumulative += count
        buckets.append((repr(float(bound)), cumulative))
    buckets.append(("+Inf", cumulative + hist.counts[-1]))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=hist.sum)


class SessiondCollector(Collector):
    def __init__(
        self, rt: Runtime, server: Server, reloads: ReloadStats, store_stats: StoreStats
    ) -> None:
        self.rt = rt
        self.server = server
        self.reloads = reloads
        self.store_stats = store_stats

    def collect(self) -> Iterable[Metric]:
        return list(self._collect())

    def _collect(self) -> Iterator[Metric]:
        cache = self.rt.cache
        stats = self.rt.stats
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
        yield GaugeMetricFamily("sessiond_cache_sessions", "Sessions in memory.", len(cache))
        yield GaugeMetricFamily(
            "sessiond_cache_max_sessions", "Current bound on sessions.", cache.max_sessions
        )
        yield GaugeMetricFamily(
            "sessiond_cache_memory_bytes", "Bytes of keys and values in memory.", cache.memory
        )
        loads = CounterMetricFamily(
            "sessiond_store_loads", "Read-through loads by result.", labels=["result"]
        )
        loads.add_metric(["found"], cache.loads_found)
        loads.add_metric(["absent"], cache.loads_absent)
        loads.add_metric(["error"], cache.loads_error)
        yield loads
        store = self.store_stats
        yield CounterMetricFamily(
            "sessiond_store_writes", "Sessions written to the store.", value=store.writes
        )
        errors = CounterMetricFamily(
            "sessiond_store_errors", "Store failures by operation.", labels=["operation"]
        )
        counts = dict(store.errors)
        for operation in STORE_OPERATIONS:
            counts.setdefault(operation, 0)
        for operation, count in sorted(counts.items()):
            errors.add_metric([operation], count)
        yield errors
        yield _histogram(
            "sessiond_store_commit_duration_seconds",
            "Time per store commit.",
            store.commit_duration,
        )
        commands = CounterMetricFamily(
            "sessiond_commands", "Commands executed.", labels=["command"]
        )
        command_errors = CounterMetricFamily(
            "sessiond_command_errors",
            "Commands answered with an error.",
            labels=["command"],
        )
        for spec in COMMANDS.values():
            name = spec.name.lower()
            commands.add_metric([name], spec.calls)
            command_errors.add_metric([name], spec.errors)
        commands.add_metric(["unknown"], stats.unknown_commands)
        command_errors.add_metric(["unknown"], stats.unknown_command_errors)
        yield commands
        yield command_errors
        yield _histogram(
            "sessiond_command_duration_seconds",
            "Time to execute a command.",
            self.server.histogram,
        )
        yield GaugeMetricFamily(
            "sessiond_connected_clients", "Open client connections.", len(self.rt.clients)
        )
        yield GaugeMetricFamily(
            "sessiond_max_clients",
            "Current limits.max_clients.",
            self.rt.config.limits.max_clients,
        )
        yield CounterMetricFamily(
            "sessiond_connections", "Connections accepted.", value=stats.connections_total
        )
        rejected = CounterMetricFamily(
            "sessiond_rejected_connections", "Connections refused by reason.", labels=["reason"]
        )
        reasons = dict(stats.rejected)
        for reason in ("max_clients", "peer_credentials"):
            reasons.setdefault(reason, 0)
        for reason, count in sorted(reasons.items()):
            rejected.add_metric([reason], count)
        yield rejected
        reloads = CounterMetricFamily(
            "sessiond_config_reloads", "Config reloads by result.", labels=["result"]
        )
        reloads.add_metric(["success"], self.reloads.success)
        reloads.add_metric(["failure"], self.reloads.failure)
        yield reloads
        yield GaugeMetricFamily(
            "sessiond_config_last_reload_successful",
            "1 if the last reload succeeded (or none was tried), else 0.",
            1 if self.reloads.last_successful else 0,
        )
        yield GaugeMetricFamily(
            "sessiond_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
            self.reloads.last_success_timestamp,
        )
        info = GaugeMetricFamily(
            "sessiond_build_info", "Build information; always 1.", labels=["version", "python"]
        )
        info.add_metric([__version__, platform.python_version()], 1)
        yield info


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
