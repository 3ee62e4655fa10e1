"""The SQLite store (docs/persistence.md): rows kept in one SQLite file (WAL).

The event loop never waits on disk for a write. :meth:`SQLiteStore.record`
only puts the change in an in-memory *pending* map; a writer thread takes the whole map at once and
commits it in one transaction (group commit). Under ``durability: always`` the
server holds a write's reply until :meth:`SQLiteStore.after_commit` says the
commit that contains it is on disk; under ``batch`` the writer commits every
``flush_interval``.

A commit only appends the batch to the ``journal`` table: sequential pages,
so the fsync that a durable reply waits for is small. Every ``fold_interval``
(or ``_FOLD_ROWS`` sessions) the writer *folds* the journal into ``sessions``
(random pages, but no reply waits for it, and it needs no fsync of its own:
the journal keeps its rows until the fold has committed, and then deletes
them a few hundred at a time). Until folded, the sessions are served from
memory (``_unfolded``); a crash replays what the journal still holds at the
next start. Replaying rows that were already folded is harmless: the journal
holds every write after them, so each session ends at its latest write.

Reads never see stale data: :meth:`SQLiteStore.load_many` answers from the
pending map and the batch being committed before it asks the database, so a
session evicted right after an acknowledged write is read back as written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

import structlog

from ..stats import StoreStats
from .api import HASH_SPACE, Change, Hook, Row, StoreError, TableCounts, TableSlice, scan_hash

log = structlog.get_logger("sessiond.store")

T = TypeVar("T")

APPLICATION_ID = 0x53455353  # "SESS"
SCHEMA_VERSION = 2
# One B-tree keyed by (scan_hash, key) serves point lookups (the hash is
# computed from the key) and SCAN order alike; the only secondary index is on
# expire_at, for expiry. Fewer B-trees means fewer pages per commit: a durable
# write costs what its pages cost to fsync.
#
# expire_at is when expiry should next look at a row: never later than its
# deadline (so no expired row is missed), but not moved when a write only
# pushes the deadline later (a sliding renewal, a rewrite): an index on the
# deadline itself was rewritten at a random page by nearly every write, which
# tripled the cost of a fold. Expiry re-files a row whose expire_at surfaces
# while its deadline lies further on (once per TTL at most), as the memory
# cache's expiry heap does.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    scan_hash INTEGER NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    context TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    accessed_at REAL NOT NULL,
    ttl REAL,
    deadline REAL,
    expire_at REAL,
    PRIMARY KEY (scan_hash, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_expire_at ON sessions(expire_at) WHERE expire_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY,
    scan_hash INTEGER NOT NULL,
    key BLOB NOT NULL,
    value BLOB,
    context TEXT,
    created_at REAL,
    updated_at REAL,
    accessed_at REAL,
    ttl REAL,
    deadline REAL
);
"""
_COLUMNS = "key, value, context, created_at, updated_at, accessed_at, ttl, deadline"
_JOURNAL = (
    "INSERT INTO journal "
    "(seq, scan_hash, key, value, context, created_at, updated_at, accessed_at, ttl, deadline) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# An update in place where the row exists (REPLACE would delete and insert it);
# expire_at is set by an insert only (see _REFILE).
_UPSERT = (
    "INSERT INTO sessions (scan_hash, key, value, context, created_at, updated_at, "
    "accessed_at, ttl, deadline, expire_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9) "
    "ON CONFLICT (scan_hash, key) DO UPDATE SET "
    "value = excluded.value, context = excluded.context, created_at = excluded.created_at, "
    "updated_at = excluded.updated_at, accessed_at = excluded.accessed_at, "
    "ttl = excluded.ttl, deadline = excluded.deadline"
)
# Re-file a row whose expire_at no longer fits: it lies after the deadline (an
# earlier deadline was written), it is set for a row that never expires or
# missing for one that does, or it has passed (expiry looked and found the
# deadline further on). Parameters: scan_hash, key, now.
_MISFILED = "((expire_at IS NULL) <> (deadline IS NULL) OR deadline < expire_at)"
_REFILE = (
    "UPDATE sessions SET expire_at = deadline "
    f"WHERE scan_hash = ?1 AND key = ?2 AND ({_MISFILED} OR expire_at <= ?3)"
)
_RETRY_AFTER_FAILURE = 1.0
_LINGER_STEP = 0.0002  # seconds between looks at the pending writes
_LINGER_MAX = 0.001  # never hold a commit back longer than this
# Fold the journal into the table once it holds this many sessions, or this
# many seconds after the last fold. A fold of N sessions writes about
# min(N, table pages) pages, so large folds cost far less per session.
_FOLD_ROWS = 20_000
_FOLD_INTERVAL = 1.0
_WRITER_CACHE_KIB = 32 * 1024
_FOLD_CHUNK = 256  # sessions per fold transaction
_FOLD_CHUNK_WAITING = 32  # ... while writes wait for their commit
# A fold is put in table order one part of the hash space at a time (a sort of
# a whole fold at once held the GIL, and so the event loop, for 10-20 ms).
_FOLD_BUCKET_BITS = 8
# Folded journal rows deleted per transaction (a fold's worth at once stalled
# durable commits for 30-50 ms), and while writes wait for their commit: then
# at least 4 times the rows the last commit added. The next fold waits for the
# trim, during which commits add rows for the trim after it: deleting 4 rows
# per row added keeps that from growing however large the commits grow.
_TRIM_ROWS = 2048
_TRIM_ROWS_WAITING = 256


@contextlib.contextmanager
def _unsynced(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction committed without fsync: for work that the journal
    or a later sweep redoes after a crash."""
    db.execute("PRAGMA synchronous=NORMAL")
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
    finally:
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA synchronous=FULL")


def _stored(row: tuple[Any, ...]) -> tuple[bytes, Row]:
    """``(key, row)`` from a ``SELECT key, <Row columns>``."""
    key, value, *rest = row
    return bytes(key), Row(bytes(value), *rest)


class SQLiteStore:
    """SQLite (WAL) store with a writer thread and group commit.

    ``hook`` (tests only) is called at these points: ``"commit"`` in the writer
    before each commit, ``"load"`` on a reader thread after a read-through read
    and before its rows are returned, ``"whole-table"`` on the event loop when a
    whole-table read is handed to its thread and ``"scan"`` on that thread
    before it reads. ``max_pages`` caps the file (a full disk, for tests);
    after a failed commit the writer tries again every ``retry_interval``."""

    def __init__(
        self,
        path: Path,
        *,
        durability: str = "always",
        flush_interval: float = 0.1,
        fold_interval: float = _FOLD_INTERVAL,
        retry_interval: float = _RETRY_AFTER_FAILURE,
        stats: StoreStats | None = None,
        max_pages: int = 0,
        hook: Hook | None = None,
    ) -> None:
        self.path = path
        self.durability = durability
        self.flush_interval = flush_interval
        self.fold_interval = fold_interval
        self.retry_interval = retry_interval
        self.stats = stats or StoreStats()
        self.max_pages = max_pages
        self.hook = hook
        # The error of the last commit if it failed (cleared by the next one
        # that succeeds): while set, the server refuses writes up front.
        self.failure: StoreError | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: dict[bytes, Change] = {}
        self._clear_pending = False
        self._inflight: dict[bytes, Change] = {}
        self._inflight_cleared = False
        # Journaled (durable) but not yet folded into the sessions table.
        self._unfolded: dict[bytes, Change] = {}
        self._folding: dict[bytes, Change] = {}
        # The fold in progress: the sessions to fold next, in table order
        # (reversed: taken from the end), and the parts of the hash space not
        # yet put in order (reversed too).
        self._fold_todo: list[tuple[int, bytes, Change]] = []
        self._fold_buckets: list[list[tuple[int, bytes, Change]]] = []
        self._fold_upto = 0  # the last journal row the fold in progress covers
        self._journal_seq = 0  # the last journal row written (numbered here: never reused)
        self._trim_upto = 0  # journal rows up to this one are folded, to be deleted
        self._refile: set[bytes] = set()  # rows whose expire_at expiry found stale
        self._last_fold = time.monotonic()
        self._busy_since = 0.0  # when the writer started its current work, 0 if idle
        # Commits that ended while a read-through read ran: such a read may
        # have missed them, and the overlay no longer has them.
        self._commits = 0
        self._reads = 0
        self._recent: dict[bytes, tuple[int, Change]] = {}
        self._recent_clear = 0
        self._op_seq = 0
        self._committed_seq = 0
        self._waiters: list[tuple[int, Callable[[StoreError | None], None]]] = []
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._local = threading.local()
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sessiond-read")
        # Whole-table reads (DBSIZE, INFO keyspace, KEYS) take their own thread:
        # a few of them must not keep read-through loads waiting.
        self._scanner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sessiond-scan")
        self._check_and_init()
        self._db = self._connect()  # the event loop's own read connection
        self._journal_seq = self._db.execute("SELECT max(seq) FROM journal").fetchone()[0] or 0

    def _hook(self, point: str) -> None:
        if self.hook is not None:
            self.hook(point)

    # ------------------------------------------------------------- opening

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        if self.max_pages:
            db.execute(f"PRAGMA max_page_count={int(self.max_pages)}")
        return db

    def _check_and_init(self) -> None:
        """Refuse a file that is not a sessiond store or is damaged; never modify it."""
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"persistence.path: cannot create {path.parent}: {exc.strerror}"
            ) from None
        present = path.exists()
        exists = present and path.stat().st_size > 0
        # Root passes os.access() whatever the mode, so honour the mode bits too:
        # an operator who made the file read-only meant it (even an empty one).
        if present and (not os.access(path, os.R_OK | os.W_OK) or not path.stat().st_mode & 0o222):
            raise StoreError(f"persistence.path: {path} is read-only; sessiond must write it")
        try:
            if exists:
                probe = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
                try:
                    app_id = probe.execute("PRAGMA application_id").fetchone()[0]
                    version = probe.execute("PRAGMA user_version").fetchone()[0]
                    tables = probe.execute(
                        "SELECT count(*) FROM sqlite_master WHERE type='table'"
                    ).fetchone()[0]
                    if app_id != APPLICATION_ID and (tables or app_id or version):
                        raise StoreError(
                            f"persistence.path: {path} is not a sessiond store "
                            f"(application_id {app_id:#x}); refusing to touch it"
                        )
                    if app_id == APPLICATION_ID and version > SCHEMA_VERSION:
                        raise StoreError(
                            f"persistence.path: {path} has schema version {version}, newer "
                            f"than this sessiond ({SCHEMA_VERSION})"
                        )
                    result = probe.execute("PRAGMA quick_check").fetchone()[0]
                    if result != "ok":
                        raise StoreError(f"persistence.path: {path} is corrupt: {result}")
                finally:
                    probe.close()
            db = self._connect()
            try:
                self._migrate(db)
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._replay(db)
            finally:
                db.close()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"persistence.path: {path} cannot be used as a store: {exc}") from None

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Bring a store of an older schema to this one, in one transaction
        (a crash midway leaves the old schema, migrated again at next start)."""
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version != 1:
            return
        db.execute("BEGIN IMMEDIATE")
        db.execute("ALTER TABLE sessions ADD COLUMN expire_at REAL")
        db.execute("UPDATE sessions SET expire_at = deadline")
        db.execute("DROP INDEX IF EXISTS sessions_deadline")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
        log.info("store_migrated", from_version=version, to_version=SCHEMA_VERSION)

    @staticmethod
    def _replay(db: sqlite3.Connection) -> None:
        """Fold what a crash left in the journal into the table, in order."""
        rows = db.execute(
            "SELECT scan_hash, key, value, context, created_at, updated_at, accessed_at, ttl, "
            "deadline FROM journal ORDER BY seq"
        ).fetchall()
        if not rows:
            return
        db.execute("BEGIN IMMEDIATE")
        for row in rows:
            if row[2] is None:
                db.execute("DELETE FROM sessions WHERE scan_hash = ? AND key = ?", row[:2])
            else:
                db.execute(_UPSERT, row)
        db.execute(f"UPDATE sessions SET expire_at = deadline WHERE {_MISFILED}")
        db.execute("DELETE FROM journal")
        db.execute("COMMIT")
        log.info("store_journal_replayed", operations=len(rows))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._writer, name="sessiond-store", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ writes

    def record(self, key: bytes, change: Change) -> None:
        with self._lock:
            self._pending[key] = change
            self._op_seq += 1

    def load(self, key: bytes) -> Row | None:
        """Blocking read-through for library use; the daemon uses :meth:`load_many`."""
        found, rest = self._overlay([key])
        if rest:
            found.update(self._read_keys(rest))
        return found.get(key)

    # ----------------------------------------------------------- reads

    def _overlay(self, keys: Iterable[bytes]) -> tuple[dict[bytes, Change], list[bytes]]:
        """Answers for ``keys`` from writes not yet committed; the rest to read."""
        with self._lock:
            return self._overlay_locked(keys)

    def _overlay_locked(self, keys: Iterable[bytes]) -> tuple[dict[bytes, Change], list[bytes]]:
        found: dict[bytes, Change] = {}
        rest: list[bytes] = []
        pending, inflight = self._pending, self._inflight
        for key in keys:
            if key in pending:
                found[key] = pending[key]
            elif self._clear_pending:
                found[key] = None
            elif key in inflight:
                found[key] = inflight[key]
            elif self._inflight_cleared:
                found[key] = None
            elif key in self._unfolded:
                found[key] = self._unfolded[key]
            elif key in self._folding:
                found[key] = self._folding[key]
            else:
                rest.append(key)
        return found, rest

    def _reader_db(self) -> sqlite3.Connection:
        """The event loop's read connection on its thread; a reader thread's own elsewhere."""
        if threading.current_thread() is threading.main_thread():
            return self._db
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
        return db

    def _read_keys(self, keys: list[bytes]) -> dict[bytes, Change]:
        db = self._reader_db()
        sql = f"SELECT {_COLUMNS} FROM sessions WHERE scan_hash = ? AND key = ?"
        found: dict[bytes, Change] = dict.fromkeys(keys)
        for key in keys:
            row = db.execute(sql, (scan_hash(key), key)).fetchone()
            if row is not None:
                found[key] = _stored(row)[1]
        return found

    def _read_keys_hooked(self, keys: list[bytes]) -> dict[bytes, Change]:
        found = self._read_keys(keys)
        self._hook("load")
        return found

    async def load_many(self, keys: list[bytes]) -> dict[bytes, Row | None]:
        found, rest = self._overlay(keys)
        if rest:
            loop = asyncio.get_running_loop()
            with self._lock:
                self._reads += 1
                since = self._commits
            try:
                read = await loop.run_in_executor(self._readers, self._read_keys_hooked, rest)
            except sqlite3.Error as exc:
                self.stats.error("load")
                log.error("store_error", operation="load", error=str(exc))
                raise StoreError(f"store read failed: {exc}") from None
            finally:
                with self._lock:
                    # A write or delete may have happened while the read ran,
                    # still uncommitted or committed after the read began: it wins.
                    newer, _ = self._overlay_locked(rest)
                    recent = {k: self._recent[k] for k in rest if k in self._recent}
                    cleared_at = self._recent_clear
                    self._reads -= 1
                    if not self._reads:
                        self._recent = {}
            for key in rest:
                at, entry = recent.get(key, (0, None))
                if key in newer:
                    found[key] = newer[key]
                elif at > since and at >= cleared_at:
                    found[key] = entry
                elif cleared_at > since:
                    found[key] = None
                else:
                    found[key] = read.get(key)
        return found

    def _queued(self) -> tuple[dict[bytes, Change], bool]:
        """Every change the table does not have yet (newest wins), and whether
        the table's rows still count (not after FLUSHDB)."""
        with self._lock:
            if self._clear_pending:
                return dict(self._pending), False
            if self._inflight_cleared:
                return {**self._inflight, **self._pending}, False
            return {**self._folding, **self._unfolded, **self._inflight, **self._pending}, True

    def count_rows(self) -> TableCounts:
        """Counted in SQL plus the queued changes, not by reading every row."""
        overlay, rows_valid = self._queued()
        total = expiring = 0
        if rows_valid:
            db = self._reader_db()
            # One read transaction: every query sees the same table, whatever
            # the writer commits meanwhile (a fold moves overlay keys into it).
            db.execute("BEGIN")
            try:
                total, expiring = db.execute(
                    "SELECT COUNT(*), COUNT(deadline) FROM sessions"
                ).fetchone()
                if overlay:
                    # Which queued sessions the table already holds: one join
                    # against a temporary table, not a lookup per key.
                    db.execute("CREATE TEMP TABLE IF NOT EXISTS probe (h INTEGER, k BLOB)")
                    db.execute("DELETE FROM probe")
                    db.executemany(
                        "INSERT INTO probe VALUES (?, ?)", ((scan_hash(k), k) for k in overlay)
                    )
                    n, e = db.execute(
                        "SELECT COUNT(*), COUNT(s.deadline) FROM probe AS p "
                        "JOIN sessions AS s ON s.scan_hash = p.h AND s.key = p.k"
                    ).fetchone()
                    total -= n
                    expiring -= e
            finally:
                db.execute("COMMIT")
        return TableCounts(overlay, total, expiring)

    def scan_rows(self, cursor: int, count: int | None) -> TableSlice:
        """Rows with ``scan_hash >= cursor``: about ``count`` of them, whole
        hash groups (all of them if ``count`` is ``None``), and the queued
        changes."""
        # The overlay first, then the rows: a batch the writer commits in between
        # is then in both. The other order lost it (read before its commit, gone
        # from the overlay after), and SCAN/KEYS/DBSIZE missed those keys.
        overlay, rows_valid = self._queued()
        sql = (
            "SELECT scan_hash, key, deadline FROM sessions WHERE scan_hash >= ? ORDER BY scan_hash"
        )
        db = self._reader_db()
        rows = db.execute(sql + ("" if count is None else f" LIMIT {count + 1}"), (cursor,))
        rows_list = rows.fetchall()
        upper = HASH_SPACE
        if count is not None and len(rows_list) > count:
            upper = rows_list[-1][0]
            if upper == cursor:
                upper = cursor + 1
                rows_list = db.execute(
                    "SELECT scan_hash, key, deadline FROM sessions WHERE scan_hash = ?", (cursor,)
                ).fetchall()
        found = [(h, bytes(k), d) for h, k, d in rows_list if h < upper] if rows_valid else []
        return TableSlice(found, overlay, rows_valid, upper)

    async def whole_table(self, read: Callable[[], T], operation: str) -> T:
        """Run ``read`` on the whole-table thread: it reads every row or joins
        every queued change (KEYS read 80k rows in 250 ms, measured), and no
        other client should wait for that."""
        loop = asyncio.get_running_loop()
        self._hook("whole-table")

        def hooked() -> T:
            self._hook("scan")
            return read()

        try:
            return await loop.run_in_executor(self._scanner, hooked)
        except sqlite3.Error as exc:
            self.stats.error("load")
            log.error("store_error", operation=operation, error=str(exc))
            raise StoreError(f"store read failed: {exc}") from None

    def clear(self) -> None:
        with self._lock:
            self._pending = {}
            self._clear_pending = True
            self._op_seq += 1

    def due(self, now: float, limit: int) -> list[bytes]:
        """Stored sessions whose deadline has passed and that no queued change
        names. A row found renewed since it was filed is re-filed instead."""
        rows = self._db.execute(
            "SELECT key, deadline FROM sessions WHERE expire_at <= ? ORDER BY expire_at LIMIT ?",
            (now, limit),
        ).fetchall()
        keys: list[bytes] = []
        with self._lock:
            newer = (self._pending, self._inflight, self._unfolded, self._folding)
            for raw_key, deadline in rows:
                key = bytes(raw_key)
                if any(key in m for m in newer):
                    continue  # a newer write has it (its fold re-files the row)
                if deadline is None or deadline > now:
                    self._refile.add(key)  # renewed since it was filed
                    continue
                keys.append(key)
        if self._refile:
            self._wake.set()
        return keys

    def lagging(self) -> bool:
        """Whether the writer has been busy (a slow commit or fold) for longer
        than flush_interval. Under ``durability: batch`` the server then holds
        write replies until their commit, as under ``always``: a slow disk
        slows writers down instead of widening what a crash can lose."""
        since = self._busy_since
        return since > 0.0 and time.monotonic() - since > self.flush_interval

    def after_commit(self, callback: Callable[[StoreError | None], None]) -> None:
        """Call ``callback`` on the event loop once every operation recorded so
        far is committed to disk (with the error if that commit failed). A
        plain callback, not a future: this runs once per acknowledged batch of
        writes on every connection."""
        seq = self._op_seq
        if self._committed_seq >= seq:
            callback(None)
            return
        self._waiters.append((seq, callback))
        self._wake.set()

    def _writer(self) -> None:
        """The writer thread. A bug in it must not leave replies waiting
        forever: it is logged, the waiting writes get an error, the batch in
        flight goes back to the queue, and the loop starts over."""
        while True:
            try:
                self._write_loop()
                return
            except Exception as exc:
                log.exception("store_writer_failed")
                with self._lock:
                    for key, entry in self._inflight.items():
                        self._pending.setdefault(key, entry)
                    self._clear_pending = self._clear_pending or self._inflight_cleared
                    self._inflight = {}
                    self._inflight_cleared = False
                self._fold_abort()
                self.failure = StoreError(f"store writer failed: {exc}")
                self._committed(self._op_seq, self.failure)
                time.sleep(self.retry_interval)

    def _write_loop(self) -> None:
        db = self._connect()
        # Folds rewrite pages all over the table: keep them in SQLite's cache
        # rather than reading them back from the file (negative: KiB).
        db.execute(f"PRAGMA cache_size={-_WRITER_CACHE_KIB}")
        last_batch = 0
        last_start = time.monotonic()
        try:
            while True:
                # Under "always" a reply waiting in after_commit() wakes us at
                # once; operations that arrive meanwhile share the next commit.
                # Under "batch" a commit starts every flush_interval (counted
                # from the last start, not the last end): a crash loses at most
                # flush_interval plus one commit. A fold in progress goes on
                # between commits, one chunk at a time.
                idle = max(0.0, last_start + self.flush_interval - time.monotonic())
                self._busy_since = 0.0
                self._wake.wait(0.0 if self._fold_running() or self._trim_upto else idle)
                self._wake.clear()
                self._busy_since = time.monotonic()
                last_start = time.monotonic()
                if last_batch > 1 and not self._stopping:
                    self._linger()
                with self._lock:
                    batch, self._pending = self._pending, {}
                    cleared, self._clear_pending = self._clear_pending, False
                    seq = self._op_seq
                    self._inflight = batch
                    self._inflight_cleared = cleared
                last_batch = len(batch)
                if batch or cleared:
                    if not self._commit(db, batch, cleared, seq):
                        if self._stopping:
                            return
                        time.sleep(self.retry_interval)
                        continue
                else:
                    self._committed(seq, None)
                if (
                    not self._fold_running()
                    and not self._trim_upto  # the last fold's rows go first
                    and self._unfolded
                    and (
                        self._stopping
                        or len(self._unfolded) >= _FOLD_ROWS
                        or time.monotonic() - self._last_fold >= self.fold_interval
                    )
                ):
                    self._fold_start(db)
                if self._fold_running():
                    self._fold_step(db, self._fold_chunk())
                elif self._trim_upto:
                    self._trim_step(db, last_batch)
                if self._refile:
                    self._refile_step(db)
                if self._stopping and not self._pending and not self._clear_pending:
                    if self._fold_running() or self._unfolded or self._trim_upto:
                        continue  # fold (and trim) everything before stopping
                    return
        finally:
            db.close()

    def _linger(self) -> None:
        """Wait briefly while writes keep arriving, so that the clients whose
        replies the last commit released join the next one (group commit works
        on whole groups instead of alternating halves). Only after a commit of
        several writes: a lone client never waits."""
        deadline = time.monotonic() + _LINGER_MAX
        seen = len(self._pending)
        time.sleep(_LINGER_STEP)
        while time.monotonic() < deadline:
            now = len(self._pending)
            if now == seen:
                return
            seen = now
            time.sleep(_LINGER_STEP)

    def _commit(
        self,
        db: sqlite3.Connection,
        batch: dict[bytes, Change],
        cleared: bool,
        seq: int,
    ) -> bool:
        started = time.perf_counter()
        rows: list[tuple[Any, ...]] = []
        deletes = 0
        seq_no = self._journal_seq  # moves on only once the commit is in
        for key, change in batch.items():
            seq_no += 1
            if change is None:
                deletes += 1
                rows.append((seq_no, scan_hash(key), key, None, None, None, None, None, None, None))
            else:
                rows.append((seq_no, scan_hash(key), key, *change))
        try:
            self._hook("commit")
            db.execute("BEGIN IMMEDIATE")
            if cleared:
                db.execute("DELETE FROM sessions")
                db.execute("DELETE FROM journal")
            if rows:
                db.executemany(_JOURNAL, rows)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            with self._lock:
                # Keep the failed operations for the next attempt unless newer
                # ones replaced them; the waiting replies get an error.
                if not self._clear_pending:  # a FLUSHDB since supersedes them
                    for key, entry in batch.items():
                        self._pending.setdefault(key, entry)
                self._clear_pending = self._clear_pending or cleared
                self._inflight = {}
                self._inflight_cleared = False
            self.stats.error("commit")
            log.error("store_error", operation="commit", error=str(exc), sessions=len(batch))
            self.failure = StoreError(f"store write failed: {exc}")
            self._committed(seq, self.failure)
            return False
        self._journal_seq = seq_no
        if self.failure is not None:
            log.info("store_recovered")
            self.failure = None
        if cleared:  # the table and journal are empty now
            self._fold_todo = []
            self._fold_buckets = []
            self._trim_upto = 0
        with self._lock:
            if cleared:
                self._unfolded = {}
                self._folding = {}
            self._unfolded.update(batch)
            self._inflight = {}
            self._inflight_cleared = False
            self._commits += 1
            if self._reads:
                if cleared:
                    self._recent_clear = self._commits
                for key, entry in batch.items():
                    self._recent[key] = (self._commits, entry)
        self.stats.writes += len(rows) - deletes
        self.stats.commit_duration.observe(time.perf_counter() - started)
        self._committed(seq, None)
        return True

    def _fold_start(self, db: sqlite3.Connection) -> None:
        """Begin moving the journal's sessions into the table."""
        with self._lock:
            fold, self._unfolded = self._unfolded, {}
            self._folding = fold
        # In table order: consecutive chunks touch consecutive pages, so a fold
        # of N sessions writes about min(N, table pages) pages, not N. Sorted
        # one part of the hash space at a time, as the fold reaches it.
        shift = (HASH_SPACE - 1).bit_length() - _FOLD_BUCKET_BITS
        buckets: list[list[tuple[int, bytes, Change]]] = [[] for _ in range(1 << _FOLD_BUCKET_BITS)]
        for key, entry in fold.items():
            h = scan_hash(key)
            buckets[h >> shift].append((h, key, entry))
        buckets.reverse()
        self._fold_buckets = buckets
        self._fold_todo = []
        self._fold_upto = self._journal_seq
        self._last_fold = time.monotonic()

    def _fold_running(self) -> bool:
        return bool(self._fold_todo or self._fold_buckets)

    def _fold_chunk(self) -> int:
        """Sessions for the next fold transaction: few while writes wait for a
        commit (it waits for the chunk: a full one doubled the p99 of durable
        writes), a full chunk when none wait or when the fold falls behind (the
        journal must not grow without bound under a sustained load)."""
        waiting = self._pending or self._waiters
        if waiting and len(self._unfolded) < _FOLD_ROWS:
            return _FOLD_CHUNK_WAITING
        return _FOLD_CHUNK

    def _fold_step(self, db: sqlite3.Connection, size: int) -> None:
        """Fold one chunk in its own transaction, so durable commits never wait
        long behind a fold. Once the last chunk is in, the folded journal rows
        may go (:meth:`_trim_step`); until then a crash simply replays them."""
        todo = self._fold_todo
        buckets = self._fold_buckets
        while len(todo) < size and buckets:
            bucket = buckets.pop()
            bucket.sort(key=itemgetter(0, 1), reverse=True)
            todo[:0] = bucket  # after the rest of the previous part (taken from the end)
        chunk = todo[-size:]
        del todo[-size:]
        chunk.reverse()
        last = not todo and not buckets
        try:
            # The journal keeps these sessions until the fold is in: no fsync
            # is needed for durability.
            with _unsynced(db):
                # Each key occurs once in a chunk: deletes and upserts may go apart.
                db.executemany(
                    "DELETE FROM sessions WHERE scan_hash = ? AND key = ?",
                    [(h, key) for h, key, entry in chunk if entry is None],
                )
                upserts = [(h, key, *row) for h, key, row in chunk if row is not None]
                db.executemany(_UPSERT, upserts)
                now = time.time()
                db.executemany(_REFILE, [(row[0], row[1], now) for row in upserts])
        except sqlite3.Error as exc:
            self._fold_abort()
            self.stats.error("fold")
            log.error("store_error", operation="fold", error=str(exc))
            return
        if last:
            self._trim_upto = self._fold_upto
            with self._lock:
                fold, self._folding = self._folding, {}
                self._commits += 1
                if self._reads:
                    for key, entry in fold.items():
                        self._recent[key] = (self._commits, entry)

    def _refile_step(self, db: sqlite3.Connection) -> None:
        """Move the expire_at of rows that expiry found renewed to their
        deadline. Unsynced: after a crash the next sweep finds them again."""
        with self._lock:
            keys, self._refile = self._refile, set()
        try:
            with _unsynced(db):
                db.executemany(
                    "UPDATE sessions SET expire_at = deadline WHERE scan_hash = ? AND key = ?",
                    [(scan_hash(key), key) for key in keys],
                )
        except sqlite3.Error as exc:
            self.stats.error("expire")
            log.error("store_error", operation="expire", error=str(exc))

    def _trim_step(self, db: sqlite3.Connection, added: int = 0) -> None:
        """Delete some of the journal rows that finished folds have put in the
        table (``added``: rows the last commit appended). Unsynced: a crash
        before it is on disk replays them, harmlessly (the module docstring
        says why); so does giving up after an error."""
        waiting = self._pending or self._waiters
        limit = max(_TRIM_ROWS_WAITING, 4 * added) if waiting else _TRIM_ROWS
        try:
            with _unsynced(db):
                deleted = db.execute(
                    "DELETE FROM journal WHERE seq IN "
                    "(SELECT seq FROM journal WHERE seq <= ? ORDER BY seq LIMIT ?)",
                    (self._trim_upto, limit),
                ).rowcount
        except sqlite3.Error as exc:
            # Not retried at once (a full disk would fail every pass): the
            # rows stay, and the next fold's end sets a bound covering them.
            self._trim_upto = 0
            self.stats.error("fold")
            log.error("store_error", operation="fold", error=str(exc))
            return
        if deleted < limit:
            self._trim_upto = 0

    def _fold_abort(self) -> None:
        """Give up the fold in progress; its sessions stay journaled."""
        with self._lock:
            for key, entry in self._folding.items():
                self._unfolded.setdefault(key, entry)
            self._folding = {}
        self._fold_todo = []
        self._fold_buckets = []

    def _committed(self, seq: int, error: StoreError | None) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._resolve, seq, error)

    def _resolve(self, seq: int, error: StoreError | None) -> None:
        if error is None:
            self._committed_seq = max(self._committed_seq, seq)
        due = [cb for wanted, cb in self._waiters if wanted <= seq]
        if due:
            self._waiters = [(w, cb) for w, cb in self._waiters if w > seq]
            for callback in due:
                callback(error)

    def recent(self, limit: int) -> list[tuple[bytes, Row]]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM sessions WHERE deadline IS NULL OR deadline > ? "
            "ORDER BY accessed_at DESC LIMIT ?",
            (time.time(), limit),
        ).fetchall()
        return [_stored(row) for row in rows]

    def close(self) -> None:
        """Commit everything pending, fold it and stop the threads."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        else:
            db = self._connect()
            try:
                with self._lock:
                    batch, self._pending = self._pending, {}
                    cleared, self._clear_pending = self._clear_pending, False
                if batch or cleared:
                    self._commit(db, batch, cleared, self._op_seq)
                if self._unfolded:
                    self._fold_start(db)
                    while self._fold_running():
                        self._fold_step(db, _FOLD_CHUNK)
                while self._trim_upto:
                    self._trim_step(db)
            finally:
                db.close()
        self._readers.shutdown(wait=True)
        self._scanner.shutdown(wait=True)
        self._db.close()
