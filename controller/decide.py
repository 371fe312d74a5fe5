"""The rollout's decisions: (plan, state, observations, now) -> (next state, decisions).

Nothing here does I/O, reads a clock or logs. The service around it observes, persists
the intent, applies flags and records completion; every decision carries its reason.

Phases:

    PENDING            the plan is loaded, the rollout has not started
    RUNNING            advancing on schedule while the guards are clean
    HOLDING            not advancing: an operator said hold, the guards are blind, or a
                       checkpoint said HOLD (blindness clears itself; the others need resume)
    AWAITING_APPROVAL  a checkpoint needs an operator's approval before the next stage
    ROLLED_BACK        a guard (or an operator) rolled back; only `resume` moves on
    COMPLETED          every stage applied and every checkpoint passed
    EMERGENCY          the kill switch is on; only `resume --clear-emergency` leaves it

Rules, in the order `decide` applies them:
1. record each observation in its guard's counters (an extra round — one run because a
   stage or checkpoint fell due between two regular rounds — can end a guard's run of
   breaches or failures but never lengthen it: budgets count regular rounds);
2. a breach sustained at critical or emergency, or a guard past the failure limit,
   rolls back as the plan says (and resets the streaks, so a further rollback needs a
   further sustained breach);
3. a warning notifies (once per episode) and, like blindness, keeps the rollout from
   advancing; blindness also puts a RUNNING rollout on an automatic hold;
4. due checkpoints are recorded, in time order, before any later stage, and no stage
   is applied past a checkpoint until its report's verdict is in (`checkpoint_verdict`;
   the service measures the report, then decides again);
5. one due stage is applied, and only if a clean evaluation happened at or after the
   time it fell due — so stages that fell due while the daemon was down wait for the
   first passing evaluation, and none is ever skipped.

Every decision says what caused it and who acted, as data (controller/decision.py).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from controller.decision import OPERATOR, ROLLOUTD, Action, Decision, Trigger, TriggerKind, said
from controller.errors import CommandRefused
from controller.guards import GuardCounters, Observation, Outcome
from controller.plan import Plan, Response, Severity


class Phase(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    HOLDING = "holding"
    AWAITING_APPROVAL = "awaiting_approval"
    ROLLED_BACK = "rolled_back"
    COMPLETED = "completed"
    EMERGENCY = "emergency"

    @property
    def is_terminal(self) -> bool:
        return self is Phase.COMPLETED


@dataclass(frozen=True)
class RolloutState:
    plan: str
    plan_digest: str
    started_at: datetime
    phase: Phase = Phase.RUNNING
    stage: int = -1  # index of the applied stage; -1 before the first
    percentage: float = 0.0
    agents: tuple[str, ...] = ()
    hold_reason: str = ""
    held_by_operator: bool = False
    checkpoints_done: tuple[int, ...] = ()
    verdicts: tuple[int, ...] = ()  # checkpoints whose report has been judged (GO, HOLD or NO-GO)
    approved: tuple[int, ...] = ()
    guards: Mapping[str, GuardCounters] = field(default_factory=dict)
    warned: tuple[str, ...] = ()  # guards whose current warning episode was notified
    rollbacks: int = 0
    manual_interventions: int = 0
    last_clean_at: datetime | None = None
    last_evaluation_at: datetime | None = None


@dataclass(frozen=True)
class Transition:
    state: RolloutState
    decisions: tuple[Decision, ...] = ()


def start(plan: Plan, now: datetime) -> RolloutState:
    """A new rollout of `plan`, starting at the plan's fixed start or `now`."""
    return RolloutState(plan=plan.name, plan_digest=plan.digest, started_at=plan.start or now)


def decide(
    plan: Plan, state: RolloutState, now: datetime, observations: Iterable[Observation] = (), *, regular: bool = True
) -> Transition:
    """The rollout's next step at `now`, given this round's guard observations (if any).

    `regular=False`: the observations come from an extra round (see rule 1).
    """
    observations = tuple(observations)
    if observations:
        state = _record(state, observations, now, regular)
    if state.phase in (Phase.COMPLETED, Phase.EMERGENCY, Phase.PENDING):
        return Transition(state)
    decisions: list[Decision] = []
    if observations:
        state, reacted = _react(plan, state, now)
        decisions += reacted
        if reacted and reacted[-1].action is Action.ROLLBACK:
            return Transition(state, tuple(decisions))
    state, advanced = _advance(plan, state, now)
    return Transition(state, tuple(decisions + advanced))


# -- guards ---------------------------------------------------------------------------------


def _record(state: RolloutState, observations: tuple[Observation, ...], now: datetime, regular: bool) -> RolloutState:
    guards = dict(state.guards)
    for obs in observations:
        guards[obs.guard] = guards.get(obs.guard, GuardCounters()).observe(obs, regular)
    return replace(state, guards=guards, last_evaluation_at=now)


def _react(plan: Plan, state: RolloutState, now: datetime) -> tuple[RolloutState, list[Decision]]:
    rollback = _rollback_trigger(plan, state)
    if rollback is not None:
        state, rolled = _roll_back(plan, state, now, rollback)
        if rolled:
            return state, rolled
        # nothing left to roll back: the warnings and blindness below still apply
    state, decisions = _warnings(plan, state, now)
    blind = [
        (g.name, state.guards[g.name].last)
        for g in plan.guards
        if g.name in state.guards and state.guards[g.name].blind(g)
    ]
    if blind:
        why = "; ".join(
            f"{name}: {obs.outcome if obs else 'no observation'}{' (' + obs.detail + ')' if obs and obs.detail else ''}"
            for name, obs in blind
        )
        if state.phase is Phase.RUNNING:
            reason = f"not advancing while blind: {why}"
            state = replace(state, phase=Phase.HOLDING, hold_reason=reason, held_by_operator=False)
            trigger = Trigger(TriggerKind.BLINDNESS, ",".join(name for name, _ in blind))
            decisions.append(_decision(state, now, Action.HOLD, reason, trigger))
        return state, decisions
    if state.phase is Phase.HOLDING and not state.held_by_operator:  # only automatic holds clear themselves
        state = replace(state, phase=Phase.RUNNING, hold_reason="")
        decisions.append(
            _decision(state, now, Action.RESUME, "every guard reports again", Trigger(TriggerKind.BLINDNESS))
        )
    if not any(_breaching(c) for c in state.guards.values()):
        state = replace(state, last_clean_at=now)
    return state, decisions


@dataclass(frozen=True)
class _Rollback:
    """Why to roll back and how far: what `_roll_back` journals."""

    response: Response
    reason: str
    trigger: Trigger
    severity: Severity | None = None
    guard: str | None = None
    actor: str = ROLLOUTD
    to_stage: int | None = None  # an operator's target; else the response says how far

    @property
    def manual(self) -> bool:
        return self.trigger.kind is TriggerKind.OPERATOR


def _rollback_trigger(plan: Plan, state: RolloutState) -> _Rollback | None:
    """The worst reason to roll back now, if any."""
    worst: _Rollback | None = None
    rank = {Response.NOTIFY: 0, Response.ROLLBACK_STAGE: 1, Response.ROLLBACK_ZERO: 2}
    for guard in plan.guards:
        counters = state.guards.get(guard.name)
        if counters is None:
            continue
        severity = counters.sustained(guard, plan.guard_interval)
        candidate = None
        if severity is not None and guard.responses[severity] is not Response.NOTIFY:
            checks = guard.checks_to_sustain(plan.guard_interval)
            detail = counters.last.detail if counters.last else ""
            candidate = _Rollback(
                guard.responses[severity],
                f"{detail} for {checks} consecutive check(s)",
                Trigger(TriggerKind.GUARD, guard.name),
                severity,
                guard.name,
            )
        elif counters.failures(guard) >= plan.failure_limit:
            kind = "errors" if counters.errors >= plan.failure_limit else "no data"
            reason = (
                f"{guard.name}: {counters.failures(guard)} consecutive failed checks ({kind}) "
                f">= failure_limit {plan.failure_limit}"
            )
            candidate = _Rollback(
                plan.failure_response, reason, Trigger(TriggerKind.FAILURE_LIMIT, guard.name), guard=guard.name
            )
        if (
            candidate
            and candidate.response is not Response.NOTIFY
            and (worst is None or rank[candidate.response] > rank[worst.response])
        ):
            worst = candidate
    return worst


def _warnings(plan: Plan, state: RolloutState, now: datetime) -> tuple[RolloutState, list[Decision]]:
    decisions, warned = [], []
    for guard in plan.guards:
        counters = state.guards.get(guard.name)
        if counters is None or not _breaching(counters):
            continue
        warned.append(guard.name)
        if guard.name not in state.warned:
            obs = counters.last
            decisions.append(
                _decision(
                    state,
                    now,
                    Action.WARNING,
                    obs.detail if obs else guard.name,
                    Trigger(TriggerKind.GUARD, guard.name),
                    severity=obs.severity if obs else None,
                    guard=guard.name,
                )
            )
    return replace(state, warned=tuple(warned)), decisions


def _breaching(counters: GuardCounters) -> bool:
    return counters.last is not None and counters.last.outcome is Outcome.BREACH


# -- moving between stages -----------------------------------------------------------------


def _roll_back(plan: Plan, state: RolloutState, now: datetime, why: _Rollback) -> tuple[RolloutState, list[Decision]]:
    target = why.to_stage if why.to_stage is not None else _rollback_target(plan, state, why.response)
    percentage, agents = _position(plan, target)
    reset = {name: replace(c, streaks={}) for name, c in state.guards.items()}
    if percentage >= state.percentage and not why.manual:
        # Already as far back as this response goes: the breach was notified when it began,
        # and it keeps the rollout from advancing; start counting the next episode afresh.
        return replace(state, guards=reset), []
    state = replace(
        state,
        phase=Phase.ROLLED_BACK,
        stage=target,
        percentage=percentage,
        agents=agents,
        hold_reason=said(why.actor, why.reason, why.manual),
        held_by_operator=False,
        guards=reset,
        rollbacks=state.rollbacks + 1,
        manual_interventions=state.manual_interventions + (1 if why.manual else 0),
        warned=(),
    )
    return state, [
        _decision(
            state, now, Action.ROLLBACK, why.reason, why.trigger, why.actor, severity=why.severity, guard=why.guard
        )
    ]


def _rollback_target(plan: Plan, state: RolloutState, response: Response) -> int:
    if response is Response.ROLLBACK_STAGE:
        return max(-1, state.stage - 1)
    return 0 if plan.stages and plan.stages[0].percentage == 0 else -1


def _position(plan: Plan, stage: int) -> tuple[float, tuple[str, ...]]:
    if stage < 0:
        return 0.0, ()
    return plan.stages[stage].percentage, plan.stages[stage].agents


def _advance(plan: Plan, state: RolloutState, now: datetime) -> tuple[RolloutState, list[Decision]]:
    decisions: list[Decision] = []
    elapsed = now - state.started_at
    while state.phase is Phase.RUNNING:
        cp = _due_checkpoint(plan, state, elapsed)
        nxt = state.stage + 1
        due = plan.stages[nxt] if nxt < len(plan.stages) and plan.stages[nxt].at <= elapsed else None
        if cp is not None and (due is None or plan.checkpoints[cp].at <= due.at):
            state, recorded = _checkpoint(plan, state, now, cp)
            decisions += recorded
            continue
        if due is not None and awaiting_verdict(state):
            break  # the checkpoint's report decides first
        if due is not None:
            unapproved = _unapproved_checkpoint(plan, state, due.at)
            if unapproved is not None:
                state, waiting = _await_approval(plan, state, now, unapproved)
                decisions.append(waiting)
                break
            clean_at = state.last_clean_at if _clean_now(state) else None
            if clean_at is None or clean_at < state.started_at + due.at:
                break  # wait for the latest evaluation to be clean, at or after the stage fell due
            state = _apply_stage(plan, state, nxt)
            label = due.label()
            decisions.append(
                _decision(state, now, Action.STAGE_APPLIED, f"{label} fell due", Trigger(TriggerKind.SCHEDULE, label))
            )
            break  # one stage a round: the next needs its own clean evaluation
        if (
            nxt >= len(plan.stages)
            and len(state.checkpoints_done) == len(plan.checkpoints)
            and not awaiting_verdict(state)
            and _clean_now(state)
        ):  # never while a guard breaches or is blind
            state = replace(state, phase=Phase.COMPLETED, hold_reason="")
            decisions.append(
                _decision(
                    state,
                    now,
                    Action.COMPLETED,
                    "every stage applied and every checkpoint passed",
                    Trigger(TriggerKind.SCHEDULE),
                )
            )
        break
    return state, decisions


def _clean_now(state: RolloutState) -> bool:
    """Whether the latest evaluation was clean (no breach, nobody blind)."""
    return state.last_clean_at is not None and state.last_clean_at == state.last_evaluation_at


def awaiting_verdict(state: RolloutState) -> tuple[int, ...]:
    """Recorded checkpoints whose report has not been judged yet."""
    return tuple(i for i in state.checkpoints_done if i not in state.verdicts)


def _unapproved_checkpoint(plan: Plan, state: RolloutState, before: timedelta) -> int | None:
    """A passed checkpoint that gates `before` and still lacks its approval (hold+resume must not skip it)."""
    for i in state.checkpoints_done:
        if plan.checkpoints[i].requires_approval and i not in state.approved and plan.checkpoints[i].at <= before:
            return i
    return None


def _due_checkpoint(plan: Plan, state: RolloutState, elapsed: timedelta) -> int | None:
    for i, cp in enumerate(plan.checkpoints):
        if i not in state.checkpoints_done and cp.at <= elapsed:
            return i
    return None


def _checkpoint(plan: Plan, state: RolloutState, now: datetime, index: int) -> tuple[RolloutState, list[Decision]]:
    cp = plan.checkpoints[index]
    state = replace(state, checkpoints_done=state.checkpoints_done + (index,))
    decisions = [
        _decision(state, now, Action.CHECKPOINT, cp.name, Trigger(TriggerKind.SCHEDULE, cp.name), checkpoint=index)
    ]
    if cp.requires_approval and index not in state.approved:
        state, waiting = _await_approval(plan, state, now, index)
        decisions.append(waiting)
    return state, decisions


def _await_approval(plan: Plan, state: RolloutState, now: datetime, index: int) -> tuple[RolloutState, Decision]:
    cp = plan.checkpoints[index]
    reason = f"{cp.name} needs an operator's approval (`rolloutctl approve`)"
    state = replace(state, phase=Phase.AWAITING_APPROVAL, hold_reason=reason)
    return state, _decision(
        state, now, Action.AWAITING_APPROVAL, reason, Trigger(TriggerKind.CHECKPOINT, cp.name), checkpoint=index
    )


def _apply_stage(plan: Plan, state: RolloutState, index: int) -> RolloutState:
    stage = plan.stages[index]
    return replace(state, stage=index, percentage=stage.percentage, agents=stage.agents)


def checkpoint_verdict(
    plan: Plan, state: RolloutState, now: datetime, index: int, recommendation: str, reason: str
) -> Transition:
    """Act on a checkpoint report's recommendation: GO goes on, HOLD holds, NO-GO rolls back to 0%.

    The verdict itself is journaled (action `verdict`), then what it does.
    """
    if index in state.verdicts:
        return Transition(state)  # judged already (a report re-measured after a crash changes nothing)
    name = plan.checkpoints[index].name
    trigger = Trigger(TriggerKind.CHECKPOINT, name)
    state = replace(state, verdicts=state.verdicts + (index,))
    verdict = _decision(
        state,
        now,
        Action.VERDICT,
        f"{name}: {recommendation} ({reason})",
        trigger,
        checkpoint=index,
        recommendation=recommendation,
    )
    if recommendation == "GO" or state.phase in (Phase.EMERGENCY, Phase.COMPLETED):
        return Transition(state, (verdict,))
    if recommendation == "NO-GO":
        why = _Rollback(Response.ROLLBACK_ZERO, f"checkpoint {name}: NO-GO ({reason})", trigger)
        state, decisions = _roll_back(plan, state, now, why)
        return Transition(state, (verdict, *decisions))
    hold = f"checkpoint {name}: HOLD ({reason}); `rolloutctl resume` when satisfied"
    if state.phase is Phase.AWAITING_APPROVAL:
        return Transition(replace(state, hold_reason=hold), (verdict,))
    state = replace(state, phase=Phase.HOLDING, hold_reason=hold, held_by_operator=True)
    return Transition(state, (verdict, _decision(state, now, Action.HOLD, hold, trigger, checkpoint=index)))


# -- operator commands ------------------------------------------------------------------------
# `actor`: who asked (the admin API's `actor`); it is journaled beside the reason, never in it.


def hold(state: RolloutState, now: datetime, reason: str, *, actor: str = OPERATOR) -> Transition:
    _refuse_in(state, Phase.EMERGENCY, Phase.COMPLETED)
    state = replace(
        state,
        phase=Phase.HOLDING,
        hold_reason=said(actor, reason, True),
        held_by_operator=True,
        manual_interventions=state.manual_interventions + 1,
    )
    return Transition(state, (_decision(state, now, Action.HOLD, reason, _command("hold"), actor),))


def resume(
    state: RolloutState, now: datetime, reason: str = "", clear_emergency: bool = False, *, actor: str = OPERATOR
) -> Transition:
    if state.phase is Phase.EMERGENCY:
        if not clear_emergency:
            raise CommandRefused("the emergency shutdown is on; `rolloutctl resume --clear-emergency` clears it")
        state = replace(
            state,
            phase=Phase.ROLLED_BACK,
            hold_reason="emergency cleared; flags stay at 0% until resumed",
            stage=-1,
            percentage=0.0,
            agents=(),
            manual_interventions=state.manual_interventions + 1,
        )
        return Transition(
            state,
            (
                _decision(
                    state,
                    now,
                    Action.EMERGENCY_CLEARED,
                    reason or "emergency cleared",
                    _command("clear_emergency"),
                    actor,
                ),
            ),
        )
    if state.phase is Phase.AWAITING_APPROVAL:
        raise CommandRefused("the rollout waits for a checkpoint approval; use `rolloutctl approve`")
    if state.phase not in (Phase.HOLDING, Phase.ROLLED_BACK):
        raise CommandRefused(f"nothing to resume: the rollout is {state.phase}")
    state = replace(
        state,
        phase=Phase.RUNNING,
        hold_reason="",
        held_by_operator=False,
        manual_interventions=state.manual_interventions + 1,
    )
    return Transition(state, (_decision(state, now, Action.RESUME, reason or "resumed", _command("resume"), actor),))


def approve(plan: Plan, state: RolloutState, now: datetime, reason: str = "", *, actor: str = OPERATOR) -> Transition:
    if state.phase is not Phase.AWAITING_APPROVAL:
        raise CommandRefused(f"no checkpoint is waiting for approval: the rollout is {state.phase}")
    waiting = next(i for i in reversed(state.checkpoints_done) if plan.checkpoints[i].requires_approval)
    state = replace(state, phase=Phase.RUNNING, hold_reason="", approved=state.approved + (waiting,))
    text = f"{plan.checkpoints[waiting].name} approved" + (f": {reason}" if reason else "")
    return Transition(
        state, (_decision(state, now, Action.APPROVED, text, _command("approve"), actor, checkpoint=waiting),)
    )


def promote(plan: Plan, state: RolloutState, now: datetime, reason: str = "", *, actor: str = OPERATOR) -> Transition:
    _refuse_in(state, Phase.EMERGENCY, Phase.COMPLETED, Phase.AWAITING_APPROVAL, Phase.PENDING)
    nxt = state.stage + 1
    if nxt >= len(plan.stages):
        raise CommandRefused("the last stage is already applied")
    state = replace(
        _apply_stage(plan, state, nxt),
        phase=Phase.RUNNING,
        hold_reason="",
        held_by_operator=False,
        manual_interventions=state.manual_interventions + 1,
    )
    text = f"promoted to {plan.stages[nxt].label()}" + (f": {reason}" if reason else "")
    return Transition(state, (_decision(state, now, Action.STAGE_APPLIED, text, _command("promote"), actor),))


def rollback(
    plan: Plan, state: RolloutState, now: datetime, to_stage: int, reason: str, *, actor: str = OPERATOR
) -> Transition:
    _refuse_in(state, Phase.EMERGENCY)
    if not -1 <= to_stage < len(plan.stages):
        raise CommandRefused(f"no stage {to_stage}: stages are 0-{len(plan.stages) - 1}")
    if to_stage > state.stage:
        raise CommandRefused(f"stage {to_stage} is ahead of the applied stage {state.stage}; use `promote` to advance")
    why = _Rollback(Response.ROLLBACK_STAGE, reason, _command("rollback"), actor=actor, to_stage=to_stage)
    state, decisions = _roll_back(plan, state, now, why)
    return Transition(state, tuple(decisions))


def clock_jump(state: RolloutState, now: datetime, reason: str) -> Transition:
    """The wall clock moved unlike the monotonic clock: hold until an operator has looked.

    Plan time is read from the wall clock, so a jump could make stages fall due (or
    checkpoints pass) that nobody waited for. The hold is sticky like an operator's,
    but it is not counted as a manual intervention.
    """
    advancing = state.phase is Phase.RUNNING or (state.phase is Phase.HOLDING and not state.held_by_operator)
    if not advancing:
        return Transition(state)  # nothing would advance by itself anyway
    state = replace(state, phase=Phase.HOLDING, hold_reason=reason, held_by_operator=True)
    return Transition(state, (_decision(state, now, Action.HOLD, reason, Trigger(TriggerKind.CLOCK_JUMP)),))


def emergency(state: RolloutState, now: datetime, reason: str, *, actor: str = ROLLOUTD) -> Transition:
    """The kill switch: every flag off. `actor`: who pulled it ("signal:SIGUSR1", an operator's name)."""
    state = replace(
        state, phase=Phase.EMERGENCY, stage=-1, percentage=0.0, agents=(), hold_reason=said(actor, reason, False)
    )
    return Transition(state, (_decision(state, now, Action.EMERGENCY, reason, Trigger(TriggerKind.EMERGENCY), actor),))


def _refuse_in(state: RolloutState, *phases: Phase) -> None:
    if state.phase in phases:
        raise CommandRefused(f"not possible while the rollout is {state.phase}")


def _command(name: str) -> Trigger:
    return Trigger(TriggerKind.OPERATOR, name)


def _decision(
    state: RolloutState,
    now: datetime,
    action: Action,
    reason: str,
    trigger: Trigger,
    actor: str = ROLLOUTD,
    **extra: Any,
) -> Decision:
    return Decision(
        at=now,
        action=action,
        stage=state.stage,
        percentage=state.percentage,
        agents=state.agents,
        reason=reason,
        trigger=trigger,
        actor=actor,
        **extra,
    )


def next_transition(plan: Plan, state: RolloutState) -> tuple[datetime, str] | None:
    """When the plan next wants something, and what: the next due stage or checkpoint."""
    if state.phase in (Phase.COMPLETED, Phase.EMERGENCY):
        return None
    events = [
        (state.started_at + cp.at, cp.name) for i, cp in enumerate(plan.checkpoints) if i not in state.checkpoints_done
    ]
    if state.stage + 1 < len(plan.stages):
        stage = plan.stages[state.stage + 1]
        events.append((state.started_at + stage.at, stage.label()))
    return min(events) if events else None
