#!/usr/bin/env python3
"""Durable SET on the shared store against a central Redis over TCP, as #15 compares them.

    .venv-mypyc/bin/python bench/shared_vs_tcp_redis.py [--reps 3] [--floor]

What a team running a central redis-server with ``appendonly yes`` and
``appendfsync always`` on another port of the same machine would see:
sessiond with ``durability: always`` on PostgreSQL (a cluster of its own,
tests/pg.py, over TCP loopback), answered on its Unix socket, against that
redis-server over TCP loopback. ``redis-benchmark -t set -d 200 -r 100000`` at
``-c 50`` and ``-c 1``, the two servers alternating in each repetition, the
order turning each time; prints each repetition and the median and range of
sessiond's rate over Redis', and the CPU each server and PostgreSQL's
processes used per SET. ``--floor`` adds bench/baseline_server.py ``--pg`` (a
minimal Python server that makes each round's SETs durable with one upsert, on
a database of its own): what a Python server reaches here with nothing of
sessiond's coherence, and what PostgreSQL spends on a plain upsert. Measures
the sessiond of the interpreter that runs it (run it with the compiled build);
``--against OTHER/bin/python`` adds the sessiond that interpreter has installed
(another build, on a database of its own) to the same repetitions, as "before".
Before the first repetition every server is given all 100,000 keys once, so
that each SET measured replaces a session, as in a session store past its first
minutes (with ``--no-fill``, most of the first repetition's SETs insert).
Needs redis-server and redis-benchmark (Debian: redis-server, redis-tools) and
PostgreSQL (Debian: postgresql); about 3 minutes, 5 with ``--floor``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from resp_bench import BASELINE, before, cpu_seconds, free_port, postgresql, sessiond

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


def fill(target: list[str]) -> None:
    """Every key redis-benchmark's ``-r 100000`` names, written once through ``target``."""
    client = (
        redis.Redis(unix_socket_path=target[1], protocol=2)
        if target[0] == "-s"
        else redis.Redis(host=target[1], port=int(target[3]), protocol=2)
    )
    value = b"x" * 200
    with client:
        for start in range(0, 100_000, 1000):
            with client.pipeline(transaction=False) as pipe:
                for i in range(start, start + 1000):
                    pipe.set(b"key:%012d" % i, value)
                pipe.execute()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also bench/baseline_server.py --pg on a database of its own: what a minimal "
        "Python server that only upserts its SETs reaches against the same Redis",
    )
    parser.add_argument(
        "--against",
        metavar="PYTHON",
        help="also run the sessiond this interpreter has installed (another build), on a "
        "database of its own, in the same repetitions",
    )
    parser.add_argument(
        "--no-fill", action="store_true", help="start from empty stores, not from 100,000 keys"
    )
    args = parser.parse_args()
    # name -> clients -> per repetition: (SETs/s, server CPU us/SET, PostgreSQL CPU us/SET)
    runs: dict[str, dict[int, list[tuple[float, float, float]]]] = {}
    with postgresql() as pg, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cmd, sock = sessiond(
            work, metrics=True, persistence="always", dsn=pg.dsn(pg.create_database())
        )
        port = free_port()
        servers = {
            "sessiond": subprocess.Popen(cmd),
            "redis": subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--dir", str(work), "--appendonly", "yes", "--appendfsync", "always"],
                stdout=subprocess.DEVNULL,
            ),
        }  # fmt: skip
        targets = {"sessiond": ["-s", str(sock)], "redis": ["-h", "127.0.0.1", "-p", str(port)]}
        socks = [sock]
        if args.against:
            other, other_sock = before(
                work, args.against, True, "always", pg.dsn(pg.create_database())
            )
            servers["before"] = subprocess.Popen(other)
            targets["before"] = ["-s", str(other_sock)]
            socks.append(other_sock)
        if args.floor:
            floor_sock = work / "floor.sock"
            servers["floor"] = subprocess.Popen(
                [sys.executable, str(BASELINE), "--socket", str(floor_sock),
                 "--pg", pg.dsn(pg.create_database())],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            targets["floor"] = ["-s", str(floor_sock)]
        try:
            deadline = time.monotonic() + 30
            while not all(path.exists() for path in socks) or (
                args.floor and not floor_sock.exists()
            ):
                if time.monotonic() > deadline:
                    raise SystemExit("sessiond or the floor server did not start")
                time.sleep(0.1)
            time.sleep(1.5)
            if not args.no_fill:
                for target in targets.values():
                    fill(target)
                time.sleep(2)  # the fills' last commits and renewals
            assert pg.proc is not None
            for rep in range(args.reps):
                for clients, requests in SCENARIOS:
                    order = list(targets) if rep % 2 == 0 else list(reversed(targets))
                    for name in order:
                        pid = servers[name].pid
                        own, db = cpu_seconds(pid), cpu_seconds(pg.proc.pid)
                        got = rate(targets[name], clients, requests)
                        own = (cpu_seconds(pid) - own) / requests * 1e6
                        db = (cpu_seconds(pg.proc.pid) - db) / requests * 1e6
                        runs.setdefault(name, {}).setdefault(clients, []).append((got, own, db))
                    print(
                        f"rep {rep + 1} -c {clients}: "
                        + ", ".join(
                            f"{name} {runs[name][clients][-1][0]:,.0f}/s" for name in targets
                        ),
                        flush=True,
                    )
        finally:
            for server in servers.values():
                server.terminate()
                server.wait()
    print("median [range] of each repetition's rate over Redis' (TCP, appendfsync always);")
    print("CPU per SET: the server's (all threads and child processes), PostgreSQL's (all its")
    print("processes), medians in us")
    for name in targets:
        for clients, _ in SCENARIOS:
            mine, theirs = runs[name][clients], runs["redis"][clients]
            ratios = [a[0] / b[0] for a, b in zip(mine, theirs, strict=True)]
            print(
                f"-c {clients:<2} {name:>8}: {statistics.median(ratios):.2f} "
                f"[{min(ratios):.2f}-{max(ratios):.2f}], "
                f"CPU/SET {statistics.median(r[1] for r in mine):.0f} us, "
                f"PostgreSQL {statistics.median(r[2] for r in mine):.0f} us"
            )
    if args.against:
        print("this build over the other (--against), per repetition: median [range]")
        for clients, _ in SCENARIOS:
            pairs = list(zip(runs["sessiond"][clients], runs["before"][clients], strict=True))
            for what, i in (("SETs/s", 0), ("CPU/SET", 1), ("PostgreSQL CPU/SET", 2)):
                ratios = [a[i] / b[i] for a, b in pairs]
                print(
                    f"-c {clients:<2} {what}: {statistics.median(ratios):.2f} "
                    f"[{min(ratios):.2f}-{max(ratios):.2f}]"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
