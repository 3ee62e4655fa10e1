"""RESP2/RESP3 request parsing and reply encoding. No cache knowledge.

Replies are plain Python values, encoded per connection protocol:

=====================  ===================  =====================
value                  RESP2                RESP3
=====================  ===================  =====================
``bytes``              bulk string          bulk string
``str``                bulk string (UTF-8)  bulk string (UTF-8)
``Status``             ``+OK``              ``+OK``
``Error``              ``-ERR ...``         ``-ERR ...``
``int`` / ``bool``     integer              integer / boolean
``float``              bulk string          double
``None``               ``$-1`` (nil)        ``_`` (null)
``NilArray``           ``*-1``              ``_``
``list`` / ``tuple``   array                array
``set``/``frozenset``  array                set
``dict``               flat array           map
``Verbatim``           bulk string          verbatim string
``Push``               array                push (``>``)
``Pairs``              flat array           array of 2-arrays
``Members``            array                set, in its order
``BigNumber``          bulk string          big number
``RawVerbatim``        bulk string          verbatim string
``Entries``            flat array           map, in its order
``Replies``            each item in turn    each item in turn
=====================  ===================  =====================

A ``Push`` is what Redis sends out of band in RESP3 (pub/sub messages and
subscription confirmations); in RESP2 it is the plain array Redis sends.
``Replies`` is several replies to one request, one after the other (SUBSCRIBE
of two channels answers two confirmations). ``Pairs`` holds ``(field, value)``
tuples that may repeat (HRANDFIELD with a negative count), so not a map: Redis 7
nests each pair in RESP3 and flattens them in RESP2.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, Final

from mypy_extensions import i64, mypyc_attr


# str subclasses cannot be native (compiled) classes.
@mypyc_attr(native_class=False)
class Status(str):
    """A simple string reply (``+OK``)."""

    __slots__ = ()


# Not a native (compiled) class: mypyc compiles an Exception subclass whose
# instances accept weak references but does not clear them when one is freed,
# so a weak reference that outlives its Error crashes the process when it is
# freed in turn. Hypothesis keeps such references to the values it generates:
# the engine's property tests with error replies segfaulted the compiled run
# (tests/test_build.py pins it).
@mypyc_attr(native_class=False)
class Error(Exception):
    """An error reply; ``str(self)`` is the whole line, prefix included."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def prefix(self) -> str:
        return self.message.split(" ", 1)[0]


@mypyc_attr(native_class=False)
class Verbatim(str):
    """A verbatim text reply (RESP3 ``=``), e.g. INFO and CLIENT INFO."""

    __slots__ = ()


@mypyc_attr(native_class=False)
class BigNumber(bytes):
    """A big number reply (RESP3 ``(``, a bulk string in RESP2), its text as
    given: a script's ``{big_number=...}``."""

    __slots__ = ()


@mypyc_attr(native_class=False)
class RawVerbatim(bytes):
    """A verbatim string reply of any bytes, its three-byte format and ``:``
    first (``b"mkd:text"``), as a script returns one: RESP3 ``=``, the text
    as a bulk string in RESP2."""

    __slots__ = ()


# list subclasses cannot be native (compiled) classes either.
@mypyc_attr(native_class=False)
class Push(list[Any]):
    """A push message (RESP3 ``>``; an array in RESP2)."""

    __slots__ = ()


@mypyc_attr(native_class=False)
class Pairs(list[tuple[Any, Any]]):
    """Field-value pairs: a flat array in RESP2, an array of pairs in RESP3."""

    __slots__ = ()


@mypyc_attr(native_class=False)
class Members(list[Any]):
    """A set reply's members in this order, repeats kept (a script's
    ``{set=...}``, written as Redis walks the Lua table): RESP3 ``~``, an
    array in RESP2."""

    __slots__ = ()


@mypyc_attr(native_class=False)
class Entries(list[tuple[Any, Any]]):
    """A map reply's entries in this order, repeats kept (a script's
    ``{map=...}``): RESP3 ``%``, a flat array in RESP2."""

    __slots__ = ()


@mypyc_attr(native_class=False)
class Replies(list[Any]):
    """Several replies to one request, encoded one after the other."""

    __slots__ = ()


class _NilArray:
    __slots__ = ()


NIL_ARRAY: Final = _NilArray()

OK: Final = Status("OK")
QUEUED: Final = Status("QUEUED")
PONG: Final = Status("PONG")


class ProtocolError(Exception):
    """The byte stream is not valid RESP; the connection must be closed.

    ``requests`` holds the complete requests parsed before the error.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.requests: list[list[bytes]] = []


_INLINE_MAX: Final = 64 * 1024  # Redis' PROTO_INLINE_MAX_SIZE
_SPACE: Final = frozenset(b" \n\r\t\v\f\x00")
_ESCAPES: Final = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b",
                   ord("a"): b"\a"}  # fmt: skip
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command line as Redis' ``sdssplitargs`` does: blanks
    separate arguments, ``"..."`` (with ``\\n``, ``\\xHH``... escapes) and
    ``'...'`` quote them. Raises :class:`ProtocolError` on unbalanced quotes."""
    if b'"' not in line and b"'" not in line:
        return line.split()
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return args
        current = bytearray()
        in_double = in_single = False
        while True:
            if in_double:
                if i >= n:
                    raise ProtocolError("unbalanced quotes in request")
                c = line[i]
                if (
                    c == 0x5C
                    and i + 3 < n
                    and line[i + 1] == 0x78
                    and line[i + 2] in _HEX
                    and line[i + 3] in _HEX
                ):
                    current.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 0x5C and i + 1 < n:
                    i += 1
                    current += _ESCAPES.get(line[i], line[i : i + 1])
                elif c == 0x22:
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        raise ProtocolError("unbalanced quotes in request")
                    i += 1
                    break
                else:
                    current.append(c)
            elif in_single:
                if i >= n:
                    raise ProtocolError("unbalanced quotes in request")
                c = line[i]
                if c == 0x5C and i + 1 < n and line[i + 1] == 0x27:
                    i += 1
                    current.append(0x27)
                elif c == 0x27:
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        raise ProtocolError("unbalanced quotes in request")
                    i += 1
                    break
                else:
                    current.append(c)
            else:
                if i >= n:
                    break
                c = line[i]
                if c in _SPACE:
                    break
                if c == 0x22:
                    in_double = True
                elif c == 0x27:
                    in_single = True
                else:
                    current.append(c)
            i += 1
        args.append(bytes(current))


def _length(header: bytes, signed: bool) -> int | None:
    """A RESP length as Redis' ``string2ll`` reads it (no ``+``, spaces,
    leading zeros or ``-0``); ``None`` if it is not one."""
    negative = signed and header[:1] == b"-"
    digits = header[1:] if negative else header
    if not digits.isdigit() or len(digits) > 19:
        return None
    if digits[0] == 0x30 and (len(digits) > 1 or negative):
        return None
    return int(header)


class ExactParser:
    """Splits a client's byte stream into requests (lists of ``bytes``) in pure
    Python, as Redis reads them; :class:`RequestParser` hands it all but whole
    canonical requests, and tests hold the two to the same answers.

    Multi-bulk requests (``*<n>\r\n`` then ``n`` bulk strings) and inline
    commands (``PING\r\n`` as typed into ``nc -U``) may be mixed in one stream.
    Only bulk strings are accepted inside a request; ``*0`` and negative counts
    are skipped, as Redis does. The limits are enforced before data is buffered
    without bound: a count or bulk length above the limits is rejected as soon as
    its header is seen, and a request whose bytes so far exceed
    ``max_request_size`` is rejected before it completes. Nothing is allocated in
    proportion to a declared length, and a request that arrives in many pieces is
    parsed once, not again from its start per piece.

    Malformed input raises :class:`ProtocolError`, and nothing else.
    """

    __slots__ = (
        "_args",
        "_chunks",
        "_need",
        "_pending",
        "_remaining",
        "_used",
        "max_args",
        "max_request_size",
    )

    def __init__(self, max_request_size: int) -> None:
        self._chunks: list[bytes] = []
        self._pending = 0  # bytes in _chunks
        self._need = 0  # _pending must reach this before parsing can progress
        self._args: list[bytes] | None = None  # the multi-bulk request being read
        self._remaining = 0  # its bulk strings still to come
        self._used = 0  # its bytes already consumed
        self.set_limit(max_request_size)

    def set_limit(self, max_request_size: int) -> None:
        self.max_request_size = max_request_size
        # Every argument takes at least 6 bytes ("$0\r\n\r\n").
        self.max_args = max(max_request_size // 4, 16)

    @property
    def busy(self) -> bool:
        """Whether part of a request is buffered (the stream is not between requests)."""
        return self._args is not None or bool(self._chunks)

    def feed(self, data: bytes) -> list[list[bytes]]:
        """Return the complete requests in ``data`` (plus what was buffered).

        Raises :class:`ProtocolError` on malformed or oversized input.
        """
        return self._feed(data, False)[0]

    def finish(self, data: bytes) -> tuple[list[list[bytes]], bytes]:
        """Feed ``data`` only until the buffered request is complete: the
        requests completed and the bytes after them, which start between
        requests (empty if the request is still incomplete)."""
        return self._feed(data, True)

    def _feed(self, data: bytes, once: bool) -> tuple[list[list[bytes]], bytes]:
        if self._chunks:
            self._chunks.append(data)
            self._pending += len(data)
            if self._pending < self._need:
                self._check_size([])
                return [], b""
            buf = b"".join(self._chunks)
        else:
            buf = data
        requests: list[list[bytes]] = []
        try:
            pos = self._parse(buf, requests, once)
        except ProtocolError as exc:
            exc.requests = requests
            raise
        self._chunks = []
        self._pending = 0
        if self._args is None and self._need == 0:
            return requests, buf[pos:] if pos else buf
        if pos < len(buf):
            rest = buf[pos:] if pos else buf
            self._chunks = [rest]
            self._pending = len(rest)
            self._check_size(requests)
        return requests, b""

    def _check_size(self, requests: list[list[bytes]]) -> None:
        if self._used + self._pending > self.max_request_size:
            exc = self._too_big()
            exc.requests = requests
            raise exc

    def _too_big(self) -> ProtocolError:
        return ProtocolError(
            f"request exceeds limits.max_request_size ({self.max_request_size} bytes)"
        )

    def _parse(self, buf: bytes, requests: list[list[bytes]], once: bool) -> int:
        """Parse what can be parsed of ``buf`` (with ``once``, up to the end of
        the first request completed); the offset of the first byte not consumed.
        Stopping inside a request saves where it was and sets ``_need``."""
        n = len(buf)
        pos = 0
        find = buf.find
        limit = self.max_request_size
        args = self._args
        remaining = self._remaining
        used = self._used
        self._need = 0
        while True:
            if args is None:
                if pos >= n:
                    break
                if buf[pos] != 0x2A:  # not '*': an inline command
                    end = find(b"\n", pos)
                    if end == -1:
                        if n - pos > _INLINE_MAX:
                            raise ProtocolError("too big inline request")
                        self._need = n - pos + 1
                        break
                    if end + 1 - pos > _INLINE_MAX:
                        raise ProtocolError("too big inline request")
                    if end + 1 - pos > limit:
                        raise self._too_big()
                    line = split_inline(buf[pos:end])
                    pos = end + 1
                    if line:
                        requests.append(line)
                    if once:
                        break
                    continue
                end = find(b"\r\n", pos)
                if end == -1:
                    if n - pos > _INLINE_MAX:
                        raise ProtocolError("too big mbulk count string")
                    self._need = n - pos + 1
                    break
                count = _length(buf[pos + 1 : end], signed=True)
                if count is None or count > self.max_args:
                    raise ProtocolError("invalid multibulk length")
                header = end + 2 - pos
                pos = end + 2
                if count <= 0:
                    if once:
                        break
                    continue
                used = header
                args = []
                remaining = count
            while remaining:
                if pos >= n:
                    self._need = 1
                    break
                if buf[pos] != 0x24:  # '$'
                    raise ProtocolError(f"expected '$', got '{chr(buf[pos])}'")
                end = find(b"\r\n", pos)
                if end == -1:
                    if n - pos > _INLINE_MAX:
                        raise ProtocolError("too big bulk count string")
                    self._need = n - pos + 1
                    break
                length = _length(buf[pos + 1 : end], signed=False)
                if length is None:
                    raise ProtocolError("invalid bulk length")
                stop = end + 2 + length
                if used + stop + 2 - pos > limit:
                    raise self._too_big()
                if stop + 2 > n:
                    self._need = stop + 2 - pos
                    break
                args.append(buf[end + 2 : stop])
                used += stop + 2 - pos
                pos = stop + 2
                remaining -= 1
            if remaining:
                break
            requests.append(args)
            args = None
            used = 0
            if once:
                break
        self._args = args
        self._remaining = remaining
        self._used = used
        return pos


def _canonical(data: bytes, out: list[list[bytes]], max_args: int, max_size: int) -> int:
    """Append to ``out`` the requests at the start of ``data`` that are whole
    and canonical -- ``*<n>\r\n`` then ``n`` times ``$<len>\r\n<data>\r\n``,
    counts and lengths written as Redis writes them (no sign, no leading zero),
    within the limits -- and return the offset of the first byte not taken:
    where a request starts that is cut off by the end of ``data``, is not
    canonical, or breaks a limit. Whatever it takes, the exact parser would
    take the same way; it is left everything else.

    A loop over bytes: compiled with mypyc, it costs a few compares per header
    byte and an allocation per argument. Measured against the hiredis reader
    this replaced, with the checks that made hiredis safe here (a scan for the
    types it reads differently from Redis and for counts it would allocate
    for, and the size of what it took): 9x less time for one GET, 2x less for
    16 pipelined SETs. Interpreted, it is slower than hiredis (2x for a GET):
    the fallback build pays that.

    Offsets, counts and sizes are ``i64``: native integers in the compiled
    build, where ``int`` arithmetic checks for overflow into a long at every
    step; interpreted, ``i64`` is ``int``. Reading digits stops after one more
    than a count or a size may have (which is refused), so none overflows."""
    n: i64 = len(data)
    pos: i64 = 0
    while pos < n:
        if data[pos] != 42:  # not '*': inline, or not a request
            return pos
        i: i64 = pos + 1
        count: i64 = 0
        while i < n and i - pos <= 10:  # 10 digits are enough to refuse
            c = data[i]
            if c < 48 or c > 57:
                break
            count = count * 10 + c - 48
            i += 1
        digits = i - pos - 1
        if digits == 0 or digits > 9 or data[pos + 1] == 48 or count > max_args:
            return pos  # no count, a leading zero (*0 too), or too many arguments
        if i + 1 >= n or data[i] != 13 or data[i + 1] != 10:
            return pos
        i += 2
        args: list[bytes] = []
        while count:
            if i >= n or data[i] != 36:  # '$'
                return pos
            j: i64 = i + 1
            size: i64 = 0
            while j < n and j - i <= 11:  # as are 11 here
                c = data[j]
                if c < 48 or c > 57:
                    break
                size = size * 10 + c - 48
                j += 1
            digits = j - i - 1
            if digits == 0 or digits > 10 or (digits > 1 and data[i + 1] == 48):
                return pos
            end = j + 2 + size
            if end - pos + 2 > max_size or end + 2 > n:
                return pos  # over the limit, or continued in the next read
            if data[j] != 13 or data[j + 1] != 10 or data[end] != 13 or data[end + 1] != 10:
                return pos
            args.append(data[j + 2 : end])
            i = end + 2
            count -= 1
        out.append(args)
        pos = i
    return pos


class RequestParser:
    """Splits a client's byte stream into requests (lists of ``bytes``).

    The semantics are :class:`ExactParser`'s (Redis' own); this class makes the
    common case fast. From where the stream is between requests, whole canonical
    multi-bulk requests are taken by :func:`_canonical`; everything else --
    inline commands, anything malformed or over a limit, the rest of a request
    cut at the end of a read -- goes to the exact parser, until the stream is
    between requests again. Nothing is allocated in proportion to a declared
    count or length before the bytes are there.

    Malformed input raises :class:`ProtocolError`, and nothing else; its
    ``requests`` are the complete requests that preceded the error.
    """

    __slots__ = ("_exact", "max_request_size")

    def __init__(self, max_request_size: int) -> None:
        self.max_request_size = max_request_size
        self._exact = ExactParser(max_request_size)

    @property
    def max_args(self) -> int:
        return self._exact.max_args

    def set_limit(self, max_request_size: int) -> None:
        """Change the request size limit (a client that authenticated gets the
        configured one); applies from the next request on."""
        self.max_request_size = max_request_size
        self._exact.set_limit(max_request_size)

    def feed(self, data: bytes) -> list[list[bytes]]:
        """Return the complete requests in ``data`` (plus what was buffered).

        Raises :class:`ProtocolError` on malformed or oversized input.
        """
        exact = self._exact
        if not exact.busy:
            return self._feed_fast(data, [])
        done, rest = exact.finish(data)
        return self._feed_fast(rest, done) if rest else done

    def _feed_fast(self, data: bytes, done: list[list[bytes]]) -> list[list[bytes]]:
        """Parse ``data``, which starts between requests, after ``done``."""
        exact = self._exact
        taken = _canonical(data, done, exact.max_args, self.max_request_size)
        if taken == len(data):
            return done
        try:
            rest = exact.feed(data[taken:] if taken else data)
        except ProtocolError as exc:
            exc.requests[:0] = done
            raise
        if rest:
            done.extend(rest)
        return done


def encode_bulks(items: list[bytes]) -> bytes:
    """``items`` as one RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(items)]
    for item in items:
        out.append(b"$%d\r\n%b\r\n" % (len(item), item))
    return b"".join(out)


def parse_bulks(data: bytes) -> list[bytes]:
    """The items of one RESP array of bulk strings that is the whole of
    ``data`` (what :func:`encode_bulks` wrote); :class:`ProtocolError` if it
    is not that. An empty array is ``*0``."""
    if data == b"*0\r\n":
        return []
    parser = ExactParser(len(data) + 1)
    requests = parser.feed(data)
    if len(requests) != 1 or parser.busy:
        raise ProtocolError("not one array of bulk strings")
    return requests[0]


# ------------------------------------------------------------------ encoding

_CRLF: Final = b"\r\n"


_OK_LINE: Final = b"+OK\r\n"


# ------------------------------------------------------------------ doubles


def _shortest_digits(value: float) -> tuple[str, int]:
    """The shortest decimal digits that read back as ``abs(value)`` and the
    power of ten of the last one (``1.5`` -> ``("15", -1)``)."""
    _, digits, exponent = Decimal(repr(abs(value))).as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits)).lstrip("0") or "0"
    stripped = text.rstrip("0")
    return stripped, exponent + len(text) - len(stripped)


def fpconv_dtoa(value: float) -> str:
    """A double as Redis 7.2's ``fpconv_dtoa`` writes it: shortest digits,
    plain up to 7 zeros either side, else ``d.ddde+N`` with no exponent padding."""
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if math.isnan(value):
        return sign + "nan"
    if math.isinf(value):
        return sign + "inf"
    if value == 0:
        return sign + "0"
    digits, k = _shortest_digits(value)
    ndigits = len(digits)
    exp = abs(k + ndigits - 1)
    if k >= 0 and exp < ndigits + 7:
        return sign + digits + "0" * k
    if k < 0 and (k > -7 or exp < 4):
        offset = ndigits + k
        if offset <= 0:
            return sign + "0." + "0" * -offset + digits
        return sign + digits[:offset] + "." + digits[offset:]
    digits = digits[: 18 - len(sign)]
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{mantissa}e{'-' if k + ndigits - 1 < 0 else '+'}{exp}"


HALF_LLONG: Final = 2**62
"""Redis' ``double2ll()`` takes a double as an integer up to ``(double)(LLONG_MAX / 2)``."""


def d2string(value: float) -> bytes:
    """A double reply's text (a bulk string in RESP2, a double in RESP3), as
    Redis 7.2's ``d2string`` writes it."""
    if math.isnan(value):
        return b"nan"
    if value == 0:
        return b"-0" if math.copysign(1.0, value) < 0 else b"0"
    # Integral and within what double2ll() accepts: its integer.
    if math.isfinite(value) and value.is_integer() and abs(value) <= HALF_LLONG:
        return b"%d" % int(value)
    return fpconv_dtoa(value).encode()


def encode(value: Any, resp3: bool) -> bytes:
    """Encode one reply value (see the module table)."""
    # The replies of GET and SET are answered here without building a list.
    if value is OK:
        return _OK_LINE
    if type(value) is bytes:
        return b"$%d\r\n%b\r\n" % (len(value), value)
    if value is None:
        return b"_\r\n" if resp3 else b"$-1\r\n"
    out: list[bytes] = []
    _encode_into(value, resp3, out)
    return b"".join(out)


def _encode_into(value: Any, resp3: bool, out: list[bytes]) -> None:
    t = type(value)
    if t is bytes:
        out.append(b"$%d\r\n%b\r\n" % (len(value), value))
    elif t is Status:
        out.append(b"+%b\r\n" % value.encode())
    elif t is int:
        out.append(b":%d\r\n" % value)
    elif value is None:
        out.append(b"_\r\n" if resp3 else b"$-1\r\n")
    elif t is str or t is Verbatim:
        data = value.encode()
        if resp3 and t is Verbatim:
            out.append(b"=%d\r\ntxt:%b\r\n" % (len(data) + 4, data))
        else:
            out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    elif t is list or t is tuple:
        out.append(b"*%d\r\n" % len(value))
        for item in value:
            _encode_into(item, resp3, out)
    elif t is dict:
        if resp3:
            out.append(b"%%%d\r\n" % len(value))
        else:
            out.append(b"*%d\r\n" % (2 * len(value)))
        for k, v in value.items():
            _encode_into(k, resp3, out)
            _encode_into(v, resp3, out)
    elif t is bool:
        if resp3:
            out.append(b"#t\r\n" if value else b"#f\r\n")
        else:
            out.append(b":1\r\n" if value else b":0\r\n")
    elif t is float:
        text = d2string(value)  # Redis 7.2 writes a double reply so, in RESP2 and RESP3
        if resp3:
            out.append(b",%b\r\n" % text)
        else:
            out.append(b"$%d\r\n%b\r\n" % (len(text), text))
    elif isinstance(value, Error):
        message = value.message.replace("\r", " ").replace("\n", " ")
        out.append(b"-%b\r\n" % message.encode())
    elif t is set or t is frozenset:
        out.append((b"~%d\r\n" if resp3 else b"*%d\r\n") % len(value))
        for item in value:
            _encode_into(item, resp3, out)
    elif value is NIL_ARRAY:
        out.append(b"_\r\n" if resp3 else b"*-1\r\n")
    elif t is Push:
        out.append((b">%d\r\n" if resp3 else b"*%d\r\n") % len(value))
        for item in value:
            _encode_into(item, resp3, out)
    elif t is BigNumber:
        if resp3:
            out.append(b"(%b\r\n" % value)
        else:
            out.append(b"$%d\r\n%b\r\n" % (len(value), value))
    elif t is RawVerbatim:
        if resp3:
            out.append(b"=%d\r\n%b\r\n" % (len(value), value))
        else:
            out.append(b"$%d\r\n%b\r\n" % (len(value) - 4, value[4:]))
    elif t is Members:
        out.append((b"~%d\r\n" if resp3 else b"*%d\r\n") % len(value))
        for item in value:
            _encode_into(item, resp3, out)
    elif t is Entries:
        out.append((b"%%%d\r\n" if resp3 else b"*%d\r\n") % (len(value) * (1 if resp3 else 2)))
        for first, second in value:
            _encode_into(first, resp3, out)
            _encode_into(second, resp3, out)
    elif t is Replies:
        for item in value:
            _encode_into(item, resp3, out)
    elif t is Pairs:
        if resp3:
            out.append(b"*%d\r\n" % len(value))
            for first, second in value:
                out.append(b"*2\r\n")
                _encode_into(first, resp3, out)
                _encode_into(second, resp3, out)
        else:
            out.append(b"*%d\r\n" % (2 * len(value)))
            for first, second in value:
                _encode_into(first, resp3, out)
                _encode_into(second, resp3, out)
    elif isinstance(value, Status):
        out.append(b"+%b\r\n" % value.encode())
    elif isinstance(value, str):
        data = value.encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    else:
        raise TypeError(f"cannot encode reply of type {t.__name__}")
