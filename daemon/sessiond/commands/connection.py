"""Connection commands: PING ECHO QUIT AUTH HELLO RESET SELECT CLIENT."""

from __future__ import annotations

import hmac

from .. import REDIS_COMPAT_VERSION, __version__
from ..protocol import OK, PONG, Error, Status, Verbatim
from . import errors
from .registry import CONNECTION, Args, Call, Reply, command
from .state import ServerState
from .util import int_arg, text


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
    "QUIT", -1, "noauth fast", group=CONNECTION, summary="Close the connection", immediate=True
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
    "noauth fast",
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
    "noauth fast",
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
    "RESET", 1, "noauth fast", group=CONNECTION, summary="Reset the connection", immediate=True
)
def cmd_reset(cx: Call, args: Args) -> Reply:
    client = cx.client
    client.multi = None
    client.multi_error = False
    cx.state.pubsub.drop(client)
    client.resp3 = False
    client.name = None
    client.authenticated = cx.state.password is None
    return Status("RESET")


@command("SELECT", 2, "fast", group=CONNECTION, summary="Select database 0", syntax="index")
def cmd_select(cx: Call, args: Args) -> Reply:
    if int_arg(args[1]) != 0:
        raise Error(errors.DB_INDEX)
    return OK


def _client_name(arg: bytes) -> str:
    if any(c <= 32 or c > 126 for c in arg):
        raise Error(errors.NAME_CHARS)
    return text(arg)


@command(
    "CLIENT",
    -2,
    group=CONNECTION,
    summary="Client connection commands",
    subcommands={
        "SETNAME": ("connection-name", "Set the current connection name"),
        "GETNAME": ("", "Return the name of the current connection"),
        "ID": ("", "Return the client ID of the current connection"),
        "INFO": ("", "Information about the current connection"),
        "LIST": ("[TYPE NORMAL] [ID client-id ...]", "The list of client connections"),
        "SETINFO": ("LIB-NAME libname | LIB-VER libver", "Set client library name or version"),
        "NO-EVICT": ("ON | OFF", "Accepted and ignored"),
        "NO-TOUCH": ("ON | OFF", "Accepted and ignored"),
    },
)
def cmd_client(cx: Call, args: Args) -> Reply:
    client = cx.client
    sub = args[1].upper()
    if sub == b"SETNAME" and len(args) == 3:
        client.name = _client_name(args[2]) or None
        return OK
    if sub == b"GETNAME" and len(args) == 2:
        return None if client.name is None else client.name.encode()
    if sub == b"ID" and len(args) == 2:
        return client.id
    if sub == b"SETINFO" and len(args) == 4:
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
    if sub == b"INFO" and len(args) == 2:
        return Verbatim(client.info_line(cx.state.socket_path) + "\n")
    if sub == b"LIST":
        ids: set[int] | None = None
        if len(args) >= 4 and args[2].upper() == b"ID":
            ids = {int_arg(a) for a in args[3:]}
        elif len(args) == 4 and args[2].upper() == b"TYPE":
            if args[3].lower() not in (b"normal",):
                return Verbatim("")
        elif len(args) != 2:
            raise errors.syntax()
        path = cx.state.socket_path
        lines = [
            c.info_line(path) + "\n"
            for c in cx.state.clients.values()
            if ids is None or c.id in ids
        ]
        return Verbatim("".join(lines))
    if sub == b"NO-EVICT" or sub == b"NO-TOUCH":
        return OK
    raise errors.unknown_subcommand(text(args[1]), "CLIENT")
