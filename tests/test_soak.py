"""A soak short enough for CI (under a minute of load) but real: hundreds of
clients, redis-py threads and asyncio tasks, against a daemon with a small
``max_sessions``, 1-5 s TTLs that slide, the SQLite store under
``durability: batch``, SIGHUPs, and an invalid config dropped in mid-run and
then restored.

It asserts that no client sees an error, that the daemon's counters agree
with what the clients did (every GET is one hit or one miss; evictions and
expirations happened, within what the writes allow), that memory stays
bounded (RSS from /proc, sampled all along), and that the log holds no
traceback.

SESSIOND_SOAK_SECONDS makes it longer (the default keeps CI short).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aredis
import yaml
from conftest import wait_until

if TYPE_CHECKING:
    from conftest import Daemon

Factory = Callable[..., "Daemon"]

SECONDS = float(os.environ.get("SESSIOND_SOAK_SECONDS") or 40)
THREADS = 150
TASKS = 150
KEYS = 3000  # shared by every client: 15 times max_sessions
MAX_SESSIONS = 200
RSS_LIMIT_MIB = 150  # about 3 times what the daemon uses here (46 MiB at most, measured)
RSS_GROWTH_MIB = 32  # the last third of the run against the first


@dataclass
class Tally:
    gets: int = 0
    hits: int = 0  # GETs that found a value
    sets: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.gets += other.gets
        self.hits += other.hits
        self.sets += other.sets
        self.errors.update(other.errors)
        self.wrong += other.wrong


def step(rng: random.Random) -> tuple[str, bytes, int]:
    """The next request: ("set" or "get", key, TTL in seconds)."""
    key = f"session:{rng.randrange(KEYS)}".encode()
    return ("set" if rng.random() < 0.4 else "get"), key, rng.randint(1, 5)


def check_value(tally: Tally, key: bytes, value: bytes | None) -> None:
    """A value is its key's (every write puts the key in the value)."""
    if value is None:
        return
    tally.hits += 1
    if not value.startswith(key + b"="):
        tally.wrong.append(f"{key!r}: {value!r}")


def thread_client(path: str, seed: int, stop: threading.Event, tally: Tally) -> None:
    rng = random.Random(seed)
    with redis.Redis(unix_socket_path=path, socket_timeout=60) as r:
        n = 0
        while not stop.is_set():
            n += 1
            op, key, ttl = step(rng)
            try:
                if op == "set":
                    r.set(key, key + b"=%d:%d" % (seed, n), ex=ttl)
                    tally.sets += 1
                else:
                    value = r.get(key)
                    tally.gets += 1
                    check_value(tally, key, value)
            except redis.RedisError as exc:
                tally.errors[f"{op} {type(exc).__name__}: {exc}"] += 1


async def task_client(path: str, seed: int, stop: threading.Event, tally: Tally) -> None:
    rng = random.Random(seed)
    r = aredis.Redis(unix_socket_path=path, socket_timeout=60)
    try:
        n = 0
        while not stop.is_set():
            n += 1
            op, key, ttl = step(rng)
            try:
                if op == "set":
                    await r.set(key, key + b"=%d:%d" % (seed, n), ex=ttl)
                    tally.sets += 1
                else:
                    value = await r.get(key)
                    tally.gets += 1
                    check_value(tally, key, value)
            except redis.RedisError as exc:
                tally.errors[f"{op} {type(exc).__name__}: {exc}"] += 1
    finally:
        await r.aclose()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def info(d: Daemon) -> dict[str, Any]:
    with d.client() as c:
        return dict(c.info("all"))


def test_soak(daemon_factory: Factory) -> None:
    d = daemon_factory(
        {
            "cache": {
                "max_sessions": MAX_SESSIONS,
                "default_ttl": "3s",
                "sliding": True,
                "sweep_interval": "200ms",
            },
            "persistence": {
                "backend": "sqlite",
                "path": "store/sessions.db",
                "durability": "batch",
                "flush_interval": "100ms",
            },
            "metrics": {"enabled": True},
            "logging": {"level": "info"},
        },
        start=False,
    )
    (d.workdir / "store").mkdir()
    d.start()
    assert d.proc is not None
    pid = d.proc.pid
    path = str(d.socket_path)
    stop = threading.Event()
    tallies = [Tally() for _ in range(THREADS + TASKS)]

    threads = [
        threading.Thread(target=thread_client, args=(path, i, stop, tallies[i]), daemon=True)
        for i in range(THREADS)
    ]

    def tasks() -> None:
        async def all_tasks() -> None:
            await asyncio.gather(
                *(task_client(path, i, stop, tallies[i]) for i in range(THREADS, THREADS + TASKS))
            )

        asyncio.run(all_tasks())

    threads.append(threading.Thread(target=tasks, daemon=True))
    samples: list[float] = [rss_mib(pid)]
    good = d.config_path.read_text()
    reloads = {"sighup": 0, "failed": 0}
    began = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        invalid_at, restored_at = SECONDS / 3, SECONDS / 2
        invalid = restored = False
        next_hup = began + 2
        while (now := time.monotonic()) < began + SECONDS:
            samples.append(rss_mib(pid))
            if not invalid and now - began >= invalid_at:
                # Dropped in as a config manager would (a rename): the watcher sees it.
                bad = d.config_path.with_suffix(".new")
                bad.write_text(good + "cache:\n  max_sessions: -1\n")
                bad.replace(d.config_path)
                invalid = True
                reloads["failed"] += 1
                d.wait_for_event("config_reload_failed", count=reloads["failed"], timeout=30)
            elif invalid and not restored and now - began >= restored_at:
                d.write_config()  # the good one back, again by a rename
                restored = True
            if now >= next_hup:
                # Alternate the bound, so a reload has something to apply.
                config = yaml.safe_load(good) if restored or not invalid else None
                if config is not None:
                    config["cache"]["max_sessions"] = random.choice([MAX_SESSIONS, 150])
                    d.write_config(config)
                d.signal(signal.SIGHUP)
                reloads["sighup"] += 1
                next_hup = now + 2
            time.sleep(0.5)
        # The bound the run ends with is the one asserted below.
        d.write_config(yaml.safe_load(good))
        d.signal(signal.SIGHUP)
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
    assert not any(t.is_alive() for t in threads), "a client is stuck"
    elapsed = time.monotonic() - began

    total = Tally()
    for tally in tallies:
        total.add(tally)
    wait_until(lambda: info(d)["max_sessions"] == MAX_SESSIONS, timeout=30, what="the reload")
    stats = info(d)
    metrics = d.scrape()
    rss = [*samples, rss_mib(pid)]
    third = max(1, len(rss) // 3)
    print(
        f"soak: {THREADS} threads + {TASKS} asyncio clients, {elapsed:.0f}s, "
        f"{total.gets + total.sets} requests ({total.gets} GET, {total.sets} SET), "
        f"hits {stats['keyspace_hits']} misses {stats['keyspace_misses']} "
        f"evicted {stats['evicted_keys']} expired {stats['expired_keys']}, "
        f"{reloads['sighup']} SIGHUPs, RSS {rss[0]:.0f} -> max {max(rss):.0f} MiB "
        f"(first third max {max(rss[:third]):.0f}, last third max {max(rss[-third:]):.0f})"
    )

    # No client saw an error, nor another key's value.
    assert not total.errors, total.errors.most_common(5)
    assert total.wrong == [], total.wrong[:5]
    assert total.gets > 0 and total.sets > 0
    # Every GET is one lookup. INFO counts it as Redis does: a hit if it found a value
    # (in memory or in the store), else a miss; so its hits are the GETs that the
    # clients saw answered with a value.
    assert stats["keyspace_hits"] + stats["keyspace_misses"] == total.gets
    assert stats["keyspace_hits"] == total.hits
    # The metrics count memory's side: a lookup memory answered, or one it passed to
    # the store; the store's live copies make up the difference between the two hits.
    memory_hits = metric(metrics, "sessiond_cache_hits_total")
    assert memory_hits + metric(metrics, "sessiond_cache_misses_total") == total.gets
    assert memory_hits <= total.hits <= memory_hits + stats["store_loads_found"]
    # The keyspace is 15 times the bound: memory evicted, and TTLs of 1-5 s ran out. Each
    # session in memory came from a SET or a load, and leaves once; a lowered bound evicts
    # at most the difference at each reload.
    admitted = total.sets + stats["store_loads_found"]
    assert 0 < stats["evicted_keys"] <= admitted + MAX_SESSIONS * reloads["sighup"]
    assert 0 < stats["expired_keys"] <= admitted
    assert metric(metrics, "sessiond_cache_sessions") <= MAX_SESSIONS
    assert stats["max_sessions"] == MAX_SESSIONS
    # Reloads: every SIGHUP and file change counted, the invalid file refused.
    assert metric(metrics, "sessiond_config_reloads_total", 'result="failure"') >= 1
    assert metric(metrics, "sessiond_config_reloads_total", 'result="success"') >= (
        reloads["sighup"] // 2
    )
    assert metric(metrics, "sessiond_config_last_reload_successful") == 1
    # Memory: bounded, and not still growing at the end.
    assert max(rss) < RSS_LIMIT_MIB, rss
    assert max(rss[-third:]) <= max(rss[:third]) + RSS_GROWTH_MIB, rss
    # The log: the refused config, nothing else wrong.
    text = d.log_text()
    assert "Traceback" not in text
    errors = {e["event"] for e in d.events() if e.get("level") == "error"}
    assert errors == {"config_reload_failed"}, errors
    assert d.stop() == 0


def metric(text: str, name: str, labels: str = "") -> float:
    sample = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {sample} in the scrape")
