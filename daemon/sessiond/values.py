"""What a session's value can be: a string, a hash or a set.

In memory a value is ``bytes`` (a string), a ``dict`` of field to value (a
hash) or a ``set`` of members (a set); the cache counts a container's items
toward ``cache.max_memory``. A store keeps every value as bytes plus a *kind*:
a container is written as a RESP array of bulk strings (field, value, field,
value... for a hash), which a person can read in the database and which the
protocol's exact parser reads back. Knows nothing of the cache or the store.
"""

from __future__ import annotations

from typing import Final

from .protocol import ProtocolError, encode_bulks, parse_bulks
from .store.api import KIND_STRING

Hash = dict[bytes, bytes]
Members = set[bytes]
Value = bytes | Hash | Members

STRING: Final = KIND_STRING
HASH: Final = 1
SET: Final = 2


def type_name(value: Value) -> str:
    """The name TYPE replies with."""
    if isinstance(value, bytes):
        return "string"
    if isinstance(value, dict):
        return "hash"
    return "set"


def kind_of(value: Value) -> int:
    if isinstance(value, bytes):
        return STRING
    if isinstance(value, dict):
        return HASH
    return SET


def size(value: Value) -> int:
    """Bytes of a value: a string's length, a container's items' lengths."""
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, dict):
        return sum([len(field) + len(item) for field, item in value.items()])
    return sum([len(member) for member in value])


def encode(value: Value) -> tuple[int, bytes]:
    """The kind and bytes a store keeps for ``value``."""
    if isinstance(value, bytes):
        return STRING, value
    if isinstance(value, dict):
        items: list[bytes] = []
        for field, item in value.items():
            items.append(field)
            items.append(item)
        return HASH, encode_bulks(items)
    return SET, encode_bulks(list(value))


def decode(kind: int, data: bytes) -> Value:
    """The value of a store's ``(kind, bytes)``; ``ValueError`` if they do not
    make one (a store written by a newer sessiond, or damaged)."""
    if kind == STRING:
        return data
    try:
        items = parse_bulks(data)
    except ProtocolError as exc:
        raise ValueError(f"a stored value of kind {kind} does not parse: {exc}") from None
    if kind == HASH:
        if len(items) % 2:
            raise ValueError("a stored hash has a field without a value")
        return {items[i]: items[i + 1] for i in range(0, len(items), 2)}
    if kind == SET:
        return set(items)
    raise ValueError(f"unknown kind of stored value: {kind}")
