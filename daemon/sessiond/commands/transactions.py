"""Transactions: MULTI EXEC DISCARD.

While a client is in MULTI the dispatcher queues its commands (checking their
arity) instead of running them; these three run at once. EXEC runs the queue
in one go: the store was read for every queued command's keys before EXEC
started, and no other command runs until it ends.
"""

from __future__ import annotations

from ..protocol import OK, Error
from . import errors
from .registry import TRANSACTIONS, Args, Call, Reply, command


@command("MULTI", 1, "fast", group=TRANSACTIONS, summary="Start a transaction", immediate=True)
def cmd_multi(cx: Call, args: Args) -> Reply:
    client = cx.client
    if client.multi is not None:
        raise Error(errors.NESTED_MULTI)
    client.multi = []
    client.multi_error = False
    return OK


@command(
    "EXEC",
    1,
    group=TRANSACTIONS,
    summary="Run a transaction",
    immediate=True,
    runs_queued=True,
)
def cmd_exec(cx: Call, args: Args) -> Reply:
    client = cx.client
    queued = client.multi
    if queued is None:
        raise errors.without_multi("EXEC")
    client.multi = None
    if client.multi_error:
        client.multi_error = False
        raise Error(errors.EXECABORT)
    call = cx.dispatcher.call
    return [call(cx, cmd, queued_args) for cmd, queued_args in queued]


@command("DISCARD", 1, "fast", group=TRANSACTIONS, summary="Drop a transaction", immediate=True)
def cmd_discard(cx: Call, args: Args) -> Reply:
    client = cx.client
    if client.multi is None:
        raise errors.without_multi("DISCARD")
    client.multi = None
    client.multi_error = False
    return OK
