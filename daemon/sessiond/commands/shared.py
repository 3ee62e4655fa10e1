"""The dispatcher over a store several hosts share (:mod:`sessiond.shared`).

It differs from :class:`~.dispatch.Dispatcher` only in what a request needs
before it runs: every key it names (not only those it reads) may be held by
a decision of this host and must wait for it, a command that ``decides``
opens a decision of its own, and EXEC decides when any queued command does.
A decision prepared for a request that is then refused (``MISCONF``) or
never runs is given up, so that its keys are not held forever.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from ..keyspace import Prepared
from ..scripting import ScriptEngine
from ..shared import SharedKeyspace
from .dispatch import Dispatcher
from .registry import Args, Command
from .state import Client, ServerState


class SharedDispatcher(Dispatcher):
    def __init__(
        self, keyspace: SharedKeyspace, state: ServerState, *, scripts: ScriptEngine | None = None
    ) -> None:
        Dispatcher.__init__(self, keyspace, state, scripts=scripts)
        self.shared = keyspace

    def prepare(
        self, client: Client, cmd: Command | None, args: Args, prepared: Prepared | None
    ) -> Awaitable[Prepared] | None:
        if cmd is None or not client.authenticated:
            return None
        shared = self.shared
        multi = client.multi
        failing = shared.failure is not None
        if multi is not None:
            if not cmd.runs_queued or (failing and any(c.write for c, _ in multi)):
                return None  # queued, or refused whole (MISCONF): nothing to read
            keys: list[bytes] = []
            load: list[bytes] = []
            decides = False
            for queued, queued_args in multi:
                keys.extend(queued.keys(queued_args))
                if queued.load is not None:
                    load.extend(queued.load(queued_args))
                if queued.decides is not None and queued.decides(queued_args):
                    decides = True
            return shared.prepare_shared(keys, load, decides, None, prepared)
        if failing and cmd.write:
            return None  # refused (MISCONF) before it reads anything
        keys = cmd.keys(args)
        load = [] if cmd.load is None else cmd.load(args)
        decides = cmd.decides is not None and cmd.decides(args)
        whole = cmd.ahead
        if whole is None:
            return shared.prepare_shared(keys, load, decides, None, prepared)
        return shared.prepare_shared(keys, load, decides, lambda: whole(shared, args), prepared)

    def execute(
        self, client: Client, cmd: Command | None, args: Args, prepared: Prepared | None
    ) -> Any:
        try:
            return Dispatcher.execute(self, client, cmd, args, prepared)
        finally:
            if prepared is not None and prepared.decision is not None:
                # Prepared, but refused before it ran: nothing to commit.
                self.shared.discard(prepared)
