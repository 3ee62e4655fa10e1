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
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

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
        last = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        pytest.skip(
            f"could not download Debian's prometheus package with apt-get (no network?): {last[0]}"
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
                    [
                        str(prometheus_bin),
                        f"--config.file={config}",
                        f"--storage.tsdb.path={Path(tmp) / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--log.level=warn",
                    ],
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
            proc.terminate()
            try:
                proc.wait(timeout=10)
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
