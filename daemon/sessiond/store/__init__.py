"""Persistence: the store interface (:mod:`.api`), its SQLite backend and the
PostgreSQL one that several hosts share (:mod:`.postgres`, imported by whoever
uses it: psycopg is loaded only then).

The backend's parts, each with its own interface: :mod:`.files` (lock,
schema, checks), :mod:`.log` (the append-only log), :mod:`.overlay` (changes
not yet in the table), :mod:`.compactor` (log into table), :mod:`.reads`
(table queries), and :mod:`.sqlite`, the facade that schedules them.
"""

from .api import (
    HASH_SPACE,
    KIND_STRING,
    Change,
    Coherence,
    Decision,
    Hook,
    Outage,
    Renewal,
    Row,
    SharedStore,
    Store,
    StoreError,
    TableCounts,
    TableSlice,
    scan_hash,
)
from .files import APPLICATION_ID, SCHEMA_VERSION
from .sqlite import SQLiteStore

__all__ = [
    "APPLICATION_ID",
    "HASH_SPACE",
    "KIND_STRING",
    "SCHEMA_VERSION",
    "Change",
    "Coherence",
    "Decision",
    "Hook",
    "Outage",
    "Renewal",
    "Row",
    "SQLiteStore",
    "SharedStore",
    "Store",
    "StoreError",
    "TableCounts",
    "TableSlice",
    "scan_hash",
]
