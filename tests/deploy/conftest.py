"""Fixtures for the deployment-artifact tests (deploy/, grafana/).

promtool and prometheus come from Debian's `prometheus` package, downloaded and unpacked once
by tests/tools/promtool.sh into .cache/prometheus/ (not installed, no service started). Tests
that need them skip only when that download fails (no network / no apt); any other failure
is an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import tied

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
PROMTOOL_SH = REPO_ROOT / "tests" / "tools" / "promtool.sh"


def _fetch(what: str) -> Path:
    """Path of `promtool` or `prometheus` from the cached Debian package (downloads once)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        pytest.skip("needs apt-get and dpkg to fetch Debian's prometheus package")
    proc = subprocess.run(
        ["bash", str(PROMTOOL_SH), what],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode == 2:
        errors = [line for line in proc.stderr.splitlines() if line.startswith(("E:", "Err:"))]
        pytest.skip(
            "could not download Debian's prometheus package with apt-get (no network?): "
            + ("; ".join(errors[-2:]) or proc.stderr.strip()[-300:] or "no output")
        )
    if proc.returncode != 0:
        pytest.fail(f"{PROMTOOL_SH} {what} failed ({proc.returncode}):\n{proc.stderr}")
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert os.access(path, os.X_OK), f"{path} is not executable"
    return path


@pytest.fixture(scope="session")
def promtool() -> Path:
    return _fetch("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> Path:
    return _fetch("prometheus")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


PrometheusApi = Callable[..., dict[str, Any]]


def _api(url: str) -> PrometheusApi:
    def get(path: str, **params: str) -> dict[str, Any]:
        """GET an API path; returns the JSON body, also for 4xx answers (status: error)."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{url}{path}?{query}", timeout=10) as resp:
                body = resp.read()
        except urllib.error.HTTPError as err:
            body = err.read()
        result: dict[str, Any] = json.loads(body)
        return result

    return get


@contextlib.contextmanager
def run_prometheus(prometheus_bin: Path, config_text: str) -> Iterator[PrometheusApi]:
    """Run Prometheus on 127.0.0.1 (random free port, temp storage) with the given config;
    yields get(path, **params) -> decoded JSON body of its HTTP API."""
    with tempfile.TemporaryDirectory(prefix="sessiond-prom-") as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text(config_text)
        log_path = Path(tmp) / "prometheus.log"
        for _attempt in range(3):  # the free port may be taken between probe and bind
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    tied(
                        [
                            str(prometheus_bin),
                            f"--config.file={config}",
                            f"--storage.tsdb.path={Path(tmp) / 'data'}",
                            f"--web.listen-address=127.0.0.1:{port}",
                            "--log.level=warn",
                        ]
                    ),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=tmp,
                )
            if wait_http(f"{url}/-/ready", proc, timeout=30):
                break
            proc.kill()
            proc.wait()
        else:
            pytest.fail(f"prometheus did not become ready:\n{log_path.read_text()}")
        try:
            yield _api(url)
        finally:
            stop(proc, timeout=10)


def stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM ``proc``; SIGKILL it if it has not exited after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll url until it answers 200; False if proc exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    return False


@pytest.fixture(scope="session")
def prometheus_api(prometheus_bin: Path) -> Iterator[PrometheusApi]:
    """A real Prometheus scraping nothing and loading deploy/prometheus/alerts.yml, for
    parsing PromQL and reading back the rules."""
    alerts = json.dumps(str(DEPLOY / "prometheus" / "alerts.yml"))
    with run_prometheus(prometheus_bin, f"rule_files:\n  - {alerts}\nscrape_configs: []\n") as api:
        yield api


def _resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


@dataclass
class LiveDaemon:
    """A real sessiond started from daemon/ with a temp config, socket, store and metrics port."""

    workdir: Path
    config: Path
    socket_path: Path
    metrics_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def traffic(self) -> bytes:
        """Hits, misses, writes, deletes and an error, so every panel has something to show."""
        commands = [
            ("PING",),
            ("SET", "session:1", "alice"),
            ("GET", "session:1"),
            ("GET", "session:missing"),
            ("SET", "session:2", "bob", "EX", "60"),
            ("DEL", "session:2"),
            ("INCR", "session:1"),  # an error: the value is not an integer
        ]
        replies = b""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(str(self.socket_path))
            conn.sendall(b"".join(_resp(*c) for c in commands) + _resp("QUIT"))
            while chunk := conn.recv(65536):
                replies += chunk
        return replies

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as resp:
            text: str = resp.read().decode()
            return text

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


DaemonLauncher = Callable[..., contextlib.AbstractContextManager[LiveDaemon]]


@pytest.fixture(scope="session")
def daemon_env() -> dict[str, str]:
    """The environment for a subprocess that runs this checkout's daemon."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "daemon"), *sys.path])}


@pytest.fixture(scope="session")
def daemon_launcher(daemon_env: dict[str, str]) -> DaemonLauncher:
    """launch(wrapper=[], env={}, persistence=...) -> context manager running the real
    daemon, optionally under a wrapper command (e.g. a sandbox); ``persistence`` is the
    config's persistence section, indented (SQLite in the workdir by default)."""

    @contextlib.contextmanager
    def launch(
        wrapper: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
        persistence: str = "  backend: sqlite\n  path: sessions.db\n",
    ) -> Iterator[LiveDaemon]:
        with tempfile.TemporaryDirectory(prefix="sessiond-live-") as tmp:
            workdir = Path(tmp)
            port = free_port()
            config = workdir / "sessiond.yaml"
            config.write_text(
                "socket:\n  path: sessiond.sock\n"
                f"persistence:\n{persistence}"
                f"metrics:\n  enabled: true\n  listen: 127.0.0.1:{port}\n"
                "logging:\n  format: json\n"
            )
            log_path = workdir / "sessiond.log"
            command = [sys.executable, "-m", "sessiond", "run", "--config", str(config)]
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    tied([*(wrapper or []), *command]),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=workdir,
                    env={**daemon_env, **(extra_env or {})},
                )
            daemon = LiveDaemon(
                workdir,
                config,
                workdir / "sessiond.sock",
                f"http://127.0.0.1:{port}/metrics",
                proc,
                log_path,
            )
            try:
                if not wait_http(daemon.metrics_url, proc, timeout=30):
                    pytest.fail(f"sessiond did not serve {daemon.metrics_url}:\n{daemon.log()}")
                yield daemon
            finally:
                stop(proc, timeout=20)

    return launch


# The live stack's scrape job is not called "sessiond": nothing may depend on the job's name.
LIVE_JOB = "session-cache"


@dataclass
class LiveStack:
    """The real daemon, scraped every second by a real Prometheus that loads alerts.yml,
    under the job LIVE_JOB."""

    daemon: LiveDaemon
    api: PrometheusApi


@pytest.fixture(scope="session")
def live_stack(prometheus_bin: Path, daemon_launcher: DaemonLauncher) -> Iterator[LiveStack]:
    with daemon_launcher() as daemon:
        yield from _scraped(prometheus_bin, daemon)


@pytest.fixture(scope="session")
def live_pg_stack(
    prometheus_bin: Path, daemon_launcher: DaemonLauncher, pg_cluster: Any
) -> Iterator[LiveStack]:
    """As ``live_stack``, the daemon on the PostgreSQL store (a database of its own on
    the tests' shared cluster, tests/pg_fixtures.py), for what only that store exports."""
    name = pg_cluster.create_database()
    dsn = json.dumps(pg_cluster.dsn(name))
    persistence = f"  backend: postgresql\n  dsn: {dsn}\n  connect_timeout: 20s\n"
    try:
        with daemon_launcher(persistence=persistence) as daemon:
            yield from _scraped(prometheus_bin, daemon)
    finally:
        if pg_cluster.running:
            pg_cluster.drop_database(name)


def _scraped(prometheus_bin: Path, daemon: LiveDaemon) -> Iterator[LiveStack]:
    """``daemon``, after some traffic, scraped by a Prometheus loading alerts.yml."""
    daemon.traffic()
    alerts = json.dumps(str(DEPLOY / "prometheus" / "alerts.yml"))
    target = daemon.metrics_url.split("/")[2]
    prom_config = (
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {alerts}\n"
        f"scrape_configs:\n  - job_name: {LIVE_JOB}\n    static_configs:\n"
        f'      - targets: ["{target}"]\n'
    )
    with run_prometheus(prometheus_bin, prom_config) as api:
        deadline = time.monotonic() + 30
        up = f'up{{job="{LIVE_JOB}"}}'
        query = f"count_over_time({up}[1m]) >= 3 and {up} == 1"
        while not api("/api/v1/query", query=query)["data"]["result"]:
            if time.monotonic() > deadline:
                pytest.fail("Prometheus did not scrape sessiond 3 times in 30 s")
            time.sleep(0.25)
        yield LiveStack(daemon, api)
