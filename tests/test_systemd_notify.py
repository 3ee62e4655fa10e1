"""sd_notify (docs/operations.md): READY=1 once serving, WATCHDOG=1 pings, STOPPING=1."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon
from test_store_parts import v4_store


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    yield sock, path
    sock.close()


def _messages(sock: socket.socket, until: str, timeout: float = 10.0) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            break
        if until in got:
            return got
    raise AssertionError(f"never got {until!r}; got {got}")


def test_ready_watchdog_stopping(
    daemon_factory: Callable[..., Daemon], notify_socket: tuple[socket.socket, Path]
) -> None:
    sock, path = notify_socket
    d = daemon_factory({"persistence": {"backend": "sqlite", "path": "sessions.db"}}, start=False)
    # A first run leaves a session in the store, so READY must follow a warm start.
    d.start()
    with d.client() as r:
        r.set("warm", "yes")
    assert d.stop() == 0
    d.start(wait=False, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"})
    messages = _messages(sock, "READY=1")
    # READY as soon as the socket answers; the warm start loads meanwhile
    # (read-through finds the session either way) and says when it is done.
    assert "STATUS=serving, warm start loading" in messages
    messages += _messages(sock, "STATUS=serving")
    with d.client() as r:
        assert r.info("persistence")["warm_start_in_progress"] == 0
        assert r.info("persistence")["warm_start_sessions"] == 1
        assert r.get("warm") == b"yes"
    assert "WATCHDOG=1" in messages + _messages(sock, "WATCHDOG=1")
    d.signal(15)
    assert "STOPPING=1" in _messages(sock, "STOPPING=1")
    assert d.proc is not None
    assert d.proc.wait(20) == 0


def test_a_migration_extends_the_start_timeout(
    daemon_factory: Callable[..., Daemon], notify_socket: tuple[socket.socket, Path]
) -> None:
    """A store of an older schema is migrated before READY=1; meanwhile the
    daemon moves systemd's start timeout on (EXTEND_TIMEOUT_USEC) and says
    why (STATUS), so that TimeoutStartSec does not kill a long migration."""
    sock, path = notify_socket
    d = daemon_factory({"persistence": {"backend": "sqlite", "path": "v4.db"}}, start=False)
    v4_store(d.workdir / "v4.db", 1, b"kept").close()
    d.start(wait=False, env={"NOTIFY_SOCKET": str(path)})
    messages = _messages(sock, "READY=1")
    ready = messages.index("READY=1")
    assert "EXTEND_TIMEOUT_USEC=60000000" in messages[:ready], messages
    assert "STATUS=migrating the store from schema 4 to 5" in messages[:ready], messages
    with d.client() as r:
        assert r.get("k0") == b"kept"
    assert d.stop() == 0


def test_abstract_notify_socket(daemon_factory: Callable[..., Daemon]) -> None:
    name = f"sessiond-test-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        d = daemon_factory(start=False)
        d.start(wait=False, env={"NOTIFY_SOCKET": "@" + name})
        assert "READY=1" in _messages(sock, "READY=1")
        assert d.stop() == 0
    finally:
        sock.close()
