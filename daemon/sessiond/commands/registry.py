"""How a command is declared: once, on its handler.

::

    @command("GETDEL", 2, "write fast", keys=(1, 1, 1), group=STRING,
             summary="Get and delete", syntax="key")
    def cmd_getdel(cx: Call, args: Args) -> Reply:
        ...

The declaration holds everything the rest of the daemon needs to know about a
command: its name and Redis arity, flags and key positions (for ``COMMAND``
and for read-through: the keys a command names are read from the store before
it runs), its syntax and summary (``COMMAND DOCS``, which redis-cli's ``help``
shows), and a whole-table read it may need done off the event loop first. The
dispatcher (:mod:`.dispatch`) reads the declarations; adding a command touches
only the module of its family.

A handler takes the per-command :class:`Call` and the request's arguments and
returns a reply value (the types :mod:`sessiond.protocol` encodes), or raises
:class:`~sessiond.protocol.Error` for an error reply. It never awaits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..keyspace import Context, Keyspace, Prepared
from ..protocol import Error
from . import errors
from .state import Client, ServerState
from .util import text

if TYPE_CHECKING:
    from .dispatch import Dispatcher

Args = list[bytes]
Reply = Any  # a value sessiond.protocol.encode accepts
Handler = Callable[["Call", Args], Reply]
KeysOf = Callable[[Args], list[bytes]]
DecidesOf = Callable[[Args], bool]
AheadOf = Callable[[Keyspace, Args], Awaitable[object] | None]

# Groups, as COMMAND reports them (@group).
CONNECTION = "connection"
STRING = "string"
GENERIC = "generic"
SERVER = "server"
SESSION = "session"
HASH = "hash"
SET = "set"
TRANSACTIONS = "transactions"
PUBSUB = "pubsub"
SCRIPTING = "scripting"


class Call(Context):
    """One command's context: the keyspace as it sees it (:class:`Context`),
    the client it runs for and the daemon's state. Made for the command and
    dropped after it."""

    __slots__ = ("client", "dispatcher", "state")

    def __init__(
        self,
        keyspace: Keyspace,
        prepared: Prepared | None,
        client: Client,
        state: ServerState,
        dispatcher: Dispatcher,
    ) -> None:
        Context.__init__(self, keyspace, prepared, client)
        self.client = client
        self.state = state
        self.dispatcher = dispatcher


@dataclass(frozen=True, slots=True)
class Command:
    """A command's declaration (see the module docstring)."""

    name: str
    handler: Handler
    arity: int
    flags: tuple[str, ...]
    first_key: int
    last_key: int
    step: int
    group: str
    summary: str
    syntax: str
    subcommands: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Each subcommand's Redis arity (upper case; the container's name counted).
    subcommand_arity: dict[bytes, int] = field(default_factory=dict)
    # The subcommands Redis flags ``admin`` (upper case), where the container
    # is not: MONITOR does not show them.
    admin_subcommands: frozenset[bytes] = frozenset()
    # The keys to read from the store before the command runs (None: none).
    load: KeysOf | None = None
    # Where the one key ``load`` names is, when it names only that one (GET,
    # TTL, HGET ...), else 0: whether a request need read anything is then
    # one lookup in memory (Dispatcher.prepare).
    load_one: int = 0
    # A whole-table read the command needs first (DBSIZE, INFO keyspace, KEYS),
    # awaited off the event loop; its result is the context's ``ahead``.
    # Inside MULTI it is not read ahead: the handler reads in place.
    ahead: AheadOf | None = None
    # Whether its outcome depends on its keys' current values (SET NX, INCR,
    # EXPIRE ...): on a store shared by several hosts such a command is
    # decided by the database, in a transaction holding its keys (None: never).
    decides: DecidesOf | None = None
    write: bool = False
    # Reads the keyspace (Redis' ``readonly`` flag).
    reads: bool = False
    # Runs even inside MULTI instead of being queued (MULTI, EXEC, DISCARD,
    # QUIT, RESET).
    immediate: bool = False
    # Runs the queued commands (EXEC): refused as a write when any of them
    # writes and the store cannot commit.
    runs_queued: bool = False
    noauth: bool = False
    # Refused inside scripts (Redis' ``noscript`` flag).
    noscript: bool = False
    # May write although not flagged ``write`` (Redis' ``may_replicate``, EVAL):
    # its reply waits for the commit, CLIENT PAUSE WRITE holds it.
    may_write: bool = False
    # Its place in REGISTRY: the dispatcher keeps its counters in a list by it.
    index: int = 0

    @property
    def waits_for_commit(self) -> bool:
        """Whether the reply is held until the store has committed (under
        ``durability: always``): every write, EXEC, and scripts that may write."""
        return self.write or self.runs_queued or self.may_write

    def keys(self, args: Args) -> list[bytes]:
        """The keys ``args`` name (``COMMAND GETKEYS``): at the declared
        positions, or, for a command whose keys have no fixed positions
        (EVAL's numkeys, OBJECT's subcommands), those it reads through."""
        if self.first_key == 0:
            return [] if self.load is None else self.load(args)
        last = self.last_key if self.last_key > 0 else len(args) + self.last_key
        return args[self.first_key : last + 1 : self.step]


REGISTRY: dict[str, Command] = {}
"""Every command by upper-case name, in declaration order. Filled when the
family modules are imported (:mod:`sessiond.commands` imports them all) and
never changed after."""


def _always(args: Args) -> bool:
    return True


def _keys_at(first: int, last: int, step: int) -> KeysOf:
    def load(args: Args) -> list[bytes]:
        end = last if last > 0 else len(args) + last
        return args[first : end + 1 : step]

    return load


def command(
    name: str,
    arity: int,
    flags: str = "",
    *,
    keys: tuple[int, int, int] = (0, 0, 0),
    group: str,
    summary: str,
    syntax: str = "",
    subcommands: dict[str, tuple[int, str, str]] | None = None,
    admin_subcommands: str = "",
    load: KeysOf | bool = True,
    ahead: AheadOf | None = None,
    decides: bool | DecidesOf = False,
    immediate: bool = False,
    runs_queued: bool = False,
) -> Callable[[Handler], Handler]:
    """Declare ``name`` on the handler it decorates. ``arity`` is Redis'
    (negative: at least that many arguments, the name included); ``flags`` are
    Redis' (``write``, ``readonly``, ``fast``, ``noauth``, ``noscript``,
    ``may_replicate``...); ``keys`` is
    (first, last, step) as COMMAND reports it. ``load`` says which keys to
    read through: ``True`` the declared key positions, ``False`` none, or a
    function of the arguments. ``decides`` says whether the outcome depends
    on the current values of the keys (``True``, or a function of the
    arguments): on a store several hosts share, the database decides it.
    ``subcommands`` maps each subcommand of a container command to its
    (arity, syntax, summary), the arity Redis' (:func:`subcommand` checks
    it); ``admin_subcommands`` names those of them Redis flags ``admin``."""
    flag_tuple = tuple(flags.split())
    loader: KeysOf | None
    load_one = 0
    if load is True:
        loader = _keys_at(*keys) if keys[0] else None
        if keys[0] == keys[1] and ahead is None:
            load_one = keys[0]
    elif load is False:
        loader = None
    else:
        loader = load
    decider: DecidesOf | None
    if decides is True:
        decider = _always
    elif decides is False:
        decider = None
    else:
        decider = decides

    declared = subcommands or {}

    def register(handler: Handler) -> Handler:
        if name in REGISTRY:
            raise ValueError(f"command {name} is declared twice")
        REGISTRY[name] = Command(
            name=name,
            handler=handler,
            arity=arity,
            flags=flag_tuple,
            first_key=keys[0],
            last_key=keys[1],
            step=keys[2],
            group=group,
            summary=summary,
            syntax=syntax,
            subcommands={sub: (syntax, doc) for sub, (_, syntax, doc) in declared.items()},
            subcommand_arity={sub.encode(): n for sub, (n, _, _) in declared.items()},
            admin_subcommands=frozenset(sub.encode() for sub in admin_subcommands.split()),
            load=loader,
            load_one=load_one,
            ahead=ahead,
            decides=decider,
            write="write" in flag_tuple,
            reads="readonly" in flag_tuple,
            immediate=immediate,
            runs_queued=runs_queued,
            noauth="noauth" in flag_tuple,
            noscript="noscript" in flag_tuple,
            may_write="may_replicate" in flag_tuple,
            index=len(REGISTRY),
        )
        return handler

    return register


def arity_fits(arity: int, n: int) -> bool:
    """Whether ``n`` arguments (the command's name counted) suit a Redis
    ``arity``: exactly that many when positive, at least ``-arity`` when not."""
    return n == arity if arity > 0 else n >= -arity


def denied_name(denied: dict[str, frozenset[bytes] | None], cmd: Command, args: Args) -> str:
    """The name security.disabled_commands forbids ``args`` under (``denied``:
    ``ServerState.denied``), lower case as Redis' ACL shows it: ``flushall``,
    ``config|set``; ``""`` if it does not. A request Redis refuses before
    its ACL (a wrong number of arguments, an unknown subcommand) is not
    forbidden here: it gets that error where it would without the list."""
    if cmd.name not in denied:
        return ""
    n = len(args)
    if not arity_fits(cmd.arity, n):
        return ""
    subs = denied[cmd.name]
    if n < 2 or not cmd.subcommands:
        return cmd.name.lower() if subs is None else ""
    if subcommand_error(cmd, args) is not None:
        return ""
    sub = args[1].upper()
    if subs is not None and sub not in subs:
        return ""
    return f"{cmd.name}|{sub.decode()}".lower()


def subcommand_error(cmd: Command, args: Args) -> Error | None:
    """Why Redis 7 refuses ``args`` before running container ``cmd``: a
    subcommand it does not have, or a wrong number of arguments for it
    (``None``: it runs)."""
    sub = args[1].upper()
    arity = cmd.subcommand_arity.get(sub)
    if arity is None:
        return errors.no_such_subcommand(text(args[1]), cmd.name)
    if not arity_fits(arity, len(args)):
        return errors.wrong_arity(f"{cmd.name}|{text(sub)}")
    return None


def subcommand(args: Args, container: str) -> bytes:
    """The upper-case subcommand of container command ``container``
    (``OBJECT ENCODING``), checked as Redis 7 checks it before the command
    runs (:func:`subcommand_error`)."""
    error = subcommand_error(REGISTRY[container], args)
    if error is not None:
        raise error
    return args[1].upper()
