"""A TCP proxy for tests that breaks the network on demand: added latency, a silent
partition, a cut with resets, a new target.

It runs its own asyncio loop in a thread, so synchronous tests, asyncio code and daemon
subprocesses can all connect through it; the control methods are called from any thread
and take effect before they return.

    proxy = TcpProxy(cluster.port).start()   # then connect to 127.0.0.1:proxy.port
    proxy.set_delay(0.05)       # +50 ms each way (+100 ms per round trip)
    proxy.partition()           # silence both ways: no error, until someone times out
    proxy.heal()                # buffered bytes flow again, as TCP would retransmit them
    proxy.cut()                 # RST every connection and refuse new ones ...
    proxy.heal()                # ... until healed
    proxy.retarget(other.port)  # new connections go elsewhere (a moved VIP / DNS name)
    proxy.lose_commit_ack(b"host0:writer", then="cut")  # see below

``lose_commit_ack`` speaks a little of PostgreSQL's protocol: the next commit the
server acknowledges on a connection whose startup message names ``who`` (its
application_name, say), an explicit COMMIT or the sync that ends an implicit
transaction, lands in the database, but the acknowledgement (the ReadyForQuery
that says the server is idle again) and everything after it never reach the
client, whose connection is then reset (``then="cut"``) or stays silent
(``then="silence"``), or the whole proxy goes silent as ``partition()`` makes it
(``then="partition"``): a commit whose outcome the client cannot know.

The proxy works above TCP: during a partition both kernels still acknowledge what they
are sent, so TCP keepalives and libpq's ``tcp_user_timeout`` do not fire. To a client it
looks like a hung server, which only application-level timeouts (or a heartbeat through
the connection) detect; a real network partition, where packets are lost, would also
trip keepalives.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
CHUNK = 65536


# The server's ReadyForQuery once a transaction ended: type, length, status idle.
COMMIT_ACK = b"Z" + struct.pack("!i", 5) + b"I"


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.startup = b""  # the client's first bytes: its startup message
        self.deaf = False  # the server's bytes are dropped from now on
        self.mute = False  # and the client's
        self.tail = b""  # the server's last bytes, for an acknowledgement cut in two

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.upstream) if w is not None]


class TcpProxy:
    """Forward ``listen_host:port`` (a free port unless given) to ``target``."""

    def __init__(
        self,
        target_port: int,
        target_host: str = "127.0.0.1",
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.port = listen_port
        self.connections_made = 0
        self._delay = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"tcp-proxy->{target_port}")  # fmt: skip
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing: asyncio.Event | None = None
        self._lose: tuple[bytes, str] | None = None  # lose_commit_ack's, until it happens
        self._silenced: list[bytes] = []  # silence()'s
        self.commit_acks_lost = 0
        self.silenced_bytes = 0  # of clients, dropped by silence()

    # ---------------------------------------------------------------- control

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> tuple[str, int]:
        return (self.listen_host, self.port)

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def set_delay(self, seconds: float) -> None:
        """Delay every chunk by ``seconds`` in each direction (bytes keep their order)."""
        self._delay = max(0.0, seconds)

    def partition(self) -> None:
        """Stop forwarding, both ways, on open and new connections, without closing
        anything: what a network partition looks like (no error until a timeout)."""
        self._call(self._set_flowing(False))

    def heal(self) -> None:
        """Undo ``partition()`` and ``cut()``: forward again, accept again."""
        self._call(self._heal())

    def cut(self) -> None:
        """Reset (RST) every open connection and refuse new ones until ``heal()``: what
        clients see when the server's host is up but the server, or the route, is gone."""
        self._call(self._cut())

    def drop_connections(self) -> int:
        """Reset every open connection, keep accepting new ones; returns how many."""
        return self._call(self._drop_all())

    def retarget(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        """Send new connections to another server (open ones stay where they are)."""
        self.target = (target_host, target_port)

    def lose_commit_ack(self, who: bytes, *, then: str) -> None:
        """The next commit acknowledged on a connection whose startup message
        contains ``who`` lands, its acknowledgement is lost, and that
        connection is then reset (``then="cut"``) or silent until closed
        (``then="silence"``), or every connection is (``then="partition"``,
        until ``heal()``); ``commit_acks_lost`` counts them."""
        assert then in ("cut", "silence", "partition")
        self._lose = (who, then)

    def silence(self, who: bytes) -> None:
        """Drop every byte, both ways, of the connections whose startup
        message contains ``who``, open and new, without closing them (a
        partition of those alone; ``heal()`` ends it for new connections);
        ``silenced_bytes`` counts what their clients sent meanwhile."""
        self._silenced.append(who)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # ------------------------------------------------------------- the loop side

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.listen_host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _close(self) -> None:
        await self._stop_listening()
        await self._drop_all()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _set_flowing(self, on: bool) -> None:
        assert self._flowing is not None
        if on:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _heal(self) -> None:
        self._silenced.clear()
        await self._set_flowing(True)
        if self._server is None:
            await self._listen()

    async def _cut(self) -> None:
        await self._stop_listening()
        await self._drop_all()

    async def _drop_all(self) -> int:
        links = list(self._links)
        for link in links:
            self._reset(link)
        for link in links:
            for task in link.tasks:
                task.cancel()
            await asyncio.gather(*link.tasks, return_exceptions=True)
        return len(links)

    def _reset(self, link: _Link) -> None:
        self._links.discard(link)
        for writer in link.writers():
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    # linger 0: close() sends RST instead of FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

    def _unless_lost(self, link: _Link, data: bytes) -> bytes:
        """What of the server's ``data`` reaches the client: all of it, or, on the
        link chosen by ``lose_commit_ack``, what comes before the commit's
        acknowledgement (which may be cut in two by the chunks: its first part
        then reaches the client, and the rest does not: lost all the same)."""
        if link.deaf:
            return b""
        if self._lose is None or self._lose[0] not in link.startup:
            return data
        seen = link.tail + data
        link.tail = seen[-(len(COMMIT_ACK) - 1) :]
        at = seen.find(COMMIT_ACK)
        if at < 0:
            return data
        then = self._lose[1]
        self._lose = None
        self.commit_acks_lost += 1
        link.deaf = True
        if then == "cut":
            self._loop.call_soon(self._reset, link)
        elif then == "partition":
            assert self._flowing is not None
            self._flowing.clear()
        return data[: max(0, at - (len(seen) - len(data)))]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        self.connections_made += 1
        link = _Link(writer)
        self._links.add(link)
        try:
            await self._flowing.wait()
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                self._reset(link)
                return
            if link not in self._links:  # cut while connecting
                up_writer.transport.abort()
                return
            link.upstream = up_writer
            link.tasks = [
                asyncio.create_task(self._pump(reader, up_writer, link, up=True)),
                asyncio.create_task(self._pump(up_reader, writer, link, up=False)),
            ]
            pending: set[asyncio.Task[None]] = set(link.tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if any(not t.cancelled() and t.exception() is not None for t in done):
                    # A reset on one side is passed on as a reset to the other.
                    self._reset(link)
                    for task in pending:
                        task.cancel()
                    return
                # A clean EOF was passed on (half-close): the other direction goes on.
        except asyncio.CancelledError:
            pass
        finally:
            if link in self._links:
                self._links.discard(link)
                for w in link.writers():
                    w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link, *, up: bool
    ) -> None:
        """Copy one direction (``up``: the client's bytes); each chunk waits out the
        delay and any partition. Raises ConnectionError when either side fails."""
        assert self._flowing is not None
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

        async def read() -> None:
            assert self._flowing is not None
            while True:
                await self._flowing.wait()
                try:
                    data: bytes | None = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    data = None  # a reset: pass it on in order, after what came before
                queue.put_nowait((time.monotonic() + self._delay, data))
                if not data:
                    return

        reading = asyncio.create_task(read())
        try:
            while True:
                due, data = await queue.get()
                pause = due - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                await self._flowing.wait()
                if data is None:
                    raise ConnectionResetError("peer reset the connection")
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                if up and len(link.startup) < 1024:
                    link.startup += data[: 1024 - len(link.startup)]
                elif not up:
                    data = self._unless_lost(link, data)
                if any(who in link.startup for who in self._silenced):
                    link.mute = link.deaf = True
                if link.mute:
                    if up:
                        self.silenced_bytes += len(data)
                    continue
                writer.write(data)
                await writer.drain()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
