#!/usr/bin/env python3
"""Durable SET on the shared store against a central Redis over TCP, as #15 compares them.

    .venv-mypyc/bin/python bench/shared_vs_tcp_redis.py [--reps 3]

What a team running a central redis-server with ``appendonly yes`` and
``appendfsync always`` on another port of the same machine would see:
sessiond with ``durability: always`` on PostgreSQL (a cluster of its own,
tests/pg.py, over TCP loopback), answered on its Unix socket, against that
redis-server over TCP loopback. ``redis-benchmark -t set -d 200 -r 100000`` at
``-c 50`` and ``-c 1``, the two servers alternating in each repetition, the
order turning each time; prints each repetition and the median and range of
sessiond's rate over Redis'. Measures the sessiond of the interpreter that
runs it (run it with the compiled build). Needs redis-server and
redis-benchmark (Debian: redis-server, redis-tools) and PostgreSQL
(Debian: postgresql); about 3 minutes.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from resp_bench import free_port, postgresql, sessiond

SCENARIOS = ((50, 60_000), (1, 6_000))  # clients, requests


def rate(target: list[str], clients: int, requests: int) -> float:
    """redis-benchmark's SETs per second against ``target`` (its -s / -h -p)."""
    out = subprocess.run(
        ["redis-benchmark", *target, "-t", "set", "-d", "200", "-r", "100000",
         "-c", str(clients), "-n", str(requests), "--csv"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(line for line in out.splitlines() if line.startswith('"SET"'))
    return float(line.split(",")[1].strip('"'))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    ratios: dict[int, list[float]] = {}
    with postgresql() as pg, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cmd, sock = sessiond(
            work, metrics=True, persistence="always", dsn=pg.dsn(pg.create_database())
        )
        port = free_port()
        servers = [
            subprocess.Popen(cmd),
            subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--dir", str(work), "--appendonly", "yes", "--appendfsync", "always"],
                stdout=subprocess.DEVNULL,
            ),
        ]  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while not sock.exists():
                if time.monotonic() > deadline:
                    raise SystemExit("sessiond did not start")
                time.sleep(0.1)
            time.sleep(1.5)
            targets = {"sessiond": ["-s", str(sock)], "redis": ["-h", "127.0.0.1", "-p", str(port)]}
            for rep in range(args.reps):
                for clients, requests in SCENARIOS:
                    order = list(targets) if rep % 2 == 0 else list(reversed(targets))
                    got = {name: rate(targets[name], clients, requests) for name in order}
                    ratio = got["sessiond"] / got["redis"]
                    ratios.setdefault(clients, []).append(ratio)
                    print(
                        f"rep {rep + 1} -c {clients}: sessiond {got['sessiond']:,.0f}/s, "
                        f"redis {got['redis']:,.0f}/s, {ratio:.2f}",
                        flush=True,
                    )
        finally:
            for server in servers:
                server.terminate()
                server.wait()
    for clients, values in ratios.items():
        print(
            f"-c {clients}: sessiond / redis (TCP, appendfsync always): "
            f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
