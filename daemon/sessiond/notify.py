"""systemd notification protocol, written to ``NOTIFY_SOCKET`` directly (no libsystemd)."""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to systemd; ``False`` when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def supervised() -> bool:
    """Whether systemd waits for this process's notifications: it is the
    service's main process, and must stay so (no in-place upgrade)."""
    return bool(os.environ.get("NOTIFY_SOCKET"))


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half the timeout), or ``None``."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
