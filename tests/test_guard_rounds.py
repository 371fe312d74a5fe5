"""Which evaluations count, and that a round is never lost: budgets ("sustained for N
checks", `failure_limit`) count regular rounds, not the extra round the schedule runs when
a stage or checkpoint falls due (issue 11, item 8); a guard source that raises gives that
guard an ERROR observation instead of dropping the round (item 9).

The plan here is tests.support.plans' compact plan: 5m interval, failure_limit 3, stages at 0h (5%
here), 1h, 2h, one guard `latency` (critical 0.3, sustained over two checks). Regular rounds run
two minutes off the hour (0h02, 0h07, ...), as a daemon started at a random moment does,
so the 1h stage falls due between two of them and gets its own extra round.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import anyio
import pytest

from controller.decide import Phase, RolloutState, decide, start
from controller.guards import Observation, assess
from controller.host.replay import SimClock
from controller.plan import Guard, Plan
from controller.schedule import Schedule
from controller.sources.prometheus import PrometheusSource
from tests.support.plans import COMPACT_STAGES, compact_plan, stage
from tests.support.service_rig import T0, ScriptedSource, actions, hours, rigs  # noqa: F401  (rigs: fixture)
from tests.test_prometheus_guards import canned_server, deep_json, http_response

# the first stage at 5%, so a rollback to 0% is a change to see
PLAN = compact_plan(stages=(stage(0, 5, ["Builder"]), *COMPACT_STAGES[1:]))
OUTAGE = "cannot connect to http://127.0.0.1:9/api/v1/query: connection refused (is Prometheus running?)"
STEP = 30.0  # seconds: a generous bound on anything here, which never waits on the wall clock


def minute(m: float) -> datetime:
    return T0 + timedelta(minutes=m)


def observed(value: float | str, at: datetime) -> list[Observation]:
    guard = PLAN.guard("latency")
    return [assess(guard, None, at, error=value) if isinstance(value, str) else assess(guard, value, at)]


def healthy_until(m: float) -> RolloutState:
    """The rollout after clean regular rounds at 0h02, 0h07, ... up to minute `m`."""
    state = start(PLAN, T0)
    for at in range(2, int(m) + 1, 5):
        state = decide(PLAN, state, minute(at), observed(0.1, minute(at))).state
    return state


# -- decide ----------------------------------------------------------------------------------------


def test_an_extra_round_during_an_outage_does_not_spend_the_failure_budget():
    """Errors from 0h52 with the 1h stage's extra round among them roll back at the third regular round, 1h02."""
    state = healthy_until(47)
    rounds = [(52, True), (57, True), (60, False), (62, True)]
    decisions = []
    for m, regular in rounds:
        t = decide(PLAN, state, minute(m), observed(OUTAGE, minute(m)), regular=regular)
        state, decisions = t.state, decisions + [(m, d) for d in t.decisions]
    assert [(m, d.action) for m, d in decisions] == [(52, "hold"), (62, "rollback")]
    assert "latency: 3 consecutive failed checks (errors) >= failure_limit 3" in decisions[-1][1].reason


def test_an_extra_round_is_still_seen_while_it_counts_for_nothing():
    """The extra round's error is the guard's latest observation (status shows it) and holds, but adds no failure."""
    state = healthy_until(57)
    t = decide(PLAN, state, minute(60), observed(OUTAGE, minute(60)), regular=False)
    counters = t.state.guards["latency"]
    assert (counters.errors, counters.last.detail) == (0, OUTAGE)
    assert [d.action for d in t.decisions] == ["hold"] and t.state.phase is Phase.HOLDING


def test_a_clean_extra_round_ends_an_outage_and_applies_the_due_stage():
    """Two regular errors, then a clean extra round at 1h: the failure run ends and the 1h stage applies."""
    state = healthy_until(47)
    for m in (52, 57):
        state = decide(PLAN, state, minute(m), observed(OUTAGE, minute(m))).state
    t = decide(PLAN, state, minute(60), observed(0.1, minute(60)), regular=False)
    assert [d.action for d in t.decisions] == ["resume", "stage_applied"]
    assert t.state.guards["latency"].errors == 0 and t.state.stage == 1


def test_an_extra_round_does_not_make_a_breach_sustained():
    """A critical breach seen at 0h57 and in the 1h extra round is sustained only at the 1h02 regular round."""
    state = healthy_until(52)
    t = decide(PLAN, state, minute(57), observed(0.4, minute(57)))
    t = decide(PLAN, t.state, minute(60), observed(0.4, minute(60)), regular=False)
    assert "rollback" not in [d.action for d in t.decisions] and t.state.guards["latency"].breaches == 1
    t = decide(PLAN, t.state, minute(62), observed(0.4, minute(62)))
    assert [d.action for d in t.decisions] == ["rollback"]


# -- through the Controller and its Schedule --------------------------------------------------------


class GatedSource(ScriptedSource):
    """A ScriptedSource whose observe() waits for `gate` while it is set up (so a round can be held open)."""

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        self.gate: anyio.Event | None = None
        self.entered = anyio.Event()
        self.rounds = 0

    async def observe(self, guard: Guard, at: datetime) -> Observation:
        self.rounds += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        return await super().observe(guard, at)


class RaisingSource(ScriptedSource):
    """A ScriptedSource that raises what it is given instead of observing, as a buggy source might."""

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        self.error: Exception | None = None

    async def observe(self, guard: Guard, at: datetime) -> Observation:
        if self.error is not None:
            raise self.error
        return await super().observe(guard, at)


async def regular(schedule: Schedule, clock: SimClock, m: float) -> None:
    clock.now = minute(m)
    with anyio.fail_after(STEP):
        await schedule.regular_round()


@pytest.mark.anyio
async def test_the_transition_job_is_an_extra_round_and_does_not_hasten_the_failure_limit(rigs) -> None:
    """Through Schedule and Controller: errors from 0h52, the 1h transition job runs, and the rollback is at 1h02."""
    rig = rigs(plan=PLAN, source=ScriptedSource(PLAN))
    await rig.controller.open()
    schedule = Schedule(rig.controller, 1.0, wall=rig.clock)
    schedule._scheduler.start(paused=True)  # a real job store to look into; nothing fires by itself
    for m in range(2, 48, 5):
        await regular(schedule, rig.clock, m)
    assert rig.controller.state.stage == 0
    rig.source.guards["latency"] = OUTAGE
    await regular(schedule, rig.clock, 52)
    await regular(schedule, rig.clock, 57)
    job = schedule._scheduler.get_job("transition")
    assert job.func == schedule.transition_round and job.trigger.run_date == hours(1)
    rig.clock.now = hours(1)
    with anyio.fail_after(STEP):
        await job.func()
    assert rig.controller.state.phase is Phase.HOLDING, "the extra round is the third error, not the third check"
    await regular(schedule, rig.clock, 62)
    state = rig.controller.state
    assert (state.phase, state.percentage) == (Phase.ROLLED_BACK, 0.0)
    (roll,) = [d for d in rig.journal() if d["action"] == "rollback"]
    assert roll["at"] == "2025-10-23T10:02:00Z" and "3 consecutive failed checks" in roll["reason"]
    assert schedule.evaluations == 14 and schedule.skipped == 0
    await schedule.stop()


@pytest.mark.anyio
async def test_a_regular_round_that_fires_during_an_extra_round_runs_right_after_it(rigs) -> None:
    """A regular round due while the transition round runs is not lost: it runs next, and counts."""
    source = GatedSource(PLAN)
    rig = rigs(plan=PLAN, source=source)
    await rig.controller.open()
    schedule = Schedule(rig.controller, 1.0, wall=rig.clock)
    await regular(schedule, rig.clock, 57)
    source.guards["latency"] = OUTAGE
    source.gate, source.entered = anyio.Event(), anyio.Event()
    rig.clock.now = hours(1)
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as group:
            group.start_soon(schedule.transition_round)
            await source.entered.wait()
            await schedule.regular_round()  # fires while the extra round observes
            assert schedule.skipped == 1
            source.gate.set()
    assert (schedule.evaluations, source.rounds) == (3, 3)
    assert rig.controller.state.guards["latency"].errors == 1, "the owed regular round counted, the extra did not"


@pytest.mark.anyio
async def test_stop_waits_for_the_evaluation_in_progress(rigs) -> None:
    """stop() returns once the round in progress has finished (it waits on an event, bounded)."""
    source = GatedSource(PLAN)
    source.gate = anyio.Event()
    rig = rigs(plan=PLAN, source=source)
    await rig.controller.open()
    schedule = Schedule(rig.controller, 1.0, wall=rig.clock)
    rig.clock.now = minute(2)
    stopped: list[int] = []

    async def stop() -> None:
        await schedule.stop()
        stopped.append(schedule.evaluations)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as group:
            group.start_soon(schedule.regular_round)
            await source.entered.wait()
            group.start_soon(stop)
            await anyio.wait_all_tasks_blocked()
            assert stopped == [], "stop() must wait for the round in progress"
            source.gate.set()
    assert stopped == [1]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "error",
    [
        RecursionError("maximum recursion depth exceeded while decoding a JSON array"),
        KeyError("latency"),
        RuntimeError(""),
    ],
    ids=["recursion", "key-error", "no-message"],
)
async def test_a_source_that_raises_is_an_error_observation_not_a_lost_round(rigs, error: Exception) -> None:
    """Whatever a guard source raises, the round goes on: that guard is ERROR, the rollout holds, status shows it."""
    source = RaisingSource(PLAN)
    rig = rigs(plan=PLAN, source=source)
    await rig.controller.open()
    await rig.at(0)
    source.error = error
    assert actions(await rig.at(5 / 60)) == ["hold"]
    (guard,) = rig.controller.status()["guards"]
    assert (guard["verdict"], guard["consecutive_failures"]) == ("error", 1)
    obs = rig.controller.observations()[-1]
    assert obs["outcome"] == "error"
    assert obs["detail"].startswith(f"the guard's source failed: {type(error).__name__}: "), obs["detail"]
    assert "Traceback" not in obs["detail"] and len(obs["detail"]) < 300


@pytest.mark.anyio
async def test_prometheus_answering_json_too_deep_to_parse_holds_and_status_says_why(rigs) -> None:
    """A real HTTP server answering 100k-deep JSON: the round is not dropped, the guard is ERROR, the rollout holds."""
    answer = http_response("200 OK", "application/json", deep_json(100_000))
    async with canned_server(answer) as (url, _), PrometheusSource.build_client(url, timeout=5.0) as client:
        rig = rigs(plan=PLAN, source=PrometheusSource(client))
        await rig.controller.open()
        with anyio.fail_after(STEP):
            decisions = await rig.at(0)
    assert actions(decisions) == ["hold"]
    status = rig.controller.status()
    (guard,) = status["guards"]
    assert (status["phase"], guard["verdict"], guard["consecutive_failures"]) == ("holding", "error", 1)
    assert "JSON nested too deeply to read" in rig.controller.observations()[-1]["detail"]
