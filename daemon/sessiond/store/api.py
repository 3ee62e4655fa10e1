"""The persistence interface: what the keyspace asks of a store.

A store deals in keys and rows (:class:`Row`, a snapshot of one session) and
never sees the cache. The keyspace (:mod:`sessiond.keyspace`) records every
change that memory makes, reads through on a miss, and merges what memory and
the store hold for whole-keyspace commands; the store keeps rows durable and
answers reads with the newest change it knows, committed or not
(docs/persistence.md states the promises).

A store that several hosts share (:class:`SharedStore`, the PostgreSQL one)
adds what keeping each host's memory coherent with it takes: it tells a
:class:`Coherence` listener of every change other hosts commit and of the
times it cannot know them, opens :class:`Decision` transactions for commands
whose outcome depends on a key's current value, and takes sliding-TTL
renewals to write back (docs/shared-store.md).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol, TypeVar

import structlog

if TYPE_CHECKING:
    from ..stats import StoreStats

_log = structlog.get_logger("sessiond.store")

T = TypeVar("T")

HASH_SPACE = 2**32

KIND_STRING = 0
"""``Row.kind`` of a plain string value (the only kind the keyspace writes today)."""


def scan_hash(key: bytes) -> int:
    """Stable position of a key in SCAN order, shared by memory and store."""
    return zlib.crc32(key)


def table_key(key: bytes) -> tuple[int, bytearray]:
    """``key``'s primary key in the SQLite table, as parameters to bind: the
    key as a bytearray, which sqlite3 binds as the same BLOB as bytes but
    without first trying (and failing, at about 2k instructions) to adapt it."""
    return scan_hash(key), bytearray(key)


class Row(NamedTuple):
    """One session as a store keeps it, in the order of its columns."""

    value: bytes
    context: str | None
    created_at: float
    updated_at: float
    accessed_at: float
    ttl: float | None  # the relative TTL that slides, if any
    deadline: float | None  # absolute expiry time; None never expires
    kind: int = 0  # what ``value`` encodes: KIND_STRING, or a type another part defines

    def live(self, now: float) -> bool:
        return self.deadline is None or self.deadline > now


Change = Row | None
"""What a read finds: the newest row, or ``None`` for a deleted session."""

Fields = tuple[bytes, str | None, float, float, float, float | None, float | None, int]
"""A row's columns as a plain tuple, in :class:`Row`'s order (a ``Row`` is one).

What the keyspace records for a write and the overlay keeps until compaction:
Python's cyclic garbage collector stops tracking a plain tuple that holds only
bytes, strings, numbers and ``None`` the first time it looks at it, but never a
``NamedTuple`` (only exact tuples are untracked). Kept as ``Row`` objects, the
up to 250k changes of a full log were walked by every full collection: 80-450 ms
pauses of the event loop under sustained writes (gc.callbacks, issue 18). And a
plain tuple is built in one step, where a ``Row`` took a call to
``tuple.__new__`` per write and a copy back to a plain tuple per commit."""

Kept = Fields | None
"""What a write leaves: the row's fields, or ``None`` for a delete."""

DEADLINE: Final = 6
"""Index of ``deadline`` in :data:`Fields`."""
KIND: Final = 7
"""Index of ``kind`` in :data:`Fields`."""
ACCESSED_AT: Final = 4
"""Index of ``accessed_at`` in :data:`Fields`."""


def live(fields: Fields, now: float) -> bool:
    """:meth:`Row.live` of a row's fields."""
    deadline = fields[DEADLINE]
    return deadline is None or deadline > now


def as_row(kept: Kept) -> Change:
    """The :class:`Row` of kept fields (``None`` stays ``None``)."""
    if kept is None or isinstance(kept, Row):
        return kept
    # tuple.__new__, not Row(...): a NamedTuple's own __new__ is interpreted Python.
    return tuple.__new__(Row, kept)


class StoreError(Exception):
    """The store cannot be opened or used; the message says what and where.
    ``lasting``: it will not recover by itself (its files are gone); only a
    restart with the store back in place ends it."""

    def __init__(self, message: str, *, lasting: bool = False) -> None:
        super().__init__(message)
        self.lasting = lasting


class Outage:
    """One store operation failing over and over (a failing disk, a database
    that is down, a compactor process that cannot start): every failure
    counted under ``operation``, the first logged as ``store_error``, and the
    first success after them as ``recovered`` with how many failed, so that
    an operation retried every second does not log every second."""

    __slots__ = ("_failures", "_operation", "_recovered", "_stats")

    def __init__(self, stats: StoreStats, operation: str, recovered: str) -> None:
        self._stats = stats
        self._operation = operation
        self._recovered = recovered
        self._failures = 0

    def failed(self, error: str) -> None:
        self._stats.error(self._operation)
        if not self._failures:
            _log.error("store_error", operation=self._operation, error=error)
        self._failures += 1

    def over(self) -> None:
        if self._failures:
            _log.info(self._recovered, failures=self._failures)
            self._failures = 0


def call_waiter(callback: Callable[[StoreError | None], None], error: StoreError | None) -> None:
    """Tell one waiter of a commit how it went. An exception from it (a bug
    in the waiter) is logged and goes no further: it must not keep the same
    commit's other waiters, other clients' replies, from being told."""
    try:
        callback(error)
    except Exception:
        _log.exception("commit_waiter_failed")


@dataclass(frozen=True)
class TableCounts:
    """What DBSIZE and INFO keyspace need from the store: the changes not yet
    in its table (newest wins; see :func:`counted`) and the table's sessions,
    and those with a deadline, that none of those changes names."""

    queued: dict[bytes, bool | None]
    total: int
    expiring: int


def counted(queued: dict[bytes, Kept]) -> dict[bytes, bool | None]:
    """Each queued change reduced to what a count needs: ``None`` for a
    delete, else whether the session has a deadline. A dict of bytes to
    booleans is never tracked by the cyclic collector; the changes themselves
    (up to 150k of them under sustained writes) made a young dict that every
    collection walked whole while a count ran (10-17 ms each; issue 18)."""
    return {k: None if kept is None else kept[DEADLINE] is not None for k, kept in queued.items()}


@dataclass(frozen=True)
class TableSlice:
    """Part of the table in SCAN order plus the queued changes: ``rows`` are
    ``(scan_hash, key, deadline, kind)`` with ``scan_hash`` in ``[cursor, upper)``;
    ``rows_valid`` is false when a queued FLUSHDB empties the table."""

    rows: list[tuple[int, bytes, float | None, int]]
    queued: dict[bytes, Kept]
    rows_valid: bool
    upper: int


Hook = Callable[[str], None]
"""Fault injection for tests: called with the name of a point a store passes
(each backend documents its points); it may block, sleep or raise."""


class Store(Protocol):
    """A session store. Methods without ``async`` never wait on disk unless
    they say so; the event loop may call them."""

    # Set while the store cannot commit: writes are refused meanwhile.
    failure: StoreError | None

    # Seconds a recorded change may take to reach the table that :meth:`due`
    # reads (0: it is there once committed). A session evicted from memory
    # whose deadline comes sooner than that after its last write is handed to
    # :meth:`evicted`, so that it expires on time.
    table_lag: float

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the background work; commits are reported on ``loop``."""
        ...

    def record(self, key: bytes, change: Kept) -> None:
        """Write-through: ``change`` is the session's new state (queued for
        the next commit; reads see it at once, as a :class:`Row`)."""
        ...

    def clear(self) -> None:
        """Delete every session (FLUSHDB)."""
        ...

    def load(self, key: bytes) -> Row | None:
        """Blocking read of one session (library use and tests)."""
        ...

    async def load_many(self, keys: list[bytes]) -> dict[bytes, Row | None]:
        """Read-through, off the event loop: each key's newest state."""
        ...

    def count_rows(self) -> TableCounts:
        """Blocking: counts for DBSIZE and INFO keyspace."""
        ...

    def scan_rows(self, cursor: int, count: int | None) -> TableSlice:
        """Blocking: about ``count`` table rows from ``cursor`` (all if ``None``);
        ``cursor`` is below :data:`HASH_SPACE` and ``count`` at most that
        (:meth:`Keyspace.scan` sees to it)."""
        ...

    def whole_table(self, read: Callable[[], T], operation: str) -> Awaitable[T]:
        """Run ``read`` (which calls the blocking whole-table reads) on a
        thread kept for them; a database error becomes :class:`StoreError`."""
        ...

    def due(self, now: float, limit: int) -> list[bytes]:
        """Keys whose stored copy has expired by ``now`` (at most ``limit``):
        the keyspace deletes them, or records memory's renewed
        copy. The table's, except those a queued change names, and those
        given to :meth:`evicted` whose newest change has expired."""
        ...

    def evicted(self, key: bytes, deadline: float) -> None:
        """Memory evicted ``key``, whose newest change (not in the table yet,
        see :attr:`table_lag`) ends at ``deadline``: :meth:`due` names it
        then, though the table does not have it."""
        ...

    def recent(self, limit: int) -> list[tuple[bytes, Row]]:
        """The ``limit`` most recently used live sessions, most recent first."""
        ...

    async def recent_rows(self, limit: int) -> list[tuple[bytes, Row]]:
        """:meth:`recent`, off the event loop (the warm start)."""
        ...

    def after_commit(self, callback: Callable[[StoreError | None], None]) -> None:
        """Call ``callback`` on the loop once every change recorded so far is
        durable, with the error if its commit failed."""
        ...

    def uncommitted(self) -> bool:
        """Whether a change recorded so far is not yet committed (nor failed)."""
        ...

    def names_uncommitted(self, keys: list[bytes]) -> bool:
        """Whether a change recorded and not yet committed (nor failed) names
        one of ``keys``, or a FLUSH not yet committed covers them."""
        ...

    def hold_commits(self) -> None:
        """A transaction or a script starts running on the event loop: no
        commit takes the changes it records until :meth:`release_commits`, so
        that they reach the disk in one commit, whole, or not at all (a crash
        in its middle must not leave half of it). Calls nest."""
        ...

    def release_commits(self) -> None:
        """The transaction or script that :meth:`hold_commits` held has ended."""
        ...

    def lagging(self) -> bool:
        """Whether commits run behind their schedule (replies then wait)."""
        ...

    def close(self) -> None:
        """Commit what is queued and stop."""
        ...


class Decision(Protocol):
    """One command decided by a shared store's database: a transaction holding
    ``keys`` (no other host changes them until it ends), opened with their rows
    as the database has them now. The command's changes to those keys are
    recorded into it; :meth:`SharedStore.finish` writes and commits them."""

    keys: frozenset[bytes]
    rows: dict[bytes, Row | None]
    # Each existing row's version when the decision opened (every write of a
    # row moves it; renewals do not): what WATCH compares across hosts.
    versions: dict[bytes, int]
    changes: dict[bytes, Change]
    error: StoreError | None

    def record(self, key: bytes, change: Kept) -> None:
        """A change the command made to one of ``keys``, as a store's
        :meth:`Store.record` takes it; kept in :attr:`changes` as a
        :class:`Row` (the next command deciding on the key reads it back)."""
        ...


class Renewal(NamedTuple):
    """A sliding TTL renewed by reads on this host, to write back: the row's
    deadline moves to ``deadline`` if it still slides by ``ttl``."""

    ttl: float
    deadline: float
    accessed_at: float


class Coherence(Protocol):
    """What a shared store tells the keyspace, on the event loop."""

    def invalidated(self, keys: list[bytes]) -> None:
        """Another host committed changes to ``keys``."""
        ...

    def invalidated_hashes(self, hashes: list[int]) -> None:
        """Another host changed keys too long to name: those of these scan hashes."""
        ...

    def invalidated_all(self, reason: str) -> None:
        """Memory can trust nothing it holds: another host flushed the
        keyspace, or this one lost (``coherent`` false) or regained the
        notifications it hears changes by."""
        ...

    def committed(self, keys: list[bytes]) -> None:
        """This host's own changes to ``keys`` are committed."""
        ...


class SharedStore(Store, Protocol):
    """A store several hosts write to (see the module docstring)."""

    # Whether every change other hosts commit reaches this host (its
    # notification connection is up and answering heartbeats): memory may
    # serve reads only meanwhile.
    coherent: bool

    def subscribe(self, listener: Coherence) -> None:
        """Tell ``listener`` of changes from now on (before ``open``)."""
        ...

    async def decide(self, keys: list[bytes]) -> Decision:
        """Open a transaction holding ``keys``, after this host's own
        uncommitted writes to them are committed; their current rows."""
        ...

    def finish(self, decision: Decision, done: Callable[[StoreError | None], None]) -> None:
        """Write ``decision``'s changes and commit (or roll back if none), in
        the background; then ``done`` with the error if it failed."""
        ...

    def after_commit_for(
        self,
        callback: Callable[[StoreError | None], None],
        decisions: list[Decision],
        through: int | None = None,
        shown: bool = False,
    ) -> None:
        """:meth:`Store.after_commit`, and once ``decisions`` are committed too
        (the error of one that failed); with ``through``, for the changes
        recorded up to that count only (:meth:`recorded`), not all of them;
        with ``shown`` (a reply that shows them), with the error of any
        commit of them that fails, not only of the one that takes the last."""
        ...

    def recorded(self) -> int:
        """How many changes were recorded so far."""
        ...

    def renew(self, renewals: dict[bytes, Renewal]) -> None:
        """Write these renewals back with the next commit (they change no
        value: no other host is told)."""
        ...

    def expire_due(self, now: float) -> None:
        """Delete, in the background, rows whose deadline passed long enough
        before ``now`` that no host can still be renewing them (whichever host
        sweeps first deletes them, once) and tell the other hosts."""
        ...

    async def aclose(self) -> None:
        """:meth:`Store.close` for a store that commits on the event loop."""
        ...
