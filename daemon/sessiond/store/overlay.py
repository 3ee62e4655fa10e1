"""The overlay: every change the sessions table does not have yet, behind one lock.

A change goes through three stages here, newest first:

* *pending*: recorded by the event loop, waiting for the next group commit;
* *in flight*: taken by the log writer, being appended and synced;
* *logged*: durable in a log segment, waiting for compaction; one
  :class:`Layer` per segment, so that compacting a segment drops its layer
  whole (no per-key bookkeeping when a compaction ends).

Reads answer from the newest stage that names a key and go to the table only
for the rest. A layer is dropped only after its changes are committed to the
table, and :attr:`Overlay.drops` counts the drops: a table read that began
before one may have missed what that layer held, so it reads again
(:meth:`Overlay.settle`). That closes the race between a read-through read and
a commit that finishes while the read runs.

Owns nothing on disk and knows nothing of SQLite or the log's format.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from .api import Change, Kept, Row, as_row, counted


class Layer:
    """The changes of one log segment (newest per key). ``cleared``: the
    segment holds a FLUSH before them, so older layers and the table are gone.

    A layer lives until its segment is compacted (seconds, up to the log's
    bound of changes), so its rows must be plain :data:`~.api.Fields`, which
    the cyclic garbage collector stops tracking (docs/persistence.md): it keeps
    them as recorded, and the keyspace records plain tuples."""

    __slots__ = ("changes", "cleared", "segment")

    def __init__(self, segment: int, changes: dict[bytes, Kept] | None = None) -> None:
        self.segment = segment
        self.changes: dict[bytes, Kept] = {} if changes is None else changes
        self.cleared = False

    def apply(self, batch: dict[bytes, Kept], cleared: bool) -> None:
        if cleared:
            self.changes = {}
            self.cleared = True
        self.changes.update(batch)


class Overlay:
    """Pending, in-flight and logged changes; every method takes the lock
    (``*_locked`` ones expect it held)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[bytes, Kept] = {}
        self.pending_cleared = False
        self.inflight: dict[bytes, Kept] = {}
        self.inflight_cleared = False
        self.layers: list[Layer] = []  # oldest first; the last one is being appended to
        self.op_seq = 0  # changes recorded so far
        self.drops = 0  # layers dropped after compaction so far

    # ----------------------------------------------------------- changes

    # record(), take() and logged() run at every durable write or commit:
    # they take the lock with acquire() and release(), two method calls,
    # where compiled ``with`` looks up __enter__ and __exit__ and calls them
    # (callgrind, per call: 1,528 -> 1,222, 1,377 -> 1,070, 1,801 -> 1,436).

    def record(self, key: bytes, change: Kept) -> None:
        lock = self.lock
        lock.acquire()
        try:
            self.pending[key] = change
            self.op_seq += 1
        finally:
            lock.release()

    def clear(self) -> None:
        with self.lock:
            self.pending = {}
            self.pending_cleared = True
            self.op_seq += 1

    def take(self) -> tuple[dict[bytes, Kept], bool, int]:
        """Move the pending changes in flight: the batch, whether it starts
        with a FLUSH, and the sequence number of its last change."""
        lock = self.lock
        lock.acquire()
        try:
            batch, self.pending = self.pending, {}
            cleared, self.pending_cleared = self.pending_cleared, False
            self.inflight = batch
            self.inflight_cleared = cleared
            return batch, cleared, self.op_seq
        finally:
            lock.release()

    def logged(self, layer: Layer) -> None:
        """The batch in flight is durable in ``layer``'s segment."""
        lock = self.lock
        lock.acquire()
        try:
            layer.apply(self.inflight, self.inflight_cleared)
            self.inflight = {}
            self.inflight_cleared = False
        finally:
            lock.release()

    def landed(self) -> None:
        """The batch in flight is in the table itself (a store without a log:
        PostgreSQL commits it there directly)."""
        with self.lock:
            self.inflight = {}
            self.inflight_cleared = False

    def put_back(self) -> None:
        """The batch in flight failed: pending again, unless newer changes
        (or a FLUSH) replaced it."""
        with self.lock:
            if not self.pending_cleared:
                for key, change in self.inflight.items():
                    self.pending.setdefault(key, change)
                self.pending_cleared = self.inflight_cleared
            self.inflight = {}
            self.inflight_cleared = False

    def add_layer(self, layer: Layer) -> None:
        with self.lock:
            self.layers.append(layer)

    def drop(self, layer: Layer) -> None:
        """``layer``'s changes are all in the table now."""
        with self.lock:
            self.layers.remove(layer)
            self.drops += 1

    # ------------------------------------------------------------- reads

    def lookup(self, keys: Iterable[bytes]) -> tuple[dict[bytes, Change], list[bytes]]:
        with self.lock:
            return self.lookup_locked(keys)

    def lookup_locked(self, keys: Iterable[bytes]) -> tuple[dict[bytes, Change], list[bytes]]:
        """The newest change of each key that has one; the keys to read from the table."""
        found: dict[bytes, Change] = {}
        rest: list[bytes] = []
        pending, inflight = self.pending, self.inflight
        layers = self.layers[::-1]
        for key in keys:
            if key in pending:
                found[key] = as_row(pending[key])
            elif self.pending_cleared:
                found[key] = None
            elif key in inflight:
                found[key] = as_row(inflight[key])
            elif self.inflight_cleared:
                found[key] = None
            else:
                for layer in layers:
                    changes = layer.changes
                    if key in changes:
                        found[key] = as_row(changes[key])
                        break
                    if layer.cleared:
                        found[key] = None
                        break
                else:
                    rest.append(key)
        return found, rest

    def settle(
        self, keys: list[bytes], read: dict[bytes, Row | None], drops: int
    ) -> tuple[dict[bytes, Change], list[bytes]]:
        """After a table read of ``keys`` that began when :attr:`drops` was
        ``drops``: the answers (a change made meanwhile wins over the read),
        and the keys to read again (a layer was dropped meanwhile, so the
        read may predate the table's copy of its changes)."""
        with self.lock:
            newer, rest = self.lookup_locked(keys)
            stale = self.drops != drops
        if stale:
            return newer, rest
        for key in rest:
            newer[key] = read.get(key)
        return newer, []

    def names_uncommitted(self, keys: list[bytes]) -> bool:
        """Whether a change not yet durable (pending or in flight) names one
        of ``keys``, or a FLUSH not yet durable covers them."""
        with self.lock:
            if self.pending_cleared or self.inflight_cleared:
                return True
            pending, inflight = self.pending, self.inflight
            return any(key in pending or key in inflight for key in keys)

    def names(self, key: bytes) -> bool:
        """Whether any change not yet in the table names ``key`` (or a FLUSH covers it)."""
        found, _ = self.lookup([key])
        return key in found

    def queued(self) -> tuple[dict[bytes, Kept], bool]:
        """Every change the table does not have (newest wins), and whether the
        table's rows still count (not after a FLUSH not yet compacted). The
        rows are :data:`~.api.Fields` (some of them :class:`~.api.Row`)."""
        with self.lock:
            sources: list[tuple[dict[bytes, Kept], bool]] = [
                (layer.changes, layer.cleared) for layer in self.layers
            ]
            sources.append((self.inflight, self.inflight_cleared))
            sources.append((self.pending, self.pending_cleared))
            merged: dict[bytes, Kept] = {}
            rows_valid = True
            for changes, cleared in sources:
                if cleared:
                    merged = {}
                    rows_valid = False
                merged.update(changes)
            return merged, rows_valid

    def queued_counts(self) -> tuple[dict[bytes, bool | None], bool]:
        """:meth:`queued` as a count needs it (:func:`~.api.counted`): the
        merged rows are dropped at once, not kept while the table is counted."""
        merged, rows_valid = self.queued()
        return counted(merged), rows_valid

    def backlog(self) -> int:
        """Changes logged but not compacted (an upper bound on distinct keys)."""
        with self.lock:
            return sum(len(layer.changes) for layer in self.layers)
