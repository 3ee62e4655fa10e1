"""The server around the commands (docs/operations.md, docs/commands.md), against the real
daemon: connection limits, passwords, peer credentials, signals, the socket
file's life cycle, idle and slow clients, and the log they leave.

No expected failure may leave a Python traceback in the log.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from conftest import wait_until
from redis.backoff import NoBackoff
from redis.retry import Retry
from test_protocol import RawClient, RawError, read_to_eof, rss_kib

if TYPE_CHECKING:
    from conftest import Daemon

Factory = Callable[..., "Daemon"]


def once(d: Daemon, **kwargs: Any) -> redis.Redis:
    """A client that does not retry a refused connection (each try counts)."""
    return d.client(retry=Retry(NoBackoff(), 0), **kwargs)


def no_traceback(d: Daemon) -> None:
    text = d.log_text()
    assert "Traceback" not in text, text
    assert "command_failed" not in text, text


def info(d: Daemon, section: str) -> dict[str, Any]:
    with d.client() as c:
        return dict(c.info(section))


# ------------------------------------------------------------ max_clients


def test_max_clients(daemon_factory: Factory) -> None:
    d = daemon_factory({"limits": {"max_clients": 2}, "metrics": {"enabled": True}})
    first, second = RawClient(d), RawClient(d)
    try:
        assert first("PING") == b"PONG"
        assert second("PING") == b"PONG"
        with d.raw() as third:
            data, closed = read_to_eof(third)
        assert data == b"-ERR max number of clients reached\r\n"
        assert closed
        # redis-py writes its handshake first: it may see the error or a closed pipe.
        with pytest.raises((redis.ConnectionError, OSError)):
            once(d).ping()
        assert first("PING") == b"PONG"
        assert d.metric("sessiond_rejected_connections_total", reason="max_clients") == 2
        stats = as_info(first("INFO", "stats"))
        assert stats["rejected_connections"] == "2"
    finally:
        first.sock.close()
        second.sock.close()
    # A slot freed is a slot taken.
    wait_until(lambda: _pings(d))
    events = [e for e in d.events() if e.get("event") == "connection_rejected"]
    assert len(events) == 2
    assert {e["reason"] for e in events} == {"max_clients"}
    no_traceback(d)


def _pings(d: Daemon) -> bool:
    try:
        with d.client() as c:
            return bool(c.ping())
    except redis.ConnectionError:
        return False


def as_info(text: bytes) -> dict[str, str]:
    out = {}
    for line in text.decode().splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            out[key] = value
    return out


# ------------------------------------------------------- disabled commands

NOPERM_FLUSHALL = "NOPERM User default has no permissions to run the 'flushall' command"


@pytest.mark.parametrize("backend", ["none", "sqlite"])
def test_disabled_commands_are_refused_everywhere_and_change_nothing(
    daemon_factory: Factory, backend: str
) -> None:
    """security.disabled_commands: the command, or the one subcommand, answers
    -NOPERM in Redis' ACL words, at the top level, queued in MULTI (the
    transaction is then aborted, as Redis does) and from a script; nothing it
    would have done is done, and the rest of the command still works."""
    d = daemon_factory(
        {
            "persistence": {"backend": backend},
            "security": {"disabled_commands": ["flushall", "CONFIG|SET", "SHUTDOWN", "del"]},
        }
    )
    with RawClient(d) as c:
        assert c("SET", "session:1", "alive") == b"OK"
        for request, name in (
            (("FLUSHALL",), "flushall"),
            (("flushall", "ASYNC"), "flushall"),
            (("DEL", "session:1"), "del"),
            (("config", "set", "notify-keyspace-events", "KEA"), "config|set"),
            (("SHUTDOWN", "NOSAVE"), "shutdown"),
        ):
            reply = c(*request)
            assert isinstance(reply, RawError), (request, reply)
            assert str(reply) == (
                f"NOPERM User default has no permissions to run the '{name}' command"
            )
        # The other subcommands of a container with one disabled still run.
        assert c("CONFIG", "GET", "notify-keyspace-events") == [b"notify-keyspace-events", b""]
        assert c("FLUSHDB") == b"OK"  # FLUSHDB was not named: it runs
        # COMMAND still lists a disabled command, as Redis lists one its ACL denies.
        (info,) = c("COMMAND", "INFO", "flushall")
        assert info[0] == b"flushall"
        assert c("SET", "session:1", "alive") == b"OK"

        assert c("MULTI") == b"OK"
        assert c("SET", "session:2", "queued") == b"QUEUED"
        assert str(c("FLUSHALL")) == NOPERM_FLUSHALL
        reply = c("EXEC")
        assert isinstance(reply, RawError) and str(reply).startswith("EXECABORT")
        assert c("EXISTS", "session:2") == 0

        failed = c("EVAL", "return redis.call('del', KEYS[1])", "1", "session:1")
        assert isinstance(failed, RawError)
        assert str(failed).startswith(
            "ERR ACL failure in script: User default has no permissions to run the 'del' command"
        ), failed
        # FLUSHALL may never run from a script: that is said first, as Redis
        # says it of SHUTDOWN.
        failed = c("EVAL", "return redis.call('flushall')", "0")
        assert isinstance(failed, RawError)
        assert str(failed).startswith("ERR This Redis command is not allowed from script"), failed
        assert c("EVAL", "return redis.pcall('del', KEYS[1])['err']", "1", "session:1") == (
            b"ERR ACL failure in script: User default has no permissions to run the 'del' command"
        )
        assert c("GET", "session:1") == b"alive"
        stats = c("INFO", "commandstats").decode().split()
        flushall = next(line for line in stats if line.startswith("cmdstat_flushall:"))
        assert "rejected_calls=3," in flushall, flushall
    assert d.proc is not None and d.proc.poll() is None  # SHUTDOWN did not stop it
    no_traceback(d)


def test_a_disabled_command_is_refused_where_redis_checks_its_acl(
    daemon_factory: Factory,
) -> None:
    """Redis looks a request's arity and subcommand up before its ACL, and its
    ACL before subscribed mode: a disabled command sent with the wrong number
    of arguments or an unknown subcommand gets that error, and one sent by a
    RESP2 client in subscribed mode gets -NOPERM (redis-server 7 with
    ``ACL SETUSER default -incr -client -config|set -flushall`` answers so)."""
    d = daemon_factory(
        {"security": {"disabled_commands": ["INCR", "CLIENT", "CONFIG|SET", "FLUSHALL"]}}
    )
    with RawClient(d) as c:
        for request, error in (
            (("INCR",), "ERR wrong number of arguments for 'incr' command"),
            (("INCR", "a", "b"), "ERR wrong number of arguments for 'incr' command"),
            (("CONFIG", "SET", "x"), "ERR wrong number of arguments for 'config|set' command"),
            (("CLIENT", "FOO"), "ERR unknown subcommand 'FOO'. Try CLIENT HELP."),
            (("INCR", "a"), "NOPERM User default has no permissions to run the 'incr' command"),
            (
                ("CLIENT", "ID"),
                "NOPERM User default has no permissions to run the 'client|id' command",
            ),
        ):
            reply = c(*request)
            assert isinstance(reply, RawError) and str(reply) == error, (request, reply)
        assert c("SUBSCRIBE", "ch") == [b"subscribe", b"ch", 1]
        assert str(c("FLUSHALL")) == NOPERM_FLUSHALL
        assert str(c("CONFIG", "SET", "a", "b")) == (
            "NOPERM User default has no permissions to run the 'config|set' command"
        )
        assert str(c("INCR")) == "ERR wrong number of arguments for 'incr' command"
    no_traceback(d)


@pytest.mark.parametrize("backend", ["none", "sqlite"])
def test_client_pause_does_not_hold_a_disabled_command(
    daemon_factory: Factory, backend: str
) -> None:
    """Redis refuses a request its ACL denies before CLIENT PAUSE would
    postpone it: a disabled write is answered -NOPERM during a pause of
    writes, not held until the pause ends."""
    d = daemon_factory(
        {"persistence": {"backend": backend}, "security": {"disabled_commands": ["FLUSHALL"]}}
    )
    with RawClient(d) as pauser, RawClient(d) as c:
        assert pauser("CLIENT", "PAUSE", "30000", "WRITE") == b"OK"
        c.sock.settimeout(5)
        started = time.monotonic()
        assert str(c("FLUSHALL")) == NOPERM_FLUSHALL
        assert time.monotonic() - started < 5
        assert pauser("CLIENT", "UNPAUSE") == b"OK"
    no_traceback(d)


def test_a_script_calling_a_disabled_command_scripts_may_not_run_is_told_that_first(
    daemon_factory: Factory,
) -> None:
    """Redis refuses a command a script may never call (SHUTDOWN, CLIENT)
    before it checks its ACL: disabling it does not change that error."""
    d = daemon_factory({"security": {"disabled_commands": ["SHUTDOWN", "CLIENT", "INCR"]}})
    with RawClient(d) as c:
        for call, error in (
            ("redis.call('shutdown')", "ERR This Redis command is not allowed from script"),
            ("redis.call('client', 'id')", "ERR This Redis command is not allowed from script"),
            (
                "redis.call('incr', 'n')",
                "ERR ACL failure in script: User default has no permissions to run the "
                "'incr' command",
            ),
        ):
            reply = c("EVAL", f"return {call}", "0")
            assert isinstance(reply, RawError) and str(reply).startswith(error), (call, reply)


# ---------------------------------------------------------------- password


@pytest.fixture
def locked(daemon_factory: Factory) -> Daemon:
    return daemon_factory({"security": {"password": "s3cret"}})


def test_noauth_before_auth(locked: Daemon) -> None:
    with RawClient(locked) as c:
        for args in (("GET", "k"), ("PING",), ("SET", "k", "v"), ("INFO",), ("NOSUCH",)):
            reply = c(*args)
            assert isinstance(reply, RawError)
        assert c("GET", "k") == RawError("NOAUTH Authentication required.")
        assert c("HELLO", "3") == RawError(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the "
            "HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client "
            "and select the RESP protocol version at the same time"
        )
        assert c("AUTH", "wrong") == RawError(
            "WRONGPASS invalid username-password pair or user is disabled."
        )
        assert c("AUTH", "other", "s3cret") == RawError(
            "WRONGPASS invalid username-password pair or user is disabled."
        )
        assert c("GET", "k") == RawError("NOAUTH Authentication required.")
        assert c("AUTH", "s3cret") == b"OK"
        assert c("SET", "k", "v") == b"OK"
        assert c("AUTH", "default", "s3cret") == b"OK"
        assert c("GET", "k") == b"v"
        # RESET deauthenticates.
        assert c("RESET") == b"RESET"
        assert c("GET", "k") == RawError("NOAUTH Authentication required.")


@pytest.mark.parametrize("request_bytes", [b"QUIT\r\n", b"*1\r\n$4\r\nQUIT\r\n"])
def test_quit_before_auth_answers_ok_and_closes(locked: Daemon, request_bytes: bytes) -> None:
    """As Redis does: QUIT needs no password (not NOAUTH), and nothing after it runs."""
    with locked.raw() as s:
        s.sendall(request_bytes + b"PING\r\n")
        data, closed = read_to_eof(s)
    assert (data, closed) == (b"+OK\r\n", True)
    no_traceback(locked)


def test_hello_auth(locked: Daemon) -> None:
    with RawClient(locked) as c:
        assert c("HELLO", "3", "AUTH", "default", "nope") == RawError(
            "WRONGPASS invalid username-password pair or user is disabled."
        )
        assert c("GET", "k") == RawError("NOAUTH Authentication required.")
        hello = c("HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "app")
        assert hello[b"proto"] == 3
        assert c("CLIENT", "GETNAME") == b"app"
        assert c("GET", "k") is None


def test_unauthenticated_clients_may_only_send_small_requests(locked: Daemon) -> None:
    """Before AUTH a request may not exceed 16 KiB (a stranger must not make the
    daemon buffer limits.max_request_size per connection); after AUTH it may."""
    big = "x" * 100_000
    stranger = locked.raw()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # closed as it reads
        stranger.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n" + big[:20_000].encode())
    data, closed = read_to_eof(stranger)
    assert closed and data.startswith(b"-ERR Protocol error"), data
    stranger.close()
    with RawClient(locked) as c:
        assert c("AUTH", "s3cret") == b"OK"
        assert c("SET", "k", big) == b"OK"
        assert c("STRLEN", "k") == 100_000
        assert c("RESET") == b"RESET"  # unauthenticated again: small requests only
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            c.sock.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n" + big.encode())
        data, closed = read_to_eof(c.sock)
        assert closed and data.startswith(b"-ERR Protocol error"), data


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_with_password(locked: Daemon, protocol: int) -> None:
    with locked.client(protocol=protocol, password="s3cret") as c:
        assert c.set("k", "v")
        assert c.get("k") == b"v"
    with locked.client(protocol=protocol, username="default", password="s3cret") as c:
        assert c.get("k") == b"v"
    with pytest.raises(redis.AuthenticationError):
        once(locked, protocol=protocol, password="wrong").ping()
    with pytest.raises(redis.AuthenticationError):
        once(locked, protocol=protocol).get("k")
    no_traceback(locked)


# ------------------------------------------------------- peer credentials


def test_peer_credentials_reject_unlisted_uid(daemon_factory: Factory) -> None:
    d = daemon_factory({"security": {"allowed_uids": [12345]}, "metrics": {"enabled": True}})
    for _ in range(2):
        with d.raw() as s:
            # The daemon may already have closed the connection (that is the point).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(b"PING\r\n")
            data, closed = read_to_eof(s)
        assert data == b""
        assert closed
    with pytest.raises((redis.ConnectionError, OSError)):
        once(d).ping()
    events = [e for e in d.events() if e.get("event") == "connection_rejected"]
    assert len(events) == 3
    assert {e["reason"] for e in events} == {"peer_credentials"}
    assert f"uid={os.getuid()}" in events[0]["peer"]
    assert d.metric("sessiond_rejected_connections_total", reason="peer_credentials") == 3
    assert d.socket_path.exists()
    no_traceback(d)


@pytest.mark.parametrize(
    "security",
    [
        {"allowed_uids": [os.getuid()]},
        {"allowed_uids": [12345, os.getuid()]},
        {"allowed_uids": [12345], "allowed_gids": [os.getgid()]},
        {"allowed_gids": [os.getgid()]},
    ],
    ids=["uid", "uid-among-others", "gid-instead", "gid-only"],
)
def test_peer_credentials_admit_listed(daemon_factory: Factory, security: dict[str, Any]) -> None:
    d = daemon_factory({"security": security})
    with d.client() as c:
        assert c.ping()
        assert c.set("k", "v")
    assert not [e for e in d.events() if e.get("event") == "connection_rejected"]


def test_peer_credentials_reject_unlisted_gid(daemon_factory: Factory) -> None:
    d = daemon_factory({"security": {"allowed_gids": [54321]}})
    with d.raw() as s:
        data, closed = read_to_eof(s)
    assert (data, closed) == (b"", True)


def _ping_as(path: Path, uid: int, gid: int, groups: list[int]) -> bytes:
    """PING the daemon from a child process that runs as ``uid``/``gid`` with
    ``groups`` as its supplementary groups; its reply (b"" when refused)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the peer's identity, connect, report
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(str(path))
                with contextlib.suppress(OSError):
                    s.sendall(b"PING\r\n")
                reply = b""
                with contextlib.suppress(OSError):
                    reply = s.recv(64)
            os.write(write_end, reply)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as r:
        reply = r.read()
    os.waitpid(pid, 0)
    return reply


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another user needs root")
@pytest.mark.parametrize(("groups", "admitted"), [([4242], True), ([4343, 4444], False)])
def test_allowed_gids_admit_members_of_a_supplementary_group(
    daemon_factory: Factory,
    tmp_path_factory: pytest.TempPathFactory,
    groups: list[int],
    admitted: bool,
) -> None:
    # The peer's primary gid is not listed; one of its supplementary groups may be.
    run_dir = Path(tempfile.mkdtemp(prefix="sessiond-groups-", dir="/tmp"))
    try:
        run_dir.chmod(0o711)  # pytest's own temp directories are 0700: other users can't reach them
        socket_path = run_dir / "sessiond.sock"
        d = daemon_factory(
            {
                "socket": {"path": str(socket_path), "mode": "0666"},
                "security": {"allowed_gids": [4242]},
            }
        )
        reply = _ping_as(socket_path, 65534, 65534, groups)
        assert reply == (b"+PONG\r\n" if admitted else b"")
        rejected = [e for e in d.events() if e.get("event") == "connection_rejected"]
        if admitted:
            assert not rejected
        else:
            assert [(e["gid"], e["groups"]) for e in rejected] == [(65534, groups)]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# ------------------------------------------------------------ signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_shuts_down_cleanly(daemon_factory: Factory, sig: signal.Signals) -> None:
    d = daemon_factory()
    c = d.client()
    c.set("k", "v")
    d.signal(sig)
    assert d.proc is not None
    assert d.proc.wait(20) == 0
    assert not d.socket_path.exists()
    events = [e.get("event") for e in d.events()]
    assert "shutdown_requested" in events
    assert "stopped" in events
    requested = next(e for e in d.events() if e.get("event") == "shutdown_requested")
    assert requested["signal"] == sig.name
    c.close()
    no_traceback(d)


def test_shutdown_with_clients_connected_and_mid_request(daemon_factory: Factory) -> None:
    d = daemon_factory()
    idle = d.raw()
    partial = d.raw()
    partial.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\nabc")  # never finished
    with d.client() as c:
        assert c.ping()
    assert d.stop() == 0
    assert not d.socket_path.exists()
    assert read_to_eof(idle)[1]
    idle.close()
    partial.close()
    no_traceback(d)


# ------------------------------------------------- the socket file's life


def _stale_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens: what a crash leaves


def test_stale_socket_file_is_replaced(daemon_factory: Factory) -> None:
    d = daemon_factory(start=False)
    _stale_socket(d.socket_path)
    assert d.socket_path.exists()
    d.start()
    with d.client() as c:
        assert c.ping()
    assert [e for e in d.events() if e.get("event") == "stale_socket_replaced"]
    assert d.stop() == 0
    no_traceback(d)


def test_socket_mode_is_applied(daemon_factory: Factory) -> None:
    d = daemon_factory({"socket": {"mode": "0660"}})
    assert d.socket_path.stat().st_mode & 0o777 == 0o660


def test_metrics_port_in_use_is_a_clean_startup_failure(daemon_factory: Factory) -> None:
    """docs/operations.md: a start-up failure exits 1 with a message saying what and where,
    no traceback, and leaves no socket file behind."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = daemon_factory({"metrics": {"enabled": True, "listen": f"127.0.0.1:{port}"}}, False)
        d.start(wait=False)
        assert d.proc is not None
        assert d.proc.wait(20) == 1
    (event,) = [e for e in d.events() if e.get("event") == "startup_failed"]
    assert event["error"].startswith(f"metrics.listen: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in d.log_text()
    assert not d.socket_path.exists()


def test_second_daemon_on_the_same_socket_is_refused(daemon_factory: Factory) -> None:
    first = daemon_factory()
    with first.client() as c:
        c.set("k", "first")
    second = daemon_factory({"socket": {"path": str(first.socket_path)}}, start=False)
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(20) == 1
    failed = [e for e in second.events() if e.get("event") == "startup_failed"]
    assert len(failed) == 1
    message = failed[0]["error"]
    assert "socket.path" in message
    assert str(first.socket_path) in message
    assert "another daemon is already serving" in message
    no_traceback(second)
    # The first keeps its socket and serves on.
    assert first.socket_path.exists()
    with first.client() as c:
        assert c.get("k") == b"first"
    assert first.stop() == 0


def test_a_file_in_the_way_is_not_replaced(daemon_factory: Factory) -> None:
    d = daemon_factory(start=False)
    d.socket_path.write_text("precious")
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(20) == 1
    assert d.socket_path.read_text() == "precious"
    message = next(e for e in d.events() if e.get("event") == "startup_failed")["error"]
    assert "is not a socket" in message
    no_traceback(d)


def test_a_missing_socket_directory_is_refused_not_created(daemon_factory: Factory) -> None:
    """A mistyped socket.path fails the start with a message that names the
    directory, and no directory is made (under systemd, RuntimeDirectory= or
    sessiond.socket makes /run/sessiond before the daemon starts)."""
    d = daemon_factory(start=False)
    d.config["socket"]["path"] = "typo/run/sessiond.sock"
    d.write_config()
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(20) == 1
    (event,) = [e for e in d.events() if e.get("event") == "startup_failed"]
    assert event["error"] == (
        f"socket.path: directory {d.workdir / 'typo' / 'run'} does not exist; "
        "create it or correct the path"
    )
    assert not (d.workdir / "typo").exists()
    no_traceback(d)
    (d.workdir / "typo" / "run").mkdir(parents=True)
    d.start()
    with d.client() as c:
        assert c.ping()


def test_socket_directory_that_is_a_file(daemon_factory: Factory) -> None:
    d = daemon_factory(start=False)
    (d.workdir / "plainfile").write_text("x")
    d.config["socket"]["path"] = "plainfile/sessiond.sock"
    d.write_config()
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(20) == 1
    message = next(e for e in d.events() if e.get("event") == "startup_failed")["error"]
    assert message == f"socket.path: {d.workdir / 'plainfile'} is not a directory"
    no_traceback(d)


# --------------------------------------------------- idle and slow clients


def test_idle_clients_are_closed(daemon_factory: Factory) -> None:
    d = daemon_factory({"limits": {"client_idle_timeout": "500ms"}})
    idle = d.raw()
    idle.sendall(b"PING\r\n")
    assert idle.recv(100) == b"+PONG\r\n"
    subscriber = d.raw()  # sends nothing after SUBSCRIBE: not idle, as in Redis
    subscriber.sendall(b"SUBSCRIBE ch\r\n")
    assert subscriber.recv(100) == b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    busy = d.client(single_connection_client=True)
    deadline = time.monotonic() + 8
    closed = False
    idle.settimeout(0.1)
    while time.monotonic() < deadline and not closed:
        busy.ping()  # the active client is never idle
        with contextlib.suppress(TimeoutError):
            closed = idle.recv(100) == b""
    assert closed
    assert busy.ping()
    assert [e for e in d.events() if e.get("event") == "idle_clients_closed"]
    assert busy.publish("ch", "still here") == 1
    assert subscriber.recv(100) == b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$10\r\nstill here\r\n"
    subscriber.close()
    busy.close()
    idle.close()
    no_traceback(d)


def test_idle_timeout_zero_never_closes(daemon_factory: Factory) -> None:
    d = daemon_factory({"limits": {"client_idle_timeout": 0}})
    with RawClient(d) as c:
        time.sleep(1.2)  # longer than the idle check period
        assert c("PING") == b"PONG"


def test_client_that_never_reads_is_disconnected(daemon_factory: Factory) -> None:
    d = daemon_factory({"limits": {"max_output_buffer": "1MiB"}})
    with d.client() as c:
        c.set("big", b"x" * 500_000)
        before = rss_kib(d)
    hog = d.raw()
    # 2000 GETs of 500 kB in 18 kB of requests: 1 GB of replies if built.
    hog.sendall(b"GET big\r\n" * 2000)
    hog.settimeout(10)
    wait_until(lambda: bool(d.events() and _exceeded(d)))
    received = 0
    try:
        while chunk := hog.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:
        pass
    assert received <= 2 * 1024 * 1024
    hog.close()
    with d.client() as c:
        assert c.strlen("big") == 500_000
        assert c.ping()
    assert rss_kib(d) < before + 100 * 1024
    event = _exceeded(d)[0]
    assert event["limit"] == 1024 * 1024
    assert info(d, "stats")["client_output_buffer_limit_disconnections"] == 1
    no_traceback(d)


def _exceeded(d: Daemon) -> list[dict[str, Any]]:
    return [e for e in d.events() if e.get("event") == "client_output_buffer_exceeded"]


def test_slow_reader_within_the_limit_gets_everything(daemon_factory: Factory) -> None:
    d = daemon_factory({"limits": {"max_output_buffer": "4MiB"}})
    with d.client() as c:
        c.set("v", b"y" * 10_000)
    with d.raw() as s:
        s.sendall(b"GET v\r\n" * 100)  # 1 MB of replies, under the limit
        time.sleep(0.3)
        expected = (b"$10000\r\n" + b"y" * 10_000 + b"\r\n") * 100
        got = b""
        s.settimeout(10)
        while len(got) < len(expected):
            chunk = s.recv(1 << 20)
            assert chunk
            got += chunk
    assert got == expected
    assert not _exceeded(d)


# --------------------------------------------------------------------- logs


def test_log_lines_are_json_with_timestamp_level_event(daemon_factory: Factory) -> None:
    d = daemon_factory({"logging": {"level": "info"}})
    with d.raw() as s:
        s.sendall(b"*1\r\n:1\r\n")  # a protocol error is logged
        read_to_eof(s)
    d.stop()
    lines = d.log_text().splitlines()
    assert lines
    for line in lines:
        event = json.loads(line)
        assert {"timestamp", "level", "event"} <= set(event), line
        assert event["level"] in ("debug", "info", "warning", "error")
        assert event["timestamp"].endswith("Z") or event["timestamp"].endswith("+00:00")
        time.strptime(event["timestamp"][:19], "%Y-%m-%dT%H:%M:%S")
    started = next(json.loads(x) for x in lines if '"started"' in x)
    assert started["socket"] == str(d.socket_path)
    assert started["config"] == str(d.config_path)
    assert "metrics" in started and "store" in started and "warmed_sessions" in started
    events = [json.loads(x)["event"] for x in lines]
    assert "protocol_error" in events
    assert "stopped" in events


def test_session_contents_are_never_logged(daemon_factory: Factory) -> None:
    d = daemon_factory({"logging": {"level": "debug"}})
    secret = "credit-card-4111111111111111"
    with d.client() as c:
        c.set("session:1", secret)
        c.get("session:1")
        c.execute_command("SESSION.CREATE", "STATE", secret)
    with d.raw() as s:
        s.sendall(b"SET x " + secret.encode() + b' "unbalanced\r\n')
        read_to_eof(s)
    d.stop()
    assert secret not in d.log_text()


# ------------------------------------------------------------- run / CLI


def test_run_with_a_bad_config_exits_1_without_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("cache:\n  max_sessions: -5\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sessiond", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    assert "cache.max_sessions: must be a positive integer, got -5" in output
