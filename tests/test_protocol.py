"""The wire protocol (docs/commands.md): pipelines, transactions, inline commands, and
malformed or oversized input, against the real daemon over its Unix socket;
plus property tests of :class:`sessiond.protocol.RequestParser` itself.

A protocol error must answer ``-ERR Protocol error: ...``, close that one
connection, and leave the daemon and its other clients serving.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import hiredis
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sessiond.protocol import (
    BigNumber,
    Entries,
    ExactParser,
    Members,
    Pairs,
    ProtocolError,
    RawVerbatim,
    RequestParser,
    encode,
    split_inline,
)

if TYPE_CHECKING:
    from conftest import Daemon, RedisServer

Factory = Callable[..., "Daemon"]


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the tests that need no config of their own."""
    from conftest import Daemon

    d = Daemon(tmp_path_factory.mktemp("protocol")).start()
    yield d
    d.stop()


@pytest.fixture
def daemon(shared_daemon: Daemon) -> Daemon:
    """The shared daemon, emptied (also what conftest's ``r`` connects to)."""
    with shared_daemon.client() as c:
        c.flushall()
    return shared_daemon


# --------------------------------------------------------------- helpers


def encode_request(*args: bytes | str) -> bytes:
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in parts)


def read_until(sock: socket.socket, expected: bytes, timeout: float = 5.0) -> bytes:
    """Read until ``expected`` bytes arrived (or EOF / timeout); what was read."""
    sock.settimeout(timeout)
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < len(expected) and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def read_to_eof(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Everything the daemon sends until it closes; (data, closed)."""
    sock.settimeout(timeout)
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return got, False
        except ConnectionResetError:
            return got, True
        if not chunk:
            return got, True
        got += chunk
    return got, False


def rss_kib(d: Daemon) -> int:
    assert d.proc is not None
    with open(f"/proc/{d.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def small_limits(daemon_factory: Factory) -> Daemon:
    return daemon_factory(
        {"limits": {"max_request_size": "64KiB", "max_value_size": "16KiB"}},
    )


class RawError(Exception):
    """An error reply as the raw client returns it (prefix included)."""

    def __eq__(self, other: object) -> bool:
        return type(other) is RawError and str(self) == str(other)

    __hash__ = Exception.__hash__


class RawClient:
    """A minimal RESP client on one raw connection: no reply callbacks, so
    replies are exactly what the daemon sent (errors as :class:`RawError`)."""

    def __init__(self, d: Daemon | RedisServer) -> None:
        self.sock = d.raw()
        self.reader = hiredis.Reader(replyError=RawError)

    def __call__(self, *args: bytes | str) -> Any:
        self.sock.sendall(encode_request(*args))
        reply = self.reader.gets()
        while reply is False:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.reader.feed(chunk)
            reply = self.reader.gets()
        return reply

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


# -------------------------------------------------------------- pipelines


@pytest.mark.parametrize("transaction", [False, True], ids=["plain", "multi"])
def test_pipeline_replies_in_order(r: redis.Redis, transaction: bool) -> None:
    pipe = r.pipeline(transaction=transaction)
    for name, *args in (
        ("set", "a", "1"),
        ("incr", "a"),
        ("get", "a"),
        ("mget", "a", "missing"),
        ("delete", "a"),
        ("exists", "a"),
        ("echo", "x"),
        ("ping",),
    ):
        getattr(pipe, name)(*args)
    assert pipe.execute() == [True, 2, b"2", [b"2", None], 1, 0, b"x", True]


@pytest.mark.parametrize("transaction", [False, True], ids=["plain", "multi"])
def test_pipeline_errors_are_returned_inline(r: redis.Redis, transaction: bool) -> None:
    r.set("s", "text")
    pipe = r.pipeline(transaction=transaction)
    pipe.set("a", "1")
    pipe.incr("s")
    pipe.get("a")
    results = pipe.execute(raise_on_error=False)
    assert results[0] is True
    assert isinstance(results[1], redis.ResponseError)
    assert "value is not an integer or out of range" in str(results[1])
    assert results[2] == b"1"


def test_large_pipeline_spanning_many_reads(r: redis.Redis) -> None:
    """Requests cut at arbitrary points across socket reads parse the same."""
    n = 5000
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.set(f"k{i}", f"value-{i}-" + "x" * (i % 97))
    for i in range(n):
        pipe.get(f"k{i}")
    results = pipe.execute()
    assert results[:n] == [True] * n
    assert results[n:] == [f"value-{i}-".encode() + b"x" * (i % 97) for i in range(n)]


# ----------------------------------------------------------- transactions


def test_multi_exec_returns_all_replies(daemon: Daemon) -> None:
    with RawClient(daemon) as c:
        assert c("MULTI") == b"OK"
        assert c("SET", "t", "1") == b"QUEUED"
        assert c("INCR", "t") == b"QUEUED"
        assert c("GET", "t") == b"QUEUED"
        assert c("EXEC") == [b"OK", 2, b"2"]


def test_queued_commands_do_not_run_before_exec(daemon: Daemon) -> None:
    with RawClient(daemon) as c, daemon.client() as other:
        c("MULTI")
        c("SET", "t", "1")
        assert other.get("t") is None
        assert c("EXEC") == [b"OK"]
        assert other.get("t") == b"1"


def test_runtime_error_inside_exec_is_inline_and_the_rest_runs(daemon: Daemon) -> None:
    with RawClient(daemon) as c:
        c("SET", "s", "text")
        c("MULTI")
        c("INCR", "s")
        c("SET", "after", "yes")
        assert c("EXEC") == [RawError("ERR value is not an integer or out of range"), b"OK"]
        assert c("GET", "after") == b"yes"


@pytest.mark.parametrize(
    "bad,error",
    [
        (("SET", "only-key"), "ERR wrong number of arguments for 'set' command"),
        (("NOSUCH", "x"), "ERR unknown command 'NOSUCH', with args beginning with: 'x' "),
    ],
    ids=["wrong-arity", "unknown-command"],
)
def test_queued_error_makes_exec_abort(daemon: Daemon, bad: tuple[str, ...], error: str) -> None:
    with RawClient(daemon) as c:
        c("MULTI")
        assert c("SET", "x", "1") == b"QUEUED"
        assert c(*bad) == RawError(error)
        assert c("EXEC") == RawError("EXECABORT Transaction discarded because of previous errors.")
        assert c("GET", "x") is None
        # The transaction is over: a new one works.
        c("MULTI")
        c("SET", "x", "2")
        assert c("EXEC") == [b"OK"]


def test_nested_multi_is_an_error_and_keeps_the_transaction(daemon: Daemon) -> None:
    with RawClient(daemon) as c:
        c("MULTI")
        c("SET", "n", "1")
        assert c("MULTI") == RawError("ERR MULTI calls can not be nested")
        assert c("EXEC") == [b"OK"]


def test_exec_and_discard_without_multi(daemon: Daemon) -> None:
    with RawClient(daemon) as c:
        assert c("EXEC") == RawError("ERR EXEC without MULTI")
        assert c("DISCARD") == RawError("ERR DISCARD without MULTI")


def test_a_refused_exec_discards_the_transaction(daemon: Daemon, redis_server: RedisServer) -> None:
    """As Redis' rejectCommand: an EXEC refused before it runs (wrong arity,
    a RESP2 client in subscribed mode) answers EXECABORT with the reason,
    and ends the transaction and the watches, in MULTI or not."""

    def scenario(d: Daemon | RedisServer) -> list[Any]:
        with RawClient(d) as c, RawClient(d) as other, RawClient(d) as subscriber:
            c("FLUSHALL")
            out = [c("EXEC", "x"), c("MULTI"), c("SET", "k", "1"), c("EXEC", "x")]
            out += [c("EXEC"), c("GET", "k"), c("WATCH", "k"), c("EXEC", "x")]
            out += [other("SET", "k", "2"), c("MULTI"), c("GET", "k"), c("EXEC")]
            out += [subscriber("SUBSCRIBE", "ch"), subscriber("EXEC")]
            return out

    expected = scenario(redis_server)
    assert expected[3] == RawError(
        "EXECABORT Transaction discarded because of: wrong number of arguments for 'exec' command"
    )
    assert expected[-1] == RawError(
        "EXECABORT Transaction discarded because of: Can't execute 'exec': only (P|S)SUBSCRIBE"
        " / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
    )
    assert scenario(daemon) == expected


@pytest.mark.parametrize("bad", [("MULTI", "x"), ("DISCARD", "x"), ("RESET", "x"), ("WATCH",)])
def test_a_refused_command_run_at_once_in_multi_aborts_exec(
    daemon: Daemon, redis_server: RedisServer, bad: tuple[str, ...]
) -> None:
    """MULTI, DISCARD, RESET and WATCH are not queued, but refused (here for
    their arity) they flag the transaction as any refused command does, as
    Redis' rejectCommand does; WATCH inside MULTI does not (its own error)."""

    def scenario(d: Daemon | RedisServer) -> list[Any]:
        with RawClient(d) as c:
            c("FLUSHALL")
            out = [c("MULTI"), c("SET", "k", "1"), c(*bad), c("EXEC"), c("GET", "k")]
            return [*out, c("MULTI"), c("WATCH", "k"), c("SET", "k", "2"), c("EXEC")]

    expected = scenario(redis_server)
    assert expected[3] == RawError("EXECABORT Transaction discarded because of previous errors.")
    assert expected[-1] == [b"OK"]
    assert scenario(daemon) == expected


def test_exec_before_auth_is_an_execabort(daemon_factory: Factory) -> None:
    d = daemon_factory({"security": {"password": "pw"}})
    with RawClient(d) as c:
        assert c("EXEC") == RawError(
            "EXECABORT Transaction discarded because of: NOAUTH Authentication required."
        )


def test_discard_drops_the_queue(daemon: Daemon) -> None:
    with RawClient(daemon) as c:
        c("MULTI")
        c("SET", "d", "1")
        assert c("DISCARD") == b"OK"
        assert c("GET", "d") is None
        assert c("EXEC") == RawError("ERR EXEC without MULTI")


def test_empty_transaction(daemon: Daemon) -> None:
    with RawClient(daemon) as c:
        c("MULTI")
        assert c("EXEC") == []


def test_transaction_in_resp3(daemon: Daemon) -> None:
    with daemon.client(protocol=3, single_connection_client=True) as c:
        c.execute_command("MULTI")
        c.execute_command("SET", "r3", "v")
        c.execute_command("GET", "nothing")
        assert c.execute_command("EXEC") == [b"OK", None]


# ------------------------------------------------------------- raw socket


def test_inline_commands(daemon: Daemon) -> None:
    with daemon.raw() as s:
        s.sendall(b"PING\r\n")
        assert read_until(s, b"+PONG\r\n") == b"+PONG\r\n"
        s.sendall(b"SET a b\r\n")
        assert read_until(s, b"+OK\r\n") == b"+OK\r\n"
        s.sendall(b"GET a\n")  # a bare LF ends a line too (nc, telnet)
        assert read_until(s, b"$1\r\nb\r\n") == b"$1\r\nb\r\n"
        s.sendall(b"SET q \"two words\\n\" \r\nGET q\r\nSET sq 'it\\'s'\r\nGET sq\r\n")
        expected = b"+OK\r\n$10\r\ntwo words\n\r\n+OK\r\n$4\r\nit's\r\n"
        assert read_until(s, expected) == expected
        s.sendall(b"\r\n   \r\nping hello\r\n")  # empty lines are skipped
        assert read_until(s, b"$5\r\nhello\r\n") == b"$5\r\nhello\r\n"


def test_inline_unbalanced_quotes_is_a_protocol_error(daemon: Daemon) -> None:
    with daemon.raw() as s:
        s.sendall(b'SET a "unterminated\r\n')
        data, closed = read_to_eof(s)
    assert data == b"-ERR Protocol error: unbalanced quotes in request\r\n"
    assert closed


def test_pipelined_raw_requests_answered_in_order_in_one_write(daemon: Daemon) -> None:
    requests = b"".join(encode_request("SET", f"p{i}", str(i)) for i in range(50))
    requests += b"".join(encode_request("GET", f"p{i}") for i in range(50))
    requests += b"PING\r\n" + encode_request("ECHO", "end")
    expected = b"+OK\r\n" * 50 + b"".join(b"$%d\r\n%d\r\n" % (len(str(i)), i) for i in range(50))
    expected += b"+PONG\r\n$3\r\nend\r\n"
    with daemon.raw() as s:
        s.sendall(requests)
        # One request batch, one write: the first read has all of it.
        s.settimeout(5)
        first = s.recv(1 << 20)
        rest = read_until(s, expected[len(first) :]) if len(first) < len(expected) else b""
    assert first + rest == expected
    assert first == expected


def test_request_sent_byte_by_byte(daemon: Daemon) -> None:
    data = encode_request("SET", "slow", "v" * 100) + b"GET slow\r\n"
    with daemon.raw() as s:
        for i in range(len(data)):
            s.send(data[i : i + 1])
        expected = b"+OK\r\n$100\r\n" + b"v" * 100 + b"\r\n"
        assert read_until(s, expected) == expected


def test_empty_and_negative_multibulk_are_skipped(daemon: Daemon) -> None:
    with daemon.raw() as s:
        s.sendall(b"*0\r\n*-1\r\n" + encode_request("PING"))
        assert read_until(s, b"+PONG\r\n") == b"+PONG\r\n"


def test_quit_replies_then_closes(daemon: Daemon) -> None:
    with daemon.raw() as s:
        s.sendall(encode_request("QUIT") + encode_request("PING"))
        data, closed = read_to_eof(s)
    assert data == b"+OK\r\n"
    assert closed


def test_resp3_reply_types_on_the_wire(daemon: Daemon) -> None:
    with daemon.raw() as s:
        s.sendall(encode_request("GET", "missing"))
        assert read_until(s, b"$-1\r\n") == b"$-1\r\n"
        s.sendall(encode_request("HELLO", "3"))
        s.settimeout(5)
        hello = s.recv(65536)
        assert hello.startswith(b"%")
        assert b"$5\r\nproto\r\n:3\r\n" in hello
        s.sendall(encode_request("GET", "missing"))
        assert read_until(s, b"_\r\n") == b"_\r\n"
        s.sendall(encode_request("CLIENT", "INFO"))
        assert s.recv(65536).startswith(b"=")  # verbatim string
        s.sendall(encode_request("HELLO", "2"))
        assert s.recv(65536).startswith(b"*")
        s.sendall(encode_request("GET", "missing"))
        assert read_until(s, b"$-1\r\n") == b"$-1\r\n"


def test_pairs_are_flat_in_resp2_and_pairs_in_resp3() -> None:
    pairs = Pairs([(b"f", b"v"), (b"f", b"v")])  # may repeat: not a map
    assert encode(pairs, False) == b"*4\r\n$1\r\nf\r\n$1\r\nv\r\n$1\r\nf\r\n$1\r\nv\r\n"
    assert encode(pairs, True) == (
        b"*2\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
    )
    assert encode(Pairs(), True) == encode(Pairs(), False) == b"*0\r\n"


def test_members_and_entries_keep_their_order_and_repeats() -> None:
    members = Members([b"g", b"f", 1, 1])
    assert encode(members, True) == b"~4\r\n$1\r\ng\r\n$1\r\nf\r\n:1\r\n:1\r\n"
    assert encode(members, False) == b"*4\r\n$1\r\ng\r\n$1\r\nf\r\n:1\r\n:1\r\n"
    entries = Entries([(1, b"a"), (1, b"b")])
    assert encode(entries, True) == b"%2\r\n:1\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n"
    assert encode(entries, False) == b"*4\r\n:1\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n"


def test_a_big_number_is_one_in_resp3_only() -> None:
    assert encode(BigNumber(b"12345678901234567890"), True) == b"(12345678901234567890\r\n"
    assert encode(BigNumber(b"12a"), False) == b"$3\r\n12a\r\n"


def test_a_raw_verbatim_string_keeps_its_format_and_bytes() -> None:
    assert encode(RawVerbatim(b"mkd:\x00\xff"), True) == b"=6\r\nmkd:\x00\xff\r\n"
    assert encode(RawVerbatim(b"mkd:\x00\xff"), False) == b"$2\r\n\x00\xff\r\n"


def test_a_double_is_written_as_redis_writes_it() -> None:
    """An integral double has no fraction (``,0``, not Python's ``0.0``), an
    exponent no padding: Redis' d2string, in RESP3 and RESP2 alike."""
    for value, text in [
        (0.0, b"0"),
        (-0.0, b"-0"),
        (100.0, b"100"),
        (2.0**53, b"9007199254740992"),
        (3.5, b"3.5"),
        (1e20, b"1e+20"),
        (1e-7, b"1e-7"),
        (float("-inf"), b"-inf"),
        (float("nan"), b"nan"),
    ]:
        assert encode(value, True) == b",%b\r\n" % text
        assert encode(value, False) == b"$%d\r\n%b\r\n" % (len(text), text)


# ------------------------------------------------- malformed and oversized

MALFORMED = {
    "bad-type-byte": (b"*1\r\n:5\r\n", "expected '$', got ':'"),
    "bad-type-byte-2nd-arg": (b"*2\r\n$3\r\nGET\r\n+OK\r\n", "expected '$', got '+'"),
    "nested-array": (b"*2\r\n$3\r\nGET\r\n*1\r\n$1\r\na\r\n", "expected '$', got '*'"),
    "huge-multibulk": (b"*2147483647\r\n", "invalid multibulk length"),
    "huge-multibulk-after-a-request": (
        encode_request("PING") + b"*4294967295\r\n",
        "invalid multibulk length",
    ),
    "huge-nested-multibulk": (b"*1\r\n*2147483647\r\n", "expected '$', got '*'"),
    "negative-bulk": (b"*1\r\n$-5\r\n", "invalid bulk length"),
    "null-bulk": (b"*1\r\n$-1\r\n", "invalid bulk length"),
    "non-numeric-multibulk": (b"*abc\r\n", "invalid multibulk length"),
    "non-numeric-bulk": (b"*1\r\n$x1\r\n", "invalid bulk length"),
    "empty-bulk-length": (b"*1\r\n$\r\n", "invalid bulk length"),
    "huge-bulk": (b"*1\r\n$99999999999999\r\n", "request exceeds limits.max_request_size"),
    "long-header-line": (b"*1\r\n$" + b"1" * 70000, "too big bulk count string"),
    "inline-too-long": (b"GET " + b"a" * 70000, "too big inline request"),
}


@pytest.mark.parametrize("payload,message", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_input_closes_only_that_connection(
    daemon: Daemon, payload: bytes, message: str
) -> None:
    with daemon.client() as other:
        other.set("survivor", "yes")
        before = rss_kib(daemon)
        with daemon.raw() as s:
            s.sendall(payload)
            data, closed = read_to_eof(s)
        assert closed, data
        error = data.rsplit(b"\r\n", 2)[-2] if data.count(b"\r\n") > 1 else data.rstrip()
        assert error.startswith(b"-ERR Protocol error: "), data
        assert message in error.decode(), data
        # The daemon and other clients carry on.
        assert other.get("survivor") == b"yes"
        assert other.ping()
        assert rss_kib(daemon) < before + 50 * 1024
    with daemon.client() as fresh:
        assert fresh.ping()
    events = [e for e in daemon.events() if e.get("event") == "protocol_error"]
    assert events, daemon.log_text()
    assert "Traceback" not in daemon.log_text()


def test_request_bigger_than_max_request_size_is_refused_early(small_limits: Daemon) -> None:
    d = small_limits
    with d.raw() as s:
        # The header alone declares too much: refused before the data is sent.
        s.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000000\r\n")
        data, closed = read_to_eof(s)
    assert closed
    assert data.startswith(b"-ERR Protocol error: request exceeds limits.max_request_size")
    with d.raw() as s:
        # Many small arguments that add up to too much.
        s.sendall(b"*10001\r\n$4\r\nMSET\r\n")
        data = b""
        try:
            for _ in range(2000):
                s.sendall(b"$5\r\nkeyXX\r\n$5\r\nvalue\r\n" * 10)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, closed = read_to_eof(s)
    assert closed
    assert data.startswith(b"-ERR Protocol error: request exceeds limits.max_request_size")
    with d.client() as c:
        assert c.ping()


def test_value_bigger_than_max_value_size_is_an_error_reply(small_limits: Daemon) -> None:
    with small_limits.client(single_connection_client=True) as c:
        with pytest.raises(redis.ResponseError) as exc:
            c.set("big", "v" * (16 * 1024 + 1))
        assert str(exc.value) == (
            "value of 16385 bytes exceeds limits.max_value_size (16384 bytes)"
        )
        # The same connection goes on.
        assert c.set("ok", "v" * 16 * 1024)
        assert c.strlen("ok") == 16 * 1024
        with pytest.raises(redis.ResponseError) as exc:
            c.set("k" * (16 * 1024 + 1), "v")
        assert str(exc.value) == "key of 16385 bytes exceeds limits.max_value_size (16384 bytes)"
        with pytest.raises(redis.ResponseError, match="max_value_size"):
            c.mset({"a": "1", "b": "v" * (16 * 1024 + 1)})
        assert c.get("a") is None  # MSET is all or nothing
        assert c.ping()


@pytest.mark.parametrize("store", [False, True], ids=["memory", "sqlite"])
def test_requests_before_bad_bytes_are_answered(daemon_factory: Factory, store: bool) -> None:
    """Redis runs what it parsed before a protocol error, then answers the error."""
    persistence = {"backend": "sqlite"} if store else {"backend": "none"}
    d = daemon_factory({"persistence": persistence})
    with d.raw() as s:
        s.sendall(encode_request("SET", "k", "v") + b"PING\r\n" + b"*1\r\n:1\r\n")
        data, closed = read_to_eof(s)
    assert closed
    assert data.endswith(b"-ERR Protocol error: expected '$', got ':'\r\n")
    if not store:  # (with a store, replies to writes not yet on disk are withheld)
        assert data == b"+OK\r\n+PONG\r\n-ERR Protocol error: expected '$', got ':'\r\n"
    with d.client() as c:
        assert c.get("k") == b"v"
    with d.raw() as s:
        s.sendall(b"PING\r\nQUIT\r\n*x\r\n")  # QUIT closes first: no error after it
        assert read_to_eof(s) == (b"+PONG\r\n+OK\r\n", True)
    assert "Traceback" not in d.log_text()


def test_many_bad_clients_do_not_grow_the_daemon(daemon: Daemon) -> None:
    before = rss_kib(daemon)
    for i in range(30):
        payload = list(MALFORMED.values())[i % len(MALFORMED)][0]
        with daemon.raw() as s:
            s.sendall(payload)
            read_to_eof(s)
    assert rss_kib(daemon) < before + 50 * 1024
    with daemon.client() as c:
        assert c.ping()


# ------------------------------------------------- RequestParser properties

LIMIT = 4096


def feed_all(parser: RequestParser | ExactParser, chunks: list[bytes]) -> list[list[bytes]]:
    out: list[list[bytes]] = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    pieces, last = [], 0
    for c in points:
        pieces.append(data[last:c])
        last = c
    pieces.append(data[last:])
    return pieces


def outcome(
    cls: type[RequestParser] | type[ExactParser], chunks: list[bytes], limit: int = LIMIT
) -> tuple[Any, ...]:
    """("ok", requests) or ("error", requests before the error); never another exception."""
    parser = cls(limit)
    out: list[list[bytes]] = []
    try:
        for chunk in chunks:
            out += parser.feed(chunk)
    except ProtocolError as exc:
        return ("error", out + exc.requests)
    return ("ok", out)


# Arguments that look like protocol, to tempt the fast path.
arguments = st.binary(max_size=40) | st.sampled_from(
    [b"", b"\r\n", b"*", b"$", b"\n*9999999\r\n", b"\n+OK", b"\n:1\r\n", b"*1\r\n$1\r\na\r\n"]
)
requests_st = st.lists(st.lists(arguments, min_size=1, max_size=6), max_size=8)
cuts_st = st.lists(st.integers(0, 2000), max_size=10)

tokens = st.sampled_from(
    [
        b"*", b"$", b"\r\n", b"\n", b"\r", b"0", b"1", b"2", b"3", b"-1", b"-", b"01", b"+1",
        b"9999999", b"2147483647", b"4294967295", b"99999999999999999999",
        b"PING", b"GET", b"a", b":", b"+", b"%", b"~", b">", b"|", b"_", b"#t", b",", b"(",
        b"=", b"!", b" ", b'"', b"'", b"\\", b"\\x41", b"\x00", b"\xff",
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"*1\r\n$4\r\nPING\r\n", b"PING\r\n", b"*0\r\n",
        b"*-1\r\n", b"*1\r\n*1\r\n$1\r\na\r\n", b"*1\r\n:5\r\n", b"*1\r\n%1\r\n",
    ]
)  # fmt: skip
streams = st.lists(tokens, max_size=30).map(b"".join) | st.binary(max_size=200)


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(requests_st, cuts_st)
def test_parser_valid_stream_split_anywhere(reqs: list[list[bytes]], cuts: list[int]) -> None:
    data = b"".join(encode_request(*args) for args in reqs)
    for cls in (RequestParser, ExactParser):
        assert feed_all(cls(LIMIT), split_at(data, cuts)) == reqs
        assert feed_all(cls(LIMIT), [data[i : i + 1] for i in range(len(data))]) == reqs


@settings(max_examples=700, deadline=None, suppress_health_check=list(HealthCheck))
@given(streams, cuts_st, cuts_st)
def test_parser_arbitrary_bytes(data: bytes, cuts: list[int], cuts2: list[int]) -> None:
    """Any bytes: requests or ProtocolError, never another exception; the fast
    parser answers as the exact one does; where the stream is cut changes
    neither the requests nor the verdict."""
    whole = outcome(ExactParser, [data])
    for c in (cuts, cuts2):
        chunks = split_at(data, c)
        assert outcome(RequestParser, chunks) == whole
        assert outcome(ExactParser, chunks) == whole


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(streams, cuts_st, st.sampled_from([16, 40, 64]))
def test_parser_small_request_limit(data: bytes, cuts: list[int], limit: int) -> None:
    whole = outcome(ExactParser, [data], limit)
    chunks = split_at(data, cuts)
    assert outcome(RequestParser, chunks, limit) == whole
    assert outcome(ExactParser, chunks, limit) == whole


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=5), cuts_st)
def test_parser_request_limit_is_exact(args: list[bytes], cuts: list[int]) -> None:
    """A request of exactly max_request_size bytes passes; one byte more fails."""
    data = encode_request(*args)
    assert feed_all(RequestParser(len(data)), split_at(data, cuts)) == [args]
    with pytest.raises(ProtocolError, match="max_request_size"):
        feed_all(RequestParser(len(data) - 1), split_at(data, cuts))


def test_parser_known_answers() -> None:
    p = RequestParser(1 << 20)
    assert p.feed(b"PING\r\n*1\r\n$4\r\nPING\r\nECHO x\r\n") == [
        [b"PING"],
        [b"PING"],
        [b"ECHO", b"x"],
    ]
    assert p.feed(b"*2\r\n$3\r\nGET\r\n$1\r\n") == []
    assert p.feed(b"k\r\n*1\r\n$4\r\nPI") == [[b"GET", b"k"]]
    assert p.feed(b"NG\r\n") == [[b"PING"]]
    with pytest.raises(ProtocolError) as exc:
        RequestParser(1 << 20).feed(b"*1\r\n$4\r\nPING\r\n*1\r\n:1\r\n")
    assert exc.value.requests == [[b"PING"]]
    assert str(exc.value) == "expected '$', got ':'"


def test_parser_refuses_huge_counts_before_allocating() -> None:
    """hiredis would size a list by the declared count (16 GiB here)."""
    for data in (
        b"*4294967295\r\n",
        b"*1\r\n$4\r\nPING\r\n*4294967295\r\n",
        b"*1\r\n*4294967295\r\n",
        b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n*2147483647\r\n",
        b"*1\r\n>4294967295\r\n",
    ):
        with pytest.raises(ProtocolError):
            RequestParser(8 << 20).feed(data)


@pytest.mark.parametrize(
    "line,args",
    [
        (b"SET a b", [b"SET", b"a", b"b"]),
        (b"  SET   a\tb  \r", [b"SET", b"a", b"b"]),
        (b'SET "a b" c', [b"SET", b"a b", b"c"]),
        (b'SET a "\\x41\\x4a\\n\\t\\"q\\\\"', [b"SET", b"a", b'AJ\n\t"q\\']),
        (b"SET 'a \"b' c", [b"SET", b'a "b', b"c"]),
        (b"SET 'it\\'s' x", [b"SET", b"it's", b"x"]),
        (b'SET "" x', [b"SET", b"", b"x"]),
        (b"", []),
    ],
)
def test_split_inline_like_redis(line: bytes, args: list[bytes]) -> None:
    assert split_inline(line) == args


@pytest.mark.parametrize("line", [b'SET "a', b"SET 'a", b'SET "a"b', b"SET 'a'b"])
def test_split_inline_unbalanced(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="unbalanced quotes"):
        split_inline(line)
