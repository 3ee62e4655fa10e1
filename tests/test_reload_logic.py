"""ConfigReloader's decisions, in process with an injected clock: what counts as a
change, what is reported once, how requests during a reload are merged, and
which keys wait for a restart. test_reload.py covers the same against the real
daemon, its watcher and SIGHUP."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sessiond import reload as reload_module
from sessiond.config import Config, load_config
from sessiond.reload import ConfigReloader


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, path: Path, **kwargs: Any) -> None:
        self.path = path
        self.config = load_config(path)
        self.applied: list[Config] = []
        self.clock = Clock(1000.0)
        self.reloader = ConfigReloader(
            path, current=lambda: self.config, apply=self.apply, clock=self.clock, **kwargs
        )

    def apply(self, config: Config) -> None:
        self.config = config
        self.applied.append(config)

    def write(self, settings: dict[str, Any]) -> None:
        self.path.write_text(yaml.safe_dump(settings))

    async def reload(self, trigger: str) -> None:
        self.reloader.request(trigger)
        await self.reloader.idle()


def run(tmp_path: Path, body: Callable[[Harness], Awaitable[None]], **kwargs: Any) -> None:
    path = tmp_path / "sessiond.yaml"
    path.write_text(yaml.safe_dump({"cache": {"max_sessions": 5}}))
    h = Harness(path, **kwargs)

    async def main() -> None:
        try:
            await body(h)
        finally:
            await h.reloader.stop()

    asyncio.run(main())


def test_stats_follow_each_outcome_with_the_injected_clock(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        stats = h.reloader.stats
        assert stats.last_success_timestamp == 1000.0  # the start-up load
        h.clock.now = 1500.0
        h.write({"cache": {"max_sessions": -1}})
        await h.reload("file_changed")
        assert (stats.success, stats.failure, stats.last_successful) == (0, 1, False)
        assert stats.last_success_timestamp == 1000.0
        h.clock.now = 2000.0
        h.write({"cache": {"max_sessions": 7}})
        await h.reload("file_changed")
        assert (stats.success, stats.failure, stats.last_successful) == (1, 1, True)
        assert stats.last_success_timestamp == 2000.0
        assert [c.cache.max_sessions for c in h.applied] == [7]

    run(tmp_path, body)


def test_an_unchanged_file_is_not_reloaded_but_a_sighup_always_is(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.reload("file_changed")
        assert h.reloader.stats.success == 0
        await h.reload("SIGHUP")
        assert h.reloader.stats.success == 1
        assert h.applied[-1].cache.max_sessions == 5

    run(tmp_path, body)


def test_an_empty_file_from_the_watcher_is_a_write_in_progress(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.path.write_text("")
        await h.reload("file_changed")
        assert (h.reloader.stats.success, h.reloader.stats.failure) == (0, 0)
        await h.reload("SIGHUP")  # asked for: an empty file means the defaults
        assert h.applied[-1].cache.max_sessions == Config().cache.max_sessions

    run(tmp_path, body)


@pytest.mark.parametrize("kind", ["missing", "invalid"])
def test_a_failure_that_stays_the_same_is_reported_once(tmp_path: Path, kind: str) -> None:
    async def body(h: Harness) -> None:
        if kind == "missing":
            h.path.unlink()
        else:
            h.write({"cache": {"max_sessions": 0}})
        for _ in range(5):
            await h.reload("file_changed")
        assert h.reloader.stats.failure == 1
        await h.reload("SIGHUP")
        assert h.reloader.stats.failure == 2
        # A different failure is a new one.
        h.write({"cache": {"max_sessions": "many"}})
        await h.reload("file_changed")
        assert h.reloader.stats.failure == 3
        assert not h.reloader.stats.last_successful

    run(tmp_path, body)


def test_requests_during_a_reload_are_merged_into_one_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reading, release = threading.Event(), threading.Event()
    reads: list[bool] = []
    real_read = reload_module._read

    def held_read(path: Path, last: Any, force: bool) -> Any:
        reads.append(force)
        result = real_read(path, last, force)
        if len(reads) == 1:  # hold the first reload in flight
            reading.set()
            release.wait(10)
        return result

    monkeypatch.setattr(reload_module, "_read", held_read)

    async def body(h: Harness) -> None:
        h.reloader.request("file_changed")
        await asyncio.to_thread(reading.wait, 10)
        h.write({"cache": {"max_sessions": 9}})
        for _ in range(100):
            h.reloader.request("SIGHUP")
            h.reloader.request("file_changed")
        release.set()
        await h.reloader.idle()
        assert reads == [False, True]  # the first, then one forced read for all 200
        assert h.reloader.stats.success == 1  # the first saw an unchanged file
        assert h.config.cache.max_sessions == 9

    run(tmp_path, body)


def test_restart_required_keys_keep_their_old_values(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.write({"cache": {"max_sessions": 8, "default_ttl": 60}, "socket": {"path": "x.sock"}})
        await h.reload("file_changed")
        (applied,) = h.applied
        assert applied.cache.max_sessions == 5  # named in restart_required
        assert applied.cache.default_ttl == 60.0
        assert applied.socket.path == tmp_path / "x.sock"  # not named: applied

    run(tmp_path, body, restart_required={"cache.max_sessions"})


def test_a_failing_apply_is_a_failed_reload(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        def broken(config: Config) -> None:
            raise RuntimeError("no")

        h.reloader._apply = broken
        h.write({"cache": {"max_sessions": 8}})
        await h.reload("file_changed")
        stats = h.reloader.stats
        assert (stats.success, stats.failure, stats.last_successful) == (0, 1, False)

    run(tmp_path, body)


def test_without_a_file_a_reload_is_skipped() -> None:
    async def main() -> None:
        reloader = ConfigReloader(None, current=Config, apply=lambda c: None)
        reloader.request("SIGHUP")
        await reloader.idle()
        assert (reloader.stats.success, reloader.stats.failure) == (0, 0)
        await reloader.stop()

    asyncio.run(main())
