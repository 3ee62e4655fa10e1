"""The SQLite store (docs/persistence.md): a thin facade over its parts.

* :mod:`.files` — the files, the lock, the schema, the identity checks;
* :mod:`.log` — the append-only log a change is durable in before its reply;
* :mod:`.overlay` — the changes the table does not have yet, behind one lock;
* :mod:`.compactor` — a sealed log segment into the table, in small steps;
* :mod:`.reads` — the table's SELECTs.

This module owns the scheduling: a group commit takes the pending changes,
appends them as one frame with one ``write`` and one ``fdatasync``, and only
then releases the replies waiting in :meth:`SQLiteStore.after_commit`. Under
``durability: always`` the event loop's thread commits the writes of each of
its iterations itself (:meth:`SQLiteStore._commit_here`); the *log writer*
thread commits under ``batch`` (every ``flush_interval``) and whenever the loop
should not wait for the disk. Every ``fold_interval`` (or ``segment_bytes``) the
writer thread seals the segment and starts the next. The *compactor* writes
sealed segments into the table and deletes them: in the daemon a child
process (:mod:`.compactd`: its Python would hold the GIL the event loop
needs), which lets them wait ``compact_wait`` and then compacts all of them as
one; in embedded use a thread, each segment at once. A clean stop commits what
is pending and compacts only as much as ``close_budget`` allows: the log is
already durable, so what is left is replayed into the overlay at the next
start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from time import monotonic, perf_counter
from typing import TypeVar

import structlog

from ..stats import StoreStats
from . import log as wal
from .api import (
    ACCESSED_AT,
    Fields,
    Hook,
    Kept,
    Outage,
    Row,
    StoreError,
    TableCounts,
    TableSlice,
    call_waiter,
)
from .api import live as fields_live
from .compactd import CompactorProcess
from .compactor import Compaction, Compactor, compactor_connection
from .files import StoreFiles
from .overlay import Layer, Overlay
from .reads import TableReader

log = structlog.get_logger("sessiond.store")

T = TypeVar("T")

_RETRY_AFTER_FAILURE = 1.0
_LINGER_STEP = 0.0002  # seconds between looks at the pending writes
_LINGER_MAX = 0.001  # never hold a commit back longer than this
_FOLD_INTERVAL = 1.0  # seal the segment being appended to after this many seconds
_SEGMENT_BYTES = 16 * 1024 * 1024  # ... or once it holds this many bytes
# A new segment is allocated ahead (files.new_segment) for a quarter more than
# the last one took, at least this much: its commits then write in place.
_ALLOCATE_MIN = 1024 * 1024
# Log bytes not yet compacted beyond which writers are slowed (backpressure):
# this bounds the log on disk and the replay at the next start.
_BACKLOG_BYTES = 32 * 1024 * 1024
# Seconds a commit is held back at most: at twice the backlog bound. 50 ms was
# too gentle: 1M sessions at -P 16 grew the log to 67 segments (1.3M changes,
# 9 s to replay).
_BACKPRESSURE_MAX = 1.0
# Sessions per compaction transaction on a compactor thread. 2048 compacted a
# million-session table's segments at 54k rows/s where 256 did 40k/s (the
# same two 100k-row segments, alternated, twice): fewer commits, each page of
# the table written once per transaction. A larger step would hold the GIL
# longer where it sorts its part of the segment.
_COMPACT_ROWS = 2048
# ... and in the compactor process, which holds nothing the event loop needs:
# 16384, so that a page of the table (or of its key index) is written once
# for the several sessions of the step it holds. A million new sessions went
# in at 88-96k/s against 80-83k/s with 2048 (two alternated runs each; the
# durable benchmark, whose table is small, did not move). Whole segments did
# as well but grew the WAL by a segment's pages (+35-45 MB on disk after the
# load). Overwrites of a 100k-session table cost half the CPU a row in one
# transaction of 24,576 (bench/RESULTS.md, "Whole segments in one transaction").
# The WAL holds up to a step's pages until the next step: 30-40 MB at a million.
_COMPACT_ROWS_PROCESS = 16384
# Commits on the event loop's thread that take longer than _INLINE_SLOW on
# average, weighted _INLINE_WEIGHT to the newest (a slow or failing disk: a run
# of slow commits, or one of more than 80 ms), send the next ones to the writer
# thread for _INLINE_BACKOFF seconds (SQLiteStore's inline_backoff), so that
# reads and PINGs are answered while the disk catches up. Not one commit past
# _INLINE_SLOW: under a sustained load the compactor's writes to the same disk
# made a commit of 10-13 ms every few seconds, and each sent 5 s of commits to
# the thread (4 in 30 s: two thirds of the time).
_INLINE_SLOW = 0.01
_INLINE_WEIGHT = 0.125
_INLINE_BACKOFF = 5.0
# The daemon's compactor waits up to this long after a segment is sealed, or
# until the sealed segments hold half the backlog bound, and then compacts all
# of them at once: a session rewritten in several of them is written to the
# table once. Sessions are rewritten often (every request that slides a TTL),
# and a compaction's cost is per session written: merging two seconds' worth
# instead of one left 0.65 rows per SET instead of 0.79 (-r 100000 at -c 50).
_COMPACT_WAIT = 2.0
# A change reaches the table within fold_interval + compact_wait and a
# compaction's time (about 3 s), later while compaction is behind. A session
# evicted with a deadline sooner than this after its last write is watched by
# the expiry sweep until then (SQLiteStore.evicted), at most _EVICTED_MAX of
# them: past that, one expires when its write reaches the table.
_TABLE_LAG = 60.0
_EVICTED_MAX = 65536
_CHECK_INTERVAL = 1.0  # seconds between checks that the store's files are ours
_CLOSE_BUDGET = 0.5  # seconds a clean stop spends compacting
_LIVE_INTERVAL = 60.0  # seconds between samples of the live bytes


class _Wake:
    """Wakes the writer thread, as a ``threading.Event`` would. ``set`` runs
    once per batch of durable writes on every connection: here it is one C
    call (``SimpleQueue.put``), where ``Event.set`` runs a condition variable
    in Python (measured: about 3k instructions per durable SET at -c 50)."""

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[None] = queue.SimpleQueue()

    def set(self) -> None:
        self._queue.put(None)

    def wait(self, timeout: float) -> None:
        """Until ``set`` is called (or was, since the last ``clear``), or
        ``timeout`` seconds pass."""
        with contextlib.suppress(queue.Empty):
            self._queue.get(timeout=timeout)

    def clear(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()


def _compaction_outage(stats: StoreStats) -> Outage:
    return Outage(stats, "compact", "store_compaction_recovered")


class SQLiteStore:
    """The store: log writer and compactor threads, group commit, overlay.

    ``hook`` (tests only) is called at these points: ``"commit"`` in the log
    writer before each append, ``"compact"`` in the compactor before each
    step, ``"load"`` on a reader thread after a read-through read and before
    its rows are returned, ``"whole-table"`` on the event loop when a
    whole-table read is handed to its thread and ``"scan"`` on that thread
    before it reads, and ``"warm"`` on that thread after the warm start's
    read and before its rows are returned. ``max_pages`` caps the database file and
    ``max_log_bytes`` the log (a full disk, for tests); after a failed commit
    the writer tries again every ``retry_interval``; a disk that turns slow
    sends durable commits to the writer thread for ``inline_backoff`` seconds;
    ``progress`` hears about a long step of opening the store (a migration:
    :class:`~.files.StoreFiles`)."""

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
        max_log_bytes: int = 0,
        segment_bytes: int = _SEGMENT_BYTES,
        backlog_bytes: int = _BACKLOG_BYTES,
        compact_rows: int | None = None,
        compact_pause: float = 0.0,
        compact_wait: float | None = None,
        close_budget: float = _CLOSE_BUDGET,
        compact_in: str = "thread",
        inline_backoff: float = _INLINE_BACKOFF,
        hook: Hook | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self.durability = durability
        self.flush_interval = flush_interval
        self.fold_interval = fold_interval
        self.retry_interval = retry_interval
        self.stats = stats or StoreStats()
        self.max_log_bytes = max_log_bytes
        self.segment_bytes = segment_bytes
        self.backlog_bytes = backlog_bytes
        self.compact_rows = compact_rows or (
            _COMPACT_ROWS_PROCESS if compact_in == "process" else _COMPACT_ROWS
        )
        self.compact_pause = compact_pause
        # Only the process merges segments: a thread compacts each at once.
        self.compact_wait = (
            (_COMPACT_WAIT if compact_in == "process" else 0.0)
            if compact_wait is None
            else compact_wait
        )
        self.close_budget = close_budget
        self.compact_in = compact_in
        self.inline_backoff = inline_backoff
        self.hook = hook
        # The error of the last commit if it failed (cleared by the next one
        # that succeeds): while set, the server refuses writes up front.
        self.failure: StoreError | None = None
        self._removed: str | None = None  # the files are gone: no commit again
        self.files = StoreFiles(path, max_pages=max_pages, progress=progress)
        self.max_pages = max_pages
        through = self.files.open()
        try:
            self.overlay = Overlay()
            self.reader = TableReader(path)
            # (layer, log bytes, monotonic time sealed), oldest first
            self._sealed: list[tuple[Layer, int, float]] = []
            self._cond = threading.Condition()
            self._refile: set[bytes] = set()
            last = self._replay(through)
            self.table_lag = _TABLE_LAG
            # (deadline, key) of sessions evicted while their newest change
            # was in the log (a heap; the event loop's only: see evicted())
            self._evicted: list[tuple[float, bytes]] = []
        except BaseException:
            self.files.close()
            raise
        self._next_segment = last + 1
        self._segment: wal.Segment | None = None
        self._layer: Layer | None = None
        self._next_fd: int | None = None  # segment _next_segment, made ahead (_prepare_next)
        self._allocate = min(_ALLOCATE_MIN, segment_bytes)  # bytes a new segment gets ahead
        self._segment_opened = monotonic()
        self._wake = _Wake()
        # Held by whoever appends to the log: the writer thread, or the event
        # loop's thread committing its own iteration's writes (_commit_here).
        self._commit_lock = threading.Lock()
        # Held by the event loop while a transaction or a script runs
        # (hold_commits): the writer thread takes the pending changes under
        # it, so it never takes half of one (the loop's own commits run
        # between commands). Only around the take, not the append: the
        # loop then never waits for a disk, only for a take to end.
        self._whole = threading.RLock()
        self._commit_scheduled = False  # _commit_here is due in this loop iteration
        self._inline_after = 0.0  # monotonic time before which commits go to the thread
        self._inline_average = 0.0  # seconds an inline commit takes, weighted to the newest
        # The thread that commits its own writes (_commit_here): the event
        # loop's under "always" once started on it; 0, none.
        self._inline_thread = 0
        self._busy_since = 0.0  # when the writer started its current commit, 0 if idle
        self._backlog = sum(size for _, size, _ in self._sealed)
        self._committed_seq = 0
        self._waiters: list[tuple[int, Callable[[StoreError | None], None]]] = []
        self._stopping = False
        self._written = False  # the writer has stopped: nothing more gets sealed
        self._stop_at = 0.0
        self._last_check = monotonic()
        self._live_at = 0.0
        # Whether the table may have changed since the live bytes were last
        # sampled (a full scan): an idle store is not scanned every minute.
        self._table_changed = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer_thread: threading.Thread | None = None
        self._compactor_thread: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sessiond-read")
        # Whole-table reads (DBSIZE, INFO keyspace, KEYS) take their own thread:
        # a few of them must not keep read-through loads waiting.
        self._scanner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sessiond-scan")
        self._update_disk_stats()

    def _hook(self, point: str) -> None:
        if self.hook is not None:
            self.hook(point)

    # ------------------------------------------------------------- opening

    def _replay(self, through: int) -> int:
        """Put the segments after ``through`` back in the overlay (each its
        own layer, sealed: the compactor takes them first) and delete those
        the table already holds. The last segment number seen."""
        last = through
        replayed = 0
        started = monotonic()
        for number, segment in self.files.segments():
            last = max(last, number)
            if number <= through:
                with contextlib.suppress(OSError):
                    segment.unlink()
                continue
            try:
                found = wal.replay(segment)
            except wal.Corrupt as exc:
                raise StoreError(f"persistence.path: {exc}; refusing to start") from None
            except OSError as error:
                raise StoreError(
                    f"persistence.path: cannot read {segment}: {error.strerror}"
                ) from None
            if found.torn is not None:
                # Never acknowledged: its fdatasync had not returned.
                log.warning(
                    "store_log_tail_dropped",
                    segment=str(segment),
                    offset=found.end,
                    bytes=wal.written_after(segment, found.end),
                    reason=found.torn,
                )
            layer = Layer(number, found.changes)
            layer.cleared = found.cleared
            replayed += found.count
            self.overlay.add_layer(layer)
            self._sealed.append((layer, found.end, 0.0))
        if replayed or self._sealed:
            log.info(
                "store_log_replayed",
                segments=len(self._sealed),
                changes=replayed,
                seconds=round(monotonic() - started, 3),
            )
        return last

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the threads. Called on ``loop``'s thread (as the daemon does),
        durable commits are made there; called elsewhere, all on the writer
        thread."""
        self._loop = loop
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop and self.durability == "always":
            self._inline_thread = threading.get_ident()
        self._writer_thread = threading.Thread(
            target=self._writer, name="sessiond-store", daemon=True
        )
        self._compactor_thread = threading.Thread(
            target=self._compactor, name="sessiond-compact", daemon=True
        )
        self._writer_thread.start()
        self._compactor_thread.start()

    # ------------------------------------------------------------ writes

    def record(self, key: bytes, change: Kept) -> None:
        self.overlay.record(key, change)

    def clear(self) -> None:
        self.overlay.clear()

    def after_commit(self, callback: Callable[[StoreError | None], None]) -> None:
        """Call ``callback`` on the event loop once every operation recorded so
        far is durable (with the error if that commit failed). A plain
        callback, not a future: this runs once per acknowledged batch of
        writes on every connection."""
        seq = self.overlay.op_seq
        if self._committed_seq >= seq:
            callback(None)
            return
        self._waiters.append((seq, callback))
        if self._commit_scheduled:
            return
        if threading.get_ident() == self._inline_thread:
            loop = self._loop
            assert loop is not None
            self._commit_scheduled = True
            loop.call_soon(self._commit_here)
        else:
            self._wake.set()

    def uncommitted(self) -> bool:
        return self.overlay.op_seq > self._committed_seq

    def names_uncommitted(self, keys: list[bytes]) -> bool:
        return self.overlay.names_uncommitted(keys)

    def _commit_here(self) -> None:
        """The group commit of the writes this event-loop iteration made, on
        the loop's own thread once the iteration's reads are handled, and the
        replies released at once, as Redis does under ``appendfsync always``:
        no hand-over to the writer thread and back, whose wake-ups took longer
        than the fdatasync itself. The loop waits for the disk meanwhile, so a
        disk that turns slow (see _INLINE_SLOW) sends the next commits to the
        writer thread for a while; so do a backlog past its bound (the writer
        applies the backpressure), a failing store (the writer retries) and a
        stop."""
        self._commit_scheduled = False
        if (
            self._stopping
            or self.failure is not None
            or self._backlog > self.backlog_bytes
            or monotonic() < self._inline_after
            or not self._commit_lock.acquire(False)  # a keyword would be parsed through a dict
        ):
            self._wake.set()
            return
        started = monotonic()
        try:
            done, seq, error = self._commit_locked(False)
        finally:
            self._commit_lock.release()
        # Timed before any reply is released: what the replies' callbacks go
        # on to do (the clients' next commands) is not the disk's time. After
        # a failure the writer thread retries on its own round, at its pace
        # (woken at once, it retried before the failed writes were answered).
        if done > 0:  # a commit that found nothing pending says nothing of the disk
            took = monotonic() - started
            self._inline_average += (took - self._inline_average) * _INLINE_WEIGHT
            if self._inline_average > _INLINE_SLOW:
                self._inline_after = monotonic() + self.inline_backoff
                self._inline_average = 0.0  # back on the loop, the disk is judged afresh
        self._resolve(seq, error)

    def hold_commits(self) -> None:
        """No commit takes what is recorded from now until
        :meth:`release_commits` (a transaction or a script runs: all of its
        changes go in one commit). The log writer thread, which commits while
        the loop runs (``batch``, its periodic round under ``always``), waits
        for the end of it at its next take, at most a script's time limit: a
        kill -9 in the middle of a script that had written used to leave its
        first writes on disk and not the rest."""
        self._whole.acquire()

    def release_commits(self) -> None:
        self._whole.release()

    def lagging(self) -> bool:
        """Whether commits run behind: the writer busy with one commit for
        longer than flush_interval (a slow disk), or the log holding more than
        ``backlog_bytes`` not yet compacted. Under ``durability: batch`` the
        server then holds write replies until their commit, as under
        ``always``: writers slow down instead of widening what a crash can
        lose or growing the log without bound."""
        since = self._busy_since
        if since > 0.0 and monotonic() - since > self.flush_interval:
            return True
        return self._backlog > self.backlog_bytes

    # ------------------------------------------------------- log writer

    def _writer(self) -> None:
        """The log writer thread. A bug in it must not leave replies waiting
        forever: it is logged, the waiting writes get an error, the batch in
        flight goes back to the queue, and the loop starts over."""
        while True:
            try:
                self._write_loop()
                return
            except Exception as exc:
                with self._commit_lock:
                    seq, error = self._writer_failed(exc)
                self._committed(seq, error)
                time.sleep(self.retry_interval)

    def _writer_failed(self, exc: Exception) -> tuple[int, StoreError]:
        """A bug in a commit: put its batch back and log it; what the waiting
        writes get (up to which sequence number, which error). Called holding
        the commit lock: the other committer must not take the pending changes
        before the batch is back among them."""
        self.overlay.put_back()
        self.failure = StoreError(f"store writer failed: {exc}")
        log.exception("store_writer_failed", exc_info=exc)
        return self.overlay.op_seq, self.failure

    def _commit_locked(self, off_loop: bool) -> tuple[int, int, StoreError | None]:
        """:meth:`_commit_pending` by whoever holds the commit lock, a bug in
        it included (-1, with the error). The caller releases the waiters."""
        try:
            return self._commit_pending(off_loop)
        except Exception as exc:
            seq, error = self._writer_failed(exc)
            return -1, seq, error

    def _write_loop(self) -> None:
        last_batch = 0
        last_start = monotonic()
        while True:
            # Under "always" a reply waiting in after_commit() wakes us at
            # once; operations that arrive meanwhile share the next commit.
            # Under "batch" a commit starts every flush_interval (counted from
            # the last start, not the last end): a crash loses at most
            # flush_interval plus one commit.
            idle = max(0.0, last_start + self.flush_interval - monotonic())
            self._busy_since = 0.0
            self._wake.wait(min(idle, _CHECK_INTERVAL))
            self._wake.clear()
            now = monotonic()
            self._busy_since = now
            last_start = now
            if last_batch > 1 and not self._stopping:
                self._linger()
            with self._commit_lock:
                last_batch, seq, error = self._commit_locked(True)
                self._committed(seq, error)  # on the loop, later: it does not wait
                if last_batch >= 0:
                    self._housekeeping(monotonic())
                    if self._stopping and self._drained():
                        self._seal()
                        return
            if last_batch < 0:
                if self._stopping:
                    return
                time.sleep(self.retry_interval)
                continue
            self._backpressure()

    def _drained(self) -> bool:
        """Nothing is pending (a stop may seal the last segment)."""
        with self.overlay.lock:
            return not self.overlay.pending and not self.overlay.pending_cleared

    def _linger(self) -> None:
        """Wait briefly while writes keep arriving, so that the clients whose
        replies the last commit released join the next one (group commit works
        on whole groups instead of alternating halves). Only after a commit of
        several writes: a lone client never waits."""
        deadline = monotonic() + _LINGER_MAX
        seen = len(self.overlay.pending)
        time.sleep(_LINGER_STEP)
        while monotonic() < deadline:
            now = len(self.overlay.pending)
            if now == seen:
                return
            seen = now
            time.sleep(_LINGER_STEP)

    def _commit_pending(self, off_loop: bool) -> tuple[int, int, StoreError | None]:
        """One group commit of everything pending: the number of changes, or
        -1 if it failed (they are pending again); the sequence number of the
        last change it settles; the error its waiters get, if it failed. The
        caller releases the waiters (:meth:`_committed`, :meth:`_resolve`).

        ``off_loop``: run by the writer thread, which may come while a
        transaction or a script runs on the event loop, and so takes the
        pending changes under :meth:`hold_commits`' lock. The event loop's own
        commits run between two commands, never inside one, and skip it: an
        acquire and a release cost 900 instructions a commit (callgrind, -c 1)."""
        if off_loop:
            whole = self._whole  # acquire() and release(): a compiled ``with`` costs more
            whole.acquire()
            try:
                batch, cleared, seq = self.overlay.take()
            finally:
                whole.release()
        else:
            batch, cleared, seq = self.overlay.take()
        if not batch and not cleared:
            return 0, seq, None
        started = perf_counter()
        frame = wal.encode(batch, cleared)
        try:
            self._hook("commit")
            # Before each commit, not only every second: a second of commits
            # acknowledged into replaced files was measured at 1,300 writes.
            # The stats only once a name on the store's path changed.
            watch = self.files.watch
            changed = watch is None or watch.fired()
            problem = self._removed or (self.files.check() if changed else None)
            if problem is not None:
                raise _Removed(problem)
            # A segment opened now is checked after it is: its creation (here
            # or on the writer thread) may have raced an rm the poll missed.
            fresh = self._segment is None
            segment, layer = self._current()
            if (changed or fresh) and not segment.linked():
                raise _Removed(f"log segment {self.files.segment_path(segment.number)} was removed")
            if self.max_log_bytes and self._log_bytes() + len(frame) > self.max_log_bytes:
                raise OSError(errno.ENOSPC, "database or disk is full (log)")
            segment.append(frame)
        except _Removed as exc:
            self.overlay.put_back()
            self._store_removed(str(exc))
            return -1, seq, self.failure
        except OSError as error:  # not "exc" again: compiled, one name has one type
            self.overlay.put_back()
            if self._segment is not None and self._segment.damaged:
                self._abandon_segment()
            self.stats.error("commit")
            log.error(
                "store_error",
                operation="commit",
                error=error.strerror or str(error),
                sessions=len(batch),
            )
            self.failure = StoreError(f"store write failed: {error.strerror or error}")
            return -1, seq, self.failure
        self.overlay.logged(layer)
        if self.failure is not None:
            log.info("store_recovered")
            self.failure = None
        deletes = sum(1 for change in batch.values() if change is None)
        self.stats.writes += len(batch) - deletes
        self.stats.commit_duration.observe(perf_counter() - started)
        return len(batch), seq, None

    def _current(self) -> tuple[wal.Segment, Layer]:
        """The segment being appended to, created on first use."""
        if self._segment is None or self._layer is None:
            number = self._next_segment
            fd = self._next_fd
            if fd is None:
                fd = self.files.new_segment(number, self._allocate)
            self._next_fd = None
            self._next_segment += 1
            self._segment = wal.Segment(number, fd, str(self.files.segment_path(number)))
            self._layer = Layer(number)
            self.overlay.add_layer(self._layer)
        return self._segment, self._layer

    def _prepare_next(self) -> None:
        """Create the next segment's file now, on the writer thread: the first
        commit after a seal runs on the event loop under ``always``, and the
        create and its directory fsync (0.3-0.5 ms in strace here) would hold every
        client meanwhile. If it fails, that commit creates the file itself and
        reports what goes wrong as a commit error."""
        if self._next_fd is not None or self._stopping or self._removed is not None:
            return
        with contextlib.suppress(OSError):
            self._next_fd = self.files.new_segment(self._next_segment, self._allocate)

    def _discard_next(self) -> None:
        """Remove the segment made ahead and never written (at a stop)."""
        fd, self._next_fd = self._next_fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.close(fd)
        if self._removed is None:
            with contextlib.suppress(OSError):
                self.files.segment_path(self._next_segment).unlink()

    def _abandon_segment(self) -> None:
        """A failed append could not be cut back: seal the segment as it is
        (reading it back stops at the torn frame) and append to a new one."""
        self._seal()

    def _seal(self) -> None:
        """Hand the segment being appended to over to the compactor."""
        segment, layer = self._segment, self._layer
        if segment is None or layer is None:
            return
        self._segment = None
        self._layer = None
        # Sealed on a clock, not by a segment's age: a change waits at most
        # fold_interval to be sealed, half of it on average.
        self._segment_opened = monotonic()
        size = max(segment.size, 0)
        self._allocate = min(max(_ALLOCATE_MIN, size + size // 4), self.segment_bytes)
        with contextlib.suppress(OSError):
            segment.close()
        with self._cond:
            self._sealed.append((layer, size, monotonic()))
            self._backlog += size
            self._cond.notify()

    def _housekeeping(self, now: float) -> None:
        """Rotate the segment when due; check the files now and then."""
        segment = self._segment
        if (
            segment is not None
            and segment.size > 0
            and (
                segment.size >= self.segment_bytes
                or now - self._segment_opened >= self.fold_interval
            )
        ):
            self._seal()
            self._prepare_next()
        if now - self._last_check >= _CHECK_INTERVAL:
            self._last_check = now
            if self._removed is None:  # idle too: refuse the next write up front
                problem = self.files.check(full=True)
                if problem is not None:
                    self._store_removed(problem)
            self._update_disk_stats()

    def _store_removed(self, problem: str) -> None:
        """The files are not ours any more: refuse writes from now on (no
        commit could make them durable where the next start looks). The
        writer and the compactor both check: the first to find it says so."""
        self.failure = StoreError(f"store files were removed or replaced: {problem}", lasting=True)
        with self._cond:
            first = self._removed is None
            if first:
                self._removed = problem
        if first:
            self.stats.error("commit")
            log.error(
                "store_removed",
                store=str(self.path),
                problem=problem,
                hint="writes are refused (MISCONF) until sessiond is restarted "
                "with its store back in place",
            )

    def _backpressure(self) -> None:
        """Hold the next commit back, more the further compaction is behind,
        so that writers slow down smoothly instead of the log growing without
        bound (replies wait for commits meanwhile: see :meth:`lagging`)."""
        over = self._backlog - self.backlog_bytes
        if over > 0 and not self._stopping:
            delay = min(_BACKPRESSURE_MAX, _BACKPRESSURE_MAX * over / self.backlog_bytes + 0.001)
            # 10% over the bound holds each commit 0.1 s: a commit every
            # flush_interval becomes one every 0.2 s, and so on smoothly.
            self.stats.backpressure_seconds += delay
            time.sleep(delay)

    def _log_bytes(self) -> int:
        current = self._segment.size if self._segment is not None else 0
        return self._backlog + max(current, 0)

    def _committed(self, seq: int, error: StoreError | None) -> None:
        """Release the waiters up to ``seq`` on the event loop, from another thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            if error is None:
                self._committed_seq = max(self._committed_seq, seq)
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
                call_waiter(callback, error)

    # -------------------------------------------------------- compactor

    def _compactor(self) -> None:
        if self.compact_in == "process":
            child = CompactorProcess(
                self.path,
                self.files.lock_fd,
                self.max_pages,
                self.compact_rows,
                self.compact_pause,
            )
            try:
                self._compact_loop_process(child)
            finally:
                child.stop(now=self._past_budget() or self._removed is not None)
            return
        db = self._compactor_connection()
        if db is None:
            return
        try:
            self._compact_loop(Compactor(db, hook=self.hook))
        finally:
            db.close()

    def _compactor_connection(self) -> sqlite3.Connection | None:
        """The in-process compactor's connection, retried every
        ``retry_interval`` while the store's file cannot be opened (a failing
        disk): writers wait behind the backlog bound meanwhile, as they do
        while a step fails. ``None`` once the store is stopping or its files
        are gone."""
        outage = _compaction_outage(self.stats)
        while self._removed is None:
            try:
                db = compactor_connection(self.path, self.max_pages)
            except sqlite3.Error as exc:
                outage.failed(str(exc))
                if self._stopping:
                    return None  # the log keeps it all: the next start replays it
                time.sleep(self.retry_interval)
                continue
            outage.over()
            return db
        return None

    def _next_work(self) -> tuple[set[bytes], list[Layer]] | None:
        """What the compactor does next: rows to re-file and the layers of the
        sealed segments to compact, oldest first (none if there are none, or
        they wait for more to merge with: then sample the live bytes if due),
        or ``None`` to stop."""
        with self._cond:
            while not self._refile and not self._written:
                wait = self._due_in()
                if wait <= 0.0:
                    break
                if self._cond.wait(wait) is False and not self._sealed:
                    break  # idle for a while: time to sample the live bytes
            if self._removed is not None:
                return None
            if self._written and (not self._sealed or self._past_budget()):
                return None
            refile, self._refile = self._refile, set()
            if self._due_in() > 0.0:
                return refile, []
            if self._stopping:
                # One at a time within the stop's budget: a merge cut short
                # rolls back whole, where the oldest segment alone may finish
                # and leave the next start less to replay.
                return refile, [self._sealed[0][0]]
            return refile, [layer for layer, _, _ in self._sealed]

    def _due_in(self) -> float:
        """Seconds before the sealed segments are due for compaction (0: now):
        ``compact_wait`` after the oldest was sealed, or once they hold half
        the backlog bound, or at a stop. With none sealed, the idle wait."""
        if not self._sealed:
            return _CHECK_INTERVAL
        if self._stopping or self._backlog >= self.backlog_bytes // 2:
            return 0.0
        return self._sealed[0][2] + self.compact_wait - monotonic()

    def _compact_loop(self, compactor: Compactor) -> None:
        """The compactor on a thread of this process."""
        outage = _compaction_outage(self.stats)
        while (work := self._next_work()) is not None:
            refile, layers = work
            if not layers:
                self._table_changed |= bool(refile)
                try:
                    compactor.refile(refile)
                except sqlite3.Error as exc:
                    self.stats.error("expire")
                    log.error("store_error", operation="expire", error=str(exc))
                if self._live_due():
                    try:
                        self.stats.live_bytes = compactor.live_bytes()
                    except sqlite3.Error as exc:
                        log.error("store_error", operation="compact", error=str(exc))
                continue
            # One segment at a time on a thread: merging several would copy
            # their rows into one layer, holding the GIL the event loop needs.
            layer = layers[0]
            job = Compaction(layer)
            started = perf_counter()
            while True:
                if self._cut():
                    return
                try:
                    done = compactor.step(job, self.compact_rows, refile)
                    refile = set()
                except sqlite3.Error as exc:
                    outage.failed(str(exc))
                    time.sleep(self.retry_interval)
                    continue
                except Exception:
                    log.exception("store_compactor_failed")
                    time.sleep(self.retry_interval)
                    continue
                outage.over()
                if done:
                    break
                if self.compact_pause:
                    time.sleep(self.compact_pause)
            self._compacted([layer], job.written, perf_counter() - started)

    def _compact_loop_process(self, child: CompactorProcess) -> None:
        """The compactor in a child process: this thread hands it segments."""
        outage = _compaction_outage(self.stats)
        while (work := self._next_work()) is not None:
            refile, layers = work
            started = perf_counter()
            try:
                if refile:
                    self._table_changed = True
                    refiled = child.ask("refile " + " ".join(k.hex() for k in refile), self._cut)
                    if refiled is None:
                        return  # stopping, past the budget
                    if refiled.startswith("error "):
                        # Unfiled rows stay where they were: the next sweep finds them.
                        self.stats.error("expire")
                        log.error("store_error", operation="expire", error=refiled[6:])
                if not layers:
                    if not self._live_due():
                        continue
                    answer = child.ask("live", self._cut)
                else:
                    numbers = " ".join(str(layer.segment) for layer in layers)
                    answer = child.ask(f"compact {numbers}", self._cut)
                if answer is None:
                    return  # stopping, past the budget
                kind, _, rest = answer.partition(" ")
            except (EOFError, OSError) as exc:
                # The child died (or could not start): a new one takes over
                # with the same segment, which was not recorded as compacted.
                outage.failed(f"compactor process: {exc}")
                child.stop(now=True)
                time.sleep(self.retry_interval)
                continue
            if kind == "live":
                self.stats.live_bytes = int(rest)
            elif layers and kind == "done":
                outage.over()
                self._compacted(layers, int(rest.split()[1]), perf_counter() - started)
            else:
                outage.failed(rest)
                time.sleep(self.retry_interval)

    def _cut(self) -> bool:
        """Whether the compactor stops waiting: the stop's budget ran out, or
        the store's files are gone."""
        return (self._stopping and self._past_budget()) or self._removed is not None

    def _live_due(self) -> bool:
        """Whether to sample the live bytes (a full scan: 10M rows take
        seconds, off the event loop) now: at most every minute, while idle."""
        now = monotonic()
        if (
            self._stopping
            or self._sealed  # segments wait for compaction: not the time for a full scan
            or not self._table_changed
            or now - self._live_at < _LIVE_INTERVAL
        ):
            return False
        self._live_at = now
        self._table_changed = False  # before the scan: a change during it counts again
        return True

    def _past_budget(self) -> bool:
        return monotonic() >= self._stop_at

    def _compacted(self, layers: list[Layer], written: int, seconds: float) -> None:
        """The segments of ``layers``, the oldest sealed ones, are in the table
        (durably): drop them. Not if the files were replaced: the table written
        may be an unlinked file, and the segments are then the only copy of
        their changes. The files are checked here too, not only trusted to the
        writer's check once a second: files replaced within that second would
        otherwise lose the segments compacted into the replaced table. Nor
        once the store is closed: a compactor that outlived :meth:`close`'s
        wait deletes nothing another process may be replaying now."""
        if self._removed is not None or self.files.closed:
            return
        problem = self.files.check(full=True)
        if problem is not None:
            self._store_removed(problem)
            return
        self._table_changed = True
        with self._cond:
            for layer in layers:
                oldest, size, _ = self._sealed.pop(0)
                self._backlog -= size
                assert oldest is layer
        for layer in layers:
            self.overlay.drop(layer)
            _free(layer)
            with contextlib.suppress(FileNotFoundError):
                self.files.segment_path(layer.segment).unlink()
        self.stats.compactions += 1
        self.stats.compacted_changes += written
        log.debug(
            "store_compacted",
            segments=[layer.segment for layer in layers],
            changes=written,
            seconds=round(seconds, 3),
        )

    # ------------------------------------------------------------- reads

    def load(self, key: bytes) -> Row | None:
        """Blocking read-through for library use; the daemon uses :meth:`load_many`."""
        found, rest = self.overlay.lookup([key])
        if rest:
            found.update(self.reader.rows(rest))
        return found.get(key)

    def _read_hooked(self, keys: list[bytes]) -> dict[bytes, Row | None]:
        found = self.reader.rows(keys)
        self._hook("load")
        return found

    async def load_many(self, keys: list[bytes]) -> dict[bytes, Row | None]:
        found, rest = self.overlay.lookup(keys)
        loop = asyncio.get_running_loop()
        while rest:
            drops = self.overlay.drops
            try:
                read = await loop.run_in_executor(self._readers, self._read_hooked, rest)
            except sqlite3.Error as exc:
                self.stats.error("load")
                log.error("store_error", operation="load", error=str(exc))
                raise StoreError(f"store read failed: {exc}") from None
            # A change made while the read ran wins; if a compaction ended
            # meanwhile, the read may predate what it wrote: read again.
            settled, rest = self.overlay.settle(rest, read, drops)
            found.update(settled)
        return found

    def count_rows(self) -> TableCounts:
        """Counted in SQL plus the queued changes, not by reading every row."""
        queued, rows_valid = self.overlay.queued_counts()
        total = expiring = 0
        if rows_valid:
            total, expiring = self.reader.counts(queued)
        return TableCounts(queued, total, expiring)

    def scan_rows(self, cursor: int, count: int | None) -> TableSlice:
        """Rows with ``scan_hash >= cursor``: about ``count`` of them, whole
        hash groups (all of them if ``count`` is ``None``), and the queued
        changes."""
        # The overlay first, then the rows: a segment compacted in between is
        # then in both. The other order lost it (read before its compaction,
        # gone from the overlay after), and SCAN/KEYS/DBSIZE missed those keys.
        overlay, rows_valid = self.overlay.queued()
        rows, upper = self.reader.slice(cursor, count)
        return TableSlice(rows if rows_valid else [], overlay, rows_valid, upper)

    async def whole_table(self, read: Callable[[], T], operation: str) -> T:
        """Run ``read`` on the whole-table thread: it reads every row or joins
        every queued change (KEYS read 80k rows in 250 ms, measured), and no
        other client should wait for that."""
        self._hook("whole-table")

        def hooked() -> T:
            self._hook("scan")
            return read()

        return await self._on_scanner(hooked, operation)

    async def _on_scanner(self, read: Callable[[], T], operation: str) -> T:
        """``read`` on the whole-table thread; a database error is a
        StoreError, counted and logged as ``operation``'s."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._scanner, read)
        except sqlite3.Error as exc:
            self.stats.error("load")
            log.error("store_error", operation=operation, error=str(exc))
            raise StoreError(f"store read failed: {exc}") from None

    def evicted(self, key: bytes, deadline: float) -> None:
        if len(self._evicted) < _EVICTED_MAX:
            heapq.heappush(self._evicted, (deadline, key))

    def due(self, now: float, limit: int) -> list[bytes]:
        """Stored sessions whose deadline has passed and that no queued change
        names. A row found renewed since it was filed is re-filed instead.
        Then the evicted sessions due by now whose newest change, still in the
        log, has expired: the table does not have that change yet.

        The table is read before the log's changes are looked at, so a
        compaction that ends in between has taken the newer change out of the
        log after the read saw the row it replaced: the rows of that read are
        left to the next sweep (``Overlay.drops`` says a compaction ended),
        never taken for expired (that deleted an acknowledged rewrite)."""
        overlay = self.overlay
        drops = overlay.drops
        rows = self.reader.due(now, limit)
        watched = self._evicted
        evicted: list[bytes] = []
        while watched and watched[0][0] <= now and len(rows) + len(evicted) < limit:
            evicted.append(heapq.heappop(watched)[1])
        if not rows and not evicted:
            return []
        with overlay.lock:
            if overlay.drops != drops:
                rows = []
            newer, _ = overlay.lookup_locked([key for key, _ in rows] + evicted)
        keys: list[bytes] = []
        for key in dict.fromkeys(evicted):
            change = newer.get(key)
            # Not there: compacted since, and the table's sweep has it.
            if change is not None and change.deadline is not None and change.deadline <= now:
                keys.append(key)
        with self._cond:
            for key, deadline in rows:
                if key in newer or key in self._refile:
                    continue  # a newer change has it (its compaction re-files the row)
                if deadline is None or deadline > now:
                    self._refile.add(key)  # renewed since it was filed
                    continue
                keys.append(key)
            if self._refile:
                self._cond.notify()
        return keys

    def recent(self, limit: int) -> list[tuple[bytes, Row]]:
        """The ``limit`` most recently used live sessions, most recent first:
        the table's merged with the changes it does not have yet."""
        now = time.time()
        queued, rows_valid = self.overlay.queued()
        live: list[tuple[bytes, Fields]] = [
            (k, r) for k, r in queued.items() if r is not None and fields_live(r, now)
        ]
        if len(live) < limit:
            # The log holds the most recent writes (and the renewals a stop
            # or an eviction wrote back): when it holds that many, the table
            # need not be read. Scanning 1M rows for the cut-off took 2-3 s.
            table = (
                self.reader.recent(now, limit + len(queued), lambda: self._stopping)
                if rows_valid
                else []
            )
            live.extend((k, r) for k, r in table if k not in queued)
        live.sort(key=lambda item: item[1][ACCESSED_AT], reverse=True)
        return [(k, tuple.__new__(Row, r)) for k, r in live[:limit]]

    async def recent_rows(self, limit: int) -> list[tuple[bytes, Row]]:
        """:meth:`recent` on the whole-table thread (the warm start, while
        clients are served). A stop that comes meanwhile cuts the table's
        scan short rather than wait for it."""

        def read() -> list[tuple[bytes, Row]]:
            rows = self.recent(limit)
            self._hook("warm")
            return rows

        return await self._on_scanner(read, "warm")

    # ---------------------------------------------------------- metrics

    def _update_disk_stats(self) -> None:
        stats = self.stats
        path = self.path
        sizes = {"database": path, "wal": Path(f"{path}-wal")}
        for name, file in sizes.items():
            try:
                stats.disk_bytes[name] = file.stat().st_size
            except OSError:
                stats.disk_bytes[name] = 0
        stats.disk_bytes["log"] = self._log_bytes()

    # ---------------------------------------------------------- closing

    def close(self) -> None:
        """Commit everything pending, compact what ``close_budget`` allows,
        and release the store."""
        self._stop_at = monotonic() + self.close_budget
        self._stopping = True
        self._wake.set()
        with self._cond:
            self._cond.notify()
        if self._writer_thread is not None:
            self._writer_thread.join(timeout=30)
        else:
            done, seq, error = self._commit_pending(False)  # no command runs at close
            self._committed(seq, error)
            if done >= 0:
                self._seal()
        with self._cond:
            self._written = True
            self._cond.notify()
        if self._compactor_thread is not None:
            self._compactor_thread.join(timeout=30)
        elif self._sealed:
            self._compactor()
        if self._segment is not None:
            with contextlib.suppress(OSError):
                self._segment.close()
            self._segment = None
        self._discard_next()
        self._readers.shutdown(wait=True)
        self._scanner.shutdown(wait=True)
        self.reader.close()
        self.files.close()


def _free(layer: Layer) -> None:
    """Let go of a dropped layer's rows a slice at a time: dropping a dict of
    100k rows at once is one C call that holds the GIL (and so the event loop)
    until every row is freed."""
    changes, layer.changes = layer.changes, {}
    while changes:
        for _ in range(min(len(changes), 2048)):
            changes.popitem()


class _Removed(Exception):
    """The store's files were removed or replaced."""
