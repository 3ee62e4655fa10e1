"""Persistence: the store interface the daemon needs beyond the cache's hook."""

from __future__ import annotations

from typing import Protocol

from .cache import Entry, PersistenceHook, SessionCache


class Store(PersistenceHook[bytes, bytes], Protocol):
    """A session store: the cache's write-through hook plus what whole-keyspace
    commands (DBSIZE, SCAN, KEYS, FLUSHDB) and warm start need."""

    warmed: int

    def count(self) -> int: ...

    def clear(self) -> None: ...

    def scan(
        self, cursor: int, count: int, memory: SessionCache[bytes, bytes]
    ) -> tuple[list[bytes], int]: ...

    def all_keys(self, memory: SessionCache[bytes, bytes]) -> list[bytes]: ...

    def lookup_pending(self, key: bytes) -> Entry[bytes] | bool | None: ...
