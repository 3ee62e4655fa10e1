"""Scripting: EVAL EVALSHA EVAL_RO EVALSHA_RO SCRIPT.

The Lua side (sandbox, conversions, error texts) is :mod:`sessiond.scripting`;
this module runs it against the keyspace, once per daemon
(:attr:`Dispatcher.scripts <sessiond.commands.dispatch.Dispatcher>`).

- **On the event loop, synchronously**, like every other command: a script is
  atomic by construction, nothing else runs until it ends. The keys it
  declares (``numkeys``) are read through from the store before it starts,
  like any command's keys; a key it uses without declaring it that memory
  does not hold is read from the store at once, a blocking point read
  (:meth:`Context.enter_script <sessiond.keyspace.Context.enter_script>`).
- ``redis.call`` runs a command through the dispatcher in the script's own
  per-command context, counted as Redis counts it; refused as Redis refuses
  it: unknown, wrong arity, flagged ``noscript``, a write from a read-only
  script (EVAL_RO, or a ``#!lua flags=no-writes`` script), a first write while
  the store cannot commit.
- **A time limit** (``scripting.time_limit``): the engine stops a script that
  runs longer, whether it wrote or not, and every change it made is rolled
  back from the undo log the context kept, so a script is all or nothing even
  then. A script that fails with an error keeps its writes, as in Redis.
  ``SCRIPT KILL`` can never find a script running (the loop is busy with it):
  it answers ``NOTBUSY``, as Redis does when no script runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from ..config import Config
from ..protocol import OK, Error
from ..scripting import NOSCRIPT_ERROR, ScriptEngine, shebang_flags
from . import errors
from .registry import (
    SCRIPTING,
    Args,
    Call,
    Command,
    Reply,
    arity_fits,
    command,
    denied_name,
    subcommand,
)
from .util import help_reply, parse_int64, text

# What a script killed by the time limit replies ({limit} is the limit, such
# as 1s; where the script was follows).
TIME_LIMIT_ERROR = (
    "ERR Script killed: it ran longer than scripting.time_limit ({limit}); "
    "its writes were rolled back."
)

log = structlog.get_logger("sessiond.scripting")

_EVAL_FLAGS = "noscript skip_monitor may_replicate no_mandatory_keys stale"
_EVAL_RO_FLAGS = "noscript skip_monitor no_mandatory_keys stale readonly"


# redis.log levels (LOG_DEBUG, LOG_VERBOSE, LOG_NOTICE, LOG_WARNING) as log levels.
_LOG_LEVELS = ("debug", "debug", "info", "warning")


def _script_log(level: int, message: str) -> None:
    getattr(log, _LOG_LEVELS[level])("script_log", message=message)


def new_engine(config: Config) -> ScriptEngine:
    """The daemon's one script engine (app.py builds it; a reload sets its
    ``time_limit``)."""
    return ScriptEngine(
        busy_threshold=0.0,  # nobody else runs meanwhile: no BUSY replies to give
        time_limit=config.scripting.time_limit,
        time_limit_error=TIME_LIMIT_ERROR,
        log=_script_log,
    )


def _numkeys(args: Args) -> int | None:
    """EVAL's numkeys if it is valid, else None (the handler says why)."""
    if len(args) < 3:
        return None
    n = parse_int64(args[2])
    if n is None or n < 0 or n > len(args) - 3:
        return None
    return n


def _script_keys(args: Args) -> list[bytes]:
    n = _numkeys(args)
    return [] if n is None else args[3 : 3 + n]


def _declares_keys(args: Args) -> bool:
    return bool(_script_keys(args))


def script_may_write(cmd: Command, args: Args, engine: ScriptEngine) -> bool:
    """Whether running EVAL/EVALSHA ``args`` may write: unless the script
    declares ``no-writes`` (CLIENT PAUSE WRITE lets it through then)."""
    if not cmd.may_write or len(args) < 2:
        return cmd.may_write
    source = args[1]
    flags = engine.script_flags(source) if cmd.name == "EVALSHA" else shebang_flags(source)
    return flags is None or "no-writes" not in flags


def _caller(
    cx: Call, engine: ScriptEngine, read_only: bool, declared: Args
) -> Callable[[list[bytes]], Any]:
    """``redis.call``/``redis.pcall``: one command, through the dispatcher,
    in the script's context. On a shared store it may name only the keys the
    script ``declared`` (the database holds those for it)."""
    dispatcher = cx.dispatcher
    keyspace = cx.keyspace
    allowed = set(declared) if keyspace.scripts_declare_keys else None
    wrote = False

    def call(args: list[bytes]) -> Any:
        nonlocal wrote
        cmd = dispatcher.resolve(args[0])
        if cmd is None:
            unknown = dispatcher.unknown
            unknown.calls += 1
            unknown.errors += 1
            raise Error(errors.SCRIPT_UNKNOWN)
        refusal = None
        denied = dispatcher.state.denied
        if not arity_fits(cmd.arity, len(args)):
            refusal = errors.SCRIPT_ARITY
        elif cmd.noscript:  # before the ACL check, as Redis' scriptCall
            refusal = errors.SCRIPT_REFUSED
        elif denied and (name := denied_name(denied, cmd, args)):
            refusal = "ERR ACL failure in script: " + errors.denied(name)
        elif read_only and (cmd.write or cmd.may_write):
            refusal = errors.SCRIPT_READ_ONLY
        elif cmd.write and not wrote and keyspace.failure is not None:
            refusal = errors.misconf(keyspace.failure).message
        elif allowed is not None and not allowed.issuperset(cmd.keys(args)):
            refusal = errors.SCRIPT_UNDECLARED_KEY
        if refusal is not None:
            counter = dispatcher.counters[cmd.index]
            counter.calls += 1
            counter.errors += 1
            raise Error(refusal)
        if cmd.write:
            engine.mark_write()  # raises ScriptKilled once the time limit hit
            wrote = True
        return dispatcher.call(cx, cmd, args, script=True)

    return call


def _evaluate(cx: Call, args: Args, *, by_sha: bool, read_only: bool) -> Reply:
    engine = cx.dispatcher.scripts
    if by_sha and len(args[1]) != 40:
        raise Error(NOSCRIPT_ERROR)
    numkeys = parse_int64(args[2])
    if numkeys is None:
        raise Error(errors.NOT_INT)
    if numkeys > len(args) - 3:
        raise Error("ERR Number of keys can't be greater than number of args")
    if numkeys < 0:
        raise Error("ERR Number of keys can't be negative")
    if by_sha:
        sha = text(args[1]).lower()
        if not engine.exists([sha])[0]:
            raise Error(NOSCRIPT_ERROR)
    else:
        sha = engine.load(args[1])  # compiled and cached, as EVAL does in Redis
    flags = engine.script_flags(sha)
    if flags is not None and "no-writes" not in flags:
        # A script that declares its flags and may write is refused up front.
        failure = cx.keyspace.failure
        if failure is not None:
            raise errors.misconf_script(failure)
        if read_only:
            raise Error(errors.SCRIPT_RO_WITH_WRITES)
    read_only = read_only or (flags is not None and "no-writes" in flags)
    client = cx.client
    keys = args[3 : 3 + numkeys]
    argv = args[3 + numkeys :]
    cx.enter_script()
    held = cx.hold_time()  # no key expires in the middle of the script
    pubsub = cx.state.pubsub
    pubsub.hold()
    timed_out = False
    # No commit takes half of the script's writes: a kill -9 while it runs
    # leaves none of them, nor the writes of a stopped script without their undo.
    cx.hold_commits()
    try:
        reply = engine.run_sha(
            sha, keys, argv, _caller(cx, engine, read_only, keys), resp3=client.resp3
        )
        timed_out = engine.timed_out
        if timed_out:
            log.warning(
                "script_stopped",
                sha=sha,
                client_id=client.id,
                time_limit=engine.time_limit,
                rolled_back=len(cx.undo or ()),
            )
    finally:
        # Stopped by the time limit: every change it made is undone. An
        # error after writes keeps them, as in Redis.
        if held:
            cx.release_time()
        try:
            cx.leave_script(roll_back=timed_out)
        finally:
            cx.release_commits()  # after the undo: the script's writes and it, together
        # What it published and the events of its writes go out with them,
        # or not at all.
        pubsub.release(deliver=not timed_out)
    return reply


@command(
    "EVAL",
    -3,
    _EVAL_FLAGS,
    group=SCRIPTING,
    summary="Run a Lua script",
    syntax="script numkeys [key ...] [arg ...]",
    load=_script_keys,
    # On a shared store, the database decides a script on its declared keys.
    decides=_declares_keys,
)
def cmd_eval(cx: Call, args: Args) -> Reply:
    return _evaluate(cx, args, by_sha=False, read_only=False)


@command(
    "EVALSHA",
    -3,
    _EVAL_FLAGS,
    group=SCRIPTING,
    summary="Run a cached Lua script",
    syntax="sha1 numkeys [key ...] [arg ...]",
    load=_script_keys,
    # On a shared store, the database decides a script on its declared keys.
    decides=_declares_keys,
)
def cmd_evalsha(cx: Call, args: Args) -> Reply:
    return _evaluate(cx, args, by_sha=True, read_only=False)


@command(
    "EVAL_RO",
    -3,
    _EVAL_RO_FLAGS,
    group=SCRIPTING,
    summary="Run a read-only Lua script",
    syntax="script numkeys [key ...] [arg ...]",
    load=_script_keys,
)
def cmd_eval_ro(cx: Call, args: Args) -> Reply:
    return _evaluate(cx, args, by_sha=False, read_only=True)


@command(
    "EVALSHA_RO",
    -3,
    _EVAL_RO_FLAGS,
    group=SCRIPTING,
    summary="Run a cached read-only Lua script",
    syntax="sha1 numkeys [key ...] [arg ...]",
    load=_script_keys,
)
def cmd_evalsha_ro(cx: Call, args: Args) -> Reply:
    return _evaluate(cx, args, by_sha=True, read_only=True)


_SCRIPT_HELP = [
    "DEBUG (YES|SYNC|NO)",
    "    Set the debug mode for subsequent scripts executed (sessiond: NO only).",
    "EXISTS <sha1> [<sha1> ...]",
    "    Return information about the existence of the scripts in the script cache.",
    "FLUSH [ASYNC|SYNC]",
    "    Flush the Lua scripts cache.",
    "KILL",
    "    Kill the currently executing Lua script (sessiond: scripts run to their end or",
    "    to scripting.time_limit, so there never is one to kill).",
    "LOAD <script>",
    "    Load a script into the scripts cache without executing it.",
]


@command(
    "SCRIPT",
    -2,
    "noscript",
    group=SCRIPTING,
    summary="Manage the script cache",
    subcommands={
        "LOAD": (3, "script", "Load a script into the script cache"),
        "EXISTS": (-3, "sha1 ...", "Whether scripts are in the script cache"),
        "FLUSH": (-2, "[ASYNC | SYNC]", "Empty the script cache"),
        "KILL": (2, "", "Kill the running script (never one: NOTBUSY)"),
        "DEBUG": (3, "YES | SYNC | NO", "Only NO: the Lua debugger is not supported"),
        "HELP": (2, "", "Show this help"),
    },
)
def cmd_script(cx: Call, args: Args) -> Reply:
    engine = cx.dispatcher.scripts
    sub = subcommand(args, "SCRIPT")
    if sub == b"LOAD":
        return engine.load(args[2]).encode()
    if sub == b"EXISTS":
        return engine.exists(args[2:])
    if sub == b"FLUSH":
        if len(args) > 3 or (len(args) == 3 and args[2].upper() not in (b"SYNC", b"ASYNC")):
            raise Error("ERR SCRIPT FLUSH only support SYNC|ASYNC option")
        engine.flush()
        return OK
    if sub == b"KILL":
        # Scripts run on the event loop: while one runs, this command cannot,
        # so the engine never has one to kill and answers NOTBUSY.
        engine.kill()
        return OK
    if sub == b"DEBUG":
        mode = args[2].upper()
        if mode == b"NO":
            return OK
        if mode in (b"YES", b"SYNC"):
            raise Error("ERR SCRIPT DEBUG is not supported: sessiond has no Lua debugger")
        raise Error("ERR Use SCRIPT DEBUG YES/SYNC/NO")
    return help_reply("SCRIPT", _SCRIPT_HELP)
