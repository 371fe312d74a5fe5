"""Checkpoint reports: the seeds' fields, a criteria table, and a recommendation that follows from it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.decide import start
from controller.plan_load import load_plan
from controller.report import Measurement, build_report, window_query

PLAN = load_plan(Path(__file__).resolve().parent.parent / "deploy" / "plans" / "phase5.toml")
T0 = datetime(2025, 10, 23, 9, tzinfo=UTC)
AT_24H = T0 + timedelta(hours=24)
HEALTHY = {
    "error_rate": 0.0002,
    "p95_latency": 0.12,
    "test_pass_rate": 98.4,
    "cache_hit_rate": 0.85,
    "retrieval_precision": 0.78,
}
SEED_FIELDS = {
    "deployment_start",
    "checkpoint_time",
    "hours_elapsed",
    "current_rollout_percentage",
    "agents_affected",
    "metrics",
    "issues_detected",
    "rollback_triggered",
    "rollback_count",
    "manual_interventions",
    "next_milestone",
    "recommendation",
}


def report(values: dict[str, float | None], index: int = 0, **state_changes: object) -> dict:
    state = replace(start(PLAN, T0), stage=2, percentage=10.0, agents=PLAN.stages[2].agents, **state_changes)
    measured = {k: Measurement(v, "" if v is not None else "no samples in the window") for k, v in values.items()}
    return build_report(PLAN, state, index, AT_24H, measured, journal=[])


def test_healthy_day_one_is_go_with_every_seed_field() -> None:
    """All guards inside their warning thresholds and no rollbacks: GO, in the seeds' shape."""
    r = report(HEALTHY)
    assert SEED_FIELDS <= set(r)
    assert r["recommendation"] == "GO"
    assert r["hours_elapsed"] == 24.0 and r["current_rollout_percentage"] == 10.0
    assert r["agents_affected"] == ["Builder", "Deploy", "QA", "Support", "Marketing"]
    assert r["deployment_start"] == "2025-10-23T09:00:00Z"
    assert all(c["pass"] for c in r["criteria"])


@pytest.mark.parametrize(
    "guard, value, expected",
    [
        ("p95_latency", 0.25, "HOLD"),  # past warning 0.2 s
        ("p95_latency", 0.35, "NO-GO"),  # past critical 0.3 s
        ("test_pass_rate", 97.0, "HOLD"),  # below warning 98%
        ("test_pass_rate", 94.0, "NO-GO"),  # below critical 95%
        ("error_rate", None, "HOLD"),  # unmeasured: never GO on a guess
    ],
)
def test_recommendation_follows_the_worst_criterion(guard: str, value: float | None, expected: str) -> None:
    """Warning-level misses or missing data hold; critical-level misses are NO-GO."""
    r = report({**HEALTHY, guard: value})
    assert r["recommendation"] == expected
    assert guard in r["recommendation_reason"]
    row = next(c for c in r["criteria"] if c["criterion"] == guard)
    assert row["observed"] == value and row["pass"] is (None if value is None else False)


def test_unmeasured_values_are_null_with_the_reason() -> None:
    """A value that could not be measured is null in metrics and its reason is given."""
    r = report({**HEALTHY, "cache_hit_rate": None})
    assert r["metrics"]["cache_hit_rate"] is None
    assert r["unmeasured"]["cache_hit_rate"] == "no samples in the window"


def test_a_rollback_makes_the_checkpoint_no_go() -> None:
    """The seeds' 'no rollbacks triggered' criterion: one rollback is NO-GO."""
    r = report(HEALTHY, rollbacks=1)
    assert r["recommendation"] == "NO-GO" and r["rollback_triggered"] is True and r["rollback_count"] == 1


def test_day_two_needs_no_manual_interventions_and_approval() -> None:
    """At 48h manual interventions are a criterion and the report says approval is required."""
    r = report(HEALTHY, index=1, manual_interventions=1)
    assert r["approval_required"] is True
    assert r["recommendation"] == "HOLD" and "manual_interventions" in r["recommendation_reason"]


def test_window_query_takes_the_worst_value_for_the_direction() -> None:
    """Latency's worst is its maximum over the window, pass rate's its minimum."""
    assert window_query(PLAN, "p95_latency", 86400).startswith("max_over_time((histogram_quantile(")
    assert window_query(PLAN, "test_pass_rate", 3600) == "min_over_time((min(genesis_regression_pass_rate))[1h:5m])"
