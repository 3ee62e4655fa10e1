"""The shared store's array dumper (sessiond.store.pgarrays) against a real
PostgreSQL: every list of each element type, NULLs and empty lists included,
arrives as the array psycopg's own (generic) dumper sends for it, and text
arrives as written in a database of another encoding too."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg import PgCluster, PgDatabase
from pg_fixtures import fields
from psycopg import sql
from psycopg.adapt import PyFormat, Transformer
from psycopg.conninfo import make_conninfo
from psycopg.types.numeric import Int8
from sessiond.store import StoreError, pgarrays, pgsql
from sessiond.store.api import Renewal, scan_hash
from sessiond.store.postgres import PostgresStore, connection_params

_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"))
_FLOAT = st.floats(allow_nan=False)

# (list class, PostgreSQL type, elements; None where the store sends NULLs)
CASES: list[tuple[type[list[Any]], str, st.SearchStrategy[Any]]] = [
    (pgarrays.Bytea, "bytea", st.binary()),
    (pgarrays.Text, "text", st.none() | _TEXT),
    (pgarrays.Float8, "float8", st.none() | _FLOAT),
    (pgarrays.Int2, "int2", st.integers(-(2**15), 2**15 - 1)),
    (pgarrays.Int4, "int4", st.integers(-(2**31), 2**31 - 1)),
    (pgarrays.Int8, "int8", st.none() | st.integers(-(2**63), 2**63 - 1)),
]


@pytest.mark.parametrize(("array", "pg_type", "elements"), CASES, ids=[c[1] for c in CASES])
def test_arrays_arrive_as_psycopg_sends_them(
    pg_db: PgDatabase,
    array: type[list[Any]],
    pg_type: str,
    elements: st.SearchStrategy[Any],
) -> None:
    with (
        psycopg.connect(pg_db.dsn(), context=pgarrays.ADAPTERS, autocommit=True) as ours,
        psycopg.connect(pg_db.dsn(), autocommit=True) as theirs,
    ):
        query = f"SELECT %b::{pg_type}[], cardinality(%b::{pg_type}[])"

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(st.lists(elements, max_size=20))
        def check(items: list[Any]) -> None:
            sent = array(items)
            got = ours.execute(query, (sent, sent)).fetchone()
            want = theirs.execute(query, (items, items)).fetchone()
            assert got == want
            assert got is not None and got[1] == len(items)

        check()


def test_text_arrives_as_written_whatever_the_encodings(pg_cluster: PgCluster) -> None:
    """The dumper sends text as UTF-8, so the store's connections speak UTF-8
    even to a LATIN1 database and when the DSN asks for LATIN1: a non-ASCII
    context is stored as the client wrote it, not as its UTF-8 bytes read as
    LATIN1 ('\u00e9' arriving as '\u00c3\u00a9')."""
    name = "latin1_" + pg_cluster.create_database().removeprefix("t_")
    with pg_cluster.admin() as admin:
        admin.execute(
            sql.SQL(
                "CREATE DATABASE {} OWNER {} ENCODING 'LATIN1' TEMPLATE template0 "
                "LC_COLLATE 'C' LC_CTYPE 'C'"
            ).format(sql.Identifier(name), sql.Identifier(pg_cluster.app_role))
        )
    try:
        for dsn in (pg_cluster.dsn(name), pg_cluster.dsn(name, client_encoding="LATIN1")):
            params = connection_params(dsn, None, 5.0, "test")
            with psycopg.connect(make_conninfo(**params), context=pgarrays.ADAPTERS) as conn:
                got = conn.execute(
                    "SELECT (%b::text[])[1], octet_length(convert_to((%b::text[])[1], 'LATIN1'))",
                    (pgarrays.Text(["caf\u00e9"]), pgarrays.Text(["caf\u00e9"])),
                ).fetchone()
            assert got == ("caf\u00e9", 4), (dsn, got)
    finally:
        pg_cluster.drop_database(name)


@pytest.mark.parametrize(
    ("array", "items"),
    [
        (pgarrays.Int2, [2**15]),
        (pgarrays.Float8, ["1.0"]),
        (pgarrays.Bytea, [1]),
        (pgarrays.Text, ["\udc80"]),
    ],
    ids=["int2 out of range", "float8 of a str", "bytea of an int", "text with a lone surrogate"],
)
def test_what_cannot_be_sent_fails_as_psycopg_fails(
    pg_db: PgDatabase, array: type[list[Any]], items: list[Any]
) -> None:
    """A value the dumper cannot send raises psycopg.DataError, as psycopg's own
    dumpers do, which the store turns into a refused write (not an exception
    that would end its writer)."""
    with (
        psycopg.connect(pg_db.dsn(), context=pgarrays.ADAPTERS) as conn,
        pytest.raises(psycopg.DataError),
    ):
        conn.execute("SELECT %b", (array(items),))


@pytest.mark.parametrize(
    ("element", "items"),
    [
        ("int2", [2**20]),
        ("float8", ["x"]),
        ("bytea", [1]),
        ("text", [b"bytes"]),
        ("text", [b"b"] * 9),
    ],
    ids=["int2 out of range", "float8 of a str", "bytea of an int", "text of bytes", "nine"],
)
def test_what_a_plain_list_cannot_send_fails_as_psycopg_fails(
    element: str, items: list[Any]
) -> None:
    """The group commit dumps plain lists (pgarrays.dump): the same refusal,
    psycopg.DataError, for one element, a few, or many, in both builds."""
    with pytest.raises(psycopg.DataError):
        pgarrays.dump(element, items)


async def _committed(store: PostgresStore, key: Any, change: Any) -> StoreError | None:
    """Record one change and wait for its commit: None, or why it failed."""
    told: asyncio.Future[StoreError | None] = asyncio.get_running_loop().create_future()
    store.record(key, change)
    store.after_commit(told.set_result)
    return await asyncio.wait_for(told, 30)


def _refused_then_landed(pg_db: PgDatabase, key: Any, change: Any) -> tuple[str, StoreError | None]:
    """A store given a change its commit cannot carry, then a good one (once
    the writer is back): why the first was refused ("refused when recorded"
    if recording it raised TypeError), and how the second's commit ended."""

    async def main() -> tuple[str, StoreError | None]:
        store = PostgresStore(pg_db.dsn())
        await store.open(10.0)
        try:
            try:
                outcome = str(await _committed(store, key, change))
            except TypeError:
                outcome = "refused when recorded"
            while store.failure is not None:  # refused until the writer's probe
                await asyncio.sleep(0.05)
            return outcome, await _committed(store, b"k", fields(b"w"))
        finally:
            await store.aclose()

    return asyncio.run(main())


def test_a_commit_that_cannot_be_sent_is_refused_and_the_writer_goes_on(pg_db: PgDatabase) -> None:
    """A change the commit's parameters cannot carry (here a kind out of
    int2's range, which no command makes) fails its write with an error; the
    writer lives on and commits the next write."""
    refused, landed = _refused_then_landed(pg_db, b"bad", (*fields(b"v")[:7], 2**20))
    assert "cannot send" in refused, refused
    assert landed is None
    with pg_db.connect() as conn:
        assert conn.execute("SELECT key, value FROM sessiond_sessions").fetchall() == [(b"k", b"w")]


def test_a_change_of_the_wrong_type_never_ends_the_writer(pg_db: PgDatabase) -> None:
    """A key that is not bytes (no command makes one): compiled, the overlay
    refuses it as it is recorded; interpreted, it reaches the commit's
    parameters, whose failure outside the dumpers is a refused write too,
    not an exception that ends the writer (every later write would wait)."""
    outcome, landed = _refused_then_landed(pg_db, "not bytes", fields(b"v"))
    assert outcome == "refused when recorded" or "cannot send the commit" in outcome, outcome
    assert landed is None


_FIELDS = st.tuples(
    st.binary(max_size=300),
    st.none() | _TEXT,
    _FLOAT,
    _FLOAT,
    _FLOAT,
    st.none() | _FLOAT,
    st.none() | _FLOAT,
    st.integers(0, 2**15 - 1),
)


@settings(max_examples=300, deadline=None)
@given(
    batch=st.dictionaries(st.binary(min_size=1, max_size=40), st.none() | _FIELDS, max_size=12),
    renewals=st.dictionaries(
        st.binary(min_size=1, max_size=40), st.builds(Renewal, _FLOAT, _FLOAT, _FLOAT), max_size=4
    ),
    cleared=st.booleans(),
    token=st.tuples(*[st.integers(-(2**63), 2**63 - 1)] * 3),
    fence=_FLOAT,
    lock=st.booleans(),
)
def test_the_commit_s_parameters_are_what_psycopg_dumps_for_them(
    batch: dict[bytes, Any],
    renewals: dict[bytes, Renewal],
    cleared: bool,
    token: tuple[int, int, int],
    fence: float,
    lock: bool,
) -> None:
    """The commit function's parameters are made in binary from plain lists
    (pgsql.commit_params), for the group commit and for a decision (which
    holds its keys' locks already), both sent without psycopg (pgwire.py):
    each must be the bytes psycopg dumps for the typed array, the bool, the
    integer or the float it stands for, in the function's order."""
    params, notices = pgsql.commit_params(
        "host", 1.5, batch, cleared, renewals, token, fence, lock=lock
    )
    upserts = [(key, fields) for key, fields in batch.items() if fields is not None]
    texts = pgsql.payloads("host", 1.5, list(batch), cleared)
    values = [
        pgarrays.Int4(pgsql.lock_ids([*batch, *renewals]) if lock else []),
        cleared,
        pgarrays.Bytea(key for key, _ in upserts),
        pgarrays.Int8(scan_hash(key) for key, _ in upserts),
        *(
            pgarrays.BY_TYPE[kind](fields[i] for _, fields in upserts)
            for i, kind in enumerate(pgsql.ROW_TYPES)
        ),
        pgarrays.Bytea(key for key, fields in batch.items() if fields is None),
        pgarrays.Bytea(renewals),
        pgarrays.Float8(renewal.ttl for renewal in renewals.values()),
        pgarrays.Float8(renewal.deadline for renewal in renewals.values()),
        pgarrays.Float8(renewal.accessed_at for renewal in renewals.values()),
        pgarrays.Text(texts),
        *map(Int8, token),
        fence,
    ]
    transformer = Transformer(pgarrays.ADAPTERS)
    want = [bytes(transformer.get_dumper(v, PyFormat.BINARY).dump(v)) for v in values]
    assert params == want
    assert notices == len(texts)


@given(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=40))
def test_an_int4_array_comes_back_as_it_was_sent(ids: list[int]) -> None:
    """pgarrays.load_int4 reads a decision's lock ids (pgsql.TRY_LOCK_KEYS'
    int4[], in binary) as pgarrays.dump writes them, the empty array too."""
    assert pgarrays.load_int4(pgarrays.dump("int4", ids)) == ids
