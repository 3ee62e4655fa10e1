"""Error replies: every text a client may match on, in Redis' words, in one place."""

from __future__ import annotations

from ..protocol import Error
from ..store.api import StoreError

SYNTAX = "ERR syntax error"
NOT_INT = "ERR value is not an integer or out of range"
NOT_IN_MULTI = "ERR Command not allowed inside a transaction"
NOAUTH = "NOAUTH Authentication required."
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."
WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
OVERFLOW = "ERR increment or decrement would overflow"
EXECABORT = "EXECABORT Transaction discarded because of previous errors."
NESTED_MULTI = "ERR MULTI calls can not be nested"
INVALID_CURSOR = "ERR invalid cursor"
DB_INDEX = "ERR DB index is out of range"
NAME_CHARS = "ERR Client names cannot contain spaces, newlines or special characters."
NO_SUCH_KEY = "ERR no such key"
SAME_OBJECT = "ERR source and destination objects are the same"
NOT_FLOAT = "ERR value is not a valid float"
WATCH_IN_MULTI = "ERR WATCH inside MULTI is not allowed"
# Inside scripts (redis.call), in Redis 7.2's words.
SCRIPT_UNKNOWN = "ERR Unknown Redis command called from script"
MUST_BE_POSITIVE = "ERR value is out of range, must be positive"
SCRIPT_ARITY = "ERR Wrong number of args calling Redis command from script"
SCRIPT_REFUSED = "ERR This Redis command is not allowed from script"
SCRIPT_READ_ONLY = "ERR Write commands are not allowed from read-only scripts."
# On a shared store (persistence.backend: postgresql) a script is decided by
# the database on the keys it declares (docs/shared-store.md).
SCRIPT_UNDECLARED_KEY = (
    "ERR Script attempted to access a key it did not declare: with persistence.backend "
    "postgresql a script may use only the keys it passes in KEYS"
)
SCRIPT_RO_WITH_WRITES = "ERR Can not execute a script with write flag using *_ro command."


def out_of_range(low: int, high: int) -> Error:
    """Redis 7.2's getRangeLongFromObjectOrReply, its words (and its typo)."""
    return Error(f"ERR value is out of range, value must between {low} and {high}")


def denied(name: str) -> str:
    """security.disabled_commands forbids ``name`` (``flushall``,
    ``config|set``): what Redis 7.2 answers when an ACL denies a command."""
    return f"User default has no permissions to run the '{name}' command"


def syntax() -> Error:
    return Error(SYNTAX)


def wrong_arity(name: str) -> Error:
    return Error(f"ERR wrong number of arguments for '{name.lower()}' command")


def exec_aborted(refusal: Error) -> Error:
    """EXEC refused before it runs (arity, NOAUTH, MISCONF...): Redis'
    execCommandAbort, the refusal's text after its ``ERR`` (if it has one)."""
    reason = refusal.message.removeprefix("ERR ")
    return Error(f"EXECABORT Transaction discarded because of: {reason}")


def invalid_expire(command: str) -> Error:
    return Error(f"ERR invalid expire time in '{command}' command")


def unknown_subcommand(sub: str, container: str) -> Error:
    return Error(
        f"ERR unknown subcommand or wrong number of arguments for '{sub}'. Try {container} HELP."
    )


def unknown_command(args: list[bytes]) -> Error:
    """Redis' wording: each argument quoted and followed by a space, ~128 chars."""
    name = args[0].decode("utf-8", "replace")
    rest = ""
    for a in args[1:]:
        if len(rest) >= 128:
            break
        text = a.decode("utf-8", "replace")
        rest += f"'{text[: 128 - len(rest)]}' "
    return Error(f"ERR unknown command '{name[:128]}', with args beginning with: {rest}")


def subscribed_mode(name: str) -> Error:
    """A RESP2 client that is subscribed sent a command it may not."""
    return Error(
        f"ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / "
        "RESET are allowed in this context"
    )


def no_such_subcommand(sub: str, container: str) -> Error:
    """Redis 7's reply to an unknown subcommand of a container command."""
    return Error(f"ERR unknown subcommand '{sub[:128]}'. Try {container} HELP.")


def without_multi(name: str) -> Error:
    return Error(f"ERR {name} without MULTI")


def misconf(failure: StoreError) -> Error:
    """Like Redis when it cannot persist: writes are refused, reads served."""
    return Error(f"MISCONF {failure}; writes are refused until {_until(failure)}")


def _until(failure: StoreError) -> str:
    if failure.lasting:  # the store's files are gone: it will not come back by itself
        return "sessiond is restarted with its store back in place"
    return "the store recovers"


def misconf_script(failure: StoreError) -> Error:
    """A script that may write, refused before it runs while the store cannot commit."""
    return Error(
        f"MISCONF {failure}; writable scripts are blocked until {_until(failure)}. "
        "Use 'no-writes' flag for read only scripts."
    )


def internal(name: str) -> Error:
    return Error(f"ERR internal error while running '{name.lower()}'")


def store_failed(exc: Exception) -> Error:
    return Error(f"ERR {exc}")
