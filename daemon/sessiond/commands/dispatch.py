"""The dispatcher: one request in, one reply out.

Everything between "these are the request's arguments" and "this is its
reply" that is not the command's own work lives here: the name lookup, the
unknown-command and authentication checks, arity, the commands a RESP2
client may send while it is subscribed, queueing inside MULTI, refusing
writes while the store cannot commit, the per-command counters, and
turning an unexpected exception into an error reply. The server calls
:meth:`Dispatcher.prepare` (what the command needs from the store first) and
:meth:`Dispatcher.execute`; it never looks inside a command. (What a command
costs in time the server measures, per batch of requests: docs/operations.md.)
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import structlog

from ..keyspace import Keyspace, Prepared
from ..protocol import QUEUED, Error
from ..scripting import ScriptEngine
from ..stats import CommandStats
from . import errors
from .registry import REGISTRY, SCRIPTING, Args, Call, Command, arity_fits, denied_name
from .scripting import new_engine, script_may_write
from .server import feed_monitors
from .state import Client, ServerState
from .transactions import Watches

log = structlog.get_logger("sessiond.commands")

# What a RESP2 client may send while it is subscribed to a channel or pattern
# (Redis' list; it has no SSUBSCRIBE / SUNSUBSCRIBE here).
SUBSCRIBED_MODE = frozenset(
    {"SUBSCRIBE", "PSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "PING", "QUIT", "RESET"}
)


def full_name(cmd: Command, args: Args) -> str:
    """The name Redis gives the command ``args`` runs, upper case: a
    container's subcommand is ``CLIENT|LIST``, one it does not have ``NULL``
    (Redis' lookup finds no command), a container alone its own name."""
    if len(args) < 2 or not cmd.subcommands:
        return cmd.name
    sub = args[1].decode("utf-8", "replace").upper()
    return f"{cmd.name}|{sub}" if sub in cmd.subcommands else "NULL"


def subscribed_mode_refuses(client: Client, cmd: Command) -> bool:
    """Whether ``client``, a RESP2 client with a subscription, may not send
    ``cmd`` (Redis' subscribed mode; RESP3 lifts it)."""
    return bool(client.subscriptions) and not client.resp3 and cmd.name not in SUBSCRIBED_MODE


class Dispatcher:
    """Runs requests against one keyspace, counting into ``state.stats``.
    It is the home of what commands share across clients: the daemon's one
    script engine (``scripts``, made from the config unless given) and who
    WATCHes which key (``watches``)."""

    def __init__(
        self, keyspace: Keyspace, state: ServerState, *, scripts: ScriptEngine | None = None
    ) -> None:
        self.keyspace = keyspace
        self.state = state
        self.scripts = new_engine(state.config) if scripts is None else scripts
        self.watches = Watches(keyspace)
        stats = state.stats
        self.unknown = stats.server.unknown
        self.server_stats = stats.server
        # Each command's counters, by Command.index (a list: no lookup by name).
        self.counters: list[CommandStats] = []
        # Lookups try the bytes as sent first; most clients send upper or lower case.
        self.table: dict[bytes, Command] = {}
        for name, cmd in REGISTRY.items():
            self.counters.append(stats.commands.setdefault(name, CommandStats(name)))
            self.table[name.encode()] = cmd
            self.table[name.lower().encode()] = cmd

    def resolve(self, name: bytes) -> Command | None:
        """The command ``name`` (any case) names, or ``None``."""
        cmd = self.table.get(name)
        if cmd is None:
            cmd = self.table.get(name.upper())
        return cmd

    # --------------------------------------------------------------- before

    def prepare(
        self, client: Client, cmd: Command | None, args: Args, prepared: Prepared | None
    ) -> Awaitable[Prepared] | None:
        """What the request needs from the store before it may run (see
        :meth:`Keyspace.prepare`), or ``None`` if it can run now. Inside MULTI
        only EXEC reads, for every queued command at once."""
        if cmd is None or not client.authenticated:
            return None
        if self.state.denied and denied_name(self.state.denied, cmd, args):
            return None  # refused, and nothing read or held for it
        multi = client.multi
        at = cmd.load_one
        if at and multi is None and at < len(args) and self.keyspace.held_in_memory(args[at]):
            # GET of a session memory holds: what the rest would conclude,
            # without building the list of keys.
            return None
        if multi is not None:
            if not cmd.runs_queued:
                return None
            keys = [k for c, a in multi if c.load is not None for k in c.load(a)]
            if self.keyspace.notifying_new:  # as below, for each queued write
                keys += [k for c, a in multi if c.write for k in c.keys(a)]
            if client.watched:
                keys.extend(client.watched)  # EXEC sees whether they still exist
            return self.keyspace.prepare(keys, None, prepared)
        keys = [] if cmd.load is None else cmd.load(args)
        whole = cmd.ahead
        if whole is None:
            if not keys:
                if not (cmd.write and self.keyspace.notifying_new):
                    return None
                # The "new" event needs to know whether a key it writes blind
                # (a plain SET) is only in the store.
                keys = cmd.keys(args)
                if not keys:
                    return None
            return self.keyspace.prepare(keys, None, prepared)
        keyspace = self.keyspace
        return keyspace.prepare(keys, lambda: whole(keyspace, args), prepared)

    # ------------------------------------------------------------------ run

    def execute(
        self, client: Client, cmd: Command | None, args: Args, prepared: Prepared | None
    ) -> Any:
        """Run one request with every check; its reply value."""
        if cmd is None:
            client.last_command = "NULL"  # as Redis shows a command it has not
            self.unknown.calls += 1
            if client.multi is not None:
                client.multi_error = True
            return self.rejected(self.unknown, errors.unknown_command(args))
        # What CLIENT LIST shows as cmd=: set for the request, whatever
        # becomes of it (queued, refused), not by what it runs (EXEC, EVAL).
        client.last_command = full_name(cmd, args) if cmd.subcommands else cmd.name
        if not client.authenticated and not cmd.noauth:
            counter = self.counters[cmd.index]
            counter.calls += 1
            return self.refused(client, cmd, counter, Error(errors.NOAUTH))
        denied = self.state.denied
        if denied:  # one test while security.disabled_commands is empty
            name = denied_name(denied, cmd, args)
            if name:  # before subscribed mode, as Redis checks its ACL
                counter = self.counters[cmd.index]
                counter.calls += 1
                return self.refused(client, cmd, counter, Error("NOPERM " + errors.denied(name)))
        if client.subscriptions and subscribed_mode_refuses(client, cmd):  # one test when not
            return self._refuse_subscribed(client, cmd, args)
        multi = client.multi
        if multi is not None and not cmd.immediate:
            return self._queue(client, cmd, args, multi)
        if cmd.write or (cmd.runs_queued and multi is not None):
            # Asked of writes only: the store's failure is an attribute
            # lookup through its protocol, at every read otherwise.
            failure = self.keyspace.failure
            if failure is not None and (
                cmd.write or (multi is not None and any(c.write for c, _ in multi))
            ):
                counter = self.counters[cmd.index]
                counter.calls += 1
                return self.refused(client, cmd, counter, errors.misconf(failure))
        keyspace = self.keyspace
        cx = Call(keyspace, prepared, client, self.state, self)
        keyspace.enter(cx)
        try:
            return self.call(cx, cmd, args)
        finally:
            keyspace.leave(cx)

    def call(self, cx: Call, cmd: Command, args: Args, *, script: bool = False) -> Any:
        """Run ``cmd`` in ``cx`` (EXEC runs each queued command through here,
        and a script's redis.call, ``script``). MONITOR sees it as Redis shows
        it: once it runs (not refused, queued or discarded), a script's own
        line before its calls' and the others' after the command (a RESET
        that ends monitoring is not shown to its monitor)."""
        counter = self.counters[cmd.index]
        counter.calls += 1
        arity = cmd.arity
        n = len(args)
        # arity_fits, inlined: this runs for every request.
        if (arity > 0 and n != arity) or n < -arity:
            return self.refused(cx.client, cmd, counter, errors.wrong_arity(cmd.name))
        state = self.state
        if state.monitors and cmd.group == SCRIPTING:
            feed_monitors(state, cmd, args, lua=script)
        try:
            reply = cmd.handler(cx, args)
        except Error as exc:
            # Drop the traceback: kept, it would tie this frame and the reply
            # into a reference cycle per error reply, left to the cyclic GC.
            reply = exc.with_traceback(None)
            counter.errors += 1
            self.server_stats.error_reply(reply.message)
        except Exception:
            log.exception("command_failed", command=cmd.name, client_id=cx.client.id)
            reply = errors.internal(cmd.name)
            counter.errors += 1
            self.server_stats.error_reply(reply.message)
        if state.monitors and cmd.group != SCRIPTING:  # one test when nobody monitors
            feed_monitors(state, cmd, args, lua=script)
        return reply

    def rejected(self, counter: CommandStats, error: Error) -> Error:
        """Count ``error`` as the reply to a call refused before it ran."""
        counter.errors += 1
        counter.rejected += 1
        self.server_stats.error_reply(error.message)
        return error

    def refused(self, client: Client, cmd: Command, counter: CommandStats, error: Error) -> Error:
        """``error`` as the reply to ``cmd``, refused before it ran. As Redis'
        rejectCommand: a refused EXEC discards the transaction (and the
        watches), in or out of MULTI, and says why in an EXECABORT; any other
        refusal in MULTI (of a command it runs at once: MULTI, DISCARD, WATCH,
        RESET... with a wrong number of arguments) makes EXEC abort."""
        if cmd.runs_queued:
            client.multi = None
            client.multi_error = False
            self.watches.unwatch(client)
            error = errors.exec_aborted(error)
        elif client.multi is not None:
            client.multi_error = True
        return self.rejected(counter, error)

    def end_transaction(self, client: Client) -> None:
        """``client``'s MULTI, if any, is over without running (its EXEC
        could not be prepared): its queue and watches go."""
        client.multi = None
        client.multi_error = False
        self.watches.unwatch(client)

    def failed(self, error: Error) -> Error:
        """Count an error reply the server makes itself (a store failure)."""
        self.server_stats.error_reply(error.message)
        return error

    def _refuse_subscribed(self, client: Client, cmd: Command, args: Args) -> Error:
        """A RESP2 client in subscribed mode sent a command it may not (Redis
        checks the arity first, and marks a transaction it is in as failed)."""
        counter = self.counters[cmd.index]
        counter.calls += 1
        if client.multi is not None:
            client.multi_error = True
        if not arity_fits(cmd.arity, len(args)):
            return self.refused(client, cmd, counter, errors.wrong_arity(cmd.name))
        name = cmd.name.lower()
        if cmd.subcommands and len(args) > 1:
            sub = args[1].decode("utf-8", "replace").upper()
            if sub in cmd.subcommands:
                name += "|" + sub.lower()
        return self.refused(client, cmd, counter, errors.subscribed_mode(name))

    def may_write(self, client: Client, cmd: Command, args: Args) -> bool:
        """Whether running ``args`` may change the keyspace (CLIENT PAUSE
        WRITE holds such requests): a write, a script that does not declare
        ``no-writes``, EXEC of a transaction with either."""
        if cmd.write:
            return True
        if cmd.may_write:  # PUBLISH, or a script unless it declares no-writes
            return cmd.group != SCRIPTING or script_may_write(cmd, args, self.scripts)
        multi = client.multi
        if cmd.runs_queued and multi is not None:
            return any(self.may_write(client, c, a) for c, a in multi)
        return False

    def forget(self, client: Client) -> None:
        """``client`` is gone: drop what the dispatcher and the keyspace kept
        for it (its WATCHes, its decisions no reply waits for)."""
        self.watches.unwatch(client)
        self.keyspace.owner_gone(client)

    def _queue(
        self, client: Client, cmd: Command, args: Args, multi: list[tuple[Command, Args]]
    ) -> Any:
        if not arity_fits(cmd.arity, len(args)):
            counter = self.counters[cmd.index]
            counter.calls += 1
            client.multi_error = True
            return self.rejected(counter, errors.wrong_arity(cmd.name))
        if "no_multi" in cmd.flags:  # SHUTDOWN: refused when queued, as Redis does
            counter = self.counters[cmd.index]
            counter.calls += 1
            client.multi_error = True
            return self.rejected(counter, Error(errors.NOT_IN_MULTI))
        multi.append((cmd, args))
        return QUEUED
