"""A Controller on a simulated clock, for tests of the service and its admin API.

Rig                 one Controller over a real StateDB and FlagStore in a state_dir,
                    with a SimClock and a ScriptedSource; `at(h, ...)` evaluates at
                    plan hours
ScriptedSource      a GuardSource: guard values by name (a str is a provider error);
                    report queries answered healthy, or failing with `report_error`
rigs                a fixture building Rigs, closing them at teardown (import it)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.decide import Decision
from controller.guards import Observation, assess
from controller.host.replay import SimClock
from controller.notify import Event
from controller.plan import Direction, Guard, Plan
from controller.plan_load import load_plan
from controller.report import SEED_METRICS
from controller.service import Controller
from controller.sources.promql_measures import PrometheusError, PromQLMeasures
from controller.state_db import StateDB
from flags.store import FlagStore
from tests.support.plans import compact_toml

REPO = Path(__file__).resolve().parents[2]
PHASE5 = load_plan(REPO / "deploy" / "plans" / "phase5.toml")
T0 = datetime(2025, 10, 23, 9, tzinfo=UTC)  # the seeds' hour 0
FIRST_COHORT = ["Builder", "Deploy", "QA"]
SECOND_COHORT = ["Builder", "Deploy", "QA", "Support", "Marketing"]

# Healthy values of the seeds' report metrics, as the seed queries would return them.
SEED_VALUES = {
    "test_pass_rate": 99.6,
    "error_rate": 0.0003,
    "p95_latency_ms": 84.0,
    "p99_latency_ms": 131.0,
    "cache_hit_rate": 0.81,
    "retrieval_accuracy_precision_at_10": 0.86,
    "retrieval_accuracy_recall_at_10": 0.79,
}

COMPACT = compact_toml()  # tests.support.plans: 0h 0%, 1h 10%, 2h 50%, review at 1h30, guard latency


def hours(h: float) -> datetime:
    """The moment `h` hours after T0."""
    return T0 + timedelta(hours=h)


def healthy(plan: Plan) -> dict[str, float]:
    """A value inside every threshold for each guard of `plan`."""
    return {
        g.name: (min(g.thresholds.values()) / 2 if g.direction is Direction.ABOVE else max(g.thresholds.values()) + 1)
        for g in plan.guards
    }


_WINDOWED = re.compile(r"^(?:max|min)_over_time\(\((?P<query>.*)\)\[[0-9smhd]+:[0-9smhd]+\]\)$")


def healthy_report_value(plan: Plan, promql: str) -> float:
    """What a healthy Prometheus answers to one of the report's queries (a guard's worst
    value over the period, or one of the seeds' metrics); anything else fails the test."""
    windowed = _WINDOWED.match(promql)
    if windowed:
        for guard in plan.guards:
            if guard.resolved_query() == windowed["query"]:
                return healthy(plan)[guard.name]
    for key, template in SEED_METRICS.items():
        if template and re.fullmatch(re.escape(template).replace(re.escape("{{window}}"), "[0-9smhd]+"), promql):
            return SEED_VALUES[key]
    raise AssertionError(f"the report asked an unexpected query: {promql}")


class ScriptedSource(PromQLMeasures):
    """A GuardSource: guard values by name (a str is a provider error), report queries healthy
    unless `report_error` is set, in which case `value` fails as PrometheusSource would."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.guards: dict[str, float | str | None] = dict(healthy(plan))
        self.report_error: str | None = None
        self.asked: list[str] = []

    async def observe(self, guard: Guard, at: datetime) -> Observation:
        value = self.guards[guard.name]
        if isinstance(value, str):
            return assess(guard, None, at, error=value)
        return assess(guard, value, at)

    async def value(self, promql: str, at: datetime, direction: Direction | None = None) -> float | None:
        self.asked.append(promql)
        if self.report_error is not None:
            raise PrometheusError(self.report_error)
        return healthy_report_value(self.plan, promql)


class RecordingNotifications:
    """Notifications-like: keeps what was submitted."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def submit(self, event: Event) -> None:
        self.events.append(event)


class Rig:
    """One Controller over a real StateDB and FlagStore in `state_dir`."""

    def __init__(
        self,
        state_dir: Path,
        plan: Plan = PHASE5,
        clock: SimClock | None = None,
        source: ScriptedSource | None = None,
        db: Callable[[Path], StateDB] = StateDB,
        **kwargs: Any,
    ) -> None:
        self.state_dir = state_dir
        self.clock = clock or SimClock(T0)
        self.source = source or ScriptedSource(plan)
        self.store = FlagStore.open(state_dir, clock=self.clock)
        self.db = db(state_dir)  # after the store, which creates state_dir
        self.controller = Controller(
            plan, self.db, self.store, self.source, wall=self.clock, state_dir=state_dir, **kwargs
        )

    async def at(self, *moments: float) -> list[Decision]:
        """Evaluate at each of `moments` (hours after T0) in turn; every decision taken."""
        decisions: list[Decision] = []
        for h in moments:
            self.clock.now = hours(h)
            decisions += await self.controller.evaluate()
        return decisions

    def journal(self) -> list[dict[str, Any]]:
        return self.controller.journal(limit=10_000)

    def close(self) -> None:
        self.db.close()
        self.store.close()


@pytest.fixture
def rigs(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    """Build Rigs (default state_dir: tmp_path/state); all are closed at teardown."""
    built: list[Rig] = []

    def build(state_dir: Path | None = None, **kwargs: Any) -> Rig:
        rig = Rig(state_dir or tmp_path / "state", **kwargs)
        built.append(rig)
        return rig

    yield build
    for rig in built:
        rig.close()


def read_flags(state_dir: Path) -> dict[str, Any]:
    path = state_dir / "flags.json"
    return json.loads(path.read_text()) if path.exists() else {}


def assert_plan_flags(state_dir: Path, plan: Plan, percentage: float, agents: list[str]) -> None:
    """Every flag of `plan` is on at `percentage` within the cohort `agents`."""
    flags = read_flags(state_dir)
    for name in plan.flags:
        flag = flags[name]
        assert flag["enabled"] is True, name
        assert flag["rollout_percentage"] == percentage, (name, flag)
        assert {"context_name": "agent", "operator": "IN", "values": agents} in flag["constraints"], (name, flag)


def actions(decisions: list[Decision] | list[dict[str, Any]]) -> list[str]:
    return [d["action"] if isinstance(d, dict) else d.action for d in decisions]
