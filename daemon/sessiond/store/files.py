"""The store's files on disk: which files make a store, who may use them, and
whether they are still the ones we opened.

Owns: the exclusive lock (one process per store), the first-run marker (a
store is created once, never silently again), the checks that refuse a file
that is not a healthy sessiond store without modifying it, the SQLite schema
and its migrations, file modes (0600 whatever the umask), and the identity
checks that notice the files being removed or replaced while the daemon runs.

Must never know: what a session is beyond the table's columns, the log's
record format, or anything about the event loop.

The files of a store at ``PATH``:

``PATH``
    SQLite (WAL mode): the compacted sessions and the store's state.
``PATH-wal``, ``PATH-shm``
    SQLite's own; created with ``PATH``'s mode.
``PATH-log.NNNNNNNNNNNN``
    the append-only log's segments (:mod:`.log`).
``.PATH-store`` (a dot file beside ``PATH``)
    the marker written when the store is created: while it exists, a missing
    ``PATH`` is an error, not a first run.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import structlog

from .api import StoreError
from .log import MAGIC, Pinned
from .watch import DirectoryWatch

log = structlog.get_logger("sessiond.store")

APPLICATION_ID = 0x53455353  # "SESS"
SCHEMA_VERSION = 5
FILE_MODE = 0o600

# The rows sit in a rowid table, in the order they were first written, and a
# unique index on (scan_hash, key) serves point lookups (the hash is computed
# from the key), upserts and SCAN order (schema 5). A new session is then
# appended to the table's last page and adds one small entry (its key and
# rowid, about 30 bytes) to the index, where the table keyed by (scan_hash,
# key) of schemas 1-4 put each new session's whole row at a random place:
# once the table had many more pages than a compaction step has sessions,
# every new session dirtied a 4 KiB page of its own (WAL write, then
# checkpoint), and the write rate fell as the table grew (issue 18: 23k
# SETs/s at ten million against 53k at one). The index is about a tenth of
# the table's size: a step's new sessions share its pages up to a few
# million sessions; past that each still dirties an index page of its own,
# for about half the bytes written per session of the old layout
# (bench/RESULTS.md, "A rowid table": 1.1-1.4x the write rate at ten
# million, still not linear). A rewrite updates its row in place (the
# rowid, and so the index entry, stays). The other index is on expire_at.
#
# expire_at is when expiry should next look at a row: never later than its
# deadline (so no expired row is missed), but not moved when a write only
# pushes the deadline later (a sliding renewal, a rewrite): an index on the
# deadline itself was rewritten at a random page by nearly every write, which
# tripled the cost of a fold (schema 1 -> 2). Expiry re-files a row whose
# expire_at surfaces while its deadline lies further on (once per TTL at most).
#
# updated_at and accessed_at hold 0 where they equal the column before them
# (schema 4): a session written and not read since has all three times equal,
# and a 0 takes no bytes in a SQLite record where a time takes 8, 16 of the
# 276 bytes of a row with a 200-byte value (issue 18). No real time is 0, so
# rows of schema 3 read back as they are: 3 -> 4 changes no row.
#
# store_state.compacted_through is the last log segment whose every change is
# in the sessions table: it moves in the same transaction as that segment's
# last rows, so a segment is either replayed at start or wholly in the table.
_SESSIONS_COLUMNS = """(
    id INTEGER PRIMARY KEY,
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
    kind INTEGER NOT NULL DEFAULT 0
)"""
_EXPIRE_AT_INDEX = (
    "CREATE INDEX IF NOT EXISTS sessions_expire_at ON sessions(expire_at) "
    "WHERE expire_at IS NOT NULL"
)
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS sessions {_SESSIONS_COLUMNS};
CREATE UNIQUE INDEX IF NOT EXISTS sessions_key ON sessions(scan_hash, key);
{_EXPIRE_AT_INDEX};
CREATE TABLE IF NOT EXISTS store_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    compacted_through INTEGER NOT NULL
);
INSERT OR IGNORE INTO store_state VALUES (1, 0);
"""
# Bound on the WAL after a checkpoint resets it (SQLite truncates it to this).
WAL_LIMIT_BYTES = 16 * 1024 * 1024
_UPSERT_V2 = (
    "INSERT INTO sessions (scan_hash, key, value, context, created_at, updated_at, "
    "accessed_at, ttl, deadline, expire_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9) "
    "ON CONFLICT (scan_hash, key) DO UPDATE SET "
    "value = excluded.value, context = excluded.context, created_at = excluded.created_at, "
    "updated_at = excluded.updated_at, accessed_at = excluded.accessed_at, "
    "ttl = excluded.ttl, deadline = excluded.deadline"
)
_LOCK_LOG_EVERY = 10.0  # seconds between "still waiting for the lock" lines
_PROGRESS_EVERY = 5.0  # seconds between two progress reports of a migration
_PROGRESS_STEPS = 100_000  # SQLite instructions between two looks at the clock


# sqlite3 (CPython 3.11 at least) binds an int, float, str or bytearray as it
# is, but first tries to adapt anything else: for bytes and None it looks up a
# registered adapter, then fails two attribute lookups whose AttributeError
# messages it formats and drops: 8.9k of the 35.9k instructions an upserted
# row cost (callgrind, 10k updates of a 20k-row table). So the store binds keys
# and values as bytearrays, the same BLOBs (.api.table_key), and None has an
# adapter that gives it back as it is (a dict's get: a C call, no error). For
# the whole process, as sqlite3's adapters are: every connection of the store
# is made here, and None binds as NULL either way.
sqlite3.register_adapter(type(None), cast("Callable[[None], None]", {}.get))


def connect(path: Path, *, max_pages: int = 0, shared: bool = False) -> sqlite3.Connection:
    """A connection to the store's SQLite file, in WAL mode, synchronous FULL
    (``shared``: closable from another thread than the one using it)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=not shared, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
    if max_pages:
        db.execute(f"PRAGMA max_page_count={int(max_pages)}")
    return db


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fallocate() -> Callable[[int, int, int, int], int] | None:
    """libc's fallocate(2), which fails where the filesystem cannot allocate
    (``posix_fallocate`` would write a zero into every block instead)."""
    try:
        call = ctypes.CDLL(None, use_errno=True).fallocate
    except (AttributeError, OSError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    call.restype = ctypes.c_int
    return cast("Callable[[int, int, int, int], int]", call)


_FALLOCATE = _fallocate()


def _allocate(fd: int, size: int) -> None:
    """Allocate ``size`` bytes of the new segment ``fd`` and write its magic
    at its start, where the filesystem can allocate: else (or on a disk too
    full for it) the file stays empty and grows as it is written; allocating
    only makes its commits faster. Not synced here: on ext4 the directory's
    fsync that follows commits the allocation too (a probe of three rounds
    found the commits after it no slower than after an fdatasync of the
    file), and elsewhere the first commit's ``fdatasync`` does; durability
    never depends on it. The magic, which the first
    commit writes again, makes the zeros a segment that a sessiond from
    before allocation reads as one (it refuses a file of zeros)."""
    if _FALLOCATE is None or _FALLOCATE(fd, 0, 0, size) != 0:
        return
    with contextlib.suppress(OSError):
        os.pwrite(fd, MAGIC, 0)


def lock_holder(fd: int) -> int | None:
    """The pid holding a flock on ``fd``'s file, from /proc/locks (Linux), if known."""
    ino = os.fstat(fd).st_ino
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234567 0 EOF"; "->" marks a waiter.
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[2] != "->":
            with contextlib.suppress(ValueError, IndexError):
                if int(fields[5].rsplit(":", 1)[1]) == ino:
                    return int(fields[4])
    return None


class StoreFiles:
    """The files of one store, locked for this process while open.

    :meth:`open` takes the lock (waiting for another daemon to release it),
    refuses a file that is not a usable store (leaving no file of ours
    behind), creates a store only where none was ever created, migrates an
    older schema, and returns the last segment the table holds entirely.
    ``max_pages`` caps the database file (a full disk, for tests);
    ``progress`` is told what a long step of opening is doing, when it
    starts and every few seconds while it lasts (:func:`migrate`)."""

    def __init__(
        self, path: Path, *, max_pages: int = 0, progress: Callable[[str], None] | None = None
    ) -> None:
        self.path = path
        self.directory = path.parent
        self.max_pages = max_pages
        self.progress = progress
        self.marker = self.directory / f".{path.name}-store"
        self._lock_fd: int | None = None
        self._directory_id: tuple[int, int] | None = None  # (st_dev, st_ino) when opened
        self._database: Pinned | None = None  # the database file opened, by its name
        # Whether a name on the store's path changed (None: inotify was refused).
        self.watch: DirectoryWatch | None = None

    @property
    def lock_fd(self) -> int:
        """The open file that holds the lock (a child inheriting it holds it too)."""
        assert self._lock_fd is not None
        return self._lock_fd

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` released the store (another process may hold it now)."""
        return self._lock_fd is None

    # ------------------------------------------------------------ naming

    def segment_path(self, number: int) -> Path:
        return self.directory / f"{self.path.name}-log.{number:012d}"

    def segments(self) -> list[tuple[int, Path]]:
        """The log segments on disk, oldest first."""
        prefix = f"{self.path.name}-log."
        found: list[tuple[int, Path]] = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(prefix) and name[len(prefix) :].isdigit():
                    found.append((int(name[len(prefix) :]), Path(entry.path)))
        found.sort()
        return found

    def disk_bytes(self) -> int:
        """Bytes of every file of the store (database, WAL, log segments)."""
        total = 0
        for file in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            with contextlib.suppress(OSError):
                total += file.stat().st_size
        for _, segment in self.segments():
            with contextlib.suppress(OSError):
                total += segment.stat().st_size
        return total

    # ------------------------------------------------------------ opening

    def open(self) -> int:
        """Lock, check, create or migrate the store; the last compacted segment."""
        path = self.path
        if not self.directory.is_dir():
            raise StoreError(
                f"persistence.path: directory {self.directory} does not exist; sessiond "
                "never creates a store's directory (a missing one may have been removed "
                "with the sessions in it): create it, or correct the path"
            )
        created = self._lock()
        ours = [p for p in self._sqlite_files() if not p.exists()]
        try:
            return self._check_and_init(created)
        except BaseException:
            # Leave nothing of ours beside a store we refused: the -wal and
            # -shm files a probe created, and the file we created ourselves.
            for extra in ours:
                with contextlib.suppress(OSError):
                    extra.unlink()
            if created:
                with contextlib.suppress(OSError):
                    path.unlink()
            self.close()
            raise

    def _sqlite_files(self) -> list[Path]:
        return [Path(f"{self.path}-wal"), Path(f"{self.path}-shm"), Path(f"{self.path}-journal")]

    def _lock(self) -> bool:
        """Take the store's exclusive lock (a flock on the database file);
        whether this call created the file (a first run)."""
        path = self.path
        waited_since = 0.0
        while True:
            created = False
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                if self.marker.exists():
                    raise StoreError(
                        f"persistence.path: {path} is missing, but a store was created there "
                        f"({self.marker} says when): it was removed or moved. Restore it, or "
                        f"delete {self.marker} to start with an empty store"
                    ) from None
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
                except FileExistsError:
                    continue  # another daemon created it meanwhile: lock that one
                except OSError as exc:
                    raise StoreError(
                        f"persistence.path: cannot create {path}: {exc.strerror}"
                    ) from None
                os.fchmod(fd, FILE_MODE)  # whatever the umask
                created = True
            except OSError as exc:
                raise StoreError(f"persistence.path: cannot open {path}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                now = time.monotonic()
                if not waited_since or now - waited_since >= _LOCK_LOG_EVERY:
                    log.warning(
                        "store_locked_waiting",
                        store=str(path),
                        holder_pid=lock_holder(fd),
                        hint="another sessiond uses this store; waiting for it to exit",
                    )
                    waited_since = now
                os.close(fd)
                time.sleep(0.05)
                continue
            except OSError as exc:
                os.close(fd)
                raise StoreError(f"persistence.path: cannot lock {path}: {exc.strerror}") from None
            # The file we locked must still be the one at the path (a waiter
            # may have locked a file that its holder then replaced).
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            if waited_since:
                log.info("store_lock_acquired", store=str(path))
            self._lock_fd = fd
            return created

    def _check_and_init(self, created: bool) -> int:
        path = self.path
        st = path.stat()
        if not created and st.st_size == 0 and self.marker.exists():
            raise StoreError(
                f"persistence.path: {path} is empty, but a store was created there "
                f"({self.marker}); refusing to start on it"
            )
        # Root passes os.access() whatever the mode, so honour the mode bits too:
        # an operator who made the file read-only meant it (even an empty one).
        if not os.access(path, os.R_OK | os.W_OK) or not st.st_mode & 0o222:
            raise StoreError(f"persistence.path: {path} is read-only; sessiond must write it")
        try:
            if st.st_size > 0:
                self._probe()
            db = connect(path, max_pages=self.max_pages)
            try:
                migrate(db, self.progress)
                db.executescript(SCHEMA)
                db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                through = int(db.execute("SELECT compacted_through FROM store_state").fetchone()[0])
            finally:
                db.close()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"persistence.path: {path} cannot be used as a store: {exc}") from None
        for extra in self._sqlite_files():
            with contextlib.suppress(OSError):
                os.chmod(extra, FILE_MODE)
        if not self.marker.exists():
            self._write_marker()
            if created:
                log.info("store_created", store=str(path), marker=str(self.marker))
        # The database was opened (and so pinned) by the lock, before the
        # watch: its first poll reports a change, so the first commit checks.
        self._watch()
        d = os.stat(self.directory)
        self._directory_id = (d.st_dev, d.st_ino)
        self._database = Pinned(str(path), self.lock_fd)  # the lock is on the database file
        return through

    def _watch(self) -> None:
        try:
            self.watch = DirectoryWatch(self.directory)
        except OSError as exc:
            log.info(
                "store_watch_unavailable",
                error=exc.strerror or str(exc),
                consequence="each commit checks the store's files with a stat",
            )

    def _probe(self) -> None:
        """Refuse a file that is not a sessiond store or is damaged; read-only.

        Every page is checked (``PRAGMA quick_check``) only when a ``-wal``
        file is left over: the last process using the store did not close it
        (a crash, a kill -9, a lost power). A clean stop deletes the WAL, and
        reading the whole file at every start made start-up grow with the
        store (0.5 s for a million sessions, 350 MB, page cache warm). After
        a clean stop the header and schema are checked; a page damaged since
        is found when it is read (a store error, logged and counted)."""
        path = self.path
        unclean = Path(f"{path}-wal").exists()
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
            result = probe.execute("PRAGMA quick_check").fetchone()[0] if unclean else "ok"
            if result != "ok":
                raise StoreError(f"persistence.path: {path} is corrupt: {result}")
        finally:
            probe.close()

    def _write_marker(self) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        text = (
            f"A sessiond store was created here as {self.path.name} at {stamp} "
            f"(pid {os.getpid()}).\n"
            "While this file exists, sessiond refuses to start if that store is missing.\n"
        )
        fd = os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(self.directory)

    # ----------------------------------------------------------- running

    def check(self, *, full: bool = False) -> str | None:
        """Why the files are no longer the store we opened (removed, moved,
        replaced), or ``None`` while they are.

        A commit runs it when :attr:`watch` fired (or without a watch), so
        unless ``full`` the common case is one ``stat`` of the database's
        path (:class:`~.log.Pinned`): the inode
        we opened found there is linked, and in a directory holding it under
        that name. That is the directory we opened unless our file was
        hard-linked or moved into a replacement directory, which only the
        full check (the directory's identity too) sees: the writer runs it
        every second. A difference pays for the full check, which says what
        changed."""
        database = self._database
        assert database is not None and self._directory_id is not None
        if not full and database.here():
            return None
        assert self._lock_fd is not None
        try:
            if os.fstat(self._lock_fd).st_nlink == 0:
                return f"{self.path} was removed"
            d = os.stat(self.directory)
            f = os.stat(self.path)
        except FileNotFoundError:
            return f"{self.path} or its directory was removed"
        except OSError as exc:
            return f"{self.path} cannot be checked: {exc.strerror}"
        if (d.st_dev, d.st_ino) != self._directory_id:
            return f"directory {self.directory} was replaced"
        if not database.matches(f):
            return f"{self.path} was replaced by another file"
        return None

    def new_segment(self, number: int, allocate: int) -> int:
        """Create log segment ``number`` (0600, durable in its directory); its
        fd. Its first ``allocate`` bytes are allocated now (where the
        filesystem can), so that its commits' ``fdatasync`` has only their
        data to write (:meth:`.log.Segment.append`)."""
        segment = self.segment_path(number)
        fd = os.open(segment, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
            _allocate(fd, allocate)
            _fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            # Not left behind: the retry creates it again (O_EXCL would fail
            # on it with "File exists" and hide what went wrong).
            with contextlib.suppress(OSError):
                segment.unlink()
            raise
        return fd

    def close(self) -> None:
        """Release the lock (last: closing any fd of the file drops SQLite's
        POSIX locks in this process, so every connection must be closed first)."""
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def migrate(
    db: sqlite3.Connection,
    progress: Callable[[str], None] | None = None,
    *,
    every: float = _PROGRESS_EVERY,
) -> None:
    """Bring a store of an older schema to this one, in one transaction (a
    crash midway leaves the old schema, migrated again at the next start).
    ``progress`` hears what it does as it starts and every ``every`` seconds
    while it runs: the daemon extends systemd's start timeout with it, so
    that a large store's migration is not killed and rolled back at every
    start (5-6 s per million sessions for schema 5 on the test machine)."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == 0 or version >= SCHEMA_VERSION:
        return
    log.info("store_migrating", from_version=version, to_version=SCHEMA_VERSION)
    started = time.monotonic()
    if progress is not None:
        what = f"migrating the store from schema {version} to {SCHEMA_VERSION}"
        progress(what)
        told = [started]

        def still_going() -> int:
            now = time.monotonic()
            if now - told[0] >= every:
                told[0] = now
                progress(what)
            return 0  # go on

        db.set_progress_handler(still_going, _PROGRESS_STEPS)
    replayed = 0
    try:
        db.execute("BEGIN IMMEDIATE")
        if version < 3:
            replayed = _migrate_to_3(db, version)
        # 3 -> 4: times equal to the column before them are written as 0 from
        # now on; the rows already there read back as they are.
        rows = _migrate_to_5(db)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException as exc:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        if (
            isinstance(exc, sqlite3.OperationalError)
            and exc.sqlite_errorcode == sqlite3.SQLITE_FULL
        ):
            pages, page_size = (
                db.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_count", "page_size")
            )
            size = pages * page_size // 2**20
            raise StoreError(
                f"persistence.path: migrating the store from schema {version} to "
                f"{SCHEMA_VERSION} copies its sessions and needs two to three times "
                f"the store's size ({size} MiB) free on its disk: {exc}; the store "
                "is left as it was"
            ) from None
        raise
    finally:
        db.set_progress_handler(None, 0)
    log.info(
        "store_migrated",
        from_version=version,
        to_version=SCHEMA_VERSION,
        journal_replayed=replayed,
        sessions=rows,
        seconds=round(time.monotonic() - started, 3),
    )


def _migrate_to_5(db: sqlite3.Connection) -> int:
    """Schemas 1-4 (a table keyed by (scan_hash, key)) to 5 (a rowid table and
    a unique index on them), inside the caller's transaction: the rows copied
    in key order, so that the new index is built by appending; how many.
    The old table's pages go to SQLite's free list, which the next
    writes use before the file grows."""
    db.execute(f"CREATE TABLE sessions_5 {_SESSIONS_COLUMNS}")
    db.execute("CREATE UNIQUE INDEX sessions_key ON sessions_5(scan_hash, key)")
    copied = db.execute(
        "INSERT INTO sessions_5 (scan_hash, key, value, context, created_at, updated_at, "
        "accessed_at, ttl, deadline, expire_at, kind) SELECT scan_hash, key, value, context, "
        "created_at, updated_at, accessed_at, ttl, deadline, expire_at, kind FROM sessions "
        "ORDER BY scan_hash, key"
    ).rowcount
    db.execute("DROP TABLE sessions")  # and its expire_at index
    db.execute("ALTER TABLE sessions_5 RENAME TO sessions")
    db.execute(_EXPIRE_AT_INDEX)
    return int(copied)


def _migrate_to_3(db: sqlite3.Connection, version: int) -> int:
    """Schema 1 or 2 to 3, inside the caller's transaction; the journal
    operations folded."""
    if version == 1:
        db.execute("ALTER TABLE sessions ADD COLUMN expire_at REAL")
        db.execute("UPDATE sessions SET expire_at = deadline")
        db.execute("DROP INDEX IF EXISTS sessions_deadline")
    # Schema 2 kept unfolded writes in a journal table: fold what a crash
    # left there (in order: the newest write of a session wins), then the
    # log replaces it.
    replayed = 0
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'journal'").fetchone():
        rows = db.execute(
            "SELECT scan_hash, key, value, context, created_at, updated_at, accessed_at, "
            "ttl, deadline FROM journal ORDER BY seq"
        ).fetchall()
        for row in rows:
            if row[2] is None:
                db.execute("DELETE FROM sessions WHERE scan_hash = ? AND key = ?", row[:2])
            else:
                db.execute(_UPSERT_V2, row)
        replayed = len(rows)
        db.execute(
            "UPDATE sessions SET expire_at = deadline WHERE "
            "(expire_at IS NULL) <> (deadline IS NULL) OR deadline < expire_at"
        )
        db.execute("DROP TABLE journal")
    db.execute("ALTER TABLE sessions ADD COLUMN kind INTEGER NOT NULL DEFAULT 0")
    return replayed
