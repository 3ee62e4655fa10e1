"""Argument docs for ``COMMAND DOCS``, in the shape Redis 7 replies with.

redis-cli builds its interactive ``help`` and the grey argument hints from
``COMMAND DOCS``: without ``arguments`` it shows ``SET`` with no syntax at all.
The syntax of each command is written on its declaration as Redis'
documentation writes it, and turned here into Redis' argument maps (``name``,
``type``, ``token``, ``flags``, nested ``arguments`` for ``oneof``/``block``):

- ``[x]`` optional; ``x ...`` repeatable; ``a | b`` one of; ``(a b)`` a group;
- an UPPER-case word is a token: alone a ``pure-token``, before an argument
  that argument's token, before several a ``block``.

Container commands (``CLIENT``, ``COMMAND``, ``CONFIG``) declare their
``subcommands`` too (``client|setname``...), which redis-cli lists as
``CLIENT SETNAME``.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from ..protocol import Status
from .registry import Command

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
    "numkeys",
    "offset",
    "start",
    "end",
    "timeout",
    "destination-db",
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


@cache
def arguments(syntax: str) -> list[dict[str, Any]]:
    """Redis' ``arguments`` list for a syntax line such as ``key [NX | XX]``
    (parsed once per line: the reply is only read)."""
    parser = _Parser(syntax)
    args = parser.alternatives(None)
    if parser.peek() is not None:
        raise ValueError(f"cannot parse {syntax!r} at {parser.peek()!r}")
    return [_encode(a) for a in args]


def doc_fields(cmd: Command) -> dict[str, Any]:
    """``arguments`` (and ``subcommands`` for container commands) of one
    declared command, from the syntax on its declaration."""
    fields: dict[str, Any] = {"arguments": arguments(cmd.syntax)}
    if cmd.subcommands:
        fields["subcommands"] = {
            f"{cmd.name.lower()}|{sub.lower()}": {
                "summary": summary,
                "since": "1.0.0",
                "group": cmd.group,
                "complexity": "O(1)",
                "arguments": arguments(syntax),
            }
            for sub, (syntax, summary) in cmd.subcommands.items()
        }
    return fields
