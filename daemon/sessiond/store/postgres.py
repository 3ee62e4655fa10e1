"""The PostgreSQL store: one database that a fleet of hosts shares
(docs/shared-store.md states what it promises).

Everything runs on the daemon's event loop with asyncio psycopg; only the few
blocking calls of the :class:`~.api.Store` interface (whole-table reads inside
MULTI, a script's undeclared key, library use) wait, and they wait on a
helper thread's own loop and connection, never on the event loop's. Its parts:

* **group commit** (:meth:`PostgresStore._write_forever`): every change memory
  makes is recorded in the overlay's *pending* map (as on SQLite); one writer
  takes the whole map and commits it in one transaction on a connection of its
  own (advisory locks on its keys, one ``unnest`` upsert, one delete, the
  sliding-TTL renewals, the notifications of what changed: one call of
  :data:`.pgsql.COMMIT_FUNCTION`, its arrays typed by :mod:`.pgarrays`,
  prepared once per connection and sent through libpq directly by
  :mod:`.pgwire`). Replies waiting in :meth:`after_commit` are released when
  it returns. One commit at a time, so two changes to a key commit in the
  order memory made them;
* **decisions** (:meth:`decide`, :meth:`finish`): a command whose outcome
  depends on a key's current value runs inside a transaction that holds its
  keys' advisory locks and row locks, opened with their rows as the database
  has them (:mod:`.pgsql` says why both locks). The decisions asked for
  until a pooled connection is free to open them share one transaction
  (:class:`_Batch`), committed when the last of them is finished;
* **notifications** (:meth:`_listen_forever`): a connection of its own
  LISTENs for other hosts' changes and tells the keyspace
  (:class:`~.api.Coherence`). It sends itself a heartbeat every
  ``heartbeat_interval`` and must hear it back within as long: a notification
  connection that is cut, terminated or silent is known lost within twice
  that, and ``coherent`` is false until it is back;
* **a small pool** of connections for reads, decisions and sweeps
  (:class:`_Pool`), opened on demand;
* **timeouts**: every database operation gets ``timeout`` seconds. When it is
  over, the connection is closed at once: asyncio's cancellation alone makes
  psycopg send a cancel request and wait for the server, 10 s on a silent link
  (bench/pg_probe.py); a second cancellation makes it close instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import socket
import struct
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter
from typing import Any, NamedTuple, TypeVar

import psycopg
import structlog
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.pq.abc import PGresult

from ..stats import SharedStats, StoreStats
from . import pgsql, pgwire
from .api import (
    HASH_SPACE,
    Change,
    Coherence,
    Decision,
    Hook,
    Kept,
    Outage,
    Renewal,
    Row,
    StoreError,
    TableCounts,
    TableSlice,
    as_row,
    call_waiter,
)
from .overlay import Overlay
from .pgarrays import ADAPTERS, Bytea, Text, dump, load_int4

log = structlog.get_logger("sessiond.store")

T = TypeVar("T")
Conn = psycopg.AsyncConnection[tuple[Any, ...]]
# A decision's transaction as opened: its keys' rows and versions, and the lock
# ids other transactions held (a batch's, which does not wait for them).
Opened = tuple[dict[bytes, Row | None], dict[bytes, int], set[int]]
Work = Callable[[Conn], Coroutine[Any, Any, T]]

_RETRY_AFTER_FAILURE = 1.0
_CHECK_INTERVAL = 1.0
_PENDING_BOUND = 100_000  # changes pending before writers are held back (lagging)
_SCHEMA_RETRY = 0.5  # seconds between tries of the schema lock at start
_EXPIRE_CHUNK = 500  # due rows a sweep takes per transaction
_BATCH_LIMIT = 64  # decisions one transaction opens at most (_open_batch)
_COMMIT_STATEMENT = pgsql.COMMIT_STATEMENT.encode()
_DECIDED = pgsql.DECIDED_STATEMENT.encode()
_BARRIER = pgsql.BARRIER_STATEMENT.encode()
_LOCK_KEYS = pgsql.LOCK_KEYS.encode()
_SELECT_LOCKED = pgsql.SELECT_LOCKED.encode()
_TRY_LOCK_KEYS = pgsql.TRY_LOCK_KEYS.encode()
_SELECT_TRIED = pgsql.SELECT_TRIED.encode()
# Each pooled connection's first decision prepares them all, in the round trip
# that opens its transaction.
_PREPARE_DECISIONS = (
    *((name.encode(), sql.encode()) for name, sql in pgsql.OPEN_PREPARED),
    (_DECIDED, pgsql.DECIDED_PREPARED.encode()),
    (_BARRIER, pgsql.BARRIER_PREPARED.encode()),
)
_F8 = struct.Struct("!d").unpack
_I2 = struct.Struct("!h").unpack
_I8 = struct.Struct("!q").unpack
_WAIT_LOG_EVERY = 5.0  # seconds between start-up's "still waiting" lines
_CONNECTION_ERRORS = (
    psycopg.OperationalError,
    pg_errors.ReadOnlySqlTransaction,  # a standby, or a primary demoted under us
    OSError,
)


def _why(exc: BaseException) -> str:
    """An error as one line for a log or a reply (libpq's are several). A
    server's error gives its primary message alone: the rest of its text is
    the CONTEXT of the statement that failed, which inside the commit's
    function (pgsql.COMMIT_FUNCTION) is a line of PL/pgSQL and its signature."""
    primary = exc.diag.message_primary if isinstance(exc, psycopg.Error) else None
    text = (primary or str(exc)).strip() or type(exc).__name__
    return " ".join(text.split())


# The server's own bounds, set from persistence.timeout (connection_params):
# the statement ran for the whole timeout, its connection did not die idle.
_SERVER_TIMEOUTS = (pg_errors.QueryCanceled, pg_errors.LockNotAvailable)


def _timed_out(exc: BaseException, timeout: float) -> str:
    """A server-side timeout as the client-side one is told: naming the
    timeout (persistence.timeout), with the server's words after it."""
    return f"no answer within {timeout:g}s ({_why(exc)})"


def _with_password_hint(why: str) -> str:
    """libpq's refusal of a password, missing or wrong, with where sessiond
    takes one from: libpq's words name none of those places."""
    if "no password supplied" in why or "password authentication failed" in why:
        return (
            f"{why} (sessiond takes the role's password from persistence.password_file, "
            "else the DSN's password, PGPASSWORD or PGPASSFILE)"
        )
    return why


def _commit_failure(exc: BaseException, timeout: float) -> str:
    """Why a commit failed, for the reply and the log."""
    if isinstance(exc, StoreError):  # "store commit failed: <why>", made here
        return str(exc).partition(": ")[2] or str(exc)
    if isinstance(exc, pg_errors.DivisionByZero):  # the fence (pgsql.COMMIT_FUNCTION's)
        return "it reached the database after its timeout and was rolled back"
    if isinstance(exc, _SERVER_TIMEOUTS):
        return _timed_out(exc, timeout)
    return _why(exc)


def _in_doubt(exc: BaseException) -> bool:
    """Whether a commit that failed with ``exc`` may have landed all the
    same: its answer lost with its connection (libpq's error, or the
    server's at shutdown: classes 08 and 57P) or not back within the
    timeout, as opposed to a statement the server refused, which rolls the
    transaction back."""
    if isinstance(exc, psycopg.Error) and exc.sqlstate is not None:
        return exc.sqlstate.startswith(("08", "57P"))
    return True


class _Slot:
    """A connection's slot for its commits' tokens (pgsql.TOKENS), and the
    token of its last commit that landed (0: none yet)."""

    __slots__ = ("id", "last")

    def __init__(self) -> None:
        self.id = secrets.randbits(63)
        self.last = 0


class _Sent(NamedTuple):
    """A commit as sent, to ask after when its answer is lost: its
    connection's slot and its token (pgsql.TOKENS)."""

    slot: int
    token: int


def connection_params(dsn: str, password: str | None, timeout: float, role: str) -> dict[str, Any]:
    """libpq parameters for one of the store's connections: the DSN's, plus
    the password given apart (never in a log line), an ``application_name``
    saying which connection it is (``<the DSN's or sessiond>:<role>``), and,
    unless the DSN says otherwise, what failures need: a read-write server
    among several hosts (failover), TCP keepalives, and server-side bounds on
    statements, lock waits and transactions left open (a host that hangs
    mid-decision must not hold its locks forever). Always UTF-8 on the wire,
    whatever the DSN or the database says: :mod:`.pgarrays` sends text as
    UTF-8, and the server converts it to the database's encoding."""
    params: dict[str, Any] = conninfo_to_dict(dsn)
    if password is not None:
        params["password"] = password
    base = params.get("application_name") or "sessiond"
    params["application_name"] = f"{base}:{role}"
    params["client_encoding"] = "UTF8"
    params.setdefault("connect_timeout", str(max(2, math.ceil(timeout))))
    hosts = str(params.get("host", "")) + str(params.get("hostaddr", ""))
    if "," in hosts:
        params.setdefault("target_session_attrs", "read-write")
    for name, value in (
        ("keepalives", "1"),
        ("keepalives_idle", "5"),
        ("keepalives_interval", "2"),
        ("keepalives_count", "3"),
    ):
        params.setdefault(name, value)
    ms = max(1, round(timeout * 1000))
    ours = (
        f"-c statement_timeout={ms} -c lock_timeout={ms} "
        f"-c idle_in_transaction_session_timeout={max(5000, 4 * ms)} "
        "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
    )
    given = params.get("options")
    params["options"] = f"{ours} {given}" if given else ours
    return params


def _ignore(error: StoreError | None) -> None:
    """What a decision nobody waits for is done with."""


_CLOSED = "store decide failed: the store is closed"
# A commit cut short by a stop (aclose): whether it landed is not asked.
_CLOSING = "store commit outcome unknown: the store is closing"


def _fail(asks: list[_Ask], error: StoreError | str) -> None:
    """Answer the decisions asked for that still wait with ``error``."""
    exc = error if isinstance(error, StoreError) else StoreError(error)
    for ask in asks:
        if not ask.future.done():
            ask.future.set_exception(exc)


def _row(fields: tuple[Any, ...]) -> Row:
    """A :class:`Row` from ``value, context, ..., kind`` as the table has them."""
    value, context, created, updated, accessed, ttl, deadline, kind = fields
    return Row(bytes(value), context, created, updated, accessed, ttl, deadline, int(kind))


class _Batch:
    """One transaction, on one pooled connection, holding the keys of the
    decisions asked for while it waited for the connection (disjoint: the
    keyspace holds a key for one decision at a time). It commits once the last
    of them is finished, their changes together."""

    __slots__ = ("conn", "decisions", "later", "unfinished")

    def __init__(self, conn: Conn, later: list[_Ask]) -> None:
        self.conn = conn
        self.decisions: list[PgDecision] = []
        self.unfinished = 0
        # Decisions it did not keep but holds a key of (a lock it took before
        # finding another of their keys held elsewhere, which it cannot give
        # back before it ends): they open once it has ended.
        self.later = later


class PgDecision:
    """An open decision (:class:`~.api.Decision`): its keys, inside the
    transaction of its batch; ``done`` once it is finished."""

    __slots__ = ("batch", "changes", "done", "error", "keys", "rows", "versions")

    def __init__(
        self,
        batch: _Batch,
        keys: frozenset[bytes],
        rows: dict[bytes, Row | None],
        versions: dict[bytes, int],
    ) -> None:
        self.batch = batch
        self.keys = keys
        self.rows = rows
        self.versions = versions
        self.changes: dict[bytes, Change] = {}
        self.error: StoreError | None = None
        self.done: Callable[[StoreError | None], None] | None = None

    def record(self, key: bytes, change: Kept) -> None:
        self.changes[key] = as_row(change)


class _Ask:
    """A decision asked for, waiting for a batch to open it."""

    __slots__ = ("future", "keys")

    def __init__(self, keys: frozenset[bytes], future: asyncio.Future[PgDecision]) -> None:
        self.keys = keys
        self.future = future


class _Waiter:
    """A reply waiting for every change recorded before it (``seq``) and for
    every decision open when it asked. A failed commit of the changes after
    ``low`` and up to ``seq`` is its error (``low``: those before its own
    changes, which a commit takes together; or, for a reply that shows what
    it read, those committed when it asked); ``kept``: the error a reply gets
    for changes that a failed commit keeps to commit later (batch)."""

    __slots__ = ("callback", "decisions", "error", "kept", "low", "seq")

    def __init__(
        self,
        seq: int,
        decisions: tuple[Decision, ...],
        callback: Callable[[StoreError | None], None],
        low: int | None = None,
        *,
        kept: bool = True,
    ) -> None:
        self.low = seq - 1 if low is None else low
        self.kept = kept
        self.seq = seq
        self.decisions = decisions
        self.callback = callback
        self.error: StoreError | None = None


class _Pool:
    """A few connections, opened on demand, for reads, decisions and sweeps.
    A connection comes back through :meth:`release` (kept if healthy and
    idle) or :meth:`discard` (closed)."""

    def __init__(
        self, connect: Callable[[], Awaitable[Conn]], size: int, stats: SharedStats
    ) -> None:
        self.connect = connect
        self.size = size
        self.stats = stats
        self.idle: list[Conn] = []
        self.opened = 0
        self.waiting: list[asyncio.Future[None]] = []
        self.closing: set[asyncio.Future[None]] = set()

    async def acquire(self) -> tuple[Conn, bool]:
        """A connection, and whether it was opened just now (one that idled
        may have outlived its server: a failure on it is worth one retry)."""
        while True:
            while self.idle:
                conn = self.idle.pop()
                if not conn.closed:
                    self._count()
                    return conn, False
                self.opened -= 1
            if self.opened < self.size:
                self.opened += 1
                try:
                    conn = await self.connect()
                except BaseException:
                    self.opened -= 1
                    self._wake()
                    raise
                self._count()
                return conn, True
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiting.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self.waiting.remove(waiter)

    def release(self, conn: Conn) -> None:
        if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
            self.discard(conn)
            return
        self.idle.append(conn)
        self._count()
        self._wake()

    def discard(self, conn: Conn) -> None:
        self.opened -= 1
        self._close(conn)
        self._count()
        self._wake()

    def reset(self) -> None:
        """Close the idle connections (their server may be gone)."""
        idle, self.idle = self.idle, []
        for conn in idle:
            self.opened -= 1
            self._close(conn)
        self._count()

    def _close(self, conn: Conn) -> None:
        if not conn.closed:
            closing = asyncio.ensure_future(conn.close())
            self.closing.add(closing)
            closing.add_done_callback(self.closing.discard)

    def _wake(self) -> None:
        for waiter in self.waiting:
            if not waiter.done():
                waiter.set_result(None)
                return

    def _count(self) -> None:
        self.stats.pool_size = self.opened
        self.stats.pool_in_use = self.opened - len(self.idle)


class _Helper:
    """A thread with an event loop and a connection of its own, for the
    store's blocking calls made on the event loop's thread (which must not
    wait for work scheduled on itself)."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.loop = asyncio.new_event_loop()
        self.conn: Conn | None = None
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="sessiond-pg-helper", daemon=True
        )
        self.thread.start()

    def call(self, operation: str, work: Work[T]) -> T:
        future = asyncio.run_coroutine_threadsafe(self._call(operation, work), self.loop)
        return future.result()

    async def _call(self, operation: str, work: Work[T]) -> T:
        store = self.store
        if self.conn is None or self.conn.closed:
            try:
                self.conn = await asyncio.wait_for(store._connect("helper"), store.timeout)
            except (TimeoutError, *_CONNECTION_ERRORS) as exc:
                raise StoreError(f"cannot reach the database: {_why(exc)}") from None
        conn = self.conn
        try:
            return await store._bounded(conn, work(conn), operation)
        except psycopg.Error as exc:
            await conn.close()
            why = _timed_out(exc, store.timeout) if isinstance(exc, _SERVER_TIMEOUTS) else _why(exc)
            raise StoreError(f"store {operation} failed: {why}") from None

    def close(self) -> None:
        async def shut() -> None:
            if self.conn is not None:
                await self.conn.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class _Cut:
    """Cuts an operation short by shutting its connection's socket down: the
    wait psycopg is in wakes at once and fails with the connection lost
    (:meth:`PostgresStore._bounded_here`). ``reason`` says why, once cut."""

    __slots__ = ("conn", "reason")

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.reason = ""

    def fire(self, reason: str) -> None:
        self.reason = reason
        try:
            sock = socket.socket(fileno=self.conn.fileno())
        except (OSError, psycopg.Error):
            return  # closed already
        # Not a duplicate of the descriptor (which could fail at the process's
        # limit of open files): shut libpq's own down, then let go of it.
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.detach()


class _Hearing:
    """The notification connection of one :meth:`PostgresStore._receive`:
    the heartbeat it waits for (``seq``, ``back``) and whether the
    connection failed (``lost``: why)."""

    __slots__ = ("back", "channel", "fd", "lost", "pgconn", "seq", "store")

    def __init__(self, store: PostgresStore, conn: Conn, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.channel = store._heartbeat_channel
        self.pgconn = conn.pgconn
        self.fd = conn.fileno()
        self.seq = 0
        self.back: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[str] = loop.create_future()

    def readable(self) -> None:
        """The socket's reader: what libpq can read, and the notifications in it."""
        pgconn = self.pgconn
        try:
            pgconn.consume_input()
        except psycopg.OperationalError as exc:
            self._lose(_why(exc))
            return
        try:
            while (n := pgconn.notifies()) is not None:
                self.heard(n.relname.decode(), n.extra.decode())
        except Exception as exc:  # a notification not handled: not coherent
            self._lose(f"a notification could not be handled: {exc!r}")

    def _lose(self, reason: str) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        if not self.lost.done():
            self.lost.set_result(reason)

    def heard(self, channel: str, payload: str) -> None:
        # A heartbeat's payload is its number; a barrier's starts with "b".
        if channel == self.channel and payload.isascii() and payload.isdigit():
            if len(payload) < 20 and int(payload) >= self.seq and not self.back.done():
                self.back.set_result(None)
            return
        self.store._heard(channel, payload)


class PostgresStore:
    """The shared store (:class:`~.api.SharedStore`). ``dsn`` is libpq's
    (keyword/value or URI, one or several hosts), ``password`` overrides the
    DSN's (libpq also reads ``PGPASSWORD`` and ``PGPASSFILE``). ``timeout``
    bounds every database operation; ``heartbeat_interval`` is how often the
    notification connection is checked; ``grace`` is how long after its
    deadline a row may be deleted by a sweep (longer than any host takes to
    write a renewal back). ``hook`` (tests only) is called with ``"commit"``
    before each group commit and ``"decide"`` before a decision opens; it
    may raise."""

    def __init__(
        self,
        dsn: str,
        *,
        password: str | None = None,
        durability: str = "always",
        flush_interval: float = 0.1,
        pool_size: int = 8,
        timeout: float = 2.0,
        heartbeat_interval: float = 0.5,
        grace: float = 5.0,
        retry_interval: float = _RETRY_AFTER_FAILURE,
        stats: StoreStats | None = None,
        shared_stats: SharedStats | None = None,
        host_id: str | None = None,
        hook: Hook | None = None,
    ) -> None:
        self.dsn = dsn
        self.password = password
        self.durability = durability
        self.flush_interval = flush_interval
        self.timeout = timeout
        self.heartbeat_interval = heartbeat_interval
        self.grace = grace
        self.retry_interval = retry_interval
        self.stats = stats or StoreStats()
        self.shared_stats = shared_stats or SharedStats()
        # The sweep runs every sweep_interval: a database that is down would
        # otherwise log its failure as often.
        self._expiry_outage = Outage(self.stats, "expire", "store_expiry_recovered")
        self.host_id = host_id or secrets.token_hex(6)
        self.hook = hook
        self.failure: StoreError | None = None
        self.table_lag = 0.0  # commits write the table itself
        self.coherent = False
        self.overlay = Overlay()
        self._renewals: dict[bytes, Renewal] = {}
        self._listener: Coherence | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._pool = _Pool(lambda: self._connect("pool"), pool_size, self.shared_stats)
        # The pooled connections on which a decision's statements are prepared.
        # Only true while psycopg runs no ROLLBACK, DROP or ALTER on one that it
        # keeps (it would deallocate them): a decision's own go through libpq.
        # A decision that finds them gone all the same prepares them again.
        self._decided_on: weakref.WeakSet[Conn] = weakref.WeakSet()
        # Each connection's slot for its commits' tokens (pgsql.TOKENS): the
        # writer's, and those of the pooled connections that decided.
        self._slots: weakref.WeakKeyDictionary[Conn, _Slot] = weakref.WeakKeyDictionary()
        self._token = 0  # the last commit's token, new to each commit
        self._writer_conn: Conn | None = None
        self._wake = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._committed_seq = 0
        self._commit_started = 0.0  # perf_counter of the commit running, 0 if none
        self._waiters: list[_Waiter] = []
        self._open: set[Decision] = set()  # decided, not yet committed
        # Decisions asked for and not yet taken by a batch, and whether a task
        # that will take them (_open_batch) is waiting for a connection.
        self._asked: list[_Ask] = []
        self._opening = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cuts: set[_Cut] = set()  # operations under way in _bounded_here
        self._sweeping = False
        self._remaking = False  # a decision found the commit function gone: making it
        self._stopping = False
        self._heartbeat_channel = f"{pgsql.CHANNEL}_{self.host_id}"
        self._barrier_channel = self._heartbeat_channel.encode()  # a decision's barrier's
        self._own_payloads = f"{self.host_id} "  # how this host's payloads start
        # Decisions waiting to hear their own barrier notification back.
        self._barriers: dict[str, asyncio.Future[None]] = {}
        self._barrier_seq = 0
        self._listen_up = asyncio.Event()
        self._helper: _Helper | None = None
        self._scanner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sessiond-scan")
        self.server = ""  # "host:port" of the server the writer is connected to
        # The database's clock minus this host's monotonic clock (seconds),
        # measured when the writer connects: commits are fenced in the
        # database's time.
        self._clock_offset = 0.0
        # psycopg and its warnings (a closed connection, a cancelled query)
        # are this module's to report, in the daemon's log format.
        psycopg_log = logging.getLogger("psycopg")
        psycopg_log.addHandler(logging.NullHandler())
        psycopg_log.propagate = False

    # ------------------------------------------------------------ opening

    def subscribe(self, listener: Coherence) -> None:
        self._listener = listener

    async def open(self, connect_timeout: float) -> None:
        """Connect, create or check the schema, start listening for other
        hosts' changes, and start the writer. While the database cannot be
        reached, try again with a growing pause for ``connect_timeout``
        seconds (saying so every few seconds), then raise :class:`StoreError`.
        A schema this sessiond cannot use raises at once."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        started = time.monotonic()
        last_said = started
        pause = 0.1
        while True:
            try:
                conn = await asyncio.wait_for(self._connect("writer"), self.timeout + 1)
                break
            except (TimeoutError, *_CONNECTION_ERRORS) as exc:
                waited = time.monotonic() - started
                if waited >= connect_timeout:
                    raise StoreError(
                        f"persistence.dsn: cannot connect to PostgreSQL at {self.where()} "
                        f"within persistence.connect_timeout ({connect_timeout:g}s): "
                        f"{_with_password_hint(_why(exc))}"
                    ) from None
                if time.monotonic() - last_said >= _WAIT_LOG_EVERY or last_said == started:
                    last_said = time.monotonic()
                    log.warning(
                        "store_waiting",
                        server=self.where(),
                        waited=round(waited, 1),
                        gives_up_after=connect_timeout,
                        error=_why(exc),
                    )
                # The last try is at connect_timeout, not a whole pause before it.
                await asyncio.sleep(min(pause, connect_timeout - waited))
                pause = min(pause * 2, 2.0)
        try:
            await self._lock_schema(conn, max(started + connect_timeout, time.monotonic() + 5))
            try:
                version = await self._bounded(conn, _schema(conn), "schema")
                if version < pgsql.SCHEMA_VERSION:
                    # Not bounded by the store's timeout: a migration takes seconds
                    # a million sessions. The server bounds its wait for the
                    # table's lock (lock_timeout), TCP keepalives a lost server.
                    await _migrate(conn, version)
                await self._bounded(conn, _function_at_start(conn), "schema")
            finally:
                await _unlock_schema(conn)
            await self._prepare_commit(conn)
        except psycopg.Error as exc:
            await conn.close()
            raise StoreError(f"persistence.dsn: cannot use the database: {_why(exc)}") from None
        except StoreError:
            await conn.close()
            raise
        self._writer_conn = conn
        self.server = f"{conn.info.host}:{conn.info.port}"
        await self._measure_clock(conn)
        self._helper = _Helper(self)
        self._spawn(self._listen_forever())
        self._spawn(self._write_forever())
        # Serve only once this host hears the others (else it could cache a
        # row and miss its next change); the notification connection gets
        # the rest of the start-up budget.
        left = max(self.timeout, connect_timeout - (time.monotonic() - started))
        try:
            await asyncio.wait_for(self._listen_up.wait(), left)
        except TimeoutError:
            await self.aclose()
            raise StoreError(
                f"persistence.dsn: connected to {self.server}, but could not LISTEN "
                f"for other hosts' changes within {left:g}s"
            ) from None
        log.info(
            "store_connected",
            server=self.server,
            version=conn.info.server_version,
            host_id=self.host_id,
            dsn=redact(self.dsn),
        )

    def where(self) -> str:
        """The server(s) the DSN names, for messages (never the password)."""
        try:
            params = conninfo_to_dict(self.dsn)
        except psycopg.ProgrammingError:
            return "(unparsable DSN)"
        hosts = str(params.get("host") or params.get("hostaddr") or "(libpq default)").split(",")
        ports = str(params.get("port") or "").split(",")
        if len(ports) == 1:  # one port for every host (libpq's rule), or none
            ports *= len(hosts)
        # host=pg1,pg2 port=5432,5433: pg1:5432,pg2:5433, as libpq pairs them.
        return ",".join(
            f"{host}:{port}" if port else host
            for host, port in zip(hosts, ports + [""] * len(hosts), strict=False)
        )

    async def _connect(self, role: str) -> Conn:
        params = connection_params(self.dsn, self.password, self.timeout, role)
        conn = await psycopg.AsyncConnection.connect(
            make_conninfo(**params), autocommit=True, context=ADAPTERS
        )
        return conn

    async def _lock_schema(self, conn: Conn, until: float) -> None:
        """Take the schema lock at start, waiting (and saying so, once) while
        another host holds it: one creating the schema, or migrating it, which
        takes seconds a million sessions. Past ``until``, :class:`StoreError`."""
        said = False
        while True:
            row = await self._bounded(conn, _fetch_one(conn, pgsql.SCHEMA_TRY_LOCK), "schema")
            if row is not None and row[0]:
                return
            if time.monotonic() + _SCHEMA_RETRY > until:
                raise StoreError(
                    "persistence.dsn: another host held the store's schema lock (creating "
                    "or migrating the schema) past persistence.connect_timeout"
                )
            if not said:
                said = True
                holder = await self._bounded(conn, _fetch_one(conn, pgsql.SCHEMA_HOLDER), "schema")
                pid, name, address = holder if holder is not None else (None, None, None)
                log.warning(
                    "store_schema_busy", holder_pid=pid, holder=name, holder_address=address
                )
            await asyncio.sleep(_SCHEMA_RETRY)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Nothing to start: :meth:`open` did (it has to wait, this may not)."""

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("store_task_failed", error=repr(task.exception()))

    def _hook(self, point: str) -> None:
        if self.hook is not None:
            self.hook(point)

    # ----------------------------------------------------------- timeouts

    async def _bounded(
        self, conn: Conn, work: Awaitable[T], operation: str, timeout: float = 0.0
    ) -> T:
        """``work`` on ``conn`` within ``timeout`` (the store's by default),
        else the connection is closed at once and :class:`StoreError` raised
        (see the module docstring). A cancelled caller closes it too: what it
        was doing on the connection is unknown."""
        timeout = timeout or self.timeout
        task = asyncio.ensure_future(work)
        try:
            done, _ = await asyncio.wait((task,), timeout=timeout)
        except asyncio.CancelledError:
            await _kill(task, conn)
            raise
        if done:
            return task.result()
        await _kill(task, conn)
        raise StoreError(f"store {operation} failed: no answer within {timeout:g}s")

    async def _bounded_here(self, conn: Conn, work: Awaitable[T], operation: str) -> T:
        """``work`` on ``conn`` within the store's timeout, as :meth:`_bounded`
        does, but awaited by the calling task itself: no task of its own to
        start and wait for, two turns of the event loop fewer per group commit
        (with the writer's wake: 494k -> 459k instructions per durable SET at
        ``-c 1``, ``bench/instructions.py``). When time is up the connection's
        socket is shut down (:class:`_Cut`) and :class:`StoreError` raised;
        the caller closes the connection. Only for a task that is not
        cancelled while it works (a cancellation makes psycopg ask the server
        to cancel the statement, and wait): the writer's and the decision
        transactions' tasks, which :meth:`aclose` cuts short instead."""
        cut = _Cut(conn)
        timeout = self.timeout
        handle = asyncio.get_running_loop().call_later(
            timeout, cut.fire, f"no answer within {timeout:g}s"
        )
        self._cuts.add(cut)
        try:
            result = await work
        except (psycopg.Error, OSError):
            if cut.reason:
                raise StoreError(f"store {operation} failed: {cut.reason}") from None
            raise
        finally:
            handle.cancel()
            self._cuts.discard(cut)
        if cut.reason:  # cut as the answer came: the answer stands, the socket is gone
            await conn.close()
        return result

    async def _run(self, operation: str, work: Work[T], *, retry: bool = True) -> T:
        """``work`` on a pooled connection, timed and bounded (see :meth:`_pooled`)."""
        conn, result = await self._pooled(operation, work, retry=retry)
        self._pool.release(conn)
        return result

    async def _pooled(
        self, operation: str, work: Work[T], *, retry: bool = True, here: bool = False
    ) -> tuple[Conn, T]:
        """``work`` on a pooled connection, timed and bounded, and that
        connection, which the caller gives back. A connection that idled in
        the pool and fails is retried once on a new one (nothing was done on
        it yet). ``here``: bounded by :meth:`_bounded_here` (for a task of the
        store's own, which only :meth:`aclose` stops)."""
        for attempt in (0, 1):
            started = perf_counter()
            try:
                conn, fresh = await asyncio.wait_for(self._pool.acquire(), self.timeout + 1)
            except (TimeoutError, *_CONNECTION_ERRORS) as exc:
                raise StoreError(f"store {operation} failed: {_why(exc)}") from None
            try:
                if here:
                    result = await self._bounded_here(conn, work(conn), operation)
                else:
                    result = await self._bounded(conn, work(conn), operation)
            except StoreError:
                self._pool.discard(conn)
                raise
            except _SERVER_TIMEOUTS as exc:
                # Not a connection that died while it idled: the statement ran
                # for the whole timeout, and a second try would double it.
                self._pool.discard(conn)
                raise StoreError(
                    f"store {operation} failed: {_timed_out(exc, self.timeout)}"
                ) from None
            except _CONNECTION_ERRORS as exc:
                self._pool.discard(conn)
                if attempt == 0 and retry and not fresh:
                    continue
                raise StoreError(f"store {operation} failed: {_why(exc)}") from None
            except psycopg.Error as exc:
                self._pool.discard(conn)
                raise StoreError(f"store {operation} failed: {_why(exc)}") from None
            except BaseException:
                self._pool.discard(conn)
                raise
            self.shared_stats.round_trip(operation, perf_counter() - started)
            return conn, result
        raise AssertionError("unreachable")

    def _blocking(self, operation: str, work: Work[T]) -> T:
        """Run ``work`` and wait for it, from any thread: on the event loop's
        own thread through the helper, elsewhere on the event loop."""
        loop = self._loop
        if loop is None or self._helper is None:
            raise StoreError("the store is not open")
        if threading.get_ident() == self._loop_thread:
            return self._helper.call(operation, work)
        return asyncio.run_coroutine_threadsafe(self._run(operation, work), loop).result()

    # ------------------------------------------------------------ writes

    def record(self, key: bytes, change: Kept) -> None:
        self.overlay.record(key, change)

    def clear(self) -> None:
        self.overlay.clear()

    def renew(self, renewals: dict[bytes, Renewal]) -> None:
        self._renewals.update(renewals)
        if self.durability == "always":
            self._wake.set()

    def after_commit(self, callback: Callable[[StoreError | None], None]) -> None:
        self.after_commit_for(callback, [])

    def recorded(self) -> int:
        return self.overlay.op_seq

    def uncommitted(self) -> bool:
        return self.overlay.op_seq > self._committed_seq

    def names_uncommitted(self, keys: list[bytes]) -> bool:
        return self.overlay.names_uncommitted(keys)

    def after_commit_for(
        self,
        callback: Callable[[StoreError | None], None],
        decisions: list[Decision],
        through: int | None = None,
        shown: bool = False,
    ) -> None:
        seq = self.overlay.op_seq if through is None else through
        low = self._committed_seq if shown else None
        waiting: tuple[Decision, ...] = ()
        failed: StoreError | None = None
        if decisions:  # most replies wait for none: no generators made for them
            open_ = self._open
            waiting = tuple(d for d in decisions if d in open_)
            # A decision finished already (while its connection waited for a
            # read, say) is left out of what the waiter waits for, but not its
            # outcome.
            failed = next(
                (d.error for d in decisions if d.error is not None and d not in open_), None
            )
        if self._committed_seq >= seq:
            if not waiting:
                callback(failed)
                return
            # Its writes are committed: its decisions' commits call it back
            # (_finish), the writer has nothing to do for it.
            waiter = _Waiter(seq, waiting, callback, low)
            waiter.error = failed
            self._waiters.append(waiter)
            return
        waiter = _Waiter(seq, waiting, callback, low)
        waiter.error = failed
        self._waiters.append(waiter)
        self._wake.set()

    def hold_commits(self) -> None:
        """Nothing to hold: commits run on the event loop, which a transaction
        or a script keeps until it ends."""

    def release_commits(self) -> None:
        """See :meth:`hold_commits`."""

    def lagging(self) -> bool:
        started = self._commit_started
        if started and perf_counter() - started > self.flush_interval:
            return True
        return len(self.overlay.pending) > _PENDING_BOUND

    async def _flush(self) -> None:
        """Wait until every change recorded so far is committed; raise its
        error if that commit failed."""
        done: asyncio.Future[StoreError | None] = asyncio.get_running_loop().create_future()

        def resolved(error: StoreError | None) -> None:
            if not done.done():
                done.set_result(error)

        seq = self.overlay.op_seq
        if self._committed_seq >= seq:
            return
        # Not a reply (a decision's read of this host's own writes): a
        # change kept to commit later is no outcome of its own.
        self._waiters.append(_Waiter(seq, (), resolved, kept=False))
        self._wake.set()
        error = await done
        if error is not None:
            raise error

    def _resolve(self) -> None:
        """Call back every waiter whose changes and decisions are all done."""
        if not self._waiters:
            return
        committed = self._committed_seq
        still: list[_Waiter] = []
        due: list[_Waiter] = []
        for waiter in self._waiters:
            if waiter.seq <= committed and not any(d in self._open for d in waiter.decisions):
                due.append(waiter)
            else:
                still.append(waiter)
        self._waiters = still
        for waiter in due:
            error = waiter.error
            if error is None:
                error = next((d.error for d in waiter.decisions if d.error is not None), None)
            call_waiter(waiter.callback, error)

    def _failed(self, seq: int, error: StoreError, kept: StoreError | None = None) -> None:
        """The commit of the changes after the last committed and up to
        ``seq`` failed: the waiters whose range (``low``, ``seq``] meets
        theirs get the error, or ``kept`` if given (the changes are kept to
        commit later) and they are replies. A waiter for changes committed
        before (one that waits for a decision) is not theirs."""
        since = self._committed_seq
        due: list[_Waiter] = []
        still: list[_Waiter] = []
        for waiter in self._waiters:
            (due if since < waiter.seq and waiter.low < seq else still).append(waiter)
        self._waiters = still
        for waiter in due:
            call_waiter(waiter.callback, kept if kept is not None and waiter.kept else error)

    async def _write_forever(self) -> None:
        last_start = time.monotonic()
        while not self._stopping:
            if self.durability == "always":
                idle = _CHECK_INTERVAL
            else:
                idle = max(0.0, last_start + self.flush_interval - time.monotonic())
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(idle):
                        await self._wake.wait()
            self._wake.clear()
            last_start = time.monotonic()
            if not await self._commit_pending():
                await asyncio.sleep(self.retry_interval)

    async def _commit_pending(self) -> bool:
        """One group commit of everything pending (and the renewals); with
        nothing pending while failing, a probe. False if it failed. One at a
        time: aclose's last commit waits for the writer's."""
        async with self._commit_lock:
            batch, cleared, seq = self.overlay.take()
            renewals, self._renewals = self._renewals, {}
            if not batch and not cleared and not renewals:
                self.overlay.landed()
                if self.failure is not None and not await self._probe():
                    return False
                self._committed_seq = max(self._committed_seq, seq)
                self._resolve()
                return True
            started = perf_counter()
            self._commit_started = started
            notices = 0
            sent: _Sent | None = None  # once it may have reached the database
            try:
                self._hook("commit")
                conn = await self._writer()
                params, notices, sent = self._commit_params(conn, batch, cleared, renewals)
                await self._bounded_here(
                    conn, pgwire.run(conn, _COMMIT_STATEMENT, params), "commit"
                )
                self._slots[conn].last = sent.token
            except (StoreError, psycopg.Error, OSError) as exc:
                try:
                    error = await self._outcome(exc, sent, "commit")
                except asyncio.CancelledError:
                    self._commit_failed(batch, renewals, seq, StoreError(_CLOSING))
                    raise
                await self._drop_writer()
                if error is not None:
                    self._commit_failed(batch, renewals, seq, error)
                    return False
            except asyncio.CancelledError:
                # Stopped mid-commit (aclose): its outcome is unknown, and its
                # replies are told so, never that it landed.
                self._commit_failed(batch, renewals, seq, StoreError(_CLOSING))
                raise
            self._commit_started = 0.0
            self.overlay.landed()
            if self.failure is not None:
                log.info("store_recovered", server=self.server)
                self.failure = None
            elapsed = perf_counter() - started
            self.stats.commit_duration.observe(elapsed)
            self.shared_stats.round_trip("commit", elapsed)
            deletes = sum(1 for change in batch.values() if change is None)
            self.stats.writes += len(batch) - deletes
            self.shared_stats.renewals += len(renewals)
            self.shared_stats.notifications_sent += notices
            self.shared_stats.invalidations_sent += len(batch) + cleared
            self._committed_seq = max(self._committed_seq, seq)
            self._resolve()
            if self._listener is not None and batch:
                self._listener.committed(list(batch))
            return True

    def _commit_failed(
        self, batch: dict[bytes, Kept], renewals: dict[bytes, Renewal], seq: int, error: StoreError
    ) -> None:
        """A group commit failed: its waiters get ``error``, and its changes
        are forgotten (``always``) or pending again (``batch``)."""
        self._commit_started = 0.0
        if self.durability == "always":
            # Every change in the batch has a reply waiting for it, and
            # gets this error: none was acknowledged. Kept pending, it
            # would land when the database is back, over what other hosts
            # wrote meanwhile (acknowledged writes); forgotten, memory
            # drops its copies and reads the database's values again.
            self.overlay.landed()
            if self._listener is not None and batch:
                self._listener.invalidated(list(batch))
        else:
            # Under batch the changes were acknowledged: commit them later.
            self.overlay.put_back()
        for key, renewal in renewals.items():
            self._renewals.setdefault(key, renewal)
        if self.failure is None:
            log.error("store_error", operation="commit", error=str(error), sessions=len(batch))
        self.failure = StoreError(str(error).removeprefix("store "))
        self.stats.error("commit")
        kept: StoreError | None = None
        if self.durability != "always" and not self._stopping:
            # Its replies held back (the store lagged) were not acknowledged,
            # but their changes are kept and land later: not a failure.
            why = _commit_failure(error, self.timeout)
            kept = StoreError(
                f"store commit outcome unknown: {why}; the write is kept and committed "
                "once the database answers"
            )
        self._failed(seq, error, kept)
        if self.durability == "always":
            # Forgotten, and every reply waiting for them told so: nothing up
            # to ``seq`` is left to commit. A reply that asks to wait later
            # with nothing recorded since (QUEUED inside MULTI, an EXEC of
            # reads) waits for none of it, not for the database to come back.
            # (A reply for one of these writes asks before they can be taken:
            # the server registers it before its connection parks.)
            self._committed_seq = max(self._committed_seq, seq)

    async def _writer(self) -> Conn:
        conn = self._writer_conn
        if conn is None or conn.closed:
            try:
                conn = await asyncio.wait_for(self._connect("writer"), self.timeout + 1)
            except TimeoutError:
                raise StoreError("store write failed: cannot connect within the timeout") from None
            self._writer_conn = conn
            self.server = f"{conn.info.host}:{conn.info.port}"
            await self._measure_clock(conn)
            # A commit fails for good without its function: one dropped while
            # running, or a restore of the tables alone, is made again here,
            # at the reconnect that follows the failed commit.
            await self._bounded(conn, _schema_locked(conn, _ensure_function), "schema")
            await self._prepare_commit(conn)
            self.shared_stats.reconnect("writer")
            log.info("store_reconnected", connection="writer", server=self.server)
        return conn

    async def _prepare_commit(self, conn: Conn) -> None:
        """The group commit's statement, prepared on the writer's new
        connection, which takes a slot; the tokens of connections gone for long
        enough swept (pgsql.SWEEP_SLOTS)."""
        await self._bounded(
            conn, pgwire.prepare(conn, pgsql.COMMIT_STATEMENT, pgsql.COMMIT_PREPARED), "prepare"
        )
        await self._bounded(conn, _sweep_tokens(conn), "prepare")
        self._slots[conn] = _Slot()

    def _commit_params(
        self,
        conn: Conn,
        changes: Mapping[bytes, tuple[Any, ...] | None],
        cleared: bool,
        renewals: Mapping[bytes, Renewal],
        *,
        lock: bool = True,
    ) -> tuple[list[bytes], int, _Sent]:
        """The commit function's parameters for a commit on ``conn``
        (:func:`.pgsql.commit_params`, with a new token in the connection's
        slot and its fence from now), how many notifications they send, and
        what to ask about if its answer is lost."""
        slot = self._slots[conn]
        self._token += 1
        token = self._token
        params, notices = pgsql.commit_params(
            self.host_id,
            time.time(),
            changes,
            cleared,
            renewals,
            (slot.id, token, slot.last),
            self._fence(),
            lock=lock,
        )
        return params, notices, _Sent(slot.id, token)

    async def _outcome(
        self, exc: BaseException, sent: _Sent | None, operation: str
    ) -> StoreError | None:
        """What a commit that failed with ``exc`` did: ``None`` if it landed
        all the same (its answer was lost: the connection dropped after the
        database committed, or the answer came after the timeout), else the
        error its replies get. A commit in doubt (:func:`_in_doubt`) that was
        ``sent`` is asked about on another connection (:meth:`_landed`); one
        that cannot be asked about within the timeout is answered as unknown,
        never as failed."""
        why = _commit_failure(exc, self.timeout)
        failed = exc if isinstance(exc, StoreError) else StoreError(f"store write failed: {why}")
        if sent is None or not _in_doubt(exc):
            return failed
        if self._stopping:  # cut short by aclose: not asked
            return StoreError(_CLOSING)
        landed = await self._landed(sent)
        outcome = {True: "landed", False: "rolled back", None: "unknown"}[landed]
        log.warning("store_commit_unanswered", operation=operation, error=why, outcome=outcome)
        self.shared_stats.unanswered(outcome)
        if landed:
            return None
        if landed is False:
            return failed
        return StoreError(
            f"store commit outcome unknown: {why}, and the database could not be asked "
            "whether it landed"
        )

    async def _landed(self, sent: _Sent) -> bool | None:
        """Whether the commit ``sent``, whose answer never came, landed, as
        its token says on another connection (pgsql.TOKENS): once asked, it
        never will if it has not; ``None`` if that cannot be known within the
        timeout."""
        try:
            return await asyncio.wait_for(
                self._run("commit", lambda conn: _ask_token(conn, sent)), self.timeout
            )
        except (StoreError, TimeoutError):
            return None

    async def _measure_clock(self, conn: Conn) -> None:
        """The database's clock against this host's monotonic one (which no
        clock step moves), within half a round trip. A step of the database's
        clock makes commits fail their fence until the writer reconnects and
        measures again (a failed commit drops the writer)."""
        before = time.monotonic()
        row = await self._bounded(conn, _fetch_one(conn, pgsql.DATABASE_CLOCK), "clock")
        after = time.monotonic()
        if row is not None:
            self._clock_offset = float(row[0]) - (before + after) / 2

    def _fence(self) -> float:
        """The database time after which a commit starting now must not
        land: within its timeout (less a tenth, for the reply's way back),
        so that it lands before its client can be told it failed, or never."""
        return time.monotonic() + 0.9 * self.timeout + self._clock_offset

    async def _drop_writer(self) -> None:
        conn, self._writer_conn = self._writer_conn, None
        if conn is not None and not conn.closed:
            await conn.close()

    async def _probe(self) -> bool:
        """While failing with nothing to commit: is the database back?"""
        try:
            conn = await self._writer()
            await self._bounded(conn, conn.execute("SELECT 1"), "probe")
        except (StoreError, psycopg.Error, OSError):
            await self._drop_writer()
            return False
        log.info("store_recovered", server=self.server)
        self.failure = None
        return True

    # --------------------------------------------------------- decisions

    async def decide(self, keys: list[bytes]) -> PgDecision:
        wanted = frozenset(keys)
        found, _ = self.overlay.lookup(wanted)
        if found or self.overlay.pending_cleared or self.overlay.inflight_cleared:
            await self._flush()  # read your writes: this host's own go first
        self._hook("decide")
        if self._stopping:
            raise StoreError(_CLOSED)
        future: asyncio.Future[PgDecision] = asyncio.get_running_loop().create_future()
        self._asked.append(_Ask(wanted, future))
        if not self._opening:
            self._opening = True
            self._spawn(self._open_batch())
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                # Opened for a caller that left meanwhile: it decides nothing.
                self.finish(future.result(), _ignore)
            raise

    def _take_asks(self) -> tuple[list[_Ask], set[bytes]]:
        """The decisions asked for so far, for the batch about to open, and
        their keys. One that names a key another of them does waits for a
        later batch (in one transaction it would not see the other's
        change), as do those past :data:`_BATCH_LIMIT`."""
        taken: list[_Ask] = []
        later: list[_Ask] = []
        keys: set[bytes] = set()
        for ask in self._asked:
            if ask.future.done():
                continue
            if len(taken) < _BATCH_LIMIT and keys.isdisjoint(ask.keys):
                taken.append(ask)
                keys.update(ask.keys)
            else:
                later.append(ask)
        self._asked = later
        if later and not self._stopping:
            self._spawn(self._open_batch())
        else:
            self._opening = False
        return taken, keys

    async def _open_batch(self, alone: _Ask | None = None) -> None:
        """Open one transaction for the decisions asked for until a pooled
        connection is free (or for ``alone``): a busy host puts the decisions
        of a round trip's time in one, as the group commit does with plain
        writes (it costs about what one decision alone does).

        A transaction of several decisions never waits for a lock: a decision
        with a key another transaction holds goes to a transaction of its own,
        which waits for it (as does one alone), so that a contended key holds
        up no other decision and no other host (every transaction takes its
        locks in ascending order: none can deadlock)."""
        asks: list[_Ask] | None = None if alone is None else [alone]
        keys: set[bytes] = set() if alone is None else set(alone.keys)

        async def open_(conn: Conn) -> Opened | None:
            # The decisions asked for until now (a retry keeps them).
            nonlocal asks, keys
            if asks is None:
                asks, keys = self._take_asks()
            if not asks:
                return None
            prepared = conn in self._decided_on
            wanted, wait = sorted(keys), len(asks) == 1
            if conn not in self._slots:
                self._slots[conn] = _Slot()
            try:
                opened = await _open_decision(conn, prepared, wanted, wait)
            except pg_errors.InvalidSqlStatementName:
                if not prepared:
                    raise
                # Something deallocated them (the invariant at _decided_on
                # broke): end the failed transaction and prepare them again.
                log.warning("store_statements_prepared_again", pid=conn.info.backend_pid)
                await pgwire.pipeline(conn, (), (), after=b"ROLLBACK")
                opened = await _open_decision(conn, False, wanted, wait)
            self._decided_on.add(conn)
            return opened

        try:
            conn, opened = await self._pooled("decide", open_, here=True)
        except BaseException as exc:
            if asks is None:  # no connection: every decision asked for fails now
                asks = self._asked
                self._asked = []
                self._opening = False
            _fail(asks, exc if isinstance(exc, StoreError) else "store decide failed")
            if not isinstance(exc, Exception):
                raise
            return
        if opened is None or asks is None:
            self._pool.release(conn)
            return
        rows, versions, held = opened
        later: list[_Ask] = []
        if held:
            asks, later = self._without_held(asks, held)
        batch = _Batch(conn, later)
        if not asks:  # every one went to a transaction of its own
            self._spawn(self._roll_back(batch))
            return
        self._opened(batch, asks, rows, versions)

    async def _roll_back(self, batch: _Batch) -> None:
        """End a batch that kept no decision: its locks go at once. Through
        libpq, as the rest of a decision's transaction: psycopg answers a
        ROLLBACK it sees on a connection where it prepared statements of its
        own (for reads) with DEALLOCATE ALL, which would take the decisions'
        prepared statements too (``_decided_on`` would then be wrong)."""
        conn = batch.conn
        try:
            await self._bounded(conn, pgwire.pipeline(conn, (), (), after=b"ROLLBACK"), "decide")
        except (StoreError, psycopg.Error, OSError):
            self._pool.discard(conn)
        else:
            self._pool.release(conn)
        self._open_later(batch)

    def _open_later(self, batch: _Batch) -> None:
        """The decisions waiting for ``batch`` to end (once)."""
        later, batch.later = batch.later, []
        self._open_alone(later)

    def _without_held(self, asks: list[_Ask], held: set[int]) -> tuple[list[_Ask], list[_Ask]]:
        """``asks`` but those with a key whose lock id is in ``held``: each of
        those opens a transaction of its own, which waits for its keys. One
        whose other keys the batch locked waits for the batch to end first
        (returned second): it would wait for those locks, holding a pooled
        connection and the keys it got before them."""
        lock_id = pgsql.lock_id
        kept: list[_Ask] = []
        later: list[_Ask] = []
        for ask in asks:
            held_elsewhere = [lock_id(key) in held for key in ask.keys]
            if not any(held_elsewhere):
                kept.append(ask)
            elif all(held_elsewhere):
                self._open_alone([ask])
            else:
                later.append(ask)
        return kept, later

    def _open_alone(self, asks: list[_Ask]) -> None:
        """A transaction of its own for each of ``asks`` that still waits."""
        if self._stopping:
            _fail(asks, _CLOSED)
            return
        for ask in asks:
            if not ask.future.done():  # else its caller left: nothing to open
                self._spawn(self._open_batch(ask))

    def _opened(
        self,
        batch: _Batch,
        asks: list[_Ask],
        rows: dict[bytes, Row | None],
        versions: dict[bytes, int],
    ) -> None:
        """Hand each decision of ``batch`` to its caller."""
        stats = self.shared_stats
        stats.decisions += len(asks)
        stats.decision_transactions += 1
        for ask in asks:
            keys = ask.keys
            decision = PgDecision(
                batch,
                keys,
                {key: rows[key] for key in keys},
                {key: versions[key] for key in keys if key in versions},
            )
            batch.decisions.append(decision)
            self._open.add(decision)
            if ask.future.done():  # its caller left while the batch opened
                decision.done = _ignore
            else:
                batch.unfinished += 1
                ask.future.set_result(decision)
        if not batch.unfinished:
            self._spawn(self._finish(batch))

    def _remake_soon(self) -> None:
        """The commit function or the table of tokens went away (a restore of
        the tables alone): made again now, not at the writer's next
        reconnect, which a host that only decides would not reach."""
        if not (self._remaking or self._stopping):
            self._remaking = True
            self._spawn(self._remake_function())

    async def _remake_function(self) -> None:
        """Make the commit function where it is missing; failing, the next
        decision that finds it gone tries again."""
        try:
            await self._run("schema", lambda conn: _schema_locked(conn, _ensure_function))
        except StoreError as exc:
            log.error("store_error", operation="schema", error=str(exc))
        finally:
            self._remaking = False

    def finish(self, decision: Decision, done: Callable[[StoreError | None], None]) -> None:
        assert isinstance(decision, PgDecision)  # only this store opens them
        if decision.done is not None:
            return
        decision.done = done
        batch = decision.batch
        batch.unfinished -= 1
        if not batch.unfinished:
            self._spawn(self._finish(batch))

    async def _finish(self, batch: _Batch) -> None:
        """Commit ``batch``: its decisions' changes, their notifications, the
        barrier they wait to hear back, the fence; then call each one's
        ``done``."""
        conn = batch.conn
        decisions = batch.decisions
        changes: dict[bytes, Change] = {}
        for decision in decisions:
            changes.update(decision.changes)
        started = perf_counter()
        params: list[bytes] | None = None
        notices = 0
        barrier = self._barrier()
        # Once it may have reached the database; a decision that changed
        # nothing is never asked about (nothing of it can have landed).
        sent: _Sent | None = None
        try:
            if changes:
                params, notices, sent = self._commit_params(conn, changes, False, {}, lock=False)
            notify = [self._barrier_channel, barrier.encode()]
            await self._bounded_here(conn, _commit_decision(conn, params, notify), "commit")
            if sent is not None:
                self._slots[conn].last = sent.token
        except asyncio.CancelledError:
            # Stopped mid-commit (aclose): told so, never that it landed.
            self._barriers.pop(barrier, None)
            for decision in decisions:
                decision.error = StoreError(_CLOSING)
            self._pool.discard(conn)  # mid-pipeline, mid-transaction: closed
            raise
        except (StoreError, psycopg.Error, OSError) as exc:
            self._pool.discard(conn)  # mid-pipeline, mid-transaction: closed
            try:
                # The decisions stay open meanwhile: a reply that asks after
                # them waits for the answer.
                error = await self._outcome(exc, sent, "decide")
            except asyncio.CancelledError:  # a stop cut the asking short
                for decision in decisions:
                    decision.error = StoreError(_CLOSING)
                raise
            if error is None or (not changes and _in_doubt(exc) and not self._stopping):
                # It landed, its answer lost; or it changed nothing, and
                # whether it landed changes nothing either: the decisions'
                # replies stand (what they read, they read under their
                # locks). Its barrier, if it never comes, empties memory.
                await self._decided(batch, changes, started, notices, barrier)
                return
            self._barriers.pop(barrier, None)
            for decision in decisions:
                decision.error = error
            if isinstance(exc, (pg_errors.UndefinedFunction, pg_errors.UndefinedTable)):
                self._remake_soon()
            self.shared_stats.decision_errors += len(decisions)
            self.stats.error("commit")
            log.error(
                "store_error",
                operation="decide",
                error=str(error),
                decisions=len(decisions),
                keys=sum(len(decision.keys) for decision in decisions),
            )
        else:
            self._pool.release(conn)
            await self._decided(batch, changes, started, notices, barrier)
        finally:
            for decision in decisions:
                self._open.discard(decision)
                if decision.done is not None:
                    decision.done(decision.error)
            self._resolve()
            self._open_later(batch)

    async def _decided(
        self,
        batch: _Batch,
        changes: dict[bytes, Change],
        started: float,
        notices: int,
        barrier: str,
    ) -> None:
        """``batch`` committed: counted, the decisions waiting for it opened,
        its barrier heard back, the other hosts told."""
        elapsed = perf_counter() - started
        self.shared_stats.round_trip("commit", elapsed)
        deletes = sum(1 for change in changes.values() if change is None)
        self.stats.writes += len(changes) - deletes
        self.shared_stats.invalidations_sent += len(changes)
        self.shared_stats.notifications_sent += notices
        self._open_later(batch)  # its locks are gone: no need to wait for the barrier
        await self._heard_up_to(barrier)
        if changes and self._listener is not None:
            self._listener.committed(list(changes))

    def _barrier(self) -> str:
        """The payload of a notification a decision sends itself in its
        transaction, on this host's own channel. PostgreSQL delivers notifications in commit
        order, so once this host hears it back it has heard every change
        committed before the decision saw its keys (a lock another host
        released after writing the session, say)."""
        self._barrier_seq += 1
        payload = f"b{self._barrier_seq}"
        if self.coherent:
            self._barriers[payload] = asyncio.get_running_loop().create_future()
        return payload

    async def _heard_up_to(self, payload: str) -> None:
        """Wait (at most ``heartbeat_interval``) until the barrier ``payload``
        is heard back, so that the decision's reply leaves only once memory
        holds nothing older than what the decision saw. Not heard in time:
        memory is emptied instead (what it missed is unknown)."""
        future = self._barriers.get(payload)
        if future is None:
            return  # not listening: memory is not trusted anyway
        try:
            async with asyncio.timeout(self.heartbeat_interval):
                await future
        except TimeoutError:
            if self._barriers.pop(payload, None) is not None and self.coherent:
                self.shared_stats.memory_flushes += 1
                log.warning("barrier_late", waited=self.heartbeat_interval)
                if self._listener is not None:
                    self._listener.invalidated_all("a decision's barrier came back late")
        finally:
            self._barriers.pop(payload, None)

    def _release_barriers(self) -> None:
        """Notifications lost: nobody waits for a barrier (memory is emptied)."""
        barriers, self._barriers = self._barriers, {}
        for future in barriers.values():
            if not future.done():
                future.set_result(None)

    # ------------------------------------------------------------- reads

    async def load_many(self, keys: list[bytes]) -> dict[bytes, Row | None]:
        found, rest = self.overlay.lookup(keys)
        if rest:
            try:
                read = await self._run("read", lambda conn: _select(conn, rest))
            except StoreError:
                self.stats.error("load")
                raise
            # A change recorded while the read ran is newer than what it read.
            newer, rest = self.overlay.lookup(rest)
            found.update(newer)
            for key in rest:
                found[key] = read.get(key)
        return found

    def load(self, key: bytes) -> Row | None:
        found, rest = self.overlay.lookup([key])
        if rest:
            found.update(self._blocking("read", lambda conn: _select(conn, rest)))
        return found.get(key)

    def count_rows(self) -> TableCounts:
        queued, rows_valid = self.overlay.queued_counts()
        total = expiring = 0
        if rows_valid:
            keys = list(queued)
            total, expiring = self._blocking("count", lambda conn: _count(conn, keys))
        return TableCounts(queued, total, expiring)

    def scan_rows(self, cursor: int, count: int | None) -> TableSlice:
        queued, rows_valid = self.overlay.queued()
        rows, upper = self._blocking("scan", lambda conn: _slice(conn, cursor, count))
        return TableSlice(rows if rows_valid else [], queued, rows_valid, upper)

    async def whole_table(self, read: Callable[[], T], operation: str) -> T:
        """``read`` on a thread of its own: its blocking calls wait for the
        event loop, which does the database work meanwhile."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._scanner, read)
        except psycopg.Error as exc:
            self.stats.error("load")
            raise StoreError(f"store read failed: {_why(exc)}") from None

    def due(self, now: float, limit: int) -> list[bytes]:
        """Not used: a shared store's sweep deletes in the database
        (:meth:`expire_due`), memory's expiry only forgets."""
        return []

    def evicted(self, key: bytes, deadline: float) -> None:
        """Not used either (:attr:`table_lag` is 0: a commit writes the table)."""

    def recent(self, limit: int) -> list[tuple[bytes, Row]]:
        return self._blocking("recent", lambda conn: _recent(conn, time.time(), limit))

    async def recent_rows(self, limit: int) -> list[tuple[bytes, Row]]:
        return await self._run("recent", lambda conn: _recent(conn, time.time(), limit))

    # ------------------------------------------------------------ expiry

    def expire_due(self, now: float) -> None:
        if self._sweeping or self._stopping or self.failure is not None:
            return
        self._sweeping = True
        self._spawn(self._expire(now - self.grace))

    async def _expire(self, cutoff: float) -> None:
        try:
            while True:
                taken, deleted = await self._run(
                    "expire", lambda conn: self._expire_chunk(conn, cutoff)
                )
                if deleted:
                    self.shared_stats.expired += len(deleted)
                    if self._listener is not None:
                        self._listener.invalidated(deleted)
                if taken < _EXPIRE_CHUNK:
                    self._expiry_outage.over()
                    return
        except StoreError as exc:
            self._expiry_outage.failed(str(exc))
        finally:
            self._sweeping = False

    async def _expire_chunk(self, conn: Conn, cutoff: float) -> tuple[int, list[bytes]]:
        """How many due rows one chunk took (deleted or re-filed), and the
        keys it deleted."""
        async with conn.transaction():
            cur = await conn.execute(pgsql.EXPIRE, {"cutoff": cutoff, "chunk": _EXPIRE_CHUNK})
            row = await cur.fetchone()
            taken, keys = row if row else (0, [])
            deleted = [bytes(key) for key in keys]
            notices = pgsql.payloads(self.host_id, time.time(), deleted, False)
            if notices:
                await conn.execute(pgsql.NOTIFY, (pgsql.CHANNEL, Text(notices)))
        return taken, deleted

    # ------------------------------------------------------ notifications

    async def _listen_forever(self) -> None:
        pause = 0.1
        first = True
        lost_at = time.monotonic()
        while not self._stopping:
            try:
                conn = await asyncio.wait_for(self._connect("listen"), self.timeout + 1)
            except (TimeoutError, *_CONNECTION_ERRORS):
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            try:
                await self._bounded(conn, _listen(conn, self._heartbeat_channel), "listen")
            except (StoreError, psycopg.Error, OSError):
                await conn.close()
                await asyncio.sleep(pause)
                continue
            pause = 0.1
            if first:
                first = False
                self.coherent = True
                self.shared_stats.listening = 1
            else:
                self._coherent(True, "notifications restored")
                self.shared_stats.reconnect("listen")
                log.info(
                    "listen_restored",
                    server=f"{conn.info.host}:{conn.info.port}",
                    down_seconds=round(time.monotonic() - lost_at, 3),
                )
            self._listen_up.set()
            try:
                reason = await self._receive(conn)
            except (psycopg.Error, OSError) as exc:
                reason = _why(exc)
            except StoreError as exc:
                reason = str(exc)
            except Exception as exc:  # a notification not handled: not coherent
                reason = f"a notification could not be handled: {exc!r}"
            self._listen_up.clear()
            if not self._stopping:
                self._coherent(False, reason)
                log.warning("listen_lost", reason=reason)
                # The server may have restarted: its idle pool connections are gone too.
                self._pool.reset()
            lost_at = time.monotonic()
            with contextlib.suppress(Exception):
                await conn.close()

    def _coherent(self, up: bool, reason: str) -> None:
        self._release_barriers()
        self.coherent = up
        self.shared_stats.listening = int(up)
        self.shared_stats.memory_flushes += 1
        if self._listener is not None:
            self._listener.invalidated_all(reason)

    async def _receive(self, conn: Conn) -> str:
        """Handle notifications until the connection fails or a heartbeat is
        not back in time; why it stopped.

        Between heartbeats the connection's socket has a reader of its own
        (:meth:`_Hearing.readable`), which hands each notification over as it
        is read. psycopg's ``notifies()`` took a lock, a wait on the loop with
        its timer and an async generator's step per notification, and every
        commit of this host comes back as one: about 48k instructions of a
        durable SET at ``-c 1`` (542k -> 494k, ``bench/instructions.py``)."""
        interval = self.heartbeat_interval
        loop = asyncio.get_running_loop()
        hearing = _Hearing(self, conn, loop)
        # Notifications read while psycopg runs the heartbeat's statement:
        # every heartbeat among them (PostgreSQL hands a session its own
        # notification as its statement ends), so any test that stays
        # listening goes through here.
        conn.add_notify_handler(lambda n: hearing.heard(n.channel, n.payload))
        while not self._stopping:
            hearing.seq += 1
            sent = time.monotonic()
            back = hearing.back = loop.create_future()
            try:
                await self._bounded(
                    conn,
                    conn.execute(
                        "SELECT pg_notify(%s, %s)", (self._heartbeat_channel, str(hearing.seq))
                    ),
                    "heartbeat",
                    interval,
                )
            except StoreError:
                # The heartbeat's own statement got no answer in time (a silent
                # link): said as a heartbeat that does not come back is, the
                # words the alerts' runbooks tell the operator to look for.
                return f"no heartbeat back within {interval:g}s"
            loop.add_reader(hearing.fd, hearing.readable)
            try:
                hearing.readable()  # what libpq read along with the statement's result
                left = sent + interval - time.monotonic()
                if not back.done() and not hearing.lost.done() and left > 0:
                    await asyncio.wait((back, hearing.lost), timeout=left)
                if hearing.lost.done():
                    return hearing.lost.result()
                if not back.done():
                    return f"no heartbeat back within {interval:g}s"
                self.shared_stats.round_trip("heartbeat", time.monotonic() - sent)
                left = sent + interval - time.monotonic()
                if left > 0:
                    await asyncio.wait((hearing.lost,), timeout=left)
                if hearing.lost.done():
                    return hearing.lost.result()
            finally:
                # Once lost, readable() took its reader away, and the descriptor
                # may already be another connection's.
                if not hearing.lost.done():
                    loop.remove_reader(hearing.fd)
        return "stopping"

    def _heard(self, channel: str, payload: str) -> None:
        """A notification heard other than a heartbeat: a barrier, or changes."""
        if channel == self._heartbeat_channel:
            barrier = self._barriers.pop(payload, None)
            if barrier is not None and not barrier.done():
                barrier.set_result(None)
            return
        if payload.startswith(self._own_payloads):
            return  # this host's own commit heard back (checked before parsing it whole)
        parsed = pgsql.parse(payload)
        if parsed is None:
            return
        stats = self.shared_stats
        stats.notifications_received += 1
        stats.invalidation_lag.observe(max(0.0, time.time() - parsed.sent_at))
        listener = self._listener
        if listener is None:
            return
        if parsed.everything:
            stats.invalidations_received += 1
            stats.memory_flushes += 1
            listener.invalidated_all("another host flushed the keyspace")
            return
        stats.invalidations_received += len(parsed.keys) + len(parsed.hashes)
        if parsed.keys:
            listener.invalidated(parsed.keys)
        if parsed.hashes:
            listener.invalidated_hashes(parsed.hashes)

    # ------------------------------------------------------------ closing

    def close(self) -> None:
        """Blocking close, for library use off the event loop's thread."""
        loop = self._loop
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.aclose(), loop).result()

    async def aclose(self) -> None:
        """Commit what is pending (within the timeout), then close every connection."""
        if self._stopping:
            return
        if self._writer_conn is not None or self.overlay.pending or self._renewals:
            with contextlib.suppress(Exception):
                await self._commit_pending()
        self._stopping = True
        self._wake.set()
        for cut in list(self._cuts):
            cut.fire("the store is closing")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._drop_writer()
        self._pool.reset()
        _fail(self._asked, _CLOSED)
        self._asked = []
        self._opening = False
        for conn in {d.batch.conn for d in self._open if isinstance(d, PgDecision)}:
            with contextlib.suppress(Exception):
                await conn.close()
        if self._helper is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._helper.close)
            self._helper = None
        self._scanner.shutdown(wait=False)
        self.coherent = False
        self.shared_stats.listening = 0


async def _kill(task: asyncio.Future[Any], conn: Conn) -> None:
    """Stop ``task``'s work on ``conn`` and close it now: the first
    cancellation makes psycopg start a cancel request, the second makes it
    close the connection instead of waiting for the server."""
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    if not conn.closed:
        await conn.close()


# ------------------------------------------------------------ the statements


async def _schema_locked(conn: Conn, work: Callable[[Conn], Awaitable[None]]) -> None:
    """``work`` on ``conn`` holding the schema lock (a session-level advisory
    lock): hosts that create or change the schema take turns. The wait for it
    is bounded by the statement and lock timeouts of the connection."""
    await conn.execute(pgsql.SCHEMA_LOCK)
    try:
        await work(conn)
    finally:
        await _unlock_schema(conn)


async def _unlock_schema(conn: Conn) -> None:
    """Release the schema lock, unless the connection went away (and with it
    the lock) or is left in a failed transaction (the caller closes it)."""
    if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
        await conn.execute(pgsql.SCHEMA_UNLOCK)


async def _version(conn: Conn) -> int:
    """The store's schema version; a newer one than this sessiond's is refused."""
    row = await (await conn.execute(pgsql.READ_VERSION)).fetchone()
    version = row[0] if row else None
    if version is None or version > pgsql.SCHEMA_VERSION:
        raise StoreError(
            f"persistence.dsn: the store's schema is version {version}, newer "
            f"than this sessiond's ({pgsql.SCHEMA_VERSION}); refusing to use it"
        )
    return int(version)


async def _schema(conn: Conn) -> int:
    """Create the tables where missing, refuse what is not ours or newer; the
    schema's version. Under the schema lock: hosts starting together take
    turns."""
    found = await (await conn.execute(pgsql.FIND_TABLES)).fetchone()
    schema_table, sessions_table = found if found else (None, None)
    if schema_table is not None:
        return await _version(conn)
    if sessions_table is not None:
        raise StoreError(
            f"persistence.dsn: table {pgsql.TABLE} exists but was not made by "
            f"sessiond (no {pgsql.VERSION_TABLE} table); refusing to use it"
        )
    async with conn.transaction():
        for statement in pgsql.CREATE:
            await conn.execute(statement)
    log.info("store_schema_created", version=pgsql.SCHEMA_VERSION)
    return pgsql.SCHEMA_VERSION


async def _migrate(conn: Conn, version: int) -> None:
    """Bring a store of schema ``version`` to this one's, in one transaction
    (a failure leaves it as it was, and the start fails). Holding the schema
    lock. The version before's function is replaced first: the step most
    likely to be refused (it belongs to whichever role made it) fails before
    the table is locked for long."""
    log.info("store_migrating", from_version=version, to_version=pgsql.SCHEMA_VERSION)
    started = time.monotonic()
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL statement_timeout = 0")
            found = await (await conn.execute(pgsql.FIND_PREVIOUS_FUNCTION)).fetchone()
            if found and found[0] is not None:
                await conn.execute(pgsql.REPLACE_PREVIOUS_FUNCTION)
            for statement in pgsql.MIGRATE_TO_2:
                await conn.execute(statement)
    except pg_errors.InsufficientPrivilege as exc:
        raise StoreError(
            f"persistence.dsn: cannot migrate the store's schema from version {version} "
            f"to {pgsql.SCHEMA_VERSION} ({_why(exc)}): start this host once as the role "
            f"that owns {pgsql.TABLE} and {pgsql.PREVIOUS_FUNCTION}"
        ) from None
    except psycopg.Error as exc:
        raise StoreError(
            f"persistence.dsn: cannot migrate the store's schema from version {version} "
            f"to {pgsql.SCHEMA_VERSION}: {_why(exc)}"
        ) from None
    log.info(
        "store_migrated",
        from_version=version,
        to_version=pgsql.SCHEMA_VERSION,
        seconds=round(time.monotonic() - started, 3),
    )


async def _function_at_start(conn: Conn) -> None:
    """:func:`_ensure_function`, refused with what to do about it where this
    role may not create it."""
    try:
        await _ensure_function(conn)
    except pg_errors.InsufficientPrivilege as exc:
        raise StoreError(
            f"persistence.dsn: cannot create the function {pgsql.FUNCTION} "
            f"or the table {pgsql.TOKENS} "
            f"({_why(exc)}): let this role create in the schema of "
            f"{pgsql.TABLE}, or start sessiond once as a role that may"
        ) from None


async def _ensure_function(conn: Conn) -> None:
    """Create the group commit's function (pgsql.COMMIT_FUNCTION) and the
    table of its tokens (pgsql.TOKENS) where they are missing: a new store,
    one made by a sessiond from before them, or one where they went away.
    Under the schema lock (:func:`_schema_locked`)."""
    found = await (await conn.execute(pgsql.FIND_TOKENS)).fetchone()
    if not found or found[0] is None:
        await conn.execute(pgsql.CREATE_TOKENS)
        log.info("store_table_created", table=pgsql.TOKENS)
    found = await (await conn.execute(pgsql.FIND_FUNCTION)).fetchone()
    if found and found[0] is not None:
        return
    await conn.execute(pgsql.COMMIT_FUNCTION)
    log.info("store_function_created", function=pgsql.FUNCTION)


async def _open_decision(conn: Conn, prepared: bool, keys: list[bytes], wait: bool) -> Opened:
    """Open a decision's transaction on ``conn``, in one round trip through
    libpq (:func:`.pgwire.pipeline`), its statements prepared first unless
    they are on ``conn`` already: ``keys``' rows and versions, and the lock
    ids it could not take. It waits for every key's lock if ``wait``, else it
    takes those it can (:data:`.pgsql.TRY_LOCK_KEYS`) and reads their rows."""
    ids = dump("int4", pgsql.lock_ids(keys))
    wanted = dump("bytea", keys)
    if wait:
        calls = ((_LOCK_KEYS, [ids]), (_SELECT_LOCKED, [wanted]))
    else:
        calls = ((_TRY_LOCK_KEYS, [ids]), (_SELECT_TRIED, [wanted]))
    prepare = () if prepared else _PREPARE_DECISIONS
    locked, found = await pgwire.pipeline(conn, prepare, calls, before=b"BEGIN")
    held: set[int] = set()
    if not wait:
        held.update(load_int4(locked.get_value(0, 0) or b""))
    rows: dict[bytes, Row | None] = dict.fromkeys(keys)
    versions: dict[bytes, int] = {}
    for i in range(found.ntuples):
        key = bytes(found.get_value(i, 0) or b"")
        rows[key] = _binary_row(found, i)
        versions[key] = _I8(found.get_value(i, 9) or b"")[0]
    return rows, versions, held


def _binary_row(result: PGresult, i: int) -> Row:
    """The :class:`Row` in row ``i`` of a decision's rows, in binary (its
    columns after the key in :data:`.pgsql.COLUMNS`' order; text in UTF-8,
    which the store's connections speak: :func:`connection_params`)."""
    value, context, created, updated, accessed, ttl, deadline, kind = (
        result.get_value(i, column) for column in range(1, 9)
    )
    return Row(
        bytes(value or b""),
        None if context is None else bytes(context).decode(),
        _F8(created or b"")[0],
        _F8(updated or b"")[0],
        _F8(accessed or b"")[0],
        None if ttl is None else _F8(ttl)[0],
        None if deadline is None else _F8(deadline)[0],
        _I2(kind or b"")[0],
    )


async def _commit_decision(conn: Conn, params: list[bytes] | None, notify: list[bytes]) -> None:
    """Commit a decision: its changes, their notifications and the fence
    (``params``: one call of the group commit's function, made by
    :func:`.pgsql.commit_params` without the key locks, which the decision
    holds already), and the barrier it waits to hear back (``notify``: its
    channel and payload; a decision that changed nothing commits too, for its
    barrier). One round trip, through
    libpq (:func:`.pgwire.pipeline`; the statements were prepared when the
    transaction opened): psycopg's pipeline mode cost a decision about a
    quarter of its instructions (bench/instructions.py --durable --decide)."""
    call = (_BARRIER, notify) if params is None else (_DECIDED, [*params, *notify])
    await pgwire.pipeline(conn, (), (call,), after=b"COMMIT")


async def _fetch_one(conn: Conn, sql: str) -> tuple[Any, ...] | None:
    return await (await conn.execute(sql)).fetchone()


async def _sweep_tokens(conn: Conn) -> None:
    """Delete the tokens of connections gone for long enough (pgsql.SWEEP_SLOTS)."""
    for statement in pgsql.SWEEP_SLOTS:
        await conn.execute(statement)


async def _ask_token(conn: Conn, sent: _Sent) -> bool | None:
    """Whether the commit ``sent`` landed: its token inserted by the asking
    itself (pgsql.ASK_TOKEN), unless the commit's is there. Asked again
    after its answer was lost, it finds its own row (pgsql.ASKER). ``None``:
    the row went away in between (a sweep's, fifteen minutes on)."""
    if (await conn.execute(pgsql.ASK_TOKEN, sent)).rowcount == 1:
        return False
    row = await (await conn.execute(pgsql.TOKEN_OWNER, sent)).fetchone()
    return None if row is None else row[0] != pgsql.ASKER


async def _select(conn: Conn, keys: list[bytes]) -> dict[bytes, Row | None]:
    cur = await conn.execute(pgsql.SELECT_ROWS, (Bytea(keys),))
    found: dict[bytes, Row | None] = dict.fromkeys(keys)
    for fields in await cur.fetchall():
        found[bytes(fields[0])] = _row(fields[1:9])
    return found


async def _count(conn: Conn, queued: list[bytes]) -> tuple[int, int]:
    async with conn.transaction():
        total, expiring = await (await conn.execute(pgsql.COUNT)).fetchone() or (0, 0)
        if queued:
            named, named_expiring = await (
                await conn.execute(pgsql.COUNT_KEYS, (Bytea(queued),))
            ).fetchone() or (0, 0)
            total -= named
            expiring -= named_expiring
    return int(total), int(expiring)


async def _slice(
    conn: Conn, cursor: int, count: int | None
) -> tuple[list[tuple[int, bytes, float | None, int]], int]:
    sql = pgsql.SLICE + ("" if count is None else f" LIMIT {count + 1}")
    found = await (await conn.execute(sql, (cursor,))).fetchall()
    upper = HASH_SPACE
    if count is not None and len(found) > count:
        upper = int(found[-1][0])
        if upper == cursor:
            upper = cursor + 1
            found = await (await conn.execute(pgsql.SLICE_AT, (cursor,))).fetchall()
    rows = [(int(h), bytes(k), d, int(kind)) for h, k, d, kind in found if int(h) < upper]
    return rows, upper


async def _recent(conn: Conn, now: float, limit: int) -> list[tuple[bytes, Row]]:
    if limit <= 0:
        return []
    cur = await conn.execute(pgsql.RECENT, (now, limit))
    return [(bytes(fields[0]), _row(fields[1:])) for fields in await cur.fetchall()]


async def _listen(conn: Conn, heartbeat_channel: str) -> None:
    await conn.execute(f"LISTEN {pgsql.CHANNEL}")
    await conn.execute(f"LISTEN {heartbeat_channel}")


def redact(dsn: str) -> str:
    """``dsn`` without its password, for logs."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable DSN)"
    if "password" in params:
        params["password"] = "(set)"
    return make_conninfo("", **params)
