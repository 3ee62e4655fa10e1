"""SLOWLOG, LATENCY, INFO's sections and CONFIG RESETSTAT against a real daemon
(docs/operations.md: what an entry's duration is, what INFO's fields mean)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from conftest import Daemon, wait_until


def _resp(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def _send(d: Daemon, payload: bytes, replies: int) -> bytes:
    """Send ``payload`` in one write and read until ``replies`` CRLF-ended lines arrived."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(10)
        conn.connect(str(d.socket_path))
        conn.sendall(payload)
        data = b""
        while data.count(b"\r\n") < replies:
            chunk = conn.recv(65536)
            assert chunk, data
            data += chunk
        return data


@pytest.fixture
def every_command(daemon_factory: Callable[..., Daemon]) -> Daemon:
    """A daemon whose slow log keeps every command (threshold 0)."""
    return daemon_factory({"slowlog": {"log_slower_than": 0, "max_len": 1000}})


# ---------------------------------------------------------------- SLOWLOG


def test_slowlog_entry_is_shaped_as_redis_replies_it(every_command: Daemon) -> None:
    r = every_command.client()
    r.client_setname("worker-1")
    r.slowlog_reset()
    r.set("k", "v")
    raw = r.execute_command("SLOWLOG", "GET", "1")
    (entry,) = raw
    entry_id, when, micros, args, addr, name = entry
    assert isinstance(entry_id, int) and abs(when - time.time()) < 60
    assert isinstance(micros, int) and micros >= 0
    assert args == [b"set", b"k", b"v"] or args == [b"SET", b"k", b"v"]
    assert addr == f"{every_command.socket_path}:0".encode()
    assert name == b"worker-1"
    # redis-py parses it as for Redis
    parsed = r.slowlog_get(1)[0]  # the SLOWLOG GET above, the newest now
    assert parsed["client_name"] == b"worker-1" and parsed["id"] == entry_id + 1


def test_slowlog_len_reset_ids_and_count(every_command: Daemon) -> None:
    r = every_command.client()
    r.slowlog_reset()
    for i in range(5):
        r.set(f"k{i}", i)
    entries = r.execute_command("SLOWLOG", "GET", "-1")
    assert len(entries) >= 5  # the SETs, SLOWLOG RESET's own entry, ...
    ids = [e[0] for e in entries]
    assert ids == sorted(ids, reverse=True), "newest first"
    assert len(r.execute_command("SLOWLOG", "GET")) == 10 or len(entries) < 10
    assert len(r.execute_command("SLOWLOG", "GET", "2")) == 2
    assert r.slowlog_len() >= 5
    assert r.slowlog_reset()
    assert r.slowlog_len() == 1  # RESET's own entry: a command is logged once it ran
    with pytest.raises(redis.ResponseError, match="count should be greater than or equal to -1"):
        r.execute_command("SLOWLOG", "GET", "-2")
    with pytest.raises(redis.ResponseError, match="unknown subcommand"):
        r.execute_command("SLOWLOG", "NOPE")
    assert any(b"SLOWLOG" in line for line in r.execute_command("SLOWLOG", "HELP"))


def test_slowlog_truncates_arguments_as_redis(every_command: Daemon) -> None:
    r = every_command.client()
    r.slowlog_reset()
    r.mset({f"key{i}": "v" for i in range(40)})
    r.set("big", "x" * 300)
    entries = r.execute_command("SLOWLOG", "GET", "-1")
    (mset,) = [e for e in entries if e[3][0].lower() == b"mset"]
    args = mset[3]
    assert len(args) == 32
    assert args[-1] == b"... (50 more arguments)"  # 81 arguments, 31 kept
    (big,) = [e for e in entries if e[3][:2] == [b"set", b"big"] or e[3][:2] == [b"SET", b"big"]]
    assert big[3][2] == b"x" * 128 + b"... (172 more bytes)"


def test_a_slow_batch_is_one_entry_then_its_commands_are_timed_alone(
    every_command: Daemon,
) -> None:
    """One clock read per batch: a slow batch of several commands is logged as
    the batch; the connection's next batches are timed command by command."""
    r = every_command.client()
    r.slowlog_reset()
    batch = b"".join(_resp(b"SET", b"p%d" % i, b"v") for i in range(4)) + _resp(b"GET", b"p0")
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(10)
        conn.connect(str(every_command.socket_path))
        for _ in range(2):
            conn.sendall(batch)
            data = b""
            while data.count(b"\r\n") < 6:  # 4 x +OK, $1, v
                data += conn.recv(65536)
    entries = [e for e in r.execute_command("SLOWLOG", "GET", "-1") if e[3][0] != b"SLOWLOG"]
    entries.reverse()  # oldest first
    first = entries[0]
    assert first[3] == [b"(batch of 5 commands)", b"set x4", b"get x1"]
    alone = [e[3][0].lower() for e in entries[1:] if e[3][0] != b"(batch of 5 commands)"]
    assert alone[:5] == [b"set", b"set", b"set", b"set", b"get"]


def test_slowlog_off_and_max_len(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"slowlog": {"log_slower_than": "off"}})
    r = d.client()
    for _ in range(3):
        r.set("k", "v")
    assert r.slowlog_len() == 0
    assert r.config_get("slowlog-log-slower-than") == {"slowlog-log-slower-than": "-1"}
    d.write_config(
        {**d.config, "slowlog": {"log_slower_than": 0, "max_len": 3}}
    )  # a reload applies both
    wait_until(lambda: r.config_get("slowlog.max_len")["slowlog.max_len"] == "3", 10)
    for _ in range(10):
        r.set("k", "v")
    assert r.slowlog_len() == 3
    assert r.config_get("slowlog-log-slower-than") == {"slowlog-log-slower-than": "0"}


def test_default_threshold_logs_nothing_for_fast_commands(daemon: Daemon) -> None:
    r = daemon.client()
    for _ in range(20):
        r.set("k", "v")
        r.get("k")
    assert r.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"] == "10000"
    assert r.config_get("slowlog-max-len")["slowlog-max-len"] == "128"
    assert all(e["command"].split()[0].upper() not in (b"SET", b"GET") for e in r.slowlog_get())


# ---------------------------------------------------------------- LATENCY


def test_latency_monitor_records_events(daemon_factory: Callable[..., Daemon]) -> None:
    # 1 microsecond: every batch and every timer tick is a stall.
    d = daemon_factory({"latency": {"monitor_threshold": 0.000001}})
    r = d.client()
    r.set("k", "v")
    wait_until(
        lambda: {e[0] for e in r.execute_command("LATENCY", "LATEST")} >= {b"command", b"loop-lag"},
        10,
    )
    latest = {e[0]: e[1:] for e in r.execute_command("LATENCY", "LATEST")}
    when, last_ms, max_ms = latest[b"command"]
    assert abs(when - time.time()) < 60 and 0 <= last_ms <= max_ms
    history = r.execute_command("LATENCY", "HISTORY", "command")
    assert history and all(len(sample) == 2 for sample in history)
    stamps = [t for t, _ in history]
    assert stamps == sorted(set(stamps)), "one sample per second at most"
    assert r.execute_command("LATENCY", "HISTORY", "nosuchevent") == []
    report = r.execute_command("LATENCY", "DOCTOR")
    assert b"command" in report if isinstance(report, bytes) else "command" in report
    assert r.execute_command("LATENCY", "RESET", "command", "nosuchevent") == 1
    assert r.execute_command("LATENCY", "RESET") >= 1
    assert any(b"LATEST" in line for line in r.execute_command("LATENCY", "HELP"))


def test_latency_monitor_off(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"latency": {"monitor_threshold": 0}})
    r = d.client()
    r.set("k", "v")
    time.sleep(0.3)
    assert r.execute_command("LATENCY", "LATEST") == []
    assert b"off" in r.execute_command("LATENCY", "DOCTOR")
    assert r.config_get("latency-monitor-threshold") == {"latency-monitor-threshold": "0"}


# ------------------------------------------------------------------- INFO


def test_sessions_in_memory_are_frozen_out_of_the_collectors_reach(
    daemon_factory: Callable[..., Daemon],
) -> None:
    """A full collection walks every object the cyclic collector tracks, and a
    session in memory is one (issue 18: 50-170 ms pauses with 100k sessions).
    What survives a young collection is frozen instead; frozen sessions are
    still freed when they go (no session refers back to itself)."""
    d = daemon_factory({"cache": {"max_sessions": 1_000_000}})
    r = d.client()

    def frozen() -> int:
        return int(r.info("memory")["gc_frozen_objects"])

    before = frozen()
    for start in range(0, 150_000, 10_000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, start + 10_000):
            pipe.set(f"s{i}", "v")
        pipe.execute()
    held = frozen()
    assert held - before >= 50_000, (before, held)  # at least a young collection's worth
    assert r.flushall()
    assert held - frozen() >= 50_000, "frozen sessions are freed when they leave memory"


def test_info_sections_and_the_fields_tools_read(daemon: Daemon) -> None:
    r = daemon.client()
    r.set("k", "v", ex=100)
    info = r.info("everything")
    for field in (
        "redis_version", "run_id", "tcp_port", "process_id", "executable", "config_file",
        "connected_clients", "maxclients", "blocked_clients",
        "used_memory", "used_memory_rss", "used_memory_peak", "maxmemory", "maxmemory_policy",
        "mem_fragmentation_ratio",
        "loading", "aof_enabled", "rdb_last_bgsave_status", "aof_last_write_status",
        "instantaneous_ops_per_sec", "total_net_input_bytes", "total_net_output_bytes",
        "keyspace_hits", "keyspace_misses", "total_error_replies",
        "role", "connected_slaves", "used_cpu_sys", "used_cpu_user", "cluster_enabled",
    ):  # fmt: skip
        assert field in info, field
    assert len(info["run_id"]) == 40 and info["tcp_port"] == 0
    assert info["role"] == "master" and info["cluster_enabled"] == 0
    assert info["aof_enabled"] == 0  # no store in this daemon
    assert info["used_memory"] > 1_000_000, "the process, not the session bytes"
    assert info["used_memory_dataset"] == 2
    assert 90_000 < info["db0"]["avg_ttl"] <= 100_000
    assert "cmdstat_set" in info and "latency_percentiles_usec_set" in info
    default = r.info()
    assert "cmdstat_set" not in default and "db0" in default and "run_id" in default
    assert set(r.info("cluster")) == {"cluster_enabled"}
    raw = _send(daemon, _resp(b"INFO", b"modules", b"errorstats"), 4)
    assert b"# Modules\r\n\r\n# Errorstats\r\n" in raw


def test_info_avg_ttl_is_the_mean_time_left(daemon: Daemon) -> None:
    r = daemon.client()
    for i in range(50):
        r.set(f"k{i}", "v", ex=1000)
    avg = r.info("keyspace")["db0"]["avg_ttl"]
    assert 990_000 <= avg <= 1_000_000


def test_commandstats_errorstats_and_latencystats(daemon: Daemon) -> None:
    r = daemon.client()
    r.ping()
    r.set("n", "x")
    for _ in range(3):
        r.get("n")
    with pytest.raises(redis.ResponseError):
        r.incr("n")  # fails while running: failed_calls
    with pytest.raises(redis.ResponseError):
        r.execute_command("GET")  # wrong arity: rejected_calls
    info = r.info("all")
    get = info["cmdstat_get"]
    assert get["calls"] == 3 and get["rejected_calls"] == 1 and get["failed_calls"] == 0
    assert get["usec"] >= 0 and get["usec_per_call"] == pytest.approx(get["usec"] / 3, abs=0.01)
    assert info["cmdstat_incrby"]["failed_calls"] == 1
    assert info["errorstat_ERR"]["count"] == 2
    assert info["total_error_replies"] == 2
    p = info["latency_percentiles_usec_get"]
    assert 0 < p["p50"] <= p["p99"] <= p["p99.9"]


def test_net_bytes_count_what_went_over_the_socket(daemon: Daemon) -> None:
    r = daemon.client()
    before = r.info("stats")
    payload = _resp(b"SET", b"bytes", b"x" * 100) + _resp(b"GET", b"bytes")
    reply = _send(daemon, payload, 3)
    after = r.info("stats")
    # the INFO request and reply in between count too: measure them from the second INFO
    info_in = len(_resp(b"INFO", b"stats"))
    grew_in = after["total_net_input_bytes"] - before["total_net_input_bytes"]
    assert grew_in == len(payload) + info_in
    grew_out = after["total_net_output_bytes"] - before["total_net_output_bytes"]
    assert grew_out > len(reply)  # plus the first INFO's reply


def test_a_read_the_store_served_is_a_keyspace_hit(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"persistence": {"backend": "sqlite"}, "cache": {"max_sessions": 1}})
    r = d.client()
    r.set("a", "1")
    r.set("b", "2")  # a leaves memory, stays in the store
    before = r.info("stats")
    assert r.get("a") == b"1"
    assert r.get("nowhere") is None
    after = r.info("stats")
    assert after["keyspace_hits"] - before["keyspace_hits"] == 1
    assert after["keyspace_misses"] - before["keyspace_misses"] == 1
    info = r.info("persistence")
    assert info["aof_enabled"] == 1 and info["aof_last_write_status"] == "ok"
    assert r.config_get("appendonly") == {"appendonly": "yes"}
    assert r.config_get("appendfsync") == {"appendfsync": "always"}


def test_config_resetstat_resets_info_not_prometheus(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"metrics": {"enabled": True}})
    r = d.client()
    r.set("k", "v")
    r.get("k")
    with pytest.raises(redis.ResponseError):
        r.incr("k")
    commands_before = d.metric("sessiond_commands_total", command="get")
    assert r.config_resetstat()
    info = r.info("all")
    assert "cmdstat_get" not in info and "errorstat_ERR" not in info
    assert info["keyspace_hits"] == 0 and info["total_error_replies"] == 0
    assert info["total_commands_processed"] <= 2  # INFO itself, maybe counted
    r.get("k")
    info = r.info("all")
    assert info["cmdstat_get"]["calls"] == 1 and info["keyspace_hits"] == 1
    assert d.metric("sessiond_commands_total", command="get") == commands_before + 1


def _exported(d: Daemon) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for line in d.scrape().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
