"""Connection commands: PING ECHO QUIT AUTH HELLO RESET SELECT CLIENT."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable

from .. import REDIS_COMPAT_VERSION, __version__
from ..keyspace import Keyspace
from ..protocol import OK, PONG, Error, Status, Verbatim
from . import errors
from .registry import CONNECTION, GENERIC, Args, Call, Reply, command, subcommand
from .state import REPLY_OFF, REPLY_ON, REPLY_SKIP_ASKED, Client, ServerState
from .util import (
    MAX_INT64,
    help_reply,
    int_arg,
    parse_int64,
    positive_arg,
    text,
    timeout_ms,
)


@command("PING", -1, "fast", group=CONNECTION, summary="Ping the server", syntax="[message]")
def cmd_ping(cx: Call, args: Args) -> Reply:
    if len(args) > 2:
        raise errors.wrong_arity("ping")
    if cx.client.subscriptions and not cx.client.resp3:  # Redis' subscribed-mode form
        return [b"pong", b"" if len(args) == 1 else args[1]]
    return PONG if len(args) == 1 else args[1]


@command("ECHO", 2, "fast", group=CONNECTION, summary="Echo the given string", syntax="message")
def cmd_echo(cx: Call, args: Args) -> Reply:
    return args[1]


@command(
    "QUIT",
    -1,
    "noauth noscript fast",
    group=CONNECTION,
    summary="Close the connection",
    immediate=True,
)
def cmd_quit(cx: Call, args: Args) -> Reply:
    cx.client.close_after_reply = True
    return OK


def _check_password(state: ServerState, user: bytes, password: bytes) -> None:
    """Only the ``default`` user exists; with no password set it accepts any
    password, as Redis' ``nopass`` default user does."""
    if user != b"default":
        raise Error(errors.WRONGPASS)
    expected = state.password
    if expected is not None and not hmac.compare_digest(password, expected.encode()):
        raise Error(errors.WRONGPASS)


@command(
    "AUTH",
    -2,
    "noscript noauth fast",
    group=CONNECTION,
    summary="Authenticate",
    syntax="[username] password",
)
def cmd_auth(cx: Call, args: Args) -> Reply:
    if len(args) == 2:
        if cx.state.password is None:
            raise Error(
                "ERR AUTH <password> called without any password configured for the default "
                "user. Are you sure your configuration is correct?"
            )
        user, password = b"default", args[1]
    elif len(args) == 3:
        user, password = args[1], args[2]
    else:
        raise errors.syntax()
    _check_password(cx.state, user, password)
    cx.client.authenticated = True
    return OK


@command(
    "HELLO",
    -1,
    "noscript noauth fast",
    group=CONNECTION,
    summary="Handshake",
    syntax="[protover [AUTH username password] [SETNAME clientname]]",
)
def cmd_hello(cx: Call, args: Args) -> Reply:
    client = cx.client
    resp3 = client.resp3
    i = 1
    if len(args) > 1:
        try:
            version = int(args[1])
        except ValueError:
            raise Error("ERR Protocol version is not an integer or out of range") from None
        if version not in (2, 3):
            raise Error("NOPROTO unsupported protocol version")
        resp3 = version == 3
        i = 2
    name: str | None = None
    while i < len(args):
        opt = args[i].upper()
        if opt == b"AUTH" and i + 2 < len(args):
            _check_password(cx.state, args[i + 1], args[i + 2])
            client.authenticated = True
            i += 3
        elif opt == b"SETNAME" and i + 1 < len(args):
            name = _client_name(args[i + 1])
            i += 2
        else:
            raise Error(f"ERR Syntax error in HELLO option '{text(args[i])}'")
    if not client.authenticated:
        raise Error("NOAUTH HELLO must be called with the client already authenticated, "
                    "otherwise the HELLO <proto> AUTH <user> <pass> option can be used to "
                    "authenticate the client and select the RESP protocol version at the same "
                    "time")  # fmt: skip
    if name is not None:
        client.name = name or None
    client.resp3 = resp3
    return {
        "server": "redis",
        "version": REDIS_COMPAT_VERSION,
        "sessiond_version": __version__,
        "proto": 3 if resp3 else 2,
        "id": client.id,
        "mode": "standalone",
        "role": "master",
        "modules": [],
    }


@command(
    "RESET",
    1,
    "noscript noauth fast",
    group=CONNECTION,
    summary="Reset the connection",
    immediate=True,
)
def cmd_reset(cx: Call, args: Args) -> Reply:
    client = cx.client
    client.multi = None
    client.multi_error = False
    cx.state.pubsub.drop(client)
    cx.dispatcher.watches.unwatch(client)
    if client.monitoring:  # RESET ends MONITOR, as in Redis
        client.monitoring = False
        cx.state.monitors.pop(client.id, None)
    client.reply_mode = REPLY_ON
    client.resp3 = False
    client.name = None
    client.authenticated = cx.state.password is None
    return Status("RESET")


@command(
    "WAIT",
    3,
    "noscript",
    group=GENERIC,
    summary="Wait for replicas: there are none, 0 at once",
    syntax="numreplicas timeout",
)
def cmd_wait(cx: Call, args: Args) -> Reply:
    # No replica will ever acknowledge: Redis would answer 0 once the timeout
    # ran out (never, for 0); the answer cannot change, so it is given now.
    if parse_int64(args[1]) is None:
        raise Error(errors.NOT_INT)
    timeout_ms(args[2])
    return 0


def _waitaof_ahead(keyspace: Keyspace, args: Args) -> Awaitable[object] | None:
    """WAITAOF's wait for the commit of every change made before it (of this
    client's and the others'), once its arguments are good (else the handler
    answers their error at once)."""
    if not keyspace.persistent or len(args) != 4:
        return None
    try:
        numlocal = positive_arg(args[1])
        positive_arg(args[2])
        ms = timeout_ms(args[3])
    except Error:
        return None
    if not numlocal:
        return None  # nothing to wait for: the handler says what holds now
    return keyspace.durable(ms / 1000 if ms else None)


@command(
    "WAITAOF",
    4,
    "noscript",
    group=GENERIC,
    summary="Wait until this client's writes are durable in the store",
    syntax="numlocal numreplicas timeout",
    ahead=_waitaof_ahead,
)
def cmd_waitaof(cx: Call, args: Args) -> Reply:
    # [1, 0] once every write made before it is committed to the store (at
    # once under durability: always, where each write's reply already waited
    # for that); [0, 0] if the commit failed or the timeout came first. Where
    # it cannot or need not wait (inside MULTI; numlocal 0) it answers at once
    # whether that holds already, as Redis does: inside MULTI not for the
    # transaction's own writes before it, not yet committed. No replica ever
    # acknowledges: a numreplicas above 0 does not make it wait longer (as WAIT).
    numlocal = positive_arg(args[1])
    positive_arg(args[2])
    timeout_ms(args[3])
    if not cx.keyspace.persistent:
        if numlocal:
            raise Error(
                "ERR WAITAOF cannot be used when numlocal is set but appendonly is disabled."
            )
        return [0, 0]
    durable = cx.ahead  # None with numlocal 0, and inside MULTI (nothing read ahead)
    return [durable if isinstance(durable, int) else int(cx.keyspace.durable_now()), 0]


@command("SELECT", 2, "fast", group=CONNECTION, summary="Select database 0", syntax="index")
def cmd_select(cx: Call, args: Args) -> Reply:
    if int_arg(args[1]) != 0:
        raise Error(errors.DB_INDEX)
    return OK


def _client_name(arg: bytes) -> str:
    if any(c <= 32 or c > 126 for c in arg):
        raise Error(errors.NAME_CHARS)
    return text(arg)


_CLIENT_HELP = [
    "GETNAME",
    "    Return the name of the current connection.",
    "ID",
    "    Return the ID of the current connection.",
    "INFO",
    "    Return information about the current client connection.",
    "KILL <ip:port>",
    "    Kill connection made from <ip:port>.",
    "KILL <option> <value> [<option> <value> [...]]",
    "    Kill connections. Options are:",
    "    * ADDR (<ip:port>|<unixsocket>:0)",
    "      Kill connections made from the specified address",
    "    * LADDR (<ip:port>|<unixsocket>:0)",
    "      Kill connections made to specified local address",
    "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)",
    "      Kill connections by type.",
    "    * USER <username>",
    "      Kill connections authenticated by <username>.",
    "    * SKIPME (YES|NO)",
    "      Skip killing current connection (default: yes).",
    "LIST [options ...]",
    "    Return information about client connections. Options:",
    "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)",
    "      Return clients of specified type.",
    "UNPAUSE",
    "    Stop the current client pause, resuming traffic.",
    "PAUSE <timeout> [WRITE|ALL]",
    "    Suspend all, or just write, clients for <timeout> milliseconds.",
    "REPLY (ON|OFF|SKIP)",
    "    Control the replies sent to the current connection.",
    "SETNAME <name>",
    "    Assign the name <name> to the current connection.",
    "SETINFO <option> <value>",
    "    Set client meta attr. Options are:",
    "    * LIB-NAME: the client lib name.",
    "    * LIB-VER: the client lib version.",
    "NO-EVICT (ON|OFF)",
    "    Protect current client connection from eviction.",
    "NO-TOUCH (ON|OFF)",
    "    Will not touch LRU/LFU stats when this mode is on.",
]

# CLIENT LIST/KILL TYPE names (Redis' getClientTypeByName); a sessiond
# client is a pubsub one while it is subscribed, else a normal one.
_CLIENT_TYPES = (b"normal", b"slave", b"replica", b"pubsub", b"master")


def _client_type(client: Client) -> bytes:
    """Redis' getClientType for a client that is never a replica or master."""
    return b"pubsub" if client.subscriptions else b"normal"


@command(
    "CLIENT",
    -2,
    "noscript",
    group=CONNECTION,
    summary="Client connection commands",
    admin_subcommands="KILL LIST PAUSE UNPAUSE NO-EVICT",
    subcommands={
        "SETNAME": (3, "connection-name", "Set the current connection name"),
        "GETNAME": (2, "", "Return the name of the current connection"),
        "ID": (2, "", "Return the client ID of the current connection"),
        "INFO": (2, "", "Information about the current connection"),
        "LIST": (-2, "[TYPE NORMAL] [ID client-id ...]", "The list of client connections"),
        "SETINFO": (4, "LIB-NAME libname | LIB-VER libver", "Set client library name or version"),
        "NO-EVICT": (3, "ON | OFF", "Accepted and ignored"),
        "NO-TOUCH": (3, "ON | OFF", "Accepted and ignored"),
        "KILL": (
            -3,
            "addr | (ID client-id | TYPE type | ADDR addr | LADDR laddr | USER username "
            "| SKIPME skipme) ...",
            "Close client connections",
        ),
        "PAUSE": (-3, "timeout [WRITE | ALL]", "Hold clients' commands for a while"),
        "UNPAUSE": (2, "", "End a CLIENT PAUSE"),
        "REPLY": (3, "ON | OFF | SKIP", "Whether replies are sent to this connection"),
        "HELP": (2, "", "Show this help"),
    },
)
def cmd_client(cx: Call, args: Args) -> Reply:
    client = cx.client
    sub = subcommand(args, "CLIENT")
    if sub == b"SETNAME":
        client.name = _client_name(args[2]) or None
        return OK
    if sub == b"GETNAME":
        return None if client.name is None else client.name.encode()
    if sub == b"ID":
        return client.id
    if sub == b"SETINFO":
        attr = args[2].upper()
        if attr not in (b"LIB-NAME", b"LIB-VER"):
            raise Error(f"ERR Unrecognized option '{text(args[2])}'")
        if any(c <= 32 or c > 126 for c in args[3]):
            raise Error(
                f"ERR {text(args[2])} cannot contain spaces, newlines or special characters."
            )
        if attr == b"LIB-NAME":
            client.lib_name = text(args[3])
        else:
            client.lib_ver = text(args[3])
        return OK
    if sub == b"INFO":
        return Verbatim(client.info_line(cx.state.socket_path) + "\n")
    if sub == b"LIST":
        return _client_list(cx, args)
    if sub == b"NO-EVICT" or sub == b"NO-TOUCH":
        return OK
    if sub == b"KILL":
        return _client_kill(cx, args)
    if sub == b"PAUSE":
        return _client_pause(cx, args)
    if sub == b"UNPAUSE":
        cx.state.unpause()
        return OK
    if sub == b"REPLY":
        mode = args[2].upper()
        if mode == b"ON":
            client.reply_mode = REPLY_ON
            return OK
        if mode == b"OFF":
            client.reply_mode = REPLY_OFF
            return OK  # not sent: the server drops it
        if mode == b"SKIP":
            if client.reply_mode != REPLY_OFF:
                client.reply_mode = REPLY_SKIP_ASKED
            return OK  # not sent either
        raise errors.syntax()
    return help_reply("CLIENT", _CLIENT_HELP)


def _client_list(cx: Call, args: Args) -> Reply:
    ids: set[int] | None = None
    kind: bytes | None = None
    if len(args) == 4 and args[2].upper() == b"TYPE":
        kind = args[3].lower()
        if kind not in _CLIENT_TYPES:
            raise Error(f"ERR Unknown client type '{text(args[3])}'")
    elif len(args) >= 4 and args[2].upper() == b"ID":
        ids = {int_arg(a, "ERR Invalid client ID") for a in args[3:]}
    elif len(args) != 2:
        raise errors.syntax()
    path = cx.state.socket_path
    lines = [
        c.info_line(path) + "\n"
        for c in cx.state.clients.values()
        if (ids is None or c.id in ids) and (kind is None or _client_type(c) == kind)
    ]
    return Verbatim("".join(lines))


def _client_kill(cx: Call, args: Args) -> Reply:
    """CLIENT KILL, as Redis 7.2 filters on a Unix socket: every client's
    ``addr`` and ``laddr`` is ``<socket path>:0`` and its user ``default``."""
    me = cx.client
    address = f"{cx.state.socket_path}:0".encode()
    old_form = len(args) == 3
    addr: bytes | None = None
    laddr: bytes | None = None
    client_id = 0
    kind: bytes | None = None
    skip_me = not old_form  # with the old form, a client may kill itself
    if old_form:
        addr = args[2]
    else:
        i = 2
        while i < len(args):
            opt = args[i].upper()
            if i + 1 >= len(args):
                raise errors.syntax()
            value = args[i + 1]
            if opt == b"ID":
                parsed = parse_int64(value)
                if parsed is None or not 1 <= parsed <= MAX_INT64:
                    raise Error("ERR client-id should be greater than 0")
                client_id = parsed
            elif opt == b"TYPE":
                kind = value.lower()
                if kind not in _CLIENT_TYPES:
                    raise Error(f"ERR Unknown client type '{text(value)}'")
            elif opt == b"ADDR":
                addr = value
            elif opt == b"LADDR":
                laddr = value
            elif opt == b"USER":
                if value != b"default":
                    raise Error(f"ERR No such user '{text(value)}'")
            elif opt == b"SKIPME":
                flag = value.lower()
                if flag not in (b"yes", b"no"):
                    raise errors.syntax()
                skip_me = flag == b"yes"
            else:
                raise errors.syntax()
            i += 2
    victims: list[Client] = []
    for other in cx.state.clients.values():
        if addr is not None and addr != address:
            continue
        if laddr is not None and laddr != address:
            continue
        if kind is not None and _client_type(other) != kind:
            continue
        if client_id and other.id != client_id:
            continue
        if other is me and skip_me:
            continue
        victims.append(other)
    for other in victims:
        if other is me:
            me.close_after_reply = True  # after this reply, as Redis does
        elif other.disconnect is not None:
            other.disconnect()
    if old_form:
        if not victims:
            raise Error("ERR No such client")
        return OK
    return len(victims)


def _client_pause(cx: Call, args: Args) -> Reply:
    every_command = True
    if len(args) == 4:
        mode = args[3].upper()
        if mode == b"WRITE":
            every_command = False
        elif mode != b"ALL":
            raise Error("ERR CLIENT PAUSE mode must be WRITE or ALL")
    elif len(args) > 4:
        raise errors.syntax()
    cx.state.pause(timeout_ms(args[2]) / 1000.0, every_command=every_command)
    return OK
