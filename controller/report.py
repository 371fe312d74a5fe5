"""Checkpoint reports: the seeds' JSON shape, every value measured or null with a reason.

`build_report` is pure: the service measures (Prometheus, or built-in signals) and
passes `measurements`; the journal supplies rollbacks, interventions and issues. The
go/no-go table judges each criterion — a guard at its warning threshold over the
checkpoint's window, the rollback count, the manual interventions — and the
recommendation follows from the table:

    NO-GO   a guard past its critical threshold, or more rollbacks than allowed
    HOLD    a guard past its warning threshold, too many interventions, or anything unmeasured
    GO      every criterion measured and passed
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping

from controller.decide import RolloutState
from controller.plan import Direction, Plan, Severity, format_duration


@dataclass(frozen=True)
class Measurement:
    """The worst value of a guard's query over the checkpoint window, or why there is none."""

    value: float | None
    reason: str = ""          # why value is None (e.g. "Prometheus unreachable", "no samples")
    query: str | None = None


def build_report(plan: Plan, state: RolloutState, index: int, now: datetime,
                 measurements: Mapping[str, Measurement], journal: list[dict[str, Any]]) -> dict[str, Any]:
    checkpoint = plan.checkpoints[index]
    criteria = [_guard_criterion(plan, name, measurements.get(name)) for name in checkpoint.criteria]
    criteria.append(_count_criterion("rollbacks", state.rollbacks, checkpoint.max_rollbacks, "NO-GO"))
    if checkpoint.max_manual_interventions is not None:
        criteria.append(_count_criterion("manual_interventions", state.manual_interventions,
                                         checkpoint.max_manual_interventions, "HOLD"))
    recommendation, why = recommend(criteria)
    return {
        "checkpoint": checkpoint.name,
        "deployment_start": _iso(state.started_at),
        "checkpoint_time": _iso(now),
        "hours_elapsed": round((now - state.started_at).total_seconds() / 3600, 2),
        "current_rollout_percentage": state.percentage,
        "agents_affected": list(state.agents),
        "metrics": {name: m.value for name, m in measurements.items()},
        "unmeasured": {name: m.reason for name, m in measurements.items() if m.value is None},
        "issues_detected": [f"{d['at']} {d['action']}: {d['reason']}" for d in journal
                            if d["action"] in ("warning", "rollback", "hold", "emergency")],
        "rollback_triggered": state.rollbacks > 0,
        "rollback_count": state.rollbacks,
        "manual_interventions": state.manual_interventions,
        "criteria": criteria,
        "next_milestone": checkpoint.next_milestone,
        "recommendation": recommendation,
        "recommendation_reason": why,
        "approval_required": checkpoint.requires_approval,
    }


def recommend(criteria: list[dict[str, Any]]) -> tuple[str, str]:
    """GO / NO-GO / HOLD from the criteria table, with the criteria that decided it."""
    for verdict in ("NO-GO", "HOLD"):
        deciding = [c["criterion"] for c in criteria if c["verdict"] == verdict]
        if deciding:
            return verdict, ", ".join(deciding)
    return "GO", "every criterion measured and passed"


def _guard_criterion(plan: Plan, name: str, measured: Measurement | None) -> dict[str, Any]:
    guard = plan.guard(name)
    threshold = guard.thresholds.get(Severity.WARNING, min(guard.thresholds.values()))
    sign = "<=" if guard.direction is Direction.ABOVE else ">="
    row: dict[str, Any] = {"criterion": name, "threshold": f"{sign} {threshold:g}"}
    if measured is None or measured.value is None:
        reason = measured.reason if measured else "not measured"
        return {**row, "observed": None, "pass": None, "verdict": "HOLD", "note": reason}
    severity = guard.severity_of(measured.value)
    verdict = "GO" if severity is None else ("HOLD" if severity is Severity.WARNING else "NO-GO")
    return {**row, "observed": measured.value, "pass": severity is None, "verdict": verdict,
            "note": f"worst value {measured.value:.6g}" + (f" is past {severity}" if severity else "")}


def _count_criterion(name: str, observed: int, limit: int, failing: str) -> dict[str, Any]:
    passed = observed <= limit
    return {"criterion": name, "observed": observed, "threshold": f"<= {limit}",
            "pass": passed, "verdict": "GO" if passed else failing, "note": ""}


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def window_query(plan: Plan, name: str, window_seconds: float) -> str | None:
    """The guard's worst value over the window as PromQL (a subquery at the guard interval)."""
    guard = plan.guard(name)
    query = guard.resolved_query()
    if query is None:
        return None
    fn = "max_over_time" if guard.direction is Direction.ABOVE else "min_over_time"
    window = format_duration(timedelta(seconds=int(window_seconds)))
    return f"{fn}(({query})[{window}:{format_duration(plan.guard_interval)}])"
