"""Metric values follow real events (docs/operations.md): each event moves exactly its counter."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Daemon, wait_until


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


class Scraper:
    """Before/after deltas of every sample in two scrapes."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.before = _samples(daemon.scrape())

    def delta(self) -> dict[str, float]:
        after = _samples(self.daemon.scrape())
        return {
            k: v - self.before.get(k, 0.0)
            for k, v in after.items()
            if v != self.before.get(k, 0.0) and not k.startswith(("process_", "python_"))
        }


CACHE_COUNTERS = (
    "sessiond_cache_hits_total",
    "sessiond_cache_misses_total",
    'sessiond_cache_evictions_total{reason="max_sessions"}',
    'sessiond_cache_evictions_total{reason="max_memory"}',
    "sessiond_cache_expirations_total",
)


def _cache_moves(delta: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in delta.items() if k in CACHE_COUNTERS}


@pytest.fixture
def metered(daemon_factory: Callable[..., Daemon]) -> Callable[..., Daemon]:
    def make(extra: dict[str, Any] | None = None) -> Daemon:
        overrides: dict[str, Any] = {"metrics": {"enabled": True}}
        for key, value in (extra or {}).items():
            overrides[key] = value
        return daemon_factory(overrides)

    return make


def test_every_spec_metric_is_exported(metered: Callable[..., Daemon]) -> None:
    text = metered().scrape()
    for name in (
        "sessiond_cache_hits_total",
        "sessiond_cache_misses_total",
        "sessiond_cache_evictions_total",
        "sessiond_cache_expirations_total",
        "sessiond_cache_sessions",
        "sessiond_cache_max_sessions",
        "sessiond_cache_memory_bytes",
        "sessiond_warm_start_in_progress",
        "sessiond_store_loads_total",
        "sessiond_store_writes_total",
        "sessiond_store_errors_total",
        "sessiond_store_commit_duration_seconds_bucket",
        "sessiond_commands_total",
        "sessiond_command_errors_total",
        "sessiond_command_duration_seconds_bucket",
        "sessiond_connected_clients",
        "sessiond_connections_total",
        "sessiond_rejected_connections_total",
        "sessiond_client_output_buffer_disconnections_total",
        "sessiond_config_reloads_total",
        "sessiond_config_last_reload_successful",
        "sessiond_config_last_reload_success_timestamp_seconds",
        "sessiond_build_info",
        "process_resident_memory_bytes",
        "python_info",
    ):
        assert f"\n{name}" in text, name


def test_hit_and_miss_move_only_their_counters(metered: Callable[..., Daemon]) -> None:
    d = metered()
    r = d.client()
    r.set("k", "v")
    s = Scraper(d)
    assert r.get("k") == b"v"
    assert _cache_moves(s.delta()) == {"sessiond_cache_hits_total": 1}
    s = Scraper(d)
    assert r.get("absent") is None
    assert _cache_moves(s.delta()) == {"sessiond_cache_misses_total": 1}


def test_eviction_by_max_sessions(metered: Callable[..., Daemon]) -> None:
    d = metered({"cache": {"max_sessions": 2}})
    r = d.client()
    r.set("a", "1")
    r.set("b", "2")
    s = Scraper(d)
    r.set("c", "3")
    delta = s.delta()
    assert _cache_moves(delta) == {'sessiond_cache_evictions_total{reason="max_sessions"}': 1}
    assert d.metric("sessiond_cache_sessions") == 2
    assert d.metric("sessiond_cache_max_sessions") == 2


def test_eviction_by_max_memory(metered: Callable[..., Daemon]) -> None:
    d = metered({"cache": {"max_memory": 100}})
    r = d.client()
    r.set("a", "x" * 40)
    r.set("b", "x" * 40)
    s = Scraper(d)
    r.set("c", "x" * 40)
    assert _cache_moves(s.delta()) == {'sessiond_cache_evictions_total{reason="max_memory"}': 1}
    assert d.metric("sessiond_cache_memory_bytes") == 82


def test_expiry_moves_expirations(metered: Callable[..., Daemon]) -> None:
    d = metered()
    r = d.client()
    s = Scraper(d)
    r.set("short", "v", px=100)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and d.metric("sessiond_cache_sessions") != 0:
        time.sleep(0.05)
    assert _cache_moves(s.delta()) == {"sessiond_cache_expirations_total": 1}


def test_rejected_connection_by_max_clients(metered: Callable[..., Daemon]) -> None:
    d = metered({"limits": {"max_clients": 1}})
    s = Scraper(d)  # the scrape itself uses no client connection
    first = d.raw()
    first.sendall(b"PING\r\n")
    assert first.recv(64) == b"+PONG\r\n"
    second = d.raw()
    assert second.recv(128).startswith(b"-ERR max number of clients reached")
    delta = s.delta()
    assert delta['sessiond_rejected_connections_total{reason="max_clients"}'] == 1
    assert delta["sessiond_connections_total"] == 2
    assert d.metric("sessiond_connected_clients") == 1
    first.close()
    second.close()


def test_rejected_connection_by_peer_credentials(metered: Callable[..., Daemon]) -> None:
    d = metered({"security": {"allowed_uids": [54321]}})
    s = Scraper(d)
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(d.socket_path))
    assert sock.recv(64) == b""
    sock.close()
    assert s.delta()['sessiond_rejected_connections_total{reason="peer_credentials"}'] == 1


def test_commands_errors_and_duration(metered: Callable[..., Daemon]) -> None:
    d = metered()
    r = d.client()
    r.ping()  # connect first: redis-py's handshake sends CLIENT SETINFO
    s = Scraper(d)
    r.set("n", "notanumber")
    with pytest.raises(Exception, match="not an integer"):
        r.incr("n")
    with pytest.raises(Exception, match="unknown command"):
        r.execute_command("NOSUCHCOMMAND")
    delta = s.delta()
    assert delta['sessiond_commands_total{command="set"}'] == 1
    assert delta['sessiond_commands_total{command="incrby"}'] == 1
    assert delta['sessiond_command_errors_total{command="incrby"}'] == 1
    assert delta['sessiond_commands_total{command="unknown"}'] == 1
    assert delta['sessiond_command_errors_total{command="unknown"}'] == 1
    assert delta["sessiond_command_duration_seconds_count"] == 2  # unknown ones never run
    assert not any("NOSUCHCOMMAND" in k.upper() for k in d.scrape().splitlines())


def test_store_loads_and_writes(metered: Callable[..., Daemon]) -> None:
    d = metered(
        {
            "persistence": {"backend": "sqlite", "path": "sessions.db"},
            "cache": {"max_sessions": 1},
        }
    )
    r = d.client()
    s = Scraper(d)
    r.set("a", "1")
    r.set("b", "2")  # evicts a from memory, it stays in the store
    assert r.get("a") == b"1"
    assert r.get("nowhere") is None
    delta = s.delta()
    assert delta['sessiond_store_loads_total{result="found"}'] == 1
    assert delta['sessiond_store_loads_total{result="absent"}'] == 1
    assert delta["sessiond_store_writes_total"] >= 2
    assert delta["sessiond_store_commit_duration_seconds_count"] >= 1


def test_an_eviction_writes_only_what_reads_changed(metered: Callable[..., Daemon]) -> None:
    """A session evicted unread since its write is in the store as it is:
    saving it again doubled the store's writes under a load of new sessions
    (each evicts one). One read since its write: its renewal is saved."""
    d = metered(
        {
            "persistence": {"backend": "sqlite", "path": "sessions.db", "durability": "always"},
            "cache": {"max_sessions": 2},
        }
    )
    r = d.client()
    for i in range(6):
        assert r.set(f"s{i}", "v")  # s0..s3 evicted unread
    assert d.metric("sessiond_store_writes_total") == 6
    assert r.get("s4") == b"v"
    assert r.set("s6", "v")  # evicts s5, unread: only s6 is stored
    assert d.metric("sessiond_store_writes_total") == 7
    assert r.set("s7", "v")  # evicts s4, read since its write: its access is saved too
    assert d.metric("sessiond_store_writes_total") == 9
    assert r.get("s0") == b"v"  # still in the store


def test_bytes_in_and_out_are_counted_per_read_and_write(metered: Callable[..., Daemon]) -> None:
    d = metered()
    s = Scraper(d)
    request = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(d.socket_path))
        conn.sendall(request)
        reply = b""
        while not reply.endswith(b"value\r\n"):
            reply += conn.recv(1024)
    delta = s.delta()
    assert delta["sessiond_net_input_bytes_total"] == len(request)
    assert delta["sessiond_net_output_bytes_total"] == len(reply) == len(b"+OK\r\n$5\r\nvalue\r\n")


def test_gauges_of_bounds_sessions_and_refused_writes(metered: Callable[..., Daemon]) -> None:
    d = metered(
        {
            "cache": {"max_memory": "1MiB", "max_sessions": 2},
            "persistence": {"backend": "sqlite", "path": "sessions.db"},
        }
    )
    assert d.metric("sessiond_cache_max_memory_bytes") == 1024 * 1024
    assert d.metric("sessiond_writes_refused") == 0
    # Counted right after start, off the event loop (not before serving).
    deadline = time.monotonic() + 10
    while "\nsessiond_keyspace_sessions " not in (text := d.scrape()):
        assert time.monotonic() < deadline, text
        time.sleep(0.05)
    assert "\nsessiond_keyspace_sessions 0.0" in text
    r = d.client()
    for i in range(5):
        r.set(f"s{i}", "v")
    assert d.metric("sessiond_cache_sessions") == 2
    # the database file exists from the start; its size is sampled every second
    wait_until(lambda: d.metric("sessiond_store_disk_bytes", file="database") > 0, 5)
    assert 'sessiond_store_disk_bytes{file="wal"}' in d.scrape()


def test_error_replies_slow_log_and_loop_lag(metered: Callable[..., Daemon]) -> None:
    d = metered({"slowlog": {"log_slower_than": 0}})
    r = d.client()
    s = Scraper(d)
    with pytest.raises(Exception, match="unknown command"):
        r.execute_command("NOSUCHCOMMAND")
    with pytest.raises(Exception, match="wrong number"):
        r.execute_command("GET")
    delta = s.delta()
    assert delta['sessiond_error_replies_total{prefix="ERR"}'] == 2
    assert delta["sessiond_slowlog_entries_total"] >= 2
    wait_until(lambda: d.metric("sessiond_event_loop_lag_seconds_count") >= 3, 5)


def test_writes_refused_while_the_store_cannot_commit(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory(
        {
            "metrics": {"enabled": True},
            "persistence": {"backend": "sqlite", "path": "sessions.db", "durability": "always"},
        },
        start=False,
    )
    d.start(env={"SESSIOND_STORE_MAX_PAGES": "16"})  # the store's "disk" fills up
    r = d.client()
    with pytest.raises(Exception, match="store write failed"):
        for i in range(500):
            r.set(f"s{i}", "x" * 1000)
    with pytest.raises(Exception, match=r"^MISCONF"):
        r.set("refused", "v")
    assert d.metric("sessiond_writes_refused") == 1
    info = r.info("all")
    assert info["aof_last_write_status"] == "err"
    assert info["errorstat_MISCONF"]["count"] == 1
    assert info["errorstat_ERR"]["count"] >= 1  # the write whose commit failed
