"""Unit tests of SessionCache: the seed crate's 18 tests ported, one regression test per
seed defect, and regressions for bugs found since. Time is an injected fake clock."""

from __future__ import annotations

import gc
import itertools
import subprocess
import sys
from typing import Any

import pytest
from sessiond.cache import Cause, Entry, EvictionReason, SessionCache

Event = tuple[str, Any, Cause, EvictionReason | None]


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Listener:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, key: str, entry: Entry[Any], cause: Cause, reason: Any) -> None:
        self.events.append((key, entry.value, cause, reason))


class Store:
    """A recording PersistenceHook that also behaves like a store."""

    def __init__(self) -> None:
        self.rows: dict[str, Entry[Any]] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.fail = False

    def load(self, key: str) -> Entry[Any] | None:
        self.calls.append(("load", key))
        if self.fail:
            raise OSError("disk on fire")
        row = self.rows.get(key)
        if row is None:
            return None
        return Entry(
            row.value,
            context_id=row.context_id,
            created_at=row.created_at,
            ttl=row.ttl,
            deadline=row.deadline,
        )

    def save(self, key: str, entry: Entry[Any]) -> None:
        self.calls.append(("save", key))
        self.rows[key] = entry

    def delete(self, key: str) -> None:
        self.calls.append(("delete", key))
        self.rows.pop(key, None)

    def expire(self, key: str) -> None:
        # A store of its own deletes what memory found expired.
        self.delete(key)

    def on_evict(self, key: str, entry: Entry[Any], cause: Cause) -> None:
        self.calls.append(("on_evict", key, entry.value, cause))
        self.rows[key] = entry


def make(
    max_sessions: int = 100, **kwargs: Any
) -> tuple[SessionCache[str, Any], FakeClock, Listener, Store]:
    clock = FakeClock()
    listener = Listener()
    store = Store()
    kwargs.setdefault("default_ttl", None)
    cache: SessionCache[str, Any] = SessionCache(
        max_sessions, clock=clock, listener=listener, persistence=store, **kwargs
    )
    return cache, clock, listener, store


# --------------------------------------------------------------------------------------
# The seed crate's unit tests, ported.


def test_no_ttl_never_expires() -> None:
    cache, clock, listener, _ = make()
    cache.insert("s", "v", None)
    clock.advance(10 * 365 * 86400)
    assert cache.sweep() == 0
    assert cache.get("s") == "v"
    assert cache.ttl("s") is None
    assert listener.events == []


def test_touch_resets_timer() -> None:
    cache, clock, _, _ = make()
    cache.insert("s", "v", 10)
    clock.advance(8)
    assert cache.touch("s")
    clock.advance(8)  # 16 s after the write, 8 s after the touch
    assert cache.get("s") == "v"
    clock.advance(10)
    assert not cache.touch("s")


def test_expiration() -> None:
    cache, clock, _, _ = make()
    cache.insert("s", "v", 5)
    clock.advance(4.999)
    assert cache.contains("s")
    clock.advance(0.001)  # exactly at the deadline: gone
    assert not cache.contains("s")
    assert cache.get("s") is None


def test_drain_cleanup_returns_count_and_empties() -> None:
    cache, clock, _, _ = make()
    for i in range(5):
        cache.insert(f"e{i}", i, 1)
    for i in range(3):
        cache.insert(f"p{i}", i, None)
    clock.advance(2)
    assert cache.cleanup_expired() == 5
    assert len(cache) == 3
    assert cache.cleanup_expired() == 0
    assert cache.clear() == 3
    assert len(cache) == 0
    assert cache.list() == []
    assert cache.expiry_index_size == 0


def test_remove() -> None:
    cache, _, listener, store = make()
    cache.insert("s", "v")
    assert cache.remove("s") == "v"
    assert cache.get("s") is None
    assert cache.remove("s") is None
    assert listener.events == [("s", "v", Cause.DELETED, None)]
    assert "s" not in store.rows


def test_insert_and_get() -> None:
    cache, _, _, _ = make()
    entry = cache.insert("s", {"user": 1}, context_id="web")
    assert cache.get("s") == {"user": 1}
    assert entry.context_id == "web"
    assert len(cache) == 1


def test_not_found() -> None:
    cache, _, _, _ = make()
    assert cache.get("nope") is None
    assert cache.get("nope", "dflt") == "dflt"
    assert cache.get_entry("nope") is None
    assert cache.peek("nope") is None
    assert not cache.touch("nope")
    with pytest.raises(KeyError):
        cache.ttl("nope")
    assert cache.misses == 4


def test_lru_eviction_at_capacity_3() -> None:
    cache, _, listener, _ = make(3)
    for key in "abcd":
        cache.insert(key, key.upper())
    assert sorted(cache.keys()) == ["b", "c", "d"]
    assert cache.get("a") is None
    assert listener.events == [("a", "A", Cause.EVICTED, EvictionReason.MAX_SESSIONS)]
    assert cache.evictions_max_sessions == 1


def test_access_updates_lru_order() -> None:
    cache, _, listener, _ = make(3)
    for key in "abc":
        cache.insert(key, key)
    assert cache.get("a") == "a"  # a is now the most recently used
    assert cache.list() == ["a", "c", "b"]
    cache.insert("d", "d")
    assert listener.events == [("b", "b", Cause.EVICTED, EvictionReason.MAX_SESSIONS)]
    assert cache.list() == ["d", "a", "c"]


def test_ttl_expiration() -> None:
    cache, clock, _, _ = make(default_ttl=30)
    cache.insert("dflt", 1)
    cache.insert("short", 2, 10)
    assert cache.ttl("dflt") == 30
    assert cache.ttl("short") == 10
    clock.advance(10)
    assert cache.get("short") is None
    assert cache.get("dflt") == 1
    assert cache.expirations == 1


def test_touch_resets_ttl() -> None:
    cache, clock, _, _ = make()
    cache.insert("s", "v", 60)
    clock.advance(45)
    assert cache.ttl("s") == 15
    cache.touch("s")
    assert cache.ttl("s") == 60
    cache.sliding = False
    clock.advance(45)
    cache.touch("s")
    assert cache.ttl("s") == 15


def test_invalidate() -> None:
    cache, _, listener, store = make()
    cache.insert("s", "v")
    assert cache.invalidate("s")
    assert cache.peek("s") is None
    assert not cache.invalidate("s")
    assert listener.events == [("s", "v", Cause.EVICTED, EvictionReason.INVALIDATED)]
    assert store.rows["s"].value == "v"  # kept in the store
    assert cache.get_or_load("s") == "v"
    # An invalidation is not an LRU eviction.
    assert cache.evictions_max_sessions == cache.evictions_max_memory == 0


def test_cleanup_expired() -> None:
    cache, clock, listener, store = make()
    cache.insert("a", 1, 1)
    cache.insert("b", 2, 2)
    cache.insert("c", 3, 3)
    clock.advance(2)
    assert cache.cleanup_expired() == 2
    assert cache.list() == ["c"]
    assert sorted(k for k, _, _, _ in listener.events) == ["a", "b"]
    assert {c for _, _, c, _ in listener.events} == {Cause.EXPIRED}
    assert set(store.rows) == {"c"}
    assert cache.expirations == 2


def test_stats() -> None:
    cache, clock, _, _ = make(2, max_memory=1000)
    cache.insert("a", "xx", 5)
    cache.insert("b", "yyy")
    cache.get("a")
    cache.get("zz")
    cache.insert("c", "z")  # evicts b
    clock.advance(5)
    cache.sweep()
    stats = cache.stats()
    assert stats.hits == 1
    assert stats.misses == 1
    assert stats.evictions_max_sessions == 1
    assert stats.evictions_max_memory == 0
    assert stats.evictions == 1
    assert stats.expirations == 1
    assert stats.sessions == 1
    assert stats.memory_bytes == len("c") + len("z")
    assert (stats.max_sessions, stats.max_memory) == (2, 1000)


def test_context_id_lookup() -> None:
    cache, _, _, _ = make()
    cache.insert("a", 1, context_id="web")
    cache.insert("b", 2, context_id="api")
    cache.insert("c", 3, context_id="web")
    cache.insert("d", 4)
    assert cache.list(context_id="web") == ["c", "a"]
    assert cache.list(context_id="api") == ["b"]
    assert cache.list(context_id="none") == []
    assert cache.list(context_id="web", count=1) == ["c"]
    cache.insert("a", 5)  # an overwrite without a context keeps the old one
    assert cache.list(context_id="web") == ["a", "c"]


def test_mutate_in_place() -> None:
    cache, clock, _, store = make()
    cache.insert("s", {"n": 1}, 60, context_id="web")
    clock.advance(30)
    entry = cache.update("s", lambda v: {**v, "n": v["n"] + 1})
    assert entry is not None
    assert cache.get("s") == {"n": 2}
    assert entry.context_id == "web"
    assert entry.ttl == 60
    assert entry.updated_at == clock.now
    assert store.rows["s"].value == {"n": 2}
    assert cache.update("missing", lambda v: v) is None


def test_read_in_place() -> None:
    cache, clock, _, _ = make()
    cache.insert("a", 1, 60)
    cache.insert("b", 2, 60)
    clock.advance(10)
    peeked = cache.peek("a")
    assert peeked is not None and peeked.value == 1
    assert cache.ttl("a") == 50  # peek does not renew
    assert cache.list() == ["b", "a"]  # nor reorder
    assert (cache.hits, cache.misses) == (0, 0)
    got = cache.get_entry("a")
    assert got is peeked
    assert got.accessed_at == clock.now
    assert cache.ttl("a") == 60
    assert cache.list() == ["a", "b"]
    assert cache.hits == 1


def test_iterate_all() -> None:
    cache, clock, _, _ = make()
    cache.insert("a", 1, 5)
    cache.insert("b", 2)
    cache.insert("c", 3)
    cache.get("a")
    assert [(k, e.value) for k, e in cache.items()] == [("b", 2), ("c", 3), ("a", 1)]
    clock.advance(5)
    assert [k for k, _ in cache.items()] == ["b", "c"]  # expired entries are not listed
    assert list(cache.keys()) == ["b", "c", "a"]  # (until swept)
    assert cache.hits == 1


# --------------------------------------------------------------------------------------
# One regression test per seed defect.


def test_defect_a_configured_cleanup_runs_on_sweep() -> None:
    """The seed configured a cleanup interval but never ran the cleanup."""
    cache, clock, listener, store = make()
    cache.insert("gone", "v", 10)
    cache.insert("kept", "w", 100)
    clock.advance(10)
    assert cache.next_deadline() is not None
    assert cache.next_deadline() <= clock.now  # type: ignore[operator]
    assert cache.sweep() == 1
    assert list(cache.keys()) == ["kept"]  # physically removed, not just hidden
    assert listener.events == [("gone", "v", Cause.EXPIRED, None)]
    assert ("delete", "gone") in store.calls
    assert "gone" not in store.rows
    assert cache.expirations == 1


def test_defect_b_eviction_callback_gets_value() -> None:
    """The seed's eviction callback got the key only, not the value."""
    cache, _, listener, store = make(1)
    cache.insert("a", {"cart": [1, 2]})
    store.calls.clear()
    cache.insert("b", "x")
    assert listener.events == [
        ("a", {"cart": [1, 2]}, Cause.EVICTED, EvictionReason.MAX_SESSIONS),
    ]
    assert store.calls == [("save", "b"), ("on_evict", "a", {"cart": [1, 2]}, Cause.EVICTED)]
    cache.resize(max_memory=1)
    assert listener.events[-1] == ("b", "x", Cause.EVICTED, EvictionReason.MAX_MEMORY)


def test_defect_c_reinsert_into_full_cache_evicts_nobody() -> None:
    """Re-inserting an existing key into a full cache evicted an innocent LRU entry."""
    cache, _, listener, _ = make(3)
    for key in "abc":
        cache.insert(key, 1)
    cache.insert("c", 2)
    cache.insert("a", 2)  # the LRU entry itself, too
    assert sorted(cache.keys()) == ["a", "b", "c"]
    assert [c for _, _, c, _ in listener.events] == [Cause.REPLACED, Cause.REPLACED]
    assert cache.evictions_max_sessions == 0
    assert cache.list() == ["a", "c", "b"]


def test_defect_d_ttl_index_stays_bounded() -> None:
    """The seed's TTL records outlived their entries and grew without bound."""
    cache, clock, _, _ = make(10_000)
    for i in range(1000):
        cache.insert(f"s{i}", i, 30)
    # 100k sliding renewals on a stable set: nothing is pushed, records are re-filed.
    for n in range(100_000):
        clock.advance(0.001)
        assert cache.get_entry(f"s{n % 1000}") is not None
        if n % 1000 == 0:
            cache.sweep()
            assert cache.expiry_index_size == len(cache) == 1000
    clock.advance(20)  # past every original deadline, before any slid one
    assert cache.cleanup_expired() == 0
    assert cache.expiry_index_size == len(cache) == 1000

    # Many short-lived TTL'd entries inserted and deleted: the index follows the cache.
    for i in range(20_000):
        cache.insert(f"t{i}", i, 5)
        cache.remove(f"t{i}")
        assert cache.expiry_index_size <= 2 * len(cache) + 64
    # Overwrites with ever shorter TTLs push new records; the index is still bounded.
    for i in range(20_000):
        cache.insert("hot", i, 10_000 - i * 0.1)
        assert cache.expiry_index_size <= 2 * len(cache) + 64
    # Removing most entries shrinks the index along with the cache.
    for i in range(1000):
        cache.remove(f"s{i}")
        assert cache.expiry_index_size <= 2 * len(cache) + 64
    assert len(cache) == 1
    cache.remove("hot")
    assert cache.expiry_index_size <= 64


def test_the_expiry_index_is_tidied_a_little_per_write_and_still_expires_all() -> None:
    """Each eviction leaves a stale record in the expiry index. The index is
    tidied a few records per write, never rebuilt whole in one call (that held
    the event loop 40-140 ms per 100k evictions, issue 18), and a sweep while
    a tidy is under way still finds every due entry in either part."""
    cache, clock, _, _ = make(1000)
    bound = 2 * 1000 + 64
    tidying = 0
    i = 0
    while i < 20_000 or not cache._old:  # stop while a tidy is under way
        clock.advance(0.001)
        cache.insert(f"s{i}", i, 10 + (i % 7))  # a full cache: each insert evicts one
        assert cache.expiry_index_size <= bound + 16
        tidying += bool(cache._old)
        i += 1
    assert tidying > 500  # tidied over many writes, not in one
    clock.advance(30)  # every deadline passed
    assert cache.cleanup_expired() == 1000
    assert len(cache) == 0 and cache.next_deadline() is None
    assert cache.expiry_index_size == 0


def test_a_write_leaves_the_collector_only_what_it_keeps() -> None:
    """A write into a full cache leaves two new objects the cyclic collector
    tracks, its entry and its expiry record, also while the expiry index is
    tidied. The collector's young generation is what each of its collections
    walks: compiled with mypyc, a record moved by the tidy used to become a
    new tuple, and a filed one two (young collections of 40-70 ms under
    sustained writes, issue 18)."""
    clock = FakeClock()
    cache: SessionCache[str, int] = SessionCache(2000, clock=clock, default_ttl=3600.0)
    keys = (f"s{i}" for i in itertools.count())
    # TTLs that differ, so that the session evicted is not always the next due
    # (whose record eviction drops at once): stale records build up.
    ttls = itertools.cycle([3600.0 + i for i in range(7)])
    while not cache._old:  # full, and stale records enough to start a tidy
        cache.insert(next(keys), 0, next(ttls))
    writes = 1000  # fewer than the cache holds: every one is kept
    batch = [(next(keys), next(ttls)) for _ in range(writes)]
    tidying = 0
    gc.collect()
    gc.freeze()  # what exists now is not counted below
    gc.disable()
    try:
        for key, ttl in batch:
            clock.advance(0.001)
            cache.insert(key, 0, ttl)
            tidying += bool(cache._old)
        young = len(gc.get_objects(0))
    finally:
        gc.enable()
        gc.unfreeze()
    assert tidying > 100  # the tidy ran during these writes
    assert young <= 2 * writes + 20


def test_a_load_of_sessions_written_once_leaves_no_stale_expiry_records() -> None:
    """Sessions written once with one TTL are evicted in the order they come
    due: each eviction drops its expiry record at once, so the index stays
    the size of the cache and is never tidied (a tidy moved 32 records per
    write for thousands of writes: event-loop iterations of 30-80 ms under
    sustained writes, issue 18)."""
    clock = FakeClock()
    cache: SessionCache[str, int] = SessionCache(1000, clock=clock, default_ttl=3600.0)
    for i in range(20_000):
        if i % 16 == 0:
            clock.advance(0.001)  # a batch of 16 writes per clock step, as pipelined
        cache.insert(f"s{i}", i)
        assert cache.expiry_index_size == len(cache)
        assert not cache._old
    assert cache.evictions_max_sessions == 19_000
    clock.advance(3601)
    assert cache.cleanup_expired() == 1000
    assert cache.expiry_index_size == 0


def test_an_eviction_refiles_a_few_slid_records_not_all() -> None:
    """When every session was read since it was filed, every record at the top
    of the expiry index has slid. An eviction re-files a few of them (the sweep
    re-files the rest when they come due), not all at once in one write."""
    clock = FakeClock()
    cache: SessionCache[str, int] = SessionCache(1000, clock=clock, default_ttl=60.0)
    for i in range(1000):
        cache.insert(f"s{i}", i)
    clock.advance(10)
    for i in range(1000):
        assert cache.get(f"s{i}") == i  # slides every deadline; no record moves

    def filed_as(key: str) -> int:  # the sequence number of the key's record
        entry = cache.find(key)
        assert entry is not None and entry._filed != float("inf")
        return entry._seq

    filed = {f"s{i}": filed_as(f"s{i}") for i in range(1000)}
    cache.insert("new", 0)  # evicts s0
    moved = sum(1 for key, seq in filed.items() if key in cache and filed_as(key) != seq)
    assert 1 <= moved <= 3  # with s0's stale record dropped: four looked at
    assert cache.expiry_index_size == len(cache)
    clock.advance(61)
    assert cache.cleanup_expired() == 1000
    assert cache.expiry_index_size == 0


def test_defect_e_evictions_during_load_counted_once() -> None:
    """Evictions caused by a read-through load were lost or counted twice."""
    cache, _, listener, store = make(3)
    store.rows["cold"] = Entry("C", created_at=0.0, ttl=None)
    for key in "abc":
        cache.insert(key, key)
    store.calls.clear()
    assert cache.get_or_load("cold") == "C"
    assert cache.evictions_max_sessions == 1
    assert listener.events == [("a", "a", Cause.EVICTED, EvictionReason.MAX_SESSIONS)]
    assert store.calls == [("load", "cold"), ("on_evict", "a", "a", Cause.EVICTED)]
    assert cache.list() == ["cold", "c", "b"]
    assert (cache.misses, cache.loads_found) == (1, 1)

    # Under a memory bound a big loaded value pushes several entries out: each once.
    cache2, _, listener2, store2 = make(100, max_memory=12)
    for key in "abc":
        cache2.insert(key, "xx")  # 3 bytes each
    store2.rows["big"] = Entry("y" * 6, created_at=0.0)  # 9 bytes
    assert cache2.get_or_load("big") == "y" * 6
    assert cache2.evictions_max_memory == 2
    assert [(k, c, r) for k, _, c, r in listener2.events] == [
        ("a", Cause.EVICTED, EvictionReason.MAX_MEMORY),
        ("b", Cause.EVICTED, EvictionReason.MAX_MEMORY),
    ]
    assert cache2.memory == 12


# --------------------------------------------------------------------------------------
# Read-through counters, import hygiene.


def test_get_or_load_counts_found_absent_error() -> None:
    cache, clock, _, store = make()
    store.rows["k"] = Entry("v", created_at=0.0, ttl=60, deadline=clock.now + 1)
    assert cache.get_or_load("absent") is None
    assert cache.get_or_load("k") == "v"
    assert cache.ttl("k") == 60  # admitted as an access: its sliding TTL renewed
    assert cache.get_or_load("k") == "v"  # now a plain hit
    store.fail = True
    with pytest.raises(OSError):
        cache.get_or_load("other")
    assert (cache.loads_found, cache.loads_absent, cache.loads_error) == (1, 1, 1)
    assert (cache.hits, cache.misses) == (1, 3)
    stats = cache.stats()
    assert (stats.loads_found, stats.loads_absent, stats.loads_error) == (1, 1, 1)


def test_import_is_light() -> None:
    code = (
        "import sys; from sessiond.cache import SessionCache; "
        "heavy = {'asyncio', 'yaml', 'structlog', 'prometheus_client', 'hiredis'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------------------
# Regressions for bugs found in the core since, and corners of the expiry index.


def test_sliding_entry_is_refiled_by_sweep_and_expires_later() -> None:
    cache, clock, listener, _ = make()
    cache.insert("s", "v", 10)
    clock.advance(6)
    cache.get("s")  # deadline now +10 from here; its heap record still says the old one
    clock.advance(6)  # past the original deadline
    assert cache.sweep() == 0
    assert "s" in cache
    clock.advance(4)  # at the slid deadline
    assert cache.sweep() == 1
    assert listener.events == [("s", "v", Cause.EXPIRED, None)]
    assert len(cache) == 0 and cache.expiry_index_size == 0


def test_slid_entry_keeps_a_record_after_sweep() -> None:
    cache, clock, _, _ = make()
    cache.insert("s", "v", 10)
    clock.advance(6)
    cache.get("s")
    clock.advance(6)
    cache.sweep()
    assert cache.expiry_index_size == 1
    next_deadline = cache.next_deadline()
    assert next_deadline is not None and next_deadline <= clock.now + 4
    clock.advance(4)
    assert cache.sweep() == 1


def test_keep_ttl_without_sliding_keeps_the_deadline() -> None:
    cache, clock, _, _ = make(sliding=False)
    cache.insert("s", 1, 10)
    clock.advance(6)
    cache.insert("s", 2, keep_ttl=True)
    assert cache.ttl("s") == 4
    cache.sliding = True
    cache.insert("s", 3, keep_ttl=True)  # a write renews a sliding TTL
    assert cache.ttl("s") == 10
    cache.set_deadline("s", clock.now + 3)
    cache.insert("s", 4, keep_ttl=True)  # an absolute deadline is kept as is
    assert cache.ttl("s") == 3


def test_write_with_past_deadline_evicts_nobody_and_is_not_stored() -> None:
    cache, clock, listener, store = make(3)
    for key in "abc":
        cache.insert(key, 1)
    store.calls.clear()
    cache.insert("d", 1, deadline=clock.now - 1)
    cache.insert("e", 1, -5)
    assert sorted(cache.keys()) == ["a", "b", "c"]
    assert cache.evictions_max_sessions == 0
    assert [(k, c) for k, _, c, _ in listener.events] == [
        ("d", Cause.EXPIRED),
        ("e", Cause.EXPIRED),
    ]
    assert store.calls == [("delete", "d"), ("delete", "e")]
    listener.events.clear()
    cache.insert("a", 2, deadline=clock.now)  # overwriting: the old value is replaced
    assert [(k, v, c) for k, v, c, _ in listener.events] == [
        ("a", 1, Cause.REPLACED),
        ("a", 2, Cause.EXPIRED),
    ]
    assert "a" not in store.rows and len(cache) == 2


def test_invalidating_an_expired_entry_expires_it() -> None:
    cache, clock, listener, store = make()
    cache.insert("s", "v", 5)
    clock.advance(5)
    assert not cache.invalidate("s")
    assert listener.events == [("s", "v", Cause.EXPIRED, None)]
    assert "s" not in store.rows
    assert cache.expirations == 1


def test_lru_victim_past_its_deadline_expires_instead_of_being_evicted() -> None:
    cache, clock, listener, store = make(2)
    cache.insert("old", "v", 5)
    cache.insert("b", "w")
    clock.advance(5)
    cache.insert("c", "x")
    assert listener.events == [("old", "v", Cause.EXPIRED, None)]
    assert "old" not in store.rows  # an eviction would have kept it in the store for good
    assert (cache.expirations, cache.evictions_max_sessions) == (1, 0)


def test_list_count_zero_is_empty() -> None:
    cache, _, _, _ = make()
    cache.insert("a", 1)
    assert cache.list(count=0) == []
    assert cache.list(count=1) == ["a"]


def test_default_ttl_zero_means_no_expiry_even_when_assigned() -> None:
    cache, clock, _, _ = make(default_ttl=0)
    assert cache.default_ttl is None
    cache.default_ttl = 0  # e.g. a hot reload assigning the config value as is
    cache.insert("s", "v")
    clock.advance(10**6)
    assert cache.get("s") == "v"


def test_set_ttl_set_deadline_persist() -> None:
    cache, clock, listener, store = make(default_ttl=100)
    cache.insert("s", "v")
    assert cache.set_ttl("s", 5)
    assert cache.ttl("s") == 5
    assert cache.set_deadline("s", clock.now + 50)
    cache.get("s")  # an absolute deadline does not slide
    assert cache.ttl("s") == 50
    assert cache.persist("s")
    assert cache.ttl("s") is None
    assert not cache.persist("s")  # nothing to remove
    assert cache.set_ttl("s", 100)
    assert cache.set_ttl("s", 0)  # 0 (like None) persists
    assert cache.ttl("s") is None
    assert cache.set_deadline("s", clock.now)  # a deadline already reached expires it
    assert listener.events == [("s", "v", Cause.EXPIRED, None)]
    assert "s" not in store.rows
    assert not cache.set_ttl("s", 5)
    assert cache.expiry_index_size <= 64


def test_earlier_deadline_is_swept_on_time() -> None:
    cache, clock, listener, _ = make()
    cache.insert("s", "v", 100)
    cache.insert("t", "w", 100)
    assert cache.set_ttl("s", 5)
    assert cache.set_deadline("t", clock.now + 7)
    cache.insert("u", "x", 100)
    cache.insert("u", "y", 6)  # an overwrite with a shorter TTL
    clock.advance(5)
    assert cache.sweep() == 1
    clock.advance(1)
    assert cache.sweep() == 1
    clock.advance(1)
    assert cache.sweep() == 1
    assert [k for k, _, c, _ in listener.events if c is Cause.EXPIRED] == ["s", "u", "t"]


def test_every_entry_is_still_swept_after_the_index_is_rebuilt() -> None:
    cache, clock, _, _ = make()
    for i in range(20):
        cache.insert(f"s{i}", i, 10 + i)
    cache.insert("hot", 0, 600)
    for i in range(200):  # ever earlier deadlines: each pushes a record, forcing rebuilds
        assert cache.set_deadline("hot", clock.now + 500 - i)
    assert cache.expiry_index_size <= 2 * len(cache) + 64
    clock.advance(30)
    assert cache.sweep(limit=10_000) == 20
    assert list(cache.keys()) == ["hot"]


def test_sweep_removes_every_expired_entry_within_its_limit() -> None:
    cache, clock, _, _ = make()
    for i in range(10):
        cache.insert(f"e{i}", i, 1 + i % 3)
    for i in range(5):
        cache.insert(f"p{i}", i, 100)
    clock.advance(3)
    assert cache.sweep(limit=1000) == 10
    assert sorted(cache.keys()) == [f"p{i}" for i in range(5)]
    for i in range(10):
        cache.insert(f"e{i}", i, 1)
    clock.advance(1)
    assert cache.sweep(limit=4) == 4  # the limit bounds the work of one call
    while cache.sweep(limit=4):
        pass
    assert len(cache) == 5


def test_admit_without_sliding_keeps_the_stored_deadline() -> None:
    cache, clock, _, store = make(sliding=False)
    store.rows["s"] = Entry("v", created_at=0.0, ttl=60, deadline=clock.now + 10)
    assert cache.get_or_load("s") == "v"
    assert cache.ttl("s") == 10
    store.rows["x"] = Entry("v", created_at=0.0, ttl=60, deadline=clock.now)
    assert cache.get_or_load("x") is None  # expired in the store: not admitted
    assert "x" not in cache


def test_admit_over_a_live_entry_replaces_it_in_the_counts() -> None:
    """``admit`` of a key already in memory (a library use; the daemon admits
    only missing keys) takes the old entry out of ``memory`` and ``expiring``."""
    cache, clock, _, _ = make()
    cache.insert("k", "old", 30)
    assert (cache.memory, cache.expiring) == (len("k") + len("old"), 1)
    cache.admit("k", Entry("newer", created_at=clock.now))  # no deadline
    assert (cache.memory, cache.expiring) == (len("k") + len("newer"), 0)
    cache.admit("k", Entry("v", created_at=clock.now, deadline=clock.now + 5))
    assert (cache.memory, cache.expiring, len(cache)) == (len("k") + len("v"), 1, 1)


def test_admit_oldest_fills_only_the_room_left_behind_everything_else() -> None:
    """The warm start's admission: each entry goes in as the least recently
    used, nothing is evicted or saved for it, a held key or an expired entry
    is left out, and it says when memory is full (sessions or bytes)."""
    cache, clock, listener, store = make(4, max_memory=16)
    cache.insert("new", "v")  # a client's write: newer than any stored row
    assert cache.admit_oldest("s1", Entry("v1", created_at=0.0, deadline=clock.now + 5))
    assert cache.admit_oldest("s0", Entry("v0", created_at=0.0))
    assert cache.admit_oldest("new", Entry("stored", created_at=0.0))  # held: left out
    assert cache.admit_oldest("gone", Entry("v", created_at=0.0, deadline=clock.now))
    assert cache.list() == ["new", "s1", "s0"]
    assert cache.get("new") == "v" and (cache.memory, cache.expiring) == (12, 1)
    assert not cache.admit_oldest("big", Entry("vvv", created_at=0.0))  # 18 bytes > 16
    assert cache.admit_oldest("x", Entry("", created_at=0.0))
    assert not cache.admit_oldest("y", Entry("", created_at=0.0))  # 4 sessions
    assert cache.list() == ["new", "s1", "s0", "x"]
    assert listener.events == [] and [c[:2] for c in store.calls] == [("save", "new")]
    clock.advance(5)
    assert cache.sweep() == 1 and "s1" not in cache  # filed for expiry as any entry


def test_resize_shrinks_at_once() -> None:
    cache, _, listener, _ = make(5)
    for key in "abcde":
        cache.insert(key, "vv")
    assert cache.resize(max_sessions=2) == 3
    assert cache.list() == ["e", "d"]
    assert cache.resize(max_memory=3) == 1
    assert cache.list() == ["e"]
    assert [r for _, _, _, r in listener.events] == [EvictionReason.MAX_SESSIONS] * 3 + [
        EvictionReason.MAX_MEMORY
    ]
    with pytest.raises(ValueError):
        cache.resize(max_sessions=0)
    with pytest.raises(ValueError):
        cache.resize(max_memory=-1)
