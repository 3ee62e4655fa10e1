"""Argument parsing shared by the command families, as Redis reads arguments."""

from __future__ import annotations

import re
from collections.abc import Iterator

from ..protocol import Error
from ..values import Hash, Members, Value
from . import errors

Args = list[bytes]

MAX_INT64 = 2**63 - 1
MIN_INT64 = -(2**63)
EXPIRY_UNITS = (b"EX", b"PX", b"EXAT", b"PXAT")

_INT64 = re.compile(rb"(?:0|-?[1-9][0-9]{0,18})\Z")


def parse_int64(data: bytes) -> int | None:
    """``data`` as Redis' ``string2ll`` reads a 64-bit integer: optional ``-``,
    no ``+``, spaces, underscores or leading zeros; ``None`` if it is not one."""
    if _INT64.match(data) is None:
        return None
    value = int(data)
    return value if MIN_INT64 <= value <= MAX_INT64 else None


def int_arg(arg: bytes, message: str = errors.NOT_INT) -> int:
    value = parse_int64(arg)
    if value is None:
        raise Error(message)
    return value


def text(arg: bytes) -> str:
    return arg.decode("utf-8", "replace")


def string(value: Value) -> bytes:
    """``value`` if it is a string, else the WRONGTYPE error."""
    if isinstance(value, bytes):
        return value
    raise Error(errors.WRONGTYPE)


def hash_of(value: Value) -> Hash:
    """``value`` if it is a hash, else the WRONGTYPE error."""
    if isinstance(value, dict):
        return value
    raise Error(errors.WRONGTYPE)


def members_of(value: Value) -> Members:
    """``value`` if it is a set, else the WRONGTYPE error."""
    if isinstance(value, set):
        return value
    raise Error(errors.WRONGTYPE)


def options(args: Args, start: int) -> Iterator[tuple[bytes, bytes]]:
    """``(NAME, value)`` pairs of trailing ``NAME value`` options; a name
    without its value is a syntax error."""
    if (len(args) - start) % 2:
        raise errors.syntax()
    for i in range(start, len(args), 2):
        yield args[i].upper(), args[i + 1]


def deadline_from(
    unit: bytes, amount: int, now: float, cmd: str
) -> tuple[float | None, float | None]:
    """(relative ttl, absolute deadline) for EX/PX/EXAT/PXAT with Redis' checks:
    positive, and in milliseconds (plus now, if relative) within 64 bits."""
    if amount <= 0:
        raise errors.invalid_expire(cmd)
    if unit == b"EX":
        if amount > (MAX_INT64 - int(now * 1000)) // 1000:
            raise errors.invalid_expire(cmd)
        return float(amount), None
    if unit == b"PX":
        if amount > MAX_INT64 - int(now * 1000):
            raise errors.invalid_expire(cmd)
        return amount / 1000.0, None
    if unit == b"EXAT":
        if amount > MAX_INT64 // 1000:
            raise errors.invalid_expire(cmd)
        return None, float(amount)
    return None, amount / 1000.0


def _glob_atoms(pattern: bytes) -> list[bytes | None]:
    """Redis' ``stringmatchlen`` pattern as a list of one-byte regex atoms, with
    ``None`` for a ``*``. Read exactly as Redis reads it: ``\\x`` is a literal,
    a class may be negated with ``^``, hold ranges (``z-a`` is ``a-z``) and
    escapes, and an unterminated ``[`` runs to the end of the pattern."""
    atoms: list[bytes | None] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 0x2A:  # '*'
            if not atoms or atoms[-1] is not None:
                atoms.append(None)
        elif c == 0x3F:  # '?'
            atoms.append(b".")
        elif c == 0x5B:  # '['
            i += 1
            negate = i < n and pattern[i] == 0x5E  # '^'
            if negate:
                i += 1
            ranges: list[tuple[int, int]] = []
            while True:
                left = n - i
                if left == 0:
                    i -= 1  # unterminated: the class ends with the pattern
                    break
                if left >= 2 and pattern[i] == 0x5C:  # '\'
                    i += 1
                    ranges.append((pattern[i], pattern[i]))
                elif pattern[i] == 0x5D:  # ']'
                    break
                elif left >= 3 and pattern[i + 1] == 0x2D:  # 'x-y'
                    lo, hi = sorted((pattern[i], pattern[i + 2]))
                    ranges.append((lo, hi))
                    i += 2
                else:
                    ranges.append((pattern[i], pattern[i]))
                i += 1
            body = b"".join(b"\\x%02x-\\x%02x" % r for r in ranges)
            if body:
                atoms.append(b"[" + (b"^" if negate else b"") + body + b"]")
            else:
                atoms.append(b"." if negate else b"(?!)")
        else:
            if c == 0x5C and i + 1 < n:  # '\x'
                i += 1
            atoms.append(b"\\x%02x" % pattern[i])
        i += 1
    return atoms


def glob_to_regex(pattern: bytes) -> re.Pattern[bytes]:
    """A Redis glob (``*``, ``?``, ``[abc]``, ``[^a]``, ``[a-z]``, ``\\x``) as a
    regex that matches the whole key. Between two stars every part has a fixed
    length, so the first place it fits is the best one: each is matched in an
    atomic group, and matching takes linear time however many stars there are
    (a plain translation backtracks exponentially: ``*a*a*a*a*a*a*a*b``)."""
    segments: list[list[bytes]] = [[]]
    for atom in _glob_atoms(pattern):
        if atom is None:
            segments.append([])
        else:
            segments[-1].append(atom)
    texts = [b"".join(segment) for segment in segments]
    regex = texts[0]
    if len(texts) > 1:
        regex += b"".join(b"(?>.*?" + text + b")" for text in texts[1:-1])
        regex += b".*" + texts[-1]
    return re.compile(regex + b"\\Z", re.DOTALL)
