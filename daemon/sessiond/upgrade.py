"""In-place upgrade on SIGUSR2, for a daemon that no service manager restarts:
the running daemon (the predecessor) starts its own command line again (the
successor, which runs the code installed now) and hands it the listening
socket and then the store. docs/operations.md states the contract.

The hand-over, over a socket pair between the two processes:

1. The predecessor starts the successor with the listening socket as
   descriptor 3 (``LISTEN_FDS=1``, ``LISTEN_PID`` its pid: socket activation,
   :mod:`sessiond.activation`) and its end of the pair as descriptor 4
   (``SESSIOND_UPGRADE_FD``), sends it the identity of the socket's file if
   that file is the daemon's to remove at its final exit, and serves on.
2. The successor loads its config, checks the socket, says ``ready`` and
   waits. If it fails before, it exits: the predecessor logs why and serves on.
3. The predecessor stops accepting (the socket stays open: clients that
   connect now wait in its queue), answers the requests it has read, closes
   its connections, stops its metrics listener, commits and closes the store,
   and says ``go``.
4. The successor opens the store (a warm start), serves the socket and the
   metrics, and says ``serving``.
5. The predecessor exits 0.

The listening socket is open in one of the two processes at every moment, so
its path never refuses a connection; the store is open in one at a time
(step 3 closes it before step 4 opens it).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
from collections.abc import Sequence
from typing import Any

CHANNEL_VARIABLE = "SESSIOND_UPGRADE_FD"
LISTENER_FD = 3  # SD_LISTEN_FDS_START
CHANNEL_FD = 4
_HIGH_FD = 10  # where the two are parked while the child moves them to 3 and 4
_INHERITED = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", CHANNEL_VARIABLE)


class UpgradeError(Exception):
    """The hand-over channel is unusable; the message says why."""


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def _parse(line: bytes) -> dict[str, Any] | None:
    if not line:
        return None  # the other process closed the channel: it exited
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


# ---------------------------------------------------------------- predecessor


class Successor:
    """The new process, as the predecessor sees it."""

    def __init__(self, pid: int, channel: socket.socket) -> None:
        self.pid = pid
        self._channel = channel
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._status: int | None = None

    @classmethod
    def spawn(
        cls, listener: socket.socket, argv: Sequence[str], identity: tuple[int, int] | None
    ) -> Successor:
        """Start ``argv`` with ``listener`` passed to it; ``identity`` (device,
        inode) is the socket file's if the successor is to remove it at exit."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = _fork_exec(argv, listener.fileno(), theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        successor = cls(pid, ours)
        hello = {"socket_identity": list(identity) if identity is not None else None}
        with contextlib.suppress(OSError):  # it may have failed already: ready() says
            ours.sendall(_line(hello))
        return successor

    async def _read(self) -> dict[str, Any] | None:
        if self._reader is None:
            self._reader, self._writer = await asyncio.open_unix_connection(sock=self._channel)
        try:
            return _parse(await self._reader.readline())
        except (OSError, ValueError):
            return None

    async def ready(self) -> bool:
        """Whether it is ready to take over (``False``: it exited)."""
        message = await self._read()
        return message is not None and "ready" in message

    def go(self) -> None:
        """The store and the metrics listener are released: take over."""
        if self._writer is not None:
            self._writer.write(_line({"go": True}))

    async def serving(self) -> bool:
        """Whether it serves the socket now (``False``: it exited first)."""
        message = await self._read()
        if self._writer is not None:
            self._writer.close()
        return message is not None and "serving" in message

    async def exit_status(self) -> int:
        """Wait for it to exit; its exit code (negative: the signal that ended it)."""
        if self._status is None:
            loop = asyncio.get_running_loop()
            _pid, status = await loop.run_in_executor(None, os.waitpid, self.pid, 0)
            self._status = os.waitstatus_to_exitcode(status)
        return self._status

    def kill(self) -> None:
        """End it before it took anything over (it holds nothing yet)."""
        if self._status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            _pid, status = os.waitpid(self.pid, 0)
            self._status = os.waitstatus_to_exitcode(status)
        if self._writer is not None:
            self._writer.close()
        else:
            self._channel.close()


def _fork_exec(argv: Sequence[str], listener_fd: int, channel_fd: int) -> int:
    """Start ``argv`` with ``listener_fd`` as descriptor 3 and ``channel_fd`` as
    4, nothing else open but stdin, stdout and stderr; its pid.

    Not subprocess: ``LISTEN_PID`` must hold the child's own pid, known only
    after the fork. Everything is prepared before it: the child only moves two
    descriptors, closes the rest and execs."""
    args = [os.fsencode(arg) for arg in argv]
    env = {
        os.fsencode(key): os.fsencode(value)
        for key, value in os.environ.items()
        if key not in _INHERITED
    }
    env[b"LISTEN_FDS"] = b"1"
    env[b"LISTEN_FDNAMES"] = b"sessiond"
    env[os.fsencode(CHANNEL_VARIABLE)] = b"%d" % CHANNEL_FD
    limit = os.sysconf("SC_OPEN_MAX")
    listener = fcntl.fcntl(listener_fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
    try:
        channel = fcntl.fcntl(channel_fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
    except OSError:
        os.close(listener)
        raise
    try:
        pid = os.fork()
        if pid == 0:  # the child
            try:
                os.dup2(listener, LISTENER_FD)  # dup2 makes them inheritable
                os.dup2(channel, CHANNEL_FD)
                os.closerange(CHANNEL_FD + 1, limit)
                env[b"LISTEN_PID"] = b"%d" % os.getpid()
                os.execve(args[0], args, env)
            finally:
                os.write(2, b"sessiond: upgrade: cannot execute " + args[0] + b"\n")
                os._exit(127)
        return pid
    finally:
        os.close(listener)
        os.close(channel)


# ------------------------------------------------------------------ successor


class Predecessor:
    """The old process, as the successor sees it (blocking: the successor
    talks to it before its event loop runs)."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self._file = channel.makefile("rb")
        hello = self._read()
        if hello is None:
            raise UpgradeError("upgrade: the old process closed the hand-over channel")
        identity = hello.get("socket_identity")
        self.socket_identity: tuple[int, int] | None = (
            (int(identity[0]), int(identity[1])) if identity else None
        )
        self.pid = os.getppid()

    @classmethod
    def from_environment(cls) -> Predecessor | None:
        """The predecessor that started this process, or ``None``; the
        variable is removed from the environment."""
        value = os.environ.pop(CHANNEL_VARIABLE, None)
        if value is None:
            return None
        try:
            sock = socket.socket(fileno=int(value))
        except (ValueError, OSError) as exc:
            raise UpgradeError(
                f"{CHANNEL_VARIABLE}={value!r}: not a hand-over channel ({exc})"
            ) from None
        sock.set_inheritable(False)
        return cls(sock)

    def _read(self) -> dict[str, Any] | None:
        try:
            return _parse(self._file.readline())
        except OSError:
            return None

    def _send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self._channel.sendall(_line(message))

    def ready(self) -> None:
        """Config and socket checked: the predecessor may let go."""
        self._send({"ready": os.getpid()})

    def wait_go(self) -> bool:
        """Wait until the predecessor has let go of the store; ``False`` if it
        exited without saying so (then there is nobody to wait for)."""
        message = self._read()
        return message is not None and "go" in message

    def serving(self) -> None:
        """This process serves the socket: the predecessor may exit."""
        self._send({"serving": os.getpid()})
        self._file.close()
        self._channel.close()
