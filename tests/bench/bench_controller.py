"""Benchmarks of the rollout controller: reaction to a breach, replay speed, the idle daemon.

Reaction (`python -m tests.bench reaction`)
    A real `Controller` in-process, with a real FlagStore and a durable StateDB (WAL,
    synchronous=FULL) in a temporary directory on a disk-backed file system, a fake
    guard source answering from memory and a simulated clock. The plan has phase5's
    five guards and stages 0 % → 5 % (3 agents) → 10 % (5 agents), plus one at 10,000 h
    so that it never completes. One trial: at 10 %, p95 goes to 0.45 s (critical, not
    emergency) for two consecutive evaluations — the second completes the sustained
    breach and rolls back one stage, to 5 %; then `resume` and one clean evaluation
    bring 10 % back. Measured on the rollback round: the controller's own
    `reaction_seconds` (observations in → flags fsynced and journaled), and the whole
    `await controller.evaluate()` around it. Before each rollback one bare durable
    replace of a flags-sized file (write, fsync, rename, fsync the directory) is timed
    in the same directory: the floor of any durable write, on the disk as busy as it
    is now. After every rollback flags.json is read back from disk (every plan flag at
    5 % of the 3-agent cohort) and the journal must hold no 'intent' row; else the run
    fails. Logs are rendered as the daemon renders them, into /dev/null.
    Target: reaction p95 < 50 ms.

Replay (`python -m tests.bench replay`)
    76 h of healthy history (tests/support/history.py) backfilled with promtool into a real
    Prometheus; then `rolloutd replay --approve --json` of the shipped 72-hour phase5
    plan, timed in-process. Evaluations are counted (and timed) by wrapping
    `Controller.evaluate` for the duration; Prometheus's own request counter says how
    many queries were sent. Baseline: instant queries of the p95 guard's query at
    instants across the history, sent one at a time with httpx, half before the replay
    and half after. Overhead = replay seconds per evaluation / (guards x query mean).
    The replay must complete: stages at hours 0/4/12/49/52/56 and `completed` last.

Idle (`python -m tests.bench idle`)
    (a) The real daemon (tests/support/daemon_harness.py) with the phase5 plan at time_scale 1
    (guards every 5 minutes) against a real Prometheus that scrapes its /metrics every
    15 s and serves `genesis_regression_pass_rate` from a recording rule, so the first
    evaluation is clean. Beside it, over the same window, a daemon with no plan (the
    baseline). After the first evaluation, utime+stime from /proc/PID/stat over
    BENCH_IDLE_SECONDS (default 60) → % of one core and CPU-seconds per minute.
    (b) A daemon rehearsing a plan at time_scale 30,000 (5 min → 10 ms), whose second
    stage is 100,000 plan hours away, run until it has logged 10,000 evaluations
    (BENCH_REHEARSAL_EVALUATIONS; five `guard.evaluated` events each): VmRSS at the first
    evaluation and at every tenth of the way, the evaluations per second it kept up and
    its CPU per evaluation, against the no-plan daemon's VmRSS. Slow is a figure; a
    daemon that logs no evaluation for 30 s, exits, or ends anywhere but running at
    stage 0 fails the run. About 4 minutes on a 2-core machine: an evaluation there
    costs ~20 ms (five instant queries to a Prometheus on the same cores, one
    synchronous=FULL SQLite commit).

The three share the plan builders (phase5's guards under stages of their own) and the
scratch-directory and Prometheus plumbing, hence one module rather than three.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import structlog

from controller.decide import Decision, Phase
from controller.guards import Observation, assess
from controller.host.logs import configure_logging
from controller.host.replay import SimClock, replay
from controller.plan import Direction, Guard, Plan
from controller.plan_load import load_plan, parse_plan
from controller.service import Controller
from controller.state_db import StateDB
from flags.parse import parse_flags_text
from flags.store import FlagStore
from tests.bench import REPO, BenchFailure, filesystem_type, heading, latency_summary_ms, line, table, verdict
from tests.bench.bench_flags import disk_scratch_dir
from tests.support.daemon_harness import Daemon, free_port, write_config
from tests.support.history import RETENTION, backfill, healthy, history_start
from tests.support.realservers import HOST, PrometheusServer

PHASE5 = REPO / "deploy" / "plans" / "phase5.toml"
START = datetime(2025, 10, 23, 9, tzinfo=UTC)
HEALTHY_VALUES = {
    "error_rate": 0.0002,
    "p95_latency": 0.12,
    "test_pass_rate": 99.5,
    "cache_hit_rate": 0.8,
    "retrieval_precision": 0.82,
}
BREACH_GUARD, BREACH_VALUE = "p95_latency", 0.45  # critical (> 0.3 s), not emergency (> 0.5 s)
LOW_COHORT = ("Builder", "Deploy", "QA")
HIGH_COHORT = (*LOW_COHORT, "Support", "Marketing")
REACTION_TRIALS = 300
REACTION_WARMUP = 5
REACTION_TARGET_MS = 50.0

QUERY_SAMPLES = 200
EXPECTED_STAGE_HOURS = [0, 4, 12, 49, 52, 56]

IDLE_SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", "60"))
IDLE_SCRAPE_INTERVAL = "15s"
REHEARSAL_SCALE = 30_000.0
REHEARSAL_EVALUATIONS = int(os.environ.get("BENCH_REHEARSAL_EVALUATIONS", "10000"))
REHEARSAL_SAMPLES = 10
STALL_SECONDS = 30.0  # no new evaluation for this long: the daemon is stuck, not slow
READY_TIMEOUT = 30.0
EVALUATED = '"event":"guard.evaluated"'


def phase5_guards_toml() -> str:
    """The [[guards]] tables of the shipped phase5 plan, verbatim."""
    text = PHASE5.read_text()
    return text[text.index("[[guards]]") :]


def plan_toml(name: str, stages: list[tuple[str, float, tuple[str, ...]]]) -> str:
    """A plan with phase5's flags and guards, a 5 m guard interval, the given stages, no checkpoints."""
    flags = list(load_plan(PHASE5).flags)
    head = (
        f'[plan]\nname = {json.dumps(name)}\nflags = {json.dumps(flags)}\nguard_interval = "5m"\n'
        'failure_limit = 5\nfailure_response = "rollback_zero"\n'
    )
    body = "".join(
        f"\n[[stages]]\nat = {json.dumps(at)}\npercentage = {pct!r}\nagents = {json.dumps(list(agents))}\n"
        for at, pct, agents in stages
    )
    return f"{head}{body}\n{phase5_guards_toml()}"


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@contextmanager
def _failures_as_bench_failures() -> Iterator[None]:
    """tests.support.realservers and tests.support.history report a broken server with pytest.fail, which is
    a BaseException: turn it into a failed check instead of ending the whole run."""
    try:
        yield
    except pytest.fail.Exception as exc:
        raise BenchFailure(str(exc)) from None


# -- reaction ----------------------------------------------------------------------------------


@dataclass
class FakeSource:
    """Guard values from memory: healthy, except `breaching` guards at their set value."""

    breaching: dict[str, float] = field(default_factory=dict)

    async def observe(self, guard: Guard, at: datetime) -> Observation:
        return assess(guard, self.breaching.get(guard.name, HEALTHY_VALUES[guard.name]), at)

    async def value(self, promql: str, at: datetime, direction: Direction | None = None) -> float | None:
        return HEALTHY_VALUES[BREACH_GUARD]  # checkpoint reports only, and this plan has no checkpoint


def reaction_plan() -> Plan:
    stages = [("0h", 0.0, ()), ("5m", 5.0, LOW_COHORT), ("10m", 10.0, HIGH_COHORT), ("10000h", 25.0, HIGH_COHORT)]
    return parse_plan(plan_toml("bench_reaction", stages), "<bench reaction plan>")


@dataclass
class Trials:
    reaction: list[float] = field(default_factory=list)  # controller.reaction_seconds of the rollback round
    end_to_end: list[float] = field(default_factory=list)  # await controller.evaluate() of that round
    baseline: list[float] = field(default_factory=list)  # one bare durable replace before it


class ReactionRig:
    """One rollout in a scratch state dir, stepped by hand: every call is one guard round."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.plan = reaction_plan()
        self.clock = SimClock(START)
        self.source = FakeSource()
        self.store = FlagStore.open(directory, clock=self.clock)
        self.db = StateDB(directory, durable=True)
        self.controller = Controller(self.plan, self.db, self.store, self.source, wall=self.clock, state_dir=directory)

    def close(self) -> None:
        self.db.close()
        self.store.close()

    async def step(self) -> list[Decision]:
        self.clock.now += self.plan.guard_interval
        return await self.controller.evaluate()

    async def reach_top_stage(self) -> None:
        await self.controller.open()
        await self.controller.evaluate()
        for _ in range(2):
            await self.step()
        _expect_stage(self.controller, 2, "after the schedule's first 10 minutes")

    async def trial(self, trials: Trials, probe: Path, size: int) -> None:
        """Breach, sustained breach (timed), checks; then resume and a clean round back to 10 %."""
        self.source.breaching = {BREACH_GUARD: BREACH_VALUE}
        first = await self.step()
        if any(d.action == "rollback" for d in first):
            raise BenchFailure(f"rolled back on the first breaching check: {[d.to_dict() for d in first]}")
        trials.baseline.append(_timed_durable_replace(probe, size))
        before = len(self.controller.reaction_seconds)
        start = time.perf_counter()
        decisions = await self.step()
        trials.end_to_end.append(time.perf_counter() - start)
        self.source.breaching = {}
        _check_rollback(decisions, self.controller, before)
        trials.reaction.append(self.controller.reaction_seconds[-1])
        check_durable(self.directory, self.plan, 5.0, LOW_COHORT)
        await self.controller.command("resume", reason="reaction benchmark", actor="bench")
        await self.step()
        _expect_stage(self.controller, 2, "after resume and a clean round")


def _check_rollback(decisions: list[Decision], controller: Controller, before: int) -> None:
    rollbacks = [d for d in decisions if d.action == "rollback"]
    if len(rollbacks) != 1 or (rollbacks[0].stage, rollbacks[0].percentage) != (1, 5.0):
        found = [d.to_dict() for d in decisions]
        raise BenchFailure(f"the sustained breach did not roll back one stage to 5%: {found}")
    if len(controller.reaction_seconds) != before + 1:
        raise BenchFailure(
            f"reaction_seconds grew by {len(controller.reaction_seconds) - before} in the rollback round, expected 1"
        )


def _expect_stage(controller: Controller, stage: int, when: str) -> None:
    state = controller.state
    if (state.phase, state.stage) != (Phase.RUNNING, stage):
        raise BenchFailure(f"{when} the rollout is {state.phase} at stage {state.stage}, expected running at {stage}")


def check_durable(directory: Path, plan: Plan, percentage: float, agents: tuple[str, ...]) -> None:
    """What is on disk, read afresh: every plan flag at `percentage` of `agents`, no intent left."""
    flags = parse_flags_text((directory / FlagStore.FILE).read_text(), directory / FlagStore.FILE)
    for name in plan.flags:
        flag = flags.get(name)
        cohort = [c.values for c in flag.constraints if c.context_name == "agent"] if flag else []
        if flag is None or not flag.enabled or flag.percentage_at(START) != percentage or cohort != [agents]:
            found = f"enabled={flag.enabled} at {flag.percentage_at(START):g}% of {cohort}" if flag else "missing"
            raise BenchFailure(
                f"after the rollback flags.json has {name} {found}; expected enabled at {percentage:g}% of {[agents]}"
            )
    with closing(sqlite3.connect(f"file:{directory / StateDB.FILE}?mode=ro", uri=True)) as db:
        intents = db.execute("SELECT COUNT(*) FROM journal WHERE status = 'intent'").fetchone()[0]
    if intents:
        raise BenchFailure(f"after the rollback the journal holds {intents} row(s) in 'intent' status")


def _timed_durable_replace(path: Path, size: int) -> float:
    """One bare durable replace: write a temp file, fsync it, rename it over `path`, fsync the directory."""
    temp = path.with_name(path.name + ".tmp")
    start = time.perf_counter()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, b"x" * size)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return time.perf_counter() - start


@contextmanager
def _logs_discarded() -> Iterator[None]:
    """Render log events as the daemon does, into /dev/null; restore logging afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with open(os.devnull, "w") as sink:
        configure_logging(sink)
        try:
            yield
        finally:
            structlog.reset_defaults()
            root.handlers[:] = handlers
            root.setLevel(level)


async def _reaction_trials(directory: Path) -> tuple[Trials, int]:
    rig = ReactionRig(directory)
    try:
        await rig.reach_top_stage()
        size = len((directory / FlagStore.FILE).read_bytes())
        probe = directory / "baseline-probe.json"
        for _ in range(REACTION_WARMUP):
            await rig.trial(Trials(), probe, size)
        trials = Trials()
        for _ in range(REACTION_TRIALS):
            await rig.trial(trials, probe, size)
        return trials, size
    finally:
        rig.close()


def run_reaction() -> dict[str, Any]:
    heading("reaction: sustained breach → flags rolled back, fsynced and journaled")
    directory = disk_scratch_dir()
    try:
        with _logs_discarded():
            trials, size = anyio.run(_reaction_trials, directory, backend="asyncio")
        fs_type = filesystem_type(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    reaction, end_to_end = latency_summary_ms(trials.reaction), latency_summary_ms(trials.end_to_end)
    baseline = latency_summary_ms(trials.baseline)
    ratio = round(reaction["p50_ms"] / baseline["p50_ms"], 2)
    met = reaction["p95_ms"] < REACTION_TARGET_MS
    line("state dir", f"{directory.parent}/… (file system {fs_type}); StateDB WAL synchronous=FULL")
    line(
        "trials",
        f"{REACTION_TRIALS} (+{REACTION_WARMUP} warm-up): p95 {BREACH_VALUE} s for 2 checks, 10% → 5%, 6 flags",
    )
    _print_latency("reaction ms (controller)", reaction)
    _print_latency("evaluate() ms (end to end)", end_to_end)
    _print_latency(f"baseline: {size} B durable replace", baseline)
    line("reaction / durable replace (p50)", f"{ratio:.2f}x")
    line("checks", f"flags.json at 5% of {len(LOW_COHORT)} agents and no intent row after all {REACTION_TRIALS}")
    line("target", verdict(met, f"reaction p95 < {REACTION_TARGET_MS:g} ms"))
    return {
        "directory_parent": str(directory.parent),
        "filesystem": fs_type,
        "trials": REACTION_TRIALS,
        "flags_file_bytes": size,
        "reaction": reaction,
        "evaluate_end_to_end": end_to_end,
        "baseline_durable_replace": baseline,
        "reaction_over_baseline_p50": ratio,
        "target_p95_ms": REACTION_TARGET_MS,
        "target_met": met,
    }


def _print_latency(label: str, summary: dict[str, float]) -> None:
    line(
        label,
        f"p50 {summary['p50_ms']:.2f}   p95 {summary['p95_ms']:.2f}   p99 {summary['p99_ms']:.2f}   "
        f"max {summary['max_ms']:.2f}   mean {summary['mean_ms']:.2f}",
    )


# -- replay ------------------------------------------------------------------------------------


@contextmanager
def _timed_evaluations() -> Iterator[list[float]]:
    """Each `Controller.evaluate` call's duration while inside; replay reports decisions, not
    evaluations, so the count is taken here (the wrapper adds one perf_counter pair a call)."""
    durations: list[float] = []
    original = Controller.evaluate

    async def timed(self: Controller) -> list[Decision]:
        start = time.perf_counter()
        try:
            return await original(self)
        finally:
            durations.append(time.perf_counter() - start)

    Controller.evaluate = timed  # type: ignore[method-assign]
    try:
        yield durations
    finally:
        Controller.evaluate = original  # type: ignore[method-assign]


def _query_latencies(url: str, promql: str, instants: list[datetime]) -> list[float]:
    """Seconds per instant query, one at a time on a kept-alive connection; each must answer a value."""
    durations = []
    with httpx.Client(base_url=url, timeout=5.0, trust_env=False) as client:
        for at in instants:
            start = time.perf_counter()
            response = client.get("/api/v1/query", params={"query": promql, "time": f"{at.timestamp():.3f}"})
            durations.append(time.perf_counter() - start)
            result = response.json().get("data", {}).get("result") if response.status_code == 200 else None
            if not result:
                raise BenchFailure(f"{promql!r} at {_iso(at)} answered {response.status_code} {response.text[:200]!r}")
    return durations


def _query_requests(url: str) -> int:
    """Prometheus's own count of the instant queries it has answered (`/api/v1/query`)."""
    text = httpx.get(f"{url}/metrics", timeout=5.0, trust_env=False).text
    found = re.findall(r'^prometheus_http_requests_total\{[^}]*handler="/api/v1/query"[^}]*\} (\S+)$', text, re.M)
    return int(sum(float(n) for n in found))


def _check_replay(status: int, lines: list[dict[str, Any]], start: datetime) -> list[dict[str, Any]]:
    if status != 0 or not lines or not lines[-1].get("summary"):
        raise BenchFailure(f"replay exited {status} with {len(lines)} lines; last: {lines[-1:]}")
    decisions = lines[:-1]
    hours = [
        round((datetime.fromisoformat(d["at"].replace("Z", "+00:00")) - start).total_seconds() / 3600, 4)
        for d in decisions
        if d["action"] == "stage_applied"
    ]
    if hours != EXPECTED_STAGE_HOURS or decisions[-1]["action"] != "completed" or lines[-1]["phase"] != "completed":
        raise BenchFailure(
            f"replay did not complete the plan: stages at hours {hours} (expected "
            f"{EXPECTED_STAGE_HOURS}), last decision {decisions[-1]['action']!r}, "
            f"phase {lines[-1]['phase']!r}"
        )
    return decisions


def run_replay() -> dict[str, Any]:
    heading("replay: the 72-hour phase5 plan over 76 h of healthy Prometheus history")
    scenario = healthy(history_start())
    plan = load_plan(PHASE5)
    promql = plan.guard("p95_latency").resolved_query() or ""
    spread = [scenario.at(0.5 + i * 71.5 / QUERY_SAMPLES) for i in range(QUERY_SAMPLES)]
    workdir = Path(tempfile.mkdtemp(prefix="rolloutd-bench-replay-"))
    server = None
    try:
        with _failures_as_bench_failures():
            setup = time.perf_counter()
            server = PrometheusServer(workdir, storage=backfill(scenario, workdir), retention=RETENTION)
            server.start(targets=[])
            setup = time.perf_counter() - setup
        config = workdir / "rolloutd.toml"
        config.write_text(
            f'[daemon]\nstate_dir = "{workdir / "state"}"\nplan = "{PHASE5}"\n[prometheus]\nurl = "{server.url}"\n'
        )
        query_seconds = _query_latencies(server.url, promql, spread[0::2])
        requests_before, out = _query_requests(server.url), io.StringIO()
        argv = ["--config", str(config), "--from", _iso(scenario.start), "--approve", "--json"]
        with _timed_evaluations() as evaluations:
            start = time.perf_counter()
            status = anyio.run(partial(replay, argv, out=out), backend="asyncio")
            wall = time.perf_counter() - start
        requests = _query_requests(server.url) - requests_before
        query_seconds += _query_latencies(server.url, promql, spread[1::2])
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    decisions = _check_replay(status, [json.loads(x) for x in out.getvalue().splitlines()], scenario.start)
    return _replay_figures(plan, wall, setup, evaluations, decisions, requests, query_seconds)


def _replay_figures(
    plan: Plan,
    wall: float,
    setup: float,
    evaluations: list[float],
    decisions: list[dict[str, Any]],
    requests: int,
    query_seconds: list[float],
) -> dict[str, Any]:
    count, guards = len(evaluations), len(plan.guards)
    queries = latency_summary_ms(query_seconds)
    per_evaluation_ms = wall / count * 1000
    overhead = round(per_evaluation_ms / (guards * queries["mean_ms"]), 2)
    line("history", f"76 h healthy, backfilled and served in {setup:.1f} s (promtool + Prometheus start)")
    line("replay wall", f"{wall:.2f} s for plan hours 0-72")
    line("evaluations", f"{count:,}   ({count / wall:,.1f}/s; {per_evaluation_ms:.2f} ms each on average)")
    _print_latency("evaluate() ms", latency_summary_ms(evaluations))
    line("decisions", f"{len(decisions)}   ({len(decisions) / wall:,.2f}/s)")
    line(
        "Prometheus instant queries",
        f"{requests:,} ({requests / count:.2f} per evaluation; {guards} guards + checkpoint reports)",
    )
    _print_latency(f"baseline: 1 query ms (n={len(query_seconds)})", queries)
    line(
        "overhead (per eval / guards x q)",
        f"{overhead:.2f}x   ({per_evaluation_ms:.2f} ms / "
        f"({guards} x {queries['mean_ms']:.2f} ms); guards are queried concurrently)",
    )
    line("checks", "exit 0; stages at hours 0/4/12/49/52/56; completed at 72 h")
    return {
        "wall_seconds": round(wall, 3),
        "setup_seconds": round(setup, 2),
        "evaluations": count,
        "decisions": len(decisions),
        "evaluations_per_second": round(count / wall, 1),
        "decisions_per_second": round(len(decisions) / wall, 2),
        "evaluate": latency_summary_ms(evaluations),
        "prometheus_queries": requests,
        "query_baseline": queries,
        "guards": guards,
        "overhead_ratio": overhead,
    }


# -- idle --------------------------------------------------------------------------------------


def _daemon_config(
    directory: Path,
    *,
    port: int | None = None,
    plan: Path | None = None,
    time_scale: float = 1.0,
    prometheus: str | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    settings: dict[str, object] = {"plan": str(plan), "time_scale": time_scale} if plan else {}
    path = write_config(directory, port, **settings)
    if prometheus:
        with path.open("a") as handle:
            handle.write(f"\n[prometheus]\nurl = {json.dumps(prometheus)}\ntimeout_seconds = 2.0\n")
    return path


def _start_prometheus(workdir: Path, targets: list[str]) -> PrometheusServer:
    """Prometheus scraping `targets` every 15 s, with the regression-suite gauge a recording
    rule (evaluated every second) so phase5's one `no_data = "hold"` guard sees a value."""
    workdir.mkdir(parents=True)
    rules = workdir / "rules.yml"
    rules.write_text(
        json.dumps(
            {
                "groups": [
                    {
                        "name": "bench",
                        "interval": "1s",
                        "rules": [{"record": "genesis_regression_pass_rate", "expr": "vector(99.5)"}],
                    }
                ]
            }
        )
    )
    server = PrometheusServer(workdir)
    server.start(targets=targets, scrape_interval=IDLE_SCRAPE_INTERVAL, rule_files=[rules])
    server.wait_for_query("genesis_regression_pass_rate", timeout=READY_TIMEOUT)
    return server


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid`, all its threads (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _memory_kib(pid: int, key: str = "VmRSS") -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith(key + ":"):
            return int(row.split()[1])
    raise BenchFailure(f"/proc/{pid}/status has no {key}")


def _pid(daemon: Daemon) -> int:
    assert daemon.proc is not None
    return daemon.proc.pid


class EvaluationCounter:
    """Evaluations a daemon has logged so far (five `guard.evaluated` events each), read
    incrementally from the lines the harness's reader thread keeps appending."""

    def __init__(self, daemon: Daemon, guards: int) -> None:
        self._daemon, self._guards = daemon, guards
        self._seen = self._events = 0

    def __call__(self) -> int:
        lines = self._daemon.lines
        end = len(lines)
        self._events += sum(EVALUATED in lines[i] for i in range(self._seen, end))
        self._seen = end
        return self._events // self._guards


def _wait_for(daemon: Daemon, counter: EvaluationCounter, evaluations: int, stall: float = STALL_SECONDS) -> float:
    """Block until `daemon` has logged `evaluations` evaluations; return the moment (monotonic).
    Slow is a figure, stuck is a failure: fail only after `stall` seconds without a new one."""
    seen, since = counter(), time.monotonic()
    while seen < evaluations:
        if daemon.proc is not None and daemon.proc.poll() is not None:
            raise BenchFailure(f"rolloutd exited with {daemon.proc.returncode}:\n{''.join(daemon.lines[-20:])}")
        if time.monotonic() - since > stall:
            raise BenchFailure(
                f"rolloutd logged no evaluation for {stall:g} s, at {seen:,} of {evaluations:,}:\n"
                f"{''.join(daemon.lines[-10:])}"
            )
        time.sleep(0.01)
        now = counter()
        if now > seen:
            seen, since = now, time.monotonic()
    return time.monotonic()


def _admin_status(daemon: Daemon) -> dict[str, Any]:
    transport = httpx.HTTPTransport(uds=str(daemon.socket))
    with httpx.Client(transport=transport, base_url="http://rolloutd", timeout=5.0) as client:
        response = client.get("/v1/rollout")
    if response.status_code != 200:
        raise BenchFailure(f"GET /v1/rollout answered {response.status_code}: {response.text[:300]}")
    return response.json()


def _guard_verdicts(daemon: Daemon) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in daemon.events():
        if event.get("event") == "guard.evaluated":
            counts[str(event.get("verdict"))] = counts.get(str(event.get("verdict")), 0) + 1
    return counts


def _failed_evaluations(daemon: Daemon) -> list[str]:
    return [row for row in daemon.lines if '"event":"evaluation.failed"' in row]


def measure_idle(idle: Daemon, bare: Daemon, seconds: float) -> dict[str, Any]:
    """CPU of both daemons over the same `seconds`, and their memory at the end."""
    pids = {"phase5": _pid(idle), "no_plan": _pid(bare)}
    before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    start = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - start
    figures = {}
    for name, pid in pids.items():
        cpu = _cpu_seconds(pid) - before[name]
        figures[name] = {
            "cpu_seconds": round(cpu, 3),
            "cpu_percent": round(cpu / wall * 100, 3),
            "cpu_seconds_per_minute": round(cpu / wall * 60, 3),
            "rss_kib": _memory_kib(pid),
        }
    figures["window_seconds"] = round(wall, 1)
    return figures


def rehearse(workdir: Path, prometheus: str) -> dict[str, Any]:
    """REHEARSAL_EVALUATIONS evaluations at 30,000x; VmRSS at the first and at every tenth of the way."""
    stages = [("0h", 0.0, ()), ("100000h", 5.0, LOW_COHORT)]
    plan_path = workdir / "plan.toml"
    plan_path.write_text(plan_toml("bench_rehearsal", stages))
    guards = len(load_plan(plan_path).guards)
    config = _daemon_config(workdir / "rehearsal", plan=plan_path, time_scale=REHEARSAL_SCALE, prometheus=prometheus)
    daemon = Daemon(config).start(timeout=READY_TIMEOUT)
    try:
        pid, counter = _pid(daemon), EvaluationCounter(daemon, guards)
        first = _wait_for(daemon, counter, 1, READY_TIMEOUT)
        cpu_before, samples = _cpu_seconds(pid), [(1, 0.0, _memory_kib(pid))]
        for i in range(1, REHEARSAL_SAMPLES + 1):
            target = REHEARSAL_EVALUATIONS * i // REHEARSAL_SAMPLES
            reached = _wait_for(daemon, counter, target)
            samples.append((target, reached - first, _memory_kib(pid)))
        cpu = _cpu_seconds(pid) - cpu_before
        status, hwm = _admin_status(daemon), _memory_kib(pid, "VmHWM")
    finally:
        daemon.stop()
    failed = _failed_evaluations(daemon)
    if failed or status["phase"] != "running" or status["stage"] != 0:
        raise BenchFailure(
            f"the rehearsal ended {status['phase']} at stage {status['stage']}, "
            f"{len(failed)} failed evaluation(s): {failed[:1]}"
        )
    wall, timed = samples[-1][1], samples[-1][0] - 1
    return {
        "time_scale": REHEARSAL_SCALE,
        "wall_interval_ms": round(300 / REHEARSAL_SCALE * 1000, 2),
        "evaluations": samples[-1][0],
        "wall_seconds": round(wall, 2),
        "evaluations_per_second": round(timed / wall, 1),
        "cpu_percent": round(cpu / wall * 100, 1),
        "cpu_ms_per_evaluation": round(cpu / timed * 1000, 2),
        "rss_samples": samples,
        "vmhwm_kib": hwm,
        "rss_before_kib": samples[0][2],
        "rss_after_kib": samples[-1][2],
        "rss_growth_kib": samples[-1][2] - samples[0][2],
        "rss_growth_after_first_tenth_kib": samples[-1][2] - samples[1][2],
        "verdicts": _guard_verdicts(daemon),
        "plan_hours_elapsed": status["plan_hours_elapsed"],
    }


def run_idle() -> dict[str, Any]:
    heading(f"idle: a real rolloutd at time_scale 1 ({IDLE_SECONDS:g} s), then {REHEARSAL_EVALUATIONS:,} evaluations")
    workdir = Path(tempfile.mkdtemp(prefix="rolloutd-bench-idle-"))
    server, daemons = None, []
    try:
        with _failures_as_bench_failures():
            ports = {"idle": free_port(), "bare": free_port()}
            server = _start_prometheus(workdir / "prometheus", [f"{HOST}:{p}" for p in ports.values()])
            idle = Daemon(_daemon_config(workdir / "idle", port=ports["idle"], plan=PHASE5, prometheus=server.url))
            bare = Daemon(_daemon_config(workdir / "bare", port=ports["bare"]))
            daemons += [idle, bare]
            for daemon in daemons:
                daemon.start(timeout=READY_TIMEOUT)
            _wait_for(idle, EvaluationCounter(idle, len(load_plan(PHASE5).guards)), 1, READY_TIMEOUT)
            first = _admin_status(idle)
            if first["phase"] != "running" or first["stage"] != 0:
                raise BenchFailure(
                    f"after its first evaluation the phase5 rollout is {first['phase']} at stage "
                    f"{first['stage']}: {[(g['name'], g['verdict']) for g in first['guards']]}"
                )
            window = measure_idle(idle, bare, IDLE_SECONDS)
            idle.stop()  # its CPU must not disturb the rehearsal
            rehearsal = rehearse(workdir, server.url)
            window["no_plan"]["rss_kib_after_rehearsal"] = _memory_kib(_pid(bare))
    finally:
        for daemon in daemons:
            daemon.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    _print_idle(window, first, rehearsal)
    return {
        "idle": window,
        "idle_guards_after_first_evaluation": {g["name"]: g["verdict"] for g in first["guards"]},
        "scrape_interval": IDLE_SCRAPE_INTERVAL,
        "rehearsal": rehearsal,
    }


def _print_idle(window: dict[str, Any], first: dict[str, Any], rehearsal: dict[str, Any]) -> None:
    verdicts = ", ".join(f"{g['name']} {g['verdict']}" for g in first["guards"])
    line("phase5 daemon after 1st evaluation", f"{first['phase']} at stage {first['stage']} ({verdicts})")
    line(
        "window",
        f"{window['window_seconds']:g} s, both daemons at once; Prometheus scrapes each every {IDLE_SCRAPE_INTERVAL}",
    )
    table(
        ("CPU %", "CPU s/min", "RSS MiB", "daemon"),
        [
            (f"{w['cpu_percent']:.2f}", f"{w['cpu_seconds_per_minute']:.3f}", f"{w['rss_kib'] / 1024:.1f}", name)
            for name, w in (("phase5, time_scale 1", window["phase5"]), ("no plan (baseline)", window["no_plan"]))
        ],
    )
    r = rehearsal
    print(
        f"  rehearsal: time_scale {r['time_scale']:g} (guard interval {r['wall_interval_ms']:g} ms wall), "
        f"{r['evaluations']:,} evaluations, the last {r['evaluations'] - 1:,} in {r['wall_seconds']:.1f} s"
    )
    table(
        ("evaluations", "seconds", "RSS MiB", ""),
        [
            (f"{n:,}", f"{s:.1f}", f"{kib / 1024:.1f}", "first evaluation" if n == 1 else "")
            for n, s, kib in r["rss_samples"]
        ],
    )
    line(
        "evaluations/s kept up",
        f"{r['evaluations_per_second']:,.1f}   (daemon CPU {r['cpu_percent']:.0f}% of a "
        f"core, {r['cpu_ms_per_evaluation']:.1f} ms CPU an evaluation)",
    )
    line(
        "RSS before → after",
        f"{r['rss_before_kib'] / 1024:.1f} → {r['rss_after_kib'] / 1024:.1f} MiB "
        f"(+{r['rss_growth_kib'] / 1024:.1f} MiB; +{r['rss_growth_after_first_tenth_kib'] / 1024:.1f} MiB after the "
        f"first {r['rss_samples'][1][0]:,}; peak {r['vmhwm_kib'] / 1024:.1f} MiB)",
    )
    bare = window["no_plan"]
    line(
        "baseline: no-plan daemon RSS",
        f"{bare['rss_kib'] / 1024:.1f} MiB "
        f"({bare['rss_kib_after_rehearsal'] / 1024:.1f} after the rehearsal; rehearsal after - baseline: "
        f"+{(r['rss_after_kib'] - bare['rss_kib']) / 1024:.1f} MiB)",
    )
    line("guard verdicts in the rehearsal", ", ".join(f"{k} {v:,}" for k, v in sorted(r["verdicts"].items())))
