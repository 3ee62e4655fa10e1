#!/usr/bin/env python3
"""Decisions from two hosts at once on the shared store (#15): INCR of keys both
hosts contend for.

    python bench/fleet_decide.py                     # 20,000 INCR per host over 1000 keys
    python bench/fleet_decide.py --keys 50           # heavy contention across the hosts
    python bench/fleet_decide.py --against OTHER/bin/python   # and another build, after

Starts its own PostgreSQL (tests/pg.py) and two sessiond daemons on one database
(``durability: always``), and runs ``redis-benchmark -t incr -r KEYS -c CLIENTS``
against both at once: every INCR is decided by the database, and with few keys
the two hosts' decisions wait for each other's locks. Prints each host's INCR/s
and p99, whether the counters add up to every INCR acknowledged (they must), and
each host's decisions, the transactions they ran in, and decision errors. With
``--against``, the same run follows on a fresh database with the sessiond that
interpreter has installed (runs made apart: read the two as a shape, not a ratio).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fleet_lag import daemon
from pg import PgCluster
from resp_bench import running

METRICS = (
    "sessiond_store_decisions_total",
    "sessiond_store_decision_transactions_total",
    "sessiond_store_decision_errors_total",
)


def one_run(cluster: PgCluster, python: str, requests: int, keys: int, clients: int) -> None:
    dsn = cluster.dsn(cluster.create_database())
    with tempfile.TemporaryDirectory(prefix="sessiond-fleet-") as tmp, ExitStack() as stack:
        hosts: list[tuple[Path, int]] = []
        for name in ("a", "b"):
            cmd, sock, port = daemon(Path(tmp), name, dsn)
            stack.enter_context(running([python, *cmd[1:]], sock, Path(tmp)))
            hosts.append((sock, port))
        rows: dict[int, list[str]] = {}

        def load(i: int, sock: Path) -> None:
            out = subprocess.run(
                ["redis-benchmark", "-s", str(sock), "-t", "incr", "-r", str(keys),
                 "-n", str(requests), "-c", str(clients), "--csv", "-q"],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            rows[i] = out.strip().splitlines()[-1].replace('"', "").split(",")

        threads = [
            threading.Thread(target=load, args=(i, sock)) for i, (sock, _) in enumerate(hosts)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        r = redis.Redis(unix_socket_path=str(hosts[0][0]))
        total = sum(int(r.get(key) or 0) for key in r.scan_iter("counter:*", count=1000))
        print(f"{python}: {keys} keys, {clients} clients a host")
        for i, (_, port) in enumerate(hosts):
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            found = {
                line.split()[0]: float(line.split()[1])
                for line in text.splitlines()
                if line.startswith(METRICS)
            }
            rps, p99 = float(rows[i][1]), float(rows[i][6])
            counts = ", ".join(
                f"{m.removeprefix('sessiond_store_')} {found.get(m, 0):.0f}" for m in METRICS
            )
            print(f"  host {'ab'[i]}: {rps:,.0f} INCR/s, p99 {p99:.1f} ms; {counts}")
        verdict = "exact" if total == 2 * requests else "WRONG"
        print(f"  counters add up to {total} of {2 * requests} acknowledged: {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="INCR per host")
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=25, help="connections per host")
    parser.add_argument("--against", metavar="PYTHON", help="then the same with this sessiond")
    args = parser.parse_args()
    with PgCluster.create(name="fleet-decide") as cluster:
        for python in [sys.executable, *([args.against] if args.against else [])]:
            one_run(cluster, python, args.requests, args.keys, args.clients)
    return 0


if __name__ == "__main__":
    sys.exit(main())
