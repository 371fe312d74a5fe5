"""What `rolloutctl status` shows: the rollout's position, its next step and every guard.

Pure: (plan, state, now, clock) → a JSON-ready dict. Times an operator acts on are wall
times (`*_at`); the plan's own clock is given too (`plan_*`), as they differ in rehearsals.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from controller.decide import Phase, RolloutState, next_transition
from controller.guards import GuardCounters
from controller.plan import Guard, Plan, format_duration
from controller.plan_clock import PlanClock, iso_z


def rollout_status(
    plan: Plan, state: RolloutState, now: datetime, clock: PlanClock, kill_switch: bool, reports: list[str]
) -> dict[str, Any]:
    nxt = next_transition(plan, state)
    stage = plan.stages[state.stage] if state.stage >= 0 else None
    return {
        "rollout": plan.name,
        "phase": str(state.phase),
        "stage": state.stage,
        "stage_name": stage.label() if stage else None,
        "percentage": state.percentage,
        "agents": list(state.agents),
        "hold_reason": state.hold_reason or None,
        "held_by_operator": state.held_by_operator,  # false while holding: the hold clears itself
        "next_transition": nxt[1] if nxt else None,
        "next_transition_at": iso_z(max(clock.wall_time(nxt[0]), clock.wall_time(now))) if nxt else None,
        "next_transition_plan_at": iso_z(nxt[0]) if nxt else None,
        "next_transition_due": bool(nxt and nxt[0] <= now),
        "emergency": state.phase is Phase.EMERGENCY or kill_switch,
        "kill_switch": kill_switch,
        "started_at": iso_z(state.started_at),
        "plan_now": iso_z(now),
        "plan_hours_elapsed": round((now - state.started_at).total_seconds() / 3600, 3),
        "time_scale": clock.scale,
        "guard_interval": format_duration(plan.guard_interval),
        "last_evaluation_plan_at": iso_z(state.last_evaluation_at) if state.last_evaluation_at else None,
        "rollbacks": state.rollbacks,
        "manual_interventions": state.manual_interventions,
        "checkpoints": [
            {
                "name": cp.name,
                "plan_at": iso_z(state.started_at + cp.at),
                "done": i in state.checkpoints_done,
                "verdict_in": i in state.verdicts,
                "requires_approval": cp.requires_approval,
                "approved": i in state.approved,
                "at_hours": _hours(cp.at),
            }
            for i, cp in enumerate(plan.checkpoints)
        ],
        "guards": [guard_status(g, state.guards.get(g.name)) for g in plan.guards],
        "reports": reports,
        # The plan's shape, so a timeline can be drawn without the plan file (rolloutctl watch, demo).
        "stages": [
            {
                "name": s.label(),
                "plan_at": iso_z(state.started_at + s.at),
                "at_hours": _hours(s.at),
                "percentage": s.percentage,
                "agents": list(s.agents),
                "applied": 0 <= i <= state.stage,
            }
            for i, s in enumerate(plan.stages)
        ],
        "plan_hours": _hours(plan.end),
    }


def _hours(delta: timedelta) -> float:
    return round(delta.total_seconds() / 3600, 6)


def guard_status(guard: Guard, counters: GuardCounters | None) -> dict[str, Any]:
    last = counters.last if counters else None
    severity = last.severity if last else None
    return {
        "name": guard.name,
        "verdict": str(last.outcome) if last else "not_evaluated",
        "severity": str(severity) if severity else None,
        "value": last.value if last else None,
        "threshold": guard.threshold_for(severity),
        "direction": str(guard.direction),
        "thresholds": {str(s): v for s, v in sorted(guard.thresholds.items())},
        "unit": guard.unit,
        "consecutive_breaches": counters.breaches if counters else 0,
        "consecutive_no_data": counters.no_data if counters else 0,
        "consecutive_errors": counters.errors if counters else 0,
        "consecutive_failures": counters.failures(guard) if counters else 0,  # what failure_limit counts
        "detail": last.detail if last and last.detail else None,
        "evaluated_plan_at": iso_z(last.at) if last else None,
    }
