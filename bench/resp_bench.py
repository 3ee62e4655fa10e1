#!/usr/bin/env python3
"""redis-benchmark against sessiond and redis-server, same run, Unix sockets.

    python bench/resp_bench.py                 # in-memory: -P 1, -P 16, -c 1
    python bench/resp_bench.py --persistence   # SET with fsync: sessiond always vs redis AOF
    python bench/resp_bench.py --metrics-off   # sessiond with metrics disabled (for the cost)

Needs redis-server and redis-benchmark (Debian: redis-server, redis-tools).
Prints requests/s, p99 and max latency for both servers and the ratios sessiond / redis.
Quote ratios from one run; absolute numbers vary with the machine's load.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        if path.exists():
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(path))
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"{path} did not come up")


@contextmanager
def running(cmd: list[str], sock: Path, cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (cwd / (sock.stem + ".log")).open("wb")
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_socket(sock, proc)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def sessiond(workdir: Path, *, metrics: bool, persistence: str | None) -> tuple[list[str], Path]:
    # The store lives apart from the config, as in production (/etc vs /var/lib):
    # the config watcher would otherwise wake on every write of the store's WAL.
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    sock = data / "sessiond.sock"
    config = {
        "socket": {"path": str(sock)},
        "persistence": (
            {"backend": "sqlite", "path": str(data / "bench.db"), "durability": persistence}
            if persistence
            else {"backend": "none"}
        ),
        "metrics": {"enabled": metrics, "listen": f"127.0.0.1:{free_port()}"},
        "logging": {"level": "warning"},
        "limits": {"max_clients": 10000},
        "cache": {"max_sessions": 200_000},
    }
    path = workdir / "sessiond.yaml"
    path.write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "sessiond", "run", "--config", str(path)], sock


def redis(workdir: Path, appendfsync: str | None) -> tuple[list[str], Path]:
    sock = workdir / "redis.sock"
    cmd = ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "",
           "--dir", str(workdir), "--maxclients", "10000"]  # fmt: skip
    if appendfsync:
        cmd += ["--appendonly", "yes", "--appendfsync", appendfsync]
    else:
        cmd += ["--appendonly", "no"]
    return cmd, sock


class Result(NamedTuple):
    rps: float
    p99: float  # ms
    max: float  # ms


def benchmark(
    sock: Path, tests: str, clients: int, pipeline: int, requests: int
) -> dict[str, Result]:
    """{test: Result} from redis-benchmark's CSV output."""
    out = subprocess.run(
        ["redis-benchmark", "-s", str(sock), "-t", tests, "-d", "200", "-r", "100000",
         "-n", str(requests), "-c", str(clients), "-P", str(pipeline), "--csv", "-q"],
        check=True, capture_output=True, text=True, timeout=900,
    ).stdout  # fmt: skip
    results = {}
    for row in csv.DictReader(io.StringIO(out)):
        results[row["test"]] = Result(
            float(row["rps"]), float(row["p99_latency_ms"]), float(row["max_latency_ms"])
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--metrics-off", action="store_true")
    parser.add_argument("--persistence", action="store_true")
    parser.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    args = parser.parse_args()
    for tool in ("redis-server", "redis-benchmark"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install redis-server redis-tools", file=sys.stderr)
            return 2
    n = 20_000 if args.quick else args.requests
    rows: list[tuple[str, str, Result, Result]] = []
    with tempfile.TemporaryDirectory(prefix="sessiond-bench-") as tmp:
        work = Path(tmp)
        if args.persistence:
            scenarios = [("SET c=50", 50, 1), ("SET c=1", 1, 1)]
            baselines = [("always", "always"), ("everysec", "everysec")]
            sd_cmd, sd_sock = sessiond(work, metrics=not args.metrics_off, persistence="always")
            results_sd: dict[str, dict[str, Result]] = {}
            with running(sd_cmd, sd_sock, work):
                for label, c, p in scenarios:
                    results_sd[label] = benchmark(sd_sock, "set", c, p, n // (10 if c == 1 else 1))
            for name, fsync in baselines:
                (work / "appendonlydir").exists() and shutil.rmtree(work / "appendonlydir")
                r_cmd, r_sock = redis(work, fsync)
                with running(r_cmd, r_sock, work):
                    for label, c, p in scenarios:
                        base = benchmark(r_sock, "set", c, p, n // (10 if c == 1 else 1))
                        rows.append((label, f"redis {name}", results_sd[label]["SET"], base["SET"]))
        else:
            scenarios = [("-c 50 -P 1", 50, 1), ("-c 50 -P 16", 50, 16), ("-c 1 -P 1", 1, 1)]
            sd_cmd, sd_sock = sessiond(work, metrics=not args.metrics_off, persistence=None)
            r_cmd, r_sock = redis(work, None)
            sd_results = {}
            with running(sd_cmd, sd_sock, work):
                for label, c, p in scenarios:
                    sd_results[label] = benchmark(sd_sock, "set,get", c, p, n)
            with running(r_cmd, r_sock, work):
                for label, c, p in scenarios:
                    base = benchmark(r_sock, "set,get", c, p, n)
                    for test in ("SET", "GET"):
                        rows.append((label, test, sd_results[label][test], base[test]))
    metrics_state = "off" if args.metrics_off else "on"
    print(f"sessiond (metrics {metrics_state}) vs redis-server {redis_version()}, "
          f"{os.cpu_count()} CPUs, {n} requests, -d 200 -r 100000")  # fmt: skip
    header = f"{'scenario':<14} {'test':<15} {'sessiond rps':>13} {'redis rps':>11} "
    header += f"{'ratio':>6} {'sd p99 ms':>10} {'redis p99':>10} {'p99 ratio':>9}"
    header += f" {'sd max ms':>10} {'redis max':>10}"
    print(header)
    for label, test, sd, rb in rows:
        p99_ratio = sd.p99 / rb.p99 if rb.p99 else float("inf")
        print(
            f"{label:<14} {test:<15} {sd.rps:>13,.0f} {rb.rps:>11,.0f} {sd.rps / rb.rps:>6.2f} "
            f"{sd.p99:>10.3f} {rb.p99:>10.3f} {p99_ratio:>9.2f} {sd.max:>10.3f} {rb.max:>10.3f}"
        )
    return 0


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return next((w.split("=")[1] for w in out.split() if w.startswith("v=")), "?")


if __name__ == "__main__":
    sys.exit(main())
