"""Regression tests for the incompatibilities that real session stores found in
sessiond (tests/test_frameworks.py, issue 7). Each test talks to the daemon with
redis-py or raw RESP only, not through the framework that found the problem.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from conftest import Daemon

Factory = Callable[..., Daemon]


def test_scan_and_dbsize_see_writes_committed_during_the_call(daemon_factory: Factory) -> None:
    """Found by connect-redis' ``length()``/``ids()`` (SCAN MATCH ... COUNT 100) under
    ``durability: batch``: SCAN, KEYS and DBSIZE read the store's rows, then the
    uncommitted writes; a batch committed between the two was in neither, so keys
    written (and acknowledged) before the call were missing from its answer."""
    d = daemon_factory(
        {
            "persistence": {"backend": "sqlite", "durability": "batch", "flush_interval": "5ms"},
            "cache": {"max_sessions": 1000},
        }
    )
    r = d.client()
    pipe = r.pipeline(transaction=False)
    for i in range(20000):  # enough rows that reading them overlaps commits
        pipe.set(f"base:{i}", "x")
    pipe.execute()

    acked = 0
    stop = threading.Event()

    def writer() -> None:
        nonlocal acked
        with d.client() as w:
            i = 0
            while not stop.is_set():
                p = w.pipeline(transaction=False)
                for _ in range(50):
                    p.set(f"new:{i}", "y")
                    i += 1
                p.execute()
                acked = i

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for _ in range(20):
            before = acked
            assert r.dbsize() >= 20000 + before
            before = acked
            found = {int(k.split(b":")[1]) for k in r.scan_iter(match="new:*", count=5000)}
            assert set(range(before)) <= found
            before = acked
            found = {int(k.split(b":")[1]) for k in r.keys("new:*")}
            assert set(range(before)) <= found
    finally:
        stop.set()
        thread.join()
    r.close()
