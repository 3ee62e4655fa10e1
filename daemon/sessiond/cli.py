"""Command line (SPEC §3): ``sessiond run``, ``sessiond check-config``, ``--version``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import REDIS_COMPAT_VERSION, __version__


def _nest(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


def check_config(path: Path | None) -> int:
    import yaml

    from .config import ConfigError, flatten, load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    print(f"# effective config from {config.source}")
    print(yaml.safe_dump(_nest(flatten(config)), sort_keys=False), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C before the daemon has its own handlers (while parsing the
        # command line, importing or starting): an ordinary way to stop, not a
        # crash worth a traceback.
        print("sessiond: interrupted", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        # Not a return: if the interrupt landed in code run by exec() (dataclasses
        # build __init__ that way while importing), CPython 3.11 remembers it as
        # unhandled and kills itself with SIGINT at exit instead of exiting 130.
        os._exit(130)


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="sessiond",
        description="Session-cache daemon speaking the Redis protocol on a Unix socket.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"sessiond {__version__} (redis {REDIS_COMPAT_VERSION} compatible)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in (
        ("run", "run the daemon in the foreground"),
        ("check-config", "validate and print the effective config"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument(
            "--config",
            type=Path,
            default=None,
            help="config file (default: config/sessiond.yaml, then /etc/sessiond/sessiond.yaml)",
        )
    args = parser.parse_args(argv)
    if args.command == "run":
        from .app import run

        return run(args.config)
    if args.command == "check-config":
        return check_config(args.config)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
