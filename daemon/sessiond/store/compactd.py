"""The compactor as a process of its own, and the daemon's side of it.

Compaction is Python around each row (binding parameters, sorting, building
tuples) as much as SQLite's own work, and in the daemon's process that Python
holds the GIL the event loop needs. Here it runs in a child process: it
reads a sealed segment back from its file (:func:`.log.replay`), writes it
with the same :class:`~.compactor.Compactor` and answers when the segment is
recorded as compacted. The daemon then drops the segment's overlay layer and
deletes its file, exactly as with the in-process compactor.

The child inherits the store's lock (the same open file, so the same
``flock``): a successor waits for it too. It exits when its input closes, or
between two steps once its parent is gone (a kill -9 of the daemon), and
never deletes a file.

Protocol, one line each way, every command answered (``error TEXT`` if it
failed): ``compact N...`` (sealed segments, oldest first) -> ``done LAST
ROWS``; ``refile HEX...`` -> ``ok``; ``live`` -> ``live BYTES``.

Several segments compact as one: their changes merged, newest per key, so a
session rewritten in each is written to the table once.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

from . import log as wal
from .compactor import Compaction, Compactor, compactor_connection
from .overlay import Layer

# How each command's answer begins (``error TEXT`` aside); ``{}``: its last argument.
_ANSWERS = {"compact": "done {} ", "refile": "ok", "live": "live "}
# Not ``-m sessiond.store.compactd``: the package imports this module first.
_CHILD = "import sys; from sessiond.store.compactd import main; sys.exit(main(sys.argv[1:]))"


def main(argv: list[str]) -> int:
    """The child process: ``PATH MAX_PAGES ROWS PAUSE``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return serve(Path(argv[0]), int(argv[1]), int(argv[2]), float(argv[3]))


def _segment_path(path: Path, number: int) -> Path:
    return path.parent / f"{path.name}-log.{number:012d}"


def serve(path: Path, max_pages: int, rows: int, pause: float) -> int:
    """The child's loop; exit code."""
    import time

    parent = os.getppid()
    compactor: Compactor | None = None
    out = sys.stdout
    for line in sys.stdin:
        command, _, rest = line.strip().partition(" ")
        try:
            if compactor is None:
                # Opened at the first command, and again at the next one while
                # it fails (a failing disk): each answered with the error.
                compactor = Compactor(compactor_connection(path, max_pages))
            if command == "compact":
                numbers = [int(n) for n in rest.split()]
                layer = Layer(numbers[-1])
                for number in numbers:
                    found = wal.replay(_segment_path(path, number))
                    layer.apply(found.changes, found.cleared)
                job = Compaction(layer)
                while not compactor.step(job, rows):
                    if os.getppid() != parent or _closed(sys.stdin):
                        return 0  # the daemon is gone: its successor replays the rest
                    if pause:
                        time.sleep(pause)
                out.write(f"done {numbers[-1]} {job.written}\n")
            elif command == "refile":
                compactor.refile(bytes.fromhex(k) for k in rest.split())
                out.write("ok\n")
            elif command == "live":
                out.write(f"live {compactor.live_bytes()}\n")
            else:
                out.write(f"error unknown command {command!r}\n")
        except (sqlite3.Error, OSError, wal.Corrupt, ValueError) as exc:
            out.write(f"error {str(exc).replace(chr(10), ' ')}\n")
        out.flush()
    if compactor is not None:
        compactor.db.close()
    return 0


def _closed(stream: IO[str]) -> bool:
    """Whether the parent closed our input (nothing else arrives mid-job)."""
    readable, _, _ = select.select([stream], [], [], 0)
    return bool(readable)


class CompactorProcess:
    """The daemon's handle on the child: start, ask, stop."""

    def __init__(self, path: Path, lock_fd: int, max_pages: int, rows: int, pause: float) -> None:
        self.args = [str(path), str(max_pages), str(rows), str(pause)]
        self.lock_fd = lock_fd
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, *self.args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            pass_fds=(self.lock_fd,),
            # Not in the daemon's process group: a Ctrl-C in a terminal is the
            # daemon's to handle; the child stops when its input closes.
            start_new_session=True,
        )

    def send(self, line: str) -> None:
        proc = self.running()
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()

    def reply(self, timeout: float) -> str | None:
        """The next line from the child, ``None`` if none came in ``timeout``
        seconds. Raises :class:`EOFError` if the child is gone: never starts
        one, which would not have heard the command this answers (a child
        killed mid-command would then be waited for forever)."""
        proc = self.proc
        if proc is None or proc.stdout is None:
            raise EOFError("the compactor process is not running")
        readable, _, _ = select.select([proc.stdout], [], [], timeout)
        if not readable:
            return None
        line = proc.stdout.readline()
        if not line:
            raise EOFError("the compactor process exited")
        return line.strip()

    def ask(self, command: str, give_up: Callable[[], bool]) -> str | None:
        """Send ``command`` and return its answer (``error TEXT`` if it
        failed), ``None`` if ``give_up()`` turned true first. Raises
        :class:`EOFError` if the child is gone or answers another command
        (never taken for this one's: a ``done`` for another segment would
        have the daemon delete a segment the table does not hold yet)."""
        self.send(command)
        verb, _, argument = command.partition(" ")
        expected = _ANSWERS[verb].format(argument.rpartition(" ")[2])
        while not give_up():
            answer = self.reply(0.05)
            if answer is None:
                continue
            if answer.startswith("error ") or answer.startswith(expected):
                return answer
            raise EOFError(f"answered {answer!r} to {verb}")
        return None

    def running(self) -> subprocess.Popen[str]:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None
        return self.proc

    def stop(self, now: bool) -> None:
        """Close its input (it exits after its current step) or, with
        ``now``, end it at once (an unfinished step is rolled back)."""
        proc = self.proc
        if proc is None:
            return
        if now and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        self.proc = None
