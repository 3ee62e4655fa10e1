"""Operations commands: SLOWLOG and LATENCY, read from the daemon's
:class:`~sessiond.stats.SlowLog` and :class:`~sessiond.stats.LatencyMonitor`.

What an entry's duration is (a command's event-loop time, or a batch's when
several commands ran in one stretch) and which stalls the monitor records are
in docs/operations.md.
"""

from __future__ import annotations

from typing import Any

from ..protocol import OK, Error, Status, Verbatim
from . import errors
from .registry import SERVER, Args, Call, Reply, command, subcommand
from .util import int_arg, text

_SLOWLOG_COUNT = "ERR count should be greater than or equal to -1"
_SLOWLOG_HELP = [
    "SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GET [<count>]",
    "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
    "    Entries are made of:",
    "    id, timestamp, time in microseconds, arguments array, client IP and port,",
    "    client name",
    "LEN",
    "    Return the length of the slowlog.",
    "RESET",
    "    Reset the slowlog.",
    "HELP",
    "    Print this help.",
]


@command(
    "SLOWLOG",
    -2,
    "admin",
    group=SERVER,
    summary="The slow log: commands that held the event loop longest",
    subcommands={
        "GET": (-2, "[count]", "The newest entries of the slow log (default 10, -1 all)"),
        "LEN": (2, "", "Number of entries in the slow log"),
        "RESET": (2, "", "Clear the slow log"),
        "HELP": (2, "", "Show helpful text about the different subcommands"),
    },
)
def cmd_slowlog(cx: Call, args: Args) -> Reply:
    slowlog = cx.state.stats.slowlog
    sub = subcommand(args, "SLOWLOG")
    if sub == b"GET":
        if len(args) > 3:  # Redis' handler's own check, in its words
            raise errors.unknown_subcommand(text(args[1]), "SLOWLOG")
        count = 10
        if len(args) == 3:
            count = int_arg(args[2], _SLOWLOG_COUNT)  # Redis' one text for both
            if count < -1:
                raise Error(_SLOWLOG_COUNT)
            if count == -1:
                count = len(slowlog.entries)
        entries = list(slowlog.entries)[:count]
        return [
            [e.id, e.time, e.micros, list(e.args), e.addr.encode(), e.name.encode()]
            for e in entries
        ]
    if sub == b"LEN":
        return len(slowlog.entries)
    if sub == b"RESET":
        slowlog.reset()
        return OK
    return [Status(line) for line in _SLOWLOG_HELP]


_LATENCY_HELP = [
    "LATENCY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "DOCTOR",
    "    Return a human readable latency analysis report.",
    "HISTORY <event>",
    "    Return time-latency samples for the <event> class.",
    "LATEST",
    "    Return the latest latency samples for all events.",
    "RESET [<event> ...]",
    "    Reset latency data of one or more <event> classes.",
    "    (default: reset all data for all event classes)",
    "HELP",
    "    Print this help.",
]

# What each event means and where to look: LATENCY DOCTOR's advice.
EVENT_ADVICE = {
    "command": (
        "Commands held the event loop (one read's batch of them, or one command): every "
        "other client waited meanwhile. SLOWLOG GET names them; look for KEYS, SCAN with a "
        "large COUNT, large MGET/MSET or long pipelines."
    ),
    "gc": (
        "Python's cyclic garbage collector paused the event loop. Occasional pauses of a few "
        "ms are normal with many sessions in memory; long ones grow with the number of "
        "objects that live long."
    ),
    "loop-lag": (
        "A timer on the event loop fired late: something kept the loop from running. Either "
        "the process lacked CPU (check the host's load and the daemon's CPU panel), or "
        "another thread held Python's GIL (the store's writer), or one "
        "of the other events here."
    ),
    "expire-cycle": (
        "Removing expired sessions (the sweep, every cache.sweep_interval) held the loop: "
        "many sessions expired at once."
    ),
    "config-reload": (
        "Applying a reloaded config held the loop; lowering cache.max_sessions or "
        "cache.max_memory evicts the excess at once."
    ),
}


def doctor_report(cx: Call) -> str:
    """LATENCY DOCTOR: each event's samples and what to look at."""
    monitor = cx.state.stats.latency
    if monitor.threshold <= 0:
        return (
            "The latency monitor is off (latency.monitor_threshold: 0). Set it in the config "
            "file, for example to 100ms; a reload applies it.\n"
        )
    if not monitor.events:
        return (
            "No event-loop stall of at least "
            f"{monitor.threshold * 1000:g} ms was seen since the daemon started or the last "
            "LATENCY RESET.\n"
        )
    lines = [
        f"Event-loop stalls of at least {monitor.threshold * 1000:g} ms "
        "(latency.monitor_threshold), by event:",
        "",
    ]
    for number, (name, event) in enumerate(sorted(monitor.events.items()), 1):
        samples = [ms for _, ms in event.samples]
        mean = sum(samples) / len(samples) if samples else 0
        lines.append(
            f"{number}. {name}: {len(samples)} latency spikes (average {mean:.0f}ms, "
            f"latest {samples[-1] if samples else 0}ms, worst {event.max_ms}ms)."
        )
        lines.append(f"   {EVENT_ADVICE.get(name, 'No advice for this event.')}")
    return "\n".join(lines) + "\n"


@command(
    "LATENCY",
    -2,
    "admin",
    group=SERVER,
    summary="The latency monitor: event-loop stalls",
    subcommands={
        "LATEST": (2, "", "The latest and worst stall of each event"),
        "HISTORY": (3, "event", "Time and length of an event's stalls"),
        "RESET": (-2, "[event ...]", "Forget the stalls of some or every event"),
        "DOCTOR": (2, "", "A human readable report of the stalls"),
        "HELP": (2, "", "Show helpful text about the different subcommands"),
    },
)
def cmd_latency(cx: Call, args: Args) -> Reply:
    monitor = cx.state.stats.latency
    sub = subcommand(args, "LATENCY")
    if sub == b"LATEST":
        latest: list[Any] = []
        for name, event in sorted(monitor.events.items()):
            if event.samples:
                when, ms = event.samples[-1]
                latest.append([name.encode(), when, ms, event.max_ms])
        return latest
    if sub == b"HISTORY":
        found = monitor.events.get(text(args[2]))
        return [] if found is None else [[when, ms] for when, ms in found.samples]
    if sub == b"RESET":
        names = None if len(args) == 2 else [text(a) for a in args[2:]]
        return monitor.reset(names)
    if sub == b"DOCTOR":
        return Verbatim(doctor_report(cx))
    return [Status(line) for line in _LATENCY_HELP]
