"""Run the benchmarks: `python -m tests.bench [flags] [ofrep] [write] [reaction] [replay] [idle] [retrieval]
[quality] [multihop] [lexical] [startup] [emergency]`.

No argument runs all twelve; each is described in its module:

    flags, write        bench_flags.py       in-process evaluation; a durable FlagStore.set
    ofrep               bench_ofrep.py       OFREP over loopback against a real daemon, under `hey`
    reaction            bench_controller.py  a sustained breach → flags rolled back and fsynced
    replay              bench_controller.py  `rolloutd replay` of the 72-hour plan over real history
    idle                bench_controller.py  an idle daemon's CPU; RSS across 10,000 evaluations
    retrieval           bench_retrieval.py   at 100k memories, default embedder: hybrid (query embedded) and each leg,
                                             cache hits through Redis, the walk at 500k+ links, writes through a
                                             daemon, restart without re-embedding, RSS per structure
    quality             bench_retrieval.py   P@10, R@10, top-3, MRR, nDCG by hops: vector vs hybrid vs graph,
                                             hashing and the wordllama model
    multihop            bench_multihop.py    Recall@2/5/10 on MuSiQue and HotpotQA through a real daemon, per leg
                                             and hybrid, beside BM25 and dense-only (runs with `quality` too)
    lexical             bench_lexical.py     the lexical engines compared: tantivy, SQLite FTS5, bm25s -- writes,
                                             query p95 at 100k (BENCH_LEXICAL_SIZES for 1M), RSS, multi-hop R@5
    startup             bench_ops.py         a real daemon's start to READY=1 and to /readyz, empty and with
                                             100,000 memories to reload
    emergency           bench_ops.py         SIGUSR1 to every plan flag durably off in flags.json

Prints each benchmark's block, then writes `bench-results/bench.json`: the machine's
facts, every figure, and which benchmarks failed a correctness check (a failed check
keeps the figures measured before it when the benchmark attached them to its
BenchFailure as `.figures`, as retrieval and quality do). Exit status 0
when every check passed (missed speed targets included), 1 when one failed, 2 on a
bad argument.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from tests.bench import (
    RESULTS_DIR,
    BenchFailure,
    bench_controller,
    bench_flags,
    bench_lexical,
    bench_multihop,
    bench_ofrep,
    bench_ops,
    bench_retrieval,
    heading,
    line,
    machine_facts,
)

BENCHMARKS: dict[str, Callable[[], dict[str, Any]]] = {
    "flags": bench_flags.run_evaluation,
    "ofrep": bench_ofrep.run,
    "write": bench_flags.run_write,
    "reaction": bench_controller.run_reaction,
    "replay": bench_controller.run_replay,
    "idle": bench_controller.run_idle,
    "retrieval": bench_retrieval.run_speed,
    "quality": bench_retrieval.run_quality,
    "multihop": bench_multihop.run_multihop,
    "lexical": bench_lexical.run_lexical,
    "startup": bench_ops.run_startup,
    "emergency": bench_ops.run_emergency,
}
# `make bench BENCH_ARGS=quality` also measures the public multi-hop sets
ALSO = {"quality": ("multihop",)}
USAGE = f"usage: python -m tests.bench [{'|'.join(BENCHMARKS)} ...]   (no argument: all)"


def selected(argv: list[str]) -> list[str]:
    """The benchmarks named in `argv`, in the suite's order; all of them when none is named."""
    unknown = [a for a in argv if a not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark {', '.join(unknown)}\n{USAGE}")
    wanted = set(argv) | {extra for a in argv for extra in ALSO.get(a, ())}
    return [name for name in BENCHMARKS if name in wanted] if argv else list(BENCHMARKS)


def run_one(name: str) -> tuple[dict[str, Any], str | None]:
    """The benchmark's figures, and why it failed (None when its checks passed)."""
    start = time.monotonic()
    try:
        figures = BENCHMARKS[name]()
        error = None
    except BenchFailure as exc:  # keeps what was measured before the check, when the benchmark attached it
        figures, error = dict(getattr(exc, "figures", None) or {}), str(exc)
    except Exception:  # noqa: BLE001  (a crash is a failure too, but keep running the others)
        figures, error = {}, traceback.format_exc()
    figures["seconds"] = round(time.monotonic() - start, 1)
    if error:
        figures["error"] = error
        print(f"\n  FAILED {name}: {error}", file=sys.stderr, flush=True)
    return figures, error


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    try:
        names = selected(argv)
    except ValueError as bad:
        print(bad, file=sys.stderr)
        return 2
    report: dict[str, Any] = {"machine": machine_facts(), "benchmarks": {}, "failed": []}
    heading("machine")
    for key in ("date_utc", "nproc", "cpu_model", "python", "loadavg_at_start"):
        line(key, report["machine"][key])
    start = time.monotonic()
    for name in names:
        report["benchmarks"][name], error = run_one(name)
        if error:
            report["failed"].append(name)
    report["runtime_seconds"] = round(time.monotonic() - start, 1)
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = write_report(report)
    heading("done")
    line("runtime", f"{report['runtime_seconds']:.1f} s")
    line("load average at end", report["machine"]["loadavg_at_end"])
    line("results", path)
    line("correctness checks", "FAILED: " + ", ".join(report["failed"]) if report["failed"] else "all passed")
    return 1 if report["failed"] else 0


def write_report(report: dict[str, Any]) -> str:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / "bench.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return str(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
