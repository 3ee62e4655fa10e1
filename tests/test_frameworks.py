"""Real session stores against a real sessiond, each through its own code (issue 7):

- Django: ``django.contrib.sessions.backends.cache`` on ``RedisCache`` with a
  ``unix://`` LOCATION, and the Django cache API that store relies on;
- Flask-Session's Redis interface through Flask's test client;
- ``redis-cli -s`` (Debian redis-tools), one-shot and with commands piped on stdin;
- node-redis (v6, RESP3 by default) + connect-redis, express-session's store API,
  driven through ``tests/node/session_store.mjs``;
- Rails: redis-rb, ``ActionDispatch::Session::CacheStore`` on ActiveSupport's
  ``RedisCacheStore``, and redis-actionpack's ``RedisStore`` where installed, in a
  Rack stack driven through ``tests/ruby/session_store.rb``;
- Go: redistore (gorilla/sessions on redigo) through httptest requests and their
  cookies, driven through ``tests/go/session_store.go``, built on Debian's packaged
  sources, with a lock taken through redigo alone; its checks also run against a
  real redis-server.

The tests share one daemon per durability mode with the product's defaults (SQLite
write-through, ``default_ttl: 1h``, sliding TTL) except a small ``max_sessions``, so
the stores also run over sessions that were evicted from memory and are read back
from the store. Expiry is observed by polling ``EXISTS``: it only inspects, while a
read (``GET``) is an access and, with sliding TTL, renews the session. TTL checks
leave slack for a slow machine; nothing asserts how long anything took.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import Daemon, RedisServer

NODE_DIR = Path(__file__).parent / "node"
MAX_SESSIONS = 50
DEFAULT_TTL = 3600


@pytest.fixture(scope="module", params=["always", "batch"], ids=["durable", "batch"])
def fw_daemon(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """Under ``durability: always`` replies wait for the commit; under ``batch`` the
    stores read while commits are still under way (that found a SCAN bug)."""
    d = Daemon(
        tmp_path_factory.mktemp("frameworks"),
        {
            "persistence": {"backend": "sqlite", "durability": request.param},
            "cache": {"max_sessions": MAX_SESSIONS, "default_ttl": DEFAULT_TTL},
        },
    ).start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def raw_redis(fw_daemon: Daemon) -> Iterator[redis.Redis]:
    client = fw_daemon.client()
    yield client
    client.close()


def wait_gone(r: redis.Redis, key: str | bytes, timeout: float = 15.0) -> None:
    """Poll with EXISTS (an inspection: it does not renew a sliding TTL)."""
    deadline = time.monotonic() + timeout
    while r.exists(key):
        if time.monotonic() > deadline:
            raise AssertionError(f"{key!r} did not expire; ttl={r.ttl(key)}")
        time.sleep(0.05)


def assert_short_ttl(r: redis.Redis, key: str | bytes, seconds: int) -> None:
    """``key`` has a TTL of at most ``seconds`` (or has already expired)."""
    pttl = int(r.pttl(key))
    assert pttl == -2 or 0 <= pttl <= seconds * 1000, pttl


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}:"


# ------------------------------------------------------------------ Django


def ping(request: Any) -> Any:  # the two views of the Django middleware test
    from django.http import HttpResponse

    if "v" in request.GET:
        request.session["v"] = request.GET["v"]
    return HttpResponse(request.session.get("v", "<none>"))


urlpatterns: list[Any] = []


@pytest.fixture(scope="module")
def django_env(fw_daemon: Daemon) -> Iterator[None]:
    """Django configured once per process; the caches point at this module's daemon
    (``override_settings(CACHES=...)`` resets Django's cache handler)."""
    import django
    from django.conf import settings
    from django.test.utils import override_settings
    from django.urls import path

    if not settings.configured:
        settings.configure(
            SECRET_KEY="sessiond-tests",
            INSTALLED_APPS=["django.contrib.sessions"],
            ALLOWED_HOSTS=["testserver"],
            USE_TZ=True,
        )
        django.setup()
    urlpatterns[:] = [path("ping", ping)]
    location = f"unix://{fw_daemon.socket_path}"
    backend = "django.core.cache.backends.redis.RedisCache"
    with override_settings(
        CACHES={
            "default": {"BACKEND": backend, "LOCATION": location},
            "resp3": {"BACKEND": backend, "LOCATION": location, "OPTIONS": {"protocol": 3}},
        },
        SESSION_ENGINE="django.contrib.sessions.backends.cache",
        SESSION_COOKIE_AGE=600,
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"],
    ):
        yield
        from django.core.cache import close_caches

        close_caches()


@pytest.fixture(params=["default", "resp3"], ids=["resp2", "resp3"])
def django_alias(request: pytest.FixtureRequest, django_env: None) -> Iterator[str]:
    from django.test.utils import override_settings

    with override_settings(SESSION_CACHE_ALIAS=request.param):
        yield request.param


def session_key_in_sessiond(session_key: str) -> str:
    from django.contrib.sessions.backends.cache import KEY_PREFIX
    from django.core.cache import cache

    return str(cache.make_key(KEY_PREFIX + session_key))


def test_django_session_create_load_modify(django_alias: str, raw_redis: redis.Redis) -> None:
    from django.contrib.sessions.backends.cache import SessionStore

    s = SessionStore()
    s["user_id"] = 42
    s["cart"] = ["a", "b"]
    s.create()
    key = s.session_key
    assert key

    loaded = SessionStore(key)
    assert loaded.load() == {"user_id": 42, "cart": ["a", "b"]}
    assert loaded.exists(key)
    stored = session_key_in_sessiond(key)
    assert 590 <= raw_redis.ttl(stored) <= 600  # SESSION_COOKIE_AGE

    loaded["cart"] = ["a", "b", "c"]
    loaded["name"] = "Zoë ✓"
    loaded.save()
    assert SessionStore(key).load() == {"user_id": 42, "cart": ["a", "b", "c"], "name": "Zoë ✓"}

    assert SessionStore("no-such-session-key-000000000000").load() == {}
    assert not s.exists("no-such-session-key-000000000000")


def test_django_cycle_key_and_delete(django_alias: str, raw_redis: redis.Redis) -> None:
    from django.contrib.sessions.backends.cache import SessionStore

    s = SessionStore()
    s["user_id"] = 7
    s.save()
    old = s.session_key
    assert old

    s.cycle_key()
    new = s.session_key
    assert new and new != old
    assert not s.exists(old)
    assert SessionStore(old).load() == {}
    assert SessionStore(new).load() == {"user_id": 7}

    s.delete()
    assert not s.exists(new)
    assert raw_redis.exists(session_key_in_sessiond(new)) == 0
    assert SessionStore(new).load() == {}


def test_django_session_expiry(django_alias: str, raw_redis: redis.Redis) -> None:
    from django.contrib.sessions.backends.cache import SessionStore
    from django.test.utils import override_settings

    s = SessionStore()
    s["n"] = 1
    s.set_expiry(1)
    s.save()
    key = s.session_key
    assert key
    assert SessionStore(key).load()["n"] == 1

    with override_settings(SESSION_COOKIE_AGE=1):
        short = SessionStore()
        short["n"] = 2
        short.save()
    short_key = short.session_key
    assert short_key
    assert_short_ttl(raw_redis, session_key_in_sessiond(short_key), 1)

    wait_gone(raw_redis, session_key_in_sessiond(key))
    wait_gone(raw_redis, session_key_in_sessiond(short_key))
    assert SessionStore(key).load() == {}
    assert SessionStore(short_key).load() == {}
    assert not s.exists(key)


def test_django_sessions_survive_eviction(django_alias: str, raw_redis: redis.Redis) -> None:
    """More sessions than max_sessions: the evicted ones are read back from the store."""
    from django.contrib.sessions.backends.cache import SessionStore

    keys = []
    for i in range(MAX_SESSIONS * 2):
        s = SessionStore()
        s["i"] = i
        s.create()
        assert s.session_key
        keys.append(s.session_key)
    for i, key in enumerate(keys):
        assert SessionStore(key).load() == {"i": i}


def test_django_sessions_survive_restart(
    django_alias: str, fw_daemon: Daemon, raw_redis: redis.Redis
) -> None:
    """A restart of sessiond is invisible to Django: its pooled connections
    reconnect and the sessions are still there (SQLite store, warm start)."""
    from django.contrib.sessions.backends.cache import SessionStore

    s = SessionStore()
    s["user_id"] = 99
    s.create()
    key = s.session_key
    assert key
    assert SessionStore(key).load() == {"user_id": 99}  # the pool has a live connection
    assert fw_daemon.stop() == 0
    fw_daemon.start()
    assert SessionStore(key).load() == {"user_id": 99}
    assert raw_redis.exists(session_key_in_sessiond(key)) == 1


def test_django_session_middleware(django_env: None) -> None:
    from django.test import Client

    browser = Client()
    assert browser.get("/ping?v=hello").content == b"hello"
    assert "sessionid" in browser.cookies
    assert browser.get("/ping").content == b"hello"
    assert Client().get("/ping").content == b"<none>"


@pytest.mark.parametrize("alias", ["default", "resp3"], ids=["resp2", "resp3"])
def test_django_cache_api(django_env: None, alias: str, raw_redis: redis.Redis) -> None:
    from django.core.cache import caches

    cache = caches[alias]
    p = unique("api")

    def ttl(key: str) -> int:
        return int(raw_redis.ttl(cache.make_key(key)))

    # set / get with pickled and integer values
    cache.set(p + "obj", {"a": [1, 2]}, 30)
    assert cache.get(p + "obj") == {"a": [1, 2]}
    assert 25 <= ttl(p + "obj") <= 30
    assert cache.get(p + "missing", "dflt") == "dflt"

    # set_many / get_many (a MULTI/EXEC pipeline of MSET + EXPIREs)
    assert cache.set_many({p + "x": 1, p + "y": "two", p + "z": b"\x00\xff"}, 100) == []
    assert cache.get_many([p + "x", p + "y", p + "z", p + "nope"]) == {
        p + "x": 1,
        p + "y": "two",
        p + "z": b"\x00\xff",
    }
    assert 95 <= ttl(p + "y") <= 100

    # touch: new timeout, None = persist, missing key = False
    assert cache.touch(p + "x", 500) is True
    assert 495 <= ttl(p + "x") <= 500
    assert cache.touch(p + "x", None) is True
    assert ttl(p + "x") == -1
    assert cache.touch(p + "nope", 10) is False

    # incr / decr keep the integer encoding
    assert cache.incr(p + "x") == 2
    assert cache.incr(p + "x", 10) == 12
    assert cache.decr(p + "x", 5) == 7
    assert cache.get(p + "x") == 7
    with pytest.raises(ValueError):
        cache.incr(p + "nope")

    # add: only if absent
    assert cache.add(p + "x", 99) is False
    assert cache.get(p + "x") == 7
    assert cache.add(p + "new", "fresh", 60) is True
    assert cache.get(p + "new") == "fresh"
    assert cache.add(p + "zero", 1, 0) is True  # Django: set NX, then delete
    assert not cache.has_key(p + "zero")

    # has_key / delete / delete_many
    assert cache.has_key(p + "new")
    assert not cache.has_key(p + "nope")
    assert cache.delete(p + "new") is True
    assert cache.delete(p + "new") is False
    cache.delete_many([p + "x", p + "y", p + "nope"])
    assert cache.get_many([p + "x", p + "y", p + "z"]) == {p + "z": b"\x00\xff"}

    # get_or_set, timeout 0 deletes, timeout None: sessiond's default_ttl, not "forever"
    assert cache.get_or_set(p + "gos", lambda: "computed", 60) == "computed"
    assert cache.get_or_set(p + "gos", lambda: "other", 60) == "computed"
    cache.set(p + "gos", "v", 0)
    assert not cache.has_key(p + "gos")
    cache.set(p + "forever", "v", None)
    assert DEFAULT_TTL - 5 <= ttl(p + "forever") <= DEFAULT_TTL


# ------------------------------------------------------------------- Flask


def flask_app(
    fw_daemon: Daemon, protocol: int = 2, lifetime: float = 600, prefix: str | None = None
) -> Any:
    """Flask-Session on ``fw_daemon``; ``prefix`` shared by apps that must see
    the same sessions (one per host of a fleet), else a fresh one."""
    from flask import Flask, session
    from flask_session import Session

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="sessiond-tests",
        SESSION_TYPE="redis",
        SESSION_REDIS=redis.Redis(unix_socket_path=str(fw_daemon.socket_path), protocol=protocol),
        SESSION_KEY_PREFIX=unique("flask") if prefix is None else prefix,
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(seconds=lifetime),
    )
    Session(app)

    @app.get("/set/<value>")
    def set_value(value: str) -> str:
        session["value"] = value
        return "ok"

    @app.get("/get")
    def get_value() -> str:
        return str(session.get("value", "<none>"))

    @app.get("/logout")
    def logout() -> str:
        session.clear()
        return "bye"

    return app


def flask_keys(r: redis.Redis, app: Any) -> list[bytes]:
    return sorted(r.scan_iter(match=app.config["SESSION_KEY_PREFIX"] + "*"))


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def flask_protocol(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def test_flask_session_roundtrip(
    fw_daemon: Daemon, flask_protocol: int, raw_redis: redis.Redis
) -> None:
    app = flask_app(fw_daemon, flask_protocol, lifetime=600)
    alice, bob = app.test_client(), app.test_client()

    assert alice.get("/set/hello").data == b"ok"
    assert alice.get("/get").data == b"hello"
    assert bob.get("/get").data == b"<none>"
    assert bob.get("/set/world").data == b"ok"
    assert alice.get("/get").data == b"hello"
    assert bob.get("/get").data == b"world"

    keys = flask_keys(raw_redis, app)
    assert len(keys) == 2
    assert all(590 <= raw_redis.ttl(k) <= 600 for k in keys)

    assert alice.get("/logout").data == b"bye"
    assert alice.get("/get").data == b"<none>"
    assert bob.get("/get").data == b"world"


def test_flask_session_expiry(
    fw_daemon: Daemon, flask_protocol: int, raw_redis: redis.Redis
) -> None:
    app = flask_app(fw_daemon, flask_protocol, lifetime=1)
    client = app.test_client()
    assert client.get("/set/short").data == b"ok"
    (key,) = flask_keys(raw_redis, app)
    assert_short_ttl(raw_redis, key, 1)
    wait_gone(raw_redis, key)
    assert client.get("/get").data == b"<none>"


def test_flask_sessions_survive_eviction(fw_daemon: Daemon, raw_redis: redis.Redis) -> None:
    app = flask_app(fw_daemon, 3, lifetime=600)
    clients = [app.test_client() for _ in range(MAX_SESSIONS * 2)]
    for i, c in enumerate(clients):
        assert c.get(f"/set/v{i}").data == b"ok"
    for i, c in enumerate(clients):
        assert c.get("/get").data == f"v{i}".encode()


# --------------------------------------------------------------- redis-cli


@pytest.fixture(scope="module")
def cli(fw_daemon: Daemon) -> Callable[..., str]:
    exe = shutil.which("redis-cli")
    if exe is None:
        pytest.fail("redis-cli not found: install Debian's redis-tools (scripts/test.sh does)")

    def run(*args: str, stdin: str | None = None, ok: bool = True) -> str:
        proc = subprocess.run(
            [exe, "-s", str(fw_daemon.socket_path), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if ok:
            assert proc.returncode == 0, proc.stderr + proc.stdout
        return proc.stdout + proc.stderr

    return run


def test_redis_cli_basics(cli: Callable[..., str]) -> None:
    p = unique("cli")
    assert cli("PING") == "PONG\n"
    assert cli("SET", p + "a", "hello world") == "OK\n"
    assert cli("GET", p + "a") == "hello world\n"
    assert cli("--no-raw", "GET", p + "a") == '"hello world"\n'
    assert cli("--no-raw", "GET", p + "missing") == "(nil)\n"
    ttl = cli("--no-raw", "TTL", p + "a")  # no TTL given: sessiond's default_ttl
    assert ttl.startswith("(integer) ") and DEFAULT_TTL - 10 <= int(ttl.split()[1]) <= DEFAULT_TTL
    assert cli("--no-raw", "INCR", p + "a") == (
        "(error) ERR value is not an integer or out of range\n"
    )
    assert int(cli("DBSIZE")) >= 1
    assert cli("--no-raw", "DBSIZE").startswith("(integer) ")


def test_redis_cli_info(cli: Callable[..., str]) -> None:
    info = cli("INFO")
    for field in ("redis_version:7.2.0", "connected_clients:", "keyspace_hits:", "used_memory:"):
        assert field in info
    cli("SET", unique("cli") + "k", "v")
    keyspace = cli("INFO", "keyspace")
    assert keyspace.startswith("# Keyspace")
    assert "db0:keys=" in keyspace and "expires=" in keyspace
    assert "# Keyspace" in cli("-3", "INFO", "keyspace")


def test_redis_cli_command_docs(cli: Callable[..., str]) -> None:
    docs = cli("--no-raw", "COMMAND", "DOCS", "GET")
    assert '"get"' in docs and '"summary"' in docs and '"group"' in docs
    assert int(cli("COMMAND", "COUNT")) > 40
    # redis-cli's help (and its interactive hints) come from COMMAND DOCS
    plain = re.compile(r"\x1b\[[0-9;]*m")
    help_set = plain.sub("", cli("help", "SET"))
    assert (
        "SET key value [NX|XX] [GET] [EX seconds|PX milliseconds|EXAT unix-time-seconds|"
        "PXAT unix-time-milliseconds|KEEPTTL]"
    ) in help_set
    assert "summary: Set a value" in help_set
    assert "CLIENT SETNAME connection-name" in plain.sub("", cli("help", "CLIENT"))
    assert "SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]" in plain.sub(
        "", cli("help", "@generic")
    )


def test_redis_cli_scan(cli: Callable[..., str]) -> None:
    p = unique("scan")
    for i in range(30):
        cli("SET", f"{p}{i}", str(i))
    cli("SET", unique("other"), "x")
    found = cli("--scan", "--pattern", p + "*").split()
    assert sorted(found) == sorted(f"{p}{i}" for i in range(30))
    assert sorted(cli("--scan", "--pattern", p + "1*").split()) == sorted(
        [p + "1"] + [f"{p}1{i}" for i in range(10)]
    )
    everything = cli("--scan").split()
    assert set(found) < set(everything)
    assert len(everything) == len(set(everything))


def test_redis_cli_resp3(cli: Callable[..., str]) -> None:
    p = unique("r3")
    hello = cli("-3", "--no-raw", "HELLO", "3")
    assert '"proto" => (integer) 3' in hello
    assert '"version" => "7.2.0"' in hello
    assert cli("-3", "SET", p + "k", "v") == "OK\n"
    assert cli("-3", "--no-raw", "GET", p + "missing") == "(nil)\n"
    assert cli("-3", "--no-raw", "EXISTS", p + "k") == "(integer) 1\n"
    config = cli("-3", "--no-raw", "CONFIG", "GET", "cache.max_sessions")
    assert f'"cache.max_sessions" => "{MAX_SESSIONS}"' in config


def test_redis_cli_piped_stdin(cli: Callable[..., str]) -> None:
    p = unique("pipe")
    script = (
        f"SET {p}a 1\nINCR {p}a\nGET {p}a\n"
        f'SET {p}b "two words"\nGET {p}b\nEXISTS {p}a {p}b {p}c\nDEL {p}a\nGET {p}a\nPING\n'
    )
    replies = ["OK", "2", "2", "OK", "two words", "2", "1", "", "PONG"]
    assert cli(stdin=script).splitlines() == replies
    # -x: the last argument from stdin, as-is
    assert cli("-x", "SET", p + "x", stdin="payload\nwith newline") == "OK\n"
    assert cli("GET", p + "x") == "payload\nwith newline\n"


def test_redis_cli_mass_insert(cli: Callable[..., str]) -> None:
    """``--pipe`` (mass insertion) sends raw RESP then an ``ECHO`` to find the end."""
    p = unique("mass")
    payload = "".join(
        f"*3\r\n$3\r\nSET\r\n${len(f'{p}{i}')}\r\n{p}{i}\r\n${len(str(i))}\r\n{i}\r\n"
        for i in range(500)
    )
    out = cli("--pipe", stdin=payload)
    assert "errors: 0, replies: 500" in out
    assert cli("GET", p + "499") == "499\n"


# -------------------------------------------------------------- node-redis


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """``npm ci`` into tests/node/node_modules once, if it is not there yet."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "node and npm are required for the node-redis/connect-redis test "
            "(Debian: apt-get install nodejs npm; scripts/test.sh installs them)"
        )
    modules = NODE_DIR / "node_modules"
    installed = modules / ".package-lock.json"  # npm writes it on every install
    lock = NODE_DIR / "package-lock.json"
    # Test processes running at once (pytest -n, both builds) share tests/node: `npm ci`
    # deletes node_modules first, so one installs while the others wait on a lock
    # (flock on the directory itself: no lock file left in the checkout).
    fd = os.open(NODE_DIR, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
            proc = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert proc.returncode == 0, f"npm ci failed:\n{proc.stdout}\n{proc.stderr}"
    finally:
        os.close(fd)  # releases the lock
    return modules


@pytest.fixture(scope="module")
def node_results(node_modules: Path, fw_daemon: Daemon) -> dict[str, Any]:
    node = shutil.which("node")
    assert node is not None
    return scenario_results([node, str(NODE_DIR / "session_store.mjs")], fw_daemon, NODE_DIR)


def scenario_results(
    command: list[str], server: Daemon | RedisServer, cwd: Path | None = None
) -> Any:
    """Run a framework scenario script against ``server``'s socket; the JSON
    object of observations it prints."""
    proc = subprocess.run(
        [*command, str(server.socket_path)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{command[0]} failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


def test_node_versions(node_results: dict[str, Any]) -> None:
    versions = node_results["versions"]
    assert versions["redis"].split(".")[0] == "6"
    assert versions["connect-redis"] and versions["express-session"]


@pytest.mark.parametrize("mode", ["default", "resp3", "resp2"])
def test_node_redis_connect_redis_store(node_results: dict[str, Any], mode: str) -> None:
    result = node_results[mode]
    assert result["resp"] == (2 if mode == "resp2" else 3)  # node-redis 6 defaults to RESP3
    assert result["lib_name"] == "node-redis"
    assert result["errors"] == []
    store = result["store"]
    assert store["get_a"] == {"user": "alice", "cart": [1, 2, 3], "name": "Zoë ✓"}
    assert 20 <= store["ttl_a"] <= 30  # from the cookie's expiry
    assert 50 <= store["ttl_b"] <= 60  # the store's ttl option
    assert 290 <= store["ttl_a_after_touch"] <= 300
    assert store["get_b"] == {"user": "bob", "visits": 2}
    assert store["get_missing"] is None
    assert store["length"] == 2
    assert store["ids"] == ["a", "b"]
    assert store["all"] == [{"id": "a", "user": "alice"}, {"id": "b", "user": "bob"}]
    assert store["get_a_after_destroy"] is None
    assert store["length_after_destroy"] == 1
    assert store["get_b_after_expired_set"] is None
    assert store["big_roundtrip"] is True
    assert store["length_many"] == 251  # 250 + "big"; more than max_sessions
    assert store["ids_many_unique"] == 251
    assert store["length_after_clear"] == 0
    assert store["ids_after_clear"] == []
    assert store["get_e_before"] == "eve"
    assert store["get_e_after_expiry"] is None


@pytest.mark.parametrize("mode", ["default", "resp3", "resp2"])
def test_node_express_session_middleware(node_results: dict[str, Any], mode: str) -> None:
    assert node_results[mode]["middleware"] == {
        "set": "hello",
        "mine": "hello",
        "other": None,
        "keys": 1,
    }


# ------------------------------------------------------------------- Rails

RUBY_SCRIPT = Path(__file__).parent / "ruby" / "session_store.rb"


@pytest.fixture(scope="module")
def ruby_results(fw_daemon: Daemon) -> dict[str, Any]:
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.fail(
            "ruby with Rails' actionpack and redis-rb is required for the Rails test "
            "(Debian: apt-get install ruby-actionpack ruby-redis; scripts/test.sh installs them)"
        )
    return scenario_results([ruby, str(RUBY_SCRIPT)], fw_daemon)


def test_ruby_versions(ruby_results: dict[str, Any]) -> None:
    versions = ruby_results["versions"]
    assert versions["redis-rb"].split(".")[0] == "4"
    assert versions["actionpack"].split(".")[0] == "6"


def test_redis_rb_commands(ruby_results: dict[str, Any]) -> None:
    """redis-rb, which every Rails Redis store is built on, with the forms they send."""
    assert ruby_results["redis_rb"] == {
        "set_ex": "OK",
        "get": "alice",
        "ttl": 30,
        "set_nx_taken": False,
        "setex": "OK",
        "mget": ["alice", "bob", None],
        "exists": 1,
        "expire": True,
        "ttl_b": 300,
        "pipelined": ["OK", 2, "2"],
        "multi": ["OK", "x"],
        "scan": ["rb:a", "rb:b", "rb:m", "rb:p"],
        "del": 1,
        "get_deleted": None,
        "binary_roundtrip": True,
    }


def _rails_private_id(sid: str) -> str:
    """Rack stores a session under a hash of its cookie's id (Rack::Session::SessionId)."""
    return "2::" + hashlib.sha256(sid.encode()).hexdigest()


@pytest.mark.parametrize(
    ("store", "key_prefix"),
    [
        ("cache_store", "rails-cache:_session_id:"),  # session_store :cache_store
        ("redis_store", "rails-redis-store:"),  # redis-actionpack's :redis_store
    ],
)
def test_rails_session_store(
    ruby_results: dict[str, Any], raw_redis: redis.Redis, store: str, key_prefix: str
) -> None:
    flow = ruby_results[store]
    if flow is None:
        pytest.skip(
            "redis-actionpack is not installed (scripts/test.sh installs Debian's "
            "ruby-redis-actionpack)"
        )
    assert (flow["set"], flow["mine"], flow["other"]) == ("hello", "hello", None)
    assert (flow["update"], flow["mine_after_update"]) == ("again", "again")
    assert flow["sid_after_update"] == flow["sid"]
    assert (flow["reset"], flow["after_reset"]) == (None, None)
    assert flow["sid_after_reset"] != flow["sid"]
    # The reset session's key is gone everywhere; the new one carries expire_after.
    old = key_prefix + _rails_private_id(flow["sid"])
    new = key_prefix + _rails_private_id(flow["sid_after_reset"])
    assert raw_redis.exists(old) == 0
    assert 60 <= raw_redis.ttl(new) <= 90
    assert [k.decode() for k in raw_redis.scan_iter(match=key_prefix + "*")] == [new]


# --------------------------------------------------------------- Go redistore

GO_PROGRAM = Path(__file__).parent / "go" / "session_store.go"
# Where Debian's golang-*-dev packages put their sources (a GOPATH).
DEBIAN_GOPATH = Path("/usr/share/gocode")


@pytest.fixture(scope="session")
def go_session_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/go/session_store.go built once per test process, in GOPATH mode on
    Debian's packaged sources of redistore, redigo and gorilla/sessions: nothing
    is downloaded (GOPROXY=off)."""
    go = shutil.which("go")
    if go is None or not (DEBIAN_GOPATH / "src/github.com/boj/redistore").is_dir():
        pytest.fail(
            "go and redistore's sources are required for the Go session store test "
            "(Debian: apt-get install golang-go golang-github-boj-redistore-dev; "
            "scripts/test.sh installs them)"
        )
    out = tmp_path_factory.mktemp("go")
    binary = out / "session_store"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(DEBIAN_GOPATH),
        "GOCACHE": str(out / "cache"),
        "GOPROXY": "off",
        "GOFLAGS": "",
    }
    proc = subprocess.run(
        [go, "build", "-o", str(binary), str(GO_PROGRAM)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"go build failed:\n{proc.stdout}\n{proc.stderr}"
    return binary


@pytest.fixture(scope="module")
def go_results(go_session_store: Path, fw_daemon: Daemon) -> dict[str, Any]:
    return scenario_results([str(go_session_store), "scenarios"], fw_daemon)


def check_redistore_gob(flow: dict[str, Any], r: redis.Redis) -> None:
    """A session saved through one store instance, its cookie carried by the next
    request to another; updated there; deleted by saving it with MaxAge -1."""
    values = {"user": "alice", "cart": [1, 2, 3], "profile": {"Name": "Zoë ✓", "Roles": ["admin"]}}
    assert flow["is_new"] is True
    assert flow["cookie_max_age"] == 600
    assert (flow["other_store_is_new"], flow["other_store_values"]) == (False, values)
    assert flow["after_update"] == {**values, "visits": 2}
    assert flow["stranger_is_new"] is True
    assert (flow["logout_cookie_max_age"], flow["logout_cookie_value"]) == (-1, "")
    assert (flow["after_logout_is_new"], flow["after_logout_values"]) == (True, {})
    assert r.exists(flow["key"]) == 0
    # The session left in place: under redistore's own key, with the TTL it asked for
    # (SETEX with the session's MaxAge), and its gob encoding stored byte for byte.
    assert flow["kept_key"].startswith("session_")
    assert 590 <= r.ttl(flow["kept_key"]) <= 600
    stored = r.get(flow["kept_key"])
    assert stored is not None and b"\x04kept" in stored


def check_redistore_json(flow: dict[str, Any], r: redis.Redis) -> None:
    """redistore.JSONSerializer: the stored value is the session's JSON, updated."""
    assert flow["loaded"] == {"user": "bob", "n": 2}
    assert 290 <= r.ttl(flow["key"]) <= 300
    stored = r.get(flow["key"])
    assert stored is not None and json.loads(stored) == {"user": "bob", "n": 2}


def check_redistore_defaults(flow: dict[str, Any], r: redis.Redis) -> None:
    """NewRediStore's own pool and options: SETEX for redistore's 30 days, which
    sessiond keeps (default_ttl only applies to writes without a TTL); and
    NewRediStoreWithDB's SELECT 0 on every new connection."""
    thirty_days = 30 * 86400
    assert flow["cookie_max_age"] == thirty_days
    assert flow["loaded"] == {"user": "carol"}
    assert thirty_days - 60 <= r.ttl(flow["key"]) <= thirty_days
    assert flow["db0_loaded"] == {"user": "dave"}


def check_redistore_big(flow: dict[str, Any], r: redis.Redis) -> None:
    """64 KiB of random bytes: refused by redistore's default 4096-byte limit, then
    stored and read back intact once SetMaxLength(0) lifts it."""
    assert flow["over_default_limit"] == "SessionStore: the value to store is too big"
    assert flow["roundtrip"] is True


def check_redistore_many(flow: dict[str, Any], r: redis.Redis) -> None:
    """More sessions than max_sessions, each read back after all were written."""
    assert flow["saved"] > MAX_SESSIONS
    assert flow["intact"] == flow["saved"]


def check_redistore_expiry(flow: dict[str, Any], r: redis.Redis) -> None:
    """A session saved with MaxAge 1 expires (polled with EXISTS in the program):
    the next request with its cookie gets a new, empty session."""
    assert flow["pttl"] == -2 or 0 <= flow["pttl"] <= 1000  # -2: expired already
    assert (flow["after_expiry_is_new"], flow["after_expiry_values"]) == (True, {})


REDISTORE_CHECKS: dict[str, Callable[[dict[str, Any], redis.Redis], None]] = {
    "gob": check_redistore_gob,
    "json": check_redistore_json,
    "defaults": check_redistore_defaults,
    "big": check_redistore_big,
    "many": check_redistore_many,
    "expiry": check_redistore_expiry,
}


def check_redigo_lock(flow: dict[str, Any], r: redis.Redis) -> None:
    """SET NX PX takes the lock once; the compare-and-delete under WATCH leaves a
    lock held by another token, deletes its own, and then finds none."""
    assert (flow["acquire"], flow["acquire_taken"]) == ("OK", None)
    assert 0 < flow["pttl"] <= 30000
    assert flow["release_with_other_token"] is False
    assert (flow["release"], flow["release_again"]) == (True, False)
    assert flow["acquire_after_release"] == "OK"
    assert r.get(flow["key"]) == b"theirs"


def test_redistore_ping(go_results: dict[str, Any]) -> None:
    """redistore's ping compares the reply with "PONG": a status reply, which
    redigo hands over as a Go string (a bulk reply would be []byte)."""
    assert go_results["go"].startswith("go1.")
    assert go_results["ping"] == "string PONG"


@pytest.mark.parametrize("flow", REDISTORE_CHECKS)
def test_redistore_session_store(
    go_results: dict[str, Any], raw_redis: redis.Redis, flow: str
) -> None:
    REDISTORE_CHECKS[flow](go_results[flow], raw_redis)


def test_redigo_lock(go_results: dict[str, Any], raw_redis: redis.Redis) -> None:
    check_redigo_lock(go_results["lock"], raw_redis)


def test_redistore_expectations_hold_on_redis(
    go_session_store: Path, redis_server: RedisServer
) -> None:
    """The same program and checks against a real Redis: the expectations are
    Redis', not sessiond's (where sessiond differs on purpose, no check looks)."""
    results = scenario_results([str(go_session_store), "scenarios"], redis_server)
    assert results["ping"] == "string PONG"
    with redis_server.client() as r:
        for flow, check in REDISTORE_CHECKS.items():
            check(results[flow], r)
        check_redigo_lock(results["lock"], r)


def test_redistore_session_survives_restart(
    go_session_store: Path, fw_daemon: Daemon, raw_redis: redis.Redis
) -> None:
    """A Go app keeps running while sessiond restarts: its pool's idle connection
    died with the daemon, the PING on borrow replaces it, and the session is
    still there (SQLite store, warm start)."""
    app = subprocess.Popen(
        [str(go_session_store), "restart", str(fw_daemon.socket_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert app.stdout is not None
        saved = json.loads(app.stdout.readline())
        assert "error" not in saved, saved
        assert raw_redis.exists(saved["key"]) == 1
        assert fw_daemon.stop() == 0
        fw_daemon.start()
        out, err = app.communicate("restarted\n", timeout=60)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
    assert app.returncode == 0, f"{out}\n{err}"
    assert json.loads(out) == {
        "is_new": False,
        "values": {"user": "frank"},
        "stale_connections": 1,
    }
    assert 590 <= raw_redis.ttl(saved["key"]) <= 600
