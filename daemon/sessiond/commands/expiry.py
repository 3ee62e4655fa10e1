"""Expiry commands: EXPIRE PEXPIRE EXPIREAT PEXPIREAT TTL PTTL EXPIRETIME
PEXPIRETIME PERSIST."""

from __future__ import annotations

from ..keyevents import NOTIFY_GENERIC, NOTIFY_KEY_MISS
from ..protocol import Error
from . import errors
from .registry import GENERIC, Args, Call, Reply, command
from .util import MAX_INT64, int_arg, text

_CONDITIONS = "[NX | XX | GT | LT]"


def _expire(cx: Call, args: Args, *, ms: bool, absolute: bool) -> int:
    key = args[1]
    flags: set[bytes] = set()
    for arg in args[3:]:
        opt = arg.upper()
        if opt not in (b"NX", b"XX", b"GT", b"LT"):
            raise Error(f"ERR Unsupported option {text(arg)}")
        flags.add(opt)
    if b"NX" in flags and len(flags) > 1:
        raise Error("ERR NX and XX, GT or LT options at the same time are not compatible")
    if b"GT" in flags and b"LT" in flags:
        raise Error("ERR GT and LT options at the same time are not compatible")
    amount = int_arg(args[2])
    now = cx.now()
    # Redis' overflow checks: seconds * 1000, plus now if relative, in 64 bits.
    if not ms and abs(amount) > MAX_INT64 // 1000:
        raise errors.invalid_expire(text(args[0]).lower())
    if not absolute and (amount if ms else amount * 1000) > MAX_INT64 - int(now * 1000):
        raise errors.invalid_expire(text(args[0]).lower())
    seconds = amount / 1000.0 if ms else float(amount)
    new_deadline = seconds if absolute else now + seconds
    # NX/XX/GT/LT compare with the deadline as it was, not as this access
    # (which slides it) would leave it.
    before = cx.peek(key)
    current = None if before is None else before.deadline
    entry = cx.lookup(key)
    if entry is None:
        return 0
    if b"NX" in flags and current is not None:
        return 0
    if b"XX" in flags and current is None:
        return 0
    if b"GT" in flags and (current is None or new_deadline <= current):
        return 0
    if b"LT" in flags and current is not None and new_deadline >= current:
        return 0
    if new_deadline <= now:
        cx.remove(key)
        if cx.keyspace.notifying:
            cx.notify(NOTIFY_GENERIC, b"del", key)
        return 1
    if absolute:
        cx.set_deadline(key, new_deadline)
    else:
        cx.set_ttl(key, seconds)
    if cx.keyspace.notifying:
        cx.notify(NOTIFY_GENERIC, b"expire", key)
    return 1


@command(
    "EXPIRE",
    -3,
    "write fast",
    keys=(1, 1, 1),
    group=GENERIC,
    summary="Set TTL",
    syntax=f"key seconds {_CONDITIONS}",
    decides=True,
)
def cmd_expire(cx: Call, args: Args) -> Reply:
    return _expire(cx, args, ms=False, absolute=False)


@command(
    "PEXPIRE",
    -3,
    "write fast",
    keys=(1, 1, 1),
    group=GENERIC,
    summary="Set ms TTL",
    syntax=f"key milliseconds {_CONDITIONS}",
    decides=True,
)
def cmd_pexpire(cx: Call, args: Args) -> Reply:
    return _expire(cx, args, ms=True, absolute=False)


@command(
    "EXPIREAT",
    -3,
    "write fast",
    keys=(1, 1, 1),
    group=GENERIC,
    summary="Set deadline",
    syntax=f"key unix-time-seconds {_CONDITIONS}",
    decides=True,
)
def cmd_expireat(cx: Call, args: Args) -> Reply:
    return _expire(cx, args, ms=False, absolute=True)


@command(
    "PEXPIREAT",
    -3,
    "write fast",
    keys=(1, 1, 1),
    group=GENERIC,
    summary="Set ms deadline",
    syntax=f"key unix-time-milliseconds {_CONDITIONS}",
    decides=True,
)
def cmd_pexpireat(cx: Call, args: Args) -> Reply:
    return _expire(cx, args, ms=True, absolute=True)


def _missed(cx: Call, key: bytes) -> None:
    if cx.keyspace.notifying:
        cx.notify(NOTIFY_KEY_MISS, b"keymiss", key)


def _remaining_ms(cx: Call, key: bytes) -> int:
    entry = cx.peek(key)
    if entry is None:
        _missed(cx, key)
        return -2
    if entry.deadline is None:
        return -1
    return max(0, round((entry.deadline - cx.now()) * 1000))


@command(
    "TTL", 2, "readonly fast", keys=(1, 1, 1), group=GENERIC, summary="Remaining TTL", syntax="key"
)
def cmd_ttl(cx: Call, args: Args) -> Reply:
    ms = _remaining_ms(cx, args[1])
    return ms if ms < 0 else (ms + 500) // 1000


@command(
    "PTTL",
    2,
    "readonly fast",
    keys=(1, 1, 1),
    group=GENERIC,
    summary="Remaining ms TTL",
    syntax="key",
)
def cmd_pttl(cx: Call, args: Args) -> Reply:
    return _remaining_ms(cx, args[1])


def _expiretime_ms(cx: Call, key: bytes) -> int:
    """``key``'s deadline in unix milliseconds, or -2 (no key), -1 (none).

    A deadline is kept as a double of seconds: the nearest millisecond is the
    one it was given (truncating gave one less for about 1 in 200), and one past
    2^63-1 is where PXAT 9223372036854775807 lands, which Redis answers as is
    (and a reply over it is no RESP integer)."""
    entry = cx.peek(key)
    if entry is None:
        _missed(cx, key)
        return -2
    if entry.deadline is None:
        return -1
    return min(round(entry.deadline * 1000), MAX_INT64)


@command(
    "EXPIRETIME",
    2,
    "readonly fast",
    keys=(1, 1, 1),
    group=GENERIC,
    summary="Deadline",
    syntax="key",
)
def cmd_expiretime(cx: Call, args: Args) -> Reply:
    ms = _expiretime_ms(cx, args[1])
    return ms if ms < 0 else (ms + 500) // 1000  # rounded, as Redis' (ms + 500) / 1000


@command(
    "PEXPIRETIME",
    2,
    "readonly fast",
    keys=(1, 1, 1),
    group=GENERIC,
    summary="Deadline in ms",
    syntax="key",
)
def cmd_pexpiretime(cx: Call, args: Args) -> Reply:
    return _expiretime_ms(cx, args[1])


@command(
    "PERSIST",
    2,
    "write fast",
    keys=(1, 1, 1),
    group=GENERIC,
    summary="Remove TTL",
    syntax="key",
    decides=True,
)
def cmd_persist(cx: Call, args: Args) -> Reply:
    if cx.lookup(args[1]) is None or not cx.persist(args[1]):
        return 0
    if cx.keyspace.notifying:
        cx.notify(NOTIFY_GENERIC, b"persist", args[1])
    return 1
