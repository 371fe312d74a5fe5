"""The controller service: observe → decide → persist the intent → apply flags → commit.

`Controller` owns no policy: `decide.py` says what to do, `commit.py` does it durably.
What lives here is the order of things and the I/O around them:

    evaluate()   one guard round: check the clocks, observe every guard at once, decide,
                 commit in a worker thread, judge the reports of checkpoints just passed
                 (measure, write, verdict, decide again), log and notify
    command()    an operator's hold / resume / approve / promote / rollback
    emergency_stop()  the rollout flags off and the kill switch on: in memory at once, then
                 durably (emergency.state, flags.json), then the journal; a full disk
                 delays the durable part, never the emergency

One asyncio lock serialises every change of state; guards are observed outside it, so
an operator's command never waits for a slow Prometheus. The daemon's scheduler and
`rolloutd replay` both drive this same class, so a replay takes the daemon's decisions.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import structlog

from controller import decide as rules
from controller.checkpoints import list_reports, measure_report, write_report
from controller.commit import begin, commit, record_applied, recover
from controller.decide import Phase, RolloutState, Transition
from controller.decision import OPERATOR, ROLLOUTD, Action, Decision
from controller.errors import CommandRefused, PlanMismatch
from controller.flag_effects import flag_changes
from controller.guards import Observation, Outcome, assess
from controller.notify import NOTIFY_KINDS, Event, Notifications, severity_for
from controller.plan import Guard, Plan, Severity
from controller.plan_clock import Clock, JumpDetector, PlanClock
from controller.sources.protocol import GuardSource
from controller.state_db import StateDB, decision_from_json
from controller.status import rollout_status
from flags.errors import StorageError
from flags.store import FlagStore

log = structlog.get_logger("rolloutd.controller")
COMMANDS = ("hold", "resume", "approve", "promote", "rollback")
_KEEP_STAGES = "configure a plan with at least as many stages as the rollout has applied"
_PROBLEM_CHARS = 200  # of an unexpected exception's message, in an observation's detail
# journald priorities for decisions (rollback = err, emergency = crit, holds and warnings = warning);
# a rollback for an emergency-severity breach is crit as well (journal_priority)
PRIORITY = {
    "rollback": "err",
    "emergency": "crit",
    "hold": "warning",
    "warning": "warning",
    "awaiting_approval": "warning",
    "verdict": "notice",
    "stage_applied": "notice",
    "checkpoint": "notice",
    "completed": "notice",
    "resume": "notice",
    "approved": "notice",
    "emergency_cleared": "notice",
}


def journal_priority(decision: Decision) -> str:
    """The syslog priority a decision is logged at: `journalctl -p crit` shows every emergency,
    whether the kill switch or a guard past its emergency threshold pulled the rollout back."""
    if decision.action is Action.ROLLBACK and decision.severity is Severity.EMERGENCY:
        return "crit"
    return PRIORITY.get(decision.action, "info")


class Controller:
    def __init__(
        self,
        plan: Plan,
        db: StateDB,
        store: FlagStore,
        source: GuardSource,
        *,
        wall: Clock,
        state_dir: Path,
        time_scale: float = 1.0,
        notifications: Notifications | None = None,
        jumps: JumpDetector | None = None,
        auto_approve: str | None = None,
    ) -> None:
        self.plan, self._db, self._store, self._source = plan, db, store, source
        self._wall, self._state_dir, self._scale = wall, Path(state_dir), time_scale
        self._notifications = notifications or Notifications()
        self._jumps = jumps
        self._auto_approve = auto_approve  # the demo and replay answer approvals themselves, and say so
        self._lock = anyio.Lock()
        self._state: RolloutState | None = None
        self._unjournaled: list[tuple[Transition, datetime]] = []  # emergencies a full disk kept out of SQLite
        self.journal_error: StorageError | None = None  # why they are not journaled yet
        self.reaction_seconds: list[float] = []  # observed → flags fsynced, for rounds that changed flags
        self.rollback_counts: dict[str, int] = {}  # by trigger (rollout_metrics.py), rebuilt from the journal

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def state(self) -> RolloutState:
        if self._state is None:
            raise RuntimeError("Controller.open() first")
        return self._state

    @property
    def clock(self) -> PlanClock:
        return PlanClock(self.state.started_at, self._scale)

    def plan_now(self) -> datetime:
        return self.clock.plan_time(self._wall())

    async def open(self) -> list[Decision]:
        """Load (or begin) the rollout, finish what a crash interrupted, and return what that took."""
        async with self._lock:
            state = await anyio.to_thread.run_sync(self._db.load)
            if state is not None and state.plan != self.plan.name:
                raise PlanMismatch(
                    f"{self._db.path} holds rollout {state.plan!r}, but the configured plan is {self.plan.name!r}",
                    f"to start a new rollout, stop rolloutd and move {self._db.path.name} aside",
                )
            if state is not None and state.stage >= len(self.plan.stages):
                raise PlanMismatch(
                    f"the rollout is at stage {state.stage}, but the plan has only {len(self.plan.stages)} stages",
                    _KEEP_STAGES,
                )
            wall = self._wall()
            if state is None:
                state = rules.start(self.plan, wall)
                await anyio.to_thread.run_sync(begin, self._db, state, wall)
                log.info(
                    "rollout.started",
                    rollout=self.plan.name,
                    started_at=state.started_at.isoformat(),
                    time_scale=self._scale,
                    priority="notice",
                )
            elif state.plan_digest != self.plan.digest:
                log.warning(
                    "rollout.plan_changed",
                    rollout=self.plan.name,
                    old_digest=state.plan_digest[:12],
                    new_digest=self.plan.digest[:12],
                )
                state = replace(state, plan_digest=self.plan.digest)
            self._state = state
            journal = await anyio.to_thread.run_sync(partial(self._db.journal, limit=1_000_000))
            for entry in journal:
                if entry["action"] == Action.ROLLBACK:
                    self._count_rollback(decision_from_json(entry))
            recovered = await self._recover()
            for decision in recovered:
                log.warning(
                    "rollout.intent_recovered",
                    rollout=self.plan.name,
                    action=decision.action,
                    stage=decision.stage,
                    percentage=decision.percentage,
                    note="applied after a crash between the intent and its commit",
                )
            decisions = list(recovered)
            if self._store.snapshot.kill_switch and state.phase is not Phase.EMERGENCY:
                decisions += await self._emergency("the kill switch was found on at start", ROLLOUTD)
        decisions += await self._judge_checkpoints()
        return decisions

    def set_plan(self, plan: Plan) -> None:
        """Adopt an edited plan (SIGHUP); a plan for another rollout is refused."""
        if plan.name != self.plan.name:
            raise PlanMismatch(
                f"the new plan is {plan.name!r}, the running rollout is {self.plan.name!r}",
                "a new rollout needs a restart with its state moved aside",
            )
        if self._state is not None and self._state.stage >= len(plan.stages):
            raise PlanMismatch(
                f"the rollout is at stage {self._state.stage}; the new plan has {len(plan.stages)} stages", _KEEP_STAGES
            )
        self.plan = plan

    # -- one guard round --------------------------------------------------------------------------

    async def evaluate(self, regular: bool = True) -> list[Decision]:
        """Observe every guard and act on what they say; return the round's decisions.

        `regular=False`: an extra round (a stage or checkpoint fell due between two regular
        ones); its observations count, but never towards a breach or failure budget.
        """
        jump = self._jumps.check() if self._jumps else None
        wall = self._wall()
        now = self.clock.plan_time(wall)
        if jump is not None:
            log.warning("clock.jump", rollout=self.plan.name, detail=jump)
            async with self._lock:
                return await self._commit(rules.clock_jump(self.state, now, jump), now)
        observations = await self._observe(wall, now)
        observed = time.perf_counter()
        async with self._lock:
            self._db.stage_observations(observations)  # the guard history, written in the round's transaction
            if self._store.snapshot.kill_switch and self.state.phase is not Phase.EMERGENCY:
                # someone turned emergency_shutdown on by hand (`rolloutctl flags set`): same as SIGUSR1
                return await self._emergency("the kill switch was turned on outside the controller", ROLLOUTD)
            transition = rules.decide(self.plan, self.state, now, observations, regular=regular)
            decisions = await self._commit(transition, now)
            if any(d.changes_flags for d in decisions):
                self.reaction_seconds.append(time.perf_counter() - observed)
        self._log_observations(observations)
        decisions += await self._judge_checkpoints()
        return decisions

    async def _observe(self, wall: datetime, now: datetime) -> list[Observation]:
        results: list[Observation] = []

        async def one(guard: Guard) -> None:
            results.append(replace(await self._observe_guard(guard, wall), at=now))

        async with anyio.create_task_group() as group:
            for guard in self.plan.guards:
                group.start_soon(one, guard)
        order = {g.name: i for i, g in enumerate(self.plan.guards)}
        return sorted(results, key=lambda o: order[o.guard])

    async def _observe_guard(self, guard: Guard, wall: datetime) -> Observation:
        """The source's observation; should the source raise after all (it must not), that
        guard's observation is an ERROR naming the failure, and the round goes on."""
        try:
            return await self._source.observe(guard, wall)
        except Exception as exc:  # noqa: BLE001  (any failure of a source is an ERROR observation)
            frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            problem = f"{type(exc).__name__}: {str(exc)[:_PROBLEM_CHARS] or 'no details'}"
            log.error(
                "guard.source_failed",
                rollout=self.plan.name,
                guard=guard.name,
                problem=problem,
                where=f"{frame.filename}:{frame.lineno}" if frame else None,
            )
            return assess(guard, None, wall, error=f"the guard's source failed: {problem}")

    def _log_observations(self, observations: list[Observation]) -> None:
        for obs in observations:
            guard = self.plan.guard(obs.guard)
            counters = self.state.guards.get(obs.guard)
            threshold = guard.threshold_for(obs.severity)
            level = {Outcome.PASS: "info", Outcome.BREACH: "warning"}.get(obs.outcome, "warning")
            getattr(log, level)(
                "guard.evaluated",
                rollout=self.plan.name,
                guard=obs.guard,
                query=obs.query,
                value=obs.value,
                threshold=threshold,
                direction=str(guard.direction),
                verdict=str(obs.outcome),
                severity=str(obs.severity) if obs.severity else None,
                detail=obs.detail or None,
                consecutive_breaches=counters.breaches if counters else 0,
                consecutive_no_data=counters.no_data if counters else 0,
                consecutive_errors=counters.errors if counters else 0,
                plan_time=obs.at.isoformat(),
            )

    # -- checkpoints ------------------------------------------------------------------------------

    async def _judge_checkpoints(self) -> list[Decision]:
        """Measure and write the report of every checkpoint still waiting for its verdict, then
        act on the verdicts and decide again (the stage the checkpoint held back may go now)."""
        decisions: list[Decision] = []
        for index in rules.awaiting_verdict(self.state):
            now = self.plan_now()
            journal = await anyio.to_thread.run_sync(partial(self._db.journal, limit=10_000))
            report = await measure_report(self.plan, self.state, index, now, self.clock, self._source, journal)
            path = await anyio.to_thread.run_sync(write_report, self._state_dir, self.plan, index, report)
            log.info(
                "checkpoint.report",
                rollout=self.plan.name,
                checkpoint=self.plan.checkpoints[index].name,
                recommendation=report["recommendation"],
                reason=report["recommendation_reason"],
                file=str(path),
                priority="notice",
            )
            async with self._lock:
                t = rules.checkpoint_verdict(
                    self.plan, self.state, now, index, report["recommendation"], report["recommendation_reason"]
                )
                decisions += await self._commit(t, now, report=str(path))
                decisions += await self._commit(rules.decide(self.plan, self.state, now), now)
        if self._auto_approve and self.state.phase is Phase.AWAITING_APPROVAL:
            decisions += await self.command("approve", reason=self._auto_approve, actor=ROLLOUTD)
        return decisions

    # -- operator commands ----------------------------------------------------------------------

    async def command(
        self,
        name: str,
        *,
        reason: str = "",
        actor: str = OPERATOR,
        to_stage: int | None = None,
        clear_emergency: bool = False,
    ) -> list[Decision]:
        """Run an operator command; raises CommandRefused when it does not apply now.
        `actor` (who asked) is journaled as the decision's actor, beside the reason."""
        if name not in COMMANDS:
            raise CommandRefused(f"unknown command {name!r}; commands: {', '.join(COMMANDS)}")
        async with self._lock:
            now, state = self.plan_now(), self.state
            if name == "hold":
                t = rules.hold(state, now, reason, actor=actor)
            elif name == "resume":
                t = rules.resume(state, now, reason, clear_emergency=clear_emergency, actor=actor)
            elif name == "approve":
                t = rules.approve(self.plan, state, now, reason, actor=actor)
            elif name == "promote":
                t = rules.promote(self.plan, state, now, reason, actor=actor)
            else:
                if to_stage is None:
                    raise CommandRefused("rollback needs a target: --to N (a stage index) or --to 0")
                t = rules.rollback(self.plan, state, now, to_stage, reason, actor=actor)
            return await self._commit(t, now)

    async def emergency_stop(self, actor: str, reason: str) -> list[Decision]:
        self._store.kill()  # before the lock: a round or a command holding it must not delay the kill switch
        async with self._lock:
            return await self._emergency(reason, actor)

    async def _emergency(self, reason: str, actor: str) -> list[Decision]:
        """In memory at once — the kill switch and the plan's flags off, so OFREP answers off and
        retrieval refuses, and the phase EMERGENCY — then durably: emergency.state in place and
        flags.json (the store retries them while the disk refuses), then the journal (written
        by the next commit while SQLite refuses; a restart finds emergency.state meanwhile)."""
        t = rules.emergency(self.state, self.plan_now(), reason, actor=actor)
        decision = t.decisions[0]
        self._store.kill(flag_changes(self.plan, decision, self._store.snapshot.flags))
        self._state = t.state
        await anyio.to_thread.run_sync(
            partial(
                self._store.persist_kill,
                actor=f"rolloutd plan {self.plan.name}",
                reason=f"{decision.action}: {decision.said}",
            )
        )
        self._unjournaled.append((t, decision.at))
        for d in t.decisions:
            self._announce(d)
        try:
            await self._journal_emergencies()
        except StorageError as exc:
            log.critical(
                "emergency.not_journaled",
                rollout=self.plan.name,
                error=str(exc),
                phase="emergency, in memory",
                retry="with the next guard round or command; a restart finds it in emergency.state",
            )
        return list(t.decisions)

    async def _journal_emergencies(self) -> None:
        """Journal the emergencies a refusing disk kept in memory, oldest first; StorageError while it still does."""
        while self._unjournaled:
            transition, at = self._unjournaled[0]
            try:
                await anyio.to_thread.run_sync(record_applied, self._db, self._store, self.plan, transition, at)
            except StorageError as exc:
                self.journal_error = exc
                raise
            self._unjournaled.pop(0)
            if self.journal_error is not None:
                log.warning("emergency.journaled", rollout=self.plan.name, at=at.isoformat(), priority="notice")
        self.journal_error = None

    async def _recover(self) -> list[Decision]:
        """Apply the intents a crash left unapplied. With the kill switch on, a disk that refuses
        them does not stop the start: the emergency supersedes them (record_applied closes them)."""
        try:
            return await anyio.to_thread.run_sync(recover, self._db, self._store, self.plan)
        except StorageError as exc:
            if not self._store.snapshot.kill_switch:
                raise
            log.critical(
                "rollout.recovery_deferred",
                rollout=self.plan.name,
                error=str(exc),
                note="the kill switch is on: the emergency's flags supersede the unapplied intents",
            )
            return []

    # -- committing ---------------------------------------------------------------------------------

    async def _commit(self, transition: Transition, now: datetime, **context: Any) -> list[Decision]:
        """Persist and apply `transition` (in a worker thread: SQLite and the flags fsync), after
        any emergency still waiting for the journal; StorageError when the disk refuses."""
        await self._journal_emergencies()
        await anyio.to_thread.run_sync(
            partial(commit, self._db, self._store, self.plan, transition, now, previous=self._state)
        )
        self._state = transition.state
        for decision in transition.decisions:
            self._announce(decision, **context)
        return list(transition.decisions)

    def _count_rollback(self, decision: Decision) -> None:
        label = decision.trigger.label  # a guard's name, failure_limit, checkpoint or operator
        self.rollback_counts[label] = self.rollback_counts.get(label, 0) + 1

    def _announce(self, decision: Decision, **context: Any) -> None:
        if decision.action is Action.ROLLBACK:
            self._count_rollback(decision)
        fields = {k: v for k, v in decision.to_dict().items() if v not in (None, [], "") and k != "trigger"}
        fields["trigger"] = str(decision.trigger.kind)  # flat for grep: trigger=guard trigger_detail=p95_latency
        if decision.trigger.detail:
            fields["trigger_detail"] = decision.trigger.detail
        priority = journal_priority(decision)
        log.info(
            f"rollout.{decision.action}",
            rollout=self.plan.name,
            priority=priority,
            phase=str(self.state.phase),
            **fields,
            **context,
        )
        if decision.action in NOTIFY_KINDS:
            what = decision.action.replace("_", " ")
            summary = f"{self.plan.name}: {what} at {decision.percentage:g}%: {decision.said}"
            self._notifications.submit(
                Event(
                    kind=decision.action,
                    severity=severity_for(decision.action),
                    rollout=self.plan.name,
                    summary=summary,
                    at=decision.at,
                    fields={**fields, **context},
                )
            )

    # -- what operators see ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return rollout_status(
            self.plan,
            self.state,
            self.plan_now(),
            self.clock,
            self._store.snapshot.kill_switch,
            [p.name for p in self.reports()],
        )

    def reports(self) -> list[Path]:
        return list_reports(self._state_dir)

    def journal(self, limit: int = 100, since_seq: int = 0, before_seq: int = 0) -> list[dict[str, Any]]:
        return self._db.journal(limit=limit, since_seq=since_seq, before_seq=before_seq)

    def observations(self, since_seq: int = 0, limit: int = 1000, guard: str | None = None) -> list[dict[str, Any]]:
        return self._db.observations(since_seq=since_seq, limit=limit, guard=guard)

    def next_wake(self) -> datetime | None:
        """The wall time at which the plan next wants an evaluation (a stage or checkpoint falls due)."""
        nxt = rules.next_transition(self.plan, self.state)
        return self.clock.wall_time(nxt[0]) if nxt else None
