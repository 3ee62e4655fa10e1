#!/usr/bin/env python3
"""What PostgreSQL spends on the shared store's group commit, and on its NOTIFY.

    .venv-mypyc/bin/python bench/pg_commit_cost.py [--rows 1] [--commits 3000]

Starts a PostgreSQL of its own (tests/pg.py: fsync and synchronous_commit on),
makes the store's table and commit function (store/pgsql.py) and a minimal
two-column table beside them, fills both with 100,000 sessions (so that each
SET updates one, as in a session store past its first minutes), then commits
batches of ``--rows`` random keys (200-byte values) from one connection, the
way each variant says, and prints the CPU time PostgreSQL's processes used per
commit (all of them, from /proc: the committing backend, the listening ones,
the WAL writer) and the wall time per commit:

- ``floor``: bench/baseline_server.py's upsert of two arrays into the minimal table;
- ``function``: the commit function as the daemon calls it (its parameters from
  ``pgsql.commit_params``, its prepared statement, binary through libpq),
  without notifications;
- ``function + NOTIFY``: with the payloads a commit of those keys sends.

The notifying variants run with 0, 1, 2 and 4 other connections LISTENing on the
store's channel (threads of this process reading them, as each host's LISTEN
connection does), and once with the committing connection itself listening and no
other. Variants alternate within each of three rounds; medians and ranges. The CPU
is counted in clock ticks (10 ms here): use enough commits for the differences to
be many ticks. About 3 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.pq import ExecStatus, Format

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pg import PgCluster
from resp_bench import cpu_seconds
from sessiond.store import pgsql
from sessiond.store.pgarrays import ADAPTERS, Bytea, dump

KEYS = 100_000
VALUE = b"v" * 200
FLOOR_TABLE = "CREATE TABLE floor_sessions (key bytea PRIMARY KEY, value bytea NOT NULL)"
STATEMENT = pgsql.COMMIT_STATEMENT.encode()
FLOOR_UPSERT = (
    "INSERT INTO floor_sessions (key, value) SELECT * FROM unnest(%b::bytea[], %b::bytea[]) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)

Commit = Callable[[list[bytes]], None]
SLOT = 1  # the committer's slot for its tokens (pgsql.TOKENS)


def variants(conn: psycopg.Connection[Any]) -> dict[str, Commit]:
    def floor(keys: list[bytes]) -> None:
        conn.execute(FLOOR_UPSERT, (Bytea(keys), Bytea([VALUE] * len(keys))), prepare=True)

    tokens = iter(range(1, 2**62))
    previous = [0]

    def function(keys: list[bytes], notify: bool) -> None:
        """The daemon's own call: its parameters (a SET of each key with the
        shipped config's default TTL of an hour, so each moves the row's
        deadline), its prepared statement, sent through libpq in binary."""
        now = time.time()
        row = (VALUE, None, now, now, now, 3600.0, now + 3600, 0)
        token = next(tokens)
        params, _ = pgsql.commit_params(
            "bench", now, dict.fromkeys(keys, row), False, {}, (SLOT, token, previous[0]), now + 60
        )
        previous[0] = token
        if not notify:  # the notifications' array: before the slot, the tokens and the fence
            params[-5] = dump("text", [])
        result = conn.pgconn.exec_prepared(
            STATEMENT, params, param_formats=[Format.BINARY] * len(params)
        )
        if result.status != ExecStatus.TUPLES_OK:
            raise SystemExit(f"the commit failed: {result.error_message.decode()}")

    return {
        "floor": floor,
        "function": lambda keys: function(keys, False),
        "function + NOTIFY": lambda keys: function(keys, True),
    }


def listen(dsn: str) -> None:
    """A LISTEN connection that reads every notification until the server goes."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"LISTEN {pgsql.CHANNEL}")
        try:
            for _ in conn.notifies():
                pass
        except psycopg.OperationalError:
            return


def measure(pg: PgCluster, commit: Commit, batches: list[list[bytes]]) -> tuple[float, float]:
    """PostgreSQL's CPU (us) and the wall time (us) per commit of ``batches``."""
    assert pg.proc is not None
    used = cpu_seconds(pg.proc.pid)
    started = time.perf_counter()
    for keys in batches:
        commit(keys)
    elapsed = time.perf_counter() - started
    time.sleep(0.2)  # the listeners' last deliveries
    used = cpu_seconds(pg.proc.pid) - used
    return used / len(batches) * 1e6, elapsed / len(batches) * 1e6


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} [{min(values):.0f}-{max(values):.0f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1, help="keys per commit (default 1)")
    parser.add_argument("--commits", type=int, default=3000, help="commits per measurement")
    args = parser.parse_args()
    rng = random.Random(1)

    def batch() -> list[bytes]:
        return sorted({b"session:%d" % rng.randrange(KEYS) for _ in range(args.rows)})

    # (listening connections besides the committer, whether the committer listens)
    setups = [(0, False), (1, False), (2, False), (4, False), (0, True)]
    results: dict[str, list[tuple[float, float]]] = {}
    with PgCluster.create(name="commitcost") as pg:
        for others, itself in setups:
            dsn = pg.dsn(pg.create_database())
            with psycopg.connect(dsn, autocommit=True, context=ADAPTERS) as conn:
                for statement in pgsql.CREATE:
                    conn.execute(statement)
                conn.execute(pgsql.CREATE_TOKENS)
                conn.execute(pgsql.COMMIT_FUNCTION)
                conn.execute(f"PREPARE {pgsql.COMMIT_STATEMENT} AS {pgsql.COMMIT_PREPARED}")
                conn.execute(FLOOR_TABLE)
                if itself:
                    conn.execute(f"LISTEN {pgsql.CHANNEL}")
                for _ in range(others):
                    threading.Thread(target=listen, args=(dsn,), daemon=True).start()
                chosen = variants(conn)
                every = [b"session:%d" % i for i in range(KEYS)]
                for start in range(0, KEYS, 1000):  # every session there: SETs update
                    chosen["floor"](every[start : start + 1000])
                    chosen["function"](every[start : start + 1000])
                conn.execute("VACUUM ANALYZE")
                if others or itself:  # the rest do not notify: measured once, alone
                    chosen = {"function + NOTIFY": chosen["function + NOTIFY"]}
                where = "the committer listening" if itself else f"{others} listening"
                for commit in chosen.values():
                    for _ in range(200):  # the tables and plans warm
                        commit(batch())
                for rep in range(3):
                    names = list(chosen) if rep % 2 == 0 else list(reversed(chosen))
                    for name in names:
                        label = f"{name}, {where}" if name == "function + NOTIFY" else name
                        batches = [batch() for _ in range(args.commits)]
                        results.setdefault(label, []).append(measure(pg, chosen[name], batches))
            print(f"done: {where}", file=sys.stderr, flush=True)
    print(
        f"{args.rows} key(s) a commit, {args.commits} commits a measurement, 3 rounds: "
        "median [range]"
    )
    print(f"| {'commit':<44} | {'PostgreSQL CPU us/commit':>24} | {'wall us/commit':>18} |")
    print(f"|{'-' * 46}|{'-' * 26}|{'-' * 20}|")
    for label, runs in results.items():
        cpu = spread([r[0] for r in runs])
        wall = spread([r[1] for r in runs])
        print(f"| {label:<44} | {cpu:>24} | {wall:>18} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
