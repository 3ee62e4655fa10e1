"""Statements sent through libpq directly (sessiond.store.pgwire), in process
against a real PostgreSQL: the group commit behind a proxy that holds the
server's reply back in the middle (tests/hold_proxy.py), and the pipeline of a
decision's commit."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest
from pg import PgDatabase
from pg_fixtures import fields
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from sessiond.store import StoreError, pgwire
from sessiond.store.postgres import PostgresStore


def test_a_reply_whose_end_comes_late_is_cut_at_the_timeout_and_the_loop_runs_on(
    pg_db: PgDatabase,
) -> None:
    """libpq's get_result() blocks while a result is incomplete. Called once the
    statement's result was in but its ReadyForQuery was not, it stopped the
    event loop (and with it the commit's own timeout) for as long as the
    server's last message took, here 10 s past a 1 s timeout, and the commit
    was then reported landed. The loop must wait for the socket instead."""
    proxy = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("hold_proxy.py")),
         str(pg_db.cluster.port), "10"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proxy.stdout is not None
    port = int(proxy.stdout.readline())

    async def main() -> tuple[str, int, dict[str, int]]:
        store = PostgresStore(pg_db.dsn(port=port, sslmode="disable"), timeout=1.0)
        await store.open(10.0)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        try:
            told: asyncio.Future[StoreError | None] = asyncio.get_running_loop().create_future()
            proxy.send_signal(signal.SIGUSR1)
            await asyncio.sleep(0.2)  # armed (the next commit is held either way)
            store.record(b"k", fields(b"v"))
            store.after_commit(told.set_result)
            ticks = 0  # counted while the commit waits
            error = await asyncio.wait_for(told, 30)
            return str(error), ticks, dict(store.shared_stats.unanswered_commits)
        finally:
            ticker.cancel()
            await store.aclose()

    try:
        outcome, ticks, unanswered = asyncio.run(main())
    finally:
        proxy.kill()
        proxy.wait()
    # Cut by its timeout, then asked about (its transaction id came before
    # the hold): landed, as the database says; not taken from the held answer.
    assert outcome == "None", outcome
    assert unanswered == {"landed": 1}
    assert ticks > 0  # the loop ran other work while the commit waited


def test_a_pipeline_runs_its_statements_in_one_go_and_stops_at_the_first_error(
    pg_db: PgDatabase,
) -> None:
    """pgwire.pipeline, as a decision's commit uses it: statements prepared,
    called with binary parameters and a last one, read back in one round trip.
    A failing call raises the server's own error and the rest of the pipeline
    (here its COMMIT) is skipped, so nothing of the transaction lands; the
    statements prepared before it stay for the next pipeline."""

    async def main() -> tuple[list[tuple[int, ...]], str]:
        conn = await psycopg.AsyncConnection.connect(pg_db.dsn(), autocommit=True)
        try:
            await conn.execute("CREATE TABLE t (n int4)")
            add = (b"add", b"INSERT INTO t VALUES ($1::int4)")
            fence = (b"fence", b"SELECT 1 / $1::int4")  # fails as a commit's fence does
            one, zero = struct.pack("!i", 1), struct.pack("!i", 0)
            await conn.execute("BEGIN")
            await pgwire.pipeline(conn, (add, fence), ((b"add", [one]),), after=b"COMMIT")
            await conn.execute("BEGIN")
            with pytest.raises(psycopg.errors.DivisionByZero) as failed:
                calls = ((b"add", [one]), (b"fence", [zero]), (b"add", [one]))
                await pgwire.pipeline(conn, (), calls, after=b"COMMIT")
            assert conn.pgconn.transaction_status == TransactionStatus.INERROR
            await conn.execute("ROLLBACK")
            await conn.execute("BEGIN")
            await pgwire.pipeline(conn, (), ((b"add", [one]),), after=b"COMMIT")
            rows = await (await conn.execute("SELECT n FROM t")).fetchall()
            return rows, str(failed.value)
        finally:
            await conn.close()

    rows, error = asyncio.run(main())
    assert rows == [(1,), (1,)]
    assert "division by zero" in error, error


def test_a_pipeline_whose_server_speaks_nonsense_fails_instead_of_spinning(
    pg_db: PgDatabase,
) -> None:
    """Past a message it cannot parse, libpq gives up on the connection and
    answers every later get_result() with nothing, and no sync ever comes:
    pgwire.pipeline, which reads on to the sync, asked forever without
    yielding, and the event loop (with every timeout on it) stopped. A proxy
    here turns the server's replies into a malformed message."""
    poison = threading.Event()
    target = int(conninfo_to_dict(pg_db.dsn())["port"])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        client, _ = listener.accept()
        server = socket.create_connection(("127.0.0.1", target))

        def pump(src: socket.socket, dst: socket.socket, poisoned: bool) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(b"\x01\x00\x00\x00\x02" if poisoned and poison.is_set() else data)

        threading.Thread(target=pump, args=(client, server, False), daemon=True).start()
        threading.Thread(target=pump, args=(server, client, True), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()

    async def main() -> BaseException | None:
        conn = await psycopg.AsyncConnection.connect(pg_db.dsn(port=port), autocommit=True)
        try:
            await conn.execute("BEGIN")
            poison.set()
            try:
                prepare = ((b"one", b"SELECT 1"),)
                await asyncio.wait_for(
                    pgwire.pipeline(conn, prepare, ((b"one", []),), after=b"COMMIT"), 10
                )
            except (psycopg.Error, TimeoutError) as exc:
                return exc
            return None
        finally:
            await conn.close()

    faulthandler.dump_traceback_later(60, exit=True)  # a spinning loop: end the worker
    try:
        failed = asyncio.run(main())
    finally:
        faulthandler.cancel_dump_traceback_later()
        listener.close()
    assert isinstance(failed, psycopg.OperationalError), failed
