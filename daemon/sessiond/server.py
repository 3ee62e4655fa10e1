"""The asyncio Unix-socket server: connections, limits, auth, backpressure, shutdown.

Each connection is an :class:`asyncio.Protocol`. Requests parsed from one read
are executed in order and their replies written with one ``write``. A request
that must wait (a read-through load from the store, or a durable commit before
replies may be sent) parks the connection: later requests queue behind it, so
replies always come back in request order.

The server knows nothing of commands or sessions: it asks the dispatcher
(:mod:`sessiond.commands`) what a request needs first and to run it, and the
keyspace (:mod:`sessiond.keyspace`) when replies may leave.

Pub/sub messages reach a connection through :meth:`Connection.push`, which
the connection gives its client: they queue behind the replies the client is
owed and leave at the end of the event loop's iteration, with every other
message queued by then. A subscriber that does not read is dropped at
``limits.max_output_buffer``, as any client that does not read its replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
import socket
import stat
import struct
import sys
import time
from collections import deque
from collections.abc import Awaitable
from pathlib import Path
from time import perf_counter
from typing import Any, cast

import structlog

from .commands import Client, Command, Dispatcher, ServerState
from .commands import errors as command_errors
from .commands.dispatch import subscribed_mode_refuses
from .commands.registry import arity_fits, denied_name
from .commands.state import REPLY_ON, REPLY_SKIP, REPLY_SKIP_ASKED
from .config import Config
from .keyspace import Keyspace, Prepared
from .protocol import QUEUED, Error, ProtocolError, Push, Replies, RequestParser, encode
from .stats import LATENCY_BUCKETS, CommandStats, bucket, slowlog_args
from .store import StoreError

log = structlog.get_logger("sessiond.server")

UNAUTHENTICATED_REQUEST_LIMIT = 16 * 1024  # bytes per request before AUTH
# Linux' socket option number (asm-generic); Python does not name it.
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_NGROUPS_MAX = 65536
_PENDING_PAUSE = 1024  # queued requests before a parked connection stops reading
# Replies queued in a transport before it pauses the connection (asyncio's
# default high-water mark, set explicitly: the output limit counts on it).
WRITE_HIGH_WATER = 64 * 1024
# Connections the kernel queues for a socket sessiond binds itself. asyncio
# calls listen() again on a socket it is given: an inherited one is given the
# largest backlog (systemd's Backlog= default), so that the clients who connect
# while the daemon restarts wait in the queue rather than find it full.
BACKLOG = 1024


def _settled(error: StoreError | None) -> None:
    """What held replies answered with an error already wait for no more."""


def batch_args(commands: list[CommandStats]) -> list[bytes]:
    """A slow log entry's arguments for a batch: how many commands, then each
    command's name and count, most frequent first."""
    counts: dict[str, int] = {}
    for stats in commands:
        counts[stats.name] = counts.get(stats.name, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    args = [b"(batch of %d commands)" % len(commands)]
    args += [f"{name.lower()} x{count}".encode() for name, count in ranked]
    return slowlog_args(args)


class StartupError(Exception):
    """The server cannot start; the message says what and where."""


class Connection(asyncio.Protocol):
    __slots__ = (
        "arrived",
        "busy",
        "client",
        "counted",
        "dispatcher",
        "done",
        "durable",
        "flush_due",
        "held_gen",
        "keyspace",
        "out",
        "own",
        "own_parked",
        "own_waits",
        "parser",
        "paused",
        "pending",
        "persistent",
        "prepared",
        "pushed",
        "server",
        "slow_seen",
        "started",
        "task",
        "timing",
        "transport",
        "write_paused",
        "write_slots",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.dispatcher = server.dispatcher
        self.keyspace = server.keyspace
        self.transport: asyncio.Transport | None = None
        self.pending: deque[list[bytes]] = deque()
        self.out: list[bytes] = []
        self.task: asyncio.Task[None] | None = None
        self.busy = False  # a request waits for the store; later ones queue
        self.paused = False
        self.persistent = self.keyspace.persistent
        self.durable = self.persistent and server.durable_replies
        self.client: Client = server.state.new_client(authenticated=server.state.password is None)
        self.parser = RequestParser(self.request_limit())
        # What the store returned for the next request (read-through).
        self.prepared: Prepared | None = None
        self.write_slots: list[int] = []
        # A shared store: each held reply waits for its own command's commit
        # and gets its outcome (Keyspace.own_outcomes): how many still wait,
        # whether the replies wait for them to be sent, and which holding
        # they belong to (a dropped one's answers are written nowhere).
        self.own = self.keyspace.own_outcomes
        self.own_waits = 0
        self.own_parked = False
        self.held_gen = 0
        self.write_paused = False  # the transport's buffer is above WRITE_HIGH_WATER
        # Bytes of pub/sub messages in ``out`` since it was last written, and
        # whether a write of them is due later in this loop iteration.
        self.pushed = 0
        self.flush_due = False
        # The counters of the commands whose replies are in ``out`` (their
        # latency is counted when ``out`` is written), how many of them have
        # had their event-loop time counted, when the oldest request not yet
        # answered arrived, and when the current stretch of work began.
        self.done: list[CommandStats] = []
        self.counted = 0
        self.arrived = 0.0
        self.started = 0.0
        # After a batch of several commands held the event loop past the slow
        # log's threshold, each command is timed on its own (``timing``) until
        # a batch has no slow command (``slow_seen``): see Server.slow.
        self.timing = False
        self.slow_seen = False

    # -------------------------------------------------------------- events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        server = self.server
        if server.closing:  # accepted as the daemon stopped: the client connects again
            transport.close()
            self.transport = None
            return
        stats = server.state.stats.server
        stats.connections_total += 1
        reason = server.admission(transport)
        if reason is not None:
            stats.rejected[reason] = stats.rejected.get(reason, 0) + 1
            fields: dict[str, Any] = {}
            if reason == "peer_credentials":
                creds = server.peer_credentials(transport)
                if creds is not None:
                    fields = {"gid": creds[2], "groups": list(server.peer_groups(transport))}
            log.warning(
                "connection_rejected",
                reason=reason,
                peer=server.peer_label(transport),
                **fields,
            )
            if reason == "max_clients":
                transport.write(b"-ERR max number of clients reached\r\n")
            transport.close()
            self.transport = None
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        self.client.fd = sock.fileno() if sock is not None else -1
        self.client.peer = server.peer_label(transport)
        self.client.push = self.push
        self.client.disconnect = self.kill
        server.state.clients[self.client.id] = self.client
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return
        self.transport = None
        client = self.client
        client.disconnect = None  # no cycle left between client and connection
        self.server.state.clients.pop(client.id, None)
        self.server.connections.discard(self)
        self.server.forget(self)
        if client.subscriptions:
            self.server.state.pubsub.drop(client)
        if client.monitoring:
            self.server.state.monitors.pop(client.id, None)
        client.push = None
        self._abandon()

    def _abandon(self) -> None:
        """Nobody will be answered any more (killed, broke the protocol, gone):
        drop the queue, and cancel the store read its first request waits on.
        Cancelled now, the task never sees that read's result, even one already
        on its way: it cannot answer a request that is no longer queued."""
        self.pending.clear()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._discard_prepared()

    def _drop_held(self) -> None:
        """The connection closes before the commit its held replies wait for:
        never acknowledge those writes (nor send what was answered after
        them); the replies before the first are sent. The slots go too: the
        commit's callback must not write an error into replies no longer
        there (it raised, and the other replies of that commit were lost)."""
        slots = self.write_slots
        if slots:
            del self.out[slots[0] :]
            slots.clear()
            self.held_gen += 1

    def _discard_prepared(self) -> None:
        # What was read for a request that will never run (a shared store's
        # decision holds keys until it is given up).
        prepared = self.prepared
        if prepared is not None:
            self.prepared = None
            self.keyspace.discard(prepared)

    def kill(self) -> None:
        """CLIENT KILL from another client: close now; what was not sent is dropped."""
        transport = self.transport
        if transport is None:
            return
        client = self.client
        self.server.state.clients.pop(client.id, None)
        if client.subscriptions:  # gone from PUBSUB NUMSUB at once, as from CLIENT LIST
            self.server.state.pubsub.drop(client)
        self._abandon()
        self.out.clear()
        self.done.clear()
        self.counted = 0
        self.write_slots.clear()
        self.held_gen += 1
        transport.abort()

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop reading its requests.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.paused:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        # One clock read per read: for the idle timeout, and as the arrival of
        # the requests in it (docs/operations.md, latency).
        now = perf_counter()
        self.client.last_active = now
        self.server.net.net_input_bytes += len(data)
        if not self.pending and not self.out:
            self.arrived = now  # the oldest request not yet answered arrived now
        self.started = now
        try:
            requests = self.parser.feed(data)
        except ProtocolError as exc:
            # The requests before the bad bytes are answered first, as Redis does.
            self.pending.extend(exc.requests)
            if self.pending and not self.busy:
                self.drain()
            self.protocol_error(str(exc))
            return
        if not requests:
            return
        if not self.persistent and not self.pending:
            self._answer(requests)  # memory only, nothing queued: the common case
            return
        self.pending.extend(requests)
        if not self.busy:
            self.drain()
        elif len(self.pending) > _PENDING_PAUSE and not self.paused and self.transport:
            self.paused = True
            self.transport.pause_reading()

    def protocol_error(self, message: str) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        log.info("protocol_error", client_id=self.client.id, error=message)
        self._drop_held()
        self.flush()
        reply = b"-ERR Protocol error: %b\r\n" % message.encode()
        self.server.net.error_reply("ERR")
        self.server.net.net_output_bytes += len(reply)
        transport.write(reply)
        transport.close()
        self._abandon()

    # ---------------------------------------------------------- execution

    def drain(self) -> None:
        """Execute queued requests until done or one must wait."""
        if self.persistent:
            self._drain_store()
        else:
            requests = list(self.pending)
            self.pending.clear()
            self._answer(requests)

    def _run(self, cmd: Command | None, args: list[bytes], prepared: Prepared | None) -> bytes:
        """One request's encoded reply. Never raises: a bug answers that
        request with an error."""
        client = self.client
        authenticated = client.authenticated
        try:
            reply = self.dispatcher.execute(client, cmd, args, prepared)
            data = encode(reply, client.resp3)
        except Exception:
            log.exception("request_failed", client_id=client.id)
            error = command_errors.internal(args[0].decode("utf-8", "replace"))
            return encode(self.dispatcher.failed(error), False)
        if client.authenticated is not authenticated:
            # AUTH, HELLO or RESET changed who this is: so does the request limit.
            self.parser.set_limit(self.request_limit())
        if client.reply_mode:  # not REPLY_ON: CLIENT REPLY OFF or SKIP
            if self.persistent:
                self.keyspace.unheld(client)
            silenced = self._silenced(client)
            # (P)(UN)SUBSCRIBE confirmations are pushes: sent all the same, as
            # Redis sends them.
            return data if isinstance(reply, (Push, Replies)) else silenced
        # An error reply changed nothing: it need not wait for a commit; but a
        # script that fails may have written first (Redis keeps those writes),
        # and one decided on changes not yet committed waits for them. Nor
        # does QUEUED: the command has written nothing yet, and a failed
        # commit's error in its place would tell the client it was refused
        # while EXEC still runs it.
        if (
            self.persistent
            and cmd is not None
            and cmd.waits_for_commit
            and reply is not QUEUED
            and (self.durable or self.keyspace.lagging())
            and (cmd.may_write or not isinstance(reply, Error) or self.keyspace.read_uncommitted())
        ):
            if self.own:
                return self._hold_for_own(data, not isinstance(reply, Error))
            self.write_slots.append(len(self.out))
        elif (
            self.durable
            and cmd is not None
            and reply is not QUEUED
            # A read's reply; on a local store also an error about keys it
            # names, which shows their state too (WRONGTYPE).
            and (cmd.reads if not isinstance(reply, Error) else cmd.first_key > 0 and not self.own)
            and self.keyspace.uncommitted()
            and self.keyspace.shows_uncommitted(cmd.keys(args) if cmd.first_key else None)
        ):
            # It may show another command's change not yet durable: it
            # waits for that commit and gets its error (Keyspace.after_own).
            if self.own:
                return self._hold_for_own(data, True)
            self.write_slots.append(len(self.out))
        elif self.persistent:
            # No reply waits for what it decided: nothing is kept for one.
            self.keyspace.unheld(client)
        return data

    @staticmethod
    def _silenced(client: Client) -> bytes:
        """CLIENT REPLY OFF or SKIP: this reply is not sent (nor held for a
        commit: no error could be sent in its place either)."""
        mode = client.reply_mode
        if mode == REPLY_SKIP_ASKED:
            client.reply_mode = REPLY_SKIP  # the reply after this one is skipped too
        elif mode == REPLY_SKIP:
            client.reply_mode = REPLY_ON
        return b""

    def _answer(self, requests: list[list[bytes]]) -> None:
        """Memory only: no request ever waits, so run them all and reply once."""
        out = self.out
        done = self.done
        client = self.client
        dispatcher = self.dispatcher
        table = dispatcher.table
        counters = dispatcher.counters
        timing = self.timing
        last: list[bytes] | None = None  # the last command run (the slow log's)
        state = self.server.state
        if state.pause_end:
            # CLIENT PAUSE: requests may have to wait, which this path never does.
            self.pending.extend(requests)
            self._drain_store()
            return
        room = self.output_room()
        for i, args in enumerate(requests):
            cmd = table.get(args[0]) or dispatcher.resolve(args[0])
            data = self._run(cmd, args, None)
            out.append(data)
            if cmd is not None:  # an unknown name costs next to nothing: not timed
                done.append(counters[cmd.index])
                last = args
                if timing:
                    self._count_loop_time(perf_counter(), args)
            if client.close_after_reply:
                break
            room -= len(data)
            if room < 0:
                self.output_exceeded()
                return
            if state.pause_end:
                # CLIENT PAUSE ran: the rest of the batch may have to wait.
                self.pending.extend(requests[i + 1 :])
                self._drain_store()
                return
        self.flush(last)

    def _drain_store(self) -> None:
        pending = self.pending
        out = self.out
        done = self.done
        client = self.client
        dispatcher = self.dispatcher
        timing = self.timing
        last: list[bytes] | None = None  # the last command run (the slow log's)
        room = self.output_room()
        for data in out:  # compiled, sum(map(len, out)) looked up three builtins
            room -= len(data)
        state = self.server.state
        while pending:
            args = pending[0]
            cmd = dispatcher.resolve(args[0])
            if state.pause_end and cmd is not None and self._held(cmd, args):
                # What was prepared for it is given up (a shared store's
                # decision holds its keys, and the commits of the decisions
                # sharing its transaction): it prepares again after the pause.
                # Before the held replies wait for their commits too: the
                # decision may be theirs, handed along a chain of commands
                # on its keys (it would commit only once this request runs).
                self._discard_prepared()
                if self.write_slots:
                    break  # what was written is acknowledged first, then back here
                self._count_loop_time(perf_counter(), last)
                self.flush(last)
                self.busy = True
                self.server.hold(self)
                return
            try:
                work = dispatcher.prepare(client, cmd, args, self.prepared)
            except Exception:
                log.exception("request_failed", client_id=client.id)
                work = None
            if work is not None:
                if self.write_slots and not self.own:  # each waits already, if own
                    self._held_writes_wait_now()
                self._count_loop_time(perf_counter(), last)
                self._wait_then_go_on(work)
                return
            pending.popleft()
            prepared, self.prepared = self.prepared, None
            data = self._run(cmd, args, prepared)
            out.append(data)
            if cmd is not None:  # an unknown name costs next to nothing: not timed
                done.append(dispatcher.counters[cmd.index])
                last = args
                if timing:
                    self._count_loop_time(perf_counter(), args)
            room -= len(data)
            if room < 0:
                self.output_exceeded()
                return
            if client.close_after_reply:
                pending.clear()
                break
        if self.write_slots:
            self._count_loop_time(perf_counter(), last)
            self.busy = True
            if self.own:
                # Each reply waits for its own commit, and gets its error:
                # what the keyspace kept for one wait of them all goes.
                self.keyspace.owner_gone(self.client)
                if self.own_waits:
                    self.own_parked = True
                else:
                    self._durable(None)
                return
            self.keyspace.after_commit(self._durable, self.client)
            return
        self.flush(last)

    def _held(self, cmd: Command, args: list[bytes]) -> bool:
        """Whether CLIENT PAUSE holds this request until it ends: every
        command under ALL, those that may write under WRITE; a request that
        fails before it runs (authentication, arity, a disabled command) is
        answered at once."""
        state = self.server.state
        if not state.paused():
            return False
        client = self.client
        if not client.authenticated and not cmd.noauth:
            return False
        if state.denied and denied_name(state.denied, cmd, args):
            return False  # -NOPERM, at once: Redis checks its ACL before a pause
        if subscribed_mode_refuses(client, cmd):
            return False  # refused in subscribed mode, at once
        if not arity_fits(cmd.arity, len(args)):
            return False
        return state.pause_all or self.dispatcher.may_write(client, cmd, args)

    def _count_loop_time(
        self, now: float, last: list[bytes] | None, attribute: bool = True
    ) -> float:
        """The event-loop time of the commands run since ``started``, shared
        among them (one clock read per batch, not two per command); ``last``
        is the last of them, which the slow log names when it ran alone.
        Returns each one's share; ``attribute=False`` leaves adding it to
        their ``loop_time`` to the caller (flush does it in its own loop)."""
        done = self.done
        counted = self.counted
        end = len(done)
        ran = end - counted
        share = 0.0
        if ran > 0:
            elapsed = now - self.started
            share = elapsed / ran
            server = self.server
            hist = server.loop_time
            hist.counts[bucket(hist.bounds, share)] += ran
            hist.sum += elapsed
            if attribute:
                for i in range(counted, end):
                    done[i].loop_time += share
            self.counted = end
            if elapsed >= server.slow_floor:
                server.slow(self, elapsed, done[counted:end], last)
        self.started = now
        return share

    def _wait_then_go_on(self, work: Awaitable[Prepared]) -> None:
        """Park the queue while ``work`` reads the store for the next request
        (off the event loop), then go on with it."""
        self.busy = True
        self.task = asyncio.ensure_future(self._after(work))

    async def _after(self, work: Awaitable[Prepared]) -> None:
        try:
            self.prepared = await work
            self.started = perf_counter()
        except Exception as exc:
            # The request that needed the read is answered with the error;
            # whatever went wrong, it is answered and the queue goes on.
            self.prepared = None
            args = self.pending.popleft()
            dispatcher = self.dispatcher
            cmd = dispatcher.resolve(args[0])
            if cmd is not None and cmd.runs_queued:
                # EXEC, whose decision could not open: it does not run, and
                # ends the transaction as any EXEC does (left open, the next
                # commands would be queued, a PING answered QUEUED).
                dispatcher.end_transaction(self.client)
            if isinstance(exc, StoreError):
                reply = command_errors.store_failed(exc)
            else:
                log.exception("request_failed", client_id=self.client.id)
                reply = command_errors.internal(args[0].decode("utf-8", "replace"))
            self.out.append(encode(self.dispatcher.failed(reply), self.client.resp3))
            self.started = perf_counter()
        finally:
            self.task = None
            self.busy = False
        self._go_on()

    def _held_writes_wait_now(self) -> None:
        """The replies held so far wait for their writes' commit from now on,
        while the connection parks for its next request: a group commit
        another connection (or that request's decision) starts meanwhile may
        take their writes, and when it fails a shared store under
        ``durability: always`` forgets them. Asked only after the queue is
        drained, these replies then waited for a later commit and were
        answered OK for writes that were gone. A failure answers them with
        the error at once (they wait no more); success leaves them to the wait
        at the end of the queue, which their decisions, if any, need."""
        slots = list(self.write_slots)

        def committed(error: StoreError | None) -> None:
            held = self.write_slots  # cleared if the connection went meanwhile
            if error is None or not held:
                return
            failure = command_errors.store_failed(error)
            reply = encode(failure, self.client.resp3)
            for slot in slots:
                if slot in held:
                    held.remove(slot)
                    self.out[slot] = reply
                    self.dispatcher.failed(failure)
            if not held:
                # No reply waits now: what their commands decided is let go
                # of too, not left to the next reply's wait.
                self.keyspace.after_commit(_settled, self.client)

        self.keyspace.after_writes(committed, self.client)

    def _hold_for_own(self, data: bytes, shown: bool) -> bytes:
        """Hold ``data``, the reply about to go into ``out``, until its own
        command's commit, and make it that commit's error if it failed (a
        shared store: another command's failed commit is not its outcome);
        with ``shown`` (a reply that shows what it read), until every change
        memory may show is (Keyspace.after_own). The replies are sent once
        none of them waits (:meth:`_drain_store`). Returns what goes into
        ``out``: ``data``, or the error's reply if it is known at once (a
        decision that failed before)."""
        slot = len(self.out)
        self.write_slots.append(slot)
        self.own_waits += 1
        gen = self.held_gen
        at_once: list[bytes] = []

        def committed(error: StoreError | None) -> None:
            self.own_waits -= 1
            if gen != self.held_gen:
                return  # its replies were dropped (the connection went)
            if error is not None:
                failure = command_errors.store_failed(error)
                reply = encode(failure, self.client.resp3)
                self.dispatcher.failed(failure)
                if slot < len(self.out):
                    self.out[slot] = reply
                else:  # called back at once: the reply is not in ``out`` yet
                    at_once.append(reply)
            if not self.own_waits and self.own_parked:
                self.own_parked = False
                self._durable(None)

        self.keyspace.after_own(committed, self.client, shown)
        return at_once[0] if at_once else data

    def _durable(self, error: StoreError | None) -> None:
        """The writes whose replies we hold are on disk (or failed): reply."""
        if error is not None:
            failure = command_errors.store_failed(error)
            reply = encode(failure, self.client.resp3)
            for slot in self.write_slots:
                self.out[slot] = reply
                self.dispatcher.failed(failure)
        self.write_slots.clear()
        self.busy = False
        self.started = perf_counter()
        self._go_on()

    def _go_on(self) -> None:
        if self.transport is None:
            self._discard_prepared()
            return
        if self.paused and len(self.pending) <= _PENDING_PAUSE and not self.server.closing:
            self.paused = False
            self.transport.resume_reading()
        # A store read that failed answers its request at once: replies
        # before it may still wait for a commit (drained with nothing queued,
        # they wait for it; flushed, they would be acknowledged before it).
        if self.pending or self.write_slots:
            self.drain()
            # The queue was too long to resume above, and the drain answered all
            # of it without waiting for a commit: nothing else would resume
            # reading (a 20,000-command pipeline hung once commits got fast).
            transport = self.transport
            if (
                self.paused
                and not self.busy
                and transport is not None
                and len(self.pending) <= _PENDING_PAUSE
                and not transport.is_closing()
            ):
                self.paused = False
                transport.resume_reading()
        else:
            self.flush()

    def stop_reading(self) -> None:
        """Read no more requests (the daemon stops): those already read are
        still answered."""
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def output_room(self) -> int:
        """Bytes of replies this client may still have queued: the replies a
        batch builds count before they reach the transport, so a few bytes of
        pipelined GETs of a large value cannot build gigabytes first."""
        transport = self.transport
        if transport is None:
            return self.server.max_output_buffer
        limit = self.server.max_output_buffer
        if not self.write_paused and limit > WRITE_HIGH_WATER:
            # The transport pauses us as soon as its buffer passes the high
            # mark: below it, that mark bounds what is queued (and asking the
            # transport costs a call per batch).
            return limit - WRITE_HIGH_WATER
        return limit - transport.get_write_buffer_size()

    def push(self, data: bytes) -> None:
        """Queue a pub/sub message (a publish or a keyspace event) for this
        client, behind what it is owed: it is written at the end of this loop
        iteration (with the replies of a batch this client is running, or
        once a commit it waits for is done). Never blocks; a client whose
        unread output passes limits.max_output_buffer is dropped."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.out.append(data)
        self.pushed += len(data)
        if self.pushed > self.output_room():
            self.output_exceeded()
            return
        if not self.flush_due:
            self.flush_due = True
            asyncio.get_running_loop().call_soon(self._flush_pushed)

    def _flush_pushed(self) -> None:
        self.flush_due = False
        # Messages wait only behind a reply that waits for a commit: what is
        # queued ahead of them otherwise is answered already (a connection
        # waiting for a store read, or held by CLIENT PAUSE, which never holds
        # an unsent acknowledgement) and goes out with them, or a long pause
        # would pile them up until the client is dropped as one that does not read.
        if not self.write_slots:
            self.flush()

    def output_exceeded(self) -> None:
        """Drop a client whose queued replies passed limits.max_output_buffer."""
        self._too_slow()
        self.client.close_after_reply = True  # a batch it is running stops here
        self.pending.clear()
        self.out.clear()
        self.done.clear()
        self.counted = 0
        self.write_slots.clear()
        self.held_gen += 1
        self.pushed = 0
        if self.transport is not None:
            self.transport.abort()

    def _too_slow(self) -> None:
        log.warning(
            "client_output_buffer_exceeded",
            client_id=self.client.id,
            limit=self.server.max_output_buffer,
            subscriptions=self.client.subscriptions,
        )
        self.server.state.stats.server.output_buffer_disconnections += 1

    def flush(self, last: list[bytes] | None = None) -> None:
        """Write the replies in ``out``; ``last`` is the last command run since
        the batch's time was last counted (see _count_loop_time)."""
        out = self.out
        transport = self.transport
        if not out or transport is None:
            return
        data = b"".join(out) if len(out) > 1 else out[0]
        transport.write(data)
        self.server.net.net_output_bytes += len(data)
        out.clear()
        self.pushed = 0
        done = self.done
        if done:
            # Client-seen latency: from the arrival of the oldest request these
            # replies answer to this write, counted for each of their commands.
            now = perf_counter()
            latency = now - self.arrived
            index = bucket(LATENCY_BUCKETS, latency)
            if self.counted == 0:
                # One stretch of work answered by this write (the common case):
                # its loop time is shared out in the same pass as the latency.
                share = self._count_loop_time(now, last, False)
                for stats in done:
                    hist = stats.latency
                    hist.counts[index] += 1
                    hist.sum += latency
                    stats.loop_time += share
            else:
                self._count_loop_time(now, last)
                for stats in done:
                    hist = stats.latency
                    hist.counts[index] += 1
                    hist.sum += latency
            done.clear()
            self.counted = 0
            self.arrived = now  # what is still queued arrived no later than this write
            if self.timing:
                if not self.slow_seen:
                    self.timing = False  # a batch without a slow command: back to batches
                self.slow_seen = False
        if self.client.close_after_reply:
            transport.close()
        elif (
            self.write_paused or self.server.max_output_buffer <= WRITE_HIGH_WATER
        ) and self.output_room() < 0:
            self._too_slow()
            transport.abort()

    def request_limit(self) -> int:
        """Until it authenticates, a client may only send small requests (Redis
        caps them too): a stranger must not make the daemon buffer megabytes."""
        limit = self.server.max_request_size
        return limit if self.client.authenticated else min(limit, UNAUTHENTICATED_REQUEST_LIMIT)


class Server:
    """Owns the listening socket and the connections; knows nothing of config
    files, metrics or signals (the app wires those in)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        keyspace: Keyspace,
        state: ServerState,
        *,
        durable_replies: bool = False,
    ) -> None:
        """With ``durable_replies`` (and a store), write replies are held
        until the commit that holds them is on disk."""
        self.dispatcher = dispatcher
        self.keyspace = keyspace
        self.state = state
        self.loop_time = state.stats.command_duration
        self.net = state.stats.server
        self.slowlog = state.stats.slowlog
        self.latency = state.stats.latency
        self.slow_floor = math.inf  # the smaller threshold of the two (configure)
        self.durable_replies = durable_replies
        self.connections: set[Connection] = set()
        # Connections whose next request waits for CLIENT PAUSE to end.
        self.held: list[Connection] = []
        self._pause_timer: asyncio.TimerHandle | None = None
        state.on_unpause = self._unpaused
        self._server: asyncio.AbstractServer | None = None
        # The socket's settings need a restart: kept as they were at start.
        self.socket = state.config.socket
        self.path: Path = self.socket.path
        self._socket_identity: tuple[int, int] | None = None
        self.listener: socket.socket | None = None
        self.closing = False  # shutting down: no new connection, no new request
        self.configure(state.config)

    def configure(self, config: Config) -> None:
        """Apply the limits and admission rules of a (re)loaded config: new
        connections and the next requests see them."""
        self.limits = config.limits
        self.security = config.security
        self.max_output_buffer = config.limits.max_output_buffer
        self.max_request_size = config.limits.max_request_size
        slowlog, latency = config.slowlog, config.latency
        self.slowlog.configure(slowlog.log_slower_than, slowlog.max_len)
        self.latency.threshold = latency.monitor_threshold
        floors = [slowlog.log_slower_than] if slowlog.log_slower_than >= 0 else []
        if latency.monitor_threshold > 0:
            floors.append(latency.monitor_threshold)
        self.slow_floor = min(floors, default=math.inf)

    def slow(
        self,
        conn: Connection,
        elapsed: float,
        commands: list[CommandStats],
        last: list[bytes] | None,
    ) -> None:
        """A stretch of ``commands`` held the event loop for ``elapsed``
        seconds, at least one of the two thresholds: a ``command`` stall for
        the latency monitor, and a slow log entry. The entry names the command
        if it ran alone; for a batch of several it names the batch (there is
        one clock read per batch, so which of them was slow is not known), and
        the connection's next batches are timed command by command until one
        has no slow command (docs/operations.md, slow log)."""
        now = time.time()
        self.latency.record("command", elapsed, now)
        slowlog = self.slowlog
        if slowlog.threshold < 0 or elapsed < slowlog.threshold:
            return
        conn.slow_seen = True
        if len(commands) == 1 and last is not None:
            args = slowlog_args(last)
        else:
            conn.timing = True
            args = batch_args(commands)
        client = conn.client
        slowlog.add(elapsed, args, f"{self.state.socket_path}:0", client.name or "", now)

    # ------------------------------------------------------------ lifecycle

    async def start(
        self, listener: socket.socket | None = None, identity: tuple[int, int] | None = None
    ) -> None:
        """Serve on ``listener``, a listening Unix socket passed by systemd or
        by a predecessor (``identity``: the device and inode of its file when
        that file is this daemon's to remove, as it is when a predecessor bound
        it), or else bind ``socket.path``."""
        if listener is None:
            listener = self._bind(self.path)
            backlog = BACKLOG
        else:
            self.path = _bound_path(listener) or self.path
            self._socket_identity = identity
            backlog = socket.SOMAXCONN
        self.listener = listener
        loop = asyncio.get_running_loop()
        extra: dict[str, Any] = {}
        if sys.version_info >= (3, 13) and isinstance(loop, asyncio.BaseEventLoop):
            # asyncio would remove the file at close(): it may be systemd's,
            # or the successor's to serve.
            extra["cleanup_socket"] = False
        try:
            # asyncio closes the socket it serves: it gets a duplicate, and the
            # original stays open to be handed to a successor.
            self._server = await loop.create_unix_server(
                lambda: Connection(self), sock=listener.dup(), backlog=backlog, **extra
            )
        except OSError as exc:
            raise StartupError(
                f"socket.path: cannot listen on {self.path}: {_reason(exc)}"
            ) from None

    def preflight(self) -> None:
        """Before the store is opened, for a daemon that will bind
        ``socket.path``: refuse at once a path whose directory is missing or
        that another live daemon serves. Checked again at the bind; checked
        first because a second daemon started on the first one's config would
        otherwise wait for its store (``store_locked_waiting``) instead of being
        refused, and a mistyped path would create a store before failing."""
        self._check_directory(self.path)
        _stale_socket(self.path)

    @staticmethod
    def _check_directory(path: Path) -> None:
        try:
            if not stat.S_ISDIR(os.stat(path.parent).st_mode):
                raise StartupError(f"socket.path: {path.parent} is not a directory")
        except FileNotFoundError:
            # A mistyped path must not grow directories: say so instead. (Under
            # systemd, RuntimeDirectory= or the socket unit makes /run/sessiond.)
            raise StartupError(
                f"socket.path: directory {path.parent} does not exist; create it "
                "or correct the path"
            ) from None
        except OSError as exc:
            raise StartupError(f"socket.path: cannot use {path.parent}: {_reason(exc)}") from None

    def _bind(self, path: Path) -> socket.socket:
        """Bind and listen on ``path``, with ``socket.mode``."""
        self._check_directory(path)
        self._claim_path(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        except OSError as exc:
            sock.close()
            raise StartupError(f"socket.path: cannot listen on {path}: {_reason(exc)}") from None
        finally:
            os.umask(old_umask)
        try:
            os.chmod(path, self.socket.mode)
            st = os.stat(path)
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            with contextlib.suppress(OSError):
                path.unlink()
            raise StartupError(f"socket.path: cannot listen on {path}: {_reason(exc)}") from None
        self._socket_identity = (st.st_dev, st.st_ino)
        return sock

    def ownership(self) -> tuple[int, int] | None:
        """The device and inode of the socket file, if it is this daemon's to
        remove (it bound it), else ``None`` (systemd's)."""
        return self._socket_identity

    def _claim_path(self, path: Path) -> None:
        """Refuse to steal a live daemon's socket; replace a stale one."""
        if _stale_socket(path):
            log.warning("stale_socket_replaced", path=str(path))
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # ------------------------------------------------------------ CLIENT PAUSE

    def hold(self, conn: Connection) -> None:
        """Park ``conn`` until the pause ends (a timer for its end: CLIENT
        PAUSE may extend it, which the timer finds when it fires)."""
        self.held.append(conn)
        if self._pause_timer is None:
            self._arm_pause_timer()

    def _arm_pause_timer(self) -> None:
        loop = asyncio.get_running_loop()
        # At most an hour at a time: a pause may be set for years.
        delay = min(3600.0, max(0.0, self.state.pause_end - time.monotonic()))
        self._pause_timer = loop.call_later(delay, self._pause_timer_fired)

    def _pause_timer_fired(self) -> None:
        self._pause_timer = None
        if self.state.paused():
            self._arm_pause_timer()  # extended meanwhile
        else:
            self._release()

    def _unpaused(self) -> None:
        """The pause ended (CLIENT UNPAUSE, or it ran out): let the held
        connections go on, after the command that ended it."""
        if self.held:
            asyncio.get_running_loop().call_soon(self._release)

    def _release(self) -> None:
        if self._pause_timer is not None:
            self._pause_timer.cancel()
            self._pause_timer = None
        if self.state.paused():
            # Paused again meanwhile: they stay held, until the new pause's
            # end (the timer was the old one's, which may be an hour away).
            if self.held:
                self._arm_pause_timer()
            return
        held, self.held = self.held, []
        for conn in held:
            conn.busy = False
            conn._go_on()

    def forget(self, conn: Connection) -> None:
        """``conn`` closed: drop what is kept for it."""
        if conn in self.held:
            self.held.remove(conn)
        self.dispatcher.forget(conn.client)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def shutdown(self, grace: float, *, unlink: bool = True) -> None:
        """Stop accepting and reading requests, finish those in flight (up to
        ``grace`` seconds), close every connection and the listening socket.
        Its file is removed if this server made it, unless ``unlink`` is false
        (a successor serves it). A socket passed by systemd stays open there:
        the clients that connect meanwhile wait in its queue."""
        self.stop_accepting()
        self.closing = True
        for conn in self.connections:
            conn.stop_reading()
        self.state.unpause()  # requests held by CLIENT PAUSE finish too
        deadline = time.monotonic() + grace
        while any(c.busy for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            # Past the grace, a reply still waiting for its commit is not sent:
            # that commit may yet fail, or the process be killed first.
            conn._drop_held()
            conn.flush()
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
        if unlink:
            self.remove_socket()
        if self.listener is not None:
            self.listener.close()

    def remove_socket(self) -> None:
        """Unlink the socket file if it is still the one this server created."""
        if self._socket_identity is None:
            return
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._socket_identity:
            self.path.unlink()

    # ------------------------------------------------------- per connection

    def admission(self, transport: asyncio.Transport) -> str | None:
        """Why a new connection must be refused, or ``None`` to admit it."""
        if len(self.connections) >= self.limits.max_clients:
            return "max_clients"
        security = self.security
        if security.allowed_uids or security.allowed_gids:
            creds = self.peer_credentials(transport)
            if creds is None:
                return "peer_credentials"
            _pid, uid, gid = creds
            # A peer is admitted if its uid, its gid or one of its supplementary
            # groups is listed (group membership, as file permissions see it);
            # an empty list admits nobody by itself when the other list is set.
            if uid not in security.allowed_uids and gid not in security.allowed_gids:
                allowed = security.allowed_gids
                if not any(g in allowed for g in self.peer_groups(transport)):
                    return "peer_credentials"
        return None

    @staticmethod
    def peer_groups(transport: asyncio.BaseTransport) -> tuple[int, ...]:
        """The peer's supplementary groups when it connected (SO_PEERGROUPS,
        Linux 4.13+); empty where the kernel cannot tell."""
        sock = transport.get_extra_info("socket")
        if sock is None:
            return ()
        size = 4 * 64
        while True:
            try:
                raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, size)
            except OSError as exc:
                if exc.errno == errno.ERANGE and size < 4 * _NGROUPS_MAX:
                    size *= 32  # more groups than fit: ask again with room for them
                    continue
                return ()
            return struct.unpack(f"{len(raw) // 4}I", raw)

    @staticmethod
    def peer_credentials(transport: asyncio.BaseTransport) -> tuple[int, int, int] | None:
        sock = transport.get_extra_info("socket")
        if sock is None:
            return None
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
        pid, uid, gid = struct.unpack("3i", raw)
        return pid, uid, gid

    def peer_label(self, transport: asyncio.BaseTransport) -> str:
        creds = self.peer_credentials(transport)
        return "unix" if creds is None else f"pid={creds[0]},uid={creds[1]}"

    def close_idle(self, timeout: float) -> int:
        """Close connections idle for longer than ``timeout`` seconds. A
        subscriber is not idle while it is subscribed, as in Redis: it waits
        for messages and need send nothing."""
        cutoff = perf_counter() - timeout
        closed = 0
        for conn in list(self.connections):
            client = conn.client
            if (
                client.last_active < cutoff
                and not client.subscriptions
                and not conn.busy
                and conn.transport
            ):
                conn.transport.close()
                closed += 1
        return closed


def _bound_path(sock: socket.socket) -> Path | None:
    """The file a Unix socket is bound to (``None``: abstract or unnamed)."""
    address = sock.getsockname()
    if isinstance(address, bytes):
        address = os.fsdecode(address)
    if not isinstance(address, str) or not address or address.startswith("\0"):
        return None
    return Path(address)


def _stale_socket(path: Path) -> bool:
    """Whether ``path`` holds a socket file nobody serves (left by a crash);
    ``False`` if nothing is there. Refused: anything else there, or a socket
    another live daemon serves."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"socket.path: {path} exists and is not a socket; not replacing it")
    if _served(path):
        raise StartupError(f"socket.path: another daemon is already serving {path}; stop it first")
    return True


def _served(path: Path) -> bool:
    """Whether a process accepts connections on the socket file ``path``
    (``False``: a stale file left by a crash, or none)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise StartupError(f"socket.path: cannot probe {path}: {_reason(exc)}") from None
        return False
    finally:
        probe.close()
    return True


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
