"""The two builds of one source: pure Python and mypyc-compiled (setup.py).

scripts/test.sh runs the whole suite against each and says which it expects
(``SESSIOND_EXPECT_BUILD``). Compiled code differs from interpreted code in a
few ways the type checker does not see; each one that could bite this code base
is pinned here, so that it fails in the compiled run if it comes back:

- tuples are re-boxed: a tuple read back from a list is a new object, so
  ``is`` between two reads of "the same" tuple is false (the cache's expiry
  heap once told its current records from stale ones by identity);
- a compiled module's functions are bound at compile time: monkeypatching one
  of its globals changes nothing it calls, so a test doing that would test
  nothing (tests/conftest.py refuses it; fault injection goes through
  constructor parameters);
- class-level state: a native class' class attributes are not shared mutable
  state (counters kept on a class, such as client ids, must live on an
  instance owned by one daemon);
- one name, one type: a variable is typed once for its whole function, so
  ``except A as exc`` and ``except B as exc`` in one function make the second
  fail at run time (a failing disk answered "store writer failed: _Removed
  object expected; got OSError"); checked below for every compiled module;
- weak references: a compiled Exception subclass accepts them but does not
  clear them when an instance is freed, and the dangling reference crashes
  the process when it is freed in turn (the property tests of
  tests/test_scripting_engine.py segfaulted so in the compiled run; since
  ``protocol.Error`` is a plain Python class, they pass);
- a compiled method checks that its ``self`` is of exactly the class it was
  compiled in, even for a non-native class (``mypyc_attr(native_class=False)``):
  a subclass made at run time with ``type()`` fails at its first call
  ("_ArrayDumper object expected; got abc.ByteaArrayDumper": the shared
  store's array dumpers were made so, one per list class, before their module
  was compiled);
- a compiled coroutine has no exception state of its own (the thread's stands
  in for it): after an ``await`` inside an ``except`` block, other coroutines
  have run, and a bare ``raise`` there re-raises what they left, often nothing
  ("invalid exception object"), and the task never ends; an ``await`` in a
  ``finally`` block loses the exception it was propagating the same way. The
  shared store's postgres.py, compiled for a try, hung and crashed so (its
  closing cancels tasks mid-``await``); it stays interpreted, and no compiled
  module may do either (checked below). ``async with`` is the same shape: its
  exit may only be one that never suspends (an ``asyncio.Lock``'s);
- unboxed floats: a ``float`` attribute of a native class is a C double in the
  object, a ``float | None`` one a separate object (the cache keeps an entry's
  deadline and TTL as plain floats for that, with ``None`` given out by
  properties).
"""

from __future__ import annotations

import ast
import gc
import importlib
import os
import re
import weakref
from pathlib import Path

import pytest
from sessiond.cache import SessionCache
from sessiond.commands import ServerState
from sessiond.config import Config
from sessiond.protocol import Error
from sessiond.stats import Stats

ROOT = Path(__file__).resolve().parents[1]
HOT = [
    "sessiond.cache",
    "sessiond.protocol",
    "sessiond.stats",
    "sessiond.keyspace",
    "sessiond.values",
    "sessiond.server",
    "sessiond.shared",
    "sessiond.store.sqlite",
    "sessiond.store.pgarrays",
    "sessiond.store.pgsql",
    "sessiond.store.pgwire",
    "sessiond.commands.dispatch",
    "sessiond.commands.shared",
    "sessiond.commands.strings",
    "sessiond.commands.scripting",
]


def _compiled(module: str) -> bool:
    return str(importlib.import_module(module).__file__).endswith(".so")


def test_the_build_under_test_is_the_one_asked_for() -> None:
    expected = os.environ.get("SESSIOND_EXPECT_BUILD")
    if expected is None:
        pytest.skip("run by scripts/test.sh, which says which build it installed")
    compiled = [_compiled(m) for m in HOT]
    assert compiled == [expected == "compiled"] * len(HOT), dict(zip(HOT, compiled, strict=True))


def _compiled_sources() -> list[Path]:
    """The files setup.py compiles (its HOT list, read as text)."""
    setup = (ROOT / "setup.py").read_text()
    listed = re.findall(r'"(daemon/sessiond/[\w/]+\.py)"', setup)
    return [ROOT / name for name in listed] + sorted(
        (ROOT / "daemon/sessiond/commands").glob("*.py")
    )


def test_no_compiled_function_binds_one_exception_name_to_two_types() -> None:
    clashes = []
    for path in _compiled_sources():
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            names: dict[str, set[str]] = {}
            for node in ast.walk(fn):
                if isinstance(node, ast.ExceptHandler) and node.name:
                    kind = ast.unparse(node.type) if node.type else "BaseException"
                    names.setdefault(node.name, set()).add(kind)
            clashes += [
                f"{path.name}:{fn.name} {n}: {sorted(t)}" for n, t in names.items() if len(t) > 1
            ]
    assert not clashes


def _awaits(nodes: list[ast.stmt]) -> bool:
    """Whether ``nodes`` await, not counting functions defined in them."""
    todo: list[ast.AST] = list(nodes)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Await | ast.AsyncWith | ast.AsyncFor):
            return True
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            todo.extend(ast.iter_child_nodes(node))
    return False


def test_no_compiled_coroutine_awaits_where_it_would_lose_its_exception() -> None:
    found = []
    for path in _compiled_sources():
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, ast.Try | ast.TryStar):
                    continue
                for handler in node.handlers:
                    raises = [n for n in ast.walk(handler) if isinstance(n, ast.Raise)]
                    if any(r.exc is None for r in raises) and _awaits(handler.body):
                        found.append(f"{path.name}:{handler.lineno} {fn.name}: await, then raise")
                if _awaits(node.finalbody):
                    found.append(f"{path.name}:{node.lineno} {fn.name}: await in finally")
    assert not found


def test_every_array_class_dumps_through_psycopg_s_dumper_as_without_it() -> None:
    """psycopg instantiates the dumper registered for a list class and calls
    it: that dumper must be one whose compiled methods accept it."""
    from psycopg.adapt import PyFormat
    from sessiond.store import pgarrays

    values = {
        "bytea": [b"k", None],
        "text": ["t"],
        "float8": [1.5, None],
        "int2": [2],
        "int4": [4],
        "int8": [8],
    }
    for name, items in values.items():
        cls = pgarrays.BY_TYPE[name]
        dumper = pgarrays.ADAPTERS.get_dumper(cls, PyFormat.BINARY)(cls)
        assert dumper.dump(cls(items)) == pgarrays.dump(name, items), name


def test_a_slid_entry_is_refiled_by_the_sweep_not_dropped() -> None:
    """The expiry heap's record of an entry whose TTL slid surfaces before its
    deadline: the sweep must re-file it (a record taken for stale by an
    identity check would be dropped, and the entry would then never expire)."""
    now = [1000.0]
    cache: SessionCache[bytes, bytes] = SessionCache(clock=lambda: now[0], sliding=True)
    cache.insert(b"k", b"v", 10.0)
    now[0] += 5
    assert cache.get(b"k") == b"v"  # deadline slides to 1015
    now[0] += 6  # 1011: the old record (1010) surfaces
    assert cache.sweep() == 0
    assert cache.expiry_index_size == 1  # re-filed under 1015
    now[0] += 5  # 1016
    assert cache.sweep() == 1
    assert cache.find(b"k") is None


def test_an_entry_keeps_its_deadline_and_ttl_inside_it() -> None:
    """The compiled build keeps an entry's deadline and sliding TTL as C
    doubles in the entry, not as float objects beside it (a sliding read
    would touch two more objects and allocate one); both builds give them out
    as ``None`` when there is none. A TTL given as an int is taken as its
    float (compiled code converts it on the way in)."""
    now = [1000.0]
    cache: SessionCache[bytes, bytes] = SessionCache(clock=lambda: now[0], default_ttl=None)
    cache.insert(b"slides", b"v", 10)
    cache.insert(b"never", b"v")
    cache.insert(b"fixed", b"v", deadline=1500)
    slides, never, fixed = (cache.get_entry(k) for k in (b"slides", b"never", b"fixed"))
    assert slides is not None and never is not None and fixed is not None
    assert (slides.ttl, slides.deadline) == (10.0, 1010.0)
    assert (never.ttl, never.deadline, never.remaining(now[0])) == (None, None, None)
    assert (fixed.ttl, fixed.deadline, fixed.remaining(now[0])) == (None, 1500.0, 500.0)
    slides.deadline = None
    slides.ttl = None
    assert (slides.ttl, slides.deadline) == (None, None)
    if _compiled("sessiond.cache"):
        assert not [r for r in gc.get_referents(fixed) if isinstance(r, float)]


def test_two_daemons_in_one_process_share_no_counters_or_ids() -> None:
    first, second = ServerState(Config(), Stats()), ServerState(Config(), Stats())
    assert first.new_client(authenticated=True).id == 1
    assert first.new_client(authenticated=True).id == 2
    assert second.new_client(authenticated=True).id == 1
    first.stats.server.connections_total += 1
    assert second.stats.server.connections_total == 0


def test_monkeypatching_a_compiled_module_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import sessiond.cache

    if not _compiled("sessiond.cache"):
        pytest.skip("only the compiled build refuses it")
    with pytest.raises(pytest.fail.Exception, match="compiled"):
        monkeypatch.setattr(sessiond.cache, "_len_sizer", lambda k, v: 0)


def test_a_weak_reference_may_outlive_an_error_reply() -> None:
    reply = Error("ERR gone")
    ref = weakref.ref(reply)
    del reply
    gc.collect()
    assert ref() is None
    del ref  # freeing a dangling weak reference is where it would crash
