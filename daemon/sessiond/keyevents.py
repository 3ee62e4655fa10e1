"""Keyspace event classes: Redis' ``notify-keyspace-events`` letters and bits.

Imports nothing: the config validates the letters with it, the keyspace and
the command handlers name the class of each event they send with its bits
(as Redis' ``notifyKeyspaceEvent(NOTIFY_STRING, "set", key, db)``), and the
pub/sub hub formats the flags back for ``CONFIG GET``.
"""

from __future__ import annotations

from typing import Final

# Redis' bits (server.h), so that a value reads the same in both.
NOTIFY_KEYSPACE: Final = 1 << 0  # K: __keyspace@0__:<key> <event>
NOTIFY_KEYEVENT: Final = 1 << 1  # E: __keyevent@0__:<event> <key>
NOTIFY_GENERIC: Final = 1 << 2  # g: del, expire, persist, rename_from, copy_to...
NOTIFY_STRING: Final = 1 << 3  # $: set, incrby, append...
NOTIFY_LIST: Final = 1 << 4  # l
NOTIFY_SET: Final = 1 << 5  # s
NOTIFY_HASH: Final = 1 << 6  # h
NOTIFY_ZSET: Final = 1 << 7  # z
NOTIFY_EXPIRED: Final = 1 << 8  # x: expired
NOTIFY_EVICTED: Final = 1 << 9  # e: evicted
NOTIFY_STREAM: Final = 1 << 10  # t
NOTIFY_KEY_MISS: Final = 1 << 11  # m: keymiss (not part of A)
NOTIFY_MODULE: Final = 1 << 13  # d
NOTIFY_NEW: Final = 1 << 14  # n: new (not part of A)
NOTIFY_ALL: Final = (
    NOTIFY_GENERIC
    | NOTIFY_STRING
    | NOTIFY_LIST
    | NOTIFY_SET
    | NOTIFY_HASH
    | NOTIFY_ZSET
    | NOTIFY_EXPIRED
    | NOTIFY_EVICTED
    | NOTIFY_STREAM
    | NOTIFY_MODULE
)  # A

# Every letter, in the order Redis' error message lists them.
LETTERS: Final = "Ag$lshzxeKEtmdn"
_BITS: Final = {
    "A": NOTIFY_ALL,
    "g": NOTIFY_GENERIC,
    "$": NOTIFY_STRING,
    "l": NOTIFY_LIST,
    "s": NOTIFY_SET,
    "h": NOTIFY_HASH,
    "z": NOTIFY_ZSET,
    "x": NOTIFY_EXPIRED,
    "e": NOTIFY_EVICTED,
    "K": NOTIFY_KEYSPACE,
    "E": NOTIFY_KEYEVENT,
    "t": NOTIFY_STREAM,
    "m": NOTIFY_KEY_MISS,
    "d": NOTIFY_MODULE,
    "n": NOTIFY_NEW,
}
# The classes after A, in the order Redis writes them back.
_CLASSES: Final = "g$lshzxetdn"


def parse_events(text: str) -> int | None:
    """The flags ``text`` names (Redis' ``keyspaceEventsStringToFlags``);
    ``None`` if it holds a character that names no class."""
    flags = 0
    for char in text:
        bits = _BITS.get(char)
        if bits is None:
            return None
        flags |= bits
    return flags


def format_events(flags: int) -> str:
    """``flags`` as Redis writes them (``keyspaceEventsFlagsToString``):
    ``A`` for every class it covers, then the others, then ``K``, ``E``, ``m``."""
    if flags & NOTIFY_ALL == NOTIFY_ALL:
        out = "A" + ("n" if flags & NOTIFY_NEW else "")
    else:
        out = "".join(c for c in _CLASSES if flags & _BITS[c])
    if flags & NOTIFY_KEYSPACE:
        out += "K"
    if flags & NOTIFY_KEYEVENT:
        out += "E"
    if flags & NOTIFY_KEY_MISS:
        out += "m"
    return out


def sends_events(flags: int) -> bool:
    """Whether ``flags`` send anything: a channel kind (K or E) and a class."""
    return bool(flags & (NOTIFY_KEYSPACE | NOTIFY_KEYEVENT)) and bool(
        flags & ~(NOTIFY_KEYSPACE | NOTIFY_KEYEVENT)
    )
