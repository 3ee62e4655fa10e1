"""The session cache core: exact LRU, sliding TTL, active expiry, removal causes.

Pure Python with no I/O and no asyncio; time comes from an injected clock so the
library can be driven deterministically (``SessionCache(clock=fake_clock)``).

Design:

* Entries live in one ``OrderedDict`` in LRU order (least recently used first):
  get/set/move/evict are O(1) and done in C.
* Expiry deadlines sit in a binary heap of ``(deadline, seq, key)`` records. A
  sliding renewal only moves an entry's deadline *later*, so it does not touch the
  heap: when the old record surfaces in :meth:`SessionCache.sweep`, the entry is
  re-filed under its current deadline. A record is pushed only when an entry gets a
  deadline *earlier* than the one it is filed under. Stale records (of removed or
  re-filed entries) are dropped when they surface, and the heap is rebuilt once it
  holds more than ``2 * len(cache) + 64`` records, so the index stays proportional
  to the cache (the seed's TTL index grew without bound).
* Every removal goes through one place that counts it, tells the persistence hook
  and calls the removal listener with the entry and its :class:`Cause`.
"""

from __future__ import annotations

import builtins
import heapq
import itertools
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Generic, Protocol, TypeVar

__all__ = [
    "DEFAULT",
    "CacheStats",
    "Cause",
    "Entry",
    "EvictionReason",
    "NoPersistence",
    "PersistenceHook",
    "SessionCache",
]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
K_contra = TypeVar("K_contra", bound=Hashable, contravariant=True)


class Cause(StrEnum):
    """Why an entry left memory."""

    EXPIRED = "expired"
    EVICTED = "evicted"
    DELETED = "deleted"
    REPLACED = "replaced"


class EvictionReason(StrEnum):
    """Which bound made the cache evict."""

    MAX_SESSIONS = "max_sessions"
    MAX_MEMORY = "max_memory"
    INVALIDATED = "invalidated"


class _Default:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Final = _Default()
"""Sentinel for "use the cache's default TTL"."""


_TIDY_STEP = 16  # expiry index records moved per write while it is tidied
_SETTLE_STEP = 4  # records at the top of the expiry index looked at per eviction

_Record = tuple[Any, ...]
"""An expiry-heap record ``(deadline, seq, key)``: a float, an int and the key.
``seq`` is unique: a record is an entry's current one if the entry is filed
(``Entry._filed`` is a deadline) under that seq (``Entry._seq``).

Typed as a tuple of any length, not ``tuple[float, int, K]``, for mypyc: it
keeps a fixed-length tuple unboxed in a C struct, and every time one went back
into a list or an attribute it made a new tuple object. Each record moved by
:meth:`SessionCache._tidy` was a new object, and :meth:`SessionCache._file` made
two: 4.85 new tracked objects per write into a full cache where the
interpreter makes 2, which the cyclic collector's young generation had to walk
(100-150k young objects, 40-70 ms collections under sustained writes; issue
18). A variable-length tuple stays the one object it was made as, and a new
record goes into a variable annotated ``_Record`` first (unannotated, it would
be the fixed-length tuple again, boxed once per place it is stored):
tests/test_cache.py counts the objects a write leaves."""


_NEVER: Final = math.inf
"""``Entry._deadline`` of an entry that never expires."""


class Entry(Generic[V]):
    """One session: its value plus the metadata the seed's ``SessionData`` had.

    ``ttl`` is the relative lifetime that slides (``None`` when the entry has an
    absolute deadline or none at all); ``deadline`` is the absolute expiry time
    (``None`` = never expires).

    Both are kept as plain floats, ``_ttl`` (0.0 for none) and ``_deadline``
    (infinity for never), which the cache reads directly; ``ttl`` and
    ``deadline`` are the same values with ``None``. The compiled build stores a
    ``float`` attribute as a C double inside the entry, and a ``float | None``
    one as a separate float object: a sliding read, which reads both and writes
    the deadline, touched two more objects scattered over the heap, two more
    cache misses per GET at 100,000 sessions (``bench/instructions.py
    --cache-sim``), and allocated a float.
    """

    __slots__ = (
        "_deadline",
        "_filed",
        "_seq",
        "_ttl",
        "accessed_at",
        "context_id",
        "created_at",
        "size",
        "updated_at",
        "value",
    )

    def __init__(
        self,
        value: V,
        *,
        context_id: str | None = None,
        created_at: float,
        updated_at: float | None = None,
        accessed_at: float | None = None,
        ttl: float | None = None,
        deadline: float | None = None,
        size: int = 0,
    ) -> None:
        # The compiled build lays the attributes out in the order they are
        # first assigned here: what a read touches first (the value, the
        # deadline, the TTL and the access time, which then share a cache
        # line with the reference count more often), then what a write adds,
        # then the rest. An entry starts at any multiple of 16 bytes, so each
        # line it spans that an access touches is a cache miss when the entry
        # was not used lately (bench/instructions.py --cache-sim).
        self.value = value
        self._deadline: float = _NEVER if deadline is None else deadline
        self._ttl: float = ttl or 0.0
        updated = created_at if updated_at is None else updated_at
        self.accessed_at = updated if accessed_at is None else accessed_at
        self.updated_at = updated
        self.size = size
        # The expiry record it is filed under: that record's deadline
        # (_NEVER: not filed) and seq. Kept here, not as a reference to the
        # record, so that a write tells whether to file again without
        # reading the record and its float (two more cache misses per SET).
        self._filed: float = _NEVER
        self._seq = 0
        self.context_id = context_id
        self.created_at = created_at

    @property
    def ttl(self) -> float | None:
        return self._ttl or None

    @ttl.setter
    def ttl(self, ttl: float | None) -> None:
        self._ttl = ttl or 0.0

    @property
    def deadline(self) -> float | None:
        deadline = self._deadline
        return None if deadline == _NEVER else deadline

    @deadline.setter
    def deadline(self, deadline: float | None) -> None:
        self._deadline = _NEVER if deadline is None else deadline

    def remaining(self, now: float) -> float | None:
        """Seconds left before expiry, ``None`` if it never expires."""
        deadline = self._deadline
        return None if deadline == _NEVER else deadline - now

    def __repr__(self) -> str:
        return (
            f"Entry(value={self.value!r}, context_id={self.context_id!r}, "
            f"ttl={self.ttl!r}, deadline={self.deadline!r})"
        )


class PersistenceHook(Protocol[K_contra, V]):
    """What the cache asks of a persistence backend (docs/persistence.md).

    ``save`` after every write, ``delete`` when a write deletes an entry,
    ``expire`` when memory finds an entry past its deadline and drops it (a
    store of its own deletes it too; a store shared with other hosts may not:
    one of them may have renewed it), ``on_evict`` when an entry leaves memory
    but must survive (evicted or invalidated, so the store can make sure it
    holds the latest value), ``load`` on a miss (read-through).
    """

    def load(self, key: K_contra) -> Entry[V] | None: ...

    def save(self, key: K_contra, entry: Entry[V]) -> None: ...

    def delete(self, key: K_contra) -> None: ...

    def expire(self, key: K_contra) -> None: ...

    def on_evict(self, key: K_contra, entry: Entry[V], cause: Cause) -> None: ...


class NoPersistence(Generic[K, V]):
    """The default hook: memory only."""

    def load(self, key: K) -> Entry[V] | None:
        return None

    def save(self, key: K, entry: Entry[V]) -> None:
        return None

    def delete(self, key: K) -> None:
        return None

    def expire(self, key: K) -> None:
        return None

    def on_evict(self, key: K, entry: Entry[V], cause: Cause) -> None:
        return None


RemovalListener = Callable[[K, Entry[V], Cause, EvictionReason | None], None]
Sizer = Callable[[K, V], int]


def _filed_entry(data: OrderedDict[Any, Entry[V]], record: _Record) -> Entry[V] | None:
    """The entry ``record`` is the current expiry record of, or ``None`` if
    the record is stale (its entry left memory, or was filed anew or not at all)."""
    entry = data.get(record[2])
    if entry is None or entry._filed == _NEVER or entry._seq != record[1]:
        return None
    return entry


def _copy_entry(entry: Entry[V]) -> Entry[V]:
    return Entry(
        entry.value,
        context_id=entry.context_id,
        created_at=entry.created_at,
        updated_at=entry.updated_at,
        accessed_at=entry.accessed_at,
        ttl=entry.ttl,
        deadline=entry.deadline,
        size=entry.size,
    )


def _size(item: object) -> int:
    """Bytes of a str/bytes item, or of a container's items (a hash's fields
    and values, a set's members); other types count as zero."""
    if isinstance(item, (bytes, str, bytearray)):
        return len(item)
    if isinstance(item, dict):
        return sum([_size(k) + _size(v) for k, v in item.items()])
    if isinstance(item, set | frozenset | list | tuple):
        return sum([_size(member) for member in item])
    return 0


def _len_sizer(key: object, value: object) -> int:
    """Bytes of key and value (a container counts its items)."""
    return _size(key) + _size(value)


@dataclass(frozen=True, slots=True)
class CacheStats:
    sessions: int
    memory_bytes: int
    max_sessions: int
    max_memory: int
    hits: int
    misses: int
    evictions_max_sessions: int
    evictions_max_memory: int
    expirations: int
    loads_found: int
    loads_absent: int
    loads_error: int

    @property
    def evictions(self) -> int:
        return self.evictions_max_sessions + self.evictions_max_memory


class SessionCache(Generic[K, V]):
    """Exact-LRU session cache with sliding TTL and a pluggable persistence hook.

    ``max_sessions`` bounds the number of entries, ``max_memory`` (0 = none) the
    bytes of keys and values as measured by ``sizer``. ``default_ttl`` applies to
    writes that give no TTL (``None`` or 0 = never expire). With ``sliding`` every
    read or write renews an entry's relative TTL; absolute deadlines never slide.
    """

    def __init__(
        self,
        max_sessions: int = 10_000,
        *,
        max_memory: int = 0,
        default_ttl: float | None = 3600.0,
        sliding: bool = True,
        clock: Callable[[], float] = time.time,
        persistence: PersistenceHook[K, V] | None = None,
        listener: RemovalListener[K, V] | None = None,
        sizer: Sizer[K, V] = _len_sizer,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be a positive integer, got {max_sessions}")
        if max_memory < 0:
            raise ValueError(f"max_memory must be >= 0, got {max_memory}")
        self._data: OrderedDict[K, Entry[V]] = OrderedDict()
        self._heap: list[_Record] = []
        # The expiry index being tidied (a heap too): records not yet moved to
        # _heap, stale ones dropped on the way (:meth:`_tidy`).
        self._old: list[_Record] = []
        self._seq = itertools.count()
        self.max_sessions = max_sessions
        self.max_memory = max_memory
        self.default_ttl = default_ttl or None
        self.sliding = sliding
        self.clock = clock
        self._persistence: PersistenceHook[K, V] = NoPersistence()
        self._persisting = False  # whether the hook is not NoPersistence (a write skips it)
        if persistence is not None:
            self.persistence = persistence
        self.listener = listener
        self.sizer = sizer
        self.memory = 0
        self.expiring = 0  # entries with a deadline (INFO keyspace's expires=)
        # Plain integer counters: metrics read them at scrape time.
        self.hits = 0
        self.misses = 0
        self.evictions_max_sessions = 0
        self.evictions_max_memory = 0
        self.expirations = 0
        self.loads_found = 0
        self.loads_absent = 0
        self.loads_error = 0

    @property
    def persistence(self) -> PersistenceHook[K, V]:
        """The persistence hook (may be replaced, e.g. when a store is attached)."""
        return self._persistence

    @persistence.setter
    def persistence(self, hook: PersistenceHook[K, V]) -> None:
        self._persistence = hook
        self._persisting = not isinstance(hook, NoPersistence)

    # ------------------------------------------------------------------ reads

    def get_entry(self, key: K) -> Entry[V] | None:
        """Look up ``key`` as an access: counts a hit or miss, renews LRU and TTL."""
        entry = self._data.get(key)
        if entry is None:
            self.misses += 1
            return None
        now = self.clock()
        if entry._deadline <= now:
            self._remove(key, entry, Cause.EXPIRED, None)
            self.misses += 1
            return None
        self.hits += 1
        self._data.move_to_end(key)
        entry.accessed_at = now
        ttl = entry._ttl
        if ttl and self.sliding:
            entry._deadline = now + ttl
        return entry

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value of ``key`` (touching it), or ``default``."""
        entry = self.get_entry(key)
        return default if entry is None else entry.value

    def get_or_load(self, key: K) -> V | None:
        """Like :meth:`get`, but on a miss read through the persistence hook."""
        entry = self.get_entry(key)
        if entry is not None:
            return entry.value
        try:
            loaded = self.persistence.load(key)
        except Exception:
            self.loads_error += 1
            raise
        if loaded is None:
            self.loads_absent += 1
            return None
        self.loads_found += 1
        admitted = self.admit(key, loaded)
        return None if admitted is None else admitted.value

    def peek(self, key: K) -> Entry[V] | None:
        """The live entry for ``key`` without touching LRU order, TTL or counters."""
        entry = self._data.get(key)
        if entry is None or entry._deadline <= self.clock():
            return None
        return entry

    def find(self, key: K) -> Entry[V] | None:
        """The entry memory holds for ``key``, live or past its deadline but
        not yet swept; touches nothing. ``None`` means memory knows nothing of
        the key (the store may: read-through asks it then)."""
        return self._data.get(key)

    def contains(self, key: K) -> bool:
        return self.peek(key) is not None

    def __contains__(self, key: K) -> bool:
        return self.peek(key) is not None

    def ttl(self, key: K) -> float | None:
        """Remaining seconds of ``key`` (``None`` if it never expires).

        Raises ``KeyError`` if the key is not in memory.
        """
        entry = self.peek(key)
        if entry is None:
            raise KeyError(key)
        return entry.remaining(self.clock())

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> Iterator[K]:
        """Keys in LRU order, least recently used first (expired ones included
        until swept; use :meth:`items` for live entries only)."""
        return iter(self._data)

    def items(self) -> Iterator[tuple[K, Entry[V]]]:
        """Live ``(key, entry)`` pairs, least recently used first, no side effects."""
        now = self.clock()
        for key, entry in list(self._data.items()):
            if entry._deadline > now:
                yield key, entry

    def sample_deadlines(self, count: int) -> list[float]:
        """Deadlines of up to ``count`` entries picked at random among those
        that have one (INFO keyspace's avg_ttl): probes the expiry heap at
        random positions and keeps the records that are their entry's
        current one, so each entry is as likely as any other. O(count)."""
        heap, old = self._heap, self._old
        size = len(heap) + len(old)
        if not size:
            return []
        data = self._data
        found: list[float] = []
        for _ in range(4 * count):
            n = random.randrange(size)
            record = heap[n] if n < len(heap) else old[n - len(heap)]
            entry = _filed_entry(data, record)
            if entry is None:
                continue  # a stale record
            if entry._deadline != _NEVER:
                found.append(entry._deadline)
                if len(found) >= count:
                    break
        return found

    def list(self, context_id: str | None = None, count: int | None = None) -> list[K]:
        """Live keys, most recently used first, optionally of one context."""
        now = self.clock()
        out: list[K] = []
        if count is not None and count <= 0:
            return out
        for key in reversed(self._data):
            entry = self._data[key]
            if entry._deadline <= now:
                continue
            if context_id is not None and entry.context_id != context_id:
                continue
            out.append(key)
            if count is not None and len(out) >= count:
                break
        return out

    # ----------------------------------------------------------------- writes

    def insert(
        self,
        key: K,
        value: V,
        ttl: float | _Default | None = DEFAULT,
        *,
        deadline: float | None = None,
        context_id: str | None = None,
        keep_ttl: bool = False,
    ) -> Entry[V]:
        """Write ``key``; returns its new entry.

        ``ttl`` seconds (relative, slides when sliding is on), ``DEFAULT`` for the
        cache's default, ``None``/0 for no expiry; ``deadline`` an absolute expiry
        time that never slides (takes precedence over ``ttl``); ``keep_ttl`` keeps
        the TTL of the entry being replaced (Redis ``KEEPTTL``). A write whose
        deadline is already past replaces the old value and expires at once: it
        takes no slot and is not saved.
        """
        now = self.clock()
        data = self._data
        old = data.get(key)
        if old is not None and old._deadline <= now:
            self._remove(key, old, Cause.EXPIRED, None)
            old = None
        rel: float  # as Entry._ttl: 0.0 for none
        new_deadline: float  # as Entry._deadline: _NEVER for none
        if keep_ttl and old is not None:
            # Redis KEEPTTL: the relative TTL is kept (and, being a write, renews
            # when sliding); otherwise the deadline itself is kept.
            rel = old._ttl
            new_deadline = now + rel if rel and self.sliding else old._deadline
        elif deadline is not None:
            rel, new_deadline = 0.0, deadline
        else:
            rel = (self.default_ttl if ttl is DEFAULT else ttl) or 0.0  # type: ignore[assignment]
            new_deadline = now + rel if rel else _NEVER
        sizer = self.sizer
        if sizer is _len_sizer and isinstance(key, bytes) and isinstance(value, bytes):
            size = len(key) + len(value)  # inlined: saves two calls per write
        else:
            size = sizer(key, value)
        if old is not None and new_deadline > now:
            # Overwrite in place: no new object per write. A listener is told
            # of a copy of the replaced entry. The store may hold this entry in
            # its queue; it then writes the new state, as it should.
            if self.listener is not None:
                self.listener(key, _copy_entry(old), Cause.REPLACED, None)
            old.value = value
            old.updated_at = old.accessed_at = now
            old._ttl = rel
            self.expiring += (new_deadline != _NEVER) - (old._deadline != _NEVER)
            old._deadline = new_deadline
            if context_id is not None:
                old.context_id = context_id
            self.memory += size - old.size
            old.size = size
            data.move_to_end(key)
            if new_deadline < old._filed:  # also when not filed (_NEVER)
                self._file(key, old)
            if self._persisting:
                self._persistence.save(key, old)
            if len(data) > self.max_sessions or (self.max_memory and self.memory > self.max_memory):
                self._enforce_bounds()
            return old
        if old is None:
            created_at = now
        else:
            created_at = old.created_at
            if context_id is None:
                context_id = old.context_id
        entry = Entry(
            value,
            context_id=context_id,
            created_at=created_at,
            updated_at=now,
            accessed_at=now,
            size=size,
        )
        entry._ttl = rel
        entry._deadline = new_deadline
        if new_deadline <= now:
            # Written already expired (a past EXAT/PXAT, a negative TTL): the old
            # value is gone, but the new one must not take a slot (evicting an
            # innocent entry) nor reach the store.
            if old is not None:
                self._remove(key, old, Cause.REPLACED, None, store=False)
            self.expirations += 1
            self.persistence.delete(key)
            self._notify(key, entry, Cause.EXPIRED, None)
            return entry
        # A new key (an overwrite was done in place above).
        data[key] = entry
        self.memory += size
        self.expiring += new_deadline != _NEVER
        if new_deadline != _NEVER:
            self._file(key, entry)
        if self._persisting:
            self._persistence.save(key, entry)
        if len(data) > self.max_sessions or (self.max_memory and self.memory > self.max_memory):
            self._enforce_bounds()
        return entry

    def admit(self, key: K, entry: Entry[V], *, touch: bool = True) -> Entry[V] | None:
        """Put an entry that came from the store back in memory (read-through,
        warm start) as most recently used, without saving it again. Returns the
        entry, or ``None`` if it had already expired. ``touch=False`` (warm
        start) keeps its last access time and deadline: a restart is not an access."""
        now = self.clock()
        if entry._deadline <= now:
            return None
        old = self._data.pop(key, None)
        if old is not None:
            self.memory -= old.size
            self.expiring -= old._deadline != _NEVER
            old._filed = _NEVER
        entry._filed = _NEVER
        entry.size = self.sizer(key, entry.value)
        if touch:
            entry.accessed_at = now
            if entry._ttl and self.sliding:
                entry._deadline = now + entry._ttl
        self._data[key] = entry
        self.memory += entry.size
        self.expiring += entry._deadline != _NEVER
        if entry._deadline != _NEVER:
            self._file(key, entry)
        self._enforce_bounds()
        return entry if self._data.get(key) is entry else None

    def admit_oldest(self, key: K, entry: Entry[V]) -> bool:
        """Put an entry that came from the store in memory as the *least*
        recently used, keeping its access time and deadline, without saving
        it again: the warm start, which runs while clients are served, so
        whatever they touched meanwhile is more recent than any stored row.
        Nothing is evicted for it: ``False`` if memory has no room left (the
        caller stops there). A key memory holds already, or an entry past its
        deadline, is left out (``True``: there was room)."""
        data = self._data
        if key in data:
            return True
        if entry._deadline <= self.clock():
            return True
        size = self.sizer(key, entry.value)
        max_memory = self.max_memory
        if len(data) >= self.max_sessions or (max_memory and self.memory + size > max_memory):
            return False
        entry._filed = _NEVER
        entry.size = size
        data[key] = entry
        data.move_to_end(key, last=False)
        self.memory += size
        self.expiring += entry._deadline != _NEVER
        if entry._deadline != _NEVER:
            self._file(key, entry)
        return True

    def update(self, key: K, fn: Callable[[V], V]) -> Entry[V] | None:
        """Replace the value of a live ``key`` with ``fn(value)``, keeping its TTL
        settings and metadata (the seed's mutate-in-place). ``None`` if absent."""
        entry = self.get_entry(key)
        if entry is None:
            return None
        new_value = fn(entry.value)
        new_size = self.sizer(key, new_value)
        self.memory += new_size - entry.size
        entry.value = new_value
        entry.size = new_size
        entry.updated_at = entry.accessed_at
        self.persistence.save(key, entry)
        self._enforce_bounds()
        return entry

    def touch(self, key: K) -> bool:
        """Renew ``key`` as an access; ``False`` if it is not live in memory."""
        return self.get_entry(key) is not None

    def set_ttl(self, key: K, ttl: float | None) -> bool:
        """Give a live ``key`` a relative TTL (``None``: persist). Saves it."""
        entry = self.peek(key)
        if entry is None:
            return False
        entry._ttl = ttl or 0.0
        self._set_deadline(key, entry, self.clock() + entry._ttl if entry._ttl else _NEVER)
        return True

    def set_deadline(self, key: K, deadline: float | None) -> bool:
        """Give a live ``key`` an absolute deadline that never slides. Saves it."""
        entry = self.peek(key)
        if entry is None:
            return False
        entry._ttl = 0.0
        self._set_deadline(key, entry, _NEVER if deadline is None else deadline)
        return True

    def persist(self, key: K) -> bool:
        """Remove the expiry of ``key``; ``False`` if absent or it had none."""
        entry = self.peek(key)
        if entry is None or entry._deadline == _NEVER:
            return False
        entry._ttl = 0.0
        self._set_deadline(key, entry, _NEVER)
        return True

    def _set_deadline(self, key: K, entry: Entry[V], deadline: float) -> None:
        self.expiring += (deadline != _NEVER) - (entry._deadline != _NEVER)
        entry._deadline = deadline
        if deadline <= self.clock():
            # A command gave it a deadline already past: a delete, not memory
            # finding it expired.
            self._remove(key, entry, Cause.EXPIRED, None, store=False)
            self.persistence.delete(key)
            return
        if deadline == _NEVER:
            entry._filed = _NEVER
        else:
            self._file(key, entry)
        self.persistence.save(key, entry)

    def remove(self, key: K) -> V | None:
        """Delete ``key`` everywhere (memory and store); its value, if it was live."""
        entry = self._data.get(key)
        self.persistence.delete(key)
        if entry is None:
            return None
        live = entry._deadline > self.clock()
        self._remove(key, entry, Cause.DELETED if live else Cause.EXPIRED, None, store=False)
        return entry.value if live else None

    def invalidate(self, key: K) -> bool:
        """Drop ``key`` from memory only; the store keeps it."""
        entry = self._data.get(key)
        if entry is None:
            return False
        if entry._deadline <= self.clock():
            # Past its deadline: it expires (and leaves the store) instead.
            self._remove(key, entry, Cause.EXPIRED, None)
            return False
        self._remove(key, entry, Cause.EVICTED, EvictionReason.INVALIDATED)
        return True

    def drop(self, key: K) -> bool:
        """Forget ``key`` in memory only, telling nobody (no hook, no listener,
        no counter): its copy is no longer trusted and the store answers for
        it. ``False`` if memory did not hold it."""
        entry = self._data.pop(key, None)
        if entry is None:
            return False
        self.memory -= entry.size
        self.expiring -= entry._deadline != _NEVER
        entry._filed = _NEVER
        return True

    def drop_all(self) -> int:
        """:meth:`drop` every entry; returns how many memory held."""
        count = len(self._data)
        self._data = OrderedDict()
        self._heap = []
        self.memory = 0
        self.expiring = 0
        return count

    def touched_since(self, since: float) -> builtins.list[tuple[K, Entry[V]]]:
        """Entries accessed at or after ``since``, most recently used first:
        the most-recently-used end of the LRU order, so the cost is the
        number returned, not the number held."""
        out: builtins.list[tuple[K, Entry[V]]] = []
        data = self._data
        for key in reversed(data):
            entry = data[key]
            if entry.accessed_at < since:
                break
            out.append((key, entry))
        return out

    def clear(self) -> int:
        """Delete every entry (memory and store); returns how many were live."""
        now = self.clock()
        count = 0
        for key, entry in list(self._data.items()):
            live = entry._deadline > now
            count += live
            self._remove(key, entry, Cause.DELETED if live else Cause.EXPIRED, None)
        self._heap.clear()
        self._old.clear()
        return count

    def resize(self, max_sessions: int | None = None, max_memory: int | None = None) -> int:
        """Change the bounds; shrinking evicts at once. Returns how many were evicted."""
        if max_sessions is not None:
            if max_sessions < 1:
                raise ValueError(f"max_sessions must be a positive integer, got {max_sessions}")
            self.max_sessions = max_sessions
        if max_memory is not None:
            if max_memory < 0:
                raise ValueError(f"max_memory must be >= 0, got {max_memory}")
            self.max_memory = max_memory
        before = self.evictions_max_sessions + self.evictions_max_memory
        self._enforce_bounds()
        return self.evictions_max_sessions + self.evictions_max_memory - before

    # ----------------------------------------------------------------- expiry

    def sweep(self, limit: int = 1000, now: float | None = None) -> int:
        """Remove entries past their deadline, looking at no more than ``limit``
        heap records. Returns how many expired; call again while it returns
        ``limit`` or :meth:`next_deadline` is in the past."""
        if now is None:
            now = self.clock()
        data = self._data
        heappop, heappush = heapq.heappop, heapq.heappush
        expired = 0
        work = 0
        # Re-read every round: a listener or hook may start a tidy.
        while work < limit:
            heap, old = self._heap, self._old
            if heap and (not old or heap[0][0] <= old[0][0]):
                source = heap
            elif old:
                source = old
            else:
                break
            record = source[0]
            if record[0] > now:
                break
            work += 1
            heappop(source)
            entry = _filed_entry(data, record)
            if entry is None:
                continue  # stale: its entry is gone or filed anew
            key: K = record[2]
            entry._filed = _NEVER
            deadline = entry._deadline
            if deadline == _NEVER:
                continue
            if deadline > now:
                # Slid since it was filed: re-file under the current deadline
                # (one record out, one in: the index does not grow).
                heappush(self._heap, self._record(key, entry, deadline))
                continue
            # Expired: _remove inlined (this loop is the active-expiry hot path).
            del data[key]
            self.memory -= entry.size
            self.expiring -= 1  # it had a deadline: it expired
            self.expirations += 1
            expired += 1
            self.persistence.expire(key)
            if self.listener is not None:
                self.listener(key, entry, Cause.EXPIRED, None)
        self._keep_bounded()
        return expired

    def cleanup_expired(self) -> int:
        """Remove every expired entry now; returns how many."""
        now = self.clock()
        total = 0
        while True:
            removed = self.sweep(limit=10_000, now=now)
            total += removed
            due = self.next_deadline()
            if due is None or due > now:
                return total

    def next_deadline(self) -> float | None:
        """The earliest time a sweep may have work (``None`` if nothing expires)."""
        heap, old = self._heap, self._old
        due: float
        if heap and old:
            due = min(heap[0][0], old[0][0])
        elif heap or old:
            due = (heap or old)[0][0]
        else:
            return None
        return due

    @property
    def expiry_index_size(self) -> int:
        """Records in the expiry index (bounded by ``4 * len(self) + 128``; about
        twice ``len(self)`` at most in steady use, see :meth:`_keep_bounded`)."""
        return len(self._heap) + len(self._old)

    def _file(self, key: K, entry: Entry[V]) -> None:
        deadline = entry._deadline
        assert deadline != _NEVER
        if entry._filed <= deadline:
            return  # surfaces early and is re-filed by sweep
        heapq.heappush(self._heap, self._record(key, entry, deadline))
        self._keep_bounded()

    def _record(self, key: K, entry: Entry[V], deadline: float) -> _Record:
        """A new expiry record for ``entry`` at ``deadline``, now its current one."""
        seq = next(self._seq)
        entry._filed = deadline
        entry._seq = seq
        # Annotated, so that mypyc makes one tuple for every place it goes (see _Record).
        record: _Record = (deadline, seq, key)
        return record

    def _settle_root(self, limit: int) -> None:
        """Drop the stale records at the top of the expiry index and re-file
        the slid ones there, as :meth:`sweep` does when they come due, until a
        current record is on top or ``limit`` records were looked at. The
        session evicted is usually the next due too (sessions written once
        with one TTL), so its record leaves the index with it instead of
        waiting for a tidy: a tidy moved 32 records per write for thousands of
        writes, event-loop iterations of 30-80 ms under sustained writes
        (issue 18). The limit keeps a top of slid records (every session read
        since it was filed) from being re-filed all in one write; an eviction
        leaves at most one stale record, so a few per call keep up."""
        heap, data = self._heap, self._data
        for _ in range(limit):
            if not heap:
                return
            record = heap[0]
            entry = _filed_entry(data, record)
            if entry is None:
                heapq.heappop(heap)  # stale: its entry is gone or filed anew
                continue
            key: K = record[2]
            deadline = entry._deadline
            if deadline == _NEVER:
                heapq.heappop(heap)
                entry._filed = _NEVER
            elif deadline > record[0]:
                heapq.heapreplace(heap, self._record(key, entry, deadline))
            else:
                return

    def _keep_bounded(self) -> None:
        """Keep the expiry index near the entries it indexes. A removed or
        evicted entry leaves its record behind unless it comes to the top
        (a heap drops only its root; :meth:`_settle_root`), so a load of new
        sessions into a full cache whose evictions are not the next due adds
        one stale record per write. Past ``2 * len(self) + 64`` records the index is tidied a few
        records per call (:meth:`_tidy`): rebuilding it whole held the event
        loop 40-140 ms every 100k evictions (a batch of 16 SETs in the slow
        log, issue 18). Each call that may add a stale record moves
        ``_TIDY_STEP`` of them, so a tidy outpaces what accumulates meanwhile;
        the whole rebuild stays as a backstop at twice that bound."""
        size = len(self._heap) + len(self._old)
        bound = 2 * len(self._data) + 64
        if self._old:
            if size > 2 * bound:
                self._rebuild_heap()
            else:
                self._tidy(_TIDY_STEP)
        elif size > bound:
            # Swap the two lists (the old one is empty now) rather than make a
            # new one: a list made now would be young, and every young
            # collection until it is frozen would walk its 100k+ records.
            self._old, self._heap = self._heap, self._old
            self._tidy(_TIDY_STEP)

    def _tidy(self, count: int) -> None:
        """Move up to ``count`` records from the index being tidied to the
        current one, dropping stale ones. Taken from the end of the old heap's
        list, which leaves the rest a heap (sweep pops from both)."""
        old, heap, data = self._old, self._heap, self._data
        for _ in range(min(count, len(old))):
            record = old.pop()
            entry = _filed_entry(data, record)
            if entry is None:
                continue  # stale: its entry is gone or filed anew
            if entry._deadline == _NEVER:
                entry._filed = _NEVER
                continue
            heapq.heappush(heap, record)

    def _rebuild_heap(self) -> None:
        self._old.clear()
        heap: list[_Record] = []
        append = heap.append
        for key, entry in self._data.items():
            if entry._deadline == _NEVER:
                entry._filed = _NEVER
            elif entry._filed != _NEVER:
                # Filed at or before its deadline (sweep re-files it): keep it.
                record: _Record = (entry._filed, entry._seq, key)  # see _Record
                append(record)
            else:
                append(self._record(key, entry, entry._deadline))
        heapq.heapify(heap)
        self._heap = heap

    # ---------------------------------------------------------------- removal

    def _enforce_bounds(self) -> None:
        data = self._data
        max_memory = self.max_memory
        if len(data) <= self.max_sessions and (not max_memory or self.memory <= max_memory):
            return
        now = self.clock()
        persistence = self.persistence
        # Evict LRU first, inlined (every insert of a new key into a full cache
        # lands here); the expiry index is checked against its bound once, after.
        reason = EvictionReason.MAX_SESSIONS
        while data:
            if len(data) > self.max_sessions:
                reason = EvictionReason.MAX_SESSIONS
            elif max_memory and self.memory > max_memory:
                reason = EvictionReason.MAX_MEMORY
            else:
                break
            key, entry = data.popitem(last=False)
            self.memory -= entry.size
            self.expiring -= entry._deadline != _NEVER
            entry._filed = _NEVER
            if entry._deadline <= now:
                # Already past its deadline: it expires (and leaves the store) rather
                # than being evicted (which would keep it in the store for good).
                self.expirations += 1
                persistence.expire(key)
                cause, why = Cause.EXPIRED, None
            else:
                if reason is EvictionReason.MAX_SESSIONS:
                    self.evictions_max_sessions += 1
                else:
                    self.evictions_max_memory += 1
                persistence.on_evict(key, entry, Cause.EVICTED)
                cause, why = Cause.EVICTED, reason
            if self.listener is not None:
                self.listener(key, entry, cause, why)
        self._settle_root(_SETTLE_STEP)
        self._keep_bounded()

    def _remove(
        self,
        key: K,
        entry: Entry[V],
        cause: Cause,
        reason: EvictionReason | None,
        *,
        store: bool = True,
    ) -> None:
        del self._data[key]
        if cause is Cause.EXPIRED:
            self.expirations += 1
        self._removed(key, entry, cause, reason, store)

    def _removed(
        self,
        key: K,
        entry: Entry[V],
        cause: Cause,
        reason: EvictionReason | None,
        store: bool,
    ) -> None:
        self.memory -= entry.size
        self.expiring -= entry._deadline != _NEVER
        entry._filed = _NEVER
        if store:
            if cause is Cause.EVICTED:
                self.persistence.on_evict(key, entry, cause)
            elif cause is Cause.EXPIRED:
                self.persistence.expire(key)
            elif cause is not Cause.REPLACED:
                self.persistence.delete(key)
        if self.listener is not None:
            self.listener(key, entry, cause, reason)
        self._keep_bounded()

    def _notify(self, key: K, entry: Entry[V], cause: Cause, reason: EvictionReason | None) -> None:
        if self.listener is not None:
            self.listener(key, entry, cause, reason)

    # ------------------------------------------------------------------ stats

    def stats(self) -> CacheStats:
        return CacheStats(
            sessions=len(self._data),
            memory_bytes=self.memory,
            max_sessions=self.max_sessions,
            max_memory=self.max_memory,
            hits=self.hits,
            misses=self.misses,
            evictions_max_sessions=self.evictions_max_sessions,
            evictions_max_memory=self.evictions_max_memory,
            expirations=self.expirations,
            loads_found=self.loads_found,
            loads_absent=self.loads_absent,
            loads_error=self.loads_error,
        )
