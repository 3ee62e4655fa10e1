"""The daemon's counters: plain integers and lock-free histograms, and the
slow log and latency monitor that SLOWLOG and LATENCY read.

Imports nothing of sessiond's. The hot path does ``+= 1`` on an attribute of an object
defined here; :mod:`sessiond.metrics` turns them into Prometheus families when
it is scraped, and INFO reads the same numbers. One :class:`Stats` per daemon
(the app makes it and hands each part the piece it counts in), so there is no
mutable module-level state and two daemons in one process do not share counts.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Final

# The bucket bounds are typed as tuples of any length: compiled, a tuple of
# sixteen floats is a C struct, which each use from another module (the
# server's latency, at every reply) unboxed from the module's dict and boxed
# into a new tuple again (about 2k instructions).
Bounds = tuple[float, ...]
# Seconds; buckets of sessiond_command_latency_seconds: what a client waits,
# from its request's arrival to its reply's write, store waits included.
LATENCY_BUCKETS: Final[Bounds] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
# Seconds; buckets of sessiond_command_duration_seconds (event-loop time).
COMMAND_BUCKETS: Final[Bounds] = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
# Seconds; buckets of sessiond_store_commit_duration_seconds.
COMMIT_BUCKETS: Final[Bounds] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class DurationHistogram:
    """Counts per bucket (the last one is ``+Inf``) and their sum: one bisect
    and two additions per observation, cumulated only when read."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float, times: int = 1) -> None:
        """Count ``times`` observations of ``seconds`` each."""
        self.counts[bucket(self.bounds, seconds)] += times
        self.sum += seconds * times


def bucket(bounds: Bounds, value: float) -> int:
    """The index of the first bound ``>= value`` (``len(bounds)``: ``+Inf``).
    A plain loop: compiled, it is a few float compares, where ``bisect``
    compares Python objects."""
    i = 0
    n = len(bounds)
    while i < n and bounds[i] < value:
        i += 1
    return i


class CommandStats:
    """One command's calls, error replies (``rejected``: of those, the ones
    refused before it ran: arity, NOAUTH, MISCONF), its share of the
    event-loop time of the batches it ran in (seconds), and its client-seen
    latency."""

    __slots__ = ("calls", "errors", "latency", "loop_time", "name", "rejected")

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.calls = 0
        self.errors = 0
        self.rejected = 0
        self.loop_time = 0.0
        self.latency = DurationHistogram(LATENCY_BUCKETS)


class ServerStats:
    """Connection-level counters; ``unknown`` counts requests naming no
    command; ``error_replies`` counts error replies by their first word
    (``ERR``, ``NOAUTH``...); bytes are counted per read and per write;
    ``output_buffer_disconnections`` counts the clients (subscribers or not)
    dropped for not reading their output past limits.max_output_buffer."""

    __slots__ = (
        "connections_total",
        "error_replies",
        "net_input_bytes",
        "net_output_bytes",
        "output_buffer_disconnections",
        "rejected",
        "unknown",
    )

    def __init__(self) -> None:
        self.connections_total = 0
        self.rejected: dict[str, int] = {}
        self.unknown = CommandStats("unknown")
        self.error_replies: dict[str, int] = {}
        self.net_input_bytes = 0
        self.net_output_bytes = 0
        self.output_buffer_disconnections = 0

    def error_reply(self, message: str) -> None:
        """Count one error reply under its prefix (Redis' errorstats)."""
        prefix = message.split(" ", 1)[0]
        self.error_replies[prefix] = self.error_replies.get(prefix, 0) + 1


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


# Seconds; buckets of the shared store's database round trips and of the lag
# between a change's commit on one host and its notification on another.
DATABASE_BUCKETS: Final[Bounds] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class SharedStats:
    """What a store shared by several hosts (PostgreSQL) counts; all zero
    otherwise. ``round_trips`` is by operation (``commit``, ``decide``,
    ``read``, ``heartbeat``); ``reconnects`` by connection (``listen``,
    ``writer``, ``pool``); ``pool_size``/``pool_in_use`` are its connection
    pool's now."""

    __slots__ = (
        "decision_errors",
        "decision_transactions",
        "decisions",
        "expired",
        "invalidation_lag",
        "invalidations_received",
        "invalidations_sent",
        "listening",
        "memory_flushes",
        "notifications_received",
        "notifications_sent",
        "pool_in_use",
        "pool_size",
        "reconnects",
        "renewals",
        "round_trips",
        "unanswered_commits",
    )

    def __init__(self) -> None:
        self.round_trips: dict[str, DurationHistogram] = {}
        # Commits whose answer never came, by what the database then said of
        # them: "landed", "rolled back", "unknown" (it could not be asked).
        self.unanswered_commits: dict[str, int] = {}
        self.invalidations_sent = 0
        self.invalidations_received = 0
        self.notifications_sent = 0
        self.notifications_received = 0
        self.invalidation_lag = DurationHistogram(DATABASE_BUCKETS)
        self.reconnects: dict[str, int] = {}
        self.listening = 0
        self.memory_flushes = 0
        self.decisions = 0
        self.decision_transactions = 0
        self.decision_errors = 0
        self.renewals = 0
        self.expired = 0
        self.pool_size = 0
        self.pool_in_use = 0

    def round_trip(self, operation: str, seconds: float) -> None:
        hist = self.round_trips.get(operation)
        if hist is None:
            hist = self.round_trips[operation] = DurationHistogram(DATABASE_BUCKETS)
        hist.observe(seconds)

    def reconnect(self, connection: str) -> None:
        self.reconnects[connection] = self.reconnects.get(connection, 0) + 1

    def unanswered(self, outcome: str) -> None:
        self.unanswered_commits[outcome] = self.unanswered_commits.get(outcome, 0) + 1


class ReloadStats:
    """Outcomes of config reloads."""

    __slots__ = ("failure", "last_success_timestamp", "last_successful", "success")

    def __init__(self, last_success_timestamp: float = 0.0) -> None:
        self.success = 0
        self.failure = 0
        self.last_successful = True
        self.last_success_timestamp = last_success_timestamp


# Redis' limits on what one slow log entry keeps of a command's arguments.
SLOWLOG_MAX_ARGS = 32
SLOWLOG_MAX_STRING = 128


class SlowEntry:
    """One SLOWLOG entry, as Redis replies it: id, unix time, microseconds,
    arguments (truncated as Redis truncates them), client address and name."""

    __slots__ = ("addr", "args", "id", "micros", "name", "time")

    def __init__(
        self, entry_id: int, when: int, micros: int, args: list[bytes], addr: str, name: str
    ) -> None:
        self.id = entry_id
        self.time = when
        self.micros = micros
        self.args = args
        self.addr = addr
        self.name = name


def slowlog_args(args: list[bytes]) -> list[bytes]:
    """At most 32 arguments, the last of them saying how many more there were,
    and at most 128 bytes of each, followed by how many more bytes it had (what
    Redis keeps, so a huge MSET cannot fill memory through the slow log)."""
    kept = min(len(args), SLOWLOG_MAX_ARGS)
    out: list[bytes] = []
    for i in range(kept):
        if kept != len(args) and i == kept - 1:
            out.append(b"... (%d more arguments)" % (len(args) - kept + 1))
            break
        arg = args[i]
        if len(arg) > SLOWLOG_MAX_STRING:
            arg = arg[:SLOWLOG_MAX_STRING] + b"... (%d more bytes)" % (
                len(arg) - SLOWLOG_MAX_STRING
            )
        out.append(bytes(arg))
    return out


class SlowLog:
    """The newest ``max_len`` commands (or batches) whose event-loop time was
    at least ``threshold`` seconds; a negative threshold logs nothing."""

    __slots__ = ("entries", "max_len", "next_id", "threshold")

    def __init__(self, threshold: float = 0.01, max_len: int = 128) -> None:
        self.threshold = threshold
        self.max_len = max_len
        self.entries: deque[SlowEntry] = deque(maxlen=max_len)
        self.next_id = 0

    def configure(self, threshold: float, max_len: int) -> None:
        self.threshold = threshold
        if max_len != self.max_len:
            self.max_len = max_len
            self.entries = deque(self.entries, maxlen=max_len)

    def add(self, seconds: float, args: list[bytes], addr: str, name: str, now: float) -> None:
        self.entries.appendleft(
            SlowEntry(self.next_id, int(now), int(seconds * 1_000_000), args, addr, name)
        )
        self.next_id += 1

    def reset(self) -> None:
        self.entries.clear()


# Samples a latency event keeps (Redis' LATENCY_TS_LEN).
LATENCY_HISTORY = 160


class LatencyEvent:
    """One event's history: ``[unix time, milliseconds]`` samples, one per
    second at most (the largest of that second), and the largest ever."""

    __slots__ = ("max_ms", "samples")

    def __init__(self) -> None:
        self.samples: deque[list[int]] = deque(maxlen=LATENCY_HISTORY)
        self.max_ms = 0


class LatencyMonitor:
    """Event-loop stalls of at least ``threshold`` seconds (0: off), by event
    (``command``, ``gc``, ``loop-lag``, ``expire-cycle``, ``config-reload``),
    as Redis' latency monitor keeps them."""

    __slots__ = ("events", "threshold")

    def __init__(self, threshold: float = 0.0) -> None:
        self.threshold = threshold
        self.events: dict[str, LatencyEvent] = {}

    def record(self, event: str, seconds: float, now: float = 0.0) -> None:
        """A stall of ``seconds`` at unix time ``now`` (0: the current time),
        kept if it reaches the threshold."""
        threshold = self.threshold
        if threshold <= 0 or seconds < threshold:
            return
        if not now:
            now = time.time()
        history = self.events.get(event)
        if history is None:
            history = self.events[event] = LatencyEvent()
        ms = int(seconds * 1000)
        when = int(now)
        samples = history.samples
        if samples and samples[-1][0] == when:
            samples[-1][1] = max(samples[-1][1], ms)
        else:
            samples.append([when, ms])
        history.max_ms = max(history.max_ms, ms)

    def reset(self, events: list[str] | None = None) -> int:
        """Forget ``events`` (all if ``None``); how many were known."""
        if events is None:
            count = len(self.events)
            self.events.clear()
            return count
        count = 0
        for event in events:
            if self.events.pop(event, None) is not None:
                count += 1
        return count


# Redis' instantaneous_* fields: the mean of the last 16 samples, one every 100 ms.
RATE_SAMPLES = 16


class Rate:
    """Per-second rate of a growing count, averaged over the last samples."""

    __slots__ = ("last_time", "last_value", "next", "rates")

    def __init__(self) -> None:
        self.last_time = 0.0
        self.last_value = 0
        self.rates = [0.0] * RATE_SAMPLES
        self.next = 0

    def sample(self, value: int, now: float) -> None:
        if self.last_time and now > self.last_time:
            self.rates[self.next] = (value - self.last_value) / (now - self.last_time)
            self.next = (self.next + 1) % RATE_SAMPLES
        self.last_time = now
        self.last_value = value

    @property
    def value(self) -> float:
        return sum(self.rates) / RATE_SAMPLES


class Stats:
    """Every counter of one daemon. ``commands`` is keyed by command name
    (upper case) and filled by whoever declares the commands. ``loop_lag``
    is how late a 100 ms timer on the event loop fired (the app's probe)."""

    __slots__ = (
        "command_duration",
        "commands",
        "input_rate",
        "keyspace_sessions",
        "latency",
        "loop_lag",
        "ops_rate",
        "output_rate",
        "reload",
        "server",
        "shared",
        "slowlog",
        "store",
    )

    def __init__(self) -> None:
        self.server = ServerStats()
        self.store = StoreStats()
        self.shared = SharedStats()
        self.reload = ReloadStats()
        self.commands: dict[str, CommandStats] = {}
        self.command_duration = DurationHistogram(COMMAND_BUCKETS)
        self.loop_lag = DurationHistogram(LATENCY_BUCKETS)
        self.slowlog = SlowLog()
        self.latency = LatencyMonitor()
        self.ops_rate = Rate()
        self.input_rate = Rate()
        self.output_rate = Rate()
        # Sessions in memory and store together, counted every few seconds
        # off the event loop (None until the first count).
        self.keyspace_sessions: int | None = None

    def total_commands(self) -> int:
        """Commands run so far, summed when asked (nothing extra per command)."""
        return sum(c.calls for c in self.commands.values()) + self.server.unknown.calls

    def sample_rates(self, now: float) -> None:
        """One sample of the instantaneous rates (the app calls it every 100 ms)."""
        self.ops_rate.sample(self.total_commands(), now)
        self.input_rate.sample(self.server.net_input_bytes, now)
        self.output_rate.sample(self.server.net_output_bytes, now)
