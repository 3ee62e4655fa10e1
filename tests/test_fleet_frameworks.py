"""Framework session stores across a fleet: a session written through host A's
sessiond is read through host B's (issue #15), each store driven through its own
code as in test_frameworks.py: Django's cache session engine, Flask-Session,
express-session on connect-redis and node-redis (tests/node/fleet_sessions.mjs), and
phpredis' locked sessions (test_php.py's requests, alternating between the hosts).

A change made on one host reaches the other within the invalidation lag (a few
milliseconds); reads that follow a change on the other host poll for up to a
second, which is the promise, not the measurement (bench/fleet_lag.py measures it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon
from pg import PgDatabase
from test_fleet import fleet_config
from test_frameworks import NODE_DIR, flask_app, node_modules
from test_php import PREFIX, php, phpredis_request
from test_php import finish as php_finish

pytestmark = pytest.mark.fleet

__all__ = ["node_modules", "php"]  # the fixtures, shared with test_frameworks.py, test_php.py


@pytest.fixture(scope="module")
def hosts(
    pg_cluster: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Daemon, Daemon]]:
    """Two hosts on one fresh database, for the module."""
    db = PgDatabase(pg_cluster, pg_cluster.create_database())
    base = tmp_path_factory.mktemp("fleet-frameworks")
    made = [
        Daemon(base / name, fleet_config(db.dsn(application_name=name))).start()
        for name in ("a", "b")
    ]
    yield made[0], made[1]
    for d in made:
        d.stop()
    pg_cluster.drop_database(db.name)


def eventually(read: Callable[[], Any], want: Any, timeout: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    got = read()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.01)
        got = read()
    return got


# ------------------------------------------------------------------ Django


def test_a_django_session_made_on_one_host_is_read_and_changed_on_another(
    hosts: tuple[Daemon, Daemon],
) -> None:
    import django
    from django.conf import settings
    from django.test.utils import override_settings

    if not settings.configured:
        settings.configure(
            SECRET_KEY="sessiond-tests",
            INSTALLED_APPS=["django.contrib.sessions"],
            USE_TZ=True,
        )
        django.setup()
    from django.contrib.sessions.backends.cache import SessionStore
    from django.core.cache import close_caches

    a, b = hosts
    backend = "django.core.cache.backends.redis.RedisCache"
    caches = {
        "default": {"BACKEND": backend, "LOCATION": f"unix://{a.socket_path}"},
        "a": {"BACKEND": backend, "LOCATION": f"unix://{a.socket_path}"},
        "b": {
            "BACKEND": backend,
            "LOCATION": f"unix://{b.socket_path}",
            "OPTIONS": {"protocol": 3},
        },
    }
    with override_settings(
        CACHES=caches,
        SESSION_ENGINE="django.contrib.sessions.backends.cache",
        SESSION_COOKIE_AGE=600,
    ):
        try:
            with override_settings(SESSION_CACHE_ALIAS="a"):
                s = SessionStore()
                s["user_id"] = 42
                s["cart"] = ["a", "b"]
                s.create()
                key = s.session_key
            assert key
            with override_settings(SESSION_CACHE_ALIAS="b"):
                on_b = SessionStore(key)
                assert on_b.load() == {"user_id": 42, "cart": ["a", "b"]}
                on_b["cart"] = ["a", "b", "c"]
                on_b.save()
            with override_settings(SESSION_CACHE_ALIAS="a"):
                assert eventually(
                    lambda: SessionStore(key).load().get("cart"), ["a", "b", "c"]
                ) == [
                    "a",
                    "b",
                    "c",
                ]
                SessionStore(key).delete()
            with override_settings(SESSION_CACHE_ALIAS="b"):
                assert eventually(lambda: SessionStore(key).load(), {}) == {}
                assert not SessionStore(key).exists(key)
        finally:
            close_caches()


# ------------------------------------------------------------------- Flask


def test_a_flask_session_made_on_one_host_is_read_on_another(
    hosts: tuple[Daemon, Daemon],
) -> None:
    prefix = f"flask{uuid.uuid4().hex[:8]}:"
    on_a = flask_app(hosts[0], prefix=prefix).test_client()
    on_b = flask_app(hosts[1], prefix=prefix).test_client()
    assert on_a.get("/set/hello").data == b"ok"
    cookie = on_a.get_cookie("session")
    assert cookie is not None
    on_b.set_cookie("session", cookie.value)  # the load balancer sends it to B
    assert on_b.get("/get").data == b"hello"
    assert on_b.get("/set/world").data == b"ok"
    # Flask-Session saves the session at the end of every request, reads too
    # (SESSION_REFRESH_EACH_REQUEST): a request on A within the invalidation
    # lag would read the old session and write it back over B's. So wait with
    # a plain GET, which writes nothing, until A serves what B wrote; on a
    # loaded CI machine the first request on A came too soon and wrote "hello"
    # back (README, the consistency promise).
    key = (prefix + cookie.value).encode()
    with hosts[1].client() as on_b_raw:
        assert on_b_raw.get(key) is not None  # the key Flask-Session keeps it under
    heard_on(hosts[0], key, hosts[1])
    assert on_a.get("/get").data == b"world"
    assert on_a.get("/logout").data == b"bye"
    heard_on(hosts[1], key, hosts[0])
    assert on_b.get("/get").data == b"<none>"


def heard_on(host: Daemon, key: bytes, writer: Daemon) -> None:
    """Until ``host`` serves for ``key`` what ``writer`` holds (reads only).
    Up to 10 s: a wait for the invalidation on a busy machine, not its measure."""
    with host.client() as on_host, writer.client() as on_writer:
        want = on_writer.get(key)
        assert eventually(lambda: on_host.get(key), want, timeout=10.0) == want


# -------------------------------------------------------------- node-redis


def test_an_express_session_made_on_one_host_is_read_on_another(
    node_modules: Path, hosts: tuple[Daemon, Daemon]
) -> None:
    node = shutil.which("node")
    assert node is not None
    a, b = hosts
    proc = subprocess.run(
        [node, str(NODE_DIR / "fleet_sessions.mjs"), str(a.socket_path), str(b.socket_path)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"node failed:\n{proc.stdout}\n{proc.stderr}"
    out = json.loads(proc.stdout)
    assert out["set_on_a"] == "hello"
    assert out["read_on_b"] == "hello"
    assert out["changed_on_b"] == "world"
    assert out["read_on_a"] == "world"
    assert out["store_get_on_b"] == "world"
    assert 55 <= out["ttl_on_b"] <= 60
    assert out["after_logout_on_b"] is None
    assert out["exists_on_b"] == 0


# -------------------------------------------------------------------- PHP


def test_phpredis_locked_sessions_across_hosts_lose_no_update(
    php: str, hosts: tuple[Daemon, Daemon]
) -> None:
    """Eight concurrent PHP requests on one session, alternating between the
    hosts, with phpredis' session locking (SET NX EX, a Lua release script):
    each reads the session under the lock and increments it, so every
    increment lands, whichever host served the request before."""
    a, b = hosts
    session = f"fleet-{uuid.uuid4().hex[:8]}"
    procs = [
        phpredis_request(php, (a, b)[i % 2], session, locking=True, hold_ms=50) for i in range(8)
    ]
    counts = sorted(php_finish(p) for p in procs)
    assert counts == list(range(1, 9))
    with b.client() as r:
        assert r.exists(f"{PREFIX}{session}_LOCK") == 0
        stored = r.get(f"{PREFIX}{session}")
        assert stored is not None and stored.startswith(b"n|i:8;")
