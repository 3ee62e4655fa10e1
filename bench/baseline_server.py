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

``--pg DSN`` makes them durable in PostgreSQL instead, as sessiond's shared
store groups its commits: the SETs since the last commit go in one upsert of
two arrays (its own transaction, committed with ``synchronous_commit`` as the
server has it), one commit in flight at a time, and the replies wait for it
(``resp_bench.py --persistence --store postgresql --floor``). No locks,
notifications or fence: the floor a Python server reaches with psycopg here.
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
DURABLE: Durable | None = None  # --aof or --pg
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
    if DURABLE is not None:
        DURABLE.note(key, value)
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


class Durable:
    """SETs made durable before their replies: ``writes`` counts them, and
    the replies of a batch that wrote are held until the commit that holds
    its SETs (in order, per connection)."""

    def __init__(self) -> None:
        self.writes = 0
        self.held: list[tuple[RespProtocol, bytes]] = []

    def note(self, key: bytes, value: bytes) -> None:
        self.writes += 1

    def hold(self, conn: RespProtocol, replies: bytes) -> None:
        self.held.append((conn, replies))
        conn.holding += 1

    def release(self, held: list[tuple[RespProtocol, bytes]]) -> None:
        for conn, replies in held:
            conn.holding -= 1
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.write(replies)


class Aof(Durable):
    """--aof: one ``write`` and one ``fdatasync`` at the end of each event-loop
    iteration that wrote."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
        self.log = bytearray()
        self.scheduled = False

    def note(self, key: bytes, value: bytes) -> None:
        super().note(key, value)
        self.log += b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
            len(key), key, len(value), value,
        )  # fmt: skip

    def hold(self, conn: RespProtocol, replies: bytes) -> None:
        super().hold(conn, replies)
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
        self.release(held)


PG_TABLE = "CREATE TABLE IF NOT EXISTS floor_sessions (key bytea PRIMARY KEY, value bytea NOT NULL)"
PG_UPSERT = (
    "INSERT INTO floor_sessions (key, value) SELECT * FROM unnest(%s::bytea[], %s::bytea[]) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


class PgLog(Durable):
    """--pg: one upsert of the SETs since the last commit, one commit in
    flight at a time."""

    def __init__(self, conn: Any) -> None:
        super().__init__()
        self.conn = conn
        self.pending: dict[bytes, bytes] = {}
        self.running = False

    def note(self, key: bytes, value: bytes) -> None:
        super().note(key, value)
        self.pending[key] = value

    def hold(self, conn: RespProtocol, replies: bytes) -> None:
        super().hold(conn, replies)
        if not self.running:
            self.running = True
            asyncio.get_running_loop().create_task(self.commit())

    async def commit(self) -> None:
        try:
            while self.held:
                batch, self.pending = self.pending, {}
                held, self.held = self.held, []
                if batch:
                    await self.conn.execute(
                        PG_UPSERT, (list(batch), list(batch.values())), binary=True
                    )
                self.release(held)
        finally:
            self.running = False


class RespProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.holding = 0  # batches of replies waiting for a commit (--aof, --pg)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        out: list[bytes] = []
        writes = DURABLE.writes if DURABLE is not None else 0
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
        if DURABLE is not None and (self.holding or DURABLE.writes != writes):
            DURABLE.hold(self, b"".join(out))  # after the commit, behind any held before
            return
        assert self.transport is not None
        self.transport.write(b"".join(out))


async def serve(path: Path, pg: str | None) -> None:
    path.unlink(missing_ok=True)
    loop = asyncio.get_running_loop()
    if pg is not None:
        import psycopg

        global DURABLE
        conn = await psycopg.AsyncConnection.connect(pg, autocommit=True)
        await conn.execute(PG_TABLE)
        DURABLE = PgLog(conn)
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
    durable = parser.add_mutually_exclusive_group()
    durable.add_argument(
        "--aof", type=Path, metavar="PATH", help="SETs durable in PATH before their reply"
    )
    durable.add_argument(
        "--pg", metavar="DSN", help="SETs durable in this PostgreSQL before their reply"
    )
    args = parser.parse_args()
    if args.aof:
        global DURABLE
        DURABLE = Aof(args.aof)
    if args.lru:
        global DATA, LRU
        DATA = OrderedDict()
        LRU = DATA.move_to_end
    print(f"baseline server pid {os.getpid()} on {args.socket}", flush=True)
    uvloop.run(serve(args.socket, args.pg))


if __name__ == "__main__":
    main()
