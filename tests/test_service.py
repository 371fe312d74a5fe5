"""The controller service on a simulated clock: a real StateDB and FlagStore in tmp_path,
guards and report queries answered by a scripted GuardSource (tests/support/service_rig.py).

What is proved here is the order of things around `decide`: the rollout starts and
resumes from durable state, stages reach flags.json with their cohort, checkpoint
reports are measured, written and judged (also after a crash between the two), the
emergency stop writes flags before the journal, a wall-clock jump holds, operator
commands apply or are refused with a reason, and decisions reach notifications.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller import decide as rules
from controller.commit import commit
from controller.decide import CommandRefused, Decision, Phase, RolloutState
from controller.guards import assess
from controller.host.replay import SimClock
from controller.plan_clock import JumpDetector
from controller.plan_load import parse_plan
from controller.service import PlanMismatch
from controller.state_db import StateDB
from flags.model import KILL_SWITCH
from flags.store import FlagStore
from tests.support.service_rig import (  # noqa: F401  (rigs is a fixture)
    COMPACT,
    FIRST_COHORT,
    PHASE5,
    SECOND_COHORT,
    SEED_VALUES,
    T0,
    RecordingNotifications,
    actions,
    assert_plan_flags,
    healthy,
    hours,
    read_flags,
    rigs,
)

pytestmark = pytest.mark.anyio

OUTAGE = "cannot connect to http://127.0.0.1:9/api/v1/query: connection refused (is Prometheus running?)"
SEED_KEYS = (
    "p95_latency_ms",
    "p99_latency_ms",
    "cache_hit_rate",
    "retrieval_accuracy_precision_at_10",
    "retrieval_accuracy_recall_at_10",
    "cost_reduction_percentage",
)


class WatchedDB(StateDB):
    """A StateDB that notes, for each journaled transition, what flags.json held at that moment."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.seen: list[tuple[list[str], dict[str, Any]]] = []

    def record(self, state: RolloutState, decisions: tuple[Decision, ...], now: datetime) -> list[int]:
        self.seen.append(([d.action for d in decisions], read_flags(self.path.parent)))
        return super().record(state, decisions, now)


# -- starting and resuming ------------------------------------------------------------------


async def test_open_on_an_empty_state_dir_starts_the_rollout_at_the_clocks_time(rigs) -> None:
    """A first open() begins the rollout at the wall clock's time, durably, with nothing applied yet."""
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    rig = rigs(clock=SimClock(start))
    assert await rig.controller.open() == []
    state = rig.controller.state
    assert (state.plan, state.started_at, state.phase, state.stage) == (PHASE5.name, start, Phase.RUNNING, -1)
    assert rig.db.load() == state, "the new rollout must be in controller.db before open() returns"
    assert rig.controller.plan_now() == start


async def test_a_second_controller_on_the_same_state_dir_resumes_the_rollout(rigs) -> None:
    """A restart continues the stored rollout: same start, same stage, nothing journaled again."""
    first = rigs()
    await first.controller.open()
    await first.at(0, 4)
    before = first.journal()
    first.close()
    second = rigs(clock=SimClock(hours(5)))
    assert await second.controller.open() == []
    state = second.controller.state
    assert (state.started_at, state.stage, state.percentage, state.agents) == (T0, 1, 5.0, tuple(FIRST_COHORT))
    assert second.journal() == before
    assert second.controller.status()["plan_hours_elapsed"] == 5.0


# -- stages ---------------------------------------------------------------------------------


async def test_healthy_rounds_apply_each_stage_at_its_hour_with_its_cohort(rigs) -> None:
    """With healthy guards the 0h, 4h and 12h stages reach flags.json at their hour, and not before."""
    rig = rigs()
    await rig.controller.open()
    assert actions(await rig.at(0)) == ["stage_applied"]
    assert_plan_flags(rig.state_dir, PHASE5, 0.0, [])
    assert actions(await rig.at(3.9)) == [], "the 4h stage must wait for its hour"
    assert actions(await rig.at(4)) == ["stage_applied"]
    assert_plan_flags(rig.state_dir, PHASE5, 5.0, FIRST_COHORT)
    assert actions(await rig.at(8, 11.99)) == []
    assert actions(await rig.at(12)) == ["stage_applied"]
    assert_plan_flags(rig.state_dir, PHASE5, 10.0, SECOND_COHORT)
    applied = [(d["stage"], d["at"], d["status"]) for d in rig.journal() if d["action"] == "stage_applied"]
    assert applied == [
        (0, "2025-10-23T09:00:00Z", "done"),
        (1, "2025-10-23T13:00:00Z", "done"),
        (2, "2025-10-23T21:00:00Z", "done"),
    ]


# -- checkpoints -------------------------------------------------------------------------------


async def test_day_one_checkpoint_writes_the_seeds_report_and_a_go_verdict(rigs) -> None:
    """At 24h the report is written with the seeds' keys, measured values, and a GO verdict journaled."""
    rig = rigs()
    await rig.controller.open()
    await rig.at(0, 4, 12)
    decisions = await rig.at(24)
    assert actions(decisions) == ["checkpoint", "verdict"]
    assert decisions[1].recommendation == "GO" and decisions[1].checkpoint == 0

    path = rig.state_dir / "reports" / "checkpoint-1-day-1-checkpoint-24-hours.json"
    assert rig.controller.reports() == [path]
    report = json.loads(path.read_text())
    assert report["deployment_start"] == "2025-10-23T09:00:00Z"
    assert report["checkpoint_time"] == "2025-10-24T09:00:00Z"
    assert report["hours_elapsed"] == 24.0
    assert report["current_rollout_percentage"] == 10.0
    assert report["agents_affected"] == SECOND_COHORT
    assert set(SEED_KEYS) <= set(report["metrics"])
    assert report["metrics"]["p95_latency_ms"] == SEED_VALUES["p95_latency_ms"]
    assert report["metrics"]["retrieval_accuracy_recall_at_10"] == SEED_VALUES["retrieval_accuracy_recall_at_10"]
    assert report["metrics"]["cost_reduction_percentage"] is None
    assert "cost" in report["unmeasured"]["cost_reduction_percentage"]
    assert (
        report["issues_detected"],
        report["rollback_triggered"],
        report["rollback_count"],
        report["manual_interventions"],
    ) == ([], False, 0, 0)
    assert report["next_milestone"] == PHASE5.checkpoints[0].next_milestone
    assert report["recommendation"] == "GO"
    assert all(c["verdict"] == "GO" for c in report["criteria"]), report["criteria"]

    verdict = [d for d in rig.journal() if d["action"] == "verdict"]
    assert [(v["checkpoint"], v["recommendation"]) for v in verdict] == [(0, "GO")]
    assert rig.controller.state.phase is Phase.RUNNING
    day_one = rig.controller.status()["checkpoints"][0]
    assert (day_one["done"], day_one["verdict_in"]) == (True, True)


async def test_day_one_report_with_prometheus_down_is_hold_and_the_rollout_holds(rigs) -> None:
    """When every report query fails, the report says why for each value, the verdict is HOLD, and the rollout holds."""
    rig = rigs()
    await rig.controller.open()
    await rig.at(0, 4, 12)
    rig.source.report_error = OUTAGE
    decisions = await rig.at(24)
    assert actions(decisions) == ["checkpoint", "verdict", "hold"]
    assert decisions[1].recommendation == "HOLD"

    report = json.loads(rig.controller.reports()[0].read_text())
    assert report["recommendation"] == "HOLD"
    guard_rows = [c for c in report["criteria"] if c["criterion"] in {g.name for g in PHASE5.guards}]
    assert guard_rows and all(c["observed"] is None and c["note"] == OUTAGE for c in guard_rows), guard_rows
    assert all(report["metrics"][k] is None for k in SEED_KEYS)
    assert report["unmeasured"]["p99_latency_ms"] == OUTAGE
    for guard in PHASE5.guards:
        assert guard.name in report["recommendation_reason"]

    state = rig.controller.state
    assert state.phase is Phase.HOLDING and "HOLD" in state.hold_reason and "rolloutctl resume" in state.hold_reason
    assert actions(await rig.at(49, 50)) == [], "a held rollout must not reach the 48h checkpoint's stage"


async def test_a_hold_for_unmeasured_criteria_says_why_in_the_verdict(rigs) -> None:
    """The verdict journaled when Prometheus is down says the criteria could not be measured, and why."""
    rig = rigs()
    await rig.controller.open()
    await rig.at(0, 4, 12)
    rig.source.report_error = OUTAGE
    verdict = (await rig.at(24))[1]
    assert "connection refused" in verdict.reason, verdict.reason
    assert "connection refused" in rig.controller.state.hold_reason


async def test_the_report_lists_every_query_it_ran(rigs) -> None:
    """report["queries"] holds each query the report's values came from, criteria included."""
    rig = rigs()
    await rig.controller.open()
    await rig.at(0, 4, 12, 24)
    report = json.loads(rig.controller.reports()[0].read_text())
    ran = [*report["queries"]["criteria"].values(), *report["queries"]["metrics"].values()]
    assert sorted(set(rig.source.asked)) == sorted(ran)


async def test_a_checkpoint_recorded_before_a_crash_is_judged_on_open_before_the_next_stage(
    rigs, tmp_path: Path
) -> None:
    """A crash after the checkpoint was journaled but before its verdict: the next open() writes
    the report and journals the verdict first, and only then does the stage it held back apply."""
    plan = parse_plan(COMPACT, "compact.toml")
    state_dir = tmp_path / "state"
    store, db = FlagStore.open(state_dir), StateDB(state_dir)
    state, now = rules.start(plan, T0), T0
    while now <= hours(2):  # the old process: observes, decides, commits; never judges
        observations = [assess(g, healthy(plan)[g.name], now) for g in plan.guards]
        transition = rules.decide(plan, state, now, observations)
        commit(db, store, plan, transition, now)
        state, now = transition.state, now + plan.guard_interval
    db.close()
    store.close()
    assert rules.awaiting_verdict(state) == (0,) and state.stage == 1, "the crash must leave a verdict pending"

    rig = rigs(plan=plan, clock=SimClock(hours(2)))
    assert actions(await rig.controller.open()) == ["verdict", "stage_applied"]
    assert actions(rig.journal())[-3:] == ["checkpoint", "verdict", "stage_applied"]
    report = json.loads((state_dir / "reports" / "checkpoint-1-mid-point-review.json").read_text())
    assert report["recommendation"] == "GO"
    assert rig.controller.state.verdicts == (0,)
    assert_plan_flags(state_dir, plan, 50.0, ["Builder", "QA"])


# -- guards --------------------------------------------------------------------------------------


async def test_sustained_critical_breach_rolls_back_one_stage_and_notifies(rigs) -> None:
    """P95 past critical for two checks rolls back to the previous stage's flags, timed, and sends a critical event."""
    notes = RecordingNotifications()
    rig = rigs(notifications=notes)
    await rig.controller.open()
    await rig.at(0, 4, 12)
    reactions = len(rig.controller.reaction_seconds)
    rig.source.guards["p95_latency"] = 0.4
    assert actions(await rig.at(12 + 5 / 60)) == ["warning"], "one breaching check is not yet sustained"
    rolled = await rig.at(12 + 10 / 60)
    assert actions(rolled) == ["rollback"]
    assert (rolled[0].guard, rolled[0].stage, rolled[0].percentage) == ("p95_latency", 1, 5.0)
    assert "p95_latency 0.4 > critical 0.3" in rolled[0].reason

    assert rig.controller.state.phase is Phase.ROLLED_BACK
    assert_plan_flags(rig.state_dir, PHASE5, 5.0, FIRST_COHORT)
    assert len(rig.controller.reaction_seconds) == reactions + 1
    assert 0 <= rig.controller.reaction_seconds[-1] < 5

    rollbacks = [e for e in notes.events if e.kind == "rollback"]
    assert len(rollbacks) == 1
    assert (rollbacks[0].severity, rollbacks[0].rollout) == ("critical", PHASE5.name)
    assert rollbacks[0].at == hours(12 + 10 / 60)
    assert "rollback at 5%" in rollbacks[0].summary
    assert [e.kind for e in notes.events] == ["warning", "rollback"]


# -- emergency --------------------------------------------------------------------------------


async def test_emergency_stop_writes_flags_before_the_journal(rigs) -> None:
    """emergency_stop() turns every plan flag off and the kill switch on before the journal is written."""
    rig = rigs(db=WatchedDB)
    db = rig.db
    await rig.controller.open()
    await rig.at(0, 4)
    decisions = await rig.controller.emergency_stop("alice", "p99 is on fire")
    assert actions(decisions) == ["emergency"]

    seen = dict((tuple(a), flags) for a, flags in db.seen)
    at_journal = seen[("emergency",)]
    assert at_journal[KILL_SWITCH]["enabled"] is True, "the kill switch must be on before the journal row exists"
    assert all(at_journal[name]["enabled"] is False for name in PHASE5.flags)
    # the ordinary path is the other way round (intent, then flags): the watch can tell them apart
    assert seen[("stage_applied",)]["hybrid_rag_enabled"]["rollout_percentage"] == 0.0

    flags = read_flags(rig.state_dir)
    assert flags[KILL_SWITCH]["enabled"] is True
    assert all(flags[name]["enabled"] is False for name in PHASE5.flags)
    last = rig.journal()[-1]
    assert (last["action"], last["status"], last["percentage"]) == ("emergency", "done", 0.0)
    assert (last["reason"], last["actor"], last["trigger"]) == (
        "p99 is on fire",
        "alice",
        {"kind": "emergency", "detail": ""},
    )
    assert rig.controller.state.phase is Phase.EMERGENCY
    assert rig.controller.status()["emergency"] is True


async def test_kill_switch_found_on_at_open_enters_emergency_until_cleared(rigs, tmp_path: Path) -> None:
    """A kill switch set while rolloutd was down puts the rollout in EMERGENCY; only
    `resume --clear-emergency` leaves it, rolled back at 0% with the kill switch off."""
    state_dir = tmp_path / "state"
    with FlagStore.open(state_dir) as store:
        store.set(KILL_SWITCH, enabled=True, actor="oncall", reason="paged at 3am")
    rig = rigs()
    opened = await rig.controller.open()
    assert actions(opened) == ["emergency"] and "kill switch was found on" in opened[0].reason
    assert rig.controller.state.phase is Phase.EMERGENCY
    assert all(read_flags(state_dir)[name]["enabled"] is False for name in PHASE5.flags)
    assert actions(await rig.at(0, 4)) == [], "no stage may apply during an emergency"

    with pytest.raises(CommandRefused, match="--clear-emergency"):
        await rig.controller.command("resume", reason="looks fine")
    cleared = await rig.controller.command("resume", reason="root cause fixed", clear_emergency=True)
    assert actions(cleared) == ["emergency_cleared"]
    state = rig.controller.state
    assert (state.phase, state.stage, state.percentage) == (Phase.ROLLED_BACK, -1, 0.0)
    flags = read_flags(state_dir)
    assert flags[KILL_SWITCH]["enabled"] is False
    assert all(flags[name]["rollout_percentage"] == 0.0 for name in PHASE5.flags)
    assert rig.store.snapshot.kill_switch is False and rig.controller.status()["emergency"] is False


async def test_a_kill_switch_turned_on_by_hand_while_running_is_an_emergency(rigs) -> None:
    """The kill switch set outside the controller (`flags set`) puts the rollout in EMERGENCY at the next
    round, the plan's flags off, and the stages that fall due after it do not apply."""
    rig = rigs()
    await rig.controller.open()
    await rig.at(0)
    rig.store.set(KILL_SWITCH, enabled=True, actor="oncall", reason="flags set by hand")
    found = await rig.at(4)
    assert actions(found) == ["emergency"] and "turned on outside the controller" in found[0].reason
    assert rig.controller.state.phase is Phase.EMERGENCY
    assert all(read_flags(rig.state_dir)[name]["enabled"] is False for name in PHASE5.flags)
    assert actions(await rig.at(12, 24)) == []
    assert rig.controller.state.stage == -1


# -- clock jumps ----------------------------------------------------------------------------


async def test_a_wall_clock_jump_holds_instead_of_applying_the_stages_it_made_due(rigs) -> None:
    """The wall clock leaps 10h while the monotonic clock moves 5 min: hold, naming the jump; resume goes on."""
    clock = SimClock(T0)
    monotonic = [1000.0]
    rig = rigs(clock=clock, jumps=JumpDetector(clock, lambda: monotonic[0]))
    await rig.controller.open()
    assert actions(await rig.at(0)) == ["stage_applied"]

    monotonic[0] += 300
    jumped = await rig.at(10)
    assert actions(jumped) == ["hold"]
    assert "jumped forward by 35700s" in jumped[0].reason and "rolloutctl resume" in jumped[0].reason
    state = rig.controller.state
    assert (state.phase, state.stage) == (Phase.HOLDING, 0), "the 4h stage fell due by the jump and must not apply"
    assert_plan_flags(rig.state_dir, PHASE5, 0.0, [])

    monotonic[0] += 300
    assert actions(await rig.at(10 + 5 / 60)) == [], "the hold is sticky until an operator resumes"
    assert actions(await rig.controller.command("resume", reason="clock checked")) == ["resume"]
    monotonic[0] += 300
    assert actions(await rig.at(10 + 10 / 60)) == ["stage_applied"]
    assert rig.controller.state.stage == 1


# -- operator commands ------------------------------------------------------------------------


async def test_hold_keeps_due_stages_back_and_resume_applies_them(rigs) -> None:
    """An operator's hold stops the 4h stage; after resume the next round applies it."""
    rig = rigs()
    await rig.controller.open()
    await rig.at(0)
    held = await rig.controller.command("hold", reason="waiting for the dashboards", actor="alice")
    assert actions(held) == ["hold"] and (held[0].reason, held[0].actor) == ("waiting for the dashboards", "alice")
    assert rig.controller.state.hold_reason == "operator: alice: waiting for the dashboards"
    assert actions(await rig.at(4, 5)) == []
    assert rig.controller.state.stage == 0
    assert actions(await rig.controller.command("resume", actor="alice")) == ["resume"]
    assert actions(await rig.at(5 + 5 / 60)) == ["stage_applied"]
    assert rig.controller.state.manual_interventions == 2


async def test_approve_releases_the_day_two_checkpoint(rigs) -> None:
    """At 48h the rollout waits for approval; promote and resume are refused, approve lets the 49h stage apply."""
    notes = RecordingNotifications()
    rig = rigs(notifications=notes)
    await rig.controller.open()
    await rig.at(0, 4, 12, 24)
    waiting = await rig.at(48)
    assert actions(waiting) == ["checkpoint", "awaiting_approval", "verdict"]
    assert rig.controller.state.phase is Phase.AWAITING_APPROVAL
    assert "awaiting_approval" in [e.kind for e in notes.events]
    assert actions(await rig.at(49)) == [], "the 49h stage must wait for the approval"

    with pytest.raises(CommandRefused, match="not possible while the rollout is awaiting_approval"):
        await rig.controller.command("promote")
    with pytest.raises(CommandRefused, match="rolloutctl approve"):
        await rig.controller.command("resume")
    approved = await rig.controller.command("approve", reason="stakeholders signed off", actor="bob")
    assert actions(approved) == ["approved"] and approved[0].checkpoint == 1
    assert "stakeholders signed off" in approved[0].reason
    assert actions(await rig.at(49 + 5 / 60)) == ["stage_applied"]
    assert_plan_flags(rig.state_dir, PHASE5, 15.0, SECOND_COHORT)
    with pytest.raises(CommandRefused, match="no checkpoint is waiting for approval: the rollout is running"):
        await rig.controller.command("approve")


async def test_promote_applies_the_next_stage_now(rigs) -> None:
    """promote at 1h applies the 4h stage at once, counted as a manual intervention."""
    rig = rigs()
    await rig.controller.open()
    await rig.at(0)
    rig.clock.now = hours(1)
    promoted = await rig.controller.command("promote", reason="canary looks good")
    assert actions(promoted) == ["stage_applied"] and promoted[0].reason.startswith("promoted to ")
    assert (promoted[0].trigger.kind, promoted[0].trigger.detail) == ("operator", "promote")
    assert_plan_flags(rig.state_dir, PHASE5, 5.0, FIRST_COHORT)
    assert rig.controller.state.manual_interventions == 1
    assert actions(await rig.at(4)) == [], "the promoted stage is not applied a second time"


async def test_rollback_to_a_stage_sets_its_flags_and_waits_for_resume(rigs) -> None:
    """rollback --to 0 from the 12h stage goes to 0% at once; the rollout stays there until resumed."""
    rig = rigs()
    await rig.controller.open()
    await rig.at(0, 4, 12)
    rolled = await rig.controller.command("rollback", reason="bad answers", to_stage=0, actor="carol")
    assert actions(rolled) == ["rollback"] and (rolled[0].reason, rolled[0].actor) == ("bad answers", "carol")
    assert rig.controller.state.hold_reason == "operator: carol: bad answers"
    state = rig.controller.state
    assert (state.phase, state.stage, state.percentage, state.rollbacks) == (Phase.ROLLED_BACK, 0, 0.0, 1)
    assert_plan_flags(rig.state_dir, PHASE5, 0.0, [])
    assert actions(await rig.at(13)) == []
    await rig.controller.command("resume")
    assert actions(await rig.at(13 + 5 / 60)) == ["stage_applied"]


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("rollback", {}, "rollback needs a target: --to N"),
        ("rollback", {"to_stage": 2}, "stage 2 is ahead of the applied stage 1; use `promote`"),
        ("rollback", {"to_stage": 9}, "no stage 9: stages are 0-5"),
        ("resume", {}, "nothing to resume: the rollout is running"),
        ("approve", {}, "no checkpoint is waiting for approval"),
        ("launch", {}, "unknown command 'launch'; commands: hold, resume, approve, promote, rollback"),
    ],
)
async def test_commands_that_do_not_apply_are_refused_with_the_reason(
    rigs, name: str, kwargs: dict, message: str
) -> None:
    """A refused command raises CommandRefused saying why and what to do, and changes nothing."""
    rig = rigs()
    await rig.controller.open()
    await rig.at(0, 4)
    before, journal = rig.controller.state, rig.journal()
    with pytest.raises(CommandRefused) as refused:
        await rig.controller.command(name, reason="r", **kwargs)
    assert message in str(refused.value)
    assert rig.controller.state == before and rig.journal() == journal


async def test_promote_past_the_last_stage_is_refused(rigs) -> None:
    """promote on the last stage says so."""
    plan = parse_plan(COMPACT, "compact.toml")
    rig = rigs(plan=plan)
    await rig.controller.open()
    await rig.at(0)
    await rig.controller.command("promote")
    await rig.controller.command("promote")
    with pytest.raises(CommandRefused, match="the last stage is already applied"):
        await rig.controller.command("promote")


# -- plans ----------------------------------------------------------------------------------


async def test_a_state_dir_of_another_rollout_is_refused(rigs) -> None:
    """open() with a plan of another name than the stored rollout raises PlanMismatch naming both and the remedy."""
    first = rigs()
    await first.controller.open()
    first.close()
    other = rigs(plan=replace(PHASE5, name="phase6_other"))
    with pytest.raises(PlanMismatch) as mismatch:
        await other.controller.open()
    text = str(mismatch.value)
    assert "'phase5_hybrid_rag'" in text and "'phase6_other'" in text and "move controller.db aside" in text


async def test_set_plan_adopts_an_edited_plan_and_refuses_a_foreign_one(rigs) -> None:
    """An edit of the same rollout is adopted; another rollout, or one too short for the applied stage, is not."""
    rig = rigs()
    await rig.controller.open()
    await rig.at(0, 4, 12)
    edited = replace(PHASE5, guard_interval=timedelta(minutes=1), digest="edited")
    rig.controller.set_plan(edited)
    assert rig.controller.plan is edited
    with pytest.raises(PlanMismatch, match="'phase6_other'"):
        rig.controller.set_plan(replace(PHASE5, name="phase6_other"))
    with pytest.raises(PlanMismatch, match="stage 2"):
        rig.controller.set_plan(replace(PHASE5, stages=PHASE5.stages[:2]))
    assert rig.controller.plan is edited


async def test_an_edited_plan_is_adopted_at_open_and_its_digest_recorded(rigs) -> None:
    """open() with the same rollout's edited plan continues it under the new digest."""
    first = rigs()
    await first.controller.open()
    await first.at(0)
    first.close()
    edited = replace(PHASE5, digest="0" * 64)
    second = rigs(plan=edited, clock=SimClock(hours(1)))
    await second.controller.open()
    assert (second.controller.state.plan_digest, second.controller.state.stage) == ("0" * 64, 0)
    await second.at(4)
    assert second.db.load().plan_digest == "0" * 64
