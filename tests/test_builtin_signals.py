"""Built-in guard signals: the daemon's own measurements, read as Prometheus would read them.

The arithmetic is checked against a real Prometheus scraping the same RetrievalMetrics
(quantiles and ratios agree), then the sliding windows in plan time, the verdicts the
controller's `assess` gives them, report measurements, pushed values going stale, and the
admin route that receives pushes.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, start_http_server
from starlette.applications import Starlette

from controller.guards import Outcome
from controller.host.signals_api import signal_routes
from controller.plan import Severity
from controller.plan_load import PlanError, load_plan
from controller.sources.builtin_signals import (
    BuiltinSource,
    History,
    Sample,
    Sampler,
    histogram_quantile,
    missing_builtins,
    window_value,
)
from retrieval.metrics import LATENCY_BUCKETS, RetrievalMetrics
from retrieval.quality import Scores
from retrieval.validation import ValidationGauges
from tests.support.daemon_harness import free_port
from tests.support.realservers import PrometheusServer

REPO = Path(__file__).resolve().parent.parent
PHASE5 = REPO / "deploy" / "plans" / "phase5.toml"
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class WallClock:
    """An aware UTC clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def record(
    metrics: RetrievalMetrics, latencies: list[float], *, errors: int = 0, hits: int = 0, misses: int = 0
) -> None:
    for seconds in latencies:
        metrics.queries.labels("hybrid").inc()
        metrics.latency.labels("hybrid", "miss").observe(seconds)
    for _ in range(errors):
        metrics.queries.labels("vector").inc()
        metrics.errors.labels("vector", "no_source").inc()
    for _ in range(hits):
        metrics.cache_outcome("hit")
    for _ in range(misses):
        metrics.cache_outcome("miss")


# --- agreement with Prometheus -----------------------------------------------------------------


DISTRIBUTIONS = {
    "fast": [random.Random(1).uniform(0.0005, 0.004) for _ in range(400)],
    "slow tail": [random.Random(2).expovariate(1 / 0.08) for _ in range(300)],
    "past the last bucket": [0.01] * 10 + [30.0] * 90,
    "one sample": [0.27],
}


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_quantiles_and_ratios_agree_with_prometheus(name: str, tmp_path: Path) -> None:
    """The same histogram and counters, scraped by a real Prometheus: histogram_quantile and the
    ratios the guards' PromQL compute equal the built-in ones."""
    registry = CollectorRegistry()
    metrics = RetrievalMetrics(registry)
    record(metrics, DISTRIBUTIONS[name], errors=7, hits=31, misses=12)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    prometheus = PrometheusServer(tmp_path)
    try:
        prometheus.start(targets=[f"127.0.0.1:{port}"], scrape_interval="1s")
        prometheus.wait_for_query("hybrid_rag_queries_total")
        sample = Sampler(metrics, None, WallClock()).sample(max_age=60)
        empty = Sample(t=0, buckets=(0.0,) * (len(LATENCY_BUCKETS) + 1))
        for signal, promql in {
            "p95_latency_seconds": "histogram_quantile(0.95, sum by (le) (hybrid_rag_retrieval_latency_seconds_bucket))",
            "p99_latency_seconds": "histogram_quantile(0.99, sum by (le) (hybrid_rag_retrieval_latency_seconds_bucket))",
            "error_ratio": "sum(hybrid_rag_errors_total) / sum(hybrid_rag_queries_total)",
            "cache_hit_ratio": "sum(redis_cache_hits_total) / (sum(redis_cache_hits_total) + "
            "sum(redis_cache_misses_total))",
        }.items():
            expected = float(prometheus.query(promql)[0]["value"][1])
            assert window_value(signal, sample, empty) == pytest.approx(expected, rel=1e-9), signal
    finally:
        prometheus.stop()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_histogram_quantile_edges() -> None:
    assert histogram_quantile(0.95, ()) is None
    assert histogram_quantile(0.95, (0.0,) * (len(LATENCY_BUCKETS) + 1)) is None
    counts = tuple([0.0] * 3 + [10.0] * (len(LATENCY_BUCKETS) - 2))  # all ten in the (0.001, 0.0025] bucket
    assert histogram_quantile(0.5, counts) == pytest.approx(0.001 + 0.0015 * 0.5)


# --- windows in plan time --------------------------------------------------------------------


@pytest.fixture
def rig() -> tuple[BuiltinSource, RetrievalMetrics, WallClock]:
    clock = WallClock()
    metrics = RetrievalMetrics(CollectorRegistry())
    source = BuiltinSource(Sampler(metrics, None, clock), load_plan(PHASE5), time_scale=60.0)
    return source, metrics, clock


@pytest.mark.anyio
async def test_a_guard_reads_only_its_window(rig: tuple[BuiltinSource, RetrievalMetrics, WallClock]) -> None:
    """At 60x a 5-minute window is 5 wall seconds: slow queries 6 s ago are out of it."""
    source, metrics, clock = rig
    p95 = load_plan(PHASE5).guard("p95_latency")
    record(metrics, [0.45] * 50)  # a slow spell: past the critical 300 ms
    clock.advance(1)
    observation = await source.observe(p95, clock())
    assert observation.outcome is Outcome.BREACH and observation.severity is Severity.CRITICAL
    assert observation.query == "builtin:p95_latency_seconds[5m]"
    clock.advance(6)
    source.take_sample()  # the sampler's tick (its loop is not running here)
    record(metrics, [0.02] * 50)  # then fast again, within the window
    clock.advance(1)
    observation = await source.observe(p95, clock())
    assert observation.outcome is Outcome.PASS and observation.value < 0.05


@pytest.mark.anyio
async def test_no_traffic_in_the_window_is_no_data(rig: tuple[BuiltinSource, RetrievalMetrics, WallClock]) -> None:
    source, metrics, clock = rig
    plan = load_plan(PHASE5)
    record(metrics, [0.01] * 20, hits=5, misses=5)
    clock.advance(10)  # two windows later, nothing new
    for name in ("p95_latency", "error_rate", "cache_hit_rate"):
        observation = await source.observe(plan.guard(name), clock())
        assert observation.outcome is Outcome.NO_DATA, name


@pytest.mark.anyio
async def test_error_ratio_and_cache_hit_ratio_verdicts(rig: tuple[BuiltinSource, RetrievalMetrics, WallClock]) -> None:
    source, metrics, clock = rig
    plan = load_plan(PHASE5)
    clock.advance(10)
    source.take_sample()
    record(metrics, [0.01] * 196, errors=4, hits=20, misses=80)  # 2% errors, 20% hits
    clock.advance(1)
    errors = await source.observe(plan.guard("error_rate"), clock())
    assert errors.value == pytest.approx(0.02) and errors.severity is Severity.EMERGENCY
    cache = await source.observe(plan.guard("cache_hit_rate"), clock())
    assert cache.value == pytest.approx(0.2) and cache.severity is Severity.CRITICAL


@pytest.mark.anyio
async def test_validation_gauges_follow_their_flag(rig: tuple[BuiltinSource, RetrievalMetrics, WallClock]) -> None:
    """precision_at_10 is the validation gauge while it is exported, and no data when it is not."""
    _, metrics, clock = rig
    flag = {"on": True}
    gauges = ValidationGauges(CollectorRegistry(), validation_on=lambda: flag["on"])

    gauges.publish_scores({"hybrid": Scores(0.42, 0.9, 0.8, 0.5, 0.6)}, at=0.0)
    source = BuiltinSource(Sampler(metrics, gauges, clock), load_plan(PHASE5), time_scale=60.0)
    precision = load_plan(PHASE5).guard("retrieval_precision")
    observation = await source.observe(precision, clock())
    assert observation.value == pytest.approx(0.42) and observation.severity is Severity.CRITICAL
    flag["on"] = False
    assert (await source.observe(precision, clock())).outcome is Outcome.NO_DATA


@pytest.mark.anyio
async def test_a_pushed_value_goes_stale_after_the_window(
    rig: tuple[BuiltinSource, RetrievalMetrics, WallClock],
) -> None:
    source, _, clock = rig
    guard = load_plan(PHASE5).guard("test_pass_rate")
    assert (await source.observe(guard, clock())).outcome is Outcome.NO_DATA
    source.push("regression_pass_rate", 96.5)
    observation = await source.observe(guard, clock())
    assert observation.value == 96.5 and observation.severity is Severity.WARNING
    clock.advance(14)
    assert (await source.observe(guard, clock())).value == 96.5
    clock.advance(2)  # 16 s = 16 plan minutes at 60x: past three 5m windows
    assert (await source.observe(guard, clock())).outcome is Outcome.NO_DATA
    with pytest.raises(KeyError, match="pushable signals: regression_pass_rate"):
        source.push("precision_at_10", 0.9)
    with pytest.raises(ValueError, match="finite"):
        source.push("regression_pass_rate", math.nan)


@pytest.mark.anyio
async def test_report_measures_the_worst_over_the_period(
    rig: tuple[BuiltinSource, RetrievalMetrics, WallClock],
) -> None:
    """A checkpoint criterion is the worst windowed value through the period, as the PromQL
    subquery `max_over_time((q)[period:step])` gives; seed metrics cover the whole period."""
    source, metrics, clock = rig
    plan = load_plan(PHASE5)
    for minute in range(60):  # one plan hour = 60 wall seconds at 60x
        record(metrics, [0.35 if minute == 30 else 0.01] * 10, hits=7, misses=3)
        clock.advance(1)
        source.take_sample()
    worst = await source.criterion(plan, plan.guard("p95_latency"), window=60, step=5, at=clock())
    assert 0.3 < worst.value <= 0.4 and worst.query.startswith("builtin:p95_latency_seconds")
    hit = await source.seed_metric("cache_hit_rate", window=60, at=clock())
    assert hit.value == pytest.approx(0.7)
    p95_ms = await source.seed_metric("p95_latency_ms", window=60, at=clock())
    assert 1 < p95_ms.value < 10  # one slow minute in sixty is below the 95th percentile
    cost = await source.seed_metric("cost_reduction_percentage", window=60, at=clock())
    assert cost.value is None and "billing" in cost.reason
    precision = await source.seed_metric("retrieval_accuracy_precision_at_10", window=60, at=clock())
    assert precision.value is None and precision.reason


def test_history_keeps_its_retention_and_order() -> None:
    history = History(retention=10.0)
    for t in range(1000):
        history.add(Sample(t=float(t)))
    assert len(history) < 200 and history.first_from(0.0).t >= 1000 - 10 - 200
    history.add(Sample(t=5.0))  # a clock stepping back is skipped
    assert history.at(2000.0).t == 999.0
    assert history.at(-1.0) is None
    assert [s.t for s in history.between(995, 997)] == [995.0, 996.0, 997.0]


# --- plans and the admin route -----------------------------------------------------------------


def test_phase5_names_a_builtin_for_every_guard() -> None:
    assert missing_builtins(load_plan(PHASE5)) == []


def test_an_unknown_builtin_is_a_plan_error(tmp_path: Path) -> None:
    text = PHASE5.read_text().replace('builtin = "error_ratio"', 'builtin = "eror_ratio"')
    path = tmp_path / "plan.toml"
    path.write_text(text)
    with pytest.raises(PlanError, match=r"unknown built-in signal 'eror_ratio' \(did you mean 'error_ratio'\?\)"):
        load_plan(path)


@pytest.mark.anyio
async def test_push_route(rig: tuple[BuiltinSource, RetrievalMetrics, WallClock]) -> None:

    source, _, _ = rig

    def client(builtin: BuiltinSource | None) -> httpx.AsyncClient:
        app = Starlette(routes=signal_routes(builtin))
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rolloutd")

    async with client(source) as c:
        ok = await c.post("/v1/signals/regression_pass_rate", json={"value": 99.1})
        assert ok.status_code == 200 and ok.json() == {"signal": "regression_pass_rate", "value": 99.1}
        assert source.take_sample().gauges["regression_pass_rate"] == 99.1
        assert (await c.post("/v1/signals/regression_pass_rate", json={"value": "99"})).status_code == 400
        assert (await c.post("/v1/signals/regression_pass_rate", content=b"{")).status_code == 400
        refused = await c.post("/v1/signals/error_ratio", json={"value": 1})
        assert refused.status_code == 404 and "measured by the daemon" in refused.json()["error"]
        assert (await c.post("/v1/signals/nope", json={"value": 1})).status_code == 404
    async with client(None) as prometheus_daemon:
        assert (await prometheus_daemon.post("/v1/signals/regression_pass_rate", json={"value": 1})).status_code == 409


@pytest.mark.anyio
async def test_a_criterion_is_the_worst_the_guard_observed(
    rig: tuple[BuiltinSource, RetrievalMetrics, WallClock],
) -> None:
    """With evaluations in the period, the report's criterion is the worst of them: the value
    the journal's warnings were about, not a sparser window between two evaluations."""
    source, metrics, clock = rig
    plan = load_plan(PHASE5)
    guard = plan.guard("cache_hit_rate")
    seen = []
    for hits in (9, 6, 8):  # 90%, 60%, 80% hit ratio in three 5 s windows
        source.take_sample()
        record(metrics, [], hits=hits, misses=10 - hits)
        clock.advance(5)
        seen.append((await source.observe(guard, clock())).value)
    assert seen == [pytest.approx(0.9), pytest.approx(0.6), pytest.approx(0.8)]
    measured = await source.criterion(plan, guard, window=15, step=5, at=clock())
    assert measured.value == pytest.approx(0.6) and "worst of 3 evaluations" in measured.query
    earlier = await source.criterion(plan, guard, window=4, step=5, at=clock() - timedelta(seconds=20))
    assert "worst over" in earlier.query  # no evaluation in that period: stepped through the history


@pytest.mark.anyio
async def test_min_samples_makes_a_tiny_window_no_data(rig: tuple[BuiltinSource, RetrievalMetrics, WallClock]) -> None:
    """phase5's traffic guards need 10 events: two misses in a window are no data, not a 0% hit ratio."""
    source, metrics, clock = rig
    guard = load_plan(PHASE5).guard("cache_hit_rate")
    assert guard.min_samples == 10
    source.take_sample()
    record(metrics, [0.01, 0.02], misses=2)
    clock.advance(1)
    observation = await source.observe(guard, clock())
    assert observation.outcome is Outcome.NO_DATA and "fewer than min_samples 10" in observation.detail
    source.take_sample()
    record(metrics, [0.01] * 10, hits=2, misses=8)
    clock.advance(1)
    observation = await source.observe(guard, clock())
    assert (
        observation.value == pytest.approx(2 / 12) and observation.severity is Severity.CRITICAL
    )  # both in the 5 s window
    p95 = load_plan(PHASE5).guard("p95_latency")
    assert (await source.observe(p95, clock())).outcome is Outcome.PASS  # 12 retrievals in the window
