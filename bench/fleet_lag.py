#!/usr/bin/env python3
"""Cross-host invalidation lag on the shared store (#15): what a client on host B
sees after a client on host A got its reply.

    python bench/fleet_lag.py              # 1000 writes, then hot GETs: about a minute
    python bench/fleet_lag.py --writes 200 --no-reads   # a smoke run

Starts its own PostgreSQL (tests/pg.py: fsync and synchronous_commit on) and two
sessiond daemons on it (``durability: always``), each on its own socket. A process
of its own reads one key on host B in a tight loop (so B holds it in memory between
writes); this process writes a new value through host A every 20 ms (``--pace``).
The lag of a write is from A's reply reaching its client to the first GET on B that
returns the new value (both on CLOCK_MONOTONIC): the NOTIFY's delivery, B dropping
its copy and B's read through. Negative lags (B saw the value before A's reply came
back) count as 0; a write overwritten before B showed it counts until B showed a
later one. It prints p50, p99 and max; split at the moment a LISTEN client of
the bench's own, which does nothing else, hears the write's notification
(PostgreSQL's delivery, against B's own part after it); and B's own
``sessiond_store_invalidation_lag_seconds`` (from the start of A's commit, so it
includes the commit itself, to B's receipt; bucket bounds only) beside it.

Then (unless ``--no-reads``) hot reads: redis-benchmark SETs 10,000 sessions through
host B until memory holds them all, and GETs them at -c 50 from B's socket (every
GET a near-cache hit) and from a redis-server over TCP loopback (what a fleet
shares without sessiond), one after the other.
"""

from __future__ import annotations

import argparse
import csv
import io
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from multiprocessing.connection import Connection
from pathlib import Path

import psycopg
import redis
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pg import PgCluster
from pg_probe import redis_tcp
from resp_bench import free_port, running
from sessiond.store import pgsql

HOT_KEYS = 10_000


def daemon(work: Path, name: str, dsn: str) -> tuple[list[str], Path, int]:
    sock = work / f"{name}.sock"
    port = free_port()
    config = {
        "socket": {"path": str(sock)},
        "persistence": {"backend": "postgresql", "dsn": dsn, "durability": "always"},
        "metrics": {"enabled": True, "listen": f"127.0.0.1:{port}"},
        "logging": {"level": "warning"},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "sessiond", "run", "--config", str(path)], sock, port


def poll(sock: str, stop_at: int, out: Connection) -> None:
    """GET "lag" on host B until it returns ``stop_at``; (value, first seen) pairs."""
    r = redis.Redis(unix_socket_path=sock)
    seen: list[tuple[int, float]] = []
    last = -1
    while last < stop_at:
        value = r.get("lag")
        now = time.monotonic()
        current = int(value) if value is not None else -1
        if current != last:
            seen.append((current, now))
            last = current
    out.send(seen)
    r.close()


def listen(dsn: str, count: int, out: Connection) -> None:
    """LISTEN beside the hosts: when each of host A's first ``count``
    notifications reaches a client of PostgreSQL's that does nothing else
    (CLOCK_MONOTONIC), to tell PostgreSQL's delivery from B's own part."""
    heard: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"LISTEN {pgsql.CHANNEL}")
        out.send("listening")
        for notify in conn.notifies():
            payload = pgsql.parse(notify.payload)
            if payload is not None and b"lag" in payload.keys:
                heard.append(time.monotonic())
                if len(heard) >= count:
                    break
    out.send(heard)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def histogram_quantiles(metrics: str, name: str) -> str:
    buckets: list[tuple[float, float]] = []
    for line in metrics.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return "no observations"
    total = buckets[-1][1]
    found = []
    for q in (0.5, 0.99):
        bound = next(le for le, count in buckets if count >= q * total)
        found.append(f"p{round(q * 100)} <= {bound * 1000:g} ms")
    return f"{', '.join(found)} ({total:.0f} notifications)"


def get_rate(target: list[str], n: int) -> tuple[float, float, float]:
    """Requests/s, p50 and p99 ms of GET -c 50 over HOT_KEYS sessions, after SETs
    that write each of them (almost surely: 20 per key)."""

    def run(test: str, requests: int) -> dict[str, str]:
        out = subprocess.run(
            ["redis-benchmark", *target, "-t", test, "-d", "200", "-r", str(HOT_KEYS),
             "-n", str(requests), "-c", "50", "--csv", "-q"],
            check=True, capture_output=True, text=True, timeout=900,
        ).stdout  # fmt: skip
        return next(csv.DictReader(io.StringIO(out)))

    run("set", HOT_KEYS * 20)
    row = run("get", n)
    return float(row["rps"]), float(row["p50_latency_ms"]), float(row["p99_latency_ms"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--pace", type=float, default=0.02, help="seconds between writes")
    parser.add_argument("--no-reads", action="store_true", help="skip the hot GETs")
    parser.add_argument("--reads", type=int, default=200_000, help="GETs per server")
    args = parser.parse_args()
    reads: dict[str, tuple[float, float, float]] = {}
    with ExitStack() as stack:
        pg = stack.enter_context(PgCluster.create(name="lag"))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sessiond-lag-")))
        dsn = pg.dsn(pg.create_database())
        cmd_a, sock_a, _ = daemon(work, "a", dsn)
        cmd_b, sock_b, port_b = daemon(work, "b", dsn)
        stack.enter_context(running(cmd_a, sock_a, work))
        stack.enter_context(running(cmd_b, sock_b, work))
        a = redis.Redis(unix_socket_path=str(sock_a))
        heard_in, heard_out = mp.Pipe(duplex=False)
        listener = mp.Process(target=listen, args=(dsn, args.writes + 1, heard_out))
        listener.start()
        heard_in.recv()
        a.set("lag", "0")
        receive, send = mp.Pipe(duplex=False)
        poller = mp.Process(target=poll, args=(str(sock_b), args.writes, send))
        poller.start()
        time.sleep(0.5)  # the poller has B's copy in memory
        acked: dict[int, float] = {}
        for i in range(1, args.writes + 1):
            a.set("lag", str(i))
            acked[i] = time.monotonic()
            time.sleep(args.pace)
        seen: list[tuple[int, float]] = receive.recv()
        poller.join()
        # The i-th notification of "lag" is write i's (write 0 set it first).
        heard: list[float] = heard_in.recv()[1:]
        listener.join()
        with urllib.request.urlopen(f"http://127.0.0.1:{port_b}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        if not args.no_reads:
            reads["sessiond host B (PostgreSQL store), Unix socket"] = get_rate(
                ["-s", str(sock_b)], args.reads
            )
            (work / "redis").mkdir()
            with redis_tcp(work / "redis", None) as target:
                reads["redis-server, TCP loopback"] = get_rate(target, args.reads)
    # A write B never showed (the next one overwrote it first) counts until B
    # showed that one or a later one.
    lags: list[float] = []
    for i, at in acked.items():
        shown = next(t for value, t in seen if value >= i)
        lags.append(max(0.0, shown - at) * 1000)
    delivery = [(t - acked[i]) * 1000 for i, t in enumerate(heard, 1)]
    shown = [max(0.0, lag - max(0.0, d)) for lag, d in zip(lags, delivery, strict=True)]
    skipped = len(acked) - len({value for value, _ in seen} & set(acked))
    print(
        f"write on A, read on B (durability: always), {len(lags)} writes every "
        f"{args.pace * 1000:g} ms ({skipped} overwritten before B showed them)"
    )
    print(
        f"lag from A's reply to B serving the value: p50 {pct(lags, 0.5):.2f} ms, "
        f"p99 {pct(lags, 0.99):.2f} ms, max {max(lags):.2f} ms, "
        f"mean {statistics.fmean(lags):.2f} ms"
    )
    print(
        f"of which: notification reaching a bare LISTEN client after A's reply: "
        f"p50 {pct(delivery, 0.5):.2f} ms, p99 {pct(delivery, 0.99):.2f} ms, "
        f"max {max(delivery):.2f} ms; "
        f"B serving it after that: p50 {pct(shown, 0.5):.2f} ms, "
        f"p99 {pct(shown, 0.99):.2f} ms, max {max(shown):.2f} ms"
    )
    print(
        "B's sessiond_store_invalidation_lag_seconds (A's commit start to receipt): "
        + histogram_quantiles(metrics, "sessiond_store_invalidation_lag_seconds")
    )
    for name, (rps, p50, p99) in reads.items():
        print(f"hot GET -c 50, {name}: {rps:,.0f} req/s, p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
