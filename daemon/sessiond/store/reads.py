"""Reads of the sessions table, on whichever thread asks.

Each thread gets its own connection (SQLite connections are not shared
across threads); in WAL mode reads never wait for the compactor's writes.
Owns the SELECTs; knows nothing of the overlay, which :mod:`.sqlite` merges
over what these return, nor of the log.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from .api import HASH_SPACE, Row, table_key
from .files import connect

# Schema 4 stores updated_at and accessed_at as 0 where they equal the column
# before them (files.py): these read the times back.
UPDATED_AT = "CASE updated_at WHEN 0 THEN created_at ELSE updated_at END"
ACCESSED_AT = f"CASE accessed_at WHEN 0 THEN {UPDATED_AT} ELSE accessed_at END"
COLUMNS = f"key, value, context, created_at, {UPDATED_AT}, {ACCESSED_AT}, ttl, deadline, kind"
_POINT = f"SELECT {COLUMNS} FROM sessions WHERE scan_hash = ? AND key = ?"
_CHUNK = 65536  # rows of a whole-table scan between looks at whether to stop


def stored(row: tuple[Any, ...]) -> tuple[bytes, Row]:
    """``(key, row)`` from a ``SELECT COLUMNS``."""
    key, value, *rest = row
    return bytes(key), _make_row((bytes(value), *rest))


# Row(...) runs the NamedTuple's Python-level __new__; tuple.__new__ is one C
# call (replay and warm start build a row per stored session).
def _make_row(fields: tuple[Any, ...]) -> Row:
    return tuple.__new__(Row, fields)


class TableReader:
    """Read-only queries on the sessions table, one connection per thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = connect(self.path, shared=True)
            self._local.db = db
            with self._lock:
                self._all.append(db)
        return db

    def rows(self, keys: list[bytes]) -> dict[bytes, Row | None]:
        """Each key's row in the table (``None`` where it has none)."""
        db = self.db()
        found: dict[bytes, Row | None] = dict.fromkeys(keys)
        for key in keys:
            row = db.execute(_POINT, table_key(key)).fetchone()
            if row is not None:
                found[key] = stored(row)[1]
        return found

    def counts(self, overlay: Collection[bytes]) -> tuple[int, int]:
        """Rows, and rows with a deadline, that no key of ``overlay`` names.
        The table's own counts are a scan of every row (about 160 ms a
        million here), taken again only once another connection (the
        compactor's) has changed the file: an idle store is not scanned every
        time the session gauge is refreshed."""
        db = self.db()
        # One read transaction: every query sees the same table, whatever the
        # compactor commits meanwhile (it moves overlay keys into the table).
        db.execute("BEGIN")
        try:
            # Read before the table: a commit in between makes the next call
            # count again, never keeps an older count under a newer version.
            version = db.execute("PRAGMA data_version").fetchone()[0]
            counted: tuple[int, int, int] | None = getattr(self._local, "counted", None)
            if counted is not None and counted[0] == version:
                total, expiring = counted[1], counted[2]
            else:
                total, expiring = db.execute(
                    "SELECT COUNT(*), COUNT(deadline) FROM sessions"
                ).fetchone()
                self._local.counted = (version, total, expiring)
            if overlay:
                # Which queued sessions the table already holds: one join
                # against a temporary table, not a lookup per key.
                db.execute("CREATE TEMP TABLE IF NOT EXISTS probe (h INTEGER, k BLOB)")
                db.execute("DELETE FROM probe")
                db.executemany("INSERT INTO probe VALUES (?, ?)", map(table_key, overlay))
                n, e = db.execute(
                    "SELECT COUNT(*), COUNT(s.deadline) FROM probe AS p "
                    "JOIN sessions AS s ON s.scan_hash = p.h AND s.key = p.k"
                ).fetchone()
                total -= n
                expiring -= e
        finally:
            db.execute("COMMIT")
        return int(total), int(expiring)

    def slice(
        self, cursor: int, count: int | None
    ) -> tuple[list[tuple[int, bytes, float | None, int]], int]:
        """``(scan_hash, key, deadline, kind)`` rows from ``cursor`` in SCAN order:
        about ``count`` of them in whole hash groups (all if ``None``), and the
        hash they stop before."""
        db = self.db()
        if count is None:
            # The whole rest of the table (KEYS): read in the table's own order
            # and sorted by SQLite. Through the index, in key order, each row is
            # a random page of the table (rows sit in the order they were
            # written): a million took 3.03-3.38 s so, 1.21-1.36 s this way
            # (four alternated rounds; bench/RESULTS.md, "A rowid table").
            found = db.execute(
                "SELECT scan_hash, key, deadline, kind FROM sessions NOT INDEXED "
                "WHERE scan_hash >= ? ORDER BY scan_hash, key",
                (cursor,),
            ).fetchall()
            return [(h, bytes(k), d, kind) for h, k, d, kind in found], HASH_SPACE
        rows = db.execute(
            "SELECT scan_hash, key, deadline, kind FROM sessions WHERE scan_hash >= ? "
            f"ORDER BY scan_hash LIMIT {count + 1}",
            (cursor,),
        )
        found = rows.fetchall()
        upper = HASH_SPACE
        if len(found) > count:
            upper = found[-1][0]
            if upper == cursor:
                upper = cursor + 1
                found = db.execute(
                    "SELECT scan_hash, key, deadline, kind FROM sessions WHERE scan_hash = ?",
                    (cursor,),
                ).fetchall()
        return [(h, bytes(k), d, kind) for h, k, d, kind in found if h < upper], upper

    def recent(
        self, now: float, limit: int, stopped: Callable[[], bool] = lambda: False
    ) -> list[tuple[bytes, Row]]:
        """The ``limit`` most recently used live rows, most recent first
        (none if ``stopped()`` turns true while the table is scanned).

        Two scans instead of ``ORDER BY accessed_at LIMIT n``: SQLite sorted
        whole rows and spilled them to temporary files (10 s for 300k rows
        of 200 bytes, measured); the first scan reads one float per row to
        find the cut-off, the second reads only the rows above it."""
        db = self.db()
        live = "(deadline IS NULL OR deadline > ?)"
        times: list[float] = []
        cursor = db.execute(f"SELECT {ACCESSED_AT} FROM sessions WHERE {live}", (now,))
        while chunk := cursor.fetchmany(_CHUNK):
            if stopped():
                cursor.close()
                return []
            times.extend(t for (t,) in chunk)
        if not times or limit <= 0:
            return []
        if len(times) > limit:
            times.sort(reverse=True)
            cutoff = times[limit - 1]
        else:
            cutoff = float("-inf")
        del times
        rows = [
            stored(row)
            for row in db.execute(
                f"SELECT {COLUMNS} FROM sessions WHERE {live} AND {ACCESSED_AT} >= ?",
                (now, cutoff),
            )
        ]
        rows.sort(key=lambda item: item[1].accessed_at, reverse=True)
        return rows[:limit]

    def due(self, now: float, limit: int) -> list[tuple[bytes, float | None]]:
        """``(key, deadline)`` of rows whose expiry entry has come due."""
        rows = (
            self.db()
            .execute(
                "SELECT key, deadline FROM sessions WHERE expire_at <= ? "
                "ORDER BY expire_at LIMIT ?",
                (now, limit),
            )
            .fetchall()
        )
        return [(bytes(k), d) for k, d in rows]

    def close(self) -> None:
        """Close every thread's connection (their threads have ended)."""
        with self._lock:
            dbs, self._all = self._all, []
        for db in dbs:
            db.close()
