#!/usr/bin/env python3
"""The floor a Python event loop reaches here: asyncio + uvloop + hiredis on a Unix socket.

    python bench/baseline_server.py --socket /tmp/baseline.sock

Answers what redis-benchmark sends (GET, SET key value, PING, and the CONFIG GET save /
appendonly it asks for at start) from a plain dict, with one ``transport.write`` per
read, so pipelining works. Nothing else: no TTLs, limits, auth, inline commands,
metrics or flow control. Malformed input gets ``-ERR Protocol error`` and the
connection is closed, as Redis does. ``bench/instructions.py`` measures its cost per
request next to sessiond's.

``--lru`` keeps the dict in exact LRU order as sessiond's core does (an
``OrderedDict``, ``move_to_end`` on every hit and write): the same floor plus
what exact LRU alone costs (``resp_bench.py --floor-lru``).

``--aof PATH`` makes SETs durable as Redis' ``appendfsync always`` does: each
SET is appended to PATH as its RESP request, and once per event-loop
iteration that has any, the appended requests are written with one ``write``
and one ``fdatasync``, and only then are the replies of the connections that
wrote sent: the floor for sessiond's ``durability: always``
(``resp_bench.py --persistence --floor``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import hiredis
import uvloop

Handler = Callable[[list[Any]], bytes]

DATA: OrderedDict[bytes, bytes] | dict[bytes, bytes] = {}
LRU: Callable[[bytes], None] | None = None  # --lru: OrderedDict.move_to_end
CONFIG = {b"save": b"", b"appendonly": b"no"}
AOF: Aof | None = None  # --aof
OK = b"+OK\r\n"
NIL = b"$-1\r\n"


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def arity(name: str) -> bytes:
    return b"-ERR wrong number of arguments for '%s' command\r\n" % name.encode()


def get(args: list[Any]) -> bytes:
    if len(args) != 2:
        return arity("get")
    value = DATA.get(args[1])
    if value is None:
        return NIL
    if LRU is not None:
        LRU(args[1])
    return bulk(value)


def set_(args: list[Any]) -> bytes:
    if len(args) != 3:
        return arity("set") if len(args) < 3 else b"-ERR syntax error\r\n"
    key, value = args[1], args[2]
    if type(key) is not bytes or type(value) is not bytes:
        raise TypeError("not a bulk string")
    DATA[key] = value
    if LRU is not None:
        LRU(key)
    if AOF is not None:
        AOF.log += b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
            len(key), key, len(value), value,
        )  # fmt: skip
    return OK


def ping(args: list[Any]) -> bytes:
    if len(args) > 2:
        return arity("ping")
    return b"+PONG\r\n" if len(args) == 1 else bulk(args[1])


def config(args: list[Any]) -> bytes:
    if len(args) < 3 or args[1].upper() != b"GET":
        return b"-ERR only CONFIG GET is supported\r\n"
    found = [(p, CONFIG[p.lower()]) for p in args[2:] if p.lower() in CONFIG]
    return b"*%d\r\n" % (2 * len(found)) + b"".join(bulk(k) + bulk(v) for k, v in found)


COMMANDS: dict[bytes, Handler] = {b"GET": get, b"SET": set_, b"PING": ping, b"CONFIG": config}


class Aof:
    """The append-only file: SETs appended since the last commit, and the
    replies held until it (in order, per connection)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
        self.log = bytearray()
        self.held: list[tuple[RespProtocol, bytes]] = []
        self.scheduled = False

    def hold(self, conn: RespProtocol, replies: bytes) -> None:
        self.held.append((conn, replies))
        conn.holding += 1
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.commit)

    def commit(self) -> None:
        self.scheduled = False
        if self.log:
            os.write(self.fd, self.log)
            os.fdatasync(self.fd)
            self.log.clear()
        held, self.held = self.held, []
        for conn, replies in held:
            conn.holding -= 1
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.write(replies)


class RespProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.holding = 0  # batches of replies waiting for the AOF's commit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        out: list[bytes] = []
        logged = len(AOF.log) if AOF is not None else 0
        try:
            reader.feed(data)
            while (request := reader.gets()) is not False:
                if type(request) is not list or not request:
                    raise TypeError("not a request")
                name = request[0]
                handler = COMMANDS.get(name) or COMMANDS.get(name.upper())
                if handler is None:
                    shown = name[:128].replace(b"\r", b" ").replace(b"\n", b" ")
                    out.append(b"-ERR unknown command '%b'\r\n" % shown)
                else:
                    out.append(handler(request))
        except (hiredis.ProtocolError, TypeError, AttributeError):
            out.append(b"-ERR Protocol error: expected a multi-bulk request\r\n")
            assert self.transport is not None
            self.transport.write(b"".join(out))
            self.transport.close()
            return
        if not out:
            return
        if AOF is not None and (self.holding or len(AOF.log) != logged):
            AOF.hold(self, b"".join(out))  # after the commit, behind any held before
            return
        assert self.transport is not None
        self.transport.write(b"".join(out))


async def serve(path: Path) -> None:
    path.unlink(missing_ok=True)
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(RespProtocol, str(path))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        path.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", type=Path, required=True, help="Unix socket to listen on")
    parser.add_argument("--lru", action="store_true", help="keep the keys in exact LRU order")
    parser.add_argument(
        "--aof", type=Path, metavar="PATH", help="SETs durable in PATH before their reply"
    )
    args = parser.parse_args()
    if args.aof:
        global AOF
        AOF = Aof(args.aof)
    if args.lru:
        global DATA, LRU
        DATA = OrderedDict()
        LRU = DATA.move_to_end
    print(f"baseline server pid {os.getpid()} on {args.socket}", flush=True)
    uvloop.run(serve(args.socket))


if __name__ == "__main__":
    main()
