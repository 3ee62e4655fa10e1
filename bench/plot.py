#!/usr/bin/env python3
"""PNG plots of resp_bench's results: sessiond beside redis-server, in memory and durable.

    .venv/bin/python bench/plot.py --run     # run both benchmarks (~15 min), then draw
    .venv/bin/python bench/plot.py           # draw again from bench/results/*.json

``--run`` runs ``resp_bench.py --floor --reps 3 --json bench/results/memory.json`` and
``resp_bench.py --persistence --reps 3 --json bench/results/durable.json``; the plots
go to docs/img/ (the README shows them):

- ``bench-throughput.png``: requests/s per scenario, in memory (GET and SET at
  ``-c 50 -P 1``, ``-c 50 -P 16``, ``-c 1``; the minimal Python server beside
  them, the floor a Python event loop reaches here) and durable (SET, sessiond
  ``durability: always`` against redis ``appendfsync always`` and ``everysec``);
- ``bench-latency.png``: p50, p95, p99 and max latency of the same runs, as
  redis-benchmark measured them (what its clients waited), on a log scale.

With several repetitions each bar is the median and its whisker the range.
Needs matplotlib, a bench-only dependency (the ``bench`` extra). The servers run
with this interpreter's sessiond: use the compiled build, as ``pip install`` makes it
where a compiler is present (``.venv-mypyc``, which scripts/test.sh builds)::

    .venv-mypyc/bin/pip install -q 'matplotlib>=3.8' && .venv-mypyc/bin/python bench/plot.py --run

The footer of each plot says which build ran.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
IMAGES = HERE.parent / "docs" / "img"
COLORS = ["#1f77b4", "#d62728", "#ff7f0e"]
MARKERS = {"p50": "o", "p95": "s", "p99": "^", "max": "x"}
PERCENTILES = tuple(MARKERS)

Series = dict[str, list[dict[str, float]]]  # series name -> its Result in each repetition


def run_benchmarks(reps: int, requests: int | None) -> None:
    for name, extra in (("memory", ["--floor"]), ("durable", ["--persistence"])):
        cmd = [sys.executable, str(HERE / "resp_bench.py"), *extra, "--reps", str(reps)]
        if requests:
            cmd += ["--requests", str(requests)]
        cmd += ["--json", str(RESULTS / f"{name}.json")]
        print("running", " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)


def groups(data: dict[str, Any]) -> list[tuple[str, Series]]:
    """(x label, {series: [Result per repetition]}) in the run's order. In
    memory: sessiond and redis-server per test and scenario. Durable: per
    scenario, sessiond (durability: always) and each Redis baseline."""
    out: dict[str, Series] = {}
    reps = data["reps"]
    for i, row in enumerate(reps[0]):
        if data["mode"] == "durable":
            label = row["scenario"]
            series = out.setdefault(label, {})
            series.setdefault("sessiond always", [rep[i]["sessiond"] for rep in reps])
            series[row["test"].replace("redis", "redis-server")] = [rep[i]["redis"] for rep in reps]
        else:
            # resp_bench --floor adds rows "SET floor"...: the minimal Python
            # server (bench/baseline_server.py) in sessiond's column.
            test = row["test"]
            floor = test.endswith(" floor")
            series = out.setdefault(f"{test.removesuffix(' floor')}\n{row['scenario']}", {})
            name = "minimal Python server" if floor else "sessiond"
            series[name] = [rep[i]["sessiond"] for rep in reps]
            series["redis-server"] = [rep[i]["redis"] for rep in reps]
    return list(out.items())


def median_range(values: list[float]) -> tuple[float, float, float]:
    mid = statistics.median(values)
    return mid, mid - min(values), max(values) - mid


def footer(runs: dict[str, dict[str, Any]]) -> str:
    data = next(iter(runs.values()))
    sizes = ", ".join(f"{mode} -n {d['requests']:,}" for mode, d in runs.items())
    return (
        f"sessiond {data.get('build', '?')} build, redis-benchmark -d 200 -r 100000 on "
        f"Unix sockets ({sizes}); median of "
        f"{len(data['reps'])} repetitions, whiskers the range; redis-server "
        f"{data['redis_version']}; {data['cpus']} CPUs, shared; {data['date']}"
    )


def _title(mode: str, what: str) -> str:
    return f"{what}, " + ("in memory" if mode == "memory" else "durable (fsync before the reply)")


def draw_throughput(plt: Any, runs: dict[str, dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 4.8), squeeze=False)
    for ax, (mode, data) in zip(axes[0], runs.items(), strict=True):
        rows = groups(data)
        names = list(rows[0][1])
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            stats = [median_range([r["rps"] for r in per[name]]) for _, per in rows]
            ax.bar(
                [i - 0.4 + width * (k + 0.5) for i in range(len(rows))],
                [m for m, _, _ in stats],
                width,
                yerr=[[lo for _, lo, _ in stats], [hi for _, _, hi in stats]],
                capsize=3,
                color=COLORS[k],
                label=name,
            )
        for i, (_, per) in enumerate(rows):
            ours, theirs = per[names[0]], per[names[1]]
            ratio = statistics.median(
                s["rps"] / r["rps"] for s, r in zip(ours, theirs, strict=True)
            )
            top = max(statistics.median(r["rps"] for r in per[n]) for n in names)
            ax.annotate(
                f"{ratio:.2f}x", (i, top), ha="center", va="bottom", fontsize=8, color=COLORS[0]
            )
        ax.set_xticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
        ax.set_ylabel("requests/s")
        ax.set_title(_title(mode, "Throughput"), fontsize=11)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    ratio = "ratio: sessiond / redis-server (durable: / redis-server always)"
    fig.text(0.01, 0.01, textwrap.fill(f"{footer(runs)}; {ratio}", 170), fontsize=7)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_latency(plt: Any, runs: dict[str, dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 4.8), squeeze=False)
    for ax, (mode, data) in zip(axes[0], runs.items(), strict=True):
        rows = groups(data)
        names = list(rows[0][1])
        step = 0.6 / len(names)
        for k, name in enumerate(names):
            for pct in PERCENTILES:
                ax.scatter(
                    [i - 0.3 + step * (k + 0.5) for i in range(len(rows))],
                    [statistics.median(r[pct] for r in per[name]) for _, per in rows],
                    marker=MARKERS[pct],
                    color=COLORS[k],
                    s=28,
                    label=f"{name} {pct}",
                )
        ax.set_yscale("log")
        ax.set_xticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
        ax.set_ylabel("latency seen by redis-benchmark, ms (log)")
        ax.set_title(_title(mode, "Latency p50 / p95 / p99 / max"), fontsize=11)
        ax.legend(fontsize=6, ncol=len(names))
        ax.grid(axis="y", alpha=0.3, which="both")
    fig.text(0.01, 0.01, textwrap.fill(footer(runs), 170), fontsize=7)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="store_true", help="run the benchmarks first")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per benchmark (--run)")
    parser.add_argument("--requests", type=int, help="-n per run (--run; resp_bench's default)")
    parser.add_argument("--out", type=Path, default=IMAGES, help="where the PNGs go")
    args = parser.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("needs matplotlib: pip install 'matplotlib>=3.8' (the bench extra)", file=sys.stderr)
        return 2
    if args.run:
        run_benchmarks(args.reps, args.requests)
    runs = {}
    for mode in ("memory", "durable"):
        path = RESULTS / f"{mode}.json"
        if path.exists():
            runs[mode] = json.loads(path.read_text())
    if not runs:
        print(f"no results in {RESULTS}: run with --run", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for name, draw in (("throughput", draw_throughput), ("latency", draw_latency)):
        target = args.out / f"bench-{name}.png"
        draw(plt, runs, target)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
