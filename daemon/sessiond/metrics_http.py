"""``/metrics`` over HTTP/1.1 on the daemon's event loop (issue 16).

prometheus-client's own server made a thread per connection, with no timeout
and a listen backlog of 5: idle connections from any local user took threads
until the unit's task limit, and then the commands that need a thread never
replied. Here a connection costs a socket and a few objects, never a thread:

- at most ``max_connections`` are open; when a new one arrives at the limit,
  the one that has waited longest for a request is closed to make room (the
  new one is served: Prometheus sends its request at once, an idle attacker
  never does); if every open one is being answered, the new one is closed;
- a request line and headers must arrive whole within ``request_timeout`` of
  the connection opening or of the previous response (this is also the
  keep-alive idle timeout), and be at most ``max_request_head`` bytes;
- a response must be taken by the client within ``write_timeout``.

Rendering the registry (about 1-2.5 ms with sessiond's collectors) happens on
the event loop: a worker thread would hold the GIL for as long and make the
loop wait for it in 5 ms switch intervals. Scrapes answered in the same loop
iteration share one render, and at most one render runs per iteration, so a
burst of scrapes delays other clients by one render at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

import structlog
from prometheus_client import REGISTRY
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, generate_latest
from prometheus_client.registry import Collector

log = structlog.get_logger("sessiond.metrics")

MAX_CONNECTIONS = 256
REQUEST_TIMEOUT = 5.0  # seconds for a whole request head; the keep-alive idle timeout too
WRITE_TIMEOUT = 10.0  # seconds for the client to take a response
MAX_REQUEST_HEAD = 8 * 1024  # request line and headers, bytes
BACKLOG = 1024  # the kernel queues this many connections before the loop accepts them

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    505: "HTTP Version Not Supported",
}

Encoder = Callable[[Collector], bytes]


class _Request:
    __slots__ = ("headers", "method", "path", "version")

    def __init__(self, method: str, path: str, version: str, headers: dict[str, str]) -> None:
        self.method = method
        self.path = path
        self.version = version
        self.headers = headers

    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if "transfer-encoding" in self.headers or self.headers.get("content-length", "0") != "0":
            return False  # a body is never read: the connection cannot be reused
        if self.version == "HTTP/1.1":
            return "close" not in connection
        return "keep-alive" in connection


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _parse(head: bytes) -> _Request:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _BadRequest(505, "HTTP/1.0 and HTTP/1.1 only")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, "malformed header line")
        headers[name.lower()] = value.strip()
    return _Request(method, target.partition("?")[0], version, headers)


class MetricsHTTPServer:
    """Serves ``registry`` at ``/metrics`` (GET and HEAD) on the running loop."""

    def __init__(
        self,
        registry: Collector = REGISTRY,
        *,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout: float = REQUEST_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        max_request_head: int = MAX_REQUEST_HEAD,
    ) -> None:
        self.registry = registry
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.write_timeout = write_timeout
        self.max_request_head = max_request_head
        self._server: asyncio.Server | None = None
        self._port = 0
        self._open: set[asyncio.WriteTransport] = set()
        # Connections waiting for a request, longest-waiting first (dicts keep order).
        self._waiting: dict[asyncio.WriteTransport, None] = {}
        # Bodies rendered in this loop iteration, by content type.
        self._rendered: dict[str, bytes] = {}

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (``OSError`` if it cannot) and serve."""
        sock = _listen(host, port)
        try:
            self._server = await asyncio.start_server(
                self._serve, sock=sock, limit=self.max_request_head, backlog=BACKLOG
            )
        except BaseException:
            sock.close()
            raise
        self._port = int(sock.getsockname()[1])

    @property
    def port(self) -> int:
        return self._port

    @property
    def connections(self) -> int:
        return len(self._open)

    def close(self) -> None:
        """Stop listening and close every connection, answered or not."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._open):
            transport.abort()
        self._open.clear()
        self._waiting.clear()

    # ------------------------------------------------------------ connections

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        if self._server is None:  # accepted just before close()
            transport.abort()
            return
        if len(self._open) >= self.max_connections:
            longest = next(iter(self._waiting), None)
            if longest is None:  # every slot is answering a request: try again later
                transport.abort()
                return
            self._drop(longest)
        self._open.add(transport)
        # drain() waits until the kernel has taken the whole response, so a
        # closed connection leaves nothing behind in the loop's buffers.
        transport.set_write_buffer_limits(high=0)
        try:
            while await self._answer_one(reader, writer):
                pass
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away, or was too slow: nothing to answer
        finally:
            self._drop(transport)

    def _drop(self, transport: asyncio.WriteTransport) -> None:
        self._open.discard(transport)
        self._waiting.pop(transport, None)
        transport.abort()

    async def _answer_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; whether the connection stays open."""
        transport = writer.transport
        self._waiting[transport] = None
        try:
            async with asyncio.timeout(self.request_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            await self._send(writer, 431, b"request head too large\n", close=True)
            return False
        finally:
            self._waiting.pop(transport, None)
        try:
            request = _parse(head)
        except _BadRequest as exc:
            await self._send(writer, exc.status, f"{exc}\n".encode(), close=True)
            return False
        keep_alive = request.keep_alive()
        if request.path != "/metrics":
            await self._send(writer, 404, b"only /metrics is served here\n", close=not keep_alive)
        elif request.method not in ("GET", "HEAD"):
            await self._send(
                writer,
                405,
                b"use GET or HEAD\n",
                close=not keep_alive,
                extra=[("Allow", "GET, HEAD")],
            )
        else:
            try:
                content_type, body = await self._render(request.headers.get("accept", ""))
            except Exception as exc:  # a collector's bug: still an answer, and a log line
                log.error("metrics_render_failed", error=repr(exc)[:300])
                await self._send(writer, 500, b"cannot render metrics\n", close=True)
                return False
            await self._send(
                writer,
                200,
                body,
                close=not keep_alive,
                content_type=content_type,
                head_only=request.method == "HEAD",
            )
        return keep_alive

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        *,
        close: bool,
        content_type: str = "text/plain; charset=utf-8",
        head_only: bool = False,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        headers = [
            f"HTTP/1.1 {status} {_REASONS[status]}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            f"Connection: {'close' if close else 'keep-alive'}",
        ]
        headers += [f"{name}: {value}" for name, value in extra or ()]
        writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(body)
        async with asyncio.timeout(self.write_timeout):
            await writer.drain()

    # ------------------------------------------------------------ rendering

    async def _render(self, accept: str) -> tuple[str, bytes]:
        encoder: Encoder
        try:
            encoder, content_type = choose_encoder(accept)
        except Exception:  # an Accept it cannot parse (version=abc): the default format
            encoder, content_type = generate_latest, CONTENT_TYPE_PLAIN_0_0_4
        while True:
            body = self._rendered.get(content_type)
            if body is not None:
                return content_type, body
            if not self._rendered:
                body = encoder(self.registry)
                self._rendered[content_type] = body
                asyncio.get_running_loop().call_soon(self._rendered.clear)
                return content_type, body
            await asyncio.sleep(0)  # another format was rendered in this iteration


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket, made here so that failures raise ``OSError`` at
    once and no resolver thread is started."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        with contextlib.suppress(OSError):
            sock.close()
        raise
    return sock
