"""Compaction: a sealed log segment's changes into the sessions table.

A segment's changes arrive deduplicated (its overlay :class:`~.overlay.Layer`
holds the newest change per key). :class:`Compactor` writes them in table
order, a small transaction at a time, without an fsync except on the last
one, which also records the segment as compacted (``store_state``): that
commit syncs the WAL and with it every earlier step, so after a crash the
segment is either replayed whole or entirely in the table. Replaying a
segment whose steps were partly committed is harmless: the replay puts its
newest changes back in the overlay, which answers for them until the
segment is compacted again.

Owns the SQL that writes the sessions table (upsert, delete, re-file of the
expiry index). Never knows about the log's format, the event loop, or how
often it runs: :mod:`.sqlite` schedules it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterable, Iterator
from operator import itemgetter
from pathlib import Path

from .api import HASH_SPACE, Hook, Kept, scan_hash, table_key
from .files import connect
from .overlay import Layer

# An update in place where the row exists (REPLACE would delete and insert it).
# expire_at is when expiry should next look at a row: an insert files it at the
# deadline; an update moves it only when it no longer fits (it lies after the
# new deadline, it is set for a row that never expires or missing for one that
# does, or it has passed: expiry looked and found the deadline further on).
# Otherwise it stays, so that a sliding renewal does not rewrite an index page
# per write. One statement: a separate re-filing UPDATE per row cost a third
# of a compaction's instructions (callgrind, 50k of 150k per session).
# updated_at and accessed_at are stored as 0 where they equal the column
# before them (schema 4: files.py), as they do for a session written and not
# read since: 0 takes no bytes in a record, a time 8.
# Parameters: scan_hash, key, the Row's columns, now.
UPSERT = (
    "INSERT INTO sessions (scan_hash, key, value, context, created_at, updated_at, "
    "accessed_at, ttl, deadline, expire_at, kind) "
    "VALUES (?1, ?2, ?3, ?4, ?5, CASE WHEN ?6 = ?5 THEN 0 ELSE ?6 END, "
    "CASE WHEN ?7 = ?6 THEN 0 ELSE ?7 END, ?8, ?9, ?9, ?10) "
    "ON CONFLICT (scan_hash, key) DO UPDATE SET "
    "value = excluded.value, context = excluded.context, created_at = excluded.created_at, "
    "updated_at = excluded.updated_at, accessed_at = excluded.accessed_at, "
    "ttl = excluded.ttl, deadline = excluded.deadline, kind = excluded.kind, "
    "expire_at = CASE WHEN (expire_at IS NULL) <> (excluded.deadline IS NULL) "
    "OR excluded.deadline < expire_at OR expire_at <= ?11 "
    "THEN excluded.deadline ELSE expire_at END"
)
_DELETE = "DELETE FROM sessions WHERE scan_hash = ? AND key = ?"
_REFILE = "UPDATE sessions SET expire_at = deadline WHERE scan_hash = ? AND key = ?"
# A segment is put in table order one part of the hash space at a time: a sort
# of 20k sessions at once held the GIL, and so the event loop, for 10-20 ms.
_BUCKET_BITS = 8
_BUCKET_SHIFT = (HASH_SPACE - 1).bit_length() - _BUCKET_BITS


class Compaction:
    """One segment on its way into the table: what is left to write, in
    table order (taken from the end of ``todo``; ``buckets`` are the parts of
    the hash space not yet sorted, reversed too)."""

    __slots__ = ("buckets", "layer", "started", "todo", "written")

    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        buckets: list[list[tuple[int, bytes, Kept]]] = [[] for _ in range(1 << _BUCKET_BITS)]
        for key, change in layer.changes.items():
            h = scan_hash(key)
            buckets[h >> _BUCKET_SHIFT].append((h, key, change))
        buckets.reverse()
        self.buckets = buckets
        self.todo: list[tuple[int, bytes, Kept]] = []
        self.started = False
        self.written = 0

    @property
    def segment(self) -> int:
        return self.layer.segment

    def take(self, size: int) -> list[tuple[int, bytes, Kept]]:
        todo = self.todo
        buckets = self.buckets
        while len(todo) < size and buckets:
            bucket = buckets.pop()
            bucket.sort(key=itemgetter(0, 1), reverse=True)
            todo[:0] = bucket  # after the rest of the previous part (taken from the end)
        chunk = todo[-size:]
        del todo[-size:]
        chunk.reverse()
        return chunk

    @property
    def done(self) -> bool:
        return self.started and not self.todo and not self.buckets


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection, durable: bool) -> Iterator[None]:
    db.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def compactor_connection(path: Path, max_pages: int) -> sqlite3.Connection:
    """The compactor's connection (in its process or on its thread).
    Compaction rewrites pages all over the table: it keeps them in SQLite's
    cache rather than reading them back (negative: KiB)."""
    db = connect(path, max_pages=max_pages)
    db.execute("PRAGMA cache_size=-32768")
    return db


class Compactor:
    """Writes compactions to the table through its own connection ``db``.
    ``hook("compact")`` is called before each step's transaction (tests)."""

    def __init__(self, db: sqlite3.Connection, *, hook: Hook | None = None) -> None:
        self.db = db
        self.hook = hook

    def step(self, job: Compaction, rows: int, refile: Iterable[bytes] = ()) -> bool:
        """Write up to ``rows`` more of ``job`` (and re-file ``refile``) in one
        transaction; True once the segment is wholly in the table. A
        :class:`sqlite3.Error` leaves the job where it was (retry it)."""
        if self.hook is not None:
            self.hook("compact")
        chunk = job.take(rows)
        last = not job.todo and not job.buckets
        db = self.db
        try:
            with _transaction(db, durable=last):
                if job.layer.cleared and not job.started:
                    db.execute("DELETE FROM sessions")
                # Each key occurs once in a segment: deletes and upserts may go apart.
                # Keys and values as bytearrays (files.py, above connect: sqlite3
                # adapts bytes first, at a cost); an updated row 39.9k -> 33.6k.
                db.executemany(
                    _DELETE, [(h, bytearray(key)) for h, key, change in chunk if change is None]
                )
                now = time.time()
                db.executemany(
                    UPSERT,
                    [
                        (h, bytearray(key), bytearray(r[0]), r[1], r[2], r[3], r[4], r[5], r[6],
                         r[7], now)
                        for h, key, r in chunk
                        if r is not None
                    ],
                )  # fmt: skip
                refiled = [table_key(key) for key in refile]
                if refiled:
                    db.executemany(_REFILE, refiled)
                if last:
                    db.execute("UPDATE store_state SET compacted_through = ?", (job.segment,))
        except BaseException:
            # Put the chunk back (in front: taken from the end) for the retry.
            chunk.reverse()
            job.todo.extend(chunk)
            raise
        job.started = True
        job.written += len(chunk)
        return last

    def refile(self, keys: Iterable[bytes]) -> None:
        """Move the expiry index entry of rows that expiry found renewed to
        their deadline. Unsynced: after a crash the next sweep finds them again."""
        pairs = [table_key(key) for key in keys]
        if not pairs:
            return
        with _transaction(self.db, durable=False):
            self.db.executemany(_REFILE, pairs)

    def live_bytes(self) -> int:
        """Bytes of keys and values of the rows in the table (a full scan)."""
        row = self.db.execute("SELECT total(length(key) + length(value)) FROM sessions").fetchone()
        return int(row[0])
