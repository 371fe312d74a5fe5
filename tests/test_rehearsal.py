"""Live rehearsals: the real rolloutd process, a small plan at time_scale 600, Prometheus
scraping a live exporter every second, and operators using the real rolloutctl.

At time_scale 600 one plan minute is 0.1 s of wall time: the 5-minute guard interval
is 0.5 s, and a stage at "20m" falls due 2 s after the rollout starts. Breaches are
injected through the exporter as pulses of whole scrapes (see `Exporter.pulse`), so
how many guard rounds see a breach depends on Prometheus's scrapes, not on when the
test thread happens to run.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from controller.plan import parse_duration
from tests.support.daemon_harness import Daemon
from tests.support.realservers import PrometheusServer
from tests.support.rehearsal import (  # noqa: F401  (fixtures)
    P95,
    P95_GUARD,
    PASS_RATE_GUARD,
    PLAN_FLAGS,
    Exporter,
    Rehearsal,
    Stage,
    applied_stages,
    daemons,
    events_named,
    exporter,
    log_tail,
    plan_flags_at,
    plan_text,
    rehearse,
    rolloutctl,
    scraped,
    wait_until,
)

SCALE = 600.0
INTERVAL = timedelta(minutes=5)  # the plans' guard interval, in plan time
COHORT_1 = ("Builder", "Deploy", "QA")
COHORT_2 = (*COHORT_1, "Support", "Marketing")
COHORT_3 = (*COHORT_2, "Analyst")
FAR = Stage("100h", 25, COHORT_3)  # never falls due during a test: the rollout stays put
# A guard acts after 3 consecutive breaching rounds (sustain 10m at a 5m interval). A pulse
# of 2 scrapes (2 s) spans 4-5 rounds of 0.5 s: enough for one rollback, not for a second.
SUSTAIN_3 = (replace(P95_GUARD, sustain="10m"), PASS_RATE_GUARD)
PULSE_SCRAPES = 2


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def guard(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for g in status["guards"] if g["name"] == name)


def after_last(journal: list[dict[str, Any]], action: str) -> list[tuple[str, int]]:
    """(action, stage) of every decision after the last `action`, warnings left out (a breach
    still running after a rollback opens a new warning episode, which changes nothing)."""
    last = max(i for i, d in enumerate(journal) if d["action"] == action)
    return [(d["action"], d["stage"]) for d in journal[last + 1 :] if d["action"] != "warning"]


def assert_stays(r: Rehearsal, phase: str, stage: int, rounds: int = 4) -> None:
    """`rounds` more clean guard rounds change neither the phase nor the stage."""
    r.wait_status(lambda s: all(g["verdict"] == "pass" for g in s["guards"]), "every guard to pass again")
    status = r.wait_evaluations(rounds)
    assert (status["phase"], status["stage"]) == (phase, stage), status
    assert all(g["verdict"] == "pass" for g in status["guards"]), status["guards"]


# -- a: on schedule, and what status shows ---------------------------------------------------------


def test_stages_apply_in_order_on_schedule_and_status_shows_every_guard(
    rehearse: Callable[..., Rehearsal], exporter: Exporter
) -> None:
    """Healthy guards apply every stage once, in order and on time, and `rolloutctl status --json` shows the
    position, the next transition and every guard's last value, verdict, threshold and breach count."""
    stages = [Stage("0m", 0), Stage("10m", 5, COHORT_1), Stage("20m", 10, COHORT_2), Stage("30m", 15, COHORT_2), FAR]
    r = rehearse(stages, time_scale=SCALE)
    r.wait_stage(3)
    journal = r.journal()
    started = moment(r.admin.status()["started_at"])
    applied = [d for d in journal if d["action"] == "stage_applied"]
    assert [(d["stage"], d["percentage"]) for d in applied] == [(0, 0.0), (1, 5.0), (2, 10.0), (3, 15.0)], journal
    for decision, stage in zip(applied, stages, strict=False):
        late = moment(decision["at"]) - (started + parse_duration(stage.at))
        assert timedelta(0) <= late <= 2 * INTERVAL, f"stage {decision['stage']} applied {late} after it fell due"
    assert plan_flags_at(r.flags(), 15.0, COHORT_2), r.flags()

    exporter.set(P95, 0.25)  # past warning only: notified and counted, never acted on
    r.wait_status(lambda s: guard(s, "p95_latency")["consecutive_breaches"] >= 2, "two warning-level rounds")
    done = rolloutctl(r.daemon.socket, "status", "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert (status["phase"], status["stage"], status["percentage"]) == ("running", 3, 15.0)
    assert status["agents"] == list(COHORT_2)
    assert status["next_transition"] == "stage 4 (100h: 25%)"
    assert moment(status["next_transition_at"]) == started + timedelta(hours=100) / SCALE
    p95, pass_rate = guard(status, "p95_latency"), guard(status, "test_pass_rate")
    assert (p95["verdict"], p95["severity"], p95["value"], p95["threshold"]) == ("breach", "warning", 0.25, 0.2)
    assert p95["consecutive_breaches"] >= 2, p95
    assert (pass_rate["verdict"], pass_rate["value"], pass_rate["threshold"], pass_rate["consecutive_breaches"]) == (
        "pass",
        99.5,
        98.0,
        0,
    )

    table = rolloutctl(r.daemon.socket, "status")
    assert table.returncode == 0, table.stderr
    row = next(line.split() for line in table.stdout.splitlines() if line.split()[:1] == ["p95_latency"])
    assert row[1:5] == ["breach", "(warning)", "0.25", ">"] and row[5] == "0.2", table.stdout
    warnings = [d for d in r.journal() if d["action"] == "warning"]
    assert [(d["guard"], d["stage"]) for d in warnings] == [("p95_latency", 3)], "one warning per episode"


# -- b: rollbacks ----------------------------------------------------------------------------------


def test_critical_breach_rolls_back_one_stage_and_waits_for_resume(
    rehearse: Callable[..., Rehearsal], exporter: Exporter
) -> None:
    """A sustained critical breach rolls back one stage, naming the guard, and the rollout stays there,
    healthy, until `rolloutctl resume`."""
    r = rehearse(
        [Stage("0m", 0), Stage("10m", 5, COHORT_1), Stage("20m", 10, COHORT_2), FAR], time_scale=SCALE, guards=SUSTAIN_3
    )
    r.wait_stage(2)
    exporter.pulse(P95, 0.35, scrapes=PULSE_SCRAPES)
    status = r.wait_status(lambda s: s["phase"] == "rolled_back", "a rollback after a sustained critical breach")
    assert (status["stage"], status["percentage"], status["agents"]) == (1, 5.0, list(COHORT_1))
    rollback = next(d for d in r.journal() if d["action"] == "rollback")
    assert (rollback["guard"], rollback["severity"], rollback["stage"]) == ("p95_latency", "critical", 1), rollback
    assert "p95_latency 0.35 > critical 0.3" in rollback["reason"], rollback["reason"]
    assert plan_flags_at(r.flags(), 5.0, COHORT_1), r.flags()

    assert_stays(r, "rolled_back", 1)
    assert plan_flags_at(r.flags(), 5.0, COHORT_1), r.flags()
    assert [d["action"] for d in r.journal()].count("rollback") == 1, "one sustained breach, one rollback"
    assert applied_stages(r.journal()) == [0, 1, 2]

    done = rolloutctl(r.daemon.socket, "resume", "--reason", "p95 back to normal")
    assert done.returncode == 0, done.stderr
    r.wait_stage(2)
    assert after_last(r.journal(), "rollback") == [("resume", 1), ("stage_applied", 2)]
    assert plan_flags_at(r.flags(), 10.0, COHORT_2), r.flags()


def test_emergency_breach_rolls_back_to_zero_and_waits_for_resume(
    rehearse: Callable[..., Rehearsal], exporter: Exporter
) -> None:
    """A sustained emergency breach rolls back to the plan's 0% stage, where the rollout stays until
    `rolloutctl resume` re-applies the stages one at a time."""
    r = rehearse(
        [Stage("0m", 0), Stage("10m", 5, COHORT_1), Stage("20m", 10, COHORT_2), FAR], time_scale=SCALE, guards=SUSTAIN_3
    )
    r.wait_stage(2)
    exporter.pulse(P95, 0.6, scrapes=PULSE_SCRAPES)
    status = r.wait_status(lambda s: s["phase"] == "rolled_back", "a rollback after a sustained emergency breach")
    assert (status["stage"], status["percentage"], status["agents"]) == (0, 0.0, [])
    rollback = next(d for d in r.journal() if d["action"] == "rollback")
    assert (rollback["guard"], rollback["severity"], rollback["stage"]) == ("p95_latency", "emergency", 0), rollback
    assert "p95_latency 0.6 > emergency 0.5" in rollback["reason"], rollback["reason"]
    assert plan_flags_at(r.flags(), 0.0, ()), r.flags()

    assert_stays(r, "rolled_back", 0)
    assert plan_flags_at(r.flags(), 0.0, ()), r.flags()

    done = rolloutctl(r.daemon.socket, "resume", "--reason", "p95 back to normal")
    assert done.returncode == 0, done.stderr
    r.wait_stage(2)
    assert after_last(r.journal(), "rollback") == [("resume", 0), ("stage_applied", 1), ("stage_applied", 2)]
    assert plan_flags_at(r.flags(), 10.0, COHORT_2), r.flags()


# -- c: Prometheus away ----------------------------------------------------------------------------


def test_prometheus_outage_holds_and_its_return_resumes(
    rehearse: Callable[..., Rehearsal], scraped: PrometheusServer
) -> None:
    """While Prometheus is down the rollout holds, blind, and applies no stage that falls due; when
    Prometheus is back on the same port the rollout resumes by itself."""
    r = rehearse(
        [Stage("0m", 0), Stage("10m", 5, COHORT_1), Stage("40m", 10, COHORT_2), FAR],
        time_scale=SCALE,
        failure_limit=1000,
    )
    r.wait_stage(1)
    scraped.stop()
    status = r.wait_status(lambda s: s["phase"] == "holding", "a hold while Prometheus is down")
    assert status["stage"] == 1, "stage 2 fell due before Prometheus was down: the test's timing is off"
    assert "blind" in status["hold_reason"] and "error" in status["hold_reason"], status["hold_reason"]
    assert "connection refused" in status["hold_reason"], status["hold_reason"]

    due = r.wait_status(lambda s: s["next_transition_due"], "stage 2 to fall due during the outage")
    errors = guard(due, "p95_latency")["consecutive_errors"]
    status = r.wait_status(
        lambda s: guard(s, "p95_latency")["consecutive_errors"] >= errors + 3,
        "three more blind rounds after stage 2 fell due",
    )
    assert (status["phase"], status["stage"]) == ("holding", 1), status
    assert applied_stages(r.journal()) == [0, 1]
    assert plan_flags_at(r.flags(), 5.0, COHORT_1), r.flags()

    scraped.start()
    r.wait_stage(2, timeout=20.0)
    assert after_last(r.journal(), "hold") == [("resume", 1), ("stage_applied", 2)], r.journal()
    hold = next(d for d in r.journal() if d["action"] == "hold")
    assert "blind" in hold["reason"], hold
    assert plan_flags_at(r.flags(), 10.0, COHORT_2), r.flags()


# -- d: SIGUSR1 -------------------------------------------------------------------------------------


def test_sigusr1_emergency_survives_a_restart_and_needs_clear_emergency(
    rehearse: Callable[..., Rehearsal], daemons: Callable[[Path], Daemon]
) -> None:
    """SIGUSR1's emergency (plan flags off, kill switch on) survives a restart, and only
    `rolloutctl resume --clear-emergency` leaves it."""
    r = rehearse([Stage("0m", 0), Stage("10m", 5, COHORT_1), FAR], time_scale=SCALE)
    r.wait_stage(1)
    r.daemon.signal(signal.SIGUSR1)
    status = r.wait_status(lambda s: s["phase"] == "emergency", "the emergency phase after SIGUSR1")
    assert status["kill_switch"] and status["emergency"], status
    assert_emergency_flags(r.flags())

    r.daemon.stop()
    assert r.daemon.proc.returncode == 0, log_tail(r.daemon)
    r = Rehearsal(daemons(r.daemon.config), r.plan)
    status = r.wait_evaluations(3)
    assert (status["phase"], status["kill_switch"]) == ("emergency", True), status
    assert_emergency_flags(r.flags())
    emergencies = [d for d in r.journal() if d["action"] == "emergency"]
    assert len(emergencies) == 1 and "SIGUSR1" in emergencies[0]["reason"], emergencies

    refused = rolloutctl(r.daemon.socket, "resume", "--reason", "try")
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert "--clear-emergency" in refused.stderr
    answer = r.admin.command("resume", reason="try the API")
    assert answer.status_code == 409 and "--clear-emergency" in answer.json()["error"], answer.text
    assert r.admin.status()["phase"] == "emergency"

    cleared = rolloutctl(r.daemon.socket, "resume", "--clear-emergency", "--reason", "incident closed")
    assert cleared.returncode == 0, cleared.stderr
    status = r.wait_status(lambda s: s["phase"] != "emergency", "the emergency to be cleared")
    assert (status["phase"], status["kill_switch"], status["percentage"]) == ("rolled_back", False, 0.0), status
    flags = r.flags()
    assert flags["emergency_shutdown"]["enabled"] is False
    assert plan_flags_at(flags, 0.0, ()), flags


def assert_emergency_flags(flags: dict[str, Any]) -> None:
    assert flags["emergency_shutdown"]["enabled"] is True, flags
    assert all(flags[name]["enabled"] is False for name in PLAN_FLAGS), flags


# -- e: SIGHUP -------------------------------------------------------------------------------------


def test_sighup_keeps_the_plan_on_a_bad_file_and_adopts_a_valid_edit(rehearse: Callable[..., Rehearsal]) -> None:
    """SIGHUP keeps the running plan when the file is broken (plan.reload_rejected) and adopts a valid
    edit (plan.reloaded), whose new threshold the next guard rounds use."""
    stages = [Stage("0m", 0), Stage("10m", 5, COHORT_1), FAR]
    r = rehearse(stages, time_scale=SCALE)
    r.wait_stage(1)
    thresholds = {"warning": 0.2, "critical": 0.3, "emergency": 0.5}
    # Each broken file also edits a threshold, so adopting it by mistake would show in the status.
    edited = r.plan.read_text().replace("warning = 0.2", "warning = 0.04", 1)
    broken = {
        "TOML syntax": edited.replace("[plan]", "[plan", 1),
        "threshold order": edited.replace("critical = 0.3", "critical = 0.01", 1),
        "another rollout": edited.replace('name = "rehearsal"', 'name = "another"', 1),
    }
    for number, (what, text) in enumerate(broken.items(), start=1):
        r.plan.write_text(text)
        r.daemon.signal(signal.SIGHUP)
        wait_until(
            lambda number=number: len(events_named(r.daemon, "plan.reload_rejected")) >= number,
            10.0,
            f"plan.reload_rejected for a plan with a bad {what}",
            r.daemon,
        )
        status = r.wait_evaluations(2)
        assert (status["rollout"], status["phase"], status["stage"]) == ("rehearsal", "running", 1), status
        p95 = guard(status, "p95_latency")
        assert (p95["thresholds"], p95["verdict"]) == (thresholds, "pass"), f"{what}: the old plan must stay"
    rejected = events_named(r.daemon, "plan.reload_rejected")
    assert [e["_priority"] for e in rejected] == [3, 3, 3], rejected
    assert any("critical" in json.dumps(e.get("problems")) for e in rejected), rejected
    assert any("another" in str(e.get("problem")) for e in rejected), rejected
    assert not events_named(r.daemon, "plan.reloaded")

    lower = (replace(P95_GUARD, warning=0.04), PASS_RATE_GUARD)
    r.plan.write_text(plan_text(stages, guards=lower))
    r.daemon.signal(signal.SIGHUP)
    wait_until(lambda: events_named(r.daemon, "plan.reloaded"), 10.0, "plan.reloaded", r.daemon)
    status = r.wait_status(
        lambda s: guard(s, "p95_latency")["verdict"] == "breach", "p95 0.05 to breach the new 0.04 warning threshold"
    )
    p95 = guard(status, "p95_latency")
    assert (p95["thresholds"]["warning"], p95["severity"], p95["threshold"]) == (0.04, "warning", 0.04), p95
    warning = next(d for d in r.journal() if d["action"] == "warning")
    assert warning["guard"] == "p95_latency" and "0.04" in warning["reason"], warning
