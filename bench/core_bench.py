"""Benchmark of the cache core: SessionCache against cachetools' TTLCache and LRUCache.

    python bench/core_bench.py            # 1M ops per run, best of 5
    python bench/core_bench.py --quick    # 200k ops, best of 3

Workloads (the key sequence is precomputed with a seeded RNG before timing; keys follow
a Zipf-like skew over --keys keys, the capacity is --capacity so that eviction happens):

* ``zipf-90get``: 90% get / 10% set; a get that misses sets the key (cache-aside).
* ``zipf-set``: 100% set.
* ``expiry``: 50% get (cache-aside) / 50% set with a short TTL on a fake clock that
  advances every op, so entries expire constantly. TTLCache expires on every write;
  SessionCache expires lazily on access and by ``sweep()`` every --sweep-every ops (what
  the daemon's sweep task does). SessionCache runs without sliding here, to match
  TTLCache's semantics; ``expiry-sliding`` is the daemon's default (sliding) for reference.

Prints ops/s (best of N) and hit rate per cache per workload, and the ratios
SessionCache/TTLCache and SessionCache/LRUCache. LRUCache has no TTL, so it is not run on
the expiry workloads.
"""

from __future__ import annotations

import argparse
import functools
import operator
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "daemon"))

from cachetools import LRUCache, TTLCache
from sessiond.cache import SessionCache

VALUE = "v" * 64


def zipf_keys(n_ops: int, n_keys: int, seed: int) -> list[str]:
    """Skewed key choice without numpy: ``int(n ** u)`` for uniform ``u`` is
    log-uniform over [1, n), i.e. P(k) ~ 1/k, shuffled so hot keys are not just the
    small ids."""
    rng = random.Random(seed)
    names = [f"sess:{i:08x}" for i in range(n_keys)]
    rng.shuffle(names)
    return [names[int(n_keys ** rng.random()) - 1] for _ in range(n_ops)]


def op_kinds(n_ops: int, get_share: float, seed: int) -> list[bool]:
    rng = random.Random(seed + 1)
    return [rng.random() < get_share for _ in range(n_ops)]


@dataclass
class Workload:
    name: str
    keys: list[str]
    gets: list[bool]
    expiring: bool = False
    sliding: bool = True


@dataclass
class Result:
    ops_per_s: float
    hit_rate: float


class Clock:
    """A fake clock both caches read through the same C-level callable."""

    def __init__(self) -> None:
        self.cell = [0.0]
        self.read = cast(Callable[[], float], functools.partial(operator.getitem, self.cell, 0))


# ---------------------------------------------------------------------------- runners
# Each runner returns the number of gets that hit; the loops are kept as alike as the
# two APIs allow (method lookups hoisted out of the loop for both).


def run_session(wl: Workload, capacity: int, ttl: float, step: float, sweep_every: int) -> int:
    clock = Clock()
    cache: SessionCache[str, str] = SessionCache(
        capacity,
        default_ttl=ttl if wl.expiring else 3600.0,
        sliding=wl.sliding,
        clock=clock.read if wl.expiring else time.time,
    )
    get, insert = cache.get, cache.insert
    hits = 0
    if not wl.expiring:
        for is_get, key in zip(wl.gets, wl.keys, strict=True):
            if is_get:
                if get(key) is None:
                    insert(key, VALUE)
                else:
                    hits += 1
            else:
                insert(key, VALUE)
        return hits
    cell, sweep = clock.cell, cache.sweep
    now = 0.0
    for i, (is_get, key) in enumerate(zip(wl.gets, wl.keys, strict=True)):
        now += step
        cell[0] = now
        if i % sweep_every == 0:
            sweep()
        if is_get:
            if get(key) is None:
                insert(key, VALUE)
            else:
                hits += 1
        else:
            insert(key, VALUE)
    return hits


def run_cachetools(wl: Workload, cache: Any, clock: Clock | None, step: float) -> int:
    get = cache.get
    setitem = cache.__setitem__
    hits = 0
    if clock is None:
        for is_get, key in zip(wl.gets, wl.keys, strict=True):
            if is_get:
                if get(key) is None:
                    setitem(key, VALUE)
                else:
                    hits += 1
            else:
                setitem(key, VALUE)
        return hits
    cell = clock.cell
    now = 0.0
    for is_get, key in zip(wl.gets, wl.keys, strict=True):
        now += step
        cell[0] = now
        if is_get:
            if get(key) is None:
                setitem(key, VALUE)
            else:
                hits += 1
        else:
            setitem(key, VALUE)
    return hits


def best_of(repeats: int, fn: Callable[[], int], n_ops: int, n_gets: int) -> Result:
    best = float("inf")
    hits = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        hits = fn()
        best = min(best, time.perf_counter() - t0)
    return Result(n_ops / best, hits / n_gets if n_gets else 0.0)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=1_000_000, help="operations per run")
    ap.add_argument("--keys", type=int, default=100_000, help="distinct keys")
    ap.add_argument("--capacity", type=int, default=10_000, help="max entries of each cache")
    ap.add_argument("--repeats", type=int, default=5, help="runs per cell; the best counts")
    ap.add_argument("--ttl", type=float, default=1.0, help="TTL of the expiry workload (s)")
    ap.add_argument(
        "--ops-per-ttl",
        type=int,
        default=5_000,
        help="expiry workload: ops in one TTL (the fake clock's step is ttl/this)",
    )
    ap.add_argument("--sweep-every", type=int, default=100, help="SessionCache sweep period")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="200k ops, best of 3")
    args = ap.parse_args(argv)
    if args.quick:
        args.ops, args.repeats = min(args.ops, 200_000), min(args.repeats, 3)

    keys = zipf_keys(args.ops, args.keys, args.seed)
    workloads = [
        Workload("zipf-90get", keys, op_kinds(args.ops, 0.9, args.seed)),
        Workload("zipf-set", keys, [False] * args.ops),
        Workload("expiry", keys, op_kinds(args.ops, 0.5, args.seed), True, sliding=False),
        Workload("expiry-sliding", keys, op_kinds(args.ops, 0.5, args.seed), True),
    ]
    step = args.ttl / args.ops_per_ttl
    cap = args.capacity
    print(
        f"python {sys.version.split()[0]}, {args.ops:,} ops per run, {args.keys:,} keys, "
        f"capacity {cap:,}, best of {args.repeats}"
    )
    header = (
        f"{'workload':<15} {'SessionCache':>14} {'TTLCache':>14} {'LRUCache':>14} "
        f"{'S/TTL':>6} {'S/LRU':>6}  hit rate S / TTL / LRU"
    )
    print(header)
    print("-" * len(header))
    for wl in workloads:
        n_gets = sum(wl.gets)

        def session(wl: Workload = wl) -> int:
            return run_session(wl, cap, args.ttl, step, args.sweep_every)

        def ttlcache(wl: Workload = wl) -> int:
            if wl.expiring:
                clock = Clock()
                cache: TTLCache[str, str] = TTLCache(cap, ttl=args.ttl, timer=clock.read)
                return run_cachetools(wl, cache, clock, step)
            return run_cachetools(wl, TTLCache(cap, ttl=3600), None, step)

        def lrucache(wl: Workload = wl) -> int:
            return run_cachetools(wl, LRUCache(cap), None, step)

        s = best_of(args.repeats, session, args.ops, n_gets)
        t = best_of(args.repeats, ttlcache, args.ops, n_gets)
        lru = None if wl.expiring else best_of(args.repeats, lrucache, args.ops, n_gets)
        lru_ops = "—" if lru is None else f"{lru.ops_per_s:,.0f}"
        lru_ratio = "—" if lru is None else f"{s.ops_per_s / lru.ops_per_s:.2f}"
        lru_hits = "—" if lru is None else f"{lru.hit_rate:.3f}"
        print(
            f"{wl.name:<15} {s.ops_per_s:>14,.0f} {t.ops_per_s:>14,.0f} {lru_ops:>14} "
            f"{s.ops_per_s / t.ops_per_s:>6.2f} {lru_ratio:>6}  "
            f"{s.hit_rate:.3f} / {t.hit_rate:.3f} / {lru_hits}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
