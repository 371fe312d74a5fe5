"""rolloutd's benchmark suite (`make bench`, i.e. `python -m tests.bench [NAME ...]`).

    flags   in-process evaluation throughput: our FlagSet vs the Unleash Python SDK
    ofrep   OFREP over loopback against a real daemon under `hey`: latency and the
            highest rate that keeps p99 under 10 ms
    write   a durable flag change (FlagStore.set: audit fsync, backup link, atomic
            replace, directory fsyncs): latency percentiles on a real disk
    reaction  a sustained breach to flags rolled back, fsynced and journaled (Controller)
    replay    `rolloutd replay` of the 72-hour plan over backfilled Prometheus history
    idle      a real daemon's CPU between guard checks, and RSS over 10,000 evaluations

Every benchmark prints a human-readable block; the run also writes every figure to
`bench-results/bench.json` with the machine's facts. The machines this runs on are
small and shared, so the figures that matter are ratios measured in the same run, not
absolute numbers. A benchmark fails (non-zero exit) only when a correctness or
sanity check fails — never because a speed target is missed; that prints
"target missed" and is recorded in the JSON.

This package holds what the benchmarks share: the failure type, percentiles, machine
facts and output formatting. No file here is named test_*.py: pytest must not run it.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "bench-results"


class BenchFailure(Exception):
    """A correctness or sanity check failed: the figures cannot be trusted."""


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile of already sorted values."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary_ms(seconds: Iterable[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean in milliseconds of durations given in seconds."""
    values = sorted(s * 1000 for s in seconds)
    return {
        "samples": len(values),
        "p50_ms": round(percentile(values, 50), 3),
        "p95_ms": round(percentile(values, 95), 3),
        "p99_ms": round(percentile(values, 99), 3),
        "max_ms": round(values[-1], 3),
        "mean_ms": round(sum(values) / len(values), 3),
    }


def filesystem_type(path: Path) -> str:
    """What `stat -f -c %T` says the file system under `path` is (e.g. ext2/ext3, tmpfs)."""
    out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def machine_facts() -> dict[str, object]:
    """What the figures depend on: cores, CPU, Python, load, and when."""
    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def heading(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 76 - len(title)), flush=True)


def line(label: str, value: object) -> None:
    print(f"  {label:<34} {value}", flush=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A plain text table: numbers right-aligned, the last column (a name) left-aligned."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def render(row: Sequence[str]) -> str:
        *numbers, last = [c.rjust(w) for c, w in zip(row[:-1], widths, strict=False)] + [row[-1]]
        return "  " + "  ".join([*numbers, last])

    print(render(list(headers)))
    for row in cells:
        print(render(row))
    sys.stdout.flush()


def verdict(met: bool, target: str) -> str:
    """The words a target line ends with; a missed target is reported, never raised."""
    return f"target met ({target})" if met else f"target missed ({target})"
