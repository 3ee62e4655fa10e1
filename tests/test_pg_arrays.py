"""The shared store's array dumper (sessiond.store.pgarrays) against a real
PostgreSQL: every list of each element type, NULLs and empty lists included,
arrives as the array psycopg's own (generic) dumper sends for it."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg import PgDatabase
from sessiond.store import pgarrays

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
