"""Socket activation: the listening socket passed by systemd (or by a
predecessor, :mod:`sessiond.upgrade`) in ``LISTEN_FDS``, with
``sd_listen_fds(3)``'s semantics, written out without libsystemd.

- The passed descriptors start at 3 (``SD_LISTEN_FDS_START``); ``LISTEN_FDS``
  says how many, ``LISTEN_FDNAMES`` names them (colon-separated).
- They are meant for this process only if ``LISTEN_PID`` is its pid: a
  variable inherited from an activated parent is ignored.
- The variables are removed from the environment, so that no process the
  daemon starts takes them for its own; the descriptors are made close-on-exec
  for the same reason.

sessiond serves one socket: exactly one descriptor, a listening ``AF_UNIX``
stream socket, is accepted; anything else is a start-up error that says what
was passed instead.
"""

from __future__ import annotations

import fcntl
import os
import socket
from dataclasses import dataclass

LISTEN_FDS_START = 3
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(Exception):
    """The passed descriptors cannot be served; the message says why."""


@dataclass(frozen=True)
class Inherited:
    """A listening socket this process did not bind."""

    sock: socket.socket
    name: str  # its LISTEN_FDNAMES entry ("unknown" when unnamed, as systemd says)


def listen_fds() -> list[tuple[int, str]]:
    """The descriptors passed to this process, with their names; ``[]`` when
    none were (or they were meant for another process). The variables are
    removed from the environment whatever they held."""
    env = os.environ
    pid, count, names = (env.pop(name, None) for name in _VARIABLES)
    if pid is None:
        return []
    if _number(pid, "LISTEN_PID") != os.getpid() or count is None:
        return []
    n = _number(count, "LISTEN_FDS")
    if n <= 0:
        return []
    labels = names.split(":") if names is not None else ["unknown"] * n
    if len(labels) != n:
        raise ActivationError(
            f"LISTEN_FDNAMES={names!r} names {len(labels)} descriptors, "
            f"LISTEN_FDS={count} (socket activation)"
        )
    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + n))
    for fd in fds:
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            raise ActivationError(
                f"LISTEN_FDS={n}: descriptor {fd} is not open (socket activation)"
            ) from None
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
    return list(zip(fds, labels, strict=True))


def _number(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ActivationError(f"{name}={value!r}: not a number (socket activation)") from None


def _name(value: int) -> str:
    """An address family's or socket type's name (``AF_INET``), or its number."""
    return str(getattr(value, "name", value))


def inherited_listener() -> Inherited | None:
    """The listening socket passed in ``LISTEN_FDS``, checked; ``None`` when
    the daemon must bind ``socket.path`` itself."""
    fds = listen_fds()
    if not fds:
        return None
    if len(fds) > 1:
        listed = ", ".join(f"{fd} ({name})" for fd, name in fds)
        raise ActivationError(
            f"LISTEN_FDS={len(fds)}: sessiond serves one socket, got descriptors {listed}; "
            "give the socket unit a single ListenStream="
        )
    fd, name = fds[0]
    where = f"descriptor {fd} ({name}) passed in LISTEN_FDS"
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ActivationError(f"{where} is not a socket: {exc.strerror}") from None
    problem = None
    if sock.family != socket.AF_UNIX:
        problem = f"is an {_name(sock.family)} socket, not AF_UNIX (ListenStream= must be a path)"
    elif sock.type != socket.SOCK_STREAM:
        problem = f"is a {_name(sock.type)} socket, not SOCK_STREAM (use ListenStream=)"
    elif not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        problem = "is not listening"
    if problem is not None:
        sock.detach()  # not ours to close: leave the descriptor as it came
        raise ActivationError(f"{where} {problem}")
    return Inherited(sock, name)
