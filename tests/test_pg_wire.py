"""The group commit sent through libpq directly (sessiond.store.pgwire), in
process against a real PostgreSQL behind a proxy that holds the server's
reply back in the middle (tests/hold_proxy.py)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from pg import PgDatabase
from pg_fixtures import fields
from sessiond.store import StoreError
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

    async def main() -> tuple[str, int]:
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
            return str(error), ticks
        finally:
            ticker.cancel()
            await store.aclose()

    try:
        outcome, ticks = asyncio.run(main())
    finally:
        proxy.kill()
        proxy.wait()
    # Cut by its timeout, not answered "landed" once the held message came.
    assert outcome == "store commit failed: no answer within 1s", outcome
    assert ticks > 0  # the loop ran other work while the commit waited
