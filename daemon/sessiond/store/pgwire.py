"""Statements prepared once per connection, sent through libpq directly.

The group commit calls one statement, the same each time, with parameters of
the same types (:data:`.pgsql.COMMIT_PREPARED`). psycopg's cursor prepares,
dumps, sends and reads it back through generators, its adapters and its
prepared-statement cache at every execute. Sent as here, a durable SET at
``-c 1`` took 7% fewer of the daemon's instructions (459k -> 427k,
``bench/instructions.py --durable --servers sessiond-shared --clients 1``;
a throwaway loop of bare commits counted 264k against 199k a commit). Here the
statement is ``PREPARE``\\d once when the connection opens (:func:`prepare`),
its parameters come in binary (:func:`.pgsql.commit_params`), and :func:`run`
sends it, in autocommit (the call is its own transaction), with psycopg's libpq
wrapper (``psycopg.pq``), waits on the event loop for the socket and reads the
results: psycopg's connection object stays in
charge of everything else on the connection, and its lock
keeps it off the connection meanwhile.

A decision's transaction is two round trips of a few statements each
(:func:`pipeline`: ``BEGIN``, the keys' locks and rows; then its changes and
barrier and ``COMMIT``), their statements prepared by the connection's first
decision, sent the same way instead of through psycopg's pipeline mode and
cursor: 1,253,061 -> 572,469 instructions per INCR at ``-c 1``
(bench/instructions.py --durable --decide).

Failures are psycopg's own exceptions: the server's error as psycopg makes it
(``psycopg.errors.error_from_result``, so a fence's ``DivisionByZero`` is one),
a lost connection as :class:`psycopg.OperationalError`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import ConnStatus, ExecStatus, Format
from psycopg.pq.abc import PGconn, PGresult

_OK: Final[tuple[int, ...]] = (ExecStatus.TUPLES_OK, ExecStatus.COMMAND_OK)  # see stats.Bounds


async def prepare(conn: psycopg.AsyncConnection[Any], name: str, sql: str) -> None:
    """``PREPARE`` statement ``name`` as ``sql`` (its parameters typed) on ``conn``."""
    await conn.execute(f"PREPARE {name} AS {sql}")


async def run(conn: psycopg.AsyncConnection[Any], name: bytes, dumped: Sequence[bytes]) -> None:
    """Run the prepared statement ``name`` with ``dumped`` (its parameters in
    binary) on ``conn`` (idle, in autocommit: the statement is its own
    transaction) and read its results; raise the first error."""
    pgconn = conn.pgconn
    loop = asyncio.get_running_loop()
    async with conn.lock:
        pgconn.send_query_prepared(
            name, dumped, param_formats=_binary_formats(len(dumped)), result_format=Format.BINARY
        )
        await _flush(loop, pgconn)
        error: psycopg.Error | None = None
        # Read on to the end after an error, so that the connection is idle again.
        while (result := await _result(loop, pgconn)) is not None:
            error = _first_error(conn, result, error)
        if error is not None:
            raise error
        if pgconn.status != ConnStatus.OK:
            # The results ended with the connection, not with its answer: the
            # commit may or may not have landed.
            raise psycopg.OperationalError(pgconn.get_error_message())


async def pipeline(
    conn: psycopg.AsyncConnection[Any],
    prepare: Sequence[tuple[bytes, bytes]],
    calls: Sequence[tuple[bytes, Sequence[bytes]]],
    *,
    before: bytes = b"",
    after: bytes = b"",
) -> list[PGresult]:
    """In one of libpq's pipelines, one round trip: the statement ``before``
    (``BEGIN``, say), ``PREPARE`` each of ``prepare`` (name, statement), run
    each of ``calls`` (a prepared statement's name, its parameters in
    binary, its rows asked for in binary), then the statement ``after``
    (``COMMIT``, say); read every result, raise the first error (the
    statements after it are skipped by the server), and return the calls'
    results, in order. A server's error is raised once every result is read
    and pipeline mode is left: the connection may be in a failed transaction,
    which the caller rolls back (postgres: a decision whose statements went
    missing) or drops. After any other exception it may still be in pipeline
    mode: the caller drops it."""
    pgconn = conn.pgconn
    loop = asyncio.get_running_loop()
    async with conn.lock:
        pgconn.enter_pipeline_mode()
        if before:
            pgconn.send_query_params(before, None)
        for name, sql in prepare:
            pgconn.send_prepare(name, sql)
        for name, dumped in calls:
            pgconn.send_query_prepared(
                name,
                dumped,
                param_formats=_binary_formats(len(dumped)),
                result_format=Format.BINARY,
            )
        if after:
            pgconn.send_query_params(after, None)
        pgconn.pipeline_sync()
        await _flush(loop, pgconn)
        results: list[PGresult] = []
        error: psycopg.Error | None = None
        while True:
            # None ends one statement's results; the sync's result ends them all.
            if (result := await _result(loop, pgconn)) is None:
                if pgconn.status != ConnStatus.OK:
                    # libpq gave up on the connection (it lost the protocol's
                    # thread): no sync will come, and asking again would spin.
                    raise psycopg.OperationalError(pgconn.get_error_message())
                continue
            if result.status == ExecStatus.PIPELINE_SYNC:
                break
            error = _first_error(conn, result, error)
            results.append(result)
        pgconn.exit_pipeline_mode()
        if error is not None:
            raise error
        first = bool(before) + len(prepare)
        return results[first : first + len(calls)]


async def _flush(loop: asyncio.AbstractEventLoop, pgconn: PGconn) -> None:
    """As libpq asks: while what was sent is not all out, wait until the
    socket can take more or has something to read, and read that."""
    while pgconn.flush():
        await _ready(loop, pgconn.socket, write=True)
        pgconn.consume_input()


async def _result(loop: asyncio.AbstractEventLoop, pgconn: PGconn) -> PGresult | None:
    """The next result (``None``: the end of a statement's). get_result()
    blocks in libpq while a result is incomplete: wait on the loop first,
    every time (the last message can come late)."""
    while pgconn.is_busy():
        await _ready(loop, pgconn.socket)
        pgconn.consume_input()
    return pgconn.get_result()


def _first_error(
    conn: psycopg.AsyncConnection[Any], result: PGresult, error: psycopg.Error | None
) -> psycopg.Error | None:
    """``error``, or the server's error ``result`` carries if it is the first.
    A result none of these statements can give (a COPY, say) raises: the
    caller drops the connection."""
    status = result.status
    if status == ExecStatus.FATAL_ERROR:
        if error is None:
            return pg_errors.error_from_result(result, encoding=conn.info.encoding)
    elif status not in _OK and status != ExecStatus.PIPELINE_ABORTED:
        raise psycopg.InterfaceError(f"unexpected result: {ExecStatus(status).name}")
    return error


@functools.cache
def _binary_formats(count: int) -> list[int]:
    """Every parameter in binary: the same list for every commit."""
    return [Format.BINARY] * count


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool = False) -> None:
    """Until ``fd`` is readable (or, with ``write``, writable or readable)."""
    future: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, _wake, future)
    if write:
        loop.add_writer(fd, _wake, future)
    try:
        await future
    finally:
        loop.remove_reader(fd)
        if write:
            loop.remove_writer(fd)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
