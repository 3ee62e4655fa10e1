"""Crash-torture of sessiond's PostgreSQL shared store:
``python bench/pg_torture.py [--minutes N] [--kinds a,b]`` (iterations of about
20 s; at the end it prints ``PROBLEMS (n):`` and each one, a wrong reply with the
key's last states). ``SESSIOND_REPO`` names another checkout to torture.

Two daemons ("hosts") on one throwaway PostgreSQL (tests/pg.py), several workers
each with a client on both hosts. Each worker owns its keys (a sequential model
per key, exact), and all workers share a few counters, GETSET registers and sets.
Failures are injected while they run; after each iteration a fresh daemon, both
hosts and the table itself are compared with the model.

Model: each key has a set of possible states; an op answered with an error (or no
answer) branches (applied / not applied), tagged with the op's id so that a
MULTI/EXEC's keys can be checked all-or-none. MISCONF is a refusal before memory:
not applied. After an uncertain op a worker leaves the key alone for COOLDOWN s
(a commit in flight may still land within 0.9 x timeout).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

# The checkout whose daemon is tortured: this one, or SESSIOND_REPO.
REPO = Path(os.environ.get("SESSIOND_REPO") or Path(__file__).resolve().parents[1])
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "daemon"))

import redis  # noqa: E402
import yaml  # noqa: E402
from pg import PgCluster, pids_with_parent  # noqa: E402
from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402
from sessiond import values  # noqa: E402

PY = "/work/main/.venv/bin/python"
COOLDOWN = 4.0
EPS = 0.15  # seconds of slack around a deadline
LAG = 1.5  # stale read beyond this after the newer write's ack is reported
MAXSTATES = 64
FIELDS = [b"f%d" % i for i in range(4)]
MEMBERS = [b"m%d" % i for i in range(5)]

WORK = Path(tempfile.gettempdir()) / "sessiond-pg-torture"

lock = threading.Lock()
problems: list[str] = []
stats: collections.Counter[str] = collections.Counter()


def problem(msg: str) -> None:
    with lock:
        problems.append(msg)
    print("PROBLEM:", msg, flush=True)


# ------------------------------------------------------------------ daemons


class Host:
    def __init__(self, name: str, dsn: str, extra: dict[str, Any] | None = None) -> None:
        self.name = name
        self.dir = WORK / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock = self.dir / "s.sock"
        self.log = self.dir / "sessiond.log"
        cfg: dict[str, Any] = {
            "socket": {"path": "s.sock", "mode": "0600"},
            "persistence": {
                "backend": "postgresql",
                "dsn": dsn,
                "durability": "always",
                "timeout": "2s",
                "connect_timeout": "60s",
                "renew_interval": "200ms",
                "heartbeat_interval": "250ms",
            },
            "cache": {"sweep_interval": "100ms", "default_ttl": 0, "sliding": False},
            "metrics": {"enabled": False},
            "logging": {"level": "info", "format": "json"},
            "limits": {"max_clients": 1000},
        }
        if extra:
            for k, v in extra.items():
                cfg[k].update(v)
        (self.dir / "sessiond.yaml").write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_offset = 0

    def started_count(self) -> int:
        if not self.log.exists():
            return 0
        return self.log.read_text(errors="replace").count('"event": "started"')

    def start(self) -> None:
        n = self.started_count()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    "setpriv",
                    "--pdeathsig=SIGKILL",
                    "--",
                    PY,
                    "-m",
                    "sessiond",
                    "run",
                    "--config",
                    str(self.dir / "sessiond.yaml"),
                ],
                cwd=self.dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO / "daemon")},
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}")
            if self.sock.exists() and self.started_count() > n:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start")

    def client(self, timeout: float = 15.0) -> redis.Redis:
        # No retries: redis-py's default retries a timed-out command on a new
        # connection, which would apply it twice unknown to the model.
        c = redis.Redis(
            unix_socket_path=str(self.sock), socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        c.response_callbacks.clear()  # raw replies
        return c

    def kill(self) -> None:
        assert self.proc
        self.proc.kill()
        self.proc.wait()

    def term(self) -> tuple[int, float]:
        assert self.proc
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            problem(f"{self.name}: SIGTERM did not stop it within 30 s")
            self.proc.kill()
            rc = self.proc.wait()
        return rc, time.monotonic() - t

    def new_log(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        out = text[self.log_offset :]
        self.log_offset = len(text)
        return out


# --------------------------------------------------------------------- model
# A state: None (absent) or (value, lo, hi, tags); value is bytes, a frozenset of
# (field, value) for a hash, or ("set", frozenset) for a set; lo/hi bound the
# deadline (None: no TTL); tags a tuple of (opid, applied).


def hval(d: frozenset[tuple[bytes, bytes]] | None) -> dict[bytes, bytes]:
    return dict(d) if d else {}


class KeyModel:
    __slots__ = ("cool_until", "history", "key", "kind", "last_host", "states", "untracked")

    def __init__(self, key: bytes, kind: str) -> None:
        self.key = key
        self.kind = kind
        self.states: list[Any] = [None]
        self.history: collections.deque[tuple[float, list[Any]]] = collections.deque(maxlen=12)
        self.cool_until = 0.0
        self.last_host = -1
        self.untracked = False


def parts(state: Any) -> tuple[Any, Any, Any, tuple[Any, ...]]:
    if state is None:
        return (None, None, None, ())
    if state[0] == "ABSENT":
        return (None, None, None, state[1])
    return state


def make(v: Any, lo: Any, hi: Any, tags: tuple[Any, ...]) -> Any:
    if v is None:
        return ("ABSENT", tags) if tags else None
    return (v, lo, hi, tags)


def tags_of(state: Any) -> tuple[Any, ...]:
    return parts(state)[3]


def is_absent(state: Any) -> bool:
    return parts(state)[0] is None


def alive_branches(state: Any, t0: float, t1: float) -> list[tuple[Any, Any, Any, Any]]:
    """The state as an op in [t0, t1] sees it: one whose deadline falls in the
    window branches into alive and expired."""
    v, lo, hi, tags = parts(state)
    if v is None or lo is None or lo > t1 + EPS:
        return [(v, lo, hi, tags)]
    if hi < t0 - EPS:
        return [(None, None, None, tags)]
    return [(v, lo, hi, tags), (None, None, None, tags)]


# An op: fn(value, lo, hi, t0, t1) -> (new_value, new_lo, new_hi, reply).


def op_set(
    v: bytes, ex: float | None = None, nx: bool = False, xx: bool = False, get: bool = False
) -> Any:
    def fn(cur: Any, lo: Any, hi: Any, t0: float, t1: float) -> Any:
        exists = cur is not None
        old = cur if get else None
        if (nx and exists) or (xx and not exists):
            return cur, lo, hi, (old if get else None)
        nlo, nhi = (t0 + ex, t1 + ex) if ex else (None, None)
        return v, nlo, nhi, (old if get else True)

    return fn


def op_getset(v: bytes) -> Any:
    return lambda cur, lo, hi, t0, t1: (v, None, None, cur)


def op_del() -> Any:
    return lambda cur, lo, hi, t0, t1: (None, None, None, int(cur is not None))


def op_expire(s: float) -> Any:
    def fn(cur: Any, lo: Any, hi: Any, t0: float, t1: float) -> Any:
        if cur is None:
            return None, None, None, 0
        return cur, t0 + s, t1 + s, 1

    return fn


def op_persist() -> Any:
    def fn(cur: Any, lo: Any, hi: Any, t0: float, t1: float) -> Any:
        if cur is None or lo is None:
            return cur, lo, hi, 0
        return cur, None, None, 1

    return fn


def op_incrby(n: int) -> Any:
    def fn(cur: Any, lo: Any, hi: Any, t0: float, t1: float) -> Any:
        new = (int(cur) if cur is not None else 0) + n
        return str(new).encode(), lo, hi, new

    return fn


def op_hset(f: bytes, v: bytes) -> Any:
    def fn(cur: Any, lo: Any, hi: Any, t0: float, t1: float) -> Any:
        d = hval(cur)
        new = int(f not in d)
        d[f] = v
        return frozenset(d.items()), lo, hi, new

    return fn


def op_hdel(f: bytes) -> Any:
    def fn(cur: Any, lo: Any, hi: Any, t0: float, t1: float) -> Any:
        d = hval(cur)
        if f not in d:
            return cur, lo, hi, 0
        del d[f]
        if not d:
            return None, None, None, 1
        return frozenset(d.items()), lo, hi, 1

    return fn


def op_sadd(m: bytes) -> Any:
    def fn(cur: Any, lo: Any, hi: Any, t0: float, t1: float) -> Any:
        s = set(cur[1]) if cur else set()
        new = int(m not in s)
        s.add(m)
        return ("set", frozenset(s)), lo, hi, new

    return fn


def op_srem(m: bytes) -> Any:
    def fn(cur: Any, lo: Any, hi: Any, t0: float, t1: float) -> Any:
        s = set(cur[1]) if cur else set()
        if m not in s:
            return cur, lo, hi, 0
        s.discard(m)
        if not s:
            return None, None, None, 1
        return ("set", frozenset(s)), lo, hi, 1

    return fn


def step(state: Any, fn: Any, t0: float, t1: float) -> list[tuple[Any, Any]]:
    """[(new state, expected reply)] over the expiry branches."""
    out = []
    for v, lo, hi, tags in alive_branches(state, t0, t1):
        nv, nlo, nhi, reply = fn(v, lo, hi, t0, t1)
        out.append((make(nv, nlo, nhi, tags), reply))
    return out


def add_tag(state: Any, tag: tuple[int, bool]) -> Any:
    v, lo, hi, tags = parts(state)
    if v is None:
        return ("ABSENT", (*tags, tag))
    return (v, lo, hi, (*tags, tag))


def dedupe(states: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for s in states:
        if s not in seen:
            seen.append(s)
    return seen


# ------------------------------------------------------------------- workers

opids = iter(range(1, 10**12))
opid_lock = threading.Lock()


def next_opid() -> int:
    with opid_lock:
        return next(opids)


class Shared:
    def __init__(self) -> None:
        self.ctr_replies: dict[int, list[int]] = collections.defaultdict(list)
        self.ctr_acked: collections.Counter[int] = collections.Counter()
        self.ctr_unknown: collections.Counter[int] = collections.Counter()
        self.gs_written: dict[int, dict[bytes, str]] = collections.defaultdict(dict)
        self.gs_returned: dict[int, list[bytes]] = collections.defaultdict(list)
        self.gs_unknown: collections.Counter[int] = collections.Counter()
        self.set_members: dict[int, dict[bytes, str]] = collections.defaultdict(dict)
        self.lock = threading.Lock()


NCTR, NGS, NSET = 6, 6, 4
SEQ: collections.Counter[int] = collections.Counter()


def classify(exc: BaseException) -> str:
    """'refused' (not applied), 'unknown' (either), or 'bug'."""
    text = str(exc)
    if isinstance(exc, redis.WatchError):
        stats["exec_nil_unwatched"] += 1
        return "refused"
    if isinstance(exc, redis.ResponseError):
        # Refused before it ran, whatever failure the refusal names.
        if text.startswith(("MISCONF", "Transaction discarded because of")):
            return "refused"
        if "outcome unknown" in text or "LOADING" in text:
            return "unknown"
        # A commit's error says it did not land, once the database was asked
        # (docs/shared-store.md, "a commit whose answer is lost").
        if re.match(r"store \w+ failed", text):
            return "refused"
        return "unknown:" + text[:80]
    if isinstance(exc, redis.TimeoutError):
        return "timeout"
    if isinstance(exc, (redis.ConnectionError, ConnectionError, OSError)):
        return "unknown"
    return "bug:" + repr(exc)[:200]


class Worker(threading.Thread):
    def __init__(
        self, wid: int, hosts: list[Host], keys: list[KeyModel], shared: Shared, seed: int
    ) -> None:
        super().__init__(daemon=True)
        self.wid = wid
        self.hosts = hosts
        self.keys = keys
        self.shared = shared
        self.rng = random.Random(seed)
        self.clients: list[redis.Redis | None] = [None for _ in hosts]
        self.stop = threading.Event()
        self.seq = 0
        self.ops = 0

    def client(self, h: int) -> redis.Redis:
        c = self.clients[h]
        if c is None:
            c = self.hosts[h].client()
            self.clients[h] = c
        return c

    def drop(self, h: int) -> None:
        c = self.clients[h]
        self.clients[h] = None
        if c is not None:
            with contextlib.suppress(Exception):
                c.close()

    def value(self) -> bytes:
        SEQ[self.wid] += 1
        return b"w%d-%d" % (self.wid, SEQ[self.wid])

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.one()
        except Exception:
            problem(f"worker {self.wid} crashed: {traceback.format_exc()}")

    def error(self, h: int, exc: BaseException, what: str) -> str:
        kind = classify(exc)
        stats["err:" + kind.split(":")[0]] += 1
        stats[f"errmsg:{kind.split(':')[0]}:{str(exc)[:70]}"] += 1
        if kind == "timeout":
            problem(f"hang: worker {self.wid} host {h} {what}: no reply within 15 s ({exc})")
            kind = "unknown"
        elif kind.startswith("bug:"):
            problem(f"unexpected exception on {what}: {kind}")
            kind = "unknown"
        elif kind.startswith("unknown:"):
            kind = "unknown"
        if not isinstance(exc, redis.ResponseError):
            self.drop(h)
            time.sleep(0.05)
        return kind

    def one(self) -> None:
        r = self.rng.random()
        h = self.rng.randrange(len(self.hosts))
        if r < 0.10:
            self.shared_op(h)
        elif r < 0.18:
            self.multi(h)
        else:
            km = self.rng.choice(self.keys)
            if km.untracked or km.cool_until > time.time():
                return
            self.key_op(h, km)

    # ---------------------------------------------------------- owned keys

    def pick(self, km: KeyModel) -> tuple[str, tuple[Any, ...], Any, bool]:
        """(command, args, op fn, is_read)."""
        rng = self.rng
        k = km.key
        r = rng.random()
        if r < 0.15:
            return ("READ", (), None, True)
        if r < 0.22:
            return ("DEL", (k,), op_del(), False)
        if r < 0.27:
            s = rng.choice([1, 2, 30, 120])
            return ("EXPIRE", (k, s), op_expire(s), False)
        if r < 0.31:
            return ("PERSIST", (k,), op_persist(), False)
        if km.kind == "str":
            v = self.value()
            x = rng.random()
            if x < 0.3:
                return ("SET", (k, v), op_set(v), False)
            if x < 0.45:
                s = rng.choice([1, 3, 60])
                return ("SET", (k, v, "EX", s), op_set(v, ex=s), False)
            if x < 0.55:
                ms = rng.choice([700, 2500, 90000])
                return ("SET", (k, v, "PX", ms), op_set(v, ex=ms / 1000), False)
            if x < 0.7:
                return ("SET", (k, v, "NX"), op_set(v, nx=True), False)
            if x < 0.75:
                return ("SET", (k, v, "XX", "GET"), op_set(v, xx=True, get=True), False)
            return ("GETSET", (k, v), op_getset(v), False)
        if km.kind == "ctr":
            x = rng.random()
            if x < 0.8:
                n = rng.choice([1, 1, 1, 5, -2])
                return ("INCRBY", (k, n), op_incrby(n), False)
            n = rng.randrange(100)
            return ("SET", (k, n, "EX", 60), op_set(str(n).encode(), ex=60), False)
        if km.kind == "hash":
            f = rng.choice(FIELDS)
            if rng.random() < 0.7:
                v = self.value()
                return ("HSET", (k, f, v), op_hset(f, v), False)
            return ("HDEL", (k, f), op_hdel(f), False)
        m = rng.choice(MEMBERS)
        if rng.random() < 0.6:
            return ("SADD", (k, m), op_sadd(m), False)
        return ("SREM", (k, m), op_srem(m), False)

    def read_cmd(self, km: KeyModel) -> tuple[str, ...]:
        return {"str": ("GET",), "ctr": ("GET",), "hash": ("HGETALL",), "set": ("SMEMBERS",)}[
            km.kind
        ]

    def key_op(self, h: int, km: KeyModel) -> None:
        cmd, args, fn, is_read = self.pick(km)
        c = self.client(h)
        t0 = time.time()
        try:
            if is_read:
                reply = c.execute_command(self.read_cmd(km)[0], km.key)
            else:
                reply = c.execute_command(cmd, *args)
        except Exception as exc:
            t1 = time.time()
            kind = self.error(h, exc, f"{cmd} {km.key!r}")
            if not is_read:
                self.uncertain(km, fn, t0, t1, kind, [km])
            return
        t1 = time.time()
        self.ops += 1
        stats["ops"] += 1
        if is_read:
            self.check_read(km, h, reply, t0, t1)
            return
        self.acked(km, fn, reply, t0, t1, f"{cmd} {args!r} on host {h}", h)

    def acked(
        self, km: KeyModel, fn: Any, reply: Any, t0: float, t1: float, what: str, h: int
    ) -> None:
        reply = normalize_reply(km.kind, reply)
        new: list[Any] = []
        expected = []
        for s in km.states:
            for ns, exp in step(s, fn, t0, t1):
                expected.append(exp)
                if exp == reply or (isinstance(exp, bool) and exp and reply is True):
                    new.append(ns)
        if not new:
            problem(
                f"wrong reply: {what} on {km.key!r} answered {reply!r}, expected one of "
                f"{expected!r} (states {km.states!r}) at {t0:.3f}-{t1:.3f}; history: "
                + "; ".join(repr(h) for h in km.history)
            )
            km.untracked = True
            return
        if dedupe(new) != km.states:
            self.set_states(km, dedupe(new), t1, h)

    def set_states(self, km: KeyModel, states: list[Any], t: float, h: int = -1) -> None:
        if len(states) > MAXSTATES:
            stats["untracked_overflow"] += 1
            km.untracked = True
        km.history.append((t, km.states, h))
        km.states = states

    def uncertain(
        self, km_list_fn: Any, fn: Any, t0: float, t1: float, kind: str, kms: list[KeyModel]
    ) -> None:
        km = kms[0]
        if kind == "refused":
            stats["refused"] += 1
            return  # not applied: nothing changes
        stats["uncertain"] += 1
        self.branch(km, fn, next_opid(), t0, t1)

    def branch(self, km: KeyModel, fn: Any, opid: int, t0: float, t1: float) -> None:
        """``km``'s states, each as it was and as op ``opid`` (``fn``) made it,
        tagged with which; the key left alone while a late commit may land."""
        new = []
        for s in km.states:
            new.append(add_tag(s, (opid, False)))
            for ns, _ in step(s, fn, t0, t1 + COOLDOWN):
                new.append(add_tag(ns, (opid, True)))
        self.set_states(km, dedupe(new), t1)
        km.cool_until = time.time() + COOLDOWN

    def check_read(self, km: KeyModel, h: int, reply: Any, t0: float, t1: float) -> None:
        obs = normalize_reply(km.kind, reply)
        if any(consistent(s, obs, t0, t1) for s in km.states):
            stats["reads_ok"] += 1
            return
        # stale? find the newest history entry it matches
        hist = list(km.history)
        for i in range(len(hist) - 1, -1, -1):
            t_changed, states, by = hist[i]
            if any(consistent(s, obs, t0 - 30, t1) for s in states):
                age = t0 - t_changed
                stats["reads_stale"] += 1
                if by == h:
                    problem(
                        f"stale read on the writing host: host {h} read {km.key!r} = {obs!r} "
                        f"{age:.2f}s after its own newer write was acknowledged (now "
                        f"{km.states!r}, history {hist[i:]!r})"
                    )
                elif age > LAG:
                    problem(
                        f"stale read: host {h} read {km.key!r} = {obs!r} {age:.2f}s after a "
                        f"newer write was acknowledged on host {by} (now {km.states!r})"
                    )
                return
        problem(f"wrong read: host {h} read {km.key!r} = {obs!r}; states {km.states!r}")

    # ------------------------------------------------------------ MULTI

    def multi(self, h: int) -> None:
        n = self.rng.randint(2, 4)
        chosen = []
        for km in self.rng.sample(self.keys, n):
            if km.untracked or km.cool_until > time.time():
                return
            chosen.append(km)
        picks = []
        for km in chosen:
            cmd, args, fn, is_read = self.pick(km)
            if is_read:
                cmd, args, fn = "DEL", (km.key,), op_del()
            picks.append((km, cmd, args, fn))
        c = self.client(h)
        t0 = time.time()
        try:
            pipe = c.pipeline(transaction=True)
            for _, cmd, args, _ in picks:
                pipe.execute_command(cmd, *args)
            replies = pipe.execute(raise_on_error=False)
        except Exception as exc:
            t1 = time.time()
            kind = self.error(h, exc, "MULTI/EXEC")  # EXECABORT, MISCONF: refused
            stats["multi_err:" + str(exc)[:50]] += 1
            if kind == "refused":
                stats["refused"] += 1
                return
            stats["uncertain_multi"] += 1
            opid = next_opid()
            for km, _, _, fn in picks:
                self.branch(km, fn, opid, t0, t1)
            return
        t1 = time.time()
        if not isinstance(replies, list):
            # EXEC answered nil (aborted): nothing ran
            stats["exec_nil"] += 1
            return
        stats["ops"] += 1
        stats["multi_ok"] += 1
        for (km, cmd, args, fn), reply in zip(picks, replies, strict=True):
            if isinstance(reply, Exception):
                problem(f"EXEC on host {h}: {cmd} {args!r} answered {reply!r} inside EXEC")
                km.untracked = True
                continue
            self.acked(km, fn, reply, t0, t1, f"EXEC:{cmd} {args!r} on host {h}", h)

    # ------------------------------------------------------------ shared

    def tracked(
        self, h: int, table: dict[Any, str], v: Any, what: str, call: Any
    ) -> tuple[Any, str | None]:
        """Run ``call`` writing ``v``, recorded in ``table`` as pending, then
        acked, refused or unknown; its reply, and ``None`` or the error's kind."""
        sh = self.shared
        with sh.lock:
            table[v] = "pending"
        try:
            reply = call()
        except Exception as exc:
            kind = "refused" if self.error(h, exc, what) == "refused" else "unknown"
            with sh.lock:
                table[v] = kind
            return None, kind
        with sh.lock:
            table[v] = "acked"
        return reply, None

    def shared_op(self, h: int) -> None:
        sh = self.shared
        r = self.rng.random()
        c = self.client(h)
        if r < 0.4:
            i = self.rng.randrange(NCTR)
            try:
                reply = c.incr(f"shared:ctr:{i}")
            except Exception as exc:
                kind = self.error(h, exc, "shared INCR")
                if kind != "refused":
                    with sh.lock:
                        sh.ctr_unknown[i] += 1
                return
            with sh.lock:
                sh.ctr_acked[i] += 1
                sh.ctr_replies[i].append(int(reply))
        elif r < 0.75:
            i = self.rng.randrange(NGS)
            v = self.value()
            reply, kind = self.tracked(h, sh.gs_written[i], v, "shared GETSET",
                                       lambda: c.getset(f"shared:gs:{i}", v))  # fmt: skip
            if kind is not None:
                if kind == "unknown":
                    with sh.lock:
                        sh.gs_unknown[i] += 1
                return
            if reply is not None:
                with sh.lock:
                    sh.gs_returned[i].append(reply)
        else:
            i = self.rng.randrange(NSET)
            m = self.value()
            reply, kind = self.tracked(h, sh.set_members[i], m, "shared SADD",
                                       lambda: c.sadd(f"shared:set:{i}", m))  # fmt: skip
            if kind is not None:
                return
            if reply != 1:
                problem(f"shared SADD of a new member {m!r} answered {reply!r}")
        stats["ops"] += 1
        stats["shared_ops"] += 1


def normalize_reply(kind: str, reply: Any) -> Any:
    if kind == "hash" and isinstance(reply, (list, dict)):
        d = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
        return frozenset(d.items()) if d else None
    if kind == "set" and isinstance(reply, (list, set)):
        return ("set", frozenset(reply)) if reply else None
    if reply == b"OK":
        return True
    return reply


def consistent(state: Any, obs: Any, t0: float, t1: float) -> bool:
    v, lo, hi, _ = parts(state)
    if v is None:
        return obs is None
    if lo is not None and hi < t0 - EPS:
        return obs is None  # expired for sure
    if obs is None:
        return lo is not None and lo <= t1 + EPS
    return bool(v == obs)


# ----------------------------------------------------------------- verify


def read_all(host: Host, kms: list[KeyModel]) -> dict[bytes, tuple[Any, int]]:
    out: dict[bytes, tuple[Any, int]] = {}
    c = host.client(timeout=60)
    try:
        for start in range(0, len(kms), 200):
            chunk = kms[start : start + 200]
            pipe = c.pipeline(transaction=False)
            for km in chunk:
                cmd = {"str": "GET", "ctr": "GET", "hash": "HGETALL", "set": "SMEMBERS"}[km.kind]
                pipe.execute_command(cmd, km.key)
                pipe.execute_command("PTTL", km.key)
            res = pipe.execute()
            for j, km in enumerate(chunk):
                out[km.key] = (normalize_reply(km.kind, res[2 * j]), res[2 * j + 1])
    finally:
        c.close()
    return out


def db_rows(cluster: PgCluster) -> dict[bytes, tuple[Any, float | None]]:
    now = time.time()
    rows = cluster.query(
        "SELECT key, kind, value, deadline FROM sessiond_sessions", dbname="sessiond"
    )
    out = {}
    for key, kind, value, deadline in rows:
        key = bytes(key)
        if deadline is not None and deadline <= now:
            continue
        v = values.decode(kind, bytes(value))
        if isinstance(v, dict):
            v = frozenset(v.items()) if v else None
        elif isinstance(v, set):
            v = ("set", frozenset(v)) if v else None
        out[key] = (v, deadline)
    return out


def verify(
    kms: list[KeyModel],
    shared: Shared,
    verifier: Host,
    hosts: list[Host],
    cluster: PgCluster,
    label: str,
) -> None:
    t0 = time.time()
    fresh = read_all(verifier, kms)
    t1 = time.time()
    db = db_rows(cluster)
    t2 = time.time()
    checked = 0
    group_allowed: dict[int, set[bool]] = {}
    for km in kms:
        if km.untracked:
            continue
        obs, pttl = fresh[km.key]
        good = [s for s in km.states if consistent(s, obs, t0, t1)]
        # TTL check
        if obs is not None and good:
            remaining = pttl / 1000 if pttl >= 0 else None
            ttl_good = []
            for s in good:
                _, lo, hi, _ = s
                if lo is None:
                    if remaining is None:
                        ttl_good.append(s)
                elif remaining is not None and lo - t1 - 0.6 <= remaining <= hi - t0 + 0.6:
                    # deadline between lo and hi, read between t0 and t1
                    ttl_good.append(s)
            if not ttl_good:
                problem(
                    f"{label}: {km.key!r} TTL {pttl} ms does not fit "
                    f"{[(s[1] and s[1] - t0, s[2] and s[2] - t0) for s in good]}"
                )
            else:
                good = ttl_good
        if not good:
            problem(
                f"{label}: fresh daemon reads {km.key!r} = {obs!r}, expected one of {km.states!r}"
            )
            km.untracked = True
            continue
        # the table agrees with the fresh daemon
        row = db.get(km.key)
        dbv = row[0] if row else None
        # a key at its deadline between the two reads may differ
        at_deadline = obs is not None and dbv is None and pttl is not None
        if dbv != obs and not (at_deadline and pttl < (t2 - t0) * 1000 + 500):
            problem(f"{label}: table has {km.key!r} = {dbv!r}, fresh daemon {obs!r}")
        # all-or-none of the uncertain ops
        per_key: dict[int, set[bool]] = collections.defaultdict(set)
        for s in good:
            for opid, applied in tags_of(s):
                per_key[opid].add(applied)
        for opid, allowed in per_key.items():
            group_allowed[opid] = group_allowed.get(opid, {True, False}) & allowed
            if not group_allowed[opid]:
                problem(
                    f"{label}: uncertain op {opid} applied to some of its keys only ({km.key!r})"
                )
        # collapse: keep the good states, without tags
        collapsed = []
        for s in good:
            if is_absent(s):
                collapsed.append(None)
            else:
                collapsed.append((s[0], s[1], s[2], ()))
        km.history.clear()
        km.states = dedupe(collapsed)
        km.cool_until = 0
        checked += 1
        stats["key_checks"] += 1
        if obs is not None:
            stats["key_checks_present"] += 1
    # the running hosts agree with the fresh daemon (after the lag)
    for host in hosts:
        if host.proc is None or host.proc.poll() is not None:
            continue
        seen = read_all(host, kms)
        t3 = time.time()
        for km in kms:
            if km.untracked:
                continue
            a, b = seen[km.key][0], fresh[km.key][0]
            pttl = fresh[km.key][1]
            if a != b and not (a is None and pttl >= 0 and pttl / 1000 < t3 - t0 + 1):
                problem(f"{label}: host {host.name} serves {km.key!r} = {a!r}, fresh daemon {b!r}")
    verify_shared(shared, verifier, cluster, label)
    print(f"{label}: checked {checked} keys in {time.time() - t0:.1f}s", flush=True)


def verify_shared(sh: Shared, verifier: Host, cluster: PgCluster, label: str) -> None:
    c = verifier.client(timeout=60)
    try:
        for i in range(NCTR):
            v = c.get(f"shared:ctr:{i}")
            val = int(v) if v is not None else 0
            reps = sh.ctr_replies[i]
            acked, unk = sh.ctr_acked[i], sh.ctr_unknown[i]
            if len(set(reps)) != len(reps):
                dup = [x for x, n in collections.Counter(reps).items() if n > 1]
                problem(f"{label}: shared counter {i}: INCR replies repeated {dup[:5]}")
            if not acked <= val <= acked + unk:
                problem(f"{label}: shared counter {i} = {val}, acked {acked}, unknown {unk}")
            if reps and max(reps) > val:
                problem(f"{label}: shared counter {i} = {val} < a reply {max(reps)}")
            stats["shared_checks"] += 1
        for i in range(NGS):
            final = c.get(f"shared:gs:{i}")
            returned = sh.gs_returned[i]
            cnt = collections.Counter(returned)
            for v, n in cnt.items():
                if n > 1:
                    problem(f"{label}: GETSET register {i}: {v!r} returned {n} times")
                st = sh.gs_written[i].get(v)
                if st not in ("acked", "unknown"):
                    problem(f"{label}: GETSET register {i}: returned {v!r}, which was {st}")
            missing = [
                v
                for v, st in sh.gs_written[i].items()
                if st == "acked" and cnt[v] == 0 and v != final
            ]
            if len(missing) > sh.gs_unknown[i]:
                problem(
                    f"{label}: GETSET register {i}: {len(missing)} acknowledged values never "
                    f"seen again (only {sh.gs_unknown[i]} unknown GETSETs could take them): "
                    f"{missing[:5]}"
                )
            if final is not None and sh.gs_written[i].get(final) not in ("acked", "unknown"):
                problem(
                    f"{label}: GETSET register {i} holds {final!r}, {sh.gs_written[i].get(final)}"
                )
            stats["shared_checks"] += 1
        for i in range(NSET):
            members = c.smembers(f"shared:set:{i}")
            for m, st in sh.set_members[i].items():
                if st == "acked" and m not in members:
                    problem(f"{label}: shared set {i} lost acknowledged member {m!r}")
                if st == "refused" and m in members:
                    problem(f"{label}: shared set {i} has member {m!r} whose SADD was refused")
            for m in members:
                if sh.set_members[i].get(m) not in ("acked", "unknown"):
                    problem(f"{label}: shared set {i} has {m!r}: {sh.set_members[i].get(m)}")
            stats["shared_checks"] += 1
    finally:
        c.close()


# --------------------------------------------------------------- failures


def pg_children(cluster: PgCluster) -> list[int]:
    assert cluster.proc
    return pids_with_parent(cluster.proc.pid)


def paused(pids: list[int], rng: random.Random) -> None:
    """SIGSTOP ``pids`` for 0.5-4 s, then SIGCONT them (those still there)."""
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGSTOP)
    time.sleep(rng.uniform(0.5, 4.0))
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGCONT)


def inject(kind: str, hosts: list[Host], cluster: PgCluster, rng: random.Random) -> None:
    h = rng.randrange(len(hosts))
    host = hosts[h]
    print(f"  inject {kind} (host {host.name})", flush=True)
    stats["inject:" + kind] += 1
    if kind == "kill9_host":
        host.kill()
        time.sleep(rng.uniform(0.2, 1.5))
        host.start()
    elif kind == "term_host":
        rc, took = host.term()
        if rc != 0:
            problem(f"{host.name}: SIGTERM exit {rc}")
        if took > 10:
            problem(f"{host.name}: SIGTERM took {took:.1f}s")
        host.start()
    elif kind == "terminate_backends":
        n = cluster.terminate_backends(dbname="sessiond")
        print(f"    terminated {n}", flush=True)
    elif kind == "terminate_one_host":
        cluster.terminate_backends(dbname="sessiond", application_name=host.name)
    elif kind == "pg_kill":
        cluster.kill()
        time.sleep(rng.uniform(0.1, 2.5))
        cluster.start()
    elif kind == "pg_fast_restart":
        cluster.restart("fast")
    elif kind == "pg_immediate_restart":
        cluster.stop("immediate")
        cluster.start()
    elif kind == "pg_pause":
        assert cluster.proc
        paused([cluster.proc.pid, *pg_children(cluster)], rng)
    elif kind == "pg_pause_backends":
        # only the client backends: the postmaster keeps accepting
        rows = cluster.query(
            "SELECT pid FROM pg_stat_activity WHERE datname = 'sessiond' "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        paused([r[0] for r in rows if rng.random() < 0.6], rng)
    elif kind == "host_pause":
        assert host.proc
        paused([host.proc.pid], rng)
    elif kind == "none":
        pass
    else:
        raise ValueError(kind)


KINDS = [
    "kill9_host",
    "term_host",
    "terminate_backends",
    "terminate_one_host",
    "pg_kill",
    "pg_fast_restart",
    "pg_immediate_restart",
    "pg_pause",
    "pg_pause_backends",
    "host_pause",
    "none",
]

EXPECTED_WARN = {
    "store_error",
    "listen_lost",
    "listen_restored",
    "store_recovered",
    "barrier_late",
    "store_waiting",
    "store_unavailable",
    "commit_failed",
    "store_write_failed",
}


def scan_logs(hosts: list[Host], label: str) -> None:
    for host in hosts:
        text = host.new_log()
        if "Traceback" in text:
            i = text.index("Traceback")
            problem(
                f"{label}: Traceback in {host.name}'s log:\n{text[max(0, i - 1500) : i + 3000]}"
            )
        for line in text.splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                if line.strip():
                    stats["log_nonjson"] += 1
                    if stats["log_nonjson"] < 5:
                        print(f"    non-JSON log line {host.name}: {line[:300]}", flush=True)
                continue
            lvl = e.get("level")
            if lvl in ("warning", "error", "critical"):
                stats[f"log:{lvl}:{e.get('event')}"] += 1
                if "exception" in e or "exc_info" in e:
                    problem(f"{label}: {host.name} logged an exception: {line[:2000]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--workers", type=int, default=3, help="per host")
    ap.add_argument("--keys", type=int, default=3000)
    ap.add_argument("--run", type=float, default=10.0, help="seconds of load per iteration")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--kinds", default=",".join(KINDS))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    print(f"seed {args.seed}", flush=True)
    if WORK.exists():
        subprocess.run(["rm", "-rf", str(WORK)], check=True)
    WORK.mkdir(parents=True)
    cluster = PgCluster.create(settings={"max_connections": 200})
    hosts: list[Host] = []
    verifier: Host | None = None
    started = time.time()
    try:
        hosts = [Host(f"host{i}", cluster.dsn(application_name=f"host{i}")) for i in range(2)]
        for h in hosts:
            h.start()
        nworkers = args.workers * len(hosts)
        kinds = ["str", "str", "ctr", "hash", "set"]
        per = args.keys // nworkers
        shared = Shared()
        worker_keys = [
            [
                KeyModel(b"w%d:%s:%d" % (w, kinds[j % 5].encode(), j), kinds[j % 5])
                for j in range(per)
            ]
            for w in range(nworkers)
        ]
        all_keys = [km for ks in worker_keys for km in ks]
        it = 0
        inject_kinds = args.kinds.split(",")
        while time.time() - started < args.minutes * 60:
            it += 1
            label = f"iteration {it}"
            chosen = [rng.choice(inject_kinds) for _ in range(rng.choice([1, 1, 2]))]
            print(f"{label}: {chosen}", flush=True)
            workers = [
                Worker(w, hosts, worker_keys[w], shared, rng.randrange(1 << 30))
                for w in range(nworkers)
            ]
            for w in workers:
                w.start()
            t_end = time.time() + args.run
            for kind in chosen:
                time.sleep(rng.uniform(0.5, args.run / (len(chosen) + 1)))
                try:
                    inject(kind, hosts, cluster, rng)
                except Exception:
                    problem(f"{label}: injecting {kind} failed: {traceback.format_exc()}")
            time.sleep(max(0.0, t_end - time.time()))
            for w in workers:
                w.stop.set()
            for w in workers:
                w.join(60)
                if w.is_alive():
                    problem(f"{label}: worker {w.wid} did not stop within 60 s (hang)")
            for w in workers:
                for i in range(len(w.clients)):
                    w.drop(i)
            for h in hosts:
                if h.proc is None or h.proc.poll() is not None:
                    problem(f"{label}: {h.name} is not running (rc {h.proc and h.proc.returncode})")
                    h.start()
            time.sleep(COOLDOWN + 1)
            verifier = Host("verifier", cluster.dsn(application_name="verifier"))
            verifier.start()
            try:
                verify(all_keys, shared, verifier, hosts, cluster, label)
            except Exception:
                problem(f"{label}: verify failed: {traceback.format_exc()}")
            finally:
                rc, _ = verifier.term()
                if rc != 0:
                    problem(f"verifier exit {rc}")
            scan_logs([*hosts, verifier], label)
            print(
                f"{label} done: ops {stats['ops']}, key checks {stats['key_checks']}, "
                f"uncertain {stats['uncertain']}+{stats['uncertain_multi']}, refused "
                f"{stats['refused']}, problems {len(problems)}, untracked "
                f"{sum(km.untracked for km in all_keys)}",
                flush=True,
            )
    finally:
        for h in [*hosts, *([verifier] if verifier else [])]:
            if h.proc and h.proc.poll() is None:
                h.proc.kill()
                h.proc.wait()
        print(f"duration {time.time() - started:.0f}s", flush=True)
        print("stats:", json.dumps(dict(sorted(stats.items())), indent=1), flush=True)
        print(f"PROBLEMS ({len(problems)}):", flush=True)
        for p in problems:
            print(" -", p[:3000], flush=True)
        cluster.destroy()


if __name__ == "__main__":
    main()
