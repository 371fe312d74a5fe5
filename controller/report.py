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

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from controller.decide import RolloutState
from controller.decision import entry_said
from controller.plan import Direction, Plan, Severity, format_duration
from controller.plan_clock import iso_z


@dataclass(frozen=True)
class Measurement:
    """The worst value of a guard's query over the checkpoint window, or why there is none."""

    value: float | None
    reason: str = ""  # why value is None (e.g. "Prometheus unreachable", "no samples")
    query: str | None = None


# The seeds' report metrics (their key → PromQL over the checkpoint's period `{{window}}`),
# read from the metrics rolloutd exports. Ratios are 0-1; test_pass_rate is a percentage,
# as the seeds' exporter publishes it. `None`: rolloutd cannot measure it, said in the report.
SEED_METRICS: dict[str, str | None] = {
    "test_pass_rate": "min(min_over_time(genesis_regression_pass_rate[{{window}}]))",
    "error_rate": "(sum(increase(hybrid_rag_errors_total[{{window}}])) or vector(0))"
    " / sum(increase(hybrid_rag_queries_total[{{window}}]))",
    "p95_latency_ms": "1000 * histogram_quantile(0.95, sum by (le) "
    "(increase(hybrid_rag_retrieval_latency_seconds_bucket[{{window}}])))",
    "p99_latency_ms": "1000 * histogram_quantile(0.99, sum by (le) "
    "(increase(hybrid_rag_retrieval_latency_seconds_bucket[{{window}}])))",
    "cache_hit_rate": "sum(increase(redis_cache_hits_total[{{window}}])) / (sum(increase(redis_cache_hits_total"
    "[{{window}}])) + sum(increase(redis_cache_misses_total[{{window}}])))",
    "retrieval_accuracy_precision_at_10": "min(min_over_time(hybrid_rag_precision_at_10[{{window}}]))",
    "retrieval_accuracy_recall_at_10": "min(min_over_time(hybrid_rag_recall_at_10[{{window}}]))",
    "cost_reduction_percentage": None,
}
UNMEASURABLE = {
    "cost_reduction_percentage": "rolloutd exports no cost signal; measure it from the provider's billing data",
}


def seed_metric_query(key: str, window_seconds: float) -> str | None:
    template = SEED_METRICS[key]
    if template is None:
        return None
    return template.replace("{{window}}", format_duration(timedelta(seconds=max(60, int(window_seconds)))))


def build_report(
    plan: Plan,
    state: RolloutState,
    index: int,
    now: datetime,
    measurements: Mapping[str, Measurement],
    journal: list[dict[str, Any]],
    metrics: Mapping[str, Measurement] | None = None,
) -> dict[str, Any]:
    """The checkpoint's report. `measurements`: each guard's worst value over the period
    (the criteria); `metrics`: the seeds' metrics by their keys (default: the guards')."""
    checkpoint = plan.checkpoints[index]
    criteria = [_guard_criterion(plan, name, measurements.get(name)) for name in checkpoint.criteria]
    criteria.append(_count_criterion("rollbacks", state.rollbacks, checkpoint.max_rollbacks, "NO-GO"))
    if checkpoint.max_manual_interventions is not None:
        criteria.append(
            _count_criterion(
                "manual_interventions", state.manual_interventions, checkpoint.max_manual_interventions, "HOLD"
            )
        )
    recommendation, why = recommend(criteria)
    shown = metrics if metrics is not None else measurements
    return {
        "checkpoint": checkpoint.name,
        "deployment_start": iso_z(state.started_at),
        "checkpoint_time": iso_z(now),
        "hours_elapsed": round((now - state.started_at).total_seconds() / 3600, 2),
        "current_rollout_percentage": state.percentage,
        "agents_affected": list(state.agents),
        "metrics": {name: m.value for name, m in shown.items()},
        "unmeasured": {name: m.reason for name, m in shown.items() if m.value is None},  # criteria: see their notes
        "issues_detected": [
            f"{d['at']} {d['action']}: {entry_said(d)}"
            for d in journal
            if d["action"] in ("warning", "rollback", "hold", "emergency")
        ],
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
        deciding = [
            c["criterion"] + (f" unmeasured: {c['note']}" if c["observed"] is None and c.get("note") else "")
            for c in criteria
            if c["verdict"] == verdict
        ]
        if deciding:
            return verdict, "; ".join(deciding)
    return "GO", "every criterion measured and passed"


def _guard_criterion(plan: Plan, name: str, measured: Measurement | None) -> dict[str, Any]:
    guard = plan.guard(name)
    threshold = guard.threshold_for(None)
    sign = "<=" if guard.direction is Direction.ABOVE else ">="
    row: dict[str, Any] = {"criterion": name, "threshold": f"{sign} {threshold:g}"}
    if measured is None or measured.value is None:
        reason = measured.reason if measured else "not measured"
        return {**row, "observed": None, "pass": None, "verdict": "HOLD", "note": reason}
    severity = guard.severity_of(measured.value)
    verdict = "GO" if severity is None else ("HOLD" if severity is Severity.WARNING else "NO-GO")
    return {
        **row,
        "observed": measured.value,
        "pass": severity is None,
        "verdict": verdict,
        "note": f"worst value {measured.value:.6g}" + (f" is past {severity}" if severity else ""),
    }


def _count_criterion(name: str, observed: int, limit: int, failing: str) -> dict[str, Any]:
    passed = observed <= limit
    return {
        "criterion": name,
        "observed": observed,
        "threshold": f"<= {limit}",
        "pass": passed,
        "verdict": "GO" if passed else failing,
        "note": "",
    }


def window_query(plan: Plan, name: str, window_seconds: float, step_seconds: float | None = None) -> str | None:
    """The guard's worst value over the window as PromQL: a subquery stepping at the guard
    interval (or `step_seconds`, the interval in wall time when rehearsing at a time_scale)."""
    guard = plan.guard(name)
    query = guard.resolved_query()
    if query is None:
        return None
    fn = "max_over_time" if guard.direction is Direction.ABOVE else "min_over_time"
    window = format_duration(timedelta(seconds=max(1, int(window_seconds))))
    step = plan.guard_interval if step_seconds is None else timedelta(seconds=max(1, int(step_seconds)))
    return f"{fn}(({query})[{window}:{format_duration(step)}])"
