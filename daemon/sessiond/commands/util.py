"""Argument parsing shared by the command families, as Redis reads arguments."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from fractions import Fraction

from ..protocol import Error, Status
from ..values import Hash, Members, Value
from . import errors

Args = list[bytes]

MAX_INT64 = 2**63 - 1
MIN_INT64 = -(2**63)
UINT64_SPAN = 2**64
EXPIRY_UNITS = (b"EX", b"PX", b"EXAT", b"PXAT")

_INT64 = re.compile(rb"(?:0|-?[1-9][0-9]{0,18})\Z")
_CURSOR = re.compile(rb"([+-]?)([0-9]*)\Z")


def parse_int64(data: bytes) -> int | None:
    """``data`` as Redis' ``string2ll`` reads a 64-bit integer: optional ``-``,
    no ``+``, spaces, underscores or leading zeros; ``None`` if it is not one."""
    if _INT64.match(data) is None:
        return None
    value = int(data)
    return value if MIN_INT64 <= value <= MAX_INT64 else None


def timeout_ms(arg: bytes) -> int:
    """A timeout in milliseconds as Redis' getTimeoutFromObjectOrReply reads
    it (CLIENT PAUSE, WAIT): a 64-bit integer, not negative, whose deadline
    from now is still one."""
    ms = parse_int64(arg)
    if ms is None:
        raise Error("ERR timeout is not an integer or out of range")
    if ms < 0:
        raise Error("ERR timeout is negative")
    if ms > MAX_INT64 - int(time.time() * 1000):
        raise Error("ERR timeout is out of range")
    return ms


def parse_cursor(data: bytes) -> int | None:
    """A SCAN, HSCAN or SSCAN cursor as Redis 7.2 reads it (``strtoul``): any
    unsigned 64-bit number, with an optional sign (``-n`` wraps around to
    2^64 - n, as in C) and leading zeros, nothing else (no spaces); the empty
    string is 0. ``None`` (``ERR invalid cursor``) if it is not one."""
    m = _CURSOR.match(data)
    if m is None:
        return None
    sign, digits = m.groups()
    if not digits:
        return None if sign else 0
    digits = digits.lstrip(b"0")
    if len(digits) > 20:  # (int() refuses more than 4300 digits)
        return None
    value = int(digits or b"0")
    if value >= UINT64_SPAN:
        return None
    return (UINT64_SPAN - value) % UINT64_SPAN if sign == b"-" else value


def int_arg(arg: bytes, message: str = errors.NOT_INT) -> int:
    value = parse_int64(arg)
    if value is None:
        raise Error(message)
    return value


def positive_arg(arg: bytes, message: str = errors.NOT_INT) -> int:
    """A count as Redis' getPositiveLongFromObjectOrReply reads it: ``message``
    if it is not an integer, Redis' own error if it is negative."""
    value = int_arg(arg, message)
    if value < 0:
        raise Error(errors.MUST_BE_POSITIVE)
    return value


def count_arg(arg: bytes) -> int:
    """The count of SRANDMEMBER and HRANDFIELD, as Redis reads it: a 64-bit
    integer whose negation is one too (-2^63 is out of range)."""
    count = int_arg(arg)
    if count == MIN_INT64:
        raise errors.out_of_range(-MAX_INT64, MAX_INT64)
    return count


# The fewest bytes a reply's element takes on the wire (an empty bulk string).
_LEAST_ELEMENT = len(b"$0\r\n\r\n")


def check_repeats(limit: int, count: int, per: int = 1) -> None:
    """Refuse a negative count (SRANDMEMBER, HRANDFIELD: that many elements,
    repeats allowed, ``per`` each) whose reply could not be smaller than
    ``limit`` (limits.max_output_buffer): built whole on the event loop, a
    count of -2^62 took the daemon to 11 GB before it was killed, for a
    reply its client would have been dropped for anyway. Redis builds it."""
    if count < 0 and -count * per * _LEAST_ELEMENT > limit:
        raise Error(
            f"ERR a count of {count} makes a reply of at least "
            f"{-count * per * _LEAST_ELEMENT} bytes, over limits.max_output_buffer "
            f"({limit} bytes)"
        )


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


def help_reply(container: str, lines: list[str]) -> list[Status]:
    """``<CONTAINER> HELP``: Redis' header, the lines, and its footer."""
    return [
        Status(f"{container} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"),
        *(Status(line) for line in lines),
        Status("HELP"),
        Status("    Print this help."),
    ]


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


# ------------------------------------------------ INCRBYFLOAT's long double

# Redis does INCRBYFLOAT in C's long double, x87's 80-bit format on x86-64: a
# 64-bit significand, exponents down to 2^-16382 (subnormals to 2^-16445) and
# up to 2^16383. Python has no such type; these compute the same results with
# exact fractions rounded to it, so replies match Redis digit for digit
# (10.5 + 0.1 + 5.0e3 is 5010.60000000000000009 there, not 5010.6).
_LD_DIGITS = 64
_LD_MIN_QUANTUM = -16445
_LD_MAX = Fraction((1 << _LD_DIGITS) - 1) * Fraction(2) ** (16384 - _LD_DIGITS)
_LD_MAX_CHARS = 5 * 1024  # Redis' MAX_LONG_DOUBLE_CHARS: longer text is refused
_LD_DECIMAL = re.compile(rb"([+-]?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?\Z")
_LD_HEX = re.compile(rb"([+-]?)0[xX]([0-9a-fA-F]*)(?:\.([0-9a-fA-F]*))?(?:[pP]([+-]?[0-9]+))?\Z")
_LD_INF = re.compile(rb"([+-]?)(?:inf|infinity)\Z", re.IGNORECASE)


class LongDouble:
    """A long double value: an exact fraction within its range, or an infinity."""

    __slots__ = ("inf", "value")

    def __init__(self, value: Fraction, inf: int = 0) -> None:
        self.value = value
        self.inf = inf  # +1 or -1 for an infinity (value unused), 0 otherwise


def _round_long_double(exact: Fraction) -> Fraction | None:
    """``exact`` rounded to the nearest long double (ties to even); ``None``
    when it overflows."""
    if exact == 0:
        return exact
    magnitude = abs(exact)
    num, den = magnitude.numerator, magnitude.denominator
    top = num.bit_length() - den.bit_length()  # 2^top <= magnitude < 2^(top+2)
    if (num << max(0, -top)) < (den << max(0, top)):
        top -= 1
    quantum = max(top - (_LD_DIGITS - 1), _LD_MIN_QUANTUM)
    if quantum >= 0:
        steps = round(Fraction(num, den << quantum))
        rounded = Fraction(steps << quantum)
    else:
        steps = round(Fraction(num << -quantum, den))
        rounded = Fraction(steps, 1 << -quantum)
    if rounded > _LD_MAX:
        return None
    return rounded if exact > 0 else -rounded


def parse_long_double(data: bytes) -> LongDouble | None:
    """``data`` as Redis' ``string2ld`` reads it (``strtold`` of the whole
    text: no spaces, no NaN; a value that overflows or underflows to zero is
    refused), or ``None``."""
    if not data or len(data) >= _LD_MAX_CHARS:
        return None
    m = _LD_INF.match(data)
    if m is not None:
        return LongDouble(Fraction(0), -1 if m.group(1) == b"-" else 1)
    m = _LD_DECIMAL.match(data)
    if m is not None:
        sign, whole, frac, exp = m.groups()
        frac = frac or b""
        if not whole and not frac:
            return None
        digits = (whole + frac).lstrip(b"0")
        power = int(exp or b"0") - len(frac)
        if not digits:
            return LongDouble(Fraction(0))
        leading = len(digits) + power  # the value is below 10^leading
        if leading > 4933:
            return None  # overflows: strtold says ERANGE
        if leading < -4952:
            return None  # underflows to zero: ERANGE too
        exact = Fraction(_integer(digits)) * Fraction(10) ** power
    else:
        m = _LD_HEX.match(data)
        if m is None:
            return None
        sign, whole, frac, exp = m.groups()
        frac = frac or b""
        if not whole and not frac:
            return None
        digits = (whole + frac).lstrip(b"0")
        power = int(exp or b"0") - 4 * len(frac)
        if not digits:
            return LongDouble(Fraction(0))
        leading = 4 * len(digits) + power
        if leading > 16400:
            return None
        if leading < -16500:
            return None
        exact = Fraction(int(digits, 16)) * Fraction(2) ** power
    rounded = _round_long_double(exact)
    if rounded is None or rounded == 0:
        return None
    return LongDouble(-rounded if sign == b"-" else rounded)


def add_long_double(a: LongDouble, b: LongDouble) -> LongDouble | None:
    """``a + b`` in long double; ``None`` if it is infinite or NaN."""
    if a.inf or b.inf:
        return None
    rounded = _round_long_double(a.value + b.value)
    return None if rounded is None else LongDouble(rounded)


_CHUNK = 10**4000  # below Python's limit of 4300 digits for str(int)


def _integer(digits: bytes) -> int:
    """``int(digits)`` for decimal digits of any count (up to 4300 is all
    Python's ``int`` takes; a long double's integer part has up to 4933)."""
    if len(digits) <= 4000:
        return int(digits)
    return _integer(digits[:-4000]) * _CHUNK + int(digits[-4000:])


def _decimal(n: int) -> str:
    """``str(n)`` for a non-negative ``n`` of any size (a long double's
    integer part has up to 4933 digits)."""
    if n < _CHUNK:
        return str(n)
    high, low = divmod(n, _CHUNK)
    return _decimal(high) + str(low).zfill(4000)


def format_long_double(number: LongDouble) -> bytes:
    """Redis' ``ld2string(..., LD_STR_HUMAN)``: ``%.17Lf`` without trailing
    zeros (nor a trailing point), and ``-0`` as ``0``."""
    value = number.value
    scaled = round(abs(value) * 10**17)  # ties to even, as glibc's printf
    whole, frac = divmod(scaled, 10**17)
    out = f"{_decimal(whole)}.{frac:017d}".rstrip("0").rstrip(".")
    if value < 0 and out != "0":
        out = "-" + out
    return out.encode()
