"""Memory and store seen as one keyspace: the only door to session data.

Handlers and the server touch sessions only through this module. It owns:

* **read-through before a command runs**: :meth:`Keyspace.prepare` says what
  a command's keys need from the store (one awaitable that reads them off the
  event loop), so that handlers never wait;
* **the per-command context** (:class:`Context`): what the store returned for
  this command, what a whole-table read found, and every data operation a
  handler may do. It exists for one command, which runs synchronously: the
  keyspace holds one current context at a time and asserts it;
* **write-through**: it is the cache's persistence hook and hands the store a
  snapshot of every change, the row's fields as a plain tuple (and keeps the running
  command's view of its keys current, so a command that deletes, rewrites or
  evicts one of its keys reads that change back, not the copy it loaded);
* **merges** of memory and store for DBSIZE, INFO keyspace, SCAN and KEYS, and
  the coordination of memory and store for expiry, warm start and shutdown;
* **keyspace events**: handlers send theirs through :meth:`Context.notify`
  after testing :attr:`Keyspace.notifying`; the keyspace sends ``expired``
  (memory and store), ``evicted`` (only without a store: with one, an evicted
  session is still there) and ``new`` itself.

It never does I/O itself: the store does, on its own threads. The walk of one
command through it is in docs/design.md.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any

from . import values
from .cache import DEFAULT, CacheStats, Cause, Entry, EvictionReason, SessionCache
from .keyevents import NOTIFY_EVICTED, NOTIFY_EXPIRED, NOTIFY_NEW
from .protocol import Error
from .store import (
    HASH_SPACE,
    Decision,
    Row,
    Store,
    StoreError,
    TableCounts,
    TableSlice,
    scan_hash,
)
from .store.api import KIND, Kept
from .store.api import live as live_fields
from .values import Value

# Stored sessions the warm start admits to memory per step before it lets the
# event loop serve clients again.
WARM_STEP = 1024


class Prepared:
    """What a command got from the store before it ran: the sessions it names
    that memory did not hold (``None`` where the store has none either), and
    the result of its whole-table read (``None`` if it needs none). A store
    shared with other hosts adds the open :class:`~sessiond.store.Decision`
    a command decides in, and the keys memory must forget after it
    (:mod:`sessiond.shared`); both stay ``None`` otherwise."""

    __slots__ = ("ahead", "decision", "forget", "loaded")

    def __init__(
        self,
        loaded: dict[bytes, Entry[Value] | None],
        ahead: object = None,
        decision: Decision | None = None,
        forget: list[bytes] | None = None,
    ) -> None:
        self.loaded = loaded
        self.ahead = ahead
        self.decision = decision
        self.forget = forget


def _row(entry: Entry[Value]) -> Kept:
    """What a write records: the row's fields as a plain tuple (see
    :data:`~sessiond.store.api.Fields`). Never ``None``; typed :data:`Kept`,
    as the store takes it, so that compiled code keeps it one tuple object
    (as :data:`Fields` it would be unpacked into a C struct at each caller
    and built again)."""
    value = entry.value
    if isinstance(value, bytes):
        kind, data = values.STRING, value
    else:
        kind, data = values.encode(value)
    return (
        data,
        entry.context_id,
        entry.created_at,
        entry.updated_at,
        entry.accessed_at,
        entry.ttl,
        entry.deadline,
        kind,
    )


def _copy(entry: Entry[Value]) -> Entry[Value]:
    """An entry as it is now, which no later change reaches: a hash or a set
    is changed in place, so it is copied too."""
    value = entry.value
    if isinstance(value, dict):
        value = dict(value)
    elif isinstance(value, set):
        value = set(value)
    return Entry(
        value,
        context_id=entry.context_id,
        created_at=entry.created_at,
        updated_at=entry.updated_at,
        accessed_at=entry.accessed_at,
        ttl=entry.ttl,
        deadline=entry.deadline,
    )


def _read_since_written(entry: Entry[Value]) -> bool:
    """Whether a read renewed ``entry`` after its last write (a write sets both
    times): only then does memory know something the store does not, its TTL
    renewal. Saving every other session again when it leaves memory doubled
    the log and the compaction of a load of new sessions into a full cache
    (each evicts one), and a clean stop put 100k rows (27 MB) in the log
    (issue 18)."""
    return entry.accessed_at != entry.updated_at


def _entry(row: Row) -> Entry[Value]:
    return Entry(
        values.decode(row.kind, row.value) if row.kind else row.value,
        context_id=row.context,
        created_at=row.created_at,
        updated_at=row.updated_at,
        accessed_at=row.accessed_at,
        ttl=row.ttl,
        deadline=row.deadline,
    )


def take_hash_groups(candidates: list[tuple[int, bytes]], count: int) -> tuple[list[bytes], int]:
    """At least ``count`` keys from sorted ``(hash, key)`` pairs, never splitting
    a group of equal hashes; the next cursor (0 when done)."""
    if len(candidates) <= count:
        return [k for _, k in candidates], 0
    end = count
    last_hash = candidates[end - 1][0]
    while end < len(candidates) and candidates[end][0] == last_hash:
        end += 1
    if end == len(candidates):
        return [k for _, k in candidates], 0
    return [k for _, k in candidates[:end]], last_hash + 1


class Keyspace:
    """The cache and, if persistence is on, the store, as one keyspace."""

    # Whether a command that finds the store's copy of a key past its
    # deadline expires the session then (Context._expired_in_store); a shared
    # store's database deletes due rows itself.
    expires_on_access = True
    # Whether a reply held for its command's commit waits for that command's
    # changes alone (after_own) and gets their outcome, not that of every
    # change its connection made: a shared store, whose plain writes and
    # decisions commit apart, so that one can fail while another lands.
    own_outcomes = False

    def __init__(
        self,
        cache: SessionCache[bytes, Value],
        store: Store | None = None,
        *,
        max_value_size: int = 1024 * 1024,
    ) -> None:
        self.cache = cache
        self.store = store
        # The store's table_lag, read once: every eviction compares with it.
        self.table_lag = 0.0 if store is None else store.table_lag
        self.max_value_size = max_value_size
        self.warmed = 0  # sessions loaded by the warm start
        # A change was recorded since the store last had none uncommitted
        # (see uncommitted()).
        self.dirty = False
        # While the warm start loads: the keys commands changed since it
        # began (their stored rows read for it may be older). None otherwise.
        self._changed: set[bytes] | None = None
        # Memory holds every session the store has: a key memory lacks is in
        # neither, and a read of it need not ask the store (prepare). True
        # once a warm start loaded every live stored session and a sweep
        # then found no expired one left that memory lacks (a command that
        # read such a row expired it, and told so), or a FLUSHDB emptied
        # both; false again at the first eviction (the store keeps the
        # evicted session). A read of a missing session cost a trip to the
        # store's reader thread, and its pipeline waited for it.
        self.whole = False
        # Evictions so far (a warm start that saw one cannot say ``whole``).
        self.evictions = 0
        # The evictions when a warm start had loaded every live stored
        # session (-1: none did): the next sweep that ends the store's
        # expired rows makes memory whole if there were none since.
        self.whole_after_sweep = -1
        self.closing = False  # close() began
        # Reads that memory missed and the store's copy served (INFO's
        # keyspace_hits counts them as hits; the cache's own counters do not).
        self.store_hits = 0
        self.current: Context | None = None
        # The keyspace's running clock while a transaction or a script holds
        # the time (Context.hold_time); None otherwise.
        self.held_clock: Callable[[], float] | None = None
        # Told of every change a command makes to a key (None: to every key)
        # and of every expiry: WATCH. ``watching`` says whether anyone listens
        # (a write checks it, and calls nobody when nobody does).
        self.change_listeners: list[Callable[[bytes | None, bool], None]] = []
        self.watching = False
        # Keyspace events (notify_keyspace_events): ``notifying`` says whether
        # one could reach a subscriber. A handler tests it before it calls
        # Context.notify, so that with nobody listening an event costs that test.
        self.notifier: Callable[[int, bytes, bytes], None] | None = None
        self.notifying = False
        self.notifying_new = False  # whether to tell of keys created ("new")
        # Whether a script may use only the keys it declares (a shared store
        # decides a script on them: docs/shared-store.md).
        self.scripts_declare_keys = False
        if store is not None:
            self.attach(store)

    def attach(self, store: Store) -> None:
        """Write through to ``store`` and read through from it from now on
        (at start-up, before any command runs)."""
        self.store = store
        self.table_lag = store.table_lag
        self.cache.persistence = self

    # -------------------------------------------------------------- changes

    def listen(self, listener: Callable[[bytes | None, bool], None]) -> None:
        """Call ``listener(key, expired)`` whenever a command changes ``key``
        or it expires (``expired``; ``None``: every key changed, FLUSHDB).
        Called synchronously, before the change; it must not change the
        keyspace."""
        self.change_listeners.append(listener)
        self.watching = True
        # Only now: the core copies the entry it replaces for its listener.
        self.cache.listener = self._removed

    def unlisten(self, listener: Callable[[bytes | None, bool], None]) -> None:
        """Stop calling ``listener``. With nobody left listening, a write
        calls nobody again and the core stops copying replaced entries."""
        self.change_listeners.remove(listener)
        if not self.change_listeners:
            self.watching = False
            # Keyspace events still need the core's word on expiries.
            self.cache.listener = self._removed if self.notifying else None

    def modified(self, key: bytes | None, expired: bool = False) -> None:
        for listener in self.change_listeners:
            listener(key, expired)

    def announce(
        self, notifier: Callable[[int, bytes, bytes], None] | None, *, new: bool = False
    ) -> None:
        """Send keyspace events to ``notifier(class, event, key)`` from now on
        (``None``: nobody listens, send none); ``new``: the ``new`` event too."""
        self.notifier = notifier
        self.notifying = notifier is not None
        self.notifying_new = new and notifier is not None
        # The core tells of expiries and evictions only to a listener it has.
        self.cache.listener = self._removed if self.notifying or self.watching else None

    def notify(self, cls: int, event: bytes, key: bytes) -> None:
        """Send keyspace event ``event`` of class ``cls`` about ``key``."""
        notifier = self.notifier
        if notifier is not None:
            notifier(cls, event, key)

    def _removed(
        self, key: bytes, entry: Entry[Value], cause: Cause, reason: EvictionReason | None
    ) -> None:
        """The core removed ``key`` from memory. An expiry is a change; an
        eviction is not (the store keeps the session as it was); a delete or
        a replacement came from a command, which said so already. Without a
        store an eviction (or SESSION.INVALIDATE) is the end of the key:
        ``evicted``, as Redis says of a key its eviction deletes."""
        if cause is Cause.EXPIRED:
            if self.watching:
                self.modified(key, True)
            if self.notifying:
                self.notify(NOTIFY_EXPIRED, b"expired", key)
        elif cause is Cause.EVICTED and self.notifying and self.store is None:
            self.notify(NOTIFY_EVICTED, b"evicted", key)

    # ------------------------------------------------------ the cache's hook

    def save(self, key: bytes, entry: Entry[Value]) -> None:
        self._record(key, entry, _row(entry))

    def delete(self, key: bytes) -> None:
        self._record(key, None, None)

    def _record(self, key: bytes, entry: Entry[Value] | None, row: Kept) -> None:
        """Write-through of a change: seen by the command running, kept from
        the warm start's older row, recorded in the store."""
        current = self.current
        if current is not None:
            current.seen(key, entry)
        changed = self._changed
        if changed is not None:
            changed.add(key)
        assert self.store is not None
        self.store.record(key, row)
        self.dirty = True

    def expire(self, key: bytes) -> None:
        # Memory found the session past its deadline: so would the store.
        self.delete(key)

    def on_evict(self, key: bytes, entry: Entry[Value], cause: Cause) -> None:
        # The value is already stored (write-through); this records the TTL
        # renewals that reads made since, so the evicted session keeps its life.
        # From now on the store holds a session memory does not.
        self.whole = False
        self.evictions += 1
        if _read_since_written(entry):
            self.save(key, entry)
        else:
            current = self.current
            if current is not None:
                current.seen(key, entry)  # the running command still reads it
        # Due before its newest change can have reached the table, where the
        # store's expiry sweep looks (a change takes up to table_lag to get
        # there): the store watches for it (SQLiteStore.evicted). Judged from
        # now, not from the last write: a save above, an EXPIRE or a script's
        # rollback logs a change without a new write time.
        deadline = entry.deadline
        if deadline is not None and deadline - self.cache.clock() < self.table_lag:
            store = self.store
            assert store is not None
            store.evicted(key, deadline)

    def load(self, key: bytes) -> Entry[Value] | None:
        """Blocking read-through (the cache's ``get_or_load``, library use)."""
        assert self.store is not None
        row = self.store.load(key)
        return None if row is None else _entry(row)

    def load_now(self, key: bytes) -> Entry[Value] | None:
        """A blocking point read of what the store holds for ``key``, counted
        as a read-through: only a script's undeclared key is read so (see
        :meth:`Context.enter_script`). A failure is a :class:`StoreError`."""
        cache = self.cache
        try:
            entry = self.load(key)
        except StoreError:
            cache.loads_error += 1
            raise
        except Exception as exc:
            cache.loads_error += 1
            raise StoreError(f"store read failed: {exc}") from None
        if entry is None:
            cache.loads_absent += 1
        else:
            cache.loads_found += 1
        return entry

    # ------------------------------------------------- before a command runs

    def prepare(
        self,
        keys: list[bytes],
        ahead: Callable[[], Awaitable[object] | None] | None,
        prepared: Prepared | None,
    ) -> Awaitable[Prepared] | None:
        """What a command naming ``keys`` needs before it may run: ``None`` if
        it can run now with ``prepared`` (what earlier rounds fetched), else an
        awaitable that reads the store and gives the next ``prepared``; ask
        again once it is done. ``ahead`` starts the command's whole-table
        read, if it has one; it runs once every key is at hand."""
        if self.store is None:
            return None
        find = self.cache.find
        loaded = None if prepared is None else prepared.loaded
        missing = [k for k in keys if find(k) is None and (loaded is None or k not in loaded)]
        if missing and not self.whole:
            if loaded:
                # Another round: what an earlier round fetched may have changed
                # while this one waited, so fetch it again with the rest.
                missing = [k for k in keys if find(k) is None]
            return self._read_through(missing)
        if ahead is not None and (prepared is None or prepared.ahead is None):
            work = ahead()
            if work is not None:
                return self._read_ahead(work, prepared)
        return None

    def held_in_memory(self, key: bytes) -> bool:
        """Whether memory holds ``key``, live or not yet swept, as
        :meth:`prepare` asks (a command that reads only it need read nothing
        through). Not :meth:`Context.in_memory`, which asks for a live one."""
        return self.cache.find(key) is not None

    def discard(self, prepared: Prepared) -> None:
        """A request's connection went away after ``prepared`` was read for it
        and before it ran (a shared store then has a decision to give up)."""

    async def _read_through(self, keys: list[bytes]) -> Prepared:
        assert self.store is not None
        cache = self.cache
        try:
            found = await self.store.load_many(keys)
        except StoreError:
            cache.loads_error += len(keys)
            raise
        loaded: dict[bytes, Entry[Value] | None] = {}
        for key in keys:
            row = found.get(key)
            if row is None:
                cache.loads_absent += 1
            else:
                cache.loads_found += 1
            if cache.find(key) is None:  # a write while we read wins
                loaded[key] = None if row is None else _entry(row)
        return Prepared(loaded)

    @staticmethod
    async def _read_ahead(ahead: Awaitable[object], prepared: Prepared | None) -> Prepared:
        result = await ahead
        return Prepared({} if prepared is None else prepared.loaded, result)

    # ------------------------------------------------------ running commands

    def enter(self, context: Context) -> None:
        """``context``'s command starts. Commands run one at a time and to the
        end: a handler never awaits (that would let another command run in
        the middle of it), and this checks it."""
        assert self.current is None, "a command started while another one was running"
        self.current = context

    def leave(self, context: Context) -> None:
        assert self.current is context, "a command ended that was not running"
        self.current = None

    # ------------------------------------------------------- whole keyspace

    @property
    def persistent(self) -> bool:
        """Whether sessions are written through to a store."""
        return self.store is not None

    @property
    def failure(self) -> StoreError | None:
        """Why writes are refused (the store cannot commit), else ``None``."""
        return None if self.store is None else self.store.failure

    def after_commit(
        self, callback: Callable[[StoreError | None], None], owner: object = None
    ) -> None:
        """Call ``callback`` once every change made so far is durable (at once
        without a store), with the error if its commit failed: the changes
        of every command run since ``owner``'s last call (:attr:`Context.owner`)
        included, whoever else asks meanwhile."""
        self.after_writes(callback)

    def after_writes(
        self, callback: Callable[[StoreError | None], None], owner: object = None
    ) -> None:
        """Call ``callback`` once the plain writes made so far (on a shared
        store, ``owner``'s) are committed (with the error if that commit
        failed), waiting for no decision: what a connection's held replies ask
        before it parks to wait for its next request's read or decision (a
        commit meanwhile may take their writes). Without decisions (a local
        store), that is :meth:`after_commit`."""
        if self.store is None:
            callback(None)
        else:
            self.store.after_commit(callback)

    def after_own(
        self, callback: Callable[[StoreError | None], None], owner: object, shown: bool
    ) -> None:
        """Call ``callback`` once the changes of the last command ``owner``
        ran are committed, with the error if their commit failed, and with
        none for another command's failed commit: a reply held for that
        command alone (:attr:`own_outcomes`); with ``shown`` (a read's reply,
        which shows what memory holds), once every change recorded before it
        is, with the error of any. Here, where one commit sequence holds every
        change, once every change made so far is."""
        self.after_writes(callback, owner)

    def after_every_commit(self, callback: Callable[[StoreError | None], None]) -> None:
        """:meth:`after_commit` for every change made so far, whichever
        connection made it, taking nothing a waiting reply is owed (WAITAOF's
        barrier): the same here, one commit sequence holds them all."""
        self.after_commit(callback)

    def durable_now(self) -> bool:
        """Whether every change made so far is durable already (WAITAOF where
        it need not or cannot wait: numlocal 0, inside MULTI)."""
        done: list[bool] = []
        self.after_every_commit(lambda error: done.append(error is None))
        return bool(done) and done[0]

    async def durable(self, timeout: float | None) -> int:
        """1 once every change made so far is durable (WAITAOF), 0 if their
        commit failed or ``timeout`` seconds passed first (``None``: no limit)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def committed(error: StoreError | None) -> None:
            if not future.done():
                future.set_result(0 if error is not None else 1)

        self.after_every_commit(committed)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return 0

    def owner_gone(self, owner: object) -> None:
        """Forget what was kept for ``owner``'s next :meth:`after_commit`:
        its connection closed, or its replies wait each for its own changes
        (:attr:`own_outcomes`)."""

    def read_uncommitted(self) -> bool:
        """Whether the command just run read changes not yet committed (on a
        shared store, a decision handed on from a command that changed its
        keys): its reply, an error that changed nothing too, must wait for
        their commit, since it was decided on them."""
        return False

    def uncommitted(self) -> bool:
        """Whether memory may show a change not yet committed (a read's reply
        then asks :meth:`shows_uncommitted`). Not while the store refuses
        writes: a failed write stays in memory, reads are served with it,
        and it lands with the next commit that succeeds (docs/persistence.md).
        The store is asked only after a change was recorded since it last
        had none (:attr:`dirty`): under reads alone, not at every read."""
        if not self.dirty:
            return False
        store = self.store
        if store is None or not store.uncommitted():
            self.dirty = False
            return False
        return store.failure is None

    def shows_uncommitted(self, keys: list[bytes] | None) -> bool:
        """Whether a read's reply about ``keys`` (``None``: any, a read of
        the whole keyspace) may show a change not yet committed: under
        ``durability: always`` it then waits for that commit and gets its
        error, as Redis sends no reply before its fsync (a crash before it
        would leave the client having seen a write that is gone)."""
        store = self.store
        if store is None:
            return False
        return keys is None or store.names_uncommitted(keys)

    def unheld(self, owner: object) -> None:
        """The reply of the command just run for ``owner`` waits for no commit
        (an error that changed nothing, a reply not sent, a command that
        writes nothing): forget what was kept for that command's reply."""

    def lagging(self) -> bool:
        """Whether the store's commits run behind their schedule."""
        return self.store is not None and self.store.lagging()

    def count_ahead(self) -> Awaitable[TableCounts] | None:
        """The store's counts, read off the event loop (DBSIZE, INFO keyspace)."""
        store = self.store
        if store is None:
            return None
        return store.whole_table(store.count_rows, "count")

    def keys_ahead(self, pattern: re.Pattern[bytes] | None) -> Awaitable[list[bytes]] | None:
        """KEYS read and merged off the event loop. The merge looks memory up
        from that thread, which single dict lookups under the GIL allow; a
        session written meanwhile may or may not be listed, as with SCAN."""
        store = self.store
        if store is None:
            return None
        return store.whole_table(
            lambda: self._listed(store.scan_rows(0, None), 0, pattern, None), "keys"
        )

    def scan_ahead(
        self, cursor: int, count: int, kind: int | None
    ) -> Awaitable[tuple[list[bytes], int]] | None:
        """One SCAN step read off the event loop, for a store whose reads must
        not block it (a database across the network); ``None``: SCAN reads in
        place (memory, or the local SQLite file)."""
        return None

    def counts(self, counted: TableCounts | None = None) -> tuple[int, int]:
        """Sessions held (in memory, queued or stored) and how many have a
        deadline, for DBSIZE and INFO keyspace; with a store, its counts
        (``counted`` if read ahead, else read now). As Redis' DBSIZE, a session
        past its deadline counts until the next sweep removes it."""
        if self.store is None:
            return len(self.cache), self.cache.expiring
        counted = counted or self.store.count_rows()
        total, expiring = counted.total, counted.expiring
        find = self.cache.find
        for key, change in counted.queued.items():
            held = find(key)
            if held is not None:
                total += 1
                expiring += held.deadline is not None
            elif change is not None:
                total += 1
                expiring += change  # whether it has a deadline
        return total, expiring

    def scan(self, cursor: int, count: int, kind: int | None = None) -> tuple[list[bytes], int]:
        """One SCAN step in stable hash order: every key present for the whole
        iteration is returned exactly once, however LRU order changes. With
        ``kind``, only keys of that type (values.STRING, HASH, SET).

        ``cursor`` and ``count`` are what the client sent (any unsigned 64-bit
        cursor, any positive 64-bit count): a cursor past the last hash ends
        the scan, and a count beyond the hash space asks for no more than it
        (the store binds both as 64-bit SQL integers)."""
        if cursor >= HASH_SPACE:
            return [], 0
        count = min(count, HASH_SPACE)
        if self.store is None:
            now = self.cache.clock()
            candidates = sorted(
                (h, key)
                for key, entry in self.cache.items()
                if (h := scan_hash(key)) >= cursor
                and (entry.deadline is None or entry.deadline > now)
                and (kind is None or values.kind_of(entry.value) == kind)
            )
            return take_hash_groups(candidates, count)
        part = self.store.scan_rows(cursor, count)
        keys = self._listed(part, cursor, None, kind)
        return keys, 0 if part.upper >= HASH_SPACE else part.upper

    def random_key(self) -> bytes | None:
        """A live key picked at random (RANDOMKEY), or ``None`` if there is none.
        From memory alone, a uniform pick; with a store, the first key at or
        after a random point of SCAN order (each key's chance is the share of
        the hash space before it: close to uniform, and one step of SCAN)."""
        if self.store is None:
            keys = list(self.cache.keys())
            now = self.cache.clock()
            peek = self.cache.find
            for _ in range(min(len(keys), 100)):
                key = random.choice(keys)
                entry = peek(key)
                if entry is not None and (entry.deadline is None or entry.deadline > now):
                    return key
            live = [key for key, _ in self.cache.items()]
            return random.choice(live) if live else None
        start = random.randrange(HASH_SPACE)
        cursor = start
        wrapped = False
        while True:
            keys, cursor = self.scan(cursor, 16)
            if keys:
                return keys[0]
            if cursor == 0:
                if wrapped:
                    return None
                wrapped = True
            elif wrapped and cursor > start:
                return None

    def keys(self, pattern: re.Pattern[bytes] | None) -> list[bytes]:
        """Every live key matching ``pattern``, read in place."""
        if self.store is None:
            keys = [key for key, _ in self.cache.items()]
            return keys if pattern is None else [k for k in keys if pattern.match(k)]
        return self._listed(self.store.scan_rows(0, None), 0, pattern, None)

    def _listed(
        self,
        part: TableSlice,
        cursor: int,
        pattern: re.Pattern[bytes] | None,
        kind: int | None,
    ) -> list[bytes]:
        """The live keys of a table slice (of one ``kind`` if given), merged
        with its queued changes and memory (memory's copy of a key is the
        newest), in SCAN order."""
        now = self.cache.clock()
        find = self.cache.find
        keys: dict[bytes, int] = {}  # key -> scan hash
        for h, key, deadline, row_kind in part.rows:
            held = find(key)
            if held is not None:
                if (held.deadline is None or held.deadline > now) and (
                    kind is None or values.kind_of(held.value) == kind
                ):
                    keys[key] = h
            elif (deadline is None or deadline > now) and (kind is None or row_kind == kind):
                keys[key] = h
        upper = part.upper
        for key, change in part.queued.items():
            h = scan_hash(key)
            if not cursor <= h < upper:
                continue
            held = find(key)
            live = False
            if held is not None:
                live = (held.deadline is None or held.deadline > now) and (
                    kind is None or values.kind_of(held.value) == kind
                )
            elif change is not None:
                live = live_fields(change, now) and (kind is None or change[KIND] == kind)
            if live:
                keys[key] = h
            else:
                keys.pop(key, None)
        ordered = sorted(keys, key=keys.__getitem__)
        return ordered if pattern is None else [k for k in ordered if pattern.match(k)]

    # ---------------------------------------------------- background duties

    def expire_store(self, limit: int) -> int:
        """Delete stored sessions past their deadline, except those that memory
        has renewed (their renewed copy is written instead: the lazy write of
        read renewals). Returns how many were deleted."""
        store = self.store
        if store is None:
            return 0
        cache = self.cache
        now = cache.clock()
        deleted = 0
        due = store.due(now, limit)
        for key in due:
            held = cache.find(key)
            if held is None:
                self.expired_in_store(key)
                deleted += 1
            elif held.deadline is None or held.deadline > now:
                store.record(key, _row(held))
                self.dirty = True
            # else expired in memory too: the cache's sweep deletes it
        if self.whole_after_sweep >= 0 and len(due) < limit:
            # No expired row is left that memory lacks: rows that expire from
            # now on are of sessions memory holds, whose own expiry deletes them.
            if self.whole_after_sweep == self.evictions and not self.closing:
                self.whole = True
            self.whole_after_sweep = -1
        return deleted

    def expired_in_store(self, key: bytes) -> None:
        """``key``'s stored copy, which memory does not hold, is past its
        deadline: the session expires now, as memory's copy would (deleted,
        counted, WATCH touched, ``expired`` told), whether the sweep or a
        command found it. The sweep touching WATCH changes no EXEC's outcome
        (EXEC also checks that each key present at WATCH still is), but keeps
        one account of an expiry."""
        self.expire(key)
        self.cache.expirations += 1
        if self.watching:
            self.modified(key, True)
        if self.notifying:
            self.notify(NOTIFY_EXPIRED, b"expired", key)

    def warm(self, limit: int, step: int = WARM_STEP) -> Callable[[], Awaitable[int]]:
        """The warm start, run while clients are served: load up to ``limit``
        of the most recently used stored sessions into memory (a restart is
        not an access: their deadlines and LRU order stay). What it returns
        starts the load (once serving): it reads them off the event loop,
        then admits ``step`` at a time, yielding to clients between steps,
        and gives how many it loaded. A function, not a coroutine made now:
        a stop before it starts leaves no coroutine never awaited.

        From this call on (before serving starts) every key a command writes,
        deletes or expires is remembered, and the warm start leaves it alone:
        its stored row, read before, may be older than what the client did.
        A key read through is in memory already, which the warm start never
        replaces. Warm rows go in as the least recently used (nothing a
        client touched is older) and only while there is room: the warm
        start evicts nothing. FLUSHDB ends it."""
        changed: set[bytes] = set()
        self._changed = changed
        self.warmed = 0
        evicted = self.evictions
        return lambda: self._warm(limit, step, changed, evicted)

    async def _warm(self, limit: int, step: int, changed: set[bytes], evicted: int) -> int:
        try:
            store = self.store
            if store is None:
                return 0
            rows = await store.recent_rows(limit)
            cache = self.cache
            room = True
            for start in range(0, len(rows), step):
                if self._changed is not changed:
                    break  # flushed: every stored row is gone
                held = len(cache)
                # Most recent first, each in front of the one before it.
                for key, row in rows[start : start + step]:
                    if key not in changed and not cache.admit_oldest(key, _entry(row)):
                        room = False
                        break
                self.warmed += len(cache) - held
                if not room:
                    break
                await asyncio.sleep(0)
            # Fewer rows than asked for: every live stored session, and each
            # is in memory now, or a client changed it meanwhile (then memory
            # has its newer state, or it is deleted in both), unless memory
            # evicted something since the warm start began. The expired rows
            # are left for the sweep (expire_store).
            if (
                room
                and len(rows) < limit
                and self._changed is changed
                and self.evictions == evicted
                and not self.closing
            ):
                self.whole_after_sweep = evicted
            return self.warmed
        finally:
            if self._changed is changed:
                self._changed = None

    @property
    def warming(self) -> bool:
        """Whether the warm start is still loading (FLUSHDB or its end stops it)."""
        return self._changed is not None

    def flushed(self) -> None:
        """Every session was deleted (FLUSHDB): a warm start still loading
        stops, and memory holds the whole (empty) store, unless other hosts
        write to it too (a shared store)."""
        self._changed = None
        self.whole = not self.own_outcomes
        self.whole_after_sweep = -1

    def close(self) -> None:
        """Write back what memory knows that the store may not (TTL renewals
        and access times of reads), then close the store.

        Only sessions read since their last write, as an eviction does
        (:func:`_read_since_written`): the store holds every other one as
        memory does. The next warm start finds them in the table, off the
        event loop while serving."""
        # Closing the store cuts a warm start's scan short: the rows it then
        # gets are not every stored session.
        self.closing = True
        store = self.store
        if store is None:
            return
        for key, entry in self.cache.items():
            if _read_since_written(entry):
                store.record(key, _row(entry))
        store.close()

    def memory_stats(self) -> CacheStats:
        return self.cache.stats()


class _Moment:
    """A clock that stands at one moment (:meth:`Context.hold_time`)."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


class Context:
    """The keyspace as one command sees it, for as long as it runs.

    Reads go to memory first, then to what the store returned for this
    command (:class:`Prepared`); writes go to memory, which writes through.
    ``lookup`` is an access (renews LRU order and a sliding TTL, admits a
    stored session to memory); ``peek`` only inspects.

    While a script runs (:meth:`enter_script` to :meth:`leave_script`) the
    context also reads a key the script did not declare from the store, at
    once (a blocking point read), and keeps an undo log: each key's entry as
    it was before the script's first change to it, so that a script stopped
    by its time limit leaves the keyspace as it found it. Outside scripts
    neither costs more than one attribute test per write."""

    __slots__ = ("ahead", "cache", "keyspace", "loaded", "owner", "prepared", "undo")

    def __init__(self, keyspace: Keyspace, prepared: Prepared | None, owner: object = None) -> None:
        self.keyspace = keyspace
        self.cache = keyspace.cache
        self.prepared = prepared
        # Whom the command runs for (a client's connection): the replies
        # :meth:`Keyspace.after_commit` releases for that owner wait for the
        # commits of its commands.
        self.owner = owner
        # The undo log while a script runs (key -> its entry before the
        # script changed it, None if there was none); None otherwise.
        self.undo: dict[bytes, Entry[Value] | None] | None = None
        if prepared is None:
            self.loaded: dict[bytes, Entry[Value] | None] | None = None
            self.ahead: object = None
        else:
            self.loaded = prepared.loaded
            self.ahead = prepared.ahead

    def seen(self, key: bytes, entry: Entry[Value] | None) -> None:
        """The command changed ``key`` (or memory evicted it): reads see that."""
        loaded = self.loaded
        if loaded is None:
            self.loaded = {key: entry}
        else:
            loaded[key] = entry

    def now(self) -> float:
        """The keyspace's clock (unix seconds): deadlines are read against it."""
        return self.cache.clock()

    def hold_time(self) -> bool:
        """Stop the keyspace's clock at this moment, until :meth:`release_time`:
        the commands of a transaction or a script read every deadline against
        the moment it began, as Redis' do (its cached command time), so that a
        key alive when it starts does not expire in its middle. ``False`` if
        the time is held already (a script inside EXEC): the outer hold stands,
        and only the caller that got ``True`` releases it."""
        keyspace = self.keyspace
        if keyspace.held_clock is not None:
            return False
        clock = self.cache.clock
        keyspace.held_clock = clock
        self.cache.clock = _Moment(clock())
        return True

    def release_time(self) -> None:
        keyspace = self.keyspace
        clock = keyspace.held_clock
        if clock is not None:
            keyspace.held_clock = None
            self.cache.clock = clock

    def hold_commits(self) -> None:
        """A transaction or a script starts: its changes go to the store's
        disk whole or not at all, until :meth:`release_commits` (calls nest:
        a script inside EXEC)."""
        store = self.keyspace.store
        if store is not None:
            store.hold_commits()

    def release_commits(self) -> None:
        store = self.keyspace.store
        if store is not None:
            store.release_commits()

    # ------------------------------------------------------------ scripts

    def enter_script(self) -> None:
        """A script starts running in this context: read undeclared keys
        through at once, and keep the undo log."""
        self.undo = {}

    def leave_script(self, *, roll_back: bool) -> None:
        """The script ended; with ``roll_back``, put every key it changed back
        as it was before (in memory and in the store)."""
        undo = self.undo
        self.undo = None
        if not roll_back or not undo:
            return
        cache = self.cache
        keyspace = self.keyspace
        for key, prior in undo.items():
            cache.remove(key)
            if prior is not None:
                # As it was, not as an access: its deadline and LRU time stay.
                restored = cache.admit(key, prior, touch=False)
                if restored is not None and keyspace.store is not None:
                    keyspace.save(key, restored)

    def _read_now(self, key: bytes) -> None:
        """In a script: what the store holds for a key memory does not know
        and this command has not read, read now (a blocking point read)."""
        if self.keyspace.store is None or self.cache.find(key) is not None:
            return
        loaded = self.loaded
        if loaded is not None and key in loaded:
            return
        try:
            entry = self.keyspace.load_now(key)
        except StoreError as exc:
            raise Error(f"ERR {exc}") from None
        self.seen(key, entry)

    def _remember(self, key: bytes, undo: dict[bytes, Entry[Value] | None]) -> None:
        """Log ``key``'s entry before the running script's first change to it."""
        if key in undo:
            return
        entry = self.cache.peek(key)
        if entry is None and self.cache.find(key) is None:
            # Memory knows nothing of it: the store's copy is the one to restore.
            self._read_now(key)
            loaded = self.loaded
            entry = None if loaded is None else loaded.get(key)
            if entry is not None and entry.deadline is not None and entry.deadline <= self.now():
                entry = None
        undo[key] = None if entry is None else _copy(entry)

    # ------------------------------------------------------------- reads

    def _expired_in_store(self, key: bytes) -> None:
        """If the store's copy of ``key`` read for this command is past its
        deadline and memory holds none, the session expires now, as memory's
        copy would on this access (and as Redis' key does when a command
        finds it): deleted, counted, ``expired`` told. Else the sweep would
        tell it later, or never, once this command had written the key anew."""
        loaded = self.loaded
        if not loaded or not self.keyspace.expires_on_access:
            return
        stored = loaded.get(key)
        if stored is None or stored.deadline is None or stored.deadline > self.now():
            return
        if self.cache.find(key) is not None:
            return
        loaded[key] = None
        self.keyspace.expired_in_store(key)

    def lookup(self, key: bytes) -> Entry[Value] | None:
        """An access: the live entry or ``None``. A session read from the
        store for this command is admitted to memory here (read-through)."""
        entry = self.cache.get_entry(key)
        if entry is None and self.undo is not None:
            self._read_now(key)
        if entry is None and self.loaded:
            self._expired_in_store(key)
            stored = self.loaded.pop(key, None)
            if stored is not None:
                entry = self.cache.admit(key, stored)
                if entry is None and (
                    stored.deadline is None or stored.deadline > self.cache.clock()
                ):
                    # Live, but larger than cache.max_memory: admitting it evicted
                    # it again (back to the store). Serve this read from that copy.
                    entry = stored
                if entry is not None:
                    self.keyspace.store_hits += 1
        return entry

    def peek(self, key: bytes) -> Entry[Value] | None:
        """An inspection: the live entry in memory or, failing that, the
        store's copy read for this command; touches nothing."""
        entry = self.cache.peek(key)
        if entry is None and self.undo is not None:
            self._read_now(key)
        if entry is None and self.loaded:
            self._expired_in_store(key)
            entry = self.loaded.get(key)
            if entry is not None and entry.deadline is not None and entry.deadline <= self.now():
                return None
        return entry

    def in_memory(self, key: bytes) -> bool:
        """Whether memory holds ``key`` live (not only the store)."""
        return self.cache.peek(key) is not None

    def recent(self, context_id: str | None, count: int | None) -> list[bytes]:
        """Live keys in memory, most recently used first."""
        return self.cache.list(context_id=context_id, count=count)

    # ------------------------------------------------------------ writes

    def check_size(self, data: bytes, what: str = "value") -> None:
        """Refuse a key or value over ``limits.max_value_size`` (the bound of
        both), or one larger than the whole memory bound (it would be evicted
        as soon as written, an acknowledged write that no GET could see).
        ``what`` it is names it in the error: ``key``, ``value``, ``field``..."""
        size = len(data)
        max_memory = self.cache.max_memory
        if size > self.keyspace.max_value_size or (max_memory and size > max_memory):
            self.check_length(size, what)  # says which bound

    def check_length(self, size: int, what: str = "value") -> None:
        """:meth:`check_size` for a value of ``size`` bytes not built yet
        (SETRANGE, APPEND: refused before it is)."""
        if size > self.keyspace.max_value_size:
            raise Error(
                f"ERR {what} of {size} bytes exceeds limits.max_value_size "
                f"({self.keyspace.max_value_size} bytes)"
            )
        max_memory = self.cache.max_memory
        if max_memory and size > max_memory:
            raise Error(f"ERR {what} of {size} bytes exceeds cache.max_memory ({max_memory} bytes)")

    def set(
        self,
        key: bytes,
        value: Value,
        ttl: Any = DEFAULT,
        *,
        deadline: float | None = None,
        keep_ttl: bool = False,
        context_id: str | None = None,
    ) -> Entry[Value]:
        """Write ``key`` (``SessionCache.insert``'s TTL rules)."""
        if self.loaded:
            self._expired_in_store(key)
        if self.keyspace.watching:
            self.keyspace.modified(key)
        if self.undo is not None:
            self._remember(key, self.undo)
        if self.keyspace.notifying_new and self.peek(key) is None:
            entry = self.cache.insert(
                key, value, ttl, deadline=deadline, keep_ttl=keep_ttl, context_id=context_id
            )
            self.keyspace.notify(NOTIFY_NEW, b"new", key)
            return entry
        return self.cache.insert(
            key, value, ttl, deadline=deadline, keep_ttl=keep_ttl, context_id=context_id
        )

    def set_expired(self, key: bytes) -> None:
        """A write whose absolute deadline is already past (``SET … PXAT`` in
        the past): the key is gone at once, counted as an expiry, as
        ``SessionCache.insert`` does with such a write; the command tells its
        events in Redis' order (``set``, ``expire``, then ``expired``)."""
        self.remove(key)
        self.cache.expirations += 1

    def update(self, key: bytes, fn: Callable[[Value], Value]) -> Entry[Value] | None:
        """Replace the value of a live key, keeping its TTL and metadata."""
        if self.keyspace.watching:
            self.keyspace.modified(key)
        if self.undo is not None:
            self._remember(key, self.undo)
        return self.cache.update(key, fn)

    def remove(self, key: bytes) -> Value | None:
        """Delete ``key`` everywhere; its value if it was live in memory."""
        if self.loaded:
            self._expired_in_store(key)
        if self.keyspace.watching:
            self.keyspace.modified(key)
        if self.undo is not None:
            self._remember(key, self.undo)
        return self.cache.remove(key)

    def set_ttl(self, key: bytes, ttl: float | None) -> bool:
        if self.keyspace.watching:
            self.keyspace.modified(key)
        if self.undo is not None:
            self._remember(key, self.undo)
        return self.cache.set_ttl(key, ttl)

    def set_deadline(self, key: bytes, deadline: float | None) -> bool:
        if self.keyspace.watching:
            self.keyspace.modified(key)
        if self.undo is not None:
            self._remember(key, self.undo)
        return self.cache.set_deadline(key, deadline)

    def persist(self, key: bytes) -> bool:
        entry = self.cache.peek(key)
        if entry is None or entry.deadline is None:
            return False  # nothing to remove: not a change (WATCH)
        if self.keyspace.watching:
            self.keyspace.modified(key)
        if self.undo is not None:
            self._remember(key, self.undo)
        return self.cache.persist(key)

    def notify(self, cls: int, event: bytes, key: bytes) -> None:
        """Send keyspace event ``event`` (of class ``cls``, keyevents.NOTIFY_*)
        about ``key``; a handler calls it after a change, once it has tested
        ``self.keyspace.notifying`` (docs/commands.md)."""
        self.keyspace.notify(cls, event, key)

    def invalidate(self, key: bytes) -> bool:
        """Drop ``key`` from memory only; the store keeps it (not a change:
        its value and life are as they were)."""
        return self.cache.invalidate(key)

    def flush(self) -> None:
        """Delete every session, in memory and in the store. Never inside a
        script: no undo log could restore the store (FLUSHDB and FLUSHALL
        are refused there)."""
        assert self.undo is None, "a script cannot flush: it could not be rolled back"
        if self.keyspace.watching:
            self.keyspace.modified(None)
        self.cache.clear()
        self.keyspace.flushed()
        store = self.keyspace.store
        if store is not None:
            store.clear()
            self.keyspace.dirty = True
        self.loaded = None  # nothing is left to read back

    # ----------------------------------------------------- whole keyspace

    def counts(self) -> tuple[int, int]:
        ahead = self.ahead
        return self.keyspace.counts(ahead if isinstance(ahead, TableCounts) else None)

    def scan(self, cursor: int, count: int, kind: int | None = None) -> tuple[list[bytes], int]:
        ahead = self.ahead
        if isinstance(ahead, tuple):
            return ahead  # read off the event loop (scan_ahead)
        return self.keyspace.scan(cursor, count, kind)

    def keys(self, pattern: re.Pattern[bytes] | None) -> list[bytes]:
        ahead = self.ahead
        if isinstance(ahead, list):
            return ahead  # listed and matched off the event loop
        return self.keyspace.keys(pattern)


# The row a change writes and the entry a row reads back as, for the near
# cache of a shared store (sessiond.shared), which writes them the same way.
row_of = _row
entry_of = _entry
