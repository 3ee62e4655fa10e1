"""The real-PostgreSQL test infrastructure itself (tests/pg.py, tests/tcp_proxy.py):
the throwaway cluster, its roles and authentication, LISTEN/NOTIFY from asyncio
psycopg, crash and restart, a promoted replica behind a multi-host DSN, and the proxy's
delay, partition and cut; and that no server a test process started outlives it. The
PostgreSQL store's own tests build on these."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from pg import SERVER_USER, PgCluster, PgDatabase, multi_host_dsn, process_state, sweep_orphans
from psycopg import errors
from tcp_proxy import TcpProxy

ProxyFactory = Callable[..., TcpProxy]


def round_trip(conn: psycopg.Connection[tuple[object, ...]]) -> float:
    start = time.monotonic()
    conn.execute("SELECT 1").fetchone()
    return time.monotonic() - start


# ------------------------------------------------------------------ the cluster


def test_the_daemon_role_connects_over_tcp_and_the_socket(pg_db: PgDatabase) -> None:
    for table, dsn in (("over_tcp", pg_db.dsn()), ("over_socket", pg_db.dsn(unix=True))):
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT current_user, current_database(), usesuper "
                "FROM pg_user WHERE usename = current_user"
            ).fetchone()
            assert row == ("sessiond", pg_db.name, False)
            # It owns its database: it can create the store's schema there.
            conn.execute(f"CREATE TABLE {table} (k text PRIMARY KEY)")
    with psycopg.connect(pg_db.dsn()) as conn:
        assert conn.info.hostaddr == "127.0.0.1"
        settings: dict[str, str] = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('fsync', 'synchronous_commit', 'full_page_writes', 'wal_sync_method')"
            ).fetchall()
        )
    assert settings["fsync"] == settings["synchronous_commit"] == "on"
    assert settings["full_page_writes"] == "on"


def test_passwords_are_checked_and_read_from_dsn_env_or_passfile(
    pg_db: PgDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_db.dsn(password="wrong"))
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(pg_db.dsn(password=""))
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(pg_db.dsn(password="", unix=True))  # the socket wants one too

    # libpq's own sources, which a daemon gets for free: PGPASSWORD and a passfile.
    monkeypatch.setenv("PGPASSWORD", pg_db.cluster.password)
    with psycopg.connect(pg_db.dsn(password="")) as conn:
        conn.execute("SELECT 1")
    monkeypatch.delenv("PGPASSWORD")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"*:*:*:sessiond:{pg_db.cluster.password}\n")
    passfile.chmod(0o600)
    with psycopg.connect(pg_db.dsn(password="", passfile=str(passfile))) as conn:
        conn.execute("SELECT 1")


def test_the_server_runs_unprivileged_in_a_private_dir(pg_cluster: PgCluster) -> None:
    assert pg_cluster.proc is not None
    uid = os.stat(f"/proc/{pg_cluster.proc.pid}").st_uid
    assert uid != 0
    if os.geteuid() == 0:
        assert pg_cluster.user.name == SERVER_USER
    assert uid == pg_cluster.user.uid
    for path in (pg_cluster.base, pg_cluster.datadir):
        info = path.stat()
        assert info.st_uid == uid
        assert stat.S_IMODE(info.st_mode) == 0o700


def test_databases_per_test_are_separate(pg_cluster: PgCluster, pg_db: PgDatabase) -> None:
    other = pg_cluster.create_database()
    try:
        with pg_db.connect() as conn:
            conn.execute("CREATE TABLE only_here (k int)")
        with pg_cluster.connect(other) as conn:
            found = conn.execute("SELECT to_regclass('only_here')").fetchone()
        assert found == (None,)
    finally:
        pg_cluster.drop_database(other)


# ----------------------------------------------------------------- LISTEN/NOTIFY


def test_listen_notify_through_async_notifies(pg_db: PgDatabase) -> None:
    async def scenario() -> None:
        listener = await psycopg.AsyncConnection.connect(pg_db.dsn(), autocommit=True)
        sender = await psycopg.AsyncConnection.connect(pg_db.dsn())
        async with listener, sender:
            await listener.execute("LISTEN sessions")
            got: list[psycopg.Notify] = []

            async def receive(count: int) -> None:
                async for notify in listener.notifies(timeout=5):
                    got.append(notify)
                    if len(got) == count:
                        return

            receiving = asyncio.create_task(receive(2))
            # Notifications are transactional: sent at commit, in order, once each.
            await sender.execute("SELECT pg_notify('sessions', 'k1')")
            await sender.execute("NOTIFY sessions, 'k2'")
            await asyncio.sleep(0.2)
            assert got == []
            await sender.commit()
            await asyncio.wait_for(receiving, 5)
            assert [(n.channel, n.payload) for n in got] == [("sessions", "k1"), ("sessions", "k2")]
            assert got[0].pid == sender.info.backend_pid

            # The payload must be shorter than 8000 bytes (bytes, not characters).
            await sender.execute("SELECT pg_notify('sessions', %s)", ("x" * 7999,))
            await sender.rollback()
            with pytest.raises(errors.InvalidParameterValue, match="payload string too long"):
                await sender.execute("SELECT pg_notify('sessions', %s)", ("x" * 8000,))
            await sender.rollback()
            with pytest.raises(errors.InvalidParameterValue, match="payload string too long"):
                await sender.execute("SELECT pg_notify('sessions', %s)", ("é" * 4000,))

    asyncio.run(scenario())


def test_a_terminated_listen_connection_ends_notifies_with_an_error(pg_db: PgDatabase) -> None:
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(
            pg_db.dsn(application_name="listener"), autocommit=True
        ) as listener:
            await listener.execute("LISTEN sessions")

            async def drain() -> None:
                async for _ in listener.notifies():
                    pass

            receiving = asyncio.create_task(drain())
            await asyncio.sleep(0.1)
            killed = await asyncio.to_thread(
                pg_db.cluster.terminate_backends, application_name="listener"
            )
            assert killed == 1
            with pytest.raises(psycopg.OperationalError):
                await asyncio.wait_for(receiving, 5)
            assert listener.closed

    asyncio.run(scenario())


# --------------------------------------------------------- crash, stop, restart


def test_kill_and_start_keep_committed_data(pg_own_cluster: PgCluster) -> None:
    pg = pg_own_cluster
    with pg.connect() as conn:
        conn.execute("CREATE TABLE s (k text PRIMARY KEY, v text)")
        conn.execute("INSERT INTO s VALUES ('committed', 'yes')")
        conn.commit()
        conn.execute("INSERT INTO s VALUES ('open', 'no')")  # never committed
        old_pid = pg.proc.pid if pg.proc else 0
        pg.kill()
        assert not pg.running
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.dsn(connect_timeout=2))
    pg.start()
    assert pg.proc is not None and pg.proc.pid != old_pid
    with pg.connect() as conn:
        assert conn.execute("SELECT k, v FROM s").fetchall() == [("committed", "yes")]
    assert "database system was interrupted" in pg.log_tail(limit=100_000)


def _dies_after(tmp_path: Path, body: str) -> list[str]:
    """What a Python process (the tests' modules importable) that runs
    ``body`` and then SIGKILLs itself printed: a test process that dies
    without its cleanup, as a segfault or a cut CI job leaves one."""
    script = tmp_path / "dies.py"
    script.write_text(f"{body}\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run(
        [sys.executable, script],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
        capture_output=True,
        text=True,
        timeout=120,  # a child that outlives it holds its pipes open
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    return done.stdout.split()


def _gone(pid: int) -> bool:
    """Whether ``pid`` ends (or is a zombie) within a minute."""
    deadline = time.monotonic() + 60
    while process_state(pid) not in ("", "Z") and time.monotonic() < deadline:
        time.sleep(0.05)
    return process_state(pid) in ("", "Z")


def test_a_cluster_outlives_no_test_process_that_dies_uncleanly(tmp_path: Path) -> None:
    # Its servers stop with it, and the next process to make a cluster deletes
    # its dirs, and only those whose creator is gone.
    base, pristine_base, pid = _dies_after(
        tmp_path,
        "import pg\n"
        "cluster = pg.PgCluster.create()\n"
        "pristine = next(iter(pg._PRISTINE.values()))\n"
        "print(cluster.base, pristine.base, cluster.proc.pid, flush=True)",
    )
    assert _gone(int(pid)), "the dead process's postmaster still runs"
    assert Path(base).is_dir() and Path(pristine_base).is_dir()
    with PgCluster.create(start=False) as alive:
        sweep_orphans()
        assert not Path(base).exists() and not Path(pristine_base).exists()
        assert alive.base.is_dir()  # its creator (this process) lives


def test_a_server_a_test_starts_dies_with_its_test_process(tmp_path: Path) -> None:
    # conftest.tied: the daemons, redis-servers and prometheus the tests start.
    (pid,) = _dies_after(
        tmp_path,
        "import pathlib, subprocess, time, conftest\n"
        "proc = subprocess.Popen(conftest.tied(['sleep', '300']))\n"
        # setpriv asks for the signal just before it runs the command: a parent
        # that dies before that (a loaded machine) is a race no test starts.
        "comm = pathlib.Path(f'/proc/{proc.pid}/comm')\n"
        "while comm.read_text() != 'sleep\\n':\n"
        "    time.sleep(0.001)\n"
        "print(proc.pid, flush=True)",
    )
    assert _gone(int(pid)), "the dead test process's server still runs"


@pytest.mark.parametrize("mode", ["smart", "fast", "immediate"])
def test_stop_modes_and_restart(pg_own_cluster: PgCluster, mode: str) -> None:
    pg = pg_own_cluster
    with pg.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE s (k int)")
        conn.execute("INSERT INTO s VALUES (1)")
    pg.stop(mode)  # type: ignore[arg-type]
    assert not pg.running
    pg.start()
    with pg.connect(autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM s").fetchone() == (1,)
        pg.restart()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with pg.connect() as conn:
        assert conn.execute("SELECT count(*) FROM s").fetchone() == (1,)


def test_commit_delay_makes_commits_slow(pg_own_cluster: PgCluster) -> None:
    pg = pg_own_cluster
    with pg.connect() as conn:
        conn.execute("CREATE TABLE s (k int)")
        conn.commit()

        def commit_time() -> float:
            conn.execute("INSERT INTO s VALUES (1)")
            start = time.monotonic()
            conn.commit()
            return time.monotonic() - start

        pg.set_commit_delay(0.05)
        assert min(commit_time() for _ in range(3)) >= 0.045
        pg.set_commit_delay(0)  # (how fast a commit then is depends on the machine's load)


def test_a_promoted_replica_takes_over_a_multi_host_dsn(
    pg_own_cluster: PgCluster, tcp_proxy: ProxyFactory
) -> None:
    primary = pg_own_cluster
    replica = primary.create_replica()
    dsn = multi_host_dsn([primary, replica], connect_timeout=2)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.info.port == primary.port
        conn.execute("CREATE TABLE s (k text PRIMARY KEY)")
        conn.execute("INSERT INTO s VALUES ('before failover')")
        lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
    assert lsn is not None
    with replica.connect(autocommit=True) as conn:
        deadline = time.monotonic() + 10
        while conn.execute(
            "SELECT pg_last_wal_replay_lsn() < %s::pg_lsn", (lsn[0],)
        ).fetchone() != (False,):
            assert time.monotonic() < deadline, "replica did not catch up"
            time.sleep(0.02)
        assert conn.execute("SELECT k FROM s").fetchall() == [("before failover",)]
        with pytest.raises(errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO s VALUES ('on a standby')")

    # A single-address DSN behind a proxy, as a managed database's endpoint would be.
    endpoint = tcp_proxy(primary.port)

    primary.kill()
    replica.promote()
    endpoint.retarget(replica.port)
    via_proxy = primary.dsn(port=endpoint.port)
    for target, port in ((dsn, replica.port), (via_proxy, endpoint.port)):
        with psycopg.connect(target, autocommit=True) as conn:
            assert conn.info.port == port
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
            conn.execute("INSERT INTO s VALUES (%s) ON CONFLICT DO NOTHING", (str(port),))
    with replica.connect() as conn:
        assert conn.execute("SELECT count(*) FROM s").fetchone() == (3,)

    # The old primary, started again, still thinks it is one: a multi-host DSN does
    # not protect against split brain; the operator must keep it down (or rewind it).
    primary.start()
    with primary.connect() as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)


# ------------------------------------------------------------------- the proxy


def test_proxy_delays_each_direction(pg_db: PgDatabase, tcp_proxy: ProxyFactory) -> None:
    proxy = tcp_proxy(pg_db.cluster.port)
    with psycopg.connect(pg_db.dsn(port=proxy.port)) as conn:
        proxy.set_delay(0.05)
        slow = min(round_trip(conn) for _ in range(3))
        proxy.set_delay(0)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # 50 ms each way: a lower bound, which the machine's load cannot break (how
    # fast it is without the delay depends on that load: not asserted)
    assert slow >= 0.1
    assert proxy.connections_made == 1


def test_proxy_partition_is_silent_and_heals(pg_db: PgDatabase, tcp_proxy: ProxyFactory) -> None:
    proxy = tcp_proxy(pg_db.cluster.port)
    with psycopg.connect(pg_db.dsn(port=proxy.port), autocommit=True) as conn:
        proxy.partition()
        result: list[object] = []
        query = threading.Thread(
            target=lambda: result.append(conn.execute("SELECT 42").fetchone()), daemon=True
        )
        query.start()
        query.join(0.5)
        assert query.is_alive() and result == []  # no answer, no error

        # New connections hang too, until libpq's connect_timeout (2 s at least).
        start = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="timeout"):
            psycopg.connect(pg_db.dsn(port=proxy.port, connect_timeout=2))
        assert time.monotonic() - start >= 1.9

        proxy.heal()
        query.join(5)
        assert result == [(42,)]  # the query went through once the link came back
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_proxy_cut_resets_and_refuses_until_healed(
    pg_db: PgDatabase, tcp_proxy: ProxyFactory
) -> None:
    proxy = tcp_proxy(pg_db.cluster.port)
    conn = psycopg.connect(pg_db.dsn(port=proxy.port), autocommit=True)
    assert proxy.open_connections == 1
    proxy.cut()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError, match="refused"):
        # refused, not a timeout: the message says which
        psycopg.connect(pg_db.dsn(port=proxy.port, connect_timeout=2))
    assert conn.closed

    proxy.heal()
    with psycopg.connect(pg_db.dsn(port=proxy.port)) as conn2:
        assert conn2.execute("SELECT 1").fetchone() == (1,)
        assert proxy.drop_connections() == 1
        with pytest.raises(psycopg.OperationalError):
            conn2.execute("SELECT 1")
    with psycopg.connect(pg_db.dsn(port=proxy.port)) as conn3:
        assert conn3.execute("SELECT 1").fetchone() == (1,)
