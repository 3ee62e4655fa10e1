"""PHP's Redis session handlers against the real daemon: phpredis' (the
``redis`` session.save_handler of Debian's php-redis), with its session
locking on and off, and predis' (Debian's php-predis). Each PHP request is
a ``php`` process running a small script under tests/php/.

With locking, phpredis takes ``<key>_LOCK`` with ``SET ... NX EX`` and
releases it with a Lua script (EVALSHA, EVAL on NOSCRIPT): before sessiond
had scripting, the release failed, the lock stayed for ``default_ttl``, and
every later request for the session failed to lock it and lost its write.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import Daemon, wait_until

PHP_DIR = Path(__file__).parent / "php"
PREFIX = "PHPREDIS_SESSION:"
# SHA1 of phpredis' lock release script (LOCK_RELEASE_LUA_STR in its source).
UNLOCK_SHA = "b70c2384248f88e6b75b9f89241a180f856ad852"


@pytest.fixture(scope="module")
def php() -> str:
    exe = shutil.which("php")
    if exe is None:
        pytest.fail(
            "php is required for the PHP session tests "
            "(Debian: apt-get install php-cli php-redis php-predis; scripts/test.sh installs them)"
        )
    loaded = subprocess.run(
        [exe, "-r", "echo extension_loaded('redis') ? 'yes' : 'no';"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    if loaded != "yes":
        pytest.fail("phpredis is not loaded: apt-get install php-redis (scripts/test.sh does)")
    return exe


@pytest.fixture(scope="module")
def php_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(
        tmp_path_factory.mktemp("php"),
        {"persistence": {"backend": "sqlite", "durability": "always"}},
    ).start()
    yield d
    d.stop()


@pytest.fixture
def r(php_daemon: Daemon) -> Iterator[redis.Redis]:
    client = php_daemon.client()
    client.flushall()
    client.script_flush()  # phpredis must find its script missing and load it
    yield client
    client.close()


def phpredis_request(
    php: str, d: Daemon, session: str, *, locking: bool, hold_ms: int = 0
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            php,
            "-d", "session.save_handler=redis",
            "-d", f"session.save_path=unix://{d.socket_path}",
            "-d", f"redis.session.locking_enabled={int(locking)}",
            "-d", "redis.session.lock_expire=30",
            "-d", "redis.session.lock_wait_time=20000",  # microseconds between tries
            "-d", "redis.session.lock_retries=-1",  # wait as long as it takes
            str(PHP_DIR / "phpredis_session.php"),
            session,
            str(hold_ms),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str]) -> int:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"php failed ({proc.returncode}): {err}"
    assert "Warning" not in err and "Fatal" not in err, err
    return int(out.strip())


def test_phpredis_locked_session_loses_no_update(
    php: str, php_daemon: Daemon, r: redis.Redis
) -> None:
    """Eight concurrent requests on one session, each holding it 100 ms:
    each waits for the lock in turn, so every increment lands."""
    procs = [
        phpredis_request(php, php_daemon, "locked1", locking=True, hold_ms=100) for _ in range(8)
    ]
    counts = sorted(finish(p) for p in procs)
    assert counts == list(range(1, 9))
    # The lock was released every time (by its Lua script), not left to expire.
    assert r.exists(f"{PREFIX}locked1_LOCK") == 0
    assert r.script_exists(UNLOCK_SHA) == [True]  # EVALSHA failed once, EVAL loaded it
    assert finish(phpredis_request(php, php_daemon, "locked1", locking=True)) == 9
    assert r.exists(f"{PREFIX}locked1_LOCK") == 0
    stored = r.get(f"{PREFIX}locked1")
    assert stored is not None and stored.startswith(b"n|i:9;")
    assert 1400 <= r.ttl(f"{PREFIX}locked1") <= 1440  # session.gc_maxlifetime


def test_phpredis_lock_is_held_while_the_request_runs(
    php: str, php_daemon: Daemon, r: redis.Redis
) -> None:
    proc = phpredis_request(php, php_daemon, "held", locking=True, hold_ms=1500)
    lock = f"{PREFIX}held_LOCK"
    wait_until(lambda: r.exists(lock) == 1, what="the session lock")
    assert 25 <= r.ttl(lock) <= 30  # redis.session.lock_expire, not default_ttl
    assert finish(proc) == 1
    assert r.exists(lock) == 0


def test_phpredis_without_locking(php: str, php_daemon: Daemon, r: redis.Redis) -> None:
    for expected in (1, 2, 3):
        assert finish(phpredis_request(php, php_daemon, "plain", locking=False)) == expected
    assert r.exists(f"{PREFIX}plain_LOCK") == 0
    stored = r.get(f"{PREFIX}plain")
    assert stored is not None and stored.startswith(b"n|i:3;")


def test_predis_session_handler(php: str, php_daemon: Daemon, r: redis.Redis) -> None:
    def request() -> int:
        proc = subprocess.Popen(
            [php, str(PHP_DIR / "predis_session.php"), str(php_daemon.socket_path), "pred"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return finish(proc)

    assert [request() for _ in range(3)] == [1, 2, 3]
    assert r.get("pred") == b"n|i:3;"
    assert 590 <= r.ttl("pred") <= 600  # SETEX with the handler's gc_maxlifetime
