"""`rolloutd demo`: fault specs (pure), and the real demo — the seeds' plan through the real
daemon on embedded defaults — with and without an injected fault.

The two end-to-end runs go at the demo's default 1440x (72 plan hours in 3 minutes), as
`make demo` does. At 2880x a guard window is 0.1 s of wall time and ~15 retrievals, and a
plan hour 1.25 s: on a loaded machine a stalled fleet turns windows into "no data" and
moves decisions by plan hours, which is the machine's noise, not the contract's. The
injected latency is 350 ms: p95 then reads in the (0.3, 0.4] bucket, critical with ~100 ms
of headroom under the 0.5 s emergency threshold (400 ms put it at 0.495, a loaded
machine's few extra milliseconds from an emergency rollback to 0%).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from controller.demo.inject import Injection, active_faults, parse_injection
from controller.demo.run import PLAN as DEMO_PLAN
from controller.plan import Severity
from controller.plan_load import load_plan

SPEED = "1440"
PLAN = load_plan(DEMO_PLAN)
P95 = PLAN.guard("p95_latency")
CRITICAL_OR_WORSE = {str(s) for s in Severity if s >= Severity.CRITICAL}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("latency@30h", Injection("latency", 0.4, timedelta(hours=30))),
        ("latency=250ms@30h+2h", Injection("latency", 0.25, timedelta(hours=30), timedelta(hours=2))),
        ("errors@40", Injection("errors", 0.05, timedelta(hours=40))),
        ("errors=2%@40h+90m", Injection("errors", 0.02, timedelta(hours=40), timedelta(minutes=90))),
        ("errors=0.5@1h", Injection("errors", 0.5, timedelta(hours=1))),
    ],
)
def test_parse_injection(text: str, expected: Injection) -> None:
    """An --inject spec reads as fault, size (or the fault's default), start and optional duration."""
    assert parse_injection(text) == expected


@pytest.mark.parametrize(
    "text, problem",
    [
        ("latency", "no start time"),
        ("lag@3h", "unknown fault 'lag'"),
        ("errors=200%@3h", "must be a share"),
        ("latency=-1s@3h", "must be a duration"),
        ("latency@soon", "cannot read duration"),
        ("latency@3h+0m", "duration must be positive"),
    ],
)
def test_bad_injections_say_what_is_wrong(text: str, problem: str) -> None:
    """A bad --inject spec is a ValueError that names what is wrong with it."""
    with pytest.raises(ValueError, match=problem):
        parse_injection(text)


def test_active_faults_follow_plan_time() -> None:
    """A fault is active from its start for its duration (or for good), and faults of both kinds add up."""
    spikes = [parse_injection("latency@30h+2h"), parse_injection("errors=2%@31h")]
    assert active_faults(spikes, timedelta(hours=29.9)) == (0.0, 0.0)
    assert active_faults(spikes, timedelta(hours=30)) == (0.4, 0.0)
    assert active_faults(spikes, timedelta(hours=31.5)) == (0.4, 0.02)
    assert active_faults(spikes, timedelta(hours=32)) == (0.0, 0.02)


def test_a_bad_inject_is_a_usage_error(tmp_path: Path) -> None:
    """`rolloutd demo --inject latency@` exits 2 and says the start time is missing."""
    done = _demo(tmp_path / "out", "--inject", "latency@")
    assert done.returncode == 2 and "no start time" in done.stderr


def test_the_demo_refuses_to_replace_a_directory_it_did_not_make(tmp_path: Path) -> None:
    """`--out` naming a directory the demo did not make exits 2 and leaves its files alone."""
    (tmp_path / "mine.txt").write_text("keep me")
    done = _demo(tmp_path)
    assert done.returncode == 2 and "was not made by `rolloutd demo`" in done.stderr
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_a_sustained_run_counts_only_critical_or_worse_consecutive_checks() -> None:
    """A warning-level first breach does not start the run, and a check below critical ends one."""

    def obs(minute: int, severity: str | None) -> dict:
        return {
            "at": f"2025-10-24T15:{minute:02d}:00Z",
            "outcome": "breach" if severity else "pass",
            "severity": severity,
        }

    warning_first = [obs(0, None), obs(5, "warning"), obs(10, "critical"), obs(15, "emergency"), obs(20, "critical")]
    assert _first_sustained_run(warning_first, 2) == warning_first[2:4]
    broken = [obs(0, "critical"), obs(5, "warning"), obs(10, "critical"), obs(15, None), obs(20, "critical")]
    assert _first_sustained_run(broken, 2) == []
    assert _first_sustained_run(broken, 1) == broken[:1]


@pytest.mark.slow
def test_the_demo_runs_the_seeds_plan_to_the_end(tmp_path: Path) -> None:
    """No fault: every stage applied in order, the 48h gate approved by the demo (and saying so),
    three checkpoint reports written and GO, and the summary printed."""
    out = tmp_path / "demo"
    done = _demo(out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    decisions = _journal(out)
    applied = [d["percentage"] for d in decisions if d["action"] == "stage_applied"]
    assert applied == [0, 5, 10, 15, 20, 25], done.stdout[-3000:]
    approvals = [d for d in decisions if d["action"] == "approved"]
    assert len(approvals) == 1 and "approved automatically by `rolloutd demo`" in approvals[0]["reason"]
    reports = [json.loads(p.read_text()) for p in sorted((out / "state" / "reports").glob("checkpoint-*.json"))]
    assert [r["recommendation"] for r in reports] == ["GO", "GO", "GO"], [r["recommendation_reason"] for r in reports]
    assert all(r["metrics"]["p95_latency_ms"] is not None for r in reports)
    assert not [d for d in decisions if d["action"] in ("rollback", "emergency")]
    assert "72 plan hours in" in done.stdout and "GO" in done.stdout
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")


@pytest.mark.slow
def test_injected_latency_rolls_back_for_the_right_reason_at_the_right_time(tmp_path: Path) -> None:
    """latency@30h: the p95 guard breaches past critical, and the rollback, naming p95_latency, comes
    at the very evaluation whose recorded severities make the critical breach sustained."""
    out = tmp_path / "demo"
    done = _demo(out, "--inject", "latency=350ms@30h")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    decisions = _journal(out)
    start = _at(_status_start(out))
    rollbacks = [d for d in decisions if d["action"] == "rollback"]
    assert rollbacks, done.stdout[-3000:]
    first = rollbacks[0]
    hour = (_at(first["at"]) - start).total_seconds() / 3600
    assert first["guard"] == "p95_latency" and first["severity"] == "critical", first
    assert "p95_latency" in first["reason"] and "> critical 0.3" in first["reason"]
    assert first["percentage"] == 5  # one stage back from 10%
    # the guard's evaluations, from its durable history: the rollback is the evaluation that
    # completes the first run of `checks_to_sustain` consecutive critical-or-worse ones (the
    # window filling up after 30h may first read warning, which does not count), and that run
    # began after the fault did
    history = _observations(out, "p95_latency")
    run = _first_sustained_run(history, P95.checks_to_sustain(PLAN.guard_interval))
    seen = [(o["at"], o["outcome"], o["severity"]) for o in history if _at(o["at"]) - start >= timedelta(hours=30)]
    assert run, ("never sustained at critical", seen[:6])
    assert _at(run[0]["at"]) - start >= timedelta(hours=30), (run, seen[:6])
    assert _at(first["at"]) == _at(run[-1]["at"]), (first["at"], run, seen[:6])
    assert 30 < hour < 31
    before = [d for d in decisions if d["action"] == "rollback" and _at(d["at"]) - start < timedelta(hours=30)]
    assert not before, "rolled back before the fault was injected"
    assert "latency (+350 ms per retrieval) from hour 30" in done.stdout


def _demo(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.main", "demo", "--out", str(out), "--speed", SPEED, "--plain", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _journal(out: Path) -> list[dict]:
    with sqlite3.connect(out / "state" / "controller.db") as db:
        return [json.loads(raw) for (raw,) in db.execute("SELECT decision FROM journal ORDER BY seq")]


def _observations(out: Path, guard: str) -> list[dict]:
    with sqlite3.connect(out / "state" / "controller.db") as db:
        rows = db.execute(
            "SELECT at, outcome, value, severity FROM observations WHERE guard = ? ORDER BY seq", (guard,)
        )
        return [
            {"at": at, "outcome": outcome, "value": value, "severity": severity}
            for at, outcome, value, severity in rows
        ]


def _first_sustained_run(history: list[dict], checks: int) -> list[dict]:
    """The first `checks` consecutive observations at critical or worse (GuardCounters' critical
    streak reaching `checks_to_sustain`), or [] if there is none. Every observation counts as a
    regular round: no stage or checkpoint of the seeds' plan falls due near the fault."""
    run: list[dict] = []
    for observation in history:
        run = run + [observation] if observation["severity"] in CRITICAL_OR_WORSE else []
        if len(run) == checks:
            return run
    return []


def _status_start(out: Path) -> str:
    with sqlite3.connect(out / "state" / "controller.db") as db:
        (raw,) = db.execute("SELECT state FROM rollout").fetchone()
    return json.loads(raw)["started_at"]


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
