"""`rolloutd demo`: fault specs (pure), and the real demo — the seeds' plan through the real
daemon on embedded defaults — with and without an injected fault.

The two end-to-end runs go at 2880x (72 plan hours in 90 s) to keep the suite short; the
README's `make demo` figure is at the default 1440x.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from controller.demo.inject import Injection, active_faults, parse_injection

SPEED = "2880"
GUARD_INTERVAL_H = 5 / 60


@pytest.mark.parametrize("text, expected", [
    ("latency@30h", Injection("latency", 0.4, timedelta(hours=30))),
    ("latency=250ms@30h+2h", Injection("latency", 0.25, timedelta(hours=30), timedelta(hours=2))),
    ("errors@40", Injection("errors", 0.05, timedelta(hours=40))),
    ("errors=2%@40h+90m", Injection("errors", 0.02, timedelta(hours=40), timedelta(minutes=90))),
    ("errors=0.5@1h", Injection("errors", 0.5, timedelta(hours=1))),
])
def test_parse_injection(text: str, expected: Injection) -> None:
    assert parse_injection(text) == expected


@pytest.mark.parametrize("text, problem", [
    ("latency", "no start time"), ("lag@3h", "unknown fault 'lag'"), ("errors=200%@3h", "must be a share"),
    ("latency=-1s@3h", "must be a duration"), ("latency@soon", "cannot read duration"),
    ("latency@3h+0m", "duration must be positive"),
])
def test_bad_injections_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_injection(text)


def test_active_faults_follow_plan_time() -> None:
    spikes = [parse_injection("latency@30h+2h"), parse_injection("errors=2%@31h")]
    assert active_faults(spikes, timedelta(hours=29.9)) == (0.0, 0.0)
    assert active_faults(spikes, timedelta(hours=30)) == (0.4, 0.0)
    assert active_faults(spikes, timedelta(hours=31.5)) == (0.4, 0.02)
    assert active_faults(spikes, timedelta(hours=32)) == (0.0, 0.02)


def test_a_bad_inject_is_a_usage_error(tmp_path: Path) -> None:
    done = _demo(tmp_path / "out", "--inject", "latency@")
    assert done.returncode == 2 and "no start time" in done.stderr


def test_the_demo_refuses_to_replace_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    done = _demo(tmp_path)
    assert done.returncode == 2 and "was not made by `rolloutd demo`" in done.stderr
    assert (tmp_path / "mine.txt").read_text() == "keep me"


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
    """latency@30h: the p95 guard breaches past critical, and the rollback comes at the evaluation
    that makes the breach sustained — within one guard interval of it — naming p95_latency."""
    out = tmp_path / "demo"
    done = _demo(out, "--inject", "latency@30h")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    decisions = _journal(out)
    start = _at(_status_start(out))
    rollbacks = [d for d in decisions if d["action"] == "rollback"]
    assert rollbacks, done.stdout[-3000:]
    first = rollbacks[0]
    hour = (_at(first["at"]) - start).total_seconds() / 3600
    assert first["guard"] == "p95_latency" and first["severity"] == "critical", first
    assert "p95_latency" in first["reason"] and "> critical 0.3" in first["reason"]
    assert first["percentage"] == 5           # one stage back from 10%
    # the guard's evaluations, from its durable history: the breach is first seen after 30h, and
    # the rollback is the evaluation at which it has lasted `sustain` (two consecutive checks)
    breaches = [o for o in _observations(out, "p95_latency") if o["outcome"] == "breach"
                and (_at(o["at"]) - start).total_seconds() / 3600 >= 30]
    sustained = _at(breaches[1]["at"])
    assert _at(breaches[0]["at"]) - start >= timedelta(hours=30)
    assert timedelta(0) <= _at(first["at"]) - sustained <= timedelta(hours=GUARD_INTERVAL_H), (first, breaches[:3])
    assert 30 < hour < 31
    before = [d for d in decisions if d["action"] == "rollback" and _at(d["at"]) - start < timedelta(hours=30)]
    assert not before, "rolled back before the fault was injected"
    assert "latency (+400 ms per retrieval) from hour 30" in done.stdout


def _demo(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.main", "demo", "--out", str(out), "--speed", SPEED,
                           "--plain", *args], capture_output=True, text=True, timeout=600)


def _journal(out: Path) -> list[dict]:
    import sqlite3
    with sqlite3.connect(out / "state" / "controller.db") as db:
        return [json.loads(raw) for (raw,) in db.execute("SELECT decision FROM journal ORDER BY seq")]


def _observations(out: Path, guard: str) -> list[dict]:
    import sqlite3
    with sqlite3.connect(out / "state" / "controller.db") as db:
        rows = db.execute("SELECT at, outcome, value FROM observations WHERE guard = ? ORDER BY seq", (guard,))
        return [{"at": at, "outcome": outcome, "value": value} for at, outcome, value in rows]


def _status_start(out: Path) -> str:
    import sqlite3
    with sqlite3.connect(out / "state" / "controller.db") as db:
        (raw,) = db.execute("SELECT state FROM rollout").fetchone()
    return json.loads(raw)["started_at"]


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
