"""Transactions: MULTI EXEC DISCARD WATCH UNWATCH.

While a client is in MULTI the dispatcher queues its commands (checking their
arity) instead of running them; MULTI, EXEC, DISCARD and WATCH run at once.
EXEC runs the queue in one go: the store was read for every queued command's
keys (and the watched ones) before EXEC started, and no other command runs
until it ends.

WATCH, as in Redis: EXEC answers a nil array and runs nothing if a watched key
was changed by any client (this one included), deleted, flushed or expired
since it was watched. The keyspace tells :class:`Watches` of every change made
through a context's write doors and of every expiry in memory, but only while
someone watches: with no watch anywhere, a write calls nobody. A key that
expires without anyone noticing (a key only the store holds) is caught by EXEC
itself, which checks that every key that existed at WATCH still does.
"""

from __future__ import annotations

from ..keyspace import Keyspace
from ..protocol import NIL_ARRAY, OK, Error
from . import errors
from .registry import TRANSACTIONS, Args, Call, Command, Reply, command, denied_name
from .state import Client

# MONITOR queued in a transaction is refused when EXEC runs it, as Redis does.
_DENIED_IN_EXEC = "ERR MONITOR isn't allowed for DENY BLOCKING client"
_DISABLED_SINCE_QUEUED = (
    "NOPERM ACLs rules changed between the moment the transaction was accumulated "
    "and the EXEC call. This command is no longer allowed for the following reason: "
)


class Watches:
    """Which clients watch which key; told of changes while any does."""

    __slots__ = ("keys", "keyspace", "listener", "listening")

    def __init__(self, keyspace: Keyspace) -> None:
        self.keyspace = keyspace
        self.keys: dict[bytes, list[Client]] = {}
        self.listening = False
        # One object, so that the keyspace can be told to stop calling it.
        self.listener = self.changed

    def watch(self, client: Client, key: bytes, exists: bool) -> None:
        watched = client.watched
        if watched is None:
            watched = client.watched = {}
        if key in watched:
            return  # as Redis: watching a key twice changes nothing
        watched[key] = exists
        clients = self.keys.get(key)
        if clients is None:
            self.keys[key] = [client]
        else:
            clients.append(client)
        if not self.listening:
            self.listening = True
            self.keyspace.listen(self.listener)

    def recorded(self, cx: Call, client: Client, keys: Args) -> None:
        """WATCH of ``keys`` ran in ``cx``: nothing more to note here (a
        shared store notes what the database had, :mod:`.shared`)."""

    def moved(self, cx: Call, client: Client) -> bool:
        """Whether a key ``client`` watches changed in a way memory cannot
        see (on another host): never, on a store of one host."""
        return False

    def unwatch(self, client: Client) -> None:
        """Forget ``client``'s watches (UNWATCH, EXEC, DISCARD, RESET, a
        disconnect); with nobody watching, stop listening."""
        watched = client.watched
        client.watched = None
        client.watch_dirty = False
        if not watched:
            return
        keys = self.keys
        for key in watched:
            clients = keys.get(key)
            if clients is not None:
                clients.remove(client)
                if not clients:
                    del keys[key]
        if not keys and self.listening:
            self.listening = False
            self.keyspace.unlisten(self.listener)

    def changed(self, key: bytes | None, expired: bool) -> None:
        """A command is about to change ``key`` (``None``: every key, a
        FLUSHDB), or it ``expired``. As Redis 7: a key that had already
        expired when it was watched (so did not exist) is no change when
        its removal comes (a read or the sweep notices it)."""
        if key is not None:
            clients = self.keys.get(key)
            if clients is not None:
                for client in clients:
                    watched = client.watched
                    if expired and watched is not None and watched.get(key) is False:
                        continue
                    client.watch_dirty = True
            return
        # A flush touches the watched keys that existed at WATCH (one created
        # since has made its watcher dirty already).
        for clients in self.keys.values():
            for client in clients:
                watched = client.watched
                if watched is not None and any(watched.values()):
                    client.watch_dirty = True


@command(
    "MULTI",
    1,
    "noscript loading stale fast allow_busy",
    group=TRANSACTIONS,
    summary="Start a transaction",
    immediate=True,
)
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
    "noscript loading stale skip_slowlog",
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
    watches = cx.dispatcher.watches
    if client.multi_error:
        client.multi_error = False
        watches.unwatch(client)
        raise Error(errors.EXECABORT)
    watched = client.watched
    if watched is not None:
        # A key that existed at WATCH and is gone now expired (a delete
        # would have marked the client already).
        dirty = (
            client.watch_dirty
            or any(existed and cx.peek(key) is None for key, existed in watched.items())
            or watches.moved(cx, client)
        )
        watches.unwatch(client)  # before the queue runs: its own writes do not count
        if dirty:
            return NIL_ARRAY
    held = cx.hold_time()  # no key expires in the middle of the transaction
    cx.hold_commits()  # and no commit takes half of it
    try:
        return _run_queued(cx, queued)
    finally:
        cx.release_commits()
        if held:
            cx.release_time()


def _run_queued(cx: Call, queued: list[tuple[Command, Args]]) -> list[Reply]:
    """EXEC's replies: each queued command run in turn."""
    dispatcher = cx.dispatcher
    denied = cx.state.denied
    replies: list[Reply] = []
    for cmd, queued_args in queued:
        if cmd.name == "MONITOR":
            replies.append(Error(_DENIED_IN_EXEC))
        elif denied and (name := denied_name(denied, cmd, queued_args)):
            # Disabled by a reload since it was queued: Redis checks its ACLs
            # again at EXEC, and answers in these words.
            counter = dispatcher.counters[cmd.index]
            counter.calls += 1
            reason = errors.denied(name)
            replies.append(dispatcher.rejected(counter, Error(_DISABLED_SINCE_QUEUED + reason)))
        else:
            replies.append(dispatcher.call(cx, cmd, queued_args))
    return replies


@command(
    "DISCARD",
    1,
    "noscript loading stale fast allow_busy",
    group=TRANSACTIONS,
    summary="Drop a transaction",
    immediate=True,
)
def cmd_discard(cx: Call, args: Args) -> Reply:
    client = cx.client
    if client.multi is None:
        raise errors.without_multi("DISCARD")
    client.multi = None
    client.multi_error = False
    cx.dispatcher.watches.unwatch(client)
    return OK


@command(
    "WATCH",
    -2,
    "noscript loading stale fast allow_busy",
    keys=(1, -1, 1),
    # On a shared store, the database's versions of the keys are what EXEC
    # compares: WATCH reads them in a decision.
    decides=True,
    group=TRANSACTIONS,
    summary="Watch keys for a transaction",
    syntax="key ...",
    immediate=True,
)
def cmd_watch(cx: Call, args: Args) -> Reply:
    client = cx.client
    if client.multi is not None:
        # Answered at once and, as in Redis, not an error of the transaction.
        raise Error(errors.WATCH_IN_MULTI)
    watches = cx.dispatcher.watches
    for key in args[1:]:
        watches.watch(client, key, cx.peek(key) is not None)
    watches.recorded(cx, client, args[1:])
    return OK


@command(
    "UNWATCH",
    1,
    "noscript loading stale fast allow_busy",
    group=TRANSACTIONS,
    summary="Forget all watched keys",
)
def cmd_unwatch(cx: Call, args: Args) -> Reply:
    cx.dispatcher.watches.unwatch(cx.client)
    return OK
