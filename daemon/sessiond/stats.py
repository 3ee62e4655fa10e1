"""The daemon's counters: plain integers and lock-free histograms.

Imports nothing. The hot path does ``+= 1`` on an attribute of an object
defined here; :mod:`sessiond.metrics` turns them into Prometheus families when
it is scraped, and INFO reads the same numbers. One :class:`Stats` per daemon
(the app makes it and hands each part the piece it counts in), so there is no
mutable module-level state and two daemons in one process do not share counts.
"""

from __future__ import annotations

# Seconds; buckets of sessiond_command_latency_seconds: what a client waits,
# from its request's arrival to its reply's write, store waits included.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
# Seconds; buckets of sessiond_command_duration_seconds (event-loop time).
COMMAND_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
# Seconds; buckets of sessiond_store_commit_duration_seconds.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class DurationHistogram:
    """Counts per bucket (the last one is ``+Inf``) and their sum: one bisect
    and two additions per observation, cumulated only when read."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float, times: int = 1) -> None:
        """Count ``times`` observations of ``seconds`` each."""
        self.counts[bucket(self.bounds, seconds)] += times
        self.sum += seconds * times


def bucket(bounds: tuple[float, ...], value: float) -> int:
    """The index of the first bound ``>= value`` (``len(bounds)``: ``+Inf``).
    A plain loop: compiled, it is a few float compares, where ``bisect``
    compares Python objects."""
    i = 0
    n = len(bounds)
    while i < n and bounds[i] < value:
        i += 1
    return i


class CommandStats:
    """Calls, error replies and client-seen latency of one command."""

    __slots__ = ("calls", "errors", "latency")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.latency = DurationHistogram(LATENCY_BUCKETS)


class ServerStats:
    """Connection-level counters; ``unknown`` counts requests naming no command."""

    __slots__ = ("connections_total", "rejected", "unknown")

    def __init__(self) -> None:
        self.connections_total = 0
        self.rejected: dict[str, int] = {}
        self.unknown = CommandStats()


class StoreStats:
    """What a store counts; all zero when persistence is off. ``disk_bytes``
    is by file (``database``, ``wal``, ``log``), refreshed about every second;
    ``live_bytes`` (keys and values of the stored sessions) is sampled."""

    __slots__ = (
        "backpressure_seconds",
        "commit_duration",
        "compacted_changes",
        "compactions",
        "disk_bytes",
        "errors",
        "live_bytes",
        "writes",
    )

    def __init__(self) -> None:
        self.writes = 0
        self.errors: dict[str, int] = {}
        self.commit_duration = DurationHistogram(COMMIT_BUCKETS)
        self.disk_bytes: dict[str, int] = {}
        self.live_bytes = 0
        self.compactions = 0
        self.compacted_changes = 0
        self.backpressure_seconds = 0.0

    def error(self, operation: str) -> None:
        self.errors[operation] = self.errors.get(operation, 0) + 1


class ReloadStats:
    """Outcomes of config reloads."""

    __slots__ = ("failure", "last_success_timestamp", "last_successful", "success")

    def __init__(self, last_success_timestamp: float = 0.0) -> None:
        self.success = 0
        self.failure = 0
        self.last_successful = True
        self.last_success_timestamp = last_success_timestamp


class Stats:
    """Every counter of one daemon. ``commands`` is keyed by command name
    (upper case) and filled by whoever declares the commands."""

    __slots__ = ("command_duration", "commands", "reload", "server", "store")

    def __init__(self) -> None:
        self.server = ServerStats()
        self.store = StoreStats()
        self.reload = ReloadStats()
        self.commands: dict[str, CommandStats] = {}
        self.command_duration = DurationHistogram(COMMAND_BUCKETS)
