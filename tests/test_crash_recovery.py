"""SIGKILL at any instant of a rollout, then restart: the same flags, phase and journal.

A forked child runs the seeds' 72-hour plan (decide → intent → flags → commit, every
guard interval, with a P95 breach from hour 30 so a rollback happens too) and is
killed at random points; each restart recovers pending intents and carries on from
the durable state. The result must equal an uninterrupted run's: the flags file (minus
audit ids), the phase, and the journal's decisions, with every stage applied once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.commit import commit, recover
from controller.decide import decide, start
from controller.guards import assess
from controller.plan_load import load_plan
from controller.state_db import StateDB
from flags.store import FlagStore

PLAN = load_plan(Path(__file__).resolve().parent.parent / "deploy" / "plans" / "phase5.toml")
T0 = datetime(2025, 10, 23, 9, tzinfo=UTC)
END = T0 + timedelta(hours=40)
KILLS = 40


def value(guard: str, at: datetime) -> float:
    hours = (at - T0).total_seconds() / 3600
    return {
        "error_rate": 0.0,
        "p95_latency": 0.05 if hours < 30 else 0.4,
        "test_pass_rate": 99.0,
        "cache_hit_rate": 0.9,
        "retrieval_precision": 0.8,
    }[guard]


def run(state_dir: Path) -> None:
    """Run (or resume) the rollout to END; the crash-safe path under test."""
    store = FlagStore.open(state_dir)
    db = StateDB(state_dir)
    recovered = recover(db, store, PLAN)
    with open(state_dir / "recoveries.log", "a") as log:
        log.write(f"{len(recovered)}\n")
    state = db.load() or start(PLAN, T0)
    now = state.last_evaluation_at + PLAN.guard_interval if state.last_evaluation_at else T0
    while now <= END:
        observations = [assess(g, value(g.name, now), now) for g in PLAN.guards]
        transition = decide(PLAN, state, now, observations)
        commit(db, store, PLAN, transition, now)
        state, now = transition.state, now + PLAN.guard_interval
    db.close()
    store.close()


def outcome(state_dir: Path) -> tuple[dict, str, list[tuple]]:
    flags = json.loads((state_dir / "flags.json").read_text())
    for body in flags.values():
        body.pop("audit_id", None)
    db = StateDB(state_dir)
    state = db.load()
    journal = [(d["at"], d["action"], d["stage"], d["percentage"], d["status"]) for d in db.journal(limit=10_000)]
    db.close()
    return flags, str(state.phase), journal


def test_killed_and_restarted_rollout_converges_to_the_uninterrupted_run(tmp_path: Path) -> None:
    """At least 25 SIGKILLs at random moments, each followed by a restart, end where one clean run ends."""
    reference = tmp_path / "reference"
    started = time.monotonic()
    run(reference)
    duration = time.monotonic() - started
    expected = outcome(reference)
    assert "rollback" in [j[1] for j in expected[2]], "the scenario must include a rollback"

    crashed = tmp_path / "crashed"
    rng = random.Random(int(os.environ.get("CRASH_SEED", "7")))
    landed = 0
    for _ in range(KILLS):
        pid = os.fork()
        if pid == 0:  # the child: run until killed (or done)
            try:
                run(crashed)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, 2 * duration / KILLS))  # spread the kills over the whole run
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        landed += os.WIFSIGNALED(status)
    run(crashed)  # the final restart runs to the end

    flags, phase, journal = outcome(crashed)
    assert landed >= 25, f"only {landed} kills landed mid-run; the test proves less than it claims"
    assert phase == expected[1]
    assert flags == expected[0]
    assert journal == expected[2]
    stages = [j[2] for j in journal if j[1] == "stage_applied"]
    assert stages == sorted(set(stages)), f"a stage was applied twice: {stages}"
    assert all(j[4] == "done" for j in journal), "every intent must be applied after recovery"
    recoveries = sum(int(n) for n in (crashed / "recoveries.log").read_text().split())
    print(f"{landed} kills landed; {recoveries} half-applied intents were recovered on restart")


def test_intent_recorded_but_flags_not_written_is_applied_on_restart(tmp_path: Path) -> None:
    """A crash between the intent and the flag write (the 4h stage) is finished by the next start."""
    reference = tmp_path / "reference"
    run(reference)
    crashed = tmp_path / "crashed"
    store, db = FlagStore.open(crashed), StateDB(crashed)
    state, now = start(PLAN, T0), T0
    while now < T0 + timedelta(hours=4):
        transition = decide(PLAN, state, now, [assess(g, value(g.name, now), now) for g in PLAN.guards])
        commit(db, store, PLAN, transition, now)
        state, now = transition.state, now + PLAN.guard_interval
    transition = decide(PLAN, state, now, [assess(g, value(g.name, now), now) for g in PLAN.guards])
    assert [d.action for d in transition.decisions] == ["stage_applied"]
    db.record(transition.state, transition.decisions, now)  # ... and the process dies here
    assert json.loads((crashed / "flags.json").read_text())["hybrid_rag_enabled"]["rollout_percentage"] == 0.0
    db.close()
    store.close()
    run(crashed)
    assert outcome(crashed) == outcome(reference)
