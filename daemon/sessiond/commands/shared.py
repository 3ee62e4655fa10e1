"""The dispatcher over a store several hosts share (:mod:`sessiond.shared`).

It differs from :class:`~.dispatch.Dispatcher` only in what a request needs
before it runs: every key it names (not only those it reads) may be held by
a decision of this host and must wait for it, a command that ``decides``
opens a decision of its own, and EXEC decides when any queued command does.
A request security.disabled_commands refuses prepares nothing. A decision
prepared for a request that is then refused (``MISCONF``, or a command a
reload disabled meanwhile) or never runs is given up, so that its keys are not held forever.

WATCH decides too: it notes each key's version as the database has it, and
EXEC, a decision over its queue's keys and the watched ones, runs nothing (a
nil reply) if one moved, whichever host moved it. A script decides on the
keys it declares and may use no other (:mod:`.scripting`).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from ..keyspace import Prepared
from ..scripting import ScriptEngine
from ..shared import UNKNOWN, SharedKeyspace, Token
from .dispatch import Dispatcher
from .registry import Args, Call, Command, denied_name
from .state import Client, ServerState
from .transactions import Watches


class SharedWatches(Watches):
    """Watches, plus what the database had for each watched key at WATCH."""

    __slots__ = ("shared", "tokens")

    def __init__(self, keyspace: SharedKeyspace) -> None:
        Watches.__init__(self, keyspace)
        self.shared = keyspace
        self.tokens: dict[Client, dict[bytes, Token]] = {}

    def recorded(self, cx: Call, client: Client, keys: Args) -> None:
        tokens = self.tokens.setdefault(client, {})
        token = self.shared.token
        for key in keys:
            if key not in tokens:  # watching a key twice changes nothing
                tokens[key] = token(key)

    def moved(self, cx: Call, client: Client) -> bool:
        tokens = self.tokens.get(client)
        if not tokens:
            return False
        token = self.shared.token
        # UNKNOWN (no decision could be opened, at WATCH or now): the change
        # cannot be ruled out, so the transaction does not run.
        return any(
            then == UNKNOWN or (now := token(key)) == UNKNOWN or now != then
            for key, then in tokens.items()
        )

    def unwatch(self, client: Client) -> None:
        self.tokens.pop(client, None)
        Watches.unwatch(self, client)


class SharedDispatcher(Dispatcher):
    def __init__(
        self, keyspace: SharedKeyspace, state: ServerState, *, scripts: ScriptEngine | None = None
    ) -> None:
        Dispatcher.__init__(self, keyspace, state, scripts=scripts)
        self.shared = keyspace
        self.watches = SharedWatches(keyspace)

    def prepare(
        self, client: Client, cmd: Command | None, args: Args, prepared: Prepared | None
    ) -> Awaitable[Prepared] | None:
        if cmd is None or not client.authenticated:
            return None
        denied = self.state.denied
        if denied and denied_name(denied, cmd, args):
            return None  # refused (NOPERM): nothing decided, read or waited for
        shared = self.shared
        multi = client.multi
        if (
            prepared is None
            and multi is None
            and cmd.load is not None
            and not cmd.write
            and cmd.decides is None
            and cmd.ahead is None
            and shared.serves(cmd.load(args))
        ):
            # A near-cache hit (GET of a session memory holds): what the rest
            # of this method would conclude, at a fifth of its cost.
            return None
        failing = shared.failure is not None
        if multi is not None:
            if not cmd.runs_queued or (failing and any(c.write for c, _ in multi)):
                return None  # queued, or refused whole (MISCONF): nothing to read
            keys: list[bytes] = []
            load: list[bytes] = []
            decides = False
            notifying_new = shared.notifying_new
            for queued, queued_args in multi:
                named = queued.keys(queued_args)
                keys.extend(named)
                if queued.load is not None:
                    load.extend(queued.load(queued_args))
                elif notifying_new and queued.write:
                    load.extend(named)  # the "new" event: does the key exist?
                if queued.decides is not None and queued.decides(queued_args):
                    decides = True
            if client.watched:
                # EXEC compares the watched keys' versions in the database.
                keys.extend(client.watched)
                load.extend(client.watched)
                decides = True
            return shared.prepare_shared(keys, load, decides, None, prepared)
        if failing and cmd.write:
            return None  # refused (MISCONF) before it reads anything
        keys = cmd.keys(args)
        if cmd.load is not None:
            load = cmd.load(args)
        elif cmd.write and shared.notifying_new:
            load = keys  # the "new" event: does the key exist?
        else:
            load = []
        decides = cmd.decides is not None and cmd.decides(args)
        whole = cmd.ahead
        if whole is None:
            return shared.prepare_shared(keys, load, decides, None, prepared)
        return shared.prepare_shared(keys, load, decides, lambda: whole(shared, args), prepared)

    def execute(
        self, client: Client, cmd: Command | None, args: Args, prepared: Prepared | None
    ) -> Any:
        # Set again only if this request runs (a request refused before it
        # runs does not enter the keyspace): what the server asks of it after
        # the reply (lagging, unheld, after_own, read_uncommitted) is of this
        # request, not of the one before it, another connection's maybe.
        shared = self.shared
        shared.decided = False
        shared.own_wrote = False
        shared.uncommitted_read = False
        try:
            return Dispatcher.execute(self, client, cmd, args, prepared)
        finally:
            if prepared is not None and prepared.decision is not None:
                # Prepared, but refused before it ran: nothing to commit.
                self.shared.discard(prepared)
