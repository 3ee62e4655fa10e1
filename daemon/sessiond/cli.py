"""Command line (docs/operations.md): ``sessiond run``, ``sessiond check-config``, ``--version``.

:func:`build_parser` is the one description of the command line: ``--help``, the
``sessiond(8)`` man page and the shell completions are generated from it
(:mod:`sessiond.docgen`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import REDIS_COMPAT_VERSION, __version__

if TYPE_CHECKING:
    from .config import Config

DESCRIPTION = "Session-cache daemon speaking the Redis protocol on a Unix socket."

# (status, meaning): printed by --help and in sessiond(8), listed in the README.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (
        0,
        "clean shutdown (SIGTERM, SIGINT or a client's SHUTDOWN), or handed over to a new "
        "process (SIGUSR2), check-config found the config valid, or import copied every key",
    ),
    (
        1,
        "bad config, or a start-up failure (socket in use by a live daemon, store not "
        "sessiond's or corrupt, permission denied, a passed socket that is not a listening "
        "Unix stream socket), with one line per problem that says what and where; or an "
        "upgrade whose new process exited after this one had let go; or import left a key out "
        "(printed) or could not reach a server",
    ),
    (2, "usage error: unknown command or option, or no command"),
    (130, "interrupted (SIGINT) while starting, before the daemon handles signals itself"),
)

# (name, one-line help, description for `sessiond NAME --help` and sessiond(8))
COMMANDS: tuple[tuple[str, str, str], ...] = (
    (
        "run",
        "run the daemon in the foreground",
        "Run the daemon in the foreground until SIGTERM or SIGINT. It listens on the socket "
        "once the store is open, tells systemd READY=1, and loads the most recently used "
        "sessions into memory while it serves (a session not loaded yet is read through from "
        "the store). It serves the socket systemd passes (socket activation) "
        "instead of binding its own. SIGHUP, or saving the config file, reloads the config; "
        "SIGUSR2 hands the socket and the store over to a new process running the code "
        "installed now.",
    ),
    (
        "check-config",
        "validate and print the effective config",
        "Validate the config file and print the effective config: every key, defaults "
        "included, with the password redacted and each key's description as a comment. "
        "A config with problems prints one line per problem, each naming its key, and "
        "exits 1.",
    ),
    (
        "import",
        "copy the sessions of a Redis server into the running daemon",
        "Copy every key of a Redis server (SOURCE: redis://[[user]:password@]host[:port][/db] "
        "or unix:///path/to.sock[?db=N]; without a password in it, REDISCLI_AUTH is used) into "
        "the daemon the config names, through its socket: strings, hashes and sets, each with "
        "the TTL it has left (a key without one stays without). Keys of other types are "
        "listed and left out. Run it before the applications switch to sessiond, so that "
        "nobody is logged out. Prints what it copied; exits 1 if a key could not be copied "
        "(the others are), or if either server cannot be reached.",
    ),
)


def config_help() -> str:
    from .config import DEFAULT_LOCATIONS  # imported late: start-up stays quick to interrupt

    first, second = DEFAULT_LOCATIONS
    return f"config file (default: {first} if present, else {second}, else built-in defaults)"


def _epilog() -> str:
    lines = ["exit status:"]
    for code, meaning in EXIT_CODES:
        lines += textwrap.wrap(
            meaning, width=79, initial_indent=f"  {code:<5}", subsequent_indent=" " * 7
        )
    lines.append("")
    lines.append("See sessiond(8) and sessiond.yaml(5).")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessiond",
        description=DESCRIPTION,
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"sessiond {__version__} (redis {REDIS_COMPAT_VERSION} compatible)",
        help="print the version, and the Redis version whose semantics it follows, and exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text, description in COMMANDS:
        p = sub.add_parser(name, help=text, description=description)
        p.add_argument("--config", type=Path, default=None, metavar="PATH", help=config_help())
        if name == "import":
            p.add_argument(
                "--match",
                default="*",
                metavar="PATTERN",
                help="copy only the keys matching this glob pattern (SCAN MATCH; default: all)",
            )
            p.add_argument("source", metavar="SOURCE", help="the Redis server to copy from")
    return parser


def subcommands(
    parser: argparse.ArgumentParser,
) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, for the generated docs."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The documented options of a parser (``-h``, ``--version``, ``--config``…)."""
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS]


def _config_or_problems(path: Path | None) -> Config | None:
    """The config at ``path``, or ``None`` once its problems are printed, one
    line each."""
    from .config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def check_config(path: Path | None) -> int:
    from .config import annotated_yaml, flatten

    config = _config_or_problems(path)
    if config is None:
        return 1
    print(f"# effective config from {config.source}")
    print(annotated_yaml(flatten(config)), end="")
    return 0


def _interrupted(signum: int, frame: object) -> None:
    """Ctrl-C before the daemon handles SIGINT itself (while importing, parsing
    the command line or starting): an ordinary way to stop, not a crash.

    A handler rather than ``except KeyboardInterrupt``: the exception can land
    where it is swallowed (a weakref callback of the import machinery prints
    "Exception ignored" and goes on, and the daemon then starts as if never
    interrupted) or remembered (in code run by exec(), which makes CPython 3.11
    kill itself with SIGINT at exit). The handler ends the process at once
    instead: no request has been served yet, so no client loses anything."""
    with contextlib.suppress(Exception):  # the streams may be mid-write
        sys.stdout.flush()
        sys.stderr.flush()
    os.write(2, b"sessiond: interrupted\n")
    os._exit(130)


def _upgrade_while_starting(signum: int, frame: object) -> None:
    """SIGUSR2 before the daemon handles it: its default action would end the
    process (a successor being started, say)."""
    os.write(2, b"sessiond: SIGUSR2 while starting: ignored, send it once started\n")


def main(argv: Sequence[str] | None = None) -> int:
    # First of all: the daemon replaces both handlers once it runs.
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGUSR2, _upgrade_while_starting)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        from .app import run

        return run(args.config)
    if args.command == "check-config":
        return check_config(args.config)
    if args.command == "import":
        from .importer import run as copy_from

        config = _config_or_problems(args.config)
        return 1 if config is None else copy_from(args.source, config, args.match)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
