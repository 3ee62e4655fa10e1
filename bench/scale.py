#!/usr/bin/env python3
"""A million sessions: sessiond against redis-server, same steps, one run.

    python bench/scale.py                      # 1,000,000 SETs of 200 bytes
    python bench/scale.py --sessions 10000000  # ten million

Both servers get ``redis-benchmark -t set -n N -r 100000000 -d 200 -c 50 -P 16``
on a Unix socket: sessiond with ``durability: batch`` and ``max_sessions:
100000``, Redis with ``appendonly yes``, ``appendfsync everysec``. Measured for
each: the write rate over the whole load; the longest stall a client saw
during it (a probe sends PING every 10 ms and keeps its worst round trip);
bytes on disk right after the load and after a clean stop; SIGTERM to exit
right after the load; start to first PING answered right after that stop, and
again on an idle store (stopped once everything was compacted); start to the
warm start loaded (sessiond serves while it loads; INFO persistence says when
it is done). A key written right before the stop must be read back after each
start (checked, printed).

Needs redis-server and redis-benchmark (Debian: redis-server, redis-tools).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def ping(path: Path, timeout: float = 1.0) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def command(path: Path, *args: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(path))
        parts = [f"*{len(args)}\r\n".encode()]
        for a in args:
            parts.append(f"${len(a.encode())}\r\n{a}\r\n".encode())
        s.sendall(b"".join(parts))
        data = b""
        while not data.endswith(b"\r\n") or (data.startswith(b"$") and data.count(b"\r\n") < 2):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


class Probe:
    """PING every 10 ms on its own connection; the worst round trip seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.worst = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.path))
            s.settimeout(60)
            while not self.stop.is_set():
                t0 = time.perf_counter()
                s.sendall(b"PING\r\n")
                s.recv(64)
                self.worst = max(self.worst, time.perf_counter() - t0)
                time.sleep(0.01)

    def __enter__(self) -> Probe:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(120)


def disk_bytes(directory: Path) -> int:
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            if not name.endswith((".sock", ".log", ".yaml", ".conf")):
                total += os.stat(os.path.join(root, name)).st_size
    return total


class Server:
    def __init__(self, name: str, cmd: list[str], sock: Path, data: Path, cwd: Path) -> None:
        self.name, self.cmd, self.sock, self.data, self.cwd = name, cmd, sock, data, cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> float:
        """Start; seconds until the first PING is answered."""
        log = (self.cwd / f"{self.name}.log").open("ab")
        t0 = self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        while not ping(self.sock, 0.5):
            if self.proc.poll() is not None:
                sys.exit(f"{self.name} exited {self.proc.returncode}; see {self.cwd}")
            time.sleep(0.005)
        return time.monotonic() - t0

    def loaded(self) -> float:
        """Seconds from the last start until INFO persistence says that
        nothing is loading (Redis' ``loading``, sessiond's warm start)."""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            info = command(self.sock, "INFO", "persistence")
            if b"loading:1" not in info and b"warm_start_in_progress:1" not in info:
                return time.monotonic() - self.started_at
            time.sleep(0.005)
        raise RuntimeError(f"{self.name}: still loading after 600 s")

    def stop(self) -> float:
        """SIGTERM; seconds until the process exited."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(600)
        return time.monotonic() - t0


def sessiond(work: Path) -> Server:
    data = work / "sessiond"
    data.mkdir()
    config = {
        "socket": {"path": str(data / "sessiond.sock")},
        "cache": {"max_sessions": 100_000},
        "persistence": {
            "backend": "sqlite",
            "path": str(data / "sessions.db"),
            "durability": "batch",
        },
        "metrics": {"enabled": False},
        "logging": {"level": "info"},
    }
    path = work / "sessiond.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "sessiond", "run", "--config", str(path)]
    return Server("sessiond", cmd, data / "sessiond.sock", data, work)


def redis(work: Path) -> Server:
    data = work / "redis"
    data.mkdir()
    sock = data / "redis.sock"
    cmd = [
        "redis-server", "--port", "0", "--unixsocket", str(sock), "--dir", str(data),
        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
    ]  # fmt: skip
    return Server("redis", cmd, sock, data, work)


def load(server: Server, sessions: int) -> tuple[float, float]:
    """The write load; (sets per second, worst PING round trip in seconds)."""
    cmd = [
        "redis-benchmark", "-s", str(server.sock), "-t", "set", "-n", str(sessions),
        "-r", "100000000", "-d", "200", "-c", "50", "-P", "16", "-q",
    ]  # fmt: skip
    with Probe(server.sock) as probe:
        t0 = time.monotonic()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        elapsed = time.monotonic() - t0
    return sessions / elapsed, probe.worst


def wait_idle(server: Server, settle: float = 3.0, limit: float = 3600.0) -> None:
    """Until the store's files stop changing (sessiond: compaction done)."""
    deadline = time.monotonic() + limit
    last = -1
    while time.monotonic() < deadline:
        now = disk_bytes(server.data)
        logs = list(server.data.glob("*-log.*"))
        if now == last and not logs:
            return
        last = now
        time.sleep(settle)


def measure(server: Server, sessions: int, check: Callable[[str], None]) -> dict[str, str]:
    row: dict[str, str] = {}
    server.start()
    rate, worst = load(server, sessions)
    row["write rate, sustained"] = f"{rate:,.0f}/s"
    row["longest PING stall during the load"] = f"{worst * 1000:,.0f} ms"
    command(server.sock, "SET", "scale:last", "written right before the stop")
    row["on disk after the load"] = f"{disk_bytes(server.data) / 1e6:,.0f} MB"
    row["SIGTERM -> exited, right after"] = f"{server.stop():.2f} s"
    row["on disk after a clean stop"] = f"{disk_bytes(server.data) / 1e6:,.0f} MB"
    row["start -> PING, right after"] = f"{server.start():.2f} s"
    row["start -> warm start loaded, right after"] = f"{server.loaded():.2f} s"
    check(server.name)
    wait_idle(server)
    server.stop()
    row["start -> PING, idle store"] = f"{server.start():.2f} s"
    check(server.name)
    row["on disk, idle"] = f"{disk_bytes(server.data) / 1e6:,.0f} MB"
    server.stop()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--only", choices=["sessiond", "redis"], help="run one server")
    args = parser.parse_args()
    for tool in ("redis-server", "redis-benchmark"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (Debian: apt-get install redis-server redis-tools)")
    work = Path(tempfile.mkdtemp(prefix="sessiond-scale-", dir=os.environ.get("TMPDIR")))
    servers = [s for s in (sessiond(work), redis(work)) if args.only in (None, s.name)]

    def check(name: str) -> None:
        server = next(s for s in servers if s.name == name)
        got = command(server.sock, "GET", "scale:last")
        if b"written right before the stop" not in got:
            sys.exit(f"{name}: the session written before the stop is gone: {got!r}")

    results = {}
    try:
        for server in servers:
            print(f"# {server.name}: {args.sessions:,} sessions ...", file=sys.stderr, flush=True)
            results[server.name] = measure(server, args.sessions, check)
    finally:
        for server in servers:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    names = list(results)
    print(f"\n{args.sessions:,} SETs of 200 bytes, -r 100000000 -c 50 -P 16\n")
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for metric in results[names[0]]:
        print(f"| {metric} | " + " | ".join(results[n][metric] for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
