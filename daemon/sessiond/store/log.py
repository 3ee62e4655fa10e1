"""The append-only log: what makes a change durable before it is acknowledged.

Owns the record format, appending a group commit as one ``write`` plus one
``fdatasync``, reading segments back (dropping a torn or corrupt tail), and
nothing else. It must never know about SQLite, the overlay, threads or the
event loop: :mod:`.sqlite` decides when to append, rotate and delete.

A segment file starts with an 8-byte magic and holds *frames*, one per group
commit::

    frame  = u32 length | u32 crc32(payload) | payload (length bytes)
    record = ROW    u8 1 | u8 kind | u8 flags | u32 key len | u32 value len |
                    u16 context len | f64 created | f64 updated | f64 accessed |
                    f64 ttl | f64 deadline | key | value | context (UTF-8)
           | DELETE u8 2 | u32 key len | key
           | FLUSH  u8 3                       (every session before it is gone)

little-endian; ``flags`` says which of context (1), ttl (2) and deadline (4)
are present. A segment may be allocated ahead (``fallocate``, its magic
written): its unwritten rest reads as zeros, where a zero frame header ends
the frames (a sessiond before allocation took each such header for an empty
frame, so it reads these segments too). A frame is acknowledged only after
its ``fdatasync`` returned, so a frame cut short by a crash (short, or its
checksum wrong) was never acknowledged: reading stops there, and what follows
in that segment is not trusted either. One checksum per frame, not per record:
the checksum of a whole commit is one C call (``zlib.crc32``), per record it
cost a Python call each.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from os import fdatasync, pwrite
from pathlib import Path
from typing import Any, Final, cast

from .api import Fields, Kept

# Final: compiled, a module's Final names are C globals; the others are
# looked up in the module's dict at each use (a frame's encode used seven).
MAGIC: Final = b"SESSLOG1"
OP_ROW: Final = 1
OP_DELETE: Final = 2
OP_FLUSH: Final = 3
_FRAME: Final = struct.Struct("<II")
_ROW: Final = struct.Struct("<BBBIIHddddd")
_KEY: Final = struct.Struct("<BI")
_FLUSH: Final = bytes([OP_FLUSH])
# Bound once: compiled, ``_ROW.pack`` at each use looked the method up anew.
_pack_frame: Final = _FRAME.pack
_pack_row: Final = _ROW.pack
_pack_key: Final = _KEY.pack
_HEADER_SIZE: Final = _FRAME.size
_crc32: Final = zlib.crc32
# A frame longer than this is taken for garbage (a commit holds at most every
# session once; 1 GiB is far beyond any this daemon writes).
_MAX_FRAME: Final = 1 << 30


class Corrupt(Exception):
    """A segment whose header is not a log segment's."""


def encode(batch: dict[bytes, Kept], cleared: bool) -> bytes:
    """One frame: a FLUSH first if ``cleared``, then each change of ``batch``."""
    parts: list[bytes] = [_FLUSH] if cleared else []
    # The rows as tuples of objects: typed as Fields, the compiled build would
    # convert each into a C struct (unboxing its floats) only to box them again
    # for pack().
    rows = cast("dict[bytes, tuple[Any, ...] | None]", batch)
    for key, fields in rows.items():
        if fields is None:
            parts.append(_pack_key(OP_DELETE, len(key)))
            parts.append(key)
            continue
        value: bytes = fields[0]
        context: str | None = fields[1]
        ttl = fields[5]
        deadline = fields[6]
        flags = 0
        ctx = b""
        if context is not None:
            flags = 1
            ctx = context.encode()
        if ttl is not None:
            flags |= 2
        else:
            ttl = 0.0
        if deadline is not None:
            flags |= 4
        else:
            deadline = 0.0
        # One call with every argument in place: a starred call built a list
        # and a tuple of them first (a third of this function's instructions).
        header = _pack_row(
            OP_ROW, fields[7], flags, len(key), len(value), len(ctx),
            fields[2], fields[3], fields[4], ttl, deadline,
        )  # fmt: skip
        parts.append(header)
        parts.append(key)
        parts.append(value)
        if context is not None:
            parts.append(ctx)
    # The payload joined, then its header in front: a copy of a few hundred
    # bytes costs less than packing the header into a bytearray through a
    # memoryview of the rest. With the packers bound once, a one-SET frame
    # went from 9.6k to 5.7k instructions (callgrind, compiled).
    payload = b"".join(parts)
    return _pack_frame(len(payload), _crc32(payload)) + payload


def decode(payload: bytes) -> Iterator[tuple[bytes, Kept] | None]:
    """The records of one frame's payload: ``(key, change)``, or ``None`` for
    FLUSH; a row as plain fields (what the overlay keeps)."""
    view = memoryview(payload)
    pos = 0
    end = len(payload)
    row_size = _ROW.size
    key_size = _KEY.size
    unpack_row = _ROW.unpack_from
    unpack_key = _KEY.unpack_from
    while pos < end:
        op = payload[pos]
        if op == OP_ROW:
            _, kind, flags, klen, vlen, clen, created, updated, accessed, ttl, deadline = (
                unpack_row(payload, pos)
            )
            pos += row_size
            key = bytes(view[pos : pos + klen])
            pos += klen
            value = bytes(view[pos : pos + vlen])
            pos += vlen
            context = str(view[pos : pos + clen], "utf-8") if flags & 1 else None
            pos += clen
            fields: Fields = (
                value,
                context,
                created,
                updated,
                accessed,
                ttl if flags & 2 else None,
                deadline if flags & 4 else None,
                kind,
            )
            yield key, fields
        elif op == OP_DELETE:
            _, klen = unpack_key(payload, pos)
            pos += key_size
            yield bytes(view[pos : pos + klen]), None
            pos += klen
        elif op == OP_FLUSH:
            pos += 1
            yield None
        else:
            raise ValueError(f"unknown record type {op} at offset {pos}")


def read_frames(path: Path) -> tuple[list[bytes], int, str | None]:
    """The intact frames of a segment, the offset where they end, and why
    reading stopped early (a torn or corrupt tail), if it did."""
    with open(path, "rb") as f:
        data = f.read()
    if _zeros_from(data, 0):
        # Empty or zeros: a segment is created empty (allocated: zeros, then
        # its magic) and gets its magic with the first commit, a crash in
        # between leaves it so.
        return [], 0, None
    if len(data) < len(MAGIC):
        return [], 0, "torn header"
    if data[: len(MAGIC)] != MAGIC:
        raise Corrupt(f"{path} is not a sessiond log segment")
    frames: list[bytes] = []
    pos = len(MAGIC)
    end = len(data)
    header = _HEADER_SIZE
    while pos < end:
        if end - pos < header:
            # Zeros: the end of an allocation too short for another header.
            return frames, pos, None if _zeros_from(data, pos) else "torn frame header"
        length, crc = _FRAME.unpack_from(data, pos)
        if not length:
            # No frame is empty: the segment's allocated, never written rest
            # (or a frame whose first bytes never reached the disk).
            return frames, pos, None if _zeros_from(data, pos) else "torn frame"
        if length > _MAX_FRAME or end - pos - header < length:
            return frames, pos, "torn frame"
        payload = data[pos + header : pos + header + length]
        if _crc32(payload) != crc:
            return frames, pos, "checksum mismatch"
        frames.append(payload)
        pos += header + length
    return frames, pos, None


def written_after(path: Path, offset: int) -> int:
    """Bytes from ``offset`` to the last one not zero in segment ``path``
    (what a dropped tail held, without the allocation's zeros after it)."""
    with open(path, "rb") as f:
        f.seek(offset)
        return len(f.read().rstrip(b"\0"))


def _zeros_from(data: bytes, pos: int) -> bool:
    """Whether ``data`` holds only zeros from ``pos`` on."""
    return data.count(0, pos) == len(data) - pos


class Pinned:
    """An open file by its name and the inode opened there. Before each
    commit the store asks whether the name still leads to that file (the log
    segment's, the database's): ``rm`` or ``mv`` of it or of its directory
    takes it away, and a copy put in its place (a restore, ``sed -i``) is
    another file, which the next start would read instead. One ``stat`` of
    the name, the cheapest question that tells all three apart: the link
    count of the open file missed a move and a replacement, ``access`` a
    replacement, and comparing whole identities in Python cost about 30k
    instructions a commit."""

    __slots__ = ("dev", "ino", "path")

    def __init__(self, path: str, fd: int) -> None:
        st = os.fstat(fd)
        self.path = path
        self.dev = st.st_dev
        self.ino = st.st_ino

    def here(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return self.matches(st)

    def matches(self, st: os.stat_result) -> bool:
        """Whether ``st`` (a ``stat`` of some name) is of the file opened."""
        return st.st_ino == self.ino and st.st_dev == self.dev


class Segment:
    """An open segment being appended to."""

    def __init__(self, number: int, fd: int, path: str) -> None:
        self.number = number
        self.fd = fd
        self.file = Pinned(path, fd)
        self.size = 0  # bytes known durable
        self.records = 0

    def append(self, frame: bytes | bytearray) -> None:
        """Write ``frame`` and wait until it is on disk. On failure the
        segment is cut back to its last durable byte, if it can be.

        Written in place (``pwrite``), over the zeros of a segment allocated
        ahead: its ``fdatasync`` then has no file size or block allocation to
        commit, only the frame's data. Interleaved against appending
        (bench/resp_bench.py --against, bench/RESULTS.md "Log segments allocated
        ahead"): 1.11x and 1.17x the durable SETs a second at -c 1."""
        data = frame if self.size else MAGIC + frame
        try:
            written = pwrite(self.fd, data, self.size)
            if written != len(data):
                raise OSError(28, "No space left on device (short write)")
            fdatasync(self.fd)
        except OSError:
            try:
                os.ftruncate(self.fd, self.size)
            except OSError:
                self.size = -1  # unknown: the caller must start a new segment
            raise
        self.size += len(data)

    @property
    def damaged(self) -> bool:
        return self.size < 0

    def linked(self) -> bool:
        """Whether this file is still the one at its name (:class:`Pinned`)."""
        return self.file.here()

    def close(self) -> None:
        os.close(self.fd)


class Replayed:
    """What a segment holds: the newest change per key since its last FLUSH,
    whether it has a FLUSH, how many changes it held, where its intact frames
    end and why reading stopped early (``None`` if it did not)."""

    __slots__ = ("changes", "cleared", "count", "end", "torn")

    def __init__(self) -> None:
        self.changes: dict[bytes, Kept] = {}
        self.cleared = False
        self.count = 0
        self.end = 0
        self.torn: str | None = None


def replay(path: Path) -> Replayed:
    """Read a segment back. Raises :class:`Corrupt` for a file that is not a
    segment or holds a record this version cannot read."""
    frames, end, torn = read_frames(path)
    out = Replayed()
    out.end, out.torn = end, torn
    changes = out.changes
    for payload in frames:
        try:
            for record in decode(payload):
                if record is None:
                    changes.clear()
                    out.cleared = True
                else:
                    changes[record[0]] = record[1]
                    out.count += 1
        except (ValueError, UnicodeDecodeError, struct.error) as exc:
            raise Corrupt(f"{path} holds a record this sessiond cannot read ({exc})") from None
    return out
