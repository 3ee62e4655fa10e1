"""Persistence: the store interface (:mod:`.api`) and its SQLite backend.

The backend's parts, each with its own interface: :mod:`.files` (lock,
schema, checks), :mod:`.log` (the append-only log), :mod:`.overlay` (changes
not yet in the table), :mod:`.compactor` (log into table), :mod:`.reads`
(table queries), and :mod:`.sqlite`, the facade that schedules them.
"""

from .api import (
    HASH_SPACE,
    KIND_STRING,
    Change,
    Hook,
    Row,
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
    "Hook",
    "Row",
    "SQLiteStore",
    "Store",
    "StoreError",
    "TableCounts",
    "TableSlice",
    "scan_hash",
]
