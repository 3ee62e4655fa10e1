"""Write the files generated from the argument parser and the config key table:

- ``deploy/man/man8/sessiond.8``, ``deploy/man/man5/sessiond.yaml.5`` (:mod:`.manpages`);
- ``deploy/completion/sessiond.bash``, ``deploy/completion/_sessiond`` (:mod:`.completion`);
- ``config/sessiond.yaml``, the annotated example config.

``python -m sessiond.docgen [DIR]`` rewrites them under DIR (a checkout; default: the
current directory); ``--check`` writes nothing and exits 1 naming the files that differ
from what would be generated (the test suite runs it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import completion, manpages
from .config import annotated_yaml, defaults

EXAMPLE_HEADER = """\
# sessiond example config: works from a fresh clone without root.
# Generated from the key table in daemon/sessiond/config.py by `python -m sessiond.docgen`:
# edit the table, not this file. `man -l deploy/man/man5/sessiond.yaml.5` describes each key.
#
# scripts/run.sh runs the daemon on config/local.yaml, a copy of this file it makes on its
# first run (untracked): edit the copy and save, and the daemon reloads it (or send SIGHUP).
# Keys marked (restart) only take effect after a restart.
#
# Every key is optional; the values below are the defaults, except for the two paths.
# Relative paths are resolved against this file's directory (config/).
# Durations: seconds or 500ms / 30s / 15m / 1h / 7d. Sizes: bytes or 64KiB / 1MiB / 2GiB
# (not 1MB or 1m: redis.conf and SI disagree on what they mean, so they are refused).

"""

# Where the example differs from the built-in defaults: everything under ./var/.
EXAMPLE_VALUES = {"socket.path": "../var/sessiond.sock", "persistence.path": "../var/sessions.db"}


def example_config() -> str:
    return EXAMPLE_HEADER + annotated_yaml({**defaults(), **EXAMPLE_VALUES}, human=True)


def generated() -> dict[str, Callable[[], str]]:
    """Path in a checkout -> function that renders the file."""
    files: dict[str, Callable[[], str]] = {
        f"deploy/man/{name}": render for name, render in manpages.PAGES.items()
    }
    files.update(
        {f"deploy/completion/{name}": render for name, render in completion.SCRIPTS.items()}
    )
    files["config/sessiond.yaml"] = example_config
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sessiond.docgen",
        description="Write the man pages, shell completions and example config of sessiond.",
    )
    parser.add_argument("dir", nargs="?", type=Path, default=Path("."), help="the checkout")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is not current"
    )
    args = parser.parse_args(argv)
    stale = []
    for name, render in generated().items():
        path = args.dir / name
        text = render()
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if args.check and stale:
        print(
            "not current, regenerate with `python -m sessiond.docgen`: " + ", ".join(stale),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
