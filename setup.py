"""Build sessiond, compiling its hot modules with mypyc when this machine can.

The metadata is in pyproject.toml; this file only adds the compiled modules.
The same typed source runs either way (docs/development.md):

- ``SESSIOND_MYPYC=auto`` (the default): compile when mypyc, a C compiler and
  Python's headers are all there; otherwise, or if compiling fails, install the
  pure-Python modules and say so. An editable install (``pip install -e .``)
  stays pure Python in this mode, so that an edit takes effect without a rebuild.
- ``SESSIOND_MYPYC=1``: compile, and fail the build if that is not possible.
- ``SESSIOND_MYPYC=0``: pure Python.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The request path: what runs per command or per write. Config, metrics, CLI,
# app and most of the store run per commit, per reload or per scrape and stay
# interpreted.
HOT = [
    "daemon/sessiond/cache.py",
    "daemon/sessiond/protocol.py",
    "daemon/sessiond/stats.py",
    "daemon/sessiond/keyspace.py",
    "daemon/sessiond/values.py",
    "daemon/sessiond/server.py",
    "daemon/sessiond/shared.py",
    # The store's per-write parts: queueing a change, waking the writer,
    # encoding a frame (the table's SQL and the compactor stay interpreted).
    "daemon/sessiond/store/overlay.py",
    "daemon/sessiond/store/log.py",
    "daemon/sessiond/store/sqlite.py",
    "daemon/sessiond/store/watch.py",
    # On the shared store each durable SET at -c 1 is a commit of its own:
    # its parameters' dumping, its sending, its notification payloads.
    "daemon/sessiond/store/pgarrays.py",
    "daemon/sessiond/store/pgsql.py",
    "daemon/sessiond/store/pgwire.py",
    # store/postgres.py stays interpreted: its closing awaits inside except and
    # finally blocks, which compiled coroutines get wrong (tests/test_build.py).
    *sorted(str(p) for p in Path("daemon/sessiond/commands").glob("*.py")),
]

MODE = os.environ.get("SESSIOND_MYPYC", "auto").strip().lower()
if MODE not in ("auto", "1", "0"):
    sys.exit(f"SESSIOND_MYPYC must be auto, 1 or 0, not {MODE!r}")


def say(message: str) -> None:
    print(f"sessiond build: {message}", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """Compile all of the mypyc modules or none of them: a half-compiled
    package (a module whose shared library is missing) would not import."""

    def run(self) -> None:
        if not self.extensions:
            return
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers, a compile error
            if MODE == "1":
                raise
            reason = str(exc)
            if len(reason) > 160:
                reason = "..." + reason[-160:]
            say(f"could not compile ({type(exc).__name__}: {reason}); installing pure Python")
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            self.extensions = []


# The setup.py commands that build code. Metadata-only runs (egg_info and
# dist_info, which pip runs first) skip mypyc: it type-checks every module it
# compiles, which takes a while.
_BUILDS = {"bdist_wheel", "build", "build_ext", "install", "develop", "editable_wheel"}


def ext_modules() -> list[Any]:
    if not _BUILDS.intersection(sys.argv):
        return []
    if MODE == "0":
        say("SESSIOND_MYPYC=0: pure Python")
        return []
    if MODE == "auto" and "editable_wheel" in sys.argv:
        say("editable install: pure Python (SESSIOND_MYPYC=1 compiles it in place)")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        if MODE == "1":
            raise
        say(f"mypyc is not installed ({exc}); installing pure Python")
        return []
    return list(mypycify(HOT, opt_level="3", verbose=False))


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
