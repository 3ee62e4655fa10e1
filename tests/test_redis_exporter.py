"""redis_exporter (Debian's prometheus-redis-exporter) against a real sessiond:
every metric its standard Grafana dashboard (the one the package ships) queries
is exported, and says what sessiond's own INFO, DBSIZE and counters say; the
ones that cannot be are listed in deploy/README.md with the reason."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon, free_port, wait_until

EXPORTER = "prometheus-redis-exporter"
DASHBOARD = Path(
    "/usr/share/doc/prometheus-redis-exporter/examples/grafana_prometheus_redis_dashboard.json"
)
GUIDE = Path(__file__).resolve().parents[1] / "deploy" / "README.md"

pytestmark = pytest.mark.skipif(
    shutil.which(EXPORTER) is None,
    reason="needs Debian's prometheus-redis-exporter (scripts/test.sh installs it)",
)


def dashboard_metrics() -> set[str]:
    """Metric names the exporter's dashboard queries (and its variables)."""
    data = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(panels: list[dict[str, object]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):  # type: ignore[attr-defined]
                exprs.append(target.get("expr", ""))
            walk(panel.get("panels", []))  # type: ignore[arg-type]

    walk(data["panels"])
    exprs += [v.get("query", "") for v in data["templating"]["list"] if v["type"] == "query"]
    names: set[str] = set()
    for expr in exprs:
        expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", str(expr))
        names |= set(re.findall(r"\b(redis_[a-z_]+)\b", expr))
    return names


def samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def documented_absent() -> set[str]:
    """The dashboard metrics deploy/README.md says sessiond cannot give."""
    text = GUIDE.read_text()
    section = text.split("### redis_exporter", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(redis_[a-z_]+)` \| absent", section, re.M))


@pytest.fixture
def exporter(daemon_factory: Callable[..., Daemon]) -> Iterator[tuple[Daemon, str]]:
    d = daemon_factory(
        {
            "persistence": {"backend": "sqlite"},
            "cache": {"max_memory": "64MiB", "max_sessions": 3},
        }
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            EXPORTER,
            f"-redis.addr=unix://{d.socket_path}",
            f"-web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/metrics"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return True
        except OSError:
            return False

    try:
        wait_until(ready, 20, "redis_exporter to listen")
        yield d, url
    finally:
        proc.terminate()
        proc.wait(10)


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=20) as resp:
        return samples(resp.read().decode())


def test_every_dashboard_metric_is_exported_or_documented_absent(
    exporter: tuple[Daemon, str],
) -> None:
    d, url = exporter
    r = d.client()
    for i in range(5):
        r.set(f"s{i}", "v" * 100, ex=600)  # two are evicted to the store (max_sessions 3)
    r.set("forever", "v", keepttl=False)
    r.persist("forever")
    assert r.get("s0") == b"v" * 100  # served from the store: a keyspace hit
    assert r.get("missing") is None
    got = scrape(url)
    names = {re.split(r"[{]", k)[0] for k in got}
    wanted = dashboard_metrics()
    assert len(wanted) >= 15, wanted
    absent = documented_absent()
    assert wanted - names == absent, (sorted(wanted - names), sorted(absent))


def test_the_exporters_numbers_are_sessiond_s(exporter: tuple[Daemon, str]) -> None:
    d, url = exporter
    r = d.client()
    for i in range(5):
        r.set(f"s{i}", "v" * 100, ex=600)
    r.set("forever", "v")
    r.persist("forever")
    for _ in range(4):
        r.get("s4")
    r.get("s0")  # evicted: read back from the store
    r.get("missing")
    got = scrape(url)
    info = r.info("everything")
    assert got["redis_up"] == 1
    assert got['redis_db_keys{db="db0"}'] == r.dbsize() == 6  # memory and store
    assert got['redis_db_keys_expiring{db="db0"}'] == 5
    assert 590 < got['redis_db_avg_ttl_seconds{db="db0"}'] <= 600
    # Counters the exporter read before these INFO calls: they can only have grown since.
    assert got["redis_keyspace_hits_total"] == info["keyspace_hits"] >= 5
    assert got["redis_keyspace_misses_total"] == info["keyspace_misses"] == 1
    assert got['redis_commands_total{cmd="get"}'] == info["cmdstat_get"]["calls"] == 6
    assert got['redis_commands_duration_seconds_total{cmd="get"}'] > 0
    assert got["redis_memory_max_bytes"] == 64 * 1024 * 1024
    assert got["redis_memory_used_bytes"] > 1_000_000  # the process, not the sessions' bytes
    assert got["redis_net_input_bytes_total"] > 0 and got["redis_net_output_bytes_total"] > 0
    assert got["redis_connected_clients"] >= 1 and got["redis_blocked_clients"] == 0
    assert got["redis_evicted_keys_total"] == info["evicted_keys"] >= 2
    assert got["redis_expired_keys_total"] == 0
    assert got["redis_aof_enabled"] == 1
    assert 0 <= got["redis_uptime_in_seconds"] < 600
