#!/usr/bin/env python3
"""redis-benchmark against sessiond and redis-server, same run, Unix sockets.

    python bench/resp_bench.py                 # in-memory: -P 1, -P 16, -c 1
    python bench/resp_bench.py --persistence   # SET with fsync: sessiond always vs redis AOF
    python bench/resp_bench.py --persistence --store postgresql
                                               # the same, sessiond on the shared store: a
                                               # PostgreSQL of its own (tests/pg.py) over TCP
                                               # loopback, fsync and synchronous_commit on
    python bench/resp_bench.py --persistence --decide
                                               # INCR of random keys instead of SET: on the
                                               # shared store each is decided by the database
    python bench/resp_bench.py --with-store    # in-memory Redis against sessiond with the shipped
                                               # store (SQLite, durability: always): its GETs, and
                                               # its SETs durable
    python bench/resp_bench.py --metrics-off   # sessiond with metrics disabled (for the cost)
    python bench/resp_bench.py --reps 5        # alternate the order; median and range of ratios
    python bench/resp_bench.py --floor         # and the minimal Python server (baseline_server.py;
                                               # with --persistence, with its --aof)
    python bench/resp_bench.py --floor-lru     # and that server keeping exact LRU order (--lru)
    python bench/resp_bench.py --json out.json # also write every result (bench/plot.py draws them)
    python bench/resp_bench.py --against OTHER/bin/python
                                               # and the sessiond another interpreter has (a
                                               # venv of the commit before, say) in the same
                                               # rounds: rows "... vs before" are this / that
                                               # (its figures in the columns headed redis)

Needs redis-server and redis-benchmark (Debian: redis-server, redis-tools).
Prints requests/s, p99 and max latency for both servers, and each server's CPU time per request
(user + system, from /proc, its child processes included: sessiond's compactor), and the
ratios sessiond / redis. When other work shares the machine, CPU per request is the steadier
of the two: in one run of 3 repetitions at load average 10-15 (2026-12-05, bench/RESULTS.md "Where
the -P 16 gap goes") the requests/s ratios of one row spread as wide as 0.28-1.61 while
the CPU ratios of most rows stayed within about 10% (the widest: 1.59-2.04).
Quote ratios from one run; absolute numbers vary with the machine's load. Two builds
of sessiond compare only the same way, interleaved in one run (``--against``): runs
made apart moved the unchanged minimal server's ratios by up to a fifth
(bench/RESULTS.md, "Measured").
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import yaml

BASELINE = Path(__file__).resolve().with_name("baseline_server.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        if path.exists():
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(path))
                    s.sendall(b"*1\r\n$4\r\nPING\r\n")  # RESP: the baseline has no inline
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


def sessiond(
    workdir: Path,
    *,
    metrics: bool,
    persistence: str | None,
    dsn: str | None = None,
    store: dict[str, Any] | None = None,
) -> tuple[list[str], Path]:
    """sessiond's command line and socket: in memory only, or with ``persistence``
    (its durability) on SQLite, or on PostgreSQL at ``dsn``; ``store``: more
    ``persistence`` settings."""
    # The store lives apart from the config, as in production (/etc vs /var/lib):
    # the config watcher would otherwise wake on every write of the store's WAL.
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    sock = data / "sessiond.sock"
    config = {
        "socket": {"path": str(sock)},
        "persistence": (
            {"backend": "none"}
            if not persistence
            else {"backend": "postgresql", "dsn": dsn, "durability": persistence}
            if dsn
            else {"backend": "sqlite", "path": str(data / "bench.db"), "durability": persistence}
        ),
        "metrics": {"enabled": metrics, "listen": f"127.0.0.1:{free_port()}"},
        "logging": {"level": "warning"},
        "limits": {"max_clients": 10000},
        "cache": {"max_sessions": 200_000},
    }
    if store:
        config["persistence"].update(store)
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
    p50: float = 0.0  # ms
    p95: float = 0.0  # ms
    cpu: float = 0.0  # the server's CPU time (user + system, all threads) per request, us


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` has used, all its threads, and
    its descendants': sessiond's compactor is a child process (its CPU time was
    left out until 2026-12-05), Redis forks to rewrite its AOF (counted once
    reaped, in the parent's children's times)."""
    children: dict[int, list[int]] = {}
    own: dict[int, int] = {}  # each process's user + system ticks
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry))
        own[int(entry)] = int(fields[11]) + int(fields[12])
        if int(entry) == pid:
            ticks += int(fields[13]) + int(fields[14])  # reaped children
    todo = [pid]
    while todo:
        current = todo.pop()
        ticks += own.get(current, 0)
        todo.extend(children.get(current, []))
    return ticks / os.sysconf("SC_CLK_TCK")


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
            float(row["rps"]),
            float(row["p99_latency_ms"]),
            float(row["max_latency_ms"]),
            float(row["p50_latency_ms"]),
            float(row["p95_latency_ms"]),
        )
    return results


Row = tuple[str, str, Result, Result]  # scenario, test or baseline, sessiond, redis


def wait_idle(pid: int, quiet: float = 2.0, timeout: float = 300.0) -> None:
    """Wait until process ``pid`` has used (almost) no CPU for ``quiet`` seconds, so
    that work left over from one benchmark (a fold, an fsync) does not run during
    the next one, on the other server."""
    tick = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + timeout
    since, used = time.monotonic(), cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now, total = time.monotonic(), cpu_seconds(pid)
        if total - used > 0.05 * (now - since) + 2 / tick:
            since, used = now, total
        elif now - since >= quiet:
            return
    raise RuntimeError(f"process {pid} still busy after {timeout:.0f} s")


def interleaved(
    servers: dict[str, tuple[list[str], Path]],
    work: Path,
    runs: list[tuple[str, int, int, int]],
    tests: str,
    order: list[str],
) -> dict[str, dict[str, dict[str, Result]]]:
    """{server: {scenario: {test: Result}}}: all servers up at once, and each
    scenario (label, clients, pipeline, requests) run on each server in ``order``
    back to back, so the two sides of a ratio are measured minutes apart at most.
    Each test is a redis-benchmark run of its own, so that the server's CPU time
    around it is that test's (see the module's docstring for how much steadier
    that is on a shared machine; it still moves with contention for the caches)."""
    results: dict[str, dict[str, dict[str, Result]]] = {name: {} for name in servers}
    with ExitStack() as stack:
        procs = {}
        for name, (cmd, sock) in servers.items():
            (work / name).mkdir(exist_ok=True)
            procs[name] = stack.enter_context(running(cmd, sock, work / name))
        for label, c, p, n in runs:
            for name in order:
                pid = procs[name].pid
                results[name][label] = {}
                for test in tests.split(","):
                    before = cpu_seconds(pid)
                    result = benchmark(servers[name][1], test, c, p, n)
                    used = cpu_seconds(pid) - before
                    for key, r in result.items():
                        results[name][label][key] = r._replace(cpu=used / n * 1e6)
                    wait_idle(pid)
    return results


def before(
    work: Path, against: str, metrics: bool, persistence: str | None, dsn: str | None = None
) -> tuple[list[str], Path]:
    """The sessiond that interpreter ``against`` runs (another build), set up as
    :func:`sessiond` sets up this one, in a directory of its own."""
    (work / "before").mkdir()
    cmd, sock = sessiond(work / "before", metrics=metrics, persistence=persistence, dsn=dsn)
    return [against, *cmd[1:]], sock


def with_before(order: list[str], sessiond_first: bool) -> list[str]:
    """``order`` with the other build beside this one: after it in the rounds
    where it goes first, before it in the others."""
    at = order.index("sessiond") + sessiond_first
    return [*order[:at], "before", *order[at:]]


def run_persistence(
    work: Path,
    n: int,
    metrics: bool,
    sessiond_first: bool,
    dsn: str | None = None,
    against: str | None = None,
    against_dsn: str | None = None,
    floor: bool = False,
    floor_dsn: str | None = None,
    test: str = "SET",
) -> list[Row]:
    """``test`` (SET, or INCR of random keys) with sessiond ``durability: always`` (on
    SQLite, or the PostgreSQL store at ``dsn``) against redis AOF ``always`` and
    ``everysec``; with ``against``, also against the sessiond that interpreter runs (on
    the PostgreSQL store: at ``against_dsn``); with ``floor``, also
    bench/baseline_server.py ``--aof`` (rows "floor vs redis always": it in sessiond's
    column), or ``--pg floor_dsn`` if given (sessiond on the PostgreSQL store)."""
    runs = [(f"{test} c=50", 50, 1, n), (f"{test} c=1", 1, 1, n // 10)]
    baselines = ["always", "everysec"]
    servers = {"sessiond": sessiond(work, metrics=metrics, persistence="always", dsn=dsn)}
    for fsync in baselines:
        (work / fsync).mkdir()
        servers[fsync] = redis(work / fsync, fsync)
    order = ["sessiond", *baselines] if sessiond_first else [*baselines, "sessiond"]
    if against:
        servers["before"] = before(work, against, metrics, "always", against_dsn)
        order = with_before(order, sessiond_first)
    if floor:
        (work / "floor").mkdir()
        sock = work / "floor" / "baseline.sock"
        durable = ["--pg", floor_dsn] if floor_dsn else ["--aof", str(work / "floor" / "aof")]
        servers["floor"] = ([sys.executable, str(BASELINE), "--socket", str(sock), *durable], sock)
        order.append("floor")
    results = interleaved(servers, work, runs, test.lower(), order)
    names = [*baselines, *(["before"] if against else [])]
    rows = [
        (label, f"redis {name}" if name in baselines else "vs before",
         results["sessiond"][label][test], results[name][label][test])
        for name in names
        for label, _, _, _ in runs
    ]  # fmt: skip
    if floor:
        rows += [
            (label, "floor vs redis always", results["floor"][label][test],
             results["always"][label][test])
            for label, _, _, _ in runs
        ]  # fmt: skip
    return rows


FLOORS = {"floor": [], "floor-lru": ["--lru"]}  # baseline_server.py's row suffix: its flags


def run_memory(
    work: Path,
    n: int,
    metrics: bool,
    sessiond_first: bool,
    floors: tuple[str, ...] = (),
    against: str | None = None,
    with_store: bool = False,
) -> list[Row]:
    """SET and GET at -c 50 -P 1, -c 50 -P 16 and -c 1, sessiond against
    redis-server; with ``floors`` also bench/baseline_server.py (rows whose test
    ends in "floor" or "floor-lru": that server, plain or with --lru, in
    sessiond's column); with ``against``, also the sessiond that interpreter
    runs (rows whose test ends in "vs before": it in redis-server's column);
    ``with_store``: each sessiond keeps a SQLite store under ``durability:
    always``, the shipped config (redis-server stays in memory). The GETs follow
    the SETs, so about a seventh of them name a key never written."""
    runs = [("-c 50 -P 1", 50, 1, n), ("-c 50 -P 16", 50, 16, n), ("-c 1 -P 1", 1, 1, n)]
    persistence = "always" if with_store else None
    servers = {
        "sessiond": sessiond(work, metrics=metrics, persistence=persistence),
        "redis": redis(work, None),
    }
    order = ["sessiond", "redis"] if sessiond_first else ["redis", "sessiond"]
    for floor in floors:
        (work / floor).mkdir()
        sock = work / floor / "baseline.sock"
        cmd = [sys.executable, str(BASELINE), "--socket", str(sock), *FLOORS[floor]]
        servers[floor] = (cmd, sock)
        order.append(floor)
    if against:
        servers["before"] = before(work, against, metrics, persistence)
        order = with_before(order, sessiond_first)
    results = interleaved(servers, work, runs, "set,get", order)
    names = ["sessiond", *floors]
    rows = [
        (label, test + ("" if name == "sessiond" else f" {name}"), results[name][label][test],
         results["redis"][label][test])
        for label, _, _, _ in runs
        for name in names
        for test in ("SET", "GET")
    ]  # fmt: skip
    if against:
        rows += [
            (label, f"{test} vs before", results["sessiond"][label][test],
             results["before"][label][test])
            for label, _, _, _ in runs
            for test in ("SET", "GET")
        ]  # fmt: skip
    return rows


def print_table(rows: list[Row]) -> None:
    header = f"{'scenario':<14} {'test':<15} {'sessiond rps':>13} {'redis rps':>11} "
    header += f"{'ratio':>6} {'sd p99 ms':>10} {'redis p99':>10} {'p99 ratio':>9}"
    header += f" {'sd max ms':>10} {'redis max':>10} {'sd cpu us':>10} {'redis cpu':>10}"
    print(header)
    for label, test, sd, rb in rows:
        p99_ratio = sd.p99 / rb.p99 if rb.p99 else float("inf")
        print(
            f"{label:<14} {test:<15} {sd.rps:>13,.0f} {rb.rps:>11,.0f} {sd.rps / rb.rps:>6.2f} "
            f"{sd.p99:>10.3f} {rb.p99:>10.3f} {p99_ratio:>9.2f} {sd.max:>10.3f} {rb.max:>10.3f}"
            f" {sd.cpu:>10.2f} {rb.cpu:>10.2f}"
        )


def print_summary(reps: list[list[Row]]) -> None:
    """Median and min-max over the repetitions of each row's ratios."""
    print(f"\nover {len(reps)} repetitions (order alternating): median [min-max]")
    print(
        f"{'scenario':<14} {'test':<15} {'ratio':>18} {'p99 ratio':>18} {'max lat ratio':>18}"
        f" {'cpu/request ratio':>18}"
    )
    for i, (label, test, _, _) in enumerate(reps[0]):
        pairs = [(rows[i][2], rows[i][3]) for rows in reps]
        cells = [
            spread([sd.rps / rb.rps for sd, rb in pairs]),
            spread([sd.p99 / rb.p99 if rb.p99 else float("inf") for sd, rb in pairs]),
            spread([sd.max / rb.max if rb.max else float("inf") for sd, rb in pairs]),
            spread([sd.cpu / rb.cpu if rb.cpu else float("inf") for sd, rb in pairs]),
        ]
        print(f"{label:<14} {test:<15} " + " ".join(f"{c:>18}" for c in cells))


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--metrics-off", action="store_true")
    parser.add_argument("--persistence", action="store_true")
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="sessiond's store with --persistence; postgresql starts a cluster of its own "
        "(tests/pg.py, Debian's postgresql) and gives each repetition a fresh database",
    )
    parser.add_argument(
        "--decide",
        action="store_true",
        help="with --persistence, INCR of random keys (redis-benchmark's counter:__rand_int__) "
        "instead of SET: on the shared store, a command the database decides",
    )
    parser.add_argument(
        "--with-store",
        action="store_true",
        help="without --persistence: sessiond (and --against's) with a SQLite store under "
        "durability: always, the shipped config, against redis-server in memory",
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run bench/baseline_server.py (asyncio + uvloop + hiredis and a dict): in "
        "memory, rows 'SET floor'/'GET floor' are what a minimal Python server reaches; with "
        "--persistence, with --aof (its SETs durable before their replies, as Redis' "
        "appendfsync always; with --store postgresql, --pg on a database of its own): rows "
        "'floor vs redis always'",
    )
    parser.add_argument(
        "--floor-lru",
        action="store_true",
        help="in memory, also run bench/baseline_server.py --lru (its dict an OrderedDict in "
        "exact LRU order, as sessiond's): rows 'SET floor-lru'/'GET floor-lru'",
    )
    parser.add_argument(
        "--against",
        metavar="PYTHON",
        help="also run the sessiond this interpreter has installed (another build: a venv "
        "of the commit before, say) in the same rounds; rows '... vs before' give this "
        "build's figures over that one's",
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=1,
        help="repetitions, sessiond first then redis first in turn; with more than one, "
        "each one's table and the median and range of the ratios",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="also write every repetition's results there (bench/plot.py reads them)",
    )
    args = parser.parse_args()
    for tool in ("redis-server", "redis-benchmark"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install redis-server redis-tools", file=sys.stderr)
            return 2
    if args.decide and (not args.persistence or args.floor):
        parser.error("--decide goes with --persistence, without --floor (the floor has no INCR)")
    if args.with_store and args.persistence:
        parser.error("--with-store is the in-memory run's; --persistence has a store already")
    n = 20_000 if args.quick else args.requests
    reps: list[list[Row]] = []
    with ExitStack() as stack:
        pg = stack.enter_context(postgresql()) if args.store == "postgresql" else None
        for rep in range(args.reps):
            first = rep % 2 == 0
            # A fresh directory (and database) each time: no repetition warm-starts
            # from another's store.
            with tempfile.TemporaryDirectory(prefix="sessiond-bench-") as tmp:
                if not args.persistence:
                    floors = tuple(
                        f for f, on in (("floor", args.floor), ("floor-lru", args.floor_lru)) if on
                    )
                    rows = run_memory(
                        Path(tmp), n, not args.metrics_off, first, floors, args.against,
                        args.with_store,
                    )  # fmt: skip
                else:
                    dsn = other = floor_dsn = None
                    if pg is not None:
                        dsn = pg.dsn(pg.create_database())
                        other = pg.dsn(pg.create_database()) if args.against else None
                        floor_dsn = pg.dsn(pg.create_database()) if args.floor else None
                    rows = run_persistence(
                        Path(tmp), n, not args.metrics_off, first, dsn, args.against, other,
                        args.floor, floor_dsn, "INCR" if args.decide else "SET",
                    )  # fmt: skip
                reps.append(rows)
            print_progress(args.reps, rep)
    store = f", store {args.store}" if args.persistence else ""
    if args.with_store:
        store = ", store sqlite (durability: always; redis-server in memory)"
    metrics_state = "off" if args.metrics_off else "on"
    print(f"sessiond (metrics {metrics_state}{store}) vs redis-server {redis_version()}, "
          f"{os.cpu_count()} CPUs, {n} requests, -d 200 -r 100000")  # fmt: skip
    for rep, rows in enumerate(reps):
        if args.reps > 1:
            order = "sessiond first" if rep % 2 == 0 else "redis first"
            print(f"\nrepetition {rep + 1} ({order})")
        print_table(rows)
    if args.reps > 1:
        print_summary(reps)
    if args.json:
        write_json(args.json, reps, persistence=args.persistence, metrics=not args.metrics_off, n=n)
    return 0


def print_progress(total: int, rep: int) -> None:
    if total > 1:
        order = "sessiond first" if rep % 2 == 0 else "redis first"
        print(f"# repetition {rep + 1} of {total} ({order}) done", file=sys.stderr)


@contextmanager
def postgresql() -> Iterator[Any]:
    """A PostgreSQL cluster of the bench's own (tests/pg.py), destroyed after."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from pg import PgCluster

    with PgCluster.create(name="bench") as cluster:
        yield cluster


def write_json(
    path: Path, reps: list[list[Row]], *, persistence: bool, metrics: bool, n: int
) -> None:
    """Every repetition's rows: scenario, test (or the Redis baseline) and each
    server's requests/s and latencies in ms."""
    data = {
        "mode": "durable" if persistence else "memory",
        "metrics": metrics,
        "requests": n,
        "redis_version": redis_version(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "build": sessiond_build(),
        "reps": [
            [
                {"scenario": label, "test": test, "sessiond": sd._asdict(), "redis": rb._asdict()}
                for label, test, sd, rb in rows
            ]
            for rows in reps
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def sessiond_build() -> str:
    """Which build of sessiond this interpreter runs: "compiled" (mypyc) or "pure"."""
    import sessiond.server

    return "compiled" if str(sessiond.server.__file__).endswith(".so") else "pure"


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return next((w.split("=")[1] for w in out.split() if w.startswith("v=")), "?")


if __name__ == "__main__":
    sys.exit(main())
