"""pytest fixtures for a real PostgreSQL (tests/pg.py) and a breakable TCP link
(tests/tcp_proxy.py). Loaded by tests/conftest.py.

- ``pg_cluster`` (session): the cluster tests share, started on first use. Use a
  database of its own per test (``pg_db``); never stop or reconfigure it.
- ``pg_db``: a fresh database on the shared cluster, owned by the role ``sessiond``,
  dropped after the test: ``pg_db.dsn()``, ``pg_db.connect()``, ``pg_db.name``.
- ``pg_own_cluster``: a cluster of the test's own, to stop, kill, restart, slow down,
  replicate (``create_replica()``) and promote; it has the database ``sessiond``.
- ``pg_cluster_factory``: ``make(settings={...})`` for more clusters of the test's own.
- ``tcp_proxy``: ``tcp_proxy(port)`` a started ``TcpProxy`` to that port, closed after.
- ``fields(value)``: a plain string session's row, as a write records it in the store
  (for tests that drive ``PostgresStore`` in process).

Tests using them skip, with the reason, only when the PostgreSQL server programs are not
installed (``bash scripts/test.sh`` installs them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pg import PgCluster, PgDatabase, PgUnavailable
from tcp_proxy import TcpProxy


def fields(value: bytes) -> tuple[bytes, None, float, float, float, None, None, int]:
    """A plain string session, as a write records it."""
    return (value, None, 1.0, 1.0, 1.0, None, None, 0)


def _create_or_skip(**kwargs: Any) -> PgCluster:
    try:
        return PgCluster.create(**kwargs)
    except PgUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """The PostgreSQL cluster tests share (session): use ``pg_db``, don't stop it."""
    cluster = _create_or_skip(name="shared")
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_db(pg_cluster: PgCluster) -> Iterator[PgDatabase]:
    """A fresh database on the shared cluster, owned by ``sessiond``; dropped after."""
    assert pg_cluster.running, (
        "the shared PostgreSQL cluster is down: a test stopped it "
        "(tests that stop or kill the server use pg_own_cluster)"
    )
    db = PgDatabase(pg_cluster, pg_cluster.create_database())
    yield db
    if pg_cluster.running:
        pg_cluster.drop_database(db.name)


@pytest.fixture
def pg_cluster_factory() -> Iterator[Callable[..., PgCluster]]:
    """``make(settings=..., start=...)``: started clusters of the test's own."""
    made: list[PgCluster] = []

    def make(**kwargs: Any) -> PgCluster:
        cluster = _create_or_skip(**kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.destroy()


@pytest.fixture
def pg_own_cluster(pg_cluster_factory: Callable[..., PgCluster]) -> PgCluster:
    """A cluster of the test's own: stop, kill, slow down, replicate, promote it."""
    return pg_cluster_factory()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[..., TcpProxy]]:
    """``tcp_proxy(port)``: a started TcpProxy to 127.0.0.1:port, closed after."""
    made: list[TcpProxy] = []

    def make(target_port: int, target_host: str = "127.0.0.1") -> TcpProxy:
        proxy = TcpProxy(target_port, target_host).start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()
