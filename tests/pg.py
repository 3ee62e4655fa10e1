"""A throwaway PostgreSQL cluster for tests and benchmarks, from Debian's `postgresql`.

``PgCluster.create()`` makes a cluster in a new temp dir (a copy of one ``initdb`` made
once per process) and starts ``postgres`` on 127.0.0.1 (a free port) and on a Unix
socket in that dir. The postmaster is a child of this process (not daemonized by
``pg_ctl``), so ``kill()`` can SIGKILL it and reap it.

A process that dies without cleaning up (a segfault, SIGKILL, a CI job cut
short) leaves nothing running: the postmasters its main thread started get
SIGQUIT (immediate shutdown) when it dies (``setpriv --pdeathsig``), and the next process that
creates a cluster deletes the dirs of clusters whose creator is gone (each
holds ``owner.lock``, an ``flock`` the kernel releases with its process).

PostgreSQL refuses to run as root. As root (CI), the server runs as the system user
``sessiond-test``, created on first use, through ``setpriv``; otherwise as the current
user. The temp dir is that user's, mode 0700, so only it and root reach the socket.

Authentication: the superuser ``postgres`` is trusted on the Unix socket (the admin
path of these helpers); everyone else, and everything over TCP, needs a password
(scram-sha-256). The daemon's role ``sessiond`` (LOGIN, not superuser, owner of the
databases made for it) has a random password: ``cluster.password``.

Durability settings are the production ones (``fsync``, ``synchronous_commit``,
``full_page_writes`` on); only what does not change semantics is made fast: initdb
without its final sync, the C locale, no JIT.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import itertools
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

SERVER_USER = "sessiond-test"
DIR_PREFIX = "sessiond-pg-"
OWNER_LOCK = "owner.lock"
SUPERUSER = "postgres"
APP_ROLE = "sessiond"
APP_DB = "sessiond"
START_TIMEOUT = 60.0

StopMode = Literal["smart", "fast", "immediate"]
_STOP_SIGNALS: dict[str, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}

_HBA = """\
# TYPE  DATABASE     USER        ADDRESS        METHOD
local   all          postgres                   trust
local   replication  postgres                   trust
local   all          all                        scram-sha-256
host    all          all         127.0.0.1/32   scram-sha-256
host    replication  all         127.0.0.1/32   scram-sha-256
"""

# Settings every cluster gets; ``PgCluster.create(settings=...)`` adds or overrides.
BASE_SETTINGS: dict[str, str | int] = {
    "listen_addresses": "127.0.0.1",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "jit": "off",
    "logging_collector": "off",
    "log_line_prefix": "%m [%p] %q%u@%d ",
    "lc_messages": "C",
    "wal_keep_size": "128MB",
    # A standby whose primary just vanished waits this long before it looks for WAL
    # again, and a promotion requested meanwhile waits with it: with the default 5 s,
    # one promotion in four took 5.1 s instead of 0.12 s (bench/pg_probe.py).
    "wal_retrieve_retry_interval": "100ms",
    "max_connections": 200,
}


class PgUnavailable(Exception):
    """The PostgreSQL server programs are not installed (the only reason tests skip)."""


class PgError(RuntimeError):
    """The cluster did not do what was asked (the message quotes its log where it helps)."""


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` with the server programs.

    ``SESSIOND_PG_BINDIR`` points elsewhere (a non-Debian install)."""
    wanted = ("initdb", "postgres", "pg_basebackup")
    explicit = os.environ.get("SESSIOND_PG_BINDIR")
    candidates = (
        [Path(explicit)]
        if explicit
        else sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1,
            reverse=True,
        )
    )
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in wanted):
            return bindir
    where = explicit or "/usr/lib/postgresql/*/bin"
    raise PgUnavailable(
        f"PostgreSQL server programs (initdb, postgres) not found in {where}: "
        "install Debian's postgresql package (bash scripts/test.sh does)"
    )


@dataclass(frozen=True)
class ServerUser:
    """The Unix user the server runs as, and how to run a command as it."""

    name: str
    uid: int
    gid: int

    def wrap(
        self, cmd: Sequence[str | os.PathLike[str]], pdeathsig: signal.Signals | None = None
    ) -> list[str]:
        """``cmd`` as this user; with ``pdeathsig``, it gets that signal when the
        thread that starts it ends (the process, for the main thread)."""
        args = [os.fspath(c) for c in cmd]
        prefix = ["setpriv"]
        if pdeathsig is not None:
            # Set after the change of user, which would clear it.
            prefix.append(f"--pdeathsig={pdeathsig.name}")
        if self.uid != os.geteuid():
            prefix += [f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]
        return args if prefix == ["setpriv"] else [*prefix, "--", *args]

    def own(self, path: Path) -> None:
        if self.uid != os.geteuid():
            os.chown(path, self.uid, self.gid)


def server_user() -> ServerUser:
    """The current user, or as root the ``sessiond-test`` system user (created if missing)."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        made = subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                SERVER_USER,
            ],
            capture_output=True,
            text=True,
        )
        try:  # another test run may have created it meanwhile
            entry = pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise PgError(f"could not create user {SERVER_USER}: {made.stderr.strip()}") from None
    return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _conf_value(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def pids_with_parent(ppid: int) -> list[int]:
    """The pids of the running processes whose parent is ``ppid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == ppid:
            found.append(int(entry.name))
    return found


def process_state(pid: int) -> str:
    """The process state letter from /proc (R, S, T, Z, ...), "" when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[0]


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_CHILD_SUBREAPER = 36


def _set_child_subreaper(on: bool) -> None:
    _libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


class PgCluster:
    """One PostgreSQL cluster (a data dir and, while running, its postmaster)."""

    _names = itertools.count()

    def __init__(
        self,
        base: Path,
        *,
        bindir: Path,
        user: ServerUser,
        port: int,
        superuser_password: str,
        password: str,
        name: str,
    ) -> None:
        self.base = base
        self.datadir = base / "data"
        self.socket_dir = base
        self.log_path = base / "postgres.log"
        self.bindir = bindir
        self.user = user
        self.host = "127.0.0.1"
        self.port = port
        self.superuser_password = superuser_password
        self.app_role = APP_ROLE
        self.password = password
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.replicas: list[PgCluster] = []
        self._started_once = False
        self._owner = -1  # the descriptor holding base/owner.lock (empty())

    # ----------------------------------------------------------------- creation

    @classmethod
    def create(
        cls,
        *,
        settings: Mapping[str, str | int] | None = None,
        start: bool = True,
        name: str | None = None,
    ) -> PgCluster:
        """A new cluster in a temp dir, started unless ``start=False``.

        It has the role ``sessiond`` and the database ``sessiond`` it owns. ``settings``
        are added to postgresql.conf. Its data dir is a copy of one that initdb made and
        bootstrapped once per process (half the time of initdb and bootstrap: most of
        either is creating its 1,300 files)."""
        bindir = find_bindir()
        user = server_user()
        pristine = _pristine(bindir, user)
        cluster = cls.empty(bindir=bindir, user=user, like=pristine, name=name)
        try:
            cluster._run_as_server(["cp", "-a", pristine.datadir, cluster.datadir], "copy")
            cluster._write_settings(
                {
                    **(settings or {}),
                    "port": cluster.port,
                    "unix_socket_directories": str(cluster.socket_dir),
                }
            )
            if start:
                cluster.start()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    @classmethod
    def empty(
        cls,
        *,
        bindir: Path,
        user: ServerUser,
        like: PgCluster | None = None,
        name: str | None = None,
    ) -> PgCluster:
        """A cluster object on a new temp dir without a data dir (yet); with ``like``,
        its passwords (for a copy or a standby of that cluster)."""
        _sweep_orphans()
        base = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        owner = _own_dir(base)
        user.own(base)
        cluster = cls(
            base,
            bindir=bindir,
            user=user,
            port=free_port(),
            superuser_password=like.superuser_password if like else secrets.token_urlsafe(16),
            password=like.password if like else secrets.token_urlsafe(16),
            name=name or f"pg{next(cls._names)}",
        )
        cluster._owner = owner
        return cluster

    def _run_as_server(self, cmd: Sequence[str | os.PathLike[str]], what: str) -> None:
        done = subprocess.run(
            self.user.wrap(cmd),
            cwd=self.base,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise PgError(f"{what} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def _env(self) -> dict[str, str]:
        # A clean environment: none of the caller's PG* variables reach the server tools.
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}

    def _initdb(self, settings: Mapping[str, str | int]) -> None:
        pwfile = self.base / "superuser.pw"
        pwfile.write_text(self.superuser_password + "\n")
        self.user.own(pwfile)
        self._run_as_server(
            [
                self.bindir / "initdb",
                "--pgdata", self.datadir,
                "--username", SUPERUSER,
                "--pwfile", pwfile,
                "--auth-local", "trust",
                "--auth-host", "scram-sha-256",
                "--encoding", "UTF8",
                "--locale", "C",
                "--no-sync",
                "--no-instructions",
            ],
            "initdb",
        )  # fmt: skip
        pwfile.unlink()
        hba = self.datadir / "pg_hba.conf"
        hba.write_text(_HBA)
        self.user.own(hba)
        self._write_settings(
            {**settings, "port": self.port, "unix_socket_directories": str(self.socket_dir)}
        )

    def _write_settings(self, settings: Mapping[str, str | int]) -> None:
        """Append to postgresql.conf (later lines win); applied at the next start."""
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write("\n# sessiond tests\n")
            for key, value in settings.items():
                conf.write(f"{key} = {_conf_value(value)}\n")

    def _bootstrap(self) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(self.app_role), sql.Literal(self.password)
                )
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(APP_DB), sql.Identifier(self.app_role)
                )
            )

    # ------------------------------------------------------------ process control

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the postmaster on this data dir; return once it accepts connections
        (after crash recovery, when there was a crash; read-only, for a standby)."""
        if self.running:
            raise PgError(f"{self.name} is already running")
        for attempt in itertools.count():
            try:
                self._start_once(timeout)
                self._started_once = True
                return
            except PgError:
                # The free port was taken between free_port() and bind(): pick
                # another, but only before anyone was given a DSN with this one.
                if (
                    self._started_once
                    or attempt >= 3
                    or "Address already in use" not in (self.log_tail())
                ):
                    raise
                self.port = free_port()
                self._write_settings({"port": self.port})

    def _start_once(self, timeout: float) -> None:
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        # The death signal comes when the starting thread ends: only the main
        # thread's end is the process's (bench/pg_probe.py starts a server from
        # a worker thread, which ends before the server should).
        main_thread = threading.current_thread() is threading.main_thread()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.user.wrap(
                    [self.bindir / "postgres", "-D", self.datadir],
                    pdeathsig=signal.SIGQUIT if main_thread else None,
                ),
                cwd=self.base,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the tests reaches pytest, not the server
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise PgError(f"{self.name}: postgres exited at start\n{self.log_tail(log_offset)}")
            if self._pid_file_status() in ("ready", "standby"):
                return
            time.sleep(0.02)
        self.kill()
        raise PgError(f"{self.name}: not ready after {timeout:.0f}s\n{self.log_tail(log_offset)}")

    def _pid_file_status(self) -> str:
        """The postmaster's own state, as ``pg_ctl -w`` reads it (line 8 of postmaster.pid)."""
        assert self.proc is not None
        try:
            lines = (self.datadir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return ""
        if len(lines) < 8 or lines[0].strip() != str(self.proc.pid):
            return ""
        return lines[7].strip()

    def stop(self, mode: StopMode = "fast", timeout: float = START_TIMEOUT) -> None:
        """Shut down as ``pg_ctl stop -m mode`` does: smart waits for clients to leave,
        fast disconnects them and checkpoints, immediate quits without a checkpoint
        (the next start does crash recovery)."""
        if not self.running:
            self.proc = None
            return
        assert self.proc is not None
        self.proc.send_signal(_STOP_SIGNALS[mode])
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise PgError(f"{self.name}: {mode} stop took over {timeout:.0f}s") from None
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the postmaster and every server process, as a crash would; wait
        until they are gone. Committed transactions survive (their WAL is fsynced)."""
        if self.proc is None:
            return
        pid = self.proc.pid
        if self.proc.poll() is None:
            # Freeze the postmaster so it forks nothing while its children are listed.
            os.kill(pid, signal.SIGSTOP)
            while process_state(pid) not in ("T", "Z", ""):
                time.sleep(0.001)
            children = pids_with_parent(pid)
            # Adopt the orphans and reap them, rather than leave zombies to a pid 1
            # that may not reap (as in some containers).
            _set_child_subreaper(True)
            try:
                os.kill(pid, signal.SIGKILL)
                for child in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
                self.proc.wait()
                for child in children:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(child, 0)
            finally:
                _set_child_subreaper(False)
        self.proc = None

    def restart(self, mode: StopMode = "fast") -> None:
        self.stop(mode)
        self.start()

    def promote(self, timeout: float = START_TIMEOUT) -> None:
        """Promote this standby to a primary (``pg_promote()``, as ``pg_ctl promote``);
        return once it accepts writes."""
        with self.admin() as conn:
            row = conn.execute(
                "SELECT pg_promote(wait => true, wait_seconds => %s)", (int(timeout),)
            ).fetchone()
        if not row or row[0] is not True:
            raise PgError(f"{self.name}: promotion did not finish\n{self.log_tail()}")
        deadline = time.monotonic() + timeout
        while self._pid_file_status() != "ready":
            if time.monotonic() > deadline:
                raise PgError(f"{self.name}: not ready after promotion\n{self.log_tail()}")
            time.sleep(0.02)

    def create_replica(
        self,
        *,
        settings: Mapping[str, str | int] | None = None,
        start: bool = True,
        name: str | None = None,
    ) -> PgCluster:
        """A streaming standby of this (running) cluster: ``pg_basebackup -R`` into a new
        temp dir, on its own port and socket, with this cluster's settings plus
        ``settings``. ``destroy()`` of this cluster destroys it."""
        replica = PgCluster.empty(
            bindir=self.bindir,
            user=self.user,
            like=self,
            name=name or f"{self.name}-replica{len(self.replicas)}",
        )
        self.replicas.append(replica)
        replica._run_as_server(
            [
                self.bindir / "pg_basebackup",
                "--pgdata", replica.datadir,
                "--host", self.socket_dir,
                "--port", str(self.port),
                "--username", SUPERUSER,
                "--write-recovery-conf",
                "--wal-method", "stream",
                "--checkpoint", "fast",
                "--no-sync",
            ],
            "pg_basebackup",
        )  # fmt: skip
        replica._write_settings(
            {
                **(settings or {}),
                "port": replica.port,
                "unix_socket_directories": str(replica.socket_dir),
            }
        )
        if start:
            replica.start()
        return replica

    def destroy(self) -> None:
        """Kill the server (and replicas made from it) and delete its directory."""
        for replica in self.replicas:
            replica.destroy()
        with contextlib.suppress(PgError):
            self.kill()
        shutil.rmtree(self.base, ignore_errors=True)
        if self._owner >= 0:
            os.close(self._owner)
            self._owner = -1

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # --------------------------------------------------------------- connections

    def dsn(
        self,
        dbname: str = APP_DB,
        *,
        user: str | None = None,
        password: str | None = None,
        unix: bool = False,
        **params: Any,
    ) -> str:
        """libpq DSN for the daemon's role over TCP (``unix=True``: the socket), with its
        password unless ``password=""``; ``params`` add or override (``port=proxy.port``)."""
        password = self.password if password is None else password
        conninfo: dict[str, Any] = {
            "host": str(self.socket_dir) if unix else self.host,
            "port": self.port,
            "dbname": dbname,
            "user": user or self.app_role,
        }
        if password:
            conninfo["password"] = password
        return make_conninfo(**{**conninfo, **params})

    def admin_dsn(self, dbname: str = "postgres") -> str:
        """The superuser over the Unix socket (trusted there)."""
        return make_conninfo(host=str(self.socket_dir), port=self.port, dbname=dbname,
                             user=SUPERUSER)  # fmt: skip

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        """An autocommit superuser connection (close it, or use it in a ``with``)."""
        return psycopg.connect(self.admin_dsn(dbname), autocommit=True, connect_timeout=10)

    def connect(self, dbname: str = APP_DB, **kwargs: Any) -> psycopg.Connection[tuple[Any, ...]]:
        """A connection as the daemon's role, over TCP."""
        return psycopg.connect(self.dsn(dbname), connect_timeout=10, **kwargs)

    def query(
        self, query: str, params: Sequence[Any] = (), *, dbname: str = "postgres"
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser and return its rows ([] without rows)."""
        with self.admin(dbname) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    # ----------------------------------------------------------------- databases

    def create_database(self, name: str | None = None, *, template: str = "template1") -> str:
        """A new database owned by the daemon's role, copied from ``template``."""
        name = name or f"t_{secrets.token_hex(6)}"
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(self.app_role), sql.Identifier(template)
                )
            )
        return name

    def drop_database(self, name: str) -> None:
        """Drop it, disconnecting whoever is still connected."""
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    # --------------------------------------------------------------- misbehaving

    def terminate_backends(
        self, *, dbname: str | None = None, application_name: str | None = None
    ) -> int:
        """``pg_terminate_backend()`` client connections (of one database / application):
        their clients see the connection drop while the server stays up. Returns how many."""
        rows = self.query(
            """
            SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
            WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
              AND (%s::text IS NULL OR datname = %s)
              AND (%s::text IS NULL OR application_name = %s)
            """,
            (dbname, dbname, application_name, application_name),
        )
        return int(rows[0][0])

    def set_commit_delay(self, seconds: float) -> None:
        """Make every commit wait ``seconds`` (at most 0.1) before its WAL flush, like a
        slow disk: ``commit_delay`` with ``commit_siblings = 0``. 0 restores. Open
        sessions apply it from their next statement on."""
        micros = round(seconds * 1_000_000)
        if not 0 <= micros <= 100_000:
            raise ValueError("commit_delay is 0-100 ms")
        with self.admin() as conn:
            conn.execute(f"ALTER SYSTEM SET commit_delay = {micros}")
            conn.execute("ALTER SYSTEM SET commit_siblings = 0")
            conn.execute("SELECT pg_reload_conf()")
        self._wait_for_setting("commit_delay", str(micros))

    def _wait_for_setting(self, name: str, value: str, timeout: float = 10.0) -> None:
        """Wait until a reload is done: the postmaster signals every backend before it
        forks a new one with the new value, and each applies it at its next statement."""
        deadline = time.monotonic() + timeout
        while self.query("SELECT setting FROM pg_settings WHERE name = %s", (name,)) != [(value,)]:
            if time.monotonic() > deadline:
                raise PgError(f"{self.name}: {name} did not become {value}")
            time.sleep(0.01)

    # ------------------------------------------------------------------- reading

    def log_tail(self, offset: int = 0, limit: int = 4000) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return text[-limit:]

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PgCluster {self.name} {self.host}:{self.port} {state} {self.base}>"


_PRISTINE: dict[tuple[Path, int], PgCluster] = {}


def _own_dir(base: Path) -> int:
    """Hold ``base``'s owner lock for as long as this process lives (the
    descriptor is not inherited: no server keeps it). Locked under another
    name first: a sweep that opened the lock between its creation and its
    flock would find it free."""
    making = base / (OWNER_LOCK + ".new")
    fd = os.open(making, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    making.rename(base / OWNER_LOCK)
    return fd


_SWEPT = False


def _sweep_orphans() -> None:
    global _SWEPT
    if not _SWEPT:
        _SWEPT = True
        sweep_orphans()


def sweep_orphans() -> None:
    """Delete the cluster dirs whose creating process died without deleting
    them (their owner lock is free), after stopping any server still running
    on one; ``PgCluster.empty()`` does it once per process. Dirs without the
    lock (being made right now, or older than it) are left alone."""
    for base in Path(tempfile.gettempdir()).glob(DIR_PREFIX + "*"):
        try:
            fd = os.open(base / OWNER_LOCK, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # its owner lives
        try:
            _stop_orphan(base / "data")
            shutil.rmtree(base, ignore_errors=True)
        finally:
            os.close(fd)


def _stop_orphan(datadir: Path) -> None:
    """SIGKILL the postmaster of ``datadir`` if one still runs there."""
    try:
        pid = int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if os.fsencode(datadir) in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _pristine(bindir: Path, user: ServerUser) -> PgCluster:
    """The stopped, bootstrapped cluster that ``PgCluster.create()`` copies (one per
    process, deleted at exit)."""
    key = (bindir, user.uid)
    if key not in _PRISTINE:
        cluster = PgCluster.empty(bindir=bindir, user=user, name="initdb")
        try:
            cluster._initdb(BASE_SETTINGS)
            cluster.start()
            cluster._bootstrap()
            cluster.stop("fast")  # a checkpoint: copies start without recovery
        except BaseException:
            cluster.destroy()
            raise
        atexit.register(cluster.destroy)
        _PRISTINE[key] = cluster
    return _PRISTINE[key]


@dataclass(frozen=True)
class PgDatabase:
    """One database of a cluster, owned by the daemon's role (what ``pg_db`` gives a test)."""

    cluster: PgCluster
    name: str

    def dsn(self, **kwargs: Any) -> str:
        """As ``PgCluster.dsn`` for this database (``unix=True``, ``password=""``, ...)."""
        return self.cluster.dsn(self.name, **kwargs)

    def connect(self, **kwargs: Any) -> psycopg.Connection[tuple[Any, ...]]:
        """A connection as the daemon's role, over TCP."""
        return self.cluster.connect(self.name, **kwargs)

    def admin(self) -> psycopg.Connection[tuple[Any, ...]]:
        """An autocommit superuser connection to this database."""
        return self.cluster.admin(self.name)


def multi_host_dsn(
    clusters: Sequence[PgCluster],
    dbname: str = APP_DB,
    *,
    target_session_attrs: str = "read-write",
    **params: Any,
) -> str:
    """One libpq DSN listing every cluster's TCP address (as a fleet would list a primary
    and its standbys): libpq tries them in order and keeps the first that matches
    ``target_session_attrs``, so after a promotion it reconnects to the new primary."""
    first = clusters[0]
    return make_conninfo(
        host=",".join(c.host for c in clusters),
        port=",".join(str(c.port) for c in clusters),
        dbname=dbname,
        user=first.app_role,
        password=first.password,
        target_session_attrs=target_session_attrs,
        **params,
    )


@contextlib.contextmanager
def pg_cluster(**kwargs: Any) -> Iterator[PgCluster]:
    """``with pg_cluster() as c:`` a started cluster, destroyed on exit (for scripts)."""
    cluster = PgCluster.create(**kwargs)
    try:
        yield cluster
    finally:
        cluster.destroy()
