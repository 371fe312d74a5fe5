"""Benchmarks of the `flags` package in-process: evaluation throughput and durable writes.

Evaluation (`python -m tests.bench flags`)
    One flag, defined identically for both engines: a 10 % sticky rollout bucketed on
    `targetingKey` in group `hybrid_rag_enabled`, with one constraint
    `agent IN [Builder, Deploy, QA]` — our `percentage` strategy, Unleash's
    `flexibleRollout`. 100,000 contexts from a seeded RNG with agents drawn from the
    seeds' eight cohorts, so the constraint passes for ~3/8 and fails for the rest.
    Ours is `FlagSet.evaluate(key, context, now)`; Unleash's is `UnleashClient.is_enabled`
    (Rust yggdrasil engine behind ctypes) on a client bootstrapped from memory that
    never touches the network: no registration, no metrics, no fetching, and
    `initialize_client()` is never called. Unleash reads custom stickiness and custom
    fields from `context["properties"]`, so that is where its contexts carry them.

    Before timing, both must give the same answer on every context (else the run
    fails). Then 7 rounds, each one full pass of ours and one of Unleash's, the order
    alternating between rounds so that drift on a noisy machine hits both; the garbage
    collector is off during a pass. Reported: median and best evaluations/second of
    each, and the ratio — the median of the per-round ratios (paired, so drift
    cancels). Target: ours >= 5x Unleash's. Below it, our path is profiled with
    cProfile and the top functions are printed.

Durable write (`python -m tests.bench write`)
    `FlagStore.set(percentage=...)` 300 times on a store holding eight flags, each
    call a real change (audit record + fsync, hard-link backup + directory fsync,
    temp file + fsync + rename + directory fsync, backup pruning). The store lives in
    a temporary directory on a disk-backed file system (/var/tmp, else the repo): on
    tmpfs an fsync costs nothing and the figures would lie. Before each change, one
    bare 1 KB append + fsync in the same directory is timed as a baseline, so a busy
    disk shows in both. Reported: p50/p95/p99 ms of each, and set / baseline at p50.
"""

from __future__ import annotations

import cProfile
import gc
import os
import pstats
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from flags.evaluate import FlagSet
from flags.model import Constraint, Flag, Operator, ProgressiveConfig, Strategy
from flags.store import FlagStore
from tests.bench import REPO, BenchFailure, filesystem_type, heading, latency_summary_ms, line, table, verdict
from tests.support.flagfiles import PHASE5_FLAGS

FLAG_KEY = "hybrid_rag_enabled"
ROLLOUT_PERCENT = 10
ALLOWED_AGENTS = ("Builder", "Deploy", "QA")
AGENTS = ("Builder", "Deploy", "QA", "Support", "Marketing", "Analyst", "Legal", "Thon")
CONTEXTS = 100_000
ROUNDS = 7
TARGET_RATIO = 5.0
SEED = 20251023

WRITES = 300
NOT_DISK = {"tmpfs", "ramfs"}


# -- evaluation: the flag, both engines, the contexts ----------------------------------------


def our_flagset() -> FlagSet:
    flag = Flag(
        name=FLAG_KEY,
        enabled=True,
        rollout_strategy=Strategy.PERCENTAGE,
        rollout_percentage=float(ROLLOUT_PERCENT),
        constraints=(Constraint("agent", Operator.IN, ALLOWED_AGENTS),),
    )
    return FlagSet({FLAG_KEY: flag})


def unleash_features() -> dict[str, Any]:
    """The same flag as Unleash's client API (/api/client/features) serves it."""
    strategy = {
        "name": "flexibleRollout",
        "parameters": {"rollout": str(ROLLOUT_PERCENT), "stickiness": "targetingKey", "groupId": FLAG_KEY},
        "constraints": [{"contextName": "agent", "operator": "IN", "values": list(ALLOWED_AGENTS)}],
    }
    feature = {"name": FLAG_KEY, "type": "release", "project": "default", "enabled": True, "strategies": [strategy]}
    return {"version": 2, "features": [feature]}


def offline_unleash_client() -> Any:
    """The real UnleashClient with the same flag, offline (tests/support/unleash_offline.py).

    (UnleashClient is a test extra that only this benchmark needs, hence the local import.)
    """
    from tests.support.unleash_offline import offline_unleash  # noqa: PLC0415  (see the docstring)

    try:
        return offline_unleash(unleash_features()["features"], app_name="rolloutd-bench")
    except RuntimeError as exc:
        raise BenchFailure(str(exc)) from None


def make_contexts(count: int, seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """The same contexts twice: our flat shape, and Unleash's (custom fields in `properties`)."""
    rng = random.Random(seed)
    ours, theirs = [], []
    for _ in range(count):
        fields = {"targetingKey": f"task-{rng.getrandbits(48):012x}", "agent": rng.choice(AGENTS)}
        ours.append(fields)
        theirs.append({"properties": dict(fields)})
    return ours, theirs


# -- evaluation: checks and timing -----------------------------------------------------------


def check_agreement(flags: FlagSet, client: Any, ours: list[dict], theirs: list[dict], now: datetime) -> dict[str, int]:
    """Both engines must agree on every context, and the answers must look like the flag."""
    our_answers = [flags.evaluate(FLAG_KEY, c, now).value for c in ours]
    their_answers = [client.is_enabled(FLAG_KEY, c) for c in theirs]
    differ = [i for i, (a, b) in enumerate(zip(our_answers, their_answers, strict=False)) if a != b]
    if differ:
        i = differ[0]
        raise BenchFailure(
            f"ours and Unleash disagree on {len(differ)} of {len(ours)} contexts; first: "
            f"{ours[i]} -> ours {our_answers[i]}, Unleash {their_answers[i]}"
        )
    matching = sum(c["agent"] in ALLOWED_AGENTS for c in ours)
    on = sum(our_answers)
    _check_plausible(len(ours), matching, on)
    return {"contexts": len(ours), "constraint_passes": matching, "constraint_fails": len(ours) - matching, "on": on}


def _check_plausible(total: int, matching: int, on: int) -> None:
    """The constraint must both pass and fail, and about 10 % of passing contexts must be on."""
    if not 0 < matching < total:
        raise BenchFailure(f"the constraint passed for {matching} of {total} contexts; the bench needs both outcomes")
    share = on / matching * 100
    if not ROLLOUT_PERCENT * 0.8 <= share <= ROLLOUT_PERCENT * 1.2:
        raise BenchFailure(
            f"{share:.2f}% of constraint-passing contexts are on; a {ROLLOUT_PERCENT}% rollout was expected"
        )


def time_ours(flags: FlagSet, contexts: list[dict], now: datetime) -> float:
    """Seconds for `FlagSet.evaluate` on every context, collector off."""
    evaluate = flags.evaluate
    with _collector_off():
        start = time.perf_counter()
        for context in contexts:
            evaluate(FLAG_KEY, context, now)
        return time.perf_counter() - start


def time_unleash(client: Any, contexts: list[dict]) -> float:
    """Seconds for `UnleashClient.is_enabled` on every context, collector off."""
    is_enabled = client.is_enabled
    with _collector_off():
        start = time.perf_counter()
        for context in contexts:
            is_enabled(FLAG_KEY, context)
        return time.perf_counter() - start


@contextmanager
def _collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def timed_rounds(ours: Callable[[], float], theirs: Callable[[], float]) -> list[tuple[float, float]]:
    """(our seconds, Unleash seconds) per round, alternating which runs first."""
    rounds = []
    for r in range(ROUNDS):
        if r % 2 == 0:
            mine, other = ours(), theirs()
        else:
            other, mine = theirs(), ours()
        rounds.append((mine, other))
    return rounds


def throughput(rounds: list[tuple[float, float]], count: int) -> dict[str, Any]:
    ours = [count / m for m, _ in rounds]
    theirs = [count / t for _, t in rounds]
    ratios = [t / m for m, t in rounds]
    return {
        "rounds": len(rounds),
        "ours_evals_per_s": {
            "median": round(statistics.median(ours)),
            "best": round(max(ours)),
            "all": [round(x) for x in ours],
        },
        "unleash_evals_per_s": {
            "median": round(statistics.median(theirs)),
            "best": round(max(theirs)),
            "all": [round(x) for x in theirs],
        },
        "ratio_median_of_rounds": round(statistics.median(ratios), 2),
        "ratio_of_best": round(max(ours) / max(theirs), 2),
        "ratio_min_round": round(min(ratios), 2),
        "ratio_max_round": round(max(ratios), 2),
    }


def profile_ours(flags: FlagSet, contexts: list[dict], now: datetime, top: int = 12) -> list[dict[str, Any]]:
    """cProfile one pass of our path; the functions with the most own time, first."""
    profiler = cProfile.Profile()
    evaluate = flags.evaluate
    profiler.enable()
    for context in contexts:
        evaluate(FLAG_KEY, context, now)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt or 1.0
    rows = []
    for (path, lineno, name), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(path).name}:{lineno}({name})" if lineno else name
        rows.append(
            {
                "function": where,
                "calls": ncalls,
                "own_s": round(tottime, 4),
                "cum_s": round(cumtime, 4),
                "own_share": round(tottime / total, 3),
            }
        )
    rows.sort(key=lambda r: r["own_s"], reverse=True)
    return rows[:top]


def run_evaluation() -> dict[str, Any]:
    heading("flags: in-process evaluation, ours vs UnleashClient (yggdrasil)")
    now = datetime.now(UTC)
    flags, client = our_flagset(), offline_unleash_client()
    our_ctx, their_ctx = make_contexts(CONTEXTS)
    agreement = check_agreement(flags, client, our_ctx, their_ctx, now)
    line("flag", f"{FLAG_KEY}: {ROLLOUT_PERCENT}% on targetingKey, agent IN {list(ALLOWED_AGENTS)}")
    line(
        "contexts (agree on every one)",
        f"{agreement['contexts']:,} ({agreement['constraint_passes']:,} pass the constraint, {agreement['on']:,} on)",
    )
    rounds = timed_rounds(lambda: time_ours(flags, our_ctx, now), lambda: time_unleash(client, their_ctx))
    result = throughput(rounds, CONTEXTS)
    _print_throughput(result)
    result["target_ratio"] = TARGET_RATIO
    result["target_met"] = result["ratio_median_of_rounds"] >= TARGET_RATIO
    line("target", verdict(result["target_met"], f"ours >= {TARGET_RATIO:g}x Unleash"))
    if not result["target_met"]:
        result["profile_ours"] = profile_ours(flags, our_ctx, now)
        _print_profile(result["profile_ours"])
    # No client.destroy(): the client was never initialised, so there is nothing to stop
    # (destroy() would only log that its scheduler is not running).
    return {"agreement": agreement, "versions": _versions(), **result}


def _versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("UnleashClient", "yggdrasil-engine", "mmh3")}


def _print_throughput(result: dict[str, Any]) -> None:
    line("rounds (interleaved, gc off)", result["rounds"])
    for label, key in (("ours  FlagSet.evaluate", "ours_evals_per_s"), ("Unleash is_enabled", "unleash_evals_per_s")):
        figures = result[key]
        line(f"{label} evals/s", f"median {figures['median']:>10,}   best {figures['best']:>10,}")
    line(
        "ratio ours/Unleash",
        f"{result['ratio_median_of_rounds']:.2f}x (median of paired rounds; "
        f"rounds {result['ratio_min_round']:.2f}-{result['ratio_max_round']:.2f}x; best/best "
        f"{result['ratio_of_best']:.2f}x)",
    )


def _print_profile(rows: list[dict[str, Any]]) -> None:
    print("  profile of our path (one pass, cProfile; own time first):")
    rows_text = [
        (f"{r['own_s']:.3f}", f"{r['own_share']:.0%}", f"{r['cum_s']:.3f}", r["calls"], r["function"]) for r in rows
    ]
    table(("own s", "share", "cum s", "calls", "function"), rows_text)


# -- durable write -----------------------------------------------------------------------------


def seed_flags() -> dict[str, Flag]:
    """Eight flags like the seeds' Phase 5 file: six progressive ramps, an `all` flag, the kill switch."""
    ramp = ProgressiveConfig(
        0.0,
        100.0,
        datetime(2025, 10, 23, 9, tzinfo=UTC),
        datetime(2025, 10, 30, 9, tzinfo=UTC),
        current_percentage=10.0,
    )
    cohort = (Constraint("agent", Operator.IN, ALLOWED_AGENTS),)
    flags = {n: Flag(n, True, Strategy.PROGRESSIVE, 10.0, ramp, cohort) for n in PHASE5_FLAGS}
    flags["phase5_dashboards_enabled"] = Flag("phase5_dashboards_enabled", True)
    flags["emergency_shutdown"] = Flag("emergency_shutdown", False)
    return flags


def disk_scratch_dir() -> Path:
    """A fresh directory on a file system where fsync really reaches the disk."""
    for parent in (Path("/var/tmp"), REPO / "bench-results"):
        parent.mkdir(parents=True, exist_ok=True)
        if filesystem_type(parent) not in NOT_DISK:
            return Path(tempfile.mkdtemp(prefix="rolloutd-bench-write-", dir=parent))
    raise BenchFailure("no disk-backed directory for the write benchmark (/var/tmp and the repo are tmpfs)")


def timed_writes(store: FlagStore, count: int) -> tuple[list[float], list[float]]:
    """Durations of `count` flag changes, each preceded by one bare append + fsync in the same
    directory: that baseline, measured interleaved, says how busy the disk was meanwhile."""
    changes, baseline = [], []
    probe = store.state_dir / "fsync-baseline.bin"
    for i in range(count):
        baseline.append(_timed_append_fsync(probe))
        percentage = 5.0 if i % 2 == 0 else 10.0  # always a real change from the previous call
        start = time.perf_counter()
        store.set(FLAG_KEY, percentage=percentage, actor="bench", reason=f"write benchmark {i}")
        changes.append(time.perf_counter() - start)
    return changes, baseline


def _timed_append_fsync(path: Path, size: int = 1024) -> float:
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, b"x" * size)
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def check_writes(directory: Path, count: int) -> dict[str, int]:
    """Every change must be in the audit log and the last one on disk."""
    changes = sum('"event": "change"' in row for row in (directory / "audit.jsonl").read_text().splitlines())
    if changes < count:
        raise BenchFailure(f"the audit log holds {changes} change records after {count} writes")
    with FlagStore.open(directory) as reopened:
        expected = 5.0 if (count - 1) % 2 == 0 else 10.0
        got = reopened.get(FLAG_KEY).percentage_at(datetime.now(UTC))
        if got != expected:
            raise BenchFailure(f"after {count} writes flags.json has {FLAG_KEY} at {got}%, expected {expected}%")
        backups = len(list(reopened.backup_dir.glob("flags.*.json")))
    return {"audit_change_records": changes, "backups_kept": backups}


def run_write() -> dict[str, Any]:
    heading("write: durable FlagStore.set (audit, backup link, atomic replace; fsynced)")
    directory = disk_scratch_dir()
    try:
        with FlagStore.open(directory) as store:
            store.apply(seed_flags(), actor="bench", reason="seed the write benchmark")
            durations, baseline = timed_writes(store, WRITES)
        checks = check_writes(directory, WRITES)
        fs_type, tmp_type = filesystem_type(directory), filesystem_type(Path("/tmp"))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    summary, fsync = latency_summary_ms(durations), latency_summary_ms(baseline)
    ratio = round(summary["p50_ms"] / fsync["p50_ms"], 2)
    line("directory", f"{directory.parent}/… (file system {fs_type}; /tmp is {tmp_type})")
    line("writes", f"{WRITES} (each 4 fsyncs: audit, backups/, flags.json temp, state dir)")
    _print_latency("FlagStore.set latency ms", summary)
    _print_latency("baseline: 1 KB append+fsync ms", fsync)
    line("set / bare fsync (p50)", f"{ratio:.2f}x   (interleaved: a busy disk slows both)")
    line("writes/s (serial)", f"{1000 / summary['mean_ms']:.0f}")
    return {
        "directory_parent": str(directory.parent),
        "filesystem": fs_type,
        "tmp_filesystem": tmp_type,
        "writes": WRITES,
        **summary,
        **checks,
        "baseline_append_fsync": fsync,
        "set_over_fsync_p50": ratio,
    }


def _print_latency(label: str, summary: dict[str, float]) -> None:
    line(
        label,
        f"p50 {summary['p50_ms']:.2f}   p95 {summary['p95_ms']:.2f}   p99 {summary['p99_ms']:.2f}   "
        f"max {summary['max_ms']:.2f}   mean {summary['mean_ms']:.2f}",
    )
