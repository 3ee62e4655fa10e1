"""Who commands run for and what they run in: the per-connection
:class:`Client` and the daemon-wide :class:`ServerState`."""

from __future__ import annotations

import itertools
import os
import time
from typing import TYPE_CHECKING

from ..config import Config
from ..stats import Stats

if TYPE_CHECKING:
    from .registry import Command

Args = list[bytes]


class Client:
    """Per-connection state that commands read and change."""

    __slots__ = (
        "authenticated",
        "close_after_reply",
        "created_at",
        "fd",
        "id",
        "last_active",
        "last_command",
        "lib_name",
        "lib_ver",
        "multi",
        "multi_error",
        "name",
        "peer",
        "resp3",
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
        self.close_after_reply = False
        # perf_counter: the server reads that clock once per read anyway.
        self.created_at = time.perf_counter()
        self.last_active = self.created_at
        self.last_command = "NULL"
        self.peer = peer
        self.fd = fd

    def info_line(self, socket_path: str = "") -> str:
        """One CLIENT LIST line in Redis' format (a Unix-socket client's ``addr``
        is the socket path and port 0); the peer's credentials follow as
        ``peer-pid`` / ``peer-uid`` fields. No value may hold a space or ``=``:
        clients split the line on both."""
        now = time.perf_counter()
        flags = "x" if self.multi is not None else "N"
        peer = "".join(f" peer-{field}" for field in self.peer.split(",") if "=" in field)
        return (
            f"id={self.id} addr={socket_path}:0 laddr={socket_path}:0 fd={self.fd} "
            f"name={self.name or ''} "
            f"age={int(now - self.created_at)} idle={int(now - self.last_active)} flags={flags} "
            f"db=0 sub=0 psub=0 ssub=0 multi={-1 if self.multi is None else len(self.multi)} "
            f"qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 "
            f"tot-mem=0 events=r cmd={self.last_command.lower()} user=default redir=-1 "
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


class ServerState:
    """What connection and server commands read besides sessions: the
    effective config (pushed on reload, :meth:`configure`), the connected
    clients, the counters, when the daemon started, its run id (INFO's
    ``run_id``: 40 random hex digits per start) and the RESETSTAT baseline."""

    __slots__ = (
        "_ids",
        "baseline",
        "clients",
        "config",
        "peak_memory",
        "run_id",
        "started_at",
        "started_monotonic",
        "stats",
    )

    def __init__(self, config: Config, stats: Stats) -> None:
        self.config = config
        self.stats = stats
        self.clients: dict[int, Client] = {}
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        self._ids = itertools.count(1)
        self.run_id = os.urandom(20).hex()
        self.baseline = Baseline()
        self.peak_memory = 0  # the most used_memory INFO or the sampler saw

    def new_client(self, *, authenticated: bool) -> Client:
        """A client with the next id (ids are never reused while the daemon runs)."""
        return Client(next(self._ids), authenticated=authenticated)

    def configure(self, config: Config) -> None:
        self.config = config

    @property
    def password(self) -> str | None:
        return self.config.security.password

    @property
    def socket_path(self) -> str:
        return str(self.config.socket.path)
