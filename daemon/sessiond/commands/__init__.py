"""Redis commands, by family, each declared once on its handler.

Importing this package declares every command (see :mod:`.registry`): the
family modules register themselves when imported, in the order below (the
order COMMAND lists them in). :class:`Dispatcher` runs requests against them.
"""

from . import connection, server, strings, keyspace, expiry, session, transactions, scripting  # noqa: I001
from .dispatch import Dispatcher
from .registry import REGISTRY, Call, Command, command
from .state import Client, ServerState
from .util import glob_to_regex, parse_int64

__all__ = [
    "REGISTRY",
    "Call",
    "Client",
    "Command",
    "Dispatcher",
    "ServerState",
    "command",
    "connection",
    "expiry",
    "glob_to_regex",
    "keyspace",
    "parse_int64",
    "scripting",
    "server",
    "session",
    "strings",
    "transactions",
]
