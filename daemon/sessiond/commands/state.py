"""Who commands run for and what they run in: the per-connection
:class:`Client` and the daemon-wide :class:`ServerState`."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ..config import Config
from ..stats import Stats
from .channels import PubSub

if TYPE_CHECKING:
    from .registry import Command

Args = list[bytes]


# CLIENT REPLY modes: ON; OFF; SKIP was just asked for (its own reply is not
# sent either); the next reply is skipped.
REPLY_ON: Final = 0
REPLY_OFF: Final = 1
REPLY_SKIP_ASKED: Final = 2
REPLY_SKIP: Final = 3


class Client:
    """Per-connection state that commands read and change."""

    __slots__ = (
        "authenticated",
        "channels",
        "close_after_reply",
        "created_at",
        "disconnect",
        "fd",
        "id",
        "last_active",
        "last_command",
        "lib_name",
        "lib_ver",
        "monitoring",
        "multi",
        "multi_error",
        "name",
        "patterns",
        "peer",
        "push",
        "reply_mode",
        "resp3",
        "subscriptions",
        "watch_dirty",
        "watched",
    )

    def __init__(
        self, client_id: int, *, authenticated: bool, peer: str = "", fd: int = -1
    ) -> None:
        self.id = client_id
        self.authenticated = authenticated
        self.resp3 = False
        self.name: str | None = None
        self.lib_name = ""
        self.lib_ver = ""
        self.multi: list[tuple[Command, Args]] | None = None
        self.multi_error = False
        self.monitoring = False  # MONITOR: in ServerState.monitors
        self.close_after_reply = False
        # perf_counter: the server reads that clock once per read anyway.
        self.created_at = time.perf_counter()
        self.last_active = self.created_at
        self.last_command = "NULL"
        self.peer = peer
        self.fd = fd
        # Pub/sub: the channels and patterns it is subscribed to (in the order
        # it subscribed), how many in all (0: not subscribed), and where its
        # messages go (the connection's; None while it has none).
        self.channels: dict[bytes, None] = {}
        self.patterns: dict[bytes, None] = {}
        self.subscriptions = 0
        self.push: Callable[[bytes], None] | None = None
        # WATCH: each watched key and whether it existed then; set once a
        # watched key changes.
        self.watched: dict[bytes, bool] | None = None
        self.watch_dirty = False
        # CLIENT REPLY: REPLY_ON, REPLY_OFF, or skipping (see the constants).
        self.reply_mode = REPLY_ON
        # Closes the connection at once (CLIENT KILL); set by the server.
        self.disconnect: Callable[[], None] | None = None

    def info_line(self, socket_path: str = "") -> str:
        """One CLIENT LIST line in Redis' format (a Unix-socket client's ``addr``
        is the socket path and port 0); the peer's credentials follow as
        ``peer-pid`` / ``peer-uid`` fields. No value may hold a space or ``=``:
        clients split the line on both."""
        now = time.perf_counter()
        # Redis' letters in Redis' order; every client here came through the
        # Unix socket (U), so none is without a flag (N).
        flags = (
            ("O" if self.monitoring else "")
            + ("P" if self.subscriptions else "")
            + ("x" if self.multi is not None else "")
            + ("d" if self.watch_dirty else "")
            + ("c" if self.close_after_reply else "")
            + "U"
        )
        # The command's full name (client|list) as Redis shows it; NULL before
        # the first, and for a command or subcommand it does not have.
        last = self.last_command
        cmd = last if last == "NULL" else last.lower()
        peer = "".join(f" peer-{field}" for field in self.peer.split(",") if "=" in field)
        return (
            f"id={self.id} addr={socket_path}:0 laddr={socket_path}:0 fd={self.fd} "
            f"name={self.name or ''} "
            f"age={int(now - self.created_at)} idle={int(now - self.last_active)} flags={flags} "
            f"db=0 sub={len(self.channels)} psub={len(self.patterns)} ssub=0 "
            f"multi={-1 if self.multi is None else len(self.multi)} "
            f"qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 "
            f"tot-mem=0 events=r cmd={cmd} user=default redir=-1 "
            f"resp={3 if self.resp3 else 2} lib-name={self.lib_name} lib-ver={self.lib_ver}"
            f"{peer}"
        )


class Baseline:
    """INFO's counters as they were at the last CONFIG RESETSTAT: INFO shows
    what they gained since (Prometheus' counters are never set back).
    ``commands`` holds each command's (calls, rejected, errors, loop time,
    latency bucket counts)."""

    __slots__ = ("commands", "counters", "errors")

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.commands: dict[str, tuple[int, int, int, float, list[int]]] = {}


def _denied(config: Config) -> dict[str, frozenset[bytes] | None]:
    """security.disabled_commands by command name: ``None`` for the whole
    command, else the subcommands it names (upper case)."""
    denied: dict[str, frozenset[bytes] | None] = {}
    for full in config.security.disabled_commands:
        name, _, sub = full.partition("|")
        if not sub:
            denied[name] = None
        elif name not in denied or denied[name] is not None:
            denied[name] = (denied.get(name) or frozenset()) | {sub.encode()}
    return denied


class ServerState:
    """What connection and server commands read besides sessions: the
    effective config (pushed on reload, :meth:`configure`) and the commands
    it disables (``denied``, by :func:`_denied`), the connected
    clients, the counters, the pub/sub channels, when the daemon started, its
    run id (INFO's ``run_id``: 40 random hex digits per start) and the
    RESETSTAT baseline."""

    __slots__ = (
        "_ids",
        "baseline",
        "clients",
        "config",
        "denied",
        "monitors",
        "on_shutdown",
        "on_unpause",
        "pause_all",
        "pause_end",
        "peak_memory",
        "pubsub",
        "run_id",
        "started_at",
        "started_monotonic",
        "stats",
    )

    def __init__(self, config: Config, stats: Stats, pubsub: PubSub | None = None) -> None:
        """``pubsub`` is the daemon's (the app wires it to the keyspace);
        without one the state has a hub of its own that sends no keyspace events."""
        self.config = config
        self.denied = _denied(config)
        self.stats = stats
        self.pubsub = PubSub() if pubsub is None else pubsub
        self.clients: dict[int, Client] = {}
        # MONITOR: the clients every command is streamed to (by id).
        self.monitors: dict[int, Client] = {}
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        self._ids = itertools.count(1)
        self.run_id = os.urandom(20).hex()
        self.baseline = Baseline()
        self.peak_memory = 0  # the most used_memory INFO or the sampler saw
        # CLIENT PAUSE: until when (time.monotonic(); 0: no pause) and whether
        # every command waits or only those that may write. The server holds
        # the requests and sets ``on_unpause`` to let them go.
        self.pause_end = 0.0
        self.pause_all = False
        self.on_unpause: Callable[[], None] | None = None
        # SHUTDOWN: what stops the daemon as SIGTERM does (the app sets it),
        # told who asked.
        self.on_shutdown: Callable[[Client], None] | None = None

    def pause(self, seconds: float, *, every_command: bool) -> None:
        """CLIENT PAUSE, as Redis combines pauses: the later end and the
        stricter mode win while a pause lasts."""
        end = time.monotonic() + seconds
        if self.paused():
            self.pause_all = self.pause_all or every_command
            self.pause_end = max(self.pause_end, end)
        else:
            self.pause_all = every_command
            self.pause_end = end

    def paused(self) -> bool:
        """Whether a pause is on (one that has run out is ended here)."""
        if not self.pause_end:
            return False
        if time.monotonic() < self.pause_end:
            return True
        self.unpause()
        return False

    def unpause(self) -> None:
        """CLIENT UNPAUSE, or the pause ran out: held requests go on."""
        self.pause_end = 0.0
        self.pause_all = False
        if self.on_unpause is not None:
            self.on_unpause()

    def new_client(self, *, authenticated: bool) -> Client:
        """A client with the next id (ids are never reused while the daemon runs)."""
        return Client(next(self._ids), authenticated=authenticated)

    def configure(self, config: Config) -> None:
        self.config = config
        self.denied = _denied(config)

    @property
    def password(self) -> str | None:
        return self.config.security.password

    @property
    def socket_path(self) -> str:
        return str(self.config.socket.path)
