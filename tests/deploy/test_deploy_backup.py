"""deploy/README.md, "Backups of the store" and "Moving the store": the guide's own
commands (deploy/backup-store.sh and deploy/restore-store.sh, as the guide calls them, its
paths replaced by the test's), run against the real daemon's store:

- an online backup taken while clients write holds every write acknowledged before it
  began and none sent after it ended, once restored into a new directory;
- a restore over a store that went on and crashed (kill -9) gives exactly the backup's
  state: nothing of the store it replaced is replayed over it;
- the log segments a backup lists but finds compacted and deleted when it comes to copy
  them are in the database it reads after them;
- a copy of a stopped store (a clean stop, or a kill -9) under a compaction backlog,
  moved to another directory, loses no acknowledged write.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from conftest import wait_until
from pg import pids_with_parent
from redis.backoff import NoBackoff
from redis.retry import Retry

if TYPE_CHECKING:
    from conftest import Daemon

Factory = Callable[..., "Daemon"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
GUIDE = DEPLOY / "README.md"
SCRIPTS = ("backup-store.sh", "restore-store.sh")
# Compaction slowed down (a pause between steps of so many sessions): about 2,500 and
# 250 sessions a second. The log holds a backlog of segments, as under a write load
# faster than compaction.
SLOW_COMPACTION = {"SESSIOND_STORE_COMPACT_ROWS": "256", "SESSIOND_STORE_COMPACT_PAUSE": "0.1"}
SLOWER_COMPACTION = {"SESSIOND_STORE_COMPACT_ROWS": "64", "SESSIOND_STORE_COMPACT_PAUSE": "0.25"}


def sqlite_config() -> dict[str, Any]:
    return {"persistence": {"backend": "sqlite", "path": "sessions.db", "durability": "always"}}


# ------------------------------------------------------------------ the guide's commands


def guide_commands(section: str, first: str) -> list[str]:
    """The commands of the shell block of ``section`` (a ### heading of deploy/README.md)
    whose first line starts with ``first``: those that run the scripts, and the
    ``install -d`` of the backup directory. The block must stop both units before a
    restore and start them after it."""
    text = GUIDE.read_text()
    start = text.index(f"\n### {section}\n")
    end = text.index("\n### ", start + 1)
    blocks = re.findall(r"```sh\n(.*?)```", text[start:end], re.S)
    (block,) = [b for b in blocks if b.startswith(first)]
    lines = block.splitlines()
    run = [
        line
        for line in lines
        if line.startswith(SCRIPTS) or line.startswith("install -d -m 0700 /var/backups/")
    ]
    assert run, block
    restores = [i for i, line in enumerate(lines) if line.startswith("restore-store.sh")]
    if restores:
        stop = lines.index("systemctl stop sessiond.socket sessiond.service")
        begin = lines.index("systemctl start sessiond.socket sessiond.service")
        assert stop < min(restores) and max(restores) < begin, block
    return run


def run_guide(
    commands: list[str], paths: dict[str, Path], first: Path | None = None, status: int = 0
) -> str:
    """Run ``commands`` with sh, the guide's paths replaced (``paths``), the scripts
    from deploy/ on the PATH (after ``first``, if given); their output. Each must exit
    with ``status``."""
    out = []
    for command in commands:
        for old, new in paths.items():
            command = command.replace(old, str(new))
        path = f"{DEPLOY}:{os.environ['PATH']}"
        env = {**os.environ, "PATH": f"{first}:{path}" if first else path}
        proc = subprocess.run(
            ["sh", "-euc", command], capture_output=True, text=True, env=env, timeout=120
        )
        assert proc.returncode == status, f"{command}\n{proc.stdout}{proc.stderr}"
        out.append(proc.stdout + proc.stderr)
    return "".join(out)


def only_entry(directory: Path) -> Path:
    (entry,) = directory.iterdir()
    return entry


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("sessions.db-log.*"))


def number(segment: Path) -> int:
    return int(segment.name.rsplit(".", 1)[1])


def compacted_through(db: Path) -> int:
    """store_state.compacted_through of the database ``db``, read-only (a read-only
    connection to a database in WAL mode leaves a -wal file beside it)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT compacted_through FROM store_state").fetchone()[0])
    finally:
        con.close()


def through_in_file(db: Path) -> int:
    """compacted_through as the database file alone has it: SQLite's -wal ignored, and
    nothing made beside the file (immutable)."""
    con = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)
    try:
        return int(con.execute("SELECT compacted_through FROM store_state").fetchone()[0])
    finally:
        con.close()


def wal_ahead(db: Path) -> bool:
    """Whether the running daemon's -wal holds a compaction the database file does not
    (until the next checkpoint copies it there)."""
    try:
        return through_in_file(db) < compacted_through(db)
    except sqlite3.Error:  # a page of the file read while a checkpoint wrote it
        return False


def table_rows(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT count(*) FROM sessions").fetchone()[0])
    except sqlite3.Error:
        return -1
    finally:
        con.close()


def files(directory: Path) -> dict[str, tuple[int, int]]:
    """The store's files in ``directory``: name -> (size, modification time)."""
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns)
        for p in directory.iterdir()
        if p.name.startswith("sessions.db")
    }


def _lock_holder(db: Path) -> int | None:
    """The pid holding the store's flock, from /proc/locks, without trying
    the lock (which would take it for a moment)."""
    from sessiond.store.files import lock_holder

    fd = os.open(db, os.O_RDONLY)
    try:
        return lock_holder(fd)
    finally:
        os.close(fd)


def lock_is_free(db: Path) -> bool:
    """Whether no process (a daemon, its compactor) holds the store's flock."""
    return subprocess.run(["flock", "-n", str(db), "true"], check=False).returncode == 0


# ------------------------------------------------------------------ a write load


INF = float("inf")


class Writers:
    """Threads that each SET new keys (every key once, its value unique), overwrite a
    counter ``last:<t>`` and delete one of their keys every fifth round, recording when
    each request was sent and when its reply came (never, ``INF``, for the one in flight
    when the daemon went away), until :meth:`stop` or the daemon goes away."""

    def __init__(self, d: Daemon, prefix: str, threads: int = 4) -> None:
        self.prefix = prefix
        self.sets: list[list[tuple[str, str, float, float]]] = [[] for _ in range(threads)]
        self.dels: list[list[tuple[str, float, float]]] = [[] for _ in range(threads)]
        self.counts: list[list[tuple[int, float, float]]] = [[] for _ in range(threads)]
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._write, args=(d, t), daemon=True) for t in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _write(self, d: Daemon, t: int) -> None:
        r = d.client(retry=Retry(NoBackoff(), 0))
        clock = time.monotonic
        sets, dels, counts = self.sets[t], self.dels[t], self.counts[t]
        i = 0
        try:
            while not self._stop.is_set():
                key = f"{self.prefix}{t}:{i}"
                value = f"{key}:" + "x" * (i % 300)
                sets.append((key, value, clock(), INF))
                assert r.set(key, value) is True
                sets[-1] = (*sets[-1][:3], clock())
                if i % 5 == 4:
                    victim = f"{self.prefix}{t}:{i - 2}"
                    dels.append((victim, clock(), INF))
                    assert r.delete(victim) == 1
                    dels[-1] = (*dels[-1][:2], clock())
                counts.append((i, clock(), INF))
                assert r.set(f"{self.prefix}last:{t}", i) is True
                counts[-1] = (*counts[-1][:2], clock())
                i += 1
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return  # the daemon stopped or was killed: that request was not acknowledged
        except BaseException as exc:  # pragma: no cover - reported by stop()
            self.errors.append(exc)
        finally:
            r.close()

    def wait_for(self, writes: int, timeout: float = 30.0) -> None:
        wait_until(lambda: sum(map(len, self.sets)) >= writes, timeout, f"{writes} writes")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
            assert not thread.is_alive()
        assert not self.errors, self.errors

    def check(self, r: redis.Redis, before: float, after: float) -> int:
        """That ``r`` holds the state of some moment between ``before`` and ``after``:
        every change acknowledged before ``before`` and none sent after ``after``.
        The number of keys it had to find."""
        deleted = {key: (sent, acked) for per in self.dels for key, sent, acked in per}
        present: dict[str, str] = {}
        absent: list[str] = []
        for per in self.sets:
            for key, value, sent, acked in per:
                del_sent, del_acked = deleted.get(key, (INF, INF))
                if sent > after or del_acked < before:
                    absent.append(key)
                elif acked < before and del_sent > after:
                    present[key] = value
        keys = list(present)
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            values = r.mget(chunk)
            wrong = [k for k, v in zip(chunk, values, strict=True) if v != present[k].encode()]
            assert not wrong, f"{len(wrong)} acknowledged writes missing, e.g. {wrong[:5]}"
        for start in range(0, len(absent), 500):
            chunk = absent[start : start + 500]
            back = [k for k, v in zip(chunk, r.mget(chunk), strict=True) if v is not None]
            assert not back, f"{len(back)} keys that should be absent are there: {back[:5]}"
        for t, counted in enumerate(self.counts):
            low = max((i for i, _, acked in counted if acked < before), default=-1)
            high = min((i for i, sent, _ in counted if sent > after), default=1 << 62)
            last = r.get(f"{self.prefix}last:{t}")
            seen = -1 if last is None else int(last)
            assert low <= seen < high, (t, low, seen, high)
        return len(present)


# ------------------------------------------------------------------ the tests


def test_an_online_backup_under_writes_restores_every_write_acknowledged_before_it(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    """Three backups taken by the guide's command while four clients write (a backlog of
    log segments, compacted meanwhile), each restored by the guide's command into a new
    directory: a daemon started there finds every change acknowledged before the backup
    began and none sent after it ended."""
    d = daemon_factory(sqlite_config(), start=False)
    d.start(env=SLOW_COMPACTION)
    backups = tmp_path / "backups"
    backup = guide_commands("Backups of the store", "install -d -m 0700")
    restore = guide_commands("Backups of the store", "systemctl stop")
    writers = Writers(d, "w")
    taken: list[tuple[Path, float, float, str]] = []
    try:
        writers.wait_for(500)
        for _ in range(3):
            time.sleep(1.0)  # the guide names a backup by the second
            before = time.monotonic()
            out = run_guide(
                backup, {"/var/lib/sessiond": d.workdir, "/var/backups/sessiond": backups}
            )
            after = time.monotonic()
            earlier = {p for p, *_ in taken}
            (new,) = [p for p in backups.iterdir() if p not in earlier]
            taken.append((new, before, after, out))
        time.sleep(0.5)
    finally:
        writers.stop()
    assert d.stop() == 0
    for made, before, after, out in taken:
        assert "sessiond is running" in out, out
        assert made.stat().st_mode & 0o777 == 0o700
        assert {p.stat().st_mode & 0o777 for p in made.iterdir()} == {0o600}
        there = daemon_factory(sqlite_config(), start=False)
        run_guide(
            restore,
            {
                "/var/backups/sessiond/2026-11-25-030000": made,
                "/var/lib/sessiond": there.workdir,
            },
        )
        there.start()
        with there.client() as r:
            assert writers.check(r, before, after) > 300
        assert there.stop() == 0
        assert not [e for e in there.events() if e.get("level") == "error"]


def test_log_segments_compacted_while_a_backup_copies_are_in_its_database(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    """A backup whose every copy waits 2.5 s first (a ``cp`` before the real one on the
    PATH), while compaction goes at its own pace: the segments it lists are compacted and
    deleted before it copies them, and the database it reads after holds them. Read in
    the other order, the database before the segments, they would be in neither."""
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "cp").write_text('#!/bin/sh\nsleep 2.5\nexec /bin/cp "$@"\n')
    (slow / "cp").chmod(0o755)
    d = daemon_factory(sqlite_config(), start=False)
    d.start(env=SLOW_COMPACTION)  # a segment or two waiting when the backup begins
    backups = tmp_path / "backups"
    writers = Writers(d, "w")
    try:
        writers.wait_for(500)
        time.sleep(1.0)
        before = time.monotonic()
        out = run_guide(
            guide_commands("Backups of the store", "install -d -m 0700"),
            {"/var/lib/sessiond": d.workdir, "/var/backups/sessiond": backups},
            first=slow,
        )
        after = time.monotonic()
    finally:
        writers.stop()
    assert d.stop() == 0
    gone = re.search(r"; (\d+) compacted while this copied the others\)", out)
    assert gone and int(gone[1]) > 0, out
    there = daemon_factory(sqlite_config(), start=False)
    run_guide(
        guide_commands("Backups of the store", "systemctl stop"),
        {
            "/var/backups/sessiond/2026-11-25-030000": only_entry(backups),
            "/var/lib/sessiond": there.workdir,
        },
    )
    there.start()
    with there.client() as r:
        assert writers.check(r, before, after) > 300
    assert there.stop() == 0


def test_a_restore_replaces_the_whole_store_and_mixes_nothing_of_it_in(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    """The reviewer's case: a backup of 40 sessions (20 in the table, 20 in the log), then
    20 more written and 3 deleted, kill -9, and the guide's restore: the store is the
    backup's again, deleted sessions back, later ones gone. The log segments the crash
    left, which the next start would replay over the backup, do hold those later changes.
    The restore refuses while the daemon runs."""
    d = daemon_factory(sqlite_config())
    db = d.workdir / "sessions.db"
    with d.client() as r:
        for i in range(20):
            assert r.set(f"k{i}", f"v{i}")
    wait_until(lambda: table_rows(db) == 20, 10, "the first 20 sessions in the table")
    assert d.stop() == 0
    # Compaction all but stopped from here on: the log keeps what comes next.
    d.start(env={"SESSIOND_STORE_COMPACT_ROWS": "1", "SESSIOND_STORE_COMPACT_PAUSE": "2"})
    with d.client() as r:
        for i in range(20, 40):
            assert r.set(f"k{i}", f"v{i}")
    backups = tmp_path / "backups"
    backup = guide_commands("Backups of the store", "install -d -m 0700")
    run_guide(backup, {"/var/lib/sessiond": d.workdir, "/var/backups/sessiond": backups})
    made = only_entry(backups)
    through = compacted_through(made / "sessions.db")
    assert through > 0 and segments(made), "the backup should hold table and log alike"
    # What comes next goes to a segment the backup has none of, once the one it copied
    # open is sealed (after a second) and the next made.
    copied = max(number(p) for p in segments(made))
    wait_until(lambda: number(segments(d.workdir)[-1]) > copied, 10, "a new log segment")
    with d.client() as r:
        for i in range(20):
            assert r.set(f"n{i}", f"new{i}")
        assert r.delete("k0", "k1", "k25") == 3
        assert r.dbsize() == 57

    restore = guide_commands("Backups of the store", "systemctl stop")
    paths = {"/var/backups/sessiond/2026-11-25-030000": made, "/var/lib/sessiond": d.workdir}
    old_files = {p.name for p in d.workdir.iterdir() if p.name.startswith("sessions.db")}
    assert "sessiond is running" in run_guide(restore, paths, status=1)
    assert {p.name for p in d.workdir.iterdir() if p.name.startswith("sessions.db")} == old_files
    d.kill()
    wait_until(lambda: lock_is_free(db), 10, "the compactor process to exit")

    from sessiond.store import log as wal

    # The crash left segments the backup has none of, with the later changes: a restore
    # that left them would have them replayed over the backup.
    later: set[bytes] = set()
    for segment in segments(d.workdir):
        if number(segment) > copied:
            later |= set(wal.replay(segment).changes)
    assert {b"n0", b"k0", b"k25"} <= later, "no log segment of the crash to replay: no test"
    old_files = {p.name for p in d.workdir.iterdir() if p.name.startswith("sessions.db")}

    out = run_guide(restore, paths)
    (replaced,) = d.workdir.glob("replaced-*")
    assert str(replaced) in out
    assert {p.name for p in replaced.iterdir()} == old_files
    assert {p.name for p in d.workdir.iterdir() if p.name.startswith("sessions.db-")} == {
        p.name for p in segments(made)
    }
    restored = [d.workdir / "sessions.db", *segments(d.workdir)]
    assert {p.stat().st_mode & 0o777 for p in restored} == {0o600}
    replays = len([e for e in d.events() if e.get("event") == "store_log_replayed"])
    d.start()
    assert len([e for e in d.events() if e.get("event") == "store_log_replayed"]) > replays
    with d.client() as r:
        assert r.dbsize() == 40
        assert r.mget([f"k{i}" for i in range(40)]) == [f"v{i}".encode() for i in range(40)]
        assert r.mget([f"n{i}" for i in range(20)]) == [None] * 20
    assert d.stop() == 0


def test_a_sessiond_started_while_the_scripts_copy_waits_for_them(
    daemon_factory: Factory, tmp_path: Path
) -> None:
    """With the daemon stopped, both scripts hold the store's lock while they copy (each
    ``cp`` made 1.5 s slower here): a sessiond started meanwhile, as a client connecting
    to sessiond.socket would start one, waits for the lock (``store_locked_waiting``),
    then opens the store as the script left it: for the restore, the backup's."""
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "cp").write_text('#!/bin/sh\nsleep 1.5\nexec /bin/cp "$@"\n')
    (slow / "cp").chmod(0o755)
    d = daemon_factory(sqlite_config())
    with d.client() as r:
        for i in range(10):
            assert r.set(f"k{i}", f"v{i}")
    assert d.stop() == 0
    backups = tmp_path / "backups"
    paths = {
        "/var/lib/sessiond": d.workdir,
        "/var/backups/sessiond/2026-11-25-030000": backups / "one",
        "/var/backups/sessiond/$(date +%F-%H%M%S)": backups / "one",
        "/var/backups/sessiond": backups,
    }
    for section, first in (("Backups of the store", "install -d -m 0700"),
                           ("Backups of the store", "systemctl stop")):  # fmt: skip
        commands = guide_commands(section, first)
        waits = len([e for e in d.events() if e.get("event") == "store_locked_waiting"])
        with ThreadPoolExecutor(1) as pool:
            script = pool.submit(run_guide, commands, paths, slow)
            # Started once the script holds the lock (it copies for 1.5 s and
            # more then): a fixed half second lost that race under load. Seen
            # in /proc/locks: trying the lock (flock -n) could take it from
            # under the script, which would then back up as if sessiond ran.
            wait_until(lambda: _lock_holder(d.workdir / "sessions.db") is not None, 30, "lock")
            d.start()  # returns once it serves, after the script
            script.result()
        assert len([e for e in d.events() if e.get("event") == "store_locked_waiting"]) > waits
        with d.client() as r:
            if first == "install -d -m 0700":
                assert r.dbsize() == 10
                for i in range(10, 20):
                    assert r.set(f"k{i}", f"v{i}")
                assert r.dbsize() == 20
            else:
                assert r.dbsize() == 10
                assert r.mget([f"k{i}" for i in range(20)]) == [
                    f"v{i}".encode() if i < 10 else None for i in range(20)
                ]
        assert d.stop() == 0


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_stopped_store_moves_to_another_directory_without_a_loss(
    daemon_factory: Factory, tmp_path: Path, how: str
) -> None:
    """Four clients write, and the daemon stops under that load: ``stop``, a clean stop
    while compaction lags far behind, which leaves log segments beside sessions.db;
    ``kill``, a kill -9 of the daemon and its compactor process at once (a crash of the
    host) while SQLite's -wal holds a compaction the database file does not (the daemon
    deletes a segment once its compaction is recorded). The guide's move to another
    directory (its backup and restore commands, the daemon stopped) loses no acknowledged
    change, and leaves the store it copied as it was."""
    from sessiond.store import log as wal

    old = daemon_factory(sqlite_config(), start=False)
    old.start(env=SLOWER_COMPACTION if how == "stop" else {})
    db = old.workdir / "sessions.db"
    writers = Writers(old, "w")
    try:
        writers.wait_for(2000)
        if how == "stop":
            time.sleep(1.0)
            assert old.stop() == 0
        else:
            wait_until(lambda: wal_ahead(db), 30, "a compaction only in the -wal")
            assert old.proc is not None
            os.kill(old.proc.pid, signal.SIGSTOP)  # it starts no other compactor
            for child in pids_with_parent(old.proc.pid):
                os.kill(child, signal.SIGKILL)
            old.kill()
    finally:
        writers.stop()
    stopped = time.monotonic()
    wait_until(lambda: lock_is_free(db), 10, "the compactor process to exit")
    assert any(wal.read_frames(p)[0] for p in segments(old.workdir)), "no log left: no test"
    if how == "kill":  # read on a copy: sqlite3, even read-only, changes the files
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        for name in ("sessions.db", "sessions.db-wal"):
            shutil.copyfile(old.workdir / name, scratch / name)
        assert through_in_file(db) < compacted_through(scratch / "sessions.db"), (
            "the -wal holds no compaction: no test"
        )
    else:
        assert not (old.workdir / "sessions.db-wal").exists()  # a clean stop removes it
    new = daemon_factory(sqlite_config(), start=False)
    before = files(old.workdir)
    out = run_guide(
        guide_commands("Moving the store", "install -d -o sessiond"),
        {
            "/var/lib/sessiond": old.workdir,
            "/var/backups/sessiond": tmp_path / "backups",
            "/srv/sessiond": new.workdir,
        },
    )
    assert "sessiond is not running" in out, out
    assert files(old.workdir) == before, "the copy changed the store it copied"
    new.start()
    with new.client() as r:
        assert writers.check(r, stopped, stopped) > 1000
    assert new.stop() == 0
