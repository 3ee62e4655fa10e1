"""Argument docs for ``COMMAND DOCS``, in the shape Redis 7 replies with.

redis-cli builds its interactive ``help`` and the grey argument hints from
``COMMAND DOCS``: without ``arguments`` it shows ``SET`` with no syntax at all.
The syntax of each command is written here as Redis' documentation writes it
and turned into Redis' argument maps (``name``, ``type``, ``token``, ``flags``,
nested ``arguments`` for ``oneof``/``block``):

- ``[x]`` optional; ``x ...`` repeatable; ``a | b`` one of; ``(a b)`` a group;
- an UPPER-case word is a token: alone a ``pure-token``, before an argument
  that argument's token, before several a ``block``.

Container commands (``CLIENT``, ``COMMAND``, ``CONFIG``) also get
``subcommands`` (``client|setname``...), which redis-cli lists as ``CLIENT SETNAME``.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from .protocol import Status

SYNTAX: dict[str, str] = {
    "PING": "[message]",
    "ECHO": "message",
    "QUIT": "",
    "AUTH": "[username] password",
    "HELLO": "[protover [AUTH username password] [SETNAME clientname]]",
    "RESET": "",
    "SELECT": "index",
    "INFO": "[section ...]",
    "DBSIZE": "",
    "FLUSHDB": "[ASYNC | SYNC]",
    "FLUSHALL": "[ASYNC | SYNC]",
    "TIME": "",
    "MULTI": "",
    "EXEC": "",
    "DISCARD": "",
    "GET": "key",
    "SET": (
        "key value [NX | XX] [GET] [EX seconds | PX milliseconds | "
        "EXAT unix-time-seconds | PXAT unix-time-milliseconds | KEEPTTL]"
    ),
    "SETEX": "key seconds value",
    "PSETEX": "key milliseconds value",
    "SETNX": "key value",
    "GETDEL": "key",
    "GETEX": (
        "key [EX seconds | PX milliseconds | EXAT unix-time-seconds | "
        "PXAT unix-time-milliseconds | PERSIST]"
    ),
    "MGET": "key ...",
    "MSET": "(key value) ...",
    "DEL": "key ...",
    "UNLINK": "key ...",
    "EXISTS": "key ...",
    "TOUCH": "key ...",
    "TYPE": "key",
    "STRLEN": "key",
    "INCR": "key",
    "INCRBY": "key increment",
    "DECR": "key",
    "DECRBY": "key decrement",
    "EXPIRE": "key seconds [NX | XX | GT | LT]",
    "PEXPIRE": "key milliseconds [NX | XX | GT | LT]",
    "EXPIREAT": "key unix-time-seconds [NX | XX | GT | LT]",
    "PEXPIREAT": "key unix-time-milliseconds [NX | XX | GT | LT]",
    "TTL": "key",
    "PTTL": "key",
    "EXPIRETIME": "key",
    "PEXPIRETIME": "key",
    "PERSIST": "key",
    "SCAN": "cursor [MATCH pattern] [COUNT count] [TYPE type]",
    "KEYS": "pattern",
    "SESSION.CREATE": "[CONTEXT context] [TTL seconds] [STATE value]",
    "SESSION.INFO": "key",
    "SESSION.INVALIDATE": "key",
    "SESSION.LIST": "[CONTEXT context] [COUNT count]",
}

SUBCOMMANDS: dict[str, dict[str, tuple[str, str]]] = {
    "CLIENT": {
        "SETNAME": ("connection-name", "Set the current connection name"),
        "GETNAME": ("", "Return the name of the current connection"),
        "ID": ("", "Return the client ID of the current connection"),
        "INFO": ("", "Information about the current connection"),
        "LIST": ("[TYPE NORMAL] [ID client-id ...]", "The list of client connections"),
        "SETINFO": ("LIB-NAME libname | LIB-VER libver", "Set client library name or version"),
        "NO-EVICT": ("ON | OFF", "Accepted and ignored"),
        "NO-TOUCH": ("ON | OFF", "Accepted and ignored"),
    },
    "COMMAND": {
        "COUNT": ("", "Number of commands"),
        "DOCS": ("[command-name ...]", "Documentary information about commands"),
        "INFO": ("[command-name ...]", "Information about commands"),
        "LIST": ("", "Names of all commands"),
        "GETKEYS": ("command [arg ...]", "The keys of a full command"),
    },
    "CONFIG": {
        "GET": ("parameter ...", "The effective value of config parameters"),
        "SET": ("parameter value", "Not supported: edit the config file"),
        "RESETSTAT": ("", "Accepted and ignored"),
    },
}

_INTEGER = {
    "seconds",
    "milliseconds",
    "count",
    "increment",
    "decrement",
    "index",
    "cursor",
    "protover",
    "client-id",
}
_TOKENS = re.compile(r"\[|\]|\(|\)|\||\.\.\.|[^\s\[\]()|]+")


def _type_of(name: str) -> str:
    if name == "key":
        return "key"
    if name in _INTEGER:
        return "integer"
    if name.startswith("unix-time"):
        return "unix-time"
    if name == "pattern":
        return "pattern"
    return "string"


def _is_token(word: str) -> bool:
    return word.isupper()


class _Parser:
    def __init__(self, syntax: str) -> None:
        self.items: list[str] = _TOKENS.findall(syntax)
        self.pos = 0

    def peek(self) -> str | None:
        return self.items[self.pos] if self.pos < len(self.items) else None

    def take(self) -> str:
        item = self.items[self.pos]
        self.pos += 1
        return item

    def alternatives(self, end: str | None) -> list[dict[str, Any]]:
        """``seq (| seq)*`` up to ``end``: one argument list, or one ``oneof``."""
        choices = [self.sequence(end)]
        while self.peek() == "|":
            self.take()
            choices.append(self.sequence(end))
        if len(choices) == 1:
            return choices[0]
        members = [_one(c) for c in choices]
        return [{"name": "-".join(m["name"] for m in members), "type": "oneof", "args": members}]

    def sequence(self, end: str | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while self.peek() not in (None, "|", end):
            item = self.take()
            if item == "[":
                args = self.alternatives("]")
                self.take()
                group = _one(args)
                group.setdefault("flags", []).append("optional")
            elif item == "(":
                group = _one(self.alternatives(")"))
                self.take()
            elif _is_token(item):
                group = {"name": item.lower(), "type": "pure-token", "token": item}
            else:
                group = {"name": item, "type": _type_of(item)}
            if self.peek() == "...":
                self.take()
                group.setdefault("flags", []).append("multiple")
            out.append(group)
        return _merge_tokens(out)


def _one(args: list[dict[str, Any]]) -> dict[str, Any]:
    if len(args) == 1:
        return args[0]
    return {"name": "-".join(a["name"] for a in args), "type": "block", "args": args}


def _merge_tokens(args: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``TOKEN arg`` -> ``arg`` with that token; ``TOKEN a b`` -> a block with it."""
    if len(args) >= 2 and args[0]["type"] == "pure-token" and "flags" not in args[0]:
        token = args[0]["token"]
        rest = args[1:]
        if len(rest) == 1 and "token" not in rest[0]:
            return [{**rest[0], "token": token}]
        return [{"name": token.lower(), "type": "block", "token": token, "args": rest}]
    return args


def _encode(arg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": arg["name"], "type": arg["type"]}
    if arg["type"] == "key":
        out["key_spec_index"] = 0
    if "token" in arg:
        out["token"] = arg["token"]
    if "flags" in arg:
        out["flags"] = {Status(f) for f in arg["flags"]}
    if "args" in arg:
        out["arguments"] = [_encode(a) for a in arg["args"]]
    return out


def arguments(syntax: str) -> list[dict[str, Any]]:
    """Redis' ``arguments`` list for a syntax line such as ``key [NX | XX]``."""
    parser = _Parser(syntax)
    args = parser.alternatives(None)
    if parser.peek() is not None:
        raise ValueError(f"cannot parse {syntax!r} at {parser.peek()!r}")
    return [_encode(a) for a in args]


@cache
def doc_fields(name: str, group: str) -> dict[str, Any]:
    """``arguments`` (and ``subcommands`` for container commands) of one command."""
    fields: dict[str, Any] = {"arguments": arguments(SYNTAX.get(name, ""))}
    subs = SUBCOMMANDS.get(name)
    if subs:
        fields["subcommands"] = {
            f"{name.lower()}|{sub.lower()}": {
                "summary": summary,
                "since": "1.0.0",
                "group": group,
                "complexity": "O(1)",
                "arguments": arguments(syntax),
            }
            for sub, (syntax, summary) in subs.items()
        }
    return fields
