"""The rollout's decisions over time: the seeds' 72-hour plan run on a fake clock, rollbacks,
blindness, downtime, operator commands, checkpoint verdicts, and seeded random runs that
must keep the rollout's invariants."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.decide import (
    CommandRefused,
    Decision,
    Phase,
    RolloutState,
    Transition,
    approve,
    awaiting_verdict,
    checkpoint_verdict,
    decide,
    emergency,
    hold,
    next_transition,
    promote,
    resume,
    rollback,
    start,
)
from controller.guards import Observation, Outcome, assess
from controller.plan import Direction, NoData, Plan, Response, Severity
from controller.plan_load import PlanError, load_plan
from tests.support.plans import compact_plan, latency_guard, pass_rate_guard
from tests.support.service_rig import healthy

PHASE5 = load_plan(Path(__file__).resolve().parent.parent / "deploy" / "plans" / "phase5.toml")
T0 = datetime(2025, 10, 23, 9, tzinfo=UTC)  # the seeds' hour 0
FIVE_MIN = timedelta(minutes=5)
OUTAGE = "Prometheus answered 503 Service Unavailable"


def plan(
    *,
    failure_limit: int = 3,
    failure_response: str = "rollback_zero",
    requires_approval: bool = False,
    sustain: str = "5m",
    no_data: str = "hold",
    on_warning: str = "notify",
) -> Plan:
    """The compact plan (0% at 0h, 10% at 1h, 50% at 2h, a checkpoint at 1h30), guards latency
    (with emergency 0.5) and pass_rate."""
    return compact_plan(
        failure_limit=failure_limit,
        failure_response=failure_response,
        requires_approval=requires_approval,
        guards=(latency_guard(emergency=0.5, sustain=sustain, on_warning=on_warning), pass_rate_guard(no_data=no_data)),
    )


def at(hours: float, minutes: int = 0) -> datetime:
    """The moment `hours` (and `minutes`) after T0."""
    return T0 + timedelta(hours=hours, minutes=minutes)


Values = Callable[[float], dict]  # hours since T0 -> {guard: value | None (no data) | str (provider error)}


def observe(p: Plan, values: dict, now: datetime) -> list[Observation]:
    """One evaluation of every guard of `p`: healthy unless `values` says otherwise."""
    merged = {**healthy(p), **values}
    return [
        assess(g, None, now, error=merged[g.name])
        if isinstance(merged[g.name], str)
        else assess(g, merged[g.name], now)
        for g in p.guards
    ]


Operator = Callable[[RolloutState, datetime], Transition | None]


def run(
    p: Plan,
    state: RolloutState,
    values: Values = lambda h: {},
    frm: datetime = T0,
    to: datetime = T0,
    step: timedelta = FIVE_MIN,
    operator: Operator | None = None,
    judge: str | None = "GO",
) -> tuple[RolloutState, list[Decision]]:
    """Evaluate the guards and `decide` every `step` from `frm` to `to` inclusive; collect every decision.

    `operator(state, now)` runs before each evaluation and may return a command's Transition.
    `judge`: the verdict each checkpoint's report gets, as the service would (None: leave them unjudged).
    """
    decisions: list[Decision] = []
    now = frm
    while now <= to:
        if operator and (done := operator(state, now)) is not None:
            state = done.state
            decisions += done.decisions
        t = decide(p, state, now, observe(p, values((now - T0) / timedelta(hours=1)), now))
        state = t.state
        decisions += t.decisions
        if judge and awaiting_verdict(state):  # as the service does: judge the report (GO here), then decide again
            for index in awaiting_verdict(state):
                t = checkpoint_verdict(p, state, now, index, judge, "test")
                state, decisions = t.state, decisions + list(t.decisions)
            t = decide(p, state, now)
            state, decisions = t.state, decisions + list(t.decisions)
        now += step
    return state, decisions


def once_at(moment: datetime, command: Callable[[RolloutState, datetime], Transition]) -> Operator:
    """An operator that runs `command` at the first evaluation at or after `moment`, and never again."""
    done = []

    def operate(state: RolloutState, now: datetime) -> Transition | None:
        if now >= moment and not done:
            done.append(now)
            return command(state, now)
        return None

    return operate


def approve_when_asked(p: Plan) -> Operator:
    """An operator who approves every checkpoint as soon as it asks."""
    return lambda state, now: approve(p, state, now) if state.phase is Phase.AWAITING_APPROVAL else None


def actions(decisions: list[Decision], *names: str) -> list[Decision]:
    """The decisions whose action is one of `names`, in order."""
    return [d for d in decisions if d.action in names]


def applied(decisions: list[Decision]) -> list[tuple[datetime, int]]:
    """(when, stage index) of every stage_applied decision."""
    return [(d.at, d.stage) for d in actions(decisions, "stage_applied")]


def phase5_until(
    hours: float, values: Values = lambda h: {}, operator: Operator | None = None, judge: str | None = "GO"
) -> tuple[RolloutState, list[Decision]]:
    """The phase5 rollout from hour 0 to `hours`, every 5 minutes."""
    return run(PHASE5, start(PHASE5, T0), values, T0, at(hours), operator=operator, judge=judge)


@functools.cache
def healthy_phase5() -> tuple[RolloutState, tuple[Decision, ...]]:
    """The whole phase5 plan with healthy guards and the 48h checkpoint approved as soon as it asks."""
    state, decisions = phase5_until(74, operator=approve_when_asked(PHASE5))
    return state, tuple(decisions)


# -- the seeds' timeline, healthy ----------------------------------------------------------------


def test_healthy_rollout_applies_each_stage_at_its_seed_hour():
    """With clean guards the stages apply at exactly hours 0, 4, 12, 49, 52 and 56, each once."""
    state, decisions = healthy_phase5()
    assert applied(list(decisions)) == [(at(0), 0), (at(4), 1), (at(12), 2), (at(49), 3), (at(52), 4), (at(56), 5)]
    assert [d.percentage for d in actions(list(decisions), "stage_applied")] == [0, 5, 10, 15, 20, 25]
    assert actions(list(decisions), "stage_applied")[-1].agents == (
        "Builder",
        "Deploy",
        "QA",
        "Support",
        "Marketing",
        "Analyst",
        "Legal",
        "Thon",
    )


def test_healthy_rollout_records_checkpoints_in_order_then_completes():
    """The 24h, 48h and 72h checkpoints are recorded in order, and the 72h one completes the rollout."""
    state, decisions = healthy_phase5()
    marks = [(d.at, d.action, d.checkpoint) for d in actions(list(decisions), "checkpoint", "completed")]
    assert marks == [
        (at(24), "checkpoint", 0),
        (at(48), "checkpoint", 1),
        (at(72), "checkpoint", 2),
        (at(72), "completed", None),
    ]
    assert state.phase is Phase.COMPLETED and state.phase.is_terminal
    assert (state.stage, state.percentage, state.rollbacks, state.manual_interventions) == (5, 25, 0, 0)
    assert not actions(list(decisions), "rollback", "hold", "warning")


def test_day2_checkpoint_waits_for_approval_before_hour_49():
    """At 48h the rollout awaits approval and the 49h stage does not apply, however long it waits."""
    state, decisions = phase5_until(60)
    assert state.phase is Phase.AWAITING_APPROVAL
    assert [(d.at, d.checkpoint) for d in actions(decisions, "awaiting_approval")] == [(at(48), 1)]
    assert "rolloutctl approve" in state.hold_reason
    assert applied(decisions)[-1] == (at(12), 2)
    assert state.percentage == 10


def test_approval_before_hour_49_applies_the_stage_at_its_time():
    """Approved at 48h30, the 49h stage applies at the first clean evaluation at or after 49h."""
    state, decisions = phase5_until(50, operator=once_at(at(48, 30), lambda s, now: approve(PHASE5, s, now)))
    assert [(d.at, d.checkpoint) for d in actions(decisions, "approved")] == [(at(48, 30), 1)]
    assert applied(decisions)[-1] == (at(49), 3)
    assert state.approved == (1,)


def test_late_approval_applies_the_overdue_stage_at_the_next_clean_evaluation():
    """Approved at 50h02, the overdue 49h stage applies at the 50h05 evaluation, and only then."""
    state, decisions = phase5_until(50)
    t = approve(PHASE5, state, at(50, 2))
    assert t.state.phase is Phase.RUNNING
    state, later = run(PHASE5, t.state, frm=at(50, 5), to=at(53))
    assert applied(later) == [(at(50, 5), 3), (at(52), 4)]


def test_decide_after_completion_changes_nothing():
    """A completed rollout ignores further evaluations, even breaching ones."""
    state, _ = healthy_phase5()
    t = decide(PHASE5, state, at(80), observe(PHASE5, {"p95_latency": 0.9}, at(80)))
    assert t.decisions == () and t.state.phase is Phase.COMPLETED and t.state.percentage == 25


# -- breaches -------------------------------------------------------------------------------------


def during(first: float, end: float, values: dict) -> Values:
    """`values` at evaluations from hour `first` (inclusive) to hour `end` (exclusive); healthy otherwise."""
    return lambda h: values if first - 1e-9 <= h < end - 1e-9 else {}


def p95_from(hour: float, value: float, until: float = 1000) -> Values:
    """P95 latency at `value` seconds from `hour` until `until`."""
    return during(hour, until, {"p95_latency": value})


def test_sustained_critical_latency_warns_then_rolls_back_one_stage():
    """P95 0.4s from hour 30 warns at once, and 5 minutes later (2 checks) rolls back from 10% to 5%."""
    state, decisions = phase5_until(30.1, p95_from(30, 0.4, until=30.1))
    warning, roll = actions(decisions, "warning", "rollback")
    assert (warning.at, warning.guard, warning.severity, warning.percentage) == (
        at(30),
        "p95_latency",
        Severity.CRITICAL,
        10,
    )
    assert (roll.at, roll.stage, roll.percentage, roll.severity) == (at(30, 5), 1, 5, Severity.CRITICAL)
    assert roll.agents == ("Builder", "Deploy", "QA")
    assert "0.4 > critical 0.3" in roll.reason and "2 consecutive" in roll.reason
    assert state.phase is Phase.ROLLED_BACK and state.rollbacks == 1 and state.manual_interventions == 0


def test_rolled_back_rollout_does_not_advance_until_resumed():
    """After a rollback, clean evaluations up to 60h apply nothing; after `resume` the next clean one does."""
    state, decisions = phase5_until(60, p95_from(30, 0.4, until=30.1))
    assert applied(decisions)[-1] == (at(12), 2)
    assert state.phase is Phase.ROLLED_BACK and state.percentage == 5
    assert not actions(decisions, "checkpoint")[1:]  # the 48h checkpoint waits too
    t = resume(state, at(60, 1), "latency fixed")
    assert t.state.phase is Phase.RUNNING and t.state.manual_interventions == 1
    state, later = run(PHASE5, t.state, frm=at(60, 5), to=at(60, 10))
    assert applied(later) == [(at(60, 5), 2)]
    assert [(d.at, d.checkpoint) for d in actions(later, "checkpoint")] == [(at(60, 10), 1)]


def test_a_breach_that_persists_rolls_back_again_after_another_sustain():
    """A critical breach that outlasts the first rollback rolls back once more after two more checks."""
    state, decisions = phase5_until(31, p95_from(30, 0.4))
    rolls = actions(decisions, "rollback")
    assert [(d.at, d.percentage) for d in rolls] == [(at(30, 5), 5), (at(30, 15), 0)]
    assert state.rollbacks == 2


def test_emergency_latency_rolls_back_to_zero():
    """P95 0.6s (past the 0.5s emergency level) for 5 minutes rolls every flag back to 0% (stage 0)."""
    state, decisions = phase5_until(30.1, p95_from(30, 0.6, until=30.1))
    (roll,) = actions(decisions, "rollback")
    assert (roll.at, roll.stage, roll.percentage, roll.severity) == (at(30, 5), 0, 0, Severity.EMERGENCY)
    assert state.phase is Phase.ROLLED_BACK and state.agents == ()


def test_warning_notifies_once_per_episode_and_blocks_the_due_stage():
    """A 2-hour warning episode across the 12h stage notifies once and delays the stage until it clears."""

    def values(h: float) -> dict:
        return during(11, 13, {"p95_latency": 0.25})(h) or during(20, 20.5, {"p95_latency": 0.25})(h)

    state, decisions = phase5_until(21, values)
    assert [d.at for d in actions(decisions, "warning")] == [at(11), at(20)]
    assert "p95_latency 0.25 > warning 0.2" in actions(decisions, "warning")[0].reason
    assert applied(decisions)[-1] == (at(13), 2)
    assert not actions(decisions, "rollback", "hold")


# -- blindness ------------------------------------------------------------------------------------


def test_metrics_outage_holds_and_resumes_by_itself_when_data_returns():
    """Provider errors from 11h50 hold the rollout through the 12h stage; at 12h10 it resumes and applies it."""
    state, decisions = phase5_until(12.5, during(11 + 50 / 60, 12 + 10 / 60, {"p95_latency": OUTAGE}))
    (held,) = actions(decisions, "hold")
    assert held.at == at(11, 50)
    assert "p95_latency" in held.reason and OUTAGE in held.reason
    assert [(d.at, d.reason) for d in actions(decisions, "resume")] == [(at(12, 10), "every guard reports again")]
    assert applied(decisions)[-1] == (at(12, 10), 2)
    assert state.phase is Phase.RUNNING and state.manual_interventions == 0


def test_blind_rollout_is_holding_and_applies_nothing_while_blind():
    """While Prometheus keeps failing, the phase is HOLDING and the due 12h stage is not applied."""
    state, decisions = phase5_until(12 + 10 / 60, during(11 + 55 / 60, 99, {"p95_latency": OUTAGE}))
    assert state.phase is Phase.HOLDING and not state.held_by_operator
    assert "not advancing while blind" in state.hold_reason
    assert applied(decisions)[-1] == (at(4), 1)


def test_failure_limit_consecutive_errors_roll_back_to_zero():
    """Five consecutive failed checks (failure_limit) roll back to 0% and stay there when data returns."""
    state, decisions = phase5_until(21, during(20, 20.5, {"p95_latency": OUTAGE}))
    (roll,) = actions(decisions, "rollback")
    assert roll.at == at(20, 20)  # the 5th error: 20h00 .. 20h20
    assert (roll.stage, roll.percentage, roll.guard) == (0, 0, "p95_latency")
    assert "5 consecutive failed checks (errors) >= failure_limit 5" in roll.reason
    assert state.phase is Phase.ROLLED_BACK
    assert not [d for d in actions(decisions, "resume") if d.at > roll.at]


def test_four_errors_stay_under_the_failure_limit():
    """Four consecutive failed checks hold but do not roll back."""
    state, decisions = phase5_until(21, during(20, 20 + 20 / 60, {"p95_latency": OUTAGE}))
    assert not actions(decisions, "rollback")
    assert state.phase is Phase.RUNNING and state.percentage == 10


def test_no_data_that_holds_behaves_like_an_error():
    """test_pass_rate (no_data = "hold") going silent holds the rollout, and 5 silent checks roll back to 0%."""
    state, decisions = phase5_until(21, during(20, 99, {"test_pass_rate": None}))
    (held,) = actions(decisions, "hold")
    assert held.at == at(20) and "test_pass_rate: no_data (no samples)" in held.reason
    (roll,) = actions(decisions, "rollback")
    assert roll.at == at(20, 20) and roll.percentage == 0 and "(no data)" in roll.reason


def test_no_data_that_passes_does_not_hold():
    """p95_latency (no_data = "pass") silent across the 4h stage neither holds nor delays it."""
    state, decisions = phase5_until(5, lambda h: {"p95_latency": None})
    assert not actions(decisions, "hold", "warning", "rollback")
    assert applied(decisions) == [(at(0), 0), (at(4), 1)]


def test_failure_response_rollback_stage_goes_back_one_stage():
    """With failure_response = "rollback_stage", five failed checks at 10% go back to 5%, not to 0%."""
    p = replace(PHASE5, failure_response=Response.ROLLBACK_STAGE)
    state, decisions = run(p, start(p, T0), during(20, 99, {"p95_latency": OUTAGE}), to=at(20, 20))
    (roll,) = actions(decisions, "rollback")
    assert (roll.at, roll.stage, roll.percentage) == (at(20, 20), 1, 5)


# -- downtime ---------------------------------------------------------------------------------------


def test_stage_that_fell_due_during_downtime_applies_at_the_first_clean_evaluation():
    """Last evaluated at 3h55 and next at 6h, the 4h stage applies at 6h."""
    state, _ = phase5_until(3 + 55 / 60)
    assert state.stage == 0
    t = decide(PHASE5, state, at(6), observe(PHASE5, {}, at(6)))
    assert [(d.action, d.stage, d.percentage) for d in t.decisions] == [("stage_applied", 1, 5)]


def test_two_overdue_stages_apply_on_consecutive_clean_evaluations_in_order():
    """After downtime past two stages, each applies on its own clean evaluation, in order, none skipped."""
    p = plan()
    state, _ = run(p, start(p, T0), to=at(0, 55))
    state, decisions = run(p, state, frm=at(2, 40), to=at(2, 50))
    assert applied(decisions) == [(at(2, 40), 1), (at(2, 45), 2)]


def test_checkpoint_missed_during_downtime_is_recorded_before_the_later_stage():
    """The 1h30 checkpoint that fell due while down is recorded before the 2h stage is applied."""
    p = plan()
    state, _ = run(p, start(p, T0), to=at(0, 55))
    state, decisions = run(p, state, frm=at(2, 40), to=at(2, 50))
    order = [(d.at, d.action, d.stage) for d in actions(decisions, "stage_applied", "checkpoint", "completed")]
    assert order == [
        (at(2, 40), "stage_applied", 1),
        (at(2, 45), "checkpoint", 1),
        (at(2, 45), "stage_applied", 2),
        (at(2, 50), "completed", 2),
    ]


def test_overdue_stage_waits_while_the_first_evaluation_after_downtime_breaches():
    """A warning at the first evaluation after downtime delays the overdue stage to the next clean one."""
    p = plan()
    state, _ = run(p, start(p, T0), to=at(0, 55))
    state, decisions = run(p, state, during(0, 1.5, {"latency": 0.25}), frm=at(1, 20), to=at(1, 35))
    assert applied(decisions) == [(at(1, 30), 1)]


def test_downtime_past_an_approval_checkpoint_still_stops_for_approval():
    """Coming back after a checkpoint that needs approval, the rollout records it and waits."""
    p = plan(requires_approval=True)
    state, _ = run(p, start(p, T0), to=at(1, 5))
    state, decisions = run(p, state, frm=at(3), to=at(3, 30))
    assert state.phase is Phase.AWAITING_APPROVAL
    assert [d.action for d in decisions] == ["checkpoint", "awaiting_approval", "verdict"]
    assert state.stage == 1


# -- operator commands -------------------------------------------------------------------------------


def running_at_10_percent() -> RolloutState:
    """The phase5 rollout at 20h: RUNNING at stage 2 (10%)."""
    state, _ = phase5_until(20)
    assert (state.phase, state.stage) == (Phase.RUNNING, 2)
    return state


def test_operator_hold_stops_advancing_and_does_not_resume_by_itself():
    """An operator hold is HOLDING until resumed: clean checks through a due stage neither resume nor apply."""
    p = plan()
    state, _ = run(p, start(p, T0), to=at(0, 30))
    t = hold(state, at(0, 31), "investigating cache misses")
    assert t.state.phase is Phase.HOLDING and t.state.held_by_operator
    assert t.state.manual_interventions == 1 and "investigating cache misses" in t.state.hold_reason
    assert [d.action for d in t.decisions] == ["hold"]
    state, decisions = run(p, t.state, frm=at(0, 35), to=at(1, 30))
    assert decisions == [] and state.phase is Phase.HOLDING and state.stage == 0
    t = resume(state, at(1, 31), "looked fine")
    state, decisions = run(p, t.state, frm=at(1, 35), to=at(1, 35))
    assert applied(decisions) == [(at(1, 35), 1)]
    assert state.manual_interventions == 2


@pytest.mark.parametrize(
    ("phase", "message"),
    [
        (Phase.RUNNING, "nothing to resume: the rollout is running"),
        (Phase.COMPLETED, "nothing to resume: the rollout is completed"),
        (Phase.AWAITING_APPROVAL, "rolloutctl approve"),
        (Phase.EMERGENCY, "--clear-emergency"),
    ],
)
def test_resume_is_refused_where_it_does_not_apply(phase, message):
    """`resume` refuses in RUNNING, COMPLETED, AWAITING_APPROVAL and EMERGENCY, saying what to do instead."""
    state = RolloutState(plan="p", plan_digest="d", started_at=T0, phase=phase)
    with pytest.raises(CommandRefused, match=message):
        resume(state, at(1))


@pytest.mark.parametrize("phase", [Phase.RUNNING, Phase.HOLDING, Phase.ROLLED_BACK, Phase.COMPLETED])
def test_approve_is_refused_unless_a_checkpoint_waits(phase):
    """`approve` refuses in every phase but AWAITING_APPROVAL and names the phase."""
    state = RolloutState(plan="p", plan_digest="d", started_at=T0, phase=phase)
    with pytest.raises(CommandRefused, match=f"no checkpoint is waiting for approval: the rollout is {phase}"):
        approve(PHASE5, state, at(1))


def test_promote_applies_the_next_stage_now_as_a_manual_intervention():
    """`promote` at 20h applies the 49h stage at once and counts a manual intervention."""
    t = promote(PHASE5, running_at_10_percent(), at(20, 1), "load test passed")
    (d,) = t.decisions
    assert (d.action, d.stage, d.percentage, d.at) == ("stage_applied", 3, 15, at(20, 1))
    assert d.reason == "promoted to Hour 49: 15%: load test passed" and d.trigger.detail == "promote"
    assert t.state.manual_interventions == 1 and t.state.phase is Phase.RUNNING


def test_promote_is_refused_at_the_last_stage_and_once_completed():
    """`promote` refuses when the last stage is applied, and in a completed rollout."""
    p = plan()
    state, _ = run(p, start(p, T0), to=at(2))
    assert (state.stage, state.phase) == (2, Phase.RUNNING)
    with pytest.raises(CommandRefused, match="the last stage is already applied"):
        promote(p, state, at(2, 1))
    state, _ = run(p, state, frm=at(2, 5), to=at(2, 5))
    assert state.phase is Phase.COMPLETED
    with pytest.raises(CommandRefused, match="completed"):
        promote(p, state, at(2, 6))


def test_operator_rollback_to_an_earlier_stage():
    """`rollback --to 1` from 10% goes to 5%, counts a rollback and a manual intervention, and needs resume."""
    t = rollback(PHASE5, running_at_10_percent(), at(20, 1), 1, "support tickets")
    (d,) = t.decisions
    assert (d.action, d.stage, d.percentage, d.reason) == ("rollback", 1, 5, "support tickets")
    assert (d.trigger.kind, d.trigger.detail, d.actor, d.said) == (
        "operator",
        "rollback",
        "operator",
        "operator: support tickets",
    )
    assert t.state.phase is Phase.ROLLED_BACK
    assert (t.state.rollbacks, t.state.manual_interventions) == (1, 1)


def test_operator_rollback_to_the_current_stage_is_allowed():
    """`rollback --to` the applied stage is allowed: it stops the rollout there and counts."""
    t = rollback(PHASE5, running_at_10_percent(), at(20, 1), 2, "pause here")
    assert t.state.phase is Phase.ROLLED_BACK and t.state.percentage == 10 and t.state.rollbacks == 1


@pytest.mark.parametrize(
    ("to_stage", "message"),
    [
        (3, "ahead of the applied stage 2; use `promote`"),
        (6, "no stage 6: stages are 0-5"),
        (-2, "no stage -2"),
    ],
)
def test_operator_rollback_refuses_later_or_unknown_stages(to_stage, message):
    """`rollback --to` refuses a stage ahead of the applied one or outside the plan."""
    with pytest.raises(CommandRefused, match=message):
        rollback(PHASE5, running_at_10_percent(), at(20, 1), to_stage, "x")


def test_emergency_stops_everything_until_cleared():
    """Emergency goes to 0%; decide() then does nothing; only resume --clear-emergency leaves it, at 0%."""
    t = emergency(running_at_10_percent(), at(20, 1), "kill switch: data leak")
    (d,) = t.decisions
    assert (d.action, d.stage, d.percentage) == ("emergency", -1, 0)
    assert t.state.phase is Phase.EMERGENCY
    for values in ({}, {"p95_latency": 0.9}, {"p95_latency": OUTAGE}):
        after = decide(PHASE5, t.state, at(60), observe(PHASE5, values, at(60)))
        assert after.decisions == ()
        assert (after.state.phase, after.state.stage, after.state.percentage) == (Phase.EMERGENCY, -1, 0)
    with pytest.raises(CommandRefused, match="--clear-emergency"):
        resume(t.state, at(21))
    cleared = resume(t.state, at(21), "leak fixed", clear_emergency=True)
    assert [(d.action, d.percentage) for d in cleared.decisions] == [("emergency_cleared", 0)]
    assert cleared.state.phase is Phase.ROLLED_BACK and cleared.state.stage == -1


@pytest.mark.parametrize(
    "command",
    [
        lambda s, now: hold(s, now, "x"),
        lambda s, now: promote(PHASE5, s, now),
        lambda s, now: rollback(PHASE5, s, now, 0, "x"),
    ],
)
def test_commands_are_refused_during_an_emergency(command):
    """Hold, promote and rollback are refused while the kill switch is on."""
    state = emergency(running_at_10_percent(), at(20, 1), "kill").state
    with pytest.raises(CommandRefused, match="emergency"):
        command(state, at(20, 2))


def test_hold_is_refused_once_completed():
    """A completed rollout cannot be put on hold."""
    with pytest.raises(CommandRefused, match="completed"):
        hold(healthy_phase5()[0], at(80), "x")


# -- checkpoint verdicts ---------------------------------------------------------------------------


def at_day1_checkpoint() -> RolloutState:
    """The phase5 rollout right after the 24h checkpoint was recorded, before its report's verdict."""
    state, _ = phase5_until(24, judge=None)
    assert state.checkpoints_done == (0,)
    return state


def test_go_verdict_is_journaled_and_changes_nothing_else():
    """A GO recommendation is recorded as a verdict; the phase stays, and a second verdict is a no-op."""
    state = at_day1_checkpoint()
    t = checkpoint_verdict(PHASE5, state, at(24, 1), 0, "GO", "all criteria met")
    (d,) = t.decisions
    assert (d.action, d.recommendation, d.checkpoint) == ("verdict", "GO", 0)
    assert t.state.phase is state.phase and t.state.verdicts == (0,)
    again = checkpoint_verdict(PHASE5, t.state, at(24, 2), 0, "NO-GO", "re-measured after a crash")
    assert again.state == t.state and again.decisions == ()


def test_no_stage_passes_a_checkpoint_before_its_verdict():
    """A stage due after a recorded checkpoint waits until the report has been judged."""
    state = at_day1_checkpoint()
    later, decisions = run(PHASE5, state, frm=at(24, 5), to=at(50), judge=None)
    assert later.stage == state.stage and not [d for d in decisions if d.action == "stage_applied"]


def test_hold_verdict_holds_until_resumed():
    """A HOLD recommendation holds the rollout; clean checks do not resume it, `resume` does."""
    t = checkpoint_verdict(PHASE5, at_day1_checkpoint(), at(24, 1), 0, "HOLD", "p95 trending up")
    _, d = t.decisions
    assert d.action == "hold" and d.checkpoint == 0 and "p95 trending up" in d.reason
    state, decisions = run(PHASE5, t.state, frm=at(24, 5), to=at(50))
    assert decisions == [] and state.phase is Phase.HOLDING
    state, decisions = run(PHASE5, resume(state, at(50, 1)).state, frm=at(50, 5), to=at(50, 5))
    assert [d.action for d in decisions] == ["checkpoint", "awaiting_approval", "verdict"]


def test_no_go_verdict_rolls_back_to_zero():
    """A NO-GO recommendation rolls every flag back to 0% and counts a rollback."""
    t = checkpoint_verdict(PHASE5, at_day1_checkpoint(), at(24, 1), 0, "NO-GO", "P0 incident")
    _, d = t.decisions
    assert (d.action, d.stage, d.percentage) == ("rollback", 0, 0)
    assert "NO-GO (P0 incident)" in d.reason
    assert t.state.phase is Phase.ROLLED_BACK and t.state.rollbacks == 1


def test_hold_verdict_while_awaiting_approval_keeps_waiting():
    """A HOLD at the approval checkpoint keeps it awaiting approval, with the hold's reason."""
    state, _ = phase5_until(48, judge=None)
    t = checkpoint_verdict(PHASE5, state, at(48, 1), 0, "GO", "day 1 fine")
    t = checkpoint_verdict(PHASE5, t.state, at(48, 1), 1, "HOLD", "stakeholders unsure")
    assert t.state.phase is Phase.AWAITING_APPROVAL and "stakeholders unsure" in t.state.hold_reason


# -- next_transition and Decision ------------------------------------------------------------------


def test_next_transition_names_the_next_stage_or_checkpoint():
    """next_transition gives the next stage or checkpoint time and name, and None once completed."""
    assert next_transition(PHASE5, start(PHASE5, T0)) == (at(0), "Hour 0: flags created at 0% (validation mode)")
    assert next_transition(PHASE5, phase5_until(0)[0]) == (at(4), "Hour 4: 5% of low-risk agents")
    assert next_transition(PHASE5, phase5_until(12)[0]) == (at(24), "Day 1 checkpoint (24 hours)")
    assert next_transition(PHASE5, phase5_until(48)[0]) == (at(49), "Hour 49: 15%")
    assert next_transition(PHASE5, healthy_phase5()[0]) is None
    assert next_transition(PHASE5, emergency(phase5_until(1)[0], at(1), "x").state) is None


def test_decision_to_dict_is_the_journal_entry():
    """Decision.to_dict has the ISO-8601 UTC time with Z, the action, stage, percentage and reason."""
    _, decisions = healthy_phase5()
    raw = actions(list(decisions), "stage_applied")[1].to_dict()
    assert raw["at"] == "2025-10-23T13:00:00Z"
    assert (raw["action"], raw["stage"], raw["percentage"]) == ("stage_applied", 1, 5)
    assert raw["reason"] == "Hour 4: 5% of low-risk agents fell due"
    assert raw["agents"] == ["Builder", "Deploy", "QA"] and raw["severity"] is None


# -- known bugs -------------------------------------------------------------------------------------


def test_warning_blocks_an_overdue_stage_after_approval():
    """A stage does not apply on an evaluation that shows a warning breach, even after approval."""
    state, _ = phase5_until(50)
    state = approve(PHASE5, state, at(50, 2)).state
    state, decisions = run(PHASE5, state, lambda h: {"p95_latency": 0.25}, frm=at(50, 5), to=at(50, 5))
    assert [d.action for d in decisions] == ["warning"]
    assert state.stage == 2


def test_resume_during_an_ongoing_outage_does_not_advance_blind():
    """Resumed after a failure-limit rollback while Prometheus still fails, the rollout holds instead of advancing."""
    values = during(20, 99, {"p95_latency": OUTAGE})
    state, _ = phase5_until(20.5, values)
    assert state.phase is Phase.ROLLED_BACK and state.percentage == 0
    state = resume(state, at(20, 31), "try again").state
    state, decisions = run(PHASE5, state, values, frm=at(20, 35), to=at(20, 45))
    assert not actions(decisions, "stage_applied")
    assert state.phase is Phase.HOLDING


def test_hold_and_resume_do_not_bypass_the_approval_gate():
    """Holding and resuming at the 48h checkpoint does not stand in for its approval."""
    state, _ = phase5_until(48)
    state = hold(state, at(48, 1), "look closer").state
    state = resume(state, at(48, 2), "done").state
    state, decisions = run(PHASE5, state, frm=at(48, 5), to=at(50))
    assert not actions(decisions, "stage_applied")


def test_on_warning_rollback_is_honoured_or_rejected():
    """A guard configured to roll back on a sustained warning either does so or the plan is refused."""
    try:
        p = plan(on_warning="rollback_stage")
    except PlanError:
        return
    state, decisions = run(p, start(p, T0), during(1.5, 99, {"latency": 0.25}), to=at(1, 40))
    assert [(d.at, d.percentage) for d in actions(decisions, "rollback")] == [(at(1, 35), 0)]


# -- seeded random runs -----------------------------------------------------------------------------

TROUBLE = ("warning", "critical", "emergency", "no_data", "error")


def regime_value(guard, regime: str, rng: random.Random) -> float | None | str:
    """A value for `guard` in `regime`: inside every threshold, past one severity, silent, or failing."""
    if regime == "no_data":
        return None
    if regime == "error":
        return OUTAGE
    ordered = sorted(guard.thresholds.items())  # by severity
    above = guard.direction is Direction.ABOVE
    if regime == "ok":
        edge = ordered[0][1]
        return edge * rng.uniform(0, 0.99) if above else edge + rng.uniform(0.01, 1) * abs(edge)
    wanted = min(Severity[regime.upper()], ordered[-1][0])
    level = next(i for i, (s, _) in enumerate(ordered) if s == wanted)
    lo = ordered[level][1]
    hi = ordered[level + 1][1] if level + 1 < len(ordered) else (lo * 2 if above else lo / 2)
    return lo + (hi - lo) * rng.uniform(0.1, 0.9)


@dataclass(frozen=True)
class Step:
    at: datetime
    source: str  # "decide" or the operator command
    clean: bool  # decide: this evaluation showed no breach and no blindness
    before: RolloutState
    after: RolloutState
    decisions: tuple[Decision, ...]


def is_clean(p: Plan, observations: list[Observation]) -> bool:
    """True when no observation breaches or leaves its guard blind."""
    return all(
        o.outcome is Outcome.PASS or (o.outcome is Outcome.NO_DATA and p.guard(o.guard).no_data is NoData.PASS)
        for o in observations
    )


def operator_move(rng: random.Random, state: RolloutState, now: datetime) -> tuple[str, Transition] | None:
    """A random but plausible operator: approves, resumes after a while, now and then holds."""
    roll = rng.random()
    if state.phase is Phase.AWAITING_APPROVAL:
        if roll < 0.15:
            return "approve", approve(PHASE5, state, now)
        if roll < 0.20:
            return "hold", hold(state, now, "second look")
    elif state.phase is Phase.ROLLED_BACK or (state.phase is Phase.HOLDING and state.held_by_operator):
        if roll < 0.25:
            return "resume", resume(state, now, "looked into it")
    elif state.phase is Phase.RUNNING and roll < 0.004:
        return "hold", hold(state, now, "spot check")
    return None


def random_trace(seed: int) -> list[Step]:
    """One 72-hour phase5 rollout with Markov-switching guard regimes, irregular ticks and an operator."""
    rng = random.Random(seed)
    regimes = {g.name: "ok" for g in PHASE5.guards}
    state, now, steps = start(PHASE5, T0), T0, []
    while now <= at(73):
        move = operator_move(rng, state, now)
        if move:
            steps.append(Step(now, move[0], False, state, move[1].state, move[1].decisions))
            state = move[1].state
        for name, regime in regimes.items():  # trouble starts rarely and lasts ~7 evaluations
            if regime == "ok" and rng.random() < 0.01:
                regimes[name] = rng.choice(TROUBLE)
            elif regime != "ok" and rng.random() < 0.15:
                regimes[name] = "ok"
        values = {g.name: regime_value(g, regimes[g.name], rng) for g in PHASE5.guards}
        observations = observe(PHASE5, values, now)
        t = decide(PHASE5, state, now, observations)
        steps.append(Step(now, "decide", is_clean(PHASE5, observations), state, t.state, t.decisions))
        state = t.state
        for index in awaiting_verdict(state):  # the service judges each report, then decides again
            t = checkpoint_verdict(PHASE5, state, now, index, rng.choice(("GO", "GO", "GO", "HOLD")), "random")
            t = Transition(decide(PHASE5, t.state, now).state, t.decisions + decide(PHASE5, t.state, now).decisions)
            steps.append(Step(now, "verdict", False, state, t.state, t.decisions))
            state = t.state
        gap = rng.choice((5, 5, 15, 30, 60, 60)) if rng.random() > 0.01 else rng.randint(120, 480)
        now += timedelta(minutes=gap)
    return steps


@functools.cache
def random_traces() -> tuple[tuple[Step, ...], ...]:
    """The 200 seeded runs, computed once for the invariant tests below."""
    return tuple(tuple(random_trace(seed)) for seed in range(200))


def expected_percentage(stage: int) -> float:
    """The percentage the plan gives stage index `stage` (0 before the first stage)."""
    return PHASE5.stages[stage].percentage if stage >= 0 else 0.0


def test_random_runs_keep_the_rollout_invariants():
    """Over 200 seeded random runs: percentages match the applied stage, stages apply in order, on time,
    after a clean evaluation, at most once between rollbacks, and never after a rollback without a resume."""
    totals = {"rollback": 0, "resume": 0, "stage_applied": 0, "completed": 0}
    for trace in random_traces():
        applied_since_rollback: set[int] = set()
        stopped_by_rollback = False
        clean_times: list[datetime] = []
        for step in trace:
            assert step.after.percentage == expected_percentage(step.after.stage), step
            if step.source == "decide" and step.clean:
                clean_times.append(step.at)
            if step.source == "resume":
                stopped_by_rollback = False
            for d in step.decisions:
                totals[d.action] = totals.get(d.action, 0) + 1
                assert d.percentage <= max(expected_percentage(d.stage), 0), d
                if d.action == "rollback":
                    applied_since_rollback.clear()
                    stopped_by_rollback = True
                if d.action != "stage_applied":
                    continue
                due = T0 + PHASE5.stages[d.stage].at
                assert not stopped_by_rollback, f"stage {d.stage} applied after a rollback without resume: {d}"
                assert d.stage not in applied_since_rollback, f"stage {d.stage} applied twice: {d}"
                applied_since_rollback.add(d.stage)
                assert d.stage == step.before.stage + 1, d
                assert d.at >= due, d
                assert any(due <= c <= d.at for c in clean_times), f"no clean evaluation since {due}: {d}"
    # the generator must actually exercise rollbacks, resumes and whole rollouts
    assert totals["rollback"] > 300 and totals["resume"] > 300 and totals["completed"] > 50, totals


def test_random_runs_apply_stages_only_on_a_clean_evaluation():
    """Over 200 seeded random runs, every automatic stage_applied comes from an evaluation that was clean."""
    for trace in random_traces():
        for step in trace:
            if step.source == "decide" and any(d.action == "stage_applied" for d in step.decisions):
                assert step.clean, step


def test_random_runs_never_pass_an_approval_checkpoint_unapproved():
    """Over 200 seeded random runs, no stage after the 48h checkpoint applies before that checkpoint is approved."""
    gate = next(i for i, c in enumerate(PHASE5.checkpoints) if c.requires_approval)
    for trace in random_traces():
        for step in trace:
            for d in step.decisions:
                if d.action == "stage_applied" and PHASE5.stages[d.stage].at > PHASE5.checkpoints[gate].at:
                    assert gate in step.before.approved, d


def test_the_rollout_does_not_complete_while_a_guard_breaches():
    """After the last stage and checkpoint, a warning round does not complete the rollout (once
    completed the guards are no longer acted on); the next clean round does."""
    p = plan()
    state, _ = run(p, start(p, T0), to=at(2))
    assert state.stage == 2 and state.phase is Phase.RUNNING
    state, decisions = run(p, state, during(0, 3, {"latency": 0.35}), frm=at(2, 5), to=at(2, 5))
    assert [d.action for d in decisions] == ["warning"] and state.phase is Phase.RUNNING
    state, decisions = run(p, state, during(0, 3, {"latency": 0.35}), frm=at(2, 10), to=at(2, 10))
    assert [d.action for d in decisions] == ["rollback"]  # sustained: it still counts
    state, decisions = run(p, resume(state, at(2, 11)).state, frm=at(2, 15), to=at(2, 25))
    assert [d.action for d in decisions] == ["stage_applied", "completed"]
