"""The metrics endpoint cannot be used to starve the daemon (issue 16, item 2).

prometheus-client's server made a thread per connection, with no timeout and a
backlog of 5: idle connections from any local user took threads up to the unit's
task limit, after which commands that need a thread (DBSIZE, KEYS) never replied;
and under 200 concurrent scrapers some timed out. The real daemon first, then the
HTTP server in process, where its limits can be made small.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from conftest import Daemon
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sessiond.metrics_http import MetricsHTTPServer

Factory = Callable[..., Daemon]
WITH_STORE = {
    "metrics": {"enabled": True},
    "persistence": {"backend": "sqlite", "path": "sessions.db"},
}


def threads(d: Daemon) -> int:
    assert d.proc is not None
    return len(os.listdir(f"/proc/{d.proc.pid}/task"))


def idle_connections(d: Daemon, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", d.metrics_port), timeout=10)
        socks.append(s)
    return socks


def close_all(socks: Iterable[socket.socket]) -> None:
    for s in socks:
        s.close()


@contextlib.contextmanager
def task_limit(d: Daemon, headroom: int) -> Iterator[bool]:
    """Put the daemon in a pids cgroup that lets it have ``headroom`` more tasks
    than it has now, as the unit's task limit would. False if no pids cgroup can
    be made here (then only the thread count shows a thread per connection)."""
    assert d.proc is not None
    group = Path("/sys/fs/cgroup/pids") / f"sessiond-test-{os.getpid()}-{d.proc.pid}"
    try:
        group.mkdir()
    except OSError:
        yield False
        return
    try:
        (group / "cgroup.procs").write_text(str(d.proc.pid))
        current = int((group / "pids.current").read_text())
        (group / "pids.max").write_text(str(current + headroom))
        yield True
    finally:
        if d.proc.poll() is None:
            d.kill()
        with contextlib.suppress(OSError):
            group.rmdir()


def test_idle_connections_cannot_starve_the_daemon(daemon_factory: Factory) -> None:
    d = daemon_factory(WITH_STORE)
    before = threads(d)
    with task_limit(d, headroom=8):
        socks = idle_connections(d, 1000)
        try:
            # DBSIZE counts the store on a thread it starts now.
            with d.client() as r:
                assert r.dbsize() == 0
                r.set("k", "v")
                assert r.dbsize() == 1
            assert "sessiond_cache_sessions 1.0" in d.scrape()
            assert threads(d) <= before + 3  # the store's scanner thread, and no other
        finally:
            close_all(socks)
        with d.client() as r:
            assert r.get("k") == b"v"
        assert d.stop() == 0


def test_no_thread_per_connection(daemon_factory: Factory) -> None:
    d = daemon_factory({"metrics": {"enabled": True}})
    d.scrape()
    before = threads(d)
    socks = idle_connections(d, 100)
    try:
        d.scrape()  # accepted after the 100 before it
        # No thread per connection (prometheus-client's server made 100): allow
        # for one coming or going elsewhere in the process.
        assert threads(d) <= before + 1
    finally:
        close_all(socks)


def test_concurrent_scrapers_are_all_answered(daemon_factory: Factory) -> None:
    d = daemon_factory({"metrics": {"enabled": True}})
    count = 200
    start = threading.Barrier(count)
    errors: list[str] = []
    answered = [0]

    def scrape() -> None:
        start.wait()
        try:
            url = f"http://127.0.0.1:{d.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as resp:
                if b"sessiond_build_info" in resp.read():
                    answered[0] += 1
        except Exception as exc:
            errors.append(repr(exc))

    for _ in range(2):
        answered[0] = 0
        scrapers = [threading.Thread(target=scrape) for _ in range(count)]
        for t in scrapers:
            t.start()
        for t in scrapers:
            t.join(60)
        assert errors == [], f"{len(errors)} of {count} failed: {errors[:3]}"
        assert answered[0] == count


def test_a_client_that_never_finishes_its_headers_is_closed(daemon_factory: Factory) -> None:
    """Slowloris: a header line every half second, never the blank line."""
    d = daemon_factory({"metrics": {"enabled": True}})
    sock = socket.create_connection(("127.0.0.1", d.metrics_port), timeout=10)
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n")
    closed = False
    deadline = time.monotonic() + 30
    try:
        sock.settimeout(0.5)
        for i in range(1000):
            try:
                if sock.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed = True
                break
            assert time.monotonic() < deadline, "still open after 30 s"
            try:
                sock.sendall(f"X-Slow-{i}: y\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed
    finally:
        sock.close()
    assert "sessiond_build_info" in d.scrape()


# --------------------------------------------------------------- in process


class Probe(Collector):
    def __init__(self) -> None:
        self.collects = 0

    def collect(self) -> Iterable[Metric]:
        self.collects += 1
        return [GaugeMetricFamily("probe", "Times collected.", value=self.collects)]


def serve(body: Callable[[MetricsHTTPServer, Probe], Awaitable[None]], **limits: Any) -> None:
    async def main() -> None:
        registry = CollectorRegistry(auto_describe=False)
        probe = Probe()
        registry.register(probe)
        server = MetricsHTTPServer(registry, **limits)
        await server.start("127.0.0.1", 0)
        try:
            await body(server, probe)
        finally:
            server.close()

    asyncio.run(main())


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, server: MetricsHTTPServer) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", server.port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.lower()] = value.strip()
        length = 0 if head else int(headers["content-length"])
        body = await asyncio.wait_for(self.reader.readexactly(length), 10)
        return status, headers, body

    async def get(self, path: str = "/metrics", *extra: str) -> tuple[int, dict[str, str], bytes]:
        lines = [f"GET {path} HTTP/1.1", "Host: localhost", *extra]
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        return await self.response()

    async def closed(self) -> bool:
        """True once the server has closed the connection (waits up to 10 s)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), 10) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.writer.close()


def test_formats_and_head() -> None:
    async def body(server: MetricsHTTPServer, probe: Probe) -> None:
        c = await Conn.open(server)
        status, headers, text = await c.get()
        assert status == 200
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert b"\nprobe " in text
        status, headers, om = await c.get(
            "/metrics", "Accept: application/openmetrics-text; version=1.0.0"
        )
        assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        assert om.endswith(b"# EOF\n")
        # An Accept prometheus-client cannot parse gets the default format.
        status, headers, _ = await c.get("/metrics", "Accept: text/plain; version=x.y")
        assert (status, headers["content-type"]) == (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        await c.send(b"HEAD /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        status, headers, nothing = await c.response(head=True)
        assert status == 200 and nothing == b""
        assert int(headers["content-length"]) > 0
        # Still in step: the HEAD response had no body.
        assert (await c.get())[0] == 200
        c.close()

    serve(body)


def test_other_paths_methods_and_malformed_requests() -> None:
    async def body(server: MetricsHTTPServer, probe: Probe) -> None:
        c = await Conn.open(server)
        assert (await c.get("/"))[0] == 404
        assert (await c.get("/metrics/x"))[0] == 404
        assert (await c.get("/metrics?name[]=probe"))[0] == 200
        await c.send(b"POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
        status, headers, _ = await c.response()
        assert (status, headers["allow"]) == (405, "GET, HEAD")
        assert (await c.get())[0] == 200  # still open
        c.close()
        for request, status in [
            (b"GARBAGE\r\n\r\n", 400),
            (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
            (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
            (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
        ]:
            c = await Conn.open(server)
            await c.send(request)
            assert (await c.response())[0] == status, request[:40]
            assert await c.closed()

    serve(body)


def test_keep_alive_and_close() -> None:
    async def body(server: MetricsHTTPServer, probe: Probe) -> None:
        c = await Conn.open(server)
        for _ in range(3):
            status, headers, _ = await c.get()
            assert (status, headers["connection"]) == (200, "keep-alive")
        status, headers, _ = await c.get("/metrics", "Connection: close")
        assert (status, headers["connection"]) == (200, "close")
        assert await c.closed()
        c = await Conn.open(server)
        await c.send(b"GET /metrics HTTP/1.0\r\n\r\n")
        assert (await c.response())[0] == 200
        assert await c.closed()
        c = await Conn.open(server)
        await c.send(b"GET /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
        assert (await c.response())[0] == 200
        assert await c.closed()  # a body is not read, so the connection is not reused

    serve(body)


def test_idle_and_slow_connections_are_closed() -> None:
    async def body(server: MetricsHTTPServer, probe: Probe) -> None:
        idle = await Conn.open(server)
        assert await idle.closed()
        kept = await Conn.open(server)
        assert (await kept.get())[0] == 200
        assert await kept.closed()  # idle after a response: the same timeout
        slow = await Conn.open(server)
        await slow.send(b"GET /metrics HTTP/1.1\r\n")
        for i in range(100):  # a header line every 50 ms, never the end
            await asyncio.sleep(0.05)
            if slow.reader.at_eof():
                break
            with contextlib.suppress(ConnectionError):
                await slow.send(f"X-{i}: y\r\n".encode())
        assert await slow.closed()
        assert server.connections == 0

    serve(body, request_timeout=0.3)


def test_at_the_limit_the_longest_waiting_connection_makes_room() -> None:
    async def body(server: MetricsHTTPServer, probe: Probe) -> None:
        oldest = await Conn.open(server)
        await asyncio.sleep(0)
        others = [await Conn.open(server) for _ in range(2)]
        await wait_for(lambda: server.connections == 3)
        newest = await Conn.open(server)
        assert (await newest.get())[0] == 200
        assert await oldest.closed()
        for c in others:
            assert (await c.get())[0] == 200
        assert server.connections == 3

    serve(body, max_connections=3)


def test_one_render_per_loop_iteration() -> None:
    """Scrapes answered in one iteration share a render; a second format waits
    for the next iteration, so other clients wait for one render at a time."""

    async def body(server: MetricsHTTPServer, probe: Probe) -> None:
        text, om = "", "application/openmetrics-text; version=1.0.0"
        results = await asyncio.gather(*(server._render(text) for _ in range(50)))
        assert probe.collects == 1
        assert len({body for _, body in results}) == 1
        await asyncio.gather(server._render(text), server._render(om), server._render(text))
        assert probe.collects == 3  # text once, then openmetrics in the next iteration
        await asyncio.sleep(0)
        await server._render(text)
        assert probe.collects == 4  # a later iteration renders afresh

    serve(body)


async def wait_for(cond: Callable[[], bool]) -> None:
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in 10 s")


class Big(Collector):
    """About 8 MB of samples: more than the kernel buffers between a server and
    a client that does not read (tcp_wmem is at most 4 MB)."""

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("big", "Padding.", labels=["i"])
        for i in range(100_000):
            family.add_metric([f"{i:060d}"], i)
        return [family]


def test_a_client_that_does_not_read_its_response_is_closed() -> None:
    async def body(server: MetricsHTTPServer, probe: Probe) -> None:
        assert isinstance(server.registry, CollectorRegistry)
        server.registry.register(Big())
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        c = Conn(*await asyncio.open_connection(sock=sock))
        await c.send(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await wait_for(lambda: server.connections == 0)  # never read: dropped
        c.close()

    serve(body, write_timeout=0.5)
