#!/usr/bin/env python3
"""What PostgreSQL costs on this machine, for the design of the shared store (#15).

    python bench/pg_probe.py                  # everything, about 3 minutes
    python bench/pg_probe.py --quick          # shorter runs (a smoke run)
    python bench/pg_probe.py --only notify,redis

Starts its own PostgreSQL (tests/pg.py: fsync and synchronous_commit on, otherwise
default settings), a redis-server on TCP loopback and a sessiond without a store, and
prints one table per section:

- latency:   round trips from asyncio psycopg (uvloop, as the daemon runs) over TCP
             loopback and the Unix socket: SELECT 1, a one-row upsert commit, 50
             upserts in one transaction (pipeline, executemany, one unnest statement)
- writes:    commits/s and rows/s from N connections, one row or 50 rows a commit
- pgbench:   the same statements from pgbench (C, no Python in the way)
- decide:    INCR / SET NX decided by the database: one statement vs SELECT ... FOR
             UPDATE + UPDATE in a transaction, alone and 8 connections on one key
- notify:    NOTIFY -> LISTEN delivery lag (another process), idle, under write load
             and sent with an upsert; 50 invalidations as 50 NOTIFYs or one; limits
- failover:  how long until a retrying client's query succeeds after kill + start,
             restart and replica promotion (multi-host DSN)
- redis:     redis-server over TCP loopback (GET, SET; SET with appendfsync always)
             and sessiond's in-memory GET over its socket (the near-cache hit)

Needs Debian's postgresql (server and pgbench), redis-server and redis-tools. One run
on a shared machine: compare numbers within a run, and repeat before quoting.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import multiprocessing as mp
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pg import PgCluster, StopMode, multi_host_dsn
from resp_bench import free_port, running, sessiond

KEYS = 100_000
VALUE = b"v" * 200
UPSERT = (
    "INSERT INTO sessions (k, v, expire_at) VALUES (%s, %s, %s) "
    "ON CONFLICT (k) DO UPDATE SET v = excluded.v, expire_at = excluded.expire_at"
)
UPSERT_UNNEST = (
    "INSERT INTO sessions (k, v, expire_at) "
    "SELECT * FROM unnest(%s::text[], %s::bytea[], %s::bigint[]) "
    "ON CONFLICT (k) DO UPDATE SET v = excluded.v, expire_at = excluded.expire_at"
)
INCR_ONE = (
    "INSERT INTO sessions (k, v, expire_at) VALUES (%s, '1', 0) ON CONFLICT (k) DO UPDATE "
    "SET v = convert_to((convert_from(sessions.v, 'UTF8')::bigint + 1)::text, 'UTF8') "
    "RETURNING convert_from(v, 'UTF8')::bigint"
)
SETNX_ONE = (
    "INSERT INTO sessions (k, v, expire_at) VALUES (%s, %s, 0) ON CONFLICT (k) DO NOTHING "
    "RETURNING true"
)
SCHEMA = """
CREATE TABLE sessions (k text PRIMARY KEY, v bytea NOT NULL, expire_at bigint NOT NULL);
INSERT INTO sessions
    SELECT 's' || i, convert_to(repeat('v', 200), 'UTF8'), 0 FROM generate_series(1, 100000) i;
"""

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


# ------------------------------------------------------------------- reporting


def pct(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass
class Row:
    what: str
    n: int
    p50: float  # ms
    p99: float  # ms
    max: float  # ms
    rate: float  # per second
    unit: str = "ops/s"
    note: str = ""

    @classmethod
    def of(
        cls, what: str, lat: Sequence[float], elapsed: float | None, per: int = 1, **kw: Any
    ) -> Row:
        """Latencies in seconds; the rate is ``per`` for each over ``elapsed`` (if any)."""
        ms = [x * 1000 for x in lat]
        rate = len(ms) * per / elapsed if elapsed else float("nan")
        return cls(what, len(ms), pct(ms, 0.5), pct(ms, 0.99), max(ms), rate, **kw)


def table(title: str, rows: list[Row]) -> None:
    print(f"\n## {title}\n")
    print(
        f"| {'what':<58} | {'n':>6} | {'p50 ms':>7} | {'p99 ms':>7} | {'max ms':>7} "
        f"| {'rate':>9} | unit      | note"
    )
    print(f"|{'-' * 60}|{'-' * 8}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 11}|-----------|-----")
    for r in rows:
        print(
            f"| {r.what:<58} | {r.n:>6} | {r.p50:>7.3f} | {r.p99:>7.3f} | {r.max:>7.2f} "
            f"| {r.rate:>9,.0f} | {r.unit:<9} | {r.note}"
        )
    sys.stdout.flush()


# ------------------------------------------------------------------ helpers


def key() -> str:
    return f"s{random.randint(1, KEYS)}"


def batch_keys(n: int) -> list[str]:
    # Distinct and sorted: ON CONFLICT DO UPDATE cannot touch a row twice in one
    # statement, and concurrent batches locking rows in one order cannot deadlock.
    return sorted(f"s{i}" for i in random.sample(range(1, KEYS + 1), n))


async def connect(dsn: str, autocommit: bool = True) -> Conn:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit)


async def timed(
    op: Callable[[], Awaitable[object]], n: int, warmup: int = 50
) -> tuple[list[float], float]:
    for _ in range(warmup):
        await op()
    lat = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        await op()
        lat.append(time.perf_counter() - t)
    return lat, time.perf_counter() - start


async def for_duration(
    conns: Sequence[Conn], op: Callable[[Conn], Awaitable[object]], seconds: float
) -> tuple[list[float], float]:
    """Each connection runs ``op`` in a loop for ``seconds``; all latencies."""
    lat: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker(conn: Conn) -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            await op(conn)
            lat.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    return lat, time.perf_counter() - start


# ------------------------------------------------------------------ sections


async def select1(conn: Conn) -> None:
    await conn.execute("SELECT 1")


async def upsert1(conn: Conn) -> None:
    await conn.execute(UPSERT, (key(), VALUE, 0))


async def upsert_batch(conn: Conn, how: str, size: int = 50) -> None:
    keys = batch_keys(size)
    if how == "pipeline":
        async with conn.transaction(), conn.pipeline():
            for k in keys:
                await conn.execute(UPSERT, (k, VALUE, 0))
    elif how == "executemany":
        async with conn.transaction():
            await conn.cursor().executemany(UPSERT, [(k, VALUE, 0) for k in keys])
    else:
        await conn.execute(UPSERT_UNNEST, (keys, [VALUE] * size, [0] * size))


async def latency(pg: PgCluster, n: int) -> None:
    rows = []
    for label, dsn in (("tcp", pg.dsn()), ("unix", pg.dsn(unix=True))):
        conn = await connect(dsn)
        async with conn:
            lat, el = await timed(partial(select1, conn), n)
            rows.append(Row.of(f"{label}: SELECT 1", lat, el))
            lat, el = await timed(partial(upsert1, conn), n)
            rows.append(Row.of(f"{label}: upsert 1 row, autocommit (fsync)", lat, el))
            for how in ("pipeline", "executemany", "unnest"):
                lat, el = await timed(partial(upsert_batch, conn, how), n // 10, 10)
                rows.append(
                    Row.of(f"{label}: 50 upserts, 1 commit, {how}", lat, el, per=50, unit="rows/s")
                )
    table("latency: one asyncio connection, sequential", rows)


async def writes(pg: PgCluster, seconds: float) -> None:
    rows = []
    for clients in (1, 8, 32):
        conns = [await connect(pg.dsn()) for _ in range(clients)]
        lat, el = await for_duration(conns, upsert1, seconds)
        rows.append(
            Row.of(f"tcp: {clients} conns, upsert 1 row a commit", lat, el, unit="commits/s")
        )
        for c in conns:
            await c.close()
    for clients in (1, 4):
        conns = [await connect(pg.dsn()) for _ in range(clients)]
        lat, el = await for_duration(conns, partial(upsert_batch, how="unnest"), seconds)
        rows.append(
            Row.of(
                f"tcp: {clients} conns, 50 rows a commit (unnest)", lat, el, per=50, unit="rows/s"
            )
        )
        for c in conns:
            await c.close()
    table("writes: concurrent connections in one asyncio process", rows)


def pgbench(pg: PgCluster, seconds: float, work: Path) -> None:
    scripts = {
        "SELECT 1": "SELECT 1;\n",
        "upsert 1 row (200 B)": (
            "\\set k random(1, 100000)\n"
            "INSERT INTO sessions (k, v, expire_at) "
            "VALUES ('s' || :k, convert_to(repeat('w', 200), 'UTF8'), 1) "
            "ON CONFLICT (k) DO UPDATE SET v = excluded.v, expire_at = excluded.expire_at;\n"
        ),
        "INCR one hot key, 1 statement": INCR_ONE.replace("%s", "'hot'") + ";\n",
        "INCR one hot key, FOR UPDATE + UPDATE": (
            "BEGIN;\n"
            "SELECT v FROM sessions WHERE k = 'hot' FOR UPDATE;\n"
            "UPDATE sessions SET v = convert_to((convert_from(v, 'UTF8')::bigint + 1)::text, "
            "'UTF8') WHERE k = 'hot';\n"
            "COMMIT;\n"
        ),
    }
    with pg.connect(autocommit=True) as conn:
        conn.execute("INSERT INTO sessions VALUES ('hot', '0', 0) ON CONFLICT (k) DO NOTHING")
    env = {**os.environ, "PGPASSWORD": pg.password}
    rows = []
    for name, script in scripts.items():
        path = work / f"bench-{abs(hash(name))}.sql"
        path.write_text(script)
        for clients in (1, 8):
            out = subprocess.run(
                [
                    str(pg.bindir / "pgbench"),
                    "-n",
                    "-M",
                    "prepared",
                    "-f",
                    str(path),
                    "-c",
                    str(clients),
                    "-j",
                    "2",
                    "-T",
                    str(max(1, int(seconds))),
                    "-r",
                    "-h",
                    pg.host,
                    "-p",
                    str(pg.port),
                    "-U",
                    pg.app_role,
                    "sessiond",
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            tps = float(next(ln for ln in out.splitlines() if ln.startswith("tps")).split()[2])
            avg = float(next(ln for ln in out.splitlines() if "latency average" in ln).split()[3])
            rows.append(
                Row(
                    f"tcp: {name}, {clients} conns",
                    int(tps * seconds),
                    avg,
                    float("nan"),
                    float("nan"),
                    tps,
                    "tx/s",
                    "p50 = average",
                )
            )
    table("pgbench (-M prepared, TCP loopback)", rows)


async def decide(pg: PgCluster, n: int, seconds: float) -> None:
    async def incr_one(c: Conn, k: str) -> int:
        row = await (await c.execute(INCR_ONE, (k,))).fetchone()
        assert row is not None
        return int(row[0])

    async def incr_for_update(c: Conn, k: str) -> int:
        async with c.transaction():
            row = await (
                await c.execute("SELECT v FROM sessions WHERE k = %s FOR UPDATE", (k,))
            ).fetchone()
            value = int(row[0]) + 1 if row else 1
            await c.execute(
                "INSERT INTO sessions (k, v, expire_at) VALUES (%s, %s, 0) "
                "ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                (k, str(value).encode()),
            )
        return value

    async def setnx_one(c: Conn) -> None:
        await c.execute(SETNX_ONE, (f"nx{secrets.token_hex(8)}", VALUE))

    rows = []
    conn = await connect(pg.dsn())
    async with conn:
        await conn.execute("INSERT INTO sessions VALUES ('c1', '0', 0) ON CONFLICT DO NOTHING")
        lat, el = await timed(partial(incr_one, conn, "c1"), n)
        rows.append(Row.of("INCR: INSERT .. ON CONFLICT DO UPDATE .. RETURNING", lat, el))
        lat, el = await timed(partial(incr_for_update, conn, "c1"), n)
        rows.append(Row.of("INCR: BEGIN; SELECT .. FOR UPDATE; UPDATE; COMMIT", lat, el))
        lat, el = await timed(partial(setnx_one, conn), n)
        rows.append(Row.of("SET NX: INSERT .. ON CONFLICT DO NOTHING RETURNING", lat, el))
    for name, fn in (("1 statement", incr_one), ("FOR UPDATE txn", incr_for_update)):
        conns = [await connect(pg.dsn()) for _ in range(8)]
        hot = f"hot-{secrets.token_hex(4)}"
        lat, el = await for_duration(conns, partial(fn, k=hot), seconds)
        final = await incr_one(conns[0], hot) - 1
        # FOR UPDATE locks nothing while the key does not exist yet: the first INCR of
        # every connection computes 1, and those that wait on the insert write their 1
        # over whatever increments landed meanwhile.
        note = "exact" if final == len(lat) else f"lost {len(lat) - final} increments"
        rows.append(Row.of(f"INCR one hot key, 8 conns, {name}", lat, el, note=note))
        for c in conns:
            await c.close()
    conns = [await connect(pg.dsn()) for _ in range(8)]
    rounds, exact = max(20, n // 20), 0
    lat = []
    start = time.perf_counter()
    for _ in range(rounds):
        lock = f"lock-{secrets.token_hex(8)}"
        t = time.perf_counter()
        cursors = await asyncio.gather(*(c.execute(SETNX_ONE, (lock, VALUE)) for c in conns))
        lat.append(time.perf_counter() - t)
        winners = [row for cur in cursors for row in await cur.fetchall()]
        exact += len(winners) == 1
    rows.append(
        Row.of(
            "SET NX lock rounds, 8 conns race for each key",
            lat,
            time.perf_counter() - start,
            unit="rounds/s",
            note=f"one winner in {exact} of {rounds} rounds",
        )
    )
    for c in conns:
        await c.close()
    table("decisions made by the database (one asyncio connection unless said)", rows)


# ------------------------------------------------------------------ NOTIFY


def listener(dsn: str, pipe: Connection) -> None:
    """Another process: LISTEN, timestamp each notification, report at 'stop'."""

    async def run() -> None:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        await conn.execute("LISTEN inv")
        pipe.send("ready")
        got: list[tuple[str, int]] = []
        async for note in conn.notifies():
            if note.payload == "stop":
                break
            got.append((note.payload, time.monotonic_ns()))
        pipe.send(got)
        await conn.close()

    run_loop(run())


async def notify_lag(
    pg: PgCluster, n: int, pace: float, with_upsert: bool = False
) -> tuple[list[float], list[float]]:
    """(lag from sending, lag from the sender's commit returning), in seconds."""
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=listener, args=(pg.dsn(), theirs))
    proc.start()
    assert ours.recv() == "ready"
    sent: dict[str, tuple[int, int]] = {}
    conn = await connect(pg.dsn())
    async with conn:
        for i in range(n):
            payload = str(i)
            t0 = time.monotonic_ns()
            if with_upsert:
                async with conn.transaction(), conn.pipeline():
                    await conn.execute(UPSERT, (key(), VALUE, 0))
                    await conn.execute("SELECT pg_notify('inv', %s)", (payload,))
            else:
                await conn.execute("SELECT pg_notify('inv', %s)", (payload,))
            sent[payload] = (t0, time.monotonic_ns())
            await asyncio.sleep(pace)
        await conn.execute("NOTIFY inv, 'stop'")
    got = await asyncio.to_thread(ours.recv)
    proc.join(10)
    from_send = [(t - sent[p][0]) / 1e9 for p, t in got]
    from_ack = [(t - sent[p][1]) / 1e9 for p, t in got]
    return from_send, from_ack


def early(lags: Sequence[float]) -> float:
    """The share of notifications that reached the listener before the sender's commit
    returned (another host invalidates before the writing client has its reply)."""
    return sum(1 for x in lags if x < 0) / len(lags)


async def notify(pg: PgCluster, n: int, seconds: float, work: Path) -> None:
    rows = []
    for label, upsert in (("NOTIFY alone", False), ("upsert + NOTIFY, 1 txn", True)):
        from_send, from_ack = await notify_lag(pg, n, 0.002, upsert)
        rows.append(Row.of(f"idle: {label}, lag from send", from_send, None, unit="-"))
        rows.append(
            Row.of(
                f"idle: {label}, lag from commit ack",
                from_ack,
                None,
                unit="-",
                note=f"{early(from_ack):.0%} arrived before the ack",
            )
        )
    script = work / "load.sql"
    script.write_text(
        "\\set k random(1, 100000)\nINSERT INTO sessions (k, v, expire_at) VALUES "
        "('s' || :k, convert_to(repeat('w', 200), 'UTF8'), 1) ON CONFLICT (k) DO UPDATE "
        "SET v = excluded.v;\n"
    )
    load = subprocess.Popen(
        [
            str(pg.bindir / "pgbench"),
            "-n",
            "-M",
            "prepared",
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            str(int(seconds) + 60),
            "-f",
            str(script),
            "-h",
            pg.host,
            "-p",
            str(pg.port),
            "-U",
            pg.app_role,
            "sessiond",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PGPASSWORD": pg.password},
    )
    await asyncio.sleep(1)
    try:
        from_send, from_ack = await notify_lag(pg, n, 0.002, True)
        rows.append(
            Row.of("8 pgbench writers: upsert + NOTIFY, lag from send", from_send, None, unit="-")
        )
        rows.append(
            Row.of(
                "8 pgbench writers: upsert + NOTIFY, lag from ack",
                from_ack,
                None,
                unit="-",
                note=f"{early(from_ack):.0%} arrived before the ack",
            )
        )
    finally:
        load.terminate()
        load.wait()
    rows += await invalidation_batches(pg, n)
    table("NOTIFY -> LISTEN (listener in another process)", rows)
    await notify_limits(pg)


async def invalidation_batches(pg: PgCluster, n: int) -> list[Row]:
    """Invalidate 50 keys per commit: 50 NOTIFYs in one transaction vs one NOTIFY."""
    keys = [secrets.token_urlsafe(32) for _ in range(50)]  # 43-character session ids
    rows = []
    conn = await connect(pg.dsn())
    async with conn:

        async def many() -> None:
            async with conn.transaction(), conn.pipeline():
                for k in keys:
                    await conn.execute("SELECT pg_notify('inv2', %s)", (k,))

        async def one() -> None:
            await conn.execute("SELECT pg_notify('inv2', %s)", ("\n".join(keys),))

        for label, op in (
            ("50 pg_notify() in 1 txn (pipeline)", many),
            ("1 pg_notify() with 50 keys (2.2 KB)", one),
        ):
            lat, el = await timed(op, max(50, n // 10), 10)
            rows.append(Row.of(f"invalidate 50 keys: {label}", lat, el, per=50, unit="keys/s"))
    return rows


async def notify_limits(pg: PgCluster) -> None:
    conn = await connect(pg.dsn())
    listen = await connect(pg.dsn())
    async with conn, listen:
        await listen.execute("LISTEN lim")
        await conn.execute("SELECT pg_notify('lim', %s)", ("x" * 7999,))
        try:
            await conn.execute("SELECT pg_notify('lim', %s)", ("x" * 8000,))
            too_long = "accepted"
        except psycopg.Error as e:
            too_long = f"{type(e).__name__}: {e}"
        async with conn.transaction():  # the same (channel, payload) twice in one txn
            for p in ("dup", "dup", "other", "dup"):
                await conn.execute("SELECT pg_notify('lim', %s)", (p,))
        got = []
        async for note in listen.notifies(timeout=1):
            got.append(note.payload if len(note.payload) < 10 else f"<{len(note.payload)} B>")
        usage = await (await conn.execute("SELECT pg_notification_queue_usage()")).fetchone()
        size = 43 + 1  # a token_urlsafe(32) id and a newline
    print("\nNOTIFY limits:")
    print("- payload of 7999 bytes: delivered; of 8000 bytes:", too_long)
    print(f"- 'dup','dup','other','dup' in one transaction delivered as {got[1:]}")
    print(f"- session ids (43 chars) per 7999-byte payload: {7999 // size}")
    print(f"- pg_notification_queue_usage() after the run: {usage[0] if usage else '?'}")


# ------------------------------------------------------------------ failover


@dataclass
class Back:
    seconds: float  # until the first success
    attempts: int
    slowest: float  # the longest single attempt
    errors: list[str]  # distinct first lines of the errors seen, in order

    def __str__(self) -> str:
        return (
            f"{self.seconds:.3f} s ({self.attempts} attempts, slowest {self.slowest:.3f} s; "
            f"errors: {' / '.join(self.errors) or 'none'})"
        )


async def until_query(dsn: str, sql: str, timeout: float = 60) -> Back:
    """How long until a client that retries every 10 ms gets ``sql`` through."""
    start = time.perf_counter()
    back = Back(float("inf"), 0, 0.0, [])
    while time.perf_counter() - start < timeout:
        attempt = time.perf_counter()
        back.attempts += 1
        try:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=2)
            async with conn:
                await conn.execute(sql)
            back.seconds = time.perf_counter() - start
            return back
        except psycopg.OperationalError as e:
            # libpq's message: "connection failed: connection to server at ... failed: why"
            why = str(e).splitlines()[0].rpartition("failed: ")[2]
            if why not in back.errors:
                back.errors.append(why)
            await asyncio.sleep(0.01)
        finally:
            back.slowest = max(back.slowest, time.perf_counter() - attempt)
    return back


async def failover(pg: PgCluster, promotions: int) -> None:
    """A client retries a write every 10 ms while the server comes back; crash
    recovery replays the WAL written since the last checkpoint, so that is reported."""
    print("\n## failover: seconds until a retrying client's write succeeds\n")
    write = "INSERT INTO sessions VALUES ('fo', 'x', 0) ON CONFLICT (k) DO UPDATE SET v = 'y'"

    def wal_since_checkpoint(*, checkpoint: bool = False, touch: bool = True) -> float:
        with pg.connect(autocommit=True) as conn:
            if checkpoint:
                conn.close()
                pg.query("CHECKPOINT")
                return wal_since_checkpoint(touch=touch)
            if touch:  # a few writes for recovery to replay
                conn.execute(
                    "UPDATE sessions SET expire_at = expire_at + 1 WHERE k = ANY(%s)",
                    ([f"s{i}" for i in range(1, 101)],),
                )
            row = conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), redo_lsn) "
                "FROM pg_control_checkpoint()"
            ).fetchone()
        return float(row[0]) / 2**20 if row else float("nan")

    async def back_after(stop: Callable[[], None], start: Callable[[], None], dsn: str) -> Back:
        stop()
        took = await asyncio.gather(until_query(dsn, write), asyncio.to_thread(start))
        return took[0]

    # First the WAL the benchmark before left behind (up to checkpoint_timeout's worth).
    for label, checkpoint in (("after the sections above", False), ("after a CHECKPOINT", True)):
        mb = wal_since_checkpoint(checkpoint=checkpoint)
        took = await back_after(pg.kill, pg.start, pg.dsn())
        print(f"- SIGKILL {label} ({mb:.1f} MB of WAL to replay), then start: {took}")
    modes: tuple[StopMode, ...] = ("fast", "immediate")
    for mode in modes:
        mb = wal_since_checkpoint()
        took = await back_after(partial(pg.stop, mode), pg.start, pg.dsn())
        print(f"- stop -m {mode} ({mb:.1f} MB of WAL since the checkpoint), then start: {took}")
    # A promotion requested while the standby waits wal_retrieve_retry_interval to look
    # for WAL again (its primary just vanished) waits with it: sample both values.
    for interval in ("5s", "100ms"):
        times: list[Back] = []
        for _ in range(promotions):
            replica = pg.create_replica(settings={"wal_retrieve_retry_interval": interval})
            wal_since_checkpoint()
            times.append(await back_after(pg.kill, replica.promote, multi_host_dsn([pg, replica])))
            pg.replicas.remove(replica)
            replica.destroy()
            pg.start()
        print(
            f"- primary SIGKILLed, replica promoted (wal_retrieve_retry_interval {interval}): "
            f"a multi-host DSN writes after {', '.join(f'{b.seconds:.2f}' for b in times)} s; "
            f"slowest attempt {max(b.slowest for b in times):.3f} s; errors: "
            f"{' / '.join(sorted({e for b in times for e in b.errors}))}"
        )


# ------------------------------------------------------------------ redis


def redis_benchmark(args: list[str], tests: str, clients: int, n: int) -> dict[str, Row]:
    out = subprocess.run(
        [
            "redis-benchmark",
            *args,
            "-t",
            tests,
            "-d",
            "200",
            "-r",
            "100000",
            "-n",
            str(n),
            "-c",
            str(clients),
            "--csv",
            "-q",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    ).stdout
    return {
        r["test"]: Row(
            "",
            n,
            float(r["p50_latency_ms"]),
            float(r["p99_latency_ms"]),
            float(r["max_latency_ms"]),
            float(r["rps"]),
        )
        for r in csv.DictReader(io.StringIO(out))
    }


@contextmanager
def redis_tcp(work: Path, appendfsync: str | None) -> Iterator[list[str]]:
    port = free_port()
    sock = work / "redis-unused.sock"  # resp_bench.running() waits on a socket
    cmd = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--unixsocket",
        str(sock),
        "--save",
        "",
        "--dir",
        str(work),
        "--maxclients",
        "10000",
    ]
    cmd += (
        ["--appendonly", "yes", "--appendfsync", appendfsync]
        if appendfsync
        else ["--appendonly", "no"]
    )
    with running(cmd, sock, work):
        yield ["-h", "127.0.0.1", "-p", str(port)]
    shutil.rmtree(work / "appendonlydir", ignore_errors=True)


def redis_section(n: int, work: Path) -> None:
    rows = []
    with redis_tcp(work, None) as args:
        for clients in (1, 50):
            for test, row in redis_benchmark(args, "get,set", clients, n).items():
                row.what = f"redis-server TCP: {test}, -c {clients}"
                rows.append(row)
    with redis_tcp(work, "always") as args:
        for clients in (1, 50):
            row = redis_benchmark(args, "set", clients, n // (10 if clients == 1 else 2))["SET"]
            row.what = f"redis-server TCP, appendfsync always: SET, -c {clients}"
            rows.append(row)
    cmd, sock = sessiond(work, metrics=True, persistence=None)
    with running(cmd, sock, work):
        redis_benchmark(["-s", str(sock)], "set", 50, n)  # the keys GET then finds
        for clients in (1, 50):
            row = redis_benchmark(["-s", str(sock)], "get", clients, n)["GET"]
            row.what = f"sessiond (memory) Unix socket: GET, -c {clients}"
            rows.append(row)
    for r in rows:
        r.unit = "req/s"
    table("redis-benchmark -d 200 -r 100000 (p50/p99/max from redis-benchmark)", rows)


# ------------------------------------------------------------------ main


def run_loop(coro: Awaitable[None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


SECTIONS = ("latency", "writes", "pgbench", "decide", "notify", "failover", "redis")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke run)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if unknown := only - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if "redis" in only:
        for tool in ("redis-server", "redis-benchmark"):
            if shutil.which(tool) is None:
                print(
                    f"{tool} not found: apt-get install redis-server redis-tools", file=sys.stderr
                )
                return 2
    n, seconds, redis_n = (300, 2.0, 20_000) if args.quick else (2000, 5.0, 100_000)
    with PgCluster.create(name="probe") as pg, tempfile.TemporaryDirectory() as tmp:
        with pg.connect(autocommit=True) as conn:
            conn.execute(SCHEMA)
            conn.execute("VACUUM ANALYZE sessions")
            version = conn.execute("SHOW server_version").fetchone()
        print(
            f"PostgreSQL {version[0] if version else '?'} ({pg.bindir}), psycopg "
            f"{psycopg.__version__} (libpq {psycopg.pq.version()}), Python "
            f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, fsync + synchronous_commit on"
        )
        if "latency" in only:
            run_loop(latency(pg, n))
        if "writes" in only:
            run_loop(writes(pg, seconds))
        if "pgbench" in only:
            pgbench(pg, seconds, Path(tmp))
        if "decide" in only:
            run_loop(decide(pg, n, seconds))
        if "notify" in only:
            run_loop(notify(pg, n // 2, seconds, Path(tmp)))
        if "failover" in only:
            run_loop(failover(pg, 3 if args.quick else 8))
        if "redis" in only:
            redis_section(redis_n, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
