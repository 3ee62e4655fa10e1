"""Hot reload of the config file (docs/configuration.md): the file watch,
SIGHUP, and the read, parse and validation on a thread of their own, so
clients are served while a file is read.

The app gives :class:`ConfigReloader` the current config, an ``apply``
callback and the keys that need a restart; the reloader decides when to
reload, applies a valid file's hot keys through ``apply`` on the event loop,
and reports every failure once: a log line and
``sessiond_config_last_reload_successful`` at 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from . import logs
from .config import (
    MAX_PROBLEM_CHARS,
    RESTART_REQUIRED,
    Config,
    ConfigError,
    flatten,
    parse_config_bytes,
    read_config_bytes,
)
from .stats import ReloadStats

log = structlog.get_logger("sessiond")

RELOAD_DEBOUNCE_MS = 200


# What the file looked like when it was last read: its bytes, or the problem
# that kept it from being read. The watcher reloads only when this changes, so
# a file that stays unreadable is reported once, not once per watcher event.
Fingerprint = bytes | str


@dataclass(frozen=True, slots=True)
class _Read:
    """One read of the file on the config thread."""

    fingerprint: Fingerprint
    config: Config | None = None
    problems: tuple[str, ...] = ()


def fingerprint(path: Path) -> Fingerprint:
    """The file's bytes, or why they cannot be read."""
    try:
        return read_config_bytes(path)
    except ConfigError as exc:
        return "\n".join(exc.problems)


def _read(path: Path, last: Fingerprint | None, force: bool) -> _Read | None:
    """Read, parse and validate the file (on the config thread); ``None`` when
    nothing changed since ``last`` and the reload was not forced."""
    try:
        data = read_config_bytes(path)
    except ConfigError as exc:
        problem = "\n".join(exc.problems)
        if not force and problem == last:
            return None
        return _Read(problem, problems=tuple(exc.problems))
    # Empty from the watcher: an in-place rewrite caught between truncate and write.
    if not force and (data == last or not data):
        return None
    try:
        return _Read(data, config=parse_config_bytes(data, path))
    except ConfigError as exc:
        return _Read(data, problems=tuple(exc.problems))


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_PROBLEM_CHARS else text[: MAX_PROBLEM_CHARS - 3] + "..."


class ConfigReloader:
    """Reloads the config file at ``path`` on SIGHUP and when the file changes.

    ``current()`` is the config in force, ``apply(config)`` puts a new one in
    force (called on the event loop, between commands), and the keys in
    ``restart_required`` keep their old values in what is applied, and are
    logged as needing a restart. With ``path`` None (running on built-in
    defaults) a SIGHUP is logged and otherwise ignored.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        current: Callable[[], Config],
        apply: Callable[[Config], None],
        restart_required: Collection[str] = RESTART_REQUIRED,
        stats: ReloadStats | None = None,
        clock: Callable[[], float] = time.time,
        debounce_ms: int = RELOAD_DEBOUNCE_MS,
    ) -> None:
        self.path = path
        self._current = current
        self._apply = apply
        self._restart_required = frozenset(restart_required)
        self._clock = clock
        self._debounce_ms = debounce_ms
        self.stats = stats or ReloadStats()
        self.stats.last_success_timestamp = clock()  # the start-up load
        # As read for the start-up load (give or take an edit in between, which
        # start() catches): a SIGHUP after an edit then does not reload twice.
        self._fingerprint: Fingerprint | None = None if path is None else fingerprint(path)
        # One thread of its own: reloads run one at a time on it, and one that
        # cannot finish (a hung network file system) holds up no one else.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sessiond-config")
        self._watch: asyncio.Task[None] | None = None
        self._running: asyncio.Task[None] | None = None
        self._pending: tuple[str, bool] | None = None
        self._stopped = False

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Handle SIGHUP, start watching the file, and reload if it changed
        since it was read for start-up. Call it on the event loop."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.request, "SIGHUP")
        if self.path is None:
            return
        # Start the thread now, not at the first reload: by then the process may
        # be at its task limit. If it cannot start, each reload tries again (and
        # is reported as failed while it cannot).
        try:
            self._executor.submit(lambda: None).result()
        except RuntimeError as exc:
            log.error("config_thread_failed", error=_bounded(repr(exc)))
        self._watch = asyncio.ensure_future(self._watch_forever(self.path))
        self._watch.add_done_callback(self._watch_done)
        await asyncio.sleep(0)  # the task's first step sets up the inotify watch
        self.request("file_changed")  # an edit made before the watch was live

    async def stop(self) -> None:
        """Stop watching and reloading; a SIGHUP from now on is ignored."""
        self._stopped = True
        self._pending = None
        tasks = [t for t in (self._watch, self._running) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def idle(self) -> None:
        """Wait until no reload is running or due."""
        while self._running is not None:
            await asyncio.wait([self._running])

    # ------------------------------------------------------------ triggers

    def request(self, trigger: str) -> None:
        """Reload for ``trigger``: ``"file_changed"`` reloads only if the file
        changed since it was last read; anything else (``"SIGHUP"``) always
        does. Requests made while a reload runs are merged into one more."""
        if self._stopped:
            return
        force = trigger != "file_changed"
        if self._running is not None:
            if self._pending is not None and self._pending[1] and not force:
                return  # a forced one is already due: it reads the file anyway
            self._pending = (trigger, force)
            return
        self._running = asyncio.ensure_future(self._run(trigger, force))

    async def _run(self, trigger: str, force: bool) -> None:
        try:
            while True:
                await self._reload(trigger, force)
                if self._pending is None:
                    return
                (trigger, force), self._pending = self._pending, None
        finally:
            self._running = None

    async def _watch_forever(self, path: Path) -> None:
        """Watch the config file's directory (editors and config managers
        replace files atomically) and reload once per burst of changes."""
        from watchfiles import awatch

        target = path.absolute()  # not resolve(): watch the directory the link is in
        names = {target.name}
        if target.is_symlink():
            # kubelet's ConfigMap volume: sessiond.yaml -> ..data/sessiond.yaml, and an
            # update renames a new ..data link into place; the link changes, not the file.
            names.add(target.readlink().parts[0])

        def relevant(_change: object, changed: str) -> bool:
            return Path(changed).name in names

        async for _changes in awatch(
            target.parent,
            watch_filter=relevant,
            debounce=self._debounce_ms,
            step=50,
            recursive=False,
        ):
            self.request("file_changed")

    def _watch_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopped:
            return
        exc = task.exception()
        log.error(
            "config_watch_failed",
            error="the watch ended" if exc is None else _bounded(repr(exc)),
            hint="changes to the file are no longer seen; SIGHUP still reloads",
        )

    # ------------------------------------------------------------ one reload

    async def _reload(self, trigger: str, force: bool) -> None:
        if self.path is None:
            log.info("config_reload_skipped", trigger=trigger, reason="running on defaults")
            return
        loop = asyncio.get_running_loop()
        try:
            read = await loop.run_in_executor(
                self._executor, _read, self.path, self._fingerprint, force
            )
        except Exception as exc:  # a bug, or no thread to run on: still a failed reload
            read = _Read(f"error: {exc!r}", problems=(_bounded(f"cannot reload: {exc!r}"),))
        if read is None:
            return
        self._fingerprint = read.fingerprint
        if read.config is None:
            self._failed(trigger, list(read.problems))
            return
        try:
            self._put_in_force(trigger, read.config)
        except Exception as exc:
            self._failed(trigger, [_bounded(f"cannot apply config: {exc!r}")])

    def _failed(self, trigger: str, problems: list[str]) -> None:
        self.stats.failure += 1
        self.stats.last_successful = False
        log.error("config_reload_failed", trigger=trigger, problems=problems)

    def _put_in_force(self, trigger: str, new: Config) -> None:
        old = self._current()
        before, after = flatten(old), flatten(new)
        # Compare unredacted (a new password is a change), report redacted.
        raw_before, raw_after = flatten(old, redact=False), flatten(new, redact=False)
        changed = {k: (before[k], after[k]) for k in after if raw_before[k] != raw_after[k]}
        restart = self._restart_required
        pending = sorted(k for k in changed if k in restart)
        effective = _keep(new, old, restart)
        applied = {k: {"old": v[0], "new": v[1]} for k, v in changed.items() if k not in restart}
        # Log under the more verbose of the two levels, so that a reload which
        # changes the level is itself seen whichever way it goes.
        quieter = logs.LEVELS[effective.logging.level] > logs.LEVELS[old.logging.level]
        if not quieter:
            self._apply(effective)
        log.info("config_reloaded", trigger=trigger, changed=applied)
        if pending:
            log.warning(
                "config_change_requires_restart",
                keys=pending,
                changed={k: {"old": changed[k][0], "new": changed[k][1]} for k in pending},
            )
        if quieter:
            self._apply(effective)
        self.stats.success += 1
        self.stats.last_successful = True
        self.stats.last_success_timestamp = self._clock()


def _keep(new: Config, old: Config, keys: frozenset[str]) -> Config:
    """``new`` with the settings named in ``keys`` (``"section.name"``) as in ``old``."""
    sections: dict[str, Any] = {}
    for key in keys:
        section, _, name = key.partition(".")
        sections.setdefault(section, {})[name] = getattr(getattr(old, section), name)
    return dataclasses.replace(
        new,
        **{s: dataclasses.replace(getattr(new, s), **v) for s, v in sections.items()},
    )
