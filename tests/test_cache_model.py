"""Model-based test of SessionCache: a hypothesis state machine drives the cache and a
deliberately naive reference model side by side and compares them after every step.

The model mirrors *physical* presence: an entry past its deadline stays in the model
(and in ``len(cache)``, and in the LRU order) until something removes it — a sweep, a
lookup of it, an overwrite, or LRU eviction (where it leaves as EXPIRED, not EVICTED).
What the model checks on top is that such an entry is never *visible*: not through
get/peek/contains/ttl/list/items.

Sweeps with a small ``limit`` remove an order of expired entries that depends on the
expiry heap's internals; there the model validates what the cache did (only expired
entries, at most ``limit``, all of them when ``limit`` covered the whole index) and then
applies the same removals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sessiond.cache import DEFAULT, Cause, Entry, EvictionReason, SessionCache

KEYS = [f"k{i}" for i in range(8)]
CONTEXTS = [None, "A", "B"]

keys = st.sampled_from(KEYS)
values = st.text(alphabet="xyz", max_size=6)
contexts = st.sampled_from(CONTEXTS)
ttls = st.sampled_from([5, 3, None, 1, 10, 50, 0, -1])
deadline_offsets = st.sampled_from([-3.0, 0.0, 0.5, 4.0, 20.0, 500.0])
small_steps = st.sampled_from([0.5, 1.0, 2.0, 3.0])
large_steps = st.sampled_from([9.0, 50.0, 1000.0])
max_sessions_st = st.sampled_from([8, 5, 3, 2, 1])
max_memory_st = st.sampled_from([0, 40, 12])
default_ttls = st.sampled_from([5.0, 10.0, None, 0])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Row = tuple[Any, float | None, float | None, str | None]  # value, ttl, deadline, context


class LoadFailed(RuntimeError):
    pass


class RecordingStore:
    """A PersistenceHook that records every call and keeps snapshot rows (a store)."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[Row, float]] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.fail_next_load = False

    @staticmethod
    def _row(entry: Entry[str]) -> tuple[Row, float]:
        return (entry.value, entry.ttl, entry.deadline, entry.context_id), entry.created_at

    def load(self, key: str) -> Entry[str] | None:
        self.calls.append(("load", key))
        if self.fail_next_load:
            self.fail_next_load = False
            raise LoadFailed(key)
        stored = self.rows.get(key)
        if stored is None:
            return None
        (value, ttl, deadline, context), created = stored
        return Entry(value, context_id=context, created_at=created, ttl=ttl, deadline=deadline)

    def save(self, key: str, entry: Entry[str]) -> None:
        self.calls.append(("save", key))
        self.rows[key] = self._row(entry)

    def delete(self, key: str) -> None:
        self.calls.append(("delete", key))
        self.rows.pop(key, None)

    def expire(self, key: str) -> None:
        # A store of its own deletes what memory found expired.
        self.delete(key)

    def on_evict(self, key: str, entry: Entry[str], cause: Cause) -> None:
        self.calls.append(("on_evict", key, cause))
        self.rows[key] = self._row(entry)

    def projection(self) -> dict[str, Row]:
        return {k: row for k, (row, _) in self.rows.items()}


@dataclass
class MEntry:
    value: str
    ttl: float | None
    deadline: float | None
    context: str | None


class Model:
    """The reference: a dict, a list for LRU order (LRU first) and an explicit clock."""

    def __init__(
        self, max_sessions: int, max_memory: int, default_ttl: float | None, sliding: bool
    ) -> None:
        self.now = 1000.0
        self.entries: dict[str, MEntry] = {}
        self.order: list[str] = []
        self.store: dict[str, Row] = {}
        self.max_sessions = max_sessions
        self.max_memory = max_memory
        self.default_ttl = default_ttl
        self.sliding = sliding
        self.events: list[tuple[str, str, Cause, EvictionReason | None]] = []
        self.calls: list[tuple[Any, ...]] = []
        self.hits = self.misses = self.expirations = 0
        self.evicted_sessions = self.evicted_memory = 0
        self.loads_found = self.loads_absent = self.loads_error = 0

    # -- helpers
    def memory(self) -> int:
        return sum(len(k) + len(e.value) for k, e in self.entries.items())

    def expired(self, e: MEntry) -> bool:
        return e.deadline is not None and e.deadline <= self.now

    def live(self, key: str) -> MEntry | None:
        e = self.entries.get(key)
        return None if e is None or self.expired(e) else e

    def live_keys_mru(self) -> list[str]:
        return [k for k in reversed(self.order) if not self.expired(self.entries[k])]

    def row(self, e: MEntry) -> Row:
        return (e.value, e.ttl, e.deadline, e.context)

    def drop(self, key: str, cause: Cause, reason: EvictionReason | None, store: bool) -> None:
        e = self.entries.pop(key)
        self.order.remove(key)
        if cause is Cause.EXPIRED:
            self.expirations += 1
        if store:
            if cause is Cause.EVICTED:
                self.calls.append(("on_evict", key, cause))
                self.store[key] = self.row(e)
            elif cause is not Cause.REPLACED:
                self.calls.append(("delete", key))
                self.store.pop(key, None)
        self.events.append((key, e.value, cause, reason))

    def enforce(self) -> None:
        while len(self.entries) > self.max_sessions:
            self.evict_lru(EvictionReason.MAX_SESSIONS)
        while self.max_memory and self.memory() > self.max_memory and self.entries:
            self.evict_lru(EvictionReason.MAX_MEMORY)

    def evict_lru(self, reason: EvictionReason) -> None:
        key = self.order[0]
        if self.expired(self.entries[key]):
            self.drop(key, Cause.EXPIRED, None, True)
            return
        if reason is EvictionReason.MAX_SESSIONS:
            self.evicted_sessions += 1
        else:
            self.evicted_memory += 1
        self.drop(key, Cause.EVICTED, reason, True)

    def save(self, key: str) -> None:
        self.calls.append(("save", key))
        self.store[key] = self.row(self.entries[key])

    # -- operations
    def get(self, key: str) -> str | None:
        e = self.entries.get(key)
        if e is None:
            self.misses += 1
            return None
        if self.expired(e):
            self.drop(key, Cause.EXPIRED, None, True)
            self.misses += 1
            return None
        self.hits += 1
        self.order.remove(key)
        self.order.append(key)
        if self.sliding and e.ttl is not None:
            e.deadline = self.now + e.ttl
        return e.value

    def insert(
        self,
        key: str,
        value: str,
        ttl: Any,
        deadline: float | None,
        context: str | None,
        keep_ttl: bool,
    ) -> None:
        old = self.entries.get(key)
        if old is not None and self.expired(old):
            self.drop(key, Cause.EXPIRED, None, True)
            old = None
        if keep_ttl and old is not None:
            rel = old.ttl
            dl = self.now + rel if rel is not None and self.sliding else old.deadline
        elif deadline is not None:
            rel, dl = None, deadline
        else:
            rel = (self.default_ttl if ttl is DEFAULT else ttl) or None
            dl = None if rel is None else self.now + rel
        if old is not None and context is None:
            context = old.context
        new = MEntry(value, rel, dl, context)
        if dl is not None and dl <= self.now:
            if old is not None:
                self.drop(key, Cause.REPLACED, None, False)
            self.expirations += 1
            self.calls.append(("delete", key))
            self.store.pop(key, None)
            self.events.append((key, value, Cause.EXPIRED, None))
            return
        if old is not None:
            self.events.append((key, old.value, Cause.REPLACED, None))
            self.order.remove(key)
        self.entries[key] = new
        self.order.append(key)
        self.save(key)
        self.enforce()

    def get_or_load(self, key: str, fail: bool) -> str | None:
        value = self.get(key)
        if value is not None:
            return value
        self.calls.append(("load", key))
        if fail:
            self.loads_error += 1
            raise LoadFailed(key)
        row = self.store.get(key)
        if row is None:
            self.loads_absent += 1
            return None
        self.loads_found += 1
        return self.admit(key, touch=True)

    def admit(self, key: str, touch: bool) -> str | None:
        value, ttl, deadline, context = self.store[key]
        if deadline is not None and deadline <= self.now:
            return None
        e = MEntry(value, ttl, deadline, context)
        if touch and self.sliding and ttl is not None:
            e.deadline = self.now + ttl
        self.entries[key] = e
        self.order.append(key)
        self.enforce()
        return value if self.entries.get(key) is e else None

    def update(self, key: str, suffix: str) -> str | None:
        value = self.get(key)
        if value is None:
            return None
        self.entries[key].value = value + suffix
        self.save(key)
        self.enforce()
        return value + suffix

    def set_deadline_of(self, key: str, e: MEntry, deadline: float | None) -> None:
        e.deadline = deadline
        if deadline is not None and deadline <= self.now:
            self.drop(key, Cause.EXPIRED, None, True)
            return
        self.save(key)

    def set_ttl(self, key: str, ttl: float | None) -> bool:
        e = self.live(key)
        if e is None:
            return False
        e.ttl = ttl or None
        self.set_deadline_of(key, e, None if e.ttl is None else self.now + e.ttl)
        return True

    def set_deadline(self, key: str, deadline: float | None) -> bool:
        e = self.live(key)
        if e is None:
            return False
        e.ttl = None
        self.set_deadline_of(key, e, deadline)
        return True

    def persist(self, key: str) -> bool:
        e = self.live(key)
        if e is None or e.deadline is None:
            return False
        e.ttl = None
        self.set_deadline_of(key, e, None)
        return True

    def remove(self, key: str) -> str | None:
        self.calls.append(("delete", key))
        self.store.pop(key, None)
        e = self.entries.get(key)
        if e is None:
            return None
        live = not self.expired(e)
        self.drop(key, Cause.DELETED if live else Cause.EXPIRED, None, False)
        return e.value if live else None

    def invalidate(self, key: str) -> bool:
        e = self.entries.get(key)
        if e is None:
            return False
        if self.expired(e):
            self.drop(key, Cause.EXPIRED, None, True)
            return False
        self.drop(key, Cause.EVICTED, EvictionReason.INVALIDATED, True)
        return True

    def clear(self) -> int:
        count = 0
        for key in list(self.order):
            live = not self.expired(self.entries[key])
            count += live
            self.drop(key, Cause.DELETED if live else Cause.EXPIRED, None, True)
        return count

    def resize(self, max_sessions: int | None, max_memory: int | None) -> int:
        if max_sessions is not None:
            self.max_sessions = max_sessions
        if max_memory is not None:
            self.max_memory = max_memory
        before = self.evicted_sessions + self.evicted_memory
        self.enforce()
        return self.evicted_sessions + self.evicted_memory - before


class CacheMachine(RuleBasedStateMachine):
    cache: SessionCache[str, str]
    model: Model

    @initialize(
        max_sessions=max_sessions_st,
        max_memory=max_memory_st,
        default_ttl=default_ttls,
        sliding=st.booleans(),
    )
    def setup(
        self, max_sessions: int, max_memory: int, default_ttl: float | None, sliding: bool
    ) -> None:
        self.clock = FakeClock()
        self.store = RecordingStore()
        self.events: list[tuple[str, str, Cause, EvictionReason | None]] = []

        def listener(key: str, entry: Entry[str], cause: Cause, reason: Any) -> None:
            self.events.append((key, entry.value, cause, reason))

        self.cache = SessionCache(
            max_sessions,
            max_memory=max_memory,
            default_ttl=default_ttl,
            sliding=sliding,
            clock=self.clock,
            persistence=self.store,
            listener=listener,
        )
        self.model = Model(max_sessions, max_memory, default_ttl or None, sliding)
        self.steps_since_clear = 0

    # ------------------------------------------------------------ writes
    @rule(key=keys, value=values, context=contexts)
    def insert_default_ttl(self, key: str, value: str, context: str | None) -> None:
        self.cache.insert(key, value, context_id=context)
        self.model.insert(key, value, DEFAULT, None, context, False)

    @rule(key=keys, value=values, ttl=ttls, context=contexts)
    def insert_explicit_ttl(self, key: str, value: str, ttl: float | None, context: Any) -> None:
        self.cache.insert(key, value, ttl, context_id=context)
        self.model.insert(key, value, ttl, None, context, False)

    @rule(items=st.lists(st.tuples(keys, values, ttls), min_size=2, max_size=8))
    def insert_many(self, items: list[tuple[str, str, float | None]]) -> None:
        for key, value, ttl in items:
            self.cache.insert(key, value, ttl)
            self.model.insert(key, value, ttl, None, None, False)

    @rule(order=st.permutations(KEYS), step=st.sampled_from([1.0, 0.5, 2.0]))
    def fill_staggered(self, order: list[str], step: float) -> None:
        """Every key, with deadlines spread out: populates the cache so that later
        clock steps expire it a few entries at a time."""
        for i, key in enumerate(order):
            self.cache.insert(key, "v" * (i % 3), step * (i + 1))
            self.model.insert(key, "v" * (i % 3), step * (i + 1), None, None, False)

    @rule(key=keys, value=values, offset=deadline_offsets)
    def insert_with_deadline(self, key: str, value: str, offset: float) -> None:
        deadline = self.clock.now + offset
        self.cache.insert(key, value, 7.0, deadline=deadline)
        self.model.insert(key, value, 7.0, deadline, None, False)

    @rule(key=keys, value=values, ttl=st.sampled_from([DEFAULT, None, 4.0]))
    def insert_keep_ttl(self, key: str, value: str, ttl: Any) -> None:
        self.cache.insert(key, value, ttl, keep_ttl=True)
        self.model.insert(key, value, ttl, None, None, True)

    @rule(key=keys, suffix=st.sampled_from(["", "+", "++++++"]))
    def update(self, key: str, suffix: str) -> None:
        got = self.cache.update(key, lambda v: v + suffix)
        want = self.model.update(key, suffix)
        assert (None if got is None else got.value) == want

    @rule(key=keys, ttl=ttls)
    def set_ttl(self, key: str, ttl: float | None) -> None:
        assert self.cache.set_ttl(key, ttl) == self.model.set_ttl(key, ttl)

    @rule(key=keys, offset=deadline_offsets)
    def set_deadline(self, key: str, offset: float) -> None:
        deadline = self.clock.now + offset
        assert self.cache.set_deadline(key, deadline) == self.model.set_deadline(key, deadline)

    @rule(key=keys, n=st.integers(min_value=1, max_value=80))
    def churn_deadlines(self, key: str, n: int) -> None:
        """Ever earlier deadlines each file a new expiry record: grows the index until
        it has to be rebuilt, so its bound is exercised."""
        self.cache.insert(key, "c", 300.0)
        self.model.insert(key, "c", 300.0, None, None, False)
        for i in range(n):
            deadline = self.clock.now + 250.0 - i
            assert self.cache.set_deadline(key, deadline) == self.model.set_deadline(key, deadline)

    @rule(key=keys)
    def persist(self, key: str) -> None:
        assert self.cache.persist(key) == self.model.persist(key)

    @rule(key=keys)
    def remove(self, key: str) -> None:
        assert self.cache.remove(key) == self.model.remove(key)

    @rule(key=keys)
    def invalidate(self, key: str) -> None:
        assert self.cache.invalidate(key) == self.model.invalidate(key)

    # Rare on purpose: emptying the cache often would keep the states shallow.
    @precondition(lambda self: self.steps_since_clear >= 15)
    @rule()
    def clear(self) -> None:
        self.steps_since_clear = 0
        assert self.cache.clear() == self.model.clear()

    # ------------------------------------------------------------- reads
    @rule(key=keys)
    def get(self, key: str) -> None:
        assert self.cache.get(key) == self.model.get(key)

    @rule(some=st.lists(keys, max_size=6))
    def get_many(self, some: list[str]) -> None:
        for key in some:
            assert self.cache.get(key) == self.model.get(key)

    @rule(key=keys)
    def touch(self, key: str) -> None:
        assert self.cache.touch(key) == (self.model.get(key) is not None)

    @rule(key=keys)
    def get_or_load(self, key: str) -> None:
        assert self.cache.get_or_load(key) == self.model.get_or_load(key, fail=False)

    @rule(key=keys)
    def get_or_load_failing(self, key: str) -> None:
        self.store.fail_next_load = True
        try:
            got: Any = self.cache.get_or_load(key)
        except LoadFailed:
            got = LoadFailed
        try:
            want: Any = self.model.get_or_load(key, fail=True)
        except LoadFailed:
            want = LoadFailed
        self.store.fail_next_load = False
        assert got == want

    @rule(key=keys, touch=st.booleans())
    def admit_stored(self, key: str, touch: bool) -> None:
        """Warm start (touch=False) or read-through admission of a stored row."""
        if key in self.model.entries or key not in self.model.store:
            return
        (value, ttl, deadline, context), created = self.store.rows[key]
        entry = Entry(value, context_id=context, created_at=created, ttl=ttl, deadline=deadline)
        got = self.cache.admit(key, entry, touch=touch)
        assert (None if got is None else got.value) == self.model.admit(key, touch)

    @rule(key=keys)
    def peek_and_contains(self, key: str) -> None:
        e = self.model.live(key)
        got = self.cache.peek(key)
        assert (None if got is None else got.value) == (None if e is None else e.value)
        assert self.cache.contains(key) == (e is not None)
        assert (key in self.cache) == (e is not None)

    # -------------------------------------------------------------- time
    @rule(dt=small_steps)
    def clock_small_step(self, dt: float) -> None:
        self.clock.now += dt
        self.model.now += dt

    @rule(dt=large_steps)
    def clock_large_jump(self, dt: float) -> None:
        self.clock.now += dt
        self.model.now += dt

    # ------------------------------------------------------ config/bounds
    @rule(max_sessions=st.none() | max_sessions_st, max_memory=st.none() | max_memory_st)
    def resize(self, max_sessions: int | None, max_memory: int | None) -> None:
        got = self.cache.resize(max_sessions=max_sessions, max_memory=max_memory)
        assert got == self.model.resize(max_sessions, max_memory)

    @rule()
    def toggle_sliding(self) -> None:
        self.cache.sliding = self.model.sliding = not self.model.sliding

    @rule(default_ttl=default_ttls)
    def set_default_ttl(self, default_ttl: float | None) -> None:
        # A hot reload may assign the config value as is (0 = no expiry).
        self.cache.default_ttl = default_ttl
        self.model.default_ttl = default_ttl

    # ------------------------------------------------------------ expiry
    def _expired_in_model(self) -> dict[str, str]:
        m = self.model
        return {k: e.value for k, e in m.entries.items() if m.expired(e)}

    def _apply_sweep(self, removed: int, expected_all: bool) -> None:
        """Validate the expirations a sweep reported and apply them to the model."""
        expired = self._expired_in_model()
        got = list(self.events)
        assert len(got) == removed
        assert len({k for k, _, _, _ in got}) == len(got)
        for key, value, cause, reason in got:
            assert cause is Cause.EXPIRED and reason is None
            assert expired.get(key) == value, (key, value, expired)
        if expected_all:
            assert {k for k, _, _, _ in got} == set(expired)
        for key, _, _, _ in got:
            self.model.drop(key, Cause.EXPIRED, None, True)

    @rule(limit=st.sampled_from([1000, 0, 1, 2, 3]))
    def sweep(self, limit: int) -> None:
        self._sweep_checked(limit)

    @rule(dt=small_steps, limit=st.sampled_from([1000, 2]))
    def clock_step_then_sweep(self, dt: float, limit: int) -> None:
        """What the daemon does: time passes, the periodic sweep runs."""
        self.clock_small_step(dt)
        self._sweep_checked(limit)

    def _sweep_checked(self, limit: int) -> None:
        index_before = self.cache.expiry_index_size
        removed = self.cache.sweep(limit)
        assert 0 <= removed <= limit
        self._apply_sweep(removed, expected_all=limit >= index_before)

    @rule(limit=st.sampled_from([1, 2, 3]))
    def sweep_repeatedly(self, limit: int) -> None:
        total = 0
        for _ in range(10_000):
            removed = self.cache.sweep(limit)
            total += removed
            nd = self.cache.next_deadline()
            if removed < limit and (nd is None or nd > self.clock.now):
                break
        else:
            pytest.fail("sweep never finished")
        self._apply_sweep(total, expected_all=True)

    @rule()
    def cleanup_expired(self) -> None:
        self._apply_sweep(self.cache.cleanup_expired(), expected_all=True)

    # -------------------------------------------------------- invariants
    @invariant()
    def matches_model(self) -> None:
        cache, m = self.cache, self.model
        self.steps_since_clear += 1
        # Side effects of the step: exact listener events and persistence calls.
        assert self.events == m.events
        assert self.store.calls == m.calls
        self.events.clear()
        m.events.clear()
        self.store.calls.clear()
        m.calls.clear()
        counters = (
            cache.hits,
            cache.misses,
            cache.evictions_max_sessions,
            cache.evictions_max_memory,
            cache.expirations,
            cache.loads_found,
            cache.loads_absent,
            cache.loads_error,
        )
        assert counters == (
            m.hits,
            m.misses,
            m.evicted_sessions,
            m.evicted_memory,
            m.expirations,
            m.loads_found,
            m.loads_absent,
            m.loads_error,
        )
        assert self.store.projection() == m.store
        # Physical contents and LRU order.
        assert len(cache) == len(m.entries)
        assert list(cache.keys()) == m.order
        assert cache.memory == m.memory()
        assert cache.expiry_index_size <= 2 * len(cache) + 64
        deadlines = [e.deadline for e in m.entries.values() if e.deadline is not None]
        assert cache.expiring == len(deadlines)
        if deadlines:
            nd = cache.next_deadline()
            assert nd is not None and nd <= min(deadlines)
        # What is visible: live entries only, MRU first for list(), LRU first for items().
        live_mru = m.live_keys_mru()
        assert cache.list() == live_mru
        assert cache.list(count=2) == live_mru[:2]
        for ctx in ("A", "B"):
            assert cache.list(context_id=ctx) == [
                k for k in live_mru if m.entries[k].context == ctx
            ]
        assert [(k, e.value) for k, e in cache.items()] == [
            (k, m.entries[k].value) for k in reversed(live_mru)
        ]
        for key in KEYS:
            e = m.live(key)
            got = cache.peek(key)
            if e is None:
                assert got is None
                assert key not in cache
                with pytest.raises(KeyError):
                    cache.ttl(key)
            else:
                assert got is not None
                assert (got.value, got.ttl, got.deadline, got.context_id) == m.row(e)
                assert key in cache
                want_ttl = None if e.deadline is None else e.deadline - m.now
                assert cache.ttl(key) == want_ttl
        stats = cache.stats()
        assert stats.sessions == len(m.entries)
        assert stats.evictions == m.evicted_sessions + m.evicted_memory
        assert (stats.max_sessions, stats.max_memory) == (m.max_sessions, m.max_memory)
        # Inspection had no side effects.
        assert self.events == [] and self.store.calls == []
        assert (cache.hits, cache.misses) == (m.hits, m.misses)
        assert list(cache.keys()) == m.order


CacheMachine.TestCase.settings = settings(
    max_examples=600,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCacheModel = CacheMachine.TestCase
