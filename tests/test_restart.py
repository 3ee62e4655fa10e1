"""Restarts that refuse no client (docs/operations.md), under the load of 50
redis-py clients writing with ``durability: always``:

- under socket activation: systemd-socket-activate binds the socket, and
  tests/tools/socket_service.py keeps it and restarts the daemon behind it as
  ``systemctl restart`` does with sessiond.socket (SIGTERM, wait, start);
- without systemd: SIGUSR2 makes the daemon hand over to a new process of
  itself (sessiond.upgrade).

Each is restarted several times while the clients run. Every time: no
connect() fails, no error reaches a client (redis-py retries, by default, a
request whose connection closed: that is counted, and allowed), no read sees
anything but the last acknowledged write, and afterwards every acknowledged
write is read back, from the last daemon and again after a cold start on the
same store.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import wait_until
from loadgen import Counts, Load, pid_gone, stop_pid
from test_activation import listening, socket_activate

if TYPE_CHECKING:
    from conftest import Daemon

Factory = Callable[..., "Daemon"]
TOOLS = Path(__file__).parent / "tools"
CLIENTS = 50
RESTARTS = 5
# Enough answered requests per client, after a restart, to know that every
# client is served by the new daemon.
PROGRESS = 10
DURABLE: dict[str, Any] = {
    "persistence": {"backend": "sqlite", "path": "sessions.db", "durability": "always"},
    "metrics": {"enabled": True},
    "logging": {"level": "info"},
}


def started(d: Daemon) -> list[dict[str, Any]]:
    return [e for e in d.events() if e.get("event") == "started"]


def summary(name: str, windows: list[Counts], load: Load) -> str:
    """What the clients saw, restart by restart (printed: pytest -s shows it)."""
    per = "; ".join(
        f"#{i + 1}: {w.ops} ops, {sum(w.retried.values())} retried, "
        f"{sum(w.errors.values())} errors, slowest {w.slowest:.2f}s"
        for i, w in enumerate(windows)
    )
    prober = load.prober
    return (
        f"{name}: {len(windows)} restarts ({per}); prober: {prober.connects} connects, "
        f"{sum(prober.refused.values())} refused, {sum(prober.unanswered.values())} unanswered"
    )


class Windows:
    """What the clients saw between two restarts."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.windows: list[Counts] = []
        self._before = Counts()

    def close(self) -> None:
        now = self.load.totals()
        window = Counts()
        window.add(now)
        window.ops -= self._before.ops
        window.errors.subtract(self._before.errors)
        window.retried.subtract(self._before.retried)
        window.connect_failures.subtract(self._before.connect_failures)
        window.slowest = max(w.counts.slowest for w in self.load.writers)
        for w in self.load.writers:
            w.counts.slowest = 0.0
        self.windows.append(window)
        self._before = now


def check(load: Load, counts: Counts) -> None:
    assert counts.connect_failures == Counts().connect_failures, counts.connect_failures
    assert not load.prober.refused, load.prober.refused
    assert not counts.errors, counts.errors
    assert counts.wrong_reads == [], counts.wrong_reads[:10]
    assert load.lost() == []


def no_problems(d: Daemon) -> None:
    text = d.log_text()
    assert "Traceback" not in text, text
    errors = [e for e in d.events() if e.get("level") == "error"]
    assert errors == [], errors


def test_restarts_under_socket_activation_refuse_and_lose_nothing(
    daemon_factory: Factory,
) -> None:
    d = daemon_factory(DURABLE, start=False)
    service = [sys.executable, str(TOOLS / "socket_service.py"), "--"]
    d.start(wait=False, prefix=[*socket_activate(str(d.socket_path)), *service])
    listening(d)
    load = Load(d.socket_path, CLIENTS).start()  # the first connection starts the daemon
    windows = Windows(load)
    try:
        d.wait_for_event("started", timeout=60)
        load.wait_progress(PROGRESS)
        for n in range(RESTARTS):
            assert d.proc is not None
            d.proc.send_signal(signal.SIGHUP)  # systemctl restart sessiond
            d.wait_for_event("started", count=n + 2, timeout=60)
            load.wait_progress(PROGRESS)
            windows.close()
        counts = load.stop()
    finally:
        load.stopping.set()
    print(summary("socket activation", windows.windows, load))
    check(load, counts)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(60) == 0
    exits = [e["status"] for e in d.events() if e.get("event") == "service_exited"]
    assert exits == [0] * (RESTARTS + 1)
    pids = [e["pid"] for e in started(d)]
    assert len(set(pids)) == RESTARTS + 1
    assert {e["socket_from"] for e in started(d)} == {"LISTEN_FDS"}
    assert d.socket_path.exists(), "a daemon removed the socket unit's file"
    no_problems(d)
    # Every acknowledged write is in the store: a cold start reads them back.
    d.start()
    assert load.lost() == []
    assert d.stop() == 0


def test_sigusr2_hands_over_under_load_refusing_and_losing_nothing(
    daemon_factory: Factory,
) -> None:
    _hand_over_under_load(daemon_factory(DURABLE, start=False))


def test_sigusr2_hands_over_on_the_shared_store(daemon_factory: Factory, pg_db: Any) -> None:
    """On PostgreSQL the successor opens connections of its own once the old
    process has committed and closed its own (docs/shared-store.md)."""
    config = {
        **DURABLE,
        "persistence": {"backend": "postgresql", "dsn": pg_db.dsn(), "durability": "always"},
    }
    _hand_over_under_load(daemon_factory(config, start=False))


def _hand_over_under_load(d: Daemon) -> None:
    # The reaper keeps each successor its descendant, to see how each ended,
    # in a file of its own (in the daemons' log, a line of its once went missing).
    reaped = d.log_path.parent / "reaped.jsonl"
    d.start(prefix=[sys.executable, str(TOOLS / "reaper.py"), "--events", str(reaped), "--"])
    pids = [started(d)[-1]["pid"]]
    load = Load(d.socket_path, CLIENTS).start()
    windows = Windows(load)
    try:
        load.wait_progress(PROGRESS)
        for n in range(RESTARTS):
            os.kill(pids[-1], signal.SIGUSR2)
            d.wait_for_event("upgraded", count=n + 1, timeout=60)
            pids.append(started(d)[-1]["pid"])
            wait_until(lambda: pid_gone(pids[-2]), timeout=30, what="the old daemon to exit")
            load.wait_progress(PROGRESS)
            # The new daemon serves the metrics port the old one let go of.
            assert "sessiond_build_info" in d.scrape()
            windows.close()
        counts = load.stop()
        check(load, counts)
    finally:
        load.stopping.set()
        stop_pid(pids[-1])
    print(summary("SIGUSR2", windows.windows, load))
    assert len(set(pids)) == RESTARTS + 1
    assert d.proc is not None
    assert d.proc.wait(60) == 0  # the reaper: every descendant has exited
    lines = reaped.read_text().splitlines()
    exits = {e["pid"]: e["status"] for e in map(json.loads, lines)}
    assert [exits.get(pid) for pid in pids] == [0] * (RESTARTS + 1), (pids, lines)
    assert [e["socket_from"] for e in started(d)] == ["bound"] + ["predecessor"] * RESTARTS
    # Each successor warmed (or was handed over while warming: it stopped then).
    warms = [e for e in d.events() if e.get("event") in ("warm_start", "warm_start_stopped")]
    assert len(warms) == RESTARTS + 1, warms
    assert all(e["sessions"] > 0 for e in warms[1:] if e["event"] == "warm_start"), warms
    # The last daemon removed the file it was handed as the daemon's own.
    assert not d.socket_path.exists()
    no_problems(d)
    # Every acknowledged write is in the store: a cold start reads them back.
    d.start()
    assert load.lost() == []
    assert d.stop() == 0


@pytest.fixture
def upgradable(daemon_factory: Factory) -> Daemon:
    return daemon_factory(DURABLE)


def test_a_successor_that_cannot_start_leaves_the_daemon_serving(upgradable: Daemon) -> None:
    """A config the new process refuses: it exits before taking anything over
    and the running daemon serves on, its clients unaware."""
    d = upgradable
    pid = started(d)[-1]["pid"]
    load = Load(d.socket_path, 5).start()
    try:
        load.wait_progress(PROGRESS)
        good = d.config_path.read_text()
        d.config_path.write_text(good + "cache:\n  max_sessions: -5\n")
        os.kill(pid, signal.SIGUSR2)
        (failed,) = d.wait_for_event("upgrade_failed", timeout=60)
        assert failed["exit_status"] == 1
        assert "this one serves on" in failed["error"]
        assert [e for e in d.events() if e.get("event") == "bad_config"]
        d.config_path.write_text(good)
        load.wait_progress(PROGRESS)
        counts = load.stop()
    finally:
        load.stopping.set()
    check(load, counts)
    assert len(started(d)) == 1 and not pid_gone(pid)
    # Once the config is right again, the upgrade goes through.
    os.kill(pid, signal.SIGUSR2)
    d.wait_for_event("upgraded", timeout=60)
    successor = started(d)[-1]["pid"]
    assert successor != pid
    try:
        assert d.proc is not None
        assert d.proc.wait(30) == 0
        with d.client() as c:
            assert c.ping()
    finally:
        stop_pid(successor)


def test_sigterm_while_a_successor_starts_stops_both(upgradable: Daemon) -> None:
    """SIGTERM before the new process is ready: the daemon kills it (it holds
    nothing yet) and stops as usual, socket file removed; nothing is left
    serving a socket without a path."""
    d = upgradable
    pid = started(d)[-1]["pid"]

    def said(name: str) -> int:
        return len([e for e in d.events() if e.get("event") == name])

    for attempt in range(1, 6):
        os.kill(pid, signal.SIGUSR2)
        upgrading = d.wait_for_event("upgrade_started", count=attempt, timeout=30)
        successor = upgrading[-1]["successor_pid"]
        os.kill(successor, signal.SIGSTOP)
        # It logs upgrade_waiting before it says ready: without the line, it has not.
        if said("upgrade_waiting") < attempt:
            break
        os.kill(successor, signal.SIGCONT)  # too late: let this one finish, and again
        d.wait_for_event("upgraded", count=attempt, timeout=60)
        wait_until(lambda old=pid: pid_gone(old), timeout=30, what="the old daemon to exit")
        pid = successor
    else:
        pytest.skip("the new process was ready before it could be stopped, 5 times")
    try:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: pid_gone(successor), timeout=30, what="the successor to be killed")
        wait_until(lambda: pid_gone(pid), timeout=30, what="the daemon to stop")
    finally:
        stop_pid(successor)
    assert [e for e in d.events() if e.get("event") == "upgrade_cancelled"]
    assert [e for e in d.events() if e.get("event") == "stopped"]
    assert said("upgraded") == attempt - 1
    assert not d.socket_path.exists()
    no_problems(d)


def test_sigusr2_while_starting_is_ignored_then_too(daemon_factory: Factory) -> None:
    """A SIGUSR2 that comes while the daemon starts (here: while it waits for
    another daemon's store) is ignored, as the message it prints says, and not
    carried out once the daemon serves (under uvloop the signal also reaches
    the event loop, which would hand over as soon as it had a handler)."""
    first = daemon_factory(DURABLE)
    second = daemon_factory(
        {
            **DURABLE,
            "persistence": {"backend": "sqlite", "path": str(first.workdir / "sessions.db")},
        },
        start=False,
    )
    second.start(wait=False)
    second.wait_for_event("store_locked_waiting", timeout=30)
    second.signal(signal.SIGUSR2)
    wait_until(
        lambda: "SIGUSR2 while starting: ignored" in second.log_text(),
        timeout=10,
        what="the daemon to say it ignored SIGUSR2",
    )
    assert first.stop() == 0
    second.wait_ready()
    with second.client() as c:
        assert c.ping()
    time.sleep(1.0)  # an upgrade would have started by now
    assert not [e for e in second.events() if e.get("event", "").startswith("upgrade")]
    assert second.stop() == 0


def test_sigusr2_under_systemd_is_refused(daemon_factory: Factory, tmp_path: Path) -> None:
    """systemd tracks the daemon's pid: a successor would be killed with it.
    There the socket unit makes `systemctl restart` refuse nothing instead."""
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(str(notify))
        d = daemon_factory(DURABLE, start=False)
        d.start(env={"NOTIFY_SOCKET": str(notify)})
        d.signal(signal.SIGUSR2)
        (refused,) = d.wait_for_event("upgrade_refused")
        assert "systemctl restart sessiond" in refused["reason"]
        with d.client() as c:
            assert c.ping()
        assert d.stop() == 0
    assert not [e for e in d.events() if e.get("event") == "upgrade_started"]


def test_sigusr2_with_a_socket_from_systemd_leaves_its_file(daemon_factory: Factory) -> None:
    """A socket passed in LISTEN_FDS is passed on as it came: neither daemon
    removes its file."""
    d = daemon_factory(start=False)
    d.start(wait=False, prefix=socket_activate(str(d.socket_path)))
    listening(d)
    with d.client() as c:
        assert c.set("k", "v")
    d.wait_for_event("started")
    assert d.proc is not None
    d.signal(signal.SIGUSR2)
    d.wait_for_event("upgraded", timeout=60)
    assert d.proc.wait(30) == 0
    successor = started(d)[-1]
    assert successor["socket_from"] == "predecessor"
    with d.client() as c:
        assert c.ping()
    stop_pid(successor["pid"])
    assert d.socket_path.exists()
    assert [e for e in d.events() if e.get("event") == "stopped"]
