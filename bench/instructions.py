#!/usr/bin/env python3
"""Instructions per request (valgrind callgrind) for sessiond and the baseline server.

    .venv/bin/python bench/instructions.py              # GET/SET at -P 1 and -P 16
    .venv/bin/python bench/instructions.py --durable    # SET with durability: always, -c 50,
                                                        # and the baseline with an AOF
    .venv/bin/python bench/instructions.py --durable --clients 1,50
    .venv/bin/python bench/instructions.py --durable --decide --servers sessiond-shared
    .venv/bin/python bench/instructions.py --top 20     # and the costliest functions per run
    .venv/bin/python bench/instructions.py --shared     # GET: the shared store's near cache
                                                        # beside SQLite and memory only
    .venv/bin/python bench/instructions.py --cache-sim  # and simulated data-cache misses

Needs valgrind and redis-benchmark (Debian: valgrind, redis-tools). Takes about 8
minutes (3 per sessiond configuration, 1 for the baseline server); --durable 3.

Throughput on this shared 2-core machine moves by tens of percent from run to run;
the user-space instructions a server executes for a fixed load barely move, so
savings too small to see in requests/s show here. Each server runs under
``valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes``: nothing
is counted while it starts, fills and warms up. Collection is switched on with
``callgrind_control -i on`` for exactly one redis-benchmark run and off after it,
and the counters are dumped. All threads count (sessiond's store writer commits
and folds on its own thread); the event loop's thread is also shown alone.

Per request, honestly: a measured run also pays for what does not scale with
requests (50 connections opened and closed, redis-benchmark's CONFIG GET at
start), and for what scales with wall time rather than requests (sessiond's
timers and the config watcher's polling thread fire ~50x more often per request
under valgrind than natively). So each scenario is measured twice, with ``-n N``
and ``-n N/4``, and the idle rate (instructions per second with no load, measured
once per server) is subtracted from each run for its duration:

    per request = ((Ir_N - idle * t_N) - (Ir_N/4 - idle * t_N/4)) / (N - N/4)

The difference cancels the fixed costs exactly, whatever they are, where
subtracting a separately measured connect/disconnect cost would need a model of
them. The idle share is printed so it can be judged (well under 1% for sessiond
in memory, nothing for the baseline).

Load: every one of the ``-r 100000`` keys is set before measuring, so GETs all
hit, SETs all overwrite and no table grows during a measured run (filling them
at random with redis-benchmark left a dict resize in one run or another
depending on -n: 6% on the baseline's SET). Each scenario is warmed up with its
own load before its measured runs (CPython specializes hot code after a few
executions).
``PYTHONHASHSEED=0`` keeps dict layouts the same from run to run.

``--shared``: GET at -P 1 and -P 16 (every GET a memory hit) on sessiond in
memory only, on SQLite and on the PostgreSQL shared store (a cluster of its own,
tests/pg.py; both stores with ``durability: always``, PostgreSQL's heartbeat and
timeout at 300 s, which valgrind's pace needs): what a near-cache hit costs
beside a hit in the other modes. PostgreSQL's own processes are not counted.
Collection stays on until the process is idle, as with ``--durable``, so that
each run pays for the renewals of the sessions it read; a renewal is written
back once it moves the database's deadline by a tenth of the TTL (the default
hour here), so in runs this short each GET pays for looking at its renewal,
not for writing it (docs/shared-store.md, "Sliding renewals from reads").

``--cache-sim``: callgrind also simulates the caches (``--cache-sim=yes``, the
sizes valgrind reads from this CPU: 64 KiB L1 data, the 32 MiB L3 as its last
level) and prints data-cache misses per request, first level (reads and writes)
and last level, computed as the instructions are. Instruction counts miss what
costs time in memory traffic: a server that executes as many instructions as
another can still wait twice as long on memory (bench/RESULTS.md, "Where the -P 16 gap
goes"). A simulated miss is as deterministic as an instruction, so a change in
memory traffic too small to see in requests/s shows here. It runs about twice
as slowly; the instruction counts are the same.

``--durable``: SET on sessiond with ``durability: always`` (``--servers
sessiond-shared``: on the PostgreSQL store, its own processes not counted) and
on the baseline server with ``--aof`` (each SET appended to a file, one ``write`` and one
``fdatasync`` per event-loop iteration before the replies: Redis' ``appendfsync
always``, the floor for a durable SET in Python). After the load sessiond's
writer still commits and folds what it was given, so collection stays on until
the process has used no CPU for 3 s (longer than the 1 s fold period). The fold
runs every second of wall time: under valgrind a fold holds ~50x fewer sessions
than at native speed, and a small fold costs more per session, so the fold's
share is larger here than in production. Threads that read the SQLite table
(the session count, every 15 s of wall time once compaction changed it) are
left out of the per-request figures and shown apart (``table reads``): under
valgrind one count is tens of millions of instructions, landing in one run or
the other. Where the group commit runs moves the all-threads figure too (the
event loop's thread, or the writer's once commits look slow, which under
valgrind depends on the disk): the ``commit`` column gives the group commit's
own instructions per request whichever thread ran it (compiled builds, which
name it). ``--durable --decide`` runs INCR
instead of SET: on the PostgreSQL store every INCR of a key no other command
is waiting for is a decision, a database transaction of its own (on SQLite
and the baseline server it is a plain write).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from resp_bench import postgresql, sessiond, wait_idle

HERE = Path(__file__).resolve().parent
PING = b"*1\r\n$4\r\nPING\r\n"
KEYS = 100_000  # redis-benchmark -r
FILL_BATCH = 1000  # SETs per write while filling
SETTLE_SECONDS = 3.0  # no CPU used for this long: the server has finished its work


@dataclass(frozen=True)
class Scenario:
    test: str  # redis-benchmark -t
    clients: int
    pipeline: int

    @property
    def label(self) -> str:
        return f"{self.test.upper()} -c {self.clients} -P {self.pipeline}"


@dataclass(frozen=True)
class Sample:
    """One collection window: instructions in all threads and in the main thread."""

    requests: int
    seconds: float
    ir: int
    loop_ir: int
    d1_misses: int  # data reads and writes missing the first-level cache (--cache-sim)
    ll_misses: int  # data reads and writes missing the last level
    dumps: list[Path]
    table_read_ir: int  # left out of ir: threads that read the SQLite table (below)


@dataclass(frozen=True)
class Idle:
    ir_per_second: float
    loop_ir_per_second: float
    d1_per_second: float
    ll_per_second: float


@dataclass(frozen=True)
class Result:
    server: str
    scenario: Scenario
    per_request: float
    loop_per_request: float
    d1_per_request: float
    ll_per_request: float
    idle_share: float  # of the instructions the two runs differ by
    small: Sample
    large: Sample
    commit_per_request: float | None = None  # --durable on SQLite, compiled: commit_cost()

    @property
    def requests(self) -> int:
        return self.large.requests - self.small.requests


class Callgrind:
    """A server process running under callgrind, driven with callgrind_control."""

    def __init__(
        self, name: str, cmd: list[str], sock: Path, workdir: Path, cache_sim: bool = False
    ) -> None:
        self.name = name
        self.sock = sock
        self.out = workdir / f"{name}.callgrind"
        self.log = (workdir / f"{name}.log").open("wb")
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        self.proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
             f"--cache-sim={'yes' if cache_sim else 'no'}",
             f"--callgrind-out-file={self.out}", *cmd],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
        )  # fmt: skip
        self.dumps = 0

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(30)
                    s.connect(str(self.sock))
                    s.sendall(PING)
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not come up on {self.sock}")

    def control(self, *args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, str(self.proc.pid)],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip

    def settle(self) -> None:
        """Wait until the server has finished the work a load left it (a fold)."""
        wait_idle(self.proc.pid, SETTLE_SECONDS, timeout=600.0)

    def collect(self, load: Callable[[], None], requests: int = 0) -> Sample:
        """Count what the process executes while ``load`` runs."""
        self.control("-z")
        self.control("-i", "on")
        start = time.monotonic()
        load()
        self.control("-i", "off")
        seconds = time.monotonic() - start
        self.dumps += 1
        self.control("-d", f"{self.name}-{self.dumps}")
        # One file per thread: <out>.<dump>-<thread>, thread 01 is the main thread.
        # A thread other than it that stepped SQLite read the table: none of the
        # loads here reads through, so that is the session count, taken every
        # 15 s of wall time once compaction changed the table. Under valgrind
        # it is tens of millions of instructions that land in one run or the
        # other (and, holding the GIL, make the loop's commits look slow enough
        # to go to the writer thread): shown apart, not per request.
        dumps, reads = [], []
        for dump in sorted(self.out.parent.glob(f"{self.out.name}.{self.dumps}-*")):
            main = dump.name.endswith("-01")
            (dumps if main or b"sqlite3_step" not in dump.read_bytes() else reads).append(dump)
        totals = {dump: events(dump) for dump in dumps}
        loop = next((t["Ir"] for dump, t in totals.items() if dump.name.endswith("-01")), 0)

        def total(*names: str) -> int:
            return sum(t.get(name, 0) for t in totals.values() for name in names)

        return Sample(
            requests, seconds, total("Ir"), loop,
            total("D1mr", "D1mw"), total("DLmr", "DLmw"), dumps,
            sum(events(dump)["Ir"] for dump in reads),
        )  # fmt: skip

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def events(dump: Path) -> dict[str, int]:
    """A dump's totals by event name (``Ir``; with the cache simulated also
    ``D1mr``, ``DLmw`` and the rest)."""
    names: list[str] = []
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("events:"):
            names = line.split()[1:]
        elif line.startswith("totals:"):
            return dict(zip(names, map(int, line.split()[1:]), strict=False))
    raise RuntimeError(f"no totals in {dump}")


def benchmark(sock: Path, scenario: Scenario, requests: int) -> None:
    subprocess.run(
        ["redis-benchmark", "-s", str(sock), "-t", scenario.test, "-d", "200",
         "-r", str(KEYS), "-n", str(requests), "-c", str(scenario.clients),
         "-P", str(scenario.pipeline), "-q"],
        check=True, capture_output=True, timeout=1800,
    )  # fmt: skip


def fill(sock: Path) -> None:
    """SET every key redis-benchmark -r will use (``key:%012d``), 200 bytes each, so
    that measured GETs all hit and SETs all overwrite: no table grows (and
    rehashes) during a measured run, whichever -n it has."""
    value = b"v" * 200
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(600)
        s.connect(str(sock))
        for start in range(0, KEYS, FILL_BATCH):
            keys = range(start, min(start + FILL_BATCH, KEYS))
            s.sendall(
                b"".join(
                    b"*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$200\r\n%b\r\n" % (k, value)
                    for k in keys
                )
            )
            expected = b"+OK\r\n" * len(keys)
            got = b""
            while len(got) < len(expected):
                chunk = s.recv(len(expected) - len(got))
                if not chunk:
                    raise RuntimeError("connection closed while filling")
                got += chunk
            if got != expected:
                raise RuntimeError(f"fill: unexpected replies {got[:200]!r}")


def idle_rate(server: Callgrind, seconds: float) -> Idle:
    sample = server.collect(lambda: time.sleep(seconds))
    return Idle(
        sample.ir / sample.seconds,
        sample.loop_ir / sample.seconds,
        sample.d1_misses / sample.seconds,
        sample.ll_misses / sample.seconds,
    )


def measure(
    server: Callgrind, scenario: Scenario, requests: int, idle: Idle, settle: bool
) -> Result:
    def run(n: int) -> Sample:
        def load() -> None:
            benchmark(server.sock, scenario, n)
            if settle:
                server.settle()

        return server.collect(load, n)

    benchmark(server.sock, scenario, requests // 4)  # warm-up, not counted
    if settle:
        server.settle()
    small, large = run(requests // 4), run(requests)
    seconds = large.seconds - small.seconds
    idle_ir = idle.ir_per_second * seconds
    n = large.requests - small.requests
    per_request = (large.ir - small.ir - idle_ir) / n
    loop = (large.loop_ir - small.loop_ir - idle.loop_ir_per_second * seconds) / n
    d1 = (large.d1_misses - small.d1_misses - idle.d1_per_second * seconds) / n
    ll = (large.ll_misses - small.ll_misses - idle.ll_per_second * seconds) / n
    share = idle_ir / (large.ir - small.ir)
    return Result(server.name, scenario, per_request, loop, d1, ll, share, small, large)


# ----------------------------------------------------------------- profiles

_ANNOTATE_LINE = re.compile(r"^\s*([\d,]+)\s+\([\s\d.]+%\)\s+(\S*?):(\S+)(?:\s+\[(.*)\])?\s*$")


def functions(dumps: list[Path], inclusive: bool) -> dict[str, int]:
    """{function: Ir} over all threads' dumps, from callgrind_annotate.

    Debug info splits a function into one entry per source file its inlined code
    comes from (``call.c:_PyFunction_Vectorcall`` and ``pycore_pystate.h:...``):
    their self costs add up; of their inclusive costs the largest is kept, which
    is the function's own to within its inlined helpers' calls.
    """
    costs: dict[str, int] = {}
    for dump in dumps:
        out = subprocess.run(
            ["callgrind_annotate", "--show=Ir", f"--inclusive={'yes' if inclusive else 'no'}",
             "--threshold=100", str(dump)],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        thread: dict[str, int] = {}
        for line in out.split("file:function", 1)[-1].splitlines():
            m = _ANNOTATE_LINE.match(line)
            if m is None or m.group(3).startswith("0x"):  # no symbol: nothing to act on
                continue
            ir, name, obj = int(m.group(1).replace(",", "")), m.group(3), m.group(4)
            if obj and obj != "???":
                lib = Path(obj).name.split(".")[0]
                name = f"{name} ({'python' if lib.startswith('libpython') else lib})"
            else:  # a later part of a function named (with its library) above
                name = next((k for k in thread if k.split(" (")[0] == name), name)
            thread[name] = max(thread.get(name, 0), ir) if inclusive else thread.get(name, 0) + ir
        for name, ir in thread.items():
            costs[name] = costs.get(name, 0) + ir
    return costs


# The compiled build's name for the SQLite store's group commit.
_COMMIT = "CPyDef_sqlite___SQLiteStore____commit_pending"


def commit_cost(result: Result) -> float | None:
    """The group commit's own instructions per request, whichever thread ran
    it: the event loop's, or the writer's after commits looked slow (under
    valgrind, as the disk allows), which moves the all-threads figure by about
    30k a commit. ``None`` where the build does not name it (pure Python)."""
    costs = [functions(s.dumps, True) for s in (result.small, result.large)]

    def commit(c: dict[str, int]) -> int:
        return max((ir for name, ir in c.items() if name.startswith(_COMMIT)), default=0)

    if not commit(costs[1]):
        return None
    return (commit(costs[1]) - commit(costs[0])) / result.requests


def print_top(result: Result, n: int) -> None:
    """The costliest functions of a scenario, per request (the two runs' difference)."""
    incl = [functions(s.dumps, True) for s in (result.small, result.large)]
    excl = [functions(s.dumps, False) for s in (result.small, result.large)]

    def per_request(costs: list[dict[str, int]], name: str) -> float:
        return (costs[1].get(name, 0) - costs[0].get(name, 0)) / result.requests

    # The event loop's dispatch chain down to the interpreter holds nearly all of
    # it and says nothing about where it goes: leave out what is above 75%.
    chain = 0.75 * result.per_request
    names = [f for f in incl[1] if per_request(incl, f) < chain]
    names.sort(key=lambda f: per_request(incl, f), reverse=True)
    print(
        f"\n{result.server}, {result.scenario.label}: {result.per_request:,.0f} Ir/request; "
        f"top {n} functions under 75% of it, per request"
    )
    print(f"{'inclusive':>10} {'self':>8}  function")
    for name in names[:n]:
        print(f"{per_request(incl, name):>10,.0f} {per_request(excl, name):>8,.0f}  {name}")
    top_self = sorted(excl[1], key=lambda f: per_request(excl, f), reverse=True)[:n]
    listed = ", ".join(f"{f.split(' (')[0]} {per_request(excl, f):,.0f}" for f in top_self)
    print(f"top {n} by self cost: {listed}", flush=True)


# ----------------------------------------------------------------- servers

SERVERS = ("sessiond", "sessiond-nometrics", "baseline")
SHARED_SERVERS = ("sessiond", "sessiond-sqlite", "sessiond-shared")
# sessiond-shared (the PostgreSQL store) only when named in --servers.
DURABLE_SERVERS = ("sessiond-durable", "baseline-aof", "sessiond-shared")
SCENARIOS = [Scenario(t, 50, p) for p in (1, 16) for t in ("get", "set")]
SHARED_SCENARIOS = [Scenario("get", 50, p) for p in (1, 16)]


def start(name: str, workdir: Path, dsn: str | None = None, cache_sim: bool = False) -> Callgrind:
    sub = workdir / name
    sub.mkdir()
    if name in ("baseline", "baseline-aof"):
        sock = sub / "baseline.sock"
        cmd = [sys.executable, str(HERE / "baseline_server.py"), "--socket", str(sock)]
        if name == "baseline-aof":
            cmd += ["--aof", str(sub / "appendonly.aof")]
    else:
        durable = name in ("sessiond-durable", "sessiond-sqlite", "sessiond-shared")
        cmd, sock = sessiond(
            sub,
            metrics=name != "sessiond-nometrics",
            persistence="always" if durable else None,
            dsn=dsn if name == "sessiond-shared" else None,
            # Under valgrind the daemon runs tens of times slower (a rough
            # figure: the wall time of a measured run against a native one):
            # heartbeats and operations get the time they take there, or the
            # host would think its LISTEN lost.
            store={"heartbeat_interval": 300, "timeout": 300}
            if name == "sessiond-shared"
            else None,
        )
    server = Callgrind(name, cmd, sock, sub, cache_sim)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests",
        type=int,
        help="-n of the long run (default 40000, --durable 20000); the short run is a quarter",
    )
    parser.add_argument(
        "--servers",
        help=f"comma-separated, of {', '.join(SERVERS)} (--shared: {', '.join(SHARED_SERVERS)}; "
        f"--durable: {', '.join(DURABLE_SERVERS)})",
    )
    parser.add_argument(
        "--durable",
        action="store_true",
        help="SET -c 50 on sessiond with durability: always and the baseline server with --aof",
    )
    parser.add_argument(
        "--clients",
        type=lambda text: [int(c) for c in text.split(",")],
        default=[50],
        metavar="N[,N]",
        help="--durable: redis-benchmark -c, one scenario each (default 50; 1 makes every "
        "SET a commit of its own, so a commit's fixed costs show)",
    )
    parser.add_argument(
        "--decide",
        action="store_true",
        help="--durable: INCR of random keys instead of SET (on sessiond-shared, a "
        'decision each: docs/shared-store.md, "What a decision costs")',
    )
    parser.add_argument(
        "--shared",
        action="store_true",
        help="GET on the PostgreSQL shared store's near cache, SQLite and memory only",
    )
    parser.add_argument(
        "--top", type=int, default=0, metavar="N", help="also print the N costliest functions"
    )
    parser.add_argument(
        "--cache-sim", action="store_true", help="also count simulated data-cache misses"
    )
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the callgrind dumps in DIR")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate", "redis-benchmark"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install valgrind redis-tools", file=sys.stderr)
            return 2
    known: tuple[str, ...]
    if args.durable:
        test = "incr" if args.decide else "set"
        known, scenarios = DURABLE_SERVERS, [Scenario(test, c, 1) for c in args.clients]
        default = (
            ["sessiond-shared"]
            if args.decide
            else [name for name in known if name != "sessiond-shared"]
        )
        requests = args.requests or 20_000
    else:
        known = SHARED_SERVERS if args.shared else SERVERS
        scenarios = SHARED_SCENARIOS if args.shared else SCENARIOS
        requests = args.requests or 40_000
        default = list(known)
    servers = args.servers.split(",") if args.servers else default
    unknown = set(servers) - set(known)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    if args.decide and (not args.durable or "baseline-aof" in servers):
        parser.error("--decide goes with --durable, on sessiond only (the baseline has no INCR)")
    results: list[Result] = []
    idle: dict[str, Idle] = {}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="sessiond-instr-"))
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        pg = stack.enter_context(postgresql()) if "sessiond-shared" in servers else None
        for name in servers:
            dsn = pg.dsn(pg.create_database()) if pg is not None else None
            server = start(name, work, dsn, args.cache_sim)
            try:
                fill(server.sock)
                if args.durable or args.shared:
                    server.settle()
                idle[name] = idle_rate(server, args.idle_seconds)
                for scenario in scenarios:
                    settle = args.durable or args.shared
                    result = measure(server, scenario, requests, idle[name], settle)
                    if args.durable and name == "sessiond-durable":
                        result = replace(result, commit_per_request=commit_cost(result))
                    results.append(result)
                    progress = f"{result.per_request:,.0f} Ir/request"
                    progress += f" ({result.large.seconds:.0f} s for -n {requests})"
                    print(f"# {name} {scenario.label}: {progress}", file=sys.stderr, flush=True)
                    if args.top:
                        print_top(result, args.top)
            finally:
                server.stop()
    print(
        f"\ninstructions per request: callgrind Ir (user space) of redis-benchmark "
        f"-n {requests} minus -n {requests // 4}, -d 200 -r {KEYS}, less the idle rate"
    )
    misses = f" {'D1 misses':>10} {'LL misses':>10}" if args.cache_sim else ""
    print(
        f"{'server':<20} {'scenario':<18} {'Ir/request':>11} {'loop thread':>11} {'idle':>6}"
        f" {'table reads':>13} {'commit':>8}" + misses
    )
    for r in results:
        misses = f" {r.d1_per_request:>10,.1f} {r.ll_per_request:>10,.2f}" if args.cache_sim else ""
        reads = f"{r.small.table_read_ir / 1e6:,.0f}M/{r.large.table_read_ir / 1e6:,.0f}M"
        commit = "-" if r.commit_per_request is None else f"{r.commit_per_request:,.0f}"
        print(
            f"{r.server:<20} {r.scenario.label:<18} {r.per_request:>11,.0f} "
            f"{r.loop_per_request:>11,.0f} {r.idle_share:>6.1%} {reads:>13} {commit:>8}" + misses
        )
    print(
        "table reads: instructions of threads that read the SQLite table (the periodic "
        "session count) in the two runs, left out of Ir/request; commit: the SQLite "
        "store's group commit per request, on whichever thread ran it (compiled builds)"
    )
    print("idle Ir/s: " + ", ".join(f"{k} {v.ir_per_second:,.0f}" for k, v in idle.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
