"""The rollout's own metrics: stage, percentage, phase, guards and rollbacks by trigger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller.guards import assess
from controller.host.replay import SimClock
from controller.host.rollout_metrics import RolloutCollector
from controller.plan import Guard
from controller.plan_load import load_plan
from controller.service import Controller
from controller.state_db import StateDB
from flags.store import FlagStore

PLAN = load_plan(Path(__file__).resolve().parent.parent / "deploy" / "plans" / "phase5.toml")
T0 = datetime(2025, 10, 23, 9, tzinfo=UTC)
HEALTHY = {
    "error_rate": 0.0002,
    "p95_latency": 0.12,
    "test_pass_rate": 99.0,
    "cache_hit_rate": 0.85,
    "retrieval_precision": 0.8,
}
pytestmark = pytest.mark.anyio


class Source:
    def __init__(self) -> None:
        self.values = dict(HEALTHY)

    async def observe(self, guard: Guard, at: datetime):  # noqa: ANN201
        return assess(guard, self.values[guard.name], at)

    async def value(self, promql: str, at: datetime, direction: object = None) -> float | None:
        return None


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_follow_the_rollout_and_count_rollbacks_across_restarts(tmp_path: Path) -> None:
    clock, source = SimClock(T0), Source()
    db, store = StateDB(tmp_path), FlagStore.open(tmp_path)
    controller = Controller(PLAN, db, store, source, wall=clock, state_dir=tmp_path)
    await controller.open()
    while clock.now <= T0 + timedelta(hours=12):
        await controller.evaluate()
        clock.now += PLAN.guard_interval
    source.values["p95_latency"] = 0.35  # critical: rolls back one stage after 2 checks
    for _ in range(2):
        await controller.evaluate()
        clock.now += PLAN.guard_interval
    registry = CollectorRegistry()
    registry.register(RolloutCollector(controller))
    got = samples(registry)
    rollout = ("rollout", "phase5_hybrid_rag")
    assert got[("rolloutd_rollout_stage", (rollout,))] == 1
    assert got[("rolloutd_rollout_percentage", (rollout,))] == 5
    assert got[("rolloutd_rollout_phase", (("phase", "rolled_back"), rollout))] == 1
    assert got[("rolloutd_rollout_phase", (("phase", "running"), rollout))] == 0
    assert got[("rolloutd_rollout_rollbacks_total", (rollout, ("trigger", "p95_latency")))] == 1
    assert got[("rolloutd_guard_value", (("guard", "p95_latency"), rollout))] == 0.35
    assert got[("rolloutd_guard_verdict", (("guard", "p95_latency"), rollout, ("verdict", "breach")))] == 1
    assert got[("rolloutd_rollout_emergency", (rollout,))] == 0
    db.close()
    store.close()
    # a restart rebuilds the counter from the journal: it never goes down
    again = Controller(PLAN, StateDB(tmp_path), FlagStore.open(tmp_path), source, wall=clock, state_dir=tmp_path)
    await again.open()
    assert again.rollback_counts == {"p95_latency": 1}
