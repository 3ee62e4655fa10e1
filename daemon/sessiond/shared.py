"""Memory as a coherent near cache of a store that several hosts share.

:class:`SharedKeyspace` is the keyspace (:mod:`sessiond.keyspace`) for a
:class:`~sessiond.store.SharedStore`: every host's sidecar holds sessions in
memory, and the database holds them all. What it adds to the keyspace
(docs/shared-store.md has the promises and their reasons):

* **invalidation**: when another host commits a change, the store hears it
  (LISTEN/NOTIFY) and memory forgets its copy; the next read goes to the
  database. A read-through that was under way when a change to its key was
  heard serves its command but is forgotten after it (it may predate the
  change);
* **no stale memory without notifications**: while the store cannot hear
  other hosts (``coherent`` false: its notification connection is lost or
  silent), memory is emptied and every command reads its keys from the
  database, and forgets them after it; memory is emptied again once the
  notifications are back (what it took meanwhile may have missed a change);
* **decisions**: a command whose outcome depends on a key's current value
  (``decides`` in its declaration: ``SET NX``, ``INCR``, ``EXPIRE`` ...) runs
  in a database transaction holding its keys, on their rows as the database
  has them; its changes are committed before its reply leaves. While it
  holds a key, this host's other commands naming that key wait for it;
* **expiry**: memory finding a session past its deadline forgets it (another
  host may have renewed it); rows are deleted by the database sweep, by
  whichever host runs it first;
* **sliding renewals**: reads renew a session in memory; every
  ``renew_interval`` the renewals since (the most recently used end of
  memory, so the cost is what was used since) are looked at, and one is
  written back once it moves the database's deadline by a tenth of the TTL
  (:data:`RENEW_SLACK`), once that deadline comes within ``renew_margin``, and
  when memory evicts the session or the daemon stops: a session busy on one
  host does not expire on another, and a session read all day costs the
  database a write per tenth of its TTL, not one a second. A host that dies
  with renewals held back shortens those sessions' lives by at most that
  tenth (as a crash does on the SQLite store, whose renewals are written
  lazily too).

It never does I/O itself; the store does, on the event loop.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Callable

from .cache import Cause, Entry, SessionCache
from .keyspace import Context, Keyspace, Prepared, entry_of, row_of
from .store import Decision, Renewal, Row, SharedStore, StoreError, scan_hash
from .values import Value

# Commands of this host that may decide in one transaction, one after the
# other, before it commits (the others of this host waiting for its keys).
CHAIN_LIMIT = 16

# A key's state as the database had it in a decision (WATCH, EXEC): its row's
# version and last write time, None if there was no row, UNKNOWN if no
# decision held it (the store could not open one).
Token = tuple[int, float] | None | str
UNKNOWN: Token = "unknown"

# A renewal is written back once it moves the database's deadline by this
# part of the session's TTL (or that deadline comes near): what a host that
# dies with renewals held back can take off a session's life.
RENEW_SLACK = 0.1


class _Stored:
    """What this host knows of a session's deadline in the database, from its
    last write-back of a renewal (valid while memory's copy keeps the write
    time and TTL it had then), and the renewal held back since, if any: its
    deadline (``held``, 0 for none) and access time, due for writing at
    ``due``, when the database's deadline comes near. Floats, not a
    :class:`Renewal`: one is made only for a renewal written."""

    __slots__ = ("accessed", "deadline", "due", "held", "ttl", "updated_at")

    def __init__(self, updated_at: float, ttl: float, deadline: float) -> None:
        self.updated_at = updated_at
        self.ttl = ttl
        self.deadline = deadline
        self.held = 0.0
        self.accessed = 0.0
        self.due = 0.0


class _Wait:
    """A command waiting for keys a decision holds: ``joins`` if it decides
    on no other keys (it may run inside that decision, next)."""

    __slots__ = ("future", "joins")

    def __init__(self, future: asyncio.Future[Prepared | None], joins: bool) -> None:
        self.future = future
        self.joins = joins


class _Hold:
    """Keys one decision of this host holds (from before it opens until it
    commits), the commands waiting for them, and how many commands have
    decided in it."""

    __slots__ = ("decision", "keys", "ran", "waiters")

    def __init__(self, keys: frozenset[bytes]) -> None:
        self.keys = keys
        self.decision: Decision | None = None
        self.ran = 0
        self.waiters: list[_Wait] = []


class _Read:
    """A read-through under way: the keys it reads (``None``: any key, for
    the warm start), and those a change was heard to meanwhile."""

    __slots__ = ("dirty", "everything", "keys")

    def __init__(self, keys: set[bytes] | None) -> None:
        self.keys = keys
        self.dirty: set[bytes] = set()
        self.everything = False

    def heard(self, keys: list[bytes]) -> None:
        wanted = self.keys
        if wanted is None:
            self.dirty.update(keys)
            return
        for key in keys:
            if key in wanted:
                self.dirty.add(key)


class SharedKeyspace(Keyspace):
    """The keyspace over a shared store (see the module docstring)."""

    expires_on_access = False
    own_outcomes = True

    def __init__(
        self, cache: SessionCache[bytes, Value], *, max_value_size: int = 1024 * 1024
    ) -> None:
        Keyspace.__init__(self, cache, None, max_value_size=max_value_size)
        # A script is decided on the keys it declares: it may use no other.
        self.scripts_declare_keys = True
        self.shared: SharedStore | None = None
        # Keys held by a decision of this host: their commands wait for it.
        self.holds: dict[bytes, _Hold] = {}
        self.hold_of: dict[Decision, _Hold] = {}
        # The decision the running command decides in, whether the last
        # command decided (its reply waits for the commit, see lagging()),
        # and by owner (Context.owner) the decisions its commands decided in
        # since its last after_commit: a connection whose batch waited for a
        # decision to open meanwhile must not find its earlier ones taken by
        # another's after_commit (its reply would not wait for their commit).
        self.deciding: Decision | None = None
        self.decided = False
        self.uncommitted_read = False
        self.decisions: dict[object, list[Decision]] = {}
        # By owner, how many plain changes the store had recorded after its
        # last command that made one: its replies wait for the commit of no
        # later ones (another connection's failed commit is not theirs to
        # report); and how many it had after the last command (a command's
        # changes are what it moved: save, delete and flush record alike, and
        # nothing records between commands).
        self.wrote: dict[object, int] = {}
        self.recorded = 0
        # Whether the last command recorded a plain change (its own: see after_own).
        self.own_wrote = False
        self.reads: list[_Read] = []
        # Keys a command wrote while the store could not hear other hosts
        # (forgotten after it), else None.
        self.written: list[bytes] | None = None
        # Renewals of sessions memory evicted since the last write-back.
        self.evicted: dict[bytes, Renewal] = {}
        self.renewed_through = cache.clock()
        # Renewals are written back before the database's deadline comes
        # within this (app: renew_interval + the store's timeout), and what
        # this host knows of the database's deadlines, with the renewals held
        # back (in ``due``, by when they must be written: stale items are
        # skipped when they come up, and dropped when they outnumber the rest).
        self.renew_margin = 3.0
        self.stored: dict[bytes, _Stored] = {}
        self.due: list[tuple[float, bytes]] = []
        # How many records the last _forget_stored kept (those holding a
        # renewal, or of sessions in memory): the next one waits until the
        # table is twice as large, so that records it cannot drop (renewals
        # held back while memory was emptied) are not scanned every round.
        self.stored_kept = 0

    def attach_shared(self, store: SharedStore) -> None:
        """Write through to ``store``, read through from it, and hear from it
        of other hosts' changes (before it opens)."""
        self.attach(store)
        self.shared = store
        store.subscribe(self)

    def token(self, key: bytes) -> Token:
        """``key`` as the database has it, in the decision the running
        command decides in (WATCH and EXEC decide on their keys). A deleted
        and re-created row starts at version 1 again: its write time tells
        it apart."""
        deciding = self.deciding
        if deciding is None or key not in deciding.keys:
            return UNKNOWN
        row = deciding.rows.get(key)
        changes = deciding.changes
        if key in changes:
            # A command before this one in the same decision changed it: the
            # database will have what the commit writes (an update moves the
            # version by one, an insert starts it at 1).
            change = changes[key]
            if change is None:
                return None
            version = 1 if row is None else deciding.versions.get(key, 0) + 1
            return (version, change.updated_at)
        if row is None:
            return None
        return (deciding.versions.get(key, 0), row.updated_at)

    @property
    def coherent(self) -> bool:
        """Whether memory may serve reads: the store hears every change."""
        shared = self.shared
        return shared is not None and shared.coherent

    # ------------------------------------------------------ the cache's hook

    def save(self, key: bytes, entry: Entry[Value]) -> None:
        current = self.current
        if current is not None:
            current.seen(key, entry)
        row = row_of(entry)
        ttl = entry.ttl
        deadline = entry.deadline
        if ttl is not None and deadline is not None and deadline < entry.updated_at + ttl:
            # Set on a clock other than the write's (EXPIRE keeps the write
            # time): renew_due's lower bound for it would be too high.
            self.stored[key] = _Stored(entry.updated_at, ttl, deadline)
        deciding = self.deciding
        if deciding is not None and key in deciding.keys:
            deciding.record(key, row)
        else:
            assert self.store is not None
            self.store.record(key, row)
        written = self.written
        if written is not None:
            written.append(key)

    def delete(self, key: bytes) -> None:
        current = self.current
        if current is not None:
            current.seen(key, None)
        deciding = self.deciding
        if deciding is not None and key in deciding.keys:
            deciding.record(key, None)
        else:
            assert self.store is not None
            self.store.record(key, None)

    def expire(self, key: bytes) -> None:
        # Memory's copy ran out; another host may have renewed the session.
        # Memory forgets it; the database sweep deletes the row if it is due.
        return None

    def on_evict(self, key: bytes, entry: Entry[Value], cause: Cause) -> None:
        # The value is in the database already; what memory may know that
        # the database does not is a renewal by reads.
        current = self.current
        if current is not None:
            current.seen(key, entry)
        known = self.stored.pop(key, None)
        # A renewal held back is in memory's copy still (a write since would
        # have replaced it and the held one with it).
        since = self.renewed_through if known is None or not known.held else 0.0
        renewal = self._renewal(entry, since)
        if renewal is not None:
            self.evicted[key] = renewal

    def _let_go(self, key: bytes) -> None:
        """Memory forgets its copy of ``key`` (cache.drop, which tells
        nobody) but not its renewal by a read no write-back round has seen
        yet: that goes with the next round, as an eviction's."""
        cache = self.cache
        entry = cache.find(key)
        if entry is None:
            return
        renewal = self._renewal(entry, self.renewed_through)
        if renewal is not None:
            self.evicted[key] = renewal
        cache.drop(key)

    def _renewal(self, entry: Entry[Value], since: float) -> Renewal | None:
        ttl = entry.ttl
        deadline = entry.deadline
        accessed = entry.accessed_at
        if (
            ttl is None
            or deadline is None
            or not self.cache.sliding
            or accessed <= entry.updated_at
            or accessed < since
        ):
            return None
        return Renewal(ttl, deadline, accessed)

    # ------------------------------------------------- before a command runs

    def serves(self, keys: list[bytes]) -> bool:
        """Whether memory may answer a command that reads ``keys`` and decides
        nothing, now: the store hears every change, no decision of this host
        holds a key, and memory holds each of them live."""
        if self.holds:
            return False
        shared = self.shared
        if shared is None or not shared.coherent:
            return False
        cache = self.cache
        find = cache.find
        now = cache.clock()
        return all(not _stale(find(key), now) for key in keys)

    def prepare_shared(
        self,
        keys: list[bytes],
        load: list[bytes],
        decides: bool,
        ahead: Callable[[], Awaitable[object] | None] | None,
        prepared: Prepared | None,
    ) -> Awaitable[Prepared] | None:
        """What a command naming ``keys`` needs before it may run (as
        :meth:`Keyspace.prepare`): to wait for this host's decisions on its
        keys, a decision of its own if it ``decides``, the keys it reads
        (``load``) from the database when memory does not hold them or may not
        serve them, and its whole-table read (``ahead``)."""
        if prepared is not None and prepared.decision is not None:
            return None  # decided: run it
        holds = self.holds
        if holds:
            waiting: list[_Hold] = []
            for key in keys:
                hold = holds.get(key)
                if hold is not None and hold not in waiting:
                    waiting.append(hold)
            if waiting:
                joins = decides and len(waiting) == 1 and all(k in waiting[0].keys for k in keys)
                wait = _Wait(asyncio.get_running_loop().create_future(), joins)
                for hold in waiting:
                    hold.waiters.append(wait)
                return self._after_hold(wait)
        if decides and keys and self.failure is None:
            return self._open(keys)
        if not self.coherent:
            if keys and (prepared is None or prepared.forget is None):
                return self._read_through_shared(load, keys, True)
        else:
            cache = self.cache
            find = cache.find
            now = cache.clock()
            loaded = None if prepared is None else prepared.loaded
            missing = [
                k for k in load if _stale(find(k), now) and (loaded is None or k not in loaded)
            ]
            if missing:
                if loaded:
                    missing = [k for k in load if _stale(find(k), now)]
                return self._read_through_shared(missing, None, False)
        if ahead is not None and (prepared is None or prepared.ahead is None):
            work = ahead()
            if work is not None:
                return self._read_ahead_shared(work, prepared)
        return None

    async def _after_hold(self, wait: _Wait) -> Prepared:
        """Wait for the holds: released (ask again, reading afresh what the
        decision changed), or handed the decision to decide in, next."""
        try:
            handed = await wait.future
        except asyncio.CancelledError:
            future = wait.future
            if future.done() and not future.cancelled():
                given = future.result()
                if given is not None and given.decision is not None:
                    self._next(given.decision)  # handed over, but the connection left
            raise
        return Prepared({}) if handed is None else handed

    async def _read_through_shared(
        self, keys: list[bytes], forget: list[bytes] | None, fresh: bool
    ) -> Prepared:
        """Read ``keys`` (``fresh``: replacing what memory holds); keys heard
        changed meanwhile, and ``forget``, are forgotten after the command."""
        assert self.store is not None
        cache = self.cache
        ticket = _Read(set(keys))
        self.reads.append(ticket)
        try:
            found = await self.store.load_many(keys)
        except StoreError:
            cache.loads_error += len(keys)
            raise
        finally:
            self.reads.remove(ticket)
        now = cache.clock()
        loaded: dict[bytes, Entry[Value] | None] = {}
        for key in keys:
            row = found.get(key)
            if row is None:
                cache.loads_absent += 1
            else:
                cache.loads_found += 1
            held = cache.find(key)
            if fresh or _stale(held, now):
                if held is not None:
                    cache.drop(key)
                loaded[key] = None if row is None else self._entry_of(key, row)
            # else a write while we read: memory's copy is newer
        after = list(forget) if forget is not None else []
        if ticket.everything:
            after.extend(keys)
        else:
            after.extend(ticket.dirty)
        return Prepared(loaded, None, None, after if (after or forget is not None) else None)

    @staticmethod
    async def _read_ahead_shared(ahead: Awaitable[object], prepared: Prepared | None) -> Prepared:
        result = await ahead
        if prepared is None:
            return Prepared({}, result)
        return Prepared(prepared.loaded, result, None, prepared.forget)

    def _open(self, keys: list[bytes]) -> Awaitable[Prepared]:
        """Hold ``keys`` now (later commands naming them wait), then decide."""
        hold = _Hold(frozenset(keys))
        holds = self.holds
        for key in hold.keys:
            holds[key] = hold
        # A read of these keys under way may end after the decision changed
        # them: its command must not leave what it read in memory.
        self.committed(list(hold.keys))
        return self._decide(hold)

    async def _decide(self, hold: _Hold) -> Prepared:
        shared = self.shared
        assert shared is not None
        try:
            decision = await shared.decide(list(hold.keys))
        except BaseException:
            self._release(hold)
            raise
        hold.decision = decision
        self.hold_of[decision] = hold
        loaded: dict[bytes, Entry[Value] | None] = {}
        for key in hold.keys:
            # The database's rows replace memory's copies (read like a
            # read-through: the command's first access admits them).
            self._let_go(key)
            row = decision.rows.get(key)
            loaded[key] = None if row is None else self._entry_of(key, row)
        return Prepared(loaded, None, decision, None if self.coherent else list(hold.keys))

    def _entry_of(self, key: bytes, row: Row) -> Entry[Value]:
        """The row as memory takes it, with this host's own renewal of it
        held back, if any (the database's deadline lags it by up to a
        tenth of the TTL): what this host answered for the session before
        memory let go of its copy stays what it answers, and decides on."""
        entry = entry_of(row)
        ttl = row.ttl
        deadline = row.deadline
        if ttl is None or deadline is None:
            return entry
        known = self.stored.get(key)
        if known is not None and known.updated_at == row.updated_at and known.ttl == ttl:
            known.deadline = deadline  # the database's, exactly
            if known.held > deadline:
                entry.deadline = known.held
                entry.accessed_at = max(entry.accessed_at, known.accessed)
        elif deadline < row.updated_at + ttl:
            # Set on another clock than the write's (an EXPIRE elsewhere):
            # renew_due's lower bound for it would be too high.
            self.stored[key] = _Stored(row.updated_at, ttl, deadline)
        return entry

    def _handed(self, decision: Decision) -> Prepared:
        """What the next command deciding in ``decision`` gets: the keys as
        the commands before it left them (the decision's own record of them).
        Memory holds the same unless it let go of a key meanwhile (eviction,
        or a notification of a change older than the decision's locks)."""
        loaded: dict[bytes, Entry[Value] | None] = {}
        changes = decision.changes
        for key in decision.keys:
            if key in changes:
                row = changes[key]
                loaded[key] = None if row is None else entry_of(row)
            else:
                row = decision.rows.get(key)
                loaded[key] = None if row is None else self._entry_of(key, row)
        return Prepared(loaded, None, decision, None if self.coherent else list(decision.keys))

    def _next(self, decision: Decision) -> None:
        """The command deciding in ``decision`` is done (or will not run):
        hand it to the next command waiting to decide on its keys, or commit."""
        hold = self.hold_of.get(decision)
        if hold is None:
            return
        if hold.ran < CHAIN_LIMIT:
            for wait in hold.waiters:
                if wait.joins and not wait.future.done():
                    hold.waiters.remove(wait)
                    hold.ran += 1
                    wait.future.set_result(self._handed(decision))
                    return
        shared = self.shared
        assert shared is not None
        shared.finish(decision, lambda error: self._decided(decision, error))

    def _release(self, hold: _Hold) -> None:
        holds = self.holds
        for key in hold.keys:
            if holds.get(key) is hold:
                del holds[key]
        waiters, hold.waiters = hold.waiters, []
        for wait in waiters:
            if not wait.future.done():
                wait.future.set_result(None)

    def discard(self, prepared: Prepared) -> None:
        decision = prepared.decision
        if decision is None:
            return
        prepared.decision = None
        self._next(decision)

    # ------------------------------------------------------ running commands

    def enter(self, context: Context) -> None:
        Keyspace.enter(self, context)
        self.decided = False
        prepared = context.prepared
        if prepared is not None and prepared.decision is not None:
            self.deciding = decision = prepared.decision
            prepared.decision = None  # taken: committed after the command
            # Handed on from a command that changed its keys: this one reads
            # those changes before they are committed.
            self.uncommitted_read = bool(decision.changes)
        else:
            self.uncommitted_read = False
        if not self.coherent:
            self.written = []

    def leave(self, context: Context) -> None:
        Keyspace.leave(self, context)
        shared = self.shared
        if shared is not None:
            recorded = shared.recorded()
            self.own_wrote = recorded != self.recorded
            if self.own_wrote:
                self.recorded = self.wrote[context.owner] = recorded
        decision = self.deciding
        if decision is not None:
            self.deciding = None
            self.decided = True
            owned = self.decisions.get(context.owner)
            if owned is None:
                self.decisions[context.owner] = [decision]
            else:
                owned.append(decision)
            self._next(decision)
        cache = self.cache
        prepared = context.prepared
        if prepared is not None and prepared.forget:
            # While notifications are lost, every read is one of these.
            for key in prepared.forget:
                self._let_go(key)
        written = self.written
        if written is not None:
            self.written = None
            for key in written:
                cache.drop(key)

    def _decided(self, decision: Decision, error: StoreError | None) -> None:
        """``decision`` is committed, or failed: then memory's copies of its
        keys hold changes the database may not have, and are forgotten."""
        if error is not None:
            forget = self.stored.pop
            for key in decision.keys:
                self.cache.drop(key)
                forget(key, None)  # what it knew of the row may be the failed write's
        hold = self.hold_of.pop(decision, None)
        if hold is not None:
            self._release(hold)

    def after_commit(
        self, callback: Callable[[StoreError | None], None], owner: object = None
    ) -> None:
        # Wait for the decisions ``owner``'s commands decided in since its
        # last call, not for every open one.
        shared = self.shared
        assert shared is not None
        shared.after_commit_for(callback, self.decisions.pop(owner, []), self.wrote.pop(owner, 0))

    def after_writes(
        self, callback: Callable[[StoreError | None], None], owner: object = None
    ) -> None:
        # ``owner``'s plain writes only, kept for its after_commit.
        shared = self.shared
        assert shared is not None
        shared.after_commit_for(callback, [], self.wrote.get(owner, 0))

    def after_own(
        self, callback: Callable[[StoreError | None], None], owner: object, shown: bool
    ) -> None:
        # The last command's plain changes (a commit takes every change
        # recorded when it starts, so theirs is the commit of the last of
        # them) and the decision it decided in (which read the database,
        # under its keys' locks). A read's reply shows memory, which may hold
        # another connection's changes not yet committed: it waits for every
        # change recorded so far, and a failed commit of them is its error,
        # as Redis sends no reply before the fsync; it would otherwise show a
        # value that is never committed (a GET saw another connection's SET
        # whose commit then failed, and the next GET the value before it).
        # A reply that neither wrote nor decided shows only what it read
        # (EXEC of reads, GETEX without options); an error shows nothing.
        shared = self.shared
        assert shared is not None
        owned = self.decisions.get(owner) if self.decided else None
        shown = shown and not (self.own_wrote or owned)
        through = self.recorded if self.own_wrote or shown else 0
        shared.after_commit_for(callback, [owned[-1]] if owned else [], through, shown)

    def uncommitted(self) -> bool:
        shared = self.shared
        return shared is not None and shared.uncommitted()

    def shows_uncommitted(self, keys: list[bytes] | None) -> bool:
        # A failed commit takes its writes back from memory (and a read's
        # reply is told of any failed commit recorded before it): whatever
        # keys it shows, it waits for every change recorded so far.
        return True

    def owner_gone(self, owner: object) -> None:
        self.decisions.pop(owner, None)
        self.wrote.pop(owner, None)

    def read_uncommitted(self) -> bool:
        return self.uncommitted_read

    def unheld(self, owner: object) -> None:
        # The decision the command just run appended for its owner, if it
        # decided (``decided`` is cleared before every request): no reply
        # waits for its commit, nor carries its error.
        if self.decided:
            self.decided = False
            owned = self.decisions.get(owner)
            if owned:
                owned.pop()
                if not owned:
                    del self.decisions[owner]

    def after_every_commit(self, callback: Callable[[StoreError | None], None]) -> None:
        # Every decision of this host not yet committed, left in
        # ``decisions``: a write's reply held for its decision's commit is
        # released by its own connection's after_commit, which must still
        # find it there (taken, a WAITAOF that timed out would let that reply
        # go before the commit, and as OK if the commit failed).
        shared = self.shared
        assert shared is not None
        shared.after_commit_for(callback, list(self.hold_of))

    def lagging(self) -> bool:
        # The command that just decided holds its reply until the commit,
        # under durability: batch as well.
        if self.decided:
            return True
        return self.store is not None and self.store.lagging()

    def scan_ahead(
        self, cursor: int, count: int, kind: int | None
    ) -> Awaitable[tuple[list[bytes], int]] | None:
        store = self.store
        assert store is not None
        return store.whole_table(lambda: self.scan(cursor, count, kind), "scan")

    # ------------------------------------------------- what the store tells

    def invalidated(self, keys: list[bytes]) -> None:
        drop = self.cache.drop
        forget = self.stored.pop
        for key in keys:
            drop(key)
            forget(key, None)  # another host wrote it: a held renewal is of the old
        for read in self.reads:
            read.heard(keys)
        if self.watching:
            for key in keys:
                self.modified(key)

    def invalidated_hashes(self, hashes: list[int]) -> None:
        wanted = set(hashes)
        self.invalidated([key for key in list(self.cache.keys()) if scan_hash(key) in wanted])
        for read in self.reads:
            if read.keys is None:
                read.everything = True
            else:
                read.heard([key for key in read.keys if scan_hash(key) in wanted])

    def invalidated_all(self, reason: str) -> None:
        cache = self.cache
        if self.shared is not None and cache.sliding:
            # The renewals of reads no write-back round has seen yet (the
            # database keeps a row only while its ttl is the renewal's).
            since = self.renewed_through
            evicted = self.evicted
            for key, entry in cache.touched_since(since):
                renewal = self._renewal(entry, since)
                if renewal is not None:
                    evicted[key] = renewal
        cache.drop_all()
        for read in self.reads:
            read.everything = True
        if self.watching:
            self.modified(None)

    def committed(self, keys: list[bytes]) -> None:
        for read in self.reads:
            read.heard(keys)

    # ---------------------------------------------------- background duties

    def renew_due(self, *, everything: bool = False) -> int:
        """Hand the store the sliding renewals worth writing back now (module
        docstring: those of evicted sessions, those that move the database's
        deadline by a tenth of the TTL, those held back whose database
        deadline comes near; ``everything``, at a stop: every one held back
        too); how many."""
        shared = self.shared
        if shared is None:
            return 0
        cache = self.cache
        since = self.renewed_through
        now = self.renewed_through = cache.clock()
        renewals, self.evicted = self.evicted, {}
        stored = self.stored
        margin = self.renew_margin
        # As _renewal, inline: a GET's renewal is looked at in every round
        # until it is written, and most are held back.
        for key, entry in cache.touched_since(since) if cache.sliding else ():
            ttl = entry.ttl
            deadline = entry.deadline
            accessed = entry.accessed_at
            updated = entry.updated_at
            if ttl is None or deadline is None or accessed <= updated:
                continue
            known = stored.get(key)
            if known is None or known.updated_at != updated or known.ttl != ttl:
                # Its last write (this host's or the one it read) filed at
                # least this deadline; nothing of it written back since.
                known = _Stored(updated, ttl, updated + ttl)
                stored[key] = known
            if deadline - known.deadline >= ttl * RENEW_SLACK or known.deadline - now <= margin:
                renewals[key] = Renewal(ttl, deadline, accessed)
                known.deadline = deadline
                known.held = 0.0
                continue
            if not known.held:
                known.due = known.deadline - margin
                heapq.heappush(self.due, (known.due, key))
            known.held = deadline
            known.accessed = accessed
        due = self.due
        while due and (everything or due[0][0] <= now):
            when, key = heapq.heappop(due)
            known = stored.get(key)
            if known is None or not known.held or known.due != when:
                continue  # written, replaced or forgotten since it was held back
            held = cache.find(key)
            if held is not None and held.updated_at != known.updated_at:
                # Written since, with its deadline: nothing is held any more
                # (else the record would be kept for good, _forget_stored).
                known.held = 0.0
                continue
            renewals[key] = Renewal(known.ttl, known.held, known.accessed)
            known.deadline = known.held
            known.held = 0.0
        if len(stored) > 2 * max(len(cache), self.stored_kept) + 1024:
            self._forget_stored()
        if len(due) > 2 * len(self.stored) + 1024:
            # Items of renewals written, replaced or forgotten since they were
            # held back: built again from those held, at most one a key.
            self.due = [(k.due, key) for key, k in self.stored.items() if k.held]
            heapq.heapify(self.due)
        if renewals:
            shared.renew(renewals)
        return len(renewals)

    def _forget_stored(self) -> None:
        """Drop what is known of sessions no longer in memory, but for the
        renewals held back (written when due): the table stays about as large
        as memory."""
        find = self.cache.find
        self.stored = {
            key: known for key, known in self.stored.items() if known.held or find(key) is not None
        }
        self.stored_kept = len(self.stored)

    def expire_store(self, limit: int) -> int:
        # The database deletes due rows, in the background (whichever host
        # sweeps first); memory's own expiry only forgets.
        shared = self.shared
        if shared is not None:
            shared.expire_due(self.cache.clock())
        return 0

    async def warm_shared(self, limit: int) -> int:
        """The warm start, read off the event loop: the most recently used
        sessions, less any another host changed while they were read."""
        shared = self.shared
        if shared is None or limit <= 0:
            return 0
        ticket = _Read(None)
        self.reads.append(ticket)
        try:
            rows = await shared.recent_rows(limit)
        finally:
            self.reads.remove(ticket)
        if ticket.everything:
            return 0
        admit = self.cache.admit
        warmed = 0
        for key, row in reversed(rows):
            if key not in ticket.dirty and admit(key, entry_of(row), touch=False) is not None:
                warmed += 1
        self.warmed = warmed
        self.renewed_through = self.cache.clock()
        return warmed

    async def shutdown(self) -> None:
        """Write back the renewals memory knows of, then close the store."""
        shared = self.shared
        if shared is None:
            return
        self.renew_due(everything=True)
        await shared.aclose()


def _stale(entry: Entry[Value] | None, now: float) -> bool:
    """Whether memory cannot answer for a key: it holds no copy, or one past
    its deadline (another host may have renewed it: ask the database)."""
    if entry is None:
        return True
    deadline = entry.deadline
    return deadline is not None and deadline <= now
