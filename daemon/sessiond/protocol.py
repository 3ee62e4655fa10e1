"""RESP2/RESP3 request parsing (hiredis) and reply encoding. No cache knowledge.

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
=====================  ===================  =====================
"""

from __future__ import annotations

from typing import Any, Final

import hiredis


class Status(str):
    """A simple string reply (``+OK``)."""

    __slots__ = ()


class Error(Exception):
    """An error reply; ``str(self)`` is the whole line, prefix included."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def prefix(self) -> str:
        return self.message.split(" ", 1)[0]


class Verbatim(str):
    """A verbatim text reply (RESP3 ``=``), e.g. INFO and CLIENT INFO."""

    __slots__ = ()


class _NilArray:
    __slots__ = ()


NIL_ARRAY: Final = _NilArray()

OK: Final = Status("OK")
QUEUED: Final = Status("QUEUED")
PONG: Final = Status("PONG")


class ProtocolError(Exception):
    """The byte stream is not valid RESP; the connection must be closed."""


def _protocol_error(message: str) -> ProtocolError:
    return ProtocolError(message)


class RequestParser:
    """Splits a client's byte stream into requests (lists of ``bytes``).

    Multi-bulk requests are parsed by hiredis' C reader; inline commands
    (``PING\\r\\n`` as typed into ``nc -U``) by splitting the line. The limits are
    enforced before data is buffered without bound: an array header or inline
    line above the limit is rejected as soon as it is seen, and a request whose
    bytes so far exceed ``max_request_size`` is rejected before it completes.
    """

    __slots__ = ("_at_boundary", "_inline", "_partial", "_reader", "max_args", "max_request_size")

    def __init__(self, max_request_size: int) -> None:
        self._reader = hiredis.Reader(protocolError=_protocol_error, replyError=_protocol_error)
        self._at_boundary = True
        self._partial = 0
        self._inline = b""
        self.max_request_size = max_request_size
        # Every argument takes at least 4 bytes ("$0\r\n\r\n" is 6).
        self.max_args = max(max_request_size // 4, 16)

    def feed(self, data: bytes) -> list[list[bytes]]:
        """Return the complete requests in ``data`` (plus what was buffered).

        Raises :class:`ProtocolError` on malformed or oversized input.
        """
        requests: list[list[bytes]] = []
        if self._at_boundary and (self._inline or data[:1] != b"*"):
            data = self._feed_inline(data, requests)
            if not data:
                return requests
        if self._at_boundary:
            self._check_header(data)
        reader = self._reader
        reader.feed(data)
        self._partial += len(data)
        request = reader.gets()
        if request is False:
            self._at_boundary = False
        else:
            while request is not False:
                if type(request) is not list or not request:
                    raise ProtocolError("expected an array of bulk strings")
                requests.append(request)
                request = reader.gets()
            self._at_boundary = not reader.has_data()
            self._partial = 0 if self._at_boundary else reader.len()
        if self._partial > self.max_request_size:
            raise ProtocolError(
                f"request exceeds limits.max_request_size ({self.max_request_size} bytes)"
            )
        return requests

    def _check_header(self, data: bytes) -> None:
        end = data.find(b"\r\n", 0, 24)
        if end == -1:
            if len(data) >= 24:
                raise ProtocolError("invalid multibulk length")
            return
        try:
            count = int(data[1:end])
        except ValueError:
            raise ProtocolError("invalid multibulk length") from None
        if count > self.max_args:
            raise ProtocolError("invalid multibulk length")

    def _feed_inline(self, data: bytes, requests: list[list[bytes]]) -> bytes:
        """Consume inline lines; return the rest once a multi-bulk request starts."""
        buf = self._inline + data
        pos = 0
        while pos < len(buf):
            if buf[pos : pos + 1] == b"*":
                self._inline = b""
                return buf[pos:]
            end = buf.find(b"\n", pos)
            if end == -1:
                break
            line = buf[pos:end]
            pos = end + 1
            args = line.split()
            if args:
                requests.append(args)
        rest = buf[pos:]
        if len(rest) > min(self.max_request_size, 64 * 1024):
            raise ProtocolError("too big inline request")
        self._inline = rest
        return b""


# ------------------------------------------------------------------ encoding

_CRLF: Final = b"\r\n"


_OK_LINE: Final = b"+OK\r\n"


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
        text = repr(value).encode() if value == value else b"nan"
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
    elif isinstance(value, Status):
        out.append(b"+%b\r\n" % value.encode())
    elif isinstance(value, str):
        data = value.encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    else:
        raise TypeError(f"cannot encode reply of type {t.__name__}")
