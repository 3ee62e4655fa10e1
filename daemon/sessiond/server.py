"""The asyncio Unix-socket server: connections, limits, auth, backpressure, shutdown.

Each connection is an :class:`asyncio.Protocol`. Requests parsed from one read
are executed in order and their replies written with one ``write``. A request
that must wait (a read-through load from the store, or a durable commit before
replies may be sent) parks the connection: later requests queue behind it, so
replies always come back in request order.

The server knows nothing of commands or sessions: it asks the dispatcher
(:mod:`sessiond.commands`) what a request needs first and to run it, and the
keyspace (:mod:`sessiond.keyspace`) when replies may leave.
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
from collections import deque
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, cast

import structlog

from .commands import Client, Dispatcher, ServerState
from .commands import errors as command_errors
from .config import Config
from .keyspace import Keyspace, Prepared
from .protocol import Error, ProtocolError, RequestParser, encode
from .store import StoreError

log = structlog.get_logger("sessiond.server")

UNAUTHENTICATED_REQUEST_LIMIT = 16 * 1024  # bytes per request before AUTH
# Linux' socket option number (asm-generic); Python does not name it.
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_NGROUPS_MAX = 65536
_PENDING_PAUSE = 1024  # queued requests before a parked connection stops reading


class StartupError(Exception):
    """The server cannot start; the message says what and where."""


class Connection(asyncio.Protocol):
    __slots__ = (
        "busy",
        "client",
        "dispatcher",
        "durable",
        "keyspace",
        "out",
        "parser",
        "paused",
        "pending",
        "persistent",
        "prepared",
        "server",
        "task",
        "transport",
        "write_slots",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.dispatcher = server.dispatcher
        self.keyspace = server.keyspace
        self.transport: asyncio.Transport | None = None
        self.pending: deque[list[bytes]] = deque()
        self.out: list[bytes] = []
        self.task: asyncio.Task[None] | None = None
        self.busy = False  # a request waits for the store; later ones queue
        self.paused = False
        self.persistent = self.keyspace.persistent
        self.durable = self.persistent and server.durable_replies
        self.client: Client = server.state.new_client(authenticated=server.state.password is None)
        self.parser = RequestParser(self.request_limit())
        # What the store returned for the next request (read-through).
        self.prepared: Prepared | None = None
        self.write_slots: list[int] = []

    # -------------------------------------------------------------- events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        server = self.server
        stats = server.state.stats.server
        stats.connections_total += 1
        reason = server.admission(transport)
        if reason is not None:
            stats.rejected[reason] = stats.rejected.get(reason, 0) + 1
            fields: dict[str, Any] = {}
            if reason == "peer_credentials":
                creds = server.peer_credentials(transport)
                if creds is not None:
                    fields = {"gid": creds[2], "groups": list(server.peer_groups(transport))}
            log.warning(
                "connection_rejected",
                reason=reason,
                peer=server.peer_label(transport),
                **fields,
            )
            if reason == "max_clients":
                transport.write(b"-ERR max number of clients reached\r\n")
            transport.close()
            self.transport = None
            return
        sock = transport.get_extra_info("socket")
        self.client.fd = sock.fileno() if sock is not None else -1
        self.client.peer = server.peer_label(transport)
        server.state.clients[self.client.id] = self.client
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return
        self.transport = None
        self.server.state.clients.pop(self.client.id, None)
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
        if self.persistent:
            self._drain_store()
        else:
            self._drain_memory()

    def _run(self, args: list[bytes], prepared: Prepared | None) -> tuple[bytes, bool]:
        """One request's encoded reply, and whether it must wait for the
        store's commit. Never raises: a bug answers that request with an error."""
        client = self.client
        dispatcher = self.dispatcher
        authenticated = client.authenticated
        try:
            cmd = dispatcher.resolve(args[0])
            reply = dispatcher.execute(client, cmd, args, prepared)
            data = encode(reply, client.resp3)
        except Exception:
            log.exception("request_failed", client_id=client.id)
            return encode(command_errors.internal(args[0].decode("utf-8", "replace")), False), False
        if client.authenticated is not authenticated:
            # AUTH, HELLO or RESET changed who this is: so does the request limit.
            self.parser.set_limit(self.request_limit())
        # An error reply changed nothing: it need not wait for a commit.
        return data, cmd is not None and cmd.waits_for_commit and not isinstance(reply, Error)

    def _drain_memory(self) -> None:
        """Memory only: no request ever waits, so run them all and reply once."""
        pending = self.pending
        out = self.out
        client = self.client
        run = self._run
        room = self.output_room()
        while pending:
            data = run(pending.popleft(), None)[0]
            out.append(data)
            if client.close_after_reply:
                pending.clear()
                break
            room -= len(data)
            if room < 0:
                self.output_exceeded()
                return
        self.flush()

    def _drain_store(self) -> None:
        pending = self.pending
        out = self.out
        client = self.client
        dispatcher = self.dispatcher
        keyspace = self.keyspace
        room = self.output_room() - sum(map(len, out))
        while pending:
            args = pending[0]
            try:
                work = dispatcher.prepare(client, dispatcher.resolve(args[0]), args, self.prepared)
            except Exception:
                log.exception("request_failed", client_id=client.id)
                work = None
            if work is not None:
                self._wait_then_go_on(work)
                return
            pending.popleft()
            prepared, self.prepared = self.prepared, None
            data, waits = self._run(args, prepared)
            out.append(data)
            if waits and (self.durable or keyspace.lagging()):
                self.write_slots.append(len(out) - 1)
            room -= len(data)
            if room < 0:
                self.output_exceeded()
                return
            if client.close_after_reply:
                pending.clear()
                break
        if self.write_slots:
            self.busy = True
            keyspace.after_commit(self._durable)
            return
        self.flush()

    def _wait_then_go_on(self, work: Awaitable[Prepared]) -> None:
        """Park the queue while ``work`` reads the store for the next request
        (off the event loop), then go on with it."""
        self.busy = True
        self.task = asyncio.ensure_future(self._after(work))

    async def _after(self, work: Awaitable[Prepared]) -> None:
        try:
            self.prepared = await work
        except Exception as exc:
            # The request that needed the read is answered with the error;
            # whatever went wrong, it is answered and the queue goes on.
            self.prepared = None
            args = self.pending.popleft()
            if isinstance(exc, StoreError):
                reply = command_errors.store_failed(exc)
            else:
                log.exception("request_failed", client_id=self.client.id)
                reply = command_errors.internal(args[0].decode("utf-8", "replace"))
            self.out.append(encode(reply, self.client.resp3))
        finally:
            self.task = None
            self.busy = False
        self._go_on()

    def _durable(self, error: StoreError | None) -> None:
        """The writes whose replies we hold are on disk (or failed): reply."""
        if error is not None:
            reply = encode(command_errors.store_failed(error), self.client.resp3)
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
            # The queue was too long to resume above, and the drain answered all
            # of it without waiting for a commit: nothing else would resume
            # reading (a 20,000-command pipeline hung once commits got fast).
            transport = self.transport
            if (
                self.paused
                and not self.busy
                and transport is not None
                and len(self.pending) <= _PENDING_PAUSE
                and not transport.is_closing()
            ):
                self.paused = False
                transport.resume_reading()
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

    def request_limit(self) -> int:
        """Until it authenticates, a client may only send small requests (Redis
        caps them too): a stranger must not make the daemon buffer megabytes."""
        limit = self.server.max_request_size
        return limit if self.client.authenticated else min(limit, UNAUTHENTICATED_REQUEST_LIMIT)


class Server:
    """Owns the listening socket and the connections; knows nothing of config
    files, metrics or signals (the app wires those in)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        keyspace: Keyspace,
        state: ServerState,
        *,
        durable_replies: bool = False,
    ) -> None:
        """With ``durable_replies`` (and a store), write replies are held
        until the commit that holds them is on disk."""
        self.dispatcher = dispatcher
        self.keyspace = keyspace
        self.state = state
        self.durable_replies = durable_replies
        self.connections: set[Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        # The socket's settings need a restart: kept as they were at start.
        self.socket = state.config.socket
        self.path: Path = self.socket.path
        self._socket_identity: tuple[int, int] | None = None
        self.configure(state.config)

    def configure(self, config: Config) -> None:
        """Apply the limits and admission rules of a (re)loaded config: new
        connections and the next requests see them."""
        self.limits = config.limits
        self.security = config.security
        self.max_output_buffer = config.limits.max_output_buffer
        self.max_request_size = config.limits.max_request_size

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
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
        os.chmod(path, self.socket.mode)
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
        if len(self.connections) >= self.limits.max_clients:
            return "max_clients"
        security = self.security
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

    def close_idle(self, timeout: float) -> int:
        """Close connections idle for longer than ``timeout`` seconds."""
        cutoff = time.monotonic() - timeout
        closed = 0
        for conn in list(self.connections):
            if conn.client.last_active < cutoff and not conn.busy and conn.transport:
                conn.transport.close()
                closed += 1
        return closed
