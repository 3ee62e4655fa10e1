"""Redis commands, by family, each declared once on its handler.

Importing this package declares every command (see :mod:`.registry`): the
family modules register themselves when imported, in the order below (the
order COMMAND lists them in). :class:`Dispatcher` runs requests against them.
"""

from . import (  # noqa: I001 (the order COMMAND lists them in)
    connection,
    server,
    strings,
    keyspace,
    expiry,
    hashes,
    sets,
    session,
    transactions,
    scripting,
)
from . import ops
from . import pubsub
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
    "hashes",
    "keyspace",
    "ops",
    "parse_int64",
    "pubsub",
    "scripting",
    "server",
    "session",
    "sets",
    "strings",
    "transactions",
]
