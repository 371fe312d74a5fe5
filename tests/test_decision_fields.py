"""A decision's trigger and actor are data: decide() fills them, the journal keeps them, counting
and rendering read them, and journals written before they existed still read (marked legacy).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller import decide as rules
from controller.decision import Action, Decision, Trigger, TriggerKind
from controller.guards import assess
from controller.plan import Plan
from controller.state_db import decision_from_json, with_trigger
from controller.views import journal_text
from controller.views.report_html import decisions_table
from tests.support.plans import compact_plan
from tests.support.service_rig import actions, rigs  # noqa: F401  (rigs is a fixture)

T0 = datetime(2025, 10, 23, 9, tzinfo=UTC)
STEP = timedelta(minutes=5)
TODAY = {
    "stage_applied",
    "rollback",
    "hold",
    "resume",
    "warning",
    "checkpoint",
    "verdict",
    "awaiting_approval",
    "approved",
    "emergency",
    "emergency_cleared",
    "completed",
}


def rounds(
    plan: Plan, state: rules.RolloutState, first: datetime, latency: list[float | str]
) -> tuple[rules.RolloutState, list[Decision]]:
    """Regular guard rounds from `first`, one per value (a str is a provider error)."""
    decisions: list[Decision] = []
    guard = plan.guard("latency")
    for i, value in enumerate(latency):
        now = first + i * STEP
        obs = assess(guard, None, now, error=value) if isinstance(value, str) else assess(guard, value, now)
        t = rules.decide(plan, state, now, [obs])
        state, decisions = t.state, decisions + list(t.decisions)
    return state, decisions


def at_ten_percent() -> tuple[Plan, rules.RolloutState]:
    """The compact plan running at its 10% stage (1h05)."""
    plan = compact_plan()
    state, _ = rounds(plan, rules.start(plan, T0), T0, [0.1] * 14)
    assert state.percentage == 10
    return plan, state


def only(decisions: list[Decision], action: str) -> Decision:
    (found,) = [d for d in decisions if d.action == action]
    return found


def test_actions_are_an_enum_whose_values_are_todays_strings():
    """Every action is an Action whose str and JSON form are the strings journals and replay print today."""
    assert {str(a) for a in Action} == TODAY
    d = Decision(at=T0, action="stage_applied", stage=0, percentage=0.0, agents=(), reason="x")
    assert d.action is Action.STAGE_APPLIED and json.loads(json.dumps(d.to_dict()))["action"] == "stage_applied"
    with pytest.raises(ValueError):
        Decision(at=T0, action="rolled_over", stage=0, percentage=0.0, agents=(), reason="x")


def test_a_sustained_breach_rolls_back_with_the_guard_as_trigger():
    """A critical breach over two checks rolls back with trigger (guard, latency), by rolloutd, label `latency`."""
    plan, state = at_ten_percent()
    _, decisions = rounds(plan, state, T0 + timedelta(hours=1, minutes=10), [0.35, 0.35])
    warning, rollback = only(decisions, "warning"), only(decisions, "rollback")
    assert warning.trigger == Trigger(TriggerKind.GUARD, "latency")
    assert (rollback.trigger, rollback.actor, rollback.trigger.label) == (
        Trigger(TriggerKind.GUARD, "latency"),
        "rolloutd",
        "latency",
    )
    assert rollback.said == rollback.reason and not rollback.reason.startswith("rolloutd")


def test_failed_checks_past_the_limit_roll_back_with_failure_limit_as_trigger():
    """Three provider errors in a row roll back with trigger (failure_limit, latency), label `failure_limit`."""
    plan, state = at_ten_percent()
    _, decisions = rounds(plan, state, T0 + timedelta(hours=1, minutes=10), ["503"] * 3)
    rollback = only(decisions, "rollback")
    assert rollback.trigger == Trigger(TriggerKind.FAILURE_LIMIT, "latency")
    assert rollback.trigger.label == "failure_limit"


def test_a_no_go_verdict_rolls_back_with_the_checkpoint_as_trigger():
    """A NO-GO report journals a verdict and a rollback, both triggered by the checkpoint, label `checkpoint`."""
    plan, state = at_ten_percent()
    state, _ = rounds(plan, state, T0 + timedelta(hours=1, minutes=30), [0.1])
    t = rules.checkpoint_verdict(plan, state, T0 + timedelta(hours=1, minutes=31), 0, "NO-GO", "too many errors")
    verdict, rollback = t.decisions
    assert verdict.trigger == rollback.trigger == Trigger(TriggerKind.CHECKPOINT, "mid-point review")
    assert rollback.trigger.label == "checkpoint" and rollback.actor == "rolloutd"


def test_stages_and_blindness_name_their_own_triggers():
    """A stage that fell due is triggered by the schedule (its label); a blind guard's hold by blindness."""
    plan = compact_plan(
        guards=[
            {"name": "latency", "query": "q", "direction": "above", "warning": 0.2, "critical": 0.3, "no_data": "hold"}
        ]
    )
    state, decisions = rounds(plan, rules.start(plan, T0), T0, [0.1])
    assert decisions[0].trigger == Trigger(TriggerKind.SCHEDULE, plan.stages[0].label())
    guard = plan.guard("latency")
    t = rules.decide(plan, state, T0 + STEP, [assess(guard, None, T0 + STEP)])
    assert t.decisions[0].action == "hold" and t.decisions[0].trigger == Trigger(TriggerKind.BLINDNESS, "latency")


def test_operator_commands_carry_the_actor_as_data_not_as_a_prefix():
    """hold/rollback keep the operator's words as the reason, the actor beside it, and say it once when shown."""
    plan, state = at_ten_percent()
    now = T0 + timedelta(hours=1, minutes=6)
    held = rules.hold(state, now, "dashboards are red", actor="alice")
    (d,) = held.decisions
    assert (d.reason, d.actor, d.trigger) == ("dashboards are red", "alice", Trigger(TriggerKind.OPERATOR, "hold"))
    assert d.said == held.state.hold_reason == "operator: alice: dashboards are red"
    (nameless,) = rules.rollback(plan, state, now, 0, "bad answers").decisions
    assert nameless.said == "operator: bad answers", "an unnamed operator is not said twice"
    assert (nameless.trigger.label, nameless.actor) == ("operator", "operator")


def test_an_emergency_names_who_pulled_it():
    """The kill switch's decision is triggered by `emergency`, with the signal or the operator as actor."""
    _, state = at_ten_percent()
    (d,) = rules.emergency(
        state, T0 + timedelta(hours=2), "emergency shutdown requested with SIGUSR1", actor="signal:SIGUSR1"
    ).decisions
    assert (d.trigger.kind, d.actor) == (TriggerKind.EMERGENCY, "signal:SIGUSR1")
    assert d.said == "signal:SIGUSR1: emergency shutdown requested with SIGUSR1"


def test_decisions_survive_the_journal_unchanged():
    """Every decision of a run, written as JSON and read back, is the same decision (trigger and actor included)."""
    plan, state = at_ten_percent()
    _, decisions = rounds(plan, state, T0 + timedelta(hours=1, minutes=10), [0.35, 0.35])
    decisions.append(rules.hold(state, T0 + timedelta(hours=2), "look", actor="bob").decisions[0])
    for d in decisions:
        assert decision_from_json(json.loads(json.dumps(d.to_dict()))) == d


OLD_ROWS = [  # decision JSON as rolloutd wrote it before `trigger` and `actor`
    {
        "action": "rollback",
        "guard": "p95_latency",
        "severity": "critical",
        "reason": "p95_latency 0.35s > critical 0.3s for 2 consecutive check(s)",
    },
    {
        "action": "rollback",
        "guard": "test_pass_rate",
        "reason": "test_pass_rate: 5 consecutive failed checks (errors) >= failure_limit 5",
    },
    {"action": "rollback", "reason": "checkpoint Day 1: NO-GO (2 rollbacks > max 1)"},
    {"action": "rollback", "reason": "operator: carol: bad answers"},
    {"action": "hold", "reason": "operator: operator: second look"},
    {"action": "emergency", "reason": "signal:SIGUSR1: emergency shutdown requested with SIGUSR1"},
]
OLD_DERIVED = [
    ({"kind": "guard", "detail": "p95_latency", "legacy": True}, "rolloutd"),
    ({"kind": "failure_limit", "detail": "test_pass_rate", "legacy": True}, "rolloutd"),
    ({"kind": "checkpoint", "detail": "", "legacy": True}, "rolloutd"),
    ({"kind": "operator", "detail": "rollback", "legacy": True}, "carol"),
    ({"kind": "operator", "detail": "hold", "legacy": True}, "operator"),
    ({"kind": "emergency", "detail": "", "legacy": True}, "signal:SIGUSR1"),
]


def old_row(fields: dict) -> dict:
    return {
        "at": "2025-10-23T21:05:00Z",
        "stage": 0,
        "percentage": 0.0,
        "agents": [],
        "severity": None,
        "checkpoint": None,
        "guard": None,
        "recommendation": None,
        **fields,
    }


def test_rows_from_before_triggers_get_derived_ones_marked_legacy():
    """An old row gains a best-effort trigger and actor marked legacy, reason untouched; new rows stay as they are."""
    for fields, (trigger, actor) in zip(OLD_ROWS, OLD_DERIVED, strict=True):
        row = with_trigger(old_row(fields))
        assert (row["trigger"], row["actor"], row["reason"]) == (trigger, actor, fields["reason"])
        decision = decision_from_json(old_row(fields))
        assert decision.trigger.legacy and decision.said == fields["reason"] == journal_text.said(row)
    new = Decision(
        at=T0,
        action="hold",
        stage=0,
        percentage=0.0,
        agents=(),
        reason="x",
        trigger=Trigger(TriggerKind.OPERATOR, "hold"),
        actor="alice",
    ).to_dict()
    assert with_trigger(new) is new


@pytest.mark.anyio
async def test_a_journal_from_before_triggers_counts_its_rollbacks_as_before(rigs, tmp_path: Path) -> None:
    """Reopened over old rows, the rollback counter has today's labels: guard name, failure_limit, checkpoint, operator."""
    rig = rigs()
    await rig.controller.open()
    await rig.at(0, 4)
    rows = [
        (r["at"], r["action"], r["stage"], r["percentage"], r["reason"], json.dumps(r), "done")
        for r in map(old_row, OLD_ROWS)
    ]
    with sqlite3.connect(rig.db.path) as raw:
        raw.executemany(
            "INSERT INTO journal (at, action, stage, percentage, reason, decision, status) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    rig.close()
    again = rigs(state_dir=rig.state_dir)
    await again.controller.open()
    assert again.controller.rollback_counts == {"p95_latency": 1, "failure_limit": 1, "checkpoint": 1, "operator": 1}
    journal = again.journal()
    assert [j["trigger"].get("legacy", False) for j in journal] == [False, False] + [True] * len(OLD_ROWS)


@pytest.mark.anyio
async def test_the_service_journals_the_actor_and_counts_an_operator_rollback(rigs) -> None:
    """Commands journal the actor and a reason without it; a manual rollback is counted as `operator`."""
    rig = rigs()
    await rig.controller.open()
    await rig.at(0, 4)
    await rig.controller.command("hold", reason="waiting for the dashboards", actor="alice")
    await rig.controller.command("rollback", reason="bad answers", to_stage=0, actor="carol")
    hold, rollback = rig.journal()[-2:]
    assert (hold["reason"], hold["actor"], hold["trigger"]) == (
        "waiting for the dashboards",
        "alice",
        {"kind": "operator", "detail": "hold"},
    )
    assert (rollback["reason"], rollback["actor"]) == ("bad answers", "carol")
    assert rig.controller.rollback_counts == {"operator": 1}
    assert rig.controller.status()["hold_reason"] == "operator: carol: bad answers"


def test_views_say_who_from_the_fields_alone():
    """The views' `said` matches `Decision.said`, and the report marks operator rows by trigger, never by prose."""
    _, state = at_ten_percent()
    now = T0 + timedelta(hours=1, minutes=6)
    decisions = [
        rules.hold(state, now, "why", actor="alice").decisions[0],
        rules.emergency(state, now, "fire", actor="signal:SIGUSR1").decisions[0],
        rules.resume(rules.hold(state, now, "x").state, now, "", actor="operator").decisions[0],
        Decision(
            at=now,
            action="stage_applied",
            stage=1,
            percentage=10.0,
            agents=(),
            reason="operator: looks like a command, but is not",
        ),
    ]
    for d in decisions:
        assert journal_text.said(d.to_dict()) == d.said
    assert actions(decisions) == ["hold", "emergency", "resume", "stage_applied"]
    html = decisions_table([d.to_dict() for d in decisions], T0)
    rows = html.split("<tr")[2:]
    assert ['class="operator"' in r for r in rows] == [True, False, True, False]
    assert ">alice<" in rows[0] and ">signal:SIGUSR1<" in rows[1]
