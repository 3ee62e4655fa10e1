"""Socket activation (docs/operations.md): the daemon serves the listening socket
passed in LISTEN_FDS, with sd_listen_fds(3)'s semantics, and refuses with a
clear start-up error anything but one listening AF_UNIX stream socket.

The socket comes from systemd-socket-activate (Debian's systemd package), which
binds it as a socket unit would and execs the daemon at the first connection;
the cases it cannot make (a socket that does not listen, a pipe) come from
tests/tools/with_listen_fds.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from conftest import wait_until
from sessiond.activation import ActivationError, listen_fds

if TYPE_CHECKING:
    from conftest import Daemon

Factory = Callable[..., "Daemon"]
TOOLS = Path(__file__).parent / "tools"
WITH_LISTEN_FDS = TOOLS / "with_listen_fds.py"


def socket_activate(*listen: str, datagram: bool = False) -> list[str]:
    """The command prefix that runs the daemon under systemd-socket-activate,
    listening on ``listen`` (paths or host:port), with this environment (the
    tool passes on only what -E names)."""
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("systemd-socket-activate not found (Debian's systemd package)")
    prefix = [tool, *(arg for address in listen for arg in ("-l", address))]
    if datagram:
        prefix.append("--datagram")
    prefix.append("--fdname=" + ":".join(["sessiond"] * len(listen)))
    for key, value in os.environ.items():
        if not key.startswith("LISTEN_"):
            prefix += ["-E", f"{key}={value}"]
    return [*prefix, "--"]


def listening(d: Daemon, sockets: int = 1) -> None:
    """Wait until systemd-socket-activate has bound its sockets."""
    wait_until(
        lambda: d.log_text().count("Listening on ") >= sockets,
        timeout=20,
        what="systemd-socket-activate to listen",
    )


def no_traceback(d: Daemon) -> None:
    assert "Traceback" not in d.log_text(), d.log_text()


def startup_error(d: Daemon) -> str:
    assert d.proc is not None
    assert d.proc.wait(30) == 1, d.log_text()
    (event,) = [e for e in d.events() if e.get("event") == "startup_failed"]
    no_traceback(d)
    return str(event["error"])


def test_serves_the_socket_systemd_passes(daemon_factory: Factory) -> None:
    d = daemon_factory(start=False)
    d.start(wait=False, prefix=socket_activate(str(d.socket_path)))
    listening(d)
    # The daemon is started by this first connection, which waits in the
    # socket's queue meanwhile instead of being refused.
    with d.client() as c:
        assert c.ping()
        assert c.set("k", "v")
        assert c.get("k") == b"v"
        assert c.info("server")["unix_socket"] == str(d.socket_path)
    d.wait_ready()
    assert d.proc is not None
    (started,) = [e for e in d.events() if e.get("event") == "started"]
    assert started["socket"] == str(d.socket_path)
    assert started["socket_from"] == "LISTEN_FDS"
    assert started["pid"] == d.proc.pid  # systemd-socket-activate execs the daemon
    assert not [e for e in d.events() if e.get("event") == "socket_path_differs"]
    assert d.stop() == 0
    # The file is systemd's (the socket unit's): the daemon leaves it.
    assert d.socket_path.exists()
    no_traceback(d)


def test_a_configured_path_other_than_the_passed_socket_is_logged(
    daemon_factory: Factory,
) -> None:
    d = daemon_factory(start=False)
    passed = d.workdir / "activated.sock"
    d.start(wait=False, prefix=socket_activate(str(passed)))
    listening(d)
    with redis.Redis(unix_socket_path=str(passed), socket_timeout=10) as c:
        assert c.ping()
    d.wait_for_event("started")
    (warning,) = [e for e in d.events() if e.get("event") == "socket_path_differs"]
    assert warning["socket"] == str(passed)
    assert warning["configured"] == str(d.socket_path)
    assert not d.socket_path.exists(), "socket.path was bound besides the passed socket"
    assert d.stop() == 0
    no_traceback(d)


def test_variables_for_another_process_are_ignored(daemon_factory: Factory) -> None:
    """LISTEN_PID names another process (a parent that was activated): the
    daemon binds socket.path itself, as without socket activation."""
    d = daemon_factory(start=False)
    d.start(env={"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "other"})
    with d.client() as c:
        assert c.ping()
    (started,) = [e for e in d.events() if e.get("event") == "started"]
    assert started["socket_from"] == "bound"
    assert d.stop() == 0
    assert not d.socket_path.exists()


def test_a_datagram_socket_is_refused(daemon_factory: Factory) -> None:
    d = daemon_factory(start=False)
    d.start(wait=False, prefix=socket_activate(str(d.socket_path), datagram=True))
    listening(d)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"PING\r\n", str(d.socket_path))  # what starts the daemon
    assert startup_error(d) == (
        "descriptor 3 (sessiond) passed in LISTEN_FDS is a SOCK_DGRAM socket, "
        "not SOCK_STREAM (use ListenStream=)"
    )


def test_a_tcp_socket_is_refused(daemon_factory: Factory) -> None:
    d = daemon_factory(start=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    d.start(wait=False, prefix=socket_activate(f"127.0.0.1:{port}"))
    listening(d)
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        assert startup_error(d) == (
            "descriptor 3 (sessiond) passed in LISTEN_FDS is an AF_INET socket, "
            "not AF_UNIX (ListenStream= must be a path)"
        )


def test_more_than_one_socket_is_refused(daemon_factory: Factory) -> None:
    d = daemon_factory(start=False)
    second = d.workdir / "second.sock"
    d.start(wait=False, prefix=socket_activate(str(d.socket_path), str(second)))
    listening(d, 2)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(d.socket_path))
        assert startup_error(d) == (
            "LISTEN_FDS=2: sessiond serves one socket, got descriptors 3 (sessiond), "
            "4 (sessiond); give the socket unit a single ListenStream="
        )


def run_with_fd(d: Daemon, fd: int, name: str = "sessiond") -> subprocess.CompletedProcess[str]:
    """The daemon on ``d``'s config with ``fd`` passed as its descriptor 3."""
    return subprocess.run(
        [
            sys.executable,
            str(WITH_LISTEN_FDS),
            str(fd),
            name,
            "--",
            sys.executable,
            "-m",
            "sessiond",
            "run",
            "--config",
            str(d.config_path),
        ],
        pass_fds=(fd,),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=d.workdir,
        check=False,
    )


def failure(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if '"startup_failed"' in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_a_socket_that_does_not_listen_is_refused(daemon_factory: Factory) -> None:
    d = daemon_factory(start=False)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(d.workdir / "bound.sock"))
        line = failure(run_with_fd(d, s.fileno()))
    assert "descriptor 3 (sessiond) passed in LISTEN_FDS is not listening" in line


def test_a_pipe_is_refused(daemon_factory: Factory) -> None:
    d = daemon_factory(start=False)
    read_end, write_end = os.pipe()
    try:
        line = failure(run_with_fd(d, read_end))
    finally:
        os.close(read_end)
        os.close(write_end)
    assert "descriptor 3 (sessiond) passed in LISTEN_FDS is not a socket" in line


def test_names_that_do_not_match_the_count_are_refused(daemon_factory: Factory) -> None:
    d = daemon_factory(start=False)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(d.workdir / "named.sock"))
        s.listen()
        line = failure(run_with_fd(d, s.fileno(), name="one:two"))
    assert "LISTEN_FDNAMES='one:two' names 2 descriptors, LISTEN_FDS=1" in line


CHILD_VIEW = """
import fcntl, os, subprocess
from sessiond.activation import inherited_listener
inherited = inherited_listener()
print(inherited.name, inherited.sock.getsockname())
print(bool(fcntl.fcntl(3, fcntl.F_GETFD) & fcntl.FD_CLOEXEC))
child = subprocess.run(["env"], capture_output=True, text=True, close_fds=False).stdout
print(sorted(line.split("=")[0] for line in child.splitlines() if line.startswith("LISTEN_")))
"""


def test_the_variables_and_the_socket_are_not_passed_on(tmp_path: Path) -> None:
    """sd_listen_fds(unset_environment=1): a process the daemon starts sees
    neither the variables nor (close-on-exec) the descriptor."""
    path = tmp_path / "passed.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen()
        proc = subprocess.run(
            [
                *(sys.executable, str(WITH_LISTEN_FDS), str(s.fileno()), "main", "--"),
                *(sys.executable, "-c", CHILD_VIEW),
            ],
            pass_fds=(s.fileno(),),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"main {path}", "True", "[]"]


# -------------------------------------------- sd_listen_fds, in this process


def _listen(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[tuple[int, str]]:
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        return listen_fds()
    finally:
        leftover = {k for k in os.environ if k.startswith("LISTEN_")}
        assert not leftover, f"left in the environment: {leftover}"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"LISTEN_FDS": "1"},
        {"LISTEN_PID": "1", "LISTEN_FDS": "1"},
        {"LISTEN_PID": "1", "LISTEN_FDS": "nonsense"},
        {"LISTEN_PID": "self"},
        {"LISTEN_PID": "self", "LISTEN_FDS": "0"},
    ],
    ids=["none", "no-pid", "other-pid", "other-pid-bad-count", "no-count", "zero"],
)
def test_nothing_passed(monkeypatch: pytest.MonkeyPatch, env: dict[str, Any]) -> None:
    env = {k: str(os.getpid()) if v == "self" else v for k, v in env.items()}
    assert _listen(monkeypatch, **env) == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LISTEN_PID": "x1", "LISTEN_FDS": "1"}, "LISTEN_PID='x1': not a number"),
        ({"LISTEN_PID": "self", "LISTEN_FDS": "one"}, "LISTEN_FDS='one': not a number"),
        (
            {"LISTEN_PID": "self", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a"},
            "LISTEN_FDNAMES='a' names 1 descriptors, LISTEN_FDS=2",
        ),
    ],
    ids=["bad-pid", "bad-count", "names"],
)
def test_malformed_variables(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    env = {k: str(os.getpid()) if v == "self" else v for k, v in env.items()}
    with pytest.raises(ActivationError) as caught:
        _listen(monkeypatch, **env)
    assert str(caught.value).startswith(message)
