"""The asyncio Unix-socket server: connections, limits, auth, backpressure, shutdown.

Each connection is an :class:`asyncio.Protocol`. Requests parsed from one read
are executed in order and their replies written with one ``write``. A request
that must wait (a read-through load from the store, or a durable commit before
replies may be sent) parks the connection: later requests queue behind it, so
replies always come back in request order.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
import struct
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from time import perf_counter
from typing import Any, cast

import structlog

from .cache import Entry
from .commands import LOOKUP, Client, CommandSpec, Runtime
from .protocol import OK, QUEUED, Error, ProtocolError, RequestParser, encode
from .store import Store, StoreError

log = structlog.get_logger("sessiond.server")

# Seconds; Prometheus histogram buckets for sessiond_command_duration_seconds.
DURATION_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
UNAUTHENTICATED_REQUEST_LIMIT = 16 * 1024  # bytes per request before AUTH
# Linux' socket option number (asm-generic); Python does not name it.
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_NGROUPS_MAX = 65536
_PENDING_PAUSE = 1024  # queued requests before a parked connection stops reading
_TX_IMMEDIATE = frozenset({"EXEC", "DISCARD", "MULTI", "QUIT", "RESET", "WATCH"})
# Commands that change how the connection's next requests must be handled.
_STATEFUL = _TX_IMMEDIATE | {"AUTH", "HELLO"}


Prefetch = Callable[[list[bytes], dict[bytes, Entry[bytes] | None]], Awaitable[None]]


class DurationHistogram:
    """A lock-free histogram: the hot path does one bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds


class StartupError(Exception):
    """The server cannot start; the message says what and where."""


def _unknown_command(args: list[Any]) -> Error:
    name = args[0].decode("utf-8", "replace") if isinstance(args[0], bytes) else str(args[0])
    rest = ""  # Redis' wording: each argument quoted and followed by a space, ~128 chars
    for a in args[1:]:
        if len(rest) >= 128:
            break
        text = a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a)
        rest += f"'{text[: 128 - len(rest)]}' "
    return Error(f"ERR unknown command '{name[:128]}', with args beginning with: {rest}")


class Connection(asyncio.Protocol):
    __slots__ = (
        "ahead",
        "busy",
        "client",
        "durable",
        "out",
        "parser",
        "paused",
        "peeked",
        "pending",
        "rt",
        "server",
        "store",
        "task",
        "transport",
        "write_slots",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.rt = server.rt
        self.transport: asyncio.Transport | None = None
        self.pending: deque[list[bytes]] = deque()
        self.out: list[bytes] = []
        self.task: asyncio.Task[None] | None = None
        self.busy = False  # a request waits for the store; later ones queue
        self.paused = False
        self.store = self.rt.store
        self.durable = self.store is not None and server.durable_replies
        self.client = Client(authenticated=self.rt.password is None)
        self.parser = RequestParser(self.request_limit())
        self.peeked: dict[bytes, Entry[bytes] | None] = {}
        # What CommandSpec.ahead read for the next request (never None once read).
        self.ahead: Any = None
        self.write_slots: list[int] = []

    # -------------------------------------------------------------- events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        rt = self.rt
        rt.stats.connections_total += 1
        reason = self.server.admission(transport)
        if reason is not None:
            rt.stats.rejected[reason] = rt.stats.rejected.get(reason, 0) + 1
            fields: dict[str, Any] = {}
            if reason == "peer_credentials":
                creds = self.server.peer_credentials(transport)
                if creds is not None:
                    fields = {"gid": creds[2], "groups": list(self.server.peer_groups(transport))}
            log.warning(
                "connection_rejected",
                reason=reason,
                peer=self.server.peer_label(transport),
                **fields,
            )
            if reason == "max_clients":
                transport.write(b"-ERR max number of clients reached\r\n")
            transport.close()
            self.transport = None
            return
        sock = transport.get_extra_info("socket")
        self.client.fd = sock.fileno() if sock is not None else -1
        self.client.peer = self.server.peer_label(transport)
        rt.clients[self.client.id] = self.client
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return
        self.transport = None
        self.rt.clients.pop(self.client.id, None)
        self.server.connections.discard(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop reading its requests.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.paused:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        client = self.client
        client.last_active = time.monotonic()
        try:
            requests = self.parser.feed(data)
        except ProtocolError as exc:
            # The requests before the bad bytes are answered first, as Redis does.
            self.pending.extend(exc.requests)
            if self.pending and not self.busy:
                self.drain()
            self.protocol_error(str(exc))
            return
        if not requests:
            return
        self.pending.extend(requests)
        if not self.busy:
            self.drain()
        elif len(self.pending) > _PENDING_PAUSE and not self.paused and self.transport:
            self.paused = True
            self.transport.pause_reading()

    def protocol_error(self, message: str) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        log.info("protocol_error", client_id=self.client.id, error=message)
        if self.write_slots:
            self.out.clear()  # never acknowledge writes whose commit is still pending
        self.flush()
        transport.write(b"-ERR Protocol error: %b\r\n" % message.encode())
        transport.close()
        self.pending.clear()

    # ---------------------------------------------------------- execution

    def drain(self) -> None:
        """Execute queued requests until done or one must wait."""
        if self.store is None:
            self._drain_memory()
        else:
            self._drain_store()

    def _drain_memory(self) -> None:
        """Memory only: no request ever waits, so run them all and reply once."""
        pending = self.pending
        out = self.out
        client = self.client
        room = self.output_room()
        while pending:
            args = pending.popleft()
            spec = LOOKUP.get(args[0]) if type(args[0]) is bytes else None
            if spec is None or spec.name in _STATEFUL or client.multi is not None:
                out.append(self.execute(spec, args))
                if client.close_after_reply:
                    pending.clear()
                    break
            elif client.authenticated:
                out.append(encode(self.call(spec, args), client.resp3))
            else:
                out.append(self.execute(spec, args))
            room -= len(out[-1])
            if room < 0:
                self.output_exceeded()
                return
        self.flush()

    def _drain_store(self) -> None:
        pending = self.pending
        out = self.out
        rt = self.rt
        store = self.store
        assert store is not None
        room = self.output_room() - sum(map(len, out))
        while pending:
            args = pending[0]
            spec = LOOKUP.get(args[0]) if type(args[0]) is bytes else None
            if spec is not None and self.client.authenticated:
                keys = self.server.keys_to_load(spec, args, self.client, self.peeked)
                if keys:
                    self._wait_then_go_on(self.server.prefetch(keys, self.peeked))
                    return
                if spec.ahead is not None and self.ahead is None and self.client.multi is None:
                    work = spec.ahead(rt, args)
                    if work is not None:
                        self._wait_then_go_on(self._read_ahead(work))
                        return
                rt.peeked = self.peeked
            pending.popleft()
            if store.failure is not None and self.writes(spec):
                out.append(self.refuse_write(spec, store.failure))
                continue
            store.view = self.peeked  # what the command changes, it reads back
            rt.ahead = self.ahead
            out.append(self.execute(spec, args))
            store.view = None
            rt.ahead = self.ahead = None
            self.peeked.clear()
            if (
                spec is not None
                and (spec.write or spec.name == "EXEC")
                and (self.durable or store.lagging())
            ):
                self.write_slots.append(len(out) - 1)
            room -= len(out[-1])
            if room < 0:
                self.output_exceeded()
                return
            if self.client.close_after_reply:
                pending.clear()
                break
        if self.write_slots:
            self.busy = True
            self.server.after_commit(self._durable)
            return
        self.flush()

    def _wait_then_go_on(self, work: Awaitable[None]) -> None:
        """Park the queue while ``work`` reads the store for the next request
        (off the event loop), then go on with it."""
        self.busy = True
        self.task = asyncio.ensure_future(self._after(work))

    async def _after(self, work: Awaitable[None]) -> None:
        try:
            await work
        except StoreError as exc:
            # The request that needed the read is answered with the error.
            self.peeked.clear()
            self.ahead = None
            self.pending.popleft()
            self.out.append(encode(Error(f"ERR {exc}"), self.client.resp3))
        finally:
            self.task = None
            self.busy = False
        self._go_on()

    async def _read_ahead(self, work: Awaitable[Any]) -> None:
        self.ahead = await work

    def _durable(self, error: StoreError | None) -> None:
        """The writes whose replies we hold are on disk (or failed): reply."""
        if error is not None:
            reply = encode(Error(f"ERR {error}"), self.client.resp3)
            for slot in self.write_slots:
                self.out[slot] = reply
        self.write_slots.clear()
        self.busy = False
        self._go_on()

    def _go_on(self) -> None:
        if self.transport is None:
            return
        if self.paused and len(self.pending) <= _PENDING_PAUSE:
            self.paused = False
            self.transport.resume_reading()
        if self.pending:
            self.drain()
        else:
            self.flush()

    def output_room(self) -> int:
        """Bytes of replies this client may still have queued: the replies a
        batch builds count before they reach the transport, so a few bytes of
        pipelined GETs of a large value cannot build gigabytes first."""
        transport = self.transport
        used = 0 if transport is None else transport.get_write_buffer_size()
        return self.server.max_output_buffer - used

    def output_exceeded(self) -> None:
        """Drop a client whose queued replies passed limits.max_output_buffer."""
        log.warning(
            "client_output_buffer_exceeded",
            client_id=self.client.id,
            limit=self.server.max_output_buffer,
        )
        self.pending.clear()
        self.out.clear()
        self.write_slots.clear()
        if self.transport is not None:
            self.transport.abort()

    def flush(self) -> None:
        out = self.out
        transport = self.transport
        if not out or transport is None:
            return
        transport.write(b"".join(out) if len(out) > 1 else out[0])
        out.clear()
        if self.client.close_after_reply:
            transport.close()
        elif transport.get_write_buffer_size() > self.server.max_output_buffer:
            log.warning(
                "client_output_buffer_exceeded",
                client_id=self.client.id,
                limit=self.server.max_output_buffer,
            )
            transport.abort()

    def writes(self, spec: CommandSpec | None) -> bool:
        """Whether running ``spec`` now would change sessions."""
        if spec is None or not self.client.authenticated:
            return False
        multi = self.client.multi
        if multi is not None:
            return spec.name == "EXEC" and any(s.write for s, _ in multi)
        return spec.write

    def refuse_write(self, spec: CommandSpec | None, failure: StoreError) -> bytes:
        """Like Redis when it cannot persist: refuse writes, keep serving reads,
        so that no write is applied in memory that the store could not take."""
        assert spec is not None
        spec.calls += 1
        spec.errors += 1
        if spec.name == "EXEC":
            self.client.multi = None
        return encode(
            Error(f"MISCONF {failure}; writes are refused until the store recovers"),
            self.client.resp3,
        )

    def execute(self, spec: CommandSpec | None, args: list[bytes]) -> bytes:
        """Run one request with every check: auth, transactions, unknown names."""
        client = self.client
        rt = self.rt
        if spec is None and type(args[0]) is bytes:
            spec = LOOKUP.get(args[0].upper())
        if spec is None:
            rt.stats.unknown_commands += 1
            rt.stats.unknown_command_errors += 1
            if client.multi is not None:
                client.multi_error = True
            return encode(_unknown_command(args), client.resp3)
        if not client.authenticated and "noauth" not in spec.flags:
            spec.calls += 1
            spec.errors += 1
            return encode(Error("NOAUTH Authentication required."), client.resp3)
        name = spec.name
        if client.multi is not None or name in _TX_IMMEDIATE:
            reply = self.transaction(spec, args)
        else:
            reply = self.call(spec, args)
        if name in _STATEFUL:  # AUTH, HELLO or RESET may have changed who this is
            self.parser.set_limit(self.request_limit())
        return encode(reply, client.resp3)

    def request_limit(self) -> int:
        """Until it authenticates, a client may only send small requests (Redis
        caps them too): a stranger must not make the daemon buffer megabytes."""
        limit = self.rt.config.limits.max_request_size
        return limit if self.client.authenticated else min(limit, UNAUTHENTICATED_REQUEST_LIMIT)

    def call(self, spec: CommandSpec, args: list[bytes]) -> Any:
        arity = spec.arity
        n = len(args)
        spec.calls += 1
        if (arity > 0 and n != arity) or n < -arity:
            spec.errors += 1
            return Error(f"ERR wrong number of arguments for '{spec.name.lower()}' command")
        self.client.last_command = spec.name
        start = perf_counter()
        try:
            reply = spec.handler(self.rt, self.client, args)
        except Error as exc:
            # Drop the traceback: kept, it would tie this frame and the reply
            # into a reference cycle per error reply, left to the cyclic GC.
            reply = exc.with_traceback(None)
            spec.errors += 1
        except Exception:
            log.exception("command_failed", command=spec.name, client_id=self.client.id)
            reply = Error(f"ERR internal error while running '{spec.name.lower()}'")
            spec.errors += 1
        elapsed = perf_counter() - start
        hist = self.server.histogram
        hist.counts[bisect_left(hist.bounds, elapsed)] += 1
        hist.sum += elapsed
        return reply

    def transaction(self, spec: CommandSpec, args: list[bytes]) -> Any:
        client = self.client
        name = spec.name
        if client.multi is None:
            if name == "MULTI":
                spec.calls += 1
                client.multi = []
                client.multi_error = False
                return OK
            if name in ("EXEC", "DISCARD"):
                spec.calls += 1
                spec.errors += 1
                return Error(f"ERR {name} without MULTI")
            return self.call(spec, args)
        if name == "EXEC":
            spec.calls += 1
            queued, client.multi = client.multi, None
            if client.multi_error:
                client.multi_error = False
                spec.errors += 1
                return Error("EXECABORT Transaction discarded because of previous errors.")
            return [self.call(s, a) for s, a in queued]
        if name == "DISCARD":
            spec.calls += 1
            client.multi = None
            client.multi_error = False
            return OK
        if name == "MULTI":
            spec.calls += 1
            spec.errors += 1
            return Error("ERR MULTI calls can not be nested")
        if name in ("QUIT", "RESET"):
            return self.call(spec, args)
        arity = spec.arity
        if (arity > 0 and len(args) != arity) or len(args) < -arity:
            spec.calls += 1
            spec.errors += 1
            client.multi_error = True
            return Error(f"ERR wrong number of arguments for '{name.lower()}' command")
        client.multi.append((spec, args))
        return QUEUED


class Server:
    """Owns the listening socket and the connections; knows nothing of config
    files, metrics or signals (the app wires those in)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.durable_replies = False
        self.connections: set[Connection] = set()
        self.histogram = DurationHistogram()
        self._server: asyncio.AbstractServer | None = None
        self.path: Path = rt.config.socket.path
        self._socket_identity: tuple[int, int] | None = None
        self.max_output_buffer = rt.config.limits.max_output_buffer
        # Set by the app when a store is configured: load ``keys`` from the
        # store, admitting found sessions to memory or recording them in the
        # connection's ``peeked`` map for inspection commands.
        self.prefetch: Callable[
            [list[bytes], dict[bytes, Entry[bytes] | None]], Awaitable[None]
        ] = _no_prefetch
        self.after_commit: Callable[[Callable[[StoreError | None], None]], None] = _at_once

    def store_attached(self, store: Store, *, durable_replies: bool) -> None:
        """Use ``store``: read-through before commands, and with
        ``durable_replies`` hold write replies until their commit is on disk."""
        self.durable_replies = durable_replies
        self.after_commit = store.after_commit

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        config = self.rt.config.socket
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(
                f"socket.path: cannot create directory {path.parent}: {exc.strerror}"
            ) from None
        self._claim_path(path)
        loop = asyncio.get_running_loop()
        old_umask = os.umask(0o177)
        try:
            self._server = await loop.create_unix_server(
                lambda: Connection(self), str(path), backlog=1024
            )
        except OSError as exc:
            raise StartupError(f"socket.path: cannot listen on {path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        os.chmod(path, config.mode)
        st = os.stat(path)
        self._socket_identity = (st.st_dev, st.st_ino)

    def _claim_path(self, path: Path) -> None:
        """Refuse to steal a live daemon's socket; replace a stale one."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise StartupError(f"socket.path: {path} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise StartupError(f"socket.path: cannot probe {path}: {exc.strerror}") from None
            log.warning("stale_socket_replaced", path=str(path))
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        finally:
            probe.close()
        raise StartupError(f"socket.path: another daemon is already serving {path}; stop it first")

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def shutdown(self, grace: float) -> None:
        """Finish in-flight commands (up to ``grace`` seconds), close every
        connection and remove the socket file."""
        self.stop_accepting()
        deadline = time.monotonic() + grace
        while any(c.busy for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.flush()
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
        self.remove_socket()

    def remove_socket(self) -> None:
        """Unlink the socket file if it is still the one this server created."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._socket_identity:
            self.path.unlink()

    # ------------------------------------------------------- per connection

    def admission(self, transport: asyncio.Transport) -> str | None:
        """Why a new connection must be refused, or ``None`` to admit it."""
        rt = self.rt
        if len(self.connections) >= rt.config.limits.max_clients:
            return "max_clients"
        security = rt.config.security
        if security.allowed_uids or security.allowed_gids:
            creds = self.peer_credentials(transport)
            if creds is None:
                return "peer_credentials"
            _pid, uid, gid = creds
            # A peer is admitted if its uid, its gid or one of its supplementary
            # groups is listed (group membership, as file permissions see it);
            # an empty list admits nobody by itself when the other list is set.
            if uid not in security.allowed_uids and gid not in security.allowed_gids:
                allowed = security.allowed_gids
                if not any(g in allowed for g in self.peer_groups(transport)):
                    return "peer_credentials"
        return None

    @staticmethod
    def peer_groups(transport: asyncio.BaseTransport) -> tuple[int, ...]:
        """The peer's supplementary groups when it connected (SO_PEERGROUPS,
        Linux 4.13+); empty where the kernel cannot tell."""
        sock = transport.get_extra_info("socket")
        if sock is None:
            return ()
        size = 4 * 64
        while True:
            try:
                raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, size)
            except OSError as exc:
                if exc.errno == errno.ERANGE and size < 4 * _NGROUPS_MAX:
                    size *= 32  # more groups than fit: ask again with room for them
                    continue
                return ()
            return struct.unpack(f"{len(raw) // 4}I", raw)

    @staticmethod
    def peer_credentials(transport: asyncio.BaseTransport) -> tuple[int, int, int] | None:
        sock = transport.get_extra_info("socket")
        if sock is None:
            return None
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
        pid, uid, gid = struct.unpack("3i", raw)
        return pid, uid, gid

    def peer_label(self, transport: asyncio.BaseTransport) -> str:
        creds = self.peer_credentials(transport)
        return "unix" if creds is None else f"pid={creds[0]},uid={creds[1]}"

    def keys_to_load(
        self,
        spec: CommandSpec,
        args: list[bytes],
        client: Client,
        peeked: dict[bytes, Entry[bytes] | None],
    ) -> list[bytes]:
        """Keys a command names that are in neither memory nor ``peeked``."""
        if client.multi is not None:
            if spec.name != "EXEC":
                return []
            candidates = [k for s, a in client.multi if s.load is not None for k in s.load(a)]
        elif spec.load is None:
            return []
        else:
            candidates = spec.load(args)
        data = self.rt.cache._data
        missing = [k for k in candidates if k not in data and k not in peeked]
        if missing and peeked:
            # Another round: what earlier rounds fetched may change while this
            # one waits, so fetch it again with the rest.
            peeked.clear()
            missing = [k for k in candidates if k not in data]
        return missing

    def close_idle(self, timeout: float) -> int:
        """Close connections idle for longer than ``timeout`` seconds."""
        cutoff = time.monotonic() - timeout
        closed = 0
        for conn in list(self.connections):
            if conn.client.last_active < cutoff and not conn.busy and conn.transport:
                conn.transport.close()
                closed += 1
        return closed


async def _no_prefetch(keys: list[bytes], peeked: dict[bytes, Entry[bytes] | None]) -> None:
    return None


def _at_once(callback: Callable[[StoreError | None], None]) -> None:
    callback(None)
