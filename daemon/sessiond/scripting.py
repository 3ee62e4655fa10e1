"""Redis-compatible Lua scripting (EVAL/EVALSHA/SCRIPT) on a real Lua 5.1.

This module owns the Lua side of scripting: compiling and caching scripts by
SHA1, the sandbox a script runs in, the ``redis.*`` API, the conversions
between Lua values and reply values (both ways, RESP2 and RESP3, as Redis
7.2 does them), the error texts a script produces, and the time and memory
limits that keep a runaway script from hanging the daemon.

It must never know commands, keys, the cache, the store or the server: a
script reaches the data only through the ``call`` callback its caller
passes to :meth:`ScriptEngine.run`. Which commands a script may call, how
EVAL_RO refuses writes and when a command counts as a write are the
caller's business. The only sessiond module it imports is
:mod:`sessiond.protocol`, for the reply value types.

Interface::

    engine = ScriptEngine(*, busy_threshold: float = 5.0,
                          max_memory: int = 64 << 20,
                          clock: Callable[[], float] = time.monotonic,
                          log: Callable[[int, str], None] | None = None,  # redis.log
                          on_busy: Callable[[], None] | None = None,
                          hook_interval: int = 100_000,
                          redis_version: str = "7.2.0",
                          time_limit: float = 0.0,
                          time_limit_error: str = TIME_LIMIT_ERROR)
    engine.load(source: bytes) -> str              # SCRIPT LOAD: the sha
    engine.exists(shas: Iterable[str | bytes]) -> list[int]   # SCRIPT EXISTS
    engine.flush() -> None                         # SCRIPT FLUSH
    engine.script_flags(sha) -> frozenset[str] | None   # shebang flags
    engine.run(source, keys, argv, call, *, resp3) -> reply    # EVAL
    engine.run_sha(sha, keys, argv, call, *, resp3) -> reply   # EVALSHA
    engine.mark_write() -> None                    # from ``call``, before a write
    engine.kill() -> None                          # SCRIPT KILL, any thread
    engine.running / engine.busy -> bool
    engine.time_limit = seconds                    # settable between runs
    engine.timed_out -> bool                       # the last run hit time_limit
    engine.memory_used -> int; len(engine)        # INFO: used_memory_lua, scripts

``call(args: list[bytes])`` executes one command for the script and returns
its reply value (see :mod:`sessiond.protocol`) or raises
:class:`~sessiond.protocol.Error`. ``run`` and ``run_sha`` return the
script's reply value; an error the script returned or raised comes back as
an :class:`~sessiond.protocol.Error` *value*. They raise
:class:`~sessiond.protocol.Error` only when no script ran: a compile error,
a bad shebang, ``NOSCRIPT``.

Threads: ``run``/``run_sha``/``load`` serve one thread at a time (a second
thread waits; a call from inside a running script's ``call`` is a
programming error and raises :class:`RuntimeError`). ``kill``,
``mark_write``, ``exists``, ``running`` and ``busy`` may be called from any
thread while a script runs. The script runs on the calling thread;
``on_busy`` and ``log`` are called on that thread too.

Time limit: a count hook, installed from the host side where scripts cannot
reach it, looks at ``clock`` every ``hook_interval`` Lua instructions. Once
the script has run ``busy_threshold`` seconds it calls ``on_busy()`` once
(the caller then answers other clients ``BUSY``, :data:`BUSY_ERROR`). After
:meth:`ScriptEngine.kill` the hook raises Redis' "Script killed by user"
error at every instruction, so ``pcall`` cannot swallow it. A script that
has written (the ``call`` callback calls :meth:`ScriptEngine.mark_write`
*before* performing a write) cannot be killed, as in Redis; and once a kill
is accepted, ``mark_write`` raises :class:`ScriptKilled` so that no write
happens after it. A kill is accepted as soon as a script runs, not only
once it is busy (in Redis no client gets through earlier).

A hard limit, which Redis does not have: with ``time_limit`` set, the hook
stops a script that has run that long, whether it has written or not (the
caller is expected to undo its writes: sessiond does), and the run returns
``time_limit_error`` formatted with the limit (``{limit}``, e.g. ``1s``)
and followed by where the script was; :attr:`ScriptEngine.timed_out` then
says so. Like a kill it cannot be caught by ``pcall``, and no write
happens after it (``mark_write`` raises :class:`ScriptKilled`). Code running
inside one C function (a long ``string.find`` with a pathological pattern)
is not interrupted until it returns: Redis has the same limit.

Memory limit: the Lua heap is capped at ``max_memory`` bytes; a script that
allocates past it fails with ``ERR Error running script <sha>, not enough
memory ...`` and the engine goes on serving. Values Python builds for Lua
(command replies, cjson.decode results, KEYS/ARGV, compiled sources) are
built with the limit lifted, because lupa cannot fail there safely; if the
heap ends up over the limit they are dropped and the script gets "not
enough memory".

The sandbox is Redis 7's: base functions, ``string``, ``table``, ``math``,
``coroutine``, ``bit``, ``cjson``, ``redis``, ``KEYS`` and ``ARGV``; no
``os``, ``io``, ``debug``, ``require``, ``loadfile``, ``dofile``, ``print``,
nor ``getfenv``/``setfenv``/``newproxy`` (current Redis releases removed
them). Globals, the ``redis`` table and the libraries are read-only, with
Redis' error texts. Each run gets fresh global and library tables, so
nothing a script does is visible to the next one, except the
``math.random`` generator: it is Redis' rand48, shared by all scripts as in
Redis (a fresh engine gives the numbers a fresh redis-server gives).
``struct``, ``cmsgpack``, ``redis.acl_check_cmd`` and the ``cjson``
configuration functions are not provided.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

# lupa ships no type information; everything it returns is typed Any here.
import lupa.lua51 as lua51  # type: ignore[import-untyped]

from sessiond.protocol import (
    HALF_LLONG,
    NIL_ARRAY,
    BigNumber,
    Entries,
    Error,
    Members,
    Pairs,
    RawVerbatim,
    Status,
    Verbatim,
    d2string,
    fpconv_dtoa,
)

__all__ = [
    "BUSY_ERROR",
    "KILLED_ERROR",
    "NOSCRIPT_ERROR",
    "NOTBUSY_ERROR",
    "TIME_LIMIT_ERROR",
    "UNKILLABLE_ERROR",
    "ScriptEngine",
    "ScriptKilled",
    "shebang_flags",
]

BUSY_ERROR: Final = (
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE."
)
NOSCRIPT_ERROR: Final = "NOSCRIPT No matching script. Please use EVAL."
NOTBUSY_ERROR: Final = "NOTBUSY No scripts in execution right now."
UNKILLABLE_ERROR: Final = (
    "UNKILLABLE Sorry the script already executed write commands against the dataset. "
    "You can either wait the script termination or kill the server in a hard way using "
    "the SHUTDOWN NOSAVE command."
)
KILLED_ERROR: Final = "ERR Script killed by user with SCRIPT KILL..."
TIME_LIMIT_ERROR: Final = "ERR Script killed: it ran longer than its time limit ({limit})."

SCRIPT_FLAGS: Final = frozenset(
    {"no-writes", "allow-oom", "allow-stale", "no-cluster", "allow-cross-slot-keys"}
)

_LLONG_MIN: Final = -(2**63)
# Deeper Lua tables become an error element, as Redis does when its Lua stack
# runs out (it gets about 8000 deep); lower here so that encoding the reply
# stays well inside Python's recursion limit.
_MAX_REPLY_DEPTH: Final = 200
_NOT_ENOUGH_MEMORY: Final = b"not enough memory"


class ScriptKilled(Exception):
    """Raised by :meth:`ScriptEngine.mark_write` once a kill was accepted:
    the command must not be performed. Let it propagate out of ``call``."""


# ------------------------------------------------------------------ numbers


def _c_long_long(value: float) -> int:
    """``(long long)value`` as x86-64 computes it (out of range and NaN give
    LLONG_MIN): how Redis turns a Lua number into an integer reply."""
    if math.isfinite(value) and -(2.0**63) <= value < 2.0**63:
        return int(value)
    return _LLONG_MIN


def _arg_bytes(value: Any) -> bytes | None:
    """A ``redis.call`` argument as Redis converts it, or None if it is
    neither a string nor a number."""
    t = type(value)
    if t is bytes:
        return value  # type: ignore[no-any-return]
    if t is int:  # lupa hands integral Lua numbers over as int
        if -HALF_LLONG <= value <= HALF_LLONG:
            return b"%d" % value
        return fpconv_dtoa(float(value)).encode()
    if t is float:
        if value.is_integer() and abs(value) <= HALF_LLONG:
            return b"%d" % int(value)
        return fpconv_dtoa(value).encode()
    return None


def _seconds(value: float) -> str:
    """A duration as a person writes it: ``1s``, ``1.5s``, ``250ms``."""
    if value < 1:
        return f"{value * 1000:g}ms"
    return f"{value:g}s"


def _error_text(message: str) -> str:
    """The ``err`` field Redis builds for an error reply ``-message``
    (``luaPushErrorBuff``): a message without a space gets an ``ERR`` code."""
    message = message.strip("\r\n")
    if " " not in message:
        return "ERR " + message
    return message


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


class _Rand48:
    """Redis' ``redisLrand48``/``redisSrand48`` (drand48's generator), so
    ``math.random`` gives the numbers Redis gives."""

    __slots__ = ("_x",)
    _MASK: Final = (1 << 48) - 1

    def __init__(self) -> None:
        self._x = 0x1234ABCD330E

    def seed(self, seed: int) -> None:
        self._x = ((seed & 0xFFFFFFFF) << 16) | 0x330E

    def random(self) -> float:
        self._x = (0x5DEECE66D * self._x + 0xB) & self._MASK
        return ((self._x >> 17) % 0x7FFFFFFF) / 0x7FFFFFFF


# ------------------------------------------------------------------ bit


def _tobit(value: float) -> int:
    # LuaBitOp adds 2^52+2^51 and keeps the low word: round half to even.
    n = round(value) if math.isfinite(value) else 0
    n &= 0xFFFFFFFF
    return n - (1 << 32) if n & 0x80000000 else n


def _bit(op: bytes, *args: float) -> Any:
    """LuaBitOp's operations on numbers the Lua side has already checked."""
    a = [_tobit(x) for x in args]
    u = a[0] & 0xFFFFFFFF
    if op == b"tobit":
        return a[0]
    if op == b"bnot":
        return _tobit(~a[0])
    if op == b"band":
        r = -1
        for x in a:
            r &= x
        return _tobit(r)
    if op == b"bor":
        r = 0
        for x in a:
            r |= x
        return _tobit(r)
    if op == b"bxor":
        r = 0
        for x in a:
            r ^= x
        return _tobit(r)
    if op == b"bswap":
        return _tobit(int.from_bytes(u.to_bytes(4, "little"), "big"))
    if op == b"tohex":
        width = a[1] if len(args) > 1 else 8
        upper = width < 0
        width = min(abs(width), 8)
        text = format(u, "08X" if upper else "08x")
        return text[8 - width :].encode()
    n = a[1] & 31
    if op == b"lshift":
        return _tobit(u << n)
    if op == b"rshift":
        return _tobit(u >> n)
    if op == b"arshift":
        return _tobit(a[0] >> n)
    if op == b"rol":
        return _tobit((u << n) | (u >> (32 - n)))
    if op == b"ror":
        return _tobit((u >> n) | (u << (32 - n)))
    raise ValueError(op)


# ------------------------------------------------------------------ cjson.decode

_JSON_NUMBER: Final = re.compile(
    rb"[+-]?(?:0[xX](?:[0-9a-fA-F]+(?:\.[0-9a-fA-F]*)?|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?"
    rb"|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
    rb"|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?|[nN][aA][nN](?:\([0-9A-Za-z_]*\))?)"
)
_JSON_PLAIN: Final = re.compile(rb'[^"\\]*')
_JSON_ESCAPES: Final = {
    ord('"'): b'"', ord("\\"): b"\\", ord("/"): b"/", ord("b"): b"\b",
    ord("f"): b"\f", ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t",
}  # fmt: skip
_JSON_SINGLE: Final = {
    ord("{"): "T_OBJ_BEGIN", ord("}"): "T_OBJ_END", ord("["): "T_ARR_BEGIN",
    ord("]"): "T_ARR_END", ord(":"): "T_COLON", ord(","): "T_COMMA",
}  # fmt: skip
_JSON_SPACE: Final = frozenset(b" \t\r\n")
_JSON_MAX_DEPTH: Final = 1000


class _JsonError(Exception):
    pass


def _json_number(data: bytes, i: int) -> float | None:
    m = _JSON_NUMBER.match(data, i)
    if m is None:
        return None
    text = m.group().lower()
    body = text.lstrip(b"+-")
    if body.startswith(b"0x"):
        value = float.fromhex(text.decode())
    elif body.startswith(b"nan"):
        value = math.nan
    elif body.startswith(b"inf"):
        value = math.inf
    else:
        value = float(text)
    return -value if text.startswith(b"-") and body[:1] in (b"n", b"i") else value


def _json_invalid_number(data: bytes, i: int) -> bool:
    """lua-cjson's ``json_is_invalid_number``: forms strtod takes but JSON does not."""
    if data[i : i + 1] == b"+":
        return True
    if data[i : i + 1] == b"-":
        i += 1
    c = data[i : i + 1]
    if c == b"0":
        return data[i + 1 : i + 2] in (b"x", b"X") or data[i + 1 : i + 2].isdigit()
    if c and c <= b"9":
        return False
    head = data[i : i + 3].lower()
    return head in (b"inf", b"nan")


class _JsonTokens:
    """lua-cjson 2.1's tokenizer (``decode_invalid_numbers`` on, as in Redis)."""

    def __init__(self, data: bytes) -> None:
        self.data = data.split(b"\0", 1)[0]  # the C parser stops at a NUL
        self.pos = 0

    def next(self) -> tuple[str, Any, int]:
        data, i, n = self.data, self.pos, len(self.data)
        while i < n and data[i] in _JSON_SPACE:
            i += 1
        if i >= n:
            self.pos = i
            return "T_END", None, i
        c = data[i]
        if c in _JSON_SINGLE:
            self.pos = i + 1
            return _JSON_SINGLE[c], None, i
        if c == 0x22:
            return self._string(i)
        if c == 0x2D or 0x30 <= c <= 0x39 or _json_invalid_number(data, i):
            m = _JSON_NUMBER.match(data, i)
            value = _json_number(data, i)
            if m is None or value is None:
                self.pos = i
                return "T_ERROR", "invalid number", i
            self.pos = m.end()
            return "T_NUMBER", value, i
        for word, value in ((b"true", True), (b"false", False), (b"null", None)):
            if data.startswith(word, i):
                self.pos = i + len(word)
                return ("T_NULL" if value is None else "T_BOOLEAN"), value, i
        self.pos = i
        return "T_ERROR", "invalid token", i

    def _string(self, start: int) -> tuple[str, Any, int]:
        data, n = self.data, len(self.data)
        out = bytearray()
        i = start + 1
        while True:
            m = _JSON_PLAIN.match(data, i)
            assert m is not None
            out += m.group()
            i = m.end()
            if i >= n:
                self.pos = i
                return "T_ERROR", "unexpected end of string", i
            if data[i] == 0x22:
                self.pos = i + 1
                return "T_STRING", bytes(out), start
            escape = data[i + 1] if i + 1 < n else 0
            if escape == 0x75:  # \u
                j = self._unicode(i, out)
                if j < 0:
                    self.pos = i
                    return "T_ERROR", "invalid unicode escape code", i
                i = j
                continue
            if escape not in _JSON_ESCAPES:
                self.pos = i
                return "T_ERROR", "invalid escape code", i
            out += _JSON_ESCAPES[escape]
            i += 2

    def _unicode(self, i: int, out: bytearray) -> int:
        """Append the code point of the ``\\uXXXX`` escape (two for a
        surrogate pair) at ``i``; the position after it, or -1."""

        def hex4(at: int) -> int:
            digits = self.data[at : at + 4]
            if len(digits) != 4 or not all(chr(d) in "0123456789abcdefABCDEF" for d in digits):
                return -1
            return int(digits, 16)

        code = hex4(i + 2)
        if code < 0:
            return -1
        end = i + 6
        if 0xDC00 <= code <= 0xDFFF:
            return -1
        if 0xD800 <= code <= 0xDBFF:
            if self.data[end : end + 2] != b"\\u":
                return -1
            low = hex4(end + 2)
            if not 0xDC00 <= low <= 0xDFFF:
                return -1
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
            end += 6
        out += chr(code).encode("utf-8", "surrogatepass")
        return end


def _json_decode(data: bytes, new_table: Callable[[], Any], null: Any) -> Any:
    """Decode ``data`` into Lua values as Redis' cjson.decode does, with its
    error texts (raised as :class:`_JsonError`). Iterative, so that 1000
    levels of nesting do not need 1000 Python frames."""
    tokens = _JsonTokens(data)

    def fail(expected: str, token: tuple[str, Any, int]) -> _JsonError:
        kind, value, index = token
        found = value if kind == "T_ERROR" else kind
        return _JsonError(f"Expected {expected} but found {found} at character {index + 1}")

    # Each open container: [table, is_object, next index or pending key].
    stack: list[list[Any]] = []
    token = tokens.next()
    result: Any = None
    while True:
        kind, value, index = token
        # A value is expected here.
        if kind in ("T_OBJ_BEGIN", "T_ARR_BEGIN"):
            if len(stack) + 1 > _JSON_MAX_DEPTH:
                raise _JsonError(
                    f"Found too many nested data structures ({len(stack) + 1}) "
                    f"at character {index + 1}"
                )
            is_object = kind == "T_OBJ_BEGIN"
            frame: list[Any] = [new_table(), is_object, 1]
            token = tokens.next()
            if token[0] == ("T_OBJ_END" if is_object else "T_ARR_END"):
                result = frame[0]
            else:
                if is_object:
                    if token[0] != "T_STRING":
                        raise fail("object key string", token)
                    frame[2] = token[1]
                    token = tokens.next()
                    if token[0] != "T_COLON":
                        raise fail("colon", token)
                    token = tokens.next()
                stack.append(frame)
                continue
        elif kind in ("T_STRING", "T_NUMBER", "T_BOOLEAN"):
            result = value
        elif kind == "T_NULL":
            result = null
        else:
            raise fail("value", token)
        # ``result`` is complete: store it in its container, close what ends.
        while True:
            if not stack:
                token = tokens.next()
                if token[0] != "T_END":
                    raise fail("the end", token)
                return result
            frame = stack[-1]
            table, is_object, slot = frame
            table[slot] = result
            token = tokens.next()
            end = "T_OBJ_END" if is_object else "T_ARR_END"
            if token[0] == end:
                stack.pop()
                result = table
                continue
            if token[0] != "T_COMMA":
                raise fail("comma or object end" if is_object else "comma or array end", token)
            token = tokens.next()
            if is_object:
                if token[0] != "T_STRING":
                    raise fail("object key string", token)
                frame[2] = token[1]
                token = tokens.next()
                if token[0] != "T_COLON":
                    raise fail("colon", token)
                token = tokens.next()
            else:
                frame[2] = slot + 1
            break


# ------------------------------------------------------------------ the Lua side

# Runs once per engine, as chunk "=sessiond", with the Python primitives as
# arguments; returns the functions the engine calls. Everything a script can
# reach is built here from local copies, so a script cannot get at the real
# globals (which hold debug, io, os and lupa's python module).
_HOST_LUA: Final = r"""
local py_call, py_check, py_log, py_sha1, py_setresp, py_random, py_srandom, py_bit,
      py_decode, redis_version, redis_version_num = ...

local type, tostring, tonumber, select, error, pcall, xpcall = type, tostring, tonumber, select,
    error, pcall, xpcall
local next, pairs, ipairs, rawget, rawset, rawequal = next, pairs, ipairs, rawget, rawset, rawequal
local setmetatable, getmetatable, unpack, loadstring = setmetatable, getmetatable, unpack,
    loadstring
local setfenv, collectgarbage, newproxy = setfenv, collectgarbage, newproxy
local getinfo, sethook = debug.getinfo, debug.sethook
local cocreate, coresume = coroutine.create, coroutine.resume
local byte, char, gsub, format, rep = string.byte, string.char, string.gsub, string.format,
    string.rep
local concat, insert, remove, sort = table.concat, table.insert, table.remove, table.sort
local floor, ceil, huge = math.floor, math.ceil, math.huge

local READONLY = "Attempt to modify a readonly table"
local KILLED = "ERR Script killed by user with SCRIPT KILL..."

local function copy(t)
  local c = {}
  for k, v in next, t do c[k] = v end
  return c
end

-- Read-only views. A script sees its globals and every library through a
-- proxy made for its run: writes go through __newindex (refused), and the
-- functions that write raw (rawset, setmetatable, table.insert...) refuse
-- proxies. A write that got past all this would still only touch a table
-- that dies with the run.
-- Weak in values too: Lua 5.1 has no ephemerons, and a run's globals refer
-- to their own proxy (_G), so a weak-keyed entry would never go.
local backing = setmetatable({}, {__mode = "kv"})  -- proxy -> the table it shows
local shown_meta = setmetatable({}, {__mode = "k"})  -- proxy -> what getmetatable shows

local function readonly() error(READONLY, 2) end

local function proxy(t)
  local p = setmetatable({}, {__index = t, __newindex = readonly, __metatable = false})
  backing[p] = t
  return p
end

local function s_next(t, k)
  local b = backing[t]
  if b then return next(b, k) end
  return next(t, k)
end

local function s_pairs(t)
  if backing[t] then return s_next, t, nil end
  return pairs(t)
end

local function s_rawget(t, k)
  local b = backing[t]
  if b then return rawget(b, k) end
  return rawget(t, k)
end

local function s_rawset(t, k, v)
  if backing[t] then error(READONLY, 0) end
  return rawset(t, k, v)
end

local function s_setmetatable(t, mt)
  if backing[t] then error(READONLY, 0) end
  return setmetatable(t, mt)
end

local function s_getmetatable(t)
  if backing[t] then return shown_meta[t] end
  return getmetatable(t)
end

local function refuse_proxy(f)
  return function(t, ...)
    if backing[t] then error(READONLY, 0) end
    return f(t, ...)
  end
end

-- Redis parses every chunk as source text; stock Lua would load bytecode,
-- which can break out of any sandbox. A leading space makes the parser see
-- the bytecode signature and fail with Redis' own message.
local function s_loadstring(s, name)
  if type(s) == "string" and byte(s, 1) == 27 then
    return loadstring(" " .. s, name or s)
  end
  return loadstring(s, name)
end

local function s_load(reader, name)
  if type(reader) ~= "function" then return load(reader, name) end
  local parts = {}
  while true do
    local piece = reader()
    if piece == nil or piece == "" then break end
    if type(piece) ~= "string" and type(piece) ~= "number" then
      return nil, "reader function must return a string"
    end
    parts[#parts + 1] = piece
  end
  return s_loadstring(concat(parts), name or "=(load)")
end

-- Redis 7's pcall hands back the text of an error table, as older Redis did.
local function pcall_result(ok, ...)
  if ok then return ok, ... end
  local e = ...
  if type(e) == "table" then
    local text = e.err
    if type(text) == "string" or type(text) == "number" then return false, text end
  end
  return false, e
end
local function s_pcall(f, ...) return pcall_result(pcall(f, ...)) end

-- An empty string repeated loops inside C, where no hook can stop it.
local function s_rep(s, n, ...)
  if s == "" and tonumber(n) then return "" end
  return rep(s, n, ...)
end

local function check_int(fname, i, v, given)
  local x = tonumber(v)
  if x == nil or (type(v) ~= "number" and type(v) ~= "string") then
    error(format("bad argument #%d to '%s' (number expected, got %s)", i, fname,
                 i > given and "no value" or type(v)), 3)
  end
  return x >= 0 and floor(x) or ceil(x)
end

local function check_number(fname, i, v, given)
  local x = tonumber(v)
  if x == nil or (type(v) ~= "number" and type(v) ~= "string") then
    error(format("bad argument #%d to '%s' (number expected, got %s)", i, fname,
                 i > given and "no value" or type(v)), 3)
  end
  return x
end

local function s_random(...)
  local given = select("#", ...)
  local r = py_random()
  if given == 0 then return r end
  if given == 1 then
    local u = check_int("random", 1, ..., given)
    if u < 1 then error("bad argument #1 to 'random' (interval is empty)", 2) end
    return floor(r * u) + 1
  end
  if given == 2 then
    local l = check_int("random", 1, (...), given)
    local u = check_int("random", 2, select(2, ...), given)
    if l > u then error("bad argument #2 to 'random' (interval is empty)", 2) end
    return floor(r * (u - l + 1)) + l
  end
  error("wrong number of arguments", 2)
end

local function s_randomseed(...)
  py_srandom(check_int("randomseed", 1, (...), select("#", ...)))
end

-- bit: LuaBitOp's interface, the arithmetic is done by the host.
local bitlib = {}
for _, name in ipairs({"tobit", "bnot", "bswap"}) do
  bitlib[name] = function(...)
    return py_bit(name, check_number(name, 1, (...), select("#", ...)))[1]
  end
end
for _, name in ipairs({"band", "bor", "bxor"}) do
  bitlib[name] = function(...)
    local given = select("#", ...)
    local args = {...}
    for i = 1, (given > 0 and given or 1) do
      args[i] = check_number(name, i, args[i], given)
    end
    return py_bit(name, unpack(args, 1, given > 0 and given or 1))[1]
  end
end
for _, name in ipairs({"lshift", "rshift", "arshift", "rol", "ror"}) do
  bitlib[name] = function(...)
    local given = select("#", ...)
    local a, b = ...
    return py_bit(name, check_number(name, 1, a, given), check_number(name, 2, b, given))[1]
  end
end
bitlib.tohex = function(...)
  local given = select("#", ...)
  local a, b = ...
  local x = check_number("tohex", 1, a, given)
  if b == nil then return py_bit("tohex", x)[1] end
  return py_bit("tohex", x, check_number("tohex", 2, b, given))[1]
end

-- cjson: lua-cjson 2.1 as Redis configures it.
local NULL = newproxy(false)
local ESCAPES = {["\""] = "\\\"", ["\\"] = "\\\\", ["/"] = "\\/", ["\b"] = "\\b",
                 ["\f"] = "\\f", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
                 ["\127"] = "\\u007f"}
for i = 0, 31 do
  local c = char(i)
  if not ESCAPES[c] then ESCAPES[c] = format("\\u%04x", i) end
end

local function json_string(s)
  return "\"" .. gsub(s, "[%c\"\\/]", ESCAPES) .. "\""
end

local function json_number(x)
  if x ~= x or x == huge or x == -huge then
    error("Cannot serialise number: must not be NaN or Inf", 0)
  end
  return format("%.14g", x)
end

local json_value
local function json_table(t, depth, out)
  depth = depth + 1
  if depth > 1000 then error(format("Cannot serialise, excessive nesting (%d)", depth), 0) end
  local max, items = 0, 0
  for k in next, t do
    if type(k) == "number" and k >= 1 and floor(k) == k then
      if k > max then max = k end
      items = items + 1
    else
      max = -1
      break
    end
  end
  if max > items * 2 and max > 10 then
    error("Cannot serialise table: excessively sparse array", 0)
  end
  if max > 0 then
    out[#out + 1] = "["
    for i = 1, max do
      if i > 1 then out[#out + 1] = "," end
      json_value(rawget(t, i), depth, out)
    end
    out[#out + 1] = "]"
    return
  end
  out[#out + 1] = "{"
  local first = true
  for k, v in next, t do
    if not first then out[#out + 1] = "," end
    first = false
    local kt = type(k)
    if kt == "string" then
      out[#out + 1] = json_string(k)
    elseif kt == "number" then
      out[#out + 1] = "\"" .. json_number(k) .. "\""
    else
      error("Cannot serialise " .. kt .. ": table key must be a number or string", 0)
    end
    out[#out + 1] = ":"
    json_value(v, depth, out)
  end
  out[#out + 1] = "}"
end

json_value = function(v, depth, out)
  local t = type(v)
  if t == "string" then out[#out + 1] = json_string(v)
  elseif t == "number" then out[#out + 1] = json_number(v)
  elseif t == "boolean" then out[#out + 1] = v and "true" or "false"
  elseif t == "nil" or v == NULL then out[#out + 1] = "null"
  elseif t == "table" then json_table(backing[v] or v, depth, out)
  else error("Cannot serialise " .. t .. ": type not supported", 0) end
end

local function encode_result(ok, err)
  if ok then return end
  if type(err) == "string" then error(err, 3) end
  error(err, 0)
end

local cjson = {null = NULL}
cjson.encode = function(...)
  if select("#", ...) ~= 1 then
    error("bad argument #1 to 'encode' (expected 1 argument)", 2)
  end
  local out = {}
  encode_result(pcall(json_value, (...), 0, out))
  return concat(out)
end
cjson.decode = function(...)
  if select("#", ...) ~= 1 then
    error("bad argument #1 to 'decode' (expected 1 argument)", 2)
  end
  local s = ...
  if type(s) ~= "string" and type(s) ~= "number" then
    error("bad argument #1 to 'decode' (string expected, got " .. type(s) .. ")", 2)
  end
  local ok, box = py_decode(tostring(s))
  if ok then return box[1] end
  if ok == nil then error("not enough memory", 0) end
  error(box[1], 2)
end

-- The first frame, from ``level`` up, that runs script code: frames of this
-- chunk, C functions and tail-call markers are skipped, so positions are the
-- script's, as Redis reports them.
local function user_frame(level)
  while true do
    local i = getinfo(level + 1, "Sl")
    if i == nil then return nil end
    if (i.what == "Lua" or i.what == "main") and i.source ~= "=sessiond" then return i end
    level = level + 1
  end
end

-- Where the last kill error was raised: when it finally escapes, it may do
-- so from code past the error handler, so the handler cannot tell.
local kill_at = {}

local function raise_killed()
  local i = user_frame(2)
  if i then kill_at.source, kill_at.line = i.source, i.currentline end
  error({err = KILLED}, 0)
end

-- After a kill, every instruction raises again (in whichever coroutine the
-- script is running), so pcall cannot keep a killed script alive.
local function kill_now()
  sethook(raise_killed, "l", 1)
  raise_killed()
end

-- redis.*

-- Values come boxed in a table the host built with the heap limit lifted
-- (see ScriptEngine._lifted).
local function call_result(raise, status, box)
  if status == 0 then return box[1] end
  if status == 2 then kill_now() end
  if status == 3 then error("not enough memory", 0) end
  if raise then error(box[1], 0) end
  return box[1]
end

local redis = {
  LOG_DEBUG = 0, LOG_VERBOSE = 1, LOG_NOTICE = 2, LOG_WARNING = 3,
  REPL_NONE = 0, REPL_AOF = 1, REPL_SLAVE = 2, REPL_REPLICA = 2, REPL_ALL = 3,
  REDIS_VERSION = redis_version, REDIS_VERSION_NUM = redis_version_num,
}
redis.call = function(...) return call_result(true, py_call(...)) end
redis.pcall = function(...) return call_result(false, py_call(...)) end

local function single_field(field, ...)
  local s = ...
  if select("#", ...) ~= 1 or type(s) ~= "string" then
    return {err = "ERR wrong number or type of arguments"}
  end
  return {[field] = s}
end
redis.status_reply = function(...) return single_field("ok", ...) end
redis.error_reply = function(...)
  local t = single_field("err", ...)
  if t.err == nil then return t end
  local s = t.err
  if byte(s, 1) == 45 then s = s:sub(2) end  -- a leading '-' is the reply's, not the code's
  s = gsub(s, "[\r\n]+$", "")
  if not s:find(" ", 1, true) then s = "ERR " .. s end
  return {err = s}
end

redis.sha1hex = function(...)
  if select("#", ...) ~= 1 then error({err = "ERR wrong number of arguments"}, 0) end
  local s = ...
  if type(s) ~= "string" and type(s) ~= "number" then s = "" end
  return py_sha1(tostring(s))[1]
end

redis.log = function(...)
  local given = select("#", ...)
  if given < 2 then error({err = "ERR redis.log() requires two arguments or more."}, 0) end
  local level = tonumber((...))
  if level == nil then error({err = "ERR First argument must be a number (log level)."}, 0) end
  level = level >= 0 and floor(level) or ceil(level)
  if level < 0 or level > 3 then error({err = "ERR Invalid debug level."}, 0) end
  local parts = {}
  for i = 2, given do
    local v = select(i, ...)
    if type(v) == "string" or type(v) == "number" then parts[#parts + 1] = tostring(v) end
  end
  py_log(level, concat(parts, " "))
end

redis.setresp = function(...)
  if select("#", ...) ~= 1 then
    error({err = "ERR redis.setresp() requires one argument."}, 0)
  end
  local resp = tonumber((...)) or 0
  resp = resp >= 0 and floor(resp) or ceil(resp)
  if resp ~= 2 and resp ~= 3 then error({err = "ERR RESP version must be 2 or 3."}, 0) end
  py_setresp(resp)
end

-- Replication is always by effects in Redis 7: these only check their argument.
redis.set_repl = function(...)
  if select("#", ...) ~= 1 then
    error({err = "ERR redis.set_repl() requires one argument."}, 0)
  end
  local flags = tonumber((...)) or 0
  flags = flags >= 0 and floor(flags) or ceil(flags)
  if flags < 0 or flags > 3 then
    error({err = "ERR Invalid replication flags. "
                 .. "Use REPL_AOF, REPL_REPLICA, REPL_ALL or REPL_NONE."}, 0)
  end
end
redis.replicate_commands = function() return true end
redis.breakpoint = function() return false end
redis.debug = function() end

-- What scripts see. Library tables are copies, so the host keeps the originals.
local LIBS = {
  string = copy(string), table = copy(table), math = copy(math),
  coroutine = copy(coroutine), bit = bitlib, cjson = cjson, redis = redis,
}
LIBS.string.rep = s_rep
LIBS.table.insert = refuse_proxy(insert)
LIBS.table.remove = refuse_proxy(remove)
LIBS.table.sort = refuse_proxy(sort)
LIBS.math.random = s_random
LIBS.math.randomseed = s_randomseed

local GLOBALS = {
  assert = assert, collectgarbage = collectgarbage, error = error, gcinfo = gcinfo,
  getmetatable = s_getmetatable, ipairs = ipairs, load = s_load, loadstring = s_loadstring,
  next = s_next, pairs = s_pairs, pcall = s_pcall, rawequal = rawequal, rawget = s_rawget,
  rawset = s_rawset, select = select, setmetatable = s_setmetatable, tonumber = tonumber,
  tostring = tostring, type = type, unpack = unpack, xpcall = xpcall, _VERSION = _VERSION,
}

-- Method calls on strings ("x"):rep(3) go through the string metatable.
local string_meta = getmetatable("")
string_meta.__index = LIBS.string

local MISSING = {
  __index = function(_, name)
    error("Script attempted to access nonexistent global variable '" .. tostring(name) .. "'", 2)
  end,
}

local function new_env(keys, argv)
  local g = copy(GLOBALS)
  for name, lib in next, LIBS do g[name] = proxy(lib) end
  g.KEYS, g.ARGV = keys, argv
  setmetatable(g, MISSING)
  local env = proxy(g)
  g._G = env
  shown_meta[env] = proxy({})
  string_meta.__metatable = proxy({__index = g.string})
  return env
end

-- The error handler: Redis' __redis__err__handler, which notes where the
-- error happened.
local function handler(e)
  local info = user_frame(2)
  local text
  if type(e) == "table" then
    -- Redis reads the field with lua_isstring/lua_tostring: a number is
    -- its text, anything else no message.
    text = rawget(e, "err")
    if type(text) == "number" then
      text = tostring(text)
    elseif type(text) ~= "string" then
      text = nil
    end
  else
    text = tostring(e)
    if info then
      -- A builtin this chunk wraps reports its own position; show the script's.
      local where = info.short_src .. ":" .. tostring(info.currentline) .. ": "
      text = gsub(text, "^sessiond:%d+: ", function() return where end)
    end
    text = "ERR " .. text
  end
  return {err = text, source = info and info.source, line = info and info.currentline}
end

local function hook()
  if py_check() then kill_now() end
end

-- debug.sethook keeps a hook function per coroutine, and a coroutine does
-- not inherit it: every coroutine a script creates gets the hook, or an
-- endless loop inside one could not be stopped. After the run their hooks
-- are removed, which also drops them from debug's table of hooks.
local threads, hook_count = {}, 0

local function s_cocreate(f)
  if type(f) ~= "function" then error("bad argument #1 to 'create' (Lua function expected)", 2) end
  local co = cocreate(f)
  sethook(co, hook, "", hook_count)
  threads[#threads + 1] = co
  return co
end

local function pack(...) return {n = select("#", ...), ...} end

local function s_wrap(f)
  if type(f) ~= "function" then error("bad argument #1 to 'wrap' (Lua function expected)", 2) end
  local co = s_cocreate(f)
  return function(...)
    local r = pack(coresume(co, ...))
    if r[1] then return unpack(r, 2, r.n) end
    local e = r[2]
    if type(e) == "string" or type(e) == "number" then error(e, 2) end
    error(e, 0)
  end
end
LIBS.coroutine.create = s_cocreate
LIBS.coroutine.wrap = s_wrap

local HOST = {}

-- Compiling gives bytecode, which the host rewrites (see _without_tail_calls)
-- and loads back with load_binary.
local dump = string.dump
function HOST.compile(source)
  if byte(source, 1) == 27 then source = " " .. source end
  local f, err = loadstring(source, "@user_script")
  if f == nil then return nil, err end
  return dump(f), nil
end

function HOST.load_binary(code)
  local f, err = loadstring(code, "=user_script")
  return f, err
end

function HOST.run(fn, keys, argv, count)
  local env = new_env(keys, argv)
  setfenv(fn, env)
  local co = cocreate(function()
    setfenv(0, env)  -- chunks the script loads get its globals too
    return xpcall(fn, handler)
  end)
  hook_count = count
  sethook(co, hook, "", count)
  threads = {co}
  kill_at.source, kill_at.line = nil, nil
  local resumed, ok, result = coresume(co)
  if not resumed then ok, result = false, ok end
  for i = 1, #threads do sethook(threads[i]) end
  threads = {}
  -- A script may have stopped or retuned the collector.
  collectgarbage("restart")
  collectgarbage("setpause", 200)
  collectgarbage("setstepmul", 200)
  if not ok then collectgarbage("collect") end
  return ok, result, kill_at.source, kill_at.line
end

-- Which kind of reply a returned table is, read raw as Redis does.
function HOST.classify(t)
  local v = rawget(t, "err")
  if type(v) == "string" then return "err", v, nil, 0 end
  v = rawget(t, "ok")
  if type(v) == "string" then return "ok", v, nil, 0 end
  v = rawget(t, "double")
  -- (lupa hands an integral number over as an int: -0 would lose its sign)
  if type(v) == "number" then return "double", v, v == 0 and 1 / v < 0, 0 end
  v = rawget(t, "big_number")
  if type(v) == "string" then return "big_number", v, nil, 0 end
  v = rawget(t, "verbatim_string")
  if type(v) == "table" then
    local f, s = rawget(v, "format"), rawget(v, "string")
    if type(f) == "string" and type(s) == "string" then return "verbatim", f, s, 0 end
  end
  v = rawget(t, "map")
  if type(v) == "table" then
    local keys, values, n = {}, {}, 0
    for k, x in next, v do n = n + 1; keys[n] = k; values[n] = x end
    return "map", keys, values, n
  end
  v = rawget(t, "set")
  if type(v) == "table" then
    local keys, n = {}, 0
    for k in next, v do n = n + 1; keys[n] = k end
    return "set", keys, nil, n
  end
  local items, n = {}, 0
  while true do
    local x = rawget(t, n + 1)
    if x == nil then break end
    n = n + 1
    items[n] = x
  end
  return "array", items, nil, n
end

HOST.null = NULL
return HOST
"""


def _without_tail_calls(code: bytearray | bytes) -> bytes:
    """Turn every tail call in Lua 5.1 bytecode into a plain call.

    In Redis ``redis.call`` and the libraries are C functions, and a tail
    call to a C function keeps the caller's frame, so ``return
    redis.call(...)`` reports its error "on @user_script:1". Here they are
    partly Lua functions, and a tail call to a Lua function would drop the
    script's frame and with it the position. ``TAILCALL A B 0`` is always
    followed by ``RETURN A 0``, so ``CALL A B 0`` returns the same values.
    The price: a script's own tail recursion is bounded by Lua's call depth
    (about 20000 frames) instead of unbounded.
    """
    data = bytearray(code)
    if data[:5] != b"\x1bLua\x51" or data[6] != 1 or data[9] != 4:
        raise ValueError("not little-endian Lua 5.1 bytecode")
    int_size, size_t_size, number_size = data[7], data[8], data[10]
    pos = 12

    def integer(size: int) -> int:
        nonlocal pos
        value = int.from_bytes(data[pos : pos + size], "little")
        pos += size
        return value

    def skip_string() -> None:
        nonlocal pos
        length = integer(size_t_size)
        pos += length

    def function() -> None:
        nonlocal pos
        skip_string()  # source
        pos += 2 * int_size + 4  # line defined, last line, nups, params, vararg, stack
        for _ in range(integer(int_size)):
            if data[pos] & 0x3F == 29:  # OP_TAILCALL
                data[pos] = (data[pos] & 0xC0) | 28  # OP_CALL
            pos += 4
        for _ in range(integer(int_size)):
            kind = data[pos]
            pos += 1
            if kind == 1:
                pos += 1
            elif kind == 3:
                pos += number_size
            elif kind == 4:
                skip_string()
        for _ in range(integer(int_size)):
            function()
        lines = integer(int_size)
        pos += lines * int_size  # line info
        for _ in range(integer(int_size)):  # local names
            skip_string()
            pos += 2 * int_size
        for _ in range(integer(int_size)):  # upvalue names
            skip_string()

    function()
    return bytes(data)


def _weakly(method: Callable[..., Any]) -> Callable[..., Any]:
    """A function for Lua to call that calls ``method`` of the engine without
    holding the engine: the runtime keeps what Lua holds in a dict the cyclic
    GC sees, so bound methods would make engine and runtime a cycle, and the
    collector clearing that cycle can close the Lua state while wrappers of
    its values still point into it (a segfault in whatever runs next). With no
    cycle, an engine that is dropped is freed by reference counting, in an
    order lupa handles: its Lua objects first, the runtime last."""
    ref = weakref.WeakMethod(method)

    def call(*args: Any) -> Any:
        bound = ref()
        if bound is None:
            raise RuntimeError("the script engine is gone")
        return bound(*args)

    return call


class _Script:
    __slots__ = ("flags", "function")

    def __init__(self, function: Any, flags: frozenset[str] | None) -> None:
        self.function = function
        self.flags = flags


def shebang_flags(source: bytes) -> frozenset[str] | None:
    """The flags a script's ``#!lua`` line declares, without compiling it:
    ``None`` without a shebang, or with one that does not parse (running the
    script will say why)."""
    try:
        return _parse_shebang(source)[0]
    except Error:
        return None


def _parse_shebang(source: bytes) -> tuple[frozenset[str] | None, int]:
    """Redis' ``evalExtractShebangFlags``: the flags of a ``#!lua`` first line
    (None without one) and its length, which the compiler skips (keeping
    the newline, so line numbers stay right)."""
    if not source.startswith(b"#!"):
        return None, 0
    end = source.find(b"\n")
    if end < 0:
        raise Error("ERR Invalid script shebang")
    parts = source[:end].split()
    if parts[0] != b"#!lua":
        raise Error(f"ERR Unexpected engine in script shebang: {_text(parts[0])}")
    flags: set[str] = set()
    for part in parts[1:]:
        if not part.startswith(b"flags="):
            raise Error(f"ERR Unknown lua shebang option: {_text(part)}")
        for flag in part[6:].split(b","):
            if not flag:
                continue
            name = _text(flag)
            if name not in SCRIPT_FLAGS:
                raise Error(f"ERR Unexpected flag in script shebang: {name}")
            flags.add(name)
    return frozenset(flags), end


class ScriptEngine:
    """Compiles, caches and runs Redis scripts; see the module docstring."""

    def __init__(
        self,
        *,
        busy_threshold: float = 5.0,
        max_memory: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[int, str], None] | None = None,
        on_busy: Callable[[], None] | None = None,
        hook_interval: int = 100_000,
        redis_version: str = "7.2.0",
        time_limit: float = 0.0,
        time_limit_error: str = TIME_LIMIT_ERROR,
    ) -> None:
        self.busy_threshold = busy_threshold
        self.time_limit = time_limit
        self.time_limit_error = time_limit_error
        self._timed_out = False
        self.max_memory = max_memory
        self._clock = clock
        self._log = log
        self._on_busy = on_busy
        self._hook_interval = hook_interval
        self._scripts: dict[str, _Script] = {}
        self._rand = _Rand48()
        # Held for every use of the Lua runtime, which serves one thread at a time.
        self._lua_lock = threading.Lock()
        self._lua_thread: int | None = None
        # Guards the run state that kill() and mark_write() share with the run.
        self._state = threading.Lock()
        self._running = False
        self._killed = False
        self._dirty = False
        self._busy = False
        self._started = 0.0
        self._resp3 = False
        self._call: Callable[[list[bytes]], Any] | None = None
        self._failure: BaseException | None = None
        major, minor, patch = (int(x) for x in [*redis_version.split("."), "0", "0"][:3])
        self._lua = lua51.LuaRuntime(
            encoding=None,
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=True,
            max_memory=max_memory,
            attribute_filter=self._deny_attribute,
        )
        loader = self._lua.eval("loadstring")(_HOST_LUA.encode(), b"=sessiond")
        self._host = loader(
            _weakly(self._lua_call),
            _weakly(self._lua_check),
            _weakly(self._lua_log),
            _weakly(self._lua_sha1),
            _weakly(self._lua_setresp),
            self._rand.random,
            _weakly(self._lua_srandom),
            _weakly(self._lua_bit),
            _weakly(self._lua_decode),
            redis_version.encode(),
            (major << 16) | (minor << 8) | patch,
        )
        self._compile = self._host[b"compile"]
        self._load_binary = self._host[b"load_binary"]
        self._run = self._host[b"run"]
        self._classify = self._host[b"classify"]
        self._collect_garbage = self._lua.eval("collectgarbage")
        self._null = self._host[b"null"]

    @staticmethod
    def _deny_attribute(obj: Any, name: Any, is_setting: bool) -> Any:
        # Scripts never see Python objects; should one leak (an exception
        # object through pcall), it must not lead anywhere.
        raise AttributeError("Python attributes are not reachable from scripts")

    # ----------------------------------------------------------- the cache

    def load(self, source: bytes) -> str:
        """Compile ``source`` and cache it (SCRIPT LOAD); its lowercase SHA1.
        Raises :class:`Error` with Redis' text if it does not compile."""
        with self._lua_session():
            return self._load(source)[0]

    def _load(self, source: bytes) -> tuple[str, _Script]:
        sha = hashlib.sha1(source).hexdigest()
        script = self._scripts.get(sha)
        if script is not None:
            return sha, script
        flags, skip = _parse_shebang(source)
        function = None
        with self._lifted() as fits:  # lupa pushes the source outside Lua's protection
            code, message = self._compile(source[skip:])
            if code is not None:
                function, message = self._load_binary(_without_tail_calls(code))
            del code
            if not fits():
                function, message = None, _NOT_ENOUGH_MEMORY
        if function is None:
            raise Error(f"ERR Error compiling script (new function): {_text(message)}")
        script = _Script(function, flags)
        self._scripts[sha] = script
        return sha, script

    def exists(self, shas: Iterable[str | bytes]) -> list[int]:
        """SCRIPT EXISTS: 1 or 0 per sha (case does not matter)."""
        found = []
        for sha in shas:
            key = (sha.decode("ascii", "replace") if isinstance(sha, bytes) else sha).lower()
            found.append(1 if key in self._scripts else 0)
        return found

    def flush(self) -> None:
        """SCRIPT FLUSH: forget every cached script. A running script finishes."""
        self._scripts = {}

    def script_flags(self, sha: str | bytes) -> frozenset[str] | None:
        """The flags of a cached script's ``#!lua flags=...`` line; None if it
        has no shebang (Redis' compatibility mode) or is not cached."""
        key = (sha.decode("ascii", "replace") if isinstance(sha, bytes) else sha).lower()
        script = self._scripts.get(key)
        return None if script is None else script.flags

    def __len__(self) -> int:
        return len(self._scripts)

    @property
    def memory_used(self) -> int:
        """Bytes of Lua heap in use (Redis' ``used_memory_lua``)."""
        return int(self._lua.get_memory_used())

    # ----------------------------------------------------------- running

    def run(
        self,
        source: bytes,
        keys: Sequence[bytes],
        argv: Sequence[bytes],
        call: Callable[[list[bytes]], Any],
        *,
        resp3: bool,
    ) -> Any:
        """EVAL: compile ``source`` if it is new, run it, return its reply value."""
        with self._lua_session():
            sha, script = self._load(source)
            return self._execute(sha, script, keys, argv, call, resp3)

    def run_sha(
        self,
        sha: str | bytes,
        keys: Sequence[bytes],
        argv: Sequence[bytes],
        call: Callable[[list[bytes]], Any],
        *,
        resp3: bool,
    ) -> Any:
        """EVALSHA: run a cached script; raises ``NOSCRIPT`` if there is none."""
        key = (sha.decode("ascii", "replace") if isinstance(sha, bytes) else sha).lower()
        with self._lua_session():
            script = self._scripts.get(key)
            if script is None:
                raise Error(NOSCRIPT_ERROR)
            return self._execute(key, script, keys, argv, call, resp3)

    @property
    def running(self) -> bool:
        """Whether a script is executing."""
        return self._running

    @property
    def busy(self) -> bool:
        """Whether the running script has passed ``busy_threshold``."""
        return self._running and self._busy

    @property
    def timed_out(self) -> bool:
        """Whether the last run was stopped by ``time_limit``."""
        return self._timed_out

    def mark_write(self) -> None:
        """Called by ``call`` before it performs a write for the script: from
        now on the script cannot be killed. Raises :class:`ScriptKilled` if a
        kill was already accepted, and then the write must not happen."""
        with self._state:
            if self._running and self._killed:
                raise ScriptKilled(KILLED_ERROR)
            self._dirty = True

    def kill(self) -> None:
        """SCRIPT KILL, from any thread: the running script ends with Redis'
        "Script killed by user" error. Raises :class:`Error` ``NOTBUSY`` if no
        script runs and ``UNKILLABLE`` if it has written."""
        with self._state:
            if not self._running:
                raise Error(NOTBUSY_ERROR)
            if self._dirty:
                raise Error(UNKILLABLE_ERROR)
            self._killed = True

    class _Session:
        __slots__ = ("_engine",)

        def __init__(self, engine: ScriptEngine) -> None:
            self._engine = engine

        def __enter__(self) -> None:
            engine = self._engine
            if engine._lua_thread == threading.get_ident():
                raise RuntimeError("the script engine was re-entered from a running script")
            engine._lua_lock.acquire()
            engine._lua_thread = threading.get_ident()

        def __exit__(self, *exc: object) -> None:
            self._engine._lua_thread = None
            self._engine._lua_lock.release()

    def _lua_session(self) -> ScriptEngine._Session:
        return ScriptEngine._Session(self)

    def _execute(
        self,
        sha: str,
        script: _Script,
        keys: Sequence[bytes],
        argv: Sequence[bytes],
        call: Callable[[list[bytes]], Any],
        resp3: bool,
    ) -> Any:
        self._call = call
        self._resp3 = False  # a script starts in RESP2, whatever its caller speaks
        self._failure = None
        with self._state:
            self._killed = self._dirty = self._busy = self._timed_out = False
            self._started = self._clock()
            self._running = True
        try:
            try:
                with self._lifted():
                    keys_table = self._lua.table_from(list(keys))
                    argv_table = self._lua.table_from(list(argv))
                ok, result, kill_source, kill_line = self._run(
                    script.function, keys_table, argv_table, self._hook_interval
                )
                del keys_table, argv_table
            except lua51.LuaMemoryError:
                ok, result, kill_source, kill_line = False, _NOT_ENOUGH_MEMORY, None, None
            with self._state:
                self._running = False
                killed = self._killed
            if self._failure is not None:
                raise self._failure
            if ok:
                with self._lifted():
                    return self._from_lua(result, resp3, 0)
            if killed and self._timed_out:
                text = self.time_limit_error.format(limit=_seconds(self.time_limit))
                if type(kill_source) is bytes and kill_line is not None:
                    return Error(f"{text} script: {sha}, on {_text(kill_source)}:{kill_line}.")
                return Error(text)
            if killed:
                if type(kill_source) is bytes and kill_line is not None:
                    return Error(
                        f"{KILLED_ERROR} script: {sha}, on {_text(kill_source)}:{kill_line}."
                    )
                return Error(KILLED_ERROR)
            return self._error_reply(sha, result)
        finally:
            with self._state:
                self._running = False
            self._call = None
            self._failure = None

    def _error_reply(self, sha: str, error: Any) -> Error:
        """The reply for a script that raised ``error`` (the handler's table,
        or a bare string for errors Lua raises past the handler)."""
        if type(error) is bytes:
            if error == _NOT_ENOUGH_MEMORY:
                return self._memory_error(sha)
            return Error(f"ERR Error running script {sha}, {_text(error[:100])}")
        text = error[b"err"]
        source, line = error[b"source"], error[b"line"]
        message = _text(text) if type(text) is bytes else "ERR unknown error"
        if message in ("ERR not enough memory", "ERR " + _NOT_ENOUGH_MEMORY.decode()):
            return self._memory_error(sha)
        if type(source) is bytes and line is not None:
            message += f" script: {sha}, on {_text(source)}:{line}."
        return Error(message)

    def _memory_error(self, sha: str) -> Error:
        return Error(
            f"ERR Error running script {sha}, not enough memory "
            f"(the Lua heap is limited to {self.max_memory} bytes)"
        )

    # ----------------------------------------------------------- called from Lua

    def _lua_check(self) -> bool:
        """The count hook: notices the busy threshold and the time limit;
        True once killed."""
        if self._killed:
            return True
        limit = self.time_limit
        notice_busy = not self._busy and self.busy_threshold > 0
        if not notice_busy and limit <= 0:
            return False
        elapsed = self._clock() - self._started
        if 0 < limit <= elapsed:
            with self._state:
                self._killed = self._timed_out = True
            return True
        if notice_busy and elapsed >= self.busy_threshold:
            self._busy = True
            if self._on_busy is not None:
                try:
                    self._on_busy()
                except Exception as exc:  # reported after the run, the script goes on
                    self._failure = self._failure or exc
        return self._killed

    def _lua_call(self, *args: Any) -> tuple[int, Any]:
        """``redis.call``/``redis.pcall``: (0, {value}), (1, {error table}),
        (2,) once killed, (3,) when the Lua heap is full."""
        status, text = 1, ""
        reply: Any = None
        command = [_arg_bytes(arg) for arg in args]
        if not args:
            text = "ERR Please specify at least one argument for this redis lib call"
        elif None in command:
            text = "ERR Lua redis lib command arguments must be strings or integers"
        else:
            assert self._call is not None
            try:
                reply = self._call(command)  # type: ignore[arg-type]  # no None left
                status = 0
            except ScriptKilled:
                return 2, None
            except Error as exc:
                # Without its traceback: kept, it would tie this frame (and the
                # engine) into a cycle, leaving the engine to the cyclic GC.
                reply = exc.with_traceback(None)
            except Exception as exc:
                # A bug below ``call``: the script gets an error, the caller the exception.
                self._failure = self._failure or exc
                text = f"ERR {type(exc).__name__} while running the command"
            if isinstance(reply, Error):  # raised or returned, an error reply
                status = 1
                text = _error_text(reply.message)
        with self._lifted() as fits:
            try:
                if status == 1:
                    value = self._error_table(text, command_error=reply is not None)
                else:
                    value = self._to_lua(reply)
                box = self._lua.table(value)
            except Exception as exc:
                self._failure = self._failure or exc
                box = self._lua.table(self._error_table("ERR reply not convertible"))
                status = 1
            if not fits():
                return 3, None
        return status, box

    @contextlib.contextmanager
    def _lifted(self) -> Iterator[Callable[[], bool]]:
        """Lift the Lua heap limit while Python builds Lua values.

        lupa creates tables on the runtime's main state, outside any Lua
        error handler: running out of memory there is a Lua panic, which
        takes the process down. What is built here is bounded by a reply
        that already exists in Python. The yielded ``fits()`` says whether
        the heap is still within the limit; if not, it collects garbage
        first, and the caller must drop what it built and report "not
        enough memory" to the script.
        """
        lua = self._lua
        lua.set_max_memory(0)
        try:

            def fits() -> bool:
                return bool(lua.get_memory_used() <= self.max_memory)

            yield fits
        finally:
            if lua.get_memory_used() > self.max_memory:
                self._collect_garbage(b"collect")
            lua.set_max_memory(self.max_memory)

    def _lua_log(self, level: int, message: bytes) -> None:
        if self._log is not None:
            try:
                self._log(int(level), _text(message))
            except Exception as exc:  # reported after the run, the script goes on
                self._failure = self._failure or exc

    def _boxed(self, value: Any) -> Any:
        """``{value}``, built with the heap limit lifted: a string handed back
        to Lua directly would be allocated where running out of memory is a
        panic (see :meth:`_lifted`)."""
        with self._lifted():
            return self._lua.table(value)

    def _lua_sha1(self, data: bytes) -> Any:
        return self._boxed(hashlib.sha1(data).hexdigest().encode())

    def _lua_bit(self, op: bytes, *args: float) -> Any:
        return self._boxed(_bit(op, *args))

    def _lua_setresp(self, resp: int) -> None:
        self._resp3 = resp == 3

    def _lua_srandom(self, seed: float) -> None:
        self._rand.seed(int(seed))

    def _lua_decode(self, data: bytes) -> tuple[bool | None, Any]:
        with self._lifted() as fits:
            try:
                box = self._lua.table(_json_decode(data, self._lua.table, self._null))
            except _JsonError as exc:
                return False, self._lua.table(str(exc).encode())
            if not fits():
                del box
                return None, None
        return True, box

    # ----------------------------------------------------------- conversions

    def _error_table(self, text: str, command_error: bool = False) -> Any:
        table = self._lua.table()
        table[b"err"] = text.encode()
        if command_error:
            # Redis marks errors whose command already counted them.
            table[b"ignore_error_stats_update"] = True
        return table

    def _to_lua(self, value: Any) -> Any:
        """A reply value as Redis hands it to Lua (``redisProtocolToLuaType``),
        in the protocol the script chose with ``redis.setresp``."""
        resp3 = self._resp3
        t = type(value)
        if t is bytes:
            return value
        if t is int:
            return value if -(2**63) <= value < 2**63 else float(value)
        if value is None or value is NIL_ARRAY:
            return None if resp3 else False
        if t is bool:
            return value if resp3 else int(value)
        if t is Status or isinstance(value, Status):
            table = self._lua.table()
            table[b"ok"] = value.encode()
            return table
        if t is Verbatim:
            if not resp3:
                return value.encode()
            inner = self._lua.table()
            inner[b"format"] = b"txt"
            inner[b"string"] = value.encode()
            table = self._lua.table()
            table[b"verbatim_string"] = inner
            return table
        if isinstance(value, str):
            return value.encode()
        if t is float:
            if not resp3:
                return d2string(value)
            table = self._lua.table()
            table[b"double"] = value
            return table
        if isinstance(value, Error):
            return self._error_table(_error_text(value.message), command_error=True)
        if t is list or t is tuple:
            return self._lua.table_from([self._to_lua(item) for item in value])
        if t is Pairs:
            if resp3:
                return self._lua.table_from(
                    [self._lua.table_from([self._to_lua(a), self._to_lua(b)]) for a, b in value]
                )
            flat = []
            for a, b in value:
                flat.append(self._to_lua(a))
                flat.append(self._to_lua(b))
            return self._lua.table_from(flat)
        if t is dict:
            if not resp3:
                flat = []
                for k, v in value.items():
                    flat.append(self._to_lua(k))
                    flat.append(self._to_lua(v))
                return self._lua.table_from(flat)
            inner = self._lua.table()
            for k, v in value.items():
                key = self._to_lua(k)
                if key is not None:
                    inner[key] = self._to_lua(v)
            table = self._lua.table()
            table[b"map"] = inner
            return table
        if t is set or t is frozenset:
            if not resp3:
                return self._lua.table_from([self._to_lua(item) for item in value])
            inner = self._lua.table()
            for item in value:
                key = self._to_lua(item)
                if key is not None:
                    inner[key] = True
            table = self._lua.table()
            table[b"set"] = inner
            return table
        raise TypeError(f"cannot hand a reply of type {t.__name__} to a script")

    def _from_lua(self, value: Any, resp3: bool, depth: int) -> Any:
        """A script's return value as Redis replies it (``luaReplyToRedisReply``).
        ``resp3`` is the caller's protocol; booleans follow the script's."""
        t = type(value)
        if t is bytes:
            return value
        if t is bool:
            if self._resp3:
                return value
            return 1 if value else None
        if t is int:
            return value if -(2**63) <= value < 2**63 else _LLONG_MIN
        if t is float:
            return _c_long_long(value)
        if value is None or lua51.lua_type(value) != "table":
            return None
        if depth >= _MAX_REPLY_DEPTH:
            return Error("ERR reached lua stack limit")
        kind, a, b, n = self._classify(value)
        if kind == b"err":
            return Error(_text(a))
        if kind == b"ok":
            return Status(_text(a).replace("\r", " ").replace("\n", " "))
        if kind == b"double":
            number = -0.0 if b else float(a)
            return number if resp3 else d2string(number)
        if kind == b"big_number":
            return BigNumber(a.replace(b"\r", b" ").replace(b"\n", b" "))
        if kind == b"verbatim":
            # Redis' addReplyVerbatim: the format's first three bytes (up to
            # a NUL), padded with spaces; the text as it is.
            return RawVerbatim(a.split(b"\0", 1)[0][:3].ljust(3) + b":" + b)
        # A map or set is written in the order Lua walks the table, each key
        # as it converts, repeats and all (two keys may convert alike: 1.5
        # and 1.25 both become 1), as Redis writes them.
        if kind == b"map":
            return Entries(
                (self._from_lua(a[i], resp3, depth + 1), self._from_lua(b[i], resp3, depth + 1))
                for i in range(1, n + 1)
            )
        if kind == b"set":
            return Members(self._from_lua(a[i], resp3, depth + 1) for i in range(1, n + 1))
        return [self._from_lua(a[i], resp3, depth + 1) for i in range(1, n + 1)]
