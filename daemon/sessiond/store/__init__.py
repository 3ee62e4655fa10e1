"""Persistence: the store interface (:mod:`.api`) and its backends."""

from .api import (
    HASH_SPACE,
    Change,
    Hook,
    Row,
    Store,
    StoreError,
    TableCounts,
    TableSlice,
    scan_hash,
)
from .sqlite import APPLICATION_ID, SCHEMA_VERSION, SQLiteStore

__all__ = [
    "APPLICATION_ID",
    "HASH_SPACE",
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
