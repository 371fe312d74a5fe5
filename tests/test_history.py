"""Backfilled history answers the plan's guard queries, at past instants, as the scenario says.

The guard queries come from deploy/plans/phase5.toml itself, so these tests also show the
history fits the plan the replay tests will run.
"""

from __future__ import annotations

import tomllib
from itertools import pairwise

import pytest

from tests.support.history import (
    GAP,
    HEALTHY,
    P95_BREACH_AT_30H,
    HistoryServers,
    Scenario,
    bucket_quantile,
    generate,
    healthy,
    latency_cdf,
)
from tests.support.realservers import REPO_ROOT, PrometheusServer

PLAN = REPO_ROOT / "deploy" / "plans" / "phase5.toml"
GUARDS = {
    guard["name"]: guard["query"].replace("{{window}}", guard["window"])
    for guard in tomllib.loads(PLAN.read_text())["guards"]
}
# A short scenario with every guard signal at a breaching level from hour 1: it checks
# the with_* helpers and backfills in a fraction of a second.
DEGRADED = (
    healthy(hours=2)
    .with_error_ratio(0.007, from_hour=1)
    .with_hit_ratio(0.25, from_hour=1)
    .with_pass_rate(93.0, from_hour=1)
    .with_precision(0.45, from_hour=1)
    .with_p95(0.6, from_hour=1)
)


def value_at(server: PrometheusServer, guard: str, scenario: Scenario, hour: float) -> float | None:
    """The guard's single value at plan hour `hour`, or None for an empty vector."""
    result = server.query(GUARDS[guard], at=scenario.at(hour))
    if not result:
        return None
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def test_generated_counters_are_monotonic_and_histograms_cumulative() -> None:
    """Every counter only grows, buckets never shrink with `le`, and _count is the +Inf bucket."""
    scenario = healthy(hours=3).with_p95(0.45, from_hour=1)
    scenario = scenario.with_error_ratio(0.02, from_hour=2).with_gap(1.5, 2)
    history = generate(scenario)
    assert all(a < b for a, b in pairwise(history.times))
    counters = [s for _, kind, series in history.families if kind != "gauge" for s in series]
    assert len(counters) == 17
    for series in counters:
        assert len(series.values) == len(history.times)
        assert all(a <= b for a, b in pairwise(series.values)), series.name
    buckets = [s.values for s in history.series_of("hybrid_rag_retrieval_latency_seconds_bucket")]
    for row in zip(*buckets, strict=False):
        assert all(a <= b for a, b in pairwise(row))
    assert buckets[-1] == history.series("hybrid_rag_retrieval_latency_seconds_count").values


def test_generated_history_leaves_gaps_empty_and_starts_before_hour_zero() -> None:
    """No timestamp falls in a gap, and samples begin 15 minutes before hour 0 for full windows."""
    scenario = healthy(hours=3).with_gap(1.5, 2)
    times = generate(scenario).times
    gap_start, gap_end = (int(scenario.at(h).timestamp()) for h in (1.5, 2))
    assert not [t for t in times if gap_start <= t < gap_end]
    assert gap_start - 15 in times and gap_end in times
    assert times[0] == int(scenario.start.timestamp()) - 15 * 60
    assert times[-1] == int(scenario.end.timestamp())


@pytest.mark.parametrize("p95", [0.12, 0.45, 0.6, 2.0])
def test_latency_buckets_interpolate_to_the_requested_p95(p95: float) -> None:
    """histogram_quantile's interpolation over the generated bucket fractions gives the p95."""
    cdf = latency_cdf(p95)
    assert all(a <= b for a, b in pairwise(cdf)) and cdf[-1] == 1.0
    assert bucket_quantile(0.95, cdf) == pytest.approx(p95, rel=1e-9)


def test_scenario_rejects_what_prometheus_could_not_show() -> None:
    """A naive start, an unmeasurable p95 and a ratio above 1 are refused when building."""
    with pytest.raises(ValueError, match="aware UTC"):
        Scenario(start=HEALTHY.start.replace(tzinfo=None))
    with pytest.raises(ValueError, match="measurable"):
        HEALTHY.with_p95(3.0)
    with pytest.raises(ValueError, match="out of range"):
        HEALTHY.with_hit_ratio(1.5)


def test_history_p95_is_healthy_then_critical_after_the_breach(
    history_prometheus: HistoryServers,
) -> None:
    """The plan's p95 query gives 0.12 s at hour 20, and 0.45 s (critical, not emergency) at 31."""
    healthy_p95 = value_at(history_prometheus(HEALTHY), "p95_latency", HEALTHY, 20)
    assert healthy_p95 == pytest.approx(0.12, rel=0.02)
    assert healthy_p95 < 0.2
    breach = history_prometheus(P95_BREACH_AT_30H)
    assert value_at(breach, "p95_latency", P95_BREACH_AT_30H, 29.9) == pytest.approx(0.12, rel=0.02)
    breach_p95 = value_at(breach, "p95_latency", P95_BREACH_AT_30H, 31)
    assert 0.3 < breach_p95 < 0.5
    assert breach_p95 == pytest.approx(0.45, rel=0.02)


@pytest.mark.parametrize(("scenario", "hour"), [(HEALTHY, 20), (DEGRADED, 1.5)], ids=["healthy", "degraded"])
def test_history_guard_values_match_the_scenario(
    history_prometheus: HistoryServers, scenario: Scenario, hour: float
) -> None:
    """Each of the plan's guard queries evaluates, at a past instant, to the configured value."""
    server = history_prometheus(scenario)
    expected = {
        "error_rate": scenario.error_ratio(hour),
        "p95_latency": scenario.p95_seconds(hour),
        "test_pass_rate": scenario.pass_rate_percent(hour),
        "cache_hit_rate": scenario.hit_ratio(hour),
        "retrieval_precision": scenario.precision_at_10(hour),
    }
    observed = {guard: value_at(server, guard, scenario, hour) for guard in expected}
    assert observed == pytest.approx(expected, rel=0.1)
    assert observed["test_pass_rate"] == expected["test_pass_rate"]  # gauges come back exact
    assert observed["retrieval_precision"] == expected["retrieval_precision"]


def test_history_serves_the_report_signals(history_prometheus: HistoryServers) -> None:
    """The checkpoint report's p99, recall and top-3 accuracy queries answer from the history."""
    server = history_prometheus(HEALTHY)
    at = HEALTHY.at(24)
    p99 = server.query(
        "histogram_quantile(0.99, sum by (le) (rate(hybrid_rag_retrieval_latency_seconds_bucket[5m])))", at=at
    )
    assert 0.12 < float(p99[0]["value"][1]) < 0.3
    for name, expected in [
        ("hybrid_rag_recall_at_10", HEALTHY.recall_at_10(24)),
        ("hybrid_rag_top3_accuracy_percent", HEALTHY.top3_accuracy_percent(24)),
    ]:
        [sample] = server.query(f"min({name})", at=at)
        assert float(sample["value"][1]) == expected


def test_history_gap_is_no_data_then_data_again(history_prometheus: HistoryServers) -> None:
    """Every guard query is empty from the first 5-minute tick into the gap, and answers after."""
    server = history_prometheus(GAP)
    for guard in GUARDS:
        # No staleness markers in backfilled data: the gap's first instant still sees the
        # last samples; the next replay tick does not.
        assert value_at(server, guard, GAP, 10) is not None, guard
        assert value_at(server, guard, GAP, 10 + 5 / 60) is None, guard
        assert value_at(server, guard, GAP, 12) is None, guard
        assert value_at(server, guard, GAP, 15) is not None, guard
    assert value_at(server, "p95_latency", GAP, 15) == pytest.approx(0.12, rel=0.02)


def test_history_servers_are_shared_per_scenario(history_prometheus: HistoryServers) -> None:
    """An equal scenario gets the same running server, and a stopped one is started again."""
    server = history_prometheus(HEALTHY)
    assert history_prometheus(healthy()) is server
    server.stop()
    assert history_prometheus(HEALTHY) is server and server.running
    assert value_at(server, "test_pass_rate", HEALTHY, 40) == HEALTHY.pass_rate_percent(40)
