#!/usr/bin/env python3
"""CPU per session of a compaction, by part: decoding the segment, sorting it
into table order, and the SQL steps.

    .venv-mypyc/bin/python bench/compact_cost.py [--sessions 100000] [--writes 40000,80000]

A table of ``--sessions`` sessions of 200 bytes, then for each figure of
``--writes``, four compactions of a segment of that many overwrites of random
sessions (as ``redis-benchmark -t set -d 200 -r 100000`` makes them): the
segment is written as the log writer would, read back and compacted as the
compactor process does. Prints CPU time (user and system, this process) per
distinct session written and per write. The writes per compaction stand for
how long the compactor lets sealed segments wait: 40,000 is one second of
``-c 50`` here.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from sessiond.store import log as wal
from sessiond.store.api import Fields
from sessiond.store.compactor import Compaction, Compactor, compactor_connection
from sessiond.store.files import StoreFiles
from sessiond.store.overlay import Layer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--writes", default="40000,80000,120000,200000")
    parser.add_argument("--rows", type=int, default=16384, help="sessions per transaction")
    args = parser.parse_args()
    now = time.time()

    def fields() -> Fields:
        return (os.urandom(200), None, now, now, now, 3600.0, now + 3600, 0)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.db"
        files = StoreFiles(path)
        files.open()
        compactor = Compactor(compactor_connection(path, 0))
        keys = [b"key:%012d" % i for i in range(args.sessions)]
        job = Compaction(Layer(1, {key: fields() for key in keys}))
        while not compactor.step(job, args.rows):
            pass
        rng = random.Random(1)
        segment = 2
        for writes in (int(w) for w in args.writes.split(",")):
            for _ in range(4):
                changes = {keys[rng.randrange(len(keys))]: fields() for _ in range(writes)}
                file = Path(tmp) / "segment"
                file.write_bytes(wal.MAGIC + wal.encode(dict(changes), False))
                t0 = time.process_time()
                found = wal.replay(file)
                t1 = time.process_time()
                job = Compaction(Layer(segment, found.changes))
                t2 = time.process_time()
                while not compactor.step(job, args.rows):
                    pass
                t3 = time.process_time()
                segment += 1
                n = len(found.changes)
                print(
                    f"{writes} writes, {n} sessions: per session decode "
                    f"{1e6 * (t1 - t0) / n:.2f} us, sort {1e6 * (t2 - t1) / n:.2f} us, "
                    f"SQL {1e6 * (t3 - t2) / n:.2f} us; per write {1e6 * (t3 - t0) / writes:.2f} us"
                )
        compactor.db.close()
        files.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
