"""Shared fixtures: the real daemon as a subprocess on a real Unix socket."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

# Fixtures for a real PostgreSQL: pg_cluster, pg_db, pg_own_cluster, tcp_proxy, ...
pytest_plugins = ["pg_fixtures"]

STARTUP_TIMEOUT = 20.0


def tied(cmd: Sequence[str | os.PathLike[str]]) -> list[str]:
    """``cmd`` killed when this process dies: a test process that crashes or
    is killed leaves no daemon, redis-server or prometheus running (its
    cleanup never runs). Start it from the main thread: the signal comes
    when the starting thread ends."""
    return ["setpriv", "--pdeathsig=SIGKILL", "--", *(os.fspath(c) for c in cmd)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def alias_bomb(levels: int = 9) -> str:
    """A "billion laughs" YAML file of under 1 KB: 9 strings, then each level 9
    aliases of the one before, used where validation has to show the value."""
    lines = ["  a: &a [" + ", ".join(["lol"] * 9) + "]"]
    names = "abcdefghijklmnop"[:levels]
    for prev, name in itertools.pairwise(names):
        lines.append(f"  {name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "bomb:\n" + "\n".join(lines) + f"\ncache:\n  max_sessions: *{names[-1]}\n"


class Daemon:
    """One sessiond process with its own directory, config, socket and store."""

    def __init__(self, workdir: Path, overrides: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.metrics_port = free_port()
        self.config: dict[str, Any] = deep_merge(
            {
                "socket": {"path": "sessiond.sock", "mode": "0600"},
                "persistence": {"backend": "none", "path": "sessions.db"},
                "metrics": {"enabled": False, "listen": f"127.0.0.1:{self.metrics_port}"},
                "logging": {"level": "debug", "format": "json"},
                "cache": {"sweep_interval": "100ms"},
            },
            overrides or {},
        )
        self.config_path = workdir / "sessiond.yaml"
        self.log_path = workdir / "sessiond.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._starts_seen = 0
        self.write_config()

    @property
    def socket_path(self) -> Path:
        return self.workdir / str(self.config["socket"]["path"])

    def write_config(self, config: dict[str, Any] | None = None) -> None:
        if config is not None:
            self.config = config
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.config))
        tmp.replace(self.config_path)

    def start(
        self, wait: bool = True, env: dict[str, str] | None = None, prefix: Sequence[str] = ()
    ) -> Daemon:
        """Start the daemon; ``prefix`` is a command to run it under (``setpriv ...``)."""
        # The log accumulates across restarts: wait for one more "started".
        self._starts_seen = self._count_started()
        self._warms_seen = self._count_warmed()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            tied([*prefix, sys.executable, "-m", "sessiond", "run", "--config", self.config_path]),
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sessiond exited {self.proc.returncode}:\n{self.log_text()}")
            # The "started" event is logged once the socket listens (a ping
            # alone would not do: peer-credential tests reject the test's uid).
            if self.socket_path.exists() and self._count_started() > self._starts_seen:
                break
            time.sleep(0.02)
        else:
            raise RuntimeError(f"sessiond did not start:\n{self.log_text()}")
        # It serves while the warm start loads (docs/persistence.md); tests
        # that read memory after a restart expect it done.
        if self.warms:
            while self._count_warmed() <= self._warms_seen:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"sessiond did not warm up:\n{self.log_text()}")
                time.sleep(0.02)

    @property
    def warms(self) -> bool:
        """Whether a start loads a warm start (a SQLite store, warm_start on)."""
        p = self.config.get("persistence") or {}
        return p.get("backend") == "sqlite" and p.get("warm_start", True) is not False

    def _count_started(self) -> int:
        return sum(1 for e in self.events() if e.get("event") == "started")

    def _count_warmed(self) -> int:
        names = ("warm_start", "warm_start_failed", "warm_start_stopped")
        return sum(1 for e in self.events() if e.get("event") in names)

    def client(self, protocol: int = 2, **kwargs: Any) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 10)
        return redis.Redis(unix_socket_path=str(self.socket_path), protocol=protocol, **kwargs)

    def raw(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(self.socket_path))
        return sock

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def wait_for_event(self, name: str, count: int = 1, timeout: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events() if e.get("event") == name]
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"no {count}x {name!r} in log:\n{self.log_text()}")

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return str(resp.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Value of one sample in a live scrape (0.0 if absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.scrape().splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            if sample == name or (want and sample == f"{name}{{{want}}}"):
                return float(value)
            if want and sample.startswith(name + "{"):
                got = sample[len(name) + 1 : -1].split(",")
                if sorted(got) == sorted(want.split(",")):
                    return float(value)
        return 0.0


class _GuardedMonkeyPatch(pytest.MonkeyPatch):
    """Refuses to patch a mypyc-compiled sessiond module: its functions were
    bound at compile time, so the patch would change nothing they call and the
    test would pass without testing anything (tests/test_build.py)."""

    def setattr(self, target: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(target, str):
            module = sys.modules.get(target.rpartition(".")[0])
        elif isinstance(target, types.ModuleType):
            module = target
        else:
            module = sys.modules.get(getattr(target, "__module__", ""))
        name = getattr(module, "__name__", "")
        if name.startswith("sessiond") and str(getattr(module, "__file__", "")).endswith(".so"):
            pytest.fail(f"{name} is compiled: inject faults through constructor parameters")
        super().setattr(target, *args, **kwargs)


@pytest.fixture
def monkeypatch() -> Iterator[pytest.MonkeyPatch]:
    patcher = _GuardedMonkeyPatch()
    yield patcher
    patcher.undo()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []
    counter = iter(range(1000))

    def make(overrides: dict[str, Any] | None = None, start: bool = True) -> Daemon:
        d = Daemon(tmp_path / f"d{next(counter)}", overrides)
        made.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


@pytest.fixture
def daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    return daemon_factory()


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def r(request: pytest.FixtureRequest, daemon: Daemon) -> Iterator[redis.Redis]:
    client = daemon.client(protocol=request.param)
    yield client
    client.close()


class RedisServer:
    """A real redis-server (Debian's) on a Unix socket in a directory of its
    own, persistence off: the tests run the same requests against it and
    against sessiond to prove their expectations."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail(
                "redis-server not found: install Debian's redis-server (scripts/test.sh does)"
            )
        workdir.mkdir(parents=True, exist_ok=True)
        self.socket_path = workdir / "redis.sock"
        self.log_path = workdir / "redis.log"
        self.proc = subprocess.Popen(
            tied([
                exe, "--port", "0", "--unixsocket", str(self.socket_path),
                "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                "--dir", str(workdir), "--logfile", str(self.log_path),
            ]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_path.read_text()}")
            if self.socket_path.exists():
                with contextlib.suppress(redis.ConnectionError), self.client() as probe:
                    if probe.ping():
                        self.version = str(probe.info("server")["redis_version"])
                        return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def client(self, protocol: int = 2, **kwargs: Any) -> redis.Redis:
        return redis.Redis(
            unix_socket_path=str(self.socket_path), protocol=protocol, socket_timeout=10, **kwargs
        )

    def raw(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(self.socket_path))
        return sock

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-server"))
    yield server
    server.stop()
