"""Load for the restart tests and the soak: redis-py clients that write and read
their own keys in a loop and count what they see.

Each client writes only its own keys, so it knows the value every key must
have: the last write acknowledged to it. What it counts:

- ``ops``: requests answered;
- ``errors``: exceptions that reached the application (the library gave up);
- ``wrong_reads``: a GET that did not return the last acknowledged value;
- ``connect_failures``: every failed connect() (refused, no such file...),
  counted below the library, which retries them;
- ``retried``: connection errors the library met on a request and retried
  (redis-py retries connection errors and timeouts by default: 10 times,
  with backoff). That is the only retrying there is: the loop itself never
  retries.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.connection import UnixDomainSocketConnection

KEYS_PER_CLIENT = 20


@dataclass
class Counts:
    ops: int = 0
    sets: int = 0
    gets: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    wrong_reads: list[str] = field(default_factory=list)
    connect_failures: Counter[str] = field(default_factory=Counter)
    retried: Counter[str] = field(default_factory=Counter)
    slowest: float = 0.0  # seconds, the longest a request waited (reported, never asserted)

    def add(self, other: Counts) -> None:
        self.ops += other.ops
        self.sets += other.sets
        self.gets += other.gets
        self.errors.update(other.errors)
        self.wrong_reads += other.wrong_reads
        self.connect_failures.update(other.connect_failures)
        self.retried.update(other.retried)
        self.slowest = max(self.slowest, other.slowest)


def error_name(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code in errno.errorcode:
        return errno.errorcode[code]
    return type(exc).__name__


def counting_connection(counts: Counts) -> type[UnixDomainSocketConnection]:
    """redis-py's Unix-socket connection, counting what goes wrong underneath
    the library's own retries."""

    class Counting(UnixDomainSocketConnection):
        def _connect(self) -> socket.socket:
            try:
                sock: socket.socket = super()._connect()
            except OSError as exc:
                counts.connect_failures[error_name(exc)] += 1
                raise
            return sock

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            try:
                super().send_packed_command(command, check_health)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                counts.retried[f"send: {type(exc).__name__}"] += 1
                raise

        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().read_response(*args, **kwargs)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                counts.retried[f"read: {type(exc).__name__}"] += 1
                raise

    return Counting


def client(path: Path, counts: Counts, **kwargs: Any) -> redis.Redis:
    """A redis-py client with the library's default retry policy."""
    r = redis.Redis(unix_socket_path=str(path), socket_timeout=60, **kwargs)
    r.connection_pool.connection_class = counting_connection(counts)
    return r


class Writer(threading.Thread):
    """One client: SET one of its keys, GET another, check it, again."""

    def __init__(self, load: Load, index: int) -> None:
        super().__init__(name=f"writer-{index}", daemon=True)
        self.load = load
        self.index = index
        self.counts = Counts()
        # key -> the values it may hold: the last acknowledged one, plus any
        # write whose outcome the client never learned
        self.expected: dict[bytes, set[bytes | None]] = {}

    def run(self) -> None:
        counts = self.counts
        rng = random.Random(self.index)
        keys = [f"c{self.index}:k{j}".encode() for j in range(KEYS_PER_CLIENT)]
        with client(self.load.path, counts) as r:
            n = 0
            while not self.load.stopping.is_set():
                n += 1
                key = keys[n % KEYS_PER_CLIENT]
                value = f"{self.index}:{n}".encode()
                began = time.monotonic()
                try:
                    r.set(key, value)
                except redis.RedisError as exc:
                    counts.errors[f"SET {type(exc).__name__}: {exc}"] += 1
                    self.expected.setdefault(key, {None}).add(value)
                else:
                    self.expected[key] = {value}
                    counts.sets += 1
                    counts.ops += 1
                other = rng.choice(keys)
                middle = time.monotonic()
                try:
                    got = r.get(other)
                except redis.RedisError as exc:
                    counts.errors[f"GET {type(exc).__name__}: {exc}"] += 1
                else:
                    counts.gets += 1
                    counts.ops += 1
                    if got not in self.expected.get(other, {None}):
                        counts.wrong_reads.append(f"{other!r}: {got!r}")
                end = time.monotonic()
                counts.slowest = max(counts.slowest, middle - began, end - middle)


class Prober(threading.Thread):
    """Opens a new connection again and again and PINGs on it, with no
    library in between and no retry: a refused connection shows here first.

    ``refused``: connect() failed. ``unanswered``: the connection was closed
    before the reply, which a daemon that stops does to a connection it had
    accepted but not read yet (a library retries that request elsewhere)."""

    def __init__(self, path: Path, stopping: threading.Event) -> None:
        super().__init__(name="prober", daemon=True)
        self.path = path
        self.stopping = stopping
        self.connects = 0
        self.refused: Counter[str] = Counter()
        self.unanswered: Counter[str] = Counter()

    def run(self) -> None:
        while not self.stopping.is_set():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(60)
                try:
                    s.connect(str(self.path))
                except OSError as exc:
                    self.refused[error_name(exc)] += 1
                    continue
                self.connects += 1
                try:
                    s.sendall(b"PING\r\n")
                    reply = s.recv(64)
                except OSError as exc:
                    self.unanswered[error_name(exc)] += 1
                    continue
                if reply != b"+PONG\r\n":
                    self.unanswered[repr(reply)] += 1
            time.sleep(0.002)


class Load:
    """``clients`` writers and a prober against the socket at ``path``."""

    def __init__(self, path: Path, clients: int) -> None:
        self.path = path
        self.stopping = threading.Event()
        self.writers = [Writer(self, i) for i in range(clients)]
        self.prober = Prober(path, self.stopping)

    def start(self) -> Load:
        for thread in (*self.writers, self.prober):
            thread.start()
        return self

    def wait_progress(self, ops: int, timeout: float = 120.0) -> None:
        """Until every writer has had ``ops`` more requests answered (they are
        all being served), or one of them is stuck."""
        target = [w.counts.ops + ops for w in self.writers]
        deadline = time.monotonic() + timeout
        while any(w.counts.ops < t for w, t in zip(self.writers, target, strict=True)):
            if time.monotonic() > deadline:
                stuck = [
                    w.index for w, t in zip(self.writers, target, strict=True) if w.counts.ops < t
                ]
                raise AssertionError(f"writers {stuck} made no progress: {self.totals()}")
            time.sleep(0.05)

    def stop(self) -> Counts:
        self.stopping.set()
        for thread in (*self.writers, self.prober):
            thread.join(120)
            assert not thread.is_alive(), f"{thread.name} did not stop"
        return self.totals()

    def totals(self) -> Counts:
        total = Counts()
        for w in self.writers:
            total.add(w.counts)
        return total

    def expected(self) -> Iterator[tuple[bytes, set[bytes | None]]]:
        for w in self.writers:
            yield from w.expected.items()

    def lost(self, path: Path | None = None) -> list[str]:
        """Keys whose acknowledged value cannot be read back now."""
        lost = []
        with redis.Redis(unix_socket_path=str(path or self.path), socket_timeout=60) as r:
            items = list(self.expected())
            for start in range(0, len(items), 500):
                chunk = items[start : start + 500]
                values = r.mget([key for key, _ in chunk])
                for (key, allowed), got in zip(chunk, values, strict=True):
                    if got not in allowed:
                        lost.append(f"{key!r}: {got!r}, expected one of {allowed!r}")
        return lost


def pid_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped meanwhile
        return True


def stop_pid(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM ``pid`` and wait for it to go; SIGKILL after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not pid_gone(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)
