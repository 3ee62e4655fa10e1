#!/usr/bin/env python3
"""How long other clients wait while one reads the whole store during a write burst.

    python bench/count_stall.py [--command DBSIZE|KEYS]

Starts sessiond (SQLite, durability always), fills it, then runs a durable SET
load (redis-benchmark -c 50) while one client sends DBSIZE (or ``KEYS *``)
every 50 ms and another sends PING every 2 ms; prints the PING latency
percentiles. DBSIZE counts the store and KEYS reads every row; where that read
runs on the event loop, every client waits for it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
from resp_bench import running, sessiond


def load(sock: Path, requests: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["redis-benchmark", "-s", str(sock), "-t", "set", "-d", "200", "-r", "100000",
         "-n", str(requests), "-c", "50", "-q"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--command", choices=["DBSIZE", "KEYS"], default="DBSIZE")
    command = ["KEYS", "*"] if parser.parse_args().command == "KEYS" else ["DBSIZE"]
    with tempfile.TemporaryDirectory(prefix="sessiond-stall-") as tmp:
        work = Path(tmp)
        cmd, sock = sessiond(work, metrics=False, persistence="always")
        with running(cmd, sock, work):
            load(sock, 60_000).wait()  # a stored keyspace to count
            burst = load(sock, 100_000)
            stop = threading.Event()

            def monitor() -> None:
                with redis.Redis(unix_socket_path=str(sock)) as r:
                    while not stop.is_set():
                        r.execute_command(*command)
                        time.sleep(0.05)

            thread = threading.Thread(target=monitor)
            thread.start()
            latencies = []
            with redis.Redis(unix_socket_path=str(sock)) as r:
                end = time.monotonic() + 4
                while time.monotonic() < end:
                    started = time.perf_counter()
                    r.ping()
                    latencies.append(time.perf_counter() - started)
                    time.sleep(0.002)
            stop.set()
            thread.join()
            burst.wait()
    latencies.sort()
    n = len(latencies)
    print(
        f"PING during a durable SET burst with {' '.join(command)} every 50 ms: n={n} "
        f"p50 {latencies[n // 2] * 1e3:.2f} ms, p99 {latencies[int(n * 0.99)] * 1e3:.1f} ms, "
        f"max {latencies[-1] * 1e3:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
