"""One-dimensional PostgreSQL arrays of a known element type, for psycopg.

The shared store sends a group commit as one call whose arguments are arrays,
one per column (:mod:`.pgsql`). Given plain lists, psycopg finds each array's
type by looking at its elements, at every statement, and then dumps it with a
generic dumper (nested lists, any element type) that runs Python per
element: at one SET a commit that was most of a commit's Python (cProfile:
about 550 of 830 calls; about 320 of 660 still with psycopg's dumper given
the type, 440 calls a commit in all with this one). Here a
list class per element type (:data:`Bytea`, :data:`Text`, :data:`Float8`,
:data:`Int2`, :data:`Int4`, :data:`Int8`) carries its type, and one dumper
writes PostgreSQL's binary array format (``array_send``: a header, one
dimension, then each element as a length and its bytes, -1 for NULL): a few
elements in a loop, more with calls that iterate in C (``map``, ``struct``,
``bytes.join``). :func:`dump` writes the same from a plain list, for the
group commit, which sends its arrays without psycopg. The module is
compiled (setup.py): at ``-c 1`` every SET is a commit of some sixteen
arrays.

Only :data:`ADAPTERS` knows these dumpers: connections made with it as their
context use them; psycopg's global adapters are left alone.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from functools import partial
from itertools import chain
from typing import Any, Final

import psycopg
from mypy_extensions import mypyc_attr
from psycopg.abc import AdaptContext
from psycopg.adapt import AdaptersMap, Dumper
from psycopg.pq import Format

ADAPTERS = AdaptersMap(psycopg.adapters)

# ndim, has nulls, element oid, then the one dimension: length, lower bound.
_HEAD = struct.Struct("!iiiii").pack
_EMPTY = struct.Struct("!iii").pack
_LENGTH = struct.Struct("!i").pack
_NULL = _LENGTH(-1)
# Up to this many elements, a loop: the iterators of ``many`` cost more to set
# up than they save. Compiled, instructions per dump (callgrind, 20,000 dumps,
# the calling loop included), before one element had a way of its own: a
# one-element bytea 11,497 -> 5,393, text 14,368 -> 6,083, float8 5,555 ->
# 4,572; 50 elements 102,187 either way.
_FEW = 8


class _Kind:
    """One list class's element type: the array's and the element's oid;
    ``one``, a non-NULL element's length and bytes; ``many``, those of a list
    without NULLs; the header of an empty array (``empty``: the whole array)
    and of one without NULLs of one element (``single``), made once: most of
    a one-SET commit's sixteen arrays are one or the other. A class, not a
    NamedTuple: compiled, its fields are read from a C struct, where a
    NamedTuple's went through Python attribute lookups (``kind.one(item)``
    was a method call looked up by name): with the tables below Final, a
    one-SET commit's dumps 20,989 -> 17,222 instructions (callgrind)."""

    __slots__ = ("array_oid", "element_oid", "empty", "many", "one", "single")

    def __init__(
        self,
        array_oid: int,
        element_oid: int,
        one: Callable[[Any], bytes],
        many: Callable[[list[Any]], Iterable[bytes]],
    ) -> None:
        self.array_oid = array_oid
        self.element_oid = element_oid
        self.one = one
        self.many = many
        self.empty = _EMPTY(0, 0, element_oid)
        self.single = _HEAD(1, 0, element_oid, 1, 1)


_KINDS: Final[dict[type, _Kind]] = {}
_NAMED: Final[dict[str, _Kind]] = {}  # the same by element type name, for dump()


def _dump(kind: _Kind, obj: list[Any]) -> bytes:
    count = len(obj)
    if not count:
        return kind.empty
    try:
        if count == 1 and (item := obj[0]) is not None:
            return kind.single + kind.one(item)
        nulls = None in obj
        if nulls or count <= _FEW:
            one = kind.one
            parts = [_HEAD(1, 1 if nulls else 0, kind.element_oid, count, 1)]
            for item in obj:
                parts.append(_NULL if item is None else one(item))
            return b"".join(parts)
        return _HEAD(1, 0, kind.element_oid, count, 1) + b"".join(kind.many(obj))
    except (struct.error, TypeError, UnicodeError) as exc:
        # As psycopg's own dumpers fail: the store handles psycopg.Error.
        raise psycopg.DataError(f"cannot send {type(obj).__name__}: {exc}") from None


# One class for every list class (not a subclass each, made at run time: a
# compiled method checks that its self is of exactly the class it was
# compiled in). psycopg reads ``format`` on the class: a Python class.
@mypyc_attr(native_class=False)
class _ArrayDumper(Dumper):
    format = Format.BINARY

    def __init__(self, cls: type, context: AdaptContext | None = None) -> None:
        super().__init__(cls, context)
        self.kind = _KINDS[cls]
        self.oid = self.kind.array_oid

    def dump(self, obj: list[Any]) -> bytes:
        return _dump(self.kind, obj)


def dump(element: str, items: list[Any]) -> bytes:
    """``items``, a plain list, in binary as an array of ``element`` (a key of
    :data:`BY_TYPE`), with no list of a class below to make first: the group
    commit's parameters (pgsql.commit_params)."""
    return _dump(_NAMED[element], items)


_HEADER = struct.Struct("!iii")  # dimensions, has nulls, element type
_DIMENSION = struct.Struct("!ii")  # length, lower bound
_INT4 = struct.Struct("!ii")  # an element's size, its value


def load_int4(data: bytes) -> list[int]:
    """A one-dimensional int4 array without nulls, from PostgreSQL's binary
    format (a decision's lock ids: pgsql.TRY_LOCK_KEYS)."""
    if not data or _HEADER.unpack_from(data)[0] == 0:
        return []
    count = _DIMENSION.unpack_from(data, _HEADER.size)[0]
    start = _HEADER.size + _DIMENSION.size
    return [_INT4.unpack_from(data, start + 8 * i)[1] for i in range(count)]


def _array(
    name: str, one: Callable[[Any], bytes], many: Callable[[list[Any]], Iterable[bytes]]
) -> type[list[Any]]:
    info = psycopg.adapters.types[name]
    cls: type[list[Any]] = type(f"{name.title()}Array", (list,), {"__slots__": ()})
    _KINDS[cls] = _NAMED[name] = _Kind(info.array_oid, info.oid, one, many)
    ADAPTERS.register_dumper(cls, _ArrayDumper)
    return cls


def _fixed(name: str, code: str) -> type[list[Any]]:
    """An array of a fixed-size type: each element its size, then ``code``'s bytes."""
    one = partial(struct.Struct("!i" + code).pack, struct.calcsize("!" + code))
    return _array(name, one, partial(map, one))


def _one_bytes(data: bytes) -> bytes:
    return _LENGTH(len(data)) + data


def _many_bytes(items: list[bytes]) -> Iterable[bytes]:
    return chain.from_iterable(zip(map(_LENGTH, map(len, items)), items, strict=True))


def _one_text(text: str) -> bytes:
    # str.encode, not text.encode: anything but a str fails with TypeError
    # (DataError for the store), as in _many_text, and not AttributeError.
    return _one_bytes(str.encode(text))


def _many_text(items: list[str]) -> Iterable[bytes]:
    return _many_bytes(list(map(str.encode, items)))


Bytea = _array("bytea", _one_bytes, _many_bytes)
Text = _array("text", _one_text, _many_text)
Float8 = _fixed("float8", "d")
Int2 = _fixed("int2", "h")
Int4 = _fixed("int4", "i")
Int8 = _fixed("int8", "q")

# The classes by PostgreSQL element type (pgsql.ROW_TYPES names them so).
BY_TYPE: dict[str, type[list[Any]]] = {
    "bytea": Bytea,
    "text": Text,
    "float8": Float8,
    "int2": Int2,
    "int4": Int4,
    "int8": Int8,
}
