#!/usr/bin/env python3
"""How long the shared store's schema 1 -> 2 migration locks the table.

    .venv-mypyc/bin/python bench/pg_migrate.py [--sessions 1000000] [--reps 3]

Starts a PostgreSQL of its own (tests/pg.py), and for each repetition makes a
store of schema 1 in a fresh database: this version's tables with the
migration undone (no expire_at, the deadline's index), filled with
``--sessions`` 200-byte sessions with a TTL, analysed. Then it times
pgsql.MIGRATE_TO_2 in one transaction, as postgres._migrate runs it (the
table is locked for all of it), and prints each repetition's seconds and the
table's size after. About 30 s a repetition at a million sessions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pg import PgCluster
from sessiond.store import pgsql

SCHEMA_1 = (
    f"ALTER TABLE {pgsql.TABLE} DROP COLUMN expire_at",  # its index and check go with it
    f"CREATE INDEX {pgsql.TABLE}_deadline ON {pgsql.TABLE} (deadline) WHERE deadline IS NOT NULL",
    f"UPDATE {pgsql.VERSION_TABLE} SET version = 1",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    took: list[float] = []
    with PgCluster.create(name="migrate") as pg:
        for rep in range(args.reps):
            with psycopg.connect(pg.dsn(pg.create_database()), autocommit=True) as conn:
                for statement in (*pgsql.CREATE, *SCHEMA_1):
                    conn.execute(statement)
                now = time.time()
                conn.execute(
                    f"INSERT INTO {pgsql.TABLE} (key, scan_hash, value, created_at, updated_at, "
                    "accessed_at, ttl, deadline) SELECT ('session:' || i)::bytea, i, "
                    "repeat('v', 200)::bytea, %s, %s, %s, 3600, %s + random() * 3600 "
                    "FROM generate_series(1, %s) AS i",
                    (now, now, now, now, args.sessions),
                )
                conn.execute(f"VACUUM ANALYZE {pgsql.TABLE}")
                started = time.perf_counter()
                with conn.transaction():
                    for statement in pgsql.MIGRATE_TO_2:
                        conn.execute(statement)
                took.append(time.perf_counter() - started)
                size = conn.execute(
                    f"SELECT pg_size_pretty(pg_total_relation_size('{pgsql.TABLE}'))"
                ).fetchone()
            print(f"repetition {rep + 1}: {took[-1]:.2f} s, table {size[0] if size else '?'}")
    print(
        f"{args.sessions:,} sessions: median {statistics.median(took):.2f} s "
        f"[{min(took):.2f}-{max(took):.2f}]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
