"""Wires config, cache, store, server, metrics, logging, reload and systemd together.

This is the only module that knows about all of them (hypercorn's ``run`` and
uvicorn's ``Server`` are the model): it builds the pieces from a :class:`Config`,
runs the background jobs (active expiry, idle timeout, watchdog, config watch),
shuts down in order on SIGTERM/SIGINT, and hands over to a new process on
SIGUSR2 (:mod:`sessiond.upgrade`).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog

from . import __version__, logs
from .activation import ActivationError, inherited_listener
from .cache import SessionCache
from .commands import Client, Dispatcher, ServerState
from .commands.channels import PubSub
from .commands.scripting import new_engine
from .commands.shared import SharedDispatcher
from .config import Config, ConfigError, load_config, redact_dsn
from .keyspace import Keyspace
from .metrics import MetricsServer, SessiondCollector
from .notify import notify, supervised, watchdog_interval
from .reload import ConfigReloader
from .server import Server, StartupError
from .shared import SharedKeyspace
from .stats import Stats
from .store import Hook, Outage, SQLiteStore, StoreError
from .upgrade import Predecessor, Successor, UpgradeError
from .values import Value

log = structlog.get_logger("sessiond")

SHUTDOWN_GRACE = 10.0  # seconds to let in-flight commands finish
PROBE_INTERVAL = 0.1  # the loop-lag probe's timer, and INFO's instantaneous_* samples
COUNT_INTERVAL = 15.0  # seconds between counts of the sessions in memory and store
SWEEP_CHUNK = 1000  # heap records per sweep step before yielding to clients
SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits for it (CPython's default
is 0.005).

The event loop gives the GIL up at every system call (each socket read and write).
A background thread that wants it back at once, as the store's count does binding
100k queued keys into SQLite row by row, takes it each time, and the loop then waits
out the whole interval before it gets it back: at 5 ms, one event-loop iteration
of 50 connections stretched to 35-240 ms while a count ran (``perf sched`` on the
million-SET load of ``bench/scale.py``: the main thread asleep 4-5 ms at a time,
running for well under a millisecond in between). At 0.5 ms the longest PING
during that load was 37-67 ms in 4 runs against 55-90 ms at 5 ms, with the same
write rate."""
GC_THRESHOLDS = (2000, 1, 10)
"""The cyclic collector's thresholds (CPython's default is (700, 10, 10)).

A young collection starts once tracked objects made *less those freed* pass the
first. Under writes into a full cache each new session replaces an evicted one,
so that count grows far slower than the young generation: at 7000 a young
collection walked 30-40k objects, up to 13-17 ms of the collector's CPU. The
middle generation is collected at every second young collection and then frozen
(:func:`freeze_survivors`), so it holds the survivors of two, not of eleven
(17-40 ms at 10). With these, in the million-SET load of ``bench/scale.py``
(issue 18), the longest collection took 10-17 ms of the collector's CPU, 0.6-0.75 s
in all, against 25-40 ms and 0.9-1.1 s at (7000, 10, 10) (``time.thread_time()``
in ``gc.callbacks``; 3 and 2 runs on a loaded machine)."""


# How far each progress report of a long start-up step moves systemd's start
# timeout (TimeoutStartSec); reports come every few seconds.
_START_EXTENSION_USEC = 60_000_000


def build_cache(config: Config) -> SessionCache[bytes, Value]:
    c = config.cache
    return SessionCache(
        c.max_sessions,
        max_memory=c.max_memory,
        default_ttl=c.default_ttl or None,
        sliding=c.sliding,
    )


def freeze_survivors(generation: int) -> None:
    """After a collection of generation 1, move what survived it (and the
    oldest generation) out of the collector's reach: ``gc.freeze()``, O(1).

    The sessions in memory are what survives: one tracked ``Entry`` each
    (compiled with mypyc or not, a class instance is always tracked). Left in
    the oldest generation, every full collection walked all of them, 100k
    sessions in 50-170 ms during which the event loop answered nothing
    (gc.callbacks under a million-SET load; issue 18). Frozen, a session
    costs the collector nothing and is still freed by its reference count
    when evicted or deleted (an entry refers to no container that refers
    back to it; tests/test_ops.py). The price: an object that was frozen
    and later becomes part of an unreachable cycle is never reclaimed.
    Sessions form none; a closed connection's objects were freed by
    reference counting in a trial (300 connections frozen while open, then
    closed: their 14 frozen objects each were gone), and INFO memory's
    ``gc_frozen_objects`` shows the count to watch."""
    if generation == 1:
        gc.freeze()


def _still_starting(what: str) -> None:
    """Tell systemd that start-up is busy with ``what`` (a store's schema
    migration, reported every few seconds while it runs): the start timeout
    moves to a minute from now, so a large store is not killed mid-way and
    rolled back at every start."""
    notify(f"EXTEND_TIMEOUT_USEC={_START_EXTENSION_USEC}\nSTATUS={what}")


class App:
    """One daemon. ``store_hook`` (tests only) is passed to the store: see
    :class:`~sessiond.store.SQLiteStore` for its points. ``listener`` is a
    listening socket passed by systemd or by ``predecessor``, the daemon
    handing over to this one (else ``socket.path`` is bound)."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None,
        *,
        store_hook: Hook | None = None,
        listener: socket.socket | None = None,
        predecessor: Predecessor | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.store_hook = store_hook
        self.listener = listener
        self.predecessor = predecessor
        self.successor: Successor | None = None  # the daemon handed over to
        self.upgrading = False
        self._upgrade: asyncio.Task[None] | None = None
        self.stats = Stats()
        self.cache = build_cache(config)
        self.store: SQLiteStore | None = None
        self.pubsub = PubSub()
        self.state = ServerState(config, self.stats, self.pubsub)
        self.scripts = new_engine(config)  # the daemon's one Lua engine
        # With PostgreSQL, memory is one host's near cache of a shared store.
        self.shared: SharedKeyspace | None = None
        self.keyspace: Keyspace
        if config.persistence.backend == "postgresql":
            self.shared = SharedKeyspace(self.cache, max_value_size=config.limits.max_value_size)
            self.keyspace = self.shared
            self.dispatcher: Dispatcher = SharedDispatcher(
                self.shared, self.state, scripts=self.scripts
            )
        else:
            self.keyspace = Keyspace(self.cache, max_value_size=config.limits.max_value_size)
            self.dispatcher = Dispatcher(self.keyspace, self.state, scripts=self.scripts)
        self.pubsub.attach(self.keyspace)
        self.pubsub.configure(config.pubsub.notify_keyspace_events)
        self.server = Server(
            self.dispatcher,
            self.keyspace,
            self.state,
            durable_replies=config.persistence.durability == "always",
        )
        self.reloader = ConfigReloader(
            config_path, current=lambda: self.config, apply=self.apply, stats=self.stats.reload
        )
        self.metrics: MetricsServer | None = None
        self._gc_started = 0.0
        self.shutdown_event = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    # --------------------------------------------------------------- run

    async def run(self, started: Callable[[], Awaitable[None]] | None = None) -> int:
        loop = asyncio.get_running_loop()
        config = self.config
        warmed = 0
        warming: Callable[[], Awaitable[int]] | None = None
        if self.listener is None:
            try:
                self.server.preflight()
            except StartupError as exc:
                log.error("startup_failed", error=str(exc))
                return 1
        if config.persistence.backend == "sqlite":
            try:
                warming = self._open_store(loop)
            except StoreError as exc:
                log.error("startup_failed", error=str(exc))
                return 1
        elif self.shared is not None:
            try:
                warmed = await self._open_shared_store(self.shared)
            except StoreError as exc:
                log.error("startup_failed", error=str(exc))
                return 1
        # Warmed sessions and start-up objects live for the whole run: keep the
        # cyclic collector from rescanning them (thresholds: GC_THRESHOLDS).
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        sys.setswitchinterval(SWITCH_INTERVAL)
        identity = self.predecessor.socket_identity if self.predecessor is not None else None
        try:
            await self.server.start(self.listener, identity)
        except StartupError as exc:
            log.error("startup_failed", error=str(exc))
            return 1
        if config.metrics.enabled:
            self.metrics = MetricsServer(SessiondCollector(self.keyspace, self.state))
            try:
                await self.metrics.start(config.metrics.host, config.metrics.port)
            except OSError as exc:
                log.error(
                    "startup_failed",
                    error=f"metrics.listen: cannot listen on {config.metrics.listen}: "
                    f"{exc.strerror}",
                )
                self.metrics = None
                self.server.stop_accepting()
                self.server.remove_socket()
                await self._close_store()
                return 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_shutdown, sig.name)
        # A SIGUSR2 that came while starting was ignored (cli.py says so), but
        # under uvloop it also left its number in the loop's wakeup socket,
        # which the handler added below would read as a new one and upgrade:
        # let the loop read it first, while SIGUSR2 has no handler of its own.
        await asyncio.sleep(0)
        loop.add_signal_handler(signal.SIGUSR2, self._request_upgrade)
        self.state.on_shutdown = self._shutdown_command
        gc.callbacks.append(self._gc_phase)  # removed by _shutdown
        if warming is not None:
            self._spawn(self._warm_start(warming))
        self._spawn(self._sweep_forever())
        self._spawn(self._idle_forever())
        self._spawn(self._probe_forever())
        self._spawn(self._count_forever())
        if self.shared is not None:
            self._spawn(self._renew_forever(self.shared))
        interval = watchdog_interval()
        if interval is not None:
            self._spawn(self._watchdog_forever(interval))
        if self.config_path is not None:
            self._warn_store_beside_config(self.config_path)
        await self.reloader.start()
        served = self.server.path
        if self.listener is not None and served != config.socket.path:
            log.warning(
                "socket_path_differs",
                socket=str(served),
                configured=str(config.socket.path),
                hint="the passed socket is served; make socket.path the same path "
                "(ListenStream= of sessiond.socket)",
            )
        log.info(
            "started",
            version=__version__,
            pid=os.getpid(),
            config=config.source,
            socket=str(served),
            socket_from=(
                "bound"
                if self.listener is None
                else "predecessor"
                if self.predecessor is not None
                else "LISTEN_FDS"
            ),
            metrics=config.metrics.listen if config.metrics.enabled else "disabled",
            store=self._store_label(),
            durability=config.persistence.durability if self.keyspace.persistent else None,
            warmed_sessions=warmed,
            warming=self.keyspace.warming,
        )
        if self.predecessor is not None:
            self.predecessor.serving()
        # Ready while the warm start may still be loading: read-through finds
        # every session meanwhile (docs/operations.md).
        notify("READY=1\nSTATUS=serving" + (", warm start loading" if warming is not None else ""))
        if started is not None:
            await started()
        await self.shutdown_event.wait()
        return await self._shutdown()

    def _open_store(self, loop: asyncio.AbstractEventLoop) -> Callable[[], Awaitable[int]] | None:
        """Open the SQLite store and attach it to the keyspace; the warm start
        to run once serving (``None`` if it is off)."""
        p = self.config.persistence
        # Tests simulate a full disk with it: the database errors at this many
        # pages, and the log at as many bytes.
        max_pages = int(os.environ.get("SESSIOND_STORE_MAX_PAGES") or 0)
        store = SQLiteStore(
            p.path,
            durability=p.durability,
            flush_interval=p.flush_interval,
            stats=self.stats.store,
            max_pages=max_pages,
            max_log_bytes=max_pages * 4096,
            # ... and make compaction's steps smaller with it, to kill it between two.
            compact_rows=int(os.environ.get("SESSIOND_STORE_COMPACT_ROWS") or 0) or None,
            # Tests slow compaction down with it, to crash the daemon mid-way.
            compact_pause=float(os.environ.get("SESSIOND_STORE_COMPACT_PAUSE") or 0),
            # Compaction's Python in a process of its own, off the GIL the event
            # loop needs: 142k instructions per durable SET in the daemon against
            # 201k with a compactor thread (callgrind, -c 50; docs/persistence.md).
            compact_in="process",
            hook=self.store_hook,
            progress=_still_starting,
        )
        self.store = store
        self.keyspace.attach(store)
        store.start(loop)
        if not p.warm_start:
            return None
        # Called now, before any client is served: from here on the keyspace
        # keeps what clients change from being overwritten by the warm rows.
        return self.keyspace.warm(self.cache.max_sessions)

    async def _warm_start(self, warming: Callable[[], Awaitable[int]]) -> None:
        """The warm start, while serving (Keyspace.warm); cancelled by a stop."""
        started = time.monotonic()
        try:
            warmed = await warming()
        except StoreError as exc:
            log.warning("warm_start_failed", error=str(exc))
            return
        except asyncio.CancelledError:
            log.info(
                "warm_start_stopped",
                sessions=self.keyspace.warmed,
                seconds=round(time.monotonic() - started, 3),
            )
            raise
        log.info(
            "warm_start",
            sessions=warmed,
            seconds=round(time.monotonic() - started, 3),
            store=str(self.config.persistence.path),
        )
        notify("STATUS=serving")

    async def _open_shared_store(self, keyspace: SharedKeyspace) -> int:
        """Connect to PostgreSQL (waiting up to persistence.connect_timeout for
        it), hear the other hosts, warm start."""
        from .store.postgres import PostgresStore  # psycopg is loaded only for it

        p = self.config.persistence
        assert p.dsn is not None
        password = None
        if p.password_file is not None:
            try:
                password = p.password_file.read_text().rstrip("\r\n")
            except OSError as exc:
                raise StoreError(
                    f"persistence.password_file: cannot read {p.password_file}: "
                    f"{exc.strerror or exc}"
                ) from None
        store = PostgresStore(
            p.dsn,
            password=password,
            durability=p.durability,
            flush_interval=p.flush_interval,
            pool_size=p.pool_size,
            timeout=p.timeout,
            heartbeat_interval=p.heartbeat_interval,
            # A row is deleted this long after its deadline: longer than any
            # host takes to write back a renewal of it.
            grace=max(5.0, 2 * p.renew_interval + p.timeout),
            stats=self.stats.store,
            shared_stats=self.stats.shared,
            hook=self.store_hook,
        )
        keyspace.attach_shared(store)
        # A renewal held back is written while a write-back round and its
        # commit still land before the database's deadline.
        keyspace.renew_margin = p.renew_interval + p.timeout
        log.info("store_connecting", dsn=redact_dsn(p.dsn), timeout=p.connect_timeout)
        await store.open(p.connect_timeout)
        if not p.warm_start:
            return 0
        started = time.monotonic()
        try:
            warmed = await keyspace.warm_shared(self.cache.max_sessions)
        except StoreError as exc:
            log.warning("warm_start_failed", error=str(exc))
            return 0
        log.info("warm_start", sessions=warmed, seconds=round(time.monotonic() - started, 3))
        return warmed

    def _store_label(self) -> str:
        p = self.config.persistence
        if self.store is not None:
            return str(p.path)
        if self.shared is not None and p.dsn is not None:
            return redact_dsn(p.dsn)
        return "none"

    async def _close_store(self) -> None:
        """Write back what memory knows that the store may not, close the store."""
        if self.shared is not None:
            await self.shared.shutdown()
        else:
            self.keyspace.close()

    def _request_shutdown(self, signame: str) -> None:
        self._stop(signal=signame)

    def _shutdown_command(self, client: Client) -> None:
        """SHUTDOWN from a client: the stop SIGTERM makes, logged with who asked."""
        self._stop(
            command="SHUTDOWN", client_id=client.id, client_name=client.name, lib=client.lib_name
        )

    def _stop(self, **why: object) -> None:
        if not self.shutdown_event.is_set():
            log.info("shutdown_requested", **why)
            self.shutdown_event.set()

    def _request_upgrade(self) -> None:
        """SIGUSR2: hand over to a new process running the code installed now."""
        if supervised():
            # systemd tracks this process as the service: a successor would be
            # killed with it. The socket unit makes a restart refuse nothing.
            log.warning(
                "upgrade_refused",
                reason="running under systemd: with sessiond.socket, "
                "`systemctl restart sessiond` refuses no connection",
            )
        elif self.shutdown_event.is_set() or self.upgrading:
            log.warning("upgrade_refused", reason="already stopping or upgrading")
        else:
            self.upgrading = True
            self._upgrade = self._spawn(self._hand_over())

    async def _hand_over(self) -> None:
        listener = self.server.listener
        assert listener is not None
        # The same command line, with the interpreter's own options: the code
        # and config on disk now, in the same working directory.
        argv = [sys.executable, *sys.orig_argv[1:]]
        try:
            successor = Successor.spawn(listener, argv, self.server.ownership())
        except OSError as exc:
            self.upgrading = False
            log.error("upgrade_failed", error=f"cannot start a new process: {exc.strerror}")
            return
        log.info("upgrade_started", successor_pid=successor.pid, command=argv)
        try:
            ready = await successor.ready()
        except asyncio.CancelledError:
            successor.kill()
            log.warning("upgrade_cancelled", successor_pid=successor.pid)
            raise
        if not ready:
            status = await successor.exit_status()
            self.upgrading = False
            log.error(
                "upgrade_failed",
                successor_pid=successor.pid,
                exit_status=status,
                error="the new process exited before taking over (its log lines say why); "
                "this one serves on",
            )
            return
        log.info("upgrade_handing_over", successor_pid=successor.pid)
        self.successor = successor
        self._request_shutdown("SIGUSR2")

    async def _shutdown(self) -> int:
        successor = self.successor
        if successor is None and self._upgrade is not None and not self._upgrade.done():
            # Stopped while a successor was starting: it holds nothing yet, and
            # must not take over a socket whose file is removed below.
            self._upgrade.cancel()
            await asyncio.gather(self._upgrade, return_exceptions=True)
        notify("STOPPING=1")
        started = time.monotonic()
        await self.server.shutdown(SHUTDOWN_GRACE, unlink=successor is None)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.reloader.stop()
        if self._gc_phase in gc.callbacks:
            gc.callbacks.remove(self._gc_phase)
        if self.metrics is not None:
            self.metrics.stop()  # before the store: a successor binds the port once told to go
        await self._close_store()
        if successor is not None:
            successor.go()
            if not await successor.serving():
                status = await successor.exit_status()
                log.error(
                    "upgrade_failed",
                    successor_pid=successor.pid,
                    exit_status=status,
                    error="the new process exited after this one had let go: nothing serves "
                    "the socket; start sessiond again",
                )
                return 1
            log.info(
                "upgraded",
                successor_pid=successor.pid,
                seconds=round(time.monotonic() - started, 3),
            )
            return 0
        log.info("stopped", seconds=round(time.monotonic() - started, 3))
        return 0

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_failed", error=repr(task.exception()))

    # ------------------------------------------------------ background jobs

    async def _sweep_forever(self) -> None:
        cache = self.cache
        latency = self.stats.latency
        # A store failing at every sweep (a damaged file) is logged once, then
        # its recovery: not every sweep_interval.
        outage = Outage(self.stats.store, "expire", "store_expiry_recovered")
        while True:
            await asyncio.sleep(self.config.cache.sweep_interval)
            while True:
                started = time.perf_counter()
                cache.sweep(SWEEP_CHUNK)
                latency.record("expire-cycle", time.perf_counter() - started)
                next_deadline = cache.next_deadline()
                if next_deadline is None or next_deadline > time.time():
                    break
                await asyncio.sleep(0)
            started = time.perf_counter()
            try:
                self.keyspace.expire_store(SWEEP_CHUNK)
            except sqlite3.Error as exc:
                outage.failed(str(exc))
            else:
                outage.over()
            latency.record("expire-cycle", time.perf_counter() - started)

    async def _renew_forever(self, keyspace: SharedKeyspace) -> None:
        while True:
            await asyncio.sleep(self.config.persistence.renew_interval)
            keyspace.renew_due()

    async def _idle_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            timeout = self.config.limits.client_idle_timeout
            if timeout > 0:
                closed = self.server.close_idle(timeout)
                if closed:
                    log.info("idle_clients_closed", count=closed, timeout=timeout)

    async def _probe_forever(self) -> None:
        """Every 100 ms: how late this timer fired (the event loop's lag:
        anything that kept the loop from running, another thread holding the
        GIL included), and a sample of INFO's instantaneous rates."""
        loop = asyncio.get_running_loop()
        stats = self.stats
        while True:
            expected = loop.time() + PROBE_INTERVAL
            await asyncio.sleep(PROBE_INTERVAL)
            lag = max(0.0, loop.time() - expected)
            stats.loop_lag.observe(lag)
            stats.latency.record("loop-lag", lag)
            stats.sample_rates(time.perf_counter())

    async def _count_forever(self) -> None:
        """Count the sessions in memory and store together (what DBSIZE
        answers) at start and every COUNT_INTERVAL, off the event loop. Not
        before serving: counting a million stored rows took 1-2 s of start-up
        (issue 18); the gauge is absent until the first count."""
        while True:
            work = self.keyspace.count_ahead()
            try:
                counted = None if work is None else await work
            except StoreError:
                counted = None  # counted and logged as a store error already
            else:
                self.stats.keyspace_sessions = self.keyspace.counts(counted)[0]
            await asyncio.sleep(COUNT_INTERVAL)

    def _gc_phase(self, phase: str, info: dict[str, int]) -> None:
        """gc.callbacks: a collection that paused the loop past the latency
        monitor's threshold is a ``gc`` event; the survivors of a collection
        of the middle generation are frozen (:func:`freeze_survivors`)."""
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        self.stats.latency.record("gc", time.perf_counter() - self._gc_started)
        freeze_survivors(info["generation"])

    async def _watchdog_forever(self, interval: float) -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def _warn_store_beside_config(self, config_path: Path) -> None:
        """The watcher sees every change in the config's directory: a store
        there wakes it on each commit (measured: about a quarter of durable
        write throughput lost)."""
        if self.store is None:
            return
        directory = config_path.absolute().parent.resolve()
        if self.config.persistence.path.absolute().parent.resolve() == directory:
            log.warning(
                "store_in_config_directory",
                directory=str(directory),
                hint="every store write wakes the config watcher; "
                "give persistence.path a directory of its own",
            )

    def apply(self, config: Config) -> None:
        """Apply a validated config between commands (we are on the event loop)."""
        started = time.perf_counter()
        self.config = config
        c = config.cache
        self.cache.default_ttl = c.default_ttl or None
        self.cache.sliding = c.sliding
        evicted = self.cache.resize(c.max_sessions, c.max_memory)
        if evicted:
            log.info("evicted_to_new_bound", evicted=evicted, max_sessions=c.max_sessions)
        self.keyspace.max_value_size = config.limits.max_value_size
        self.pubsub.configure(config.pubsub.notify_keyspace_events)
        self.scripts.time_limit = config.scripting.time_limit
        self.state.configure(config)
        self.server.configure(config)
        logs.configure(config.logging.level, config.logging.format)
        self.stats.latency.record("config-reload", time.perf_counter() - started)


def run(config_path: Path | None) -> int:
    """Run the daemon in the foreground; the process exit code."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        logs.configure()
        log.error("bad_config", source=exc.source or str(config_path), problems=exc.problems)
        return 1
    logs.configure(config.logging.level, config.logging.format)
    chosen = config_path
    if chosen is None and config.source != "built-in defaults":
        chosen = Path(config.source)
    try:
        # Before anything is started: the variables are not for our children.
        predecessor = Predecessor.from_environment()
        inherited = inherited_listener()
    except (ActivationError, UpgradeError) as exc:
        log.error("startup_failed", error=str(exc))
        return 1
    if predecessor is not None:
        if inherited is None:
            log.error("startup_failed", error="upgrade: the old process passed no socket")
            return 1
        log.info("upgrade_waiting", predecessor_pid=predecessor.pid)
        predecessor.ready()
        if not predecessor.wait_go():
            log.warning(
                "upgrade_predecessor_gone",
                predecessor_pid=predecessor.pid,
                hint="it exited without handing over the store; taking over",
            )
    listener = inherited.sock if inherited is not None else None

    async def main() -> int:
        return await App(config, chosen, listener=listener, predecessor=predecessor).run()

    try:
        import uvloop
    except ImportError:
        code = asyncio.run(main())
    else:
        code = uvloop.run(main())
    # The store is closed and every log line written: tearing the interpreter
    # down would only free the session objects one by one (3 s after a
    # million-session load, bench/scale.py), so the process ends here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
